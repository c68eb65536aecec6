"""The tally both SDK scripts share: `check` records a result; `finish`
prints the closing line and exits non-zero on any failure."""

import sys

_passed = 0
_failed = 0


def check(name, condition, detail=""):
    global _passed, _failed
    if condition:
        _passed += 1
    else:
        _failed += 1
        print(f"FAILED: {name} {detail}", file=sys.stderr)


def report(label):
    print(f"{label}: {_passed} passed, {_failed} failed")
    sys.exit(1 if _failed else 0)

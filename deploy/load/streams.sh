#!/usr/bin/env bash
# Memory of many concurrent streams (docs/PERFORMANCE.md):
#   deploy/load/streams.sh [STREAMS] [SECONDS]
# ModelRoute on the embedded default (a fresh SQLite file), its built-in
# provider streaming one word every 500 ms (a 10-word answer: ~5 s a
# stream, no upstream sockets), and STREAMS (default 10000) clients each
# streaming paid completions back to back for SECONDS (default 30). Prints
# the streams completed, errors, the most streams open at once, the
# server's resident memory idle and at its peak, and the peak per stream.
# Needs wrk, and a descriptor limit above STREAMS (ulimit -n).
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
streams=${1:-10000}
seconds=${2:-30}
target_dir=${CARGO_TARGET_DIR:-$root/target}
ulimit -n "$(ulimit -Hn)"
(cd "$root" && cargo build --release -q -p modelroute)
work=$(mktemp -d)
trap 'kill "${pid:-0}" 2>/dev/null || true; rm -rf "$work"' EXIT
cd "$work"
printf '{"model":"builtin/echo","stream":true,"max_tokens":64,"messages":[{"role":"user","content":"one two three four five six seven eight nine"}]}' > body.json
export MODELROUTE_SERVER__BIND=127.0.0.1:18107
export MODELROUTE_SERVER__MAX_CONNECTIONS=$((streams + 64))
export MODELROUTE_PROVIDERS__BUILTIN__KIND=builtin
export MODELROUTE_PROVIDERS__BUILTIN__CHUNK_DELAY_MS=500
export MODELROUTE_BOOTSTRAP__STARTING_CREDIT=100000000
export MODELROUTE_TELEMETRY__LOG_FILTER=warn
export MODELROUTE_IDENTITY__RATE_LIMITS__PER_KEY_PER_MINUTE=0
export MODELROUTE_IDENTITY__RATE_LIMITS__PER_ORG_PER_MINUTE=0
"$target_dir/release/modelroute" serve > out.log 2> err.log &
pid=$!
for _ in $(seq 1 100); do grep -q listening out.log 2>/dev/null && break; sleep 0.1; done
key=$(grep -o 'mr_[A-Za-z0-9_]*' out.log | head -n 1)
rss() { awk '/^VmRSS/ { print $2 }' "/proc/$pid/status"; }
idle=$(rss)
peak=0 open_max=0
(
  LOAD_PATH=/v1/chat/completions LOAD_KEY=$key LOAD_BODY=$work/body.json \
    wrk -t2 -c"$streams" -d"${seconds}s" --timeout 60s -s "$root/deploy/load/paid.lua" http://127.0.0.1:18107 > wrk.out 2>&1
  touch wrk.done
) &
while [ ! -e wrk.done ]; do
  r=$(rss); [ "$r" -gt "$peak" ] && peak=$r
  o=$(ss -Htn state established '( sport = :18107 )' | wc -l); [ "$o" -gt "$open_max" ] && open_max=$o
  sleep 0.5
done
read -r _ requests _ p50 p99 errors < <(grep '^RESULT' wrk.out)
non2xx=$(awk '/Non-2xx/ { print $NF }' wrk.out); non2xx=${non2xx:-0}
hwm=$(awk '/^VmHWM/ { print $2 }' "/proc/$pid/status")
echo "streams: $streams clients for ${seconds}s; completed $requests (p50 $((p50 / 1000)) ms, p99 $((p99 / 1000)) ms); socket errors $errors; non-2xx $non2xx"
echo "open at once, at most: $open_max connections"
awk -v idle="$idle" -v peak="$peak" -v hwm="$hwm" -v n="$open_max" 'BEGIN {
  printf "resident: idle %.0f MB, peak %.0f MB (high-water mark %.0f MB); %.1f KB per open stream above idle\n",
    idle / 1024, peak / 1024, hwm / 1024, (n > 0 ? (hwm - idle) / n : 0) }'
"$target_dir/release/modelroute" ledger verify | tail -n 1

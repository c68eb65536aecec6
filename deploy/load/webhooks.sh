#!/usr/bin/env bash
# Webhook delivery latency and throughput (docs/PERFORMANCE.md):
#   deploy/load/webhooks.sh [EVENTS] [BURST]
# ModelRoute on the embedded default (a fresh SQLite file; loopback
# receivers allowed), release build; then deploy/load/webhooks.py against it.
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
target_dir=${CARGO_TARGET_DIR:-$root/target}
(cd "$root" && cargo build --release -q -p modelroute)
work=$(mktemp -d)
trap 'kill "${pid:-0}" 2>/dev/null || true; rm -rf "$work"' EXIT
cd "$work"
export MODELROUTE_SERVER__BIND=127.0.0.1:18307
export MODELROUTE_TELEMETRY__LOG_FILTER=warn
export MODELROUTE_IDENTITY__RATE_LIMITS__PER_KEY_PER_MINUTE=0
export MODELROUTE_IDENTITY__RATE_LIMITS__PER_ORG_PER_MINUTE=0
"$target_dir/release/modelroute" serve > out.log 2> err.log &
pid=$!
for _ in $(seq 1 100); do grep -q listening out.log 2>/dev/null && break; sleep 0.1; done
key=$(grep -o 'mr_[A-Za-z0-9_]*' out.log | head -n 1)
python3 "$root/deploy/load/webhooks.py" http://127.0.0.1:18307 "$key" "${1:-500}" "${2:-2000}"

#!/usr/bin/env bash
# Load test of the paid completion path (auth, hold, built-in provider,
# settle, execution record) against the release binary, on loopback only.
#   deploy/load/chat-load.sh [DATABASE_URL] [SECONDS] [CONNECTIONS]
# Default database: a fresh SQLite file. Needs wrk (apt-get install wrk).
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
url=${1:-}
seconds=${2:-10}
connections=${3:-16}
target=${CARGO_TARGET_DIR:-$root/target}
(cd "$root" && cargo build --release -q -p modelroute)
work=$(mktemp -d)
trap 'kill "${pid:-0}" 2>/dev/null || true; rm -rf "$work"' EXIT
cd "$work"
export MODELROUTE_SERVER__BIND=127.0.0.1:18099
export MODELROUTE_BOOTSTRAP__STARTING_CREDIT=1000000
export MODELROUTE_TELEMETRY__LOG_FILTER=warn
# A load test measures the path, not the per-key rate limit.
export MODELROUTE_IDENTITY__RATE_LIMITS__PER_KEY_PER_MINUTE=0
export MODELROUTE_IDENTITY__RATE_LIMITS__PER_ORG_PER_MINUTE=0
[ -n "$url" ] && export MODELROUTE_DATABASE__URL="$url"
"$target/release/modelroute" serve > out.log 2> err.log &
pid=$!
for _ in $(seq 1 50); do grep -q listening out.log 2>/dev/null && break; sleep 0.2; done
MODELROUTE_KEY=$(grep -o 'mr_[A-Za-z0-9_]*' out.log | head -n 1)
export MODELROUTE_KEY
wrk -t2 -c"$connections" -d"${seconds}s" --latency -s "$root/deploy/load/chat.lua" http://127.0.0.1:18099
"$target/release/modelroute" ledger verify

#!/usr/bin/env bash
# Asynchronous executions (docs/PERFORMANCE.md):
#   deploy/load/executions.sh [SECONDS] [ROUNDS] [EVENTS]
# ModelRoute on the embedded default (a fresh SQLite file, the built-in
# provider, loopback receivers allowed), release build. Then:
# 1. submissions per second: closed-loop wrk at c=32 on POST /v1/executions
#    (a chat for the built-in model; each submission is planned, held,
#    recorded and queued, and runs in the background meanwhile), interleaved
#    with the same on POST /v1/chat/completions (answered in the request),
#    ROUNDS rounds of SECONDS each, medians and their ratio;
# 2. deploy/load/executions.py: from an execution's end (its `finished_at`)
#    to its `execution.succeeded` webhook's arrival at a local receiver,
#    EVENTS executions one at a time, p50 and p99.
# Needs wrk (apt-get install wrk).
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
target_dir=${CARGO_TARGET_DIR:-$root/target}
seconds=${1:-10}
rounds=${2:-3}
events=${3:-300}
(cd "$root" && cargo build --release -q -p modelroute)
work=$(mktemp -d)
trap 'kill "${pid:-0}" 2>/dev/null || true; rm -rf "$work"' EXIT
cd "$work"
export MODELROUTE_SERVER__BIND=127.0.0.1:18309
export MODELROUTE_TELEMETRY__LOG_FILTER=warn
export MODELROUTE_IDENTITY__RATE_LIMITS__PER_KEY_PER_MINUTE=0
export MODELROUTE_IDENTITY__RATE_LIMITS__PER_ORG_PER_MINUTE=0
export MODELROUTE_BOOTSTRAP__STARTING_CREDIT=100000000
"${LOAD_BIN:-$target_dir/release/modelroute}" serve > out.log 2> err.log &
pid=$!
for _ in $(seq 1 100); do grep -q listening out.log 2>/dev/null && break; sleep 0.1; done
key=$(grep -o 'mr_[A-Za-z0-9_]*' out.log | head -n 1)
base=http://127.0.0.1:18309
echo '{"model":"builtin/echo","max_tokens":16,"messages":[{"role":"user","content":"Say hello to the load test."}]}' > body.json

# Waits until nothing is queued or running (the background has caught up).
drain() {
  for _ in $(seq 1 600); do
    left=$(curl -s -H "authorization: Bearer $key" "$base/v1/executions?status=queued,running&limit=1" \
      | python3 -c 'import json,sys; print(len(json.load(sys.stdin)["data"]))')
    [ "$left" = 0 ] && return
    sleep 0.5
  done
  echo "the queue did not drain" >&2
  exit 1
}

: > results.txt
for round in $(seq 1 "$rounds"); do
  for path in /v1/executions /v1/chat/completions; do
    line=$(LOAD_PATH=$path LOAD_KEY=$key LOAD_BODY=$work/body.json \
      wrk -t2 -c32 -d"${seconds}s" -s "$root/deploy/load/paid.lua" "$base" | grep '^RESULT')
    read -r _ requests duration_us p50 p99 errors <<< "$line"
    echo "$path $requests $duration_us $p50 $p99 $errors" >> results.txt
    awk -v r="$round" -v p="$path" -v n="$requests" -v d="$duration_us" -v p50="$p50" -v p99="$p99" -v e="$errors" 'BEGIN {
      printf "round %d %-22s %8.0f req/s  p50 %7.2f ms  p99 %7.2f ms  errors %d\n", r, p, n / (d / 1e6), p50 / 1000, p99 / 1000, e }'
    drain
  done
done
awk '{ k = $1; n = ++cnt[k]; v[k, n] = $2 / ($3 / 1e6) }
  function median(k, n,   i, j, a, t) { for (i = 1; i <= n; i++) a[i] = v[k, i]
    for (i = 1; i <= n; i++) for (j = i + 1; j <= n; j++) if (a[j] < a[i]) { t = a[i]; a[i] = a[j]; a[j] = t }
    return n % 2 ? a[(n + 1) / 2] : (a[n / 2] + a[n / 2 + 1]) / 2 }
  END { s = median("/v1/executions", cnt["/v1/executions"]); c = median("/v1/chat/completions", cnt["/v1/chat/completions"])
    printf "\nmedian: submissions %.0f/s, chat completions %.0f/s, ratio %.2f\n", s, c, s / c }' results.txt
echo
python3 "$root/deploy/load/executions.py" "$base" "$key" "$events"

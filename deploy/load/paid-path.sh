#!/usr/bin/env bash
# The paid path against its floor, side by side in one run (docs/PERFORMANCE.md):
#   deploy/load/paid-path.sh [SECONDS] [ROUNDS] [TARGETS]
# Starts a zero-delay OpenAI-compatible upstream, the bare proxy (actix in,
# hyper out, JSON parsed and re-serialised both ways, a bearer check) and
# ModelRoute on SQLite (a fresh file) and on PostgreSQL (a fresh database on
# $LOAD_POSTGRES, default postgres://postgres@127.0.0.1:5432), all routed to
# that upstream, then runs closed-loop wrk at c=1 and c=32, the targets
# interleaved, ROUNDS times (default 2). Prints requests/s, p50/p99 and the
# CPU per request of the target's process (for PostgreSQL, plus every
# postgres process's), the medians of the rounds and the ratios to the proxy.
# TARGETS: any of "direct proxy sqlite postgres" (default all four), and
# "sqlite-base postgres-base": the same with the binary at $LOAD_BASE_BIN (an
# earlier build, for an A/B in one run).
# Needs wrk (apt-get install wrk) and psql for PostgreSQL.
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
seconds=${1:-10}
rounds=${2:-2}
targets=${3:-direct proxy sqlite postgres}
pg=${LOAD_POSTGRES:-postgres://postgres@127.0.0.1:5432}
target_dir=${CARGO_TARGET_DIR:-$root/target}
(cd "$root" && cargo build --release -q -p modelroute -p modelroute-loadkit)
bin=$target_dir/release
work=$(mktemp -d)
pids=()
declare -A dbs
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  for d in "${dbs[@]}"; do psql -q "$pg/postgres" -c "DROP DATABASE IF EXISTS $d WITH (FORCE)" >/dev/null 2>&1 || true; done
  rm -rf "$work"
}
trap cleanup EXIT
cd "$work"

# A 1 KB OpenAI chat body, 64 tokens out at most.
filler=$(head -c 700 /dev/zero | tr '\0' 'x')
printf '{"model":"load/mock","max_tokens":64,"messages":[{"role":"system","content":"You are a terse assistant."},{"role":"user","content":"Summarise: %s"}]}' "$filler" > body.json

wait_for() { for _ in $(seq 1 100); do grep -q listening "$1" 2>/dev/null && return 0; sleep 0.1; done; echo "no start: $1" >&2; cat "$1" "${1%.out}.err" >&2 || true; exit 1; }

"$bin/modelroute-loadkit" upstream --bind 127.0.0.1:18101 > upstream.out 2> upstream.err & pids+=($!); upstream_pid=$!
wait_for upstream.out
LOADKIT_KEY=proxy-key "$bin/modelroute-loadkit" proxy --bind 127.0.0.1:18102 > proxy.out 2> proxy.err & pids+=($!); proxy_pid=$!
wait_for proxy.out

cat > modelroute.toml <<'TOML'
[providers.mock]
kind = "openai_compatible"
base_url = "http://127.0.0.1:18101/v1"

[[catalogue.models]]
slug = "load/mock"
context_window = 128000

[[catalogue.models.routes]]
id = "mock-load"
provider = "mock"
upstream_model = "mock-model"
input_price = "0.15"
output_price = "0.60"
max_output_tokens = 4096
TOML
export MODELROUTE_PROVIDERS__MOCK__API_KEY=upstream-key
export MODELROUTE_BOOTSTRAP__STARTING_CREDIT=100000000
export MODELROUTE_TELEMETRY__LOG_FILTER=warn
# A load test measures the path, not the per-key rate limits.
export MODELROUTE_IDENTITY__RATE_LIMITS__PER_KEY_PER_MINUTE=0
export MODELROUTE_IDENTITY__RATE_LIMITS__PER_ORG_PER_MINUTE=0

declare -A port pid key
start_modelroute() { # name port [database url] [binary]
  local name=$1 url=${3:-} server=${4:-$bin/modelroute}
  port[$name]=$2
  mkdir -p "$name" && cp modelroute.toml "$name/"
  local env=(MODELROUTE_SERVER__BIND=127.0.0.1:${port[$name]})
  [ -n "$url" ] && env+=(MODELROUTE_DATABASE__URL="$url")
  (cd "$name" && exec env "${env[@]}" "$server" serve > ../"$name".out 2> ../"$name".err) & pids+=($!)
  pid[$name]=$!
  wait_for "$name.out"
  key[$name]=$(grep -o 'mr_[A-Za-z0-9_]*' "$name.out" | head -n 1)
}
port[direct]=18101; pid[direct]=$upstream_pid; key[direct]=""
port[proxy]=18102; pid[proxy]=$proxy_pid; key[proxy]=proxy-key
for t in $targets; do
  case $t in
    sqlite) start_modelroute sqlite 18103 ;;
    sqlite-base) start_modelroute sqlite-base 18105 "" "${LOAD_BASE_BIN:?the baseline binary}" ;;
    postgres | postgres-base)
      base=$([ "$t" = postgres ] && echo "" || echo "${LOAD_BASE_BIN:?the baseline binary}")
      dbs[$t]=load_$$_$RANDOM
      psql -q "$pg/postgres" -c "CREATE DATABASE ${dbs[$t]}" >/dev/null
      start_modelroute "$t" "$([ "$t" = postgres ] && echo 18104 || echo 18106)" "$pg/${dbs[$t]}" "$base" ;;
  esac
done

# CPU ticks (1/100 s) of a process, with its threads.
ticks() { awk '{ print $14 + $15 }' "/proc/$1/stat"; }
# CPU ticks of every postgres process, as "pid ticks" lines.
pg_ticks() { for p in $(pgrep -x postgres); do [ -r "/proc/$p/stat" ] && echo "$p $(ticks "$p" 2>/dev/null || echo 0)"; done; }
pg_delta() { # before-file after-file
  awk 'NR == FNR { b[$1] = $2; next } { d += $2 - ($1 in b ? b[$1] : 0) } END { print d + 0 }' "$1" "$2"
}
hz=$(getconf CLK_TCK)

results=results.txt
: > "$results"
for round in $(seq 1 "$rounds"); do
  for c in 1 32; do
    for t in $targets; do
      threads=$([ "$c" = 1 ] && echo 1 || echo 2)
      # A short warm-up, unmeasured: connections, caches, the route's health.
      LOAD_PATH=/v1/chat/completions LOAD_KEY=${key[$t]} LOAD_BODY=$work/body.json \
        wrk -t"$threads" -c"$c" -d2s -s "$root/deploy/load/paid.lua" "http://127.0.0.1:${port[$t]}" > /dev/null
      before=$(ticks "${pid[$t]}")
      case $t in postgres*) pg_ticks > pg.before ;; esac
      line=$(LOAD_PATH=/v1/chat/completions LOAD_KEY=${key[$t]} LOAD_BODY=$work/body.json \
        wrk -t"$threads" -c"$c" -d"${seconds}s" -s "$root/deploy/load/paid.lua" "http://127.0.0.1:${port[$t]}" | grep '^RESULT')
      after=$(ticks "${pid[$t]}")
      extra=0
      case $t in postgres*) pg_ticks > pg.after; extra=$(pg_delta pg.before pg.after) ;; esac
      read -r _ requests duration_us p50 p99 errors <<< "$line"
      echo "$round $c $t $requests $duration_us $p50 $p99 $errors $((after - before)) $extra" >> "$results"
      awk -v r="$round" -v c="$c" -v t="$t" -v n="$requests" -v d="$duration_us" -v p50="$p50" -v p99="$p99" \
        -v e="$errors" -v own="$((after - before))" -v extra="$extra" -v hz="$hz" 'BEGIN {
          printf "round %d c=%-2d %-13s %8.0f req/s  p50 %7.2f ms  p99 %7.2f ms  errors %d  CPU %6.0f us/req (%s%.0f)\n",
            r, c, t, n / (d / 1e6), p50 / 1000, p99 / 1000, e, (own + extra) * 1e6 / hz / n,
            (extra > 0 ? "postgres " : ""), (extra > 0 ? extra * 1e6 / hz / n : 0) }'
    done
  done
done

echo
echo "medians over $rounds rounds (ratios to the bare proxy in the same run)"
awk -v hz="$hz" '
  { k = $2 " " $3; n = ++cnt[k]; rps[k, n] = $4 / ($5 / 1e6); p50[k, n] = $6 / 1000; p99[k, n] = $7 / 1000
    cpu[k, n] = ($9 + $10) * 1e6 / hz / $4; keys[k] = 1 }
  function median(a, k, n,   i, j, v, t) {
    for (i = 1; i <= n; i++) v[i] = a[k, i]
    for (i = 1; i <= n; i++) for (j = i + 1; j <= n; j++) if (v[j] < v[i]) { t = v[i]; v[i] = v[j]; v[j] = t }
    return n % 2 ? v[(n + 1) / 2] : (v[n / 2] + v[n / 2 + 1]) / 2 }
  END {
    printf "%-4s %-13s %10s %9s %9s %12s %10s %10s %12s\n", "c", "target", "req/s", "p50 ms", "p99 ms", "CPU us/req", "req/s ×", "CPU ×", "p50 +ms"
    for (k in keys) { split(k, p, " "); c = p[1]; t = p[2]; n = cnt[k]
      R[k] = median(rps, k, n); P[k] = median(p50, k, n); Q[k] = median(p99, k, n); C[k] = median(cpu, k, n) }
    no = split("direct proxy sqlite-base sqlite postgres-base postgres", order, " ")
    for (ci = 1; ci <= 2; ci++) { c = ci == 1 ? 1 : 32; base = c " proxy"
      for (o = 1; o <= no; o++) { k = c " " order[o]; if (!(k in keys)) continue
        rr = (base in R) ? sprintf("%.2f", R[k] / R[base]) : "-"
        cr = (base in C) ? sprintf("%.1f", C[k] / C[base]) : "-"
        pr = (base in P) ? sprintf("%+.2f", P[k] - P[base]) : "-"
        printf "%-4s %-13s %10.0f %9.2f %9.2f %12.0f %10s %10s %12s\n", c, order[o], R[k], P[k], Q[k], C[k], rr, cr, pr } } }' "$results"
for t in $targets; do
  case $t in
    sqlite*) (cd "$t" && echo "$t: $("$bin/modelroute" ledger verify | tail -n 1)") ;;
    postgres*) (cd "$t" && echo "$t: $(MODELROUTE_DATABASE__URL=$pg/${dbs[$t]} "$bin/modelroute" ledger verify | tail -n 1)") ;;
  esac
done

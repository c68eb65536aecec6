#!/usr/bin/env bash
# File upload and download through the gateway against the store directly
# (docs/PERFORMANCE.md):
#   deploy/load/files.sh [MIB] [ROUNDS]
# A MIB-MiB file (default 1024: 1 GiB, a PNG signature and random bytes),
# on each store in turn — the local folder and a bucket on a moto server
# (S3-compatible, in server mode) — ROUNDS times (default 2), interleaved:
#   - through the gateway: `curl -F file=@…` to POST /v1/files, then
#     `curl` GET /v1/files/{id}/content, on the release build;
#   - directly: the same bytes copied into the store's folder and read back
#     (`dd`, through the page cache as the gateway's writes are: no fsync),
#     or PUT into the bucket and GET from it (`curl`, signed SigV4 as the
#     gateway's requests are), and a multipart upload of the gateway's shape
#     (boto3: 8 MiB parts, two in flight).
# Prints MB/s of each and the gateway's ratio to the direct figure, and the
# server's resident memory idle and at its peak during the uploads.
# Needs curl and Python 3 (moto is installed into ~/.cache/modelroute-venv).
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
mib=${1:-1024}
rounds=${2:-2}
target_dir=${CARGO_TARGET_DIR:-$root/target}
(cd "$root" && cargo build --release -q -p modelroute)
venv="$HOME/.cache/modelroute-venv"
[ -x "$venv/bin/python" ] || python3 -m venv "$venv"
"$venv/bin/python" -c 'import moto.server, flask_cors' 2>/dev/null || "$venv/bin/pip" install -q "moto[server]>=5,<6"

work=$(mktemp -d)
pids=()
trap 'for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$work"' EXIT
cd "$work"

{ printf '\x89PNG\r\n\x1a\n'; head -c $((mib * 1024 * 1024 - 8)) /dev/urandom; } > big.png
bytes=$(stat -c %s big.png)

moto_port=18290
"$venv/bin/python" -m moto.server -H 127.0.0.1 -p "$moto_port" > moto.log 2>&1 &
pids+=($!)
for _ in $(seq 1 200); do curl -sf "http://127.0.0.1:$moto_port/moto-api/" > /dev/null && break; sleep 0.1; done
# Requests signed as the gateway's are (SigV4, the same test credentials).
sigv4=(--aws-sigv4 "aws:amz:us-east-1:s3" --user testing:testing)
curl -sf "${sigv4[@]}" -X PUT "http://127.0.0.1:$moto_port/direct" > /dev/null
curl -sf "${sigv4[@]}" -X PUT "http://127.0.0.1:$moto_port/gateway" > /dev/null

# start STORE PORT: the server on a fresh SQLite file; sets key_STORE, pid_STORE.
start() {
  local store=$1 port=$2 dir="$work/server-$1"
  mkdir -p "$dir"
  (
    cd "$dir"
    export MODELROUTE_SERVER__BIND=127.0.0.1:$port
    export MODELROUTE_TELEMETRY__LOG_FILTER=warn
    export MODELROUTE_FILES__MAX_UPLOAD_BYTES=$((bytes * 2))
    export MODELROUTE_SERVER__BODY_MIN_BYTES_PER_SEC=0
    if [ "$store" = s3 ]; then
      export MODELROUTE_FILES__STORE=s3
      export MODELROUTE_FILES__S3__BUCKET=gateway
      export MODELROUTE_FILES__S3__ENDPOINT=http://127.0.0.1:$moto_port
      export MODELROUTE_FILES__S3__REGION=us-east-1
      export MODELROUTE_FILES__S3__ALLOW_HTTP=true
      export MODELROUTE_FILES__S3__ACCESS_KEY_ID=testing
      export MODELROUTE_FILES__S3__SECRET_ACCESS_KEY=testing
    fi
    exec "$target_dir/release/modelroute" serve > out.log 2> err.log
  ) &
  local pid=$!
  pids+=("$pid")
  for _ in $(seq 1 100); do grep -q listening "$dir/out.log" 2>/dev/null && break; sleep 0.1; done
  printf -v "pid_$store" '%s' "$pid"
  printf -v "key_$store" '%s' "$(grep -o 'mr_[A-Za-z0-9_]*' "$dir/out.log" | head -n 1)"
}
start local 18291
start s3 18292

rss() { awk '/^VmRSS/ { print $2 }' "/proc/$1/status"; }
# mbps SECONDS: MB/s of the file's size.
mbps() { awk -v b="$bytes" -v s="$1" 'BEGIN { printf "%.0f", b / 1e6 / s }'; }
now() { date +%s.%N; }
elapsed() { awk -v a="$1" -v b="$(now)" 'BEGIN { print b - a }'; }

declare -A idle peak
for store in local s3; do
  pid_var="pid_$store"; idle[$store]=$(rss "${!pid_var}"); peak[$store]=0
done

results=$work/results
for round in $(seq 1 "$rounds"); do
  for store in local s3; do
    pid_var="pid_$store"; key_var="key_$store"; pid=${!pid_var}; key=${!key_var}
    port=$([ "$store" = local ] && echo 18291 || echo 18292)
    # Through the gateway: upload while sampling memory, then download.
    t=$(now)
    curl -sf -H "Authorization: Bearer $key" -F "file=@big.png;type=image/png" -F purpose=upload \
      "http://127.0.0.1:$port/v1/files" > up.json &
    up=$!
    while kill -0 "$up" 2>/dev/null; do
      r=$(rss "$pid"); [ "$r" -gt "${peak[$store]}" ] && peak[$store]=$r
      sleep 0.1
    done
    wait "$up"
    gw_up=$(elapsed "$t")
    id=$(grep -o '"id":"file_[0-9a-f]*"' up.json | head -n 1 | cut -d'"' -f4)
    t=$(now)
    curl -sf -H "Authorization: Bearer $key" "http://127.0.0.1:$port/v1/files/$id/content" -o /dev/null
    gw_down=$(elapsed "$t")
    curl -sf -X DELETE -H "Authorization: Bearer $key" "http://127.0.0.1:$port/v1/files/$id" > /dev/null
    # Directly.
    if [ "$store" = local ]; then
      mkdir -p direct
      t=$(now); dd if=big.png of=direct/copy bs=8M status=none; d_up=$(elapsed "$t")
      t=$(now); dd if=direct/copy of=/dev/null bs=8M status=none; d_down=$(elapsed "$t")
      rm -f direct/copy
    else
      t=$(now); curl -sf "${sigv4[@]}" -T big.png "http://127.0.0.1:$moto_port/direct/copy" > /dev/null; d_up=$(elapsed "$t")
      t=$(now); curl -sf "${sigv4[@]}" "http://127.0.0.1:$moto_port/direct/copy" -o /dev/null; d_down=$(elapsed "$t")
      curl -sf "${sigv4[@]}" -X DELETE "http://127.0.0.1:$moto_port/direct/copy" > /dev/null
      # And a multipart upload of the gateway's shape (8 MiB parts, two in
      # flight), as boto3 (installed with moto) makes it.
      "$venv/bin/python" - "$moto_port" <<'PY' >> multipart
import sys, time, boto3
from boto3.s3.transfer import TransferConfig
s3 = boto3.client("s3", endpoint_url=f"http://127.0.0.1:{sys.argv[1]}", aws_access_key_id="testing",
                  aws_secret_access_key="testing", region_name="us-east-1")
cfg = TransferConfig(multipart_threshold=8 << 20, multipart_chunksize=8 << 20, max_concurrency=2)
t = time.time(); s3.upload_file("big.png", "direct", "multipart", Config=cfg); up = time.time() - t
s3.delete_object(Bucket="direct", Key="multipart")
import os; print(os.path.getsize("big.png") / 1e6 / up)
PY
    fi
    echo "$store $(mbps "$gw_up") $(mbps "$d_up") $(mbps "$gw_down") $(mbps "$d_down")" >> "$results"
    echo "round $round $store: upload gateway $(mbps "$gw_up") MB/s, direct $(mbps "$d_up") MB/s; download gateway $(mbps "$gw_down") MB/s, direct $(mbps "$d_down") MB/s"
  done
done

echo
echo "| store | upload, gateway MB/s | upload, direct MB/s | ratio | download, gateway MB/s | download, direct MB/s | ratio | server resident, idle → peak during uploads |"
echo "| --- | --- | --- | --- | --- | --- | --- | --- |"
for store in local s3; do
  awk -v s="$store" -v idle="${idle[$store]}" -v peak="${peak[$store]}" '$1 == s { n++; gu += $2; du += $3; gd += $4; dd += $5 }
    END { printf "| %s | %.0f | %.0f | %.2f | %.0f | %.0f | %.2f | %.0f → %.0f MB |\n", s, gu/n, du/n, gu/du, gd/n, dd/n, gd/dd, idle/1024, peak/1024 }' "$results"
done
awk '{ n++; t += $1 } END { printf "s3, direct as a multipart upload (boto3, 8 MiB parts, two in flight): %.0f MB/s\n", t / n }' multipart
echo "(means of $rounds rounds of a $mib MiB file)"

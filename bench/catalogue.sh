#!/usr/bin/env bash
# A catalogue in front of object storage: TITLES videos of SIZE bytes in the S3 test server (versitygw), several
# times the agent's memory cache, read as random 1 MiB ranges of Zipf-distributed titles (exponent ZIPF) by the
# same client (agent/benches/catalogue.rs) through three servers in the same run, taking turns:
#   agent  the agent on S3, memory cache CACHE_MIB over a disk tier of DISK_MIB;
#   nginx  nginx as a caching reverse proxy in front of the same S3 server: proxy_cache on disk (CACHE_MIB +
#          DISK_MIB, the agent's two tiers together) with the slice module (1 MiB slices, as the agent's);
#   s3     presigned GETs straight to the S3 server.
# Writes the table, origin offload and peak RSS between the catalogue markers of bench/RESULTS.md.
#   bash bench/catalogue.sh
#   RUNS=5 SECONDS_PER_RUN=20 CONNS=256 bash bench/catalogue.sh
#   DISK_MIB=960 NGINX_CACHE_MIB=576 bash bench/catalogue.sh   (the agent given the disk nginx holds at its peak)
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
RUNS=${RUNS:-3}
SECONDS_PER_RUN=${SECONDS_PER_RUN:-10}
CONNS=${CONNS:-64}
TITLES=${TITLES:-128}
SIZE=${SIZE:-$((8 * 1024 * 1024))}
ZIPF=${ZIPF:-1.0}
CACHE_MIB=${CACHE_MIB:-64}
DISK_MIB=${DISK_MIB:-512}
# nginx's max_size: by default the agent's two tiers together.
NGINX_CACHE_MIB=${NGINX_CACHE_MIB:-$((CACHE_MIB + DISK_MIB))}

command -v nginx >/dev/null || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nginx >/dev/null; }
cargo build --release --locked -q -p videodelivery-agent -p vdctl
s3bin=$(bash tests/s3/build.sh)
bin=$root/target/release
source bench/lib.sh
bench_setup vd-catalogue
mkdir -p "$work/s3/bench" "$work/nginx/cache" "$work/agent-disk"

"$s3bin" --access AKIABENCH --secret bench-secret --port 127.0.0.1:18182 posix "$work/s3" >"$work/s3.log" 2>&1 &
pids+=($!)
wait_port 18182 versitygw
presign() { # METHOD KEY...: one presigned URL per key
  python3 - "$@" <<'PY'
import os, sys
sys.path.insert(0, "bench")
from presign import presign
for key in sys.argv[2:]:
    print(presign("http://127.0.0.1:18182", "bench", key, "AKIABENCH", "bench-secret", expires=86400, method=sys.argv[1]))
PY
}
keys=()
for i in $(seq "$TITLES"); do keys+=("cat/t$i.mp4"); done
echo "catalogue: uploading $TITLES titles of $SIZE bytes through the S3 API" >&2
i=0
while read -r put; do
  head -c "$SIZE" /dev/urandom >"$work/title"
  code=$(curl -s -o /dev/null -w '%{http_code}' -T "$work/title" "$put")
  [ "$code" = 200 ] || fail "uploading ${keys[$i]} answered $code"
  i=$((i + 1))
done < <(presign PUT "${keys[@]}")
rm -f "$work/title"

"$bin/vdctl" keygen --out "$work/keyring.json" 2>/dev/null
token=$("$bin/vdctl" sign --keyring "$work/keyring.json" --path /videos/cat/t1.mp4 --prefix /videos/cat/ --ttl 23h --token-only)
AWS_ACCESS_KEY_ID=AKIABENCH AWS_SECRET_ACCESS_KEY=bench-secret "$bin/videodelivery-agent" --storage s3://bench \
  --s3-endpoint http://127.0.0.1:18182 --s3-region us-east-1 --s3-path-style --listen 127.0.0.1:18180 \
  --admin-listen 127.0.0.1:19180 --keyring "$work/keyring.json" --rate-limit 0 --max-streams 100000 \
  --access-log=false --cache-size-mib "$CACHE_MIB" --disk-cache-dir "$work/agent-disk" \
  --disk-cache-size-mib "$DISK_MIB" ${AGENT_FLAGS:-} >"$work/agent.log" 2>&1 &
agent_pid=$!
pids+=($agent_pid)

# nginx in front of S3 as its documentation sets up a cache for large files: the slice module cuts each request into
# 1 MiB subrequests cached apart (key: URI + slice), the presigned query passed through to S3 and left out of the key.
# It logs the bytes each (sub)request read from S3 (that log is its only cost the agent does not pay).
cat >"$work/nginx/nginx.conf" <<CONF
worker_processes auto;
user root;
pid $work/nginx/nginx.pid;
error_log $work/nginx/error.log warn;
worker_rlimit_nofile 65536;
events { worker_connections 4096; }
http {
  client_body_temp_path $work/nginx; proxy_temp_path $work/nginx; fastcgi_temp_path $work/nginx;
  uwsgi_temp_path $work/nginx; scgi_temp_path $work/nginx;
  log_format origin '\$upstream_bytes_received';
  access_log $work/nginx/origin.log origin buffer=64k;
  log_subrequest on;
  keepalive_requests 1000000;
  proxy_cache_path $work/nginx/cache levels=1:2 keys_zone=cat:16m max_size=${NGINX_CACHE_MIB}m inactive=1h use_temp_path=off;
  upstream s3 { server 127.0.0.1:18182; keepalive 64; }
  server {
    listen 127.0.0.1:18181;
    location /cat/ {
      slice 1m;
      proxy_cache cat;
      proxy_cache_key \$uri\$slice_range;
      proxy_set_header Range \$slice_range;
      proxy_set_header Host 127.0.0.1:18182;
      proxy_set_header Connection "";
      proxy_http_version 1.1;
      proxy_cache_valid 200 206 1h;
      proxy_pass http://s3/bench/cat/;
    }
  }
}
CONF
nginx -c "$work/nginx/nginx.conf" -g 'daemon off;' &
nginx_pid=$!
pids+=($nginx_pid)
wait_port 18180 agent; wait_port 18181 nginx

# Most popular first: title i is rank i.
presign GET "${keys[@]}" >"$work/urls-s3.txt"
sed 's#^http://127.0.0.1:18182/bench/#http://127.0.0.1:18181/#' "$work/urls-s3.txt" >"$work/urls-nginx.txt"
for k in "${keys[@]}"; do echo "http://127.0.0.1:18180/videos/$k?token=$token"; done >"$work/urls-agent.txt"

# Sanity: the same bytes from each server, and the agent refuses a request without a token.
curl -s -o "$work/expect" -r 1000000-1065535 "$(sed -n 2p "$work/urls-s3.txt")"
[ "$(stat -c %s "$work/expect")" = 65536 ] || fail "the S3 server did not answer a range"
for s in agent nginx; do
  code=$(curl -s -o "$work/got" -w '%{http_code}' -r 1000000-1065535 "$(sed -n 2p "$work/urls-$s.txt")")
  [ "$code" = 206 ] || fail "$s answered $code to a range request"
  cmp -s "$work/got" "$work/expect" || fail "$s returned the wrong bytes"
done
[ "$(curl -s -o /dev/null -w '%{http_code}' http://127.0.0.1:18180/videos/cat/t1.mp4)" = 401 ] ||
  fail "the agent served without a token"
# Start both caches empty (the sanity reads are not counted as origin bytes below).
metric() { curl -s http://127.0.0.1:19180/metrics | awk -v m="$1" '$1 == m {print $2}'; }
agent_read0=$(metric videodelivery_agent_storage_read_bytes_total)
nginx_read0=$(awk '$1 ~ /^[0-9]+$/ {s += $1} END {print s + 0}' "$work/nginx/origin.log" 2>/dev/null || echo 0)

# How much each disk cache holds, sampled every second: its peak and its mean over the benchmark. nginx's cache
# manager trims to max_size only when it wakes (about every 10 s while under it), so it may hold more for a while.
disk_use() { # DIR FILE: writes "PEAK_KIB MEAN_KIB" to FILE after each sample
  local peak=0 sum=0 n=0 now
  while sleep 1; do
    now=$(du -sk "$1" 2>/dev/null | cut -f1 || true) # du fails when a file goes mid-walk
    now=${now:-0}
    [ "$now" -gt "$peak" ] && peak=$now
    sum=$((sum + now)) n=$((n + 1))
    echo "$peak $((sum / n))" >"$2"
  done
}
disk_use "$work/agent-disk" "$work/agent-disk.use" &
pids+=($!)
disk_use "$work/nginx/cache" "$work/nginx-disk.use" &
pids+=($!)

ulimit -n 65536 2>/dev/null || true
echo "catalogue: $RUNS runs x ${SECONDS_PER_RUN}s x 3 servers at $CONNS connections" >&2
# Where the agent's time goes: perf samples its CPU (a software clock; this kind of machine has no hardware
# counters) during its first turn, when perf can.
profile="perf not available: no profile"
if command -v perf >/dev/null && perf record -q -e cpu-clock -o /dev/null -- true 2>/dev/null; then
  (sleep 1; perf record -q -e cpu-clock -F 999 -g -p "$agent_pid" -o "$work/perf.data" -- sleep $((SECONDS_PER_RUN - 2)) \
    >/dev/null 2>&1) &
  perf_pid=$!
fi
out=$(VD_CAT_SERVERS="agent=$work/urls-agent.txt nginx=$work/urls-nginx.txt s3=$work/urls-s3.txt" \
  VD_CAT_OBJECT_SIZE=$SIZE VD_CAT_ZIPF=$ZIPF VD_CAT_CONNS=$CONNS VD_CAT_SECONDS=$SECONDS_PER_RUN VD_CAT_RUNS=$RUNS \
  cargo bench -q -p videodelivery-agent --bench catalogue 2>"$work/client.err") || {
  cat "$work/client.err" >&2
  fail "the catalogue client failed"
}
if [ -n "${perf_pid:-}" ] && wait "$perf_pid" && [ -s "$work/perf.data" ]; then
  # Inclusive share of the agent's CPU samples of the frames that explain it, then the top self costs.
  profile=$(
    echo "| frame (inclusive) | share of the agent's CPU |"
    echo "|---|---:|"
    perf report -i "$work/perf.data" --children --sort symbol -g none --stdio 2>/dev/null |
      awk '$1 ~ /%$/ && $1 + 0 >= 1 && /read_file|write_vectored| exc_page_fault|crc32fast::specialized::[a-z]+::calculate|storage::|_copy_to_iter|_copy_from_iter/ {
        name = $0; sub(/.*\] /, "", name); sub(/[ \t]+-[ \t]+-[ \t]*$/, "", name); sub(/[ \t]+$/, "", name)
        print "| `" name "` | " $1 " |" }' | head -12 || true
  )
fi
served() { awk -v n="$1" '$1 == "served" && $2 == n {print $3}' <<<"$out"; }
agent_read=$(($(metric videodelivery_agent_storage_read_bytes_total) - agent_read0))
disk_hits=$(curl -s http://127.0.0.1:19180/metrics | awk '$1 ~ /^videodelivery_agent_served_bytes_total/ && /cache="disk"/ {s += $2} END {printf "%.0f", s}')
count() { curl -s http://127.0.0.1:19180/metrics | awk -v m="$1" '$1 ~ "^"m {s += $2} END {printf "%.0f", s}'; }
diag="disk tier: $(count videodelivery_agent_disk_cache_hits_total) slices read, $(count videodelivery_agent_disk_cache_writes_total) written, \
$(count videodelivery_agent_disk_cache_writes_dropped_total) writes dropped (queue full); memory cache: \
$(count videodelivery_agent_cache_hits_total) hits, $(count videodelivery_agent_cache_misses_total) misses; \
$(count videodelivery_agent_memory_busy_total) reads refused for the memory budget"
hwm() { awk '/VmHWM/ {print $2}' "/proc/$1/status"; } # KiB
agent_rss=$(hwm "$agent_pid")
nginx_rss=$(hwm "$nginx_pid")
for w in $(pgrep -P "$nginx_pid"); do nginx_rss=$((nginx_rss + $(hwm "$w"))); done
cpu() { awk '{print $14 + $15}' "/proc/$1/stat"; } # user + system clock ticks
agent_cpu=$(cpu "$agent_pid")
nginx_cpu=$(cpu "$nginx_pid")
for w in $(pgrep -P "$nginx_pid"); do nginx_cpu=$((nginx_cpu + $(cpu "$w"))); done
per_gib() { python3 -c "print(f'{$1 / $(getconf CLK_TCK) / ($2 / 2**30):.3f}')"; } # CPU seconds per GiB served
kill -USR1 "$nginx_pid" # reopens its log, writing the buffered lines (after its workers were measured)
sleep 1
nginx_read=$(($(awk '$1 ~ /^[0-9]+$/ {s += $1} END {printf "%.0f", s}' "$work/nginx/origin.log") - nginx_read0))
disk_mib() { read -r peak mean <"$work/$1.use" && echo "$((peak / 1024)) / $((mean / 1024))"; }
offload() { python3 -c "print(f'{1 - $1 / $2:.3f}')"; } # 1 - origin bytes / served bytes

nginx_size="the agent's two tiers together"
[ "$NGINX_CACHE_MIB" = $((CACHE_MIB + DISK_MIB)) ] || nginx_size="set apart from the agent's, NGINX_CACHE_MIB"
section=$(
  echo "## A catalogue in front of S3: agent vs nginx proxy_cache + slice vs direct S3 (\`bash bench/catalogue.sh\`)"
  echo
  echo "Produced on $(date -u +%Y-%m-%d), $(nproc) cores, client and servers sharing them: $TITLES titles of $SIZE bytes"
  echo "($((TITLES * SIZE / 1048576)) MiB) in versitygw, random 1 MiB ranges of titles drawn from Zipf(s = $ZIPF) (title k"
  echo "weighs 1/k^s: a few hot titles, a long tail) by $CONNS keep-alive connections per server, $RUNS runs of"
  echo "${SECONDS_PER_RUN} s, servers taking turns with the same draws; medians over runs. Both caches start empty."
  echo "Agent: memory cache $CACHE_MIB MiB over a disk tier of $DISK_MIB MiB (TinyLFU admission), rate limit and"
  echo "access log off, a token checked on every request. nginx: \`proxy_cache\` of $NGINX_CACHE_MIB MiB on disk"
  echo "($nginx_size) with \`slice 1m\`, upstream keep-alive, \`proxy_cache_min_uses\` at its default"
  echo "(1), an access log of upstream bytes. Times are from the client: TTFB to the first body byte, last byte to the"
  echo "end of the 1 MiB body."
  echo
  grep '^|' <<<"$out"
  echo
  echo "| server | origin bytes / served bytes | origin offload | peak RSS MiB | disk MiB, peak / mean | CPU s per GiB served |"
  echo "|---|---:|---:|---:|---:|---:|"
  echo "| agent | $agent_read / $(served agent) | $(offload "$agent_read" "$(served agent)") | $((agent_rss / 1024)) | $(disk_mib agent-disk) | $(per_gib "$agent_cpu" "$(served agent)") |"
  echo "| nginx | $nginx_read / $(served nginx) | $(offload "$nginx_read" "$(served nginx)") | $((nginx_rss / 1024)) (master + workers) | $(disk_mib nginx-disk) | $(per_gib "$nginx_cpu" "$(served nginx)") |"
  echo "| s3 | $(served s3) / $(served s3) | 0 | - | - | - |"
  echo
  echo "The agent served $disk_hits bytes from its disk tier ($diag)."
  echo
  echo "Where the agent's CPU went during its first turn (\`perf record -e cpu-clock -g\`):"
  echo
  echo "$profile"
  echo
)
# In place between the catalogue markers; a dated reading written by hand inside them stays (bench/splice.py).
python3 bench/splice.py catalogue <<<"$section"
echo "$section"

#!/usr/bin/env bash
# Counts the agent's instructions on its hot paths with valgrind's callgrind (exact counts, unlike timings on a
# shared machine) and writes bench/PROFILE.md: instructions per MiB served from storage vs from the slice cache,
# per tiny Safari-probe request, and the functions that cost most.
#   bash bench/profile.sh
set -euo pipefail
cd "$(dirname "$0")/.."
source bench/lib.sh
command -v valgrind >/dev/null || { apt-get update -qq && apt-get install -y -qq valgrind >/dev/null; }
cargo build --release --locked -q -p videodelivery-agent -p vdctl
bin=$PWD/target/release
work=$(mktemp -d /tmp/vd-profile.XXXXXX)
trap 'kill $(jobs -p) 2>/dev/null || true; [ -n "${KEEP:-}" ] || rm -rf "$work"' EXIT
mkdir -p "$work/media"
head -c $((64 << 20)) /dev/urandom >"$work/media/film.mp4"
"$bin/vdctl" keygen --out "$work/keyring.json" 2>/dev/null
auth="Authorization: Bearer $("$bin/vdctl" sign --keyring "$work/keyring.json" --path /videos/film.mp4 --token-only --ttl 2h)"

# profile NAME CACHE_MIB REQUESTS RANGE_BYTES -> prints "instructions requests bytes"; leaves $work/NAME.out
profile() {
  local name=$1 cache=$2 n=$3 len=$4 port=18280
  valgrind --tool=callgrind --callgrind-out-file="$work/$name.out" --instr-atstart=no \
    "$bin/videodelivery-agent" --storage "file://$work/media" --keyring "$work/keyring.json" \
    --listen 127.0.0.1:$port --admin-listen 127.0.0.1:18281 --rate-limit 0 --access-log=false --cache-size-mib "$cache" \
    >"$work/$name.log" 2>&1 &
  local pid=$!
  for _ in $(seq 300); do curl -s -o /dev/null "http://127.0.0.1:$port/" && break; sleep 0.2; done
  # Warm-up pass (fills the cache when it is on), then the measured pass over the same ranges.
  for pass in warm measure; do
    [ "$pass" = measure ] && callgrind_control -i on "$pid" >/dev/null 2>&1
    for i in $(seq 0 $((n - 1))); do
      local first=$(((i * 1048576 * 7) % ((64 << 20) - len)))
      curl -s -o /dev/null -H "$auth" -H "Range: bytes=$first-$((first + len - 1))" "http://127.0.0.1:$port/videos/film.mp4"
    done
  done
  callgrind_control -i off "$pid" >/dev/null 2>&1
  kill -TERM "$pid"; wait "$pid" 2>/dev/null || true
  # Instrumentation was on only for the measured pass, so the exit dump holds exactly that.
  cp "$work/$name.out" "$work/$name.final"
  echo "$(callgrind_annotate "$work/$name.final" 2>/dev/null | awk '/PROGRAM TOTALS/ {gsub(",", "", $1); print $1}') $n $len"
}

# keepalive PORT REQUESTS RANGE_BYTES: the requests back to back on one connection (curl reuses it across `next`).
keepalive() {
  local cfg=$work/curl-$1.cfg
  : >"$cfg"
  for i in $(seq 0 $(($2 - 1))); do
    local first=$(((i * 1048576 * 7) % ((64 << 20) - $3)))
    ((i > 0)) && echo next >>"$cfg"
    printf 'url = "http://127.0.0.1:%s/videos/film.mp4"\noutput = "/dev/null"\nsilent\nheader = "%s"\nheader = "Range: bytes=%s-%s"\n' \
      "$1" "$auth" "$first" "$((first + $3 - 1))" >>"$cfg"
  done
  curl -K "$cfg"
}

# measure_keepalive NAME PID PORT REQUESTS RANGE_BYTES -> "instructions": a warm-up pass, then the measured one.
measure_keepalive() {
  keepalive "$3" "$4" "$5"
  callgrind_control -i on "$2" >/dev/null 2>&1
  keepalive "$3" "$4" "$5"
  callgrind_control -i off "$2" >/dev/null 2>&1
  callgrind_control -d "$2" >/dev/null 2>&1
  local dump
  dump=$(ls -t "$work/$1".out.* 2>/dev/null | head -1)
  cp "$dump" "$work/$1.final"
  callgrind_annotate "$work/$1.final" 2>/dev/null | awk '/PROGRAM TOTALS/ {gsub(",", "", $1); print $1}'
}

# The same requests to the agent and to nginx (one process, `master_process off`, sendfile on), each on one
# keep-alive connection: instructions per request, user space only, for both.
peer() {
  local n=$1 len=$2 tag=$3
  valgrind --tool=callgrind --callgrind-out-file="$work/agent-$tag.out" --instr-atstart=no \
    "$bin/videodelivery-agent" --storage "file://$work/media" --keyring "$work/keyring.json" \
    --listen 127.0.0.1:18282 --admin-listen 127.0.0.1:18283 --rate-limit 0 --access-log=false >"$work/agent-$tag.log" 2>&1 &
  local apid=$!
  nginx_conf "$work/nginx/nginx.conf" "$work/media" 127.0.0.1:18284 1 64
  valgrind --tool=callgrind --callgrind-out-file="$work/nginx-$tag.out" --instr-atstart=no \
    nginx -c "$work/nginx/nginx.conf" -g 'daemon off; master_process off;' >"$work/nginx-$tag.log" 2>&1 &
  local npid=$!
  for port in 18282 18284; do
    for _ in $(seq 300); do curl -s -o /dev/null "http://127.0.0.1:$port/" && break; sleep 0.2; done
  done
  local a b
  a=$(measure_keepalive "agent-$tag" "$apid" 18282 "$n" "$len")
  b=$(measure_keepalive "nginx-$tag" "$npid" 18284 "$n" "$len")
  kill -TERM "$apid" "$npid"; wait "$apid" "$npid" 2>/dev/null || true
  echo "$a $b"
}
command -v nginx >/dev/null || { apt-get update -qq && apt-get install -y -qq nginx >/dev/null; }
read -r peer_tiny_agent peer_tiny_nginx < <(peer 300 2 tiny)
read -r peer_range_agent peer_range_nginx < <(peer 40 262144 range)

read -r nocache_ir n1 len1 < <(profile nocache 0 40 1048576)
read -r cache_ir n2 len2 < <(profile cache 256 40 1048576)
read -r tiny_ir n3 _ < <(profile tiny 256 300 2)
per_mib() { python3 -c "print(f'{$1 / ($2 * $3 / 1048576):,.0f}')"; }
top() {
  callgrind_annotate --inclusive=no --threshold=100 "$work/$1.final" 2>/dev/null | grep -E '^ *[0-9,]+ +\(' |
    grep -v 'PROGRAM TOTALS' | head -12 | sed -E 's/ \[[^]]*\]$//' | cut -c1-150 || true
}
{
  echo "# Agent profile (callgrind)"
  echo
  echo "Produced by \`bash bench/profile.sh\` on $(date -u +%Y-%m-%d): the release agent under valgrind's callgrind,"
  echo "counting every user-space instruction of the process during the measured pass (instrumentation switched on"
  echo "after a warm-up pass over the same ranges; kernel work such as copying to sockets is not counted). Counts"
  echo "are exact and repeatable, unlike timings on this shared machine."
  echo
  echo "| path | requests | bytes each | instructions | per MiB served | per request |"
  echo "|---|---|---|---|---|---|"
  echo "| 1 MiB ranges, cache off (storage every time) | $n1 | $len1 | $nocache_ir | $(per_mib "$nocache_ir" "$n1" "$len1") | $((nocache_ir / n1)) |"
  echo "| 1 MiB ranges, cache warm | $n2 | $len2 | $cache_ir | $(per_mib "$cache_ir" "$n2" "$len2") | $((cache_ir / n2)) |"
  echo "| Safari probe \`bytes=0-1\`, cache warm | $n3 | 2 | $tiny_ir | - | $((tiny_ir / n3)) |"
  echo
  echo "Cache warm / cache off, instructions per MiB: $(python3 -c "print(f'{$cache_ir / $nocache_ir:.2f}')")x."
  echo
  echo "## Per request, agent vs nginx (one keep-alive connection each)"
  echo
  echo "The same requests, back to back on one keep-alive connection, to the agent (cache warm, token checked) and"
  echo "to nginx (one process, \`master_process off\`, \`sendfile on\`, page cache warm), both under callgrind after a"
  echo "warm-up pass. User-space instructions only: nginx's file bytes move inside the kernel (sendfile), the agent's"
  echo "are copied from its cache by \`write\`, which the kernel also does; neither is counted."
  echo
  echo "| request | requests | agent instructions per request | nginx instructions per request | agent/nginx |"
  echo "|---|---|---|---|---|"
  echo "| \`bytes=0-1\` | 300 | $((peer_tiny_agent / 300)) | $((peer_tiny_nginx / 300)) | **$(python3 -c "print(f'{$peer_tiny_agent / $peer_tiny_nginx:.2f}')")x** |"
  echo "| 256 KiB range | 40 | $((peer_range_agent / 40)) | $((peer_range_nginx / 40)) | **$(python3 -c "print(f'{$peer_range_agent / $peer_range_nginx:.2f}')")x** |"
  echo
  sha=$(callgrind_annotate --inclusive=yes "$work/agent-tiny.final" 2>/dev/null | grep -m1 'sha2::sha256::compress256' |
    awk '{gsub(",", "", $1); print $1}' || true)
  echo "Of the agent's count, $((${sha:-0} / 300)) instructions per request are SHA-256 rounds of the token's HMAC:"
  echo "valgrind does not emulate the SHA extensions, so under callgrind the \`sha2\` crate runs its software rounds;"
  echo "natively$(grep -qw sha_ni /proc/cpuinfo && echo " (this CPU has \`sha_ni\`)") it runs them in hardware at a fraction of that."
  echo "nginx checks no token at all."
  echo
  echo "Where the agent's \`bytes=0-1\` instructions go (inclusive cost, top 25):"
  echo
  echo '```'
  callgrind_annotate --inclusive=yes "$work/agent-tiny.final" 2>/dev/null | grep -E '^ *[0-9,]+ +\(' | grep -v 'PROGRAM TOTALS' |
    head -25 | sed -E 's/ \[[^]]*\]$//' | cut -c1-150 || true
  echo '```'
  echo
  echo "nginx's \`bytes=0-1\` (self cost, top 12):"
  echo
  echo '```'
  top nginx-tiny
  echo '```'
  echo
  echo "## Where the instructions go (self cost, top 12)"
  echo
  echo "1 MiB ranges, cache off:"
  echo; echo '```'; top nocache; echo '```'; echo
  echo "1 MiB ranges, cache warm:"
  echo; echo '```'; top cache; echo '```'; echo
  echo "Safari probe:"
  echo; echo '```'; top tiny; echo '```'
} >bench/PROFILE.md
cat bench/PROFILE.md

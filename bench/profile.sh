#!/usr/bin/env bash
# Counts the agent's instructions on its hot paths with valgrind's callgrind (exact counts, unlike timings on a
# shared machine) and writes bench/PROFILE.md: instructions per MiB served from storage vs from the slice cache,
# per tiny Safari-probe request, and the functions that cost most.
#   bash bench/profile.sh
set -euo pipefail
cd "$(dirname "$0")/.."
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
    --listen 127.0.0.1:$port --admin-listen 127.0.0.1:18281 --rate-limit 0 --cache-size-mib "$cache" \
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

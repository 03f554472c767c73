#!/usr/bin/env bash
# The cost of the access log: the same agent binary serving the same file with the log off and on (JSON, every
# request, written to a file as a container runtime would), interleaved, median of RUNS runs, written as a ratio
# into bench/RESULTS.md (between the `access-log` markers, replaced on each run; a reading written by hand inside them stays).
#   bash bench/access_log.sh
#   RUNS=5 DURATION=10s bash bench/access_log.sh
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
RUNS=${RUNS:-3}
DURATION=${DURATION:-5s}
command -v wrk >/dev/null || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq wrk >/dev/null; }
# Only the agent needs a release build; vdctl just makes a keyring and a token (a debug one will do).
cargo build --release --locked -q -p videodelivery-agent
bin=$root/target/release
vdctl=$root/target/release/vdctl
[ -x "$vdctl" ] || { cargo build --locked -q -p vdctl; vdctl=$root/target/debug/vdctl; }

source bench/lib.sh
bench_setup vd-bench-log

mkdir -p "$work/media"
head -c $((8 * 1024 * 1024)) /dev/urandom >"$work/media/film.mp4"
"$vdctl" keygen --out "$work/keyring.json" 2>/dev/null
token=$("$vdctl" sign --keyring "$work/keyring.json" --path /videos/film.mp4 --ttl 23h --token-only)
flags=(--storage "file://$work/media" --keyring "$work/keyring.json" --rate-limit 0 --log-format json)
"$bin/videodelivery-agent" "${flags[@]}" --listen 127.0.0.1:18180 --admin-listen 127.0.0.1:19190 \
  --access-log=false >"$work/off.log" 2>&1 &
pids+=($!)
"$bin/videodelivery-agent" "${flags[@]}" --listen 127.0.0.1:18181 --admin-listen 127.0.0.1:19191 \
  --access-log=true --access-log-format=json >"$work/on.log" 2>&1 &
pids+=($!)
wait_port 18180 "agent, log off"; wait_port 18181 "agent, log on"

# tiny: `Range: bytes=0-1`, the most requests per second and so the most lines; ranges: 64 KiB ranges.
declare -A range=([tiny]="bytes=0-1" [ranges]="bytes=1048576-1114111")
raw=$work/raw.txt
for run in $(seq "$RUNS"); do
  for case in tiny ranges; do
    for mode in off on; do
      port=$([ "$mode" = off ] && echo 18180 || echo 18181)
      rps=$(wrk -t2 -c64 -d"$DURATION" -H "Authorization: Bearer $token" -H "Range: ${range[$case]}" \
        "http://127.0.0.1:$port/videos/film.mp4" | awk '/Requests\/sec/ {print $2}')
      echo "$case $mode $rps" | tee -a "$raw"
    done
  done
done
lines=$(curl -s http://127.0.0.1:19191/metrics | awk '/^videodelivery_agent_access_log_lines_total/ {print $2}')
dropped=$(curl -s http://127.0.0.1:19191/metrics | awk '/^videodelivery_agent_access_log_dropped_total/ {print $2}')
logged=$(grep -c '"log":"access"' "$work/on.log" || true)

table=$(python3 - "$raw" <<'PY'
import statistics, sys
rows = {}
for line in open(sys.argv[1]):
    case, mode, rps = line.split()
    rows.setdefault(case, {}).setdefault(mode, []).append(float(rps))
print("| case | conns | log off req/s | log on req/s | on/off |")
print("|---|---|---|---|---|")
for case in ("tiny", "ranges"):
    off, on = statistics.median(rows[case]["off"]), statistics.median(rows[case]["on"])
    print(f"| {case} | 64 | {off:.0f} | {on:.0f} | **{on / off:.2f}x** |")
PY
)
section=$(cat <<MD
## Access log cost (\`bash bench/access_log.sh\`)

Produced on $(date -u +%F), $(nproc) cores ($(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)), shared and
noisy. The same release agent twice, with \`--access-log=false\` and with \`--access-log=true --access-log-format=json\`
(every request logged, stdout to a file), a Bearer token checked on every request; wrk -t2 -c64, ${DURATION} per run,
the two in turn, median of ${RUNS} runs. tiny = \`Range: bytes=0-1\` (the most lines per second: the worst case);
ranges = 64 KiB ranges from the slice cache.

$table

The logged agent wrote ${lines:-?} lines (${logged} in its output file) and dropped ${dropped:-?} (the bounded queue
drops and counts lines rather than slow serving down).
MD
)
python3 bench/splice.py access-log <<<"$section"
echo "$section"

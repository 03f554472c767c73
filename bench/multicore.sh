#!/usr/bin/env bash
# The agent and nginx each pinned to N cores (taskset; nginx with N workers, `reuseport`, `sendfile`; the agent
# with one worker thread per core of the same affinity, each pinned to its core), wrk pinned to the cores left
# over, on one 64 MiB file hot in memory: Safari's `bytes=0-1` probe and random 1 MiB ranges at 256 and 1,000
# connections. Servers alternate within each run; every cell is the median of RUNS. Writes the table between the `multicore` markers of bench/RESULTS.md
# (bench/run.sh keeps that section when it rewrites the file).
#   CORES="1 2 4 8" bash bench/multicore.sh     a machine with at least 9 cores
#   bash bench/multicore.sh                     default: N = 1 (on a 2-core machine, wrk gets the other core)
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
RUNS=${RUNS:-3}
DURATION=${DURATION:-5s}
CORES=${CORES:-1}
CONNS=${CONNS:-256 1000}
RAW_OUT=${RAW_OUT:-} # if set, every wrk output is copied there as it lands (a run cut short keeps what it measured)
SECTION=${SECTION:-multicore} # the section of bench/RESULTS.md written; none: write nothing (bench/zerocopy.sh)
# Agent flags; the servers have their cores to themselves here, so the agent pins its workers as nginx could.
read -r -a agent_args <<<"${AGENT_ARGS:---pin-workers=true --reuse-port=true}" # like nginx here (reuseport); AGENT_ARGS=--pin-workers=false to compare
BIG=$((64 * 1024 * 1024))
ncpu=$(nproc)

need=()
command -v nginx >/dev/null || need+=(nginx)
command -v wrk >/dev/null || need+=(wrk)
if ((${#need[@]})); then
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
fi
# AGENT_BIN/VDCTL_BIN let a prepared machine (no toolchain) run prebuilt binaries.
if [ -z "${AGENT_BIN:-}" ]; then
  cargo build --release --locked -q -p videodelivery-agent -p vdctl
fi
agent_bin=${AGENT_BIN:-$root/target/release/videodelivery-agent}
vdctl_bin=${VDCTL_BIN:-$root/target/release/vdctl}

source bench/lib.sh
bench_setup vd-multicore

mkdir -p "$work/media" "$work/nginx" "$work/raw"
head -c "$BIG" /dev/urandom >"$work/media/big.mp4"
"$vdctl_bin" keygen --out "$work/keyring.json" 2>/dev/null
token=$("$vdctl_bin" sign --keyring "$work/keyring.json" --path /videos/big.mp4 --ttl 23h --token-only)
ulimit -n 65536 2>/dev/null || true

start_servers() { # N: cores 0..N-1 for the servers
  local last=$(($1 - 1))
  taskset -c "0-$last" "$agent_bin" --storage "file://$work/media" --keyring "$work/keyring.json" \
    --listen 127.0.0.1:18180 --admin-listen 127.0.0.1:19190 --rate-limit 0 --max-streams 100000 \
    --max-connections 100000 --log-format json --access-log=false "${agent_args[@]}" >"$work/agent.log" 2>&1 &
  pids+=($!)
  nginx_conf "$work/nginx/nginx.conf" "$work/media" "127.0.0.1:18181 reuseport" "$1"
  taskset -c "0-$last" nginx -c "$work/nginx/nginx.conf" -g 'daemon off;' &
  pids+=($!)
  wait_port 18180 agent
  wait_port 18181 nginx
  # Warm both: the agent's slice cache and the page cache.
  for port in 18180 18181; do
    curl -s -o /dev/null -H "Authorization: Bearer $token" "http://127.0.0.1:$port/videos/big.mp4"
  done
}

# cell SERVER CASE CONNS N RUN
cell() {
  local port=18180 extra=()
  [ "$1" = nginx ] && port=18181
  case $2 in
    tiny) extra=(-H 'Range: bytes=0-1') ;;
    ranges) extra=(-s bench/ranges.lua) ;;
  esac
  local load="$4-$((ncpu - 1))" threads=$((ncpu - $4))
  ((threads > 8)) && threads=8
  FILE_SIZE=$BIG taskset -c "$load" wrk -t"$threads" -c"$3" -d"$DURATION" --latency "${extra[@]}" \
    -H "Authorization: Bearer $token" "http://127.0.0.1:$port/videos/big.mp4" >"$work/raw/$1.$2.$3.$4.$5.txt"
  if [ -n "$RAW_OUT" ]; then mkdir -p "$RAW_OUT" && cp "$work/raw/$1.$2.$3.$4.$5.txt" "$RAW_OUT/"; fi
}

measured=()
for n in $CORES; do
  if ((n >= ncpu)); then
    echo "multicore: skipping N=$n: this machine has $ncpu cores and the load needs at least one" >&2
    continue
  fi
  start_servers "$n"
  for run in $(seq "$RUNS"); do
    for case in tiny ranges; do
      for conns in $CONNS; do
        # Alternate which server goes first, so neither always meets a warmer machine.
        if ((run % 2)); then order=(agent nginx); else order=(nginx agent); fi
        for s in "${order[@]}"; do cell "$s" "$case" "$conns" "$n" "$run"; done
      done
    done
    echo "multicore: N=$n run $run done" >&2
  done
  stop_servers
  measured+=("$n")
done
((${#measured[@]})) || fail "no N in CORES='$CORES' fits this $ncpu-core machine"

table=$(python3 - "$work/raw" "$RUNS" "${measured[*]}" "$CONNS" <<'PY'
import re, statistics, sys
from pathlib import Path
raw, runs, cores, conns = Path(sys.argv[1]), int(sys.argv[2]), sys.argv[3].split(), sys.argv[4].split()
def parse(p):
    t = p.read_text()
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", t).group(1))
    m = re.search(r"^\s+99%\s+([\d.]+)(us|ms|s)\s*$", t, re.M)
    p99 = float(m.group(1)) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[m.group(2)]
    errors = sum(int(x) for x in re.findall(r"(?:connect|read|write|timeout) (\d+)", t))
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", t)
    return rps, p99, errors + (int(non2xx.group(1)) if non2xx else 0)
def med(server, case, c, n, i):
    return statistics.median(parse(raw / f"{server}.{case}.{c}.{n}.{r}.txt")[i] for r in range(1, runs + 1))
print("| case | conns | server cores | agent req/s | nginx req/s | agent/nginx | agent p99 ms | nginx p99 ms | p99 agent/nginx | errors agent / nginx |")
print("|---|---|---|---|---|---|---|---|---|---|")
for case, name in (("tiny", "`bytes=0-1`"), ("ranges", "1 MiB ranges")):
    for c in conns:
        for n in cores:
            a, b = med("agent", case, c, n, 0), med("nginx", case, c, n, 0)
            ap, bp = med("agent", case, c, n, 1), med("nginx", case, c, n, 1)
            ae, be = med("agent", case, c, n, 2), med("nginx", case, c, n, 2)
            print(f"| {name} | {c} | {n} | {a:,.0f} | {b:,.0f} | **{a / b:.2f}x** | {ap:.2f} | {bp:.2f} | {ap / bp:.2f}x | {ae:.0f} / {be:.0f} |")
PY
)

section=$(
  echo "## Many cores (\`bash bench/multicore.sh\`)"
  echo
  echo "Produced by \`CORES=\"${measured[*]}\" bash bench/multicore.sh\` (RUNS=$RUNS, DURATION=$DURATION) on $(date -u +%Y-%m-%d),"
  echo "$ncpu cores ($(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)). Each server pinned to cores 0..N-1 (nginx:"
  echo "N workers, \`reuseport\`, \`sendfile\`; the agent: one worker per core of the same affinity, \`${AGENT_ARGS:---pin-workers=true --reuse-port=true}\`), wrk pinned to the"
  echo "other cores (at most 8 threads), one 64 MiB file hot in memory, the agent checking a Bearer token on every"
  echo "request. Medians of $RUNS; servers alternate which goes first."
  echo
  echo "$table"
)
# In place between the section's markers; a reading written by hand inside them stays (bench/splice.py).
[ "$SECTION" = none ] || python3 bench/splice.py "$SECTION" <<<"$section"
echo "$section"

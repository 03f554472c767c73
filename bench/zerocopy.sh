#!/usr/bin/env bash
# Zero-copy or a copy: the agent serving one 64 MiB local file three ways, each beside nginx (`sendfile on`) in the
# same run of bench/multicore.sh (servers pinned to N cores, wrk on the others):
#   cached    copied from its slice cache (the default: the cache on);
#   copy      the slice cache off and --sendfile=false: read from the page cache and copied;
#   sendfile  the slice cache off, so ranges of 64 KiB and more go out with sendfile(2) (--sendfile, the default).
# Each variant is compared with the nginx of its own run. Writes the `zerocopy` section of bench/RESULTS.md.
#   bash bench/zerocopy.sh            N = 1 (on a 2-core machine, wrk gets the other core); CORES="1 4" for more
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS=${RUNS:-3}
CORES=${CORES:-1}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
declare -A variant=([cached]="" [copy]="--cache-size-mib=0 --sendfile=false" [sendfile]="--cache-size-mib=0")
for v in cached copy sendfile; do
  RUNS=$RUNS CORES=$CORES SECTION=none RAW_OUT="$work/$v" \
    AGENT_ARGS="--pin-workers=true --reuse-port=true ${variant[$v]}" bash bench/multicore.sh >/dev/null
  echo "zerocopy: $v done" >&2
done

table=$(python3 - "$work" "$RUNS" "$CORES" <<'PY'
import re, statistics, sys
from pathlib import Path
work, runs, cores = Path(sys.argv[1]), int(sys.argv[2]), sys.argv[3].split()
def parse(p):
    t = p.read_text()
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", t).group(1))
    m = re.search(r"^\s+99%\s+([\d.]+)(us|ms|s)\s*$", t, re.M)
    return rps, float(m.group(1)) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[m.group(2)]
def med(v, server, case, c, n, i):
    return statistics.median(parse(work / v / f"{server}.{case}.{c}.{n}.{r}.txt")[i] for r in range(1, runs + 1))
print("| case | conns | server cores | agent | agent req/s | nginx req/s, same run | agent/nginx | agent p99 ms | nginx p99 ms |")
print("|---|---|---|---|---|---|---|---|---|")
for case, name in (("ranges", "1 MiB ranges"), ("tiny", "`bytes=0-1`")):
    for c in ("256", "1000"):
        for n in cores:
            for v in ("cached", "copy", "sendfile"):
                a, b = med(v, "agent", case, c, n, 0), med(v, "nginx", case, c, n, 0)
                ap, bp = med(v, "agent", case, c, n, 1), med(v, "nginx", case, c, n, 1)
                print(f"| {name} | {c} | {n} | {v} | {a:,.0f} | {b:,.0f} | **{a / b:.2f}x** | {ap:.2f} | {bp:.2f} |")
PY
)
section=$(
  echo "## Zero-copy (\`bash bench/zerocopy.sh\`)"
  echo
  echo "Produced by \`CORES=\"$CORES\" bash bench/zerocopy.sh\` (RUNS=$RUNS) on $(date -u +%Y-%m-%d), $(nproc) cores"
  echo "($(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)): \`bench/multicore.sh\` three times, the agent serving one 64 MiB"
  echo "local file hot in memory three ways, each beside nginx (\`sendfile on\`) in the same run. cached: copied from the"
  echo "slice cache (the default); copy: the slice cache off and \`--sendfile=false\`, read from the page cache and"
  echo "copied; sendfile: the slice cache off, so ranges of 64 KiB and more go out with \`sendfile(2)\` (the default with"
  echo "the cache off). Compare each variant through its ratio to the nginx of its own run. Medians of $RUNS."
  echo
  echo "$table"
)
python3 bench/splice.py zerocopy <<<"$section"
echo "$section"

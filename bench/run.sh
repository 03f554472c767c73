#!/usr/bin/env bash
# Serves the same files with the agent and with nginx (and the agent in front of S3 vs S3 directly) on loopback,
# drives each with wrk in the same run, and writes medians and ratios to bench/RESULTS.md.
#   bash bench/run.sh                 everything (about 10 minutes)
#   RUNS=5 DURATION=10s bash bench/run.sh
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
RUNS=${RUNS:-3}
DURATION=${DURATION:-5s}
BIG=$((64 * 1024 * 1024))    # random 1 MiB ranges inside it
WHOLE=$((8 * 1024 * 1024))   # whole-file GETs

need=()
command -v nginx >/dev/null || need+=(nginx)
command -v wrk >/dev/null || need+=(wrk)
if ((${#need[@]})); then
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
fi
cargo build --release --locked -q -p videodelivery-agent -p vdctl
s3bin=$(bash tests/s3/build.sh)
bin=$root/target/release

source bench/lib.sh
bench_setup vd-bench

# The same bytes for every server: a media dir (agent, nginx) that is also the S3 bucket `bench`.
mkdir -p "$work/s3/bench" "$work/nginx"
head -c "$BIG" /dev/urandom >"$work/s3/bench/big.mp4"
head -c "$WHOLE" /dev/urandom >"$work/s3/bench/whole.mp4"
media=$work/s3/bench

"$bin/vdctl" keygen --out "$work/keyring.json" 2>/dev/null
token=$("$bin/vdctl" sign --keyring "$work/keyring.json" --path /videos/big.mp4 --prefix /videos/ --ttl 23h --token-only)
auth="Authorization: Bearer $token"

# Access log off, as nginx's: its own cost is measured by bench/access_log.sh.
agent_flags=(--keyring "$work/keyring.json" --rate-limit 0 --max-streams 100000 --log-format json --access-log=false)
"$bin/videodelivery-agent" --storage "file://$media" --listen 127.0.0.1:18080 --admin-listen 127.0.0.1:19090 \
  "${agent_flags[@]}" >"$work/agent.log" 2>&1 &
pids+=($!)
nginx_conf "$work/nginx/nginx.conf" "$media" 127.0.0.1:18081 auto 4096
nginx -c "$work/nginx/nginx.conf" -g 'daemon off;' &
pids+=($!)
"$s3bin" --access AKIABENCH --secret bench-secret --port 127.0.0.1:18082 posix "$work/s3" >"$work/s3.log" 2>&1 &
pids+=($!)
wait_port 18082 versitygw
s3_agent() { # port admin-port extra-flags...
  local port=$1 admin=$2
  shift 2
  AWS_ACCESS_KEY_ID=AKIABENCH AWS_SECRET_ACCESS_KEY=bench-secret "$bin/videodelivery-agent" --storage s3://bench \
    --s3-endpoint http://127.0.0.1:18082 --s3-region us-east-1 --s3-path-style --listen "127.0.0.1:$port" \
    --admin-listen "127.0.0.1:$admin" "${agent_flags[@]}" "$@" >"$work/agent-$port.log" 2>&1 &
  pids+=($!)
  wait_port "$port" "agent on S3"
}
s3_agent 18083 19093                        # slice cache on (256 MiB): warm after the first pass
s3_agent 18084 19094 --cache-size-mib 0     # no cache: every byte from S3, what a cold cache costs at best
wait_port 18080 agent; wait_port 18081 nginx

presigned() { python3 bench/presign.py http://127.0.0.1:18082 bench "$1" AKIABENCH bench-secret; }
# Upload through the S3 API so the objects have ETags (files written behind versitygw's back have none, and
# the agent then cannot cache them).
for f in big.mp4 whole.mp4; do
  cp "$media/$f" "$work/$f"
  code=$(curl -s -o /dev/null -w '%{http_code}' -T "$work/$f" "$(METHOD=PUT python3 bench/presign.py \
    http://127.0.0.1:18082 bench "$f" AKIABENCH bench-secret)")
  [ "$code" = 200 ] || fail "uploading $f to the S3 server answered $code"
done
declare -A url=(
  [agent.whole]=http://127.0.0.1:18080/videos/whole.mp4 [agent.ranges]=http://127.0.0.1:18080/videos/big.mp4
  [nginx.whole]=http://127.0.0.1:18081/videos/whole.mp4 [nginx.ranges]=http://127.0.0.1:18081/videos/big.mp4
  [agent-s3.whole]=http://127.0.0.1:18083/videos/whole.mp4 [agent-s3.ranges]=http://127.0.0.1:18083/videos/big.mp4
  [agent-s3-cold.whole]=http://127.0.0.1:18084/videos/whole.mp4 [agent-s3-cold.ranges]=http://127.0.0.1:18084/videos/big.mp4
  [agent.tiny]=http://127.0.0.1:18080/videos/big.mp4 [nginx.tiny]=http://127.0.0.1:18081/videos/big.mp4
  [s3.whole]=$(presigned whole.mp4) [s3.ranges]=$(presigned big.mp4)
)

# Sanity: every server returns the right bytes for a range and the right status without a token.
dd if="$media/big.mp4" bs=1 skip=1000000 count=65536 status=none >"$work/expect"
for s in agent nginx agent-s3 agent-s3-cold s3; do
  code=$(curl -s -o "$work/got" -w '%{http_code}' -H "$auth" -H 'Range: bytes=1000000-1065535' "${url[$s.ranges]}")
  [ "$code" = 206 ] || fail "$s answered $code to a range request"
  cmp -s "$work/got" "$work/expect" || fail "$s returned the wrong bytes"
done
[ "$(curl -s -o /dev/null -w '%{http_code}' "${url[agent.ranges]}")" = 401 ] || fail "the agent served without a token"

raw=$work/raw
mkdir -p "$raw"
ulimit -n 65536 2>/dev/null || true
cell() { # server case conns run
  local threads=$(($3 == 1 ? 1 : 2)) extra=()
  case $2 in
    ranges) extra=(-s bench/ranges.lua) ;;
    tiny) extra=(-H 'Range: bytes=0-1') ;;   # the Safari probe
  esac
  FILE_SIZE=$BIG wrk -t"$threads" -c"$3" -d"$DURATION" --latency "${extra[@]}" -H "$auth" "${url[$1.$2]}" \
    >"$raw/$1.$2.$3.$4.txt"
}
echo "bench: $RUNS runs x $DURATION per cell" >&2
for run in $(seq "$RUNS"); do
  for case in whole ranges; do
    for conns in 1 64 1000; do
      for s in agent nginx; do cell "$s" "$case" "$conns" "$run"; done
    done
    for conns in 1 64; do
      for s in agent-s3 agent-s3-cold s3; do cell "$s" "$case" "$conns" "$run"; done
    done
  done
  for s in agent nginx; do cell "$s" tiny 64 "$run"; done
  echo "bench: run $run done" >&2
done

# Time to first byte at 64 connections, random 1 MiB ranges, agent (cache warm) vs nginx, interleaved per run:
# wrk times whole responses, so a small client of our own (agent/benches/ttfb.rs) times the first body byte.
ttfb=skipped
if [ "${CARGO_BENCHES:-1}" = 1 ]; then
  ttfb=$(VD_TTFB_SERVERS="agent=${url[agent.ranges]} nginx=${url[nginx.ranges]}" VD_TTFB_AUTH="Bearer $token" \
    VD_TTFB_FILE_SIZE=$BIG VD_TTFB_CONNS=64 VD_TTFB_RUNS=$RUNS VD_TTFB_SECONDS=${DURATION%s} \
    cargo bench -q -p videodelivery-agent --bench ttfb 2>/dev/null | grep -E '^\||^p99' || true)
fi

# 100 viewers of one hot video through a fresh agent on S3: how many bytes does storage serve?
s3_agent 18085 19095
seq 100 | xargs -P 100 -I{} curl -s -o /dev/null -H "$auth" http://127.0.0.1:18085/videos/whole.mp4
read_bytes=$(curl -s http://127.0.0.1:19095/metrics | awk '$1 == "videodelivery_agent_storage_read_bytes_total" {print $2}')
sent_bytes=$(curl -s http://127.0.0.1:19095/metrics | awk '$1 == "videodelivery_agent_sent_bytes_total" {print $2}')
# 100 players opening the 64 MiB film as a <video> element does (`Range: bytes=0-`, the whole film), through a
# fresh agent whose cache (128 MiB) is only twice the film: the long ranges must share slices too.
s3_agent 18086 19096 --cache-size-mib 128
seq 100 | xargs -P 100 -I{} curl -s -o /dev/null -H "$auth" -H 'Range: bytes=0-' http://127.0.0.1:18086/videos/big.mp4
film_read=$(curl -s http://127.0.0.1:19096/metrics | awk '$1 == "videodelivery_agent_storage_read_bytes_total" {print $2}')
film_sent=$(curl -s http://127.0.0.1:19096/metrics | awk '$1 == "videodelivery_agent_sent_bytes_total" {print $2}')

verify=skipped operator=skipped slow=skipped held=skipped
if [ "${CARGO_BENCHES:-1}" = 1 ]; then   # CARGO_BENCHES=0 skips these (quick check of the script)
  slow=$(cargo bench -q -p videodelivery-agent --bench slow_clients 2>/dev/null | grep '^|' || true)
  # A long-tail catalogue: every viewer on a different video, so no slice is shared.
  slow+=$'\n\n'$(VD_SLOW_CLIENTS=1000 VD_SLOW_FILES=1000 cargo bench -q -p videodelivery-agent --bench slow_clients \
    2>/dev/null | grep '^|' || true)
  held=$(cargo bench -q -p videodelivery-agent --bench held_connections 2>/dev/null | grep '^|' || true)
  verify=$(cargo bench -q -p vd-token --bench verify 2>/dev/null | grep -B1 'time:' | grep -v '^--$' || true)
  operator=$(cargo bench -q -p videodelivery-operator --bench scale 2>/dev/null | grep '^|' || true)
fi

# Each section of bench/RESULTS.md is replaced in place between its markers (bench/splice.py): the sections other
# scripts write (multicore.sh, catalogue.sh, access_log.sh) and the readings written by hand inside a section
# (`<!-- NAME-reading:start -->` ... `<!-- NAME-reading:end -->`) stay. A section whose benchmark was skipped
# (CARGO_BENCHES=0) keeps its last figures.
splice() { python3 bench/splice.py "$1"; }
[ -f bench/RESULTS.md ] || echo "# Benchmark results" >bench/RESULTS.md
{
  echo "Produced by \`bash bench/run.sh\` (RUNS=$RUNS, DURATION=$DURATION) on $(date -u +%Y-%m-%d), $(nproc) cores"
  echo "($(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)), shared and noisy: every figure is the median of"
  echo "$RUNS runs, and each comparison is between two servers measured in the same run, interleaved. The load tool"
  echo "shares the two cores with the servers, so absolute numbers are low; read the ratios."
  echo
  echo "Versions: $(nginx -v 2>&1), $(wrk -v 2>&1 | head -1 | cut -d' ' -f1-2), versitygw $("$s3bin" --version 2>&1 | head -1 | awk '{print $NF}'),"
  echo "agent $("$bin/videodelivery-agent" --version | awk '{print $2}') (release build)."
  echo
  echo "Files: whole = ${WHOLE} bytes fetched whole; ranges = random 1 MiB ranges (any offset) in a ${BIG}-byte file."
  echo "The agent checks a Bearer token on every request (nginx has no auth; the agent's cost is included);"
  echo "its slice cache (256 MiB, 1 MiB slices) is on and warm after the first run. tiny = \`Range: bytes=0-1\`."
  echo "nginx: \`sendfile on; tcp_nopush on;\`, \`worker_processes auto\`, access log off. Agent: rate limit off."
  echo "wrk: 1 connection on 1 thread, 64 connections on 2 threads; \`wrk --latency\` percentiles."
  echo
  echo "## Agent vs nginx (local files, page cache warm)"
  python3 bench/report.py "$raw" agent=nginx
} | splice wrk
if [ "$ttfb" != skipped ]; then
  {
    echo "## Time to first byte at 64 connections (\`cargo bench -p videodelivery-agent --bench ttfb\`)"
    echo
    echo "64 keep-alive connections per server asking for random 1 MiB ranges of the ${BIG}-byte file back to back,"
    echo "timed from sending the request to the first body byte; median over $RUNS runs of ${DURATION}, servers in turn,"
    echo "on $(date -u +%Y-%m-%d)."
    echo
    echo "$ttfb"
  } | splice ttfb
fi
{
  echo "## Agent in front of S3 vs direct presigned GETs to the S3 server (versitygw, posix backend)"
  echo
  echo "Measured with the tables above. Warm: the agent's slice cache holds the files after the first pass. Cold: the"
  echo "same agent with \`--cache-size-mib 0\`, every byte read from S3 (a cold cache can do no better)."
  python3 bench/report.py "$raw" agent-s3=s3 agent-s3-cold=s3
} | splice s3
{
  echo "## 100 viewers of one hot video"
  echo
  echo "100 concurrent \`curl\`s of the whole ${WHOLE}-byte file through a fresh agent on S3 ($(date -u +%Y-%m-%d)): the"
  echo "agent sent $sent_bytes bytes and read $read_bytes bytes from storage ($(python3 -c "print(f'{$read_bytes / $WHOLE:.2f}')") copies of the file)."
  echo
  echo "100 concurrent players opening the ${BIG}-byte film with \`Range: bytes=0-\` (what a \`<video>\` element asks"
  echo "first) through a fresh agent on S3 with a 128 MiB cache: the agent sent $film_sent bytes and read $film_read"
  echo "bytes from storage ($(python3 -c "print(f'{$film_read / $BIG:.2f}')") copies)."
} | splice hot
if [ "$slow" != skipped ]; then
  {
    echo "## 10,000 slow viewers (\`cargo bench -p videodelivery-agent --bench slow_clients\`)"
    echo
    echo "Measured on $(date -u +%Y-%m-%d). Each connection reads a 32 MiB video at 64 KiB/s from one agent (cache on); the"
    echo "table counts streams still receiving data in the last 5 s and streams that got at least half their rate over"
    echo "the run. The clients run on the same 2 cores. First table: 10,000 viewers all on one video (a hit, its slices"
    echo "shared). Second: 1,000 viewers, each on a different video (a long-tail catalogue), beside nginx serving the same"
    echo "1,000 files in the same run: nothing is shared, so each stream holds its own slices beside the cache's 256 MiB;"
    echo "the bound is cache 256 MiB + stream budget 128 MiB + 64 MiB = 448 MiB."
    echo
    echo "$slow"
  } | splice slow
fi
if [ "$held" != skipped ]; then
  {
    echo "## Held connections, agent beside nginx (\`cargo bench -p videodelivery-agent --bench held_connections\`)"
    echo
    echo "Measured on $(date -u +%Y-%m-%d), both servers in the same run, defaults except \`--max-connections 100000\` so"
    echo "the cap does not stop the crowd (the agent's slice memory is bounded by \`--cache-size-mib\` 256 +"
    echo "\`--stream-memory-mib\` 128 = 384 MiB plus the process; nginx 2 workers, \`sendfile\`)."
    echo
    echo "$held"
  } | splice held
fi
if [ "$verify" != skipped ]; then
  {
    echo "## Token verification (criterion, \`cargo bench -p vd-token --bench verify\`)"
    echo
    echo '```'
    echo "$verify"
    echo '```'
  } | splice verify
fi
if [ "$operator" != skipped ]; then
  {
    echo "## Operator at scale (\`cargo bench -p videodelivery-operator --bench scale\`, real API server + KCM)"
    echo
    echo "$operator"
  } | splice operator
fi
echo "bench: wrote bench/RESULTS.md" >&2
if [ "${CARGO_BENCHES:-1}" = 1 ]; then
  stop_servers
  RUNS=$RUNS bash bench/catalogue.sh >/dev/null && echo "bench: wrote the catalogue section of bench/RESULTS.md" >&2
  RUNS=$RUNS bash bench/zerocopy.sh >/dev/null && echo "bench: wrote the zero-copy section of bench/RESULTS.md" >&2
fi
if [ "${CARGO_BENCHES:-1}" = 1 ]; then
  bash bench/profile.sh >/dev/null && echo "bench: wrote bench/PROFILE.md" >&2
fi
cat bench/RESULTS.md

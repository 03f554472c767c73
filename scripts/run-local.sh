#!/usr/bin/env bash
# The main job on the embedded default: an agent serving a local directory, a signed URL, a byte range fetched.
# Usage: bash scripts/run-local.sh            (Ctrl-C stops the agent)
#        VD_DEMO_ONESHOT=1 bash scripts/run-local.sh   (fetch once, then stop)
set -euo pipefail
cd "$(dirname "$0")/.."

cargo build --release --locked -q -p videodelivery-agent -p vdctl
bin=target/release
demo=${VD_DEMO_DIR:-target/demo}
mkdir -p "$demo/media"

[ -f "$demo/keyring.json" ] || "$bin/vdctl" keygen --out "$demo/keyring.json"
video="$demo/media/sample.mp4"  # served as /videos/sample.mp4
if [ ! -f "$video" ]; then
  if command -v ffmpeg >/dev/null; then
    ffmpeg -loglevel error -f lavfi -i testsrc=duration=10:size=640x360:rate=25 -f lavfi -i sine=duration=10 \
      -c:v libx264 -pix_fmt yuv420p -c:a aac -movflags +faststart "$video"
  else
    # No ffmpeg: deterministic bytes stand in for a video; ranges work the same.
    python3 -c "import sys,hashlib; sys.stdout.buffer.write(b''.join(hashlib.sha256(str(i).encode()).digest() for i in range(131072)))" >"$video"
  fi
fi

listen=${VD_LISTEN:-127.0.0.1:8080}
"$bin/videodelivery-agent" --listen "$listen" --admin-listen 127.0.0.1:9090 \
  --storage "file://$(realpath "$demo/media")" --keyring "$demo/keyring.json" &
agent=$!
trap 'kill $agent 2>/dev/null; wait $agent 2>/dev/null' EXIT
for _ in $(seq 50); do curl -fsS -o /dev/null http://127.0.0.1:9090/readyz 2>/dev/null && break; sleep 0.1; done

url=$("$bin/vdctl" sign --keyring "$demo/keyring.json" --path /videos/sample.mp4 --ttl 1h --base-url "http://$listen")
echo "signed URL: $url"
echo "GET with Range: bytes=0-1023 ->"
curl -sS -o /dev/null -H 'Range: bytes=0-1023' -w '  HTTP %{http_code}, %{size_download} bytes\n' "$url"
echo "without a token ->"
curl -sS -o /dev/null -w '  HTTP %{http_code}\n' "http://$listen/videos/sample.mp4"
[ -n "${VD_DEMO_ONESHOT:-}" ] && exit 0
echo "agent running on http://$listen (metrics on http://127.0.0.1:9090/metrics); Ctrl-C to stop"
wait $agent

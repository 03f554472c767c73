#!/usr/bin/env bash
# Builds promtool from the Prometheus Go module (github.com/prometheus/prometheus v0.3xx.y is Prometheus 3.xx.y) into
# a versioned cache dir. The alert and dashboard tests run `promtool test rules` with it. Prints the binary's path last.
set -euo pipefail
version=${PROMETHEUS_MODULE_VERSION:-v0.316.0}
dir=${VD_PROMTOOL_DIR:-$HOME/.cache/videodelivery/prometheus/promtool-$version}
mkdir -p "$dir"
# Setup and a test binary may ask at once: one builds, the other waits, then finds it built.
exec 8>"$dir/.build.lock"
flock 8
if [ -x "$dir/promtool" ]; then
  echo "promtool $version already built in $dir" >&2
  echo "$dir/promtool"
  exit 0
fi
start=$(date +%s)
CGO_ENABLED=0 GOBIN="$dir" GOFLAGS=-trimpath go install -ldflags "-s -w" \
  "github.com/prometheus/prometheus/cmd/promtool@$version"
echo "built promtool $version in $(($(date +%s) - start))s into $dir" >&2
echo "$dir/promtool"

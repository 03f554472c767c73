#!/usr/bin/env bash
# Builds Traefik, the gateway the end-to-end tests route viewers through, from the Go modules pinned in go.mod (ours,
# because `go install` refuses Traefik's `replace` lines) into a cache directory keyed by its version. Does nothing
# when it is already there. Prints the binary's path last.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
version=$(awk '$1 == "require" && $2 == "github.com/traefik/traefik/v3" {print $3}' "$here/go.mod")
[ -n "$version" ] || { echo "traefik build: no github.com/traefik/traefik/v3 version in $here/go.mod" >&2; exit 1; }
dir=${VD_TRAEFIK_DIR:-$HOME/.cache/videodelivery/traefik/$version}
mkdir -p "$dir"
# Setup and a test binary may build at once: one builds, the other waits, then finds it built.
exec 8>"$dir/.build.lock"
flock 8
if [ -x "$dir/traefik" ]; then
  echo "traefik $version already built in $dir" >&2
  echo "$dir/traefik"
  exit 0
fi
start=$(date +%s)
pkg=github.com/traefik/traefik/v3
cd "$here"
CGO_ENABLED=0 go build -trimpath -ldflags "-s -w -X $pkg/pkg/version.Version=$version" -o "$dir/traefik.tmp" "$pkg/cmd/traefik"
mv "$dir/traefik.tmp" "$dir/traefik"
echo "built traefik $version in $(($(date +%s) - start))s into $dir" >&2
echo "$dir/traefik"

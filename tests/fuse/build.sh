#!/usr/bin/env bash
# Builds hangfs, the FUSE file system whose operations hang on demand (tests/fuse/hangfs), with go-fuse at the
# version pinned in its go.mod, into a cache directory keyed by a hash of its sources. Does nothing when it is
# already there. Prints the binary's path last.
set -euo pipefail
here=$(cd "$(dirname "$0")/hangfs" && pwd)
key=$(cat "$here/go.mod" "$here/go.sum" "$here/main.go" | sha256sum | cut -c1-12)
dir=${VD_HANGFS_DIR:-$HOME/.cache/videodelivery/fuse/hangfs-$key}
if [ -x "$dir/hangfs" ]; then
  echo "hangfs already built in $dir" >&2
  echo "$dir/hangfs"
  exit 0
fi
mkdir -p "$dir"
# Two test binaries (or setup and a test) may build at once: one builds, the other waits, then finds it built.
exec 9>"$dir/.build.lock"
flock 9
if [ -x "$dir/hangfs" ]; then echo "$dir/hangfs"; exit 0; fi
start=$(date +%s)
(cd "$here" && CGO_ENABLED=0 go build -trimpath -ldflags "-s -w" -o "$dir/hangfs.tmp" .)
mv "$dir/hangfs.tmp" "$dir/hangfs"
echo "built hangfs in $(($(date +%s) - start))s into $dir" >&2
echo "$dir/hangfs"

#!/usr/bin/env bash
# Builds versitygw, a maintained S3 gateway (posix backend), from the Go module proxy into a versioned cache dir.
# Chosen over MinIO (community repo unmaintained) and s3s-fs (a demo backend) because it is a production S3 server
# that builds with nothing but Go. Prints the binary's path last.
set -euo pipefail
version=${VERSITYGW_VERSION:-v1.8.0}
dir=${VD_S3_DIR:-$HOME/.cache/videodelivery/s3/versitygw-$version}
if [ -x "$dir/versitygw" ]; then
  echo "versitygw $version already built in $dir" >&2
  echo "$dir/versitygw"
  exit 0
fi
start=$(date +%s)
mkdir -p "$dir"
CGO_ENABLED=0 GOBIN="$dir" GOFLAGS=-trimpath go install -ldflags "-s -w" "github.com/versity/versitygw/cmd/versitygw@$version"
echo "built versitygw $version in $(($(date +%s) - start))s into $dir" >&2
echo "$dir/versitygw"

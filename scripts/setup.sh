#!/usr/bin/env bash
# Installs and builds everything the tests and the local run need. Safe to run again: it skips what is there.
set -euo pipefail
cd "$(dirname "$0")/.."

need_apt=()
command -v python3 >/dev/null || need_apt+=(python3)
command -v node >/dev/null || need_apt+=(nodejs npm)
# The browser playback test: ffmpeg makes the media, Debian's Chromium plays it (driven by Playwright).
command -v ffmpeg >/dev/null || need_apt+=(ffmpeg)
command -v chromium >/dev/null || need_apt+=(chromium)
# certutil puts the HTTPS test's CA into a throwaway NSS database that Chromium trusts.
command -v certutil >/dev/null || need_apt+=(libnss3-tools)
# The test node: kube-proxy and kubelet program iptables; runc is built with seccomp; nft drops the empty tables
# the node leaves at teardown.
command -v iptables >/dev/null || need_apt+=(iptables)
command -v nft >/dev/null || need_apt+=(nftables)
[ -e /usr/include/seccomp.h ] || need_apt+=(libseccomp-dev)
if ((${#need_apt[@]})); then
  sudo=""
  [ "$(id -u)" = 0 ] || sudo=sudo
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${need_apt[@]}"
fi

rustup component add rustfmt clippy >/dev/null 2>&1 || true

# Real servers the tests start: the Kubernetes control plane, an S3 server, a FUSE file system that hangs on
# demand and Traefik (the gateway viewers reach the agents through), built from Go modules and cached under
# ~/.cache/videodelivery (the first build takes several minutes; later runs reuse it).
command -v go >/dev/null || { echo "setup: Go is required to build the test control plane and S3 server" >&2; exit 1; }
bash tests/controlplane/build.sh >/dev/null
bash tests/node/build.sh >/dev/null
bash tests/s3/build.sh >/dev/null
bash tests/fuse/build.sh >/dev/null
bash tests/prometheus/build.sh >/dev/null
bash tests/traefik/build.sh >/dev/null
cargo build --workspace --locked --bins

(cd sdk/typescript && npm ci --no-audit --no-fund)
(cd tests/browser && npm ci --no-audit --no-fund)

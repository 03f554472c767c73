#!/usr/bin/env bash
# Builds what a real Kubernetes node needs besides kubelet and kube-proxy (those come from tests/controlplane):
# containerd (with ctr and the runc shim), runc with seccomp, the bridge, host-local and loopback CNI plugins, and
# crictl, at pinned versions, into the control plane's cache directory. Does nothing when they are already there.
# Prints the bin directory last. Needs gcc and libseccomp-dev (scripts/setup.sh installs them).
#
# The versions are pinned because the node runs on cgroup v1 here, which newer releases will drop.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
CONTAINERD=v2.4.2
RUNC=v1.5.2
CNI=v1.10.0
CRICTL=v1.37.0

# The control plane's build puts kubelet, kube-proxy and kube-scheduler into the same directory and prints it.
dir=$(bash "$here/../controlplane/build.sh")
stamp="containerd-$CONTAINERD runc-$RUNC cni-$CNI crictl-$CRICTL"
want=(containerd ctr containerd-shim-runc-v2 runc cni/bridge cni/host-local cni/loopback crictl)
ready() {
  [ "$(cat "$dir/node.version" 2>/dev/null)" = "$stamp" ] || return 1
  for b in "${want[@]}"; do [ -x "$dir/$b" ] || return 1; done
}
if ready; then
  echo "node binaries already built in $dir" >&2
  echo "$dir"
  exit 0
fi
# Two test binaries (or a test and setup) may build at once: one builds, the other waits and then finds them.
exec 9>"$dir/.node-build.lock"
flock 9
if ready; then echo "$dir"; exit 0; fi

start=$(date +%s)
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
export GOFLAGS=-trimpath GOBIN="$tmp/bin"
t0=$(date +%s)
CGO_ENABLED=0 go install -ldflags "-s -w -X github.com/containerd/containerd/v2/version.Version=$CONTAINERD" \
  -tags "no_btrfs no_devmapper no_zfs" \
  "github.com/containerd/containerd/v2/cmd/containerd@$CONTAINERD" \
  "github.com/containerd/containerd/v2/cmd/ctr@$CONTAINERD" \
  "github.com/containerd/containerd/v2/cmd/containerd-shim-runc-v2@$CONTAINERD"
echo "built containerd $CONTAINERD in $(($(date +%s) - t0))s" >&2
t0=$(date +%s)
CGO_ENABLED=1 go install -tags seccomp -ldflags "-s -w -X main.version=${RUNC#v}" \
  "github.com/opencontainers/runc@$RUNC"
echo "built runc $RUNC in $(($(date +%s) - t0))s" >&2
t0=$(date +%s)
mkdir -p "$tmp/bin/cni"
GOBIN="$tmp/bin/cni" CGO_ENABLED=0 go install -ldflags "-s -w" \
  "github.com/containernetworking/plugins/plugins/main/bridge@$CNI" \
  "github.com/containernetworking/plugins/plugins/ipam/host-local@$CNI" \
  "github.com/containernetworking/plugins/plugins/main/loopback@$CNI"
echo "built CNI plugins $CNI in $(($(date +%s) - t0))s" >&2
t0=$(date +%s)
CGO_ENABLED=0 go install -ldflags "-s -w" "sigs.k8s.io/cri-tools/cmd/crictl@$CRICTL"
echo "built crictl $CRICTL in $(($(date +%s) - t0))s" >&2

mkdir -p "$dir/cni"
for b in "${want[@]}"; do mv -f "$tmp/bin/$b" "$dir/$b"; done
echo "$stamp" >"$dir/node.version"
echo "node binaries ($stamp) built in $(($(date +%s) - start))s into $dir" >&2
echo "$dir"

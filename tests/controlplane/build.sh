#!/usr/bin/env bash
# Builds etcd, kube-apiserver, kube-controller-manager, kubectl, helm, and the node's kubelet, kube-proxy and
# kube-scheduler from Go modules into a cache directory
# keyed by the pinned versions. Does nothing when they are already there. Prints the bin directory last.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
k8s=$(awk '$1 == "k8s.io/kubernetes" {print $2}' "$here/go.mod" | head -1)
[ -n "$k8s" ] || k8s=$(grep -oE 'k8s.io/kubernetes v[0-9.]+' "$here/go.mod" | head -1 | cut -d' ' -f2)
etcd=$(grep -oE 'go.etcd.io/etcd/server/v3 v[0-9.]+' "$here/go.mod" | head -1 | cut -d' ' -f2)
helm=$(grep -oE 'helm.sh/helm/v3 v[0-9.]+' "$here/helm/go.mod" | head -1 | cut -d' ' -f2)
# Stamped as helm's Makefile does: the Kubernetes version helm is built against (client-go v0.N is Kubernetes 1.N)
# is the default .Capabilities.KubeVersion of `helm template` and `helm lint` (unstamped, v1.20).
kube=$(grep -oE 'k8s.io/client-go v0\.[0-9]+' "$here/helm/go.mod" | head -1 | cut -d. -f3)
helm_stamp="$helm kube 1.$kube"
# helm is added to the same directory (the key names the control plane; helm is checked by its own stamp below).
dir=${VD_CONTROLPLANE_DIR:-$HOME/.cache/videodelivery/controlplane/$k8s-etcd$etcd}
mkdir -p "$dir"
# Two test binaries (or setup and a test) may build at once: one builds, the other waits, then finds it built.
exec 8>"$dir/.build.lock"
flock 8

want=(etcd kube-apiserver kube-controller-manager kubectl helm kubelet kube-proxy kube-scheduler)
missing=()
for b in "${want[@]}"; do [ -x "$dir/$b" ] || missing+=("$b"); done
# A helm from an older pin or stamp is rebuilt. The stamp has its own marker, newer than the binary, so that
# helm.version keeps meaning the pin alone.
if [ -x "$dir/helm" ] && { [ "$(cat "$dir/helm.version" 2>/dev/null)" != "$helm" ] ||
  [ "$(cat "$dir/helm.stamp" 2>/dev/null)" != "$helm_stamp" ] || [ "$dir/helm" -nt "$dir/helm.stamp" ]; }; then
  missing+=(helm)
fi
if ((${#missing[@]} == 0)); then
  echo "control plane binaries already built in $dir" >&2
  echo "$dir"
  exit 0
fi

start=$(date +%s)
minor=${k8s#v1.}; minor=${minor%%.*}
ldflags="-s -w -X k8s.io/component-base/version.gitVersion=$k8s -X k8s.io/component-base/version.gitMajor=1"
ldflags="$ldflags -X k8s.io/component-base/version.gitMinor=$minor -X k8s.io/component-base/version.gitTreeState=clean"
ldflags="$ldflags -X k8s.io/client-go/pkg/version.gitVersion=$k8s"
export CGO_ENABLED=0 GOFLAGS=-mod=mod
cd "$here"
for b in "${missing[@]}"; do
  t0=$(date +%s)
  case $b in
    etcd) pkg=go.etcd.io/etcd/server/v3 ;;
    helm) hv=helm.sh/helm/v3
          hflags="-s -w -X $hv/internal/version.version=$helm -X $hv/internal/version.gitTreeState=clean"
          for p in pkg/chartutil pkg/lint/rules; do
            hflags="$hflags -X $hv/$p.k8sVersionMajor=1 -X $hv/$p.k8sVersionMinor=$kube"
          done
          (cd helm && go build -trimpath -ldflags "$hflags" -o "$dir/helm.tmp" $hv/cmd/helm) && mv "$dir/helm.tmp" "$dir/helm"
          echo "$helm" >"$dir/helm.version"
          echo "$helm_stamp" >"$dir/helm.stamp"
          echo "built helm in $(($(date +%s) - t0))s" >&2; continue ;;
    *) pkg=k8s.io/kubernetes/cmd/$b ;;
  esac
  go build -trimpath -ldflags "$ldflags" -o "$dir/$b.tmp" "$pkg"
  mv "$dir/$b.tmp" "$dir/$b"
  echo "built $b in $(($(date +%s) - t0))s" >&2
done
echo "control plane ($k8s, etcd $etcd${helm:+, helm $helm}) built in $(($(date +%s) - start))s into $dir" >&2
echo "$dir"

#!/usr/bin/env bash
# A one-node Kubernetes cluster on this Linux machine, with VideoDelivery installed by its Helm chart from images
# built here: no Docker engine, no registry, no cloud account. The same node the end-to-end tests use
# (tests/support, `vd_testsupport::Node`): etcd, kube-apiserver, kube-controller-manager, kube-scheduler, kubelet,
# kube-proxy, containerd and runc, built from Go modules.
#
#   sudo bash scripts/dev-cluster.sh up     # prints the kubeconfig path as its last line
#   sudo bash scripts/dev-cluster.sh down   # stops it and removes every trace from the machine
#
# Needs root (mounts, network namespaces, iptables, cgroups) and what scripts/setup.sh installs. One cluster per
# machine; it uses 10.87.0.1 (on lo), 10.88.0.0/16 (bridge vdbr0) and 10.96.0.0/16 (Services).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
state=/run/vd-dev-cluster
kubeconfig=$state/kubeconfig
target=${CARGO_TARGET_DIR:-$root/target}

running() { [ -f "$state/pid" ] && kill -0 "$(cat "$state/pid")" 2>/dev/null; }

up() {
  [ "$(id -u)" = 0 ] || { echo "dev-cluster: run as root (sudo)" >&2; exit 1; }
  if running && [ -f "$kubeconfig" ]; then
    echo "dev-cluster: already up" >&2
    echo "$kubeconfig"
    return
  fi
  bash "$root/tests/controlplane/build.sh" >/dev/null
  bash "$root/tests/node/build.sh" >/dev/null
  echo "dev-cluster: building the agent and operator (release) and the cluster runner" >&2
  (cd "$root" && cargo build -q --locked --release -p videodelivery-agent -p videodelivery-operator --bins)
  (cd "$root" && cargo build -q --locked -p vd-testsupport --bin vd-dev-cluster)
  # The folder examples/dev-cluster.yaml serves videos from.
  mkdir -p "$state/media"
  chmod 755 "$state" "$state/media"
  rm -f "$kubeconfig"
  setsid "$target/debug/vd-dev-cluster" --bin-dir "$target/release" --kubeconfig "$kubeconfig" \
    >"$state/log" 2>&1 </dev/null &
  echo $! >"$state/pid"
  echo "dev-cluster: starting (log: $state/log)" >&2
  for _ in $(seq 600); do
    [ -f "$kubeconfig" ] && break
    if ! running; then
      tail -40 "$state/log" >&2
      echo "dev-cluster: the cluster did not start" >&2
      rm -rf "$state"
      exit 1
    fi
    sleep 1
  done
  [ -f "$kubeconfig" ] || { tail -40 "$state/log" >&2; echo "dev-cluster: not up within 10 minutes" >&2; down; exit 1; }
  bin=$(bash "$root/tests/controlplane/build.sh" 2>/dev/null)
  cat >&2 <<MSG
dev-cluster: up. The chart is installed in namespace videodelivery (operator and agent images from this checkout).
  export KUBECONFIG=$kubeconfig PATH=$bin:\$PATH   # kubectl and helm are there
  kubectl get pods -A
  bash scripts/dev-cluster.sh down
MSG
  echo "$kubeconfig"
}

down() {
  if running; then
    pid=$(cat "$state/pid")
    kill -TERM "$pid"
    for _ in $(seq 120); do kill -0 "$pid" 2>/dev/null || break; sleep 0.5; done
    kill -0 "$pid" 2>/dev/null && kill -KILL "$pid"
  fi
  # Whatever a killed runner left (mounts, iptables rules, the bridge, cgroups, addresses, files).
  if [ -x "$target/debug/vd-dev-cluster" ]; then
    "$target/debug/vd-dev-cluster" --cleanup
  fi
  rm -rf "$state"
  echo "dev-cluster: down" >&2
}

case ${1:-} in
  up) up ;;
  down) down ;;
  *) echo "usage: bash scripts/dev-cluster.sh up|down" >&2; exit 2 ;;
esac

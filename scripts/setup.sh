#!/usr/bin/env bash
# Installs and builds everything the tests and the local run need. Safe to run again: it skips what is there.
set -euo pipefail
cd "$(dirname "$0")/.."

need_apt=()
command -v python3 >/dev/null || need_apt+=(python3)
command -v node >/dev/null || need_apt+=(nodejs npm)
if ((${#need_apt[@]})); then
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need_apt[@]}"
fi

rustup component add rustfmt clippy >/dev/null 2>&1 || true
cargo build --workspace --locked --bins

if [ -d sdk/typescript ] && [ -f sdk/typescript/package-lock.json ]; then
  (cd sdk/typescript && npm ci --no-audit --no-fund)
fi

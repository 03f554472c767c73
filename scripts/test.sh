#!/usr/bin/env bash
# Runs every test of the project on this machine, installing what a fresh machine lacks first.
# Usage: bash scripts/test.sh
set -euo pipefail
cd "$(dirname "$0")/.."
# A one-off build gains nothing from incremental state, which costs gigabytes of disk.
export CARGO_INCREMENTAL="${CARGO_INCREMENTAL:-0}"

step() { printf '\n==> %s\n' "$*"; }

step "setup"
bash scripts/setup.sh

step "token vectors are what testdata/gen_vectors.py generates"
python3 testdata/gen_vectors.py --check

step "bench/splice.py keeps the readings written by hand in bench/RESULTS.md"
python3 -m unittest bench/test_splice.py

step "cargo fmt --check"
cargo fmt --all -- --check

step "cargo clippy (warnings are errors)"
cargo clippy --workspace --all-targets --locked -- -D warnings

step "TypeScript signer build (the node test's example backend image holds sdk/typescript/dist)"
(cd sdk/typescript && npm run build)

step "cargo test --workspace"
cargo test --workspace --locked

step "fuzz: recorded regressions, then a short bounded pass with a fixed seed"
FUZZ_SEED=1 bash scripts/fuzz.sh 15

step "TypeScript signer against the shared vectors"
(cd sdk/typescript && npm test)

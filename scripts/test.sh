#!/usr/bin/env bash
# Runs every check and test from a fresh clone: setup, formatting, lints, the
# binaries the process tests spawn, then the tests. The cluster tests (crate
# dml-tests) spawn many agents each, so they run with fewer threads.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

bash scripts/setup.sh

echo "== model builder: learnable parameter counts of resnet50, inceptionv3, tiny"
.venv/bin/python scripts/models/build_models.py --count-only --models resnet50,inceptionv3,tiny
echo "== cargo fmt"
cargo fmt --all -- --check
echo "== cargo clippy"
cargo clippy --workspace --all-targets -- -D warnings
echo "== cargo build (binaries the tests spawn)"
cargo build --workspace --bins
echo "== unit, simulation and tool tests"
cargo test --workspace --exclude dml-tests
echo "== fuzz targets replayed over their seed corpus and random inputs (stable; scripts/fuzz.sh runs libFuzzer)"
CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-target}" cargo test --manifest-path fuzz/Cargo.toml
echo "== cluster tests (real agents)"
cargo test -p dml-tests -- --test-threads="${DML_CLUSTER_TEST_THREADS:-2}"

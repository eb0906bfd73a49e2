#!/usr/bin/env bash
# Runs every fuzz target in fuzz/ for a bounded time.
#
#   bash scripts/fuzz.sh [SECONDS_PER_TARGET] [TARGET...]     (default 30 s, all targets)
#
# With a nightly toolchain it runs cargo-fuzz (libFuzzer, AddressSanitizer), installing
# cargo-fuzz from the package registry when it is missing; new inputs go to
# fuzz/work/<target>/, crashes to fuzz/artifacts/<target>/. It always first runs the
# stable replay tests (every target over fuzz/corpus/ seeds, mutations and random input).
# Exit status: non-zero if a replay test failed or a target found a crash.
set -euo pipefail
cd "$(dirname "$0")/.."
secs="${1:-30}"
shift || true
targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
  targets=(wire_request wire_response framing membership config registry sdfs_name)
fi
case "$secs" in ''|*[!0-9]*) echo "error: seconds must be a whole number, got '$secs'" >&2; exit 2 ;; esac

echo "== replay tests (stable)"
CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$PWD/target}" cargo test --manifest-path fuzz/Cargo.toml --tests

if ! cargo +nightly --version >/dev/null 2>&1; then
  echo "== no nightly toolchain: cargo-fuzz cannot run here; the replay tests above are all that ran"
  exit 0
fi
if ! cargo fuzz --version >/dev/null 2>&1; then
  echo "== installing cargo-fuzz"
  cargo install cargo-fuzz --locked
fi

failed=()
for t in "${targets[@]}"; do
  echo "== cargo fuzz run $t for ${secs}s"
  mkdir -p "fuzz/work/$t"
  start=$(date +%s)
  if (cd fuzz && cargo +nightly fuzz run --features libfuzzer "$t" "work/$t" "corpus/$t" -- \
        -max_total_time="$secs" -max_len=4096 -timeout=10 -rss_limit_mb=2048 2>&1 | tail -n 5); then
    echo "== $t: no crash in $(( $(date +%s) - start ))s (including the build)"
  else
    echo "== $t: FAILED (see fuzz/artifacts/$t/)"
    failed+=("$t")
  fi
done
if [ ${#failed[@]} -gt 0 ]; then
  echo "targets that failed: ${failed[*]}" >&2
  exit 1
fi
echo "every target ran ${secs}s without a crash"

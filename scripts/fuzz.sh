#!/usr/bin/env bash
# Runs every fuzz target in fuzz/ for a bounded time.
#
#   bash scripts/fuzz.sh [SECONDS_PER_TARGET] [TARGET...]     (default 30 s, all targets)
#
# With a nightly toolchain it runs cargo-fuzz (libFuzzer, AddressSanitizer), installing
# cargo-fuzz from the package registry when it is missing; new inputs go to
# fuzz/work/<target>/, crashes to fuzz/artifacts/<target>/, each run's libFuzzer log to
# fuzz/work/logs/<target>.log (all git-ignored). It always first runs the stable replay
# tests (every target over fuzz/corpus/ seeds, mutations and random input). Each target
# runs as one libFuzzer process (one core); on a shared machine run the script under
# `nice -n 19`. It ends with a table per target: seconds, executions, corpus size, result.
# Exit status: non-zero if a replay test failed or a target found a crash.
set -euo pipefail
cd "$(dirname "$0")/.."
secs="${1:-30}"
shift || true
case "$secs" in '' | *[!0-9]*) echo "error: seconds must be a whole number, got '$secs'" >&2; exit 2 ;; esac
all=()
for f in fuzz/fuzz_targets/*.rs; do all+=("$(basename "$f" .rs)"); done
targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
  targets=("${all[@]}")
fi
for t in "${targets[@]}"; do
  if [ ! -f "fuzz/fuzz_targets/$t.rs" ]; then
    echo "error: no fuzz target '$t' (targets: ${all[*]})" >&2
    exit 2
  fi
done

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

cd fuzz
echo "== cargo fuzz build (nightly, AddressSanitizer)"
if ! cargo +nightly fuzz build --features libfuzzer; then
  echo "error: the fuzz targets do not build with $(cargo +nightly --version)" >&2
  exit 1
fi

mkdir -p work/logs
failed=()
rows=()
for t in "${targets[@]}"; do
  echo "== cargo fuzz run $t for ${secs}s"
  mkdir -p "work/$t" "artifacts/$t"
  log="work/logs/$t.log"
  start=$(date +%s)
  status=0
  # New inputs go to the first directory (work/), so corpus/ keeps only the seeds.
  # `timeout` only guards against a stuck run; libFuzzer stops itself at -max_total_time.
  timeout --kill-after=10 $((secs + 300)) \
    cargo +nightly fuzz run --features libfuzzer "$t" "work/$t" "corpus/$t" -- \
    -max_total_time="$secs" -max_len=4096 -timeout=10 -rss_limit_mb=2048 \
    -print_final_stats=1 >"$log" 2>&1 || status=$?
  took=$(($(date +%s) - start))
  execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -n 1)
  rate=$(sed -n 's/^stat::average_exec_per_sec: *//p' "$log" | tail -n 1)
  last=$(grep -E '^#[0-9]+' "$log" | tail -n 1 || true)
  echo "$last"
  # libFuzzer's corpus at the end (seeds and new inputs, after its reductions).
  corpus=$(sed -n 's/.* corp: \([0-9]*\)\/.*/\1/p' <<<"$last")
  if [ "$status" -eq 0 ]; then
    result="ok"
    echo "== $t: no crash in ${took}s"
  else
    crashes=$(find "artifacts/$t" -type f | wc -l)
    result="FAILED (exit $status, $crashes file(s) in fuzz/artifacts/$t/)"
    grep -E 'panicked at|ERROR: |SUMMARY: |Test unit written to' "$log" | head -n 8 || true
    echo "== $t: $result; log: fuzz/$log"
    echo "   minimize: (cd fuzz && cargo +nightly fuzz tmin --features libfuzzer $t <artifact>)"
    failed+=("$t")
  fi
  rows+=("$(printf '%-14s %6s %12s %9s %7s  %s' "$t" "$took" "${execs:-?}" "${rate:-?}" "${corpus:-?}" "$result")")
done

echo
printf '%-14s %6s %12s %9s %7s  %s\n' target seconds executions exec/s corpus result
printf '%s\n' "${rows[@]}"
if [ ${#failed[@]} -gt 0 ]; then
  echo "targets that failed: ${failed[*]}" >&2
  exit 1
fi
echo "every target ran ${secs}s without a crash"

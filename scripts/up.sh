#!/usr/bin/env bash
# Starts a local AwesomeDML cluster and shows it: setup, stop any cluster a
# previous run left, start 10 agents on 127.0.0.1:8001-8010, open the console.
# Extra arguments go to `dml local up` (e.g. `-n 5`, `--tmux`, `--preset lan`).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

bash scripts/setup.sh
dml="${CARGO_TARGET_DIR:-target}/debug/dml"

"$dml" local down
"$dml" local up -n 10 "$@"

if [[ -t 0 && -t 1 ]]; then
  "$dml" || true
  echo "The cluster is still running: '$dml local status' to inspect it, '$dml put FILE NAME' to store"
  echo "a file in SDFS, '$dml local down' to stop it."
else
  # No terminal for the console: show the cluster once instead.
  "$dml" local status
  "$dml" members
  "$dml" leader
fi

#!/usr/bin/env bash
# Starts a local AwesomeDML cluster ready for inference and shows it: setup,
# stop any cluster a previous run left, start 10 agents on 127.0.0.1:8001-8010,
# build the models if there is neither a fetched nor a built copy, upload them
# to SDFS, make and load the sample dataset, then open the console.
# Extra arguments go to `dml local up` (e.g. `-n 5`, `--tmux`, `--preset lan`).
# Idempotent: a second run rebuilds, re-uploads and re-loads nothing.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

bash scripts/setup.sh
dml="${CARGO_TARGET_DIR:-target}/debug/dml"
dataset=.dml/dataset
dataset_images=200

"$dml" local down
"$dml" local up -n 10 "$@"

# Models: random-weight builds unless `dml models fetch` got the real ones.
if [[ ! -x .venv/bin/python ]]; then
  bash scripts/venv.sh
fi
"$dml" models build --missing
"$dml" models upload

# The sample dataset: made once, loaded unless SDFS already has every image.
if [[ ! -d $dataset ]] || (($(find "$dataset" -type f | wc -l) < dataset_images)); then
  "$dml" dataset make "$dataset" --count "$dataset_images"
fi
local_images=$(find "$dataset" -type f | wc -l)
stored=$("$dml" ls-all 'datasets/sample/*' | grep -c '^datasets/sample/' || true)
if ((stored < local_images)); then
  # One line per file is too much here: keep the summary (a terminal still shows the bar).
  "$dml" sdfs load "$dataset" datasets/sample | tail -n 1
else
  echo "up: SDFS already holds the $stored images of datasets/sample/"
fi

echo "up: the demo uses these models (LOCAL FILE: fetched = pretrained, built = random weights):"
"$dml" models

if [[ -t 0 && -t 1 ]]; then
  "$dml" || true
  echo "The cluster is still running: '$dml local status' to inspect it, '$dml submit-job resnet50 100'"
  echo "to classify 100 sample images ('$dml jobs', '$dml get-output JOB'), '$dml local down' to stop it."
else
  # No terminal for the console: show the cluster once instead.
  "$dml" local status
  "$dml" members
  "$dml" leader
  "$dml" jobs
fi

#!/usr/bin/env bash
# The whole benchmark suite on a fresh machine: installs the Python references into a venv
# (target/bench/venv), builds the release binaries once, and runs every benchmark. Tables go
# to stdout and target/bench/report.md; JSON to target/bench/*.json.
#   bench/run.sh                 # everything
#   bench/run.sh vector          # one benchmark (ingest, text, vector, relevance, restart, federated, serve)
#   bench/run.sh all --smoke     # tiny data, about 30 s
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
mkdir -p target/bench
if ! bench/setup-python.sh >/dev/null; then
  echo "warning: the Python references could not be installed; their columns will be empty" >&2
fi
cargo build --release --quiet -p prism-server -p prism-bench -p prism-cli
started=$(date +%s)
target/release/prism-bench "${@:-all}" --out target/bench | tee target/bench/report.md
echo "suite finished in $(( $(date +%s) - started )) s on $(nproc) cores, $(date -u +%F)" | tee -a target/bench/report.md

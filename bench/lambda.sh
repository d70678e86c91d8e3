#!/usr/bin/env bash
# Lambda figures for BENCHMARKS.md: builds the three functions as Lambda bootstraps
# (`cargo lambda build --release`, x86_64 here: the machine has no arm64 toolchain), then runs
# tests/lambda.rs::lambda_figures — zip size and init time of each bootstrap against a local
# Lambda Runtime API, and one 1 GiB promotion through the worker bootstrap (duration, peak RSS,
# GB-seconds). Needs what scripts/test installs (docker-registry, skopeo, moto_server, cargo-lambda).
set -euo pipefail
cd "$(dirname "$0")/.."
cargo lambda build --release --x86-64 --compiler cargo --output-format zip \
  -p ferry-webhook -p ferry-worker -p ferry-api
# The zips are what Lambda runs; the bootstraps inside them are what the figures start.
for name in ferry-webhook ferry-worker ferry-api; do
  python3 -c 'import sys, zipfile; zipfile.ZipFile(sys.argv[1]).extractall(sys.argv[2])' \
    "target/lambda/$name/bootstrap.zip" "target/lambda/$name"
  chmod +x "target/lambda/$name/bootstrap"
done
cargo build --bin ferry
FERRY_LAMBDA_DIR="$PWD/target/lambda" cargo test --test lambda lambda_figures -- --ignored --nocapture 2>&1 |
  grep -E '^FIGURE|test result|panicked'

#!/usr/bin/env bash
# Fuzzes every target briefly: `fuzz/run.sh [SECONDS_PER_TARGET] [CARGO_FUZZ_FLAGS...]`, e.g.
# `fuzz/run.sh 10` or `fuzz/run.sh 60 --target-dir /cache/fuzz` (default: 10 s each).
#
# Works on stable Rust: cargo-fuzz passes `-Z` flags to rustc, which RUSTC_BOOTSTRAP=1 lets a
# stable compiler accept. No sanitizer by default: AddressSanitizer works as well, but halves the
# speed and the fuzzed code forbids `unsafe`; FUZZ_SANITIZER=address turns it on.
#
# New inputs go to a scratch corpus under target/, so `corpus/` keeps only the checked-in seeds.
# Exits non-zero on the first crash; cargo fuzz prints the input and how to reproduce it.
set -euo pipefail

seconds="${1:-10}"
shift $(($# > 0 ? 1 : 0))
cd "$(dirname "$0")"

if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "cargo-fuzz is missing; installing it (a few minutes)" >&2
    cargo install --locked cargo-fuzz
fi

export RUSTC_BOOTSTRAP=1
# --fuzz-dir: cargo fuzz would otherwise look for this directory from the enclosing project.
flags=(--fuzz-dir "$PWD" --sanitizer "${FUZZ_SANITIZER:-none}" "$@")

start=$SECONDS
cargo fuzz build "${flags[@]}"
echo "build: $((SECONDS - start)) s" >&2

mkdir -p target/run-logs
for target in $(cargo fuzz list --fuzz-dir "$PWD"); do
    scratch="target/run-corpus/$target"
    log="target/run-logs/$target.log"
    mkdir -p "$scratch"
    dict=()
    case "$target" in
        intake_* | manifest) dict=(-dict=dict/json.dict) ;;
        config) dict=(-dict=dict/toml.dict) ;;
    esac
    if cargo fuzz run "${flags[@]}" "$target" "$scratch" "corpus/$target" -- \
        -max_total_time="$seconds" "${dict[@]}" >"$log" 2>&1; then
        echo "$target: $(grep -E '^Done [0-9]+ runs' "$log" || echo 'done')" >&2
    else
        tail -n 60 "$log" >&2
        echo "$target: FAILED (full log: fuzz/$log, input: fuzz/artifacts/$target/)" >&2
        exit 1
    fi
done
echo "all targets: $((SECONDS - start)) s" >&2

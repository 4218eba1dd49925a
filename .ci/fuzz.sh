#!/usr/bin/env bash
# Builds the fuzz targets (fuzz/, cargo-fuzz on nightly) and runs each briefly from its
# committed seeds; any crash, panic or failed property fails CI. What a run adds to the
# corpus goes to a scratch directory; a crashing input is kept under fuzz/artifacts/.
#   FUZZ_SECONDS   seconds per target (default 20)
#   FUZZ_TARGETS   the targets to run (default: every target)
set -euo pipefail
cd "$(dirname "$0")/.."

seconds="${FUZZ_SECONDS:-20}"
# A target dir of its own: nightly, sanitizer flags and the fuzz workspace's lockfile must
# not churn the main build's cache.
export CARGO_TARGET_DIR="${FUZZ_TARGET_DIR:-$HOME/.cache/rampart-fuzz-target}"
export CARGO_TERM_COLOR=never
# The bundled SQLite (libsqlite3-sys) trips AddressSanitizer's one-definition check before
# any input runs (global `aiOff`); that report says nothing about the code under test.
export ASAN_OPTIONS="${ASAN_OPTIONS:+$ASAN_OPTIONS:}detect_odr_violation=0"

log() { printf '\n=== %s\n' "$*"; }

if ! rustup run nightly rustc --version >/dev/null 2>&1; then
  log "installing the nightly toolchain"
  rustup toolchain install nightly --profile minimal
fi
if ! cargo fuzz --version >/dev/null 2>&1; then
  log "installing cargo-fuzz"
  CARGO_TARGET_DIR="$HOME/.cache/cargo-fuzz-build" cargo install --locked cargo-fuzz
fi

targets="${FUZZ_TARGETS:-$(cargo +nightly fuzz list)}"
log "cargo fuzz build"
cargo +nightly fuzz build

scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT
for target in $targets; do
  log "cargo fuzz run $target (${seconds}s)"
  mkdir -p "$scratch/$target"
  dict=()
  [[ -f "fuzz/$target.dict" ]] && dict=("-dict=fuzz/$target.dict")
  # -timeout: one input taking over 10 s is a hang, and a failure.
  cargo +nightly fuzz run "$target" "$scratch/$target" "fuzz/corpus/$target" -- \
    -max_total_time="$seconds" -timeout=10 -print_final_stats=1 "${dict[@]}"
done

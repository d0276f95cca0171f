#!/usr/bin/env bash
# Runs every test of the workspace: unit, property, integration and doc tests (release
# build), then the loom model checks of the cross-core mailbox (their own build, with
# --cfg loom, in target/loom so the main build is not invalidated).
set -euo pipefail
cd "$(dirname "$0")"
cargo test --workspace --release
RUSTFLAGS="--cfg loom" CARGO_TARGET_DIR=target/loom LOOM_MAX_PREEMPTIONS=3 \
    cargo test -p ringlog-rt --release --lib loom

#!/usr/bin/env bash
# Runs every test of the workspace: unit, property, integration and doc tests (release
# build); the loom model checks of the cross-core mailbox and the executor's park (their
# own build, with --cfg loom, in target/loom so the main build is not invalidated); and
# the code that handles raw memory (the runtime's buffers, the batch codec, the index
# codecs) under Miri, which finds undefined behaviour the tests alone cannot see.
set -euo pipefail
cd "$(dirname "$0")"
cargo test --workspace --release
RUSTFLAGS="--cfg loom" CARGO_TARGET_DIR=target/loom LOOM_MAX_PREEMPTIONS=3 \
    cargo test -p ringlog-rt --release --lib loom

# Miri: the nightly toolchain's interpreter. It cannot run io_uring, so it checks the
# modules that are pure computation over raw memory. Proptest runs 4 cases per property
# under it (an interpreted case is ~1000 times slower) and writes no failure files;
# isolation is off because proptest reads the environment, the clock and the working
# directory, which an isolated Miri refuses.
# Three tests are skipped under Miri only (they run natively above): each spends minutes
# in the interpreter on sheer size, through code the others cover. `stops_indexing_when_full`
# appends an index's maximum of entries; `oversized_requests` and `large_buffers` zero
# multi-MiB buffers byte by byte, through the same allocation path as small buffers
# (their one difference, the huge-page advice, is not compiled under Miri).
rustup component add --toolchain nightly miri rust-src >/dev/null
export MIRIFLAGS="-Zmiri-disable-isolation" PROPTEST_CASES=4 PROPTEST_DISABLE_FAILURE_PERSISTENCE=1
export CARGO_TARGET_DIR=target/miri
cargo +nightly miri test -p ringlog-rt --lib buf:: -- --skip oversized_requests --skip large_buffers
cargo +nightly miri test -p ringlog-engine --lib -- batch:: index:: --skip stops_indexing_when_full

#!/usr/bin/env bash
# Runs every nicproxy test: unit tests, the network-namespace integration tests on real DPDK
# vdevs, and the Soft-RoCE guest tests on real verbs. Installs what is missing first.
# Needs root (namespaces, QEMU). Exit status 0 means everything passed.
set -euo pipefail
cd "$(dirname "$0")/.."
t0=$(date +%s)
tests/setup.sh
export CARGO_TERM_COLOR=never
# Build once up front so that test timings below are test timings.
cargo build --workspace --tests --locked
# Pure logic builds and passes without DPDK or rdma-core features.
cargo test -p dataplane -p control --no-default-features --locked
# Everything, with the real parts (needs root; boots the lab guest for verbs tests).
cargo test --workspace --locked -- --test-threads=2
# Every parser of untrusted bytes under cargo-fuzz for a bounded time (stable toolchain,
# see fuzz/README.md); a crash fails the run and keeps the input in fuzz/artifacts/.
FUZZ_SECONDS=${FUZZ_SECONDS:-60} tests/fuzz.sh
echo "all tests passed in $(( $(date +%s) - t0 )) s"

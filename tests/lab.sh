#!/usr/bin/env bash
# The main job: installs what is missing (tests/setup.sh), builds nicproxy, and runs its lab:
# three nodes in network namespaces, a's NIC cut and restored five times while the station
# probes a every millisecond and streams TCP to it; prints live state, a summary table, and
# writes report.json and a throughput plot. Options go to `nicproxy lab` (see --help), e.g.
#   tests/lab.sh --cuts 10 --scenario kill-proxy --json
# Needs root.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
if [ "$(id -u)" != 0 ]; then
  echo "lab.sh: the lab needs root (network namespaces, DPDK): run it with sudo" >&2
  exit 1
fi
"$root/tests/setup.sh"
cd "$root"
cargo build --release --locked
exec "${CARGO_TARGET_DIR:-$root/target}/release/nicproxy" lab "$@"

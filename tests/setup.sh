#!/usr/bin/env bash
# Installs what nicproxy's build, tests and lab need, idempotently: Debian packages, the
# Debian kernel that the Soft-RoCE lab guest boots, and a Rust toolchain check.
# Safe to run again: it only installs what is missing. Needs root (apt, netns, QEMU).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)

pkgs=(
  # build: DPDK and rdma-core headers and libraries, bindgen's libclang
  pkg-config clang libclang-dev dpdk libdpdk-dev dpdk-dev
  rdma-core libibverbs-dev librdmacm-dev ibverbs-providers ibverbs-utils rdmacm-utils
  # lab: namespaces, bridge, capture, the QEMU guest that runs Soft-RoCE
  iproute2 iputils-ping tcpdump procps ethtool python3 qemu-system-x86 busybox-static kmod cpio
  # metrics lint (promtool)
  prometheus
)
missing=()
for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}\n' "$p" 2>/dev/null | grep -q '^install ok installed' || missing+=("$p")
done
if ((${#missing[@]})); then
  [ "$(id -u)" = 0 ] || { echo "setup: need root to install: ${missing[*]}" >&2; exit 1; }
  echo "setup: installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
command -v cargo >/dev/null || { echo "setup: cargo not found: install a Rust toolchain (1.80 or newer)" >&2; exit 1; }

# The lab guest's kernel (downloaded once, unpacked, not installed).
"$here/lab/vm.sh" --prepare
echo "setup: ok"

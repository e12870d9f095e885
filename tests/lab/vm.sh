#!/usr/bin/env bash
# vm.sh - run one command inside a throw-away QEMU guest that has Soft-RoCE (rdma_rxe).
#
# The host kernel of the lab machines has no RDMA at all, so real verbs can only be tested
# in a guest. The guest boots Debian's stock kernel (downloaded once, unpacked, never
# installed) and mounts the HOST root read-only over virtio-9p with a RAM overlay on top,
# so it runs the host's binaries and libraries: a test binary built on the host runs in
# the guest as is, at the same path.
#
# Usage:
#   tests/lab/vm.sh --prepare
#       install the missing host packages, download the kernel, build the initramfs
#   tests/lab/vm.sh [--mem 2G] [--smp 2] [--timeout SECS] [--accel kvm|tcg] [--no-rdma] \
#       [--share DIR] -- CMD ARGS...
#       boot a guest, set up the RDMA wire, run CMD in the current directory with the
#       current exported environment, power off. --share DIR mounts the host directory DIR
#       read-write at the same path in the guest (everything else is read-only with a RAM
#       overlay that vanishes at power-off): the way for CMD to leave files on the host.
#       DIR must exist and its absolute path must not contain whitespace.
#
# The command's stdout is this script's stdout and its stderr goes to this script's stderr,
# together with the guest console and timing lines prefixed "vm.sh:". The exit status is
# the command's; 124 means the guest timed out, 125 that the guest did not boot or the lab
# setup failed, 126 that the host lacks something (--prepare fixes that).
#
# In the guest, before CMD starts (unless --no-rdma): rdma_rxe is loaded, a veth pair
# va <-> vb lives in init_net with 10.99.0.1/24 on va and 10.99.0.2/24 on vb, policy routing
# sends traffic between the two addresses across the veth (rxe drops anything that goes
# through lo), and rxe_a (on va) and rxe_b (on vb) exist with their RoCE v2 GIDs ready.
# CMD sees NICPROXY_LAB=1, NICPROXY_RXE_A=rxe_a, NICPROXY_RXE_B=rxe_b, NICPROXY_IP_A=10.99.0.1,
# NICPROXY_IP_B=10.99.0.2, NICPROXY_NETDEV_A=va, NICPROXY_NETDEV_B=vb.
#
# Environment: NICPROXY_LAB_CACHE (default /var/cache/nicproxy-lab) holds the kernel and
# the initramfs; NICPROXY_LAB_ACCEL=kvm|tcg overrides the accelerator choice;
# NICPROXY_LAB_KDEBUG=1 boots the guest kernel with every console message shown (instead of
# `quiet loglevel=3`), a backtrace of all CPUs on a soft lockup (reported after 10 s instead
# of 20 s) and a 30 s hung-task report: for debugging a stuck guest from its console. Runs are
# independent: each has its own temp directory and guest, and the cache is filled under a
# lock, so concurrent runs are safe.
set -uo pipefail

SELF=$(readlink -f "$0")
CACHE=${NICPROXY_LAB_CACHE:-/var/cache/nicproxy-lab}
IP_A=10.99.0.1
IP_B=10.99.0.2
MAC_A=02:00:0a:63:00:01
MAC_B=02:00:0a:63:00:02
EXIT_TIMEOUT=124
EXIT_GUEST=125
EXIT_HOST=126

###############################################################################  GUEST SIDE
# Runs as the guest's init after switch_root (see the initramfs /init below), with the
# host's bash. Kernel console = ttyS0, CMD stdout = ttyS1, CMD stderr = ttyS2.

glog() { echo "vm.sh: [guest $(cut -d' ' -f1 /proc/uptime)s] $*"; }

guest_fail() {
  glog "lab setup failed: $*"
  echo "NICPROXY-LAB-SETUP-FAILED"
  guest_poweroff
}

guest_poweroff() {
  sync
  echo o > /proc/sysrq-trigger
  # Power-off runs asynchronously. Wait with a builtin: PID 1 must not exit (that panics)
  # and the host root may already be gone, so no new process can start. ttyS2 has no
  # input, so the read just times out.
  read -r -t 30 _ < /dev/ttyS2
}

# Index of the RoCE v2 GID that holds IPv4 address $2 on rdma device $1; rxe fills its GID
# table asynchronously after the address appears, so wait for it. Only the first entries
# matter (the table has ~1000), and bash's own `read` spares a fork per file: forks are
# slow under TCG.
gid_index() {
  local want p g t i n
  want=$(printf '0000:0000:0000:0000:0000:ffff:%02x%02x:%02x%02x' ${2//./ })
  p=/sys/class/infiniband/$1/ports/1
  for n in $(seq 100); do
    for i in $(seq 0 15); do
      read -r g < "$p/gids/$i" 2>/dev/null || continue
      [ "$g" = "$want" ] || continue
      read -r t < "$p/gid_attrs/types/$i" 2>/dev/null || continue
      [ "$t" = "RoCE v2" ] && { echo "$i"; return 0; }
    done
    sleep 0.05
  done
  return 1
}

guest_rdma_setup() {
  modprobe rdma_rxe || guest_fail "modprobe rdma_rxe"
  glog "rdma_rxe loaded"
  # rdma_rxe only works in init_net, and two rxe devices in one namespace would talk
  # through lo, where rxe drops the packets. So both veth ends stay in init_net, and
  # policy routing makes locally generated traffic between the two addresses leave by the
  # veth: the local table moves behind two "iif lo" rules, accept_local lets each end take
  # packets from the other local address, and static neighbours spare ARP.
  # One `ip -batch` instead of a dozen ip processes (each exec costs ~0.2 s under TCG);
  # fixed MACs let the static neighbours go into the same batch.
  ip -batch - <<EOB || guest_fail "veth wire / policy routing"
link add va address $MAC_A type veth peer name vb address $MAC_B
addr add $IP_A/24 dev va
addr add $IP_B/24 dev vb
link set lo up
link set va up
link set vb up
rule add pref 100 lookup local
rule del pref 0 lookup local
route add $IP_B/32 dev va src $IP_A table 101
route add $IP_A/32 dev vb src $IP_B table 102
rule add pref 10 iif lo from $IP_A to $IP_B lookup 101
rule add pref 11 iif lo from $IP_B to $IP_A lookup 102
neigh replace $IP_B lladdr $MAC_B dev va nud permanent
neigh replace $IP_A lladdr $MAC_A dev vb nud permanent
EOB
  local d
  for d in all default va vb; do
    echo 1 > /proc/sys/net/ipv4/conf/$d/accept_local
    echo 0 > /proc/sys/net/ipv4/conf/$d/rp_filter
  done
  glog "veth wire and policy routing ready"
  printf 'link add rxe_a type rxe netdev va\nlink add rxe_b type rxe netdev vb\n' |
    rdma -b - || guest_fail "rdma link add rxe_a / rxe_b"
  local ga gb
  glog "rxe_a, rxe_b created"
  ga=$(gid_index rxe_a "$IP_A") || guest_fail "no RoCE v2 GID for $IP_A on rxe_a"
  gb=$(gid_index rxe_b "$IP_B") || guest_fail "no RoCE v2 GID for $IP_B on rxe_b"
  export NICPROXY_RXE_A=rxe_a NICPROXY_RXE_B=rxe_b NICPROXY_IP_A=$IP_A NICPROXY_IP_B=$IP_B
  export NICPROXY_NETDEV_A=va NICPROXY_NETDEV_B=vb
  glog "rdma ready: rxe_a=$IP_A (va, gid $ga), rxe_b=$IP_B (vb, gid $gb)"
}

guest_stage() {
  local run=$1 rdma=1 share= p t0 rc
  export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
  for p in $(cat /proc/cmdline); do
    case $p in
      nicproxy.rdma=0) rdma=0 ;;
      nicproxy.share=*) share=${p#nicproxy.share=} ;;
    esac
  done
  glog "userland up (kernel $(uname -r))"
  if [ -n "$share" ]; then
    # No cache: every write reaches the host at once, so what CMD wrote before a crash or
    # a timeout is there too.
    mount -t 9p -o trans=virtio,version=9p2000.L,msize=262144 nicproxyshare "$share" ||
      guest_fail "mounting the shared directory $share"
    glog "$share shared read-write with the host"
  fi
  [ "$rdma" = 1 ] && guest_rdma_setup
  # Raw ttys: no CR insertion, no echo, so CMD's bytes reach the host unchanged.
  stty -F /dev/ttyS1 raw -echo 2>/dev/null
  stty -F /dev/ttyS2 raw -echo 2>/dev/null
  export NICPROXY_LAB=1
  t0=$(cut -d' ' -f1 /proc/uptime)
  echo "NICPROXY-LAB-CMD-START uptime=$t0"
  bash "$run/cmd.sh" >/dev/ttyS1 2>/dev/ttyS2 </dev/null
  rc=$?
  # Closing a serial tty waits until its output has drained, so nothing is lost to the
  # power-off below; the marker goes last, on the console.
  echo "NICPROXY-LAB-CMD-END uptime=$(cut -d' ' -f1 /proc/uptime)"
  echo "NICPROXY-LAB-EXIT=$rc"
  guest_poweroff
}

################################################################################  HOST SIDE

hlog() { echo "vm.sh: $*" >&2; }
die_host() { hlog "$*"; exit "$EXIT_HOST"; }

HOST_PKGS=(qemu-system-x86 busybox-static kmod cpio xz-utils iproute2 util-linux coreutils
  rdma-core ibverbs-providers ibverbs-utils rdmacm-utils)

install_host_packages() {
  local p missing=()
  for p in "${HOST_PKGS[@]}"; do
    dpkg-query -W -f='${Status}\n' "$p" 2>/dev/null | grep -q '^install ok installed' || missing+=("$p")
  done
  ((${#missing[@]})) || return 0
  [ "$(id -u)" = 0 ] || die_host "need root to install: ${missing[*]}"
  hlog "installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq && apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null ||
    die_host "apt-get install ${missing[*]} failed"
}

check_host_tools() {
  local t
  for t in qemu-system-x86_64 busybox modprobe depmod cpio xz gzip flock timeout dpkg apt-get rdma ip; do
    command -v "$t" >/dev/null || die_host "'$t' is missing on the host: run $SELF --prepare"
  done
  [ -x /bin/busybox ] || die_host "/bin/busybox is missing (busybox-static): run $SELF --prepare"
}

# Fills $CACHE/kernel-<version>/ with the unpacked Debian kernel package, its modules.dep,
# and an uncompressed ELF vmlinux: QEMU enters that directly through PVH, which skips the
# firmware, real-mode setup and the in-guest xz decompression (seconds under TCG).
# Sets KVER, KDIR, KIMG. Must run under the cache lock.
prepare_kernel() {
  local dep deb tmp vmlinuz off
  KDIR=$(ls -d "$CACHE"/kernel-*/ 2>/dev/null | head -1)
  KDIR=${KDIR%/}
  if [ -z "$KDIR" ] || [ ! -f "$KDIR/ready" ]; then
    dep=$(apt-cache depends linux-image-amd64 2>/dev/null | awk '/Depends: linux-image-[0-9]/{print $2; exit}')
    [ -n "$dep" ] || die_host "apt-cache knows no linux-image-amd64 dependency (apt-get update?)"
    tmp=$(mktemp -d "$CACHE/dl.XXXXXX") || die_host "mktemp in $CACHE"
    chmod 755 "$tmp" # apt's sandbox user writes the download there
    hlog "downloading $dep into $CACHE (once)"
    (cd "$tmp" && apt-get download -q "$dep" >/dev/null) || { rm -rf "$tmp"; die_host "apt-get download $dep failed"; }
    deb=$(ls "$tmp"/*.deb | head -1)
    dpkg -x "$deb" "$tmp/unpacked" || { rm -rf "$tmp"; die_host "dpkg -x $deb failed"; }
    vmlinuz=$(ls "$tmp"/unpacked/boot/vmlinuz-* | head -1)
    KVER=${vmlinuz##*/vmlinuz-}
    depmod -b "$tmp/unpacked" "$KVER" || { rm -rf "$tmp"; die_host "depmod for $KVER failed"; }
    rm -rf "$CACHE/kernel-$KVER"
    mv "$tmp/unpacked" "$CACHE/kernel-$KVER" && touch "$CACHE/kernel-$KVER/ready"
    rm -rf "$tmp"
    KDIR=$CACHE/kernel-$KVER
  fi
  vmlinuz=$(ls "$KDIR"/boot/vmlinuz-* | head -1)
  KVER=${vmlinuz##*/vmlinuz-}
  [ -f "$KDIR/vmlinux" ] || [ -f "$KDIR/vmlinux.failed" ] || extract_vmlinux "$vmlinuz" "$KDIR"
  if [ -f "$KDIR/vmlinux" ]; then KIMG=$KDIR/vmlinux; else KIMG=$vmlinuz; fi
}

# Debian's bzImage carries the kernel as an xz stream: find its magic and decompress the
# first stream into $2/vmlinux (xz stops after it: no pipe, or pipefail would see tail's
# SIGPIPE); on failure leave a marker so it is not retried each run.
extract_vmlinux() {
  local off
  off=$(LC_ALL=C grep -abo -m1 -P '\xfd7zXZ\x00' "$1" | head -1 | cut -d: -f1)
  if [ -n "$off" ] && xz -dc --single-stream < <(tail -c +$((off + 1)) "$1") > "$2/vmlinux.tmp" 2>/dev/null &&
    [ "$(head -c 4 "$2/vmlinux.tmp" | od -An -tx1 | tr -d ' ')" = 7f454c46 ]; then
    mv "$2/vmlinux.tmp" "$2/vmlinux"
  else
    hlog "could not extract an ELF vmlinux from $1; booting the bzImage instead (slower)"
    rm -f "$2/vmlinux.tmp"
    touch "$2/vmlinux.failed"
  fi
}

# The initramfs /init: load the few modules that mounting the host root needs, build
# the overlay, and hand over to this script's guest stage with the host's bash.
initrd_init() {
  cat <<'EOF'
#!/bin/busybox sh
B=/bin/busybox
fail() { echo "vm.sh: initramfs: $*"; echo "NICPROXY-LAB-SETUP-FAILED"; echo o > /proc/sysrq-trigger; $B sleep 30; }
$B mount -t proc proc /proc; $B mount -t sysfs sys /sys; $B mount -t devtmpfs dev /dev
for m in $($B cat /mods/order); do $B insmod /mods/$m || fail "insmod $m"; done
for p in $($B cat /proc/cmdline); do
  case $p in
    nicproxy.stage=*) S=${p#nicproxy.stage=} ;;
    nicproxy.run=*) RUN=${p#nicproxy.run=} ;;
    nicproxy.moddir=*) M=${p#nicproxy.moddir=} ;;
  esac
done
$B mount -t 9p -o ro,trans=virtio,version=9p2000.L,cache=loose,msize=262144 hostroot /lower || fail "9p mount of the host root"
$B mount -t tmpfs -o size=50% tmpfs /rw && $B mkdir -p /rw/u /rw/w || fail "tmpfs"
$B mount -t overlay -o lowerdir=/lower,upperdir=/rw/u,workdir=/rw/w overlay /newroot || fail "overlay"
N=/newroot
$B mount -t proc proc $N/proc; $B mount -t sysfs sys $N/sys; $B mount -t devtmpfs dev $N/dev
$B mkdir -p $N/dev/pts $N/dev/shm; $B mount -t devpts devpts $N/dev/pts; $B mount -t tmpfs tmpfs $N/dev/shm
$B mount -t tmpfs tmpfs $N/run
$B mkdir -p $N/lib/modules && $B rm -rf $N/lib/modules/$($B uname -r) && $B ln -s $M $N/lib/modules/$($B uname -r) || fail "modules link"
exec $B switch_root $N /bin/bash "$S" --guest-stage "$RUN"
EOF
}

# Sets INITRD, building it once per (kernel, init script) under the cache lock.
prepare_initrd() {
  local key r m ko tmp
  key=$( { initrd_init; echo "$KVER"; } | sha1sum | cut -c1-12)
  INITRD=$CACHE/initrd-$KVER-$key.cpio.gz
  [ -f "$INITRD" ] && return 0
  tmp=$(mktemp -d "$CACHE/initrd.XXXXXX") || die_host "mktemp in $CACHE"
  r=$tmp/root
  mkdir -p "$r"/{bin,mods,proc,sys,dev,lower,rw,newroot}
  cp /bin/busybox "$r/bin/busybox"
  for m in virtio_pci 9pnet_virtio 9p overlay; do
    modprobe -d "$KDIR" -S "$KVER" --show-depends "$m" | awk '$1=="insmod"{print $2}'
  done | awk '!seen[$0]++' | while read -r ko; do
    cp "$ko" "$r/mods/" && echo "${ko##*/}" >> "$r/mods/order"
  done
  [ -s "$r/mods/order" ] || { rm -rf "$tmp"; die_host "no modules found for the initramfs in $KDIR"; }
  initrd_init > "$r/init" && chmod +x "$r/init"
  (cd "$r" && find . | cpio -o -H newc --quiet | gzip -1) > "$tmp/initrd" || { rm -rf "$tmp"; die_host "cpio"; }
  mv "$tmp/initrd" "$INITRD"
  rm -rf "$tmp"
}

prepare_cache() {
  mkdir -p "$CACHE" 2>/dev/null || die_host "cannot create $CACHE (set NICPROXY_LAB_CACHE)"
  exec 9>"$CACHE/lock" || die_host "cannot write $CACHE/lock (set NICPROXY_LAB_CACHE)"
  flock 9
  prepare_kernel
  prepare_initrd
  flock -u 9
  exec 9>&-
}

usage() {
  sed -n '2,/^set -uo/p' "$SELF" | sed '$d' | sed 's/^# \{0,1\}//' >&2
  exit 2
}

host_main() {
  local mem=2G smp=2 timeout_s=600 accel=${NICPROXY_LAB_ACCEL:-} rdma=1 share=
  while [ $# -gt 0 ]; do
    case $1 in
      --prepare) install_host_packages; check_host_tools; prepare_cache
        hlog "prepared: kernel $KVER ($KIMG), initramfs $INITRD"; exit 0 ;;
      --mem) mem=$2; shift 2 ;;
      --smp) smp=$2; shift 2 ;;
      --timeout) timeout_s=$2; shift 2 ;;
      --accel) accel=$2; shift 2 ;;
      --no-rdma) rdma=0; shift ;;
      --share) share=$(readlink -f "$2") && [ -d "$share" ] || die_host "--share: $2 is not a directory"
        case $share in *[[:space:]]*) die_host "--share: the path $share contains whitespace" ;; esac
        shift 2 ;;
      --) shift; break ;;
      -h | --help) usage ;;
      *) hlog "unknown option $1"; usage ;;
    esac
  done
  [ $# -gt 0 ] || { hlog "no command given"; usage; }
  check_host_tools
  prepare_cache

  if [ -z "$accel" ]; then
    # A PVM-only /dev/kvm (kvm_pvm) cannot run a stock kernel: KVM only with kvm_intel/amd.
    if [ -w /dev/kvm ] && { [ -d /sys/module/kvm_intel ] || [ -d /sys/module/kvm_amd ]; }; then
      accel=kvm
    else
      accel=tcg
    fi
  fi
  local acc
  case $accel in
    kvm) acc=(-accel kvm -cpu host) ;;
    tcg) acc=(-accel tcg,thread=multi -cpu max) ;;
    *) die_host "--accel must be kvm or tcg, not $accel" ;;
  esac

  RUN=$(mktemp -d "${TMPDIR:-/tmp}/nicproxy-lab.XXXXXX") || die_host "mktemp"
  QPID= TPID=
  trap 'cleanup' EXIT
  trap 'exit 130' INT
  trap 'exit 143' TERM

  # The command, its directory and the exported environment, replayed in the guest.
  {
    echo "cd $(printf '%q' "$PWD") || exit 127"
    local v
    for v in $(compgen -e); do
      case $v in PWD | OLDPWD | SHLVL | _ | SHELLOPTS | BASHOPTS | BASH_* | NICPROXY_LAB* ) continue ;; esac
      printf 'export %s=%q\n' "$v" "${!v}"
    done
    printf 'exec'
    printf ' %q' "$@"
    echo
  } > "$RUN/cmd.sh"
  : > "$RUN/console.log"
  : > "$RUN/stderr.log"

  hlog "kernel $KVER, accel=$accel, mem=$mem, smp=$smp, rdma=$rdma, timeout ${timeout_s}s${share:+, shared $share}"
  local t0 t1 rc=0 share_args=() share_cmdline= kparams="quiet loglevel=3"
  if [ "${NICPROXY_LAB_KDEBUG:-0}" = 1 ]; then
    kparams="ignore_loglevel watchdog_thresh=5 softlockup_all_cpu_backtrace=1 sysctl.kernel.hung_task_timeout_secs=30"
    hlog "kernel debug: all console messages, all-CPU backtraces on a soft lockup"
  fi
  if [ -n "$share" ]; then
    share_args=(-fsdev "local,id=share,path=$share,security_model=none,multidevs=remap"
      -device virtio-9p-pci,fsdev=share,mount_tag=nicproxyshare)
    share_cmdline=" nicproxy.share=$share"
  fi
  t0=$(date +%s%N)
  timeout --kill-after=5 "$timeout_s" qemu-system-x86_64 "${acc[@]}" -m "$mem" -smp "$smp" \
    -nodefaults -no-reboot -display none -nic none -monitor none \
    -kernel "$KIMG" -initrd "$INITRD" \
    -append "console=ttyS0 $kparams panic=-1 rdinit=/init nicproxy.stage=$SELF nicproxy.run=$RUN nicproxy.moddir=$KDIR/lib/modules/$KVER nicproxy.rdma=$rdma$share_cmdline" \
    -chardev file,id=con,path="$RUN/console.log" -serial chardev:con \
    -chardev stdio,id=out,signal=off -serial chardev:out \
    -chardev file,id=err,path="$RUN/stderr.log" -serial chardev:err \
    -fsdev local,id=hostroot,path=/,security_model=none,readonly=on,multidevs=remap \
    -device virtio-9p-pci,fsdev=hostroot,mount_tag=hostroot \
    "${share_args[@]}" \
    </dev/null &
  QPID=$!
  tail -q -n +1 -s 0.2 -F --pid="$QPID" "$RUN/console.log" "$RUN/stderr.log" 2>/dev/null \
    | awk '{ sub(/\r$/, "") }
        !/^NICPROXY-LAB-/ && !/sysrq: Power Off|reboot: Power down/ { print; fflush() }' >&2 &
  TPID=$!
  wait "$QPID"
  rc=$?
  QPID=
  wait "$TPID" 2>/dev/null
  TPID=
  t1=$(date +%s%N)

  local start end status
  start=$(sed -n 's/^NICPROXY-LAB-CMD-START uptime=\([0-9.]*\).*/\1/p' "$RUN/console.log" | tr -d '\r')
  end=$(sed -n 's/^NICPROXY-LAB-CMD-END uptime=\([0-9.]*\).*/\1/p' "$RUN/console.log" | tr -d '\r')
  status=$(sed -n 's/^NICPROXY-LAB-EXIT=\([0-9]*\).*/\1/p' "$RUN/console.log" | tr -d '\r')
  hlog "timing: guest ready for the command at ${start:-?} s guest uptime, command ran" \
    "$(awk -v a="${start:-0}" -v b="${end:-0}" 'BEGIN{ if (b > 0) printf "%.2f", b - a; else printf "?" }') s," \
    "total wall $(((t1 - t0) / 1000000)) ms"
  if [ "$rc" = 124 ] || [ "$rc" = 137 ]; then
    hlog "guest timed out after ${timeout_s}s"
    exit "$EXIT_TIMEOUT"
  fi
  if [ -z "$status" ]; then
    if grep -aq '^NICPROXY-LAB-SETUP-FAILED' "$RUN/console.log"; then
      hlog "lab setup in the guest failed (see the console above)"
    else
      hlog "the guest did not boot or crashed before the command finished (qemu exit $rc)"
    fi
    exit "$EXIT_GUEST"
  fi
  exit "$status"
}

cleanup() {
  [ -n "${QPID:-}" ] && kill "$QPID" 2>/dev/null && wait "$QPID" 2>/dev/null
  [ -n "${TPID:-}" ] && kill "$TPID" 2>/dev/null
  [ -n "${RUN:-}" ] && rm -rf "$RUN"
}

if [ "${1:-}" = --guest-stage ]; then
  guest_stage "$2"
else
  host_main "$@"
fi

#!/usr/bin/env bash
# install-deps.sh: the Debian packages LMAS needs to build, test and run its lab.
# Idempotent; needs root (apt-get). Rust itself comes from rustup, not from here.
set -euo pipefail

if [[ ${1:-} == -h || ${1:-} == --help ]]; then
    echo "Usage: scripts/install-deps.sh   (as root) installs the Debian packages for build, tests and lab"
    exit 0
fi
if [[ $(id -u) -ne 0 ]]; then
    echo "install-deps.sh: needs root to run apt-get (try: sudo $0)" >&2
    exit 1
fi

PACKAGES=(
    build-essential pkg-config        # ring and the BPF build use a C compiler
    clang libclang-dev llvm libbpf-dev # link emulator's XDP loss program; bindgen (DPDK FFI)
    dpdk dpdk-dev libdpdk-dev          # the DPDK appliance datapath (22.11 on bookworm)
    libnetfilter-queue-dev libmnl-dev  # link emulator's NFQUEUE delay daemon
    iproute2 ethtool iptables nftables # lab namespaces, veth, tbf, TPROXY rules
    iperf3                             # lab baselines
    python3 python3-matplotlib         # benchmark plots
    shellcheck                         # scripts/test.sh lints the shell scripts
    qemu-system-x86 cpio               # real QEMU migrations in the lab (migrate.sh); cpio
                                       # packs the running guest's initramfs
    linux-image-cloud-amd64            # the running guest's kernel (/boot/vmlinuz-*; small,
                                       # virtio/serial built in)
)
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends "${PACKAGES[@]}" >/dev/null
echo "install-deps.sh: installed ${#PACKAGES[@]} packages"

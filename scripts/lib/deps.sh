# shellcheck shell=bash
# deps.sh: the Debian packages LMAS needs (build, tests, lab, demo), and ensure_deps, which
# installs the missing ones. Source common.sh first. Used by install-deps.sh, demo.sh, test.sh.

# shellcheck disable=SC2034  # used by the sourcing scripts
DEPS_PACKAGES=(
    build-essential pkg-config        # ring, zstd and the BPF build use a C compiler
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

# missing_deps: prints the packages of DEPS_PACKAGES that are not installed, one per line.
missing_deps() {
    local p
    for p in "${DEPS_PACKAGES[@]}"; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || echo "$p"
    done
}

# ensure_deps: installs the missing packages (saying which), as root; without root it says
# what is missing and how to install it, and fails. Idempotent: quiet when nothing is missing.
ensure_deps() {
    local missing
    command -v dpkg-query >/dev/null || { log "not a Debian system: install the packages of scripts/lib/deps.sh yourself"; return 0; }
    missing=$(missing_deps | tr '\n' ' ')
    [[ -n ${missing// /} ]] || return 0
    is_root || die "missing Debian packages: ${missing}(install them: sudo scripts/install-deps.sh)"
    log "installing missing Debian packages: $missing"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    # shellcheck disable=SC2086  # one package a word
    apt-get install -y -qq --no-install-recommends $missing >/dev/null
}

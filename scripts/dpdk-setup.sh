#!/usr/bin/env bash
# dpdk-setup.sh: bring up the host of an LMAS appliance (DPDK datapath): hugepages, NIC
# binding, and a check of an appliance config against this host. See `--help` and
# docs/DEPLOYMENT.md ("Appliance mode").
set -euo pipefail

PROG=dpdk-setup.sh
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
# shellcheck source-path=SCRIPTDIR source=lib/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib/common.sh"

usage() {
    cat <<EOF
Usage: scripts/dpdk-setup.sh COMMAND [OPTIONS]

Host bring-up for the LMAS appliance datapath (gateway.datapath = "dpdk").

Commands:
  status                      DPDK version, NICs and their drivers, hugepages, IOMMU, CPUs
  hugepages [--pages N] [--size 2M|1G] [--node N]
                              reserve N hugepages (default 1024 x 2M = 2 GiB) and mount
                              hugetlbfs on /dev/hugepages; idempotent (never lowers a larger
                              reservation)
  bind PCI [--driver D]       hand NIC PCI (e.g. 0000:03:00.0) to DPDK: load D (default
                              vfio-pci), check the IOMMU, rebind with dpdk-devbind.py
  unbind PCI --driver D       give the NIC back to kernel driver D (e.g. ixgbe, i40e, ice)
  check --config FILE         check an appliance config against this host: every role lcore
                              exists, is isolated (isolcpus / nohz_full) and on the NIC's NUMA
                              node, hugepages are reserved, PCI devices are bound to a DPDK
                              driver; exit 1 on an error, 0 with warnings
Options:
  -h, --help                  this text

Root is needed for hugepages, bind and unbind. Commands that change the host are safe to run
twice. Needs the Debian packages dpdk (dpdk-devbind.py) and python3.
EOF
}

[[ $# -ge 1 ]] || { usage >&2; exit 2; }
case $1 in -h | --help) usage; exit 0 ;; esac
cmd=$1
shift

pages=1024 size=2M node="" driver="" config="" pci=""
while [[ $# -gt 0 ]]; do
    case $1 in
        --pages) pages=${2:?--pages needs a number}; shift 2 ;;
        --size) size=${2:?--size needs 2M or 1G}; shift 2 ;;
        --node) node=${2:?--node needs a NUMA node}; shift 2 ;;
        --driver) driver=${2:?--driver needs a driver name}; shift 2 ;;
        --config) config=${2:?--config needs a file}; shift 2 ;;
        -h | --help) usage; exit 0 ;;
        [0-9a-fA-F]*:*) pci=$1; shift ;;
        *) log "unknown argument: $1 (see --help)"; exit 2 ;;
    esac
done

devbind() {
    command -v dpdk-devbind.py >/dev/null || die "dpdk-devbind.py not found: apt-get install dpdk"
    dpdk-devbind.py "$@"
}

hugepage_dir() {
    case $size in
        2M | 2m) echo hugepages-2048kB ;;
        1G | 1g) echo hugepages-1048576kB ;;
        *) die "--size must be 2M or 1G (got $size)" ;;
    esac
}

cmd_status() {
    echo "DPDK: $(pkg-config --modversion libdpdk 2>/dev/null || echo 'not installed (apt-get install dpdk libdpdk-dev)')"
    local f
    for f in /sys/kernel/mm/hugepages/hugepages-*; do
        [[ -d $f ]] || continue
        echo "hugepages ${f##*/hugepages-}: $(cat "$f/nr_hugepages") reserved, $(cat "$f/free_hugepages") free"
    done
    local mounts
    mounts=$(awk '$3 == "hugetlbfs" {print $2}' /proc/mounts | tr '\n' ' ')
    if [[ -n $mounts ]]; then
        echo "hugetlbfs: $mounts"
    else
        echo "hugetlbfs: not mounted (run: $0 hugepages)"
    fi
    local groups
    groups=$(find /sys/kernel/iommu_groups -mindepth 1 -maxdepth 1 2>/dev/null | wc -l)
    echo "IOMMU groups: $groups$([[ $groups -eq 0 ]] && echo ' (no IOMMU: vfio-pci needs intel_iommu=on / amd_iommu=on, or noiommu mode)')"
    local isolated
    isolated=$(cat /sys/devices/system/cpu/isolated 2>/dev/null || true)
    echo "CPUs: $(nproc) online, isolated: ${isolated:-none}"
    if command -v dpdk-devbind.py >/dev/null; then
        # lspci's complaints about kernel module metadata are noise here.
        dpdk-devbind.py --status-dev net 2> >(grep -v libkmod >&2)
    fi
}

cmd_hugepages() {
    need_root "reserve hugepages"
    [[ $pages =~ ^[0-9]+$ ]] || die "--pages must be a number (got $pages)"
    local dir base=/sys/kernel/mm/hugepages
    dir=$(hugepage_dir)
    [[ -n $node ]] && base=/sys/devices/system/node/node$node/hugepages
    [[ -d $base/$dir ]] || die "this kernel has no $size hugepages at $base/$dir"
    local now
    now=$(cat "$base/$dir/nr_hugepages")
    if ((now >= pages)); then
        log "$now x $size hugepages already reserved${node:+ on node $node} (wanted $pages): unchanged"
    else
        echo "$pages" >"$base/$dir/nr_hugepages"
        now=$(cat "$base/$dir/nr_hugepages")
        ((now >= pages)) || die "asked for $pages x $size hugepages, the kernel gave $now (memory too fragmented: reserve at boot with hugepages=$pages)"
        log "reserved $now x $size hugepages${node:+ on node $node}"
    fi
    if ! awk '$2 == "/dev/hugepages" && $3 == "hugetlbfs" {found = 1} END {exit !found}' /proc/mounts; then
        mkdir -p /dev/hugepages
        mount -t hugetlbfs nodev /dev/hugepages
        log "mounted hugetlbfs on /dev/hugepages"
    fi
}

cmd_bind() {
    [[ -n $pci ]] || die "bind needs a PCI address (see: $0 status)"
    need_root "bind a NIC"
    [[ -e /sys/bus/pci/devices/$pci ]] || die "no PCI device $pci (see: $0 status)"
    driver=${driver:-vfio-pci}
    modprobe "$driver" 2>/dev/null || die "cannot load kernel module $driver"
    if [[ $driver == vfio-pci ]] && [[ -z $(ls -A /sys/kernel/iommu_groups 2>/dev/null) ]]; then
        if [[ $(cat /sys/module/vfio/parameters/enable_unsafe_noiommu_mode 2>/dev/null) != Y ]]; then
            die "vfio-pci needs an IOMMU (boot with intel_iommu=on or amd_iommu=on) or noiommu mode (echo 1 > /sys/module/vfio/parameters/enable_unsafe_noiommu_mode; unsafe: no DMA isolation)"
        fi
        log "warning: no IOMMU, using vfio noiommu mode (no DMA isolation)"
    fi
    local current
    current=$(basename "$(readlink "/sys/bus/pci/devices/$pci/driver" 2>/dev/null)" 2>/dev/null || true)
    if [[ $current == "$driver" ]]; then
        log "$pci is already bound to $driver"
        return
    fi
    # A NIC carrying a route is in use: dpdk-devbind.py refuses without --force; so do we.
    devbind --bind="$driver" "$pci"
    log "$pci: ${current:-no driver} -> $driver"
}

cmd_unbind() {
    [[ -n $pci ]] || die "unbind needs a PCI address"
    [[ -n $driver ]] || die "unbind needs --driver (the kernel driver to give $pci back to, e.g. ixgbe)"
    need_root "rebind a NIC"
    [[ -e /sys/bus/pci/devices/$pci ]] || die "no PCI device $pci (see: $0 status)"
    modprobe "$driver" 2>/dev/null || true
    devbind --bind="$driver" "$pci"
    log "$pci -> $driver"
}

cmd_check() {
    [[ -n $config ]] || die "check needs --config FILE"
    [[ -r $config ]] || die "cannot read $config"
    command -v python3 >/dev/null || die "check needs python3"
    python3 "$REPO/scripts/lib/dpdk_check.py" "$config"
}

case $cmd in
    status) cmd_status ;;
    hugepages) cmd_hugepages ;;
    bind) cmd_bind ;;
    unbind) cmd_unbind ;;
    check) cmd_check ;;
    *) log "unknown command: $cmd (see --help)"; exit 2 ;;
esac

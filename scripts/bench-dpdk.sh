#!/usr/bin/env bash
# bench-dpdk.sh: the DPDK gateway pair against the kernel gateway pair on the same veth
# topology, in one run, with the CPU each lcore role spends per packet (lmas-bench-dpdk).
set -euo pipefail

usage() {
    cat <<'EOF2'
Usage: scripts/bench-dpdk.sh [--no-build] [--help]

Builds lmas and lmas-bench-dpdk (release), then, in network namespaces src — A — B — dst
joined by veth pairs (DPDK ports: af_packet PMD, no hugepages), sends RUNS hashed transfers of
BYTES through each pair in MODES and prints per-run goodput, medians, ratios to the first mode,
and per lcore role the CPU time per packet (cycles at the TSC rate). Writes
docs/bench/dpdk-veth-runs.csv and docs/bench/dpdk-veth-roles.csv.

af_packet on veth is not a NIC: every packet costs the I/O lcore a trip through the kernel,
and on a small machine all lcores share few CPUs. Read the ratios and the per-role costs, and
docs/BENCHMARKS.md for what they mean on a 10GbE port.

Environment:
  RUNS   transfers per mode (default 3)       BYTES  bytes per transfer (default 256M)
  MODES  comma-separated: kernel, dpdk, dpdk-kernel, kernel-dpdk (default kernel,dpdk,dpdk-kernel)
  CSV    output prefix (default docs/bench/dpdk-veth)
Needs root (namespaces) and the system DPDK (scripts/install-deps.sh).
EOF2
}

PROG=bench-dpdk.sh
# shellcheck source-path=SCRIPTDIR source=lib/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib/common.sh"
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)

build=1
for a in "$@"; do
    case $a in
        -h | --help) usage; exit 0 ;;
        --no-build) build=0 ;;
        *) log "unknown argument: $a (see --help)"; exit 2 ;;
    esac
done
need_root "create network namespaces"
cd "$REPO"
if ((build)); then
    cargo build --release -p lmas -p lmas-tests --bins
fi
TARGET=${CARGO_TARGET_DIR:-$REPO/target}
mkdir -p "$(dirname "${CSV:-docs/bench/dpdk-veth}")"
exec "$TARGET/release/lmas-bench-dpdk" --bytes "${BYTES:-256M}" --runs "${RUNS:-3}" \
    --modes "${MODES:-kernel,dpdk,dpdk-kernel}" --csv "${CSV:-docs/bench/dpdk-veth}"

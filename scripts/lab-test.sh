#!/usr/bin/env bash
# CI lab test: 64 MiB from src-host to dst-host through the LMAS gateway pair over an emulated
# WAN (RTT 50 ms, 0.5 % loss, 1 Gbit/s); the SHA-256 at the receiver must equal the sender's.
# Four times: the kernel pair with the explicit listener (src-host dials gw-a), then with
# TPROXY ingress (src-host dials dst-host itself; gw-a intercepts and carries the original
# destination), then the kernel pair with the lane (wan.lane: frames as UDP datagrams with
# parity; gw-a's counters must show it carried them), then with the lane on "auto" (256 MiB: the
# data flows' losses must move the new frames to the lane, and gw-a must count it), then the
# DPDK pair (af_packet PMD on the gateways' veths; skipped without DPDK). First it checks that
# the gateways' WAN veths keep TSO on a lossless link and segment under the loss program.
#
# Exits 0 with a `SKIP:` line when it cannot run here (not root, no network namespaces);
# exits non-zero on any real failure. Brings the lab up if needed and takes it down again if
# it created it. Environment: LAB_TEST_BYTES (default 64 MiB), LAB_TEST_TIMEOUT (s, 300),
# LAB_TEST_FLOWS (8), and those of scripts/lab.sh (LINKEMU, LMAS, LMAS_LOAD, CARGO_TARGET_DIR).
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
PROG=lab-test.sh
# shellcheck source-path=SCRIPTDIR source=lib/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib/common.sh"
# shellcheck source-path=SCRIPTDIR source=lib/lab-names.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib/lab-names.sh"
LAB="$REPO/scripts/lab.sh"
BYTES=${LAB_TEST_BYTES:-$((64 * 1024 * 1024))}
TIMEOUT=${LAB_TEST_TIMEOUT:-300}
FLOWS=${LAB_TEST_FLOWS:-8}

case ${1:-} in
    -h | --help)
        sed -n '2,12p' "$0" | sed 's/^# \{0,1\}//'
        exit 0
        ;;
esac

TEST_NAME="lab test"
# shellcheck source-path=SCRIPTDIR source=lib/labtest.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib/labtest.sh"
labtest_start

"$LAB" up --rtt 50 --loss 0.5 --rate 1000 || fail "scripts/lab.sh up failed"
# The gateways' WAN veths segment only where the loss program needs wire packets: with TSO off
# on a lossless link, each aggregate a gateway forwards arrives at the wan router as ~44
# packets at once and overflows its veth ring, a loss the link never counts (docs/LAB.md).
wan_tso() { ip netns exec "$1" ethtool -k wan0 | sed -n 's/^tcp-segmentation-offload: \([a-z]*\).*/\1/p'; }
for loss in 0 0.5; do
    "$LAB" set --rtt 50 --loss $loss --rate 1000 >/dev/null || fail "scripts/lab.sh set --loss $loss failed"
    want=on
    [[ $loss == 0 ]] || want=off
    for ns in "$NS_GWA" "$NS_GWB"; do
        got=$(wan_tso "$ns")
        [[ $got == "$want" ]] || fail "$ns wan0 has TSO ${got:-unknown} at loss $loss %, want $want"
    done
done
echo "PASS: lab test: the gateways' WAN veths keep TSO on a lossless link and segment under the loss program"
# The kernel pair with both ingress modes, then the DPDK pair (af_packet PMD on the gateways'
# veths) when this host has DPDK.
pairs=("kernel listen" "kernel tproxy" "kernel listen on" "kernel listen auto")
if pkg-config --exists libdpdk 2>/dev/null; then
    pairs+=("dpdk listen")
else
    echo "SKIP: $TEST_NAME: the DPDK pair (no system DPDK: scripts/install-deps.sh)"
fi
for pair in "${pairs[@]}"; do
    read -r datapath ingress lane <<<"$pair"
    "$LAB" gateways up --datapath "$datapath" --flows "$FLOWS" --ingress "$ingress" ${lane:+--lane "$lane"} ||
        fail "gateways did not come up ($datapath datapath, $ingress ingress${lane:+, lane $lane})"
    lost0=$(link_lost_pkts "$LINKEMU" "$LINK_NAME")
    t0=$(date +%s)
    bytes=$BYTES
    [[ $lane == auto ]] && bytes=$((4 * BYTES))
    if ! mbps=$("$LAB" transfer --bytes "$bytes" --timeout "$TIMEOUT"); then
        fail "transfer through LMAS ($datapath datapath, $ingress ingress${lane:+, lane $lane}) failed (logs: $LAB_RUN_DIR/gw-a.log, gw-b.log)"
    fi
    lost=$(($(link_lost_pkts "$LINKEMU" "$LINK_NAME") - lost0))
    if [[ -n $lane ]]; then
        lmas=${LMAS:-${CARGO_TARGET_DIR:-$REPO/target}/release/lmas}
        status=$(ip netns exec "$NS_GWA" "$lmas" status --config "$LAB_RUN_DIR/gw/gw-a.toml")
        sent=$(sed -n 's/.*lane_frames_sent=\([0-9]*\).*/\1/p' <<<"$status")
        [[ ${sent:-0} -gt 0 ]] || fail "the lane ($lane) carried no frame (logs: $LAB_RUN_DIR/gw-a.log, gw-b.log)"
        how="$ingress ingress, the lane $lane: $sent frames"
        if [[ $lane == auto ]]; then
            chosen=$(sed -n 's/.*lane_chosen=\([0-9]*\).*/\1/p' <<<"$status")
            [[ ${chosen:-0} -gt 0 ]] || fail "the automatic lane was never chosen over 0.5 % loss (logs: $LAB_RUN_DIR/gw-a.log)"
            grep -q "the lane takes the new frames" "$LAB_RUN_DIR/gw-a.log" ||
                fail "gw-a did not log the lane taking the new frames (log: $LAB_RUN_DIR/gw-a.log)"
            how+=", chosen $chosen times"
        fi
    else
        how="$ingress ingress"
    fi
    echo "PASS: lab test: $bytes bytes through LMAS ($datapath datapath, $FLOWS flows, $how) over RTT 50 ms /" \
        "0.5 % loss, SHA-256 equal, $mbps Mbit/s, $(($(date +%s) - t0)) s, link dropped $lost packets"
    if [[ $pair == "kernel listen" ]]; then
        # migrate.sh and bench-concurrent.sh ask for the pair with --reuse: a running pair with
        # the same options must be kept (a second migration may be crossing it).
        pid=$(cat "$LAB_RUN_DIR/gw-a.pid")
        "$LAB" gateways up --reuse --datapath "$datapath" --flows "$FLOWS" --ingress "$ingress" >/dev/null ||
            fail "gateways up --reuse failed"
        [[ $(cat "$LAB_RUN_DIR/gw-a.pid") == "$pid" ]] ||
            fail "gateways up --reuse restarted a pair that already had these options"
        echo "PASS: lab test: gateways up --reuse kept the running pair"
    fi
done

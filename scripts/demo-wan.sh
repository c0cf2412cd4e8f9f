#!/usr/bin/env bash
# demo-wan.sh: the gateway pair accelerating one migration-sized stream over an emulated long WAN.
#
# Brings up the WAN lab (scripts/lab.sh: src-host — gw-a — wan — gw-b — dst-host, hosts with
# a hypervisor's stock TCP: CUBIC and stock buffers) under its own LAB_PREFIX, then for each
# loss setting sends DEMO_BYTES from src-host to dst-host once directly and once through the
# LMAS pair, SHA-256 checked at dst-host, and prints both goodputs and the speed-up.
set -euo pipefail

usage() {
    cat <<'EOF'
Usage: sudo scripts/demo-wan.sh [OPTIONS]
       sudo scripts/demo.sh [OPTIONS]       (the same, when run as root)

One TCP stream src-host → dst-host over an emulated WAN (network namespaces, scripts/lab.sh),
sent directly and through the LMAS gateway pair, for each loss setting; prints the goodputs,
the speed-up, and checks the receiver's SHA-256 against the sender's every time.

Options:
  --rtt MS         round-trip time of the emulated link                     [100]
  --losses "LIST"  random loss settings, %, one pair of transfers each     ["0 0.1"]
  --rate MBIT      link rate                                                [1000]
  --flows N        the gateways' parallel data flows                        [8]
  --max-secs S     stop a transfer after S s (a direct stream over a lossy
                   link crawls); goodput and hash then cover what was sent   [30]
  --no-build       use the binaries already built (LINKEMU, LMAS, LMAS_LOAD or target/release)
  --keep           leave the lab up afterwards (scripts/lab.sh down to remove it)
  -h, --help

Environment: DEMO_BYTES (default 536870912 = 512 MiB; suffixes K M G allowed), LAB_PREFIX (default demo-: the demo's
lab does not touch a lab you have up), CARGO_TARGET_DIR.
Exit status: 0 if every transfer arrived intact, 1 otherwise.
EOF
}

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
PROG=demo-wan.sh
export LAB_PREFIX=${LAB_PREFIX:-demo-}
# shellcheck source-path=SCRIPTDIR source=lib/common.sh
source "$REPO/scripts/lib/common.sh"
# shellcheck source-path=SCRIPTDIR source=lib/lab-names.sh
source "$REPO/scripts/lib/lab-names.sh"
LAB="$REPO/scripts/lab.sh"

RTT=100 LOSSES="0 0.1" RATE=1000 FLOWS=8 MAX_SECS=30 BUILD=1 KEEP=0
while (($#)); do
    case $1 in
        --rtt) RTT=${2:?--rtt needs a value}; shift 2 ;;
        --losses) LOSSES=${2:?--losses needs a value}; shift 2 ;;
        --rate) RATE=${2:?--rate needs a value}; shift 2 ;;
        --flows) FLOWS=${2:?--flows needs a value}; shift 2 ;;
        --max-secs) MAX_SECS=${2:?--max-secs needs a value}; shift 2 ;;
        --no-build) BUILD=0; shift ;;
        --keep) KEEP=1; shift ;;
        -h | --help) usage; exit 0 ;;
        *) log "error: unknown argument: $1"; usage >&2; exit 2 ;;
    esac
done
DEMO_BYTES=${DEMO_BYTES:-536870912}
is_size "$DEMO_BYTES" || die "DEMO_BYTES must be a byte count such as 536870912 or 512M (got '$DEMO_BYTES')"
[[ $RTT =~ ^[0-9]+$ ]] || die "--rtt takes whole milliseconds (got '$RTT')"
[[ $MAX_SECS =~ ^[0-9]+$ && $MAX_SECS -gt 0 ]] || die "--max-secs takes a positive number of seconds (got '$MAX_SECS')"
for loss in $LOSSES; do
    [[ $loss =~ ^[0-9]+(\.[0-9]+)?$ ]] || die "--losses takes percentages such as \"0 0.1\" (got '$loss')"
done

need_root "create the lab's network namespaces (or run scripts/demo.sh --loopback)"
netns_usable "${LAB_PREFIX}probe-$$" || die "network namespaces are unavailable here (ip netns add failed); scripts/demo.sh --loopback runs without them"

if ((BUILD)); then
    echo "==> building linkemu, lmas, lmas-load (cargo build --release)" >&2
    lab_bins "$REPO" || die "the build failed (see above)"
else
    lab_bins "$REPO" --no-build
fi

# shellcheck disable=SC2317  # the EXIT trap
cleanup() {
    if ((KEEP)); then
        log "the lab stays up (LAB_PREFIX=$LAB_PREFIX scripts/lab.sh status | down)"
    else
        "$LAB" down >/dev/null 2>&1 || true
    fi
}
trap cleanup EXIT

echo "==> lab up: RTT $RTT ms, $RATE Mbit/s (namespaces ${LAB_PREFIX}*)" >&2
"$LAB" up --rtt "$RTT" --rate "$RATE" >/dev/null || die "scripts/lab.sh up failed"
echo "==> gateways up: $FLOWS data flows" >&2
"$LAB" gateways up --flows "$FLOWS" >/dev/null || die "scripts/lab.sh gateways up failed"
# A gateway pair's tunnel is up long before a migration starts; warm its flows like that.
"$LAB" transfer --bytes $((32 * 1024 * 1024)) >/dev/null 2>&1 || die "the warm-up transfer through the gateways failed (logs: $LAB_RUN_DIR/gw-*.log)"

# run_pair LOSS: sets DIRECT and LMAS_RATE (Mbit/s) for one loss setting; dies on a bad hash.
run_pair() {
    "$LAB" set --rtt "$RTT" --loss "$1" --rate "$RATE" >/dev/null || die "scripts/lab.sh set failed"
    echo "==> RTT $RTT ms, loss $1 %: direct ($DEMO_BYTES bytes, at most $MAX_SECS s)" >&2
    DIRECT=$("$LAB" transfer --direct --bytes "$DEMO_BYTES" --max-secs "$MAX_SECS") ||
        die "the direct transfer failed"
    echo "==> RTT $RTT ms, loss $1 %: through LMAS" >&2
    LMAS_RATE=$("$LAB" transfer --bytes "$DEMO_BYTES" --max-secs "$MAX_SECS") ||
        die "the transfer through the gateways failed (logs: $LAB_RUN_DIR/gw-*.log)"
}

rows=()
for loss in $LOSSES; do
    run_pair "$loss"
    ratio=$(awk -v g="$LMAS_RATE" -v d="$DIRECT" 'BEGIN { if (d > 0) printf "%.1fx", g / d; else print "n/a" }')
    rows+=("$(printf '  RTT %4s ms, loss %-5s  %10s Mbit/s  %10s Mbit/s  %8s' "$RTT" "$loss %" "$DIRECT" "$LMAS_RATE" "$ratio")")
done

echo
echo "lmas WAN demo: one TCP stream src-host → dst-host ($DEMO_BYTES bytes, at most $MAX_SECS s each),"
echo "emulated link $RATE Mbit/s; hosts with CUBIC and stock buffers, like a hypervisor"
printf '  %-23s  %17s  %17s  %8s\n' link direct "through LMAS ($FLOWS)" speed-up
printf '%s\n' "${rows[@]}"
echo "  every transfer: SHA-256 at dst-host equal to src-host's (a stopped transfer: of what was sent)"

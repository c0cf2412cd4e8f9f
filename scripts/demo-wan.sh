#!/usr/bin/env bash
# demo-wan.sh: the gateway pair accelerating one migration-sized stream over an emulated long WAN.
#
# Brings up the WAN lab (scripts/lab.sh: src-host — gw-a — wan — gw-b — dst-host, hosts with
# a hypervisor's stock TCP: CUBIC and stock buffers) under its own LAB_PREFIX, then for each
# loss setting sends DEMO_BYTES from src-host to dst-host once directly and once through the
# LMAS pair, SHA-256 checked at dst-host, and prints both goodputs and the speed-up. Then the
# same with a guest-memory-like payload (zero, text and random pages) on the clean link, through
# the pair with compression off and with compression auto.
set -euo pipefail

usage() {
    cat <<'EOF'
Usage: sudo scripts/demo-wan.sh [OPTIONS]
       sudo scripts/demo.sh [OPTIONS]       (the same, when run as root)

One TCP stream src-host → dst-host over an emulated WAN (network namespaces, scripts/lab.sh),
sent directly and through the LMAS gateway pair, for each loss setting; prints the goodputs,
the speed-up, and checks the receiver's SHA-256 against the sender's every time. The random
payload's rows run with the gateways' default compression (auto: incompressible frames go as
they are). Then a guest-memory-like payload (4 KiB pages, a third each zero, text-like and
random) on the link without loss: directly, and through the pair with compression off and auto
(goodput of the original stream, as the receiver gets it).

Options:
  --rtt MS         round-trip time of the emulated link                     [100]
  --losses "LIST"  random loss settings, %, one pair of transfers each     ["0 0.1"]
  --rate MBIT      link rate                                                [1000]
  --flows N        the gateways' parallel data flows                        [8]
  --max-secs S     stop a transfer after S s (a direct stream over a lossy
                   link crawls); goodput and hash then cover what was sent   [30]
  --no-compression-rows   skip the guest-like payload's rows
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

RTT=100 LOSSES="0 0.1" RATE=1000 FLOWS=8 MAX_SECS=30 BUILD=1 KEEP=0 COMPRESSION_ROWS=1
while (($#)); do
    case $1 in
        --rtt) RTT=${2:?--rtt needs a value}; shift 2 ;;
        --losses) LOSSES=${2:?--losses needs a value}; shift 2 ;;
        --rate) RATE=${2:?--rate needs a value}; shift 2 ;;
        --flows) FLOWS=${2:?--flows needs a value}; shift 2 ;;
        --max-secs) MAX_SECS=${2:?--max-secs needs a value}; shift 2 ;;
        --no-build) BUILD=0; shift ;;
        --no-compression-rows) COMPRESSION_ROWS=0; shift ;;
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

# gateways_up MODE: (re)starts the pair with compression MODE and warms its flows: a gateway
# pair's tunnel is up long before a migration starts.
gateways_up() {
    echo "==> gateways up: $FLOWS data flows, compression $1" >&2
    "$LAB" gateways up --flows "$FLOWS" --compression "$1" >/dev/null || die "scripts/lab.sh gateways up failed"
    "$LAB" transfer --bytes $((32 * 1024 * 1024)) >/dev/null 2>&1 || die "the warm-up transfer through the gateways failed (logs: $LAB_RUN_DIR/gw-*.log)"
}

# transfer WHAT ARGS...: one scripts/lab.sh transfer of DEMO_BYTES (at most MAX_SECS); prints
# its Mbit/s; fails on a bad hash (call it as `x=$(transfer ...)`, so that set -e sees it).
transfer() {
    local what=$1
    shift
    "$LAB" transfer --bytes "$DEMO_BYTES" --max-secs "$MAX_SECS" "$@" ||
        die "the $what transfer failed (logs: $LAB_RUN_DIR/gw-*.log)"
}

# packed_bytes: gw-a's compression counters, "BYTES_IN BYTES_OUT" (payload offered to packing,
# and what went on the WAN for it).
packed_bytes() {
    local st
    st=$("$LMAS" status --config "$LAB_RUN_DIR/gw/gw-a.toml" 2>/dev/null) || { echo "0 0"; return; }
    echo "$(grep -o 'compression_bytes_in=[0-9]*' <<<"$st" | cut -d= -f2) $(grep -o 'compression_bytes_out=[0-9]*' <<<"$st" | cut -d= -f2)"
}

# row LINK PAYLOAD DIRECT LMAS: one line of the table.
rows=()
row() {
    local ratio
    ratio=$(awk -v g="$4" -v d="$3" 'BEGIN { if (d > 0) printf "%.1fx", g / d; else print "n/a" }')
    rows+=("$(printf '  %-23s  %-17s  %10s Mbit/s  %10s Mbit/s  %8s' "$1" "$2" "$3" "$4" "$ratio")")
}

# The gateways' default, said out loud: the random rows are what `auto` costs on data it cannot pack.
gateways_up auto
for loss in $LOSSES; do
    "$LAB" set --rtt "$RTT" --loss "$loss" --rate "$RATE" >/dev/null || die "scripts/lab.sh set failed"
    echo "==> RTT $RTT ms, loss $loss %: direct ($DEMO_BYTES bytes, at most $MAX_SECS s)" >&2
    direct=$(transfer direct --direct)
    echo "==> RTT $RTT ms, loss $loss %: through LMAS" >&2
    lmas=$(transfer LMAS)
    row "$(printf 'RTT %4s ms, loss %s %%' "$RTT" "$loss")" "random, auto" "$direct" "$lmas"
done
if ((COMPRESSION_ROWS)); then
    # A migration's stream: guest memory, much of it zero or text-like.
    link=$(printf 'RTT %4s ms, loss 0 %%' "$RTT")
    "$LAB" set --rtt "$RTT" --loss 0 --rate "$RATE" >/dev/null || die "scripts/lab.sh set failed"
    echo "==> RTT $RTT ms, loss 0 %: guest-like payload, direct" >&2
    direct=$(transfer direct --direct --payload guest)
    echo "==> RTT $RTT ms, loss 0 %: guest-like payload through LMAS, compression auto" >&2
    read -r in0 out0 <<<"$(packed_bytes)"
    auto=$(transfer LMAS --payload guest)
    read -r in1 out1 <<<"$(packed_bytes)"
    share=$(awk -v i=$((${in1:-0} - ${in0:-0})) -v o=$((${out1:-0} - ${out0:-0})) \
        'BEGIN { if (i > 0) printf "%.0f %%", 100 * o / i; else print "?" }')
    gateways_up off
    echo "==> RTT $RTT ms, loss 0 %: guest-like payload through LMAS, compression off" >&2
    off=$(transfer LMAS --payload guest)
    row "$link" "guest-like, off" "$direct" "$off"
    row "$link" "guest-like, auto" "$direct" "$auto"
fi

echo
echo "lmas WAN demo: one TCP stream src-host → dst-host ($DEMO_BYTES bytes, at most $MAX_SECS s each),"
echo "emulated link $RATE Mbit/s; hosts with CUBIC and stock buffers, like a hypervisor"
printf '  %-23s  %-17s  %17s  %17s  %8s\n' link "payload, compr." direct "through LMAS ($FLOWS)" speed-up
printf '%s\n' "${rows[@]}"
echo "  every transfer: SHA-256 at dst-host equal to src-host's (a stopped transfer: of what was sent)"
if ((COMPRESSION_ROWS)); then
    echo "  guest-like: 4 KiB pages, a third each zero, text-like, random; Mbit/s of the original stream;"
    echo "  with compression auto the WAN carried $share of its bytes (gw-a's compression counters)"
fi

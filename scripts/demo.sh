#!/usr/bin/env bash
# demo.sh: see two lmas gateways carry one TCP stream, and what they gain or cost.
#
# As root (with network namespaces), this is the WAN demo: scripts/demo-wan.sh, over the
# emulated long link of the lab. Otherwise, or with --loopback, the loopback demo below:
# Builds the release binaries, makes keys and configs in a temporary directory, starts gateway
# A (dials) and gateway B (accepts) on 127.0.0.1, then sends DEMO_BYTES of pseudo-random data
# to a sink twice: directly, and through A -> encrypted tunnel -> B. Prints the goodput of both,
# their ratio, and checks that the sink's SHA-256 equals the source's.
set -euo pipefail
set -E # the ERR trap also reports failures inside functions

usage() {
    cat <<'EOF'
Usage: sudo scripts/demo.sh [WAN DEMO OPTIONS]     the WAN demo (scripts/demo-wan.sh --help)
       scripts/demo.sh --loopback [--no-build] [--keep] [--help]

As root, where network namespaces work, runs scripts/demo-wan.sh: one stream over an emulated
100 ms WAN, directly and through the gateway pair. Otherwise (or with --loopback) runs the
lmas gateway pair on loopback and compares one stream sent directly to a sink with
the same stream sent through the gateways (A dials B; both on 127.0.0.1).

Options:
  --no-build   do not run `cargo build --release -p lmas -p lmas-tests`; use existing binaries
  --keep       keep the temporary directory (configs, keys, logs) after the demo
  -h, --help   show this help

Environment:
  DEMO_BYTES        bytes to send each time (default 1073741824 = 1 GiB; suffixes K M G allowed)
  DATA_FLOWS        parallel encrypted data flows between the gateways (default 8; 1..64)
  CARGO_TARGET_DIR  where cargo puts the binaries (default: <repo>/target)
  LMAS_BIN          the lmas binary (default: $CARGO_TARGET_DIR/release/lmas)
  LMAS_LOAD_BIN     the lmas-load binary (default: $CARGO_TARGET_DIR/release/lmas-load)
  RUST_LOG          gateway log level (default: info)

Exit status: 0 if both transfers arrived intact, 1 on a hash mismatch or any failure.
EOF
}

PROG=demo.sh
DIE_TAG="error: "
# shellcheck source-path=SCRIPTDIR source=lib/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib/common.sh"
# shellcheck source-path=SCRIPTDIR source=lib/pair.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib/pair.sh"
# shellcheck source-path=SCRIPTDIR source=lib/deps.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib/deps.sh"

case ${1:-} in
    -h | --help) usage; exit 0 ;;
esac
# What the build and the lab need, installed when missing (as root; else a clear message).
ensure_deps
case ${1:-} in
    --loopback) shift ;;
    *)
        if is_root && command -v ip >/dev/null && netns_usable "lmas-demo-probe-$$"; then
            exec "$(dirname "${BASH_SOURCE[0]}")/demo-wan.sh" "$@"
        fi
        log "not root (or no network namespaces): the loopback demo; the WAN demo is: sudo scripts/demo.sh"
        ;;
esac
parse_pair_args "$@"

DEMO_BYTES=${DEMO_BYTES:-1073741824}
DATA_FLOWS=${DATA_FLOWS:-8}
export RUST_LOG=${RUST_LOG:-info}

is_size "$DEMO_BYTES" ||
    die "DEMO_BYTES must be a byte count such as 1073741824 or 512M (got '$DEMO_BYTES')"
if ! [[ $DATA_FLOWS =~ ^[0-9]+$ ]] || ((DATA_FLOWS < 1 || DATA_FLOWS > 64)); then
    die "DATA_FLOWS must be between 1 and 64 (got '$DATA_FLOWS')"
fi

find_pair_bins

WORK=$(mktemp -d "${TMPDIR:-/tmp}/lmas-demo.XXXXXX")
PIDS=()
LOG_DIR=$WORK
pair_traps

# transfer NAME ADDR SINKPORT: sends DEMO_BYTES to ADDR while a sink listens on SINKPORT;
# sets SRC_LINE and SINK_LINE.
transfer() {
    local name=$1
    load_transfer "$name" "$2" "$3" "$DEMO_BYTES" 42 "$WORK/sink-$name" "$WORK/source-$name"
    [[ -n $SRC_LINE && -n $SINK_LINE ]] || fail "$name: no result line from the source or the sink"
}

PORTS=$("$LOAD" free-ports 3) || die "lmas-load free-ports failed"
read -r SINK_PORT TUNNEL_PORT INGRESS_PORT <<<"${PORTS//$'\n'/ }"

echo "==> keys and configs in $WORK" >&2
pair_keygen "$WORK"
write_pair_configs "$WORK" gw-a.key gw-b.key "127.0.0.1:$TUNNEL_PORT" "127.0.0.1:$INGRESS_PORT" \
    "127.0.0.1:$SINK_PORT" "$DATA_FLOWS" \
    "# Gateway A: the hypervisor side. Dials B; the hypervisor connects to the ingress." \
    "# Gateway B: the destination side. Accepts A's tunnel, connects to allowed targets."

for f in gw-a gw-b; do
    "$LMAS" check-config "$WORK/$f.toml" >/dev/null || die "lmas check-config $WORK/$f.toml failed"
done

echo "==> starting gateway B (accepts on 127.0.0.1:$TUNNEL_PORT) and gateway A ($DATA_FLOWS data flows)" >&2
start_pair "$WORK" "$TUNNEL_PORT" "$INGRESS_PORT"

echo "==> direct: source -> sink 127.0.0.1:$SINK_PORT ($DEMO_BYTES bytes)" >&2
transfer direct "127.0.0.1:$SINK_PORT" "$SINK_PORT"
D_SRC=$SRC_LINE
D_SINK=$SINK_LINE

echo "==> through the gateways: source -> A 127.0.0.1:$INGRESS_PORT -> B -> sink" >&2
transfer gateways "127.0.0.1:$INGRESS_PORT" "$SINK_PORT"
G_SRC=$SRC_LINE
G_SINK=$SINK_LINE

D_RATE=$(field mbit_s "$D_SRC")
G_RATE=$(field mbit_s "$G_SRC")
RATIO=$(awk -v g="$G_RATE" -v d="$D_RATE" 'BEGIN { if (d > 0) printf "%.2f", g / d; else print "n/a" }')

status=0
check() {
    local name=$1 src=$2 sink=$3 s_hash k_hash s_bytes k_bytes
    s_hash=$(field sha256 "$src")
    k_hash=$(field sha256 "$sink")
    s_bytes=$(field bytes "$src")
    k_bytes=$(field bytes "$sink")
    if [[ $s_hash == "$k_hash" && $s_bytes == "$k_bytes" ]]; then
        printf '  %-9s sha256 OK        %s (%s bytes)\n' "$name" "$s_hash" "$k_bytes"
    else
        printf '  %-9s sha256 MISMATCH  source %s (%s bytes), sink %s (%s bytes)\n' \
            "$name" "$s_hash" "$s_bytes" "$k_hash" "$k_bytes"
        status=1
    fi
}

echo
echo "lmas demo: $DEMO_BYTES bytes, one stream, loopback, $DATA_FLOWS data flows"
printf '  %-9s %10s Mbit/s  (%s s)\n' direct "$D_RATE" "$(field secs "$D_SRC")"
printf '  %-9s %10s Mbit/s  (%s s)\n' gateways "$G_RATE" "$(field secs "$G_SRC")"
printf '  %-9s %10s\n' ratio "$RATIO"
check direct "$D_SRC" "$D_SINK"
check gateways "$G_SRC" "$G_SINK"
echo "  (both ends share this machine's cores: loopback measures the gateways' CPU cost, not a WAN)"
if ((status)); then
    show_logs
    log "error: the data arrived corrupted"
fi
exit "$status"

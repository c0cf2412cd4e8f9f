#!/usr/bin/env bash
# bench-concurrent.sh: two real QEMU live migrations at once through the LMAS pair on the lab's
# emulated link (issue 17: both complete and verify, and they share the tunnel within ±10 % of
# equal). Each is scripts/migrate.sh, on the lab's two ways to the destination (--slot 0 and 1:
# two migration groups in the gateways); gw-a's status is sampled meanwhile
# (scripts/lib/group-shares.py). One run per invocation; writes results.csv and table.md to OUT.
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
LAB="$REPO/scripts/lab.sh"
PROG=bench-concurrent.sh
# shellcheck source-path=SCRIPTDIR source=lib/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib/common.sh"
# shellcheck source-path=SCRIPTDIR source=lib/lab-names.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib/lab-names.sh"

RTT=100
LOSS=0
RATE=1000
RAM_MIB=1024
MULTIFD=0
MODE=lmas
OUT=""

usage() {
    cat <<EOF
Usage: scripts/bench-concurrent.sh [OPTIONS]

Migrates two paused guests (byte-identical RAM checked, images of seeds 1 and 2) at the same
time through the gateway pair, and reports each one's time and how the two shared the tunnel
while both were sending (gw-a's per-group payload bytes, sampled every 0.25 s).

Options:
  --rtt MS           the emulated link's RTT                    [$RTT]
  --loss PCT         its loss                                   [$LOSS]
  --rate MBIT        its rate                                   [$RATE]
  --ram-mib M        each guest's RAM (less 8 KiB)              [$RAM_MIB]
  --multifd N        each migration's QEMU multifd channels     [$MULTIFD]
  --mode lmas|dpdk   kernel or DPDK gateway pair                [$MODE]
  --out DIR          [target/bench-concurrent/DATE]
  -h, --help

Exit status 1 if a migration failed or did not verify.
EOF
}

while (($#)); do
    case $1 in
        --rtt) RTT=$2; shift 2 ;;
        --loss) LOSS=$2; shift 2 ;;
        --rate) RATE=$2; shift 2 ;;
        --ram-mib) RAM_MIB=$2; shift 2 ;;
        --multifd) MULTIFD=$2; shift 2 ;;
        --mode) MODE=$2; shift 2 ;;
        --out) OUT=$2; shift 2 ;;
        -h | --help) usage; exit 0 ;;
        *) die "unknown option: $1 (see --help)" ;;
    esac
done
[[ $MODE == lmas || $MODE == dpdk ]] || die "--mode is lmas or dpdk, not $MODE"
is_root || die "must run as root (network namespaces)"
OUT=${OUT:-${CARGO_TARGET_DIR:-$REPO/target}/bench-concurrent/$(date +%Y%m%d-%H%M%S)}
mkdir -p "$OUT"
LOG=$OUT/bench.log
: >"$LOG"
PY=/usr/bin/python3
[[ -x $PY ]] || PY=python3
LMAS_BIN=${LMAS:-${CARGO_TARGET_DIR:-$REPO/target}/release/lmas}

"$LAB" up --rtt "$RTT" --loss "$LOSS" --rate "$RATE" >>"$LOG" 2>&1 || die "lab up failed (see $LOG)"
datapath=kernel
[[ $MODE == lmas ]] || datapath=dpdk
# The pair migrate.sh would start, started once here so that both migrations find it up.
"$LAB" gateways up --reuse --datapath "$datapath" >>"$LOG" 2>&1 || die "gateways up failed (see $LOG)"
[[ -x $LMAS_BIN ]] || die "no lmas binary at $LMAS_BIN (the lab builds it; or set LMAS)"

SAMPLER=""
PIDS=()
# shellcheck disable=SC2317  # the EXIT trap
cleanup() {
    [[ -z $SAMPLER ]] || kill "$SAMPLER" 2>/dev/null || true
    local p
    for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
}
trap cleanup EXIT

rm -f "$OUT/groups.jsonl"
$PY "$REPO/scripts/lib/group-shares.py" sample "$LMAS_BIN" "$LAB_RUN_DIR/gw/gw-a.sock" \
    "$OUT/groups.jsonl" 0.25 2>>"$LOG" &
SAMPLER=$!

log "two ${RAM_MIB} MiB paused guests, multifd $MULTIFD, at once through the $datapath pair (RTT $RTT ms, loss $LOSS %, $RATE Mbit/s)"
for slot in 0 1; do
    "$REPO/scripts/migrate.sh" --mode "$MODE" --guest paused --ram-mib "$RAM_MIB" --multifd "$MULTIFD" \
        --seed $((slot + 1)) --slot "$slot" --timeout 300 >"$OUT/migrate-$slot.out" 2>>"$LOG" &
    PIDS+=($!)
done
failed=0
for slot in 0 1; do
    wait "${PIDS[$slot]}" || failed=1
done
PIDS=()
kill "$SAMPLER" 2>/dev/null || true
wait "$SAMPLER" 2>/dev/null || true
SAMPLER=""

echo "slot,target,verified,e2e_total_ms,e2e_goodput_mbit,share,mbit_while_both" >"$OUT/results.csv"
summary=$($PY "$REPO/scripts/lib/group-shares.py" summary "$OUT/groups.jsonl")
echo "$summary" >>"$LOG"
for slot in 0 1; do
    line=$(grep '^migrate:' "$OUT/migrate-$slot.out" || true)
    port=$TARGET_PORT
    ((slot == 0)) || port=$TARGET2_PORT
    target=$DST_IP:$port
    share=$(grep "^$target," <<<"$summary" | cut -d, -f2 || true)
    mbit=$(grep "^$target," <<<"$summary" | cut -d, -f3 || true)
    v=$(field verified "$line")
    [[ $v == 1 ]] || failed=1
    echo "$slot,$target,${v:-0},$(field e2e_total_ms "$line"),$(field e2e_goodput_mbit "$line"),$share,$mbit" >>"$OUT/results.csv"
done
spread=$(grep '^spread,' <<<"$summary" | cut -d, -f2)
window=$(grep '^window_secs,' <<<"$summary" | cut -d, -f2 || true)

{
    echo "Two ${RAM_MIB} MiB paused guests at once, multifd $MULTIFD, $datapath pair, RTT $RTT ms, loss $LOSS %, $RATE Mbit/s" \
        "(\`scripts/bench-concurrent.sh --rtt $RTT --loss $LOSS --rate $RATE --ram-mib $RAM_MIB --multifd $MULTIFD --mode $MODE\`)"
    echo
    echo "| migration | verified | e2e total, ms | e2e goodput, Mbit/s | share while both sent | Mbit/s while both sent |"
    echo "|---|---|---:|---:|---:|---:|"
    tail -n +2 "$OUT/results.csv" | while IFS=, read -r slot target v total goodput share mbit; do
        echo "| $slot ($target) | $v | ${total:--} | ${goodput:--} | ${share:--} | ${mbit:--} |"
    done
    echo
    echo "Both sent for ${window:-?} s; the shares are within ${spread:-?} % of equal."
} >"$OUT/table.md"
cat "$OUT/table.md"
log "results: $OUT/{results.csv,table.md,groups.jsonl,migrate-*.out,bench.log}"
((failed == 0)) || die "a migration failed or did not verify (see $OUT/migrate-*.out and $LOG)"

#!/usr/bin/env bash
# bench-shares.sh: rate caps and fairness through the LMAS pair on the lab's emulated link
# (issue 17's "Rate limits" measurements), one run per case, all in one invocation:
#   migration-cap  one transfer through a pair with limits.migration_rate_mbit = CAP: its
#                  goodput against the cap
#   alone          the iperf3 stream below with nothing else on the link (its own limit)
#   beside-uncapped / beside-capped
#                  an iperf3 stream (src-host → dst-host, CUBIC, beside the pair on the same
#                  link) while a transfer runs through the pair, without a cap and with
#                  limits.link_rate_mbit = LINK_CAP: what each gets
# Writes results.csv and table.md to OUT. See --help and docs/BENCHMARKS.md.
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
LAB="$REPO/scripts/lab.sh"
PROG=bench-shares.sh
# shellcheck source-path=SCRIPTDIR source=lib/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib/common.sh"
# shellcheck source-path=SCRIPTDIR source=lib/lab-names.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib/lab-names.sh"

RTT=100
RATE=1000
CAP=300
LINK_CAP=500
LANE=""
SECS=10
OUT=""

usage() {
    cat <<EOF
Usage: scripts/bench-shares.sh [OPTIONS]

Options:
  --rtt MS           the emulated link's RTT                         [$RTT]
  --rate MBIT        its rate                                        [$RATE]
  --cap MBIT         limits.migration_rate_mbit of the migration-cap case [$CAP]
  --link-cap MBIT    limits.link_rate_mbit of the beside-capped case [$LINK_CAP]
  --secs S           length of each transfer                         [$SECS]
  --lane on|off|auto the gateways' [wan] lane                        [theirs: off]
  --out DIR          [target/bench-shares/DATE]
  -h, --help

Needs root and the lab (scripts/lab.sh; brought up here if needed). Transfers are lmas-load's
random (incompressible) stream, so payload and wire bytes agree; goodput is the receiver's.
EOF
}

while (($#)); do
    case $1 in
        --rtt) RTT=$2; shift 2 ;;
        --rate) RATE=$2; shift 2 ;;
        --cap) CAP=$2; shift 2 ;;
        --link-cap) LINK_CAP=$2; shift 2 ;;
        --lane) LANE=$2; shift 2 ;;
        --secs) SECS=$2; shift 2 ;;
        --out) OUT=$2; shift 2 ;;
        -h | --help) usage; exit 0 ;;
        *) die "unknown option: $1 (see --help)" ;;
    esac
done
OUT=${OUT:-$REPO/target/bench-shares/$(date +%Y%m%d-%H%M%S)}
mkdir -p "$OUT"
LOG=$OUT/bench.log
: >"$LOG"

"$LAB" up --rtt "$RTT" --rate "$RATE" --loss 0 >>"$LOG" 2>&1 || die "lab up failed (see $LOG)"

# One transfer through the pair for SECS s: its goodput, Mbit/s.
through_pair() {
    "$LAB" transfer --bytes 8G --max-secs "$SECS" --timeout $((SECS + 60)) 2>>"$LOG" || echo nan
}

# An iperf3 stream src-host → dst-host for SECS s beside the pair: Mbit/s received.
beside() {
    local json
    json=$(ip netns exec "$NS_SRC" iperf3 -c "$DST_IP" -p 5201 -t "$SECS" --connect-timeout 5000 -J 2>>"$LOG") || true
    echo "$json" >>"$LOG"
    python3 -c '
import json, sys
try:
    print("%.1f" % (json.loads(sys.stdin.read())["end"]["sum_received"]["bits_per_second"] / 1e6))
except Exception:
    print("nan")
' <<<"$json"
}

ip netns exec "$NS_DST" iperf3 -s -p 5201 >>"$LOG" 2>&1 &
IPERF=$!
trap 'kill $IPERF 2>/dev/null || true; "$LAB" gateways down >/dev/null 2>&1 || true' EXIT
sleep 0.5

echo "case,limit_mbit,pair_mbit,beside_mbit" >"$OUT/results.csv"

log "alone: iperf3 with the link to itself"
other=$(beside)
echo "alone,,,$other" >>"$OUT/results.csv"
log "  iperf3: $other Mbit/s"

log "migration-cap: limits.migration_rate_mbit = $CAP"
"$LAB" gateways up --migration-cap "$CAP" ${LANE:+--lane "$LANE"} >>"$LOG" 2>&1 || die "gateways up failed (see $LOG)"
"$LAB" transfer --bytes 256M --max-secs 3 >>"$LOG" 2>&1 || true # warm the flows
pair=$(through_pair)
echo "migration-cap,$CAP,$pair," >>"$OUT/results.csv"
log "  through the pair: $pair Mbit/s"

for c in uncapped capped; do
    if [[ $c == capped ]]; then
        log "beside-capped: limits.link_rate_mbit = $LINK_CAP"
        "$LAB" gateways up --link-cap "$LINK_CAP" ${LANE:+--lane "$LANE"} >>"$LOG" 2>&1 || die "gateways up failed (see $LOG)"
        limit=$LINK_CAP
    else
        log "beside-uncapped"
        "$LAB" gateways up ${LANE:+--lane "$LANE"} >>"$LOG" 2>&1 || die "gateways up failed (see $LOG)"
        limit=""
    fi
    "$LAB" transfer --bytes 256M --max-secs 3 >>"$LOG" 2>&1 || true
    through_pair >"$OUT/pair.tmp" &
    pair_pid=$!
    sleep 1 # the pair at full speed first: iperf3 then competes for the link
    other=$(beside)
    wait "$pair_pid" || true
    pair=$(cat "$OUT/pair.tmp")
    rm -f "$OUT/pair.tmp"
    echo "beside-$c,$limit,$pair,$other" >>"$OUT/results.csv"
    log "  through the pair: $pair Mbit/s, iperf3 beside it: $other Mbit/s"
done

{
    echo "RTT $RTT ms, link $RATE Mbit/s, ${SECS} s per transfer (\`scripts/bench-shares.sh --rtt $RTT --rate $RATE --cap $CAP --link-cap $LINK_CAP --secs $SECS${LANE:+ --lane $LANE}\`)"
    echo
    echo "| case | cap, Mbit/s | through the pair, Mbit/s | iperf3 beside it, Mbit/s |"
    echo "|---|---:|---:|---:|"
    tail -n +2 "$OUT/results.csv" | while IFS=, read -r name limit pair other; do
        echo "| $name | ${limit:--} | ${pair:--} | ${other:--} |"
    done
} >"$OUT/table.md"
cat "$OUT/table.md"
log "results: $OUT/{results.csv,table.md,bench.log}"

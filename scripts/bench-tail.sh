#!/usr/bin/env bash
# bench-tail.sh: the tail of a stream through the LMAS pair on the lab's emulated link: from
# the source's last write to its last byte at the sink (lab.sh transfer's tail_ms), the part
# of a migration's downtime the path adds after the hypervisor hands over its last pages.
# Compares gateway binaries interleaved, in one run: per round and binary, a fresh pair, a
# warm-up transfer, then RUNS transfers of SECS s each. Writes runs.csv and prints medians.
# See --help and docs/BENCHMARKS.md.
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
LAB="$REPO/scripts/lab.sh"
PROG=bench-tail.sh
# shellcheck source-path=SCRIPTDIR source=lib/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib/common.sh"

RTT=100
LOSS=0
RATE=1000
ROUNDS=3
RUNS=3
SECS=3
DATAPATH=kernel
BINARIES=""
OUT=""
PY=python3

usage() {
    cat <<EOF
Usage: scripts/bench-tail.sh [OPTIONS] [NAME=LMAS_BINARY[,GATEWAY_OPTION...] ...]

Each NAME=PATH is one gateway binary to compare (default: this tree's, as "this"). Options
for 'lab.sh gateways up' may follow the path, comma-separated: this=target/release/lmas and
lane=target/release/lmas,--lane,on compare the tunnel without and with the lane.

Options:
  --rtt MS           the emulated link's RTT                      [$RTT]
  --loss PCT         its random loss, both ways                   [$LOSS]
  --rate MBIT        its rate                                     [$RATE]
  --rounds N         rounds; each runs every binary once           [$ROUNDS]
  --runs N           transfers per binary and round               [$RUNS]
  --secs S           length of each transfer                      [$SECS]
  --datapath D       kernel or dpdk                               [$DATAPATH]
  --out DIR          [target/bench-tail/DATE]
  -h, --help

The tail includes the link's one-way delay (RTT / 2). Needs root and the lab (scripts/lab.sh;
brought up here if needed). Transfers are lmas-load's random (incompressible) stream.
EOF
}

while (($#)); do
    case $1 in
        --rtt) RTT=$2; shift 2 ;;
        --loss) LOSS=$2; shift 2 ;;
        --rate) RATE=$2; shift 2 ;;
        --rounds) ROUNDS=$2; shift 2 ;;
        --runs) RUNS=$2; shift 2 ;;
        --secs) SECS=$2; shift 2 ;;
        --datapath) DATAPATH=$2; shift 2 ;;
        --out) OUT=$2; shift 2 ;;
        -h | --help) usage; exit 0 ;;
        *=*) BINARIES="$BINARIES $1"; shift ;;
        *) die "unknown option: $1 (see --help)" ;;
    esac
done
[[ $DATAPATH == kernel || $DATAPATH == dpdk ]] || die "--datapath is kernel or dpdk, not $DATAPATH"
need_root "run the lab"
BINARIES=${BINARIES:-this=${LMAS:-${CARGO_TARGET_DIR:-$REPO/target}/release/lmas}}
for b in $BINARIES; do
    path=${b#*=}
    [[ -x ${path%%,*} ]] || die "$b: no such binary (build it first: cargo build --release -p lmas)"
done
OUT=${OUT:-$REPO/target/bench-tail/$(date +%Y%m%d-%H%M%S)}
mkdir -p "$OUT"
LOG=$OUT/bench.log
RUNS_CSV=$OUT/runs.csv

"$LAB" up --rtt "$RTT" --loss "$LOSS" --rate "$RATE" >>"$LOG" 2>&1 || die "lab.sh up failed (see $LOG)"
"$LAB" set --rtt "$RTT" --loss "$LOSS" --rate "$RATE" >>"$LOG" 2>&1 || die "lab.sh set failed (see $LOG)"
trap '"$LAB" gateways down >>"$LOG" 2>&1 || true' EXIT
echo "binary,round,run,rtt_ms,loss_pct,datapath,tail_ms,goodput_mbit" >"$RUNS_CSV"
for ((round = 1; round <= ROUNDS; round++)); do
    for b in $BINARIES; do
        name=${b%%=*}
        path=${b#*=}
        export LMAS=${path%%,*}
        opts=()
        [[ $path != *,* ]] || IFS=, read -ra opts <<<"${path#*,}"
        "$LAB" gateways up --datapath "$DATAPATH" "${opts[@]}" >>"$LOG" 2>&1 || die "$name: gateways up failed (see $LOG)"
        "$LAB" transfer --bytes 300M --max-secs 2 >>"$LOG" 2>&1 || true
        for ((run = 1; run <= RUNS; run++)); do
            out=$("$LAB" transfer --bytes 64G --max-secs "$SECS" 2>&1) || true
            echo "$out" >>"$LOG"
            tail_ms=$(sed -n 's/.*tail_ms=\([0-9.]*\).*/\1/p' <<<"$out" | tail -1)
            mbit=$(tail -1 <<<"$out")
            [[ $mbit =~ ^[0-9.]+$ ]] || mbit=nan
            echo "$name,$round,$run,$RTT,$LOSS,$DATAPATH,${tail_ms:-nan},$mbit" >>"$RUNS_CSV"
            log "round $round $name run $run: tail ${tail_ms:-?} ms, $mbit Mbit/s"
        done
    done
done

$PY - "$RUNS_CSV" <<'EOF'
import csv, math, statistics, sys
rows = list(csv.DictReader(open(sys.argv[1])))
print("%-12s %5s %12s %24s %14s" % ("binary", "runs", "tail median", "tail min-max", "Mbit/s median"))
for name in dict.fromkeys(r["binary"] for r in rows):
    t = [float(r["tail_ms"]) for r in rows if r["binary"] == name and r["tail_ms"] != "nan"]
    g = [float(r["goodput_mbit"]) for r in rows if r["binary"] == name and r["goodput_mbit"] != "nan"]
    if not t:
        print("%-12s %5d %12s" % (name, 0, "-"))
        continue
    print("%-12s %5d %9.1f ms %15.1f-%.1f ms %14.1f" % (
        name, len(t), statistics.median(t), min(t), max(t), statistics.median(g) if g else math.nan))
EOF
echo "results: $RUNS_CSV" >&2

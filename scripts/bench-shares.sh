#!/usr/bin/env bash
# bench-shares.sh: rate caps and fairness through the LMAS pair on the lab's emulated link
# (issue 17's "Rate limits" measurements), RUNS rounds of every case, interleaved, in one
# invocation:
#   migration-cap  one transfer through a pair with limits.migration_rate_mbit = CAP: its
#                  goodput against the cap
#   alone          the iperf3 stream below with nothing else on the link (its own limit)
#   beside-uncapped / beside-capped
#                  an iperf3 stream (src-host → dst-host, CUBIC, beside the pair on the same
#                  link) while a transfer runs through the pair, without a cap and with
#                  limits.link_rate_mbit = each LINK_CAP: what each gets
# The table gives each case's median, and the neighbour beside the uncapped pair against its
# max-min fair share: what it gets alone (its demand), or half the link if that is less; and
# against what it gets beside the pair capped (the same host's load, no contest for the link).
# Writes results.csv, seconds.csv and table.md to OUT, and with --queue-trace the bottleneck's
# queue beside each iperf3 stream. See --help and docs/BENCHMARKS.md.
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
INTERVAL=1
QUEUE_TRACE=0
SECS=10
RUNS=1
OUT=""

usage() {
    cat <<EOF
Usage: scripts/bench-shares.sh [OPTIONS]

Options:
  --rtt MS           the emulated link's RTT                         [$RTT]
  --rate MBIT        its rate                                        [$RATE]
  --cap MBIT         limits.migration_rate_mbit of the migration-cap case [$CAP]
  --link-cap MBIT[,MBIT...]
                     limits.link_rate_mbit of the beside-capped case, one case each [$LINK_CAP]
  --secs S           length of each transfer                         [$SECS]
  --interval S       iperf3's reporting interval, seconds (seconds.csv)  [$INTERVAL]
  --queue-trace      the bottleneck's queue beside each iperf3 stream
                     (scripts/queue-trace.sh: OUT/queue-RUN-CASE.csv)
  --runs N           rounds of every case, interleaved               [$RUNS]
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
        --interval) INTERVAL=$2; shift 2 ;;
        --queue-trace) QUEUE_TRACE=1; shift ;;
        --secs) SECS=$2; shift 2 ;;
        --runs) RUNS=$2; shift 2 ;;
        --out) OUT=$2; shift 2 ;;
        -h | --help) usage; exit 0 ;;
        *) die "unknown option: $1 (see --help)" ;;
    esac
done
[[ $RUNS =~ ^[1-9][0-9]*$ ]] || die "--runs takes a count of 1 or more, not '$RUNS'"
[[ $LINK_CAP =~ ^[1-9][0-9]*(,[1-9][0-9]*)*$ ]] ||
    die "--link-cap takes Mbit/s, or several joined by commas, not '$LINK_CAP'"
[[ $INTERVAL =~ ^(0\.[1-9]|[1-9][0-9]*(\.[0-9])?)$ ]] ||
    die "--interval takes seconds, 0.1 or more in tenths, not '$INTERVAL'"
OUT=${OUT:-$REPO/target/bench-shares/$(date +%Y%m%d-%H%M%S)}
mkdir -p "$OUT"
LOG=$OUT/bench.log
: >"$LOG"

"$LAB" up --rtt "$RTT" --rate "$RATE" --loss 0 >>"$LOG" 2>&1 || die "lab up failed (see $LOG)"

# One transfer through the pair for SECS s: its goodput, Mbit/s.
through_pair() {
    "$LAB" transfer --bytes 8G --max-secs "$SECS" --timeout $((SECS + 60)) 2>>"$LOG" || echo nan
}

# An iperf3 stream src-host → dst-host for SECS s beside the pair: "Mbit/s received" and its
# rates by INTERVAL as "END:MBIT" pairs, space-separated, on one line each ("nan" and nothing
# if it failed). With --queue-trace, the bottleneck's queue meanwhile goes to OUT/queue-$1.csv.
beside() {
    local json trace=""
    if ((QUEUE_TRACE)); then
        "$REPO/scripts/queue-trace.sh" --secs $((SECS + 2)) >"$OUT/queue-$1.csv" 2>>"$LOG" &
        trace=$!
    fi
    json=$(ip netns exec "$NS_SRC" iperf3 -c "$DST_IP" -p 5201 -t "$SECS" -i "$INTERVAL" --connect-timeout 5000 -J 2>>"$LOG") || true
    [[ -z $trace ]] || wait "$trace" || true
    echo "$json" >>"$LOG"
    python3 -c '
import json, sys
try:
    j = json.loads(sys.stdin.read())
    print("%.1f" % (j["end"]["sum_received"]["bits_per_second"] / 1e6))
    print(" ".join("%g:%.0f" % (round(i["sum"]["end"], 1), i["sum"]["bits_per_second"] / 1e6) for i in j["intervals"]))
except Exception:
    print("nan")
    print()
' <<<"$json"
}

ip netns exec "$NS_DST" iperf3 -s -p 5201 >>"$LOG" 2>&1 &
IPERF=$!
trap 'kill $IPERF 2>/dev/null || true; "$LAB" gateways down >/dev/null 2>&1 || true' EXIT
sleep 0.5

echo "run,case,limit_mbit,pair_mbit,beside_mbit" >"$OUT/results.csv"
echo "run,case,second,beside_mbit,limit_mbit" >"$OUT/seconds.csv"

# by_second INTERVALS: " (INTERVALS)" for the log when they are seconds; finer ones are
# only in seconds.csv.
by_second() {
    [[ $INTERVAL != 1 ]] || echo " ($1)"
}

# record RUN CASE LIMIT PAIR OTHER INTERVALS: a row of results.csv, the neighbour's rate by
# interval (END:MBIT pairs; the interval's end in seconds) in seconds.csv, with the cap.
record() {
    echo "$1,$2,$3,$4,$5" >>"$OUT/results.csv"
    local v
    for v in $6; do
        echo "$1,$2,${v%%:*},${v#*:},$3" >>"$OUT/seconds.csv"
    done
}

# up ARGS...: (re)starts the pair with ARGS and warms its flows.
up() {
    "$LAB" gateways up "$@" ${LANE:+--lane "$LANE"} >>"$LOG" 2>&1 || die "gateways up failed (see $LOG)"
    "$LAB" transfer --bytes 256M --max-secs 3 >>"$LOG" 2>&1 || true
}

for run in $(seq "$RUNS"); do
    log "round $run of $RUNS"
    log "alone: iperf3 with the link to itself"
    { read -r other; read -r seconds; } < <(beside "$run-alone")
    record "$run" alone "" "" "$other" "$seconds"
    log "  iperf3: $other Mbit/s$(by_second "$seconds")"

    log "migration-cap: limits.migration_rate_mbit = $CAP"
    up --migration-cap "$CAP"
    pair=$(through_pair)
    record "$run" migration-cap "$CAP" "$pair" "" ""
    log "  through the pair: $pair Mbit/s"

    for limit in "" ${LINK_CAP//,/ }; do
        if [[ -n $limit ]]; then
            c=capped
            log "beside-capped: limits.link_rate_mbit = $limit"
            up --link-cap "$limit"
        else
            c=uncapped
            log "beside-uncapped"
            up
        fi
        through_pair >"$OUT/pair.tmp" &
        pair_pid=$!
        sleep 1 # the pair at full speed first: iperf3 then competes for the link
        { read -r other; read -r seconds; } < <(beside "$run-$c${limit:+-$limit}")
        wait "$pair_pid" || true
        pair=$(cat "$OUT/pair.tmp")
        rm -f "$OUT/pair.tmp"
        record "$run" "beside-$c" "$limit" "$pair" "$other" "$seconds"
        log "  through the pair: $pair Mbit/s, iperf3 beside it: $other Mbit/s$(by_second "$seconds")"
    done
done

python3 - "$OUT/results.csv" "$RATE" \
    "scripts/bench-shares.sh --rtt $RTT --rate $RATE --cap $CAP --link-cap $LINK_CAP --secs $SECS --runs $RUNS${LANE:+ --lane $LANE}$([[ $INTERVAL == 1 ]] || echo " --interval $INTERVAL")$( ((QUEUE_TRACE)) && echo " --queue-trace")" \
    "$RTT" "$SECS" >"$OUT/table.md" <<'PY'
import csv, statistics, sys

path, rate, command, rtt, secs = sys.argv[1], float(sys.argv[2]), sys.argv[3], sys.argv[4], sys.argv[5]
rows = list(csv.DictReader(open(path)))
cases = ["alone", "migration-cap", "beside-uncapped", "beside-capped"]

def values(case, column, limit=None):
    out = []
    for r in rows:
        if r["case"] == case and (limit is None or r["limit_mbit"] == limit) and r[column] not in ("", "nan"):
            out.append(float(r[column]))
    return out

def cell(vs):
    if not vs:
        return "-"
    med = "%.1f" % statistics.median(vs)
    return med if len(vs) == 1 else "%s (%s)" % (med, ", ".join("%.1f" % v for v in sorted(vs)))

print("RTT %s ms, link %s Mbit/s, %s s per transfer (`%s`); medians, runs sorted" % (rtt, int(rate), secs, command))
print()
print("| case | cap, Mbit/s | through the pair, Mbit/s | iperf3 beside it, Mbit/s |")
print("|---|---:|---:|---:|")
# Each case once per limit it ran with (beside-capped: one per --link-cap), in the order met.
keys = sorted({(r["case"], r["limit_mbit"]) for r in rows}, key=lambda k: (cases.index(k[0]), float(k[1] or 0)))
for case, limit in keys:
    print("| %s | %s | %s | %s |" % (case, limit or "-", cell(values(case, "pair_mbit", limit)), cell(values(case, "beside_mbit", limit))))
alone, beside = values("alone", "beside_mbit"), values("beside-uncapped", "beside_mbit")
if alone and beside:
    # Max-min fairness: a sender that wants less than an equal split of the link is owed all it
    # wants (its rate alone); one that wants more, the equal split.
    fair = min(statistics.median(alone), rate / 2)
    share = statistics.median(beside) / fair
    print()
    print("The neighbour beside the uncapped pair: %.1f of its fair share of %.1f Mbit/s (its rate alone, or half the link if less): %.3f" % (statistics.median(beside), fair, share))
    # Beside a capped pair that leaves it the room it wants, the neighbour still shares this
    # host's CPU with the pair: what it gets there is what the host costs it, not the link.
    for case, limit in keys:
        capped = values(case, "beside_mbit", limit) if case == "beside-capped" else []
        if capped:
            print("Beside the pair capped at %s Mbit/s: %.3f of its rate alone; the uncapped pair's neighbour gets %.3f of that" % (
                limit, statistics.median(capped) / statistics.median(alone), statistics.median(beside) / statistics.median(capped)))
PY
if ((QUEUE_TRACE)); then
    # By half second: where the neighbour loses, and what queue it met there.
    python3 - "$OUT" >>"$OUT/table.md" <<'PY'
import csv, glob, os, re, statistics, sys

out = sys.argv[1]
rates, queue = {}, {}
for r in csv.DictReader(open(os.path.join(out, "seconds.csv"))):
    name = r["case"] + ("-" + r["limit_mbit"] if r["limit_mbit"] else "")
    bucket = int((float(r["second"]) - 0.001) // 0.5)
    rates.setdefault(name, {}).setdefault(bucket, []).append(float(r["beside_mbit"]))
for path in glob.glob(os.path.join(out, "queue-*.csv")):
    m = re.match(r"queue-\d+-(.*)\.csv$", os.path.basename(path))
    name = m.group(1) if m.group(1) == "alone" else "beside-" + m.group(1)
    rows = [(float(r["time_s"]), float(r["backlog_ms"])) for r in csv.DictReader(open(path))]
    for t, ms in rows:
        queue.setdefault(name, {}).setdefault(int((t - rows[0][0]) // 0.5), []).append(ms)
names = sorted(rates, key=lambda n: (not n.startswith("alone"), n))
buckets = sorted({b for n in names for b in rates[n]})
print()
print("By half second: iperf3's sending rate, Mbit/s (mean of the runs); the bottleneck's queue, mean / max ms (its trace starts with iperf3, whose first bytes go a few hundred ms later)")
print()
print("| seconds | " + " | ".join(names) + " |")
print("|---|" + "---|" * len(names))
for b in buckets:
    cells = []
    for n in names:
        v, q = rates[n].get(b, []), queue.get(n, {}).get(b, [])
        cells.append("%.0f; %s" % (statistics.mean(v), "%.1f / %.1f" % (statistics.mean(q), max(q)) if q else "-") if v else "-")
    print("| %.1f-%.1f | %s |" % (b / 2, b / 2 + 0.5, " | ".join(cells)))
PY
fi
cat "$OUT/table.md"
log "results: $OUT/{results.csv,seconds.csv,table.md,bench.log}"

#!/usr/bin/env bash
# Headline WAN benchmark: goodput of one TCP stream from src-host to dst-host over the
# emulated link, swept over RTT × loss, for several modes. Writes runs.csv, summary.csv and
# goodput.png (scripts/plot-wan.py). See --help and docs/LAB.md.
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
LAB="$REPO/scripts/lab.sh"
PROG=bench-wan.sh
# shellcheck source-path=SCRIPTDIR source=lib/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib/common.sh"

RTTS="0 10 50 100 200"
LOSSES="0 0.1 1"
RATE=1000
RUNS=3
DURATION=10
MODES="direct direct-p8 lmas-1 lmas-4 lmas-8 lmas-16 lmas-8-cubic"
OUT=""
PLOT=1
LMAS_BYTES=$((2 * 1024 * 1024 * 1024))
LMAS_MAX_SECS=12
LMAS_TIMEOUT=120
WARMUP_BYTES=$((256 * 1024 * 1024))

usage() {
    cat <<EOF
Usage: scripts/bench-wan.sh [OPTIONS]

Sweeps RTT × loss on the lab's emulated link (brings the lab up if needed) and measures the
goodput of each mode, RUNS times per point; reports medians.

Options:
  --rtts "LIST"       RTTs in ms                     [$RTTS]
  --losses "LIST"     loss in percent                [$LOSSES]
  --rate MBIT         link rate, 0 = unlimited        [$RATE]
  --runs N            runs per point (median of)      [$RUNS]
  --duration S        seconds per iperf3 run          [$DURATION]
  --modes "LIST"      modes to run                    [$MODES]
  --lmas-bytes N      bytes per transfer in lmas modes [$LMAS_BYTES]
  --lmas-max-secs S   stop an lmas transfer after S s (goodput and hash then cover what was
                      sent; 0 = no limit)            [$LMAS_MAX_SECS]
  --lmas-timeout S    give up on a transfer after S s (recorded as nan) [$LMAS_TIMEOUT]
  --warmup-bytes N    untimed transfer through the gateways before the timed runs of each
                      lmas mode at each link setting (0 = none) [$WARMUP_BYTES]
  --out DIR           output directory                [target/bench-wan/DATE]
  --no-plot           skip the PNG
  -h, --help

Through the pair, gw-a's data flows are sampled every 0.5 s during each run (after its first
2 s; scripts/lib/wan-queue.py): runs.csv and summary.csv get inflight_bdp (median bytes in
flight on the flows ÷ link rate × RTT), rtt_ratio (median flow RTT ÷ link RTT) and
retrans_pct (segments sent again × MSS ÷ bytes sent, in %): what the transfer costs the path;
and pace_est (the tunnel pacer's highest bottleneck estimate ÷ link rate: above 1, it paces
the tunnel faster than the path). lmas-load's transfers also give tail_ms: from the source's
last write to its last byte at the sink, the one-way delay included: what the path holds
behind a sender that stops, as a migration's last pages are.

Modes (each is a function mode_NAME in this script that runs one transfer and prints the
goodput in Mbit/s on stdout):
  direct              iperf3, one TCP stream, src-host → dst-host (hosts: CUBIC, stock buffers)
  direct-p8           iperf3 -P 8 (the "parallel application" peer)
  lmas-N[-CC]         through the LMAS gateway pair with N data flows and WAN congestion
                      control CC (default: the gateway's, bbr), e.g. lmas-8, lmas-8-cubic: a sized transfer
                      with lmas-load, SHA-256 checked at the receiver, and a check that gw-a
                      carried it; a -uNm suffix sets the gateways' per-session unsent room
                      to N MiB (limits.unsent_bytes), e.g. lmas-8-u256m; a last -cMODE
                      suffix sets the gateways' [wan] compression (auto, off, lz4, zstd,
                      zstd:L), e.g. lmas-8-coff (lmas-load's stream is random: incompressible);
                      a -pPACING suffix after that sets [wan] pacing (tunnel, flows), e.g.
                      lmas-8-pflows (each flow its own congestion control, no tunnel pacer); a
                      last -lane or -auto sets [wan] lane = "on" or "auto", e.g. lmas-8-auto
  dpdk-N[-CC]         the same through a DPDK gateway pair (scripts/lab.sh gateways up
                      --datapath dpdk: af_packet PMD on the gateways' veths), e.g. dpdk-8,
                      dpdk-16-reno; xdp-N[-CC] with the af_xdp PMD. A -bNm suffix sets the WAN
                      flows' socket buffer to N MiB (wan.socket_buffer_bytes), e.g. dpdk-8-b64m

Warm-up (lmas modes): a deployed gateway pair keeps its tunnel, and so its WAN flows and
their congestion state, up between migrations. The sweep restarts the pair per mode, so before
the timed runs of a mode at a link setting it sends --warmup-bytes through the tunnel (capped
at 5 s, untimed): the timed runs then start with the flows' state that a tunnel in use has.
The gateway namespaces also run with net.ipv4.tcp_slow_start_after_idle=0 (scripts/lab.sh,
docs/DEPLOYMENT.md), so the idle gap between transfers does not reset it.

Outputs in DIR: runs.csv (every run, with the packets the link dropped meanwhile),
summary.csv (medians, ratios to link rate and to direct), goodput.png, goodput-log.png,
bench.log. Needs root; see scripts/lab.sh --help.
EOF
}

while (($#)); do
    case $1 in
        --rtts) RTTS=$2; shift 2 ;;
        --losses) LOSSES=$2; shift 2 ;;
        --rate) RATE=$2; shift 2 ;;
        --runs) RUNS=$2; shift 2 ;;
        --duration) DURATION=$2; shift 2 ;;
        --modes) MODES=$2; shift 2 ;;
        --lmas-bytes) LMAS_BYTES=$2; shift 2 ;;
        --lmas-max-secs) LMAS_MAX_SECS=$2; shift 2 ;;
        --warmup-bytes) WARMUP_BYTES=$2; shift 2 ;;
        --lmas-timeout) LMAS_TIMEOUT=$2; shift 2 ;;
        --out) OUT=$2; shift 2 ;;
        --no-plot) PLOT=0; shift ;;
        -h | --help) usage; exit 0 ;;
        *) die "unknown option: $1 (see --help)" ;;
    esac
done

is_root || die "must run as root (network namespaces)"
command -v iperf3 >/dev/null || die "iperf3 not found (apt-get install iperf3)"
OUT=${OUT:-$REPO/target/bench-wan/$(date +%Y%m%d-%H%M%S)}
mkdir -p "$OUT"
LOG=$OUT/bench.log
: >"$LOG"

# A python with matplotlib for the plot (pyenv shims may lack it; Debian's has it).
PY=python3
if ! python3 -c 'import matplotlib' 2>/dev/null && [[ -x /usr/bin/python3 ]]; then PY=/usr/bin/python3; fi

# Namespaces and addresses as set up by lab.sh.
# shellcheck source-path=SCRIPTDIR source=lib/lab-names.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib/lab-names.sh"

# ---------------------------------------------------------------------------------------------
# Modes. A mode function runs one transfer under the current link settings and prints the
# goodput in Mbit/s (a number, or "nan" on failure) on stdout; diagnostics go to $LOG.
# mode_prepare_NAME / mode_cleanup_NAME, when defined, run once before/after the sweep.
# ---------------------------------------------------------------------------------------------

IPERF_PID=""
iperf_server() {
    [[ -n $IPERF_PID ]] && return
    # Not through a shell function: $! must be iperf3 itself (ip netns exec execs it).
    ip netns exec "$NS_DST" iperf3 -s -p 5201 >>"$LOG" 2>&1 &
    IPERF_PID=$!
    sleep 0.5
}

# iperf3_run ARGS... → Mbit/s received (sum over streams)
iperf3_run() {
    local json
    json=$(nsx "$NS_SRC" iperf3 -c $DST_IP -p 5201 -t "$DURATION" --connect-timeout 5000 -J "$@" 2>>"$LOG") || true
    echo "$json" >>"$LOG"
    $PY -c '
import json, sys
try:
    d = json.loads(sys.stdin.read())
    print("%.1f" % (d["end"]["sum_received"]["bits_per_second"] / 1e6))
except Exception:
    print("nan")
' <<<"$json"
}

mode_direct() { iperf_server; iperf3_run -P 1; }
mode_direct_p8() { iperf_server; iperf3_run -P 8; }

# --- through LMAS -------------------------------------------------------------------------
# lmas-N[-CC]: starts the gateway pair (scripts/lab.sh gateways up) with N
# data flows, then one sized, hashed transfer with lmas-load.
LMAS_CUR=""
WARM_FOR=""   # the "mode link-setting" the tunnel was last warmed for
# lmas_mode DATAPATH PMD FLOWS CC UNSENT BUFFER COMPRESSION PACING LANE (empty: the gateway's default)
lmas_mode() {
    local datapath=$1 pmd=$2 flows=$3 cc=$4 unsent=$5 buffer=$6 compression=$7 pacing=$8 lane=$9 limit=() key
    key="$datapath-$pmd-$flows-$cc-$unsent-$buffer-$compression-$pacing-$lane"
    ((LMAS_MAX_SECS > 0)) && limit=(--max-secs "$LMAS_MAX_SECS")
    if [[ $LMAS_CUR != "$key" ]]; then
        "$LAB" gateways up --datapath "$datapath" --pmd "$pmd" --flows "$flows" ${cc:+--congestion "$cc"} \
            ${unsent:+--unsent "$unsent"} ${buffer:+--buffer "$buffer"} \
            ${compression:+--compression "$compression"} ${pacing:+--pacing "$pacing"} ${lane:+--lane "$lane"} >>"$LOG" 2>&1 ||
            { echo nan; return; }
        LMAS_CUR=$key
    fi
    if ((WARMUP_BYTES > 0)) && [[ $WARM_FOR != "$key $POINT" ]]; then
        echo "# warm-up: $WARMUP_BYTES bytes, at most 5 s" >>"$LOG"
        "$LAB" transfer --bytes "$WARMUP_BYTES" --max-secs 5 --timeout "$LMAS_TIMEOUT" >>"$LOG" 2>&1 || true
        WARM_FOR="$key $POINT"
    fi
    # The path's costs are the timed transfer's: the warm-up's startup is not in them.
    queue_start
    "$LAB" transfer --bytes "$LMAS_BYTES" "${limit[@]}" --timeout "$LMAS_TIMEOUT" 2>>"$LOG" || echo nan
}
mode_cleanup_lmas() { "$LAB" gateways down >>"$LOG" 2>&1 || true; LMAS_CUR=""; }

run_mode() {
    local mode=$1
    case $mode in
        direct | direct-p8)
            # DPDK gateways own the gateways' veths: nothing routes until they are down.
            if [[ -n $LMAS_CUR && $LMAS_CUR != kernel-* ]]; then mode_cleanup_lmas; fi
            if [[ $mode == direct ]]; then mode_direct; else mode_direct_p8; fi
            ;;
        lmas-* | dpdk-* | xdp-*)
            local rest=${mode#*-} flows cc unsent="" buffer="" compression="" pacing="" lane="" datapath=dpdk pmd=af_packet
            case $mode in
                lmas-*) datapath=kernel ;;
                xdp-*) pmd=af_xdp ;;
            esac
            if [[ $rest =~ ^(.*)-(lane|auto)$ ]]; then
                rest=${BASH_REMATCH[1]} lane=on
                [[ ${BASH_REMATCH[2]} == auto ]] && lane=auto
            fi
            if [[ $rest =~ ^(.*)-p(tunnel|flows)$ ]]; then
                rest=${BASH_REMATCH[1]} pacing=${BASH_REMATCH[2]}
            fi
            if [[ $rest =~ ^(.*)-c(auto|off|lz4|zstd(:-?[0-9]+)?)$ ]]; then
                rest=${BASH_REMATCH[1]} compression=${BASH_REMATCH[2]}
            fi
            while [[ $rest =~ ^(.*)-([ub])([0-9]+)m$ ]]; do
                rest=${BASH_REMATCH[1]}
                if [[ ${BASH_REMATCH[2]} == u ]]; then
                    unsent=$((BASH_REMATCH[3] * 1024 * 1024))
                else
                    buffer=$((BASH_REMATCH[3] * 1024 * 1024))
                fi
            done
            flows=${rest%%-*}
            cc=""
            [[ $rest == *-* ]] && cc=${rest#*-}
            [[ $flows =~ ^[0-9]+$ ]] || die "bad mode $mode (lmas-N, lmas-N-CC, dpdk-N..., xdp-N..., ending in -uNm or -bNm, then -cMODE, then -pPACING, then -lane or -auto)"
            lmas_mode "$datapath" "$pmd" "$flows" "$cc" "$unsent" "$buffer" "$compression" "$pacing" "$lane"
            ;;
        *) die "unknown mode: $mode (see --help)" ;;
    esac
}

cleanup() {
    set +e
    if [[ -n $IPERF_PID ]]; then
        kill "$IPERF_PID" 2>/dev/null
        wait "$IPERF_PID" 2>/dev/null
    fi
    IPERF_PID=""
    if [[ -n $QUEUE_PID ]]; then kill "$QUEUE_PID" 2>/dev/null; fi
    if [[ -n $LMAS_CUR ]]; then mode_cleanup_lmas; fi
    progress_end
    rm -f "$OUT/.mode.out" "$OUT/.queue.jsonl"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# ---------------------------------------------------------------------------------------------

fmt_time() { printf '%dm%02ds' $(($1 / 60)) $(($1 % 60)); }

LOAD=${LMAS_LOAD:-${CARGO_TARGET_DIR:-$REPO/target}/release/lmas-load}
if [[ ! -x $LOAD ]]; then
    (cd "$REPO" && cargo build --release -q -p lmas-tests) || die "building lmas-load failed"
fi
"$LAB" up --rate "$RATE" >>"$LOG" 2>&1 || die "lab.sh up failed (see $LOG)"

read -r -a rtts <<<"$RTTS"
read -r -a losses <<<"$LOSSES"
read -r -a modes <<<"$MODES"
total=$((${#rtts[@]} * ${#losses[@]} * ${#modes[@]} * RUNS))
n=0
t0=$(date +%s)
progress_start "$LOAD" "$total" "bench-wan"
RUNS_CSV=$OUT/runs.csv
echo "mode,rtt_ms,loss_pct,rate_mbit,run,goodput_mbit,lost_pkts,gwa_cpu_pct,gwb_cpu_pct,inflight_bdp,rtt_ratio,retrans_pct,pace_est,tail_ms" >"$RUNS_CSV"
{
    echo "# bench-wan.sh $(date -u +%FT%TZ) on $(uname -r), $(nproc) cpus"
    echo "# rtts=$RTTS losses=$LOSSES rate=$RATE runs=$RUNS duration=$DURATION modes=$MODES"
    echo "# lmas_bytes=$LMAS_BYTES lmas_max_secs=$LMAS_MAX_SECS warmup_bytes=$WARMUP_BYTES"
} >>"$LOG"

LINKEMU_BIN=$("$LAB" linkemu-path)
# CPU time (ticks) of a lab gateway process, empty when it is not running.
CLK_TCK=$(getconf CLK_TCK)
gw_ticks() {
    local pid
    pid=$(cat "$LAB_RUN_DIR/$1.pid" 2>/dev/null) || return 0
    awk '{print $14 + $15}' "/proc/$pid/stat" 2>/dev/null || true
}
cpu_pct() { # TICKS_BEFORE TICKS_AFTER SECONDS
    [[ -n $1 && -n $2 ]] || return 0
    awk -v a="$1" -v b="$2" -v s="$3" -v hz="$CLK_TCK" 'BEGIN { if (s > 0) printf "%.0f", (b - a) / hz / s * 100 }'
}

lost_pkts() { link_lost_pkts "$LINKEMU_BIN" "$LINK_NAME" 2>/dev/null; }

# What a run through the pair costs the path (scripts/lib/wan-queue.py): gw-a's data flows
# sampled every 0.5 s while its timed transfer runs (started by lmas_mode).
LMAS_BIN=${LMAS:-${CARGO_TARGET_DIR:-$REPO/target}/release/lmas}
QUEUE_PID=""
queue_start() {
    rm -f "$OUT/.queue.jsonl"
    $PY "$REPO/scripts/lib/wan-queue.py" sample "$LMAS_BIN" "$LAB_RUN_DIR/gw/gw-a.sock" \
        "$OUT/.queue.jsonl" 0.5 2>>"$LOG" &
    QUEUE_PID=$!
}
queue_stop() { # RTT_MS → "inflight_bdp,rtt_ratio,retrans_pct,pace_est" (empty fields: not measured)
    [[ -n $QUEUE_PID ]] || { echo ",,,"; return; }
    kill "$QUEUE_PID" 2>/dev/null
    wait "$QUEUE_PID" 2>/dev/null
    QUEUE_PID=""
    $PY "$REPO/scripts/lib/wan-queue.py" summary "$OUT/.queue.jsonl" "$1" "$RATE" 2>>"$LOG" || echo ",,,"
}

for rtt in "${rtts[@]}"; do
    for loss in "${losses[@]}"; do
        "$LAB" set --rtt "$rtt" --loss "$loss" --rate "$RATE" >>"$LOG" 2>&1 || die "lab.sh set failed (see $LOG)"
        POINT="$rtt/$loss"
        for mode in "${modes[@]}"; do
            for ((run = 1; run <= RUNS; run++)); do
                n=$((n + 1))
                progress msg "rtt=${rtt}ms loss=${loss}% $mode run $run/$RUNS"
                before=$(lost_pkts)
                ca0=$(gw_ticks gw-a) cb0=$(gw_ticks gw-b) w0=$(date +%s.%N)
                pids0=$(cat "$LAB_RUN_DIR"/gw-{a,b}.pid 2>/dev/null || true)
                echo "# run rtt=$rtt loss=$loss mode=$mode run=$run" >>"$LOG"
                log_at=$(wc -l <"$LOG")
                # Not in a $(...) subshell: modes keep state (servers, gateways) across runs.
                run_mode "$mode" >"$OUT/.mode.out"
                mbps=$(tail -1 "$OUT/.mode.out")
                queue=$(queue_stop "$rtt")
                after=$(lost_pkts)
                w1=$(date +%s.%N)
                secs=$(awk -v a="$w0" -v b="$w1" 'BEGIN { print b - a }')
                # Gateways (re)started inside the run: count from their start.
                through=0
                [[ $mode == direct* ]] || through=1
                ((through == 0)) || [[ -n $ca0 && $pids0 == "$(cat "$LAB_RUN_DIR"/gw-{a,b}.pid 2>/dev/null || true)" ]] ||
                    ca0=0 cb0=0
                cpua=$(cpu_pct "$ca0" "$(gw_ticks gw-a)" "$secs")
                cpub=$(cpu_pct "$cb0" "$(gw_ticks gw-b)" "$secs")
                ((through)) || cpua="" cpub=""
                progress println "$(printf '[%3d/%d] rtt=%sms loss=%s%% %-13s run %d/%d: %s Mbit/s' \
                    "$n" "$total" "$rtt" "$loss" "$mode" "$run" "$RUNS" "$mbps")"
                progress step
                # lmas-load's transfers log their tail (lab.sh transfer); iperf3's do not.
                tail_ms=$(tail -n +"$((log_at + 1))" "$LOG" | sed -n 's/.*tail_ms=\([0-9.]*\).*/\1/p' | tail -1)
                echo "$mode,$rtt,$loss,$RATE,$run,$mbps,$((after - before)),$cpua,$cpub,$queue,$tail_ms" >>"$RUNS_CSV"
            done
        done
    done
done
rm -f "$OUT/.mode.out"
progress_end
log "done: $total runs in $(fmt_time $(($(date +%s) - t0)))"

# Medians and ratios.
$PY - "$RUNS_CSV" "$OUT/summary.csv" <<'EOF'
import csv, math, statistics, sys
rows = list(csv.DictReader(open(sys.argv[1])))
groups = {}
cpu = {}
EXTRA = ("gwa_cpu_pct", "gwb_cpu_pct", "inflight_bdp", "rtt_ratio", "retrans_pct", "pace_est", "tail_ms")
for r in rows:
    key = (r["mode"], float(r["rtt_ms"]), float(r["loss_pct"]), float(r["rate_mbit"]))
    v = float(r["goodput_mbit"])
    groups.setdefault(key, []).append(v)
    for side in EXTRA:
        if r.get(side):
            cpu.setdefault(key + (side,), []).append(float(r[side]))
med = {}
for k, vs in groups.items():
    ok = [v for v in vs if not math.isnan(v)]
    med[k] = (statistics.median(ok) if ok else float("nan"), min(ok, default=float("nan")),
              max(ok, default=float("nan")), len(ok), len(vs))
with open(sys.argv[2], "w", newline="") as f:
    w = csv.writer(f)
    w.writerow(["mode", "rtt_ms", "loss_pct", "rate_mbit", "runs_ok", "runs", "median_mbit",
                "min_mbit", "max_mbit", "ratio_to_link", "ratio_to_direct"] + list(EXTRA))
    for k in sorted(med, key=lambda k: (k[0], k[2], k[1])):
        m, lo, hi, nok, n = med[k]
        d = med.get(("direct",) + k[1:], (float("nan"),))[0]
        link = m / k[3] if k[3] > 0 else float("nan")
        w.writerow([k[0], f"{k[1]:g}", f"{k[2]:g}", f"{k[3]:g}", nok, n, f"{m:.1f}",
                    f"{lo:.1f}", f"{hi:.1f}", f"{link:.3f}", f"{m / d:.2f}" if d and not math.isnan(d) else "nan"]
                   + [("%.0f" if side.endswith("cpu_pct") else "%.1f" if side == "tail_ms" else "%.2f") % statistics.median(cpu[k + (side,)])
                      if k + (side,) in cpu else "" for side in EXTRA])
# Console table: one line per mode × loss, RTTs across.
rtts = sorted({k[1] for k in med})
print("\nmedian goodput, Mbit/s (link %g Mbit/s)" % float(rows[0]["rate_mbit"]))
print("%-14s %7s " % ("mode", "loss%") + " ".join("%8s" % ("%gms" % r) for r in rtts))
for mode in dict.fromkeys(k[0] for k in sorted(med, key=lambda k: k[0])):
    for loss in sorted({k[2] for k in med}):
        cells = [med.get((mode, r, loss, float(rows[0]["rate_mbit"])), (float("nan"),))[0] for r in rtts]
        print("%-14s %7g " % (mode, loss) + " ".join("%8.1f" % c for c in cells))
rate = float(rows[0]["rate_mbit"])

def table(title, width, cell):
    """One line per mode × loss with any cell measured, RTTs across; `cell` gives "-" for none."""
    print("\n" + title)
    print("%-14s %7s " % ("mode", "loss%") + " ".join("%*s" % (width, "%gms" % r) for r in rtts))
    for mode in dict.fromkeys(k[0] for k in sorted(med, key=lambda k: k[0])):
        for loss in sorted({k[2] for k in med}):
            cells = [cell(mode, r, loss) for r in rtts]
            if any(c != "-" for c in cells):
                print("%-14s %7g " % (mode, loss) + " ".join("%*s" % (width, c) for c in cells))

# The path's cost, where measured: in flight / BDP, RTT / base RTT, retransmitted %.
def path_cost(mode, r, loss):
    vs = [cpu.get((mode, r, loss, rate, f)) for f in ("inflight_bdp", "rtt_ratio", "retrans_pct")]
    est = cpu.get((mode, r, loss, rate, "pace_est"))
    if None in vs:
        return "-"
    return "%.1f/%.2f/%.1f" % tuple(statistics.median(v) for v in vs) + (
        "/%.2f" % statistics.median(est) if est else "/-")

if any(k[-1] == "inflight_bdp" for k in cpu):
    table("through the pair: in flight / BDP, flow RTT / link RTT, retransmitted % of sent, pacer estimate / link",
          22, path_cost)
# The tail (lmas-load's transfers): the source's last write to its last byte at the sink.
def tail(mode, r, loss):
    c = cpu.get((mode, r, loss, rate, "tail_ms"))
    return "%.1f" % statistics.median(c) if c else "-"

if any(k[-1] == "tail_ms" for k in cpu):
    table("tail, ms (source's last write to the sink's last byte, one-way delay included)", 8, tail)
EOF

if ((PLOT)); then
    { $PY "$REPO/scripts/plot-wan.py" "$OUT/summary.csv" -o "$OUT/goodput.png" &&
        $PY "$REPO/scripts/plot-wan.py" "$OUT/summary.csv" --log -o "$OUT/goodput-log.png"; } ||
        log "plotting failed (needs python3-matplotlib)"
fi
echo "results: $OUT/summary.csv $OUT/runs.csv${PLOT:+ $OUT/goodput.png}" >&2

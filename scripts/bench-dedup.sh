#!/usr/bin/env bash
# bench-dedup.sh: issue 16's table for the WAN dedup cache, with real QEMU migrations
# (scripts/migrate.sh) and lmas-load transfers through the gateway pair on the lab's emulated
# link: the same guest migrated twice, the same again across a crash of gw-b (its store on
# disk), two clones of one template, the running guest, and a random-only stream; each with
# dedup off and on. See --help and docs/LAB.md.
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
LAB="$REPO/scripts/lab.sh"
MIGRATE="$REPO/scripts/migrate.sh"
PROG=bench-dedup.sh
# shellcheck source-path=SCRIPTDIR source=lib/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib/common.sh"
# shellcheck source-path=SCRIPTDIR source=lib/lab-names.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib/lab-names.sh"

CASES="again template running random"
RUNS=3
RTT=100
LOSS=0
RATE=1000
RAM_MIB=1024
RUN_RAM_MIB=512
WS_MIB=256
DIRTY_RATE=32
MULTIFD=0
DEDUP=auto
SCOPE=tunnel
STORE=$((4 * 1024 * 1024 * 1024))
SEED=1
TEMPLATE_SEED=100
TEMPLATE_SHARE=0.6
CLONE_SEEDS="11 12"
RANDOM_BYTES=$((2 * 1024 * 1024 * 1024))
RANDOM_SECS=12
WARMUP_BYTES=$((256 * 1024 * 1024))
TIMEOUT=300
RUN_TIMEOUT=90
GW_EXTRA=""
OUT=""
CSV=""

usage() {
    cat <<EOF
Usage: scripts/bench-dedup.sh [OPTIONS]

The WAN dedup cache's benchmark (issue 16) on the lab (RTT $RTT ms, loss $LOSS %, $RATE Mbit/s
by default). Every case runs RUNS times; within a run, first with dedup off ("base"), then
with dedup on ("dedup": --dedup, --dedup-scope, --dedup-store), each on a fresh gateway pair
(lab.sh gateways down, then migrate.sh or lab.sh starts one, so no store survives from an
earlier run). Cases:

  again     the paused guest (--seed, --ram-mib), migrated, then migrated again through the
            same pair (migrate.sh --reuse keeps it; its gw-a pid is checked), each time to a
            fresh destination QEMU. Goals (dedup): second ≤ 0.1 × first WAN bytes and
            ≤ 0.5 × its e2e time; first no slower than the first with dedup off.
  restart   as again, but gw-b is killed (SIGKILL) and started again between the two
            migrations (lab.sh gateways restart-b); with dedup, gw-b keeps its store in
            files (--dedup-dir-b OUT/b-store) and the second migration waits (at most 20 s)
            for gw-a to index gw-b's inventory. Same goals as again.
  template  two clones of one template (guest-image.py --template-seed, --template-share:
            the template's pages at the same addresses in both, own data elsewhere; seeds
            --clone-seeds), one after the other through one pair. Goal: WAN bytes of the
            second ≤ 0.5 × the first.
  running   the running guest (--running-ram-mib, --ws-mib, --dirty-rate): WAN bytes,
            e2e total time and downtime, dedup off vs on.
  random    one untimed warm-up (--warmup-bytes, at most 5 s), then one lmas-load transfer
            of random data (--random-bytes, at most --random-secs s), every transfer with a
            seed of its own (first-seen data). Goal: goodput with dedup ≥ 0.97 × off.

WAN bytes: what the link emulator forwarded from gw-a's side to gw-b's (its tbf's sent
bytes, L2) during the migration or timed transfer (migrate.sh's wan_ab_bytes).

Options:
  --cases "LIST"         cases to run                                  [$CASES]
  --runs N               runs of each case (medians over them)         [$RUNS]
  --rtt MS, --loss PCT, --rate MBIT   the emulated link                [$RTT, $LOSS, $RATE]
  --ram-mib M            paused guests' RAM (less 8 KiB)               [$RAM_MIB]
  --running-ram-mib M    the running guest's RAM                       [$RUN_RAM_MIB]
  --ws-mib W             its working set, MiB                          [$WS_MIB]
  --dirty-rate R         its dirtying, MiB/s                           [$DIRTY_RATE]
  --multifd N            QEMU multifd channels (0: one stream)         [$MULTIFD]
  --dedup auto|off|unset the dedup side's [wan] dedup; off: both sides off (the plumbing
                         with a dedup-aware gateway); unset: no dedup key written on either
                         side (a gateway that predates them)           [$DEDUP]
  --dedup-scope migration|tunnel   the dedup side's dedup_scope        [$SCOPE]
  --dedup-store BYTES    the dedup side's dedup_store_bytes            [$STORE]
  --seed S               the again case's guest image seed             [$SEED]
  --template-seed T      the template case's template                  [$TEMPLATE_SEED]
  --template-share P     its share of the runs of pages, 0 to 1        [$TEMPLATE_SHARE]
  --clone-seeds "A B"    the two clones' own seeds                     [$CLONE_SEEDS]
  --random-bytes N       random case: bytes per timed transfer         [$RANDOM_BYTES]
  --random-secs S        ... stopped after S s (goodput of what was sent) [$RANDOM_SECS]
  --warmup-bytes N       ... untimed warm-up per fresh pair (0: none)  [$WARMUP_BYTES]
  --timeout S            a paused guest's migration is cancelled after S s [$TIMEOUT]
  --running-timeout S    the running guest's                           [$RUN_TIMEOUT]
  --gateways-extra "ARGS"  more gateway options for both sides, of those migrate.sh and
                         lab.sh gateways up share: --flows N, --window B, --unsent B,
                         --link-cap M, --compression MODE, --congestion CC
                         (e.g. "--compression off --flows 16")
  --out DIR              runs.csv, tables.md, bench.log  [target/bench-dedup/DATE]
  --csv FILE             also write runs.csv to FILE (e.g. docs/bench/dedup-DATE.csv)
  -h, --help

Output: per case a table of medians over the runs, with the ratios the goals name
(second/first WAN bytes and e2e time, dedup/off goodput), and per run a line on stderr. When
the gateways' status (lmas status --json) has tunnel dedup figures, each run also records
gw-a's bytes fingerprinted, bytes sent as references and hit rate, and gw-b's store. Exit
status 1 if a migration did not verify or a run failed.
Needs root, QEMU (scripts/migrate.sh), python3.
EOF
}

while (($#)); do
    case $1 in
        --cases) CASES=$2; shift 2 ;;
        --runs) RUNS=$2; shift 2 ;;
        --rtt) RTT=$2; shift 2 ;;
        --loss) LOSS=$2; shift 2 ;;
        --rate) RATE=$2; shift 2 ;;
        --ram-mib) RAM_MIB=$2; shift 2 ;;
        --running-ram-mib) RUN_RAM_MIB=$2; shift 2 ;;
        --ws-mib) WS_MIB=$2; shift 2 ;;
        --dirty-rate) DIRTY_RATE=$2; shift 2 ;;
        --multifd) MULTIFD=$2; shift 2 ;;
        --dedup) DEDUP=$2; shift 2 ;;
        --dedup-scope) SCOPE=$2; shift 2 ;;
        --dedup-store) STORE=$2; shift 2 ;;
        --seed) SEED=$2; shift 2 ;;
        --template-seed) TEMPLATE_SEED=$2; shift 2 ;;
        --template-share) TEMPLATE_SHARE=$2; shift 2 ;;
        --clone-seeds) CLONE_SEEDS=$2; shift 2 ;;
        --random-bytes) RANDOM_BYTES=$2; shift 2 ;;
        --random-secs) RANDOM_SECS=$2; shift 2 ;;
        --warmup-bytes) WARMUP_BYTES=$2; shift 2 ;;
        --timeout) TIMEOUT=$2; shift 2 ;;
        --running-timeout) RUN_TIMEOUT=$2; shift 2 ;;
        --gateways-extra) GW_EXTRA=$2; shift 2 ;;
        --out) OUT=$2; shift 2 ;;
        --csv) CSV=$2; shift 2 ;;
        -h | --help) usage; exit 0 ;;
        *) die "unknown option: $1 (see --help)" ;;
    esac
done
read -r -a cases <<<"$CASES"
((${#cases[@]})) || die "--cases: none given"
for c in "${cases[@]}"; do
    [[ $c == again || $c == restart || $c == template || $c == running || $c == random ]] ||
        die "--cases: again, restart, template, running or random, not $c"
done
for v in RUNS RAM_MIB RUN_RAM_MIB WS_MIB DIRTY_RATE MULTIFD STORE SEED TEMPLATE_SEED RANDOM_BYTES RANDOM_SECS WARMUP_BYTES TIMEOUT RUN_TIMEOUT; do
    [[ ${!v} =~ ^[0-9]+$ ]] || die "${v,,}: takes a whole number, got ${!v}"
done
((RUNS >= 1)) || die "--runs must be at least 1"
[[ $RATE =~ ^[1-9][0-9]*$ ]] || die "--rate must be a whole number of Mbit/s above 0 (WAN bytes are the link's tbf counters)"
[[ $DEDUP == auto || $DEDUP == off || $DEDUP == unset ]] || die "--dedup is auto, off or unset, not $DEDUP"
[[ $SCOPE == migration || $SCOPE == tunnel ]] || die "--dedup-scope is migration or tunnel, not $SCOPE"
read -r -a clone_seeds <<<"$CLONE_SEEDS"
[[ ${#clone_seeds[@]} == 2 && ${clone_seeds[0]} =~ ^[0-9]+$ && ${clone_seeds[1]} =~ ^[0-9]+$ &&
    ${clone_seeds[0]} != "${clone_seeds[1]}" ]] || die "--clone-seeds takes two different whole numbers, got \"$CLONE_SEEDS\""
read -r -a gw_extra <<<"$GW_EXTRA"
for ((i = 0; i < ${#gw_extra[@]}; i += 2)); do
    case ${gw_extra[i]} in
        --flows | --window | --unsent | --link-cap | --compression | --congestion)
            ((i + 1 < ${#gw_extra[@]})) || die "--gateways-extra: ${gw_extra[i]} needs a value" ;;
        *) die "--gateways-extra: ${gw_extra[i]} is not one of --flows, --window, --unsent, --link-cap, --compression, --congestion" ;;
    esac
done

is_root || die "must run as root (network namespaces)"
OUT=${OUT:-${CARGO_TARGET_DIR:-$REPO/target}/bench-dedup/$(date +%Y%m%d-%H%M%S)}
mkdir -p "$OUT"
LOG=$OUT/bench.log
: >"$LOG"
RUNS_CSV=$OUT/runs.csv
PY=/usr/bin/python3
[[ -x $PY ]] || PY=python3
LMAS_BIN=${LMAS:-${CARGO_TARGET_DIR:-$REPO/target}/release/lmas}
LOAD=${LMAS_LOAD:-${CARGO_TARGET_DIR:-$REPO/target}/release/lmas-load}
[[ -x $LMAS_BIN ]] || die "no lmas binary at $LMAS_BIN (cargo build --release -p lmas, or set LMAS)"
[[ -x $LOAD ]] || die "no lmas-load binary at $LOAD (cargo build --release -p lmas-tests, or set LMAS_LOAD)"

# The two sides: their gateway options and labels.
# (labels: one word, they go into key=value lines and the CSV)
BASE_ARGS=() DEDUP_ARGS=() BASE_LABEL=unset DEDUP_LABEL=unset
if [[ $DEDUP != unset ]]; then
    BASE_ARGS=(--dedup off) BASE_LABEL=off
    DEDUP_ARGS=(--dedup "$DEDUP" --dedup-scope "$SCOPE" --dedup-store "$STORE")
    DEDUP_LABEL="$DEDUP/$SCOPE"
fi
side_args() { # SIDE → sets SIDE_ARGS and SIDE_LABEL
    if [[ $1 == base ]]; then
        SIDE_ARGS=("${BASE_ARGS[@]}") SIDE_LABEL=$BASE_LABEL
    else
        SIDE_ARGS=("${DEDUP_ARGS[@]}") SIDE_LABEL=$DEDUP_LABEL
    fi
}

# shellcheck disable=SC2317  # the EXIT trap
cleanup() {
    progress_end
    if [[ -n $CSV && -s $RUNS_CSV ]]; then
        mkdir -p "$(dirname "$CSV")" && cp "$RUNS_CSV" "$CSV" && log "runs: $CSV"
    fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

"$LAB" up --rtt "$RTT" --loss "$LOSS" --rate "$RATE" >>"$LOG" 2>&1 || die "lab.sh up failed (see $LOG)"
# (up on a running lab only applies what it is given: set all three, loss included.)
"$LAB" set --rtt "$RTT" --loss "$LOSS" --rate "$RATE" >>"$LOG" 2>&1 || die "lab.sh set failed (see $LOG)"
LINKEMU_BIN=$("$LAB" linkemu-path)

# wan_ab: what the link has forwarded from gw-a's side to gw-b's so far (tbf sent bytes).
wan_ab() { field tbf_sent_bytes "$("$LINKEMU_BIN" stats --name "$LINK_NAME" | grep -F 'dir=a->b ')"; }
gwa_pid() { cat "$LAB_RUN_DIR/gw-a.pid" 2>/dev/null || true; }

# Dedup figures from the gateways' status (tunnel.dedup), if they have them: dedup_snap prints
# one JSON line {"a": gw-a's, "b": gw-b's} ({} each when absent or not running); dedup_delta
# BEFORE AFTER prints key=value of what changed in between (gw-a: bytes fingerprinted, sent as
# references, hit rate; gw-b: resolved from its store, misses, and its store now), or nothing.
dedup_snap() {
    local a b
    a=$("$LMAS_BIN" status --socket "$LAB_RUN_DIR/gw/gw-a.sock" --json 2>/dev/null || true)
    b=$("$LMAS_BIN" status --socket "$LAB_RUN_DIR/gw/gw-b.sock" --json 2>/dev/null || true)
    A=$a B=$b $PY -c '
import json, os
def d(s):
    try:
        t = json.loads(s).get("tunnel") or {}
        return t.get("dedup") or {}
    except Exception:
        return {}
print(json.dumps({"a": d(os.environ["A"]), "b": d(os.environ["B"])}))'
}
dedup_delta() {
    $PY - "$1" "$2" <<'EOF'
import json, sys
b, a = json.loads(sys.argv[1]), json.loads(sys.argv[2])
ga0, ga1, gb1, gb0 = b["a"], a["a"], a["b"], b["b"]
if not ga1 and not gb1:
    sys.exit(0)
def delta(new, old, k):
    return int(new.get(k, 0) or 0) - int(old.get(k, 0) or 0)
out = {}
if ga1:
    n = delta(ga1, ga0, "bytes_in")
    out["dedup_bytes_in"] = n
    out["dedup_ref_bytes"] = r = delta(ga1, ga0, "ref_bytes")
    out["dedup_hit_rate"] = "%.3f" % (r / n) if n > 0 else "na"
if gb1:
    out["dedup_resolved_bytes"] = delta(gb1, gb0, "resolved_bytes")
    out["dedup_misses"] = delta(gb1, gb0, "misses")
    for k in ("store_bytes", "store_chunks", "store_evictions"):
        out[k] = int(gb1.get(k, 0) or 0)
print(" ".join(f"{k}={v}" for k, v in out.items()))
EOF
}

COLS=(case run side dedup step exit status converged verified e2e_total_ms e2e_downtime_ms
    e2e_goodput_mbit transferred_bytes stream_bytes wan_ab_bytes wan_ba_bytes goodput_mbit seed
    dedup_bytes_in dedup_ref_bytes dedup_hit_rate dedup_resolved_bytes dedup_misses store_bytes
    store_chunks store_evictions)
(IFS=,; echo "${COLS[*]}") >"$RUNS_CSV"
{
    echo "# bench-dedup.sh $(date -u +%FT%TZ) on $(uname -r), $(nproc) cpus, $(qemu-system-x86_64 --version 2>/dev/null | head -1)"
    echo "# cases=$CASES runs=$RUNS rtt=$RTT loss=$LOSS rate=$RATE ram_mib=$RAM_MIB running_ram_mib=$RUN_RAM_MIB ws_mib=$WS_MIB dirty_rate=$DIRTY_RATE multifd=$MULTIFD"
    echo "# base: ${BASE_ARGS[*]:-(no dedup keys)}; dedup: ${DEDUP_ARGS[*]:-(no dedup keys)}; gateways-extra: ${GW_EXTRA:-none}"
    echo "# seed=$SEED template_seed=$TEMPLATE_SEED template_share=$TEMPLATE_SHARE clone_seeds=$CLONE_SEEDS random_bytes=$RANDOM_BYTES random_secs=$RANDOM_SECS warmup_bytes=$WARMUP_BYTES"
} >>"$LOG"

BAD=0 N=0 TOTAL=0
for c in "${cases[@]}"; do
    case $c in
        again | restart | template) TOTAL=$((TOTAL + 4 * RUNS)) ;;
        *) TOTAL=$((TOTAL + 2 * RUNS)) ;;
    esac
done

# record CASE RUN SIDE STEP KV: one CSV row from KV (key=value words), and its line on stderr.
record() {
    local kv="case=$1 run=$2 side=$3 dedup=$SIDE_LABEL step=$4 $5" col row="" v
    for col in "${COLS[@]}"; do
        v=$(field "$col" "$kv")
        row+="${row:+,}${v:-na}"
    done
    echo "$row" >>"$RUNS_CSV"
    N=$((N + 1))
    local what
    if [[ $1 == random ]]; then
        what="goodput=$(field goodput_mbit "$kv") Mbit/s"
    else
        what="$(field status "$kv") verified=$(field verified "$kv") e2e=$(field e2e_total_ms "$kv") ms"
        [[ $1 != running ]] || what+=" downtime=$(field e2e_downtime_ms "$kv") ms"
    fi
    local wan
    wan=$(field wan_ab_bytes "$kv")
    [[ ! $wan =~ ^[0-9]+$ ]] || wan=$(awk -v b="$wan" 'BEGIN { printf "%.1f", b / 1048576 }')
    local hit
    hit=$(field dedup_hit_rate "$kv")
    progress println "$(printf '[%2d/%d] %-8s run %d/%d %-18s %-7s: %s, WAN %s MiB%s' "$N" "$TOTAL" "$1" "$2" "$RUNS" \
        "$3 ($SIDE_LABEL)" "$4" "$what" "$wan" "${hit:+, dedup hit rate $hit}")"
    progress step
}

# migrate_one CASE RUN SIDE STEP MIGRATE-ARGS...: one migrate.sh run with the side's gateway
# options (and the extras), recorded.
migrate_one() {
    local c=$1 run=$2 side=$3 step=$4 rc=0 line snap0 snap1 extra
    shift 4
    progress msg "$c run $run/$RUNS $SIDE_LABEL $step"
    echo "# case=$c run=$run side=$side step=$step: migrate.sh --mode lmas --multifd $MULTIFD ${SIDE_ARGS[*]} ${gw_extra[*]} $*" >>"$LOG"
    snap0=$(dedup_snap)
    line=$("$MIGRATE" --mode lmas --multifd "$MULTIFD" "${SIDE_ARGS[@]}" "${gw_extra[@]}" "$@" 2>>"$LOG") || rc=$?
    snap1=$(dedup_snap)
    echo "$line" >>"$LOG"
    [[ $line == migrate:* ]] || line="migrate: status=error converged=0 verified=0"
    [[ $(field verified "$line") == 1 ]] || BAD=$((BAD + 1))
    extra=$(dedup_delta "$snap0" "$snap1")
    record "$c" "$run" "$side" "$step" "exit=$rc ${line#migrate: } $extra"
}

NEXT_SEED=1000 # lmas-load seeds: every transfer its own stream, never seen by a store before
# fresh_pair CASE RUN SIDE: a new gateway pair with the side's options (the pair migrate.sh
# would start, so that its --reuse keeps it), warmed up with --warmup-bytes of random data (at
# most 5 s): a deployed pair's tunnel is up and in use between migrations, and a fresh one's
# first transfer would also pay its flows' ramp-up. Sets PAIR_PID (gw-a's); records a failed
# run and returns 1 if the pair does not come up.
fresh_pair() {
    local c=$1 run=$2 side=$3
    "$LAB" gateways down >>"$LOG" 2>&1
    echo "# case=$c run=$run side=$side: lab.sh gateways up ${SIDE_ARGS[*]} ${gw_extra[*]}" >>"$LOG"
    if ! "$LAB" gateways up "${SIDE_ARGS[@]}" "${gw_extra[@]}" >>"$LOG" 2>&1; then
        BAD=$((BAD + 1))
        record "$c" "$run" "$side" pair "exit=1 status=error verified=0"
        return 1
    fi
    PAIR_PID=$(gwa_pid)
    if ((WARMUP_BYTES > 0)); then
        NEXT_SEED=$((NEXT_SEED + 1))
        echo "# warm-up: $WARMUP_BYTES bytes, at most 5 s, seed $NEXT_SEED" >>"$LOG"
        "$LAB" transfer --payload random --seed "$NEXT_SEED" --bytes "$WARMUP_BYTES" --max-secs 5 >>"$LOG" 2>&1 || true
    fi
}

# same_pair WHAT: dies unless gw-a is still the process fresh_pair started.
same_pair() {
    local now
    now=$(gwa_pid)
    [[ $now == "$PAIR_PID" ]] ||
        die "the gateway pair was restarted or stopped $1 (gw-a pid $PAIR_PID → ${now:-none}): its store is gone; see $LOG"
}

case_again() { # RUN SIDE
    fresh_pair again "$1" "$2" || return 0
    migrate_one again "$1" "$2" first --guest paused --ram-mib "$RAM_MIB" --seed "$SEED" --timeout "$TIMEOUT"
    same_pair "by the first migration"
    migrate_one again "$1" "$2" second --guest paused --ram-mib "$RAM_MIB" --seed "$SEED" --timeout "$TIMEOUT"
    same_pair "by the second migration"
}

# wait_inventory: waits (at most 200 looks, 0.1 s apart) until gw-a indexes every chunk the restarted gw-b holds
# (its inventory, sent when the new tunnel began), and logs how long that took.
wait_inventory() {
    local counts t0
    t0=$(date +%s%N)
    for _ in $(seq 200); do
        counts=$(dedup_snap | $PY -c 'import json, sys
s = json.load(sys.stdin)
print(int(s["a"].get("index_chunks", 0) or 0), int(s["b"].get("store_chunks", 0) or 0))')
        read -r a b <<<"$counts"
        if ((b > 0 && a >= b)); then
            echo "# inventory: gw-a indexes $a chunks of gw-b's $b, $((($(date +%s%N) - t0) / 1000000)) ms after gw-b's tunnel was up" >>"$LOG"
            return
        fi
        sleep 0.1
    done
    echo "# inventory: gw-a indexes ${a:-?} chunks of gw-b's ${b:-?} after 200 looks" >>"$LOG"
}

case_restart() { # RUN SIDE
    local saved=("${SIDE_ARGS[@]}")
    if [[ $2 == dedup && $DEDUP == auto ]]; then
        local store
        store=$(realpath -m "$OUT/b-store")
        rm -rf "$store"
        SIDE_ARGS+=(--dedup-dir-b "$store")
    fi
    if fresh_pair restart "$1" "$2"; then
        migrate_one restart "$1" "$2" first --guest paused --ram-mib "$RAM_MIB" --seed "$SEED" --timeout "$TIMEOUT"
        same_pair "by the first migration"
        "$LAB" gateways restart-b >>"$LOG" 2>&1 || die "lab.sh gateways restart-b failed (see $LOG)"
        [[ $2 != dedup || $DEDUP != auto ]] || wait_inventory
        migrate_one restart "$1" "$2" second --guest paused --ram-mib "$RAM_MIB" --seed "$SEED" --timeout "$TIMEOUT"
        same_pair "by the second migration"
    fi
    SIDE_ARGS=("${saved[@]}")
}

case_template() { # RUN SIDE
    fresh_pair template "$1" "$2" || return 0
    migrate_one template "$1" "$2" clone-a --guest paused --ram-mib "$RAM_MIB" --seed "${clone_seeds[0]}" \
        --template-seed "$TEMPLATE_SEED" --template-share "$TEMPLATE_SHARE" --timeout "$TIMEOUT"
    same_pair "by the first clone's migration"
    migrate_one template "$1" "$2" clone-b --guest paused --ram-mib "$RAM_MIB" --seed "${clone_seeds[1]}" \
        --template-seed "$TEMPLATE_SEED" --template-share "$TEMPLATE_SHARE" --timeout "$TIMEOUT"
    same_pair "by the second clone's migration"
}

case_running() { # RUN SIDE
    fresh_pair running "$1" "$2" || return 0
    migrate_one running "$1" "$2" migrate --guest running --ram-mib "$RUN_RAM_MIB" --ws-mib "$WS_MIB" \
        --dirty-rate "$DIRTY_RATE" --timeout "$RUN_TIMEOUT"
    same_pair "by the migration"
}

case_random() { # RUN SIDE
    local run=$1 side=$2 rc=0 mbit w0 w1 snap0 snap1 err sent extra
    progress msg "random run $run/$RUNS $SIDE_LABEL"
    fresh_pair random "$run" "$side" || return 0
    NEXT_SEED=$((NEXT_SEED + 1))
    err=$OUT/.transfer.err
    snap0=$(dedup_snap)
    w0=$(wan_ab)
    mbit=$("$LAB" transfer --payload random --seed "$NEXT_SEED" --bytes "$RANDOM_BYTES" --max-secs "$RANDOM_SECS" \
        --timeout $((RANDOM_SECS + 120)) 2>"$err") || rc=$?
    w1=$(wan_ab)
    snap1=$(dedup_snap)
    cat "$err" >>"$LOG"
    sent=$(field bytes "$(grep 'source: ' "$err" | tail -1)")
    rm -f "$err"
    echo "$mbit" >>"$LOG"
    [[ $rc == 0 && $mbit =~ ^[0-9.]+$ ]] || { mbit=nan; BAD=$((BAD + 1)); }
    extra=$(dedup_delta "$snap0" "$snap1")
    same_pair "by the transfer"
    record random "$run" "$side" transfer "exit=$rc status=$([[ $rc == 0 ]] && echo completed || echo error) verified=$([[ $rc == 0 ]] && echo 1 || echo 0) goodput_mbit=$mbit stream_bytes=${sent:-na} wan_ab_bytes=$((w1 - w0)) seed=$NEXT_SEED $extra"
}

log "cases: $CASES, $RUNS runs, RTT $RTT ms, loss $LOSS %, $RATE Mbit/s; base ${BASE_ARGS[*]:-(no dedup keys)}, dedup ${DEDUP_ARGS[*]:-(no dedup keys)} (log: $LOG)"
t0=$(date +%s)
progress_start "$LOAD" "$TOTAL" "bench-dedup"
for c in "${cases[@]}"; do
    for ((run = 1; run <= RUNS; run++)); do
        for side in base dedup; do
            side_args "$side"
            "case_$c" "$run" "$side"
        done
    done
done
"$LAB" gateways down >>"$LOG" 2>&1 || true
progress_end
log "done: $N runs in $((($(date +%s) - t0) / 60)) min $((($(date +%s) - t0) % 60)) s"

# The tables: medians over the runs, per case and side.
$PY - "$RUNS_CSV" "$OUT/tables.md" "$RTT" "$LOSS" "$RATE" <<'EOF'
import csv, statistics, sys
rows = list(csv.DictReader(open(sys.argv[1])))
rtt, loss, rate = sys.argv[3:6]
out = []
def num(v):
    try:
        return float(v)
    except (TypeError, ValueError):
        return None
def med(case, side, step, col):
    vs = [num(r[col]) for r in rows if r["case"] == case and r["side"] == side and r["step"] == step]
    vs = [v for v in vs if v is not None and v == v]
    return statistics.median(vs) if vs else None
def ratio(a, b):
    return a / b if a is not None and b else None
def f(v, fmt="%.1f", scale=1.0):
    return "-" if v is None else fmt % (v / scale)
def ok(case, side):
    rs = [r for r in rows if r["case"] == case and r["side"] == side]
    return "%d/%d" % (sum(r["verified"] == "1" for r in rs), len(rs))
def label(case, side):
    ls = {r["dedup"] for r in rows if r["case"] == case and r["side"] == side}
    return "%s (%s)" % (side, "/".join(sorted(ls))) if ls else side
MiB, S = 1048576.0, 1000.0
cases = list(dict.fromkeys(r["case"] for r in rows))
runs = {c: len({r["run"] for r in rows if r["case"] == c}) for c in cases}
out.append(f"RTT {rtt} ms, loss {loss} %, {rate} Mbit/s; medians over the runs; WAN: MiB the link carried gw-a → gw-b")
for case in cases:
    sides = [s for s in ("base", "dedup") if any(r["case"] == case and r["side"] == s for r in rows)]
    out.append("")
    if case in ("again", "restart", "template"):
        a, b = ("clone-a", "clone-b") if case == "template" else ("first", "second")
        title = {"again": "the same paused guest twice through one pair",
                 "restart": "the same paused guest twice, gw-b killed and restarted in between",
                 "template": "two clones of one template through one pair"}[case]
        out.append(f"### {case}: {title} ({runs[case]} runs)")
        out.append("")
        out.append(f"| dedup | {a}: WAN MiB | {b}: WAN MiB | {b}/{a} bytes | {a}: e2e s | {b}: e2e s | {b}/{a} e2e | verified |")
        out.append("|---|---:|---:|---:|---:|---:|---:|---|")
        for s in sides:
            w1, w2 = med(case, s, a, "wan_ab_bytes"), med(case, s, b, "wan_ab_bytes")
            e1, e2 = med(case, s, a, "e2e_total_ms"), med(case, s, b, "e2e_total_ms")
            out.append(f"| {label(case, s)} | {f(w1, scale=MiB)} | {f(w2, scale=MiB)} | {f(ratio(w2, w1), '%.3f')} | "
                       f"{f(e1, '%.2f', S)} | {f(e2, '%.2f', S)} | {f(ratio(e2, e1), '%.3f')} | {ok(case, s)} |")
        if len(sides) == 2:
            out.append("")
            r = ratio(med(case, "dedup", a, "e2e_total_ms"), med(case, "base", a, "e2e_total_ms"))
            rb = ratio(med(case, "dedup", a, "wan_ab_bytes"), med(case, "base", a, "wan_ab_bytes"))
            out.append(f"{a} with dedup ÷ {a} with it off: e2e {f(r, '%.3f')}, WAN bytes {f(rb, '%.3f')}")
    elif case == "running":
        out.append(f"### running: the running guest ({runs[case]} runs)")
        out.append("")
        out.append("| dedup | WAN MiB | e2e total s | downtime ms | converged | verified |")
        out.append("|---|---:|---:|---:|---|---|")
        for s in sides:
            rs = [r for r in rows if r["case"] == case and r["side"] == s]
            out.append(f"| {label(case, s)} | {f(med(case, s, 'migrate', 'wan_ab_bytes'), scale=MiB)} | "
                       f"{f(med(case, s, 'migrate', 'e2e_total_ms'), '%.2f', S)} | "
                       f"{f(med(case, s, 'migrate', 'e2e_downtime_ms'), '%.0f')} | "
                       f"{sum(r['converged'] == '1' for r in rs)}/{len(rs)} | {ok(case, s)} |")
        if len(sides) == 2:
            out.append("")
            out.append("dedup ÷ off: WAN bytes %s, e2e %s" % (
                f(ratio(med(case, "dedup", "migrate", "wan_ab_bytes"), med(case, "base", "migrate", "wan_ab_bytes")), "%.3f"),
                f(ratio(med(case, "dedup", "migrate", "e2e_total_ms"), med(case, "base", "migrate", "e2e_total_ms")), "%.3f")))
    elif case == "random":
        out.append(f"### random: first-seen random data, one lmas-load stream ({runs[case]} runs)")
        out.append("")
        out.append("| dedup | goodput Mbit/s | WAN ÷ stream bytes | completed |")
        out.append("|---|---:|---:|---|")
        for s in sides:
            rs = [r for r in rows if r["case"] == case and r["side"] == s]
            wr = [num(r["wan_ab_bytes"]) / num(r["stream_bytes"]) for r in rs
                  if num(r["wan_ab_bytes"]) is not None and num(r["stream_bytes"])]
            out.append(f"| {label(case, s)} | {f(med(case, s, 'transfer', 'goodput_mbit'))} | "
                       f"{f(statistics.median(wr) if wr else None, '%.3f')} | {ok(case, s)} |")
        if len(sides) == 2:
            out.append("")
            out.append("goodput dedup ÷ off: %s" % f(ratio(med(case, "dedup", "transfer", "goodput_mbit"),
                                                         med(case, "base", "transfer", "goodput_mbit")), "%.3f"))
    # The gateways' own dedup figures, where they report them.
    # (none when the status has no dedup figures, or they stayed 0: dedup off on both sides)
    ds = [r for r in rows if r["case"] == case and r["dedup_bytes_in"] not in ("", "na")]
    if any(num(r["dedup_bytes_in"]) or num(r["store_bytes"]) for r in ds):
        out.append("")
        out.append("gateways' dedup figures (medians): gw-a fingerprinted / sent as references / hit rate; gw-b store")
        for s in sides:
            for step in dict.fromkeys(r["step"] for r in ds if r["side"] == s):
                if not (med(case, s, step, "dedup_bytes_in") or med(case, s, step, "store_bytes")):
                    continue
                out.append(f"- {label(case, s)} {step}: {f(med(case, s, step, 'dedup_bytes_in'), scale=MiB)} MiB / "
                           f"{f(med(case, s, step, 'dedup_ref_bytes'), scale=MiB)} MiB / "
                           f"{f(med(case, s, step, 'dedup_hit_rate'), '%.3f')}; store "
                           f"{f(med(case, s, step, 'store_bytes'), scale=MiB)} MiB in "
                           f"{f(med(case, s, step, 'store_chunks'), '%.0f')} chunks, "
                           f"{f(med(case, s, step, 'store_evictions'), '%.0f')} evicted")
open(sys.argv[2], "w").write("\n".join(out) + "\n")
print("\n".join(out))
EOF
log "results: $OUT/{runs.csv,tables.md,bench.log}"
((BAD == 0)) || die "$BAD runs failed or did not verify (see $LOG)"

#!/usr/bin/env bash
# bench-loopback.sh: goodput of one TCP stream on loopback, direct vs through an lmas gateway
# pair with data_flows N = 1, 4, 8, in one run, interleaved, RUNS times each; prints a markdown
# table of medians, ratios to the direct median, and the gateways' peak RSS.
set -euo pipefail
set -E # the ERR trap also reports failures inside functions

usage() {
    cat <<'EOF'
Usage: scripts/bench-loopback.sh [--no-build] [--keep] [--help]

Measures the goodput of one stream (lmas-load source -> lmas-load sink) on 127.0.0.1:
  direct      source -> sink
  flows=N     source -> gateway A -> N encrypted data flows -> gateway B -> sink, N in FLOWS
Each round runs every configuration once (the order rotates between rounds); RUNS rounds.
Every configuration gets a fresh gateway pair per round; the peak RSS (VmHWM) of each gateway is
read from /proc just before it is stopped. Every transfer's SHA-256 is checked at the sink.

Options:
  --no-build   do not run `cargo build --release -p lmas -p lmas-tests`; use existing binaries
  --keep       keep the working directory (configs, logs, raw results)
  -h, --help   show this help

Environment:
  RUNS              rounds (default 5)
  BYTES             bytes per transfer (default 1073741824 = 1 GiB; suffixes K M G allowed)
  FLOWS             data_flows values to measure (default "1 4 8")
  COMPRESSION       [wan] compression modes to measure at each data_flows value (default "auto";
                    e.g. "auto off")
  CARGO_TARGET_DIR  where cargo puts the binaries (default: <repo>/target)
  LMAS_BIN          the lmas binary (default: $CARGO_TARGET_DIR/release/lmas)
  LMAS_LOAD_BIN     the lmas-load binary (default: $CARGO_TARGET_DIR/release/lmas-load)
  RUST_LOG          gateway log level (default: info)

Output: progress on stderr; the markdown table on stdout. Exit status 1 if any transfer fails
or arrives corrupted. On this 2-core machine source, sink and both gateways share the cores:
the numbers measure the gateways' CPU cost, compare them only within one run.
EOF
}

PROG=bench-loopback.sh
DIE_TAG="error: "
# shellcheck source-path=SCRIPTDIR source=lib/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib/common.sh"
# shellcheck source-path=SCRIPTDIR source=lib/pair.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib/pair.sh"

parse_pair_args "$@"

RUNS=${RUNS:-5}
BYTES=${BYTES:-1073741824}
FLOWS=${FLOWS:-1 4 8}
COMPRESSION=${COMPRESSION:-auto}
for m in $COMPRESSION; do
    [[ $m =~ ^(auto|off|lz4|zstd(:-?[0-9]+)?)$ ]] ||
        die "COMPRESSION must list auto, off, lz4, zstd or zstd:LEVEL (got '$COMPRESSION')"
done
export RUST_LOG=${RUST_LOG:-info}

if ! [[ $RUNS =~ ^[0-9]+$ ]] || ((RUNS < 1)); then
    die "RUNS must be a positive integer (got '$RUNS')"
fi
[[ $BYTES =~ ^[0-9]+([KMGT](i?B)?)?$ ]] ||
    die "BYTES must be a byte count such as 1073741824 or 512M (got '$BYTES')"
for n in $FLOWS; do
    if ! [[ $n =~ ^[0-9]+$ ]] || ((n < 1 || n > 64)); then
        die "FLOWS must list data_flows values between 1 and 64 (got '$FLOWS')"
    fi
done
[[ -n ${FLOWS// /} ]] || die "FLOWS is empty"

find_pair_bins

WORK=$(mktemp -d "${TMPDIR:-/tmp}/lmas-bench.XXXXXX")
RES=$WORK/results
mkdir -p "$RES"
PIDS=()
LOG_DIR=""  # directory of the current pair, for failure messages
pair_traps

# cpu_ticks PID: user + system CPU of PID so far, in clock ticks.
cpu_ticks() { awk '{ print $14 + $15 }' "/proc/$1/stat" 2>/dev/null || echo NA; }
CLK_TCK=$(getconf CLK_TCK)
# BYTES as a number (K M G T: binary).
BYTE_COUNT=$(awk -v b="$BYTES" 'BEGIN { n = b + 0; u = substr(b, length(n "") + 1, 1)
    m = (u == "K") ? 1024 : (u == "M") ? 1048576 : (u == "G") ? 1073741824 : (u == "T") ? 1099511627776 : 1
    printf "%.0f", n * m }')

# vm_hwm_kib PID: the peak RSS of PID in KiB (NA when unknown).
vm_hwm_kib() {
    awk '/^VmHWM:/ { print $2; found = 1 } END { if (!found) print "NA" }' "/proc/$1/status" 2>/dev/null || echo NA
}

# transfer NAME ADDR SINKPORT ROUND: one transfer of BYTES (seed ROUND); appends Mbit/s to $RES/NAME.mbit.
transfer() {
    local name=$1 addr=$2 sink_port=$3 tag=$4 src sink out
    out=$WORK/xfer-$name-$tag
    mkdir -p "$out"
    load_transfer "$name" "$addr" "$sink_port" "$BYTES" "$tag" "$out/sink" "$out/source"
    src=$SRC_LINE
    sink=$SINK_LINE
    if [[ -z $src || -z $sink || $(field sha256 "$src") != "$(field sha256 "$sink")" || $(field bytes "$src") != "$(field bytes "$sink")" ]]; then
        fail "$name: the sink's SHA-256/bytes differ from the source's: source '$src', sink '$sink'"
    fi
    field mbit_s "$src" >>"$RES/$name.mbit"
    LAST_RATE=$(field mbit_s "$src")
}

KEY_DIR=$WORK/keys
mkdir -p "$KEY_DIR"
pair_keygen "$KEY_DIR"

# run_pair N MODE ROUND: starts a pair with data_flows N and compression MODE, sends BYTES
# through it, records goodput and both gateways' VmHWM, stops the pair.
run_pair() {
    local n=$1 mode=$2 round=$3 dir ports sink_port tunnel_port ingress_port a_pid b_pid name
    name=flows$n-${mode//:/_}
    dir=$WORK/$name-round$round
    mkdir -p "$dir"
    LOG_DIR=$dir
    ports=$("$LOAD" free-ports 3) || die "lmas-load free-ports failed"
    read -r sink_port tunnel_port ingress_port <<<"${ports//$'\n'/ }"
    write_pair_configs "$dir" "$KEY_DIR/gw-a.key" "$KEY_DIR/gw-b.key" "127.0.0.1:$tunnel_port" \
        "127.0.0.1:$ingress_port" "127.0.0.1:$sink_port" "$n" "" "" "compression = \"$mode\""
    start_pair "$dir" "$tunnel_port" "$ingress_port"
    a_pid=$A_PID
    b_pid=$B_PID
    transfer "$name" "127.0.0.1:$ingress_port" "$sink_port" "$round"
    if ! kill -0 "$a_pid" 2>/dev/null || ! kill -0 "$b_pid" 2>/dev/null; then
        fail "flows=$n compression=$mode: a gateway exited during the transfer"
    fi
    vm_hwm_kib "$a_pid" >>"$RES/$name.rss_a"
    vm_hwm_kib "$b_pid" >>"$RES/$name.rss_b"
    # Both gateways' CPU seconds per GB (10^9 bytes) carried, start-up included.
    awk -v a="$(cpu_ticks "$a_pid")" -v b="$(cpu_ticks "$b_pid")" -v hz="$CLK_TCK" -v n="$BYTE_COUNT" \
        'BEGIN { printf "%.2f\n", (a + b) / hz / (n / 1e9) }' >>"$RES/$name.cpu"
    stop_pid "$a_pid"
    stop_pid "$b_pid"
    forget_pid "$a_pid"
    forget_pid "$b_pid"
    LOG_DIR=""
}

CONFIGS=(direct)
for n in $FLOWS; do for m in $COMPRESSION; do CONFIGS+=("$n@$m"); done; done
NCONF=${#CONFIGS[@]}

echo "==> $RUNS rounds of: ${CONFIGS[*]} (data_flows), $BYTES bytes each; work dir $WORK" >&2
for ((round = 1; round <= RUNS; round++)); do
    for ((k = 0; k < NCONF; k++)); do
        c=${CONFIGS[(k + round - 1) % NCONF]}
        if [[ $c == direct ]]; then
            port=$("$LOAD" free-ports 1)
            transfer direct "127.0.0.1:$port" "$port" "$round"
        else
            run_pair "${c%@*}" "${c#*@}" "$round"
        fi
        printf '    round %d/%d  %-8s %10s Mbit/s\n' "$round" "$RUNS" "$c" "$LAST_RATE" >&2
    done
done

median() {
    sort -g "$1" | awk '{ v[NR] = $1 } END { if (NR == 0) { print "NA"; exit }
        if (NR % 2) print v[(NR + 1) / 2]; else printf "%.1f\n", (v[NR / 2] + v[NR / 2 + 1]) / 2 }'
}
# max_mib FILE: the largest KiB value in FILE, in MiB.
max_mib() {
    awk '$1 != "NA" { if ($1 > m) m = $1; f = 1 } END { if (f) printf "%.1f", m / 1024; else print "NA" }' "$1"
}

DIRECT=$(median "$RES/direct.mbit")
echo
echo "One stream on loopback, $BYTES bytes per transfer, median of $RUNS runs (SHA-256 checked every run)."
echo "$(nproc) cores shared by source, sink and both gateways; $(uname -r)."
echo
echo "| path | data_flows | compression | median Mbit/s | ratio to direct | gateways' CPU s/GB | peak RSS gw-a (MiB) | peak RSS gw-b (MiB) | runs (Mbit/s) |"
echo "|---|---:|---|---:|---:|---:|---:|---:|---|"
echo "| direct | - | - | $DIRECT | 1.00 | - | - | - | $(paste -sd' ' "$RES/direct.mbit") |"
for n in $FLOWS; do
    for m in $COMPRESSION; do
        name=flows$n-${m//:/_}
        med=$(median "$RES/$name.mbit")
        ratio=$(awk -v m="$med" -v d="$DIRECT" 'BEGIN { if (d > 0) printf "%.2f", m / d; else print "NA" }')
        echo "| gateways | $n | $m | $med | $ratio | $(median "$RES/$name.cpu") | $(max_mib "$RES/$name.rss_a") | $(max_mib "$RES/$name.rss_b") | $(paste -sd' ' "$RES/$name.mbit") |"
    done
done
echo
echo "Peak RSS: the largest VmHWM over the runs, read just before each gateway was stopped."
echo "CPU s/GB: gw-a's and gw-b's user + system CPU over their life (median of runs) per 10^9 bytes carried."

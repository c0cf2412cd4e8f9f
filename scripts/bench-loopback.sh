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
  CARGO_TARGET_DIR  where cargo puts the binaries (default: <repo>/target)
  LMAS_BIN          the lmas binary (default: $CARGO_TARGET_DIR/release/lmas)
  LMAS_LOAD_BIN     the lmas-load binary (default: $CARGO_TARGET_DIR/release/lmas-load)
  RUST_LOG          gateway log level (default: info)

Output: progress on stderr; the markdown table on stdout. Exit status 1 if any transfer fails
or arrives corrupted. On this 2-core machine source, sink and both gateways share the cores:
the numbers measure the gateways' CPU cost, compare them only within one run.
EOF
}

die() {
    echo "bench-loopback.sh: error: $*" >&2
    exit 1
}

BUILD=1
KEEP=0
for arg in "$@"; do
    case "$arg" in
        -h | --help) usage; exit 0 ;;
        --no-build) BUILD=0 ;;
        --keep) KEEP=1 ;;
        *) echo "bench-loopback.sh: error: unknown argument: $arg" >&2; usage >&2; exit 2 ;;
    esac
done

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
TARGET_DIR=${CARGO_TARGET_DIR:-$REPO/target}
RUNS=${RUNS:-5}
BYTES=${BYTES:-1073741824}
FLOWS=${FLOWS:-1 4 8}
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

if ((BUILD)); then
    command -v cargo >/dev/null || die "cargo not found; install Rust or use --no-build with LMAS_BIN/LMAS_LOAD_BIN"
    echo "==> building (cargo build --release -p lmas -p lmas-tests)" >&2
    (cd "$REPO" && cargo build --release -p lmas -p lmas-tests) ||
        die "the build failed (see above)"
fi
LMAS=${LMAS_BIN:-$TARGET_DIR/release/lmas}
LOAD=${LMAS_LOAD_BIN:-$TARGET_DIR/release/lmas-load}
[[ -x $LMAS ]] || die "no lmas binary at $LMAS: run 'cargo build --release -p lmas' (or set LMAS_BIN)"
[[ -x $LOAD ]] || die "no lmas-load binary at $LOAD: run 'cargo build --release -p lmas-tests' (or set LMAS_LOAD_BIN)"

WORK=$(mktemp -d "${TMPDIR:-/tmp}/lmas-bench.XXXXXX")
RES=$WORK/results
mkdir -p "$RES"
PIDS=()

stop_pid() {
    local pid=$1 i
    kill -TERM "$pid" 2>/dev/null || return 0
    for ((i = 0; i < 50; i++)); do
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.1
    done
    kill -KILL "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
}
cleanup() {
    local pid
    for pid in "${PIDS[@]}"; do stop_pid "$pid"; done
    if ((KEEP)); then
        echo "kept $WORK" >&2
    else
        rm -rf "$WORK"
    fi
}
trap cleanup EXIT
trap 'echo "bench-loopback.sh: error: command failed (exit $?) at line $LINENO: $BASH_COMMAND" >&2' ERR
trap 'exit 130' INT
trap 'exit 143' TERM

CUR=""  # directory of the current pair, for failure messages
fail() {
    local f
    echo "bench-loopback.sh: error: $*" >&2
    if [[ -n $CUR ]]; then
        for f in "$CUR"/gw-a.log "$CUR"/gw-b.log; do
            [[ -f $f ]] || continue
            echo "--- last lines of $f:" >&2
            tail -n 20 "$f" >&2
        done
    fi
    exit 1
}

wait_log() {
    local file=$1 text=$2 secs=$3 pid=$4 i
    for ((i = 0; i < secs * 10; i++)); do
        grep -qF -- "$text" "$file" 2>/dev/null && return 0
        kill -0 "$pid" 2>/dev/null || {
            grep -qF -- "$text" "$file" 2>/dev/null && return 0
            fail "process $pid exited before logging '$text' in $file"
        }
        sleep 0.1
    done
    fail "no '$text' in $file after ${secs}s"
}

wait_listen() {
    local hex i
    hex=$(printf ':%04X' "$1")
    for ((i = 0; i < $2 * 10; i++)); do
        awk -v p="$hex" 'NR > 1 && $4 == "0A" && substr($2, length($2) - 4) == p { f = 1 } END { exit !f }' \
            /proc/net/tcp /proc/net/tcp6 2>/dev/null && return 0
        sleep 0.1
    done
    fail "nothing listens on port $1 after ${2}s"
}

field() {
    sed -n "s/.*\\b$1=\\([^ ]*\\).*/\\1/p" <<<"$2"
}

# Removes a pid from PIDS after it was stopped.
forget_pid() {
    local p keep=()
    for p in "${PIDS[@]}"; do [[ $p == "$1" ]] || keep+=("$p"); done
    PIDS=("${keep[@]}")
}

vm_hwm_kib() {
    awk '/^VmHWM:/ { print $2; found = 1 } END { if (!found) print "NA" }' "/proc/$1/status" 2>/dev/null || echo NA
}

# transfer NAME ADDR SINKPORT: one transfer of BYTES; appends Mbit/s to $RES/NAME.mbit.
transfer() {
    local name=$1 addr=$2 sink_port=$3 tag=$4 sink_pid src_pid i src sink out
    out=$WORK/xfer-$name-$tag
    mkdir -p "$out"
    "$LOAD" sink --listen "127.0.0.1:$sink_port" --count 1 >"$out/sink.out" 2>"$out/sink.err" &
    sink_pid=$!
    PIDS+=("$sink_pid")
    wait_log "$out/sink.err" "listening on" 10 "$sink_pid"
    # In the background so that a signal interrupts `wait` and the trap cleans up at once.
    "$LOAD" source --connect "$addr" --bytes "$BYTES" --seed "$tag" >"$out/source.out" 2>"$out/source.err" &
    src_pid=$!
    PIDS+=("$src_pid")
    wait "$src_pid" || fail "$name: the source failed: $(cat "$out/source.err")"
    forget_pid "$src_pid"
    for ((i = 0; i < 300; i++)); do
        kill -0 "$sink_pid" 2>/dev/null || break
        sleep 0.1
    done
    kill -0 "$sink_pid" 2>/dev/null && fail "$name: the sink did not finish 30 s after the source"
    wait "$sink_pid" || fail "$name: the sink failed: $(cat "$out/sink.err")"
    forget_pid "$sink_pid"
    src=$(cat "$out/source.out")
    sink=$(cat "$out/sink.out")
    if [[ -z $src || -z $sink || $(field sha256 "$src") != "$(field sha256 "$sink")" || $(field bytes "$src") != "$(field bytes "$sink")" ]]; then
        fail "$name: the sink's SHA-256/bytes differ from the source's: source '$src', sink '$sink'"
    fi
    field mbit_s "$src" >>"$RES/$name.mbit"
    LAST_RATE=$(field mbit_s "$src")
}

KEY_DIR=$WORK/keys
mkdir -p "$KEY_DIR"
"$LMAS" keygen --out "$KEY_DIR/gw-a.key" >/dev/null || die "lmas keygen failed"
"$LMAS" keygen --out "$KEY_DIR/gw-b.key" >/dev/null || die "lmas keygen failed"
PUB_A=$(tr -d '\n' <"$KEY_DIR/gw-a.key.pub")
PUB_B=$(tr -d '\n' <"$KEY_DIR/gw-b.key.pub")

# run_pair N ROUND: starts a pair with data_flows N, sends BYTES through it, records goodput
# and both gateways' VmHWM, stops the pair.
run_pair() {
    local n=$1 round=$2 dir ports sink_port tunnel_port ingress_port a_pid b_pid
    dir=$WORK/flows$n-round$round
    mkdir -p "$dir"
    CUR=$dir
    ports=$("$LOAD" free-ports 3) || die "lmas-load free-ports failed"
    read -r sink_port tunnel_port ingress_port <<<"${ports//$'\n'/ }"
    cat >"$dir/gw-a.toml" <<EOF
[gateway]
name = "gw-a"
private_key_file = "$KEY_DIR/gw-a.key"

[peer]
name = "gw-b"
public_key = "$PUB_B"
connect = "127.0.0.1:$tunnel_port"

[wan]
data_flows = $n

[[ingress]]
mode = "listen"
bind = "127.0.0.1:$ingress_port"
target = "127.0.0.1:$sink_port"
EOF
    cat >"$dir/gw-b.toml" <<EOF
[gateway]
name = "gw-b"
private_key_file = "$KEY_DIR/gw-b.key"
tunnel_listen = "127.0.0.1:$tunnel_port"

[peer]
name = "gw-a"
public_key = "$PUB_A"

[wan]
data_flows = $n

[egress]
allow = ["127.0.0.1:$sink_port"]
EOF
    "$LMAS" run --config "$dir/gw-b.toml" 2>"$dir/gw-b.log" &
    b_pid=$!
    PIDS+=("$b_pid")
    wait_listen "$tunnel_port" 20
    "$LMAS" run --config "$dir/gw-a.toml" 2>"$dir/gw-a.log" &
    a_pid=$!
    PIDS+=("$a_pid")
    wait_log "$dir/gw-a.log" "tunnel up: peer gw-b" 20 "$a_pid"
    wait_log "$dir/gw-b.log" "tunnel up: peer gw-a" 20 "$b_pid"
    wait_log "$dir/gw-a.log" "listening on 127.0.0.1:$ingress_port" 20 "$a_pid"
    transfer "flows$n" "127.0.0.1:$ingress_port" "$sink_port" "$round"
    if ! kill -0 "$a_pid" 2>/dev/null || ! kill -0 "$b_pid" 2>/dev/null; then
        fail "flows=$n: a gateway exited during the transfer"
    fi
    vm_hwm_kib "$a_pid" >>"$RES/flows$n.rss_a"
    vm_hwm_kib "$b_pid" >>"$RES/flows$n.rss_b"
    stop_pid "$a_pid"
    stop_pid "$b_pid"
    forget_pid "$a_pid"
    forget_pid "$b_pid"
    CUR=""
}

CONFIGS=(direct)
for n in $FLOWS; do CONFIGS+=("$n"); done
NCONF=${#CONFIGS[@]}

echo "==> $RUNS rounds of: ${CONFIGS[*]} (data_flows), $BYTES bytes each; work dir $WORK" >&2
for ((round = 1; round <= RUNS; round++)); do
    for ((k = 0; k < NCONF; k++)); do
        c=${CONFIGS[(k + round - 1) % NCONF]}
        if [[ $c == direct ]]; then
            port=$("$LOAD" free-ports 1)
            transfer direct "127.0.0.1:$port" "$port" "$round"
        else
            run_pair "$c" "$round"
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
echo "| path | data_flows | median Mbit/s | ratio to direct | peak RSS gw-a (MiB) | peak RSS gw-b (MiB) | runs (Mbit/s) |"
echo "|---|---:|---:|---:|---:|---:|---|"
echo "| direct | - | $DIRECT | 1.00 | - | - | $(paste -sd' ' "$RES/direct.mbit") |"
for n in $FLOWS; do
    med=$(median "$RES/flows$n.mbit")
    ratio=$(awk -v m="$med" -v d="$DIRECT" 'BEGIN { if (d > 0) printf "%.2f", m / d; else print "NA" }')
    echo "| gateways | $n | $med | $ratio | $(max_mib "$RES/flows$n.rss_a") | $(max_mib "$RES/flows$n.rss_b") | $(paste -sd' ' "$RES/flows$n.mbit") |"
done
echo
echo "Peak RSS: the largest VmHWM over the runs, read just before each gateway was stopped."

# shellcheck shell=bash
# pair.sh: an lmas gateway pair (A dials B) and lmas-load transfers through it, for demo.sh and
# bench-loopback.sh on 127.0.0.1 (lab.sh uses write_pair_configs only). Source common.sh first.
# Only defines functions. They use these globals of the sourcing script:
#   BUILD, KEEP        set by parse_pair_args
#   LMAS, LOAD         the binaries, set by find_pair_bins
#   WORK               the temporary directory (removed by cleanup_pids unless KEEP)
#   PIDS               the processes to stop on exit
#   LOG_DIR            where gw-a.log and gw-b.log are (show_logs); empty: none to show

# parse_pair_args ARGS...: handles --no-build, --keep and --help (calls the script's usage).
parse_pair_args() {
    local arg
    BUILD=1
    KEEP=0
    for arg in "$@"; do
        case "$arg" in
            -h | --help) usage; exit 0 ;;
            --no-build) BUILD=0 ;;
            --keep) KEEP=1 ;;
            *) log "error: unknown argument: $arg"; usage >&2; exit 2 ;;
        esac
    done
}

# find_pair_bins: builds lmas and lmas-load unless --no-build; sets LMAS and LOAD.
find_pair_bins() {
    local repo target
    repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
    target=${CARGO_TARGET_DIR:-$repo/target}
    if ((BUILD)); then
        command -v cargo >/dev/null || die "cargo not found; install Rust or use --no-build with LMAS_BIN/LMAS_LOAD_BIN"
        echo "==> building (cargo build --release -p lmas -p lmas-tests)" >&2
        (cd "$repo" && cargo build --release -p lmas -p lmas-tests) ||
            die "the build failed (see above)"
    fi
    LMAS=${LMAS_BIN:-$target/release/lmas}
    LOAD=${LMAS_LOAD_BIN:-$target/release/lmas-load}
    [[ -x $LMAS ]] || die "no lmas binary at $LMAS: run 'cargo build --release -p lmas' (or set LMAS_BIN)"
    [[ -x $LOAD ]] || die "no lmas-load binary at $LOAD: run 'cargo build --release -p lmas-tests' (or set LMAS_LOAD_BIN)"
}

# cleanup_pids: the EXIT trap: stops PIDS, removes WORK (or says where it is kept).
# shellcheck disable=SC2317  # called from the EXIT trap
cleanup_pids() {
    local pid
    for pid in "${PIDS[@]}"; do stop_pid "$pid"; done
    if ((KEEP)); then
        echo "kept $WORK" >&2
    else
        rm -rf "$WORK"
    fi
}

# pair_traps: cleanup_pids on exit, a message on a failed command, exit 130/143 on INT/TERM.
pair_traps() {
    trap cleanup_pids EXIT
    trap 'log "error: command failed (exit $?) at line $LINENO: $BASH_COMMAND"' ERR
    trap 'exit 130' INT
    trap 'exit 143' TERM
}

# show_logs: the last lines of each gateway log in LOG_DIR, for failures.
show_logs() {
    local f
    [[ -n $LOG_DIR ]] || return 0
    for f in "$LOG_DIR"/gw-a.log "$LOG_DIR"/gw-b.log; do
        [[ -f $f ]] || continue
        echo "--- last lines of $f:" >&2
        tail -n 20 "$f" >&2
    done
}

# fail MSG...: prints "PROG: error: MSG" and the gateway logs, exits 1.
fail() {
    log "error: $*"
    show_logs
    exit 1
}

# wait_log FILE TEXT SECONDS PID: waits for TEXT in FILE while PID lives.
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

# wait_listen PORT SECONDS: waits until something listens on 127.0.0.1:PORT (from /proc).
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

# forget_pid PID: drops a finished process from the cleanup list.
forget_pid() {
    local p keep=()
    for p in "${PIDS[@]}"; do [[ $p == "$1" ]] || keep+=("$p"); done
    PIDS=("${keep[@]}")
}

# load_transfer NAME ADDR SINKPORT BYTES SEED SINKBASE SRCBASE: one lmas-load transfer of BYTES
# to ADDR while a sink listens on 127.0.0.1:SINKPORT; output in SINKBASE.out/.err and
# SRCBASE.out/.err; sets SRC_LINE and SINK_LINE (the result lines, maybe empty).
load_transfer() {
    local name=$1 addr=$2 sink_port=$3 bytes=$4 seed=$5 sink=$6 src=$7 sink_pid src_pid i
    "$LOAD" sink --listen "127.0.0.1:$sink_port" --count 1 >"$sink.out" 2>"$sink.err" &
    sink_pid=$!
    PIDS+=("$sink_pid")
    wait_log "$sink.err" "listening on" 10 "$sink_pid"
    # In the background so that a signal interrupts `wait` and the trap cleans up at once.
    "$LOAD" source --connect "$addr" --bytes "$bytes" --seed "$seed" >"$src.out" 2>"$src.err" &
    src_pid=$!
    PIDS+=("$src_pid")
    wait "$src_pid" || fail "$name: the source failed: $(cat "$src.err")"
    forget_pid "$src_pid"
    for ((i = 0; i < 300; i++)); do
        kill -0 "$sink_pid" 2>/dev/null || break
        sleep 0.1
    done
    kill -0 "$sink_pid" 2>/dev/null && fail "$name: the sink did not finish 30 s after the source"
    wait "$sink_pid" || fail "$name: the sink failed: $(cat "$sink.err")"
    forget_pid "$sink_pid"
    # shellcheck disable=SC2034  # results for the caller
    SRC_LINE=$(cat "$src.out")
    # shellcheck disable=SC2034
    SINK_LINE=$(cat "$sink.out")
}

# pair_keygen DIR: new keys DIR/gw-a.key and DIR/gw-b.key (and their .pub).
pair_keygen() {
    "$LMAS" keygen --out "$1/gw-a.key" >/dev/null || die "lmas keygen failed"
    "$LMAS" keygen --out "$1/gw-b.key" >/dev/null || die "lmas keygen failed"
}

# write_pair_configs DIR KEY_A KEY_B TUNNEL INGRESS TARGET FLOWS HEAD_A HEAD_B [WAN_LINE]:
# writes DIR/gw-a.toml (dials B at TUNNEL; listen ingress INGRESS -> TARGET) and DIR/gw-b.toml
# (accepts on TUNNEL; allows TARGET). KEY_* are the private key paths as written (relative to
# DIR or absolute; KEY.pub next to them); HEAD_* a first comment line (empty: none); WAN_LINE,
# when given (even empty), is a line after data_flows.
write_pair_configs() {
    local dir=$1 key_a=$2 key_b=$3 tunnel=$4 ingress=$5 target=$6 flows=$7 head_a=$8 head_b=$9
    local wan="" pub_a pub_b
    if (($# >= 10)); then wan=${10}$'\n'; fi
    if [[ -n $head_a ]]; then head_a+=$'\n'; fi
    if [[ -n $head_b ]]; then head_b+=$'\n'; fi
    pub_a=$(cd "$dir" && tr -d '\n' <"$key_a.pub")
    pub_b=$(cd "$dir" && tr -d '\n' <"$key_b.pub")
    cat >"$dir/gw-a.toml" <<EOF
${head_a}[gateway]
name = "gw-a"
private_key_file = "$key_a"

[peer]
name = "gw-b"
public_key = "$pub_b"
connect = "$tunnel"

[wan]
data_flows = $flows
${wan}
[[ingress]]
mode = "listen"
bind = "$ingress"
target = "$target"
EOF
    cat >"$dir/gw-b.toml" <<EOF
${head_b}[gateway]
name = "gw-b"
private_key_file = "$key_b"
tunnel_listen = "$tunnel"

[peer]
name = "gw-a"
public_key = "$pub_a"

[wan]
data_flows = $flows
${wan}
[egress]
allow = ["$target"]
EOF
}

# start_pair DIR TUNNEL_PORT INGRESS_PORT: runs gateway B, then A, with DIR/gw-*.toml on
# 127.0.0.1 (logs DIR/gw-*.log); waits for the tunnel and A's ingress; sets A_PID and B_PID.
start_pair() {
    local dir=$1 tunnel_port=$2 ingress_port=$3
    "$LMAS" run --config "$dir/gw-b.toml" 2>"$dir/gw-b.log" &
    B_PID=$!
    PIDS+=("$B_PID")
    wait_listen "$tunnel_port" 20
    "$LMAS" run --config "$dir/gw-a.toml" 2>"$dir/gw-a.log" &
    A_PID=$!
    PIDS+=("$A_PID")
    wait_log "$dir/gw-a.log" "tunnel up: peer gw-b" 20 "$A_PID"
    wait_log "$dir/gw-b.log" "tunnel up: peer gw-a" 20 "$B_PID"
    wait_log "$dir/gw-a.log" "listening on 127.0.0.1:$ingress_port" 20 "$A_PID"
}

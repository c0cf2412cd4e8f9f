#!/usr/bin/env bash
# demo.sh: see two lmas gateways carry one TCP stream on this machine, and what they cost.
#
# Builds the release binaries, makes keys and configs in a temporary directory, starts gateway
# A (dials) and gateway B (accepts) on 127.0.0.1, then sends DEMO_BYTES of pseudo-random data
# to a sink twice: directly, and through A -> encrypted tunnel -> B. Prints the goodput of both,
# their ratio, and checks that the sink's SHA-256 equals the source's.
set -euo pipefail
set -E # the ERR trap also reports failures inside functions

usage() {
    cat <<'EOF'
Usage: scripts/demo.sh [--no-build] [--keep] [--help]

Runs the lmas gateway pair on loopback and compares one stream sent directly to a sink with
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

die() {
    echo "demo.sh: error: $*" >&2
    exit 1
}

BUILD=1
KEEP=0
for arg in "$@"; do
    case "$arg" in
        -h | --help) usage; exit 0 ;;
        --no-build) BUILD=0 ;;
        --keep) KEEP=1 ;;
        *) echo "demo.sh: error: unknown argument: $arg" >&2; usage >&2; exit 2 ;;
    esac
done

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
TARGET_DIR=${CARGO_TARGET_DIR:-$REPO/target}
DEMO_BYTES=${DEMO_BYTES:-1073741824}
DATA_FLOWS=${DATA_FLOWS:-8}
export RUST_LOG=${RUST_LOG:-info}

[[ $DEMO_BYTES =~ ^[0-9]+([KMGT](i?B)?)?$ ]] ||
    die "DEMO_BYTES must be a byte count such as 1073741824 or 512M (got '$DEMO_BYTES')"
if ! [[ $DATA_FLOWS =~ ^[0-9]+$ ]] || ((DATA_FLOWS < 1 || DATA_FLOWS > 64)); then
    die "DATA_FLOWS must be between 1 and 64 (got '$DATA_FLOWS')"
fi

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

WORK=$(mktemp -d "${TMPDIR:-/tmp}/lmas-demo.XXXXXX")
PIDS=()

# Stops what we started (SIGTERM, then SIGKILL after 5 s).
# shellcheck disable=SC2317  # called from the EXIT trap
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
# shellcheck disable=SC2317  # the EXIT trap
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
trap 'echo "demo.sh: error: command failed (exit $?) at line $LINENO: $BASH_COMMAND" >&2' ERR
trap 'exit 130' INT
trap 'exit 143' TERM

# show_logs: the last lines of each gateway log, for failures.
show_logs() {
    local f
    for f in "$WORK"/gw-a.log "$WORK"/gw-b.log; do
        [[ -f $f ]] || continue
        echo "--- last lines of $f:" >&2
        tail -n 20 "$f" >&2
    done
}
fail() {
    echo "demo.sh: error: $*" >&2
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

# field NAME LINE: the value of NAME=... in LINE.
field() {
    sed -n "s/.*\\b$1=\\([^ ]*\\).*/\\1/p" <<<"$2"
}

# transfer NAME ADDR SINKPORT: sends DEMO_BYTES to ADDR while a sink listens on SINKPORT;
# sets SRC_LINE and SINK_LINE.
transfer() {
    local name=$1 addr=$2 sink_port=$3 sink_pid src_pid i
    "$LOAD" sink --listen "127.0.0.1:$sink_port" --count 1 >"$WORK/sink-$name.out" 2>"$WORK/sink-$name.err" &
    sink_pid=$!
    PIDS+=("$sink_pid")
    wait_log "$WORK/sink-$name.err" "listening on" 10 "$sink_pid"
    # In the background so that a signal interrupts `wait` and the trap cleans up at once.
    "$LOAD" source --connect "$addr" --bytes "$DEMO_BYTES" --seed 42 >"$WORK/source-$name.out" 2>"$WORK/source-$name.err" &
    src_pid=$!
    PIDS+=("$src_pid")
    wait "$src_pid" || fail "$name: the source failed: $(cat "$WORK/source-$name.err")"
    forget_pid "$src_pid"
    for ((i = 0; i < 300; i++)); do
        kill -0 "$sink_pid" 2>/dev/null || break
        sleep 0.1
    done
    kill -0 "$sink_pid" 2>/dev/null && fail "$name: the sink did not finish 30 s after the source"
    wait "$sink_pid" || fail "$name: the sink failed: $(cat "$WORK/sink-$name.err")"
    forget_pid "$sink_pid"
    SRC_LINE=$(cat "$WORK/source-$name.out")
    SINK_LINE=$(cat "$WORK/sink-$name.out")
    [[ -n $SRC_LINE && -n $SINK_LINE ]] || fail "$name: no result line from the source or the sink"
}

PORTS=$("$LOAD" free-ports 3) || die "lmas-load free-ports failed"
read -r SINK_PORT TUNNEL_PORT INGRESS_PORT <<<"${PORTS//$'\n'/ }"

echo "==> keys and configs in $WORK" >&2
"$LMAS" keygen --out "$WORK/gw-a.key" >/dev/null || die "lmas keygen failed"
"$LMAS" keygen --out "$WORK/gw-b.key" >/dev/null || die "lmas keygen failed"
PUB_A=$(tr -d '\n' <"$WORK/gw-a.key.pub")
PUB_B=$(tr -d '\n' <"$WORK/gw-b.key.pub")

cat >"$WORK/gw-a.toml" <<EOF
# Gateway A: the hypervisor side. Dials B; the hypervisor connects to the ingress.
[gateway]
name = "gw-a"
private_key_file = "gw-a.key"

[peer]
name = "gw-b"
public_key = "$PUB_B"
connect = "127.0.0.1:$TUNNEL_PORT"

[wan]
data_flows = $DATA_FLOWS

[[ingress]]
mode = "listen"
bind = "127.0.0.1:$INGRESS_PORT"
target = "127.0.0.1:$SINK_PORT"
EOF

cat >"$WORK/gw-b.toml" <<EOF
# Gateway B: the destination side. Accepts A's tunnel, connects to allowed targets.
[gateway]
name = "gw-b"
private_key_file = "gw-b.key"
tunnel_listen = "127.0.0.1:$TUNNEL_PORT"

[peer]
name = "gw-a"
public_key = "$PUB_A"

[wan]
data_flows = $DATA_FLOWS

[egress]
allow = ["127.0.0.1:$SINK_PORT"]
EOF

for f in gw-a gw-b; do
    "$LMAS" check-config "$WORK/$f.toml" >/dev/null || die "lmas check-config $WORK/$f.toml failed"
done

echo "==> starting gateway B (accepts on 127.0.0.1:$TUNNEL_PORT) and gateway A ($DATA_FLOWS data flows)" >&2
"$LMAS" run --config "$WORK/gw-b.toml" 2>"$WORK/gw-b.log" &
B_PID=$!
PIDS+=("$B_PID")
wait_listen "$TUNNEL_PORT" 20
"$LMAS" run --config "$WORK/gw-a.toml" 2>"$WORK/gw-a.log" &
A_PID=$!
PIDS+=("$A_PID")
wait_log "$WORK/gw-a.log" "tunnel up: peer gw-b" 20 "$A_PID"
wait_log "$WORK/gw-b.log" "tunnel up: peer gw-a" 20 "$B_PID"
wait_log "$WORK/gw-a.log" "listening on 127.0.0.1:$INGRESS_PORT" 20 "$A_PID"

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
    echo "demo.sh: error: the data arrived corrupted" >&2
fi
exit "$status"

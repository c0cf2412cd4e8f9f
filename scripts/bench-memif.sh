#!/usr/bin/env bash
# bench-memif.sh: the DPDK gateway pair with no kernel anywhere in the path. Four DPDK
# processes joined by memif (shared-memory) ports:
#
#   lmas-load-dpdk source ══memif══ gw-a ══memif══ gw-b ══memif══ lmas-load-dpdk sink
#   10.9.1.2                 10.9.1.1 | 10.9.2.1   10.9.2.2 | 10.9.3.1          10.9.3.2
#
# Hashed transfers (one stream, then STREAMS at once), goodput, and each lcore role's cycles
# per packet from the gateways' own counters. See --help.
set -euo pipefail

PROG=bench-memif.sh
# shellcheck source-path=SCRIPTDIR source=lib/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib/common.sh"
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)

BYTES=1G
RUNS=3
STREAMS=8
FLOWS=8
BUILD=1
KEEP=0

usage() {
    cat <<EOF
Usage: scripts/bench-memif.sh [--bytes N] [--runs R] [--streams K] [--flows N] [--no-build] [--keep]

Runs the DPDK gateway pair back to back over net_memif (DPDK 22.11's shared-memory PMD): no
kernel, no veth, no link emulator between the two traffic endpoints. The endpoints are
lmas-load-dpdk (the gateway's own userspace TCP stack on a memif port). For each run: one
hashed stream of N bytes [$BYTES], then K streams [$STREAMS] of N/K bytes at once, through N
data flows [$FLOWS]; prints goodput (first connect to last close at the sink) and, from the
gateways' counters over all runs, the CPU cycles per packet of each lcore role (busy turns:
time in loop turns that moved packets, at the TSC rate) for gw-a (LAN rx, seal, WAN tx) and
gw-b (WAN rx, open, LAN tx). Crypto runs on the TCP lcore; one TCP lcore per gateway.

Needs the system DPDK (scripts/install-deps.sh); no root, no hugepages (--no-huge). Every
process's lcores float over all CPUs and sleep when idle: on a small shared machine the four
processes compete for CPUs, so read the per-packet costs as well as the goodput.
EOF
}

while (($#)); do
    case $1 in
        --bytes) BYTES=$2; shift 2 ;;
        --runs) RUNS=$2; shift 2 ;;
        --streams) STREAMS=$2; shift 2 ;;
        --flows) FLOWS=$2; shift 2 ;;
        --no-build) BUILD=0; shift ;;
        --keep) KEEP=1; shift ;;
        -h | --help) usage; exit 0 ;;
        *) die "unknown option: $1 (see --help)" ;;
    esac
done
is_size "$BYTES" || die "--bytes takes a size such as 1073741824 or 1G, got $BYTES"
pkg-config --exists libdpdk 2>/dev/null || die "no system DPDK (scripts/install-deps.sh)"
TARGET=${CARGO_TARGET_DIR:-$REPO/target}
if ((BUILD)); then
    (cd "$REPO" && cargo build --release -q -p lmas -p lmas-tests --bins) || die "build failed"
fi
LMAS=$TARGET/release/lmas
LOAD=$TARGET/release/lmas-load-dpdk
[[ -x $LMAS && -x $LOAD ]] || die "no $LMAS or $LOAD (build them, or drop --no-build)"

DIR=$(mktemp -d "${TMPDIR:-/tmp}/lmas-memif.XXXXXX")
PIDS=()
# shellcheck disable=SC2317  # the EXIT trap
cleanup() {
    local p
    for p in "${PIDS[@]}"; do stop_pid "$p"; done
    if ((KEEP)); then log "kept $DIR"; else rm -rf "$DIR"; fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

cpus="0-$(($(nproc) - 1))"
eal() { # PREFIX LCORES VDEV...
    local prefix=$1 lcores=$2 l out=""
    shift 2
    for l in $(seq 0 "$lcores"); do out+="${out:+,}$l@($cpus)"; done
    echo -n "--no-huge -m 512 --no-pci --no-telemetry --log-level error --file-prefix lmas-memif-$prefix-$$ --lcores=$out"
    for v in "$@"; do echo -n " --vdev=$v"; done
}
eal_toml() { # like eal, as a TOML array
    local w out=""
    for w in $(eal "$@"); do out+="${out:+, }\"$w\""; done
    echo "[$out]"
}

"$LMAS" keygen --out "$DIR/a.key" >/dev/null
"$LMAS" keygen --out "$DIR/b.key" >/dev/null
gw_config() { # NAME PEER GATEWAY-LINE PEER-LINE LAN-VDEV LAN-ADDR WAN-VDEV WAN-ADDR EXTRA
    cat <<EOF
[gateway]
name = "gw-$1"
private_key_file = "$1.key"
datapath = "dpdk"
$3

[peer]
name = "gw-$2"
public_key_file = "$2.key.pub"
$4

[wan]
data_flows = $FLOWS

[admin]
socket = "$DIR/$1.sock"
$9

[dpdk]
eal_args = $(eal_toml "$1" 2 "$5" "$7")
io_lcores = [1]
tcp_lcore = 2
crypto_lcores = []
idle_sleep_us = 50

[dpdk.lan]
device = "${5%%,*}"
address = "$6"

[dpdk.wan]
device = "${7%%,*}"
address = "$8"
EOF
}
gw_config a b "" 'connect = "10.9.2.2:7700"' "net_memif0,role=server,socket=$DIR/a-lan.sock" 10.9.1.1/24 \
    "net_memif1,role=server,socket=$DIR/wan.sock" 10.9.2.1/24 \
    $'\n[[ingress]]\nmode = "listen"\nbind = "10.9.1.1:6000"\ntarget = "10.9.3.2:5000"' >"$DIR/a.toml"
gw_config b a 'tunnel_listen = "10.9.2.2:7700"' "" "net_memif1,role=server,socket=$DIR/b-lan.sock" \
    10.9.3.1/24 "net_memif0,role=client,socket=$DIR/wan.sock" 10.9.2.2/24 \
    $'\n[egress]\nallow = ["10.9.3.2:5000"]' >"$DIR/b.toml"
for g in a b; do "$LMAS" check-config "$DIR/$g.toml" >/dev/null || die "gw-$g config rejected ($DIR/$g.toml)"; done

wait_for() { # FILE TEXT SECS PID
    local i
    for ((i = 0; i < $3 * 10; i++)); do
        grep -qF -- "$2" "$1" 2>/dev/null && return 0
        kill -0 "$4" 2>/dev/null || { tail -5 "$1" >&2; die "process $4 exited before '$2' ($1)"; }
        sleep 0.1
    done
    tail -5 "$1" >&2
    die "no '$2' in $1 after $3 s"
}

# gw-a serves the source's port and the WAN; gw-b connects to the WAN and serves the sink's.
# Servers before clients: a memif client connects once its server's socket exists.
RUST_LOG=info "$LMAS" run --config "$DIR/a.toml" >"$DIR/a.log" 2>&1 &
PIDS+=($!) && A=$!
wait_for "$DIR/a.log" "listening on 10.9.1.1:6000" 30 "$A"
RUST_LOG=info "$LMAS" run --config "$DIR/b.toml" >"$DIR/b.log" 2>&1 &
PIDS+=($!) && B=$!
wait_for "$DIR/a.log" "tunnel up" 30 "$A"
wait_for "$DIR/b.log" "tunnel up" 30 "$B"
log "gateways up over memif ($FLOWS data flows); logs in $DIR"

# transfer STREAMS BYTES-EACH SEED: prints the sink's total line; checks every hash. Each
# transfer starts new endpoint processes: fixed MACs keep the gateways' ARP entries valid.
transfer() {
    local k=$1 each=$2 seed=$3 sink_pid src_rc=0
    "$LOAD" --eal "$(eal sink 1 "net_memif0,role=client,socket=$DIR/b-lan.sock,mac=02:00:00:09:03:02")" --device net_memif0 \
        --address 10.9.3.2/24 --gateway 10.9.3.1 sink --listen 5000 --count "$k" >"$DIR/sink.out" 2>"$DIR/sink.err" &
    sink_pid=$!
    PIDS+=("$sink_pid")
    wait_for "$DIR/sink.err" "listening on" 30 "$sink_pid"
    "$LOAD" --eal "$(eal src 1 "net_memif0,role=client,socket=$DIR/a-lan.sock,mac=02:00:00:09:01:02")" --device net_memif0 \
        --address 10.9.1.2/24 --gateway 10.9.1.1 source --connect 10.9.1.1:6000 --bytes "$each" \
        --streams "$k" --seed "$seed" >"$DIR/src.out" 2>"$DIR/src.err" || src_rc=$?
    ((src_rc == 0)) || { cat "$DIR/src.err" >&2; die "the source failed"; }
    wait "$sink_pid" || { cat "$DIR/sink.err" >&2; die "the sink failed"; }
    local want got
    want=$(grep -o 'sha256=[0-9a-f]*' "$DIR/src.out" | sort)
    got=$(grep -o 'sha256=[0-9a-f]*' "$DIR/sink.out" | sort)
    [[ -n $want && $want == "$got" ]] || die "hashes differ: sent $want, received $got"
    grep '^total' "$DIR/sink.out"
}

counters() { "$LMAS" status --config "$DIR/$1.toml" --json; }
# thread_ticks PID: "name ticks" per thread (utime + stime), for CPU time per lcore role.
thread_ticks() {
    local t
    for t in /proc/"$1"/task/*; do
        awk '{ sub(/^[0-9]+ \(/, ""); split($0, a, ") "); split(a[2], f, " "); print a[1], f[12] + f[13] }' "$t/stat"
    done
}
thread_ticks "$A" >"$DIR/a.ticks0"
thread_ticks "$B" >"$DIR/b.ticks0"
total_bytes=$(numfmt --from=iec "${BYTES%iB}")
echo "mode,run,mbit_s" >"$DIR/runs.csv"
for ((run = 1; run <= RUNS; run++)); do
    one=$(transfer 1 "$total_bytes" "$run") || die "run $run: one stream failed (logs in $DIR with --keep)"
    many=$(transfer "$STREAMS" $((total_bytes / STREAMS)) $((run * 100))) ||
        die "run $run: $STREAMS streams failed (logs in $DIR with --keep)"
    echo "1-stream,$run,$(field mbit_s "$one")" >>"$DIR/runs.csv"
    echo "$STREAMS-streams,$run,$(field mbit_s "$many")" >>"$DIR/runs.csv"
    log "run $run/$RUNS: 1 stream $(field mbit_s "$one") Mbit/s, $STREAMS streams $(field mbit_s "$many") Mbit/s (hashes equal)"
done
counters a >"$DIR/a.json"
counters b >"$DIR/b.json"
thread_ticks "$A" >"$DIR/a.ticks1"
thread_ticks "$B" >"$DIR/b.ticks1"

PY=python3
$PY - "$DIR/runs.csv" "$DIR/a.json" "$DIR/b.json" "$DIR" "$(getconf CLK_TCK)" <<'EOF'
import csv, json, statistics, sys
runs = {}
for r in csv.DictReader(open(sys.argv[1])):
    runs.setdefault(r["mode"], []).append(float(r["mbit_s"]))
print("\ngoodput through the pair, no kernel in the path (Mbit/s, median of runs)")
for mode, v in runs.items():
    print(f"  {mode:<12} {statistics.median(v):8.1f}   runs: {' '.join('%.1f' % x for x in v)}")
def ticks(path):
    out = {}
    for line in open(path):
        name, t = line.rsplit(" ", 1)
        out[name] = out.get(name, 0) + int(t)
    return out
clk = float(sys.argv[5])
print("\ncycles per packet of each lcore role over all runs: busy = wall time of loop turns that")
print("moved packets (includes waiting for a CPU); cpu = the thread's CPU time (includes polling)")
print(f"  {'gateway':<8} {'role':<5} {'packets':>10} {'busy s':>7} {'cpu s':>7} {'busy c/p':>9} {'cpu c/p':>9}")
threads = {"io0": "rte-worker-1", "tcp": "rte-worker-2"}
for name, side in (("gw-a", "a"), ("gw-b", "b")):
    d = json.load(open(sys.argv[2] if side == "a" else sys.argv[3]))
    c, g = d["counters"], d.get("gauges", {})
    hz = g.get("dpdk_tsc_hz") or 2.4e9
    t0, t1 = ticks(f"{sys.argv[4]}/{side}.ticks0"), ticks(f"{sys.argv[4]}/{side}.ticks1")
    for role in ("io0", "tcp"):
        ns, pk = c.get(f"dpdk_{role}_busy_ns", 0), c.get(f"dpdk_{role}_packets", 0)
        cpu = (t1.get(threads[role], 0) - t0.get(threads[role], 0)) / clk
        if pk:
            print(f"  {name:<8} {role:<5} {pk:>10} {ns / 1e9:>7.2f} {cpu:>7.2f} "
                  f"{ns * hz / 1e9 / pk:>9.0f} {cpu * hz / pk:>9.0f}")
EOF

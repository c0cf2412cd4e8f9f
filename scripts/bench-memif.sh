#!/usr/bin/env bash
# bench-memif.sh: the DPDK gateway pair with no kernel anywhere in the path. Four DPDK
# processes joined by memif (shared-memory) ports:
#
#   lmas-load-dpdk source ══memif══ gw-a ══memif══ gw-b ══memif══ lmas-load-dpdk sink
#   10.9.1.2                 10.9.1.1 | 10.9.2.1   10.9.2.2 | 10.9.3.1          10.9.3.2
#
# Hashed transfers (one stream, then STREAMS at once), goodput, and each lcore role's cycles
# per packet from the gateways' own counters, for each count of TCP lcores per gateway
# (alternated run by run, so the counts see the same machine). See --help.
set -euo pipefail

PROG=bench-memif.sh
# shellcheck source-path=SCRIPTDIR source=lib/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib/common.sh"
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)

BYTES=1G
RUNS=3
STREAMS=8
FLOWS=8
TCP_LCORES=1
BUILD=1
KEEP=0

usage() {
    cat <<EOF
Usage: scripts/bench-memif.sh [--bytes N] [--runs R] [--streams K] [--flows N] [--tcp-lcores "1 2"]
                              [--no-build] [--keep]

Runs the DPDK gateway pair back to back over net_memif (DPDK 22.11's shared-memory PMD): no
kernel, no veth, no link emulator between the two traffic endpoints. The endpoints are
lmas-load-dpdk (the gateway's own userspace TCP stack on a memif port). For each run: one
hashed stream of N bytes [$BYTES], then K streams [$STREAMS] of N/K bytes at once, through N
data flows [$FLOWS]; prints goodput (first connect to last close at the sink) and, from the
gateways' counters over all runs, the CPU cycles per packet of each lcore role (busy turns:
time in loop turns that moved packets, at the TSC rate) for gw-a (LAN rx, seal, WAN tx) and
gw-b (WAN rx, open, LAN tx). Crypto runs on the TCP lcore(s).

--tcp-lcores takes one or more counts [$TCP_LCORES] of TCP lcores per gateway (dpdk.tcp_lcores:
each a shard with its own sub-tunnel, frames steered by the I/O lcore); with several, each run
brings the pair up once per count, in turn, and the summary gives each count's goodput and its
ratio to the first count's.

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
        --tcp-lcores) TCP_LCORES=$2; shift 2 ;;
        --no-build) BUILD=0; shift ;;
        --keep) KEEP=1; shift ;;
        -h | --help) usage; exit 0 ;;
        *) die "unknown option: $1 (see --help)" ;;
    esac
done
for n in $TCP_LCORES; do
    [[ $n =~ ^[1-9]$ ]] || die "--tcp-lcores takes counts 1-9, got '$n'"
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
gw_config() { # NAME PEER GATEWAY-LINE PEER-LINE LAN-VDEV LAN-ADDR WAN-VDEV WAN-ADDR EXTRA TCP-LCORES
    local tcp
    tcp=$(seq -s ', ' 2 $((1 + ${10})))
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
eal_args = $(eal_toml "$1" $((1 + ${10})) "$5" "$7")
io_lcores = [1]
tcp_lcores = [$tcp]
crypto_lcores = []
idle_sleep_us = 50
# 32 streams open at once: room for their SYNs in any one shard.
listen_backlog = 64

[dpdk.lan]
device = "${5%%,*}"
address = "$6"

[dpdk.wan]
device = "${7%%,*}"
address = "$8"
EOF
}
# configs N: gw-a's and gw-b's configs with N TCP lcores each.
configs() {
    gw_config a b "" 'connect = "10.9.2.2:7700"' "net_memif0,role=server,socket=$DIR/a-lan.sock" 10.9.1.1/24 \
        "net_memif1,role=server,socket=$DIR/wan.sock" 10.9.2.1/24 \
        $'\n[[ingress]]\nmode = "listen"\nbind = "10.9.1.1:6000"\ntarget = "10.9.3.2:5000"' "$1" >"$DIR/a.toml"
    gw_config b a 'tunnel_listen = "10.9.2.2:7700"' "" "net_memif1,role=server,socket=$DIR/b-lan.sock" \
        10.9.3.1/24 "net_memif0,role=client,socket=$DIR/wan.sock" 10.9.2.2/24 \
        $'\n[egress]\nallow = ["10.9.3.2:5000"]' "$1" >"$DIR/b.toml"
    local g
    for g in a b; do "$LMAS" check-config "$DIR/$g.toml" >/dev/null || die "gw-$g config rejected ($DIR/$g.toml)"; done
}

wait_for() { # FILE TEXT SECS PID [COUNT]: until TEXT is in FILE COUNT times [1]
    local i n
    for ((i = 0; i < $3 * 10; i++)); do
        n=$(grep -cF -- "$2" "$1" 2>/dev/null) || true
        ((${n:-0} >= ${5:-1})) && return 0
        kill -0 "$4" 2>/dev/null || { tail -5 "$1" >&2; die "process $4 exited before '$2' ($1)"; }
        sleep 0.1
    done
    tail -5 "$1" >&2
    die "no '$2' in $1 after $3 s"
}

# pair_up N: the gateways with N TCP lcores each, every shard's sub-tunnel up.
# gw-a serves the source's port and the WAN; gw-b connects to the WAN and serves the sink's.
# Servers before clients: a memif client connects once its server's socket exists.
pair_up() {
    configs "$1"
    RUST_LOG=info "$LMAS" run --config "$DIR/a.toml" >"$DIR/a.log" 2>&1 &
    PIDS+=($!) && A=$!
    wait_for "$DIR/a.log" "listening on 10.9.1.1:6000" 30 "$A"
    RUST_LOG=info "$LMAS" run --config "$DIR/b.toml" >"$DIR/b.log" 2>&1 &
    PIDS+=($!) && B=$!
    wait_for "$DIR/a.log" "tunnel up" 30 "$A" "$1"
    wait_for "$DIR/b.log" "tunnel up" 30 "$B" "$1"
    log "gateways up over memif ($1 TCP lcore(s) each, $FLOWS data flows per sub-tunnel); logs in $DIR"
}

pair_down() {
    stop_pid "$A"
    stop_pid "$B"
}

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
total_bytes=$(numfmt --from=iec "${BYTES%iB}")
echo "tcp_lcores,mode,run,mbit_s" >"$DIR/runs.csv"
for ((run = 1; run <= RUNS; run++)); do
    for n in $TCP_LCORES; do
        pair_up "$n"
        thread_ticks "$A" >"$DIR/a.ticks0.$n.$run"
        thread_ticks "$B" >"$DIR/b.ticks0.$n.$run"
        one=$(transfer 1 "$total_bytes" "$run") || die "run $run: one stream failed (logs in $DIR with --keep)"
        many=$(transfer "$STREAMS" $((total_bytes / STREAMS)) $((run * 100))) ||
            die "run $run: $STREAMS streams failed (logs in $DIR with --keep)"
        echo "$n,1-stream,$run,$(field mbit_s "$one")" >>"$DIR/runs.csv"
        echo "$n,$STREAMS-streams,$run,$(field mbit_s "$many")" >>"$DIR/runs.csv"
        counters a >"$DIR/a.json.$n.$run"
        counters b >"$DIR/b.json.$n.$run"
        thread_ticks "$A" >"$DIR/a.ticks1.$n.$run"
        thread_ticks "$B" >"$DIR/b.ticks1.$n.$run"
        pair_down
        log "run $run/$RUNS, $n TCP lcore(s): 1 stream $(field mbit_s "$one") Mbit/s, $STREAMS streams $(field mbit_s "$many") Mbit/s (hashes equal)"
    done
done

PY=python3
$PY - "$DIR" "$(getconf CLK_TCK)" "$RUNS" "$TCP_LCORES" <<'EOF'
import csv, json, statistics, sys
d, clk, runs_n, counts = sys.argv[1], float(sys.argv[2]), int(sys.argv[3]), sys.argv[4].split()
runs = {}
for r in csv.DictReader(open(f"{d}/runs.csv")):
    runs.setdefault((r["mode"], r["tcp_lcores"]), []).append(float(r["mbit_s"]))
print("\ngoodput through the pair, no kernel in the path (Mbit/s, median of runs)")
print(f"  {'mode':<12} {'tcp lcores':>10} {'median':>8} {'ratio':>6}   runs")
for mode in dict.fromkeys(m for m, _ in runs):
    base = statistics.median(runs[(mode, counts[0])])
    for n in counts:
        v = runs[(mode, n)]
        m = statistics.median(v)
        print(f"  {mode:<12} {n:>10} {m:8.1f} {m / base:6.2f}   {' '.join('%.1f' % x for x in v)}")
def ticks(path):
    out = {}
    for line in open(path):
        name, t = line.rsplit(" ", 1)
        out[name] = out.get(name, 0) + int(t)
    return out
print("\ncycles per packet of each lcore role over all runs: busy = wall time of loop turns that")
print("moved packets (includes waiting for a CPU); cpu = the threads' CPU time (includes polling)")
print(f"  {'gateway':<8} {'tcp lcores':>10} {'role':<5} {'packets':>10} {'busy s':>7} {'cpu s':>7} {'busy c/p':>9} {'cpu c/p':>9}")
for name, side in (("gw-a", "a"), ("gw-b", "b")):
    for n in counts:
        # The I/O lcore is rte-worker-1, the TCP lcores rte-worker-2 and on.
        threads = {"io0": ["rte-worker-1"], "tcp": [f"rte-worker-{2 + k}" for k in range(int(n))]}
        tot = {role: [0, 0, 0.0] for role in threads}
        hz = 2.4e9
        for run in range(1, runs_n + 1):
            j = json.load(open(f"{d}/{side}.json.{n}.{run}"))
            c, g = j["counters"], j.get("gauges", {})
            hz = g.get("dpdk_tsc_hz") or hz
            t0, t1 = ticks(f"{d}/{side}.ticks0.{n}.{run}"), ticks(f"{d}/{side}.ticks1.{n}.{run}")
            for role, names in threads.items():
                tot[role][0] += c.get(f"dpdk_{role}_busy_ns", 0)
                tot[role][1] += c.get(f"dpdk_{role}_packets", 0)
                tot[role][2] += sum(t1.get(t, 0) - t0.get(t, 0) for t in names) / clk
        for role, (ns, pk, cpu) in tot.items():
            if pk:
                print(f"  {name:<8} {n:>10} {role:<5} {pk:>10} {ns / 1e9:>7.2f} {cpu:>7.2f} "
                      f"{ns * hz / 1e9 / pk:>9.0f} {cpu * hz / pk:>9.0f}")
        if int(n) > 1:
            shares = [0] * int(n)
            for run in range(1, runs_n + 1):
                c = json.load(open(f"{d}/{side}.json.{n}.{run}"))["counters"]
                for k in range(int(n)):
                    shares[k] += c.get(f"dpdk_tcp{k}_packets", 0)
            print(f"  {name:<8} {n:>10} packets per TCP lcore: {' '.join(map(str, shares))}")
EOF

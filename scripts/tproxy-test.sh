#!/usr/bin/env bash
# tproxy-test.sh: end-to-end test of transparent (TPROXY) ingress in network namespaces.
#
#   lmtp-client (10.231.0.2) ── veth ── lmtp-gw (10.231.0.1 | 10.231.1.1) ── veth ── lmtp-dst (10.231.1.2)
#
# Both gateways run in lmtp-gw (tunnel on 127.0.0.1). The client connects to the destination's
# own address 10.231.1.2:5000; TPROXY in lmtp-gw hands the connection to gateway A's
# transparent listener, A opens a session to the ORIGINAL destination through B, and B connects
# to it. The sink's SHA-256 must equal the source's. Skips (exit 0, "SKIP:") when not root or
# when namespaces are unavailable.
set -euo pipefail

if [[ ${1:-} == -h || ${1:-} == --help ]]; then
    sed -n '2,10p' "$0"
    exit 0
fi
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
PROG=tproxy-test.sh
# shellcheck source-path=SCRIPTDIR source=lib/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib/common.sh"
TARGET_DIR=${CARGO_TARGET_DIR:-$REPO/target}
LMAS=${LMAS_BIN:-$TARGET_DIR/release/lmas}
LOAD=${LMAS_LOAD_BIN:-$TARGET_DIR/release/lmas-load}
BYTES=${BYTES:-64M}

if ! is_root; then
    echo "SKIP: tproxy-test needs root (network namespaces, TPROXY rules)"
    exit 0
fi
if ! netns_usable lmtp-probe; then
    echo "SKIP: tproxy-test: cannot create network namespaces here"
    exit 0
fi
for bin in "$LMAS" "$LOAD"; do
    [[ -x $bin ]] || { echo "tproxy-test: missing $bin (cargo build --release --workspace)" >&2; exit 1; }
done

WORK=$(mktemp -d)
cleanup() {
    local rc=$?
    pkill -f "$WORK/" 2>/dev/null || true
    for ns in lmtp-client lmtp-gw lmtp-dst; do ip netns del "$ns" 2>/dev/null || true; done
    ip link del lmtp-c 2>/dev/null || true
    ip link del lmtp-d 2>/dev/null || true
    if [[ $rc -ne 0 ]]; then
        echo "--- gateway logs" >&2
        tail -n 20 "$WORK"/*.log >&2 || true
    fi
    rm -rf "$WORK"
}
trap cleanup EXIT
for ns in lmtp-client lmtp-gw lmtp-dst; do ip netns del "$ns" 2>/dev/null || true; ip netns add "$ns"; done

ip link add lmtp-c type veth peer name lmtp-gc
ip link add lmtp-d type veth peer name lmtp-gd
ip link set lmtp-c netns lmtp-client
ip link set lmtp-gc netns lmtp-gw
ip link set lmtp-gd netns lmtp-gw
ip link set lmtp-d netns lmtp-dst
nsx lmtp-client ip addr add 10.231.0.2/24 dev lmtp-c
nsx lmtp-gw ip addr add 10.231.0.1/24 dev lmtp-gc
nsx lmtp-gw ip addr add 10.231.1.1/24 dev lmtp-gd
nsx lmtp-dst ip addr add 10.231.1.2/24 dev lmtp-d
for pair in lmtp-client:lmtp-c lmtp-gw:lmtp-gc lmtp-gw:lmtp-gd lmtp-dst:lmtp-d; do
    nsx "${pair%%:*}" ip link set "${pair##*:}" up
    nsx "${pair%%:*}" ip link set lo up
done
nsx lmtp-client ip route add default via 10.231.0.1
nsx lmtp-dst ip route add default via 10.231.1.1
nsx lmtp-gw sysctl -qw net.ipv4.ip_forward=1

# The TPROXY rules documented in docs/DEPLOYMENT.md, set by the script operators use (twice:
# it must be idempotent).
for _ in 1 2; do
    nsx lmtp-gw "$REPO/scripts/tproxy-rules.sh" up --port 6001 --dports 5000 --iif lmtp-gc 2>/dev/null
done
nsx lmtp-gw "$REPO/scripts/tproxy-rules.sh" status >/dev/null

cd "$WORK"
"$LMAS" keygen --out a.key >/dev/null
"$LMAS" keygen --out b.key >/dev/null
cat >a.toml <<CONF
[gateway]
name = "gw-a"
private_key_file = "a.key"
[peer]
name = "gw-b"
public_key_file = "b.key.pub"
connect = "127.0.0.1:7700"
[wan]
data_flows = 4
[[ingress]]
mode = "tproxy"
bind = "0.0.0.0:6001"
CONF
cat >b.toml <<CONF
[gateway]
name = "gw-b"
private_key_file = "b.key"
tunnel_listen = "127.0.0.1:7700"
[peer]
name = "gw-a"
public_key_file = "a.key.pub"
[wan]
data_flows = 4
[egress]
allow = ["10.231.1.2:5000"]
CONF
nsx lmtp-gw "$LMAS" run --config "$WORK/b.toml" 2>"$WORK/b.log" &
nsx lmtp-gw "$LMAS" run --config "$WORK/a.toml" 2>"$WORK/a.log" &
for _ in $(seq 100); do
    all_logged "tunnel up" "$WORK/a.log" "$WORK/b.log" && break
    sleep 0.1
done
grep -q "tunnel up" "$WORK/a.log" || { echo "tproxy-test: tunnel did not come up" >&2; exit 1; }

nsx lmtp-dst "$LOAD" sink --listen 10.231.1.2:5000 --count 1 >"$WORK/sink.out" 2>/dev/null &
SINK=$!
sleep 0.3
SRC=$(nsx lmtp-client timeout 60 "$LOAD" source --connect 10.231.1.2:5000 --bytes "$BYTES")
wait "$SINK"
src_hash=$(field sha256 "$SRC")
dst_hash=$(field sha256 "$(cat "$WORK/sink.out")")
# The session must really have gone through the gateways, to the original destination.
grep -q "10.231.0.2:[0-9]* -> 10.231.1.2:5000" "$WORK/a.log" || { echo "tproxy-test: gateway A did not intercept the connection" >&2; exit 1; }
grep -q "\-> 10.231.1.2:5000 connected" "$WORK/b.log" || { echo "tproxy-test: gateway B did not connect the original destination" >&2; exit 1; }
if [[ -n $src_hash && $src_hash == "$dst_hash" ]]; then
    echo "tproxy-test: 1 passed, 0 failed ($BYTES intercepted by TPROXY, original destination preserved, sha256 equal)"
else
    echo "tproxy-test: 0 passed, 1 failed (source $src_hash, sink $dst_hash)" >&2
    exit 1
fi

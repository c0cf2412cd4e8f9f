#!/usr/bin/env bash
# LMAS WAN lab: five network namespaces and an emulated long link.
#
#   src-host ── gw-a ══════ wan ══════ gw-b ── dst-host
#   10.0.1.2    10.0.1.1    (linkemu)   10.0.3.1  10.0.3.2
#               10.0.2.1  10.0.2.254    10.0.2.2
#
# See `scripts/lab.sh --help` and docs/LAB.md.
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
PROG=lab.sh
# shellcheck source-path=SCRIPTDIR source=lib/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib/common.sh"
# shellcheck source-path=SCRIPTDIR source=lib/pair.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib/pair.sh"
# shellcheck source-path=SCRIPTDIR source=lib/lab-names.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib/lab-names.sh"
NAMESPACES=("${LAB_NAMESPACES[@]}")
RUN_DIR=$LAB_RUN_DIR

# Stock hypervisor TCP settings for the two hosts (not this machine's defaults: BBR, 32 MiB).
HOST_CC=cubic
HOST_RMEM="4096 131072 6291456"
HOST_WMEM="4096 16384 4194304"

usage() {
    cat <<EOF
Usage: scripts/lab.sh COMMAND [OPTIONS]

The LMAS WAN testbed: namespaces src-host — gw-a — wan — gw-b — dst-host joined by veth
pairs, src-host's route to dst-host through gw-a → wan → gw-b, and an emulated long link
(scripts/linkemu: NFQUEUE delay, XDP loss before GRO, tbf rate) inside 'wan'.

Commands:
  up [LINK OPTIONS]   create the testbed (idempotent: if it is already up, only the link
                      settings given are applied)
  set LINK OPTIONS    change the emulated link live
  status              namespaces, addresses, route, host TCP settings, link counters, ping
  down                stop the link and everything running in the lab namespaces, delete them
  exec NS CMD...      run CMD in namespace NS (shorthand for ip netns exec)
  linkemu-path        print the linkemu binary used (building it if needed)
  gateways up [--datapath kernel|dpdk] [--pmd af_packet|af_xdp] [--flows N] [--congestion CC]
              [--ingress listen|tproxy] [--window BYTES] [--unsent BYTES] [--unsent-ms MS] [--link-cap MBIT] [--migration-cap MBIT] [--buffer BYTES]
              [--compression auto|off|lz4|zstd[:L]] [--pacing tunnel|flows] [--lane on|off|auto]
              [--dedup auto|off] [--dedup-scope migration|tunnel] [--dedup-store BYTES]
              [--dedup-dir-b DIR] [--reuse]
                      (re)start the LMAS pair, N data flows (default 8) with WAN congestion
                      control CC (default: the gateway's, bbr) and a session window of BYTES
                      (limits.session_window_bytes; default: the gateway's, 256 MiB). Ingress 'listen' (default):
                      gw-a listens on $GWA_LAN_IP:$INGRESS_PORT and forwards to $DST_IP:$TARGET_PORT
                      through gw-b, and on $GWA_LAN_IP:$INGRESS2_PORT to $DST_IP:$TARGET2_PORT (a second
                      migration, migrate.sh --slot 1). Ingress 'tproxy': src-host connects to $DST_IP:$TARGET_PORT
                      itself; TPROXY rules in gw-a hand the connection to a transparent listener
                      (:$TPROXY_PORT) and the session carries the original destination to gw-b.
                      Datapath 'kernel' (default): the gateways on kernel sockets. 'dpdk': DPDK
                      gateways whose userspace stacks own gw-a's and gw-b's veths through the
                      --pmd (default af_packet); the veths lose their kernel addresses until
                      the next kernel pair or 'gateways down'. --buffer: the WAN flows' socket
                      buffer (wan.socket_buffer_bytes). --compression, --pacing, --lane, --dedup,
                      --dedup-scope, --dedup-store: the [wan] keys compression, pacing, lane, dedup,
                      dedup_scope, dedup_store_bytes (unset: the gateway's default; the WAN
                      dedup cache, issue 16); --dedup-dir-b: gw-b keeps its store in files
                      there (wan.dedup_dir, absolute). --reuse: keep a running pair that has
                      exactly these options. Keys/configs in \$LAB_RUN_DIR/gw, logs
                      in \$LAB_RUN_DIR/gw-*.log.
  gateways restart-b  SIGKILL gw-b (a crash, no shutdown) and start it again with its config
                      (its old log kept as gw-b.log.killed); waits for its new tunnel
  gateways down       stop the LMAS pair and remove the TPROXY rules
  gateways address    print the address src-host connects to for the running pair
  transfer [--bytes N] [--max-secs S] [--direct] [--timeout S] [--payload KIND] [--seed S]
                      one lmas-load transfer src-host → dst-host (through the gateways in
                      their ingress mode, or direct), SHA-256 checked; with --max-secs the
                      source stops after S s and the hash covers what it sent. Through the
                      gateways it also checks that gw-a logged the session. Prints Mbit/s
                      (sink side: accept to EOF); a progress bar on a terminal. --payload:
                      random (default, incompressible), text, or guest (guest-memory-like
                      pages: zero, text, random); Mbit/s are of the original stream.
                      Logs tail_ms=: from the source's last write to its last byte at the
                      sink, the one-way delay included.
                      --seed: the payload's seed (lmas-load's default: 1, the same stream
                      every time; a WAN dedup cache would find it again: give each
                      transfer its own seed to measure first-seen data).

Link options (passed to linkemu):
  --rtt MS            round-trip time (half each way)           [up default: 0]
  --delay-ab MS, --delay-ba MS   one-way delay per direction (a = gw-a side)
  --loss PCT          random loss of wire packets, both ways    [up default: 0]
  --loss-ab PCT, --loss-ba PCT
  --jitter MS         uniform ± jitter, no reordering           [up default: 0]
  --rate MBIT         rate limit per direction, 0 = unlimited  [up default: 1000]
  --queue-bytes N     bottleneck queue (default: one BDP, at least 256 KiB)

Addresses: src-host $SRC_IP, gw-a $GWA_LAN_IP (LAN) / $GWA_WAN_IP (WAN),
wan $WAN_IP, gw-b $GWB_WAN_IP (WAN) / $GWB_LAN_IP (LAN), dst-host $DST_IP.
Hosts use $HOST_CC, tcp_rmem "$HOST_RMEM", tcp_wmem "$HOST_WMEM"; the gateways keep the
namespace defaults (they choose their own WAN TCP settings).

Environment: LINKEMU, LMAS, LMAS_LOAD = paths of the binaries (default: built with cargo
into \${CARGO_TARGET_DIR:-target}/release/), LAB_RUN_DIR (default /run/lmas-lab),
LAB_PREFIX (default empty: prefixes the namespaces, link name and run directory, so that a
second lab can run beside the first, e.g. LAB_PREFIX=dev-).
Needs root, iproute2, ethtool, iptables, and to build linkemu: cargo, clang, libbpf-dev.
EOF
}

need_lab_tools() {
    is_root || die "must run as root (it creates network namespaces, veths, XDP and netfilter rules)"
    command -v ip >/dev/null || die "iproute2 (ip) not found"
    command -v ethtool >/dev/null || die "ethtool not found"
    command -v iptables >/dev/null || die "iptables not found"
}

linkemu_bin() {
    if [[ -n ${LINKEMU:-} ]]; then
        [[ -x $LINKEMU ]] || die "LINKEMU=$LINKEMU is not executable"
        echo "$LINKEMU"
        return
    fi
    local target=${CARGO_TARGET_DIR:-$REPO/target}
    local bin=$target/release/linkemu
    if [[ ! -x $bin || -n $(find "$REPO/scripts/linkemu" "$REPO/scripts/bpf" -newer "$bin" -type f 2>/dev/null | head -1) ]]; then
        log "building linkemu ($bin)"
        (cd "$REPO" && CARGO_TARGET_DIR=$target cargo build --release -q -p linkemu) >&2 ||
            die "building linkemu failed (needs clang and libbpf-dev)"
    fi
    echo "$bin"
}

lab_exists() {
    local ns
    for ns in "${NAMESPACES[@]}"; do
        [[ -e /run/netns/$ns ]] || return 1
    done
    return 0
}

link_running() {
    "$(linkemu_bin)" stats --name "$LINK_NAME" >/dev/null 2>&1
}

# veth NS1 DEV1 NS2 DEV2
veth() {
    ip link add "$2" netns "$1" type veth peer name "$4" netns "$3"
    nsx "$1" ip link set "$2" up
    nsx "$3" ip link set "$4" up
}

ns_common() {
    local ns=$1
    nsx "$ns" ip link set lo up
    nsx "$ns" sysctl -qw net.ipv6.conf.all.disable_ipv6=1 net.ipv6.conf.default.disable_ipv6=1
    nsx "$ns" sysctl -qw net.ipv4.conf.all.rp_filter=0 net.ipv4.conf.default.rp_filter=0
}

host_tcp() {
    local ns=$1
    nsx "$ns" sysctl -qw net.ipv4.tcp_congestion_control="$HOST_CC"
    nsx "$ns" sysctl -qw net.ipv4.tcp_rmem="$HOST_RMEM" net.ipv4.tcp_wmem="$HOST_WMEM"
}

allow_cubic() {
    # A namespace may only pick algorithms in the host's allowed list.
    local allowed
    allowed=$(cat /proc/sys/net/ipv4/tcp_allowed_congestion_control)
    if [[ " $allowed " != *" $HOST_CC "* ]]; then
        log "adding $HOST_CC to the host's net.ipv4.tcp_allowed_congestion_control ($allowed)"
        sysctl -qw net.ipv4.tcp_allowed_congestion_control="$allowed $HOST_CC"
    fi
}

# gw_kernel_addresses: the gateways' veths as kernel routers: gw-a has its LAN on lan0 and a
# /32 on the WAN side with everything remote via the wan router; gw-b the mirror image.
gw_kernel_addresses() {
    nsx "$NS_GWA" ip addr add $GWA_LAN_IP/24 dev lan0
    nsx "$NS_GWA" ip addr add $GWA_WAN_IP/32 dev wan0
    nsx "$NS_GWA" ip route add $WAN_IP/32 dev wan0 scope link
    nsx "$NS_GWA" ip route add 10.0.2.0/24 via $WAN_IP dev wan0
    nsx "$NS_GWA" ip route add 10.0.3.0/24 via $WAN_IP dev wan0
    nsx "$NS_GWA" sysctl -qw net.ipv4.ip_forward=1

    nsx "$NS_GWB" ip addr add $GWB_WAN_IP/32 dev wan0
    nsx "$NS_GWB" ip route add $WAN_IP/32 dev wan0 scope link
    nsx "$NS_GWB" ip route add 10.0.2.0/24 via $WAN_IP dev wan0
    nsx "$NS_GWB" ip route add 10.0.1.0/24 via $WAN_IP dev wan0
    nsx "$NS_GWB" ip addr add $GWB_LAN_IP/24 dev lan0
    nsx "$NS_GWB" sysctl -qw net.ipv4.ip_forward=1
}

# The kernel veth ends that face a gateway port: (namespace device) pairs.
dpdk_facing() {
    echo "$NS_SRC eth0"
    echo "$NS_WAN wan-a"
    echo "$NS_WAN wan-b"
    echo "$NS_DST eth0"
}

# gw_ports kernel|dpdk: who owns the gateways' veths (lan0, wan0 in gw-a and gw-b). 'dpdk': no
# kernel address or forwarding there (the DPDK gateways' userspace stacks own 10.0.1.1,
# 10.0.2.1, 10.0.2.2, 10.0.3.1), and every kernel veth end facing them sends finished
# checksums and wire-sized frames (a PMD on a veth sees neither TX checksum offload nor GSO;
# FACTS.md); the wan router answers ARP for the far gateway (the DPDK WAN ports are one /24
# with 10.0.2.254 as next hop, and smoltcp only ARPs inside its own prefix). 'kernel' undoes
# all of it. Idempotent; the current mode is in $RUN_DIR/ports.
gw_ports() {
    local want=$1 have ns dev onoff proxy forward
    have=$(cat "$RUN_DIR/ports" 2>/dev/null || echo kernel)
    [[ $want != "$have" ]] || return 0
    if [[ $want == dpdk ]]; then
        onoff=off proxy=1 forward=0
        for ns in "$NS_GWA" "$NS_GWB"; do
            nsx "$ns" ip addr flush dev lan0
            nsx "$ns" ip addr flush dev wan0
        done
    else
        onoff=on proxy=0 forward=1
        gw_kernel_addresses
    fi
    for ns in "$NS_GWA" "$NS_GWB"; do
        nsx "$ns" sysctl -qw net.ipv4.ip_forward=$forward
    done
    while read -r ns dev; do
        nsx "$ns" ethtool -K "$dev" tx $onoff tso $onoff gso $onoff >/dev/null
    done < <(dpdk_facing)
    nsx "$NS_WAN" sysctl -qw net.ipv4.conf.wan-a.proxy_arp=$proxy net.ipv4.conf.wan-b.proxy_arp=$proxy
    # The hosts' ARP entries for their gateway stay valid (a PMD keeps the veth's MAC); the
    # wan router's for the gateways too.
    mkdir -p "$RUN_DIR"
    echo "$want" >"$RUN_DIR/ports"
}

create() {
    local ns
    for ns in "${NAMESPACES[@]}"; do
        ip netns add "$ns"
        ns_common "$ns"
    done

    veth "$NS_SRC" eth0 "$NS_GWA" lan0
    veth "$NS_GWA" wan0 "$NS_WAN" wan-a
    veth "$NS_WAN" wan-b "$NS_GWB" wan0
    veth "$NS_GWB" lan0 "$NS_DST" eth0

    # src-host
    nsx "$NS_SRC" ip addr add $SRC_IP/24 dev eth0
    nsx "$NS_SRC" ip route add default via $GWA_LAN_IP

    gw_kernel_addresses

    # wan: a router between two /32 neighbours.
    nsx "$NS_WAN" ip addr add $WAN_IP/32 dev wan-a
    nsx "$NS_WAN" ip addr add $WAN_IP/32 dev wan-b
    nsx "$NS_WAN" ip route add $GWA_WAN_IP/32 dev wan-a scope link
    nsx "$NS_WAN" ip route add $GWB_WAN_IP/32 dev wan-b scope link
    nsx "$NS_WAN" ip route add 10.0.1.0/24 via $GWA_WAN_IP dev wan-a
    nsx "$NS_WAN" ip route add 10.0.3.0/24 via $GWB_WAN_IP dev wan-b
    nsx "$NS_WAN" sysctl -qw net.ipv4.ip_forward=1

    # dst-host
    nsx "$NS_DST" ip addr add $DST_IP/24 dev eth0
    nsx "$NS_DST" ip route add default via $GWB_LAN_IP

    # The gateways' WAN devices keep TSO: while the XDP loss program is attached to wan-a/wan-b
    # the kernel turns TSO off on their veth peers, so it still drops single wire packets. Off
    # for good, every aggregate forwarded through gw-a (a neighbour's, from src-host) went into
    # wan-a's 256-packet receive ring as ~44 packets at once, and on the busy 2-core host the
    # ring overflowed: gw-a's wan0 "TX dropped" rose by exactly iperf3's retransmits, in a third
    # of the runs beside the pair (docs/BENCHMARKS.md, session 52). GRO on the wan devices
    # merges what arrives segmented, so the NFQUEUE daemon handles aggregates. UDP too (the
    # gateways' lane, wan.lane): forwarded datagrams are merged only with
    # rx-udp-gro-forwarding; one verdict each, the daemon ran up to 239 ms late under a
    # migration's ~80,000 datagrams a second.
    nsx "$NS_GWA" ethtool -K wan0 tso on gso on >/dev/null
    nsx "$NS_GWB" ethtool -K wan0 tso on gso on >/dev/null
    nsx "$NS_WAN" ethtool -K wan-a gro on rx-udp-gro-forwarding on >/dev/null
    nsx "$NS_WAN" ethtool -K wan-b gro on rx-udp-gro-forwarding on >/dev/null

    allow_cubic
    host_tcp "$NS_SRC"
    host_tcp "$NS_DST"
}

# Translate lab options to linkemu options (same names) and check them.
LINK_ARGS=()
parse_link_args() {
    LINK_ARGS=()
    while (($#)); do
        case $1 in
            --rtt | --delay | --delay-ab | --delay-ba | --loss | --loss-ab | --loss-ba | --jitter | --rate | --queue-bytes)
                (($# >= 2)) || die "$1 needs a value"
                LINK_ARGS+=("$1" "$2")
                shift 2
                ;;
            --rtt=* | --delay=* | --delay-ab=* | --delay-ba=* | --loss=* | --loss-ab=* | --loss-ba=* | --jitter=* | --rate=* | --queue-bytes=*)
                LINK_ARGS+=("$1")
                shift
                ;;
            -h | --help) usage; exit 0 ;;
            *) die "unknown option: $1 (see --help)" ;;
        esac
    done
}

cmd_up() {
    parse_link_args "$@"
    need_lab_tools
    local bin
    bin=$(linkemu_bin)
    if lab_exists && link_running; then
        log "testbed already up"
        if ((${#LINK_ARGS[@]})); then
            nsx "$NS_WAN" "$bin" set --name "$LINK_NAME" "${LINK_ARGS[@]}" >/dev/null
        fi
        # Re-assert the host settings (cheap, and keeps 'up' a full guarantee).
        allow_cubic
        host_tcp "$NS_SRC"
        host_tcp "$NS_DST"
        cmd_status_short
        return
    fi
    if lab_exists || [[ -n $(ip netns list | grep -E "^($(IFS='|'; echo "${NAMESPACES[*]}"))( |$)" || true) ]]; then
        log "partial testbed found: removing it first"
        cmd_down >/dev/null
    fi
    log "creating namespaces ${NAMESPACES[*]}"
    if ! create; then
        cmd_down >/dev/null 2>&1 || true
        die "creating the testbed failed"
    fi
    mkdir -p "$RUN_DIR"
    # Defaults for the options the caller did not give (linkemu takes each option once; the
    # specific ones, e.g. --delay-ab, take precedence over --rtt/--delay/--loss anyway).
    local args=(--rtt 0 --loss 0 --rate 1000)
    local merged=() i
    for ((i = 0; i < ${#args[@]}; i += 2)); do
        if [[ " ${LINK_ARGS[*]} " != *" ${args[i]} "* && " ${LINK_ARGS[*]} " != *" ${args[i]}="* ]]; then
            merged+=("${args[i]}" "${args[i + 1]}")
        fi
    done
    merged+=("${LINK_ARGS[@]}")
    if ! nsx "$NS_WAN" "$bin" up --name "$LINK_NAME" --dev-a wan-a --dev-b wan-b "${merged[@]}" >/dev/null; then
        cmd_down >/dev/null 2>&1 || true
        die "starting linkemu failed"
    fi
    if command -v ping >/dev/null && ! nsx "$NS_SRC" ping -c 1 -W 5 -q $DST_IP >/dev/null; then
        log "warning: src-host cannot ping dst-host yet"
    fi
    cmd_status_short
}

cmd_set() {
    parse_link_args "$@"
    ((${#LINK_ARGS[@]})) || die "set: no link options given (see --help)"
    need_lab_tools
    lab_exists || die "testbed is not up (scripts/lab.sh up)"
    nsx "$NS_WAN" "$(linkemu_bin)" set --name "$LINK_NAME" "${LINK_ARGS[@]}"
}

cmd_status_short() {
    "$(linkemu_bin)" stats --name "$LINK_NAME" | awk '
        NR == 1 { for (i = 1; i <= NF; i++) if ($i ~ /^rate_mbit=/) rate = $i }
        NR > 1 { d = ""; for (i = 1; i <= NF; i++) if ($i ~ /^(dir|delay_ms|jitter_ms|loss_pct)=/) d = d " " $i; print "lab.sh: link" d " " rate }'
}

cmd_status() {
    need_lab_tools
    local ns missing=0
    for ns in "${NAMESPACES[@]}"; do
        if [[ -e /run/netns/$ns ]]; then
            printf '%-9s %s\n' "$ns" "$(ip -n "$ns" -br -4 addr show | awk '$1 != "lo" {printf "%s %s  ", $1, $3}')"
        else
            printf '%-9s (missing)\n' "$ns"
            missing=1
        fi
    done
    ((missing == 0)) || { echo "testbed: down or partial"; return 1; }
    echo "route:    $(ip -n "$NS_SRC" route get $DST_IP | head -1)"
    for ns in "$NS_SRC" "$NS_DST" "$NS_GWA" "$NS_GWB"; do
        printf 'tcp %-9s cc=%s rmem="%s" wmem="%s"\n' "$ns" \
            "$(nsx "$ns" sysctl -n net.ipv4.tcp_congestion_control)" \
            "$(nsx "$ns" sysctl -n net.ipv4.tcp_rmem | tr '\t' ' ')" \
            "$(nsx "$ns" sysctl -n net.ipv4.tcp_wmem | tr '\t' ' ')"
    done
    echo "link:"
    "$(linkemu_bin)" stats --name "$LINK_NAME" | sed 's/^/  /' || echo "  linkemu not running"
    if command -v ping >/dev/null; then
        echo "ping:     $(nsx "$NS_SRC" ping -c 3 -i 0.2 -W 3 -q $DST_IP | tail -1)"
    fi
}

cmd_down() {
    need_lab_tools
    local bin ns pids
    if bin=$(LINKEMU=${LINKEMU:-} linkemu_bin 2>/dev/null); then
        "$bin" down --name "$LINK_NAME" >/dev/null 2>&1 || true
    fi
    for ns in "${NAMESPACES[@]}"; do
        [[ -e /run/netns/$ns ]] || continue
        # Whatever still runs in a lab namespace was started for the lab (gateways, iperf3).
        pids=$(ip netns pids "$ns" 2>/dev/null || true)
        if [[ -n $pids ]]; then
            # shellcheck disable=SC2086  # one pid a word
            kill $pids 2>/dev/null || true
            sleep 0.5
            pids=$(ip netns pids "$ns" 2>/dev/null || true)
            # shellcheck disable=SC2086  # one pid a word
            [[ -z $pids ]] || kill -9 $pids 2>/dev/null || true
        fi
    done
    for ns in "${NAMESPACES[@]}"; do
        [[ -e /run/netns/$ns ]] && ip netns del "$ns"
    done
    rm -rf "$RUN_DIR"
    rm -f "/run/linkemu/$LINK_NAME.log" "/run/linkemu/$LINK_NAME.sock"
    rmdir /run/linkemu 2>/dev/null || true
    echo "lab.sh: testbed down"
}


# ---- the LMAS gateway pair (listen or TPROXY ingress) ----------------------------------------

bin_path() { # NAME ENVVAR PACKAGE
    local name=$1 var=$2 pkg=$3
    if [[ -n ${!var:-} ]]; then
        [[ -x ${!var} ]] || die "$var=${!var} is not executable"
        echo "${!var}"
        return
    fi
    local target=${CARGO_TARGET_DIR:-$REPO/target}
    if [[ ! -x $target/release/$name ]]; then
        log "building $name (cargo build --release -p $pkg)"
        (cd "$REPO" && CARGO_TARGET_DIR=$target cargo build --release -q -p "$pkg") >&2 ||
            die "building $name failed"
    fi
    echo "$target/release/$name"
}

# gw_running: both gateways of the lab's pair are alive.
gw_running() {
    local gw
    for gw in gw-a gw-b; do
        [[ -f $RUN_DIR/$gw.pid ]] && kill -0 "$(cat "$RUN_DIR/$gw.pid")" 2>/dev/null || return 1
    done
}

# gw_start LMAS gw-a|gw-b: runs that gateway of the pair in its namespace with its config
# ($RUN_DIR/gw/NAME.toml), logging to $RUN_DIR/NAME.log; its pid in $RUN_DIR/NAME.pid.
gw_start() {
    local ns=$NS_GWA
    [[ $2 == gw-b ]] && ns=$NS_GWB
    RUST_LOG=${RUST_LOG:-info} ip netns exec "$ns" "$1" run --config "$RUN_DIR/gw/$2.toml" \
        >"$RUN_DIR/$2.log" 2>&1 </dev/null &
    echo $! >"$RUN_DIR/$2.pid"
}

# gw_restart_b: SIGKILL gw-b (a crash: nothing flushed, no shutdown), start it again with its
# config, and wait for its new tunnel to gw-a.
gw_restart_b() {
    gw_running || die "gateways restart-b: the pair is not running (gateways up)"
    local lmas pid
    lmas=$(bin_path lmas LMAS lmas)
    pid=$(cat "$RUN_DIR/gw-b.pid")
    kill -KILL "$pid" 2>/dev/null || true
    for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.05; done
    kill -0 "$pid" 2>/dev/null && die "gateways restart-b: gw-b (pid $pid) did not die"
    mv "$RUN_DIR/gw-b.log" "$RUN_DIR/gw-b.log.killed"
    gw_start "$lmas" gw-b
    for _ in $(seq 300); do
        if all_logged "tunnel up" "$RUN_DIR/gw-b.log"; then
            log "gateways restart-b: gw-b killed (pid $pid) and started again (pid $(cat "$RUN_DIR/gw-b.pid")); its tunnel is up"
            return
        fi
        kill -0 "$(cat "$RUN_DIR/gw-b.pid")" 2>/dev/null || { tail -5 "$RUN_DIR/gw-b.log" >&2; die "restarted gw-b exited"; }
        sleep 0.1
    done
    tail -5 "$RUN_DIR/gw-b.log" >&2
    die "gateways restart-b: gw-b's tunnel not up within 30 s"
}

gw_stop() {
    local gw
    for gw in gw-a gw-b; do
        [[ -f $RUN_DIR/$gw.pid ]] || continue
        stop_pid "$(cat "$RUN_DIR/$gw.pid")"
        rm -f "$RUN_DIR/$gw.pid"
    done
    tproxy_rules del
    rm -f "$RUN_DIR/ingress" "$RUN_DIR/gateways"
}

# dpdk_config FILE NAME LAN WAN PMD: turns the pair config FILE into a DPDK gateway's: its veths
# lan0/wan0 become PMD ports (af_packet or af_xdp) with the addresses LAN and WAN (a /24 each,
# next hop $WAN_IP on the WAN side); no hugepages, and the lcores (main, io, tcp, crypto) float
# over every CPU and sleep when idle: a lab box shared with the link emulator and the hosts,
# not an appliance (docs/DPDK.md).
dpdk_config() {
    local file=$1 name=$2 lan=$3 wan=$4 pmd=$5 vdev_lan vdev_wan
    case $pmd in
        # A deep rx ring: the PMD's default (512 frames) overflows in one burst of a fast flow.
        af_packet)
            vdev_lan="net_af_packet0,iface=lan0,framecnt=8192"
            vdev_wan="net_af_packet1,iface=wan0,framecnt=8192"
            ;;
        af_xdp)
            vdev_lan="net_af_xdp0,iface=lan0,start_queue=0,queue_count=1${LAB_XDP_ARGS:-}"
            vdev_wan="net_af_xdp1,iface=wan0,start_queue=0,queue_count=1${LAB_XDP_ARGS:-}"
            ;;
        *) die "gateways: --pmd is af_packet or af_xdp, not $pmd" ;;
    esac
    local dev_lan=${vdev_lan%%,*} dev_wan=${vdev_wan%%,*} cpus lcores l
    cpus="0-$(($(nproc) - 1))"
    # Lcores 0-7 exist (idle ones wait): room for the roles the LAB_DPDK_* overrides name.
    for l in 0 1 2 3 4 5 6 7; do lcores+="${lcores:+,}$l@($cpus)"; done
    sed -i '/^\[gateway\]/a datapath = "dpdk"' "$file"
    cat >>"$file" <<EOF

[dpdk]
eal_args = ["--no-huge", "-m", "1024", "--no-pci", "--no-telemetry", "--log-level", "error",
            "--lcores=$lcores",
            "--file-prefix", "${LAB_PREFIX}lmas-lab-$name",
            "--vdev=$vdev_lan", "--vdev=$vdev_wan"]
io_lcores = ${LAB_DPDK_IO_LCORES:-[]}
tcp_lcores = ${LAB_DPDK_TCP_LCORES:-[2]}
crypto_lcores = ${LAB_DPDK_CRYPTO_LCORES:-[]}
idle_sleep_us = ${LAB_DPDK_IDLE_SLEEP_US:-50}

[dpdk.lan]
device = "$dev_lan"
address = "$lan/24"

[dpdk.wan]
device = "$dev_wan"
address = "$wan/24"
gateway = "$WAN_IP"
EOF
}

# tproxy_rules add|del: in gw-a, hand TCP from the LAN to $DST_IP:$TARGET_PORT to the
# transparent listener on :$TPROXY_PORT (docs/DEPLOYMENT.md §4; FACTS.md: prerouting only,
# mark-based local route). `del` is idempotent.
tproxy_rules() {
    if [[ $1 == add ]]; then
        tproxy_rules del
        nsx "$NS_GWA" ip rule add fwmark 0x1 lookup 100
        nsx "$NS_GWA" ip route add local 0.0.0.0/0 dev lo table 100
        nsx "$NS_GWA" nft -f - <<NFT
table ip lmas_lab {
    chain prerouting {
        type filter hook prerouting priority mangle; policy accept;
        iifname "lan0" ip daddr $DST_IP tcp dport $TARGET_PORT tproxy to :$TPROXY_PORT meta mark set 0x1 accept
    }
}
NFT
        return
    fi
    [[ -e /run/netns/$NS_GWA ]] || return 0
    nsx "$NS_GWA" nft delete table ip lmas_lab 2>/dev/null || true
    while nsx "$NS_GWA" ip rule del fwmark 0x1 lookup 100 2>/dev/null; do :; done
    nsx "$NS_GWA" ip route flush table 100 2>/dev/null || true
}

# The address a lab client connects to for the gateways' current ingress mode (none: direct).
ingress_addr() {
    case $(cat "$RUN_DIR/ingress" 2>/dev/null) in
        listen) echo "$GWA_LAN_IP:$INGRESS_PORT" ;;
        tproxy) echo "$DST_IP:$TARGET_PORT" ;; # the real destination, intercepted in gw-a
        *) return 1 ;;
    esac
}

cmd_gateways() {
    # empty: the gateway's defaults
    local sub=${1:-} flows=8 cc="" ingress=listen window="" unsent="" unsent_ms="" linkcap="" migcap="" datapath=kernel pmd=af_packet buffer="" compression="" pacing="" reuse=0
    local dedup="" dedup_scope="" dedup_store="" dedup_dir_b="" lane=""
    [[ $# -gt 0 ]] && shift
    while (($#)); do
        case $1 in
            --flows) flows=$2; shift 2 ;;
            --datapath) datapath=$2; shift 2 ;;
            --pmd) pmd=$2; shift 2 ;;
            --buffer) buffer=$2; shift 2 ;;
            --congestion) cc=$2; shift 2 ;;
            --ingress) ingress=$2; shift 2 ;;
            --window) window=$2; shift 2 ;;
            --unsent) unsent=$2; shift 2 ;;
            --unsent-ms) unsent_ms=$2; shift 2 ;;
            --link-cap) linkcap=$2; shift 2 ;;
            --migration-cap) migcap=$2; shift 2 ;;
            --compression) compression=$2; shift 2 ;;
            --pacing) pacing=$2; shift 2 ;;
            --lane) lane=$2; shift 2 ;;
            --dedup) dedup=$2; shift 2 ;;
            --dedup-scope) dedup_scope=$2; shift 2 ;;
            --dedup-store) dedup_store=$2; shift 2 ;;
            --dedup-dir-b) dedup_dir_b=$2; shift 2 ;;
            --reuse) reuse=1; shift ;;
            *) die "gateways: unknown option $1" ;;
        esac
    done
    need_lab_tools
    case $sub in
        down) gw_stop; gw_ports kernel; echo "lab.sh: gateways stopped"; return ;;
        address) ingress_addr || die "gateways are not up"; return ;;
        restart-b) gw_restart_b; return ;;
        up) ;;
        *) die "gateways up [--datapath kernel|dpdk] [--pmd af_packet|af_xdp] [--flows N] [--congestion CC] [--ingress listen|tproxy] [--window BYTES] [--unsent BYTES] [--unsent-ms MS] [--link-cap MBIT] [--migration-cap MBIT] [--buffer BYTES] [--compression MODE] [--pacing tunnel|flows] [--lane on|off|auto] [--dedup auto|off] [--dedup-scope migration|tunnel] [--dedup-store BYTES] [--dedup-dir-b DIR] [--reuse] | gateways restart-b | gateways down | gateways address" ;;
    esac
    [[ $ingress == listen || $ingress == tproxy ]] || die "gateways: --ingress is listen or tproxy, not $ingress"
    [[ $datapath == kernel || $datapath == dpdk ]] || die "gateways: --datapath is kernel or dpdk, not $datapath"
    [[ -z $buffer || $buffer =~ ^[0-9]+$ ]] || die "gateways: --buffer takes a number of bytes, got $buffer"
    [[ $flows =~ ^[0-9]+$ ]] || die "gateways: --flows takes a number, got $flows"
    [[ -z $window || $window =~ ^[0-9]+$ ]] || die "gateways: --window takes a number of bytes, got $window"
    [[ -z $unsent || $unsent =~ ^[0-9]+$ ]] || die "gateways: --unsent takes a number of bytes, got $unsent"
    [[ -z $unsent_ms || $unsent_ms =~ ^[0-9]+$ ]] || die "gateways: --unsent-ms takes milliseconds, got $unsent_ms"
    [[ -z $linkcap || $linkcap =~ ^[0-9]+$ ]] || die "gateways: --link-cap takes Mbit/s, got $linkcap"
    [[ -z $migcap || $migcap =~ ^[0-9]+$ ]] || die "gateways: --migration-cap takes Mbit/s, got $migcap"
    [[ -z $dedup || $dedup == auto || $dedup == off ]] || die "gateways: --dedup is auto or off, not $dedup"
    [[ -z $lane || $lane == on || $lane == off || $lane == auto ]] || die "gateways: --lane is on, off or auto, not $lane"
    [[ -z $dedup_scope || $dedup_scope == migration || $dedup_scope == tunnel ]] ||
        die "gateways: --dedup-scope is migration or tunnel, not $dedup_scope"
    [[ -z $dedup_store || $dedup_store =~ ^[0-9]+$ ]] || die "gateways: --dedup-store takes a number of bytes, got $dedup_store"
    [[ -z $dedup_dir_b || $dedup_dir_b == /* ]] || die "gateways: --dedup-dir-b takes an absolute path, got $dedup_dir_b"
    lab_exists || die "testbed is not up (scripts/lab.sh up)"
    # What runs, for scripts that reuse a running pair (--reuse).
    local ports=$datapath state
    [[ $datapath == kernel ]] || ports+="/$pmd"
    state="datapath=$ports ingress=$ingress flows=$flows congestion=${cc:-default} window=${window:-default} unsent=${unsent:-default} unsent_ms=${unsent_ms:-default} linkcap=${linkcap:-none} migcap=${migcap:-none} compression=${compression:-default} pacing=${pacing:-default} lane=${lane:-default} buffer=${buffer:-default}"
    state+=" dedup=${dedup:-default} dedup_scope=${dedup_scope:-default} dedup_store=${dedup_store:-default} dedup_dir_b=${dedup_dir_b:-none}"
    if ((reuse)) && [[ $(cat "$RUN_DIR/gateways" 2>/dev/null) == "$state" ]] && gw_running; then
        log "gateways up: kept the running pair ($state)"
        return
    fi
    local lmas dir=$RUN_DIR/gw
    lmas=$(bin_path lmas LMAS lmas)
    gw_stop
    mkdir -p "$dir"
    [[ -f $dir/gw-a.key ]] || "$lmas" keygen --out "$dir/gw-a.key" >/dev/null
    [[ -f $dir/gw-b.key ]] || "$lmas" keygen --out "$dir/gw-b.key" >/dev/null
    local wan_lines=${cc:+congestion = \"$cc\"}
    [[ -z $buffer ]] || wan_lines+=${wan_lines:+$'\n'}"socket_buffer_bytes = $buffer"
    [[ -z $compression ]] || wan_lines+=${wan_lines:+$'\n'}"compression = \"$compression\""
    [[ -z $pacing ]] || wan_lines+=${wan_lines:+$'\n'}"pacing = \"$pacing\""
    [[ -z $lane ]] || wan_lines+=${wan_lines:+$'\n'}"lane = \"$lane\""
    [[ -z $dedup ]] || wan_lines+=${wan_lines:+$'\n'}"dedup = \"$dedup\""
    [[ -z $dedup_scope ]] || wan_lines+=${wan_lines:+$'\n'}"dedup_scope = \"$dedup_scope\""
    [[ -z $dedup_store ]] || wan_lines+=${wan_lines:+$'\n'}"dedup_store_bytes = $dedup_store"
    write_pair_configs "$dir" gw-a.key gw-b.key "$GWB_WAN_IP:$GW_PORT" "$GWA_LAN_IP:$INGRESS_PORT" \
        "$DST_IP:$TARGET_PORT" "$flows" "# written by scripts/lab.sh gateways up" \
        "# written by scripts/lab.sh gateways up" "$wan_lines"
    [[ -z $dedup_dir_b ]] || sed -i "/^\[wan\]/a dedup_dir = \"$dedup_dir_b\"" "$dir/gw-b.toml"
    # The second migration's way in (migrate.sh --slot 1), and gw-b's leave to reach it.
    printf '\n[[ingress]]\nmode = "listen"\nbind = "%s"\ntarget = "%s"\n' \
        "$GWA_LAN_IP:$INGRESS2_PORT" "$DST_IP:$TARGET2_PORT" >>"$dir/gw-a.toml"
    sed -i "s|^allow = \[\"$DST_IP:$TARGET_PORT\"\]|allow = [\"$DST_IP:$TARGET_PORT\", \"$DST_IP:$TARGET2_PORT\"]|" "$dir/gw-b.toml"
    # A kernel gateway's transparent listener gets the connection from the TPROXY rule; a DPDK
    # one terminates the destination's address itself (any-IP on its LAN port), on the
    # destination's own port.
    local tproxy_port=$TPROXY_PORT
    [[ $datapath == kernel ]] || tproxy_port=$TARGET_PORT
    if [[ $ingress == tproxy ]]; then
        # Transparent ingress: no target, the original destination travels with the session.
        sed -i '/^\[\[ingress\]\]/,$d' "$dir/gw-a.toml"
        printf '[[ingress]]\nmode = "tproxy"\nbind = "0.0.0.0:%s"\n' "$tproxy_port" >>"$dir/gw-a.toml"
        [[ $datapath == dpdk ]] || tproxy_rules add
    fi
    gw_ports "$datapath"
    if [[ $datapath == dpdk ]]; then
        dpdk_config "$dir/gw-a.toml" gw-a "$GWA_LAN_IP" "$GWA_WAN_IP" "$pmd"
        dpdk_config "$dir/gw-b.toml" gw-b "$GWB_LAN_IP" "$GWB_WAN_IP" "$pmd"
        [[ $ingress != tproxy ]] || sed -i "/^\[dpdk.lan\]/a intercept = [\"$DST_IP/32\"]" "$dir/gw-a.toml"
    fi
    # The lab's own admin sockets: the default /run/lmas/NAME.sock may belong to another pair
    # on this host (tests name their gateways gw-a and gw-b too), and `lmas status` would then
    # show that one.
    printf '\n[admin]\nsocket = "%s"\n' "$dir/gw-a.sock" >>"$dir/gw-a.toml"
    printf '\n[admin]\nsocket = "%s"\n' "$dir/gw-b.sock" >>"$dir/gw-b.toml"
    if [[ -n $window || -n $unsent || -n $unsent_ms || -n $linkcap || -n $migcap ]]; then
        local limits=$'\n[limits]\n'
        [[ -z $window ]] || limits+="session_window_bytes = $window"$'\n'
        [[ -z $unsent ]] || limits+="unsent_bytes = $unsent"$'\n'
        [[ -z $unsent_ms ]] || limits+="unsent_ms = $unsent_ms"$'\n'
        [[ -z $linkcap ]] || limits+="link_rate_mbit = $linkcap"$'\n'
        [[ -z $migcap ]] || limits+="migration_rate_mbit = $migcap"$'\n'
        printf '%s' "$limits" | tee -a "$dir/gw-a.toml" >>"$dir/gw-b.toml"
    fi
    # The WAN flows are long-lived: keep their congestion window across idle gaps between
    # sessions (the kernel default restarts it from the initial window after one RTO idle).
    # A gateway host setting, recommended in docs/DEPLOYMENT.md.
    nsx "$NS_GWA" sysctl -qw net.ipv4.tcp_slow_start_after_idle=0
    nsx "$NS_GWB" sysctl -qw net.ipv4.tcp_slow_start_after_idle=0
    local gw
    for gw in gw-b gw-a; do
        "$lmas" check-config "$dir/$gw.toml" >/dev/null || die "$gw config rejected (see $dir/$gw.toml)"
        gw_start "$lmas" "$gw"
    done
    local ready="listening on $GWA_LAN_IP:$INGRESS_PORT"
    [[ $ingress == tproxy ]] && ready="listening on 0.0.0.0:$tproxy_port"
    for _ in $(seq 200); do
        if all_logged "tunnel up" "$RUN_DIR/gw-a.log" "$RUN_DIR/gw-b.log" && all_logged "$ready" "$RUN_DIR/gw-a.log"; then
            echo "$ingress" >"$RUN_DIR/ingress"
            echo "$state" >"$RUN_DIR/gateways"
            local via
            via="src-host connects to $(ingress_addr)"
            [[ $ingress == tproxy ]] && via="src-host connects to $DST_IP:$TARGET_PORT, intercepted in gw-a"
            local dp=$datapath
            [[ $datapath == kernel ]] || dp+=" ($pmd)"
            log "gateways up: $dp datapath, $ingress ingress ($via), $flows data flows, WAN congestion control ${cc:-default} (logs: $RUN_DIR/gw-*.log)"
            return
        fi
        for gw in gw-a gw-b; do
            kill -0 "$(cat "$RUN_DIR/$gw.pid")" 2>/dev/null ||
                { tail -5 "$RUN_DIR/$gw.log" >&2; gw_stop; die "$gw exited"; }
        done
        sleep 0.1
    done
    tail -5 "$RUN_DIR"/gw-*.log >&2
    gw_stop
    die "gateways: not up (tunnel and ingress) within 20 s"
}

# sessions_seen: how many sessions gw-a has logged from src-host to the lab destination.
sessions_seen() {
    grep -c -- "$SRC_IP:[0-9]* -> $DST_IP:$TARGET_PORT" "$RUN_DIR/gw-a.log" 2>/dev/null || true
}

# transfer [--bytes N] [--direct] [--payload KIND] [--seed S]: one sized transfer src-host → dst-host through the gateways
# (or direct), SHA-256 compared at the receiver. Prints the goodput in Mbit/s on stdout.
cmd_transfer() {
    local bytes=$((64 * 1024 * 1024)) direct=0 timeout=600 max_secs="" payload="" seed=""
    while (($#)); do
        case $1 in
            --bytes) bytes=$2; shift 2 ;;
            --max-secs) max_secs=$2; shift 2 ;;
            --direct) direct=1; shift ;;
            --timeout) timeout=$2; shift 2 ;;
            --payload) payload=$2; shift 2 ;;
            --seed) seed=$2; shift 2 ;;
            *) die "transfer: unknown option $1" ;;
        esac
    done
    is_size "$bytes" || die "transfer: --bytes takes a byte count such as 1073741824 or 1G, got $bytes"
    [[ -z $payload || $payload == random || $payload == text || $payload == guest ]] ||
        die "transfer: --payload is random, text or guest, not $payload"
    [[ -z $seed || $seed =~ ^[0-9]+$ ]] || die "transfer: --seed takes a whole number, got $seed"
    need_lab_tools
    lab_exists || die "testbed is not up (scripts/lab.sh up)"
    local load to sink_out src_out sink_pid seen0=0
    load=$(bin_path lmas-load LMAS_LOAD lmas-tests)
    if ((direct)); then
        [[ $(cat "$RUN_DIR/ports" 2>/dev/null) != dpdk ]] ||
            die "transfer --direct: DPDK gateways own gw-a's and gw-b's ports, nothing routes; run 'gateways down' first"
        [[ $(cat "$RUN_DIR/ingress" 2>/dev/null) != tproxy ]] ||
            die "transfer --direct: the gateways intercept $DST_IP:$TARGET_PORT (TPROXY); run 'gateways down' first"
        to=$DST_IP:$TARGET_PORT
    else
        to=$(ingress_addr) || die "transfer: the gateways are not up (scripts/lab.sh gateways up), or use --direct"
        seen0=$(sessions_seen)
    fi
    sink_out=$(mktemp) src_out=$(mktemp)
    ip netns exec "$NS_DST" timeout "$timeout" "$load" sink --listen "$DST_IP:$TARGET_PORT" >"$sink_out" 2>&1 &
    sink_pid=$!
    for _ in $(seq 50); do grep -q "listening" "$sink_out" && break; sleep 0.1; done
    local rc=0
    # On a terminal the source draws its progress bar there (its errors too); else into the file.
    local src_err=$src_out
    [[ -t 2 ]] && src_err=/dev/stderr
    ip netns exec "$NS_SRC" timeout "$timeout" "$load" source --connect "$to" --bytes "$bytes" \
        ${payload:+--payload "$payload"} ${seed:+--seed "$seed"} ${max_secs:+--max-secs "$max_secs"} >"$src_out" 2>>"$src_err" || rc=$?
    if ((rc != 0)); then
        # The sink may never see a connection: do not wait for its timeout.
        sleep 1
        kill "$sink_pid" 2>/dev/null || true
    fi
    local sink_rc=0
    wait "$sink_pid" || sink_rc=$?
    ((rc != 0)) || rc=$sink_rc
    local src_line sink_line
    src_line=$(grep -o 'bytes=.*' "$src_out" | tail -1 || true)
    sink_line=$(grep -o 'bytes=.*' "$sink_out" | tail -1 || true)
    log "source: ${src_line:-$(tail -1 "$src_out")}"
    log "sink:   ${sink_line:-$(tail -1 "$sink_out")}"
    rm -f "$sink_out" "$src_out"
    ((rc == 0)) || die "transfer failed (exit $rc)"
    local sh_src sh_sink n_sink n_src secs
    sh_src=$(field sha256 "$src_line")
    sh_sink=$(field sha256 "$sink_line")
    n_sink=$(field bytes "$sink_line")
    secs=$(field secs "$sink_line")
    n_src=$(field bytes "$src_line")
    [[ -n $sh_src && $sh_src == "$sh_sink" && $n_sink == "$n_src" ]] ||
        die "transfer corrupted: sent ${n_src:-?} bytes sha256=$sh_src, received ${n_sink:-?} bytes sha256=${sh_sink:-?}"
    ((direct)) || (($(sessions_seen) > seen0)) ||
        die "transfer: gw-a logged no session $SRC_IP -> $DST_IP:$TARGET_PORT: it did not go through the gateways"
    # The tail: from the source's last write returning to its last byte reaching the sink (one
    # clock: both namespaces are on this host), the one-way delay included. What the path holds
    # behind a sender that stops, as a paused guest's last pages are (bench-wan's tail_ms).
    local stopped last
    stopped=$(field stopped_unix "$src_line")
    last=$(field last_unix "$sink_line")
    [[ -z $stopped || -z $last || $last == none ]] ||
        log "tail_ms=$(awk -v a="$stopped" -v b="$last" 'BEGIN { printf "%.1f", (b - a) * 1000 }')"
    awk -v b="$n_sink" -v s="$secs" 'BEGIN { if (s > 0) printf "%.1f\n", b * 8 / s / 1e6; else print "nan" }'
}

cmd=${1:-}
[[ $# -gt 0 ]] && shift
case $cmd in
    up) cmd_up "$@" ;;
    set) cmd_set "$@" ;;
    status) cmd_status ;;
    down) cmd_down ;;
    exec)
        need_lab_tools
        (($# >= 2)) || die "exec NS CMD..."
        ns=$1
        shift
        exec ip netns exec "$ns" "$@"
        ;;
    linkemu-path) linkemu_bin ;;
    gateways) cmd_gateways "$@" ;;
    transfer) cmd_transfer "$@" ;;
    -h | --help | help) usage ;;
    "") usage >&2; exit 2 ;;
    *) die "unknown command: $cmd (see --help)" ;;
esac

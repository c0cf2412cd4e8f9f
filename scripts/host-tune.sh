#!/usr/bin/env bash
# host-tune.sh: tune a gateway host's kernel for long fat WAN flows, or check it (--check).
set -euo pipefail

usage() {
    cat <<'EOF'
Usage: scripts/host-tune.sh [--check] [--persist] [--iface IF]... [--buffer BYTES] [--help]

Tunes the gateway host's kernel for the WAN side of LMAS, printing one line per setting:
  net.core.rmem_max, net.core.wmem_max     raised to BYTES (socket buffers above these need
                                           CAP_NET_ADMIN; the gateway asks 32 MiB per flow)
  net.ipv4.tcp_rmem, net.ipv4.tcp_wmem     maximum raised to BYTES (autotuning ceiling)
  net.ipv4.tcp_slow_start_after_idle       0 (long-lived WAN flows keep their window
                                           between migrations)
  BBR                                      available (loads tcp_bbr if needed) and in
                                           net.ipv4.tcp_allowed_congestion_control
It only ever raises limits, never lowers them, and leaves the host's default congestion
control alone (the gateway picks BBR for its own sockets). It also checks, and only reports,
the MTU and the segmentation/receive offloads (TSO, GSO, GRO) of the WAN interfaces.
Running it twice changes nothing the second time.

Options:
  --check        only report what it would change (no root needed); exit 1 if anything would
  --persist      also write the settings to /etc/sysctl.d/90-lmas.conf (applied at boot)
  --iface IF     an interface to check (repeatable; default: the default route's interfaces)
  --buffer BYTES the buffer limit to reach (default 67108864 = 64 MiB)
  -h, --help     show this help

Needs root unless --check. Exit status: 0 done (or nothing to change), 1 changes needed
(--check) or an error.
EOF
}

PROG=host-tune.sh
# shellcheck source-path=SCRIPTDIR source=lib/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib/common.sh"

CHECK=0
PERSIST=0
BUFFER=$((64 << 20))
IFACES=()
while (($#)); do
    case "$1" in
        -h | --help) usage; exit 0 ;;
        --check) CHECK=1 ;;
        --persist) PERSIST=1 ;;
        --iface) IFACES+=("${2:?--iface needs an interface name}"); shift ;;
        --buffer) BUFFER=${2:?--buffer needs a number of bytes}; shift ;;
        *) log "unknown argument: $1"; usage >&2; exit 2 ;;
    esac
    shift
done
[[ $BUFFER =~ ^[0-9]+$ ]] || die "--buffer: not a number of bytes: $BUFFER"
((CHECK)) || need_root "change kernel settings; --check only looks"

PENDING=0     # settings that differ from the target
PERSISTED=()  # NAME=VALUE lines for --persist

# report STATE TEXT: one aligned line on stdout.
report() { printf '%-8s %s\n' "$1" "$2"; }

# set_sysctl NAME VALUE: applies (or, with --check, announces) NAME=VALUE.
set_sysctl() {
    local name=$1 want=$2 have
    have=$(sysctl_get "$name")
    PERSISTED+=("$name = $want")
    if [[ $have == "$want" ]]; then
        report ok "$name = $have"
        return
    fi
    PENDING=$((PENDING + 1))
    if ((CHECK)); then
        report change "$name: $have -> $want"
    else
        sysctl -qw "$name=$want" || die "cannot set $name=$want"
        report changed "$name: $have -> $(sysctl_get "$name")"
    fi
}

# at_least NAME: raises a single-number sysctl NAME to BUFFER.
at_least() {
    local have
    have=$(sysctl_get "$1")
    [[ -n $have ]] || { report skip "$1 (not on this kernel)"; return; }
    if ((have >= BUFFER)); then set_sysctl "$1" "$have"; else set_sysctl "$1" "$BUFFER"; fi
}

# max_at_least NAME: raises the third number of a "min default max" sysctl NAME to BUFFER.
max_at_least() {
    local min def max
    read -r min def max <<<"$(sysctl_get "$1")"
    [[ -n ${max:-} ]] || { report skip "$1 (not on this kernel)"; return; }
    ((max >= BUFFER)) || max=$BUFFER
    set_sysctl "$1" "$min $def $max"
}

at_least net.core.rmem_max
at_least net.core.wmem_max
max_at_least net.ipv4.tcp_rmem
max_at_least net.ipv4.tcp_wmem

# The WAN flows live as long as the tunnel; by default the kernel shrinks an idle flow's
# congestion window back to the initial window after one RTO without traffic, so each
# migration after a pause would ramp up slowly again (seconds at RTT 200 ms).
set_sysctl net.ipv4.tcp_slow_start_after_idle 0

# BBR: available (built in or module), then allowed for unprivileged sockets.
if ! grep -qw bbr /proc/sys/net/ipv4/tcp_available_congestion_control; then
    if ((CHECK)); then
        report change "tcp_bbr: not available; would load the module"
        PENDING=$((PENDING + 1))
    elif modprobe tcp_bbr 2>/dev/null && grep -qw bbr /proc/sys/net/ipv4/tcp_available_congestion_control; then
        report changed "tcp_bbr: module loaded"
    else
        report warn "BBR is not available on this kernel: the gateway falls back to cubic"
    fi
fi
if grep -qw bbr /proc/sys/net/ipv4/tcp_available_congestion_control || ((CHECK)); then
    allowed=$(sysctl_get net.ipv4.tcp_allowed_congestion_control)
    if grep -qw bbr <<<"$allowed"; then
        set_sysctl net.ipv4.tcp_allowed_congestion_control "$allowed"
    else
        set_sysctl net.ipv4.tcp_allowed_congestion_control "${allowed:+$allowed }bbr"
    fi
fi

# MTU and offloads: reported only (changing a NIC is the operator's call).
if ((${#IFACES[@]} == 0)); then
    mapfile -t IFACES < <(ip -o route show default 2>/dev/null | awk '{for (i = 1; i < NF; i++) if ($i == "dev") print $(i + 1)}' | sort -u)
fi
((${#IFACES[@]})) || report warn "no default route: pass --iface IF to check the WAN interface"
for ifc in "${IFACES[@]}"; do
    [[ -e /sys/class/net/$ifc ]] || { report warn "$ifc: no such interface"; continue; }
    mtu=$(cat "/sys/class/net/$ifc/mtu")
    if ((mtu < 1500)); then
        report warn "$ifc: MTU $mtu (below 1500: more packets per byte; check the path MTU)"
    else
        report ok "$ifc: MTU $mtu"
    fi
    if ! command -v ethtool >/dev/null; then
        report skip "$ifc: offloads (ethtool not installed)"
        continue
    fi
    features=$(ethtool -k "$ifc" 2>/dev/null || true)
    for f in tcp-segmentation-offload generic-segmentation-offload generic-receive-offload; do
        state=$(awk -F': ' -v f="$f" '$1 == f {print $2}' <<<"$features")
        case "$state" in
            on*) report ok "$ifc: $f on" ;;
            off*) report warn "$ifc: $f off (more CPU per byte at high rates; ethtool -K $ifc ...)" ;;
            *) report skip "$ifc: $f (not reported)" ;;
        esac
    done
done

if ((PERSIST)); then
    conf=/etc/sysctl.d/90-lmas.conf
    content=$(printf '# Written by LMAS scripts/host-tune.sh: WAN socket buffer limits and BBR.\n'; printf '%s\n' "${PERSISTED[@]}")
    if [[ -f $conf && $(cat "$conf") == "$content" ]]; then
        report ok "$conf up to date"
    elif ((CHECK)); then
        report change "$conf: would write ${#PERSISTED[@]} settings"
        PENDING=$((PENDING + 1))
    else
        printf '%s\n' "$content" >"$conf"
        report changed "$conf: wrote ${#PERSISTED[@]} settings"
    fi
fi

if ((CHECK)); then
    if ((PENDING)); then
        log "$PENDING setting(s) would change; run without --check (as root) to apply"
        exit 1
    fi
    log "nothing to change"
elif ((PENDING)); then
    log "changed $PENDING setting(s)"
else
    log "nothing to change"
fi

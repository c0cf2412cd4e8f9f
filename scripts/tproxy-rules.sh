#!/usr/bin/env bash
# tproxy-rules.sh: the nft TPROXY rules and policy routing for a gateway's transparent ingress.
set -euo pipefail

usage() {
    cat <<'EOF'
Usage: scripts/tproxy-rules.sh up --port LPORT --dports PORTS [--iif IF] [options]
       scripts/tproxy-rules.sh down [options]
       scripts/tproxy-rules.sh status [options]

Intercepts TCP connections routed through this host to destination ports PORTS and hands them
to the gateway's tproxy ingress listening on port LPORT (an [[ingress]] with mode = "tproxy"
and bind = "0.0.0.0:LPORT"). The gateway then carries each one to its original destination.

  up       installs (or replaces) the rules; running it again changes nothing
  down     removes them; running it again changes nothing
  status   shows them; exit 0 if they are all in place, 1 if not

What "up" sets (IPv4; see docs/DEPLOYMENT.md):
  ip rule add fwmark MARK lookup TABLE              marked packets are delivered locally...
  ip route replace local 0.0.0.0/0 dev lo table TABLE
  nft table ip NFT_TABLE, chain prerouting (hook prerouting, priority mangle):
    meta l4proto tcp socket transparent 1 meta mark set MARK accept
                                                    ...packets of intercepted connections
    [iifname IF] tcp dport PORTS tproxy to :LPORT meta mark set MARK accept
                                                    ...new connections to the listener
TPROXY works in prerouting only: connections made on the gateway host itself are never
intercepted. The listener needs IP_TRANSPARENT (CAP_NET_ADMIN): the gateway sets it.

Options:
  --port LPORT       the gateway's tproxy listener port (up)
  --dports PORTS     ports to intercept, nft syntax: 49152-49215, or 8000,8001 (up)
  --iif IF           intercept only what arrives on IF (the hypervisor-facing side)
  --mark MARK        firewall mark (default 0x1)
  --table N          routing table for marked packets (default 100)
  --nft-table NAME   nft table (family ip) holding the rules (default lmas)
  -h, --help         show this help

Needs root (nft, ip rule). Exit status: 0 done, 1 error (or, for status, not in place).
EOF
}

PROG=tproxy-rules.sh
# shellcheck source-path=SCRIPTDIR source=lib/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib/common.sh"

ACTION=
LPORT=
DPORTS=
IIF=
MARK=0x1
TABLE=100
NFT_TABLE=lmas
while (($#)); do
    case "$1" in
        -h | --help) usage; exit 0 ;;
        up | down | status) ACTION=$1 ;;
        --port) LPORT=${2:?--port needs a port}; shift ;;
        --dports) DPORTS=${2:?--dports needs ports}; shift ;;
        --iif) IIF=${2:?--iif needs an interface}; shift ;;
        --mark) MARK=${2:?--mark needs a mark}; shift ;;
        --table) TABLE=${2:?--table needs a number}; shift ;;
        --nft-table) NFT_TABLE=${2:?--nft-table needs a name}; shift ;;
        *) log "unknown argument: $1"; usage >&2; exit 2 ;;
    esac
    shift
done
[[ -n $ACTION ]] || { log "say up, down or status"; usage >&2; exit 2; }
[[ $MARK =~ ^(0x[0-9a-fA-F]+|[0-9]+)$ ]] || die "--mark: not a number: $MARK"
[[ $TABLE =~ ^[0-9]+$ ]] || die "--table: not a number: $TABLE"
[[ $NFT_TABLE =~ ^[A-Za-z][A-Za-z0-9_-]*$ ]] || die "--nft-table: not a table name: $NFT_TABLE"
need_root "change netfilter rules and policy routing"
command -v nft >/dev/null || die "nft not found (apt-get install nftables)"

# The rule as `ip rule show` prints it (marks in hex).
RULE="fwmark $(printf '0x%x' "$MARK") lookup $TABLE"

# (Here-strings, not pipes: with pipefail, `grep -q` quitting early made `ip` die of SIGPIPE
# and the check fail at random.)
rule_present() { grep -q -- "$RULE\$" <<<"$(ip rule show)"; }
route_present() { grep -q '^local default dev lo' <<<"$(ip route show table "$TABLE" 2>/dev/null)"; }
nft_present() { nft list table ip "$NFT_TABLE" >/dev/null 2>&1; }

case $ACTION in
    up)
        if ! [[ $LPORT =~ ^[0-9]+$ ]] || ((LPORT < 1 || LPORT > 65535)); then
            die "--port: need the listener's port (1-65535), got '${LPORT}'"
        fi
        [[ $DPORTS =~ ^[0-9]+(-[0-9]+)?(,[0-9]+(-[0-9]+)?)*$ ]] || die "--dports: need ports like 49152-49215 or 8000,8001, got '${DPORTS}'"
        match="tcp dport { $DPORTS }"
        [[ -z $IIF ]] || match="iifname \"$IIF\" $match"
        if rule_present; then log "ip rule ($RULE): present"; else
            ip rule add fwmark "$MARK" lookup "$TABLE"
            log "ip rule ($RULE): added"
        fi
        ip route replace local 0.0.0.0/0 dev lo table "$TABLE"
        log "route local 0.0.0.0/0 dev lo table $TABLE: in place"
        # One transaction: create (if missing), delete, recreate: the same result every time.
        nft -f - <<NFT
table ip $NFT_TABLE
delete table ip $NFT_TABLE
table ip $NFT_TABLE {
    chain prerouting {
        type filter hook prerouting priority mangle; policy accept;
        meta l4proto tcp socket transparent 1 meta mark set $MARK accept
        $match tproxy to :$LPORT meta mark set $MARK accept
    }
}
NFT
        log "nft table ip $NFT_TABLE: ${IIF:+$IIF }tcp dport $DPORTS -> tproxy :$LPORT"
        ;;
    down)
        if nft_present; then nft delete table ip "$NFT_TABLE"; log "nft table ip $NFT_TABLE: deleted"; else
            log "nft table ip $NFT_TABLE: absent"
        fi
        while rule_present; do ip rule del fwmark "$MARK" lookup "$TABLE"; log "ip rule ($RULE): deleted"; done
        if route_present; then ip route del local 0.0.0.0/0 dev lo table "$TABLE"; log "route table $TABLE: deleted"; else
            log "route table $TABLE: absent"
        fi
        ;;
    status)
        ok=1
        if rule_present; then echo "ip rule: $RULE"; else echo "ip rule: missing ($RULE)"; ok=0; fi
        if route_present; then echo "route: local default dev lo table $TABLE"; else echo "route: missing (table $TABLE)"; ok=0; fi
        if nft_present; then nft list table ip "$NFT_TABLE"; else echo "nft: table ip $NFT_TABLE missing"; ok=0; fi
        ((ok)) || exit 1
        ;;
esac

#!/usr/bin/env bash
# install.sh: place the lmas binary, its systemd unit, bring-up scripts and example configs.
set -euo pipefail

usage() {
    cat <<'EOF'
Usage: scripts/install.sh [--prefix DIR] [--destdir DIR] [--sysconfdir DIR] [--unitdir DIR]
                          [--bin PATH] [--no-user] [--help]

Installs (paths shown with the defaults):
  PREFIX/bin/lmas                          the gateway (from --bin, $LMAS_BIN or
                                           target/release/lmas: build it first with
                                           cargo build --release -p lmas)
  PREFIX/lib/lmas/host-tune.sh             host tuning (socket buffers, BBR, MTU/offload check)
  PREFIX/lib/lmas/tproxy-rules.sh          TPROXY rules for transparent ingress
  PREFIX/share/doc/lmas/DEPLOYMENT.md      the bring-up guide
  UNITDIR/lmas@.service                    systemd unit: lmas@NAME runs SYSCONFDIR/lmas/NAME.toml
  SYSCONFDIR/lmas/examples/*.toml          example configs (your own configs are never touched)
and, when installing onto this system (no --destdir), the system user and group "lmas" the
unit runs as, and `systemctl daemon-reload` if systemd runs.

Every file is (re)written only if it differs; running it twice changes nothing the second time.

Options:
  --prefix DIR       default /usr/local
  --destdir DIR      stage the files under DIR (for packaging and tests); no user, no systemctl
  --sysconfdir DIR   default /etc
  --unitdir DIR      default SYSCONFDIR/systemd/system
  --bin PATH         the lmas binary to install
  --no-user          do not create the lmas user and group
  -h, --help         show this help

Needs root unless --destdir is given.
EOF
}

PROG=install.sh
# shellcheck source-path=SCRIPTDIR source=lib/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib/common.sh"
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)

PREFIX=/usr/local
DESTDIR=
SYSCONFDIR=/etc
UNITDIR=
BIN=${LMAS_BIN:-${CARGO_TARGET_DIR:-$REPO/target}/release/lmas}
USER_TOO=1
while (($#)); do
    case "$1" in
        -h | --help) usage; exit 0 ;;
        --prefix) PREFIX=${2:?--prefix needs a directory}; shift ;;
        --destdir) DESTDIR=${2:?--destdir needs a directory}; shift ;;
        --sysconfdir) SYSCONFDIR=${2:?--sysconfdir needs a directory}; shift ;;
        --unitdir) UNITDIR=${2:?--unitdir needs a directory}; shift ;;
        --bin) BIN=${2:?--bin needs a path}; shift ;;
        --no-user) USER_TOO=0 ;;
        *) log "unknown argument: $1"; usage >&2; exit 2 ;;
    esac
    shift
done
for dir in "$PREFIX" "$SYSCONFDIR" ${UNITDIR:+"$UNITDIR"}; do
    [[ $dir == /* ]] || die "install paths must be absolute: $dir"
done
UNITDIR=${UNITDIR:-$SYSCONFDIR/systemd/system}
[[ -n $DESTDIR ]] || need_root "install into $PREFIX and $SYSCONFDIR (or stage with --destdir DIR)"
[[ -x $BIN ]] || die "no lmas binary at $BIN: run 'cargo build --release -p lmas' first (or pass --bin PATH)"

BINDIR=$PREFIX/bin
LIBDIR=$PREFIX/lib/lmas
DOCDIR=$PREFIX/share/doc/lmas
CHANGED=0

# put MODE SRC DEST: installs SRC as DESTDIR/DEST with MODE unless it is already identical.
put() {
    local mode=$1 src=$2 dest=$DESTDIR$3
    if [[ -f $dest ]] && cmp -s "$src" "$dest" && [[ $(stat -c %a "$dest") == "${mode#0}" ]]; then
        log "unchanged $3"
        return
    fi
    install -D -m "$mode" "$src" "$dest"
    log "installed $3"
    CHANGED=$((CHANGED + 1))
}

put 0755 "$BIN" "$BINDIR/lmas"
put 0755 "$REPO/scripts/host-tune.sh" "$LIBDIR/host-tune.sh"
put 0755 "$REPO/scripts/tproxy-rules.sh" "$LIBDIR/tproxy-rules.sh"
put 0755 "$REPO/scripts/dpdk-setup.sh" "$LIBDIR/dpdk-setup.sh"
put 0644 "$REPO/scripts/lib/common.sh" "$LIBDIR/lib/common.sh"
put 0644 "$REPO/scripts/lib/dpdk_check.py" "$LIBDIR/lib/dpdk_check.py"
put 0644 "$REPO/docs/DEPLOYMENT.md" "$DOCDIR/DEPLOYMENT.md"
for example in "$REPO"/examples/*.toml; do
    put 0644 "$example" "$SYSCONFDIR/lmas/examples/$(basename "$example")"
done

# The unit with this installation's paths filled in.
unit=$(mktemp)
trap 'rm -f "$unit"' EXIT
sed -e "s|@BINDIR@|$BINDIR|g" -e "s|@SYSCONFDIR@|$SYSCONFDIR|g" -e "s|@DOCDIR@|$DOCDIR|g" \
    "$REPO/scripts/systemd/lmas@.service" >"$unit"
put 0644 "$unit" "$UNITDIR/lmas@.service"

if [[ -n $DESTDIR ]]; then
    log "staged under $DESTDIR ($CHANGED file(s) changed); no user created, systemd not told"
    exit 0
fi
# The config directory: readable by the service, not by everyone (it names the key files).
install -d -m 0750 "$SYSCONFDIR/lmas"
if ((USER_TOO)); then
    if getent passwd lmas >/dev/null; then
        log "user lmas: present"
    else
        useradd --system --user-group --no-create-home --home-dir /nonexistent \
            --shell /usr/sbin/nologin --comment "LMAS gateway" lmas
        log "user lmas: created"
    fi
    chgrp lmas "$SYSCONFDIR/lmas"
fi
if [[ -d /run/systemd/system ]]; then
    systemctl daemon-reload
    log "systemd reloaded: enable a gateway with 'systemctl enable --now lmas@NAME'"
fi
log "done ($CHANGED file(s) changed); next: docs/DEPLOYMENT.md, section 'Running as a service'"

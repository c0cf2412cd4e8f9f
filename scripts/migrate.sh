#!/usr/bin/env bash
# migrate.sh: one real QEMU live migration across the WAN lab, src-host → dst-host, direct or
# through the LMAS gateway pair, with or without QEMU's multifd; verifies the guest and prints
# one machine-readable result line. See --help and docs/LAB.md.
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
LAB="$REPO/scripts/lab.sh"
PROG=migrate.sh
# shellcheck source-path=SCRIPTDIR source=lib/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib/common.sh"
# shellcheck source-path=SCRIPTDIR source=lib/lab-names.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib/lab-names.sh"

MODE=lmas
MULTIFD=0
GUEST=paused
RAM_MIB=1024
WS_MIB=512
DIRTY_RATE=32
FLOWS=8
WINDOW=""
UNSENT=""
UNSENT_MS=""
LINK_CAP=""
COMPRESSION=""
DEDUP=""
DEDUP_SCOPE=""
DEDUP_STORE=""
DEDUP_DIR_B=""
CONGESTION=""
LANE=""
INGRESS=listen
TIMEOUT=300
LINK_ARGS=()
KEEP=0
SLOT=0
SEED=1
TEMPLATE_SEED=""
TEMPLATE_SHARE=0.6
FILES_DIR=${LMAS_GUEST_FILES:-/usr}
PREALLOC=on
CACHE=${LMAS_GUEST_CACHE:-${CARGO_TARGET_DIR:-$REPO/target}/qemu-guest}

usage() {
    cat <<EOF
Usage: scripts/migrate.sh [OPTIONS]

Runs one live migration of a QEMU guest from a QEMU in $NS_SRC to a QEMU in $NS_DST over the
lab's emulated WAN (brings the lab up if needed), then checks the guest on the destination:

  paused guest   (-S) RAM backed by an image of zero, text-like and random pages
                 (scripts/guest-image.py, cached in \$LMAS_GUEST_CACHE); after the migration
                 the destination's RAM is dumped (pmemsave) and compared with the image:
                 byte-identical or the run fails. (The 256 KiB at 0xC0000-0xFFFFF are not
                 compared: the PC machine shows its BIOS/option ROM window there, not RAM.)
  files guest    the same, but its non-zero pages are this machine's files under
                 \$LMAS_GUEST_FILES (default /usr; guest-image.py --files): real code and data
  running guest  a Debian kernel (/boot/vmlinuz-*, or \$GUEST_KERNEL) with an initramfs whose
                 /init (scripts/guest/dirty.c, built now with gcc -static and cpio) fills a
                 working set and dirties it at a set rate while re-checking every page; after
                 switchover the destination must run at least two full check passes with no
                 bad page.

Guest RAM is RAM_MIB MiB minus 8 KiB: QEMU < 9.0 with TCG can lose guest writes during
migration when a RAM block is a multiple of 256 KiB (upstream 03bfc2188f).

Options:
  --mode direct|lmas|dpdk  the path: straight over the WAN, through the gateway pair,
                         or through a DPDK gateway pair (af_packet PMD)           [$MODE]
  --multifd N            QEMU multifd with N channels (0 = off, one stream)          [$MULTIFD]
  --guest paused|files|running                                                       [$GUEST]
  --ram-mib M            guest RAM (MiB, less 8 KiB)                                 [$RAM_MIB]
  --ws-mib W             running guest: working set it fills and dirties (MiB)        [$WS_MIB]
  --dirty-rate R         running guest: MiB/s dirtied                                 [$DIRTY_RATE]
  --flows N              lmas: the gateways' data flows (restarted if different)     [$FLOWS]
  --window BYTES         lmas: the gateways' session window (default: theirs, 256 MiB)
  --unsent BYTES         lmas: the gateways' per-session unsent room (default: theirs, 4 MiB)
  --unsent-ms MS         lmas: what a migration may hold unsent, in ms at the tunnel's rate
                         (limits.unsent_ms; default: theirs, 5, or 20 on DPDK)
  --link-cap MBIT        lmas: the gateways' limits.link_rate_mbit (default: none)
  --compression MODE     lmas: the gateways' [wan] compression, auto|off|lz4|zstd[:L]
                         (default: theirs, auto)
  --dedup auto|off       lmas: the gateways' [wan] dedup (default: theirs)
  --dedup-scope migration|tunnel  lmas: their [wan] dedup_scope (default: theirs)
  --dedup-store BYTES    lmas: their [wan] dedup_store_bytes (default: theirs)
  --dedup-dir-b DIR      lmas: gw-b keeps its dedup store in files in DIR (wan.dedup_dir)
  --congestion CC        lmas: the data flows' congestion control (default: theirs, bbr)
  --lane on|off|auto     lmas: the tunnel's frames as datagrams with parity (wan.lane; default off;
                         auto: while the data flows lose)
  --ingress listen|tproxy  lmas: QEMU dials gw-a's listener, or the destination itself
                         (intercepted by TPROXY in gw-a)                             [$INGRESS]
  --rtt MS, --loss PCT, --rate MBIT   set the emulated link first (else as it is)
  --slot 0|1             which of the lab's two ways to the destination: 1 listens on
                         port $TARGET2_PORT (lmas: through gw-a's second ingress), so a second
                         migration can run beside one on slot 0 (listen ingress only)  [$SLOT]
  --timeout S            cancel the migration if not done after S s: "did not converge" [$TIMEOUT]
  --seed S               paused guest image seed                                     [$SEED]
  --template-seed T      paused guest: a clone of template T (guest-image.py
                         --template-seed): each run of 1-64 pages is T's image at those
                         pages with probability --template-share (the same runs for every
                         clone of T: its OS and library pages), else this seed's own data
  --template-share P     the template's share of the runs, 0 to 1                    [$TEMPLATE_SHARE]
  --dst-prealloc on|off  the destination QEMU allocates its RAM before the migration
                         (prealloc=on, as hugepage-backed production hosts do): else its
                         first-touch page faults, ~4 s per GiB in this nested VM, bound
                         every mode                                                  [$PREALLOC]
  --keep                 keep the work directory (QEMU logs, serial consoles, QMP sockets)
  --trace FILE           write the source's query-migrate to FILE every 50 ms (host time,
                         bytes sent and left, its rate estimate: QEMU stops the guest once
                         what is left fits in that rate x its downtime limit)
  -h, --help

Output: one line on stdout,
  migrate: mode=… multifd=… guest=… ram_bytes=… rtt_ms=… loss_pct=… rate_mbit=… status=…
  converged=0|1 verified=1|0|na e2e_total_ms=… e2e_downtime_ms=… e2e_goodput_mbit=…
  src_total_ms=… src_downtime_ms=… transferred_bytes=… … wan_ab_bytes=… wan_ba_bytes=…
On a terminal, stderr shows the migration's progress twice a second (the source's view: MiB
sent and left, its rate, the pre-copy pass, then how long the destination still waits).
e2e_total_ms runs from the 'migrate' command to the destination's MIGRATION completed event,
e2e_downtime_ms from the source's STOP to the destination's RESUME (QMP event timestamps; both
QEMUs share the host clock); src_* are the source's own figures (query-migrate).
wan_ab_bytes and wan_ba_bytes: what the emulated link forwarded (L2 bytes, its tbf counters)
from the gw-a side to the gw-b side and back between the 'migrate' command and the end
(na with --rate 0: no tbf). A concurrent migration on the other slot is counted too.
Exit status: 0 completed and verified; 3 did not converge within --timeout (cancelled; the
guest still runs on the source and was checked there); 1 anything else, including a bad page.

Needs root, qemu-system-x86_64, python3, and for the running guest gcc, cpio and a kernel.
EOF
}

while (($#)); do
    case $1 in
        --mode) MODE=$2; shift 2 ;;
        --multifd) MULTIFD=$2; shift 2 ;;
        --guest) GUEST=$2; shift 2 ;;
        --ram-mib) RAM_MIB=$2; shift 2 ;;
        --ws-mib) WS_MIB=$2; shift 2 ;;
        --dirty-rate) DIRTY_RATE=$2; shift 2 ;;
        --trace) TRACE=$2; shift 2 ;;
        --flows) FLOWS=$2; shift 2 ;;
        --window) WINDOW=$2; shift 2 ;;
        --unsent) UNSENT=$2; shift 2 ;;
        --unsent-ms) UNSENT_MS=$2; shift 2 ;;
        --link-cap) LINK_CAP=$2; shift 2 ;;
        --compression) COMPRESSION=$2; shift 2 ;;
        --dedup) DEDUP=$2; shift 2 ;;
        --dedup-scope) DEDUP_SCOPE=$2; shift 2 ;;
        --dedup-store) DEDUP_STORE=$2; shift 2 ;;
        --dedup-dir-b) DEDUP_DIR_B=$2; shift 2 ;;
        --template-seed) TEMPLATE_SEED=$2; shift 2 ;;
        --template-share) TEMPLATE_SHARE=$2; shift 2 ;;
        --congestion) CONGESTION=$2; shift 2 ;;
        --lane) LANE=$2; shift 2 ;;
        --ingress) INGRESS=$2; shift 2 ;;
        --rtt | --loss | --rate) LINK_ARGS+=("$1" "$2"); shift 2 ;;
        --timeout) TIMEOUT=$2; shift 2 ;;
        --seed) SEED=$2; shift 2 ;;
        --slot) SLOT=$2; shift 2 ;;
        --dst-prealloc) PREALLOC=$2; shift 2 ;;
        --keep) KEEP=1; shift ;;
        -h | --help) usage; exit 0 ;;
        *) die "unknown option: $1 (see --help)" ;;
    esac
done
[[ $MODE == direct || $MODE == lmas || $MODE == dpdk ]] || die "--mode is direct, lmas or dpdk, not $MODE"
DATAPATH=kernel
[[ $MODE != dpdk ]] || DATAPATH=dpdk/af_packet
[[ $GUEST == paused || $GUEST == files || $GUEST == running ]] || die "--guest is paused, files or running, not $GUEST"
[[ $PREALLOC == on || $PREALLOC == off ]] || die "--dst-prealloc is on or off, not $PREALLOC"
[[ $INGRESS == listen || $INGRESS == tproxy ]] || die "--ingress is listen or tproxy, not $INGRESS"
[[ $SLOT == 0 || $SLOT == 1 ]] || die "--slot is 0 or 1, not $SLOT"
[[ $SLOT == 0 || $INGRESS == listen ]] || die "--slot 1 needs --ingress listen (TPROXY intercepts port $TARGET_PORT only)"
[[ -z $WINDOW || $WINDOW =~ ^[0-9]+$ ]] || die "--window takes a number of bytes, got $WINDOW"
[[ -z $UNSENT || $UNSENT =~ ^[0-9]+$ ]] || die "--unsent takes a number of bytes, got $UNSENT"
[[ -z $UNSENT_MS || $UNSENT_MS =~ ^[0-9]+$ ]] || die "--unsent-ms takes milliseconds, got $UNSENT_MS"
[[ -z $LINK_CAP || $LINK_CAP =~ ^[0-9]+$ ]] || die "--link-cap takes Mbit/s, got $LINK_CAP"
[[ -z $COMPRESSION || $COMPRESSION =~ ^(auto|off|lz4|zstd(:-?[0-9]+)?)$ ]] ||
    die "--compression is auto, off, lz4, zstd or zstd:LEVEL, not $COMPRESSION"
[[ -z $DEDUP || $DEDUP == auto || $DEDUP == off ]] || die "--dedup is auto or off, not $DEDUP"
[[ -z $DEDUP_SCOPE || $DEDUP_SCOPE == migration || $DEDUP_SCOPE == tunnel ]] ||
    die "--dedup-scope is migration or tunnel, not $DEDUP_SCOPE"
[[ -z $DEDUP_STORE || $DEDUP_STORE =~ ^[0-9]+$ ]] || die "--dedup-store takes a number of bytes, got $DEDUP_STORE"
[[ -z $TEMPLATE_SEED || $TEMPLATE_SEED =~ ^[0-9]+$ ]] || die "--template-seed takes a whole number, got $TEMPLATE_SEED"
[[ $TEMPLATE_SHARE =~ ^(0(\.[0-9]*)?|\.[0-9]+|1(\.0*)?)$ ]] || die "--template-share takes a number from 0 to 1, got $TEMPLATE_SHARE"
[[ -z $TEMPLATE_SEED || $GUEST == paused ]] || die "--template-seed is for the paused guest only"
for v in MULTIFD RAM_MIB WS_MIB DIRTY_RATE FLOWS TIMEOUT SEED; do
    [[ ${!v} =~ ^[0-9]+$ ]] || die "--${v,,} takes a whole number, got ${!v}"
done
((RAM_MIB >= 64)) || die "--ram-mib must be at least 64"
[[ $GUEST != running ]] || ((WS_MIB + 64 <= RAM_MIB)) || die "--ws-mib must leave 64 MiB of --ram-mib to the kernel"

is_root || die "must run as root (network namespaces)"
QEMU=${QEMU:-qemu-system-x86_64}
command -v "$QEMU" >/dev/null || die "$QEMU not found (apt-get install qemu-system-x86)"
PY=/usr/bin/python3
[[ -x $PY ]] || PY=python3
QMP="$PY $REPO/scripts/qmp.py"

RAM_BYTES=$((RAM_MIB * 1024 * 1024 - 8192))
WORK=$(mktemp -d "${TMPDIR:-/tmp}/lmas-migrate.XXXXXX")
QEMU_PIDS=()
# shellcheck disable=SC2317  # the EXIT trap
cleanup() {
    local pid
    for pid in "${QEMU_PIDS[@]}"; do stop_pid "$pid"; done
    if ((KEEP)); then log "kept $WORK"; else rm -rf "$WORK"; fi
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# ---- the guest's pieces ---------------------------------------------------------------------
mkdir -p "$CACHE"
COMMON=(-M pc -accel tcg -smp 1 -nodefaults -no-user-config -display none -m "${RAM_BYTES}b")
DST_BACKEND=(-object "memory-backend-ram,id=mem,size=$RAM_BYTES,prealloc=$PREALLOC" -machine memory-backend=mem)
if [[ $GUEST != running ]]; then
    IMAGE=$CACHE/ram-$RAM_BYTES-seed$SEED.img image_args=()
    if [[ $GUEST == files ]]; then
        IMAGE=$CACHE/ram-$RAM_BYTES-seed$SEED-files-$(echo "$FILES_DIR" | tr / _).img image_args=(--files "$FILES_DIR")
    elif [[ -n $TEMPLATE_SEED ]]; then
        IMAGE=$CACHE/ram-$RAM_BYTES-seed$SEED-template$TEMPLATE_SEED-share$TEMPLATE_SHARE.img
        image_args=(--template-seed "$TEMPLATE_SEED" --template-share "$TEMPLATE_SHARE")
    fi
    if [[ ! -s $IMAGE || $REPO/scripts/guest-image.py -nt $IMAGE ]]; then
        log "writing the guest RAM image $IMAGE"
        "$PY" "$REPO/scripts/guest-image.py" --bytes "$RAM_BYTES" --seed "$SEED" "${image_args[@]}" -o "$IMAGE.tmp" >&2
        mv "$IMAGE.tmp" "$IMAGE"
    fi
    # The source maps the image privately (its writes never reach the file); the destination
    # gets anonymous RAM under the same block name ("mem"), filled by the migration.
    SRC_RAM=(-object "memory-backend-file,id=mem,size=$RAM_BYTES,mem-path=$IMAGE,share=off" -machine memory-backend=mem -S)
    DST_RAM=("${DST_BACKEND[@]}")
else
    KERNEL=${GUEST_KERNEL:-$(find /boot -maxdepth 1 -name 'vmlinuz-*' 2>/dev/null | sort -V | tail -1)}
    [[ -n $KERNEL && -r $KERNEL ]] ||
        die "no guest kernel: install one (scripts/install-deps.sh installs linux-image-cloud-amd64) or set GUEST_KERNEL"
    command -v gcc >/dev/null || die "gcc not found (build-essential)"
    command -v cpio >/dev/null || die "cpio not found (apt-get install cpio)"
    INITRD=$CACHE/dirty-initrd.gz
    if [[ ! -s $INITRD || $REPO/scripts/guest/dirty.c -nt $INITRD ]]; then
        log "building the guest initramfs $INITRD (gcc -static, cpio)"
        mkdir -p "$WORK/initrd"
        gcc -static -O2 -Wall -o "$WORK/initrd/init" "$REPO/scripts/guest/dirty.c" || die "building dirty.c failed"
        (cd "$WORK/initrd" && echo init | cpio -o -H newc -R 0:0 --quiet | gzip -1) >"$INITRD.tmp"
        mv "$INITRD.tmp" "$INITRD"
    fi
    BOOT=(-kernel "$KERNEL" -initrd "$INITRD"
        -append "console=ttyS0 quiet panic=-1 lmas_ws=$WS_MIB lmas_rate=$DIRTY_RATE")
    # Both sides name their RAM block "mem", so that the destination's can be preallocated.
    SRC_RAM=("${BOOT[@]}" -object "memory-backend-ram,id=mem,size=$RAM_BYTES" -machine memory-backend=mem)
    DST_RAM=("${BOOT[@]}" "${DST_BACKEND[@]}")
fi

# ---- the lab and the path -------------------------------------------------------------------
"$LAB" up >/dev/null 2>&1 || "$LAB" up >&2 || die "scripts/lab.sh up failed"
if ((${#LINK_ARGS[@]})); then "$LAB" set "${LINK_ARGS[@]}" >/dev/null || die "scripts/lab.sh set failed"; fi
LINKEMU_BIN=$("$LAB" linkemu-path)
link=$("$LINKEMU_BIN" stats --name "$LINK_NAME" | head -1)
rate=$(field rate_mbit "$link")
link=$("$LINKEMU_BIN" stats --name "$LINK_NAME" | sed -n 2p)
rtt=$(awk -v d="$(field delay_ms "$link")" 'BEGIN { print d * 2 }')
loss=$(field loss_pct "$link")

port=$TARGET_PORT
((SLOT == 0)) || port=$TARGET2_PORT
INCOMING=tcp:$DST_IP:$port
gw_state=$(cat "$LAB_RUN_DIR/gateways" 2>/dev/null || true)
if [[ $MODE != direct ]]; then
    # --reuse: a pair already up with these options keeps running (and carries a concurrent
    # migration on the other slot undisturbed).
    "$LAB" gateways up --reuse --datapath "${DATAPATH%/*}" --flows "$FLOWS" --ingress "$INGRESS" ${WINDOW:+--window "$WINDOW"} \
        ${UNSENT:+--unsent "$UNSENT"} ${UNSENT_MS:+--unsent-ms "$UNSENT_MS"} ${LINK_CAP:+--link-cap "$LINK_CAP"} ${COMPRESSION:+--compression "$COMPRESSION"} ${CONGESTION:+--congestion "$CONGESTION"} \
        ${LANE:+--lane "$LANE"} ${DEDUP:+--dedup "$DEDUP"} ${DEDUP_SCOPE:+--dedup-scope "$DEDUP_SCOPE"} ${DEDUP_STORE:+--dedup-store "$DEDUP_STORE"} \
        ${DEDUP_DIR_B:+--dedup-dir-b "$DEDUP_DIR_B"} >&2 ||
        die "the gateways did not come up"
    URI=tcp:$("$LAB" gateways address)
    ((SLOT == 0)) || URI=tcp:$GWA_LAN_IP:$INGRESS2_PORT
    sessions0=$(grep -c -- "-> $DST_IP:$port via" "$LAB_RUN_DIR/gw-a.log" || true)
else
    # TPROXY would intercept the direct path, and DPDK gateways own the gateways' ports: take
    # the gateways down then (a kernel pair with listen ingress idles).
    [[ $gw_state != *ingress=tproxy* && $gw_state != datapath=dpdk* ]] || "$LAB" gateways down >/dev/null
    URI=$INCOMING
fi

# ---- the two QEMUs ----------------------------------------------------------------------------
start_qemu() { # NAME NS ARGS...
    local name=$1 ns=$2
    shift 2
    ip netns exec "$ns" "$QEMU" "${COMMON[@]}" "$@" -serial "file:$WORK/$name.serial" \
        -qmp "unix:$WORK/$name.qmp,server=on,wait=off" >"$WORK/$name.log" 2>&1 </dev/null &
    QEMU_PIDS+=($!)
}
start_qemu dst "$NS_DST" "${DST_RAM[@]}" -incoming defer
start_qemu src "$NS_SRC" "${SRC_RAM[@]}"

# wait_serial NAME TEXT SECS: waits until the guest console NAME shows TEXT.
wait_serial() {
    local i
    for ((i = 0; i < $3 * 10; i++)); do
        grep -q -- "$2" "$WORK/$1.serial" 2>/dev/null && return 0
        sleep 0.1
    done
    return 1
}
if [[ $GUEST == running ]]; then
    wait_serial src "lmas-dirty: ready" 120 || die "the guest did not come up (console: $(tail -3 "$WORK/src.serial" 2>/dev/null))"
    wait_serial src "lmas-dirty: pass 1 " 60 || die "the guest did not finish a check pass"
fi

# ---- migrate --------------------------------------------------------------------------------
# wan_bytes DIR: what the link has forwarded in direction DIR (a->b, b->a) so far: its tbf's
# sent bytes (L2), empty without a rate limit.
wan_bytes() {
    field tbf_sent_bytes "$("$LINKEMU_BIN" stats --name "$LINK_NAME" | grep -F "dir=$1 ")"
}
wan_ab0=$(wan_bytes 'a->b') wan_ba0=$(wan_bytes 'b->a')
rc=0
# A progress line on a terminal only: benchmark runs capture stderr and poll nothing extra.
driver_opts=()
[[ -t 2 ]] && driver_opts=(--progress)
[[ -z ${TRACE:-} ]] || driver_opts+=(--trace "$TRACE")
result=$($QMP migrate --src "$WORK/src.qmp" --dst "$WORK/dst.qmp" --uri "$URI" --incoming "$INCOMING" \
    --multifd "$MULTIFD" --timeout "$TIMEOUT" "${driver_opts[@]}") || rc=$?
[[ -n $result ]] || die "the migration driver failed (exit $rc; QEMU logs: $(cat "$WORK"/*.log))"
status=$(field status "$result")
wan_ab=na wan_ba=na
wan_ab1=$(wan_bytes 'a->b') wan_ba1=$(wan_bytes 'b->a')
[[ -z $wan_ab0 || -z $wan_ab1 ]] || wan_ab=$((wan_ab1 - wan_ab0))
[[ -z $wan_ba0 || -z $wan_ba1 ]] || wan_ba=$((wan_ba1 - wan_ba0))

# ---- verify ---------------------------------------------------------------------------------
verified=na
why=""
if [[ $MODE != direct ]]; then
    # The migration (and each multifd channel) must have gone through the gateways.
    sessions=$(($(grep -c -- "-> $DST_IP:$port via" "$LAB_RUN_DIR/gw-a.log" || true) - sessions0))
    ((sessions >= 1 + MULTIFD)) || { verified=0; why="gw-a carried $sessions sessions, expected $((1 + MULTIFD))"; }
fi
if [[ $status == completed && -z $why ]]; then
    if [[ $GUEST != running ]]; then
        $QMP cmd "$WORK/dst.qmp" pmemsave "{\"val\": 0, \"size\": $RAM_BYTES, \"filename\": \"$WORK/dst.ram\"}" >/dev/null ||
            die "pmemsave failed"
        # RAM below the ROM window, and above it.
        if cmp -s -n $((0xC0000)) "$IMAGE" "$WORK/dst.ram" &&
            cmp -s -i $((0x100000)) "$IMAGE" "$WORK/dst.ram"; then
            verified=1
        else
            verified=0
            why="destination RAM differs from the image: $(cmp "$IMAGE" "$WORK/dst.ram" 2>&1 | head -1)"
        fi
        rm -f "$WORK/dst.ram"
    else
        # Two full check passes after the switchover, on the destination (the first may have
        # started on the source).
        passes=0
        for ((i = 0; i < 600 && passes < 2; i++)); do
            sleep 0.1
            passes=$(grep -c "lmas-dirty: pass" "$WORK/dst.serial" 2>/dev/null || true)
        done
        if ((passes >= 2)); then
            verified=1
        else
            verified=0
            why="the guest did not run two check passes on the destination within 60 s"
        fi
    fi
fi
if [[ $GUEST == running ]] && grep -q "BAD page" "$WORK"/src.serial "$WORK"/dst.serial 2>/dev/null; then
    verified=0
    why="the guest found bad pages: $(grep -h "BAD page" "$WORK"/src.serial "$WORK"/dst.serial | head -3 | tr '\n' ';')"
fi

guest_info=""
[[ $GUEST == running ]] && guest_info="ws_mib=$WS_MIB dirty_mib_s=$DIRTY_RATE "
[[ $GUEST == running ]] || guest_info="seed=$SEED "
[[ -z $TEMPLATE_SEED ]] || guest_info+="template_seed=$TEMPLATE_SEED template_share=$TEMPLATE_SHARE "
echo "migrate: mode=$MODE multifd=$MULTIFD guest=$GUEST ram_bytes=$RAM_BYTES rtt_ms=$rtt" \
    "loss_pct=$loss rate_mbit=$rate ${guest_info}verified=$verified $result wan_ab_bytes=$wan_ab wan_ba_bytes=$wan_ba"
if [[ -n $why ]]; then
    KEEP=1 # the evidence: QEMU logs, serial consoles
    cp "$LAB_RUN_DIR"/gw-*.log "$WORK/" 2>/dev/null || true
    log "error: $why (QEMU logs, consoles and gateway logs kept in $WORK)"
    exit 1
fi
case $status in
    completed) exit 0 ;;
    cancelled) exit 3 ;;
    *) log "error: migration $status (see $WORK/*.log)"; exit 1 ;;
esac

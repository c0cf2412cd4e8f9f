# shellcheck shell=bash
# common.sh: helpers shared by the scripts in scripts/. Source it; it only defines functions.
# The sourcing script sets PROG to its own name (e.g. PROG=lab.sh): messages start with it.
# DIE_TAG (optional) goes between "PROG: " and die's message (e.g. DIE_TAG="error: ").

# log MSG...: prints "PROG: MSG" on stderr.
log() { echo "$PROG: $*" >&2; }

# die MSG...: prints "PROG: DIE_TAG MSG" on stderr and exits 1.
die() { log "${DIE_TAG:-}$*"; exit 1; }

# is_root: succeeds when running as root.
is_root() { [[ $(id -u) -eq 0 ]]; }

# need_root WHAT: dies with "PROG: needs root to WHAT" unless running as root.
need_root() { is_root || die "needs root to $1 (try: sudo $0 ...)"; }

# sysctl_get NAME: the value of sysctl NAME (tabs as spaces), or nothing if it does not exist.
sysctl_get() { local v; v=$(cat "/proc/sys/${1//.//}" 2>/dev/null) || return 0; echo "${v//$'\t'/ }"; }

# is_size S: succeeds when S is a byte count lmas-load takes: digits, optionally K/M/G/T[i][B].
is_size() { [[ $1 =~ ^[0-9]+([KMGT](i?B)?)?$ ]]; }

# lab_bins REPO [--no-build]: builds linkemu, lmas and lmas-load (release) unless --no-build,
# then exports LINKEMU, LMAS, LMAS_LOAD (those already set are kept) for lab.sh. Under sudo,
# root's PATH usually has no cargo (rustup installs it per user): then it builds as the invoking
# user, with their toolchain, so the files in target/ stay theirs. Fails with a message.
lab_bins() {
    local repo=$1 target build_cmd=(cargo build --release -q -p linkemu -p lmas -p lmas-tests) home
    target=${CARGO_TARGET_DIR:-$repo/target}
    if [[ ${2:-} != --no-build ]]; then
        if command -v cargo >/dev/null; then
            (cd "$repo" && CARGO_TARGET_DIR=$target "${build_cmd[@]}") || return 1
        else
            home=$(getent passwd "${SUDO_USER:-}" | cut -d: -f6)
            if [[ -z ${SUDO_USER:-} || ! -x $home/.cargo/bin/cargo ]]; then
                log "cargo not found: build as yourself first (${build_cmd[*]}), then use --no-build"
                return 1
            fi
            (cd "$repo" && runuser -u "$SUDO_USER" -- env HOME="$home" PATH="$home/.cargo/bin:$PATH" \
                CARGO_TARGET_DIR="$target" "${build_cmd[@]}") || return 1
        fi
    fi
    export LINKEMU=${LINKEMU:-$target/release/linkemu}
    export LMAS=${LMAS:-$target/release/lmas}
    export LMAS_LOAD=${LMAS_LOAD:-$target/release/lmas-load}
}

# netns_usable NAME: succeeds when a network namespace NAME can be created (it is deleted again).
netns_usable() { ip netns add "$1" 2>/dev/null || return 1; ip netns del "$1"; }

# nsx NS CMD...: runs CMD in network namespace NS.
nsx() { local ns=$1; shift; ip netns exec "$ns" "$@"; }

# field NAME LINE: the value of NAME=... in LINE (e.g. sha256, bytes, secs, mbit_s of lmas-load).
field() {
    sed -n "s/.*\\b$1=\\([^ ]*\\).*/\\1/p" <<<"$2"
}

# all_logged TEXT FILE...: succeeds when every FILE contains TEXT (e.g. "tunnel up").
all_logged() {
    local text=$1 f
    shift
    for f in "$@"; do grep -q -- "$text" "$f" 2>/dev/null || return 1; done
}

# stop_pid PID: SIGTERM, then SIGKILL after 5 s; reaps it if it is our child.
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

# link_lost_pkts LINKEMU NAME: packets the emulated link NAME has dropped so far (both ways).
link_lost_pkts() {
    "$1" stats --name "$2" |
        awk '{for (i = 1; i <= NF; i++) if ($i ~ /^lost_pkts=/) {split($i, a, "="); s += a[2]}} END {print s + 0}'
}

# progress_start LMAS_LOAD TOTAL LABEL: a progress bar for TOTAL steps (`lmas-load progress`,
# drawn only when stderr is a terminal). Then `progress step TEXT` after each step,
# `progress msg TEXT` for new text, `progress println TEXT` for a result line (plain when not
# on a terminal), and progress_end.
progress_start() {
    exec {PROGRESS_FD}> >("$1" progress --total "$2" --label "$3")
    PROGRESS_PID=$!
}

# progress CMD TEXT...: sends one command to the bar (no-op without progress_start).
progress() { if [[ -n ${PROGRESS_FD:-} ]]; then echo "$*" >&"$PROGRESS_FD"; fi; }

# progress_end: closes the bar and waits for it to clear. (It says `end` rather than relying on
# EOF: background children started meanwhile, e.g. gateways, inherit the pipe's write end.)
progress_end() {
    [[ -n ${PROGRESS_FD:-} ]] || return 0
    echo end >&"$PROGRESS_FD"
    exec {PROGRESS_FD}>&-
    wait "$PROGRESS_PID" 2>/dev/null || true
    PROGRESS_FD=""
}

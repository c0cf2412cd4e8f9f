# shellcheck shell=bash
# labtest.sh: what the CI lab tests (lab-test.sh, migrate-test.sh) share. Source common.sh and
# lab-names.sh first; set LAB (path of lab.sh) and TEST_NAME (e.g. "lab test").

# skip MSG / fail MSG: "SKIP: TEST_NAME: MSG" and exit 0 / "FAIL: …" and exit 1.
skip() { echo "SKIP: $TEST_NAME: $*"; exit 0; }
fail() { echo "FAIL: $TEST_NAME: $*" >&2; exit 1; }

# labtest_start: skips without root or network namespaces, fails without the lab's tools,
# builds linkemu, lmas and lmas-load (exports LINKEMU, LMAS, LMAS_LOAD for lab.sh), and on exit
# takes the lab down if it was not up before (else only the gateways).
labtest_start() {
    local repo tool
    repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
    is_root || skip "needs root to create network namespaces (run as root, e.g. in CI)"
    command -v ip >/dev/null || skip "iproute2 (ip) not installed"
    netns_usable "lmas-labtest-probe-$$" || skip "network namespaces are unavailable here (ip netns add failed)"
    for tool in ethtool iptables tc nft; do
        command -v $tool >/dev/null || fail "$tool not installed (scripts/install-deps.sh; docs/LAB.md)"
    done
    echo "$TEST_NAME: building linkemu, lmas, lmas-load (release, ${CARGO_TARGET_DIR:-$repo/target})"
    lab_bins "$repo" || fail "build failed"
    LAB_CREATED=0
    [[ -e /run/netns/$NS_WAN ]] || LAB_CREATED=1
    trap labtest_cleanup EXIT
}

# shellcheck disable=SC2317  # the EXIT trap
labtest_cleanup() {
    if ((LAB_CREATED)); then
        "$LAB" down >/dev/null 2>&1 || true
    else
        "$LAB" gateways down >/dev/null 2>&1 || true
    fi
}

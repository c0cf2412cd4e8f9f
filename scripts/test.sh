#!/usr/bin/env bash
# test.sh: the whole test suite, as CI runs it.
#   formatting and lints (Rust and shell), unit + property tests, end-to-end tests that start the
#   real `lmas` binaries on loopback, and the lab tests in network namespaces (a transfer
#   and real QEMU migrations through the gateways over the emulated WAN; those skip with a
#   clear message where they cannot run), and a short run of every
#   fuzz target (FUZZ_SECONDS each, default 5; skipped without a nightly toolchain).
set -euo pipefail

if [[ ${1:-} == -h || ${1:-} == --help ]]; then
    echo "Usage: scripts/test.sh   runs fmt/clippy checks and every test (release build)"
    exit 0
fi
cd "$(dirname "${BASH_SOURCE[0]}")/.."
PROG=test.sh
# shellcheck source-path=SCRIPTDIR source=lib/common.sh
source scripts/lib/common.sh
# shellcheck source-path=SCRIPTDIR source=lib/deps.sh
source scripts/lib/deps.sh

echo "== Debian packages (installs what is missing, as root)"
ensure_deps
echo "== cargo fmt --check"
cargo fmt --all --check
echo "== cargo clippy"
cargo clippy --workspace --all-targets --release -- -D warnings
echo "== shellcheck (the scripts users run)"
if command -v shellcheck >/dev/null; then
    shellcheck -x scripts/*.sh scripts/lib/*.sh
else
    echo "SKIP: shellcheck not installed (scripts/install-deps.sh installs it)"
fi
echo "== cargo check without the DPDK feature (hosts with no libdpdk)"
cargo check --release -p lmas --no-default-features
echo "== build (release)"
cargo build --workspace --release --bins
echo "== cargo test"
cargo test --workspace --release
echo "== smoltcp patch tests (dpdk-build/smoltcp/LMAS.md: upstream's and the WAN sender's)"
CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-target}/smoltcp cargo test --release \
    --manifest-path dpdk-build/smoltcp/Cargo.toml --lib --no-default-features --features \
    std,log,medium-ethernet,medium-ip,proto-ipv4,socket-tcp,socket-tcp-cubic,socket-tcp-reno,socket-tcp-bbr
echo "== TPROXY test (network namespaces)"
scripts/tproxy-test.sh
echo "== lab test (network namespaces)"
scripts/lab-test.sh
echo "== QEMU migration test (network namespaces, qemu-system-x86)"
scripts/migrate-test.sh
echo "== fuzz smoke (${FUZZ_SECONDS:-5} s per target)"
# A smoke, not a campaign: no sanitizer halves the build (long runs: scripts/fuzz.sh, ASan on).
FUZZ_SANITIZER=${FUZZ_SANITIZER:-none} scripts/fuzz.sh "${FUZZ_SECONDS:-5}"

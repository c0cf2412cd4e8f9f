#!/usr/bin/env bash
# fuzz.sh [SECONDS]: runs every cargo-fuzz target of the gateway for SECONDS each (default 30).
#   Targets (gateway/fuzz/fuzz_targets): message (record plaintext decoder), packed (packed data
#   frames through the record layer's bounded unpacker: lz4, zstd, zero runs), dedup_items (a
#   deduplicated frame's item list: bounded decoder, resolve against an evicting chunk store),
#   prelude (handshake prelude), handshake (Noise responder fed arbitrary message 1), config
#   (config validation), tunnel_core (the session core driven by a hostile peer), dpdk_engine
#   (the DPDK datapath's engine fed raw frames and junk on its tunnel port), link (the link
#   layer's connection table and record splitter fed an arbitrary event stream), lifecycle
#   (the link layer's lifecycle fed connection events, hostile messages and time).
# Needs a nightly toolchain and cargo-fuzz (installed here with `cargo install cargo-fuzz` when
# missing); skips with a clear message when no nightly toolchain is available. FUZZ_SANITIZER=none
# builds without AddressSanitizer (the CI smoke does; long runs keep the default, address).
set -euo pipefail

if [[ ${1:-} == -h || ${1:-} == --help ]]; then
    sed -n '2,13p' "$0"
    exit 0
fi
SECONDS_EACH=${1:-30}
[[ $SECONDS_EACH =~ ^[0-9]+$ ]] || { echo "fuzz.sh: SECONDS must be a number (got '$SECONDS_EACH')" >&2; exit 2; }
cd "$(dirname "${BASH_SOURCE[0]}")/../gateway"

if ! cargo +nightly --version >/dev/null 2>&1; then
    echo "SKIP: fuzz.sh: no nightly toolchain (cargo fuzz needs one)"
    exit 0
fi
if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "fuzz.sh: installing cargo-fuzz"
    cargo install cargo-fuzz --locked --quiet
fi
# FUZZ_SANITIZER: address (default; what long runs want) or none (a quick smoke: half the build).
SANITIZER=${FUZZ_SANITIZER:-address}
cargo +nightly fuzz build -O -s "$SANITIZER"
passed=0
failed=0
for target in $(cargo +nightly fuzz list); do
    if cargo +nightly fuzz run -O -s "$SANITIZER" "$target" -- -max_total_time="$SECONDS_EACH" >"fuzz/$target.log" 2>&1; then
        echo "fuzz.sh: $target: $(grep -Eo 'Done [0-9]+ runs in [0-9]+ second' "fuzz/$target.log" | tail -1), no crash"
        passed=$((passed + 1))
    else
        echo "fuzz.sh: $target: CRASH (see gateway/fuzz/$target.log and gateway/fuzz/artifacts/$target/)" >&2
        tail -n 30 "fuzz/$target.log" >&2
        failed=$((failed + 1))
    fi
done
echo "fuzz: $passed passed, $failed failed"
[[ $failed -eq 0 ]]

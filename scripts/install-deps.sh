#!/usr/bin/env bash
# install-deps.sh: the Debian packages LMAS needs to build, test and run its lab
# (scripts/lib/deps.sh lists them). Idempotent; needs root (apt-get). Rust itself comes from
# rustup, not from here. scripts/demo.sh and scripts/test.sh call the same check on their own.
set -euo pipefail

if [[ ${1:-} == -h || ${1:-} == --help ]]; then
    echo "Usage: scripts/install-deps.sh   (as root) installs the Debian packages for build, tests and lab"
    exit 0
fi
PROG=install-deps.sh
# shellcheck source-path=SCRIPTDIR source=lib/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib/common.sh"
# shellcheck source-path=SCRIPTDIR source=lib/deps.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib/deps.sh"
is_root || die "needs root to run apt-get (try: sudo $0)"
ensure_deps
echo "install-deps.sh: ${#DEPS_PACKAGES[@]} packages installed"

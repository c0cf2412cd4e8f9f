#!/usr/bin/env bash
# driver-lines.sh [COMMIT]: code lines of the two datapath drivers (gateway/src/kernel and
#   gateway/src/dpdk): no blank lines, no `//` comment lines, nothing from a file's first
#   `#[cfg(test)]` on, and not the DPDK simulator and its scenarios (dpdk/sim.rs, dpdk/tests.rs).
#   Issue 14 measures the drivers' shrinking with it; COMMIT (default: the work tree) counts an
#   older tree.
set -euo pipefail
if [[ ${1:-} == -h || ${1:-} == --help ]]; then
    sed -n '2,6p' "$0"
    exit 0
fi
cd "$(dirname "${BASH_SOURCE[0]}")/.."
commit=${1:-}
files() {
    if [[ -n $commit ]]; then
        git ls-tree -r --name-only "$commit" gateway/src/kernel gateway/src/dpdk
    else
        find gateway/src/kernel gateway/src/dpdk -type f
    fi | grep '\.rs$' | grep -Ev '/dpdk/(sim|tests)\.rs$' | sort
}
show() {
    if [[ -n $commit ]]; then git show "$commit:$1"; else cat "$1"; fi
}
total=0
for f in $(files); do
    n=$(show "$f" | awk '/^[[:space:]]*#\[cfg\(test\)\]/ { exit } /^[[:space:]]*$/ { next } /^[[:space:]]*\/\// { next } { n++ } END { print n + 0 }')
    printf '%6d %s\n' "$n" "$f"
    total=$((total + n))
done
printf '%6d total\n' "$total"

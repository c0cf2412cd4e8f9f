#!/usr/bin/env bash
# queue-trace.sh: the lab's bottleneck queue as it is, sampled every few ms: the a→b link's
# token bucket (tbf on wan-b in the wan namespace), its backlog in bytes and in ms at the
# tbf's own rate, and its drops so far. The pacer sees the queue only through the flows'
# smoothed round trip, a round late and averaged; this shows what a neighbour meets.
# Writes CSV (unix time, backlog bytes, backlog ms, drops) to stdout. See --help.
set -euo pipefail

PROG=queue-trace.sh
# shellcheck source-path=SCRIPTDIR source=lib/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib/common.sh"
# shellcheck source-path=SCRIPTDIR source=lib/lab-names.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib/lab-names.sh"

SECS=10

usage() {
    cat <<EOF
Usage: scripts/queue-trace.sh [--secs S]

  --secs S      how long to sample                         [$SECS]

Needs root and the lab up (scripts/lab.sh up). Each sample is one 'tc -s qdisc' (a few ms).
Example, beside a transfer: scripts/lab.sh transfer --bytes 8G --max-secs 10 &
  scripts/queue-trace.sh --secs 10 >queue.csv
EOF
}

while (($#)); do
    case $1 in
        --secs) SECS=$2; shift 2 ;;
        -h | --help) usage; exit 0 ;;
        *) die "unknown option: $1 (see --help)" ;;
    esac
done
[[ $SECS =~ ^[1-9][0-9]*$ ]] || die "--secs takes whole seconds, 1 or more, not '$SECS'"
# The tbf's rate, bytes per second, read from the qdisc itself (read once: a rate changed
# live with 'lab.sh set' mid-trace is not followed).
RATE=$(ip netns exec "$NS_WAN" tc -j qdisc show dev wan-b 2>/dev/null | python3 -c '
import json, sys
tbf = [q for q in json.load(sys.stdin) if q.get("kind") == "tbf"]
print(tbf[0]["options"]["rate"] if tbf else "")' 2>/dev/null) || RATE=""
[[ $RATE =~ ^[1-9][0-9]*$ ]] ||
    die "no tbf with a rate on wan-b in namespace $NS_WAN: is the lab up (scripts/lab.sh up)?"

echo "time_s,backlog_bytes,backlog_ms,dropped"
end=$((SECONDS + SECS))
while ((SECONDS < end)); do
    ip netns exec "$NS_WAN" tc -s qdisc show dev wan-b | awk -v t="$(date +%s.%N)" -v rate="$RATE" '
        /dropped/ { for (i = 1; i <= NF; i++) if ($i == "(dropped") { d = $(i + 1); sub(",", "", d) } }
        /backlog/ { b = $2; sub("b", "", b) }
        END { printf "%.3f,%d,%.1f,%d\n", t, b, b * 1000 / rate, d }'
done

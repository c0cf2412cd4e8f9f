#!/bin/bash
# The throwaway loop of session 54 (docs/BENCHMARKS.md, "The neighbour at a tenth of a second"),
# kept as the record of how blocks B1-B4, L1-L2, M1-M2 and O1 were made. Blocks B, L and M ran
# it with CAPS "600 0" under the case names capped/uncapped. scripts/bench-shares.sh
# --interval 0.1 --queue-trace --link-cap 600,650 now measures the same and is what to use.
# oracle.sh OUT BIN RUNS CAPS...: iperf3 at 0.1 s alone, beside the pair capped at each of
# CAPS (0 = uncapped), the tbf queue beside each.
set -u
OUT=$1; BIN=$2; RUNS=$3; shift 3; CAPS="$*"
mkdir -p $OUT
cd /work/main
scripts/lab.sh up --rtt 100 --rate 1000 --loss 0 > $OUT/up.log 2>&1
ip netns exec dst-host iperf3 -s -p 5201 -D
one() { # CASE RUN
  local d=$OUT/$1-$2; mkdir -p $d
  scripts/queue-trace.sh --secs 12 > $d/queue.csv &
  local qt=$!
  if [[ $1 != alone ]]; then
    scripts/lab.sh transfer --bytes 8G --max-secs 10 > $d/transfer.log 2>&1 &
    local tr=$!
  fi
  sleep 1
  date +%s.%N > $d/ipstart
  ip netns exec src-host iperf3 -c 10.0.3.2 -p 5201 -t 10 -i 0.1 -J > $d/ip.json
  [[ $1 != alone ]] && wait $tr
  wait $qt
}
for r in $(seq $RUNS); do
  one alone $r
  for c in $CAPS; do
    if [[ $c == 0 ]]; then LMAS=$BIN scripts/lab.sh gateways up >> $OUT/up.log 2>&1
    else LMAS=$BIN scripts/lab.sh gateways up --link-cap $c >> $OUT/up.log 2>&1; fi
    scripts/lab.sh transfer --bytes 256M --max-secs 3 >> $OUT/up.log 2>&1
    one cap$c $r
  done
done
pkill -f "iperf3 -s -p 5201"
scripts/lab.sh gateways down >> $OUT/up.log 2>&1
echo done > $OUT/done

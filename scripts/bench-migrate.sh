#!/usr/bin/env bash
# bench-migrate.sh: the real-QEMU migration matrix over the WAN lab (scripts/migrate.sh per
# run): link settings × guests × modes × runs. Writes runs.csv, summary.csv, table.md and
# migrate.png (scripts/plot-migrate.py). See --help and docs/BENCHMARKS.md.
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
PROG=bench-migrate.sh
# shellcheck source-path=SCRIPTDIR source=lib/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib/common.sh"

LINKS="0/0 50/0 100/0 200/0 100/0.5"
GUESTS="paused running"
MODES="direct direct-mf4 lmas lmas-mf4"
RUNS=3
RATE=1000
RAM_MIB=1024
RUN_RAM_MIB=512
WS_MIB=256
DIRTY_RATE=32
TIMEOUT=60
RUN_TIMEOUT=40
OUT=""
PREALLOC=on

usage() {
    cat <<EOF
Usage: scripts/bench-migrate.sh [OPTIONS]

Runs scripts/migrate.sh for every link setting × guest × mode, RUNS times each, in that
order (modes interleaved within a link setting), with a progress bar on a terminal.

Options:
  --links "LIST"     RTT_MS/LOSS_PCT pairs                          [$LINKS]
  --guests "LIST"    paused, files (paused, RAM of /usr's files), running [$GUESTS]
  --modes "LIST"     direct, direct-mfN, lmas, lmas-mfN (mfN: QEMU multifd, N channels),
                     dpdk, dpdk-mfN (through a DPDK gateway pair);
                     lmas modes may end in -wNm: the gateways' session window, N MiB,
                     and -uNm: their per-session unsent room, N MiB,
                     and -lN: their link cap (limits.link_rate_mbit), N Mbit/s,
                     and -cMODE: their compression (auto, off, lz4, zstd, zstd:L),
                     and -dMODE: their dedup (issue 16): -dauto, -doff, or -dtunnel /
                     -dmigration (dedup auto with that dedup_scope), e.g. lmas-coff-dtunnel,
                     and last -lane: the tunnel's frames as datagrams with parity (wan.lane),
                     or -auto: the same while the data flows lose (wan.lane = "auto")
                                                                    [$MODES]
  --runs N                                                          [$RUNS]
  --rate MBIT        link rate                                      [$RATE]
  --ram-mib M        paused and files guests' RAM (less 8 KiB)      [$RAM_MIB]
  --running-ram-mib M  running guest's RAM (less 8 KiB)             [$RUN_RAM_MIB]
  --ws-mib W         running guest's working set                    [$WS_MIB]
  --dirty-rate R     running guest's dirtying, MiB/s                [$DIRTY_RATE]
  --timeout S        a paused guest's migration not done after S s is cancelled [$TIMEOUT]
  --running-timeout S  the same for the running guest: "did not converge" [$RUN_TIMEOUT]
  --dst-prealloc on|off  migrate.sh's: the destination preallocates its RAM [on]
  --out DIR          [target/bench-migrate/DATE]
  -h, --help

Outputs in DIR: runs.csv (one row per migration: the fields of migrate.sh's result line),
summary.csv (medians per link × guest × mode over the runs, how many converged and verified,
ratio of the e2e time to bytes ÷ link rate), table.md (the summary as Markdown),
migrate.png (e2e total time and downtime vs RTT), bench.log (every migrate.sh output).
A run whose guest check fails (a bad page, RAM not byte-identical) is kept in runs.csv with
verified=0 and reported at the end; the script then exits 1.
EOF
}

while (($#)); do
    case $1 in
        --links) LINKS=$2; shift 2 ;;
        --guests) GUESTS=$2; shift 2 ;;
        --modes) MODES=$2; shift 2 ;;
        --runs) RUNS=$2; shift 2 ;;
        --rate) RATE=$2; shift 2 ;;
        --ram-mib) RAM_MIB=$2; shift 2 ;;
        --running-ram-mib) RUN_RAM_MIB=$2; shift 2 ;;
        --running-timeout) RUN_TIMEOUT=$2; shift 2 ;;
        --ws-mib) WS_MIB=$2; shift 2 ;;
        --dirty-rate) DIRTY_RATE=$2; shift 2 ;;
        --timeout) TIMEOUT=$2; shift 2 ;;
        --dst-prealloc) PREALLOC=$2; shift 2 ;;
        --out) OUT=$2; shift 2 ;;
        -h | --help) usage; exit 0 ;;
        *) die "unknown option: $1 (see --help)" ;;
    esac
done
is_root || die "must run as root (network namespaces)"
OUT=${OUT:-$REPO/target/bench-migrate/$(date +%Y%m%d-%H%M%S)}
mkdir -p "$OUT"
LOG=$OUT/bench.log
: >"$LOG"
PY=/usr/bin/python3
[[ -x $PY ]] || PY=python3
LOAD=${LMAS_LOAD:-${CARGO_TARGET_DIR:-$REPO/target}/release/lmas-load}
if [[ ! -x $LOAD ]]; then
    (cd "$REPO" && cargo build --release -q -p lmas-tests) || die "building lmas-load failed"
fi

read -r -a links <<<"$LINKS"
read -r -a guests <<<"$GUESTS"
read -r -a modes <<<"$MODES"
for m in "${modes[@]}"; do
    [[ $m =~ ^(direct(-mf[0-9]+)?|(lmas|dpdk)(-mf[0-9]+)?(-w[0-9]+m)?(-u[0-9]+m)?(-l[0-9]+)?(-c(auto|off|lz4|zstd(:-?[0-9]+)?))?(-d(auto|off|tunnel|migration))?(-lane|-auto)?)$ ]] ||
        die "bad mode $m (direct, direct-mfN, lmas, lmas-mfN, lmas[-mfN][-wNm][-uNm][-lN][-cMODE][-dMODE][-lane|-auto], dpdk[...] likewise)"
done
total=$((${#links[@]} * ${#guests[@]} * ${#modes[@]} * RUNS))
RUNS_CSV=$OUT/runs.csv
{
    echo "# bench-migrate.sh $(date -u +%FT%TZ) on $(uname -r), $(nproc) cpus, $(qemu-system-x86_64 --version | head -1)"
    echo "# links=$LINKS guests=$GUESTS modes=$MODES runs=$RUNS rate=$RATE ram_mib=$RAM_MIB running_ram_mib=$RUN_RAM_MIB ws_mib=$WS_MIB dirty_rate=$DIRTY_RATE timeout=$TIMEOUT running_timeout=$RUN_TIMEOUT dst_prealloc=$PREALLOC"
} >>"$LOG"

trap 'progress_end' EXIT
trap 'exit 130' INT TERM
progress_start "$LOAD" "$total" "bench-migrate"
n=0 bad=0 header=0
t0=$(date +%s)
for link in "${links[@]}"; do
    rtt=${link%/*} loss=${link#*/}
    for guest in "${guests[@]}"; do
        ram=$RAM_MIB timeout=$TIMEOUT
        [[ $guest == running ]] && ram=$RUN_RAM_MIB timeout=$RUN_TIMEOUT
        for ((run = 1; run <= RUNS; run++)); do
            for mode in "${modes[@]}"; do
                n=$((n + 1))
                path=${mode%%-*} mf=0 window=() unsent=() linkcap=() compression=() dedup=() lane=()
                [[ $mode == *-lane ]] && lane=(--lane on)
                [[ $mode == *-auto ]] && lane=(--lane auto)
                [[ $mode =~ -mf([0-9]+) ]] && mf=${BASH_REMATCH[1]}
                [[ $mode =~ -w([0-9]+)m ]] && window=(--window $((BASH_REMATCH[1] * 1024 * 1024)))
                [[ $mode =~ -u([0-9]+)m ]] && unsent=(--unsent $((BASH_REMATCH[1] * 1024 * 1024)))
                [[ $mode =~ -l([0-9]+)($|-) ]] && linkcap=(--link-cap "${BASH_REMATCH[1]}")
                [[ $mode =~ -c(auto|off|lz4|zstd(:-?[0-9]+)?) ]] && compression=(--compression "${BASH_REMATCH[1]}")
                unlaned=${mode%-lane} unlaned=${unlaned%-auto}
                if [[ $unlaned =~ -d(auto|off)$ ]]; then
                    dedup=(--dedup "${BASH_REMATCH[1]}")
                elif [[ $unlaned =~ -d(tunnel|migration)$ ]]; then
                    dedup=(--dedup auto --dedup-scope "${BASH_REMATCH[1]}")
                fi
                progress msg "rtt=${rtt}ms loss=${loss}% $guest $mode run $run/$RUNS"
                echo "# rtt=$rtt loss=$loss guest=$guest mode=$mode run=$run" >>"$LOG"
                rc=0
                line=$("$REPO/scripts/migrate.sh" --mode "$path" --multifd "$mf" --guest "$guest" \
                    --ram-mib "$ram" --ws-mib "$WS_MIB" --dirty-rate "$DIRTY_RATE" \
                    --rtt "$rtt" --loss "$loss" --rate "$RATE" --timeout "$timeout" --dst-prealloc "$PREALLOC" "${window[@]}" "${unsent[@]}" "${linkcap[@]}" "${compression[@]}" "${dedup[@]}" "${lane[@]}" 2>>"$LOG") || rc=$?
                echo "$line" >>"$LOG"
                if [[ $line != migrate:* ]]; then
                    line="migrate: mode=$path multifd=$mf guest=$guest rtt_ms=$rtt loss_pct=$loss status=error converged=0 verified=na"
                fi
                [[ $(field verified "$line") != 0 ]] || bad=$((bad + 1))
                # One CSV row: the bench's own columns, then every key=value of the line.
                kv="bench_mode=$mode run=$run exit=$rc ${line#migrate: }"
                if ((!header)); then
                    echo "bench_mode,run,exit,mode,multifd,guest,rtt_ms,loss_pct,status,converged,verified,e2e_total_ms,e2e_downtime_ms,e2e_goodput_mbit,src_total_ms,src_downtime_ms,transferred_bytes,ram_bytes,rate_mbit,wan_ab_bytes" >"$RUNS_CSV"
                    header=1
                fi
                row=""
                for col in bench_mode run exit mode multifd guest rtt_ms loss_pct status converged verified \
                    e2e_total_ms e2e_downtime_ms e2e_goodput_mbit src_total_ms src_downtime_ms \
                    transferred_bytes ram_bytes rate_mbit wan_ab_bytes; do
                    v=$(field "$col" "$kv")
                    row+="${row:+,}${v:-na}"
                done
                echo "$row" >>"$RUNS_CSV"
                progress println "$(printf '[%3d/%d] rtt=%sms loss=%s%% %-7s %-10s run %d: %s total=%sms downtime=%sms verified=%s' \
                    "$n" "$total" "$rtt" "$loss" "$guest" "$mode" "$run" "$(field status "$line")" \
                    "$(field e2e_total_ms "$line")" "$(field e2e_downtime_ms "$line")" "$(field verified "$line")")"
                progress step
            done
        done
    done
done
progress_end
log "done: $total migrations in $((($(date +%s) - t0) / 60)) min"
"$PY" "$REPO/scripts/plot-migrate.py" "$RUNS_CSV" --summary "$OUT/summary.csv" --table "$OUT/table.md" \
    -o "$OUT/migrate.png" || die "summarising/plotting failed"
cat "$OUT/table.md"
echo "results: $OUT/{runs.csv,summary.csv,table.md,migrate.png}" >&2
((bad == 0)) || die "$bad migrations failed their guest check (verified=0): see $LOG"

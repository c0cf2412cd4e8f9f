#!/usr/bin/python3
"""Summarise and plot scripts/bench-migrate.sh's runs.csv.

    scripts/plot-migrate.py runs.csv --summary summary.csv --table table.md -o migrate.png

Per link setting × guest × mode: runs, how many converged (completed within the timeout) and
were verified, medians over the converged runs of the e2e total time, e2e downtime, e2e
goodput and bytes moved, and the ratio of the e2e time to bytes ÷ link rate (1.0 = the link
was full all the time). The table prints "did not converge" where no run completed. The plot
has one panel per guest: e2e total time vs RTT, one line per mode (loss 0), lossy settings as
separate hollow markers; non-converged points are drawn at the timeout with an x.

Needs matplotlib (Debian: python3-matplotlib).
"""

import argparse
import csv
import math
import statistics
import sys
from collections import defaultdict


def num(v):
    try:
        return float(v)
    except (TypeError, ValueError):
        return math.nan


def med(xs):
    xs = [x for x in xs if not math.isnan(x)]
    return statistics.median(xs) if xs else math.nan


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("runs")
    ap.add_argument("--summary", required=True)
    ap.add_argument("--table", required=True)
    ap.add_argument("-o", "--out", required=True)
    args = ap.parse_args()

    rows = list(csv.DictReader(open(args.runs)))
    if not rows:
        print("plot-migrate.py: no runs", file=sys.stderr)
        return 1
    groups = defaultdict(list)
    order = {}
    for r in rows:
        key = (r["guest"], num(r["rtt_ms"]), num(r["loss_pct"]), r["bench_mode"])
        groups[key].append(r)
        order.setdefault(r["bench_mode"], len(order))

    summary = []
    for key, rs in groups.items():
        guest, rtt, loss, mode = key
        ok = [r for r in rs if r["status"] == "completed"]
        rate = med([num(r["rate_mbit"]) for r in rs])
        total = med([num(r["e2e_total_ms"]) for r in ok])
        moved = med([num(r["transferred_bytes"]) for r in ok])
        ideal = moved * 8 / (rate * 1e6) * 1000 if rate > 0 else math.nan
        summary.append({
            "guest": guest, "rtt_ms": f"{rtt:g}", "loss_pct": f"{loss:g}", "mode": mode,
            "runs": len(rs), "converged": len(ok),
            "verified": sum(r["verified"] == "1" for r in rs),
            "bad": sum(r["verified"] == "0" for r in rs),
            "e2e_total_ms": f"{total:.0f}",
            "e2e_downtime_ms": f"{med([num(r['e2e_downtime_ms']) for r in ok]):.0f}",
            "e2e_goodput_mbit": f"{med([num(r['e2e_goodput_mbit']) for r in ok]):.0f}",
            "src_total_ms": f"{med([num(r['src_total_ms']) for r in ok]):.0f}",
            "transferred_mib": f"{moved / 2**20:.0f}",
            "ratio_to_ideal": f"{total / ideal:.2f}" if ideal > 0 else "nan",
            "e2e_total_runs_ms": " ".join(r["e2e_total_ms"] for r in rs),
        })
    summary.sort(key=lambda s: (s["guest"], float(s["loss_pct"]), float(s["rtt_ms"]), order[s["mode"]]))
    with open(args.summary, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(summary[0]))
        w.writeheader()
        w.writerows(summary)

    modes = sorted(order, key=order.get)
    lines = []
    for guest in dict.fromkeys(s["guest"] for s in summary):
        lines.append(f"**{guest} guest**: e2e total s, (e2e downtime ms), [ratio to bytes ÷ link rate], "
                     "converged/runs\n")
        lines.append("| RTT / loss | " + " | ".join(modes) + " |")
        lines.append("|---|" + "---:|" * len(modes))
        for link in dict.fromkeys((s["rtt_ms"], s["loss_pct"]) for s in summary if s["guest"] == guest):
            cells = []
            for m in modes:
                s = next((s for s in summary if s["guest"] == guest and (s["rtt_ms"], s["loss_pct"]) == link
                          and s["mode"] == m), None)
                if s is None:
                    cells.append("-")
                elif s["converged"] == 0:
                    cells.append(f"did not converge (0/{s['runs']})")
                else:
                    down = "" if s["e2e_downtime_ms"] == "nan" else f" ({s['e2e_downtime_ms']} ms)"
                    bad = f" **{s['bad']} BAD**" if s["bad"] else ""
                    cells.append(f"{float(s['e2e_total_ms']) / 1000:.1f}{down} [{s['ratio_to_ideal']}] "
                                 f"{s['converged']}/{s['runs']}{bad}")
            lines.append(f"| {link[0]} ms / {link[1]} % | " + " | ".join(cells) + " |")
        lines.append("")
    open(args.table, "w").write("\n".join(lines))

    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    guests = list(dict.fromkeys(s["guest"] for s in summary))
    # Panels: e2e total per guest, then the running guest's e2e downtime.
    panels = [(g, "e2e_total_ms") for g in guests]
    if any(s["e2e_downtime_ms"] != "nan" for s in summary):
        panels.append(("running", "e2e_downtime_ms"))
    fig, axes = plt.subplots(1, len(panels), figsize=(5.5 * len(panels), 4.4), squeeze=False)
    colors = {m: plt.cm.tab10(i % 10) for i, m in enumerate(modes)}
    for ax, (guest, metric) in zip(axes[0], panels):
        timeout = max([num(s[metric]) for s in summary if s["guest"] == guest and s["converged"]] + [1000]) / 1000
        for m in modes:
            pts = [s for s in summary if s["guest"] == guest and s["mode"] == m]
            clean = sorted((float(s["rtt_ms"]), s) for s in pts if float(s["loss_pct"]) == 0)
            xs = [x for x, s in clean if s["converged"]]
            ys = [float(s[metric]) / 1000 for x, s in clean if s["converged"]]
            style = "--" if m.startswith("direct") else "-"
            ax.plot(xs, ys, "o" + style, color=colors[m], label=m, ms=4)
            nc = [x for x, s in clean if not s["converged"]]
            ax.plot(nc, [timeout * 1.05] * len(nc), "x", color=colors[m], ms=8)
            for s in pts:
                if float(s["loss_pct"]) > 0:
                    y = float(s[metric]) / 1000 if s["converged"] else timeout * 1.05
                    ax.plot([float(s["rtt_ms"]) + 4], [y], "o" if s["converged"] else "x",
                            mfc="none", color=colors[m], ms=7)
        what = "e2e downtime" if metric == "e2e_downtime_ms" else "e2e total time"
        ax.set_title(f"{guest} guest, {what} (hollow: loss {', '.join(sorted({s['loss_pct'] for s in summary if float(s['loss_pct']) > 0}))} %; x: did not converge)",
                     fontsize=9)
        ax.set_xlabel("RTT (ms)")
        ax.set_ylabel(f"{what} (s)")
        ax.set_yscale("log")
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle("QEMU 7.2 live migration over the emulated WAN (median of runs)")
    fig.tight_layout()
    fig.savefig(args.out, dpi=110)
    print(f"wrote {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())

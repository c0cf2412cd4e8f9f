#!/usr/bin/python3
"""Plot goodput vs RTT from bench-wan.sh's summary.csv.

One panel per loss rate, one line per mode (median, with min–max as error bars), the link
rate as a dashed ceiling. Usage:

    scripts/plot-wan.py bench-out/wan-DATE/summary.csv [MORE.csv ...] -o goodput.png [--log]
        [--table table.md]

Several summaries (e.g. a direct-baseline run and an LMAS run) are plotted together. --table
also writes the medians as Markdown: one table per loss rate, RTTs across, each cell
"median (ratio to direct)", plus the gateways' median CPU.

Needs matplotlib (Debian: python3-matplotlib; run with /usr/bin/python3 if a pyenv python
lacks it).
"""

import argparse
import csv
import math
import sys
from collections import defaultdict

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("summary", nargs="+", help="summary.csv files written by scripts/bench-wan.sh")
    ap.add_argument("-o", "--out", default="goodput.png", help="PNG to write")
    ap.add_argument("--log", action="store_true", help="logarithmic goodput axis")
    ap.add_argument("--title", default="One TCP stream over the emulated WAN (median of runs)")
    ap.add_argument("--table", help="also write the medians as Markdown tables to this file")
    args = ap.parse_args()

    rows = [r for path in args.summary for r in csv.DictReader(open(path))]
    if not rows:
        print("plot-wan.py: no rows in", args.summary, file=sys.stderr)
        return 1
    if args.table:
        write_table(rows, args.table)
    # series[loss][mode] = [(rtt, median, min, max)]
    series = defaultdict(lambda: defaultdict(list))
    rates = set()
    for r in rows:
        loss = float(r["loss_pct"])
        med = float(r["median_mbit"])
        if math.isnan(med):
            continue
        series[loss][r["mode"]].append(
            (float(r["rtt_ms"]), med, float(r["min_mbit"]), float(r["max_mbit"]))
        )
        rates.add(float(r["rate_mbit"]))

    losses = sorted(series)
    fig, axes = plt.subplots(1, len(losses), figsize=(5.2 * len(losses), 4.4), squeeze=False, sharey=True)
    modes = sorted({m for l in series.values() for m in l}, key=lambda m: (not m.startswith("direct"), m))
    colors = {m: plt.cm.tab10(i % 10) for i, m in enumerate(modes)}
    for ax, loss in zip(axes[0], losses):
        for mode in modes:
            pts = sorted(series[loss].get(mode, []))
            if not pts:
                continue
            x = [p[0] for p in pts]
            y = [p[1] for p in pts]
            err = [[p[1] - p[2] for p in pts], [p[3] - p[1] for p in pts]]
            style = "--" if mode.startswith("direct") else "-"
            ax.errorbar(x, y, yerr=err, fmt="o" + style, color=colors[mode], label=mode, capsize=3, ms=4)
        for rate in rates:
            if rate > 0:
                ax.axhline(rate, color="black", ls=":", lw=1)
                ax.text(0, rate, f" link {rate:g} Mbit/s", va="bottom", fontsize=8)
        ax.set_title(f"loss {loss:g} %")
        ax.set_xlabel("RTT (ms)")
        ax.grid(True, alpha=0.3)
        if args.log:
            ax.set_yscale("log")
        else:
            ax.set_ylim(bottom=0, top=max([r for r in rates if r > 0], default=None) and max(rates) * 1.08)
    axes[0][0].set_ylabel("goodput (Mbit/s)")
    axes[0][-1].legend(loc="upper right", fontsize=8)
    fig.suptitle(args.title)
    fig.tight_layout()
    fig.savefig(args.out, dpi=110)
    print("wrote", args.out)
    return 0


def write_table(rows, path):
    modes = list(dict.fromkeys(r["mode"] for r in sorted(rows, key=lambda r: (not r["mode"].startswith("direct"), r["mode"] != "direct"))))
    rtts = sorted({float(r["rtt_ms"]) for r in rows})
    cell = {(r["mode"], float(r["rtt_ms"]), float(r["loss_pct"])): r for r in rows}
    out = []
    for loss in sorted({float(r["loss_pct"]) for r in rows}):
        out.append(f"**loss {loss:g} %**: median Mbit/s (ratio to direct), runs ok of runs where not all\n")
        out.append("| mode | " + " | ".join(f"RTT {t:g} ms" for t in rtts) + " | gw CPU a/b % |")
        out.append("|---|" + "---:|" * (len(rtts) + 1))
        for m in modes:
            cells, cpu = [], ""
            for t in rtts:
                r = cell.get((m, t, loss))
                if r is None:
                    cells.append("-")
                    continue
                ratio = "" if m == "direct" or r["ratio_to_direct"] == "nan" else f" ({float(r['ratio_to_direct']):.3g}x)"
                short = "" if r["runs_ok"] == r["runs"] else f" [{r['runs_ok']}/{r['runs']}]"
                cells.append(f"{float(r['median_mbit']):.0f}{ratio}{short}")
                if r.get("gwa_cpu_pct"):
                    cpu = f"{r['gwa_cpu_pct']}/{r['gwb_cpu_pct']} (RTT {t:g})"
            out.append(f"| {m} | " + " | ".join(cells) + f" | {cpu} |")
        out.append("")
    open(path, "w").write("\n".join(out))
    print("wrote", path)


if __name__ == "__main__":
    sys.exit(main())

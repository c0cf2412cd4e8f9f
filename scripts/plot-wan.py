#!/usr/bin/python3
"""Plot goodput vs RTT from bench-wan.sh's summary.csv.

One panel per loss rate, one line per mode (median, with min–max as error bars), the link
rate as a dashed ceiling. Usage:

    scripts/plot-wan.py bench-out/wan-DATE/summary.csv [MORE.csv ...] -o goodput.png [--log]

Several summaries (e.g. a direct-baseline run and an LMAS run) are plotted together.

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
    args = ap.parse_args()

    rows = [r for path in args.summary for r in csv.DictReader(open(path))]
    if not rows:
        print("plot-wan.py: no rows in", args.summary, file=sys.stderr)
        return 1
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


if __name__ == "__main__":
    sys.exit(main())

#!/usr/bin/env python3
"""How concurrent migrations through the gateway pair shared the tunnel (issue 17: two
concurrent migrations within +-10 % of equal shares).

  group-shares.py sample LMAS SOCKET OUT [INTERVAL]   poll `lmas status --json` until killed;
                                                    one JSON line per sample in OUT: each
                                                    ingress group's payload bytes sent
  group-shares.py summary OUT [SKIP_SECS]           print one line per group,
      "target,share,mbit", then "spread,PCT": over the time in which every group sent
      (from SKIP_SECS, default 1, after they all first did, to the last sample before one
      of them stopped), each group's part of the bytes sent and its rate; spread is the
      largest distance of a share from an equal one, in % of the equal share.
"""
import json
import sys

from status_poll import poll


def sample(lmas, socket, out, interval):
    def row(st):
        if st is None:
            return {"groups": {}}
        return {"groups": {g["target"]: g["sent_bytes"] for g in st["tunnel"]["groups"]
                           if g.get("source")}}
    poll(lmas, socket, out, interval, row)


def summary(out, skip):
    try:
        rows = [json.loads(line) for line in open(out)]
    except (OSError, ValueError):
        rows = []
    targets = sorted({t for r in rows for t in r["groups"]})
    if len(targets) < 2:
        print("spread,")
        return

    def all_sending(a, b):
        return all(t in a["groups"] and t in b["groups"] and b["groups"][t] > a["groups"][t]
                   for t in targets)

    moving = [i for i in range(1, len(rows)) if all_sending(rows[i - 1], rows[i])]
    if not moving:
        print("spread,")
        return
    start_t = rows[moving[0] - 1]["t"] + skip
    # The run of intervals, from the first, in which every group kept sending.
    end = moving[0]
    while end + 1 < len(rows) and all_sending(rows[end], rows[end + 1]):
        end += 1
    first = next((i for i in range(moving[0] - 1, end) if rows[i]["t"] >= start_t), None)
    if first is None or rows[end]["t"] - rows[first]["t"] <= 0:
        print("spread,")
        return
    secs = rows[end]["t"] - rows[first]["t"]
    sent = {t: rows[end]["groups"][t] - rows[first]["groups"][t] for t in targets}
    total = sum(sent.values())
    equal = 1 / len(targets)
    spread = 0.0
    for t in targets:
        share = sent[t] / total
        spread = max(spread, abs(share - equal) / equal * 100)
        print("%s,%.3f,%.1f" % (t, share, sent[t] * 8 / secs / 1e6))
    print("window_secs,%.1f" % secs)
    print("spread,%.1f" % spread)


if __name__ == "__main__":
    if len(sys.argv) >= 5 and sys.argv[1] == "sample":
        sample(sys.argv[2], sys.argv[3], sys.argv[4],
               float(sys.argv[5]) if len(sys.argv) > 5 else 0.25)
    elif len(sys.argv) >= 3 and sys.argv[1] == "summary":
        summary(sys.argv[2], float(sys.argv[3]) if len(sys.argv) > 3 else 1.0)
    else:
        sys.exit(__doc__)

#!/usr/bin/env python3
"""What a transfer through the gateway pair costs the WAN path: bytes in flight on the
data flows, their RTT, and the share of bytes sent again (issue 17's queue goals).

  wan-queue.py sample LMAS SOCKET OUT [INTERVAL]   poll `lmas status --json` until killed,
                                                 one JSON line per sample in OUT
  wan-queue.py summary OUT RTT_MS RATE_MBIT [SKIP_SECS]
                                                 print "inflight_bdp,rtt_ratio,retrans_pct,pace_est":
      median bytes in flight (the flows' segments on the wire x MSS: sent, not acked,
      not selectively acked, not marked lost) / (rate x RTT), median of
      the flows' mean smoothed RTT / RTT, segments retransmitted x MSS / bytes sent, and
      the tunnel pacer's highest bottleneck estimate / rate (empty while it had none), over
      the samples after SKIP_SECS (default 2: the flows' startup) while data moved.
"""
import json
import statistics
import sys

from status_poll import poll


def tcp(conn, field):
    """A flow's TCP figure, 0 where its datapath does not report it."""
    return conn["tcp"].get(field) or 0


def sample(lmas, socket, out, interval):
    def row(st):
        flows = [] if st is None else [c for c in st["tunnel"]["connections"]
                                       if c["kind"] == "data" and c.get("tcp")]
        if not flows:
            return None
        return {
            # On the wire where the gateway says (not SACKed, not lost), else unacked.
            "inflight": sum((tcp(c, "in_flight_segments") or tcp(c, "unacked_segments"))
                            * tcp(c, "mss") for c in flows),
            "rtt_us": statistics.mean(tcp(c, "rtt_us") for c in flows),
            "retrans_bytes": sum(tcp(c, "total_retransmits") * tcp(c, "mss") for c in flows),
            "sent": sum(c.get("bytes_sent") or 0 for c in flows),
            "pace_bw": (st["tunnel"].get("pacing") or {}).get("bottleneck_bytes_per_sec") or 0,
        }
    poll(lmas, socket, out, interval, row)


def summary(out, rtt_ms, rate_mbit, skip):
    try:
        rows = [json.loads(line) for line in open(out)]
    except (OSError, ValueError):
        rows = []
    rows = [r for r in rows if r["t"] >= skip]
    # Only while data moved: a sample after the transfer ended shows an idle path.
    moving = [b for a, b in zip(rows, rows[1:]) if b["sent"] > a["sent"]]
    if len(moving) < 2 or rtt_ms <= 0:
        print(",,,")
        return
    bdp = rate_mbit * 1e6 / 8 * rtt_ms / 1e3
    inflight = statistics.median(r["inflight"] for r in moving) / bdp
    rtt = statistics.median(r["rtt_us"] for r in moving) / 1e3 / rtt_ms
    first, last = rows[0], moving[-1]
    sent = last["sent"] - first["sent"]
    retrans = (last["retrans_bytes"] - first["retrans_bytes"]) / sent * 100 if sent > 0 else 0
    pace = max(r.get("pace_bw", 0) for r in moving) * 8 / (rate_mbit * 1e6) if rate_mbit > 0 else 0
    print("%.2f,%.2f,%.2f,%s" % (inflight, rtt, retrans, "%.2f" % pace if pace > 0 else ""))


if __name__ == "__main__":
    if len(sys.argv) >= 5 and sys.argv[1] == "sample":
        sample(sys.argv[2], sys.argv[3], sys.argv[4],
               float(sys.argv[5]) if len(sys.argv) > 5 else 0.5)
    elif len(sys.argv) >= 5 and sys.argv[1] == "summary":
        summary(sys.argv[2], float(sys.argv[3]), float(sys.argv[4]),
                float(sys.argv[5]) if len(sys.argv) > 5 else 2.0)
    else:
        sys.exit(__doc__)

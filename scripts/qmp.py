#!/usr/bin/python3
"""A small QMP client (standard library only) and the migration step of scripts/migrate.sh.

    scripts/qmp.py cmd SOCKET COMMAND [JSON-ARGS]     one command; prints the return value
    scripts/qmp.py wait-status SOCKET STATUS [SECS]   waits until query-status says STATUS
    scripts/qmp.py migrate --src SOCK --dst SOCK --uri URI --incoming URI
                   [--multifd N] [--max-bandwidth B] [--timeout S] [--progress]
                                                      runs one live migration, prints key=value

`migrate` prepares the destination (started with `-incoming defer`): capabilities `events`
(and `multifd`), `multifd-channels`, `migrate-incoming`; then the source: the same
capabilities, `max-bandwidth` (QEMU's default is 32 MiB/s: every run would measure the cap),
then `migrate`. It timestamps the `migrate` command with the host's wall clock and collects
the QMP events of both QEMUs (their timestamps come from the same host clock), and reports:

    e2e_total_ms     `migrate` sent -> destination MIGRATION completed
    e2e_downtime_ms  source STOP -> destination RESUME (na for a paused guest: it never runs)
    src_total_ms, src_downtime_ms, transferred_bytes, ...   the source's own query-migrate view
                     (it counts a migration done once its last byte is in its socket, which a
                     buffering proxy can make look shorter than it is: hence the e2e figures)
    src_stop_unix, dst_resume_unix   the two events' host-clock times (to line a run up
                     with gateway logs or socket samples)
    status           completed | failed | cancelled (timed out: did not converge)

Exit status: 0 when the migration completed, 3 when it did not converge within --timeout
(cancelled), 1 on errors.
"""

import argparse
import json
import select
import socket
import sys
import time


class QMPError(Exception):
    pass


class QMP:
    """One QMP connection: commands in order, events kept with their timestamps."""

    def __init__(self, path: str, timeout: float = 30.0):
        self.path = path
        deadline = time.monotonic() + timeout
        while True:
            try:
                self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                self.sock.connect(path)
                break
            except OSError as e:
                self.sock.close()
                if time.monotonic() > deadline:
                    raise QMPError(f"{path}: cannot connect: {e}") from e
                time.sleep(0.1)
        self.buf = b""
        self.events = []  # (timestamp seconds, name, data)
        greeting = self._read(timeout)
        if "QMP" not in greeting:
            raise QMPError(f"{path}: not a QMP greeting: {greeting}")
        self.cmd("qmp_capabilities")

    def fileno(self) -> int:
        return self.sock.fileno()

    def _read(self, timeout: float):
        """The next message that is not an event (events are stored), or None on timeout."""
        deadline = time.monotonic() + timeout
        while True:
            while b"\n" in self.buf:
                line, self.buf = self.buf.split(b"\n", 1)
                if not line.strip():
                    continue
                msg = json.loads(line)
                if "event" in msg:
                    ts = msg.get("timestamp", {})
                    t = ts.get("seconds", 0) + ts.get("microseconds", 0) / 1e6
                    self.events.append((t, msg["event"], msg.get("data", {})))
                    continue
                return msg
            left = deadline - time.monotonic()
            if left <= 0:
                return None
            r, _, _ = select.select([self.sock], [], [], left)
            if not r:
                return None
            data = self.sock.recv(65536)
            if not data:
                raise QMPError(f"{self.path}: QEMU closed the QMP connection")
            self.buf += data

    def poll(self, timeout: float = 0.0) -> None:
        """Reads whatever events have arrived within timeout."""
        msg = self._read(timeout)
        if msg is not None:
            raise QMPError(f"{self.path}: unexpected reply {msg}")

    def cmd(self, name: str, **args):
        req = {"execute": name}
        if args:
            req["arguments"] = args
        self.sock.sendall(json.dumps(req).encode() + b"\n")
        msg = self._read(60.0)
        if msg is None:
            raise QMPError(f"{self.path}: no reply to {name} within 60 s")
        if "error" in msg:
            raise QMPError(f"{self.path}: {name}: {msg['error'].get('desc', msg['error'])}")
        return msg.get("return")

    def event(self, name: str, pred=lambda d: True):
        """The timestamp of the first stored event NAME whose data satisfies pred, or None."""
        for t, n, d in self.events:
            if n == name and pred(d):
                return t
        return None


def ms(a, b) -> str:
    return "na" if a is None or b is None else f"{(b - a) * 1000:.0f}"


def progress_line(info: dict, secs: float) -> str:
    """One line of migration progress from the source's query-migrate."""
    ram = info.get("ram", {})
    sent, left = ram.get("transferred", 0), ram.get("remaining", 0)
    line = f"migrating {secs:5.1f} s: {sent / 2**20:6.0f} MiB sent"
    if info.get("status") == "completed":
        return line + ", source done; waiting for the destination (bytes still in flight)"
    rate = ram.get("mbps", 0.0)
    passes = ram.get("dirty-sync-count", 0)
    return line + f", {left / 2**20:6.0f} MiB left, source at {rate:6.1f} Mbit/s, pass {passes}"


def trace_line(out, info: dict) -> None:
    """One sample of the source's view: what QEMU stops on is remaining < mbps x downtime-limit."""
    ram = info.get("ram", {})
    out.write(
        f"{time.time():.3f} {info.get('status')} transferred={ram.get('transferred', 0)}"
        f" remaining={ram.get('remaining', 0)} mbps={ram.get('mbps', 0.0):.1f}"
        f" sync={ram.get('dirty-sync-count', 0)} expected_downtime_ms={info.get('expected-downtime', 'na')}\n"
    )
    out.flush()


def migrate(a) -> int:
    dst = QMP(a.dst)
    src = QMP(a.src)
    caps = [{"capability": "events", "state": True}]
    if a.multifd:
        caps.append({"capability": "multifd", "state": True})
    for q in (dst, src):
        q.cmd("migrate-set-capabilities", capabilities=caps)
        if a.multifd:
            q.cmd("migrate-set-parameters", **{"multifd-channels": a.multifd})
    dst.cmd("migrate-incoming", uri=a.incoming)
    src.cmd("migrate-set-parameters", **{"max-bandwidth": a.max_bandwidth})
    was_running = src.cmd("query-status")["running"]

    t_start = time.time()
    src.cmd("migrate", uri=a.uri)
    done = lambda d: d.get("status") == "completed"  # noqa: E731
    bad = lambda d: d.get("status") in ("failed", "cancelled")  # noqa: E731
    deadline = time.monotonic() + a.timeout
    status = "timeout"
    next_progress = 0.0
    next_trace = 0.0
    trace = open(a.trace, "w") if a.trace else None
    while time.monotonic() < deadline:
        r, _, _ = select.select([src, dst], [], [], a.trace_every if trace else 0.5)
        for q in r:
            q.poll(0.01)
        if a.progress and time.monotonic() >= next_progress:
            next_progress = time.monotonic() + 0.5
            line = progress_line(src.cmd("query-migrate"), time.time() - t_start)
            sys.stderr.write("\r\033[K" + line)
            sys.stderr.flush()
        if trace and time.monotonic() >= next_trace:
            next_trace = time.monotonic() + a.trace_every
            trace_line(trace, src.cmd("query-migrate"))
        if src.event("MIGRATION", bad) or dst.event("MIGRATION", bad):
            status = "failed"
            break
        if dst.event("MIGRATION", done) and (not was_running or dst.event("RESUME")):
            status = "completed"
            break
    if a.progress:
        sys.stderr.write("\r\033[K")
        sys.stderr.flush()
    info = src.cmd("query-migrate")
    if status == "timeout":
        # Not converged in time (or stuck): cancel, so the source guest keeps running.
        src.cmd("migrate_cancel")
        status = "cancelled"
        info = src.cmd("query-migrate")
    elif status == "failed":
        time.sleep(0.5)
        info = src.cmd("query-migrate")

    ram = info.get("ram", {})
    t_done = dst.event("MIGRATION", done)
    t_stop, t_resume = src.event("STOP"), dst.event("RESUME")
    e2e = ms(t_start, t_done)
    goodput = "na"
    if t_done is not None and ram.get("transferred"):
        goodput = f"{ram['transferred'] * 8 / (t_done - t_start) / 1e6:.1f}"
    fields = {
        "status": status,
        "converged": int(status == "completed"),
        "e2e_total_ms": e2e,
        "e2e_downtime_ms": ms(t_stop, t_resume) if was_running else "na",
        "e2e_goodput_mbit": goodput,
        "src_total_ms": info.get("total-time", "na"),
        "src_downtime_ms": info.get("downtime", "na"),
        "transferred_bytes": ram.get("transferred", "na"),
        "ram_total_bytes": ram.get("total", "na"),
        "duplicate_pages": ram.get("duplicate", "na"),
        "normal_pages": ram.get("normal", "na"),
        "dirty_sync_count": ram.get("dirty-sync-count", "na"),
        "src_error": (info.get("error-desc") or "").replace(" ", "_") or "none",
        # Host-clock times, to line a run up with gateway logs or socket samples.
        "src_stop_unix": f"{t_stop:.6f}" if t_stop is not None else "na",
        "dst_resume_unix": f"{t_resume:.6f}" if t_resume is not None else "na",
    }
    print(" ".join(f"{k}={v}" for k, v in fields.items()))
    return {"completed": 0, "cancelled": 3}.get(status, 1)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="what", required=True)
    c = sub.add_parser("cmd")
    c.add_argument("socket")
    c.add_argument("command")
    c.add_argument("args", nargs="?", default="{}")
    w = sub.add_parser("wait-status")
    w.add_argument("socket")
    w.add_argument("status")
    w.add_argument("secs", nargs="?", type=float, default=30.0)
    m = sub.add_parser("migrate")
    m.add_argument("--src", required=True)
    m.add_argument("--dst", required=True)
    m.add_argument("--uri", required=True, help="where the source connects, e.g. tcp:10.0.1.1:6000")
    m.add_argument("--incoming", required=True, help="where the destination listens")
    m.add_argument("--multifd", type=int, default=0, help="multifd channels (0: off)")
    m.add_argument("--max-bandwidth", type=int, default=100 << 30, help="bytes/s [100 GiB/s]")
    m.add_argument("--timeout", type=float, default=300.0)
    m.add_argument("--progress", action="store_true", help="a progress line on stderr (twice a second)")
    m.add_argument("--trace", help="write the source's query-migrate to this file (time, bytes, mbps)")
    m.add_argument("--trace-every", type=float, default=0.05, help="seconds between trace samples [0.05]")
    a = ap.parse_args()
    try:
        if a.what == "cmd":
            print(json.dumps(QMP(a.socket).cmd(a.command, **json.loads(a.args))))
            return 0
        if a.what == "wait-status":
            q = QMP(a.socket)
            deadline = time.monotonic() + a.secs
            while time.monotonic() < deadline:
                if q.cmd("query-status")["status"] == a.status:
                    return 0
                time.sleep(0.2)
            print(f"qmp.py: {a.socket}: status not {a.status} after {a.secs} s", file=sys.stderr)
            return 1
        return migrate(a)
    except (QMPError, OSError, ValueError) as e:
        print(f"qmp.py: error: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())

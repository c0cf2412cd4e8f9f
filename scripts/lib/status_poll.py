"""Samples a running gateway's `lmas status --json` into a JSON-lines file, for the bench
scripts' samplers (wan-queue.py, group-shares.py). Imported, not run."""
import json
import subprocess
import time


def poll(lmas, socket, out, interval, row):
    """Until killed, every INTERVAL s: row(status) (status None when it could not be read or
    had an unexpected shape) gives a dict to write with its time "t", or None to write nothing."""
    t0 = time.monotonic()
    with open(out, "a") as f:
        while True:
            try:
                st = json.loads(subprocess.run(
                    [lmas, "status", "--json", "--socket", socket],
                    capture_output=True, timeout=5, check=True).stdout)
                r = row(st)
            except (subprocess.SubprocessError, ValueError, KeyError, TypeError):
                r = row(None)
            if r is not None:
                f.write(json.dumps({"t": time.monotonic() - t0, **r}) + "\n")
                f.flush()
            time.sleep(interval)

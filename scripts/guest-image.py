#!/usr/bin/python3
"""Write a guest RAM image for the migration lab's paused guest (scripts/migrate.sh).

The image is what QEMU maps as the guest's RAM (memory-backend-file, share=off), so the
migration moves realistic content: runs of 1-64 pages, each run zero pages, text-like pages
(log and config lines cut from a generated corpus, highly compressible) or random pages
(incompressible), in proportions set by --mix. Deterministic for a given --seed and size.

    scripts/guest-image.py --bytes 1073733632 -o target/qemu/ram-1023.99M.img

Standard library only. Prints one line: bytes=N zero_pages=Z text_pages=T random_pages=R.
"""

import argparse
import random
import sys

PAGE = 4096
WORDS = (
    "migration vcpu dirty page bitmap kernel tcp socket window ack retransmit gateway tunnel "
    "flow session frame buffer memory region block device virtio queue interrupt timer clock "
    "error warning info debug request response status ok failed retry connect listen accept "
    "the of and to in is for on with as by at from this that be are was it an or not"
).split()


def corpus(rng: random.Random, size: int) -> bytes:
    """Log- and config-like text: timestamps, levels, words, key=value pairs, numbers."""
    out = []
    n = 0
    t = 1_700_000_000
    while n < size:
        t += rng.randrange(0, 3)
        words = " ".join(rng.choice(WORDS) for _ in range(rng.randrange(3, 12)))
        kv = " ".join(f"{rng.choice(WORDS)}={rng.randrange(0, 100000)}" for _ in range(rng.randrange(0, 4)))
        line = f"{t}.{rng.randrange(0, 1000000):06d} {rng.choice(['INFO', 'DEBUG', 'WARN'])} {words} {kv}\n"
        out.append(line)
        n += len(line)
    return "".join(out).encode()[:size]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bytes", type=int, required=True, help="image size (a multiple of 4096)")
    ap.add_argument("-o", "--out", required=True)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--mix", default="35,30,35", help="percent of zero,text,random pages [35,30,35]")
    args = ap.parse_args()
    if args.bytes <= 0 or args.bytes % PAGE:
        ap.error("--bytes must be a positive multiple of 4096")
    weights = [float(x) for x in args.mix.split(",")]
    if len(weights) != 3 or sum(weights) <= 0 or min(weights) < 0:
        ap.error("--mix takes three non-negative percentages: zero,text,random")

    rng = random.Random(args.seed)
    text = corpus(rng, 4 << 20)
    zero = bytes(PAGE)
    counts = [0, 0, 0]
    pages = args.bytes // PAGE
    chunk = bytearray()
    with open(args.out, "wb") as f:
        done = 0
        while done < pages:
            kind = rng.choices((0, 1, 2), weights)[0]
            run = min(rng.randrange(1, 65), pages - done)
            if kind == 0:
                chunk += zero * run
            elif kind == 1:
                for _ in range(run):
                    off = rng.randrange(0, len(text) - PAGE)
                    chunk += text[off:off + PAGE]
            else:
                chunk += rng.randbytes(PAGE * run)
            counts[kind] += run
            done += run
            if len(chunk) >= 64 << 20:
                f.write(chunk)
                chunk.clear()
        f.write(chunk)
    print(f"bytes={args.bytes} zero_pages={counts[0]} text_pages={counts[1]} random_pages={counts[2]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

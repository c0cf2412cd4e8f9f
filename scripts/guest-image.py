#!/usr/bin/python3
"""Write a guest RAM image for the migration lab's paused guest (scripts/migrate.sh).

The image is what QEMU maps as the guest's RAM (memory-backend-file, share=off), so the
migration moves realistic content: runs of 1-64 pages, each run zero pages, text-like pages
(log and config lines cut from a generated corpus, highly compressible) or random pages
(incompressible), in proportions set by --mix. Deterministic for a given --seed and size.

With --files DIR the text and random pages are instead the next pages of the regular files
under DIR, walked in sorted order (e.g. /usr: binaries, libraries, headers, documentation,
some of it already compressed): real code and data, as an OS and its page cache fill a
guest. Deterministic for a given machine's DIR.

    scripts/guest-image.py --bytes 1073733632 -o target/qemu/ram-1023.99M.img

Standard library only. Prints one line: bytes=N zero_pages=Z text_pages=T random_pages=R
(with --files: bytes=N zero_pages=Z file_pages=F).
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


def file_pages(root: str):
    """The pages of every regular file under root (sorted walk, each file padded with zeros to
    a whole page, unreadable files skipped), cycling when they run out."""
    import os

    paths = []
    for d, dirs, files in os.walk(root):
        dirs.sort()
        paths += [os.path.join(d, f) for f in sorted(files)]
    while True:
        found = False
        for path in paths:
            if os.path.islink(path) or not os.path.isfile(path):
                continue
            try:
                with open(path, "rb") as f:
                    while page := f.read(PAGE):
                        found = True
                        yield page.ljust(PAGE, b"\0")
            except OSError:
                continue
        if not found:
            raise SystemExit(f"guest-image.py: no readable file under {root}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bytes", type=int, required=True, help="image size (a multiple of 4096)")
    ap.add_argument("-o", "--out", required=True)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--mix", default="35,30,35", help="percent of zero,text,random pages [35,30,35]")
    ap.add_argument("--files", metavar="DIR", help="take the non-zero pages from the files under DIR")
    args = ap.parse_args()
    if args.bytes <= 0 or args.bytes % PAGE:
        ap.error("--bytes must be a positive multiple of 4096")
    weights = [float(x) for x in args.mix.split(",")]
    if len(weights) != 3 or sum(weights) <= 0 or min(weights) < 0:
        ap.error("--mix takes three non-negative percentages: zero,text,random")

    rng = random.Random(args.seed)
    text = corpus(rng, 4 << 20)
    pages_of_files = file_pages(args.files) if args.files else None
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
            elif pages_of_files is not None:
                for _ in range(run):
                    chunk += next(pages_of_files)
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
    if pages_of_files is not None:
        print(f"bytes={args.bytes} zero_pages={counts[0]} file_pages={counts[1] + counts[2]}")
    else:
        print(f"bytes={args.bytes} zero_pages={counts[0]} text_pages={counts[1]} random_pages={counts[2]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

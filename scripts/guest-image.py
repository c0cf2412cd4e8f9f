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

With --template-seed T the image is a clone of template T, as VMs cloned from one template
snapshot are: the same OS and library pages at the same addresses, data of their own. Two
page streams are generated side by side, the template's (the image --seed T writes) and this
VM's own (the image --seed writes); a third generator, seeded with T alone, cuts the pages into
runs of 1-64 and takes each run from the template with probability --template-share (0.6),
else from the own stream, at the same page offsets. Every clone of T thus holds the template's
pages in the same runs; clones with different seeds differ in the rest. Share 0 writes the
image of --seed, share 1 that of --seed T.

    scripts/guest-image.py --bytes 1073733632 -o target/qemu/ram-1023.99M.img
    scripts/guest-image.py --bytes 1073733632 --seed 11 --template-seed 100 -o clone-11.img

Standard library only. Prints one line: bytes=N zero_pages=Z text_pages=T random_pages=R
(with --files: bytes=N zero_pages=Z file_pages=F; with --template-seed also template_pages=
and own_pages=).
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


def runs(rng: random.Random, text: bytes, weights, pages: int, pages_of_files=None):
    """The image as runs: yields (kind, pages, data) with kind 0 zero, 1 text (or file), 2
    random (or file), in page order, until PAGES pages."""
    zero = bytes(PAGE)
    done = 0
    while done < pages:
        kind = rng.choices((0, 1, 2), weights)[0]
        run = min(rng.randrange(1, 65), pages - done)
        if kind == 0:
            data = zero * run
        elif pages_of_files is not None:
            data = b"".join(next(pages_of_files) for _ in range(run))
        elif kind == 1:
            parts = []
            for _ in range(run):
                off = rng.randrange(0, len(text) - PAGE)
                parts.append(text[off:off + PAGE])
            data = b"".join(parts)
        else:
            data = rng.randbytes(PAGE * run)
        yield kind, run, data
        done += run


class Pages:
    """A page-addressed reader over runs(): take(n) returns the next n pages and how many of
    them are of each kind."""

    def __init__(self, source):
        self.source = source
        self.kind, self.left, self.data, self.off = 0, 0, b"", 0

    def take(self, n: int):
        out = []
        counts = [0, 0, 0]
        while n:
            if not self.left:
                self.kind, self.left, self.data = next(self.source)
                self.off = 0
            k = min(n, self.left)
            out.append(self.data[self.off:self.off + k * PAGE])
            counts[self.kind] += k
            self.off += k * PAGE
            self.left -= k
            n -= k
        return b"".join(out), counts


def template_image(args, weights, out) -> int:
    """--template-seed T --template-share S: every page is either the template's (what the
    image for --seed T holds at that page) or this VM's own (what the image for --seed holds
    there), chosen per run of 1-64 pages by a generator seeded with T alone, a run being the
    template's with probability S. Every VM of one template (and share) thus has the template's
    pages at the same guest addresses, and its own data elsewhere."""
    pages = args.bytes // PAGE
    streams = []
    for seed in (args.template_seed, args.seed):
        rng = random.Random(seed)
        streams.append(Pages(runs(rng, corpus(rng, 4 << 20), weights, pages)))
    template, own = streams
    pick = random.Random(f"guest-image.py template {args.template_seed}")
    counts = [0, 0, 0]
    shared = 0
    chunk = bytearray()
    done = 0
    while done < pages:
        run = min(pick.randrange(1, 65), pages - done)
        from_template = pick.random() < args.template_share
        t_data, t_counts = template.take(run)
        o_data, o_counts = own.take(run)
        data, kinds = (t_data, t_counts) if from_template else (o_data, o_counts)
        chunk += data
        counts = [a + b for a, b in zip(counts, kinds)]
        shared += run if from_template else 0
        done += run
        if len(chunk) >= 64 << 20:
            out.write(chunk)
            chunk.clear()
    out.write(chunk)
    print(f"bytes={args.bytes} zero_pages={counts[0]} text_pages={counts[1]} random_pages={counts[2]}"
          f" template_pages={shared} own_pages={pages - shared}")
    return 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bytes", type=int, required=True, help="image size (a multiple of 4096)")
    ap.add_argument("-o", "--out", required=True)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--mix", default="35,30,35", help="percent of zero,text,random pages [35,30,35]")
    ap.add_argument("--files", metavar="DIR", help="take the non-zero pages from the files under DIR")
    ap.add_argument("--template-seed", type=int, metavar="T",
                    help="a VM cloned from template T: runs of T's image at the same pages, else this seed's own")
    ap.add_argument("--template-share", type=float, default=0.6, metavar="S",
                    help="with --template-seed: the probability that a run is the template's [0.6]")
    args = ap.parse_args()
    if args.bytes <= 0 or args.bytes % PAGE:
        ap.error("--bytes must be a positive multiple of 4096")
    weights = [float(x) for x in args.mix.split(",")]
    if len(weights) != 3 or sum(weights) <= 0 or min(weights) < 0:
        ap.error("--mix takes three non-negative percentages: zero,text,random")
    if args.template_seed is not None:
        if args.files:
            ap.error("--template-seed does not combine with --files")
        if not 0 <= args.template_share <= 1:
            ap.error("--template-share is a probability, 0 to 1")
        with open(args.out, "wb") as f:
            return template_image(args, weights, f)

    rng = random.Random(args.seed)
    text = corpus(rng, 4 << 20)
    pages_of_files = file_pages(args.files) if args.files else None
    counts = [0, 0, 0]
    pages = args.bytes // PAGE
    chunk = bytearray()
    with open(args.out, "wb") as f:
        for kind, run, data in runs(rng, text, weights, pages, pages_of_files):
            chunk += data
            counts[kind] += run
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

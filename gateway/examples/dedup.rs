//! What WAN dedup finds again in a file sent twice: feeds FILE_A through a `dedup::Chunker`
//! and `dedup::encode_frame` as a session would (64 KiB writes, frames of at most 128 KiB cut
//! at the last chunk boundary), with a sender `Index` and a receiver `MemoryStore` of 4 GiB each
//! (every chunk promoted at once, every frame resolved and checked against its bytes), then
//! FILE_B the same way (FILE_A again when absent), and prints for that second pass, for each
//! average chunk size (min avg/4, max avg*4): bytes in, bytes of encoded items out, the share
//! sent as references (all, and less chunks of zeros only, which packing sends as their
//! length anyway), chunks and whole-chunk items, and the rate of chunking and fingerprinting
//! (`Chunker::feed` and `encode_frame`, index look-ups included) on one core.
//!
//! ```sh
//! python3 scripts/guest-image.py --bytes 268435456 --seed 1 -o /tmp/g1.img
//! cargo run --release -p lmas --example dedup -- /tmp/g1.img [/tmp/g2.img] [--framed both]
//! cargo run --release -p lmas --example dedup -- --entry-overhead
//! ```
//!
//! `--framed both|second`: an 8-byte header (page address and flags, as QEMU's RAM stream
//! has) before each 4 KiB page of both files, or of FILE_B only (the same memory shifted
//! against the first pass). `--avg 1024,4096`: other average sizes. `--entry-overhead`:
//! measures what a `MemoryStore` entry costs beyond its chunk's bytes (resident memory grown by
//! inserting chunks of 1-4 KiB, less their bytes, per entry), for `store::ENTRY_OVERHEAD`.

use std::time::{Duration, Instant};

use bytes::Bytes;
use lmas::dedup::{
    encode_frame, encoded_len, resolve, ChunkSizes, Chunker, Index, Item, MemoryStore, Resolved,
};

const WRITE: usize = 64 << 10;
const FRAME: u64 = 128 << 10;
const CAPACITY: u64 = 4 << 30;

/// What one pass did.
#[derive(Default)]
struct Pass {
    bytes_in: u64,
    bytes_out: u64,
    ref_bytes: u64,
    /// Of `ref_bytes`, those in chunks of zeros only (packing sends zero runs as their
    /// length already).
    zero_ref_bytes: u64,
    chunks: u64,
    /// Time in `Chunker::feed` and `encode_frame` (chunking, fingerprinting, index look-ups).
    busy: Duration,
}

/// Sends `data` through the sender's chunker and encoder and the receiver's `resolve`.
fn pass(data: &Bytes, sizes: ChunkSizes, index: &mut Index, store: &mut MemoryStore) -> Pass {
    let mut p = Pass::default();
    let mut chunker = Chunker::new(sizes);
    let (mut next, mut on_boundary) = (0u64, true);
    let mut frames = |chunker: &mut Chunker, p: &mut Pass, last: bool| {
        while next < chunker.fed() && (chunker.fed() - next >= FRAME || last) {
            let limit = (next + FRAME).min(chunker.fed());
            let end = chunker.last_boundary_in(next, limit).unwrap_or(limit);
            let payload = data.slice(next as usize..end as usize);
            let t = Instant::now();
            let enc = encode_frame(
                &payload,
                next,
                on_boundary,
                chunker.boundaries(next, end),
                index,
                None,
            );
            p.busy += t.elapsed();
            on_boundary = chunker.last_boundary_in(end - 1, end) == Some(end);
            chunker.forget_up_to(end);
            for &(_, fp, len) in &enc.new_chunks {
                index.insert(fp, len, 0);
            }
            p.bytes_in += payload.len() as u64;
            p.bytes_out += encoded_len(&enc.items) as u64;
            p.ref_bytes += enc.ref_bytes;
            let mut at = 0;
            for item in &enc.items {
                let n = item.plain_len();
                if matches!(item, Item::Ref { .. }) && payload[at..at + n].iter().all(|&b| b == 0) {
                    p.zero_ref_bytes += n as u64;
                }
                at += n;
            }
            p.chunks += enc
                .items
                .iter()
                .filter(|i| !matches!(i, Item::Piece(_)))
                .count() as u64;
            match resolve(enc.items, store).0 {
                Resolved::Data(got) if got == payload => {}
                other => {
                    eprintln!("dedup: frame at {next} resolved wrong: {other:?}");
                    std::process::exit(1);
                }
            }
            next = end;
        }
    };
    for write in data.chunks(WRITE) {
        let t = Instant::now();
        chunker.feed(write);
        p.busy += t.elapsed();
        frames(&mut chunker, &mut p, false);
    }
    chunker.finish();
    frames(&mut chunker, &mut p, true);
    p
}

/// An 8-byte header (page address, a flag) before each 4 KiB page, as QEMU sends RAM.
fn framed(data: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(data.len() + data.len() / 512);
    for (i, page) in data.chunks(4096).enumerate() {
        out.extend_from_slice(&((i as u64) << 12 | 0x8).to_be_bytes());
        out.extend_from_slice(page);
    }
    out
}

fn read(path: &str) -> Vec<u8> {
    std::fs::read(path).unwrap_or_else(|e| {
        eprintln!("dedup: cannot read {path}: {e}");
        std::process::exit(1);
    })
}

/// Resident memory of this process, bytes.
fn rss() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").expect("/proc/self/statm");
    let pages: u64 = statm.split_whitespace().nth(1).unwrap().parse().unwrap();
    pages * 4096
}

fn entry_overhead() {
    let mut x = 0x9e37_79b9_7f4a_7c15u64;
    let mut buf = vec![0u8; 4096];
    for (i, b) in buf.iter_mut().enumerate() {
        *b = (i * 7) as u8;
    }
    println!(
        "{:>10} {:>14} {:>16}",
        "entries", "chunk bytes", "overhead/entry"
    );
    let mut store = MemoryStore::new(u64::MAX);
    let before = rss();
    let (mut n, mut bytes) = (0u64, 0u64);
    for target in [
        250_000u64, 500_000, 750_000, 1_000_000, 1_500_000, 2_000_000,
    ] {
        while n < target {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let len = 1024 + (x % 3073) as usize;
            buf[..8].copy_from_slice(&n.to_le_bytes());
            store.insert(&buf[..len]);
            n += 1;
            bytes += len as u64;
        }
        let grown = rss() - before;
        println!(
            "{n:>10} {bytes:>14} {:>16.1}",
            (grown as f64 - bytes as f64) / n as f64
        );
    }
}

fn main() {
    let mut args = std::env::args().skip(1);
    let (mut files, mut framing, mut avgs) = (Vec::new(), None, vec![1024u32, 2048, 4096, 8192]);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--entry-overhead" => return entry_overhead(),
            "--framed" => framing = args.next(),
            "--avg" => {
                avgs = args
                    .next()
                    .unwrap_or_default()
                    .split(',')
                    .map(|v| {
                        v.parse()
                            .expect("--avg takes sizes in bytes, comma-separated")
                    })
                    .collect()
            }
            f if !f.starts_with('-') => files.push(a),
            other => {
                eprintln!("dedup: unexpected argument {other}");
                std::process::exit(2);
            }
        }
    }
    if files.is_empty() || files.len() > 2 {
        eprintln!(
            "usage: dedup FILE_A [FILE_B] [--framed both|second] [--avg N,N] | --entry-overhead"
        );
        std::process::exit(2);
    }
    let a = read(&files[0]);
    let b = files.get(1).map(|f| read(f));
    let (a, b) = match framing.as_deref() {
        None => (a.clone(), b.unwrap_or(a)),
        Some("both") => (framed(&a), framed(b.as_ref().unwrap_or(&a))),
        Some("second") => (a.clone(), framed(b.as_ref().unwrap_or(&a))),
        Some(other) => {
            eprintln!("dedup: --framed takes both or second, not {other}");
            std::process::exit(2);
        }
    };
    let (a, b) = (Bytes::from(a), Bytes::from(b));
    println!(
        "first {} ({} bytes), second {} ({} bytes), framed: {}",
        files[0],
        a.len(),
        files.get(1).unwrap_or(&files[0]),
        b.len(),
        framing.as_deref().unwrap_or("no"),
    );
    println!(
        "{:>8} {:>12} {:>12} {:>8} {:>12} {:>12} {:>9} {:>10}",
        "avg",
        "bytes in",
        "items out",
        "out/in",
        "found again",
        "(not zeros)",
        "chunks",
        "MB/s/core"
    );
    for avg in avgs {
        let sizes = ChunkSizes {
            min: avg / 4,
            avg,
            max: avg * 4,
        };
        let (mut index, mut store) = (Index::new(CAPACITY), MemoryStore::new(CAPACITY));
        let _ = pass(&a, sizes, &mut index, &mut store);
        let p = pass(&b, sizes, &mut index, &mut store);
        println!(
            "{:>7}K {:>12} {:>12} {:>8.3} {:>11.1}% {:>11.1}% {:>9} {:>10.0}",
            avg / 1024,
            p.bytes_in,
            p.bytes_out,
            p.bytes_out as f64 / p.bytes_in as f64,
            p.ref_bytes as f64 * 100.0 / p.bytes_in as f64,
            (p.ref_bytes - p.zero_ref_bytes) as f64 * 100.0 / p.bytes_in as f64,
            p.chunks,
            p.bytes_in as f64 / p.busy.as_secs_f64() / 1e6,
        );
    }
}

//! The costs a WAN dedup cache would add per byte (issue 16): content-defined chunking
//! (FastCDC) at several average chunk sizes, and fingerprinting each chunk with a
//! collision-resistant hash (SHA-256 from ring and from sha2, both using SHA-NI where the CPU
//! has it, and BLAKE3). Also how many chunks of a second copy of the data, shifted by a
//! small header between pages (as QEMU's stream interleaves), are found again.
//!
//! Run: `cargo bench --manifest-path gateway/bench/Cargo.toml --bench dedup`.

use std::collections::HashSet;
use std::path::Path;
use std::process::Command;
use std::time::Instant;

const SIZE: usize = 64 << 20;
const PASSES: usize = 3;

fn guest() -> Vec<u8> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let out = std::env::temp_dir().join("lmas-codec-35-30-35.img");
    if !out.exists() {
        let status = Command::new("python3")
            .arg(root.join("scripts/guest-image.py"))
            .args(["--bytes", &SIZE.to_string(), "--mix", "35,30,35", "-o"])
            .arg(&out)
            .stdout(std::process::Stdio::null())
            .status()
            .expect("run scripts/guest-image.py");
        assert!(status.success());
    }
    std::fs::read(&out).unwrap()
}

/// The same pages as QEMU sends them: an 8-byte header (offset and flags) before each page.
fn framed(data: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(data.len() + data.len() / 512);
    for (i, page) in data.chunks(4096).enumerate() {
        out.extend_from_slice(&((i as u64) << 12 | 0x8).to_be_bytes());
        out.extend_from_slice(page);
    }
    out
}

fn mbps(bytes: usize, f: impl Fn()) -> f64 {
    let mut best = Vec::new();
    for _ in 0..PASSES {
        let t = Instant::now();
        f();
        best.push(bytes as f64 / t.elapsed().as_secs_f64() / 1e6);
    }
    best.sort_by(|a, b| a.partial_cmp(b).unwrap());
    best[best.len() / 2]
}

fn chunks(data: &[u8], avg: u32) -> Vec<(usize, usize)> {
    fastcdc::v2020::FastCDC::new(data, avg / 4, avg, avg * 4)
        .map(|c| (c.offset, c.length))
        .collect()
}

fn main() {
    let data = guest();
    let second = framed(&data);
    println!("{:<28} {:>10} {:>10} {:>14}", "stage", "MB/s", "chunks", "found again");
    for avg in [1024u32, 2048, 4096, 8192, 16384] {
        let rate = mbps(data.len(), || {
            std::hint::black_box(chunks(&data, avg));
        });
        let a = chunks(&data, avg);
        let seen: HashSet<&[u8]> = a.iter().map(|&(o, l)| &data[o..o + l]).collect();
        let b = chunks(&second, avg);
        let again: usize = b
            .iter()
            .filter(|&&(o, l)| seen.contains(&second[o..o + l]))
            .map(|&(_, l)| l)
            .sum();
        println!(
            "{:<28} {:>10.0} {:>10} {:>13.1}%",
            format!("fastcdc avg {} KiB", avg / 1024),
            rate,
            a.len(),
            again as f64 * 100.0 / second.len() as f64
        );
    }
    let pieces = chunks(&data, 8192);
    let hash = |name: &str, f: &dyn Fn(&[u8])| {
        let rate = mbps(data.len(), || {
            for &(o, l) in &pieces {
                f(&data[o..o + l]);
            }
        });
        println!("{name:<28} {rate:>10.0}");
    };
    hash("sha256 (ring)", &|c| {
        std::hint::black_box(ring::digest::digest(&ring::digest::SHA256, c));
    });
    hash("sha256 (sha2)", &|c| {
        use sha2::Digest;
        std::hint::black_box(sha2::Sha256::digest(c));
    });
    hash("blake3", &|c| {
        std::hint::black_box(blake3::hash(c));
    });
}

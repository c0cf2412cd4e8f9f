//! Frame compression candidates for the gateways (issue 15): each 64 KiB frame compressed on
//! its own, as the gateway would, on guest-memory-like data and on real files.
//!
//! Run: `cargo bench --manifest-path gateway/bench/Cargo.toml --bench codec` (about a
//! minute). Prints one row per data set and codec: the ratio (compressed ÷ original bytes),
//! compress and decompress MB/s on one core (median of PASSES passes over the data), and the
//! cost of the cheap "is it compressible?" probe the adaptive mode would run on every frame.
//!
//! Data sets (64 MiB each):
//! - `guest-mix`: the lab's paused-guest image (`scripts/guest-image.py`: runs of zero, text-like
//!   and random pages, 35/30/35 %);
//! - `guest-text`, `guest-zero`, `guest-random`: the same generator with one kind of page only;
//! - `libs`: the machine's shared libraries (`/usr/lib/x86_64-linux-gnu/*.so*`, concatenated):
//!   real code and data pages, as an OS and its libraries fill a guest's memory.

use std::path::Path;
use std::process::Command;
use std::time::Instant;

const FRAME: usize = 64 * 1024;
const SIZE: usize = 64 << 20;
const PASSES: usize = 5;

fn guest(mix: &str) -> Vec<u8> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let out = std::env::temp_dir().join(format!("lmas-codec-{}.img", mix.replace(',', "-")));
    if !out.exists() {
        let status = Command::new("python3")
            .arg(root.join("scripts/guest-image.py"))
            .args(["--bytes", &SIZE.to_string(), "--mix", mix, "-o"])
            .arg(&out)
            .stdout(std::process::Stdio::null())
            .status()
            .expect("run scripts/guest-image.py");
        assert!(status.success(), "guest-image.py failed");
    }
    std::fs::read(&out).expect("read the guest image")
}

fn libs() -> Vec<u8> {
    let mut files: Vec<_> = std::fs::read_dir("/usr/lib/x86_64-linux-gnu")
        .expect("read /usr/lib/x86_64-linux-gnu")
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.to_string_lossy().contains(".so") && p.is_file())
        .collect();
    files.sort();
    let mut out = Vec::with_capacity(SIZE);
    for f in files {
        if let Ok(bytes) = std::fs::read(&f) {
            out.extend_from_slice(&bytes[..bytes.len().min(SIZE - out.len())]);
        }
        if out.len() == SIZE {
            break;
        }
    }
    out
}

/// One direction of a codec: a frame in, its (de)compressed bytes in `out` (cleared).
type Transform = Box<dyn Fn(&[u8], &mut Vec<u8>)>;

/// A codec: compress one frame, and decompress it back.
struct Codec {
    name: String,
    compress: Transform,
    decompress: Transform,
}

fn zstd_codec(level: i32) -> Codec {
    let c = std::cell::RefCell::new(zstd::bulk::Compressor::new(level).unwrap());
    let d = std::cell::RefCell::new(zstd::bulk::Decompressor::new().unwrap());
    Codec {
        name: format!("zstd {level}"),
        compress: Box::new(move |input, out| {
            out.clear();
            out.reserve(zstd::zstd_safe::compress_bound(input.len()));
            c.borrow_mut().compress_to_buffer(input, out).unwrap();
        }),
        decompress: Box::new(move |input, out| {
            out.clear();
            out.reserve(FRAME);
            d.borrow_mut().decompress_to_buffer(input, out).unwrap();
        }),
    }
}

fn lz4_codec() -> Codec {
    Codec {
        name: "lz4_flex".into(),
        compress: Box::new(|input, out| {
            out.clear();
            out.resize(lz4_flex::block::get_maximum_output_size(input.len()), 0);
            let n = lz4_flex::block::compress_into(input, out).unwrap();
            out.truncate(n);
        }),
        decompress: Box::new(|input, out| {
            out.clear();
            out.resize(FRAME, 0);
            let n = lz4_flex::block::decompress_into(input, out).unwrap();
            out.truncate(n);
        }),
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

/// MB/s (10^6 bytes of original data per second) of `f` over every frame, median of passes.
fn rate(data: &[u8], mut f: impl FnMut(usize, &[u8])) -> f64 {
    let mut passes = Vec::new();
    for _ in 0..PASSES {
        let t = Instant::now();
        for (i, frame) in data.chunks(FRAME).enumerate() {
            f(i, frame);
        }
        passes.push(data.len() as f64 / t.elapsed().as_secs_f64() / 1e6);
    }
    median(passes)
}

/// The adaptive mode's probe: compress a 4 KiB sample with lz4; call the frame compressible if
/// the sample shrinks below 7/8.
fn probe(frame: &[u8], scratch: &mut Vec<u8>) -> bool {
    let sample = &frame[..frame.len().min(4096)];
    scratch.resize(lz4_flex::block::get_maximum_output_size(sample.len()), 0);
    let n = lz4_flex::block::compress_into(sample, scratch).unwrap();
    n * 8 < sample.len() * 7
}

fn main() {
    let sets: Vec<(&str, Vec<u8>)> = vec![
        ("guest-mix", guest("35,30,35")),
        ("guest-text", guest("0,100,0")),
        ("guest-zero", guest("100,0,0")),
        ("guest-random", guest("0,0,100")),
        ("libs", libs()),
    ];
    let codecs: Vec<Codec> = vec![
        lz4_codec(),
        zstd_codec(-5),
        zstd_codec(-1),
        zstd_codec(1),
        zstd_codec(3),
    ];
    println!(
        "{:<13} {:<10} {:>7} {:>13} {:>15}",
        "data", "codec", "ratio", "compress MB/s", "decompress MB/s"
    );
    for (name, data) in &sets {
        let mut scratch = Vec::new();
        let mut compressible = 0;
        let probe_rate = rate(data, |_, f| {
            compressible += probe(f, &mut scratch) as usize;
        });
        println!(
            "{name:<13} {:<10} {:>7} {:>13.0} {:>15}   ({} of {} frames compressible)",
            "probe",
            "",
            probe_rate,
            "",
            compressible / PASSES,
            data.len().div_ceil(FRAME)
        );
        for c in &codecs {
            let mut out = Vec::new();
            let mut frames: Vec<Vec<u8>> = Vec::new();
            let mut compressed = 0usize;
            let comp_rate = rate(data, |i, f| {
                (c.compress)(f, &mut out);
                if frames.len() <= i {
                    frames.push(out.clone());
                    compressed += out.len();
                }
            });
            let mut back = Vec::new();
            for (i, f) in data.chunks(FRAME).enumerate() {
                (c.decompress)(&frames[i], &mut back);
                assert_eq!(
                    back.as_slice(),
                    f,
                    "{} did not round-trip frame {i}",
                    c.name
                );
            }
            let drate = rate(data, |i, _| (c.decompress)(&frames[i], &mut back));
            println!(
                "{name:<13} {:<10} {:>7.3} {:>13.0} {:>15.0}",
                c.name,
                compressed as f64 / data.len() as f64,
                comp_rate,
                drate
            );
        }
    }
}

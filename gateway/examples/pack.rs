//! What the gateway's packer does with a file: cuts it into frames as a session would, packs
//! each with the real `transform::Packer` (zero check, probe, codec), and prints the ratio,
//! how many frames were packed or skipped, and the rate (median of passes, one core).
//!
//! ```sh
//! cargo run --release -p lmas --example pack -- target/qemu-guest/ram-1073733632-seed1.img
//! cargo run --release -p lmas --example pack -- FILE --choice lz4 --frame 65536 --passes 3
//! ```
//!
//! `--choice` is plain, lz4 or zstd:LEVEL (default zstd:1, the top of `auto`'s ladder).

use std::time::Instant;

use bytes::Bytes;
use lmas::protocol::packed::CodecSet;
use lmas::protocol::{DataFrame, SessionId};
use lmas::transform::{Choice, PackOutcome, Packer};

struct Args {
    path: String,
    choice: Choice,
    frame: usize,
    passes: usize,
}

fn parse() -> Result<Args, String> {
    let mut args = std::env::args().skip(1);
    let mut path = None;
    let (mut choice, mut frame, mut passes) = (Choice::Zstd(1), 65536, 3);
    while let Some(a) = args.next() {
        let mut value = || args.next().ok_or(format!("{a} needs a value"));
        match a.as_str() {
            "--choice" => {
                let v = value()?;
                choice = match v.as_str() {
                    "plain" => Choice::Plain,
                    "lz4" => Choice::Lz4,
                    z => Choice::Zstd(
                        z.strip_prefix("zstd:")
                            .and_then(|l| l.parse().ok())
                            .ok_or(format!("--choice is plain, lz4 or zstd:LEVEL, not {z}"))?,
                    ),
                }
            }
            "--frame" => {
                frame = value()?
                    .parse()
                    .ok()
                    .filter(|&n: &usize| (1..=256 << 10).contains(&n))
                    .ok_or("--frame takes 1..=262144 bytes")?
            }
            "--passes" => {
                passes = value()?
                    .parse()
                    .ok()
                    .filter(|&n| n > 0)
                    .ok_or("--passes takes a positive number")?
            }
            p if path.is_none() && !p.starts_with('-') => path = Some(p.to_string()),
            other => return Err(format!("unexpected argument {other}")),
        }
    }
    let path = path.ok_or("usage: pack FILE [--choice C] [--frame N] [--passes N]")?;
    Ok(Args {
        path,
        choice,
        frame,
        passes,
    })
}

fn main() {
    let args = match parse() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("pack: {e}");
            std::process::exit(2);
        }
    };
    let data = match std::fs::read(&args.path) {
        Ok(d) => Bytes::from(d),
        Err(e) => {
            eprintln!("pack: cannot read {}: {e}", args.path);
            std::process::exit(1);
        }
    };
    let frames: Vec<DataFrame> = (0..data.len())
        .step_by(args.frame)
        .map(|at| DataFrame {
            session: SessionId(1),
            offset: at as u64,
            flags: 0,
            payload: data.slice(at..(at + args.frame).min(data.len())),
        })
        .collect();
    let mut rates = Vec::new();
    let (mut packed, mut skipped, mut zero, mut out_bytes) = (0, 0, 0, 0usize);
    for pass in 0..args.passes {
        let mut packer = Packer::default();
        let mut out = Vec::with_capacity(args.frame + 1024);
        let (mut p, mut s, mut z, mut o) = (0, 0, 0, 0usize);
        let t = Instant::now();
        for f in &frames {
            out.clear();
            match packer.pack(f, args.choice, CodecSet::SUPPORTED, &mut out) {
                PackOutcome::Packed { codec, packed, .. } => {
                    p += 1;
                    z += (codec == lmas::protocol::packed::Codec::Zero) as usize;
                    o += packed;
                }
                PackOutcome::Skipped => {
                    s += 1;
                    o += f.payload.len();
                }
                PackOutcome::Plain => o += f.payload.len(),
            }
        }
        rates.push(data.len() as f64 / t.elapsed().as_secs_f64() / 1e6);
        if pass == 0 {
            (packed, skipped, zero, out_bytes) = (p, s, z, o);
        }
    }
    rates.sort_by(f64::total_cmp);
    println!(
        "file={} bytes={} frame={} choice={} frames={} packed={packed} (zero {zero}) skipped={skipped} \
         payload_out={out_bytes} ratio={:.3} rate_mb_s={:.0}",
        args.path,
        data.len(),
        args.frame,
        args.choice,
        frames.len(),
        out_bytes as f64 / data.len().max(1) as f64,
        rates[rates.len() / 2],
    );
}

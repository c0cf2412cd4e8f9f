//! Which codec a tunnel packs with, now.
//!
//! `[wan] compression` is `off`, a fixed `<codec>[:level]`, or `auto` (the default). In `auto`
//! the [`Adaptive`] controller walks a ladder from plain to stronger codecs, once per interval,
//! on two measurements: how busy packing keeps the sealing workers (the CPU side) and how much
//! packing saves (the WAN side). Packing that takes most of a worker's time is what would make
//! the gateway slower than the wire: then it steps down; packing that saves bytes while the
//! workers idle steps up. Incompressible data is skipped per frame by the probe whatever the
//! level, so `auto` costs random data almost nothing.
//!
//! The controller is sans-IO: the datapath calls [`Adaptive::observe`] with `now` and the
//! counters of [`PackPolicy`], which its sealing workers (crypto lcores, or the kernel
//! datapath's pool) update and read without locks.

use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};

use super::codec::PackOutcome;
use crate::protocol::packed::Codec;
use crate::protocol::SessionId;

/// How one frame is packed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Choice {
    Plain,
    Lz4,
    Zstd(i32),
}

impl Choice {
    /// The codec frames are packed with (none: plain).
    pub fn codec(self) -> Option<Codec> {
        match self {
            Choice::Plain => None,
            Choice::Lz4 => Some(Codec::Lz4),
            Choice::Zstd(_) => Some(Codec::Zstd),
        }
    }
}

impl std::fmt::Display for Choice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Choice::Plain => f.write_str("off"),
            Choice::Lz4 => f.write_str("lz4"),
            Choice::Zstd(l) => write!(f, "zstd:{l}"),
        }
    }
}

/// `[wan] compression`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    Off,
    Auto,
    Fixed(Choice),
}

impl Compression {
    /// Parses `off`, `auto`, `lz4`, `zstd` or `zstd:LEVEL` (-7..=19); the error says why.
    pub fn parse(s: &str) -> Result<Compression, String> {
        let bad = || {
            format!("{s:?}: use \"auto\", \"off\", \"lz4\", \"zstd\" or \"zstd:LEVEL\" (-7..19)")
        };
        Ok(match s {
            "off" => Compression::Off,
            "auto" => Compression::Auto,
            "lz4" => Compression::Fixed(Choice::Lz4),
            "zstd" => Compression::Fixed(Choice::Zstd(1)),
            _ => {
                let level = s.strip_prefix("zstd:").ok_or_else(bad)?;
                let level: i32 = level.parse().map_err(|_| bad())?;
                if !(-7..=19).contains(&level) {
                    return Err(bad());
                }
                Compression::Fixed(Choice::Zstd(level))
            }
        })
    }
}

/// The rungs `auto` moves on, cheapest first (measured per core on guest-memory-like data,
/// docs/COMPRESSION.md: lz4 compresses ~900 MB/s, zstd -1 ~500, zstd 1 ~500 with a better
/// ratio; the top rung is what a 1–10 Gbit/s WAN affords).
const LADDER: [Choice; 4] = [
    Choice::Plain,
    Choice::Lz4,
    Choice::Zstd(-1),
    Choice::Zstd(1),
];
/// Where `auto` starts.
const START: usize = 3;
/// Step down when packing took more than this share of the sealing workers' time...
const BUSY_HIGH: f64 = 0.7;
/// ...step up when it took less than this and saved at least `WORTH` of the bytes.
const BUSY_LOW: f64 = 0.3;
const WORTH: f64 = 0.05;

/// A tunnel's packing state shared by its sealing workers: the current choice and counters.
#[derive(Debug, Default)]
pub struct PackPolicy {
    /// Index in the ladder, or a fixed choice encoded by `encode`.
    choice: AtomicU8,
    pub stats: PackStats,
}

/// What packing (and unpacking) did, as plain sums: one frame's share ([`PackNote`]), or a
/// session's or a tunnel's total in the session core. [`PackStats`] keeps the gateway's total
/// in atomics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PackFigures {
    /// Data payload bytes offered to packing, and what went on the wire for them.
    pub bytes_in: u64,
    pub bytes_out: u64,
    pub frames_packed: u64,
    /// Frames the probe or the codec found incompressible (sent as they are).
    pub frames_skipped: u64,
    /// CPU time spent packing and unpacking, nanoseconds.
    pub pack_ns: u64,
    pub unpack_ns: u64,
}

impl PackFigures {
    /// One frame's outcome (plain frames count as in = out).
    pub fn packed(outcome: PackOutcome, plain_len: usize, ns: u64) -> PackFigures {
        let (out, frames_packed, frames_skipped) = match outcome {
            PackOutcome::Packed { packed, .. } => (packed, 1, 0),
            PackOutcome::Skipped => (plain_len, 0, 1),
            PackOutcome::Plain => (plain_len, 0, 0),
        };
        PackFigures {
            bytes_in: plain_len as u64,
            bytes_out: out as u64,
            frames_packed,
            frames_skipped,
            pack_ns: ns,
            unpack_ns: 0,
        }
    }

    /// One received frame unpacked in `ns`.
    pub fn unpacked(ns: u64) -> PackFigures {
        PackFigures {
            unpack_ns: ns,
            ..PackFigures::default()
        }
    }

    pub fn add(&mut self, o: &PackFigures) {
        // Saturating: a long-lived tunnel's sums must not wrap (or panic in debug builds).
        self.bytes_in = self.bytes_in.saturating_add(o.bytes_in);
        self.bytes_out = self.bytes_out.saturating_add(o.bytes_out);
        self.frames_packed = self.frames_packed.saturating_add(o.frames_packed);
        self.frames_skipped = self.frames_skipped.saturating_add(o.frames_skipped);
        self.pack_ns = self.pack_ns.saturating_add(o.pack_ns);
        self.unpack_ns = self.unpack_ns.saturating_add(o.unpack_ns);
    }

    /// Bytes out per byte in (0.48: packing saved 52 %); none before any byte was offered.
    pub fn ratio(&self) -> Option<f64> {
        (self.bytes_in > 0).then(|| self.bytes_out as f64 / self.bytes_in as f64)
    }
}

/// What packing or unpacking one data frame did, for the session it belongs to: the sealing
/// and opening steps return it, the datapath credits it to the session core
/// ([`crate::session::TunnelCore::note_packing`]), which keeps a sum per session and per
/// tunnel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PackNote {
    pub session: SessionId,
    pub figures: PackFigures,
}

/// The gateway's total of what packing did, for `lmas status`, metrics and [`Adaptive`]
/// (shared by every sealing worker, so atomics; per session and per tunnel the session core
/// keeps [`PackFigures`]).
#[derive(Debug, Default)]
pub struct PackStats {
    /// Data payload bytes offered to packing, and what went on the wire for them.
    pub bytes_in: AtomicU64,
    pub bytes_out: AtomicU64,
    pub frames_packed: AtomicU64,
    /// Frames the probe or the codec found incompressible (sent as they are).
    pub frames_skipped: AtomicU64,
    /// CPU time spent packing and unpacking, nanoseconds.
    pub pack_ns: AtomicU64,
    pub unpack_ns: AtomicU64,
}

impl PackStats {
    /// Counts one frame's figures.
    pub fn add(&self, f: &PackFigures) {
        for (a, v) in [
            (&self.bytes_in, f.bytes_in),
            (&self.bytes_out, f.bytes_out),
            (&self.frames_packed, f.frames_packed),
            (&self.frames_skipped, f.frames_skipped),
            (&self.pack_ns, f.pack_ns),
            (&self.unpack_ns, f.unpack_ns),
        ] {
            if v > 0 {
                a.fetch_add(v, Ordering::Relaxed);
            }
        }
    }

    /// Name and value of each counter, for status output.
    pub fn snapshot(&self, prefix: &str) -> Vec<(String, u64)> {
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        [
            ("bytes_in", get(&self.bytes_in)),
            ("bytes_out", get(&self.bytes_out)),
            ("frames_packed", get(&self.frames_packed)),
            ("frames_skipped", get(&self.frames_skipped)),
            ("pack_ns", get(&self.pack_ns)),
            ("unpack_ns", get(&self.unpack_ns)),
        ]
        .into_iter()
        .map(|(k, v)| (format!("{prefix}{k}"), v))
        .collect()
    }
}

const FIXED: u8 = 0x80;

fn encode(c: Choice) -> u8 {
    match c {
        Choice::Plain => FIXED,
        Choice::Lz4 => FIXED | 1,
        // Levels -7..=19 in 5 bits + a bit for the codec.
        Choice::Zstd(l) => FIXED | 0x40 | (l + 7) as u8,
    }
}

fn decode(v: u8) -> Choice {
    if v & FIXED == 0 {
        return LADDER[(v as usize).min(LADDER.len() - 1)];
    }
    match v & 0x7f {
        0 => Choice::Plain,
        1 => Choice::Lz4,
        z => Choice::Zstd((z & 0x3f) as i32 - 7),
    }
}

impl PackPolicy {
    pub fn new(mode: Compression) -> PackPolicy {
        let p = PackPolicy::default();
        p.set(mode);
        p
    }

    fn set(&self, mode: Compression) {
        let v = match mode {
            Compression::Off => encode(Choice::Plain),
            Compression::Fixed(c) => encode(c),
            Compression::Auto => START as u8,
        };
        self.choice.store(v, Ordering::Relaxed);
    }

    /// What to pack the next frame with.
    pub fn choice(&self) -> Choice {
        decode(self.choice.load(Ordering::Relaxed))
    }
}

/// The `auto` controller (see the module comment).
#[derive(Debug)]
pub struct Adaptive {
    rung: usize,
    last: Option<Sample>,
}

#[derive(Debug, Clone, Copy)]
struct Sample {
    at: u64,
    bytes_in: u64,
    bytes_out: u64,
    pack_ns: u64,
}

impl Default for Adaptive {
    fn default() -> Self {
        Adaptive {
            rung: START,
            last: None,
        }
    }
}

/// How often `auto` looks at its counters: long enough for the rates between two samples to
/// mean something.
pub const ADAPT_EVERY_US: u64 = 200_000;

impl Adaptive {
    /// [`Adaptive::observe`], once [`ADAPT_EVERY_US`] has passed since the last sample: for a
    /// loop that calls it every turn.
    pub fn tick(&mut self, now: u64, policy: &PackPolicy, workers: usize) -> Option<Choice> {
        if self
            .last
            .is_some_and(|l| now.saturating_sub(l.at) < ADAPT_EVERY_US)
        {
            return None;
        }
        self.observe(now, policy, workers)
    }

    /// Adjusts `policy` (if in `auto`) from its counters since the last call. `now` in
    /// microseconds; `workers` is how many threads seal in parallel. Returns the choice when
    /// it changed.
    pub fn observe(&mut self, now: u64, policy: &PackPolicy, workers: usize) -> Option<Choice> {
        if policy.choice.load(Ordering::Relaxed) & FIXED != 0 {
            return None;
        }
        let s = &policy.stats;
        let cur = Sample {
            at: now,
            bytes_in: s.bytes_in.load(Ordering::Relaxed),
            bytes_out: s.bytes_out.load(Ordering::Relaxed),
            pack_ns: s.pack_ns.load(Ordering::Relaxed),
        };
        let prev = self.last.replace(cur)?;
        let wall_ns = cur.at.saturating_sub(prev.at) as f64 * 1e3 * workers.max(1) as f64;
        let input = cur.bytes_in.saturating_sub(prev.bytes_in);
        if wall_ns <= 0.0 || input == 0 {
            return None;
        }
        let busy = cur.pack_ns.saturating_sub(prev.pack_ns) as f64 / wall_ns;
        let saved = 1.0 - cur.bytes_out.saturating_sub(prev.bytes_out) as f64 / input as f64;
        let before = self.rung;
        if busy > BUSY_HIGH && self.rung > 0 {
            self.rung -= 1;
        } else if busy < BUSY_LOW && saved >= WORTH && self.rung + 1 < LADDER.len() {
            self.rung += 1;
        } else if self.rung == 0 && busy < BUSY_LOW {
            // Off because the CPU could not keep up: try again once it is idle.
            self.rung = 1;
        }
        if self.rung == before {
            return None;
        }
        policy.choice.store(self.rung as u8, Ordering::Relaxed);
        Some(LADDER[self.rung])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_values() {
        assert_eq!(Compression::parse("auto"), Ok(Compression::Auto));
        assert_eq!(Compression::parse("off"), Ok(Compression::Off));
        assert_eq!(
            Compression::parse("zstd:-3"),
            Ok(Compression::Fixed(Choice::Zstd(-3)))
        );
        assert_eq!(
            Compression::parse("lz4"),
            Ok(Compression::Fixed(Choice::Lz4))
        );
        for bad in ["zstd:20", "zstd:x", "gzip", ""] {
            assert!(Compression::parse(bad).is_err(), "{bad}");
        }
        for c in [
            Choice::Plain,
            Choice::Lz4,
            Choice::Zstd(-7),
            Choice::Zstd(19),
            Choice::Zstd(1),
        ] {
            assert_eq!(decode(encode(c)), c);
        }
    }

    /// Feeds one interval: `input` bytes packed to `output` in `cpu_ms` of packing time over
    /// `wall_ms` on one worker.
    fn interval(
        a: &mut Adaptive,
        p: &PackPolicy,
        t: &mut u64,
        input: u64,
        output: u64,
        cpu_ms: u64,
    ) {
        *t += 200_000;
        p.stats.bytes_in.fetch_add(input, Ordering::Relaxed);
        p.stats.bytes_out.fetch_add(output, Ordering::Relaxed);
        p.stats
            .pack_ns
            .fetch_add(cpu_ms * 1_000_000, Ordering::Relaxed);
        a.tick(*t, p, 1);
    }

    #[test]
    fn auto_steps_down_when_packing_is_the_bottleneck_and_back_up_when_idle() {
        let p = PackPolicy::new(Compression::Auto);
        let mut a = Adaptive::default();
        let mut t = 0;
        interval(&mut a, &p, &mut t, 0, 0, 0);
        assert_eq!(p.choice(), Choice::Zstd(1));
        // Packing takes 190 of 200 ms: down to zstd -1, then lz4, then off.
        for want in [Choice::Zstd(-1), Choice::Lz4, Choice::Plain, Choice::Plain] {
            interval(&mut a, &p, &mut t, 100 << 20, 50 << 20, 190);
            assert_eq!(p.choice(), want);
        }
        // Idle again (plain frames: in = out): lz4 is tried; it saves half at 10 % busy: up.
        interval(&mut a, &p, &mut t, 10 << 20, 10 << 20, 0);
        assert_eq!(p.choice(), Choice::Lz4);
        interval(&mut a, &p, &mut t, 10 << 20, 5 << 20, 20);
        assert_eq!(p.choice(), Choice::Zstd(-1));
        // Incompressible data (the probe skips it): no reason to climb.
        interval(&mut a, &p, &mut t, 10 << 20, 10 << 20, 1);
        assert_eq!(p.choice(), Choice::Zstd(-1));
    }

    #[test]
    fn tick_looks_only_every_200_ms() {
        let p = PackPolicy::new(Compression::Auto);
        let mut a = Adaptive::default();
        assert_eq!(a.tick(0, &p, 1), None, "the first sample");
        p.stats.bytes_in.fetch_add(100 << 20, Ordering::Relaxed);
        p.stats.bytes_out.fetch_add(50 << 20, Ordering::Relaxed);
        p.stats.pack_ns.fetch_add(190_000_000, Ordering::Relaxed);
        assert_eq!(a.tick(ADAPT_EVERY_US - 1, &p, 1), None, "too soon");
        assert_eq!(a.tick(ADAPT_EVERY_US, &p, 1), Some(Choice::Zstd(-1)));
    }

    #[test]
    fn fixed_and_off_never_move() {
        for mode in [Compression::Off, Compression::Fixed(Choice::Zstd(3))] {
            let p = PackPolicy::new(mode);
            let mut a = Adaptive::default();
            let mut t = 0;
            for _ in 0..5 {
                interval(&mut a, &p, &mut t, 100 << 20, 50 << 20, 199);
            }
            let want = match mode {
                Compression::Fixed(c) => c,
                _ => Choice::Plain,
            };
            assert_eq!(p.choice(), want);
        }
    }
}

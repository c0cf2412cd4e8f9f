//! Packing one data frame for the wire, and unpacking it, bounded.
//!
//! Packing tries, in order: all zeros (sent as a length: other hypervisors than QEMU do not
//! skip zero pages), a 4 KiB compressibility probe (an LZ4 pass over slices taken across the
//! frame; random pages fail it and go out as they are, at a cost of ~1/50 of compressing
//! them), then the chosen codec, and keeps the result only if it saves at least 1/16 of the
//! frame.
//!
//! Unpacking never produces more than the frame claims, and a claim above
//! [`MAX_UNPACKED_LEN`] is refused when the frame is decoded: a zip bomb costs its sender a
//! protocol error, not us memory.

use bytes::Bytes;

use super::policy::Choice;
use crate::protocol::packed::{encode_header, Codec, CodecSet, PackedFrame, MAX_UNPACKED_LEN};
use crate::protocol::DataFrame;

/// Sample of a frame the probe compresses: `PROBE_SLICES` slices spread evenly over it.
/// Guest memory is a patchwork of pages (text next to random next to code), so a sample from
/// the frame's head alone misses a frame whose compressible pages come later.
const PROBE_LEN: usize = 4096;
const PROBE_SLICES: usize = 8;
/// A packed payload must save at least 1/16 of the frame to be sent packed; the probe asks
/// the same of its sample (a frame a quarter text and the rest random still pays).
const MIN_SAVING_DIV: usize = 16;

/// What [`Packer::pack`] did with a frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PackOutcome {
    /// Not packed: the policy says plain, or the peer unpacks nothing useful.
    Plain,
    /// Not packed: the probe or the codec found it incompressible (counted as skipped).
    Skipped,
    /// Packed with `codec`; the frame's payload shrank from `plain` to `packed` bytes.
    Packed {
        codec: Codec,
        plain: usize,
        packed: usize,
    },
}

/// One connection's compressor state (a zstd context is reused: creating one per frame
/// costs more than compressing a small frame).
#[derive(Default)]
pub struct Packer {
    zstd: Option<(i32, zstd::bulk::Compressor<'static>)>,
    scratch: Vec<u8>,
}

impl Packer {
    /// Appends `frame` to `out` packed if `choice`, the peer's `codecs` and the data allow,
    /// else nothing (the caller encodes the plain frame).
    pub fn pack(
        &mut self,
        frame: &DataFrame,
        choice: Choice,
        codecs: CodecSet,
        out: &mut Vec<u8>,
    ) -> PackOutcome {
        match self.pack_cheaply(frame, choice, codecs, out) {
            Some(outcome) => outcome,
            None => self.compress(frame, choice, out),
        }
    }

    /// Appends `frame` to `out` as a whole message: packed as [`Packer::pack`] decides, else
    /// the plain data frame.
    pub fn encode(
        &mut self,
        frame: &DataFrame,
        choice: Choice,
        codecs: CodecSet,
        out: &mut Vec<u8>,
    ) -> PackOutcome {
        let outcome = self.pack(frame, choice, codecs, out);
        if matches!(outcome, PackOutcome::Plain | PackOutcome::Skipped) {
            frame.encode(out);
        }
        outcome
    }

    /// [`Packer::pack`] up to the point where it would compress: plain, zero runs and frames
    /// the probe finds incompressible are decided (a few µs for 64 KiB); `None`, with nothing
    /// written, for a frame worth compressing. Callers seal such cheap frames where they
    /// are and take only the others to a worker pool.
    pub fn pack_cheaply(
        &mut self,
        frame: &DataFrame,
        choice: Choice,
        codecs: CodecSet,
        out: &mut Vec<u8>,
    ) -> Option<PackOutcome> {
        let data = &frame.payload[..];
        if choice == Choice::Plain || data.is_empty() || data.len() > MAX_UNPACKED_LEN {
            return Some(PackOutcome::Plain);
        }
        if codecs.contains(Codec::Zero) && is_zero(data) {
            encode_header(
                out,
                frame.session,
                frame.offset,
                frame.flags,
                Codec::Zero,
                data.len() as u32,
                0,
            );
            return Some(PackOutcome::Packed {
                codec: Codec::Zero,
                plain: data.len(),
                packed: 0,
            });
        }
        if !choice.codec().is_some_and(|c| codecs.contains(c)) {
            return Some(PackOutcome::Plain);
        }
        if !self.probe(data) {
            return Some(PackOutcome::Skipped);
        }
        None
    }

    /// Compresses `frame` with `choice`'s codec (one the peer unpacks, the probe passed);
    /// skipped when it saves less than 1/16.
    fn compress(&mut self, frame: &DataFrame, choice: Choice, out: &mut Vec<u8>) -> PackOutcome {
        let data = &frame.payload[..];
        let Some(codec) = choice.codec() else {
            return PackOutcome::Plain;
        };
        let start = out.len();
        encode_header(
            out,
            frame.session,
            frame.offset,
            frame.flags,
            codec,
            data.len() as u32,
            0,
        );
        let body = out.len();
        let limit = data.len() - data.len() / MIN_SAVING_DIV;
        let packed = match choice {
            Choice::Lz4 => {
                out.resize(
                    body + lz4_flex::block::get_maximum_output_size(data.len()),
                    0,
                );
                lz4_flex::block::compress_into(data, &mut out[body..]).ok()
            }
            Choice::Zstd(level) => {
                out.resize(body + zstd::zstd_safe::compress_bound(data.len()), 0);
                self.zstd_at(level)
                    .and_then(|z| z.compress_to_buffer(data, &mut out[body..]).ok())
            }
            Choice::Plain => None,
        };
        match packed {
            Some(n) if n <= limit => {
                out.truncate(body + n);
                // The header's payload length, now known.
                out[body - 4..body].copy_from_slice(&(n as u32).to_be_bytes());
                PackOutcome::Packed {
                    codec,
                    plain: data.len(),
                    packed: n,
                }
            }
            _ => {
                out.truncate(start);
                PackOutcome::Skipped
            }
        }
    }

    fn zstd_at(&mut self, level: i32) -> Option<&mut zstd::bulk::Compressor<'static>> {
        if self.zstd.as_ref().is_none_or(|(l, _)| *l != level) {
            self.zstd = zstd::bulk::Compressor::new(level).ok().map(|c| (level, c));
        }
        self.zstd.as_mut().map(|(_, c)| c)
    }

    /// Whether a sample of `data` compresses: random data fails fast.
    fn probe(&mut self, data: &[u8]) -> bool {
        if data.len() <= PROBE_LEN {
            return true;
        }
        // One LZ4 pass over the slices side by side: one hash-table set-up, and repeats
        // between slices count as they would when the whole frame is compressed.
        let slice = PROBE_LEN / PROBE_SLICES;
        let stride = (data.len() - slice) / (PROBE_SLICES - 1);
        let bound = lz4_flex::block::get_maximum_output_size(PROBE_LEN);
        self.scratch.clear();
        for k in 0..PROBE_SLICES {
            let at = k * stride;
            self.scratch.extend_from_slice(&data[at..at + slice]);
        }
        self.scratch.resize(PROBE_LEN + bound, 0);
        let (sample, out) = self.scratch.split_at_mut(PROBE_LEN);
        match lz4_flex::block::compress_into(sample, out) {
            Ok(n) => n <= PROBE_LEN - PROBE_LEN / MIN_SAVING_DIV,
            Err(_) => false,
        }
    }
}

/// All zeros, checked 16 bytes at a time.
fn is_zero(data: &[u8]) -> bool {
    let mut chunks = data.chunks_exact(16);
    chunks.all(|c| u128::from_ne_bytes(c.try_into().expect("16 bytes")) == 0)
        && chunks.remainder().iter().all(|&b| b == 0)
}

/// Why a packed frame could not be unpacked: a protocol error on that connection.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum UnpackError {
    #[error("{codec} payload is corrupt: {why}")]
    Corrupt { codec: &'static str, why: String },
    #[error("{codec} payload unpacked to {got} bytes, the frame said {want}")]
    WrongLength {
        codec: &'static str,
        got: usize,
        want: usize,
    },
}

/// One connection's decompressor state.
#[derive(Default)]
pub struct Unpacker {
    zstd: Option<zstd::bulk::Decompressor<'static>>,
}

impl Unpacker {
    /// The plain frame a packed one stands for. Never writes more than `original_len` bytes
    /// (itself at most `MAX_UNPACKED_LEN`, checked by the decoder).
    pub fn unpack(&mut self, p: PackedFrame) -> Result<DataFrame, UnpackError> {
        let want = p.original_len as usize;
        let codec = p.codec.name();
        let corrupt = |why: String| UnpackError::Corrupt { codec, why };
        let payload = match p.codec {
            Codec::Zero => Bytes::from(vec![0u8; want]),
            Codec::Lz4 => {
                let mut out = vec![0u8; want];
                let n = lz4_flex::block::decompress_into(&p.payload, &mut out)
                    .map_err(|e| corrupt(e.to_string()))?;
                if n != want {
                    return Err(UnpackError::WrongLength {
                        codec,
                        got: n,
                        want,
                    });
                }
                Bytes::from(out)
            }
            Codec::Zstd => {
                if self.zstd.is_none() {
                    self.zstd =
                        Some(zstd::bulk::Decompressor::new().map_err(|e| corrupt(e.to_string()))?);
                }
                let z = self.zstd.as_mut().expect("set above");
                // `decompress` stops with an error rather than exceed its capacity.
                let out = z
                    .decompress(&p.payload, want)
                    .map_err(|e| corrupt(e.to_string()))?;
                if out.len() != want {
                    return Err(UnpackError::WrongLength {
                        codec,
                        got: out.len(),
                        want,
                    });
                }
                Bytes::from(out)
            }
        };
        Ok(DataFrame {
            session: p.session,
            offset: p.offset,
            flags: p.flags,
            payload,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::SessionId;
    use crate::transform::random_bytes;
    use proptest::prelude::*;

    fn frame(payload: Vec<u8>) -> DataFrame {
        DataFrame {
            session: SessionId(6),
            offset: 12345,
            flags: 0,
            payload: Bytes::from(payload),
        }
    }

    fn text(n: usize) -> Vec<u8> {
        let line = b"2026-12-02 INFO migration page bitmap dirty=1234 gateway tunnel flow\n";
        line.iter().cycle().take(n).copied().collect()
    }

    fn round_trip(f: &DataFrame, choice: Choice) -> (PackOutcome, DataFrame) {
        let mut out = Vec::new();
        let outcome = Packer::default().pack(f, choice, CodecSet::SUPPORTED, &mut out);
        let back = match outcome {
            PackOutcome::Packed { .. } => {
                let p = PackedFrame::decode(Bytes::from(out)).expect("decodes");
                Unpacker::default().unpack(p).expect("unpacks")
            }
            _ => {
                assert!(out.is_empty(), "{outcome:?} wrote bytes");
                f.clone()
            }
        };
        (outcome, back)
    }

    #[test]
    fn text_packs_zeros_vanish_random_is_skipped() {
        for choice in [Choice::Lz4, Choice::Zstd(1), Choice::Zstd(-5)] {
            let t = frame(text(65536));
            let (o, back) = round_trip(&t, choice);
            assert!(
                matches!(o, PackOutcome::Packed { packed, .. } if packed < 65536 / 4),
                "{o:?}"
            );
            assert_eq!(back, t);
            let z = frame(vec![0; 65536]);
            let (o, back) = round_trip(&z, choice);
            assert_eq!(
                o,
                PackOutcome::Packed {
                    codec: Codec::Zero,
                    plain: 65536,
                    packed: 0
                }
            );
            assert_eq!(back, z);
            let r = frame(random_bytes(65536, 7));
            assert_eq!(round_trip(&r, choice).0, PackOutcome::Skipped);
        }
        assert_eq!(
            round_trip(&frame(text(100)), Choice::Plain).0,
            PackOutcome::Plain
        );
    }

    /// Guest memory is pages of different kinds side by side: a frame that starts with a
    /// random page and carries text after it still packs.
    #[test]
    fn a_frame_with_random_pages_first_and_text_after_packs() {
        for random_pages in [1, 4, 8, 12] {
            let mut data = random_bytes(random_pages * 4096, random_pages as u64);
            data.extend(text(65536 - data.len()));
            let f = frame(data);
            let (o, back) = round_trip(&f, Choice::Zstd(1));
            assert!(
                matches!(o, PackOutcome::Packed { packed, .. } if packed < 65536 - 65536 / 16),
                "{random_pages} random pages then text: {o:?}"
            );
            assert_eq!(back, f);
        }
    }

    /// Every frame is probed: text right after a long random stretch packs at once.
    #[test]
    fn text_right_after_a_random_stretch_packs() {
        let mut p = Packer::default();
        let mut pack = |f: &DataFrame| {
            let mut out = Vec::new();
            p.pack(f, Choice::Zstd(1), CodecSet::SUPPORTED, &mut out)
        };
        for seed in 0..100 {
            assert_eq!(
                pack(&frame(random_bytes(65536, seed))),
                PackOutcome::Skipped
            );
        }
        assert!(matches!(
            pack(&frame(text(65536))),
            PackOutcome::Packed { .. }
        ));
    }

    #[test]
    fn worth_compressing_is_false_for_zeros_and_random_true_for_text() {
        /// Whether `pack_cheaply` leaves the frame to be compressed.
        trait Worth {
            fn worth_compressing(&mut self, data: &[u8]) -> bool;
        }
        impl Worth for Packer {
            fn worth_compressing(&mut self, data: &[u8]) -> bool {
                let mut out = Vec::new();
                let f = frame(data.to_vec());
                let cheap = self.pack_cheaply(&f, Choice::Zstd(1), CodecSet::SUPPORTED, &mut out);
                cheap.is_none() && out.is_empty()
            }
        }
        let mut p = Packer::default();
        assert!(!p.worth_compressing(&[]));
        assert!(!p.worth_compressing(&vec![0; 65536]));
        assert!(!p.worth_compressing(&random_bytes(65536, 3)));
        assert!(p.worth_compressing(&text(65536)));
        let mut mixed = random_bytes(60 * 1024, 4);
        mixed.extend(text(4096));
        assert!(
            p.worth_compressing(&mixed),
            "a text page at the end is seen"
        );
    }

    #[test]
    fn a_peer_that_unpacks_nothing_gets_plain_frames() {
        let mut out = Vec::new();
        let o = Packer::default().pack(
            &frame(vec![0; 4096]),
            Choice::Zstd(1),
            CodecSet(0),
            &mut out,
        );
        assert_eq!((o, out.len()), (PackOutcome::Plain, 0));
        let o = Packer::default().pack(
            &frame(text(8192)),
            Choice::Zstd(1),
            CodecSet(0b010),
            &mut out,
        );
        assert_eq!(o, PackOutcome::Plain, "peer has lz4 only");
    }

    /// A frame that claims less than it unpacks to, or garbage, is an error, not a bigger
    /// buffer (the zip bomb).
    #[test]
    fn unpacking_is_bounded_by_the_claim() {
        let mut out = Vec::new();
        let f = frame(text(65536));
        for choice in [Choice::Lz4, Choice::Zstd(3)] {
            out.clear();
            assert!(matches!(
                Packer::default().pack(&f, choice, CodecSet::SUPPORTED, &mut out),
                PackOutcome::Packed { .. }
            ));
            let mut p = PackedFrame::decode(Bytes::from(out.clone())).unwrap();
            p.original_len = 4096;
            assert!(
                Unpacker::default().unpack(p.clone()).is_err(),
                "{choice:?} overclaim"
            );
            p.original_len = 65536;
            let mut bytes = p.payload.to_vec();
            let mid = bytes.len() / 2;
            bytes[mid] ^= 0xff;
            p.payload = Bytes::from(bytes);
            let _ = Unpacker::default().unpack(p); // must not panic; may or may not error
        }
    }

    proptest! {
        /// Any payload, any choice: unpacking gives back exactly the frame.
        #[test]
        fn every_frame_round_trips(
            kind in 0u8..4,
            len in 1usize..70_000,
            seed in any::<u64>(),
            level in -5i32..4,
        ) {
            let data = match kind {
                0 => vec![0u8; len],
                1 => text(len),
                2 => random_bytes(len, seed),
                _ => {
                    let mut d = text(len);
                    let r = random_bytes(len / 2, seed);
                    d[..r.len()].copy_from_slice(&r);
                    d
                }
            };
            let f = frame(data);
            for choice in [Choice::Lz4, Choice::Zstd(level)] {
                let (_, back) = round_trip(&f, choice);
                prop_assert_eq!(&back, &f);
            }
        }

        /// Arbitrary payloads under a valid header never panic the unpacker.
        #[test]
        fn unpacking_arbitrary_payloads_never_panics(
            codec in 0usize..3,
            claim in 0u32..70_000,
            payload in proptest::collection::vec(any::<u8>(), 0..512),
        ) {
            let p = PackedFrame {
                session: SessionId(1),
                offset: 0,
                flags: 0,
                codec: Codec::ALL[codec],
                original_len: claim,
                payload: Bytes::from(payload),
            };
            let _ = Unpacker::default().unpack(p);
        }
    }
}

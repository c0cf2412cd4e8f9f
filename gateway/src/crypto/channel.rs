//! One direction of an encrypted connection, as messages: [`Sealing`] turns
//! messages into records and moves to a new key when the policy says so
//! (sending a key-update record first); [`Opening`] turns records back into
//! messages and follows the peer's key updates. No I/O: the kernel datapath
//! calls these from its record reader/writer, the DPDK datapath from its
//! crypto lcores.
//!
//! Data frames are packed here too (compressed, or zero runs sent as a length:
//! `transform`), on a connection whose peer unpacks them: compress, then
//! encrypt, one frame per record, in the order the frames are sealed, so
//! nonces and frame order stay as they are without packing.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};

use super::record::{RecordError, RecordOpener, RecordSealer, RECORD_HEADER_LEN};
use crate::protocol::packed::{CodecSet, PackedFrame, PACKED_DATA};
use crate::protocol::{DecodeError, Message};
use crate::transform::cpu_time::thread_cpu_ns;
use crate::transform::{
    PackFigures, PackNote, PackOutcome, PackPolicy, Packer, UnpackError, Unpacker,
};

/// When a sender moves to a new key (besides the record-count limit, which
/// [`RecordSealer::needs_rekey`] enforces regardless).
#[derive(Debug, Clone, Copy)]
pub struct RekeyPolicy {
    pub after_bytes: u64,
    pub after: Duration,
}

/// The sending direction of one connection.
pub struct Sealing {
    sealer: RecordSealer,
    policy: RekeyPolicy,
    bytes_since_rekey: u64,
    last_rekey: Instant,
    rekeys: u64,
    packing: Option<Packing>,
}

/// Packing on one connection: what the peer unpacks, the tunnel's policy, the codec state.
struct Packing {
    codecs: CodecSet,
    policy: Arc<PackPolicy>,
    packer: Packer,
}

/// What sealing one message did besides the record: a key update to log and count, and
/// what packing a data frame did, for its session's figures.
#[must_use]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Sealed {
    pub key_update: Option<KeyUpdated>,
    /// For a data frame on a connection that packs (plain and skipped frames included).
    pub packed: Option<PackNote>,
}

/// A key update happened while sealing: worth a log line and a counter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KeyUpdated {
    /// How many key updates this direction has made, this one included.
    pub number: u64,
    /// Record bytes sealed under the previous key.
    pub after_bytes: u64,
}

impl Sealing {
    pub fn new(key: &[u8; 32], policy: RekeyPolicy, now: Instant) -> Self {
        Sealing {
            sealer: RecordSealer::new(key),
            policy,
            bytes_since_rekey: 0,
            last_rekey: now,
            rekeys: 0,
            packing: None,
        }
    }

    /// Packs data frames by `policy`, in codecs the peer unpacks (`codecs`, from its
    /// handshake). Without a codec in common, frames stay plain.
    pub fn with_packing(mut self, codecs: CodecSet, policy: Arc<PackPolicy>) -> Self {
        self.packing = (!codecs.is_empty()).then(|| Packing {
            codecs,
            policy,
            packer: Packer::default(),
        });
        self
    }

    /// [`Sealing::seal`] for a message that costs no compression (control, plain, zero run,
    /// or incompressible by the probe); `None`, with the frame not sealed, for a data frame
    /// worth compressing, which the caller seals on a worker instead.
    pub fn seal_cheaply(
        &mut self,
        msg: &Message,
        out: &mut Vec<u8>,
        now: Instant,
    ) -> Result<Option<Sealed>, RecordError> {
        self.seal_with(msg, out, now, true)
    }

    /// Appends `msg` to `out` as one sealed record, preceded by a key-update
    /// record if the policy (or the record-count limit) says the key is due.
    pub fn seal(
        &mut self,
        msg: &Message,
        out: &mut Vec<u8>,
        now: Instant,
    ) -> Result<Sealed, RecordError> {
        let sealed = self.seal_with(msg, out, now, false)?;
        Ok(sealed.expect("sealing that may compress always seals"))
    }

    /// Seals the messages at the front of `msgs` that cost no compression
    /// ([`Sealing::seal_cheaply`]), up to the first worth compressing: what each became.
    pub fn seal_cheap_prefix(
        &mut self,
        msgs: &[Message],
        out: &mut Vec<u8>,
        now: Instant,
    ) -> Result<Vec<Sealed>, RecordError> {
        let mut sealed = Vec::new();
        for m in msgs {
            match self.seal_cheaply(m, out, now)? {
                Some(s) => sealed.push(s),
                None => break,
            }
        }
        Ok(sealed)
    }

    /// Seals every message of `msgs`, in order.
    pub fn seal_all(
        &mut self,
        msgs: &[Message],
        out: &mut Vec<u8>,
        now: Instant,
    ) -> Result<Vec<Sealed>, RecordError> {
        msgs.iter().map(|m| self.seal(m, out, now)).collect()
    }

    /// A key update left in `out` when `cheap_only` declines the frame is fine: the frame
    /// follows it, sealed under the new key, when it is sealed.
    fn seal_with(
        &mut self,
        msg: &Message,
        out: &mut Vec<u8>,
        now: Instant,
        cheap_only: bool,
    ) -> Result<Option<Sealed>, RecordError> {
        let mut updated = None;
        if self.sealer.needs_rekey()
            || self.bytes_since_rekey >= self.policy.after_bytes
            || now.saturating_duration_since(self.last_rekey) >= self.policy.after
        {
            seal_one(&mut self.sealer, &Message::KeyUpdate, out, None, false)?;
            self.sealer.ratchet();
            self.rekeys += 1;
            updated = Some(KeyUpdated {
                number: self.rekeys,
                after_bytes: self.bytes_since_rekey,
            });
            self.bytes_since_rekey = 0;
            self.last_rekey = now;
        }
        let packing = self.packing.as_mut();
        let Some((len, packed)) = seal_one(&mut self.sealer, msg, out, packing, cheap_only)? else {
            return Ok(None);
        };
        self.bytes_since_rekey += len as u64;
        Ok(Some(Sealed {
            key_update: updated,
            packed,
        }))
    }
}

/// Seals one message at the end of `out` (a data frame packed if `packing` says so);
/// returns the record's length and, for a data frame offered to packing, what packing did.
/// With `cheap_only`, a data frame worth compressing is left alone (`None`, `out` as it was).
fn seal_one(
    sealer: &mut RecordSealer,
    msg: &Message,
    out: &mut Vec<u8>,
    packing: Option<&mut Packing>,
    cheap_only: bool,
) -> Result<Option<(usize, Option<PackNote>)>, RecordError> {
    let start = out.len();
    out.resize(start + RECORD_HEADER_LEN, 0);
    let mut note = None;
    match (msg, packing) {
        (Message::Data(frame), Some(p)) => {
            let t = thread_cpu_ns();
            let choice = p.policy.choice();
            let outcome = if cheap_only {
                match p.packer.pack_cheaply(frame, choice, p.codecs, out) {
                    Some(outcome) => outcome,
                    None => {
                        out.truncate(start);
                        return Ok(None);
                    }
                }
            } else {
                p.packer.pack(frame, choice, p.codecs, out)
            };
            if outcome == PackOutcome::Plain || outcome == PackOutcome::Skipped {
                msg.encode(out);
            }
            let ns = thread_cpu_ns().saturating_sub(t);
            let figures = PackFigures::packed(outcome, frame.payload.len(), ns);
            p.policy.stats.add(&figures);
            note = Some(PackNote {
                session: frame.session,
                figures,
            });
        }
        _ => msg.encode(out),
    }
    if let Err(e) = sealer.seal(out, start) {
        out.truncate(start);
        return Err(e);
    }
    Ok(Some((out.len() - start, note)))
}

/// Why a record could not be turned into a message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum OpenError {
    #[error("record: {0}")]
    Record(#[from] RecordError),
    #[error("malformed message: {0}")]
    Decode(#[from] DecodeError),
    #[error("packed data frame: {0}")]
    Unpack(#[from] UnpackError),
}

/// What opening one record gave: its message (none for the peer's key update) and, for a
/// packed data frame, what unpacking it cost, for its session's figures.
#[must_use]
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Opened {
    pub msg: Option<Message>,
    pub unpacked: Option<PackNote>,
}

/// The receiving direction of one connection.
pub struct Opening {
    opener: RecordOpener,
    unpacker: Unpacker,
    stats: Option<Arc<PackPolicy>>,
}

impl Opening {
    pub fn new(key: &[u8; 32]) -> Self {
        Opening {
            opener: RecordOpener::new(key),
            unpacker: Unpacker::default(),
            stats: None,
        }
    }

    /// Counts the time spent unpacking in `policy`'s stats.
    pub fn with_stats(mut self, policy: Arc<PackPolicy>) -> Self {
        self.stats = Some(policy);
        self
    }

    /// Opens one record (its validated length `header` and `body`, ciphertext
    /// and tag) and decodes the message in it. A key update is applied here
    /// and yields no message; a data payload is a slice of `body`, not a copy.
    pub fn open(
        &mut self,
        header: [u8; RECORD_HEADER_LEN],
        mut body: BytesMut,
    ) -> Result<Opened, OpenError> {
        self.opener.open(header, &mut body)?;
        let mut opened = decode_message(body.freeze(), &mut self.unpacker, self.stats.as_deref())?;
        if matches!(opened.msg, Some(Message::KeyUpdate)) {
            self.opener.ratchet();
            opened.msg = None;
        }
        Ok(opened)
    }
}

/// An opened plaintext as a message: a packed data frame unpacked (what that cost is added
/// to `stats` and returned for its session's figures), anything else decoded. The data
/// flows' records and the lane's groups both carry messages so.
pub fn decode_message(
    body: Bytes,
    unpacker: &mut Unpacker,
    stats: Option<&PackPolicy>,
) -> Result<Opened, OpenError> {
    if body.first() != Some(&PACKED_DATA) {
        return Ok(Opened {
            msg: Some(Message::decode(body)?),
            unpacked: None,
        });
    }
    let t = thread_cpu_ns();
    let frame = unpacker.unpack(PackedFrame::decode(body)?)?;
    let figures = PackFigures::unpacked(thread_cpu_ns().saturating_sub(t));
    if let Some(p) = stats {
        p.stats.add(&figures);
    }
    Ok(Opened {
        unpacked: Some(PackNote {
            session: frame.session,
            figures,
        }),
        msg: Some(Message::Data(frame)),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::{DataFrame, SessionId};
    use crate::transform::random_bytes;
    use bytes::Bytes;

    /// Splits a stream of records and opens each.
    fn open_all(opening: &mut Opening, mut wire: &[u8]) -> Vec<Message> {
        let mut out = Vec::new();
        while !wire.is_empty() {
            let header: [u8; 4] = wire[..4].try_into().unwrap();
            let len = RecordOpener::body_len(header).unwrap();
            let body = BytesMut::from(&wire[4..4 + len]);
            wire = &wire[4 + len..];
            if let Some(m) = opening.open(header, body).unwrap().msg {
                out.push(m);
            }
        }
        out
    }

    /// A key moves after a minute, never after a byte count.
    fn minute_rekey() -> RekeyPolicy {
        RekeyPolicy {
            after_bytes: u64::MAX,
            after: Duration::from_secs(60),
        }
    }

    fn frame_of(session: u64, offset: u64, payload: Vec<u8>) -> Message {
        Message::Data(DataFrame {
            session: SessionId(session),
            offset,
            flags: 0,
            payload: Bytes::from(payload),
        })
    }

    fn data(n: u64) -> Message {
        Message::Data(DataFrame {
            session: SessionId(2),
            offset: n * 1000,
            flags: 0,
            payload: Bytes::from(vec![n as u8; 1000]),
        })
    }

    #[test]
    fn rekeys_by_bytes_and_peer_follows() {
        let key = [5u8; 32];
        let t0 = Instant::now();
        let policy = RekeyPolicy {
            after_bytes: 2500,
            after: Duration::from_secs(3600),
        };
        let mut sealing = Sealing::new(&key, policy, t0);
        let mut wire = Vec::new();
        let mut updates = Vec::new();
        for n in 0..10 {
            updates.extend(sealing.seal(&data(n), &mut wire, t0).unwrap().key_update);
        }
        // 1000-byte payloads + 22-byte header + 4 + 16: a key every 3 records.
        assert_eq!(updates.len(), 3);
        assert_eq!(updates[0].number, 1);
        assert!(updates[0].after_bytes >= 2500);
        let got = open_all(&mut Opening::new(&key), &wire);
        assert_eq!(got, (0..10).map(data).collect::<Vec<_>>());
    }

    #[test]
    fn rekeys_by_time() {
        let key = [6u8; 32];
        let t0 = Instant::now();
        let policy = minute_rekey();
        let mut sealing = Sealing::new(&key, policy, t0);
        let mut wire = Vec::new();
        let update = |s: &mut Sealing, n, wire: &mut Vec<u8>, at| {
            s.seal(&data(n), wire, at).unwrap().key_update
        };
        assert_eq!(update(&mut sealing, 0, &mut wire, t0), None);
        let later = t0 + Duration::from_secs(61);
        assert!(update(&mut sealing, 1, &mut wire, later).is_some());
        assert_eq!(update(&mut sealing, 2, &mut wire, later), None);
        assert_eq!(open_all(&mut Opening::new(&key), &wire).len(), 3);
    }

    /// Compress then encrypt, one frame per record: text shrinks, zeros vanish, random data
    /// goes as it is, a peer without codecs gets plain frames, and every frame opens as sent.
    #[test]
    fn packed_frames_seal_and_open_as_sent() {
        use crate::transform::{Choice, Compression};
        let key = [8u8; 32];
        let t0 = Instant::now();
        let policy = minute_rekey();
        let frame = |n: u64, payload: Vec<u8>| frame_of(2, n << 16, payload);
        let text: Vec<u8> = b"vcpu dirty page bitmap 12345 "
            .iter()
            .cycle()
            .take(65536)
            .copied()
            .collect();
        let random = random_bytes(65536, 99);
        let msgs = vec![
            frame(0, text),
            frame(1, vec![0; 65536]),
            frame(2, random),
            data(3),
        ];
        let pack = Arc::new(PackPolicy::new(Compression::Fixed(Choice::Zstd(1))));
        let mut sealing =
            Sealing::new(&key, policy, t0).with_packing(CodecSet::SUPPORTED, pack.clone());
        let mut wire = Vec::new();
        for m in &msgs {
            let _ = sealing.seal(m, &mut wire, t0).unwrap();
        }
        assert!(
            wire.len() < 65536 + 2 * 1024,
            "{} bytes on the wire",
            wire.len()
        );
        let got = open_all(&mut Opening::new(&key).with_stats(pack.clone()), &wire);
        assert_eq!(got, msgs);
        let s = pack.stats.snapshot("");
        let get = |k: &str| s.iter().find(|(n, _)| n == k).unwrap().1;
        assert_eq!(
            get("frames_packed"),
            3,
            "text, zeros, and the small compressible frame"
        );
        assert_eq!(get("frames_skipped"), 1, "random");
        assert!(get("bytes_out") < get("bytes_in") / 2);

        let mut plain = Sealing::new(&key, policy, t0).with_packing(CodecSet::default(), pack);
        let mut wire = Vec::new();
        let _ = plain.seal(&msgs[1], &mut wire, t0).unwrap();
        assert!(wire.len() > 65536, "an older peer gets the plain frame");
    }

    /// Zip bombs from an authenticated peer: payloads that expand far beyond what their frame
    /// claims, and a claim beyond any frame. Each is an error for the connection (the kernel
    /// datapath ends it and counts a protocol error; the session core resends what it carried),
    /// never a bigger buffer, and the same Opening never yields more than a frame's claim.
    #[test]
    fn a_zip_bomb_is_an_error_for_its_connection() {
        use crate::protocol::packed::{Codec, MAX_UNPACKED_LEN};
        let key = [9u8; 32];
        let mut sealer = RecordSealer::new(&key);
        let mut opening = Opening::new(&key);
        let mut open = |frame: PackedFrame| {
            let mut buf = vec![0u8; RECORD_HEADER_LEN];
            frame.encode(&mut buf);
            sealer.seal(&mut buf, 0).unwrap();
            let header: [u8; 4] = buf[..4].try_into().unwrap();
            opening.open(header, BytesMut::from(&buf[4..]))
        };
        let bomb = |codec: Codec, original_len: u32, payload: Vec<u8>| PackedFrame {
            session: SessionId(2),
            offset: 0,
            flags: 0,
            codec,
            original_len,
            payload: Bytes::from(payload),
        };
        let zeros = vec![0u8; 64 << 20];
        // 64 MiB of zeros in a few KiB: the claim is what a gateway may send, the payload is not.
        let zstd = zstd::bulk::compress(&zeros, 1).unwrap();
        let lz4 = lz4_flex::block::compress(&zeros[..16 << 20]);
        assert!(zstd.len() < 64 << 10 && lz4.len() < 128 << 10);
        for (codec, payload) in [(Codec::Zstd, zstd.clone()), (Codec::Lz4, lz4.clone())] {
            let err = open(bomb(codec, 65536, payload)).unwrap_err();
            assert!(matches!(err, OpenError::Unpack(_)), "{codec:?}: {err:?}");
        }
        // Claiming the whole expansion: refused on the claim, before any work.
        let err = open(bomb(Codec::Zstd, 64 << 20, zstd)).unwrap_err();
        assert!(matches!(err, OpenError::Decode(_)), "{err:?}");
        let err = open(bomb(Codec::Zero, MAX_UNPACKED_LEN as u32 + 1, Vec::new())).unwrap_err();
        assert!(matches!(err, OpenError::Decode(_)), "{err:?}");
        // The largest claim is honoured, and exactly.
        let full = zstd::bulk::compress(&zeros[..MAX_UNPACKED_LEN], 3).unwrap();
        match open(bomb(Codec::Zstd, MAX_UNPACKED_LEN as u32, full)) {
            Ok(Opened {
                msg: Some(Message::Data(f)),
                ..
            }) => assert_eq!(f.payload.len(), MAX_UNPACKED_LEN),
            other => panic!("{other:?}"),
        }
    }

    /// Each data frame's seal says what packing did for its session, and opening a packed
    /// frame what unpacking cost; those notes add up to the gateway's counters. Control
    /// messages and connections that do not pack give none.
    #[test]
    fn sealing_and_opening_report_each_frame_for_its_session() {
        use crate::transform::{Choice, Compression};
        let key = [9u8; 32];
        let t0 = Instant::now();
        let policy = minute_rekey();
        let frame = |session: u64, payload: Vec<u8>| frame_of(session, 0, payload);
        let random = random_bytes(65536, 7);
        let text = b"dirty page ".repeat(6000);
        let msgs = [
            frame(4, text.clone()),
            frame(6, random),
            Message::Ping { id: 1 },
            frame(4, text),
        ];
        let pack = Arc::new(PackPolicy::new(Compression::Fixed(Choice::Lz4)));
        let mut sealing =
            Sealing::new(&key, policy, t0).with_packing(CodecSet::SUPPORTED, pack.clone());
        let mut wire = Vec::new();
        let notes: Vec<Option<PackNote>> = msgs
            .iter()
            .map(|m| sealing.seal(m, &mut wire, t0).unwrap().packed)
            .collect();
        let sessions: Vec<Option<u64>> = notes.iter().map(|n| n.map(|n| n.session.0)).collect();
        assert_eq!(sessions, [Some(4), Some(6), None, Some(4)]);
        let (text_note, random_note) = (notes[0].unwrap().figures, notes[1].unwrap().figures);
        assert_eq!(text_note.bytes_in, 66000);
        assert_eq!((text_note.frames_packed, text_note.frames_skipped), (1, 0));
        assert!(text_note.bytes_out < 66000 / 4, "{text_note:?}");
        assert_eq!(
            (random_note.frames_packed, random_note.frames_skipped),
            (0, 1)
        );
        assert_eq!(random_note.bytes_out, 65536, "sent as it is");
        let mut sum = PackFigures::default();
        notes.iter().flatten().for_each(|n| sum.add(&n.figures));

        let mut opening = Opening::new(&key).with_stats(pack.clone());
        let mut rest = &wire[..];
        let mut unpacked = Vec::new();
        while !rest.is_empty() {
            let header: [u8; 4] = rest[..4].try_into().unwrap();
            let len = RecordOpener::body_len(header).unwrap();
            let opened = opening
                .open(header, BytesMut::from(&rest[4..4 + len]))
                .unwrap();
            rest = &rest[4 + len..];
            unpacked.push(opened.unpacked.map(|n| n.session.0));
            if let Some(n) = opened.unpacked {
                sum.add(&n.figures);
            }
        }
        assert_eq!(
            unpacked,
            [Some(4), None, None, Some(4)],
            "only packed frames"
        );
        let g = pack.stats.snapshot("");
        let get = |k: &str| g.iter().find(|(n, _)| n == k).unwrap().1;
        assert_eq!(
            [
                sum.bytes_in,
                sum.bytes_out,
                sum.frames_packed,
                sum.frames_skipped
            ],
            [
                get("bytes_in"),
                get("bytes_out"),
                get("frames_packed"),
                get("frames_skipped")
            ]
        );
        assert_eq!(
            (sum.pack_ns, sum.unpack_ns),
            (get("pack_ns"), get("unpack_ns"))
        );

        let mut plain = Sealing::new(&key, policy, t0);
        let sealed = plain.seal(&msgs[0], &mut Vec::new(), t0).unwrap();
        assert_eq!(sealed.packed, None, "no packing on this connection");
    }

    /// The reactor's share of a batch: a random frame is sealed there, a text frame is left
    /// (nothing written) for the pool, and the stream opens in order either way.
    #[test]
    fn sealing_cheaply_leaves_only_frames_worth_compressing() {
        use crate::transform::{Choice, Compression};
        let key = [6u8; 32];
        let t0 = Instant::now();
        let pack = Arc::new(PackPolicy::new(Compression::Fixed(Choice::Zstd(1))));
        let mut sealing =
            Sealing::new(&key, minute_rekey(), t0).with_packing(CodecSet::SUPPORTED, pack);
        let (random, text) = (
            frame_of(1, 0, random_bytes(65536, 5)),
            frame_of(1, 65536, b"dirty page ".repeat(6000)),
        );
        let batch = [random.clone(), text.clone(), random];
        let mut wire = Vec::new();
        let cheap = sealing.seal_cheap_prefix(&batch, &mut wire, t0).unwrap();
        assert_eq!(cheap.len(), 1, "up to the text frame");
        let sealed_random = wire.len();
        assert!(sealing
            .seal_cheaply(&text, &mut wire, t0)
            .unwrap()
            .is_none());
        assert_eq!(
            wire.len(),
            sealed_random,
            "nothing written for the text frame"
        );
        let rest = sealing.seal_all(&batch[1..], &mut wire, t0).unwrap();
        assert_eq!(rest.len(), 2);
        assert_eq!(open_all(&mut Opening::new(&key), &wire), batch.to_vec());
    }

    #[test]
    fn forged_record_is_an_error_not_a_message() {
        let key = [7u8; 32];
        let t0 = Instant::now();
        let policy = minute_rekey();
        let mut wire = Vec::new();
        let _ = Sealing::new(&key, policy, t0)
            .seal(&data(0), &mut wire, t0)
            .unwrap();
        wire[10] ^= 1;
        let header: [u8; 4] = wire[..4].try_into().unwrap();
        let err = Opening::new(&key)
            .open(header, BytesMut::from(&wire[4..]))
            .unwrap_err();
        assert_eq!(err, OpenError::Record(RecordError::Authentication));
    }
}

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

use bytes::BytesMut;

use super::record::{RecordError, RecordOpener, RecordSealer, RECORD_HEADER_LEN};
use crate::protocol::packed::{CodecSet, PackedFrame, PACKED_DATA};
use crate::protocol::{DecodeError, Message};
use crate::transform::cpu_time::thread_cpu_ns;
use crate::transform::{PackOutcome, PackPolicy, Packer, UnpackError, Unpacker};

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

    /// Whether sealing `msgs` would cost compression work: packing is on, its choice is a
    /// codec, and one of the data frames is neither all zeros nor incompressible by the probe.
    /// (A few µs per 64 KiB frame: a batch of random or zero frames can be sealed where it is.)
    pub fn needs_compression_work(&mut self, msgs: &[Message]) -> bool {
        let Some(p) = self.packing.as_mut() else {
            return false;
        };
        let codecs = p.codecs;
        p.policy
            .choice()
            .codec()
            .is_some_and(|c| codecs.contains(c))
            && msgs.iter().any(|m| match m {
                Message::Data(f) => p.packer.worth_compressing(&f.payload),
                _ => false,
            })
    }

    /// Appends `msg` to `out` as one sealed record, preceded by a key-update
    /// record if the policy (or the record-count limit) says the key is due.
    pub fn seal(
        &mut self,
        msg: &Message,
        out: &mut Vec<u8>,
        now: Instant,
    ) -> Result<Option<KeyUpdated>, RecordError> {
        let mut updated = None;
        if self.sealer.needs_rekey()
            || self.bytes_since_rekey >= self.policy.after_bytes
            || now.saturating_duration_since(self.last_rekey) >= self.policy.after
        {
            seal_one(&mut self.sealer, &Message::KeyUpdate, out, None)?;
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
        self.bytes_since_rekey += seal_one(&mut self.sealer, msg, out, packing)? as u64;
        Ok(updated)
    }
}

/// Seals one message at the end of `out` (a data frame packed if `packing` says so);
/// returns the record's length.
fn seal_one(
    sealer: &mut RecordSealer,
    msg: &Message,
    out: &mut Vec<u8>,
    packing: Option<&mut Packing>,
) -> Result<usize, RecordError> {
    let start = out.len();
    out.resize(start + RECORD_HEADER_LEN, 0);
    match (msg, packing) {
        (Message::Data(frame), Some(p)) => {
            let t = thread_cpu_ns();
            let outcome = p.packer.pack(frame, p.policy.choice(), p.codecs, out);
            if outcome == PackOutcome::Plain || outcome == PackOutcome::Skipped {
                msg.encode(out);
            }
            let ns = thread_cpu_ns().saturating_sub(t);
            p.policy.stats.record(outcome, frame.payload.len(), ns);
        }
        _ => msg.encode(out),
    }
    if let Err(e) = sealer.seal(out, start) {
        out.truncate(start);
        return Err(e);
    }
    Ok(out.len() - start)
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
    /// and yields `None`; a data payload is a slice of `body`, not a copy.
    pub fn open(
        &mut self,
        header: [u8; RECORD_HEADER_LEN],
        mut body: BytesMut,
    ) -> Result<Option<Message>, OpenError> {
        self.opener.open(header, &mut body)?;
        if body.first() == Some(&PACKED_DATA) {
            let t = thread_cpu_ns();
            let frame = self.unpacker.unpack(PackedFrame::decode(body.freeze())?)?;
            if let Some(p) = &self.stats {
                let ns = thread_cpu_ns().saturating_sub(t);
                p.stats
                    .unpack_ns
                    .fetch_add(ns, std::sync::atomic::Ordering::Relaxed);
            }
            return Ok(Some(Message::Data(frame)));
        }
        match Message::decode(body.freeze())? {
            Message::KeyUpdate => {
                self.opener.ratchet();
                Ok(None)
            }
            msg => Ok(Some(msg)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::{DataFrame, SessionId};
    use bytes::Bytes;

    /// Splits a stream of records and opens each.
    fn open_all(opening: &mut Opening, mut wire: &[u8]) -> Vec<Message> {
        let mut out = Vec::new();
        while !wire.is_empty() {
            let header: [u8; 4] = wire[..4].try_into().unwrap();
            let len = RecordOpener::body_len(header).unwrap();
            let body = BytesMut::from(&wire[4..4 + len]);
            wire = &wire[4 + len..];
            if let Some(m) = opening.open(header, body).unwrap() {
                out.push(m);
            }
        }
        out
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
            updates.extend(sealing.seal(&data(n), &mut wire, t0).unwrap());
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
        let policy = RekeyPolicy {
            after_bytes: u64::MAX,
            after: Duration::from_secs(60),
        };
        let mut sealing = Sealing::new(&key, policy, t0);
        let mut wire = Vec::new();
        assert_eq!(sealing.seal(&data(0), &mut wire, t0).unwrap(), None);
        let later = t0 + Duration::from_secs(61);
        assert!(sealing.seal(&data(1), &mut wire, later).unwrap().is_some());
        assert_eq!(sealing.seal(&data(2), &mut wire, later).unwrap(), None);
        assert_eq!(open_all(&mut Opening::new(&key), &wire).len(), 3);
    }

    /// Compress then encrypt, one frame per record: text shrinks, zeros vanish, random data
    /// goes as it is, a peer without codecs gets plain frames, and every frame opens as sent.
    #[test]
    fn packed_frames_seal_and_open_as_sent() {
        use crate::transform::{Choice, Compression};
        let key = [8u8; 32];
        let t0 = Instant::now();
        let policy = RekeyPolicy {
            after_bytes: u64::MAX,
            after: Duration::from_secs(60),
        };
        let frame = |n: u64, payload: Vec<u8>| {
            Message::Data(DataFrame {
                session: SessionId(2),
                offset: n << 16,
                flags: 0,
                payload: Bytes::from(payload),
            })
        };
        let text: Vec<u8> = b"vcpu dirty page bitmap 12345 "
            .iter()
            .cycle()
            .take(65536)
            .copied()
            .collect();
        let mut x = 99u64;
        let random: Vec<u8> = (0..65536)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect();
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
            sealing.seal(m, &mut wire, t0).unwrap();
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
        plain.seal(&msgs[1], &mut wire, t0).unwrap();
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
            Ok(Some(Message::Data(f))) => assert_eq!(f.payload.len(), MAX_UNPACKED_LEN),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn forged_record_is_an_error_not_a_message() {
        let key = [7u8; 32];
        let t0 = Instant::now();
        let policy = RekeyPolicy {
            after_bytes: u64::MAX,
            after: Duration::from_secs(60),
        };
        let mut wire = Vec::new();
        Sealing::new(&key, policy, t0)
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

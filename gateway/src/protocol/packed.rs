//! The packed data frame (type `0x21`): a data frame whose payload went through a codec on
//! the way out (compressed, or all zeros sent as a length). Only sent on a connection whose
//! peer said in its handshake that it unpacks that codec (docs/PROTOCOL.md, "Compression");
//! the record layer unpacks it back into a plain data frame before anything else sees it.
//!
//! ```text
//! 0x21 | session u64 | offset u64 | codec u8 | original_len u32 | length u32 | payload
//! ```
//!
//! `offset` and `original_len` describe the plain bytes (the stream position and the length
//! the payload unpacks to); `length` is the packed payload's, equal to the rest of the record.
//! Bit 7 of `codec` is the data frame's dedup flag ([`DATA_FLAG_DEDUP`]): the payload unpacks
//! to a dedup item list, and `original_len` is that list's length.

use bytes::{BufMut, Bytes};

use super::codec::{DecodeError, Reader};
use super::message::DATA_FLAG_DEDUP;
use super::SessionId;

/// The bit of the codec byte that carries the data frame's dedup flag.
const CODEC_DEDUP_BIT: u8 = 0x80;

/// The message type of a packed data frame.
pub const PACKED_DATA: u8 = 0x21;
/// Header bytes before a packed frame's payload.
pub const PACKED_HEADER_LEN: usize = 1 + 8 + 8 + 1 + 4 + 4;
/// The most a packed frame may unpack to: twice the largest frame a gateway cuts
/// (`limits.frame_bytes` ≤ 128 KiB). A frame claiming more is refused before any work.
pub const MAX_UNPACKED_LEN: usize = 256 * 1024;

/// How a payload was packed. The wire value is the bit in a peer's handshake [`CodecSet`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Codec {
    /// `original_len` zero bytes, no payload.
    Zero = 0,
    /// An LZ4 block (lz4_flex).
    Lz4 = 1,
    /// A Zstandard frame.
    Zstd = 2,
}

impl Codec {
    pub const ALL: [Codec; 3] = [Codec::Zero, Codec::Lz4, Codec::Zstd];

    fn from_wire(v: u8) -> Option<Codec> {
        Codec::ALL.into_iter().find(|c| *c as u8 == v)
    }

    pub fn name(self) -> &'static str {
        match self {
            Codec::Zero => "zero",
            Codec::Lz4 => "lz4",
            Codec::Zstd => "zstd",
        }
    }
}

/// The codecs one side unpacks, as exchanged in the handshake (bit n: codec n).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct CodecSet(pub u8);

impl CodecSet {
    /// What this build unpacks.
    pub const SUPPORTED: CodecSet = CodecSet(0b111);

    pub fn contains(self, c: Codec) -> bool {
        self.0 & (1 << c as u8) != 0
    }

    pub fn is_empty(self) -> bool {
        self.0 == 0
    }
}

/// A packed data frame as read off a record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PackedFrame {
    pub session: SessionId,
    pub offset: u64,
    /// The data flags of the frame it stands for (only [`DATA_FLAG_DEDUP`] can be carried).
    pub flags: u8,
    pub codec: Codec,
    pub original_len: u32,
    pub payload: Bytes,
}

impl PackedFrame {
    /// Appends the encoded frame to `out`.
    pub fn encode(&self, out: &mut Vec<u8>) {
        encode_header(
            out,
            self.session,
            self.offset,
            self.flags,
            self.codec,
            self.original_len,
            self.payload.len(),
        );
        out.extend_from_slice(&self.payload);
    }

    /// Decodes a record's plaintext that starts with [`PACKED_DATA`]. The payload shares
    /// `buf`'s allocation.
    pub fn decode(buf: Bytes) -> Result<PackedFrame, DecodeError> {
        let mut r = Reader::new(&buf);
        if r.u8()? != PACKED_DATA {
            return Err(DecodeError::Invalid {
                field: "type",
                why: "not a packed data frame",
            });
        }
        let session = SessionId(r.u64()?);
        let offset = r.u64()?;
        let codec_byte = r.u8()?;
        let flags = if codec_byte & CODEC_DEDUP_BIT != 0 {
            DATA_FLAG_DEDUP
        } else {
            0
        };
        let codec =
            Codec::from_wire(codec_byte & !CODEC_DEDUP_BIT).ok_or(DecodeError::Invalid {
                field: "packed codec",
                why: "unknown codec",
            })?;
        let original_len = r.u32()?;
        let len = r.u32()? as usize;
        if r.remaining() != len {
            return Err(DecodeError::Invalid {
                field: "packed length",
                why: "does not match the record length",
            });
        }
        if original_len as usize > MAX_UNPACKED_LEN {
            return Err(DecodeError::Invalid {
                field: "packed original length",
                why: "larger than any frame",
            });
        }
        if offset.checked_add(original_len as u64).is_none() {
            return Err(DecodeError::Invalid {
                field: "data offset",
                why: "offset + length overflows",
            });
        }
        if codec == Codec::Zero && len != 0 {
            return Err(DecodeError::Invalid {
                field: "packed length",
                why: "a zero frame carries no payload",
            });
        }
        Ok(PackedFrame {
            session,
            offset,
            flags,
            codec,
            original_len,
            payload: buf.slice(PACKED_HEADER_LEN..),
        })
    }
}

/// Writes a packed frame's header; the caller appends `payload_len` payload bytes. `flags`
/// are the data frame's (a flag other than dedup has no place here: a caller bug).
pub fn encode_header(
    out: &mut Vec<u8>,
    session: SessionId,
    offset: u64,
    flags: u8,
    codec: Codec,
    original_len: u32,
    payload_len: usize,
) {
    debug_assert_eq!(flags & !DATA_FLAG_DEDUP, 0, "only the dedup flag is packed");
    let dedup = if flags & DATA_FLAG_DEDUP != 0 {
        CODEC_DEDUP_BIT
    } else {
        0
    };
    out.put_u8(PACKED_DATA);
    out.put_u64(session.0);
    out.put_u64(offset);
    out.put_u8(codec as u8 | dedup);
    out.put_u32(original_len);
    out.put_u32(payload_len as u32);
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn frame(codec: Codec, original_len: u32, payload: &'static [u8]) -> PackedFrame {
        PackedFrame {
            session: SessionId(4),
            offset: 1 << 20,
            flags: 0,
            codec,
            original_len,
            payload: Bytes::from_static(payload),
        }
    }

    #[test]
    fn round_trips_and_checks_its_fields() {
        let f = frame(Codec::Lz4, 5000, b"abc");
        let mut buf = Vec::new();
        f.encode(&mut buf);
        assert_eq!(buf.len(), PACKED_HEADER_LEN + 3);
        assert_eq!(PackedFrame::decode(Bytes::from(buf.clone())).unwrap(), f);
        let bad = |edit: &dyn Fn(&mut Vec<u8>)| {
            let mut b = buf.clone();
            edit(&mut b);
            PackedFrame::decode(Bytes::from(b)).is_err()
        };
        assert!(bad(&|b| b[17] = 9), "unknown codec");
        assert!(bad(&|b| b[17] = 0x40 | 1), "unknown codec bit");
        let mut dedup = frame(Codec::Lz4, 5000, b"abc");
        dedup.flags = DATA_FLAG_DEDUP;
        let mut d = Vec::new();
        dedup.encode(&mut d);
        assert_eq!(
            d[17], 0x81,
            "the dedup flag rides in bit 7 of the codec byte"
        );
        assert_eq!(PackedFrame::decode(Bytes::from(d)).unwrap(), dedup);
        assert!(
            bad(&|b| b[18..22].copy_from_slice(&(1u32 << 20).to_be_bytes())),
            "zip bomb claim"
        );
        assert!(bad(&|b| b.truncate(b.len() - 1)), "short payload");
        assert!(bad(&|b| b.push(0)), "trailing byte");
        let mut zero = Vec::new();
        frame(Codec::Zero, 4096, b"x").encode(&mut zero);
        assert!(
            PackedFrame::decode(Bytes::from(zero)).is_err(),
            "zero frame with payload"
        );
    }

    #[test]
    fn codec_sets() {
        assert!(CodecSet::SUPPORTED.contains(Codec::Zstd));
        assert!(!CodecSet(0b010).contains(Codec::Zero));
        assert!(CodecSet::default().is_empty());
    }

    proptest! {
        #[test]
        fn decoding_arbitrary_bytes_never_panics(mut bytes in proptest::collection::vec(any::<u8>(), 0..64)) {
            if let Some(b) = bytes.first_mut() {
                *b = PACKED_DATA;
            }
            let _ = PackedFrame::decode(Bytes::from(bytes));
        }
    }
}

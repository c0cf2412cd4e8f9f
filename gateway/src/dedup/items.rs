//! The payload of a deduplicated data frame: a list of items, each literal bytes or a
//! reference to a chunk the receiver's [`Store`](super::Store) holds.
//!
//! ```text
//! items := item+                                   (an empty list is an error)
//! item  := kind u8 | len u32 (big-endian) | body
//!   kind 0  piece:  `len` literal bytes, not stored (part of a chunk cut by a frame edge)
//!   kind 1  chunk:  `len` literal bytes, a whole chunk: the receiver stores it under BLAKE3(bytes)
//!   kind 2  ref:    32-byte fingerprint (body is 32 bytes; `len` is the chunk's length)
//! ```
//!
//! [`decode`] never panics and never indexes raw slices: it walks the buffer through bounded
//! `take`s, checks every length, and sums the plain length the items stand for before it
//! allocates anything, so a frame cannot make the receiver reserve more than `max_plain`
//! bytes. The items it returns are zero-copy slices of the buffer.

use bytes::Bytes;

use super::Fingerprint;

/// Item kinds on the wire.
const PIECE: u8 = 0;
const CHUNK: u8 = 1;
const REF: u8 = 2;
/// Kind and length.
const HEADER_LEN: usize = 5;

/// The longest chunk a `chunk` or `ref` item may name: a wire limit, above any chunk size
/// the sender may be tuned to (`CHUNK_SIZES.max`, checked at compile time), so that
/// retuning the chunker needs no protocol change. Pieces are bounded by `max_plain` only.
pub const MAX_CHUNK_LEN: u32 = 64 * 1024;
const _: () = assert!(super::CHUNK_SIZES.max <= MAX_CHUNK_LEN);

/// One item of a deduplicated frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Item {
    /// Literal bytes that are not a whole chunk (cut by a frame edge); not stored.
    Piece(Bytes),
    /// A whole chunk's bytes; the receiver stores them under their BLAKE3 fingerprint.
    Chunk(Bytes),
    /// A chunk the receiver should hold: its fingerprint and length.
    Ref { fp: Fingerprint, len: u32 },
}

impl Item {
    /// How many bytes of the stream the item stands for.
    pub fn plain_len(&self) -> usize {
        match self {
            Item::Piece(b) | Item::Chunk(b) => b.len(),
            Item::Ref { len, .. } => *len as usize,
        }
    }

    /// Its size on the wire.
    pub fn encoded_len(&self) -> usize {
        HEADER_LEN
            + match self {
                Item::Piece(b) | Item::Chunk(b) => b.len(),
                Item::Ref { .. } => 32,
            }
    }
}

/// Why a frame's items could not be decoded. Always the peer's fault.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ItemError {
    #[error("an empty item list")]
    Empty,
    #[error("item {index}: truncated {field}: needed {needed} more bytes")]
    Truncated {
        index: usize,
        field: &'static str,
        needed: usize,
    },
    #[error("item {index}: unknown kind {kind}")]
    UnknownKind { index: usize, kind: u8 },
    #[error("item {index}: a zero-length {field}")]
    ZeroLength { index: usize, field: &'static str },
    #[error("item {index}: ref len {len} (1..={MAX_CHUNK_LEN})")]
    RefLen { index: usize, len: u32 },
    #[error("item {index}: chunk len {len} over {MAX_CHUNK_LEN}")]
    ChunkTooLong { index: usize, len: u32 },
    #[error("items stand for more than {max_plain} plain bytes (at least {total})")]
    TooLong { total: u64, max_plain: usize },
}

/// Appends the encoding of `items` to `out`.
///
/// # Panics
/// If an item's length does not fit the `u32` field: a caller bug (frames are far shorter).
pub fn encode(items: &[Item], out: &mut Vec<u8>) {
    out.reserve(encoded_len(items));
    for item in items {
        let (kind, len, body): (u8, usize, &[u8]) = match item {
            Item::Piece(b) => (PIECE, b.len(), b),
            Item::Chunk(b) => (CHUNK, b.len(), b),
            Item::Ref { fp, len } => (REF, *len as usize, fp),
        };
        let len = u32::try_from(len).expect("an item longer than 4 GiB");
        out.push(kind);
        out.extend_from_slice(&len.to_be_bytes());
        out.extend_from_slice(body);
    }
}

/// The size of [`encode`]'s output for `items`.
pub fn encoded_len(items: &[Item]) -> usize {
    items.iter().map(Item::encoded_len).sum()
}

/// One item's place in the buffer, found by the checking pass.
struct Raw {
    kind: u8,
    len: u32,
    body: std::ops::Range<usize>,
}

/// Bounded cursor over the buffer; sums the plain length of the items read.
struct Reader<'a> {
    buf: &'a [u8],
    at: usize,
    total: u64,
    max_plain: usize,
}

impl Reader<'_> {
    fn take(
        &mut self,
        n: usize,
        index: usize,
        field: &'static str,
    ) -> Result<std::ops::Range<usize>, ItemError> {
        let left = self.buf.len() - self.at;
        if left < n {
            return Err(ItemError::Truncated {
                index,
                field,
                needed: n - left,
            });
        }
        self.at += n;
        Ok(self.at - n..self.at)
    }

    fn next(&mut self, index: usize) -> Result<Raw, ItemError> {
        let head = self.take(HEADER_LEN, index, "header")?;
        let head = &self.buf[head];
        let kind = head[0];
        let len = u32::from_be_bytes([head[1], head[2], head[3], head[4]]);
        let body = match kind {
            PIECE | CHUNK if len == 0 => {
                let field = if kind == PIECE { "piece" } else { "chunk" };
                return Err(ItemError::ZeroLength { index, field });
            }
            CHUNK if len > MAX_CHUNK_LEN => return Err(ItemError::ChunkTooLong { index, len }),
            REF if len == 0 || len > MAX_CHUNK_LEN => return Err(ItemError::RefLen { index, len }),
            PIECE | CHUNK | REF => {
                // Before the body is read: a claim over the limit is refused for what it
                // claims.
                self.total += u64::from(len);
                if self.total > self.max_plain as u64 {
                    return Err(ItemError::TooLong {
                        total: self.total,
                        max_plain: self.max_plain,
                    });
                }
                match kind {
                    PIECE => self.take(len as usize, index, "piece")?,
                    CHUNK => self.take(len as usize, index, "chunk")?,
                    _ => self.take(32, index, "fingerprint")?,
                }
            }
            kind => return Err(ItemError::UnknownKind { index, kind }),
        };
        Ok(Raw { kind, len, body })
    }
}

/// The items of a frame's payload, as zero-copy slices of `buf`. Fails, without allocating,
/// on any malformed input or when the items stand for more than `max_plain` bytes.
pub fn decode(buf: Bytes, max_plain: usize) -> Result<Vec<Item>, ItemError> {
    if buf.is_empty() {
        return Err(ItemError::Empty);
    }
    // Check everything first: structure, lengths, the plain total.
    let reader = || Reader {
        buf: &buf,
        at: 0,
        total: 0,
        max_plain,
    };
    let (mut check, mut count) = (reader(), 0);
    while check.at < buf.len() {
        check.next(count)?;
        count += 1;
    }
    let (mut reader, mut items) = (reader(), Vec::with_capacity(count));
    for index in 0..count {
        let raw = reader.next(index)?;
        items.push(match raw.kind {
            PIECE => Item::Piece(buf.slice(raw.body)),
            CHUNK => Item::Chunk(buf.slice(raw.body)),
            _ => {
                let mut fp = [0u8; 32];
                fp.copy_from_slice(&buf[raw.body]);
                Item::Ref { fp, len: raw.len }
            }
        });
    }
    Ok(items)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn fp(b: u8) -> Fingerprint {
        [b; 32]
    }

    fn enc(items: &[Item]) -> Bytes {
        let mut out = Vec::new();
        encode(items, &mut out);
        assert_eq!(out.len(), encoded_len(items));
        Bytes::from(out)
    }

    #[test]
    fn the_encoding_is_as_documented() {
        let items = [
            Item::Piece(Bytes::from_static(b"ab")),
            Item::Chunk(Bytes::from_static(b"c")),
            Item::Ref {
                fp: fp(7),
                len: 4096,
            },
        ];
        let mut want = vec![
            0, 0, 0, 0, 2, b'a', b'b', 1, 0, 0, 0, 1, b'c', 2, 0, 0, 0x10, 0,
        ];
        want.extend_from_slice(&[7; 32]);
        assert_eq!(enc(&items), want);
        assert_eq!(decode(Bytes::from(want), 4099), Ok(items.to_vec()));
        assert_eq!(items.iter().map(Item::plain_len).sum::<usize>(), 4099);
    }

    #[test]
    fn each_malformation_is_named() {
        let ok_ref = |len: u32| {
            let mut v = vec![REF];
            v.extend_from_slice(&len.to_be_bytes());
            v.extend_from_slice(&[1; 32]);
            v
        };
        let cases: Vec<(Vec<u8>, ItemError)> = vec![
            (vec![], ItemError::Empty),
            (
                vec![0, 0, 0],
                ItemError::Truncated {
                    index: 0,
                    field: "header",
                    needed: 2,
                },
            ),
            (
                vec![0, 0, 0, 0, 3, 9, 9],
                ItemError::Truncated {
                    index: 0,
                    field: "piece",
                    needed: 1,
                },
            ),
            (
                [ok_ref(10), vec![1, 0, 0, 0, 2, 9]].concat(),
                ItemError::Truncated {
                    index: 1,
                    field: "chunk",
                    needed: 1,
                },
            ),
            (
                ok_ref(10)[..20].to_vec(),
                ItemError::Truncated {
                    index: 0,
                    field: "fingerprint",
                    needed: 17,
                },
            ),
            (
                vec![3, 0, 0, 0, 1, 0],
                ItemError::UnknownKind { index: 0, kind: 3 },
            ),
            (
                vec![0, 0, 0, 0, 0],
                ItemError::ZeroLength {
                    index: 0,
                    field: "piece",
                },
            ),
            (
                vec![1, 0, 0, 0, 0],
                ItemError::ZeroLength {
                    index: 0,
                    field: "chunk",
                },
            ),
            (ok_ref(0), ItemError::RefLen { index: 0, len: 0 }),
            (
                ok_ref(MAX_CHUNK_LEN + 1),
                ItemError::RefLen {
                    index: 0,
                    len: MAX_CHUNK_LEN + 1,
                },
            ),
            (
                [vec![1], (MAX_CHUNK_LEN + 1).to_be_bytes().to_vec()].concat(),
                ItemError::ChunkTooLong {
                    index: 0,
                    len: MAX_CHUNK_LEN + 1,
                },
            ),
            // Three refs of 40 KiB against a 100 KiB limit: refused at the third, before
            // anything is allocated (the refs' bodies are all there).
            (
                [ok_ref(40 << 10), ok_ref(40 << 10), ok_ref(40 << 10)].concat(),
                ItemError::TooLong {
                    total: 120 << 10,
                    max_plain: 100 << 10,
                },
            ),
            // A piece claiming 4 GiB is refused for its length, not read.
            (
                vec![0, 0xff, 0xff, 0xff, 0xff],
                ItemError::TooLong {
                    total: u32::MAX as u64,
                    max_plain: 100 << 10,
                },
            ),
        ];
        for (input, want) in cases {
            assert_eq!(
                decode(Bytes::from(input.clone()), 100 << 10),
                Err(want),
                "{input:?}"
            );
        }
    }

    #[test]
    fn decoded_items_are_slices_of_the_buffer() {
        let buf = enc(&[Item::Chunk(Bytes::from(vec![5u8; 100]))]);
        let items = decode(buf.clone(), 1000).unwrap();
        let Item::Chunk(b) = &items[0] else {
            panic!("{items:?}")
        };
        assert_eq!(b.as_ptr(), buf[5..].as_ptr());
    }

    fn item() -> impl Strategy<Value = Item> {
        prop_oneof![
            proptest::collection::vec(any::<u8>(), 1..300).prop_map(|v| Item::Piece(v.into())),
            proptest::collection::vec(any::<u8>(), 1..300).prop_map(|v| Item::Chunk(v.into())),
            (any::<[u8; 32]>(), 1..=MAX_CHUNK_LEN).prop_map(|(fp, len)| Item::Ref { fp, len }),
        ]
    }

    proptest! {
        #[test]
        fn items_round_trip(items in proptest::collection::vec(item(), 1..20)) {
            let plain: usize = items.iter().map(Item::plain_len).sum();
            let buf = enc(&items);
            prop_assert_eq!(decode(buf.clone(), plain), Ok(items));
            let too_long = decode(buf, plain - 1);
            prop_assert!(matches!(too_long, Err(ItemError::TooLong { .. })), "{:?}", too_long);
        }

        #[test]
        fn decode_never_panics(
            items in proptest::collection::vec(item(), 1..8),
            edits in proptest::collection::vec((any::<usize>(), any::<u8>()), 0..6),
            cut in any::<usize>(),
            junk in proptest::collection::vec(any::<u8>(), 0..64),
            max_plain in 0usize..1 << 20,
        ) {
            let mut buf = enc(&items).to_vec();
            for (at, x) in edits {
                let at = at % buf.len();
                buf[at] ^= x;
            }
            buf.truncate(cut % (buf.len() + 1));
            if let Ok(items) = decode(Bytes::from(buf.clone()), max_plain) {
                prop_assert!(items.iter().map(Item::plain_len).sum::<usize>() <= max_plain);
                prop_assert_eq!(enc(&items), buf);
            }
            let _ = decode(Bytes::from(junk), max_plain);
        }
    }
}

//! The lane's datagrams on the wire (docs/PROTOCOL.md, "The lane").
//!
//! ```text
//! shard = kind 0x01 | data u8 | parity u8 | index u8 | packet u64 | group u64 | floor u64
//!         | len u32 | shard ciphertext | tag (16)
//! ack   = kind 0x02 | ranges u8 | 0 u8 | 0 u8 | packet u64
//!         | ciphertext of: largest u64 | delay_us u32 | received u64 | below u64
//!                          | ranges u8 | (start u64 | count u32) × ranges
//!         | tag (16)
//! ```
//!
//! Big-endian. The header before the ciphertext is the AEAD's associated
//! data, and `packet` its nonce, one count per direction (`lane::seal`). A
//! shard's length is what the datagram leaves after header and tag, and must
//! be its group's `shard_len` (`lane::fec::Shape`). `floor` is the sender's
//! oldest group still on the way: it gave up on every group below. Every
//! datagram's length follows from its header ([`datagram_len`]), so that
//! datagrams the kernel joined on receipt (UDP GRO) can be split again.

use super::fec::{FecError, Shape};

pub const KIND_SHARD: u8 = 0x01;
pub const KIND_ACK: u8 = 0x02;
/// Bytes before a shard's ciphertext.
pub const SHARD_HEADER_LEN: usize = 32;
/// Bytes before an ack's ciphertext.
pub const ACK_HEADER_LEN: usize = 12;
pub const TAG_LEN: usize = 16;
/// Done groups an ack lists beyond its cumulative point, at most: an ack of 96 ranges is
/// 1209 bytes, within the datagram size of a 1500-byte MTU.
pub const MAX_ACK_RANGES: usize = 96;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    #[error("a lane datagram of {0} bytes is too short")]
    Short(usize),
    #[error("unknown lane datagram kind {0:#04x}")]
    Kind(u8),
    #[error("a shard's group: {0}")]
    Shape(#[from] FecError),
    #[error("a shard of {got} bytes in a group of {want}-byte shards")]
    ShardLength { got: usize, want: usize },
    #[error("an ack's body of {0} bytes does not match its {1} ranges")]
    AckLength(usize, usize),
    #[error("an ack lists {0} ranges, more than {MAX_ACK_RANGES}")]
    TooManyRanges(usize),
}

/// What a shard's header says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ShardHeader {
    pub packet: u64,
    pub group: u64,
    pub floor: u64,
    pub index: u8,
    pub shape: Shape,
}

impl ShardHeader {
    pub fn encode(&self) -> [u8; SHARD_HEADER_LEN] {
        let mut b = [0u8; SHARD_HEADER_LEN];
        b[0] = KIND_SHARD;
        b[1] = self.shape.data;
        b[2] = self.shape.parity;
        b[3] = self.index;
        b[4..12].copy_from_slice(&self.packet.to_be_bytes());
        b[12..20].copy_from_slice(&self.group.to_be_bytes());
        b[20..28].copy_from_slice(&self.floor.to_be_bytes());
        b[28..32].copy_from_slice(&self.shape.len.to_be_bytes());
        b
    }

    /// The header of a whole shard datagram, checked against its length.
    pub fn decode(datagram: &[u8]) -> Result<ShardHeader, WireError> {
        if datagram.len() < SHARD_HEADER_LEN + TAG_LEN {
            return Err(WireError::Short(datagram.len()));
        }
        if datagram[0] != KIND_SHARD {
            return Err(WireError::Kind(datagram[0]));
        }
        let shard = datagram.len() - SHARD_HEADER_LEN - TAG_LEN;
        let len = u32::from_be_bytes(datagram[28..32].try_into().expect("4 bytes"));
        let data = datagram[1];
        let shape = Shape {
            data,
            parity: datagram[2],
            // What the group's length says each shard must be.
            shard_len: u16::try_from((len as usize).div_ceil(usize::from(data.max(1)))).map_err(
                |_| WireError::ShardLength {
                    got: shard,
                    want: len as usize,
                },
            )?,
            len,
        };
        shape.check()?;
        if usize::from(shape.shard_len) != shard {
            return Err(WireError::ShardLength {
                got: shard,
                want: shape.shard_len.into(),
            });
        }
        let header = ShardHeader {
            packet: u64::from_be_bytes(datagram[4..12].try_into().expect("8 bytes")),
            group: u64::from_be_bytes(datagram[12..20].try_into().expect("8 bytes")),
            floor: u64::from_be_bytes(datagram[20..28].try_into().expect("8 bytes")),
            index: datagram[3],
            shape,
        };
        if usize::from(header.index) >= shape.total() {
            return Err(FecError::IndexOutOfRange {
                index: header.index.into(),
                total: shape.total(),
            }
            .into());
        }
        Ok(header)
    }
}

/// The header of an ack datagram: its ranges and packet number (its nonce).
pub fn ack_header(ack: &Ack, packet: u64) -> [u8; ACK_HEADER_LEN] {
    let mut b = [0u8; ACK_HEADER_LEN];
    b[0] = KIND_ACK;
    b[1] = ack.ranges.len().min(usize::from(u8::MAX)) as u8;
    b[4..12].copy_from_slice(&packet.to_be_bytes());
    b
}

/// The length of the datagram at the start of `buf`, from its header.
pub fn datagram_len(buf: &[u8]) -> Result<usize, WireError> {
    match buf.first() {
        Some(&KIND_SHARD) if buf.len() >= SHARD_HEADER_LEN => {
            let data = usize::from(buf[1]);
            let len = u32::from_be_bytes(buf[28..32].try_into().expect("4 bytes")) as usize;
            if data == 0 {
                return Err(FecError::Empty.into());
            }
            Ok(SHARD_HEADER_LEN + len.div_ceil(data) + TAG_LEN)
        }
        Some(&KIND_ACK) if buf.len() >= ACK_HEADER_LEN => {
            let ranges = usize::from(buf[1]);
            if ranges > MAX_ACK_RANGES {
                return Err(WireError::TooManyRanges(ranges));
            }
            Ok(ACK_HEADER_LEN + ACK_FIXED + ACK_RANGE * ranges + TAG_LEN)
        }
        Some(&KIND_SHARD) | Some(&KIND_ACK) | None => Err(WireError::Short(buf.len())),
        Some(&other) => Err(WireError::Kind(other)),
    }
}

/// The kind and packet number of any lane datagram, before it is opened.
pub fn peek(datagram: &[u8]) -> Result<(u8, u64), WireError> {
    let kind = *datagram.first().ok_or(WireError::Short(0))?;
    let min = match kind {
        KIND_SHARD => SHARD_HEADER_LEN,
        KIND_ACK => ACK_HEADER_LEN,
        other => return Err(WireError::Kind(other)),
    } + TAG_LEN;
    if datagram.len() < min {
        return Err(WireError::Short(datagram.len()));
    }
    Ok((
        kind,
        u64::from_be_bytes(datagram[4..12].try_into().expect("8 bytes")),
    ))
}

/// Where each datagram lies in `buf`, which the kernel may have filled with several joined
/// (UDP GRO), each as long as its header says; a last one cut short is left out.
pub fn datagrams(buf: &[u8]) -> impl Iterator<Item = std::ops::Range<usize>> + '_ {
    let mut at = 0;
    std::iter::from_fn(move || {
        let len = datagram_len(&buf[at..]).ok()?;
        let range = at..at.checked_add(len).filter(|end| *end <= buf.len())?;
        at = range.end;
        Some(range)
    })
}

/// What the receiving end tells the sending end (`lane::receiver`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Ack {
    /// The highest shard packet number received.
    pub largest: u64,
    /// How long after `largest` arrived this ack left, µs.
    pub delay_us: u32,
    /// Frame bytes of every group rebuilt so far.
    pub received: u64,
    /// Every group below this one is rebuilt or given up.
    pub below: u64,
    /// Groups rebuilt above `below`: (first, count), ascending.
    pub ranges: Vec<(u64, u32)>,
}

const ACK_FIXED: usize = 8 + 4 + 8 + 8 + 1;
const ACK_RANGE: usize = 12;

impl Ack {
    /// The plaintext body, to seal behind [`ack_header`].
    pub fn encode(&self) -> Result<Vec<u8>, WireError> {
        if self.ranges.len() > MAX_ACK_RANGES {
            return Err(WireError::TooManyRanges(self.ranges.len()));
        }
        let mut b = Vec::with_capacity(ACK_FIXED + ACK_RANGE * self.ranges.len());
        b.extend_from_slice(&self.largest.to_be_bytes());
        b.extend_from_slice(&self.delay_us.to_be_bytes());
        b.extend_from_slice(&self.received.to_be_bytes());
        b.extend_from_slice(&self.below.to_be_bytes());
        b.push(self.ranges.len() as u8);
        for (first, count) in &self.ranges {
            b.extend_from_slice(&first.to_be_bytes());
            b.extend_from_slice(&count.to_be_bytes());
        }
        Ok(b)
    }

    pub fn decode(body: &[u8]) -> Result<Ack, WireError> {
        if body.len() < ACK_FIXED {
            return Err(WireError::Short(body.len()));
        }
        let u64_at = |at: usize| u64::from_be_bytes(body[at..at + 8].try_into().expect("8"));
        let u32_at = |at: usize| u32::from_be_bytes(body[at..at + 4].try_into().expect("4"));
        let n = usize::from(body[ACK_FIXED - 1]);
        if n > MAX_ACK_RANGES {
            return Err(WireError::TooManyRanges(n));
        }
        if body.len() != ACK_FIXED + n * ACK_RANGE {
            return Err(WireError::AckLength(body.len(), n));
        }
        Ok(Ack {
            largest: u64_at(0),
            delay_us: u32_at(8),
            received: u64_at(12),
            below: u64_at(20),
            ranges: (0..n)
                .map(|i| {
                    let at = ACK_FIXED + i * ACK_RANGE;
                    (u64_at(at), u32_at(at + 8))
                })
                .collect(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn a_shard_header_byte_for_byte() {
        let h = ShardHeader {
            packet: 0x0102,
            group: 7,
            floor: 6,
            index: 3,
            shape: Shape {
                data: 2,
                parity: 1,
                shard_len: 3,
                len: 5,
            },
        };
        let b = h.encode();
        assert_eq!(
            b,
            [
                1, 2, 1, 3, 0, 0, 0, 0, 0, 0, 1, 2, 0, 0, 0, 0, 0, 0, 0, 7, 0, 0, 0, 0, 0, 0, 0, 6,
                0, 0, 0, 5
            ]
        );
        let mut datagram = b.to_vec();
        datagram.extend_from_slice(&[0xaa; 3 + TAG_LEN]);
        // Index 3 of a 2 + 1 group does not exist.
        assert!(matches!(
            ShardHeader::decode(&datagram),
            Err(WireError::Shape(FecError::IndexOutOfRange {
                index: 3,
                total: 3
            }))
        ));
        datagram[3] = 2;
        assert_eq!(
            ShardHeader::decode(&datagram),
            Ok(ShardHeader { index: 2, ..h })
        );
        assert_eq!(peek(&datagram), Ok((KIND_SHARD, 0x0102)));
    }

    /// A shard datagram of a `len`-byte frame cut as the lane cuts it, with `shard` bytes
    /// after its header (whether or not that is its group's shard length).
    fn datagram(len: usize, max_shard: usize, parity: u8, shard: usize) -> Vec<u8> {
        let h = ShardHeader {
            packet: 9,
            group: 2,
            floor: 0,
            index: 1,
            shape: Shape::for_len(len, max_shard, parity).unwrap(),
        };
        let mut d = h.encode().to_vec();
        d.extend_from_slice(&vec![0; shard + TAG_LEN]);
        d
    }

    #[test]
    fn a_shard_whose_length_is_not_its_groups_is_refused() {
        let mut d = datagram(1000, 400, 1, 333);
        assert_eq!(
            ShardHeader::decode(&d),
            Err(WireError::ShardLength {
                got: 333,
                want: 334
            })
        );
        assert_eq!(ShardHeader::decode(&d[..30]), Err(WireError::Short(30)));
        d[0] = 9;
        assert_eq!(peek(&d), Err(WireError::Kind(9)));
    }

    #[test]
    fn an_ack_byte_for_byte() {
        let ack = Ack {
            largest: 1,
            delay_us: 2,
            received: 3,
            below: 4,
            ranges: vec![(6, 1)],
        };
        let b = ack.encode().unwrap();
        let mut want = vec![0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 2];
        want.extend_from_slice(&[0, 0, 0, 0, 0, 0, 0, 3, 0, 0, 0, 0, 0, 0, 0, 4, 1]);
        want.extend_from_slice(&[0, 0, 0, 0, 0, 0, 0, 6, 0, 0, 0, 1]);
        assert_eq!(b, want);
        assert_eq!(Ack::decode(&b), Ok(ack.clone()));
        assert_eq!(Ack::decode(&b[..40]), Err(WireError::AckLength(40, 1)));
        let header = ack_header(&ack, 5);
        assert_eq!(header, [2, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 5]);
        let mut datagram = header.to_vec();
        datagram.extend_from_slice(&b);
        datagram.extend_from_slice(&[0; TAG_LEN]);
        assert_eq!(datagram_len(&datagram), Ok(datagram.len()));
    }

    #[test]
    fn joined_datagrams_split_by_their_headers() {
        let one = datagram(5000, 1400, 2, 1250);
        assert_eq!(datagram_len(&one), Ok(one.len()));
        let joined = [one.clone(), one.clone()].concat();
        assert_eq!(datagram_len(&joined[one.len()..]), Ok(one.len()));
        assert_eq!(datagram_len(&one[..10]), Err(WireError::Short(10)));
        let n = one.len();
        assert_eq!(datagrams(&joined).collect::<Vec<_>>(), [0..n, n..2 * n]);
        let cut = &joined[..2 * n - 1];
        assert_eq!(
            datagrams(cut).collect::<Vec<_>>(),
            vec![0..n],
            "the cut one is left out"
        );
        assert_eq!(datagram_len(&[7; 40]), Err(WireError::Kind(7)));
        assert_eq!(datagram_len(&[]), Err(WireError::Short(0)));
    }

    proptest! {
        /// Nothing a peer (or anyone) sends makes the decoders panic.
        #[test]
        fn any_bytes_decode_or_fail_cleanly(bytes in proptest::collection::vec(any::<u8>(), 0..600)) {
            let _ = ShardHeader::decode(&bytes);
            let _ = Ack::decode(&bytes);
            let _ = peek(&bytes);
            let _ = datagram_len(&bytes);
        }

        #[test]
        fn acks_round_trip(
            largest in any::<u64>(), delay_us in any::<u32>(), received in any::<u64>(),
            below in any::<u64>(),
            ranges in proptest::collection::vec((any::<u64>(), any::<u32>()), 0..=MAX_ACK_RANGES),
        ) {
            let ack = Ack { largest, delay_us, received, below, ranges };
            prop_assert_eq!(Ack::decode(&ack.encode().unwrap()).unwrap(), ack);
        }
    }
}

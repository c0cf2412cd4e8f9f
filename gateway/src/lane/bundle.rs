//! Several frames in one group: a group's bytes are entries, each a
//! message's length (`u32`, big-endian) and the message.
//!
//! Parity is per group, four shards whatever its size, so a group is worth
//! filling. One stream's frames are 64 KiB, but QEMU's multifd spreads a
//! migration over five connections, each with a fifth of its LAN window, and
//! the pacer lets the lane take frames a few at a time: their frames averaged
//! 29 KB, and parity and headers took 26 % of the wire instead of 8.5 %
//! (docs/BENCHMARKS.md, "The lane"). So the lane gathers the frames the core
//! has ready into groups of up to [`BUNDLE_SHARDS`] full shards.

use std::ops::Range;

/// A group's bytes at most, in full shards, when it carries more than one
/// frame: what a 64 KiB frame takes (47 shards of 1400 bytes).
pub const BUNDLE_SHARDS: usize = 47;

/// An entry's length field.
pub const ENTRY_HEADER: usize = 4;

/// A group's bytes being gathered, and the tokens of the frames in it.
#[derive(Debug)]
pub struct Bundle<T> {
    bytes: Vec<u8>,
    tokens: Vec<T>,
    cap: usize,
}

impl<T> Bundle<T> {
    /// An empty bundle of at most `cap` bytes (one entry alone may be larger).
    pub fn new(cap: usize) -> Self {
        Bundle {
            bytes: Vec::new(),
            tokens: Vec::new(),
            cap,
        }
    }

    /// Whether an entry of a `len`-byte message fits; the first always does.
    pub fn fits(&self, len: usize) -> bool {
        self.tokens.is_empty() || self.bytes.len() + ENTRY_HEADER + len <= self.cap
    }

    /// Appends a message, written by `encode` into the buffer it is given, and its token.
    pub fn push(&mut self, token: T, encode: impl FnOnce(&mut Vec<u8>)) {
        let start = self.bytes.len();
        self.bytes.extend_from_slice(&[0; ENTRY_HEADER]);
        encode(&mut self.bytes);
        let len = u32::try_from(self.bytes.len() - start - ENTRY_HEADER).unwrap_or(u32::MAX);
        self.bytes[start..start + ENTRY_HEADER].copy_from_slice(&len.to_be_bytes());
        self.tokens.push(token);
    }

    pub fn is_empty(&self) -> bool {
        self.tokens.is_empty()
    }

    pub fn bytes(&self) -> &[u8] {
        &self.bytes
    }

    /// Empties it, giving back its bytes and the tokens of what it held.
    pub fn drain(&mut self) -> (Vec<u8>, Vec<T>) {
        (
            std::mem::take(&mut self.bytes),
            std::mem::take(&mut self.tokens),
        )
    }
}

/// A group's bytes did not split into whole entries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("lane group: entry at byte {at} claims {len} bytes, {left} left")]
pub struct BundleError {
    pub at: usize,
    pub len: usize,
    pub left: usize,
}

/// Where each message of a group's bytes lies; a cut-short entry ends it with an error.
pub fn entries(bytes: &[u8]) -> impl Iterator<Item = Result<Range<usize>, BundleError>> + '_ {
    let mut at = 0;
    std::iter::from_fn(move || {
        if at >= bytes.len() {
            return None;
        }
        let left = bytes.len() - at;
        let header: Option<[u8; ENTRY_HEADER]> = bytes
            .get(at..at + ENTRY_HEADER)
            .and_then(|h| h.try_into().ok());
        let len = header.map_or(usize::MAX, |h| u32::from_be_bytes(h) as usize);
        if left < ENTRY_HEADER || left - ENTRY_HEADER < len {
            let e = BundleError {
                at,
                len: len.min(u32::MAX as usize),
                left: left.saturating_sub(ENTRY_HEADER),
            };
            at = bytes.len();
            return Some(Err(e));
        }
        let start = at + ENTRY_HEADER;
        at = start + len;
        Some(Ok(start..at))
    })
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    #[test]
    fn entries_come_back_in_order_and_whole() {
        let mut b = Bundle::new(100);
        assert!(b.fits(1000), "the first entry always fits");
        b.push('a', |out| out.extend_from_slice(b"first"));
        assert!(b.fits(100 - 9 - 4));
        assert!(!b.fits(100 - 9 - 3));
        b.push('b', |out| out.extend_from_slice(b""));
        b.push('c', |out| out.extend_from_slice(b"third"));
        assert_eq!(
            b.bytes(),
            b"\0\0\0\x05first\0\0\0\0\0\0\0\x05third".as_slice()
        );
        let got: Vec<&[u8]> = entries(b.bytes()).map(|r| &b.bytes()[r.unwrap()]).collect();
        assert_eq!(got, [b"first".as_slice(), b"", b"third"]);
        let (bytes, tokens) = b.drain();
        assert_eq!(bytes.len(), 4 + 5 + 4 + 4 + 5);
        assert_eq!(tokens, ['a', 'b', 'c']);
        assert!(b.is_empty() && b.bytes().is_empty());
    }

    #[test]
    fn a_cut_short_entry_is_an_error_and_ends_the_group() {
        let bytes = b"\0\0\0\x02ab\0\0\0\x09abc";
        let got: Vec<_> = entries(bytes).collect();
        assert_eq!(
            got,
            [
                Ok(4..6),
                Err(BundleError {
                    at: 6,
                    len: 9,
                    left: 3
                })
            ]
        );
        assert_eq!(
            entries(b"\0\0").collect::<Vec<_>>(),
            [Err(BundleError {
                at: 0,
                len: u32::MAX as usize,
                left: 0
            })]
        );
    }

    proptest! {
        #[test]
        fn any_bytes_split_into_entries_inside_them_or_fail_cleanly(
            bytes in proptest::collection::vec(any::<u8>(), 0..64),
        ) {
            let mut end = 0;
            for r in entries(&bytes) {
                match r {
                    Ok(r) => {
                        prop_assert!(r.start >= end + ENTRY_HEADER && r.end <= bytes.len());
                        end = r.end;
                    }
                    Err(e) => prop_assert!(e.left < e.len),
                }
            }
        }
    }
}

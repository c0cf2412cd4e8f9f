//! AES-256-GCM for each lane datagram, and the replay window.
//!
//! Unlike a record on a TCP flow, a datagram may be lost, reordered or
//! repeated on the way, so its nonce is explicit: the packet number in its
//! header (`0u32 | packet u64`, one count per direction and key). The header
//! is the associated data. The receiver opens a datagram only if its number
//! is new to a window of the last [`REPLAY_WINDOW`] numbers, and marks it
//! seen only once it authenticated, so a forged datagram moves nothing.
//!
//! Keys come from the control connection's handshake (`lane::keys`); each
//! control connection gives fresh ones, so numbers start again at 0 with a
//! new key and never repeat under one. Usage limits are counted as for
//! records (`crypto::record`): past them the sealer refuses, and the lane
//! waits for the next control connection's keys.

use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM};

use crate::crypto::record::{MAX_BYTES_PER_KEY, TAG_LEN};

/// Packet numbers behind the highest seen that can still arrive (reordered).
pub const REPLAY_WINDOW: u64 = 4096;
/// Datagrams sealed under one key, at most (RFC 9001 §6.6: 2^23 packets for
/// AES-GCM, whatever their size).
pub const MAX_PACKETS_PER_KEY: u64 = 1 << 23;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SealError {
    #[error("lane key used up ({0} datagrams); waiting for new keys")]
    KeyExhausted(u64),
    #[error("lane datagram {0} failed authentication (forged, or a stale key)")]
    Authentication(u64),
    #[error("lane datagram {0} was seen already or is older than the replay window")]
    Replayed(u64),
    #[error("lane datagram too short for its tag")]
    Short,
}

fn key(secret: &[u8; 32]) -> LessSafeKey {
    LessSafeKey::new(UnboundKey::new(&AES_256_GCM, secret).expect("32 bytes is an AES-256 key"))
}

fn nonce(packet: u64) -> Nonce {
    let mut n = [0u8; 12];
    n[4..].copy_from_slice(&packet.to_be_bytes());
    Nonce::assume_unique_for_key(n)
}

/// Seals what one end sends on the lane.
pub struct LaneSealer {
    key: LessSafeKey,
    next: u64,
    bytes: u64,
}

impl std::fmt::Debug for LaneSealer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LaneSealer")
            .field("next", &self.next)
            .finish()
    }
}

impl LaneSealer {
    pub fn new(secret: &[u8; 32]) -> Self {
        LaneSealer {
            key: key(secret),
            next: 0,
            bytes: 0,
        }
    }

    /// The number the next datagram gets; its header must carry it.
    pub fn next_packet(&self) -> Result<u64, SealError> {
        if self.next >= MAX_PACKETS_PER_KEY || self.bytes >= MAX_BYTES_PER_KEY {
            return Err(SealError::KeyExhausted(self.next));
        }
        Ok(self.next)
    }

    /// Appends the datagram `header | seal(body) | tag` to `out`, with the
    /// number from [`LaneSealer::next_packet`] (the header's).
    pub fn seal(
        &mut self,
        header: &[u8],
        body: &[u8],
        out: &mut Vec<u8>,
    ) -> Result<u64, SealError> {
        let packet = self.next_packet()?;
        out.extend_from_slice(header);
        let start = out.len();
        out.extend_from_slice(body);
        let tag = self
            .key
            .seal_in_place_separate_tag(nonce(packet), Aad::from(header), &mut out[start..])
            .map_err(|_| SealError::Authentication(packet))?;
        out.extend_from_slice(tag.as_ref());
        self.next += 1;
        self.bytes += (body.len() + TAG_LEN) as u64;
        Ok(packet)
    }
}

/// Opens what the other end sends on the lane.
pub struct LaneOpener {
    key: LessSafeKey,
    window: ReplayWindow,
}

impl std::fmt::Debug for LaneOpener {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LaneOpener")
            .field("window", &self.window)
            .finish()
    }
}

impl LaneOpener {
    pub fn new(secret: &[u8; 32]) -> Self {
        LaneOpener {
            key: key(secret),
            window: ReplayWindow::default(),
        }
    }

    /// Opens the datagram numbered `packet` (the header's) whose first
    /// `header_len` bytes are its header: the plaintext is left in
    /// `datagram[header_len..]` and its length returned.
    pub fn open(
        &mut self,
        packet: u64,
        header_len: usize,
        datagram: &mut [u8],
    ) -> Result<usize, SealError> {
        if datagram.len() < header_len + TAG_LEN {
            return Err(SealError::Short);
        }
        // Cheap before the AEAD: a repeat costs no decryption.
        if !self.window.is_new(packet) {
            return Err(SealError::Replayed(packet));
        }
        let (header, body) = datagram.split_at_mut(header_len);
        let plain = self
            .key
            .open_in_place(nonce(packet), Aad::from(&*header), body)
            .map_err(|_| SealError::Authentication(packet))?
            .len();
        self.window.mark(packet);
        Ok(plain)
    }
}

/// Which of the last [`REPLAY_WINDOW`] packet numbers were seen.
#[derive(Debug, Clone, Default)]
pub struct ReplayWindow {
    /// One more than the highest number seen (0: none yet).
    top: u64,
    /// Bit `n % REPLAY_WINDOW` is set once number `n` (within the window) was seen.
    seen: Vec<u64>,
}

const WORDS: usize = (REPLAY_WINDOW / 64) as usize;

impl ReplayWindow {
    pub fn is_new(&self, packet: u64) -> bool {
        if packet >= self.top {
            return true;
        }
        if self.top - packet > REPLAY_WINDOW {
            return false;
        }
        let bit = packet % REPLAY_WINDOW;
        self.seen
            .get((bit / 64) as usize)
            .is_none_or(|w| w & (1 << (bit % 64)) == 0)
    }

    pub fn mark(&mut self, packet: u64) {
        if self.seen.is_empty() {
            self.seen = vec![0; WORDS];
        }
        if packet >= self.top {
            // Numbers skipped on the way up were never seen: clear their bits.
            let from = self.top.max(packet.saturating_sub(REPLAY_WINDOW - 1));
            for n in from..packet {
                let bit = n % REPLAY_WINDOW;
                self.seen[(bit / 64) as usize] &= !(1 << (bit % 64));
            }
            self.top = packet + 1;
        }
        let bit = packet % REPLAY_WINDOW;
        self.seen[(bit / 64) as usize] |= 1 << (bit % 64);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn sealed(sealer: &mut LaneSealer, body: &[u8]) -> (u64, Vec<u8>) {
        let packet = sealer.next_packet().unwrap();
        let header = packet.to_be_bytes();
        let mut out = Vec::new();
        assert_eq!(sealer.seal(&header, body, &mut out), Ok(packet));
        (packet, out)
    }

    #[test]
    fn a_datagram_opens_once_and_a_forgery_or_repeat_does_not() {
        let mut sealer = LaneSealer::new(&[1; 32]);
        let mut opener = LaneOpener::new(&[1; 32]);
        let (p0, d0) = sealed(&mut sealer, b"hello");
        let (p1, d1) = sealed(&mut sealer, b"world");
        assert_eq!((p0, p1), (0, 1));
        // Reordered: 1 before 0.
        let mut x = d1.clone();
        assert_eq!(opener.open(1, 8, &mut x), Ok(5));
        assert_eq!(&x[8..13], b"world");
        let mut x = d0.clone();
        assert_eq!(opener.open(0, 8, &mut x), Ok(5));
        let mut x = d0.clone();
        assert_eq!(opener.open(0, 8, &mut x), Err(SealError::Replayed(0)));
        // A flipped bit, in the header or the body, fails; and does not burn its number.
        let (p2, d2) = sealed(&mut sealer, b"again");
        for at in [0, 9] {
            let mut x = d2.clone();
            x[at] ^= 1;
            assert_eq!(
                opener.open(p2, 8, &mut x),
                Err(SealError::Authentication(2))
            );
        }
        let mut x = d2.clone();
        assert_eq!(opener.open(p2, 8, &mut x), Ok(5));
        // Another key's datagrams fail.
        let mut other = LaneOpener::new(&[2; 32]);
        let mut x = d0;
        assert_eq!(other.open(0, 8, &mut x), Err(SealError::Authentication(0)));
        assert_eq!(other.open(0, 8, &mut [0; 20]), Err(SealError::Short));
    }

    #[test]
    fn a_used_up_key_refuses() {
        let mut sealer = LaneSealer::new(&[1; 32]);
        sealer.next = MAX_PACKETS_PER_KEY;
        assert_eq!(
            sealer.seal(&[0; 8], b"x", &mut Vec::new()),
            Err(SealError::KeyExhausted(MAX_PACKETS_PER_KEY))
        );
    }

    #[test]
    fn the_window_forgets_what_it_slid_past() {
        let mut w = ReplayWindow::default();
        w.mark(10);
        assert!(!w.is_new(10));
        assert!(w.is_new(9));
        w.mark(10 + REPLAY_WINDOW);
        assert!(!w.is_new(9), "older than the window");
        assert!(w.is_new(11), "inside the window, never seen");
        assert!(!w.is_new(10), "exactly a window behind: refused");
        w.mark(11);
        assert!(!w.is_new(11));
    }

    proptest! {
        /// Against a set of everything seen: a number is new exactly when it was never seen
        /// and is within the window of the highest.
        #[test]
        fn the_window_matches_a_model(steps in proptest::collection::vec(0u64..20_000, 1..400)) {
            let mut w = ReplayWindow::default();
            let mut seen = std::collections::BTreeSet::new();
            for n in steps {
                let top = seen.iter().next_back().map_or(0, |t| t + 1);
                let want = !seen.contains(&n) && (n >= top || top - n <= REPLAY_WINDOW);
                prop_assert_eq!(w.is_new(n), want, "packet {}", n);
                if want {
                    w.mark(n);
                    seen.insert(n);
                }
            }
        }
    }
}

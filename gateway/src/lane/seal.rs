//! AES-256-GCM for each lane datagram, its key updates, and the replay window.
//!
//! Unlike a record on a TCP flow, a datagram may be lost, reordered or
//! repeated on the way, so its nonce is explicit: the packet number in its
//! header (`0u32 | packet u64`, one count per direction). The header is the
//! associated data. The receiver opens a datagram only if its number is new
//! to a window of the last [`REPLAY_WINDOW`] numbers, and marks it seen only
//! once it authenticated, so a forged datagram moves nothing.
//!
//! Keys come from the control connection's handshake ([`super::LaneKeys`]);
//! each control connection gives fresh ones. AES-GCM may seal 2^23 packets
//! under one key (RFC 9001 §6.6), 100 s of a 1 Gbit/s lane, so the key
//! changes with the packet number: datagrams `e × 2^23 ..` are sealed with
//! key `e`, each key HKDF-SHA256 of the one before ("lmas lane key update").
//! The receiver keeps the key before the current one for late datagrams and
//! derives the next when one of its datagrams comes; old keys cannot be
//! derived from new ones.

use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM};
use ring::hkdf;

use crate::crypto::record::TAG_LEN;

/// Packet numbers behind the highest seen that can still arrive (reordered).
pub const REPLAY_WINDOW: u64 = 4096;
/// Datagrams sealed under one key (RFC 9001 §6.6: 2^23 packets for AES-GCM,
/// whatever their size; ours are at most 1.5 KB, 2^33.5 bytes a key).
pub const PACKETS_PER_KEY: u64 = 1 << 23;
/// Datagrams a lane sends at most (2^17 keys: four months at 100,000 a
/// second); then it waits for the next control connection's keys.
pub const MAX_PACKETS: u64 = 1 << 40;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SealError {
    #[error("lane keys used up ({0} datagrams); waiting for new keys")]
    KeyExhausted(u64),
    #[error("lane datagram {0} failed authentication (forged, or a stale key)")]
    Authentication(u64),
    #[error("lane datagram {0} was seen already or is older than the replay window")]
    Replayed(u64),
    #[error("lane datagram too short for its tag")]
    Short,
}

fn nonce(packet: u64) -> Nonce {
    let mut n = [0u8; 12];
    n[4..].copy_from_slice(&packet.to_be_bytes());
    Nonce::assume_unique_for_key(n)
}

/// One key of the sequence: its number and secret.
struct EpochKey {
    epoch: u64,
    secret: [u8; 32],
    key: LessSafeKey,
}

impl EpochKey {
    fn first(secret: &[u8; 32]) -> Self {
        EpochKey {
            epoch: 0,
            secret: *secret,
            key: LessSafeKey::new(
                UnboundKey::new(&AES_256_GCM, secret).expect("32 bytes is an AES-256 key"),
            ),
        }
    }

    /// The key after this one.
    fn next(&self) -> Self {
        let prk = hkdf::Salt::new(hkdf::HKDF_SHA256, &[]).extract(&self.secret);
        let mut secret = [0u8; 32];
        prk.expand(&[b"lmas lane key update"], hkdf::HKDF_SHA256)
            .and_then(|okm| okm.fill(&mut secret))
            .expect("32 bytes is a valid HKDF-SHA256 output length");
        EpochKey {
            epoch: self.epoch + 1,
            ..EpochKey::first(&secret)
        }
    }
}

fn epoch(packet: u64) -> u64 {
    packet / PACKETS_PER_KEY
}

/// Seals what one end sends on the lane.
pub struct LaneSealer {
    key: EpochKey,
    next: u64,
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
            key: EpochKey::first(secret),
            next: 0,
        }
    }

    /// The number the next datagram gets; its header must carry it.
    pub fn next_packet(&self) -> Result<u64, SealError> {
        if self.next >= MAX_PACKETS {
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
        if epoch(packet) != self.key.epoch {
            self.key = self.key.next();
        }
        out.extend_from_slice(header);
        let start = out.len();
        out.extend_from_slice(body);
        let tag = self
            .key
            .key
            .seal_in_place_separate_tag(nonce(packet), Aad::from(header), &mut out[start..])
            .map_err(|_| SealError::Authentication(packet))?;
        out.extend_from_slice(tag.as_ref());
        self.next += 1;
        Ok(packet)
    }
}

/// Opens what the other end sends on the lane.
pub struct LaneOpener {
    current: EpochKey,
    /// The key before `current`, for datagrams of its last stretch that come late.
    previous: Option<EpochKey>,
    window: ReplayWindow,
}

impl std::fmt::Debug for LaneOpener {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LaneOpener")
            .field("epoch", &self.current.epoch)
            .field("window", &self.window)
            .finish()
    }
}

impl LaneOpener {
    pub fn new(secret: &[u8; 32]) -> Self {
        LaneOpener {
            current: EpochKey::first(secret),
            previous: None,
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
        let e = epoch(packet);
        let next = (e == self.current.epoch + 1).then(|| self.current.next());
        let key = match (&next, &self.previous) {
            (Some(k), _) => &k.key,
            _ if e == self.current.epoch => &self.current.key,
            (None, Some(p)) if p.epoch == e => &p.key,
            _ => return Err(SealError::Authentication(packet)),
        };
        let (header, body) = datagram.split_at_mut(header_len);
        let plain = key
            .open_in_place(nonce(packet), Aad::from(&*header), body)
            .map_err(|_| SealError::Authentication(packet))?
            .len();
        if let Some(k) = next {
            // The peer moved on: its datagrams authenticate under the next key.
            self.previous = Some(std::mem::replace(&mut self.current, k));
        }
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
    fn a_lane_past_its_last_key_refuses() {
        let mut sealer = LaneSealer::new(&[1; 32]);
        sealer.next = MAX_PACKETS;
        assert_eq!(
            sealer.seal(&[0; 8], b"x", &mut Vec::new()),
            Err(SealError::KeyExhausted(MAX_PACKETS))
        );
    }

    /// Every 2^23 datagrams the key changes; both ends follow, a late datagram of the key
    /// before still opens, and one sealed two keys ahead (or a forgery claiming to be) does
    /// not.
    #[test]
    fn keys_change_with_the_packet_number_and_both_ends_follow() {
        let mut sealer = LaneSealer::new(&[1; 32]);
        let mut opener = LaneOpener::new(&[1; 32]);
        sealer.next = PACKETS_PER_KEY - 2;
        let (p1, d1) = sealed(&mut sealer, b"old");
        let (p2, d2) = sealed(&mut sealer, b"old, late");
        let (p3, d3) = sealed(&mut sealer, b"new");
        assert_eq!((p2, p3), (PACKETS_PER_KEY - 1, PACKETS_PER_KEY));
        assert_eq!(sealer.key.epoch, 1);
        let mut x = d1;
        assert_eq!(opener.open(p1, 8, &mut x), Ok(3));
        let mut x = d3;
        assert_eq!(opener.open(p3, 8, &mut x), Ok(3));
        assert_eq!(opener.current.epoch, 1);
        let mut x = d2;
        assert_eq!(
            opener.open(p2, 8, &mut x),
            Ok(9),
            "late, under the key before"
        );
        // A datagram of the new stretch sealed under the old key fails.
        let stale = EpochKey::first(&[1; 32]);
        let p4 = p3 + 1;
        let header = p4.to_be_bytes();
        let mut body = b"stale".to_vec();
        let tag = stale
            .key
            .seal_in_place_separate_tag(nonce(p4), Aad::from(&header), &mut body)
            .unwrap();
        let mut x = [&header[..], &body, tag.as_ref()].concat();
        assert_eq!(
            opener.open(p4, 8, &mut x),
            Err(SealError::Authentication(p4))
        );
        let mut far = LaneSealer::new(&[1; 32]);
        far.next = 3 * PACKETS_PER_KEY;
        let (pf, df) = sealed(&mut far, b"far");
        let mut x = df;
        assert_eq!(
            opener.open(pf, 8, &mut x),
            Err(SealError::Authentication(pf))
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

//! AES-256-GCM records on one TCP connection.
//!
//! ```text
//! record = length u32 (ciphertext + tag bytes) | ciphertext | tag (16)
//! nonce  = 0u32 | counter u64        (big-endian; one counter per direction)
//! aad    = the 4 length bytes
//! ```
//!
//! Each direction of each connection has its own key from the handshake, so
//! nonces never repeat across flows. The counter is implicit: TCP delivers
//! records in order, so a replayed, dropped, reordered or forged record fails
//! authentication and the connection is torn down (the session core resends
//! what that flow carried). The length is authenticated as AAD, so a
//! truncated or re-framed record fails too.
//!
//! Usage limit: RFC 8446 §5.5 bounds AES-GCM to about 2^24.5 full 16 KiB
//! records per key, that is 2^34.5 blocks of 16 bytes (an attacker's advantage
//! stays below 2^-60). Our records are up to 8 times larger (frames of up to
//! 128 KiB), so the limit is counted in bytes as well as in records: a key
//! seals at most [`MAX_RECORDS_PER_KEY`] records or [`MAX_BYTES_PER_KEY`]
//! bytes and then refuses. Rekeying before that point is the caller's job
//! (see `needs_rekey`).

use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM};
use ring::hkdf;

pub const TAG_LEN: usize = 16;
pub const RECORD_HEADER_LEN: usize = 4;
/// Largest record body (ciphertext + tag) accepted: a 64 KiB frame plus
/// headers fits with room; anything larger is a protocol violation.
pub const MAX_RECORD_LEN: usize = 256 * 1024;
/// Hard limit on records sealed or opened under one key.
pub const MAX_RECORDS_PER_KEY: u64 = 1 << 23;
/// Soft limit: ask for a rekey well before the hard one.
pub const REKEY_AFTER_RECORDS: u64 = 1 << 22;
/// Hard limit on bytes (ciphertext and tags) under one key: 2^34 blocks, below
/// AES-GCM's budget of 2^34.5.
pub const MAX_BYTES_PER_KEY: u64 = 1 << 38;
/// Soft limit in bytes, half the hard one.
pub const REKEY_AFTER_BYTES: u64 = 1 << 37;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RecordError {
    #[error("record length {0} out of range (16..={MAX_RECORD_LEN})")]
    BadLength(usize),
    #[error("record failed authentication (forged, replayed, reordered or wrong key)")]
    Authentication,
    #[error("key usage limit reached without a rekey")]
    KeyExhausted,
}

/// One direction's key, its nonce counter, and the secret it came from
/// (kept so the key can be ratcheted forward on a key update).
struct KeyState {
    secret: [u8; 32],
    key: LessSafeKey,
    counter: u64,
    /// Bytes sealed or opened under this key.
    bytes: u64,
}

impl KeyState {
    fn new(secret: &[u8; 32]) -> Self {
        KeyState {
            secret: *secret,
            key: LessSafeKey::new(
                UnboundKey::new(&AES_256_GCM, secret).expect("32 bytes is an AES-256 key"),
            ),
            counter: 0,
            bytes: 0,
        }
    }

    /// The nonce for the next record of `len` bytes, or an error past the
    /// usage limit.
    fn nonce(&self, len: usize) -> Result<Nonce, RecordError> {
        if self.counter >= MAX_RECORDS_PER_KEY
            || self.bytes.saturating_add(len as u64) > MAX_BYTES_PER_KEY
        {
            return Err(RecordError::KeyExhausted);
        }
        let mut n = [0u8; 12];
        n[4..].copy_from_slice(&self.counter.to_be_bytes());
        Ok(Nonce::assume_unique_for_key(n))
    }

    /// Replaces the key by HKDF-SHA256(secret, "lmas key update") and
    /// restarts the counter (as TLS 1.3's KeyUpdate does): old keys cannot be
    /// computed from new ones.
    fn ratchet(&mut self) {
        let prk = hkdf::Salt::new(hkdf::HKDF_SHA256, &[]).extract(&self.secret);
        let mut next = [0u8; 32];
        prk.expand(&[b"lmas key update"], hkdf::HKDF_SHA256)
            .and_then(|okm| okm.fill(&mut next))
            .expect("32 bytes is a valid HKDF-SHA256 output length");
        *self = KeyState::new(&next);
    }
}

/// Seals outgoing records for one direction of one connection.
pub struct RecordSealer {
    state: KeyState,
}

impl RecordSealer {
    pub fn new(key_bytes: &[u8; 32]) -> Self {
        RecordSealer {
            state: KeyState::new(key_bytes),
        }
    }

    /// Seals the record that starts at `buf[start..]`: the caller reserved
    /// [`RECORD_HEADER_LEN`] bytes at `start` and put the plaintext after
    /// them. Writes the length header and appends the tag, so on return
    /// `buf[start..]` is the whole record, ready to send. Sealing in place at
    /// the end of an output buffer lets many records share one write.
    ///
    /// # Panics
    /// If `buf[start..]` is shorter than the header (a caller bug).
    pub fn seal(&mut self, buf: &mut Vec<u8>, start: usize) -> Result<(), RecordError> {
        assert!(
            buf.len() >= start + RECORD_HEADER_LEN,
            "no room for the header"
        );
        let body_len = buf.len() - start - RECORD_HEADER_LEN + TAG_LEN;
        if body_len > MAX_RECORD_LEN {
            return Err(RecordError::BadLength(body_len));
        }
        let nonce = self.state.nonce(body_len)?;
        let header = (body_len as u32).to_be_bytes();
        buf[start..start + RECORD_HEADER_LEN].copy_from_slice(&header);
        let tag = self
            .state
            .key
            .seal_in_place_separate_tag(
                nonce,
                Aad::from(header),
                &mut buf[start + RECORD_HEADER_LEN..],
            )
            .map_err(|_| RecordError::Authentication)?;
        buf.extend_from_slice(tag.as_ref());
        self.state.counter += 1;
        self.state.bytes += body_len as u64;
        Ok(())
    }

    /// True when the key has sealed enough records or bytes that it should be
    /// updated.
    pub fn needs_rekey(&self) -> bool {
        self.state.counter >= REKEY_AFTER_RECORDS || self.state.bytes >= REKEY_AFTER_BYTES
    }

    /// Moves to the next key. Call right after sealing a key-update message,
    /// so the peer switches at the same record.
    pub fn ratchet(&mut self) {
        self.state.ratchet();
    }
}

/// Opens incoming records for one direction of one connection.
pub struct RecordOpener {
    state: KeyState,
}

impl RecordOpener {
    pub fn new(key_bytes: &[u8; 32]) -> Self {
        RecordOpener {
            state: KeyState::new(key_bytes),
        }
    }

    /// Validates a length header read from the wire; returns the body length.
    pub fn body_len(header: [u8; RECORD_HEADER_LEN]) -> Result<usize, RecordError> {
        let len = u32::from_be_bytes(header) as usize;
        if !(TAG_LEN..=MAX_RECORD_LEN).contains(&len) {
            return Err(RecordError::BadLength(len));
        }
        Ok(len)
    }

    /// Decrypts `body` (ciphertext + tag) in place; on success `body` is
    /// truncated to the plaintext.
    pub fn open(
        &mut self,
        header: [u8; RECORD_HEADER_LEN],
        body: &mut bytes::BytesMut,
    ) -> Result<(), RecordError> {
        let nonce = self.state.nonce(body.len())?;
        let sealed_len = body.len() as u64;
        let plain_len = self
            .state
            .key
            .open_in_place(nonce, Aad::from(header), &mut body[..])
            .map_err(|_| RecordError::Authentication)?
            .len();
        body.truncate(plain_len);
        self.state.counter += 1;
        self.state.bytes += sealed_len;
        Ok(())
    }

    /// Moves to the next key, after opening the peer's key-update message.
    pub fn ratchet(&mut self) {
        self.state.ratchet();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::BytesMut;

    fn sealed(sealer: &mut RecordSealer, plain: &[u8]) -> Vec<u8> {
        let mut buf = vec![0u8; RECORD_HEADER_LEN];
        buf.extend_from_slice(plain);
        sealer.seal(&mut buf, 0).unwrap();
        buf
    }

    fn open(opener: &mut RecordOpener, record: &[u8]) -> Result<Vec<u8>, RecordError> {
        let header: [u8; 4] = record[..4].try_into().unwrap();
        let len = RecordOpener::body_len(header)?;
        if len != record.len() - 4 {
            return Err(RecordError::BadLength(len));
        }
        let mut body = BytesMut::from(&record[4..]);
        opener.open(header, &mut body)?;
        Ok(body.to_vec())
    }

    #[test]
    fn seal_open_round_trip() {
        let k = [7u8; 32];
        let (mut s, mut o) = (RecordSealer::new(&k), RecordOpener::new(&k));
        for msg in [&b""[..], b"hello", &[0xAB; 70_000]] {
            let rec = sealed(&mut s, msg);
            assert_eq!(rec.len(), 4 + msg.len() + TAG_LEN);
            assert_eq!(open(&mut o, &rec).unwrap(), msg);
        }
    }

    #[test]
    fn tampering_anywhere_is_rejected() {
        let k = [7u8; 32];
        let rec = sealed(&mut RecordSealer::new(&k), b"frame header and payload");
        for i in 0..rec.len() {
            let mut bad = rec.clone();
            bad[i] ^= 0x01;
            assert!(open(&mut RecordOpener::new(&k), &bad).is_err(), "byte {i}");
        }
    }

    #[test]
    fn wrong_key_is_rejected() {
        let rec = sealed(&mut RecordSealer::new(&[1; 32]), b"x");
        assert_eq!(
            open(&mut RecordOpener::new(&[2; 32]), &rec),
            Err(RecordError::Authentication)
        );
    }

    #[test]
    fn replayed_and_reordered_records_are_rejected() {
        let k = [3u8; 32];
        let mut s = RecordSealer::new(&k);
        let r0 = sealed(&mut s, b"zero");
        let r1 = sealed(&mut s, b"one");
        let mut o = RecordOpener::new(&k);
        open(&mut o, &r0).unwrap();
        assert_eq!(
            open(&mut o, &r0),
            Err(RecordError::Authentication),
            "replay"
        );
        let mut o = RecordOpener::new(&k);
        assert_eq!(
            open(&mut o, &r1),
            Err(RecordError::Authentication),
            "reorder"
        );
    }

    /// The most one key protects, before a rekey is due and at its hard limit, stays within
    /// AES-GCM's budget of 2^34.5 blocks (RFC 8446 §5.5) at the largest records the config
    /// allows (`limits.frame_bytes` up to 128 KiB). Counting records only, 2^22 records of
    /// 128 KiB came to 2^39 bytes: over the budget.
    #[test]
    fn a_key_stays_within_the_aes_gcm_budget_at_the_largest_frames() {
        let budget = 2f64.powf(34.5) * 16.0;
        let record = (128 * 1024 + 64 + TAG_LEN) as f64;
        let due = (REKEY_AFTER_RECORDS as f64 * record).min(REKEY_AFTER_BYTES as f64);
        let hard =
            (MAX_RECORDS_PER_KEY as f64 * MAX_RECORD_LEN as f64).min(MAX_BYTES_PER_KEY as f64);
        assert!(due <= budget / 2.0, "rekey due after {due} bytes");
        assert!(hard <= budget, "hard limit {hard} bytes");
    }

    #[test]
    fn the_byte_limit_asks_for_a_rekey_then_refuses() {
        let k = [5u8; 32];
        let (mut s, mut o) = (RecordSealer::new(&k), RecordOpener::new(&k));
        // As if this key had already carried nearly its budget.
        s.state.bytes = REKEY_AFTER_BYTES - 10;
        o.state.bytes = REKEY_AFTER_BYTES - 10;
        assert!(!s.needs_rekey());
        let rec = sealed(&mut s, b"over the soft limit");
        assert!(s.needs_rekey(), "soft limit in bytes");
        open(&mut o, &rec).unwrap();
        s.state.bytes = MAX_BYTES_PER_KEY - 30;
        o.state.bytes = MAX_BYTES_PER_KEY - 30;
        let mut buf = vec![0u8; RECORD_HEADER_LEN];
        buf.extend_from_slice(b"past the hard limit");
        assert_eq!(s.seal(&mut buf, 0), Err(RecordError::KeyExhausted));
        let rec = sealed(&mut RecordSealer::new(&k), b"past the hard limit");
        assert_eq!(open(&mut o, &rec), Err(RecordError::KeyExhausted));
        // A key update starts the count again.
        s.ratchet();
        assert!(!s.needs_rekey());
    }

    #[test]
    fn key_updates_ratchet_both_ends_in_step() {
        let k = [9u8; 32];
        let (mut s, mut o) = (RecordSealer::new(&k), RecordOpener::new(&k));
        let before = sealed(&mut s, b"old key");
        s.ratchet();
        let after = sealed(&mut s, b"new key");
        assert_eq!(open(&mut o, &before).unwrap(), b"old key");
        // Not yet ratcheted: the new-key record does not open.
        let mut stale = RecordOpener::new(&k);
        open(&mut stale, &before).unwrap();
        assert_eq!(open(&mut stale, &after), Err(RecordError::Authentication));
        o.ratchet();
        assert_eq!(open(&mut o, &after).unwrap(), b"new key");
    }

    #[test]
    fn absurd_lengths_are_rejected_before_reading() {
        assert!(RecordOpener::body_len([0xFF; 4]).is_err());
        assert!(RecordOpener::body_len([0, 0, 0, 3]).is_err());
    }
}

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
//! records per key; our records are up to 4 times larger, so a key seals at
//! most [`MAX_RECORDS_PER_KEY`] records and then refuses. Rekeying before that
//! point is the caller's job (see `needs_rekey`).

use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM};

pub const TAG_LEN: usize = 16;
pub const RECORD_HEADER_LEN: usize = 4;
/// Largest record body (ciphertext + tag) accepted: a 64 KiB frame plus
/// headers fits with room; anything larger is a protocol violation.
pub const MAX_RECORD_LEN: usize = 256 * 1024;
/// Hard limit on records sealed or opened under one key.
pub const MAX_RECORDS_PER_KEY: u64 = 1 << 23;
/// Soft limit: ask for a rekey well before the hard one.
pub const REKEY_AFTER_RECORDS: u64 = 1 << 22;

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

fn nonce(counter: u64) -> Nonce {
    let mut n = [0u8; 12];
    n[4..].copy_from_slice(&counter.to_be_bytes());
    Nonce::assume_unique_for_key(n)
}

fn key(bytes: &[u8; 32]) -> LessSafeKey {
    LessSafeKey::new(UnboundKey::new(&AES_256_GCM, bytes).expect("32 bytes is an AES-256 key"))
}

/// Seals outgoing records for one direction of one connection.
pub struct RecordSealer {
    key: LessSafeKey,
    counter: u64,
}

impl RecordSealer {
    pub fn new(key_bytes: &[u8; 32]) -> Self {
        RecordSealer {
            key: key(key_bytes),
            counter: 0,
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
        if self.counter >= MAX_RECORDS_PER_KEY {
            return Err(RecordError::KeyExhausted);
        }
        let header = (body_len as u32).to_be_bytes();
        buf[start..start + RECORD_HEADER_LEN].copy_from_slice(&header);
        let tag = self
            .key
            .seal_in_place_separate_tag(
                nonce(self.counter),
                Aad::from(header),
                &mut buf[start + RECORD_HEADER_LEN..],
            )
            .map_err(|_| RecordError::Authentication)?;
        buf.extend_from_slice(tag.as_ref());
        self.counter += 1;
        Ok(())
    }

    pub fn needs_rekey(&self) -> bool {
        self.counter >= REKEY_AFTER_RECORDS
    }
}

/// Opens incoming records for one direction of one connection.
pub struct RecordOpener {
    key: LessSafeKey,
    counter: u64,
}

impl RecordOpener {
    pub fn new(key_bytes: &[u8; 32]) -> Self {
        RecordOpener {
            key: key(key_bytes),
            counter: 0,
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
        if self.counter >= MAX_RECORDS_PER_KEY {
            return Err(RecordError::KeyExhausted);
        }
        let plain_len = self
            .key
            .open_in_place(nonce(self.counter), Aad::from(header), &mut body[..])
            .map_err(|_| RecordError::Authentication)?
            .len();
        body.truncate(plain_len);
        self.counter += 1;
        Ok(())
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

    #[test]
    fn absurd_lengths_are_rejected_before_reading() {
        assert!(RecordOpener::body_len([0xFF; 4]).is_err());
        assert!(RecordOpener::body_len([0, 0, 0, 3]).is_err());
    }
}

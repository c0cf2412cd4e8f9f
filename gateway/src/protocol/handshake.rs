//! The clear-text prelude and the length-prefixed Noise handshake messages.
//!
//! ```text
//! initiator -> responder:  "LMAS" | version u8 | flags u8 | len u16 | noise message 1
//! responder -> initiator:  len u16 | noise message 2
//! ```
//!
//! The 6-byte prelude is also the Noise prologue, so a tampered version or
//! flag byte makes the handshake fail. It exists so that a responder can name
//! a version mismatch or a non-LMAS client in one clear log line before doing
//! any cryptography.

use super::codec::{DecodeError, Reader};

pub const MAGIC: [u8; 4] = *b"LMAS";
pub const PRELUDE_LEN: usize = 6;
/// Noise messages are at most 65535 bytes by the spec; ours are < 200.
pub const MAX_NOISE_MESSAGE: usize = 1024;

/// Flag bit: the initiator mixes a pre-shared key into the handshake.
pub const FLAG_PSK: u8 = 0x01;
/// Flag bit: this connection is a data flow (else the control connection).
pub const FLAG_DATA_FLOW: u8 = 0x02;
const KNOWN_FLAGS: u8 = FLAG_PSK | FLAG_DATA_FLOW;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Prelude {
    pub version: u8,
    pub flags: u8,
}

impl Prelude {
    pub fn encode(&self) -> [u8; PRELUDE_LEN] {
        [
            MAGIC[0],
            MAGIC[1],
            MAGIC[2],
            MAGIC[3],
            self.version,
            self.flags,
        ]
    }

    /// Parses the prelude. The version is returned as-is: the caller decides
    /// whether it speaks it, so it can report the mismatch.
    pub fn decode(bytes: &[u8; PRELUDE_LEN]) -> Result<Prelude, DecodeError> {
        let mut r = Reader::new(bytes);
        if r.array::<4>()? != MAGIC {
            return Err(DecodeError::Invalid {
                field: "magic",
                why: "not an LMAS gateway",
            });
        }
        let version = r.u8()?;
        let flags = r.u8()?;
        if flags & !KNOWN_FLAGS != 0 {
            return Err(DecodeError::Invalid {
                field: "flags",
                why: "unknown flag bits",
            });
        }
        Ok(Prelude { version, flags })
    }

    pub fn psk(&self) -> bool {
        self.flags & FLAG_PSK != 0
    }

    pub fn data_flow(&self) -> bool {
        self.flags & FLAG_DATA_FLOW != 0
    }
}

/// Which of a gateway's TCP lcores (shards) a WAN connection belongs to. A DPDK gateway with
/// N TCP lcores runs N independent sub-tunnels, one per lcore; each connection says in its
/// handshake which one it is for, so that both ends agree (see `dpdk::steer`). A gateway with
/// one shard (every kernel gateway) sends nothing, and its handshakes are as before.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shard {
    pub index: u8,
    pub count: u8,
}

impl Shard {
    pub const ONE: Shard = Shard { index: 0, count: 1 };

    /// Shard `index` of `count`; `None` unless `index < count`.
    pub fn new(index: u8, count: u8) -> Option<Shard> {
        (index < count).then_some(Shard { index, count })
    }
}

impl std::fmt::Display for Shard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "shard {} of {}", self.index, self.count)
    }
}

/// Checks a handshake message length read from the wire.
pub fn check_noise_len(len: u16) -> Result<usize, DecodeError> {
    let len = len as usize;
    if len == 0 || len > MAX_NOISE_MESSAGE {
        return Err(DecodeError::Invalid {
            field: "handshake length",
            why: "must be 1..=1024",
        });
    }
    Ok(len)
}

/// `prefix | len u16 | noise`: how both handshake messages go on the wire
/// (the prefix is the prelude for message 1, empty for message 2).
pub fn frame_noise(prefix: &[u8], noise: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(prefix.len() + 2 + noise.len());
    out.extend_from_slice(prefix);
    out.extend_from_slice(&(noise.len() as u16).to_be_bytes());
    out.extend_from_slice(noise);
    out
}

/// Parses `len u16 | noise` at the start of `buf`, for readers that get
/// bytes in pieces: `Ok(None)` until the whole message is there, then the
/// message and the bytes it took.
pub fn parse_noise(buf: &[u8]) -> Result<Option<(&[u8], usize)>, DecodeError> {
    let Some(len) = buf.get(..2) else {
        return Ok(None);
    };
    let len = check_noise_len(u16::from_be_bytes([len[0], len[1]]))?;
    Ok(buf.get(2..2 + len).map(|m| (m, 2 + len)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prelude_bytes() {
        let p = Prelude {
            version: 1,
            flags: FLAG_DATA_FLOW,
        };
        assert_eq!(p.encode(), *b"LMAS\x01\x02");
        assert_eq!(Prelude::decode(&p.encode()).unwrap(), p);
    }

    #[test]
    fn noise_framing_round_trips_in_pieces() {
        let wire = frame_noise(b"LMAS\x01\x00", &[9; 48]);
        assert_eq!(&wire[..8], b"LMAS\x01\x00\x00\x30");
        let body = &wire[PRELUDE_LEN..];
        for cut in 0..body.len() {
            assert_eq!(parse_noise(&body[..cut]).unwrap(), None, "cut {cut}");
        }
        assert_eq!(parse_noise(body).unwrap(), Some((&[9u8; 48][..], 50)));
        assert!(parse_noise(&[0, 0]).is_err(), "empty message");
        assert!(parse_noise(&[0xff, 0xff]).is_err(), "oversized message");
    }

    #[test]
    fn prelude_rejects_garbage() {
        assert!(Prelude::decode(b"GET / ").is_err());
        assert!(Prelude::decode(b"LMAS\x01\x80").is_err());
    }
}

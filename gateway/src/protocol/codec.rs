//! Bounded reader and writer helpers for the wire format.
//!
//! Decoding goes through [`Reader`], which never indexes raw slices: every
//! `take` is checked, so a truncated or hostile message becomes a
//! [`DecodeError`] instead of a panic. Trailing bytes after a complete message
//! are an error too (see [`Reader::finish`]).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

/// Why a message could not be decoded. Always the peer's fault (or line noise).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DecodeError {
    #[error("message truncated: needed {needed} more bytes")]
    Truncated { needed: usize },
    #[error("{0} trailing bytes after the message")]
    TrailingBytes(usize),
    #[error("unknown message type 0x{0:02x}")]
    UnknownType(u8),
    #[error("invalid {field}: {why}")]
    Invalid {
        field: &'static str,
        why: &'static str,
    },
}

/// A cursor over an input buffer; each read consumes bytes or fails.
pub struct Reader<'a> {
    buf: &'a [u8],
}

impl<'a> Reader<'a> {
    pub fn new(buf: &'a [u8]) -> Self {
        Reader { buf }
    }

    pub fn take(&mut self, n: usize) -> Result<&'a [u8], DecodeError> {
        if self.buf.len() < n {
            return Err(DecodeError::Truncated {
                needed: n - self.buf.len(),
            });
        }
        let (head, tail) = self.buf.split_at(n);
        self.buf = tail;
        Ok(head)
    }

    pub fn array<const N: usize>(&mut self) -> Result<[u8; N], DecodeError> {
        let mut out = [0u8; N];
        out.copy_from_slice(self.take(N)?);
        Ok(out)
    }

    pub fn u8(&mut self) -> Result<u8, DecodeError> {
        Ok(self.array::<1>()?[0])
    }

    pub fn u16(&mut self) -> Result<u16, DecodeError> {
        Ok(u16::from_be_bytes(self.array()?))
    }

    pub fn u32(&mut self) -> Result<u32, DecodeError> {
        Ok(u32::from_be_bytes(self.array()?))
    }

    pub fn u64(&mut self) -> Result<u64, DecodeError> {
        Ok(u64::from_be_bytes(self.array()?))
    }

    /// A string prefixed by its u8 length; must be UTF-8.
    pub fn short_str(&mut self, field: &'static str) -> Result<String, DecodeError> {
        let len = self.u8()? as usize;
        let bytes = self.take(len)?;
        String::from_utf8(bytes.to_vec()).map_err(|_| DecodeError::Invalid {
            field,
            why: "not UTF-8",
        })
    }

    /// Socket address: family (4 or 6), address bytes, port.
    pub fn socket_addr(&mut self) -> Result<SocketAddr, DecodeError> {
        let ip = match self.u8()? {
            4 => IpAddr::V4(Ipv4Addr::from(self.array::<4>()?)),
            6 => IpAddr::V6(Ipv6Addr::from(self.array::<16>()?)),
            _ => {
                return Err(DecodeError::Invalid {
                    field: "address family",
                    why: "must be 4 or 6",
                })
            }
        };
        Ok(SocketAddr::new(ip, self.u16()?))
    }

    pub fn remaining(&self) -> usize {
        self.buf.len()
    }

    /// Succeeds only if the whole input was consumed.
    pub fn finish(self) -> Result<(), DecodeError> {
        match self.buf.len() {
            0 => Ok(()),
            n => Err(DecodeError::TrailingBytes(n)),
        }
    }
}

/// Appends big-endian fields to a byte vector.
pub trait Writer {
    fn put_u8(&mut self, v: u8);
    fn put_u16(&mut self, v: u16);
    fn put_u32(&mut self, v: u32);
    fn put_u64(&mut self, v: u64);
    /// Writes a u8 length then the bytes; strings longer than 255 bytes are cut
    /// at a char boundary (names and reasons are informational).
    fn put_short_str(&mut self, s: &str);
    fn put_socket_addr(&mut self, addr: &SocketAddr);
}

impl Writer for Vec<u8> {
    fn put_u8(&mut self, v: u8) {
        self.push(v);
    }
    fn put_u16(&mut self, v: u16) {
        self.extend_from_slice(&v.to_be_bytes());
    }
    fn put_u32(&mut self, v: u32) {
        self.extend_from_slice(&v.to_be_bytes());
    }
    fn put_u64(&mut self, v: u64) {
        self.extend_from_slice(&v.to_be_bytes());
    }
    fn put_short_str(&mut self, s: &str) {
        let mut end = s.len().min(255);
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        self.put_u8(end as u8);
        self.extend_from_slice(&s.as_bytes()[..end]);
    }
    fn put_socket_addr(&mut self, addr: &SocketAddr) {
        match addr.ip() {
            IpAddr::V4(ip) => {
                self.put_u8(4);
                self.extend_from_slice(&ip.octets());
            }
            IpAddr::V6(ip) => {
                self.put_u8(6);
                self.extend_from_slice(&ip.octets());
            }
        }
        self.put_u16(addr.port());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn truncated_reads_fail_cleanly() {
        let mut r = Reader::new(&[1, 2, 3]);
        assert_eq!(r.u16().unwrap(), 0x0102);
        assert_eq!(r.u16(), Err(DecodeError::Truncated { needed: 1 }));
    }

    #[test]
    fn short_str_is_cut_at_char_boundary() {
        let long = "é".repeat(200); // 400 bytes
        let mut buf = Vec::new();
        buf.put_short_str(&long);
        let s = Reader::new(&buf).short_str("name").unwrap();
        assert_eq!(s.len(), 254);
    }

    #[test]
    fn socket_addr_round_trip_v4_v6() {
        for a in ["10.1.2.3:4000", "[2001:db8::1]:65535"] {
            let addr: SocketAddr = a.parse().unwrap();
            let mut buf = Vec::new();
            buf.put_socket_addr(&addr);
            let mut r = Reader::new(&buf);
            assert_eq!(r.socket_addr().unwrap(), addr);
            r.finish().unwrap();
        }
    }
}

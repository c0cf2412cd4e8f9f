//! Record plaintexts: control messages and data frames.
//!
//! Each record carries exactly one message: a type byte, then fixed fields,
//! all integers big-endian. Layouts are in `docs/PROTOCOL.md`.

use std::fmt;
use std::net::SocketAddr;

use bytes::Bytes;

use super::codec::{DecodeError, Reader, Writer};

/// Identifies one proxied TCP connection within a tunnel. The gateway that
/// dialled the tunnel allocates even ids, the accepting gateway odd ones, so
/// both ends can open sessions without coordination.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SessionId(pub u64);

impl fmt::Display for SessionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// Names one tunnel between two gateways: 16 random bytes the accepting
/// gateway picks, never all zero. On the wire all zero means "no tunnel"
/// (a hello for a new one), so that value has no `TunnelId`: a hello carries
/// `Option<TunnelId>`, and a welcome or attach naming the zero id does not
/// decode.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct TunnelId([u8; 16]);

impl TunnelId {
    /// The id in `bytes`, or `None` for all zero (no tunnel).
    pub fn new(bytes: [u8; 16]) -> Option<TunnelId> {
        (bytes != [0; 16]).then_some(TunnelId(bytes))
    }

    /// A fresh id from `rng`; `None` if the generator fails. The caller
    /// brings the generator, so this module stays free of I/O.
    pub fn random(rng: &dyn ring::rand::SecureRandom) -> Option<TunnelId> {
        let mut bytes = [0; 16];
        rng.fill(&mut bytes).ok()?;
        // All zero from a working generator has odds 2^-128: count it as a broken one.
        TunnelId::new(bytes)
    }

    pub fn as_bytes(&self) -> &[u8; 16] {
        &self.0
    }
}

/// 32 hex digits, as `lmas status` shows it.
impl fmt::Display for TunnelId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.iter().try_for_each(|b| write!(f, "{b:02x}"))
    }
}

impl fmt::Debug for TunnelId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "TunnelId({self})")
    }
}

/// What a hello's `resume` field holds when it names no tunnel.
const NO_TUNNEL: [u8; 16] = [0; 16];

macro_rules! wire_enum {
    ($(#[$m:meta])* $name:ident { $($variant:ident = $value:expr => $text:expr),+ $(,)? }) => {
        $(#[$m])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq)]
        pub enum $name {
            $($variant,)+
            /// A code this build does not know; kept so it can be logged.
            Unknown(u8),
        }
        impl From<u8> for $name {
            fn from(v: u8) -> Self {
                match v { $($value => $name::$variant,)+ other => $name::Unknown(other) }
            }
        }
        impl From<$name> for u8 {
            fn from(v: $name) -> u8 {
                match v { $($name::$variant => $value,)+ $name::Unknown(other) => other }
            }
        }
        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                match self {
                    $($name::$variant => f.write_str($text),)+
                    $name::Unknown(v) => write!(f, "unknown reason {v}"),
                }
            }
        }
    };
}

wire_enum!(
    /// Why the far gateway would not open a session.
    RefuseReason {
        NotAllowed = 1 => "not in egress allowlist",
        ConnectFailed = 2 => "connect to target failed",
        TooManySessions = 3 => "too many sessions",
        ShuttingDown = 4 => "gateway shutting down",
    }
);

wire_enum!(
    /// Why a session was aborted.
    ResetReason {
        ConnectionReset = 1 => "connection reset by endpoint",
        ProtocolError = 2 => "protocol error",
        TunnelLost = 3 => "tunnel lost",
        ShuttingDown = 4 => "gateway shutting down",
        Timeout = 5 => "timed out",
    }
);

/// A piece of one direction of a session's byte stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DataFrame {
    pub session: SessionId,
    /// Offset of `payload[0]` in the sender's byte stream.
    pub offset: u64,
    pub flags: u8,
    pub payload: Bytes,
}

/// Header bytes before a data frame's payload: type, session, offset, flags, length.
pub const DATA_HEADER_LEN: usize = 1 + 8 + 8 + 1 + 4;

/// Data flag: the payload is a dedup item list (`dedup::items`), not the stream bytes; only
/// sent to a peer whose handshake offered a dedup store (docs/PROTOCOL.md, "Dedup").
pub const DATA_FLAG_DEDUP: u8 = 0x01;
/// Every data flag this build knows; a frame with any other bit set does not decode.
pub const DATA_FLAGS_KNOWN: u8 = DATA_FLAG_DEDUP;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Message {
    /// First record on the control connection, from the dialling gateway.
    /// `resume` is the id of a tunnel to pick up again after the control
    /// connection was lost; `None` asks for a new tunnel (all zero on the wire).
    Hello {
        name: String,
        data_flows: u16,
        resume: Option<TunnelId>,
    },
    /// Reply to `Hello`: the tunnel id that data flows must present.
    Welcome {
        tunnel_id: TunnelId,
        name: String,
    },
    /// The sender's next record uses the next key (see `RecordSealer::ratchet`).
    /// Handled by the record layer on every connection; never reaches the core.
    KeyUpdate,
    /// First record on a data flow, from the dialling gateway.
    Attach {
        tunnel_id: TunnelId,
        flow: u16,
    },
    /// Ask the peer to connect to `target`; `window` is how many bytes of the
    /// reverse direction the opener will buffer ahead of its acks.
    Open {
        session: SessionId,
        target: SocketAddr,
        window: u32,
    },
    Accept {
        session: SessionId,
        window: u32,
    },
    Refuse {
        session: SessionId,
        reason: RefuseReason,
        detail: String,
    },
    /// The sender of this message has delivered `offset` bytes of the
    /// session's stream to its endpoint (cumulative).
    Ack {
        session: SessionId,
        offset: u64,
    },
    /// The stream from the sender of this message ends at `offset` (half-close).
    Fin {
        session: SessionId,
        offset: u64,
    },
    Reset {
        session: SessionId,
        reason: ResetReason,
    },
    Ping {
        id: u64,
    },
    Pong {
        id: u64,
    },
    /// The sender of this message could not resolve a dedup reference in the data frame
    /// `offset .. offset + len` of `session` (its store no longer holds the chunk): the peer
    /// sends those bytes again as they are.
    DedupMiss {
        session: SessionId,
        offset: u64,
        len: u32,
    },
    /// Chunks the sender's dedup store holds (fingerprint, length), oldest first: part of the
    /// inventory it sends when a tunnel begins, to a peer whose handshake asked for one.
    DedupInventory {
        chunks: Vec<([u8; 32], u32)>,
    },
    Data(DataFrame),
}

/// At most this many chunks in one inventory message (36 bytes each: 36 KiB).
pub const MAX_INVENTORY_CHUNKS: usize = 1024;

mod kind {
    pub const HELLO: u8 = 0x01;
    pub const WELCOME: u8 = 0x02;
    pub const ATTACH: u8 = 0x03;
    pub const KEY_UPDATE: u8 = 0x04;
    pub const OPEN: u8 = 0x10;
    pub const ACCEPT: u8 = 0x11;
    pub const REFUSE: u8 = 0x12;
    pub const ACK: u8 = 0x13;
    pub const FIN: u8 = 0x14;
    pub const RESET: u8 = 0x15;
    pub const PING: u8 = 0x16;
    pub const PONG: u8 = 0x17;
    pub const DEDUP_MISS: u8 = 0x18;
    pub const DEDUP_INVENTORY: u8 = 0x19;
    pub const DATA: u8 = 0x20;
}

impl Message {
    /// Appends the encoded message to `out`.
    pub fn encode(&self, out: &mut Vec<u8>) {
        match self {
            Message::Hello {
                name,
                data_flows,
                resume,
            } => {
                out.put_u8(kind::HELLO);
                out.put_u16(*data_flows);
                out.extend_from_slice(&resume.map_or(NO_TUNNEL, |t| t.0));
                out.put_short_str(name);
            }
            Message::Welcome { tunnel_id, name } => {
                out.put_u8(kind::WELCOME);
                out.extend_from_slice(tunnel_id.as_bytes());
                out.put_short_str(name);
            }
            Message::KeyUpdate => out.put_u8(kind::KEY_UPDATE),
            Message::Attach { tunnel_id, flow } => {
                out.put_u8(kind::ATTACH);
                out.extend_from_slice(tunnel_id.as_bytes());
                out.put_u16(*flow);
            }
            Message::Open {
                session,
                target,
                window,
            } => {
                out.put_u8(kind::OPEN);
                out.put_u64(session.0);
                out.put_u32(*window);
                out.put_socket_addr(target);
            }
            Message::Accept { session, window } => {
                out.put_u8(kind::ACCEPT);
                out.put_u64(session.0);
                out.put_u32(*window);
            }
            Message::Refuse {
                session,
                reason,
                detail,
            } => {
                out.put_u8(kind::REFUSE);
                out.put_u64(session.0);
                out.put_u8((*reason).into());
                out.put_short_str(detail);
            }
            Message::Ack { session, offset } => {
                out.put_u8(kind::ACK);
                out.put_u64(session.0);
                out.put_u64(*offset);
            }
            Message::Fin { session, offset } => {
                out.put_u8(kind::FIN);
                out.put_u64(session.0);
                out.put_u64(*offset);
            }
            Message::Reset { session, reason } => {
                out.put_u8(kind::RESET);
                out.put_u64(session.0);
                out.put_u8((*reason).into());
            }
            Message::Ping { id } => {
                out.put_u8(kind::PING);
                out.put_u64(*id);
            }
            Message::Pong { id } => {
                out.put_u8(kind::PONG);
                out.put_u64(*id);
            }
            Message::DedupMiss {
                session,
                offset,
                len,
            } => {
                out.put_u8(kind::DEDUP_MISS);
                out.put_u64(session.0);
                out.put_u64(*offset);
                out.put_u32(*len);
            }
            Message::DedupInventory { chunks } => {
                out.put_u8(kind::DEDUP_INVENTORY);
                out.put_u16(chunks.len() as u16);
                for (fp, len) in chunks {
                    out.extend_from_slice(fp);
                    out.put_u32(*len);
                }
            }
            Message::Data(frame) => frame.encode(out),
        }
    }

    /// Decodes one message from a record's plaintext. Data payloads share
    /// `buf`'s allocation (no copy).
    pub fn decode(buf: Bytes) -> Result<Message, DecodeError> {
        let mut r = Reader::new(&buf);
        let msg = match r.u8()? {
            kind::HELLO => Message::Hello {
                data_flows: r.u16()?,
                resume: TunnelId::new(r.array()?),
                name: r.short_str("gateway name")?,
            },
            kind::WELCOME => Message::Welcome {
                tunnel_id: tunnel_id(&mut r)?,
                name: r.short_str("gateway name")?,
            },
            kind::KEY_UPDATE => Message::KeyUpdate,
            kind::ATTACH => Message::Attach {
                tunnel_id: tunnel_id(&mut r)?,
                flow: r.u16()?,
            },
            kind::OPEN => Message::Open {
                session: SessionId(r.u64()?),
                window: r.u32()?,
                target: r.socket_addr()?,
            },
            kind::ACCEPT => Message::Accept {
                session: SessionId(r.u64()?),
                window: r.u32()?,
            },
            kind::REFUSE => Message::Refuse {
                session: SessionId(r.u64()?),
                reason: r.u8()?.into(),
                detail: r.short_str("refuse detail")?,
            },
            kind::ACK => Message::Ack {
                session: SessionId(r.u64()?),
                offset: r.u64()?,
            },
            kind::FIN => Message::Fin {
                session: SessionId(r.u64()?),
                offset: r.u64()?,
            },
            kind::RESET => Message::Reset {
                session: SessionId(r.u64()?),
                reason: r.u8()?.into(),
            },
            kind::PING => Message::Ping { id: r.u64()? },
            kind::PONG => Message::Pong { id: r.u64()? },
            kind::DEDUP_MISS => Message::DedupMiss {
                session: SessionId(r.u64()?),
                offset: r.u64()?,
                len: r.u32()?,
            },
            kind::DEDUP_INVENTORY => {
                let count = r.u16()? as usize;
                if count == 0 || count > MAX_INVENTORY_CHUNKS {
                    return Err(DecodeError::Invalid {
                        field: "inventory count",
                        why: "not in 1..=1024",
                    });
                }
                let mut chunks = Vec::with_capacity(count);
                for _ in 0..count {
                    let fp = r.array()?;
                    let len = r.u32()?;
                    if len == 0 || len > crate::dedup::MAX_CHUNK_LEN {
                        return Err(DecodeError::Invalid {
                            field: "inventory chunk length",
                            why: "not in 1..=65536",
                        });
                    }
                    chunks.push((fp, len));
                }
                Message::DedupInventory { chunks }
            }
            kind::DATA => {
                let session = SessionId(r.u64()?);
                let offset = r.u64()?;
                let flags = r.u8()?;
                // A bit this build does not know is a peer speaking something else, not
                // something to carry along unread.
                if flags & !DATA_FLAGS_KNOWN != 0 {
                    return Err(DecodeError::Invalid {
                        field: "data flags",
                        why: "unknown flag (only 0x01, dedup, is defined)",
                    });
                }
                let len = r.u32()? as usize;
                if r.remaining() != len {
                    return Err(DecodeError::Invalid {
                        field: "data length",
                        why: "does not match the record length",
                    });
                }
                if offset.checked_add(len as u64).is_none() {
                    return Err(DecodeError::Invalid {
                        field: "data offset",
                        why: "offset + length overflows",
                    });
                }
                return Ok(Message::Data(DataFrame {
                    session,
                    offset,
                    flags,
                    payload: buf.slice(DATA_HEADER_LEN..),
                }));
            }
            other => return Err(DecodeError::UnknownType(other)),
        };
        r.finish()?;
        Ok(msg)
    }

    /// A short name for logs and counters.
    pub fn name(&self) -> &'static str {
        match self {
            Message::Hello { .. } => "hello",
            Message::Welcome { .. } => "welcome",
            Message::Attach { .. } => "attach",
            Message::KeyUpdate => "key-update",
            Message::Open { .. } => "open",
            Message::Accept { .. } => "accept",
            Message::Refuse { .. } => "refuse",
            Message::Ack { .. } => "ack",
            Message::Fin { .. } => "fin",
            Message::Reset { .. } => "reset",
            Message::Ping { .. } => "ping",
            Message::Pong { .. } => "pong",
            Message::DedupMiss { .. } => "dedup-miss",
            Message::DedupInventory { .. } => "dedup-inventory",
            Message::Data(_) => "data",
        }
    }
}

/// A welcome's or attach's tunnel id: these name a tunnel that exists, so
/// the zero id (no tunnel) is the peer speaking nonsense.
fn tunnel_id(r: &mut Reader<'_>) -> Result<TunnelId, DecodeError> {
    TunnelId::new(r.array()?).ok_or(DecodeError::Invalid {
        field: "tunnel id",
        why: "all zero names no tunnel",
    })
}

impl DataFrame {
    /// Appends the frame as a message: its header, then its payload.
    pub fn encode(&self, out: &mut Vec<u8>) {
        self.encode_header(out);
        out.extend_from_slice(&self.payload);
    }

    /// Writes the frame header (everything before the payload).
    pub fn encode_header(&self, out: &mut Vec<u8>) {
        out.put_u8(kind::DATA);
        out.put_u64(self.session.0);
        out.put_u64(self.offset);
        out.put_u8(self.flags);
        out.put_u32(self.payload.len() as u32);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn round_trip(msg: &Message) -> Message {
        let mut buf = Vec::new();
        msg.encode(&mut buf);
        Message::decode(Bytes::from(buf)).expect("decodes")
    }

    #[test]
    fn data_frame_bytes() {
        let msg = Message::Data(DataFrame {
            session: SessionId(2),
            offset: 0x0102,
            flags: 0,
            payload: Bytes::from_static(b"hi"),
        });
        let mut buf = Vec::new();
        msg.encode(&mut buf);
        assert_eq!(
            buf,
            [0x20, 0, 0, 0, 0, 0, 0, 0, 2, 0, 0, 0, 0, 0, 0, 1, 2, 0, 0, 0, 0, 2, b'h', b'i']
        );
        assert_eq!(round_trip(&msg), msg);
    }

    #[test]
    fn a_hello_for_a_new_tunnel_carries_the_zero_id() {
        let hello = |resume| Message::Hello {
            name: "b".into(),
            data_flows: 4,
            resume,
        };
        let mut buf = Vec::new();
        hello(None).encode(&mut buf);
        let mut want = vec![0x01, 0, 4];
        want.extend_from_slice(&[0; 16]);
        want.extend_from_slice(&[1, b'b']);
        assert_eq!(buf, want);
        assert_eq!(round_trip(&hello(None)), hello(None));

        let id = TunnelId::new([7; 16]).expect("not zero");
        buf.clear();
        hello(Some(id)).encode(&mut buf);
        assert_eq!(&buf[3..19], &[7; 16]);
        assert_eq!(round_trip(&hello(Some(id))), hello(Some(id)));
    }

    #[test]
    fn a_tunnel_id_shows_as_32_hex_digits() {
        let mut bytes = [0xab; 16];
        bytes[0] = 0x01;
        let id = TunnelId::new(bytes).expect("not zero");
        assert_eq!(id.to_string(), format!("01{}", "ab".repeat(15)));
        assert_eq!(
            format!("{id:?}"),
            format!("TunnelId(01{})", "ab".repeat(15))
        );
    }

    #[test]
    fn a_welcome_or_attach_naming_the_zero_id_is_refused() {
        let mut welcome = vec![0x02];
        welcome.extend_from_slice(&[0; 16]);
        welcome.extend_from_slice(&[1, b'a']);
        let mut attach = vec![0x03];
        attach.extend_from_slice(&[0; 16]);
        attach.extend_from_slice(&[0, 1]);
        for bytes in [welcome, attach] {
            assert_eq!(
                Message::decode(Bytes::from(bytes)),
                Err(DecodeError::Invalid {
                    field: "tunnel id",
                    why: "all zero names no tunnel",
                })
            );
        }
    }

    #[test]
    fn data_length_must_match_record() {
        let mut buf = Vec::new();
        Message::Data(DataFrame {
            session: SessionId(2),
            offset: 0,
            flags: 0,
            payload: Bytes::from_static(b"abc"),
        })
        .encode(&mut buf);
        buf.pop();
        assert!(Message::decode(Bytes::from(buf)).is_err());
    }

    #[test]
    fn unknown_reason_codes_survive() {
        let msg = Message::Refuse {
            session: SessionId(7),
            reason: RefuseReason::Unknown(99),
            detail: "x".into(),
        };
        assert_eq!(round_trip(&msg), msg);
    }

    fn arb_message() -> impl Strategy<Value = Message> {
        let sid = any::<u64>().prop_map(SessionId);
        let tid = any::<[u8; 16]>().prop_filter_map("the zero id is no tunnel", TunnelId::new);
        let addr = any::<(u32, u16)>()
            .prop_map(|(ip, port)| SocketAddr::from((std::net::Ipv4Addr::from(ip), port)));
        prop_oneof![
            (".{0,40}", any::<u16>(), proptest::option::of(tid.clone())).prop_map(
                |(name, data_flows, resume)| Message::Hello {
                    name,
                    data_flows,
                    resume,
                }
            ),
            (tid.clone(), ".{0,40}")
                .prop_map(|(tunnel_id, name)| Message::Welcome { tunnel_id, name }),
            (tid, any::<u16>()).prop_map(|(tunnel_id, flow)| Message::Attach { tunnel_id, flow }),
            (sid.clone(), addr, any::<u32>()).prop_map(|(session, target, window)| Message::Open {
                session,
                target,
                window
            }),
            (sid.clone(), any::<u32>())
                .prop_map(|(session, window)| Message::Accept { session, window }),
            (sid.clone(), any::<u8>(), ".{0,40}").prop_map(|(session, r, detail)| {
                Message::Refuse {
                    session,
                    reason: r.into(),
                    detail,
                }
            }),
            (sid.clone(), any::<u64>())
                .prop_map(|(session, offset)| Message::Ack { session, offset }),
            (sid.clone(), any::<u64>())
                .prop_map(|(session, offset)| Message::Fin { session, offset }),
            (sid.clone(), any::<u8>()).prop_map(|(session, r)| Message::Reset {
                session,
                reason: r.into()
            }),
            any::<u64>().prop_map(|id| Message::Ping { id }),
            Just(Message::KeyUpdate),
            any::<u64>().prop_map(|id| Message::Pong { id }),
            (sid.clone(), any::<u64>(), any::<u32>()).prop_map(|(session, offset, len)| {
                Message::DedupMiss {
                    session,
                    offset,
                    len,
                }
            }),
            proptest::collection::vec((any::<[u8; 32]>(), 1u32..=65536), 1..40)
                .prop_map(|chunks| Message::DedupInventory { chunks }),
            (
                sid,
                0u64..u64::MAX / 2,
                prop_oneof![Just(0u8), Just(DATA_FLAG_DEDUP)],
                proptest::collection::vec(any::<u8>(), 0..300)
            )
                .prop_map(|(session, offset, flags, p)| Message::Data(DataFrame {
                    session,
                    offset,
                    flags,
                    payload: Bytes::from(p)
                })),
        ]
    }

    #[test]
    fn a_data_frame_with_an_unknown_flag_is_refused() {
        for flags in [2u8, 0x80, 0xff] {
            let mut buf = Vec::new();
            Message::Data(DataFrame {
                session: SessionId(7),
                offset: 0,
                flags,
                payload: Bytes::from_static(b"abc"),
            })
            .encode(&mut buf);
            let err = Message::decode(Bytes::from(buf)).expect_err("flags must be 0");
            assert!(
                matches!(
                    err,
                    DecodeError::Invalid {
                        field: "data flags",
                        ..
                    }
                ),
                "{err}"
            );
        }
    }

    proptest! {
        #[test]
        fn every_message_round_trips(msg in arb_message()) {
            prop_assert_eq!(round_trip(&msg), msg);
        }

        #[test]
        fn decoding_arbitrary_bytes_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..64)) {
            let _ = Message::decode(Bytes::from(bytes));
        }

        #[test]
        fn every_truncation_is_an_error(msg in arb_message(), cut in 1usize..40) {
            let mut buf = Vec::new();
            msg.encode(&mut buf);
            let keep = buf.len().saturating_sub(cut);
            buf.truncate(keep);
            prop_assert!(Message::decode(Bytes::from(buf)).is_err());
        }
    }
}

//! The LMAS wire protocol, version 1: encode and decode only, no I/O.
//!
//! Every TCP connection between two gateways starts with a [`handshake`]
//! prelude and a Noise handshake; after that it carries encrypted records
//! (see `crate::crypto::record`). The plaintext of each record is one
//! [`Message`]. The byte-level layout is documented in `docs/PROTOCOL.md`;
//! keep the two in step.
//!
//! Contract: no decoder in this module panics or allocates more than its input
//! length, whatever bytes it is given. Unknown message types are a
//! [`DecodeError::UnknownType`] error, never silently skipped, because a
//! skipped data frame would break the byte stream.

pub mod codec;
pub mod handshake;
pub mod message;
pub mod packed;

pub use codec::DecodeError;
pub use message::{DataFrame, Message, RefuseReason, ResetReason, SessionId, TunnelId};

/// The protocol version this build speaks.
pub const VERSION: u8 = 1;

/// Data flows one tunnel may have: the acceptor refuses a hello that asks
/// for none or for more (and config refuses `wan.data_flows` beyond it).
pub const MAX_DATA_FLOWS: u16 = 64;

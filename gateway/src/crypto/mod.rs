//! Gateway authentication and traffic protection.
//!
//! - [`keys`]: X25519 static key pairs and pre-shared keys, loaded from files.
//! - [`handshake`]: a sans-IO Noise `IK` (or `IKpsk2`) handshake per TCP
//!   connection, which authenticates both gateways before any session state
//!   exists and yields fresh per-connection keys (forward secrecy).
//! - [`record`]: AES-256-GCM sealing and opening of the records that follow,
//!   with the record length authenticated and an implicit per-direction
//!   counter nonce (a replayed, dropped or reordered record fails to open).

pub mod handshake;
pub mod keys;
pub mod record;

pub use handshake::{HandshakeError, Initiator, Responder, TrafficKeys};
pub use keys::{KeyError, PresharedKey, PublicKey, StaticKeypair};
pub use record::{
    RecordError, RecordOpener, RecordSealer, MAX_RECORD_LEN, RECORD_HEADER_LEN, TAG_LEN,
};

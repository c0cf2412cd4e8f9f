//! Gateway authentication and traffic protection.
//!
//! - [`keys`]: X25519 static key pairs and pre-shared keys, loaded from files.
//! - [`handshake`]: a sans-IO Noise `IK` (`IKpsk1` with a pre-shared key)
//!   handshake per TCP connection, which authenticates both gateways before any session state
//!   exists and yields fresh per-connection keys (forward secrecy).
//! - [`channel`]: one direction of a connection as messages: sealing with
//!   key updates by policy, opening that follows the peer's key updates.
//! - [`random`]: seeds that must not be guessed.
//! - [`record`]: AES-256-GCM sealing and opening of the records that follow,
//!   with the record length authenticated and an implicit per-direction
//!   counter nonce (a replayed, dropped or reordered record fails to open).

pub mod channel;
pub mod handshake;
pub mod keys;
pub mod random;
pub mod record;

pub use channel::{
    decode_message, KeyUpdated, OpenError, Opened, Opening, RekeyPolicy, Sealed, Sealing,
};
pub use handshake::{DedupOffer, HandshakeError, Initiator, Offer, Responder, TrafficKeys};
pub use keys::{check_trusted, KeyError, PresharedKey, PublicKey, StaticKeypair};
pub use record::{
    RecordError, RecordOpener, RecordSealer, MAX_RECORD_LEN, RECORD_HEADER_LEN, TAG_LEN,
};

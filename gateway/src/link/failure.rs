//! Why a WAN connection failed, in one vocabulary for both datapaths: what the lifecycle makes
//! of it ([`FaultKind`]) and what it counts as, so that the two cannot name or count one
//! failure two ways (the DPDK engine once counted a sound record with nonsense in it as a
//! rejected record, the kernel datapath as a protocol error).

use std::io;

use super::handshake::LinkHandshakeError;
use super::lifecycle::{Count, FaultKind};
use super::tunnel::Applied;
use crate::crypto::{HandshakeError, OpenError, RecordError};
use crate::protocol::DecodeError;
use crate::transform::UnpackError;

#[derive(Debug, thiserror::Error)]
pub enum ConnFailure {
    /// The transport never connected.
    #[error("cannot connect: {0}")]
    Connect(io::Error),
    #[error("connection closed by peer")]
    Closed,
    #[error("connection reset or timed out")]
    Reset,
    #[error("{0}")]
    Io(#[from] io::Error),
    #[error("{0}")]
    Handshake(#[from] HandshakeError),
    /// A handshake message that does not parse (the lifecycle counts the failed handshake).
    #[error("malformed handshake: {0}")]
    HandshakeMessage(DecodeError),
    /// A record of the peer's that did not open: forged, tampered, replayed or too long.
    #[error("record: {0}")]
    Record(#[from] RecordError),
    /// Sealing a record of ours failed: this gateway's fault, not the peer's.
    #[error("sealing: {0}")]
    Seal(RecordError),
    /// A sound record holding a message that does not decode.
    #[error("malformed message: {0}")]
    Decode(DecodeError),
    /// A sound record holding a packed data frame that does not unpack.
    #[error("packed data frame: {0}")]
    Unpack(UnpackError),
}

impl ConnFailure {
    /// A read that failed: the peer's close (end of stream) or reset is not an I/O error of
    /// ours.
    pub fn from_read(e: io::Error) -> ConnFailure {
        match e.kind() {
            io::ErrorKind::UnexpectedEof => ConnFailure::Closed,
            io::ErrorKind::ConnectionReset | io::ErrorKind::ConnectionAborted => ConnFailure::Reset,
            _ => ConnFailure::Io(e),
        }
    }

    /// What the lifecycle makes of it.
    pub fn kind(&self) -> FaultKind {
        match self {
            ConnFailure::Connect(_) => FaultKind::Connect,
            ConnFailure::Closed | ConnFailure::Reset => FaultKind::Closed,
            _ => FaultKind::Other,
        }
    }

    /// What the peer did wrong, where it did: a record that did not open, or a protocol
    /// breach inside one that did.
    pub fn count(&self) -> Option<Count> {
        match self {
            ConnFailure::Record(_) => Some(Count::RecordRejected),
            ConnFailure::Decode(_) | ConnFailure::Unpack(_) => {
                Some(Count::Applied(Applied::ProtocolError))
            }
            _ => None,
        }
    }
}

impl From<OpenError> for ConnFailure {
    fn from(e: OpenError) -> Self {
        match e {
            OpenError::Record(e) => ConnFailure::Record(e),
            OpenError::Decode(e) => ConnFailure::Decode(e),
            OpenError::Unpack(e) => ConnFailure::Unpack(e),
        }
    }
}

impl From<LinkHandshakeError> for ConnFailure {
    fn from(e: LinkHandshakeError) -> Self {
        match e {
            LinkHandshakeError::Handshake(e) => ConnFailure::Handshake(e),
            LinkHandshakeError::Decode(e) => ConnFailure::HandshakeMessage(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_peers_faults_inside_keyed_records_are_counted_and_each_once() {
        let bad_message = DecodeError::UnknownType(0xee);
        let cases = [
            (
                ConnFailure::Record(RecordError::Authentication),
                Some(Count::RecordRejected),
            ),
            (
                ConnFailure::from(OpenError::Decode(bad_message.clone())),
                Some(Count::Applied(Applied::ProtocolError)),
            ),
            (ConnFailure::Seal(RecordError::KeyExhausted), None),
            (
                ConnFailure::from(LinkHandshakeError::Decode(bad_message)),
                None,
            ),
            (ConnFailure::Closed, None),
        ];
        for (failure, count) in cases {
            assert_eq!(failure.count(), count, "{failure}");
        }
    }

    #[test]
    fn the_lifecycle_hears_connect_close_or_other() {
        let refused = io::Error::new(io::ErrorKind::ConnectionRefused, "refused or unreachable");
        assert_eq!(ConnFailure::Connect(refused).kind(), FaultKind::Connect);
        let eof = io::Error::from(io::ErrorKind::UnexpectedEof);
        assert_eq!(ConnFailure::from_read(eof).kind(), FaultKind::Closed);
        assert_eq!(ConnFailure::Reset.kind(), FaultKind::Closed);
        // A reset read is the peer's doing, as the DPDK stack reports it: during a handshake,
        // the lifecycle then says the peer does not accept this gateway.
        for reset in [
            io::ErrorKind::ConnectionReset,
            io::ErrorKind::ConnectionAborted,
        ] {
            assert_eq!(
                ConnFailure::from_read(reset.into()).kind(),
                FaultKind::Closed
            );
        }
        let other = io::Error::from(io::ErrorKind::BrokenPipe);
        assert_eq!(ConnFailure::from_read(other).kind(), FaultKind::Other);
        assert_eq!(
            ConnFailure::Connect(io::Error::new(
                io::ErrorKind::ConnectionRefused,
                "refused or unreachable"
            ))
            .to_string(),
            "cannot connect: refused or unreachable"
        );
    }
}

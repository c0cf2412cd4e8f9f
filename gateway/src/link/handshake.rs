//! One WAN connection's handshake, fed the bytes as they arrive: the framing of PROTOCOL.md §1
//! around the Noise messages, written once for both datapaths. It never asks for more bytes
//! than the handshake has, so the first record stays unread in the socket for the record layer.
//!
//! ```text
//! dialler:   dial() -> message 1 to write;  take(message 2)            -> Done
//! acceptor:  accept();  take(prelude), take(len), take(message 1)      -> Done { reply }
//! ```

use crate::crypto::{
    DedupOffer, HandshakeError, Initiator, Offer, PresharedKey, PublicKey, Responder,
};
use crate::crypto::{StaticKeypair, TrafficKeys};
use crate::protocol::handshake::{check_noise_len, frame_noise, Prelude, Shard, PRELUDE_LEN};
use crate::protocol::DecodeError;

/// A connection's handshake (and its first record, or the welcome) must complete within this
/// time, on both datapaths.
pub const HANDSHAKE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// Why a dialled connection's handshake ended with the peer hanging up, in the words of both
/// datapaths' log line: a responder that rejects us just closes the connection.
pub const PEER_CLOSED_IN_HANDSHAKE: &str = "peer closed the connection during the handshake: it does not accept this gateway (check both gateways' peer.public_key, the psk and the protocol version) or it is overloaded";

/// This gateway's keys and what it expects of the peer.
pub struct Identity<'a> {
    pub local: &'a StaticKeypair,
    pub peer: &'a PublicKey,
    pub psk: Option<&'a PresharedKey>,
    /// Which of our TCP lcores the connection is for (both ends must agree).
    pub shard: Shard,
    /// Our dedup store, offered to the peer (store 0: none).
    pub dedup: DedupOffer,
    /// Our lane's UDP port, offered to the peer (none: no lane).
    pub lane: Option<u16>,
}

impl Identity<'_> {
    fn offer(&self) -> Offer {
        Offer {
            shard: self.shard,
            dedup: self.dedup,
            lane: self.lane,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum LinkHandshakeError {
    #[error("{0}")]
    Handshake(#[from] HandshakeError),
    #[error("malformed handshake: {0}")]
    Decode(#[from] DecodeError),
}

/// A finished handshake.
#[derive(Debug)]
pub struct Done {
    pub keys: TrafficKeys,
    /// The acceptor's message 2, to write before anything else (empty for the dialler).
    pub reply: Vec<u8>,
    /// The connection is a data flow (the dialler's prelude says so).
    pub data_flow: bool,
}

enum Phase {
    /// Dialler: message 1 sent; `data_flow` as it said.
    Initiating(Initiator, bool),
    /// Acceptor: reading the prelude.
    Prelude,
    /// Acceptor: the prelude checked; reading message 1.
    Responding(Prelude, Responder),
    Done,
}

/// The handshake of one connection, either end.
pub struct ConnHandshake {
    phase: Phase,
    /// The current piece's bytes so far (prelude, length, or Noise message).
    buf: Vec<u8>,
    /// The Noise message's length, once read (`None`: reading the 2-byte length).
    noise_len: Option<usize>,
}

impl ConnHandshake {
    /// The dialling end: the handshake, and the prelude and message 1 to write.
    pub fn dial(
        me: &Identity,
        data_flow: bool,
    ) -> Result<(ConnHandshake, Vec<u8>), HandshakeError> {
        let (init, prelude, m1) =
            Initiator::start_for(me.local, me.peer, me.psk, data_flow, me.offer())?;
        let hs = ConnHandshake {
            phase: Phase::Initiating(init, data_flow),
            buf: Vec::new(),
            noise_len: None,
        };
        Ok((hs, frame_noise(&prelude.encode(), &m1)))
    }

    /// The accepting end: waits for the dialler's prelude.
    pub fn accept() -> ConnHandshake {
        ConnHandshake {
            phase: Phase::Prelude,
            buf: Vec::new(),
            noise_len: None,
        }
    }

    /// How many bytes to read next: exactly what the current piece still lacks (0 once done).
    pub fn wanted(&self) -> usize {
        let piece = match (&self.phase, self.noise_len) {
            (Phase::Done, _) => return 0,
            (Phase::Prelude, _) => PRELUDE_LEN,
            (_, None) => 2,
            (_, Some(len)) => len,
        };
        piece - self.buf.len()
    }

    /// Takes received bytes, at most [`ConnHandshake::wanted`] of them (more is a caller bug
    /// and is refused as a malformed handshake, never read past). `Some` once the handshake
    /// is complete.
    pub fn take(
        &mut self,
        me: &Identity,
        bytes: &[u8],
    ) -> Result<Option<Done>, LinkHandshakeError> {
        if bytes.len() > self.wanted() {
            return Err(DecodeError::Invalid {
                field: "handshake",
                why: "bytes beyond the handshake",
            }
            .into());
        }
        self.buf.extend_from_slice(bytes);
        if self.wanted() > 0 {
            return Ok(None);
        }
        let piece = std::mem::take(&mut self.buf);
        match (
            std::mem::replace(&mut self.phase, Phase::Done),
            self.noise_len,
        ) {
            (Phase::Prelude, _) => {
                let prelude = Prelude::decode(piece[..].try_into().expect("PRELUDE_LEN bytes"))?;
                let responder = Responder::new(me.local, me.psk, &prelude)?.with_offer(me.offer());
                self.phase = Phase::Responding(prelude, responder);
                Ok(None)
            }
            (phase, None) => {
                self.noise_len = Some(check_noise_len(u16::from_be_bytes([piece[0], piece[1]]))?);
                self.phase = phase;
                Ok(None)
            }
            (Phase::Initiating(init, data_flow), Some(_)) => Ok(Some(Done {
                keys: init.finish(&piece)?,
                reply: Vec::new(),
                data_flow,
            })),
            (Phase::Responding(prelude, mut responder), Some(_)) => {
                let peer = responder.read_message1(&piece)?;
                if peer != *me.peer {
                    return Err(HandshakeError::UnknownPeer(peer).into());
                }
                let (m2, keys) = responder.accept()?;
                Ok(Some(Done {
                    keys,
                    reply: frame_noise(&[], &m2),
                    data_flow: prelude.data_flow(),
                }))
            }
            (Phase::Done, _) => unreachable!("wanted() is 0 once done"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Pair {
        a: StaticKeypair,
        b: StaticKeypair,
    }

    fn pair() -> Pair {
        Pair {
            a: StaticKeypair::generate().unwrap(),
            b: StaticKeypair::generate().unwrap(),
        }
    }

    /// A one-shard gateway's identity without a psk.
    fn one<'a>(local: &'a StaticKeypair, peer: &'a PublicKey) -> Identity<'a> {
        Identity {
            local,
            peer,
            psk: None,
            shard: Shard::ONE,
            dedup: DedupOffer::default(),
            lane: None,
        }
    }

    /// Feeds `wire` to `hs` in pieces of at most `chunk` bytes, as `wanted` allows.
    fn feed(
        hs: &mut ConnHandshake,
        me: &Identity,
        wire: &[u8],
        chunk: usize,
    ) -> Result<Option<Done>, LinkHandshakeError> {
        let mut at = 0;
        while at < wire.len() {
            let n = hs.wanted().min(chunk).min(wire.len() - at);
            assert!(n > 0, "wants nothing with {} bytes left", wire.len() - at);
            if let Some(done) = hs.take(me, &wire[at..at + n])? {
                assert_eq!(at + n, wire.len(), "done before the message ended");
                return Ok(Some(done));
            }
            at += n;
        }
        Ok(None)
    }

    /// Both ends agree on keys, however the bytes are cut, and neither reads past its
    /// handshake.
    #[test]
    fn both_ends_key_the_connection_from_bytes_in_any_pieces() {
        let p = pair();
        let dialler = one(&p.a, &p.b.public);
        let acceptor = one(&p.b, &p.a.public);
        for chunk in [1, 3, 7, 1000] {
            let (mut d, m1) = ConnHandshake::dial(&dialler, true).unwrap();
            let mut a = ConnHandshake::accept();
            let done_a = feed(&mut a, &acceptor, &m1, chunk)
                .unwrap()
                .expect("acceptor done");
            assert!(done_a.data_flow);
            assert_eq!(a.wanted(), 0, "reads nothing past message 1");
            let done_d = feed(&mut d, &dialler, &done_a.reply, chunk)
                .unwrap()
                .expect("dialler done");
            assert_eq!(d.wanted(), 0);
            assert_eq!(done_d.keys.send, done_a.keys.recv);
            assert_eq!(done_d.keys.recv, done_a.keys.send);
            assert!(done_d.reply.is_empty());
        }
    }

    proptest::proptest! {
        /// Whatever a stranger sends, in whatever pieces, the acceptor wants more, fails, or
        /// (never, without the dialler's key) finishes; it never panics and never asks for
        /// more than the handshake's own bytes.
        #[test]
        fn any_bytes_in_any_pieces_leave_the_acceptor_sound(
            bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..1200),
            cut in 1usize..64,
            prelude_ok in proptest::prelude::any::<bool>(),
        ) {
            let p = pair();
            let acceptor = one(&p.b, &p.a.public);
            let mut wire = bytes;
            if prelude_ok {
                // Past the prelude checks, into the length and Noise parsing.
                wire.splice(0..wire.len().min(6), *b"LMAS\x01\x00");
            }
            let mut hs = ConnHandshake::accept();
            let mut at = 0;
            while at < wire.len() {
                let want = hs.wanted();
                proptest::prop_assert!(want <= 2 + crate::protocol::handshake::MAX_NOISE_MESSAGE);
                let n = want.min(cut).min(wire.len() - at);
                match hs.take(&acceptor, &wire[at..at + n]) {
                    Ok(None) => at += n,
                    Ok(Some(_)) => proptest::prop_assert!(false, "a stranger finished a handshake"),
                    Err(_) => break,
                }
            }
        }
    }

    #[test]
    fn strangers_and_garbage_are_refused_by_name() {
        let p = pair();
        let other = StaticKeypair::generate().unwrap();
        let dialler = one(&p.a, &p.b.public);
        let expects_other = one(&p.b, &other.public);
        let (_, m1) = ConnHandshake::dial(&dialler, false).unwrap();
        let err = feed(&mut ConnHandshake::accept(), &expects_other, &m1, 64).unwrap_err();
        assert!(
            matches!(
                err,
                LinkHandshakeError::Handshake(HandshakeError::UnknownPeer(_))
            ),
            "{err}"
        );

        for (garbage, named) in [
            (&b"GET / HTTP/1.1\r\n"[..], "not an LMAS gateway"),
            (&b"LMAS\x01\x00\x00\x00"[..], "handshake length"),
        ] {
            let err = feed(&mut ConnHandshake::accept(), &expects_other, garbage, 64).unwrap_err();
            assert!(err.to_string().contains(named), "{err}");
        }

        let mut hs = ConnHandshake::accept();
        assert!(
            hs.take(&expects_other, &[0u8; PRELUDE_LEN + 1]).is_err(),
            "more than wanted"
        );
    }
}

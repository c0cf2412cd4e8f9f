//! Sans-IO Noise handshake that authenticates two gateways.
//!
//! Pattern `IK` (or `IKpsk1` when a pre-shared key is configured) over
//! X25519, AES-GCM and SHA-256: one round trip. The dialling gateway already
//! knows the peer's static key from its config; the accepting gateway learns
//! the dialler's static key from message 1 and the caller checks it against
//! its configured peer before replying, so an unknown gateway never gets past
//! message 1 and no session state exists before both sides are authenticated.
//! Ephemeral keys give each connection fresh traffic keys (forward secrecy).
//!
//! Read first: the Noise Protocol Framework, rev. 34, sections 7.5 (IK) and 9 (psk).

use std::fmt;

use snow::params::NoiseParams;

use super::keys::{PresharedKey, PublicKey, StaticKeypair};
use crate::protocol::handshake::{Prelude, Shard, FLAG_DATA_FLOW, FLAG_PSK};
use crate::protocol::packed::CodecSet;
use crate::protocol::VERSION;

/// Largest handshake message we produce (IK message 1 with no payload is 96
/// bytes + 16 with a psk; leave room).
const NOISE_BUF: usize = 256;

pub(crate) fn noise_params(psk: bool) -> NoiseParams {
    let name = if psk {
        "Noise_IKpsk1_25519_AESGCM_SHA256"
    } else {
        "Noise_IK_25519_AESGCM_SHA256"
    };
    name.parse().expect("a valid, supported Noise pattern name")
}

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum HandshakeError {
    #[error("peer speaks protocol version {theirs}, this gateway speaks {ours}")]
    VersionMismatch { theirs: u8, ours: u8 },
    #[error("pre-shared key mismatch: peer {peer}, this gateway {ours}")]
    PskMismatch {
        peer: &'static str,
        ours: &'static str,
    },
    #[error("peer presented unknown static key {0}")]
    UnknownPeer(PublicKey),
    #[error(
        "authentication failed (wrong public key or pre-shared key on one of the two gateways)"
    )]
    Authentication,
    #[error("noise: {0}")]
    Noise(#[from] snow::Error),
    #[error("timed out after {0:?}")]
    TimedOut(std::time::Duration),
    #[error("the peer's connection is for its {peer}, this gateway's end is {ours}: both gateways need the same number of TCP lcores (dpdk.tcp_lcores; a kernel gateway counts as one)")]
    ShardMismatch { peer: Shard, ours: Shard },
}

fn auth_err(_: snow::Error) -> HandshakeError {
    HandshakeError::Authentication
}

/// Fresh AES-256-GCM keys for one connection, one per direction.
pub struct TrafficKeys {
    pub send: [u8; 32],
    pub recv: [u8; 32],
    /// The frame codecs the peer unpacks, from its handshake payload (empty for a peer
    /// that sends none: an older gateway gets plain frames).
    pub peer_codecs: CodecSet,
    /// The dedup store the peer resolves references against (store 0: none, e.g. an older
    /// gateway or one with `dedup = "off"`: it gets no dedup frames), and whether it wants
    /// our store's inventory.
    pub peer_dedup: DedupOffer,
    /// The UDP port the peer takes lane datagrams on (`crate::lane`), if it offered one.
    pub peer_lane: Option<u16>,
}

/// What one end offers in its handshake besides its codecs: which shard it is, the size of
/// its dedup store (0: none) and the UDP port of its lane (none: no lane).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Offer {
    pub shard: Shard,
    pub dedup: DedupOffer,
    pub lane: Option<u16>,
}

/// What one end offers for dedup (docs/PROTOCOL.md, "Dedup").
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DedupOffer {
    /// The bytes of the store it resolves references against (0: none).
    pub store: u64,
    /// It wants the list of what our store holds when a tunnel begins (it may reference any
    /// chunk the tunnel ever carried: `dedup_scope = "tunnel"`).
    pub inventory: bool,
}

impl From<Shard> for Offer {
    fn from(shard: Shard) -> Offer {
        Offer {
            shard,
            dedup: DedupOffer::default(),
            lane: None,
        }
    }
}

/// The Noise payload of both handshake messages: type-length-value capabilities, which older
/// gateways send empty and skip unread. Unknown types are skipped, so later ones can be added.
const CAP_CODECS: u8 = 0x01;
/// `index u8 | count u8`: the sender's shard; sent only by gateways with more than one.
const CAP_SHARD: u8 = 0x02;
/// `store_bytes u64`: the sender resolves dedup references against a store of that many
/// bytes; sent only by gateways with one.
const CAP_DEDUP: u8 = 0x03;
/// Empty: the sender wants a dedup inventory (message 0x19) when a tunnel begins; sent only
/// with `CAP_DEDUP`.
const CAP_DEDUP_INVENTORY: u8 = 0x04;
/// `port u16`: the sender takes lane datagrams on that UDP port, at the address this
/// connection comes from; sent only by gateways with `wan.lane = "on"`.
const CAP_LANE: u8 = 0x05;

fn capabilities(offer: impl Into<Offer>) -> Vec<u8> {
    let offer = offer.into();
    let mut caps = vec![CAP_CODECS, 1, CodecSet::SUPPORTED.0];
    if offer.shard != Shard::ONE {
        caps.extend([CAP_SHARD, 2, offer.shard.index, offer.shard.count]);
    }
    if offer.dedup.store > 0 {
        caps.extend([CAP_DEDUP, 8]);
        caps.extend(offer.dedup.store.to_be_bytes());
        if offer.dedup.inventory {
            caps.extend([CAP_DEDUP_INVENTORY, 0]);
        }
    }
    if let Some(port) = offer.lane {
        caps.extend([CAP_LANE, 2]);
        caps.extend(port.to_be_bytes());
    }
    caps
}

/// The peer's lane port (none when it offers none, or port 0, or a malformed value).
fn peer_lane(payload: &[u8]) -> Option<u16> {
    match capability(payload, CAP_LANE) {
        Some(&[hi, lo]) => Some(u16::from_be_bytes([hi, lo])).filter(|p| *p != 0),
        _ => None,
    }
}

/// The peer's dedup offer (store 0 when it offers none, or malformed: it then gets plain
/// frames, and no inventory).
fn peer_dedup(payload: &[u8]) -> DedupOffer {
    let store = match capability(payload, CAP_DEDUP).map(<[u8; 8]>::try_from) {
        Some(Ok(bytes)) => u64::from_be_bytes(bytes),
        _ => 0,
    };
    DedupOffer {
        store,
        inventory: store > 0 && capability(payload, CAP_DEDUP_INVENTORY).is_some(),
    }
}

/// The value of the first capability of type `kind` (none in a malformed list).
fn capability(payload: &[u8], kind: u8) -> Option<&[u8]> {
    let mut rest = payload;
    while let [k, len, tail @ ..] = rest {
        let len = *len as usize;
        let value = tail.get(..len)?;
        if *k == kind {
            return Some(value);
        }
        rest = &tail[len..];
    }
    None
}

/// The peer's codecs from its capabilities (a malformed list counts as none: the worst it
/// can do is keep frames plain).
fn peer_codecs(payload: &[u8]) -> CodecSet {
    match capability(payload, CAP_CODECS) {
        Some([set, ..]) => CodecSet(set & CodecSet::SUPPORTED.0),
        _ => CodecSet::default(),
    }
}

/// The peer's shard: one of one when it names none. A malformed value (index not below
/// count) is kept as it is, so that it fails the comparison with ours and is named.
fn peer_shard(payload: &[u8]) -> Shard {
    match capability(payload, CAP_SHARD) {
        Some([index, count, ..]) => Shard {
            index: *index,
            count: *count,
        },
        _ => Shard::ONE,
    }
}

/// Both ends of a connection must be the same shard of equally sharded gateways.
fn check_shard(peer: Shard, ours: Shard) -> Result<(), HandshakeError> {
    if peer == ours {
        Ok(())
    } else {
        Err(HandshakeError::ShardMismatch { peer, ours })
    }
}

impl fmt::Debug for TrafficKeys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("TrafficKeys(..)")
    }
}

fn builder<'a>(
    local: &'a StaticKeypair,
    psk: Option<&'a PresharedKey>,
    prologue: &'a [u8],
) -> Result<snow::Builder<'a>, HandshakeError> {
    let mut b = snow::Builder::new(noise_params(psk.is_some()))
        .local_private_key(&local.private)
        .map_err(HandshakeError::Noise)?
        .prologue(prologue)
        .map_err(HandshakeError::Noise)?;
    if let Some(psk) = psk {
        b = b.psk(1, &psk.0).map_err(HandshakeError::Noise)?;
    }
    Ok(b)
}

/// The dialling side of a handshake.
pub struct Initiator {
    hs: snow::HandshakeState,
    shard: Shard,
}

impl Initiator {
    /// Starts a handshake; returns the state, and the bytes to send: the
    /// prelude followed by Noise message 1 (length-prefixed by the caller).
    pub fn start(
        local: &StaticKeypair,
        peer: &PublicKey,
        psk: Option<&PresharedKey>,
        data_flow: bool,
    ) -> Result<(Initiator, Prelude, Vec<u8>), HandshakeError> {
        Initiator::start_for(local, peer, psk, data_flow, Shard::ONE)
    }

    /// [`Initiator::start`] offering `offer`: its shard (a sharded DPDK gateway) and its
    /// dedup store.
    pub fn start_for(
        local: &StaticKeypair,
        peer: &PublicKey,
        psk: Option<&PresharedKey>,
        data_flow: bool,
        offer: impl Into<Offer>,
    ) -> Result<(Initiator, Prelude, Vec<u8>), HandshakeError> {
        let offer = offer.into();
        let mut flags = 0;
        if psk.is_some() {
            flags |= FLAG_PSK;
        }
        if data_flow {
            flags |= FLAG_DATA_FLOW;
        }
        let prelude = Prelude {
            version: VERSION,
            flags,
        };
        let prologue = prelude.encode();
        let mut hs = builder(local, psk, &prologue)?
            .remote_public_key(&peer.0)
            .map_err(HandshakeError::Noise)?
            .build_initiator()
            .map_err(HandshakeError::Noise)?;
        let mut buf = vec![0u8; NOISE_BUF];
        let n = hs
            .write_message(&capabilities(offer), &mut buf)
            .map_err(HandshakeError::Noise)?;
        buf.truncate(n);
        let shard = offer.shard;
        Ok((Initiator { hs, shard }, prelude, buf))
    }

    /// Consumes the responder's message 2 and yields the traffic keys.
    pub fn finish(mut self, message2: &[u8]) -> Result<TrafficKeys, HandshakeError> {
        let mut payload = [0u8; NOISE_BUF];
        let n = self
            .hs
            .read_message(message2, &mut payload)
            .map_err(auth_err)?;
        // An acceptor from before shards ignores ours and answers for one.
        check_shard(peer_shard(&payload[..n]), self.shard)?;
        let (i2r, r2i) = self.hs.dangerously_get_raw_split();
        Ok(TrafficKeys {
            send: i2r,
            recv: r2i,
            peer_codecs: peer_codecs(&payload[..n]),
            peer_dedup: peer_dedup(&payload[..n]),
            peer_lane: peer_lane(&payload[..n]),
        })
    }
}

/// The accepting side of a handshake.
pub struct Responder {
    hs: snow::HandshakeState,
    peer_codecs: CodecSet,
    peer_shard: Shard,
    peer_dedup: DedupOffer,
    peer_lane: Option<u16>,
    offer: Offer,
}

impl Responder {
    /// Checks the prelude against this gateway's version and psk setting.
    pub fn new(
        local: &StaticKeypair,
        psk: Option<&PresharedKey>,
        prelude: &Prelude,
    ) -> Result<Responder, HandshakeError> {
        if prelude.version != VERSION {
            return Err(HandshakeError::VersionMismatch {
                theirs: prelude.version,
                ours: VERSION,
            });
        }
        let has = |b: bool| if b { "uses one" } else { "has none" };
        if prelude.psk() != psk.is_some() {
            return Err(HandshakeError::PskMismatch {
                peer: has(prelude.psk()),
                ours: has(psk.is_some()),
            });
        }
        let prologue = prelude.encode();
        let hs = builder(local, psk, &prologue)?
            .build_responder()
            .map_err(HandshakeError::Noise)?;
        Ok(Responder {
            hs,
            peer_codecs: CodecSet::default(),
            peer_shard: Shard::ONE,
            peer_dedup: DedupOffer::default(),
            peer_lane: None,
            offer: Shard::ONE.into(),
        })
    }

    /// What this end offers: its shard (a sharded DPDK gateway; one of one by default) and
    /// its dedup store (none by default).
    pub fn with_offer(mut self, offer: impl Into<Offer>) -> Responder {
        self.offer = offer.into();
        self
    }

    /// Reads message 1 and returns the initiator's static public key, which
    /// the caller must check before calling [`Responder::accept`].
    pub fn read_message1(&mut self, message1: &[u8]) -> Result<PublicKey, HandshakeError> {
        let mut payload = [0u8; NOISE_BUF];
        let n = self
            .hs
            .read_message(message1, &mut payload)
            .map_err(auth_err)?;
        self.peer_codecs = peer_codecs(&payload[..n]);
        self.peer_shard = peer_shard(&payload[..n]);
        self.peer_dedup = peer_dedup(&payload[..n]);
        self.peer_lane = peer_lane(&payload[..n]);
        let key = self
            .hs
            .get_remote_static()
            .and_then(|k| <[u8; 32]>::try_from(k).ok())
            .ok_or(HandshakeError::Authentication)?;
        Ok(PublicKey(key))
    }

    /// Writes message 2 and yields the traffic keys; refuses (writes nothing) a connection
    /// the peer meant for another shard.
    pub fn accept(mut self) -> Result<(Vec<u8>, TrafficKeys), HandshakeError> {
        check_shard(self.peer_shard, self.offer.shard)?;
        let mut buf = vec![0u8; NOISE_BUF];
        let n = self
            .hs
            .write_message(&capabilities(self.offer), &mut buf)
            .map_err(HandshakeError::Noise)?;
        buf.truncate(n);
        let (i2r, r2i) = self.hs.dangerously_get_raw_split();
        Ok((
            buf,
            TrafficKeys {
                send: r2i,
                recv: i2r,
                peer_codecs: self.peer_codecs,
                peer_dedup: self.peer_dedup,
                peer_lane: self.peer_lane,
            },
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(
        a: &StaticKeypair,
        b_known_by_a: &PublicKey,
        b: &StaticKeypair,
        psk_a: Option<&PresharedKey>,
        psk_b: Option<&PresharedKey>,
    ) -> Result<(TrafficKeys, TrafficKeys, PublicKey), HandshakeError> {
        let (init, prelude, m1) = Initiator::start(a, b_known_by_a, psk_a, false)?;
        let mut resp = Responder::new(b, psk_b, &prelude)?;
        let seen = resp.read_message1(&m1)?;
        let (m2, kb) = resp.accept()?;
        let ka = init.finish(&m2)?;
        Ok((ka, kb, seen))
    }

    #[test]
    fn both_sides_agree_on_keys() {
        let a = StaticKeypair::generate().unwrap();
        let b = StaticKeypair::generate().unwrap();
        let (ka, kb, seen) = run(&a, &b.public, &b, None, None).unwrap();
        assert_eq!(seen, a.public);
        assert_eq!(ka.send, kb.recv);
        assert_eq!(ka.recv, kb.send);
        assert_ne!(ka.send, ka.recv);
        // every handshake yields new keys (ephemeral DH)
        let (ka2, _, _) = run(&a, &b.public, &b, None, None).unwrap();
        assert_ne!(ka.send, ka2.send);
    }

    #[test]
    fn wrong_responder_key_fails_at_responder() {
        let a = StaticKeypair::generate().unwrap();
        let b = StaticKeypair::generate().unwrap();
        let other = StaticKeypair::generate().unwrap();
        let err = run(&a, &other.public, &b, None, None).unwrap_err();
        assert!(matches!(err, HandshakeError::Authentication));
    }

    #[test]
    fn psk_must_match() {
        let a = StaticKeypair::generate().unwrap();
        let b = StaticKeypair::generate().unwrap();
        let p1 = PresharedKey([1; 32]);
        let p2 = PresharedKey([2; 32]);
        assert!(run(&a, &b.public, &b, Some(&p1), Some(&p1)).is_ok());
        assert!(matches!(
            run(&a, &b.public, &b, Some(&p1), Some(&p2)).unwrap_err(),
            HandshakeError::Authentication
        ));
        assert!(matches!(
            run(&a, &b.public, &b, Some(&p1), None).unwrap_err(),
            HandshakeError::PskMismatch { .. }
        ));
    }

    #[test]
    fn both_sides_learn_the_codecs_and_tolerate_odd_capabilities() {
        let a = StaticKeypair::generate().unwrap();
        let b = StaticKeypair::generate().unwrap();
        let (ka, kb, _) = run(&a, &b.public, &b, None, None).unwrap();
        assert_eq!(ka.peer_codecs, CodecSet::SUPPORTED);
        assert_eq!(kb.peer_codecs, CodecSet::SUPPORTED);
        // An older peer's empty payload, unknown capabilities, truncated lists.
        assert_eq!(peer_codecs(&[]), CodecSet::default());
        assert_eq!(
            peer_codecs(&[9, 2, 0, 0, CAP_CODECS, 1, 0b010]),
            CodecSet(0b010)
        );
        assert_eq!(peer_codecs(&[CAP_CODECS, 5, 1]), CodecSet::default());
        assert_eq!(peer_codecs(&[CAP_CODECS, 1, 0xff]), CodecSet::SUPPORTED);
    }

    /// A responder from before capabilities reads message 1 into a 256-byte payload buffer
    /// and sends an empty payload back: both still work.
    #[test]
    fn an_older_peer_without_capabilities_still_handshakes() {
        let a = StaticKeypair::generate().unwrap();
        let b = StaticKeypair::generate().unwrap();
        let (init, prelude, m1) = Initiator::start(&a, &b.public, None, true).unwrap();
        let prologue = prelude.encode();
        let mut old = builder(&b, None, &prologue)
            .unwrap()
            .build_responder()
            .unwrap();
        let mut payload = [0u8; 256];
        old.read_message(&m1, &mut payload).unwrap();
        let mut m2 = vec![0u8; NOISE_BUF];
        let n = old.write_message(&[], &mut m2).unwrap();
        m2.truncate(n);
        let keys = init.finish(&m2).unwrap();
        assert!(
            keys.peer_codecs.is_empty(),
            "an older peer gets plain frames"
        );
    }

    /// Each end learns the other's dedup store; an end that offers none (or a malformed
    /// value) counts as none, so it gets plain frames.
    #[test]
    fn both_ends_learn_the_dedup_store_offered() {
        let a = StaticKeypair::generate().unwrap();
        let b = StaticKeypair::generate().unwrap();
        let offer = |store, inventory| Offer {
            shard: Shard::ONE,
            dedup: DedupOffer { store, inventory },
            lane: None,
        };
        for (ours, theirs) in [
            (offer(1 << 30, true), offer(0, false)),
            (offer(0, false), offer(512 << 20, true)),
            (offer(7, false), offer(9, true)),
        ] {
            let (init, prelude, m1) =
                Initiator::start_for(&a, &b.public, None, false, ours).unwrap();
            let mut resp = Responder::new(&b, None, &prelude)
                .unwrap()
                .with_offer(theirs);
            resp.read_message1(&m1).unwrap();
            let (m2, kb) = resp.accept().unwrap();
            let ka = init.finish(&m2).unwrap();
            assert_eq!((ka.peer_dedup, kb.peer_dedup), (theirs.dedup, ours.dedup));
        }
        assert_eq!(
            peer_dedup(&[CAP_DEDUP, 4, 0, 0, 0, 1, CAP_DEDUP_INVENTORY, 0]),
            DedupOffer::default(),
            "wrong length"
        );
        assert_eq!(peer_dedup(&[CAP_DEDUP, 8, 0, 0]).store, 0, "truncated");
        assert_eq!(
            peer_dedup(&[CAP_DEDUP_INVENTORY, 0]),
            DedupOffer::default(),
            "an inventory without a store"
        );
    }

    /// Each end learns the other's lane port; none offered, port 0 or a malformed value is
    /// no lane.
    #[test]
    fn both_ends_learn_the_lane_port_offered() {
        let a = StaticKeypair::generate().unwrap();
        let b = StaticKeypair::generate().unwrap();
        let offer = |lane| Offer {
            lane,
            ..Offer::from(Shard::ONE)
        };
        for (ours, theirs) in [(Some(7700), None), (None, Some(40_000)), (Some(1), Some(2))] {
            let (init, prelude, m1) =
                Initiator::start_for(&a, &b.public, None, false, offer(ours)).unwrap();
            let mut resp = Responder::new(&b, None, &prelude)
                .unwrap()
                .with_offer(offer(theirs));
            resp.read_message1(&m1).unwrap();
            let (m2, kb) = resp.accept().unwrap();
            let ka = init.finish(&m2).unwrap();
            assert_eq!((ka.peer_lane, kb.peer_lane), (theirs, ours));
        }
        assert_eq!(peer_lane(&[CAP_LANE, 2, 0x1e, 0x14]), Some(7700));
        assert_eq!(peer_lane(&[CAP_LANE, 2, 0, 0]), None, "port 0");
        assert_eq!(peer_lane(&[CAP_LANE, 3, 0, 1, 2]), None, "wrong length");
        assert_eq!(peer_lane(&[CAP_LANE, 2, 1]), None, "truncated");
    }

    /// Shards of equally sharded gateways meet; anything else is refused by name on the
    /// acceptor, before it answers (a kernel acceptor is one of one), and on the dialler when
    /// an acceptor that knows no shards answers for one.
    #[test]
    fn both_ends_must_be_the_same_shard() {
        let a = StaticKeypair::generate().unwrap();
        let b = StaticKeypair::generate().unwrap();
        let meet = |ours: Shard, theirs: Shard| {
            let (init, prelude, m1) =
                Initiator::start_for(&a, &b.public, None, true, ours).unwrap();
            let mut resp = Responder::new(&b, None, &prelude)
                .unwrap()
                .with_offer(theirs);
            resp.read_message1(&m1).unwrap();
            let (m2, _) = resp.accept()?;
            init.finish(&m2).map(|_| ())
        };
        let s = |i, n| Shard::new(i, n).unwrap();
        assert!(meet(s(1, 2), s(1, 2)).is_ok());
        assert!(meet(Shard::ONE, Shard::ONE).is_ok());
        for (ours, theirs) in [
            (s(0, 2), s(1, 2)),
            (s(1, 2), Shard::ONE),
            (Shard::ONE, s(0, 2)),
            (s(1, 3), s(1, 2)),
        ] {
            let err = meet(ours, theirs).unwrap_err();
            assert!(
                matches!(err, HandshakeError::ShardMismatch { peer, ours: o } if peer == ours && o == theirs),
                "{ours} -> {theirs}: {err}"
            );
        }
        let err = meet(s(1, 2), Shard::ONE).unwrap_err().to_string();
        assert!(
            err.contains("shard 1 of 2") && err.contains("dpdk.tcp_lcores"),
            "{err}"
        );

        // An acceptor from before shards answers for one: the dialler names it.
        let (init, prelude, m1) =
            Initiator::start_for(&a, &b.public, None, false, s(1, 2)).unwrap();
        let mut old = builder(&b, None, &prelude.encode())
            .unwrap()
            .build_responder()
            .unwrap();
        old.read_message(&m1, &mut [0u8; 256]).unwrap();
        let mut m2 = vec![0u8; NOISE_BUF];
        let n = old
            .write_message(&capabilities(Shard::ONE), &mut m2)
            .unwrap();
        m2.truncate(n);
        assert!(matches!(
            init.finish(&m2),
            Err(HandshakeError::ShardMismatch { .. })
        ));
        // Malformed or absent values.
        assert_eq!(peer_shard(&[]), Shard::ONE);
        assert_eq!(peer_shard(&[CAP_SHARD, 1, 0]), Shard::ONE);
        assert_eq!(peer_shard(&[CAP_SHARD, 2, 3]), Shard::ONE, "truncated list");
        assert_eq!(
            peer_shard(&[CAP_SHARD, 2, 3, 2]),
            Shard { index: 3, count: 2 }
        );
    }

    #[test]
    fn version_mismatch_is_named() {
        let b = StaticKeypair::generate().unwrap();
        let prelude = Prelude {
            version: 9,
            flags: 0,
        };
        let err = Responder::new(&b, None, &prelude).err().unwrap();
        assert!(err.to_string().contains("version 9"));
    }
}

//! The lane: the tunnel's frames as datagrams with forward error correction.
//!
//! On a lossy WAN a TCP flow repairs each lost segment a round trip after it
//! was sent, and everything behind it on that flow waits. When a migration's
//! last bytes cross, that round trip is part of the guest's pause: at 0.5 %
//! loss and 100 ms every round trip of data holds ~40 losses, and the pause
//! through the pair was one round trip longer than without loss
//! (docs/BENCHMARKS.md, "The lossy tail on datagrams"). Sending repairs after
//! the fact cannot beat that round trip; parity sent with the data can. So
//! each frame travels as one Reed-Solomon group (`fec`) of datagrams, and the
//! far end rebuilds it from any `data` of them as they land.
//!
//! - **Crypto** (`seal`): AES-256-GCM per datagram, the packet number as
//!   nonce, a replay window; keys derived from the control connection's
//!   ([`LaneKeys::derive`]), fresh with each one.
//! - **Reliability**: the receiver acks rebuilt groups (`receiver`); a group
//!   not acked in time is lost (`sender`) and its frame goes again on a data
//!   flow, which is reliable. The session layer's acks and resends stay as
//!   they are: the lane is one more carrier of frames.
//! - **Congestion**: none of its own. The lane reports what it delivered as a
//!   data flow does ([`Lane::progress`]), and the tunnel pacer paces it with
//!   the rest (`session::pacer`).
//!
//! Sans-IO like the rest of the core: the datapath hands in datagrams and
//! `now`, and sends what comes out.

pub mod bundle;
pub mod fec;
pub mod receiver;
pub mod seal;
pub mod sender;
pub mod wire;

use ring::hkdf;

use self::fec::{Codecs, FecError, Shape};
use self::receiver::{LaneReceiver, ReceiverCounters};
use self::seal::{LaneOpener, LaneSealer, SealError};
use self::sender::{LaneSender, SenderCounters};
use self::wire::{Ack, ShardHeader, WireError, ACK_HEADER_LEN, SHARD_HEADER_LEN, TAG_LEN};
use crate::session::pacer::FlowProgress;
use crate::session::Instant;

/// Bytes of IPv4 and UDP headers before a datagram.
pub const IP_UDP_HEADERS: usize = 28;

/// How the lane cuts frames.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LaneConfig {
    /// A shard's bytes at most: a datagram is this plus 48 (header and tag),
    /// plus IP and UDP's 28 on the wire.
    pub max_shard: usize,
    /// Parity shards per frame.
    pub parity: u8,
}

impl Default for LaneConfig {
    /// 1400-byte shards: 1476-byte packets fit a 1500-byte MTU. Four parity
    /// shards to a 64 KiB frame's 47 leave a frame unrebuilt about 7 times in
    /// a million at 0.5 % random loss.
    fn default() -> Self {
        LaneConfig {
            max_shard: 1400,
            parity: 4,
        }
    }
}

/// Each direction's lane secret.
#[derive(Clone, PartialEq, Eq)]
pub struct LaneKeys {
    pub send: [u8; 32],
    pub recv: [u8; 32],
}

impl std::fmt::Debug for LaneKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("LaneKeys(..)")
    }
}

impl LaneKeys {
    /// The lane's secrets from a control connection's traffic keys:
    /// HKDF-SHA256 of each direction's key with the label "lmas lane", so a
    /// lane key opens no record and a record key no datagram.
    pub fn derive(control_send: &[u8; 32], control_recv: &[u8; 32]) -> LaneKeys {
        let expand = |secret: &[u8; 32]| {
            let prk = hkdf::Salt::new(hkdf::HKDF_SHA256, &[]).extract(secret);
            let mut out = [0u8; 32];
            prk.expand(&[b"lmas lane"], hkdf::HKDF_SHA256)
                .and_then(|okm| okm.fill(&mut out))
                .expect("32 bytes is a valid HKDF-SHA256 output length");
            out
        };
        LaneKeys {
            send: expand(control_send),
            recv: expand(control_recv),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LaneError {
    #[error(transparent)]
    Wire(#[from] WireError),
    #[error(transparent)]
    Seal(#[from] SealError),
    #[error("lane group: {0}")]
    Fec(#[from] FecError),
}

/// What the lane counted, for status and metrics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LaneCounters {
    pub sender: SenderCounters,
    pub receiver: ReceiverCounters,
    pub datagrams_out: u64,
    pub datagrams_in: u64,
    /// Datagrams refused: malformed, forged or replayed.
    pub refused: u64,
}

/// One end of a tunnel's lane. `T` is what the caller needs back when a frame
/// is lost (the range of the stream it carried).
#[derive(Debug)]
pub struct Lane<T> {
    config: LaneConfig,
    sealer: LaneSealer,
    opener: LaneOpener,
    codecs: Codecs,
    sender: LaneSender<T>,
    receiver: LaneReceiver,
    counters: LaneCounters,
}

impl<T> Lane<T> {
    pub fn new(keys: &LaneKeys, config: LaneConfig) -> Self {
        Lane {
            config,
            sealer: LaneSealer::new(&keys.send),
            opener: LaneOpener::new(&keys.recv),
            codecs: Codecs::default(),
            sender: LaneSender::default(),
            receiver: LaneReceiver::default(),
            counters: LaneCounters::default(),
        }
    }

    /// Appends the datagrams of `frame` to `out`, back to back and all of the
    /// returned length (one GSO send); `token` comes back from
    /// [`Lane::poll_lost`] if the frame is lost.
    pub fn send_frame(
        &mut self,
        now: Instant,
        frame: &[u8],
        token: T,
        out: &mut Vec<u8>,
    ) -> Result<usize, LaneError> {
        let shape = Shape::for_len(frame.len(), self.config.max_shard, self.config.parity)?;
        let shards = self.codecs.encode(frame, shape)?;
        let shard_len = usize::from(shape.shard_len);
        // Numbers for the whole group first: a key that runs out mid-group sends none of it.
        let first = self.sealer.next_packet()?;
        if first + shape.total() as u64 > seal::MAX_PACKETS {
            return Err(SealError::KeyExhausted(first).into());
        }
        let mut header = ShardHeader {
            packet: first,
            group: self.sender.next_group(),
            floor: self.sender.floor(),
            index: 0,
            shape,
        };
        let start = out.len();
        for (index, shard) in shards.chunks(shard_len).enumerate() {
            header.index = index as u8;
            header.packet = self.sealer.next_packet()?;
            if let Err(e) = self.sealer.seal(&header.encode(), shard, out) {
                out.truncate(start);
                return Err(e.into());
            }
        }
        self.sender
            .sent(now, frame.len() as u64, first, header.packet, token);
        self.counters.datagrams_out += shape.total() as u64;
        Ok(SHARD_HEADER_LEN + shard_len + TAG_LEN)
    }

    /// One datagram from the peer's lane address, opened in place: the frame
    /// a shard completed, if any (acks are taken in here).
    pub fn handle_datagram(
        &mut self,
        now: Instant,
        datagram: &mut [u8],
    ) -> Result<Option<Vec<u8>>, LaneError> {
        self.counters.datagrams_in += 1;
        let out = self.open(now, datagram);
        if out.is_err() {
            self.counters.refused += 1;
        }
        out
    }

    fn open(&mut self, now: Instant, datagram: &mut [u8]) -> Result<Option<Vec<u8>>, LaneError> {
        let (kind, packet) = wire::peek(datagram)?;
        if kind == wire::KIND_ACK {
            if wire::datagram_len(datagram)? != datagram.len() {
                return Err(WireError::Short(datagram.len()).into());
            }
            let plain = self.opener.open(packet, ACK_HEADER_LEN, datagram)?;
            let ack = Ack::decode(&datagram[ACK_HEADER_LEN..ACK_HEADER_LEN + plain])?;
            // Acked frames need nothing more: the session layer's own acks free their bytes.
            self.sender.on_ack(now, &ack);
            return Ok(None);
        }
        let header = ShardHeader::decode(datagram)?;
        let plain = self.opener.open(packet, SHARD_HEADER_LEN, datagram)?;
        let shard = &datagram[SHARD_HEADER_LEN..SHARD_HEADER_LEN + plain];
        Ok(self.receiver.on_shard(now, &header, shard)?)
    }

    /// The sealed ack datagram to send now, if one is due.
    pub fn poll_ack(&mut self, now: Instant) -> Result<Option<Vec<u8>>, LaneError> {
        let Some(ack) = self.receiver.poll_ack(now) else {
            return Ok(None);
        };
        let packet = self.sealer.next_packet()?;
        let mut out = Vec::new();
        self.sealer
            .seal(&wire::ack_header(&ack, packet), &ack.encode()?, &mut out)?;
        self.counters.datagrams_out += 1;
        Ok(Some(out))
    }

    /// When to call [`Lane::handle_timeout`] (an ack is due or a group may be lost).
    pub fn poll_timeout(&self) -> Option<Instant> {
        match (self.receiver.ack_deadline(), self.sender.loss_deadline()) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Declares lost the groups whose time ran out (then see [`Lane::poll_lost`]
    /// and [`Lane::poll_ack`]).
    pub fn handle_timeout(&mut self, now: Instant) {
        self.sender.detect_lost(now);
    }

    /// A lost frame's token, oldest first.
    pub fn poll_lost(&mut self) -> Option<T> {
        self.sender.poll_lost()
    }

    /// Frame bytes sent and neither acked nor lost.
    pub fn outstanding(&self) -> u64 {
        self.sender.outstanding()
    }

    /// What the lane delivered, for the tunnel pacer.
    pub fn progress(&self) -> FlowProgress {
        self.sender.progress()
    }

    pub fn counters(&self) -> LaneCounters {
        LaneCounters {
            sender: self.sender.counters(),
            receiver: self.receiver.counters(),
            ..self.counters
        }
    }
}

#[cfg(test)]
mod tests;

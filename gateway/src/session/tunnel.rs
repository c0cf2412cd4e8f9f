//! The sans-IO core of one tunnel: all sessions between two gateways.
//!
//! A datapath drives it:
//! - endpoint side: [`TunnelCore::open`], [`TunnelCore::write`],
//!   [`TunnelCore::finish`], [`TunnelCore::read`], [`TunnelCore::reset`],
//!   [`TunnelCore::accept`] / [`TunnelCore::refuse`];
//! - peer side: [`TunnelCore::handle_message`] for every decrypted message,
//!   [`TunnelCore::poll_frame`] when a data flow can send,
//!   [`TunnelCore::poll_control`] when the control connection can send,
//!   [`TunnelCore::flow_lost`] when a data flow dies;
//! - time: [`TunnelCore::poll_timeout`] / [`TunnelCore::handle_timeout`].
//!
//! After each call the datapath drains [`TunnelCore::poll_event`] to learn
//! whom to wake. Nothing here reads a clock or touches a socket.

use std::collections::VecDeque;

use rustc_hash::FxHashMap;
use std::net::SocketAddr;

use bytes::Bytes;

use super::dedup::{
    DedupError, DedupFigures, DedupStores, Received, SessionDedup, SharedStore, TunnelDedup,
    TAIL_HOLD_US,
};
use super::pacer::{FlowProgress, PaceSnapshot, TunnelPacer};
use super::recv::{ReadOutcome, Reassembler, ReassemblyError};
use super::scheduler::{Carried, Scheduler};
use super::send::SendStream;
use super::shares::{GroupKey, GroupSnapshot, Origin, SharePolicy};
use super::unsent::UnsentPools;
use super::{Counters, DedupConfig, Instant, Limits};
use lane::LaneSlot;

pub mod lane;
use crate::crypto::DedupOffer;
use crate::protocol::message::DATA_FLAG_DEDUP;
use crate::protocol::packed::MAX_UNPACKED_LEN;
use crate::protocol::{DataFrame, Message, RefuseReason, ResetReason, SessionId};
use crate::transform::{PackFigures, PackNote};

/// Which end of the tunnel this core is; decides session id parity.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    Dialer,
    Acceptor,
}

/// Something the datapath must act on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// The peer wants a connection to `target`; answer with `accept` or `refuse`.
    ConnectRequested {
        session: SessionId,
        target: SocketAddr,
    },
    /// Our `open` succeeded: the far gateway is connected to the target.
    Accepted(SessionId),
    Refused {
        session: SessionId,
        reason: RefuseReason,
        detail: String,
    },
    /// The session is gone; reset the local endpoint.
    Reset {
        session: SessionId,
        reason: ResetReason,
    },
    /// In-order data or end-of-stream is ready for `read`.
    Readable(SessionId),
    /// The session's send buffer has room again.
    Writable(SessionId),
    /// The global buffer budget has room again.
    CreditFreed,
    /// Frames are waiting: data flows should pull.
    FramesReady,
    /// Control messages are waiting.
    ControlReady,
    /// The control queue fell below its bound: reading the peer's control
    /// connection may go on ([`TunnelCore::control_backlogged`]).
    ControlRoom,
    /// Bytes waiting for endpoints fell below the receive budget: reading
    /// the data flows may go on ([`TunnelCore::receive_paused`]).
    ReceiveRoom,
    /// Both directions completed; the session was removed.
    Closed(SessionId),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// We sent `Open` and wait for `Accept`.
    Opening,
    /// The peer sent `Open`; the datapath is connecting to the target.
    Connecting,
    Open,
}

#[derive(Debug)]
struct Session {
    state: State,
    /// Where the far side connects (kept to repeat `Open` after a resync).
    target: SocketAddr,
    /// The migration it belongs to, for sharing the tunnel.
    group: GroupKey,
    send: SendStream,
    recv: Reassembler,
    /// Whether the session sits in the scheduler's ready queue.
    queued: bool,
    /// Cumulative ack we last sent, and since when a newer one is pending.
    ack_sent: u64,
    ack_pending_since: Option<Instant>,
    /// What packing its frames (ours) and unpacking the peer's did (see [`TunnelCore::note_packing`]).
    packing: PackFigures,
    /// Its stream's chunks, while frames we send go through dedup.
    dedup_send: Option<SessionDedup>,
    /// Since when the start of a chunk waits for its end ([`super::dedup::TAIL_HOLD_US`]).
    tail_held_since: Option<Instant>,
    /// What dedup did for its frames, both ways.
    dedup: DedupFigures,
    /// The end of the furthest range of the peer's stream we asked for again
    /// (`DedupMiss`): a resync asks again for whatever below it has not arrived, since the
    /// request may have died with the control connection.
    miss_end: u64,
}

/// One session's position in both directions (see [`TunnelCore::snapshot`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionSnapshot {
    pub id: SessionId,
    pub state: &'static str,
    pub target: SocketAddr,
    /// Bytes the endpoint wrote towards the peer.
    pub written: u64,
    /// Of those, acknowledged by the peer.
    pub acked: u64,
    /// Bytes delivered to the endpoint from the peer.
    pub delivered: u64,
    /// What packing its frames and unpacking the peer's did.
    pub packing: PackFigures,
    /// What dedup did for its frames, both ways.
    pub dedup: DedupFigures,
}

/// Why an endpoint-side call could not proceed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SessionError {
    #[error("session {0} is gone")]
    Gone(SessionId),
    #[error("too many sessions (limit {0})")]
    TooMany(usize),
}

pub struct TunnelCore {
    side: Side,
    limits: Limits,
    next_id: u64,
    /// Between two ids this side allocates: 2, or 2 × shards (see `for_shard`).
    id_step: u64,
    sessions: FxHashMap<SessionId, Session>,
    scheduler: Scheduler,
    control: VecDeque<Message>,
    events: VecDeque<Event>,
    /// Sum of all sessions' send buffers, as charged (payload and pieces).
    buffered: u64,
    /// Sum of all sessions' in-order received bytes waiting for their
    /// endpoints, as charged (payload and pieces).
    ready: u64,
    counters: Counters,
    /// The final messages of recently ended sessions (reset, refused, or
    /// fin + final ack), repeated after a resync in case the originals were
    /// lost with the control connection.
    tombstones: VecDeque<(SessionId, Vec<Message>)>,
    /// Above the highest session id the peer has opened: ids it allocates grow, so an open
    /// below this that is neither live nor remembered reuses an old id.
    peer_next_id: u64,
    /// What packing and unpacking did for the tunnel, ended sessions included.
    packing: PackFigures,
    /// Paces the tunnel at the bottleneck its flows show (when the policy says so).
    pacer: TunnelPacer,
    /// What each migration may take from its endpoints ahead of the flows.
    unsent: UnsentPools,
    /// The index of the peer's dedup store, and ours.
    dedup: TunnelDedup,
    /// The lane's carrier slot (after the data flows), and whether it is up.
    lane: LaneSlot,
}

/// What a reassembler's bytes waiting for the endpoint cost in memory.
fn charged_ready(r: &crate::session::Reassembler) -> u64 {
    let (bytes, pieces) = r.ready();
    bytes + pieces as u64 * super::send::ENTRY_OVERHEAD
}

/// How many ended sessions are remembered for resyncs.
const TOMBSTONES: usize = 4096;

impl TunnelCore {
    pub fn new(side: Side, limits: Limits, flows: usize) -> Self {
        TunnelCore {
            side,
            next_id: match side {
                Side::Dialer => 0,
                Side::Acceptor => 1,
            },
            id_step: 2,
            // One carrier slot more than the flows: the lane's.
            scheduler: Scheduler::new(flows + 1, limits.frame_len),
            pacer: TunnelPacer::new(flows + 1),
            unsent: UnsentPools::new(
                limits.unsent_buffer,
                limits.frame_len as u64,
                limits.unsent_time_us,
            ),
            limits,
            sessions: FxHashMap::default(),
            control: VecDeque::new(),
            events: VecDeque::new(),
            buffered: 0,
            ready: 0,
            counters: Counters::default(),
            tombstones: VecDeque::new(),
            peer_next_id: 0,
            packing: PackFigures::default(),
            dedup: TunnelDedup::new(
                DedupConfig {
                    mode: super::DedupMode::Off,
                    ..DedupConfig::default()
                },
                None,
            ),
            lane: LaneSlot::new(flows),
        }
    }

    /// Dedup as `config` says (`[wan] dedup`; off by default here): the store offered to the
    /// peer (`store`, one the gateway keeps across tunnels, or else a new one in memory), and
    /// references to what the peer's holds once it offered one
    /// ([`TunnelCore::set_peer_dedup`]).
    pub fn with_dedup(mut self, config: DedupConfig, store: Option<SharedStore>) -> Self {
        self.dedup = TunnelDedup::new(config, store);
        self
    }

    /// The peer's control connection attached, and its handshake offered `offer` (store 0:
    /// none). Sessions opened from now on send references to what its store holds. On a new
    /// tunnel (`new_tunnel`, not a resumption), a peer that asks for it gets the inventory of
    /// our store on the control connection.
    pub fn set_peer_dedup(&mut self, offer: DedupOffer, new_tunnel: bool) {
        self.dedup.set_peer(offer, new_tunnel);
        if self.dedup.inventory_ready() && self.control.is_empty() {
            self.events.push_back(Event::ControlReady);
        }
    }

    /// What dedup did for this tunnel, ended sessions included.
    pub fn dedup_figures(&self) -> &DedupFigures {
        self.dedup.figures()
    }

    /// The tunnel's dedup store and index.
    pub fn dedup_stores(&self) -> DedupStores {
        self.dedup.stores()
    }

    /// The core of shard `shard` of a sharded gateway's sub-tunnels: its session ids are
    /// `2 × (index + count × n) + side`, so the shards' ids never meet (logs, status and
    /// metrics name one session each) and each sub-tunnel's still grow and keep their parity.
    pub fn for_shard(mut self, shard: crate::protocol::handshake::Shard) -> Self {
        self.next_id += 2 * shard.index as u64;
        self.id_step = 2 * shard.count.max(1) as u64;
        self
    }

    pub fn counters(&self) -> &Counters {
        &self.counters
    }

    /// What packing and unpacking did for this tunnel, ended sessions included.
    pub fn packing(&self) -> &PackFigures {
        &self.packing
    }

    /// Credits what packing (or unpacking) one frame did to its session and to the tunnel.
    /// The datapath calls it with each note the sealing and opening steps return. A session
    /// that ended meanwhile (its last frames are sealed after it closed here) counts for the
    /// tunnel only: figures live in the session, so they go when it goes.
    pub fn note_packing(&mut self, note: PackNote) {
        self.packing.add(&note.figures);
        let session = self.sessions.get_mut(&note.session);
        let group = session.as_ref().map(|s| s.group);
        if let Some(s) = session {
            s.packing.add(&note.figures);
        }
        // Caps count bytes on the wire: the frame was charged before it was packed.
        let saved = note.figures.bytes_in.saturating_sub(note.figures.bytes_out);
        if saved > 0 {
            self.scheduler.refund(group, saved);
        }
    }

    pub fn session_count(&self) -> usize {
        self.sessions.len()
    }

    pub fn buffered(&self) -> u64 {
        self.buffered
    }

    /// Received bytes (and their bookkeeping) waiting for endpoints to read.
    pub fn ready(&self) -> u64 {
        self.ready
    }

    /// True while bytes waiting for endpoints fill the receive budget: the
    /// datapath stops reading data flows until [`Event::ReceiveRoom`]. Only
    /// in-order bytes count: out-of-order ones wait for a frame on some flow,
    /// which must still be read (and they are bounded by the windows).
    pub fn receive_paused(&self) -> bool {
        self.ready >= self.limits.receive_budget
    }

    /// True while the control queue is over its bound: the datapath stops
    /// reading the peer's control connection until [`Event::ControlRoom`],
    /// so a peer that sends pings or opens and never reads the answers
    /// cannot grow it. An honest peer never gets there: it causes at most an
    /// open, accept, fin and reset per session, and acks, on either side.
    pub fn control_backlogged(&self) -> bool {
        self.control.len() >= self.control_bound()
    }

    fn control_bound(&self) -> usize {
        4 * self.limits.max_sessions + 1024
    }

    /// The data flows (the lane's slot not counted).
    pub fn flow_count(&self) -> usize {
        self.lane.slot
    }

    /// Every session's position, for status output.
    pub fn snapshot(&self) -> Vec<SessionSnapshot> {
        let mut out: Vec<SessionSnapshot> = self
            .sessions
            .iter()
            .map(|(&id, s)| SessionSnapshot {
                id,
                state: match s.state {
                    State::Opening => "opening",
                    State::Connecting => "connecting",
                    State::Open => "open",
                },
                target: s.target,
                written: s.send.written(),
                acked: s.send.acked(),
                delivered: s.recv.delivered(),
                packing: s.packing,
                dedup: s.dedup,
            })
            .collect();
        out.sort_by_key(|s| s.id);
        out
    }

    // ---- endpoint side -------------------------------------------------

    /// Starts a session towards `target` on the far side, for a client
    /// from `origin` (which decides its group and weight).
    pub fn open(&mut self, target: SocketAddr, origin: Origin) -> Result<SessionId, SessionError> {
        if self.sessions.len() >= self.limits.max_sessions {
            return Err(SessionError::TooMany(self.limits.max_sessions));
        }
        let id = SessionId(self.next_id);
        self.next_id += self.id_step;
        let s = self.new_session(id, State::Opening, target, origin);
        self.sessions.insert(id, s);
        self.push_control(Message::Open {
            session: id,
            target,
            window: self.window_u32(),
        });
        Ok(id)
    }

    /// The datapath connected to the target of a `ConnectRequested`.
    pub fn accept(&mut self, id: SessionId) -> Result<(), SessionError> {
        let window = self.window_u32();
        let s = self.session_mut(id)?;
        s.state = State::Open;
        self.push_control(Message::Accept {
            session: id,
            window,
        });
        self.schedule(id);
        Ok(())
    }

    /// The datapath will not (or could not) connect to the target.
    pub fn refuse(&mut self, id: SessionId, reason: RefuseReason, detail: &str) {
        if self.remove(id).is_some() {
            let msg = Message::Refuse {
                session: id,
                reason,
                detail: detail.to_string(),
            };
            self.bury(id, vec![msg.clone()]);
            self.push_control(msg);
        }
    }

    /// How many bytes the endpoint may `write` now: within the session's
    /// window, the tunnel's global buffer and the unsent room of the session
    /// and its migration ([`super::unsent`]) (0 = wait for `Writable` or
    /// `CreditFreed`).
    pub fn send_capacity(&self, id: SessionId) -> Result<u64, SessionError> {
        let s = self.session(id)?;
        let own = self.limits.session_window.saturating_sub(s.send.buffered());
        // The write that uses this room adds one piece too (see `global_full`).
        let global = self
            .limits
            .global_buffer
            .saturating_sub(self.buffered + super::send::ENTRY_OVERHEAD);
        let main = self.scheduler.is_main_channel(id, s.group);
        let unsent = self.unsent.room(s.group, s.send.unsent(), main);
        Ok(own.min(global).min(unsent))
    }

    /// One migration's LAN window at the tunnel's rate
    /// ([`super::lan_window::migration_window`]): what an ingress listener
    /// offers a new connection before it is a session.
    pub fn lan_window(&self) -> u64 {
        super::lan_window::migration_window(self.unsent.rate())
    }

    /// The receive buffer session `id`'s endpoint socket should have: its
    /// migration's share of one LAN window ([`super::lan_window`]), which
    /// follows the tunnel's rate. `None` for sessions the peer opened: their
    /// socket's buffer is the host's.
    pub fn endpoint_receive_buffer(&self, id: SessionId) -> Result<Option<u64>, SessionError> {
        let s = self.session(id)?;
        Ok(self.is_own_id(id).then(|| {
            super::lan_window::session_share(
                self.scheduler.member_count(s.group),
                self.unsent.rate(),
            )
        }))
    }

    /// Queues endpoint bytes for the peer. May exceed `send_capacity` by at
    /// most one read's worth; the caller checks capacity before reading.
    pub fn write(&mut self, id: SessionId, data: Bytes) -> Result<(), SessionError> {
        let s = self.session_mut(id)?;
        if s.send.is_finished() {
            return Ok(()); // endpoint wrote after its own half-close: impossible on TCP
        }
        let before = s.send.charged();
        let len = data.len() as u64;
        if let Some(d) = &mut s.dedup_send {
            d.written(&data);
            // A held chunk start waits on while the endpoint writes (see `TAIL_HOLD_US`).
            s.tail_held_since = None;
        }
        s.send.push(data);
        let (charged, group) = (s.send.charged() - before, s.group);
        self.buffered += charged;
        self.unsent.added(group, len);
        self.schedule(id);
        Ok(())
    }

    /// The endpoint half-closed: send our final offset.
    pub fn finish(&mut self, id: SessionId) -> Result<(), SessionError> {
        let s = self.session_mut(id)?;
        if s.send.is_finished() {
            return Ok(());
        }
        let offset = s.send.finish();
        if let Some(d) = &mut s.dedup_send {
            d.finished();
        }
        self.push_control(Message::Fin {
            session: id,
            offset,
        });
        self.maybe_close(id);
        Ok(())
    }

    /// Takes in-order bytes for the endpoint.
    pub fn read(&mut self, now: Instant, id: SessionId) -> Result<ReadOutcome, SessionError> {
        let ack_every = self.limits.ack_every;
        let s = self.session_mut(id)?;
        let before = charged_ready(&s.recv);
        let out = s.recv.read();
        let freed = before - charged_ready(&s.recv);
        let mut send_ack = false;
        match &out {
            ReadOutcome::Data(_) => {
                if s.recv.delivered() - s.ack_sent >= ack_every {
                    send_ack = true;
                } else if s.ack_pending_since.is_none() {
                    s.ack_pending_since = Some(now);
                }
            }
            // Ack the final byte at once: the peer holds its buffer until then.
            ReadOutcome::Finished => send_ack = s.ack_sent < s.recv.delivered(),
            ReadOutcome::Blocked => {}
        }
        self.release_ready(freed);
        if send_ack {
            self.send_ack(id);
        }
        if matches!(out, ReadOutcome::Finished) {
            self.maybe_close(id);
        }
        Ok(out)
    }

    /// Aborts a session from our side (endpoint reset or error).
    pub fn reset(&mut self, id: SessionId, reason: ResetReason) {
        if self.remove(id).is_some() {
            let msg = Message::Reset {
                session: id,
                reason,
            };
            self.bury(id, vec![msg.clone()]);
            self.push_control(msg);
            self.events.push_back(Event::Reset {
                session: id,
                reason,
            });
        }
    }

    /// Aborts every session (tunnel lost or shutting down), without telling
    /// the peer (there may be no way to).
    pub fn reset_all(&mut self, reason: ResetReason) {
        let ids: Vec<SessionId> = self.sessions.keys().copied().collect();
        for id in ids {
            self.remove(id);
            self.events.push_back(Event::Reset {
                session: id,
                reason,
            });
        }
    }

    // ---- peer side ------------------------------------------------------

    /// Applies one decrypted message from the peer (control or data).
    /// Messages that make no sense for a session reset that session only;
    /// the error is returned for the caller to count and log.
    pub fn handle_message(&mut self, msg: Message) -> Result<(), PeerError> {
        match msg {
            Message::Data(frame) => self.handle_data(frame),
            Message::Open {
                session,
                target,
                window,
            } => {
                if self.is_own_id(session) {
                    return Err(PeerError::BadSessionId(session));
                }
                // A repeated open (after a resync) gets its answer again.
                if let Some(s) = self.sessions.get(&session) {
                    if s.state == State::Open {
                        let window = self.window_u32();
                        self.push_control(Message::Accept { session, window });
                    }
                    return Ok(());
                }
                if let Some((_, end)) = self.tombstones.iter().find(|(id, _)| *id == session) {
                    for msg in end.clone() {
                        self.push_control(msg);
                    }
                    return Ok(());
                }
                if session.0 < self.peer_next_id {
                    // Ended so long ago that its tombstone is gone: not a new session.
                    self.push_control(Message::Reset {
                        session,
                        reason: ResetReason::ProtocolError,
                    });
                    return Err(PeerError::BadSessionId(session));
                }
                self.peer_next_id = session.0.saturating_add(1);
                if self.sessions.len() >= self.limits.max_sessions {
                    self.push_control(Message::Refuse {
                        session,
                        reason: RefuseReason::TooManySessions,
                        detail: format!("limit {}", self.limits.max_sessions),
                    });
                    return Ok(());
                }
                let mut s = self.new_session(session, State::Connecting, target, Origin::default());
                s.send.set_peer_window(window as u64);
                self.sessions.insert(session, s);
                self.events
                    .push_back(Event::ConnectRequested { session, target });
                Ok(())
            }
            Message::Accept { session, window } => {
                let s = self.peer_session(session)?;
                match s.state {
                    State::Opening => {}
                    State::Open => return Ok(()), // repeated after a resync
                    State::Connecting => {
                        return self.violation(session, Violation::AcceptForPeersSession)
                    }
                }
                s.state = State::Open;
                s.send.set_peer_window(window as u64);
                self.events.push_back(Event::Accepted(session));
                self.schedule(session);
                Ok(())
            }
            Message::Refuse {
                session,
                reason,
                detail,
            } => {
                if self.sessions.get(&session).map(|s| s.state) != Some(State::Opening) {
                    return Err(PeerError::UnknownSession(session));
                }
                self.remove(session);
                self.events.push_back(Event::Refused {
                    session,
                    reason,
                    detail,
                });
                Ok(())
            }
            Message::Ack { session, offset } => {
                let s = self.peer_session(session)?;
                if !s.send.ack_is_valid(offset) {
                    let sent = s.send.sent();
                    return self.violation(session, Violation::AckBeyondSent { offset, sent });
                }
                let before = s.send.charged();
                let released = s.send.on_ack(offset);
                let freed = before - s.send.charged();
                let more = s.send.has_sendable();
                if let Some(d) = self
                    .sessions
                    .get_mut(&session)
                    .and_then(|s| s.dedup_send.as_mut())
                {
                    self.dedup.acked(d, offset);
                }
                if released > 0 {
                    let was_full = self.global_full();
                    self.buffered -= freed;
                    self.events.push_back(Event::Writable(session));
                    if was_full {
                        self.events.push_back(Event::CreditFreed);
                    }
                }
                if more {
                    self.schedule(session);
                }
                self.maybe_close(session);
                Ok(())
            }
            Message::Fin { session, offset } => {
                let s = self.peer_session(session)?;
                if let Err(e) = s.recv.set_fin(offset) {
                    return self.violation(session, e.into());
                }
                self.events.push_back(Event::Readable(session));
                Ok(())
            }
            Message::Reset { session, reason } => {
                if self.remove(session).is_none() {
                    return Err(PeerError::UnknownSession(session));
                }
                self.events.push_back(Event::Reset { session, reason });
                Ok(())
            }
            Message::Ping { id } => {
                self.push_control(Message::Pong { id });
                Ok(())
            }
            Message::Pong { .. } => Ok(()),
            Message::DedupInventory { chunks } => {
                self.dedup.inventory_received(&chunks);
                Ok(())
            }
            Message::DedupMiss {
                session,
                offset,
                len,
            } => {
                let s = self.peer_session(session)?;
                let end = offset.saturating_add(len as u64);
                if end > s.send.sent() {
                    let sent = s.send.sent();
                    return self.violation(session, Violation::MissBeyondSent { end, sent });
                }
                if let Some(d) = &mut s.dedup_send {
                    d.resent(offset, end);
                }
                let figures = self.dedup.miss_answered();
                if let Some(s) = self.sessions.get_mut(&session) {
                    s.dedup.add(&figures);
                }
                self.scheduler.resend_range(Carried {
                    session,
                    start: offset,
                    end,
                });
                self.events.push_back(Event::FramesReady);
                Ok(())
            }
            other @ (Message::Hello { .. }
            | Message::Welcome { .. }
            | Message::Attach { .. }
            | Message::KeyUpdate) => Err(PeerError::Unexpected(other.name())),
        }
    }

    fn handle_data(&mut self, mut frame: DataFrame) -> Result<(), PeerError> {
        let id = frame.session;
        if frame.flags & DATA_FLAG_DEDUP != 0 {
            self.peer_session(id)?;
            let items = std::mem::take(&mut frame.payload);
            let (received, figures) = match self.dedup.receive(items, MAX_UNPACKED_LEN) {
                Ok(r) => r,
                Err(e) => return self.violation(id, e.into()),
            };
            let s = self.peer_session(id)?;
            s.dedup.add(&figures);
            match received {
                Received::Data(data) => frame.payload = data,
                Received::Missing { len } => {
                    // The peer's offset: the sum must not wrap.
                    s.miss_end = s.miss_end.max(frame.offset.saturating_add(u64::from(len)));
                    self.push_control(Message::DedupMiss {
                        session: id,
                        offset: frame.offset,
                        len,
                    });
                    return Ok(());
                }
            }
        }
        let len = frame.payload.len() as u64;
        let s = self.peer_session(id)?;
        let before = charged_ready(&s.recv);
        match s.recv.insert(frame.offset, frame.payload) {
            Ok(added) => {
                self.ready += charged_ready(&s.recv) - before;
                self.counters.data_frames_in += 1;
                self.counters.duplicate_bytes_in += len - added;
                if added > 0 {
                    self.events.push_back(Event::Readable(id));
                }
                Ok(())
            }
            Err(e) => self.violation(id, e.into()),
        }
    }

    /// Hands the next frame to data flow `flow`, which can send now. `None`
    /// while caps hold the work back: [`TunnelCore::poll_timeout`] says when
    /// to pull again ([`Event::FramesReady`] comes then).
    #[must_use = "the frame is taken off the schedule: dropped, it is only sent again if the flow is lost"]
    pub fn poll_frame(&mut self, now: Instant, flow: usize) -> Option<DataFrame> {
        let rate = if self.scheduler.policy().pace_tunnel {
            self.pacer.rate(now)
        } else {
            None
        };
        self.scheduler.set_pacing(rate);
        let frame = self.next_frame(now, flow);
        // A flow that carries only resends (the lane carries the new frames) finding none
        // is idle only if nothing waits for the lane either.
        let idle = self.lane.carries_new(flow) || !self.scheduler.has_work();
        if frame.is_none() && !self.throttled() && idle {
            self.pacer.on_idle();
        }
        frame
    }

    /// Whether the tunnel pacer wants every flow's progress now
    /// ([`TunnelCore::note_flow_progress`]); cheap, ask before each pull.
    pub fn flow_progress_due(&self, now: Instant) -> bool {
        self.scheduler.policy().pace_tunnel && self.pacer.progress_due(now)
    }

    /// What each flow's transport delivered so far, all read at `now`: the
    /// tunnel pacer's measure of the path.
    pub fn note_flow_progress(
        &mut self,
        now: Instant,
        flows: impl IntoIterator<Item = (usize, FlowProgress)>,
    ) {
        let flows: Vec<(usize, FlowProgress)> = flows.into_iter().collect();
        self.choose_carrier(now, &flows);
        let seen = |(k, p): (usize, FlowProgress)| (k, self.lane.carrier_seen(k, p));
        let carriers = flows.into_iter().chain(self.lane.progress()).map(seen);
        self.pacer.on_progress(now, carriers);
        self.size_unsent_budgets();
    }

    /// What the tunnel pacer knows (also while the policy leaves it off).
    pub fn pacing(&self) -> PaceSnapshot {
        self.pacer.snapshot()
    }

    fn next_frame(&mut self, now: Instant, flow: usize) -> Option<DataFrame> {
        let sessions = &self.sessions;
        self.scheduler.prune(flow, |c| {
            sessions
                .get(&c.session)
                .is_none_or(|s| s.send.acked() >= c.end)
        });
        // The lane's lost frames go again on the flows, which are reliable; new frames go on
        // the lane while it takes them.
        let is_lane = flow == self.lane.slot;
        let takes_new = self.lane.carries_new(flow);
        while let Some(c) = (!is_lane)
            .then(|| self.scheduler.next_resend(now))
            .flatten()
        {
            let Some(s) = self.sessions.get(&c.session) else {
                continue;
            };
            if let Some((offset, payload)) = s.send.resend(c.start, c.end) {
                let len = payload.len() as u64;
                if let Some(d) = self
                    .sessions
                    .get_mut(&c.session)
                    .and_then(|s| s.dedup_send.as_mut())
                {
                    d.resent(offset, offset + len);
                }
                if offset + len < c.end {
                    self.scheduler.resend_rest(Carried {
                        start: offset + len,
                        ..c
                    });
                }
                let Some(s) = self.sessions.get(&c.session) else {
                    continue;
                };
                self.counters.resent_bytes += len;
                self.scheduler.charge_caps(s.group, len, now);
                return Some(self.carry(flow, c.session, offset, payload));
            }
        }
        while let Some((group, id)) = takes_new.then(|| self.scheduler.next_ready(now)).flatten() {
            let frame_len = self.limits.frame_len;
            let Some(s) = self.sessions.get_mut(&id) else {
                continue;
            };
            s.queued = false;
            if s.state != State::Open {
                continue;
            }
            if let Some(d) = &s.dedup_send {
                let (start, end) = s.send.next_span(frame_len);
                if d.holds_tail(start, end) {
                    let since = *s.tail_held_since.get_or_insert(now);
                    if now < since + TAIL_HOLD_US {
                        // `handle_timeout` or the endpoint's next write brings it back.
                        continue;
                    }
                }
            }
            s.tail_held_since = None;
            let before = s.send.charged();
            let cut = match &s.dedup_send {
                Some(d) => s
                    .send
                    .next_frame_cut(frame_len, |start, end| d.cut(start, end)),
                None => s.send.next_frame(frame_len),
            };
            let Some((offset, payload)) = cut else {
                continue;
            };
            // Cutting a piece in two adds an entry; gathering pieces into one frame removes some.
            let after = s.send.charged();
            let was_full = self.global_full();
            self.buffered = self.buffered + after - before;
            if was_full && !self.global_full() {
                self.events.push_back(Event::CreditFreed);
            }
            let s = self.sessions.get_mut(&id).expect("looked up above");
            if s.send.has_sendable() {
                s.queued = true;
                self.scheduler.mark_ready(id, group);
            }
            // The endpoint may have stopped reading for want of unsent room:
            // its own, or its migration's.
            let (own, taken) = (s.send.unsent(), payload.len() as u64);
            let main = self.scheduler.is_main_channel(id, group);
            if self.unsent.own_room_returned(own, taken, main) {
                self.events.push_back(Event::Writable(id));
            }
            if self.unsent.taken(group, taken) {
                self.wake_group(group);
            }
            self.scheduler.charge(group, payload.len() as u64, now);
            let encoded = match self
                .sessions
                .get_mut(&id)
                .and_then(|s| s.dedup_send.as_mut())
            {
                Some(d) => {
                    let (items, figures) = self.dedup.encode(d, offset, &payload);
                    if let Some(s) = self.sessions.get_mut(&id) {
                        s.dedup.add(&figures);
                    }
                    items
                }
                None => None,
            };
            let plain = payload.len() as u64;
            let mut frame = self.carry(flow, id, offset, payload);
            if let Some(items) = encoded {
                // Caps count bytes on the wire: references cost a fraction of their chunks.
                self.scheduler
                    .refund(Some(group), plain.saturating_sub(items.len() as u64));
                frame.flags = DATA_FLAG_DEDUP;
                frame.payload = items;
            }
            return Some(frame);
        }
        None
    }

    /// Whether the last pull found only capped work: the driver arms
    /// [`TunnelCore::poll_timeout`] for when its tokens return.
    pub fn throttled(&self) -> bool {
        self.scheduler.blocked_until().is_some()
    }

    /// New caps and weights (a config reload): running sessions keep their
    /// data and groups; the flows pull again under the new rules.
    pub fn set_shares(&mut self, policy: SharePolicy) {
        self.scheduler.set_policy(policy);
        self.size_unsent_budgets();
        self.events.push_back(Event::FramesReady);
    }

    pub fn shares(&self) -> &SharePolicy {
        self.scheduler.policy()
    }

    /// Every migration group's figures, for status output.
    pub fn groups(&self, now: Instant) -> Vec<GroupSnapshot> {
        let mut groups = self.scheduler.groups(now);
        for g in &mut groups {
            g.unsent = self.unsent.unsent(g.key);
            g.unsent_budget = self.unsent.budget();
        }
        groups
    }

    fn carry(&mut self, flow: usize, session: SessionId, offset: u64, payload: Bytes) -> DataFrame {
        let end = offset + payload.len() as u64;
        self.scheduler.record(
            flow,
            Carried {
                session,
                start: offset,
                end,
            },
        );
        self.counters.data_frames_out += 1;
        DataFrame {
            session,
            offset,
            flags: 0,
            payload,
        }
    }

    /// A data flow died: what it carried goes out again on the others.
    pub fn flow_lost(&mut self, flow: usize) {
        self.pacer.on_flow_lost(flow);
        if self.scheduler.flow_lost(flow) > 0 {
            self.counters.flows_lost += 1;
            self.events.push_back(Event::FramesReady);
        }
    }

    /// A data flow's transport stopped sending while it still held the
    /// newest `frames` it took (Linux BBR's PROBE_RTT cuts its window to 4
    /// segments for 200 ms and a round trip; a retransmission timeout does
    /// the same). Each would hold its whole session at the far end, which
    /// delivers in order: they go again on the other flows. The driver
    /// gives the stalled flow no new frames until it sends again.
    pub fn flow_stalled(&mut self, flow: usize, frames: usize) {
        if self.scheduler.flow_stalled(flow, frames) > 0 {
            self.counters.flow_stalls += 1;
            self.events.push_back(Event::FramesReady);
        }
    }

    /// Next control message for the peer.
    #[must_use = "the message is taken off the control queue: dropped, the peer never gets it"]
    pub fn poll_control(&mut self) -> Option<Message> {
        // The inventory only when nothing else waits: it may be long, acks must not wait.
        let Some(msg) = self.control.pop_front() else {
            return self.dedup.next_inventory();
        };
        if self.control.len() + 1 == self.control_bound() {
            self.events.push_back(Event::ControlRoom);
        }
        Some(msg)
    }

    /// Whether control messages that must reach the peer are waiting for `poll_control` (a
    /// shutdown waits for them to be delivered). The dedup inventory does not count: it is
    /// only a hint, and a large one would hold a shutdown's notice back for its whole length.
    pub fn has_control(&self) -> bool {
        !self.control.is_empty()
    }

    #[must_use = "the event is taken off the queue: dropped, whoever waits on it is never woken"]
    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    /// A new control connection replaced one that died: whatever control
    /// messages were queued or in flight may be lost, so restate every
    /// session's position. Each message is idempotent at the receiver.
    pub fn resync(&mut self) {
        if self.control_backlogged() {
            self.events.push_back(Event::ControlRoom);
        }
        self.control.clear();
        let window = self.window_u32();
        let mut msgs = Vec::new();
        // In id order: the peer takes an open below the highest id it has seen, and no longer
        // knows, for a reused id (see `peer_next_id`).
        let mut ids: Vec<SessionId> = self.sessions.keys().copied().collect();
        ids.sort_unstable_by_key(|id| id.0);
        for session in ids {
            let Some(s) = self.sessions.get_mut(&session) else {
                continue;
            };
            match s.state {
                State::Opening => msgs.push(Message::Open {
                    session,
                    target: s.target,
                    window,
                }),
                State::Open if session.0.is_multiple_of(2) != (self.side == Side::Dialer) => {
                    msgs.push(Message::Accept { session, window })
                }
                _ => {}
            }
            let delivered = s.recv.delivered();
            if delivered > 0 {
                s.ack_sent = delivered;
                s.ack_pending_since = None;
                msgs.push(Message::Ack {
                    session,
                    offset: delivered,
                });
            }
            let arrived = s.recv.in_order_end();
            if s.miss_end > arrived {
                msgs.push(Message::DedupMiss {
                    session,
                    offset: arrived,
                    // Within the receive window, which a u32 holds.
                    len: u32::try_from(s.miss_end - arrived).unwrap_or(u32::MAX),
                });
            }
            if s.send.is_finished() {
                msgs.push(Message::Fin {
                    session,
                    offset: s.send.written(),
                });
            }
        }
        msgs.extend(
            self.tombstones
                .iter()
                .flat_map(|(_, end)| end.iter().cloned()),
        );
        self.counters.resyncs += 1;
        for m in msgs {
            self.push_control(m);
        }
    }

    fn bury(&mut self, id: SessionId, end: Vec<Message>) {
        if self.tombstones.len() == TOMBSTONES {
            self.tombstones.pop_front();
        }
        self.tombstones.push_back((id, end));
    }

    // ---- time -----------------------------------------------------------

    /// When `handle_timeout` next has work (a delayed ack), if ever.
    /// When [`TunnelCore::handle_timeout`] is due: a delayed ack, or capped
    /// work whose tokens return.
    #[must_use = "a driver that does not arm this timer sends no delayed ack"]
    pub fn poll_timeout(&self) -> Option<Instant> {
        let ack = self
            .sessions
            .values()
            .filter_map(|s| s.ack_pending_since)
            .min()
            .map(|t| t + self.limits.ack_delay_us);
        let held = self
            .sessions
            .values()
            .filter_map(|s| s.tail_held_since)
            .min()
            .map(|t| t + TAIL_HOLD_US);
        [
            ack,
            held,
            self.scheduler.wake_at(),
            self.dedup.inventory_due(),
        ]
        .into_iter()
        .flatten()
        .min()
    }

    pub fn handle_timeout(&mut self, now: Instant) {
        if self.dedup.tick(now) && self.control.is_empty() {
            self.events.push_back(Event::ControlReady);
        }
        if self.scheduler.wake_at().is_some_and(|t| t <= now) {
            self.scheduler.unblock();
            self.events.push_back(Event::FramesReady);
        }
        let delay = self.limits.ack_delay_us;
        let due: Vec<SessionId> = self
            .sessions
            .iter()
            .filter(|(_, s)| s.ack_pending_since.is_some_and(|t| t + delay <= now))
            .map(|(id, _)| *id)
            .collect();
        for id in due {
            self.send_ack(id);
        }
        let held: Vec<SessionId> = self
            .sessions
            .iter()
            .filter(|(_, s)| s.tail_held_since.is_some_and(|t| t + TAIL_HOLD_US <= now))
            .map(|(id, _)| *id)
            .collect();
        for id in held {
            self.schedule(id);
        }
    }

    // ---- internals ------------------------------------------------------

    fn new_session(
        &mut self,
        id: SessionId,
        state: State,
        target: SocketAddr,
        origin: Origin,
    ) -> Session {
        let group = GroupKey {
            source: origin.source,
            target,
        };
        self.scheduler.join(id, group, origin);
        let dedup_send = self
            .dedup
            .new_session(self.scheduler.founder(group).map_or(id.0, |f| f.0));
        Session {
            state,
            target,
            group,
            send: SendStream::new(0),
            recv: Reassembler::new(self.limits.session_window),
            queued: false,
            ack_sent: 0,
            ack_pending_since: None,
            packing: PackFigures::default(),
            dedup_send,
            tail_held_since: None,
            miss_end: 0,
            dedup: DedupFigures::default(),
        }
    }

    fn window_u32(&self) -> u32 {
        self.limits.session_window.min(u32::MAX as u64) as u32
    }

    fn is_own_id(&self, id: SessionId) -> bool {
        id.0.is_multiple_of(2) == (self.side == Side::Dialer)
    }

    fn session(&self, id: SessionId) -> Result<&Session, SessionError> {
        self.sessions.get(&id).ok_or(SessionError::Gone(id))
    }

    fn session_mut(&mut self, id: SessionId) -> Result<&mut Session, SessionError> {
        self.sessions.get_mut(&id).ok_or(SessionError::Gone(id))
    }

    /// A session the peer refers to. Unknown ids are normal after a reset
    /// (frames in flight), so the caller only counts them.
    fn peer_session(&mut self, id: SessionId) -> Result<&mut Session, PeerError> {
        self.sessions
            .get_mut(&id)
            .ok_or(PeerError::UnknownSession(id))
    }

    fn violation(&mut self, id: SessionId, why: Violation) -> Result<(), PeerError> {
        self.counters.protocol_errors += 1;
        self.reset(id, ResetReason::ProtocolError);
        Err(PeerError::Violation { session: id, why })
    }

    /// Whether the global buffer has no room for another piece (the rule of
    /// `send_capacity`: a waiting writer must be woken by the same rule).
    fn global_full(&self) -> bool {
        self.buffered + super::send::ENTRY_OVERHEAD >= self.limits.global_buffer
    }

    /// `n` charged bytes left the endpoints' waiting room.
    fn release_ready(&mut self, n: u64) {
        let was_paused = self.receive_paused();
        self.ready -= n;
        if was_paused && !self.receive_paused() {
            self.events.push_back(Event::ReceiveRoom);
        }
    }

    fn push_control(&mut self, msg: Message) {
        if self.control.is_empty() {
            self.events.push_back(Event::ControlReady);
        }
        self.control.push_back(msg);
    }

    fn send_ack(&mut self, id: SessionId) {
        let Some(s) = self.sessions.get_mut(&id) else {
            return;
        };
        s.ack_pending_since = None;
        let offset = s.recv.delivered();
        if offset > s.ack_sent {
            s.ack_sent = offset;
            self.push_control(Message::Ack {
                session: id,
                offset,
            });
        }
    }

    fn schedule(&mut self, id: SessionId) {
        if let Some(s) = self.sessions.get_mut(&id) {
            if !s.queued && s.state == State::Open && s.send.has_sendable() {
                s.queued = true;
                self.scheduler.mark_ready(id, s.group);
                self.events.push_back(Event::FramesReady);
            }
        }
    }

    fn remove(&mut self, id: SessionId) -> Option<Session> {
        let s = self.sessions.remove(&id)?;
        let was_full = self.global_full();
        self.buffered -= s.send.charged();
        self.release_ready(charged_ready(&s.recv));
        if was_full && !self.global_full() {
            self.events.push_back(Event::CreditFreed);
        }
        self.scheduler.forget(id, s.group);
        if self.unsent.taken(s.group, s.send.unsent()) {
            self.wake_group(s.group);
        }
        Some(s)
    }

    /// The sessions of `group` may read from their endpoints again.
    fn wake_group(&mut self, group: GroupKey) {
        let events = &mut self.events;
        self.scheduler
            .for_each_member(group, |id| events.push_back(Event::Writable(id)));
    }

    /// Each migration's unsent budget follows the rate the tunnel goes at:
    /// the pacer's measure of the path (when it paces), under the link cap.
    /// Both change only with a new policy or the flows' progress.
    fn size_unsent_budgets(&mut self) {
        let policy = self.scheduler.policy();
        let measured = policy
            .pace_tunnel
            .then(|| self.pacer.bottleneck())
            .filter(|b| *b > 0);
        let rate = match (measured, policy.link_rate) {
            (Some(m), Some(cap)) => Some(m.min(cap)),
            (m, cap) => m.or(cap),
        };
        for group in self.unsent.set_rate(rate) {
            self.wake_group(group);
        }
    }

    /// Removes a session whose two directions are both complete.
    fn maybe_close(&mut self, id: SessionId) {
        let done = self.sessions.get(&id).is_some_and(|s| {
            s.send.is_complete() && s.recv.is_finished() && s.ack_sent == s.recv.delivered()
        });
        if done {
            let s = self.remove(id).expect("checked above");
            // The peer may still need our last fin and ack if they are lost
            // with the control connection: keep them for a resync.
            let mut end = Vec::new();
            if s.state == State::Open && !self.is_own_id(id) {
                end.push(Message::Accept {
                    session: id,
                    window: self.window_u32(),
                });
            }
            end.push(Message::Fin {
                session: id,
                offset: s.send.written(),
            });
            end.push(Message::Ack {
                session: id,
                offset: s.recv.delivered(),
            });
            self.bury(id, end);
            self.events.push_back(Event::Closed(id));
        }
    }
}

/// What the peer did wrong in one session; the session is reset, the others
/// carry on.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Violation {
    #[error("accept for a session the peer opened")]
    AcceptForPeersSession,
    #[error("ack of offset {offset} beyond the {sent} bytes sent")]
    AckBeyondSent { offset: u64, sent: u64 },
    #[error(transparent)]
    Reassembly(#[from] ReassemblyError),
    #[error("dedup miss for bytes up to {end} beyond the {sent} bytes sent")]
    MissBeyondSent { end: u64, sent: u64 },
    #[error(transparent)]
    Dedup(#[from] DedupError),
}

/// A message from the peer that could not be applied.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PeerError {
    /// Usually harmless: frames or acks still in flight for a session that
    /// was reset or closed.
    #[error("message for unknown session {0}")]
    UnknownSession(SessionId),
    #[error("peer used session id {0} from our own id space or twice")]
    BadSessionId(SessionId),
    #[error("session {session}: {why}")]
    Violation { session: SessionId, why: Violation },
    #[error("unexpected {0} message after the tunnel was set up")]
    Unexpected(&'static str),
}

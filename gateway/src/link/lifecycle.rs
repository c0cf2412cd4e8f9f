//! The tunnel's lifecycle over its WAN connections, sans-IO, in the shape of quinn-proto's
//! `Endpoint`: the driver reports what happened to each connection (dialled, accepted, keyed,
//! a message, a failure) and the clock; the lifecycle decides what it means (hello, welcome,
//! attach, resume, a replaced connection, the grace period, the dial backoff, handshake
//! deadlines) and hands back what to do ([`Action`]): send a message on a connection, close
//! one, dispose of a tunnel that went down. It reads no clock and touches no socket.
//!
//! A connection's life here:
//! - dialled ([`Lifecycle::dialling`]) for a role, or accepted ([`Lifecycle::accepted`])
//!   with none yet;
//! - keyed ([`Lifecycle::keyed`]): a dialled control connection sends its hello and waits for
//!   the welcome, a dialled data flow sends its attach and is in place;
//! - an accepted connection's first message says what it is ([`super::accept`]), a dialled
//!   control connection's first message is the welcome ([`super::welcome`]);
//! - after that, control messages on the control connection and frames on the data flows go
//!   to the tunnel's session core;
//! - until the driver reports it failed ([`Lifecycle::failed`]) or the lifecycle closes it
//!   (a protocol breach, a handshake past its deadline, replaced, or its tunnel gone).

use log::{info, warn};
use rustc_hash::FxHashMap;
use std::collections::VecDeque;
use std::fmt::{self, Display};
use std::net::SocketAddr;

use super::admission::{Admission, HandshakeTable, Throttle, MAX_PENDING_HANDSHAKES};
use super::conn_table::{ConnRef, Lost, Role};
use super::failure::ConnFailure;
use super::tunnel::{Applied, TunnelSetup, TunnelState};
use super::{
    first_message, name_mismatch, peer_label, welcome_step, Current, DialFailed, Dialer, FirstStep,
    WelcomeStep, FLOWS_ATTACH_TIMEOUT, HANDSHAKE_TIMEOUT, PEER_CLOSED_IN_HANDSHAKE,
};
use crate::crypto::DedupOffer;
use crate::protocol::{Message, ResetReason, TunnelId};
use crate::session::{SharePolicy, Side};

/// Who this gateway is and how it reaches the peer.
pub struct LinkSetup {
    /// Our name, said in the welcome and the hello.
    pub name: String,
    /// The peer's name (`peer.name`), for logs and to check what it calls itself.
    pub peer_name: String,
    /// Where the peer listens, on the dialling gateway (`None`: we accept).
    pub dial: Option<SocketAddr>,
    /// How many data flows this gateway dials (`wan.data_flows`).
    pub data_flows: u16,
    /// A new tunnel's session core and table (its side and flow count are set per tunnel).
    pub tunnel: TunnelSetup,
}

/// What the driver is to do.
#[must_use = "an action must be carried out"]
pub enum Action {
    /// Seal `msg` and send it on `conn`.
    Send { conn: ConnRef, msg: Message },
    /// Close `conn` and forget it: with a FIN if `graceful` (a refused handshake, so the
    /// dialler can tell "refused"), with an RST otherwise.
    Close { conn: ConnRef, graceful: bool },
    /// A tunnel went down: its sessions were reset; the driver passes on what its core still
    /// reports (the resets) and drops it.
    TunnelGone(Box<TunnelState>),
    /// Something for the gateway's counters.
    Count(Count),
    /// A source proved it holds the peer's key (its first record opened): favour it when
    /// handshakes are crowded out (see [`super::admission`]).
    Trust(std::net::IpAddr),
}

/// What the lifecycle counts (the driver adds it to the gateway's counters).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Count {
    HandshakeOk,
    /// An accepted connection was dropped, or another for it, to keep the pending handshakes
    /// bounded (see [`super::admission`]).
    HandshakeBusy,
    /// An accepted connection's handshake failed or timed out.
    HandshakeFailed,
    TunnelResumed,
    /// A data flow in place was lost or replaced.
    FlowLost,
    /// A record of the peer's did not open (see [`super::failure`]).
    RecordRejected,
    /// What a peer message came to.
    Applied(Applied),
}

/// What kind of failure the driver saw on a connection (its text comes with it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FaultKind {
    /// The transport never connected.
    Connect,
    /// The peer closed or reset it (during the handshake: the peer refused us).
    Closed,
    Other,
}

/// A connection's failure as the driver reports it.
pub struct Fault<'a> {
    pub kind: FaultKind,
    pub why: &'a dyn Display,
}

impl Display for Fault<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.why.fmt(f)
    }
}

/// Why the lifecycle itself ended a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum LinkError {
    #[error("unexpected {got} message (expected {expected})")]
    Unexpected {
        got: &'static str,
        expected: &'static str,
    },
    #[error("timed out after {0:?}")]
    HandshakeTimedOut(std::time::Duration),
    #[error("data flow dialled for a tunnel that is gone")]
    NoTunnel,
}

/// One connection as the lifecycle knows it.
#[derive(Debug, Clone, Copy)]
struct Conn {
    dialled: bool,
    /// Known at once when dialled; from the first message when accepted.
    role: Option<Role>,
    remote: Option<SocketAddr>,
    created: u64,
    keyed: bool,
    /// A dialled control connection whose welcome has not come yet.
    awaiting_welcome: bool,
    peer_dedup: DedupOffer,
}

impl Conn {
    /// Whether its handshake deadline still runs: not keyed, or keyed but not yet told what
    /// it is (an accepted connection's first message, a dialled control connection's welcome).
    fn in_handshake(&self) -> bool {
        !self.keyed || self.role.is_none() || self.awaiting_welcome
    }
}

/// The tunnel's lifecycle (see the module's description).
pub struct Lifecycle {
    name: String,
    peer_name: String,
    dial: Option<(SocketAddr, Dialer)>,
    data_flows: u16,
    setup: TunnelSetup,
    /// The tunnel, also while it is held after its control connection died.
    pub tunnel: Option<TunnelState>,
    conns: FxHashMap<ConnRef, Conn>,
    /// Accepted connections not yet told what they are, bounded fairly.
    handshakes: HandshakeTable<ConnRef>,
    /// Paces the lines about handshakes dropped by that bound.
    throttle: Throttle,
    actions: VecDeque<Action>,
}

const HANDSHAKE_US: u64 = HANDSHAKE_TIMEOUT.as_micros() as u64;

impl Lifecycle {
    pub fn new(setup: LinkSetup) -> Lifecycle {
        let flows = usize::from(setup.data_flows);
        Lifecycle {
            name: setup.name,
            peer_name: setup.peer_name,
            dial: setup.dial.map(|addr| (addr, Dialer::new(flows))),
            data_flows: setup.data_flows,
            setup: setup.tunnel,
            tunnel: None,
            conns: FxHashMap::default(),
            handshakes: HandshakeTable::new(MAX_PENDING_HANDSHAKES),
            throttle: Throttle::default(),
            actions: VecDeque::new(),
        }
    }

    /// The next thing for the driver to do.
    pub fn poll_action(&mut self) -> Option<Action> {
        self.actions.pop_front()
    }

    /// Whether the last events left actions to carry out.
    pub fn has_actions(&self) -> bool {
        !self.actions.is_empty()
    }

    /// How logs name the peer: the tunnel's label (name and address) once there is one.
    pub fn peer(&self) -> String {
        self.tunnel
            .as_ref()
            .map_or_else(|| self.peer_name.clone(), |t| t.peer.clone())
    }

    /// The role `conn` was given, if any yet.
    pub fn role_of(&self, conn: ConnRef) -> Option<Role> {
        self.conns.get(&conn)?.role
    }

    /// The role `conn` serves in the tunnel right now, if it is the connection in place for
    /// one (not while a control connection waits for its welcome, nor once replaced).
    pub fn in_place(&self, conn: ConnRef) -> Option<Role> {
        let table = &self.tunnel.as_ref()?.table;
        self.conns.get(&conn)?;
        table.role_of(conn)
    }

    /// Whether new sessions can open: the tunnel has its control connection.
    pub fn is_up(&self) -> bool {
        self.tunnel.as_ref().is_some_and(|t| t.table.is_up())
    }

    /// New tunnels keep their dedup store in `store` (`wan.dedup_dir`), not in memory of
    /// their own.
    pub fn with_dedup_store(mut self, store: Option<crate::session::SharedStore>) -> Self {
        self.setup.dedup_store = store;
        self
    }

    /// New caps and weights for the whole gateway (a reload): the tunnel's, and every new
    /// tunnel's.
    pub fn set_shares(&mut self, shares: SharePolicy) {
        if let Some(t) = &mut self.tunnel {
            t.set_shares(shares.clone());
        }
        self.setup.shares = shares;
    }

    // ---- dialling ------------------------------------------------------------------------

    /// The next connection to dial at `now`, if one is due (only on the dialling gateway):
    /// the driver dials it to [`Lifecycle::dial_addr`] and reports [`Lifecycle::dialling`],
    /// or [`Lifecycle::not_dialled`] if it could not even start.
    #[must_use = "a due dial must be carried out"]
    pub fn poll_dial(&self, now: u64) -> Option<Role> {
        let (_, dialer) = self.dial.as_ref()?;
        dialer.poll_dial(now, self.tunnel.as_ref().map(|t| &t.table))
    }

    /// Where the peer listens (the dialling gateway).
    pub fn dial_addr(&self) -> Option<SocketAddr> {
        self.dial.as_ref().map(|(a, _)| *a)
    }

    /// The driver started dialling `conn` for `role` at `now`.
    pub fn dialling(&mut self, role: Role, conn: ConnRef, now: u64) {
        if let Some((_, d)) = &mut self.dial {
            d.dialling(role, conn);
        }
        let awaiting_welcome = role == Role::Control;
        self.conns.insert(
            conn,
            Conn {
                dialled: true,
                role: Some(role),
                remote: self.dial_addr(),
                created: now,
                keyed: false,
                awaiting_welcome,
                peer_dedup: DedupOffer::default(),
            },
        );
    }

    /// The driver could not start the dial [`Lifecycle::poll_dial`] said was due.
    pub fn not_dialled(&mut self, role: Role, now: u64) {
        if let Some((_, d)) = &mut self.dial {
            let _ = d.not_dialled(role, now);
        }
    }

    // ---- connection events ---------------------------------------------------------------

    /// A listener took connection `conn` from `remote` at `now`; its handshake follows if the
    /// pending handshakes have room (`trusted`: the source proved to be the peer before; see
    /// [`super::admission`]), else it or an older pending one is closed.
    pub fn accepted(&mut self, conn: ConnRef, remote: Option<SocketAddr>, trusted: bool, now: u64) {
        self.conns.insert(
            conn,
            Conn {
                dialled: false,
                role: None,
                remote,
                created: now,
                keyed: false,
                awaiting_welcome: false,
                peer_dedup: DedupOffer::default(),
            },
        );
        let addr = remote.unwrap_or(SocketAddr::from(([0, 0, 0, 0], 0)));
        let admission = self.handshakes.admit(conn, addr, trusted);
        let (drop, who) = match admission {
            Admission::Admitted { evicted: None } => return,
            Admission::Admitted { evicted: Some(v) } => v,
            Admission::Refused => (conn, addr),
        };
        let why = self.handshakes.why(&admission, &self.peer_name);
        self.count(Count::HandshakeBusy);
        if let Some(more) = self.throttle.allow(now) {
            warn!(
                "handshake with {who} dropped: {why}{}",
                Throttle::more(more)
            );
        }
        self.close(drop);
    }

    /// `conn`'s handshake completed at `now` (`remote`: its peer address, `peer_dedup`: what
    /// the peer offered for dedup in it). A dialled connection says what it is for.
    pub fn keyed(
        &mut self,
        conn: ConnRef,
        remote: Option<SocketAddr>,
        peer_dedup: DedupOffer,
        now: u64,
    ) {
        let Some(c) = self.conns.get_mut(&conn) else {
            return;
        };
        c.keyed = true;
        c.remote = remote.or(c.remote);
        c.peer_dedup = peer_dedup;
        let (dialled, role) = (c.dialled, c.role);
        // The dialler's handshake proves the acceptor; an accepted one proves nothing until
        // its first record opens (message 1 may be a replay).
        if dialled {
            self.count(Count::HandshakeOk);
        }
        match (dialled, role) {
            (true, Some(Role::Control)) => {
                let msg = Message::Hello {
                    resume: self.tunnel.as_ref().map(|t| t.id),
                    name: self.name.clone(),
                    data_flows: self.data_flows,
                };
                self.actions.push_back(Action::Send { conn, msg });
            }
            (true, Some(Role::Flow(k))) => {
                // Flows are dialled for a tunnel and dropped with it, so this cannot miss.
                let Some(tunnel_id) = self.tunnel.as_ref().map(|t| t.id) else {
                    return self.fail(conn, &LinkError::NoTunnel, now);
                };
                let flow = u16::try_from(k).unwrap_or(u16::MAX);
                let msg = Message::Attach { tunnel_id, flow };
                self.actions.push_back(Action::Send { conn, msg });
                let again = self.dial.as_mut().is_some_and(|(_, d)| d.flow_attached(k));
                if let (true, Some(t)) = (again, &self.tunnel) {
                    info!("peer {}: data flow {k} re-attached", t.peer);
                }
                self.attach_flow(conn, k);
            }
            _ => {}
        }
    }

    /// A message arrived on `conn` at `now`.
    pub fn message(&mut self, conn: ConnRef, msg: Message, now: u64) {
        let Some(c) = self.conns.get(&conn).copied() else {
            return;
        };
        match c.role {
            None => {
                self.handshakes.done(conn);
                self.count(Count::HandshakeOk);
                if let Some(a) = c.remote {
                    self.actions.push_back(Action::Trust(a.ip()));
                }
                self.first_message(conn, c, msg)
            }
            Some(Role::Control) if c.awaiting_welcome => self.welcome(conn, c, msg, now),
            Some(Role::Control) if matches!(msg, Message::Data(_)) => {
                let e = LinkError::Unexpected {
                    got: "data",
                    expected: "a control message",
                };
                self.fail(conn, &e, now)
            }
            Some(Role::Flow(_)) if !matches!(msg, Message::Data(_)) => {
                let e = LinkError::Unexpected {
                    got: msg.name(),
                    expected: "data",
                };
                self.fail(conn, &e, now)
            }
            Some(_) => {
                if let Some(t) = &mut self.tunnel {
                    let applied = t.apply(msg);
                    self.count(Count::Applied(applied));
                }
            }
        }
    }

    /// Connection `conn` failed at `now` with `e`: counted as what the peer did wrong, if
    /// anything ([`ConnFailure::count`]), then as [`Lifecycle::failed`].
    pub fn conn_failed(&mut self, conn: ConnRef, e: &ConnFailure, now: u64) {
        if let Some(what) = e.count() {
            self.count(what);
        }
        let fault = Fault {
            kind: e.kind(),
            why: e,
        };
        self.failed(conn, fault, now);
    }

    /// Connection `conn` failed at `now` (the driver saw its socket die, or a record or
    /// message it could not read). It is closed and forgotten; what it was is repaired.
    pub fn failed(&mut self, conn: ConnRef, fault: Fault<'_>, now: u64) {
        let Some(c) = self.conns.remove(&conn) else {
            return;
        };
        self.handshakes.done(conn);
        // A refused handshake ends as it does on the kernel datapath: with a FIN and no
        // answer, so the dialler can tell "refused".
        let graceful = !c.dialled && c.role.is_none();
        self.actions.push_back(Action::Close { conn, graceful });
        let failed = match &mut self.dial {
            Some((_, d)) if c.dialled => d.failed(conn, now),
            _ => DialFailed::NotADial,
        };
        match failed {
            DialFailed::Control { retry_in } => {
                let peer = peer_label(&self.peer_name, c.remote);
                let what = match fault.kind {
                    FaultKind::Connect => format!("{fault} (peer {peer})"),
                    FaultKind::Closed if !c.keyed => {
                        format!("handshake with peer {peer} failed: {PEER_CLOSED_IN_HANDSHAKE}")
                    }
                    _ => format!("handshake with peer {peer} failed: {fault}"),
                };
                return warn!("{what}; retrying in {retry_in:?}");
            }
            DialFailed::Flow { k, retry_in } => {
                let peer = self.peer();
                return warn!("peer {peer}: data flow {k}: {fault}; retrying in {retry_in:?}");
            }
            DialFailed::NotADial => {}
        }
        match c.role {
            // The accepting side's view of a connection that never said what it was.
            None if !c.dialled => {
                self.count(Count::HandshakeFailed);
                let remote = c.remote.map_or("?".into(), |a| a.to_string());
                warn!("handshake with {remote} failed: {fault}");
            }
            None => {}
            Some(_) => self.lost(conn, &fault, now),
        }
    }

    // ---- time ----------------------------------------------------------------------------

    /// When the lifecycle next has something to do: a handshake deadline, the grace period's
    /// end, a backoff ending or the new tunnel's attach deadline.
    pub fn poll_timeout(&self) -> Option<u64> {
        let handshakes = self
            .conns
            .values()
            .filter(|c| c.in_handshake())
            .map(|c| c.created.saturating_add(HANDSHAKE_US + 1));
        let table = self.tunnel.as_ref().map(|t| &t.table);
        let dial = self.dial.as_ref().and_then(|(_, d)| d.poll_timeout(table));
        let grace = self.tunnel.as_ref().and_then(|t| t.poll_timeout());
        handshakes.chain(dial).chain(grace).min()
    }

    /// Acts on the deadlines due by `now`: handshakes that took too long are ended, a held
    /// tunnel whose grace period ran out or a new one whose flows did not attach is given up.
    pub fn handle_timeout(&mut self, now: u64) {
        let late = |c: &Conn| c.in_handshake() && now.saturating_sub(c.created) > HANDSHAKE_US;
        // Called every turn of a polling driver: nothing allocated unless one is late.
        if self.conns.values().any(late) {
            let ids: Vec<ConnRef> = self
                .conns
                .iter()
                .filter(|(_, c)| late(c))
                .map(|(&id, _)| id)
                .collect();
            for conn in ids {
                self.fail(conn, &LinkError::HandshakeTimedOut(HANDSHAKE_TIMEOUT), now);
            }
        }
        let Some(t) = &mut self.tunnel else { return };
        // The grace period's end says why itself.
        if !t.handle_timeout(now) {
            let late = |(_, d): &mut (SocketAddr, Dialer)| d.handle_timeout(now, Some(&t.table));
            if !self.dial.as_mut().is_some_and(late) {
                return;
            }
            warn!(
                "tunnel to peer {}: data flows did not attach within {FLOWS_ATTACH_TIMEOUT:?}; giving up",
                t.peer
            );
        }
        self.give_up(ResetReason::TunnelLost);
    }

    /// Takes the tunnel down: every session reset ([`Action::TunnelGone`]), every connection
    /// of it and every dial for it closed.
    pub fn give_up(&mut self, reason: ResetReason) {
        let Some(mut t) = self.tunnel.take() else {
            return;
        };
        let _ = t.reset_all(reason);
        let dials = self.dial.as_mut().map(|(_, d)| d.tunnel_gone());
        let conns: Vec<ConnRef> = t.table.connections().map(|(_, c)| c).collect();
        self.actions.push_back(Action::TunnelGone(Box::new(t)));
        for conn in conns.into_iter().chain(dials.into_iter().flatten()) {
            self.close(conn);
        }
    }

    // ---- what the events mean ------------------------------------------------------------

    fn count(&mut self, what: Count) {
        if what != Count::Applied(Applied::Ok) {
            self.actions.push_back(Action::Count(what));
        }
    }

    /// Closes `conn` (RST) and forgets it.
    fn close(&mut self, conn: ConnRef) {
        self.handshakes.done(conn);
        if self.conns.remove(&conn).is_some() {
            self.actions.push_back(Action::Close {
                conn,
                graceful: false,
            });
        }
    }

    /// The lifecycle ends `conn` itself, for `why`.
    fn fail(&mut self, conn: ConnRef, why: &LinkError, now: u64) {
        if matches!(why, LinkError::Unexpected { .. }) {
            self.count(Count::Applied(Applied::ProtocolError));
        }
        let fault = Fault {
            kind: FaultKind::Other,
            why,
        };
        self.failed(conn, fault, now);
    }

    /// Connection `conn`, which had a role, is gone: only the one in place loses it.
    fn lost(&mut self, conn: ConnRef, why: &dyn Display, now: u64) {
        let Some(t) = &mut self.tunnel else { return };
        match t.lost(conn, now, why) {
            Lost::Control { hold_until: None } => self.give_up(ResetReason::TunnelLost),
            Lost::Control { .. } => {
                if let Some((_, d)) = &mut self.dial {
                    d.control_lost(now);
                }
            }
            Lost::Flow(k) => {
                self.count(Count::FlowLost);
                if let Some((_, d)) = &mut self.dial {
                    d.flow_lost(k, now);
                }
            }
            Lost::NotInPlace => {}
        }
    }

    /// The accepting gateway: the first message says hello (control) or attach (a flow).
    fn first_message(&mut self, conn: ConnRef, c: Conn, msg: Message) {
        let peer = peer_label(&self.peer_name, c.remote);
        if let Message::Hello { name, .. } = &msg {
            if let Some(w) = name_mismatch(&self.peer_name, &peer, name) {
                warn!("{w}");
            }
        }
        let current = self.tunnel.as_ref().map(|t| Current {
            id: t.id,
            flows: t.table.flow_count(),
        });
        let new_id = || TunnelId::random(&ring::rand::SystemRandom::new());
        let step = match first_message(current, &msg, new_id) {
            Ok(step) => step,
            Err(refusal) => {
                warn!("peer {peer}: {refusal}; closing the connection");
                return self.close(conn);
            }
        };
        let tunnel_id = match step {
            FirstStep::Attach { index } => return self.attach_flow(conn, index),
            FirstStep::Resume => current.map(|c| c.id),
            FirstStep::NewTunnel { id, flows } => {
                self.new_tunnel(Side::Acceptor, flows, id, peer);
                Some(id)
            }
        };
        let Some(tunnel_id) = tunnel_id else { return };
        let msg = Message::Welcome {
            tunnel_id,
            name: self.name.clone(),
        };
        self.actions.push_back(Action::Send { conn, msg });
        self.attach_control(conn);
    }

    /// The dialling gateway: the welcome to our hello.
    fn welcome(&mut self, conn: ConnRef, c: Conn, msg: Message, now: u64) {
        let Message::Welcome { tunnel_id, name } = msg else {
            let e = LinkError::Unexpected {
                got: msg.name(),
                expected: "welcome",
            };
            return self.fail(conn, &e, now);
        };
        let peer = peer_label(&self.peer_name, c.remote);
        if let Some(w) = name_mismatch(&self.peer_name, &peer, &name) {
            warn!("{w}");
        }
        let step = welcome_step(self.tunnel.as_ref().map(|t| t.id), tunnel_id);
        let fresh = step != WelcomeStep::Resume;
        if fresh {
            if let Some(w) = step.warning(&peer) {
                warn!("{w}");
            }
            let flows = usize::from(self.data_flows);
            self.new_tunnel(Side::Dialer, flows, tunnel_id, peer);
        }
        if let Some(c) = self.conns.get_mut(&conn) {
            c.awaiting_welcome = false;
        }
        // After the old tunnel is gone: the new one's flows have their deadline.
        if let Some((_, d)) = &mut self.dial {
            d.welcomed(now, fresh);
        }
        self.attach_control(conn);
    }

    /// A new tunnel replaces the one held (whose sessions are reset).
    fn new_tunnel(&mut self, side: Side, flows: usize, id: TunnelId, peer: String) {
        self.give_up(ResetReason::TunnelLost);
        let setup = TunnelSetup {
            side,
            flows,
            ..self.setup.clone()
        };
        self.tunnel = Some(TunnelState::new(setup, id, peer));
    }

    /// Makes `conn` the tunnel's control connection; after an outage both ends restate their
    /// sessions (resync).
    fn attach_control(&mut self, conn: ConnRef) {
        let Some(t) = &mut self.tunnel else { return };
        let Some(c) = self.conns.get_mut(&conn) else {
            return;
        };
        c.role = Some(Role::Control);
        let peer_dedup = c.peer_dedup;
        let conns = &self.conns;
        let names = |c: ConnRef| remote_name(conns, c);
        let attached = t.attach_control(conn, &names, peer_dedup);
        if attached.resumed {
            self.count(Count::TunnelResumed);
        }
        if let Some(old) = attached.replaced {
            self.close(old);
        }
    }

    /// Connection `conn` is data flow `k` of the tunnel (accepted with attach, or dialled and
    /// keyed).
    fn attach_flow(&mut self, conn: ConnRef, k: usize) {
        let Some(t) = &mut self.tunnel else { return };
        let conns = &self.conns;
        let names = |c: ConnRef| remote_name(conns, c);
        // first_message checked k against the flow count.
        let Some(attached) = t.attach_flow(k, conn, &names) else {
            return;
        };
        if let Some(c) = self.conns.get_mut(&conn) {
            c.role = Some(Role::Flow(k));
        }
        if let Some(old) = attached.replaced {
            self.count(Count::FlowLost);
            self.close(old);
        }
    }
}

/// Connection `c`'s remote address for logs (`?` while unknown).
fn remote_name(conns: &FxHashMap<ConnRef, Conn>, c: ConnRef) -> String {
    conns
        .get(&c)
        .and_then(|c| c.remote)
        .map_or("?".to_string(), |a| a.to_string())
}

#[cfg(test)]
mod tests {
    //! Two lifecycles back to back over a simulated WAN that can fail one end of a connection
    //! without the other noticing (its FIN or RST lost), with a simulated clock.
    use super::*;
    use crate::session::{DedupConfig, Event, Limits, Origin};
    use proptest::prelude::*;
    use std::time::Duration;

    const GRACE: Duration = Duration::from_secs(30);
    const FLOWS: u16 = 2;

    fn setup(dial: bool) -> LinkSetup {
        LinkSetup {
            name: if dial { "gw-a" } else { "gw-b" }.into(),
            peer_name: if dial { "gw-b" } else { "gw-a" }.into(),
            dial: dial.then(|| "192.0.2.2:7700".parse().unwrap()),
            data_flows: FLOWS,
            tunnel: TunnelSetup {
                side: Side::Dialer,
                limits: Limits::default(),
                flows: 0,
                grace: GRACE,
                shard: crate::protocol::handshake::Shard::ONE,
                shares: SharePolicy::default(),
                dedup: DedupConfig::default(),
                dedup_store: None,
            },
        }
    }

    /// One end: its lifecycle, and which of its connections pairs with which of the peer's.
    struct End {
        link: Lifecycle,
        /// Our connection → the peer's end of it.
        peer_of: FxHashMap<ConnRef, ConnRef>,
        gone: usize,
        counted: Vec<Count>,
    }

    struct Wan {
        a: End,
        b: End,
        now: u64,
        next: ConnRef,
        /// Messages on their way: (to B?, the receiving end's connection, message).
        wire: VecDeque<(bool, ConnRef, Message)>,
        /// Ends whose other end died unheard: their transport times out then (at B?, the
        /// connection, when).
        half_dead: Vec<(bool, ConnRef, u64)>,
        /// The WAN is cut: nothing is dialled.
        cut: bool,
    }

    /// How long an end whose other end died unheard takes to notice (its flow timeout).
    const FLOW_TIMEOUT_US: u64 = 3_000_000;

    impl Wan {
        fn new() -> Wan {
            let end = |dial| End {
                link: Lifecycle::new(setup(dial)),
                peer_of: FxHashMap::default(),
                gone: 0,
                counted: Vec::new(),
            };
            Wan {
                a: end(true),
                b: end(false),
                now: 1,
                next: 1,
                wire: VecDeque::new(),
                half_dead: Vec::new(),
                cut: false,
            }
        }

        fn end(&mut self, b: bool) -> &mut End {
            if b {
                &mut self.b
            } else {
                &mut self.a
            }
        }

        /// Carries out both ends' actions, and what their cores want sent; B connects every
        /// session A opens at once.
        fn settle(&mut self) {
            loop {
                let mut any = false;
                for side in [false, true] {
                    while let Some(action) = self.end(side).link.poll_action() {
                        any = true;
                        match action {
                            Action::Send { conn, msg } => {
                                if let Some(&to) = self.end(side).peer_of.get(&conn) {
                                    self.wire.push_back((!side, to, msg));
                                }
                            }
                            // The close is seen by the other end (a FIN or RST that arrives).
                            Action::Close { conn, .. } => {
                                if let Some(to) = self.end(side).peer_of.remove(&conn) {
                                    let now = self.now;
                                    let other = self.end(!side);
                                    other.peer_of.remove(&to);
                                    let fault = Fault {
                                        kind: FaultKind::Closed,
                                        why: &"connection closed by peer",
                                    };
                                    other.link.failed(to, fault, now);
                                }
                            }
                            Action::TunnelGone(_) => self.end(side).gone += 1,
                            Action::Count(c) => self.end(side).counted.push(c),
                            Action::Trust(_) => {}
                        }
                    }
                    let wire = &mut self.wire;
                    let end = if side { &mut self.b } else { &mut self.a };
                    if let Some(t) = &mut end.link.tunnel {
                        let mut accept = Vec::new();
                        while let Some(e) = t.core.poll_event() {
                            if let Event::ConnectRequested { session, .. } = e {
                                accept.push(session);
                            }
                        }
                        for id in accept {
                            t.core.accept(id).expect("a session just requested");
                        }
                        let control = t.table.control().and_then(|c| end.peer_of.get(&c));
                        if let Some(&to) = control {
                            while let Some(msg) = t.core.poll_control() {
                                any = true;
                                wire.push_back((!side, to, msg));
                            }
                        }
                    }
                }
                if let Some((to_b, conn, msg)) = self.wire.pop_front() {
                    let now = self.now;
                    self.end(to_b).link.message(conn, msg, now);
                    continue;
                }
                if !any {
                    return;
                }
            }
        }

        /// A dials what is due; each dial connects and is keyed at once.
        fn dial(&mut self) {
            while let Some(role) = self.a.link.poll_dial(self.now).filter(|_| !self.cut) {
                let (ca, cb) = (self.next, self.next + 1);
                self.next += 2;
                let now = self.now;
                self.a.link.dialling(role, ca, now);
                self.b
                    .link
                    .accepted(cb, Some("192.0.2.1:40000".parse().unwrap()), true, now);
                self.a.peer_of.insert(ca, cb);
                self.b.peer_of.insert(cb, ca);
                self.a.link.keyed(ca, None, DedupOffer::default(), now);
                self.b.link.keyed(cb, None, DedupOffer::default(), now);
                self.settle();
            }
        }

        fn advance(&mut self, us: u64) {
            self.now += us;
            let now = self.now;
            let (due, later) = self.half_dead.iter().partition(|&&(_, _, at)| at <= now);
            self.half_dead = later;
            for (b, conn, _) in due {
                self.kill(b, conn, false);
            }
            self.a.link.handle_timeout(now);
            self.b.link.handle_timeout(now);
            self.settle();
            self.dial();
        }

        /// One end's connection dies; the other end hears of it only if `heard`.
        fn kill(&mut self, b: bool, conn: ConnRef, heard: bool) {
            let now = self.now;
            let Some(to) = self.end(b).peer_of.remove(&conn) else {
                return;
            };
            let fault = Fault {
                kind: FaultKind::Closed,
                why: &"connection reset",
            };
            self.end(b).link.failed(conn, fault, now);
            if heard {
                let fault = Fault {
                    kind: FaultKind::Closed,
                    why: &"connection reset",
                };
                let other = self.end(!b);
                other.peer_of.remove(&to);
                other.link.failed(to, fault, now);
            } else {
                // Its RST lost: the other end notices when its transport times out.
                let at = now + FLOW_TIMEOUT_US;
                self.half_dead.push((!b, to, at));
            }
            self.settle();
        }

        /// The tunnel's connections in place at one end, control first.
        fn in_place(&mut self, b: bool) -> Vec<ConnRef> {
            let end = self.end(b);
            end.link.tunnel.as_ref().map_or(Vec::new(), |t| {
                t.table.connections().map(|(_, c)| c).collect()
            })
        }

        fn up(&self) -> bool {
            let whole = |e: &End| {
                e.link
                    .tunnel
                    .as_ref()
                    .is_some_and(|t| t.table.is_up() && t.table.missing_flows().next().is_none())
            };
            whole(&self.a) && whole(&self.b)
        }

        fn sessions(&self, b: bool) -> usize {
            let end = if b { &self.b } else { &self.a };
            end.link
                .tunnel
                .as_ref()
                .map_or(0, |t| t.core.session_count())
        }
    }

    fn hello(resume: Option<TunnelId>) -> Message {
        Message::Hello {
            resume,
            name: "gw-a".into(),
            data_flows: FLOWS,
        }
    }

    fn running() -> Wan {
        let mut w = Wan::new();
        w.dial();
        for _ in 0..10 {
            w.advance(1_000);
        }
        assert!(w.up(), "the tunnel came up");
        w
    }

    fn open(w: &mut Wan) {
        let t = w.a.link.tunnel.as_mut().expect("a tunnel");
        t.core
            .open("198.51.100.1:22".parse().unwrap(), Origin::default())
            .expect("room for a session");
        w.settle();
    }

    #[test]
    fn the_dialler_sends_hello_and_attaches_its_flows_after_the_welcome() {
        let mut w = running();
        let a = w.in_place(false);
        let b = w.in_place(true);
        assert_eq!(a.len(), 1 + usize::from(FLOWS));
        // Each end's connection in a role is the other end's in the same role.
        let paired: Vec<ConnRef> = a.iter().map(|c| w.a.peer_of[c]).collect();
        assert_eq!(paired, b);
        assert_eq!(
            w.a.link.tunnel.as_ref().map(|t| t.id),
            w.b.link.tunnel.as_ref().map(|t| t.id)
        );
    }

    #[test]
    fn a_control_connection_lost_at_one_end_only_is_replaced_and_the_tunnel_resumes() {
        let mut w = running();
        open(&mut w);
        let id = w.a.link.tunnel.as_ref().unwrap().id;
        let control = w.in_place(false)[0];
        // A's socket dies; B's end of it never hears (its RST lost).
        w.kill(false, control, false);
        w.advance(1_000);
        assert!(w.up());
        assert_eq!(w.a.link.tunnel.as_ref().unwrap().id, id, "resumed, not new");
        assert_eq!(w.b.link.tunnel.as_ref().unwrap().id, id);
        assert_eq!((w.sessions(false), w.sessions(true)), (1, 1));
        assert_eq!(
            w.a.counted
                .iter()
                .filter(|&&c| c == Count::TunnelResumed)
                .count(),
            1
        );
        assert_eq!((w.a.gone, w.b.gone), (0, 0));
        // B closed the old connection it still held when the new one attached.
        let held: Vec<ConnRef> = w.b.peer_of.keys().copied().collect();
        assert_eq!(held.len(), 1 + usize::from(FLOWS));
    }

    #[test]
    fn a_handshake_that_never_completes_is_closed_at_its_deadline() {
        let mut l = Lifecycle::new(setup(false));
        l.accepted(7, None, false, 0);
        assert_eq!(l.poll_timeout(), Some(HANDSHAKE_US + 1));
        l.handle_timeout(HANDSHAKE_US);
        assert!(l.poll_action().is_none(), "not yet");
        l.handle_timeout(HANDSHAKE_US + 1);
        assert!(matches!(
            l.poll_action(),
            Some(Action::Close {
                conn: 7,
                graceful: true
            })
        ));
        assert!(matches!(
            l.poll_action(),
            Some(Action::Count(Count::HandshakeFailed))
        ));
        assert_eq!(l.poll_timeout(), None);
    }

    #[test]
    fn a_replayed_first_handshake_message_is_neither_counted_ok_nor_trusted() {
        // A replay of a captured message 1 is valid Noise: the acceptor keys the connection,
        // but only the real dialler can seal the first record. Until that arrives, nothing
        // says the source holds the key.
        let mut l = Lifecycle::new(setup(false));
        let from: SocketAddr = "198.51.100.7:4000".parse().unwrap();
        l.accepted(7, Some(from), false, 0);
        l.keyed(7, Some(from), DedupOffer::default(), 1);
        let fault = Fault {
            kind: FaultKind::Other,
            why: &"record failed authentication",
        };
        l.failed(7, fault, 2);
        let actions: Vec<Action> = std::iter::from_fn(|| l.poll_action()).collect();
        let said = |a: &Action| matches!(a, Action::Count(Count::HandshakeOk) | Action::Trust(_));
        assert!(!actions.iter().any(said), "keyed is not authenticated");
        assert!(actions
            .iter()
            .any(|a| matches!(a, Action::Count(Count::HandshakeFailed))));
        // The real dialler's hello proves it.
        l.accepted(8, Some(from), false, 3);
        l.keyed(8, Some(from), DedupOffer::default(), 4);
        l.message(8, hello(None), 5);
        let actions: Vec<Action> = std::iter::from_fn(|| l.poll_action()).collect();
        assert!(actions
            .iter()
            .any(|a| matches!(a, Action::Count(Count::HandshakeOk))));
        assert!(actions
            .iter()
            .any(|a| matches!(a, Action::Trust(ip) if *ip == from.ip())));
    }

    #[test]
    fn a_handshake_flood_evicts_itself_and_a_slot_is_free_once_its_first_message_came() {
        let mut l = Lifecycle::new(setup(false));
        let closed = |l: &mut Lifecycle| -> Vec<ConnRef> {
            std::iter::from_fn(|| l.poll_action())
                .filter_map(|a| match a {
                    Action::Close { conn, .. } => Some(conn),
                    _ => None,
                })
                .collect()
        };
        let flood = |i: u64| SocketAddr::from(([10, 0, (i / 200) as u8, (i % 200) as u8], 1000));
        let peer: SocketAddr = "192.0.2.1:4000".parse().unwrap();
        // The peer's connection, trusted, is in first; a flood from one /16 never displaces it.
        l.accepted(1, Some(peer), true, 0);
        for i in 0..500 {
            l.accepted(100 + i, Some(flood(i)), false, 1);
            assert!(
                !closed(&mut l).contains(&1),
                "the peer's handshake was evicted"
            );
        }
        assert!(l.handshakes.len() <= MAX_PENDING_HANDSHAKES);
        assert!(
            l.conns.len() <= MAX_PENDING_HANDSHAKES,
            "every evicted one forgotten"
        );
        // Its first message ends its handshake: its slot is free, and it stays.
        l.keyed(1, Some(peer), DedupOffer::default(), 2);
        l.message(1, hello(None), 3);
        assert!(l.handshakes.len() < MAX_PENDING_HANDSHAKES);
        assert_eq!(l.in_place(1), Some(Role::Control));
    }

    #[test]
    fn data_on_the_control_connection_breaks_the_protocol_and_the_tunnel_is_held() {
        let mut w = running();
        let control = w.in_place(true)[0];
        let frame = Message::Data(crate::protocol::DataFrame {
            session: crate::protocol::SessionId(1),
            offset: 0,
            flags: 0,
            payload: bytes::Bytes::from_static(b"x"),
        });
        let now = w.now;
        w.b.link.message(control, frame, now);
        w.settle();
        let t = w.b.link.tunnel.as_ref().expect("held");
        assert!(!t.table.is_up() && t.poll_timeout().is_some());
        w.advance(1_000);
        assert!(
            w.up(),
            "A saw the close and dialled a new control connection"
        );
    }

    #[test]
    fn a_grace_period_without_a_control_connection_gives_the_tunnel_up() {
        let mut w = running();
        open(&mut w);
        let control = w.in_place(true)[0];
        // The WAN is cut: B's end dies, and A cannot dial anew once its own times out.
        w.cut = true;
        w.kill(true, control, false);
        w.advance(GRACE.as_micros() as u64);
        assert!(w.b.link.tunnel.is_none(), "B gave the tunnel up");
        assert_eq!(w.b.gone, 1);
    }

    proptest! {
        /// Any interleaving of connection deaths (heard by both ends or by one only), re-dials
        /// and resumes, each outage shorter than the grace period, ends with one tunnel whose
        /// control connection and flows pair up end to end, and with no session lost.
        #[test]
        fn any_interleaving_of_deaths_and_redials_keeps_one_control_and_every_session(
            events in proptest::collection::vec((0u8..4, any::<bool>(), any::<bool>(), 0usize..3), 1..40)
        ) {
            let mut w = running();
            let mut sessions = 0;
            for (op, at_b, heard, which) in events {
                match op {
                    0 => {
                        if w.a.link.is_up() {
                            open(&mut w);
                            sessions += 1;
                        }
                    }
                    1 | 2 => {
                        let conns = w.in_place(at_b);
                        if let Some(&c) = conns.get(which) {
                            w.kill(at_b, c, heard);
                        }
                    }
                    _ => w.advance(200_000),
                }
            }
            // Long enough for any backoff, far shorter than the grace period.
            for _ in 0..60 {
                w.advance(100_000);
            }
            prop_assert!(w.up(), "the tunnel is whole again");
            let (a, b) = (w.in_place(false), w.in_place(true));
            let paired: Vec<ConnRef> = a.iter().map(|c| w.a.peer_of[c]).collect();
            prop_assert_eq!(paired, b, "each role's connections are the two ends of one");
            prop_assert_eq!((w.a.gone, w.b.gone), (0, 0));
            prop_assert_eq!((w.sessions(false), w.sessions(true)), (sessions, sessions));
        }
    }
}

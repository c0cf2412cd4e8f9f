//! The WAN side of the engine: the tunnel's control connection and N data
//! flows on userspace TCP sockets, with the same protocol behaviour as the
//! kernel datapath (docs/PROTOCOL.md): hello/welcome/attach, resuming a
//! held tunnel after the control connection dies, re-dialling dead flows
//! (their frames go out again on the others), fair admission of
//! unauthenticated connections, handshake timeouts.
//!
//! Admission on the tunnel port ([`crate::link::admission`]) happens in two
//! steps. A SYN passes the WAN port's gate (`net::TunnelGate`: `peer.source`,
//! and a budget of listening sockets for sources that never authenticated,
//! so the peer's reserve is never taken) and becomes a half-open
//! connection, kept apart and dropped after 3 s. Only once its TCP
//! handshake completes does it become a connection with a slot in the
//! handshake table.

use std::net::{IpAddr, SocketAddr, SocketAddrV4};

use log::{info, warn};
use smoltcp::socket::tcp;

use super::crypto::{ConnId, CryptoJob, CryptoPipe};
use super::engine::Engine;
use super::net::{endpoint_addr, is_connected, Embryo, Retire, TunnelGate};
use super::phy::FramePort;
use super::wan::{Identity, WanConn, WanError};
use crate::admin::{Config, Stats, TunnelEnd};
use crate::crypto::MAX_RECORD_LEN;
use crate::link::admission::{self, Admission, Throttle, MAX_PENDING_HANDSHAKES};
use crate::link::{
    first_message, name_mismatch, peer_label, welcome_step, Current, DialFailed, Dialer, FirstStep,
    Lost, Role, TunnelSetup, TunnelState, WelcomeStep, FLOWS_ATTACH_TIMEOUT, HANDSHAKE_TIMEOUT,
};
use crate::protocol::{Message, ResetReason, TunnelId};
use crate::session::Side;

/// Listening sockets on the tunnel port that sources which never
/// authenticated as the peer may take between two turns; the others are the
/// peer's reserve (its control connection and N flows re-dial in a burst).
const UNTRUSTED_LISTENERS: usize = 8;
/// A half-open connection to the tunnel port is dropped after this long
/// (a SYN-ACK retransmitted once on a long path fits in it).
const HALF_OPEN_TIMEOUT_US: u64 = 3_000_000;
/// Half-open connections from untrusted sources kept at once; beyond, the
/// oldest are dropped (a spoofed flood displaces only itself).
const MAX_HALF_OPEN: usize = 64;

/// The dialling gateway: where the peer is, and when to dial it ([`crate::link::dialer`]).
pub struct Dialling {
    addr: SocketAddrV4,
    pub dialer: Dialer,
}

impl Dialling {
    pub fn for_config(config: &Config) -> Option<Dialling> {
        match config.tunnel {
            TunnelEnd::Dial(SocketAddr::V4(addr)) => Some(Dialling {
                addr,
                dialer: Dialer::new(config.data_flows as usize),
            }),
            // IPv6 is refused by config validation for this datapath.
            _ => None,
        }
    }

    fn awaiting_welcome(d: &Option<Dialling>, conn: ConnId) -> bool {
        d.as_ref().and_then(|d| d.dialer.awaiting_welcome()) == Some(conn)
    }
}

/// Connection `c`'s remote address for logs (`?` while unknown).
fn remote_of(conns: &rustc_hash::FxHashMap<ConnId, WanConn>, c: ConnId) -> String {
    conns
        .get(&c)
        .and_then(|c| c.remote)
        .map_or("?".to_string(), |a| a.to_string())
}

impl<P: FramePort, C: CryptoPipe> Engine<P, C> {
    /// A WAN socket: buffers for a long fat flow, SACK/RACK loss recovery
    /// (only the holes go again, lost retransmissions are found by time), the
    /// configured congestion control (default BBR: paced, and random loss
    /// does not shrink its window), no Nagle (records are whole), one ACK per
    /// poll for out-of-order data instead of one per segment (under loss
    /// that was half the flow's packets), and a silent-peer timeout.
    fn wan_socket(&mut self) -> smoltcp::iface::SocketHandle {
        let buf = self.config.socket_buffer.unwrap_or(32 << 20);
        let h = self.wan.add_socket(buf, buf);
        let s = self.wan.socket(h);
        s.set_nagle_enabled(false);
        s.set_loss_recovery(tcp::LossRecovery::Rack);
        s.set_ack_batching(true);
        s.set_congestion_control(match self.config.congestion.as_deref() {
            Some("cubic") => tcp::CongestionControl::Cubic,
            Some("reno") => tcp::CongestionControl::Reno,
            Some("none") => tcp::CongestionControl::None,
            _ => tcp::CongestionControl::Bbr,
        });
        let timeout = self.config.flow_timeout;
        s.set_timeout(Some(smoltcp::time::Duration::from_micros(
            timeout.as_micros() as u64,
        )));
        s.set_keep_alive(Some(smoltcp::time::Duration::from_micros(
            timeout.as_micros() as u64 / 3,
        )));
        h
    }

    /// Accepting gateway: listening sockets on the tunnel port.
    pub(super) fn start_listeners(&mut self) {
        self.start_ingress();
        if let TunnelEnd::Listen(addr) = self.config.tunnel {
            if self.shard.index == 0 {
                info!(
                    "waiting for peer {} on {addr}{}",
                    self.config.peer_name,
                    admission::only_from(self.config.peer_source.as_ref())
                );
            }
            let sources = self.config.peer_source.clone();
            let gate = TunnelGate::new(
                addr.port(),
                sources,
                MAX_PENDING_HANDSHAKES,
                self.stats.clone(),
            );
            self.wan.set_gate(gate);
        }
        self.refill_wan_listeners();
    }

    /// Listening sockets the peer may need at once (its control connection
    /// and every data flow).
    fn peer_reserve(&self) -> usize {
        self.config.data_flows as usize + 1
    }

    fn refill_wan_listeners(&mut self) {
        let TunnelEnd::Listen(addr) = self.config.tunnel else {
            return;
        };
        let reserve = self.peer_reserve();
        while self.wan_listeners.len() < reserve + UNTRUSTED_LISTENERS {
            let h = self.wan_socket();
            let ep = smoltcp::wire::IpListenEndpoint {
                addr: None,
                port: addr.port(),
            };
            if self.wan.socket(h).listen(ep).is_err() {
                self.wan.remove(h);
                return;
            }
            self.wan_listeners.push(h);
        }
        // What is left beyond the reserve, until the next turn.
        let spare = self.wan_listeners.len().saturating_sub(reserve);
        if let Some(g) = self.wan.gate_mut() {
            g.set_budget(spare);
        }
    }

    fn new_conn_id(&mut self) -> ConnId {
        let id = self.next_conn;
        self.next_conn += 1;
        id
    }

    /// One turn of the WAN side.
    pub(super) fn wan_turn(&mut self, now: u64) {
        self.take_wan_connections(now);
        let mut ids = std::mem::take(&mut self.scratch_conns);
        ids.clear();
        ids.extend(self.conns.keys());
        for &id in &ids {
            if let Err(e) = self.drive_conn(id, now) {
                self.fail_conn(id, e, now);
            }
        }
        self.scratch_conns = ids;
        self.send_control();
        self.fill_flows(now);
        for c in self.conns.values_mut() {
            if c.is_keyed() {
                let sock = self.wan.socket(c.handle);
                // Errors surface as a dead socket on the next turn.
                let _ = c.flush(sock);
            }
        }
        self.dial(now);
        self.expire_grace(now);
    }

    /// Takes connections the tunnel-port listeners accepted.
    fn take_wan_connections(&mut self, now: u64) {
        let mut taken = Vec::new();
        self.wan_listeners.retain(|&h| {
            let state = self.wan.sockets.get::<tcp::Socket>(h).state();
            if state == tcp::State::Listen {
                true
            } else {
                taken.push(h);
                false
            }
        });
        for h in taken {
            let sock = self.wan.sockets.get::<tcp::Socket>(h);
            let remote = sock.remote_endpoint().map(|e| endpoint_addr(e).ip());
            match (sock.state(), remote) {
                (tcp::State::SynReceived, Some(IpAddr::V4(ip))) => {
                    if let Some(g) = self.wan.gate_mut() {
                        let trusted = g.handshakes.trust.is_trusted(IpAddr::V4(ip));
                        g.embryos.push(Embryo {
                            handle: h,
                            ip,
                            since: now,
                            trusted,
                        });
                    }
                }
                _ if is_connected(sock) => self.accept_wan(h, now),
                _ => self.wan.retire(h, Retire::Abort, now),
            }
        }
        self.tend_half_open(now);
        self.refill_wan_listeners();
    }

    /// Half-open connections: those whose handshake completed become
    /// connections; those that closed, timed out or (untrusted, beyond
    /// [`MAX_HALF_OPEN`]) are the oldest are dropped.
    fn tend_half_open(&mut self, now: u64) {
        let Some(g) = self.wan.gate_mut() else { return };
        let embryos = std::mem::take(&mut g.embryos);
        let (mut keep, mut done, mut dropped) = (Vec::new(), Vec::new(), Vec::new());
        for e in embryos {
            let sock = self.wan.sockets.get::<tcp::Socket>(e.handle);
            if is_connected(sock) {
                done.push(e.handle);
            } else if sock.state() == tcp::State::Closed {
                self.wan.retire(e.handle, Retire::Abort, now);
            } else if now.saturating_sub(e.since) >= HALF_OPEN_TIMEOUT_US {
                dropped.push((e, "no handshake within 3 s"));
            } else {
                keep.push(e);
            }
        }
        let untrusted = keep.iter().filter(|e| !e.trusted).count();
        let mut excess = untrusted.saturating_sub(MAX_HALF_OPEN);
        keep.retain(|e| {
            if excess > 0 && !e.trusted {
                excess -= 1;
                dropped.push((*e, "displaced by newer half-open connections"));
                false
            } else {
                true
            }
        });
        for (e, why) in dropped {
            self.wan.retire(e.handle, Retire::Abort, now);
            if let Some(g) = self.wan.gate_mut() {
                g.note_dropped(&e, why);
            }
        }
        if let Some(g) = self.wan.gate_mut() {
            g.embryos = keep;
        }
        for h in done {
            self.accept_wan(h, now);
        }
    }

    /// A connection whose TCP handshake completed: it takes a slot in the
    /// handshake table, fairly (see [`crate::link::admission`]), or is dropped.
    fn accept_wan(&mut self, h: smoltcp::iface::SocketHandle, now: u64) {
        let id = self.new_conn_id();
        let sock = self.wan.sockets.get::<tcp::Socket>(h);
        let addr = sock.remote_endpoint().map(endpoint_addr);
        self.conns.insert(id, WanConn::accepted(id, h, now));
        let Some(g) = self.wan.gate_mut() else { return };
        let addr = addr.unwrap_or(SocketAddr::from(([0, 0, 0, 0], 0)));
        let admission = g.handshakes.admit(id, addr);
        let (drop, who) = match admission {
            Admission::Admitted { evicted: None } => return,
            Admission::Admitted {
                evicted: Some(victim),
            } => victim,
            Admission::Refused => (id, addr),
        };
        let why = g.handshakes.why(&admission, &self.config.peer_name);
        Stats::inc(&self.stats.handshakes_busy);
        if let Some(more) = g.log_now() {
            warn!(
                "handshake with {who} dropped: {why}{}",
                Throttle::more(more)
            );
        }
        self.close_conn(drop);
    }

    /// Advances one connection: connect, handshake, records in and out.
    fn drive_conn(&mut self, id: ConnId, now: u64) -> Result<(), WanError> {
        let me = Identity {
            link: self.config.identity(self.shard),
            rekey: self.config.rekey(),
        };
        let Some(conn) = self.conns.get_mut(&id) else {
            return Ok(());
        };
        let sock = self.wan.sockets.get_mut::<tcp::Socket>(conn.handle);
        let mut attached = None;
        if conn.handshake(sock, &me, &mut self.crypto)? {
            Stats::inc(&self.stats.handshakes_ok);
            if !conn.dialed {
                // It holds the peer's key: favoured when it re-dials under a flood.
                let ip = conn.remote.map(|a| a.ip());
                if let (Some(ip), Some(g)) = (ip, self.wan.gate_mut()) {
                    g.handshakes.trust.authenticated(ip);
                }
            }
            // The dialler's first record says what this connection is for.
            match (conn.dialed, conn.role) {
                (true, Some(Role::Control)) => {
                    let hello = self.config.hello(self.tunnel.as_ref().map(|t| t.id));
                    conn.seal(hello, &mut self.crypto);
                }
                (true, Some(Role::Flow(k))) => {
                    // Flows are dialled for a tunnel and closed with it, so this
                    // cannot miss; if it did, the flow closes (quietly: no tunnel).
                    let Some(tunnel_id) = self.tunnel.as_ref().map(|t| t.id) else {
                        return Err(WanError::Unexpected {
                            got: "data flow",
                            expected: "a tunnel to attach to",
                        });
                    };
                    let flow = u16::try_from(k).expect("at most MAX_DATA_FLOWS");
                    conn.seal(Message::Attach { tunnel_id, flow }, &mut self.crypto);
                    let again = self
                        .dialer
                        .as_mut()
                        .is_some_and(|d| d.dialer.flow_attached(k));
                    if let (true, Some(t)) = (again, &self.tunnel) {
                        info!("peer {}: data flow {k} re-attached", t.peer);
                    }
                    attached = Some(k);
                }
                _ => {}
            }
        }
        if let Some(k) = attached {
            self.attach_flow(id, k);
        }
        let conn = self.conns.get_mut(&id).expect("still there");
        let awaiting =
            conn.role.is_none() || Dialling::awaiting_welcome(&self.dialer, id) || !conn.is_keyed();
        if awaiting && now.saturating_sub(conn.created) > HANDSHAKE_TIMEOUT.as_micros() as u64 {
            return Err(WanError::Handshake(
                crate::crypto::HandshakeError::TimedOut(HANDSHAKE_TIMEOUT),
            ));
        }
        if conn.is_keyed() {
            // The core's bounds hold the peer back in TCP: control while
            // its answers pile up, data while endpoints leave the receive
            // budget full (never by dropping).
            let core = self.tunnel.as_ref().map(|t| &t.core);
            let held = match conn.role {
                Some(Role::Control) => core.is_some_and(|c| c.control_backlogged()),
                Some(Role::Flow(_)) => core.is_some_and(|c| c.receive_paused()),
                None => false,
            };
            let sock = self.wan.sockets.get_mut::<tcp::Socket>(conn.handle);
            if !held {
                conn.read_records(sock, &mut self.crypto)?;
            }
            conn.flush(sock)?;
        }
        Ok(())
    }

    /// Control messages from the core onto the control connection.
    fn send_control(&mut self) {
        let Some(t) = &mut self.tunnel else { return };
        let Some(conn) = t.table.control().and_then(|c| self.conns.get_mut(&c)) else {
            return;
        };
        if !conn.is_keyed() {
            return;
        }
        while let Some(msg) = t.core.poll_control() {
            conn.seal(msg, &mut self.crypto);
        }
    }

    /// Frames from the core onto every data flow that has room: the flow
    /// that can send soonest takes the next frame.
    fn fill_flows(&mut self, now: u64) {
        let Some(t) = &mut self.tunnel else { return };
        let max_record = (self.config.limits.frame_len + 64).min(MAX_RECORD_LEN);
        let (conns, wan) = (&self.conns, &self.wan);
        t.sample_flows(now, |c| {
            let sock = wan.sockets.get::<tcp::Socket>(conns.get(&c)?.handle);
            Some(super::wan::flow_progress(sock))
        });
        for k in 0..t.table.flow_count() {
            let Some(conn) = t.table.flow(k).and_then(|c| self.conns.get_mut(&c)) else {
                continue;
            };
            let sock = self.wan.sockets.get::<tcp::Socket>(conn.handle);
            while conn.room_for_record(sock, max_record) {
                let Some(frame) = t.core.poll_frame(now, k) else {
                    break;
                };
                conn.seal(Message::Data(frame), &mut self.crypto);
            }
        }
    }

    /// A decrypted message arrived on connection `id`.
    pub(super) fn on_message(&mut self, id: ConnId, msg: Message, now: u64) {
        let Some(conn) = self.conns.get(&id) else {
            return;
        };
        let awaiting_welcome = Dialling::awaiting_welcome(&self.dialer, id);
        match conn.role {
            None => self.on_first_message(id, msg, now),
            Some(Role::Control) if awaiting_welcome => self.on_welcome(id, msg, now),
            Some(Role::Control) => match msg {
                Message::Data(_) => self.fail_conn(
                    id,
                    WanError::Unexpected {
                        got: "data",
                        expected: "a control message",
                    },
                    now,
                ),
                msg => self.apply(msg),
            },
            Some(Role::Flow(_)) => match msg {
                msg @ Message::Data(_) => self.apply(msg),
                msg => self.fail_conn(
                    id,
                    WanError::Unexpected {
                        got: msg.name(),
                        expected: "data",
                    },
                    now,
                ),
            },
        }
    }

    /// Accepting gateway: the first record says hello (control) or attach (data).
    fn on_first_message(&mut self, id: ConnId, msg: Message, now: u64) {
        // Its handshake is over, whatever the message makes of it.
        if let Some(g) = self.wan.gate_mut() {
            g.handshakes.done(id);
        }
        let remote = self.conns.get(&id).and_then(|c| c.remote);
        let peer = peer_label(&self.config.peer_name, remote);
        if let Message::Hello { name, .. } = &msg {
            if let Some(w) = name_mismatch(&self.config.peer_name, &peer, name) {
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
                return self.close_conn(id);
            }
        };
        match step {
            FirstStep::Attach { index } => return self.attach_flow(id, index),
            FirstStep::Resume => {}
            FirstStep::NewTunnel { id: tid, flows } => {
                self.shut_tunnel(ResetReason::TunnelLost, now);
                let setup = self.tunnel_setup(Side::Acceptor, flows);
                self.tunnel = Some(TunnelState::new(setup, tid, peer));
            }
        }
        let welcome = Message::Welcome {
            tunnel_id: self.tunnel.as_ref().expect("resumed or set above").id,
            name: self.config.name.clone(),
        };
        if let Some(c) = self.conns.get_mut(&id) {
            c.role = Some(Role::Control);
            c.seal(welcome, &mut self.crypto);
        }
        self.attach_control(id);
    }

    /// Connection `id` is data flow `k` of the tunnel (accepted with attach, or dialled and
    /// keyed).
    fn attach_flow(&mut self, id: ConnId, k: usize) {
        let Some(t) = self.tunnel.as_mut() else {
            return;
        };
        let names = |c: ConnId| remote_of(&self.conns, c);
        // first_message checked k against the flow count.
        let Some(attached) = t.attach_flow(k, id, &names) else {
            return;
        };
        if let Some(old) = attached.replaced {
            Stats::inc(&self.stats.flows_lost);
            self.close_conn(old);
        }
        if let Some(c) = self.conns.get_mut(&id) {
            c.role = Some(Role::Flow(k));
        }
    }

    /// Dialling gateway: the welcome to our hello.
    fn on_welcome(&mut self, id: ConnId, msg: Message, now: u64) {
        let Message::Welcome { tunnel_id, name } = msg else {
            return self.fail_conn(
                id,
                WanError::Unexpected {
                    got: msg.name(),
                    expected: "welcome",
                },
                now,
            );
        };
        let remote = self.conns.get(&id).and_then(|c| c.remote);
        let peer = peer_label(&self.config.peer_name, remote);
        if let Some(w) = name_mismatch(&self.config.peer_name, &peer, &name) {
            warn!("{w}");
        }
        let step = welcome_step(self.tunnel.as_ref().map(|t| t.id), tunnel_id);
        if step != WelcomeStep::Resume {
            if let Some(w) = step.warning(&peer) {
                warn!("{w}");
            }
            self.shut_tunnel(ResetReason::TunnelLost, now);
            let setup = self.tunnel_setup(Side::Dialer, self.config.data_flows as usize);
            self.tunnel = Some(TunnelState::new(setup, tunnel_id, peer));
        }
        // After the old tunnel is gone: the new one's flows have their deadline.
        if let Some(d) = &mut self.dialer {
            d.dialer.welcomed(now, step != WelcomeStep::Resume);
        }
        self.attach_control(id);
    }

    /// Makes `id` the tunnel's control connection; after an outage both
    /// ends restate their sessions (resync).
    fn attach_control(&mut self, id: ConnId) {
        let Some(t) = &mut self.tunnel else { return };
        let names = |c: ConnId| remote_of(&self.conns, c);
        let peer_dedup = self.conns.get(&id).map(|c| c.peer_dedup);
        let attached = t.attach_control(id, &names, peer_dedup.unwrap_or_default());
        if attached.resumed {
            Stats::inc(&self.stats.tunnel_resumes);
        }
        if let Some(old) = attached.replaced {
            self.close_conn(old);
        }
    }

    /// The core and connection table of a new tunnel on this shard.
    fn tunnel_setup(&self, side: Side, flows: usize) -> TunnelSetup {
        let store = self.dedup_store.clone();
        self.config
            .tunnel_setup(side, flows, self.shard, self.shares.clone(), store)
    }

    /// Dialling gateway: (re)connect the control connection and data flows.
    fn dial(&mut self, now: u64) {
        let Some(addr) = self.dialer.as_ref().map(|d| d.addr) else {
            return;
        };
        loop {
            let table = self.tunnel.as_ref().map(|t| &t.table);
            let Some(role) = self
                .dialer
                .as_ref()
                .and_then(|d| d.dialer.poll_dial(now, table))
            else {
                return;
            };
            let dialled = self.dial_one(addr, role, now);
            let d = &mut self.dialer.as_mut().expect("checked above").dialer;
            match dialled {
                Some(id) => d.dialling(role, id),
                None => {
                    let _ = d.not_dialled(role, now);
                }
            }
        }
    }

    fn dial_one(&mut self, addr: SocketAddrV4, role: Role, now: u64) -> Option<ConnId> {
        let h = self.wan_socket();
        if let Err(e) = self.wan.connect(h, addr) {
            warn!(
                "cannot connect to peer {} ({addr}): {e}",
                self.config.peer_name
            );
            self.wan.remove(h);
            return None;
        }
        let id = self.new_conn_id();
        self.conns.insert(id, WanConn::dialing(id, h, role, now));
        Some(id)
    }

    /// A held tunnel whose grace period ran out, or a new one whose flows did not attach in
    /// time, is given up.
    fn expire_grace(&mut self, now: u64) {
        let Some(t) = &mut self.tunnel else { return };
        // The grace period's end says why itself.
        if !t.handle_timeout(now) {
            let late = |d: &mut Dialling| d.dialer.handle_timeout(now, Some(&t.table));
            if !self.dialer.as_mut().is_some_and(late) {
                return;
            }
            warn!(
                "tunnel to peer {}: data flows did not attach within {FLOWS_ATTACH_TIMEOUT:?}; giving up",
                t.peer
            );
        }
        self.shut_tunnel(ResetReason::TunnelLost, now);
    }

    /// Takes the tunnel down: every session reset, every connection closed.
    pub(super) fn shut_tunnel(&mut self, reason: ResetReason, now: u64) {
        let Some(t) = &mut self.tunnel else { return };
        let _ = t.reset_all(reason);
        self.dispatch_events(now);
        let t = self.tunnel.take().expect("checked above");
        let dials = self.dialer.as_mut().map(|d| d.dialer.tunnel_gone());
        let dials = dials.unwrap_or_default();
        for (_, id) in t
            .table
            .connections()
            .chain(dials.into_iter().map(|c| (None, c)))
        {
            self.close_conn(id);
        }
    }

    /// Closes a connection at once (RST) and forgets it.
    pub(super) fn close_conn(&mut self, id: ConnId) {
        self.retire_conn(id, Retire::Abort);
    }

    fn retire_conn(&mut self, id: ConnId, how: Retire) {
        if let Some(g) = self.wan.gate_mut() {
            g.handshakes.done(id);
        }
        if let Some(c) = self.conns.remove(&id) {
            self.wan.retire(c.handle, how, self.now);
            self.crypto.submit(CryptoJob::Remove { conn: id });
        }
    }

    /// A connection failed: log it once, clearly, and repair what it was.
    pub(super) fn fail_conn(&mut self, id: ConnId, e: WanError, now: u64) {
        let Some(conn) = self.conns.get(&id) else {
            return;
        };
        let (dialed, role, remote) = (conn.dialed, conn.role, conn.remote);
        if !dialed && role.is_none() {
            // A refused handshake ends as the kernel datapath ends it: with
            // a FIN and no answer, so the dialler can tell "refused".
            self.retire_conn(
                id,
                Retire::Close {
                    by: now + 1_000_000,
                },
            );
        } else {
            self.close_conn(id);
        }
        let dialling = self.dialer.as_mut().filter(|_| dialed);
        let addr = dialling.as_ref().map(|d| SocketAddr::V4(d.addr));
        match dialling.map_or(DialFailed::NotADial, |d| d.dialer.failed(id, now)) {
            // A dialled control connection that never got its welcome.
            DialFailed::Control { retry_in } => {
                // The kernel datapath's wording, so one troubleshooting entry fits both.
                let peer = peer_label(&self.config.peer_name, addr);
                let what = match e {
                    WanError::ConnectFailed => {
                        format!("cannot connect: refused or unreachable (peer {peer})")
                    }
                    WanError::Closed | WanError::Reset => format!(
                        "handshake with peer {peer} failed: {}",
                        crate::link::PEER_CLOSED_IN_HANDSHAKE
                    ),
                    e => format!("handshake with peer {peer} failed: {e}"),
                };
                return warn!("{what}; retrying in {retry_in:?}");
            }
            // Dialled, never attached: nothing of the tunnel's was on it.
            DialFailed::Flow { k, retry_in } => {
                let peer = self.peer_label();
                return warn!("peer {peer}: data flow {k}: {e}; retrying in {retry_in:?}");
            }
            DialFailed::NotADial => {}
        }
        match role {
            // The accepting side's view of a connection that never said what it was.
            None if !dialed => {
                Stats::inc(&self.stats.handshake_failures);
                warn!(
                    "handshake with {} failed: {e}",
                    remote.map_or("?".into(), |a| a.to_string())
                );
            }
            None => {}
            Some(_) => {
                let Some(t) = &mut self.tunnel else { return };
                match t.lost(id, now, &e) {
                    Lost::Control { hold_until: None } => {
                        self.shut_tunnel(ResetReason::TunnelLost, now)
                    }
                    Lost::Control { .. } => {
                        if let Some(d) = &mut self.dialer {
                            d.dialer.control_lost(now);
                        }
                    }
                    Lost::Flow(k) => {
                        Stats::inc(&self.stats.flows_lost);
                        if let Some(d) = &mut self.dialer {
                            d.dialer.flow_lost(k, now);
                        }
                    }
                    Lost::NotInPlace => {}
                }
            }
        }
    }
}

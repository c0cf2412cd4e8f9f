//! The WAN side of the engine: the tunnel's control connection and N data
//! flows on userspace TCP sockets, with the same protocol behaviour as the
//! kernel datapath (docs/PROTOCOL.md): hello/welcome/attach, resuming a
//! held tunnel after the control connection dies, re-dialling dead flows
//! (their frames go out again on the others), fair admission of
//! unauthenticated connections, handshake timeouts.
//!
//! Admission on the tunnel port ([`crate::link::admission`]) happens in two
//! steps. A SYN passes the WAN port's gate ([`crate::link::syn_gate`]: `peer.source`,
//! and a budget of listening sockets for sources that never authenticated,
//! so the peer's reserve is never taken) and becomes a half-open
//! connection, kept apart and dropped after 3 s. Only once its TCP
//! handshake completes does it become a connection, with a slot among the
//! lifecycle's pending handshakes.

use std::net::{SocketAddr, SocketAddrV4};

use log::warn;
use smoltcp::socket::tcp;

use super::crypto::{ConnId, CryptoJob, CryptoPipe};
use super::engine::Engine;
use super::net::{endpoint_addr, is_connected, Retire, TunnelGate};
use super::phy::FramePort;
use super::wan::{Identity, WanConn};
use crate::admin::{Stats, TunnelEnd};
use crate::crypto::MAX_RECORD_LEN;
use crate::link::half_open::Handshake;
use crate::link::lifecycle::Action;
use crate::link::{ConnFailure, Role};
use crate::protocol::Message;

/// Listening sockets on the tunnel port that sources which never
/// authenticated as the peer may take between two turns; the others are the
/// peer's reserve (its control connection and N flows re-dial in a burst).
const UNTRUSTED_LISTENERS: usize = 8;

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
                self.config.announce_tunnel_port(addr);
            }
            let sources = self.config.peer_source.clone();
            let gate = TunnelGate::new(addr.port(), sources, self.stats.clone());
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
            g.syn.set_budget(spare);
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
        self.link.handle_timeout(now);
        self.run_link_actions(now);
    }

    /// Takes connections the tunnel-port listeners accepted.
    fn take_wan_connections(&mut self, now: u64) {
        // The half-open ones first: a new SYN displaces only what is still under way.
        self.tend_half_open(now);
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
            let (state, connected) = (sock.state(), is_connected(sock));
            match (state, remote, self.wan.gate_mut()) {
                (tcp::State::SynReceived, Some(ip), Some(g)) => {
                    if let Some(old) = g.syn.syn_taken(h, ip, now) {
                        Stats::inc(&self.stats.tunnel_half_open_dropped);
                        self.wan.retire(old, Retire::Abort, now);
                    }
                }
                _ if connected => self.accept_wan(h, now),
                _ => self.wan.retire(h, Retire::Abort, now),
            }
        }
        self.refill_wan_listeners();
    }

    /// Half-open connections: those whose handshake completed become connections; those that
    /// closed or timed out are dropped.
    fn tend_half_open(&mut self, now: u64) {
        let Some((g, sockets)) = self.wan.gate_with_sockets() else {
            return;
        };
        let swept = g.syn.sweep(now, |h| {
            let sock = sockets.get::<tcp::Socket>(h);
            if is_connected(sock) {
                Handshake::Completed
            } else if sock.state() == tcp::State::Closed {
                Handshake::GaveUp
            } else {
                Handshake::UnderWay
            }
        });
        Stats::add(
            &self.stats.tunnel_half_open_dropped,
            swept.timed_out.len() as u64,
        );
        for h in swept.gave_up.into_iter().chain(swept.timed_out) {
            self.wan.retire(h, Retire::Abort, now);
        }
        for h in swept.completed {
            self.accept_wan(h, now);
        }
    }

    /// A connection whose TCP handshake completed: it takes a slot among the pending
    /// handshakes, fairly (see [`crate::link::admission`]), or is dropped.
    fn accept_wan(&mut self, h: smoltcp::iface::SocketHandle, now: u64) {
        let id = self.new_conn_id();
        let sock = self.wan.sockets.get::<tcp::Socket>(h);
        let addr = sock.remote_endpoint().map(endpoint_addr);
        let trusted = match (addr, self.wan.gate_mut()) {
            (Some(a), Some(g)) => g.syn.guard.trust.is_trusted(a.ip()),
            _ => false,
        };
        self.conns.insert(id, WanConn::accepted(id, h, now));
        self.link.accepted(id, addr, trusted, now);
        self.run_link_actions(now);
    }

    /// Advances one connection: connect, handshake, records in and out.
    fn drive_conn(&mut self, id: ConnId, now: u64) -> Result<(), ConnFailure> {
        let me = Identity {
            link: self.config.identity(self.shard),
            rekey: self.config.rekey(),
        };
        let Some(conn) = self.conns.get_mut(&id) else {
            return Ok(());
        };
        let sock = self.wan.sockets.get_mut::<tcp::Socket>(conn.handle);
        if conn.handshake(sock, &me, &mut self.crypto)? {
            // A dialled connection says what it is for.
            self.link.keyed(id, conn.remote, conn.peer_dedup, now);
            self.run_link_actions(now);
        }
        let Some(conn) = self.conns.get_mut(&id).filter(|c| c.is_keyed()) else {
            return Ok(());
        };
        // The core's bounds hold the peer back in TCP: control while its answers pile up,
        // data while endpoints leave the receive budget full (never by dropping).
        let core = self.link.tunnel.as_ref().map(|t| &t.core);
        let held = match self.link.role_of(id) {
            Some(Role::Control) => core.is_some_and(|c| c.control_backlogged()),
            Some(Role::Flow(_)) => core.is_some_and(|c| c.receive_paused()),
            None => false,
        };
        let sock = self.wan.sockets.get_mut::<tcp::Socket>(conn.handle);
        if !held {
            conn.read_records(sock, &mut self.crypto)?;
        }
        conn.flush(sock)
    }

    /// Control messages from the core onto the control connection.
    fn send_control(&mut self) {
        let Some(t) = &mut self.link.tunnel else {
            return;
        };
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
        let Some(t) = &mut self.link.tunnel else {
            return;
        };
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
        self.link.message(id, msg, now);
        self.run_link_actions(now);
    }

    /// Dialling gateway: (re)connect the control connection and data flows.
    fn dial(&mut self, now: u64) {
        // IPv6 is refused by config validation for this datapath.
        let Some(SocketAddr::V4(addr)) = self.link.dial_addr() else {
            return;
        };
        while let Some(role) = self.link.poll_dial(now) {
            match self.dial_one(addr, role, now) {
                Some(id) => self.link.dialling(role, id, now),
                None => self.link.not_dialled(role, now),
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
        let data_flow = matches!(role, Role::Flow(_));
        self.conns
            .insert(id, WanConn::dialing(id, h, data_flow, now));
        Some(id)
    }

    /// Closes a connection at once (RST) and forgets it.
    pub(super) fn close_conn(&mut self, id: ConnId) {
        self.retire_conn(id, Retire::Abort);
    }

    fn retire_conn(&mut self, id: ConnId, how: Retire) {
        if let Some(c) = self.conns.remove(&id) {
            self.wan.retire(c.handle, how, self.now);
            self.crypto.submit(CryptoJob::Remove { conn: id });
        }
    }

    /// A connection failed: the link layer says what it was and what follows.
    pub(super) fn fail_conn(&mut self, id: ConnId, e: ConnFailure, now: u64) {
        self.link.conn_failed(id, &e, now);
        self.run_link_actions(now);
        // One the link layer did not know (it cannot be): closed all the same.
        self.close_conn(id);
    }

    /// Carries out what the link layer decided.
    pub(super) fn run_link_actions(&mut self, now: u64) {
        while let Some(action) = self.link.poll_action() {
            match action {
                Action::Send { conn, msg } => {
                    if let Some(c) = self.conns.get_mut(&conn) {
                        c.seal(msg, &mut self.crypto);
                    }
                }
                Action::Close { conn, graceful } => {
                    let how = if graceful {
                        Retire::Close {
                            by: now + 1_000_000,
                        }
                    } else {
                        Retire::Abort
                    };
                    self.retire_conn(conn, how);
                }
                Action::TunnelGone(mut t) => {
                    while let Some(event) = t.core.poll_event() {
                        self.on_core_event(event, now);
                    }
                }
                Action::Count(what) => self.stats.count(what),
                Action::Trust(ip) => {
                    if let Some(g) = self.wan.gate_mut() {
                        g.syn.guard.trust.authenticated(ip);
                    }
                }
            }
        }
    }
}

//! The LAN side of the engine: hypervisor connections on userspace TCP
//! sockets. Ingress takes connections on the configured ports (`listen`:
//! to one target; `tproxy`: any intercepted destination, which becomes the
//! target), egress connects to allowlisted targets the peer asked for, and
//! each session's pump ([`crate::session::pump`], driven here) moves bytes
//! between its socket and the core with backpressure: bytes are read from a
//! socket only while the core has send capacity, and taken from the core only
//! when the socket has room. Half-close travels as FIN, a reset as RST, both ways.
//!
//! A client's SYN only makes a half-open connection: its source is checked
//! (`sources`, `max_sessions_per_source`) at once, and refused with an RST;
//! a session is opened, and the far gateway connects the target, only once
//! the client's handshake has completed. So a spoofed SYN never reaches the
//! target, nor takes the first-connection slot QEMU before 8.0 relies on.
//! A connection whose session is not open within the ingress's
//! `connect_timeout_secs` of its SYN, or that moves nothing for its
//! `idle_timeout_secs` ([`crate::link::idle`]), is reset at both ends (reason "timeout"). Each
//! refusal and timeout gets one log line naming the client, and a counter.

use std::net::SocketAddr;

use bytes::Bytes;
use log::{debug, info, warn};
use smoltcp::iface::SocketHandle;
use smoltcp::socket::tcp;
use smoltcp::wire::IpListenEndpoint;

use super::crypto::CryptoPipe;
use super::engine::Engine;
use super::net::{endpoint_addr, Retire};
use super::phy::FramePort;
use crate::admin::{Ingress, IngressMode, Stats};
use crate::link::half_open::{HalfOpenTable, Handshake};
use crate::link::{
    connect_timeout_line, no_tunnel_line, open_client_session, peer_refused_line, TargetRefusal,
};
use crate::protocol::{RefuseReason, ResetReason, SessionId};
use crate::session::lan_window::migration_window;
use crate::session::pump::{LocalSocket, Outcome, Phase, Pump, State};

/// A socket that is closing is forced shut after this long.
const CLOSE_LINGER_US: u64 = 60_000_000;
/// Half-open connections kept per listening socket of an ingress; beyond,
/// the oldest is dropped (a client on the LAN completes its handshake in
/// far less time than a flood takes to displace it).
const HALF_OPEN_PER_LISTENER: usize = 4;

/// One session's local TCP connection.
pub struct Endpoint {
    pub(super) handle: SocketHandle,
    /// Its state, and the bytes and ends on their way between socket and core.
    pub(super) pump: Pump,
    /// The client, for sessions from our ingress.
    pub source: Option<SocketAddr>,
    pub(super) target: SocketAddr,
    pub started: u64,
    /// Sessions from our ingress: which `[[ingress]]` (its index).
    pub(super) ingress: Option<usize>,
}

impl Endpoint {
    /// A session's connection to `target` in `state`, from `now`: the peer's (no client,
    /// no ingress, no connect timeout of ours) until the caller says otherwise.
    pub(super) fn new(handle: SocketHandle, state: State, target: SocketAddr, now: u64) -> Self {
        Endpoint {
            handle,
            pump: Pump::new(state),
            source: None,
            target,
            started: now,
            ingress: None,
        }
    }
}

/// A client connection whose handshake is under way.
#[derive(Debug, Clone, Copy)]
struct Client {
    handle: SocketHandle,
    source: SocketAddr,
}

/// An ingress port: its spare listening sockets and half-open connections.
pub struct IngressListener {
    ingress: Ingress,
    spares: Vec<SocketHandle>,
    half_open: HalfOpenTable<Client>,
}

/// An accepted connection waiting for the tunnel to come up.
pub struct Waiting {
    handle: SocketHandle,
    source: SocketAddr,
    target: SocketAddr,
    /// No tunnel by then: reset (`egress.connect_timeout_ms` after the accept).
    deadline: u64,
    /// The ingress's connect timeout, from the SYN.
    open_by: u64,
    ingress: usize,
}

fn fmt_source(source: Option<SocketAddr>) -> String {
    source.map_or("?".into(), |s| s.to_string())
}

/// The pump's view of a LAN socket.
impl LocalSocket for tcp::Socket<'_> {
    fn can_recv(&self) -> bool {
        tcp::Socket::can_recv(self)
    }

    fn recv_upto(&mut self, max: usize) -> Bytes {
        self.recv(|buf| {
            let n = buf.len().min(max);
            (n, Bytes::copy_from_slice(&buf[..n]))
        })
        .unwrap_or_default()
    }

    fn limit_receive_window(&mut self, bytes: usize) {
        self.set_recv_window_limit(Some(bytes));
    }

    fn send(&mut self, data: &[u8]) -> usize {
        self.send_slice(data).unwrap_or(0)
    }

    fn close(&mut self) {
        tcp::Socket::close(self);
    }

    fn phase(&self) -> Phase {
        use tcp::State::*;
        match self.state() {
            Closed => Phase::Closed,
            SynSent => Phase::Connecting,
            Listen | SynReceived => Phase::Handshaking,
            Established => Phase::Established,
            FinWait1 | FinWait2 => Phase::Closing,
            CloseWait | LastAck | Closing | TimeWait => Phase::FinReceived,
        }
    }

    fn clear_timeout(&mut self) {
        self.set_timeout(None);
    }

    fn describe(&self) -> String {
        format!("state {}, recv_queue {}", self.state(), self.recv_queue())
    }
}

impl<P: FramePort, C: CryptoPipe> Engine<P, C> {
    pub(super) fn lan_socket(&mut self) -> SocketHandle {
        let buf = self.dpdk.lan_socket_buffer;
        let h = self.lan.add_socket(buf, buf);
        let connect_timeout = self.config.connect_timeout_ms;
        let s = self.lan.socket(h);
        s.set_nagle_enabled(false);
        // Until the connection is up; cleared once it is (a migration may
        // be quiet for a long time).
        s.set_timeout(Some(smoltcp::time::Duration::from_millis(connect_timeout)));
        h
    }

    /// Binds every ingress port's listeners.
    pub(super) fn start_ingress(&mut self) {
        // Every shard listens; the first one speaks for them.
        let speaks = self.shard.index == 0;
        for (index, ingress) in self.config.ingress.clone().into_iter().enumerate() {
            if speaks {
                ingress.announce(index);
            }
            self.ingress.push(IngressListener {
                ingress,
                spares: Vec::new(),
                half_open: HalfOpenTable::new(self.dpdk.listen_backlog * HALF_OPEN_PER_LISTENER),
            });
        }
        self.refill_ingress();
    }

    fn refill_ingress(&mut self) {
        for i in 0..self.ingress.len() {
            while self.ingress[i].spares.len() < self.dpdk.listen_backlog && !self.stopping {
                let (mode, port) = (self.ingress[i].ingress.mode, self.ingress[i].ingress.bind);
                let addr = match mode {
                    // A listener answers only on the LAN address...
                    IngressMode::Listen { .. } => {
                        Some(smoltcp::wire::IpAddress::Ipv4(self.lan.addr))
                    }
                    // ...a transparent one for every intercepted address.
                    IngressMode::Tproxy => None,
                };
                let h = self.lan_socket();
                // The ingress's own timers end a handshake that does not complete.
                self.lan.socket(h).set_timeout(None);
                let ep = IpListenEndpoint {
                    addr,
                    port: port.port(),
                };
                if let Err(e) = self.lan.socket(h).listen(ep) {
                    warn!("ingress {port}: cannot listen: {e}");
                    self.lan.remove(h);
                    break;
                }
                // Until its session sets its share: one migration's window
                // at the tunnel's rate, not the socket's whole buffer
                // (`session::lan_window`).
                let window = self.link.tunnel.as_ref().map(|t| t.core.lan_window());
                let window = window.unwrap_or(migration_window(None));
                let window = usize::try_from(window).unwrap_or(usize::MAX);
                self.lan.socket(h).set_recv_window_limit(Some(window));
                self.ingress[i].spares.push(h);
                self.lan.watch(h);
            }
        }
    }

    /// Closes every ingress listener and half-open connection (drain: no
    /// new sessions).
    pub(super) fn close_ingress(&mut self, now: u64) {
        let handles: Vec<SocketHandle> = self
            .ingress
            .iter_mut()
            .flat_map(|l| {
                let half_open = l.half_open.drain().map(|h| h.item.handle);
                l.spares.drain(..).chain(half_open).collect::<Vec<_>>()
            })
            .collect();
        for h in handles {
            self.lan.unwatch(h);
            self.close_lan(h, now);
        }
    }

    /// Resets connections still waiting for the tunnel.
    pub(super) fn reset_waiting(&mut self, now: u64) {
        for w in std::mem::take(&mut self.waiting) {
            self.close_lan(w.handle, now);
        }
    }

    /// One turn of the LAN side.
    pub(super) fn lan_turn(&mut self, now: u64) {
        self.take_lan_connections(now);
        self.open_waiting(now);
        let mut ids = std::mem::take(&mut self.scratch_sessions);
        ids.clear();
        ids.extend(self.endpoints.keys());
        for &id in &ids {
            self.pump(id, now);
        }
        self.scratch_sessions = ids;
        self.reset_idle(now);
    }

    fn take_lan_connections(&mut self, now: u64) {
        // SYNs first: who may connect, and how many, is settled before
        // anything is kept for them.
        let syns: Vec<SocketHandle> = self.lan.take_syns().collect();
        for h in syns {
            let Some(i) = self.ingress.iter().position(|l| l.spares.contains(&h)) else {
                continue;
            };
            self.ingress[i].spares.retain(|&s| s != h);
            let Some(remote) = self.lan.socket(h).remote_endpoint() else {
                self.lan.unwatch(h);
                self.close_lan(h, now);
                continue;
            };
            let source = endpoint_addr(remote);
            // The session limit counts connections on their way to being sessions too.
            let half_open: usize = self.ingress.iter().map(|l| l.half_open.len()).sum();
            let held = self.endpoints.len() + self.waiting.len() + half_open;
            let limit = Some((self.config.limits.max_sessions, held));
            if let Err(why) = self.clients.admit(h, i, source, limit, self.stopping, now) {
                if why.by_rule() {
                    Stats::inc(&self.stats.ingress_refused);
                }
                self.lan.unwatch(h);
                self.close_lan(h, now);
                continue;
            }
            let l = &mut self.ingress[i];
            let client = Client { handle: h, source };
            if let Some(old) = l.half_open.push(client, now, false).map(|o| o.item) {
                Stats::inc(&self.stats.ingress_half_open_dropped);
                let under_way = l.half_open.len();
                self.clients.note(i, now, |bind| {
                    format!("{} -> {bind}: half-open connection dropped for a newer one (ingress[{i}]: {under_way} handshakes under way)", old.source)
                });
                self.lan.unwatch(old.handle);
                self.close_lan(old.handle, now);
            }
        }
        // Completed handshakes, in the order they completed: now they are connections.
        let accepted: Vec<SocketHandle> = self.lan.take_accepted().collect();
        for h in accepted {
            let Some((i, taken)) = self
                .ingress
                .iter_mut()
                .enumerate()
                .find_map(|(i, l)| l.half_open.take(|c| c.handle == h).map(|taken| (i, taken)))
            else {
                continue;
            };
            let (source, since) = (taken.item.source, taken.since);
            let ingress = &self.ingress[i].ingress;
            let target = match ingress.mode {
                IngressMode::Listen { target } => target,
                // Transparent: the address the client dialled is the target.
                IngressMode::Tproxy => match self.lan.socket(h).local_endpoint() {
                    Some(local) => endpoint_addr(local),
                    None => {
                        self.close_lan(h, now);
                        continue;
                    }
                },
            };
            if self.stopping {
                warn!("{source} -> {target}: shutting down; resetting");
                self.close_lan(h, now);
                continue;
            }
            self.waiting.push(Waiting {
                handle: h,
                source,
                target,
                deadline: now + self.config.connect_timeout_ms * 1000,
                open_by: since + ingress.connect_timeout.as_micros() as u64,
                ingress: i,
            });
        }
        self.expire_half_open(now);
        self.refill_ingress();
    }

    /// Half-open connections that gave up, or whose connect timeout ran out.
    fn expire_half_open(&mut self, now: u64) {
        for i in 0..self.ingress.len() {
            let timeout = self.ingress[i].ingress.connect_timeout.as_micros() as u64;
            let lan = &mut self.lan;
            let swept = self.ingress[i].half_open.sweep(now, timeout, |c| {
                if lan.socket(c.handle).state() == tcp::State::Closed {
                    Handshake::GaveUp
                } else {
                    Handshake::UnderWay
                }
            });
            for c in swept.gave_up.iter().chain(&swept.timed_out) {
                self.lan.unwatch(c.handle);
                self.close_lan(c.handle, now);
            }
            for c in swept.gave_up {
                debug!("{}: gave up its handshake", c.source);
            }
            for c in swept.timed_out {
                Stats::inc(&self.stats.ingress_connect_timeouts);
                self.clients.note(i, now, |bind| {
                    format!("{} -> {bind}: handshake not complete within {}s (ingress[{i}].connect_timeout_secs); resetting", c.source, timeout / 1_000_000)
                });
            }
        }
    }

    /// Opens sessions for waiting connections once the tunnel is up.
    fn open_waiting(&mut self, now: u64) {
        if self.waiting.is_empty() {
            return;
        }
        let up = self.tunnel_is_up();
        for w in std::mem::take(&mut self.waiting) {
            let state = self.lan.sockets.get::<tcp::Socket>(w.handle).state();
            if state == tcp::State::Closed {
                debug!(
                    "{} -> {}: gave up before the session opened",
                    w.source, w.target
                );
                self.close_lan(w.handle, now);
                continue;
            }
            if now >= w.open_by {
                self.connect_timed_out(w.ingress, &format!("{} -> {}", w.source, w.target));
                self.close_lan(w.handle, now);
                continue;
            }
            if !up {
                if now >= w.deadline {
                    Stats::inc(&self.stats.ingress_connect_timeouts);
                    let c = &self.config;
                    let line =
                        no_tunnel_line(w.source, w.target, &c.peer_name, c.connect_timeout_ms);
                    warn!("{line}");
                    self.close_lan(w.handle, now);
                } else {
                    self.waiting.push(w);
                }
                continue;
            }
            let t = self.link.tunnel.as_mut().expect("up");
            match open_client_session(&mut t.core, w.source, w.target, w.ingress, &t.peer) {
                Ok(id) => {
                    Stats::inc(&self.stats.sessions_opened);
                    let ep = Endpoint {
                        source: Some(w.source),
                        ingress: Some(w.ingress),
                        pump: Pump::opening(w.open_by),
                        ..Endpoint::new(w.handle, State::Opening, w.target, now)
                    };
                    self.endpoints.insert(id, ep);
                }
                Err(_) => self.close_lan(w.handle, now),
            }
        }
    }

    /// A connection of ingress `i` was not open within its connect timeout:
    /// one line, one count (the caller resets it).
    fn connect_timed_out(&self, i: usize, what: &str) {
        Stats::inc(&self.stats.ingress_connect_timeouts);
        let timeout = self.config.ingress[i].connect_timeout;
        warn!("{}", connect_timeout_line(what, i, timeout));
    }

    /// Moves one session forward ([`Pump::step`]) and does what that leaves to the driver.
    fn pump(&mut self, id: SessionId, now: u64) {
        let Some(ep) = self.endpoints.get_mut(&id) else {
            return;
        };
        let Some(t) = &mut self.link.tunnel else {
            return;
        };
        let sock = self.lan.sockets.get_mut::<tcp::Socket>(ep.handle);
        let frame_len = self.config.limits.frame_len;
        match ep.pump.step(now, id, &mut t.core, sock, frame_len) {
            Outcome::Idle | Outcome::Reset => {}
            Outcome::Connected { accepted } => {
                if accepted {
                    Stats::inc(&self.stats.sessions_accepted);
                    info!("session {id}: peer {} -> {} connected", t.peer, ep.target);
                }
                self.egress_done(id, now);
            }
            Outcome::ConnectFailed(why) => {
                let (h, target) = (ep.handle, ep.target);
                self.refuse_egress(id, target, TargetRefusal::ConnectFailed(why.into()));
                self.endpoints.remove(&id);
                self.close_lan(h, now);
                self.egress_done(id, now);
            }
            Outcome::ConnectTimedOut => {
                let what = format!("session {id}: {} -> {}", fmt_source(ep.source), ep.target);
                if let Some(i) = ep.ingress {
                    self.connect_timed_out(i, &what);
                }
            }
        }
    }

    pub(super) fn endpoint_accepted(&mut self, id: SessionId) {
        let Some(ep) = self.endpoints.get_mut(&id) else {
            return;
        };
        ep.pump.state = State::Open;
        // The idle clock starts when the session is open.
        let Some(i) = ep.ingress else { return };
        if let Some(limit) = self.config.ingress[i].idle_timeout {
            let label = format!("{} -> {}", fmt_source(ep.source), ep.target);
            self.idle.watch(id, limit, label, i, self.now);
        }
    }

    /// Resets the ingress sessions that moved nothing for their idle timeout.
    fn reset_idle(&mut self, now: u64) {
        let Some(t) = &mut self.link.tunnel else {
            return;
        };
        let n = self.idle.reset_idle(now, &mut t.core);
        Stats::add(&self.stats.ingress_idle_timeouts, n);
    }

    pub(super) fn endpoint_refused(
        &mut self,
        id: SessionId,
        reason: RefuseReason,
        detail: &str,
        now: u64,
    ) {
        let Some(ep) = self.endpoints.remove(&id) else {
            return;
        };
        Stats::inc(&self.stats.sessions_refused);
        warn!("{}", peer_refused_line(id, ep.target, reason, detail));
        self.close_lan(ep.handle, now);
    }

    pub(super) fn endpoint_reset(&mut self, id: SessionId, reason: ResetReason, now: u64) {
        if let Some(ep) = self.endpoints.remove(&id) {
            self.close_lan(ep.handle, now);
            if matches!(ep.pump.state, State::Queued | State::Connecting { .. }) {
                // The peer gave up first (its client left, or its connect timeout ran out).
                let peer = self.link.tunnel.as_ref().map_or("?", |t| t.peer.as_str());
                info!(
                    "session {id}: reset by peer {peer} before {} was connected: {reason}; connect abandoned",
                    ep.target
                );
                self.egress_done(id, now);
            } else {
                debug!("session {id}: reset: {reason}");
            }
        }
    }

    /// Both directions completed: the socket finishes its close on its own.
    pub(super) fn endpoint_closed(&mut self, id: SessionId, now: u64) {
        if let Some(ep) = self.endpoints.remove(&id) {
            self.clients.left(ep.handle);
            // Our FIN is queued already (the stream finished); let it go out.
            let by = now + CLOSE_LINGER_US;
            self.lan.retire(ep.handle, Retire::Close { by }, now);
        }
    }

    /// Resets a LAN socket (RST) and removes it once that went out; a client it was is gone.
    pub(super) fn close_lan(&mut self, h: SocketHandle, now: u64) {
        self.clients.left(h);
        self.lan.retire(h, Retire::Abort, now);
    }
}

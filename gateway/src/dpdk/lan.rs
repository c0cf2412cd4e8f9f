//! The LAN side of the engine: hypervisor connections on userspace TCP
//! sockets. Ingress takes connections on the configured ports (`listen`:
//! to one target; `tproxy`: any intercepted destination, which becomes the
//! target), egress connects to allowlisted targets the peer asked for, and
//! each session's two pumps move bytes between its socket and the core with
//! backpressure: bytes are read from a socket only while the core has send
//! capacity, and taken from the core only when the socket has room.
//! Half-close travels as FIN, a reset as RST, both ways.

use std::net::SocketAddr;

use bytes::{Buf, Bytes};
use log::{debug, info, warn};
use smoltcp::iface::SocketHandle;
use smoltcp::socket::tcp;
use smoltcp::wire::IpListenEndpoint;

use super::crypto::CryptoPipe;
use super::engine::Engine;
use super::net::{endpoint_addr, Retire};
use super::phy::FramePort;
use crate::admin::{Ingress, IngressMode, Stats};
use crate::protocol::{RefuseReason, ResetReason, SessionId};
use crate::session::ReadOutcome;

/// A socket that is closing is forced shut after this long.
const CLOSE_LINGER_US: u64 = 60_000_000;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum State {
    /// Our ingress: waiting for the peer's accept.
    Opening,
    /// The peer's session: waiting for the connects before it to the same
    /// target (egress.rs keeps the order).
    Queued,
    /// The peer's session: connecting to the target until the deadline.
    Connecting {
        deadline: u64,
    },
    Open,
}

/// One session's local TCP connection.
pub struct Endpoint {
    pub(super) handle: SocketHandle,
    pub(super) state: State,
    /// The client, for sessions from our ingress.
    pub source: Option<SocketAddr>,
    pub(super) target: SocketAddr,
    pub started: u64,
    /// Bytes taken from the core that the socket had no room for yet.
    pub(super) down: Option<Bytes>,
    /// The endpoint's FIN arrived (seen in a state only a FIN leads to);
    /// a socket that turns Closed without it was reset.
    pub(super) fin_seen: bool,
    /// The endpoint half-closed and the core knows.
    pub(super) up_done: bool,
    /// The core's stream ended and the socket was closed (FIN queued).
    pub(super) down_done: bool,
}

/// An ingress port's spare listening sockets.
pub struct IngressListener {
    ingress: Ingress,
    spares: Vec<SocketHandle>,
}

/// An accepted connection waiting for the tunnel to come up.
pub struct Waiting {
    handle: SocketHandle,
    source: SocketAddr,
    target: SocketAddr,
    deadline: u64,
}

/// States in which a socket carries data (after the 3-way handshake).
fn connected(sock: &tcp::Socket) -> bool {
    use tcp::State::*;
    matches!(
        sock.state(),
        Established | FinWait1 | FinWait2 | CloseWait | Closing | LastAck | TimeWait
    )
}

/// States reached only after the endpoint's FIN arrived.
fn fin_received(sock: &tcp::Socket) -> bool {
    use tcp::State::*;
    matches!(sock.state(), CloseWait | LastAck | Closing | TimeWait)
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
        for ingress in self.config.ingress.clone() {
            match ingress.mode {
                IngressMode::Listen { target } => {
                    info!("listening on {} (mode listen) -> {target}", ingress.bind)
                }
                IngressMode::Tproxy => info!("listening on {} (mode tproxy)", ingress.bind),
            }
            self.ingress.push(IngressListener {
                ingress,
                spares: Vec::new(),
            });
        }
        self.refill_ingress();
    }

    fn refill_ingress(&mut self) {
        for i in 0..self.ingress.len() {
            while self.ingress[i].spares.len() < self.dpdk.listen_backlog && !self.stopping {
                let ing = self.ingress[i].ingress;
                let addr = match ing.mode {
                    // A listener answers only on the LAN address...
                    IngressMode::Listen { .. } => {
                        Some(smoltcp::wire::IpAddress::Ipv4(self.lan.addr))
                    }
                    // ...a transparent one for every intercepted address.
                    IngressMode::Tproxy => None,
                };
                let h = self.lan_socket();
                let ep = IpListenEndpoint {
                    addr,
                    port: ing.bind.port(),
                };
                if let Err(e) = self.lan.socket(h).listen(ep) {
                    warn!("ingress {}: cannot listen: {e}", ing.bind);
                    self.lan.remove(h);
                    break;
                }
                self.ingress[i].spares.push(h);
                self.lan.watch(h);
            }
        }
    }

    /// Closes every ingress listener (drain: no new sessions).
    pub(super) fn close_ingress(&mut self, now: u64) {
        let spares: Vec<SocketHandle> = self
            .ingress
            .iter_mut()
            .flat_map(|l| l.spares.drain(..))
            .collect();
        for h in spares {
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
    }

    fn take_lan_connections(&mut self, now: u64) {
        // In the order the SYNs arrived (QEMU < 8.0 tells its migration
        // channels apart by it; egress keeps it on the far side).
        let mut taken = Vec::new();
        for h in self.lan.take_accepted().collect::<Vec<_>>() {
            for l in &mut self.ingress {
                if let Some(i) = l.spares.iter().position(|&s| s == h) {
                    l.spares.remove(i);
                    taken.push((l.ingress, h));
                }
            }
        }
        let deadline = now + self.config.connect_timeout_ms * 1000;
        for (ing, h) in taken {
            let sock = self.lan.socket(h);
            let (Some(remote), Some(local)) = (sock.remote_endpoint(), sock.local_endpoint())
            else {
                self.close_lan(h, now);
                continue;
            };
            let source = endpoint_addr(remote);
            let target = match ing.mode {
                IngressMode::Listen { target } => target,
                // Transparent: the address the client dialled is the target.
                IngressMode::Tproxy => endpoint_addr(local),
            };
            let limit = self.config.limits.max_sessions;
            if self.stopping || self.endpoints.len() + self.waiting.len() >= limit {
                warn!(
                    "{source} -> {target}: {}; resetting",
                    if self.stopping {
                        "shutting down".to_string()
                    } else {
                        format!("too many sessions (limit {limit})")
                    }
                );
                self.close_lan(h, now);
                continue;
            }
            self.waiting.push(Waiting {
                handle: h,
                source,
                target,
                deadline,
            });
        }
        self.refill_ingress();
    }

    /// Opens sessions for waiting connections once the tunnel is up.
    fn open_waiting(&mut self, now: u64) {
        if self.waiting.is_empty() {
            return;
        }
        let up = self
            .tunnel
            .as_ref()
            .is_some_and(|t| t.is_up(&self.conns) && t.held_since.is_none());
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
            if !up {
                if now >= w.deadline {
                    warn!(
                        "{} -> {}: no tunnel to peer {} within {}ms; resetting",
                        w.source, w.target, self.config.peer_name, self.config.connect_timeout_ms
                    );
                    self.close_lan(w.handle, now);
                } else {
                    self.waiting.push(w);
                }
                continue;
            }
            let t = self.tunnel.as_mut().expect("up");
            match t.core.open(w.target) {
                Ok(id) => {
                    Stats::inc(&self.stats.sessions_opened);
                    info!(
                        "session {id}: {} -> {} via peer {}",
                        w.source, w.target, t.peer
                    );
                    self.endpoints.insert(
                        id,
                        Endpoint {
                            handle: w.handle,
                            state: State::Opening,
                            source: Some(w.source),
                            target: w.target,
                            started: now,
                            down: None,
                            fin_seen: false,
                            up_done: false,
                            down_done: false,
                        },
                    );
                }
                Err(e) => {
                    warn!("{} -> {}: {e}; resetting", w.source, w.target);
                    self.close_lan(w.handle, now);
                }
            }
        }
    }

    /// Moves one session forward.
    fn pump(&mut self, id: SessionId, now: u64) {
        let Some(ep) = self.endpoints.get_mut(&id) else {
            return;
        };
        let Some(t) = &mut self.tunnel else { return };
        let sock = self.lan.sockets.get_mut::<tcp::Socket>(ep.handle);
        match ep.state {
            // Its turn to connect has not come (see egress.rs).
            State::Queued => {}
            State::Connecting { deadline } => {
                let why = match sock.state() {
                    tcp::State::Established => {
                        sock.set_timeout(None);
                        ep.state = State::Open;
                        if t.core.accept(id).is_ok() {
                            Stats::inc(&self.stats.sessions_accepted);
                            info!("session {id}: peer {} -> {} connected", t.peer, ep.target);
                        }
                        let target = ep.target;
                        return self.egress_done(id, target, now);
                    }
                    tcp::State::SynSent if now < deadline => return,
                    tcp::State::SynSent => "timed out",
                    _ => "refused or unreachable",
                };
                Stats::inc(&self.stats.sessions_refused);
                warn!(
                    "session {id}: refusing target {}: connect failed: {why}",
                    ep.target
                );
                t.core.refuse(id, RefuseReason::ConnectFailed, why);
                let (h, target) = (ep.handle, ep.target);
                self.endpoints.remove(&id);
                self.close_lan(h, now);
                self.egress_done(id, target, now);
            }
            State::Opening | State::Open => {
                ep.fin_seen |= fin_received(sock);
                if sock.state() == tcp::State::Closed && !(ep.fin_seen && ep.down_done) {
                    // The endpoint reset, timed out, or never finished its
                    // handshake: not a clean end of both directions.
                    t.core.reset(id, ResetReason::ConnectionReset);
                    return;
                }
                if ep.state == State::Opening || !(connected(sock) || sock.can_recv()) {
                    return;
                }
                sock.set_timeout(None);
                if !ep.up_done {
                    let frame_len = self.config.limits.frame_len;
                    loop {
                        let Ok(cap) = t.core.send_capacity(id) else {
                            return;
                        };
                        if cap == 0 || !sock.can_recv() {
                            break;
                        }
                        // One frame's worth per chunk: heap-sized buffers the
                        // allocator recycles (larger ones are mmapped and
                        // page-faulted in anew each time).
                        let want = (cap as usize).min(frame_len);
                        let chunk = sock
                            .recv(|buf| {
                                let n = buf.len().min(want);
                                (n, Bytes::copy_from_slice(&buf[..n]))
                            })
                            .unwrap_or_default();
                        if chunk.is_empty() || t.core.write(id, chunk).is_err() {
                            break;
                        }
                    }
                    if ep.fin_seen && !sock.can_recv() {
                        log::debug!(
                            "session {id}: endpoint finished (state {}, recv_queue {})",
                            sock.state(),
                            sock.recv_queue()
                        );
                        ep.up_done = true;
                        let _ = t.core.finish(id);
                    }
                }
                while !ep.down_done {
                    if let Some(b) = &mut ep.down {
                        let n = sock.send_slice(b).unwrap_or(0);
                        b.advance(n);
                        if !b.is_empty() {
                            break;
                        }
                        ep.down = None;
                    }
                    match t.core.read(now, id) {
                        Ok(ReadOutcome::Data(b)) => ep.down = Some(b),
                        Ok(ReadOutcome::Finished) => {
                            log::debug!("session {id}: stream finished, closing");
                            sock.close();
                            ep.down_done = true;
                        }
                        Ok(ReadOutcome::Blocked) | Err(_) => break,
                    }
                }
            }
        }
    }

    pub(super) fn endpoint_accepted(&mut self, id: SessionId) {
        if let Some(ep) = self.endpoints.get_mut(&id) {
            ep.state = State::Open;
        }
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
        let detail = if detail.is_empty() {
            String::new()
        } else {
            format!(" ({detail})")
        };
        Stats::inc(&self.stats.sessions_refused);
        warn!(
            "session {id}: peer refused target {}: {reason}{detail}",
            ep.target
        );
        self.close_lan(ep.handle, now);
    }

    pub(super) fn endpoint_reset(&mut self, id: SessionId, reason: ResetReason, now: u64) {
        if let Some(ep) = self.endpoints.remove(&id) {
            debug!("session {id}: reset: {reason}");
            self.close_lan(ep.handle, now);
            if matches!(ep.state, State::Queued | State::Connecting { .. }) {
                self.egress_done(id, ep.target, now);
            }
        }
    }

    /// Both directions completed: the socket finishes its close on its own.
    pub(super) fn endpoint_closed(&mut self, id: SessionId, now: u64) {
        if let Some(ep) = self.endpoints.remove(&id) {
            // Our FIN is queued already (the stream finished); let it go out.
            let by = now + CLOSE_LINGER_US;
            self.lan.retire(ep.handle, Retire::Close { by }, now);
        }
    }

    /// Resets a LAN socket (RST) and removes it once that went out.
    pub(super) fn close_lan(&mut self, h: SocketHandle, now: u64) {
        self.lan.retire(h, Retire::Abort, now);
    }
}

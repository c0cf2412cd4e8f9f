//! The local end of a session: accept hypervisor connections and open a
//! session for each through the current tunnel.
//!
//! - `listen` mode: every connection goes to the listener's configured target.
//! - `tproxy` mode: the listener has IP_TRANSPARENT and receives connections
//!   redirected by TPROXY; the original destination is the accepted
//!   socket's local address (see docs/DEPLOYMENT.md for the nft rules).
//!
//! While the tunnel is up, a session is opened in the accept loop itself, so
//! sessions open (and the peer connects their targets, see egress.rs) in the
//! order the source connected: QEMU before 8.0 tells its multifd channels from
//! the main migration stream by that order.
//!
//! Each `[[ingress]]` limits who may connect and for how long: a client
//! outside its `sources`, or over its `max_sessions_per_source`, is reset at
//! accept; a session not open within `connect_timeout_secs` of the accept,
//! or idle for `idle_timeout_secs` (see [`crate::link::idle`]), is reset at both ends
//! (reason "timeout"). Each gets one log line naming the client and a
//! counter.
//!
//! When the gateway starts shutting down (`Gateway::stopping`), the
//! listeners close and connections not yet turned into sessions are reset.

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use log::{debug, error, warn};
use socket2::SockRef;
use tokio::io::Interest;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;
use tokio::time::Instant;

use super::endpoint::drive;
use super::sockopt::{listener, reset_on_close, size_listener};
use super::tunnel::{OpenOutcome, SessionSignals, Tunnel};
use super::Gateway;
use crate::admin::{Ingress, IngressMode, Stats};
use crate::link::{connect_timeout_line, no_tunnel_line, peer_refused_line};
use crate::protocol::{ResetReason, SessionId};

/// Binds a listener now (so bind errors surface at startup).
pub fn bind(ingress: &Ingress) -> std::io::Result<TcpListener> {
    let std_listener = listener(&ingress.bind, ingress.mode == IngressMode::Tproxy)?;
    TcpListener::from_std(std_listener)
}

/// A client's place in the gateway's client table, held until dropped.
struct ClientSlot {
    gateway: Arc<Gateway>,
    key: u64,
}

impl Drop for ClientSlot {
    fn drop(&mut self) {
        self.gateway.clients().left(self.key);
    }
}

/// What a client connection carries from accept to its end: its ingress,
/// its connect deadline and its place in the client table.
struct Ctx {
    index: usize,
    ingress: Arc<Ingress>,
    deadline: Instant,
    _slot: ClientSlot,
}

impl Ctx {
    /// The connect timeout ran out: one line, one count.
    fn timed_out(&self, gateway: &Gateway, what: &str) {
        Stats::inc(&gateway.stats.ingress_connect_timeouts);
        let timeout = self.ingress.connect_timeout;
        warn!("{}", connect_timeout_line(what, self.index, timeout));
    }
}

/// How often an idle ingress listener's window is sized to the tunnel's rate
/// (it is after every accept too).
const LISTENER_RESIZE_EVERY: Duration = Duration::from_secs(1);

pub async fn serve(gateway: Arc<Gateway>, index: usize, ingress: Ingress, listener: TcpListener) {
    ingress.announce(index);
    let ingress = Arc::new(ingress);
    let mut resize = tokio::time::interval(LISTENER_RESIZE_EVERY);
    loop {
        let accepted = tokio::select! {
            r = listener.accept() => r,
            _ = resize.tick() => {
                size_to_tunnel(&gateway, &listener, &ingress);
                continue;
            }
            // Returning drops (closes) the listener.
            _ = gateway.stopping.cancelled() => return,
        };
        size_to_tunnel(&gateway, &listener, &ingress);
        let (stream, client) = match accepted {
            Ok(x) => x,
            Err(e) => {
                // EMFILE and friends: back off instead of spinning.
                error!("accept on {}: {e}", ingress.bind);
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let key = gateway.next_client.fetch_add(1, Ordering::Relaxed);
        let (stopping, now) = (gateway.stopping.is_cancelled(), gateway.now_us());
        // The session core counts sessions against the limit.
        let admitted = gateway
            .clients()
            .admit(key, index, client, None, stopping, now);
        if let Err(why) = admitted {
            if why.by_rule() {
                Stats::inc(&gateway.stats.ingress_refused);
            }
            abort(&stream);
            continue;
        }
        let ctx = Ctx {
            index,
            ingress: ingress.clone(),
            deadline: Instant::now() + ingress.connect_timeout,
            _slot: ClientSlot {
                gateway: gateway.clone(),
                key,
            },
        };
        match gateway.ready_tunnel() {
            Some(tunnel) => {
                if let Some(target) = original_target(&ingress, &stream, client) {
                    if let Some(session) = open(&gateway, tunnel, &stream, client, target, index) {
                        tokio::spawn(run(session, stream, target, ctx));
                    }
                }
            }
            None => {
                tokio::spawn(handle(gateway.clone(), stream, client, ctx));
            }
        }
    }
}

/// Sizes the listener's receive buffer to one migration's LAN window at the
/// tunnel's rate (`session::lan_window`), for the connections it takes next.
fn size_to_tunnel(gateway: &Gateway, listener: &TcpListener, ingress: &Ingress) {
    let Some(tunnel) = gateway.ready_tunnel() else {
        return;
    };
    let window = tunnel.with_core(|c| c.lan_window());
    if let Err(e) = size_listener(&SockRef::from(listener), window) {
        debug!("ingress {}: SO_RCVBUF {window}: {e}", ingress.bind);
    }
}

/// Where the connection is going: the listener's target, or (tproxy) the original destination.
fn original_target(
    ingress: &Ingress,
    stream: &TcpStream,
    client: SocketAddr,
) -> Option<SocketAddr> {
    match ingress.mode {
        IngressMode::Listen { target } => Some(target),
        IngressMode::Tproxy => match stream.local_addr() {
            Ok(original) => Some(original),
            Err(e) => {
                warn!("{client}: no original destination: {e}");
                None
            }
        },
    }
}

/// A session opened for a connection, waiting for the peer's answer.
struct Opened {
    tunnel: Arc<Tunnel>,
    client: SocketAddr,
    id: SessionId,
    signals: Arc<SessionSignals>,
    outcome: oneshot::Receiver<OpenOutcome>,
}

/// Opens the session for `stream` on `tunnel`; `None` (and the stream reset) if it cannot.
fn open(
    gateway: &Gateway,
    tunnel: Arc<Tunnel>,
    stream: &TcpStream,
    client: SocketAddr,
    target: SocketAddr,
    index: usize,
) -> Option<Opened> {
    let Ok((id, signals, outcome)) = tunnel.open_session(client, target, index) else {
        abort(stream);
        return None;
    };
    Stats::inc(&gateway.stats.sessions_opened);
    Some(Opened {
        tunnel,
        client,
        id,
        signals,
        outcome,
    })
}

/// A connection that arrived while no tunnel was up: waits for one, then opens its session.
async fn handle(gateway: Arc<Gateway>, stream: TcpStream, client: SocketAddr, ctx: Ctx) {
    let Some(target) = original_target(&ctx.ingress, &stream, client) else {
        return;
    };
    let wait = Duration::from_millis(gateway.config.connect_timeout_ms);
    let left = ctx.deadline.saturating_duration_since(Instant::now());
    let Some(tunnel) = gateway.wait_for_tunnel(wait.min(left)).await else {
        if left <= wait {
            ctx.timed_out(&gateway, &format!("{client} -> {target}"));
        } else {
            Stats::inc(&gateway.stats.ingress_connect_timeouts);
            let c = &gateway.config;
            let line = no_tunnel_line(client, target, &c.peer_name, c.connect_timeout_ms);
            warn!("{line}");
        }
        return abort(&stream);
    };
    if gateway.stopping.is_cancelled() {
        warn!("{client} -> {target}: gateway shutting down; resetting");
        return abort(&stream);
    }
    if let Some(session) = open(&gateway, tunnel, &stream, client, target, ctx.index) {
        run(session, stream, target, ctx).await;
    }
}

/// Waits for the peer's answer to the open (until the connect deadline), then moves the
/// session's bytes.
async fn run(session: Opened, stream: TcpStream, target: SocketAddr, ctx: Ctx) {
    let Opened {
        tunnel,
        client,
        id,
        signals,
        outcome,
    } = session;
    let gateway = tunnel.gateway().clone();
    let answer = tokio::select! {
        a = tokio::time::timeout_at(ctx.deadline, outcome) => a,
        // The client gave up (RST) before the peer answered: the peer is told and gives up
        // its connect, or leaves the target's line without connecting (as on DPDK).
        _ = stream.ready(Interest::ERROR) => {
            debug!("session {id}: {client} -> {target}: the client reset before the session opened");
            tunnel.with_core(|c| c.reset(id, ResetReason::ConnectionReset));
            return abort(&stream);
        }
    };
    let Ok(outcome) = answer else {
        // The peer is told (reset, reason timeout) and gives up its connect.
        ctx.timed_out(&gateway, &format!("session {id}: {client} -> {target}"));
        tunnel.with_core(|c| c.reset(id, ResetReason::Timeout));
        return abort(&stream);
    };
    match outcome {
        Ok(OpenOutcome::Accepted) => {
            if let Some(limit) = ctx.ingress.idle_timeout {
                let label = format!("{client} -> {target}");
                tunnel.watch_idle(id, limit, label, ctx.index);
            }
            drive(tunnel, id, signals, stream).await
        }
        Ok(OpenOutcome::Refused { reason, detail }) => {
            Stats::inc(&gateway.stats.sessions_refused);
            warn!("{}", peer_refused_line(id, target, reason, &detail));
            abort(&stream);
        }
        Err(_) => {
            let reason = signals
                .reset_reason()
                .map(|r| r.to_string())
                .unwrap_or_else(|| "tunnel lost".into());
            warn!("session {id}: {client} -> {target}: reset before open: {reason}");
            abort(&stream);
        }
    }
}

fn abort(stream: &TcpStream) {
    reset_on_close(&SockRef::from(stream));
}

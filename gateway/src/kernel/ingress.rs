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
//! When the gateway starts shutting down (`Gateway::stopping`), the
//! listeners close and connections not yet turned into sessions are reset.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use log::{error, info, warn};
use socket2::SockRef;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;

use super::endpoint::drive;
use super::sockopt::{listener, reset_on_close};
use super::tunnel::{OpenOutcome, SessionSignals, Tunnel};
use super::Gateway;
use crate::admin::{Ingress, IngressMode, Stats};
use crate::protocol::SessionId;

/// Binds a listener now (so bind errors surface at startup).
pub fn bind(ingress: &Ingress) -> std::io::Result<TcpListener> {
    let std_listener = listener(&ingress.bind, ingress.mode == IngressMode::Tproxy)?;
    TcpListener::from_std(std_listener)
}

pub async fn serve(gateway: Arc<Gateway>, ingress: Ingress, listener: TcpListener) {
    match ingress.mode {
        IngressMode::Listen { target } => {
            info!("listening on {} (mode listen) -> {target}", ingress.bind)
        }
        IngressMode::Tproxy => info!("listening on {} (mode tproxy)", ingress.bind),
    }
    loop {
        let accepted = tokio::select! {
            r = listener.accept() => r,
            // Returning drops (closes) the listener.
            _ = gateway.stopping.cancelled() => return,
        };
        match accepted {
            Ok((stream, client)) => match gateway.ready_tunnel() {
                Some(tunnel) => {
                    if let Some(target) = original_target(&ingress, &stream, client) {
                        if let Some(session) = open(&gateway, tunnel, &stream, client, target) {
                            tokio::spawn(run(session, stream, target));
                        }
                    }
                }
                None => {
                    tokio::spawn(handle(gateway.clone(), ingress, stream, client));
                }
            },
            Err(e) => {
                // EMFILE and friends: back off instead of spinning.
                error!("accept on {}: {e}", ingress.bind);
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
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
) -> Option<Opened> {
    let (id, signals, outcome) = match tunnel.open_session(client, target) {
        Ok(x) => x,
        Err(e) => {
            warn!("{client} -> {target}: {e}; resetting");
            abort(stream);
            return None;
        }
    };
    Stats::inc(&gateway.stats.sessions_opened);
    info!(
        "session {id}: {client} -> {target} via peer {}",
        tunnel.peer
    );
    Some(Opened {
        tunnel,
        client,
        id,
        signals,
        outcome,
    })
}

/// A connection that arrived while no tunnel was up: waits for one, then opens its session.
async fn handle(gateway: Arc<Gateway>, ingress: Ingress, stream: TcpStream, client: SocketAddr) {
    let Some(target) = original_target(&ingress, &stream, client) else {
        return;
    };
    let wait = Duration::from_millis(gateway.config.connect_timeout_ms);
    let Some(tunnel) = gateway.wait_for_tunnel(wait).await else {
        warn!(
            "{client} -> {target}: no tunnel to peer {} within {wait:?}; resetting",
            gateway.config.peer_name
        );
        return abort(&stream);
    };
    if gateway.stopping.is_cancelled() {
        warn!("{client} -> {target}: gateway shutting down; resetting");
        return abort(&stream);
    }
    if let Some(session) = open(&gateway, tunnel, &stream, client, target) {
        run(session, stream, target).await;
    }
}

/// Waits for the peer's answer to the open, then moves the session's bytes.
async fn run(session: Opened, stream: TcpStream, target: SocketAddr) {
    let Opened {
        tunnel,
        client,
        id,
        signals,
        outcome,
    } = session;
    let gateway = tunnel.gateway().clone();
    match outcome.await {
        Ok(OpenOutcome::Accepted) => drive(tunnel, id, signals, stream).await,
        Ok(OpenOutcome::Refused { reason, detail }) => {
            let detail = if detail.is_empty() {
                String::new()
            } else {
                format!(" ({detail})")
            };
            Stats::inc(&gateway.stats.sessions_refused);
            warn!("session {id}: peer refused target {target}: {reason}{detail}");
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

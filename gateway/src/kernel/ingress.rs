//! The local end of a session: accept hypervisor connections and open a
//! session for each through the current tunnel.
//!
//! - `listen` mode: every connection goes to the listener's configured target.
//! - `tproxy` mode: the listener has IP_TRANSPARENT and receives connections
//!   redirected by TPROXY; the original destination is the accepted
//!   socket's local address (see docs/DEPLOYMENT.md for the nft rules).
//!
//! When the gateway starts shutting down (`Gateway::stopping`), the
//! listeners close and connections not yet turned into sessions are reset.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use log::{error, info, warn};
use socket2::SockRef;
use tokio::net::{TcpListener, TcpStream};

use super::endpoint::drive;
use super::sockopt::{listener, reset_on_close};
use super::tunnel::OpenOutcome;
use super::Gateway;
use crate::admin::{Ingress, IngressMode, Stats};

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
            Ok((stream, client)) => {
                tokio::spawn(handle(gateway.clone(), ingress, stream, client));
            }
            Err(e) => {
                // EMFILE and friends: back off instead of spinning.
                error!("accept on {}: {e}", ingress.bind);
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

async fn handle(gateway: Arc<Gateway>, ingress: Ingress, stream: TcpStream, client: SocketAddr) {
    let target = match ingress.mode {
        IngressMode::Listen { target } => target,
        IngressMode::Tproxy => match stream.local_addr() {
            Ok(original) => original,
            Err(e) => return warn!("{client}: no original destination: {e}"),
        },
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
    let (id, signals, opened) = match tunnel.open_session(client, target) {
        Ok(x) => x,
        Err(e) => {
            warn!("{client} -> {target}: {e}; resetting");
            return abort(&stream);
        }
    };
    Stats::inc(&gateway.stats.sessions_opened);
    info!(
        "session {id}: {client} -> {target} via peer {}",
        tunnel.peer
    );
    match opened.await {
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

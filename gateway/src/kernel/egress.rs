//! The remote end of a session: connect to the target the peer asked for,
//! if and only if the allowlist in force permits it (a reload may have
//! changed it) and the gateway is not shutting down ([`crate::link::egress`]).
//! Connects to one target go one at a time, in the order the peer opened the
//! sessions ([`crate::link::connect_order`]).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use log::{info, warn};
use tokio::net::TcpStream;

use super::endpoint::drive;
use super::tunnel::Tunnel;
use crate::admin::Stats;
use crate::link::{check_egress, EgressCheck};
use crate::protocol::{RefuseReason, SessionId};

/// Connects session `id` to `target` once its turn comes, and runs it.
pub async fn connect(tunnel: Arc<Tunnel>, id: SessionId, target: SocketAddr) {
    if !tunnel.wait_connect_turn(id).await {
        return; // reset while it waited: the target never sees it
    }
    let stream = connect_allowed(&tunnel, id, target).await;
    tunnel.connect_done(id);
    let Some(stream) = stream else {
        return;
    };
    let Ok(signals) = tunnel.accept_session(id) else {
        return; // reset while we were connecting
    };
    Stats::inc(&tunnel.gateway().stats.sessions_accepted);
    info!("session {id}: peer {} -> {target} connected", tunnel.peer);
    drive(tunnel, id, signals, stream).await;
}

/// The shutdown and allowlist checks and the connect; `None` when refused
/// (already reported to the peer).
async fn connect_allowed(
    tunnel: &Arc<Tunnel>,
    id: SessionId,
    target: SocketAddr,
) -> Option<TcpStream> {
    let gateway = tunnel.gateway();
    let config = &gateway.config;
    let check = EgressCheck {
        allowed: gateway.allows(&target),
        stopping: gateway.stopping.is_cancelled(),
        ipv4_only: false,
    };
    // Before any connect attempt: never an open relay.
    if let Err(refusal) = check_egress(&target, check) {
        warn!(
            "session {id}: refusing target {target}: {refusal} (peer {})",
            tunnel.peer
        );
        Stats::inc(&gateway.stats.sessions_refused);
        tunnel.with_core(|c| c.refuse(id, refusal.reason(), refusal.detail()));
        return None;
    }
    let timeout = Duration::from_millis(config.connect_timeout_ms);
    match tokio::time::timeout(timeout, TcpStream::connect(target)).await {
        Ok(Ok(s)) => Some(s),
        Ok(Err(e)) => {
            refuse_connect(tunnel, id, target, &e.to_string());
            None
        }
        Err(_) => {
            refuse_connect(tunnel, id, target, "timed out");
            None
        }
    }
}

fn refuse_connect(tunnel: &Arc<Tunnel>, id: SessionId, target: SocketAddr, why: &str) {
    Stats::inc(&tunnel.gateway().stats.sessions_refused);
    warn!("session {id}: refusing target {target}: connect failed: {why}");
    tunnel.with_core(|c| c.refuse(id, RefuseReason::ConnectFailed, why));
}

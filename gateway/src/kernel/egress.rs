//! The remote end of a session: connect to the target the peer asked for,
//! if and only if the allowlist in force permits it (a reload may have
//! changed it) and the gateway is not shutting down.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use log::{info, warn};
use tokio::net::TcpStream;

use super::endpoint::drive;
use super::tunnel::Tunnel;
use crate::admin::Stats;
use crate::protocol::{RefuseReason, SessionId};

pub async fn connect(tunnel: Arc<Tunnel>, id: SessionId, target: SocketAddr) {
    let gateway = tunnel.gateway();
    let config = &gateway.config;
    if gateway.stopping.is_cancelled() {
        warn!(
            "session {id}: refusing target {target}: gateway shutting down (peer {})",
            tunnel.peer
        );
        Stats::inc(&gateway.stats.sessions_refused);
        tunnel.with_core(|c| c.refuse(id, RefuseReason::ShuttingDown, ""));
        return;
    }
    if !gateway.allows(&target) {
        // Checked before any connect attempt: never an open relay.
        warn!(
            "session {id}: refusing target {target}: not in egress allowlist (peer {})",
            tunnel.peer
        );
        Stats::inc(&tunnel.gateway().stats.sessions_refused);
        tunnel.with_core(|c| c.refuse(id, RefuseReason::NotAllowed, ""));
        return;
    }
    let timeout = Duration::from_millis(config.connect_timeout_ms);
    let stream = match tokio::time::timeout(timeout, TcpStream::connect(target)).await {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => return refuse_connect(&tunnel, id, target, &e.to_string()),
        Err(_) => return refuse_connect(&tunnel, id, target, "timed out"),
    };
    let Ok(signals) = tunnel.accept_session(id) else {
        return; // reset while we were connecting
    };
    Stats::inc(&tunnel.gateway().stats.sessions_accepted);
    info!("session {id}: peer {} -> {target} connected", tunnel.peer);
    drive(tunnel, id, signals, stream).await;
}

fn refuse_connect(tunnel: &Arc<Tunnel>, id: SessionId, target: SocketAddr, why: &str) {
    Stats::inc(&tunnel.gateway().stats.sessions_refused);
    warn!("session {id}: refusing target {target}: connect failed: {why}");
    tunnel.with_core(|c| c.refuse(id, RefuseReason::ConnectFailed, why));
}

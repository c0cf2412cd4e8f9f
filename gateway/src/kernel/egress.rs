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
use crate::link::{check_egress, EgressCheck, TargetRefusal};
use crate::protocol::SessionId;

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
    let timeout = Duration::from_millis(config.connect_timeout_ms);
    let connected = match check_egress(&target, check) {
        Err(refusal) => Err(TargetRefusal::Check(refusal)),
        Ok(()) => match tokio::time::timeout(timeout, TcpStream::connect(target)).await {
            Ok(Ok(s)) => Ok(s),
            Ok(Err(e)) => Err(TargetRefusal::ConnectFailed(e.to_string())),
            Err(_) => Err(TargetRefusal::ConnectFailed("timed out".into())),
        },
    };
    let refused = |why: TargetRefusal| {
        Stats::inc(&gateway.stats.sessions_refused);
        let line = tunnel.with_core(|c| why.refuse(c, id, target, &tunnel.peer));
        warn!("{line}");
    };
    connected.map_err(refused).ok()
}

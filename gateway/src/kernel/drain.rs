//! Clean shutdown on SIGTERM/SIGINT, one log line per step:
//!
//! 1. stop accepting: the ingress listeners close, and sessions the peer
//!    opens from now on are refused with reason "shutting down";
//! 2. drain: running sessions carry on until they end, for at most
//!    `gateway.drain_timeout_secs`;
//! 3. at the deadline (or at once on a second SIGTERM/SIGINT), reset what is
//!    left *telling the peer* (reset reason "shutting down"), and wait
//!    briefly until the peer's kernel has acknowledged those messages, so
//!    the peer resets its ends now instead of holding the sessions for its
//!    grace period;
//! 4. take the tunnel down and return (the process exits 0).
//!
//! The tunnel keeps working during the drain (data flows are re-dialled,
//! the control connection resumed), so a WAN hiccup does not cut it short.

use std::sync::Arc;
use std::time::Duration;

use log::{info, warn};
use tokio::task::JoinHandle;

use super::Gateway;
use crate::admin::signals::{Request, Signals};
use crate::link::drain::{log_notice, NOTICE_TIMEOUT};
use crate::link::{Drain, DrainStep, ResetCause};
use crate::protocol::ResetReason;

/// Runs the shutdown started by `signal` (e.g. "SIGTERM"); `ingress` are the
/// tasks serving the ingress listeners (they close them when `stopping` is
/// cancelled).
pub async fn shutdown(
    gateway: &Arc<Gateway>,
    signal: &'static str,
    ingress: Vec<JoinHandle<()>>,
    signals: &mut Signals,
) {
    let peer = &gateway.config.peer_name;
    gateway.stopping.cancel();
    // Only say "stopped accepting" once the listeners are really closed.
    let n = ingress.len();
    for task in ingress {
        let _ = task.await;
    }
    info!(
        "{signal}: shutting down: stopped accepting on {n} ingress listener(s); new sessions from peer {peer} are refused"
    );
    // The steps and their log lines are the DPDK datapath's too (link::Drain); the resets'
    // notice is awaited in reset_remaining, so this loop ends at the first step after the drain.
    let timeout = gateway.config.drain_timeout;
    let mut drain = Drain::default();
    let mut step = drain.begin(gateway.now_us(), session_count(gateway), timeout, signal);
    if let Some(draining @ DrainStep::Draining { .. }) = step {
        info!("{draining}");
        step = None;
        // Polled: shutdown happens once per process, and a tenth of a second is invisible
        // next to a drain.
        while step.is_none() {
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_millis(100)) => {
                    step = drain.poll(gateway.now_us(), session_count(gateway), timeout, || true);
                }
                again = next_stop(signals) => {
                    let n = session_count(gateway);
                    step = drain.reset_now(gateway.now_us(), n, ResetCause::Again(again));
                }
            }
        }
    }
    match step {
        Some(DrainStep::Reset { cause, .. }) => reset_remaining(gateway, cause).await,
        Some(done) => info!("{done}"),
        None => {}
    }
    // A session opened while we were deciding (ingress raced the stop).
    if session_count(gateway) > 0 {
        reset_remaining(gateway, ResetCause::Stopping).await;
    }
    gateway.give_up(ResetReason::TunnelLost);
    info!("gateway {} stopped", gateway.config.name);
}

fn session_count(gateway: &Gateway) -> usize {
    gateway.tunnel().map_or(0, |t| t.session_count())
}

/// The next stop request; reloads during shutdown are ignored.
async fn next_stop(signals: &mut Signals) -> &'static str {
    loop {
        match signals.next().await {
            Request::Stop(signal) => return signal,
            Request::Reload => info!("SIGHUP ignored: shutting down"),
        }
    }
}

/// Resets every remaining session, telling the peer.
async fn reset_remaining(gateway: &Gateway, cause: ResetCause) {
    let Some(tunnel) = gateway.tunnel() else {
        return;
    };
    let sessions = tunnel.reset_sessions(ResetReason::ShuttingDown);
    let can_tell = *tunnel.control_up.borrow();
    let step = DrainStep::Reset { cause, sessions };
    warn!("{}", step.told_line(&tunnel.peer, can_tell));
    if can_tell {
        let notice = tokio::time::timeout(NOTICE_TIMEOUT, tunnel.control_delivered()).await;
        log_notice(&tunnel.peer, notice.is_ok());
    }
}

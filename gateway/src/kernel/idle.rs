//! Idle timeouts of ingress sessions ([`crate::link::idle`]): one watcher task per tunnel
//! looks at the watched sessions' byte counts in the session core when the rules say, and
//! resets those that moved nothing for their timeout.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use log::warn;
use tokio::sync::Notify;

use super::tunnel::Tunnel;
use crate::admin::Stats;
use crate::link::IdleTimeouts;
use crate::protocol::{ResetReason, SessionId};

/// The sessions of one tunnel with an idle timeout.
#[derive(Default)]
pub struct IdleWatch {
    sessions: Mutex<IdleTimeouts>,
    added: Notify,
}

impl IdleWatch {
    /// Resets session `id` (`label`, of ingress `index`), open at `now` (the tunnel's clock),
    /// once it has moved nothing for `limit`.
    pub fn watch(&self, now: u64, id: SessionId, limit: Duration, label: String, index: usize) {
        let mut sessions = self.sessions.lock().expect("not poisoned");
        sessions.watch(id, limit, label, index, now);
        self.added.notify_one();
    }
}

/// Watches `tunnel`'s sessions until the tunnel closes.
pub async fn run(tunnel: Arc<Tunnel>) {
    let watch = &tunnel.idle;
    loop {
        let next = watch.sessions.lock().expect("not poisoned").poll_timeout();
        let wait = async {
            match next {
                None => watch.added.notified().await,
                Some(at) => {
                    let left = Duration::from_micros(at.saturating_sub(tunnel.now()));
                    tokio::select! {
                        _ = tokio::time::sleep(left) => {}
                        // An earlier deadline, perhaps.
                        _ = watch.added.notified() => {}
                    }
                }
            }
        };
        tokio::select! {
            () = wait => {}
            _ = tunnel.closed.cancelled() => return,
        }
        let moved: std::collections::HashMap<_, _> = tunnel.with_core(|c| {
            let sessions = c.snapshot().into_iter();
            sessions.map(|s| (s.id, s.written + s.delivered)).collect()
        });
        let now = tunnel.now();
        let idle = {
            let mut sessions = watch.sessions.lock().expect("not poisoned");
            sessions.handle_timeout(now, |id| moved.get(&id).copied())
        };
        for i in idle {
            Stats::inc(&tunnel.gateway().stats.ingress_idle_timeouts);
            warn!("{}", i.line());
            tunnel.with_core(|c| c.reset(i.id, ResetReason::Timeout));
        }
    }
}

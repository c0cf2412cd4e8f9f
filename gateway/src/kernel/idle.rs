//! Idle timeouts of ingress sessions ([`crate::link::idle`]): one watcher task per tunnel
//! looks at the watched sessions' byte counts in the session core when the rules say, and
//! resets those that moved nothing for their timeout.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::Notify;

use super::tunnel::Tunnel;
use crate::admin::Stats;
use crate::link::IdleTimeouts;
use crate::protocol::SessionId;

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
        let now = tunnel.now();
        // The core's lock, then the watch's (as `watch` is called).
        let n = tunnel.with_core(|c| {
            let mut sessions = watch.sessions.lock().expect("not poisoned");
            sessions.reset_idle(now, c)
        });
        Stats::add(&tunnel.gateway().stats.ingress_idle_timeouts, n);
    }
}

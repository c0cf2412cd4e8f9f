//! Idle timeouts of ingress sessions (`ingress[i].idle_timeout_secs`): a
//! session that moves no byte either way for that long is reset at both ends
//! (reason "timeout"), so a client that went quiet cannot hold a session,
//! its task and its socket forever.
//!
//! One watcher per tunnel looks at every watched session's byte counts in
//! the session core (bytes the endpoint wrote, bytes delivered to it) a few
//! times per timeout, so the sessions' pumps need no timers of their own.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use log::warn;
use tokio::sync::Notify;

use super::tunnel::Tunnel;
use crate::admin::Stats;
use crate::protocol::{ResetReason, SessionId};

struct Watched {
    limit: Duration,
    /// `CLIENT -> TARGET` and the ingress, for the log line.
    label: String,
    index: usize,
    /// Bytes moved either way when last seen, and since when unchanged.
    moved: u64,
    since: Instant,
}

/// The sessions of one tunnel with an idle timeout.
#[derive(Default)]
pub struct IdleWatch {
    sessions: Mutex<HashMap<SessionId, Watched>>,
    added: Notify,
}

impl IdleWatch {
    /// Resets session `id` once it has moved nothing for `limit`.
    pub fn watch(&self, id: SessionId, limit: Duration, label: String, index: usize) {
        self.sessions.lock().expect("not poisoned").insert(
            id,
            Watched {
                limit,
                label,
                index,
                moved: 0,
                since: Instant::now(),
            },
        );
        self.added.notify_one();
    }
}

/// How often sessions are looked at: a quarter of the shortest timeout,
/// between 100 ms and 5 s (a reset comes at most that late).
fn tick(sessions: &HashMap<SessionId, Watched>) -> Duration {
    let shortest = sessions.values().map(|w| w.limit).min();
    shortest.map_or(Duration::from_secs(5), |l| {
        (l / 4).clamp(Duration::from_millis(100), Duration::from_secs(5))
    })
}

/// Watches `tunnel`'s sessions until the tunnel closes.
pub async fn run(tunnel: Arc<Tunnel>) {
    let watch = &tunnel.idle;
    loop {
        let (empty, every) = {
            let s = watch.sessions.lock().expect("not poisoned");
            (s.is_empty(), tick(&s))
        };
        let wait = async {
            if empty {
                watch.added.notified().await
            } else {
                tokio::time::sleep(every).await
            }
        };
        tokio::select! {
            () = wait => {}
            _ = tunnel.closed.cancelled() => return,
        }
        let moved: HashMap<SessionId, u64> = tunnel.with_core(|c| {
            c.snapshot()
                .into_iter()
                .map(|s| (s.id, s.written + s.delivered))
                .collect()
        });
        let now = Instant::now();
        let mut expired = Vec::new();
        watch
            .sessions
            .lock()
            .expect("not poisoned")
            .retain(|id, w| match moved.get(id) {
                // The session is over.
                None => false,
                Some(&m) if m != w.moved => {
                    (w.moved, w.since) = (m, now);
                    true
                }
                Some(_) if now.duration_since(w.since) >= w.limit => {
                    expired.push((*id, w.limit, std::mem::take(&mut w.label), w.index));
                    false
                }
                Some(_) => true,
            });
        for (id, limit, label, index) in expired {
            Stats::inc(&tunnel.gateway().stats.ingress_idle_timeouts);
            warn!(
                "session {id}: {label}: no bytes either way for {}s (ingress[{index}].idle_timeout_secs); resetting",
                limit.as_secs()
            );
            tunnel.with_core(|c| c.reset(id, ResetReason::Timeout));
        }
    }
}

//! Idle timeouts of ingress sessions (`ingress[i].idle_timeout_secs`): a session that moves no
//! byte either way for that long is reset at both ends (reason "timeout"), so a client that
//! went quiet cannot hold a session, its socket and its buffers forever. Both datapaths keep
//! one of these per tunnel. It judges by the session core's byte counts (bytes the endpoint
//! wrote, bytes delivered to it), looked at a few times per timeout, so the sessions' pumps need
//! no timers of their own. Times are the driver's clock in µs.

use std::collections::HashMap;
use std::time::Duration;

use crate::protocol::{ResetReason, SessionId};
use crate::session::TunnelCore;

/// Bounds of how often sessions are looked at: a quarter of the shortest timeout (so a reset
/// comes at most that late), within these.
const TICK_MIN: Duration = Duration::from_millis(100);
const TICK_MAX: Duration = Duration::from_secs(5);

#[derive(Debug)]
struct Watched {
    limit: Duration,
    /// `CLIENT -> TARGET`, for the line.
    label: String,
    /// Which `[[ingress]]`, for the line.
    index: usize,
    /// Bytes moved either way when last seen, and since when unchanged.
    moved: u64,
    since: u64,
}

/// The sessions of one tunnel with an idle timeout.
#[derive(Debug, Default)]
pub struct IdleTimeouts {
    sessions: HashMap<SessionId, Watched>,
    /// When sessions are looked at next.
    next: Option<u64>,
}

/// A session idle for its timeout: the driver resets it (reason timeout), counts it and logs
/// [`Idle::line`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Idle {
    pub id: SessionId,
    limit: Duration,
    label: String,
    index: usize,
}

impl Idle {
    pub fn line(&self) -> String {
        format!(
            "session {}: {}: no bytes either way for {}s (ingress[{}].idle_timeout_secs); resetting",
            self.id,
            self.label,
            self.limit.as_secs(),
            self.index
        )
    }
}

impl IdleTimeouts {
    /// Session `id` (`label`, of ingress `index`), open at `now`, is reset once it has moved
    /// nothing for `limit`.
    pub fn watch(&mut self, id: SessionId, limit: Duration, label: String, index: usize, now: u64) {
        let watched = Watched {
            limit,
            label,
            index,
            moved: 0,
            since: now,
        };
        self.sessions.insert(id, watched);
        let tick = now.saturating_add(self.tick().as_micros() as u64);
        self.next = Some(self.next.map_or(tick, |n| n.min(tick)));
    }

    /// When sessions are to be looked at next (`None`: none is watched).
    pub fn poll_timeout(&self) -> Option<u64> {
        self.next
    }

    /// Resets, in `core`, the watched sessions that moved nothing for their timeout (judged by
    /// the core's byte counts), each with its log line; returns how many (for the counter).
    pub fn reset_idle(&mut self, now: u64, core: &mut TunnelCore) -> u64 {
        if self.next.is_none_or(|n| now < n) {
            return 0;
        }
        let moved: HashMap<SessionId, u64> = core
            .snapshot()
            .into_iter()
            .map(|s| (s.id, s.written + s.delivered))
            .collect();
        let idle = self.handle_timeout(now, |id| moved.get(&id).copied());
        for i in &idle {
            log::warn!("{}", i.line());
            core.reset(i.id, ResetReason::Timeout);
        }
        idle.len() as u64
    }

    /// Looks at every watched session at `now`, given what each has moved either way so far
    /// (`moved`: `None` once the session is over). Returns those idle for their timeout; they
    /// are no longer watched.
    #[must_use = "idle sessions must be reset"]
    pub fn handle_timeout(
        &mut self,
        now: u64,
        moved: impl Fn(SessionId) -> Option<u64>,
    ) -> Vec<Idle> {
        if self.next.is_none_or(|n| now < n) {
            return Vec::new();
        }
        let mut idle = Vec::new();
        self.sessions.retain(|&id, w| match moved(id) {
            None => false,
            Some(m) if m != w.moved => {
                (w.moved, w.since) = (m, now);
                true
            }
            Some(_) if now.saturating_sub(w.since) >= w.limit.as_micros() as u64 => {
                let label = std::mem::take(&mut w.label);
                let (limit, index) = (w.limit, w.index);
                idle.push(Idle {
                    id,
                    limit,
                    label,
                    index,
                });
                false
            }
            Some(_) => true,
        });
        self.next =
            (!self.sessions.is_empty()).then(|| now.saturating_add(self.tick().as_micros() as u64));
        idle
    }

    fn tick(&self) -> Duration {
        let shortest = self.sessions.values().map(|w| w.limit).min();
        shortest.map_or(TICK_MAX, |l| (l / 4).clamp(TICK_MIN, TICK_MAX))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SEC: u64 = 1_000_000;

    #[test]
    fn a_session_that_moves_nothing_for_its_limit_is_idle_once() {
        let mut t = IdleTimeouts::default();
        let id = SessionId(3);
        t.watch(id, Duration::from_secs(2), "c -> t".into(), 1, 0);
        assert_eq!(t.poll_timeout(), Some(SEC / 2), "a quarter of the limit");
        // Moving bytes keeps it alive.
        assert!(t.handle_timeout(SEC, |_| Some(10)).is_empty());
        assert!(t.handle_timeout(2 * SEC, |_| Some(20)).is_empty());
        assert!(
            t.handle_timeout(3 * SEC, |_| Some(20)).is_empty(),
            "1 s quiet"
        );
        let idle = t.handle_timeout(4 * SEC, |_| Some(20));
        assert_eq!(idle.len(), 1);
        assert_eq!(
            idle[0].line(),
            "session 3: c -> t: no bytes either way for 2s (ingress[1].idle_timeout_secs); resetting"
        );
        assert_eq!(t.poll_timeout(), None, "nothing left to watch");
        assert!(t.handle_timeout(9 * SEC, |_| Some(20)).is_empty());
    }

    #[test]
    fn an_ended_session_is_forgotten_and_early_calls_do_nothing() {
        let mut t = IdleTimeouts::default();
        t.watch(SessionId(1), Duration::from_secs(60), "a".into(), 0, 0);
        t.watch(SessionId(5), Duration::from_secs(1), "b".into(), 0, 0);
        assert_eq!(
            t.poll_timeout(),
            Some(250_000),
            "the shortest limit sets the pace"
        );
        assert!(
            t.handle_timeout(100_000, |_| None).is_empty(),
            "not due yet"
        );
        assert!(t
            .handle_timeout(250_000, |id| (id == SessionId(1)).then_some(0))
            .is_empty());
        let idle = t.handle_timeout(61 * SEC, |_| Some(0));
        assert_eq!(
            idle.iter().map(|i| i.id).collect::<Vec<_>>(),
            [SessionId(1)]
        );
    }
}

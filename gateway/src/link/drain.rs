//! A gateway's shutdown, the same on both datapaths (DEPLOYMENT.md §10): stop taking sessions,
//! let the running ones finish for at most the drain timeout, then reset what is left telling
//! the peer, and give those resets a moment to reach it. The datapath says when a stop signal
//! came and how many sessions are left; this says what to do and what to log. `now` is the
//! caller's clock in µs.

use std::fmt;
use std::time::Duration;

/// How long the resets sent at the end may take to reach the peer.
pub const NOTICE_TIMEOUT: Duration = Duration::from_secs(3);

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
enum Phase {
    #[default]
    Running,
    Draining {
        deadline: u64,
        started: u64,
    },
    /// Resets sent: waiting for them to reach the peer, until `deadline`.
    Closing {
        deadline: u64,
    },
    Done,
}

/// Why the sessions still running are reset.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResetCause {
    Deadline(Duration),
    /// A second stop signal.
    Again(&'static str),
    /// The gateway stops without a drain (its admin side failed), or a session came in
    /// while it was deciding.
    Stopping,
}

impl fmt::Display for ResetCause {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ResetCause::Deadline(t) => write!(f, "drain deadline ({t:?}) reached"),
            ResetCause::Again(signal) => write!(f, "second {signal}"),
            ResetCause::Stopping => f.write_str("stopping"),
        }
    }
}

/// What the datapath does now; its `Display` is the log line (the datapath may add who it
/// told).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DrainStep {
    /// No session runs: take the tunnel down.
    NothingToDrain,
    /// Sessions run on; new ones are refused.
    Draining {
        sessions: usize,
        timeout: Duration,
        signal: &'static str,
    },
    /// Every session ended: take the tunnel down.
    Finished { after: Duration },
    /// Reset the sessions left, telling the peer, then take the tunnel down.
    Reset { cause: ResetCause, sessions: usize },
    /// The resets reached the peer, or had their time: exit.
    Stopped,
}

impl fmt::Display for DrainStep {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DrainStep::NothingToDrain => f.write_str("no sessions to drain"),
            DrainStep::Draining {
                sessions,
                timeout,
                signal,
            } => write!(
                f,
                "draining {sessions} session(s) for up to {timeout:?} ({signal} again to stop at once)"
            ),
            DrainStep::Finished { after } => {
                write!(f, "all sessions finished after {:.1}s", after.as_secs_f64())
            }
            DrainStep::Reset { cause, sessions } => write!(f, "{cause}: reset {sessions} session(s)"),
            DrainStep::Stopped => f.write_str("stopped"),
        }
    }
}

impl DrainStep {
    /// The line for a [`DrainStep::Reset`] (and the other steps' own), saying whether the
    /// peer is told: without a control connection it cannot be.
    pub fn told_line(&self, peer: &str, can_tell: bool) -> String {
        match self {
            DrainStep::Reset { .. } if can_tell => format!("{self}, telling peer {peer}"),
            DrainStep::Reset { .. } => format!(
                "{self}; peer {peer} cannot be told (no control connection): it drops them after its grace period"
            ),
            _ => self.to_string(),
        }
    }
}

/// What became of the resets told to the peer: `received` once everything sent on the
/// control connection was acknowledged by the peer, or else their [`NOTICE_TIMEOUT`] ran out.
pub fn notice_line(peer: &str, received: bool) -> String {
    if received {
        format!("peer {peer} received the resets")
    } else {
        format!(
            "peer {peer}: no acknowledgement of the resets within {NOTICE_TIMEOUT:?}; it drops the sessions when it notices the tunnel is gone"
        )
    }
}

/// Logs [`notice_line`]: a warning when the resets were not acknowledged.
pub fn log_notice(peer: &str, received: bool) {
    let line = notice_line(peer, received);
    if received {
        log::info!("{line}");
    } else {
        log::warn!("{line}");
    }
}

/// The shutdown's state.
#[derive(Debug, Default)]
pub struct Drain {
    phase: Phase,
}

fn after(us: u64) -> Duration {
    Duration::from_micros(us)
}

impl Drain {
    /// Whether a stop was asked for (new sessions are refused from then on).
    pub fn stopping(&self) -> bool {
        self.phase != Phase::Running
    }

    /// A stop signal came while running; `sessions` still run. `None` if already stopping.
    pub fn begin(
        &mut self,
        now: u64,
        sessions: usize,
        timeout: Duration,
        signal: &'static str,
    ) -> Option<DrainStep> {
        if self.phase != Phase::Running {
            return None;
        }
        if sessions == 0 {
            self.close(now);
            return Some(DrainStep::NothingToDrain);
        }
        self.phase = Phase::Draining {
            deadline: now.saturating_add(timeout.as_micros() as u64),
            started: now,
        };
        Some(DrainStep::Draining {
            sessions,
            timeout,
            signal,
        })
    }

    /// Reset now (another stop signal, or a stop without a drain), unless the resets went
    /// out already.
    pub fn reset_now(&mut self, now: u64, sessions: usize, cause: ResetCause) -> Option<DrainStep> {
        match self.phase {
            Phase::Running | Phase::Draining { .. } => {
                self.close(now);
                Some(DrainStep::Reset { cause, sessions })
            }
            Phase::Closing { .. } | Phase::Done => None,
        }
    }

    /// The passage of time, with `sessions` still running and `quiesced` once the peer has
    /// everything that was sent it: the next step, if any.
    pub fn poll(
        &mut self,
        now: u64,
        sessions: usize,
        timeout: Duration,
        quiesced: impl FnOnce() -> bool,
    ) -> Option<DrainStep> {
        match self.phase {
            Phase::Running | Phase::Done => None,
            Phase::Draining { started, .. } if sessions == 0 => {
                self.close(now);
                Some(DrainStep::Finished {
                    after: after(now.saturating_sub(started)),
                })
            }
            Phase::Draining { deadline, .. } if now >= deadline => {
                self.close(now);
                Some(DrainStep::Reset {
                    cause: ResetCause::Deadline(timeout),
                    sessions,
                })
            }
            Phase::Draining { .. } => None,
            Phase::Closing { deadline } if now >= deadline || quiesced() => {
                self.phase = Phase::Done;
                Some(DrainStep::Stopped)
            }
            Phase::Closing { .. } => None,
        }
    }

    fn close(&mut self, now: u64) {
        self.phase = Phase::Closing {
            deadline: now.saturating_add(NOTICE_TIMEOUT.as_micros() as u64),
        };
    }

    /// The shutdown is over: the datapath may exit.
    pub fn done(&self) -> bool {
        self.phase == Phase::Done
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const T: Duration = Duration::from_secs(30);
    const S: u64 = 1_000_000;

    #[test]
    fn sessions_that_finish_in_time_are_not_reset() {
        let mut d = Drain::default();
        assert!(!d.stopping());
        let step = d.begin(S, 2, T, "SIGTERM").unwrap();
        assert_eq!(
            step.to_string(),
            "draining 2 session(s) for up to 30s (SIGTERM again to stop at once)"
        );
        assert!(d.stopping());
        assert_eq!(d.begin(2 * S, 2, T, "SIGTERM"), None, "one drain at a time");
        assert_eq!(d.poll(5 * S, 1, T, || false), None);
        let step = d.poll(13 * S + 300_000, 0, T, || false).unwrap();
        assert_eq!(step.to_string(), "all sessions finished after 12.3s");
        assert_eq!(
            d.poll(14 * S, 0, T, || false),
            None,
            "the notices get their time"
        );
        assert_eq!(d.poll(14 * S, 0, T, || true), Some(DrainStep::Stopped));
        assert!(d.done());
    }

    #[test]
    fn the_deadline_or_a_second_signal_resets_what_is_left() {
        let mut d = Drain::default();
        d.begin(S, 3, T, "SIGTERM");
        assert_eq!(d.poll(S + 29 * S, 3, T, || false), None);
        let step = d.poll(31 * S, 1, T, || false).unwrap();
        assert_eq!(
            step.to_string(),
            "drain deadline (30s) reached: reset 1 session(s)"
        );
        let again = ResetCause::Again("SIGINT");
        assert_eq!(
            d.reset_now(31 * S, 1, again),
            None,
            "the resets went out already"
        );
        assert_eq!(d.poll(33 * S, 1, T, || false), None);
        assert_eq!(
            d.poll(34 * S, 1, T, || false),
            Some(DrainStep::Stopped),
            "notice timeout"
        );

        let mut d = Drain::default();
        d.begin(S, 3, T, "SIGTERM");
        let step = d.reset_now(2 * S, 3, ResetCause::Again("SIGINT")).unwrap();
        assert_eq!(step.to_string(), "second SIGINT: reset 3 session(s)");
        assert_eq!(d.poll(2 * S, 3, T, || true), Some(DrainStep::Stopped));
    }

    #[test]
    fn nothing_to_drain_goes_straight_to_closing() {
        let mut d = Drain::default();
        assert_eq!(d.begin(S, 0, T, "SIGTERM"), Some(DrainStep::NothingToDrain));
        assert_eq!(d.poll(S, 0, T, || true), Some(DrainStep::Stopped));
        // A stop that comes before any signal (the admin side failed) resets at once.
        let mut d = Drain::default();
        let step = d.reset_now(S, 2, ResetCause::Stopping).unwrap();
        assert_eq!(step.to_string(), "stopping: reset 2 session(s)");
    }

    #[test]
    fn both_datapaths_say_whether_the_peer_is_told_and_whether_it_received_the_resets() {
        let reset = DrainStep::Reset {
            cause: ResetCause::Deadline(Duration::from_secs(2)),
            sessions: 1,
        };
        assert_eq!(
            reset.told_line("gw-b (x)", true),
            "drain deadline (2s) reached: reset 1 session(s), telling peer gw-b (x)"
        );
        assert!(reset
            .told_line("gw-b (x)", false)
            .ends_with("peer gw-b (x) cannot be told (no control connection): it drops them after its grace period"));
        assert_eq!(
            DrainStep::NothingToDrain.told_line("gw-b", true),
            "no sessions to drain"
        );
        assert_eq!(notice_line("gw-b", true), "peer gw-b received the resets");
        assert!(notice_line("gw-b", false).contains("no acknowledgement of the resets within 3s"));
    }
}

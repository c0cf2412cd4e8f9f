//! Which carrier takes a tunnel's new frames when the lane is automatic
//! (`wan.lane = "auto"`): the data flows while the path does not lose, the
//! lane while it does.
//!
//! On a clean path the flows are as good as the lane and send no parity. A
//! path that drops packets at random costs the flows a round trip per loss
//! (the frame behind a hole waits for it), and the switchover pays that too:
//! at 100 ms with 0.5 % loss the flows paused a running guest 442-445 ms,
//! the lane 300-359 (docs/BENCHMARKS.md, issue 17's table).
//!
//! The measure is the flows' own: the share of what they sent that they sent
//! again, over windows of [`WINDOW_BYTES`]. Only windows while the pacer
//! cruises count: its startup overfills the bottleneck's queue on any path
//! (a first migration on a clean 200 ms link resent 2.7 % of its bytes, the
//! next ones none). A window over [`LOSSY_SHARE`] moves the new frames to the
//! lane for a hold; then the flows take them again, to see whether the path
//! still loses (the lane cannot tell: its parity hides what it loses). A
//! lossy window right after such a hand-back doubles the hold, up to
//! [`MAX_HOLD_US`]; a clean one sets it back to [`BASE_HOLD_US`].

use super::pacer::FlowProgress;
use super::Instant;

/// What the flows send between two looks at their loss: at 0.5 % loss
/// about 60 of its segments go again, on a clean path while the pacer
/// cruises none.
pub const WINDOW_BYTES: u64 = 16 << 20;
/// The flows' resent share above which the path counts as lossy: one in a
/// thousand, five times under the lossy table's rate.
pub const LOSSY_SHARE: (u64, u64) = (1, 1_000);
/// How long the lane first keeps the new frames.
pub const BASE_HOLD_US: u64 = 10_000_000;
/// The longest it keeps them before the flows look at the path again.
pub const MAX_HOLD_US: u64 = 320_000_000;

/// Whether the lane or the data flows take new frames (`wan.lane`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LaneUse {
    /// `"on"`: the lane, whenever it is up.
    Always,
    /// `"auto"`: the lane while the flows lose (this module).
    Auto,
}

/// The choice for one tunnel.
#[derive(Debug, Clone)]
pub struct LaneChoice {
    use_: LaneUse,
    /// Under [`LaneUse::Auto`]: the lane takes the new frames until `until`.
    on_lane: bool,
    until: Instant,
    /// How long it holds them when it next takes them, µs.
    hold_us: u64,
    /// The flows handed back and have not finished a window since.
    just_back: bool,
    /// Each flow's last (sent, resent) report: its counts start again on a
    /// new connection.
    last: Vec<(u64, u64)>,
    /// What the flows sent and resent in the window under way.
    window_sent: u64,
    window_resent: u64,
}

impl LaneChoice {
    pub fn new(flows: usize) -> Self {
        LaneChoice {
            use_: LaneUse::Always,
            on_lane: false,
            until: 0,
            hold_us: BASE_HOLD_US,
            just_back: false,
            last: vec![(0, 0); flows],
            window_sent: 0,
            window_resent: 0,
        }
    }

    pub fn set_use(&mut self, use_: LaneUse) {
        self.use_ = use_;
    }

    /// Whether the lane takes the new frames while it is up.
    pub fn prefers_lane(&self) -> bool {
        match self.use_ {
            LaneUse::Always => true,
            LaneUse::Auto => self.on_lane,
        }
    }

    /// The data flows' reports at `now` (the lane's not among them);
    /// `cruising`: the pacer is past its startup and drain. True if the new
    /// frames change carrier.
    pub fn on_progress<'a>(
        &mut self,
        now: Instant,
        flows: impl IntoIterator<Item = &'a (usize, FlowProgress)>,
        cruising: bool,
    ) -> bool {
        let (mut sent, mut resent) = (0, 0);
        for (k, p) in flows {
            let Some(last) = self.last.get_mut(*k) else {
                continue;
            };
            // A new connection's counts start again: what it reports is all new.
            let (s0, r0) = if p.sent < last.0 || p.retransmitted < last.1 {
                (0, 0)
            } else {
                *last
            };
            sent += p.sent - s0;
            resent += p.retransmitted - r0;
            *last = (p.sent, p.retransmitted);
        }
        if self.use_ != LaneUse::Auto {
            return false;
        }
        if self.on_lane {
            if now < self.until {
                return false;
            }
            self.on_lane = false;
            self.just_back = true;
            self.restart_window();
            return true;
        }
        if !cruising {
            // The window starts again once the pacer cruises.
            self.restart_window();
            return false;
        }
        self.window_sent += sent;
        self.window_resent += resent;
        if self.window_sent < WINDOW_BYTES {
            return false;
        }
        let lossy = u128::from(self.window_resent) * u128::from(LOSSY_SHARE.1)
            > u128::from(self.window_sent) * u128::from(LOSSY_SHARE.0);
        self.restart_window();
        if !lossy {
            self.just_back = false;
            self.hold_us = BASE_HOLD_US;
            return false;
        }
        if std::mem::take(&mut self.just_back) {
            self.hold_us = (self.hold_us * 2).min(MAX_HOLD_US);
        }
        self.on_lane = true;
        self.until = now.saturating_add(self.hold_us);
        true
    }

    fn restart_window(&mut self) {
        self.window_sent = 0;
        self.window_resent = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const FLOWS: usize = 4;
    const MS: u64 = 1_000;

    /// Four flows at 1 Gbit/s reporting every 10 ms.
    struct Path {
        choice: LaneChoice,
        now: Instant,
        sent: u64,
        resent_milli: u64,
    }

    impl Path {
        fn new() -> Self {
            let mut choice = LaneChoice::new(FLOWS);
            choice.set_use(LaneUse::Auto);
            Path {
                choice,
                now: 0,
                sent: 0,
                resent_milli: 0,
            }
        }

        /// Runs for `ms`, resending `per_mille` ‰ of what is sent; when the choice
        /// changed, and to which carrier (true: the lane).
        fn run(&mut self, ms: u64, per_mille: u64, cruising: bool) -> Vec<(Instant, bool)> {
            let mut changes = vec![];
            for _ in 0..ms / 10 {
                self.now += 10 * MS;
                // 1.25 MB per 10 ms in all, a quarter on each flow.
                self.sent += 1_250_000 / FLOWS as u64;
                self.resent_milli += 1_250_000 / FLOWS as u64 * per_mille;
                let p = FlowProgress {
                    sent: self.sent,
                    retransmitted: self.resent_milli / 1_000,
                    ..FlowProgress::default()
                };
                let reports: Vec<_> = (0..FLOWS).map(|k| (k, p)).collect();
                if self.choice.on_progress(self.now, &reports, cruising) {
                    changes.push((self.now, self.choice.prefers_lane()));
                }
            }
            changes
        }
    }

    #[test]
    fn a_clean_path_keeps_the_flows() {
        let mut path = Path::new();
        assert!(path.run(60_000, 0, true).is_empty());
        assert!(!path.choice.prefers_lane());
    }

    /// A share just at the threshold is not over it; twice it is.
    #[test]
    fn the_lane_takes_over_within_a_window_of_loss() {
        let mut path = Path::new();
        assert!(path.run(5_000, 1, true).is_empty(), "1 ‰ is not over 1 ‰");
        let changes = path.run(1_000, 5, true);
        assert_eq!(changes.len(), 1, "{changes:?}");
        let (at, lane) = changes[0];
        assert!(lane);
        // One window: 16 MiB at 1 Gbit/s is 134 ms (and the one under way, at most as long).
        assert!(
            at - 5_000 * MS <= 2 * 135 * MS,
            "took {} ms",
            at / MS - 5_000
        );
    }

    /// Startup's losses are the pacer's own overshoot: they say nothing of the path.
    #[test]
    fn losses_before_the_pacer_cruises_do_not_count() {
        let mut path = Path::new();
        assert!(path.run(3_000, 30, false).is_empty());
        // Those 3 s do not carry over into the first window that counts.
        assert!(path.run(3_000, 0, true).is_empty());
    }

    #[test]
    fn the_flows_look_again_after_the_hold_and_the_hold_grows_while_the_path_loses() {
        let mut path = Path::new();
        let mut holds = vec![];
        let mut lane_since = None;
        let changes = path.run(200_000, 5, true);
        for &change in &changes {
            match change {
                (at, true) => lane_since = Some(at),
                (at, false) => holds.push((at - lane_since.unwrap()) / MS),
            }
        }
        assert_eq!(holds, [10_000, 20_000, 40_000, 80_000], "{holds:?}");
        assert_eq!(changes.len(), 9, "back on the lane after the fourth look");
        assert!(path.choice.prefers_lane());
        assert_eq!(path.choice.hold_us, 160_000_000);
    }

    #[test]
    fn a_clean_look_sets_the_hold_back_and_the_hold_is_bounded() {
        let mut path = Path::new();
        path.choice.hold_us = MAX_HOLD_US;
        path.choice.just_back = true;
        path.run(500, 5, true);
        assert_eq!(path.choice.hold_us, MAX_HOLD_US, "bounded");
        // Up to the hand-back, the last report at the hold's end.
        let changes = path.run((path.choice.until - path.now) / MS, 5, true);
        assert_eq!(changes, [(path.now, false)], "handed back");
        assert!(path.run(1_000, 0, true).is_empty());
        assert_eq!(path.choice.hold_us, BASE_HOLD_US);
        let changes = path.run(1_000, 5, true);
        assert_eq!(changes.len(), 1, "{changes:?}");
        assert!(path.choice.prefers_lane());
        assert_eq!(path.choice.until - changes[0].0, BASE_HOLD_US);
    }

    /// A flow's new connection reports smaller counts: they are all new, not a jump back.
    #[test]
    fn a_new_connection_counts_from_zero() {
        let mut choice = LaneChoice::new(1);
        choice.set_use(LaneUse::Auto);
        let report = |sent, retransmitted| {
            [(
                0,
                FlowProgress {
                    sent,
                    retransmitted,
                    ..FlowProgress::default()
                },
            )]
        };
        assert!(!choice.on_progress(0, &report(1 << 30, 0), true), "clean");
        // Reconnected: 15 MiB and 1 MiB since, then 2 MiB clean: 17 MiB with 1 MiB resent.
        assert!(!choice.on_progress(1, &report(15 << 20, 1 << 20), true));
        assert!(choice.on_progress(2, &report(17 << 20, 1 << 20), true));
    }

    #[test]
    fn always_is_always_the_lane() {
        let mut choice = LaneChoice::new(FLOWS);
        assert!(choice.prefers_lane());
        let lossless = [(0, FlowProgress::default())];
        assert!(!choice.on_progress(BASE_HOLD_US * 10, &lossless, true));
        assert!(choice.prefers_lane());
    }
}

//! A data flow whose transport stopped sending while frames wait in its send
//! queue (Linux BBR's PROBE_RTT: a window of 4 segments for 200 ms and a
//! round trip, every ~10 s of steady sending; or a retransmission timeout,
//! after which everything in flight goes again from a window of one).
//! The far gateway delivers each session in order, so one frame stuck there
//! holds its session: at a migration's switchover that was the difference
//! between 350 and 900 ms of downtime (docs/BENCHMARKS.md, "Downtime
//! outliers"). A datapath's flow writer watches for it and, while most other
//! flows send, has the core send those frames again on them once per stall
//! and takes no new frames until the flow sends again. On a path where every
//! flow's window is small nothing is done: copies would only load it more.
//!
//! A flow also stalls with an open window when its congestion control's
//! estimate of the path collapsed: a Linux BBR flow was seen pacing at
//! 1-2 Mbit/s for seconds with 0.4 MB unsent while its siblings on the same
//! path paced at 800 (a 2.4 s migration downtime; docs/BENCHMARKS.md). BBR
//! only probes 25 % higher every 8 round trips, and a flow that holds unsent
//! bytes is never app-limited, so it does not recover by itself: the flow
//! writer restarts its congestion control besides sending its frames again,
//! at most every [`RESTART_EVERY_US`]; in between such a flow only takes no
//! new frames while what it holds would take over 100 ms to leave.

use std::collections::VecDeque;
use std::time::Duration;

/// How often a flow writer that waits looks at its connection.
pub const CHECK_EVERY: Duration = Duration::from_millis(10);
/// Batches remembered: more than a send queue of `DATA_FLOW_NOTSENT_LOWAT`
/// holds (256 KiB batches; a small batch when the sources are slow).
const REMEMBERED: usize = 256;

/// A window at least this large (segments) is a flow that sends.
const SENDING_CWND: u32 = 16;

/// Whether the tunnel's other flows are sending (`cwnds`: their congestion
/// windows): most of them have a window of [`SENDING_CWND`] or more. A
/// collapsed flow is only worth working around then; on a path where every
/// flow's window is small, frames sent twice would only load it more.
fn others_send(cwnds: &[u32]) -> bool {
    let sending = cwnds.iter().filter(|&&c| c >= SENDING_CWND).count();
    sending > 0 && sending * 2 >= cwnds.len()
}

/// A data flow's sending as its transport reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct SendSide {
    /// Congestion window, segments.
    pub cwnd: u32,
    /// Bytes at the end of its stream that wait: unsent, and after a
    /// retransmission timeout those in flight too.
    pub stuck: u64,
    /// The rate its transport paces at, bytes per second (0: not known;
    /// `u64::MAX`: it does not pace).
    pub pacing_rate: u64,
    /// Nothing was sent for a round trip and a margin, and bytes are still
    /// unacknowledged (counted in `stuck`): the tail of what it sent was
    /// lost, and its transport waits for a probe or retransmission timeout
    /// (2 round trips or more) before it even starts to repair it.
    pub tail_lost: bool,
}

/// Why a flow's waiting bytes will not leave soon.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stall {
    /// Its window is collapsed (see the module's first paragraph).
    Window,
    /// Its pacing rate collapsed far below its siblings' on the same path.
    Rate,
    /// The tail of what it sent was lost ([`SendSide::tail_lost`]).
    Tail,
}

/// A congestion window this small with bytes unsent: the connection has
/// stopped sending for a while (BBR's PROBE_RTT holds 4 segments, a
/// retransmission timeout drops to 1).
const STALLED_CWND: u32 = 4;
/// Bytes waiting longer than this at a flow's own pacing rate are stuck.
const SLOW_DRAIN_US: u64 = 100_000;
/// A flow's rate counts as collapsed when most of its siblings pace at least
/// this many times faster (BBR's gains alone differ by 2.89 / 0.75 < 4).
const COLLAPSED_RATE_FACTOR: u64 = 8;

/// Whether flow `me`'s waiting bytes are stuck while the tunnel's `others`
/// send, and why.
pub fn stalled(me: &SendSide, others: &[SendSide]) -> Option<Stall> {
    if me.stuck == 0 {
        return None;
    }
    let cwnds: Vec<u32> = others.iter().map(|o| o.cwnd).collect();
    if me.cwnd <= STALLED_CWND && others_send(&cwnds) {
        return Some(Stall::Window);
    }
    if me.tail_lost && others_send(&cwnds) {
        return Some(Stall::Tail);
    }
    let drain_us = me
        .stuck
        .saturating_mul(1_000_000)
        .checked_div(me.pacing_rate)
        .unwrap_or(u64::MAX);
    let floor = me.pacing_rate.saturating_mul(COLLAPSED_RATE_FACTOR).max(1);
    let faster = others.iter().filter(|o| o.pacing_rate >= floor).count();
    (drain_us > SLOW_DRAIN_US && faster > 0 && faster * 2 >= others.len()).then_some(Stall::Rate)
}

/// Where each recent batch a flow wrote ends in its byte stream, and how
/// many frames it held; and whether the current stall was dealt with.
#[derive(Debug, Default)]
pub struct SentBatches {
    batches: VecDeque<(u64, usize)>,
    rescued: bool,
    /// When its congestion control was last restarted (µs).
    restarted_at: Option<u64>,
}

/// A flow's congestion control is restarted at most this often: BBR's
/// startup from a small window takes a few round trips to catch up with its
/// siblings, and a restart in between would only start it over (the lab
/// saw one flow restarted ten times in a second before this).
pub const RESTART_EVERY_US: u64 = 10_000_000;

/// What a flow's writer does about a stall ([`SentBatches::step`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StallStep {
    /// Not stalled: take frames.
    Send,
    /// Stalled: take no new frames.
    Hold,
    /// Stalled: the newest `frames` go again on the other flows; `restart`: first start the
    /// flow's congestion control afresh (its rate collapsed).
    Rescue { frames: usize, restart: bool },
}

impl SentBatches {
    /// Looks at the flow at `now`: `written` bytes so far, `stuck` of them waiting, and the
    /// stall [`stalled`] found, if any. A slow flow's frames go again only along with a
    /// restart: each time it took a batch it would be slow again, and they would be sent
    /// twice.
    pub fn step(&mut self, now: u64, written: u64, stuck: u64, stall: Option<Stall>) -> StallStep {
        let slow = stall == Some(Stall::Rate);
        let restart_due = self
            .restarted_at
            .is_none_or(|at| now.saturating_sub(at) >= RESTART_EVERY_US);
        if slow && !restart_due {
            return StallStep::Hold;
        }
        match self.check(written, stall.map(|_| stuck)) {
            Some(frames) => {
                if slow {
                    self.restarted_at = Some(now);
                }
                StallStep::Rescue {
                    frames,
                    restart: slow,
                }
            }
            None if stall.is_some() => StallStep::Hold,
            None => StallStep::Send,
        }
    }

    /// A batch of `frames` frames was written; the stream now ends at `end`.
    pub fn wrote(&mut self, end: u64, frames: usize) {
        if self.batches.len() == REMEMBERED {
            self.batches.pop_front();
        }
        self.batches.push_back((end, frames));
    }

    /// Looks at the connection: `stuck` is `Some(bytes at the end of its
    /// stream that wait)` while its window is collapsed, `None` while it
    /// sends. Returns how many of the newest frames to send elsewhere (once
    /// per stall; a batch partly through counts whole), or `None` when
    /// there is nothing to do now.
    pub fn check(&mut self, written: u64, stuck: Option<u64>) -> Option<usize> {
        let Some(stuck) = stuck else {
            self.rescued = false;
            return None;
        };
        if std::mem::replace(&mut self.rescued, true) {
            return None;
        }
        let through = written.saturating_sub(stuck);
        let frames = self
            .batches
            .iter()
            .rev()
            .take_while(|&&(end, _)| end > through)
            .map(|&(_, n)| n)
            .sum();
        Some(frames)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_batches_not_yet_on_the_wire_are_rescued_once_per_stall() {
        let mut s = SentBatches::default();
        s.wrote(1_000, 4);
        s.wrote(2_000, 3);
        s.wrote(3_000, 2);
        assert_eq!(s.check(3_000, None), None, "sending");
        // 1,500 bytes stuck: the last batch and half the one before.
        assert_eq!(s.check(3_000, Some(1_500)), Some(5));
        assert_eq!(s.check(3_000, Some(1_400)), None, "the same stall");
        assert_eq!(s.check(3_000, None), None, "sending again");
        s.wrote(3_500, 1);
        assert_eq!(s.check(3_500, Some(100)), Some(1), "a new stall");
    }

    #[test]
    fn a_slow_flow_is_rescued_with_a_restart_at_most_every_ten_seconds() {
        let mut s = SentBatches::default();
        s.wrote(1_000, 2);
        let rate = Some(Stall::Rate);
        assert_eq!(s.step(0, 1_000, 0, None), StallStep::Send);
        let rescue = StallStep::Rescue {
            frames: 2,
            restart: true,
        };
        assert_eq!(s.step(5, 1_000, 800, rate), rescue);
        assert_eq!(
            s.step(6, 1_000, 800, rate),
            StallStep::Hold,
            "the same stall"
        );
        assert_eq!(s.step(7, 1_000, 0, None), StallStep::Send);
        s.wrote(2_000, 3);
        let soon = RESTART_EVERY_US;
        assert_eq!(s.step(soon, 2_000, 500, rate), StallStep::Hold, "too soon");
        let window = s.step(soon, 2_000, 500, Some(Stall::Window));
        assert_eq!(
            window,
            StallStep::Rescue {
                frames: 3,
                restart: false
            },
            "no restart"
        );
        s.wrote(3_000, 1);
        assert_eq!(s.step(soon + 5, 3_000, 0, None), StallStep::Send);
        let later = s.step(soon + 5, 3_000, 900, rate);
        assert_eq!(
            later,
            StallStep::Rescue {
                frames: 1,
                restart: true
            }
        );
    }

    #[test]
    fn a_collapsed_flow_is_worked_around_only_while_most_others_send() {
        assert!(others_send(&[4_000, 3_000, 20, 2_500]));
        assert!(others_send(&[4_000, 3, 3, 2_500]), "half of them");
        assert!(
            !others_send(&[4_000, 3, 3, 4]),
            "a path where most are small"
        );
        assert!(!others_send(&[10, 8, 12]), "a slow path");
        assert!(!others_send(&[]), "no other flow to send on");
    }

    fn side(cwnd: u32, stuck: u64, mbit: u64) -> SendSide {
        SendSide {
            cwnd,
            stuck,
            pacing_rate: mbit * 125_000,
            tail_lost: false,
        }
    }

    #[test]
    fn a_flow_whose_tail_was_lost_is_stalled_while_most_others_send() {
        // Seen in the lab at RTT 200: 523 segments unacked for 400 ms after
        // the flow's last send, then a timeout and a window of one.
        let lost = SendSide {
            tail_lost: true,
            ..side(13_000, 757_000, 873)
        };
        let others = [side(10_000, 0, 594), side(9_000, 0, 508)];
        assert_eq!(stalled(&lost, &others), Some(Stall::Tail));
        assert_eq!(stalled(&lost, &[side(10, 0, 5), side(12, 0, 5)]), None);
        assert_eq!(stalled(&side(13_000, 757_000, 873), &others), None);
    }

    #[test]
    fn a_flow_whose_rate_collapsed_below_its_siblings_is_stalled() {
        // Seen in the lab at RTT 200: a BBR flow at 1 Mbit/s holding 400 KB
        // unsent, a 40-90 segment window, its siblings at 800-1,100.
        let others = [
            side(12_000, 0, 800),
            side(15_000, 0, 1_100),
            side(3_000, 0, 80),
        ];
        assert_eq!(stalled(&side(60, 400_000, 1), &others), Some(Stall::Rate));
        assert_eq!(
            stalled(&side(60, 0, 1), &others),
            None,
            "nothing waits on it"
        );
        assert_eq!(
            stalled(&side(3_000, 500_000, 80), &others),
            None,
            "slower, but it sends what it holds within 100 ms"
        );
        let slow_path = [side(40, 0, 2), side(30, 0, 1), side(60, 0, 9)];
        assert_eq!(
            stalled(&side(60, 400_000, 1), &slow_path),
            None,
            "every flow is slow: the path is"
        );
    }

    #[test]
    fn a_collapsed_window_stalls_a_flow_while_most_others_send() {
        let others = [side(4_000, 0, 800), side(3_000, 0, 800)];
        assert_eq!(stalled(&side(4, 1, 800), &others), Some(Stall::Window));
        assert_eq!(stalled(&side(4, 0, 800), &others), None);
        assert_eq!(stalled(&side(4, 1, 800), &[side(3, 0, 1)]), None);
    }

    #[test]
    fn a_flow_remembers_a_bounded_number_of_batches() {
        let mut s = SentBatches::default();
        for i in 1..=10 * REMEMBERED as u64 {
            s.wrote(i * 10, 1);
        }
        assert_eq!(s.batches.len(), REMEMBERED);
        assert_eq!(s.check(u64::MAX, Some(u64::MAX)), Some(REMEMBERED));
    }
}

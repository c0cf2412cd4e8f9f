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
pub fn others_send(cwnds: &[u32]) -> bool {
    let sending = cwnds.iter().filter(|&&c| c >= SENDING_CWND).count();
    sending > 0 && sending * 2 >= cwnds.len()
}

/// Where each recent batch a flow wrote ends in its byte stream, and how
/// many frames it held; and whether the current stall was dealt with.
#[derive(Debug, Default)]
pub struct SentBatches {
    batches: VecDeque<(u64, usize)>,
    rescued: bool,
}

impl SentBatches {
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

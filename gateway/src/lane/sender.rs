//! The sending end of the lane: which groups are on the way, what the acks
//! say of them, and which were lost.
//!
//! A group is lost (its parity did not cover what the path dropped) when,
//! as TCP's RACK has it, a group sent after it was acked and a round trip
//! and a quarter (5 ms at least) passed since it went; or, with none acked
//! after it (the end of a burst), two round trips and four times their
//! variation (a probe timeout's wait). Its token goes back to the caller,
//! whose frame goes again on a reliable data flow; if it arrived after all,
//! the far end keeps the first copy. Until the first round trip is measured
//! the wait is [`INITIAL_LOSS_WAIT_US`].
//!
//! Time alone is not enough: the receiving gateway, on a busy host, falls
//! behind its socket now and then, and its acks with it. A group and all
//! after it late says the receiver is behind, not that the path lost one;
//! with a time limit alone, 1.6-17 % of a lossy multifd migration's groups
//! were counted lost though every one arrived (0-0.9 % with this rule,
//! docs/BENCHMARKS.md "The lane").
//!
//! Nor is a quarter of a round trip always enough: on a busy host datagrams
//! are reordered (one CPU's backlog waits behind a guest while the other
//! forwards newer ones). A group declared lost and then acked within a round
//! trip was late, so, as RACK does on a DSACK, the wait grows a quarter of a
//! round trip each time, up to a whole one, and shrinks a step after
//! [`SETTLE_GROUPS`] groups acked without one.

use std::collections::VecDeque;

use super::wire::Ack;
use crate::session::pacer::FlowProgress;
use crate::session::Instant;

/// How long a group may go unacked before any round trip was measured.
pub const INITIAL_LOSS_WAIT_US: u64 = 1_000_000;
/// Beyond a round trip, a group may take this much longer (the receiver's
/// ack delay and this host's scheduling).
const MIN_LOSS_SLACK_US: u64 = 5_000;
/// Acked groups without a late one after which the reordering window narrows a step.
const SETTLE_GROUPS: u64 = 2048;
/// Groups declared lost that are remembered, to see if they were only late.
const RECENTLY_LOST_KEPT: usize = 1024;

#[derive(Debug, Clone)]
struct InFlight<T> {
    group: u64,
    first_packet: u64,
    last_packet: u64,
    sent_at: Instant,
    /// Frame bytes.
    len: u64,
    token: T,
}

/// What the sending end counted.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SenderCounters {
    pub groups: u64,
    pub acked: u64,
    pub lost: u64,
    /// Groups declared lost that were acked soon after: late, not lost.
    pub late: u64,
}

#[derive(Debug)]
pub struct LaneSender<T> {
    next_group: u64,
    /// Groups sent and neither acked nor lost, oldest first.
    flight: VecDeque<InFlight<T>>,
    outstanding: u64,
    /// Frame bytes sent and acked, each once.
    sent: u64,
    delivered: u64,
    largest_acked: Option<u64>,
    /// The newest group acked.
    newest_acked_group: Option<u64>,
    srtt_us: Option<u64>,
    rttvar_us: u64,
    min_rtt_us: Option<u64>,
    lost: VecDeque<T>,
    /// Groups declared lost lately, and when: one acked within a round trip after
    /// was late, not lost.
    recently_lost: VecDeque<(u64, Instant)>,
    /// RACK's reordering window, in quarters of a round trip (1 to 4).
    reorder_quarters: u64,
    acked_since_late: u64,
    counters: SenderCounters,
}

impl<T> Default for LaneSender<T> {
    fn default() -> Self {
        LaneSender {
            next_group: 0,
            flight: VecDeque::new(),
            outstanding: 0,
            sent: 0,
            delivered: 0,
            largest_acked: None,
            newest_acked_group: None,
            srtt_us: None,
            rttvar_us: 0,
            min_rtt_us: None,
            lost: VecDeque::new(),
            recently_lost: VecDeque::new(),
            reorder_quarters: 1,
            acked_since_late: 0,
            counters: SenderCounters::default(),
        }
    }
}

impl<T> LaneSender<T> {
    /// The group the next frame becomes.
    pub fn next_group(&self) -> u64 {
        self.next_group
    }

    /// The oldest group still tracked: the receiver may give up on any below.
    pub fn floor(&self) -> u64 {
        self.flight.front().map_or(self.next_group, |f| f.group)
    }

    /// A frame of `len` bytes went out at `now` as group [`LaneSender::next_group`],
    /// in datagrams numbered `first_packet..=last_packet`.
    pub fn sent(&mut self, now: Instant, len: u64, first_packet: u64, last_packet: u64, token: T) {
        self.flight.push_back(InFlight {
            group: self.next_group,
            first_packet,
            last_packet,
            sent_at: now,
            len,
            token,
        });
        self.next_group += 1;
        self.outstanding += len;
        self.sent += len;
        self.counters.groups += 1;
    }

    /// What an ack arriving at `now` says: the groups it covers are done.
    pub fn on_ack(&mut self, now: Instant, ack: &Ack) {
        if self.largest_acked.is_none_or(|l| ack.largest > l) {
            self.largest_acked = Some(ack.largest);
            self.sample_rtt(now, ack);
        }
        let rebuilt = |g: u64| {
            g < ack.below
                || ack
                    .ranges
                    .iter()
                    .any(|&(s, n)| g >= s && g - s < u64::from(n))
        };
        let (mut bytes, mut groups, mut newest) = (0, 0, self.newest_acked_group);
        self.flight.retain(|f| {
            let done = rebuilt(f.group);
            if done {
                newest = newest.max(Some(f.group));
                bytes += f.len;
                groups += 1;
            }
            !done
        });
        self.newest_acked_group = newest;
        self.outstanding -= bytes;
        self.delivered += bytes;
        self.counters.acked += groups;
        self.learn_reordering(now, groups, rebuilt);
    }

    /// A group declared lost and acked within a round trip after was late, not lost (an
    /// ack later than that may be the receiver giving it up at our floor): widen the
    /// reordering window a quarter of a round trip, up to one, as RACK does on a DSACK.
    /// Acked groups without a late one narrow it again a step per [`SETTLE_GROUPS`].
    fn learn_reordering(&mut self, now: Instant, acked: u64, rebuilt: impl Fn(u64) -> bool) {
        // Declared in time order: the old ones are at the front.
        let srtt = self.srtt_us.unwrap_or(INITIAL_LOSS_WAIT_US);
        while self
            .recently_lost
            .front()
            .is_some_and(|&(_, at)| now.saturating_sub(at) >= srtt)
        {
            self.recently_lost.pop_front();
        }
        let before = self.recently_lost.len();
        self.recently_lost.retain(|&(g, _)| !rebuilt(g));
        let late = (before - self.recently_lost.len()) as u64;
        if late > 0 {
            self.counters.late += late;
            self.reorder_quarters = (self.reorder_quarters + 1).min(4);
            self.acked_since_late = 0;
        } else {
            self.acked_since_late += acked;
            if self.acked_since_late >= SETTLE_GROUPS && self.reorder_quarters > 1 {
                self.reorder_quarters -= 1;
                self.acked_since_late = 0;
            }
        }
    }

    fn sample_rtt(&mut self, now: Instant, ack: &Ack) {
        let Some(f) = self
            .flight
            .iter()
            .find(|f| (f.first_packet..=f.last_packet).contains(&ack.largest))
        else {
            return;
        };
        let rtt = now
            .saturating_sub(f.sent_at)
            .saturating_sub(u64::from(ack.delay_us))
            .max(1);
        self.min_rtt_us = Some(self.min_rtt_us.map_or(rtt, |m| m.min(rtt)));
        match self.srtt_us {
            None => {
                self.srtt_us = Some(rtt);
                self.rttvar_us = rtt / 2;
            }
            Some(s) => {
                self.rttvar_us = (3 * self.rttvar_us + s.abs_diff(rtt)) / 4;
                self.srtt_us = Some((7 * s + rtt) / 8);
            }
        }
    }

    /// How long after it went group `group` is lost if no ack covers it.
    fn loss_wait(&self, group: u64) -> u64 {
        let Some(s) = self.srtt_us else {
            return INITIAL_LOSS_WAIT_US;
        };
        if self.newest_acked_group.is_some_and(|n| n > group) {
            s + (self.reorder_quarters * s / 4).max(MIN_LOSS_SLACK_US)
        } else {
            2 * s + (4 * self.rttvar_us).max(MIN_LOSS_SLACK_US)
        }
    }

    /// When the oldest group on the way is lost if no ack comes (the ones after it were
    /// sent later, and none of them can be acked before it is).
    pub fn loss_deadline(&self) -> Option<Instant> {
        self.flight
            .front()
            .map(|f| f.sent_at + self.loss_wait(f.group))
    }

    /// Declares lost every group past its deadline at `now`.
    pub fn detect_lost(&mut self, now: Instant) {
        while self.loss_deadline().is_some_and(|at| at <= now) {
            let f = self.flight.pop_front().expect("checked");
            if self.recently_lost.len() == RECENTLY_LOST_KEPT {
                self.recently_lost.pop_front();
            }
            self.recently_lost.push_back((f.group, now));
            self.outstanding -= f.len;
            self.counters.lost += 1;
            self.lost.push_back(f.token);
        }
    }

    /// The token of a group declared lost, oldest first.
    pub fn poll_lost(&mut self) -> Option<T> {
        self.lost.pop_front()
    }

    /// Frame bytes on the way, neither acked nor lost.
    pub fn outstanding(&self) -> u64 {
        self.outstanding
    }

    pub fn counters(&self) -> SenderCounters {
        self.counters
    }

    /// What the lane delivered, for the tunnel pacer, as a data flow reports it.
    pub fn progress(&self) -> FlowProgress {
        FlowProgress {
            delivered: self.delivered,
            min_rtt_us: self.min_rtt_us,
            srtt_us: self.srtt_us,
            outstanding: self.outstanding,
            sent: self.sent,
            retransmitted: 0,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: u64 = 1_000;
    const RTT: u64 = 100 * MS;

    fn ack(largest: u64, below: u64, ranges: Vec<(u64, u32)>) -> Ack {
        Ack {
            largest,
            delay_us: 0,
            received: 0,
            below,
            ranges,
        }
    }

    /// Sends the next group (one datagram, numbered as the group) at `now`.
    fn send(s: &mut LaneSender<u64>, now: Instant) -> u64 {
        let g = s.next_group();
        s.sent(now, 1000, g, g, g);
        g
    }

    /// Sends groups g and g+1 at `now`; the ack for g+1 comes first, a round trip
    /// later. Returns g and how long after it went g was declared lost.
    fn overtaken(s: &mut LaneSender<u64>, now: Instant) -> (u64, u64) {
        let g = send(s, now);
        send(s, now + MS);
        s.on_ack(now + MS + RTT, &ack(g + 1, g, vec![(g + 1, 1)]));
        let at = s.loss_deadline().expect("g on the way");
        s.detect_lost(at);
        assert_eq!(s.poll_lost(), Some(g));
        (g, at - now)
    }

    #[test]
    fn a_group_declared_lost_then_acked_widens_the_reordering_window_until_it_settles() {
        let mut s = LaneSender::default();
        send(&mut s, 0);
        s.on_ack(RTT, &ack(0, 1, vec![]));
        // RACK: a round trip and a quarter; each group that was only late (acked within a
        // round trip of being declared lost) widens that by a quarter, up to a round trip.
        let mut now = 200 * MS;
        for wait in [125, 150, 175, 200, 200] {
            let (g, waited) = overtaken(&mut s, now);
            assert_eq!(waited, wait * MS, "group {g}");
            s.on_ack(now + waited + 10 * MS, &ack(g, g + 2, vec![]));
            now += 400 * MS;
        }
        assert_eq!(s.counters().late, 5);
        // A group lost for real is given up by the receiver later than a round trip:
        // the window stays.
        let (g, waited) = overtaken(&mut s, now);
        assert_eq!(waited, 200 * MS);
        s.on_ack(now + waited + 2 * RTT, &ack(g + 1, g + 2, vec![]));
        assert_eq!(s.counters().late, 5);
        // 2048 groups acked without one declared lost narrow it a step.
        now += 400 * MS;
        for _ in 0..2048 {
            let g = send(&mut s, now);
            s.on_ack(now + RTT, &ack(g, g + 1, vec![]));
            now += 10;
        }
        let (_, waited) = overtaken(&mut s, now + RTT);
        assert_eq!(waited, 175 * MS);
    }
}

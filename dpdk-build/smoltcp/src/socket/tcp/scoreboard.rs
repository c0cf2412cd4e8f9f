//! Sender-side loss recovery for long, lossy paths (LMAS patch).
//!
//! The classic sender of this crate retransmits one segment per three duplicate ACKs and
//! everything after the first hole on a timeout (go-back-N): on a path with a window of
//! thousands of segments and a loss rate of 1 %, that is a collapse. This module keeps a
//! scoreboard of every segment in flight instead:
//!
//! - SACK (RFC 2018): the blocks the receiver reports mark segments delivered, so only the
//!   holes are sent again;
//! - RACK (RFC 8985): a segment is lost once a segment sent after it has been delivered and a
//!   reordering window has passed. Time-based, so it also finds lost retransmissions, which
//!   duplicate-ACK counting cannot;
//! - delivery-rate samples (draft-cheng-iccrg-delivery-rate-estimation) for a rate-based
//!   congestion controller (BBR).
//!
//! It works on sequence numbers and times only; the socket owns the bytes. Every value that
//! comes from the network (ACK numbers, SACK blocks) is checked against what was sent: a
//! forged block marks nothing and panics nothing.

use alloc::collections::VecDeque;
use alloc::vec::Vec;

use crate::time::{Duration, Instant};
use crate::wire::TcpSeqNumber;

const SACKED: u8 = 1;
/// Marked lost and not retransmitted since.
const LOST: u8 = 2;
/// Retransmitted at least once (its RTT samples are ambiguous).
const RETRANS: u8 = 4;
/// Sent while the sender had nothing more to send (its rate sample understates the path).
const APP_LIMITED: u8 = 8;

/// (LMAS) The shortest window of `Scoreboard::recent_rtt`: on a LAN path half the minimum RTT
/// is tens of microseconds, one or two samples, as noisy as the smoothed RTT it replaces.
const RECENT_RTT_MIN_WINDOW: Duration = Duration::from_millis(5);

/// One transmitted segment.
#[derive(Debug, Clone, Copy)]
struct Sent {
    start: TcpSeqNumber,
    len: u32,
    /// Its latest (re)transmission.
    xmit_at: Instant,
    /// The connection's delivered count, and its time, when it was sent.
    delivered: u64,
    delivered_at: Instant,
    /// When the first segment of its flight was sent.
    first_sent_at: Instant,
    flags: u8,
}

impl Sent {
    fn end(&self) -> TcpSeqNumber {
        self.start + self.len as usize
    }

    fn has(&self, flag: u8) -> bool {
        self.flags & flag != 0
    }
}

/// What one ACK delivered, for the congestion controller.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub(crate) struct RateSample {
    /// Bytes delivered over `interval` (zero interval: no valid sample).
    pub delivered: u64,
    pub interval: Duration,
    /// The connection's delivered count when the newest delivered segment was sent.
    pub prior_delivered: u64,
    /// The connection's delivered count after this ACK.
    pub total_delivered: u64,
    pub app_limited: bool,
    /// RTT of the newest delivered segment, if it was not retransmitted.
    pub rtt: Option<Duration>,
    /// Bytes newly acknowledged or selectively acknowledged by this ACK.
    pub newly_delivered: usize,
    /// Bytes newly found lost while processing this ACK.
    pub newly_lost: usize,
}

impl RateSample {
    /// Bytes per second, if the sample is valid.
    pub fn rate(&self) -> Option<u64> {
        let us = self.interval.total_micros();
        (us > 0 && self.delivered > 0).then(|| self.delivered.saturating_mul(1_000_000) / us)
    }
}

/// Counters for status displays.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RecoveryStats {
    /// Segments sent again (after RACK, a timeout or duplicate ACKs found them lost).
    pub retransmitted_segments: u64,
    pub retransmitted_bytes: u64,
    /// Retransmission timeouts, and tail loss probes (timer expiries that sent only the
    /// last segment again).
    pub timeouts: u64,
    pub probes: u64,
    /// Bytes delivered to the peer (acknowledged or selectively acknowledged).
    pub delivered_bytes: u64,
}

/// The sorted, disjoint sequence ranges the receiver has reported holding above the
/// cumulative ACK.
#[derive(Debug, Default)]
struct SackedRanges(Vec<(TcpSeqNumber, TcpSeqNumber)>);

impl SackedRanges {
    /// Adds `[left, right)`; returns the merged range that now contains it and whether it
    /// covered anything new.
    fn insert(&mut self, left: TcpSeqNumber, right: TcpSeqNumber) -> Option<(TcpSeqNumber, TcpSeqNumber)> {
        // The first range that ends at or after `left` (it may touch or overlap).
        let first = self.0.partition_point(|&(_, end)| end < left);
        let mut last = first;
        let (mut lo, mut hi) = (left, right);
        let mut covered = false;
        while last < self.0.len() && self.0[last].0 <= right {
            let (s, e) = self.0[last];
            if s <= left && e >= right {
                covered = true;
            }
            lo = lo.min(s);
            hi = hi.max(e);
            last += 1;
        }
        if covered {
            return None;
        }
        self.0.splice(first..last, core::iter::once((lo, hi)));
        Some((lo, hi))
    }

    /// Forgets everything below `una`.
    fn trim(&mut self, una: TcpSeqNumber) {
        let gone = self.0.partition_point(|&(_, end)| end <= una);
        self.0.drain(..gone);
        if let Some(first) = self.0.first_mut()
            && first.0 < una
        {
            first.0 = una;
        }
    }

    fn clear(&mut self) {
        self.0.clear();
    }
}

/// The scoreboard of one connection's sender.
#[derive(Debug)]
pub(crate) struct Scoreboard {
    /// Every segment in `[snd_una, snd_nxt)`, in sequence order.
    sent: VecDeque<Sent>,
    /// Bytes in `sent`, and of those: selectively acknowledged, and lost (not resent yet).
    outstanding: usize,
    sacked: usize,
    lost: usize,
    sacked_ranges: SackedRanges,
    /// Starts of segments marked lost, in the order they were marked; entries that were
    /// delivered or resent since are skipped when met.
    to_retransmit: VecDeque<TcpSeqNumber>,
    /// Retransmissions in time order (start, when), for RACK; stale entries are skipped.
    retransmitted: VecDeque<(TcpSeqNumber, Instant)>,
    /// Index in `sent` of the first original transmission RACK has not judged yet.
    scan: usize,

    // RACK (RFC 8985 §6.1).
    rack_xmit_at: Option<Instant>,
    rack_end: TcpSeqNumber,
    rack_rtt: Duration,
    min_rtt: Option<Duration>,
    /// (LMAS) The RTT samples of the current window and the one before it (sum, count),
    /// and when the current one began: the path's round trip now, queueing included. Their
    /// mean, not a smoothed RTT of one sample a round trip: a busy host reads ACKs late by
    /// up to a turn of its loop, and one sample in a round trip is as likely one of those.
    /// A window lasts half the minimum RTT, and at least `RECENT_RTT_MIN_WINDOW`.
    recent_rtt: [(Duration, u32); 2],
    recent_since: Instant,
    /// When a segment RACK is waiting on becomes lost (the reordering timer).
    reo_deadline: Option<Instant>,

    // Delivery rate (draft-cheng-iccrg-delivery-rate-estimation §3).
    delivered: u64,
    delivered_at: Instant,
    first_sent_at: Instant,
    /// Samples of segments sent before this delivered count are app-limited (0: none).
    app_limited_until: u64,

    stats: RecoveryStats,
}

impl Scoreboard {
    pub fn new() -> Scoreboard {
        Scoreboard {
            sent: VecDeque::new(),
            outstanding: 0,
            sacked: 0,
            lost: 0,
            sacked_ranges: SackedRanges::default(),
            to_retransmit: VecDeque::new(),
            retransmitted: VecDeque::new(),
            scan: 0,
            rack_xmit_at: None,
            rack_end: TcpSeqNumber(0),
            rack_rtt: Duration::ZERO,
            min_rtt: None,
            recent_rtt: [(Duration::ZERO, 0); 2],
            recent_since: Instant::from_micros(0),
            reo_deadline: None,
            delivered: 0,
            delivered_at: Instant::from_micros(0),
            first_sent_at: Instant::from_micros(0),
            app_limited_until: 0,
            stats: RecoveryStats::default(),
        }
    }

    /// Forgets every segment (the connection was reset or restarted).
    pub fn reset(&mut self) {
        let stats = self.stats;
        *self = Scoreboard::new();
        self.stats = stats;
    }

    /// Bytes in the network: sent, not yet delivered and not deemed lost.
    pub fn in_flight(&self) -> usize {
        self.outstanding - self.sacked - self.lost
    }

    pub fn stats(&self) -> RecoveryStats {
        self.stats
    }

    /// Bytes delivered so far, selectively acknowledged ones included.
    pub fn delivered(&self) -> u64 {
        self.delivered
    }

    /// Bytes sent so far, each once: every one is delivered, or still on the scoreboard
    /// and not selectively acknowledged.
    pub fn sent(&self) -> u64 {
        self.delivered + (self.outstanding - self.sacked) as u64
    }

    pub fn min_rtt(&self) -> Option<Duration> {
        self.min_rtt
    }

    /// (LMAS) The mean RTT sampled over the last half to whole minimum RTT (see
    /// `recent_rtt`); `None` while no segment sent once was delivered in that time.
    pub fn recent_rtt(&self) -> Option<Duration> {
        let [(a, n), (b, m)] = self.recent_rtt;
        let count = n + m;
        (count > 0).then(|| (a + b) / count)
    }

    fn sample_recent_rtt(&mut self, rtt: Duration, now: Instant) {
        let window = self.min_rtt.map_or(Duration::ZERO, |m| m / 2).max(RECENT_RTT_MIN_WINDOW);
        let elapsed = now - self.recent_since;
        if elapsed >= window {
            // A gap of two windows or more leaves nothing recent to keep.
            let previous = if elapsed < window * 2 {
                self.recent_rtt[0]
            } else {
                (Duration::ZERO, 0)
            };
            self.recent_rtt = [(Duration::ZERO, 0), previous];
            self.recent_since = now;
        }
        let (sum, count) = &mut self.recent_rtt[0];
        *sum += rtt;
        *count += 1;
    }

    /// When the reordering window of a segment RACK waits on runs out.
    pub fn reo_deadline(&self) -> Option<Instant> {
        self.reo_deadline
    }

    fn index_of(&self, seq: TcpSeqNumber) -> Option<usize> {
        let i = self.sent.partition_point(|s| s.start < seq);
        (i < self.sent.len() && self.sent[i].start == seq).then_some(i)
    }

    /// A new segment `[start, start + len)` went out at `now`.
    pub fn on_sent(&mut self, start: TcpSeqNumber, len: usize, now: Instant) {
        if len == 0 {
            return;
        }
        if self.sent.back().is_some_and(|s| s.end() != start) {
            // Not contiguous with what is in flight (cannot happen: the socket sends new data
            // at snd_nxt); keep the scoreboard consistent rather than guess.
            net_debug!("scoreboard: segment at {} does not follow snd_nxt", start);
            return;
        }
        if self.in_flight() == 0 {
            // A new flight: the rate sample starts now, not when the path went idle.
            self.first_sent_at = now;
            self.delivered_at = now;
        }
        let flags = if self.app_limited_until > 0 { APP_LIMITED } else { 0 };
        self.sent.push_back(Sent {
            start,
            len: len as u32,
            xmit_at: now,
            delivered: self.delivered,
            delivered_at: self.delivered_at,
            first_sent_at: self.first_sent_at,
            flags,
        });
        self.outstanding += len;
    }

    /// The next segment to send again, if any is marked lost.
    pub fn peek_retransmit(&self) -> Option<(TcpSeqNumber, usize)> {
        self.to_retransmit.iter().find_map(|&seq| {
            let s = &self.sent[self.index_of(seq)?];
            s.has(LOST).then_some((seq, s.len as usize))
        })
    }

    /// Drops retransmission entries that were delivered or resent since they were queued.
    fn prune(&mut self) {
        while let Some(&seq) = self.to_retransmit.front() {
            if self.index_of(seq).is_some_and(|i| self.sent[i].has(LOST)) {
                break;
            }
            self.to_retransmit.pop_front();
        }
    }

    /// The segment at `start` (from [`Scoreboard::peek_retransmit`]) went out again at `now`.
    pub fn on_retransmitted(&mut self, start: TcpSeqNumber, now: Instant) {
        if self.to_retransmit.front() == Some(&start) {
            self.to_retransmit.pop_front();
        }
        let Some(i) = self.index_of(start) else { return };
        if self.in_flight() == 0 {
            self.first_sent_at = now;
            self.delivered_at = now;
        }
        let s = &mut self.sent[i];
        if s.has(LOST) {
            self.lost -= s.len as usize;
        }
        s.flags = (s.flags & !LOST) | RETRANS;
        s.xmit_at = now;
        s.delivered = self.delivered;
        s.delivered_at = self.delivered_at;
        s.first_sent_at = self.first_sent_at;
        self.stats.retransmitted_segments += 1;
        self.stats.retransmitted_bytes += s.len as u64;
        self.retransmitted.push_back((start, now));
        self.prune();
    }

    /// The sender has nothing more to send while the network has room: samples until what
    /// is in flight now is delivered understate the path.
    pub fn on_app_limited(&mut self) {
        self.app_limited_until = (self.delivered + self.in_flight() as u64).max(1);
    }

    /// A retransmission timeout: every segment not known delivered is lost.
    pub fn on_rto(&mut self) {
        self.stats.timeouts += 1;
        for s in self.sent.iter_mut() {
            if !s.has(SACKED) && !s.has(LOST) {
                s.flags |= LOST;
                self.lost += s.len as usize;
                self.to_retransmit.push_back(s.start);
            }
        }
        self.retransmitted.clear();
        self.scan = self.sent.len();
        self.reo_deadline = None;
    }

    /// The receiver repeated its cumulative ACK three times and does not do SACK: the first
    /// segment is lost (the classic fast retransmit).
    pub fn mark_first_lost(&mut self) -> usize {
        match self.sent.front_mut() {
            Some(s) if !s.has(LOST) && !s.has(SACKED) => {
                s.flags |= LOST;
                self.lost += s.len as usize;
                self.to_retransmit.push_front(s.start);
                s.len as usize
            }
            _ => 0,
        }
    }

    /// A tail loss probe: the last segment neither delivered nor already marked is marked
    /// lost, so that it goes again. Returns its length (0: nothing to probe with).
    pub fn mark_last_lost(&mut self) -> usize {
        let Some(i) = self.sent.iter().rposition(|s| !s.has(SACKED)) else {
            return 0;
        };
        if self.sent[i].has(LOST) {
            return 0;
        }
        self.stats.probes += 1;
        self.mark_lost(i)
    }

    /// An ACK arrived: `ack` is its cumulative acknowledgment (already checked to lie within
    /// what was sent), `sack` its SACK blocks as received.
    pub fn on_ack(
        &mut self,
        ack: TcpSeqNumber,
        sack: &[Option<(u32, u32)>],
        now: Instant,
    ) -> RateSample {
        let mut rs = RateSample::default();
        let mut newest: Option<Sent> = None;

        // Cumulatively acknowledged segments leave the scoreboard.
        while let Some(front) = self.sent.front().copied() {
            if front.end() <= ack {
                self.sent.pop_front();
                self.scan = self.scan.saturating_sub(1);
                self.outstanding -= front.len as usize;
                if front.has(LOST) {
                    self.lost -= front.len as usize;
                }
                if front.has(SACKED) {
                    self.sacked -= front.len as usize;
                } else {
                    self.deliver(&front, front.len as usize, now, &mut rs, &mut newest);
                }
            } else {
                if front.start < ack {
                    // Acknowledged up to the middle of a segment: keep its tail.
                    let cut = ack - front.start;
                    let s = self.sent.front_mut().expect("front exists");
                    s.start = ack;
                    s.len -= cut as u32;
                    self.outstanding -= cut;
                    if s.has(LOST) {
                        self.lost -= cut;
                    }
                    let part = *s;
                    self.deliver(&part, cut, now, &mut rs, &mut newest);
                }
                break;
            }
        }
        self.sacked_ranges.trim(ack);

        // Selectively acknowledged segments stay (the receiver may still renege) but count
        // as delivered.
        let snd_nxt = self.sent.back().map(|s| s.end());
        for &(left, right) in sack.iter().flatten() {
            let (left, right) = (TcpSeqNumber(left as i32), TcpSeqNumber(right as i32));
            let Some(snd_nxt) = snd_nxt else { break };
            // Only blocks above the cumulative ACK and within what was sent (a D-SACK or a
            // forged block marks nothing).
            if !(left < right && ack < right && right <= snd_nxt) {
                continue;
            }
            let left = left.max(ack);
            let Some((lo, hi)) = self.sacked_ranges.insert(left, right) else {
                continue;
            };
            let mut i = self.sent.partition_point(|s| s.end() <= lo);
            while i < self.sent.len() && self.sent[i].start < hi {
                let s = self.sent[i];
                if !s.has(SACKED) && lo <= s.start && s.end() <= hi {
                    let seg = &mut self.sent[i];
                    seg.flags |= SACKED;
                    self.sacked += s.len as usize;
                    if s.has(LOST) {
                        seg.flags &= !LOST;
                        self.lost -= s.len as usize;
                    }
                    self.deliver(&s, s.len as usize, now, &mut rs, &mut newest);
                }
                i += 1;
            }
        }

        if let Some(p) = newest {
            let send_elapsed = p.xmit_at - p.first_sent_at;
            let ack_elapsed = self.delivered_at - p.delivered_at;
            rs.interval = send_elapsed.max(ack_elapsed);
            rs.delivered = self.delivered - p.delivered;
            rs.prior_delivered = p.delivered;
            rs.app_limited = p.has(APP_LIMITED);
            // An interval shorter than the path's RTT would overstate the rate (ACK
            // compression): no sample.
            if self.min_rtt.is_some_and(|m| rs.interval < m) {
                rs.interval = Duration::ZERO;
            }
        }
        if self.app_limited_until > 0 && self.delivered > self.app_limited_until {
            self.app_limited_until = 0;
        }
        rs.total_delivered = self.delivered;
        rs.newly_lost = self.detect_lost(now);
        self.prune();
        rs
    }

    /// Bookkeeping for `bytes` of segment `s` newly delivered.
    fn deliver(
        &mut self,
        s: &Sent,
        bytes: usize,
        now: Instant,
        rs: &mut RateSample,
        newest: &mut Option<Sent>,
    ) {
        self.delivered += bytes as u64;
        self.delivered_at = now;
        self.stats.delivered_bytes += bytes as u64;
        rs.newly_delivered += bytes;
        let rtt = now - s.xmit_at;
        if newest.is_none_or(|n| s.delivered > n.delivered || (s.delivered == n.delivered && s.xmit_at > n.xmit_at)) {
            *newest = Some(*s);
            // The next flight's rate sample starts where this segment was sent.
            self.first_sent_at = s.xmit_at;
            rs.rtt = (!s.has(RETRANS)).then_some(rtt);
        }
        if !s.has(RETRANS) {
            self.min_rtt = Some(self.min_rtt.map_or(rtt, |m| m.min(rtt)));
            self.sample_recent_rtt(rtt, now);
        }
        // RACK: the most recently sent delivered segment. A retransmission delivered sooner
        // than one minimum RTT may be the original's ACK: not trusted (RFC 8985 §6.2).
        let ambiguous = s.has(RETRANS) && self.min_rtt.is_some_and(|m| rtt < m);
        let newer = self
            .rack_xmit_at
            .is_none_or(|at| s.xmit_at > at || (s.xmit_at == at && s.end() > self.rack_end));
        if !ambiguous && newer {
            self.rack_xmit_at = Some(s.xmit_at);
            self.rack_end = s.end();
            self.rack_rtt = rtt;
        }
    }

    /// The reordering window: a quarter of the minimum RTT (RFC 8985 §6.2, without D-SACK
    /// adaptation).
    fn reo_wnd(&self) -> Duration {
        self.min_rtt.map_or(Duration::ZERO, |m| m / 4)
    }

    /// RACK (RFC 8985 §6.2): segments sent before the newest delivered one and not delivered
    /// within its RTT plus the reordering window are lost. Returns the bytes newly marked.
    pub fn detect_lost(&mut self, now: Instant) -> usize {
        self.reo_deadline = None;
        let Some(rack_at) = self.rack_xmit_at else {
            return 0;
        };
        let wait = self.rack_rtt + self.reo_wnd();
        let mut newly = 0;
        let before_rack = |at: Instant, end: TcpSeqNumber, rack_end: TcpSeqNumber| {
            at < rack_at || (at == rack_at && end <= rack_end)
        };
        // Original transmissions: in sequence order, which is also time order.
        while self.scan < self.sent.len() {
            let s = self.sent[self.scan];
            if s.has(SACKED) || s.has(RETRANS) || s.has(LOST) {
                self.scan += 1;
                continue;
            }
            if !before_rack(s.xmit_at, s.end(), self.rack_end) {
                break;
            }
            let deadline = s.xmit_at + wait;
            if now < deadline {
                self.arm(deadline);
                break;
            }
            newly += self.mark_lost(self.scan);
            self.scan += 1;
        }
        // Retransmissions, in the order they were sent.
        while let Some(&(seq, at)) = self.retransmitted.front() {
            let live = self
                .index_of(seq)
                .filter(|&i| {
                    let s = &self.sent[i];
                    s.xmit_at == at && !s.has(SACKED) && !s.has(LOST)
                });
            let Some(i) = live else {
                self.retransmitted.pop_front();
                continue;
            };
            if !before_rack(at, self.sent[i].end(), self.rack_end) {
                break;
            }
            let deadline = at + wait;
            if now < deadline {
                self.arm(deadline);
                break;
            }
            newly += self.mark_lost(i);
            self.retransmitted.pop_front();
        }
        newly
    }

    fn arm(&mut self, at: Instant) {
        self.reo_deadline = Some(self.reo_deadline.map_or(at, |d| d.min(at)));
    }

    fn mark_lost(&mut self, i: usize) -> usize {
        let s = &mut self.sent[i];
        s.flags |= LOST;
        self.lost += s.len as usize;
        self.to_retransmit.push_back(s.start);
        s.len as usize
    }

    /// Whether every segment sent is accounted for (for tests and debug checks).
    #[cfg(test)]
    fn check(&self) {
        let (mut out, mut sacked, mut lost) = (0, 0, 0);
        for (k, s) in self.sent.iter().enumerate() {
            out += s.len as usize;
            if s.has(SACKED) {
                sacked += s.len as usize;
                assert!(!s.has(LOST), "segment {k} both sacked and lost");
            }
            if s.has(LOST) {
                lost += s.len as usize;
            }
            if k > 0 {
                assert!(self.sent[k - 1].end() == s.start, "gap before segment {k}");
            }
        }
        assert_eq!((out, sacked, lost), (self.outstanding, self.sacked, self.lost));
    }
}

#[cfg(test)]
mod test {
    use super::*;

    const MSS: usize = 1000;

    fn at(ms: i64) -> Instant {
        Instant::from_millis(ms)
    }

    fn seq(n: usize) -> TcpSeqNumber {
        TcpSeqNumber(1000) + n
    }

    fn block(from: usize, to: usize) -> Option<(u32, u32)> {
        Some((seq(from).0 as u32, seq(to).0 as u32))
    }

    /// `n` segments of MSS bytes sent 1 ms apart from t = 0.
    fn board(n: usize) -> Scoreboard {
        let mut b = Scoreboard::new();
        for k in 0..n {
            b.on_sent(seq(k * MSS), MSS, at(k as i64));
        }
        b
    }

    #[test]
    fn cumulative_ack_delivers_and_samples_rate() {
        let mut b = board(10);
        let rs = b.on_ack(seq(5 * MSS), &[], at(100));
        b.check();
        assert_eq!(rs.newly_delivered, 5 * MSS);
        assert_eq!(b.in_flight(), 5 * MSS);
        // Newest delivered: segment 4, sent at 4 ms, first of its flight at 0 ms; delivered
        // since the flight began: 5 segments over max(4 ms, 100 ms).
        assert_eq!(rs.delivered, 5 * MSS as u64);
        assert_eq!(rs.interval, Duration::from_millis(100));
        assert_eq!(rs.rtt, Some(Duration::from_millis(96)));
        assert_eq!(rs.rate(), Some(50_000));
    }

    #[test]
    fn the_recent_rtt_is_the_mean_of_the_last_windows_samples() {
        // Segment k was sent at k ms.
        let mut b = board(10);
        let ms = |n| Some(Duration::from_millis(n));
        assert_eq!(b.recent_rtt(), None);
        // Min RTT 100 ms: windows of 50 ms.
        b.on_ack(seq(MSS), &[], at(100));
        b.on_ack(seq(2 * MSS), &[], at(130));
        assert_eq!(b.recent_rtt(), Some(Duration::from_micros(114_500)), "(100 + 129) / 2");
        // The next window: the last one's samples still count.
        b.on_ack(seq(3 * MSS), &[], at(160));
        assert_eq!(b.recent_rtt(), ms(129), "(100 + 129 + 158) / 3");
        // A window later the first one's are gone.
        b.on_ack(seq(4 * MSS), &[], at(215));
        assert_eq!(b.recent_rtt(), ms(185), "(158 + 212) / 2");
        // After a gap of two windows only what came since counts.
        b.on_ack(seq(5 * MSS), &[], at(406));
        assert_eq!(b.recent_rtt(), ms(402));
    }

    #[test]
    fn sack_marks_only_whole_segments_within_what_was_sent() {
        let mut b = board(10);
        // Segment 3 is missing; 4..8 arrived. Also a forged block beyond snd_nxt and a
        // D-SACK below the cumulative ACK.
        let rs = b.on_ack(
            seq(3 * MSS),
            &[block(4 * MSS, 8 * MSS), block(20 * MSS, 30 * MSS), block(0, MSS)],
            at(100),
        );
        b.check();
        assert_eq!(rs.newly_delivered, 3 * MSS + 4 * MSS);
        assert_eq!(b.sacked, 4 * MSS);
        // Repeating the block delivers nothing new.
        let rs = b.on_ack(seq(3 * MSS), &[block(4 * MSS, 8 * MSS)], at(101));
        assert_eq!(rs.newly_delivered, 0);
        // A block covering half a segment does not mark it.
        let rs = b.on_ack(seq(3 * MSS), &[block(8 * MSS, 8 * MSS + 500)], at(102));
        assert_eq!(rs.newly_delivered, 0);
        b.check();
    }

    #[test]
    fn rack_marks_a_hole_lost_after_the_reordering_window() {
        let mut b = board(10);
        // Segments 0..3 delivered at 100 ms (min RTT 97 ms), then 4..9 SACKed around a lost 3.
        b.on_ack(seq(3 * MSS), &[], at(100));
        let rs = b.on_ack(seq(3 * MSS), &[block(4 * MSS, 10 * MSS)], at(106));
        // Segment 3 was sent at 3 ms; the newest delivered (9, sent at 9 ms) took 97 ms.
        // Lost at 3 + 97 + 97/4 = 124.25 ms: not yet.
        assert_eq!(rs.newly_lost, 0);
        assert_eq!(b.reo_deadline(), Some(at(3) + Duration::from_micros(97_000 + 24_250)));
        assert_eq!(b.peek_retransmit(), None);
        assert_eq!(b.detect_lost(at(125)), MSS);
        assert_eq!(b.peek_retransmit(), Some((seq(3 * MSS), MSS)));
        assert_eq!(b.in_flight(), 0);
        b.check();
    }

    #[test]
    fn a_lost_retransmission_is_found_by_time() {
        let mut b = board(10);
        b.on_ack(seq(3 * MSS), &[block(4 * MSS, 10 * MSS)], at(100));
        assert_eq!(b.detect_lost(at(200)), MSS);
        let (s, _) = b.peek_retransmit().unwrap();
        b.on_retransmitted(s, at(200));
        assert_eq!(b.in_flight(), MSS);
        assert_eq!(b.sent(), 10 * MSS as u64, "a retransmission is not sent again");
        // New data sent after the retransmission is delivered; the retransmission is not.
        b.on_sent(seq(10 * MSS), MSS, at(201));
        let rs = b.on_ack(seq(3 * MSS), &[block(4 * MSS, 11 * MSS)], at(298));
        assert_eq!(rs.newly_lost, 0, "within its RTT + reordering window");
        assert_eq!(b.detect_lost(at(330)), MSS, "the retransmission is lost too");
        assert_eq!(b.peek_retransmit(), Some((seq(3 * MSS), MSS)));
        b.check();
        // Its second retransmission arrives: everything is acknowledged.
        b.on_retransmitted(seq(3 * MSS), at(330));
        b.on_ack(seq(11 * MSS), &[], at(430));
        assert_eq!((b.in_flight(), b.outstanding), (0, 0));
        assert_eq!(b.stats().retransmitted_segments, 2);
        assert_eq!((b.sent(), b.delivered()), (11 * MSS as u64, 11 * MSS as u64));
        b.check();
    }

    #[test]
    fn timeout_marks_everything_not_sacked() {
        let mut b = board(6);
        b.on_ack(seq(MSS), &[block(2 * MSS, 3 * MSS)], at(50));
        b.on_rto();
        b.check();
        assert_eq!(b.in_flight(), 0);
        let mut resent = Vec::new();
        while let Some((s, _)) = b.peek_retransmit() {
            b.on_retransmitted(s, at(60));
            resent.push(s);
        }
        assert_eq!(resent, [seq(MSS), seq(3 * MSS), seq(4 * MSS), seq(5 * MSS)]);
        b.check();
    }

    #[test]
    fn partial_ack_keeps_the_tail() {
        let mut b = board(3);
        let rs = b.on_ack(seq(MSS + 400), &[], at(10));
        assert_eq!(rs.newly_delivered, MSS + 400);
        assert_eq!(b.outstanding, MSS + 600);
        b.check();
    }

    #[test]
    fn sacked_ranges_merge() {
        let mut r = SackedRanges::default();
        assert_eq!(r.insert(seq(10), seq(20)), Some((seq(10), seq(20))));
        assert_eq!(r.insert(seq(30), seq(40)), Some((seq(30), seq(40))));
        assert_eq!(r.insert(seq(12), seq(18)), None);
        assert_eq!(r.insert(seq(20), seq(30)), Some((seq(10), seq(40))));
        assert_eq!(r.0, [(seq(10), seq(40))]);
        r.trim(seq(15));
        assert_eq!(r.0, [(seq(15), seq(40))]);
        r.trim(seq(40));
        assert!(r.0.is_empty());
    }

    /// Any pattern of loss and SACK keeps the books balanced and ends with everything
    /// delivered once the receiver has it all (a small deterministic fuzz).
    #[test]
    fn random_loss_and_sack_stay_consistent() {
        let mut rng = 0x2545F4914F6CDD1Du64;
        let mut next = || {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            rng
        };
        for round in 0..50 {
            let mut b = Scoreboard::new();
            let mut received = alloc::collections::BTreeSet::new();
            let mut t = 0i64;
            let total = 200;
            let mut sent = 0;
            let mut una = 0;
            while una < total {
                t += 1;
                // Send new data or a retransmission.
                if let Some((s, _)) = b.peek_retransmit() {
                    b.on_retransmitted(s, at(t));
                    if next() % 10 != 0 {
                        received.insert((s - seq(0)) / MSS);
                    }
                } else if sent < total {
                    b.on_sent(seq(sent * MSS), MSS, at(t));
                    if next() % 10 != 0 {
                        received.insert(sent);
                    }
                    sent += 1;
                } else if b.in_flight() == 0 || next() % 50 == 0 {
                    b.on_rto();
                }
                // The receiver's ACK: cumulative plus up to three blocks above it.
                while received.contains(&una) {
                    una += 1;
                }
                let above: Vec<usize> = received.iter().copied().filter(|&k| k > una).collect();
                let mut blocks = [None; 3];
                let mut k = 0;
                let mut runs = Vec::new();
                for &s in &above {
                    match runs.last_mut() {
                        Some((_, e)) if *e == s => *e = s + 1,
                        _ => runs.push((s, s + 1)),
                    }
                }
                for &(s, e) in runs.iter().rev().take(3) {
                    blocks[k] = block(s * MSS, e * MSS);
                    k += 1;
                }
                b.on_ack(seq(una * MSS), &blocks, at(t + 50));
                b.detect_lost(at(t + 50));
                b.check();
                assert!(t < 100_000, "round {round}: no progress");
            }
            assert_eq!(b.outstanding, 0);
        }
    }
}

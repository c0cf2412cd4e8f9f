//! A BBR-style congestion controller (LMAS patch): model-based, after BBR v1 (Cardwell et
//! al., "BBR: Congestion-Based Congestion Control", ACM Queue 2016, and
//! draft-cardwell-iccrg-bbr-congestion-control-00), with BBR v2's gentler ProbeRTT.
//!
//! It paces at its estimate of the bottleneck bandwidth (the maximum delivery rate over
//! the last ten round trips) and bounds the data in flight at twice the estimated
//! bandwidth-delay product. Random loss, which a long WAN path has and which makes a
//! loss-based sender collapse, does not shrink its window: the scoreboard resends the
//! holes and the rate stays at what the path delivers.
//!
//! Needs the scoreboard's delivery-rate samples (`Controller::on_rate_sample`), so it only
//! runs with loss recovery `Rack`.

use super::Controller;
use crate::socket::tcp::RttEstimator;
use crate::socket::tcp::scoreboard::RateSample;
use crate::time::{Duration, Instant};

/// 2/ln(2): the smallest gain that doubles the delivery rate every round in Startup.
const HIGH_GAIN: f64 = 2.885;
const CWND_GAIN: f64 = 2.0;
/// ProbeBW's gain cycle: probe above the estimate, drain the queue it made, cruise.
const PACING_GAINS: [f64; 8] = [1.25, 0.75, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0];
/// Pace slightly below the estimate so that no standing queue builds.
const PACING_MARGIN: f64 = 0.99;
/// Rounds over which the bandwidth estimate is the maximum sample.
const BW_WINDOW_ROUNDS: u64 = 10;
/// The minimum RTT estimate expires after this long without a sample as low.
const MIN_RTT_WINDOW: Duration = Duration::from_secs(10);
const PROBE_RTT_DURATION: Duration = Duration::from_millis(200);
/// Startup ends when the bandwidth grew less than 25 % over this many rounds.
const FULL_BW_ROUNDS: u32 = 3;
const FULL_BW_GROWTH: f64 = 1.25;
/// BBR v2's other way out of Startup: a round that lost more than 2 % of what it sent, in
/// at least 8 segments. Startup sends at almost three times the path's rate; against a
/// short tail-drop queue that loses whole runs, and each run is a hole the receiver has to
/// track. Random loss of the order of 1 % does not trip it.
const STARTUP_LOSS_RATE: f64 = 0.02;
const STARTUP_LOSS_SEGMENTS: usize = 8;
const INITIAL_CWND_SEGMENTS: usize = 10;
/// The most one send burst may hold (Linux's TSO-sized quantum).
const MAX_QUANTUM: usize = 64 * 1024;
/// ACK aggregation: the extra delivered beyond the model's rate, kept per window of this
/// many rounds (two windows), and capped at this much time at the estimated rate.
const EXTRA_ACKED_WIN_ROUNDS: u64 = 5;
const EXTRA_ACKED_MAX: Duration = Duration::from_millis(100);
const MIN_CWND_SEGMENTS: usize = 4;
const DEFAULT_MSS: usize = 536;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum Mode {
    Startup,
    Drain,
    ProbeBw,
    ProbeRtt,
}

#[derive(Debug)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct Bbr {
    mode: Mode,
    mss: usize,
    rwnd: usize,
    cwnd: usize,
    /// The last `BW_WINDOW_ROUNDS` per-round maxima of the delivery rate: (round, bytes/s).
    bw_samples: [(u64, u64); BW_WINDOW_ROUNDS as usize],
    btl_bw: u64,
    min_rtt: Option<Duration>,
    min_rtt_at: Instant,
    round: u64,
    next_round_delivered: u64,
    round_start: bool,
    full_bw: u64,
    full_bw_rounds: u32,
    filled_pipe: bool,
    cycle: usize,
    cycle_start: Instant,
    pacing_gain: f64,
    cwnd_gain: f64,
    probe_rtt_done: Option<Instant>,
    probe_rtt_round_done: bool,
    /// Bytes delivered and lost in the current round.
    round_delivered: usize,
    round_lost: usize,
    /// The smoothed RTT before any sample of our own (from the socket's estimator).
    srtt_hint: Option<Duration>,
    /// The window before a retransmission timeout, restored once data is delivered again.
    prior_cwnd: usize,
    /// ACK aggregation (as Linux BBR's `extra_acked`): on a path or a host whose ACKs come
    /// in bursts (a shared CPU, an emulated link, a receiver that acks per poll), the
    /// window must also cover what arrives between bursts, or a path with a small minimum
    /// RTT is held far below its rate.
    extra_acked: [usize; 2],
    extra_acked_idx: usize,
    extra_acked_rounds: u64,
    ack_epoch_at: Instant,
    ack_epoch_acked: usize,
    /// The pacing rate, bytes per second, recomputed when its inputs change (the socket
    /// asks for it several times per poll).
    pacing_rate: u64,
}

impl Bbr {
    pub fn new() -> Bbr {
        let mut bbr = Bbr {
            mode: Mode::Startup,
            mss: DEFAULT_MSS,
            rwnd: usize::MAX,
            cwnd: INITIAL_CWND_SEGMENTS * DEFAULT_MSS,
            bw_samples: [(0, 0); BW_WINDOW_ROUNDS as usize],
            btl_bw: 0,
            min_rtt: None,
            min_rtt_at: Instant::from_micros(0),
            round: 0,
            next_round_delivered: 0,
            round_start: false,
            full_bw: 0,
            full_bw_rounds: 0,
            filled_pipe: false,
            cycle: 0,
            cycle_start: Instant::from_micros(0),
            pacing_gain: HIGH_GAIN,
            cwnd_gain: HIGH_GAIN,
            probe_rtt_done: None,
            probe_rtt_round_done: false,
            round_delivered: 0,
            round_lost: 0,
            srtt_hint: None,
            prior_cwnd: 0,
            extra_acked: [0; 2],
            extra_acked_idx: 0,
            extra_acked_rounds: 0,
            ack_epoch_at: Instant::from_micros(0),
            ack_epoch_acked: 0,
            pacing_rate: 0,
        };
        bbr.update_pacing_rate();
        bbr
    }

    pub fn mode(&self) -> Mode {
        self.mode
    }

    /// The bottleneck bandwidth estimate, bytes per second.
    pub fn bandwidth(&self) -> u64 {
        self.btl_bw
    }

    /// The estimated bandwidth-delay product times `gain`, bytes.
    fn bdp(&self, gain: f64) -> Option<usize> {
        let rtt = self.min_rtt?;
        if self.btl_bw == 0 {
            return None;
        }
        let bdp = self.btl_bw as f64 * rtt.total_micros() as f64 / 1e6;
        Some((bdp * gain) as usize)
    }

    fn update_pacing_rate(&mut self) {
        let bw = if self.btl_bw > 0 {
            self.btl_bw
        } else {
            // No sample yet: the initial window per RTT (or per millisecond before any RTT).
            let rtt = self
                .min_rtt
                .or(self.srtt_hint)
                .unwrap_or(Duration::from_millis(1))
                .total_micros()
                .max(1);
            (INITIAL_CWND_SEGMENTS * self.mss) as u64 * 1_000_000 / rtt
        };
        self.pacing_rate = ((bw as f64) * self.pacing_gain * PACING_MARGIN).max(1.0) as u64;
    }

    fn min_cwnd(&self) -> usize {
        MIN_CWND_SEGMENTS * self.mss
    }

    fn update_bw(&mut self, rs: &RateSample) {
        self.round_start = false;
        if rs.newly_delivered > 0 && rs.prior_delivered >= self.next_round_delivered {
            self.next_round_delivered = rs.total_delivered;
            self.round += 1;
            self.round_start = true;
        }
        let Some(rate) = rs.rate() else { return };
        // An app-limited sample only counts when it shows more than we knew.
        if rs.app_limited && rate < self.btl_bw {
            return;
        }
        let slot = (self.round % BW_WINDOW_ROUNDS) as usize;
        if self.bw_samples[slot].0 != self.round {
            self.bw_samples[slot] = (self.round, 0);
        }
        self.bw_samples[slot].1 = self.bw_samples[slot].1.max(rate);
        let oldest = self.round.saturating_sub(BW_WINDOW_ROUNDS - 1);
        self.btl_bw = self
            .bw_samples
            .iter()
            .filter(|(r, _)| *r >= oldest && *r <= self.round)
            .map(|(_, b)| *b)
            .max()
            .unwrap_or(0);
    }

    fn check_full_pipe(&mut self, rs: &RateSample) {
        self.round_delivered += rs.newly_delivered;
        self.round_lost += rs.newly_lost;
        // Heavy loss ends Startup at once, not at the end of the round: every segment sent
        // meanwhile at Startup's rate would be lost too.
        let (delivered, lost) = (self.round_delivered, self.round_lost);
        if !self.filled_pipe
            && lost >= STARTUP_LOSS_SEGMENTS * self.mss
            && lost as f64 > STARTUP_LOSS_RATE * (delivered + lost) as f64
        {
            self.filled_pipe = true;
        }
        if !self.round_start {
            return;
        }
        self.round_delivered = 0;
        self.round_lost = 0;
        if self.filled_pipe || rs.app_limited {
            return;
        }
        if self.btl_bw as f64 >= self.full_bw as f64 * FULL_BW_GROWTH {
            self.full_bw = self.btl_bw;
            self.full_bw_rounds = 0;
            return;
        }
        self.full_bw_rounds += 1;
        if self.full_bw_rounds >= FULL_BW_ROUNDS {
            self.filled_pipe = true;
        }
    }

    fn enter_probe_bw(&mut self, now: Instant) {
        self.mode = Mode::ProbeBw;
        self.cwnd_gain = CWND_GAIN;
        // Start anywhere but the draining phase, so that flows started together spread.
        self.cycle = 2 + (now.total_micros() as usize / 1000) % (PACING_GAINS.len() - 2);
        self.cycle_start = now;
        self.pacing_gain = PACING_GAINS[self.cycle];
    }

    fn update_cycle(&mut self, now: Instant, in_flight: usize, rs: &RateSample) {
        if self.mode != Mode::ProbeBw {
            return;
        }
        let rtt = self.min_rtt.unwrap_or(Duration::from_millis(1));
        let elapsed = now - self.cycle_start > rtt;
        let gain = self.pacing_gain;
        let next = if gain > 1.0 {
            // Probing: until the extra data is in flight, or loss says the pipe is full.
            elapsed
                && (rs.newly_lost > 0 || self.bdp(gain).is_none_or(|t| in_flight >= t))
        } else if gain < 1.0 {
            // Draining: until the queue is gone.
            elapsed || self.bdp(1.0).is_some_and(|b| in_flight <= b)
        } else {
            elapsed
        };
        if next {
            self.cycle = (self.cycle + 1) % PACING_GAINS.len();
            self.cycle_start = now;
            self.pacing_gain = PACING_GAINS[self.cycle];
        }
    }

    fn update_min_rtt(&mut self, now: Instant, rs: &RateSample, in_flight: usize) {
        let expired = now - self.min_rtt_at > MIN_RTT_WINDOW && self.min_rtt.is_some();
        if let Some(rtt) = rs.rtt
            && (expired || self.min_rtt.is_none_or(|m| rtt <= m))
        {
            self.min_rtt = Some(rtt);
            self.min_rtt_at = now;
        }
        if expired && self.mode != Mode::ProbeRtt {
            // BBR v2's ProbeRTT: halve what is in flight for a moment so that the queue
            // drains and the path's real RTT shows, instead of dropping to 4 segments.
            self.mode = Mode::ProbeRtt;
            self.pacing_gain = 1.0;
            self.probe_rtt_done = None;
            self.probe_rtt_round_done = false;
        }
        if self.mode == Mode::ProbeRtt {
            let target = self.probe_rtt_cwnd();
            if self.probe_rtt_done.is_none() && in_flight <= target {
                self.probe_rtt_done = Some(now + PROBE_RTT_DURATION);
                self.probe_rtt_round_done = false;
                self.next_round_delivered = rs.total_delivered;
            } else if let Some(done) = self.probe_rtt_done {
                if self.round_start {
                    self.probe_rtt_round_done = true;
                }
                if self.probe_rtt_round_done && now >= done {
                    self.min_rtt_at = now;
                    if self.filled_pipe {
                        self.enter_probe_bw(now);
                    } else {
                        self.mode = Mode::Startup;
                        self.pacing_gain = HIGH_GAIN;
                        self.cwnd_gain = HIGH_GAIN;
                    }
                }
            }
        }
    }

    fn probe_rtt_cwnd(&self) -> usize {
        self.bdp(0.5).unwrap_or(0).max(self.min_cwnd())
    }

    /// One send burst at the current pacing rate: a millisecond's worth, at least two
    /// segments, at most 64 KiB.
    fn quantum(&self) -> usize {
        let rate = self.pacing_rate().unwrap_or(0);
        ((rate / 1000) as usize).clamp(2 * self.mss, MAX_QUANTUM.max(2 * self.mss))
    }

    fn update_ack_aggregation(&mut self, now: Instant, rs: &RateSample) {
        if rs.newly_delivered == 0 || self.btl_bw == 0 {
            return;
        }
        if self.round_start {
            self.extra_acked_rounds += 1;
            if self.extra_acked_rounds >= EXTRA_ACKED_WIN_ROUNDS {
                self.extra_acked_rounds = 0;
                self.extra_acked_idx ^= 1;
                self.extra_acked[self.extra_acked_idx] = 0;
            }
        }
        let epoch_us = (now.total_micros() - self.ack_epoch_at.total_micros()).max(0) as u64;
        let mut expected = (self.btl_bw.saturating_mul(epoch_us) / 1_000_000) as usize;
        if self.ack_epoch_acked <= expected || self.ack_epoch_acked > (1 << 30) {
            self.ack_epoch_acked = 0;
            self.ack_epoch_at = now;
            expected = 0;
        }
        self.ack_epoch_acked += rs.newly_delivered;
        let extra = (self.ack_epoch_acked - expected.min(self.ack_epoch_acked)).min(self.cwnd);
        let slot = &mut self.extra_acked[self.extra_acked_idx];
        *slot = (*slot).max(extra);
    }

    /// The window the ACK aggregation needs on top of the BDP.
    fn aggregation_cwnd(&self) -> usize {
        if !self.filled_pipe {
            return 0;
        }
        let cap = (self.btl_bw as f64 * EXTRA_ACKED_MAX.total_micros() as f64 / 1e6) as usize;
        self.extra_acked[0].max(self.extra_acked[1]).min(cap)
    }

    fn update_cwnd(&mut self, rs: &RateSample) {
        if self.prior_cwnd > 0 && rs.newly_delivered > 0 {
            self.cwnd = self.cwnd.max(self.prior_cwnd);
            self.prior_cwnd = 0;
        }
        let target = self
            .bdp(self.cwnd_gain)
            .map(|t| t + 3 * self.quantum() + self.aggregation_cwnd())
            .unwrap_or(INITIAL_CWND_SEGMENTS * self.mss);
        let acked = rs.newly_delivered;
        self.cwnd = if self.filled_pipe {
            (self.cwnd + acked).min(target)
        } else if self.cwnd < target || rs.total_delivered < (INITIAL_CWND_SEGMENTS * self.mss) as u64 {
            self.cwnd + acked
        } else {
            self.cwnd
        };
        self.cwnd = self.cwnd.max(self.min_cwnd());
        if self.mode == Mode::ProbeRtt {
            self.cwnd = self.cwnd.min(self.probe_rtt_cwnd());
        }
    }
}

impl Default for Bbr {
    fn default() -> Self {
        Self::new()
    }
}

impl Controller for Bbr {
    fn window(&self) -> usize {
        self.cwnd.min(self.rwnd)
    }

    fn set_remote_window(&mut self, remote_window: usize) {
        // Flow control is the socket's business; remember it so that the window we report
        // is what can actually be sent.
        self.rwnd = remote_window.max(self.mss);
    }

    fn set_mss(&mut self, mss: usize) {
        if self.round == 0 && self.cwnd == INITIAL_CWND_SEGMENTS * self.mss {
            self.cwnd = INITIAL_CWND_SEGMENTS * mss;
        }
        self.mss = mss;
        self.update_pacing_rate();
    }

    fn on_ack(&mut self, _now: Instant, _len: usize, _in_flight: usize, rtt: &RttEstimator) {
        if rtt.have_measurement && self.btl_bw == 0 {
            self.srtt_hint = Some(Duration::from_millis(rtt.srtt as u64));
            self.update_pacing_rate();
        }
    }

    fn on_rate_sample(&mut self, now: Instant, rs: &RateSample, in_flight: usize) {
        self.update_bw(rs);
        self.check_full_pipe(rs);
        match self.mode {
            Mode::Startup if self.filled_pipe => {
                self.mode = Mode::Drain;
                self.pacing_gain = 1.0 / HIGH_GAIN;
                self.cwnd_gain = HIGH_GAIN;
            }
            Mode::Drain if self.bdp(1.0).is_some_and(|b| in_flight <= b) => {
                self.enter_probe_bw(now);
            }
            _ => {}
        }
        self.update_ack_aggregation(now, rs);
        self.update_cycle(now, in_flight, rs);
        self.update_min_rtt(now, rs, in_flight);
        self.update_pacing_rate();
        self.update_cwnd(rs);
    }

    fn on_rto(&mut self, _now: Instant, _in_flight: usize) {
        // Everything in flight is presumed lost and goes again from a small window; once
        // the path delivers again the window is what it was (as Linux BBR restores its
        // cwnd after recovery): on a WAN a timeout is far more often a run of random loss
        // than congestion, and the pacing rate still follows the bandwidth model.
        self.prior_cwnd = self.prior_cwnd.max(self.cwnd);
        self.cwnd = self.min_cwnd();
    }

    fn pacing_rate(&self) -> Option<u64> {
        Some(self.pacing_rate)
    }
}

#[cfg(test)]
mod test {
    use super::*;

    fn sample(delivered: u64, interval_ms: u64, prior: u64, total: u64, rtt_ms: u64) -> RateSample {
        RateSample {
            delivered,
            interval: Duration::from_millis(interval_ms),
            prior_delivered: prior,
            total_delivered: total,
            app_limited: false,
            rtt: Some(Duration::from_millis(rtt_ms)),
            newly_delivered: delivered as usize,
            newly_lost: 0,
        }
    }

    /// Rounds of a path that delivers `rate` bytes/s with a 100 ms RTT.
    fn drive(bbr: &mut Bbr, rounds: u64, rate: u64, t0: i64) -> i64 {
        let mut total = bbr.next_round_delivered;
        let mut t = t0;
        for _ in 0..rounds {
            let prior = total;
            total += rate / 10;
            t += 100;
            let rs = sample(rate / 10, 100, prior, total, 100);
            bbr.on_rate_sample(Instant::from_millis(t), &rs, (rate / 10) as usize);
        }
        t
    }

    #[test]
    fn startup_finds_the_bandwidth_and_settles_in_probe_bw() {
        let mut bbr = Bbr::new();
        bbr.set_mss(1000);
        let t = drive(&mut bbr, 12, 12_500_000, 0);
        assert_eq!(bbr.mode(), Mode::ProbeBw, "pipe full after 3 flat rounds, drained");
        assert_eq!(bbr.bandwidth(), 12_500_000);
        // cwnd: twice the BDP (1.25 MB), three send quanta (at most 64 KiB each), and the
        // ACK aggregation these once-a-round samples show (at most 100 ms at the rate).
        let w = bbr.window();
        assert!((2_500_000..=2_500_000 + 3 * 65536 + 1_250_000).contains(&w), "{w}");
        let rate = bbr.pacing_rate().unwrap();
        assert!((9_000_000..=16_000_000).contains(&rate), "paced near the estimate: {rate}");
        // Loss does not shrink the window.
        let mut rs = sample(1_250_000, 100, 0, 0, 100);
        rs.newly_lost = 50_000;
        rs.prior_delivered = bbr.next_round_delivered;
        rs.total_delivered = rs.prior_delivered + 1_250_000;
        bbr.on_rate_sample(Instant::from_millis(t + 100), &rs, 1_250_000);
        assert!(bbr.window() >= w);
    }

    #[test]
    fn the_estimate_follows_a_slower_path_within_the_window() {
        let mut bbr = Bbr::new();
        bbr.set_mss(1000);
        let t = drive(&mut bbr, 12, 12_500_000, 0);
        drive(&mut bbr, 11, 5_000_000, t);
        assert_eq!(bbr.bandwidth(), 5_000_000);
    }

    #[test]
    fn probe_rtt_halves_the_window_then_returns() {
        let mut bbr = Bbr::new();
        bbr.set_mss(1000);
        let t = drive(&mut bbr, 12, 12_500_000, 0);
        // Eleven seconds of samples above the minimum RTT.
        let mut total = bbr.next_round_delivered;
        let mut now = t;
        for _ in 0..110 {
            let prior = total;
            total += 1_250_000;
            now += 100;
            let rs = sample(1_250_000, 100, prior, total, 150);
            bbr.on_rate_sample(Instant::from_millis(now), &rs, 600_000);
            if bbr.mode() == Mode::ProbeRtt {
                break;
            }
        }
        assert_eq!(bbr.mode(), Mode::ProbeRtt);
        // Half the BDP at the RTT the expired filter took (150 ms).
        assert_eq!(bbr.window(), 937_500);
        for _ in 0..5 {
            let prior = total;
            total += 600_000;
            now += 100;
            let rs = sample(600_000, 100, prior, total, 100);
            bbr.on_rate_sample(Instant::from_millis(now), &rs, 600_000);
        }
        assert_eq!(bbr.mode(), Mode::ProbeBw);
    }
}

//! Pacing the tunnel as a whole at the WAN's bottleneck rate (BBR's model,
//! applied to the sum of the data flows).
//!
//! Each data flow runs its own congestion control, and eight BBR flows on one
//! path overestimate it together: on the lab's 100 ms, 1 Gbit/s link with a
//! one-BDP queue they held 3-6 BDPs in flight, doubled the RTT and sent 7-18 %
//! of their bytes twice (`scripts/bench-wan.sh`, docs/BENCHMARKS.md). The
//! tunnel sees what no single flow does: how fast the path delivers all of
//! them together. Paced at that rate, the flows carry the tunnel's data as it
//! comes and build no queue of their own.
//!
//! - **Delivered bytes** come from the flows' transports (the kernel's
//!   `tcpi_delivered`, the DPDK stack's scoreboard): segments that reached
//!   the peer, selectively acked ones included. The peer gateway's own acks
//!   would not do: it acks what it handed on in order, so a segment lost on
//!   one flow holds back everything behind it on the others and then releases
//!   it at once, which reads as a burst of speed (measured: estimates 10-15 %
//!   above the link).
//! - **Bottleneck rate**: the max of per-round rates (a round lasts one min
//!   RTT) over the last 10 rounds with data waiting. A round in which the
//!   flows found nothing to send (the sources were slower than the WAN) may
//!   raise the estimate, never lower it, and ages nothing.
//! - **A round's rate** is what it delivered over the round, or over the time
//!   those bytes took to send if that was longer (BBR's rate sample, for the
//!   tunnel: the flows' sent counts, read at each report, say when the
//!   tunnel's byte at a delivered count went out). A driver that reads its
//!   acks late and unevenly (the DPDK engine on a busy core takes them in
//!   bursts) delivers a round's worth in less than a round; the sending
//!   side keeps the sample to the path's rate (measured: estimates of
//!   1002-1857 Mbit/s on the lab's 1 Gbit/s link without it).
//! - **Min RTT**: the lowest round trip the flows saw in the last 10 s
//!   (BBR's window), from their smoothed RTT at each report. Not the
//!   transport's own minimum alone: the kernel keeps that for five minutes,
//!   so after the path grew longer (a reroute; the lab's link reset to
//!   200 ms) the pacer would go on timing rounds and the BDP by the old one
//!   (measured: 100 ms held 15 s after the link went to 200 ms).
//! - **Startup**: unpaced (the flows' own congestion control finds the
//!   rate) until three rounds with data waiting bring no 25 % growth, or
//!   until a round's round trip shows its own queue at the bottleneck.
//! - **Drain**: then paced at a third of the estimate until the flows hold
//!   no more than one BDP (they report what they hold).
//! - **Probing**: then paced at the estimate × 9/8 for one round (to find
//!   more room), × 3/4 until what that queued is gone (at most two rounds),
//!   then cruising at × 1 until the next probe, 2.4 s (and at least eight
//!   rounds) after this one: BBRv3's cadence, not BBRv1's eight rounds. A
//!   probe every eight rounds (0.8 s at 100 ms) met nearly every slow start
//!   of other traffic on the path and ended it early (Linux CUBIC's HyStart
//!   leaves slow start once the RTT rises an eighth of its minimum, 4-16 ms),
//!   and so did BBR's × 5/4 (25 ms of queue for a round at 100 ms). The
//!   estimate's window spans a whole cycle, so that it does not sag between
//!   probes.
//! - **Cruising holds one BDP**: while the flows have more than 9/8 of a
//!   BDP on the wire the tunnel is paced at 7/8 of the estimate. Alone on
//!   the path that only trims what an estimate a little above the path
//!   would queue; beside other traffic, whose queue stretches the round
//!   trip, it is what gives way (BBR's in-flight cap): a CUBIC neighbour got
//!   twice what it got without it (docs/BENCHMARKS.md, "Sparse probing and
//!   an in-flight cap").
//! - **Cruising drains its own queue**: the estimate is a max of rounds and
//!   may sit a little above the path, so that at × 1 the tunnel's own queue
//!   grows a millisecond or so a round. While the flows' round trip stands
//!   more than a 32nd of the min RTT (and twice its usual change from round to
//!   round) above its floor of the last cycle (the lowest a round saw: what
//!   this host and our bytes on the wire add), the tunnel cruises at 15/16.
//! - **Giving way to another sender's queue**: while cruising, when the round
//!   trip stands above its floor by more than a sixteenth of the min RTT,
//!   4 ms, and twice its usual change, for two rounds running (or by half
//!   that, growing two rounds running, where the round trip is steady: a
//!   slow start doubles what it queues each round), someone else is queueing
//!   at the bottleneck. The pacer then gives way below what the round
//!   delivered by what drains the queue in a round and makes room for its
//!   last round's growth (four times that where the queue at least doubled
//!   in the round: a slow start doubles twice more before the cut shows; a
//!   sixteenth at least, half at most, never below a
//!   quarter of the estimate), again each time the cut had two rounds to show
//!   and the queue still grew. No probe while it gives way (it would only
//!   queue ahead of the other sender), and those rounds age no sample of the
//!   estimate (they measure our share, not the path). Once the round trip is
//!   back within a 32nd of the min RTT of its floor it takes back a 64th of
//!   the estimate a round, more far below it and below where the queue began:
//!   a sender held by its window (a hypervisor's stock buffers) loses to any
//!   standing queue what that adds to its round trip. A queue met again on
//!   the way back is a neighbour that stays: the take-back then stops a
//!   sixteenth below where that queue began for a probing cycle (2.4 s)
//!   before it looks for more room, as a probe would (it looked every six
//!   rounds or so, a few ms of queue each time). A take-back step that meets a
//!   queue (one that stands, or grows no faster than the step explains) is
//!   undone at once: below it by what built the queue, held there for a
//!   cycle. Waiting for a neighbour's threshold instead, such a look stood
//!   4-14 ms for three rounds and more. The usual change is
//!   what keeps the DPDK pair on a busy host from giving way to itself: its
//!   own rings add 1-15 ms from one round to the next at its full rate.

use std::collections::VecDeque;

use super::windowed_min::WindowedMin;
use super::Instant;

/// How long a min RTT sample counts before a higher one replaces it.
const MIN_RTT_WINDOW_US: u64 = 10_000_000;
/// Rounds beyond one probing cycle the bottleneck estimate remembers a
/// sample for.
const BW_EXTRA_ROUNDS: u64 = 2;
/// Reports of the flows' sent count kept to time a round's deliveries by
/// (the driver reports once a round; a delivered byte went out about one
/// round trip, plus the queue, before it was acked).
const SEND_HISTORY: usize = 64;
/// Startup ends after this many backlogged rounds without growth...
const FULL_ROUNDS: u32 = 3;
/// ...or once the round trip stood this many sixteenths of the min RTT (and 5 ms) above it
/// in two rounds running, backlogged or not, and the estimate (not zero) did not grow a
/// quarter between them. A migration's rounds in startup are mostly
/// app-limited (one flow or another finds nothing for a moment), so growth alone let
/// startup run unpaced for seconds with a full BDP queued at the bottleneck; a guest that
/// stopped then paused 1-1.1 s instead of ~0.4 (docs/BENCHMARKS.md, "Startup's queue").
const STARTUP_QUEUE_SIXTEENTHS: u64 = 4;
const STARTUP_QUEUE_MIN_US: u64 = 5_000;
/// ...of at least this much (×4: 1.25).
const GROWTH_QUARTERS: u64 = 5;
/// Pacing gains, in sixteenths of the estimate: probing for more room (one
/// round), draining what that queued, cruising, and cruising while the flows
/// have more than [`CRUISE_HOLD_EIGHTHS`] of a BDP on the wire. The probe is
/// 9/8, not BBR's 5/4: a quarter more for a round queued 25 ms on the lab's
/// 100 ms path, and a neighbour whose slow start met it left it at once
/// (HyStart: 12.5 ms), then took seconds to reach its rate.
const PROBE_SIXTEENTHS: u64 = 18;
const DRAIN_SIXTEENTHS: u64 = 12;
const CRUISE_SIXTEENTHS: u64 = 16;
const CRUISE_OVER_SIXTEENTHS: u64 = 14;
/// Cruising while a queue stands (the round trip more than a 32nd of the min RTT above its
/// floor): the estimate is a max of rounds and may sit a little above the path, so that at
/// the full estimate the tunnel's own queue grows by a millisecond or two a round (lab,
/// 100 ms path); it is drained before it grows into what a neighbour's slow start ends on.
const CRUISE_STANDING_SIXTEENTHS: u64 = 15;
const CRUISE_HOLD_EIGHTHS: u64 = 9;
/// The draining phase lasts until the flows hold no more than one BDP, at
/// most this many rounds.
const MAX_PHASE_DRAIN_ROUNDS: u64 = 2;
/// A probe comes this long after the one before (BBRv3 waits 2-3 s)...
const PROBE_INTERVAL_US: u64 = 2_400_000;
/// ...and at least this many rounds (a long path's cycle).
const MIN_CYCLE_ROUNDS: u64 = 8;
/// After startup: paced at a third of the estimate until the queue startup
/// built is gone (BBR's 1/2.89), for at most this many rounds (a flow's
/// figures could be off; the cycle's own draining takes over then).
const MAX_DRAIN_ROUNDS: u64 = 16;
/// A round (and a probing phase) lasts one min RTT, but at least this long:
/// on a LAN the flows' reports and the token bucket's burst are coarser.
const MIN_PHASE_US: u64 = 10_000;
/// A rise of the flows' round trip above its floor of the last cycle, in sixteenths of the
/// min RTT, that shows another sender's queue at the bottleneck (a neighbour's slow start)
/// while cruising. The floor, not the min RTT: it holds what this host and our own bytes on
/// the wire add, so only a rise counts.
const YIELD_QUEUE_SIXTEENTHS: u64 = 1;
/// A cut for a queue that at least doubled in its last round (a slow start's) makes room for
/// this many times that round's growth: the growth of the round under way and of the one
/// before the cut shows (lab trace beside iperf3: room for one round's growth let its queue
/// go 7 → 20 → 33 ms before the next cut, and the neighbour lost 8-15 % of its second second).
/// With it, iperf3 beside the pair kept 0.991 of its rate alone over 16 runs (blocks of four:
/// 0.987-0.992) against 0.987 (0.984-0.988) (docs/BENCHMARKS.md, session 53).
const SLOW_START_GROWTH_AHEAD: u64 = 4;
/// Once another sender's queue is gone, the pacer takes back at least this part of the
/// estimate a round (more far below it, or below where the queue began)...
const YIELD_TAKE_BACK_PARTS: u64 = 64;
/// ...but only while the round trip is within this part of the min RTT of its floor (and of
/// twice its usual change, and [`YIELD_MIN_CLEAR_US`]): a sender held by its window (a
/// hypervisor's stock buffers) loses to any standing queue what it adds to the round trip.
const YIELD_CLEAR_PARTS: u64 = 32;
const YIELD_MIN_CLEAR_US: u64 = YIELD_MIN_RISE_US / 2;
/// Where a cut's queue began, less this part of the pace, is the edge the take-back slows at;
/// where a queue came back, less the held part, the edge it stops at for a probing cycle.
const YIELD_EDGE_PARTS: u64 = 32;
const YIELD_EDGE_HELD_PARTS: u64 = 16;
/// A rise counts only beyond this many times the round trip's usual change from one round to
/// the next: on a busy host the DPDK stack's own rings add 0-15 ms from round to round at its
/// full rate (lab, 100 ms path), which a fixed sixteenth of the min RTT reads as a neighbour.
const YIELD_SPREADS: u64 = 2;
/// Nor does a rise under this count, whatever the path: a CUBIC sender's HyStart ends its slow
/// start only on a rise of 4 ms or more, so a smaller queue is nothing to give way to, and on
/// a LAN path (a min RTT under a millisecond) a host's own scheduling moves the round trip
/// by more than a sixteenth of it (the conformance suite's capped transfer gave way to that).
const YIELD_MIN_RISE_US: u64 = 4_000;

/// What the flows' round trip says about the bottleneck's queue, each round.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum QueueSeen {
    /// Another sender's: risen beyond what this host and our own bytes add, two rounds
    /// running (or half as much, and growing, where the round trip is steady). How far above
    /// the floor, and how much it grew in the last round (where the round trip is not steady:
    /// an eighth of a round, and nothing).
    Others { queue_us: u64, growth_us: u64 },
    /// Some queue, but not that: how far above the floor.
    Standing { queue_us: u64 },
    /// Next to none: within a 32nd of the min RTT (and the round trip's usual change) of
    /// its floor.
    Clear,
}

/// How the pacer gives way to another sender's queue: set by each cut, moved by each
/// take-back, gone once the take-back reaches the estimate.
#[derive(Debug, Clone, Copy)]
struct GivingWay {
    /// The rate the tunnel is paced at, at most.
    rate: u64,
    /// Just below the pace at which the last cut's queue began: taken back to quickly, and
    /// on from there slowly.
    edge: u64,
    /// A queue came back where the last one began: a neighbour that stays. Until then the
    /// take-back stops at the edge.
    hold_until: Option<Instant>,
    /// The rate before the last round's take-back step: where a queue that stands after it
    /// goes back to.
    stepped_from: Option<u64>,
}

/// Where a probing cycle is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Above the estimate for one round, to find more room.
    Up,
    /// Below it until what the probe queued is gone.
    Down,
    /// At it until the next probe.
    Cruise,
}

/// Where the pacer is in its cycle.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PaceMode {
    /// Unpaced, learning the rate.
    Startup,
    /// Paced below the rate until the queue startup left is gone.
    Drain,
    /// Paced at the estimate, probing for more once per cycle.
    Probing,
}

/// What the pacer knows, for status output.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PaceSnapshot {
    pub mode: PaceMode,
    /// The bottleneck estimate, bytes per second (0: no sample yet).
    pub bottleneck: u64,
    pub min_rtt_us: Option<u64>,
    /// The rate frames are paced at now; `None` while unpaced.
    pub rate: Option<u64>,
    /// Cruising below the estimate: another sender's queue stands at the bottleneck, and the
    /// tunnel gives way to it.
    pub giving_way: bool,
}

/// What a data flow's transport says it delivered, for [`TunnelPacer`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FlowProgress {
    /// Bytes the peer received on this connection so far (selectively acked
    /// ones included); starts again from zero on a new connection.
    pub delivered: u64,
    /// The lowest round trip the connection has seen (however long ago).
    pub min_rtt_us: Option<u64>,
    /// Its round trip now, queueing included: the kernel's smoothed RTT; the
    /// DPDK stack's mean sample of the last half to whole min RTT (its busy
    /// core reads ACKs up to a loop's turn late, and its smoothed RTT takes
    /// one sample a round trip).
    pub srtt_us: Option<u64>,
    /// Bytes it holds that the peer has not received: on the wire (not
    /// selectively acked, not known lost) and not yet sent.
    pub outstanding: u64,
    /// Bytes it has sent so far, each counted once (a retransmission is not
    /// counted again); 0 from a transport that cannot tell. Starts again from
    /// zero on a new connection, like `delivered`.
    pub sent: u64,
    /// Bytes it sent again so far (0 from a transport that cannot tell; the
    /// lane sends nothing again): the path's losses, for the lane's choice
    /// (`session::lane_choice`). Starts again from zero on a new connection.
    pub retransmitted: u64,
}

#[derive(Debug, Clone)]
pub struct TunnelPacer {
    mode: PaceMode,
    phase: Phase,
    phase_start: Instant,
    /// When the probing cycle under way began (its probe).
    cycle_start: Instant,
    /// The rate of each recent round as (round, bytes per second).
    samples: VecDeque<(u64, u64)>,
    /// Rounds completed with data waiting throughout (idle ones age nothing).
    round: u64,
    /// The round under way: since when, the delivered count then, and
    /// whether a flow found nothing to send during it.
    round_start: Option<Instant>,
    round_delivered: u64,
    round_app_limited: bool,
    /// Per flow: its last report.
    flows: Vec<FlowProgress>,
    delivered: u64,
    /// Bytes the flows sent, each once, and when the count stood where, at
    /// the last reports (oldest first).
    sent: u64,
    sends: VecDeque<(Instant, u64)>,
    /// Bytes sent on connections since gone and never delivered: the
    /// delivered count plus these is the position in the sent count that
    /// the tunnel's deliveries have reached.
    gone: u64,
    round_position: u64,
    /// The lowest round trip in the window, and when it was seen.
    min_rtt: Option<(u64, Instant)>,
    /// Startup: the estimate when it last grew 25 %, and rounds since.
    full_bw: u64,
    rounds_without_growth: u32,
    /// Startup: the estimate in the last round whose round trip showed a queue.
    startup_queue_bw: Option<u64>,
    /// While another sender queues: how the pacer gives way to it.
    yielding: Option<GivingWay>,
    last_cut: Option<(Instant, u64)>,
    /// The round trip of the last two rounds while cruising (newest first).
    last_srtts: (Option<u64>, Option<u64>),
    /// What the last round's round trip said about the queue.
    queue: QueueSeen,
    /// The lowest of the flows' smoothed round trips over the last cycle.
    srtt_floor: WindowedMin,
    /// Whether the last round's round trip was above the floor too (a rise counts in the
    /// second round in a row: one round's is as likely this host's own jitter).
    rose: bool,
    /// How much the round trip moves from one round at the full rate to the next (a mean of
    /// the last few changes), and the last such round's: a rise must stand out of it.
    rtt_spread: u64,
    last_cruise_srtt: Option<u64>,
}

impl TunnelPacer {
    pub fn new(flows: usize) -> Self {
        TunnelPacer {
            mode: PaceMode::Startup,
            phase: Phase::Up,
            phase_start: 0,
            cycle_start: 0,
            samples: VecDeque::new(),
            round: 0,
            round_start: None,
            round_delivered: 0,
            round_app_limited: false,
            flows: vec![FlowProgress::default(); flows],
            delivered: 0,
            sent: 0,
            sends: VecDeque::new(),
            gone: 0,
            round_position: 0,
            min_rtt: None,
            full_bw: 0,
            rounds_without_growth: 0,
            startup_queue_bw: None,
            yielding: None,
            last_cut: None,
            queue: QueueSeen::Clear,
            last_srtts: (None, None),
            srtt_floor: WindowedMin::default(),
            rose: false,
            rtt_spread: 0,
            last_cruise_srtt: None,
        }
    }

    /// Whether a round is due to end: the driver then reads every flow's
    /// progress at once ([`TunnelPacer::on_progress`]). One flow's report
    /// alone would not do: a flow reports when it can write, and one stalled
    /// for a while would bring a second's deliveries into a 100 ms round.
    pub fn progress_due(&self, now: Instant) -> bool {
        self.round_start
            .is_none_or(|start| now.saturating_sub(start) >= self.round_len())
    }

    /// Every flow's transport reports its progress, read at `now`.
    pub fn on_progress(
        &mut self,
        now: Instant,
        flows: impl IntoIterator<Item = (usize, FlowProgress)>,
    ) {
        for (flow, progress) in flows {
            let Some(last) = self.flows.get_mut(flow) else {
                continue;
            };
            // A smaller count (a new connection the driver did not report)
            // adds nothing; the next grows from it.
            if progress.delivered < last.delivered || progress.sent < last.sent {
                self.gone += last.sent.saturating_sub(last.delivered);
            }
            self.delivered += progress.delivered.saturating_sub(last.delivered);
            self.sent += progress.sent.saturating_sub(last.sent);
            *last = progress;
        }
        if self.sends.len() == SEND_HISTORY {
            self.sends.pop_front();
        }
        self.sends.push_back((now, self.sent));
        self.sample_min_rtt(now);
        let Some(start) = self.round_start else {
            // The first report starts the first round: what it counts came before.
            self.round_start = Some(now);
            self.round_delivered = self.delivered;
            self.round_position = self.position();
            return;
        };
        if now.saturating_sub(start) >= self.round_len() {
            self.end_round(now, start);
        }
    }

    /// A flow asked for data and there was none (not held back by a cap or
    /// the pacer): the sources, not the WAN, set this round's pace.
    pub fn on_idle(&mut self) {
        self.round_app_limited = true;
    }

    /// The flow's connection is gone; the next one counts from zero.
    pub fn on_flow_lost(&mut self, flow: usize) {
        if let Some(f) = self.flows.get_mut(flow) {
            self.gone += f.sent.saturating_sub(f.delivered);
            *f = FlowProgress::default();
        }
    }

    /// How far into the sent count the tunnel's deliveries have reached.
    fn position(&self) -> u64 {
        self.delivered + self.gone
    }

    /// When the flows' sent count reached `count`, between the two reports
    /// around it (`None`: not within the reports kept).
    fn sent_at(&self, count: u64) -> Option<Instant> {
        let i = self.sends.partition_point(|&(_, sent)| sent < count);
        let &(t1, s1) = self.sends.get(i)?;
        if i == 0 {
            return (s1 == count).then_some(t1);
        }
        let (t0, s0) = self.sends[i - 1];
        let part = (count - s0) as u128 * t1.saturating_sub(t0) as u128 / (s1 - s0) as u128;
        Some(t0 + part as u64)
    }

    /// How long the bytes from position `from` to `to` took to send (0: not known).
    fn send_elapsed(&self, from: u64, to: u64) -> u64 {
        match (self.sent_at(from), self.sent_at(to)) {
            (Some(a), Some(b)) => b.saturating_sub(a),
            _ => 0,
        }
    }

    fn round_len(&self) -> u64 {
        self.min_rtt().unwrap_or(0).max(MIN_PHASE_US)
    }

    fn min_rtt(&self) -> Option<u64> {
        self.min_rtt.map(|(rtt, _)| rtt)
    }

    /// Takes the flows' round trips now: a lower one at once, a higher one
    /// when the one held is older than the window. A flow that gives no
    /// smoothed RTT counts with its own minimum.
    fn sample_min_rtt(&mut self, now: Instant) {
        let Some(sample) = self
            .flows
            .iter()
            .filter_map(|f| f.srtt_us.or(f.min_rtt_us))
            .min()
        else {
            return;
        };
        take_into_min(&mut self.min_rtt, sample, now, MIN_RTT_WINDOW_US);
    }

    /// In the probing cycle's cruise: paced at the estimate, not probing or draining.
    fn cruising(&self) -> bool {
        self.mode == PaceMode::Probing && self.phase == Phase::Cruise
    }

    fn end_round(&mut self, now: Instant, start: Instant) {
        let sending = self.send_elapsed(self.round_position, self.position());
        let interval = now.saturating_sub(start).max(sending).max(1);
        let rate = ((self.delivered - self.round_delivered) as u128 * 1_000_000 / interval as u128)
            .min(u64::MAX as u128) as u64;
        let app_limited = self.round_app_limited;
        self.round_start = Some(now);
        self.round_delivered = self.delivered;
        self.round_position = self.position();
        self.round_app_limited = false;
        if self.mode == PaceMode::Startup {
            self.check_startup_queue(now);
        }
        if app_limited && rate < self.bottleneck() {
            return;
        }
        // Rounds held back by the yield, like idle ones, may raise the estimate but age
        // nothing: they measure our share, not the path.
        if !app_limited && !self.giving_way() {
            self.round += 1;
        }
        match self.samples.back_mut() {
            Some((r, best)) if *r == self.round => *best = (*best).max(rate),
            _ => self.samples.push_back((self.round, rate)),
        }
        // Old rounds go, but the newest stays whatever its age.
        while self.samples.len() > 1
            && self
                .samples
                .front()
                .is_some_and(|&(r, _)| r + self.bw_rounds() <= self.round)
        {
            self.samples.pop_front();
        }
        if !app_limited && self.mode == PaceMode::Startup {
            self.check_full_pipe(now);
        }
        if app_limited {
            return;
        }
        let queue = self.queue_seen(now);
        self.queue = queue;
        // The pacer's view, a line a round (RUST_LOG=lmas::session::pacer=debug): what
        // tuning it on a new path takes.
        log::debug!(
            "round: delivered {} Mbit/s, estimate {} Mbit/s, srtt {:?} µs (floor {:?}, usual change {}), {:?} {:?}, giving way to {:?} Mbit/s",
            rate / 125_000,
            self.bottleneck() / 125_000,
            self.srtt(),
            self.srtt_floor.get(),
            self.rtt_spread,
            self.phase,
            queue,
            self.yield_rate().map(|y| y / 125_000),
        );
        match queue {
            QueueSeen::Others {
                queue_us,
                growth_us,
            } if !self.step_explains(growth_us) => self.cut(now, rate, queue_us, growth_us),
            // What the last take-back step added, no one else's: undone.
            QueueSeen::Others { queue_us, .. } => self.step_back(now, queue_us),
            // Our own bytes, or what is left of the other's: hold, or undo a step that met it.
            QueueSeen::Standing { queue_us } => self.step_back(now, queue_us),
            QueueSeen::Clear => self.take_back(now),
        }
    }

    /// Gives way to another sender's queue: below what the round delivered by as much of the
    /// estimate as drains the queue in a round and makes room for its last round's growth
    /// (a sixteenth of it at least, half at most; never below a quarter of the estimate).
    fn cut(&mut self, now: Instant, rate: u64, queue_us: u64, growth_us: u64) {
        // A cut shows in the round trip a round or two later: cut again only once the last
        // one had time to show and the queue still grew.
        let srtt = self.srtt().unwrap_or(0);
        let cut_due = self.last_cut.is_none_or(|(at, at_srtt)| {
            now.saturating_sub(at) >= 2 * self.round_len() && srtt >= at_srtt
        });
        if !cut_due {
            return;
        }
        let bw = self.bottleneck();
        // A round that delivered far less than the pace (a source that paused) is no measure
        // of what the tunnel takes.
        let pace = self.pace_base();
        let rate = rate.max(pace / 4 * 3);
        // A slow start doubles what it sends each round, and a cut shows at the bottleneck only
        // a round or so after the round trip showed the queue: by then the slow start has
        // doubled twice. A queue that at least doubled in the last round gets room for that.
        let ahead = if growth_us.saturating_mul(2) >= queue_us {
            growth_us.saturating_mul(SLOW_START_GROWTH_AHEAD)
        } else {
            growth_us
        };
        let room = (queue_us.saturating_add(ahead) as u128 * bw as u128 / self.round_len() as u128)
            .min(u64::MAX as u128) as u64;
        let give = rate - room.clamp(rate / 16, rate / 2);
        // Where the queue began: back to just below it quickly, and on from there slowly. A
        // queue met again on the way back (a take-back since the last cut) is a neighbour
        // that stays: then a little further below, and nothing above it for a probing cycle
        // (each look for more room costs a sender held by its window what the look queues: a
        // few ms every few rounds was 3-4 % of its rate).
        let (edge, hold_until) = if self.yielding.is_some() && self.last_cut.is_none() {
            (
                pace - pace / YIELD_EDGE_HELD_PARTS,
                Some(now.saturating_add(self.cycle_len())),
            )
        } else {
            (pace - pace / YIELD_EDGE_PARTS, None)
        };
        self.yielding = Some(GivingWay {
            rate: pace.min(give).max(bw / 4),
            edge,
            hold_until,
            stepped_from: None,
        });
        self.last_cut = Some((now, srtt));
    }

    /// The queue is gone: take back a little each round. A neighbour that stays meets a queue
    /// that grows by a few ms a round, not a step.
    fn take_back(&mut self, now: Instant) {
        let Some(way) = self.yielding else {
            return;
        };
        self.last_cut = None;
        let y = way.rate;
        let held = way.hold_until.is_some_and(|until| now < until);
        if held && y >= way.edge {
            self.yielding = Some(GivingWay {
                stepped_from: None,
                ..way
            });
            return;
        }
        let bw = self.bottleneck();
        // Quickly far below the estimate or the edge, slowly near them.
        let step = (bw / YIELD_TAKE_BACK_PARTS)
            .max(way.edge.saturating_sub(y) / 2)
            .max(bw.saturating_sub(y) / 16);
        let mut back = y.saturating_add(step);
        if held {
            back = back.min(way.edge);
        }
        self.yielding = (back < bw).then_some(GivingWay {
            rate: back,
            stepped_from: Some(y),
            ..way
        });
    }

    /// Giving way, and the last round took a step back towards the estimate: how, and the
    /// rate it stepped from.
    fn last_step(&self) -> Option<(GivingWay, u64)> {
        let way = self.yielding?;
        Some((way, way.stepped_from?))
    }

    /// Whether the last round's take-back step explains a queue that grew by `growth_us`: the
    /// step put at most its own size more on the path than the round before, so the queue
    /// grows by no more than that part of a round (twice it, for the round trip's jitter). A
    /// neighbour's slow start met right after a step grows by more, and is cut for.
    fn step_explains(&self, growth_us: u64) -> bool {
        let Some((way, from)) = self.last_step() else {
            return false;
        };
        let step = way.rate.saturating_sub(from) as u128;
        let explained = 2 * step * self.round_len() as u128 / self.bottleneck().max(1) as u128;
        growth_us as u128 <= explained
    }

    /// A queue of `queue_us` stands again right after a take-back step: the step found the
    /// others' edge. The pace that queued it was above the room by about what builds that
    /// queue in a round: the edge is that much below it (and a 32nd more, as a cut's is),
    /// held for a probing cycle as below a neighbour that stays, and the pace as much below
    /// the edge again until the queue is gone (half the pace at most, all told). Left
    /// standing until it grew past a neighbour's threshold, such a look cost the neighbour
    /// 5-14 ms of round trip for three rounds and more (lab trace, beside iperf3); only
    /// undone, it left a queue that stood and became the floor.
    fn step_back(&mut self, now: Instant, queue_us: u64) {
        let Some((way, _)) = self.last_step() else {
            return;
        };
        let over = (queue_us as u128 * self.bottleneck() as u128 / self.round_len() as u128)
            .min(way.rate as u128 / 4) as u64;
        let edge = way.rate - over - way.rate / YIELD_EDGE_PARTS;
        self.yielding = Some(GivingWay {
            rate: edge - over,
            edge,
            hold_until: Some(now.saturating_add(self.cycle_len())),
            stepped_from: None,
        });
    }

    /// What the flows' round trip says of the bottleneck's queue this round (while cruising;
    /// in a probe's phases only that none is clear). Takes the round trip into the floor, and
    /// its change since the last round into the spread.
    fn queue_seen(&mut self, now: Instant) -> QueueSeen {
        let Some(srtt) = self.srtt() else {
            return QueueSeen::Clear;
        };
        let cycle = self.cycle_len();
        self.srtt_floor.take(srtt, now, cycle);
        let (Some(min_rtt), Some(floor)) = (self.min_rtt(), self.srtt_floor.get()) else {
            return QueueSeen::Clear;
        };
        let cruising = self.cruising();
        let rise = min_rtt * YIELD_QUEUE_SIXTEENTHS / 16;
        let threshold = rise
            .max(self.rtt_spread * YIELD_SPREADS)
            .max(YIELD_MIN_RISE_US);
        let rose = cruising && srtt > floor + threshold;
        if cruising && self.yielding.is_none() {
            // Only rounds at the full rate: a yielded round's is lower by what our own
            // bytes add, which is no spread of the path's.
            if let Some(last) = self.last_cruise_srtt {
                self.rtt_spread = (self.rtt_spread * 3 + srtt.abs_diff(last)) / 4;
            }
            self.last_cruise_srtt = Some(srtt);
        } else {
            self.last_cruise_srtt = None;
        }
        let clear = (min_rtt / YIELD_CLEAR_PARTS)
            .max(self.rtt_spread * YIELD_SPREADS)
            .max(YIELD_MIN_CLEAR_US);
        // A neighbour's slow start doubles what it queues each round: answered only once it
        // stands a whole threshold up for two rounds, it has grown into what ends that slow
        // start (HyStart: an eighth of the min RTT). Half the threshold, growing two rounds
        // running, is already it.
        let (last, before) = self.last_srtts;
        self.last_srtts = if cruising {
            (Some(srtt), last)
        } else {
            (None, None)
        };
        let growing = matches!((last, before), (Some(l), Some(b)) if b < l && l < srtt);
        // Only where the round trip is steady and our bytes fill what the pace puts on the
        // path (7/8 of the pace × the min RTT at least): the DPDK pair, busy on its own core,
        // holds less, and on its rings' jitter three rounds in a row rise by chance every few
        // seconds.
        let pace = self.pace_base();
        let paced_bdp = (pace as u128 * min_rtt as u128 / 1_000_000) as u64;
        let steady =
            self.rtt_spread * YIELD_SPREADS <= rise && self.in_flight() >= paced_bdp / 8 * 7;
        let early = cruising && steady && growing && srtt > floor + threshold / 2;
        if (std::mem::replace(&mut self.rose, rose) && rose) || early {
            // Where the round trip is not steady its rise is no measure of the queue: an
            // eighth of a round, as the usual change may be all of it.
            QueueSeen::Others {
                queue_us: if steady {
                    srtt - floor
                } else {
                    self.round_len() / 8
                },
                growth_us: match last {
                    Some(l) if steady => srtt.saturating_sub(l),
                    _ => 0,
                },
            }
        } else if cruising && srtt <= floor + clear {
            QueueSeen::Clear
        } else {
            QueueSeen::Standing {
                queue_us: srtt.saturating_sub(floor),
            }
        }
    }

    /// The rate to pace at now (`None`: unpaced); moves the probing cycle on.
    pub fn rate(&mut self, now: Instant) -> Option<u64> {
        let elapsed = now.saturating_sub(self.phase_start);
        let drained = |max_rounds: u64| {
            self.outstanding() <= self.bdp() || elapsed >= max_rounds * self.round_len()
        };
        match self.mode {
            PaceMode::Startup => return None,
            PaceMode::Drain if drained(MAX_DRAIN_ROUNDS) => {
                self.mode = PaceMode::Probing;
                self.phase = Phase::Cruise;
                self.phase_start = now;
                self.cycle_start = now;
            }
            PaceMode::Drain => return Some((self.bottleneck() / 3).max(1)),
            PaceMode::Probing => {
                let next = match self.phase {
                    _ if elapsed < self.round_len() => None,
                    Phase::Up => Some(Phase::Down),
                    Phase::Down if drained(MAX_PHASE_DRAIN_ROUNDS) => Some(Phase::Cruise),
                    Phase::Down => None,
                    // No probe while giving way: it would only queue ahead of the other.
                    Phase::Cruise => (now.saturating_sub(self.cycle_start) >= self.cycle_len()
                        && self.yielding.is_none())
                    .then_some(Phase::Up),
                };
                if let Some(phase) = next {
                    self.phase = phase;
                    self.phase_start = now;
                    if phase == Phase::Up {
                        self.cycle_start = now;
                    }
                }
            }
        }
        Some(self.cycle_rate())
    }

    /// How long a probing cycle lasts, probe to probe.
    fn cycle_len(&self) -> u64 {
        PROBE_INTERVAL_US.max(MIN_CYCLE_ROUNDS * self.round_len())
    }

    /// Rounds the estimate remembers a sample for: a whole cycle and then
    /// some, so that between two probes it holds what the last one found.
    fn bw_rounds(&self) -> u64 {
        self.cycle_len().div_ceil(self.round_len()) + BW_EXTRA_ROUNDS
    }

    pub fn snapshot(&self) -> PaceSnapshot {
        PaceSnapshot {
            mode: self.mode,
            bottleneck: self.bottleneck(),
            min_rtt_us: self.min_rtt(),
            rate: match self.mode {
                PaceMode::Startup => None,
                PaceMode::Drain => Some(self.bottleneck() / 3),
                PaceMode::Probing => Some(self.cycle_rate()),
            },
            giving_way: self.giving_way(),
        }
    }

    fn cycle_rate(&self) -> u64 {
        let sixteenths = match self.phase {
            Phase::Up => PROBE_SIXTEENTHS,
            Phase::Down => DRAIN_SIXTEENTHS,
            Phase::Cruise if self.in_flight() > self.bdp() / 8 * CRUISE_HOLD_EIGHTHS => {
                CRUISE_OVER_SIXTEENTHS
            }
            // A queue our own bytes may have built: more than a BDP is on the wire (the DPDK
            // pair's rings move its round trip with less).
            Phase::Cruise
                if matches!(self.queue, QueueSeen::Standing { .. })
                    && self.in_flight() > self.bdp() =>
            {
                CRUISE_STANDING_SIXTEENTHS
            }
            Phase::Cruise => CRUISE_SIXTEENTHS,
        };
        (self.pace_base().saturating_mul(sixteenths) / 16).max(1)
    }

    /// Paced below the estimate for another sender's queue (a yield is set only while
    /// cruising, so only in the probing cycle).
    fn giving_way(&self) -> bool {
        self.yield_rate().is_some_and(|y| y < self.bottleneck())
    }

    /// The rate the pacer gives way to, while another sender queues.
    fn yield_rate(&self) -> Option<u64> {
        self.yielding.map(|w| w.rate)
    }

    /// What the gains apply to: the estimate, or the rate the pacer gives way to.
    fn pace_base(&self) -> u64 {
        let bw = self.bottleneck();
        self.yield_rate().map_or(bw, |y| y.min(bw))
    }

    /// The flows' round trip now: the lowest any reports (queueing included).
    fn srtt(&self) -> Option<u64> {
        self.flows.iter().filter_map(|f| f.srtt_us).min()
    }

    /// What the flows hold that the peer has not received, at the last report.
    fn outstanding(&self) -> u64 {
        self.flows.iter().map(|f| f.outstanding).sum()
    }

    /// What of that is on the wire: sent, not yet delivered. What a flow
    /// holds unsent queues at no router (a flow's own congestion control may
    /// be slower than its share of the tunnel's pace for a while).
    fn in_flight(&self) -> u64 {
        self.flows
            .iter()
            .map(|f| f.sent.saturating_sub(f.delivered))
            .sum()
    }

    /// The bottleneck rate × the min RTT: what the path holds without a queue.
    fn bdp(&self) -> u64 {
        let rtt = self.min_rtt().unwrap_or(0);
        (self.bottleneck() as u128 * rtt as u128 / 1_000_000).min(u64::MAX as u128) as u64
    }

    /// The bottleneck estimate, bytes per second (0: no sample yet).
    pub fn bottleneck(&self) -> u64 {
        self.samples.iter().map(|&(_, r)| r).max().unwrap_or(0)
    }

    /// Startup's own queue at the bottleneck ends it, as a rate that stopped growing does:
    /// a queue in two rounds running, with no growth between them. Not with no estimate (a
    /// carrier's round trip may read high before anything was delivered: the pacer would
    /// then pace at nothing).
    fn check_startup_queue(&mut self, now: Instant) {
        let (Some(srtt), Some(min)) = (self.srtt(), self.min_rtt()) else {
            return;
        };
        let bw = self.bottleneck();
        let margin = (min * STARTUP_QUEUE_SIXTEENTHS / 16).max(STARTUP_QUEUE_MIN_US);
        if bw == 0 || srtt < min + margin {
            self.startup_queue_bw = None;
            return;
        }
        match self.startup_queue_bw {
            Some(before) if !grew(bw, before) => {
                self.mode = PaceMode::Drain;
                self.phase_start = now;
            }
            _ => self.startup_queue_bw = Some(bw),
        }
    }

    fn check_full_pipe(&mut self, now: Instant) {
        let bw = self.bottleneck();
        if grew(bw, self.full_bw) {
            self.full_bw = bw;
            self.rounds_without_growth = 0;
            return;
        }
        self.rounds_without_growth += 1;
        if self.rounds_without_growth >= FULL_ROUNDS {
            // Startup left a queue behind.
            self.mode = PaceMode::Drain;
            self.phase_start = now;
        }
    }
}

/// Whether the estimate `bw` is a quarter or more above `before` (startup's growth).
fn grew(bw: u64, before: u64) -> bool {
    bw.saturating_mul(4) >= before.saturating_mul(GROWTH_QUARTERS)
}

/// A windowed minimum (`held`: the value and when it was taken): `sample` replaces it when
/// it is no higher, or when the one held is `window_us` old.
fn take_into_min(held: &mut Option<(u64, Instant)>, sample: u64, now: Instant, window_us: u64) {
    let replaces = |(v, at): (u64, Instant)| sample <= v || now.saturating_sub(at) >= window_us;
    if held.is_none_or(replaces) {
        *held = Some((sample, now));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: u64 = 1000;
    const RTT: u64 = 100 * MS;

    /// `n` rounds in which `flows` flows together deliver `rate` bytes per
    /// second, each reporting every 10 ms; returns the time after them.
    fn run(
        p: &mut TunnelPacer,
        from: Instant,
        n: u64,
        flows: usize,
        rate: u64,
        idle: bool,
    ) -> Instant {
        let mut t = from;
        let per_report = rate / 100 / flows as u64;
        for _ in 0..n * RTT / (10 * MS) {
            t += 10 * MS;
            let now: Vec<_> = (0..flows)
                .map(|f| {
                    let delivered = p.flows[f].delivered + per_report;
                    (
                        f,
                        FlowProgress {
                            delivered,
                            min_rtt_us: Some(RTT),
                            srtt_us: None,
                            outstanding: 0,
                            sent: delivered,
                            retransmitted: 0,
                        },
                    )
                })
                .collect();
            p.on_progress(t, now);
            if idle {
                p.on_idle();
            }
        }
        t
    }

    fn near(value: u64, want: u64) -> bool {
        value.abs_diff(want) * 50 <= want // within 2 %
    }

    #[test]
    fn startup_is_unpaced_until_the_rate_stops_growing() {
        let mut p = TunnelPacer::new(8);
        let mut t = 0;
        for rate in [10_000_000, 20_000_000, 40_000_000, 80_000_000] {
            t = run(&mut p, t, 1, 8, rate, false);
            assert_eq!(p.rate(t), None, "still growing: unpaced");
        }
        t = run(&mut p, t, 4, 8, 100_000_000, false);
        assert_eq!(p.snapshot().mode, PaceMode::Drain);
        assert!(
            near(p.snapshot().bottleneck, 100_000_000),
            "{:?}",
            p.snapshot()
        );
        assert_eq!(p.snapshot().min_rtt_us, Some(RTT));
        // The flows hold nothing: no queue to drain, on to probing.
        assert_eq!(p.rate(t), Some(p.snapshot().bottleneck));
        assert_eq!(p.snapshot().mode, PaceMode::Probing);
    }

    /// `rounds` app-limited rounds (a flow finds nothing now and then) in which the
    /// pacer's flows together deliver `rate` bytes per second at round trip `srtt`, each
    /// reporting every 10 ms.
    fn app_limited_rounds(p: &mut TunnelPacer, t: &mut Instant, rounds: u64, rate: u64, srtt: u64) {
        let flows = p.flows.len();
        for _ in 0..rounds * RTT / (10 * MS) {
            *t += 10 * MS;
            let now: Vec<_> = (0..flows)
                .map(|f| {
                    let delivered = p.flows[f].delivered + rate / 100 / flows as u64;
                    let progress = FlowProgress {
                        delivered,
                        min_rtt_us: Some(RTT),
                        srtt_us: Some(srtt),
                        outstanding: 0,
                        sent: delivered,
                        retransmitted: 0,
                    };
                    (f, progress)
                })
                .collect();
            p.on_progress(*t, now);
            p.on_idle();
        }
    }

    /// The lane's first round trips may read high before it delivered anything, and a rate
    /// still growing is not a full pipe: neither ends startup (with no estimate the pacer
    /// paced the tunnel at 0 bit/s and a migration stalled).
    #[test]
    fn a_high_round_trip_with_no_estimate_or_a_growing_one_keeps_startup() {
        let mut p = TunnelPacer::new(1);
        let mut t = 0;
        app_limited_rounds(&mut p, &mut t, 1, 0, RTT);
        app_limited_rounds(&mut p, &mut t, 3, 0, 9 * RTT);
        assert_eq!(p.snapshot().mode, PaceMode::Startup, "{:?}", p.snapshot());
        for rate in [10_000_000, 20_000_000, 40_000_000] {
            app_limited_rounds(&mut p, &mut t, 1, rate, 2 * RTT);
        }
        assert_eq!(p.snapshot().mode, PaceMode::Startup, "{:?}", p.snapshot());
        assert_eq!(p.rate(t), None);
    }

    /// A migration's startup: each round one flow or another finds nothing to send for a
    /// moment (the round counts as app-limited), yet the tunnel fills the bottleneck's
    /// queue. A round trip well above the path's ends startup all the same.
    #[test]
    fn startup_ends_on_its_own_standing_queue_even_in_app_limited_rounds() {
        let mut p = TunnelPacer::new(8);
        let mut t = 0;
        for rate in [10_000_000, 20_000_000, 40_000_000, 80_000_000] {
            app_limited_rounds(&mut p, &mut t, 1, rate, RTT);
        }
        assert_eq!(p.snapshot().mode, PaceMode::Startup);
        // The path gives 100 MB/s; what startup sends beyond it queues, a full BDP.
        app_limited_rounds(&mut p, &mut t, 1, 100_000_000, RTT + RTT / 8);
        assert_eq!(p.snapshot().mode, PaceMode::Startup, "an eighth is noise");
        app_limited_rounds(&mut p, &mut t, 1, 100_000_000, 2 * RTT);
        assert_eq!(
            p.snapshot().mode,
            PaceMode::Startup,
            "one round may be a spike"
        );
        app_limited_rounds(&mut p, &mut t, 1, 100_000_000, 2 * RTT);
        assert_ne!(p.snapshot().mode, PaceMode::Startup, "{:?}", p.snapshot());
        assert!(
            near(p.snapshot().bottleneck, 100_000_000),
            "{:?}",
            p.snapshot()
        );
    }

    #[test]
    fn probing_comes_every_2_4_s_up_for_a_round_then_down_then_cruising() {
        let mut p = TunnelPacer::new(2);
        let t = run(&mut p, 0, 6, 2, 100_000_000, false);
        p.rate(t);
        assert_eq!(p.snapshot().mode, PaceMode::Probing);
        let bw = p.snapshot().bottleneck;
        // Rounds of 100 ms: a cycle is 24 of them.
        let seen: Vec<u64> = (1..=50)
            .map(|i| p.rate(t + i * RTT).unwrap() * 16 / bw)
            .collect();
        let probes: Vec<usize> = (0..seen.len()).filter(|&i| seen[i] == 18).collect();
        assert_eq!(probes, [23, 47], "{seen:?}");
        for &i in &probes {
            assert_eq!(seen[i + 1], 12, "then down: {seen:?}");
        }
        let cruising = seen.iter().filter(|&&g| g == 16).count();
        assert_eq!(cruising, seen.len() - 4, "{seen:?}");
        // On a long path, at least eight rounds.
        let mut q = TunnelPacer::new(1);
        let rtt = |ms| FlowProgress {
            min_rtt_us: Some(ms * MS),
            ..FlowProgress::default()
        };
        q.on_progress(0, [(0, rtt(500))]);
        assert_eq!(q.cycle_len(), 4_000_000);
        q.on_progress(0, [(0, rtt(10))]);
        assert_eq!(q.cycle_len(), PROBE_INTERVAL_US);
        assert_eq!(q.bw_rounds(), 240 + BW_EXTRA_ROUNDS);
    }

    #[test]
    fn cruising_gives_way_while_the_flows_hold_more_than_a_bdp() {
        let mut p = TunnelPacer::new(1);
        let t = run(&mut p, 0, 6, 1, 100_000_000, false);
        p.rate(t);
        let bw = p.snapshot().bottleneck;
        let delivered = p.flows[0].delivered;
        let holding = |on_wire, unsent| FlowProgress {
            delivered,
            min_rtt_us: Some(RTT),
            srtt_us: None,
            outstanding: on_wire + unsent,
            sent: delivered + on_wire,
            retransmitted: 0,
        };
        // One BDP is 10 MB at 100 MB/s and 100 ms.
        p.on_progress(t, [(0, holding(11_000_000, 0))]);
        assert_eq!(p.rate(t), Some(bw), "within an eighth of a BDP: cruising");
        // A neighbour's queue stretched the round trip: more is on the wire.
        p.on_progress(t, [(0, holding(14_000_000, 0))]);
        assert_eq!(p.rate(t), Some(bw * 7 / 8));
        p.on_progress(t, [(0, holding(9_000_000, 0))]);
        assert_eq!(p.rate(t), Some(bw));
        // Bytes a flow holds unsent wait at no router.
        p.on_progress(t, [(0, holding(10_000_000, 4_000_000))]);
        assert_eq!(p.rate(t), Some(bw));
    }

    /// Reports every 10 ms that the one flow delivered at `rate` with `on_wire` bytes on the
    /// wire and a smoothed round trip of `srtt_ms`, for `rounds` rounds of 100 ms.
    fn report(
        p: &mut TunnelPacer,
        t: &mut Instant,
        rounds: u64,
        rate: u64,
        srtt_ms: u64,
        on_wire: u64,
    ) {
        for _ in 0..rounds * 10 {
            *t += 10 * MS;
            let delivered = p.flows[0].delivered + rate / 100;
            let progress = FlowProgress {
                delivered,
                min_rtt_us: Some(RTT),
                srtt_us: Some(srtt_ms * MS),
                outstanding: on_wire,
                sent: delivered + on_wire,
                retransmitted: 0,
            };
            p.on_progress(*t, [(0, progress)]);
        }
    }

    /// A one-flow pacer past startup, cruising on a 100 ms path at 100 MB/s: it, the time, and
    /// its estimate.
    fn cruising_at_100_mb_s() -> (TunnelPacer, Instant, u64) {
        let mut p = TunnelPacer::new(1);
        let t = run(&mut p, 0, 6, 1, 100_000_000, false);
        p.rate(t);
        let bw = p.snapshot().bottleneck;
        (p, t, bw)
    }

    /// [`cruising_at_100_mb_s`], then a neighbour's slow start: its queue 1, 3 and 6 ms, and
    /// the tunnel gives way.
    fn giving_way_to_a_slow_start() -> (TunnelPacer, Instant, u64) {
        let (mut p, mut t, bw) = cruising_at_100_mb_s();
        for srtt in [100, 100, 100, 101, 103, 106] {
            report(&mut p, &mut t, 1, 100_000_000, srtt, 10_000_000);
        }
        assert!(p.snapshot().giving_way, "the neighbour's queue");
        (p, t, bw)
    }

    #[test]
    fn a_round_trip_that_moves_from_round_to_round_at_the_full_rate_is_no_neighbour() {
        // The DPDK pair on a busy host: its own rings add 1-15 ms from one round to the next
        // at its full rate (lab, 100 ms path). Seen as a sixteenth of the min RTT above the
        // floor, every other round read as a neighbour's queue.
        let (mut p, mut t, _) = cruising_at_100_mb_s();
        for k in 0..60 {
            let srtt = [101, 116, 104, 113, 112, 104][k % 6];
            report(&mut p, &mut t, 1, 100_000_000, srtt, 11_000_000);
            p.rate(t);
            assert_eq!(
                p.yield_rate(),
                None,
                "round {k}: {srtt} ms, spread {}",
                p.rtt_spread
            );
        }
        // A neighbour's slow start stands out of that: two rounds 30 ms up.
        report(&mut p, &mut t, 2, 80_000_000, 135, 11_000_000);
        assert!(p.yield_rate().is_some(), "spread {}", p.rtt_spread);
    }

    #[test]
    fn a_few_milliseconds_of_host_jitter_on_a_lan_path_are_no_neighbour() {
        // Min RTT 200 µs, rounds of 10 ms; the host's scheduling holds ACKs 3 ms for a few
        // rounds now and then. That is fifteen min RTTs, but a CUBIC neighbour's slow start
        // would not even notice a queue under 4 ms.
        let mut p = TunnelPacer::new(1);
        let (mut t, mut delivered) = (0, 0);
        let mut round = |p: &mut TunnelPacer, srtt_us: u64| {
            for _ in 0..5 {
                t += 2 * MS;
                delivered += 250_000; // 1 Gbit/s
                let progress = FlowProgress {
                    delivered,
                    min_rtt_us: Some(200),
                    srtt_us: Some(srtt_us),
                    outstanding: 25_000,
                    sent: delivered + 25_000,
                    retransmitted: 0,
                };
                p.on_progress(t, [(0, progress)]);
                p.rate(t);
            }
        };
        for k in 0..400 {
            round(&mut p, if k % 50 < 45 { 200 } else { 3_200 });
            assert_eq!(p.yield_rate(), None, "round {k}");
        }
        assert_eq!(p.snapshot().mode, PaceMode::Probing);
    }

    #[test]
    fn cruising_gives_way_to_another_senders_queue_and_takes_it_back_when_it_is_gone() {
        let (mut p, mut t, bw) = cruising_at_100_mb_s();
        // Our own 9/8 of a BDP on the wire explains a round trip 1/8 longer: no one else's.
        report(&mut p, &mut t, 3, 100_000_000, 112, 11_250_000);
        assert_eq!(p.rate(t), Some(bw));
        // A neighbour: 8 ms more than our bytes explain, two rounds running, and the tunnel
        // delivers only 60 MB/s (measured at no less than 3/4 of its pace: a source may have
        // paused). It gives way by what drains 8 ms in a 100 ms round: 8 % of the estimate.
        report(&mut p, &mut t, 2, 60_000_000, 120, 10_000_000);
        let given = p.rate(t).unwrap();
        assert!(near(given, bw * 3 / 4 - bw * 8 / 100), "{given}");
        assert!(p.snapshot().giving_way, "status shows it");
        // The cut shows a round or two later: no second one before that...
        report(&mut p, &mut t, 1, given, 120, 10_000_000);
        assert_eq!(p.rate(t), Some(given));
        // ...then again while the queue stands as high, down to a quarter of the estimate.
        report(&mut p, &mut t, 1, given, 120, 10_000_000);
        let again = p.rate(t).unwrap();
        assert!(near(again, given - bw * 8 / 100), "{again}");
        for _ in 0..10 {
            let r = p.rate(t).unwrap();
            report(&mut p, &mut t, 1, r, 130, 10_000_000);
        }
        assert_eq!(p.rate(t), Some(bw / 4), "the floor");
        // No probe meanwhile, though one is due: it would only queue ahead of the other.
        p.cycle_start = t - p.cycle_len();
        assert_eq!(p.rate(t), Some(bw / 4));
        assert_eq!(p.phase, Phase::Cruise);
        // The queue is gone: it takes back quickly far below the estimate, slowly near it.
        let mut steps = vec![];
        for _ in 0..60 {
            let r = p.rate(t).unwrap();
            report(&mut p, &mut t, 1, r.min(bw), 100, 2_000_000);
            let next = p.rate(t).unwrap();
            assert!(next > r || next == bw, "{r} -> {next}");
            steps.push(next.saturating_sub(r));
            if next == bw {
                break;
            }
        }
        assert_eq!(
            p.rate(t),
            Some(bw),
            "cruising at the estimate again: {steps:?}"
        );
        assert!(steps[0] > steps[steps.len() - 2] * 2, "{steps:?}");
        assert!(!p.snapshot().giving_way);
    }

    #[test]
    fn the_take_back_holds_while_a_queue_stands_above_the_lowest_round_of_the_last_cycle() {
        // Lab trace (docs/bench/neighbour-pacer-trace-s49.txt): giving way beside iperf3, the
        // floor's round went a cycle old while the neighbour's small queue stood, and the next
        // round, 3 ms higher, became the floor; the take-back then read 3-5 ms of queue as
        // clear and met the neighbour at 8-17 ms. The floor is the lowest round of the last
        // cycle, not the newest once the old one expires.
        let (mut p, mut t, bw) = giving_way_to_a_slow_start();
        // Its queue drains (the floor's round), then stands a millisecond up, then four.
        report(&mut p, &mut t, 1, 90_000_000, 100, 9_000_000);
        report(&mut p, &mut t, 2, 90_000_000, 101, 9_000_000);
        let stepped = p.rate(t).unwrap();
        assert!(stepped < bw, "still giving way: {stepped}");
        // The 4 ms stand right after a take-back step: the step is undone.
        report(&mut p, &mut t, 1, stepped, 105, 9_000_000);
        let held = p.rate(t).unwrap();
        assert!(held < stepped, "{held} after {stepped}");
        // A cycle after the 100 ms round, while the 101 ms ones are within the last cycle.
        for round in 0..21 {
            report(&mut p, &mut t, 1, held, 105, 9_000_000);
            assert_eq!(
                p.rate(t),
                Some(held),
                "round {round}: 4 ms above 101 ms stands"
            );
        }
        // Once no lower round is left in the cycle, 105 ms is the floor: the path's now.
        for _ in 0..3 {
            report(&mut p, &mut t, 1, held, 105, 9_000_000);
        }
        assert!(p.rate(t).unwrap() > held, "taken back from the new floor");
    }

    #[test]
    fn a_take_back_step_that_meets_a_queue_is_undone_below_where_it_came_from() {
        // Lab trace beside iperf3 (s51): a take-back step met the neighbour's edge, and the
        // queue it built stood 4-5 ms for five rounds (each under the threshold that reads as
        // a neighbour, or not growing) before a cut: the window-limited neighbour lost that
        // much of its round trip all along.
        let (mut p, mut t, bw) = giving_way_to_a_slow_start();
        // Its queue drains; the tunnel takes back.
        let (mut before, mut rate) = (0, p.rate(t).unwrap());
        for _ in 0..3 {
            report(&mut p, &mut t, 1, rate, 100, 9_000_000);
            (before, rate) = (rate, p.rate(t).unwrap());
        }
        assert!(before < rate && rate < bw, "a step: {before} -> {rate}");
        // 4 ms stand right after it: above a 32nd of the min RTT, under a 16th.
        report(&mut p, &mut t, 1, rate, 104, 9_000_000);
        let back = p.rate(t).unwrap();
        assert!(
            back < before,
            "below where the step came from: {before} -> {rate} -> {back}"
        );
        // Back at the edge once the queue is gone, and held there for a cycle.
        let mut held = vec![];
        for _ in 0..20 {
            let r = p.rate(t).unwrap();
            report(&mut p, &mut t, 1, r, 100, 9_000_000);
            held.push(p.rate(t).unwrap());
        }
        assert!(held.iter().all(|&r| r < before), "{held:?}");
        assert!(held[19] > back, "{held:?}");
    }

    /// One round on a 100 MB/s link beside a neighbour held by its window (`window` bytes a
    /// round trip: a hypervisor's stock buffers): the queue (`queue`, bytes) grows by what the
    /// two send beyond the link. Returns the pace this round and the queue it left, in ms.
    fn round_beside(
        p: &mut TunnelPacer,
        t: &mut Instant,
        queue: &mut u64,
        window: u64,
    ) -> (u64, u64) {
        const LINK: u64 = 100_000_000;
        let pace = p.rate(*t).unwrap();
        let neighbour = window * 1_000_000 / (RTT + *queue * 1_000_000 / LINK);
        *queue = (*queue + (pace + neighbour) / 10).saturating_sub(LINK / 10);
        let queue_ms = *queue * 1000 / LINK;
        let delivered = if *queue > 0 {
            LINK * pace / (pace + neighbour)
        } else {
            pace
        };
        report(
            p,
            t,
            1,
            delivered,
            100 + queue_ms,
            pace / 10 * (100 + queue_ms) / 100,
        );
        (pace, queue_ms)
    }

    #[test]
    fn a_neighbour_that_stays_meets_a_queue_once_a_cycle_not_every_few_rounds() {
        // A neighbour that takes 30 % of the link and stays. Once its queue came back where
        // the last one began, the tunnel holds below that for a probing cycle (24 rounds)
        // before it looks for more room: each look costs a window-limited neighbour a few ms of
        // round trip, and one every few rounds was 3-4 % of its rate.
        let (mut p, mut t, bw) = cruising_at_100_mb_s();
        let mut queue = 0;
        let mut rounds_queued = 0;
        let mut paces = vec![];
        let mut window = 100_000;
        for round in 0..100 {
            // Its slow start, then its window's 3 MB (30 MB/s without a queue).
            window = (window * 2).min(3_000_000);
            let (pace, queue_ms) = round_beside(&mut p, &mut t, &mut queue, window);
            paces.push((pace / 1_000_000, queue_ms));
            if round >= 20 && queue_ms >= 2 {
                rounds_queued += 1;
            }
        }
        // Every six rounds it was 24 of these 80.
        assert!(
            rounds_queued <= 12,
            "{rounds_queued} rounds with a queue: {paces:?}"
        );
        assert!(p.snapshot().giving_way);
        // It goes: the tunnel takes the link back within a few cycles.
        for _ in 0..100 {
            round_beside(&mut p, &mut t, &mut queue, 0);
        }
        assert_eq!(p.rate(t), Some(bw), "{paces:?}");
    }

    #[test]
    fn a_neighbours_slow_start_is_answered_while_it_grows() {
        // Its queue doubles each round: waiting for a whole threshold (6.25 ms at 100 ms)
        // two rounds running, the tunnel answered it only once it stood past what ends a
        // CUBIC slow start (12.5 ms here).
        let (mut p, mut t, bw) = cruising_at_100_mb_s();
        report(&mut p, &mut t, 3, 100_000_000, 100, 10_000_000);
        report(&mut p, &mut t, 1, 100_000_000, 101, 10_000_000);
        report(&mut p, &mut t, 1, 100_000_000, 103, 10_000_000);
        assert_eq!(p.yield_rate(), None, "nothing to answer yet");
        report(&mut p, &mut t, 1, 100_000_000, 106, 10_000_000);
        // 6 ms up, growing two rounds running, and doubled in the last: room for the 6 ms and
        // for what the slow start adds before the cut shows (twice 3 ms, then twice that).
        let given = p.rate(t).unwrap();
        assert!(near(given, bw - bw * (6 + 4 * 3) / 100), "{given}");

        // Not while the flows hold less than a BDP on the wire (the DPDK pair, busy on its
        // own core): there the round trip moves with its rings, and rises by chance.
        let (mut p, mut t, _) = cruising_at_100_mb_s();
        for srtt in [100, 100, 100, 101, 103, 106] {
            report(&mut p, &mut t, 1, 100_000_000, srtt, 7_000_000);
        }
        assert_eq!(p.yield_rate(), None);
    }

    #[test]
    fn a_queue_that_doubled_in_a_round_gets_room_for_the_slow_starts_next_two_rounds() {
        // Lab trace beside iperf3 (100 ms, 1 Gbit/s): its slow start's queue stood 2, then
        // 7 ms up. Room for the 7 ms and that round's 5 let it grow to 20 and 33 ms before
        // the cut showed: it doubles again in the round under way and in the next.
        let (mut p, mut t, bw) = cruising_at_100_mb_s();
        for srtt in [100, 100, 100, 101, 102, 107] {
            report(&mut p, &mut t, 1, 100_000_000, srtt, 10_000_000);
        }
        let given = p.rate(t).unwrap();
        assert!(near(given, bw - bw * (7 + 4 * 5) / 100), "{given}");

        // A queue that grew by less than it stood before is no slow start's: room for it and
        // its last round's growth (here less than the sixteenth a cut gives at least).
        let (mut p, mut t, bw) = cruising_at_100_mb_s();
        for srtt in [100, 100, 101, 102, 103, 104] {
            report(&mut p, &mut t, 1, 100_000_000, srtt, 10_000_000);
        }
        let given = p.rate(t).unwrap();
        assert!(near(given, bw - bw / 16), "{given}");
    }

    #[test]
    fn cruising_drains_a_standing_queue_of_its_own() {
        // The estimate is a max of rounds and may sit a little above the path: at the full
        // estimate the tunnel's own queue grows a millisecond or so a round. Past a 32nd of
        // the min RTT above the floor, with more than a BDP of ours on the wire, it cruises
        // at 15/16 until the queue is gone.
        let (mut p, mut t, bw) = cruising_at_100_mb_s();
        report(&mut p, &mut t, 2, 100_000_000, 100, 11_000_000);
        report(&mut p, &mut t, 1, 100_000_000, 102, 11_000_000);
        assert_eq!(p.rate(t), Some(bw), "within 3.125 ms of the floor");
        report(&mut p, &mut t, 1, 100_000_000, 101, 11_000_000);
        report(&mut p, &mut t, 1, 100_000_000, 104, 11_000_000);
        assert_eq!(p.rate(t), Some(bw / 16 * 15));
        assert_eq!(p.yield_rate(), None, "no one else's");
        report(&mut p, &mut t, 1, 100_000_000, 101, 11_000_000);
        assert_eq!(p.rate(t), Some(bw));
        // With less than a BDP on the wire the queue is not ours to drain (the DPDK pair's
        // rings move its round trip).
        report(&mut p, &mut t, 1, 100_000_000, 104, 8_000_000);
        assert_eq!(p.rate(t), Some(bw));
    }

    #[test]
    fn an_idle_spell_does_not_lower_the_estimate_but_a_busy_slower_path_does_in_time() {
        let mut p = TunnelPacer::new(4);
        let mut t = run(&mut p, 0, 6, 4, 100_000_000, false);
        let bw = p.snapshot().bottleneck;
        assert!(near(bw, 100_000_000), "{bw}");
        t = run(&mut p, t, 20, 4, 10_000_000, true);
        assert_eq!(
            p.snapshot().bottleneck,
            bw,
            "rounds with nothing to send ignored"
        );
        // A neighbour took half the path; the tunnel has data waiting.
        let window = p.bw_rounds();
        t = run(&mut p, t, window - 2, 4, 50_000_000, false);
        let held = p.snapshot().bottleneck;
        assert!(
            near(held, 100_000_000),
            "the max holds for its window: {held}"
        );
        run(&mut p, t, 3, 4, 50_000_000, false);
        assert!(
            near(p.snapshot().bottleneck, 50_000_000),
            "{:?}",
            p.snapshot()
        );
    }

    #[test]
    fn what_startup_queued_is_drained_before_probing() {
        let mut p = TunnelPacer::new(1);
        let mut t = run(&mut p, 0, 6, 1, 100_000_000, false);
        assert_eq!(p.snapshot().mode, PaceMode::Drain);
        let bw = p.snapshot().bottleneck;
        // Startup left 3 BDPs in the flows (10 MB is one at 100 MB/s, 100 ms).
        let report = |delivered, outstanding| FlowProgress {
            delivered,
            min_rtt_us: Some(RTT),
            srtt_us: None,
            outstanding,
            sent: 0,
            retransmitted: 0,
        };
        let d = p.flows[0].delivered;
        p.on_progress(t, [(0, report(d, 30_000_000))]);
        for _ in 0..3 {
            t += RTT;
            assert_eq!(p.rate(t), Some(bw / 3), "still draining");
        }
        p.on_progress(t, [(0, report(d, 9_000_000))]);
        assert_eq!(p.rate(t), Some(bw), "drained: probing, at the estimate");
        // However stale the figure, the drain ends after MAX_DRAIN_ROUNDS.
        let mut q = TunnelPacer::new(1);
        let t = run(&mut q, 0, 6, 1, 100_000_000, false);
        let d = q.flows[0].delivered;
        q.on_progress(t, [(0, report(d, 30_000_000))]);
        assert_eq!(q.rate(t), Some(q.snapshot().bottleneck / 3));
        assert_eq!(
            q.rate(t + MAX_DRAIN_ROUNDS * RTT),
            Some(q.snapshot().bottleneck)
        );
    }

    #[test]
    fn the_cycles_draining_phase_ends_when_the_probe_s_queue_is_gone() {
        let mut p = TunnelPacer::new(1);
        let mut t = run(&mut p, 0, 6, 1, 100_000_000, false);
        let bw = p.snapshot().bottleneck;
        let report = |outstanding| FlowProgress {
            delivered: 0,
            min_rtt_us: Some(RTT),
            srtt_us: None,
            outstanding,
            sent: 0,
            retransmitted: 0,
        };
        p.rate(t);
        // Walk the cycle to its probing phase, then into the draining one.
        while p.rate(t) != Some(bw * 9 / 8) {
            t += RTT;
        }
        p.on_progress(t, [(0, report(11_250_000))]); // the probe queued an eighth of a BDP
        t += RTT;
        assert_eq!(p.rate(t), Some(bw * 3 / 4));
        t += RTT;
        assert_eq!(
            p.rate(t),
            Some(bw * 3 / 4),
            "not drained after one round: on"
        );
        p.on_progress(t, [(0, report(10_000_000))]);
        assert_eq!(p.rate(t), Some(bw), "drained: cruise");
        // Undrained, the phase still ends after MAX_PHASE_DRAIN_ROUNDS.
        while p.rate(t) != Some(bw * 3 / 4) {
            t += RTT;
        }
        p.on_progress(t, [(0, report(50_000_000))]);
        assert_eq!(p.rate(t + MAX_PHASE_DRAIN_ROUNDS * RTT), Some(bw));
    }

    #[test]
    fn acks_read_late_and_unevenly_do_not_inflate_the_estimate() {
        // A datapath on a busy core reads its flows' acks in bursts: at each
        // report the delivered count lags the path by 0-80 ms, unevenly, while
        // the sent count is read as it happens. The path delivers 100 MB/s.
        let rate: u64 = 100_000_000;
        let mut p = TunnelPacer::new(1);
        let (mut t, mut delivered) = (0, 0);
        for i in 0..400u64 {
            t += 10 * MS;
            let lag = (i * 7 % 11) * 8 * MS;
            let sent = rate * t / 1_000_000;
            // What was read stays read.
            delivered = u64::max(delivered, rate * t.saturating_sub(RTT + lag) / 1_000_000);
            let report = FlowProgress {
                delivered,
                min_rtt_us: Some(RTT),
                srtt_us: None,
                outstanding: sent - delivered,
                sent,
                retransmitted: 0,
            };
            p.on_progress(t, [(0, report)]);
        }
        let bw = p.snapshot().bottleneck;
        assert!(bw.abs_diff(rate) * 20 <= rate, "within 5 %: {bw}");
    }

    #[test]
    fn a_new_connection_counts_from_zero() {
        let mut p = TunnelPacer::new(2);
        let t = run(&mut p, 0, 6, 2, 100_000_000, false);
        let before = p.delivered;
        let report = |delivered| FlowProgress {
            delivered,
            min_rtt_us: None,
            srtt_us: None,
            outstanding: 0,
            sent: 0,
            retransmitted: 0,
        };
        p.on_flow_lost(1);
        p.on_progress(t + MS, [(1, report(1000))]);
        assert_eq!(p.delivered, before + 1000);
        // A replaced connection the driver did not report lost: its first
        // count adds nothing, the next ones add what they grew.
        p.on_progress(t + 2 * MS, [(0, report(500))]);
        assert_eq!(p.delivered, before + 1000);
        p.on_progress(t + 3 * MS, [(0, report(800)), (7, report(5))]);
        assert_eq!(p.delivered, before + 1300, "no flow 7: ignored");
    }

    #[test]
    fn the_round_follows_the_lowest_rtt_any_flow_reports() {
        let mut p = TunnelPacer::new(2);
        let rtt = |ms| FlowProgress {
            min_rtt_us: Some(ms * MS),
            ..FlowProgress::default()
        };
        p.on_progress(0, [(0, rtt(80)), (1, rtt(120))]);
        assert_eq!(p.snapshot().min_rtt_us, Some(80 * MS));
        assert!(!p.progress_due(79 * MS) && p.progress_due(80 * MS));
        p.on_progress(0, [(0, rtt(1))]);
        assert_eq!(p.round_len(), MIN_PHASE_US, "never shorter than the floor");
    }

    #[test]
    fn a_path_that_grew_longer_is_timed_by_its_new_round_trip_within_the_window() {
        // The transport still reports the 100 ms it saw before the path
        // changed; its smoothed RTT says 200 (plus a little queue).
        let mut p = TunnelPacer::new(2);
        let report = |min_ms, srtt_ms| FlowProgress {
            min_rtt_us: Some(min_ms * MS),
            srtt_us: Some(srtt_ms * MS),
            ..FlowProgress::default()
        };
        p.on_progress(0, [(0, report(100, 104)), (1, report(100, 101))]);
        assert_eq!(p.snapshot().min_rtt_us, Some(101 * MS));
        let mut t = 0;
        while t < MIN_RTT_WINDOW_US {
            t += 200 * MS;
            p.on_progress(t, [(0, report(100, 230)), (1, report(100, 215))]);
            if t < MIN_RTT_WINDOW_US {
                assert_eq!(
                    p.snapshot().min_rtt_us,
                    Some(101 * MS),
                    "held in the window"
                );
            }
        }
        assert_eq!(
            p.snapshot().min_rtt_us,
            Some(215 * MS),
            "the window expired"
        );
        p.on_progress(t + 200 * MS, [(0, report(100, 203)), (1, report(100, 209))]);
        assert_eq!(
            p.snapshot().min_rtt_us,
            Some(203 * MS),
            "a lower one at once"
        );
        assert_eq!(p.round_len(), 203 * MS);
    }
}

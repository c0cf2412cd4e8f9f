//! The tunnel core's side of the lane (`crate::lane`): one more carrier of
//! frames, after the data flows.
//!
//! While the lane is up and preferred (`wan.lane = "on"`, or "auto" while
//! the path loses: `session::lane_choice`) it takes every new frame, and
//! the data flows only what goes again (the lane's lost frames, a lost
//! flow's): a frame the lane loses must not be lost twice. Otherwise the
//! flows take the new frames and the lane none. What it may hold on the way
//! is two of the pacer's BDPs, at least [`LANE_INITIAL_WINDOW`]: the lane
//! has no congestion control of its own, so until the pacer measures the
//! path this is its slow start (the window doubles with each round's
//! deliveries), and after it a cap on what a wrong rate could queue.

use super::{Carried, DataFrame, Event, FlowProgress, Instant, TunnelCore};
use crate::session::lane_choice::{LaneChoice, LaneUse};
use crate::session::pacer::PaceMode;

/// What the lane may have on the way before the pacer measured the path:
/// 16 frames of 64 KiB, as a TCP flow's initial window is ten segments.
pub const LANE_INITIAL_WINDOW: u64 = 1 << 20;

#[derive(Debug, Clone)]
pub(super) struct LaneSlot {
    /// Its carrier index: the scheduler's ledger and the pacer's flow.
    pub slot: usize,
    pub up: bool,
    /// What the lane last said it delivered.
    progress: Option<FlowProgress>,
    /// Whether it takes the new frames while up.
    choice: LaneChoice,
}

impl LaneSlot {
    pub fn new(flows: usize) -> Self {
        LaneSlot {
            slot: flows,
            up: false,
            progress: None,
            choice: LaneChoice::new(flows),
        }
    }

    /// Whether the lane takes the new frames now.
    fn takes_new(&self) -> bool {
        self.up && self.choice.prefers_lane()
    }

    /// Whether carrier `flow` takes new frames now.
    pub fn carries_new(&self, flow: usize) -> bool {
        self.takes_new() == (flow == self.slot)
    }

    /// The lane's report for the pacer, while it is up.
    pub fn progress(&self) -> Option<(usize, FlowProgress)> {
        self.progress.filter(|_| self.up).map(|p| (self.slot, p))
    }

    /// A carrier's report as the pacer should take it: a carrier that takes
    /// no new frames (the flows while the lane does, the lane while the flows
    /// do) and has nothing on the wire says nothing of the round trip now (its
    /// smoothed RTT is as old as its last segment).
    pub fn carrier_seen(&self, flow: usize, mut p: FlowProgress) -> FlowProgress {
        if !self.carries_new(flow) && p.outstanding == 0 {
            p.srtt_us = None;
        }
        p
    }
}

impl TunnelCore {
    /// The lane came up (also again, with new keys: a new lane) or went down. What the
    /// old one carried and the peer has not acked goes again on the data flows (datagrams
    /// under old keys are refused); its counts start again.
    pub fn set_lane_up(&mut self, up: bool) {
        let slot = self.lane.slot;
        if self.lane.up && self.scheduler.flow_lost(slot) > 0 {
            self.counters.flows_lost += 1;
        }
        self.pacer.on_flow_lost(slot);
        self.lane.up = up;
        self.lane.progress = None;
        self.events.push_back(Event::FramesReady);
    }

    pub fn lane_up(&self) -> bool {
        self.lane.up
    }

    /// Whether the lane takes the new frames whenever it is up (`wan.lane = "on"`, the
    /// default here) or only while the data flows lose ("auto").
    pub fn set_lane_use(&mut self, lane_use: LaneUse) {
        self.lane.choice.set_use(lane_use);
    }

    /// Whether the lane takes the new frames now (up, and preferred).
    pub fn lane_carries_new(&self) -> bool {
        self.lane.takes_new()
    }

    /// The data flows' reports at `now`, for the lane's choice: while the lane is up and
    /// the pacer cruises, their losses may move the new frames to it, and its hold's end
    /// moves them back.
    pub(super) fn choose_carrier(&mut self, now: Instant, flows: &[(usize, FlowProgress)]) {
        let cruising = self.lane.up && self.pacer.snapshot().mode == PaceMode::Probing;
        // A hold may end while the lane is down: the flows carry everything then anyway.
        if !self.lane.choice.on_progress(now, flows, cruising) || !self.lane.up {
            return;
        }
        if self.lane.takes_new() {
            self.counters.lane_chosen += 1;
        } else {
            self.counters.lane_handed_back += 1;
        }
        self.events.push_back(Event::FramesReady);
    }

    /// The lane's next frame, and the range of the stream it carries (the token to give
    /// back to [`TunnelCore::lane_lost`]), if the lane takes new frames, holds less than its
    /// window (`outstanding`: frame bytes it has on the way), and the scheduler has one.
    pub fn poll_lane_frame(
        &mut self,
        now: Instant,
        outstanding: u64,
    ) -> Option<(DataFrame, Carried)> {
        if !self.lane.takes_new() || outstanding >= self.lane_window() {
            return None;
        }
        let frame = self.poll_frame(now, self.lane.slot)?;
        let carried = self.scheduler.last_carried(self.lane.slot)?;
        Some((frame, carried))
    }

    /// Two of the pacer's BDPs, at least [`LANE_INITIAL_WINDOW`].
    pub fn lane_window(&self) -> u64 {
        let pace = self.pacer.snapshot();
        let bdp =
            u128::from(pace.bottleneck) * u128::from(pace.min_rtt_us.unwrap_or(0)) / 1_000_000;
        u64::try_from(2 * bdp)
            .unwrap_or(u64::MAX)
            .max(LANE_INITIAL_WINDOW)
    }

    /// The lane lost the frame that carried `carried`: it goes again on a data flow.
    pub fn lane_lost(&mut self, carried: Carried) {
        self.scheduler.resend_range(carried);
        self.counters.lane_frames_lost += 1;
        self.events.push_back(Event::FramesReady);
    }

    /// What the lane delivered so far (`crate::lane::Lane::progress`), for the pacer's
    /// next sample.
    pub fn note_lane_progress(&mut self, progress: FlowProgress) {
        if self.lane.up {
            self.lane.progress = Some(progress);
        }
    }
}

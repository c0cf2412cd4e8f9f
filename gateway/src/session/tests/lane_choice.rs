//! An automatic lane (`wan.lane = "auto"`) in the tunnel core: the data flows take the new
//! frames while they do not lose, the lane once they do, and the flows again after its hold.

use bytes::Bytes;

use super::super::lane_choice::{LaneUse, BASE_HOLD_US};
use super::super::pacer::{FlowProgress, PaceMode};
use super::*;
use crate::protocol::DataFrame;

/// A path of 50 MB/s and 20 ms that loses `loss_per_mille` ‰ of what the one data flow
/// sends from `lossy_from` (ms) on; the lane's parity hides its own losses.
struct Path {
    a: End,
    id: SessionId,
    flow: (u64, u64),
    lane: (u64, u64),
    resent: u64,
}

const RATE: u64 = 50_000_000;
const ROOM: u64 = RATE / 50 * 2;

impl Path {
    fn new(lane_use: LaneUse) -> Path {
        let (mut a, mut b) = (
            End::new(Side::Dialer, Limits::default()),
            End::new(Side::Acceptor, Limits::default()),
        );
        a.core.set_shares(SharePolicy {
            pace_tunnel: true,
            ..Default::default()
        });
        a.core.set_lane_use(lane_use);
        a.core.set_lane_up(true);
        let id = open_pair(&mut a, &mut b);
        Path {
            a,
            id,
            flow: (0, 0),
            lane: (0, 0),
            resent: 0,
        }
    }

    /// Runs from `from` to `to` ms; what the flow and the lane took in that time.
    fn run(&mut self, from: u64, to: u64, loss_per_mille: u64) -> (u64, u64) {
        let (flow_before, lane_before) = (self.flow.0, self.lane.0);
        for ms in from..to {
            let now = ms * 1000;
            let a = &mut self.a;
            let room = a.core.send_capacity(self.id).unwrap() as usize;
            if room > 0 {
                a.core.write(self.id, Bytes::from(vec![7u8; room])).unwrap();
            }
            if a.core.poll_timeout().is_some_and(|t| t <= now) {
                a.core.handle_timeout(now);
            }
            let acked = |a: &mut End, f: &DataFrame| {
                let offset = f.offset + f.payload.len() as u64;
                let ack = Message::Ack {
                    session: self.id,
                    offset,
                };
                a.core.handle_message(ack).unwrap();
                f.payload.len() as u64
            };
            while self.flow.0 - self.flow.1 < ROOM {
                let Some(f) = a.core.poll_frame(now, 0) else {
                    break;
                };
                let len = acked(a, &f);
                self.flow.0 += len;
                self.resent += len * loss_per_mille / 1000;
            }
            while let Some((f, _)) = a.core.poll_lane_frame(now, self.lane.0 - self.lane.1) {
                self.lane.0 += acked(a, &f);
            }
            // The path delivers the flow's bytes, then the lane's, at its rate.
            let mut budget = RATE / 1000;
            for (sent, delivered) in [&mut self.flow, &mut self.lane] {
                let d = (*sent - *delivered).min(budget);
                *delivered += d;
                budget -= d;
            }
            let report = |(sent, delivered): (u64, u64), retransmitted| FlowProgress {
                delivered,
                sent,
                retransmitted,
                outstanding: sent - delivered,
                min_rtt_us: Some(20_000),
                srtt_us: Some(20_000),
            };
            a.core.note_lane_progress(report(self.lane, 0));
            if a.core.flow_progress_due(now) {
                a.core
                    .note_flow_progress(now, [(0, report(self.flow, self.resent))]);
            }
            a.drain_events();
        }
        (self.flow.0 - flow_before, self.lane.0 - lane_before)
    }
}

#[test]
fn an_automatic_lane_takes_the_new_frames_while_the_flows_lose() {
    let mut path = Path::new(LaneUse::Auto);
    let (flow, lane) = path.run(0, 2_000, 0);
    assert_eq!(path.a.core.pacing().mode, PaceMode::Probing);
    assert_eq!(lane, 0, "clean: the flows carry everything");
    assert!(flow > RATE, "{flow}");
    assert!(!path.a.core.lane_carries_new());

    // 0.5 % loss: within a few of the pacer's rounds the lane takes over.
    path.run(2_000, 2_500, 5);
    assert!(path.a.core.lane_carries_new());
    assert_eq!(path.a.core.counters().lane_chosen, 1);
    assert!(path.a.events.contains(&Event::FramesReady));
    let (flow, lane) = path.run(2_500, 3_500, 5);
    assert_eq!(flow, 0, "the flows take no new frame");
    assert!(lane > RATE * 9 / 10, "{lane}");

    // After the hold, the flows again; the path is clean now, so they keep them.
    let end = 2_500 + BASE_HOLD_US / 1000;
    path.run(3_500, end, 0);
    let (flow, lane) = path.run(end, end + 2_000, 0);
    assert_eq!(path.a.core.counters().lane_handed_back, 1);
    assert!(!path.a.core.lane_carries_new());
    assert!(flow > RATE, "{flow}");
    assert!(lane < RATE / 100, "what was on its way at most: {lane}");
    assert_eq!(path.a.core.counters().lane_chosen, 1);
}

/// `wan.lane = "on"`: the lane takes the new frames from the start, loss or not.
#[test]
fn a_lane_that_is_on_takes_every_new_frame() {
    let mut path = Path::new(LaneUse::Always);
    let (flow, lane) = path.run(0, 2_000, 0);
    assert_eq!(flow, 0);
    assert!(lane > RATE, "{lane}");
    assert_eq!(path.a.core.counters().lane_chosen, 0);
}

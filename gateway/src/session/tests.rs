//! Two cores wired back to back through simulated flows: the in-memory pair
//! harness. Flows can lose everything they hold (a dead TCP connection); the
//! byte stream must still arrive exactly.

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;

use bytes::Bytes;
use proptest::prelude::*;

use super::*;
use crate::protocol::{Message, SessionId};

mod dedup;
mod lane_choice;
mod packed;

const FLOWS: usize = 3;

struct End {
    core: TunnelCore,
    /// Per flow, frames on the wire towards the other end.
    flows: Vec<VecDeque<Message>>,
    control: VecDeque<Message>,
    received: HashMap<SessionId, Vec<u8>>,
    finished: HashMap<SessionId, bool>,
    events: Vec<Event>,
    /// Payload bytes of the data frames this end pulled (what crossed its flows).
    sent_bytes: u64,
    /// Frames on the lane towards the other end, with the range each carries.
    lane: VecDeque<(Message, scheduler::Carried)>,
}

impl End {
    fn new(side: Side, limits: Limits) -> End {
        End {
            core: TunnelCore::new(side, limits, FLOWS),
            flows: vec![VecDeque::new(); FLOWS],
            control: VecDeque::new(),
            received: HashMap::new(),
            finished: HashMap::new(),
            events: Vec::new(),
            sent_bytes: 0,
            lane: VecDeque::new(),
        }
    }

    fn drain_events(&mut self) {
        while let Some(e) = self.core.poll_event() {
            if let Event::ConnectRequested { session, .. } = e {
                self.core.accept(session).unwrap();
            }
            self.events.push(e);
        }
        while let Some(m) = self.core.poll_control() {
            self.control.push_back(m);
        }
    }

    fn read_all(&mut self, now: Instant) {
        let ids: Vec<SessionId> = self.received.keys().copied().collect();
        for id in ids {
            while let Ok(out) = self.core.read(now, id) {
                match out {
                    ReadOutcome::Data(d) => {
                        self.received.get_mut(&id).unwrap().extend_from_slice(&d)
                    }
                    ReadOutcome::Finished => {
                        // Like a server that closes once the client is done.
                        self.finished.insert(id, true);
                        let _ = self.core.finish(id);
                        break;
                    }
                    ReadOutcome::Blocked => break,
                }
            }
        }
        self.drain_events();
    }
}

fn limits() -> Limits {
    Limits {
        session_window: 4096,
        global_buffer: 6000,
        unsent_buffer: 1500,
        unsent_time_us: crate::session::unsent::UNSENT_TIME_US,
        receive_budget: 1 << 20,
        frame_len: 700,
        max_sessions: 16,
        ack_every: 1024,
        ack_delay_us: 100,
    }
}

#[derive(Debug, Clone)]
enum Op {
    /// Flow k of the given end pulls a frame.
    Pull {
        from_a: bool,
        flow: usize,
    },
    /// The oldest message on flow k is delivered.
    Deliver {
        from_a: bool,
        flow: usize,
    },
    /// Control messages are delivered.
    Control,
    /// Flow k dies: what is on it is lost, both ends learn of it.
    Kill {
        flow: usize,
    },
    /// Flow k's transport stalls with its newest `frames` unsent: they go
    /// again on the others, and the originals still arrive later.
    Stall {
        flow: usize,
        frames: usize,
    },
    /// The control connection dies with whatever it carried; a new one
    /// replaces it and both ends resync.
    ControlLost,
    Read,
    Tick,
    /// The lane of the given end pulls a frame (if it is up and has room).
    LanePull {
        from_a: bool,
    },
    /// The oldest frame on the lane arrives, or is lost (its parity did not cover the
    /// path's losses): the sender learns it in time.
    LaneDeliver {
        from_a: bool,
        lost: bool,
    },
    /// Both lanes go down (what is on them is lost) or come up.
    LaneUp(bool),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (any::<bool>(), 0..FLOWS).prop_map(|(from_a, flow)| Op::Pull { from_a, flow }),
        4 => (any::<bool>(), 0..FLOWS).prop_map(|(from_a, flow)| Op::Deliver { from_a, flow }),
        2 => Just(Op::Control),
        1 => (0..FLOWS).prop_map(|flow| Op::Kill { flow }),
        1 => (0..FLOWS, 0..4usize).prop_map(|(flow, frames)| Op::Stall { flow, frames }),
        1 => Just(Op::ControlLost),
        2 => Just(Op::Read),
        1 => Just(Op::Tick),
    ]
}

/// [`op`], and the lane's.
fn lane_op() -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => op(),
        3 => any::<bool>().prop_map(|from_a| Op::LanePull { from_a }),
        3 => (any::<bool>(), prop::bool::weighted(0.2))
            .prop_map(|(from_a, lost)| Op::LaneDeliver { from_a, lost }),
        1 => any::<bool>().prop_map(Op::LaneUp),
    ]
}

fn deliver(to: &mut End, msg: Message) {
    let _ = to.core.handle_message(msg);
    to.drain_events();
}

/// Runs `ops`, then lets everything settle with no more faults.
fn run(streams: &[Vec<u8>], ops: &[Op]) -> (End, End, Vec<SessionId>) {
    let a = End::new(Side::Dialer, limits());
    let b = End::new(Side::Acceptor, limits());
    run_ends(a, b, streams, ops)
}

/// [`run`] between two ends made by the caller (their limits, dedup, …).
fn run_ends(mut a: End, mut b: End, streams: &[Vec<u8>], ops: &[Op]) -> (End, End, Vec<SessionId>) {
    let target: SocketAddr = "192.0.2.1:5000".parse().unwrap();
    let mut ids = Vec::new();
    let mut pending: Vec<(SessionId, Bytes, bool)> = Vec::new();
    for data in streams {
        let id = a.core.open(target, Origin::default()).unwrap();
        ids.push(id);
        a.received.insert(id, Vec::new());
        b.received.insert(id, Vec::new());
        pending.push((id, Bytes::from(data.clone()), false));
    }
    a.drain_events();
    let mut now: Instant = 0;
    let feed = |a: &mut End, pending: &mut Vec<(SessionId, Bytes, bool)>| {
        for (id, data, finished) in pending.iter_mut() {
            let cap = a.core.send_capacity(*id).unwrap_or(0) as usize;
            let n = cap.min(data.len()).min(500);
            if n > 0 {
                a.core.write(*id, data.split_to(n)).unwrap();
            }
            if data.is_empty() && !*finished {
                *finished = true;
                a.core.finish(*id).unwrap();
            }
        }
        a.drain_events();
    };
    let step = |op: &Op, a: &mut End, b: &mut End, now: &mut Instant| match *op {
        Op::Pull { from_a, flow } => {
            let end = if from_a { &mut *a } else { &mut *b };
            if let Some(f) = end.core.poll_frame(*now, flow) {
                end.sent_bytes += f.payload.len() as u64;
                end.flows[flow].push_back(Message::Data(f));
            }
            end.drain_events();
        }
        Op::Deliver { from_a, flow } => {
            let (src, dst) = if from_a {
                (&mut *a, &mut *b)
            } else {
                (&mut *b, &mut *a)
            };
            if let Some(m) = src.flows[flow].pop_front() {
                deliver(dst, m);
            }
        }
        Op::Control => {
            while let Some(m) = a.control.pop_front() {
                deliver(b, m);
            }
            while let Some(m) = b.control.pop_front() {
                deliver(a, m);
            }
        }
        Op::Kill { flow } => {
            a.flows[flow].clear();
            b.flows[flow].clear();
            a.core.flow_lost(flow);
            b.core.flow_lost(flow);
            a.drain_events();
            b.drain_events();
        }
        Op::Stall { flow, frames } => {
            a.core.flow_stalled(flow, frames);
            b.core.flow_stalled(flow, frames);
            a.drain_events();
            b.drain_events();
        }
        Op::ControlLost => {
            a.control.clear();
            b.control.clear();
            a.core.resync();
            b.core.resync();
            a.drain_events();
            b.drain_events();
        }
        Op::Read => {
            a.read_all(*now);
            b.read_all(*now);
        }
        Op::Tick => {
            *now += 1000;
            a.core.handle_timeout(*now);
            b.core.handle_timeout(*now);
            a.drain_events();
            b.drain_events();
        }
        Op::LanePull { from_a } => {
            let end = if from_a { &mut *a } else { &mut *b };
            let outstanding = end.lane.len() as u64 * limits().frame_len as u64;
            if let Some((f, carried)) = end.core.poll_lane_frame(*now, outstanding) {
                end.sent_bytes += f.payload.len() as u64;
                end.lane.push_back((Message::Data(f), carried));
            }
            end.drain_events();
        }
        Op::LaneDeliver { from_a, lost } => {
            let (src, dst) = if from_a {
                (&mut *a, &mut *b)
            } else {
                (&mut *b, &mut *a)
            };
            if let Some((m, carried)) = src.lane.pop_front() {
                if lost {
                    src.core.lane_lost(carried);
                    src.drain_events();
                } else {
                    deliver(dst, m);
                }
            }
        }
        Op::LaneUp(up) => {
            for end in [&mut *a, &mut *b] {
                end.lane.clear();
                end.core.set_lane_up(up);
                end.drain_events();
            }
        }
    };
    for op in ops {
        feed(&mut a, &mut pending);
        step(op, &mut a, &mut b, &mut now);
    }
    // Settle: no faults, every flow pulls and delivers until quiet.
    for _ in 0..10_000 {
        feed(&mut a, &mut pending);
        for flow in 0..FLOWS {
            for from_a in [true, false] {
                step(&Op::Pull { from_a, flow }, &mut a, &mut b, &mut now);
                step(&Op::Deliver { from_a, flow }, &mut a, &mut b, &mut now);
            }
        }
        for from_a in [true, false] {
            let lost = false;
            step(&Op::LanePull { from_a }, &mut a, &mut b, &mut now);
            step(&Op::LaneDeliver { from_a, lost }, &mut a, &mut b, &mut now);
        }
        step(&Op::Control, &mut a, &mut b, &mut now);
        step(&Op::Read, &mut a, &mut b, &mut now);
        step(&Op::Tick, &mut a, &mut b, &mut now);
        if a.core.session_count() == 0 && b.core.session_count() == 0 {
            break;
        }
    }
    (a, b, ids)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]

    #[test]
    fn streams_arrive_exactly_despite_dying_flows(
        streams in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..12_000), 1..4),
        ops in proptest::collection::vec(op(), 0..400),
    ) {
        let (a, b, ids) = run(&streams, &ops);
        for (id, data) in ids.iter().zip(&streams) {
            prop_assert_eq!(&b.received[id], data, "session {}", id);
            prop_assert!(b.finished.get(id).copied().unwrap_or(false), "session {} saw its end", id);
        }
        prop_assert_eq!(a.core.session_count(), 0);
        prop_assert_eq!(b.core.session_count(), 0);
        prop_assert_eq!(a.core.buffered(), 0);
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]

    /// The same over a lane that loses frames, goes down and comes back: whatever it
    /// loses goes again on the flows.
    #[test]
    fn streams_arrive_exactly_over_a_lossy_lane(
        streams in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..12_000), 1..4),
        ops in proptest::collection::vec(lane_op(), 0..400),
    ) {
        let mut a = End::new(Side::Dialer, limits());
        let mut b = End::new(Side::Acceptor, limits());
        a.core.set_lane_up(true);
        b.core.set_lane_up(true);
        let (a, b, ids) = run_ends(a, b, &streams, &ops);
        for (id, data) in ids.iter().zip(&streams) {
            prop_assert_eq!(&b.received[id], data, "session {}", id);
        }
        prop_assert_eq!(a.core.session_count(), 0);
        prop_assert_eq!(b.core.session_count(), 0);
    }
}

/// While the lane is up it takes every new frame; a data flow takes only what goes again,
/// and a frame the lane lost goes on one.
#[test]
fn the_lane_carries_new_frames_and_the_flows_what_it_lost() {
    let target: SocketAddr = "192.0.2.1:5000".parse().unwrap();
    let mut a = End::new(Side::Dialer, limits());
    a.core.set_lane_up(true);
    let id = a.core.open(target, Origin::default()).unwrap();
    a.core
        .handle_message(Message::Accept {
            session: id,
            window: 1 << 20,
        })
        .unwrap();
    a.core.write(id, Bytes::from(vec![7u8; 1400])).unwrap();
    a.drain_events();
    assert_eq!(a.core.poll_frame(0, 0), None, "a flow takes no new frame");
    let (first, carried) = a.core.poll_lane_frame(0, 0).unwrap();
    assert_eq!(
        (carried.session, carried.start, carried.end),
        (id, 0, first.payload.len() as u64)
    );
    // Full: the lane's window is taken.
    assert_eq!(
        a.core.poll_lane_frame(0, tunnel::lane::LANE_INITIAL_WINDOW),
        None
    );
    a.core.lane_lost(carried);
    let again = a.core.poll_frame(0, 1).expect("the lost frame, on a flow");
    assert_eq!((again.session, again.offset), (id, 0));
    assert_eq!(again.payload, first.payload);
    assert_eq!(a.core.counters().lane_frames_lost, 1);
    // Down, the lane's frames go on the flows, and so do new ones.
    let (second, _) = a.core.poll_lane_frame(0, 0).unwrap();
    a.core.set_lane_up(false);
    let resent: Vec<u64> = std::iter::from_fn(|| a.core.poll_frame(0, 2))
        .map(|f| f.offset)
        .collect();
    assert_eq!(resent, [first.offset, second.offset], "none acked yet");
}

/// An idle tunnel with the lane up: the data flows' polls find nothing, and nothing waits
/// anywhere, so the pacer's rounds are idle ones and its startup goes on (it left startup
/// with an estimate of a few kbit/s and took a minute to probe its way up, from 1 Mbit/s:
/// a multifd migration took 74 s instead of 8).
#[test]
fn an_idle_tunnel_with_the_lane_up_keeps_the_pacer_in_startup() {
    use crate::session::pacer::{FlowProgress, PaceMode};
    let mut a = End::new(Side::Dialer, limits());
    a.core.set_lane_up(true);
    let flow = |sent| FlowProgress {
        delivered: sent,
        min_rtt_us: Some(100_000),
        srtt_us: Some(100_000),
        outstanding: 0,
        sent,
        retransmitted: 0,
    };
    for round in 0..10u64 {
        let now = round * 100_000;
        assert_eq!(a.core.poll_frame(now, 0), None);
        // A few control-sized bytes a round: nothing that measures the path.
        a.core
            .note_flow_progress(now, (0..FLOWS).map(|k| (k, flow(round * 100))));
    }
    assert_eq!(a.core.pacing().mode, PaceMode::Startup);
}

#[test]
fn sender_never_buffers_beyond_limits() {
    let target: SocketAddr = "192.0.2.1:5000".parse().unwrap();
    let mut a = End::new(Side::Dialer, limits());
    let ids: Vec<_> = (0..3)
        .map(|_| a.core.open(target, Origin::default()).unwrap())
        .collect();
    for id in &ids {
        // nobody acks: capacity shrinks to zero and stays there
        while let Ok(cap) = a.core.send_capacity(*id) {
            if cap == 0 {
                break;
            }
            a.core
                .write(*id, Bytes::from(vec![0u8; cap.min(300) as usize]))
                .unwrap();
        }
    }
    assert!(a.core.buffered() <= limits().global_buffer);
}

#[test]
fn refused_open_is_reported_and_forgotten() {
    let target: SocketAddr = "192.0.2.1:5000".parse().unwrap();
    let mut a = End::new(Side::Dialer, limits());
    let mut b = End::new(Side::Acceptor, limits());
    let id = a.core.open(target, Origin::default()).unwrap();
    a.drain_events();
    let open = a.control.pop_front().unwrap();
    b.core.handle_message(open).unwrap();
    assert!(matches!(
        b.core.poll_event(),
        Some(Event::ConnectRequested { .. })
    ));
    b.core
        .refuse(id, crate::protocol::RefuseReason::NotAllowed, "");
    let refuse = b.core.poll_control().unwrap();
    a.core.handle_message(refuse).unwrap();
    a.drain_events();
    assert!(a.events.iter().any(|e| matches!(e, Event::Refused { .. })));
    assert_eq!(a.core.session_count(), 0);
    assert_eq!(b.core.session_count(), 0);
}

/// The shards of a sharded gateway number their sessions apart: ids never meet across
/// shards, keep the side's parity, grow, and the peer's shard takes them like any others.
#[test]
fn shards_number_their_sessions_apart() {
    use crate::protocol::handshake::Shard;
    let target: SocketAddr = "192.0.2.1:5000".parse().unwrap();
    let mut seen = std::collections::HashSet::new();
    for side in [Side::Dialer, Side::Acceptor] {
        for index in 0..3 {
            let shard = Shard::new(index, 3).unwrap();
            let mut core = TunnelCore::new(side, limits(), FLOWS).for_shard(shard);
            let ids: Vec<u64> = (0..4)
                .map(|_| core.open(target, Origin::default()).unwrap().0)
                .collect();
            assert!(ids.windows(2).all(|w| w[0] < w[1]), "{ids:?}");
            for id in ids {
                assert_eq!(id % 2 == 0, side == Side::Dialer, "{id}: parity");
                assert!(seen.insert(id), "{id} allocated by two shards");
            }
        }
    }
    // Shard 2 of 3 opens, the peer's shard 2 accepts: nothing special on the wire.
    let mut a = End::new(Side::Dialer, limits());
    a.core = TunnelCore::new(Side::Dialer, limits(), FLOWS).for_shard(Shard::new(2, 3).unwrap());
    let mut b = End::new(Side::Acceptor, limits());
    for want in [4, 10] {
        assert_eq!(a.core.open(target, Origin::default()).unwrap().0, want);
        a.drain_events();
        b.core
            .handle_message(a.control.pop_front().unwrap())
            .unwrap();
        assert!(matches!(
            b.core.poll_event(),
            Some(Event::ConnectRequested { session, .. }) if session.0 == want
        ));
    }
}

#[test]
fn peer_cannot_open_in_our_id_space() {
    let mut a = End::new(Side::Dialer, limits());
    let err = a.core.handle_message(Message::Open {
        session: SessionId(0),
        target: "192.0.2.1:1".parse().unwrap(),
        window: 10,
    });
    assert!(matches!(err, Err(PeerError::BadSessionId(_))));
}

/// A peer that opens a session id again after the session ended and its tombstone was
/// forgotten (4096 sessions later) gets a reset, not a second session under an old id.
#[test]
fn a_session_id_reused_after_its_tombstone_is_gone_is_refused() {
    let mut b = End::new(Side::Acceptor, limits());
    let target: SocketAddr = "192.0.2.1:5000".parse().unwrap();
    let open = |id: u64| Message::Open {
        session: SessionId(id),
        target,
        window: 10,
    };
    let reset = |id: u64| Message::Reset {
        session: SessionId(id),
        reason: crate::protocol::ResetReason::ConnectionReset,
    };
    // Session 0 and then 4096 others open and end.
    for id in (0..=2 * 4096u64).step_by(2) {
        b.core.handle_message(open(id)).unwrap();
        b.core.handle_message(reset(id)).unwrap();
    }
    while b.core.poll_event().is_some() {}
    while b.core.poll_control().is_some() {}
    let err = b.core.handle_message(open(0));
    let events: Vec<Event> = std::iter::from_fn(|| b.core.poll_event()).collect();
    let control: Vec<Message> = std::iter::from_fn(|| b.core.poll_control()).collect();
    assert!(
        matches!(err, Err(PeerError::BadSessionId(SessionId(0)))),
        "{err:?}"
    );
    assert!(
        !events
            .iter()
            .any(|e| matches!(e, Event::ConnectRequested { .. })),
        "reopened: {events:?}"
    );
    assert!(control.iter().any(|m| matches!(
        m,
        Message::Reset {
            session: SessionId(0),
            reason: crate::protocol::ResetReason::ProtocolError
        }
    )));
    assert_eq!(b.core.session_count(), 0);
    // A new id still opens.
    b.core.handle_message(open(2 * 4097)).unwrap();
    assert_eq!(b.core.session_count(), 1);
}

#[test]
fn unsent_room_bounds_reads_and_frees_as_frames_go_out() {
    // A hypervisor must see the WAN's rate: what the gateway accepts beyond
    // what the flows have taken is bounded by `unsent_buffer`, well below the
    // window that data in flight may use.
    let target: SocketAddr = "192.0.2.1:5000".parse().unwrap();
    let (mut a, mut b) = ends();
    let id = a.core.open(target, Origin::default()).unwrap();
    a.drain_events();
    deliver(&mut b, a.control.pop_front().unwrap());
    b.drain_events();
    a.core
        .handle_message(b.control.pop_front().unwrap())
        .unwrap();
    a.drain_events();
    let mut written = 0;
    while let Ok(cap) = a.core.send_capacity(id) {
        if cap == 0 {
            break;
        }
        a.core
            .write(id, Bytes::from(vec![7u8; cap as usize]))
            .unwrap();
        written += cap;
    }
    assert_eq!(
        written,
        limits().unsent_buffer,
        "stopped at the unsent room, not the window"
    );
    a.events.clear();
    let frame = a.core.poll_frame(0, 0).expect("a frame");
    a.drain_events();
    assert!(a.events.contains(&Event::Writable(id)), "{:?}", a.events);
    assert_eq!(
        a.core.send_capacity(id).unwrap(),
        frame.payload.len() as u64
    );
    // Frames in flight still count against the window: after the window is
    // spent no unsent room helps.
    let mut in_flight = frame.payload.len() as u64;
    loop {
        let cap = a.core.send_capacity(id).unwrap();
        if cap > 0 {
            a.core
                .write(id, Bytes::from(vec![7u8; cap as usize]))
                .unwrap();
        }
        match a.core.poll_frame(0, 0) {
            Some(f) => in_flight += f.payload.len() as u64,
            None => break,
        }
    }
    assert_eq!(in_flight, limits().session_window);
    assert_eq!(a.core.send_capacity(id).unwrap(), 0);
}

/// Two ends with default limits, the dialler's tunnel capped at 500 Mbit/s;
/// and a migration's unsent budget at that rate (1.25 MB in 20 ms).
fn ends_under_a_link_cap() -> (End, End, u64) {
    // 20 ms, so that the budget is above its floor at this rate.
    let limits = Limits {
        unsent_time_us: 20_000,
        ..Limits::default()
    };
    let mut a = End::new(Side::Dialer, limits.clone());
    let rate = 62_500_000;
    a.core.set_shares(SharePolicy {
        link_rate: Some(rate),
        ..Default::default()
    });
    let budget = rate * limits.unsent_time_us / 1_000_000;
    (a, End::new(Side::Acceptor, limits), budget)
}

#[test]
fn a_migrations_sessions_share_one_unsent_budget_sized_from_the_tunnels_rate() {
    // QEMU's multifd opens five connections for one migration; what the
    // gateway takes from them ahead of the flows is downtime once the guest
    // stops, so they share one budget: the tunnel's rate times 20 ms.
    let limits = Limits::default();
    let (mut a, mut b, budget) = ends_under_a_link_cap();
    let host = |last: u8| Origin {
        source: Some(std::net::IpAddr::from([10, 0, 0, last])),
        ingress: None,
    };
    let migration: Vec<SessionId> = (0..5)
        .map(|_| open_pair_from(&mut a, &mut b, host(1)))
        .collect();
    let other = open_pair_from(&mut a, &mut b, host(2));
    let fill = |a: &mut End, id: SessionId| {
        let mut written = 0;
        loop {
            let cap = a.core.send_capacity(id).unwrap();
            if cap == 0 {
                return written;
            }
            a.core
                .write(id, Bytes::from(vec![7u8; cap as usize]))
                .unwrap();
            written += cap;
        }
    };
    let taken: Vec<u64> = migration.iter().map(|&id| fill(&mut a, id)).collect();
    let frame = limits.frame_len as u64;
    assert_eq!(taken[0], budget, "the first takes the migration's budget");
    assert!(
        taken[1..].iter().all(|&t| t == frame),
        "the others keep one frame each: {taken:?}"
    );
    assert_eq!(fill(&mut a, other), budget, "another migration has its own");

    // Frames going out free the budget, and every session of the migration
    // hears it (any of them may be the one waiting).
    a.drain_events();
    a.events.clear();
    let mut now = 0;
    let mut pulled = 0;
    let over = taken.iter().sum::<u64>() - budget;
    while pulled <= over {
        match a.core.poll_frame(now, 0) {
            Some(f) if migration.contains(&f.session) => pulled += f.payload.len() as u64,
            Some(_) => {}
            None => now += 1_000,
        }
    }
    a.drain_events();
    for id in &migration {
        assert!(
            a.events.contains(&Event::Writable(*id)),
            "{id} not woken: {:?}",
            a.events
        );
    }
    let room: u64 = migration[1..]
        .iter()
        .map(|&id| a.core.send_capacity(id).unwrap())
        .max()
        .unwrap();
    assert!(room > 0 && room <= frame, "room {room}");
    assert!(
        a.core.send_capacity(migration[0]).unwrap() > 0,
        "the main channel's own room"
    );
}

#[test]
fn the_main_channel_is_not_held_back_by_its_migrations_bulk_backlog() {
    // The main channel carries the device state at switchover and goes
    // ahead of the multifd channels; a bulk channel that filled the
    // migration's budget must not leave it one frame at a time (the
    // scheduler then found no main frame ready as often as not, and bulk
    // went between: conformance row main_channel_first).
    let (mut a, mut b, budget) = ends_under_a_link_cap();
    let host = Origin {
        source: Some(std::net::IpAddr::from([10, 0, 0, 1])),
        ingress: None,
    };
    let main = open_pair_from(&mut a, &mut b, host);
    let bulk = open_pair_from(&mut a, &mut b, host);
    let cap = a.core.send_capacity(bulk).unwrap();
    assert_eq!(cap, budget);
    a.core
        .write(bulk, Bytes::from(vec![1u8; cap as usize]))
        .unwrap();
    assert_eq!(
        a.core.send_capacity(main).unwrap(),
        budget,
        "the main channel has the migration's budget of its own"
    );
    a.core
        .write(main, Bytes::from(vec![2u8; budget as usize]))
        .unwrap();
    assert_eq!(a.core.send_capacity(main).unwrap(), 0, "and no more");
    assert_eq!(
        a.core.send_capacity(bulk).unwrap(),
        0,
        "the bulk waits for the group to drain"
    );
}

#[test]
fn a_migrations_ingress_sockets_share_one_receive_window() {
    // Every byte of receive window an ingress socket offers lets the
    // hypervisor queue more in its own send buffer, and all of it crosses
    // the WAN during the pause: a multifd migration's five sockets split
    // one window instead of offering one each.
    use crate::protocol::ResetReason;
    use crate::session::lan_window::{migration_window, session_share};
    let (mut a, mut b) = ends();
    let host = |last: u8| Origin {
        source: Some(std::net::IpAddr::from([10, 0, 0, last])),
        ingress: None,
    };
    let main = open_pair_from(&mut a, &mut b, host(1));
    let window = |a: &End, id| a.core.endpoint_receive_buffer(id).unwrap();
    // No rate measured yet.
    assert_eq!(window(&a, main), Some(migration_window(None)));
    let channels: Vec<SessionId> = (0..4)
        .map(|_| open_pair_from(&mut a, &mut b, host(1)))
        .collect();
    let other = open_pair_from(&mut a, &mut b, host(2));
    for &id in channels.iter().chain([&main]) {
        assert_eq!(window(&a, id), Some(session_share(5, None)), "{id}");
    }
    assert_eq!(
        window(&a, other),
        Some(migration_window(None)),
        "another migration"
    );
    // The far end's sockets are the host's business.
    assert_eq!(window(&b, main), None);
    // A channel that ends gives its part back.
    a.core.reset(channels[0], ResetReason::ConnectionReset);
    assert_eq!(window(&a, main), Some(session_share(4, None)));
}

#[test]
fn a_migrations_receive_window_follows_the_tunnels_rate() {
    // What the window lets the hypervisor queue is downtime at the
    // tunnel's rate: a slower tunnel offers less, a faster one more.
    use crate::session::lan_window::migration_window;
    let (mut a, mut b, _) = ends_under_a_link_cap();
    let id = open_pair(&mut a, &mut b);
    let window = |a: &End| a.core.endpoint_receive_buffer(id).unwrap().unwrap();
    let slow = window(&a);
    assert_eq!(slow, migration_window(Some(62_500_000)));
    a.core.set_shares(SharePolicy {
        link_rate: Some(1_250_000_000),
        ..Default::default()
    });
    let fast = window(&a);
    assert_eq!(fast, migration_window(Some(1_250_000_000)));
    assert!(fast > slow, "10 Gbit/s: {fast}, 500 Mbit/s: {slow}");
}

#[test]
fn a_stalled_flows_unsent_frames_go_again_on_another_flow() {
    // Flow 0's transport holds its two newest frames unsent (BBR's
    // PROBE_RTT): the far end, delivering in order, would wait for them.
    let (mut a, mut b) = ends();
    let id = open_pair(&mut a, &mut b);
    let data: Vec<u8> = (0..3000u32).map(|i| (i % 251) as u8).collect();
    a.core.write(id, Bytes::from(data.clone())).unwrap();
    let on_flow_0: Vec<_> = (0..3)
        .map(|_| a.core.poll_frame(0, 0).expect("a frame"))
        .collect();
    a.drain_events();
    a.core.flow_stalled(0, 2);
    a.drain_events();
    assert!(a.events.contains(&Event::FramesReady), "{:?}", a.events);
    assert_eq!(a.core.counters().flow_stalls, 1);
    let mut on_flow_1: Vec<_> = std::iter::from_fn(|| a.core.poll_frame(0, 1)).collect();
    let rest = on_flow_1.split_off(2);
    let again = on_flow_1;
    let offsets =
        |fs: &[crate::protocol::DataFrame]| fs.iter().map(|f| f.offset).collect::<Vec<_>>();
    assert_eq!(
        offsets(&again),
        offsets(&on_flow_0[1..]),
        "the newest two, on flow 1"
    );
    // The far end gets the first from flow 0, then the copies and the
    // rest on flow 1; the originals come last and are dropped.
    let arrivals = std::iter::once(&on_flow_0[0]).chain(&again).chain(&rest);
    for f in arrivals.chain(&on_flow_0[1..]) {
        deliver(&mut b, Message::Data(f.clone()));
    }
    let mut got = Vec::new();
    while let Ok(ReadOutcome::Data(d)) = b.core.read(0, id) {
        got.extend_from_slice(&d);
    }
    assert_eq!(got, data, "the whole stream, once, in order");
    assert!(b.core.counters().duplicate_bytes_in > 0);
    // Nothing more to stall for: a stall with no frames queues nothing.
    a.core.flow_stalled(1, 0);
    assert_eq!(a.core.counters().flow_stalls, 1);
}

/// A dialling and an accepting end with the tests' limits.
fn ends() -> (End, End) {
    (
        End::new(Side::Dialer, limits()),
        End::new(Side::Acceptor, limits()),
    )
}

/// Opens session `id` from `a` to `b` (control messages delivered both ways).
fn open_pair(a: &mut End, b: &mut End) -> SessionId {
    open_pair_from(a, b, Origin::default())
}

/// [`open_pair`] for a client from `origin`.
fn open_pair_from(a: &mut End, b: &mut End, origin: Origin) -> SessionId {
    let id = a
        .core
        .open("192.0.2.1:5000".parse().unwrap(), origin)
        .unwrap();
    a.drain_events();
    deliver(b, a.control.pop_front().unwrap());
    b.drain_events();
    a.core
        .handle_message(b.control.pop_front().unwrap())
        .unwrap();
    a.drain_events();
    id
}

#[test]
fn tiny_writes_are_charged_for_their_pieces() {
    // A client writing one byte at a time must meet the global buffer as
    // soon as its bookkeeping would fill it, not after global_buffer bytes.
    let mut a = End::new(Side::Dialer, limits());
    let id = a
        .core
        .open("192.0.2.1:5000".parse().unwrap(), Origin::default())
        .unwrap();
    let mut written = 0u64;
    while a.core.send_capacity(id).unwrap() > 0 {
        a.core.write(id, Bytes::from_static(b"x")).unwrap();
        written += 1;
    }
    let per_piece = 1 + send::ENTRY_OVERHEAD;
    assert_eq!(written, limits().global_buffer / per_piece);
    assert!(a.core.buffered() <= limits().global_buffer);
}

#[test]
fn a_full_receive_budget_pauses_reading_until_an_endpoint_reads() {
    let mut small = limits();
    small.receive_budget = 2000;
    let (mut a, mut b) = (
        End::new(Side::Dialer, limits()),
        End::new(Side::Acceptor, small),
    );
    let id = open_pair(&mut a, &mut b);
    let frame = |offset: u64, len: usize| {
        Message::Data(crate::protocol::DataFrame {
            session: id,
            offset,
            flags: 0,
            payload: Bytes::from(vec![1u8; len]),
        })
    };
    // Out of order: waits for the flows, not for the endpoint: not counted.
    b.core.handle_message(frame(1000, 1500)).unwrap();
    assert_eq!(b.core.ready(), 0);
    assert!(!b.core.receive_paused());
    // The gap filled: 2500 bytes in two pieces wait for the endpoint.
    b.core.handle_message(frame(0, 1000)).unwrap();
    assert_eq!(b.core.ready(), 2500 + 2 * send::ENTRY_OVERHEAD);
    assert!(b.core.receive_paused());
    while b.core.poll_event().is_some() {}
    let ReadOutcome::Data(d) = b.core.read(0, id).unwrap() else {
        panic!("in-order data")
    };
    assert_eq!(d.len(), 1000);
    assert!(!b.core.receive_paused());
    let events: Vec<Event> = std::iter::from_fn(|| b.core.poll_event()).collect();
    assert!(events.contains(&Event::ReceiveRoom), "{events:?}");
    // A reset session gives its bytes back too.
    b.core.handle_message(frame(2500, 1000)).unwrap();
    assert!(b.core.receive_paused());
    b.core
        .reset(id, crate::protocol::ResetReason::ConnectionReset);
    assert_eq!(b.core.ready(), 0);
    assert!(std::iter::from_fn(|| b.core.poll_event()).any(|e| e == Event::ReceiveRoom));
}

#[test]
fn a_peer_that_pings_and_never_reads_meets_the_control_bound() {
    let mut b = End::new(Side::Acceptor, limits());
    let bound = 4 * limits().max_sessions + 1024;
    let mut sent = 0;
    while !b.core.control_backlogged() {
        b.core.handle_message(Message::Ping { id: sent }).unwrap();
        sent += 1;
        assert!(sent <= bound as u64, "no bound");
    }
    assert_eq!(sent, bound as u64);
    // The control writer takes one: reading may go on.
    while b.core.poll_event().is_some() {}
    assert!(matches!(
        b.core.poll_control(),
        Some(Message::Pong { id: 0 })
    ));
    assert!(!b.core.control_backlogged());
    assert_eq!(b.core.poll_event(), Some(Event::ControlRoom));
}

#[test]
fn a_session_waiting_on_the_global_buffer_is_woken_when_another_is_acked() {
    // Capacity counts the next piece's bookkeeping, so the buffer can be "full" for a writer
    // while a little below global_buffer: the wakeup must follow the same rule.
    let (mut a, mut b) = ends();
    let first = open_pair(&mut a, &mut b);
    let second = open_pair(&mut a, &mut b);
    while a.core.send_capacity(first).unwrap() > 0 {
        a.core.write(first, Bytes::from_static(b"x")).unwrap();
    }
    assert!(
        a.core.buffered() < limits().global_buffer,
        "just under the cap"
    );
    assert_eq!(a.core.send_capacity(second).unwrap(), 0, "the other waits");
    let mut sent = 0;
    while let Some(f) = a.core.poll_frame(0, 0) {
        sent = sent.max(f.offset + f.payload.len() as u64);
    }
    while a.core.poll_event().is_some() {}
    a.core
        .handle_message(Message::Ack {
            session: first,
            offset: sent,
        })
        .unwrap();
    let events: Vec<Event> = std::iter::from_fn(|| a.core.poll_event()).collect();
    assert!(a.core.send_capacity(second).unwrap() > 0);
    assert!(
        events.contains(&Event::CreditFreed),
        "the waiting session is never woken: {events:?}"
    );
}

/// What packing did is credited to the frame's session and to the tunnel; a note for a
/// session that already ended counts for the tunnel only (it brings no entry back), and a
/// thousand sessions that come and go leave nothing behind.
#[test]
fn packing_notes_are_credited_per_session_and_go_with_the_session() {
    use crate::transform::{PackFigures, PackNote, PackOutcome};
    let note = |id: SessionId, outcome, len| PackNote {
        session: id,
        figures: PackFigures::packed(outcome, len, 1000),
    };
    let packed = |n| PackOutcome::Packed {
        codec: crate::protocol::packed::Codec::Zstd,
        plain: 65536,
        packed: n,
    };
    let mut a = End::new(Side::Dialer, limits());
    let mut b = End::new(Side::Acceptor, limits());
    let text = open_pair(&mut a, &mut b);
    let random = open_pair(&mut a, &mut b);
    a.core.note_packing(note(text, packed(20000), 65536));
    a.core.note_packing(note(text, packed(12000), 65536));
    a.core
        .note_packing(note(random, PackOutcome::Skipped, 65536));
    let by_id = |core: &TunnelCore, id| {
        core.snapshot()
            .into_iter()
            .find(|s| s.id == id)
            .map(|s| s.packing)
    };
    let t = by_id(&a.core, text).unwrap();
    assert_eq!(
        (
            t.bytes_in,
            t.bytes_out,
            t.frames_packed,
            t.frames_skipped,
            t.pack_ns
        ),
        (131072, 32000, 2, 0, 2000)
    );
    let r = by_id(&a.core, random).unwrap();
    assert_eq!(
        (r.bytes_in, r.bytes_out, r.frames_skipped),
        (65536, 65536, 1)
    );
    let mut sum = PackFigures::default();
    a.core.snapshot().iter().for_each(|s| sum.add(&s.packing));
    assert_eq!(&sum, a.core.packing(), "sessions add up to the tunnel");
    assert!((a.core.packing().ratio().unwrap() - 97536.0 / 196608.0).abs() < 1e-9);

    // The receiving side credits what unpacking cost to the same session id.
    b.core.note_packing(PackNote {
        session: text,
        figures: PackFigures::unpacked(500),
    });
    assert_eq!(by_id(&b.core, text).unwrap().unpack_ns, 500);
    assert_eq!(by_id(&b.core, text).unwrap().ratio(), None);

    // The session ends; a late note (a frame sealed after) counts for the tunnel only.
    a.core
        .reset(random, crate::protocol::ResetReason::ConnectionReset);
    a.drain_events();
    while let Some(m) = a.control.pop_front() {
        deliver(&mut b, m);
    }
    a.core.note_packing(note(random, PackOutcome::Skipped, 100));
    assert_eq!(by_id(&a.core, random), None);
    assert_eq!(a.core.packing().bytes_in, 196708);
    assert_eq!(a.core.session_count(), 1);

    for _ in 0..1000 {
        let id = open_pair(&mut a, &mut b);
        a.core.note_packing(note(id, PackOutcome::Plain, 10));
        a.core
            .reset(id, crate::protocol::ResetReason::ConnectionReset);
        a.drain_events();
        while let Some(m) = a.control.pop_front() {
            deliver(&mut b, m);
        }
    }
    assert_eq!(b.core.session_count(), 1, "b saw them end too");
    assert_eq!(a.core.session_count(), 1, "only `text` is left");
    assert_eq!(a.core.snapshot().len(), 1);
    assert_eq!(a.core.packing().bytes_in, 196708 + 10_000);
}

/// A peer's violation names the session and what was wrong, as a value a
/// caller can match on; the session is reset and counted, the tunnel goes on.
#[test]
fn a_violation_is_typed_and_resets_only_its_session() {
    let (mut a, mut b) = ends();
    let id = open_pair(&mut a, &mut b);
    let other = open_pair(&mut a, &mut b);
    let err = a.core.handle_message(Message::Ack {
        session: id,
        offset: 5,
    });
    assert_eq!(
        err,
        Err(PeerError::Violation {
            session: id,
            why: Violation::AckBeyondSent { offset: 5, sent: 0 },
        })
    );
    assert_eq!(
        err.unwrap_err().to_string(),
        format!("session {id}: ack of offset 5 beyond the 0 bytes sent")
    );
    // An accept for a session the peer itself opened (b has not answered it yet).
    let theirs = SessionId(1000);
    b.core
        .handle_message(Message::Open {
            session: theirs,
            target: "192.0.2.1:5000".parse().unwrap(),
            window: 10,
        })
        .unwrap();
    let err = b.core.handle_message(Message::Accept {
        session: theirs,
        window: 10,
    });
    assert_eq!(
        err,
        Err(PeerError::Violation {
            session: theirs,
            why: Violation::AcceptForPeersSession,
        })
    );
    assert_eq!(a.core.counters().protocol_errors, 1);
    assert_eq!(a.core.session_count(), 1);
    assert!(a.core.send_capacity(other).is_ok());
}

#[test]
fn a_capped_tunnel_waits_for_its_tokens_and_says_when() {
    // The driver pulls, finds only capped work, arms `poll_timeout`, and at
    // that time is told (FramesReady) to pull again; the cap holds.
    let (mut a, mut b) = ends();
    let rate = 10 * limits().frame_len as u64; // ten frames a second
    a.core.set_shares(SharePolicy {
        link_rate: Some(rate),
        ..Default::default()
    });
    let origin = Origin {
        source: Some([10, 0, 0, 1].into()),
        ingress: Some(0),
    };
    let id = open_pair_from(&mut a, &mut b, origin);
    let mut now = 1;
    let mut sent = 0u64;
    while now < 2_000_000 {
        let room = a.core.send_capacity(id).unwrap() as usize;
        a.core.write(id, Bytes::from(vec![1u8; room])).unwrap();
        a.drain_events();
        match a.core.poll_frame(now, 0) {
            Some(f) => {
                sent += f.payload.len() as u64;
                // The peer got it at once: only the cap holds the sender.
                let ack = Message::Ack {
                    session: id,
                    offset: f.offset + f.payload.len() as u64,
                };
                a.core.handle_message(ack).unwrap();
            }
            None => {
                let at = a
                    .core
                    .poll_timeout()
                    .expect("a wake-up for the capped work");
                assert!(at > now);
                now = at;
                a.events.clear();
                a.core.handle_timeout(now);
                a.drain_events();
                assert!(a.events.contains(&Event::FramesReady), "{:?}", a.events);
            }
        }
    }
    let burst = (rate * 4 / 1000).max(limits().frame_len as u64);
    let frame = limits().frame_len as u64;
    assert!(sent <= 2 * rate + burst + frame, "sent {sent} in 2 s");
    assert!(sent >= 2 * rate - frame, "sent {sent} in 2 s");
    let groups = a.core.groups(now);
    assert_eq!(groups.len(), 1);
    assert_eq!(groups[0].key.source, origin.source);
    assert_eq!(groups[0].sent, sent);
    assert!(groups[0].rate > 0 && groups[0].rate <= rate + frame);
}

#[test]
fn a_flow_left_waiting_for_tokens_is_woken_after_another_flow_pulled() {
    // Flow 0 pulls, finds the cap empty and waits for FramesReady; before
    // the driver's timer fires, flow 1 (just writable again) pulls once and
    // gets a frame. Flow 0 must still be woken: a driver whose flows wait
    // for FramesReady would otherwise leave it idle until flow 1 pulls
    // again (seen with a tight pacing bucket: the kernel datapath's source
    // reader waited 20-435 ms for flows to take frames).
    let (mut a, mut b) = ends();
    let frame = limits().frame_len as u64;
    let rate = 10 * frame; // ten frames a second
    a.core.set_shares(SharePolicy {
        link_rate: Some(rate),
        ..Default::default()
    });
    let id = open_pair(&mut a, &mut b);
    let room = a.core.send_capacity(id).unwrap() as usize;
    a.core.write(id, Bytes::from(vec![1u8; room])).unwrap();
    let mut now = 1;
    while a.core.poll_frame(now, 0).is_some() {}
    assert!(a.core.throttled());
    let wake = a.core.poll_timeout().expect("flow 0 waits for a wake-up");
    // Flow 1 pulls once its tokens are back, before the timer has fired.
    now = wake;
    assert!(a.core.poll_frame(now, 1).is_some(), "tokens are back");
    a.drain_events();
    a.events.clear();
    let wake = a
        .core
        .poll_timeout()
        .expect("flow 0 still waits: it needs a wake-up");
    a.core.handle_timeout(wake.max(now));
    a.drain_events();
    assert!(a.events.contains(&Event::FramesReady), "{:?}", a.events);
}

/// One second of a tunnel whose single flow takes frames while it holds
/// less than `room` and whose path delivers `rate` bytes per second with a
/// 20 ms round trip; returns the most the flow held and what the path
/// delivered over the last of three seconds.
fn paced_path(pace: bool, rate: u64, room: u64) -> (u64, u64) {
    use crate::session::pacer::FlowProgress;
    let (mut a, mut b) = (
        End::new(Side::Dialer, Limits::default()),
        End::new(Side::Acceptor, Limits::default()),
    );
    a.core.set_shares(SharePolicy {
        pace_tunnel: pace,
        ..Default::default()
    });
    let id = open_pair(&mut a, &mut b);
    let (mut sent, mut delivered) = (0u64, 0u64);
    let (mut most_held, mut delivered_at_2s) = (0u64, 0u64);
    for ms in 1..=3000u64 {
        let now = ms * 1000;
        let room_now = a.core.send_capacity(id).unwrap() as usize;
        if room_now > 0 {
            a.core.write(id, Bytes::from(vec![7u8; room_now])).unwrap();
        }
        if a.core.poll_timeout().is_some_and(|t| t <= now) {
            a.core.handle_timeout(now);
        }
        while sent - delivered < room {
            let Some(f) = a.core.poll_frame(now, 0) else {
                break;
            };
            sent += f.payload.len() as u64;
            let end = f.offset + f.payload.len() as u64;
            // The far gateway's ack: the session's window never binds here.
            a.core
                .handle_message(Message::Ack {
                    session: id,
                    offset: end,
                })
                .unwrap();
        }
        delivered = sent.min(delivered + rate / 1000);
        if a.core.flow_progress_due(now) {
            let progress = FlowProgress {
                delivered,
                min_rtt_us: Some(20_000),
                srtt_us: None,
                outstanding: sent - delivered,
                sent,
                retransmitted: 0,
            };
            a.core.note_flow_progress(now, [(0, progress)]);
        }
        a.drain_events();
        a.events.clear();
        if ms == 2000 {
            delivered_at_2s = delivered;
        }
        if ms > 2000 {
            most_held = most_held.max(sent - delivered);
        }
    }
    (most_held, delivered - delivered_at_2s)
}

#[test]
fn a_paced_tunnel_holds_about_one_bdp_and_keeps_the_path_full() {
    let rate = 50_000_000; // 400 Mbit/s
    let bdp = rate / 50; // 20 ms: 1 MB
    let room = 8 * bdp; // what the flows' own congestion control would take
    let (held, moved) = paced_path(false, rate, room);
    assert!(
        held >= room - bdp,
        "unpaced, the flow fills its room: {held}"
    );
    assert!(moved >= rate * 99 / 100, "{moved}");
    let (held, moved) = paced_path(true, rate, room);
    assert!(
        held <= bdp * 3 / 2,
        "paced: at most 1.5 BDP held, got {held}"
    );
    assert!(
        moved >= rate * 9 / 10,
        "paced, the path stays full: {moved}"
    );
}

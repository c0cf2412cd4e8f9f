//! Compressed and plain frames of one session, across flows, with resends and duplicates: the
//! byte stream arrives exactly. Each data frame takes its real path from core to core:
//!
//! ```text
//! TunnelCore::poll_frame(k) ─► Sealing of flow k (packs if its peer unpacks, by its policy;
//!   key updates) ─► records on flow k, in order ─► Opening of flow k (bounded unpack)
//!   ─► TunnelCore::handle_message ─► read
//! ```
//!
//! Flows differ in what they pack: zstd, lz4, `auto`'s start, zero runs only (a peer that
//! unpacks nothing else), nothing (a peer from before compression, or packing off). A flow
//! that dies loses what it carried (the core resends it on the others, packed or not as
//! *their* peer allows) and comes back with new keys; a frame may also be sealed again on
//! another flow (a duplicate).

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant as Clock};

use bytes::{Bytes, BytesMut};
use proptest::prelude::*;
use proptest::strategy::ValueTree;

use super::super::*;
use crate::crypto::{Opened, Opening, RecordOpener, RekeyPolicy, Sealing, RECORD_HEADER_LEN};
use crate::protocol::packed::CodecSet;
use crate::protocol::{DataFrame, Message, SessionId};
use crate::transform::{Choice, Compression, PackPolicy};

const FLOWS: usize = 3;

/// What one flow's sender packs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Packing {
    Zstd(i32),
    Lz4,
    /// `compression = "auto"` (its first rung; nothing adapts here).
    Auto,
    /// The peer unpacks zero runs only: zero frames packed, the rest plain.
    ZeroOnly,
    /// The peer unpacks nothing (a gateway from before compression): plain frames.
    PeerWithoutCodecs,
    /// `compression = "off"`: no packing stage at all.
    Off,
}

/// One data flow: a TCP connection's two record directions and what is on the wire.
struct Flow {
    packing: Packing,
    rekey_after: u64,
    /// Connections this flow has had (each one has its own keys).
    generation: u8,
    sealing: Sealing,
    opening: Opening,
    policy: Arc<PackPolicy>,
    /// Sealed records in flight, oldest first (TCP keeps their order).
    wire: VecDeque<BytesMut>,
}

impl Flow {
    fn new(index: usize, packing: Packing, rekey_after: u64, generation: u8) -> Flow {
        let key = [index as u8 + 1, generation, 0x5a]
            .into_iter()
            .cycle()
            .take(32)
            .collect::<Vec<u8>>()
            .try_into()
            .expect("32 bytes");
        let policy = RekeyPolicy {
            after_bytes: rekey_after,
            after: Duration::from_secs(3600),
        };
        let mode = match packing {
            Packing::Zstd(level) => Compression::Fixed(Choice::Zstd(level)),
            Packing::Lz4 => Compression::Fixed(Choice::Lz4),
            Packing::Auto => Compression::Auto,
            Packing::ZeroOnly | Packing::PeerWithoutCodecs => Compression::Fixed(Choice::Zstd(1)),
            Packing::Off => Compression::Off,
        };
        let pack = Arc::new(PackPolicy::new(mode));
        let sealing = Sealing::new(&key, policy, Clock::now());
        let sealing = match packing {
            Packing::Off => sealing,
            Packing::ZeroOnly => sealing.with_packing(CodecSet(0b001), pack.clone()),
            Packing::PeerWithoutCodecs => sealing.with_packing(CodecSet(0), pack.clone()),
            _ => sealing.with_packing(CodecSet::SUPPORTED, pack.clone()),
        };
        Flow {
            packing,
            rekey_after,
            generation,
            sealing,
            opening: Opening::new(&key).with_stats(pack.clone()),
            policy: pack,
            wire: VecDeque::new(),
        }
    }

    /// Seals `frame` onto the wire, one entry per record (a key update is a record too).
    fn seal(&mut self, frame: DataFrame) {
        let mut out = Vec::new();
        // What packing did is counted elsewhere; this harness only needs the records.
        let _sealed = self
            .sealing
            .seal(&Message::Data(frame), &mut out, Clock::now())
            .expect("sealing a data frame");
        let mut rest = &out[..];
        while !rest.is_empty() {
            let header: [u8; RECORD_HEADER_LEN] = rest[..RECORD_HEADER_LEN].try_into().unwrap();
            let len = RECORD_HEADER_LEN + RecordOpener::body_len(header).unwrap();
            self.wire.push_back(BytesMut::from(&rest[..len]));
            rest = &rest[len..];
        }
    }

    /// The connection died: what was on the wire is lost; a new one has new keys.
    fn reconnect(&mut self, index: usize) {
        let packed = self.frames_packed();
        *self = Flow::new(
            index,
            self.packing,
            self.rekey_after,
            self.generation.wrapping_add(1),
        );
        // Keep the count across connections (the test reports what was packed in all).
        self.policy
            .stats
            .frames_packed
            .store(packed, std::sync::atomic::Ordering::Relaxed);
    }

    fn frames_packed(&self) -> u64 {
        self.policy
            .stats
            .frames_packed
            .load(std::sync::atomic::Ordering::Relaxed)
    }
}

#[derive(Debug, Clone)]
enum Op {
    /// Flow k takes the core's next frame and seals it.
    Pull(usize),
    /// Flow k's oldest record arrives and is opened.
    Deliver(usize),
    /// Flow k dies with what it carries; the core resends that on any flow.
    Kill(usize),
    /// The n-th frame sent so far (mod their number) is sealed again on flow k.
    Duplicate {
        nth: usize,
        flow: usize,
    },
    /// Control messages both ways (opens, acks, fin).
    Control,
    Read,
    Tick,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => (0..FLOWS).prop_map(Op::Pull),
        6 => (0..FLOWS).prop_map(Op::Deliver),
        1 => (0..FLOWS).prop_map(Op::Kill),
        1 => (any::<usize>(), 0..FLOWS).prop_map(|(nth, flow)| Op::Duplicate { nth, flow }),
        2 => Just(Op::Control),
        2 => Just(Op::Read),
        1 => Just(Op::Tick),
    ]
}

fn packed_kind() -> impl Strategy<Value = Packing> {
    prop_oneof![
        (-3i32..4).prop_map(Packing::Zstd),
        Just(Packing::Lz4),
        Just(Packing::Auto)
    ]
}

fn plain_kind() -> impl Strategy<Value = Packing> {
    prop_oneof![
        Just(Packing::ZeroOnly),
        Just(Packing::PeerWithoutCodecs),
        Just(Packing::Off)
    ]
}

/// A guest-memory-like stream: runs of zeros, text, random bytes.
fn payload() -> impl Strategy<Value = Vec<u8>> {
    proptest::collection::vec((0u8..3, 1usize..20_000, any::<u64>()), 1..16).prop_map(|runs| {
        let mut out = Vec::new();
        for (kind, len, seed) in runs {
            let mut x = seed | 1;
            let mut next = move || {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x
            };
            match kind {
                0 => out.resize(out.len() + len, 0),
                1 => {
                    const WORDS: [&str; 8] = [
                        "dirty ", "page ", "0x7f3a ", "vcpu ", "bitmap ", "ram ", "=\n", "the ",
                    ];
                    let start = out.len();
                    while out.len() < start + len {
                        out.extend_from_slice(WORDS[next() as usize % 8].as_bytes());
                    }
                    out.truncate(start + len);
                }
                _ => out.extend((0..len).map(|_| next() as u8)),
            }
        }
        out
    })
}

/// The two cores, the flows between them, and what the test watches.
struct Link {
    a: TunnelCore,
    b: TunnelCore,
    flows: Vec<Flow>,
    id: SessionId,
    /// What the source has not written into `a` yet.
    pending: Bytes,
    fin_written: bool,
    /// Every frame `a` handed to a flow, for duplicates.
    sent: Vec<DataFrame>,
    frames_sealed: u64,
    received: Vec<u8>,
    finished: bool,
    now: Instant,
}

impl Link {
    fn new(data: &[u8], packing: [Packing; FLOWS], rekey_after: u64, frame_len: usize) -> Link {
        let limits = Limits {
            session_window: 256 << 10,
            global_buffer: 512 << 10,
            unsent_buffer: 64 << 10,
            unsent_time_us: crate::session::unsent::UNSENT_TIME_US,
            receive_budget: 1 << 20,
            frame_len,
            max_sessions: 4,
            ack_every: 16 << 10,
            ack_delay_us: 100,
        };
        let mut a = TunnelCore::new(Side::Dialer, limits.clone(), FLOWS);
        let id = a
            .open("192.0.2.1:5000".parse().unwrap(), Origin::default())
            .unwrap();
        Link {
            a,
            b: TunnelCore::new(Side::Acceptor, limits, FLOWS),
            flows: (0..FLOWS)
                .map(|k| Flow::new(k, packing[k], rekey_after, 0))
                .collect(),
            id,
            pending: Bytes::copy_from_slice(data),
            fin_written: false,
            sent: Vec::new(),
            frames_sealed: 0,
            received: Vec::new(),
            finished: false,
            now: 0,
        }
    }

    fn drain_events(&mut self) {
        while self.a.poll_event().is_some() {}
        while let Some(e) = self.b.poll_event() {
            if let Event::ConnectRequested { session, .. } = e {
                self.b.accept(session).unwrap();
            }
        }
    }

    /// The source writes what the core takes, then `op`.
    fn step(&mut self, op: &Op) -> Result<(), TestCaseError> {
        while !self.pending.is_empty() {
            let room = self.a.send_capacity(self.id).unwrap_or(0) as usize;
            let n = room.min(self.pending.len()).min(5000);
            if n == 0 {
                break;
            }
            self.a.write(self.id, self.pending.split_to(n)).unwrap();
        }
        if self.pending.is_empty() && !self.fin_written && self.a.finish(self.id).is_ok() {
            self.fin_written = true;
        }
        self.drain_events();
        match *op {
            Op::Pull(k) => {
                if let Some(f) = self.a.poll_frame(self.now, k) {
                    self.sent.push(f.clone());
                    self.flows[k].seal(f);
                    self.frames_sealed += 1;
                }
            }
            Op::Deliver(k) => {
                let Some(mut record) = self.flows[k].wire.pop_front() else {
                    return Ok(());
                };
                let body = record.split_off(RECORD_HEADER_LEN);
                let header = record[..].try_into().unwrap();
                let opened = self.flows[k].opening.open(header, body);
                let msg = match opened {
                    Ok(Opened { msg: Some(msg), .. }) => msg,
                    Ok(Opened { msg: None, .. }) => return Ok(()), // a key update
                    Err(e) => return Err(TestCaseError::fail(format!("flow {k} record: {e}"))),
                };
                prop_assert!(matches!(msg, Message::Data(_)), "{:?}", msg);
                match self.b.handle_message(msg) {
                    // A duplicate that arrives after the session ended.
                    Ok(()) | Err(PeerError::UnknownSession(_)) => {}
                    Err(e) => prop_assert!(false, "the receiver refused a frame: {}", e),
                }
            }
            Op::Kill(k) => {
                self.flows[k].reconnect(k);
                self.a.flow_lost(k);
                self.b.flow_lost(k);
            }
            Op::Duplicate { nth, flow } => {
                if !self.sent.is_empty() {
                    let f = self.sent[nth % self.sent.len()].clone();
                    self.flows[flow].seal(f);
                    self.frames_sealed += 1;
                }
            }
            Op::Control => {
                while let Some(m) = self.a.poll_control() {
                    let _ = self.b.handle_message(m);
                }
                self.drain_events();
                while let Some(m) = self.b.poll_control() {
                    let _ = self.a.handle_message(m);
                }
            }
            Op::Read => {
                while !self.finished {
                    match self.b.read(self.now, self.id) {
                        Ok(ReadOutcome::Data(d)) => self.received.extend_from_slice(&d),
                        Ok(ReadOutcome::Finished) => {
                            self.finished = true;
                            // The destination closes its side once the source is done.
                            let _ = self.b.finish(self.id);
                        }
                        Ok(ReadOutcome::Blocked) | Err(_) => break,
                    }
                }
                // The source's side reads the destination's end (nothing else comes back).
                while let Ok(out) = self.a.read(self.now, self.id) {
                    match out {
                        ReadOutcome::Data(d) => prop_assert!(false, "{} bytes back", d.len()),
                        ReadOutcome::Finished | ReadOutcome::Blocked => break,
                    }
                }
            }
            Op::Tick => {
                self.now += 1000;
                self.a.handle_timeout(self.now);
                self.b.handle_timeout(self.now);
            }
        }
        self.drain_events();
        Ok(())
    }

    /// Runs `ops`, then lets everything settle with no more faults.
    fn run(&mut self, ops: &[Op]) -> Result<(), TestCaseError> {
        for op in ops {
            self.step(op)?;
        }
        for _ in 0..10_000 {
            for k in 0..FLOWS {
                self.step(&Op::Pull(k))?;
                while !self.flows[k].wire.is_empty() {
                    self.step(&Op::Deliver(k))?;
                }
            }
            for op in [Op::Control, Op::Read, Op::Tick, Op::Control] {
                self.step(&op)?;
            }
            if self.a.session_count() == 0 && self.b.session_count() == 0 {
                break;
            }
        }
        Ok(())
    }

    fn frames_packed(&self) -> u64 {
        self.flows.iter().map(Flow::frames_packed).sum()
    }

    /// The stream arrived exactly, ended, and both cores forgot the session.
    fn check(&self, data: &[u8]) -> Result<(), TestCaseError> {
        prop_assert_eq!(self.received.len(), data.len());
        let first = self.received.iter().zip(data).position(|(x, y)| x != y);
        prop_assert_eq!(first, None, "the stream differs from byte {:?}", first);
        prop_assert!(self.finished, "the receiver never saw the end");
        prop_assert_eq!(self.a.session_count(), 0);
        prop_assert_eq!(self.b.session_count(), 0);
        prop_assert_eq!(self.a.buffered(), 0);
        Ok(())
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(128))]

    #[test]
    fn packed_and_plain_frames_across_flows_with_resends_and_duplicates_reassemble_exactly(
        data in payload(),
        packed in packed_kind(),
        plain in plain_kind(),
        third in prop_oneof![packed_kind(), plain_kind()],
        rotate in 0usize..FLOWS,
        rekey_after in prop_oneof![Just(u64::MAX), 20_000u64..200_000],
        frame_len in prop_oneof![Just(700usize), Just(4096), 4097usize..20_000, Just(65_536)],
        ops in proptest::collection::vec(op(), 0..600),
    ) {
        let mut packing = [packed, plain, third];
        packing.rotate_left(rotate);
        let mut link = Link::new(&data, packing, rekey_after, frame_len);
        link.run(&ops)?;
        link.check(&data)?;
    }
}

/// One run with each fault at least once, and proof that the property test's path packs: some
/// frames went packed, some plain, some were resent after a flow died, some arrived twice.
#[test]
fn a_known_run_packs_resends_and_duplicates() {
    let runner = &mut proptest::test_runner::TestRunner::deterministic();
    let data = payload().new_tree(runner).unwrap().current();
    let mut guest = vec![0u8; 100_000];
    guest.extend(
        b"migration of the dirty page bitmap\n"
            .iter()
            .cycle()
            .take(100_000),
    );
    guest.extend(&data);
    let packing = [Packing::Zstd(1), Packing::PeerWithoutCodecs, Packing::Lz4];
    let mut link = Link::new(&guest, packing, 50_000, 8192);
    let mut ops = Vec::new();
    for round in 0..40 {
        ops.extend((0..FLOWS).map(Op::Pull));
        // Flow 0 delivers only half of what it carries before it dies.
        ops.push(Op::Deliver(0));
        ops.extend([Op::Deliver(1), Op::Deliver(2), Op::Control, Op::Read]);
        if round % 10 == 9 {
            ops.push(Op::Kill(0));
            ops.push(Op::Duplicate {
                nth: round,
                flow: 1,
            });
            ops.push(Op::Duplicate {
                nth: round * 7,
                flow: 2,
            });
        }
    }
    link.run(&ops).unwrap();
    link.check(&guest).unwrap();
    let packed = link.frames_packed();
    assert!(packed > 0, "no frame was packed");
    assert!(packed < link.frames_sealed, "no frame went plain");
    assert!(link.a.counters().resent_bytes > 0, "nothing was resent");
    assert!(
        link.b.counters().duplicate_bytes_in > 0,
        "nothing arrived twice"
    );
}

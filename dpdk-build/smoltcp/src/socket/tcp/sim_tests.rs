//! (LMAS) Two sockets over a simulated long, lossy, rate-limited path, on a simulated clock:
//! the transfer must arrive byte-exact, and with `Rack` + BBR it must keep most of the link
//! busy where the classic sender collapses. Deterministic (seeded), so the goodput figures
//! are properties of the code, not of the machine.

use std::collections::VecDeque;
use std::vec::Vec;

use super::*;
use crate::iface::Context;
use crate::wire::{IpCidr, Ipv4Address, Ipv4Repr};

const A_ADDR: Ipv4Address = Ipv4Address::new(192, 168, 1, 1);
const B_ADDR: Ipv4Address = Ipv4Address::new(127, 0, 0, 1);
const A_PORT: u16 = 40000;
const B_PORT: u16 = 7700;

/// A segment on the wire, with its payload owned.
struct Wire {
    at: i64,
    to_b: bool,
    repr: OwnedRepr,
}

struct OwnedRepr {
    src_port: u16,
    dst_port: u16,
    control: TcpControl,
    seq_number: TcpSeqNumber,
    ack_number: Option<TcpSeqNumber>,
    window_len: u16,
    window_scale: Option<u8>,
    max_seg_size: Option<u16>,
    sack_permitted: bool,
    sack_ranges: [Option<(u32, u32)>; 3],
    payload: Vec<u8>,
}

impl OwnedRepr {
    fn new(r: &TcpRepr) -> OwnedRepr {
        OwnedRepr {
            src_port: r.src_port,
            dst_port: r.dst_port,
            control: r.control,
            seq_number: r.seq_number,
            ack_number: r.ack_number,
            window_len: r.window_len,
            window_scale: r.window_scale,
            max_seg_size: r.max_seg_size,
            sack_permitted: r.sack_permitted,
            sack_ranges: r.sack_ranges,
            payload: r.payload.to_vec(),
        }
    }

    fn repr(&self) -> TcpRepr<'_> {
        TcpRepr {
            src_port: self.src_port,
            dst_port: self.dst_port,
            control: self.control,
            seq_number: self.seq_number,
            ack_number: self.ack_number,
            window_len: self.window_len,
            window_scale: self.window_scale,
            max_seg_size: self.max_seg_size,
            sack_permitted: self.sack_permitted,
            sack_ranges: self.sack_ranges,
            timestamp: None,
            payload: &self.payload,
        }
    }
}

/// One direction of the path: a rate-limited queue, then a fixed delay; random loss.
struct Link {
    bytes_per_sec: u64,
    delay_us: i64,
    queue_limit: usize,
    loss_per_million: u64,
    free_at: i64,
    dropped: u64,
}

impl Link {
    /// When a packet of `len` bytes entering at `now` arrives, or `None` if it is lost.
    fn carry(&mut self, now: i64, len: usize, rng: &mut u64) -> Option<i64> {
        let backlog = ((self.free_at - now).max(0) as u64 * self.bytes_per_sec / 1_000_000) as usize;
        if backlog + len > self.queue_limit || xorshift(rng) % 1_000_000 < self.loss_per_million {
            self.dropped += 1;
            return None;
        }
        let start = self.free_at.max(now);
        self.free_at = start + (len as u64 * 1_000_000 / self.bytes_per_sec) as i64;
        Some(self.free_at + self.delay_us)
    }
}

fn xorshift(x: &mut u64) -> u64 {
    *x ^= *x << 13;
    *x ^= *x >> 7;
    *x ^= *x << 17;
    *x
}

fn context() -> Context {
    let (mut iface, _, _) = crate::tests::setup(crate::phy::Medium::Ip);
    iface.update_ip_addrs(|a| {
        a.clear();
        a.push(IpCidr::new(A_ADDR.into(), 24)).unwrap();
        a.push(IpCidr::new(B_ADDR.into(), 8)).unwrap();
    });
    iface.inner
}

fn pattern(offset: usize) -> u8 {
    (offset.wrapping_mul(2654435761) >> 7) as u8
}

struct Outcome {
    /// Simulated seconds for the transfer, and until half of it had arrived.
    secs: f64,
    half_secs: f64,
    retransmitted: u64,
    /// Segments B received, and segments (ACKs) B sent.
    to_b_pkts: u64,
    to_a_pkts: u64,
}

/// How B takes in packets: as each arrives, or in bursts every `poll_us` (a gateway's
/// poll loop), and whether it batches its immediate ACKs (`set_ack_batching`).
#[derive(Clone, Copy, Default)]
struct Receiver {
    poll_us: i64,
    ack_batching: bool,
}

/// Sends `total` bytes from A to B over `rtt_ms` with `loss` (per million, each way) at
/// `mbit` Mbit/s with a one-BDP queue, and returns when B has them all (checked byte by byte).
fn transfer(rack_bbr: bool, total: usize, rtt_ms: i64, mbit: u64, loss: u64, seed: u64) -> Outcome {
    transfer_to(Receiver::default(), rack_bbr, total, rtt_ms, mbit, loss, seed)
}

fn transfer_to(
    rx: Receiver,
    rack_bbr: bool,
    total: usize,
    rtt_ms: i64,
    mbit: u64,
    loss: u64,
    seed: u64,
) -> Outcome {
    let buf = 16 << 20;
    let bytes_per_sec = mbit * 1_000_000 / 8;
    let bdp = (bytes_per_sec as i64 * rtt_ms / 1000) as usize;
    let link = |loss| Link {
        bytes_per_sec,
        delay_us: rtt_ms * 500,
        queue_limit: bdp.max(64 * 1024),
        loss_per_million: loss,
        free_at: 0,
        dropped: 0,
    };
    let (mut ab, mut ba) = (link(loss), link(loss));
    let mut a = Socket::new(SocketBuffer::new(vec![0; buf]), SocketBuffer::new(vec![0; buf]));
    let mut b = Socket::new(SocketBuffer::new(vec![0; buf]), SocketBuffer::new(vec![0; buf]));
    for s in [&mut a, &mut b] {
        s.set_nagle_enabled(false);
        if rack_bbr {
            s.set_congestion_control(CongestionControl::Bbr);
        } else {
            s.set_congestion_control(CongestionControl::Cubic);
        }
    }
    b.set_ack_batching(rx.ack_batching);
    let (mut cxa, mut cxb) = (context(), context());
    b.listen(B_PORT).unwrap();
    a.connect(
        &mut cxa,
        IpEndpoint::new(B_ADDR.into(), B_PORT),
        IpEndpoint::new(A_ADDR.into(), A_PORT),
    )
    .unwrap();

    let mut rng = seed | 1;
    let mut wire: VecDeque<Wire> = VecDeque::new();
    let (mut written, mut read) = (0usize, 0usize);
    let mut scratch = vec![0u8; 256 * 1024];
    let mut now: i64 = 0;
    let limit_us = 600 * 1_000_000;
    let mut last_print = 0;
    let (mut to_b_pkts, mut to_a_pkts) = (0u64, 0u64);
    // B sees what arrived at its next poll.
    let b_poll = |at: i64| match rx.poll_us {
        0 => at,
        p => (at + p - 1) / p * p,
    };
    let mut half_at = None;
    while read < total {
        assert!(now < limit_us, "no progress: {read} of {total} bytes after 600 s");
        let t = Instant::from_micros(now);
        cxa.set_now(t);
        cxb.set_now(t);
        // Deliver what has arrived; a socket may answer at once.
        while wire.front().is_some_and(|w| w.at <= now) {
            let w = wire.pop_front().unwrap();
            let (sock, cx, src, dst) = if w.to_b {
                (&mut b, &mut cxb, A_ADDR, B_ADDR)
            } else {
                (&mut a, &mut cxa, B_ADDR, A_ADDR)
            };
            let repr = w.repr.repr();
            let ip = IpRepr::Ipv4(Ipv4Repr {
                src_addr: src,
                dst_addr: dst,
                next_header: IpProtocol::Tcp,
                payload_len: repr.buffer_len(),
                hop_limit: 64,
            });
            if !sock.accepts(cx, &ip, &repr) {
                continue;
            }
            if w.to_b {
                to_b_pkts += 1;
            }
            if let Some((_, reply)) = sock.process(cx, &ip, &repr) {
                let link = if w.to_b { &mut ba } else { &mut ab };
                if w.to_b {
                    to_a_pkts += 1;
                }
                if let Some(at) = link.carry(now, reply.buffer_len() + 20, &mut rng) {
                    let at = if w.to_b { at } else { b_poll(at) };
                    insert(&mut wire, Wire { at, to_b: !w.to_b, repr: OwnedRepr::new(&reply) });
                }
            }
        }
        // The applications: A writes the pattern as room allows, B reads and checks.
        while written < total && a.can_send() {
            let n = scratch.len().min(total - written);
            for (k, byte) in scratch[..n].iter_mut().enumerate() {
                *byte = pattern(written + k);
            }
            let sent = a.send_slice(&scratch[..n]).unwrap();
            if sent == 0 {
                break;
            }
            written += sent;
        }
        while b.can_recv() {
            let n = b.recv_slice(&mut scratch).unwrap();
            for (k, &byte) in scratch[..n].iter().enumerate() {
                assert_eq!(byte, pattern(read + k), "byte {} differs", read + k);
            }
            read += n;
            if half_at.is_none() && read >= total / 2 {
                half_at = Some(now);
            }
        }
        // Each socket sends what it may.
        for to_b in [true, false] {
            let (sock, cx, link) = if to_b {
                (&mut a, &mut cxa, &mut ab)
            } else {
                (&mut b, &mut cxb, &mut ba)
            };
            for _ in 0..10_000 {
                let mut out = None;
                let _ = sock.dispatch(cx, |_, _, (_, repr)| {
                    out = Some(OwnedRepr::new(&repr));
                    Ok::<(), ()>(())
                });
                let Some(repr) = out else { break };
                let len = repr.payload.len() + 40;
                if !to_b {
                    to_a_pkts += 1;
                }
                if let Some(at) = link.carry(now, len, &mut rng) {
                    let at = if to_b { b_poll(at) } else { at };
                    insert(&mut wire, Wire { at, to_b, repr });
                }
            }
        }
        // Next: the earliest arrival or socket timer (at least 1 µs on).
        let mut next = wire.front().map_or(i64::MAX, |w| w.at);
        for (sock, cx) in [(&a, &mut cxa), (&b, &mut cxb)] {
            match sock.poll_at(cx) {
                PollAt::Now => next = next.min(now + 1),
                PollAt::Time(t) => next = next.min(t.total_micros()),
                PollAt::Ingress => {}
            }
        }
        now = next.max(now + 1).min(limit_us);
        if std::env::var_os("SIM_TRACE").is_some() && now / 100_000 != last_print {
            last_print = now / 100_000;
            let i = a.sender_info();
            std::println!(
                "t={:.1}s b_pkts={} b_asm={} read={} srtt={:?} min={:?} cwnd={} inflight={} unsent={} pace={:?} bbr={:?} rec={:?} drops ab={} ba={}",
                now as f64 / 1e6, to_b_pkts, b.assembler, read, i.srtt, i.min_rtt, i.cwnd, i.in_flight, i.unsent,
                i.pacing_rate, a.bbr_state(), i.recovery, ab.dropped, ba.dropped
            );
        }
    }
    Outcome {
        secs: now as f64 / 1e6,
        half_secs: half_at.unwrap_or(now) as f64 / 1e6,
        retransmitted: a.sender_info().recovery.map_or(0, |r| r.retransmitted_segments),
        to_b_pkts,
        to_a_pkts,
    }
}

/// Keeps the wire sorted by arrival (links keep order; the two directions interleave).
fn insert(wire: &mut VecDeque<Wire>, w: Wire) {
    let i = wire.partition_point(|x| x.at <= w.at);
    wire.insert(i, w);
}

fn goodput_mbit(total: usize, o: &Outcome) -> f64 {
    total as f64 * 8.0 / o.secs / 1e6
}

/// Goodput of the second half: a warm flow, as a tunnel's long-lived flows are.
fn warm_goodput_mbit(total: usize, o: &Outcome) -> f64 {
    (total - total / 2) as f64 * 8.0 / (o.secs - o.half_secs) / 1e6
}

#[test]
fn rack_bbr_fills_a_long_lossy_path() {
    // 100 Mbit/s, RTT 100 ms, 1 % loss each way (ACKs too), 48 MB: the warm half at ≥ 85 %
    // of the link (TCP/IP headers take 2.7 %).
    let total = 48 << 20;
    let o = transfer(true, total, 100, 100, 10_000, 7);
    let mbit = warm_goodput_mbit(total, &o);
    assert!(mbit > 85.0, "warm goodput {mbit:.1} Mbit/s of 100");
    assert!(o.retransmitted > 0);
}

#[test]
fn rack_bbr_without_loss_is_not_slower_than_cubic() {
    let total = 32 << 20;
    let bbr = transfer(true, total, 50, 100, 0, 3);
    let cubic = transfer(false, total, 50, 100, 0, 3);
    let (bbr_all, cubic_all) = (goodput_mbit(total, &bbr), goodput_mbit(total, &cubic));
    let bbr_warm = warm_goodput_mbit(total, &bbr);
    assert!(bbr_warm > 90.0, "bbr warm {bbr_warm:.1} Mbit/s");
    assert!(bbr_all >= cubic_all * 0.9, "bbr {bbr_all:.1} vs cubic {cubic_all:.1} Mbit/s");
}

#[test]
fn classic_sender_collapses_where_rack_does_not() {
    // The reason for the patch, kept as a test: same path, same loss.
    let total = 8 << 20;
    let rack = goodput_mbit(total, &transfer(true, total, 100, 100, 10_000, 11));
    let classic = goodput_mbit(total, &transfer(false, total, 100, 100, 10_000, 11));
    assert!(rack > 3.0 * classic, "rack {rack:.1} vs classic {classic:.1} Mbit/s");
}

#[test]
fn batched_acks_halve_the_receivers_packets_under_loss() {
    // B polled every 250 µs (≈ 2 segments per poll at 100 Mbit/s): every segment after a
    // hole gets its own ACK unless B batches them; batched, the transfer is as fast.
    let total = 32 << 20;
    let polled = |ack_batching| Receiver { poll_us: 250, ack_batching };
    let each = transfer_to(polled(false), true, total, 100, 100, 10_000, 7);
    let batched = transfer_to(polled(true), true, total, 100, 100, 10_000, 7);
    let acks = |o: &Outcome| o.to_a_pkts as f64 / o.to_b_pkts as f64;
    let (each_mbit, batched_mbit) = (warm_goodput_mbit(total, &each), warm_goodput_mbit(total, &batched));
    assert!(acks(&each) > 0.8, "an ACK per segment: {:.2} per segment", acks(&each));
    assert!(acks(&batched) < 0.6, "batched: {:.2} ACKs per segment", acks(&batched));
    assert!(batched_mbit > 85.0, "batched warm goodput {batched_mbit:.1} Mbit/s of 100");
    assert!(batched_mbit > 0.95 * each_mbit, "batched {batched_mbit:.1} vs each {each_mbit:.1} Mbit/s");
}

#[test]
fn heavy_loss_still_delivers_every_byte() {
    // 5 % loss each way: slow, but exact.
    transfer(true, 2 << 20, 40, 50, 50_000, 5);
}

#[test]
#[ignore]
fn trace() {
    let env = |k: &str, d: u64| std::env::var(k).map_or(d, |v| v.parse().unwrap());
    let total = (env("SIM_MB", 48) as usize) << 20;
    let o = transfer(
        env("SIM_CLASSIC", 0) == 0,
        total,
        env("SIM_RTT", 100) as i64,
        env("SIM_MBIT", 100),
        env("SIM_LOSS", 10_000),
        7,
    );
    std::println!(
        "goodput {:.1}, warm {:.1}",
        goodput_mbit(total, &o),
        warm_goodput_mbit(total, &o)
    );
}

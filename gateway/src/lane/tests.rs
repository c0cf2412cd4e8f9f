//! Two lane ends over a simulated WAN: delay each way, random loss.

use std::collections::{BTreeSet, VecDeque};

use proptest::prelude::*;

use super::*;

const MS: u64 = 1_000;

fn keys() -> (LaneKeys, LaneKeys) {
    let a = LaneKeys::derive(&[1; 32], &[2; 32]);
    let b = LaneKeys::derive(&[2; 32], &[1; 32]);
    (a, b)
}

/// Frame `n`: its number first, then a pattern.
fn frame(n: u64, len: usize) -> Vec<u8> {
    let mut f: Vec<u8> = (0..len).map(|i| (i as u64 * 7 + n * 13) as u8).collect();
    f[..8].copy_from_slice(&n.to_be_bytes());
    f
}

/// A one-way path: datagrams arrive `delay` later unless the loss draw drops them.
struct Path {
    delay: u64,
    /// Loss in parts per 100,000.
    loss: u64,
    rng: u64,
    queue: VecDeque<(Instant, Vec<u8>)>,
    dropped: u64,
}

impl Path {
    fn new(delay: u64, loss: u64, seed: u64) -> Self {
        Path {
            delay,
            loss,
            rng: seed | 1,
            queue: VecDeque::new(),
            dropped: 0,
        }
    }

    fn send(&mut self, now: Instant, datagram: &[u8]) {
        self.rng ^= self.rng << 13;
        self.rng ^= self.rng >> 7;
        self.rng ^= self.rng << 17;
        if self.rng % 100_000 < self.loss {
            self.dropped += 1;
            return;
        }
        self.queue.push_back((now + self.delay, datagram.to_vec()));
    }

    fn arrived(&mut self, now: Instant) -> Option<Vec<u8>> {
        if self.queue.front().is_some_and(|(t, _)| *t <= now) {
            return self.queue.pop_front().map(|(_, d)| d);
        }
        None
    }
}

/// Sends `frames` frames from a to b, one per `gap` µs, then runs until
/// everything is acked or lost. Returns (frames b rebuilt, tokens a lost, a, b).
fn run(
    frames: u64,
    gap: u64,
    loss: u64,
    seed: u64,
    config: LaneConfig,
) -> (BTreeSet<u64>, BTreeSet<u64>, Lane<u64>, Lane<u64>) {
    let (ka, kb) = keys();
    let mut a: Lane<u64> = Lane::new(&ka, config);
    let mut b: Lane<u64> = Lane::new(&kb, config);
    let mut ab = Path::new(50 * MS, loss, seed);
    let mut ba = Path::new(50 * MS, loss, seed.wrapping_mul(3));
    let (mut rebuilt, mut lost) = (BTreeSet::new(), BTreeSet::new());
    let mut next = 0u64;
    let mut now = 0;
    let end = frames * gap + 5_000 * MS;
    while now < end {
        if next < frames && now >= next * gap {
            let mut out = Vec::new();
            let len = 2_000 + (next as usize * 977) % 64_000;
            let size = a
                .send_frame(now, &frame(next, len), next, &mut out)
                .unwrap();
            for d in out.chunks(size) {
                ab.send(now, d);
            }
            next += 1;
        }
        while let Some(mut d) = ab.arrived(now) {
            if let Some(f) = b.handle_datagram(now, &mut d).unwrap() {
                let n = u64::from_be_bytes(f[..8].try_into().unwrap());
                assert_eq!(f, frame(n, f.len()), "frame {n} whole");
                assert!(rebuilt.insert(n), "frame {n} rebuilt twice");
            }
        }
        while let Some(ack) = b.poll_ack(now).unwrap() {
            ba.send(now, &ack);
        }
        while let Some(mut d) = ba.arrived(now) {
            assert_eq!(a.handle_datagram(now, &mut d).unwrap(), None);
        }
        a.handle_timeout(now);
        while let Some(t) = a.poll_lost() {
            assert!(lost.insert(t));
        }
        if next == frames && a.outstanding() == 0 && ab.queue.is_empty() && ba.queue.is_empty() {
            break;
        }
        now += 100;
    }
    (rebuilt, lost, a, b)
}

#[test]
fn without_loss_every_frame_is_rebuilt_and_acked_and_none_is_lost() {
    let (rebuilt, lost, a, b) = run(200, 500, 0, 1, LaneConfig::default());
    assert_eq!(rebuilt.len(), 200);
    assert!(lost.is_empty());
    let p = a.progress();
    assert_eq!(p.delivered, p.sent);
    assert_eq!(p.outstanding, 0);
    let rtt = p.min_rtt_us.unwrap();
    assert!((100 * MS..=102 * MS).contains(&rtt), "rtt {rtt}");
    assert_eq!(b.counters().receiver.repaired, 0);
    assert_eq!(b.counters().refused, 0);
}

#[test]
fn one_percent_loss_is_repaired_by_parity_without_a_round_trip() {
    let (rebuilt, lost, _, b) = run(300, 500, 1_000, 7, LaneConfig::default());
    assert_eq!(rebuilt.len() + lost.len(), 300);
    let c = b.counters().receiver;
    assert!(c.repaired > 50, "frames that needed parity: {}", c.repaired);
    assert!(lost.len() <= 3, "lost: {lost:?}");
}

#[test]
fn a_group_missing_more_than_its_parity_is_lost_once_a_later_one_is_acked_or_after_a_probe_wait() {
    let (ka, kb) = keys();
    let config = LaneConfig {
        max_shard: 100,
        parity: 2,
    };
    let mut a: Lane<&str> = Lane::new(&ka, config);
    let mut b: Lane<&str> = Lane::new(&kb, config);
    let deliver = |a: &mut Lane<&str>, b: &mut Lane<&str>, now, name, drop: usize| {
        let mut out = Vec::new();
        let size = a.send_frame(now, &frame(1, 1000), name, &mut out).unwrap();
        let mut got = None;
        for mut d in out.chunks(size).skip(drop).map(<[u8]>::to_vec) {
            got = got.or(b.handle_datagram(now + 50 * MS, &mut d).unwrap());
        }
        let ack = b.poll_ack(now + 50 * MS + ACK_MS).unwrap();
        if let Some(mut ack) = ack {
            a.handle_datagram(now + 100 * MS + ACK_MS, &mut ack)
                .unwrap();
        }
        got
    };
    const ACK_MS: u64 = MS;
    // Measures the round trip: 100 ms.
    assert!(deliver(&mut a, &mut b, 0, "first", 0).is_some());
    // Three of twelve shards lost: the frame cannot be rebuilt.
    assert!(deliver(&mut a, &mut b, 200 * MS, "second", 3).is_none());
    assert_eq!(a.outstanding(), 1000);
    // Nothing after it acked: it may be the receiver that is behind. Two samples of 100
    // ms: the variation is 50 ms × 3/4, four times that 150 ms, after two round trips.
    assert_eq!(a.poll_timeout(), Some(200 * MS + 200 * MS + 150 * MS));
    // A later group acked: a round trip and a quarter after it went, it is lost.
    assert!(deliver(&mut a, &mut b, 210 * MS, "third", 0).is_some());
    let deadline = a.poll_timeout().unwrap();
    assert_eq!(deadline, 200 * MS + 100 * MS + 25 * MS);
    a.handle_timeout(deadline - 1);
    assert_eq!(a.poll_lost(), None);
    a.handle_timeout(deadline);
    assert_eq!(a.poll_lost(), Some("second"));
    assert_eq!(a.outstanding(), 0);
    // The next group's floor tells b to give the lost one up.
    assert_eq!(b.receiver.open_bytes(), 12 * 100);
    assert!(deliver(&mut a, &mut b, 400 * MS, "fourth", 0).is_some());
    assert_eq!(b.receiver.open_bytes(), 0);
    assert_eq!(b.counters().receiver.abandoned, 1);
    // The last group of a burst lost, nothing after it: the probe wait.
    assert!(deliver(&mut a, &mut b, 600 * MS, "fifth", 3).is_none());
    let srtt_and_var = a.poll_timeout().unwrap() - 600 * MS;
    assert!(srtt_and_var > 200 * MS, "{srtt_and_var}");
    a.handle_timeout(600 * MS + srtt_and_var);
    assert_eq!(a.poll_lost(), Some("fifth"));
}

#[test]
fn forged_replayed_and_foreign_datagrams_are_refused_and_change_nothing() {
    let (ka, kb) = keys();
    let mut a: Lane<u8> = Lane::new(&ka, LaneConfig::default());
    let mut b: Lane<u8> = Lane::new(&kb, LaneConfig::default());
    let mut stranger: Lane<u8> =
        Lane::new(&LaneKeys::derive(&[9; 32], &[9; 32]), LaneConfig::default());
    let mut out = Vec::new();
    let size = a.send_frame(0, &frame(0, 3000), 0, &mut out).unwrap();
    let shards: Vec<Vec<u8>> = out.chunks(size).map(<[u8]>::to_vec).collect();
    let mut forged = shards[0].clone();
    *forged.last_mut().unwrap() ^= 1;
    assert!(matches!(
        b.handle_datagram(1, &mut forged),
        Err(LaneError::Seal(SealError::Authentication(0)))
    ));
    let mut foreign = Vec::new();
    let fsize = stranger
        .send_frame(0, &frame(0, 3000), 0, &mut foreign)
        .unwrap();
    for mut d in foreign.chunks(fsize).map(<[u8]>::to_vec) {
        assert!(b.handle_datagram(1, &mut d).is_err());
    }
    assert!(b.handle_datagram(1, &mut [0x01; 10]).is_err());
    assert!(b.handle_datagram(1, &mut []).is_err());
    let mut first = shards[0].clone();
    assert_eq!(b.handle_datagram(1, &mut first).unwrap(), None);
    let mut again = shards[0].clone();
    assert!(matches!(
        b.handle_datagram(1, &mut again),
        Err(LaneError::Seal(SealError::Replayed(0)))
    ));
    let mut got = None;
    for mut d in shards[1..].iter().cloned() {
        got = got.or(b.handle_datagram(2, &mut d).unwrap());
    }
    assert_eq!(got, Some(frame(0, 3000)));
    // The forgery, the stranger's datagrams, the two scraps and the repeat.
    assert_eq!(
        b.counters().refused,
        1 + (foreign.len() / fsize) as u64 + 2 + 1
    );
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(24))]

    /// Nothing lost: under any loss each way, every frame is rebuilt at the far end or
    /// handed back as lost at the near one (the session layer sends it again), never neither.
    #[test]
    fn every_frame_is_rebuilt_or_reported_lost(
        loss in 0u64..8_000,
        seed in any::<u64>(),
        parity in 0u8..6,
    ) {
        let config = LaneConfig { max_shard: 1400, parity };
        let (rebuilt, lost, a, b) = run(120, 800, loss, seed, config);
        for n in 0..120 {
            prop_assert!(rebuilt.contains(&n) || lost.contains(&n), "frame {} vanished", n);
        }
        prop_assert_eq!(a.outstanding(), 0);
        prop_assert!(b.receiver.open_bytes() <= receiver::MAX_OPEN_BYTES);
    }
}

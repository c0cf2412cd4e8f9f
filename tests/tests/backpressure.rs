//! Bounded memory and real backpressure (DESIGN invariant 2): when the target stops reading,
//! the gateways stop reading from the source instead of buffering the stream.
//!
//! Needs the release binary: `cargo build --release -p lmas` (or `LMAS_BIN`).

use std::io::Read;
use std::net::Shutdown;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::Duration;

use lmas_tests::{connect, join, recv_all, send_all, serve_once, Counting, Pair, PairSpec};

#[test]
fn stalled_target_stalls_the_source_and_bounds_gateway_memory() {
    let len = 512u64 << 20;
    let pause = Duration::from_secs(4);
    // The target accepts, reads nothing for `pause`, then reads everything.
    let (target, server) = serve_once(Duration::from_secs(30), move |mut s| {
        thread::sleep(pause);
        recv_all(&mut s)
    });
    let spec = PairSpec {
        session_window_bytes: Some(4 << 20),
        global_buffer_bytes: Some(32 << 20),
        ..PairSpec::to_target(4, target)
    };
    let mut pair = Pair::start(&spec);
    let progress = Arc::new(AtomicU64::new(0));
    let s = connect(pair.ingress[0]).expect("connect ingress");
    let counter = progress.clone();
    let source = thread::spawn(move || {
        let mut w = Counting {
            inner: s.try_clone()?,
            count: counter,
        };
        let sent = send_all(&mut w, len, 9)?;
        s.shutdown(Shutdown::Write)?;
        let mut r = s;
        recv_all(&mut r)?;
        Ok(sent)
    });
    // Near the end of the pause: what has the source got rid of, what do the gateways hold?
    thread::sleep(pause - Duration::from_millis(700));
    let stalled_at = progress.load(Ordering::Relaxed);
    let rss_a = pair.a.peak_rss_kib().unwrap_or(0);
    let rss_b = pair.b.peak_rss_kib().unwrap_or(0);
    eprintln!(
        "target paused: source had written {:.1} MiB; peak RSS gw-a {:.1} MiB, gw-b {:.1} MiB",
        stalled_at as f64 / 1048576.0,
        rss_a as f64 / 1024.0,
        rss_b as f64 / 1024.0
    );
    let sent = join(source).expect("source");
    let got = join(server).expect("target");
    assert_eq!(got.bytes, len, "bytes at the target after the stall");
    assert_eq!(
        got.sha256, sent.sha256,
        "SHA-256 at the target after the stall"
    );
    // Kernel socket buffers (source, ingress, data flows, egress) hold some tens of MiB; with
    // a 4 MiB session window and a 32 MiB global buffer the source must be far from done.
    assert!(
        stalled_at < 128 << 20,
        "the source wrote {stalled_at} bytes while the target read nothing: no backpressure"
    );
    for (name, kib) in [("gw-a", rss_a), ("gw-b", rss_b)] {
        assert!(
            kib < 160 * 1024,
            "{name} peak RSS {kib} KiB while the target was stalled (global_buffer_bytes = 32 MiB)"
        );
    }
    pair.assert_running();
}

/// The same in the other direction: the target sends, the source stops reading.
#[test]
fn stalled_source_reader_stalls_the_target_and_bounds_gateway_memory() {
    let len = 512u64 << 20;
    let pause = Duration::from_secs(4);
    let progress = Arc::new(AtomicU64::new(0));
    let counter = progress.clone();
    let (target, server) = serve_once(Duration::from_secs(30), move |s| {
        let mut w = Counting {
            inner: s.try_clone()?,
            count: counter,
        };
        let sent = send_all(&mut w, len, 10)?;
        s.shutdown(Shutdown::Write)?;
        let mut r = s;
        recv_all(&mut r)?;
        Ok(sent)
    });
    let spec = PairSpec {
        session_window_bytes: Some(4 << 20),
        global_buffer_bytes: Some(32 << 20),
        ..PairSpec::to_target(4, target)
    };
    let mut pair = Pair::start(&spec);
    let mut c = connect(pair.ingress[0]).expect("connect ingress");
    thread::sleep(pause);
    let stalled_at = progress.load(Ordering::Relaxed);
    let rss_a = pair.a.peak_rss_kib().unwrap_or(0);
    let rss_b = pair.b.peak_rss_kib().unwrap_or(0);
    eprintln!(
        "source not reading: target had written {:.1} MiB; peak RSS gw-a {:.1} MiB, gw-b {:.1} MiB",
        stalled_at as f64 / 1048576.0,
        rss_a as f64 / 1024.0,
        rss_b as f64 / 1024.0
    );
    let got = recv_all(&mut c).expect("source: read everything after the pause");
    c.shutdown(Shutdown::Write).expect("shutdown");
    let sent = join(server).expect("target");
    assert_eq!(got.bytes, len);
    assert_eq!(got.sha256, sent.sha256);
    assert!(
        stalled_at < 128 << 20,
        "the target wrote {stalled_at} bytes while the source read nothing: no backpressure"
    );
    for (name, kib) in [("gw-a", rss_a), ("gw-b", rss_b)] {
        assert!(
            kib < 160 * 1024,
            "{name} peak RSS {kib} KiB while the source was stalled"
        );
    }
    pair.assert_running();
}

/// A session whose target stops reading must not hold up another session on the same tunnel
/// (no head-of-line blocking across sessions; DESIGN invariants 2 and 4).
#[test]
fn a_stalled_session_does_not_block_another() {
    let stall = Duration::from_secs(12);
    // Session 1: a target that reads nothing for `stall`, then drains.
    let (stalled, server) = serve_once(Duration::from_secs(30), move |mut s| {
        thread::sleep(stall);
        recv_all(&mut s)
    });
    let sink = lmas_tests::Sink::start();
    let spec = PairSpec {
        ingress: vec![stalled.to_string(), sink.addr().to_string()],
        egress_allow: vec![stalled.to_string(), sink.addr().to_string()],
        session_window_bytes: Some(4 << 20),
        global_buffer_bytes: Some(32 << 20),
        ..PairSpec::default()
    };
    let mut pair = Pair::start(&spec);
    let ingress1 = pair.ingress[0];
    let blocked = thread::spawn(move || lmas_tests::send(ingress1, 256 << 20, 11));
    // Let session 1 fill whatever it can.
    thread::sleep(Duration::from_secs(2));
    let start = std::time::Instant::now();
    let sent = lmas_tests::send(pair.ingress[1], 64 << 20, 12)
        .unwrap_or_else(|e| panic!("second session while the first is stalled: {e}"));
    let took = start.elapsed();
    let got = sink.recv(Duration::from_secs(30));
    assert_eq!(got.sha256, sent.sha256);
    eprintln!("64 MiB on session 2 while session 1 is stalled: {took:?}");
    assert!(
        took < stall - Duration::from_secs(4),
        "session 2 took {took:?}: it waited for the stalled session 1"
    );
    let s1 = blocked
        .join()
        .expect("thread")
        .expect("session 1 after its stall");
    assert_eq!(join(server).expect("stalled target").sha256, s1.sha256);
    pair.assert_running();
}

/// The destination stops reading for 20 s in the middle of a transfer (issue 5): the source is
/// back-pressured (what gw-a accepts stops growing), both gateways' memory stays within the
/// session window plus a small constant, and once the destination reads again the stream
/// arrives intact.
#[test]
fn destination_stalled_for_20s_backpressures_the_source_with_bounded_memory() {
    const MIB: u64 = 1 << 20;
    let len = 256 * MIB;
    let window = 2 * MIB;
    let stall = Duration::from_secs(20);
    let (target, server) = serve_once(Duration::from_secs(30), move |mut s| {
        // Read a little first, so the stall is mid-transfer.
        let mut first = vec![0u8; 1 << 20];
        s.read_exact(&mut first)?;
        thread::sleep(stall);
        recv_all(&mut first.as_slice().chain(s))
    });
    let spec = PairSpec {
        session_window_bytes: Some(window),
        global_buffer_bytes: Some(4 * window),
        ..PairSpec::to_target(4, target)
    };
    let mut pair = Pair::start(&spec);
    let base_a = pair.a.rss_kib().expect("gw-a RSS");
    let base_b = pair.b.rss_kib().expect("gw-b RSS");
    let progress = Arc::new(AtomicU64::new(0));
    let s = connect(pair.ingress[0]).expect("connect ingress");
    let counter = progress.clone();
    let started = std::time::Instant::now();
    let source = thread::spawn(move || {
        let mut w = Counting {
            inner: s.try_clone()?,
            count: counter,
        };
        let sent = send_all(&mut w, len, 13)?;
        s.shutdown(Shutdown::Write)?;
        let mut r = s;
        recv_all(&mut r)?;
        Ok(sent)
    });
    // Kernel socket buffers fill within the first seconds; after that nothing may move.
    thread::sleep(Duration::from_secs(6));
    let early = progress.load(Ordering::Relaxed);
    thread::sleep(stall - Duration::from_secs(7));
    let late = progress.load(Ordering::Relaxed);
    let peak_a = pair.a.peak_rss_kib().expect("gw-a peak RSS");
    let peak_b = pair.b.peak_rss_kib().expect("gw-b peak RSS");
    eprintln!(
        "destination stalled: source wrote {:.1} MiB after 6 s, {:.1} MiB after {:?}; \
         RSS gw-a {:.1} -> peak {:.1} MiB, gw-b {:.1} -> peak {:.1} MiB (window {} MiB)",
        early as f64 / MIB as f64,
        late as f64 / MIB as f64,
        started.elapsed(),
        base_a as f64 / 1024.0,
        peak_a as f64 / 1024.0,
        base_b as f64 / 1024.0,
        peak_b as f64 / 1024.0,
        window / MIB
    );
    let sent = join(source).expect("source");
    let got = join(server).expect("target");
    assert_eq!(got.bytes, len, "bytes at the target after the stall");
    assert_eq!(
        got.sha256, sent.sha256,
        "SHA-256 at the target after a 20 s stall"
    );
    assert!(
        late - early < MIB,
        "the source kept writing while the destination was stalled ({early} bytes at 6 s, \
         {late} at 19 s): no backpressure"
    );
    assert!(
        late < 64 * MIB,
        "the source wrote {late} bytes while the destination read 1 MiB: no backpressure"
    );
    // The session window twice over (send buffer at gw-a, reorder buffer at gw-b, or both in
    // flight) plus a small constant (record buffers, per-flow state, allocator slack); without
    // backpressure this would be the 256 MiB of the stream.
    let bound_kib = (2 * window / 1024) + 8 * 1024;
    for (name, base, peak) in [("gw-a", base_a, peak_a), ("gw-b", base_b, peak_b)] {
        assert!(
            peak.saturating_sub(base) < bound_kib,
            "{name}: peak RSS {peak} KiB, {} KiB above its idle {base} KiB, while the \
             destination was stalled (session window {window} B; bound {bound_kib} KiB)",
            peak.saturating_sub(base)
        );
    }
    pair.assert_running();
}

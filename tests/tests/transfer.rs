//! Byte-exact transfer through a gateway pair: bulk, concurrent, bidirectional, half-close.
//!
//! Needs the release binary: `cargo build --release -p lmas` (or `LMAS_BIN`). Best run with
//! `cargo test --release -p lmas-tests` (hashing 512 MiB in a debug build takes a while).

use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::thread;
use std::time::{Duration, Instant};

use lmas_tests::{
    connect, duplex, join, recv_all, send, send_all, serve_once, set_timeouts, Pair, PairSpec, Sink,
};

const SINK_WAIT: Duration = Duration::from_secs(60);

#[test]
fn one_session_512_mib() {
    let sink = Sink::start();
    let mut pair = Pair::start(&PairSpec::to_target(8, sink.addr()));
    let len = 512u64 << 20;
    let sent = send(pair.ingress[0], len, 1).expect("send 512 MiB through the pair");
    let got = sink.recv(SINK_WAIT);
    assert_eq!(got.bytes, len, "byte count at the target");
    assert_eq!(got.sha256, sent.sha256, "SHA-256 at the target");
    eprintln!(
        "512 MiB through the pair (8 flows): {:.2} s, {:.0} Mbit/s",
        sent.secs,
        sent.mbit_s()
    );
    pair.assert_running();
}

#[test]
fn thirty_two_concurrent_sessions() {
    let sink = Sink::start();
    let mut pair = Pair::start(&PairSpec::to_target(8, sink.addr()));
    let ingress = pair.ingress[0];
    // Sizes from 0 bytes to ~8 MiB, odd ones included.
    let sizes: Vec<u64> = (0..32u64)
        .map(|i| match i {
            0 => 0,
            1 => 1,
            2 => 4095,
            3 => 65_537,
            _ => (i * 1_048_573 + i * i * 7_919) % (8 << 20) + 1,
        })
        .collect();
    let handles: Vec<_> = sizes
        .iter()
        .enumerate()
        .map(|(i, &len)| thread::spawn(move || send(ingress, len, 1000 + i as u64)))
        .collect();
    let mut sent: Vec<(u64, String)> = Vec::new();
    for (i, h) in handles.into_iter().enumerate() {
        let s = h
            .join()
            .expect("source thread")
            .unwrap_or_else(|e| panic!("session {i} ({} bytes): {e}", sizes[i]));
        sent.push((s.bytes, s.sha256));
    }
    let mut got: Vec<(u64, String)> = (0..sizes.len())
        .map(|_| {
            let r = sink.recv(SINK_WAIT);
            (r.bytes, r.sha256)
        })
        .collect();
    sent.sort();
    got.sort();
    assert_eq!(
        got, sent,
        "what the target received vs what the sources sent"
    );
    assert!(
        sink.try_recv(Duration::from_millis(200)).is_none(),
        "the target saw more connections than sessions"
    );
    pair.assert_running();
}

#[test]
fn both_directions_at_once_on_one_session() {
    let (target, server) = serve_once(Duration::from_secs(30), |s| duplex(&s, 48 << 20, 2));
    let mut pair = Pair::start(&PairSpec::to_target(4, target));
    let c = connect(pair.ingress[0]).expect("connect ingress");
    let (c_sent, c_got) = duplex(&c, 64 << 20, 1).expect("client side of the duplex session");
    let (s_sent, s_got) = join(server).expect("target side of the duplex session");
    assert_eq!(s_got.bytes, c_sent.bytes, "bytes source -> target");
    assert_eq!(s_got.sha256, c_sent.sha256, "SHA-256 source -> target");
    assert_eq!(c_got.bytes, s_sent.bytes, "bytes target -> source");
    assert_eq!(c_got.sha256, s_sent.sha256, "SHA-256 target -> source");
    pair.assert_running();
}

/// The source sends, shuts down its write side, and only then the target (having seen EOF)
/// replies; the source must get the whole reply and then EOF.
#[test]
fn half_close_source_first() {
    for (req, reply) in [(5u64 << 20, 3u64 << 20), (0, 1000)] {
        let (target, server) = serve_once(Duration::from_secs(30), move |mut s| {
            let got = recv_all(&mut s)?;
            let sent = send_all(&mut s, reply, 11)?;
            s.shutdown(Shutdown::Write)?;
            let tail = recv_all(&mut s)?;
            Ok((got, sent, tail))
        });
        let mut pair = Pair::start(&PairSpec::to_target(4, target));
        let mut c = connect(pair.ingress[0]).expect("connect ingress");
        let c_sent = send_all(&mut c, req, 10).expect("send request");
        c.shutdown(Shutdown::Write).expect("shutdown(Write)");
        let start = Instant::now();
        let c_got = recv_all(&mut c).unwrap_or_else(|e| {
            panic!("source: reading the reply after its own half-close ({req} bytes sent): {e}")
        });
        drop(c);
        let (s_got, s_sent, tail) = join(server).expect("target side");
        assert_eq!(s_got.bytes, req, "request bytes at the target");
        assert_eq!(s_got.sha256, c_sent.sha256, "request SHA-256 at the target");
        assert_eq!(
            c_got.bytes, reply,
            "reply bytes at the source after half-close"
        );
        assert_eq!(c_got.sha256, s_sent.sha256, "reply SHA-256 at the source");
        assert_eq!(tail.bytes, 0);
        eprintln!(
            "half-close source first ({req} B request): reply in {:?}",
            start.elapsed()
        );
        pair.assert_running();
    }
}

/// The target sends and shuts down its write side first; the source reads to EOF, then sends
/// its part, which the target must still receive.
#[test]
fn half_close_target_first() {
    for (first, second) in [(5u64 << 20, 3u64 << 20), (0, 1000)] {
        let (target, server) = serve_once(Duration::from_secs(30), move |mut s| {
            let sent = send_all(&mut s, first, 20)?;
            s.shutdown(Shutdown::Write)?;
            let got = recv_all(&mut s)?;
            Ok((sent, got))
        });
        let mut pair = Pair::start(&PairSpec::to_target(4, target));
        let mut c = connect(pair.ingress[0]).expect("connect ingress");
        let c_got = recv_all(&mut c).expect("source: read the target's data to EOF");
        let c_sent = send_all(&mut c, second, 21)
            .unwrap_or_else(|e| panic!("source: sending after the target's half-close: {e}"));
        c.shutdown(Shutdown::Write).expect("shutdown(Write)");
        let tail = recv_all(&mut c).expect("source: wait for the close");
        assert_eq!(tail.bytes, 0);
        let (s_sent, s_got) = join(server).expect("target side");
        assert_eq!(c_got.bytes, first, "bytes target -> source");
        assert_eq!(c_got.sha256, s_sent.sha256, "SHA-256 target -> source");
        assert_eq!(
            s_got.bytes, second,
            "bytes source -> target after the target's half-close"
        );
        assert_eq!(s_got.sha256, c_sent.sha256, "SHA-256 source -> target");
        pair.assert_running();
    }
}

/// The extremes of `wan.data_flows`: 1 and 64.
#[test]
fn one_and_sixty_four_data_flows() {
    for flows in [1u32, 64] {
        let sink = Sink::start();
        let mut pair = Pair::start(&PairSpec::to_target(flows, sink.addr()));
        let sent = send(pair.ingress[0], 64 << 20, u64::from(flows))
            .unwrap_or_else(|e| panic!("data_flows = {flows}: {e}"));
        let got = sink.recv(SINK_WAIT);
        assert_eq!(
            got.sha256, sent.sha256,
            "data_flows = {flows}: SHA-256 at the target"
        );
        pair.assert_running();
    }
}

/// Many short sessions one after another (session set-up and tear-down, no leak of state).
#[test]
fn three_hundred_short_sessions_in_a_row() {
    let sink = Sink::start();
    let mut pair = Pair::start(&PairSpec::to_target(4, sink.addr()));
    let rss_before = pair.a.peak_rss_kib();
    for i in 0..300u64 {
        let len = (i * 7919) % (64 << 10);
        let sent = send(pair.ingress[0], len, i).unwrap_or_else(|e| panic!("session {i}: {e}"));
        let got = sink.recv(SINK_WAIT);
        assert_eq!(
            (got.bytes, got.sha256),
            (sent.bytes, sent.sha256),
            "session {i}"
        );
    }
    eprintln!(
        "gw-a peak RSS before/after 300 sessions: {rss_before:?} / {:?} KiB",
        pair.a.peak_rss_kib()
    );
    pair.assert_running();
}

/// Sends `len` bytes through a pair whose connections move to a new key every `rekey_mib`
/// MiB (key-update records): the stream must arrive intact, and gw-a must log at least
/// `min_updates` key updates.
fn transfer_with_key_updates(flows: u32, rekey_mib: u64, len: u64, min_updates: usize) {
    let sink = Sink::start();
    let mut spec = PairSpec::to_target(flows, sink.addr());
    spec.wan_extra = vec![format!("rekey_after_bytes = {}", rekey_mib << 20)];
    let mut pair = Pair::start(&spec);
    let sent = send(pair.ingress[0], len, 41).expect("send through rotating keys");
    let got = sink.recv(Duration::from_secs(120));
    assert_eq!(got.bytes, len);
    assert_eq!(
        got.sha256, sent.sha256,
        "SHA-256 with key updates every {rekey_mib} MiB"
    );
    let updates = pair.a.count_lines(&["key update"]);
    eprintln!(
        "{len} bytes, key updates every {rekey_mib} MiB: {:.1} s, {updates} at gw-a",
        sent.secs
    );
    assert!(
        updates >= min_updates,
        "expected >= {min_updates} key updates at gw-a, saw {updates}\n{}",
        pair.logs()
    );
    pair.assert_running();
}

/// Keys rotate every MiB on every connection while 256 MiB cross.
#[test]
fn forced_key_updates_during_a_transfer() {
    transfer_with_key_updates(4, 1, 256 << 20, 100);
}

/// The size issue 5 names: 1 GiB with keys rotating every 4 MiB (a few seconds on loopback).
#[test]
fn forced_key_updates_1_gib_soak() {
    transfer_with_key_updates(8, 4, 1 << 30, 200);
}

/// Sessions reach the target in the order their connections reached gateway A: QEMU before 8.0
/// tells its multifd channels from the main migration stream by the order it accepts them, so
/// a gateway pair that connects the target concurrently can swap them and fail the migration.
#[test]
fn sessions_reach_the_target_in_connect_order() {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind the target");
    listener.set_nonblocking(true).expect("nonblocking");
    let mut pair = Pair::start(&PairSpec::to_target(
        8,
        listener.local_addr().expect("addr"),
    ));
    const N: u8 = 16;
    for round in 0..5 {
        // Each client connects (gateway A accepts at once) and names itself in its first byte.
        let clients: Vec<TcpStream> = (0..N)
            .map(|i| {
                let mut s = connect(pair.ingress[0]).expect("connect to gateway A");
                s.write_all(&[i]).expect("first byte");
                s
            })
            .collect();
        let deadline = Instant::now() + SINK_WAIT;
        let mut order = Vec::new();
        while order.len() < usize::from(N) {
            match listener.accept() {
                Ok((mut s, _)) => {
                    s.set_nonblocking(false).expect("blocking");
                    set_timeouts(&s).expect("timeouts");
                    let mut b = [0u8];
                    s.read_exact(&mut b).expect("first byte at the target");
                    order.push(b[0]);
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => {
                    assert!(
                        Instant::now() < deadline,
                        "round {round}: only {order:?} arrived"
                    );
                    thread::sleep(Duration::from_millis(2));
                }
                Err(e) => panic!("accept at the target: {e}"),
            }
        }
        assert_eq!(
            order,
            (0..N).collect::<Vec<_>>(),
            "round {round}: accept order at the target"
        );
        drop(clients);
    }
    pair.assert_running();
}

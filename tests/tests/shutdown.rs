//! SIGTERM: a gateway stops accepting, refuses the peer's new sessions, lets running sessions
//! finish (byte-exact) within `gateway.drain_timeout_secs`, resets what is still running at the
//! deadline at BOTH ends (telling the peer, which does not hold the session for its grace
//! period), and exits 0. A second SIGTERM cuts the drain short.
//!
//! Needs the release binary: `cargo build --release -p lmas` (or `LMAS_BIN`).

use std::io;
use std::net::TcpStream;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use lmas_tests::{
    expect_closed, paced_send, recv_all, serve_once, wait_progress, Gateway, Pair, PairSpec,
    Received, Sent, Sink,
};

const MIB: u64 = 1 << 20;
const LOG_WAIT: Duration = Duration::from_secs(10);

type Source = JoinHandle<(io::Result<Sent>, Instant)>;
/// How the target's connection ended (`Ok`: clean EOF, `Err`: reset), and when.
type Target = JoinHandle<io::Result<(io::Result<Received>, Instant)>>;

/// A paced source through `ingress` that has written 2 MiB when this returns.
fn running_source(
    ingress: std::net::SocketAddr,
    len: u64,
    rate_mib: f64,
) -> (Source, Arc<AtomicU64>) {
    let progress = Arc::new(AtomicU64::new(0));
    let source = paced_send(
        None,
        ingress,
        len,
        91,
        rate_mib * MIB as f64,
        progress.clone(),
    );
    wait_progress(&progress, 2 * MIB, Duration::from_secs(20)).expect("source started");
    (source, progress)
}

/// A target that reads one connection to its end: `Ok` = clean EOF, `Err` = reset. Also when.
fn target() -> (std::net::SocketAddr, Target) {
    serve_once(Duration::from_secs(30), |mut s| {
        let r = recv_all(&mut s);
        Ok((r, Instant::now()))
    })
}

#[test]
fn sigterm_drains_a_running_session_to_completion() {
    let sink = Sink::start();
    let mut pair = Pair::start(&PairSpec::to_target(4, sink.addr()));
    let len = 24 * MIB;
    let (source, progress) = running_source(pair.ingress[0], len, 8.0);

    pair.a
        .signal(libc::SIGTERM)
        .unwrap_or_else(|e| panic!("{e}"));
    pair.a
        .wait_for_log("SIGTERM: shutting down: stopped accepting", LOG_WAIT)
        .unwrap_or_else(|e| panic!("{e}"));
    let line = pair
        .a
        .wait_for_log("draining 1 session(s) for up to 30s", LOG_WAIT)
        .unwrap_or_else(|e| panic!("{e}"));
    eprintln!("gw-a: {line}");
    assert!(
        progress.load(Ordering::Relaxed) < len,
        "the session ended before SIGTERM: the test proves nothing"
    );
    // The ingress no longer accepts.
    match TcpStream::connect_timeout(&pair.ingress[0], Duration::from_secs(5)) {
        Err(e) => eprintln!("new connection during the drain: {e}"),
        Ok(_) => panic!("gw-a accepted a connection while draining"),
    }

    let (sent, _) = source.join().expect("source thread");
    let sent = sent.unwrap_or_else(|e| panic!("the draining session failed: {e}\n{}", pair.logs()));
    let got = sink.recv(Duration::from_secs(30));
    assert_eq!(got.bytes, len);
    assert_eq!(got.sha256, sent.sha256, "SHA-256 of the drained session");

    exits_cleanly(&mut pair.a, "the drain");
    assert!(pair.a.find_line(&["all sessions finished after"]).is_some());
    assert!(pair.a.find_line(&["gateway gw-a stopped"]).is_some());
    assert!(
        pair.a.find_line(&["reset"]).is_none(),
        "{}",
        pair.a.log_tail(20)
    );
    assert_eq!(pair.b.counter("sessions_reset"), Ok(0));
}

#[test]
fn sigterm_on_the_accepting_side_refuses_new_sessions_and_drains() {
    let sink = Sink::start();
    let spec = PairSpec {
        drain_timeout_secs: Some(60),
        ..PairSpec::to_target(4, sink.addr())
    };
    let mut pair = Pair::start(&spec);
    let len = 24 * MIB;
    let (source, _) = running_source(pair.ingress[0], len, 8.0);

    pair.b
        .signal(libc::SIGTERM)
        .unwrap_or_else(|e| panic!("{e}"));
    pair.b
        .wait_for_log("draining 1 session(s) for up to 60s", LOG_WAIT)
        .unwrap_or_else(|e| panic!("{e}"));
    // A new session through A is refused by B with reason "shutting down".
    let (how, took) = expect_closed(pair.ingress[0], Duration::from_secs(5))
        .unwrap_or_else(|e| panic!("a new session while the peer drains: {e}"));
    eprintln!("new session while gw-b drains: {how:?} after {took:?}");
    pair.a
        .wait_for_line(
            &[
                &format!("peer refused target {}", sink.addr()),
                "gateway shutting down",
            ],
            LOG_WAIT,
        )
        .unwrap_or_else(|e| panic!("{e}"));
    pair.b
        .wait_for_line(&["refusing target", "gateway shutting down"], LOG_WAIT)
        .unwrap_or_else(|e| panic!("{e}"));

    let (sent, _) = source.join().expect("source thread");
    let sent = sent.unwrap_or_else(|e| panic!("the draining session failed: {e}\n{}", pair.logs()));
    let got = sink.recv(Duration::from_secs(30));
    assert_eq!(got.sha256, sent.sha256, "SHA-256 of the drained session");
    exits_cleanly(&mut pair.b, "the drain");
}

/// Checks that a session cut by gw-a's shutdown was reset at both ends promptly: the target
/// behind gw-b saw a reset (not a clean end), gw-b logged and counted the peer's reset and
/// holds nothing, and the source saw its connection fail.
fn assert_reset_at_both_ends(pair: &mut Pair, target: Target, source: Source, cut_at: Instant) {
    let (at_target, when) = lmas_tests::join(target).expect("target thread");
    match at_target {
        Err(e) => eprintln!("target saw: {e} ({:?} after the cut)", when - cut_at),
        Ok(r) => panic!(
            "the target saw a clean end after {} bytes: a truncated stream",
            r.bytes
        ),
    }
    // Far below gw-b's grace period (60 s): gw-b was told, it did not wait for the tunnel.
    assert!(
        when.saturating_duration_since(cut_at) < Duration::from_secs(10),
        "the target's connection outlived gw-a's reset by {:?}",
        when - cut_at
    );
    let line = pair
        .b
        .wait_for_line(&["reset by peer gw-a", "gateway shutting down"], LOG_WAIT)
        .unwrap_or_else(|e| panic!("{e}"));
    eprintln!("gw-b: {line}");
    assert_eq!(pair.b.counter("sessions_reset"), Ok(1));
    let status = pair.b.status().unwrap_or_else(|e| panic!("{e}"));
    let held = status["tunnel"]["sessions"].as_array().map_or(0, Vec::len);
    assert_eq!(held, 0, "gw-b still holds the session: {status:#}");
    let (sent, _) = source.join().expect("source thread");
    assert!(
        sent.is_err(),
        "the source finished although its session was reset"
    );
    assert!(pair.b.is_running(), "gw-b died\n{}", pair.logs());
}

/// A pair (`gateway.drain_timeout_secs` = `drain`) carrying a session from A's ingress to a
/// target behind B that would run for minutes.
fn long_session(drain: u64) -> (Pair, Target, Source) {
    let (target_addr, target) = target();
    let spec = PairSpec {
        drain_timeout_secs: Some(drain),
        ..PairSpec::to_target(4, target_addr)
    };
    let pair = Pair::start(&spec);
    let (source, _) = running_source(pair.ingress[0], 1 << 30, 4.0);
    (pair, target, source)
}

/// Waits (10 s at most) for `g` to exit by itself, with status 0.
fn exits_cleanly(g: &mut Gateway, after: &str) {
    let st = g
        .wait_exit(Duration::from_secs(10))
        .unwrap_or_else(|e| panic!("{} after {after}: {e}", g.name));
    assert!(st.success(), "{} exited with {st} after {after}", g.name);
}

#[test]
fn sigterm_deadline_resets_the_rest_at_both_ends() {
    let (mut pair, target, source) = long_session(2);
    pair.a
        .signal(libc::SIGTERM)
        .unwrap_or_else(|e| panic!("{e}"));
    let line = pair
        .a
        .wait_for_log(
            "drain deadline (2s) reached: reset 1 session(s), telling peer gw-b",
            LOG_WAIT,
        )
        .unwrap_or_else(|e| panic!("{e}"));
    let cut_at = Instant::now();
    eprintln!("gw-a: {line}");
    exits_cleanly(&mut pair.a, "the drain deadline");
    assert!(
        pair.a
            .find_line(&["peer gw-b", "received the resets"])
            .is_some(),
        "{}",
        pair.a.log_tail(10)
    );
    assert_reset_at_both_ends(&mut pair, target, source, cut_at);
}

#[test]
fn a_second_sigterm_stops_at_once() {
    let (mut pair, target, source) = long_session(600);
    pair.a
        .signal(libc::SIGTERM)
        .unwrap_or_else(|e| panic!("{e}"));
    pair.a
        .wait_for_log("draining 1 session(s) for up to 600s", LOG_WAIT)
        .unwrap_or_else(|e| panic!("{e}"));
    let cut_at = Instant::now();
    pair.a
        .signal(libc::SIGTERM)
        .unwrap_or_else(|e| panic!("{e}"));
    exits_cleanly(&mut pair.a, "a second SIGTERM");
    assert!(
        pair.a
            .find_line(&["second SIGTERM: reset 1 session(s), telling peer gw-b"])
            .is_some(),
        "{}",
        pair.a.log_tail(10)
    );
    assert_reset_at_both_ends(&mut pair, target, source, cut_at);
}

//! WAN outages and a remote gateway restart (issue 5; DESIGN invariant 1, "survive a network
//! hiccup"): sessions are held through a blackout shorter than the grace period and arrive
//! byte-exact; past the grace period both ends are reset cleanly with a clear log line; a
//! restarted remote gateway gets its old sessions reset promptly and carries new ones.
//!
//! The blackout cases run gateway A and gateway B in two network namespaces joined by a veth
//! (`lmas_tests::netns::Wan`) and cut it with iptables DROP rules; they need root, `ip` and
//! `iptables`, and print `SKIP: …` otherwise. The source runs in A's namespace, the target in
//! B's. The restart case runs on loopback.
//!
//! Needs the release binary: `cargo build --release -p lmas` (or `LMAS_BIN`).

use std::io::{self, ErrorKind};
use std::net::TcpListener;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use lmas_tests::netns::{self, NetNs, Wan};
use lmas_tests::{paced_send, send, Pair, PairSpec, Sent, Sink};

const MIB: u64 = 1 << 20;

type SourceResult = (io::Result<Sent>, Instant);

fn join_source(h: JoinHandle<SourceResult>) -> SourceResult {
    h.join().expect("source thread panicked")
}

/// Waits until `progress` reaches `at_least` bytes.
fn wait_progress(progress: &AtomicU64, at_least: u64, within: Duration, pair: &Pair) {
    lmas_tests::wait_progress(progress, at_least, within)
        .unwrap_or_else(|e| panic!("source: {e}\n{}", pair.logs()));
}

/// A sink inside `ns`, on its loopback.
fn sink_in(ns: &NetNs) -> Sink {
    let l = ns
        .run(|| TcpListener::bind("127.0.0.1:0"))
        .expect("bind the sink inside the namespace");
    Sink::from_listener(l).expect("sink")
}

fn is_reset(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        ErrorKind::ConnectionReset | ErrorKind::BrokenPipe | ErrorKind::ConnectionAborted
    )
}

/// Cuts the WAN for `outage` in the middle of a paced 96 MiB transfer, restores it, and checks
/// the stream arrives intact. With `expect_hold`, both gateways must log that they held the
/// tunnel and resumed it.
fn blackout(test: &str, outage: Duration, wan_extra: &[&str], expect_hold: bool) {
    if netns::skip_unless_available(test) {
        return;
    }
    let mut wan = Wan::new().unwrap_or_else(|e| panic!("setting up the namespaces: {e}"));
    let sink = sink_in(&wan.b);
    let spec = PairSpec {
        wan_extra: wan_extra.iter().map(|s| s.to_string()).collect(),
        netns: Some(wan.placement()),
        ..PairSpec::to_target(4, sink.addr())
    };
    let mut pair = Pair::start(&spec);
    let len = 96 * MIB;
    let progress = Arc::new(AtomicU64::new(0));
    let source = paced_send(
        Some(&wan.a),
        pair.ingress[0],
        len,
        51,
        16.0 * MIB as f64,
        progress.clone(),
    );
    wait_progress(&progress, 16 * MIB, Duration::from_secs(20), &pair);
    wan.cut();
    let cut_at = Instant::now();
    let at_cut = progress.load(Ordering::Relaxed);
    eprintln!(
        "{test}: WAN cut after {:.1} MiB for {outage:?}",
        at_cut as f64 / MIB as f64
    );
    if expect_hold {
        // flow_timeout_secs detects the dead connections well within the outage.
        let within = outage.saturating_sub(Duration::from_secs(2));
        for g in [&mut pair.a, &mut pair.b] {
            let line = g
                .wait_for_line(&["holding", "sessions"], within)
                .unwrap_or_else(|e| panic!("during the outage: {e}"));
            eprintln!("{}: {line}", g.name);
        }
    }
    thread::sleep(outage.saturating_sub(cut_at.elapsed()));
    let before_restore = progress.load(Ordering::Relaxed);
    wan.restore();
    let restored_at = Instant::now();
    eprintln!(
        "{test}: WAN restored; the source wrote {:.1} MiB during the outage",
        (before_restore - at_cut) as f64 / MIB as f64
    );
    let (sent, _) = join_source(source);
    let sent = sent.unwrap_or_else(|e| {
        panic!(
            "{test}: the session did not survive a {outage:?} outage: {e}\n{}",
            pair.logs()
        )
    });
    let got = sink.recv(Duration::from_secs(60));
    eprintln!(
        "{test}: transfer complete {:.1} s after the link came back",
        restored_at.elapsed().as_secs_f64()
    );
    assert_eq!(
        got.bytes, len,
        "bytes at the target after a {outage:?} outage"
    );
    assert_eq!(
        got.sha256, sent.sha256,
        "SHA-256 at the target after a {outage:?} outage"
    );
    if expect_hold {
        for g in [&mut pair.a, &mut pair.b] {
            let line = g
                .wait_for_line(&["tunnel to peer", "resumed"], Duration::from_secs(10))
                .unwrap_or_else(|e| panic!("after the outage: {e}"));
            eprintln!("{}: {line}", g.name);
        }
    }
    for g in [&pair.a, &pair.b] {
        for bad in ["giving up", "does not know our tunnel", "resetting"] {
            assert!(
                g.find_line(&[bad]).is_none(),
                "{} logged {bad:?} for an outage shorter than the grace period:\n{}",
                g.name,
                g.log_tail(40)
            );
        }
    }
    // The tunnel still carries new sessions.
    let ingress = pair.ingress[0];
    let sent = wan
        .a
        .run(move || send(ingress, 4 * MIB, 52))
        .unwrap_or_else(|e| panic!("a new session after the outage: {e}\n{}", pair.logs()));
    assert_eq!(sink.recv(Duration::from_secs(30)).sha256, sent.sha256);
    pair.assert_running();
}

/// A 5 s blackout with the default flow timeout: TCP rides it out (or the flows are re-dialled);
/// either way nothing is lost.
#[test]
fn wan_blackout_5s_mid_transfer() {
    blackout(
        "wan_blackout_5s_mid_transfer",
        Duration::from_secs(5),
        &[],
        false,
    );
}

/// A 30 s blackout with `flow_timeout_secs = 3`: every flow dies, both gateways hold the tunnel
/// (default grace period 60 s), the dialler resumes it when the link is back.
#[test]
fn wan_blackout_30s_mid_transfer_holds_and_resumes() {
    blackout(
        "wan_blackout_30s_mid_transfer_holds_and_resumes",
        Duration::from_secs(30),
        &["flow_timeout_secs = 3"],
        true,
    );
}

/// A 12 s blackout with `grace_period_secs = 5`: both gateways give up (log line), the source's
/// connection is reset at A and the target's at B, and a new session works once the link is back.
#[test]
fn wan_blackout_longer_than_grace_period_resets_both_ends() {
    const TEST: &str = "wan_blackout_longer_than_grace_period_resets_both_ends";
    if netns::skip_unless_available(TEST) {
        return;
    }
    let outage = Duration::from_secs(12);
    let mut wan = Wan::new().unwrap_or_else(|e| panic!("setting up the namespaces: {e}"));
    let sink = sink_in(&wan.b);
    let spec = PairSpec {
        wan_extra: vec![
            "grace_period_secs = 5".into(),
            "flow_timeout_secs = 3".into(),
        ],
        netns: Some(wan.placement()),
        ..PairSpec::to_target(4, sink.addr())
    };
    let mut pair = Pair::start(&spec);
    let len = 512 * MIB;
    let progress = Arc::new(AtomicU64::new(0));
    let source = paced_send(
        Some(&wan.a),
        pair.ingress[0],
        len,
        53,
        16.0 * MIB as f64,
        progress.clone(),
    );
    wait_progress(&progress, 16 * MIB, Duration::from_secs(20), &pair);
    wan.cut();
    let cut_at = Instant::now();
    eprintln!("{TEST}: WAN cut for {outage:?}");
    // flow timeout (3 s) + grace period (5 s) < outage (12 s): both ends give up during it.
    let within = outage.saturating_sub(Duration::from_millis(500));
    for g in [&mut pair.a, &mut pair.b] {
        let line = g
            .wait_for_line(&["grace period", "giving up"], within)
            .unwrap_or_else(|e| panic!("during a {outage:?} outage: {e}"));
        eprintln!("{} after {:?}: {line}", g.name, cut_at.elapsed());
    }
    // The target's connection is reset by B...
    let target = sink
        .try_recv(outage.saturating_sub(cut_at.elapsed()) + Duration::from_secs(2))
        .unwrap_or_else(|| {
            panic!(
                "the target's connection was still open {:?} after the cut (grace period 5 s)\n{}",
                cut_at.elapsed(),
                pair.logs()
            )
        });
    let target_at = cut_at.elapsed();
    match &target {
        Err(e) if is_reset(e) => eprintln!("{TEST}: target reset after {target_at:?}: {e}"),
        other => panic!(
            "the target's connection should be reset by gw-b after the grace period, got {other:?}\n{}",
            pair.logs()
        ),
    }
    // ... and the source's by A.
    let (sent, source_at) = join_source(source);
    let source_at = source_at - cut_at;
    match &sent {
        Err(e) if is_reset(e) => eprintln!("{TEST}: source reset after {source_at:?}: {e}"),
        other => panic!(
            "the source's connection should be reset by gw-a after the grace period, got {other:?}\n{}",
            pair.logs()
        ),
    }
    for (who, at) in [("source", source_at), ("target", target_at)] {
        assert!(
            at < outage + Duration::from_secs(2),
            "the {who} was reset only {at:?} after the cut (flow timeout 3 s + grace period 5 s)"
        );
    }
    thread::sleep(outage.saturating_sub(cut_at.elapsed()));
    wan.restore();
    // The dialler sets up a new tunnel once the link is back; a new session works.
    pair.a
        .wait_for_count("tunnel up", 2, Duration::from_secs(30))
        .unwrap_or_else(|e| panic!("after the link came back: {e}\n{}", pair.logs()));
    let ingress = pair.ingress[0];
    let sent = wan
        .a
        .run(move || send(ingress, 4 * MIB, 54))
        .unwrap_or_else(|e| {
            panic!(
                "a new session after the link came back: {e}\n{}",
                pair.logs()
            )
        });
    let got = sink.recv(Duration::from_secs(30));
    assert_eq!(got.bytes, 4 * MIB);
    assert_eq!(got.sha256, sent.sha256);
    pair.assert_running();
}

/// The remote gateway is SIGKILLed mid-transfer and restarted at once: the restarted B answers
/// the resume with a new tunnel, so A resets the old session at once (well before the 60 s
/// grace period) and says why; the next session succeeds.
#[test]
fn remote_gateway_killed_and_restarted_mid_transfer() {
    let sink = Sink::start();
    let mut pair = Pair::start(&PairSpec::to_target(4, sink.addr()));
    let len = 1024 * MIB;
    let progress = Arc::new(AtomicU64::new(0));
    let source = paced_send(
        None,
        pair.ingress[0],
        len,
        55,
        64.0 * MIB as f64,
        progress.clone(),
    );
    wait_progress(&progress, 48 * MIB, Duration::from_secs(20), &pair);
    pair.b.kill();
    let killed_at = Instant::now();
    let log2 = pair.dir.join("gw-b-restarted.log");
    let restarted = pair.b.spawn_again(&log2);
    let old = std::mem::replace(&mut pair.b, restarted);
    eprintln!("gw-b killed and restarted; old log:\n{}", old.log_tail(5));
    drop(old);
    let (sent, source_at) = join_source(source);
    let source_at = source_at - killed_at;
    match &sent {
        Err(e) if is_reset(e) => eprintln!("source reset {source_at:?} after the kill: {e}"),
        other => panic!(
            "the source's connection should be reset after the remote gateway restarted, got {other:?}\n{}",
            pair.logs()
        ),
    }
    assert!(
        source_at < Duration::from_secs(15),
        "the source was reset only {source_at:?} after the remote gateway was killed \
         (promptly means well before the 60 s grace period)\n{}",
        pair.logs()
    );
    let line = pair
        .a
        .wait_for_log("does not know our tunnel", Duration::from_secs(5))
        .unwrap_or_else(|e| panic!("{e}"));
    eprintln!("gw-a: {line}");
    // The killed B's target connection was closed by the kernel (FIN or RST): it must not look
    // like a complete stream.
    match sink.try_recv(Duration::from_secs(10)) {
        Some(Ok(r)) => assert!(
            r.bytes < len,
            "the target received all {len} bytes although gw-b was killed"
        ),
        Some(Err(e)) => eprintln!("target connection ended with: {e}"),
        None => panic!("the target's connection was still open 10 s after gw-b was killed"),
    }
    pair.b
        .wait_for_log("tunnel up: peer gw-a", Duration::from_secs(20))
        .unwrap_or_else(|e| panic!("restarted gw-b: {e}"));
    let sent = send(pair.ingress[0], 8 * MIB, 56)
        .unwrap_or_else(|e| panic!("a session after the restart: {e}\n{}", pair.logs()));
    let got = sink.recv(Duration::from_secs(30));
    assert_eq!(got.bytes, 8 * MIB);
    assert_eq!(got.sha256, sent.sha256);
    pair.assert_running();
}

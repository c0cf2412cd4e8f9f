//! A data flow dies mid-transfer (DESIGN invariant 1): its unacknowledged frames go out again on
//! the flows that remain, the stream arrives intact, and the flow is re-established.
//!
//! Kills one tunnel socket with `ss -K` (iproute2; needs root and a kernel with
//! CONFIG_INET_DIAG_DESTROY). Needs the release binary: `cargo build --release -p lmas`.

use std::process::Command;
use std::thread;
use std::time::{Duration, Instant};

use lmas_tests::{run_with_timeout, send, Pair, PairSpec, Sink};

/// Established TCP connections from gateway A to the tunnel port: (A's local port, bytes_acked).
fn tunnel_sockets(tunnel_port: u16) -> Vec<(u16, u64)> {
    let mut cmd = Command::new("ss");
    cmd.args([
        "-tniH",
        "state",
        "established",
        "dst",
        &format!("127.0.0.1:{tunnel_port}"),
    ]);
    let out = run_with_timeout(&mut cmd, Duration::from_secs(10))
        .unwrap_or_else(|e| panic!("running `ss` (install iproute2): {e}"));
    assert!(
        out.status.success(),
        "ss failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    let mut socks = Vec::new();
    for line in text.lines() {
        if !line.starts_with(char::is_whitespace) {
            // Recv-Q Send-Q Local:Port Peer:Port
            let local = line.split_whitespace().nth(2).unwrap_or("");
            if let Some(port) = local.rsplit(':').next().and_then(|p| p.parse().ok()) {
                socks.push((port, 0));
            }
        } else if let Some(last) = socks.last_mut() {
            if let Some(v) = line
                .split_whitespace()
                .find_map(|w| w.strip_prefix("bytes_acked:"))
            {
                last.1 = v.parse().unwrap_or(0);
            }
        }
    }
    socks
}

/// `ss -K` needs root; say so and skip elsewhere.
fn can_kill_sockets() -> bool {
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    if !root {
        eprintln!("SKIP: killing tunnel sockets with `ss -K` needs root");
    }
    root
}

/// Kills the established connections `ss` selects with `filter` (as `ss -K ... FILTER`);
/// returns what ss printed.
fn kill_sockets(filter: &[String]) -> String {
    let mut cmd = Command::new("ss");
    cmd.args(["-K", "state", "established"]).args(filter);
    let out = run_with_timeout(&mut cmd, Duration::from_secs(10)).expect("ss -K");
    assert!(
        out.status.success(),
        "ss -K failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn a_data_flow_killed_mid_transfer_loses_nothing() {
    if !can_kill_sockets() {
        return;
    }
    let sink = Sink::start();
    let mut pair = Pair::start(&PairSpec::to_target(4, sink.addr()));
    let port = pair.tunnel.port();
    let before = tunnel_sockets(port);
    assert!(
        before.len() >= 4,
        "expected at least 4 connections from gw-a to the tunnel port, ss shows {before:?}"
    );
    let ingress = pair.ingress[0];
    let len = 768u64 << 20;
    let source = thread::spawn(move || send(ingress, len, 31));
    // Wait until data flows, then kill the busiest tunnel socket (a data flow, not control).
    let deadline = Instant::now() + Duration::from_secs(20);
    let victim = loop {
        let socks = tunnel_sockets(port);
        if let Some(&(p, acked)) = socks.iter().max_by_key(|s| s.1) {
            if acked > 32 << 20 {
                break p;
            }
        }
        assert!(
            Instant::now() < deadline,
            "no tunnel socket carried 32 MiB in 20 s: {socks:?}"
        );
        thread::sleep(Duration::from_millis(20));
    };
    let killed = kill_sockets(&[
        "src".into(),
        format!("127.0.0.1:{victim}"),
        "dst".into(),
        format!("127.0.0.1:{port}"),
    ]);
    assert!(
        killed.contains(&format!(":{victim}")),
        "ss -K killed nothing (kernel without CONFIG_INET_DIAG_DESTROY?): {killed}"
    );
    eprintln!("killed gw-a's tunnel socket 127.0.0.1:{victim} mid-transfer");
    let sent = source
        .join()
        .expect("source thread")
        .unwrap_or_else(|e| panic!("the session died with the data flow: {e}\n{}", pair.logs()));
    let got = sink.recv(Duration::from_secs(60));
    assert_eq!(got.bytes, len, "bytes at the target after a data flow died");
    assert_eq!(
        got.sha256, sent.sha256,
        "SHA-256 at the target after a data flow died"
    );
    // The flow comes back.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let now = tunnel_sockets(port);
        if now.len() >= before.len() && !now.iter().any(|s| s.0 == victim) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the data flow was not re-established within 20 s: before {before:?}, now {now:?}\n{}",
            pair.logs()
        );
        thread::sleep(Duration::from_millis(100));
    }
    let sent = send(pair.ingress[0], 8 << 20, 32).expect("a session after the flow came back");
    assert_eq!(sink.recv(Duration::from_secs(30)).sha256, sent.sha256);
    pair.assert_running();
}

/// Every tunnel connection (control and all data flows) dies mid-transfer, as in a short WAN
/// outage: both gateways hold the session, the dialler reconnects and resumes the tunnel, the
/// stream arrives intact.
#[test]
fn all_tunnel_connections_killed_mid_transfer_resume() {
    if !can_kill_sockets() {
        return;
    }
    let sink = Sink::start();
    let mut pair = Pair::start(&PairSpec::to_target(4, sink.addr()));
    let port = pair.tunnel.port();
    let ingress = pair.ingress[0];
    let len = 512u64 << 20;
    let source = thread::spawn(move || send(ingress, len, 37));
    let deadline = Instant::now() + Duration::from_secs(20);
    while tunnel_sockets(port).iter().map(|s| s.1).sum::<u64>() < 64 << 20 {
        assert!(
            Instant::now() < deadline,
            "the tunnel did not carry 64 MiB in 20 s"
        );
        thread::sleep(Duration::from_millis(20));
    }
    kill_sockets(&["dst".into(), format!("127.0.0.1:{port}")]);
    eprintln!("killed every tunnel connection of gw-a mid-transfer");
    let sent = source
        .join()
        .expect("source thread")
        .unwrap_or_else(|e| panic!("the session died with the tunnel: {e}\n{}", pair.logs()));
    let got = sink.recv(Duration::from_secs(60));
    assert_eq!(
        got.bytes, len,
        "bytes at the target after the tunnel was cut"
    );
    assert_eq!(got.sha256, sent.sha256, "SHA-256 after the tunnel was cut");
    pair.a
        .wait_for_log("resumed", Duration::from_secs(10))
        .unwrap_or_else(|e| panic!("{e}\n{}", pair.logs()));
}

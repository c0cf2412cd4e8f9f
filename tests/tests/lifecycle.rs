//! Gateway lifecycle: SIGTERM with sessions open, and the tunnel coming back after the peer
//! gateway restarts.
//!
//! Needs the release binary: `cargo build --release -p lmas` (or `LMAS_BIN`).

use std::io::Write;
use std::time::Duration;

use lmas_tests::{connect, send, wait_listening, Gateway, Pair, PairSpec, Sink, TUNNEL_UP_TIMEOUT};

/// An idle session never finishes: SIGTERM drains it for `drain_timeout_secs`, then resets it
/// and exits 0 (tests/shutdown.rs covers the drain itself).
#[test]
fn sigterm_stops_both_gateways_with_a_session_open() {
    let sink = Sink::start();
    let spec = PairSpec {
        drain_timeout_secs: Some(1),
        ..PairSpec::to_target(4, sink.addr())
    };
    let mut pair = Pair::start(&spec);
    // An idle session that stays open.
    let mut s = connect(pair.ingress[0]).expect("connect ingress");
    s.write_all(b"hello").expect("write");
    std::thread::sleep(Duration::from_millis(300));
    for g in [&mut pair.a, &mut pair.b] {
        let st = g
            .terminate(Duration::from_secs(5))
            .unwrap_or_else(|e| panic!("{e}"));
        eprintln!("{} exited: {st}", g.name);
        assert!(st.success(), "{} exited with {st}", g.name);
    }
}

#[test]
fn tunnel_comes_back_after_the_peer_gateway_restarts() {
    let sink = Sink::start();
    let mut pair = Pair::start(&PairSpec::to_target(4, sink.addr()));
    let sent = send(pair.ingress[0], 8 << 20, 1).expect("session before the restart");
    assert_eq!(sink.recv(Duration::from_secs(30)).sha256, sent.sha256);

    pair.b
        .terminate(Duration::from_secs(5))
        .unwrap_or_else(|e| panic!("{e}"));
    let config = pair.b.config.clone();
    pair.b = Gateway::spawn("gw-b", &config, &pair.dir.join("gw-b-restarted.log"));
    wait_listening(pair.tunnel.port(), TUNNEL_UP_TIMEOUT)
        .unwrap_or_else(|e| panic!("restarted gw-b: {e}\n{}", pair.logs()));
    // A's backoff is capped at a few seconds: allow for it.
    let up = Duration::from_secs(30);
    pair.b
        .wait_for_log("tunnel up: peer gw-a", up)
        .unwrap_or_else(|e| panic!("{e}\n{}", pair.logs()));
    pair.a
        .wait_for_count("tunnel up: peer gw-b", 2, up)
        .unwrap_or_else(|e| panic!("{e}\n{}", pair.logs()));
    let sent = send(pair.ingress[0], 8 << 20, 2).expect("session after the restart");
    assert_eq!(sink.recv(Duration::from_secs(30)).sha256, sent.sha256);
    pair.assert_running();
}

/// Sets SO_LINGER {on, 0} so that dropping the stream sends a RST.
fn set_linger_zero(s: &std::net::TcpStream) {
    use std::os::fd::AsRawFd;
    let l = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    // SAFETY: setsockopt on a valid socket with a correctly sized struct.
    let rc = unsafe {
        libc::setsockopt(
            s.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            &l as *const libc::linger as *const libc::c_void,
            std::mem::size_of::<libc::linger>() as libc::socklen_t,
        )
    };
    assert_eq!(rc, 0, "setsockopt(SO_LINGER)");
}

/// Reads from `s` until EOF or an error, within `within`; returns how it ended.
fn read_until_closed(s: &mut std::net::TcpStream, within: Duration) -> Result<String, String> {
    use std::io::{ErrorKind, Read};
    let start = std::time::Instant::now();
    let mut buf = vec![0u8; 1 << 16];
    let mut total = 0u64;
    loop {
        let left = within.saturating_sub(start.elapsed());
        if left.is_zero() {
            return Err(format!("still open after {within:?} ({total} bytes read)"));
        }
        s.set_read_timeout(Some(left)).unwrap();
        match s.read(&mut buf) {
            Ok(0) => return Ok(format!("EOF after {:?}", start.elapsed())),
            Ok(n) => total += n as u64,
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) => return Ok(format!("{e} after {:?}", start.elapsed())),
        }
    }
}

/// A reset at the target ends the source's connection promptly; the pair carries on.
#[test]
fn reset_by_the_target_reaches_the_source() {
    let sink = Sink::start();
    let (target, server) = lmas_tests::serve_once(Duration::from_secs(30), |mut s| {
        let mut buf = [0u8; 5];
        std::io::Read::read_exact(&mut s, &mut buf)?;
        set_linger_zero(&s);
        drop(s); // RST
        Ok(())
    });
    let spec = PairSpec {
        ingress: vec![target.to_string(), sink.addr().to_string()],
        egress_allow: vec![target.to_string(), sink.addr().to_string()],
        ..PairSpec::default()
    };
    let mut pair = Pair::start(&spec);
    let mut c = connect(pair.ingress[0]).expect("connect ingress");
    c.write_all(b"hello").expect("write");
    lmas_tests::join(server).expect("target");
    let how = read_until_closed(&mut c, Duration::from_secs(5))
        .unwrap_or_else(|e| panic!("source after the target's reset: {e}\n{}", pair.logs()));
    eprintln!("source saw: {how}");
    let sent = send(pair.ingress[1], 1 << 20, 3).expect("a session after the reset");
    assert_eq!(sink.recv(Duration::from_secs(30)).sha256, sent.sha256);
    pair.assert_running();
}

/// A reset by the source in the middle of a transfer ends the target's connection promptly.
#[test]
fn reset_by_the_source_reaches_the_target() {
    let sink = Sink::start();
    let (target, server) = lmas_tests::serve_once(Duration::from_secs(30), |mut s| {
        read_until_closed(&mut s, Duration::from_secs(10)).map_err(std::io::Error::other)
    });
    let spec = PairSpec {
        ingress: vec![target.to_string(), sink.addr().to_string()],
        egress_allow: vec![target.to_string(), sink.addr().to_string()],
        ..PairSpec::default()
    };
    let mut pair = Pair::start(&spec);
    let mut c = connect(pair.ingress[0]).expect("connect ingress");
    lmas_tests::send_all(&mut c, 8 << 20, 4).expect("send");
    set_linger_zero(&c);
    let start = std::time::Instant::now();
    drop(c); // RST
    let how = lmas_tests::join(server)
        .unwrap_or_else(|e| panic!("target after the source's reset: {e}\n{}", pair.logs()));
    eprintln!("target saw: {how} ({:?} after the reset)", start.elapsed());
    assert!(
        start.elapsed() < Duration::from_secs(5),
        "the target's connection outlived the source's reset by {:?}",
        start.elapsed()
    );
    let sent = send(pair.ingress[1], 1 << 20, 5).expect("a session after the reset");
    assert_eq!(sink.recv(Duration::from_secs(30)).sha256, sent.sha256);
    pair.assert_running();
}

/// With the peer gateway down, a session at the ingress is closed or reset in bounded time
/// (not held open forever), and the gateway keeps running.
#[test]
fn session_without_a_tunnel_is_ended_not_hung() {
    let sink = Sink::start();
    let mut pair = Pair::start(&PairSpec::to_target(4, sink.addr()));
    pair.b
        .terminate(Duration::from_secs(5))
        .unwrap_or_else(|e| panic!("{e}"));
    let (how, took) = lmas_tests::expect_closed(pair.ingress[0], Duration::from_secs(20))
        .unwrap_or_else(|e| panic!("session while gw-b is down: {e}\n{}", pair.logs()));
    eprintln!("session with gw-b down: {how:?} after {took:?}");
    assert!(
        pair.a.is_running(),
        "gw-a died while its peer was down\n{}",
        pair.logs()
    );
}

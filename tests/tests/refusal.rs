//! Refused targets, allowlist forms and wrong keys.
//!
//! Needs the release binary: `cargo build --release -p lmas` (or `LMAS_BIN`).

use std::net::TcpListener;
use std::time::Duration;

use lmas_tests::{
    expect_closed, free_addr, keygen, send, temp_dir, Pair, PairSpec, Sink, TUNNEL_UP_TIMEOUT,
};

/// "Promptly": how long a refused session may stay open at the source.
const REFUSAL_WITHIN: Duration = Duration::from_secs(5);
const LOG_WAIT: Duration = Duration::from_secs(10);

/// After a refusal the pair must still carry a normal session (invariant 4).
fn assert_session_works(pair: &mut Pair, ingress_index: usize, sink: &Sink) {
    let sent = send(pair.ingress[ingress_index], 4 << 20, 77)
        .unwrap_or_else(|e| panic!("a normal session after the refusal failed: {e}"));
    let got = sink.recv(Duration::from_secs(30));
    assert_eq!(
        got.sha256, sent.sha256,
        "SHA-256 of the session after the refusal"
    );
    pair.assert_running();
}

#[test]
fn target_not_in_allowlist_is_refused() {
    let allowed = Sink::start();
    // Something listens at the forbidden target: the refusal must come from the allowlist, and
    // any connection gw-b made to it (even one closed at once) would wait in its accept queue.
    let forbidden = TcpListener::bind("127.0.0.1:0").expect("bind the forbidden target");
    forbidden.set_nonblocking(true).expect("set_nonblocking");
    let f = forbidden.local_addr().expect("local_addr");
    let spec = PairSpec {
        data_flows: 4,
        ingress: vec![f.to_string(), allowed.addr().to_string()],
        egress_allow: vec![allowed.addr().to_string()],
        ..PairSpec::default()
    };
    let mut pair = Pair::start(&spec);
    let (how, took) = expect_closed(pair.ingress[0], REFUSAL_WITHIN)
        .unwrap_or_else(|e| panic!("session to a target not in the allowlist: {e}"));
    eprintln!("refused (allowlist): {how:?} after {took:?}");
    pair.b.expect_log(
        &format!("refusing target {f}: not in egress allowlist"),
        LOG_WAIT,
    );
    pair.a
        .expect_log(&format!("peer refused target {f}"), LOG_WAIT);
    std::thread::sleep(Duration::from_millis(300));
    match forbidden.accept() {
        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
        Ok((_, from)) => {
            panic!("gw-b connected to {f} (from {from}) although it is not in its allowlist")
        }
        Err(e) => panic!("accept on the forbidden target: {e}"),
    }
    assert_session_works(&mut pair, 1, &allowed);
}

#[test]
fn target_not_listening_is_refused() {
    let allowed = Sink::start();
    let dead = free_addr(); // nothing listens here
    let spec = PairSpec {
        data_flows: 4,
        ingress: vec![dead.to_string(), allowed.addr().to_string()],
        egress_allow: vec![dead.to_string(), allowed.addr().to_string()],
        ..PairSpec::default()
    };
    let mut pair = Pair::start(&spec);
    let (how, took) = expect_closed(pair.ingress[0], REFUSAL_WITHIN)
        .unwrap_or_else(|e| panic!("session to a target where nothing listens: {e}"));
    eprintln!("refused (connection refused): {how:?} after {took:?}");
    // The contract names the local side's line; the remote side must mention the target.
    pair.a
        .expect_log(&format!("peer refused target {dead}"), LOG_WAIT);
    pair.b.expect_log(&dead.to_string(), LOG_WAIT);
    assert_session_works(&mut pair, 1, &allowed);
}

/// `IP:*` and `CIDR:PORT` allowlist entries.
#[test]
fn allowlist_wildcard_forms() {
    let sink = Sink::start();
    let other = Sink::start();
    let port = sink.addr().port();
    for (allow, other_allowed) in [
        ("127.0.0.1:*".to_string(), true),
        (format!("127.0.0.0/8:{port}"), false),
    ] {
        let spec = PairSpec {
            data_flows: 4,
            ingress: vec![sink.addr().to_string(), other.addr().to_string()],
            egress_allow: vec![allow.clone()],
            ..PairSpec::default()
        };
        let mut pair = Pair::start(&spec);
        let sent = send(pair.ingress[0], 1 << 20, 5)
            .unwrap_or_else(|e| panic!("allow = [{allow:?}]: session to {}: {e}", sink.addr()));
        assert_eq!(sink.recv(Duration::from_secs(30)).sha256, sent.sha256);
        if other_allowed {
            let sent = send(pair.ingress[1], 1 << 20, 6).unwrap_or_else(|e| {
                panic!("allow = [{allow:?}]: session to {}: {e}", other.addr())
            });
            assert_eq!(other.recv(Duration::from_secs(30)).sha256, sent.sha256);
        } else {
            expect_closed(pair.ingress[1], REFUSAL_WITHIN).unwrap_or_else(|e| {
                panic!(
                    "allow = [{allow:?}]: session to {} (not allowed): {e}",
                    other.addr()
                )
            });
            pair.b.expect_log(
                &format!("refusing target {}: not in egress allowlist", other.addr()),
                LOG_WAIT,
            );
        }
        pair.assert_running();
    }
}

fn wrong_key(a_side: bool) {
    let (dir, _tmp) = temp_dir("lmas-e2e-otherkey-");
    let other = keygen(&dir.join("other.key"));
    let sink = Sink::start();
    let mut spec = PairSpec::to_target(4, sink.addr());
    if a_side {
        spec.a_peer_key = Some(other.public);
    } else {
        spec.b_peer_key = Some(other.public);
    }
    let mut pair = Pair::launch(&spec);
    // gw-b accepts: it names the peer by socket address; gw-a dials: it names the peer (the line
    // may say "handshake with peer gw-b (ADDR) failed").
    let b_line = pair
        .b
        .wait_for_line(&["handshake with 127.0.0.1:", "failed"], TUNNEL_UP_TIMEOUT)
        .unwrap_or_else(|e| panic!("accepting side: {e}\n{}", pair.logs()));
    let a_line = pair
        .a
        .wait_for_line(&["handshake with", "gw-b", "failed"], TUNNEL_UP_TIMEOUT)
        .unwrap_or_else(|e| panic!("dialing side: {e}\n{}", pair.logs()));
    eprintln!("gw-a: {a_line}\ngw-b: {b_line}");
    // Give a (wrong) tunnel time to come up anyway.
    std::thread::sleep(Duration::from_secs(2));
    for g in [&pair.a, &pair.b] {
        assert!(
            g.find_line(&["tunnel up"]).is_none(),
            "{} brought the tunnel up with a wrong key:\n{}",
            g.name,
            g.log_tail(40)
        );
    }
    assert!(
        sink.try_recv(Duration::from_millis(100)).is_none(),
        "the target saw a connection"
    );
}

#[test]
fn dialer_has_wrong_key_for_acceptor() {
    wrong_key(true);
}

#[test]
fn acceptor_has_wrong_key_for_dialer() {
    wrong_key(false);
}

/// `gateway.psk_file` (a base64 32-byte key, mode 0600, as the gateway's key files): the same
/// PSK on both ends carries data; different PSKs fail the handshake.
#[test]
fn psk_must_match() {
    let psk = lmas_tests::random_key_b64();
    let sink = Sink::start();
    let spec = PairSpec {
        psk_a: Some(psk.clone()),
        psk_b: Some(psk),
        ..PairSpec::to_target(4, sink.addr())
    };
    let pair = Pair::start(&spec);
    let sent = send(pair.ingress[0], 4 << 20, 8).expect("session with matching PSKs");
    assert_eq!(sink.recv(Duration::from_secs(30)).sha256, sent.sha256);
    drop(pair);

    let spec = PairSpec {
        psk_a: Some(lmas_tests::random_key_b64()),
        psk_b: Some(lmas_tests::random_key_b64()),
        ..PairSpec::to_target(4, sink.addr())
    };
    let mut pair = Pair::launch(&spec);
    pair.b
        .wait_for_line(&["handshake with 127.0.0.1:", "failed"], TUNNEL_UP_TIMEOUT)
        .unwrap_or_else(|e| panic!("accepting side, different PSKs: {e}\n{}", pair.logs()));
    pair.a
        .wait_for_line(&["handshake with", "gw-b", "failed"], TUNNEL_UP_TIMEOUT)
        .unwrap_or_else(|e| panic!("dialing side, different PSKs: {e}\n{}", pair.logs()));
    std::thread::sleep(Duration::from_secs(1));
    for g in [&pair.a, &pair.b] {
        assert!(
            g.find_line(&["tunnel up"]).is_none(),
            "{}: tunnel up with different PSKs",
            g.name
        );
    }

    // Only one side has a PSK.
    let spec = PairSpec {
        psk_a: Some(lmas_tests::random_key_b64()),
        ..PairSpec::to_target(4, sink.addr())
    };
    let mut pair = Pair::launch(&spec);
    pair.b
        .wait_for_line(&["handshake with 127.0.0.1:", "failed"], TUNNEL_UP_TIMEOUT)
        .unwrap_or_else(|e| panic!("accepting side, PSK on A only: {e}\n{}", pair.logs()));
    std::thread::sleep(Duration::from_secs(1));
    for g in [&pair.a, &pair.b] {
        assert!(
            g.find_line(&["tunnel up"]).is_none(),
            "{}: tunnel up with a PSK on one side only",
            g.name
        );
    }
}

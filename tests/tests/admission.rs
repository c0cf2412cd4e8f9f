//! Handshake admission on the tunnel port under a spoofed flood (issue 13 §2; docs/FAILURES.md).
//!
//! While a hashed transfer runs through the pair over a 100 ms round trip, the router floods
//! B's tunnel port two ways at once:
//! - TCP SYNs from spoofed sources, each a random address of 10.64.0.0/10 (16384 /24 prefixes),
//!   3000 a second: nothing ever answers B's SYN-ACKs;
//! - 128 silent TCP connections at a time from the 254 addresses of one /24 (a slowloris:
//!   each holds a pending handshake until B drops it, and is replaced at once).
//!
//! Then every connection of the tunnel is killed (the router answers their packets with RSTs,
//! both ways), so the dialler A must win handshake slots at B against the flood: the tunnel must
//! be whole again (control connection and every data flow, at both ends) within 10 s, and the
//! transfer must end with the hash it started with.
//!
//! With `peer.source` set to A's address, B must drop the flood before keeping any state for
//! it: nothing reaches the handshake table (`handshakes_busy` and `handshake_failures` stay 0),
//! and `tunnel_sources_refused` counts what was dropped.
//!
//! The cases run one at a time (a flood and two gateways fill this machine's 2 CPUs). Needs
//! root, `ip`, `iptables`, `ethtool` and `target/release/linkemu`; the DPDK cases the system
//! DPDK. Skips with `SKIP: …` otherwise.

use std::net::{SocketAddr, SocketAddrV4};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use lmas_tests::dpdk_lab::Kind;
use lmas_tests::flood::{ConnFlood, SynFlood};
use lmas_tests::line_lab::{
    skip, Line, LineSpec, A_WAN, B_WAN, DST, FLOOD_NET, SPOOFED, TUNNEL_PORT,
};
use lmas_tests::{expected_sha256, paced_send, wait_progress, Sink};

const RTT_MS: u32 = 100;
const FLOWS: usize = 2;
/// The tunnel must be whole again within this long of the RSTs.
const RECOVER: Duration = Duration::from_secs(10);
const SYN_RATE: u32 = 3000;
const SILENT_CONNECTIONS: usize = 128;
const MIB: u64 = 1 << 20;
/// The transfer: long enough to run through the flood, the kill and the recovery (12 s at
/// RATE; the sender is held back while the tunnel is down, so it always outlasts the
/// recovery, and goes on a few seconds under the flood after it).
const LEN: u64 = 24 * MIB;
const RATE: f64 = 2.0 * MIB as f64;

/// One flood case at a time on this machine.
static SERIAL: Mutex<()> = Mutex::new(());

fn flood_case(test: &str, kind: Kind, peer_source: bool) {
    let tag: String = test.split('_').filter_map(|w| w.chars().next()).collect();
    let mut spec = LineSpec::new(&tag, kind);
    spec.rtt_ms = Some(RTT_MS);
    spec.data_flows = FLOWS as u32;
    spec.wan = vec![
        "flow_timeout_secs = 4".into(),
        "grace_period_secs = 30".into(),
    ];
    if peer_source {
        spec.b_peer = vec![format!("source = [\"{A_WAN}\"]")];
    }
    if skip(test, &spec) {
        return;
    }
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let began = Instant::now();
    let mut line = Line::start(&spec).unwrap_or_else(|e| panic!("{test}: setting up: {e}"));

    let sink_addr = SocketAddr::V4(SocketAddrV4::new(DST, 5000));
    let sink = line
        .dst
        .run(move || Sink::bind(sink_addr))
        .expect("sink in dst");
    let progress = Arc::new(AtomicU64::new(0));
    let sender = paced_send(
        Some(&line.src),
        Line::ingress(6000),
        LEN,
        13,
        RATE,
        progress.clone(),
    );
    wait_progress(&progress, 2 * MIB, Duration::from_secs(20))
        .unwrap_or_else(|e| panic!("{test}: transfer: {e}\n{}", line.logs()));

    let tunnel_port = SocketAddrV4::new(B_WAN, TUNNEL_PORT);
    let mut syns = SynFlood::start(&line.r, tunnel_port, SPOOFED, SYN_RATE)
        .unwrap_or_else(|e| panic!("{test}: SYN flood: {e}"));
    let mut silent = ConnFlood::start(&line.r, tunnel_port, FLOOD_NET, SILENT_CONNECTIONS)
        .unwrap_or_else(|e| panic!("{test}: connection flood: {e}"));
    thread::sleep(Duration::from_secs(2));
    eprintln!(
        "{test}: flooding: {} SYNs, {} silent connections so far",
        syns.sent.load(Ordering::Relaxed),
        silent.connected.load(Ordering::Relaxed)
    );

    let t0 = line.kill_tunnel_connections();
    eprintln!(
        "{test}: tunnel connections killed ({:.1} s after the start)",
        began.elapsed().as_secs_f64()
    );
    let back = line.wait_whole(FLOWS, RECOVER);
    let report = |line: &Line| {
        let counters = |g: &lmas_tests::Gateway| {
            g.counters()
                .map(|c| {
                    c.into_iter()
                        .filter(|(k, _)| {
                            k.starts_with("handshake")
                                || k.starts_with("tunnel_")
                                || k == "flows_lost"
                        })
                        .map(|(k, v)| format!("{k}={v}"))
                        .collect::<Vec<_>>()
                        .join(" ")
                })
                .unwrap_or_else(|e| e)
        };
        format!("gw-a: {}\ngw-b: {}", counters(&line.a), counters(&line.b))
    };
    match back {
        Some(d) => eprintln!(
            "{test}: tunnel whole again {:.2} s after the RSTs",
            d.as_secs_f64()
        ),
        None => {
            let _ = (syns.stop(), silent.stop());
            panic!(
                "{test}: the tunnel was not whole again within {RECOVER:?} of the RSTs ({} SYNs, {} silent connections, {} closed by gw-b)\n{}\n{}",
                syns.sent.load(Ordering::Relaxed),
                silent.connected.load(Ordering::Relaxed),
                silent.closed.load(Ordering::Relaxed),
                report(&line),
                line.logs()
            );
        }
    }
    // Keep flooding while the transfer finishes.
    let (sent, _) = sender.join().expect("sender thread");
    let sent =
        sent.unwrap_or_else(|e| panic!("{test}: the source's session broke: {e}\n{}", line.logs()));
    let got = sink.recv(Duration::from_secs(30));
    syns.stop()
        .unwrap_or_else(|e| panic!("{test}: SYN flood: {e}"));
    silent
        .stop()
        .unwrap_or_else(|e| panic!("{test}: connection flood: {e}"));
    eprintln!(
        "{test}: {} SYNs and {} silent connections ({} closed by gw-b) in {:.1} s\n{}",
        syns.sent.load(Ordering::Relaxed),
        silent.connected.load(Ordering::Relaxed),
        silent.closed.load(Ordering::Relaxed),
        t0.elapsed().as_secs_f64() + 2.0,
        report(&line)
    );
    assert_eq!(sent.sha256, expected_sha256(LEN, 13));
    assert_eq!(
        (got.bytes, &got.sha256),
        (sent.bytes, &sent.sha256),
        "{test}: the transfer arrived altered"
    );
    for g in [&line.a, &line.b] {
        assert!(
            g.find_line(&["giving up"]).is_none(),
            "{test}: {} gave up the tunnel\n{}",
            g.name,
            line.logs()
        );
    }
    if peer_source {
        let c = line.b.counters().unwrap_or_else(|e| panic!("{e}"));
        assert!(
            c.get("tunnel_sources_refused").copied().unwrap_or(0) > 0,
            "{test}: gw-b counted nothing from outside peer.source: {c:?}"
        );
        for k in ["handshakes_busy", "handshake_failures"] {
            assert_eq!(
                c.get(k).copied(),
                Some(0),
                "{test}: the flood reached gw-b's handshake table ({k}): {c:?}\n{}",
                line.logs()
            );
        }
    }
    eprintln!("{test}: passed in {:.1} s", began.elapsed().as_secs_f64());
}

#[test]
fn the_tunnel_comes_back_through_a_spoofed_flood_dpdk() {
    flood_case(
        "the_tunnel_comes_back_through_a_spoofed_flood_dpdk",
        Kind::Dpdk,
        false,
    );
}

#[test]
fn the_tunnel_comes_back_through_a_spoofed_flood_kernel() {
    flood_case(
        "the_tunnel_comes_back_through_a_spoofed_flood_kernel",
        Kind::Kernel,
        false,
    );
}

#[test]
fn peer_source_drops_the_flood_before_any_state_dpdk() {
    flood_case(
        "peer_source_drops_the_flood_before_any_state_dpdk",
        Kind::Dpdk,
        true,
    );
}

#[test]
fn peer_source_drops_the_flood_before_any_state_kernel() {
    flood_case(
        "peer_source_drops_the_flood_before_any_state_kernel",
        Kind::Kernel,
        true,
    );
}

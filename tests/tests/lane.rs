//! The lane (issue 17: frames as UDP datagrams with parity, `wan.lane`), end to end through
//! real `lmas` processes on loopback (kernel datapath): a stream crosses it byte for byte
//! (SHA-256) and the counters show the lane carried it; a gateway with the lane and one
//! without agree on none and the data flows carry everything; an automatic lane leaves a
//! clean path to the data flows; datagrams forged from the
//! peer's own address, during a transfer, are refused and change nothing.

use std::collections::BTreeMap;
use std::net::UdpSocket;
use std::thread;
use std::time::Duration;

use lmas_tests::{send_payload, Pair, PairSpec, Payload, Sink};

const MIB: u64 = 1 << 20;
const LEN: u64 = 32 * MIB;

fn counters(pair: &Pair, a: bool) -> BTreeMap<String, u64> {
    let g = if a { &pair.a } else { &pair.b };
    g.counters().unwrap_or_else(|e| panic!("{e}"))
}

fn get(m: &BTreeMap<String, u64>, k: &str) -> u64 {
    m.get(k).copied().unwrap_or(0)
}

/// A UDP port free on loopback now, for B's lane.
fn free_udp_port() -> u16 {
    let s = UdpSocket::bind("127.0.0.1:0").expect("bind a UDP port");
    s.local_addr().expect("its address").port()
}

/// One transfer A -> B of `LEN` bytes of `payload` through `pair`, checked at `sink`.
fn send_and_check(pair: &mut Pair, sink: &Sink, payload: Payload) {
    let sent = send_payload(pair.ingress[0], LEN, 7, payload)
        .unwrap_or_else(|e| panic!("{e}\n{}", pair.logs()));
    let got = sink.recv(Duration::from_secs(60));
    assert_eq!(got.bytes, LEN, "bytes at the sink\n{}", pair.logs());
    assert_eq!(got.sha256, sent.sha256, "SHA-256\n{}", pair.logs());
    pair.assert_running();
}

/// A pair of two data flows to `sink` with `[wan] lane = mode` on both sides, gw-b's lane on
/// `port`.
fn lane_spec(mode: &str, port: u16, sink: &Sink) -> PairSpec {
    PairSpec {
        wan_extra: vec![format!("lane = \"{mode}\"")],
        b_wan_extra: vec![format!("lane_port = {port}")],
        ..PairSpec::to_target(2, sink.addr())
    }
}

/// A pair as `spec` says, and one transfer through it.
fn transfer(spec: PairSpec, sink: &Sink) -> Pair {
    let mut pair = Pair::start(&spec);
    send_and_check(&mut pair, sink, Payload::Random);
    pair
}

#[test]
fn a_stream_crosses_the_lane_exactly() {
    let sink = Sink::start();
    let pair = transfer(lane_spec("on", free_udp_port(), &sink), &sink);
    for (g, name) in [(&pair.a, "gw-a"), (&pair.b, "gw-b")] {
        assert!(
            g.log()
                .contains("lane up: frames as datagrams to 127.0.0.1:"),
            "{name} logged no lane\n{}",
            pair.logs()
        );
    }
    let (a, b) = (counters(&pair, true), counters(&pair, false));
    let sent = get(&a, "lane_frames_sent");
    // A 64 KiB frame each; what the lane lost (a full socket buffer) went on the flows.
    assert!(
        sent >= LEN / (64 * 1024) / 2,
        "A sent {sent} frames on the lane: {a:?}"
    );
    assert!(get(&b, "lane_frames_rebuilt") > 0, "B rebuilt none: {b:?}");
    assert_eq!(get(&b, "lane_datagrams_refused"), 0, "{b:?}");
}

/// Mixed pages (zero, text, random) on the lane: frames are packed as on the data flows, the
/// peer unpacks them, and the stream arrives exactly; QEMU's multifd sends several streams at
/// once, whose frames share groups.
#[test]
fn packed_frames_of_several_streams_cross_the_lane_exactly() {
    let sink = Sink::start();
    let mut spec = lane_spec("on", free_udp_port(), &sink);
    spec.wan_extra.push("compression = \"lz4\"".into());
    let mut pair = Pair::start(&spec);
    let ingress = pair.ingress[0];
    let senders: Vec<_> = (0..3u64)
        .map(|seed| thread::spawn(move || send_payload(ingress, LEN / 4, seed, Payload::Mixed)))
        .collect();
    let mut want: Vec<_> = senders
        .into_iter()
        .map(|t| {
            let sent = t.join().expect("sender").unwrap_or_else(|e| panic!("{e}"));
            (sent.bytes, sent.sha256)
        })
        .collect();
    let mut got: Vec<_> = (0..3)
        .map(|_| {
            let g = sink.recv(Duration::from_secs(60));
            (g.bytes, g.sha256)
        })
        .collect();
    want.sort();
    got.sort();
    assert_eq!(got, want, "the three streams at the sink\n{}", pair.logs());
    pair.assert_running();
    let (a, b) = (counters(&pair, true), counters(&pair, false));
    assert!(get(&a, "lane_frames_sent") > 0, "{a:?}");
    assert!(
        get(&a, "compression_frames_packed") > 0,
        "A packed none: {a:?}"
    );
    let (plain, packed) = (
        get(&a, "compression_bytes_in"),
        get(&a, "compression_bytes_out"),
    );
    assert!(packed < plain * 3 / 4, "{packed} of {plain} bytes: {a:?}");
    assert_eq!(get(&b, "lane_datagrams_refused"), 0, "{b:?}");
}

#[test]
fn a_gateway_with_the_lane_and_one_without_use_the_flows() {
    let sink = Sink::start();
    let spec = PairSpec {
        a_wan_extra: vec!["lane = \"on\"".into()],
        ..PairSpec::to_target(2, sink.addr())
    };
    let pair = transfer(spec, &sink);
    assert!(!pair.a.log().contains("lane up"), "{}", pair.logs());
    assert_eq!(get(&counters(&pair, true), "lane_frames_sent"), 0);
}

/// `lane = "auto"` on a path that loses nothing (loopback): the lane comes up, and the data
/// flows keep every frame, since they send nothing twice.
#[test]
fn an_automatic_lane_leaves_a_clean_path_to_the_flows() {
    let sink = Sink::start();
    let pair = transfer(lane_spec("auto", free_udp_port(), &sink), &sink);
    assert!(
        pair.a
            .log()
            .contains("lane up: frames as datagrams to 127.0.0.1:"),
        "{}",
        pair.logs()
    );
    let a = counters(&pair, true);
    assert_eq!(get(&a, "lane_frames_sent"), 0, "{a:?}");
    let status = pair.a.status().unwrap_or_else(|e| panic!("{e}"));
    let core = &status["tunnel"]["counters"];
    assert_eq!(core["lane_chosen"].as_u64(), Some(0), "{core}");
    let frames = core["data_frames_out"].as_u64().unwrap_or(0);
    assert!(frames >= LEN / (64 * 1024), "{core}");
}

/// The worst spoofing: datagrams to B's lane port from the peer's own address (loopback
/// here), shaped like shards and acks, while a stream crosses. They fail authentication
/// (or the replay window), are counted, and the stream arrives exactly.
#[test]
fn datagrams_forged_from_the_peers_address_are_refused() {
    let sink = Sink::start();
    let port = free_udp_port();
    let mut pair = Pair::start(&lane_spec("on", port, &sink));
    let forger = thread::spawn(move || {
        let s = UdpSocket::bind("127.0.0.1:0").expect("bind");
        let mut sent = 0u64;
        for i in 0..20_000u64 {
            // A shard header (kind 1, 47 data + 4 parity, a 64 KiB group), then noise.
            let mut d = vec![1u8, 47, 4, (i % 51) as u8];
            d.extend_from_slice(&i.to_be_bytes());
            d.extend_from_slice(&(i / 51).to_be_bytes());
            d.extend_from_slice(&0u64.to_be_bytes());
            d.extend_from_slice(&65_536u32.to_be_bytes());
            d.resize(32 + 1395 + 16, (i * 31) as u8);
            if i % 7 == 0 {
                // An ack with no ranges, and garbage of every length now and then.
                d.truncate(57);
                d[0] = 2;
                d[1] = 0;
            }
            if s.send_to(&d, ("127.0.0.1", port)).is_ok() {
                sent += 1;
            }
            if i % 500 == 0 {
                thread::sleep(Duration::from_millis(2));
            }
        }
        sent
    });
    send_and_check(&mut pair, &sink, Payload::Random);
    assert!(forger.join().expect("forger") > 0);
    let b = counters(&pair, false);
    assert!(
        get(&b, "lane_datagrams_refused") > 0,
        "no forgery refused: {b:?}"
    );
    assert!(get(&b, "lane_frames_rebuilt") > 0, "{b:?}");
}

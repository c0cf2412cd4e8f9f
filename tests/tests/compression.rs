//! Compression of the migration stream on the gateways (issue 15), end to end through real
//! `lmas` processes on loopback (kernel datapath): every payload kind (random, text-like, and
//! guest-like pages of zeros, text and random bytes) with `wan.compression` auto, off and fixed
//! codecs must arrive byte for byte (SHA-256); the counters must show text packed, random sent
//! as it is, and nothing packed with `off`. A gateway with compression off and one with auto
//! talk both ways (each side packs only what it sends; both unpack). `lmas status` shows each
//! session's own figures (a text session packs, a random one is skipped) and they add up to
//! the tunnel's.

use std::collections::BTreeMap;
use std::io;
use std::net::Shutdown;
use std::thread;
use std::time::Duration;

use lmas_tests::{
    connect, lmas, packing_adds_up, packing_figure as figure, recv_all, send_payload,
    write_payload, HoldingTarget, Pair, PairSpec, Payload, Sent, Sink,
};
use serde_json::Value;

const MIB: u64 = 1 << 20;
const LEN: u64 = 24 * MIB;

fn counters(pair: &Pair, a: bool) -> BTreeMap<String, u64> {
    let g = if a { &pair.a } else { &pair.b };
    g.counters().unwrap_or_else(|e| panic!("{e}"))
}

/// One transfer A -> B of `kind` with A's compression `mode`; returns A's compression counters.
fn transfer(mode: &str, kind: Payload, seed: u64) -> BTreeMap<String, u64> {
    let sink = Sink::start();
    let spec = PairSpec {
        wan_extra: vec![format!("compression = \"{mode}\"")],
        ..PairSpec::to_target(2, sink.addr())
    };
    let mut pair = Pair::start(&spec);
    let sent = send_payload(pair.ingress[0], LEN, seed, kind)
        .unwrap_or_else(|e| panic!("{mode} {kind:?}: {e}\n{}", pair.logs()));
    let got = sink.recv(Duration::from_secs(60));
    assert_eq!(got.bytes, LEN, "{mode} {kind:?}: bytes at the sink");
    assert_eq!(got.sha256, sent.sha256, "{mode} {kind:?}: SHA-256");
    let c = counters(&pair, true);
    let b = counters(&pair, false);
    pair.assert_running();
    let get = |m: &BTreeMap<String, u64>, k: &str| m.get(k).copied().unwrap_or(0);
    println!(
        "{mode:>7} {kind:?}: A packed {} frames, skipped {}, {} -> {} bytes; B unpacked in {} ms",
        get(&c, "compression_frames_packed"),
        get(&c, "compression_frames_skipped"),
        get(&c, "compression_bytes_in"),
        get(&c, "compression_bytes_out"),
        get(&b, "compression_unpack_ns") / 1_000_000
    );
    c
}

fn get(m: &BTreeMap<String, u64>, k: &str) -> u64 {
    *m.get(k).unwrap_or_else(|| panic!("no counter {k}: {m:?}"))
}

#[test]
fn every_payload_arrives_exactly_with_every_compression_mode() {
    for (i, mode) in ["auto", "off", "lz4", "zstd:3"].into_iter().enumerate() {
        for (j, kind) in [Payload::Random, Payload::Text, Payload::Mixed]
            .into_iter()
            .enumerate()
        {
            let c = transfer(mode, kind, 100 + (i * 3 + j) as u64);
            let (bytes_in, bytes_out) = (
                get(&c, "compression_bytes_in"),
                get(&c, "compression_bytes_out"),
            );
            match (mode, kind) {
                ("off", _) => assert_eq!(bytes_in, 0, "off packs nothing: {c:?}"),
                (_, Payload::Random) => assert!(
                    bytes_out >= bytes_in,
                    "{mode}: random data cannot shrink, so it goes as it is: {c:?}"
                ),
                (_, Payload::Text) => assert!(
                    bytes_out * 2 < bytes_in,
                    "{mode}: text-like pages at least halve: {c:?}"
                ),
                (_, Payload::Mixed) => assert!(
                    bytes_out * 10 < bytes_in * 8,
                    "{mode}: a third zero and a third text pages save at least a fifth: {c:?}"
                ),
            }
            if mode != "off" && kind == Payload::Random {
                assert!(
                    get(&c, "compression_frames_skipped") > 0,
                    "{mode}: the probe skips random frames: {c:?}"
                );
            }
        }
    }
}

/// A: `off` (packs nothing it sends), B: `auto`. One session carries text both ways at once.
#[test]
fn a_gateway_with_compression_off_and_one_with_auto_talk_both_ways() {
    const LEN: u64 = 16 * MIB;
    // The target sends text back while it reads what comes.
    let (target, at_target) = lmas_tests::serve_once(Duration::from_secs(30), |s| {
        let mut w = s.try_clone()?;
        let back = thread::spawn(move || -> io::Result<Sent> {
            let sent = write_payload(&mut w, LEN, 7, Payload::Text)?;
            w.shutdown(Shutdown::Write)?;
            Ok(sent)
        });
        let got = recv_all(&mut &s)?;
        let sent = back
            .join()
            .map_err(|_| io::Error::other("target writer panicked"))??;
        Ok((got, sent))
    });
    let spec = PairSpec {
        a_wan_extra: vec!["compression = \"off\"".into()],
        b_wan_extra: vec!["compression = \"auto\"".into()],
        ..PairSpec::to_target(2, target)
    };
    let mut pair = Pair::start(&spec);
    let s = connect(pair.ingress[0]).expect("connect to A's ingress");
    let mut w = s.try_clone().expect("clone");
    let up = thread::spawn(move || -> io::Result<Sent> {
        let sent = write_payload(&mut w, LEN, 3, Payload::Text)?;
        w.shutdown(Shutdown::Write)?;
        Ok(sent)
    });
    let back = recv_all(&mut &s).unwrap_or_else(|e| panic!("{e}\n{}", pair.logs()));
    let up = up.join().expect("client writer").expect("client writes");
    let (got, down) = lmas_tests::join(at_target).expect("target");
    assert_eq!(
        (got.bytes, &got.sha256),
        (LEN, &up.sha256),
        "up: A (off) -> B (auto)"
    );
    assert_eq!(
        (back.bytes, &back.sha256),
        (LEN, &down.sha256),
        "down: B (auto) -> A (off)"
    );
    let (a, b) = (counters(&pair, true), counters(&pair, false));
    assert_eq!(
        get(&a, "compression_bytes_in"),
        0,
        "A (off) packed nothing: {a:?}"
    );
    assert!(
        get(&b, "compression_frames_packed") > 0,
        "B (auto) packed its direction: {b:?}"
    );
    assert!(
        get(&a, "compression_unpack_ns") > 0,
        "A (off) unpacked B's frames: {a:?}"
    );
    pair.assert_running();
}

/// Two sessions at once through a kernel pair (`auto`), held open once their bytes are
/// through: A's status shows the text session packed (ratio below 0.5, pack CPU time) and the
/// random one skipped (ratio 1), B's shows what unpacking each cost, and on both the sessions
/// add up to the tunnel. The human output shows each session's ratio.
#[test]
fn each_session_shows_its_own_compression_figures() {
    const LEN: u64 = 8 * MIB;
    let (text_t, random_t) = (HoldingTarget::start(LEN), HoldingTarget::start(LEN));
    let targets = vec![text_t.addr.to_string(), random_t.addr.to_string()];
    let spec = PairSpec {
        data_flows: 2,
        ingress: targets.clone(),
        egress_allow: targets.clone(),
        ..PairSpec::default()
    };
    let mut pair = Pair::start(&spec);
    // The clients keep their connections open: the sessions stay in status.
    let mut clients = Vec::new();
    for (ingress, kind) in pair.ingress.iter().zip([Payload::Text, Payload::Random]) {
        let mut c = connect(*ingress).expect("connect to A's ingress");
        write_payload(&mut c, LEN, 5, kind).unwrap_or_else(|e| panic!("{e}\n{}", pair.logs()));
        clients.push(c);
    }
    text_t.wait_all(Duration::from_secs(60));
    random_t.wait_all(Duration::from_secs(60));

    let a = pair.a.status().unwrap();
    let at_a = packing_adds_up(&a, "A");
    let (text, random) = (&at_a[&targets[0]], &at_a[&targets[1]]);
    println!("A: text {text}\nA: random {random}");
    assert_eq!(
        figure(text, "bytes_in"),
        LEN,
        "A packed all of the text session: {a:#}"
    );
    assert!(
        figure(text, "frames_packed") > 0 && figure(text, "pack_ns") > 0,
        "{a:#}"
    );
    assert!(
        text["ratio"].as_f64().unwrap() < 0.5,
        "text at least halves: {a:#}"
    );
    assert_eq!(figure(random, "bytes_in"), LEN, "{a:#}");
    assert_eq!(
        figure(random, "bytes_out"),
        LEN,
        "random goes as it is: {a:#}"
    );
    assert!(figure(random, "frames_skipped") > 0, "{a:#}");
    assert_eq!(figure(random, "frames_packed"), 0, "{a:#}");
    assert_eq!(random["ratio"].as_f64(), Some(1.0));
    assert_eq!(
        figure(&a["tunnel"]["compression"], "unpack_ns"),
        0,
        "B sent no data"
    );

    let b = pair.b.status().unwrap();
    let at_b = packing_adds_up(&b, "B");
    let (text_b, random_b) = (&at_b[&targets[0]], &at_b[&targets[1]]);
    assert!(
        figure(text_b, "unpack_ns") > 0,
        "B unpacked the text session: {b:#}"
    );
    assert_eq!(
        figure(random_b, "unpack_ns"),
        0,
        "nothing packed to unpack: {b:#}"
    );
    assert_eq!(
        (figure(text_b, "bytes_in"), &text_b["ratio"]),
        (0, &Value::Null)
    );

    let out = lmas(&[
        "status",
        "--socket",
        &pair.dir.join("gw-a.sock").display().to_string(),
    ]);
    let human = String::from_utf8_lossy(&out.stdout);
    println!("{human}");
    let ratio_of = |target: &str| -> f64 {
        let row = human
            .lines()
            .find(|l| l.contains(&format!("-> {target}")) && l.contains(" open "))
            .unwrap_or_else(|| panic!("no session to {target}:\n{human}"));
        let cols: Vec<&str> = row.split_whitespace().collect();
        cols[cols.len() - 2]
            .parse()
            .unwrap_or_else(|e| panic!("{e}: {row}"))
    };
    assert!(ratio_of(&targets[0]) < 0.5, "{human}");
    assert_eq!(ratio_of(&targets[1]), 1.0, "{human}");
    assert!(
        human.contains("compression: "),
        "the tunnel's line: {human}"
    );
    drop(clients);
    pair.assert_running();
}

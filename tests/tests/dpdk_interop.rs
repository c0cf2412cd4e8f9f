//! The DPDK datapath against itself and against the kernel datapath, with real `lmas`
//! processes on veth pairs in network namespaces (the DPDK gateways use the af_packet PMD, no
//! hugepages): kernel→DPDK, DPDK→kernel and DPDK→DPDK each carry several concurrent sessions
//! byte-exact (SHA-256), one of them in both directions at once; a gateway with the wrong key is
//! refused before any session exists; on DPDK both ways, `lmas status` shows each session's own
//! compression figures. Needs root, namespaces and the system DPDK; skips with a message
//! otherwise.

use std::net::{SocketAddr, SocketAddrV4, TcpListener};
use std::sync::Mutex;
use std::time::Duration;

use lmas_tests::dpdk_lab::{dpdk_available, Kind, Topology, DST};
use lmas_tests::netns::skip_unless_available;
use lmas_tests::{
    connect, duplex, expected_sha256, packing_adds_up, packing_figure as figure, send,
    send_payload, serve_once_on, write_payload, Gateway, HoldingTarget, Payload, Sink,
};

/// DPDK gateways poll; one case at a time keeps a small machine responsive.
static SERIAL: Mutex<()> = Mutex::new(());

const UP: u64 = 12 << 20;
const DOWN: u64 = 4 << 20;
const SESSIONS: u64 = 3;
const WAIT: Duration = Duration::from_secs(30);

fn skip(test: &str) -> bool {
    if skip_unless_available(test) {
        return true;
    }
    if let Err(why) = dpdk_available() {
        eprintln!("SKIP: {test}: {why}");
        return true;
    }
    false
}

/// Three one-way sessions of random bytes, one of guest-like pages (zeros, text, random: the
/// sending gateway packs them, the other unpacks) and one duplex session at once, src → dst
/// through A and B; then the same guest-like pages again, which cross as dedup references
/// (the gateways' `dedup_scope` is `tunnel`).
fn transfers(t: &Topology) {
    let sink_addr = SocketAddr::V4(SocketAddrV4::new(DST, 5000));
    let sink = t
        .dst
        .run(move || Sink::bind(sink_addr))
        .expect("sink in dst");
    // Bound before any session starts: B refuses a session whose target is not listening yet,
    // and a slow host could start the server's thread after the client's session reached B.
    let duplex_listener = t
        .dst
        .run(|| TcpListener::bind((DST, 5001)))
        .expect("duplex server in dst");
    let (_, duplex_server) = serve_once_on(duplex_listener, WAIT, |s| duplex(&s, DOWN, 99));
    let to_sink = t.ingress_for(5000);
    let senders: Vec<_> = (1..=SESSIONS)
        .map(|seed| t.src.spawn(move || send(to_sink, UP, seed)))
        .collect();
    let guest_like = t
        .src
        .spawn(move || send_payload(to_sink.into(), UP, 77, Payload::Mixed));
    let to_duplex = t.ingress_for(5001);
    let duplex_client = t.src.spawn(move || {
        let s = connect(to_duplex)?;
        duplex(&s, UP, 42)
    });

    let mut want: Vec<String> = (1..=SESSIONS)
        .map(|seed| expected_sha256(UP, seed))
        .collect();
    for h in senders {
        let sent = h
            .join()
            .expect("sender thread")
            .expect("send through the gateways");
        assert_eq!(sent.bytes, UP);
    }
    let guest_like = guest_like
        .join()
        .expect("sender thread")
        .expect("send guest-like pages through the gateways");
    want.push(guest_like.sha256);
    let mut got: Vec<String> = (0..=SESSIONS).map(|_| sink.recv(WAIT).sha256).collect();
    got.sort();
    want.sort();
    assert_eq!(got, want, "a one-way session arrived altered");

    let (c_sent, c_got) = duplex_client
        .join()
        .expect("client thread")
        .expect("duplex client");
    let (s_sent, s_got) = duplex_server
        .join()
        .expect("server thread")
        .expect("duplex server");
    assert_eq!((c_sent.bytes, s_sent.bytes), (UP, DOWN));
    assert_eq!(
        s_got.sha256,
        expected_sha256(UP, 42),
        "duplex upstream altered"
    );
    assert_eq!(
        c_got.sha256,
        expected_sha256(DOWN, 99),
        "duplex downstream altered"
    );
    let again = t
        .src
        .spawn(move || send_payload(to_sink.into(), UP, 77, Payload::Mixed))
        .join()
        .expect("sender thread")
        .expect("send the guest-like pages again");
    assert_eq!(
        again.sha256,
        sink.recv(WAIT).sha256,
        "the repeat arrived altered"
    );
}

/// A's and B's tunnel `dedup` figures: the repeat went as references, B resolved them.
fn assert_deduplicated(ga: &Gateway, gb: &Gateway) {
    let (a, b) = (ga.status().unwrap(), gb.status().unwrap());
    let (da, db) = (&a["tunnel"]["dedup"], &b["tunnel"]["dedup"]);
    let ref_bytes = da["ref_bytes"].as_u64().unwrap_or(0);
    assert!(
        ref_bytes > UP / 2,
        "{} referenced {ref_bytes} bytes: {da}",
        ga.name
    );
    assert_eq!(
        db["resolved_bytes"].as_u64(),
        Some(ref_bytes),
        "{} resolved: {db}",
        gb.name
    );
    assert_eq!(db["misses"].as_u64(), Some(0), "{db}");
}

/// The topology for `tag`, its gateways started with `flows` data flows each and the tunnel up
/// on both.
fn tunnel_up(tag: &str, a: Kind, b: Kind, flows: u32) -> (Topology, Gateway, Gateway) {
    tunnel_up_with(tag, a, b, flows, false)
}

/// [`tunnel_up`], with both gateways deduplicating if `dedup`.
fn tunnel_up_with(
    tag: &str,
    a: Kind,
    b: Kind,
    flows: u32,
    dedup: bool,
) -> (Topology, Gateway, Gateway) {
    let mut t = Topology::new(tag, a, b).expect("topology");
    t.dedup = dedup;
    let (ca, cb) = (
        t.config_a(&t.key_b.public, flows),
        t.config_b(&t.key_a.public, flows),
    );
    let (mut ga, mut gb) = t.start(&ca, &cb);
    let up = format!("{flows} data flows");
    for g in [&mut ga, &mut gb] {
        g.wait_for_line(&["tunnel up", &up], WAIT)
            .unwrap_or_else(|e| panic!("{e}"));
    }
    (t, ga, gb)
}

/// B, whose dedup store is on disk, is killed and started again: it reopens the store, A's
/// new tunnel learns what it holds (the inventory), and the guest-like pages sent once more
/// cross as references, byte for byte. Returns the restarted B.
fn restart_with_store_on_disk(t: &Topology, ga: &Gateway, mut gb: Gateway) -> Gateway {
    let held = gb.status().unwrap()["tunnel"]["dedup"]["store_chunks"]
        .as_u64()
        .unwrap_or(0);
    assert!(held > 0, "{} stored nothing", gb.name);
    gb.kill();
    let mut gb = gb.spawn_again(&t.dir.join("b-restarted.log"));
    gb.wait_for_line(&["tunnel up"], WAIT)
        .unwrap_or_else(|e| panic!("restarted {}: {e}", gb.name));
    let deadline = std::time::Instant::now() + WAIT;
    loop {
        let a = ga.status().unwrap_or_default();
        if a["tunnel"]["dedup"]["index_chunks"].as_u64() >= Some(held) {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{} never learnt the {held} chunks the restarted {} holds: {a:#}
{}",
            ga.name,
            gb.name,
            gb.log_tail(20)
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let sink_addr = SocketAddr::V4(SocketAddrV4::new(DST, 5000));
    let sink = t
        .dst
        .run(move || Sink::bind(sink_addr))
        .expect("sink in dst");
    let to_sink = t.ingress_for(5000);
    let sent = t
        .src
        .spawn(move || send_payload(to_sink.into(), UP, 77, Payload::Mixed))
        .join()
        .expect("sender thread")
        .expect("send the guest-like pages after the restart");
    assert_eq!(
        sent.sha256,
        sink.recv(WAIT).sha256,
        "altered after the restart"
    );
    assert_deduplicated(ga, &gb);
    gb
}

fn pair(test: &str, a: Kind, b: Kind) {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let (t, mut ga, gb) = tunnel_up_with(test, a, b, 4, true);
    transfers(&t);
    // Both gateways saw every session (status works on either datapath).
    assert_eq!(ga.counter("sessions_opened").unwrap(), SESSIONS + 3);
    assert_eq!(gb.counter("sessions_accepted").unwrap(), SESSIONS + 3);
    assert_deduplicated(&ga, &gb);
    // The guest-like pages crossed packed (compression auto by default on both datapaths).
    assert!(
        ga.counter("compression_frames_packed").unwrap() > 0,
        "{} packed nothing",
        ga.name
    );
    assert!(
        gb.counter("compression_unpack_ns").unwrap() > 0,
        "{} unpacked nothing",
        gb.name
    );
    // (after the counters above: the restarted B's start again at 0)
    let mut gb = restart_with_store_on_disk(&t, &ga, gb);
    for g in [&mut ga, &mut gb] {
        let st = g
            .terminate(Duration::from_secs(10))
            .unwrap_or_else(|e| panic!("{e}"));
        assert!(
            st.success(),
            "{} exited with {st}; log:\n{}",
            g.name,
            g.log_tail(20)
        );
    }
}

#[test]
fn kernel_to_dpdk() {
    if !skip("kernel_to_dpdk") {
        pair("k2d", Kind::Kernel, Kind::Dpdk);
    }
}

#[test]
fn dpdk_to_kernel() {
    if !skip("dpdk_to_kernel") {
        pair("d2k", Kind::Dpdk, Kind::Kernel);
    }
}

#[test]
fn dpdk_to_dpdk() {
    if !skip("dpdk_to_dpdk") {
        pair("d2d", Kind::Dpdk, Kind::Dpdk);
    }
}

/// Per-session compression figures on the DPDK datapath (A packs on its crypto path, B
/// unpacks on its): a session of text-like pages and one of random bytes, held open once
/// their bytes are through. A's status shows the text packed and the random skipped, B's what
/// unpacking cost; on each the sessions add up to the tunnel and the gateway's counters.
#[test]
fn dpdk_sessions_show_their_own_compression_figures() {
    const LEN: u64 = 8 << 20;
    if skip("dpdk_sessions_show_their_own_compression_figures") {
        return;
    }
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let (t, mut ga, mut gb) = tunnel_up("d2dc", Kind::Dpdk, Kind::Dpdk, 2);
    // Text to dst:5000, random to dst:5001; targets and clients keep their connections.
    let mut held = Vec::new();
    for (port, kind) in [(5000, Payload::Text), (5001, Payload::Random)] {
        let listener = t
            .dst
            .run(move || TcpListener::bind((DST, port)))
            .expect("target in dst");
        let target = HoldingTarget::on(listener, LEN);
        let to = t.ingress_for(port);
        let mut client = t.src.run(move || connect(to)).expect("connect from src");
        write_payload(&mut client, LEN, 9, kind).expect("send through the gateways");
        target.wait_all(WAIT);
        held.push((target, client));
    }
    let (text, random) = (format!("{DST}:5000"), format!("{DST}:5001"));

    let a = ga.status().unwrap();
    let at_a = packing_adds_up(&a, "A (DPDK)");
    let (text_a, random_a) = (&at_a[&text], &at_a[&random]);
    println!("A: text {text_a}\nA: random {random_a}");
    assert_eq!(figure(text_a, "bytes_in"), LEN, "{a:#}");
    assert!(figure(text_a, "frames_packed") > 0 && figure(text_a, "pack_ns") > 0);
    assert!(
        text_a["ratio"].as_f64().unwrap() < 0.5,
        "text at least halves: {a:#}"
    );
    assert_eq!(
        figure(random_a, "bytes_out"),
        LEN,
        "random goes as it is: {a:#}"
    );
    assert!(figure(random_a, "frames_skipped") > 0, "{a:#}");
    assert_eq!(figure(random_a, "frames_packed"), 0, "{a:#}");

    let b = gb.status().unwrap();
    let at_b = packing_adds_up(&b, "B (DPDK)");
    println!("B: text {}\nB: random {}", at_b[&text], at_b[&random]);
    assert!(
        figure(&at_b[&text], "unpack_ns") > 0,
        "B unpacked the text: {b:#}"
    );
    assert_eq!(figure(&at_b[&random], "unpack_ns"), 0, "{b:#}");
    // The sessions end: their figures go with them, the tunnel keeps its totals.
    let tunnel_a = a["tunnel"]["compression"].clone();
    drop(held);
    for g in [&ga, &gb] {
        let deadline = std::time::Instant::now() + WAIT;
        loop {
            let st = g.status().unwrap();
            if st["tunnel"]["sessions"]
                .as_array()
                .is_some_and(Vec::is_empty)
            {
                if g.name == "gw-a" {
                    assert_eq!(st["tunnel"]["compression"], tunnel_a);
                }
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "{}: the sessions never ended: {st:#}\n{}",
                g.name,
                g.log_tail(30)
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
    for g in [&mut ga, &mut gb] {
        let st = g
            .terminate(Duration::from_secs(10))
            .unwrap_or_else(|e| panic!("{e}"));
        assert!(st.success(), "{} exited with {st}", g.name);
    }
}

/// A gateway with a key its peer does not know gets no tunnel and no session: refused at the
/// handshake, counted, logged naming the address; its clients are reset.
fn wrong_key(test: &str, a: Kind, b: Kind) {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let t = Topology::new(test, a, b).expect("topology");
    let stranger = lmas_tests::keygen(&t.dir.join("stranger.key"));
    // B expects a key A does not have.
    let (ca, cb) = (
        t.config_a(&t.key_b.public, 2),
        t.config_b(&stranger.public, 2),
    );
    let (mut ga, mut gb) = t.start(&ca, &cb);
    let refused = gb
        .wait_for_line(
            &["handshake with 10.77.2.1:", "failed", "unknown static key"],
            WAIT,
        )
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(refused.contains("WARN"), "{refused}");
    ga.wait_for_line(&["handshake with peer gw-b", "failed"], WAIT)
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(gb.counter("handshake_failures").unwrap() >= 1);
    assert!(gb.find_line(&["tunnel up"]).is_none() && ga.find_line(&["tunnel up"]).is_none());
    // A client gets reset (no tunnel), the destination is never contacted.
    let to = t.ingress_for(5000);
    let result = t.src.run(move || send(to, 1 << 20, 7));
    assert!(result.is_err(), "a session went through a refused tunnel");
    assert_eq!(gb.counter("sessions_accepted").unwrap(), 0);
}

#[test]
fn wrong_key_refused_by_a_dpdk_gateway() {
    if !skip("wrong_key_refused_by_a_dpdk_gateway") {
        wrong_key("wkd", Kind::Kernel, Kind::Dpdk);
    }
}

#[test]
fn wrong_key_refused_by_a_kernel_gateway_to_a_dpdk_dialler() {
    if !skip("wrong_key_refused_by_a_kernel_gateway_to_a_dpdk_dialler") {
        wrong_key("wkk", Kind::Dpdk, Kind::Kernel);
    }
}

/// A DPDK gateway that cannot start an admin endpoint stops its lcores and exits with the
/// error (naming the field), instead of hanging with lcores still polling.
#[test]
fn a_dpdk_gateway_that_cannot_bind_its_metrics_address_exits_cleanly() {
    if skip("a_dpdk_gateway_that_cannot_bind_its_metrics_address_exits_cleanly") {
        return;
    }
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let t = Topology::new("badm", Kind::Dpdk, Kind::Kernel).expect("topology");
    let ca = t.config_a(&t.key_b.public, 2);
    let mut text = std::fs::read_to_string(&ca).unwrap();
    // An address no interface of the namespace has.
    text.push_str("[metrics]\nbind = \"192.0.2.123:9108\"\n");
    std::fs::write(&ca, text).unwrap();
    let mut a = lmas_tests::Gateway::spawn_in("gw-a", &ca, &t.dir.join("a.log"), Some(t.a.clone()));
    let status = a
        .wait_exit(Duration::from_secs(20))
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(status.code(), Some(1), "log:\n{}", a.log_tail(20));
    let log = a.log();
    assert!(
        log.contains("metrics.bind") && log.contains("cannot listen on 192.0.2.123:9108"),
        "{log}"
    );
}

/// The DPDK pair with no kernel in the path: memif ports between the traffic endpoints
/// (lmas-load-dpdk) and the gateways and between the gateways (scripts/bench-memif.sh, short):
/// one stream and four at once, every hash equal.
#[test]
fn dpdk_to_dpdk_over_memif() {
    if let Err(why) = dpdk_available() {
        eprintln!("SKIP: dpdk_to_dpdk_over_memif: {why}");
        return;
    }
    let _one = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let out = lmas_tests::script(
        "bench-memif.sh",
        &[
            "--bytes",
            "32M",
            "--runs",
            "1",
            "--streams",
            "4",
            "--flows",
            "4",
            "--no-build",
        ],
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "bench-memif.sh failed ({}):\n{stdout}\n{stderr}",
        out.status
    );
    assert!(
        stderr.contains("hashes equal"),
        "no hashed transfer:\n{stdout}\n{stderr}"
    );
}

/// Two TCP lcores per gateway (dpdk.tcp_lcores, one sub-tunnel each, frames steered by the
/// I/O lcore) over memif: 32 sessions at once, every hash equal, both shards' sub-tunnels up.
#[test]
fn two_tcp_lcores_carry_32_sessions_over_memif() {
    if let Err(why) = dpdk_available() {
        eprintln!("SKIP: two_tcp_lcores_carry_32_sessions_over_memif: {why}");
        return;
    }
    let _one = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let out = lmas_tests::script(
        "bench-memif.sh",
        &[
            "--bytes",
            "64M",
            "--runs",
            "1",
            "--streams",
            "32",
            "--flows",
            "4",
            "--tcp-lcores",
            "2",
            "--no-build",
        ],
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "bench-memif.sh failed ({}):\n{stdout}\n{stderr}",
        out.status
    );
    assert!(
        stderr.contains("2 TCP lcore(s): 1 stream") && stderr.contains("hashes equal"),
        "no hashed transfer through two TCP lcores:\n{stdout}\n{stderr}"
    );
    // Both shards of each gateway carried packets.
    let shares: Vec<&str> = stdout
        .lines()
        .filter(|l| l.contains("packets per TCP lcore:"))
        .collect();
    assert_eq!(shares.len(), 2, "one line per gateway:\n{stdout}");
    for line in shares {
        let counts: Vec<u64> = line
            .rsplit(':')
            .next()
            .unwrap()
            .split_whitespace()
            .map(|w| w.parse().unwrap())
            .collect();
        assert!(counts.len() == 2 && counts.iter().all(|&c| c > 0), "{line}");
    }
}

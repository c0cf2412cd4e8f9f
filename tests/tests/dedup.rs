//! The WAN dedup cache (issue 16) end to end through real `lmas` processes on loopback (kernel
//! datapath): the same payload sent twice through one pair arrives byte for byte (SHA-256) both
//! times, and the second time crosses the data flows as references (the tunnel's `dedup`
//! figures and the bytes A's data flows sent); a random payload arrives exactly with dedup on;
//! a gateway with dedup off offers no store, so its peer sends it no dedup frames.

use std::time::Duration;

use lmas_tests::{send_payload, Pair, PairSpec, Payload, Sink};
use serde_json::Value;

const MIB: u64 = 1 << 20;
const LEN: u64 = 24 * MIB;

fn dedup(status: &Value) -> &Value {
    &status["tunnel"]["dedup"]
}

fn figure(v: &Value, key: &str) -> u64 {
    v[key]
        .as_u64()
        .unwrap_or_else(|| panic!("no figure {key}: {v:#}"))
}

/// Bytes A's data flows sent so far.
fn data_flow_bytes(status: &Value) -> u64 {
    status["tunnel"]["connections"]
        .as_array()
        .expect("connections")
        .iter()
        .filter(|c| c["kind"] == "data")
        .map(|c| c["bytes_sent"].as_u64().expect("bytes_sent"))
        .sum()
}

/// Sends `LEN` bytes of `kind` (seed `seed`) through A's first ingress to `sink`, checked by
/// SHA-256.
fn send(pair: &Pair, sink: &Sink, kind: Payload, seed: u64) {
    let sent = send_payload(pair.ingress[0], LEN, seed, kind)
        .unwrap_or_else(|e| panic!("{kind:?}: {e}\n{}", pair.logs()));
    let got = sink.recv(Duration::from_secs(60));
    assert_eq!(got.bytes, LEN, "{kind:?}: bytes at the sink");
    assert_eq!(got.sha256, sent.sha256, "{kind:?}: SHA-256");
}

#[test]
fn the_same_payload_twice_crosses_as_references_the_second_time() {
    let sink = Sink::start();
    let spec = PairSpec {
        wan_extra: vec!["dedup = \"auto\"".into(), "dedup_scope = \"tunnel\"".into()],
        ..PairSpec::to_target(4, sink.addr())
    };
    let mut pair = Pair::start(&spec);
    send(&pair, &sink, Payload::Mixed, 11);
    let first = pair.a.status().unwrap();
    send(&pair, &sink, Payload::Mixed, 11);
    let second = pair.a.status().unwrap();
    let (d1, d2) = (dedup(&first), dedup(&second));
    let wan1 = data_flow_bytes(&first);
    let wan2 = data_flow_bytes(&second) - wan1;
    println!("first: {wan1} bytes on the data flows, dedup {d1}\nsecond: {wan2} bytes, dedup {d2}");
    // A third of the pages are zeros: packing sends those as lengths, not dedup.
    let referenced = figure(d2, "ref_bytes") - figure(d1, "ref_bytes");
    assert!(
        referenced > LEN / 2,
        "the second copy's text and random pages went as references: {referenced} bytes"
    );
    assert!(
        wan2 * 10 < wan1,
        "the second copy put {wan2} bytes on the data flows, the first {wan1}"
    );
    let b = pair.b.status().unwrap();
    assert_eq!(figure(dedup(&b), "misses"), 0, "{b:#}");
    assert!(figure(dedup(&b), "resolved_bytes") >= referenced, "{b:#}");
    assert!(figure(dedup(&b), "store_chunks") > 0, "{b:#}");
    pair.assert_running();
}

#[test]
fn random_bytes_arrive_exactly_with_dedup_on() {
    let sink = Sink::start();
    let spec = PairSpec {
        wan_extra: vec!["dedup = \"auto\"".into()],
        ..PairSpec::to_target(4, sink.addr())
    };
    let mut pair = Pair::start(&spec);
    send(&pair, &sink, Payload::Random, 5);
    let a = pair.a.status().unwrap();
    println!("A: dedup {}", dedup(&a));
    assert_eq!(figure(dedup(&a), "ref_bytes"), 0, "nothing repeats: {a:#}");
    pair.assert_running();
}

#[test]
fn a_peer_with_dedup_off_gets_plain_frames() {
    let sink = Sink::start();
    let spec = PairSpec {
        a_wan_extra: vec!["dedup = \"auto\"".into(), "dedup_scope = \"tunnel\"".into()],
        b_wan_extra: vec!["dedup = \"off\"".into()],
        ..PairSpec::to_target(4, sink.addr())
    };
    let mut pair = Pair::start(&spec);
    send(&pair, &sink, Payload::Mixed, 3);
    send(&pair, &sink, Payload::Mixed, 3);
    let (a, b) = (pair.a.status().unwrap(), pair.b.status().unwrap());
    assert_eq!(
        figure(dedup(&a), "bytes_in"),
        0,
        "A sent no dedup frame: {a:#}"
    );
    assert_eq!(figure(dedup(&a), "peer_store_bytes"), 0, "{a:#}");
    assert_eq!(figure(dedup(&b), "store_chunks"), 0, "{b:#}");
    pair.assert_running();
}

/// The receiver's store stays within `dedup_store_bytes`, in its own count and in the
/// process's memory: 168 MiB of first-seen data into a 16 MiB store evicts, and B's resident
/// memory grows by no more than the store plus a constant (record buffers, socket buffers,
/// the allocator's fragmentation as chunks of 1-16 KiB come and go); after the first 24 MiB
/// (the store full) the next 144 MiB add less than twice the store, where an unbounded store
/// would add all of them. A 4 MiB session window keeps what B
/// buffers for a slow sink small, so that the store is what the memory shows.
#[test]
fn the_store_stays_within_its_bound_in_memory() {
    const STORE: u64 = 16 * MIB;
    let sink = Sink::start();
    let spec = PairSpec {
        wan_extra: vec![
            "dedup = \"auto\"".into(),
            format!("dedup_store_bytes = {STORE}"),
        ],
        session_window_bytes: Some(4 * MIB),
        ..PairSpec::to_target(4, sink.addr())
    };
    let mut pair = Pair::start(&spec);
    let rss = |pair: &Pair| pair.b.rss_kib().expect("B's RSS") * 1024;
    let before = rss(&pair);
    send(&pair, &sink, Payload::Random, 20);
    let filled = rss(&pair);
    for seed in 21..27 {
        send(&pair, &sink, Payload::Random, seed);
    }
    let after = rss(&pair);
    let b = pair.b.status().unwrap();
    let d = dedup(&b);
    println!("B: RSS {before} -> {filled} -> {after} bytes; dedup {d}");
    assert!(figure(d, "store_bytes") <= STORE, "{d}");
    assert!(figure(d, "store_evictions") > 0, "168 MiB evicted: {d}");
    assert!(
        after <= before + STORE + 48 * MIB,
        "B's RSS grew by {} bytes, beyond the store's {STORE} plus 48 MiB",
        after - before
    );
    assert!(
        after <= filled + 2 * STORE,
        "B's RSS kept growing with a full store: {filled} -> {after}"
    );
    pair.assert_running();
}

/// `PairSpec` for dedup in the tunnel scope, B's store of `store` bytes in files under `dir`.
fn with_store_on_disk(sink: &Sink, dir: &std::path::Path, store: u64) -> PairSpec {
    PairSpec {
        wan_extra: vec![
            "dedup = \"auto\"".into(),
            "dedup_scope = \"tunnel\"".into(),
            format!("dedup_store_bytes = {store}"),
        ],
        b_wan_extra: vec![format!("dedup_dir = {:?}", dir.display().to_string())],
        session_window_bytes: Some(4 * MIB),
        ..PairSpec::to_target(4, sink.addr())
    }
}

/// Waits until `cond` holds for A's tunnel dedup figures; panics with the logs after 20 s.
fn wait_for_a(pair: &Pair, what: &str, cond: impl Fn(&Value) -> bool) -> Value {
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let status = pair.a.status().unwrap_or(Value::Null);
        if cond(dedup(&status)) {
            return status;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "A never saw {what}: {status:#}\n{}",
            pair.logs()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// B keeps its store in files (`dedup_dir`) and is killed (SIGKILL, no shutdown) and started
/// again: it reopens the store, A's new tunnel learns what it holds (the inventory), and the
/// same payload sent again crosses as references, byte for byte.
#[test]
fn a_store_on_disk_survives_a_restart_of_the_receiving_gateway() {
    let sink = Sink::start();
    let dir = tempfile::tempdir().expect("temp dir");
    let store_dir = dir.path().join("store");
    let mut pair = Pair::start(&with_store_on_disk(&sink, &store_dir, 256 * MIB));
    send(&pair, &sink, Payload::Mixed, 31);
    let wan1 = data_flow_bytes(&pair.a.status().unwrap());
    let held = figure(dedup(&pair.b.status().unwrap()), "store_chunks");
    assert!(held > 1000, "B stored {held} chunks");

    pair.b.kill();
    let restarted = pair.b.spawn_again(&pair.dir.join("gw-b-restarted.log"));
    drop(std::mem::replace(&mut pair.b, restarted));
    pair.b
        .wait_for_log("tunnel up: peer gw-a", Duration::from_secs(30))
        .unwrap_or_else(|e| panic!("restarted gw-b: {e}\n{}", pair.logs()));
    let b = pair.b.status().unwrap();
    assert_eq!(figure(dedup(&b), "store_chunks"), held, "reopened: {b:#}");
    let before = wait_for_a(&pair, "the inventory", |d| {
        d["index_chunks"].as_u64() == Some(held)
    });

    send(&pair, &sink, Payload::Mixed, 31);
    let after = pair.a.status().unwrap();
    let wan2 = data_flow_bytes(&after) - data_flow_bytes(&before);
    println!("before the restart: {wan1} bytes on the data flows; after: {wan2}");
    assert!(
        wan2 * 10 < wan1,
        "after the restart the same payload put {wan2} bytes on the data flows, before {wan1}"
    );
    let b = pair.b.status().unwrap();
    assert_eq!(figure(dedup(&b), "misses"), 0, "{b:#}");
    assert_eq!(figure(dedup(&b), "store_io_errors"), 0, "{b:#}");
    pair.assert_running();
}

/// A store on disk keeps its files within `dedup_store_bytes` (96 MiB of first-seen data into
/// 16 MiB), and B's memory holds only where each chunk is, not the chunks.
#[test]
fn the_store_stays_within_its_bound_on_disk() {
    const STORE: u64 = 16 * MIB;
    let sink = Sink::start();
    let dir = tempfile::tempdir().expect("temp dir");
    let store_dir = dir.path().join("store");
    let mut pair = Pair::start(&with_store_on_disk(&sink, &store_dir, STORE));
    let rss = |pair: &Pair| pair.b.rss_kib().expect("B's RSS") * 1024;
    let before = rss(&pair);
    let mut largest = 0;
    for seed in 40..44 {
        send(&pair, &sink, Payload::Random, seed);
        let files: u64 = std::fs::read_dir(&store_dir)
            .expect("the store's directory")
            .map(|e| e.expect("entry").metadata().expect("metadata").len())
            .sum();
        largest = largest.max(files);
    }
    let after = rss(&pair);
    let b = pair.b.status().unwrap();
    let d = dedup(&b);
    println!("B: files at most {largest} bytes; RSS {before} -> {after}; dedup {d}");
    assert!(largest <= STORE, "the files took {largest} bytes");
    assert!(figure(d, "store_bytes") <= STORE, "{d}");
    assert!(figure(d, "store_evictions") > 0, "96 MiB evicted: {d}");
    assert!(
        after <= before + 32 * MIB,
        "B's RSS grew by {} bytes: the chunks are on disk, not in memory",
        after - before
    );
    pair.assert_running();
}

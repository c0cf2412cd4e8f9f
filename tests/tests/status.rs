//! `lmas status` against a running pair: the session and byte counts it shows match what the
//! test sent, on both gateways, and the WAN connections and counters are there.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::thread;
use std::time::{Duration, Instant};

use lmas_tests::{lmas, HoldingTarget, Pair, PairSpec};
use serde_json::Value;

fn status(socket: &Path) -> Value {
    let out = lmas(&[
        "status",
        "--socket",
        &socket.display().to_string(),
        "--json",
    ]);
    assert!(
        out.status.success(),
        "lmas status failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "status is not JSON ({e}): {}",
            String::from_utf8_lossy(&out.stdout)
        )
    })
}

/// Polls `socket` until `check` accepts the status (or 10 s pass).
fn wait_status(socket: &Path, what: &str, check: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let s = status(socket);
        if check(&s) {
            return s;
        }
        assert!(
            Instant::now() < deadline,
            "status never showed {what}: {s:#}"
        );
        thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn status_json_shows_the_session_and_its_bytes() {
    // A target that reads exactly N bytes, then holds the connection open.
    let n: u64 = 10 << 20;
    let target = HoldingTarget::start(n);
    let target_addr = target.addr;
    let pair = Pair::start(&PairSpec::to_target(4, target_addr));
    let a_sock = pair.dir.join("gw-a.sock");
    let b_sock = pair.dir.join("gw-b.sock");

    let mut client = TcpStream::connect(pair.ingress[0]).expect("connect ingress");
    let local = client.local_addr().unwrap().to_string();
    let chunk = vec![0x5Au8; 1 << 20];
    for _ in 0..10 {
        client.write_all(&chunk).expect("write");
    }
    assert_eq!(target.wait_all(Duration::from_secs(30)), n);

    let a = wait_status(&a_sock, "10 MiB acked on gw-a", |s| {
        s["tunnel"]["sessions"][0]["bytes_up_acked"].as_u64() == Some(n)
    });
    let session = &a["tunnel"]["sessions"][0];
    assert_eq!(a["gateway"], "gw-a");
    assert_eq!(a["tunnel"]["state"], "up");
    assert_eq!(
        a["tunnel"]["sessions"].as_array().unwrap().len(),
        1,
        "{a:#}"
    );
    assert_eq!(session["source"], local.as_str(), "source address: {a:#}");
    assert_eq!(session["target"], target_addr.to_string().as_str());
    assert_eq!(session["bytes_up"].as_u64(), Some(n));
    assert_eq!(session["bytes_down"].as_u64(), Some(0));
    assert_eq!(session["in_flight"].as_u64(), Some(0));
    let conns = a["tunnel"]["connections"].as_array().unwrap();
    assert_eq!(conns.len(), 5, "control + 4 data flows: {a:#}");
    let data_sent: u64 = conns
        .iter()
        .filter(|c| c["kind"] == "data")
        .map(|c| c["bytes_sent"].as_u64().unwrap())
        .sum();
    // The payload (one repeated byte) is packed on the way (compression auto): status shows
    // what packing took and gave, and the flows carry at least the latter.
    let (packed_in, packed_out) = (
        a["counters"]["compression_bytes_in"].as_u64(),
        a["counters"]["compression_bytes_out"]
            .as_u64()
            .unwrap_or(u64::MAX),
    );
    assert_eq!(packed_in, Some(n), "{a:#}");
    assert!(
        packed_out < n / 10 && data_sent >= packed_out,
        "data flows carried {data_sent} bytes; packing turned {n} into {packed_out}"
    );
    assert!(
        conns.iter().all(|c| c["tcp"]["rtt_us"].is_u64()),
        "TCP_INFO: {a:#}"
    );
    assert_eq!(a["counters"]["sessions_opened"].as_u64(), Some(1));

    let b = wait_status(&b_sock, "10 MiB delivered on gw-b", |s| {
        s["tunnel"]["sessions"][0]["bytes_down"].as_u64() == Some(n)
    });
    assert_eq!(b["tunnel"]["sessions"][0]["source"], Value::Null);
    assert_eq!(b["counters"]["sessions_accepted"].as_u64(), Some(1));
    assert_eq!(b["counters"]["handshakes_ok"].as_u64(), Some(5));

    // The human rendering works too.
    let out = lmas(&["status", "--socket", &a_sock.display().to_string()]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("tunnel") && text.contains(&local), "{text}");

    drop(client);
}

/// While a paced transfer runs, every status read is consistent with what the source has
/// written (never more, acked never more than read), B never shows more delivered than A has
/// read, and at the end both show exactly the bytes sent; `--watch` shows the session's
/// goodput meanwhile.
#[test]
fn status_during_a_transfer_matches_what_was_sent() {
    use lmas_tests::{paced_send, wait_progress, Sink};
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::Arc;

    let sink = Sink::start();
    let pair = Pair::start(&PairSpec::to_target(4, sink.addr()));
    let a_sock = pair.dir.join("gw-a.sock");
    let b_sock = pair.dir.join("gw-b.sock");
    let len: u64 = 24 << 20;
    let progress = Arc::new(AtomicU64::new(0));
    let source = paced_send(
        None,
        pair.ingress[0],
        len,
        7,
        6.0 * (1 << 20) as f64,
        progress.clone(),
    );
    wait_progress(&progress, 1 << 20, Duration::from_secs(20)).expect("source started");

    // `lmas status --watch` for a while: the session line carries a goodput.
    let mut watch = std::process::Command::new(lmas_tests::lmas_bin())
        .args(["status", "--watch", "0.5", "--socket"])
        .arg(&a_sock)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("lmas status --watch");
    let mut samples = 0;
    while progress.load(Ordering::Relaxed) < len && samples < 15 {
        let b = status(&b_sock);
        let a = status(&a_sock);
        let written = progress.load(Ordering::Relaxed);
        if let (Some(sa), Some(sb)) = (
            a["tunnel"]["sessions"].get(0),
            b["tunnel"]["sessions"].get(0),
        ) {
            let (up, acked) = (
                sa["bytes_up"].as_u64().unwrap(),
                sa["bytes_up_acked"].as_u64().unwrap(),
            );
            let down = sb["bytes_down"].as_u64().unwrap();
            assert!(
                up <= written,
                "gw-a read {up} bytes but the source wrote {written}"
            );
            assert!(acked <= up, "acked {acked} > read {up}");
            assert!(
                down <= up,
                "gw-b delivered {down} > gw-a read {up} (B was read first)"
            );
            assert_eq!(sa["in_flight"].as_u64(), Some(up - acked));
            samples += 1;
        }
        thread::sleep(Duration::from_millis(200));
    }
    assert!(
        samples >= 3,
        "only {samples} status reads during the transfer"
    );
    let _ = watch.kill();
    let mut text = String::new();
    watch
        .stdout
        .take()
        .expect("stdout")
        .read_to_string(&mut text)
        .expect("read --watch output");
    let _ = watch.wait();
    assert!(
        text.lines()
            .any(|l| l.contains(&sink.addr().to_string()) && l.trim_end().ends_with("Mbit/s")),
        "--watch showed no per-session goodput:\n{text}"
    );

    let (sent, _) = source.join().expect("source thread");
    let sent = sent.expect("source");
    assert_eq!(sink.recv(Duration::from_secs(30)).sha256, sent.sha256);
    // The session is gone once complete; the counters remember it.
    let a = wait_status(&a_sock, "the session closed", |s| {
        s["tunnel"]["sessions"]
            .as_array()
            .is_some_and(Vec::is_empty)
    });
    assert_eq!(a["counters"]["sessions_opened"].as_u64(), Some(1));
    assert_eq!(a["counters"]["sessions_reset"].as_u64(), Some(0));
}

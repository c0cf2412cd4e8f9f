//! `lmas status` against a running pair: the session and byte counts it shows match what the
//! test sent, on both gateways, and the WAN connections and counters are there.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use lmas_tests::{lmas, Pair, PairSpec};
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
    // A target that reads exactly N bytes, reports, then holds the connection open.
    let target = TcpListener::bind("127.0.0.1:0").expect("bind target");
    let target_addr = target.local_addr().unwrap();
    let n: u64 = 10 << 20;
    let (got_tx, got_rx) = mpsc::channel();
    let (done_tx, done_rx) = mpsc::channel::<()>();
    let server = thread::spawn(move || {
        let (mut s, _) = target.accept().expect("accept");
        let mut buf = vec![0u8; 1 << 16];
        let mut total = 0u64;
        while total < n {
            let k = s.read(&mut buf).expect("read");
            assert!(k > 0, "target: early EOF after {total} bytes");
            total += k as u64;
        }
        got_tx.send(total).unwrap();
        let _ = done_rx.recv_timeout(Duration::from_secs(60));
    });
    let pair = Pair::start(&PairSpec::to_target(4, target_addr));
    let a_sock = pair.dir.join("gw-a.sock");
    let b_sock = pair.dir.join("gw-b.sock");

    let mut client = TcpStream::connect(pair.ingress[0]).expect("connect ingress");
    let local = client.local_addr().unwrap().to_string();
    let chunk = vec![0x5Au8; 1 << 20];
    for _ in 0..10 {
        client.write_all(&chunk).expect("write");
    }
    assert_eq!(
        got_rx
            .recv_timeout(Duration::from_secs(30))
            .expect("target got the bytes"),
        n
    );

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
    assert!(data_sent >= n, "data flows carried {data_sent} < {n} bytes");
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
    done_tx.send(()).unwrap();
    server.join().unwrap();
}

//! The Prometheus metrics endpoint against a running pair: its output parses as the text
//! exposition format, its figures are the ones `lmas status` shows, bad requests get HTTP
//! errors without hurting the gateway, it is off by default, and a bad `[metrics]` config
//! names the field.
//!
//! Needs the release binary: `cargo build --release -p lmas` (or `LMAS_BIN`).

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::thread;
use std::time::{Duration, Instant};

use lmas_tests::prom::{http_get, scrape, Exposition};
use lmas_tests::{
    free_addr, keygen, lmas, temp_dir, Gateway, HoldingTarget, Pair, PairSpec, TUNNEL_UP_TIMEOUT,
};
use serde_json::Value;

/// Polls `g`'s status until `check` accepts it (or 10 s pass).
fn wait_status(g: &Gateway, what: &str, check: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let s = g.status().unwrap_or_else(|e| panic!("{e}"));
        if check(&s) {
            return s;
        }
        assert!(
            Instant::now() < deadline,
            "{}: status never showed {what}: {s:#}",
            g.name
        );
        thread::sleep(Duration::from_millis(100));
    }
}

fn metrics_addr(g: &lmas_tests::GatewayConfig) -> SocketAddr {
    g.metrics_bind
        .expect("PairSpec::metrics gives a metrics address")
}

fn u(v: &Value) -> u64 {
    v.as_u64()
        .unwrap_or_else(|| panic!("not an unsigned integer: {v}"))
}

/// Every counter of `before` .. `after` (two status reads around the scrape) has a series
/// `lmas_<name>_total` in between.
fn check_counters(m: &Exposition, prefix: &str, before: &Value, after: &Value) {
    let after = after.as_object().expect("counters are an object");
    assert!(!after.is_empty());
    for (name, v) in after {
        let metric = format!("{prefix}{name}_total");
        let got = m
            .value(&metric, &[])
            .unwrap_or_else(|| panic!("no series {metric}"));
        let lo = u(&before[name]) as f64;
        assert!(
            lo <= got && got <= u(v) as f64,
            "{metric} = {got}, status said {lo} then {v}"
        );
        let fam = m.family(&metric).expect("family");
        assert_eq!(fam.kind, "counter", "{metric}");
    }
}

/// Each WAN connection in status has its series, with bytes between the two status reads.
fn check_connections(m: &Exposition, before: &Value, after: &Value) {
    let conns = after["tunnel"]["connections"]
        .as_array()
        .expect("connections");
    let sent = m.samples("lmas_connection_sent_bytes_total");
    assert_eq!(sent.len(), conns.len(), "one series per connection");
    for c in conns {
        let flow = c["flow"]
            .as_u64()
            .map_or("-".to_string(), |f| f.to_string());
        let kind = c["kind"].as_str().expect("kind");
        let labels = [("kind", kind), ("flow", flow.as_str())];
        let earlier = before["tunnel"]["connections"]
            .as_array()
            .and_then(|a| {
                a.iter()
                    .find(|x| x["kind"] == c["kind"] && x["flow"] == c["flow"])
            })
            .expect("same connections in both status reads");
        for (metric, field) in [
            ("lmas_connection_sent_bytes_total", "bytes_sent"),
            ("lmas_connection_received_bytes_total", "bytes_received"),
        ] {
            let got = m
                .value(metric, &labels)
                .unwrap_or_else(|| panic!("no {metric}{labels:?}"));
            let (lo, hi) = (u(&earlier[field]) as f64, u(&c[field]) as f64);
            assert!(
                lo <= got && got <= hi,
                "{metric}{labels:?} = {got}, status {lo}..{hi}"
            );
        }
        let rtt = m
            .value("lmas_connection_rtt_seconds", &labels)
            .unwrap_or_else(|| panic!("no RTT for {labels:?}"));
        assert!(rtt > 0.0 && rtt < 1.0, "loopback RTT {rtt} s");
        assert!(
            m.value("lmas_connection_cwnd_segments", &labels)
                .unwrap_or(0.0)
                >= 1.0
        );
    }
}

#[test]
fn metrics_match_status_during_a_transfer() {
    // A target that reads exactly N bytes, then holds the connection open: the session is
    // still running while both gateways are scraped.
    let n: u64 = 12 << 20;
    let target = HoldingTarget::start(n);
    let target_addr = target.addr;
    let spec = PairSpec {
        metrics: true,
        ..PairSpec::to_target(4, target_addr)
    };
    let pair = Pair::start(&spec);
    pair.a
        .find_line(&["metrics on http://"])
        .unwrap_or_else(|| panic!("gw-a did not log its metrics address\n{}", pair.logs()));

    let mut client = TcpStream::connect(pair.ingress[0]).expect("connect ingress");
    let chunk = vec![0x3Cu8; 1 << 20];
    for _ in 0..(n >> 20) {
        client.write_all(&chunk).expect("write");
    }
    assert_eq!(target.wait_all(Duration::from_secs(30)), n);

    // gw-a: the source side.
    let before = wait_status(&pair.a, "all bytes acked", |s| {
        s["tunnel"]["sessions"][0]["bytes_up_acked"].as_u64() == Some(n)
    });
    let m = scrape(metrics_addr(&pair.a_config)).unwrap_or_else(|e| panic!("gw-a: {e}"));
    let after = pair.a.status().unwrap_or_else(|e| panic!("{e}"));
    let session = &after["tunnel"]["sessions"][0];
    let id = u(&session["id"]).to_string();
    let target = session["target"].as_str().expect("target").to_string();
    assert_eq!(target, target_addr.to_string());
    let labels = [("session", id.as_str()), ("target", target.as_str())];
    let value = |name: &str| {
        m.value(name, &labels)
            .unwrap_or_else(|| panic!("gw-a: no {name}{labels:?}"))
    };
    assert_eq!(value("lmas_session_up_bytes_total"), n as f64);
    assert_eq!(value("lmas_session_up_acked_bytes_total"), n as f64);
    assert_eq!(value("lmas_session_down_bytes_total"), 0.0);
    assert_eq!(value("lmas_session_in_flight_bytes"), 0.0);
    assert!(value("lmas_session_age_seconds") > 0.0);
    assert_eq!(m.value("lmas_sessions", &[("state", "open")]), Some(1.0));
    assert_eq!(m.value("lmas_tunnel_state", &[("state", "up")]), Some(1.0));
    assert_eq!(
        m.value("lmas_tunnel_state", &[("state", "held")]),
        Some(0.0)
    );
    assert_eq!(m.value("lmas_tunnel_buffered_bytes", &[]), Some(0.0));
    assert_eq!(m.value("lmas_session_series_omitted", &[]), Some(0.0));
    assert_eq!(
        m.value(
            "lmas_gateway_info",
            &[("gateway", "gw-a"), ("peer", "gw-b")]
        ),
        Some(1.0)
    );
    assert_eq!(m.value("lmas_sessions_opened_total", &[]), Some(1.0));
    check_counters(&m, "lmas_", &before["counters"], &after["counters"]);
    check_counters(
        &m,
        "lmas_tunnel_",
        &before["tunnel"]["counters"],
        &after["tunnel"]["counters"],
    );
    check_connections(&m, &before, &after);
    let data_sent: f64 = m
        .samples("lmas_connection_sent_bytes_total")
        .iter()
        .filter(|s| s.labels["kind"] == "data")
        .map(|s| s.value)
        .sum();
    // The payload (one repeated byte) is packed on the way (compression auto): the flows carry
    // at least what packing put on the wire for the session's n bytes.
    let packing = &after["counters"];
    assert_eq!(
        packing["compression_bytes_in"].as_u64(),
        Some(n),
        "{packing}"
    );
    let on_wire = packing["compression_bytes_out"]
        .as_u64()
        .expect("compression_bytes_out");
    assert!(
        on_wire < n / 10 && data_sent >= on_wire as f64,
        "data flows carried {data_sent} bytes; packing turned {n} into {on_wire}"
    );
    for f in &m.families {
        assert!(f.name.starts_with("lmas_"), "{}", f.name);
        assert!(
            f.help.as_deref().is_some_and(|h| !h.is_empty()),
            "{} has no HELP",
            f.name
        );
        assert_ne!(f.kind, "untyped", "{} has no TYPE", f.name);
    }

    // gw-b: the destination side delivered the same bytes.
    let before = wait_status(&pair.b, "all bytes delivered", |s| {
        s["tunnel"]["sessions"][0]["bytes_down"].as_u64() == Some(n)
    });
    let m = scrape(metrics_addr(&pair.b_config)).unwrap_or_else(|e| panic!("gw-b: {e}"));
    let after = pair.b.status().unwrap_or_else(|e| panic!("{e}"));
    let down = m.samples("lmas_session_down_bytes_total");
    assert_eq!(down.len(), 1, "{down:?}");
    assert_eq!(down[0].value, n as f64);
    assert_eq!(down[0].labels["target"], target_addr.to_string());
    assert_eq!(m.value("lmas_sessions_accepted_total", &[]), Some(1.0));
    check_counters(&m, "lmas_", &before["counters"], &after["counters"]);
    check_connections(&m, &before, &after);

    drop(client);
}

#[test]
fn bad_requests_get_http_errors_and_hurt_nothing() {
    let spec = PairSpec {
        metrics: true,
        ..PairSpec::default()
    };
    let mut pair = Pair::start(&spec);
    let addr = metrics_addr(&pair.a_config);
    let get = |req: &[u8]| http_get(addr, req).unwrap_or_else(|e| panic!("{req:?}: {e}"));

    assert_eq!(get(b"GET / HTTP/1.1\r\n\r\n").status, 404);
    assert_eq!(get(b"GET /metrics/x HTTP/1.1\r\n\r\n").status, 404);
    let r = get(b"POST /metrics HTTP/1.1\r\nContent-Length: 0\r\n\r\n");
    assert_eq!(r.status, 405);
    assert_eq!(
        r.headers.get("allow").map(String::as_str),
        Some("GET, HEAD")
    );
    assert_eq!(get(b"GET /metrics HTTP/2.0\r\n\r\n").status, 505);
    assert_eq!(get(b"\x00\xff garbage\r\n\r\n").status, 400);
    let mut long = b"GET /metrics HTTP/1.1\r\nX-Long: ".to_vec();
    long.extend(std::iter::repeat_n(b'a', 20_000));
    long.extend_from_slice(b"\r\n\r\n");
    assert_eq!(get(&long).status, 431);
    let head = get(b"HEAD /metrics HTTP/1.1\r\n\r\n");
    assert_eq!(head.status, 200);
    assert!(head.body.is_empty(), "HEAD sent a body");
    assert!(head.headers["content-length"].parse::<usize>().unwrap() > 0);

    // Silent clients hold no more than a slot each, for a bounded time; scrapes go on.
    let silent: Vec<TcpStream> = (0..8)
        .map(|_| TcpStream::connect(addr).expect("connect"))
        .collect();
    scrape(addr).unwrap_or_else(|e| panic!("scrape next to silent clients: {e}"));
    let start = Instant::now();
    for mut s in silent {
        s.set_read_timeout(Some(Duration::from_secs(15))).unwrap();
        let mut buf = [0u8; 64];
        match s.read(&mut buf) {
            Ok(0) | Err(_) => {}
            Ok(k) => panic!("a silent client got {k} bytes"),
        }
    }
    assert!(
        start.elapsed() < Duration::from_secs(12),
        "silent clients were held {:?}",
        start.elapsed()
    );
    let m = scrape(addr).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(m.value("lmas_tunnel_state", &[("state", "up")]), Some(1.0));
    pair.assert_running();
}

#[test]
fn metrics_are_off_by_default() {
    let pair = Pair::start(&PairSpec::default());
    assert!(
        pair.a.find_line(&["metrics on"]).is_none() && pair.b.find_line(&["metrics on"]).is_none(),
        "a gateway without [metrics] serves metrics\n{}",
        pair.logs()
    );
}

/// A minimal valid config for one gateway in `dir` (key `g.key`, made by the caller) with
/// `extra` appended.
fn config(dir: &std::path::Path, peer: &str, extra: &str) -> std::path::PathBuf {
    let path = dir.join("g.toml");
    let text = format!(
        "[gateway]\nname = \"g\"\nprivate_key_file = \"g.key\"\n\
         tunnel_listen = \"{}\"\n\n[peer]\nname = \"p\"\npublic_key = \"{peer}\"\n\n\
         [admin]\nsocket = \"g.sock\"\n{extra}",
        free_addr()
    );
    std::fs::write(&path, text).expect("write config");
    path
}

#[test]
fn bad_metrics_config_names_the_field() {
    let (dir, _tmp) = temp_dir("lmas-e2e-metrics-cfg-");
    keygen(&dir.join("g.key"));
    let peer = keygen(&dir.join("p.key")).public;
    for (extra, want) in [
        ("[metrics]\nbind = \"localhost:9108\"\n", "metrics.bind"),
        ("[metrics]\nbind = \"127.0.0.1\"\n", "metrics.bind"),
        ("[metrics]\nbind = 9108\n", "metrics.bind"),
        ("[metrics]\nport = 9108\n", "port"),
    ] {
        let path = config(&dir, &peer, extra);
        let out = lmas(&["check-config", path.to_str().unwrap()]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{extra:?} was accepted");
        let line = stderr
            .lines()
            .find(|l| l.starts_with("error:"))
            .unwrap_or_else(|| panic!("{extra:?}: no error line in {stderr}"));
        assert!(
            line.contains(want) && line.contains("g.toml"),
            "{extra:?}: the error should name the file and {want}: {line}"
        );
    }
    // An address that cannot be bound fails the start, naming the field.
    let busy = TcpListener::bind("127.0.0.1:0").expect("bind");
    let path = config(
        &dir,
        &peer,
        &format!("[metrics]\nbind = \"{}\"\n", busy.local_addr().unwrap()),
    );
    let mut g = Gateway::spawn("g", &path, &dir.join("g.log"));
    let st = g
        .wait_exit(TUNNEL_UP_TIMEOUT)
        .unwrap_or_else(|e| panic!("a gateway whose metrics address is taken: {e}"));
    assert!(!st.success());
    let log = g.log();
    assert!(
        log.contains("metrics.bind") && log.contains("cannot listen"),
        "{log}"
    );
}

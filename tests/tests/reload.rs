//! SIGHUP: the remote gateway re-reads its config and swaps in the new egress allowlist. A
//! target it no longer allows is refused for new sessions while a session already running to
//! it finishes byte-exact; an invalid file changes nothing; fields that need a restart are
//! named and kept.
//!
//! Needs the release binary: `cargo build --release -p lmas` (or `LMAS_BIN`).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use lmas_tests::{expect_closed, paced_send, send, wait_progress, Pair, PairSpec, Sink};

const MIB: u64 = 1 << 20;
const LOG_WAIT: Duration = Duration::from_secs(10);

/// Rewrites gw-b's config with `edit` applied to its settings, then sends it SIGHUP.
fn rewrite_b_and_hup(pair: &mut Pair, edit: impl FnOnce(&mut lmas_tests::GatewayConfig)) {
    let mut cfg = pair.b_config.clone();
    edit(&mut cfg);
    std::fs::write(&pair.b.config, cfg.to_toml()).expect("rewrite gw-b's config");
    pair.b_config = cfg;
    pair.b
        .signal(libc::SIGHUP)
        .unwrap_or_else(|e| panic!("{e}"));
}

#[test]
fn sighup_refuses_a_newly_disallowed_target_while_its_running_session_finishes() {
    let kept = Sink::start();
    let dropped = Sink::start();
    let spec = PairSpec {
        data_flows: 4,
        ingress: vec![dropped.addr().to_string(), kept.addr().to_string()],
        egress_allow: vec![dropped.addr().to_string(), kept.addr().to_string()],
        ..PairSpec::default()
    };
    let mut pair = Pair::start(&spec);

    // A session to the target about to be dropped from the allowlist, running throughout.
    let len = 40 * MIB;
    let progress = Arc::new(AtomicU64::new(0));
    let source = paced_send(
        None,
        pair.ingress[0],
        len,
        81,
        10.0 * MIB as f64,
        progress.clone(),
    );
    wait_progress(&progress, 4 * MIB, Duration::from_secs(20)).expect("source started");

    let keep = kept.addr().to_string();
    rewrite_b_and_hup(&mut pair, |c| c.egress_allow = vec![keep]);
    let line = pair
        .b
        .wait_for_log("reload: egress.allow is now", LOG_WAIT)
        .unwrap_or_else(|e| panic!("{e}"));
    eprintln!("gw-b: {line}");
    assert!(line.contains(&kept.addr().ip().to_string()), "{line}");
    assert!(
        progress.load(Ordering::Relaxed) < len,
        "the running session ended before the reload: the test proves nothing"
    );

    // A new session to the dropped target is refused...
    let (how, took) = expect_closed(pair.ingress[0], Duration::from_secs(5))
        .unwrap_or_else(|e| panic!("new session to a target removed by the reload: {e}"));
    eprintln!("new session to the dropped target: {how:?} after {took:?}");
    pair.b
        .wait_for_log(
            &format!(
                "refusing target {}: not in egress allowlist",
                dropped.addr()
            ),
            LOG_WAIT,
        )
        .unwrap_or_else(|e| panic!("{e}"));
    pair.a
        .wait_for_log(&format!("peer refused target {}", dropped.addr()), LOG_WAIT)
        .unwrap_or_else(|e| panic!("{e}"));

    // ...while the one already running finishes byte-exact.
    let (sent, _) = join_source(source);
    let got = dropped.recv(Duration::from_secs(60));
    assert_eq!(got.bytes, len);
    assert_eq!(
        got.sha256, sent.sha256,
        "SHA-256 of the session that outlived the reload"
    );

    // The target still allowed works; the counters say what happened.
    let sent = send(pair.ingress[1], 4 * MIB, 82).expect("session to the kept target");
    assert_eq!(kept.recv(Duration::from_secs(30)).sha256, sent.sha256);
    let counters = pair.b.counters().unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(counters["config_reloads"], 1, "{counters:?}");
    assert_eq!(counters["config_reload_failures"], 0, "{counters:?}");
    assert_eq!(counters["sessions_refused"], 1, "{counters:?}");
    assert_eq!(counters["sessions_reset"], 0, "{counters:?}");
    pair.assert_running();
}

fn join_source(
    h: std::thread::JoinHandle<(std::io::Result<lmas_tests::Sent>, std::time::Instant)>,
) -> (lmas_tests::Sent, std::time::Instant) {
    let (r, at) = h.join().expect("source thread");
    (r.unwrap_or_else(|e| panic!("source: {e}")), at)
}

#[test]
fn sighup_with_an_invalid_file_keeps_the_running_config() {
    let sink = Sink::start();
    let mut pair = Pair::start(&PairSpec::to_target(2, sink.addr()));

    // Invalid: data_flows out of range. Nothing changes, the error names the field.
    rewrite_b_and_hup(&mut pair, |c| {
        c.egress_allow.clear();
        c.data_flows = 0;
    });
    let line = pair
        .b
        .wait_for_log("reload failed, keeping the running config", LOG_WAIT)
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(line.contains("wan.data_flows"), "{line}");
    let sent = send(pair.ingress[0], 4 * MIB, 83).expect("session after the failed reload");
    assert_eq!(sink.recv(Duration::from_secs(30)).sha256, sent.sha256);

    // Valid, but changing a field that needs a restart as well as the allowlist: the allowlist
    // applies, the other field is named and keeps its running value.
    let other = Sink::start();
    let both = vec![sink.addr().to_string(), other.addr().to_string()];
    rewrite_b_and_hup(&mut pair, |c| {
        c.data_flows = 3;
        c.egress_allow = both;
    });
    pair.b
        .wait_for_line(
            &["reload: wan.data_flows changed", "after a restart"],
            LOG_WAIT,
        )
        .unwrap_or_else(|e| panic!("{e}"));
    pair.b
        .wait_for_log("reload: egress.allow is now", LOG_WAIT)
        .unwrap_or_else(|e| panic!("{e}"));
    let sent = send(pair.ingress[0], 4 * MIB, 84).expect("session after the reload");
    assert_eq!(sink.recv(Duration::from_secs(30)).sha256, sent.sha256);
    let status = pair.b.status().unwrap_or_else(|e| panic!("{e}"));
    let flows = status["tunnel"]["connections"]
        .as_array()
        .expect("connections")
        .iter()
        .filter(|c| c["kind"] == "data")
        .count();
    assert_eq!(flows, 2, "data flows changed without a restart: {status:#}");

    // A reload that changes nothing says so.
    pair.b
        .signal(libc::SIGHUP)
        .unwrap_or_else(|e| panic!("{e}"));
    pair.b
        .wait_for_log("reload: egress.allow unchanged", LOG_WAIT)
        .unwrap_or_else(|e| panic!("{e}"));
    let counters = pair.b.counters().unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(counters["config_reload_failures"], 1, "{counters:?}");
    assert_eq!(counters["config_reloads"], 2, "{counters:?}");
    pair.assert_running();
}

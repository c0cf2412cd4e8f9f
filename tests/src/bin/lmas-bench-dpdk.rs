//! `lmas-bench-dpdk`: the DPDK gateway pair against the kernel gateway pair on the same veth
//! topology (af_packet PMD for the DPDK ports), in one run, and the CPU each lcore role spends
//! per packet. Root; used by `scripts/bench-dpdk.sh`.
//!
//! ```text
//! lmas-bench-dpdk [--bytes N] [--runs R] [--modes kernel,dpdk,dpdk-kernel] [--csv FILE]
//! ```
//!
//! For each mode it builds the topology of `lmas_tests::dpdk_lab` (src — A — B — dst), starts
//! the pair, and sends R hashed transfers of N bytes src → dst. It prints one line per run and
//! a summary per mode: median goodput, and per gateway thread group its CPU time per packet
//! (from /proc: utime + stime of the lcore threads during the runs, so it includes polling and
//! the af_packet syscalls), converted to cycles with the TSC rate DPDK measured.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::{SocketAddr, SocketAddrV4};
use std::process::ExitCode;
use std::time::Duration;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use lmas_tests::dpdk_lab::{Kind, Topology, DST};
use lmas_tests::{expected_sha256, parse_size, send, Gateway, Sink};

const USAGE: &str = "usage: lmas-bench-dpdk [--bytes N] [--runs R] [--modes kernel,dpdk,dpdk-kernel,kernel-dpdk] [--csv FILE]";

struct Options {
    bytes: u64,
    runs: usize,
    modes: Vec<(String, Kind, Kind)>,
    csv: Option<String>,
}

fn options() -> Result<Options, String> {
    let mut o = Options {
        bytes: 256 << 20,
        runs: 3,
        modes: Vec::new(),
        csv: None,
    };
    let mut modes = "kernel,dpdk".to_string();
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let mut value = || args.next().ok_or(format!("{a} needs a value; {USAGE}"));
        match a.as_str() {
            "--bytes" => o.bytes = parse_size(&value()?).map_err(|e| format!("--bytes: {e}"))?,
            "--runs" => {
                o.runs = value()?
                    .parse()
                    .map_err(|_| "--runs: not a number".to_string())?
            }
            "--modes" => modes = value()?,
            "--csv" => o.csv = Some(value()?),
            "-h" | "--help" => {
                println!("{USAGE}");
                std::process::exit(0);
            }
            other => return Err(format!("unknown argument {other}; {USAGE}")),
        }
    }
    for m in modes.split(',') {
        let kinds = match m {
            "kernel" => (Kind::Kernel, Kind::Kernel),
            "dpdk" => (Kind::Dpdk, Kind::Dpdk),
            "dpdk-kernel" => (Kind::Dpdk, Kind::Kernel),
            "kernel-dpdk" => (Kind::Kernel, Kind::Dpdk),
            other => return Err(format!("unknown mode {other}; {USAGE}")),
        };
        o.modes.push((m.to_string(), kinds.0, kinds.1));
    }
    Ok(o)
}

/// CPU seconds (user + system) per thread name of a process.
fn thread_cpu(pid: u32) -> BTreeMap<String, f64> {
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    let mut out = BTreeMap::new();
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return out;
    };
    for t in tasks.flatten() {
        let comm = std::fs::read_to_string(t.path().join("comm")).unwrap_or_default();
        let stat = std::fs::read_to_string(t.path().join("stat")).unwrap_or_default();
        // Fields after the parenthesised name: state is field 3; utime 14, stime 15.
        let Some(rest) = stat.rsplit_once(") ").map(|(_, r)| r) else {
            continue;
        };
        let f: Vec<&str> = rest.split(' ').collect();
        let ticks = f.get(11).and_then(|u| u.parse::<f64>().ok()).unwrap_or(0.0)
            + f.get(12).and_then(|s| s.parse::<f64>().ok()).unwrap_or(0.0);
        *out.entry(comm.trim().to_string()).or_default() += ticks / hz;
    }
    out
}

/// The lcore role a DPDK gateway thread plays (the default lcores of the test configs).
fn role(thread: &str) -> &str {
    match thread {
        "rte-worker-1" => "io",
        "rte-worker-2" => "tcp",
        "rte-worker-3" => "crypto",
        "lmas" => "main",
        _ => "other",
    }
}

struct Snapshot {
    cpu: BTreeMap<String, f64>,
    counters: BTreeMap<String, u64>,
    tsc_hz: u64,
}

fn snapshot(g: &Gateway) -> Snapshot {
    Snapshot {
        cpu: g.pid().map(thread_cpu).unwrap_or_default(),
        counters: g.counters().unwrap_or_default(),
        tsc_hz: g
            .gauges()
            .ok()
            .and_then(|m| m.get("dpdk_tsc_hz").copied())
            .unwrap_or(0),
    }
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    if v.is_empty() {
        0.0
    } else {
        v[v.len() / 2]
    }
}

/// Per role: CPU seconds during the runs, and cycles per packet the gateway moved.
fn role_costs(
    kind: Kind,
    before: &Snapshot,
    after: &Snapshot,
    csv: &mut String,
    label: &str,
) -> String {
    let delta = |k: &str| {
        after.counters.get(k).copied().unwrap_or(0) - before.counters.get(k).copied().unwrap_or(0)
    };
    let mut by_role: BTreeMap<&str, f64> = BTreeMap::new();
    for (thread, secs) in &after.cpu {
        let d = secs - before.cpu.get(thread).copied().unwrap_or(0.0);
        let r = if kind == Kind::Dpdk {
            role(thread)
        } else {
            "all"
        };
        *by_role.entry(r).or_default() += d;
    }
    let mut line = String::new();
    match kind {
        Kind::Dpdk => {
            let hz = after.tsc_hz as f64;
            // Packets through the gateway: both ports, both directions.
            let packets = (delta("dpdk_lan_rx_packets")
                + delta("dpdk_lan_tx_packets")
                + delta("dpdk_wan_rx_packets")
                + delta("dpdk_wan_tx_packets")) as f64;
            let _ = write!(line, "packets {packets:.0}");
            // Threads that did nothing (the EAL's helpers, an idle main lcore) are noise.
            for (r, secs) in by_role.iter().filter(|(_, s)| **s > 0.0) {
                let cpp = if packets > 0.0 {
                    secs * hz / packets
                } else {
                    0.0
                };
                let _ = write!(line, " | {r} {secs:.2}s {cpp:.0} cyc/pkt");
                let _ = writeln!(csv, "{label},{r},{secs:.3},{packets:.0},{cpp:.0}");
            }
            let busy = delta("dpdk_tcp_busy_ns") as f64 / 1e9;
            let tcp_pkts = delta("dpdk_tcp_packets") as f64;
            if tcp_pkts > 0.0 {
                let _ = write!(line, " | tcp busy-turn {:.0} cyc/pkt", busy * hz / tcp_pkts);
                let _ = writeln!(
                    csv,
                    "{label},tcp-busy,{busy:.3},{tcp_pkts:.0},{:.0}",
                    busy * hz / tcp_pkts
                );
            }
            let cbusy = delta("dpdk_crypto0_busy_ns") as f64 / 1e9;
            let jobs = delta("dpdk_crypto0_jobs");
            if jobs > 0 {
                let _ = write!(line, " | crypto busy {:.2}s for {jobs} records", cbusy);
            }
        }
        Kind::Kernel => {
            let secs: f64 = by_role.values().sum();
            let _ = write!(line, "all threads {secs:.2}s CPU");
            let _ = writeln!(csv, "{label},all,{secs:.3},,");
        }
    }
    line
}

fn run() -> Result<(), String> {
    let o = options()?;
    let mut runs_csv = String::from("mode,run,bytes,secs,mbit_s,sha256_ok\n");
    let mut roles_csv = String::from("gateway,role,cpu_secs,packets,cycles_per_packet\n");
    let mut summary = Vec::new();
    // Steps: per mode, bring-up and each run. On stderr, hidden when it is not a terminal.
    let bar = ProgressBar::with_draw_target(
        Some((o.modes.len() * (o.runs + 1)) as u64),
        ProgressDrawTarget::stderr_with_hz(4),
    )
    .with_style(
        ProgressStyle::with_template(
            "[{bar:30}] {pos}/{len} {elapsed_precise} (eta {eta}) {wide_msg}",
        )
        .expect("valid template")
        .progress_chars("=> "),
    );
    bar.enable_steady_tick(Duration::from_millis(500));
    for (name, a_kind, b_kind) in &o.modes {
        bar.set_message(format!("{name}: starting the pair"));
        let t = Topology::new(&format!("bench-{name}"), *a_kind, *b_kind)?;
        let (ca, cb) = (
            t.config_a(&t.key_b.public, 8),
            t.config_b(&t.key_a.public, 8),
        );
        let (mut ga, mut gb) = t.start(&ca, &cb);
        for g in [&mut ga, &mut gb] {
            g.wait_for_line(&["tunnel up"], Duration::from_secs(60))?;
        }
        let sink_addr = SocketAddr::V4(SocketAddrV4::new(DST, 5000));
        let sink = t
            .dst
            .run(move || Sink::bind(sink_addr))
            .map_err(|e| format!("sink: {e}"))?;
        let to = t.ingress_for(5000);
        let (a0, b0) = (snapshot(&ga), snapshot(&gb));
        bar.inc(1);
        let mut rates = Vec::new();
        for run in 1..=o.runs {
            bar.set_message(format!("{name}: run {run} of {}", o.runs));
            let (bytes, seed) = (o.bytes, run as u64);
            let sent = t
                .src
                .run(move || send(to, bytes, seed))
                .map_err(|e| format!("{name} run {run}: {e}"))?;
            let got = sink.recv(Duration::from_secs(300));
            let ok = got.sha256 == expected_sha256(o.bytes, seed) && got.bytes == o.bytes;
            let rate = sent.mbit_s();
            bar.suspend(|| {
                println!(
                    "{name} run {run}: {} bytes in {:.2}s = {rate:.0} Mbit/s, sha256 {}",
                    o.bytes,
                    sent.secs,
                    if ok { "ok" } else { "MISMATCH" }
                )
            });
            bar.inc(1);
            let _ = writeln!(
                runs_csv,
                "{name},{run},{},{:.3},{rate:.1},{ok}",
                o.bytes, sent.secs
            );
            if !ok {
                return Err(format!(
                    "{name} run {run}: the destination got different bytes"
                ));
            }
            rates.push(rate);
        }
        let (a1, b1) = (snapshot(&ga), snapshot(&gb));
        let ra = role_costs(*a_kind, &a0, &a1, &mut roles_csv, &format!("{name}/gw-a"));
        let rb = role_costs(*b_kind, &b0, &b1, &mut roles_csv, &format!("{name}/gw-b"));
        let m = median(&mut rates);
        summary.push((name.clone(), m, ra, rb));
        drop(sink);
        for g in [&mut ga, &mut gb] {
            let _ = g.terminate(Duration::from_secs(10));
        }
    }
    bar.finish_and_clear();
    println!(
        "\nsummary ({} runs of {} MiB each, medians):",
        o.runs,
        o.bytes >> 20
    );
    let base = summary.first().map_or(1.0, |s| s.1);
    for (name, m, ra, rb) in &summary {
        println!(
            "{name:12} {m:7.0} Mbit/s  ratio {:.2}\n    gw-a: {ra}\n    gw-b: {rb}",
            m / base
        );
    }
    if let Some(prefix) = &o.csv {
        std::fs::write(format!("{prefix}-runs.csv"), runs_csv).map_err(|e| e.to_string())?;
        std::fs::write(format!("{prefix}-roles.csv"), roles_csv).map_err(|e| e.to_string())?;
        println!("wrote {prefix}-runs.csv and {prefix}-roles.csv");
    }
    Ok(())
}

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("lmas-bench-dpdk: {e}");
            ExitCode::FAILURE
        }
    }
}

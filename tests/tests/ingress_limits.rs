//! LAN ingress limits (issue 13 §3; docs/FAILURES.md): who may connect to a gateway's ingress,
//! how many sessions one host may hold, and for how long a connection may wait for its session
//! or sit idle. Each case runs a hashed transfer through the same ingress while the limit hits
//! another connection: the refused or timed-out one gets an RST, one log line naming its source
//! and a counter; the transfer must end with the hash it started with.
//!
//! A bare SYN (from a spoofed address that never completes the handshake) must not open a
//! session, let alone make the far gateway connect to the target: the first connection the
//! target sees is the first real client's (QEMU before 8.0 takes its first connection for the
//! main migration channel).
//!
//! The line of namespaces is `line_lab`'s (src with two addresses, A, r, B, dst), with kernel or
//! DPDK gateways. Needs root, `ip`, `iptables`, `ethtool`; the DPDK cases the system DPDK; skips
//! with `SKIP: …` otherwise.

use std::io::{self, ErrorKind, Read, Write};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpListener, TcpStream};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use lmas_tests::dpdk_lab::Kind;
use lmas_tests::flood::syn_packet;
use lmas_tests::line_lab::{ingress_lines, run, skip, Line, LineSpec, A_LAN, DST, SRC, SRC2};
use lmas_tests::{
    connect_from, expected_sha256, paced_send, send_all, set_timeouts, wait_progress, Sink,
};

const MIB: u64 = 1 << 20;
const WAIT: Duration = Duration::from_secs(30);

/// DPDK gateways poll: one DPDK case at a time keeps this machine responsive.
static DPDK_SERIAL: Mutex<()> = Mutex::new(());

/// Starts the line for `test` (its initials tag the namespaces), or `None` if it must skip.
fn start(
    test: &str,
    kind: Kind,
    edit: impl FnOnce(&mut LineSpec),
) -> Option<(Line, Option<std::sync::MutexGuard<'static, ()>>)> {
    let tag: String = test.split('_').filter_map(|w| w.chars().next()).collect();
    let mut spec = LineSpec::new(&tag, kind);
    edit(&mut spec);
    if skip(test, &spec) {
        return None;
    }
    let serial =
        (kind == Kind::Dpdk).then(|| DPDK_SERIAL.lock().unwrap_or_else(|e| e.into_inner()));
    let line = Line::start(&spec).unwrap_or_else(|e| panic!("{test}: setting up: {e}"));
    Some((line, serial))
}

/// A sink for DST:`port` inside dst.
fn sink(line: &Line, port: u16) -> Sink {
    let addr = SocketAddr::V4(SocketAddrV4::new(DST, port));
    line.dst.run(move || Sink::bind(addr)).expect("sink in dst")
}

/// Connects from `from` (inside src) to A's ingress `port` and expects the connection to be
/// refused or reset within `within`, without a byte from the other side. How long it took.
fn expect_refused(
    line: &Line,
    from: Ipv4Addr,
    port: u16,
    within: Duration,
) -> Result<Duration, String> {
    let to = SocketAddrV4::new(A_LAN, port);
    line.src.run(move || {
        let start = Instant::now();
        let mut s = match connect_from(from, to) {
            Ok(s) => s,
            Err(e)
                if matches!(
                    e.kind(),
                    ErrorKind::ConnectionRefused | ErrorKind::ConnectionReset
                ) =>
            {
                return Ok(start.elapsed())
            }
            Err(e) => return Err(format!("connect {from} -> {to}: {e}")),
        };
        let _ = s.write_all(b"hello");
        s.set_read_timeout(Some(within))
            .map_err(|e| e.to_string())?;
        let mut buf = [0u8; 64];
        match s.read(&mut buf) {
            Ok(0) => Ok(start.elapsed()),
            Ok(n) => Err(format!("{from} -> {to}: got {n} bytes, expected a refusal")),
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => Err(
                format!("{from} -> {to}: still open after {within:?}, expected a refusal"),
            ),
            Err(_) => Ok(start.elapsed()),
        }
    })
}

/// A paced, hashed transfer from `from` through A's ingress `port`: (progress, the sender).
#[allow(clippy::type_complexity)]
fn transfer(
    line: &Line,
    port: u16,
    len: u64,
    seed: u64,
    rate: f64,
) -> (
    Arc<AtomicU64>,
    thread::JoinHandle<(io::Result<lmas_tests::Sent>, Instant)>,
) {
    let progress = Arc::new(AtomicU64::new(0));
    let h = paced_send(
        Some(&line.src),
        Line::ingress(port),
        len,
        seed,
        rate,
        progress.clone(),
    );
    (progress, h)
}

/// Waits for the sender and the sink, and checks the hash.
fn check_transfer(
    test: &str,
    line: &Line,
    sender: thread::JoinHandle<(io::Result<lmas_tests::Sent>, Instant)>,
    sink: &Sink,
    len: u64,
    seed: u64,
) {
    let (sent, _) = sender.join().expect("sender thread");
    let sent = sent.unwrap_or_else(|e| panic!("{test}: the transfer broke: {e}\n{}", line.logs()));
    assert_eq!(sent.sha256, expected_sha256(len, seed));
    let deadline = Instant::now() + WAIT;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match sink.try_recv(left) {
            Some(Ok(got)) if got.sha256 == sent.sha256 => return,
            // Other connections end at the sink too (refused or idle ones): not this one.
            Some(_) => continue,
            None => panic!(
                "{test}: the transfer's {len} bytes never arrived whole at dst\n{}",
                line.logs()
            ),
        }
    }
}

fn counter(line: &Line, g: &lmas_tests::Gateway, name: &str) -> u64 {
    g.counter(name)
        .unwrap_or_else(|e| panic!("{e}\n{}", line.logs()))
}

// ---- a bare SYN ------------------------------------------------------------------------------

fn bare_syn(test: &str, kind: Kind) {
    let Some((mut line, _serial)) = start(test, kind, |_| {}) else {
        return;
    };
    // The target: which connections arrive, in the order it accepts them, and what each carried.
    let listener = line
        .dst
        .run(|| TcpListener::bind((DST, 5000)))
        .expect("listen in dst");
    let accepted = Arc::new(AtomicUsize::new(0));
    let (tx, arrivals) = mpsc::channel::<(usize, SocketAddr, io::Result<u64>)>();
    let count = accepted.clone();
    thread::spawn(move || {
        while let Ok((mut s, peer)) = listener.accept() {
            let nth = count.fetch_add(1, Ordering::SeqCst);
            let tx = tx.clone();
            thread::spawn(move || {
                let _ = set_timeouts(&s);
                let mut n = 0u64;
                let mut buf = vec![0u8; 1 << 16];
                let r = loop {
                    match s.read(&mut buf) {
                        Ok(0) => break Ok(n),
                        Ok(k) => n += k as u64,
                        Err(e) => break Err(e),
                    }
                };
                let _ = tx.send((nth, peer, r));
            });
        }
    });
    // Three SYNs from a host that does not exist (nobody will ever answer A's SYN-ACK).
    let spoofed = SocketAddrV4::new(Ipv4Addr::new(10, 83, 1, 77), 40000);
    let ingress = SocketAddrV4::new(A_LAN, 6000);
    line.src
        .run(move || -> io::Result<()> {
            // SAFETY: socket(2) with constant arguments; the result is checked and closed below.
            let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_RAW, libc::IPPROTO_RAW) };
            if fd < 0 {
                return Err(io::Error::last_os_error());
            }
            let dst = libc::sockaddr_in {
                sin_family: libc::AF_INET as libc::sa_family_t,
                sin_port: 0,
                sin_addr: libc::in_addr {
                    s_addr: u32::from(A_LAN).to_be(),
                },
                sin_zero: [0; 8],
            };
            for i in 0..3u16 {
                let src = SocketAddrV4::new(*spoofed.ip(), spoofed.port() + i);
                let p = syn_packet(src, ingress, 1000 + i as u32, i);
                // SAFETY: sendto on our raw socket with a valid buffer and address.
                unsafe {
                    libc::sendto(
                        fd,
                        p.as_ptr() as *const libc::c_void,
                        p.len(),
                        0,
                        &dst as *const _ as *const libc::sockaddr,
                        std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t,
                    );
                }
            }
            // SAFETY: closing the descriptor opened above.
            unsafe { libc::close(fd) };
            Ok(())
        })
        .expect("raw SYNs from src");
    thread::sleep(Duration::from_secs(1));

    // The first real client: 1 MiB, then EOF.
    let first = line
        .src
        .run(move || -> io::Result<u64> {
            let mut s = connect_from(SRC, ingress)?;
            let sent = send_all(&mut s, MIB, 5)?;
            s.shutdown(std::net::Shutdown::Write)?;
            let mut rest = Vec::new();
            let _ = s.read_to_end(&mut rest);
            Ok(sent.bytes)
        })
        .unwrap_or_else(|e| panic!("{test}: the real client: {e}\n{}", line.logs()));
    let (nth, peer, got) = arrivals
        .recv_timeout(WAIT)
        .unwrap_or_else(|_| panic!("{test}: dst saw no connection end\n{}", line.logs()));
    let got = got.unwrap_or_else(|e| {
        panic!(
            "{test}: dst's connection from {peer} broke: {e}\n{}",
            line.logs()
        )
    });
    assert_eq!(
        (nth, got),
        (0, first),
        "{test}: the real client's {first} bytes were dst's connection number {nth} (counting from 0) of {} it accepted: bare SYNs took the first-connection slot\n{}",
        accepted.load(Ordering::SeqCst),
        line.logs()
    );
    thread::sleep(Duration::from_secs(1));
    assert_eq!(
        accepted.load(Ordering::SeqCst),
        1,
        "{test}: dst accepted connections for a client that never connected\n{}",
        line.logs()
    );
    assert_eq!(
        counter(&line, &line.a, "sessions_opened"),
        1,
        "{test}: gw-a opened a session for a bare SYN\n{}",
        line.logs()
    );
    // No `sources` on a non-loopback bind: said once at start.
    line.a
        .wait_for_line(&["ingress[0]", "sources"], Duration::from_secs(1))
        .unwrap_or_else(|e| panic!("{test}: no warning about an ingress open to any host: {e}"));
}

#[test]
fn a_bare_syn_opens_no_session_dpdk() {
    bare_syn("a_bare_syn_opens_no_session_dpdk", Kind::Dpdk);
}

#[test]
fn a_bare_syn_opens_no_session_kernel() {
    bare_syn("a_bare_syn_opens_no_session_kernel", Kind::Kernel);
}

// ---- sources -----------------------------------------------------------------------------------

fn sources(test: &str, kind: Kind) {
    let Some((line, _serial)) = start(test, kind, |s| {
        s.ingress = vec![ingress_lines(
            6000,
            5000,
            &[&format!("sources = [\"{SRC}/32\"]")],
        )];
    }) else {
        return;
    };
    let sink = sink(&line, 5000);
    let (progress, sender) = transfer(&line, 6000, 8 * MIB, 21, 2.0 * MIB as f64);
    wait_progress(&progress, MIB, WAIT).unwrap_or_else(|e| panic!("{test}: {e}\n{}", line.logs()));
    for _ in 0..3 {
        let took = expect_refused(&line, SRC2, 6000, Duration::from_secs(3))
            .unwrap_or_else(|e| panic!("{test}: {e}\n{}", line.logs()));
        eprintln!("{test}: {SRC2} refused in {:.3} s", took.as_secs_f64());
    }
    check_transfer(test, &line, sender, &sink, 8 * MIB, 21);
    assert!(
        counter(&line, &line.a, "ingress_refused") >= 3,
        "{test}: gw-a did not count the refusals\n{}",
        line.logs()
    );
    assert!(
        line.a
            .find_line(&[&SRC2.to_string(), "not in ingress[0].sources"])
            .is_some(),
        "{test}: no log line naming {SRC2}\n{}",
        line.logs()
    );
    assert_eq!(counter(&line, &line.a, "sessions_opened"), 1);
}

#[test]
fn ingress_sources_refuse_other_hosts_dpdk() {
    sources("ingress_sources_refuse_other_hosts_dpdk", Kind::Dpdk);
}

#[test]
fn ingress_sources_refuse_other_hosts_kernel() {
    sources("ingress_sources_refuse_other_hosts_kernel", Kind::Kernel);
}

// ---- a per-source cap --------------------------------------------------------------------------

fn per_source_cap(test: &str, kind: Kind) {
    let Some((line, _serial)) = start(test, kind, |s| {
        s.ingress = vec![ingress_lines(6000, 5000, &["max_sessions_per_source = 2"])];
    }) else {
        return;
    };
    let sink = sink(&line, 5000);
    let (progress, sender) = transfer(&line, 6000, 8 * MIB, 31, 2.0 * MIB as f64);
    wait_progress(&progress, MIB, WAIT).unwrap_or_else(|e| panic!("{test}: {e}\n{}", line.logs()));
    // The source's second session: open, quiet.
    let to = SocketAddrV4::new(A_LAN, 6000);
    let held: TcpStream = line
        .src
        .run(move || connect_from(SRC, to))
        .unwrap_or_else(|e| panic!("{test}: second session: {e}"));
    let deadline = Instant::now() + Duration::from_secs(10);
    while counter(&line, &line.a, "sessions_opened") < 2 {
        assert!(
            Instant::now() < deadline,
            "{test}: the second session did not open\n{}",
            line.logs()
        );
        thread::sleep(Duration::from_millis(20));
    }
    // Its third: refused.
    let took = expect_refused(&line, SRC, 6000, Duration::from_secs(3))
        .unwrap_or_else(|e| panic!("{test}: a third session from {SRC}: {e}\n{}", line.logs()));
    eprintln!(
        "{test}: {SRC}'s third session refused in {:.3} s",
        took.as_secs_f64()
    );
    // Another host is not affected.
    let other = line
        .src
        .run(move || -> io::Result<String> {
            let mut s = connect_from(SRC2, to)?;
            let sent = send_all(&mut s, 2 * MIB, 32)?;
            s.shutdown(std::net::Shutdown::Write)?;
            let mut rest = Vec::new();
            let _ = s.read_to_end(&mut rest);
            Ok(sent.sha256)
        })
        .unwrap_or_else(|e| panic!("{test}: a session from {SRC2}: {e}\n{}", line.logs()));
    assert_eq!(other, expected_sha256(2 * MIB, 32));
    check_transfer(test, &line, sender, &sink, 8 * MIB, 31);
    drop(held);
    // Its places come back once its sessions end: two at once are taken again and arrive
    // whole (a place kept after its session would refuse one of them every time).
    let deadline = Instant::now() + Duration::from_secs(10);
    'again: loop {
        assert!(
            Instant::now() < deadline,
            "{test}: {SRC}'s places did not come back after its sessions ended\n{}",
            line.logs()
        );
        let sent = line.src.run(move || -> io::Result<Vec<String>> {
            let mut conns = [connect_from(SRC, to)?, connect_from(SRC, to)?];
            let mut shas = Vec::new();
            for (seed, s) in (40..).zip(&mut conns) {
                shas.push(send_all(s, MIB, seed)?.sha256);
                s.shutdown(std::net::Shutdown::Write)?;
            }
            for s in &mut conns {
                let _ = s.read_to_end(&mut Vec::new());
            }
            Ok(shas)
        });
        let Ok(mut missing) = sent else {
            thread::sleep(Duration::from_millis(200));
            continue;
        };
        while !missing.is_empty() {
            match sink.try_recv(Duration::from_secs(2)) {
                Some(Ok(got)) => missing.retain(|s| *s != got.sha256),
                Some(Err(_)) => {}
                None => continue 'again,
            }
        }
        break;
    }
    assert!(
        counter(&line, &line.a, "ingress_refused") >= 1,
        "{test}: gw-a did not count the refusal\n{}",
        line.logs()
    );
    assert!(
        line.a
            .find_line(&[&SRC.to_string(), "max_sessions_per_source"])
            .is_some(),
        "{test}: no log line naming {SRC} and the cap\n{}",
        line.logs()
    );
}

#[test]
fn ingress_per_source_cap_dpdk() {
    per_source_cap("ingress_per_source_cap_dpdk", Kind::Dpdk);
}

#[test]
fn ingress_per_source_cap_kernel() {
    per_source_cap("ingress_per_source_cap_kernel", Kind::Kernel);
}

// ---- a connect timeout -------------------------------------------------------------------------

fn connect_timeout(test: &str, kind: Kind) {
    let Some((line, _serial)) = start(test, kind, |s| {
        s.ingress = vec![
            ingress_lines(6000, 5000, &["connect_timeout_secs = 2"]),
            ingress_lines(6001, 5001, &["connect_timeout_secs = 2"]),
        ];
        s.allow = vec![SocketAddrV4::new(DST, 5000), SocketAddrV4::new(DST, 5001)];
        // B keeps trying far longer than A's ingress waits.
        s.b_egress = vec!["connect_timeout_ms = 30000".into()];
    }) else {
        return;
    };
    // dst:5001 swallows SYNs: B's connect to it hangs.
    run(line.dst.command("iptables").args([
        "-w", "-I", "INPUT", "-p", "tcp", "--dport", "5001", "-j", "DROP",
    ]))
    .unwrap_or_else(|e| panic!("{test}: {e}"));
    let sink = sink(&line, 5000);
    let (progress, sender) = transfer(&line, 6000, 8 * MIB, 41, 2.0 * MIB as f64);
    wait_progress(&progress, MIB, WAIT).unwrap_or_else(|e| panic!("{test}: {e}\n{}", line.logs()));
    let took = expect_refused(&line, SRC, 6001, Duration::from_secs(8)).unwrap_or_else(|e| {
        panic!(
            "{test}: a session whose target never answers: {e}\n{}",
            line.logs()
        )
    });
    eprintln!("{test}: reset after {:.2} s", took.as_secs_f64());
    assert!(
        took >= Duration::from_millis(1500),
        "{test}: reset after {took:?}, before the 2 s connect timeout"
    );
    check_transfer(test, &line, sender, &sink, 8 * MIB, 41);
    assert_eq!(
        counter(&line, &line.a, "ingress_connect_timeouts"),
        1,
        "{test}\n{}",
        line.logs()
    );
    assert!(
        line.a
            .find_line(&[&SRC.to_string(), "connect_timeout_secs"])
            .is_some(),
        "{test}: no log line naming {SRC} and the timeout\n{}",
        line.logs()
    );
    // B was told: the session reset, reason "timed out".
    let deadline = Instant::now() + Duration::from_secs(5);
    while line.b.find_line(&["reset", "timed out"]).is_none() {
        assert!(
            Instant::now() < deadline,
            "{test}: gw-b never heard of the timeout\n{}",
            line.logs()
        );
        thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn ingress_connect_timeout_dpdk() {
    connect_timeout("ingress_connect_timeout_dpdk", Kind::Dpdk);
}

#[test]
fn ingress_connect_timeout_kernel() {
    connect_timeout("ingress_connect_timeout_kernel", Kind::Kernel);
}

// ---- an idle timeout ---------------------------------------------------------------------------

fn idle_timeout(test: &str, kind: Kind) {
    let Some((line, _serial)) = start(test, kind, |s| {
        s.ingress = vec![ingress_lines(6000, 5000, &["idle_timeout_secs = 2"])];
    }) else {
        return;
    };
    let sink = sink(&line, 5000);
    // 6 s of steady traffic: never idle for 2 s.
    let (progress, sender) = transfer(&line, 6000, 6 * MIB, 51, MIB as f64);
    wait_progress(&progress, MIB / 2, WAIT)
        .unwrap_or_else(|e| panic!("{test}: {e}\n{}", line.logs()));
    let to = SocketAddrV4::new(A_LAN, 6000);
    let idle = line.src.spawn(move || -> Result<Duration, String> {
        let mut s = connect_from(SRC2, to).map_err(|e| e.to_string())?;
        s.write_all(&[7u8; 1000]).map_err(|e| e.to_string())?;
        let start = Instant::now();
        s.set_read_timeout(Some(Duration::from_secs(10)))
            .map_err(|e| e.to_string())?;
        let mut buf = [0u8; 64];
        match s.read(&mut buf) {
            Ok(0) => Err("closed cleanly (EOF), expected a reset".into()),
            Ok(n) => Err(format!("got {n} bytes")),
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                Err("still open after 10 s".into())
            }
            Err(_) => Ok(start.elapsed()),
        }
    });
    let took = idle
        .join()
        .expect("idle client thread")
        .unwrap_or_else(|e| panic!("{test}: the idle session: {e}\n{}", line.logs()));
    eprintln!(
        "{test}: idle session reset after {:.2} s",
        took.as_secs_f64()
    );
    assert!(
        took >= Duration::from_millis(1500),
        "{test}: reset after {took:?}, before the 2 s idle timeout"
    );
    check_transfer(test, &line, sender, &sink, 6 * MIB, 51);
    assert_eq!(
        counter(&line, &line.a, "ingress_idle_timeouts"),
        1,
        "{test}\n{}",
        line.logs()
    );
    assert!(
        line.a
            .find_line(&[&SRC2.to_string(), "idle_timeout_secs"])
            .is_some(),
        "{test}: no log line naming {SRC2} and the timeout\n{}",
        line.logs()
    );
}

#[test]
fn ingress_idle_timeout_dpdk() {
    idle_timeout("ingress_idle_timeout_dpdk", Kind::Dpdk);
}

#[test]
fn ingress_idle_timeout_kernel() {
    idle_timeout("ingress_idle_timeout_kernel", Kind::Kernel);
}

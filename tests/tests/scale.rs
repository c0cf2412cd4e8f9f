//! Many concurrent sessions (issue 5): 1000 sessions of 1 MiB each, all open at once through
//! one gateway pair, all byte-exact, gateway memory bounded.
//!
//! The source is 50 threads driving 20 non-blocking connections each with poll(2); the target
//! is 4 threads doing the same. The target keeps every connection open until all 1000 streams
//! have reached EOF, so all 1000 sessions are alive in the gateways at the same time.
//!
//! Needs the release binary: `cargo build --release -p lmas` (or `LMAS_BIN`).

use std::io::{ErrorKind, Read};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Barrier, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use lmas_tests::many_sources::{drive_sources, poll, Source};
use lmas_tests::{connect, expected_sha256, hex, Pair, PairSpec};
use sha2::{Digest, Sha256};

const SESSIONS: usize = 1000;
const SOURCE_THREADS: usize = 50;
const TARGET_THREADS: usize = 4;
const SESSION_LEN: u64 = 1 << 20;
const CHUNK: usize = 64 << 10;
/// The whole test (connect, transfer, close) must finish within this.
const DEADLINE: Duration = Duration::from_secs(150);

/// One target connection.
struct In {
    s: TcpStream,
    hash: Sha256,
    bytes: u64,
    eof: bool,
}

/// Reads every connection it is given to EOF, hashing it; keeps them all open until `finished`
/// reaches `total` (every stream of the test has ended), then closes them.
fn drive_targets(
    rx: mpsc::Receiver<TcpStream>,
    finished: Arc<AtomicUsize>,
    total: usize,
    results: Arc<Mutex<Vec<(u64, String)>>>,
    deadline: Instant,
) -> Result<(), String> {
    let mut conns: Vec<In> = Vec::new();
    let mut buf = vec![0u8; CHUNK];
    while finished.load(Ordering::SeqCst) < total {
        if Instant::now() > deadline {
            return Err(format!(
                "target: {} of {total} streams ended by the deadline",
                finished.load(Ordering::SeqCst)
            ));
        }
        while let Ok(s) = rx.try_recv() {
            s.set_nonblocking(true).map_err(|e| e.to_string())?;
            conns.push(In {
                s,
                hash: Sha256::new(),
                bytes: 0,
                eof: false,
            });
        }
        let idx: Vec<usize> = (0..conns.len()).filter(|&i| !conns[i].eof).collect();
        let mut fds: Vec<libc::pollfd> = idx
            .iter()
            .map(|&i| libc::pollfd {
                fd: conns[i].s.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            })
            .collect();
        poll(&mut fds, 20);
        for (k, &i) in idx.iter().enumerate() {
            if fds[k].revents == 0 {
                continue;
            }
            let c = &mut conns[i];
            loop {
                match c.s.read(&mut buf) {
                    Ok(0) => {
                        c.eof = true;
                        let h = std::mem::take(&mut c.hash);
                        results.lock().unwrap().push((c.bytes, hex(&h.finalize())));
                        finished.fetch_add(1, Ordering::SeqCst);
                        break;
                    }
                    Ok(n) => {
                        c.hash.update(&buf[..n]);
                        c.bytes += n as u64;
                    }
                    Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                    Err(e) if e.kind() == ErrorKind::Interrupted => {}
                    Err(e) => return Err(format!("target: receive after {} bytes: {e}", c.bytes)),
                }
            }
        }
    }
    // Every session was open until here; now let them all end.
    drop(conns);
    Ok(())
}

#[test]
fn a_thousand_concurrent_sessions_of_1_mib() {
    let start = Instant::now();
    let deadline = start + DEADLINE;
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind target");
    let target: SocketAddr = listener.local_addr().unwrap();
    let window = 1u64 << 20;
    let global = 64u64 << 20;
    let spec = PairSpec {
        session_window_bytes: Some(window),
        global_buffer_bytes: Some(global),
        ..PairSpec::to_target(8, target)
    };
    let mut pair = Pair::start(&spec);
    let ingress = pair.ingress[0];

    // Target: one acceptor, TARGET_THREADS readers.
    let finished = Arc::new(AtomicUsize::new(0));
    let received = Arc::new(Mutex::new(Vec::new()));
    let stop = Arc::new(AtomicBool::new(false));
    let mut txs = Vec::new();
    let mut readers = Vec::new();
    for _ in 0..TARGET_THREADS {
        let (tx, rx) = mpsc::channel();
        txs.push(tx);
        let (f, r) = (finished.clone(), received.clone());
        readers.push(thread::spawn(move || {
            drive_targets(rx, f, SESSIONS, r, deadline)
        }));
    }
    listener.set_nonblocking(true).unwrap();
    let stop2 = stop.clone();
    let acceptor = thread::spawn(move || {
        let mut n = 0usize;
        while !stop2.load(Ordering::Relaxed) && Instant::now() < deadline {
            match listener.accept() {
                Ok((s, _)) => {
                    let _ = txs[n % TARGET_THREADS].send(s);
                    n += 1;
                }
                Err(_) => thread::sleep(Duration::from_millis(2)),
            }
        }
        n
    });

    // Source: every thread connects its share, then all start sending at once.
    let barrier = Arc::new(Barrier::new(SOURCE_THREADS));
    let per = SESSIONS / SOURCE_THREADS;
    let sources: Vec<_> = (0..SOURCE_THREADS)
        .map(|t| {
            let barrier = barrier.clone();
            thread::spawn(move || {
                let mut conns = Vec::new();
                let mut err = None;
                for j in 0..per {
                    let seed = 10_000 + (t * per + j) as u64;
                    match connect(ingress).and_then(|s| s.set_nonblocking(true).map(|_| s)) {
                        Ok(s) => conns.push(Source::new(s, seed, SESSION_LEN)),
                        Err(e) => {
                            err = Some(format!("connect (seed {seed}): {e}"));
                            break;
                        }
                    }
                }
                barrier.wait();
                match err {
                    Some(e) => Err(e),
                    None => drive_sources(conns, &AtomicU64::new(0), deadline),
                }
            })
        })
        .collect();
    let mut sent = Vec::new();
    let mut errors = Vec::new();
    for h in sources {
        match h.join().expect("source thread") {
            Ok(r) => sent.extend(r),
            Err(e) => errors.push(e),
        }
    }
    let sources_done = start.elapsed();
    let peak_a = pair.a.peak_rss_kib().unwrap_or(0);
    let peak_b = pair.b.peak_rss_kib().unwrap_or(0);
    stop.store(true, Ordering::Relaxed);
    let accepted = acceptor.join().expect("acceptor");
    for r in readers {
        if let Err(e) = r.join().expect("target thread") {
            errors.push(e);
        }
    }
    eprintln!(
        "{SESSIONS} sessions x 1 MiB: done after {sources_done:?}; target accepted {accepted}; \
         peak RSS gw-a {:.1} MiB, gw-b {:.1} MiB",
        peak_a as f64 / 1024.0,
        peak_b as f64 / 1024.0
    );
    assert!(
        errors.is_empty(),
        "{} errors, e.g. {:?}\n{}",
        errors.len(),
        &errors[..errors.len().min(5)],
        pair.logs()
    );
    assert_eq!(sent.len(), SESSIONS, "sessions finished at the source");
    assert_eq!(accepted, SESSIONS, "connections at the target");
    let mut got = received.lock().unwrap().clone();
    assert_eq!(got.len(), SESSIONS, "streams finished at the target");
    for (bytes, _) in &got {
        assert_eq!(*bytes, SESSION_LEN, "a stream's length at the target");
    }
    // Every stream has a different seed, so the multisets of hashes match only if every
    // stream arrived intact (the target cannot tell which seed a connection carries).
    let mut want: Vec<String> = sent.iter().map(|(_, h)| h.clone()).collect();
    let mut have: Vec<String> = got.drain(..).map(|(_, h)| h).collect();
    want.sort();
    have.sort();
    assert_eq!(
        want.iter().filter(|h| !have.contains(h)).count(),
        0,
        "streams whose SHA-256 does not arrive at the target"
    );
    assert_eq!(want, have, "SHA-256 of the streams at the target");
    // Spot-check the source side against the generator.
    let (seed, h) = &sent[0];
    assert_eq!(*h, expected_sha256(SESSION_LEN, *seed));
    // Memory: the global buffer limit plus a per-session constant (socket and task state).
    for (name, kib) in [("gw-a", peak_a), ("gw-b", peak_b)] {
        let bound_kib = (global + SESSIONS as u64 * (64 << 10)) / 1024 + 64 * 1024;
        assert!(
            kib < bound_kib,
            "{name}: peak RSS {kib} KiB with {SESSIONS} sessions (global_buffer_bytes {global}; \
             bound {bound_kib} KiB)"
        );
    }
    pair.assert_running();
}

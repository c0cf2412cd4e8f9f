//! Memory that the limits do not see (issue 13 §4): what a gateway holds must stay within its
//! configured `[limits]` plus a constant, whatever its peer or its clients do:
//!
//! - a peer that floods pings and never reads the answers ([`lmas_tests::fake_peer`] plays the
//!   dialling gateway against one real gw-b): no configured buffer applies to control
//!   messages, so the constant alone is allowed, and gw-b must go on answering `lmas status`;
//! - a thousand sessions sending one byte at a time while gw-b is stopped (SIGSTOP), so that
//!   nothing is acknowledged: gw-a's `global_buffer_bytes` (4 MiB) counts the bytes, but each
//!   byte comes in a read, and becomes a frame, of its own (gw-a may stop taking bytes when its
//!   limits say so: they then wait in the clients' sockets); once gw-b continues every byte must
//!   arrive;
//! - a thousand sessions of 1 MiB whose targets stop reading while gw-a may have 512 MiB in
//!   flight: gw-b's receive side must stay within its receive budget (`receive_budget_bytes`,
//!   by default its own `global_buffer_bytes`, 32 MiB here); once
//!   the targets read, every stream must arrive intact (SHA-256).
//!
//! The measure is the gateway's peak RSS (VmHWM) at the end less its RSS (VmRSS) once setup is
//! done (tunnel up, sessions open) and before the load; the bound is the configured buffer plus
//! [`SLACK`]. Both figures are printed (in MiB) whether the test passes or not.
//!
//! Kernel datapath on loopback. The tests run one at a time (each keeps this machine's 2 CPUs
//! busy). The 1000-session tests raise RLIMIT_NOFILE to [`NOFILE`] (the gateways inherit it) and
//! print `SKIP: …` if they cannot. Needs the release binary: `cargo build --release -p lmas`
//! (or `LMAS_BIN`).

use std::collections::BTreeSet;
use std::fs;
use std::io::{self, ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::fd::{AsRawFd, FromRawFd};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use lmas_tests::fake_peer::FakePeer;
use lmas_tests::many_sources::{drive_sources, poll, Source};
use lmas_tests::{
    connect, expected_sha256, free_addr, hex, keygen, temp_dir, wait_listening, Gateway,
    GatewayConfig, Pair, PairSpec, TUNNEL_UP_TIMEOUT,
};
use sha2::{Digest, Sha256};

const MIB: u64 = 1 << 20;
/// What a gateway may grow beyond its configured buffers: record buffers, allocator slack.
const SLACK: u64 = 32 * MIB;
/// Sessions of the 1000-session tests.
const SESSIONS: usize = 1000;
/// Descriptors the test process (and so each gateway) may open: 2000 sockets here, 1000 plus
/// the WAN flows in each gateway.
const NOFILE: u64 = 16384;
/// Long enough that no flow or tunnel times out while a gateway is stopped or a target stalled.
const PATIENT_WAN: [&str; 2] = ["flow_timeout_secs = 120", "grace_period_secs = 300"];

/// One test at a time: each fills the machine's CPUs, and two at once would blur the figures.
static SERIAL: Mutex<()> = Mutex::new(());

fn serial() -> MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

/// Peak RSS growth over the baseline, against a bound of `configured` bytes plus [`SLACK`].
struct Growth {
    name: &'static str,
    base_kib: u64,
    peak_kib: u64,
    configured: u64,
    what: &'static str,
}

impl Growth {
    fn measure(
        g: &Gateway,
        name: &'static str,
        base_kib: u64,
        configured: u64,
        what: &'static str,
    ) -> Growth {
        let peak_kib = g.peak_rss_kib().unwrap_or_else(|| {
            panic!(
                "{name}: cannot read VmHWM (did it die?)\n{}",
                g.log_tail(30)
            )
        });
        let growth = Growth {
            name,
            base_kib,
            peak_kib,
            configured,
            what,
        };
        println!("{}", growth.line());
        growth
    }

    fn grew_kib(&self) -> u64 {
        self.peak_kib.saturating_sub(self.base_kib)
    }

    fn bound_kib(&self) -> u64 {
        (self.configured + SLACK) / 1024
    }

    fn line(&self) -> String {
        format!(
            "{}: VmRSS {:.1} MiB after setup, VmHWM {:.1} MiB at the end: grew {:.1} MiB; \
             bound {:.1} MiB ({} {:.0} MiB + {} MiB)",
            self.name,
            mib(self.base_kib),
            mib(self.peak_kib),
            mib(self.grew_kib()),
            mib(self.bound_kib()),
            self.what,
            self.configured as f64 / MIB as f64,
            SLACK / MIB
        )
    }

    fn check(&self, context: &str) {
        assert!(
            self.grew_kib() <= self.bound_kib(),
            "{context}: over the bound: {}",
            self.line()
        );
    }
}

/// Raises this process's soft RLIMIT_NOFILE to `want` (children inherit it); why not, if it
/// cannot.
fn raise_nofile(want: u64) -> Result<(), String> {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit with a valid, exclusively borrowed struct.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) != 0 {
            return Err(format!("getrlimit: {}", io::Error::last_os_error()));
        }
        if lim.rlim_cur >= want {
            return Ok(());
        }
        let new = libc::rlimit {
            rlim_cur: want,
            rlim_max: lim.rlim_max.max(want),
        };
        if libc::setrlimit(libc::RLIMIT_NOFILE, &new) != 0 {
            return Err(format!(
                "cannot raise RLIMIT_NOFILE to {want} (soft {}, hard {}): {}",
                lim.rlim_cur,
                lim.rlim_max,
                io::Error::last_os_error()
            ));
        }
    }
    Ok(())
}

/// Waits up to `within` for `cond`.
fn wait_for(within: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + within;
    loop {
        if cond() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        thread::sleep(Duration::from_millis(200));
    }
}

/// The sessions in `lmas status` of `g`: (in state "open", sum of `bytes_up`).
fn sessions(g: &Gateway) -> Result<(usize, u64), String> {
    let s = g.status()?;
    let list = s["tunnel"]["sessions"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let open = list.iter().filter(|s| s["state"] == "open").count();
    let up = list.iter().filter_map(|s| s["bytes_up"].as_u64()).sum();
    Ok((open, up))
}

// ---------------------------------------------------------------------------------------------
// A target for many connections

/// What a [`ManyTarget`] got on one connection, in accept order.
#[derive(Debug, Clone, Default)]
struct Got {
    bytes: u64,
    /// The first [`HEAD`] bytes.
    head: Vec<u8>,
    /// SHA-256 of everything, once the connection reached EOF.
    sha256: Option<String>,
    error: Option<String>,
}

const HEAD: usize = 256;

/// A target that accepts every connection and, while `reading` is set, reads them all (one
/// thread, poll(2)); a connection is closed once it reaches EOF.
struct ManyTarget {
    addr: SocketAddr,
    reading: Arc<AtomicBool>,
    got: Arc<Mutex<Vec<Got>>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

/// What a [`ManyTarget`]'s listener sets before listen(2), so that accepted sockets have it
/// from their first segment.
#[derive(Debug, Clone, Copy, Default)]
struct TargetSockets {
    /// SO_RCVBUF: the window the target offers.
    rcvbuf: Option<usize>,
    /// TCP_MAXSEG: the MSS the target announces, and so the one gw-b's egress socket sends with.
    mss: Option<usize>,
}

/// A loopback listener with `opts`.
fn listener(opts: TargetSockets) -> io::Result<TcpListener> {
    let addr = libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: 0,
        sin_addr: libc::in_addr {
            s_addr: u32::from(std::net::Ipv4Addr::LOCALHOST).to_be(),
        },
        sin_zero: [0; 8],
    };
    // SAFETY: plain socket calls on a descriptor we own (closed on error, else handed to the
    // TcpListener); the sockaddr and the option value outlive the calls.
    unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0);
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        let fail = |what: &str| {
            let e = io::Error::last_os_error();
            libc::close(fd);
            Err(io::Error::new(
                e.kind(),
                format!("target listener: {what}: {e}"),
            ))
        };
        let options = [
            (libc::SOL_SOCKET, libc::SO_RCVBUF, opts.rcvbuf, "SO_RCVBUF"),
            (libc::IPPROTO_TCP, libc::TCP_MAXSEG, opts.mss, "TCP_MAXSEG"),
        ];
        for (level, name, value, what) in options {
            let Some(v) = value else { continue };
            let v = v as libc::c_int;
            if libc::setsockopt(
                fd,
                level,
                name,
                &v as *const _ as *const libc::c_void,
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            ) != 0
            {
                return fail(what);
            }
        }
        let len = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
        if libc::bind(fd, &addr as *const _ as *const libc::sockaddr, len) != 0 {
            return fail("bind");
        }
        if libc::listen(fd, 4096) != 0 {
            return fail("listen");
        }
        Ok(TcpListener::from_raw_fd(fd))
    }
}

impl ManyTarget {
    fn start(opts: TargetSockets, reading: bool) -> ManyTarget {
        let l = listener(opts).expect("target listener");
        l.set_nonblocking(true).expect("set_nonblocking");
        let addr = l.local_addr().expect("local_addr");
        let reading = Arc::new(AtomicBool::new(reading));
        let got = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let (r, g, s) = (reading.clone(), got.clone(), stop.clone());
        let thread = thread::spawn(move || serve_many(l, r, g, s));
        ManyTarget {
            addr,
            reading,
            got,
            stop,
            thread: Some(thread),
        }
    }

    fn got(&self) -> Vec<Got> {
        self.got.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    fn accepted(&self) -> usize {
        self.got.lock().unwrap_or_else(|e| e.into_inner()).len()
    }

    fn start_reading(&self) {
        self.reading.store(true, Ordering::SeqCst);
    }
}

impl Drop for ManyTarget {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn serve_many(
    l: TcpListener,
    reading: Arc<AtomicBool>,
    got: Arc<Mutex<Vec<Got>>>,
    stop: Arc<AtomicBool>,
) {
    // (socket, its index in `got`, running hash); None once closed.
    let mut conns: Vec<Option<(TcpStream, usize, Sha256)>> = Vec::new();
    let mut buf = vec![0u8; 64 << 10];
    while !stop.load(Ordering::SeqCst) {
        let read = reading.load(Ordering::SeqCst);
        let live: Vec<usize> = (0..conns.len())
            .filter(|&i| read && conns[i].is_some())
            .collect();
        let mut fds = vec![libc::pollfd {
            fd: l.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        }];
        fds.extend(live.iter().map(|&i| libc::pollfd {
            fd: conns[i].as_ref().map(|c| c.0.as_raw_fd()).unwrap_or(-1),
            events: libc::POLLIN,
            revents: 0,
        }));
        poll(&mut fds, 20);
        if fds[0].revents != 0 {
            while let Ok((s, _)) = l.accept() {
                let mut g = got.lock().unwrap_or_else(|e| e.into_inner());
                let idx = g.len();
                g.push(Got::default());
                if let Err(e) = s.set_nonblocking(true) {
                    g[idx].error = Some(format!("set_nonblocking: {e}"));
                    continue;
                }
                conns.push(Some((s, idx, Sha256::new())));
            }
        }
        for (k, &i) in live.iter().enumerate() {
            if fds[k + 1].revents == 0 {
                continue;
            }
            let Some((s, idx, hash)) = conns[i].as_mut() else {
                continue;
            };
            // At most 1 MiB per connection per turn, so that every connection moves.
            let mut budget = 16;
            let end = loop {
                if budget == 0 {
                    break None;
                }
                budget -= 1;
                match s.read(&mut buf) {
                    Ok(0) => break Some(Ok(())),
                    Ok(n) => {
                        hash.update(&buf[..n]);
                        let mut g = got.lock().unwrap_or_else(|e| e.into_inner());
                        let r = &mut g[*idx];
                        r.bytes += n as u64;
                        let take = (HEAD - r.head.len().min(HEAD)).min(n);
                        r.head.extend_from_slice(&buf[..take]);
                    }
                    Err(e) if e.kind() == ErrorKind::WouldBlock => break None,
                    Err(e) if e.kind() == ErrorKind::Interrupted => {}
                    Err(e) => break Some(Err(e)),
                }
            };
            if let Some(end) = end {
                let (_, idx, hash) = conns[i].take().expect("live");
                let mut g = got.lock().unwrap_or_else(|e| e.into_inner());
                match end {
                    Ok(()) => g[idx].sha256 = Some(hex(&hash.finalize())),
                    Err(e) => g[idx].error = Some(format!("after {} bytes: {e}", g[idx].bytes)),
                }
            }
        }
    }
}

/// Connects `n` clients to `ingress` (TCP_NODELAY on) and waits until the target has accepted
/// `n` connections and gw-a shows `n` sessions open.
fn open_sessions(pair: &Pair, target: &ManyTarget, n: usize) -> Vec<TcpStream> {
    let start = Instant::now();
    let clients: Vec<TcpStream> = (0..n)
        .map(|i| {
            let s = connect(pair.ingress[0])
                .unwrap_or_else(|e| panic!("client {i}: connect to gw-a's ingress: {e}"));
            s.set_nodelay(true).expect("TCP_NODELAY");
            s
        })
        .collect();
    let mut last = (0, 0);
    let all = wait_for(Duration::from_secs(60), || {
        last = (
            target.accepted(),
            sessions(&pair.a).map(|(open, _)| open).unwrap_or(0),
        );
        last == (n, n)
    });
    assert!(
        all,
        "{n} clients connected, but after 60 s the target accepted {} connections and gw-a \
         shows {} sessions open\n{}",
        last.0,
        last.1,
        pair.logs()
    );
    println!(
        "{n} sessions open in {:.1} s",
        start.elapsed().as_secs_f64()
    );
    clients
}

// ---------------------------------------------------------------------------------------------
// 1. Ping flood

#[test]
fn a_ping_flood_from_the_peer_that_never_reads_stays_bounded() {
    const FLOOD: Duration = Duration::from_secs(15);
    /// Today B keeps some 60 bytes per unread pong and takes 2-3M pings a second here: the cap
    /// shows that growth (~1.2 GiB) without taking gigabytes more of a shared machine. A B that
    /// bounds its pongs stops reading instead, and the flood then lasts the whole 15 s.
    const MAX_PINGS: u64 = 20_000_000;
    const BATCH: usize = 4096;
    let _serial = serial();
    let (dir, _tmp) = temp_dir("lmas-memory-");
    let fake = keygen(&dir.join("fake-a.key"));
    let b_key = keygen(&dir.join("gw-b.key"));
    let tunnel = free_addr();
    let config = GatewayConfig {
        name: "gw-b".into(),
        private_key_file: "gw-b.key".into(),
        psk_file: None,
        tunnel_listen: Some(tunnel),
        peer_name: "gw-a".into(),
        peer_public_key: fake.public.clone(),
        peer_connect: None,
        data_flows: 4,
        congestion: None,
        ingress: Vec::new(),
        egress_allow: Vec::new(),
        session_window_bytes: None,
        global_buffer_bytes: None,
        limits_extra: Vec::new(),
        // B's send queue to a peer that never reads sits at a zero window; with the default
        // flow timeout (10 s) the kernel would abort the connection before the flood ends.
        wan_extra: vec!["flow_timeout_secs = 60".into()],
        admin_socket: Some(dir.join("gw-b.sock")),
        gateway_extra: Vec::new(),
        metrics_bind: None,
    };
    let path = dir.join("gw-b.toml");
    fs::write(&path, config.to_toml()).expect("write gw-b.toml");
    let mut b = Gateway::spawn("gw-b", &path, &dir.join("gw-b.log"));
    if let Err(e) = wait_listening(tunnel.port(), TUNNEL_UP_TIMEOUT) {
        panic!("gw-b: {e}; log:\n{}", b.log_tail(40));
    }
    let mut peer = FakePeer::connect(tunnel, &fake.private_path, &b_key.public)
        .and_then(|mut p| p.hello("gw-a", 4).map(|_| p))
        .unwrap_or_else(|e| {
            panic!(
                "fake gw-a: control connection to gw-b: {e}\n{}",
                b.log_tail(40)
            )
        });
    // B installs the tunnel just after its welcome.
    let up = wait_for(Duration::from_secs(10), || {
        b.status().is_ok_and(|s| !s["tunnel"].is_null())
    });
    assert!(
        up,
        "gw-b shows no tunnel after the welcome\n{}",
        b.log_tail(40)
    );
    let base = b.rss_kib().expect("gw-b VmRSS");

    let sent = Arc::new(AtomicU64::new(0));
    let counter = sent.clone();
    let began = Instant::now();
    let flood = thread::spawn(move || {
        let r = peer.ping_flood(Instant::now() + FLOOD, MAX_PINGS, BATCH, &counter);
        // The connection stays open (unread) until the test is done with B.
        (r, peer, Instant::now())
    });
    // B must keep answering its operator meanwhile.
    let mut statuses = 0;
    let mut slowest = Duration::ZERO;
    while !flood.is_finished() {
        let t = Instant::now();
        if let Err(e) = b.status() {
            panic!(
                "gw-b does not answer lmas status {:.1} s into the ping flood: {e}\n{}",
                began.elapsed().as_secs_f64(),
                b.log_tail(30)
            );
        }
        statuses += 1;
        slowest = slowest.max(t.elapsed());
        thread::sleep(Duration::from_secs(2));
    }
    let (ended, _peer, done) = flood.join().expect("flood thread");
    let pings = sent.load(Ordering::Relaxed);
    let secs = done.duration_since(began).as_secs_f64();
    match &ended {
        Ok(()) => println!(
            "ping flood: {pings} pings in {secs:.1} s ({:.0}/s), none of the answers read",
            pings as f64 / secs
        ),
        // A gateway may rightly hang up on a peer that does not read.
        Err(e) => println!("ping flood: {pings} pings in {secs:.1} s, then gw-b hung up: {e}"),
    }
    assert!(
        b.is_running(),
        "gw-b died during the ping flood\n{}",
        b.log_tail(40)
    );
    let t = Instant::now();
    b.status()
        .unwrap_or_else(|e| panic!("gw-b does not answer lmas status after the ping flood: {e}"));
    slowest = slowest.max(t.elapsed());
    println!(
        "lmas status answered {} times during and after the flood, slowest {slowest:?}",
        statuses + 1
    );
    let growth = Growth::measure(
        &b,
        "gw-b",
        base,
        0,
        "no configured buffer for control messages:",
    );
    growth.check(&format!(
        "{pings} pings from a peer that never reads the pongs"
    ));
}

// ---------------------------------------------------------------------------------------------
// 2. One-byte trickle

/// What client `i` sends: its number in 4 digits (so the target can tell who it is), then
/// letters.
fn trickle_content(i: usize) -> Vec<u8> {
    const LEN: usize = 100;
    let mut v = format!("{i:04}").into_bytes();
    v.extend((v.len()..LEN).map(|k| b'a' + ((i * 31 + k * 7) % 26) as u8));
    v
}

/// SIGSTOPs a gateway; SIGCONTs it when dropped (also when an assertion fails), so that the
/// pair's teardown can stop it.
struct Stopped(u32);

impl Stopped {
    fn new(g: &Gateway) -> Stopped {
        g.signal(libc::SIGSTOP).expect("SIGSTOP");
        Stopped(g.pid().expect("pid"))
    }
}

impl Drop for Stopped {
    fn drop(&mut self) {
        // SAFETY: kill(2) on our own child's pid; the Pair that owns it outlives this guard.
        unsafe {
            libc::kill(self.0 as libc::pid_t, libc::SIGCONT);
        }
    }
}

#[test]
fn a_thousand_one_byte_trickle_sessions_stay_within_the_limits() {
    const TEST: &str = "a_thousand_one_byte_trickle_sessions_stay_within_the_limits";
    /// After each round of one byte per client: long enough for gw-a to read every byte of a
    /// round alone.
    const ROUND_PAUSE: Duration = Duration::from_millis(20);
    if let Err(why) = raise_nofile(NOFILE) {
        eprintln!("SKIP: {TEST}: {why}");
        return;
    }
    let _serial = serial();
    let target = ManyTarget::start(TargetSockets::default(), true);
    let global = 4 * MIB;
    let spec = PairSpec {
        session_window_bytes: Some(MIB),
        wan_extra: PATIENT_WAN.iter().map(|s| s.to_string()).collect(),
        a_limits_extra: vec![
            format!("global_buffer_bytes = {global}"),
            "unsent_bytes = 65536".into(),
            "max_sessions = 2000".into(),
        ],
        b_limits_extra: vec!["max_sessions = 2000".into()],
        ..PairSpec::to_target(4, target.addr)
    };
    let mut pair = Pair::start(&spec);
    let mut clients = open_sessions(&pair, &target, SESSIONS);
    let base = pair.a.rss_kib().expect("gw-a VmRSS");

    // B acknowledges nothing from here on: whatever A reads, it keeps.
    let stopped = Stopped::new(&pair.b);
    let contents: Vec<Vec<u8>> = (0..SESSIONS).map(trickle_content).collect();
    let len = contents[0].len();
    let total = (SESSIONS * len) as u64;
    let began = Instant::now();
    for k in 0..len {
        for (i, c) in clients.iter_mut().enumerate() {
            c.write_all(&contents[i][k..k + 1])
                .unwrap_or_else(|e| panic!("client {i}: writing byte {k}: {e}"));
        }
        thread::sleep(ROUND_PAUSE);
    }
    let wrote = began.elapsed();
    // gw-a takes bytes until it has them all or its limits stop it (then the rest waits in the
    // clients' sockets, which is the backpressure the limits are for): wait until it has them
    // all or has taken nothing for 2 s.
    let (mut up, mut last, mut still_since) = (0, u64::MAX, Instant::now());
    let settled = wait_for(Duration::from_secs(30), || {
        up = sessions(&pair.a).map(|(_, up)| up).unwrap_or(up);
        if up != last {
            (last, still_since) = (up, Instant::now());
        }
        up >= total || still_since.elapsed() >= Duration::from_secs(2)
    });
    let frames = pair
        .a
        .status()
        .ok()
        .and_then(|s| s["tunnel"]["counters"]["data_frames_out"].as_u64())
        .unwrap_or(0);
    println!(
        "{SESSIONS} clients x {len} one-byte writes in {:.1} s; gw-a took {up} of {total} bytes \
         ({}) and sent {frames} data frames while gw-b was stopped",
        wrote.as_secs_f64(),
        if up >= total {
            "all"
        } else {
            "then its limits stopped it"
        }
    );
    assert!(
        settled,
        "gw-a was still taking bytes 30 s after the writes ({up} of {total})\n{}",
        pair.logs()
    );
    let growth = Growth::measure(&pair.a, "gw-a", base, global, "global_buffer_bytes");

    drop(stopped);
    let resumed = Instant::now();
    let delivered = wait_for(Duration::from_secs(90), || {
        target.got().iter().map(|g| g.bytes).sum::<u64>() >= total
    });
    let got = target.got();
    let arrived: u64 = got.iter().map(|g| g.bytes).sum();
    assert!(
        delivered,
        "after gw-b continued, {arrived} of {total} bytes arrived at the target within 90 s\n{}",
        pair.logs()
    );
    let mut seen = BTreeSet::new();
    for (n, g) in got.iter().enumerate() {
        assert!(g.error.is_none(), "target connection {n}: {:?}", g.error);
        let id: usize = std::str::from_utf8(&g.head[..4.min(g.head.len())])
            .ok()
            .and_then(|t| t.parse().ok())
            .unwrap_or_else(|| panic!("target connection {n} starts with {:?}", g.head));
        assert!(
            id < SESSIONS && seen.insert(id),
            "target connection {n}: client {id} again"
        );
        assert_eq!(
            g.head, contents[id],
            "target connection {n}: what client {id} sent ({} bytes at the target)",
            g.bytes
        );
    }
    assert_eq!(seen.len(), SESSIONS, "clients whose bytes arrived");
    println!(
        "every client's {len} bytes at the target, exact, {:.1} s after gw-b continued",
        resumed.elapsed().as_secs_f64()
    );
    growth.check(&format!(
        "{total} one-byte writes on {SESSIONS} sessions while the peer acknowledged nothing"
    ));
    pair.assert_running();
}

// ---------------------------------------------------------------------------------------------
// 3. Stalled receivers

#[test]
fn a_thousand_stalled_receivers_stay_within_the_receive_budget() {
    const TEST: &str = "a_thousand_stalled_receivers_stay_within_the_receive_budget";
    const LEN: u64 = MIB;
    const SOURCE_THREADS: usize = 2;
    /// The senders are stalled once they moved less than this in [`STILL`].
    const MOVING: u64 = MIB;
    const STILL: Duration = Duration::from_secs(3);
    const STALL_MAX: Duration = Duration::from_secs(20);
    if let Err(why) = raise_nofile(NOFILE) {
        eprintln!("SKIP: {TEST}: {why}");
        return;
    }
    let _serial = serial();
    // Small receive buffers, not read at first: the targets stall at once. The MSS of an
    // Ethernet LAN: with loopback's 64 KiB one, gw-b's egress sockets would grow their send
    // buffers to 4 MiB (tcp_wmem) against the zero window, and the kernel, not gw-b, would hold
    // all of each session's 1 MiB.
    let opts = TargetSockets {
        rcvbuf: Some(16 << 10),
        mss: Some(1400),
    };
    let target = ManyTarget::start(opts, false);
    let sender_global = 512 * MIB;
    let receiver_global = 32 * MIB;
    let spec = PairSpec {
        session_window_bytes: Some(4 * MIB),
        wan_extra: PATIENT_WAN.iter().map(|s| s.to_string()).collect(),
        a_limits_extra: vec![
            format!("global_buffer_bytes = {sender_global}"),
            "max_sessions = 2000".into(),
        ],
        b_limits_extra: vec![
            format!("global_buffer_bytes = {receiver_global}"),
            "max_sessions = 2000".into(),
        ],
        ..PairSpec::to_target(4, target.addr)
    };
    let mut pair = Pair::start(&spec);
    let clients = open_sessions(&pair, &target, SESSIONS);
    let base = pair.b.rss_kib().expect("gw-b VmRSS");

    let progress = Arc::new(AtomicU64::new(0));
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut shares: Vec<Vec<Source>> = (0..SOURCE_THREADS).map(|_| Vec::new()).collect();
    for (i, s) in clients.into_iter().enumerate() {
        s.set_nonblocking(true).expect("set_nonblocking");
        let seed = 30_000 + i as u64;
        shares[i % SOURCE_THREADS].push(Source::new(s, seed, LEN));
    }
    let began = Instant::now();
    let sources: Vec<_> = shares
        .into_iter()
        .map(|share| {
            let p = progress.clone();
            thread::spawn(move || drive_sources(share, &p, deadline))
        })
        .collect();
    // Until nothing moves any more (backpressure), or STALL_MAX: neither the sources (kernel
    // buffers may take all they have to send) nor gw-b's memory.
    let mut samples = vec![(Instant::now(), 0u64, base)];
    loop {
        thread::sleep(Duration::from_millis(500));
        let now = (
            Instant::now(),
            progress.load(Ordering::Relaxed),
            pair.b.rss_kib().unwrap_or(0),
        );
        samples.push(now);
        let earlier = samples
            .iter()
            .rev()
            .find(|(t, _, _)| now.0.duration_since(*t) >= STILL);
        let still = earlier
            .is_some_and(|&(_, p, rss)| now.1 - p < MOVING && now.2.abs_diff(rss) < MOVING / 1024);
        if still || began.elapsed() >= STALL_MAX {
            break;
        }
    }
    let written = progress.load(Ordering::Relaxed);
    let (_, up) = sessions(&pair.a).unwrap_or_default();
    println!(
        "targets not reading: the {SESSIONS} sources wrote {:.1} of {} MiB in {:.1} s; \
         gw-a read {:.1} MiB of it",
        written as f64 / MIB as f64,
        SESSIONS as u64 * LEN / MIB,
        began.elapsed().as_secs_f64(),
        up as f64 / MIB as f64
    );
    let growth = Growth::measure(
        &pair.b,
        "gw-b",
        base,
        receiver_global,
        "global_buffer_bytes",
    );

    target.start_reading();
    let mut sent = Vec::new();
    let mut errors = Vec::new();
    for h in sources {
        match h.join().expect("source thread") {
            Ok(r) => sent.extend(r),
            Err(e) => errors.push(e),
        }
    }
    assert!(errors.is_empty(), "sources: {errors:?}\n{}", pair.logs());
    let finished = wait_for(Duration::from_secs(30), || {
        target.got().iter().filter(|g| g.sha256.is_some()).count() == SESSIONS
    });
    let got = target.got();
    assert!(
        finished,
        "{} of {SESSIONS} streams reached EOF at the target\n{}",
        got.iter().filter(|g| g.sha256.is_some()).count(),
        pair.logs()
    );
    println!(
        "all {SESSIONS} streams at the target {:.1} s after the start",
        began.elapsed().as_secs_f64()
    );
    for (n, g) in got.iter().enumerate() {
        assert!(g.error.is_none(), "target connection {n}: {:?}", g.error);
        assert_eq!(g.bytes, LEN, "target connection {n}: bytes");
    }
    // Every stream has its own seed: the multisets of hashes are equal only if each arrived
    // intact (the target cannot tell which seed a connection carries).
    let mut want: Vec<String> = sent.iter().map(|(_, h)| h.clone()).collect();
    let mut have: Vec<String> = got.iter().filter_map(|g| g.sha256.clone()).collect();
    want.sort();
    have.sort();
    assert_eq!(want.len(), SESSIONS, "sources finished");
    assert!(
        want == have,
        "SHA-256 of the streams at the target differ from what was sent"
    );
    let (seed, h) = &sent[0];
    assert_eq!(
        *h,
        expected_sha256(LEN, *seed),
        "seed {seed}: the source's own hash"
    );
    growth.check(&format!(
        "{SESSIONS} stalled receivers while gw-a may have {} MiB in flight",
        sender_global / MIB
    ));
    pair.assert_running();
}

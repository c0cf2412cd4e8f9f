//! End-to-end harness for the `lmas` binaries.
//!
//! The tests in `tests/` and the `lmas-load` tool drive the real `lmas` binary; only
//! [`fake_peer`] (and the DPDK load tool) link against the gateway's library. What it offers:
//!
//! - [`lmas_bin`]: where the binary under test is (`LMAS_BIN`, else `<workspace>/target/release/lmas`).
//! - [`free_port`] / [`free_addr`]: loopback ports not handed out before in this process.
//! - [`keygen`]: a key pair made by `lmas keygen`.
//! - [`GatewayConfig`]: one gateway's TOML; [`PairSpec`] / [`Pair`]: gateway A dials gateway B.
//! - [`Gateway`]: a running `lmas run`, its stderr in a file, [`Gateway::wait_for_log`] with a
//!   deadline, killed on drop (and, through `PR_SET_PDEATHSIG`, when the test process dies).
//! - [`Sink`]: a server that hashes (SHA-256) every connection it accepts; [`send`]: a source of
//!   deterministic pseudo-random bytes ([`DataGen`]) that hashes what it sends; [`paced_send`]:
//!   the same at a bounded rate, so a transfer is still running when a test breaks something.
//! - [`netns`]: network namespaces joined by a veth "WAN" that a test can cut
//!   ([`PairSpec::netns`] runs the pair there); [`Gateway::kill`] / [`Gateway::spawn_again`]
//!   for restarts; [`Gateway::status`] / [`Gateway::counters`] read `lmas status --json`;
//!   [`Gateway::signal`] sends SIGHUP/SIGTERM, [`Gateway::wait_exit`] waits for the exit.
//! - [`prom`]: scrapes a metrics endpoint and parses the Prometheus text format strictly.
//! - [`line_lab`]: five namespaces in a line (src, A, router, B, dst) with a kernel or DPDK pair,
//!   an emulated delay and iptables in the router; [`flood`]: spoofed SYNs and silent
//!   connections from many addresses.
//! - [`script`]: runs one of the repository's `scripts/` with a timeout.
//! - [`fake_peer`]: a dialling gateway played by the test itself, built from the gateway's
//!   library (handshake, hello/welcome, sealed records), to send what a real gateway would not.
//!
//! Every wait has a deadline and every socket a read and write timeout: nothing here can hang.
//!
//! Running the end-to-end tests:
//!
//! ```text
//! cargo build --release -p lmas
//! cargo test --release -p lmas-tests     # a debug build works too, but hashes ~20x slower
//! ```
//!
//! Environment: `LMAS_BIN` (the binary under test), `LMAS_KEEP_TMP=1` (keep each test's
//! directory: configs, keys, gateway logs), `LMAS_TEST_RUST_LOG` (the gateways' `RUST_LOG`,
//! default `info`). `tests/resilience.rs` uses `ss -K` (iproute2, root).

use std::collections::BTreeSet;
use std::fmt::Write as _;
use std::fs::{self, File};
use std::io::{self, ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream, ToSocketAddrs};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};

pub mod dpdk_lab;
pub mod fake_peer;
pub mod flood;
pub mod line_lab;
pub mod many_sources;
pub mod netns;
pub mod prom;

/// Size of the buffers used to send and receive test data.
pub const IO_BUF: usize = 1 << 20;

/// How long a socket read or write may make no progress before it fails.
pub const IO_TIMEOUT: Duration = Duration::from_secs(60);

/// How long to wait for `tunnel up` on both gateways.
pub const TUNNEL_UP_TIMEOUT: Duration = Duration::from_secs(20);

/// How long a one-shot `lmas` command (keygen, check-config) may run.
pub const COMMAND_TIMEOUT: Duration = Duration::from_secs(30);

// ---------------------------------------------------------------------------------------------
// Locating the binary

/// The workspace root (the parent of this crate's directory).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ has a parent")
        .to_path_buf()
}

/// The `lmas` binary under test: `$LMAS_BIN`, else `<workspace>/target/release/lmas`.
///
/// Panics with a message saying how to build it when it is missing: a test that cannot run
/// fails, it never passes silently.
pub fn lmas_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("LMAS_BIN") {
        let p = PathBuf::from(p);
        if !p.is_file() {
            panic!(
                "LMAS_BIN={} does not exist or is not a file; build it with \
                 `cargo build --release -p lmas` or point LMAS_BIN at the lmas binary",
                p.display()
            );
        }
        return p;
    }
    let p = workspace_root().join("target/release/lmas");
    if !p.is_file() {
        panic!(
            "the lmas binary was not found at {}: run `cargo build --release -p lmas` first \
             (or set LMAS_BIN=/path/to/lmas, e.g. when CARGO_TARGET_DIR is set)",
            p.display()
        );
    }
    p
}

// ---------------------------------------------------------------------------------------------
// Ports

/// A free TCP port on 127.0.0.1, never handed out before by this process.
///
/// Ports come from below the kernel's ephemeral range (`ip_local_port_range`), so that the
/// source port of some outgoing connection (the gateways dial many) cannot take one between
/// this check and its use; only a process that binds that very port could.
pub fn free_port() -> u16 {
    static USED: Mutex<BTreeSet<u16>> = Mutex::new(BTreeSet::new());
    let ephemeral_low = fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|t| {
            t.split_whitespace()
                .next()
                .and_then(|v| v.parse::<u16>().ok())
        })
        .unwrap_or(32768);
    let (lo, hi) = if ephemeral_low > 12000 {
        (10000u16, ephemeral_low - 1)
    } else {
        (ephemeral_low, u16::MAX) // unusual setup: fall back to any port
    };
    let seed = std::process::id() as u64
        ^ std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0);
    let mut gen = DataGen::new(seed);
    let mut used = USED.lock().unwrap_or_else(|e| e.into_inner());
    for _ in 0..10_000 {
        let port = lo + (gen.next_u64() % u64::from(hi - lo)) as u16;
        if used.contains(&port) {
            continue;
        }
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            used.insert(port);
            return port;
        }
    }
    panic!("could not find a free loopback port in {lo}..{hi}");
}

/// `127.0.0.1:<free port>`.
pub fn free_addr() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], free_port()))
}

/// Whether some socket is in LISTEN state on `port` (IPv4 or IPv6), read from /proc/net/tcp*.
///
/// Used to wait for a gateway's tunnel listener without connecting to it (a probe connection
/// would make the gateway log a failed handshake).
pub fn port_is_listening(port: u16) -> bool {
    port_is_listening_in(None, port)
}

/// [`port_is_listening`] in the network namespace of process `pid` (`None`: this process's).
pub fn port_is_listening_in(pid: Option<u32>, port: u16) -> bool {
    let needle = format!(":{port:04X}");
    let dir = match pid {
        Some(pid) => format!("/proc/{pid}/net"),
        None => "/proc/net".to_string(),
    };
    ["tcp", "tcp6"].iter().any(|f| {
        fs::read_to_string(format!("{dir}/{f}")).is_ok_and(|text| {
            text.lines().skip(1).any(|line| {
                let mut cols = line.split_whitespace();
                let local = cols.nth(1).unwrap_or("");
                let state = cols.nth(1).unwrap_or("");
                local.ends_with(&needle) && state == "0A"
            })
        })
    })
}

/// Waits until something listens on `port`.
pub fn wait_listening(port: u16, timeout: Duration) -> Result<(), String> {
    wait_listening_in(None, port, timeout)
}

/// [`wait_listening`] in the network namespace of process `pid`.
pub fn wait_listening_in(pid: Option<u32>, port: u16, timeout: Duration) -> Result<(), String> {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if port_is_listening_in(pid, port) {
            return Ok(());
        }
        thread::sleep(Duration::from_millis(20));
    }
    Err(format!("nothing listens on port {port} after {timeout:?}"))
}

// ---------------------------------------------------------------------------------------------
// Data

/// Deterministic pseudo-random bytes (xoshiro256++ seeded through splitmix64).
///
/// The stream is a function of the seed as long as every [`DataGen::fill`] but the last is given
/// a length that is a multiple of 8, which is how [`send_all`] uses it.
pub struct DataGen {
    s: [u64; 4],
}

impl DataGen {
    pub fn new(seed: u64) -> DataGen {
        let mut x = seed;
        let mut next = || {
            x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let mut z = x;
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            z ^ (z >> 31)
        };
        DataGen {
            s: [next(), next(), next(), next()],
        }
    }

    #[inline(always)]
    fn next_u64(&mut self) -> u64 {
        let s = &mut self.s;
        let result = s[0].wrapping_add(s[3]).rotate_left(23).wrapping_add(s[0]);
        let t = s[1] << 17;
        s[2] ^= s[0];
        s[3] ^= s[1];
        s[1] ^= s[2];
        s[0] ^= s[3];
        s[2] ^= t;
        s[3] = s[3].rotate_left(45);
        result
    }

    /// Fills `buf` with the next bytes of the stream.
    pub fn fill(&mut self, buf: &mut [u8]) {
        let mut chunks = buf.chunks_exact_mut(8);
        for c in &mut chunks {
            c.copy_from_slice(&self.next_u64().to_le_bytes());
        }
        let rest = chunks.into_remainder();
        if !rest.is_empty() {
            let w = self.next_u64().to_le_bytes();
            let n = rest.len();
            rest.copy_from_slice(&w[..n]);
        }
    }
}

/// Lower-case hex.
pub fn hex(bytes: &[u8]) -> String {
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        let _ = write!(s, "{b:02x}");
    }
    s
}

/// SHA-256 (hex) of the `len` bytes [`DataGen::new(seed)`](DataGen) produces, as sent by
/// [`send_all`].
pub fn expected_sha256(len: u64, seed: u64) -> String {
    let mut gen = DataGen::new(seed);
    let mut buf = vec![0u8; IO_BUF];
    let mut h = Sha256::new();
    let mut left = len;
    while left > 0 {
        let n = left.min(IO_BUF as u64) as usize;
        gen.fill(&mut buf[..n]);
        h.update(&buf[..n]);
        left -= n as u64;
    }
    hex(&h.finalize())
}

/// What a transfer carries, page by page (4 KiB), like guest memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Payload {
    /// Incompressible: [`DataGen`]'s stream.
    Random,
    /// Text-like pages: words from a small vocabulary (compresses well).
    Text,
    /// Each page zero, text or random, a third each (deterministically from the seed).
    Mixed,
}

#[derive(Clone, Copy)]
enum PageKind {
    Random,
    Text,
    Zero,
}

/// Deterministic guest-memory-like bytes of one [`Payload`] kind.
pub struct PayloadGen {
    kind: Payload,
    gen: DataGen,
    page: Vec<u8>,
    /// Bytes of `page` already handed out.
    used: usize,
}

const PAGE: usize = 4096;
const WORDS: [&str; 16] = [
    "kernel ",
    "page ",
    "dirty ",
    "the ",
    "migration ",
    "of ",
    "memory ",
    "and ",
    "guest ",
    "qemu ",
    "ram ",
    "block ",
    "0x7f3a ",
    "=\n",
    "static ",
    "cache ",
];

impl PayloadGen {
    pub fn new(kind: Payload, seed: u64) -> PayloadGen {
        PayloadGen {
            kind,
            gen: DataGen::new(seed),
            page: vec![0; PAGE],
            used: PAGE,
        }
    }

    fn next_page(&mut self) {
        let mut pick = [0u8; 8];
        self.gen.fill(&mut pick);
        let kind = match self.kind {
            Payload::Random => PageKind::Random,
            Payload::Text => PageKind::Text,
            Payload::Mixed => {
                [PageKind::Random, PageKind::Text, PageKind::Zero][pick[0] as usize % 3]
            }
        };
        match kind {
            PageKind::Random => self.gen.fill(&mut self.page),
            PageKind::Text => {
                let mut picks = [0u8; PAGE];
                self.gen.fill(&mut picks);
                let mut at = 0;
                for p in picks {
                    for &b in WORDS[(p & 15) as usize].as_bytes() {
                        if at < PAGE {
                            self.page[at] = b;
                            at += 1;
                        }
                    }
                    if at == PAGE {
                        break;
                    }
                }
            }
            PageKind::Zero => self.page.fill(0),
        }
        self.used = 0;
    }

    /// Fills `buf` with the next bytes of the stream.
    pub fn fill(&mut self, buf: &mut [u8]) {
        let mut at = 0;
        while at < buf.len() {
            if self.used == PAGE {
                self.next_page();
            }
            let n = (PAGE - self.used).min(buf.len() - at);
            buf[at..at + n].copy_from_slice(&self.page[self.used..self.used + n]);
            (at, self.used) = (at + n, self.used + n);
        }
    }
}

/// Writes `len` bytes of `kind` (seeded) to `w`; returns what was written.
pub fn write_payload<W: Write>(w: &mut W, len: u64, seed: u64, kind: Payload) -> io::Result<Sent> {
    write_payload_until(w, len, seed, kind, None)
}

/// Like [`write_payload`], but stops early, at a buffer boundary, once `deadline` has passed
/// (as [`send_all_until`]: what was sent is a prefix of the same stream).
pub fn write_payload_until<W: Write>(
    w: &mut W,
    len: u64,
    seed: u64,
    kind: Payload,
    deadline: Option<Instant>,
) -> io::Result<Sent> {
    let start = Instant::now();
    let mut gen = PayloadGen::new(kind, seed);
    let mut buf = vec![0u8; IO_BUF];
    let mut h = Sha256::new();
    let mut left = len;
    while left > 0 {
        if deadline.is_some_and(|d| Instant::now() >= d) {
            break;
        }
        let n = left.min(IO_BUF as u64) as usize;
        gen.fill(&mut buf[..n]);
        w.write_all(&buf[..n])
            .map_err(|e| timeout_context(e, &format!("send after {} bytes", len - left)))?;
        h.update(&buf[..n]);
        left -= n as u64;
    }
    w.flush()?;
    Ok(Sent {
        bytes: len - left,
        sha256: hex(&h.finalize()),
        secs: start.elapsed().as_secs_f64(),
    })
}

/// Sends `len` bytes of `kind` (seeded) to `addr` and half-closes; returns what was sent.
pub fn send_payload(addr: SocketAddr, len: u64, seed: u64, kind: Payload) -> io::Result<Sent> {
    let mut s = connect(addr)?;
    let start = Instant::now();
    let sent = write_payload(&mut s, len, seed, kind)?;
    finish_send(&s, sent, start)
}

/// What one side sent.
#[derive(Debug, Clone, PartialEq)]
pub struct Sent {
    pub bytes: u64,
    pub sha256: String,
    pub secs: f64,
}

/// What one side received, up to EOF.
#[derive(Debug, Clone, PartialEq)]
pub struct Received {
    pub bytes: u64,
    pub sha256: String,
    pub secs: f64,
}

impl Sent {
    /// Goodput in Mbit/s (10^6 bits).
    pub fn mbit_s(&self) -> f64 {
        mbit_s(self.bytes, self.secs)
    }
}

impl Received {
    /// Goodput in Mbit/s (10^6 bits).
    pub fn mbit_s(&self) -> f64 {
        mbit_s(self.bytes, self.secs)
    }
}

/// `bytes` over `secs` in Mbit/s.
pub fn mbit_s(bytes: u64, secs: f64) -> f64 {
    if secs > 0.0 {
        bytes as f64 * 8.0 / secs / 1e6
    } else {
        0.0
    }
}

/// Sets the read and write timeouts of `s` to [`IO_TIMEOUT`].
pub fn set_timeouts(s: &TcpStream) -> io::Result<()> {
    s.set_read_timeout(Some(IO_TIMEOUT))?;
    s.set_write_timeout(Some(IO_TIMEOUT))
}

fn timeout_context(e: io::Error, what: &str) -> io::Error {
    if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) {
        io::Error::new(
            ErrorKind::TimedOut,
            format!("{what}: no progress for {IO_TIMEOUT:?} ({e})"),
        )
    } else {
        io::Error::new(e.kind(), format!("{what}: {e}"))
    }
}

/// Writes `len` bytes of the [`DataGen`] stream for `seed` into `w` (does not shut it down).
pub fn send_all<W: Write>(w: &mut W, len: u64, seed: u64) -> io::Result<Sent> {
    send_all_until(w, len, seed, None)
}

/// Like [`send_all`], but stops early, at a buffer boundary, once `deadline` has passed: the
/// returned [`Sent`] then covers only the bytes written (a prefix of the same stream, so a
/// receiver's hash of what arrived still has to equal it).
pub fn send_all_until<W: Write>(
    w: &mut W,
    len: u64,
    seed: u64,
    deadline: Option<Instant>,
) -> io::Result<Sent> {
    let start = Instant::now();
    let mut gen = DataGen::new(seed);
    let mut buf = vec![0u8; IO_BUF.min(len.max(8) as usize)];
    let mut h = Sha256::new();
    let mut left = len;
    while left > 0 {
        if deadline.is_some_and(|d| Instant::now() >= d) {
            break;
        }
        let n = left.min(buf.len() as u64) as usize;
        gen.fill(&mut buf[..n]);
        h.update(&buf[..n]);
        w.write_all(&buf[..n])
            .map_err(|e| timeout_context(e, &format!("send after {} bytes", len - left)))?;
        left -= n as u64;
    }
    w.flush()?;
    Ok(Sent {
        bytes: len - left,
        sha256: hex(&h.finalize()),
        secs: start.elapsed().as_secs_f64(),
    })
}

/// A writer that counts the bytes written through it into a shared counter.
pub struct Counting<W> {
    pub inner: W,
    pub count: Arc<AtomicU64>,
}

impl<W: Write> Write for Counting<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.count.fetch_add(n as u64, Ordering::Relaxed);
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// A writer that keeps the average rate at or below `rate` bytes/s (so that a transfer is
/// still running when a test breaks something) and counts what it wrote into `count`.
pub struct Paced<W> {
    pub inner: W,
    rate: f64,
    start: Instant,
    written: u64,
    pub count: Arc<AtomicU64>,
}

impl<W> Paced<W> {
    pub fn new(inner: W, rate_bytes_per_sec: f64, count: Arc<AtomicU64>) -> Paced<W> {
        Paced {
            inner,
            rate: rate_bytes_per_sec,
            start: Instant::now(),
            written: 0,
            count,
        }
    }
}

impl<W: Write> Write for Paced<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = buf.len().min(256 << 10);
        let n = self.inner.write(&buf[..n])?;
        self.written += n as u64;
        self.count.fetch_add(n as u64, Ordering::Relaxed);
        let due = self.start + Duration::from_secs_f64(self.written as f64 / self.rate);
        let now = Instant::now();
        if due > now {
            thread::sleep(due - now);
        }
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// The source of [`send`], at most `rate` bytes/s, counting what it wrote into `progress`;
/// run on a thread (inside a network namespace if `ns` is given, with `ingress` an address
/// there). Returns the result and when the source finished (or failed).
pub fn paced_send(
    ns: Option<&netns::NetNs>,
    ingress: SocketAddr,
    len: u64,
    seed: u64,
    rate: f64,
    progress: Arc<AtomicU64>,
) -> JoinHandle<(io::Result<Sent>, Instant)> {
    let body = move || {
        let r = (|| {
            let s = connect(ingress)?;
            let mut w = Paced::new(s.try_clone()?, rate, progress);
            let sent = send_all(&mut w, len, seed)?;
            s.shutdown(Shutdown::Write)?;
            let mut r = s;
            let back = recv_all(&mut r)?;
            if back.bytes != 0 {
                return Err(io::Error::new(
                    ErrorKind::InvalidData,
                    format!("the target sent {} unexpected bytes back", back.bytes),
                ));
            }
            Ok(sent)
        })();
        (r, Instant::now())
    };
    match ns {
        Some(ns) => ns.spawn(body),
        None => thread::spawn(body),
    }
}

/// Waits until `progress` reaches `at_least`; an error after `within`.
pub fn wait_progress(progress: &AtomicU64, at_least: u64, within: Duration) -> Result<(), String> {
    let deadline = Instant::now() + within;
    while progress.load(Ordering::Relaxed) < at_least {
        if Instant::now() >= deadline {
            return Err(format!(
                "only {} of {at_least} bytes written within {within:?}",
                progress.load(Ordering::Relaxed)
            ));
        }
        thread::sleep(Duration::from_millis(20));
    }
    Ok(())
}

/// Connects to `to` from address `from` (port chosen by the kernel), e.g. from 127.0.0.2 to
/// look like a different host on loopback. Blocking, with the I/O timeouts set.
pub fn connect_from(from: std::net::Ipv4Addr, to: std::net::SocketAddrV4) -> io::Result<TcpStream> {
    use std::os::fd::FromRawFd;
    fn sockaddr(a: std::net::SocketAddrV4) -> libc::sockaddr_in {
        libc::sockaddr_in {
            sin_family: libc::AF_INET as libc::sa_family_t,
            sin_port: a.port().to_be(),
            sin_addr: libc::in_addr {
                s_addr: u32::from(*a.ip()).to_be(),
            },
            sin_zero: [0; 8],
        }
    }
    let len = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
    // SAFETY: plain socket calls on a descriptor we own; the sockaddr structs outlive the calls;
    // on error the descriptor is closed before returning.
    unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0);
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        let local = sockaddr(std::net::SocketAddrV4::new(from, 0));
        let remote = sockaddr(to);
        let fail = |what: &str| {
            let e = io::Error::last_os_error();
            libc::close(fd);
            Err(io::Error::new(
                e.kind(),
                format!("{what} {from} -> {to}: {e}"),
            ))
        };
        if libc::bind(fd, &local as *const _ as *const libc::sockaddr, len) != 0 {
            return fail("bind");
        }
        if libc::connect(fd, &remote as *const _ as *const libc::sockaddr, len) != 0 {
            return fail("connect");
        }
        let s = TcpStream::from_raw_fd(fd);
        set_timeouts(&s)?;
        Ok(s)
    }
}

/// Reads `r` to EOF, hashing everything.
pub fn recv_all<R: Read>(r: &mut R) -> io::Result<Received> {
    let start = Instant::now();
    let mut buf = vec![0u8; IO_BUF];
    let mut h = Sha256::new();
    let mut total = 0u64;
    loop {
        match r.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                h.update(&buf[..n]);
                total += n as u64;
            }
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) => return Err(timeout_context(e, &format!("receive after {total} bytes"))),
        }
    }
    Ok(Received {
        bytes: total,
        sha256: hex(&h.finalize()),
        secs: start.elapsed().as_secs_f64(),
    })
}

/// Connects to `addr` with a deadline and sets the I/O timeouts.
pub fn connect(addr: impl ToSocketAddrs) -> io::Result<TcpStream> {
    let mut last = io::Error::new(ErrorKind::InvalidInput, "address resolved to nothing");
    for a in addr.to_socket_addrs()? {
        match TcpStream::connect_timeout(&a, Duration::from_secs(10)) {
            Ok(s) => {
                set_timeouts(&s)?;
                return Ok(s);
            }
            Err(e) => last = io::Error::new(e.kind(), format!("connect {a}: {e}")),
        }
    }
    Err(last)
}

/// The source: connects to `addr`, sends `len` bytes of the stream for `seed`, shuts down its
/// write side and waits for the peer to close (so `secs` covers delivery, not just buffering).
/// Bytes the peer sends back are an error.
pub fn send(addr: impl ToSocketAddrs, len: u64, seed: u64) -> io::Result<Sent> {
    let start = Instant::now();
    let mut s = connect(addr)?;
    let sent = send_all(&mut s, len, seed)?;
    finish_send(&s, sent, start)
}

/// The end of a source's transfer: shuts down the write side of `s`, waits for the peer to
/// close (bytes it sends back are an error) and sets `sent.secs` to the time since `start`.
pub fn finish_send(s: &TcpStream, mut sent: Sent, start: Instant) -> io::Result<Sent> {
    s.shutdown(Shutdown::Write)?;
    let back = recv_all(&mut &*s).map_err(|e| {
        io::Error::new(
            e.kind(),
            format!("waiting for the peer to close after sending everything: {e}"),
        )
    })?;
    if back.bytes != 0 {
        return Err(io::Error::new(
            ErrorKind::InvalidData,
            format!("the sink sent {} unexpected bytes back", back.bytes),
        ));
    }
    sent.secs = start.elapsed().as_secs_f64();
    Ok(sent)
}

/// Sends `send_len` bytes (seed `seed`) on `s` while reading from it to EOF; shuts down the write
/// side when done sending. Returns what was sent and what was received.
pub fn duplex(s: &TcpStream, send_len: u64, seed: u64) -> io::Result<(Sent, Received)> {
    let mut w = s.try_clone()?;
    let writer = thread::spawn(move || -> io::Result<Sent> {
        let sent = send_all(&mut w, send_len, seed)?;
        w.shutdown(Shutdown::Write)?;
        Ok(sent)
    });
    let mut r = s.try_clone()?;
    let received = recv_all(&mut r);
    let sent = writer
        .join()
        .map_err(|_| io::Error::other("writer thread panicked"))?;
    Ok((sent?, received?))
}

/// Listens on a free loopback port and runs `f` on the first connection accepted within
/// `accept_timeout` (in a thread; the stream has the I/O timeouts set).
pub fn serve_once<T, F>(accept_timeout: Duration, f: F) -> (SocketAddr, JoinHandle<io::Result<T>>)
where
    T: Send + 'static,
    F: FnOnce(TcpStream) -> io::Result<T> + Send + 'static,
{
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind target server");
    serve_once_on(listener, accept_timeout, f)
}

/// [`serve_once`] on a listener bound elsewhere (e.g. inside a network namespace: see
/// [`netns::NetNs::run`]).
pub fn serve_once_on<T, F>(
    listener: TcpListener,
    accept_timeout: Duration,
    f: F,
) -> (SocketAddr, JoinHandle<io::Result<T>>)
where
    T: Send + 'static,
    F: FnOnce(TcpStream) -> io::Result<T> + Send + 'static,
{
    let addr = listener.local_addr().expect("local_addr");
    listener.set_nonblocking(true).expect("set_nonblocking");
    let h = thread::spawn(move || {
        let deadline = Instant::now() + accept_timeout;
        loop {
            match listener.accept() {
                Ok((s, _)) => {
                    s.set_nonblocking(false)?;
                    set_timeouts(&s)?;
                    return f(s);
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => {
                    if Instant::now() >= deadline {
                        return Err(io::Error::new(
                            ErrorKind::TimedOut,
                            format!("target {addr}: no connection within {accept_timeout:?}"),
                        ));
                    }
                    thread::sleep(Duration::from_millis(5));
                }
                Err(e) => return Err(e),
            }
        }
    });
    (addr, h)
}

/// A target that reads exactly `n` bytes from its first connection, then holds that
/// connection open (a session still running) until dropped.
pub struct HoldingTarget {
    pub addr: SocketAddr,
    got: Receiver<io::Result<u64>>,
    done: Option<mpsc::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl HoldingTarget {
    pub fn start(n: u64) -> HoldingTarget {
        HoldingTarget::on(
            TcpListener::bind("127.0.0.1:0").expect("bind target server"),
            n,
        )
    }

    /// The same on a listener bound elsewhere (e.g. inside a network namespace).
    pub fn on(listener: TcpListener, n: u64) -> HoldingTarget {
        let (got_tx, got) = mpsc::channel();
        let (done, done_rx) = mpsc::channel::<()>();
        let (addr, h) = serve_once_on(listener, Duration::from_secs(30), move |mut s| {
            let mut buf = vec![0u8; 1 << 16];
            let mut total = 0u64;
            let r = loop {
                if total >= n {
                    break Ok(total);
                }
                match s.read(&mut buf) {
                    Ok(0) => break Err(io::Error::other(format!("early EOF after {total} bytes"))),
                    Ok(k) => total += k as u64,
                    Err(e) => break Err(e),
                }
            };
            let _ = got_tx.send(r);
            let _ = done_rx.recv_timeout(Duration::from_secs(120));
            Ok(())
        });
        HoldingTarget {
            addr,
            got,
            done: Some(done),
            thread: Some(thread::spawn(move || {
                let _ = join(h);
            })),
        }
    }

    /// Waits until all `n` bytes arrived; panics after `timeout` or on an error.
    pub fn wait_all(&self, timeout: Duration) -> u64 {
        match self.got.recv_timeout(timeout) {
            Ok(Ok(n)) => n,
            Ok(Err(e)) => panic!("target {}: {e}", self.addr),
            Err(_) => panic!("target {}: not all bytes within {timeout:?}", self.addr),
        }
    }
}

impl Drop for HoldingTarget {
    fn drop(&mut self) {
        self.done.take();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Joins a thread from [`serve_once`] or similar, turning a panic into an error.
pub fn join<T>(h: JoinHandle<io::Result<T>>) -> io::Result<T> {
    h.join().map_err(|_| io::Error::other("thread panicked"))?
}

/// How a connection ended in [`expect_closed`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Closed {
    /// Orderly EOF.
    Eof,
    /// Reset, aborted or broken pipe.
    Reset(String),
}

/// Connects to `addr`, writes a few bytes, and expects the connection to be closed or reset
/// within `within` without receiving any data. Returns how it ended and how long it took.
pub fn expect_closed(addr: SocketAddr, within: Duration) -> Result<(Closed, Duration), String> {
    let start = Instant::now();
    let mut s = match connect(addr) {
        Ok(s) => s,
        // Accepted and reset before connect() returned: a prompt refusal too.
        Err(e)
            if matches!(
                e.kind(),
                ErrorKind::ConnectionReset | ErrorKind::ConnectionAborted
            ) =>
        {
            return Ok((Closed::Reset(e.to_string()), start.elapsed()))
        }
        Err(e) => return Err(format!("connect {addr}: {e}")),
    };
    let payload = vec![0x5au8; 4096];
    if let Err(e) = s.write_all(&payload) {
        return Ok((Closed::Reset(e.to_string()), start.elapsed()));
    }
    let mut buf = [0u8; 4096];
    loop {
        let left = within.saturating_sub(start.elapsed());
        if left.is_zero() {
            return Err(format!(
                "connection to {addr} still open after {within:?} (expected a close or reset)"
            ));
        }
        s.set_read_timeout(Some(left)).map_err(|e| e.to_string())?;
        match s.read(&mut buf) {
            Ok(0) => return Ok((Closed::Eof, start.elapsed())),
            Ok(n) => {
                return Err(format!(
                    "connection to {addr}: received {n} unexpected bytes"
                ))
            }
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            Err(e) => return Ok((Closed::Reset(e.to_string()), start.elapsed())),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Sink

/// A server that reads every connection it accepts to EOF, hashing it, then closes it.
///
/// Results come out in completion order through [`Sink::recv`]. Dropping the sink stops
/// accepting.
pub struct Sink {
    addr: SocketAddr,
    rx: Receiver<(SocketAddr, io::Result<Received>)>,
    stop: Arc<AtomicBool>,
    acceptor: Option<JoinHandle<()>>,
}

impl Sink {
    /// A sink on a free loopback port (chosen by the kernel).
    pub fn start() -> Sink {
        Sink::bind(SocketAddr::from(([127, 0, 0, 1], 0))).expect("bind sink")
    }

    /// A sink on `addr`.
    pub fn bind(addr: SocketAddr) -> io::Result<Sink> {
        Sink::from_listener(TcpListener::bind(addr)?)
    }

    /// A sink on a listener made elsewhere (e.g. inside a network namespace: see
    /// [`netns::NetNs::run`]).
    pub fn from_listener(listener: TcpListener) -> io::Result<Sink> {
        let addr = listener.local_addr()?;
        listener.set_nonblocking(true)?;
        let (tx, rx) = mpsc::channel();
        let stop = Arc::new(AtomicBool::new(false));
        let stop2 = stop.clone();
        let acceptor = thread::spawn(move || {
            while !stop2.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((s, peer)) => {
                        let tx = tx.clone();
                        thread::spawn(move || {
                            let r = (|| {
                                s.set_nonblocking(false)?;
                                set_timeouts(&s)?;
                                let mut s = s;
                                recv_all(&mut s)
                            })();
                            let _ = tx.send((peer, r));
                        });
                    }
                    Err(e) if e.kind() == ErrorKind::WouldBlock => {
                        thread::sleep(Duration::from_millis(5))
                    }
                    Err(_) => thread::sleep(Duration::from_millis(5)),
                }
            }
        });
        Ok(Sink {
            addr,
            rx,
            stop,
            acceptor: Some(acceptor),
        })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The next finished connection; panics after `timeout` or on an I/O error.
    pub fn recv(&self, timeout: Duration) -> Received {
        match self.rx.recv_timeout(timeout) {
            Ok((_, Ok(r))) => r,
            Ok((peer, Err(e))) => panic!("sink {}: connection from {peer}: {e}", self.addr),
            Err(RecvTimeoutError::Timeout) => panic!(
                "sink {}: no connection finished within {timeout:?}",
                self.addr
            ),
            Err(RecvTimeoutError::Disconnected) => panic!("sink {}: acceptor died", self.addr),
        }
    }

    /// The next finished connection, or `None` after `timeout`.
    pub fn try_recv(&self, timeout: Duration) -> Option<io::Result<Received>> {
        self.rx.recv_timeout(timeout).ok().map(|(_, r)| r)
    }
}

impl Drop for Sink {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.acceptor.take() {
            let _ = t.join();
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Running commands

/// Sets up a child so that it is killed when the spawning thread's process dies.
fn die_with_parent(cmd: &mut Command) {
    // SAFETY: prctl and getppid are async-signal-safe; nothing here allocates.
    unsafe {
        cmd.pre_exec(|| {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                return Err(io::Error::last_os_error());
            }
            if libc::getppid() == 1 {
                // The parent already died.
                libc::_exit(1);
            }
            Ok(())
        });
    }
}

/// Runs `cmd` to completion, killing it after `timeout` (then the result is an error).
pub fn run_with_timeout(cmd: &mut Command, timeout: Duration) -> io::Result<Output> {
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    die_with_parent(cmd);
    // Its own process group, so that a timeout stops what it started too.
    cmd.process_group(0);
    let mut child = cmd.spawn()?;
    let mut out = child.stdout.take().expect("piped stdout");
    let mut err = child.stderr.take().expect("piped stderr");
    let t_out = thread::spawn(move || {
        let mut v = Vec::new();
        let _ = out.read_to_end(&mut v);
        v
    });
    let t_err = thread::spawn(move || {
        let mut v = Vec::new();
        let _ = err.read_to_end(&mut v);
        v
    });
    let deadline = Instant::now() + timeout;
    let status = loop {
        if let Some(st) = child.try_wait()? {
            break st;
        }
        if Instant::now() >= deadline {
            stop_group(&mut child);
            return Err(io::Error::new(
                ErrorKind::TimedOut,
                format!("{cmd:?} did not finish within {timeout:?}"),
            ));
        }
        thread::sleep(Duration::from_millis(10));
    };
    Ok(Output {
        status,
        stdout: t_out.join().unwrap_or_default(),
        stderr: t_err.join().unwrap_or_default(),
    })
}

/// Stops a child that leads its own process group, and everything in the group: SIGTERM
/// first (a script's EXIT trap stops what it started), SIGKILL after 5 s.
fn stop_group(child: &mut Child) {
    let group = child.id() as libc::pid_t;
    // SAFETY: signalling our own child's process group.
    unsafe { libc::killpg(group, libc::SIGTERM) };
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline && matches!(child.try_wait(), Ok(None)) {
        thread::sleep(Duration::from_millis(20));
    }
    // SAFETY: as above; whatever is left of the group.
    unsafe { libc::killpg(group, libc::SIGKILL) };
    let _ = child.wait();
}

/// How long [`script`] waits: a script starts several processes (bench-memif.sh: four DPDK
/// processes on shared CPUs took 7 s alone and more than 30 s beside other tests).
pub const SCRIPT_TIMEOUT: Duration = Duration::from_secs(120);

/// Runs `scripts/NAME ARGS…` of this repository with [`SCRIPT_TIMEOUT`].
pub fn script(name: &str, args: &[&str]) -> Output {
    let path = workspace_root().join("scripts").join(name);
    let mut cmd = Command::new(&path);
    cmd.args(args);
    run_with_timeout(&mut cmd, SCRIPT_TIMEOUT)
        .unwrap_or_else(|e| panic!("running {} {args:?}: {e}", path.display()))
}

/// Runs `lmas ARGS…` with [`COMMAND_TIMEOUT`].
pub fn lmas(args: &[&str]) -> Output {
    let bin = lmas_bin();
    let mut cmd = Command::new(&bin);
    cmd.args(args);
    run_with_timeout(&mut cmd, COMMAND_TIMEOUT)
        .unwrap_or_else(|e| panic!("running {} {args:?}: {e}", bin.display()))
}

// ---------------------------------------------------------------------------------------------
// Keys

/// A key pair made by `lmas keygen`.
#[derive(Debug, Clone)]
pub struct KeyPair {
    /// The private key file.
    pub private_path: PathBuf,
    /// The public key (base64, trimmed), as in `<private_path>.pub`.
    pub public: String,
}

/// Runs `lmas keygen --out PATH` and checks its contract (stdout is the public key, `PATH.pub`
/// holds it).
pub fn keygen(path: &Path) -> KeyPair {
    let out = lmas(&["keygen", "--out", path.to_str().expect("utf-8 path")]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "lmas keygen --out {} failed ({}): {stderr}",
        path.display(),
        out.status
    );
    let pub_path = pub_path(path);
    let public = fs::read_to_string(&pub_path)
        .unwrap_or_else(|e| panic!("lmas keygen did not write {}: {e}", pub_path.display()))
        .trim()
        .to_string();
    assert!(!public.is_empty(), "{} is empty", pub_path.display());
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        stdout.trim(),
        public,
        "lmas keygen printed something other than the public key in {}",
        pub_path.display()
    );
    KeyPair {
        private_path: path.to_path_buf(),
        public,
    }
}

/// 32 random bytes in base64 (from /dev/urandom): the form of a pre-shared key file.
pub fn random_key_b64() -> String {
    const A: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut b = [0u8; 33];
    File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut b[..32]))
        .expect("read /dev/urandom");
    let mut out = String::new();
    for c in b.chunks(3) {
        let n = (u32::from(c[0]) << 16) | (u32::from(c[1]) << 8) | u32::from(c[2]);
        for i in 0..4 {
            out.push(A[((n >> (18 - 6 * i)) & 63) as usize] as char);
        }
    }
    // 32 bytes: 43 characters and one '=' of padding.
    out.truncate(43);
    out.push('=');
    out
}

/// `PATH.pub` for a private key file `PATH`.
pub fn pub_path(private: &Path) -> PathBuf {
    let mut s = private.as_os_str().to_owned();
    s.push(".pub");
    PathBuf::from(s)
}

// ---------------------------------------------------------------------------------------------
// Configs

/// One `[[ingress]]` entry.
#[derive(Debug, Clone)]
pub struct Ingress {
    pub bind: SocketAddr,
    /// Where the far gateway connects to (`IP:PORT` text, as written in the config).
    pub target: String,
}

/// One gateway's configuration, rendered by [`GatewayConfig::to_toml`].
#[derive(Debug, Clone)]
pub struct GatewayConfig {
    pub name: String,
    /// As written in the config (relative to the config's directory, or absolute).
    pub private_key_file: String,
    pub psk_file: Option<String>,
    pub tunnel_listen: Option<SocketAddr>,
    pub peer_name: String,
    pub peer_public_key: String,
    pub peer_connect: Option<SocketAddr>,
    pub data_flows: u32,
    pub congestion: Option<String>,
    pub ingress: Vec<Ingress>,
    pub egress_allow: Vec<String>,
    pub session_window_bytes: Option<u64>,
    pub global_buffer_bytes: Option<u64>,
    /// Extra `key = value` lines for the `[limits]` table (e.g. `max_sessions = 2000`).
    pub limits_extra: Vec<String>,
    /// Extra `key = value` lines for the `[wan]` table.
    pub wan_extra: Vec<String>,
    /// The admin socket for `lmas status` (`[admin] socket`).
    pub admin_socket: Option<PathBuf>,
    /// Extra `key = value` lines for the `[gateway]` table (e.g. `drain_timeout_secs = 5`).
    pub gateway_extra: Vec<String>,
    /// The metrics endpoint (`[metrics] bind`); none: metrics off.
    pub metrics_bind: Option<SocketAddr>,
}

fn toml_str(s: &str) -> String {
    let mut out = String::from("\"");
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

impl GatewayConfig {
    pub fn to_toml(&self) -> String {
        let mut t = String::new();
        let _ = writeln!(t, "[gateway]");
        let _ = writeln!(t, "name = {}", toml_str(&self.name));
        let _ = writeln!(t, "private_key_file = {}", toml_str(&self.private_key_file));
        if let Some(p) = &self.psk_file {
            let _ = writeln!(t, "psk_file = {}", toml_str(p));
        }
        if let Some(a) = &self.tunnel_listen {
            let _ = writeln!(t, "tunnel_listen = \"{a}\"");
        }
        for line in &self.gateway_extra {
            let _ = writeln!(t, "{line}");
        }
        let _ = writeln!(t, "\n[peer]");
        let _ = writeln!(t, "name = {}", toml_str(&self.peer_name));
        let _ = writeln!(t, "public_key = {}", toml_str(&self.peer_public_key));
        if let Some(a) = &self.peer_connect {
            let _ = writeln!(t, "connect = \"{a}\"");
        }
        let _ = writeln!(t, "\n[wan]");
        let _ = writeln!(t, "data_flows = {}", self.data_flows);
        if let Some(c) = &self.congestion {
            let _ = writeln!(t, "congestion = {}", toml_str(c));
        }
        for line in &self.wan_extra {
            let _ = writeln!(t, "{line}");
        }
        if let Some(p) = &self.admin_socket {
            let _ = writeln!(
                t,
                "\n[admin]\nsocket = {}",
                toml_str(&p.display().to_string())
            );
        }
        for i in &self.ingress {
            let _ = writeln!(t, "\n[[ingress]]");
            let _ = writeln!(t, "mode = \"listen\"");
            let _ = writeln!(t, "bind = \"{}\"", i.bind);
            let _ = writeln!(t, "target = {}", toml_str(&i.target));
        }
        if !self.egress_allow.is_empty() {
            let allow: Vec<String> = self.egress_allow.iter().map(|a| toml_str(a)).collect();
            let _ = writeln!(t, "\n[egress]");
            let _ = writeln!(t, "allow = [{}]", allow.join(", "));
        }
        if self.session_window_bytes.is_some()
            || self.global_buffer_bytes.is_some()
            || !self.limits_extra.is_empty()
        {
            let _ = writeln!(t, "\n[limits]");
            if let Some(v) = self.session_window_bytes {
                let _ = writeln!(t, "session_window_bytes = {v}");
            }
            if let Some(v) = self.global_buffer_bytes {
                let _ = writeln!(t, "global_buffer_bytes = {v}");
            }
            for line in &self.limits_extra {
                let _ = writeln!(t, "{line}");
            }
        }
        if let Some(a) = &self.metrics_bind {
            let _ = writeln!(t, "\n[metrics]\nbind = \"{a}\"");
        }
        t
    }
}

// ---------------------------------------------------------------------------------------------
// Gateway processes

/// A running `lmas run --config FILE`, stdout and stderr going to a log file.
///
/// Dropping it sends SIGTERM, waits up to 5 s, then SIGKILLs. The child also gets SIGKILL if the
/// test process dies first (`PR_SET_PDEATHSIG`), so no gateway outlives its test.
pub struct Gateway {
    pub name: String,
    pub config: PathBuf,
    pub log_path: PathBuf,
    child: Option<Child>,
    exit: Option<ExitStatus>,
    /// The network namespace it runs in (kept alive while the gateway is).
    netns: Option<Arc<netns::NetNs>>,
}

impl Gateway {
    /// Starts `lmas run --config CONFIG` with `RUST_LOG` from `LMAS_TEST_RUST_LOG` (default
    /// `info`), logging to `LOG`.
    pub fn spawn(name: &str, config: &Path, log_path: &Path) -> Gateway {
        Gateway::spawn_in(name, config, log_path, None)
    }

    /// [`Gateway::spawn`] inside a network namespace (`None`: this process's).
    pub fn spawn_in(
        name: &str,
        config: &Path,
        log_path: &Path,
        netns: Option<Arc<netns::NetNs>>,
    ) -> Gateway {
        let bin = lmas_bin();
        let log =
            File::create(log_path).unwrap_or_else(|e| panic!("create {}: {e}", log_path.display()));
        let log2 = log.try_clone().expect("clone log file handle");
        let rust_log = std::env::var("LMAS_TEST_RUST_LOG").unwrap_or_else(|_| "info".into());
        let mut cmd = Command::new(&bin);
        cmd.arg("run")
            .arg("--config")
            .arg(config)
            .env("RUST_LOG", rust_log)
            .env("RUST_BACKTRACE", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::from(log2))
            .stderr(Stdio::from(log));
        die_with_parent(&mut cmd);
        if let Some(ns) = &netns {
            ns.enter_on_exec(&mut cmd);
        }
        let child = cmd.spawn().unwrap_or_else(|e| {
            panic!(
                "spawn {} run --config {}: {e}",
                bin.display(),
                config.display()
            )
        });
        Gateway {
            name: name.to_string(),
            config: config.to_path_buf(),
            log_path: log_path.to_path_buf(),
            child: Some(child),
            exit: None,
            netns,
        }
    }

    /// Another gateway with the same name, config and namespace (a restart), logging to
    /// `log_path`.
    pub fn spawn_again(&self, log_path: &Path) -> Gateway {
        Gateway::spawn_in(&self.name, &self.config, log_path, self.netns.clone())
    }

    /// SIGKILL (no clean shutdown), and reap it.
    pub fn kill(&mut self) -> Option<ExitStatus> {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            self.exit = c.wait().ok();
        }
        self.exit
    }

    /// `lmas status --config CONFIG --json` (through its admin socket), parsed.
    pub fn status(&self) -> Result<serde_json::Value, String> {
        let bin = lmas_bin();
        let mut cmd = Command::new(&bin);
        cmd.arg("status")
            .arg("--config")
            .arg(&self.config)
            .arg("--json");
        let out = run_with_timeout(&mut cmd, COMMAND_TIMEOUT)
            .map_err(|e| format!("{}: lmas status: {e}", self.name))?;
        if !out.status.success() {
            return Err(format!(
                "{}: lmas status failed ({}): {}",
                self.name,
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            ));
        }
        serde_json::from_slice(&out.stdout)
            .map_err(|e| format!("{}: lmas status --json: {e}", self.name))
    }

    /// The counters from [`Gateway::status`].
    pub fn counters(&self) -> Result<std::collections::BTreeMap<String, u64>, String> {
        let v = self.status()?;
        let counters = v
            .get("counters")
            .and_then(|c| c.as_object())
            .ok_or_else(|| format!("{}: lmas status --json has no counters: {v}", self.name))?;
        Ok(counters
            .iter()
            .filter_map(|(k, v)| Some((k.clone(), v.as_u64()?)))
            .collect())
    }

    /// The gauges of `lmas status --json` (levels such as free packet buffers; DPDK only).
    pub fn gauges(&self) -> Result<std::collections::BTreeMap<String, u64>, String> {
        let v = self.status()?;
        Ok(v.get("gauges")
            .and_then(|c| c.as_object())
            .map(|g| {
                g.iter()
                    .filter_map(|(k, v)| Some((k.clone(), v.as_u64()?)))
                    .collect()
            })
            .unwrap_or_default())
    }

    /// One counter from [`Gateway::counters`].
    pub fn counter(&self, name: &str) -> Result<u64, String> {
        let counters = self.counters()?;
        counters.get(name).copied().ok_or_else(|| {
            format!(
                "{}: lmas status reports no counter {name:?} (it has {:?})",
                self.name,
                counters.keys().collect::<Vec<_>>()
            )
        })
    }

    /// Current resident set size (VmRSS) in KiB, while the process runs.
    pub fn rss_kib(&self) -> Option<u64> {
        let pid = self.pid()?;
        let status = fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.id())
    }

    /// Everything the gateway logged so far.
    pub fn log(&self) -> String {
        fs::read(&self.log_path)
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_default()
    }

    /// The last `n` lines of the log.
    pub fn log_tail(&self, n: usize) -> String {
        let log = self.log();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(n)..].join("\n")
    }

    /// Whether the process still runs (records its exit status otherwise).
    pub fn is_running(&mut self) -> bool {
        match &mut self.child {
            None => false,
            Some(c) => match c.try_wait() {
                Ok(None) => true,
                Ok(Some(st)) => {
                    self.exit = Some(st);
                    self.child = None;
                    false
                }
                Err(_) => false,
            },
        }
    }

    /// The first log line containing every one of `needles`, if any.
    pub fn find_line(&self, needles: &[&str]) -> Option<String> {
        self.log()
            .lines()
            .find(|l| needles.iter().all(|n| l.contains(n)))
            .map(str::to_string)
    }

    /// Waits until a log line contains every one of `needles`; returns that line. Fails early if
    /// the gateway exits.
    pub fn wait_for_line(&mut self, needles: &[&str], timeout: Duration) -> Result<String, String> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(l) = self.find_line(needles) {
                return Ok(l);
            }
            if !self.is_running() {
                // One last look: the line may have been written just before exiting.
                if let Some(l) = self.find_line(needles) {
                    return Ok(l);
                }
                return Err(format!(
                    "{} exited ({}) before logging a line with {needles:?}; log:\n{}",
                    self.name,
                    self.exit.map(|s| s.to_string()).unwrap_or_default(),
                    self.log_tail(40)
                ));
            }
            if Instant::now() >= deadline {
                return Err(format!(
                    "{} logged no line with {needles:?} within {timeout:?}; log:\n{}",
                    self.name,
                    self.log_tail(40)
                ));
            }
            thread::sleep(Duration::from_millis(20));
        }
    }

    /// How many log lines contain every one of `needles`.
    pub fn count_lines(&self, needles: &[&str]) -> usize {
        self.log()
            .lines()
            .filter(|l| needles.iter().all(|n| l.contains(n)))
            .count()
    }

    /// Waits until at least `count` log lines contain `needle`.
    pub fn wait_for_count(
        &mut self,
        needle: &str,
        count: usize,
        timeout: Duration,
    ) -> Result<(), String> {
        let deadline = Instant::now() + timeout;
        loop {
            if self.count_lines(&[needle]) >= count {
                return Ok(());
            }
            if !self.is_running() && self.count_lines(&[needle]) < count {
                return Err(format!(
                    "{} exited ({}) before logging {needle:?} {count} times; log:\n{}",
                    self.name,
                    self.exit.map(|s| s.to_string()).unwrap_or_default(),
                    self.log_tail(40)
                ));
            }
            if Instant::now() >= deadline {
                return Err(format!(
                    "{} logged {needle:?} {} times, not {count}, within {timeout:?}; log:\n{}",
                    self.name,
                    self.count_lines(&[needle]),
                    self.log_tail(40)
                ));
            }
            thread::sleep(Duration::from_millis(20));
        }
    }

    /// [`Gateway::wait_for_line`] with one substring.
    pub fn wait_for_log(&mut self, needle: &str, timeout: Duration) -> Result<String, String> {
        self.wait_for_line(&[needle], timeout)
    }

    /// Like [`Gateway::wait_for_log`] but panics on failure.
    pub fn expect_log(&mut self, needle: &str, timeout: Duration) -> String {
        self.wait_for_log(needle, timeout)
            .unwrap_or_else(|e| panic!("{e}"))
    }

    /// Peak resident set size (VmHWM) in KiB, while the process runs.
    pub fn peak_rss_kib(&self) -> Option<u64> {
        let pid = self.pid()?;
        let status = fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmHWM:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
    }

    /// Sends signal `sig` (e.g. `libc::SIGHUP`) to the running gateway.
    pub fn signal(&self, sig: libc::c_int) -> Result<(), String> {
        let pid = self
            .pid()
            .ok_or_else(|| format!("{} is not running", self.name))?;
        // SAFETY: kill(2) on our own child's pid, which is not reaped yet (we hold the Child).
        if unsafe { libc::kill(pid as libc::pid_t, sig) } != 0 {
            return Err(format!(
                "{}: kill({sig}): {}",
                self.name,
                io::Error::last_os_error()
            ));
        }
        Ok(())
    }

    /// Waits up to `within` for the process to exit by itself; its exit status, or an error
    /// (the gateway keeps running).
    pub fn wait_exit(&mut self, within: Duration) -> Result<ExitStatus, String> {
        let deadline = Instant::now() + within;
        while self.is_running() {
            if Instant::now() >= deadline {
                return Err(format!(
                    "{} still running {within:?} later; log:\n{}",
                    self.name,
                    self.log_tail(20)
                ));
            }
            thread::sleep(Duration::from_millis(10));
        }
        self.exit
            .ok_or_else(|| format!("{}: exit status unknown", self.name))
    }

    /// Sends SIGTERM and waits up to `within` for the process to exit; an error (after SIGKILL)
    /// if it does not.
    pub fn terminate(&mut self, within: Duration) -> Result<ExitStatus, String> {
        let Some(mut c) = self.child.take() else {
            return self
                .exit
                .ok_or_else(|| format!("{} was not running", self.name));
        };
        // SAFETY: kill(2) on our own child's pid, which is not reaped yet.
        unsafe {
            libc::kill(c.id() as libc::pid_t, libc::SIGTERM);
        }
        let deadline = Instant::now() + within;
        loop {
            match c.try_wait() {
                Ok(Some(st)) => {
                    self.exit = Some(st);
                    return Ok(st);
                }
                Ok(None) if Instant::now() < deadline => thread::sleep(Duration::from_millis(10)),
                _ => {
                    let _ = c.kill();
                    self.exit = c.wait().ok();
                    return Err(format!(
                        "{} did not exit within {within:?} of SIGTERM (killed); log:\n{}",
                        self.name,
                        self.log_tail(20)
                    ));
                }
            }
        }
    }

    /// Stops the gateway for a test's teardown: SIGTERM (which drains open sessions), a second
    /// SIGTERM after 1 s (which resets them at once), SIGKILL after 5 s. Returns the exit status.
    pub fn stop(&mut self) -> Option<ExitStatus> {
        if let Some(mut c) = self.child.take() {
            let start = Instant::now();
            let mut signals = 0;
            let st = loop {
                let due = match signals {
                    0 => Some(Duration::ZERO),
                    1 => Some(Duration::from_secs(1)),
                    _ => None,
                };
                if due.is_some_and(|d| start.elapsed() >= d) {
                    // SAFETY: kill(2) on our own child's pid, which is not reaped yet.
                    unsafe {
                        libc::kill(c.id() as libc::pid_t, libc::SIGTERM);
                    }
                    signals += 1;
                }
                match c.try_wait() {
                    Ok(Some(st)) => break Some(st),
                    Ok(None) if start.elapsed() < Duration::from_secs(5) => {
                        thread::sleep(Duration::from_millis(10))
                    }
                    _ => {
                        let _ = c.kill();
                        break c.wait().ok();
                    }
                }
            };
            self.exit = st;
        }
        self.exit
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        self.stop();
    }
}

// ---------------------------------------------------------------------------------------------
// A pair of gateways

/// What to start: gateway A (`gw-a`, dials) and gateway B (`gw-b`, accepts).
#[derive(Debug, Clone)]
pub struct PairSpec {
    pub data_flows: u32,
    /// Ingress listeners on A, one per target (`IP:PORT`); each binds a free loopback port.
    pub ingress: Vec<String>,
    /// B's egress allowlist.
    pub egress_allow: Vec<String>,
    /// Replace the public key A expects of B (to test a wrong key).
    pub a_peer_key: Option<String>,
    /// Replace the public key B expects of A.
    pub b_peer_key: Option<String>,
    pub session_window_bytes: Option<u64>,
    pub global_buffer_bytes: Option<u64>,
    /// Extra `key = value` lines for A's `[limits]` table only (where A's limits differ from
    /// B's, e.g. `global_buffer_bytes`: then leave [`PairSpec::global_buffer_bytes`] unset).
    pub a_limits_extra: Vec<String>,
    /// The same for B.
    pub b_limits_extra: Vec<String>,
    /// Extra `[wan]` lines for A only, after [`PairSpec::wan_extra`] (e.g. `compression`).
    pub a_wan_extra: Vec<String>,
    /// The same for B.
    pub b_wan_extra: Vec<String>,
    /// Pre-shared key file contents for A and B (written mode 0600 as `gw-X.psk`).
    pub psk_a: Option<String>,
    pub psk_b: Option<String>,
    /// Extra `key = value` lines for both gateways' `[wan]` tables.
    pub wan_extra: Vec<String>,
    /// Where A dials (`peer.connect`) instead of B's `tunnel_listen`, e.g. a proxy in between.
    pub a_connect: Option<SocketAddr>,
    /// Run A and B in network namespaces (see [`netns::Wan::placement`]); `None`: loopback.
    pub netns: Option<netns::Placement>,
    /// Give both gateways a metrics endpoint on a free loopback port (`[metrics] bind`).
    pub metrics: bool,
    /// `gateway.drain_timeout_secs` of both gateways; `None`: the gateway's default.
    pub drain_timeout_secs: Option<u64>,
}

impl Default for PairSpec {
    fn default() -> Self {
        PairSpec {
            data_flows: 4,
            ingress: Vec::new(),
            egress_allow: Vec::new(),
            a_peer_key: None,
            b_peer_key: None,
            session_window_bytes: None,
            global_buffer_bytes: None,
            a_limits_extra: Vec::new(),
            b_limits_extra: Vec::new(),
            a_wan_extra: Vec::new(),
            b_wan_extra: Vec::new(),
            psk_a: None,
            psk_b: None,
            wan_extra: Vec::new(),
            a_connect: None,
            netns: None,
            metrics: false,
            drain_timeout_secs: None,
        }
    }
}

impl PairSpec {
    /// A spec with `data_flows` whose A forwards one ingress to `target`, which B allows.
    pub fn to_target(data_flows: u32, target: SocketAddr) -> PairSpec {
        PairSpec {
            data_flows,
            ingress: vec![target.to_string()],
            egress_allow: vec![target.to_string()],
            ..PairSpec::default()
        }
    }
}

/// Two running gateways in a temporary directory. A has the ingress listeners and dials B's
/// `tunnel_listen`; B has the egress allowlist.
///
/// On drop both are stopped; if the thread is panicking their log tails are printed, and
/// `LMAS_KEEP_TMP=1` keeps the directory.
pub struct Pair {
    pub dir: PathBuf,
    pub a: Gateway,
    pub b: Gateway,
    pub a_config: GatewayConfig,
    pub b_config: GatewayConfig,
    pub tunnel: SocketAddr,
    /// The ingress listeners on A, in the order of [`PairSpec::ingress`].
    pub ingress: Vec<SocketAddr>,
    _tmp: Option<tempfile::TempDir>,
}

/// A new temporary directory (kept if `LMAS_KEEP_TMP` is set).
pub fn temp_dir(prefix: &str) -> (PathBuf, Option<tempfile::TempDir>) {
    let t = tempfile::Builder::new()
        .prefix(prefix)
        .tempdir()
        .expect("create temp dir");
    if std::env::var_os("LMAS_KEEP_TMP").is_some() {
        let p = t.keep();
        eprintln!("keeping {}", p.display());
        (p, None)
    } else {
        (t.path().to_path_buf(), Some(t))
    }
}

impl Pair {
    /// Makes keys and configs and starts B then A (A once B's tunnel port listens). Does not wait
    /// for the tunnel: see [`Pair::wait_up`].
    pub fn launch(spec: &PairSpec) -> Pair {
        let (dir, tmp) = temp_dir("lmas-e2e-");
        let key_a = keygen(&dir.join("gw-a.key"));
        let key_b = keygen(&dir.join("gw-b.key"));
        let tunnel = match &spec.netns {
            Some(p) => SocketAddr::new(p.tunnel_ip, free_port()),
            None => free_addr(),
        };
        let write_psk = |name: &str, text: &Option<String>| -> Option<String> {
            let text = text.as_ref()?;
            let path = dir.join(name);
            fs::write(&path, format!("{text}\n")).expect("write psk file");
            fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o600))
                .expect("chmod psk file");
            Some(name.to_string())
        };
        let psk_a = write_psk("gw-a.psk", &spec.psk_a);
        let psk_b = write_psk("gw-b.psk", &spec.psk_b);
        let gateway_extra: Vec<String> = spec
            .drain_timeout_secs
            .map(|s| format!("drain_timeout_secs = {s}"))
            .into_iter()
            .collect();
        let metrics = || spec.metrics.then(free_addr);
        let ingress: Vec<Ingress> = spec
            .ingress
            .iter()
            .map(|t| Ingress {
                bind: free_addr(),
                target: t.clone(),
            })
            .collect();
        let a_config = GatewayConfig {
            name: "gw-a".into(),
            private_key_file: "gw-a.key".into(),
            psk_file: psk_a,
            tunnel_listen: None,
            peer_name: "gw-b".into(),
            peer_public_key: spec.a_peer_key.clone().unwrap_or(key_b.public.clone()),
            peer_connect: Some(spec.a_connect.unwrap_or(tunnel)),
            data_flows: spec.data_flows,
            congestion: None,
            ingress: ingress.clone(),
            egress_allow: Vec::new(),
            session_window_bytes: spec.session_window_bytes,
            global_buffer_bytes: spec.global_buffer_bytes,
            limits_extra: spec.a_limits_extra.clone(),
            wan_extra: [&spec.wan_extra[..], &spec.a_wan_extra[..]].concat(),
            admin_socket: Some(dir.join("gw-a.sock")),
            gateway_extra: gateway_extra.clone(),
            metrics_bind: metrics(),
        };
        let b_config = GatewayConfig {
            name: "gw-b".into(),
            private_key_file: "gw-b.key".into(),
            psk_file: psk_b,
            tunnel_listen: Some(tunnel),
            peer_name: "gw-a".into(),
            peer_public_key: spec.b_peer_key.clone().unwrap_or(key_a.public.clone()),
            peer_connect: None,
            data_flows: spec.data_flows,
            congestion: None,
            ingress: Vec::new(),
            egress_allow: spec.egress_allow.clone(),
            session_window_bytes: spec.session_window_bytes,
            global_buffer_bytes: spec.global_buffer_bytes,
            limits_extra: spec.b_limits_extra.clone(),
            wan_extra: [&spec.wan_extra[..], &spec.b_wan_extra[..]].concat(),
            admin_socket: Some(dir.join("gw-b.sock")),
            gateway_extra,
            metrics_bind: metrics(),
        };
        let a_path = dir.join("gw-a.toml");
        let b_path = dir.join("gw-b.toml");
        fs::write(&a_path, a_config.to_toml()).expect("write gw-a.toml");
        fs::write(&b_path, b_config.to_toml()).expect("write gw-b.toml");
        let (ns_a, ns_b) = match &spec.netns {
            Some(p) => (Some(p.a.clone()), Some(p.b.clone())),
            None => (None, None),
        };
        let mut b = Gateway::spawn_in("gw-b", &b_path, &dir.join("gw-b.log"), ns_b);
        let b_pid = b.pid().filter(|_| spec.netns.is_some());
        if let Err(e) = wait_listening_in(b_pid, tunnel.port(), TUNNEL_UP_TIMEOUT) {
            let running = b.is_running();
            panic!(
                "gw-b: {e} (tunnel_listen = {tunnel}, running: {running}); log:\n{}",
                b.log_tail(40)
            );
        }
        let a = Gateway::spawn_in("gw-a", &a_path, &dir.join("gw-a.log"), ns_a);
        Pair {
            dir,
            a,
            b,
            a_config,
            b_config,
            tunnel,
            ingress: ingress.iter().map(|i| i.bind).collect(),
            _tmp: tmp,
        }
    }

    /// Waits for `tunnel up` on both gateways and `listening on` for every ingress; panics with
    /// both logs otherwise.
    pub fn wait_up(&mut self) {
        let r = self
            .a
            .wait_for_log("tunnel up: peer gw-b", TUNNEL_UP_TIMEOUT)
            .and_then(|_| {
                self.b
                    .wait_for_log("tunnel up: peer gw-a", TUNNEL_UP_TIMEOUT)
            })
            .and_then(|_| {
                for i in &self.ingress {
                    self.a
                        .wait_for_log(&format!("listening on {i}"), TUNNEL_UP_TIMEOUT)?;
                }
                Ok(())
            });
        if let Err(e) = r {
            panic!("{e}\n--- other gateway logs:\n{}", self.logs());
        }
    }

    /// [`Pair::launch`] then [`Pair::wait_up`].
    pub fn start(spec: &PairSpec) -> Pair {
        let mut p = Pair::launch(spec);
        p.wait_up();
        p
    }

    /// Both logs, labelled.
    pub fn logs(&self) -> String {
        format!(
            "--- gw-a ({}):\n{}\n--- gw-b ({}):\n{}",
            self.a.log_path.display(),
            self.a.log_tail(60),
            self.b.log_path.display(),
            self.b.log_tail(60)
        )
    }

    /// Panics (with both logs) unless both gateways still run.
    pub fn assert_running(&mut self) {
        let a = self.a.is_running();
        let b = self.b.is_running();
        assert!(
            a && b,
            "a gateway died (gw-a running: {a}, gw-b running: {b})\n{}",
            self.logs()
        );
    }
}

impl Drop for Pair {
    fn drop(&mut self) {
        self.a.stop();
        self.b.stop();
        if thread::panicking() {
            eprintln!("gateway logs in {}:\n{}", self.dir.display(), self.logs());
        }
    }
}

/// Parses a size: plain bytes, or with a binary suffix `K`, `M`, `G`, `T` (optionally `iB`/`B`).
pub fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, suffix) = t.split_at(split);
    let n: u64 = num
        .parse()
        .map_err(|_| format!("not a size: {s:?} (use e.g. 1048576, 512M, 1G)"))?;
    let mult: u64 = match suffix.trim().to_ascii_uppercase().as_str() {
        "" | "B" => 1,
        "K" | "KB" | "KIB" => 1 << 10,
        "M" | "MB" | "MIB" => 1 << 20,
        "G" | "GB" | "GIB" => 1 << 30,
        "T" | "TB" | "TIB" => 1 << 40,
        _ => return Err(format!("not a size: {s:?} (use e.g. 1048576, 512M, 1G)")),
    };
    n.checked_mul(mult)
        .ok_or_else(|| format!("size too large: {s:?}"))
}

// ---------------------------------------------------------------------------
// Compression figures in `lmas status --json`

/// The figures of `lmas status --json` in a session's or the tunnel's `compression`.
pub const PACKING_FIGURES: [&str; 6] = [
    "bytes_in",
    "bytes_out",
    "frames_packed",
    "frames_skipped",
    "pack_ns",
    "unpack_ns",
];

/// One figure of such a `compression` object.
pub fn packing_figure(v: &serde_json::Value, k: &str) -> u64 {
    v[k].as_u64()
        .unwrap_or_else(|| panic!("no figure {k} in {v:#}"))
}

/// Checks that the sessions' figures add up to the tunnel's, and the tunnel's (one tunnel
/// since start) to the gateway's `compression_*` counters. Returns the sessions by target.
pub fn packing_adds_up(
    st: &serde_json::Value,
    who: &str,
) -> std::collections::BTreeMap<String, serde_json::Value> {
    let t = &st["tunnel"];
    let sessions = t["sessions"].as_array().expect("sessions");
    for k in PACKING_FIGURES {
        let sum: u64 = sessions
            .iter()
            .map(|s| packing_figure(&s["compression"], k))
            .sum();
        assert_eq!(
            sum,
            packing_figure(&t["compression"], k),
            "{who}: sessions' {k}: {st:#}"
        );
        let counter = st["counters"][format!("compression_{k}")].as_u64();
        assert_eq!(counter, Some(sum), "{who}: the gateway's {k}: {st:#}");
    }
    sessions
        .iter()
        .map(|s| {
            (
                s["target"].as_str().unwrap().to_string(),
                s["compression"].clone(),
            )
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A command that outlives its deadline takes its whole process group with it: a
    /// script's gateways must not go on polling after the test gave up on the script.
    #[test]
    fn a_timed_out_command_leaves_no_children() {
        let dir = tempfile::tempdir().unwrap();
        let pid_file = dir.path().join("child.pid");
        let mut cmd = Command::new("bash");
        cmd.arg("-c").arg(format!(
            "sleep 300 & echo $! > {}; wait",
            pid_file.display()
        ));
        let err = run_with_timeout(&mut cmd, Duration::from_secs(1)).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::TimedOut);
        let pid: i32 = fs::read_to_string(&pid_file)
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        // The group was killed; the orphan, if any, is reaped by init shortly.
        let gone = (0..100).any(|_| {
            // Gone, or a zombie waiting for init to reap it.
            let alive = fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
                !stat
                    .rsplit(')')
                    .next()
                    .unwrap_or("")
                    .trim_start()
                    .starts_with('Z')
            });
            if alive {
                thread::sleep(Duration::from_millis(20));
            }
            !alive
        });
        if !gone {
            // SAFETY: the test's own child, killed so that it does not outlive the test.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
        assert!(gone, "the timed-out command's child {pid} still runs");
    }

    #[test]
    fn datagen_is_deterministic_and_chunking_independent() {
        let mut a = vec![0u8; 4096 + 5];
        DataGen::new(7).fill(&mut a);
        let mut b = vec![0u8; 4096 + 5];
        let mut g = DataGen::new(7);
        g.fill(&mut b[..1024]);
        g.fill(&mut b[1024..4096]);
        g.fill(&mut b[4096..]);
        assert_eq!(a, b);
        let mut c = vec![0u8; 4096 + 5];
        DataGen::new(8).fill(&mut c);
        assert_ne!(a, c);
    }

    #[test]
    fn expected_hash_matches_send_all() {
        for len in [0u64, 1, 7, 8, 9, IO_BUF as u64 + 3] {
            let mut v = Vec::new();
            let sent = send_all(&mut v, len, 42).unwrap();
            assert_eq!(v.len() as u64, len);
            assert_eq!(sent.sha256, hex(&Sha256::digest(&v)));
            assert_eq!(sent.sha256, expected_sha256(len, 42));
        }
    }

    #[test]
    fn direct_send_to_sink() {
        let sink = Sink::start();
        for (len, seed) in [(0u64, 1u64), (1, 2), (3 * IO_BUF as u64 + 11, 3)] {
            let sent = send(sink.addr(), len, seed).unwrap();
            let got = sink.recv(Duration::from_secs(30));
            assert_eq!(got.bytes, len);
            assert_eq!(got.sha256, sent.sha256);
        }
    }

    #[test]
    fn duplex_direct() {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        let server = thread::spawn(move || {
            let (s, _) = l.accept().unwrap();
            set_timeouts(&s).unwrap();
            duplex(&s, 5 << 20, 2).unwrap()
        });
        let c = connect(addr).unwrap();
        let (c_sent, c_recv) = duplex(&c, 3 << 20, 1).unwrap();
        let (s_sent, s_recv) = server.join().unwrap();
        assert_eq!(c_sent.sha256, s_recv.sha256);
        assert_eq!(s_sent.sha256, c_recv.sha256);
    }

    #[test]
    fn listening_probe() {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        assert!(port_is_listening(port));
        drop(l);
        assert!(!port_is_listening(port));
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_size("1G").unwrap(), 1 << 30);
        assert_eq!(parse_size("512MiB").unwrap(), 512 << 20);
        assert_eq!(parse_size("12345").unwrap(), 12345);
        assert!(parse_size("x").is_err());
        assert!(parse_size("1Q").is_err());
    }

    #[test]
    fn config_renders() {
        let c = GatewayConfig {
            name: "gw-a".into(),
            private_key_file: "gw-a.key".into(),
            psk_file: None,
            tunnel_listen: None,
            peer_name: "gw-b".into(),
            peer_public_key: "AAAA".into(),
            peer_connect: Some("127.0.0.1:7700".parse().unwrap()),
            data_flows: 8,
            congestion: None,
            ingress: vec![Ingress {
                bind: "127.0.0.1:6000".parse().unwrap(),
                target: "127.0.0.1:5000".into(),
            }],
            egress_allow: vec!["127.0.0.1:5000".into()],
            session_window_bytes: None,
            global_buffer_bytes: None,
            limits_extra: vec!["max_sessions = 2000".into()],
            wan_extra: Vec::new(),
            admin_socket: None,
            gateway_extra: vec!["drain_timeout_secs = 5".into()],
            metrics_bind: Some("127.0.0.1:9108".parse().unwrap()),
        };
        let t = c.to_toml();
        assert!(t.contains("connect = \"127.0.0.1:7700\""), "{t}");
        assert!(
            t.contains("[[ingress]]\nmode = \"listen\"\nbind = \"127.0.0.1:6000\""),
            "{t}"
        );
        assert!(t.contains("allow = [\"127.0.0.1:5000\"]"), "{t}");
        assert!(
            t.contains(
                "name = \"gw-a\"\nprivate_key_file = \"gw-a.key\"\ndrain_timeout_secs = 5\n"
            ),
            "{t}"
        );
        assert!(t.contains("[limits]\nmax_sessions = 2000\n"), "{t}");
        assert!(t.ends_with("[metrics]\nbind = \"127.0.0.1:9108\"\n"), "{t}");
    }
}

//! Test data: deterministic pseudo-random bytes, payload kinds (random, text, guest-like), hashed senders and receivers.

use super::*;

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
    pub(crate) fn next_u64(&mut self) -> u64 {
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
    let mut gen = PayloadGen::new(kind, seed);
    write_stream(w, len, deadline, IO_BUF, |b| gen.fill(b))
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
    let mut gen = DataGen::new(seed);
    let buf_len = IO_BUF.min(len.max(8) as usize);
    write_stream(w, len, deadline, buf_len, |b| gen.fill(b))
}

/// Writes `len` bytes that `fill` makes, `buf_len` at a time, hashing them; stops early, at a
/// buffer boundary, once `deadline` has passed.
fn write_stream<W: Write>(
    w: &mut W,
    len: u64,
    deadline: Option<Instant>,
    buf_len: usize,
    mut fill: impl FnMut(&mut [u8]),
) -> io::Result<Sent> {
    let start = Instant::now();
    let mut buf = vec![0u8; buf_len];
    let mut h = Sha256::new();
    let mut left = len;
    while left > 0 {
        if deadline.is_some_and(|d| Instant::now() >= d) {
            break;
        }
        let n = left.min(buf.len() as u64) as usize;
        fill(&mut buf[..n]);
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

    use crate::flood::sockaddr;
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

/// Closes `s` with a reset (RST), as a client that gives up does, instead of a FIN.
pub fn abort(s: TcpStream) {
    use std::os::fd::AsRawFd;
    let linger = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    // SAFETY: a valid socket and a `linger` of the size given.
    unsafe {
        libc::setsockopt(
            s.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            &linger as *const _ as *const libc::c_void,
            std::mem::size_of::<libc::linger>() as libc::socklen_t,
        );
    }
    drop(s);
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

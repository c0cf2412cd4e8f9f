//! Many source connections driven from one thread with poll(2): each sends its [`DataGen`]
//! stream, half-closes and waits for the target's EOF (the 1000-session tests).

use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, TcpStream};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use sha2::{Digest, Sha256};

use crate::{hex, DataGen};

/// poll(2) on `fds`; EINTR is not an error.
pub fn poll(fds: &mut [libc::pollfd], timeout_ms: i32) {
    // SAFETY: `fds` is a valid, exclusively borrowed array of pollfd for the call's duration.
    let r = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, timeout_ms) };
    if r < 0 {
        let e = std::io::Error::last_os_error();
        assert_eq!(e.kind(), ErrorKind::Interrupted, "poll: {e}");
    }
}

/// One source connection (non-blocking).
pub struct Source {
    s: TcpStream,
    seed: u64,
    gen: DataGen,
    hash: Sha256,
    left: u64,
    buf: Vec<u8>,
    pos: usize,
    /// Sent everything and shut down the write side; waiting for the target's EOF.
    sent: bool,
    done: bool,
}

impl Source {
    /// A connection (set non-blocking by the caller) that will send `len` bytes of seed `seed`.
    pub fn new(s: TcpStream, seed: u64, len: u64) -> Source {
        Source {
            s,
            seed,
            gen: DataGen::new(seed),
            hash: Sha256::new(),
            left: len,
            buf: Vec::new(),
            pos: 0,
            sent: false,
            done: false,
        }
    }
}

/// Sends each connection's `len` bytes (the [`DataGen`] stream of its seed), half-closes, waits
/// for the target's EOF; counts what it wrote in `progress`. Returns (seed, SHA-256 sent).
pub fn drive_sources(
    mut conns: Vec<Source>,
    progress: &AtomicU64,
    deadline: Instant,
) -> Result<Vec<(u64, String)>, String> {
    const CHUNK: u64 = 64 << 10;
    let mut results = Vec::new();
    while conns.iter().any(|c| !c.done) {
        if Instant::now() > deadline {
            let open = conns.iter().filter(|c| !c.done).count();
            let sending = conns.iter().filter(|c| !c.sent).count();
            return Err(format!(
                "{open} source connections unfinished at the deadline ({sending} still sending)"
            ));
        }
        let idx: Vec<usize> = (0..conns.len()).filter(|&i| !conns[i].done).collect();
        let mut fds: Vec<libc::pollfd> = idx
            .iter()
            .map(|&i| libc::pollfd {
                fd: conns[i].s.as_raw_fd(),
                events: if conns[i].sent {
                    libc::POLLIN
                } else {
                    libc::POLLOUT
                },
                revents: 0,
            })
            .collect();
        poll(&mut fds, 100);
        for (k, &i) in idx.iter().enumerate() {
            if fds[k].revents == 0 {
                continue;
            }
            let c = &mut conns[i];
            if !c.sent {
                loop {
                    if c.pos == c.buf.len() {
                        if c.left == 0 {
                            c.s.shutdown(Shutdown::Write)
                                .map_err(|e| format!("seed {}: shutdown: {e}", c.seed))?;
                            c.sent = true;
                            break;
                        }
                        let n = c.left.min(CHUNK) as usize;
                        c.buf.resize(n, 0);
                        c.gen.fill(&mut c.buf);
                        c.hash.update(&c.buf);
                        c.left -= n as u64;
                        c.pos = 0;
                    }
                    match c.s.write(&c.buf[c.pos..]) {
                        Ok(n) => {
                            c.pos += n;
                            progress.fetch_add(n as u64, Ordering::Relaxed);
                        }
                        Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                        Err(e) if e.kind() == ErrorKind::Interrupted => {}
                        Err(e) => return Err(format!("seed {}: send: {e}", c.seed)),
                    }
                }
            } else {
                let mut b = [0u8; 512];
                match c.s.read(&mut b) {
                    Ok(0) => {
                        c.done = true;
                        let h = std::mem::take(&mut c.hash);
                        results.push((c.seed, hex(&h.finalize())));
                    }
                    Ok(n) => {
                        return Err(format!("seed {}: the target sent {n} bytes back", c.seed))
                    }
                    Err(e)
                        if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::Interrupted) => {}
                    Err(e) => return Err(format!("seed {}: waiting for EOF: {e}", c.seed)),
                }
            }
        }
    }
    Ok(results)
}

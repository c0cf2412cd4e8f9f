//! Floods for the admission tests (issue 13 §2, §3): what an attacker on the path can send at a
//! gateway's port.
//!
//! - [`SynFlood`]: TCP SYNs from spoofed sources (a raw IPv4 socket, `IPPROTO_RAW`), each from a
//!   new random address of a prefix and a random port, at a steady rate. Nothing answers the
//!   SYN-ACKs: the test routes the prefix into a blackhole.
//! - [`ConnFlood`]: real TCP connections that complete the handshake and then say nothing (a
//!   slowloris), from every address of a prefix in turn, as many at once as asked; one the
//!   server closes is replaced at once by the next. The prefix must be local to the namespace
//!   (`ip route add local PREFIX dev lo`), so any address in it can be bound.
//!
//! Both run on a thread inside a network namespace and stop when dropped; their counters say
//! what they did. Both need root (raw sockets, binding foreign addresses).

use std::io;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use crate::netns::NetNs;

/// A small deterministic generator (xorshift64*): addresses and ports need not be good random.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
}

/// The one's-complement sum of `data` (RFC 1071), not yet folded or inverted.
fn sum16(data: &[u8], mut acc: u32) -> u32 {
    let mut chunks = data.chunks_exact(2);
    for c in &mut chunks {
        acc += u16::from_be_bytes([c[0], c[1]]) as u32;
    }
    if let [b] = chunks.remainder() {
        acc += (*b as u32) << 8;
    }
    acc
}

fn fold(mut acc: u32) -> u16 {
    while acc > 0xffff {
        acc = (acc & 0xffff) + (acc >> 16);
    }
    !(acc as u16)
}

/// An IPv4 packet carrying a TCP SYN (with an MSS option) from `src` to `dst`, checksums done.
pub fn syn_packet(src: SocketAddrV4, dst: SocketAddrV4, seq: u32, ip_id: u16) -> [u8; 44] {
    let mut p = [0u8; 44];
    // IPv4 header: version 4, 5 words; total length 44; don't fragment; TTL 64; TCP.
    p[0] = 0x45;
    p[2..4].copy_from_slice(&44u16.to_be_bytes());
    p[4..6].copy_from_slice(&ip_id.to_be_bytes());
    p[6] = 0x40;
    p[8] = 64;
    p[9] = 6;
    p[12..16].copy_from_slice(&src.ip().octets());
    p[16..20].copy_from_slice(&dst.ip().octets());
    let ip_sum = fold(sum16(&p[..20], 0));
    p[10..12].copy_from_slice(&ip_sum.to_be_bytes());
    // TCP header: 6 words (one option), SYN, window 64240, MSS 1460.
    let t = &mut p[20..];
    t[0..2].copy_from_slice(&src.port().to_be_bytes());
    t[2..4].copy_from_slice(&dst.port().to_be_bytes());
    t[4..8].copy_from_slice(&seq.to_be_bytes());
    t[12] = 6 << 4;
    t[13] = 0x02;
    t[14..16].copy_from_slice(&64240u16.to_be_bytes());
    t[20..24].copy_from_slice(&[2, 4, 0x05, 0xb4]);
    let mut pseudo = [0u8; 12];
    pseudo[0..4].copy_from_slice(&src.ip().octets());
    pseudo[4..8].copy_from_slice(&dst.ip().octets());
    pseudo[9] = 6;
    pseudo[10..12].copy_from_slice(&24u16.to_be_bytes());
    let tcp_sum = fold(sum16(&p[20..], sum16(&pseudo, 0)));
    p[36..38].copy_from_slice(&tcp_sum.to_be_bytes());
    p
}

pub(crate) fn sockaddr(a: SocketAddrV4) -> libc::sockaddr_in {
    libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: a.port().to_be(),
        sin_addr: libc::in_addr {
            s_addr: u32::from(*a.ip()).to_be(),
        },
        sin_zero: [0; 8],
    }
}

const SOCKADDR_LEN: libc::socklen_t = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;

/// An owned file descriptor (closed on drop).
struct Fd(libc::c_int);

impl Drop for Fd {
    fn drop(&mut self) {
        // SAFETY: we own the descriptor and close it once.
        unsafe {
            libc::close(self.0);
        }
    }
}

/// Spoofed SYNs at a steady rate until dropped.
pub struct SynFlood {
    stop: Arc<AtomicBool>,
    /// SYNs sent so far.
    pub sent: Arc<AtomicU64>,
    thread: Option<JoinHandle<io::Result<()>>>,
}

impl SynFlood {
    /// Starts sending, from inside `ns`, `rate` SYNs a second to `target`, each from a random
    /// address in `from/len` (never its first or last address) and a random port.
    pub fn start(
        ns: &NetNs,
        target: SocketAddrV4,
        from: (Ipv4Addr, u8),
        rate: u32,
    ) -> io::Result<SynFlood> {
        let stop = Arc::new(AtomicBool::new(false));
        let sent = Arc::new(AtomicU64::new(0));
        // Open the socket in the namespace first, so that an error surfaces here.
        let fd = ns.run(|| {
            // SAFETY: socket(2) with constant arguments; the result is checked.
            let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_RAW, libc::IPPROTO_RAW) };
            if fd < 0 {
                return Err(io::Error::last_os_error());
            }
            Ok(Fd(fd))
        })?;
        let (stop2, sent2) = (stop.clone(), sent.clone());
        let thread = thread::spawn(move || flood_syns(fd, target, from, rate, &stop2, &sent2));
        Ok(SynFlood {
            stop,
            sent,
            thread: Some(thread),
        })
    }

    /// Stops sending; an error if sending failed.
    pub fn stop(&mut self) -> io::Result<()> {
        self.stop.store(true, Ordering::Relaxed);
        match self.thread.take() {
            Some(t) => t
                .join()
                .unwrap_or_else(|_| Err(io::Error::other("SYN flood thread panicked"))),
            None => Ok(()),
        }
    }
}

impl Drop for SynFlood {
    fn drop(&mut self) {
        let _ = self.stop();
    }
}

fn flood_syns(
    fd: Fd,
    target: SocketAddrV4,
    (net, len): (Ipv4Addr, u8),
    rate: u32,
    stop: &AtomicBool,
    sent: &AtomicU64,
) -> io::Result<()> {
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15 ^ u64::from(u32::from(net)));
    let hosts = 1u64 << (32 - len as u32);
    let base = u32::from(net) & !(hosts as u32).wrapping_sub(1);
    let dst = sockaddr(target);
    let start = Instant::now();
    let mut n = 0u64;
    while !stop.load(Ordering::Relaxed) {
        // Keep to the rate: send what is due, then sleep a millisecond.
        let due = (start.elapsed().as_secs_f64() * rate as f64) as u64;
        while n < due {
            let r = rng.next();
            let host = 1 + (r % (hosts - 2)) as u32;
            let src =
                SocketAddrV4::new(Ipv4Addr::from(base + host), 1024 + (r >> 32) as u16 % 60000);
            let p = syn_packet(src, target, (r >> 16) as u32, r as u16);
            // SAFETY: sendto on our raw socket with a valid buffer and address.
            let rc = unsafe {
                libc::sendto(
                    fd.0,
                    p.as_ptr() as *const libc::c_void,
                    p.len(),
                    0,
                    &dst as *const _ as *const libc::sockaddr,
                    SOCKADDR_LEN,
                )
            };
            if rc < 0 {
                let e = io::Error::last_os_error();
                // A full queue is not an error for a flood: the next tick tries again.
                if e.raw_os_error() != Some(libc::ENOBUFS) {
                    return Err(io::Error::new(e.kind(), format!("sendto {target}: {e}")));
                }
            }
            n += 1;
            sent.fetch_add(1, Ordering::Relaxed);
        }
        thread::sleep(Duration::from_millis(1));
    }
    Ok(())
}

/// Silent connections from a whole prefix, kept up until dropped.
pub struct ConnFlood {
    stop: Arc<AtomicBool>,
    /// Connections that completed the TCP handshake.
    pub connected: Arc<AtomicU64>,
    /// Of those, how many the server closed or reset.
    pub closed: Arc<AtomicU64>,
    thread: Option<JoinHandle<io::Result<()>>>,
}

impl ConnFlood {
    /// Starts keeping `parallel` silent connections to `target` open from inside `ns`, each from
    /// the next address of `from/24` (.1 to .254).
    pub fn start(
        ns: &NetNs,
        target: SocketAddrV4,
        from: Ipv4Addr,
        parallel: usize,
    ) -> io::Result<ConnFlood> {
        let stop = Arc::new(AtomicBool::new(false));
        let connected = Arc::new(AtomicU64::new(0));
        let closed = Arc::new(AtomicU64::new(0));
        let (s, c, d) = (stop.clone(), connected.clone(), closed.clone());
        let thread = ns.spawn(move || flood_conns(target, from, parallel, &s, &c, &d));
        Ok(ConnFlood {
            stop,
            connected,
            closed,
            thread: Some(thread),
        })
    }

    pub fn stop(&mut self) -> io::Result<()> {
        self.stop.store(true, Ordering::Relaxed);
        match self.thread.take() {
            Some(t) => t
                .join()
                .unwrap_or_else(|_| Err(io::Error::other("connection flood thread panicked"))),
            None => Ok(()),
        }
    }
}

impl Drop for ConnFlood {
    fn drop(&mut self) {
        let _ = self.stop();
    }
}

/// One flood connection: its descriptor and whether the handshake completed.
struct Slot {
    fd: Fd,
    up: bool,
}

/// A non-blocking connect from `from` to `to`.
fn start_connect(from: Ipv4Addr, to: SocketAddrV4) -> io::Result<Fd> {
    // SAFETY: plain socket calls on a descriptor we own (closed by `Fd` on every path); the
    // sockaddr structs outlive the calls.
    unsafe {
        let fd = libc::socket(
            libc::AF_INET,
            libc::SOCK_STREAM | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
            0,
        );
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        let fd = Fd(fd);
        // Close with RST: no TIME_WAIT pile-up on our side, nothing lingers.
        let linger = libc::linger {
            l_onoff: 1,
            l_linger: 0,
        };
        libc::setsockopt(
            fd.0,
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            &linger as *const _ as *const libc::c_void,
            std::mem::size_of::<libc::linger>() as libc::socklen_t,
        );
        let local = sockaddr(SocketAddrV4::new(from, 0));
        if libc::bind(
            fd.0,
            &local as *const _ as *const libc::sockaddr,
            SOCKADDR_LEN,
        ) != 0
        {
            let e = io::Error::last_os_error();
            return Err(io::Error::new(e.kind(), format!("bind {from}: {e}")));
        }
        let remote = sockaddr(to);
        if libc::connect(
            fd.0,
            &remote as *const _ as *const libc::sockaddr,
            SOCKADDR_LEN,
        ) != 0
        {
            let e = io::Error::last_os_error();
            if e.raw_os_error() != Some(libc::EINPROGRESS) {
                return Err(e);
            }
        }
        Ok(fd)
    }
}

fn flood_conns(
    target: SocketAddrV4,
    from: Ipv4Addr,
    parallel: usize,
    stop: &AtomicBool,
    connected: &AtomicU64,
    closed: &AtomicU64,
) -> io::Result<()> {
    let base = u32::from(from) & 0xffff_ff00;
    let mut next_host = 0u32;
    let mut next_addr = || {
        next_host = next_host % 254 + 1;
        Ipv4Addr::from(base + next_host)
    };
    let mut slots: Vec<Option<Slot>> = (0..parallel).map(|_| None).collect();
    let mut buf = [0u8; 512];
    while !stop.load(Ordering::Relaxed) {
        for slot in slots.iter_mut().filter(|s| s.is_none()) {
            // A refused or failed connect is retried on the next round.
            if let Ok(fd) = start_connect(next_addr(), target) {
                *slot = Some(Slot { fd, up: false });
            }
        }
        let mut pfds: Vec<libc::pollfd> = slots
            .iter()
            .map(|s| libc::pollfd {
                fd: s.as_ref().map_or(-1, |s| s.fd.0),
                events: if s.as_ref().is_some_and(|s| s.up) {
                    libc::POLLIN
                } else {
                    libc::POLLOUT
                },
                revents: 0,
            })
            .collect();
        // SAFETY: poll(2) on a valid array of pollfd of the given length.
        let n = unsafe { libc::poll(pfds.as_mut_ptr(), pfds.len() as libc::nfds_t, 20) };
        if n <= 0 {
            continue;
        }
        for (slot, p) in slots.iter_mut().zip(&pfds) {
            let Some(s) = slot else { continue };
            if p.revents == 0 {
                continue;
            }
            if !s.up {
                let mut err: libc::c_int = 0;
                let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
                // SAFETY: getsockopt into a c_int of the stated length.
                unsafe {
                    libc::getsockopt(
                        s.fd.0,
                        libc::SOL_SOCKET,
                        libc::SO_ERROR,
                        &mut err as *mut _ as *mut libc::c_void,
                        &mut len,
                    );
                }
                if err == 0 && p.revents & libc::POLLOUT != 0 {
                    s.up = true;
                    connected.fetch_add(1, Ordering::Relaxed);
                } else {
                    *slot = None;
                }
                continue;
            }
            // Readable: the server closed it (or sent something, which ours never expects).
            // SAFETY: read(2) into our buffer of the stated length.
            let r = unsafe { libc::read(s.fd.0, buf.as_mut_ptr() as *mut libc::c_void, buf.len()) };
            if r <= 0 {
                closed.fetch_add(1, Ordering::Relaxed);
                *slot = None;
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_syn_packet_checksums_to_zero() {
        let p = syn_packet(
            "10.64.1.2:4321".parse().unwrap(),
            "10.1.2.3:7700".parse().unwrap(),
            0x1234_5678,
            7,
        );
        assert_eq!(fold(sum16(&p[..20], 0)), 0, "IPv4 header checksum");
        let mut pseudo = [0u8; 12];
        pseudo[0..4].copy_from_slice(&p[12..16]);
        pseudo[4..8].copy_from_slice(&p[16..20]);
        pseudo[9] = 6;
        pseudo[10..12].copy_from_slice(&24u16.to_be_bytes());
        assert_eq!(fold(sum16(&p[20..], sum16(&pseudo, 0))), 0, "TCP checksum");
        assert_eq!(p[33], 0x02, "SYN only");
    }
}

//! A minimal NFQUEUE client speaking nfnetlink directly (no libnetfilter_queue).
//!
//! Only what the delay line needs: bind queues, copy mode "metadata only" (the packet bytes
//! never leave the kernel), GSO packets queued whole, a large kernel queue, batched receive
//! (`recvmmsg`) and **batch verdicts** (`NFQNL_MSG_VERDICT_BATCH` accepts every packet of a queue
//! whose id is ≤ the given id, so one message releases a whole run of packets).
//!
//! Message parsing is safe code over byte slices; the `unsafe` here is limited to the socket
//! system calls.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

const NETLINK_NETFILTER: libc::c_int = 12;
const NFNL_SUBSYS_QUEUE: u16 = 3;
const NFQNL_MSG_PACKET: u16 = 0;
const NFQNL_MSG_CONFIG: u16 = 2;
const NFQNL_MSG_VERDICT_BATCH: u16 = 3;

const NFQA_PACKET_HDR: u16 = 1;
const NFQA_VERDICT_HDR: u16 = 2;
const NFQA_CFG_CMD: u16 = 1;
const NFQA_CFG_PARAMS: u16 = 2;
const NFQA_CFG_QUEUE_MAXLEN: u16 = 3;
const NFQA_CFG_MASK: u16 = 4;
const NFQA_CFG_FLAGS: u16 = 5;

const NFQNL_CFG_CMD_BIND: u8 = 1;
const NFQNL_CFG_CMD_UNBIND: u8 = 2;
const NFQNL_COPY_META: u8 = 1;
const NFQA_CFG_F_GSO: u32 = 1 << 2;

const NF_ACCEPT: u32 = 1;

const NLMSG_HDRLEN: usize = 16;
const NLMSG_ERROR: u16 = 2;
const NLMSG_DONE: u16 = 3;
const NLMSG_MIN_TYPE: u16 = 0x10;

/// Packets handed to the daemon by one `recv_batch` call at most.
pub const BATCH: usize = 64;
const SLOT: usize = 1024;

fn align4(n: usize) -> usize {
    (n + 3) & !3
}

/// One queued packet as reported by the kernel (metadata only).
#[derive(Debug, Clone, Copy)]
pub struct Packet {
    pub queue: u16,
    pub id: u32,
}

/// Builds one nfnetlink message for the queue subsystem.
struct Msg {
    buf: Vec<u8>,
}

impl Msg {
    fn new(msg_type: u16, flags: u16, queue: u16) -> Msg {
        let mut buf = Vec::with_capacity(64);
        buf.extend_from_slice(&0u32.to_ne_bytes()); // nlmsg_len, patched in finish()
        buf.extend_from_slice(&((NFNL_SUBSYS_QUEUE << 8) | msg_type).to_ne_bytes());
        buf.extend_from_slice(&(libc::NLM_F_REQUEST as u16 | flags).to_ne_bytes());
        buf.extend_from_slice(&0u32.to_ne_bytes()); // seq
        buf.extend_from_slice(&0u32.to_ne_bytes()); // portid
                                                    // struct nfgenmsg: family, version, res_id (big endian queue number)
        buf.push(libc::AF_UNSPEC as u8);
        buf.push(0);
        buf.extend_from_slice(&queue.to_be_bytes());
        Msg { buf }
    }

    fn attr(mut self, ty: u16, payload: &[u8]) -> Msg {
        let len = 4 + payload.len();
        self.buf.extend_from_slice(&(len as u16).to_ne_bytes());
        self.buf.extend_from_slice(&ty.to_ne_bytes());
        self.buf.extend_from_slice(payload);
        self.buf.resize(align4(self.buf.len()), 0);
        self
    }

    fn finish(mut self) -> Vec<u8> {
        let len = self.buf.len() as u32;
        self.buf[0..4].copy_from_slice(&len.to_ne_bytes());
        self.buf
    }
}

/// A netlink socket bound to one or more NFQUEUE queues.
pub struct NfQueue {
    fd: OwnedFd,
    bufs: Vec<u8>,
}

impl AsRawFd for NfQueue {
    fn as_raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }
}

impl NfQueue {
    /// Opens the netfilter netlink socket with a large receive buffer.
    pub fn open(rcvbuf: usize) -> io::Result<NfQueue> {
        // SAFETY: plain socket(2) call; the result is checked before use.
        let fd = unsafe {
            libc::socket(
                libc::AF_NETLINK,
                libc::SOCK_RAW | libc::SOCK_CLOEXEC,
                NETLINK_NETFILTER,
            )
        };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: fd is a freshly created, valid descriptor that nothing else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        let q = NfQueue {
            fd,
            bufs: vec![0u8; BATCH * SLOT],
        };
        // SAFETY: sockaddr_nl is plain data; all-zero is a valid value (kernel assigns portid).
        let mut addr: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
        addr.nl_family = libc::AF_NETLINK as u16;
        // SAFETY: addr is a valid sockaddr_nl and the length matches it.
        let rc = unsafe {
            libc::bind(
                q.fd.as_raw_fd(),
                &addr as *const libc::sockaddr_nl as *const libc::sockaddr,
                std::mem::size_of::<libc::sockaddr_nl>() as libc::socklen_t,
            )
        };
        if rc < 0 {
            return Err(io::Error::last_os_error());
        }
        // Bigger than rmem_max needs SO_RCVBUFFORCE (we are root); fall back quietly.
        let size = rcvbuf as libc::c_int;
        if q.setsockopt(libc::SOL_SOCKET, libc::SO_RCVBUFFORCE, size)
            .is_err()
        {
            q.setsockopt(libc::SOL_SOCKET, libc::SO_RCVBUF, size)?;
        }
        // A full socket buffer makes the kernel drop the packet (counted as user_dropped in
        // /proc/net/netfilter/nfnetlink_queue); do not also report ENOBUFS on recv.
        q.setsockopt(libc::SOL_NETLINK, libc::NETLINK_NO_ENOBUFS, 1)?;
        Ok(q)
    }

    fn setsockopt(
        &self,
        level: libc::c_int,
        name: libc::c_int,
        val: libc::c_int,
    ) -> io::Result<()> {
        // SAFETY: val lives for the call and the length is that of a c_int.
        let rc = unsafe {
            libc::setsockopt(
                self.fd.as_raw_fd(),
                level,
                name,
                &val as *const libc::c_int as *const libc::c_void,
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
        if rc < 0 {
            Err(io::Error::last_os_error())
        } else {
            Ok(())
        }
    }

    fn send(&self, msg: &[u8]) -> io::Result<()> {
        // SAFETY: zeroed sockaddr_nl addresses the kernel (portid 0).
        let mut addr: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
        addr.nl_family = libc::AF_NETLINK as u16;
        // SAFETY: msg is a valid buffer of msg.len() bytes; addr as above.
        let rc = unsafe {
            libc::sendto(
                self.fd.as_raw_fd(),
                msg.as_ptr() as *const libc::c_void,
                msg.len(),
                0,
                &addr as *const libc::sockaddr_nl as *const libc::sockaddr,
                std::mem::size_of::<libc::sockaddr_nl>() as libc::socklen_t,
            )
        };
        if rc < 0 {
            Err(io::Error::last_os_error())
        } else {
            Ok(())
        }
    }

    /// Sends a config request and waits for its ACK (packet messages seen meanwhile are
    /// ignored: a later batch verdict releases them anyway).
    fn config(&mut self, msg: Msg) -> io::Result<()> {
        self.send(&msg.finish())?;
        let mut buf = vec![0u8; 8192];
        loop {
            // SAFETY: buf is a valid writable buffer of buf.len() bytes.
            let n = unsafe {
                libc::recv(
                    self.fd.as_raw_fd(),
                    buf.as_mut_ptr() as *mut libc::c_void,
                    buf.len(),
                    0,
                )
            };
            if n < 0 {
                let e = io::Error::last_os_error();
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(e);
            }
            let mut rest = &buf[..n as usize];
            while rest.len() >= NLMSG_HDRLEN {
                let len = u32::from_ne_bytes(rest[0..4].try_into().unwrap()) as usize;
                let ty = u16::from_ne_bytes(rest[4..6].try_into().unwrap());
                if len < NLMSG_HDRLEN || len > rest.len() {
                    break;
                }
                if ty == NLMSG_ERROR && len >= NLMSG_HDRLEN + 4 {
                    let err = i32::from_ne_bytes(rest[16..20].try_into().unwrap());
                    return if err == 0 {
                        Ok(())
                    } else {
                        Err(io::Error::from_raw_os_error(-err))
                    };
                }
                rest = &rest[align4(len).min(rest.len())..];
            }
        }
    }

    /// Binds `queue` to this socket: metadata-only copy, GSO packets whole, `maxlen` packets
    /// of kernel queue.
    pub fn bind(&mut self, queue: u16, maxlen: u32) -> io::Result<()> {
        let ack = libc::NLM_F_ACK as u16;
        // struct nfqnl_msg_config_cmd { u8 command; u8 pad; be16 pf; }
        self.config(
            Msg::new(NFQNL_MSG_CONFIG, ack, queue)
                .attr(NFQA_CFG_CMD, &[NFQNL_CFG_CMD_BIND, 0, 0, 0]),
        )
        .map_err(|e| io::Error::new(e.kind(), format!("bind NFQUEUE {queue}: {e}")))?;
        // struct nfqnl_msg_config_params { be32 copy_range; u8 copy_mode; } (packed, 5 bytes)
        let mut params = 0u32.to_be_bytes().to_vec();
        params.push(NFQNL_COPY_META);
        self.config(Msg::new(NFQNL_MSG_CONFIG, ack, queue).attr(NFQA_CFG_PARAMS, &params))?;
        self.config(
            Msg::new(NFQNL_MSG_CONFIG, ack, queue)
                .attr(NFQA_CFG_QUEUE_MAXLEN, &maxlen.to_be_bytes()),
        )?;
        self.config(
            Msg::new(NFQNL_MSG_CONFIG, ack, queue)
                .attr(NFQA_CFG_FLAGS, &NFQA_CFG_F_GSO.to_be_bytes())
                .attr(NFQA_CFG_MASK, &NFQA_CFG_F_GSO.to_be_bytes()),
        )
    }

    /// Unbinds `queue` (the kernel drops what is still queued to it).
    pub fn unbind(&mut self, queue: u16) -> io::Result<()> {
        self.config(
            Msg::new(NFQNL_MSG_CONFIG, libc::NLM_F_ACK as u16, queue)
                .attr(NFQA_CFG_CMD, &[NFQNL_CFG_CMD_UNBIND, 0, 0, 0]),
        )
    }

    /// Accepts every packet of `queue` with an id up to and including `id`.
    pub fn accept_upto(&self, queue: u16, id: u32) -> io::Result<()> {
        let mut hdr = NF_ACCEPT.to_be_bytes().to_vec();
        hdr.extend_from_slice(&id.to_be_bytes());
        let msg = Msg::new(NFQNL_MSG_VERDICT_BATCH, 0, queue).attr(NFQA_VERDICT_HDR, &hdr);
        self.send(&msg.finish())
    }

    /// Receives up to [`BATCH`] queued packets without blocking; appends them to `out`.
    /// Returns the number of datagrams read (0 when nothing was pending).
    pub fn recv_batch(&mut self, out: &mut Vec<Packet>) -> io::Result<usize> {
        // SAFETY: iovec/mmsghdr are plain data; zero is a valid initial value.
        let mut iov: [libc::iovec; BATCH] = unsafe { std::mem::zeroed() };
        // SAFETY: as above.
        let mut hdrs: [libc::mmsghdr; BATCH] = unsafe { std::mem::zeroed() };
        for (i, (v, h)) in iov.iter_mut().zip(hdrs.iter_mut()).enumerate() {
            v.iov_base = self.bufs[i * SLOT..].as_mut_ptr() as *mut libc::c_void;
            v.iov_len = SLOT;
            h.msg_hdr.msg_iov = v;
            h.msg_hdr.msg_iovlen = 1;
        }
        // SAFETY: each mmsghdr points at one iovec, which points at a distinct SLOT-byte region
        // of self.bufs; all of them outlive the call.
        let n = unsafe {
            libc::recvmmsg(
                self.fd.as_raw_fd(),
                hdrs.as_mut_ptr(),
                BATCH as libc::c_uint,
                libc::MSG_DONTWAIT,
                std::ptr::null_mut(),
            )
        };
        if n < 0 {
            let e = io::Error::last_os_error();
            return match e.kind() {
                io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted => Ok(0),
                _ => Err(e),
            };
        }
        for (i, h) in hdrs.iter().take(n as usize).enumerate() {
            let len = (h.msg_len as usize).min(SLOT);
            parse_datagram(&self.bufs[i * SLOT..i * SLOT + len], out);
        }
        Ok(n as usize)
    }
}

/// Parses the netlink messages of one datagram, appending queued packets to `out`.
/// Malformed input is skipped, never trusted.
fn parse_datagram(mut data: &[u8], out: &mut Vec<Packet>) {
    while data.len() >= NLMSG_HDRLEN {
        let len = u32::from_ne_bytes(data[0..4].try_into().unwrap()) as usize;
        let ty = u16::from_ne_bytes(data[4..6].try_into().unwrap());
        if len < NLMSG_HDRLEN || len > data.len() {
            return;
        }
        if ty >= NLMSG_MIN_TYPE
            && ty != NLMSG_DONE
            && ty == (NFNL_SUBSYS_QUEUE << 8) | NFQNL_MSG_PACKET
            && len >= NLMSG_HDRLEN + 4
        {
            let body = &data[NLMSG_HDRLEN..len];
            let queue = u16::from_be_bytes([body[2], body[3]]);
            if let Some(id) = packet_id(&body[4..]) {
                out.push(Packet { queue, id });
            }
        }
        data = &data[align4(len).min(data.len())..];
    }
}

fn packet_id(mut attrs: &[u8]) -> Option<u32> {
    while attrs.len() >= 4 {
        let len = u16::from_ne_bytes([attrs[0], attrs[1]]) as usize;
        let ty = u16::from_ne_bytes([attrs[2], attrs[3]]) & 0x3fff;
        if len < 4 || len > attrs.len() {
            return None;
        }
        // struct nfqnl_msg_packet_hdr { be32 packet_id; be16 hw_protocol; u8 hook; }
        if ty == NFQA_PACKET_HDR && len >= 8 {
            return Some(u32::from_be_bytes(attrs[4..8].try_into().unwrap()));
        }
        attrs = &attrs[align4(len).min(attrs.len())..];
    }
    None
}

/// Kernel-side counters of one queue, from `/proc/net/netfilter/nfnetlink_queue`.
#[derive(Debug, Default, Clone, Copy)]
pub struct KernelQueueStats {
    /// Packets waiting in the kernel for a verdict.
    pub total: u64,
    /// Dropped because the queue was full (`maxlen`).
    pub queue_dropped: u64,
    /// Dropped because the netlink socket buffer was full.
    pub user_dropped: u64,
}

pub fn kernel_stats(queue: u16) -> KernelQueueStats {
    let text = std::fs::read_to_string("/proc/net/netfilter/nfnetlink_queue").unwrap_or_default();
    for line in text.lines() {
        let f: Vec<u64> = line
            .split_whitespace()
            .filter_map(|w| w.parse().ok())
            .collect();
        if f.len() >= 7 && f[0] == queue as u64 {
            return KernelQueueStats {
                total: f[2],
                queue_dropped: f[5],
                user_dropped: f[6],
            };
        }
    }
    KernelQueueStats::default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_packet_message() {
        let mut m = Msg::new(NFQNL_MSG_PACKET, 0, 7);
        let mut hdr = 0x01020304u32.to_be_bytes().to_vec();
        hdr.extend_from_slice(&[0x08, 0x00, 2]);
        m = m.attr(5, &3u32.to_be_bytes()).attr(NFQA_PACKET_HDR, &hdr);
        let mut dgram = m.finish();
        dgram.extend(Msg::new(NFQNL_MSG_PACKET, 0, 1).finish()); // no header attr: skipped
        dgram.extend_from_slice(&[1, 2, 3]); // trailing garbage: ignored
        let mut out = Vec::new();
        parse_datagram(&dgram, &mut out);
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].queue, 7);
        assert_eq!(out[0].id, 0x01020304);
    }

    #[test]
    fn truncated_input_is_ignored() {
        let mut hdr = 9u32.to_be_bytes().to_vec();
        hdr.extend_from_slice(&[0, 0, 0]);
        let d = Msg::new(NFQNL_MSG_PACKET, 0, 1)
            .attr(NFQA_PACKET_HDR, &hdr)
            .finish();
        for cut in 0..d.len() {
            let mut out = Vec::new();
            parse_datagram(&d[..cut], &mut out);
            assert!(out.is_empty());
        }
    }
}

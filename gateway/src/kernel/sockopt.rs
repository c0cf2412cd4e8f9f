//! Socket options for WAN flows, transparent listeners and sessions' local
//! connections.
//!
//! WAN sockets are the gateway's own: we pick their congestion control and
//! buffers regardless of the host's defaults (a hypervisor host usually runs
//! CUBIC with small buffers). Options that socket2 lacks are set with libc
//! here, the only unsafe code in the crate.
#![allow(unsafe_code)]

use std::io;
use std::net::SocketAddr;
use std::os::fd::AsRawFd;

use socket2::{Domain, Protocol, SockRef, Socket, Type};

use crate::session::lan_window::UNMEASURED_MIGRATION_WINDOW;

/// Unsent bytes a data flow may hold in its kernel send queue before it
/// stops pulling frames. Small enough that a frame handed to a flow leaves
/// soon (so a slow flow cannot hold the stream hostage), large enough to keep
/// the pipe full between wakeups.
pub const DATA_FLOW_NOTSENT_LOWAT: u32 = 512 * 1024;

/// What a WAN socket should look like.
#[derive(Debug, Clone)]
pub struct WanTuning {
    pub congestion: String,
    pub buffer: Option<usize>,
    /// Declare the connection dead after this long without progress.
    pub flow_timeout: std::time::Duration,
}

/// Applies WAN tuning to a connected or about-to-connect socket. Failures
/// are returned as warnings: a flow with stock settings still works.
pub fn tune_wan(sock: &SockRef<'_>, tuning: &WanTuning, data_flow: bool) -> Vec<String> {
    let mut warnings = Vec::new();
    if let Err(e) = sock.set_tcp_congestion(tuning.congestion.as_bytes()) {
        warnings.push(format!("TCP_CONGESTION {}: {e}", tuning.congestion));
    }
    if let Some(size) = tuning.buffer {
        // The FORCE variants pass net.core.{w,r}mem_max (needs CAP_NET_ADMIN);
        // fall back to the capped ones.
        for (force, plain, name) in [
            (libc::SO_SNDBUFFORCE, libc::SO_SNDBUF, "SO_SNDBUF"),
            (libc::SO_RCVBUFFORCE, libc::SO_RCVBUF, "SO_RCVBUF"),
        ] {
            if setsockopt_int(sock, libc::SOL_SOCKET, force, size as libc::c_int).is_err() {
                if let Err(e) = setsockopt_int(sock, libc::SOL_SOCKET, plain, size as libc::c_int) {
                    warnings.push(format!("{name} {size}: {e}"));
                }
            }
        }
    }
    // A silent WAN (blackout, dead peer) must surface as an error on the
    // flow, not as a hang: unacked data times out after `flow_timeout`, and
    // keepalives probe an idle connection within the same time.
    if let Err(e) = sock.set_tcp_user_timeout(Some(tuning.flow_timeout)) {
        warnings.push(format!("TCP_USER_TIMEOUT: {e}"));
    }
    let probe = (tuning.flow_timeout / 4).max(std::time::Duration::from_secs(1));
    let keepalive = socket2::TcpKeepalive::new()
        .with_time(probe)
        .with_interval(probe)
        .with_retries(3);
    if let Err(e) = sock.set_tcp_keepalive(&keepalive) {
        warnings.push(format!("SO_KEEPALIVE: {e}"));
    }
    if data_flow {
        if let Err(e) = setsockopt_int(
            sock,
            libc::IPPROTO_TCP,
            libc::TCP_NOTSENT_LOWAT,
            DATA_FLOW_NOTSENT_LOWAT as libc::c_int,
        ) {
            warnings.push(format!("TCP_NOTSENT_LOWAT: {e}"));
        }
    }
    // Control messages are small and latency-bound. A data flow writes whole
    // batches of records, so Nagle's algorithm saves no packets there; it
    // only held each batch's partial last segment (and the record it ends)
    // until all before it was acked: up to a WAN round trip for the last
    // frame on every flow when a migration switches over.
    if let Err(e) = sock.set_nodelay(true) {
        warnings.push(format!("TCP_NODELAY: {e}"));
    }
    warnings
}

/// `linux/udp.h`: the size of each datagram a send is cut into (GSO), and joining received
/// ones (GRO). Not in the libc crate for glibc.
const UDP_SEGMENT: libc::c_int = 103;
const UDP_GRO: libc::c_int = 104;

/// Whether the kernel cuts sends on `sock` into datagrams (UDP GSO): probed by setting the
/// socket-wide size and clearing it again. [`send_segments`] gives the size per call.
pub fn udp_gso_works(sock: &SockRef<'_>) -> bool {
    setsockopt_int(sock, libc::SOL_UDP, UDP_SEGMENT, 1200).is_ok()
        && setsockopt_int(sock, libc::SOL_UDP, UDP_SEGMENT, 0).is_ok()
}

/// Sends `buf` to `to` as datagrams of `segment` bytes each (the last may be shorter), in
/// one call: the size rides on this call alone (a control message), so a datagram sent
/// next, longer than `segment`, is not cut as well. Nonblocking: `WouldBlock` when the
/// socket buffer is full.
pub fn send_segments(
    sock: &impl AsRawFd,
    buf: &[u8],
    to: SocketAddr,
    segment: u16,
) -> io::Result<usize> {
    let addr = socket2::SockAddr::from(to);
    let mut iov = libc::iovec {
        iov_base: buf.as_ptr() as *mut libc::c_void,
        iov_len: buf.len(),
    };
    // SAFETY: CMSG_SPACE only computes a size.
    let space = unsafe { libc::CMSG_SPACE(std::mem::size_of::<u16>() as u32) } as usize;
    let mut control = [0u64; 4];
    debug_assert!(space <= std::mem::size_of_val(&control));
    // SAFETY: an all-zero msghdr is valid; every pointer set below outlives the call.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_name = addr.as_ptr() as *mut libc::c_void;
    msg.msg_namelen = addr.len();
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control.as_mut_ptr().cast();
    msg.msg_controllen = space as _;
    // SAFETY: msg_control points at `space` zeroed bytes, room for one u16 control message,
    // so CMSG_FIRSTHDR is non-null and CMSG_DATA has 2 bytes behind it.
    let rc = unsafe {
        let cmsg = libc::CMSG_FIRSTHDR(&msg);
        (*cmsg).cmsg_level = libc::SOL_UDP;
        (*cmsg).cmsg_type = UDP_SEGMENT;
        (*cmsg).cmsg_len = libc::CMSG_LEN(std::mem::size_of::<u16>() as u32) as _;
        std::ptr::write_unaligned(libc::CMSG_DATA(cmsg).cast::<u16>(), segment);
        libc::sendmsg(sock.as_raw_fd(), &msg, 0)
    };
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(rc as usize)
    }
}

/// The kernel may join datagrams that arrive on `sock` back to back, of one size.
pub fn set_udp_gro(sock: &SockRef<'_>) -> io::Result<()> {
    setsockopt_int(sock, libc::SOL_UDP, UDP_GRO, 1)
}

fn setsockopt_int(
    sock: &SockRef<'_>,
    level: libc::c_int,
    name: libc::c_int,
    value: libc::c_int,
) -> io::Result<()> {
    // SAFETY: the fd is a valid open socket for the lifetime of `sock`, and we
    // pass a pointer to a live c_int with its exact size.
    let rc = unsafe {
        libc::setsockopt(
            sock.as_raw_fd(),
            level,
            name,
            (&value as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// TCP_INFO of a socket, if the kernel gives it.
fn tcp_info(sock: &SockRef<'_>) -> Option<libc::tcp_info> {
    // SAFETY: tcp_info is plain old data; all-zero is a valid value.
    let mut info: libc::tcp_info = unsafe { std::mem::zeroed() };
    let mut len = std::mem::size_of::<libc::tcp_info>() as libc::socklen_t;
    // SAFETY: the fd is a valid socket for the lifetime of `sock`; we pass a
    // pointer to a live tcp_info and its size, which the kernel fills at most.
    let rc = unsafe {
        libc::getsockopt(
            sock.as_raw_fd(),
            libc::IPPROTO_TCP,
            libc::TCP_INFO,
            (&mut info as *mut libc::tcp_info).cast(),
            &mut len,
        )
    };
    (rc == 0).then_some(info)
}

/// Whether the peer's kernel acknowledged everything written to `sock`:
/// nothing unsent (tcpi_notsent_bytes) and nothing unacknowledged.
pub fn send_queue_empty(sock: &SockRef<'_>) -> bool {
    tcp_info(sock).is_some_and(|i| i.tcpi_notsent_bytes == 0 && i.tcpi_unacked == 0)
}

/// Linux's `TCP_CA_Loss`: after a retransmission timeout everything in
/// flight goes again, from a window of one segment.
const TCP_CA_LOSS: u8 = 4;

/// How `sock` sends, for the stall check ([`crate::link::stall`]): its
/// window, the bytes at the end of its stream that wait (those not yet
/// sent, and after a timeout those in flight too) and its pacing rate.
pub fn send_side(sock: &SockRef<'_>) -> Option<crate::link::stall::SendSide> {
    let info = tcp_info(sock)?;
    let mut stuck = u64::from(info.tcpi_notsent_bytes);
    if info.tcpi_ca_state == TCP_CA_LOSS {
        stuck += u64::from(info.tcpi_unacked) * u64::from(info.tcpi_snd_mss);
    }
    let tail_lost = info.tcpi_unacked > 0
        && info.tcpi_ca_state != TCP_CA_LOSS
        && info.tcpi_rtt > 0
        && u64::from(info.tcpi_last_data_sent) * 1_000 > tail_loss_wait_us(info.tcpi_rtt);
    if tail_lost {
        stuck += u64::from(info.tcpi_unacked) * u64::from(info.tcpi_snd_mss);
    }
    Some(crate::link::stall::SendSide {
        cwnd: info.tcpi_snd_cwnd,
        stuck,
        pacing_rate: info.tcpi_pacing_rate,
        tail_lost,
    })
}

/// How long after its last send a connection's bytes may stay unacked
/// before its tail counts as lost: a quarter round trip more than the round
/// trip (RACK's reordering window), and the receiver's delayed ACK (40 ms).
fn tail_loss_wait_us(srtt_us: u32) -> u64 {
    u64::from(srtt_us) * 5 / 4 + 40_000
}

/// Starts `sock`'s congestion control afresh (`name`: the one it runs):
/// Linux initialises a congestion control when a socket switches to it, and
/// only then, so it goes to Reno and back. What the old one had learnt
/// (BBR's bandwidth and min RTT filters) is forgotten; the window stays.
pub fn restart_congestion_control(sock: &SockRef<'_>, name: &str) -> io::Result<()> {
    sock.set_tcp_congestion(b"reno")?;
    sock.set_tcp_congestion(name.as_bytes())
}

/// Segments on the wire: Linux's `tcp_packets_in_flight` (sent, not
/// cumulatively or selectively acked, not marked lost, retransmissions counted).
fn in_flight_segments(info: &libc::tcp_info) -> u32 {
    (info.tcpi_unacked + info.tcpi_retrans).saturating_sub(info.tcpi_sacked + info.tcpi_lost)
}

/// What a data flow delivered, for the tunnel pacer (`session::pacer`): the
/// kernel's own delivered count (BBR's), selectively acked segments
/// included, so a hole being repaired holds nothing back; it never goes
/// down, unlike cumulatively acked bytes plus SACKed segments (a timeout
/// clears the SACK scoreboard). Segments × MSS: our writes fill them. Sent: every segment
/// out so far is delivered, or unacked and not selectively acked. Retransmitted: every
/// segment sent again.
pub fn flow_progress(sock: &SockRef<'_>) -> Option<crate::session::pacer::FlowProgress> {
    let info = tcp_info(sock)?;
    let mss = u64::from(info.tcpi_snd_mss);
    let delivered = u64::from(info.tcpi_delivered);
    let unacked = u64::from(info.tcpi_unacked.saturating_sub(info.tcpi_sacked));
    Some(crate::session::pacer::FlowProgress {
        delivered: delivered * mss,
        sent: (delivered + unacked) * mss,
        outstanding: u64::from(in_flight_segments(&info)) * mss
            + u64::from(info.tcpi_notsent_bytes),
        min_rtt_us: (info.tcpi_min_rtt > 0).then_some(u64::from(info.tcpi_min_rtt)),
        srtt_us: (info.tcpi_rtt > 0).then_some(u64::from(info.tcpi_rtt)),
        retransmitted: u64::from(info.tcpi_total_retrans) * mss,
    })
}

/// The kernel's view of a TCP connection (TCP_INFO), for status output.
pub fn tcp_stats(sock: &SockRef<'_>) -> Option<crate::admin::status::TcpStats> {
    let info = tcp_info(sock)?;
    Some(crate::admin::status::TcpStats {
        rtt_us: info.tcpi_rtt,
        rttvar_us: info.tcpi_rttvar,
        cwnd_segments: info.tcpi_snd_cwnd,
        mss: info.tcpi_snd_mss,
        total_retransmits: info.tcpi_total_retrans,
        unacked_segments: info.tcpi_unacked,
        in_flight_segments: in_flight_segments(&info),
    })
}

/// A new TCP socket for `addr`'s family.
pub fn tcp_socket(addr: &SocketAddr) -> io::Result<Socket> {
    let s = Socket::new(
        Domain::for_address(*addr),
        Type::STREAM,
        Some(Protocol::TCP),
    )?;
    s.set_nonblocking(true)?;
    Ok(s)
}

/// An ingress listening socket; `transparent` sets IP_TRANSPARENT for TPROXY
/// (needs CAP_NET_ADMIN), so connections to any address routed here are
/// accepted with their original destination as the local address. Accepted
/// connections inherit its receive buffer, which bounds their window for
/// good (Linux clamps it to the listener's at the handshake): a migration's
/// window before the tunnel's rate is known
/// ([`UNMEASURED_MIGRATION_WINDOW`]), then resized with the rate
/// ([`size_listener`]). Each session sets its share of its migration's
/// window (`session::lan_window`) before it reads.
pub fn listener(addr: &SocketAddr, transparent: bool) -> io::Result<std::net::TcpListener> {
    let s = tcp_socket(addr)?;
    s.set_reuse_address(true)?;
    s.set_recv_buffer_size(UNMEASURED_MIGRATION_WINDOW as usize)?;
    if transparent {
        s.set_ip_transparent(true).map_err(|e| {
            io::Error::new(
                e.kind(),
                format!("IP_TRANSPARENT (tproxy mode needs CAP_NET_ADMIN): {e}"),
            )
        })?;
    }
    s.bind(&(*addr).into())?;
    s.listen(1024)?;
    Ok(s.into())
}

/// Sets an ingress listener's receive buffer to one migration's LAN window
/// (`window`, from the tunnel's rate): the window its next connections may
/// offer at most. A wider one would let the hypervisor's congestion window,
/// and its send buffer with it, grow during the handshake and the peer's
/// accept, for good.
pub fn size_listener(listener: &SockRef<'_>, window: u64) -> io::Result<()> {
    let bytes = usize::try_from(window).unwrap_or(usize::MAX);
    if listener.recv_buffer_size()? == 2 * bytes {
        return Ok(()); // Linux reports twice what was set (its bookkeeping)
    }
    listener.set_recv_buffer_size(bytes)
}

/// Makes the next close send RST instead of FIN, so a reset travels on to
/// the endpoint.
pub fn reset_on_close(sock: &SockRef<'_>) {
    let _ = sock.set_linger(Some(std::time::Duration::ZERO));
}

/// A session's local connection (the hypervisor's, or the target's): reset on
/// close until the session ends cleanly, and no Nagle delay. The downlink
/// writes each frame's payload as it is opened; with Nagle's algorithm a
/// write's partial last segment waited until the endpoint acked all before
/// it, and at the end of a migration those are the last bytes the
/// destination waits for.
pub fn local_endpoint(sock: &SockRef<'_>) {
    reset_on_close(sock);
    let _ = sock.set_nodelay(true);
}

/// Undoes [`reset_on_close`]: the stream ended cleanly, close with FIN.
pub fn close_gracefully(sock: &SockRef<'_>) {
    let _ = sock.set_linger(None);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tuning() -> WanTuning {
        WanTuning {
            congestion: "cubic".into(),
            buffer: None,
            flow_timeout: std::time::Duration::from_secs(30),
        }
    }

    /// The lane sends a frame's datagrams in one call and its acks alone. A segment size
    /// set on the socket (as the lane first did) stays and cuts every later send: an ack
    /// longer than the last frame's shards arrived in pieces, which the peer refused, and
    /// its groups were counted lost (3 % of a lossy migration's). Given with each call, it
    /// cuts only that call's.
    #[test]
    fn a_segment_size_given_per_call_cuts_that_call_alone() {
        let rx = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        rx.set_read_timeout(Some(std::time::Duration::from_secs(2)))
            .unwrap();
        let to = rx.local_addr().unwrap();
        let tx = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        if !udp_gso_works(&SockRef::from(&tx)) {
            eprintln!("skipped: this kernel has no UDP GSO");
            return;
        }
        let sizes = |n: usize| {
            let mut buf = [0u8; 2048];
            (0..n)
                .map(|_| rx.recv(&mut buf).unwrap())
                .collect::<Vec<_>>()
        };
        assert_eq!(send_segments(&tx, &[1; 250], to, 100).unwrap(), 250);
        assert_eq!(sizes(3), [100, 100, 50]);
        tx.send_to(&[2; 300], to).unwrap();
        assert_eq!(sizes(1), [300], "a send after it goes whole");
        // The socket-wide option, for contrast: it cuts the next plain send too.
        setsockopt_int(&SockRef::from(&tx), libc::SOL_UDP, UDP_SEGMENT, 100).unwrap();
        tx.send_to(&[3; 300], to).unwrap();
        assert_eq!(sizes(3), [100, 100, 100]);
    }

    /// The downlink writes each frame's payload to the local endpoint as it is
    /// opened. With Nagle's algorithm a write's partial last segment waited
    /// until the endpoint acked all before it (its delayed ACK: up to 40 ms);
    /// at the end of a migration those are the last bytes the destination waits
    /// for.
    #[test]
    fn a_sessions_local_connection_sends_without_nagles_delay() {
        let s = tcp_socket(&"127.0.0.1:1".parse().unwrap()).unwrap();
        local_endpoint(&SockRef::from(&s));
        assert!(s.nodelay().unwrap(), "TCP_NODELAY not set");
        assert_eq!(s.linger().unwrap(), Some(std::time::Duration::ZERO));
    }

    /// A data flow writes whole batches of records; with Nagle's algorithm
    /// the last, partial segment of a batch waited in the kernel until
    /// everything before it was acked, up to one WAN round trip, and the
    /// record it ends could not be opened until then. At the end of a
    /// migration that was the last frame of every flow: the guest's downtime.
    #[test]
    fn every_wan_connection_sends_without_nagles_delay() {
        for data_flow in [true, false] {
            let s = tcp_socket(&"127.0.0.1:1".parse().unwrap()).unwrap();
            let _warnings = tune_wan(&SockRef::from(&s), &tuning(), data_flow);
            assert!(
                s.nodelay().unwrap(),
                "data_flow={data_flow}: TCP_NODELAY not set"
            );
        }
    }
}

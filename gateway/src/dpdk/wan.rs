//! One WAN connection on a userspace TCP socket: connect, the Noise
//! handshake (bytes read exactly as needed, so nothing of the record stream
//! is consumed early), then records both ways through the crypto stage.
//!
//! The records' bookkeeping is the link layer's ([`RecordQueues`]): reading is
//! bounded by what waits in the crypto stage, and writing is pulled: the
//! tunnel asks [`WanConn::room_for_record`] before it hands a data flow
//! another frame.

use std::net::SocketAddr;

use smoltcp::socket::tcp;

use super::crypto::{ConnId, CryptoJob, CryptoPipe, CryptoStage};
use crate::crypto::{RekeyPolicy, TrafficKeys};
use crate::link::record_queues::RecordQueues;
use crate::link::{self, ConnFailure, ConnHandshake, Record};
use crate::protocol::handshake::MAX_NOISE_MESSAGE;
use crate::protocol::Message;

/// This gateway's keys and what it expects of the peer, and when records rekey.
pub struct Identity<'a> {
    pub link: link::Identity<'a>,
    pub rekey: RekeyPolicy,
}

enum Phase {
    /// Dialer: SYN sent.
    Connecting,
    /// The handshake's bytes (dialer: message 1 sent).
    Handshaking(Box<ConnHandshake>),
    /// Keys installed in the crypto stage; records flow.
    Keyed,
}

pub struct WanConn {
    pub id: ConnId,
    pub handle: smoltcp::iface::SocketHandle,
    pub dialed: bool,
    /// Dialled as a data flow (the handshake says so).
    data_flow: bool,
    phase: Phase,
    /// When it was created (µs, the engine's clock).
    pub created: u64,
    pub remote: Option<SocketAddr>,
    pub local: Option<SocketAddr>,
    /// Records in the crypto stage and waiting for the socket; the bytes counts.
    pub records: RecordQueues,
    /// The dedup store the peer offered in this connection's handshake (0: none).
    pub peer_dedup: crate::crypto::DedupOffer,
}

impl WanConn {
    fn new(
        id: ConnId,
        handle: smoltcp::iface::SocketHandle,
        dialed: bool,
        data_flow: bool,
        phase: Phase,
        now: u64,
    ) -> Self {
        WanConn {
            id,
            handle,
            dialed,
            data_flow,
            phase,
            created: now,
            remote: None,
            local: None,
            records: RecordQueues::default(),
            peer_dedup: Default::default(),
        }
    }

    /// A connection we are dialling (the socket's connect was issued), for a data flow or
    /// the control connection.
    pub fn dialing(
        id: ConnId,
        handle: smoltcp::iface::SocketHandle,
        data_flow: bool,
        now: u64,
    ) -> Self {
        Self::new(id, handle, true, data_flow, Phase::Connecting, now)
    }

    /// A connection a listening socket took.
    pub fn accepted(id: ConnId, handle: smoltcp::iface::SocketHandle, now: u64) -> Self {
        Self::new(
            id,
            handle,
            false,
            false,
            Phase::Handshaking(Box::new(ConnHandshake::accept())),
            now,
        )
    }

    pub fn is_keyed(&self) -> bool {
        matches!(self.phase, Phase::Keyed)
    }

    /// Advances connect and handshake. Returns true when the connection
    /// just became keyed (its keys are installed in the crypto stage).
    pub fn handshake<C: CryptoPipe>(
        &mut self,
        sock: &mut tcp::Socket,
        me: &Identity,
        crypto: &mut CryptoStage<C>,
    ) -> Result<bool, ConnFailure> {
        if self.remote.is_none() {
            self.note_endpoints(sock);
        }
        let hs = match &mut self.phase {
            Phase::Keyed => return Ok(false),
            Phase::Connecting => {
                match sock.state() {
                    tcp::State::SynSent | tcp::State::SynReceived => return Ok(false),
                    tcp::State::Established => {}
                    _ => return Err(ConnFailure::Connect(refused())),
                }
                let (hs, m1) = ConnHandshake::dial(&me.link, self.data_flow)?;
                self.write_now(sock, &m1)?;
                self.phase = Phase::Handshaking(Box::new(hs));
                return Ok(false);
            }
            Phase::Handshaking(hs) => hs,
        };
        if sock.state() == tcp::State::SynReceived {
            return Ok(false);
        }
        check_open(sock)?;
        // Exactly what the handshake still lacks: the first record stays in the socket.
        let mut piece = [0u8; MAX_NOISE_MESSAGE];
        let done = loop {
            let want = hs.wanted().min(piece.len());
            let n = sock
                .recv_slice(&mut piece[..want])
                .map_err(|_| ConnFailure::Closed)?;
            if n == 0 {
                return Ok(false);
            }
            self.records.bytes_received += n as u64;
            if let Some(done) = hs.take(&me.link, &piece[..n])? {
                break done;
            }
        };
        if !done.reply.is_empty() {
            self.write_now(sock, &done.reply)?;
        }
        self.phase = Phase::Keyed;
        self.peer_dedup = done.keys.peer_dedup;
        self.install(done.keys, me.rekey, crypto);
        Ok(true)
    }

    fn install<C: CryptoPipe>(
        &mut self,
        keys: TrafficKeys,
        policy: RekeyPolicy,
        crypto: &mut CryptoStage<C>,
    ) {
        crypto.submit(CryptoJob::Install {
            conn: self.id,
            keys,
            policy,
        });
    }

    fn note_endpoints(&mut self, sock: &tcp::Socket) {
        self.remote = sock.remote_endpoint().map(super::net::endpoint_addr);
        self.local = sock.local_endpoint().map(super::net::endpoint_addr);
    }

    /// Writes handshake bytes, which a fresh socket's buffer always holds.
    fn write_now(&mut self, sock: &mut tcp::Socket, bytes: &[u8]) -> Result<(), ConnFailure> {
        let n = sock.send_slice(bytes).map_err(|_| ConnFailure::Reset)?;
        self.records.bytes_sent += n as u64;
        if n < bytes.len() {
            return Err(ConnFailure::Reset);
        }
        Ok(())
    }

    /// Reads whole records off the socket into the crypto stage, until the
    /// socket is empty or this connection's share of the stage is full.
    pub fn read_records<C: CryptoPipe>(
        &mut self,
        sock: &mut tcp::Socket,
        crypto: &mut CryptoStage<C>,
    ) -> Result<(), ConnFailure> {
        debug_assert!(self.is_keyed());
        while let Some(space) = self.records.read_space().filter(|_| sock.can_recv()) {
            let n = sock.recv_slice(space).map_err(|_| ConnFailure::Closed)?;
            let Some(Record { header, body }) = self.records.filled(n)? else {
                continue;
            };
            crypto.submit(CryptoJob::Open {
                conn: self.id,
                header,
                body,
            });
        }
        check_open(sock)
    }

    /// Hands a message to the crypto stage to be sealed as the next record.
    pub fn seal<C: CryptoPipe>(&mut self, msg: Message, crypto: &mut CryptoStage<C>) {
        self.records.sealing();
        crypto.submit(CryptoJob::Seal { conn: self.id, msg });
    }

    /// Writes queued records into the socket as far as it has room.
    pub fn flush(&mut self, sock: &mut tcp::Socket) -> Result<(), ConnFailure> {
        let send = |b: &[u8]| sock.send_slice(b).map_err(|_| ConnFailure::Reset);
        self.records.write(send)
    }

    /// Whether a data flow should take another frame of up to
    /// `max_record` bytes: only while everything queued for it, in the
    /// crypto stage and in our queue, fits in the socket's buffer, and what
    /// it has not sent yet stays short (see [`unsent_limit`]): frames then
    /// go to the flows that can send them soonest, not to the first flow
    /// with room in its buffer.
    pub fn room_for_record(&self, sock: &tcp::Socket, max_record: usize) -> bool {
        let queued = self.records.queued(max_record);
        self.is_keyed()
            && self.records.may_seal()
            && sock.may_send()
            && sock.send_queue() + queued <= sock.send_capacity()
            && sock.send_unsent() + queued <= unsent_limit(sock, max_record)
    }
}

/// A WAN socket's sender as `lmas status` shows a kernel flow's TCP_INFO.
pub fn tcp_stats(sock: &tcp::Socket) -> crate::admin::status::TcpStats {
    let info = sock.sender_info();
    let mss = info.mss.max(1);
    let clamp = |v: usize| u32::try_from(v).unwrap_or(u32::MAX);
    crate::admin::status::TcpStats {
        rtt_us: info
            .srtt
            .map_or(0, |d| u32::try_from(d.total_micros()).unwrap_or(u32::MAX)),
        rttvar_us: 0,
        cwnd_segments: clamp(info.cwnd / mss),
        mss: clamp(mss),
        total_retransmits: info.recovery.map_or(0, |r| {
            u32::try_from(r.retransmitted_segments).unwrap_or(u32::MAX)
        }),
        unacked_segments: clamp(info.in_flight.div_ceil(mss)),
        in_flight_segments: clamp(info.in_flight.div_ceil(mss)),
    }
}

/// What a data flow delivered, for the tunnel pacer (`session::pacer`).
pub fn flow_progress(sock: &tcp::Socket) -> crate::session::pacer::FlowProgress {
    let info = sock.sender_info();
    crate::session::pacer::FlowProgress {
        delivered: info.delivered,
        outstanding: (info.in_flight + info.unsent) as u64,
        min_rtt_us: info.min_rtt.map(|d| d.total_micros()),
        // The stack's smoothed RTT takes one sample a round trip: on a busy core, noise.
        srtt_us: info.recent_rtt.or(info.srtt).map(|d| d.total_micros()),
        sent: info.sent,
        retransmitted: info.recovery.map_or(0, |r| r.retransmitted_bytes),
    }
}

/// How much a data flow may hold that it has not sent: two records, or
/// what it sends in 2 ms at its pacing rate if that is more. Like Linux's
/// `TCP_NOTSENT_LOWAT` on the kernel datapath's flows: enough that the
/// flow never runs dry between two turns of the loop, little enough that
/// a frame waits behind no other flow's window.
pub fn unsent_limit(sock: &tcp::Socket, max_record: usize) -> usize {
    let paced = sock.pacing_rate().map_or(0, |rate| (rate / 500) as usize);
    (2 * max_record).max(paced)
}

/// An error if the socket can no longer carry the connection.
fn check_open(sock: &tcp::Socket) -> Result<(), ConnFailure> {
    match sock.state() {
        tcp::State::Established | tcp::State::FinWait1 | tcp::State::FinWait2 => Ok(()),
        tcp::State::CloseWait
        | tcp::State::LastAck
        | tcp::State::Closing
        | tcp::State::TimeWait => {
            if sock.can_recv() {
                Ok(())
            } else {
                Err(ConnFailure::Closed)
            }
        }
        _ => Err(ConnFailure::Reset),
    }
}

/// What smoltcp tells of a connect that failed: nothing more than this.
fn refused() -> std::io::Error {
    std::io::Error::new(
        std::io::ErrorKind::ConnectionRefused,
        "refused or unreachable",
    )
}

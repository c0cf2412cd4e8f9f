//! One authenticated, encrypted gateway-to-gateway TCP connection: the
//! handshake exchange over a stream, then message records both ways.

use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use crate::admin::Stats;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::crypto::{DedupOffer, Opening, RekeyPolicy, Sealed, Sealing, TrafficKeys};
use crate::link::{ConnFailure, ConnHandshake, Done, Identity, Next, ReadAhead, Record};
use crate::protocol::handshake::MAX_NOISE_MESSAGE;
use crate::protocol::packed::CodecSet;
use crate::protocol::Message;
use crate::transform::{PackNote, PackPolicy};

/// Drives `hs` over `stream`, reading exactly the bytes it asks for (the first record stays
/// unread for the record layer).
async fn run_handshake<S: AsyncRead + Unpin>(
    stream: &mut S,
    mut hs: ConnHandshake,
    me: &Identity<'_>,
) -> Result<Done, ConnFailure> {
    let mut piece = [0u8; MAX_NOISE_MESSAGE];
    loop {
        let want = hs.wanted().min(piece.len());
        stream
            .read_exact(&mut piece[..want])
            .await
            .map_err(ConnFailure::from_read)?;
        if let Some(done) = hs.take(me, &piece[..want])? {
            return Ok(done);
        }
    }
}

/// Runs the dialling side of the handshake on `stream`.
pub async fn handshake_initiator<S: AsyncRead + AsyncWrite + Unpin>(
    stream: &mut S,
    me: &Identity<'_>,
    data_flow: bool,
) -> Result<TrafficKeys, ConnFailure> {
    let (hs, m1) = ConnHandshake::dial(me, data_flow)?;
    stream.write_all(&m1).await?;
    Ok(run_handshake(stream, hs, me).await?.keys)
}

/// Runs the accepting side up to its answer: the caller sets the socket up for what the
/// dialler said the connection is, then writes `Done::reply`.
pub async fn handshake_acceptor<S: AsyncRead + Unpin>(
    stream: &mut S,
    me: &Identity<'_>,
) -> Result<Done, ConnFailure> {
    run_handshake(stream, ConnHandshake::accept(), me).await
}

/// Identity and byte counters of one WAN connection, shared by its record
/// reader and writer and shown by `lmas status`.
pub struct ConnInfo {
    pub sent: AtomicU64,
    pub received: AtomicU64,
    pub local: SocketAddr,
    pub remote: SocketAddr,
    pub since: std::time::Instant,
    /// A second descriptor of the same socket, to read TCP_INFO from.
    socket: socket2::Socket,
}

impl ConnInfo {
    pub fn new(stream: &tokio::net::TcpStream) -> io::Result<Arc<ConnInfo>> {
        Ok(Arc::new(ConnInfo {
            sent: AtomicU64::new(0),
            received: AtomicU64::new(0),
            local: stream.local_addr()?,
            remote: stream.peer_addr()?,
            since: std::time::Instant::now(),
            socket: socket2::SockRef::from(stream).try_clone()?,
        }))
    }

    /// How it sends, for the stall check ([`crate::link::stall`]).
    pub fn send_side(&self) -> Option<crate::link::stall::SendSide> {
        super::sockopt::send_side(&socket2::SockRef::from(&self.socket))
    }

    /// Starts its congestion control (`name`) afresh.
    pub fn restart_congestion_control(&self, name: &str) -> std::io::Result<()> {
        super::sockopt::restart_congestion_control(&socket2::SockRef::from(&self.socket), name)
    }

    /// What the connection delivered, for the tunnel pacer.
    pub fn flow_progress(&self) -> Option<crate::session::pacer::FlowProgress> {
        super::sockopt::flow_progress(&socket2::SockRef::from(&self.socket))
    }

    pub fn tcp_stats(&self) -> Option<crate::admin::status::TcpStats> {
        super::sockopt::tcp_stats(&socket2::SockRef::from(&self.socket))
    }

    /// Makes closing the socket send an RST (the connection is dead to us: a replaced one, or
    /// one of a tunnel given up).
    pub fn reset_on_close(&self) {
        super::sockopt::reset_on_close(&socket2::SockRef::from(&self.socket));
    }

    /// Whether everything written to the socket was acknowledged by the
    /// peer's kernel (false if that cannot be told).
    pub fn send_queue_empty(&self) -> bool {
        super::sockopt::send_queue_empty(&socket2::SockRef::from(&self.socket))
    }
}

/// Reads and opens records from one connection.
///
/// A record held for long (a data payload waiting for its endpoint) must not
/// pin memory beyond its own size, so every body gets an allocation of exactly
/// its length ([`ReadAhead`]) and is decrypted in place there.
pub struct RecordReader<R> {
    inner: R,
    opening: Opening,
    incoming: ReadAhead,
    info: Arc<ConnInfo>,
    /// What unpacking the last message cost, until [`RecordReader::take_unpacked`].
    unpacked: Option<PackNote>,
    /// The dedup store the peer offered in the handshake (store 0: none).
    peer_dedup: DedupOffer,
    /// What the peer offered for the lane, with keys from this connection's.
    lane: Option<super::lane::LaneOffer>,
}

impl<R: AsyncRead + Unpin> RecordReader<R> {
    pub fn new(inner: R, keys: &TrafficKeys, info: Arc<ConnInfo>) -> Self {
        RecordReader {
            inner,
            opening: Opening::new(&keys.recv),
            incoming: ReadAhead::default(),
            info,
            unpacked: None,
            peer_dedup: keys.peer_dedup,
            lane: keys.peer_lane.map(|port| super::lane::LaneOffer {
                keys: crate::lane::LaneKeys::derive(&keys.send, &keys.recv),
                port,
                codecs: keys.peer_codecs,
            }),
        }
    }

    /// What the peer offered for the lane, if it did.
    pub fn lane(&self) -> Option<super::lane::LaneOffer> {
        self.lane.clone()
    }

    /// The dedup store the peer offered in this connection's handshake (store 0: none).
    pub fn peer_dedup(&self) -> DedupOffer {
        self.peer_dedup
    }

    /// For the message [`RecordReader::read_message`] returned last, if it was a packed data
    /// frame: what unpacking it cost, for its session's figures.
    pub fn take_unpacked(&mut self) -> Option<PackNote> {
        self.unpacked.take()
    }

    pub fn info(&self) -> &Arc<ConnInfo> {
        &self.info
    }

    /// Counts what unpacking data frames costs and restores in `policy`'s counters.
    pub fn with_stats(mut self, policy: Arc<PackPolicy>) -> Self {
        self.opening = self.opening.with_stats(policy);
        self
    }

    /// The next whole record off the stream.
    async fn next_record(&mut self) -> Result<Record, ConnFailure> {
        loop {
            let (n, direct) = match self.incoming.record()? {
                Next::Record(record) => return Ok(record),
                Next::ReadBody(space) => (self.inner.read(space).await?, true),
                Next::ReadAhead(buf) => (self.inner.read_buf(buf).await?, false),
            };
            if n == 0 {
                return Err(ConnFailure::Closed);
            }
            self.info.received.fetch_add(n as u64, Ordering::Relaxed);
            if direct {
                if let Some(record) = self.incoming.body_filled(n)? {
                    return Ok(record);
                }
            }
        }
    }

    /// The next message; key updates from the peer are applied here.
    pub async fn read_message(&mut self) -> Result<Message, ConnFailure> {
        loop {
            let Record { header, body } = self.next_record().await?;
            let opened = self.opening.open(header, body)?;
            self.unpacked = opened.unpacked;
            if let Some(msg) = opened.msg {
                return Ok(msg);
            }
        }
    }
}

/// Seals records into a reusable buffer and writes them.
pub struct RecordWriter<W> {
    inner: W,
    /// `None` only while a batch is being sealed off the reactor.
    sealing: Option<Sealing>,
    /// Whether data frames are packed (then batches are sealed off the reactor, by at most
    /// as many flows at once as `sealers` has permits).
    packs: bool,
    sealers: Option<Arc<tokio::sync::Semaphore>>,
    info: Arc<ConnInfo>,
    stats: Arc<Stats>,
    /// Sealed records waiting for `flush`.
    out: Vec<u8>,
    /// What packing each data frame sealed so far did, until [`RecordWriter::take_packed`].
    packed: Vec<PackNote>,
}

impl<W: AsyncWrite + Unpin> RecordWriter<W> {
    pub fn new(
        inner: W,
        keys: &TrafficKeys,
        policy: RekeyPolicy,
        info: Arc<ConnInfo>,
        stats: Arc<Stats>,
    ) -> Self {
        RecordWriter {
            inner,
            sealing: Some(Sealing::new(&keys.send, policy, std::time::Instant::now())),
            packs: false,
            sealers: None,
            info,
            stats,
            out: Vec::with_capacity(300 * 1024),
            packed: Vec::new(),
        }
    }

    /// Packs data frames by `policy` in codecs the peer unpacks (none in
    /// common: they stay plain), compressing on the blocking pool with one of `sealers`'
    /// permits.
    pub fn with_packing(
        mut self,
        codecs: CodecSet,
        policy: Arc<PackPolicy>,
        sealers: Arc<tokio::sync::Semaphore>,
    ) -> Self {
        self.packs = !codecs.is_empty();
        self.sealers = Some(sealers);
        self.sealing = self.sealing.map(|s| s.with_packing(codecs, policy));
        self
    }

    /// Seals one message into the pending output, first moving to a new
    /// key if the policy says so (a key-update record tells the peer).
    pub fn push(&mut self, msg: &Message) -> Result<(), ConnFailure> {
        let now = std::time::Instant::now();
        let (sealing, out) = (self.sealing.as_mut(), &mut self.out);
        let sealed = sealing
            .expect("a batch is sealed before the next message")
            .seal(msg, out, now)
            .map_err(ConnFailure::Seal)?;
        self.note(sealed);
        Ok(())
    }

    /// What packing did to each data frame sealed since the last call, for the session
    /// core (the caller credits each to its session).
    pub fn take_packed(&mut self) -> std::vec::Drain<'_, PackNote> {
        self.packed.drain(..)
    }

    /// Seals `msgs` in order into the pending output. Packing them costs
    /// CPU (zstd: ~130 µs a 64 KiB frame), so then it runs on tokio's
    /// blocking pool, never on the reactor; order and nonces stay as they are.
    /// Only as many flows compress at once as the sealers have permits: eight flows
    /// compressing on two cores would starve the reactor and the AES of every flow.
    pub async fn push_batch(&mut self, mut msgs: Vec<Message>) -> Result<(), ConnFailure> {
        if !self.packs {
            return msgs.iter().try_for_each(|m| self.push(m));
        }
        // Control, zero and incompressible frames are cheap enough for the reactor; from the
        // first frame worth compressing on, the batch goes to the pool.
        let sealing = self.sealing.as_mut();
        let sealing = sealing.expect("a batch is sealed before the next message");
        let now = std::time::Instant::now();
        let cheap = sealing
            .seal_cheap_prefix(&msgs, &mut self.out, now)
            .map_err(ConnFailure::Seal)?;
        let n = cheap.len();
        cheap.into_iter().for_each(|s| self.note(s));
        if n == msgs.len() {
            return Ok(());
        }
        msgs.drain(..n);
        let permit =
            match &self.sealers {
                Some(s) => Some(s.clone().acquire_owned().await.map_err(|_| {
                    ConnFailure::Io(io::Error::other("the sealing pool is closed"))
                })?),
                None => None,
            };
        let mut sealing = self.sealing.take().expect("one batch at a time");
        let mut out = std::mem::take(&mut self.out);
        let (sealing, out, sealed) = tokio::task::spawn_blocking(move || {
            let _permit = permit;
            let sealed = sealing.seal_all(&msgs, &mut out, std::time::Instant::now());
            (sealing, out, sealed)
        })
        .await
        .map_err(|e| ConnFailure::Io(io::Error::other(format!("sealing a batch: {e}"))))?;
        self.sealing = Some(sealing);
        self.out = out;
        for s in sealed.map_err(ConnFailure::Seal)? {
            self.note(s);
        }
        Ok(())
    }

    /// Logs and counts a key update; keeps what packing did for [`RecordWriter::take_packed`].
    fn note(&mut self, sealed: Sealed) {
        self.packed.extend(sealed.packed);
        if let Some(k) = sealed.key_update {
            log::info!(
                "key update {} on a WAN connection after {} bytes",
                k.number,
                k.after_bytes
            );
            Stats::inc(&self.stats.key_updates);
        }
    }

    pub async fn flush(&mut self) -> Result<(), ConnFailure> {
        self.inner.write_all(&self.out).await?;
        self.info
            .sent
            .fetch_add(self.out.len() as u64, Ordering::Relaxed);
        self.out.clear();
        Ok(())
    }

    pub fn get_ref(&self) -> &W {
        &self.inner
    }

    pub fn info(&self) -> &ConnInfo {
        &self.info
    }
}

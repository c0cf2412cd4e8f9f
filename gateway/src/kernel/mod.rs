//! The portable datapath on kernel sockets (tokio).
//!
//! ```text
//!  ingress (listen/tproxy) ─► Tunnel::open_session ─► endpoint::drive ─┐
//!                                                                      ├─ TunnelCore (session core)
//!  egress (allowlist, connect) ◄─ ConnectRequested ◄───────────────────┘      │
//!                                                                             ▼
//!                      control connection (run_control) + N data flows (run_flow)
//! ```
//! The dialling gateway keeps the tunnel up: it re-dials a dead data flow
//! (its frames go out again on the others meanwhile) and re-establishes the
//! whole tunnel if the control connection dies.
//!
//! Operator requests arrive as signals: SIGHUP swaps in a re-read egress
//! allowlist ([`crate::admin::reload`]); SIGTERM/SIGINT run the clean
//! shutdown in [`drain`]. `lmas status` and metrics are served by
//! [`crate::admin::serve`] from [`Gateway`]'s [`StatusSource`] impl.

mod conn;
mod drain;
mod egress;
mod endpoint;
mod idle;
mod ingress;
mod pending;
pub mod sockopt;
mod tunnel;

use std::net::SocketAddr;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use log::{debug, info, warn};
use ring::rand::SystemRandom;
use socket2::SockRef;
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;

use crate::admin::reload::Live;
use crate::admin::signals::{Request, Signals};
use crate::admin::{Config, RunError, Stats, StatusSource, TunnelEnd};
use crate::link::admission::Throttle;
use crate::link::admission::MAX_PENDING_HANDSHAKES;
use crate::link::{
    first_message, name_mismatch, peer_label, welcome_step, ConnRef, ConnTable, Current,
    DialFailed, Dialer, FirstStep, Role, WelcomeStep, FLOWS_ATTACH_TIMEOUT, HANDSHAKE_TIMEOUT,
};
use crate::protocol::{Message, ResetReason, TunnelId};
use crate::session::{SharePolicy, Side};
use crate::transform::{Adaptive, Compression, PackPolicy};
use conn::{
    handshake_acceptor, handshake_initiator, ConnError, ConnInfo, RecordReader, RecordWriter,
};
use sockopt::{tune_wan, WanTuning};
use tunnel::Tunnel;

/// Process-wide state shared by all tasks.
pub struct Gateway {
    /// As read at startup; the egress allowlist in force is [`Gateway::allows`].
    pub config: Config,
    pub stats: Arc<Stats>,
    /// The egress allowlist, caps and weights in force (replaced by a reload).
    live: RwLock<Live>,
    /// Cancelled when shutdown starts: ingress stops accepting and the
    /// peer's new sessions are refused (reason "shutting down").
    pub stopping: CancellationToken,
    started: std::time::Instant,
    pub(super) tuning: WanTuning,
    current: watch::Sender<Option<Arc<Tunnel>>>,
    handshakes: Arc<pending::PendingHandshakes>,
    /// How data frames are packed (`wan.compression`), and the counters of it.
    packing: Arc<PackPolicy>,
    /// Permits to compress on the blocking pool: half the cores, the rest for the reactor,
    /// AES and the host.
    sealers: Arc<tokio::sync::Semaphore>,
    /// The dedup store kept across tunnels (`wan.dedup_dir`); `None`: each tunnel has one
    /// in memory.
    pub dedup_store: Option<crate::session::SharedStore>,
}

impl Gateway {
    /// The tunnel, once it is up with a control connection (waits at most
    /// `wait`). A tunnel held through an outage keeps its sessions but takes
    /// no new ones until it is back.
    pub async fn wait_for_tunnel(&self, wait: Duration) -> Option<Arc<Tunnel>> {
        let ready = async {
            let mut current = self.current.subscribe();
            loop {
                let tunnel = current
                    .wait_for(|t| t.as_ref().is_some_and(|t| !t.closed.is_cancelled()))
                    .await
                    .ok()?
                    .clone()?;
                let mut up = tunnel.control_up.subscribe();
                tokio::select! {
                    r = up.wait_for(|up| *up) => if r.is_ok() { return Some(tunnel) },
                    _ = tunnel.closed.cancelled() => {}
                }
            }
        };
        tokio::time::timeout(wait, ready).await.ok().flatten()
    }

    /// The tunnel if it is up with a control connection right now (no waiting).
    pub fn ready_tunnel(&self) -> Option<Arc<Tunnel>> {
        let tunnel = self.current.borrow().clone()?;
        let up = !tunnel.closed.is_cancelled() && *tunnel.control_up.borrow();
        up.then_some(tunnel)
    }

    /// The gateway's clock for the sans-IO layers: µs since it started.
    fn now_us(&self) -> u64 {
        self.started.elapsed().as_micros() as u64
    }

    /// Our keys and what we expect of the peer, for a connection's handshake (the kernel
    /// datapath is one shard).
    fn identity(&self) -> crate::link::Identity<'_> {
        self.config.identity(crate::protocol::handshake::Shard::ONE)
    }

    /// Wraps an authenticated stream in a record reader and writer.
    fn secure(
        &self,
        stream: TcpStream,
        keys: &crate::crypto::TrafficKeys,
    ) -> std::io::Result<(Reader, Writer)> {
        let info = ConnInfo::new(&stream)?;
        let policy = self.config.rekey();
        let (r, w) = stream.into_split();
        let mut writer = RecordWriter::new(w, keys, policy, info.clone(), self.stats.clone());
        if self.config.compression != Compression::Off {
            writer =
                writer.with_packing(keys.peer_codecs, self.packing.clone(), self.sealers.clone());
        }
        Ok((
            RecordReader::new(r, keys, info).with_stats(self.packing.clone()),
            writer,
        ))
    }

    /// The current tunnel, unless it was closed.
    fn tunnel(&self) -> Option<Arc<Tunnel>> {
        self.current
            .borrow()
            .clone()
            .filter(|t| !t.closed.is_cancelled())
    }

    /// Whether the egress allowlist in force allows `target`.
    pub fn allows(&self, target: &SocketAddr) -> bool {
        self.live
            .read()
            .expect("not poisoned")
            .egress
            .allows(target)
    }

    /// The caps and weights in force.
    pub fn shares(&self) -> SharePolicy {
        self.live.read().expect("not poisoned").shares.clone()
    }

    pub(crate) fn install(&self, tunnel: Option<Arc<Tunnel>>) {
        // A reload between this tunnel's making and now reached only the old one.
        if let Some(t) = &tunnel {
            t.set_shares(self.shares());
        }
        let old = self.current.send_replace(tunnel);
        if let Some(old) = old {
            old.shutdown(ResetReason::TunnelLost);
        }
    }
}

impl StatusSource for Gateway {
    /// Everything `lmas status` shows.
    fn status(&self) -> crate::admin::Status {
        crate::admin::Status {
            gateway: self.config.name.clone(),
            peer: self.config.peer_name.clone(),
            uptime_secs: self.started.elapsed().as_secs_f64(),
            tunnel: self.tunnel().map(|t| t.status()),
            counters: {
                let mut c = self.stats.snapshot();
                c.extend(self.packing.stats.snapshot("compression_"));
                c
            },
            gauges: Default::default(),
        }
    }
}

/// How often `auto` compression looks at its counters.
const ADAPT_EVERY: Duration = Duration::from_millis(200);

/// How many flows may compress at once: half the cores (at least one).
fn sealing_workers() -> usize {
    std::thread::available_parallelism().map_or(1, |n| (n.get() / 2).max(1))
}

/// Moves `auto` compression up or down its ladder from what packing costs
/// and saves (the sealing runs on tokio's blocking pool, one batch per flow
/// at a time, at most `sealing_workers()` at once).
async fn adapt_packing(gateway: Arc<Gateway>) {
    let workers = sealing_workers();
    let mut adaptive = Adaptive::default();
    loop {
        tokio::select! {
            _ = tokio::time::sleep(ADAPT_EVERY) => {}
            _ = gateway.stopping.cancelled() => return,
        }
        let now = gateway.now_us();
        if let Some(choice) = adaptive.observe(now, &gateway.packing, workers) {
            debug!("compression: now {choice}");
        }
    }
}

/// Runs a gateway until SIGINT or SIGTERM (then drains, see [`drain`]).
pub fn run(config: Config) -> Result<(), RunError> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("lmas")
        .build()
        .map_err(RunError::host("starting the tokio runtime"))?;
    runtime.block_on(serve(config))
}

async fn serve(config: Config) -> Result<(), RunError> {
    // First, so that an early SIGHUP cannot kill the process.
    let mut signals = Signals::install().map_err(RunError::host("installing signal handlers"))?;
    let tuning = WanTuning {
        congestion: config
            .congestion
            .clone()
            .unwrap_or_else(crate::admin::host::default_congestion),
        buffer: config.socket_buffer,
        flow_timeout: config.flow_timeout,
    };
    info!(
        "gateway {} starting: peer {}, {} data flows, congestion {}",
        config.name, config.peer_name, config.data_flows, tuning.congestion
    );
    let config_compression = config.compression;
    let handshakes =
        pending::PendingHandshakes::new(MAX_PENDING_HANDSHAKES, config.peer_source.clone());
    let dedup_store = config
        .open_dedup_store(crate::protocol::handshake::Shard::ONE)
        .map_err(|e| RunError::field(&config.file, "wan.dedup_dir", e))?;
    let gateway = Arc::new(Gateway {
        dedup_store,
        live: RwLock::new(Live::of(&config)),
        config,
        stats: Arc::new(Stats::default()),
        stopping: CancellationToken::new(),
        started: std::time::Instant::now(),
        tuning,
        current: watch::channel(None).0,
        handshakes,
        packing: Arc::new(PackPolicy::new(config_compression)),
        sealers: Arc::new(tokio::sync::Semaphore::new(sealing_workers())),
    });
    tokio::spawn(adapt_packing(gateway.clone()));
    // Bind everything first so a bad address fails the start, not later.
    let mut listeners = Vec::new();
    let file = &gateway.config.file;
    for (i, ingress) in gateway.config.ingress.iter().enumerate() {
        let l = ingress::bind(ingress).map_err(|e| {
            let why = format!("cannot listen on {}: {e}", ingress.bind);
            RunError::field(file, format!("ingress[{i}].bind"), why)
        })?;
        listeners.push((i, ingress.clone(), l));
    }
    match gateway.config.tunnel {
        TunnelEnd::Dial(addr) => {
            tokio::spawn(dial_loop(gateway.clone(), addr));
        }
        TunnelEnd::Listen(addr) => {
            let l = TcpListener::bind(addr).await.map_err(|e| {
                let why = format!("cannot listen on {addr}: {e}");
                RunError::field(file, "gateway.tunnel_listen", why)
            })?;
            info!(
                "waiting for peer {} on {addr}{}",
                gateway.config.peer_name,
                crate::link::admission::only_from(gateway.config.peer_source.as_ref())
            );
            tokio::spawn(accept_loop(gateway.clone(), l));
        }
    }
    crate::admin::serve(&gateway.config, gateway.clone()).await?;
    let ingress_tasks: Vec<_> = listeners
        .into_iter()
        .map(|(i, ingress, l)| tokio::spawn(ingress::serve(gateway.clone(), i, ingress, l)))
        .collect();
    let stop = loop {
        match signals.next().await {
            Request::Reload => {
                let live = gateway.live.read().expect("not poisoned").clone();
                if let Some(new) =
                    crate::admin::reload::reread(&gateway.config, &live, &gateway.stats)
                {
                    if let Some(t) = gateway.tunnel() {
                        t.set_shares(new.shares.clone());
                    }
                    *gateway.live.write().expect("not poisoned") = new;
                }
            }
            Request::Stop(signal) => break signal,
        }
    };
    drain::shutdown(&gateway, stop, ingress_tasks, &mut signals).await;
    Ok(())
}

// ---- dialling side ---------------------------------------------------------

/// What a dial task tells the dial loop.
enum Dialled {
    /// The control connection's dial ended: the welcome (and the tunnel id the peer chose), or
    /// why not.
    Control(ConnRef, Result<(Reader, Writer, TunnelId), SetupError>),
    /// Data flow `k`'s dial for `tunnel` ended: keyed with its attach sent, or why not.
    Flow {
        dial: ConnRef,
        k: usize,
        tunnel: Arc<Tunnel>,
        result: Result<(Reader, Writer), DialError>,
    },
    /// Data flow `k` of `tunnel` ended after it had attached.
    FlowEnded { k: usize, tunnel: Arc<Tunnel> },
}

/// The dialling gateway keeps the tunnel up: it dials what its [`Dialer`] says is due (the
/// rules are the DPDK datapath's too) and hands what each dial became to the tunnel.
async fn dial_loop(gateway: Arc<Gateway>, addr: SocketAddr) {
    let label = peer_label(&gateway.config.peer_name, Some(addr));
    let flows = gateway.config.data_flows as usize;
    let mut dialer = Dialer::new(flows);
    let (tx, mut rx) = mpsc::unbounded_channel();
    // The tunnel, also while it is held after its control connection died.
    let mut tunnel: Option<Arc<Tunnel>> = None;
    let mut control_up: Option<watch::Receiver<bool>> = None;
    let mut next_dial: ConnRef = 1;
    loop {
        let now = gateway.now_us();
        if tunnel.as_ref().is_some_and(|t| t.closed.is_cancelled()) {
            warn!("tunnel to peer {label} down; reconnecting");
            (tunnel, control_up) = (None, None);
            // Their tasks see the tunnel closed and stop.
            let _ = dialer.tunnel_gone();
        }
        if let Some(t) = &tunnel {
            if t.with_table(|table| dialer.handle_timeout(now, Some(table))) {
                warn!("tunnel to peer {label}: data flows did not attach within {FLOWS_ATTACH_TIMEOUT:?}; giving up");
                t.shutdown(ResetReason::TunnelLost);
                continue;
            }
        }
        while let Some(role) = with_table(&tunnel, |table| dialer.poll_dial(now, table)) {
            let dial = next_dial;
            next_dial += 1;
            dialer.dialling(role, dial);
            let (gateway, tx) = (gateway.clone(), tx.clone());
            match role {
                Role::Control => {
                    let (resume, label) = (tunnel.as_ref().map(|t| t.id), label.clone());
                    tokio::spawn(async move {
                        let result = connect_control(&gateway, addr, &label, resume).await;
                        let _ = tx.send(Dialled::Control(dial, result));
                    });
                }
                Role::Flow(k) => {
                    let Some(tunnel) = tunnel.clone() else { break };
                    tokio::spawn(async move {
                        let result = tokio::select! {
                            r = dial_flow(&gateway, addr, &tunnel, k) => r,
                            _ = tunnel.closed.cancelled() => return,
                        };
                        let _ = tx.send(Dialled::Flow {
                            dial,
                            k,
                            tunnel,
                            result,
                        });
                    });
                }
            }
        }
        let wake = with_table(&tunnel, |table| dialer.poll_timeout(table));
        let wake = wake.map(|at| gateway.started + Duration::from_micros(at));
        let event = tokio::select! {
            e = rx.recv() => e,
            _ = async { tokio::time::sleep_until(wake?.into()).await; Some(()) }, if wake.is_some() => None,
            Some(()) = async { control_up.as_mut()?.changed().await.ok() } => {
                if !control_up.as_ref().is_some_and(|u| *u.borrow()) {
                    dialer.control_lost(gateway.now_us());
                }
                None
            }
            _ = async { tunnel.as_ref()?.closed.cancelled().await; Some(()) }, if tunnel.is_some() => None,
        };
        let now = gateway.now_us();
        let current = |of: &Arc<Tunnel>| tunnel.as_ref().is_some_and(|t| Arc::ptr_eq(t, of));
        match event {
            Some(Dialled::Control(dial, Err(e))) => {
                if let DialFailed::Control { retry_in } = dialer.failed(dial, now) {
                    // A failed handshake names the peer already.
                    let peer = match e {
                        SetupError::Handshake { .. } => String::new(),
                        _ => format!(" (peer {label})"),
                    };
                    warn!("{e:#}{peer}; retrying in {retry_in:?}");
                }
            }
            Some(Dialled::Control(_, Ok((reader, writer, id)))) => {
                let held = tunnel.as_ref().map(|t| t.id);
                match (welcome_step(held, id), &tunnel) {
                    (WelcomeStep::Resume, Some(t)) => {
                        dialer.welcomed(now, false);
                        t.attach_control(reader, writer);
                    }
                    (step, _) => {
                        if let Some(w) = step.warning(&label) {
                            warn!("{w}");
                        }
                        if let Some(old) = tunnel.take() {
                            old.shutdown(ResetReason::TunnelLost);
                        }
                        let _ = dialer.tunnel_gone();
                        dialer.welcomed(now, true);
                        let t =
                            Tunnel::new(gateway.clone(), Side::Dialer, id, label.clone(), flows);
                        t.attach_control(reader, writer);
                        gateway.install(Some(t.clone()));
                        control_up = Some(t.control_up.subscribe());
                        tunnel = Some(t);
                    }
                }
            }
            Some(Dialled::Flow {
                dial,
                k,
                tunnel: of,
                result,
            }) if current(&of) => match result {
                Ok((reader, writer)) => {
                    if dialer.flow_attached(k) {
                        info!("peer {}: data flow {k} re-attached", of.peer);
                    }
                    // In the table now, before the next dial is decided.
                    let run = of.clone().run_flow(k, reader, writer);
                    let tx = tx.clone();
                    tokio::spawn(async move {
                        run.await;
                        let _ = tx.send(Dialled::FlowEnded { k, tunnel: of });
                    });
                }
                Err(e) => {
                    if let DialFailed::Flow { retry_in, .. } = dialer.failed(dial, now) {
                        warn!(
                            "peer {}: data flow {k}: {e}; retrying in {retry_in:?}",
                            of.peer
                        );
                    }
                }
            },
            Some(Dialled::FlowEnded { k, tunnel: of }) if current(&of) => dialer.flow_lost(k, now),
            // Of a tunnel given up since, or a wakeup.
            Some(_) | None => {}
        }
    }
}

/// Runs `f` on the tunnel's connection table, if there is a tunnel.
fn with_table<T>(tunnel: &Option<Arc<Tunnel>>, f: impl FnOnce(Option<&ConnTable>) -> T) -> T {
    match tunnel {
        Some(t) => t.with_table(|table| f(Some(table))),
        None => f(None),
    }
}

/// Why a WAN connection could not be set up.
#[derive(Debug, thiserror::Error)]
enum DialError {
    #[error("cannot connect: {0}")]
    Connect(std::io::Error),
    #[error("handshake failed: {0}")]
    Handshake(ConnError),
}

type Reader = RecordReader<tokio::net::tcp::OwnedReadHalf>;
type Writer = RecordWriter<tokio::net::tcp::OwnedWriteHalf>;

/// Dials, tunes and authenticates one WAN connection.
async fn dial(
    gateway: &Gateway,
    addr: SocketAddr,
    data_flow: bool,
) -> Result<(Reader, Writer), DialError> {
    let socket = if addr.is_ipv4() {
        TcpSocket::new_v4()
    } else {
        TcpSocket::new_v6()
    }
    .map_err(DialError::Connect)?;
    // Buffers before connect: the window scale is fixed by the SYN.
    for w in tune_wan(&SockRef::from(&socket), &gateway.tuning, data_flow) {
        warn!("WAN socket option: {w}");
    }
    let connect_timeout = Duration::from_millis(gateway.config.connect_timeout_ms);
    let mut stream = match tokio::time::timeout(connect_timeout, socket.connect(addr)).await {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => return Err(DialError::Connect(e)),
        Err(_) => return Err(DialError::Connect(std::io::ErrorKind::TimedOut.into())),
    };
    let me = gateway.identity();
    let handshake = handshake_initiator(&mut stream, &me, data_flow);
    let keys = match tokio::time::timeout(HANDSHAKE_TIMEOUT, handshake).await {
        Ok(Ok(keys)) => keys,
        // The responder just hangs up when it rejects us.
        Ok(Err(ConnError::Closed)) => {
            return Err(DialError::Handshake(ConnError::Io(std::io::Error::other(
                crate::link::PEER_CLOSED_IN_HANDSHAKE,
            ))))
        }
        Ok(Err(e)) => return Err(DialError::Handshake(e)),
        Err(_) => {
            return Err(DialError::Handshake(ConnError::Io(
                std::io::ErrorKind::TimedOut.into(),
            )))
        }
    };
    gateway.secure(stream, &keys).map_err(DialError::Connect)
}

/// Why the dialler could not set up or resume the tunnel; the dial loop logs
/// it and tries again.
#[derive(Debug, thiserror::Error)]
enum SetupError {
    #[error("cannot connect: {0}")]
    Connect(std::io::Error),
    #[error("handshake with peer {peer} failed: {source}")]
    Handshake { peer: String, source: ConnError },
    #[error("hello/welcome: {0}")]
    Control(#[from] ConnError),
    #[error("no welcome within {0:?}")]
    WelcomeTimeout(Duration),
}

/// Dials the control connection and exchanges hello/welcome; returns the
/// tunnel id the peer chose (equal to `resume` if it resumed that tunnel).
async fn connect_control(
    gateway: &Arc<Gateway>,
    addr: SocketAddr,
    label: &str,
    resume: Option<TunnelId>,
) -> Result<(Reader, Writer, TunnelId), SetupError> {
    let (mut reader, mut writer) = match dial(gateway, addr, false).await {
        Ok(x) => x,
        Err(DialError::Handshake(source)) => {
            let peer = label.to_string();
            return Err(SetupError::Handshake { peer, source });
        }
        Err(DialError::Connect(e)) => return Err(SetupError::Connect(e)),
    };
    writer.send(&gateway.config.hello(resume)).await?;
    let welcome = tokio::time::timeout(HANDSHAKE_TIMEOUT, reader.read_message())
        .await
        .map_err(|_| SetupError::WelcomeTimeout(HANDSHAKE_TIMEOUT))??;
    let Message::Welcome { tunnel_id, name } = welcome else {
        return Err(ConnError::Unexpected {
            got: welcome.name(),
            expected: "welcome",
        }
        .into());
    };
    if let Some(w) = name_mismatch(&gateway.config.peer_name, label, &name) {
        warn!("{w}");
    }
    Ok((reader, writer, tunnel_id))
}

/// Dials data flow `k` of `tunnel` and sends its attach.
async fn dial_flow(
    gateway: &Gateway,
    addr: SocketAddr,
    tunnel: &Tunnel,
    k: usize,
) -> Result<(Reader, Writer), DialError> {
    let (reader, mut writer) = dial(gateway, addr, true).await?;
    let flow = u16::try_from(k).expect("at most MAX_DATA_FLOWS");
    let attach = Message::Attach {
        tunnel_id: tunnel.id,
        flow,
    };
    writer.send(&attach).await.map_err(DialError::Handshake)?;
    Ok((reader, writer))
}

// ---- accepting side --------------------------------------------------------

async fn accept_loop(gateway: Arc<Gateway>, listener: TcpListener) {
    loop {
        let (stream, addr) = match listener.accept().await {
            Ok(x) => x,
            Err(e) => {
                warn!("tunnel listener: accept: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let now = gateway.now_us();
        let pending = &gateway.handshakes;
        if !pending.allows(addr.ip()) {
            // Closed at once: no handshake, no task, no slot.
            Stats::inc(&gateway.stats.tunnel_sources_refused);
            sockopt::reset_on_close(&SockRef::from(&stream));
            if let Some(more) = pending.log_now(now) {
                warn!(
                    "connection to the tunnel port from {addr} refused: not in peer.source{}",
                    Throttle::more(more)
                );
            }
            continue;
        }
        let slot = match pending.admit(addr, &gateway.config.peer_name) {
            pending::Admitted::Slot(slot, evicted) => {
                if let Some((old, why)) = evicted {
                    Stats::inc(&gateway.stats.handshakes_busy);
                    if let Some(more) = pending.log_now(now) {
                        warn!(
                            "handshake with {old} dropped: {why}{}",
                            Throttle::more(more)
                        );
                    }
                }
                slot
            }
            pending::Admitted::Refused(why) => {
                Stats::inc(&gateway.stats.handshakes_busy);
                sockopt::reset_on_close(&SockRef::from(&stream));
                if let Some(more) = pending.log_now(now) {
                    warn!(
                        "handshake with {addr} dropped: {why}{}",
                        Throttle::more(more)
                    );
                }
                continue;
            }
        };
        let gateway = gateway.clone();
        tokio::spawn(async move {
            let first = tokio::select! {
                r = tokio::time::timeout(HANDSHAKE_TIMEOUT, accept_handshake(&gateway, stream)) => r,
                // Reported when it was evicted; nothing more to say.
                _ = slot.evicted.cancelled() => return,
            };
            drop(slot);
            let stats = &gateway.stats;
            match first {
                Ok(Ok(accepted)) => {
                    Stats::inc(&stats.handshakes_ok);
                    // It holds the peer's key: favoured when it re-dials under a flood.
                    gateway.handshakes.authenticated(addr.ip());
                    accepted.run(&gateway, addr).await
                }
                Ok(Err(e)) => {
                    Stats::inc(&stats.handshake_failures);
                    warn!("handshake with {addr} failed: {e}")
                }
                Err(_) => {
                    Stats::inc(&stats.handshake_failures);
                    let e = crate::crypto::HandshakeError::TimedOut(HANDSHAKE_TIMEOUT);
                    warn!("handshake with {addr} failed: {e}")
                }
            }
        });
    }
}

/// An authenticated connection and its first record.
struct Accepted {
    reader: Reader,
    writer: Writer,
    first: Message,
}

async fn accept_handshake(gateway: &Gateway, mut stream: TcpStream) -> Result<Accepted, ConnError> {
    let done = handshake_acceptor(&mut stream, &gateway.identity()).await?;
    for w in tune_wan(&SockRef::from(&stream), &gateway.tuning, done.data_flow) {
        warn!("WAN socket option: {w}");
    }
    tokio::io::AsyncWriteExt::write_all(&mut stream, &done.reply).await?;
    let (mut reader, writer) = gateway.secure(stream, &done.keys)?;
    let first = reader.read_message().await?;
    Ok(Accepted {
        reader,
        writer,
        first,
    })
}

impl Accepted {
    async fn run(self, gateway: &Arc<Gateway>, addr: SocketAddr) {
        let Accepted {
            reader,
            mut writer,
            first,
        } = self;
        let label = peer_label(&gateway.config.peer_name, Some(addr));
        if let Message::Hello { name, .. } = &first {
            if let Some(w) = name_mismatch(&gateway.config.peer_name, &label, name) {
                warn!("{w}");
            }
        }
        let current = gateway.tunnel();
        let held = current.as_ref().map(|t| Current {
            id: t.id,
            flows: t.flow_count(),
        });
        let new_id = || TunnelId::random(&SystemRandom::new());
        let step = match first_message(held, &first, new_id) {
            Ok(step) => step,
            Err(refusal) => return warn!("peer {label}: {refusal}; closing the connection"),
        };
        let (tunnel, fresh) = match (step, current) {
            (FirstStep::Attach { index }, Some(tunnel)) => {
                return tunnel.run_flow(index, reader, writer).await
            }
            (FirstStep::Resume, Some(tunnel)) => (tunnel, false),
            (FirstStep::NewTunnel { id, flows }, _) => {
                let side = Side::Acceptor;
                (
                    Tunnel::new(gateway.clone(), side, id, label.clone(), flows),
                    true,
                )
            }
            // Resume and attach name the current tunnel: it exists.
            (_, None) => return,
        };
        let welcome = Message::Welcome {
            tunnel_id: tunnel.id,
            name: gateway.config.name.clone(),
        };
        // In place before the welcome goes: the dialler's attaches follow it at once, and one
        // that came before the install was refused as naming an unknown tunnel.
        if fresh {
            gateway.install(Some(tunnel.clone()));
        }
        if let Err(e) = writer.send(&welcome).await {
            if fresh {
                tunnel.shutdown(ResetReason::TunnelLost);
            }
            return warn!("peer {label}: sending welcome: {e}");
        }
        tunnel.attach_control(reader, writer);
    }
}

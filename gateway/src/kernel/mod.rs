//! The portable datapath on kernel sockets (tokio).
//!
//! ```text
//!  ingress (listen/tproxy) ─► Tunnel::open_session ─► endpoint::drive ─┐
//!                                                                      ├─ TunnelCore (session core)
//!  egress (allowlist, connect) ◄─ ConnectRequested ◄───────────────────┘      │
//!                                                                             ▼
//!                      control connection (run_control) + N data flows (run_flow)
//! ```
//! What the WAN connections mean (hello, welcome, attach, resume, re-dialling a dead data flow
//! or control connection, the grace period) is decided by [`crate::link::Lifecycle`], as on
//! the DPDK datapath; [`wan`] turns sockets into its events and carries out its actions.
//!
//! Operator requests arrive as signals: SIGHUP swaps in a re-read egress
//! allowlist ([`crate::admin::reload`]); SIGTERM/SIGINT run the clean
//! shutdown in [`drain`]. `lmas status` and metrics are served by
//! [`crate::admin::serve`] from [`Gateway`]'s [`StatusSource`] impl.

mod conn;
mod drain;
mod egress;
mod endpoint;
mod ingress;
mod lane;
pub mod sockopt;
mod tunnel;
mod wan;

use std::net::SocketAddr;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use log::{debug, info, warn};
use socket2::SockRef;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, Notify};
use tokio_util::sync::CancellationToken;

use crate::admin::reload::Live;
use crate::admin::signals::{Request, Signals};
use crate::admin::{Config, RunError, Stats, StatusSource, TunnelEnd};
use crate::link::admission::PortGuard;
use crate::link::{Clients, Lifecycle};
use crate::protocol::ResetReason;
use crate::transform::{Adaptive, Compression, PackPolicy, ADAPT_EVERY_US};
use conn::{ConnInfo, RecordReader, RecordWriter};
use sockopt::WanTuning;
use tunnel::Tunnel;

type Reader = RecordReader<tokio::net::tcp::OwnedReadHalf>;
type Writer = RecordWriter<tokio::net::tcp::OwnedWriteHalf>;

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
    pub(super) started: std::time::Instant,
    pub(super) tuning: WanTuning,
    /// The lane's UDP socket (`wan.lane = "on"`).
    lane: Option<Arc<lane::LaneSocket>>,
    /// The tunnel's lifecycle and the kernel's side of each WAN connection ([`wan`]).
    link: Mutex<wan::Link>,
    /// Wakes the timer task ([`wan::run_timer`]): a deadline moved earlier.
    timer: Notify,
    /// The tunnel while it is up with a control connection.
    ready: watch::Sender<Option<Arc<Tunnel>>>,
    /// `peer.source` and the sources that proved to be the peer, before any handshake.
    tunnel_port: Mutex<PortGuard>,
    /// The ingress ports' clients, numbered by `next_client`, from accept to their end.
    clients: Mutex<Clients<u64>>,
    next_client: AtomicU64,
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
        let mut ready = self.ready.subscribe();
        let up = tokio::time::timeout(wait, ready.wait_for(|t| t.is_some())).await;
        // Cloned out before `ready`, which the borrow holds, goes.
        let tunnel: Option<Arc<Tunnel>> = up.ok()?.ok()?.clone();
        tunnel
    }

    /// The tunnel if it is up with a control connection right now (no waiting).
    pub fn ready_tunnel(&self) -> Option<Arc<Tunnel>> {
        self.ready.borrow().clone()
    }

    /// The gateway's clock for the sans-IO layers: µs since it started.
    fn now_us(&self) -> u64 {
        self.started.elapsed().as_micros() as u64
    }

    /// Our keys and what we expect of the peer, for a connection's handshake (the kernel
    /// datapath is one shard).
    fn identity(&self) -> crate::link::Identity<'_> {
        crate::link::Identity {
            lane: self.lane.as_ref().map(|l| l.port),
            ..self.config.identity(crate::protocol::handshake::Shard::ONE)
        }
    }

    /// Wraps an authenticated stream (`info`: its figures) in a record reader and writer.
    fn secure(
        &self,
        stream: TcpStream,
        info: Arc<ConnInfo>,
        keys: &crate::crypto::TrafficKeys,
    ) -> (Reader, Writer) {
        let policy = self.config.rekey();
        let (r, w) = stream.into_split();
        let mut writer = RecordWriter::new(w, keys, policy, info.clone(), self.stats.clone());
        if self.config.compression != Compression::Off {
            writer =
                writer.with_packing(keys.peer_codecs, self.packing.clone(), self.sealers.clone());
        }
        let reader = RecordReader::new(r, keys, info).with_stats(self.packing.clone());
        (reader, writer)
    }

    fn clients(&self) -> std::sync::MutexGuard<'_, Clients<u64>> {
        self.clients.lock().expect("not poisoned")
    }

    /// The tunnel, also while it is held after its control connection died.
    fn tunnel(&self) -> Option<Arc<Tunnel>> {
        self.link().tunnel()
    }

    /// Whether the egress allowlist in force allows `target`.
    pub fn allows(&self, target: &SocketAddr) -> bool {
        self.live
            .read()
            .expect("not poisoned")
            .egress
            .allows(target)
    }

    /// Takes the tunnel down: every session is reset, every connection of it closed.
    pub(crate) fn give_up(self: &Arc<Self>, reason: ResetReason) {
        self.link_event(|link, _| link.lifecycle.give_up(reason));
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
            _ = tokio::time::sleep(Duration::from_micros(ADAPT_EVERY_US)) => {}
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
    let clients = Clients::new(config.ingress_rules());
    let tunnel_port = Mutex::new(PortGuard::new(config.peer_source.clone()));
    let dedup_store = config
        .open_dedup_store(crate::protocol::handshake::Shard::ONE)
        .map_err(|e| RunError::field(&config.file, "wan.dedup_dir", e))?;
    let lifecycle = Lifecycle::new(config.link_setup(crate::protocol::handshake::Shard::ONE, None))
        .with_dedup_store(dedup_store.clone());
    let lane = match config.lane {
        Some(setup) => {
            let socket = lane::LaneSocket::bind(setup, &config.tunnel).map_err(|e| {
                let why = format!("cannot bind the lane's UDP port {}: {e}", setup.port);
                RunError::field(&config.file, "wan.lane_port", why)
            })?;
            info!(
                "lane: taking the peer's datagrams on UDP port {}",
                socket.port
            );
            Some(Arc::new(socket))
        }
        None => None,
    };
    let gateway = Arc::new(Gateway {
        dedup_store,
        lane,
        link: Mutex::new(wan::Link::new(lifecycle)),
        timer: Notify::new(),
        ready: watch::channel(None).0,
        live: RwLock::new(Live::of(&config)),
        config,
        stats: Arc::new(Stats::default()),
        stopping: CancellationToken::new(),
        started: std::time::Instant::now(),
        tuning,
        tunnel_port,
        clients: Mutex::new(clients),
        next_client: AtomicU64::new(0),
        packing: Arc::new(PackPolicy::new(config_compression)),
        sealers: Arc::new(tokio::sync::Semaphore::new(sealing_workers())),
    });
    tokio::spawn(adapt_packing(gateway.clone()));
    // Dials the peer, on the dialling gateway, as soon as the timer runs.
    tokio::spawn(wan::run_timer(gateway.clone()));
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
    if let TunnelEnd::Listen(addr) = gateway.config.tunnel {
        {
            let l = TcpListener::bind(addr).await.map_err(|e| {
                let why = format!("cannot listen on {addr}: {e}");
                RunError::field(file, "gateway.tunnel_listen", why)
            })?;
            gateway.config.announce_tunnel_port(addr);
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
                    let shares = new.shares.clone();
                    gateway.link_event(|link, _| link.lifecycle.set_shares(shares));
                    *gateway.live.write().expect("not poisoned") = new;
                }
            }
            Request::Stop(signal) => break signal,
        }
    };
    drain::shutdown(&gateway, stop, ingress_tasks, &mut signals).await;
    Ok(())
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
        let mut guard = gateway.tunnel_port.lock().expect("not poisoned");
        if !guard.trust.allows(addr.ip()) {
            // Closed at once: no handshake, no task, no slot.
            Stats::inc(&gateway.stats.tunnel_sources_refused);
            sockopt::reset_on_close(&SockRef::from(&stream));
            guard.refused("connection to the tunnel port", addr, gateway.now_us());
            continue;
        }
        let trusted = guard.trust.is_trusted(addr.ip());
        drop(guard);
        tokio::spawn(accept(gateway.clone(), stream, addr, trusted));
    }
}

/// Runs an accepted connection's handshake if the lifecycle gives it a slot, then serves it.
async fn accept(gateway: Arc<Gateway>, stream: TcpStream, addr: SocketAddr, trusted: bool) {
    let info = match ConnInfo::new(&stream) {
        Ok(info) => info,
        Err(e) => return warn!("tunnel connection from {addr}: {e}"),
    };
    let (conn, retire) = gateway.accepted(addr, trusted, info.clone());
    let keyed = tokio::select! {
        r = wan::accept_handshake(&gateway, stream, info) => r,
        // Dropped for another handshake, or past its deadline: the lifecycle said so.
        _ = retire.cancelled() => return,
    };
    match keyed {
        Ok((reader, writer)) => wan::serve(gateway, conn, retire, reader, writer).await,
        Err(e) => gateway.conn_failed(conn, &e),
    }
}

//! The appliance: the EAL, two ports, and the lcore pipeline.
//!
//! ```text
//!  main lcore     signals (reload, drain, stop), `lmas status`, metrics
//!  io lcore(s)    NIC rx/tx bursts  <-> rte_rings <->  tcp lcore(s)
//!  tcp lcore(s)   smoltcp on both ports, sessions, tunnel (Engine), one shard each
//!  crypto lcores  AES-256-GCM seal/open        <-> lock-free queues <-> tcp lcore
//! ```
//!
//! The main lcore talks to each TCP lcore only through a command channel
//! (status snapshots, a new allowlist, drain, stop), checked once per turn,
//! so the packet path never takes a lock. With several TCP lcores each is a
//! shard (see `frames::steer`): its own engine and sub-tunnel, its share of the
//! crypto lcores, its rings to the I/O lcores; `lmas status` merges them.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc::{self, Receiver, Sender, SyncSender};
use std::sync::Arc;
use std::time::{Duration, Instant};

use lmas_dpdk::{Eal, Mempool, Port};
use log::{info, warn};

use super::crypto::{run_worker, CryptoPipe, CryptoQueues, InlineCrypto};
use super::engine::{Engine, Ports};
use super::phy::FramePort;
use super::port::{open_port, run_io, IoPort, RingPort};
use super::Idle;
use crate::admin::appliance::{ApplianceCounters, PortCounters, PortFigures, RoleCounters};
use crate::admin::reload::Live;
use crate::admin::signals::{Request, Signals};
use crate::admin::{Config, Datapath, RunError, Stats, Status, StatusSource};
use crate::link::drain::log_notice;
use crate::link::{Drain, DrainStep, ResetCause};
use crate::protocol::handshake::Shard;
use crate::transform::{Adaptive, PackPolicy};

/// What the main lcore asks of the TCP lcore.
enum Command {
    Status(SyncSender<Status>),
    Live(Live),
    /// Drain for at most this long; the stop signal that asked for it.
    Drain(Duration, &'static str),
    StopNow(&'static str),
}

/// Counters the main lcore reads while the lcores run.
struct Shared {
    /// The I/O and crypto lcores stop when set.
    stop: AtomicBool,
    /// TCP lcores that finished their shutdown.
    tcp_done: AtomicUsize,
    io: Vec<Arc<RoleCounters>>,
    /// Per TCP lcore (shard).
    tcp: Vec<RoleCounters>,
    crypto: Vec<Arc<RoleCounters>>,
    /// Each port, with the counters of its end on every TCP lcore.
    ports: Vec<(&'static str, Port, Vec<Arc<PortCounters>>, Mempool)>,
    /// Packing of data frames: the policy the sealers follow, and what it did.
    packing: Arc<PackPolicy>,
}

/// Runs an appliance gateway until SIGTERM/SIGINT (then drains).
pub fn run(config: Config) -> Result<(), RunError> {
    let Datapath::Dpdk(dpdk) = &config.datapath else {
        let why = "is not \"dpdk\"";
        return Err(RunError::field(&config.file, "gateway.datapath", why));
    };
    let dpdk = (**dpdk).clone();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(RunError::host("starting the main lcore's runtime"))?;
    // First, so that an early SIGHUP cannot kill the process.
    let mut signals = runtime
        .block_on(async { Signals::install() })
        .map_err(RunError::host("installing signal handlers"))?;
    let file = config.file.clone();
    let field = |field: &str, why: &dyn std::fmt::Display| RunError::field(&file, field, why);

    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get()) as u32;
    let args = dpdk.eal_args_for(&config.name, cpus);
    info!("starting the DPDK EAL: {}", args.join(" "));
    let eal = Eal::init(&args)
        .map_err(|e| field("dpdk.eal_args", &format!("the EAL did not start: {e}")))?;
    let workers = eal.worker_lcores();
    dpdk.check_workers(&workers)
        .map_err(|(f, why)| field(&f, &why))?;

    let stats = Arc::new(Stats::default());
    // No I/O lcores: the TCP lcore polls the ports itself (run to completion).
    let via_io = !dpdk.io_lcores.is_empty();
    let shards = dpdk.tcp_lcores.len();
    let lan = open_port("lan", &dpdk.lan, dpdk.mbufs, via_io, shards)
        .map_err(|(f, why)| field(&f, &why))?;
    let wan = open_port("wan", &dpdk.wan, dpdk.mbufs, via_io, shards)
        .map_err(|(f, why)| field(&f, &why))?;
    let idle = Arc::new(Idle {
        sleep_us: dpdk.idle_sleep_us,
    });

    // Data frames are packed where they are sealed: on the crypto lcores (or the TCP lcore).
    let packing = Arc::new(PackPolicy::new(config.compression));

    // Crypto lcores, dealt out to the shards; a shard with none seals inline.
    let mut shard_crypto = Vec::new();
    let mut workers = Vec::new();
    for k in 0..shards {
        let lcores = dpdk.crypto_lcores_of(k);
        let (queues, rings) = CryptoQueues::new(lcores.len());
        let rings = if lcores.is_empty() { Vec::new() } else { rings };
        workers.extend(lcores.into_iter().zip(rings.iter().cloned()));
        shard_crypto.push((!rings.is_empty()).then_some(queues));
    }
    // Sealing runs on the crypto lcores, and on each TCP lcore that has none.
    let sealers = workers.len() + shard_crypto.iter().filter(|q| q.is_none()).count();
    let counters_of =
        |p: &super::port::OpenPort| p.rings.iter().map(|r| r.counters.clone()).collect();
    let shared = Arc::new(Shared {
        stop: AtomicBool::new(false),
        tcp_done: AtomicUsize::new(0),
        io: dpdk
            .io_lcores
            .iter()
            .map(|_| Arc::new(RoleCounters::default()))
            .collect(),
        tcp: (0..shards).map(|_| RoleCounters::default()).collect(),
        crypto: workers.iter().map(|(_, w)| w.counters.clone()).collect(),
        ports: vec![
            ("lan", lan.port, counters_of(&lan), lan.pool),
            ("wan", wan.port, counters_of(&wan), wan.pool),
        ],
        packing: packing.clone(),
    });
    // From here on lcores run: whatever way this function returns, they are
    // told to stop first, or the EAL's cleanup would wait for them forever.
    let _stop_lcores = StopOnDrop(shared.clone());
    for (lcore, worker) in workers {
        let (shared, idle, packing) = (shared.clone(), idle.clone(), packing.clone());
        eal.launch(lcore, move || {
            run_worker(&worker, &shared.stop, &idle, Some(packing));
            0
        })
        .map_err(|e| field("dpdk.crypto_lcores", &format!("lcore {lcore}: {e}")))?;
    }

    // I/O lcores: ports spread over them.
    let mut per_io: Vec<Vec<IoPort>> = dpdk.io_lcores.iter().map(|_| Vec::new()).collect();
    let shard_ports: Vec<Ports<RingPort>> = lan
        .rings
        .into_iter()
        .zip(wan.rings)
        .map(|(l, w)| Ports {
            lan: l,
            lan_mac: lan.mac,
            wan: w,
            wan_mac: wan.mac,
        })
        .collect();
    for (i, p) in [lan.io, wan.io].into_iter().flatten().enumerate() {
        per_io[i % dpdk.io_lcores.len()].push(p);
    }
    for (k, (ports, &lcore)) in per_io.into_iter().zip(&dpdk.io_lcores).enumerate() {
        let (shared, idle) = (shared.clone(), idle.clone());
        eal.launch(lcore, move || {
            run_io(ports, &shared.stop, &idle, &shared.io[k]);
            0
        })
        .map_err(|e| field("dpdk.io_lcores", &format!("lcore {lcore}: {e}")))?;
    }

    // The TCP lcores, one shard each.
    let config = Arc::new(config);
    let mut commands = Vec::new();
    for (k, ((ports, crypto), &lcore)) in shard_ports
        .into_iter()
        .zip(shard_crypto)
        .zip(&dpdk.tcp_lcores)
        .enumerate()
    {
        let (tx, inbox) = mpsc::channel();
        commands.push(tx);
        let shard = Shard::new(k as u8, shards as u8).expect("validated: 1..=255 TCP lcores");
        let dedup_store = config
            .open_dedup_store(shard)
            .map_err(|e| field("wan.dedup_dir", &e))?;
        let (config, stats, shared, idle) =
            (config.clone(), stats.clone(), shared.clone(), idle.clone());
        eal.launch(lcore, move || {
            let tcp = TcpLcore {
                shared: &shared,
                idle: &idle,
                inbox,
                shard,
                sealers,
                dedup_store,
            };
            match crypto {
                Some(queues) => tcp.run(config, stats, ports, queues),
                None => {
                    let crypto = InlineCrypto::with_packing(Some(shared.packing.clone()));
                    tcp.run(config, stats, ports, crypto)
                }
            }
            0
        })
        .map_err(|e| field("dpdk.tcp_lcores", &format!("lcore {lcore}: {e}")))?;
    }
    info!(
        "gateway {} running on DPDK: io lcores {:?}, tcp lcores {:?}, crypto lcores {:?}",
        config.name, dpdk.io_lcores, dpdk.tcp_lcores, dpdk.crypto_lcores
    );

    let source = Arc::new(DpdkStatus {
        commands: std::sync::Mutex::new(commands.clone()),
        shared: shared.clone(),
    });
    let result = runtime.block_on(main_lcore(
        &config,
        &stats,
        source,
        commands,
        &shared,
        &mut signals,
    ));

    shared.stop.store(true, Ordering::SeqCst);
    for lcore in dpdk.role_lcores() {
        eal.wait(lcore);
    }
    for (_, port, _, _) in &shared.ports {
        port.stop();
    }
    if result.is_ok() {
        info!("stopped");
    }
    result
}

/// Tells every lcore to stop when dropped (see `run`).
struct StopOnDrop(Arc<Shared>);

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        self.0.stop.store(true, Ordering::SeqCst);
    }
}

/// The main lcore: admin endpoints, reloads, and the drain on a stop signal.
async fn main_lcore(
    config: &Config,
    stats: &Stats,
    source: Arc<DpdkStatus>,
    commands: Vec<Sender<Command>>,
    shared: &Shared,
    signals: &mut Signals,
) -> Result<(), RunError> {
    crate::admin::serve(config, source).await?;
    let tell = |cmd: &dyn Fn() -> Command| {
        for c in &commands {
            let _ = c.send(cmd());
        }
    };
    let all_done = || shared.tcp_done.load(Ordering::SeqCst) == commands.len();
    let mut live = Live::of(config);
    let first = loop {
        tokio::select! {
            request = signals.next() => match request {
                Request::Reload => {
                    if let Some(new) = crate::admin::reload::reread(config, &live, stats) {
                        live = new;
                        tell(&|| Command::Live(live.clone()));
                    }
                }
                Request::Stop(signal) => break Some(signal),
            },
            // A TCP lcore stopped on its own (it cannot, short of a bug): exit.
            _ = tokio::time::sleep(Duration::from_millis(200)) => {
                if shared.tcp_done.load(Ordering::SeqCst) > 0 {
                    break None;
                }
            }
        }
    };
    let Some(signal) = first else {
        return Err(RunError::LcoreStopped);
    };
    info!(
        "{signal}: shutting down: stopped accepting on {} ingress listener(s); new sessions from peer {} are refused",
        config.ingress.len(),
        config.peer_name
    );
    tell(&|| Command::Drain(config.drain_timeout, signal));
    while !all_done() {
        tokio::select! {
            request = signals.next() => {
                if let Request::Stop(again) = request {
                    tell(&|| Command::StopNow(again));
                }
            }
            _ = tokio::time::sleep(Duration::from_millis(20)) => {}
        }
    }
    Ok(())
}

/// Carries out a step of the shutdown on the engine, and logs it; `told`: the resets went to
/// the peer on a control connection (then the last step says whether they arrived).
fn take_step<P: FramePort, C: CryptoPipe>(
    engine: &mut Engine<P, C>,
    step: DrainStep,
    now: u64,
    told: &mut bool,
) {
    match step {
        DrainStep::Draining { .. } => info!("{step}"),
        DrainStep::NothingToDrain | DrainStep::Finished { .. } => {
            info!("{step}");
            engine.shut_down(now);
        }
        DrainStep::Reset { .. } => {
            *told = engine.tunnel_is_up();
            warn!("{}", step.told_line(&engine.peer_label(), *told));
            engine.shut_down(now);
        }
        DrainStep::Stopped if *told => log_notice(&engine.peer_label(), engine.quiesced()),
        DrainStep::Stopped => {}
    }
}

/// One TCP lcore: what it shares with the rest of the gateway.
struct TcpLcore<'a> {
    shared: &'a Shared,
    idle: &'a Idle,
    inbox: Receiver<Command>,
    shard: Shard,
    /// Threads sealing records: crypto lcores, and TCP lcores that have none.
    sealers: usize,
    /// The shard's dedup store from `wan.dedup_dir`, if set.
    dedup_store: Option<crate::session::SharedStore>,
}

impl TcpLcore<'_> {
    /// Runs the shard's engine until it has shut down.
    fn run<C: CryptoPipe>(
        self,
        config: Arc<Config>,
        stats: Arc<Stats>,
        ports: Ports<RingPort>,
        crypto: C,
    ) {
        let TcpLcore {
            shared,
            idle,
            inbox,
            shard,
            sealers,
            dedup_store,
        } = self;
        let epoch = Instant::now();
        let mut adaptive = Adaptive::default();
        let clock = || epoch.elapsed().as_micros() as u64 + 1;
        let counters: Vec<Arc<PortCounters>> =
            vec![ports.lan.counters.clone(), ports.wan.counters.clone()];
        let frames = || {
            counters
                .iter()
                .map(|c| c.rx_frames.load(Ordering::Relaxed) + c.tx_frames.load(Ordering::Relaxed))
                .sum::<u64>()
        };
        let mut engine = Engine::for_shard(config, stats, ports, crypto, shard, clock())
            .with_dedup_store(dedup_store);
        // One controller for the one packing policy, on shard 0.
        let adapts = shard.index == 0;
        let mut drain = Drain::default();
        let mut told = false;
        let mut drain_timeout = Duration::ZERO;
        let mut idle_polls = 0;
        loop {
            let started = Instant::now();
            let now = clock();
            let before = frames();
            let busy = engine.poll_timed(clock);
            let adapted = adapts.then(|| adaptive.tick(now, &shared.packing, sealers));
            if let Some(choice) = adapted.flatten() {
                info!("compression (auto): now {choice}");
            }
            while let Ok(cmd) = inbox.try_recv() {
                match cmd {
                    Command::Status(reply) => {
                        let _ = reply.try_send(engine.status(now));
                    }
                    Command::Live(live) => engine.set_live(live),
                    Command::Drain(timeout, signal) => {
                        if !drain.stopping() {
                            engine.begin_drain(now);
                        }
                        drain_timeout = timeout;
                        let n = engine.session_count();
                        if let Some(step) = drain.begin(now, n, timeout, signal) {
                            take_step(&mut engine, step, now, &mut told);
                        }
                    }
                    Command::StopNow(signal) => {
                        let n = engine.session_count();
                        let cause = ResetCause::Again(signal);
                        if let Some(step) = drain.reset_now(now, n, cause) {
                            take_step(&mut engine, step, now, &mut told);
                        }
                    }
                }
            }
            // The main lcore gave up (an admin endpoint failed, or a panic): reset and go.
            if shared.stop.load(Ordering::Relaxed) {
                let n = engine.session_count();
                if let Some(step) = drain.reset_now(now, n, ResetCause::Stopping) {
                    take_step(&mut engine, step, now, &mut told);
                }
            }
            let n = engine.session_count();
            if let Some(step) = drain.poll(now, n, drain_timeout, || engine.quiesced()) {
                take_step(&mut engine, step, now, &mut told);
            }
            if drain.done() {
                break;
            }
            if busy {
                idle_polls = 0;
                shared.tcp[shard.index as usize].add(started, frames() - before);
            } else {
                idle.wait(&mut idle_polls);
            }
        }
        shared.tcp_done.fetch_add(1, Ordering::SeqCst);
    }
}

/// `lmas status` and metrics for the appliance: the TCP lcores' snapshots
/// (merged) plus each lcore role's and port's counters.
struct DpdkStatus {
    /// One per TCP lcore. A `Sender` is `Send` but not `Sync`; admin tasks share these.
    commands: std::sync::Mutex<Vec<Sender<Command>>>,
    shared: Arc<Shared>,
}

impl DpdkStatus {
    /// Each TCP lcore's snapshot; none if one did not answer.
    fn shard_statuses(&self) -> Option<Vec<Status>> {
        let replies: Vec<_> = {
            let commands = self.commands.lock().ok()?;
            commands
                .iter()
                .map(|c| {
                    let (tx, rx) = mpsc::sync_channel(1);
                    c.send(Command::Status(tx)).ok().map(|()| rx)
                })
                .collect::<Option<_>>()?
        };
        replies
            .into_iter()
            .map(|rx| rx.recv_timeout(Duration::from_secs(2)).ok())
            .collect()
    }
}

impl StatusSource for DpdkStatus {
    fn status(&self) -> Status {
        let shards = self.shard_statuses().and_then(Status::merge_shards);
        let mut status = shards.unwrap_or_default();
        let shared = &self.shared;
        let c = &mut status.counters;
        c.extend(shared.packing.stats.snapshot("compression_"));
        let ports = shared
            .ports
            .iter()
            .map(|(name, port, ends, pool)| PortFigures {
                name,
                nic: port.stats().named(),
                ends,
                mbufs_free: pool.available() as u64,
            });
        let counters = ApplianceCounters {
            io: &shared.io,
            tcp: &shared.tcp,
            crypto: &shared.crypto,
            ports: ports.collect(),
            tsc_hz: lmas_dpdk::tsc_hz(),
        };
        counters.add_to(&mut status);
        status
    }
}

//! The TCP lcore: everything between the ports and the crypto stage.
//!
//! ```text
//!  LAN port ─► Net (smoltcp) ─► lan.rs: listeners, endpoint pumps ─┐
//!                                                                   ├─ TunnelCore (session core)
//!  WAN port ─► Net (smoltcp) ─► tunnel.rs: control + N data flows ─┘        │
//!                                   ▲  records            │ messages         │
//!                                   └── crypto stage ◄────┘ (seal/open) ◄────┘
//! ```
//!
//! One [`Engine::poll`] call is one turn of the lcore's loop: move packets
//! in, apply finished crypto, advance WAN connections and LAN sessions,
//! fire timers, and move packets out. The engine owns all of its state and
//! is driven with the caller's clock (microseconds), so tests run two of
//! them back to back over in-memory wires with simulated time.

use rustc_hash::FxHashMap;
use std::sync::Arc;

use log::info;

use super::crypto::{ConnId, CryptoDone, CryptoPipe, CryptoStage};
use super::lan::{Endpoint, IngressListener, Waiting};
use super::net::Net;
use super::phy::FramePort;
use super::wan::WanConn;
use crate::admin::dpdk::DpdkConfig;
use crate::admin::status::{ConnectionStatus, TunnelStatus};
use crate::admin::{Config, Stats, Status};
use crate::protocol::handshake::Shard;
use crate::protocol::SessionId;
use crate::session::Event;
use crate::transform::PackNote;
use smoltcp::socket::tcp;

/// The ports the engine runs on.
pub struct Ports<P> {
    pub lan: P,
    pub lan_mac: [u8; 6],
    pub wan: P,
    pub wan_mac: [u8; 6],
}

pub struct Engine<P: FramePort, C: CryptoPipe> {
    pub(super) config: Arc<Config>,
    pub(super) dpdk: DpdkConfig,
    pub(super) stats: Arc<Stats>,
    pub(super) lan: Net<P>,
    pub(super) wan: Net<P>,
    pub(super) crypto: CryptoStage<C>,
    // ---- WAN side (tunnel.rs)
    pub(super) conns: FxHashMap<ConnId, WanConn>,
    pub(super) next_conn: ConnId,
    /// The tunnel's lifecycle over these connections, and the tunnel.
    pub(super) link: crate::link::Lifecycle,
    /// Listening sockets on the tunnel port (accepting gateway).
    pub(super) wan_listeners: Vec<smoltcp::iface::SocketHandle>,
    // ---- LAN side (lan.rs)
    pub(super) endpoints: FxHashMap<SessionId, Endpoint>,
    pub(super) ingress: Vec<IngressListener>,
    pub(super) waiting: Vec<Waiting>,
    /// The ingress ports' clients, by their LAN socket, from SYN to the session's end.
    pub(super) clients: crate::link::Clients<smoltcp::iface::SocketHandle>,
    /// Ingress sessions with an idle timeout.
    pub(super) idle: crate::link::IdleTimeouts,
    pub(super) started: u64,
    /// The clock at the start of the current turn (µs).
    pub(super) now: u64,
    /// Which of the gateway's TCP lcores this engine is (see `frames::steer`).
    pub(super) shard: Shard,
    /// Set by `begin_drain`: take no new sessions.
    pub(super) stopping: bool,
    /// The egress allowlist in force (swapped on reload).
    pub(super) egress: crate::admin::Allowlist,
    /// Reused id lists for walking the maps while changing them (no
    /// allocation per turn).
    pub(super) scratch_conns: Vec<ConnId>,
    pub(super) scratch_sessions: Vec<SessionId>,
    /// Per target, the peer's sessions connecting or waiting to, in open
    /// order (egress.rs).
    pub(super) connect_order: crate::link::ConnectOrder,
}

impl<P: FramePort, C: CryptoPipe> Engine<P, C> {
    /// An engine for `config` (whose datapath must be DPDK) on `ports`.
    pub fn new(
        config: Arc<Config>,
        stats: Arc<Stats>,
        ports: Ports<P>,
        crypto: C,
        now: u64,
    ) -> Self {
        Engine::for_shard(config, stats, ports, crypto, Shard::ONE, now)
    }

    /// Its tunnels keep their dedup store in `store` (opened by the caller from
    /// `wan.dedup_dir`), not in memory of their own.
    pub fn with_dedup_store(mut self, store: Option<crate::session::SharedStore>) -> Self {
        self.link = self.link.with_dedup_store(store);
        self
    }

    /// The engine of one TCP lcore among several: it owns the connections that steer to
    /// `shard` and runs its own sub-tunnel to the same shard of the peer.
    pub fn for_shard(
        config: Arc<Config>,
        stats: Arc<Stats>,
        ports: Ports<P>,
        crypto: C,
        shard: Shard,
        now: u64,
    ) -> Self {
        let crate::admin::Datapath::Dpdk(dpdk) = &config.datapath else {
            panic!("Engine::new needs a config with datapath = \"dpdk\" (a caller bug)");
        };
        let dpdk = (**dpdk).clone();
        // The stacks' initial sequence numbers and ports.
        let seed = crate::crypto::random::seed();
        let mut lan = Net::new(ports.lan, ports.lan_mac, &dpdk.lan, seed, now);
        lan.shard = shard;
        let mut wan = Net::new(
            ports.wan,
            ports.wan_mac,
            &dpdk.wan,
            seed.rotate_left(17),
            now,
        );
        wan.shard = shard;
        let link = config.link_setup(shard, None);
        let clients = crate::link::Clients::new(config.ingress_rules());
        let mut engine = Engine {
            link: crate::link::Lifecycle::new(link),
            egress: config.egress.clone(),
            scratch_conns: Vec::new(),
            scratch_sessions: Vec::new(),
            connect_order: Default::default(),
            config,
            dpdk,
            stats,
            lan,
            wan,
            crypto: CryptoStage::new(crypto),
            conns: FxHashMap::default(),
            next_conn: 1,
            wan_listeners: Vec::new(),
            endpoints: FxHashMap::default(),
            ingress: Vec::new(),
            waiting: Vec::new(),
            clients,
            idle: Default::default(),
            started: now,
            now,
            shard,
            stopping: false,
        };
        engine.start_listeners();
        engine
    }

    /// How logs name the peer: the tunnel's label (name and address) once there is one.
    pub fn peer_label(&self) -> String {
        self.link.peer()
    }

    /// One turn of the TCP lcore at `now` (simulated time). True if anything
    /// happened (the caller backs off only after turns that did nothing).
    pub fn poll(&mut self, now: u64) -> bool {
        self.poll_timed(|| now)
    }

    /// One turn of the TCP lcore, reading `clock` at its start and again
    /// before the stacks send what the turn queued: a turn on a busy core can
    /// take milliseconds, and the sockets time each segment and ACK with the
    /// `now` they are given (RTT samples, and the tunnel pacer's view of the
    /// path through them, read that much off either way).
    pub fn poll_timed(&mut self, clock: impl Fn() -> u64) -> bool {
        let now = clock();
        self.now = now;
        let mut busy = self.lan.poll(now) | self.wan.poll(now);
        busy |= self.drain_crypto(now);
        self.wan_turn(now);
        self.lan_turn(now);
        if let Some(t) = &mut self.link.tunnel {
            if t.core.poll_timeout().is_some_and(|due| due <= now) {
                t.core.handle_timeout(now);
            }
        }
        self.dispatch_events(now);
        // What this turn queued in the sockets goes out now, not next turn.
        let now = clock();
        busy |= self.lan.poll(now) | self.wan.poll(now);
        busy
    }

    /// Applies what the crypto stage finished.
    fn drain_crypto(&mut self, now: u64) -> bool {
        let mut any = false;
        while let Some(done) = self.crypto.poll() {
            any = true;
            match done {
                CryptoDone::Sealed {
                    conn,
                    record,
                    key_update,
                    packed,
                } => {
                    let Some(c) = self.conns.get_mut(&conn) else {
                        continue;
                    };
                    c.records.sealed(record);
                    self.note_packing(packed);
                    if let Some(k) = key_update {
                        info!(
                            "key update {} on a WAN connection after {} bytes",
                            k.number, k.after_bytes
                        );
                        Stats::inc(&self.stats.key_updates);
                    }
                }
                CryptoDone::Opened {
                    conn,
                    msg,
                    unpacked,
                } => {
                    let Some(c) = self.conns.get_mut(&conn) else {
                        continue;
                    };
                    c.records.opened();
                    // Before the message: the frame may be its session's last.
                    self.note_packing(unpacked);
                    if let Some(msg) = msg {
                        self.on_message(conn, msg, now);
                    }
                }
                CryptoDone::Failed { conn, error } => {
                    if self.conns.contains_key(&conn) {
                        self.fail_conn(conn, error, now);
                    }
                }
            }
        }
        any
    }

    /// Credits what packing or unpacking a frame did to its session (and the tunnel).
    fn note_packing(&mut self, note: Option<PackNote>) {
        if let (Some(n), Some(t)) = (note, &mut self.link.tunnel) {
            t.core.note_packing(n);
        }
    }

    /// Whether new sessions can be opened now: the tunnel has its control connection.
    pub fn tunnel_is_up(&self) -> bool {
        self.link.is_up()
    }

    /// Acts on what the session core reported.
    pub(super) fn dispatch_events(&mut self, now: u64) {
        while let Some(event) = self.link.tunnel.as_mut().and_then(|t| t.core.poll_event()) {
            self.on_core_event(event, now);
        }
    }

    /// Acts on one thing the session core reported.
    pub(super) fn on_core_event(&mut self, event: Event, now: u64) {
        match event {
            Event::ConnectRequested { session, target } => {
                self.egress_connect(session, target, now)
            }
            Event::Accepted(id) => self.endpoint_accepted(id),
            Event::Refused {
                session,
                reason,
                detail,
            } => self.endpoint_refused(session, reason, &detail, now),
            Event::Reset { session, reason } => {
                Stats::inc(&self.stats.sessions_reset);
                self.endpoint_reset(session, reason, now)
            }
            Event::Closed(id) => self.endpoint_closed(id, now),
            // Pumps and flows look at every session and flow each turn.
            Event::Readable(_)
            | Event::Writable(_)
            | Event::CreditFreed
            | Event::FramesReady
            | Event::ControlReady
            // The engine looks at every connection each turn.
            | Event::ControlRoom
            | Event::ReceiveRoom => {}
        }
    }

    /// The LAN port (tests and fuzzing feed and drain in-memory ports).
    pub fn lan_port_mut(&mut self) -> &mut P {
        &mut self.lan.port
    }

    /// The WAN port.
    pub fn wan_port_mut(&mut self) -> &mut P {
        &mut self.wan.port
    }

    /// Everything `lmas status` shows, in the same shape as the kernel
    /// datapath's (the WAN flows' RTT, window and retransmits from the
    /// userspace stack's sender, where the kernel's come from TCP_INFO).
    pub fn status(&self, now: u64) -> Status {
        let secs = |us: u64| now.saturating_sub(us) as f64 / 1e6;
        let tunnel = self.link.tunnel.as_ref().map(|t| {
            let endpoint = |id| {
                let ep = self.endpoints.get(&id);
                (
                    ep.and_then(|e| e.source),
                    ep.map_or(0.0, |e| secs(e.started)),
                )
            };
            let connection = |id| {
                let c = self.conns.get(&id).filter(|c| c.is_keyed())?;
                let sock = self.wan.sockets.get::<tcp::Socket>(c.handle);
                Some(ConnectionStatus {
                    local: c.local.map(|a| a.to_string()).unwrap_or_default(),
                    remote: c.remote.map(|a| a.to_string()).unwrap_or_default(),
                    age_secs: secs(c.created),
                    bytes_sent: c.records.bytes_sent,
                    bytes_received: c.records.bytes_received,
                    tcp: Some(super::wan::tcp_stats(sock)),
                    ..Default::default()
                })
            };
            TunnelStatus::of(t, t.table.is_up(), self.now, endpoint, connection)
        });
        let mut counters = self.stats.snapshot();
        counters.insert("dpdk_lan_filtered_frames".into(), self.lan.filtered);
        counters.insert("dpdk_wan_filtered_frames".into(), self.wan.filtered);

        Status {
            gateway: self.config.name.clone(),
            peer: self.config.peer_name.clone(),
            uptime_secs: secs(self.started),
            tunnel,
            counters,
            gauges: [(
                "dpdk_crypto_backlog".to_string(),
                self.crypto.backlog() as u64,
            )]
            .into(),
        }
    }

    /// Starts a drain: ingress stops accepting (its listeners close) and
    /// sessions the peer opens are refused ("shutting down"); running
    /// sessions carry on, and the tunnel keeps being repaired.
    pub fn begin_drain(&mut self, now: u64) {
        if !self.stopping {
            self.stopping = true;
            self.close_ingress(now);
        }
    }

    /// Sessions still running.
    pub fn session_count(&self) -> usize {
        self.link
            .tunnel
            .as_ref()
            .map_or(0, |t| t.core.session_count())
            + self.waiting.len()
    }

    /// Swaps in a new egress allowlist, caps and weights (config reload);
    /// running sessions carry on: new ones are checked against the
    /// allowlist, and every frame from now on is scheduled by the new shares.
    pub fn set_live(&mut self, live: crate::admin::reload::Live) {
        self.egress = live.egress;
        self.link.set_shares(live.shares);
    }

    /// Resets every running session telling the peer ("shutting down"), so
    /// it does not hold them for its grace period. The caller keeps polling
    /// until [`Engine::quiesced`] or its deadline.
    pub fn shut_down(&mut self, now: u64) {
        self.begin_drain(now);
        self.reset_waiting(now);
        if let Some(t) = &mut self.link.tunnel {
            let ids: Vec<SessionId> = t.core.snapshot().iter().map(|s| s.id).collect();
            for id in ids {
                t.core.reset(id, crate::protocol::ResetReason::ShuttingDown);
            }
        }
        self.dispatch_events(now);
    }

    /// After `shut_down`: every reset reached the control connection's socket.
    pub fn quiesced(&mut self) -> bool {
        let Some(t) = &mut self.link.tunnel else {
            return true;
        };
        let Some(c) = t.table.control().and_then(|c| self.conns.get(&c)) else {
            return true;
        };
        let queued = self.wan.socket(c.handle).send_queue();
        t.core.session_count() == 0 && c.records.drained() && queued == 0
    }
}

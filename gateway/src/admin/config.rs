//! The TOML configuration file, validated into a [`Config`].
//!
//! Every error names the file, the field and why, e.g.
//! `gw-a.toml: wan.data_flows: must be between 1 and 64 (got 0)`.
//! Relative paths are relative to the config file's directory.

use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use super::allowlist::Allowlist;
use crate::crypto::{PresharedKey, PublicKey, RekeyPolicy, StaticKeypair};
use crate::protocol::handshake::Shard;
use crate::protocol::MAX_DATA_FLOWS;
use crate::session::lane_choice::LaneUse;
use crate::session::{unsent, Limits, SharePolicy};
use crate::sources::SourceList;

#[derive(Debug)]
pub struct ConfigError {
    pub file: PathBuf,
    /// Dotted path of the offending field; empty for file-level errors.
    pub field: String,
    pub why: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.field.is_empty() {
            write!(f, "{}: {}", self.file.display(), self.why)
        } else {
            write!(f, "{}: {}: {}", self.file.display(), self.field, self.why)
        }
    }
}

impl std::error::Error for ConfigError {}

// ---- the file as written -------------------------------------------------

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    gateway: GatewaySection,
    peer: PeerSection,
    #[serde(default)]
    wan: WanSection,
    #[serde(default)]
    ingress: Vec<IngressSection>,
    #[serde(default)]
    egress: EgressSection,
    #[serde(default)]
    limits: LimitsSection,
    #[serde(default)]
    admin: AdminSection,
    dpdk: Option<super::dpdk::DpdkSection>,
    #[serde(default)]
    metrics: MetricsSection,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct MetricsSection {
    bind: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct AdminSection {
    socket: Option<PathBuf>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct GatewaySection {
    name: String,
    private_key_file: PathBuf,
    psk_file: Option<PathBuf>,
    tunnel_listen: Option<String>,
    datapath: Option<String>,
    drain_timeout_secs: Option<i64>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PeerSection {
    name: String,
    public_key: Option<String>,
    public_key_file: Option<PathBuf>,
    connect: Option<String>,
    source: Option<Vec<String>>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct WanSection {
    data_flows: Option<i64>,
    congestion: Option<String>,
    socket_buffer_bytes: Option<i64>,
    grace_period_secs: Option<i64>,
    flow_timeout_secs: Option<i64>,
    rekey_after_bytes: Option<i64>,
    rekey_interval_secs: Option<i64>,
    compression: Option<String>,
    pacing: Option<String>,
    dedup: Option<String>,
    dedup_scope: Option<String>,
    dedup_store_bytes: Option<i64>,
    dedup_dir: Option<String>,
    lane: Option<String>,
    lane_port: Option<i64>,
    lane_parity: Option<i64>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct IngressSection {
    mode: String,
    bind: String,
    target: Option<String>,
    sources: Option<Vec<String>>,
    max_sessions_per_source: Option<i64>,
    connect_timeout_secs: Option<i64>,
    idle_timeout_secs: Option<i64>,
    weight: Option<i64>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct EgressSection {
    #[serde(default)]
    allow: Vec<String>,
    connect_timeout_ms: Option<i64>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct LimitsSection {
    session_window_bytes: Option<i64>,
    global_buffer_bytes: Option<i64>,
    unsent_bytes: Option<i64>,
    unsent_ms: Option<i64>,
    receive_budget_bytes: Option<i64>,
    frame_bytes: Option<i64>,
    max_sessions: Option<i64>,
    migration_rate_mbit: Option<i64>,
    link_rate_mbit: Option<i64>,
}

// ---- the validated config --------------------------------------------------

/// How this gateway reaches its peer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TunnelEnd {
    /// Dial the peer at this address.
    Dial(SocketAddr),
    /// Wait for the peer on this address.
    Listen(SocketAddr),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IngressMode {
    /// Plain listener; every connection goes to one configured target.
    Listen { target: SocketAddr },
    /// Transparent interception (TPROXY): the target is the original
    /// destination of each intercepted connection.
    Tproxy,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ingress {
    pub bind: SocketAddr,
    pub mode: IngressMode,
    /// Who may open sessions here (`sources`); `None`: any host that reaches `bind`.
    pub sources: Option<SourceList>,
    /// Sessions one client address may hold at once (`max_sessions_per_source`); `None`: no
    /// cap of its own (`limits.max_sessions` still applies).
    pub max_per_source: Option<usize>,
    /// From the client's connection (DPDK: its SYN) until the far gateway has connected the
    /// target; a session not open by then is reset.
    pub connect_timeout: std::time::Duration,
    /// A session that moves no byte either way for this long is reset; `None`: never.
    pub idle_timeout: Option<std::time::Duration>,
    /// Its migrations' share of the tunnel against other ingresses' (`weight`, default 1;
    /// changeable by reload).
    pub weight: u32,
}

impl Ingress {
    /// Whether `other` differs in more than its weight (which a reload changes live).
    pub fn differs_beyond_weight(&self, other: &Ingress) -> bool {
        let mut other = other.clone();
        other.weight = self.weight;
        *self != other
    }

    /// Logs, at start, what ingress `index` listens for, with a warning when any host may use
    /// it: no `sources` on an address other hosts can reach.
    pub fn announce(&self, index: usize) {
        match self.mode {
            IngressMode::Listen { target } => {
                log::info!("listening on {} (mode listen) -> {target}", self.bind)
            }
            IngressMode::Tproxy => log::info!("listening on {} (mode tproxy)", self.bind),
        }
        if self.sources.is_none() && !self.bind.ip().is_loopback() {
            log::warn!(
                "ingress[{index}] on {}: no sources list, so any host that reaches it may open sessions through the tunnel (set ingress[{index}].sources)",
                self.bind
            );
        }
    }
}

/// The lane as configured (`wan.lane = "on"` or `"auto"`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LaneSetup {
    /// Whether it takes the new frames whenever it is up ("on"), or while the data flows
    /// lose ("auto": `crate::session::lane_choice`).
    pub lane_use: LaneUse,
    /// The UDP port it takes the peer's datagrams on (0: any free one, offered to the peer
    /// in the handshake); by default the tunnel port on a listening gateway, any on a
    /// dialling one.
    pub port: u16,
    /// Parity shards per frame.
    pub parity: u8,
}

/// Parity shards per frame unless `wan.lane_parity` says otherwise (`crate::lane::LaneConfig`).
const DEFAULT_LANE_PARITY: i64 = 4;

/// Which datapath moves the packets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Datapath {
    /// Kernel sockets (tokio): the portable default.
    Kernel,
    /// DPDK poll-mode lcores with a userspace TCP/IP stack: the appliance.
    Dpdk(Box<super::dpdk::DpdkConfig>),
}

#[derive(Debug, Clone)]
pub struct Config {
    pub file: PathBuf,
    pub name: String,
    pub keypair: StaticKeypair,
    pub psk: Option<PresharedKey>,
    pub tunnel: TunnelEnd,
    pub peer_name: String,
    pub peer_key: PublicKey,
    /// `peer.source`: the only addresses the tunnel port accepts connections from; `None`: any.
    pub peer_source: Option<SourceList>,
    pub data_flows: u16,
    /// `None`: pick at startup (bbr if the kernel allows it, else cubic).
    pub congestion: Option<String>,
    /// `wan.compression`: how data frames this gateway sends are packed (the peer must unpack
    /// them: older peers get them plain).
    pub compression: crate::transform::Compression,
    /// `wan.dedup`, `wan.dedup_scope`, `wan.dedup_store_bytes`: references instead of
    /// chunks the peer holds, and the store this gateway keeps for the peer's.
    pub dedup: crate::session::DedupConfig,
    /// `wan.dedup_dir`: keep the dedup store in files there (surviving a restart) instead of
    /// memory; `None`: memory.
    pub dedup_dir: Option<PathBuf>,
    /// `wan.lane`, `wan.lane_port`, `wan.lane_parity`: the tunnel's frames as datagrams with
    /// parity (`crate::lane`), when both gateways have it on; `None`: off.
    pub lane: Option<LaneSetup>,
    /// `None`: leave kernel autotuning on.
    pub socket_buffer: Option<usize>,
    /// How long sessions are held while the tunnel has no control
    /// connection (a WAN outage); zero resets them at once.
    pub grace_period: std::time::Duration,
    /// A WAN flow with data unacknowledged (or keepalives unanswered) for
    /// this long is declared dead (TCP_USER_TIMEOUT and keepalive).
    pub flow_timeout: std::time::Duration,
    /// Each connection direction moves to a new key after this many bytes
    /// or this long, whichever comes first (and always before the AEAD
    /// usage limit).
    pub rekey_after_bytes: u64,
    pub rekey_interval: std::time::Duration,
    pub ingress: Vec<Ingress>,
    pub egress: Allowlist,
    pub connect_timeout_ms: u64,
    pub limits: Limits,
    /// Caps and weights in force at start (`limits.*_rate_mbit`, `ingress[].weight`);
    /// changeable by reload.
    pub shares: SharePolicy,
    /// Unix socket for `lmas status` (default `/run/lmas/NAME.sock`).
    pub admin_socket: PathBuf,
    pub datapath: Datapath,
    /// Where the Prometheus metrics endpoint listens (`[metrics] bind`); off if `None`.
    pub metrics_bind: Option<SocketAddr>,
    /// On SIGTERM, how long running sessions may take to finish before they
    /// are reset (`gateway.drain_timeout_secs`).
    pub drain_timeout: std::time::Duration,
}

/// Congestion controls of the DPDK datapath's userspace TCP (smoltcp).
/// `wan.pacing`: whether the tunnel paces its flows as one (see `session::pacer`).
pub const DEFAULT_PACING: &str = "tunnel";

pub const DPDK_CONGESTION: [&str; 4] = ["bbr", "cubic", "reno", "none"];
const DEFAULT_DATA_FLOWS: i64 = 8;
/// Per WAN flow; forced past net.core.{w,r}mem_max where we may. A data flow
/// must hold its share of the bandwidth-delay product, and more on a veth
/// with XDP, where each packet takes a whole page of receive buffer.
const DEFAULT_SOCKET_BUFFER: i64 = 32 << 20;
/// Long enough for a migration's final round (stop-and-copy) to finish; the
/// systemd unit's TimeoutStopSec must stay above it.
const DEFAULT_DRAIN_TIMEOUT_SECS: i64 = 30;
/// `ingress[].weight`: shares of 1 to 100 (a weight's turn is that many frames).
const MAX_WEIGHT: i64 = 100;
/// `limits.*_rate_mbit`: up to 400 Gbit/s.
const MAX_RATE_MBIT: i64 = 400_000;
/// Waiting for the tunnel and the far gateway's connect to the target both fit in it (each
/// bounded by `egress.connect_timeout_ms`, 10 s by default).
const DEFAULT_INGRESS_CONNECT_TIMEOUT_SECS: i64 = 30;

/// What both datapaths build from the config the same way.
impl Config {
    /// Logs, at start, that the tunnel port at `addr` waits for the peer (and from where).
    pub fn announce_tunnel_port(&self, addr: std::net::SocketAddr) {
        let from = crate::link::admission::only_from(self.peer_source.as_ref());
        log::info!("waiting for peer {} on {addr}{from}", self.peer_name);
    }

    /// Our keys and what we expect of the peer, for a connection's handshake as `shard` of
    /// this gateway.
    pub fn identity(&self, shard: Shard) -> crate::link::Identity<'_> {
        crate::link::Identity {
            local: &self.keypair,
            peer: &self.peer_key,
            psk: self.psk.as_ref(),
            shard,
            dedup: self.dedup.offer(),
            // The datapath offers its lane once it has bound the port.
            lane: None,
        }
    }

    /// When a connection's records rekey (`wan.rekey_after_bytes`, `wan.rekey_interval_secs`).
    pub fn rekey(&self) -> RekeyPolicy {
        RekeyPolicy {
            after_bytes: self.rekey_after_bytes,
            after: self.rekey_interval,
        }
    }

    /// A new tunnel's setup: this gateway's limits, grace period and dedup, as `shard`, with
    /// the caps and weights in force and the dedup store it keeps (if any).
    pub fn tunnel_setup(
        &self,
        side: crate::session::Side,
        flows: usize,
        shard: Shard,
        shares: SharePolicy,
        dedup_store: Option<crate::session::SharedStore>,
    ) -> crate::link::TunnelSetup {
        crate::link::TunnelSetup {
            side,
            limits: self.limits.clone(),
            flows,
            grace: self.grace_period,
            shard,
            shares,
            dedup: self.dedup,
            dedup_store,
        }
    }

    /// Who this gateway is and how it reaches the peer, for the tunnel's lifecycle on `shard`
    /// (new tunnels keep their dedup store in `dedup_store`, or in memory with `None`).
    pub fn link_setup(
        &self,
        shard: Shard,
        dedup_store: Option<crate::session::SharedStore>,
    ) -> crate::link::LinkSetup {
        let (side, flows) = (crate::session::Side::Dialer, self.data_flows as usize);
        crate::link::LinkSetup {
            name: self.name.clone(),
            peer_name: self.peer_name.clone(),
            dial: match self.tunnel {
                TunnelEnd::Dial(addr) => Some(addr),
                TunnelEnd::Listen(_) => None,
            },
            data_flows: self.data_flows,
            tunnel: self.tunnel_setup(side, flows, shard, self.shares.clone(), dedup_store),
        }
    }

    /// What the ingress ports' client table needs of each `[[ingress]]`.
    pub fn ingress_rules(&self) -> Vec<crate::link::IngressRules> {
        let rules = self.ingress.iter().map(|i| crate::link::IngressRules {
            bind: i.bind,
            sources: i.sources.clone(),
            max_per_source: i.max_per_source,
        });
        rules.collect()
    }

    /// The store `wan.dedup_dir` asks for, for `shard` of the gateway (a directory of its own,
    /// `shard-N` under it, when the gateway has more than one): `None` when no directory is
    /// set or this gateway offers no store. Opened once, when the gateway starts, so that a
    /// directory it cannot use stops the start, and kept for every tunnel after.
    pub fn open_dedup_store(
        &self,
        shard: Shard,
    ) -> Result<Option<crate::session::SharedStore>, crate::dedup::DiskStoreError> {
        let Some(dir) = self.dedup_dir.as_deref() else {
            return Ok(None);
        };
        if self.dedup.offered_store() == 0 {
            return Ok(None);
        }
        let dir = match shard.count {
            0 | 1 => dir.to_owned(),
            _ => dir.join(format!("shard-{}", shard.index)),
        };
        let store = crate::dedup::DiskStore::open(&dir, self.dedup.store_bytes)?;
        let usage = crate::dedup::ChunkStore::usage(&store);
        log::info!(
            "dedup store {}: {} chunks, {} of {} bytes",
            dir.display(),
            usage.chunks,
            usage.bytes,
            usage.capacity
        );
        Ok(Some(std::sync::Arc::new(std::sync::Mutex::new(store))))
    }
}

impl Config {
    /// Reads and validates a config file, including the key files it names.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        // Whoever can write the config decides whom the gateway trusts and where it connects.
        crate::crypto::check_trusted(path).map_err(|e| ConfigError {
            file: path.to_path_buf(),
            field: String::new(),
            why: match e {
                crate::crypto::KeyError::Untrusted { why, .. } => why,
                e => format!("cannot read: {e}"),
            },
        })?;
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
            file: path.to_path_buf(),
            field: String::new(),
            why: format!("cannot read: {e}"),
        })?;
        Self::parse(path, &text)
    }

    /// Validates config text as if read from `path`.
    pub fn parse(path: &Path, text: &str) -> Result<Config, ConfigError> {
        let err = |field: &str, why: String| ConfigError {
            file: path.to_path_buf(),
            field: field.to_string(),
            why,
        };
        // Two steps: syntax errors point at the line and column; a value of
        // the wrong type or an unknown key then names its field by path
        // (e.g. `metrics.bind`), which toml's own errors do not.
        let table: toml::Table = text
            .parse()
            .map_err(|e: toml::de::Error| err("", e.to_string().trim_end().replace('\n', " ")))?;
        let file: File = serde_path_to_error::deserialize(table).map_err(|e| {
            let path = e.path().to_string();
            let why = e.into_inner().message().to_string();
            err(if path == "." { "" } else { &path }, why)
        })?;
        let dir = path.parent().unwrap_or(Path::new("."));
        let resolve = |p: &Path| {
            if p.is_absolute() {
                p.to_path_buf()
            } else {
                dir.join(p)
            }
        };

        let name =
            non_empty("gateway.name", &file.gateway.name).map_err(|w| err("gateway.name", w))?;
        let key_path = resolve(&file.gateway.private_key_file);
        let keypair = StaticKeypair::load(&key_path)
            .map_err(|e| err("gateway.private_key_file", e.to_string()))?;
        let psk = file
            .gateway
            .psk_file
            .as_ref()
            .map(|p| PresharedKey::load(&resolve(p)))
            .transpose()
            .map_err(|e| err("gateway.psk_file", e.to_string()))?;

        let listen = file
            .gateway
            .tunnel_listen
            .as_deref()
            .map(|s| addr(s).map_err(|w| err("gateway.tunnel_listen", w)))
            .transpose()?;
        let connect = file
            .peer
            .connect
            .as_deref()
            .map(|s| addr(s).map_err(|w| err("peer.connect", w)))
            .transpose()?;
        let tunnel = match (listen, connect) {
            (Some(l), None) => TunnelEnd::Listen(l),
            (None, Some(c)) => TunnelEnd::Dial(c),
            (Some(_), Some(_)) => {
                return Err(err(
                    "peer.connect",
                    "set either peer.connect (this gateway dials) or gateway.tunnel_listen (the peer dials in), not both".into(),
                ))
            }
            (None, None) => {
                return Err(err(
                    "peer.connect",
                    "missing: set peer.connect (this gateway dials) or gateway.tunnel_listen (the peer dials in)".into(),
                ))
            }
        };
        let peer_name = non_empty("peer.name", &file.peer.name).map_err(|w| err("peer.name", w))?;
        let peer_key = match (&file.peer.public_key, &file.peer.public_key_file) {
            (Some(text), None) => PublicKey::parse(text, "peer.public_key").map_err(|_| {
                err(
                    "peer.public_key",
                    "not a base64-encoded 32-byte key (copy the peer's KEY.pub)".into(),
                )
            })?,
            (None, Some(p)) => {
                let p = resolve(p);
                crate::crypto::check_trusted(&p)
                    .map_err(|e| err("peer.public_key_file", e.to_string()))?;
                let text = std::fs::read_to_string(&p)
                    .map_err(|e| err("peer.public_key_file", format!("{}: {e}", p.display())))?;
                PublicKey::parse(&text, "peer.public_key_file").map_err(|_| {
                    err(
                        "peer.public_key_file",
                        format!("{}: not a base64-encoded 32-byte key", p.display()),
                    )
                })?
            }
            (Some(_), Some(_)) => {
                return Err(err(
                    "peer.public_key",
                    "set public_key or public_key_file, not both".into(),
                ))
            }
            (None, None) => {
                return Err(err(
                    "peer.public_key",
                    "missing: set public_key (the peer's KEY.pub contents) or public_key_file"
                        .into(),
                ))
            }
        };
        if peer_key == keypair.public {
            return Err(err(
                "peer.public_key",
                "is this gateway's own public key".into(),
            ));
        }

        let is_dpdk = match file.gateway.datapath.as_deref() {
            None | Some("kernel") => false,
            Some("dpdk") => true,
            Some(other) => {
                return Err(err(
                    "gateway.datapath",
                    format!("{other:?}: must be \"kernel\" or \"dpdk\""),
                ))
            }
        };
        let peer_source = file
            .peer
            .source
            .as_deref()
            .map(|list| source_list(list, is_dpdk))
            .transpose()
            .map_err(|w| err("peer.source", w))?;
        if peer_source.is_some() && matches!(tunnel, TunnelEnd::Dial(_)) {
            return Err(err(
                "peer.source",
                "only a gateway that accepts the tunnel (gateway.tunnel_listen) checks sources; this one dials peer.connect".into(),
            ));
        }
        let data_flows = in_range(
            file.wan.data_flows.unwrap_or(DEFAULT_DATA_FLOWS),
            1,
            i64::from(MAX_DATA_FLOWS),
        )
        .map_err(|w| err("wan.data_flows", w))? as u16;
        let compression =
            crate::transform::Compression::parse(file.wan.compression.as_deref().unwrap_or("auto"))
                .map_err(|w| err("wan.compression", w))?;
        let dedup = {
            use crate::session::dedup_config::{MAX_STORE_BYTES, MIN_STORE_BYTES};
            use crate::session::{DedupConfig, DedupMode, DedupScope};
            let default = DedupConfig::default();
            DedupConfig {
                mode: match &file.wan.dedup {
                    Some(m) => DedupMode::parse(m).map_err(|w| err("wan.dedup", w))?,
                    None => default.mode,
                },
                scope: match &file.wan.dedup_scope {
                    Some(s) => DedupScope::parse(s).map_err(|w| err("wan.dedup_scope", w))?,
                    None => default.scope,
                },
                store_bytes: match file.wan.dedup_store_bytes {
                    Some(b) => in_range(b, MIN_STORE_BYTES as i64, MAX_STORE_BYTES as i64)
                        .map_err(|w| err("wan.dedup_store_bytes", w))?
                        as u64,
                    None => default.store_bytes,
                },
            }
        };
        let lane = match file.wan.lane.as_deref().unwrap_or("off") {
            "off" => {
                for (field, set) in [
                    ("wan.lane_port", file.wan.lane_port.is_some()),
                    ("wan.lane_parity", file.wan.lane_parity.is_some()),
                ] {
                    if set {
                        return Err(err(field, "is set, but wan.lane is \"off\": set wan.lane = \"on\" or \"auto\", or remove it".into()));
                    }
                }
                None
            }
            "on" | "auto" if is_dpdk => {
                return Err(err(
                    "wan.lane",
                    "the DPDK datapath has no lane yet: set it on kernel gateways only (a DPDK peer of a kernel gateway with a lane is fine: they agree on none)".into(),
                ))
            }
            on @ ("on" | "auto") => Some(LaneSetup {
                lane_use: if on == "on" {
                    LaneUse::Always
                } else {
                    LaneUse::Auto
                },
                port: match file.wan.lane_port {
                    Some(p) => in_range(p, 0, i64::from(u16::MAX))
                        .map_err(|w| err("wan.lane_port", w))? as u16,
                    None => match tunnel {
                        TunnelEnd::Listen(a) => a.port(),
                        TunnelEnd::Dial(_) => 0,
                    },
                },
                parity: in_range(
                    file.wan.lane_parity.unwrap_or(DEFAULT_LANE_PARITY),
                    0,
                    32,
                )
                .map_err(|w| err("wan.lane_parity", w))? as u8,
            }),
            other => {
                return Err(err(
                    "wan.lane",
                    format!("{other:?} is not \"on\", \"auto\" or \"off\""),
                ))
            }
        };
        let dedup_dir = match file.wan.dedup_dir {
            None => None,
            Some(_) if dedup.offered_store() == 0 => {
                return Err(err(
                    "wan.dedup_dir",
                    "is set, but wan.dedup is \"off\": set wan.dedup = \"auto\" or remove it"
                        .into(),
                ))
            }
            Some(d) if !Path::new(&d).is_absolute() => {
                return Err(err(
                    "wan.dedup_dir",
                    format!("{d:?} is not an absolute path"),
                ))
            }
            Some(d) => Some(PathBuf::from(d)),
        };
        let congestion = match file.wan.congestion {
            Some(c)
                if c.is_empty()
                    || c.len() > 15
                    || !c.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') =>
            {
                return Err(err(
                    "wan.congestion",
                    format!("{c:?} is not a congestion control name (e.g. bbr, cubic)"),
                ))
            }
            Some(c) if is_dpdk => {
                if !DPDK_CONGESTION.contains(&c.as_str()) {
                    return Err(err(
                        "wan.congestion",
                        format!(
                            "{c:?} is not available in the DPDK datapath's TCP stack (available: {})",
                            DPDK_CONGESTION.join(" ")
                        ),
                    ));
                }
                Some(c)
            }
            Some(c) => {
                let available = super::host::available_congestion();
                if !available.is_empty() && !available.contains(&c) {
                    return Err(err(
                        "wan.congestion",
                        format!(
                            "{c:?} is not available on this kernel (available: {})",
                            available.join(" ")
                        ),
                    ));
                }
                Some(c)
            }
            None => None,
        };
        let socket_buffer = match file
            .wan
            .socket_buffer_bytes
            .unwrap_or(DEFAULT_SOCKET_BUFFER)
        {
            0 => None,
            n => Some(
                in_range(n, 64 << 10, 1 << 30).map_err(|w| err("wan.socket_buffer_bytes", w))?
                    as usize,
            ),
        };

        let grace_period = in_range(file.wan.grace_period_secs.unwrap_or(60), 0, 3600)
            .map_err(|w| err("wan.grace_period_secs", w))? as u64;
        let flow_timeout = in_range(file.wan.flow_timeout_secs.unwrap_or(10), 2, 600)
            .map_err(|w| err("wan.flow_timeout_secs", w))? as u64;
        let rekey_after_bytes = in_range(
            file.wan.rekey_after_bytes.unwrap_or(16 << 30),
            1 << 20,
            1 << 40,
        )
        .map_err(|w| err("wan.rekey_after_bytes", w))? as u64;
        let rekey_interval = in_range(file.wan.rekey_interval_secs.unwrap_or(3600), 1, 86400)
            .map_err(|w| err("wan.rekey_interval_secs", w))? as u64;
        let mut ingress = Vec::new();
        for (i, section) in file.ingress.iter().enumerate() {
            let field = |f: &str| format!("ingress[{i}].{f}");
            let bind = addr(&section.bind).map_err(|w| err(&field("bind"), w))?;
            if let Some(j) = ingress
                .iter()
                .position(|other: &Ingress| other.bind == bind)
            {
                return Err(err(
                    &field("bind"),
                    format!("{bind} is already used by ingress[{j}]"),
                ));
            }
            let mode = match (section.mode.as_str(), &section.target) {
                ("listen", Some(t)) => IngressMode::Listen {
                    target: addr(t).map_err(|w| err(&field("target"), w))?,
                },
                ("listen", None) => {
                    return Err(err(
                        &field("target"),
                        "missing: listen mode needs a target".into(),
                    ))
                }
                ("tproxy", None) => IngressMode::Tproxy,
                ("tproxy", Some(_)) => {
                    return Err(err(
                        &field("target"),
                        "tproxy mode takes the original destination; remove target".into(),
                    ))
                }
                (other, _) => {
                    return Err(err(
                        &field("mode"),
                        format!("{other:?}: must be \"listen\" or \"tproxy\""),
                    ))
                }
            };
            let sources = section
                .sources
                .as_deref()
                .map(|list| source_list(list, is_dpdk))
                .transpose()
                .map_err(|w| err(&field("sources"), w))?;
            let max_per_source = section
                .max_sessions_per_source
                .map(|n| in_range(n, 1, 1 << 20))
                .transpose()
                .map_err(|w| err(&field("max_sessions_per_source"), w))?
                .map(|n| n as usize);
            let connect_timeout = in_range(
                section
                    .connect_timeout_secs
                    .unwrap_or(DEFAULT_INGRESS_CONNECT_TIMEOUT_SECS),
                1,
                3600,
            )
            .map_err(|w| err(&field("connect_timeout_secs"), w))?;
            let idle_timeout = in_range(section.idle_timeout_secs.unwrap_or(0), 0, 7 * 86400)
                .map_err(|w| err(&field("idle_timeout_secs"), format!("{w}; 0 turns it off")))?;
            let weight = in_range(section.weight.unwrap_or(1), 1, MAX_WEIGHT)
                .map_err(|w| err(&field("weight"), w))? as u32;
            ingress.push(Ingress {
                bind,
                mode,
                sources,
                max_per_source,
                connect_timeout: std::time::Duration::from_secs(connect_timeout as u64),
                idle_timeout: (idle_timeout > 0)
                    .then(|| std::time::Duration::from_secs(idle_timeout as u64)),
                weight,
            });
        }

        let egress = Allowlist::parse(&file.egress.allow).map_err(|w| err("egress.allow", w))?;
        let connect_timeout_ms = in_range(
            file.egress.connect_timeout_ms.unwrap_or(10_000),
            100,
            600_000,
        )
        .map_err(|w| err("egress.connect_timeout_ms", w))? as u64;

        let metrics_bind = file
            .metrics
            .bind
            .as_deref()
            .map(|s| addr(s).map_err(|w| err("metrics.bind", w)))
            .transpose()?;
        let drain_timeout = in_range(
            file.gateway
                .drain_timeout_secs
                .unwrap_or(DEFAULT_DRAIN_TIMEOUT_SECS),
            0,
            3600,
        )
        .map_err(|w| err("gateway.drain_timeout_secs", w))? as u64;
        let admin_socket = match &file.admin.socket {
            Some(p) if p.as_os_str().is_empty() => {
                return Err(err("admin.socket", "must not be empty".into()))
            }
            Some(p) => resolve(p),
            None => PathBuf::from(format!("/run/lmas/{name}.sock")),
        };
        let defaults = Limits::default();
        let l = &file.limits;
        let session_window = in_range(
            l.session_window_bytes
                .unwrap_or(defaults.session_window as i64),
            64 << 10,
            1 << 30,
        )
        .map_err(|w| err("limits.session_window_bytes", w))? as u64;
        let global_buffer = in_range(
            l.global_buffer_bytes
                .unwrap_or(defaults.global_buffer as i64),
            session_window as i64,
            64 << 30,
        )
        .map_err(|w| {
            err(
                "limits.global_buffer_bytes",
                format!("{w} (at least session_window_bytes)"),
            )
        })? as u64;
        // The default never exceeds a smaller configured window.
        let unsent_default = defaults.unsent_buffer.min(session_window) as i64;
        let unsent_buffer = in_range(
            l.unsent_bytes.unwrap_or(unsent_default),
            64 << 10,
            session_window as i64,
        )
        .map_err(|w| {
            err(
                "limits.unsent_bytes",
                format!("{w} (at most session_window_bytes)"),
            )
        })? as u64;
        // What a migration may hold unsent, in time at the tunnel's rate: the
        // DPDK engine reads its LAN in a busy loop's turns and needs more.
        let unsent_default_ms = if is_dpdk {
            unsent::DPDK_UNSENT_TIME_US
        } else {
            unsent::UNSENT_TIME_US
        } / 1000;
        let unsent_time_us = in_range(l.unsent_ms.unwrap_or(unsent_default_ms as i64), 1, 1000)
            .map_err(|w| err("limits.unsent_ms", format!("{w} (milliseconds)")))?
            as u64
            * 1000;
        // By default as much as this gateway lets its own senders hold.
        let receive_budget = in_range(
            l.receive_budget_bytes.unwrap_or(global_buffer as i64),
            1 << 20,
            64 << 30,
        )
        .map_err(|w| err("limits.receive_budget_bytes", w))? as u64;
        let frame_len = in_range(
            l.frame_bytes.unwrap_or(defaults.frame_len as i64),
            1024,
            128 << 10,
        )
        .map_err(|w| err("limits.frame_bytes", w))? as usize;
        let max_sessions = in_range(
            l.max_sessions.unwrap_or(defaults.max_sessions as i64),
            1,
            1 << 20,
        )
        .map_err(|w| err("limits.max_sessions", w))? as usize;
        let limits = Limits {
            session_window,
            global_buffer,
            unsent_buffer,
            unsent_time_us,
            receive_budget,
            frame_len,
            max_sessions,
            ack_every: defaults.ack_every.min(session_window / 4),
            ack_delay_us: defaults.ack_delay_us,
        };
        let rate = |field: &str, mbit: Option<i64>| {
            mbit.map(|m| in_range(m, 1, MAX_RATE_MBIT).map(|m| m as u64 * 1_000_000 / 8))
                .transpose()
                .map_err(|w| err(field, format!("{w} (Mbit/s)")))
        };
        let shares = SharePolicy {
            migration_rate: rate("limits.migration_rate_mbit", l.migration_rate_mbit)?,
            link_rate: rate("limits.link_rate_mbit", l.link_rate_mbit)?,
            weights: ingress.iter().map(|i| i.weight).collect(),
            pace_tunnel: match file.wan.pacing.as_deref().unwrap_or(DEFAULT_PACING) {
                "tunnel" => true,
                "flows" => false,
                other => {
                    return Err(err(
                        "wan.pacing",
                        format!("{other:?} is not \"tunnel\" or \"flows\""),
                    ))
                }
            },
        };

        if lane.is_some_and(|l| l.lane_use == LaneUse::Auto) && !shares.pace_tunnel {
            return Err(err(
                "wan.lane",
                "\"auto\" chooses from the data flows' losses, which only the tunnel's pacer reads: set wan.pacing = \"tunnel\" (the default), or wan.lane = \"on\"".into(),
            ));
        }

        let datapath = match (is_dpdk, &file.dpdk) {
            (false, _) => Datapath::Kernel,
            (true, None) => {
                return Err(err(
                    "dpdk",
                    "missing: gateway.datapath = \"dpdk\" needs a [dpdk] section".into(),
                ))
            }
            (true, Some(section)) => {
                let d = section.validate().map_err(|(f, w)| err(&f, w))?;
                d.check_against(&tunnel, &ingress)
                    .map_err(|(f, w)| err(&f, w))?;
                Datapath::Dpdk(Box::new(d))
            }
        };

        Ok(Config {
            datapath,
            file: path.to_path_buf(),
            name,
            keypair,
            psk,
            tunnel,
            peer_name,
            peer_key,
            peer_source,
            data_flows,
            congestion,
            compression,
            dedup,
            dedup_dir,
            lane,
            socket_buffer,
            grace_period: std::time::Duration::from_secs(grace_period),
            flow_timeout: std::time::Duration::from_secs(flow_timeout),
            rekey_after_bytes,
            rekey_interval: std::time::Duration::from_secs(rekey_interval),
            ingress,
            egress,
            connect_timeout_ms,
            limits,
            shares,
            admin_socket,
            metrics_bind,
            drain_timeout: std::time::Duration::from_secs(drain_timeout),
        })
    }
}

fn non_empty(_field: &str, s: &str) -> Result<String, String> {
    let s = s.trim();
    if s.is_empty() || s.len() > 64 {
        return Err("must be 1 to 64 characters".into());
    }
    Ok(s.to_string())
}

fn addr(s: &str) -> Result<SocketAddr, String> {
    s.parse()
        .map_err(|_| format!("{s:?} is not an IP:PORT address (e.g. 127.0.0.1:7700 or [::1]:7700)"))
}

/// A non-empty source list; IPv4 only for the DPDK datapath.
fn source_list(items: &[String], is_dpdk: bool) -> Result<SourceList, String> {
    if items.is_empty() {
        return Err("an empty list lets nobody in; list addresses or prefixes, or remove the field to allow any".into());
    }
    let list = SourceList::parse(items)?;
    if is_dpdk && list.has_ipv6() {
        return Err(format!("[{list}]: the DPDK datapath is IPv4-only"));
    }
    Ok(list)
}

fn in_range(v: i64, lo: i64, hi: i64) -> Result<i64, String> {
    if (lo..=hi).contains(&v) {
        Ok(v)
    } else {
        Err(format!("must be between {lo} and {hi} (got {v})"))
    }
}

/// A key file and a minimal valid config text, for unit tests here and in
/// other admin modules.
#[cfg(test)]
pub(crate) mod test_support {
    use super::*;
    use std::fs;

    pub struct Dir(PathBuf);
    impl Drop for Dir {
        fn drop(&mut self) {
            let _ = fs::remove_dir_all(&self.0);
        }
    }

    pub fn setup(tag: &str) -> (Dir, PathBuf, String) {
        let dir = std::env::temp_dir().join(format!("lmas-cfg-{tag}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        StaticKeypair::generate()
            .unwrap()
            .write(&dir.join("a.key"))
            .unwrap();
        let peer = StaticKeypair::generate().unwrap().public.to_string();
        let path = dir.join("a.toml");
        (Dir(dir), path, peer)
    }

    pub fn base(peer: &str) -> String {
        format!(
            r#"
[gateway]
name = "gw-a"
private_key_file = "a.key"
[peer]
name = "gw-b"
public_key = "{peer}"
connect = "127.0.0.1:7700"
[[ingress]]
mode = "listen"
bind = "127.0.0.1:6000"
target = "127.0.0.1:5000"
"#
        )
    }
}

#[cfg(test)]
mod tests {
    use super::test_support::{base, setup};
    use super::*;

    #[test]
    fn minimal_config_gets_defaults() {
        let (_d, path, peer) = setup("ok");
        let c = Config::parse(&path, &base(&peer)).unwrap();
        assert_eq!(c.data_flows, 8);
        assert_eq!(c.tunnel, TunnelEnd::Dial("127.0.0.1:7700".parse().unwrap()));
        assert!(c.egress.is_empty());
        assert_eq!(c.ingress.len(), 1);
        assert_eq!(c.metrics_bind, None, "metrics are off by default");
        assert_eq!(c.drain_timeout, std::time::Duration::from_secs(30));
        let text = base(&peer).replace(
            "[peer]",
            "drain_timeout_secs = 5\n[metrics]\nbind = \"127.0.0.1:9108\"\n[peer]",
        );
        let c = Config::parse(&path, &text).unwrap();
        assert_eq!(c.metrics_bind, Some("127.0.0.1:9108".parse().unwrap()));
        assert_eq!(c.drain_timeout, std::time::Duration::from_secs(5));
        assert_eq!(c.lane, None, "the lane is off by default");
        let text = base(&peer).replace("[peer]", "[wan]\nlane = \"on\"\n[peer]");
        let c = Config::parse(&path, &text).unwrap();
        assert_eq!(
            c.lane,
            Some(LaneSetup {
                lane_use: LaneUse::Always,
                port: 0,
                parity: 4
            }),
            "a dialling gateway takes any free port"
        );
        let text = base(&peer).replace("[peer]", "[wan]\nlane = \"auto\"\n[peer]");
        let c = Config::parse(&path, &text).unwrap();
        assert_eq!(c.lane.map(|l| l.lane_use), Some(LaneUse::Auto));
        let text = base(&peer).replace(
            "[peer]",
            "[wan]\nlane = \"auto\"\npacing = \"flows\"\n[peer]",
        );
        let e = Config::parse(&path, &text).unwrap_err().to_string();
        assert!(e.contains("wan.lane") && e.contains("pacing"), "{e}");
    }

    #[test]
    fn the_unsent_budgets_time_defaults_by_datapath_and_can_be_set() {
        let (_d, path, peer) = setup("unsent");
        let kernel = Config::parse(&path, &base(&peer)).unwrap();
        assert_eq!(kernel.limits.unsent_time_us, 5_000);
        let dpdk = base(&peer)
            .replace("[peer]", "datapath = \"dpdk\"\n[peer]")
            .replace("127.0.0.1:6000", "10.0.1.1:6000")
            + "[dpdk.lan]\ndevice = \"net_null0\"\naddress = \"10.0.1.1/24\"\n\
               [dpdk.wan]\ndevice = \"net_null1\"\naddress = \"10.0.2.1/24\"\n";
        let c = Config::parse(&path, &dpdk).unwrap();
        assert_eq!(c.limits.unsent_time_us, 20_000);
        let set = format!("{}[limits]\nunsent_ms = 12\n", base(&peer));
        assert_eq!(
            Config::parse(&path, &set).unwrap().limits.unsent_time_us,
            12_000
        );
        let e = Config::parse(&path, &format!("{}[limits]\nunsent_ms = 0\n", base(&peer)))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("limits.unsent_ms") && e.contains("milliseconds"),
            "{e}"
        );
    }

    #[test]
    fn errors_name_the_field() {
        let (_d, path, peer) = setup("bad");
        let cases = [
            ("[wan]\ndata_flows = 0\n", "wan.data_flows"),
            ("[wan]\ndata_flows = 65\n", "wan.data_flows"),
            ("[wan]\nlane = \"yes\"\n", "wan.lane"),
            ("[wan]\nlane_port = 7000\n", "wan.lane_port"),
            ("[wan]\nlane = \"on\"\nlane_port = 70000\n", "wan.lane_port"),
            (
                "[wan]\nlane = \"on\"\nlane_parity = 33\n",
                "wan.lane_parity",
            ),
            ("[egress]\nallow = [\"nope\"]\n", "egress.allow"),
            ("[wan]\nbogus = 1\n", "bogus"),
            (
                "[limits]\nsession_window_bytes = 1\n",
                "limits.session_window_bytes",
            ),
            ("[wan]\ncongestion = \"a b\"\n", "wan.congestion"),
            ("[wan]\ncompression = \"gzip\"\n", "wan.compression"),
            ("[wan]\ndedup = \"on\"\n", "wan.dedup"),
            ("[wan]\ndedup_scope = \"global\"\n", "wan.dedup_scope"),
            ("[wan]\ndedup_store_bytes = 1024\n", "wan.dedup_store_bytes"),
            ("[wan]\ndedup_dir = \"/var/lib/x\"\n", "wan.dedup_dir"),
            (
                "[wan]\ndedup = \"auto\"\ndedup_dir = \"rel/x\"\n",
                "wan.dedup_dir",
            ),
            ("[wan]\npacing = \"bbr\"\n", "wan.pacing"),
            ("[wan]\ncompression = \"zstd:40\"\n", "wan.compression"),
            ("[limits]\nunsent_bytes = 1\n", "limits.unsent_bytes"),
            ("[wan]\ncongestion = \"nosuchcc\"\n", "wan.congestion"),
            (
                "[[ingress]]\nmode = \"tproxy\"\nbind = \"127.0.0.1:6000\"\n",
                "ingress[1].bind",
            ),
            ("[metrics]\nbind = \"localhost:9108\"\n", "metrics.bind"),
            ("[metrics]\nbind = 9108\n", "metrics.bind"),
            ("[metrics]\nport = 9108\n", "port"),
        ];
        for (extra, field) in cases {
            let text = format!("{}{extra}", base(&peer));
            let e = Config::parse(&path, &text).unwrap_err().to_string();
            assert!(e.contains(field), "{extra:?} -> {e}");
            assert!(e.contains("a.toml"), "{e}");
        }
        let e =
            Config::parse(&path, &base(&peer).replace("127.0.0.1:6000", "localhost")).unwrap_err();
        assert_eq!(e.field, "ingress[0].bind");
        let e = Config::parse(&path, &base(&peer).replace("a.key", "missing.key")).unwrap_err();
        assert_eq!(e.field, "gateway.private_key_file");
        let e = Config::parse(&path, &base(&peer).replace(&peer, "AAAA")).unwrap_err();
        assert_eq!(e.field, "peer.public_key");
        let e = Config::parse(
            &path,
            &base(&peer).replace("[peer]", "drain_timeout_secs = -1\n[peer]"),
        )
        .unwrap_err();
        assert_eq!(e.field, "gateway.drain_timeout_secs");
        let e = Config::parse(&path, "[gateway\n").unwrap_err();
        assert!(e.to_string().contains("line 1"), "{e}");
    }

    #[test]
    fn ingress_limits_and_source_lists() {
        let (_d, path, peer) = setup("limits");
        let c = Config::parse(&path, &base(&peer)).unwrap();
        let i = &c.ingress[0];
        assert_eq!(i.sources, None, "any source by default");
        assert_eq!(i.max_per_source, None);
        assert_eq!(i.connect_timeout, std::time::Duration::from_secs(30));
        assert_eq!(i.idle_timeout, None);
        assert_eq!(c.peer_source, None);
        let text = format!(
            "{}sources = [\"10.0.1.0/24\", \"10.0.2.7\"]\nmax_sessions_per_source = 9\nconnect_timeout_secs = 5\nidle_timeout_secs = 600\n",
            base(&peer)
        );
        let c = Config::parse(&path, &text).unwrap();
        let i = &c.ingress[0];
        assert!(i
            .sources
            .as_ref()
            .unwrap()
            .contains("10.0.1.9".parse().unwrap()));
        assert!(!i
            .sources
            .as_ref()
            .unwrap()
            .contains("10.0.3.9".parse().unwrap()));
        assert_eq!(i.max_per_source, Some(9));
        assert_eq!(i.connect_timeout, std::time::Duration::from_secs(5));
        assert_eq!(i.idle_timeout, Some(std::time::Duration::from_secs(600)));

        // peer.source belongs to the accepting gateway.
        let listen = base(&peer)
            .replace(
                "connect = \"127.0.0.1:7700\"\n",
                "source = [\"192.0.2.0/24\"]\n",
            )
            .replace("[peer]", "tunnel_listen = \"127.0.0.1:7700\"\n[peer]");
        let c = Config::parse(&path, &listen).unwrap();
        assert!(c
            .peer_source
            .unwrap()
            .contains("192.0.2.1".parse().unwrap()));

        let cases = [
            (base(&peer) + "sources = []\n", "ingress[0].sources"),
            (
                base(&peer) + "sources = [\"10.0.0.0/40\"]\n",
                "ingress[0].sources",
            ),
            (
                base(&peer) + "max_sessions_per_source = 0\n",
                "ingress[0].max_sessions_per_source",
            ),
            (
                base(&peer) + "connect_timeout_secs = 0\n",
                "ingress[0].connect_timeout_secs",
            ),
            (
                base(&peer) + "idle_timeout_secs = -1\n",
                "ingress[0].idle_timeout_secs",
            ),
            (
                base(&peer) + "idle_timeout = 5\n",
                "ingress[0].idle_timeout",
            ),
            (
                base(&peer).replace("[peer]\n", "[peer]\nsource = [\"192.0.2.1\"]\n"),
                "peer.source",
            ),
            (listen.replace("192.0.2.0/24", "nope"), "peer.source"),
            (listen.replace("[\"192.0.2.0/24\"]", "[]"), "peer.source"),
        ];
        for (text, field) in cases {
            let e = Config::parse(&path, &text).unwrap_err();
            assert_eq!(e.field, field, "{e}");
        }
    }
}

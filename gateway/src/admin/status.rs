//! What `lmas status` shows: the gateway's state as one JSON document,
//! produced by the running gateway on its admin socket and rendered by the
//! CLI. Datapath-agnostic: both datapaths fill the same structure.

use std::collections::BTreeMap;
use std::fmt::Write;

use serde::{Deserialize, Serialize};

/// Anything that can say what `lmas status` shows: a datapath. The admin
/// socket and the metrics endpoint serve from one of these, so a datapath
/// that fills a [`Status`] gets both for free. Called on every request, from
/// a tokio task: it must be quick and must not block on I/O.
pub trait StatusSource: Send + Sync + 'static {
    fn status(&self) -> Status;
}

impl<F: Fn() -> Status + Send + Sync + 'static> StatusSource for F {
    fn status(&self) -> Status {
        self()
    }
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Status {
    pub gateway: String,
    pub peer: String,
    pub uptime_secs: f64,
    pub tunnel: Option<TunnelStatus>,
    pub counters: BTreeMap<String, u64>,
    /// Levels rather than events (free packet buffers, queue depths), from
    /// datapaths that have them; absent from older gateways' output.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub gauges: BTreeMap<String, u64>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TunnelStatus {
    /// Hex tunnel id.
    pub id: String,
    /// "up", or "held" while the control connection is gone (outage).
    pub state: String,
    pub peer: String,
    pub buffered_bytes: u64,
    pub connections: Vec<ConnectionStatus>,
    pub sessions: Vec<SessionStatus>,
    /// The session core's counters for this tunnel (frames, resends, duplicates).
    pub counters: BTreeMap<String, u64>,
    /// What packing did for this tunnel, ended sessions included (absent from older
    /// gateways' output).
    #[serde(default)]
    pub compression: PackingStatus,
    /// What dedup did for this tunnel, with its store and index (absent from older
    /// gateways' output).
    #[serde(default)]
    pub dedup: DedupStatus,
    /// Its migration groups and how they share it (absent from older gateways' output).
    #[serde(default)]
    pub groups: Vec<GroupStatus>,
    /// The cap on the whole tunnel (`limits.link_rate_mbit`), bytes per second.
    #[serde(default)]
    pub link_cap_bytes_per_sec: Option<u64>,
    /// The tunnel pacer (`wan.pacing`; absent from older gateways' output).
    #[serde(default)]
    pub pacing: Option<PacingStatus>,
}

/// What the tunnel pacer (`session::pacer`) has learned of the WAN path.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PacingStatus {
    /// "off" (`wan.pacing = "flows"`), "startup" (unpaced, learning), "draining" (what
    /// startup queued) or "probing".
    pub mode: String,
    /// Bytes per second the data flows delivered together, at best, over the last
    /// ten busy round trips (what their transports count: records, headers included).
    pub bottleneck_bytes_per_sec: u64,
    /// The lowest round trip any data flow's transport has seen.
    pub min_rtt_us: Option<u64>,
    /// What frames are paced at now; none while unpaced.
    pub rate_bytes_per_sec: Option<u64>,
    /// Paced below the bottleneck because another sender's queue stands there (absent from
    /// older gateways' output).
    #[serde(default)]
    pub giving_way: bool,
}

impl PacingStatus {
    fn of(core: &crate::session::TunnelCore) -> PacingStatus {
        let p = core.pacing();
        let on = core.shares().pace_tunnel;
        PacingStatus {
            mode: match (on, p.mode) {
                (false, _) => "off",
                (true, crate::session::pacer::PaceMode::Startup) => "startup",
                (true, crate::session::pacer::PaceMode::Drain) => "draining",
                (true, crate::session::pacer::PaceMode::Probing) => "probing",
            }
            .to_string(),
            bottleneck_bytes_per_sec: p.bottleneck,
            min_rtt_us: p.min_rtt_us,
            rate_bytes_per_sec: p.rate.filter(|_| on),
            giving_way: on && p.giving_way,
        }
    }

    /// Shards pace apart: their rates add up.
    fn merge(self, other: PacingStatus) -> PacingStatus {
        PacingStatus {
            mode: if self.mode == other.mode {
                self.mode
            } else {
                format!("{}/{}", self.mode, other.mode)
            },
            bottleneck_bytes_per_sec: self.bottleneck_bytes_per_sec
                + other.bottleneck_bytes_per_sec,
            min_rtt_us: [self.min_rtt_us, other.min_rtt_us]
                .into_iter()
                .flatten()
                .min(),
            rate_bytes_per_sec: sum_caps(self.rate_bytes_per_sec, other.rate_bytes_per_sec),
            giving_way: self.giving_way || other.giving_way,
        }
    }
}

/// One migration: the sessions from one source host to one target, sharing
/// the tunnel with the others by weight, under its cap.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GroupStatus {
    /// Client host for our ingress's groups; none for peer-opened ones.
    pub source: Option<String>,
    pub target: String,
    pub sessions: usize,
    pub weight: u32,
    /// `limits.migration_rate_mbit`, bytes per second.
    pub cap_bytes_per_sec: Option<u64>,
    /// Payload bytes it sent towards the peer, resends included.
    pub sent_bytes: u64,
    /// Over the last second.
    pub rate_bytes_per_sec: u64,
    /// Its part of what all groups sent over the last second (0 to 1).
    pub share: f64,
    /// Bytes its sessions took from the hypervisor that no data flow has yet, and the
    /// budget they share (`None`: no measured rate yet, each session has its own room;
    /// both absent from older gateways' output).
    #[serde(default)]
    pub unsent_bytes: u64,
    #[serde(default)]
    pub unsent_budget_bytes: Option<u64>,
}

impl GroupStatus {
    fn of(g: &crate::session::GroupSnapshot) -> GroupStatus {
        GroupStatus {
            source: g.key.source.map(|ip| ip.to_string()),
            target: g.key.target.to_string(),
            sessions: g.sessions,
            weight: g.weight,
            cap_bytes_per_sec: g.cap,
            unsent_bytes: g.unsent,
            unsent_budget_bytes: g.unsent_budget,
            sent_bytes: g.sent,
            rate_bytes_per_sec: g.rate,
            share: 0.0,
        }
    }

    /// Each group's share of the total rate.
    fn reshare(groups: &mut [GroupStatus]) {
        let total: u64 = groups.iter().map(|g| g.rate_bytes_per_sec).sum();
        for g in groups {
            g.share = if total == 0 {
                0.0
            } else {
                g.rate_bytes_per_sec as f64 / total as f64
            };
        }
    }

    /// One group from the parts each shard carries: figures and caps summed.
    fn merge(all: Vec<GroupStatus>) -> Vec<GroupStatus> {
        let mut merged: BTreeMap<(Option<String>, String), GroupStatus> = BTreeMap::new();
        for g in all {
            match merged.entry((g.source.clone(), g.target.clone())) {
                std::collections::btree_map::Entry::Vacant(v) => {
                    v.insert(g);
                }
                std::collections::btree_map::Entry::Occupied(mut o) => {
                    let m = o.get_mut();
                    m.sessions += g.sessions;
                    m.sent_bytes += g.sent_bytes;
                    m.rate_bytes_per_sec += g.rate_bytes_per_sec;
                    m.cap_bytes_per_sec = sum_caps(m.cap_bytes_per_sec, g.cap_bytes_per_sec);
                    m.unsent_bytes += g.unsent_bytes;
                    m.unsent_budget_bytes = sum_caps(m.unsent_budget_bytes, g.unsent_budget_bytes);
                }
            }
        }
        let mut out: Vec<GroupStatus> = merged.into_values().collect();
        GroupStatus::reshare(&mut out);
        out
    }
}

/// Two shards' parts of one cap: their sum (a shard without one adds nothing).
fn sum_caps(a: Option<u64>, b: Option<u64>) -> Option<u64> {
    either_or_both(a, b, |a, b| a + b)
}

/// `a` and `b` joined by `join` if both are there, else whichever is.
fn either_or_both<T>(a: Option<T>, b: Option<T>, join: impl FnOnce(T, T) -> T) -> Option<T> {
    match (a, b) {
        (Some(a), Some(b)) => Some(join(a, b)),
        (a, b) => a.or(b),
    }
}

/// One WAN TCP connection: the control connection or a data flow.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ConnectionStatus {
    /// "control" or "data".
    pub kind: String,
    /// Data flow index; none for control.
    pub flow: Option<u16>,
    pub local: String,
    pub remote: String,
    pub age_secs: f64,
    pub bytes_sent: u64,
    pub bytes_received: u64,
    /// From TCP_INFO, where the kernel gives it.
    pub tcp: Option<TcpStats>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TcpStats {
    pub rtt_us: u32,
    pub rttvar_us: u32,
    pub cwnd_segments: u32,
    pub mss: u32,
    pub total_retransmits: u32,
    /// Sent and not cumulatively acked, selectively acked ones included.
    pub unacked_segments: u32,
    /// Of those, on the wire: not selectively acked, not known lost (absent
    /// from older gateways' output).
    #[serde(default)]
    pub in_flight_segments: u32,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SessionStatus {
    pub id: u64,
    /// "opening", "connecting" or "open".
    pub state: String,
    /// Client address for sessions from our ingress; none for peer-opened ones.
    pub source: Option<String>,
    pub target: String,
    pub age_secs: f64,
    /// Bytes read from our endpoint and queued for the peer.
    pub bytes_up: u64,
    /// Of those, acknowledged by the peer.
    pub bytes_up_acked: u64,
    /// Bytes delivered to our endpoint.
    pub bytes_down: u64,
    /// Sent or queued but not yet acknowledged.
    pub in_flight: u64,
    /// What packing its frames (this gateway's direction) and unpacking the peer's did
    /// (absent from older gateways' output).
    #[serde(default)]
    pub compression: PackingStatus,
    /// What dedup did for its frames, both ways (absent from older gateways' output).
    #[serde(default)]
    pub dedup: DedupStatus,
}

/// What dedup did, for a session or a tunnel (docs/DEDUP.md); for a tunnel also its store
/// (what the peer sent) and its index (what the peer's store holds, as far as we know).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct DedupStatus {
    /// Sent: stream bytes chunked and fingerprinted, the item lists they became, and the
    /// stream bytes that crossed as references.
    pub bytes_in: u64,
    pub bytes_out: u64,
    pub ref_bytes: u64,
    /// Sent: frames that went as they are (all zeros: packing sends those as a length).
    pub frames_skipped: u64,
    /// Sent: frames the peer could not resolve and got again as they are.
    pub misses_answered: u64,
    /// Received: stream bytes taken from the store, and frames it could not resolve.
    pub resolved_bytes: u64,
    pub misses: u64,
    /// `ref_bytes / bytes_in`; none while nothing went through dedup.
    pub hit_rate: Option<f64>,
    #[serde(default)]
    pub store_bytes: u64,
    #[serde(default)]
    pub store_chunks: u64,
    #[serde(default)]
    pub store_evictions: u64,
    /// Chunks a store on disk (`wan.dedup_dir`) could not write, or read back intact.
    #[serde(default)]
    pub store_io_errors: u64,
    #[serde(default)]
    pub index_bytes: u64,
    #[serde(default)]
    pub index_chunks: u64,
    /// The peer's store as it offered it (0: none; we send no references).
    #[serde(default)]
    pub peer_store_bytes: u64,
}

impl From<&crate::session::dedup::DedupFigures> for DedupStatus {
    fn from(f: &crate::session::dedup::DedupFigures) -> Self {
        DedupStatus {
            bytes_in: f.bytes_in,
            bytes_out: f.bytes_out,
            ref_bytes: f.ref_bytes,
            frames_skipped: f.frames_skipped,
            misses_answered: f.misses_answered,
            resolved_bytes: f.resolved_bytes,
            misses: f.misses,
            hit_rate: (f.bytes_in > 0).then(|| f.ref_bytes as f64 / f.bytes_in as f64),
            ..Default::default()
        }
    }
}

impl DedupStatus {
    fn of_core(core: &crate::session::TunnelCore) -> DedupStatus {
        let s = core.dedup_stores();
        DedupStatus {
            store_bytes: s.store_bytes,
            store_chunks: s.store_chunks,
            store_evictions: s.store_evictions,
            store_io_errors: s.store_io_errors,
            index_bytes: s.index_bytes,
            index_chunks: s.index_chunks,
            peer_store_bytes: s.peer_store,
            ..core.dedup_figures().into()
        }
    }

    /// The figures of both (a sharded gateway's sub-tunnels), the hit rate recomputed.
    fn add(&self, o: &DedupStatus) -> DedupStatus {
        let bytes_in = self.bytes_in + o.bytes_in;
        let ref_bytes = self.ref_bytes + o.ref_bytes;
        DedupStatus {
            bytes_in,
            bytes_out: self.bytes_out + o.bytes_out,
            ref_bytes,
            frames_skipped: self.frames_skipped + o.frames_skipped,
            misses_answered: self.misses_answered + o.misses_answered,
            resolved_bytes: self.resolved_bytes + o.resolved_bytes,
            misses: self.misses + o.misses,
            hit_rate: (bytes_in > 0).then(|| ref_bytes as f64 / bytes_in as f64),
            store_bytes: self.store_bytes + o.store_bytes,
            store_chunks: self.store_chunks + o.store_chunks,
            store_evictions: self.store_evictions + o.store_evictions,
            store_io_errors: self.store_io_errors + o.store_io_errors,
            index_bytes: self.index_bytes + o.index_bytes,
            index_chunks: self.index_chunks + o.index_chunks,
            peer_store_bytes: self.peer_store_bytes + o.peer_store_bytes,
        }
    }
}

/// What packing did, for a session or a tunnel: the figures of docs/COMPRESSION.md
/// (`compression_*` counters) and their ratio.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct PackingStatus {
    /// Data payload bytes offered to packing, and what went on the wire for them.
    pub bytes_in: u64,
    pub bytes_out: u64,
    pub frames_packed: u64,
    /// Frames found incompressible and sent as they are.
    pub frames_skipped: u64,
    /// CPU time packing (what this gateway sends) and unpacking (what it receives).
    pub pack_ns: u64,
    pub unpack_ns: u64,
    /// `bytes_out / bytes_in`; none while nothing was offered to packing.
    pub ratio: Option<f64>,
}

impl From<&crate::transform::PackFigures> for PackingStatus {
    fn from(f: &crate::transform::PackFigures) -> Self {
        PackingStatus {
            bytes_in: f.bytes_in,
            bytes_out: f.bytes_out,
            frames_packed: f.frames_packed,
            frames_skipped: f.frames_skipped,
            pack_ns: f.pack_ns,
            unpack_ns: f.unpack_ns,
            ratio: f.ratio(),
        }
    }
}

impl PackingStatus {
    /// The ratio to two places, or `-` while nothing was packed.
    fn ratio_text(&self) -> String {
        self.ratio.map_or_else(|| "-".into(), |r| format!("{r:.2}"))
    }
}

impl SessionStatus {
    /// One session as the core sees it, with what the datapath knows of its
    /// endpoint (the client address for our ingress sessions, the age).
    pub fn from_core(
        s: &crate::session::SessionSnapshot,
        source: Option<std::net::SocketAddr>,
        age_secs: f64,
    ) -> SessionStatus {
        SessionStatus {
            id: s.id.0,
            state: s.state.to_string(),
            source: source.map(|a| a.to_string()),
            target: s.target.to_string(),
            age_secs,
            bytes_up: s.written,
            bytes_up_acked: s.acked,
            bytes_down: s.delivered,
            in_flight: s.written - s.acked,
            compression: (&s.packing).into(),
            dedup: (&s.dedup).into(),
        }
    }
}

impl TunnelStatus {
    /// A tunnel as both datapaths show it: its sessions with what the datapath knows of each
    /// one's endpoint (`endpoint`: the client address for our ingress sessions, the age), and
    /// the connections in place with the datapath's figures for each (`connection`; kind and
    /// flow are filled in here). `up`: a control connection is in place.
    pub fn of(
        t: &crate::link::TunnelState,
        up: bool,
        now: crate::session::Instant,
        endpoint: impl Fn(crate::protocol::SessionId) -> (Option<std::net::SocketAddr>, f64),
        connection: impl Fn(crate::link::ConnRef) -> Option<ConnectionStatus>,
    ) -> TunnelStatus {
        let sessions = t
            .core
            .snapshot()
            .iter()
            .map(|s| {
                let (source, age) = endpoint(s.id);
                SessionStatus::from_core(s, source, age)
            })
            .collect();
        let connections = t.table.connections().filter_map(|(flow, c)| {
            let kind = if flow.is_some() { "data" } else { "control" };
            Some(ConnectionStatus {
                kind: kind.to_string(),
                flow,
                ..connection(c)?
            })
        });
        let connections = connections.collect();
        let mut status =
            TunnelStatus::from_core(t.id, up, t.peer.clone(), &t.core, connections, sessions);
        status.groups = t.core.groups(now).iter().map(GroupStatus::of).collect();
        GroupStatus::reshare(&mut status.groups);
        status.link_cap_bytes_per_sec = t.core.shares().link_rate;
        status.pacing = Some(PacingStatus::of(&t.core));
        status
    }

    /// A tunnel: the core's figures plus the datapath's view of its
    /// connections (sorted: control first, then data flows by index).
    pub fn from_core(
        id: crate::protocol::TunnelId,
        up: bool,
        peer: String,
        core: &crate::session::TunnelCore,
        mut connections: Vec<ConnectionStatus>,
        sessions: Vec<SessionStatus>,
    ) -> TunnelStatus {
        connections.sort_by_key(|c| c.flow.map_or(-1, |f| f as i32));
        TunnelStatus {
            id: id.to_string(),
            state: if up { "up" } else { "held" }.to_string(),
            peer,
            buffered_bytes: core.buffered(),
            connections,
            sessions,
            counters: core.counters().snapshot(),
            compression: core.packing().into(),
            dedup: DedupStatus::of_core(core),
            groups: Vec::new(),
            link_cap_bytes_per_sec: None,
            pacing: None,
        }
    }
}

impl PackingStatus {
    /// The figures of both, the ratio recomputed.
    fn add(&self, other: &PackingStatus) -> PackingStatus {
        let figures = crate::transform::PackFigures {
            bytes_in: self.bytes_in + other.bytes_in,
            bytes_out: self.bytes_out + other.bytes_out,
            frames_packed: self.frames_packed + other.frames_packed,
            frames_skipped: self.frames_skipped + other.frames_skipped,
            pack_ns: self.pack_ns + other.pack_ns,
            unpack_ns: self.unpack_ns + other.unpack_ns,
        };
        (&figures).into()
    }
}

impl TunnelStatus {
    /// One view of a sharded gateway's sub-tunnels (one per TCP lcore): ids joined with
    /// `+`, connections and sessions of all (the shards number sessions apart:
    /// `TunnelCore::for_shard`), figures summed.
    fn merge(mut self, other: TunnelStatus) -> TunnelStatus {
        self.id = format!("{}+{}", self.id, other.id);
        if other.state != "up" {
            self.state = other.state;
        }
        self.buffered_bytes += other.buffered_bytes;
        self.connections.extend(other.connections);
        self.sessions.extend(other.sessions);
        for (k, v) in other.counters {
            *self.counters.entry(k).or_default() += v;
        }
        self.compression = self.compression.add(&other.compression);
        self.dedup = self.dedup.add(&other.dedup);
        self.groups.extend(other.groups);
        self.groups = GroupStatus::merge(std::mem::take(&mut self.groups));
        self.link_cap_bytes_per_sec =
            sum_caps(self.link_cap_bytes_per_sec, other.link_cap_bytes_per_sec);
        self.pacing = either_or_both(self.pacing.take(), other.pacing, PacingStatus::merge);
        self
    }
}

impl Status {
    /// The gateway's status from its shards' (TCP lcores'): the first one's header and
    /// gateway-wide counters, and one tunnel made of the sub-tunnels. The tunnel is "up"
    /// only when every shard's is; while some shard has none it is "partial".
    pub fn merge_shards(shards: Vec<Status>) -> Option<Status> {
        let count = shards.len();
        let mut shards = shards.into_iter();
        let mut merged = shards.next()?;
        let mut present = usize::from(merged.tunnel.is_some());
        for s in shards {
            let Some(t) = s.tunnel else { continue };
            present += 1;
            merged.tunnel = Some(match merged.tunnel.take() {
                Some(m) => m.merge(t),
                None => t,
            });
        }
        if let Some(t) = &mut merged.tunnel {
            if present < count {
                t.state = format!("partial ({present} of {count} shards)");
            }
        }
        Some(merged)
    }

    /// A human-readable rendering; `rates` maps session id to bytes/s up and
    /// down (from `--watch`), if known.
    pub fn render(&self, rates: &BTreeMap<u64, (f64, f64)>) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "gateway {}  peer {}  up {:.0}s",
            self.gateway, self.peer, self.uptime_secs
        );
        match &self.tunnel {
            None => {
                let _ = writeln!(out, "tunnel: down");
            }
            Some(t) => {
                let _ = writeln!(
                    out,
                    "tunnel {} {}  peer {}  buffered {}",
                    &t.id[..8.min(t.id.len())],
                    t.state,
                    t.peer,
                    bytes(t.buffered_bytes)
                );
                let _ = writeln!(out, "  {}", nonzero(&t.counters));
                let c = &t.compression;
                if c.bytes_in > 0 || c.unpack_ns > 0 {
                    let _ = writeln!(
                        out,
                        "  compression: {} -> {} (ratio {}), {} frames packed, {} skipped; cpu {:.2} s packing, {:.2} s unpacking",
                        bytes(c.bytes_in),
                        bytes(c.bytes_out),
                        c.ratio_text(),
                        c.frames_packed,
                        c.frames_skipped,
                        c.pack_ns as f64 / 1e9,
                        c.unpack_ns as f64 / 1e9,
                    );
                }
                let d = &t.dedup;
                if d.bytes_in > 0 || d.store_chunks > 0 || d.frames_skipped > 0 {
                    let _ = writeln!(
                        out,
                        "  dedup: {} -> {} ({} as references, hit rate {}), {} frames skipped, {} misses answered; store {} in {} chunks ({} evicted{}), {} resolved, {} misses; index {} of the peer's {}",
                        bytes(d.bytes_in),
                        bytes(d.bytes_out),
                        bytes(d.ref_bytes),
                        d.hit_rate.map_or("-".into(), |r| format!("{r:.2}")),
                        d.frames_skipped,
                        d.misses_answered,
                        bytes(d.store_bytes),
                        d.store_chunks,
                        d.store_evictions,
                        match d.store_io_errors {
                            0 => String::new(),
                            n => format!(", {n} I/O errors"),
                        },
                        bytes(d.resolved_bytes),
                        d.misses,
                        bytes(d.index_bytes),
                        bytes(d.peer_store_bytes),
                    );
                }
                if let Some(p) = t.pacing.as_ref().filter(|p| p.bottleneck_bytes_per_sec > 0) {
                    let _ = writeln!(
                        out,
                        "  pacing: {}, at {} (bottleneck {}, min RTT {}){}",
                        p.mode,
                        p.rate_bytes_per_sec
                            .map_or("no pace".into(), |r| mbit(Some(r))),
                        mbit(Some(p.bottleneck_bytes_per_sec)),
                        p.min_rtt_us
                            .map_or("-".into(), |us| format!("{:.1} ms", us as f64 / 1e3)),
                        if p.giving_way {
                            ", giving way to another sender's queue"
                        } else {
                            ""
                        },
                    );
                }
                let _ = writeln!(
                    out,
                    "\n  {:<8} {:<22} {:>10} {:>10} {:>9} {:>6} {:>8}",
                    "conn", "remote", "sent", "received", "rtt ms", "cwnd", "retrans"
                );
                for c in &t.connections {
                    let name = match c.flow {
                        Some(i) => format!("data {i}"),
                        None => "control".to_string(),
                    };
                    let (rtt, cwnd, retr) = match &c.tcp {
                        Some(tcp) => (
                            format!("{:.2}", tcp.rtt_us as f64 / 1000.0),
                            tcp.cwnd_segments.to_string(),
                            tcp.total_retransmits.to_string(),
                        ),
                        None => ("-".into(), "-".into(), "-".into()),
                    };
                    let _ = writeln!(
                        out,
                        "  {:<8} {:<22} {:>10} {:>10} {:>9} {:>6} {:>8}",
                        name,
                        c.remote,
                        bytes(c.bytes_sent),
                        bytes(c.bytes_received),
                        rtt,
                        cwnd,
                        retr
                    );
                }
                if !t.groups.is_empty() {
                    let _ = writeln!(
                        out,
                        "\n  {:<44} {:>8} {:>6} {:>12} {:>12} {:>6} {:>19}   link cap {}",
                        "migration (source -> target)",
                        "sessions",
                        "weight",
                        "cap",
                        "rate",
                        "share",
                        "unsent / budget",
                        mbit(t.link_cap_bytes_per_sec)
                    );
                }
                for g in &t.groups {
                    let route = format!(
                        "{} -> {}",
                        g.source.as_deref().unwrap_or("(peer)"),
                        g.target
                    );
                    let _ = writeln!(
                        out,
                        "  {:<44} {:>8} {:>6} {:>12} {:>12} {:>5.0}% {:>19}",
                        route,
                        g.sessions,
                        g.weight,
                        mbit(g.cap_bytes_per_sec),
                        mbit(Some(g.rate_bytes_per_sec)),
                        g.share * 100.0,
                        format!(
                            "{} / {}",
                            bytes(g.unsent_bytes),
                            g.unsent_budget_bytes.map_or("-".to_string(), bytes)
                        )
                    );
                }
                let _ = writeln!(
                    out,
                    "\n  {:<6} {:<10} {:<44} {:>10} {:>10} {:>10} {:>7} {:>6} {:>11}",
                    "session",
                    "state",
                    "source -> target",
                    "up",
                    "down",
                    "in flight",
                    "age s",
                    "packed",
                    "goodput"
                );
                for s in &t.sessions {
                    let route = format!(
                        "{} -> {}",
                        s.source.as_deref().unwrap_or("(peer)"),
                        s.target
                    );
                    let rate = rates
                        .get(&s.id)
                        .map(|(up, down)| format!("{:.0} Mbit/s", (up.max(*down)) * 8.0 / 1e6))
                        .unwrap_or_else(|| "-".into());
                    let _ = writeln!(
                        out,
                        "  {:<6} {:<10} {:<44} {:>10} {:>10} {:>10} {:>7.0} {:>6} {:>11}",
                        s.id,
                        s.state,
                        route,
                        bytes(s.bytes_up),
                        bytes(s.bytes_down),
                        bytes(s.in_flight),
                        s.age_secs,
                        s.compression.ratio_text(),
                        rate
                    );
                }
            }
        }
        let _ = writeln!(out, "\ncounters: {}", nonzero(&self.counters));
        if !self.gauges.is_empty() {
            let all: Vec<String> = self
                .gauges
                .iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect();
            let _ = writeln!(out, "gauges: {}", all.join(" "));
        }
        out
    }
}

/// A rate in bytes per second as Mbit/s; "none" for no cap.
fn mbit(rate: Option<u64>) -> String {
    rate.map_or("none".into(), |r| {
        format!("{:.0} Mbit/s", r as f64 * 8.0 / 1e6)
    })
}

/// `name=value` for every counter that is not zero.
fn nonzero(counters: &BTreeMap<String, u64>) -> String {
    let parts: Vec<String> = counters
        .iter()
        .filter(|(_, v)| **v > 0)
        .map(|(k, v)| format!("{k}={v}"))
        .collect();
    if parts.is_empty() {
        "all zero".into()
    } else {
        parts.join(" ")
    }
}

fn bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut unit = 0;
    while v >= 1024.0 && unit < UNITS.len() - 1 {
        v /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[unit])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn session(id: u64, compression: PackingStatus) -> SessionStatus {
        SessionStatus {
            id,
            state: "open".into(),
            source: Some("10.0.0.9:40000".into()),
            target: "10.1.0.7:49152".into(),
            age_secs: 3.0,
            bytes_up: 1 << 20,
            bytes_up_acked: 1 << 20,
            bytes_down: 0,
            in_flight: 0,
            compression,
            dedup: Default::default(),
        }
    }

    fn status() -> Status {
        let text = PackingStatus {
            bytes_in: 1 << 20,
            bytes_out: 503_316,
            frames_packed: 16,
            pack_ns: 2_000_000,
            ratio: Some(0.48),
            ..Default::default()
        };
        Status {
            gateway: "gw-a".into(),
            peer: "gw-b".into(),
            uptime_secs: 5.0,
            tunnel: Some(TunnelStatus {
                id: "0123456789abcdef".into(),
                state: "up".into(),
                peer: "gw-b (10.0.0.2:4433)".into(),
                buffered_bytes: 0,
                connections: Vec::new(),
                sessions: vec![session(0, text.clone()), session(2, Default::default())],
                counters: BTreeMap::new(),
                compression: text,
                dedup: Default::default(),
                groups: vec![GroupStatus {
                    source: Some("10.0.0.1".into()),
                    target: "10.9.0.1:4444".into(),
                    sessions: 2,
                    weight: 3,
                    cap_bytes_per_sec: Some(37_500_000),
                    sent_bytes: 1 << 30,
                    rate_bytes_per_sec: 37_000_000,
                    share: 1.0,
                    unsent_bytes: 300_000,
                    unsent_budget_bytes: Some(1_250_000),
                }],
                link_cap_bytes_per_sec: None,
                pacing: None,
            }),
            counters: BTreeMap::new(),
            gauges: BTreeMap::new(),
        }
    }

    /// Two shards' sub-tunnels read as one tunnel, up only when both are.
    #[test]
    fn shards_merge_into_one_tunnel() {
        let mut one = status();
        one.tunnel
            .as_mut()
            .unwrap()
            .counters
            .insert("frames".into(), 3);
        let mut two = status();
        let t = two.tunnel.as_mut().unwrap();
        t.id = "fedcba".into();
        t.state = "held".into();
        t.counters.insert("frames".into(), 4);
        let merged = Status::merge_shards(vec![one.clone(), two]).unwrap();
        let t = merged.tunnel.unwrap();
        assert_eq!(t.id, "0123456789abcdef+fedcba");
        assert_eq!(t.state, "held");
        assert_eq!(t.sessions.len(), 4);
        assert_eq!(t.counters["frames"], 7);
        assert_eq!(t.compression.bytes_in, 2 << 20);
        // One migration carried by both shards: one group, figures and caps summed.
        assert_eq!(t.groups.len(), 1);
        let g = &t.groups[0];
        assert_eq!((g.sessions, g.sent_bytes), (4, 2 << 30));
        assert_eq!(g.cap_bytes_per_sec, Some(75_000_000));
        assert_eq!((g.rate_bytes_per_sec, g.share), (74_000_000, 1.0));
        assert!((t.compression.ratio.unwrap() - 0.48).abs() < 0.01);

        let mut none = status();
        none.tunnel = None;
        let merged = Status::merge_shards(vec![none.clone(), one.clone()]).unwrap();
        assert_eq!(merged.tunnel.unwrap().state, "partial (1 of 2 shards)");
        assert!(Status::merge_shards(vec![none.clone(), none])
            .unwrap()
            .tunnel
            .is_none());
        let alone = Status::merge_shards(vec![one]).unwrap().tunnel.unwrap();
        assert_eq!(alone.state, "up");
        assert!(Status::merge_shards(Vec::new()).is_none());
    }

    #[test]
    fn render_shows_each_sessions_ratio_and_the_tunnels_figures() {
        let text = status().render(&BTreeMap::new());
        let lines: Vec<&str> = text.lines().collect();
        let header = lines
            .iter()
            .find(|l| l.trim_start().starts_with("session "))
            .unwrap();
        assert!(header.contains("packed"), "{text}");
        let group = lines
            .iter()
            .find(|l| l.contains("10.0.0.1 -> 10.9.0.1:4444"))
            .unwrap_or_else(|| panic!("no group row:\n{text}"));
        let cells: Vec<&str> = group.split_whitespace().collect();
        assert_eq!(
            cells[3..],
            [
                "2", "3", "300", "Mbit/s", "296", "Mbit/s", "100%", "293.0", "KiB", "/", "1.2",
                "MiB"
            ],
            "{text}"
        );
        let row = |id: &str| {
            lines
                .iter()
                .find(|l| l.trim_start().starts_with(id) && l.contains("->"))
                .unwrap_or_else(|| panic!("no row for session {id}:\n{text}"))
                .split_whitespace()
                .collect::<Vec<_>>()
        };
        // The ratio column comes before goodput (`--watch` lines end in Mbit/s).
        assert_eq!(row("0 ")[row("0 ").len() - 2], "0.48", "{text}");
        assert_eq!(
            row("2 ")[row("2 ").len() - 2],
            "-",
            "nothing packed: {text}"
        );
        assert!(
            text.contains(
                "compression: 1.0 MiB -> 491.5 KiB (ratio 0.48), 16 frames packed, 0 skipped"
            ),
            "{text}"
        );
    }

    #[test]
    fn json_carries_the_figures_and_older_output_still_parses() {
        let json = serde_json::to_value(status()).unwrap();
        let s = &json["tunnel"]["sessions"][0]["compression"];
        assert_eq!(s["bytes_out"], 503_316);
        assert_eq!(s["ratio"], 0.48);
        assert_eq!(
            json["tunnel"]["sessions"][1]["compression"]["ratio"],
            serde_json::Value::Null
        );
        assert_eq!(json["tunnel"]["compression"]["frames_packed"], 16);

        let mut old = json.clone();
        old["tunnel"].as_object_mut().unwrap().remove("compression");
        for s in old["tunnel"]["sessions"].as_array_mut().unwrap() {
            s.as_object_mut().unwrap().remove("compression");
        }
        let parsed: Status = serde_json::from_value(old).unwrap();
        let t = parsed.tunnel.unwrap();
        assert_eq!(t.compression, PackingStatus::default());
        assert_eq!(t.sessions[0].compression.ratio, None);
    }
}

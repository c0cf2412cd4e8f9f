//! The gateway's figures in the Prometheus text exposition format (0.0.4).
//!
//! A pure function of one [`Status`] snapshot: the same figures `lmas status`
//! shows, so the two never disagree about what they measure. The encoding
//! (names, label escaping, `# HELP`/`# TYPE`) is done by `prometheus-client`
//! through a [`Collector`] over the snapshot.
//!
//! Series, all prefixed `lmas_`:
//! - `gateway_info{gateway,peer}`, `uptime_seconds`;
//! - one counter per process-wide event counter (`<name>_total`, e.g.
//!   `sessions_refused_total`), and `tunnel_<name>_total` for the current
//!   tunnel's session-core counters (they restart at 0 with a new tunnel);
//! - `tunnel_state{state}` (1 for the current of up/held/down),
//!   `tunnel_buffered_bytes`, `sessions{state}`;
//! - per WAN connection (`kind` = control/data, `flow` = index or `-`): bytes
//!   each way, RTT, RTT variance, cwnd, MSS, unacked segments, retransmits, age;
//! - `tunnel_compression_*`: what packing did for the current tunnel (bytes in
//!   and out, frames packed and skipped, CPU seconds packing and unpacking);
//! - `tunnel_dedup_*`: what dedup did for the current tunnel (stream bytes in, item bytes
//!   out, bytes sent as references, frames skipped, misses each way, bytes resolved) and
//!   `tunnel_dedup_store_*`, `tunnel_dedup_index_*` (bytes, chunks; store evictions);
//! - per session (`session` = id, `target`): bytes each way, acked, in
//!   flight, age, and the same `session_compression_*` and `session_dedup_*` figures — for at most
//!   [`MAX_SESSION_SERIES`] sessions (the oldest by id);
//!   `session_series_omitted` says how many more there are;
//! - per migration group (`source`, `target`): sessions, weight, cap, bytes
//!   sent, rate and share over the last second, bytes unsent and their
//!   budget; `link_cap_bytes_per_second`;
//! - the tunnel pacer: `pacing_bottleneck_bytes_per_second`, `pacing_giving_way`, and
//!   `pacing_rate_bytes_per_second` while it paces.

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, NoLabelSet};
use prometheus_client::metrics::exemplar::Exemplar;
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::{Registry, Unit};

use super::status::{
    ConnectionStatus, DedupStatus, GroupStatus, PackingStatus, SessionStatus, TcpStats,
};
use super::{Stats, Status};
use MetricType::{Counter, Gauge};
use Num::{Float, Int};

/// The `Content-Type` of what [`encode`] produces.
pub const CONTENT_TYPE: &str = prometheus_client::encoding::prometheus_text::CONTENT_TYPE;

/// Per-session series are capped: every session adds a handful of series,
/// and a gateway may carry thousands of sessions (multifd, many VMs).
pub const MAX_SESSION_SERIES: usize = 64;

/// Encodes one snapshot.
pub fn encode(status: &Status) -> Result<String, std::fmt::Error> {
    let mut registry = Registry::default();
    registry.register_collector(Box::new(Snapshot(status.clone())));
    let mut out = String::new();
    prometheus_client::encoding::prometheus_text::encode(&mut out, &registry)?;
    Ok(out)
}

#[derive(Debug)]
struct Snapshot(Status);

type Labels<'a> = Vec<(&'static str, &'a str)>;

/// A sample's value: integers stay integers in the text.
#[derive(Clone, Copy)]
enum Num {
    Int(u64),
    Float(f64),
}

/// One family: its descriptor, then one sample per row that has a value.
fn family<T>(
    e: &mut DescriptorEncoder<'_>,
    (name, help, unit, kind): (&str, &str, Option<Unit>, MetricType),
    rows: &[(T, Labels<'_>)],
    value: impl Fn(&T) -> Option<Num>,
) -> std::fmt::Result {
    let mut m = e.encode_descriptor(name, help, unit.as_ref(), kind)?;
    for (row, labels) in rows {
        let Some(v) = value(row) else { continue };
        let mut sample = m.encode_family(labels)?;
        let none = None::<&Exemplar<NoLabelSet, u64>>;
        match (kind, v) {
            (MetricType::Counter, Num::Int(v)) => sample.encode_counter(&v, none)?,
            (MetricType::Counter, Num::Float(v)) => sample.encode_counter(&v, none)?,
            (_, Num::Int(v)) => sample.encode_gauge(&v)?,
            (_, Num::Float(v)) => sample.encode_gauge(&v)?,
        }
    }
    Ok(())
}

/// A single unlabelled sample.
fn single(
    e: &mut DescriptorEncoder<'_>,
    desc: (&str, &str, Option<Unit>, MetricType),
    v: Num,
) -> std::fmt::Result {
    family(e, desc, &[((), Vec::new())], |_| Some(v))
}

/// A counter name as it came from the datapath, made a valid metric name.
fn metric_name(raw: &str) -> String {
    raw.chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect()
}

impl Collector for Snapshot {
    fn encode(&self, mut e: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let s = &self.0;
        let e = &mut e;
        e.encode_descriptor(
            "lmas_gateway",
            "This gateway and its peer, by name.",
            None,
            MetricType::Info,
        )?
        .encode_info(&[("gateway", s.gateway.as_str()), ("peer", s.peer.as_str())])?;
        let uptime = "Time since the gateway started.";
        single(
            e,
            ("lmas_uptime", uptime, Some(Unit::Seconds), Gauge),
            Float(s.uptime_secs),
        )?;
        for (name, v) in &s.counters {
            let metric = format!("lmas_{}", metric_name(name));
            let help = Stats::describe(name).unwrap_or("A gateway event counter.");
            single(e, (&metric, help, None, Counter), Int(*v))?;
        }
        for (name, v) in &s.gauges {
            let metric = format!("lmas_{}", metric_name(name));
            single(
                e,
                (&metric, "A datapath level (see docs/DPDK.md).", None, Gauge),
                Int(*v),
            )?;
        }

        let current = s.tunnel.as_ref().map_or("down", |t| t.state.as_str());
        let states = ["up", "held", "down"].map(|st| (st, vec![("state", st)]));
        family(
            e,
            ("lmas_tunnel_state", "1 for the tunnel's current state: up, held (control connection lost, sessions kept for the grace period) or down.", None, Gauge),
            &states,
            |st| Some(Int(u64::from(*st == current))),
        )?;
        let Some(t) = &s.tunnel else {
            return Ok(());
        };
        single(
            e,
            ("lmas_tunnel_buffered", "Bytes held in the tunnel's send buffers (all sessions), waiting to be sent or acknowledged.", Some(Unit::Bytes), Gauge),
            Int(t.buffered_bytes),
        )?;
        for (name, v) in &t.counters {
            let metric = format!("lmas_tunnel_{}", metric_name(name));
            let help = format!(
                "The session core's {name} for the current tunnel (restarts at 0 with a new tunnel)."
            );
            single(e, (&metric, &help, None, Counter), Int(*v))?;
        }
        compression(
            e,
            "lmas_tunnel",
            "for the current tunnel (restarts at 0 with a new tunnel)",
            &[(&t.compression, Vec::new())],
        )?;
        dedup(
            e,
            "lmas_tunnel",
            "for the current tunnel (restarts at 0 with a new tunnel)",
            &[(&t.dedup, Vec::new())],
        )?;
        let stores: [DedupFamily; 6] = [
            ("store_bytes", "Bytes the dedup store holds (what the peer sent), per-chunk overhead included", Some(Unit::Bytes), |d| d.store_bytes),
            ("store_chunks", "Chunks the dedup store holds", None, |d| d.store_chunks),
            ("store_evictions", "Chunks the dedup store evicted (oldest first) to stay within wan.dedup_store_bytes", None, |d| d.store_evictions),
            ("store_io_errors", "Chunks the dedup store on disk (wan.dedup_dir) could not write or read back intact", None, |d| d.store_io_errors),
            ("index_bytes", "Bytes of the peer's dedup store this gateway references, as far as it knows", Some(Unit::Bytes), |d| d.index_bytes),
            ("index_chunks", "Chunks of the peer's dedup store this gateway references, as far as it knows", None, |d| d.index_chunks),
        ];
        for (name, help, unit, value) in stores {
            let kind = if matches!(name, "store_evictions" | "store_io_errors") {
                Counter
            } else {
                Gauge
            };
            single(
                e,
                (
                    &format!("lmas_tunnel_dedup_{name}"),
                    &format!("{help}."),
                    unit,
                    kind,
                ),
                Int(value(&t.dedup)),
            )?;
        }
        let states = ["opening", "connecting", "open"].map(|st| (st, vec![("state", st)]));
        family(
            e,
            (
                "lmas_sessions",
                "Sessions in the tunnel, by state (opening, connecting, open).",
                None,
                Gauge,
            ),
            &states,
            |st| {
                Some(Int(
                    t.sessions.iter().filter(|x| x.state == *st).count() as u64
                ))
            },
        )?;
        connections(e, &t.connections)?;
        groups(e, &t.groups)?;
        if let Some(cap) = t.link_cap_bytes_per_sec {
            single(
                e,
                (
                    "lmas_link_cap_bytes_per_second",
                    "The cap on the whole tunnel (limits.link_rate_mbit).",
                    None,
                    Gauge,
                ),
                Int(cap),
            )?;
        }
        if let Some(p) = &t.pacing {
            single(
                e,
                (
                    "lmas_pacing_bottleneck_bytes_per_second",
                    "The WAN path's rate as the tunnel pacer measures it (wan.pacing).",
                    None,
                    Gauge,
                ),
                Int(p.bottleneck_bytes_per_sec),
            )?;
            single(
                e,
                (
                    "lmas_pacing_giving_way",
                    "1 while the tunnel pacer paces below the path's rate for another sender's queue.",
                    None,
                    Gauge,
                ),
                Int(u64::from(p.giving_way)),
            )?;
            if let Some(rate) = p.rate_bytes_per_sec {
                single(
                    e,
                    (
                        "lmas_pacing_rate_bytes_per_second",
                        "What the tunnel pacer lets the data flows take now.",
                        None,
                        Gauge,
                    ),
                    Int(rate),
                )?;
            }
        }
        sessions(e, &t.sessions)
    }
}

/// One group family: name, help, type, and its value in a [`GroupStatus`] (none: no sample).
type GroupFamily = (
    &'static str,
    &'static str,
    MetricType,
    fn(&GroupStatus) -> Option<Num>,
);

/// The migration groups: how they share the tunnel.
fn groups(e: &mut DescriptorEncoder<'_>, all: &[GroupStatus]) -> std::fmt::Result {
    let rows: Vec<(&GroupStatus, Labels)> = all
        .iter()
        .map(|g| {
            let source = g.source.as_deref().unwrap_or("peer");
            (g, vec![("source", source), ("target", g.target.as_str())])
        })
        .collect();
    let families: [GroupFamily; 8] = [
        (
            "lmas_group_sessions",
            "Sessions of a migration group (one source host to one target).",
            Gauge,
            |g| Some(Int(g.sessions as u64)),
        ),
        (
            "lmas_group_weight",
            "A migration group's weight (its ingress's weight).",
            Gauge,
            |g| Some(Int(g.weight as u64)),
        ),
        (
            "lmas_group_cap_bytes_per_second",
            "A migration group's cap (limits.migration_rate_mbit).",
            Gauge,
            |g| g.cap_bytes_per_sec.map(Int),
        ),
        (
            "lmas_group_sent_bytes",
            "Payload bytes a migration group sent towards the peer, resends included.",
            Counter,
            |g| Some(Int(g.sent_bytes)),
        ),
        (
            "lmas_group_rate_bytes_per_second",
            "What a migration group sent over the last second.",
            Gauge,
            |g| Some(Int(g.rate_bytes_per_sec)),
        ),
        (
            "lmas_group_share",
            "A migration group's part of what all groups sent over the last second (0 to 1).",
            Gauge,
            |g| Some(Float(g.share)),
        ),
        (
            "lmas_group_unsent_bytes",
            "Bytes a migration group took from the hypervisor that no data flow has yet.",
            Gauge,
            |g| Some(Int(g.unsent_bytes)),
        ),
        (
            "lmas_group_unsent_budget_bytes",
            "What a migration group may hold unsent: the tunnel's rate times 20 ms, at most unsent_bytes.",
            Gauge,
            |g| g.unsent_budget_bytes.map(Int),
        ),
    ];
    for (name, help, kind, value) in families {
        family(e, (name, help, None, kind), &rows, |g| value(g))?;
    }
    Ok(())
}

fn connections(e: &mut DescriptorEncoder<'_>, conns: &[ConnectionStatus]) -> std::fmt::Result {
    let flows: Vec<String> = conns
        .iter()
        .map(|c| c.flow.map_or("-".to_string(), |f| f.to_string()))
        .collect();
    let rows: Vec<(&ConnectionStatus, Labels)> = conns
        .iter()
        .zip(&flows)
        .map(|(c, f)| (c, vec![("kind", c.kind.as_str()), ("flow", f.as_str())]))
        .collect();
    let tcp = |f: fn(&TcpStats) -> Num| move |c: &&ConnectionStatus| c.tcp.as_ref().map(f);
    let bytes = || Some(Unit::Bytes);
    let secs = || Some(Unit::Seconds);
    family(
        e,
        (
            "lmas_connection_sent",
            "Bytes written to a WAN connection (records, after encryption).",
            bytes(),
            Counter,
        ),
        &rows,
        |c| Some(Int(c.bytes_sent)),
    )?;
    family(
        e,
        (
            "lmas_connection_received",
            "Bytes read from a WAN connection (records, before decryption).",
            bytes(),
            Counter,
        ),
        &rows,
        |c| Some(Int(c.bytes_received)),
    )?;
    family(
        e,
        (
            "lmas_connection_age",
            "Time since a WAN connection was set up.",
            secs(),
            Gauge,
        ),
        &rows,
        |c| Some(Float(c.age_secs)),
    )?;
    // The rest comes from TCP_INFO: no sample where the kernel gave none.
    family(
        e,
        (
            "lmas_connection_rtt",
            "Smoothed round-trip time of a WAN connection (TCP_INFO).",
            secs(),
            Gauge,
        ),
        &rows,
        tcp(|t| Float(f64::from(t.rtt_us) / 1e6)),
    )?;
    family(
        e,
        (
            "lmas_connection_rttvar",
            "Round-trip time variation of a WAN connection (TCP_INFO).",
            secs(),
            Gauge,
        ),
        &rows,
        tcp(|t| Float(f64::from(t.rttvar_us) / 1e6)),
    )?;
    family(
        e,
        (
            "lmas_connection_cwnd_segments",
            "Congestion window of a WAN connection, in segments (TCP_INFO).",
            None,
            Gauge,
        ),
        &rows,
        tcp(|t| Int(t.cwnd_segments.into())),
    )?;
    family(
        e,
        (
            "lmas_connection_mss",
            "Send MSS of a WAN connection (TCP_INFO).",
            bytes(),
            Gauge,
        ),
        &rows,
        tcp(|t| Int(t.mss.into())),
    )?;
    family(
        e,
        (
            "lmas_connection_unacked_segments",
            "Segments sent and not yet acknowledged on a WAN connection (TCP_INFO).",
            None,
            Gauge,
        ),
        &rows,
        tcp(|t| Int(t.unacked_segments.into())),
    )?;
    family(
        e,
        ("lmas_connection_retransmits", "Segments retransmitted on a WAN connection over its life (TCP_INFO total_retrans; restarts with a re-dialled flow).", None, Counter),
        &rows,
        tcp(|t| Int(t.total_retransmits.into())),
    )
}

fn sessions(e: &mut DescriptorEncoder<'_>, all: &[SessionStatus]) -> std::fmt::Result {
    let mut shown: Vec<&SessionStatus> = all.iter().collect();
    shown.sort_by_key(|s| s.id);
    shown.truncate(MAX_SESSION_SERIES);
    let ids: Vec<String> = shown.iter().map(|s| s.id.to_string()).collect();
    let rows: Vec<(&SessionStatus, Labels)> = shown
        .iter()
        .zip(&ids)
        .map(|(s, id)| {
            (
                *s,
                vec![("session", id.as_str()), ("target", s.target.as_str())],
            )
        })
        .collect();
    let bytes = || Some(Unit::Bytes);
    family(
        e,
        (
            "lmas_session_up",
            "Bytes read from this gateway's endpoint of a session and queued for the peer.",
            bytes(),
            Counter,
        ),
        &rows,
        |s| Some(Int(s.bytes_up)),
    )?;
    family(
        e,
        (
            "lmas_session_up_acked",
            "Of a session's bytes up, those the peer acknowledged (delivered at the far end).",
            bytes(),
            Counter,
        ),
        &rows,
        |s| Some(Int(s.bytes_up_acked)),
    )?;
    family(
        e,
        (
            "lmas_session_down",
            "Bytes of a session delivered to this gateway's endpoint.",
            bytes(),
            Counter,
        ),
        &rows,
        |s| Some(Int(s.bytes_down)),
    )?;
    family(
        e,
        (
            "lmas_session_in_flight",
            "Bytes of a session sent or queued and not yet acknowledged by the peer.",
            bytes(),
            Gauge,
        ),
        &rows,
        |s| Some(Int(s.in_flight)),
    )?;
    family(
        e,
        (
            "lmas_session_age",
            "Time since a session was opened.",
            Some(Unit::Seconds),
            Gauge,
        ),
        &rows,
        |s| Some(Float(s.age_secs)),
    )?;
    let packing: Vec<(&PackingStatus, Labels)> = rows
        .iter()
        .map(|(s, labels)| (&s.compression, labels.clone()))
        .collect();
    compression(e, "lmas_session", "of a session", &packing)?;
    let dedups: Vec<(&DedupStatus, Labels)> = rows
        .iter()
        .map(|(s, labels)| (&s.dedup, labels.clone()))
        .collect();
    dedup(e, "lmas_session", "of a session", &dedups)?;
    single(
        e,
        (
            "lmas_session_series_omitted",
            "Sessions left out of the per-session series (only the oldest are shown).",
            None,
            Gauge,
        ),
        Int(all.len().saturating_sub(MAX_SESSION_SERIES) as u64),
    )
}

/// One compression family: name suffix, help, unit, and its value in a [`PackingStatus`].
type PackingFamily = (
    &'static str,
    &'static str,
    Option<Unit>,
    fn(&PackingStatus) -> Num,
);

/// The compression families of one scope, `PREFIX_compression_*`: the figures of
/// [`PackingStatus`] (the ratio is `out / in`, left to the query).
fn compression(
    e: &mut DescriptorEncoder<'_>,
    prefix: &str,
    whose: &str,
    rows: &[(&PackingStatus, Labels<'_>)],
) -> std::fmt::Result {
    let figures: [PackingFamily; 6] = [
        (
            "in",
            "Data payload bytes offered to packing",
            Some(Unit::Bytes),
            |c| Int(c.bytes_in),
        ),
        (
            "out",
            "Bytes that went on the wire for the data payload offered to packing",
            Some(Unit::Bytes),
            |c| Int(c.bytes_out),
        ),
        ("frames_packed", "Data frames sent packed", None, |c| {
            Int(c.frames_packed)
        }),
        (
            "frames_skipped",
            "Data frames found incompressible and sent as they are",
            None,
            |c| Int(c.frames_skipped),
        ),
        ("pack", "CPU time spent packing", Some(Unit::Seconds), |c| {
            Float(c.pack_ns as f64 / 1e9)
        }),
        (
            "unpack",
            "CPU time spent unpacking what the peer packed",
            Some(Unit::Seconds),
            |c| Float(c.unpack_ns as f64 / 1e9),
        ),
    ];
    for (name, help, unit, value) in figures {
        let metric = format!("{prefix}_compression_{name}");
        let help = format!("{help}, {whose}.");
        family(e, (&metric, &help, unit, Counter), rows, |c| Some(value(c)))?;
    }
    Ok(())
}

/// One dedup family: name suffix, help, unit, and its value in a [`DedupStatus`].
type DedupFamily = (
    &'static str,
    &'static str,
    Option<Unit>,
    fn(&DedupStatus) -> u64,
);

/// The dedup families of one scope, `PREFIX_dedup_*`: the figures of [`DedupStatus`] (the
/// hit rate is `ref / in`, left to the query).
fn dedup(
    e: &mut DescriptorEncoder<'_>,
    prefix: &str,
    whose: &str,
    rows: &[(&DedupStatus, Labels<'_>)],
) -> std::fmt::Result {
    let figures: [DedupFamily; 7] = [
        (
            "in",
            "Stream bytes sent through dedup (chunked and fingerprinted)",
            Some(Unit::Bytes),
            |d| d.bytes_in,
        ),
        (
            "out",
            "Bytes of the item lists those became, before packing",
            Some(Unit::Bytes),
            |d| d.bytes_out,
        ),
        (
            "ref",
            "Stream bytes sent as references to the peer's dedup store",
            Some(Unit::Bytes),
            |d| d.ref_bytes,
        ),
        (
            "frames_skipped",
            "Data frames sent as they are (nothing repeated lately, or all zeros)",
            None,
            |d| d.frames_skipped,
        ),
        (
            "misses_answered",
            "Data frames the peer could not resolve and got again as they are",
            None,
            |d| d.misses_answered,
        ),
        (
            "resolved",
            "Stream bytes received as references and taken from the dedup store",
            Some(Unit::Bytes),
            |d| d.resolved_bytes,
        ),
        (
            "misses",
            "Received data frames with a reference the dedup store did not hold (asked for again)",
            None,
            |d| d.misses,
        ),
    ];
    for (name, help, unit, value) in figures {
        let metric = format!("{prefix}_dedup_{name}");
        let help = format!("{help}, {whose}.");
        family(e, (&metric, &help, unit, Counter), rows, |d| {
            Some(Int(value(d)))
        })?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::admin::status::{PacingStatus, TunnelStatus};

    fn status(sessions: usize) -> Status {
        Status {
            gateway: "gw-a".into(),
            peer: "gw \"b\"\n".into(),
            uptime_secs: 1.5,
            counters: [("sessions_opened".to_string(), 3), ("new-thing".into(), 1)]
                .into_iter()
                .collect(),
            gauges: [("dpdk_lan_mbufs_free".to_string(), 900)].into(),
            tunnel: Some(TunnelStatus {
                id: "00".into(),
                state: "up".into(),
                peer: "gw-b".into(),
                buffered_bytes: 77,
                connections: vec![
                    ConnectionStatus {
                        kind: "control".into(),
                        flow: None,
                        local: "127.0.0.1:1".into(),
                        remote: "127.0.0.1:2".into(),
                        age_secs: 2.0,
                        bytes_sent: 10,
                        bytes_received: 20,
                        tcp: None,
                    },
                    ConnectionStatus {
                        kind: "data".into(),
                        flow: Some(3),
                        local: "127.0.0.1:3".into(),
                        remote: "127.0.0.1:4".into(),
                        age_secs: 2.0,
                        bytes_sent: 1000,
                        bytes_received: 30,
                        tcp: Some(TcpStats {
                            rtt_us: 1500,
                            rttvar_us: 10,
                            cwnd_segments: 10,
                            mss: 1448,
                            total_retransmits: 2,
                            unacked_segments: 1,
                            in_flight_segments: 1,
                        }),
                    },
                ],
                groups: vec![GroupStatus {
                    source: None,
                    target: "10.9.0.1:4444".into(),
                    sessions: 1,
                    weight: 1,
                    cap_bytes_per_sec: None,
                    sent_bytes: 5,
                    rate_bytes_per_sec: 5,
                    share: 1.0,
                    unsent_bytes: 7,
                    unsent_budget_bytes: Some(1_250_000),
                }],
                link_cap_bytes_per_sec: Some(125_000_000),
                pacing: Some(PacingStatus {
                    mode: "probing".into(),
                    bottleneck_bytes_per_sec: 118_000_000,
                    min_rtt_us: Some(100_000),
                    rate_bytes_per_sec: Some(147_500_000),
                    giving_way: true,
                }),
                dedup: DedupStatus {
                    bytes_in: 4096,
                    bytes_out: 100,
                    ref_bytes: 4000,
                    store_chunks: 3,
                    ..Default::default()
                },
                sessions: (0..sessions as u64)
                    .map(|i| SessionStatus {
                        id: i * 2,
                        state: "open".into(),
                        source: None,
                        target: "[::1]:5000".into(),
                        age_secs: 1.0,
                        bytes_up: 100 + i,
                        bytes_up_acked: 90,
                        bytes_down: 5,
                        in_flight: 10 + i,
                        compression: PackingStatus {
                            bytes_in: 1000 * (i + 1),
                            bytes_out: 480 * (i + 1),
                            frames_packed: 2,
                            frames_skipped: i,
                            pack_ns: 1_500_000,
                            ratio: Some(0.48),
                            ..Default::default()
                        },
                        dedup: Default::default(),
                    })
                    .collect(),
                counters: [("resent_bytes".to_string(), 4)].into_iter().collect(),
                compression: PackingStatus {
                    bytes_in: 3000,
                    bytes_out: 1440,
                    frames_packed: 4,
                    frames_skipped: 1,
                    pack_ns: 3_000_000,
                    unpack_ns: 250_000_000,
                    ratio: Some(0.48),
                },
            }),
        }
    }

    #[test]
    fn figures_match_the_snapshot() {
        let text = encode(&status(2)).unwrap();
        for line in [
            "# TYPE lmas_sessions_opened_total counter",
            "lmas_sessions_opened_total 3",
            "lmas_new_thing_total 1",
            "# TYPE lmas_dpdk_lan_mbufs_free gauge",
            "lmas_dpdk_lan_mbufs_free 900",
            "lmas_tunnel_resent_bytes_total 4",
            "lmas_tunnel_state{state=\"up\"} 1",
            "lmas_tunnel_state{state=\"down\"} 0",
            "lmas_tunnel_buffered_bytes 77",
            "lmas_sessions{state=\"open\"} 2",
            "lmas_connection_sent_bytes_total{kind=\"data\",flow=\"3\"} 1000",
            "lmas_connection_received_bytes_total{kind=\"control\",flow=\"-\"} 20",
            "lmas_connection_rtt_seconds{kind=\"data\",flow=\"3\"} 0.0015",
            "lmas_connection_retransmits_total{kind=\"data\",flow=\"3\"} 2",
            "lmas_connection_cwnd_segments{kind=\"data\",flow=\"3\"} 10",
            "lmas_session_up_bytes_total{session=\"2\",target=\"[::1]:5000\"} 101",
            "lmas_session_in_flight_bytes{session=\"0\",target=\"[::1]:5000\"} 10",
            "lmas_session_series_omitted 0",
            "lmas_tunnel_compression_in_bytes_total 3000",
            "lmas_tunnel_compression_out_bytes_total 1440",
            "lmas_tunnel_compression_frames_skipped_total 1",
            "lmas_tunnel_compression_unpack_seconds_total 0.25",
            "lmas_session_compression_in_bytes_total{session=\"2\",target=\"[::1]:5000\"} 2000",
            "lmas_session_compression_out_bytes_total{session=\"0\",target=\"[::1]:5000\"} 480",
            "lmas_session_compression_frames_packed_total{session=\"2\",target=\"[::1]:5000\"} 2",
            "lmas_session_compression_pack_seconds_total{session=\"0\",target=\"[::1]:5000\"} 0.0015",
            "lmas_gateway_info{gateway=\"gw-a\",peer=\"gw \\\"b\\\"\\n\"} 1",
            "lmas_group_sent_bytes_total{source=\"peer\",target=\"10.9.0.1:4444\"} 5",
            "lmas_group_share{source=\"peer\",target=\"10.9.0.1:4444\"} 1.0",
            "lmas_group_unsent_bytes{source=\"peer\",target=\"10.9.0.1:4444\"} 7",
            "lmas_group_unsent_budget_bytes{source=\"peer\",target=\"10.9.0.1:4444\"} 1250000",
            "lmas_link_cap_bytes_per_second 125000000",
            "lmas_pacing_bottleneck_bytes_per_second 118000000",
            "lmas_pacing_giving_way 1",
            "lmas_pacing_rate_bytes_per_second 147500000",
        ] {
            assert!(
                text.lines().any(|l| l == line),
                "missing {line:?} in\n{text}"
            );
        }
        // A connection without TCP_INFO has no RTT sample, rather than a zero.
        assert!(!text.contains("lmas_connection_rtt_seconds{kind=\"control\""));
        // No cap, no sample.
        assert!(!text.contains("lmas_group_cap_bytes_per_second{"));
    }

    #[test]
    fn session_series_are_capped() {
        let n = MAX_SESSION_SERIES + 5;
        let text = encode(&status(n)).unwrap();
        let up = text
            .lines()
            .filter(|l| l.starts_with("lmas_session_up_bytes_total{"))
            .count();
        assert_eq!(up, MAX_SESSION_SERIES);
        let packed = text
            .lines()
            .filter(|l| l.starts_with("lmas_session_compression_in_bytes_total{"))
            .count();
        assert_eq!(
            packed, MAX_SESSION_SERIES,
            "compression series share the cap"
        );
        assert!(text.contains("lmas_session_series_omitted 5\n"), "{text}");
        assert!(text.contains(&format!("lmas_sessions{{state=\"open\"}} {n}\n")));
    }

    #[test]
    fn no_tunnel_is_state_down() {
        let mut s = status(0);
        s.tunnel = None;
        let text = encode(&s).unwrap();
        assert!(
            text.contains("lmas_tunnel_state{state=\"down\"} 1\n"),
            "{text}"
        );
        assert!(!text.contains("lmas_sessions{"));
    }
}

//! Whether an ingress takes a client's connection: the checks both datapaths make when a
//! client connects, in one order, with one wording for the log line that names the client;
//! and the session it opens for a client it took.

use std::net::{IpAddr, SocketAddr};

use log::{info, warn};

use crate::protocol::{RefuseReason, SessionId};
use crate::session::{Origin, SessionError, TunnelCore};
use crate::sources::SourceList;

/// What the datapath knows of the client and of itself when a client connects to ingress
/// `index`.
#[derive(Debug, Clone, Copy)]
pub struct IngressCheck<'a> {
    /// Which `[[ingress]]`.
    pub index: usize,
    /// Its `sources`, if it has one.
    pub sources: Option<&'a SourceList>,
    /// Its `max_sessions_per_source`, and the sessions (and connections on their way to being
    /// ones) the client's address holds on it now.
    pub max_per_source: Option<usize>,
    pub held_by_source: usize,
    /// The gateway's session limit, and the sessions it holds now (where the datapath counts
    /// them at the door; the session core enforces it in any case).
    pub limit: Option<(usize, usize)>,
    /// The gateway is draining or stopping.
    pub stopping: bool,
}

/// Why a client is refused (reset at once).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum IngressRefusal {
    #[error("shutting down")]
    ShuttingDown,
    #[error("{ip} is not in ingress[{index}].sources")]
    NotInSources { ip: IpAddr, index: usize },
    #[error("{ip} already has {cap} sessions (ingress[{index}].max_sessions_per_source = {cap})")]
    PerSourceCap {
        ip: IpAddr,
        index: usize,
        cap: usize,
    },
    #[error("too many sessions (limit {limit})")]
    Limit { limit: usize },
}

impl IngressRefusal {
    /// Whether it counts as an ingress refusal (`ingress_refused`): a client the rules keep
    /// out, not a gateway that is full or stopping.
    pub fn by_rule(self) -> bool {
        matches!(
            self,
            IngressRefusal::NotInSources { .. } | IngressRefusal::PerSourceCap { .. }
        )
    }
}

/// The checks, shutdown first, then who the client is, then how much it and everyone hold.
pub fn check_ingress(ip: IpAddr, c: IngressCheck<'_>) -> Result<(), IngressRefusal> {
    let ip = ip.to_canonical();
    let index = c.index;
    if c.stopping {
        return Err(IngressRefusal::ShuttingDown);
    }
    if c.sources.is_some_and(|s| !s.contains(ip)) {
        return Err(IngressRefusal::NotInSources { ip, index });
    }
    if let Some(cap) = c.max_per_source.filter(|&cap| c.held_by_source >= cap) {
        return Err(IngressRefusal::PerSourceCap { ip, index, cap });
    }
    match c.limit {
        Some((limit, held)) if held >= limit => Err(IngressRefusal::Limit { limit }),
        _ => Ok(()),
    }
}

/// Opens the session of a client of ingress `index` (`client` → `target`) on `core`, through
/// peer `peer`, with one log line either way (on an error the caller resets the client).
pub fn open_client_session(
    core: &mut TunnelCore,
    client: SocketAddr,
    target: SocketAddr,
    index: usize,
    peer: &str,
) -> Result<SessionId, SessionError> {
    let origin = Origin {
        source: Some(client.ip().to_canonical()),
        ingress: u16::try_from(index).ok(),
    };
    let opened = core.open(target, origin);
    match &opened {
        Ok(id) => info!("session {id}: {client} -> {target} via peer {peer}"),
        Err(e) => warn!("{client} -> {target}: {e}; resetting"),
    }
    opened
}

/// The line for session `id` whose target the peer refused (`detail`: the peer's words, if
/// any).
pub fn peer_refused_line(
    id: SessionId,
    target: SocketAddr,
    reason: RefuseReason,
    detail: &str,
) -> String {
    let detail = match detail {
        "" => String::new(),
        d => format!(" ({d})"),
    };
    format!("session {id}: peer refused target {target}: {reason}{detail}")
}

/// The line for `what` (a client, or its session) of ingress `index` that was not open within
/// its connect timeout (the caller resets it).
pub fn connect_timeout_line(what: &str, index: usize, timeout: std::time::Duration) -> String {
    format!(
        "{what}: not open within {}s (ingress[{index}].connect_timeout_secs); resetting",
        timeout.as_secs()
    )
}

/// The line for a client that waited `connect_timeout_ms` for a tunnel that never came up
/// (its connection is then reset).
pub fn no_tunnel_line(
    client: impl std::fmt::Display,
    target: impl std::fmt::Display,
    peer: &str,
    connect_timeout_ms: u64,
) -> String {
    format!(
        "{client} -> {target}: no tunnel to peer {peer} within {connect_timeout_ms} ms; resetting"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(sources: Option<&SourceList>) -> IngressCheck<'_> {
        IngressCheck {
            index: 2,
            sources,
            max_per_source: Some(2),
            held_by_source: 0,
            limit: Some((10, 0)),
            stopping: false,
        }
    }

    #[test]
    fn a_connect_timeout_names_the_client_and_the_setting() {
        assert_eq!(
            connect_timeout_line("10.0.0.9:5 -> 10.0.3.2:4444", 0, std::time::Duration::from_secs(7)),
            "10.0.0.9:5 -> 10.0.3.2:4444: not open within 7s (ingress[0].connect_timeout_secs); resetting"
        );
    }

    #[test]
    fn a_peer_refusal_names_the_session_target_reason_and_any_detail() {
        let target: SocketAddr = "10.0.3.2:5000".parse().unwrap();
        let id = SessionId(7);
        assert_eq!(
            peer_refused_line(id, target, RefuseReason::NotAllowed, ""),
            format!(
                "session {id}: peer refused target 10.0.3.2:5000: {}",
                RefuseReason::NotAllowed
            )
        );
        let why = peer_refused_line(id, target, RefuseReason::ConnectFailed, "timed out");
        assert!(why.ends_with(" (timed out)"), "{why}");
    }

    #[test]
    fn each_rule_refuses_in_order_with_its_line() {
        let only = SourceList::parse(&["10.0.0.0/24"]).unwrap();
        let inside: IpAddr = "10.0.0.7".parse().unwrap();
        let outside: IpAddr = "192.0.2.1".parse().unwrap();
        assert_eq!(check_ingress(inside, check(Some(&only))), Ok(()));
        let e = check_ingress(outside, check(Some(&only))).unwrap_err();
        assert_eq!(e.to_string(), "192.0.2.1 is not in ingress[2].sources");
        assert!(e.by_rule());
        let full = IngressCheck {
            held_by_source: 2,
            ..check(None)
        };
        assert_eq!(
            check_ingress(inside, full).unwrap_err().to_string(),
            "10.0.0.7 already has 2 sessions (ingress[2].max_sessions_per_source = 2)"
        );
        let busy = IngressCheck {
            limit: Some((10, 10)),
            ..check(None)
        };
        let e = check_ingress(inside, busy).unwrap_err();
        assert_eq!(e.to_string(), "too many sessions (limit 10)");
        assert!(!e.by_rule());
        let stopping = IngressCheck {
            stopping: true,
            ..check(Some(&only))
        };
        assert_eq!(
            check_ingress(outside, stopping),
            Err(IngressRefusal::ShuttingDown),
            "shutdown first"
        );
        // An IPv4 client on a dual-stack listener is checked as IPv4.
        let mapped: IpAddr = "::ffff:10.0.0.7".parse().unwrap();
        assert_eq!(check_ingress(mapped, check(Some(&only))), Ok(()));
    }
}

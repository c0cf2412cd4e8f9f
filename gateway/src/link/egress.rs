//! Whether a gateway takes a session the peer opens towards a target: the checks both
//! datapaths make before any connect, in one order, with one wording for the log.

use std::net::SocketAddr;

use crate::protocol::{RefuseReason, SessionId};
use crate::session::TunnelCore;

/// What the datapath knows about a target and itself when the peer asks for it.
#[derive(Debug, Clone, Copy)]
pub struct EgressCheck {
    /// The egress allowlist in force permits the target.
    pub allowed: bool,
    /// The gateway is draining or stopping.
    pub stopping: bool,
    /// The datapath reaches IPv4 targets only (DPDK).
    pub ipv4_only: bool,
}

/// Why a target is refused before any connect attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum EgressRefusal {
    /// First: the gateway is never an open relay, whatever else holds.
    #[error("not in egress allowlist")]
    NotAllowed,
    #[error("gateway shutting down")]
    ShuttingDown,
    #[error("the DPDK datapath is IPv4-only")]
    Ipv4Only,
}

impl EgressRefusal {
    /// The reason the peer is told.
    pub fn reason(self) -> RefuseReason {
        match self {
            EgressRefusal::NotAllowed => RefuseReason::NotAllowed,
            EgressRefusal::ShuttingDown => RefuseReason::ShuttingDown,
            EgressRefusal::Ipv4Only => RefuseReason::ConnectFailed,
        }
    }

    /// The detail the peer is told (its own log shows it beside the reason).
    pub fn detail(self) -> &'static str {
        match self {
            EgressRefusal::Ipv4Only => "IPv6 target on an IPv4-only gateway",
            _ => "",
        }
    }
}

/// Why this gateway does not connect a session's target.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TargetRefusal {
    /// The egress check said no.
    Check(EgressRefusal),
    /// The connect failed (why, in the stack's words).
    ConnectFailed(String),
}

impl TargetRefusal {
    /// Refuses session `id`'s connect to `target` (asked for by `peer`) in `core`, which tells
    /// the peer why; the line to log.
    pub fn refuse(
        &self,
        core: &mut TunnelCore,
        id: SessionId,
        target: SocketAddr,
        peer: &str,
    ) -> String {
        match self {
            TargetRefusal::Check(r) => {
                core.refuse(id, r.reason(), r.detail());
                format!("session {id}: refusing target {target}: {r} (peer {peer})")
            }
            TargetRefusal::ConnectFailed(why) => {
                core.refuse(id, RefuseReason::ConnectFailed, why);
                format!("session {id}: refusing target {target}: connect failed: {why}")
            }
        }
    }
}

/// The checks, allowlist first.
pub fn check_egress(target: &SocketAddr, c: EgressCheck) -> Result<(), EgressRefusal> {
    if !c.allowed {
        Err(EgressRefusal::NotAllowed)
    } else if c.stopping {
        Err(EgressRefusal::ShuttingDown)
    } else if c.ipv4_only && !target.is_ipv4() {
        Err(EgressRefusal::Ipv4Only)
    } else {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A target outside the allowlist is refused as such even while stopping or IPv6; only
    /// a target that passes every check is connected.
    #[test]
    fn the_allowlist_comes_first_and_every_check_counts() {
        let v4: SocketAddr = "10.0.3.2:5000".parse().unwrap();
        let v6: SocketAddr = "[2001:db8::2]:5000".parse().unwrap();
        let check = |target, allowed, stopping, ipv4_only| {
            check_egress(
                &target,
                EgressCheck {
                    allowed,
                    stopping,
                    ipv4_only,
                },
            )
        };
        use EgressRefusal::*;
        assert_eq!(check(v4, true, false, true), Ok(()));
        assert_eq!(
            check(v6, true, false, false),
            Ok(()),
            "the kernel datapath takes IPv6"
        );
        assert_eq!(check(v4, false, true, true), Err(NotAllowed));
        assert_eq!(check(v6, false, false, true), Err(NotAllowed));
        assert_eq!(check(v6, true, true, true), Err(ShuttingDown));
        assert_eq!(check(v4, true, true, false), Err(ShuttingDown));
        assert_eq!(check(v6, true, false, true), Err(Ipv4Only));
        assert_eq!(
            EgressRefusal::NotAllowed.to_string(),
            RefuseReason::NotAllowed.to_string()
        );
        assert_eq!(
            EgressRefusal::ShuttingDown.reason(),
            RefuseReason::ShuttingDown
        );
    }
}

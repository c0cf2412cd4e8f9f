//! The tunnel port's gate: which SYNs reach the stack's listening sockets
//! (the DPDK datapath's share of [`crate::link::admission`]).
//!
//! smoltcp has no SYN cookies: every SYN a listening socket takes becomes a
//! half-open (embryonic) socket until the handshake completes or gives up.
//! So the gate, looking at each frame before the stack does:
//! - drops SYNs from outside `peer.source` (no socket, no SYN-ACK, no state);
//! - always lets through SYNs from a source that authenticated as the peer
//!   before (the engine keeps listening sockets in reserve for them);
//! - lets through other SYNs only while the engine's budget lasts (the
//!   listening sockets it can spare beyond the reserve), so a flood can never
//!   take the socket the peer's re-dial needs.
//!
//! Half-open connections are held here, apart from the pending handshakes (the
//! lifecycle's): only a completed TCP handshake becomes a connection that takes
//! a slot.

use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;

use log::warn;
use smoltcp::iface::SocketHandle;

use crate::admin::Stats;
use crate::frames::syn_source;
use crate::link::admission::{PortGuard, Throttle};
use crate::link::half_open::HalfOpenTable;
use crate::sources::SourceList;

/// A connection whose TCP handshake is under way.
#[derive(Debug, Clone, Copy)]
pub struct Embryo {
    pub handle: SocketHandle,
    pub ip: Ipv4Addr,
}

/// Half-open connections from untrusted sources kept at once; beyond, the oldest are dropped
/// (a spoofed flood displaces only itself).
const MAX_HALF_OPEN: usize = 64;

pub struct TunnelGate {
    port: u16,
    /// Who may connect, who is trusted; the pace of log lines.
    pub guard: PortGuard,
    /// SYNs from untrusted sources that may still reach a listener before
    /// the engine's next turn.
    budget: usize,
    stats: Arc<Stats>,
    /// The clock of the current poll (µs), for the log throttle.
    pub now: u64,
    /// Half-open connections, oldest first (sources that authenticated before are exempt
    /// from the bound).
    pub embryos: HalfOpenTable<Embryo>,
}

impl TunnelGate {
    pub fn new(port: u16, peer_source: Option<SourceList>, stats: Arc<Stats>) -> TunnelGate {
        TunnelGate {
            port,
            guard: PortGuard::new(peer_source),
            budget: 0,
            stats,
            now: 0,
            embryos: HalfOpenTable::new(MAX_HALF_OPEN),
        }
    }

    /// Untrusted SYNs to let through until it is set again.
    pub fn set_budget(&mut self, n: usize) {
        self.budget = n;
    }

    /// Whether the frame (Ethernet, IPv4 to us) may reach the stack.
    pub fn admits(&mut self, frame: &[u8]) -> bool {
        let Some(src) = syn_source(frame, self.port) else {
            return true;
        };
        let ip = IpAddr::V4(src);
        if !self.guard.trust.allows(ip) {
            Stats::inc(&self.stats.tunnel_sources_refused);
            if let Some(more) = self.guard.log_now(self.now) {
                warn!(
                    "SYN to the tunnel port from {src} dropped: not in peer.source{}",
                    Throttle::more(more)
                );
            }
            return false;
        }
        if self.guard.trust.is_trusted(ip) {
            return true;
        }
        if self.budget == 0 {
            Stats::inc(&self.stats.tunnel_syns_dropped);
            return false;
        }
        self.budget -= 1;
        true
    }

    /// Logs a dropped half-open connection (paced).
    pub fn note_dropped(&mut self, e: &Embryo, why: &str) {
        Stats::inc(&self.stats.tunnel_half_open_dropped);
        if let Some(more) = self.guard.log_now(self.now) {
            warn!(
                "half-open connection to the tunnel port from {} dropped: {why}{}",
                e.ip,
                Throttle::more(more)
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An Ethernet frame with an IPv4 TCP segment from `src` to port `dport`, TCP flags `flags`.
    fn tcp_frame(src: [u8; 4], dport: u16, flags: u8) -> Vec<u8> {
        let mut f = vec![0u8; 14 + 20 + 20];
        f[12..14].copy_from_slice(&0x0800u16.to_be_bytes());
        f[14] = 0x45;
        f[14 + 9] = 6;
        f[14 + 12..14 + 16].copy_from_slice(&src);
        f[14 + 16..14 + 20].copy_from_slice(&[10, 0, 2, 1]);
        f[34 + 2..34 + 4].copy_from_slice(&dport.to_be_bytes());
        f[34 + 13] = flags;
        f
    }

    #[test]
    fn peer_source_then_trust_then_budget() {
        let stats = Arc::new(Stats::default());
        let list = SourceList::parse(&["10.0.0.0/8"]).unwrap();
        let mut g = TunnelGate::new(7700, Some(list), stats.clone());
        assert!(
            !g.admits(&tcp_frame([192, 0, 2, 1], 7700, 0x02)),
            "outside peer.source"
        );
        assert!(
            g.admits(&tcp_frame([192, 0, 2, 1], 7700, 0x10)),
            "not a SYN: the stack decides"
        );
        g.set_budget(2);
        assert!(g.admits(&tcp_frame([10, 0, 0, 1], 7700, 0x02)));
        assert!(g.admits(&tcp_frame([10, 0, 0, 2], 7700, 0x02)));
        assert!(
            !g.admits(&tcp_frame([10, 0, 0, 3], 7700, 0x02)),
            "budget spent"
        );
        g.guard
            .trust
            .authenticated(IpAddr::V4(Ipv4Addr::new(10, 9, 9, 9)));
        assert!(
            g.admits(&tcp_frame([10, 9, 9, 9], 7700, 0x02)),
            "the peer always"
        );
        let c = stats.snapshot();
        assert_eq!(c["tunnel_sources_refused"], 1);
        assert_eq!(c["tunnel_syns_dropped"], 1);
    }
}

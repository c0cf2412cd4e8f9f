//! The tunnel port's gate in front of the WAN stack: each frame's SYN to the tunnel port is
//! put to the link layer's [`SynGate`] (`peer.source`, the peer's reserve, the budget of
//! spare listening sockets) before smoltcp, which has no SYN cookies, sees it. What it drops
//! is counted here.

use std::sync::Arc;

use smoltcp::iface::SocketHandle;

use crate::admin::Stats;
use crate::frames::syn_source;
use crate::link::syn_gate::{SynDropped, SynGate};
use crate::sources::SourceList;

pub struct TunnelGate {
    port: u16,
    pub syn: SynGate<SocketHandle>,
    stats: Arc<Stats>,
    /// The clock of the current poll (µs), for the log throttle.
    pub now: u64,
}

impl TunnelGate {
    pub fn new(port: u16, peer_source: Option<SourceList>, stats: Arc<Stats>) -> TunnelGate {
        let syn = SynGate::new(peer_source);
        TunnelGate {
            port,
            syn,
            stats,
            now: 0,
        }
    }

    /// Whether the frame (Ethernet, IPv4 to us) may reach the stack.
    pub fn admits(&mut self, frame: &[u8]) -> bool {
        let Some(src) = syn_source(frame, self.port) else {
            return true;
        };
        let dropped = self.syn.admits(src.into(), self.now).err();
        match dropped {
            None => return true,
            Some(SynDropped::NotPeerSource) => Stats::inc(&self.stats.tunnel_sources_refused),
            Some(SynDropped::NoListener) => Stats::inc(&self.stats.tunnel_syns_dropped),
        }
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::frames::tcp_frame;
    use std::net::{IpAddr, Ipv4Addr};

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
        g.syn.set_budget(2);
        assert!(g.admits(&tcp_frame([10, 0, 0, 1], 7700, 0x02)));
        assert!(g.admits(&tcp_frame([10, 0, 0, 2], 7700, 0x02)));
        assert!(
            !g.admits(&tcp_frame([10, 0, 0, 3], 7700, 0x02)),
            "budget spent"
        );
        g.syn
            .guard
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

//! The tunnel port's gate on a stack without SYN cookies (the DPDK datapath's userspace TCP):
//! which SYNs may reach a listening socket, and the half-open connections they make.
//!
//! Every SYN a listening socket takes becomes a half-open socket until its handshake completes
//! or gives up. So the gate, asked about each SYN before the stack sees it:
//! - drops SYNs from outside `peer.source` (no socket, no SYN-ACK, no state);
//! - always lets through SYNs from a source that authenticated as the peer before (the driver
//!   keeps listening sockets in reserve for them);
//! - lets through other SYNs only while the driver's budget lasts (the listening sockets it
//!   can spare beyond the reserve), so a flood can never take the socket the peer's re-dial
//!   needs.
//!
//! Half-open connections are held here, apart from the pending handshakes (the lifecycle's,
//! [`super::admission`]): only a completed TCP handshake becomes a connection that takes a
//! slot. Log lines about what anyone can repeat at will are paced; `now` is the driver's clock
//! in µs.

use std::net::IpAddr;

use log::warn;

use super::admission::{PortGuard, Throttle};
use super::half_open::{HalfOpenTable, Handshake, Swept};
use crate::sources::SourceList;

/// Half-open connections from untrusted sources kept at once; beyond, the oldest are dropped
/// (a spoofed flood displaces only itself).
const MAX_HALF_OPEN: usize = 64;
/// A half-open connection is dropped after this long (a SYN-ACK retransmitted once on a long
/// path fits in it).
pub const HALF_OPEN_TIMEOUT_US: u64 = 3_000_000;

/// A connection whose TCP handshake is under way: the driver's handle on its socket.
#[derive(Debug, Clone, Copy)]
struct Embryo<H> {
    handle: H,
    ip: IpAddr,
}

/// Why the gate dropped a SYN (the driver counts it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SynDropped {
    /// From outside `peer.source`.
    NotPeerSource,
    /// From a source never authenticated, with no listening socket to spare.
    NoListener,
}

pub struct SynGate<H> {
    /// Who may connect, who is trusted; the pace of log lines.
    pub guard: PortGuard,
    /// SYNs from untrusted sources that may still reach a listener before the driver's next
    /// turn.
    budget: usize,
    /// Oldest first; sources that authenticated before are exempt from the bound.
    embryos: HalfOpenTable<Embryo<H>>,
}

impl<H: Copy> SynGate<H> {
    pub fn new(peer_source: Option<SourceList>) -> Self {
        SynGate {
            guard: PortGuard::new(peer_source),
            budget: 0,
            embryos: HalfOpenTable::new(MAX_HALF_OPEN),
        }
    }

    /// Untrusted SYNs to let through until it is set again.
    pub fn set_budget(&mut self, n: usize) {
        self.budget = n;
    }

    /// Whether a SYN from `src` may reach a listening socket.
    pub fn admits(&mut self, src: IpAddr, now: u64) -> Result<(), SynDropped> {
        if !self.guard.trust.allows(src) {
            self.guard.refused("SYN to the tunnel port", src, now);
            return Err(SynDropped::NotPeerSource);
        }
        if self.guard.trust.is_trusted(src) {
            return Ok(());
        }
        self.budget = self.budget.checked_sub(1).ok_or(SynDropped::NoListener)?;
        Ok(())
    }

    /// A listening socket (`handle`) took a SYN from `ip`: the connection is half-open. If the
    /// table was full, returns the one it displaced, for the driver to close.
    #[must_use = "a displaced connection must be closed"]
    pub fn syn_taken(&mut self, handle: H, ip: IpAddr, now: u64) -> Option<H> {
        let trusted = self.guard.trust.is_trusted(ip);
        let old = self.embryos.push(Embryo { handle, ip }, now, trusted)?;
        self.dropped(old.item, "displaced by newer half-open connections", now);
        Some(old.item.handle)
    }

    /// Takes out the half-open connections whose handshake completed (now connections), gave
    /// up, or did not complete within [`HALF_OPEN_TIMEOUT_US`] (logged), as `state` tells.
    pub fn sweep(&mut self, now: u64, mut state: impl FnMut(H) -> Handshake) -> Swept<H> {
        let swept = self
            .embryos
            .sweep(now, HALF_OPEN_TIMEOUT_US, |e| state(e.handle));
        for &e in &swept.timed_out {
            self.dropped(e, "no handshake within 3 s", now);
        }
        let handles = |v: Vec<Embryo<H>>| v.into_iter().map(|e| e.handle).collect();
        Swept {
            completed: handles(swept.completed),
            gave_up: handles(swept.gave_up),
            timed_out: handles(swept.timed_out),
        }
    }

    fn dropped(&mut self, e: Embryo<H>, why: &str, now: u64) {
        if let Some(more) = self.guard.log_now(now) {
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

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn peer_source_then_trust_then_budget() {
        let list = SourceList::parse(&["10.0.0.0/8"]).unwrap();
        let mut g = SynGate::<u32>::new(Some(list));
        let outside = g.admits(ip("192.0.2.1"), 0);
        assert_eq!(outside, Err(SynDropped::NotPeerSource));
        g.set_budget(2);
        assert_eq!(g.admits(ip("10.0.0.1"), 0), Ok(()));
        assert_eq!(g.admits(ip("10.0.0.2"), 0), Ok(()));
        let spent = g.admits(ip("10.0.0.3"), 0);
        assert_eq!(spent, Err(SynDropped::NoListener), "budget spent");
        g.guard.trust.authenticated(ip("10.9.9.9"));
        assert_eq!(g.admits(ip("10.9.9.9"), 0), Ok(()), "the peer always");
    }

    /// A flood of half-open connections displaces only itself: the peer's, taken first, stays
    /// until its handshake completes, and the rest time out.
    #[test]
    fn a_flood_displaces_itself_and_the_rest_time_out() {
        let mut g = SynGate::<u32>::new(None);
        g.guard.trust.authenticated(ip("10.9.9.9"));
        assert_eq!(g.syn_taken(0, ip("10.9.9.9"), 0), None);
        let displaced: Vec<u32> = (1..=MAX_HALF_OPEN as u32 + 5)
            .filter_map(|k| g.syn_taken(k, ip("192.0.2.1"), 10))
            .collect();
        assert_eq!(displaced, [1, 2, 3, 4, 5], "the oldest of the flood");
        let swept = g.sweep(HALF_OPEN_TIMEOUT_US + 10, |h| match h {
            0 => Handshake::Completed,
            6 => Handshake::GaveUp,
            _ => Handshake::UnderWay,
        });
        assert_eq!(swept.completed, [0]);
        assert_eq!(swept.gave_up, [6]);
        assert_eq!(swept.timed_out.len(), MAX_HALF_OPEN - 1);
        let later = g.sweep(2 * HALF_OPEN_TIMEOUT_US, |_| Handshake::UnderWay);
        assert!(
            later.completed.is_empty() && later.timed_out.is_empty(),
            "nothing left"
        );
    }
}

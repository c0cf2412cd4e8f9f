//! Admission of not-yet-authenticated connections on the tunnel port, the
//! policy both datapaths share: the drivers filter by `peer.source` before a
//! connection exists ([`PortGuard`]), the lifecycle holds the pending
//! handshakes ([`HandshakeTable`]).
//!
//! - `peer.source` ([`Trust::allows`]): a connection from outside it is
//!   dropped before any state is kept for it.
//! - Only connections that completed the TCP handshake count: a SYN costs
//!   the kernel a SYN cookie at most, and the DPDK datapath keeps embryonic
//!   connections apart, briefly, without a handshake slot.
//! - At most `limit` handshakes are pending. The last [`RESERVED`] slots are
//!   kept for sources that authenticated as the peer before ([`Trust`]), so
//!   a flood from anywhere else can never hold every slot while the peer
//!   re-dials.
//! - When a slot must be freed, the victim is the oldest pending handshake
//!   of the busiest source *prefix* (/24 for IPv4, /64 for IPv6: one site
//!   holds such a block, so counting exact addresses let 64 addresses of one
//!   block look like 64 polite sources), and never a trusted one while an
//!   untrusted one is left. Ties go to the prefix whose oldest entry is
//!   oldest, so the choice is deterministic.

use std::collections::{HashMap, VecDeque};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use crate::sources::SourceList;

/// Handshakes pending at once on the tunnel port; beyond, one is dropped (see [`admit`]), so a
/// flood of half-open connections cannot exhaust a gateway.
pub const MAX_PENDING_HANDSHAKES: usize = 64;
/// Handshake slots only trusted sources may take (a quarter of a smaller table).
pub const RESERVED: usize = 8;
/// Addresses remembered as the peer's (a peer behind a NAT that moves may
/// show up from a few).
const KNOWN: usize = 16;

/// The group a source is judged by: its /24 (IPv4) or /64 (IPv6).
pub fn prefix(ip: IpAddr) -> IpAddr {
    match ip.to_canonical() {
        IpAddr::V4(a) => IpAddr::V4(Ipv4Addr::from(u32::from(a) & 0xffff_ff00)),
        IpAddr::V6(a) => IpAddr::V6(Ipv6Addr::from(u128::from(a) & !((1u128 << 64) - 1))),
    }
}

/// Who may connect to the tunnel port, and who has proven to be the peer.
#[derive(Debug, Clone, Default)]
pub struct Trust {
    /// `peer.source`; `None`: anyone may try.
    sources: Option<SourceList>,
    /// Addresses that completed a handshake as the peer, newest last.
    known: VecDeque<IpAddr>,
}

impl Trust {
    pub fn new(sources: Option<SourceList>) -> Trust {
        Trust {
            sources,
            known: VecDeque::new(),
        }
    }

    /// Whether `peer.source` lets `ip` connect at all.
    pub fn allows(&self, ip: IpAddr) -> bool {
        self.sources.as_ref().is_none_or(|s| s.contains(ip))
    }

    /// Whether `ip` completed a handshake as the peer before.
    pub fn is_trusted(&self, ip: IpAddr) -> bool {
        self.known.contains(&ip.to_canonical())
    }

    /// `ip` just authenticated as the peer.
    pub fn authenticated(&mut self, ip: IpAddr) {
        let ip = ip.to_canonical();
        if let Some(i) = self.known.iter().position(|&k| k == ip) {
            self.known.remove(i);
        }
        if self.known.len() == KNOWN {
            self.known.pop_front();
        }
        self.known.push_back(ip);
    }
}

/// `" (only from peer.source: …)"` for the startup line, or nothing.
pub fn only_from(sources: Option<&SourceList>) -> String {
    sources.map_or(String::new(), |s| format!(" (only from peer.source: {s})"))
}

/// Paces log lines about events anyone on the network can repeat at will
/// (dropped SYNs, refused connections): up to [`Throttle::BURST`] lines a
/// second, then one line that says how many were left out.
#[derive(Debug, Default)]
pub struct Throttle {
    window_start: u64,
    lines: u32,
    suppressed: u64,
}

impl Throttle {
    pub const BURST: u32 = 10;

    /// Whether to log now (`now` in µs on any steady clock): `Some(n)` with
    /// the number of lines left out since the last one, `None` to stay quiet.
    pub fn allow(&mut self, now: u64) -> Option<u64> {
        if now.saturating_sub(self.window_start) >= 1_000_000 {
            self.window_start = now;
            self.lines = 0;
        }
        if self.lines >= Self::BURST {
            self.suppressed += 1;
            return None;
        }
        self.lines += 1;
        Some(std::mem::take(&mut self.suppressed))
    }

    /// `" (N more like it not logged)"`, or nothing.
    pub fn more(n: u64) -> String {
        if n == 0 {
            String::new()
        } else {
            format!(" ({n} more like it not logged)")
        }
    }
}

/// A pending handshake, as the policy sees it.
#[derive(Debug, Clone, Copy)]
pub struct Pending<K> {
    pub key: K,
    pub ip: IpAddr,
    /// Arrival order: smaller is older.
    pub seq: u64,
    pub trusted: bool,
}

/// What to do with a new connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision<K> {
    Admit,
    /// Admit it, and drop this pending handshake to make room.
    Evict(K),
    /// Drop the new connection: every slot it may take is held by trusted sources.
    Refuse,
}

/// Decides on a new connection (`trusted` or not) given the handshakes
/// `pending` now (the new one not among them) and the table's `limit`.
pub fn admit<K: Copy>(pending: &[Pending<K>], trusted: bool, limit: usize) -> Decision<K> {
    let untrusted = pending.iter().filter(|p| !p.trusted).count();
    let untrusted_limit = limit - RESERVED.min(limit / 4);
    let full = pending.len() >= limit;
    let victim = |trusted: bool| {
        victim(pending.iter().filter(|p| p.trusted == trusted))
            .map_or(Decision::Refuse, Decision::Evict)
    };
    match (trusted, full, untrusted > 0) {
        (true, false, _) => Decision::Admit,
        (true, true, true) => victim(false),
        (true, true, false) => victim(true),
        (false, false, _) if untrusted < untrusted_limit => Decision::Admit,
        (false, _, true) => victim(false),
        (false, _, false) => Decision::Refuse,
    }
}

/// The oldest entry of the prefix with the most entries (ties: the prefix
/// whose oldest entry is oldest).
fn victim<'a, K: Copy + 'a>(entries: impl Iterator<Item = &'a Pending<K>>) -> Option<K> {
    // Per prefix: (count, the oldest entry's seq and key).
    let mut groups: HashMap<IpAddr, (usize, u64, K)> = HashMap::new();
    for p in entries {
        let g = groups.entry(prefix(p.ip)).or_insert((0, p.seq, p.key));
        g.0 += 1;
        if p.seq < g.1 {
            (g.1, g.2) = (p.seq, p.key);
        }
    }
    groups
        .into_values()
        .max_by(|a, b| a.0.cmp(&b.0).then(b.1.cmp(&a.1)))
        .map(|(_, _, k)| k)
}

/// Why a handshake was dropped to keep the table bounded (one wording for both datapaths).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Dropped {
    #[error("{limit} handshakes pending, evicting the oldest from the busiest source prefix")]
    Evicted { limit: usize },
    #[error("every handshake slot it may take is held by sources that authenticated as peer {peer} before")]
    Refused { peer: String },
}

/// How [`HandshakeTable::admit`] went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[must_use = "an evicted handshake must be closed, a refused connection dropped"]
pub enum Admission<K> {
    /// The new connection has a slot; the handshake evicted for it (key and address), if any.
    Admitted { evicted: Option<(K, SocketAddr)> },
    /// Every slot it may take is held by sources that authenticated as the peer before.
    Refused,
}

/// The handshakes pending on the tunnel port under [`admit`]'s policy (the lifecycle keeps
/// them). `K` is the driver's key for a connection.
#[derive(Debug)]
pub struct HandshakeTable<K> {
    limit: usize,
    /// Oldest first, with each connection's address.
    pending: Vec<(Pending<K>, SocketAddr)>,
    next_seq: u64,
}

impl<K: Copy + PartialEq> HandshakeTable<K> {
    /// A table of `limit` slots.
    pub fn new(limit: usize) -> Self {
        HandshakeTable {
            limit,
            pending: Vec::new(),
            next_seq: 0,
        }
    }

    /// A connection from `addr` (`trusted`: it authenticated as the peer before) completed its
    /// TCP handshake: it takes a slot, evicting another handshake if the policy says so, or is
    /// refused.
    pub fn admit(&mut self, key: K, addr: SocketAddr, trusted: bool) -> Admission<K> {
        let pending: Vec<Pending<K>> = self.pending.iter().map(|(p, _)| *p).collect();
        let evicted = match admit(&pending, trusted, self.limit) {
            Decision::Refuse => return Admission::Refused,
            Decision::Admit => None,
            Decision::Evict(victim) => {
                let at = self.pending.iter().position(|(p, _)| p.key == victim);
                at.map(|i| self.pending.remove(i)).map(|(p, a)| (p.key, a))
            }
        };
        let entry = Pending {
            key,
            ip: addr.ip(),
            seq: self.next_seq,
            trusted,
        };
        self.pending.push((entry, addr));
        self.next_seq += 1;
        Admission::Admitted { evicted }
    }

    /// The handshake of `key` ended (done, failed, or its connection closed): its slot is free.
    pub fn done(&mut self, key: K) {
        self.pending.retain(|(p, _)| p.key != key);
    }

    /// Handshakes pending now.
    pub fn len(&self) -> usize {
        self.pending.len()
    }

    pub fn is_empty(&self) -> bool {
        self.pending.is_empty()
    }

    /// Why a handshake was dropped, for the log line.
    pub fn why(&self, admission: &Admission<K>, peer: &str) -> Dropped {
        match admission {
            Admission::Refused => Dropped::Refused {
                peer: peer.to_string(),
            },
            Admission::Admitted { .. } => Dropped::Evicted { limit: self.limit },
        }
    }
}

/// The tunnel port's guard, in the driver, before any connection is known to the lifecycle:
/// who may connect and who proved to be the peer (updated by [`super::Action::Trust`]), and
/// the pace of the lines about what it turns away.
#[derive(Debug, Default)]
pub struct PortGuard {
    pub trust: Trust,
    throttle: Throttle,
}

impl PortGuard {
    /// `peer_source` is `peer.source`.
    pub fn new(peer_source: Option<SourceList>) -> PortGuard {
        PortGuard {
            trust: Trust::new(peer_source),
            throttle: Throttle::default(),
        }
    }

    /// Whether to log an event about the tunnel port now (see [`Throttle`]); `now` in µs.
    pub fn log_now(&mut self, now: u64) -> Option<u64> {
        self.throttle.allow(now)
    }

    /// Logs, paced, that `what` from `src` was refused for being outside `peer.source`.
    pub fn refused(&mut self, what: &str, src: impl std::fmt::Display, now: u64) {
        if let Some(more) = self.log_now(now) {
            let more = Throttle::more(more);
            log::warn!("{what} from {src} refused: not in peer.source{more}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn p(key: u32, addr: &str, trusted: bool) -> Pending<u32> {
        Pending {
            key,
            ip: ip(addr),
            seq: key as u64,
            trusted,
        }
    }

    #[test]
    fn the_busiest_prefix_loses_its_oldest() {
        // 3 addresses of one /24 outweigh 2 connections from one other address.
        let t = [
            p(1, "10.0.0.1", false),
            p(2, "10.0.0.1", false),
            p(3, "10.9.0.7", false),
            p(4, "10.9.0.8", false),
            p(5, "10.9.0.9", false),
        ];
        assert_eq!(admit(&t, false, 5), Decision::Evict(3));
        // IPv6: one /64.
        let t = [
            p(1, "2001:db8:1::1", false),
            p(2, "2001:db8::a", false),
            p(3, "2001:db8::b", false),
        ];
        assert_eq!(admit(&t, false, 3), Decision::Evict(2));
        // A tie: the prefix holding the oldest entry.
        let t = [
            p(7, "10.0.0.1", false),
            p(3, "10.1.0.1", false),
            p(9, "10.2.0.1", false),
        ];
        assert_eq!(admit(&t, false, 3), Decision::Evict(3));
        assert_eq!(victim(Vec::<Pending<u32>>::new().iter()), None);
    }

    #[test]
    fn a_trusted_source_always_gets_a_slot_and_keeps_it() {
        let limit = 64;
        // Untrusted sources alone fill at most limit - RESERVED slots: the next one evicts.
        let mut t: Vec<Pending<u32>> = (0..56)
            .map(|i| p(i, &format!("10.7.{i}.1"), false))
            .collect();
        assert_eq!(admit(&t, false, limit), Decision::Evict(0));
        // ...while a trusted one walks in.
        assert_eq!(admit(&t, true, limit), Decision::Admit);
        t.push(p(100, "192.0.2.1", true));
        // A full table: a trusted newcomer evicts an untrusted entry, never the trusted one.
        t.extend((56..63).map(|i| p(i, &format!("10.7.{i}.1"), false)));
        assert_eq!(t.len(), limit);
        assert!(matches!(admit(&t, true, limit), Decision::Evict(k) if k != 100));
        for _ in 0..100 {
            assert!(matches!(admit(&t, false, limit), Decision::Evict(k) if k != 100));
        }
        // Every slot trusted: an untrusted newcomer is refused, a trusted one replaces the oldest.
        let all: Vec<Pending<u32>> = (0..64).map(|i| p(i, "192.0.2.1", true)).collect();
        assert_eq!(admit(&all, false, limit), Decision::Refuse);
        assert_eq!(admit(&all, true, limit), Decision::Evict(0));
    }

    #[test]
    fn the_throttle_lets_a_burst_through_then_counts() {
        let mut t = Throttle::default();
        for _ in 0..Throttle::BURST {
            assert_eq!(t.allow(10), Some(0));
        }
        assert_eq!(t.allow(20), None);
        assert_eq!(t.allow(30), None);
        assert_eq!(t.allow(1_000_010), Some(2));
        assert_eq!(Throttle::more(2), " (2 more like it not logged)");
        assert_eq!(Throttle::more(0), "");
    }

    #[test]
    fn trust_remembers_the_peer_and_filters_by_peer_source() {
        let mut t = Trust::new(Some(SourceList::parse(&["192.0.2.0/24"]).unwrap()));
        assert!(t.allows(ip("192.0.2.9")));
        assert!(!t.allows(ip("198.51.100.9")));
        assert!(!t.is_trusted(ip("192.0.2.9")));
        t.authenticated(ip("::ffff:192.0.2.9"));
        assert!(t.is_trusted(ip("192.0.2.9")));
        for i in 0..KNOWN as u8 {
            t.authenticated(IpAddr::V4(Ipv4Addr::new(192, 0, 2, 100 + i)));
        }
        assert!(!t.is_trusted(ip("192.0.2.9")), "the oldest is forgotten");
        assert!(Trust::default().allows(ip("198.51.100.9")));
        assert_eq!(prefix(ip("10.1.2.3")), ip("10.1.2.0"));
        assert_eq!(prefix(ip("2001:db8::1:2")), ip("2001:db8::"));
    }

    fn addr(s: &str) -> SocketAddr {
        SocketAddr::new(s.parse().unwrap(), 1000)
    }

    /// The peer's address in these tests: it authenticated before.
    const PEER: &str = "192.0.2.1";

    fn admitted(t: &mut HandshakeTable<u32>, key: u32, a: &str) -> Option<(u32, SocketAddr)> {
        match t.admit(key, addr(a), a == PEER) {
            Admission::Admitted { evicted } => evicted,
            Admission::Refused => panic!("{a} refused"),
        }
    }

    #[test]
    fn a_flood_from_one_prefix_evicts_itself_not_the_peer() {
        let mut t = HandshakeTable::new(4);
        // Addresses of one /24 count as one source; one of four slots is the peer's reserve.
        for i in 0..3 {
            assert_eq!(admitted(&mut t, i, &format!("10.0.0.{}", 10 + i)), None);
        }
        let evicted = admitted(&mut t, 3, "10.0.0.13");
        assert_eq!(
            evicted,
            Some((0, addr("10.0.0.10"))),
            "the oldest of the busiest prefix"
        );
        let evicted = admitted(&mut t, 100, "10.0.1.1");
        assert_eq!(evicted, Some((1, addr("10.0.0.11"))), "the oldest left");
        // More flood keeps evicting the flood, never the peer.
        for i in 0..10 {
            let (key, ip) = admitted(&mut t, 10 + i, &format!("10.0.0.{}", 100 + i)).unwrap();
            assert_ne!(key, 100);
            assert!(matches!(ip.ip(), IpAddr::V4(a) if a.octets()[2] == 0));
        }
        assert!(t.len() <= 4);
        t.done(100);
        assert!(t.pending.iter().all(|(p, _)| p.key != 100));
    }

    #[test]
    fn a_peer_that_authenticated_before_keeps_its_slot_against_any_flood() {
        let mut t = HandshakeTable::new(16);
        for i in 0..8u32 {
            let _ = admitted(&mut t, i, &format!("10.{i}.0.1"));
        }
        let _ = admitted(&mut t, 1000, "192.0.2.1");
        for i in 0..200u32 {
            let a = format!("10.{}.{}.1", 8 + i / 256, i % 256);
            if let Some((key, _)) = admitted(&mut t, 2000 + i, &a) {
                assert_ne!(key, 1000, "the peer's handshake was evicted");
            }
        }
        assert!(t.len() <= 16);
        assert!(t.pending.iter().any(|(p, _)| p.key == 1000));
    }

    #[test]
    fn an_untrusted_source_is_refused_when_the_peers_reserve_is_all_that_is_left() {
        let mut t = HandshakeTable::new(4);
        for i in 0..4 {
            let _ = admitted(&mut t, i, "192.0.2.1");
        }
        let a = t.admit(9, addr("10.0.0.1"), false);
        assert_eq!(a, Admission::Refused);
        assert_eq!(
            t.why(&a, "gw-a").to_string(),
            "every handshake slot it may take is held by sources that authenticated as peer gw-a before"
        );
    }
}

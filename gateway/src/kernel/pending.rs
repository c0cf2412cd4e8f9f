//! Bounds the handshakes in progress on the tunnel port, fairly (the
//! policy is [`crate::admission`]); a slot is held for the life of a
//! handshake task and cancelled if a newer connection evicts it.
//!
//! The kernel completes TCP handshakes itself (with SYN cookies when its
//! queue overflows), so only connections that did reach `accept` count.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};

use tokio_util::sync::CancellationToken;

use crate::admission::{self, Decision, Pending, Throttle, Trust};
use crate::sources::SourceList;

struct Entry {
    addr: SocketAddr,
    trusted: bool,
    evicted: CancellationToken,
}

#[derive(Default)]
struct Table {
    next: u64,
    entries: HashMap<u64, Entry>,
    trust: Trust,
    /// Paces the log lines about refused and evicted connections.
    throttle: Throttle,
}

/// The pending-handshake table.
pub struct PendingHandshakes {
    limit: usize,
    table: Mutex<Table>,
}

/// A slot in the table; frees itself on drop. `evicted` fires if a newer
/// connection took the slot.
pub struct Slot {
    owner: Arc<PendingHandshakes>,
    id: u64,
    pub evicted: CancellationToken,
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.owner
            .table
            .lock()
            .expect("not poisoned")
            .entries
            .remove(&self.id);
    }
}

/// How [`PendingHandshakes::admit`] went.
pub enum Admitted {
    /// A slot, and the address of the handshake evicted for it, if any.
    Slot(Slot, Option<SocketAddr>),
    /// Every slot this source may take is held by sources that
    /// authenticated as the peer before.
    Refused,
}

impl PendingHandshakes {
    /// A table of `limit` slots; `peer_source` is `peer.source`.
    pub fn new(limit: usize, peer_source: Option<SourceList>) -> Arc<Self> {
        Arc::new(PendingHandshakes {
            limit,
            table: Mutex::new(Table {
                trust: Trust::new(peer_source),
                ..Table::default()
            }),
        })
    }

    /// Whether `peer.source` lets `ip` connect at all.
    pub fn allows(&self, ip: IpAddr) -> bool {
        self.table.lock().expect("not poisoned").trust.allows(ip)
    }

    /// `ip` completed a handshake as the peer: it is favoured from now on.
    pub fn authenticated(&self, ip: IpAddr) {
        self.table
            .lock()
            .expect("not poisoned")
            .trust
            .authenticated(ip);
    }

    /// Whether to log a refusal or eviction now (see [`Throttle`]); `now` in µs.
    pub fn log_now(&self, now: u64) -> Option<u64> {
        self.table.lock().expect("not poisoned").throttle.allow(now)
    }

    /// Takes a slot for `addr`, evicting another handshake if the policy
    /// says so.
    pub fn admit(self: &Arc<Self>, addr: SocketAddr) -> Admitted {
        let mut t = self.table.lock().expect("not poisoned");
        let trusted = t.trust.is_trusted(addr.ip());
        let pending: Vec<Pending<u64>> = t
            .entries
            .iter()
            .map(|(&id, e)| Pending {
                key: id,
                ip: e.addr.ip(),
                seq: id,
                trusted: e.trusted,
            })
            .collect();
        let evicted = match admission::admit(&pending, trusted, self.limit) {
            Decision::Refuse => return Admitted::Refused,
            Decision::Admit => None,
            Decision::Evict(id) => t.entries.remove(&id).map(|e| {
                e.evicted.cancel();
                e.addr
            }),
        };
        let id = t.next;
        t.next += 1;
        let token = CancellationToken::new();
        t.entries.insert(
            id,
            Entry {
                addr,
                trusted,
                evicted: token.clone(),
            },
        );
        Admitted::Slot(
            Slot {
                owner: self.clone(),
                id,
                evicted: token,
            },
            evicted,
        )
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.table.lock().expect("not poisoned").entries.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(ip: &str, port: u16) -> SocketAddr {
        SocketAddr::new(ip.parse().unwrap(), port)
    }

    fn slot(p: &Arc<PendingHandshakes>, a: SocketAddr) -> (Slot, Option<SocketAddr>) {
        match p.admit(a) {
            Admitted::Slot(s, e) => (s, e),
            Admitted::Refused => panic!("{a} refused"),
        }
    }

    #[test]
    fn a_flood_from_one_prefix_evicts_itself_not_the_peer() {
        let p = PendingHandshakes::new(4, None);
        // Four addresses of one /24: they count as one source.
        let flood: Vec<Slot> = (0..4)
            .map(|i| slot(&p, addr(&format!("10.0.0.{}", 10 + i), 1000)).0)
            .collect();
        assert!(
            flood[0].evicted.is_cancelled(),
            "the oldest of the busiest prefix"
        );
        let (peer, evicted) = slot(&p, addr("10.0.1.1", 5000));
        assert_eq!(evicted, Some(addr("10.0.0.11", 1000)), "the oldest left");
        // More flood keeps evicting the flood, never the peer.
        let mut more = Vec::new();
        for i in 0..10 {
            let (s, ev) = slot(&p, addr(&format!("10.0.0.{}", 100 + i), 2000));
            assert!(matches!(ev.map(|a| a.ip()), Some(IpAddr::V4(a)) if a.octets()[2] == 0));
            more.push(s);
        }
        assert!(!peer.evicted.is_cancelled());
        assert!(p.len() <= 4);
        drop(peer);
        drop(flood);
        assert!(p.len() <= 4);
    }

    #[test]
    fn a_peer_that_authenticated_before_keeps_its_slot_against_any_flood() {
        let p = PendingHandshakes::new(16, None);
        let peer_addr = addr("192.0.2.1", 4000);
        p.authenticated(peer_addr.ip());
        let mut flood = Vec::new();
        // Every flooding connection from its own /24.
        for i in 0..8u8 {
            flood.push(slot(&p, addr(&format!("10.{i}.0.1"), 1000)).0);
        }
        let (peer, _) = slot(&p, peer_addr);
        for i in 0..200u32 {
            let a = addr(&format!("10.{}.{}.1", 8 + i / 256, i % 256), 1000);
            flood.push(slot(&p, a).0);
        }
        assert!(!peer.evicted.is_cancelled());
        assert!(p.len() <= 16);
    }

    #[test]
    fn peer_source_filters() {
        let p = PendingHandshakes::new(4, Some(SourceList::parse(&["192.0.2.0/24"]).unwrap()));
        assert!(p.allows("192.0.2.7".parse().unwrap()));
        assert!(!p.allows("10.0.0.1".parse().unwrap()));
    }
}

//! The tunnel port's pending-handshake table ([`crate::link::admission::HandshakeTable`]: the
//! policy both datapaths share) behind a mutex, for the kernel's handshake tasks: a slot is held
//! for the life of a task, freed on drop, and cancelled if a newer connection evicts it.
//!
//! The kernel completes TCP handshakes itself (with SYN cookies when its
//! queue overflows), so only connections that did reach `accept` count.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};

use tokio_util::sync::CancellationToken;

use crate::link::admission::{Admission, Dropped, HandshakeTable};
use crate::sources::SourceList;

struct State {
    table: HandshakeTable<u64>,
    /// Per slot, cancelled when a newer connection evicts it.
    evicted: HashMap<u64, CancellationToken>,
    next: u64,
}

/// The pending-handshake table.
pub struct PendingHandshakes {
    state: Mutex<State>,
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
        let mut s = self.owner.state.lock().expect("not poisoned");
        s.table.done(self.id);
        s.evicted.remove(&self.id);
    }
}

/// How [`PendingHandshakes::admit`] went.
pub enum Admitted {
    /// A slot, and the handshake evicted for it (its address, and why), if any.
    Slot(Slot, Option<(SocketAddr, Dropped)>),
    /// No slot: why.
    Refused(Dropped),
}

impl PendingHandshakes {
    /// A table of `limit` slots; `peer_source` is `peer.source`.
    pub fn new(limit: usize, peer_source: Option<SourceList>) -> Arc<Self> {
        Arc::new(PendingHandshakes {
            state: Mutex::new(State {
                table: HandshakeTable::new(limit, peer_source),
                evicted: HashMap::new(),
                next: 0,
            }),
        })
    }

    /// Whether `peer.source` lets `ip` connect at all.
    pub fn allows(&self, ip: IpAddr) -> bool {
        self.state
            .lock()
            .expect("not poisoned")
            .table
            .trust
            .allows(ip)
    }

    /// `ip` completed a handshake as the peer: it is favoured from now on.
    pub fn authenticated(&self, ip: IpAddr) {
        let mut s = self.state.lock().expect("not poisoned");
        s.table.trust.authenticated(ip);
    }

    /// Whether to log a refusal or eviction now (see [`crate::link::admission::Throttle`]);
    /// `now` in µs.
    pub fn log_now(&self, now: u64) -> Option<u64> {
        self.state.lock().expect("not poisoned").table.log_now(now)
    }

    /// Takes a slot for a connection from `addr`, evicting another handshake if the policy
    /// says so; `peer` names the peer in a refusal.
    pub fn admit(self: &Arc<Self>, addr: SocketAddr, peer: &str) -> Admitted {
        let mut s = self.state.lock().expect("not poisoned");
        let id = s.next;
        s.next += 1;
        let admission = s.table.admit(id, addr);
        let why = s.table.why(&admission, peer);
        let evicted = match admission {
            Admission::Refused => return Admitted::Refused(why),
            Admission::Admitted { evicted } => evicted.map(|(old, old_addr)| {
                if let Some(token) = s.evicted.remove(&old) {
                    token.cancel();
                }
                (old_addr, why)
            }),
        };
        let token = CancellationToken::new();
        s.evicted.insert(id, token.clone());
        let slot = Slot {
            owner: self.clone(),
            id,
            evicted: token,
        };
        Admitted::Slot(slot, evicted)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_evicted_slot_is_cancelled_and_a_dropped_one_frees_its_place() {
        let p = PendingHandshakes::new(4, None);
        let ip = |i: u8| SocketAddr::from(([10, 0, 0, i], 1000));
        let slots: Vec<Slot> = (0..4)
            .map(|i| match p.admit(ip(i), "gw-a") {
                Admitted::Slot(s, _) => s,
                Admitted::Refused(why) => panic!("{why}"),
            })
            .collect();
        // Three of four slots for untrusted sources: the fourth evicted the oldest, a fifth
        // from the same /24 evicts the oldest left.
        assert!(slots[0].evicted.is_cancelled() && !slots[1].evicted.is_cancelled());
        let Admitted::Slot(fifth, Some((old, why))) = p.admit(ip(9), "gw-a") else {
            panic!("no eviction");
        };
        assert_eq!(old, ip(1));
        assert_eq!(why, Dropped::Evicted { limit: 4 });
        assert!(slots[1].evicted.is_cancelled() && !slots[2].evicted.is_cancelled());
        drop(slots);
        drop(fifth);
        assert!(p.state.lock().unwrap().table.is_empty());
        assert!(p.state.lock().unwrap().evicted.is_empty());
    }

    #[test]
    fn peer_source_filters() {
        let p = PendingHandshakes::new(4, Some(SourceList::parse(&["192.0.2.0/24"]).unwrap()));
        assert!(p.allows("192.0.2.7".parse().unwrap()));
        assert!(!p.allows("10.0.0.1".parse().unwrap()));
    }
}

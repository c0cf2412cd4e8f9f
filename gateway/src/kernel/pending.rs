//! Bounds the handshakes in progress on the tunnel port, fairly (the
//! policy is [`crate::admission`]); a slot is held for the life of a
//! handshake task and cancelled if a newer connection evicts it.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use tokio_util::sync::CancellationToken;

struct Entry {
    addr: SocketAddr,
    seq: u64,
    evicted: CancellationToken,
}

#[derive(Default)]
struct Table {
    next: u64,
    entries: HashMap<u64, Entry>,
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

impl PendingHandshakes {
    pub fn new(limit: usize) -> Arc<Self> {
        Arc::new(PendingHandshakes {
            limit,
            table: Mutex::new(Table::default()),
        })
    }

    /// Takes a slot for `addr`, evicting another handshake if the table is
    /// full; returns the slot and the address of the evicted one, if any.
    pub fn admit(self: &Arc<Self>, addr: SocketAddr) -> (Slot, Option<SocketAddr>) {
        let mut t = self.table.lock().expect("not poisoned");
        let mut evicted = None;
        if t.entries.len() >= self.limit {
            let victim = crate::admission::eviction_victim(
                t.entries.iter().map(|(id, e)| (*id, e.addr.ip(), e.seq)),
            );
            if let Some(e) = victim.and_then(|id| t.entries.remove(&id)) {
                e.evicted.cancel();
                evicted = Some(e.addr);
            }
        }
        let id = t.next;
        t.next += 1;
        let token = CancellationToken::new();
        t.entries.insert(
            id,
            Entry {
                addr,
                seq: id,
                evicted: token.clone(),
            },
        );
        (
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

    #[test]
    fn a_flood_evicts_itself_not_the_peer() {
        let p = PendingHandshakes::new(4);
        let flood: Vec<Slot> = (0..4)
            .map(|i| p.admit(addr("10.0.0.9", 1000 + i)).0)
            .collect();
        let (peer, evicted) = p.admit(addr("10.0.0.1", 5000));
        assert_eq!(
            evicted,
            Some(addr("10.0.0.9", 1000)),
            "oldest of the busiest source"
        );
        assert!(flood[0].evicted.is_cancelled());
        // More flood keeps evicting the flood, never the peer.
        let mut more = Vec::new();
        for i in 0..10 {
            let (slot, ev) = p.admit(addr("10.0.0.9", 2000 + i));
            assert_eq!(ev.map(|a| a.ip()), Some("10.0.0.9".parse().unwrap()));
            more.push(slot);
        }
        assert!(!peer.evicted.is_cancelled());
        assert!(p.len() <= 4);
        drop(peer);
        drop(flood);
        assert!(p.len() <= 4);
    }
}

//! Sending our dedup store's inventory when a tunnel begins (docs/PROTOCOL.md, "dedup
//! inventory"): what the store holds, oldest first, in parts of at most
//! [`MAX_INVENTORY_CHUNKS`], one part every [`INVENTORY_GAP_US`].
//!
//! The parts share the control connection with acks, and a driver writes whatever
//! [`poll_control`](super::TunnelCore::poll_control) gives it at once: so the parts are spaced
//! in time, or a large store's inventory (36 bytes per chunk: 6.7 MB for a 1 GiB guest) would
//! sit in the connection's send buffer ahead of every ack for as long as it takes to cross.

use super::Instant;
use crate::dedup::ChunkStore;
use crate::protocol::message::MAX_INVENTORY_CHUNKS;
use crate::protocol::Message;

/// The time between two parts: 36 KiB each, so about 150 Mbit/s of the control connection at
/// most. A slower WAN keeps a little of it queued in the connection while it lasts.
pub const INVENTORY_GAP_US: u64 = 2_000;

/// The store's positions still to list, and when the next part may go.
#[derive(Debug)]
pub struct InventorySender {
    next: u64,
    end: u64,
    /// Whether a part may go now.
    ready: bool,
    /// When the next part may go (once not `ready`).
    due: Instant,
    /// The latest time the core was given.
    now: Instant,
}

impl InventorySender {
    /// The inventory of the positions before `end` (the store's end when the tunnel began);
    /// `None` for an empty store. The first part may go at once.
    pub fn new(end: u64) -> Option<InventorySender> {
        (end > 0).then_some(InventorySender {
            next: 0,
            end,
            ready: true,
            due: 0,
            now: 0,
        })
    }

    /// Whether a part may go now (see [`InventorySender::next_part`]).
    pub fn ready(&self) -> bool {
        self.ready
    }

    /// When the next part may go, while one has to wait.
    pub fn due(&self) -> Option<Instant> {
        (!self.ready).then_some(self.due)
    }

    /// The time is `now`; `true` when that makes the next part ready.
    pub fn tick(&mut self, now: Instant) -> bool {
        self.now = self.now.max(now);
        if self.ready || now < self.due {
            return false;
        }
        self.ready = true;
        true
    }

    /// The next part from `store`, if one may go now; `None` also when the inventory is done
    /// (then [`InventorySender::done`]).
    pub fn next_part(&mut self, store: &dyn ChunkStore) -> Option<Message> {
        while self.ready && !self.done() {
            let mut chunks = Vec::new();
            let max = MAX_INVENTORY_CHUNKS.min((self.end - self.next) as usize);
            self.next = store.held_in(self.next..self.end, max, &mut chunks);
            // Evicted positions are skipped, so a part may come out empty: go on.
            if !chunks.is_empty() {
                self.ready = false;
                self.due = self.now + INVENTORY_GAP_US;
                return Some(Message::DedupInventory { chunks });
            }
        }
        None
    }

    /// Whether every position has been listed.
    pub fn done(&self) -> bool {
        self.next >= self.end
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dedup::{fingerprint, MemoryStore};

    fn chunks(m: &Message) -> usize {
        match m {
            Message::DedupInventory { chunks } => chunks.len(),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn parts_go_one_per_gap_oldest_first_and_skip_what_was_evicted() {
        let mut store = MemoryStore::new(1 << 30);
        let data: Vec<Vec<u8>> = (0..2500u32).map(|i| i.to_be_bytes().repeat(300)).collect();
        for d in &data {
            store.insert(d);
        }
        assert!(InventorySender::new(0).is_none(), "an empty store has none");
        let mut inv = InventorySender::new(store.end()).expect("not empty");
        let first = inv.next_part(&store).expect("at once");
        assert_eq!(chunks(&first), MAX_INVENTORY_CHUNKS);
        let Message::DedupInventory { chunks: listed } = &first else {
            unreachable!()
        };
        assert_eq!(listed[0], (fingerprint(&data[0]), 1200), "oldest first");
        assert!(inv.next_part(&store).is_none(), "the next waits");
        assert_eq!(inv.due(), Some(INVENTORY_GAP_US));
        assert!(!inv.tick(INVENTORY_GAP_US - 1));
        assert!(inv.tick(INVENTORY_GAP_US));
        assert_eq!(inv.next_part(&store).map(|m| chunks(&m)), Some(1024));
        assert_eq!(inv.due(), Some(2 * INVENTORY_GAP_US));
        assert!(inv.tick(3 * INVENTORY_GAP_US));
        assert_eq!(inv.next_part(&store).map(|m| chunks(&m)), Some(452));
        assert!(inv.done());
        assert!(inv.tick(10 * INVENTORY_GAP_US));
        assert!(inv.next_part(&store).is_none());
    }

    #[test]
    fn an_inventory_whose_chunks_were_all_evicted_ends_without_a_part() {
        let mut store = MemoryStore::new(64 << 10);
        for i in 0..10u32 {
            store.insert(&i.to_be_bytes().repeat(4000));
        }
        let mut inv = InventorySender::new(5).expect("five positions");
        // 16 KB each: the store holds only the newest four, positions 0..5 were evicted.
        assert!(inv.next_part(&store).is_none());
        assert!(inv.done());
    }
}

//! The sending gateway's index of what the far [`MemoryStore`](super::MemoryStore) holds, as far as this
//! side knows: fingerprint → length and the tag (e.g. a migration's id) of whoever sent it.
//!
//! It is charged and evicts exactly as the store does (`len + ENTRY_OVERHEAD` per entry,
//! FIFO by first insertion, re-inserting refreshes no position), so with the same capacity
//! and the same chunks it forgets a chunk no later than the store. That is not a guarantee
//! (the store also takes the chunks of frames that were sent again, chunks arrive in
//! another order than they are acknowledged, the peer may restart): a reference the store
//! cannot resolve is reported missing and sent again as a literal, never guessed. A
//! slightly smaller capacity than the peer's store makes such misses rarer.
//!
//! Its own memory is about 100-200 bytes per entry (map slot of 48 B, queue slot of 32 B,
//! both at their fill), not the chunk's bytes, whatever it charges. So besides the capacity,
//! which follows the store the peer offers, it holds at most [`MAX_ENTRIES`]: a peer offering
//! a huge store cannot make this gateway's memory grow with it. Evicting sooner than the store
//! is safe: a chunk the index forgot is sent as a literal.

use std::collections::VecDeque;

use rustc_hash::FxHashMap;

use super::store::charge;
use super::Fingerprint;

/// Chunks indexed at most, whatever store the peer offers: at 4 KiB chunks, 8 GiB of the
/// peer's store, in about 200-400 MiB of this gateway's memory.
pub const MAX_ENTRIES: usize = 1 << 21;

#[derive(Debug, Clone, Copy)]
struct Entry {
    len: u32,
    tag: u64,
}

/// What the far store holds, bounded by bytes charged like the store.
#[derive(Debug, Default)]
pub struct Index {
    // FxHash: the keys are BLAKE3 outputs (see `MemoryStore`).
    map: FxHashMap<Fingerprint, Entry>,
    /// Insertion order, oldest first: every key once, as entries leave only from its front.
    fifo: VecDeque<Fingerprint>,
    capacity: u64,
    bytes: u64,
}

impl Index {
    /// An empty index that charges at most `capacity_bytes`.
    pub fn new(capacity_bytes: u64) -> Self {
        Index {
            capacity: capacity_bytes,
            ..Index::default()
        }
    }

    /// The far store now holds the chunk `fp` of `len` bytes, sent under `tag`. If already
    /// indexed, only the tag changes (to the latest sender's); its place in the eviction
    /// order stays, as the store's does. Then evicts oldest-first to within the capacity.
    pub fn insert(&mut self, fp: Fingerprint, len: u32, tag: u64) {
        if let Some(e) = self.map.get_mut(&fp) {
            e.tag = tag;
            return;
        }
        self.map.insert(fp, Entry { len, tag });
        self.fifo.push_back(fp);
        self.bytes += charge(len as usize);
        while self.bytes > self.capacity || self.fifo.len() > MAX_ENTRIES {
            let Some(old) = self.fifo.pop_front() else {
                break;
            };
            if let Some(e) = self.map.remove(&old) {
                self.bytes -= charge(e.len as usize);
            }
        }
    }

    /// Whether the far store holds `fp` with length `len`: any entry (`tag` `None`, tunnel
    /// scope), or only one inserted with that tag (`Some`, migration scope: a migration
    /// refers only to chunks its own frames sent).
    pub fn holds(&self, fp: &Fingerprint, len: u32, tag: Option<u64>) -> bool {
        self.map
            .get(fp)
            .is_some_and(|e| e.len == len && tag.is_none_or(|t| e.tag == t))
    }

    /// Bytes charged (each entry's chunk length plus the store's `ENTRY_OVERHEAD`).
    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    /// Chunks indexed.
    pub fn len(&self) -> usize {
        self.map.len()
    }

    /// Whether it indexes no chunk.
    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::super::store::{MemoryStore, ENTRY_OVERHEAD};
    use super::*;
    use proptest::prelude::*;

    fn fp(i: u8) -> Fingerprint {
        [i; 32]
    }

    #[test]
    fn however_large_a_store_the_peer_offers_the_index_holds_a_bounded_number_of_chunks() {
        // A peer offering a huge store (a disk store of 100 GiB, or a lie) must not make the
        // sender's memory grow with it: about 150 B per entry, whatever the capacity says.
        let bound = MAX_ENTRIES;
        let mut x = Index::new(u64::MAX);
        for i in 0..bound as u64 + 1000 {
            let mut f = [0u8; 32];
            f[..8].copy_from_slice(&i.to_le_bytes());
            x.insert(f, 256, 0);
        }
        assert_eq!(x.len(), bound);
        let mut first = [0u8; 32];
        first[..8].copy_from_slice(&0u64.to_le_bytes());
        assert!(!x.holds(&first, 256, None), "the oldest went first");
    }

    #[test]
    fn tags_scope_what_counts() {
        let mut x = Index::new(1 << 20);
        x.insert(fp(1), 100, 7);
        assert!(x.holds(&fp(1), 100, None));
        assert!(x.holds(&fp(1), 100, Some(7)));
        assert!(!x.holds(&fp(1), 100, Some(8)));
        assert!(!x.holds(&fp(1), 99, None), "the length must match");
        assert!(!x.holds(&fp(2), 100, None));
        // Re-inserted by another migration: the tag is the latest sender's.
        x.insert(fp(1), 100, 8);
        assert!(x.holds(&fp(1), 100, Some(8)) && !x.holds(&fp(1), 100, Some(7)));
        assert_eq!((x.len(), x.bytes()), (1, 100 + ENTRY_OVERHEAD));
    }

    #[test]
    fn eviction_is_oldest_first_by_first_insertion() {
        let per = charge(100);
        let mut x = Index::new(3 * per);
        for i in 0..3 {
            x.insert(fp(i), 100, 0);
        }
        x.insert(fp(0), 100, 1); // no refresh
        x.insert(fp(3), 100, 0);
        assert!(!x.holds(&fp(0), 100, None) && x.holds(&fp(1), 100, None));
        x.insert(fp(4), 100, 0);
        assert!(!x.holds(&fp(1), 100, None), "the oldest live entry goes");
        assert!(x.holds(&fp(2), 100, None) && x.holds(&fp(3), 100, None));
        assert!(x.holds(&fp(4), 100, None));
        assert_eq!(x.bytes(), 3 * per);
        assert_eq!(x.fifo.len(), x.len());
    }

    proptest! {
        /// Fed the same chunks in the same order, the index forgets nothing the store
        /// still holds and holds nothing the store forgot.
        #[test]
        fn with_the_same_capacity_it_forgets_as_the_store_does(
            capacity in 0u64..30_000,
            ops in proptest::collection::vec((0u8..30, 1usize..4000), 1..100),
        ) {
            let (mut s, mut x) = (MemoryStore::new(capacity), Index::new(capacity));
            let mut seen = Vec::new();
            for (seed, len) in ops {
                let c = vec![seed; len];
                let f = s.insert(&c);
                x.insert(f, len as u32, 0);
                seen.push((f, len as u32));
                prop_assert!(x.bytes() <= capacity);
                prop_assert_eq!(x.bytes(), s.bytes());
                for (f, len) in &seen {
                    prop_assert_eq!(x.holds(f, *len, None), s.get(f, *len).is_some());
                }
            }
        }
    }
}

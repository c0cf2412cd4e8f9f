//! The receiving gateway's chunk store, shared by every session of a tunnel: fingerprint →
//! chunk bytes, bounded in bytes, evicting oldest-first (FIFO by first insertion).
//!
//! [`ChunkStore`] is what the session core asks of a store; [`MemoryStore`] (here) keeps the
//! chunks in memory, [`DiskStore`](super::DiskStore) in files that outlive the process.
//! Every stored chunk hashes to its key by construction: `insert` computes the fingerprint
//! itself. [`MemoryStore`] copies the bytes into an allocation of their own, so a chunk never
//! keeps a peer's record buffer alive. [`resolve`] turns a frame's items into its plain bytes.

use std::collections::hash_map::Entry;
use std::collections::VecDeque;
use std::ops::Range;

use bytes::Bytes;
use rustc_hash::FxHashMap;

use super::items::Item;
use super::{fingerprint, Fingerprint};

/// What one entry costs beyond its chunk's bytes, as charged against the capacity (by the
/// [`Index`](super::Index) too, so that both forget at the same pace). Measured with
/// `cargo run --release -p lmas --example dedup -- --entry-overhead` (the process's resident
/// memory grown by inserting 0.25-2 million chunks of 1-4 KiB, less their bytes, per entry;
/// glibc, x86-64): 138 to 184 B, as the map's fill moves between doublings. That is the
/// map's slot (fingerprint + `Bytes`, 64 B, and a control byte, at hashbrown's load of 7/16
/// to 7/8), the FIFO queue's slot (32 B, doubling too) and the allocator's header and
/// rounding of the chunk's own allocation. Rounded up, so that the bound holds at the
/// worst fill measured.
pub const ENTRY_OVERHEAD: u64 = 192;

/// A receiver's bounded store of chunks by fingerprint, oldest evicted first.
///
/// Positions number the chunks in the order they were first stored (from 0 when the store
/// was created or opened), so that [`ChunkStore::held_from`] can list what it holds, oldest
/// first, a part at a time while chunks keep arriving.
pub trait ChunkStore: Send {
    /// Stores a copy of `chunk` under its fingerprint, which it returns; a chunk already held
    /// keeps its place in the eviction order. Evicts oldest-first to stay within capacity.
    fn insert(&mut self, chunk: &[u8]) -> Fingerprint;
    /// Appends the chunk `fp` of `len` bytes to `out`, if held; `false` (and `out` as it
    /// was) otherwise. Never bytes that do not hash to `fp`.
    fn append_to(&mut self, fp: &Fingerprint, len: u32, out: &mut Vec<u8>) -> bool;
    /// What it holds and has done, for status.
    fn usage(&self) -> StoreUsage;
    /// Appends up to `max` chunks it holds at `positions`, oldest first, as (fingerprint,
    /// length), to `out` (an evicted position is skipped); returns where to go on: the
    /// position after the last one looked at, `positions.end` once all were.
    fn held_in(&self, positions: Range<u64>, max: usize, out: &mut Vec<(Fingerprint, u32)>) -> u64;
    /// The position the next chunk stored will take.
    fn end(&self) -> u64;
}

/// A store's figures, for status and metrics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StoreUsage {
    /// Bytes charged against the capacity (in memory: chunks plus [`ENTRY_OVERHEAD`] each;
    /// on disk: the files' length).
    pub bytes: u64,
    pub capacity: u64,
    pub chunks: u64,
    /// Chunks evicted for room since the store was created or opened.
    pub evictions: u64,
    /// Chunks a disk store could not write or read back intact (counted, then missing).
    pub io_errors: u64,
}

/// Chunks in memory by fingerprint, bounded by bytes charged (`len + ENTRY_OVERHEAD` each).
#[derive(Debug, Default)]
pub struct MemoryStore {
    // FxHash is enough here: the keys are BLAKE3 outputs, so a peer (or a guest shaping its
    // memory) can steer many into one bucket only by grinding ~2^(table bits + 7) BLAKE3
    // evaluations per colliding chunk; keyed SipHash would cost more per lookup and buy
    // nothing.
    map: FxHashMap<Fingerprint, Bytes>,
    /// Insertion order, oldest first; exactly the keys of `map`.
    fifo: VecDeque<Fingerprint>,
    capacity: u64,
    bytes: u64,
    evictions: u64,
    /// Chunks first stored since creation: the position after the newest.
    stored: u64,
}

/// The charge of one entry of `len` bytes.
pub(crate) fn charge(len: usize) -> u64 {
    len as u64 + ENTRY_OVERHEAD
}

impl MemoryStore {
    /// An empty store that charges at most `capacity_bytes`.
    pub fn new(capacity_bytes: u64) -> Self {
        MemoryStore {
            capacity: capacity_bytes,
            ..MemoryStore::default()
        }
    }

    /// Stores a copy of `chunk` under its fingerprint, which it returns. Idempotent: a chunk
    /// already held keeps its place in the eviction order. Then evicts oldest-first until
    /// [`MemoryStore::bytes`] is within the capacity (a chunk whose charge alone exceeds the
    /// capacity is evicted at once).
    pub fn insert(&mut self, chunk: &[u8]) -> Fingerprint {
        let fp = fingerprint(chunk);
        if let Entry::Vacant(slot) = self.map.entry(fp) {
            // Its own allocation of exactly `len` bytes, never a slice of the caller's.
            slot.insert(Bytes::copy_from_slice(chunk));
            self.fifo.push_back(fp);
            self.stored += 1;
            self.bytes += charge(chunk.len());
            while self.bytes > self.capacity {
                let Some(old) = self.fifo.pop_front() else {
                    break;
                };
                if let Some(b) = self.map.remove(&old) {
                    self.bytes -= charge(b.len());
                    self.evictions += 1;
                }
            }
        }
        fp
    }

    /// The chunk stored under `fp`, if it is `len` bytes long.
    pub fn get(&self, fp: &Fingerprint, len: u32) -> Option<&Bytes> {
        self.map.get(fp).filter(|b| b.len() == len as usize)
    }

    /// Bytes charged: every entry's length plus [`ENTRY_OVERHEAD`]; never above the capacity.
    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    /// The capacity it was created with.
    pub fn capacity(&self) -> u64 {
        self.capacity
    }

    /// Chunks held.
    pub fn len(&self) -> usize {
        self.map.len()
    }

    /// Whether it holds no chunk.
    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// Chunks evicted for room since creation.
    pub fn evictions(&self) -> u64 {
        self.evictions
    }
}

impl ChunkStore for MemoryStore {
    fn insert(&mut self, chunk: &[u8]) -> Fingerprint {
        MemoryStore::insert(self, chunk)
    }

    fn append_to(&mut self, fp: &Fingerprint, len: u32, out: &mut Vec<u8>) -> bool {
        self.get(fp, len)
            .map(|c| out.extend_from_slice(c))
            .is_some()
    }

    fn usage(&self) -> StoreUsage {
        StoreUsage {
            bytes: self.bytes,
            capacity: self.capacity,
            chunks: self.map.len() as u64,
            evictions: self.evictions,
            io_errors: 0,
        }
    }

    fn held_in(&self, positions: Range<u64>, max: usize, out: &mut Vec<(Fingerprint, u32)>) -> u64 {
        // The FIFO holds positions `stored - len .. stored` in order, every one held.
        let first = self.stored - self.fifo.len() as u64;
        let start = positions.start.max(first);
        let end = positions.end.min(self.stored);
        if start >= end {
            return positions.end;
        }
        let n = max.min((end - start) as usize);
        let listed = self.fifo.range((start - first) as usize..).take(n);
        out.extend(listed.filter_map(|fp| Some((*fp, self.map.get(fp)?.len() as u32))));
        if start + n as u64 == end {
            positions.end
        } else {
            start + n as u64
        }
    }

    fn end(&self) -> u64 {
        self.stored
    }
}

/// What [`resolve`] made of a frame.
#[derive(Debug, Clone, PartialEq, Eq)]
#[must_use]
pub enum Resolved {
    /// Every reference was found: the frame's plain bytes.
    Data(Bytes),
    /// This many references are not in the store (evicted, the store restarted, or their
    /// literal has not arrived yet); nothing is delivered. The frame's chunk literals were
    /// stored all the same.
    Missing { missing: usize },
}

/// Counts for status, from one [`resolve`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ResolveNote {
    /// Chunk literals the frame carried (each stored, or already held).
    pub stored_chunks: usize,
    /// Plain bytes the frame's references stood for (found or not).
    pub ref_bytes: u64,
    /// Literal bytes it carried (pieces and chunks).
    pub literal_bytes: u64,
}

/// A frame's plain bytes from its items: stores every `Chunk` literal first (also when a
/// reference is missing, so that a resend can refer to them), then, if every `Ref` is in
/// `store` (an earlier chunk of the same frame counts), assembles the bytes in one
/// allocation of the exact length. Never wrong bytes: a reference is only ever answered
/// with a chunk that hashes to it and has its length.
///
/// A chunk literal can evict the oldest chunk while the frame's own references still need
/// it (when the store is that full); the answer is then `Missing`, as for any eviction.
pub fn resolve(items: Vec<Item>, store: &mut dyn ChunkStore) -> (Resolved, ResolveNote) {
    let mut note = ResolveNote::default();
    for item in &items {
        match item {
            Item::Chunk(b) => {
                store.insert(b);
                note.stored_chunks += 1;
                note.literal_bytes += b.len() as u64;
            }
            Item::Piece(b) => note.literal_bytes += b.len() as u64,
            Item::Ref { len, .. } => note.ref_bytes += u64::from(*len),
        }
    }
    // One look-up per reference; a miss (rare) wastes the copy so far.
    let total = items.iter().map(Item::plain_len).sum();
    let mut out = Vec::with_capacity(total);
    let mut missing = 0;
    for item in &items {
        match item {
            Item::Piece(b) | Item::Chunk(b) => out.extend_from_slice(b),
            Item::Ref { fp, len } => {
                if !store.append_to(fp, *len, &mut out) {
                    missing += 1;
                }
            }
        }
    }
    if missing > 0 {
        return (Resolved::Missing { missing }, note);
    }
    (Resolved::Data(Bytes::from(out)), note)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn chunk(seed: u8, len: usize) -> Vec<u8> {
        (0..len).map(|i| seed.wrapping_mul(31) ^ i as u8).collect()
    }

    #[test]
    fn insert_get_and_idempotence() {
        let mut s = MemoryStore::new(1 << 20);
        let a = chunk(1, 1000);
        let fp = s.insert(&a);
        assert_eq!(fp, fingerprint(&a));
        assert_eq!(s.get(&fp, 1000).map(|b| &b[..]), Some(&a[..]));
        assert_eq!(s.get(&fp, 999), None, "the length must match too");
        assert_eq!(s.insert(&a), fp);
        assert_eq!((s.len(), s.bytes()), (1, 1000 + ENTRY_OVERHEAD));
    }

    #[test]
    fn eviction_is_oldest_first_by_first_insertion() {
        let per = charge(1000);
        let mut s = MemoryStore::new(3 * per);
        let fps: Vec<_> = (0..3).map(|i| s.insert(&chunk(i, 1000))).collect();
        // Re-inserting the oldest does not refresh it.
        s.insert(&chunk(0, 1000));
        let d = s.insert(&chunk(3, 1000));
        assert_eq!(s.get(&fps[0], 1000), None);
        assert!(s.get(&fps[1], 1000).is_some() && s.get(&d, 1000).is_some());
        assert_eq!((s.len(), s.evictions(), s.bytes()), (3, 1, 3 * per));
        // A bigger chunk makes room for itself.
        let e = s.insert(&chunk(4, 2000));
        assert_eq!(s.get(&fps[1], 1000), None);
        assert_eq!(s.get(&fps[2], 1000), None);
        assert!(s.get(&e, 2000).is_some() && s.get(&d, 1000).is_some());
        assert_eq!(s.evictions(), 3);
        // Larger than the whole store: not kept.
        let f = s.insert(&chunk(5, 4000));
        assert_eq!(s.get(&f, 4000), None);
        assert!(s.bytes() <= s.capacity());
    }

    #[test]
    fn a_stored_chunk_does_not_keep_the_record_buffer_alive() {
        let record = Bytes::from(chunk(9, 4096));
        let items = vec![Item::Chunk(record.slice(100..1100))];
        let mut s = MemoryStore::new(1 << 20);
        let (r, note) = resolve(items, &mut s);
        assert_eq!(r, Resolved::Data(record.slice(100..1100)));
        assert_eq!(note.stored_chunks, 1);
        assert!(record.is_unique(), "the store holds a slice of the record");
        let stored = s.get(&fingerprint(&record[100..1100]), 1000).unwrap();
        let range = record.as_ptr_range();
        assert!(!range.contains(&stored.as_ptr()));
    }

    #[test]
    fn resolve_stores_literals_even_when_a_ref_is_missing() {
        let mut s = MemoryStore::new(1 << 20);
        let (a, b) = (chunk(1, 500), chunk(2, 600));
        let items = vec![
            Item::Piece(Bytes::from_static(b"head")),
            Item::Chunk(Bytes::from(a.clone())),
            Item::Ref {
                fp: fingerprint(&b),
                len: 600,
            },
            Item::Ref {
                fp: fingerprint(&a),
                len: 500,
            },
        ];
        let (r, note) = resolve(items.clone(), &mut s);
        assert_eq!(r, Resolved::Missing { missing: 1 });
        assert_eq!(
            note,
            ResolveNote {
                stored_chunks: 1,
                ref_bytes: 1100,
                literal_bytes: 504
            }
        );
        assert!(s.get(&fingerprint(&a), 500).is_some());
        s.insert(&b);
        let (r, _) = resolve(items, &mut s);
        assert_eq!(
            r,
            Resolved::Data([&b"head"[..], &a, &b, &a].concat().into())
        );
        // A ref of the wrong length is not a hit.
        let wrong = vec![Item::Ref {
            fp: fingerprint(&a),
            len: 501,
        }];
        assert_eq!(resolve(wrong, &mut s).0, Resolved::Missing { missing: 1 });
    }

    proptest! {
        #[test]
        fn the_store_stays_within_its_capacity(
            capacity in 0u64..40_000,
            ops in proptest::collection::vec((0u8..40, 1usize..5000), 1..80),
        ) {
            let mut s = MemoryStore::new(capacity);
            let mut held = std::collections::HashSet::new();
            for (seed, len) in ops {
                let c = chunk(seed, len);
                let fp = s.insert(&c);
                held.insert((fp, c));
                prop_assert!(s.bytes() <= capacity);
                let charged: u64 = held
                    .iter()
                    .filter_map(|(fp, c)| s.get(fp, c.len() as u32).map(|b| (b, c)))
                    .map(|(b, c)| {
                        assert_eq!(&b[..], &c[..]);
                        charge(b.len())
                    })
                    .sum();
                prop_assert_eq!(charged, s.bytes());
            }
        }
    }
}

//! WAN dedup (issue 16): a chunk the far gateway already holds crosses the link as a
//! reference (its BLAKE3 fingerprint and length) instead of its bytes. Sans-IO: no sockets,
//! no clock; the session core drives it.
//!
//! ```text
//!  sender                                                      receiver
//!  stream ─► Chunker (boundaries) ─► encode_frame ─► items ═══► decode ─► resolve ─► bytes
//!                                      ▲ Index: what the far MemoryStore holds     │ MemoryStore (shared
//!                                      └── new_chunks, once acknowledged     ▼ by the tunnel)
//! ```
//!
//! - [`chunker`]: content-defined boundaries of one session's stream (FastCDC v2020),
//!   the same however writes or frames cut the stream;
//! - [`items`]: the payload of a deduplicated frame (pieces, chunks, refs), and its
//!   bounded decoder;
//! - [`store`]: the receiver's bounded chunk store in memory, and [`resolve`] (items →
//!   bytes, never wrong bytes: a ref is answered only by a chunk that hashes to it);
//! - [`disk`]: the same store in files that survive a restart (`[wan] dedup_dir`);
//! - [`index`]: the sender's view of the far store, scoped by tag (migration) or not;
//! - [`encode_frame`] (here): one frame's payload as items.

pub mod chunker;
pub mod disk;
pub mod index;
pub mod items;
pub mod store;

use bytes::Bytes;
use rustc_hash::FxHashSet;

pub use chunker::Chunker;
pub use disk::{DiskStore, DiskStoreError};
pub use index::Index;
pub use items::{decode, encode, encoded_len, Item, ItemError, MAX_CHUNK_LEN};
pub use store::{
    resolve, ChunkStore, MemoryStore, ResolveNote, Resolved, StoreUsage, ENTRY_OVERHEAD,
};

/// A chunk's fingerprint: its full BLAKE3 hash, never truncated (a guest controls its
/// memory and could otherwise grind collisions).
pub type Fingerprint = [u8; 32];

/// The fingerprint of `data`.
pub fn fingerprint(data: &[u8]) -> Fingerprint {
    *blake3::hash(data).as_bytes()
}

/// Content-defined chunk sizes in bytes (FastCDC's minimum, average and maximum).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChunkSizes {
    pub min: u32,
    pub avg: u32,
    pub max: u32,
}

/// The chunk sizes the gateways use: average 4 KiB, min 1 KiB, max 16 KiB, by measurement
/// (`examples/dedup.rs` on 256 MiB images of `scripts/guest-image.py`, averages 1, 2, 4,
/// 8 KiB): of a VM cloned from the same template as the first, 44, 42, 41, 41 % of the bytes
/// were found again in chunks that are not all zeros (56-60 % with QEMU's page headers in
/// both streams), so smaller chunks mostly find more zero runs, which packing already sends
/// as their length; yet each chunk costs a 37-byte reference, `ENTRY_OVERHEAD` in the store
/// and the index (10 % of the store at 1 KiB, 3 % at 4 KiB), and per-chunk CPU (about 600
/// MB/s per core at 1 KiB, 900-1200 at 4 KiB). 8 KiB found 2 points less with page headers.
pub const CHUNK_SIZES: ChunkSizes = ChunkSizes {
    min: 1024,
    avg: 4096,
    max: 16384,
};

/// One frame's payload as items, from [`encode_frame`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[must_use]
pub struct Encoded {
    pub items: Vec<Item>,
    /// The whole chunks sent as literals: (end offset in the stream, fingerprint, length).
    /// Promote them into the [`Index`] once the peer acknowledged the frame.
    pub new_chunks: Vec<(u64, Fingerprint, u32)>,
    /// Plain bytes sent as references.
    pub ref_bytes: u64,
    /// Bytes fingerprinted (the whole chunks).
    pub hashed_bytes: u64,
}

/// The items of a frame whose `payload` is the stream's bytes `[start, start + len)`.
///
/// `boundaries`: the chunker's confirmed boundaries in `(start, start + len]`, ascending
/// (others are skipped); `starts_on_boundary`: whether `start` is one (offset 0 always is).
/// The bytes between two boundaries are a whole chunk: a [`Item::Ref`] if `index` holds it
/// (under `tag`, see [`Index::holds`]) or the frame already carried it as a literal, else an
/// [`Item::Chunk`]. The bytes before the first and after the last boundary are
/// [`Item::Piece`]s. An empty payload gives no items (and is not to be sent: an empty list
/// does not decode).
pub fn encode_frame(
    payload: &Bytes,
    start: u64,
    starts_on_boundary: bool,
    boundaries: impl Iterator<Item = u64>,
    index: &Index,
    tag: Option<u64>,
) -> Encoded {
    let end = start + payload.len() as u64;
    let mut out = Encoded::default();
    // Chunks this frame carries as literals: a repeat within it goes as a ref (the
    // receiver stores a frame's chunks before it resolves its refs).
    let mut carried = FxHashSet::default();
    let (mut at, mut whole) = (start, starts_on_boundary || start == 0);
    for b in boundaries {
        if b <= at || b > end {
            continue;
        }
        let bytes = payload.slice((at - start) as usize..(b - start) as usize);
        match u32::try_from(bytes.len()) {
            Ok(len) if whole && len <= MAX_CHUNK_LEN => {
                let fp = fingerprint(&bytes);
                out.hashed_bytes += u64::from(len);
                if index.holds(&fp, len, tag) || carried.contains(&(fp, len)) {
                    out.ref_bytes += u64::from(len);
                    out.items.push(Item::Ref { fp, len });
                } else {
                    carried.insert((fp, len));
                    out.new_chunks.push((b, fp, len));
                    out.items.push(Item::Chunk(bytes));
                }
            }
            _ => out.items.push(Item::Piece(bytes)),
        }
        (at, whole) = (b, true);
    }
    if at < end {
        out.items
            .push(Item::Piece(payload.slice((at - start) as usize..)));
    }
    out
}

/// What the module's tests share.
#[cfg(test)]
pub(crate) mod test_data {
    use super::ChunkSizes;

    /// Small sizes so that short test streams have many chunks.
    pub const SMALL: ChunkSizes = ChunkSizes {
        min: 64,
        avg: 256,
        max: 1024,
    };

    /// A xorshift64 sequence from `seed`: test data that is the same on every run.
    pub fn xorshift(seed: u64) -> impl FnMut() -> u64 {
        let mut x = seed | 1;
        move || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        }
    }
}

#[cfg(test)]
mod tests {
    use super::test_data::{xorshift, SMALL};
    use super::*;
    use proptest::prelude::*;

    /// A stream of `len` bytes made of blocks from a small pool (xorshift from `seed`), so
    /// that content repeats at arbitrary offsets.
    fn stream(seed: u64, len: usize) -> Vec<u8> {
        let mut next = xorshift(seed);
        let pool: Vec<Vec<u8>> = (0..6)
            .map(|_| {
                let n = 200 + (next() % 1800) as usize;
                (0..n).map(|_| next() as u8).collect()
            })
            .collect();
        let mut out = Vec::with_capacity(len);
        while out.len() < len {
            match next() % 8 {
                0 => out.extend((0..next() % 300).map(|_| next() as u8)),
                _ => out.extend_from_slice(&pool[(next() % 6) as usize]),
            }
        }
        out.truncate(len);
        out
    }

    #[test]
    fn whole_chunks_become_refs_or_chunks_and_edges_pieces() {
        let data = Bytes::from(stream(3, 4000));
        let mut index = Index::new(1 << 20);
        // Frame [100, 3000) with boundaries at 500, 1500, 2000 (and 3500 beyond it).
        let payload = data.slice(100..3000);
        let e = encode_frame(
            &payload,
            100,
            false,
            [500, 1500, 2000, 3500].into_iter(),
            &index,
            None,
        );
        let kinds: Vec<_> = e
            .items
            .iter()
            .map(|i| match i {
                Item::Piece(b) => ('p', b.len()),
                Item::Chunk(b) => ('c', b.len()),
                Item::Ref { len, .. } => ('r', *len as usize),
            })
            .collect();
        assert_eq!(kinds, [('p', 400), ('c', 1000), ('c', 500), ('p', 1000)]);
        assert_eq!((e.ref_bytes, e.hashed_bytes), (0, 1500));
        assert_eq!(e.new_chunks[0], (1500, fingerprint(&data[500..1500]), 1000));
        for (_, fp, len) in &e.new_chunks {
            index.insert(*fp, *len, 1);
        }
        // Starting on a boundary: the first bytes are a whole chunk, held now.
        let payload = data.slice(500..2000);
        let e = encode_frame(
            &payload,
            500,
            true,
            [1500, 2000].into_iter(),
            &index,
            Some(1),
        );
        assert!(e.items.iter().all(|i| matches!(i, Item::Ref { .. })));
        assert_eq!((e.ref_bytes, e.new_chunks.len()), (1500, 0));
        // Another migration's scope does not see them.
        let e = encode_frame(
            &payload,
            500,
            true,
            [1500, 2000].into_iter(),
            &index,
            Some(2),
        );
        assert_eq!(e.ref_bytes, 0);
        // Offset 0 is a boundary.
        let e = encode_frame(
            &data.slice(..500),
            0,
            false,
            [500].into_iter(),
            &index,
            None,
        );
        assert!(matches!(e.items[..], [Item::Chunk(_)]));
        // A repeat within the frame is a ref to the frame's own literal.
        let twice = Bytes::from([&data[..700], &data[..700]].concat());
        let e = encode_frame(
            &twice,
            0,
            true,
            [700, 1400].into_iter(),
            &Index::new(0),
            None,
        );
        assert!(matches!(
            e.items[..],
            [Item::Chunk(_), Item::Ref { len: 700, .. }]
        ));
        assert_eq!(e.new_chunks.len(), 1);
        let (r, _) = resolve(e.items, &mut MemoryStore::new(1 << 20));
        assert_eq!(r, Resolved::Data(twice));
    }

    /// Cuts `data` into frames as the session core will: each frame ends at the last
    /// confirmed boundary within `frame` bytes of its start, or `frame` bytes on if there is
    /// none, the chunker fed in writes of the given sizes.
    fn frames(data: &[u8], writes: &[usize], frame: u64) -> Vec<(u64, u64, bool, Vec<u64>)> {
        let mut c = Chunker::new(SMALL);
        let (mut fed, mut next, mut w) = (0usize, 0u64, 0);
        let mut out = Vec::new();
        let mut next_on_boundary = true;
        loop {
            if fed < data.len() {
                let n = writes[w % writes.len()].clamp(1, data.len() - fed);
                c.feed(&data[fed..fed + n]);
                fed += n;
                w += 1;
            } else {
                c.finish();
            }
            while next < c.fed() && (c.fed() - next >= frame || c.finished()) {
                let limit = (next + frame).min(c.fed());
                let end = c.last_boundary_in(next, limit).unwrap_or(limit);
                out.push((
                    next,
                    end,
                    next_on_boundary,
                    c.boundaries(next, end).collect(),
                ));
                next_on_boundary = c.last_boundary_in(end - 1, end) == Some(end);
                c.forget_up_to(end - 1);
                next = end;
            }
            if c.finished() {
                return out;
            }
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        /// Sender and receiver as the gateways will run them, frames resolved in any order,
        /// with a store warm (holding some chunks the index knows) or cold (restarted while
        /// the index stayed warm), small enough to evict: each frame resolves to exactly its
        /// bytes or reports refs missing, never wrong bytes; and resent as literals (the
        /// refs missing made chunks), every frame resolves.
        #[test]
        fn frames_resolve_to_their_bytes_or_report_missing(
            seed in any::<u64>(),
            len in 1usize..20_000,
            writes in proptest::collection::vec(1usize..3000, 1..5),
            frame in 200u64..5000,
            warm in any::<bool>(),
            capacity in prop_oneof![Just(1u64 << 30), 2_000u64..30_000],
            shuffle in proptest::option::of(any::<u64>()),
            tag in proptest::option::of(0u64..2),
        ) {
            let data = stream(seed, len);
            let cut = frames(&data, &writes, frame);
            // The frames cover the stream in order.
            prop_assert_eq!(cut.first().map(|f| f.0), Some(0));
            prop_assert_eq!(cut.last().map(|f| f.1), Some(len as u64));
            prop_assert!(cut.windows(2).all(|w| w[0].1 == w[1].0));
            let (mut index, mut store) = (Index::new(capacity), MemoryStore::new(capacity));
            // A first pass over the same stream's first half, promoted and stored.
            for &(s, e, on, ref b) in cut.iter().filter(|f| f.1 <= len as u64 / 2) {
                let payload = Bytes::copy_from_slice(&data[s as usize..e as usize]);
                let enc = encode_frame(&payload, s, on, b.iter().copied(), &index, tag);
                for (_, fp, l) in &enc.new_chunks {
                    index.insert(*fp, *l, tag.unwrap_or(0));
                }
                if warm {
                    let _ = resolve(enc.items, &mut store);
                }
            }
            // Then the whole stream: encoded, promoted at once, resolved shuffled.
            let mut sent = Vec::new();
            for &(s, e, on, ref b) in &cut {
                let payload = Bytes::copy_from_slice(&data[s as usize..e as usize]);
                let enc = encode_frame(&payload, s, on, b.iter().copied(), &index, tag);
                prop_assert_eq!(
                    enc.items.iter().map(Item::plain_len).sum::<usize>(),
                    payload.len()
                );
                if e <= len as u64 / 2 && capacity == 1 << 30 {
                    // Sent in the first pass: every whole chunk is a reference now.
                    prop_assert!(enc.new_chunks.is_empty());
                    prop_assert_eq!(enc.ref_bytes, enc.hashed_bytes);
                }
                for (_, fp, l) in &enc.new_chunks {
                    index.insert(*fp, *l, tag.unwrap_or(0));
                }
                let mut wire = Vec::new();
                encode(&enc.items, &mut wire);
                sent.push((payload, Bytes::from(wire), s, on, b));
            }
            if let Some(mut x) = shuffle {
                x |= 1;
                for i in (1..sent.len()).rev() {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    sent.swap(i, (x % (i as u64 + 1)) as usize);
                }
            }
            let mut missed = 0;
            for (payload, wire, s, on, b) in &sent {
                let items = decode(wire.clone(), payload.len()).expect("decodes");
                match resolve(items, &mut store).0 {
                    Resolved::Data(got) => prop_assert_eq!(&got, payload),
                    Resolved::Missing { missing } => {
                        prop_assert!(missing > 0);
                        missed += 1;
                        // Sent again with its chunks as literals: it resolves (unless the
                        // store is too small for the frame's own chunks: then missing
                        // again, still never wrong bytes).
                        let again = encode_frame(
                            payload, *s, *on, b.iter().copied(), &Index::new(0), None,
                        );
                        match resolve(again.items, &mut store).0 {
                            Resolved::Data(got) => prop_assert_eq!(&got, payload),
                            Resolved::Missing { .. } => prop_assert!(capacity < 1 << 30),
                        }
                    }
                }
            }
            // A warm, big store, frames in order: nothing is missing.
            if warm && capacity == 1 << 30 && shuffle.is_none() {
                prop_assert_eq!(missed, 0);
            }
        }
    }
}

//! A deduplicated frame's item list from a peer that lies: `dedup::decode` never panics,
//! accepts nothing that stands for more than `max_plain` bytes, and what it accepts encodes
//! back to the same bytes; `dedup::resolve` of it, against a small store that evicts, never
//! panics and yields exactly the items' plain length, every reference answered by a chunk
//! that hashes to it.
//!
//! Input `mode | cap | rest`, the store holding at most `cap * 256` bytes:
//! - mode even: `rest` is the item list as it is, `max_plain` 256 KiB;
//! - mode odd (structure-aware, so that the fuzzer starts from valid lists without a stored
//!   corpus): `rest` is a program, one item per `op len` pair, its bytes taken from what
//!   follows: `op % 4` 0 a piece, 1 a chunk, 2 a ref to the chunk of the list `len` chunks
//!   back (or to a chunk never sent), 3 a ref with a wrong length. The list is encoded, must
//!   decode to itself, and must resolve to its plain bytes or report refs missing.
#![no_main]
use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use lmas::dedup::{decode, encode, fingerprint, resolve, Item, Resolved, MemoryStore};

const MAX_PLAIN: usize = 256 << 10;

/// Resolves `items` and checks what the store made of them; `want`: the plain bytes, when
/// they are known.
fn check(items: Vec<Item>, store: &mut MemoryStore, want: Option<&[u8]>) {
    let plain: usize = items.iter().map(Item::plain_len).sum();
    assert!(plain <= MAX_PLAIN);
    let kept = items.clone();
    let (resolved, note) = resolve(items, store);
    assert!(store.bytes() <= store.capacity(), "the store overflowed");
    assert_eq!(
        note.stored_chunks,
        kept.iter().filter(|i| matches!(i, Item::Chunk(_))).count()
    );
    match resolved {
        Resolved::Data(data) => {
            assert_eq!(data.len(), plain);
            let mut at = 0;
            for item in &kept {
                let n = item.plain_len();
                match item {
                    Item::Piece(b) | Item::Chunk(b) => assert_eq!(&data[at..at + n], &b[..]),
                    Item::Ref { fp, .. } => assert_eq!(&fingerprint(&data[at..at + n]), fp),
                }
                at += n;
            }
            if let Some(want) = want {
                assert_eq!(&data[..], want, "resolved to other bytes");
            }
        }
        Resolved::Missing { missing } => {
            assert!(missing > 0 && kept.iter().any(|i| matches!(i, Item::Ref { .. })))
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let [mode, cap, rest @ ..] = data else {
        return;
    };
    let mut store = MemoryStore::new(u64::from(*cap) * 256);
    if mode & 1 == 0 {
        let buf = Bytes::copy_from_slice(rest);
        if let Ok(items) = decode(buf, MAX_PLAIN) {
            let mut again = Vec::new();
            encode(&items, &mut again);
            assert_eq!(again, rest, "decoded items do not encode back");
            check(items, &mut store, None);
        }
        return;
    }
    let (mut items, mut chunks, mut plain) = (Vec::new(), Vec::<Bytes>::new(), Vec::new());
    // Whether `plain` is what the list stands for: every ref names an earlier chunk.
    let mut known = true;
    let mut pool = Bytes::copy_from_slice(rest);
    for op in rest.chunks_exact(2) {
        let (kind, len) = (op[0] % 4, usize::from(op[1]) + 1);
        match kind {
            0 | 1 => {
                let take = len.min(pool.len());
                if take == 0 {
                    break;
                }
                let bytes = pool.split_to(take);
                plain.extend_from_slice(&bytes);
                if kind == 0 {
                    items.push(Item::Piece(bytes));
                } else {
                    chunks.push(bytes.clone());
                    items.push(Item::Chunk(bytes));
                }
            }
            _ => {
                let target = chunks.len().checked_sub(len % 8 + 1).map(|i| &chunks[i]);
                let (fp, n) = match target {
                    Some(c) => (fingerprint(c), c.len() as u32),
                    None => (fingerprint(&[op[1]]), 1),
                };
                let n = if kind == 3 { n + 1 } else { n };
                match target {
                    Some(c) if kind == 2 => plain.extend_from_slice(c),
                    _ => known = false,
                }
                items.push(Item::Ref { fp, len: n });
            }
        }
    }
    if items.is_empty() {
        return;
    }
    let mut wire = Vec::new();
    encode(&items, &mut wire);
    let total: usize = items.iter().map(Item::plain_len).sum();
    let decoded = decode(Bytes::from(wire), MAX_PLAIN);
    if total > MAX_PLAIN {
        assert!(decoded.is_err(), "a list over max_plain decoded");
        return;
    }
    let decoded = decoded.expect("a valid list decodes");
    assert_eq!(decoded, items);
    check(decoded, &mut store, known.then_some(&plain[..]));
});

//! Dedup between two cores: references and literals of several sessions across flows that
//! die, stall and deliver out of order, with a store small enough to evict what the sender
//! still counts on (so references miss and are asked for again): every stream arrives
//! exactly, and repeated content crosses as references.

use proptest::prelude::*;

use super::super::*;
use super::{op, run_ends, End, Op, FLOWS};

/// Limits with frames large enough to hold whole chunks.
fn dedup_limits() -> Limits {
    Limits {
        session_window: 1 << 20,
        global_buffer: 8 << 20,
        unsent_buffer: 256 << 10,
        unsent_time_us: crate::session::unsent::UNSENT_TIME_US,
        receive_budget: 8 << 20,
        frame_len: 64 << 10,
        max_sessions: 16,
        ack_every: 64 << 10,
        ack_delay_us: 100,
    }
}

/// An end whose core dedups with a store of `store_bytes`, and whose peer offered the same.
fn dedup_end(side: Side, store_bytes: u64, scope: DedupScope) -> End {
    dedup_end_with(side, dedup_config(store_bytes, scope), None)
}

fn dedup_config(store_bytes: u64, scope: DedupScope) -> DedupConfig {
    DedupConfig {
        mode: DedupMode::Auto,
        scope,
        store_bytes,
    }
}

/// The same, its store `store` (one the gateway keeps across tunnels) when given.
fn dedup_end_with(side: Side, config: DedupConfig, store: Option<SharedStore>) -> End {
    let mut e = End::new(side, dedup_limits());
    e.core = TunnelCore::new(side, dedup_limits(), FLOWS).with_dedup(config, store);
    e.core.set_peer_dedup(config.offer(), false);
    e
}

/// `n` bytes made of a few random 24 KiB blocks in the given order (repeated), so that chunks
/// repeat within and across streams.
fn repetitive(blocks: &[Vec<u8>], order: &[usize], n: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(n + (24 << 10));
    for &i in order.iter().cycle() {
        if out.len() >= n {
            break;
        }
        out.extend_from_slice(&blocks[i % blocks.len()]);
    }
    out.truncate(n);
    out
}

fn blocks(seed: u64) -> Vec<Vec<u8>> {
    (0..5)
        // Odd seeds: `random_bytes` sets the lowest bit, so n and n + 1 would be one block.
        .map(|i| crate::transform::random_bytes(24 << 10, seed * 16 + 2 * i + 1))
        .collect()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    #[test]
    fn deduplicated_streams_arrive_exactly_despite_dying_flows_and_evictions(
        seed in 1u64..1000,
        orders in proptest::collection::vec(proptest::collection::vec(0usize..5, 1..12), 1..4),
        lens in proptest::collection::vec(1usize..200_000, 3),
        small_store in any::<bool>(),
        tunnel_scope in any::<bool>(),
        ops in proptest::collection::vec(op(), 0..300),
    ) {
        let blocks = blocks(seed);
        let streams: Vec<Vec<u8>> = orders
            .iter()
            .zip(&lens)
            .map(|(order, &n)| repetitive(&blocks, order, n))
            .collect();
        // 48 KiB: the store evicts chunks the sender still references, so they miss.
        let store = if small_store { 48 << 10 } else { 64 << 20 };
        let scope = if tunnel_scope { DedupScope::Tunnel } else { DedupScope::Migration };
        let a = dedup_end(Side::Dialer, store, scope);
        let b = dedup_end(Side::Acceptor, store, scope);
        let (a, b, ids) = run_ends(a, b, &streams, &ops);
        for (id, data) in ids.iter().zip(&streams) {
            let got = &b.received[id];
            let first_difference = got.iter().zip(data).position(|(x, y)| x != y);
            prop_assert!(
                got == data,
                "session {}: {} bytes of {}, first difference at {:?}",
                id,
                got.len(),
                data.len(),
                first_difference
            );
            prop_assert!(b.finished.get(id).copied().unwrap_or(false), "session {} saw its end", id);
        }
        prop_assert_eq!(a.core.session_count(), 0);
        prop_assert_eq!(b.core.session_count(), 0);
        prop_assert_eq!(a.core.buffered(), 0);
        prop_assert!(b.core.dedup_stores().store_bytes <= store, "the store stays within its bound");
    }
}

/// Sends `data` on a new session from `a` to `b` with no faults, checks that it arrived
/// exactly, and returns the data-frame payload bytes that crossed the flows for it.
fn transfer(a: End, b: End, data: &[u8]) -> (End, End, u64) {
    let before = a.sent_bytes;
    let (a, b, ids) = run_ends(a, b, &[data.to_vec()], &[]);
    assert!(b.received[&ids[0]] == data, "arrived exactly");
    let crossed = a.sent_bytes - before;
    (a, b, crossed)
}

#[test]
fn a_second_copy_crosses_as_references_only_where_the_scope_allows() {
    let data = repetitive(&blocks(7), &[0, 1, 2, 3, 4], 120 << 10);
    for (scope, second_at_most) in [
        (DedupScope::Tunnel, data.len() / 20),
        // Another migration (a new group: the first one ended) may not reference the
        // first one's chunks.
        (DedupScope::Migration, usize::MAX),
    ] {
        let a = dedup_end(Side::Dialer, 64 << 20, scope);
        let b = dedup_end(Side::Acceptor, 64 << 20, scope);
        let (a, b, first) = transfer(a, b, &data);
        let (a, b, second) = transfer(a, b, &data);
        assert!(
            first >= data.len() as u64,
            "{scope:?}: first copy {first} bytes"
        );
        assert!(
            second <= second_at_most as u64,
            "{scope:?}: second copy {second} bytes of {}",
            data.len()
        );
        if scope == DedupScope::Migration {
            assert!(
                second >= data.len() as u64,
                "migration scope: {second} bytes"
            );
        }
        assert_eq!(b.core.dedup_figures().misses, 0);
        assert!(a.core.dedup_figures().ref_bytes > 0 || scope == DedupScope::Migration);
    }
}

/// The receiving gateway restarted with a cold store while the sender's index is warm
/// (the worst case of an eviction): every reference misses, is asked for again, and the
/// stream still arrives exactly.
#[test]
fn a_cold_store_asks_again_and_the_stream_arrives_exactly() {
    let data = repetitive(&blocks(9), &[0, 1, 2, 3, 4], 120 << 10);
    let a = dedup_end(Side::Dialer, 64 << 20, DedupScope::Tunnel);
    let b = dedup_end(Side::Acceptor, 64 << 20, DedupScope::Tunnel);
    let (a, _, _) = transfer(a, b, &data);
    let cold = dedup_end(Side::Acceptor, 64 << 20, DedupScope::Tunnel);
    let (a, cold, second) = transfer(a, cold, &data);
    assert!(cold.core.dedup_figures().misses > 0, "references missed");
    assert_eq!(
        a.core.dedup_figures().misses_answered,
        cold.core.dedup_figures().misses
    );
    assert!(
        second >= data.len() as u64,
        "the missed bytes went again: {second}"
    );
}

/// A reference missed, and the control connection died with the request to send it again
/// (one side saw a failure the other did not): the resync that follows asks again, so the
/// stream still arrives exactly instead of waiting forever for bytes nobody will resend.
#[test]
fn a_miss_lost_with_the_control_connection_is_asked_again() {
    let data = repetitive(&blocks(11), &[0, 1, 2, 3, 4], 120 << 10);
    let a = dedup_end(Side::Dialer, 64 << 20, DedupScope::Tunnel);
    let b = dedup_end(Side::Acceptor, 64 << 20, DedupScope::Tunnel);
    let (a, _, _) = transfer(a, b, &data);
    let cold = dedup_end(Side::Acceptor, 64 << 20, DedupScope::Tunnel);
    // The session opens; then frames cross on one flow while control stays undelivered
    // (the misses queue there), then control is lost.
    let mut ops = vec![Op::Control];
    for _ in 0..600 {
        ops.extend([
            Op::Pull {
                from_a: true,
                flow: 0,
            },
            Op::Deliver {
                from_a: true,
                flow: 0,
            },
            Op::Tick,
        ]);
    }
    ops.push(Op::ControlLost);
    let (_, cold, ids) = run_ends(a, cold, std::slice::from_ref(&data), &ops);
    assert!(cold.core.dedup_figures().misses > 0, "references missed");
    let got = &cold.received[&ids[0]];
    assert!(
        got == &data,
        "{} bytes of {} arrived, first difference at {:?}",
        got.len(),
        data.len(),
        got.iter().zip(&data).position(|(x, y)| x != y)
    );
}

/// Both gateways restarted (a new tunnel; the sender's index starts empty), and the receiver
/// kept its store on disk (`dedup_dir`): the store's inventory tells the sender what it holds,
/// so the same stream crosses as references at once, and arrives exactly. In the migration
/// scope the sender asks for no inventory, and a new migration may not reference an old one.
#[test]
fn a_store_kept_across_restarts_is_referenced_at_once() {
    use std::sync::{Arc, Mutex};
    let data = repetitive(&blocks(13), &[0, 1, 2, 3, 4], 120 << 10);
    for scope in [DedupScope::Tunnel, DedupScope::Migration] {
        let dir = crate::dedup::disk::TempDir::new();
        let config = dedup_config(64 << 20, scope);
        let disk = || {
            let store = crate::dedup::DiskStore::open(&dir.0, config.store_bytes).expect("opens");
            Arc::new(Mutex::new(store)) as SharedStore
        };
        let a = dedup_end(Side::Dialer, 64 << 20, scope);
        let b = dedup_end_with(Side::Acceptor, config, Some(disk()));
        let (_, b, first) = transfer(a, b, &data);
        let held = b.core.dedup_stores().store_chunks;
        assert!(held > 10, "{held} chunks stored");
        drop(b);

        let mut a = dedup_end(Side::Dialer, 64 << 20, scope);
        let mut b = dedup_end_with(Side::Acceptor, config, Some(disk()));
        assert_eq!(b.core.dedup_stores().store_chunks, held, "reopened");
        // The sender's control connection attaches to the new tunnel, with its offer.
        b.core.set_peer_dedup(config.offer(), true);
        // Only a hint: a shutdown does not wait for it to be delivered.
        assert!(!b.core.has_control());
        let mut parts = 0;
        while let Some(m) = b.core.poll_control() {
            assert!(
                matches!(m, crate::protocol::Message::DedupInventory { .. }),
                "{m:?}"
            );
            a.core.handle_message(m).expect("an inventory is welcome");
            parts += 1;
        }
        let (_, b, second) = transfer(a, b, &data);
        assert_eq!(b.core.dedup_figures().misses, 0);
        match scope {
            DedupScope::Tunnel => {
                assert_eq!(parts, 1, "{held} chunks fit one message");
                assert!(
                    second <= first / 20,
                    "second copy {second} bytes, first {first}"
                );
            }
            DedupScope::Migration => {
                assert_eq!(parts, 0, "not asked for");
                assert!(second >= data.len() as u64, "second copy {second} bytes");
            }
        }
    }
}

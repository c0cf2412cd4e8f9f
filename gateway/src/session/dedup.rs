//! The session core's side of the WAN dedup cache ([`crate::dedup`], docs/DEDUP.md): per
//! tunnel, the index of what the peer's store holds (sending) and our store of what the
//! peer sent (receiving); per session, the chunk boundaries of its stream and the chunks it
//! sent that the peer has not acknowledged yet.
//!
//! The rules that keep every byte right (docs/PROTOCOL.md, "Dedup"):
//! - a chunk goes into the index only once the peer acknowledged the frame that carried it,
//!   so a reference never overtakes its literal on another flow;
//! - a reference the store cannot resolve (evicted, or the store is new) is answered with a
//!   dedup-miss, and the sender sends that frame's bytes again as they are;
//! - resends go as they are, and the chunks of a resent range are not indexed (the peer may
//!   never have stored them);
//! - the store fingerprints what it stores itself, so what it delivers always hashes to the
//!   reference's fingerprint.
//!
//! Frames are cut on chunk boundaries, and the start of a chunk whose end the endpoint has not
//! written yet is held back while the endpoint keeps writing, until it has been silent for
//! [`TAIL_HOLD_US`] (a chunk is at most 16 KiB, so the wait is bounded by the endpoint's own
//! pace): a migration's next bytes come in microseconds, and a request-reply exchange waits
//! no longer than this for its last bytes.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use bytes::Bytes;

use super::dedup_config::{DedupConfig, DedupMode, DedupScope};
use super::dedup_inventory::InventorySender;
use crate::crypto::DedupOffer;
use crate::dedup::{self, ChunkStore, Chunker, Fingerprint, Index, MemoryStore, Resolved};
use crate::protocol::Message;

/// A store that outlives a tunnel: the gateway opens it (`[wan] dedup_dir`) and hands it to
/// each tunnel it creates in turn, so a tunnel after a restart of either end starts with
/// what the store kept.
pub type SharedStore = Arc<Mutex<dyn ChunkStore>>;

/// The store, locked. A panic elsewhere while it was held leaves a store that is still
/// consistent (every operation completes its bookkeeping before it can fail).
fn lock(store: &SharedStore) -> MutexGuard<'_, dyn ChunkStore + 'static> {
    store.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The tag of index entries learnt from the peer's inventory: chunks some earlier tunnel
/// sent, which only the tunnel scope may reference.
const INVENTORY_TAG: u64 = u64::MAX;

/// How long the start of a chunk may wait for its end before it goes in pieces.
pub const TAIL_HOLD_US: u64 = 2_000;

/// What dedup did, for a session or a tunnel (status and metrics).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DedupFigures {
    /// Sent: stream bytes of the frames that were chunked and fingerprinted.
    pub bytes_in: u64,
    /// Sent: the item lists those frames became (before packing).
    pub bytes_out: u64,
    /// Sent: stream bytes that crossed as references.
    pub ref_bytes: u64,
    /// Sent: frames that went as they are (all zeros: packing sends those as a length).
    pub frames_skipped: u64,
    /// Sent: frames the peer could not resolve and got again as they are.
    pub misses_answered: u64,
    /// Received: stream bytes taken from our store.
    pub resolved_bytes: u64,
    /// Received: frames with a reference our store did not hold (asked for again).
    pub misses: u64,
}

impl DedupFigures {
    pub fn add(&mut self, o: &DedupFigures) {
        self.bytes_in += o.bytes_in;
        self.bytes_out += o.bytes_out;
        self.ref_bytes += o.ref_bytes;
        self.frames_skipped += o.frames_skipped;
        self.misses_answered += o.misses_answered;
        self.resolved_bytes += o.resolved_bytes;
        self.misses += o.misses;
    }
}

/// The tunnel's store and index, as status shows them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DedupStores {
    /// Our store (what the peer sent): bytes charged, chunks, evictions.
    pub store_bytes: u64,
    pub store_chunks: u64,
    pub store_evictions: u64,
    /// Chunks our store could not write or read back intact (a disk store).
    pub store_io_errors: u64,
    /// What we believe the peer's store holds: bytes charged and chunks; 0 when the peer
    /// offered no store.
    pub index_bytes: u64,
    pub index_chunks: u64,
    /// The peer's store, as its handshake offered it (0: none, we send no references).
    pub peer_store: u64,
}

/// One tunnel's dedup state.
pub struct TunnelDedup {
    config: DedupConfig,
    /// The store the peer offered (bytes), from its control connection's handshake.
    peer_store: u64,
    /// Sending: what the peer's store holds as far as we know; `None` while we send plain.
    index: Option<Index>,
    /// Receiving: the chunks the peer sent; `None` when we offered no store.
    store: Option<SharedStore>,
    /// Our store's inventory, while it is being sent.
    inventory: Option<InventorySender>,
    figures: DedupFigures,
}

/// The part of the peer's store the index may count on: its FIFO evicts by bytes as ours
/// does, and chunks reach it in a slightly different order (acks lag), so we stay short of
/// its end rather than reference what it just evicted.
fn index_capacity(peer_store: u64) -> u64 {
    peer_store - peer_store / 8
}

/// What a received dedup frame came to.
pub enum Received {
    /// Its stream bytes, resolved.
    Data(Bytes),
    /// A reference our store does not hold: ask the peer for the frame's `len` stream bytes
    /// again.
    Missing { len: u32 },
}

/// Why a received dedup frame is a protocol error.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DedupError {
    #[error("dedup frame, but this gateway offered no dedup store")]
    NotOffered,
    #[error("dedup frame: {0}")]
    Items(#[from] dedup::ItemError),
}

impl TunnelDedup {
    /// The tunnel's dedup state; its store is `shared` when the gateway keeps one across
    /// tunnels, else a new one in memory (when `config` offers a store at all).
    pub fn new(config: DedupConfig, shared: Option<SharedStore>) -> TunnelDedup {
        let store = (config.offered_store() > 0).then(|| {
            shared.unwrap_or_else(|| Arc::new(Mutex::new(MemoryStore::new(config.store_bytes))))
        });
        TunnelDedup {
            config,
            peer_store: 0,
            index: None,
            store,
            inventory: None,
            figures: DedupFigures::default(),
        }
    }

    fn store(&self) -> Option<MutexGuard<'_, dyn ChunkStore + 'static>> {
        self.store.as_ref().map(lock)
    }

    /// The peer's control connection attached with `offer`; `new_tunnel` when this is the
    /// tunnel's first (not a resumption). A peer that asked for it gets our store's
    /// inventory, so that what the store kept from earlier tunnels is referenced at once.
    pub fn set_peer(&mut self, offer: DedupOffer, new_tunnel: bool) {
        self.set_peer_store(offer.store);
        if new_tunnel && offer.inventory {
            let end = self.store().map_or(0, |s| s.end());
            self.inventory = InventorySender::new(end);
        }
    }

    /// Whether a part of our inventory may go now ([`TunnelDedup::next_inventory`]).
    pub fn inventory_ready(&self) -> bool {
        self.inventory.as_ref().is_some_and(InventorySender::ready)
    }

    /// When the next part of our inventory may go, while one waits.
    pub fn inventory_due(&self) -> Option<crate::session::Instant> {
        self.inventory.as_ref().and_then(InventorySender::due)
    }

    /// The time is `now`: `true` when that lets the next part of our inventory go.
    pub fn tick(&mut self, now: crate::session::Instant) -> bool {
        self.inventory.as_mut().is_some_and(|i| i.tick(now))
    }

    /// The next part of our store's inventory, oldest chunks first, if one may go now.
    pub fn next_inventory(&mut self) -> Option<Message> {
        let (Some(store), Some(inventory)) = (&self.store, &mut self.inventory) else {
            return None;
        };
        let part = inventory.next_part(&*lock(store));
        if inventory.done() {
            self.inventory = None;
        }
        part
    }

    /// The peer's store holds `chunks` (its inventory): in the tunnel scope, they may be
    /// referenced. Oldest first, as the peer's store will evict them.
    pub fn inventory_received(&mut self, chunks: &[(Fingerprint, u32)]) {
        if self.config.scope != DedupScope::Tunnel {
            return;
        }
        if let Some(index) = &mut self.index {
            for &(fp, len) in chunks {
                index.insert(fp, len, INVENTORY_TAG);
            }
        }
    }

    /// The peer offered a store of `bytes` (0: none) when its control connection attached.
    /// A changed offer (a peer restarted with another size keeps no chunks) starts the index
    /// afresh; the same offer on a resumed tunnel keeps it.
    fn set_peer_store(&mut self, bytes: u64) {
        if bytes == self.peer_store && (self.index.is_some() || bytes == 0) {
            return;
        }
        self.peer_store = bytes;
        self.index = (self.config.mode == DedupMode::Auto && bytes > 0)
            .then(|| Index::new(index_capacity(bytes)));
    }

    /// Whether frames we send go through dedup.
    pub fn sending(&self) -> bool {
        self.index.is_some()
    }

    pub fn figures(&self) -> &DedupFigures {
        &self.figures
    }

    pub fn stores(&self) -> DedupStores {
        let usage = self.store().map(|s| s.usage()).unwrap_or_default();
        let (index_bytes, index_chunks) = self
            .index
            .as_ref()
            .map_or((0, 0), |i| (i.bytes(), i.len() as u64));
        DedupStores {
            store_bytes: usage.bytes,
            store_chunks: usage.chunks,
            store_evictions: usage.evictions,
            store_io_errors: usage.io_errors,
            index_bytes,
            index_chunks,
            peer_store: self.peer_store,
        }
    }

    /// A session's sending state, if frames we send go through dedup now.
    pub fn new_session(&self, group_tag: u64) -> Option<SessionDedup> {
        self.sending().then(|| SessionDedup {
            chunker: Chunker::new(dedup::CHUNK_SIZES),
            at_boundary: true,
            unacked: VecDeque::new(),
            tag: match self.config.scope {
                DedupScope::Migration => Some(group_tag),
                DedupScope::Tunnel => None,
            },
        })
    }

    /// Encodes a new frame `[start, start + payload.len())` of a session whose cut came from
    /// [`SessionDedup::cut`]: the item list to send (with the dedup flag), or `None` to send
    /// it as it is (all zeros, or the peer offers no store); and what it did.
    pub fn encode(
        &mut self,
        s: &mut SessionDedup,
        start: u64,
        payload: &Bytes,
    ) -> (Option<Bytes>, DedupFigures) {
        let end = start + payload.len() as u64;
        let ends_on_boundary = s.chunker.last_boundary_in(start, end) == Some(end);
        let starts_on_boundary = std::mem::replace(&mut s.at_boundary, ends_on_boundary);
        let boundaries: Vec<u64> = s.chunker.boundaries(start, end).collect();
        s.chunker.forget_up_to(end);
        let mut figures = DedupFigures::default();
        let Some(index) = self.index.as_ref() else {
            return (None, figures);
        };
        // Zero runs cost nothing already (packing sends their length); fingerprinting them
        // would only spend CPU.
        if payload.iter().all(|b| *b == 0) {
            figures.frames_skipped = 1;
            self.figures.add(&figures);
            return (None, figures);
        }
        let encoded = dedup::encode_frame(
            payload,
            start,
            starts_on_boundary,
            boundaries.into_iter(),
            index,
            s.tag,
        );
        let mut out = Vec::with_capacity(dedup::encoded_len(&encoded.items));
        dedup::encode(&encoded.items, &mut out);
        figures.bytes_in = payload.len() as u64;
        figures.bytes_out = out.len() as u64;
        figures.ref_bytes = encoded.ref_bytes;
        self.figures.add(&figures);
        s.unacked.extend(encoded.new_chunks);
        (Some(Bytes::from(out)), figures)
    }

    /// The peer acknowledged `acked` bytes of the session: the chunks it stored by then go
    /// into the index.
    pub fn acked(&mut self, s: &mut SessionDedup, acked: u64) {
        while let Some(&(end, fp, len)) = s.unacked.front() {
            if end > acked {
                break;
            }
            s.unacked.pop_front();
            if let Some(index) = &mut self.index {
                index.insert(fp, len, s.tag.unwrap_or(0));
            }
        }
    }

    /// The peer could not resolve a frame: its bytes go again as they are.
    pub fn miss_answered(&mut self) -> DedupFigures {
        let figures = DedupFigures {
            misses_answered: 1,
            ..Default::default()
        };
        self.figures.add(&figures);
        figures
    }

    /// Resolves a received dedup frame's item list against our store (storing its chunks).
    pub fn receive(
        &mut self,
        items: Bytes,
        max_plain: usize,
    ) -> Result<(Received, DedupFigures), DedupError> {
        let mut store = self.store().ok_or(DedupError::NotOffered)?;
        let items = dedup::decode(items, max_plain)?;
        // Bounded by `max_plain` in decoding.
        let len = items.iter().map(|i| i.plain_len() as u32).sum();
        let mut figures = DedupFigures::default();
        let (resolved, note) = dedup::resolve(items, &mut *store);
        drop(store);
        let received = match resolved {
            Resolved::Data(data) => {
                figures.resolved_bytes = note.ref_bytes;
                Received::Data(data)
            }
            Resolved::Missing { .. } => {
                figures.misses = 1;
                Received::Missing { len }
            }
        };
        self.figures.add(&figures);
        Ok((received, figures))
    }
}

/// One session's sending state.
#[derive(Debug)]
pub struct SessionDedup {
    chunker: Chunker,
    /// Whether the next new frame starts on a chunk boundary.
    at_boundary: bool,
    /// Chunks sent as literals and not yet acknowledged: (end offset, fingerprint, length).
    unacked: VecDeque<(u64, Fingerprint, u32)>,
    /// `Some(migration)`: only chunks that migration sent may be referenced.
    tag: Option<u64>,
}

impl SessionDedup {
    /// The endpoint wrote `data` (the next bytes of the stream).
    pub fn written(&mut self, data: &[u8]) {
        self.chunker.feed(data);
    }

    /// The endpoint half-closed: the stream's tail is a whole chunk.
    pub fn finished(&mut self) {
        self.chunker.finish();
    }

    /// Where a new frame from `start` of at most `end - start` bytes should end: on the last
    /// chunk boundary before `end` when there is one, so that the frames of two streams with
    /// the same content hold the same chunks however the endpoint's writes came.
    pub fn cut(&self, start: u64, end: u64) -> u64 {
        self.chunker.last_boundary_in(start, end).unwrap_or(end)
    }

    /// Whether the bytes `[start, end)` the next frame could take are only the start of a
    /// chunk (no boundary yet, the stream goes on): worth holding a moment for the rest, so
    /// that the chunk crosses whole (a reference, or stored far away) instead of in pieces.
    pub fn holds_tail(&self, start: u64, end: u64) -> bool {
        end > start
            && !self.chunker.finished()
            && end - start < u64::from(dedup::CHUNK_SIZES.max)
            && self.chunker.last_boundary_in(start, end).is_none()
    }

    /// `[start, end)` goes again as it is (a flow died, or the peer missed a reference): its
    /// chunks are not indexed, as the peer may never have stored them.
    pub fn resent(&mut self, start: u64, end: u64) {
        self.unacked
            .retain(|&(chunk_end, _, len)| chunk_end <= start || chunk_end - len as u64 >= end);
    }
}

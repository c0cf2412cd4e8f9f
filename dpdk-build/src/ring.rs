//! A single-producer/single-consumer `rte_ring` of mbufs between two lcores.
//! The two ends are separate values, so the SP/SC contract is enforced by
//! ownership: each end is `Send` (moved to its lcore) but not `Clone`.

use std::ffi::CString;
use std::ptr::NonNull;
use std::sync::Arc;

use crate::sys;
use crate::{Error, MbufBatch};

struct Ring(NonNull<sys::rte_ring>);

// SAFETY: the ring is shared by exactly one producer and one consumer, which
// the SP/SC flags make safe across threads.
unsafe impl Send for Ring {}
unsafe impl Sync for Ring {}

impl Drop for Ring {
    fn drop(&mut self) {
        // Free what is still queued, then the ring. Both ends are gone (Arc).
        let mut batch = MbufBatch::new();
        loop {
            let spare = batch.spare();
            // SAFETY: nobody else uses the ring any more; dequeued pointers are
            // mbufs that were enqueued with ownership.
            let n = unsafe {
                sys::lmas_ring_dequeue_burst(
                    self.0.as_ptr(),
                    spare.as_mut_ptr().cast(),
                    spare.len() as u32,
                )
            } as usize;
            if n == 0 {
                break;
            }
            // SAFETY: n valid, owned mbufs were written into the spare slots.
            unsafe { batch.filled(n) };
            batch = MbufBatch::new(); // drop frees them
        }
        // SAFETY: the ring was created by rte_ring_create and is freed once.
        unsafe { sys::rte_ring_free(self.0.as_ptr()) }
    }
}

/// The producing end.
pub struct RingProducer(Arc<Ring>);
/// The consuming end.
pub struct RingConsumer(Arc<Ring>);

/// Creates a ring of `size` slots (a power of two; one slot stays empty).
pub fn mbuf_ring(
    name: &str,
    size: u32,
    socket: i32,
) -> Result<(RingProducer, RingConsumer), Error> {
    let op = format!("rte_ring_create({name}, {size})");
    if !size.is_power_of_two() {
        return Err(Error::invalid(op, "size must be a power of two"));
    }
    let cname = CString::new(name).map_err(|_| Error::invalid(&op, "name contains NUL"))?;
    let flags = sys::RING_F_SP_ENQ | sys::RING_F_SC_DEQ;
    // SAFETY: the name is NUL-terminated; DPDK copies it.
    let p = unsafe { sys::rte_ring_create(cname.as_ptr(), size, socket, flags) };
    let ring = Arc::new(Ring(NonNull::new(p).ok_or_else(|| Error::last(op))?));
    Ok((RingProducer(ring.clone()), RingConsumer(ring)))
}

impl RingProducer {
    /// Moves as many packets of `batch` as fit into the ring (from the
    /// front); the rest stay in `batch`. Returns how many moved.
    pub fn enqueue(&mut self, batch: &mut MbufBatch) -> usize {
        let owned = batch.owned();
        if owned.is_empty() {
            return 0;
        }
        // SAFETY: SP end used by one thread; the pointers are owned mbufs
        // whose ownership passes to the ring for the ones enqueued.
        let n = unsafe {
            sys::lmas_ring_enqueue_burst(
                (self.0).0.as_ptr(),
                owned.as_ptr().cast(),
                owned.len() as u32,
            )
        } as usize;
        batch.consumed(n);
        n
    }

    /// Packets waiting in the ring.
    pub fn len(&self) -> usize {
        // SAFETY: reading the count is safe from either end.
        unsafe { sys::lmas_ring_count((self.0).0.as_ptr()) as usize }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// No slot is free: an enqueue would take nothing.
    pub fn is_full(&self) -> bool {
        // SAFETY: reading the free count is safe from either end.
        unsafe { sys::lmas_ring_free_count((self.0).0.as_ptr()) == 0 }
    }
}

impl RingConsumer {
    /// Appends up to the batch's free room from the ring; returns how many.
    pub fn dequeue(&mut self, batch: &mut MbufBatch) -> usize {
        let spare = batch.spare();
        if spare.is_empty() {
            return 0;
        }
        // SAFETY: SC end used by one thread; dequeued pointers are owned mbufs.
        let n = unsafe {
            sys::lmas_ring_dequeue_burst(
                (self.0).0.as_ptr(),
                spare.as_mut_ptr().cast(),
                spare.len() as u32,
            )
        } as usize;
        // SAFETY: n slots now hold owned mbufs.
        unsafe { batch.filled(n) };
        n
    }
}

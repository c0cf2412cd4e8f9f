//! A burst of mbufs in a fixed array: what rx/tx bursts and ring bursts
//! fill and drain, with no allocation per burst.

use std::ptr::NonNull;

use crate::sys;
use crate::Mbuf;

/// Packets per burst: DPDK's customary 32.
pub const BURST: usize = 32;

/// Up to [`BURST`] owned mbufs. Dropping the batch frees what is left in it.
pub struct MbufBatch {
    ptrs: [*mut sys::rte_mbuf; BURST],
    /// `ptrs[head..len]` are owned mbufs; `ptrs[..head]` were taken.
    head: usize,
    len: usize,
}

// SAFETY: the batch owns its mbufs exclusively (see Mbuf).
unsafe impl Send for MbufBatch {}

impl Default for MbufBatch {
    fn default() -> Self {
        MbufBatch {
            ptrs: [std::ptr::null_mut(); BURST],
            head: 0,
            len: 0,
        }
    }
}

impl MbufBatch {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn len(&self) -> usize {
        self.len - self.head
    }

    pub fn is_empty(&self) -> bool {
        self.len == self.head
    }

    pub fn is_full(&self) -> bool {
        self.len == BURST && self.head == 0
    }

    /// Adds a packet at the end; gives it back if the batch is full.
    pub fn push(&mut self, m: Mbuf) -> Result<(), Mbuf> {
        self.compact();
        if self.len == BURST {
            return Err(m);
        }
        self.ptrs[self.len] = m.into_raw();
        self.len += 1;
        Ok(())
    }

    /// Takes the first packet.
    pub fn pop(&mut self) -> Option<Mbuf> {
        if self.is_empty() {
            return None;
        }
        let p = self.ptrs[self.head];
        self.head += 1;
        if self.head == self.len {
            self.head = 0;
            self.len = 0;
        }
        // SAFETY: slots head..len hold owned, valid mbufs; this one leaves the batch.
        Some(unsafe { Mbuf::from_raw(NonNull::new_unchecked(p)) })
    }

    /// Moves the owned packets to the front so the free room is at the end.
    fn compact(&mut self) {
        if self.head > 0 {
            self.ptrs.copy_within(self.head..self.len, 0);
            self.len -= self.head;
            self.head = 0;
        }
    }

    /// The free slots at the end, for a burst call to fill; the caller then
    /// reports how many it filled with [`MbufBatch::filled`].
    pub(crate) fn spare(&mut self) -> &mut [*mut sys::rte_mbuf] {
        self.compact();
        &mut self.ptrs[self.len..]
    }

    /// `n` slots of [`MbufBatch::spare`] now hold owned mbufs.
    ///
    /// # Safety
    /// The first `n` spare slots must hold valid mbufs owned by nobody else.
    pub(crate) unsafe fn filled(&mut self, n: usize) {
        debug_assert!(self.len + n <= BURST);
        self.len += n;
    }

    /// The owned packets, for a burst call to consume; the caller then
    /// reports how many it took with [`MbufBatch::consumed`].
    pub(crate) fn owned(&self) -> &[*mut sys::rte_mbuf] {
        &self.ptrs[self.head..self.len]
    }

    /// The first `n` owned packets were handed to DPDK.
    pub(crate) fn consumed(&mut self, n: usize) {
        debug_assert!(n <= self.len());
        self.head += n;
        if self.head == self.len {
            self.head = 0;
            self.len = 0;
        }
    }
}

impl Drop for MbufBatch {
    fn drop(&mut self) {
        let owned = &mut self.ptrs[self.head..self.len];
        if !owned.is_empty() {
            // SAFETY: these mbufs are owned by the batch and freed once.
            unsafe { sys::lmas_pktmbuf_free_bulk(owned.as_mut_ptr(), owned.len() as u32) }
        }
    }
}

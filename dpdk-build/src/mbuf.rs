//! Packet buffers: a pool per port, and [`Mbuf`], one owned packet.

use std::ffi::CString;
use std::ptr::NonNull;

use crate::sys;
use crate::Error;

/// A pool of packet buffers (`rte_pktmbuf_pool_create`). Pools are never
/// freed before EAL cleanup, so a handle is `Copy` and mbufs never outlive
/// their pool.
#[derive(Clone, Copy)]
pub struct Mempool(NonNull<sys::rte_mempool>);

// SAFETY: rte_mempool get/put are multi-producer/multi-consumer safe.
unsafe impl Send for Mempool {}
unsafe impl Sync for Mempool {}

impl Mempool {
    /// `n` buffers of `data_room` bytes (plus headroom), with a per-lcore
    /// cache of `cache` buffers, on NUMA `socket` (-1: any).
    pub fn new(
        name: &str,
        n: u32,
        cache: u32,
        data_room: u16,
        socket: i32,
    ) -> Result<Mempool, Error> {
        let op = format!("rte_pktmbuf_pool_create({name}, {n} mbufs)");
        let cname = CString::new(name).map_err(|_| Error::invalid(&op, "name contains NUL"))?;
        let room = data_room as u32 + sys::RTE_PKTMBUF_HEADROOM;
        let room = u16::try_from(room).map_err(|_| Error::invalid(&op, "data room too large"))?;
        // SAFETY: the name is NUL-terminated; DPDK copies it.
        let p = unsafe { sys::rte_pktmbuf_pool_create(cname.as_ptr(), n, cache, 0, room, socket) };
        NonNull::new(p).map(Mempool).ok_or_else(|| Error::last(op))
    }

    pub(crate) fn as_ptr(&self) -> *mut sys::rte_mempool {
        self.0.as_ptr()
    }

    /// A fresh, empty packet buffer, or `None` if the pool is exhausted.
    pub fn alloc(&self) -> Option<Mbuf> {
        // SAFETY: the pool is valid for the life of the EAL.
        let p = unsafe { sys::lmas_pktmbuf_alloc(self.as_ptr()) };
        NonNull::new(p).map(Mbuf)
    }

    /// Buffers currently free in the pool (for status).
    pub fn available(&self) -> u32 {
        // SAFETY: the pool is valid.
        unsafe { sys::rte_mempool_avail_count(self.as_ptr()) }
    }
}

/// One packet buffer, owned: freed back to its pool on drop. Only
/// single-segment packets are produced by the ports this crate configures
/// (no scatter), and [`Mbuf::data`] covers the first segment.
pub struct Mbuf(NonNull<sys::rte_mbuf>);

// SAFETY: an mbuf is plain memory owned by whoever holds this value; DPDK
// allows freeing it from any thread.
unsafe impl Send for Mbuf {}

impl Mbuf {
    /// Takes ownership of a raw mbuf.
    ///
    /// # Safety
    /// `p` must be a valid mbuf that nothing else will use or free.
    pub(crate) unsafe fn from_raw(p: NonNull<sys::rte_mbuf>) -> Mbuf {
        Mbuf(p)
    }

    /// Gives up ownership (the caller frees or hands it to DPDK).
    pub(crate) fn into_raw(self) -> *mut sys::rte_mbuf {
        let p = self.0.as_ptr();
        std::mem::forget(self);
        p
    }

    /// The packet bytes (first segment).
    pub fn data(&self) -> &[u8] {
        // SAFETY: data points at data_len initialised bytes inside the buffer,
        // borrowed for as long as self.
        unsafe {
            let p = self.0.as_ptr();
            std::slice::from_raw_parts(
                sys::lmas_pktmbuf_data(p),
                sys::lmas_pktmbuf_data_len(p) as usize,
            )
        }
    }

    pub fn data_mut(&mut self) -> &mut [u8] {
        // SAFETY: as in `data`, and we own the mbuf exclusively.
        unsafe {
            let p = self.0.as_ptr();
            std::slice::from_raw_parts_mut(
                sys::lmas_pktmbuf_data(p),
                sys::lmas_pktmbuf_data_len(p) as usize,
            )
        }
    }

    /// Segments in the chain (1 for every packet this datapath accepts).
    pub fn segments(&self) -> u16 {
        // SAFETY: reads a field of a valid mbuf.
        unsafe { sys::lmas_pktmbuf_nb_segs(self.0.as_ptr()) }
    }

    /// Grows the packet by `len` bytes and returns them (uninitialised
    /// contents: the caller writes all of them), or `None` without room.
    pub fn append(&mut self, len: usize) -> Option<&mut [u8]> {
        let len16 = u16::try_from(len).ok()?;
        // SAFETY: rte_pktmbuf_append checks the tailroom and returns NULL if
        // short; on success the `len` bytes are inside our buffer.
        unsafe {
            let p = sys::lmas_pktmbuf_append(self.0.as_ptr(), len16);
            if p.is_null() {
                return None;
            }
            std::ptr::write_bytes(p, 0, len);
            Some(std::slice::from_raw_parts_mut(p, len))
        }
    }

    /// Room left for [`Mbuf::append`].
    pub fn tailroom(&self) -> usize {
        // SAFETY: reads fields of a valid mbuf.
        unsafe { sys::lmas_pktmbuf_tailroom(self.0.as_ptr()) as usize }
    }
}

impl Drop for Mbuf {
    fn drop(&mut self) {
        // SAFETY: we own the mbuf; it goes back to its pool exactly once.
        unsafe { sys::lmas_pktmbuf_free(self.0.as_ptr()) }
    }
}

impl AsRef<[u8]> for Mbuf {
    fn as_ref(&self) -> &[u8] {
        self.data()
    }
}

impl AsMut<[u8]> for Mbuf {
    fn as_mut(&mut self) -> &mut [u8] {
        self.data_mut()
    }
}

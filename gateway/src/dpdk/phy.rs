//! The physical layer under the userspace TCP/IP stack: one trait for "a
//! port that moves Ethernet frames", implemented by a DPDK port (mbufs via
//! rings to the I/O lcore) and by an in-memory wire for tests (`sim`), and the
//! smoltcp [`Device`] adapter over it. The stack never knows which it has.

use smoltcp::phy::{Checksum, ChecksumCapabilities, Device, DeviceCapabilities, Medium};
use smoltcp::time::Instant;

/// Ethernet header bytes on top of the IP MTU.
pub const ETHERNET_HEADER: usize = 14;

/// A port that receives and sends whole Ethernet frames.
pub trait FramePort {
    /// A received frame, owned until dropped (an mbuf goes back to its pool).
    type Rx: AsRef<[u8]>;
    /// A frame being built for sending.
    type Tx: AsMut<[u8]>;

    /// The next received frame, if any.
    fn recv(&mut self) -> Option<Self::Rx>;
    /// Whether a frame could be sent now (buffers and queue room).
    fn can_send(&self) -> bool;
    /// A buffer for a frame of exactly `len` bytes, or `None` if none is free.
    fn tx_buffer(&mut self, len: usize) -> Option<Self::Tx>;
    /// Queues a built frame for sending.
    fn send(&mut self, frame: Self::Tx);
    /// The IP MTU (1500 on a standard Ethernet port).
    fn mtu(&self) -> usize;
    /// Frames dropped because no buffer was free (counted for status).
    fn note_tx_drop(&mut self);
    /// Hands frames queued by `send` on (called after each stack poll).
    fn flush(&mut self) {}
}

/// smoltcp's view of a [`FramePort`].
pub struct PortDevice<'a, P: FramePort>(pub &'a mut P);

pub struct RxTok<F>(F);

pub struct TxTok<'a, P: FramePort>(&'a mut P);

impl<F: AsRef<[u8]>> smoltcp::phy::RxToken for RxTok<F> {
    fn consume<R, G>(self, f: G) -> R
    where
        G: FnOnce(&[u8]) -> R,
    {
        f(self.0.as_ref())
    }
}

impl<P: FramePort> smoltcp::phy::TxToken for TxTok<'_, P> {
    fn consume<R, G>(self, len: usize, f: G) -> R
    where
        G: FnOnce(&mut [u8]) -> R,
    {
        match self.0.tx_buffer(len) {
            Some(mut frame) => {
                let r = f(frame.as_mut());
                self.0.send(frame);
                r
            }
            // `transmit` checked for room, but a reply to a received packet
            // may still find none: build it and drop it; TCP recovers.
            None => {
                self.0.note_tx_drop();
                f(&mut vec![0; len])
            }
        }
    }
}

impl<P: FramePort> Device for PortDevice<'_, P> {
    type RxToken<'b>
        = RxTok<P::Rx>
    where
        Self: 'b;
    type TxToken<'b>
        = TxTok<'b, P>
    where
        Self: 'b;

    fn receive(&mut self, _: Instant) -> Option<(Self::RxToken<'_>, Self::TxToken<'_>)> {
        let frame = self.0.recv()?;
        Some((RxTok(frame), TxTok(self.0)))
    }

    fn transmit(&mut self, _: Instant) -> Option<Self::TxToken<'_>> {
        self.0.can_send().then_some(TxTok(&mut *self.0))
    }

    fn capabilities(&self) -> DeviceCapabilities {
        let mut caps = DeviceCapabilities::default();
        caps.medium = Medium::Ethernet;
        caps.max_transmission_unit = self.0.mtu() + ETHERNET_HEADER;
        // Software checksums both ways: the af_packet PMD offloads nothing,
        // and a NIC's offloads need per-mbuf flags (see docs/BENCHMARKS.md).
        let mut sums = ChecksumCapabilities::default();
        sums.ipv4 = Checksum::Both;
        sums.tcp = Checksum::Both;
        caps.checksum = sums;
        caps
    }
}

//! The DPDK side of the ports: the I/O lcore's loop (rx/tx bursts between
//! a NIC queue and two rings) and [`RingPort`], the TCP lcore's
//! [`FramePort`] over those rings, or over the NIC queues themselves when no
//! I/O lcore is configured (run to completion: one busy thread fewer, which
//! pays where lcores share few CPUs).
//!
//! With several TCP lcores (shards) the I/O lcore steers each received frame
//! to its shard's ring (`frames::steer`), and sends what every shard's ring holds.
//!
//! ```text
//!  NIC rx queue ─rx_burst─► [io lcore] ─ring─► RingPort::recv ─► smoltcp
//!  NIC tx queue ◄tx_burst── [io lcore] ◄ring── RingPort::send ◄── smoltcp
//!  NIC rx queue ──────────rx_burst──────────► RingPort::recv ─► smoltcp   (no io lcore)
//! ```
//!
//! Nothing is dropped silently between them: when the ring to the TCP lcore
//! is full the I/O lcore stops taking bursts, so the NIC's own counter
//! (`rx_missed`) shows the overload; when the ring to the I/O lcore is full
//! the TCP lcore's sockets see no room (`can_send` is false) and TCP paces.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

use lmas_dpdk::{
    mbuf_ring, Mbuf, MbufBatch, Mempool, Port, PortConfig, RingConsumer, RingProducer, RxQueue,
    TxQueue,
};
use log::{info, warn};

use super::phy::FramePort;
use super::Idle;
use crate::admin::appliance::{PortCounters, RoleCounters};
use crate::admin::dpdk::PortSpec;
use crate::frames::steer::{steer, Steer};

/// Slots of each ring between the I/O and TCP lcores.
const RING_SLOTS: u32 = 4096;

/// One port as the I/O lcore sees it: its NIC queues, and a ring each way
/// per TCP lcore (shard).
pub struct IoPort {
    rxq: RxQueue,
    txq: TxQueue,
    to_tcp: Vec<RingProducer>,
    from_tcp: Vec<RingConsumer>,
    /// A burst being steered (several shards only).
    rx_burst: MbufBatch,
    /// Per shard, frames waiting for room in its ring.
    rx_pending: Vec<MbufBatch>,
    tx_pending: Vec<MbufBatch>,
    /// Where copies of ARP frames for the other shards come from.
    pool: Mempool,
    counters: Arc<PortCounters>,
}

impl IoPort {
    /// One rx burst (once every shard took the last one) and a tx burst per
    /// shard; returns the packets moved.
    fn turn(&mut self) -> usize {
        let mut moved = 0;
        if self.rx_pending.iter().all(MbufBatch::is_empty) {
            if let [only] = &mut self.rx_pending[..] {
                self.rxq.rx_burst(only);
            } else {
                self.rxq.rx_burst(&mut self.rx_burst);
                self.steer_burst();
            }
        }
        for (ring, pending) in self.to_tcp.iter_mut().zip(&mut self.rx_pending) {
            moved += ring.enqueue(pending);
        }
        for (ring, pending) in self.from_tcp.iter_mut().zip(&mut self.tx_pending) {
            if pending.is_empty() {
                ring.dequeue(pending);
            }
            moved += self.txq.tx_burst(pending);
        }
        moved
    }

    /// Hands each frame of the burst to its shard, in arrival order. No
    /// shard's batch can overflow: each gets at most one frame (or copy) per
    /// frame of the burst, and all were empty.
    fn steer_burst(&mut self) {
        let shards = self.rx_pending.len() as u8;
        while let Some(m) = self.rx_burst.pop() {
            match steer(m.data(), shards) {
                Steer::To(k) => {
                    let _ = self.rx_pending[k as usize].push(m);
                }
                Steer::All => {
                    for k in 1..shards as usize {
                        match copy_of(&self.pool, &m) {
                            Some(copy) => {
                                let _ = self.rx_pending[k].push(copy);
                            }
                            None => {
                                self.counters.rx_copy_failed.fetch_add(1, Ordering::Relaxed);
                            }
                        }
                    }
                    let _ = self.rx_pending[0].push(m);
                }
            }
        }
    }
}

/// A copy of `m` in a new mbuf from `pool` (none when the pool is empty).
fn copy_of(pool: &Mempool, m: &Mbuf) -> Option<Mbuf> {
    let mut copy = pool.alloc()?;
    copy.append(m.data().len())?.copy_from_slice(m.data());
    Some(copy)
}

/// The I/O lcore: polls its ports until `stop`.
pub fn run_io(mut ports: Vec<IoPort>, stop: &AtomicBool, idle: &Idle, counters: &RoleCounters) {
    let mut idle_polls = 0;
    while !stop.load(Ordering::Relaxed) {
        let started = Instant::now();
        let moved: usize = ports.iter_mut().map(IoPort::turn).sum();
        if moved == 0 {
            idle.wait(&mut idle_polls);
        } else {
            idle_polls = 0;
            counters.add(started, moved as u64);
        }
    }
}

/// Where the TCP lcore's end of a port takes received frames from.
enum RxSource {
    Ring(RingConsumer),
    Queue(RxQueue),
}

impl RxSource {
    fn fill(&mut self, batch: &mut MbufBatch) -> usize {
        match self {
            RxSource::Ring(r) => r.dequeue(batch),
            RxSource::Queue(q) => q.rx_burst(batch),
        }
    }
}

/// Where the TCP lcore's end of a port hands frames to send.
enum TxSink {
    Ring(RingProducer),
    Queue(TxQueue),
}

impl TxSink {
    /// Takes what it can from the front of `batch`; the rest waits there.
    fn drain(&mut self, batch: &mut MbufBatch) -> usize {
        match self {
            TxSink::Ring(r) => r.enqueue(batch),
            TxSink::Queue(q) => q.tx_burst(batch),
        }
    }

    /// Whether the sink has no room at all (a NIC queue does not say: its
    /// burst takes fewer, and the batch stays full).
    fn is_full(&self) -> bool {
        match self {
            TxSink::Ring(r) => r.is_full(),
            TxSink::Queue(_) => true,
        }
    }
}

/// The TCP lcore's end of a port: rings to an I/O lcore, or the NIC queues.
pub struct RingPort {
    rx: RxSource,
    rx_batch: MbufBatch,
    tx: TxSink,
    tx_batch: MbufBatch,
    pool: Mempool,
    mtu: usize,
    pub counters: Arc<PortCounters>,
}

impl RingPort {
    fn new(rx: RxSource, tx: TxSink, pool: Mempool, mtu: usize) -> Self {
        RingPort {
            rx,
            rx_batch: MbufBatch::new(),
            tx,
            tx_batch: MbufBatch::new(),
            pool,
            mtu,
            counters: Arc::new(PortCounters::default()),
        }
    }
}

impl FramePort for RingPort {
    type Rx = Mbuf;
    type Tx = Mbuf;

    fn recv(&mut self) -> Option<Mbuf> {
        loop {
            if self.rx_batch.is_empty() {
                self.rx.fill(&mut self.rx_batch);
            }
            let m = self.rx_batch.pop()?;
            if m.segments() == 1 {
                self.counters.rx_frames.fetch_add(1, Ordering::Relaxed);
                return Some(m);
            }
            self.counters
                .rx_multi_segment
                .fetch_add(1, Ordering::Relaxed);
        }
    }

    fn can_send(&self) -> bool {
        !self.tx_batch.is_full() || !self.tx.is_full()
    }

    fn tx_buffer(&mut self, len: usize) -> Option<Mbuf> {
        if self.tx_batch.is_full() {
            self.flush();
            if self.tx_batch.is_full() {
                return None;
            }
        }
        let mut m = self.pool.alloc()?;
        m.append(len)?;
        Some(m)
    }

    fn send(&mut self, frame: Mbuf) {
        // tx_buffer made room in the batch for this frame.
        if let Err(frame) = self.tx_batch.push(frame) {
            drop(frame);
            self.note_tx_drop();
            return;
        }
        self.counters.tx_frames.fetch_add(1, Ordering::Relaxed);
    }

    fn mtu(&self) -> usize {
        self.mtu
    }

    fn note_tx_drop(&mut self) {
        self.counters.tx_dropped.fetch_add(1, Ordering::Relaxed);
    }

    fn flush(&mut self) {
        self.tx.drain(&mut self.tx_batch);
    }
}

/// A started port: its I/O-side end (none when the TCP lcore polls the
/// queues itself), one TCP-side end per TCP lcore, and what status reads.
pub struct OpenPort {
    pub io: Option<IoPort>,
    pub rings: Vec<RingPort>,
    pub port: Port,
    pub pool: Mempool,
    pub mac: [u8; 6],
}

/// Finds, configures and starts one port; `via_io_lcore`: an I/O lcore
/// polls it and passes frames through rings to `shards` TCP lcores, else the
/// (one) TCP lcore polls it. An error names the config field to change, and why.
pub fn open_port(
    role: &'static str,
    spec: &PortSpec,
    mbufs: u32,
    via_io_lcore: bool,
    shards: usize,
) -> Result<OpenPort, (String, String)> {
    let port = Port::by_name(&spec.device).map_err(|e| {
        let why = format!(
            "no DPDK port named {:?} ({e}; {} port(s) probed: for a virtual device add --vdev={},... to dpdk.eal_args, for a NIC bind it with scripts/dpdk-bind.sh and give its PCI address)",
            spec.device,
            Port::count(),
            spec.device
        );
        (format!("dpdk.{role}.device"), why)
    })?;
    let data_room = (spec.mtu as u32 + 64).max(2048).min(u16::MAX as u32) as u16;
    let pool = Mempool::new(&format!("lmas_{role}"), mbufs, 256, data_room, port.socket())
        .map_err(|e| {
            let why = format!("cannot allocate {mbufs} packet buffers for the {role} port (raise -m or hugepages): {e}");
            ("dpdk.mbufs".to_string(), why)
        })?;
    let mtu = match port.mtu() {
        Ok(m) if m == spec.mtu => None,
        _ => Some(spec.mtu),
    };
    let port_error = |what: &str, e: lmas_dpdk::Error| {
        let why = format!("{what} port {}: {e}", spec.device);
        (format!("dpdk.{role}"), why)
    };
    let (rxq, txq) = port
        .start(
            &PortConfig {
                mtu,
                ..PortConfig::default()
            },
            pool,
        )
        .map_err(|e| port_error("starting", e))?;
    let mac = port
        .mac()
        .map_err(|e| port_error("reading the MAC address of", e))?;
    let link = port.link();
    if !link.up {
        warn!("{role} port {} reports link down", spec.device);
    }
    info!(
        "{role} port {} up: {:02x?}, {} Mbit/s, address {}/{}",
        spec.device, mac, link.speed_mbps, spec.address, spec.prefix_len
    );
    let mtu = spec.mtu as usize;
    let (io, rings) = if via_io_lcore {
        let socket = port.socket();
        let mut io = IoPort {
            rxq,
            txq,
            to_tcp: Vec::new(),
            from_tcp: Vec::new(),
            rx_burst: MbufBatch::new(),
            rx_pending: (0..shards).map(|_| MbufBatch::new()).collect(),
            tx_pending: (0..shards).map(|_| MbufBatch::new()).collect(),
            pool,
            counters: Arc::default(),
        };
        let mut rings = Vec::new();
        for k in 0..shards {
            let ring = |dir: &str| {
                mbuf_ring(&format!("lmas_{role}_{dir}{k}"), RING_SLOTS, socket)
                    .map_err(|e| port_error("creating the rings of", e))
            };
            let (to_tcp, from_io) = ring("rx")?;
            let (to_io, from_tcp) = ring("tx")?;
            io.to_tcp.push(to_tcp);
            io.from_tcp.push(from_tcp);
            rings.push(RingPort::new(
                RxSource::Ring(from_io),
                TxSink::Ring(to_io),
                pool,
                mtu,
            ));
        }
        // The I/O lcore's own counter (ARP copies) sits with shard 0's.
        io.counters = rings[0].counters.clone();
        (Some(io), rings)
    } else {
        let ring = RingPort::new(RxSource::Queue(rxq), TxSink::Queue(txq), pool, mtu);
        (None, vec![ring])
    };
    Ok(OpenPort {
        io,
        rings,
        port,
        pool,
        mac,
    })
}

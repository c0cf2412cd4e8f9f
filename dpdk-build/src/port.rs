//! Ethernet ports: configure one rx and one tx queue, start, and hand out
//! single-owner queue handles for the lcore that polls them.

use std::ffi::CString;

use crate::sys;
use crate::{Error, MbufBatch, Mempool};

/// How to set a port up.
#[derive(Debug, Clone)]
pub struct PortConfig {
    pub rx_descriptors: u16,
    pub tx_descriptors: u16,
    /// Set the MTU if given (the PMD must support it).
    pub mtu: Option<u16>,
    pub promiscuous: bool,
}

impl Default for PortConfig {
    fn default() -> Self {
        PortConfig {
            rx_descriptors: 1024,
            tx_descriptors: 1024,
            mtu: None,
            promiscuous: false,
        }
    }
}

/// A started port. The handle itself only reads state (MAC, link, stats);
/// packets move through its [`RxQueue`] and [`TxQueue`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Port {
    id: u16,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LinkStatus {
    pub up: bool,
    pub speed_mbps: u32,
    pub full_duplex: bool,
}

/// The port's own counters (`rte_eth_stats_get`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PortStats {
    pub rx_packets: u64,
    pub tx_packets: u64,
    pub rx_bytes: u64,
    pub tx_bytes: u64,
    /// Dropped by the NIC because the rx ring was full (we polled too slowly).
    pub rx_missed: u64,
    pub rx_errors: u64,
    pub tx_errors: u64,
    pub rx_no_mbuf: u64,
}

impl PortStats {
    /// Each counter with its name (`rx_packets`, ...), for status and metrics.
    pub fn named(&self) -> Vec<(&'static str, u64)> {
        vec![
            ("rx_packets", self.rx_packets),
            ("tx_packets", self.tx_packets),
            ("rx_bytes", self.rx_bytes),
            ("tx_bytes", self.tx_bytes),
            ("rx_missed", self.rx_missed),
            ("rx_errors", self.rx_errors),
            ("tx_errors", self.tx_errors),
            ("rx_no_mbuf", self.rx_no_mbuf),
        ]
    }
}

impl Port {
    /// The port DPDK probed under `name`: a PCI address (`0000:03:00.0`) or
    /// a vdev name (`net_af_packet0`).
    pub fn by_name(name: &str) -> Result<Port, Error> {
        let op = format!("rte_eth_dev_get_port_by_name({name})");
        let cname = CString::new(name).map_err(|_| Error::invalid(&op, "name contains NUL"))?;
        let mut id = 0u16;
        // SAFETY: valid NUL-terminated name and out pointer.
        let ret = unsafe { sys::rte_eth_dev_get_port_by_name(cname.as_ptr(), &mut id) };
        if ret != 0 {
            return Err(Error::from_ret(op, ret));
        }
        Ok(Port { id })
    }

    pub fn id(&self) -> u16 {
        self.id
    }

    /// Ports DPDK probed.
    pub fn count() -> u16 {
        // SAFETY: no preconditions after init.
        unsafe { sys::rte_eth_dev_count_avail() }
    }

    /// The NUMA socket the port is attached to (-1 if unknown).
    pub fn socket(&self) -> i32 {
        // SAFETY: any port id is accepted.
        unsafe { sys::rte_eth_dev_socket_id(self.id) }
    }

    /// Configures one rx and one tx queue (rx buffers from `pool`), starts
    /// the port and returns its queue handles. Call once per port.
    pub fn start(&self, config: &PortConfig, pool: Mempool) -> Result<(RxQueue, TxQueue), Error> {
        let id = self.id;
        let conf = sys::rte_eth_conf::default();
        // SAFETY: conf is a valid, zeroed (= defaults) configuration.
        let ret = unsafe { sys::rte_eth_dev_configure(id, 1, 1, &conf) };
        if ret != 0 {
            return Err(Error::from_ret(
                format!("rte_eth_dev_configure(port {id})"),
                ret,
            ));
        }
        if let Some(mtu) = config.mtu {
            // SAFETY: plain call on a configured port.
            let ret = unsafe { sys::rte_eth_dev_set_mtu(id, mtu) };
            if ret != 0 {
                return Err(Error::from_ret(
                    format!("rte_eth_dev_set_mtu(port {id}, {mtu})"),
                    ret,
                ));
            }
        }
        let (mut rxd, mut txd) = (config.rx_descriptors, config.tx_descriptors);
        // SAFETY: pointers to our locals; the PMD rounds to what it supports.
        let ret = unsafe { sys::rte_eth_dev_adjust_nb_rx_tx_desc(id, &mut rxd, &mut txd) };
        if ret != 0 {
            return Err(Error::from_ret(
                format!("rte_eth_dev_adjust_nb_rx_tx_desc(port {id})"),
                ret,
            ));
        }
        let socket = self.socket().max(0) as u32;
        // SAFETY: NULL rx/tx conf selects the PMD defaults; pool outlives the port.
        let ret = unsafe {
            sys::rte_eth_rx_queue_setup(id, 0, rxd, socket, std::ptr::null(), pool.as_ptr())
        };
        if ret != 0 {
            return Err(Error::from_ret(
                format!("rte_eth_rx_queue_setup(port {id})"),
                ret,
            ));
        }
        // SAFETY: as above.
        let ret = unsafe { sys::rte_eth_tx_queue_setup(id, 0, txd, socket, std::ptr::null()) };
        if ret != 0 {
            return Err(Error::from_ret(
                format!("rte_eth_tx_queue_setup(port {id})"),
                ret,
            ));
        }
        // SAFETY: configured port.
        let ret = unsafe { sys::rte_eth_dev_start(id) };
        if ret != 0 {
            return Err(Error::from_ret(
                format!("rte_eth_dev_start(port {id})"),
                ret,
            ));
        }
        if config.promiscuous {
            // SAFETY: started port.
            let ret = unsafe { sys::rte_eth_promiscuous_enable(id) };
            if ret != 0 {
                return Err(Error::from_ret(
                    format!("rte_eth_promiscuous_enable(port {id})"),
                    ret,
                ));
            }
        }
        Ok((RxQueue { port: id }, TxQueue { port: id }))
    }

    /// Stops the port (queues must no longer be polled).
    pub fn stop(&self) {
        // SAFETY: stopping a started or stopped port is allowed.
        unsafe {
            sys::rte_eth_dev_stop(self.id);
        }
    }

    pub fn mac(&self) -> Result<[u8; 6], Error> {
        let mut mac = sys::rte_ether_addr::default();
        // SAFETY: out pointer to a local.
        let ret = unsafe { sys::rte_eth_macaddr_get(self.id, &mut mac) };
        if ret != 0 {
            return Err(Error::from_ret(
                format!("rte_eth_macaddr_get(port {})", self.id),
                ret,
            ));
        }
        Ok(mac.addr_bytes)
    }

    pub fn mtu(&self) -> Result<u16, Error> {
        let mut mtu = 0u16;
        // SAFETY: out pointer to a local.
        let ret = unsafe { sys::rte_eth_dev_get_mtu(self.id, &mut mtu) };
        if ret != 0 {
            return Err(Error::from_ret(
                format!("rte_eth_dev_get_mtu(port {})", self.id),
                ret,
            ));
        }
        Ok(mtu)
    }

    pub fn link(&self) -> LinkStatus {
        let mut link = sys::rte_eth_link::default();
        // SAFETY: out pointer to a local; nowait never blocks.
        unsafe { sys::rte_eth_link_get_nowait(self.id, &mut link) };
        LinkStatus {
            up: link.link_status() != 0,
            speed_mbps: link.link_speed,
            full_duplex: link.link_duplex() != 0,
        }
    }

    pub fn stats(&self) -> PortStats {
        let mut s = sys::rte_eth_stats::default();
        // SAFETY: out pointer to a local.
        unsafe { sys::rte_eth_stats_get(self.id, &mut s) };
        PortStats {
            rx_packets: s.ipackets,
            tx_packets: s.opackets,
            rx_bytes: s.ibytes,
            tx_bytes: s.obytes,
            rx_missed: s.imissed,
            rx_errors: s.ierrors,
            tx_errors: s.oerrors,
            rx_no_mbuf: s.rx_nombuf,
        }
    }
}

/// Receive queue 0 of a port: poll it from one lcore only.
pub struct RxQueue {
    port: u16,
}

/// Transmit queue 0 of a port: use it from one lcore only.
pub struct TxQueue {
    port: u16,
}

impl RxQueue {
    /// Receives up to the batch's free room; returns how many arrived.
    pub fn rx_burst(&mut self, batch: &mut MbufBatch) -> usize {
        let spare = batch.spare();
        if spare.is_empty() {
            return 0;
        }
        // SAFETY: this handle is the queue's only poller; the PMD writes at
        // most `spare.len()` owned mbuf pointers.
        let n = unsafe { sys::lmas_rx_burst(self.port, 0, spare.as_mut_ptr(), spare.len() as u16) }
            as usize;
        // SAFETY: n slots now hold owned mbufs.
        unsafe { batch.filled(n) };
        n
    }
}

impl TxQueue {
    /// Hands packets from the front of the batch to the NIC; the ones it
    /// could not take (ring full) stay in the batch for the next call.
    pub fn tx_burst(&mut self, batch: &mut MbufBatch) -> usize {
        let owned = batch.owned();
        if owned.is_empty() {
            return 0;
        }
        // SAFETY: this handle is the queue's only user; ownership of the
        // first `n` mbufs passes to the PMD, which frees them after sending.
        let n = unsafe {
            sys::lmas_tx_burst(self.port, 0, owned.as_ptr() as *mut _, owned.len() as u16)
        } as usize;
        batch.consumed(n);
        n
    }
}

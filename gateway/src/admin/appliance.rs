//! The DPDK appliance's own counters (each lcore role's work, each port's frames) and how
//! `lmas status` and metrics name them. The lcores count; the main lcore reads the counts,
//! with the NICs' own, into a [`Status`] with [`ApplianceCounters::add_to`].

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use super::Status;

/// Work counters of one lcore (an I/O, TCP or crypto lcore), for cycles-per-packet figures.
#[derive(Debug, Default)]
pub struct RoleCounters {
    /// Time spent in turns that did work.
    pub busy_ns: AtomicU64,
    /// Packets moved (crypto lcores: jobs done).
    pub packets: AtomicU64,
    pub turns: AtomicU64,
}

impl RoleCounters {
    /// A turn that began at `started` moved `packets`.
    pub fn add(&self, started: Instant, packets: u64) {
        self.busy_ns
            .fetch_add(started.elapsed().as_nanos() as u64, Ordering::Relaxed);
        self.packets.fetch_add(packets, Ordering::Relaxed);
        self.turns.fetch_add(1, Ordering::Relaxed);
    }
}

/// Frame counters of one port's end on a TCP lcore.
#[derive(Debug, Default)]
pub struct PortCounters {
    pub rx_frames: AtomicU64,
    pub tx_frames: AtomicU64,
    /// Frames the stack built but had no mbuf or ring room for.
    pub tx_dropped: AtomicU64,
    /// Received frames longer than one mbuf segment (not expected with the configured MTU;
    /// dropped).
    pub rx_multi_segment: AtomicU64,
    /// ARP frames not copied to every TCP lcore for want of an mbuf.
    pub rx_copy_failed: AtomicU64,
}

/// One port as status shows it: its NIC's counters by name, its ends' counters, its free
/// packet buffers.
pub struct PortFigures<'a> {
    pub name: &'static str,
    pub nic: Vec<(&'static str, u64)>,
    pub ends: &'a [Arc<PortCounters>],
    pub mbufs_free: u64,
}

/// Everything the appliance counts beside the engines.
pub struct ApplianceCounters<'a> {
    pub io: &'a [Arc<RoleCounters>],
    /// One per TCP lcore (shard).
    pub tcp: &'a [RoleCounters],
    pub crypto: &'a [Arc<RoleCounters>],
    pub ports: Vec<PortFigures<'a>>,
    /// The TSC's rate, to turn busy time into cycles.
    pub tsc_hz: u64,
}

impl ApplianceCounters<'_> {
    /// Adds them to `status`: `dpdk_io0_busy_ns`, `dpdk_tcp_packets` (all TCP lcores) and
    /// `dpdk_tcp1_packets`, `dpdk_crypto0_jobs`, `dpdk_wan_rx_missed`, `dpdk_lan_mbufs_free`...
    pub fn add_to(&self, status: &mut Status) {
        let load = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let c = &mut status.counters;
        let mut role = |name: String, busy_ns: u64, (what, n): (&str, u64)| {
            c.insert(format!("{name}_busy_ns"), busy_ns);
            c.insert(format!("{name}_{what}"), n);
        };
        let lcores = [("io", self.io, "packets"), ("crypto", self.crypto, "jobs")];
        for (kind, lcores, what) in lcores {
            for (i, r) in lcores.iter().enumerate() {
                role(
                    format!("dpdk_{kind}{i}"),
                    load(&r.busy_ns),
                    (what, load(&r.packets)),
                );
            }
        }
        for (i, t) in self.tcp.iter().enumerate() {
            role(
                format!("dpdk_tcp{i}"),
                load(&t.busy_ns),
                ("packets", load(&t.packets)),
            );
        }
        // All TCP lcores together.
        let sum = |f: fn(&RoleCounters) -> &AtomicU64| self.tcp.iter().map(|t| load(f(t))).sum();
        role(
            "dpdk_tcp".into(),
            sum(|t| &t.busy_ns),
            ("packets", sum(|t| &t.packets)),
        );
        for p in &self.ports {
            let ends = |f: fn(&PortCounters) -> &AtomicU64| p.ends.iter().map(|e| load(f(e))).sum();
            let dropped = ("tx_dropped", ends(|e| &e.tx_dropped));
            let copy_failed = ("rx_copy_failed", ends(|e| &e.rx_copy_failed));
            for (k, v) in p.nic.iter().copied().chain([dropped, copy_failed]) {
                c.insert(format!("dpdk_{}_{k}", p.name), v);
            }
            let free = format!("dpdk_{}_mbufs_free", p.name);
            status.gauges.insert(free, p.mbufs_free);
        }
        status.gauges.insert("dpdk_tsc_hz".into(), self.tsc_hz);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_lcore_and_port_gets_its_names_and_the_tcp_lcores_a_sum() {
        let role = |busy, packets| {
            let r = RoleCounters::default();
            r.busy_ns.store(busy, Ordering::Relaxed);
            r.packets.store(packets, Ordering::Relaxed);
            r
        };
        let io = [Arc::new(role(5, 50))];
        let tcp = [role(10, 100), role(20, 200)];
        let crypto = [Arc::new(role(7, 3))];
        let end = Arc::new(PortCounters::default());
        end.tx_dropped.store(4, Ordering::Relaxed);
        let ends = [end.clone(), end];
        let ports = vec![PortFigures {
            name: "wan",
            nic: vec![("rx_missed", 9)],
            ends: &ends,
            mbufs_free: 77,
        }];
        let counters = ApplianceCounters {
            io: &io,
            tcp: &tcp,
            crypto: &crypto,
            ports,
            tsc_hz: 1000,
        };
        let mut s = Status::default();
        counters.add_to(&mut s);
        let c = &s.counters;
        assert_eq!((c["dpdk_io0_busy_ns"], c["dpdk_io0_packets"]), (5, 50));
        assert_eq!((c["dpdk_tcp1_busy_ns"], c["dpdk_tcp1_packets"]), (20, 200));
        assert_eq!((c["dpdk_tcp_busy_ns"], c["dpdk_tcp_packets"]), (30, 300));
        assert_eq!((c["dpdk_crypto0_busy_ns"], c["dpdk_crypto0_jobs"]), (7, 3));
        assert_eq!(c["dpdk_wan_rx_missed"], 9);
        assert_eq!(
            (c["dpdk_wan_tx_dropped"], c["dpdk_wan_rx_copy_failed"]),
            (8, 0)
        );
        assert_eq!(s.gauges["dpdk_wan_mbufs_free"], 77);
        assert_eq!(s.gauges["dpdk_tsc_hz"], 1000);
    }
}

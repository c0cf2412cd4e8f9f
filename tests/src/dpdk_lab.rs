//! A topology for the DPDK datapath's interop tests: four namespaces in a line,
//!
//! ```text
//!  src (10.77.1.2) ── gateway A ── (10.77.2.1 | 10.77.2.2) ── gateway B ── dst (10.77.3.2)
//!                     LAN 10.77.1.1                            LAN 10.77.3.1
//! ```
//!
//! each gateway either `lmas` on kernel sockets (its veths carry the addresses) or `lmas` on
//! DPDK (its veths are af_packet PMD ports with no kernel address: the gateway's userspace stack
//! owns the addresses). A dials B; A's ingress maps 10.77.1.1:6000 → dst:5000 and :6001 →
//! dst:5001. Kernel-side veth ends have tx checksum offload, TSO and GSO off: the af_packet PMD
//! would otherwise see unfinished checksums and 64 KiB frames (docs/FACTS in the design notes).

use std::net::{Ipv4Addr, SocketAddrV4};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use crate::netns::NetNs;
use crate::{keygen, run_with_timeout, Gateway, KeyPair};

pub const SRC: Ipv4Addr = Ipv4Addr::new(10, 77, 1, 2);
pub const A_LAN: Ipv4Addr = Ipv4Addr::new(10, 77, 1, 1);
pub const A_WAN: Ipv4Addr = Ipv4Addr::new(10, 77, 2, 1);
pub const B_WAN: Ipv4Addr = Ipv4Addr::new(10, 77, 2, 2);
pub const B_LAN: Ipv4Addr = Ipv4Addr::new(10, 77, 3, 1);
pub const DST: Ipv4Addr = Ipv4Addr::new(10, 77, 3, 2);
/// A's ingress ports and the destination ports they map to.
pub const ROUTES: [(u16, u16); 2] = [(6000, 5000), (6001, 5001)];
const TUNNEL_PORT: u16 = 7700;

/// Which datapath a gateway runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Kernel,
    Dpdk,
}

/// Whether DPDK gateways can run here (the system libdpdk with its af_packet PMD).
pub fn dpdk_available() -> Result<(), String> {
    let out = run_with_timeout(
        Command::new("pkg-config").args(["--modversion", "libdpdk"]),
        Duration::from_secs(10),
    )
    .map_err(|e| format!("pkg-config: {e}"))?;
    if !out.status.success() {
        return Err("no system DPDK (pkg-config libdpdk): apt-get install dpdk libdpdk-dev".into());
    }
    let pmd = std::fs::read_dir("/usr/lib/x86_64-linux-gnu")
        .map(|d| {
            d.flatten().any(|e| {
                e.file_name()
                    .to_string_lossy()
                    .starts_with("librte_net_af_packet")
            })
        })
        .unwrap_or(false);
    if !pmd {
        return Err("DPDK's af_packet PMD (librte_net_af_packet) is not installed".into());
    }
    Ok(())
}

/// Runs a command; an error with its stderr if it fails.
fn run(cmd: &mut Command) -> Result<(), String> {
    let out =
        run_with_timeout(cmd, Duration::from_secs(20)).map_err(|e| format!("{cmd:?}: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "{cmd:?}: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    Ok(())
}

/// The four namespaces, their veths and the gateways' key files.
pub struct Topology {
    pub src: Arc<NetNs>,
    pub a: Arc<NetNs>,
    pub b: Arc<NetNs>,
    pub dst: Arc<NetNs>,
    pub kinds: (Kind, Kind),
    pub dir: PathBuf,
    pub key_a: KeyPair,
    pub key_b: KeyPair,
    /// Whether both gateways dedup (`dedup = "auto"`, tunnel scope), B keeping its store on
    /// disk ([`Topology::b_store`]); off by default, as in the product.
    pub dedup: bool,
}

impl Topology {
    pub fn new(tag: &str, a_kind: Kind, b_kind: Kind) -> Result<Topology, String> {
        let ns = |t: &str| {
            NetNs::new(&format!("{tag}-{t}"))
                .map(Arc::new)
                .map_err(|e| e.to_string())
        };
        let (src, a, b, dst) = (ns("src")?, ns("a")?, ns("b")?, ns("dst")?);
        let veth = |x: &NetNs, xi: &str, y: &NetNs, yi: &str| {
            run(Command::new("ip").args([
                "link",
                "add",
                xi,
                "netns",
                x.name(),
                "type",
                "veth",
                "peer",
                "name",
                yi,
                "netns",
                y.name(),
            ]))
        };
        veth(&src, "s0", &a, "alan")?;
        veth(&a, "awan", &b, "bwan")?;
        veth(&b, "blan", &dst, "d0")?;
        // (namespace, interface, address when the kernel owns it)
        let ifs: [(&NetNs, &str, Option<Ipv4Addr>); 6] = [
            (&src, "s0", Some(SRC)),
            (&a, "alan", (a_kind == Kind::Kernel).then_some(A_LAN)),
            (&a, "awan", (a_kind == Kind::Kernel).then_some(A_WAN)),
            (&b, "bwan", (b_kind == Kind::Kernel).then_some(B_WAN)),
            (&b, "blan", (b_kind == Kind::Kernel).then_some(B_LAN)),
            (&dst, "d0", Some(DST)),
        ];
        for (n, ifname, addr) in ifs {
            n.ip(&["link", "set", ifname, "up"])?;
            match addr {
                Some(addr) => {
                    n.ip(&["addr", "add", &format!("{addr}/24"), "dev", ifname])?;
                    run(n
                        .command("ethtool")
                        .args(["-K", ifname, "tx", "off", "tso", "off", "gso", "off"]))?;
                }
                // A DPDK port: no kernel address, no IPv6 chatter into the PMD.
                None => run(n
                    .command("sysctl")
                    .args(["-qw", &format!("net.ipv6.conf.{ifname}.disable_ipv6=1")]))?,
            }
        }
        src.ip(&["route", "add", "default", "via", &A_LAN.to_string()])?;
        dst.ip(&["route", "add", "default", "via", &B_LAN.to_string()])?;
        let dir = std::env::temp_dir().join(format!("lmas-dpdk-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
        let key_a = keygen(&dir.join("a.key"));
        let key_b = keygen(&dir.join("b.key"));
        Ok(Topology {
            src,
            a,
            b,
            dst,
            kinds: (a_kind, b_kind),
            dir,
            key_a,
            key_b,
            dedup: false,
        })
    }

    /// Where B keeps its dedup store when [`Topology::dedup`] (`wan.dedup_dir`).
    pub fn b_store(&self) -> PathBuf {
        self.dir.join("b-store")
    }

    /// The `[wan]` lines for [`Topology::dedup`]; B's store is on disk.
    fn dedup_lines(&self, b: bool) -> String {
        match (self.dedup, b) {
            (false, _) => String::new(),
            (true, false) => "dedup = \"auto\"\ndedup_scope = \"tunnel\"\n".into(),
            (true, true) => format!(
                "dedup = \"auto\"\ndedup_scope = \"tunnel\"\ndedup_dir = {:?}\n",
                self.b_store().display().to_string()
            ),
        }
    }

    /// Gateway A's config: dials B, ingress for [`ROUTES`]; `peer_key` is what it expects of B.
    pub fn config_a(&self, peer_key: &str, flows: u32) -> PathBuf {
        let mut t = format!(
            "[gateway]\nname = \"gw-a\"\nprivate_key_file = \"a.key\"\n{}\
             [peer]\nname = \"gw-b\"\npublic_key = \"{peer_key}\"\nconnect = \"{B_WAN}:{TUNNEL_PORT}\"\n\
             [wan]\ndata_flows = {flows}\nflow_timeout_secs = 5\n{}\
             [admin]\nsocket = \"{}\"\n",
            datapath_line(self.kinds.0),
            self.dedup_lines(false),
            self.dir.join("a.sock").display()
        );
        for (from, to) in ROUTES {
            t += &format!("[[ingress]]\nmode = \"listen\"\nbind = \"{A_LAN}:{from}\"\ntarget = \"{DST}:{to}\"\n");
        }
        if self.kinds.0 == Kind::Dpdk {
            t += &dpdk_section("a", A_LAN, A_WAN);
        }
        write(&self.dir.join("a.toml"), &t)
    }

    /// Gateway B's config: accepts A (`peer_key`), may connect to dst's two ports.
    pub fn config_b(&self, peer_key: &str, flows: u32) -> PathBuf {
        let allow: Vec<String> = ROUTES
            .iter()
            .map(|(_, to)| format!("\"{DST}:{to}\""))
            .collect();
        let mut t = format!(
            "[gateway]\nname = \"gw-b\"\nprivate_key_file = \"b.key\"\ntunnel_listen = \"{B_WAN}:{TUNNEL_PORT}\"\n{}\
             [peer]\nname = \"gw-a\"\npublic_key = \"{peer_key}\"\n\
             [wan]\ndata_flows = {flows}\nflow_timeout_secs = 5\n{}\
             [egress]\nallow = [{}]\n\
             [admin]\nsocket = \"{}\"\n",
            datapath_line(self.kinds.1),
            self.dedup_lines(true),
            allow.join(", "),
            self.dir.join("b.sock").display()
        );
        if self.kinds.1 == Kind::Dpdk {
            t += &dpdk_section("b", B_LAN, B_WAN);
        }
        write(&self.dir.join("b.toml"), &t)
    }

    /// Starts B, then A, each in its namespace, logging to `DIR/{a,b}.log`.
    pub fn start(&self, config_a: &Path, config_b: &Path) -> (Gateway, Gateway) {
        let b = Gateway::spawn_in(
            "gw-b",
            config_b,
            &self.dir.join("b.log"),
            Some(self.b.clone()),
        );
        let a = Gateway::spawn_in(
            "gw-a",
            config_a,
            &self.dir.join("a.log"),
            Some(self.a.clone()),
        );
        (a, b)
    }

    /// Where src connects to reach dst's `port` through the gateways.
    pub fn ingress_for(&self, dst_port: u16) -> SocketAddrV4 {
        let (from, _) = ROUTES
            .iter()
            .find(|(_, to)| *to == dst_port)
            .expect("a routed port");
        SocketAddrV4::new(A_LAN, *from)
    }
}

impl Drop for Topology {
    fn drop(&mut self) {
        if std::env::var_os("LMAS_KEEP_TEST_DIRS").is_none() {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

fn datapath_line(kind: Kind) -> &'static str {
    match kind {
        Kind::Kernel => "",
        Kind::Dpdk => "datapath = \"dpdk\"\n",
    }
}

/// The `[dpdk]` section for a gateway whose veths are `{side}lan` and `{side}wan`: no
/// hugepages, no PCI, the two af_packet vdevs; the lcores share this machine's CPUs and sleep
/// when idle (a test box, not an appliance). Gateway b has no I/O lcore (its TCP lcore polls
/// the ports), a: one; so every test between them crosses both ways of driving a port.
fn dpdk_section(side: &str, lan: Ipv4Addr, wan: Ipv4Addr) -> String {
    let io_lcores = if side == "b" { "io_lcores = []\n" } else { "" };
    format!(
        "[dpdk]\neal_args = [\"--no-huge\", \"-m\", \"256\", \"--no-pci\", \"--no-telemetry\", \"--log-level\", \"error\", \
         \"--file-prefix\", \"lmas-test-{side}-{pid}\", \
         \"--vdev=net_af_packet0,iface={side}lan\", \"--vdev=net_af_packet1,iface={side}wan\"]\n\
         {io_lcores}idle_sleep_us = 50\nmbufs = 8191\n\
         [dpdk.lan]\ndevice = \"net_af_packet0\"\naddress = \"{lan}/24\"\n\
         [dpdk.wan]\ndevice = \"net_af_packet1\"\naddress = \"{wan}/24\"\n",
        pid = std::process::id()
    )
}

fn write(path: &Path, text: &str) -> PathBuf {
    std::fs::write(path, text).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
    path.to_path_buf()
}

//! The `[dpdk]` section: how the appliance datapath gets its EAL, lcores
//! and two ports. Validated like the rest of the file (errors name the
//! field); checks against the rest of the config (ingress binds, tunnel
//! addresses) are in [`DpdkConfig::check_against`].
//!
//! ```toml
//! [gateway]
//! datapath = "dpdk"
//!
//! [dpdk]
//! eal_args = ["-l", "0-3", "--vdev=net_af_packet0,iface=lan0", "--vdev=net_af_packet1,iface=wan0"]
//! io_lcores = [1]          # poll the ports (rx/tx bursts); [] = on the TCP lcore
//! tcp_lcore = 2            # userspace TCP/IP, sessions, tunnel
//! # tcp_lcores = [2, 4]    # instead: one shard of the gateway each (needs an I/O lcore,
//! #                        # and as many TCP lcores on the peer)
//! crypto_lcores = [3]      # AES-256-GCM, split over the TCP lcores (empty: on the TCP lcore)
//!
//! [dpdk.lan]               # faces the hypervisors
//! device = "net_af_packet0"
//! address = "10.0.1.1/24"
//! intercept = ["10.0.3.0/24"]   # transparent mode: destinations terminated here
//!
//! [dpdk.wan]               # faces the peer gateway
//! device = "net_af_packet1"
//! address = "10.0.2.1/24"
//! gateway = "10.0.2.254"
//! ```

use std::net::Ipv4Addr;

use serde::Deserialize;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct DpdkSection {
    #[serde(default)]
    eal_args: Vec<String>,
    io_lcores: Option<Vec<i64>>,
    tcp_lcore: Option<i64>,
    tcp_lcores: Option<Vec<i64>>,
    crypto_lcores: Option<Vec<i64>>,
    idle_sleep_us: Option<i64>,
    mbufs: Option<i64>,
    lan_socket_buffer_bytes: Option<i64>,
    listen_backlog: Option<i64>,
    lan: PortSection,
    wan: PortSection,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PortSection {
    device: String,
    address: String,
    gateway: Option<String>,
    #[serde(default)]
    intercept: Vec<String>,
    mtu: Option<i64>,
}

/// One port of the appliance.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PortSpec {
    /// The name DPDK probed it under: a PCI address or a vdev name.
    pub device: String,
    pub address: Ipv4Addr,
    pub prefix_len: u8,
    pub gateway: Option<Ipv4Addr>,
    /// Prefixes terminated transparently (any-IP); LAN side only.
    pub intercept: Vec<(Ipv4Addr, u8)>,
    pub mtu: u16,
}

/// The validated `[dpdk]` section.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DpdkConfig {
    pub eal_args: Vec<String>,
    /// Lcores polling the ports; ports are spread over them.
    pub io_lcores: Vec<u32>,
    /// One shard of the gateway each (`tcp_lcore = L` is `tcp_lcores = [L]`).
    pub tcp_lcores: Vec<u32>,
    /// Empty: the TCP lcore seals and opens records itself.
    pub crypto_lcores: Vec<u32>,
    /// An idle poll loop sleeps this long after a run of empty polls (0:
    /// pure busy polling, the appliance setting; > 0 shares CPUs nicely).
    pub idle_sleep_us: u64,
    /// Packet buffers per port's pool.
    pub mbufs: u32,
    /// Receive and send buffer of each LAN (hypervisor-side) TCP socket.
    pub lan_socket_buffer: usize,
    /// Spare listening sockets per ingress port: SYNs beyond this many
    /// unaccepted connections at once are refused.
    pub listen_backlog: usize,
    pub lan: PortSpec,
    pub wan: PortSpec,
}

impl DpdkConfig {
    /// Every lcore the datapath runs a role on.
    pub fn role_lcores(&self) -> Vec<u32> {
        let mut v = self.io_lcores.clone();
        v.extend(&self.tcp_lcores);
        v.extend(&self.crypto_lcores);
        v
    }

    /// The crypto lcores of TCP lcore (shard) `k`: dealt out in turn, so shards get as many
    /// as they can; a shard with none seals inline.
    pub fn crypto_lcores_of(&self, k: usize) -> Vec<u32> {
        let shards = self.tcp_lcores.len().max(1);
        self.crypto_lcores
            .iter()
            .skip(k)
            .step_by(shards)
            .copied()
            .collect()
    }

    /// The EAL arguments for gateway `name` on a host with `cpus` CPUs: the configured ones,
    /// plus what is missing for the roles to run: an lcore map (each role's lcore on CPU
    /// `id % cpus`, when the config gives none) and a file prefix unique to this gateway (so
    /// two gateways can share a host).
    pub fn eal_args_for(&self, name: &str, cpus: u32) -> Vec<String> {
        let mut args = self.eal_args.clone();
        let has = |args: &[String], flags: &[&str]| {
            let given = |a: &String, f: &&str| a == f || a.starts_with(&format!("{f}="));
            args.iter().any(|a| flags.iter().any(|f| given(a, f)))
        };
        if !has(&args, &["-l", "--lcores", "-c"]) {
            let lcores = std::iter::once(0).chain(self.role_lcores());
            let map: Vec<String> = lcores.map(|l| format!("{l}@{}", l % cpus.max(1))).collect();
            args.push(format!("--lcores={}", map.join(",")));
        }
        if !has(&args, &["--file-prefix"]) {
            let safe = |c: char| if c.is_ascii_alphanumeric() { c } else { '_' };
            args.push(format!(
                "--file-prefix=lmas_{}",
                name.chars().map(safe).collect::<String>()
            ));
        }
        args
    }

    /// Every role's lcore must be one of the `workers` the EAL started: the field naming the
    /// first that is not, and why.
    pub fn check_workers(&self, workers: &[u32]) -> Result<(), Err> {
        let io = self.io_lcores.iter().map(|l| ("dpdk.io_lcores", *l));
        let tcp = self.tcp_lcores.iter().map(|l| ("dpdk.tcp_lcores", *l));
        let crypto = self
            .crypto_lcores
            .iter()
            .map(|l| ("dpdk.crypto_lcores", *l));
        match io.chain(tcp).chain(crypto).find(|(_, l)| !workers.contains(l)) {
            Some((field, l)) => Err(field_err(field, format!(
                "lcore {l} is not a worker lcore of the EAL (workers: {workers:?}; the main lcore runs admin work); list it in the -l/--lcores argument of dpdk.eal_args"
            ))),
            None => Ok(()),
        }
    }
}

type Err = (String, String);

fn field_err(field: &str, why: impl Into<String>) -> Err {
    (field.to_string(), why.into())
}

fn lcore(field: &str, v: i64) -> Result<u32, Err> {
    u32::try_from(v)
        .ok()
        .filter(|&l| l < 1024)
        .ok_or_else(|| field_err(field, format!("{v} is not an lcore id (0..1024)")))
}

/// A list of lcore ids, `default` when the field is absent.
fn lcores(field: &str, v: Option<&[i64]>, default: &[i64]) -> Result<Vec<u32>, Err> {
    v.unwrap_or(default)
        .iter()
        .map(|&l| lcore(field, l))
        .collect()
}

/// Whether `addr` is inside `net/len`.
pub fn in_prefix(addr: Ipv4Addr, net: Ipv4Addr, len: u8) -> bool {
    crate::sources::in_prefix(addr.into(), net.into(), len)
}

/// `A.B.C.D/N`.
pub fn parse_cidr(s: &str) -> Result<(Ipv4Addr, u8), String> {
    let bad =
        || format!("{s:?} is not an IPv4 prefix like 10.0.1.0/24 (the DPDK datapath is IPv4-only)");
    let (a, n) = s.split_once('/').ok_or_else(bad)?;
    let a: Ipv4Addr = a.parse().map_err(|_| bad())?;
    let n: u8 = n.parse().map_err(|_| bad())?;
    if n > 32 {
        return Err(bad());
    }
    Ok((a, n))
}

fn port(prefix: &str, p: &PortSection) -> Result<PortSpec, Err> {
    let f = |name: &str| format!("dpdk.{prefix}.{name}");
    if p.device.trim().is_empty() {
        return Err(field_err(
            &f("device"),
            "must name the DPDK device (e.g. 0000:03:00.0 or net_af_packet0)",
        ));
    }
    let (address, prefix_len) = parse_cidr(&p.address).map_err(|w| field_err(&f("address"), w))?;
    if address.is_unspecified()
        || address.is_broadcast()
        || address.is_multicast()
        || prefix_len == 0
    {
        return Err(field_err(
            &f("address"),
            format!(
                "{} is not a usable interface address with its prefix length",
                p.address
            ),
        ));
    }
    let gateway = p
        .gateway
        .as_deref()
        .map(|g| {
            g.parse::<Ipv4Addr>()
                .map_err(|_| field_err(&f("gateway"), format!("{g:?} is not an IPv4 address")))
        })
        .transpose()?;
    if let Some(gw) = gateway {
        if !in_prefix(gw, address, prefix_len) {
            return Err(field_err(
                &f("gateway"),
                format!("{gw} is not on {}", p.address),
            ));
        }
    }
    let intercept = p
        .intercept
        .iter()
        .map(|s| parse_cidr(s).map_err(|w| field_err(&f("intercept"), w)))
        .collect::<Result<Vec<_>, _>>()?;
    let mtu = match p.mtu {
        None => 1500,
        Some(m) if (576..=9000).contains(&m) => m as u16,
        Some(m) => {
            return Err(field_err(
                &f("mtu"),
                format!("must be between 576 and 9000 (got {m})"),
            ))
        }
    };
    Ok(PortSpec {
        device: p.device.trim().to_string(),
        address,
        prefix_len,
        gateway,
        intercept,
        mtu,
    })
}

impl DpdkSection {
    pub(super) fn validate(&self) -> Result<DpdkConfig, Err> {
        // Empty: the TCP lcore polls the ports itself.
        let io_lcores = lcores("dpdk.io_lcores", self.io_lcores.as_deref(), &[1])?;
        let tcp_lcores = match (self.tcp_lcore, &self.tcp_lcores) {
            (Some(_), Some(_)) => {
                return Err(field_err(
                    "dpdk.tcp_lcores",
                    "give either tcp_lcore (one) or tcp_lcores (a list), not both",
                ))
            }
            (Some(l), None) => vec![lcore("dpdk.tcp_lcore", l)?],
            (None, list) => lcores("dpdk.tcp_lcores", list.as_deref(), &[2])?,
        };
        if tcp_lcores.is_empty() || tcp_lcores.len() > u8::MAX as usize {
            return Err(field_err(
                "dpdk.tcp_lcores",
                format!("needs 1 to {} lcores (got {})", u8::MAX, tcp_lcores.len()),
            ));
        }
        if tcp_lcores.len() > 1 && io_lcores.is_empty() {
            return Err(field_err(
                "dpdk.tcp_lcores",
                format!(
                    "{} TCP lcores need an I/O lcore to steer packets between them, but dpdk.io_lcores is empty",
                    tcp_lcores.len()
                ),
            ));
        }
        let crypto_lcores = lcores("dpdk.crypto_lcores", self.crypto_lcores.as_deref(), &[3])?;
        let mut seen = std::collections::BTreeSet::new();
        for (field, l) in io_lcores
            .iter()
            .map(|l| ("dpdk.io_lcores", *l))
            .chain(tcp_lcores.iter().map(|l| ("dpdk.tcp_lcores", *l)))
            .chain(crypto_lcores.iter().map(|l| ("dpdk.crypto_lcores", *l)))
        {
            if !seen.insert(l) {
                return Err(field_err(field, format!("lcore {l} has two roles; give each role its own lcore (several lcores may share a CPU: EAL --lcores)")));
            }
        }
        let range =
            |field: &str, v: Option<i64>, default: i64, lo: i64, hi: i64| -> Result<i64, Err> {
                let v = v.unwrap_or(default);
                if (lo..=hi).contains(&v) {
                    Ok(v)
                } else {
                    Err(field_err(
                        field,
                        format!("must be between {lo} and {hi} (got {v})"),
                    ))
                }
            };
        let lan = port("lan", &self.lan)?;
        let wan = port("wan", &self.wan)?;
        if !wan.intercept.is_empty() {
            return Err(field_err(
                "dpdk.wan.intercept",
                "only the LAN port intercepts",
            ));
        }
        if lan.device == wan.device {
            return Err(field_err(
                "dpdk.wan.device",
                format!(
                    "{} is also the LAN device; the appliance needs two ports",
                    wan.device
                ),
            ));
        }
        Ok(DpdkConfig {
            eal_args: self.eal_args.clone(),
            io_lcores,
            tcp_lcores,
            crypto_lcores,
            idle_sleep_us: range("dpdk.idle_sleep_us", self.idle_sleep_us, 0, 0, 100_000)? as u64,
            mbufs: range("dpdk.mbufs", self.mbufs, 16383, 1023, 1 << 22)? as u32,
            lan_socket_buffer: range(
                "dpdk.lan_socket_buffer_bytes",
                self.lan_socket_buffer_bytes,
                4 << 20,
                64 << 10,
                256 << 20,
            )? as usize,
            listen_backlog: range("dpdk.listen_backlog", self.listen_backlog, 16, 1, 1024)?
                as usize,
            lan,
            wan,
        })
    }
}

impl DpdkConfig {
    /// Checks the rest of the config against what this datapath can do:
    /// IPv4 only, the tunnel on the WAN port's address, listeners on the LAN
    /// port's address, transparent ingress only with intercepted prefixes.
    pub(super) fn check_against(
        &self,
        tunnel: &super::TunnelEnd,
        ingress: &[super::Ingress],
    ) -> Result<(), Err> {
        use std::net::SocketAddr;
        let v4 = |field: &str, a: &SocketAddr| match a {
            SocketAddr::V4(a) => Ok(*a),
            SocketAddr::V6(_) => Err(field_err(
                field,
                format!("{a}: the DPDK datapath is IPv4-only"),
            )),
        };
        match tunnel {
            super::TunnelEnd::Dial(a) => {
                v4("peer.connect", a)?;
            }
            super::TunnelEnd::Listen(a) => {
                let a = v4("gateway.tunnel_listen", a)?;
                if !a.ip().is_unspecified() && *a.ip() != self.wan.address {
                    return Err(field_err(
                        "gateway.tunnel_listen",
                        format!(
                            "{a}: must be the WAN port's address {} (or 0.0.0.0)",
                            self.wan.address
                        ),
                    ));
                }
            }
        }
        for (i, ing) in ingress.iter().enumerate() {
            let field = format!("ingress[{i}].bind");
            let bind = v4(&field, &ing.bind)?;
            match ing.mode {
                super::IngressMode::Listen { target } => {
                    if !bind.ip().is_unspecified() && *bind.ip() != self.lan.address {
                        return Err(field_err(
                            &field,
                            format!(
                                "{bind}: must be the LAN port's address {} (or 0.0.0.0)",
                                self.lan.address
                            ),
                        ));
                    }
                    v4(&format!("ingress[{i}].target"), &target)?;
                }
                super::IngressMode::Tproxy => {
                    if self.lan.intercept.is_empty() {
                        return Err(field_err(
                            "dpdk.lan.intercept",
                            format!("ingress[{i}] is transparent (tproxy) but no prefix is intercepted: list the destination prefixes, e.g. [\"10.0.3.0/24\"] or [\"0.0.0.0/0\"]"),
                        ));
                    }
                }
            }
            if bind.port() == 0 {
                return Err(field_err(&field, "needs a port".to_string()));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefixes() {
        let a = Ipv4Addr::new(192, 168, 7, 9);
        assert!(in_prefix(a, Ipv4Addr::new(192, 168, 0, 0), 16));
        assert!(!in_prefix(a, Ipv4Addr::new(192, 168, 8, 0), 24));
        assert!(in_prefix(a, Ipv4Addr::UNSPECIFIED, 0));
        assert!(in_prefix(a, a, 32));
        assert_eq!(
            parse_cidr("10.0.1.1/24"),
            Ok((Ipv4Addr::new(10, 0, 1, 1), 24))
        );
        assert!(parse_cidr("10.0.1.1").is_err());
        assert!(parse_cidr("10.0.1.1/33").is_err());
        assert!(parse_cidr("fe80::1/64").is_err());
    }

    fn section(lcores: &str) -> Result<DpdkConfig, Err> {
        let text = format!(
            "{lcores}\n[lan]\ndevice = \"net_null0\"\naddress = \"10.0.1.1/24\"\n[wan]\ndevice = \"net_null1\"\naddress = \"10.0.2.1/24\"\n"
        );
        toml::from_str::<DpdkSection>(&text).unwrap().validate()
    }

    #[test]
    fn the_eal_gets_an_lcore_map_and_a_prefix_unless_the_config_gives_them() {
        let c = section("").unwrap();
        assert_eq!(
            c.eal_args_for("gw a.1", 2),
            ["--lcores=0@0,1@1,2@0,3@1", "--file-prefix=lmas_gw_a_1"]
        );
        let given = section("eal_args = [\"-l\", \"0-3\", \"--file-prefix=x\"]").unwrap();
        assert_eq!(
            given.eal_args_for("gw", 2),
            ["-l", "0-3", "--file-prefix=x"]
        );
        assert_eq!(c.check_workers(&[1, 2, 3]), Ok(()));
        let (field, why) = c.check_workers(&[1, 3]).unwrap_err();
        assert_eq!(field, "dpdk.tcp_lcores");
        assert!(why.starts_with("lcore 2 is not a worker lcore of the EAL (workers: [1, 3];"));
    }

    #[test]
    fn one_or_several_tcp_lcores() {
        let c = section("").unwrap();
        assert_eq!(c.tcp_lcores, [2]);
        assert_eq!(c.role_lcores(), [1, 2, 3]);
        assert_eq!(section("tcp_lcore = 4").unwrap().tcp_lcores, [4]);
        let c = section("tcp_lcores = [2, 4]\ncrypto_lcores = [3, 5]").unwrap();
        assert_eq!(c.tcp_lcores, [2, 4]);
        assert_eq!(c.role_lcores(), [1, 2, 4, 3, 5]);
        assert_eq!(
            (c.crypto_lcores_of(0), c.crypto_lcores_of(1)),
            (vec![3], vec![5])
        );
        let c = section(
            "tcp_lcores = [2, 4]
crypto_lcores = [3, 5, 6]",
        )
        .unwrap();
        assert_eq!(
            (c.crypto_lcores_of(0), c.crypto_lcores_of(1)),
            (vec![3, 6], vec![5])
        );
        let c = section(
            "tcp_lcores = [2, 4]
crypto_lcores = [3]",
        )
        .unwrap();
        assert!(c.crypto_lcores_of(1).is_empty(), "seals inline");
        let err = |text: &str| section(text).unwrap_err();
        for (text, field, why) in [
            (
                "tcp_lcore = 2\ntcp_lcores = [4]",
                "dpdk.tcp_lcores",
                "not both",
            ),
            ("tcp_lcores = []", "dpdk.tcp_lcores", "needs 1 to 255"),
            (
                "io_lcores = []\ntcp_lcores = [2, 4]",
                "dpdk.tcp_lcores",
                "need an I/O lcore",
            ),
            ("tcp_lcores = [2, 2]", "dpdk.tcp_lcores", "two roles"),
            ("tcp_lcores = [2, 3]", "dpdk.crypto_lcores", "two roles"),
            ("tcp_lcores = [2, -1]", "dpdk.tcp_lcores", "not an lcore id"),
        ] {
            let (f, w) = err(text);
            assert_eq!(f, field, "{text}: {w}");
            assert!(w.contains(why), "{text}: {w}");
        }
        // One TCP lcore may still poll the ports itself.
        assert_eq!(
            section("io_lcores = []\ntcp_lcores = [2]")
                .unwrap()
                .tcp_lcores,
            [2]
        );
    }
}

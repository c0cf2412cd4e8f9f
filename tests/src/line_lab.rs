//! A line of five namespaces with a gateway pair, for the admission and ingress-limit tests
//! (issue 13 §2, §3):
//!
//! ```text
//!  src ───── A ───── 10.83.2.1 | r: 10.83.2.254  10.83.3.254 | 10.83.3.2 ───── B ───── dst
//!  10.83.1.2, .3     LAN 10.83.1.1   (routes; linkemu delay)          LAN 10.83.4.1   10.83.4.2
//! ```
//!
//! A dials B; both are kernel or both DPDK gateways (af_packet PMD on their veths, which then
//! carry no kernel address). `r` routes between them and can delay the A–B path (`linkemu`,
//! the repository's own link emulator: the kernel here has no netem), forge RSTs (iptables) and
//! flood B's tunnel port: it blackholes [`SPOOFED`] (so SYN-ACKs to spoofed sources vanish) and
//! owns [`FLOOD_NET`] on its loopback (so a connection flood can come from any of its
//! addresses). `src` has two addresses ([`SRC`], [`SRC2`]) to be two hypervisors.
//!
//! Needs root, `ip`, `iptables`, `ethtool`; with a delay also `target/release/linkemu`
//! (`cargo build --release -p linkemu`); DPDK gateways need the system DPDK. [`skip`] says why
//! not, and the caller prints `SKIP: …`.

use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use crate::dpdk_lab::{dpdk_available, Kind};
use crate::netns::{skip_unless_available, NetNs};
use crate::{die_with_parent, keygen, run_with_timeout, temp_dir, workspace_root, Gateway};

pub const SRC: Ipv4Addr = Ipv4Addr::new(10, 83, 1, 2);
/// A second hypervisor on the source side (an address of `src` too).
pub const SRC2: Ipv4Addr = Ipv4Addr::new(10, 83, 1, 3);
pub const A_LAN: Ipv4Addr = Ipv4Addr::new(10, 83, 1, 1);
pub const A_WAN: Ipv4Addr = Ipv4Addr::new(10, 83, 2, 1);
pub const R_A: Ipv4Addr = Ipv4Addr::new(10, 83, 2, 254);
pub const R_B: Ipv4Addr = Ipv4Addr::new(10, 83, 3, 254);
pub const B_WAN: Ipv4Addr = Ipv4Addr::new(10, 83, 3, 2);
pub const B_LAN: Ipv4Addr = Ipv4Addr::new(10, 83, 4, 1);
pub const DST: Ipv4Addr = Ipv4Addr::new(10, 83, 4, 2);
pub const TUNNEL_PORT: u16 = 7700;
/// Spoofed sources: routed nowhere (a blackhole in `r`), 16384 /24 prefixes.
pub const SPOOFED: (Ipv4Addr, u8) = (Ipv4Addr::new(10, 64, 0, 0), 10);
/// Real flooding hosts: every address of this /24 is local to `r`.
pub const FLOOD_NET: Ipv4Addr = Ipv4Addr::new(10, 130, 7, 0);

/// What to build.
#[derive(Debug, Clone)]
pub struct LineSpec {
    /// Short and unique per test: namespace names and the DPDK EAL file prefix.
    pub tag: String,
    pub kind: Kind,
    /// Round-trip time added between A and B (linkemu in `r`); none: no emulator.
    pub rtt_ms: Option<u32>,
    pub data_flows: u32,
    /// Both gateways' `wan` lines beyond `data_flows` (e.g. timeouts).
    pub wan: Vec<String>,
    /// Extra lines of B's `[peer]` table (e.g. `source = [...]`).
    pub b_peer: Vec<String>,
    /// Extra lines of B's `[egress]` table.
    pub b_egress: Vec<String>,
    /// A's `[[ingress]]` tables, each the lines of one (mode, bind, target, limits).
    pub ingress: Vec<Vec<String>>,
    /// The targets B may connect to.
    pub allow: Vec<SocketAddrV4>,
    /// A expects another key of B (a stranger's): the tunnel never comes up, and
    /// [`Line::start`] waits only until both gateways run.
    pub wrong_peer_key: bool,
    /// Lines of A's `[limits]` table (e.g. caps).
    pub a_limits: Vec<String>,
    /// Extra lines of A's `[gateway]` table (e.g. `drain_timeout_secs`).
    pub a_gateway: Vec<String>,
}

impl LineSpec {
    /// One `listen` ingress on A_LAN:6000 to DST:5000, no limits; two data flows.
    pub fn new(tag: &str, kind: Kind) -> LineSpec {
        LineSpec {
            tag: tag.to_string(),
            kind,
            rtt_ms: None,
            data_flows: 2,
            wan: Vec::new(),
            b_peer: Vec::new(),
            b_egress: Vec::new(),
            ingress: vec![ingress_lines(6000, 5000, &[])],
            allow: vec![SocketAddrV4::new(DST, 5000)],
            wrong_peer_key: false,
            a_limits: Vec::new(),
            a_gateway: Vec::new(),
        }
    }
}

/// The lines of a `listen` ingress A_LAN:`port` → DST:`target`, plus `extra`.
pub fn ingress_lines(port: u16, target: u16, extra: &[&str]) -> Vec<String> {
    let mut v = vec![
        "mode = \"listen\"".to_string(),
        format!("bind = \"{A_LAN}:{port}\""),
        format!("target = \"{DST}:{target}\""),
    ];
    v.extend(extra.iter().map(|s| s.to_string()));
    v
}

/// Why the line cannot run here, if it cannot.
pub fn skip(test: &str, spec: &LineSpec) -> bool {
    if skip_unless_available(test) {
        return true;
    }
    let ok = run_with_timeout(
        Command::new("ethtool").arg("--version"),
        Duration::from_secs(10),
    )
    .is_ok_and(|o| o.status.success());
    if !ok {
        eprintln!("SKIP: {test}: `ethtool` is missing (scripts/install-deps.sh installs it)");
        return true;
    }
    if spec.rtt_ms.is_some() && !linkemu_bin().exists() {
        eprintln!(
            "SKIP: {test}: {} is missing (cargo build --release -p linkemu)",
            linkemu_bin().display()
        );
        return true;
    }
    if spec.kind == Kind::Dpdk {
        if let Err(why) = dpdk_available() {
            eprintln!("SKIP: {test}: {why}");
            return true;
        }
    }
    false
}

pub fn linkemu_bin() -> PathBuf {
    workspace_root().join("target/release/linkemu")
}

/// Runs a command (with a timeout); its stdout, or an error with its stderr.
pub fn run(cmd: &mut Command) -> Result<String, String> {
    let out =
        run_with_timeout(cmd, Duration::from_secs(20)).map_err(|e| format!("{cmd:?}: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "{cmd:?}: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The running line.
pub struct Line {
    pub kind: Kind,
    pub src: Arc<NetNs>,
    pub a_ns: Arc<NetNs>,
    pub r: Arc<NetNs>,
    pub b_ns: Arc<NetNs>,
    pub dst: Arc<NetNs>,
    pub a: Gateway,
    pub b: Gateway,
    pub dir: PathBuf,
    linkemu: Option<Child>,
    eal_dirs: Vec<PathBuf>,
    _tmp: Option<tempfile::TempDir>,
}

impl Drop for Line {
    fn drop(&mut self) {
        self.a.stop();
        self.b.stop();
        if let Some(mut l) = self.linkemu.take() {
            // SAFETY: kill(2) on our own child, not reaped yet; SIGTERM tears the link down.
            unsafe {
                libc::kill(l.id() as libc::pid_t, libc::SIGTERM);
            }
            let deadline = Instant::now() + Duration::from_secs(5);
            while matches!(l.try_wait(), Ok(None)) && Instant::now() < deadline {
                thread::sleep(Duration::from_millis(20));
            }
            let _ = l.kill();
            let _ = l.wait();
        }
        // A few MB each in /var/run (tmpfs); DPDK does not remove them itself.
        for d in &self.eal_dirs {
            let _ = std::fs::remove_dir_all(d);
        }
    }
}

fn eal_prefix(tag: &str, side: &str) -> String {
    format!("lmas-ll-{tag}-{side}-{}", std::process::id())
}

/// The `[dpdk]` section of gateway `side` (veths `{side}lan`, `{side}wan`), `r` its WAN gateway.
fn dpdk_section(tag: &str, side: &str, lan: Ipv4Addr, wan: Ipv4Addr, via: Ipv4Addr) -> String {
    format!(
        "[dpdk]\neal_args = [\"--no-huge\", \"-m\", \"256\", \"--no-pci\", \"--no-telemetry\", \"--log-level\", \"error\", \
         \"--file-prefix\", \"{prefix}\", \
         \"--vdev=net_af_packet0,iface={side}lan\", \"--vdev=net_af_packet1,iface={side}wan\"]\n\
         idle_sleep_us = 50\nmbufs = 8191\n\
         [dpdk.lan]\ndevice = \"net_af_packet0\"\naddress = \"{lan}/24\"\n\
         [dpdk.wan]\ndevice = \"net_af_packet1\"\naddress = \"{wan}/24\"\ngateway = \"{via}\"\n",
        prefix = eal_prefix(tag, side)
    )
}

impl Line {
    /// Namespaces, veths, routes, the emulator, keys and configs; starts B, then A, and waits
    /// until both say the tunnel is up.
    pub fn start(spec: &LineSpec) -> Result<Line, String> {
        let tag = spec.tag.as_str();
        let ns = |t: &str| {
            NetNs::new(&format!("{tag}-{t}"))
                .map(Arc::new)
                .map_err(|e| e.to_string())
        };
        let (src, a_ns, r, b_ns, dst) = (ns("src")?, ns("a")?, ns("r")?, ns("b")?, ns("dst")?);
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
        veth(&src, "s0", &a_ns, "alan")?;
        veth(&a_ns, "awan", &r, "ra")?;
        veth(&r, "rb", &b_ns, "bwan")?;
        veth(&b_ns, "blan", &dst, "d0")?;
        let kernel = spec.kind == Kind::Kernel;
        let ifs: [(&NetNs, &str, Option<Ipv4Addr>); 8] = [
            (&src, "s0", Some(SRC)),
            (&a_ns, "alan", kernel.then_some(A_LAN)),
            (&a_ns, "awan", kernel.then_some(A_WAN)),
            (&r, "ra", Some(R_A)),
            (&r, "rb", Some(R_B)),
            (&b_ns, "bwan", kernel.then_some(B_WAN)),
            (&b_ns, "blan", kernel.then_some(B_LAN)),
            (&dst, "d0", Some(DST)),
        ];
        for (n, ifname, addr) in ifs {
            n.ip(&["link", "set", ifname, "up"])?;
            match addr {
                Some(addr) => {
                    n.ip(&["addr", "add", &format!("{addr}/24"), "dev", ifname])?;
                    // The af_packet PMD must see finished checksums and wire-sized frames.
                    run(n
                        .command("ethtool")
                        .args(["-K", ifname, "tx", "off", "tso", "off", "gso", "off"]))?;
                }
                // A DPDK port: no kernel address, no IPv6 chatter into the PMD.
                None => {
                    run(n
                        .command("sysctl")
                        .args(["-qw", &format!("net.ipv6.conf.{ifname}.disable_ipv6=1")]))?;
                }
            }
        }
        src.ip(&["addr", "add", &format!("{SRC2}/24"), "dev", "s0"])?;
        for (key, value) in [
            ("net.ipv4.ip_forward", "1"),
            ("net.ipv4.conf.all.rp_filter", "0"),
            ("net.ipv4.conf.default.rp_filter", "0"),
        ] {
            run(r.command("sysctl").args(["-qw", &format!("{key}={value}")]))?;
        }
        r.ip(&[
            "route",
            "add",
            "blackhole",
            &format!("{}/{}", SPOOFED.0, SPOOFED.1),
        ])?;
        r.ip(&[
            "route",
            "add",
            "local",
            &format!("{FLOOD_NET}/24"),
            "dev",
            "lo",
        ])?;
        src.ip(&["route", "add", "default", "via", &A_LAN.to_string()])?;
        dst.ip(&["route", "add", "default", "via", &B_LAN.to_string()])?;
        if kernel {
            a_ns.ip(&["route", "add", "default", "via", &R_A.to_string()])?;
            b_ns.ip(&["route", "add", "default", "via", &R_B.to_string()])?;
        }
        let (dir, tmp) = temp_dir(&format!("lmas-{tag}-"));
        let linkemu = match spec.rtt_ms {
            Some(rtt) => Some(start_linkemu(&r, tag, &dir, rtt)?),
            None => None,
        };
        let key_a = keygen(&dir.join("a.key"));
        let key_b = keygen(&dir.join("b.key"));
        let b_as_a_knows_it = match spec.wrong_peer_key {
            true => keygen(&dir.join("stranger.key")).public,
            false => key_b.public.clone(),
        };
        let datapath = match spec.kind {
            Kind::Kernel => "",
            Kind::Dpdk => "datapath = \"dpdk\"\n",
        };
        let wan = {
            let mut w = format!("[wan]\ndata_flows = {}\n", spec.data_flows);
            for l in &spec.wan {
                w += l;
                w.push('\n');
            }
            w
        };
        let a_gateway: String = spec.a_gateway.iter().map(|l| format!("{l}\n")).collect();
        let mut ta = format!(
            "[gateway]\nname = \"gw-a\"\nprivate_key_file = \"a.key\"\n{datapath}{a_gateway}\
             [peer]\nname = \"gw-b\"\npublic_key = \"{}\"\nconnect = \"{B_WAN}:{TUNNEL_PORT}\"\n\
             {wan}[admin]\nsocket = \"{}\"\n",
            b_as_a_knows_it,
            dir.join("a.sock").display()
        );
        for ing in &spec.ingress {
            ta += "[[ingress]]\n";
            for l in ing {
                ta += l;
                ta.push('\n');
            }
        }
        if !spec.a_limits.is_empty() {
            ta += &format!("[limits]\n{}\n", spec.a_limits.join("\n"));
        }
        let allow: Vec<String> = spec.allow.iter().map(|a| format!("\"{a}\"")).collect();
        let mut tb = format!(
            "[gateway]\nname = \"gw-b\"\nprivate_key_file = \"b.key\"\ntunnel_listen = \"{B_WAN}:{TUNNEL_PORT}\"\n{datapath}\
             [peer]\nname = \"gw-a\"\npublic_key = \"{}\"\n{}\n\
             {wan}[egress]\nallow = [{}]\n{}\n[admin]\nsocket = \"{}\"\n",
            key_a.public,
            spec.b_peer.join("\n"),
            allow.join(", "),
            spec.b_egress.join("\n"),
            dir.join("b.sock").display()
        );
        if spec.kind == Kind::Dpdk {
            ta += &dpdk_section(tag, "a", A_LAN, A_WAN, R_A);
            tb += &dpdk_section(tag, "b", B_LAN, B_WAN, R_B);
        }
        let ca = write(&dir.join("a.toml"), &ta)?;
        let cb = write(&dir.join("b.toml"), &tb)?;
        let b = Gateway::spawn_in("gw-b", &cb, &dir.join("b.log"), Some(b_ns.clone()));
        let a = Gateway::spawn_in("gw-a", &ca, &dir.join("a.log"), Some(a_ns.clone()));
        let mut line = Line {
            kind: spec.kind,
            src,
            a_ns,
            r,
            b_ns,
            dst,
            a,
            b,
            dir,
            linkemu,
            eal_dirs: match spec.kind {
                Kind::Dpdk => ["a", "b"]
                    .iter()
                    .map(|side| Path::new("/var/run/dpdk").join(eal_prefix(tag, side)))
                    .collect(),
                Kind::Kernel => Vec::new(),
            },
            _tmp: tmp,
        };
        if spec.wrong_peer_key {
            return Ok(line);
        }
        let flows = format!("{} data flows", spec.data_flows);
        let up = ["tunnel up", flows.as_str()];
        let deadline = Instant::now() + Duration::from_secs(30);
        // Both at once: a gateway that exits (a config error) fails the start at once.
        while line.a.find_line(&up).is_none() || line.b.find_line(&up).is_none() {
            for g in [&mut line.a, &mut line.b] {
                if !g.is_running() {
                    return Err(format!(
                        "{} exited before the tunnel came up; log:\n{}",
                        g.name,
                        g.log_tail(20)
                    ));
                }
            }
            if Instant::now() > deadline {
                return Err(format!(
                    "the tunnel did not come up within 30 s\n{}",
                    line.logs()
                ));
            }
            thread::sleep(Duration::from_millis(20));
        }
        Ok(line)
    }

    /// Both gateways' last log lines, for failure messages.
    pub fn logs(&self) -> String {
        format!(
            "--- gw-a ({}):\n{}\n--- gw-b ({}):\n{}",
            self.dir.join("a.log").display(),
            self.a.log_tail(40),
            self.dir.join("b.log").display(),
            self.b.log_tail(40)
        )
    }

    /// Inserts an iptables rule at the top of `r`'s FORWARD chain (ahead of the emulator's
    /// queue); returns it for [`Line::delete_rule`].
    pub fn forward_rule(&self, rule: &[&str]) -> Vec<String> {
        let rule: Vec<String> = rule.iter().map(|s| s.to_string()).collect();
        run(self
            .r
            .command("iptables")
            .args(["-w", "-I", "FORWARD", "1"])
            .args(&rule))
        .unwrap_or_else(|e| panic!("iptables in the router: {e}"));
        rule
    }

    pub fn delete_rule(&self, rule: &[String]) {
        run(self
            .r
            .command("iptables")
            .args(["-w", "-D", "FORWARD"])
            .args(rule))
        .unwrap_or_else(|e| panic!("iptables in the router: {e}"));
    }

    /// Kills every connection of the tunnel at both ends: `r` answers each tunnel packet, either
    /// way, with an RST in the other end's name, until the dialler (A) has logged its control
    /// connection lost; then lets the path through again. Returns when it did.
    pub fn kill_tunnel_connections(&mut self) -> Instant {
        let port = TUNNEL_PORT.to_string();
        let (a, b) = (A_WAN.to_string(), B_WAN.to_string());
        let lost = self.a.count_lines(&["control connection lost"]);
        let to_b = self.forward_rule(&[
            "-p",
            "tcp",
            "-s",
            &a,
            "-d",
            &b,
            "--dport",
            &port,
            "-j",
            "REJECT",
            "--reject-with",
            "tcp-reset",
        ]);
        let to_a = self.forward_rule(&[
            "-p",
            "tcp",
            "-s",
            &b,
            "--sport",
            &port,
            "-d",
            &a,
            "-j",
            "REJECT",
            "--reject-with",
            "tcp-reset",
        ]);
        let deadline = Instant::now() + Duration::from_secs(20);
        while self.a.count_lines(&["control connection lost"]) <= lost {
            assert!(
                Instant::now() < deadline,
                "gw-a did not lose its control connection within 20 s of the RSTs\n{}",
                self.logs()
            );
            thread::sleep(Duration::from_millis(10));
        }
        // A moment for the flows' packets to meet their RSTs too.
        thread::sleep(Duration::from_millis(300));
        self.delete_rule(&to_b);
        self.delete_rule(&to_a);
        Instant::now()
    }

    /// Whether `g`'s tunnel is up with its control connection and every data flow.
    pub fn tunnel_whole(g: &Gateway, flows: usize) -> bool {
        let Ok(v) = g.status() else { return false };
        let t = &v["tunnel"];
        if t["state"].as_str() != Some("up") {
            return false;
        }
        let conns = t["connections"].as_array().cloned().unwrap_or_default();
        let control = conns.iter().filter(|c| c["kind"] == "control").count();
        let data = conns.iter().filter(|c| c["kind"] == "data").count();
        control == 1 && data == flows
    }

    /// Waits until both gateways have the whole tunnel again; how long it took, or `None`
    /// after `within`.
    pub fn wait_whole(&self, flows: usize, within: Duration) -> Option<Duration> {
        let start = Instant::now();
        while start.elapsed() < within {
            if Line::tunnel_whole(&self.a, flows) && Line::tunnel_whole(&self.b, flows) {
                return Some(start.elapsed());
            }
            thread::sleep(Duration::from_millis(50));
        }
        None
    }

    /// Where src connects to reach DST:`target` (an ingress port of A).
    pub fn ingress(port: u16) -> SocketAddr {
        SocketAddr::V4(SocketAddrV4::new(A_LAN, port))
    }
}

fn write(path: &Path, text: &str) -> Result<PathBuf, String> {
    std::fs::write(path, text).map_err(|e| format!("write {}: {e}", path.display()))?;
    Ok(path.to_path_buf())
}

/// Starts the link emulator in `r` between its two veths (half the RTT each way) and waits
/// until it answers.
fn start_linkemu(r: &NetNs, tag: &str, dir: &Path, rtt: u32) -> Result<Child, String> {
    let name = format!("ll-{tag}-{}", std::process::id());
    let log = std::fs::File::create(dir.join("linkemu.log")).map_err(|e| e.to_string())?;
    let mut cmd = r.command(linkemu_bin().to_str().expect("utf-8 path"));
    cmd.args([
        "up",
        "--foreground",
        "--no-realtime",
        "--name",
        &name,
        "--run-dir",
    ])
    .arg(dir)
    .args(["--dev-a", "ra", "--dev-b", "rb", "--rtt", &rtt.to_string()])
    .stdin(Stdio::null())
    .stdout(log.try_clone().map_err(|e| e.to_string())?)
    .stderr(log);
    die_with_parent(&mut cmd);
    let mut child = cmd.spawn().map_err(|e| format!("start linkemu: {e}"))?;
    // It logs "NAME up: …" once its queue rules are in place.
    let log_path = dir.join("linkemu.log");
    let up = format!("{name} up:");
    let deadline = Instant::now() + Duration::from_secs(10);
    while !std::fs::read_to_string(&log_path).is_ok_and(|l| l.contains(&up)) {
        if let Ok(Some(st)) = child.try_wait() {
            let log = std::fs::read_to_string(&log_path).unwrap_or_default();
            return Err(format!("linkemu exited ({st}): {log}"));
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            return Err("linkemu did not come up within 10 s".into());
        }
        thread::sleep(Duration::from_millis(20));
    }
    Ok(child)
}

//! One-sided failures of a tunnel connection (issue 13, part 1; docs/FAILURES.md): one end of the
//! control connection or of a data flow dies and the other end does not hear of it (its RST is
//! lost, as when a NAT or a firewall on the path loses state), or the connection goes silent in
//! one direction only. Whichever end notices first, the tunnel must carry on: the dialler
//! re-dials, the acceptor retires the old connection as soon as the new one attaches, and a late
//! death of the old connection must not touch the new one. Each case runs a paced duplex transfer
//! through the pair that outlives the old connection's timeout plus the grace period, and
//! requires equal hashes both ways, no `giving up`, and, at each end, one connection in the
//! broken connection's role (control, or data flow 1) once the new one is there.
//!
//! ```text
//!  src ── A ── 10.79.2.1 | r: 10.79.2.254  10.79.3.254 | 10.79.3.2 ── B ── dst
//!  10.79.1.2                 (forwards; iptables FORWARD)                  10.79.4.2
//! ```
//!
//! One namespace each; `r` routes between the gateways, and its iptables rules drop the packets
//! of one connection (its 4-tuple, from `lmas status`) in one direction. A dials with
//! `flow_timeout_secs = 2`, B accepts with 4; both have `grace_period_secs = 4`. The dialler
//! thus notices a dead connection first and re-dials while the acceptor's old connection is
//! still alive: the order in which a gateway that does not retire the old one breaks.
//!
//! The cases, for the control connection and for data flow 1, on kernel and on DPDK gateways:
//! the RST lost toward the acceptor (the dialler's end dies), the RST lost toward the dialler
//! (the acceptor's end dies), and silence toward either end (the other direction still flows).
//!
//! How one end dies without the other hearing of it:
//! - kernel gateways: `ss -K` on that end's socket, its RST dropped in `r`;
//! - DPDK gateways (no kernel socket to kill): `r` answers that end's packets with an RST in the
//!   other end's name (iptables `REJECT --reject-with tcp-reset`; the other direction is held
//!   meanwhile, so the RST's sequence number is exactly what that end expects), then lets the
//!   connection through again, except the RSTs that end now sends for it.
//!
//! Needs root, `ip`, `iptables`, `ss` and `ethtool`; the DPDK cases also the system DPDK with its
//! af_packet PMD. Skips with `SKIP: …` otherwise. Needs the release binary
//! (`cargo build --release -p lmas`).

use std::io::{self, ErrorKind, Write};
use std::net::{Ipv4Addr, Shutdown, SocketAddrV4, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};

use lmas_tests::dpdk_lab::{dpdk_available, Kind};
use lmas_tests::netns::{skip_unless_available, NetNs};
use lmas_tests::{
    connect, hex, keygen, recv_all, run_with_timeout, set_timeouts, temp_dir, DataGen, Gateway,
    Received, Sent,
};

const SRC: Ipv4Addr = Ipv4Addr::new(10, 79, 1, 2);
const A_LAN: Ipv4Addr = Ipv4Addr::new(10, 79, 1, 1);
const A_WAN: Ipv4Addr = Ipv4Addr::new(10, 79, 2, 1);
const R_A: Ipv4Addr = Ipv4Addr::new(10, 79, 2, 254);
const R_B: Ipv4Addr = Ipv4Addr::new(10, 79, 3, 254);
const B_WAN: Ipv4Addr = Ipv4Addr::new(10, 79, 3, 2);
const B_LAN: Ipv4Addr = Ipv4Addr::new(10, 79, 4, 1);
const DST: Ipv4Addr = Ipv4Addr::new(10, 79, 4, 2);
const TUNNEL_PORT: u16 = 7700;
const INGRESS_PORT: u16 = 6000;
const TARGET_PORT: u16 = 5000;

const FLOWS: u32 = 2;
/// The data flow the flow cases break.
const FLOW: u16 = 1;
const DIALLER_FLOW_TIMEOUT: Duration = Duration::from_secs(2);
const ACCEPTOR_FLOW_TIMEOUT: Duration = Duration::from_secs(4);
const GRACE: Duration = Duration::from_secs(4);
const MIB: f64 = (1u64 << 20) as f64;
/// Each way: far below what either datapath carries here, so the transfer is steady.
const RATE: f64 = 4.0 * MIB;
const WAIT: Duration = Duration::from_secs(30);

/// DPDK gateways poll: one DPDK case at a time keeps a small machine responsive.
static DPDK_SERIAL: Mutex<()> = Mutex::new(());

/// Which connection of the tunnel breaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Conn {
    Control,
    Flow(u16),
}

impl Conn {
    fn matches(self, row: &Row) -> bool {
        match self {
            Conn::Control => row.kind == "control",
            Conn::Flow(k) => row.kind == "data" && row.flow == Some(k),
        }
    }

    /// What a gateway logs when this connection dies.
    fn lost_line(self) -> Vec<String> {
        match self {
            Conn::Control => vec!["control connection lost".into()],
            Conn::Flow(k) => vec![format!("data flow {k} lost")],
        }
    }
}

/// The two ends of the tunnel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum End {
    Dialler,
    Acceptor,
}

/// What happens to the connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fault {
    /// The dialler's end dies; its RST never reaches the acceptor.
    RstLostTowardAcceptor,
    /// The acceptor's end dies; its RST never reaches the dialler.
    RstLostTowardDialler,
    /// Every packet towards this end is dropped; the other direction still flows.
    SilentToward(End),
}

/// One row of `lmas status`'s connection list.
#[derive(Debug, Clone)]
struct Row {
    kind: String,
    flow: Option<u16>,
    local: SocketAddrV4,
    remote: SocketAddrV4,
}

/// The tunnel's state ("up" or "held") and connections, as `lmas status --json` shows them.
fn connections(g: &Gateway) -> Result<(String, Vec<Row>), String> {
    let v = g.status()?;
    let t = v
        .get("tunnel")
        .filter(|t| !t.is_null())
        .ok_or_else(|| format!("{}: no tunnel in lmas status", g.name))?;
    let state = t["state"].as_str().unwrap_or("?").to_string();
    let rows = t["connections"]
        .as_array()
        .map(|a| a.as_slice())
        .unwrap_or_default()
        .iter()
        .filter_map(|c| {
            Some(Row {
                kind: c["kind"].as_str()?.to_string(),
                flow: c["flow"].as_u64().map(|f| f as u16),
                local: c["local"].as_str()?.parse().ok()?,
                remote: c["remote"].as_str()?.parse().ok()?,
            })
        })
        .collect();
    Ok((state, rows))
}

/// Runs a command; its stdout, or an error with its stderr.
fn run(cmd: &mut Command) -> Result<String, String> {
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

// ---------------------------------------------------------------------------------------------
// The lab: five namespaces, two gateways

struct Lab {
    kind: Kind,
    src: Arc<NetNs>,
    a_ns: Arc<NetNs>,
    r: Arc<NetNs>,
    b_ns: Arc<NetNs>,
    dst: Arc<NetNs>,
    a: Gateway,
    b: Gateway,
    dir: PathBuf,
    /// The DPDK gateways' EAL runtime directories (`--file-prefix`), removed once they exit.
    eal_dirs: Vec<PathBuf>,
    _tmp: Option<tempfile::TempDir>,
}

impl Drop for Lab {
    fn drop(&mut self) {
        self.a.stop();
        self.b.stop();
        // Each is a few MB in /var/run (tmpfs); DPDK does not remove them itself.
        for d in &self.eal_dirs {
            let _ = std::fs::remove_dir_all(d);
        }
    }
}

fn datapath_line(kind: Kind) -> &'static str {
    match kind {
        Kind::Kernel => "",
        Kind::Dpdk => "datapath = \"dpdk\"\n",
    }
}

/// The `[dpdk]` section of a gateway whose veths are `{side}lan` and `{side}wan`, as in
/// `dpdk_lab`, plus the router as the WAN port's gateway.
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

/// The EAL `--file-prefix` of gateway `side`: unique per test and process.
fn eal_prefix(tag: &str, side: &str) -> String {
    format!("lmas-os-{tag}-{side}-{}", std::process::id())
}

fn write(path: &Path, text: &str) -> PathBuf {
    std::fs::write(path, text).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
    path.to_path_buf()
}

impl Lab {
    /// Namespaces, veths, routes, keys and configs; then B and A, and waits for the tunnel.
    fn start(tag: &str, kind: Kind) -> Result<Lab, String> {
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
        let kernel = kind == Kind::Kernel;
        // (namespace, interface, address when the kernel owns it)
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
        run(r.command("sysctl").args(["-qw", "net.ipv4.ip_forward=1"]))?;
        src.ip(&["route", "add", "default", "via", &A_LAN.to_string()])?;
        dst.ip(&["route", "add", "default", "via", &B_LAN.to_string()])?;
        if kernel {
            a_ns.ip(&["route", "add", "10.79.3.0/24", "via", &R_A.to_string()])?;
            b_ns.ip(&["route", "add", "10.79.2.0/24", "via", &R_B.to_string()])?;
        }
        let (dir, tmp) = temp_dir("lmas-one-sided-");
        let key_a = keygen(&dir.join("a.key"));
        let key_b = keygen(&dir.join("b.key"));
        let wan = |timeout: Duration| {
            format!(
                "[wan]\ndata_flows = {FLOWS}\nflow_timeout_secs = {}\ngrace_period_secs = {}\n",
                timeout.as_secs(),
                GRACE.as_secs()
            )
        };
        let mut ta = format!(
            "[gateway]\nname = \"gw-a\"\nprivate_key_file = \"a.key\"\n{}\
             [peer]\nname = \"gw-b\"\npublic_key = \"{}\"\nconnect = \"{B_WAN}:{TUNNEL_PORT}\"\n\
             {}[admin]\nsocket = \"{}\"\n\
             [[ingress]]\nmode = \"listen\"\nbind = \"{A_LAN}:{INGRESS_PORT}\"\ntarget = \"{DST}:{TARGET_PORT}\"\n",
            datapath_line(kind),
            key_b.public,
            wan(DIALLER_FLOW_TIMEOUT),
            dir.join("a.sock").display()
        );
        let mut tb = format!(
            "[gateway]\nname = \"gw-b\"\nprivate_key_file = \"b.key\"\ntunnel_listen = \"{B_WAN}:{TUNNEL_PORT}\"\n{}\
             [peer]\nname = \"gw-a\"\npublic_key = \"{}\"\n\
             {}[egress]\nallow = [\"{DST}:{TARGET_PORT}\"]\n\
             [admin]\nsocket = \"{}\"\n",
            datapath_line(kind),
            key_a.public,
            wan(ACCEPTOR_FLOW_TIMEOUT),
            dir.join("b.sock").display()
        );
        if kind == Kind::Dpdk {
            ta += &dpdk_section(tag, "a", A_LAN, A_WAN, R_A);
            tb += &dpdk_section(tag, "b", B_LAN, B_WAN, R_B);
        }
        let ca = write(&dir.join("a.toml"), &ta);
        let cb = write(&dir.join("b.toml"), &tb);
        let b = Gateway::spawn_in("gw-b", &cb, &dir.join("b.log"), Some(b_ns.clone()));
        let a = Gateway::spawn_in("gw-a", &ca, &dir.join("a.log"), Some(a_ns.clone()));
        let mut lab = Lab {
            kind,
            src,
            a_ns,
            r,
            b_ns,
            dst,
            a,
            b,
            dir,
            eal_dirs: match kind {
                Kind::Dpdk => ["a", "b"]
                    .iter()
                    .map(|side| Path::new("/var/run/dpdk").join(eal_prefix(tag, side)))
                    .collect(),
                Kind::Kernel => Vec::new(),
            },
            _tmp: tmp,
        };
        let flows = format!("{FLOWS} data flows");
        for g in [&mut lab.a, &mut lab.b] {
            g.wait_for_line(&["tunnel up", &flows], WAIT)?;
        }
        Ok(lab)
    }

    fn logs(&self) -> String {
        format!(
            "--- gw-a ({}):\n{}\n--- gw-b ({}):\n{}",
            self.dir.join("a.log").display(),
            self.a.log_tail(50),
            self.dir.join("b.log").display(),
            self.b.log_tail(50)
        )
    }

    /// Drops TCP packets from `from` to `to` in the router (only RSTs with `rst_only`); returns
    /// the rule so that it can be removed.
    fn drop_packets(&self, from: SocketAddrV4, to: SocketAddrV4, rst_only: bool) -> Vec<String> {
        self.rule(from, to, rst_only, &["DROP"])
    }

    /// Answers TCP packets from `from` to `to` with an RST to `from`, in `to`'s name, instead of
    /// forwarding them; returns the rule so that it can be removed.
    fn reset_sender(&self, from: SocketAddrV4, to: SocketAddrV4) -> Vec<String> {
        self.rule(from, to, false, &["REJECT", "--reject-with", "tcp-reset"])
    }

    fn rule(
        &self,
        from: SocketAddrV4,
        to: SocketAddrV4,
        rst_only: bool,
        target: &[&str],
    ) -> Vec<String> {
        let mut rule: Vec<String> = [
            "FORWARD".to_string(),
            "-p".into(),
            "tcp".into(),
            "-s".into(),
            from.ip().to_string(),
            "--sport".into(),
            from.port().to_string(),
            "-d".into(),
            to.ip().to_string(),
            "--dport".into(),
            to.port().to_string(),
        ]
        .into();
        if rst_only {
            rule.extend(["--tcp-flags".into(), "RST".into(), "RST".into()]);
        }
        rule.push("-j".into());
        rule.extend(target.iter().map(|t| t.to_string()));
        run(self.r.command("iptables").args(["-w", "-I"]).args(&rule))
            .unwrap_or_else(|e| panic!("iptables in the router: {e}"));
        rule
    }

    fn allow_again(&self, rule: &[String]) {
        run(self.r.command("iptables").args(["-w", "-D"]).args(rule))
            .unwrap_or_else(|e| panic!("iptables in the router: {e}"));
    }

    /// `ss -K` on the kernel socket `local` → `remote` in `ns` (it sends an RST).
    fn kill_socket(ns: &NetNs, local: SocketAddrV4, remote: SocketAddrV4) {
        let out = run(ns.command("ss").args([
            "-K",
            "-tnH",
            "state",
            "established",
            "src",
            &local.to_string(),
            "dst",
            &remote.to_string(),
        ]))
        .unwrap_or_else(|e| panic!("ss -K: {e}"));
        assert!(
            out.lines().count() == 1,
            "ss -K {local} -> {remote} should kill one socket (kernel with CONFIG_INET_DIAG_DESTROY), killed: {out:?}"
        );
    }

    fn gateway(&mut self, end: End) -> &mut Gateway {
        match end {
            End::Dialler => &mut self.a,
            End::Acceptor => &mut self.b,
        }
    }

    /// Waits until `end` logs one more line saying that `conn` died.
    fn wait_lost(&mut self, end: End, conn: Conn, before: usize, within: Duration) {
        let needles = conn.lost_line();
        let needles: Vec<&str> = needles.iter().map(String::as_str).collect();
        let deadline = Instant::now() + within;
        while self.gateway(end).count_lines(&needles) <= before {
            assert!(
                Instant::now() < deadline,
                "{end:?} did not log {needles:?} within {within:?}\n{}",
                self.logs()
            );
            thread::sleep(Duration::from_millis(20));
        }
    }
}

// ---------------------------------------------------------------------------------------------
// A paced duplex transfer that runs until told to stop

/// Sends the stream for `seed` at [`RATE`] until `stop`, then shuts down the write side.
fn send_paced(
    mut w: &TcpStream,
    seed: u64,
    stop: &AtomicBool,
    progress: &AtomicU64,
) -> io::Result<Sent> {
    let start = Instant::now();
    let mut gen = DataGen::new(seed);
    let mut buf = vec![0u8; 64 << 10];
    let mut h = Sha256::new();
    let mut sent = 0u64;
    while !stop.load(Ordering::Relaxed) {
        gen.fill(&mut buf);
        w.write_all(&buf)
            .map_err(|e| io::Error::new(e.kind(), format!("send after {sent} bytes: {e}")))?;
        h.update(&buf);
        sent += buf.len() as u64;
        progress.store(sent, Ordering::Relaxed);
        let due = start + Duration::from_secs_f64(sent as f64 / RATE);
        if let Some(wait) = due.checked_duration_since(Instant::now()) {
            thread::sleep(wait);
        }
    }
    w.shutdown(Shutdown::Write)?;
    Ok(Sent {
        bytes: sent,
        sha256: hex(&h.finalize()),
        secs: start.elapsed().as_secs_f64(),
    })
}

/// Sends (paced, until `stop`) and receives (to EOF) on `s` at once.
fn duplex_paced(
    s: TcpStream,
    seed: u64,
    stop: Arc<AtomicBool>,
    progress: Arc<AtomicU64>,
) -> io::Result<(Sent, Received)> {
    let w = s.try_clone()?;
    let writer = thread::spawn(move || send_paced(&w, seed, &stop, &progress));
    let got = recv_all(&mut &s);
    let sent = writer
        .join()
        .map_err(|_| io::Error::other("writer thread panicked"))?;
    Ok((sent?, got?))
}

struct Transfer {
    stop: Arc<AtomicBool>,
    up: Arc<AtomicU64>,
    down: Arc<AtomicU64>,
    client: JoinHandle<io::Result<(Sent, Received)>>,
    server: JoinHandle<io::Result<(Sent, Received)>>,
}

impl Transfer {
    /// src ⇄ dst through the gateways, both ways at once.
    fn start(lab: &Lab) -> Transfer {
        let stop = Arc::new(AtomicBool::new(false));
        let (up, down) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
        let listener = lab
            .dst
            .run(|| TcpListener::bind((DST, TARGET_PORT)))
            .expect("listen in dst");
        let (stop2, down2) = (stop.clone(), down.clone());
        let server = thread::spawn(move || {
            listener.set_nonblocking(true)?;
            let deadline = Instant::now() + WAIT;
            let s = loop {
                match listener.accept() {
                    Ok((s, _)) => break s,
                    Err(e) if e.kind() == ErrorKind::WouldBlock && Instant::now() < deadline => {
                        thread::sleep(Duration::from_millis(10))
                    }
                    Err(e) => return Err(io::Error::new(e.kind(), format!("accept: {e}"))),
                }
            };
            s.set_nonblocking(false)?;
            set_timeouts(&s)?;
            duplex_paced(s, 1302, stop2, down2)
        });
        let (stop2, up2) = (stop.clone(), up.clone());
        let ingress = SocketAddrV4::new(A_LAN, INGRESS_PORT);
        let client = lab
            .src
            .spawn(move || duplex_paced(connect(ingress)?, 1301, stop2, up2));
        Transfer {
            stop,
            up,
            down,
            client,
            server,
        }
    }

    fn wait_both_ways(&self, bytes: u64, lab: &Lab) {
        let deadline = Instant::now() + WAIT;
        while self.up.load(Ordering::Relaxed) < bytes || self.down.load(Ordering::Relaxed) < bytes {
            assert!(
                Instant::now() < deadline,
                "the transfer did not reach {bytes} bytes each way within {WAIT:?}\n{}",
                lab.logs()
            );
            thread::sleep(Duration::from_millis(20));
        }
    }

    /// Stops both senders and waits for both ends: (what src sent and got, what dst sent and got).
    #[allow(clippy::type_complexity)]
    fn finish(self) -> (io::Result<(Sent, Received)>, io::Result<(Sent, Received)>) {
        self.stop.store(true, Ordering::Relaxed);
        let join = |h: JoinHandle<io::Result<(Sent, Received)>>| {
            h.join()
                .unwrap_or_else(|_| Err(io::Error::other("thread panicked")))
        };
        (join(self.client), join(self.server))
    }
}

// ---------------------------------------------------------------------------------------------
// The cases

/// Watches both gateways after the fault until B lists a new connection in `conn`'s role, then
/// for a while longer: from 500 ms after that on, each end must list exactly one connection in
/// that role, and not the old one. Returns what went wrong, if anything (the caller asserts
/// after the transfer, so that a broken transfer is what a failure shows first).
fn watch_replacement(lab: &Lab, conn: Conn, old_a: SocketAddrV4, within: Duration) -> Vec<String> {
    let start = Instant::now();
    let role = |g: &Gateway| -> Vec<Row> {
        connections(g)
            .map(|(_, rows)| rows.into_iter().filter(|r| conn.matches(r)).collect())
            .unwrap_or_default()
    };
    let new_at = loop {
        if role(&lab.b).iter().any(|r| r.remote != old_a) {
            break Instant::now();
        }
        if start.elapsed() > within {
            return vec![format!(
                "gw-b listed no new connection for {conn:?} within {within:?} of the fault"
            )];
        }
        thread::sleep(Duration::from_millis(50));
    };
    eprintln!(
        "gw-b lists a new {conn:?} connection {:.1} s after the fault",
        (new_at - start).as_secs_f64()
    );
    let mut wrong = Vec::new();
    while new_at.elapsed() < Duration::from_millis(2000) {
        thread::sleep(Duration::from_millis(100));
        if new_at.elapsed() < Duration::from_millis(500) {
            continue;
        }
        let (a, b) = (role(&lab.a), role(&lab.b));
        let at = new_at.elapsed().as_secs_f64();
        if b.len() != 1 || b[0].remote == old_a {
            let list: Vec<String> = b.iter().map(|r| r.remote.to_string()).collect();
            wrong.push(format!(
                "{at:.1} s after the new {conn:?} connection attached, gw-b lists {} in that role (from {list:?}; the old one is from {old_a})",
                b.len()
            ));
        }
        if a.len() != 1 || a[0].local == old_a {
            let list: Vec<String> = a.iter().map(|r| r.local.to_string()).collect();
            wrong.push(format!(
                "{at:.1} s after the new {conn:?} connection attached, gw-a lists {} in that role (local {list:?}; the old one is {old_a})",
                a.len()
            ));
        }
    }
    wrong
}

fn skip(test: &str, kind: Kind) -> bool {
    if skip_unless_available(test) {
        return true;
    }
    for (tool, arg) in [("ss", "-V"), ("ethtool", "--version")] {
        let works = run_with_timeout(Command::new(tool).arg(arg), Duration::from_secs(10))
            .is_ok_and(|o| o.status.success());
        if !works {
            eprintln!("SKIP: {test}: `{tool}` is missing (scripts/install-deps.sh installs it)");
            return true;
        }
    }
    if kind == Kind::Dpdk {
        if let Err(why) = dpdk_available() {
            eprintln!("SKIP: {test}: {why}");
            return true;
        }
    }
    false
}

fn one_sided(test: &str, kind: Kind, conn: Conn, fault: Fault) {
    if skip(test, kind) {
        return;
    }
    // Namespace and DPDK file-prefix tag: the name's initials (control_rst_lost_toward_… → crlt…).
    let tag: String = test.split('_').filter_map(|w| w.chars().next()).collect();
    let tag = tag.as_str();
    let _serial =
        (kind == Kind::Dpdk).then(|| DPDK_SERIAL.lock().unwrap_or_else(|e| e.into_inner()));
    let began = Instant::now();
    let mut lab = Lab::start(tag, kind).unwrap_or_else(|e| panic!("{test}: setting up: {e}"));
    let transfer = Transfer::start(&lab);
    transfer.wait_both_ways(4 << 20, &lab);

    // The connection to break, as A sees it (B lists the same 4-tuple).
    let (_, rows) = connections(&lab.a).unwrap_or_else(|e| panic!("{e}"));
    let row = rows
        .iter()
        .find(|r| conn.matches(r))
        .unwrap_or_else(|| panic!("gw-a lists no {conn:?} connection: {rows:?}"))
        .clone();
    let (a_end, b_end) = (row.local, row.remote);
    let lost = conn.lost_line();
    let lost: Vec<&str> = lost.iter().map(String::as_str).collect();
    let (lost_a, lost_b) = (lab.a.count_lines(&lost), lab.b.count_lines(&lost));
    eprintln!("{test}: breaking {conn:?} {a_end} -> {b_end}: {fault:?}");

    let t0 = Instant::now();
    match (fault, kind) {
        (Fault::RstLostTowardAcceptor, Kind::Kernel) => {
            lab.drop_packets(a_end, b_end, true);
            Lab::kill_socket(&lab.a_ns, a_end, b_end);
        }
        (Fault::RstLostTowardDialler, Kind::Kernel) => {
            lab.drop_packets(b_end, a_end, true);
            Lab::kill_socket(&lab.b_ns, b_end, a_end);
        }
        (Fault::RstLostTowardAcceptor, Kind::Dpdk) => {
            lab.drop_packets(a_end, b_end, true);
            let hold = lab.drop_packets(b_end, a_end, false);
            let reset = lab.reset_sender(a_end, b_end);
            lab.wait_lost(End::Dialler, conn, lost_a, DIALLER_FLOW_TIMEOUT + WAIT);
            lab.allow_again(&reset);
            lab.allow_again(&hold);
        }
        (Fault::RstLostTowardDialler, Kind::Dpdk) => {
            lab.drop_packets(b_end, a_end, true);
            let hold = lab.drop_packets(a_end, b_end, false);
            let reset = lab.reset_sender(b_end, a_end);
            lab.wait_lost(End::Acceptor, conn, lost_b, ACCEPTOR_FLOW_TIMEOUT + WAIT);
            lab.allow_again(&reset);
            lab.allow_again(&hold);
        }
        (Fault::SilentToward(End::Dialler), _) => {
            lab.drop_packets(b_end, a_end, false);
        }
        (Fault::SilentToward(End::Acceptor), _) => {
            lab.drop_packets(a_end, b_end, false);
        }
    }
    let broken = t0.elapsed();
    eprintln!(
        "{test}: one end gone {:.1} s after the fault began",
        broken.as_secs_f64()
    );

    let wrong = watch_replacement(&lab, conn, a_end, ACCEPTOR_FLOW_TIMEOUT + WAIT);
    // Long enough for the acceptor's old connection to time out and a grace period to end
    // after that: a gateway that let the old connection's death count would give up by then.
    let until = t0 + broken + ACCEPTOR_FLOW_TIMEOUT + GRACE + Duration::from_millis(1500);
    thread::sleep(until.saturating_duration_since(Instant::now()));
    let (client, server) = transfer.finish();
    eprintln!(
        "{test}: transfer stopped {:.1} s after the fault began",
        t0.elapsed().as_secs_f64()
    );

    let summary = |g: &Gateway| {
        g.log()
            .lines()
            .filter(|l| {
                [
                    "lost",
                    "resumed",
                    "replaced",
                    "re-attached",
                    "giving up",
                    "holding",
                ]
                .iter()
                .any(|w| l.contains(w))
            })
            .collect::<Vec<_>>()
            .join("\n")
    };
    eprintln!("gw-a:\n{}\ngw-b:\n{}", summary(&lab.a), summary(&lab.b));
    let (c_sent, c_got) = client
        .unwrap_or_else(|e| panic!("{test}: the source's session broke: {e}\n{}", lab.logs()));
    let (s_sent, s_got) = server
        .unwrap_or_else(|e| panic!("{test}: the target's session broke: {e}\n{}", lab.logs()));
    eprintln!(
        "{test}: src -> dst {:.1} MiB, dst -> src {:.1} MiB",
        c_sent.bytes as f64 / MIB,
        s_sent.bytes as f64 / MIB
    );
    assert_eq!(
        (s_got.bytes, &s_got.sha256),
        (c_sent.bytes, &c_sent.sha256),
        "{test}: src -> dst arrived altered"
    );
    assert_eq!(
        (c_got.bytes, &c_got.sha256),
        (s_sent.bytes, &s_sent.sha256),
        "{test}: dst -> src arrived altered"
    );
    for g in [&lab.a, &lab.b] {
        for bad in ["giving up", "resetting", "does not know our tunnel"] {
            assert!(
                g.find_line(&[bad]).is_none(),
                "{test}: {} logged {bad:?}:\n{}",
                g.name,
                lab.logs()
            );
        }
        let (state, _) = connections(g).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(state, "up", "{test}: {}'s tunnel", g.name);
    }
    assert!(
        wrong.is_empty(),
        "{test}: the old connection was not retired ({} of the samples from 0.5 s to 2 s after the new one attached):\n{}\n{}",
        wrong.len(),
        wrong[..wrong.len().min(3)].join("\n"),
        lab.logs()
    );
    // The fault did happen: the dialler's end died and was replaced.
    assert!(
        lab.a.count_lines(&lost) > lost_a,
        "{test}: gw-a never lost {conn:?}\n{}",
        lab.logs()
    );
    if conn == Conn::Control {
        for g in [&lab.a, &lab.b] {
            assert!(
                g.find_line(&["resumed with"]).is_some(),
                "{test}: {} did not resume the tunnel\n{}",
                g.name,
                lab.logs()
            );
        }
    }
    for g in [&mut lab.a, &mut lab.b] {
        let st = g
            .terminate(Duration::from_secs(10))
            .unwrap_or_else(|e| panic!("{e}"));
        assert!(st.success(), "{} exited with {st}", g.name);
    }
    eprintln!(
        "{test}: passed in {:.1} s ({:?} datapath)",
        began.elapsed().as_secs_f64(),
        lab.kind
    );
}

// ---- the cases ----------------------------------------------------------------------------------

/// One test per connection, fault and datapath. Names end in the datapath, so that in name order
/// a DPDK case runs beside a kernel case (the DPDK cases take turns among themselves).
macro_rules! cases {
    ($($name:ident: $conn:expr, $fault:expr, $kind:ident;)*) => {
        $(
            #[test]
            fn $name() {
                one_sided(stringify!($name), Kind::$kind, $conn, $fault);
            }
        )*
    };
}

use End::{Acceptor, Dialler};
use Fault::{RstLostTowardAcceptor, RstLostTowardDialler, SilentToward};
const CONTROL: Conn = Conn::Control;
const DATA_FLOW: Conn = Conn::Flow(FLOW);

cases! {
    control_rst_lost_toward_acceptor_dpdk: CONTROL, RstLostTowardAcceptor, Dpdk;
    control_rst_lost_toward_acceptor_kernel: CONTROL, RstLostTowardAcceptor, Kernel;
    control_rst_lost_toward_dialler_dpdk: CONTROL, RstLostTowardDialler, Dpdk;
    control_rst_lost_toward_dialler_kernel: CONTROL, RstLostTowardDialler, Kernel;
    control_silent_toward_acceptor_dpdk: CONTROL, SilentToward(Acceptor), Dpdk;
    control_silent_toward_acceptor_kernel: CONTROL, SilentToward(Acceptor), Kernel;
    control_silent_toward_dialler_dpdk: CONTROL, SilentToward(Dialler), Dpdk;
    control_silent_toward_dialler_kernel: CONTROL, SilentToward(Dialler), Kernel;
    flow_rst_lost_toward_acceptor_dpdk: DATA_FLOW, RstLostTowardAcceptor, Dpdk;
    flow_rst_lost_toward_acceptor_kernel: DATA_FLOW, RstLostTowardAcceptor, Kernel;
    flow_rst_lost_toward_dialler_dpdk: DATA_FLOW, RstLostTowardDialler, Dpdk;
    flow_rst_lost_toward_dialler_kernel: DATA_FLOW, RstLostTowardDialler, Kernel;
    flow_silent_toward_acceptor_dpdk: DATA_FLOW, SilentToward(Acceptor), Dpdk;
    flow_silent_toward_acceptor_kernel: DATA_FLOW, SilentToward(Acceptor), Kernel;
    flow_silent_toward_dialler_dpdk: DATA_FLOW, SilentToward(Dialler), Dpdk;
    flow_silent_toward_dialler_kernel: DATA_FLOW, SilentToward(Dialler), Kernel;
}

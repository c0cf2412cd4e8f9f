//! Network namespaces for the fault tests: two gateways on either end of a veth "WAN" that a
//! test can cut and restore.
//!
//! - [`NetNs`]: a namespace named `lmft-<pid>-<n>-<tag>` (unique per process and test, so
//!   parallel tests and other people's labs never collide), loopback up, deleted on drop.
//!   [`NetNs::run`] / [`NetNs::spawn`] run a closure on a thread inside it: sockets created
//!   there stay in that namespace and can then be used from any thread. [`NetNs::command`]
//!   builds a `Command` whose process starts inside it (`setns` before `exec`).
//! - [`Wan`]: namespaces `a` and `b` joined by a veth pair (`10.231.0.1/24` in `a`,
//!   `10.231.0.2/24` in `b`); [`Wan::cut`] drops every packet arriving on either end (iptables
//!   `INPUT` DROP in both namespaces: a silent blackout, no error reaches either TCP stack),
//!   [`Wan::restore`] removes the rules. [`Wan::placement`] gives a [`crate::PairSpec`] what it
//!   needs to start gateway A in `a` and gateway B in `b`.
//!
//! Everything needs root, `ip` (iproute2) and, for cutting, `iptables`; [`available`] says why
//! not, and tests print `SKIP: …` and return.

use std::ffi::CString;
use std::io;
use std::net::{IpAddr, Ipv4Addr};
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};
use std::time::Duration;

use crate::run_with_timeout;

/// How long an `ip` or `iptables` command may take.
const CMD_TIMEOUT: Duration = Duration::from_secs(20);

/// The address of namespace `a` on the veth.
pub const A_IP: Ipv4Addr = Ipv4Addr::new(10, 231, 0, 1);
/// The address of namespace `b` on the veth.
pub const B_IP: Ipv4Addr = Ipv4Addr::new(10, 231, 0, 2);

/// Runs a command (with a timeout); an error with its stderr if it fails.
fn run(cmd: &mut Command) -> Result<String, String> {
    let out = run_with_timeout(cmd, CMD_TIMEOUT).map_err(|e| format!("{cmd:?}: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "{cmd:?} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Whether this machine can run the namespace tests: root, `ip netns` works, `iptables` exists.
/// The error says what is missing.
pub fn available() -> Result<(), String> {
    static RESULT: Mutex<Option<Result<(), String>>> = Mutex::new(None);
    let mut r = RESULT.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(r) = r.as_ref() {
        return r.clone();
    }
    let probe = (|| {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            return Err("network namespaces need root".to_string());
        }
        remove_stale();
        let ns = NetNs::new("probe").map_err(|e| format!("cannot create a namespace: {e}"))?;
        ns.run(|| std::net::TcpListener::bind("127.0.0.1:0").map(|_| ()))
            .map_err(|e| format!("cannot use a namespace: {e}"))?;
        run(ns.command("iptables").args(["-w", "-L", "INPUT", "-n"]))
            .map_err(|e| format!("iptables does not work in a namespace: {e}"))?;
        Ok(())
    })();
    *r = Some(probe.clone());
    probe
}

/// Deletes `lmft-<pid>-…` namespaces whose test process is gone (killed before its drop guards
/// ran, e.g. by a CI timeout). Only this prefix is touched.
fn remove_stale() {
    let Ok(dir) = std::fs::read_dir("/run/netns") else {
        return;
    };
    for e in dir.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let Some(pid) = name
            .strip_prefix("lmft-")
            .and_then(|r| r.split('-').next())
            .and_then(|p| p.parse::<u32>().ok())
        else {
            continue;
        };
        if !std::path::Path::new(&format!("/proc/{pid}")).exists() {
            eprintln!("removing stale namespace {name} (process {pid} is gone)");
            let _ = run(Command::new("ip").args(["netns", "del", &name]));
        }
    }
}

/// [`available`], printing `SKIP: <test>: <why>` on stderr when it is not.
pub fn skip_unless_available(test: &str) -> bool {
    match available() {
        Ok(()) => false,
        Err(why) => {
            eprintln!("SKIP: {test}: {why}");
            true
        }
    }
}

/// A network namespace, deleted on drop.
#[derive(Debug)]
pub struct NetNs {
    name: String,
}

fn setns_path(path: &CString) -> io::Result<()> {
    // SAFETY: open/setns/close with a valid NUL-terminated path; nothing is allocated, so this
    // is also safe between fork and exec.
    unsafe {
        let fd = libc::open(path.as_ptr(), libc::O_RDONLY | libc::O_CLOEXEC);
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        let r = libc::setns(fd, libc::CLONE_NEWNET);
        let err = io::Error::last_os_error();
        libc::close(fd);
        if r != 0 {
            return Err(err);
        }
    }
    Ok(())
}

impl NetNs {
    /// Creates `lmft-<pid>-<n>-<tag>` with its loopback up.
    pub fn new(tag: &str) -> io::Result<NetNs> {
        static SEQ: AtomicU32 = AtomicU32::new(0);
        let n = SEQ.fetch_add(1, Ordering::Relaxed);
        let name = format!("lmft-{}-{n}-{tag}", std::process::id());
        run(Command::new("ip").args(["netns", "add", &name])).map_err(io::Error::other)?;
        let ns = NetNs { name };
        ns.ip(&["link", "set", "lo", "up"])
            .map_err(io::Error::other)?;
        Ok(ns)
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// The namespace's file (`/run/netns/NAME`).
    pub fn path(&self) -> PathBuf {
        PathBuf::from("/run/netns").join(&self.name)
    }

    fn cpath(&self) -> CString {
        CString::new(self.path().into_os_string().into_encoded_bytes()).expect("no NUL in path")
    }

    /// `ip -n NAME ARGS…`.
    pub fn ip(&self, args: &[&str]) -> Result<String, String> {
        run(Command::new("ip").arg("-n").arg(&self.name).args(args))
    }

    /// A command whose process runs inside the namespace.
    pub fn command(&self, program: &str) -> Command {
        let mut cmd = Command::new(program);
        self.enter_on_exec(&mut cmd);
        cmd
    }

    /// Makes `cmd`'s process enter the namespace before it execs.
    pub fn enter_on_exec(&self, cmd: &mut Command) {
        let path = self.cpath();
        // SAFETY: the closure only makes async-signal-safe system calls (open, setns, close).
        unsafe {
            cmd.pre_exec(move || setns_path(&path));
        }
    }

    /// Runs `f` on a new thread inside the namespace and returns its result (a panic in `f`
    /// propagates).
    pub fn run<T, F>(&self, f: F) -> T
    where
        T: Send + 'static,
        F: FnOnce() -> T + Send + 'static,
    {
        match self.spawn(f).join() {
            Ok(v) => v,
            Err(p) => std::panic::resume_unwind(p),
        }
    }

    /// Runs `f` on a new thread inside the namespace.
    pub fn spawn<T, F>(&self, f: F) -> JoinHandle<T>
    where
        T: Send + 'static,
        F: FnOnce() -> T + Send + 'static,
    {
        let path = self.cpath();
        let name = self.name.clone();
        thread::spawn(move || {
            setns_path(&path).unwrap_or_else(|e| panic!("entering namespace {name}: {e}"));
            f()
        })
    }
}

impl Drop for NetNs {
    fn drop(&mut self) {
        if let Err(e) = run(Command::new("ip").args(["netns", "del", &self.name])) {
            eprintln!("warning: deleting namespace {}: {e}", self.name);
        }
    }
}

/// Where a [`crate::Pair`] runs its gateways: A in `a`, B in `b`, B's tunnel listener on
/// `tunnel_ip` (a free port is chosen).
#[derive(Debug, Clone)]
pub struct Placement {
    pub a: Arc<NetNs>,
    pub b: Arc<NetNs>,
    pub tunnel_ip: IpAddr,
}

/// Two namespaces joined by a veth pair that can be cut.
pub struct Wan {
    pub a: Arc<NetNs>,
    pub b: Arc<NetNs>,
    a_if: String,
    b_if: String,
    cut: bool,
}

impl Wan {
    /// Namespaces `a` (10.231.0.1) and `b` (10.231.0.2) joined by a veth pair.
    pub fn new() -> Result<Wan, String> {
        let a = Arc::new(NetNs::new("a").map_err(|e| e.to_string())?);
        let b = Arc::new(NetNs::new("b").map_err(|e| e.to_string())?);
        // Interface names are per namespace, so fixed names cannot collide.
        let (a_if, b_if) = ("wan-a".to_string(), "wan-b".to_string());
        run(Command::new("ip").args([
            "link",
            "add",
            &a_if,
            "netns",
            a.name(),
            "type",
            "veth",
            "peer",
            "name",
            &b_if,
            "netns",
            b.name(),
        ]))?;
        for (ns, ifname, ip) in [(&a, &a_if, A_IP), (&b, &b_if, B_IP)] {
            ns.ip(&["addr", "add", &format!("{ip}/24"), "dev", ifname])?;
            ns.ip(&["link", "set", ifname, "up"])?;
        }
        Ok(Wan {
            a,
            b,
            a_if,
            b_if,
            cut: false,
        })
    }

    /// A placement for [`crate::PairSpec::netns`]: gateway A in `a`, B in `b` listening on B's
    /// veth address.
    pub fn placement(&self) -> Placement {
        Placement {
            a: self.a.clone(),
            b: self.b.clone(),
            tunnel_ip: IpAddr::V4(B_IP),
        }
    }

    fn rule(&self, op: &str) -> Result<(), String> {
        for (ns, ifname) in [(&self.a, &self.a_if), (&self.b, &self.b_if)] {
            run(ns
                .command("iptables")
                .args(["-w", op, "INPUT", "-i", ifname, "-j", "DROP"]))?;
        }
        Ok(())
    }

    /// Blackout: every packet arriving on either end is dropped.
    pub fn cut(&mut self) {
        self.rule("-I").expect("cut the WAN (iptables)");
        self.cut = true;
    }

    /// Ends the blackout.
    pub fn restore(&mut self) {
        self.rule("-D").expect("restore the WAN (iptables)");
        self.cut = false;
    }

    pub fn is_cut(&self) -> bool {
        self.cut
    }
}

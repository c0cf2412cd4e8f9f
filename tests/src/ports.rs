//! Loopback ports: free ones not handed out before in this process, and waiting for a listener.

use super::*;

/// A free TCP port on 127.0.0.1, never handed out before by this process.
///
/// Ports come from below the kernel's ephemeral range (`ip_local_port_range`), so that the
/// source port of some outgoing connection (the gateways dial many) cannot take one between
/// this check and its use; only a process that binds that very port could.
pub fn free_port() -> u16 {
    static USED: Mutex<BTreeSet<u16>> = Mutex::new(BTreeSet::new());
    let ephemeral_low = fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|t| {
            t.split_whitespace()
                .next()
                .and_then(|v| v.parse::<u16>().ok())
        })
        .unwrap_or(32768);
    let (lo, hi) = if ephemeral_low > 12000 {
        (10000u16, ephemeral_low - 1)
    } else {
        (ephemeral_low, u16::MAX) // unusual setup: fall back to any port
    };
    let seed = std::process::id() as u64
        ^ std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0);
    let mut gen = DataGen::new(seed);
    let mut used = USED.lock().unwrap_or_else(|e| e.into_inner());
    for _ in 0..10_000 {
        let port = lo + (gen.next_u64() % u64::from(hi - lo)) as u16;
        if used.contains(&port) {
            continue;
        }
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            used.insert(port);
            return port;
        }
    }
    panic!("could not find a free loopback port in {lo}..{hi}");
}

/// `127.0.0.1:<free port>`.
pub fn free_addr() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], free_port()))
}

/// Whether some socket is in LISTEN state on `port` (IPv4 or IPv6), read from /proc/net/tcp*.
///
/// Used to wait for a gateway's tunnel listener without connecting to it (a probe connection
/// would make the gateway log a failed handshake).
pub fn port_is_listening(port: u16) -> bool {
    port_is_listening_in(None, port)
}

/// [`port_is_listening`] in the network namespace of process `pid` (`None`: this process's).
pub fn port_is_listening_in(pid: Option<u32>, port: u16) -> bool {
    let needle = format!(":{port:04X}");
    let dir = match pid {
        Some(pid) => format!("/proc/{pid}/net"),
        None => "/proc/net".to_string(),
    };
    ["tcp", "tcp6"].iter().any(|f| {
        fs::read_to_string(format!("{dir}/{f}")).is_ok_and(|text| {
            text.lines().skip(1).any(|line| {
                let mut cols = line.split_whitespace();
                let local = cols.nth(1).unwrap_or("");
                let state = cols.nth(1).unwrap_or("");
                local.ends_with(&needle) && state == "0A"
            })
        })
    })
}

/// Waits until something listens on `port`.
pub fn wait_listening(port: u16, timeout: Duration) -> Result<(), String> {
    wait_listening_in(None, port, timeout)
}

/// [`wait_listening`] in the network namespace of process `pid`.
pub fn wait_listening_in(pid: Option<u32>, port: u16, timeout: Duration) -> Result<(), String> {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if port_is_listening_in(pid, port) {
            return Ok(());
        }
        thread::sleep(Duration::from_millis(20));
    }
    Err(format!("nothing listens on port {port} after {timeout:?}"))
}

//! What this host's kernel offers WAN TCP, read from /proc: its congestion
//! controls. Config validation checks `wan.congestion` against them, and
//! the kernel datapath picks its default from them. Here rather than in
//! `kernel/` so that `admin/` depends on no datapath.

const AVAILABLE: &str = "/proc/sys/net/ipv4/tcp_available_congestion_control";
const ALLOWED: &str = "/proc/sys/net/ipv4/tcp_allowed_congestion_control";

/// Congestion control algorithms this kernel has (empty if unknown).
pub fn available_congestion() -> Vec<String> {
    read_list(AVAILABLE)
}

/// The default congestion control: BBR where the kernel lets this process
/// use it (any process if allowed, root if only available), else CUBIC.
pub fn default_congestion() -> String {
    let has_bbr = |list: Vec<String>| list.iter().any(|c| c == "bbr");
    let root = rustix::process::geteuid().is_root();
    if has_bbr(read_list(ALLOWED)) || (root && has_bbr(read_list(AVAILABLE))) {
        "bbr".into()
    } else {
        "cubic".into()
    }
}

fn read_list(path: &str) -> Vec<String> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .split_whitespace()
        .map(str::to_string)
        .collect()
}

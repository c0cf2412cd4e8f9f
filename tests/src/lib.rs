//! End-to-end harness for the `lmas` binaries.
//!
//! The tests in `tests/` and the `lmas-load` tool drive the real `lmas` binary; only
//! [`fake_peer`] (and the DPDK load tool) link against the gateway's library. What it offers:
//!
//! - [`lmas_bin`]: where the binary under test is (`LMAS_BIN`, else `<workspace>/target/release/lmas`).
//! - [`free_port`] / [`free_addr`]: loopback ports not handed out before in this process.
//! - [`keygen`]: a key pair made by `lmas keygen`.
//! - [`GatewayConfig`]: one gateway's TOML; [`PairSpec`] / [`Pair`]: gateway A dials gateway B.
//! - [`Gateway`]: a running `lmas run`, its stderr in a file, [`Gateway::wait_for_log`] with a
//!   deadline, killed on drop (and, through `PR_SET_PDEATHSIG`, when the test process dies).
//! - [`Sink`]: a server that hashes (SHA-256) every connection it accepts; [`send`]: a source of
//!   deterministic pseudo-random bytes ([`DataGen`]) that hashes what it sends; [`paced_send`]:
//!   the same at a bounded rate, so a transfer is still running when a test breaks something.
//! - [`netns`]: network namespaces joined by a veth "WAN" that a test can cut
//!   ([`PairSpec::netns`] runs the pair there); [`Gateway::kill`] / [`Gateway::spawn_again`]
//!   for restarts; [`Gateway::status`] / [`Gateway::counters`] read `lmas status --json`;
//!   [`Gateway::signal`] sends SIGHUP/SIGTERM, [`Gateway::wait_exit`] waits for the exit.
//! - [`prom`]: scrapes a metrics endpoint and parses the Prometheus text format strictly.
//! - [`line_lab`]: five namespaces in a line (src, A, router, B, dst) with a kernel or DPDK pair,
//!   an emulated delay and iptables in the router; [`flood`]: spoofed SYNs and silent
//!   connections from many addresses.
//! - [`script`]: runs one of the repository's `scripts/` with a timeout.
//! - [`fake_peer`]: a dialling gateway played by the test itself, built from the gateway's
//!   library (handshake, hello/welcome, sealed records), to send what a real gateway would not.
//!
//! Every wait has a deadline and every socket a read and write timeout: nothing here can hang.
//!
//! Running the end-to-end tests:
//!
//! ```text
//! cargo build --release -p lmas
//! cargo test --release -p lmas-tests     # a debug build works too, but hashes ~20x slower
//! ```
//!
//! Environment: `LMAS_BIN` (the binary under test), `LMAS_KEEP_TMP=1` (keep each test's
//! directory: configs, keys, gateway logs), `LMAS_TEST_RUST_LOG` (the gateways' `RUST_LOG`,
//! default `info`). `tests/resilience.rs` uses `ss -K` (iproute2, root).

use std::collections::BTreeSet;
use std::fmt::Write as _;
use std::fs::{self, File};
use std::io::{self, ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream, ToSocketAddrs};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};

pub mod dpdk_lab;
pub mod fake_peer;
pub mod flood;
pub mod line_lab;
pub mod many_sources;
pub mod netns;
pub mod prom;

/// Size of the buffers used to send and receive test data.
pub const IO_BUF: usize = 1 << 20;

/// How long a socket read or write may make no progress before it fails.
pub const IO_TIMEOUT: Duration = Duration::from_secs(60);

/// How long to wait for `tunnel up` on both gateways.
pub const TUNNEL_UP_TIMEOUT: Duration = Duration::from_secs(20);

/// How long a one-shot `lmas` command (keygen, check-config) may run.
pub const COMMAND_TIMEOUT: Duration = Duration::from_secs(30);

mod binary;
pub use binary::*;
mod ports;
pub use ports::*;
mod data;
pub use data::*;
mod sink;
pub use sink::*;
mod commands;
pub use commands::*;
mod keys;
pub use keys::*;
mod configs;
pub use configs::*;
mod gateway;
pub use gateway::*;
mod pair;
pub use pair::*;
mod packing_figures;
pub use packing_figures::*;

#[cfg(test)]
mod tests {
    use super::*;

    /// A command that outlives its deadline takes its whole process group with it: a
    /// script's gateways must not go on polling after the test gave up on the script.
    #[test]
    fn a_timed_out_command_leaves_no_children() {
        let dir = tempfile::tempdir().unwrap();
        let pid_file = dir.path().join("child.pid");
        let mut cmd = Command::new("bash");
        cmd.arg("-c").arg(format!(
            "sleep 300 & echo $! > {}; wait",
            pid_file.display()
        ));
        let err = run_with_timeout(&mut cmd, Duration::from_secs(1)).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::TimedOut);
        let pid: i32 = fs::read_to_string(&pid_file)
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        // The group was killed; the orphan, if any, is reaped by init shortly.
        let gone = (0..100).any(|_| {
            // Gone, or a zombie waiting for init to reap it.
            let alive = fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
                !stat
                    .rsplit(')')
                    .next()
                    .unwrap_or("")
                    .trim_start()
                    .starts_with('Z')
            });
            if alive {
                thread::sleep(Duration::from_millis(20));
            }
            !alive
        });
        if !gone {
            // SAFETY: the test's own child, killed so that it does not outlive the test.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
        assert!(gone, "the timed-out command's child {pid} still runs");
    }

    #[test]
    fn datagen_is_deterministic_and_chunking_independent() {
        let mut a = vec![0u8; 4096 + 5];
        DataGen::new(7).fill(&mut a);
        let mut b = vec![0u8; 4096 + 5];
        let mut g = DataGen::new(7);
        g.fill(&mut b[..1024]);
        g.fill(&mut b[1024..4096]);
        g.fill(&mut b[4096..]);
        assert_eq!(a, b);
        let mut c = vec![0u8; 4096 + 5];
        DataGen::new(8).fill(&mut c);
        assert_ne!(a, c);
    }

    #[test]
    fn expected_hash_matches_send_all() {
        for len in [0u64, 1, 7, 8, 9, IO_BUF as u64 + 3] {
            let mut v = Vec::new();
            let sent = send_all(&mut v, len, 42).unwrap();
            assert_eq!(v.len() as u64, len);
            assert_eq!(sent.sha256, hex(&Sha256::digest(&v)));
            assert_eq!(sent.sha256, expected_sha256(len, 42));
        }
    }

    #[test]
    fn direct_send_to_sink() {
        let sink = Sink::start();
        for (len, seed) in [(0u64, 1u64), (1, 2), (3 * IO_BUF as u64 + 11, 3)] {
            let sent = send(sink.addr(), len, seed).unwrap();
            let got = sink.recv(Duration::from_secs(30));
            assert_eq!(got.bytes, len);
            assert_eq!(got.sha256, sent.sha256);
        }
    }

    #[test]
    fn duplex_direct() {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        let server = thread::spawn(move || {
            let (s, _) = l.accept().unwrap();
            set_timeouts(&s).unwrap();
            duplex(&s, 5 << 20, 2).unwrap()
        });
        let c = connect(addr).unwrap();
        let (c_sent, c_recv) = duplex(&c, 3 << 20, 1).unwrap();
        let (s_sent, s_recv) = server.join().unwrap();
        assert_eq!(c_sent.sha256, s_recv.sha256);
        assert_eq!(s_sent.sha256, c_recv.sha256);
    }

    #[test]
    fn listening_probe() {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        assert!(port_is_listening(port));
        drop(l);
        assert!(!port_is_listening(port));
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_size("1G").unwrap(), 1 << 30);
        assert_eq!(parse_size("512MiB").unwrap(), 512 << 20);
        assert_eq!(parse_size("12345").unwrap(), 12345);
        assert!(parse_size("x").is_err());
        assert!(parse_size("1Q").is_err());
    }

    #[test]
    fn config_renders() {
        let c = GatewayConfig {
            name: "gw-a".into(),
            private_key_file: "gw-a.key".into(),
            psk_file: None,
            tunnel_listen: None,
            peer_name: "gw-b".into(),
            peer_public_key: "AAAA".into(),
            peer_connect: Some("127.0.0.1:7700".parse().unwrap()),
            data_flows: 8,
            congestion: None,
            ingress: vec![Ingress {
                bind: "127.0.0.1:6000".parse().unwrap(),
                target: "127.0.0.1:5000".into(),
            }],
            egress_allow: vec!["127.0.0.1:5000".into()],
            session_window_bytes: None,
            global_buffer_bytes: None,
            limits_extra: vec!["max_sessions = 2000".into()],
            wan_extra: Vec::new(),
            admin_socket: None,
            gateway_extra: vec!["drain_timeout_secs = 5".into()],
            metrics_bind: Some("127.0.0.1:9108".parse().unwrap()),
        };
        let t = c.to_toml();
        assert!(t.contains("connect = \"127.0.0.1:7700\""), "{t}");
        assert!(
            t.contains("[[ingress]]\nmode = \"listen\"\nbind = \"127.0.0.1:6000\""),
            "{t}"
        );
        assert!(t.contains("allow = [\"127.0.0.1:5000\"]"), "{t}");
        assert!(
            t.contains(
                "name = \"gw-a\"\nprivate_key_file = \"gw-a.key\"\ndrain_timeout_secs = 5\n"
            ),
            "{t}"
        );
        assert!(t.contains("[limits]\nmax_sessions = 2000\n"), "{t}");
        assert!(t.ends_with("[metrics]\nbind = \"127.0.0.1:9108\"\n"), "{t}");
    }
}

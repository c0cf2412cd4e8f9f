//! `linkemu`: a packet-level WAN link emulator for kernels without netem.
//!
//! Run inside a router namespace that forwards between two devices (`a` and `b`):
//!
//! * delay: forwarded packets go to NFQUEUE (one queue per direction, metadata only, GSO
//!   aggregates whole); the daemon holds each until its one-way delay has passed and releases
//!   runs of packets with batch verdicts;
//! * loss: an XDP program on the ingress devices drops wire packets at random *before* GRO
//!   (attached only to directions with loss > 0 unless `--xdp-always`);
//! * rate: `tbf` on both egress devices, with a queue of about one bandwidth-delay product.
//!
//! ```text
//! linkemu up    --dev-a wan-a --dev-b wan-b --rtt 100 --loss 0.1 --rate 1000
//! linkemu set   --rtt 200 --loss 1
//! linkemu stats
//! linkemu down
//! ```
#![deny(unsafe_code)]

#[allow(unsafe_code)]
mod bpf;
mod daemon;
mod link;
#[allow(unsafe_code)]
mod nfqueue;
#[allow(unsafe_code)]
mod sys;

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::{Args, Parser, Subcommand};

use link::{Change, Params};

#[derive(Parser)]
#[command(version, about = "WAN link emulator: NFQUEUE delay, XDP loss, tbf rate", long_about = None)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Args, Clone)]
struct Where {
    /// Name of the link (several links can run side by side).
    #[arg(long, default_value = "wan")]
    name: String,
    /// Directory of the control socket (NAME.sock) and log (NAME.log).
    #[arg(long, default_value = "/run/linkemu")]
    run_dir: PathBuf,
}

impl Where {
    fn socket(&self) -> PathBuf {
        self.run_dir.join(format!("{}.sock", self.name))
    }
    fn log(&self) -> PathBuf {
        self.run_dir.join(format!("{}.log", self.name))
    }
}

/// Link settings. "ab" is traffic entering on --dev-a, "ba" traffic entering on --dev-b.
#[derive(Args, Clone, Default)]
struct LinkArgs {
    /// Round-trip time to emulate, ms (half of it each way).
    #[arg(long, value_name = "MS")]
    rtt: Option<f64>,
    /// One-way delay, both directions, ms.
    #[arg(long, value_name = "MS")]
    delay: Option<f64>,
    /// One-way delay a→b, ms.
    #[arg(long, value_name = "MS")]
    delay_ab: Option<f64>,
    /// One-way delay b→a, ms.
    #[arg(long, value_name = "MS")]
    delay_ba: Option<f64>,
    /// Uniform delay jitter ± MS, both directions (packets keep their order).
    #[arg(long, value_name = "MS")]
    jitter: Option<f64>,
    /// Random loss of wire packets, percent, both directions.
    #[arg(long, value_name = "PCT")]
    loss: Option<f64>,
    /// Random loss a→b, percent.
    #[arg(long, value_name = "PCT")]
    loss_ab: Option<f64>,
    /// Random loss b→a, percent.
    #[arg(long, value_name = "PCT")]
    loss_ba: Option<f64>,
    /// Rate limit per direction, Mbit/s (0 = unlimited).
    #[arg(long, value_name = "MBIT")]
    rate: Option<f64>,
    /// tbf queue size, bytes (0 = automatic: one BDP, at least 256 KiB).
    #[arg(long, value_name = "BYTES")]
    queue_bytes: Option<u64>,
}

impl LinkArgs {
    fn change(&self) -> Result<Change> {
        let half = self.rtt.map(|r| r / 2.0);
        let delay = self.delay.or(half);
        let c = Change {
            delay_ab: self.delay_ab.or(delay),
            delay_ba: self.delay_ba.or(delay),
            jitter_ab: self.jitter,
            jitter_ba: self.jitter,
            loss_ab: self.loss_ab.or(self.loss),
            loss_ba: self.loss_ba.or(self.loss),
            rate_mbit: self.rate,
            queue_bytes: self.queue_bytes,
        };
        // Validate through the same parser the control socket uses.
        Change::parse(&c.to_string())
    }
}

#[derive(Subcommand)]
enum Cmd {
    /// Start the link daemon in the current network namespace (in the background unless
    /// --foreground) and wait until it is ready.
    Up {
        #[command(flatten)]
        at: Where,
        /// Router device towards side a.
        #[arg(long)]
        dev_a: String,
        /// Router device towards side b.
        #[arg(long)]
        dev_b: String,
        /// First of the two NFQUEUE numbers used (a→b, b→a).
        #[arg(long, default_value_t = 0)]
        queue_base: u16,
        /// Run in the foreground (logs to stderr; Ctrl-C tears the link down).
        #[arg(long)]
        foreground: bool,
        /// Keep the XDP loss program attached while loss is 0 too (by default it is attached
        /// only to directions with loss, see docs/LAB.md).
        #[arg(long)]
        xdp_always: bool,
        /// Do not run the delay loop under SCHED_FIFO.
        #[arg(long)]
        no_realtime: bool,
        #[command(flatten)]
        link: LinkArgs,
    },
    /// Change settings of a running link; unspecified settings are kept.
    Set {
        #[command(flatten)]
        at: Where,
        #[command(flatten)]
        link: LinkArgs,
    },
    /// Print settings and counters (delayed, lost, shaped packets) of a running link.
    Stats {
        #[command(flatten)]
        at: Where,
        /// Restart the lateness statistics after printing.
        #[arg(long)]
        reset: bool,
    },
    /// Stop the link daemon; it removes its XDP program, queue rules and qdiscs.
    Down {
        #[command(flatten)]
        at: Where,
    },
}

fn main() {
    if let Err(e) = run(Cli::parse()) {
        eprintln!("linkemu: error: {e:#}");
        std::process::exit(1);
    }
}

fn run(cli: Cli) -> Result<()> {
    match cli.cmd {
        Cmd::Up {
            at,
            dev_a,
            dev_b,
            queue_base,
            foreground,
            xdp_always,
            no_realtime,
            link,
        } => {
            if !sys::is_root() {
                bail!("must run as root (XDP, NFQUEUE and tc need CAP_NET_ADMIN/CAP_BPF)");
            }
            let mut params = Params::default();
            link.change()?.apply(&mut params);
            if foreground {
                return daemon::run(daemon::Options {
                    name: at.name.clone(),
                    dev_a,
                    dev_b,
                    queue_base,
                    socket: at.socket(),
                    params,
                    xdp_always,
                    realtime: !no_realtime,
                });
            }
            up_background(&at)
        }
        Cmd::Set { at, link } => {
            let c = link.change()?;
            if c.is_empty() {
                bail!("nothing to set (see linkemu set --help)");
            }
            let reply = daemon::request(&at.socket(), &format!("set {c}"))?;
            print!("{reply}");
            if reply.starts_with("error") {
                std::process::exit(1);
            }
            Ok(())
        }
        Cmd::Stats { at, reset } => {
            let cmd = if reset { "stats-reset" } else { "stats" };
            print!("{}", daemon::request(&at.socket(), cmd)?);
            Ok(())
        }
        Cmd::Down { at } => {
            let sock = at.socket();
            if daemon::request(&sock, "stats").is_err() {
                println!("linkemu {}: not running", at.name);
                let _ = std::fs::remove_file(&sock);
                return Ok(());
            }
            daemon::request(&sock, "quit")?;
            let t0 = Instant::now();
            while sock.exists() && t0.elapsed() < Duration::from_secs(10) {
                std::thread::sleep(Duration::from_millis(50));
            }
            if sock.exists() {
                bail!("linkemu {} did not stop within 10 s", at.name);
            }
            println!("linkemu {}: down", at.name);
            Ok(())
        }
    }
}

/// Re-executes this binary with `--foreground`, detached, logging to NAME.log; waits until the
/// control socket answers.
fn up_background(at: &Where) -> Result<()> {
    use std::os::unix::process::CommandExt;

    let sock = at.socket();
    if let Ok(reply) = daemon::request(&sock, "stats") {
        let first = reply.lines().next().unwrap_or_default().to_string();
        bail!(
            "link {} is already up ({first}); use `linkemu set` or `linkemu down`",
            at.name
        );
    }
    std::fs::create_dir_all(&at.run_dir)
        .with_context(|| format!("create {}", at.run_dir.display()))?;
    let log_path = at.log();
    let log = std::fs::File::create(&log_path)
        .with_context(|| format!("create {}", log_path.display()))?;
    let exe = std::env::current_exe()?;
    let mut child = Command::new(exe)
        .args(std::env::args_os().skip(1))
        .arg("--foreground")
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .process_group(0)
        .spawn()
        .context("spawn linkemu daemon")?;
    let t0 = Instant::now();
    loop {
        if let Ok(reply) = daemon::request(&sock, "stats") {
            print!("{reply}");
            return Ok(());
        }
        if let Some(status) = child.try_wait()? {
            let log = std::fs::read_to_string(&log_path).unwrap_or_default();
            bail!("linkemu daemon exited ({status}):\n{}", log.trim_end());
        }
        if t0.elapsed() > Duration::from_secs(10) {
            let _ = child.kill();
            bail!(
                "linkemu daemon not ready after 10 s (log: {})",
                log_path.display()
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

//! The `lmas` command: run a gateway, generate keys, check a config.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use lmas::admin::Config;
use lmas::crypto::StaticKeypair;

#[derive(Parser)]
#[command(name = "lmas", version, about = "Live-migration acceleration gateway")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run a gateway. SIGHUP re-reads the egress allowlist; SIGTERM/SIGINT
    /// drain sessions (gateway.drain_timeout_secs), reset the rest and exit.
    Run {
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Generate a key pair: writes OUT (private, mode 0600) and OUT.pub, and
    /// prints the public key.
    Keygen {
        #[arg(long, short)]
        out: PathBuf,
    },
    /// Validate a config file (and the key files it names) without running.
    CheckConfig { config: PathBuf },
    /// Show a running gateway: tunnel, WAN connections (RTT, cwnd,
    /// retransmits), sessions and counters, over its admin socket.
    Status {
        /// The gateway's config file (its admin.socket is used).
        #[arg(long, short)]
        config: Option<PathBuf>,
        /// The admin socket (default: from --config, else the only one in /run/lmas).
        #[arg(long)]
        socket: Option<PathBuf>,
        /// Print JSON (for scripts).
        #[arg(long)]
        json: bool,
        /// Refresh every SECS seconds (default 1) with per-session goodput.
        #[arg(long, value_name = "SECS", num_args = 0..=1, default_missing_value = "1")]
        watch: Option<f64>,
    },
}

fn status_socket(config: Option<PathBuf>, socket: Option<PathBuf>) -> anyhow::Result<PathBuf> {
    match (socket, config) {
        (Some(s), _) => Ok(s),
        (None, Some(c)) => Ok(Config::load(&c)?.admin_socket),
        (None, None) => lmas::admin::client::default_socket(),
    }
}

fn main() -> ExitCode {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).init();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Run { config } => {
            Config::load(&config)
                .map_err(anyhow::Error::from)
                .and_then(|c| match c.datapath {
                    lmas::admin::Datapath::Kernel => lmas::kernel::run(c).map_err(Into::into),
                    lmas::admin::Datapath::Dpdk(_) => lmas::dpdk::run(c).map_err(Into::into),
                })
        }
        Command::Keygen { out } => StaticKeypair::generate()
            .and_then(|kp| kp.write(&out).map(|_| kp))
            .map(|kp| println!("{}", kp.public))
            .map_err(anyhow::Error::from),
        Command::CheckConfig { config } => Config::load(&config)
            .map(|c| {
                println!(
                    "{}: ok (gateway {}, peer {}, {} data flows)",
                    config.display(),
                    c.name,
                    c.peer_name,
                    c.data_flows
                )
            })
            .map_err(anyhow::Error::from),
        Command::Status {
            config,
            socket,
            json,
            watch,
        } => status_socket(config, socket)
            .and_then(|path| lmas::admin::client::run(&path, json, watch)),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

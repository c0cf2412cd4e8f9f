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
    /// Run a gateway until SIGINT/SIGTERM.
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
}

fn main() -> ExitCode {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).init();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Run { config } => Config::load(&config)
            .map_err(anyhow::Error::from)
            .and_then(lmas::kernel::run),
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
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

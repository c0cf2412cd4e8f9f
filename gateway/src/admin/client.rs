//! The `lmas status` side of the admin socket.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

use super::Status;

/// Where gateways put their admin sockets by default.
pub const DEFAULT_SOCKET_DIR: &str = "/run/lmas";

/// Asks the gateway at `socket` for its status.
pub fn query(socket: &Path) -> anyhow::Result<Status> {
    let mut stream = UnixStream::connect(socket).with_context(|| {
        format!(
            "{}: cannot connect (is the gateway running? are you root or in its group?)",
            socket.display()
        )
    })?;
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    stream.write_all(b"status\n")?;
    let mut line = String::new();
    BufReader::new(stream)
        .read_line(&mut line)
        .with_context(|| format!("{}: reading the reply", socket.display()))?;
    serde_json::from_str(&line)
        .with_context(|| format!("{}: unexpected reply {:?}", socket.display(), line.trim()))
}

/// The only socket in the default directory, if there is exactly one.
pub fn default_socket() -> anyhow::Result<PathBuf> {
    let entries: Vec<PathBuf> = std::fs::read_dir(DEFAULT_SOCKET_DIR)
        .map(|d| {
            d.filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.extension().is_some_and(|x| x == "sock"))
                .collect()
        })
        .unwrap_or_default();
    match entries.as_slice() {
        [one] => Ok(one.clone()),
        [] => bail!(
            "no gateway admin socket in {DEFAULT_SOCKET_DIR}: pass --config FILE or --socket PATH"
        ),
        many => {
            bail!(
            "several gateways in {DEFAULT_SOCKET_DIR} ({}): pass --config FILE or --socket PATH",
            many.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(", ")
        )
        }
    }
}

/// Bytes up and down per session id.
type SessionBytes = BTreeMap<u64, (u64, u64)>;

/// Prints the status once, or every `watch` seconds with per-session goodput.
pub fn run(socket: &Path, json: bool, watch: Option<f64>) -> anyhow::Result<()> {
    let Some(every) = watch else {
        let status = query(socket)?;
        if json {
            println!("{}", serde_json::to_string_pretty(&status)?);
        } else {
            print!("{}", status.render(&BTreeMap::new()));
        }
        return Ok(());
    };
    if !(every > 0.0 && every.is_finite()) {
        bail!("--watch: interval must be a positive number of seconds");
    }
    let mut last: Option<(Instant, SessionBytes)> = None;
    loop {
        let status = query(socket)?;
        let now = Instant::now();
        let bytes: SessionBytes = status
            .tunnel
            .iter()
            .flat_map(|t| {
                t.sessions
                    .iter()
                    .map(|s| (s.id, (s.bytes_up, s.bytes_down)))
            })
            .collect();
        let mut rates = BTreeMap::new();
        if let Some((then, before)) = &last {
            let secs = now.duration_since(*then).as_secs_f64().max(1e-3);
            for (id, (up, down)) in &bytes {
                if let Some((up0, down0)) = before.get(id) {
                    rates.insert(
                        *id,
                        ((up - up0) as f64 / secs, (down - down0) as f64 / secs),
                    );
                }
            }
        }
        if json {
            println!("{}", serde_json::to_string(&status)?);
        } else {
            print!("\x1b[2J\x1b[H{}", status.render(&rates));
        }
        std::io::stdout().flush()?;
        last = Some((now, bytes));
        std::thread::sleep(Duration::from_secs_f64(every));
    }
}

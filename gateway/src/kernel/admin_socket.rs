//! The local admin socket: `lmas status` connects, sends `status`, and gets
//! the gateway's state as one line of JSON. Mode 0660, so root and the
//! socket's group can read it; nothing here changes the gateway's state.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::sync::Arc;

use log::{info, warn};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};

use super::Gateway;

/// Longest command line accepted from a client.
const MAX_COMMAND: usize = 256;

/// Binds the admin socket. A stale socket file (no gateway answering) is
/// replaced; one in use by a running gateway is left alone and status is
/// disabled for this process, with a warning (status is not worth failing
/// the datapath for).
pub fn bind(path: &Path) -> Option<UnixListener> {
    if let Some(dir) = path.parent() {
        let _ = std::fs::create_dir_all(dir);
    }
    if path.exists() {
        if std::os::unix::net::UnixStream::connect(path).is_ok() {
            warn!("admin socket {} is in use by another gateway; `lmas status` is disabled for this one (set admin.socket)", path.display());
            return None;
        }
        let _ = std::fs::remove_file(path);
    }
    match UnixListener::bind(path) {
        Ok(l) => {
            let _ = std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o660));
            info!("admin socket {}", path.display());
            Some(l)
        }
        Err(e) => {
            warn!(
                "admin socket {}: {e}; `lmas status` is disabled",
                path.display()
            );
            None
        }
    }
}

pub async fn serve(gateway: Arc<Gateway>, listener: UnixListener) {
    loop {
        match listener.accept().await {
            Ok((stream, _)) => {
                tokio::spawn(answer(gateway.clone(), stream));
            }
            Err(e) => {
                warn!("admin socket: accept: {e}");
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            }
        }
    }
}

async fn answer(gateway: Arc<Gateway>, stream: UnixStream) {
    let (r, mut w) = stream.into_split();
    let mut line = String::new();
    let mut reader = BufReader::new(r.take(MAX_COMMAND as u64));
    let read = tokio::time::timeout(
        std::time::Duration::from_secs(5),
        reader.read_line(&mut line),
    )
    .await;
    let reply = match (read, line.trim()) {
        (Ok(Ok(_)), "status") => match serde_json::to_string(&gateway.status()) {
            Ok(json) => json,
            Err(e) => format!("{{\"error\":\"{e}\"}}"),
        },
        (Ok(Ok(_)), other) => format!(
            "{{\"error\":\"unknown command {:?}; try status\"}}",
            other.escape_default().to_string()
        ),
        _ => return,
    };
    let _ = w.write_all(reply.as_bytes()).await;
    let _ = w.write_all(b"\n").await;
}

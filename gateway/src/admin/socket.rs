//! The local admin socket: `lmas status` connects, sends `status`, and gets
//! the gateway's state as one line of JSON. Mode 0660, so root and the
//! socket's group can read it; nothing here changes the gateway's state.
//!
//! Datapath-agnostic: it serves whatever [`StatusSource`] it is given, on the
//! caller's tokio runtime. A client gets at most [`MAX_COMMAND`] bytes and
//! [`COMMAND_TIMEOUT`] to say what it wants; anything else is answered with
//! an error line or dropped.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::sync::Arc;

use log::{info, warn};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};

use super::StatusSource;

/// Longest command line accepted from a client.
pub const MAX_COMMAND: usize = 256;
/// How long a client may take to send its command.
pub const COMMAND_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

/// Binds the admin socket. A stale socket file (no gateway answering) is
/// replaced; one in use by a running gateway, or a path that is not a
/// socket at all (a mistyped `admin.socket`), is left alone and status is
/// disabled for this process, with a warning (status is not worth failing
/// the datapath for).
pub fn bind(path: &Path) -> Option<UnixListener> {
    if let Some(dir) = path.parent() {
        let _ = std::fs::create_dir_all(dir);
    }
    if let Ok(meta) = std::fs::symlink_metadata(path) {
        use std::os::unix::fs::FileTypeExt;
        if !meta.file_type().is_socket() {
            warn!("admin socket {}: something that is not a socket is there; leaving it alone, `lmas status` is disabled (set admin.socket)", path.display());
            return None;
        }
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

/// Answers clients on `listener` until the task is dropped.
pub async fn serve(source: Arc<dyn StatusSource>, listener: UnixListener) {
    loop {
        match listener.accept().await {
            Ok((stream, _)) => {
                tokio::spawn(answer(source.clone(), stream));
            }
            Err(e) => {
                warn!("admin socket: accept: {e}");
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            }
        }
    }
}

async fn answer(source: Arc<dyn StatusSource>, stream: UnixStream) {
    let (r, mut w) = stream.into_split();
    let mut line = String::new();
    let mut reader = BufReader::new(r.take(MAX_COMMAND as u64));
    let read = tokio::time::timeout(COMMAND_TIMEOUT, reader.read_line(&mut line)).await;
    // Errors go through serde_json too, so the reply is always valid JSON
    // whatever the client sent.
    let error = |why: String| serde_json::json!({ "error": why }).to_string();
    let reply = match (read, line.trim()) {
        (Ok(Ok(_)), "status") => {
            serde_json::to_string(&source.status()).unwrap_or_else(|e| error(e.to_string()))
        }
        (Ok(Ok(_)), other) => error(format!("unknown command {other:?}; try status")),
        _ => return,
    };
    let _ = w.write_all(reply.as_bytes()).await;
    let _ = w.write_all(b"\n").await;
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A mistyped `admin.socket` pointing at a real file must not cost that file.
    #[tokio::test]
    async fn a_file_that_is_not_a_socket_is_left_alone() {
        let dir = std::env::temp_dir().join(format!("lmas-admin-sock-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("gw.toml");
        std::fs::write(&path, "precious").unwrap();
        assert!(bind(&path).is_none(), "bound over a regular file");
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "precious");
        // A stale socket (nobody listening) is still replaced.
        let stale = dir.join("stale.sock");
        drop(std::os::unix::net::UnixListener::bind(&stale).unwrap());
        assert!(bind(&stale).is_some(), "a stale socket was not replaced");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}

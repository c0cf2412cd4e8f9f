//! Moves one session's bytes between its local TCP connection (hypervisor
//! side) and the tunnel core, in both directions, with backpressure: the
//! uplink reads from the socket only while the core has send capacity.

use std::sync::Arc;

use bytes::BytesMut;
use log::debug;
use socket2::SockRef;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{ReadHalf, WriteHalf};
use tokio::net::TcpStream;

use super::sockopt::{close_gracefully, reset_on_close};
use super::tunnel::{wait_until, SessionSignals, Tunnel};
use crate::protocol::{ResetReason, SessionId};
use crate::session::{ReadOutcome, SessionError};

/// Runs a session until both directions are done or it is reset. A reset
/// (from the peer or because of a local error) closes the local connection
/// with RST, so it travels on to the endpoint. Until the session has ended
/// cleanly the socket is set to reset on close, so if this process dies the
/// endpoint sees an abort, never a clean end of a truncated stream.
pub async fn drive(
    tunnel: Arc<Tunnel>,
    id: SessionId,
    signals: Arc<SessionSignals>,
    mut stream: TcpStream,
) {
    reset_on_close(&SockRef::from(&stream));
    let (r, w) = stream.split();
    let pumps = async {
        tokio::join!(
            uplink(&tunnel, id, &signals, r),
            downlink(&tunnel, id, &signals, w)
        );
    };
    tokio::select! {
        _ = signals.reset.cancelled() => {}
        () = pumps => {}
    }
    match signals.reset_reason() {
        Some(reason) => debug!("session {id}: reset: {reason}"),
        None => close_gracefully(&SockRef::from(&stream)),
    }
}

/// Local socket -> tunnel.
async fn uplink(
    tunnel: &Arc<Tunnel>,
    id: SessionId,
    signals: &SessionSignals,
    mut r: ReadHalf<'_>,
) {
    let frame_len = tunnel.frame_len();
    loop {
        let capacity = wait_until(&signals.writable, || {
            match tunnel.with_core(|c| c.send_capacity(id)) {
                Ok(0) => None,
                other => Some(other),
            }
        })
        .await;
        let Ok(capacity) = capacity else { return };
        let mut buf = BytesMut::with_capacity((capacity as usize).min(frame_len));
        match r.read_buf(&mut buf).await {
            Ok(0) => {
                let _ = tunnel.with_core(|c| c.finish(id));
                return;
            }
            Ok(_) => {
                if tunnel.with_core(|c| c.write(id, buf.freeze())).is_err() {
                    return;
                }
            }
            Err(e) => {
                debug!("session {id}: read from endpoint: {e}");
                tunnel.with_core(|c| c.reset(id, ResetReason::ConnectionReset));
                return;
            }
        }
    }
}

/// Tunnel -> local socket.
async fn downlink(
    tunnel: &Arc<Tunnel>,
    id: SessionId,
    signals: &SessionSignals,
    mut w: WriteHalf<'_>,
) {
    loop {
        let out = wait_until(&signals.readable, || {
            let now = tunnel.now();
            match tunnel.with_core(|c| c.read(now, id)) {
                Ok(ReadOutcome::Blocked) => None,
                other => Some(other),
            }
        })
        .await;
        tunnel.poke_timer();
        match out {
            Ok(ReadOutcome::Data(data)) => {
                if let Err(e) = w.write_all(&data).await {
                    debug!("session {id}: write to endpoint: {e}");
                    tunnel.with_core(|c| c.reset(id, ResetReason::ConnectionReset));
                    return;
                }
            }
            Ok(ReadOutcome::Finished) => {
                let _ = w.shutdown().await;
                return;
            }
            Ok(ReadOutcome::Blocked) | Err(SessionError::Gone(_)) | Err(_) => return,
        }
    }
}

//! Moves one session's bytes between its local TCP connection (hypervisor
//! side) and the tunnel core, in both directions, with backpressure: the
//! uplink reads from the socket only while the core has send capacity.

use std::sync::Arc;

use std::time::Duration;

use bytes::{Bytes, BytesMut};
use log::debug;
use socket2::SockRef;
use tokio::io::AsyncWriteExt;
use tokio::net::tcp::{ReadHalf, WriteHalf};
use tokio::net::TcpStream;

use super::sockopt::{close_gracefully, local_endpoint};
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
    local_endpoint(&SockRef::from(&stream));
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

/// After a small read, how long the uplink waits for more bytes before it
/// hands them on, so that a client's small writes travel as one frame and
/// one record instead of one each (every record costs a header, a tag and a
/// queue entry). tokio's timers tick in milliseconds; a hypervisor's
/// stream is bulk, read full at once, and never waits.
const COALESCE: Duration = Duration::from_millis(1);

/// Local socket -> tunnel.
async fn uplink(tunnel: &Arc<Tunnel>, id: SessionId, signals: &SessionSignals, r: ReadHalf<'_>) {
    let frame_len = tunnel.frame_len();
    // What the socket has from its listener is not its share.
    let mut receive_buffer = None;
    // The share is set before anything else: the endpoint's congestion
    // window grows with what it may send while the peer accepts (a round
    // trip), and its send buffer with that, for good.
    if let Ok(share) = tunnel.with_core(|c| c.endpoint_receive_buffer(id)) {
        resize_receive_buffer(&r, id, &mut receive_buffer, share);
    }
    loop {
        let room = wait_until(&signals.writable, || {
            let room = tunnel.with_core(|c| {
                Ok::<_, SessionError>((c.send_capacity(id)?, c.endpoint_receive_buffer(id)?))
            });
            match room {
                Ok((0, _)) => None,
                other => Some(other),
            }
        })
        .await;
        let Ok((capacity, share)) = room else { return };
        resize_receive_buffer(&r, id, &mut receive_buffer, share);
        match read_coalesced(&r, (capacity as usize).min(frame_len)).await {
            Ok(None) => {
                let _ = tunnel.with_core(|c| c.finish(id));
                return;
            }
            Ok(Some(data)) => {
                if tunnel.with_core(|c| c.write(id, data)).is_err() {
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

/// Sets the socket's receive buffer to `share` if it has another
/// (`current`): the migration gained or lost a connection, or the tunnel's
/// rate moved, so its window was sized and split anew.
fn resize_receive_buffer(
    r: &ReadHalf<'_>,
    id: SessionId,
    current: &mut Option<u64>,
    share: Option<u64>,
) {
    let Some(bytes) = share.filter(|&b| Some(b) != *current) else {
        return;
    };
    *current = share;
    if let Err(e) = SockRef::from(r.as_ref()).set_recv_buffer_size(bytes as usize) {
        debug!("session {id}: SO_RCVBUF {bytes}: {e}");
    }
}

/// Reads up to `want` bytes once some are there; while they are few (under
/// a quarter of `want`), waits up to [`COALESCE`] for more. The result owns
/// about as much memory as it holds: a buffer filled less than half is
/// copied out, so a trickle of tiny reads cannot pin a frame-sized
/// allocation each. `None`: end of stream with nothing read.
async fn read_coalesced(r: &ReadHalf<'_>, want: usize) -> std::io::Result<Option<Bytes>> {
    let mut buf = BytesMut::new();
    let mut deadline = None;
    while buf.len() < want {
        match deadline {
            None => r.readable().await?,
            Some(at) => {
                if tokio::time::timeout_at(at, r.readable()).await.is_err() {
                    break;
                }
            }
        }
        if buf.capacity() == 0 {
            // Allocated only once bytes are waiting: an idle session holds none.
            buf.reserve(want);
        }
        match r.try_read_buf(&mut buf) {
            Ok(0) => break,
            Ok(_) if buf.len() >= want / 4 => break,
            Ok(_) => {
                deadline.get_or_insert_with(|| tokio::time::Instant::now() + COALESCE);
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(e) => return Err(e),
        }
    }
    Ok(match buf.len() {
        0 => None,
        n if n < buf.capacity() / 2 => Some(Bytes::copy_from_slice(&buf)),
        _ => Some(buf.freeze()),
    })
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

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::net::TcpListener;

    /// Real loopback sockets on a paused clock: time moves only when both
    /// tasks wait, so "close together" and "after a pause" are exact.
    #[tokio::test(start_paused = true)]
    async fn small_writes_close_together_travel_as_one_piece() {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let mut client = TcpStream::connect(l.local_addr().unwrap()).await.unwrap();
        let (mut server, _) = l.accept().await.unwrap();
        let writer = tokio::spawn(async move {
            for b in 0..10u8 {
                client.write_all(&[b]).await.unwrap();
                tokio::task::yield_now().await;
            }
            // Longer than COALESCE: the next byte is a piece of its own.
            tokio::time::sleep(COALESCE * 5).await;
            client.write_all(&[99]).await.unwrap();
            client.shutdown().await.unwrap();
            client
        });
        let (r, _w) = server.split();
        let first = read_coalesced(&r, 64 << 10).await.unwrap().unwrap();
        assert_eq!(&first[..], &(0..10).collect::<Vec<u8>>()[..]);
        let second = read_coalesced(&r, 64 << 10).await.unwrap().unwrap();
        assert_eq!(&second[..], &[99]);
        assert_eq!(
            read_coalesced(&r, 64 << 10).await.unwrap(),
            None,
            "end of stream"
        );
        drop(writer.await.unwrap());
    }

    #[tokio::test]
    async fn a_bulk_stream_arrives_whole() {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let mut client = TcpStream::connect(l.local_addr().unwrap()).await.unwrap();
        let (mut server, _) = l.accept().await.unwrap();
        client.write_all(&[5u8; 40_000]).await.unwrap();
        let (r, _w) = server.split();
        let mut got = 0;
        while got < 40_000 {
            let piece = read_coalesced(&r, 64 << 10).await.unwrap().unwrap();
            assert!(piece.iter().all(|&b| b == 5));
            got += piece.len();
        }
        assert_eq!(got, 40_000);
    }
}

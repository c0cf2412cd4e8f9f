//! The kernel's driver of the tunnel's lifecycle ([`crate::link::Lifecycle`]): one task per
//! WAN connection turns its socket into lifecycle events (dialled, keyed, a message, failed),
//! and [`Gateway::settle`] carries out what the lifecycle decides (send a hello, welcome or
//! attach, close a connection, dispose of a tunnel, dial). One mutex holds the lifecycle and
//! the kernel's side of each connection; it is held for short, non-blocking calls only.
//!
//! A connection's task: dial or accept it, run its handshake, then read its first messages
//! through the lifecycle until it is in place for a role; from then on it serves that role
//! ([`Tunnel::run_control`], [`Tunnel::run_flow`]) until it fails (reported) or the lifecycle
//! closes it (its `retire` token, nothing to report).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;

use log::warn;
use socket2::SockRef;
use tokio::net::{TcpSocket, TcpStream};
use tokio_util::sync::CancellationToken;

use super::conn::{handshake_acceptor, handshake_initiator, ConnInfo};
use super::lane::LaneLink;
use super::sockopt::tune_wan;
use super::tunnel::{serve_deadlines, Local, Tunnel};
use super::{Gateway, Reader, Writer};
use crate::link::{Action, ConnFailure, ConnRef, Lifecycle, Role};
use crate::protocol::Message;
use crate::transform::{Compression, PackNote};

/// The kernel's side of one WAN connection.
pub(super) struct Conn {
    /// Cancelled when the lifecycle closes the connection: its task ends, dropping the socket.
    retire: CancellationToken,
    /// Its socket's figures: an accepted connection's at once, a dialled one's once keyed.
    pub info: Option<Arc<ConnInfo>>,
    /// What the lifecycle asked to send on it (hello, welcome, attach), for its task to write
    /// after the event that asked (the lifecycle answers an event on a connection on that
    /// same connection, before it takes its role).
    outbox: Vec<Message>,
}

pub(super) type Conns = HashMap<ConnRef, Conn>;

/// The tunnel in the lifecycle and the kernel's handle on it.
struct Current {
    handle: Arc<Tunnel>,
    local: Local,
}

/// What the gateway's link mutex holds.
pub(super) struct Link {
    pub lifecycle: Lifecycle,
    conns: Conns,
    next_conn: ConnRef,
    current: Option<Current>,
    /// The deadline the timer task sleeps toward.
    timer_at: Option<u64>,
}

impl Link {
    pub fn new(lifecycle: Lifecycle) -> Link {
        Link {
            lifecycle,
            conns: Conns::new(),
            next_conn: 1,
            current: None,
            timer_at: None,
        }
    }

    /// The handle on the tunnel, also while it is held after its control connection died.
    pub fn tunnel(&self) -> Option<Arc<Tunnel>> {
        self.current.as_ref().map(|c| c.handle.clone())
    }

    /// Tunnel `id`'s state, the kernel's part of it and the connections, if `id` is the
    /// tunnel in the lifecycle.
    pub fn parts(
        &mut self,
        id: crate::protocol::TunnelId,
    ) -> Option<(&mut crate::link::TunnelState, &mut Local, &Conns)> {
        let state = self.lifecycle.tunnel.as_mut().filter(|t| t.id == id)?;
        let current = self.current.as_mut().filter(|c| c.handle.id == id)?;
        Some((state, &mut current.local, &self.conns))
    }

    /// A new connection's number, with its retire token (`info`: its socket's figures, if it
    /// has a socket yet).
    fn open(&mut self, info: Option<Arc<ConnInfo>>) -> (ConnRef, CancellationToken) {
        let conn = self.next_conn;
        self.next_conn += 1;
        let retire = CancellationToken::new();
        let c = Conn {
            retire: retire.clone(),
            info,
            outbox: Vec::new(),
        };
        self.conns.insert(conn, c);
        (conn, retire)
    }

    /// When the lifecycle, the core or the ingress sessions' idle timeouts next have
    /// something to do.
    fn next_deadline(&self) -> Option<u64> {
        let lifecycle = self.lifecycle.poll_timeout();
        lifecycle.into_iter().chain(self.core_deadline()).min()
    }

    /// The same without the lifecycle's (a walk over its connections, kept off the hot
    /// paths).
    fn core_deadline(&self) -> Option<u64> {
        let core = self.lifecycle.tunnel.as_ref();
        let core = core.and_then(|t| t.core.poll_timeout());
        let idle = self.current.as_ref();
        let idle = idle.and_then(|c| c.local.idle.poll_timeout());
        core.into_iter().chain(idle).min()
    }
}

/// What became of a connection after an event: what to write on it, and the role it took.
struct Step {
    outbox: Vec<Message>,
    in_place: Option<(Role, Arc<Tunnel>)>,
}

impl Gateway {
    pub(super) fn link(&self) -> std::sync::MutexGuard<'_, Link> {
        self.link.lock().expect("not poisoned")
    }

    /// Tells the lifecycle something (`event` is given the clock), then carries out what it
    /// decided.
    pub(super) fn link_event<T>(self: &Arc<Self>, event: impl FnOnce(&mut Link, u64) -> T) -> T {
        let mut link = self.link();
        let out = event(&mut link, self.now_us());
        self.settle(&mut link);
        out
    }

    /// An event on `conn`, and what it means for its task.
    fn conn_event(self: &Arc<Self>, conn: ConnRef, event: impl FnOnce(&mut Link, u64)) -> Step {
        let mut link = self.link();
        event(&mut link, self.now_us());
        self.settle(&mut link);
        let outbox = link
            .conns
            .get_mut(&conn)
            .map(|c| std::mem::take(&mut c.outbox))
            .unwrap_or_default();
        let role = link.lifecycle.in_place(conn);
        let in_place = role.zip(link.tunnel());
        Step { outbox, in_place }
    }

    /// A message on `conn`, in place for its role (the hot path: data frames, acks), with
    /// what unpacking it cost.
    pub(super) fn message_in_place(
        self: &Arc<Self>,
        conn: ConnRef,
        msg: Message,
        unpacked: Option<PackNote>,
    ) {
        let mut link = self.link();
        let now = self.now_us();
        // Credited first: the frame may be the session's last.
        if let (Some(n), Some(_)) = (unpacked, link.lifecycle.in_place(conn)) {
            if let Some(t) = &mut link.lifecycle.tunnel {
                t.core.note_packing(n);
            }
        }
        link.lifecycle.message(conn, msg, now);
        self.settle_core(&mut link);
    }

    /// After a call that left the lifecycle alone unless it says otherwise (the hot paths):
    /// only the tunnel's core changed, so its events go out and the timer learns of a sooner
    /// deadline (a delayed ack, tokens returning, a session's probe or idle timeout); the
    /// whole [`Gateway::settle`] only if the lifecycle decided something.
    pub(super) fn settle_core(self: &Arc<Self>, link: &mut Link) {
        if link.lifecycle.has_actions() {
            return self.settle(link);
        }
        let tunnel = &mut link.lifecycle.tunnel;
        if let (Some(t), Some(Current { handle, local })) = (tunnel, &mut link.current) {
            handle.dispatch(&mut t.core, local);
        }
        self.poke_timer(link.core_deadline(), &mut link.timer_at);
    }

    /// Carries out the lifecycle's actions, then keeps the kernel's side in step with it: a
    /// handle for a new tunnel, the core's events, whether it is up, due dials, the timer.
    fn settle(self: &Arc<Self>, link: &mut Link) {
        while let Some(action) = link.lifecycle.poll_action() {
            match action {
                Action::Send { conn, msg } => {
                    if let Some(c) = link.conns.get_mut(&conn) {
                        c.outbox.push(msg);
                    }
                }
                Action::Close { conn, graceful } => {
                    if let Some(c) = link.conns.remove(&conn) {
                        if let (false, Some(info)) = (graceful, &c.info) {
                            info.reset_on_close();
                        }
                        c.retire.cancel();
                    }
                }
                Action::TunnelGone(state) => {
                    let gone = link.current.take_if(|c| c.handle.id == state.id);
                    if let Some(Current { handle, local }) = gone {
                        handle.went_down(state, local);
                    }
                }
                Action::Count(c) => self.stats.count(c),
                Action::Trust(ip) => {
                    let mut guard = self.tunnel_port.lock().expect("not poisoned");
                    guard.trust.authenticated(ip);
                }
            }
        }
        let Link {
            lifecycle,
            current,
            conns,
            ..
        } = link;
        if let Some(t) = &mut lifecycle.tunnel {
            if current.as_ref().is_none_or(|c| c.handle.id != t.id) {
                let handle = Tunnel::new(self.clone(), t.id, t.peer.clone());
                let local = Local::default();
                *current = Some(Current { handle, local });
            }
            if let Some(Current { handle, local }) = current {
                handle.dispatch(&mut t.core, local);
                handle.keep_up(&t.table, local, conns);
            }
        }
        let ready = current
            .as_ref()
            .filter(|_| lifecycle.is_up())
            .map(|c| c.handle.clone());
        self.ready.send_if_modified(|r| {
            let same = r.as_ref().map(Arc::as_ptr) == ready.as_ref().map(Arc::as_ptr);
            *r = ready;
            !same
        });
        let now = self.now_us();
        while let Some(role) = link.lifecycle.poll_dial(now) {
            let Some(addr) = link.lifecycle.dial_addr() else {
                break;
            };
            let (conn, retire) = link.open(None);
            link.lifecycle.dialling(role, conn, now);
            tokio::spawn(dial(self.clone(), conn, retire, role, addr));
        }
        self.poke_timer(link.next_deadline(), &mut link.timer_at);
    }

    /// Wakes the timer task if `due` is sooner than what it sleeps toward.
    pub(super) fn poke_timer(&self, due: Option<u64>, timer_at: &mut Option<u64>) {
        if let Some(due) = due {
            if timer_at.is_none_or(|at| due < at) {
                *timer_at = Some(due);
                self.timer.notify_one();
            }
        }
    }

    /// A listener took `remote`'s connection (`trusted`: the source proved to be the peer
    /// before; `info`: its socket's figures): its number, and its retire token, cancelled at
    /// once if the pending handshakes have no room for it.
    pub(super) fn accepted(
        self: &Arc<Self>,
        remote: SocketAddr,
        trusted: bool,
        info: Arc<ConnInfo>,
    ) -> (ConnRef, CancellationToken) {
        self.link_event(|link, now| {
            let (conn, retire) = link.open(Some(info));
            link.lifecycle.accepted(conn, Some(remote), trusted, now);
            (conn, retire)
        })
    }

    /// `conn`'s socket, handshake or records failed with `e`.
    pub(super) fn conn_failed(self: &Arc<Self>, conn: ConnRef, e: &ConnFailure) {
        self.link_event(|link, now| link.lifecycle.conn_failed(conn, e, now));
    }
}

/// Serves the deadlines of the lifecycle (handshakes, the grace period, dial backoff, the new
/// tunnel's attach deadline), of the session core and of the ingress sessions' idle timeouts,
/// for the life of the gateway.
pub(super) async fn run_timer(gateway: Arc<Gateway>) {
    serve_deadlines(
        &gateway.timer,
        gateway.started.into(),
        || {
            let mut link = gateway.link();
            link.timer_at = link.next_deadline();
            link.timer_at
        },
        |now| {
            let mut guard = gateway.link();
            let link = &mut *guard;
            // Most wakeups are the core's (acks, pacing): the lifecycle's only when it is due.
            let lifecycle = link.lifecycle.poll_timeout().is_some_and(|at| at <= now);
            if lifecycle {
                link.lifecycle.handle_timeout(now);
            }
            if let Some(t) = &mut link.lifecycle.tunnel {
                t.core.handle_timeout(now);
                if let Some(c) = &mut link.current {
                    let n = c.local.idle.reset_idle(now, &mut t.core);
                    crate::admin::Stats::add(&gateway.stats.ingress_idle_timeouts, n);
                }
            }
            if lifecycle {
                return gateway.settle(link);
            }
            gateway.settle_core(link);
        },
    )
    .await
}

/// Dials `conn` to `addr` for `role`, then serves it.
async fn dial(
    gateway: Arc<Gateway>,
    conn: ConnRef,
    retire: CancellationToken,
    role: Role,
    addr: SocketAddr,
) {
    let data_flow = matches!(role, Role::Flow(_));
    let dialled = tokio::select! {
        // The handshake took too long (the lifecycle said so), or the tunnel is gone.
        _ = retire.cancelled() => return,
        r = connect(&gateway, addr, data_flow) => r,
    };
    match dialled {
        Ok((reader, writer)) => serve(gateway, conn, retire, reader, writer).await,
        Err(e) => gateway.conn_failed(conn, &e),
    }
}

/// Connects, tunes and authenticates one WAN connection.
async fn connect(
    gateway: &Gateway,
    addr: SocketAddr,
    data_flow: bool,
) -> Result<(Reader, Writer), ConnFailure> {
    let socket = match addr {
        SocketAddr::V4(_) => TcpSocket::new_v4(),
        SocketAddr::V6(_) => TcpSocket::new_v6(),
    }
    .map_err(ConnFailure::Connect)?;
    // Buffers before connect: the window scale is fixed by the SYN.
    for w in tune_wan(&SockRef::from(&socket), &gateway.tuning, data_flow) {
        warn!("WAN socket option: {w}");
    }
    let mut stream = socket.connect(addr).await.map_err(ConnFailure::Connect)?;
    let info = ConnInfo::new(&stream).map_err(ConnFailure::Connect)?;
    let keys = handshake_initiator(&mut stream, &gateway.identity(), data_flow).await?;
    Ok(gateway.secure(stream, info, &keys))
}

/// Runs the accepting side's handshake on `stream`, up to its answer.
pub(super) async fn accept_handshake(
    gateway: &Gateway,
    mut stream: TcpStream,
    info: Arc<ConnInfo>,
) -> Result<(Reader, Writer), ConnFailure> {
    let done = handshake_acceptor(&mut stream, &gateway.identity()).await?;
    for w in tune_wan(&SockRef::from(&stream), &gateway.tuning, done.data_flow) {
        warn!("WAN socket option: {w}");
    }
    tokio::io::AsyncWriteExt::write_all(&mut stream, &done.reply).await?;
    Ok(gateway.secure(stream, info, &done.keys))
}

/// Serves keyed connection `conn` until it fails (then the lifecycle is told) or the
/// lifecycle closes it.
pub(super) async fn serve(
    gateway: Arc<Gateway>,
    conn: ConnRef,
    retire: CancellationToken,
    reader: Reader,
    writer: Writer,
) {
    let result = tokio::select! {
        _ = retire.cancelled() => return,
        r = take_role(&gateway, conn, reader, writer) => r,
    };
    if let Err(e) = result {
        gateway.conn_failed(conn, &e);
    }
}

/// Tells the lifecycle `conn` is keyed, writes what it answers and feeds it the first
/// messages until the connection is in place for a role, then serves that role.
async fn take_role(
    gateway: &Arc<Gateway>,
    conn: ConnRef,
    mut reader: Reader,
    mut writer: Writer,
) -> Result<(), ConnFailure> {
    let info = reader.info().clone();
    let peer_dedup = reader.peer_dedup();
    let mut step = gateway.conn_event(conn, |link, now| {
        if let Some(c) = link.conns.get_mut(&conn) {
            c.info = Some(info.clone());
        }
        link.lifecycle
            .keyed(conn, Some(info.remote), peer_dedup, now)
    });
    loop {
        for msg in &step.outbox {
            writer.push(msg)?;
        }
        writer.flush().await?;
        match step.in_place {
            Some((Role::Control, tunnel)) => {
                let lane = LaneLink::new(
                    gateway.lane.as_ref(),
                    info.remote,
                    reader.lane(),
                    &gateway.packing,
                    gateway.config.compression != Compression::Off,
                );
                let Some(lane) = lane else {
                    return tunnel.run_control(conn, reader, writer).await;
                };
                // The lane's keys are this connection's: it serves while the connection does.
                return tokio::select! {
                    r = tunnel.clone().run_control(conn, reader, writer) => r,
                    () = super::lane::run(tunnel, lane) => Ok(()),
                };
            }
            Some((Role::Flow(k), tunnel)) => return tunnel.run_flow(k, conn, reader, writer).await,
            None => {}
        }
        let msg = reader.read_message().await?;
        step = gateway.conn_event(conn, |link, now| link.lifecycle.message(conn, msg, now));
    }
}

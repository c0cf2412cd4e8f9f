//! A live tunnel on kernel sockets: the session core behind a mutex, the
//! tasks that move records between it and the control and data connections,
//! and the per-session signals that wake endpoint tasks.
//!
//! Locking: one `std::sync::Mutex` around the core, held only for short,
//! non-blocking calls (never across an `.await`). After every call the
//! core's events are dispatched to `Notify`s while still holding the lock,
//! so no wakeup is lost between a state change and its notification.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use log::{info, warn};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::sync::{oneshot, Notify};
use tokio_util::sync::CancellationToken;

use super::conn::{ConnError, ConnInfo, RecordReader, RecordWriter};
use super::Gateway;
use crate::admin::status::{ConnectionStatus, TunnelStatus};
use crate::admin::Stats;
use crate::link::stall::{self, SendSide, SentBatches, Stall};
use crate::link::{ConnRef, ConnTable, ConnectOrder, Lost, TunnelState};
use crate::protocol::handshake::Shard;
use crate::protocol::{Message, RefuseReason, ResetReason, SessionId, TunnelId};
use crate::session::{Event, Origin, SessionError, SharePolicy, Side, TunnelCore};
use crate::transform::PackNote;

/// Bytes of sealed records a writer gathers before one write call.
const WRITE_BATCH: usize = 256 * 1024;

/// How an `open` ended.
#[derive(Debug)]
pub enum OpenOutcome {
    Accepted,
    Refused {
        reason: RefuseReason,
        detail: String,
    },
}

/// Wakeups for the two endpoint tasks of one session, and what status shows of it.
pub struct SessionSignals {
    pub readable: Notify,
    pub writable: Notify,
    /// Cancelled when the session is reset: both endpoint tasks stop.
    pub reset: CancellationToken,
    reset_reason: Mutex<Option<ResetReason>>,
    opened: Mutex<Option<oneshot::Sender<OpenOutcome>>>,
    /// The client, for sessions from our ingress.
    source: Option<SocketAddr>,
    started: std::time::Instant,
}

impl SessionSignals {
    fn new(source: Option<SocketAddr>, opened: Option<oneshot::Sender<OpenOutcome>>) -> Self {
        SessionSignals {
            readable: Notify::new(),
            writable: Notify::new(),
            reset: CancellationToken::new(),
            reset_reason: Mutex::new(None),
            opened: Mutex::new(opened),
            source,
            started: std::time::Instant::now(),
        }
    }

    pub fn reset_reason(&self) -> Option<ResetReason> {
        *self.reset_reason.lock().expect("not poisoned")
    }

    fn open_result(&self, outcome: OpenOutcome) {
        if let Some(tx) = self.opened.lock().expect("not poisoned").take() {
            let _ = tx.send(outcome);
        }
    }
}

/// A connection in the tunnel's table.
struct Live {
    /// Cancelled to retire the connection when a new one takes its role.
    retire: CancellationToken,
    info: Arc<ConnInfo>,
}

struct Inner {
    /// The session core, and which connection serves the control role and each data flow. Only
    /// the control connection in place may take control messages off the core, only flow k's
    /// may take its frames, and only the one in place may declare its role lost.
    link: TunnelState,
    /// The connections in `link.table`: how to retire each, and its figures for status.
    live: HashMap<ConnRef, Live>,
    signals: HashMap<SessionId, Arc<SessionSignals>>,
    /// Per target, the peer's sessions connecting or waiting to, in open order (see
    /// [`super::egress::connect`]).
    connect_order: ConnectOrder,
    /// The core deadline the timer task sleeps toward (see [`Tunnel::dispatch`]).
    timer_at: Option<u64>,
}

pub struct Tunnel {
    inner: Mutex<Inner>,
    frames_ready: Notify,
    control_ready: Notify,
    /// True from when the control writer takes a message off the core until
    /// it has flushed it to the socket; `control_idle` fires when it clears.
    control_busy: AtomicBool,
    control_idle: Notify,
    /// The core's control queue fell below its bound (readers of control wait on it).
    control_room: Notify,
    /// Bytes waiting for endpoints fell below the receive budget (flow readers wait on it).
    receive_room: Notify,
    /// A connect to a target finished, or a session waiting for its turn ended.
    connect_turn: Notify,
    timer: Notify,
    pub id: TunnelId,
    /// `NAME (ADDR)` of the peer gateway, for logs.
    pub peer: String,
    /// Cancelled when the tunnel goes down; every task of it stops.
    pub closed: CancellationToken,
    /// Whether a control connection is attached. When it dies the tunnel is
    /// held for the grace period, waiting for a new control connection.
    pub control_up: tokio::sync::watch::Sender<bool>,
    /// The next connection's number in `table`.
    next_conn: std::sync::atomic::AtomicU64,
    epoch: std::time::Instant,
    gateway: Arc<Gateway>,
    /// Ingress sessions with an idle timeout ([`super::idle`]).
    pub idle: super::idle::IdleWatch,
}

impl Tunnel {
    pub fn new(
        gateway: Arc<Gateway>,
        side: Side,
        id: TunnelId,
        peer: String,
        flows: usize,
    ) -> Arc<Tunnel> {
        let store = gateway.dedup_store.clone();
        let setup = gateway
            .config
            .tunnel_setup(side, flows, Shard::ONE, gateway.shares(), store);
        let tunnel = Arc::new(Tunnel {
            inner: Mutex::new(Inner {
                link: TunnelState::new(setup, id, peer.clone()),
                signals: HashMap::new(),
                live: HashMap::new(),
                connect_order: ConnectOrder::default(),
                timer_at: None,
            }),
            frames_ready: Notify::new(),
            control_ready: Notify::new(),
            control_busy: AtomicBool::new(false),
            control_idle: Notify::new(),
            control_room: Notify::new(),
            receive_room: Notify::new(),
            connect_turn: Notify::new(),
            timer: Notify::new(),
            id,
            peer,
            closed: CancellationToken::new(),
            control_up: tokio::sync::watch::channel(false).0,
            next_conn: std::sync::atomic::AtomicU64::new(1),
            epoch: std::time::Instant::now(),
            gateway,
            idle: Default::default(),
        });
        tokio::spawn(tunnel.clone().run_timer());
        tokio::spawn(super::idle::run(tunnel.clone()));
        tunnel
    }

    pub fn gateway(&self) -> &Arc<Gateway> {
        &self.gateway
    }

    pub fn frame_len(&self) -> usize {
        self.gateway.config.limits.frame_len
    }

    pub fn flow_count(&self) -> usize {
        self.inner
            .lock()
            .expect("not poisoned")
            .link
            .core
            .flow_count()
    }

    pub fn session_count(&self) -> usize {
        self.inner
            .lock()
            .expect("not poisoned")
            .link
            .core
            .session_count()
    }

    /// Resets every session, telling the peer (unlike [`Tunnel::shutdown`]):
    /// each gets a reset message on the control connection. Returns how many.
    pub fn reset_sessions(self: &Arc<Self>, reason: ResetReason) -> usize {
        self.with_core(|core| {
            let ids: Vec<SessionId> = core.snapshot().into_iter().map(|s| s.id).collect();
            for &id in &ids {
                core.reset(id, reason);
            }
            ids.len()
        })
    }

    /// Returns once every control message queued so far has been written
    /// and acknowledged by the peer's kernel (so it reaches the peer even if
    /// this process exits now). Waits forever without a control connection:
    /// the caller bounds it.
    pub async fn control_delivered(self: &Arc<Self>) {
        wait_until(&self.control_idle, || {
            self.with_core(|c| {
                (!c.has_control() && !self.control_busy.load(Ordering::SeqCst)).then_some(())
            })
        })
        .await;
        loop {
            let control = {
                let inner = self.inner.lock().expect("not poisoned");
                let control = inner.link.table.control();
                control
                    .and_then(|c| inner.live.get(&c))
                    .map(|l| l.info.clone())
            };
            if control.is_some_and(|c| c.send_queue_empty()) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// Microseconds since the tunnel started: the core's clock.
    pub fn now(&self) -> u64 {
        self.epoch.elapsed().as_micros() as u64
    }

    /// Runs `f` on the core, then dispatches the events it produced.
    pub fn with_core<T>(self: &Arc<Self>, f: impl FnOnce(&mut TunnelCore) -> T) -> T {
        let mut inner = self.inner.lock().expect("not poisoned");
        let out = f(&mut inner.link.core);
        self.dispatch(&mut inner);
        out
    }

    fn dispatch(self: &Arc<Self>, inner: &mut Inner) {
        // Whatever the core just did may have brought its deadline forward
        // (a delayed ack, tokens returning, a session's probe, a grace period).
        if let Some(due) = Self::next_deadline(inner) {
            if inner.timer_at.is_none_or(|at| due < at) {
                inner.timer_at = Some(due);
                self.timer.notify_one();
            }
        }
        while let Some(event) = inner.link.core.poll_event() {
            match event {
                Event::FramesReady => self.frames_ready.notify_waiters(),
                // Every waiter: a control writer being retired may still be
                // waiting next to the one that took its place.
                Event::ControlReady => self.control_ready.notify_waiters(),
                Event::ControlRoom => self.control_room.notify_waiters(),
                Event::ReceiveRoom => self.receive_room.notify_waiters(),
                Event::Readable(id) => {
                    if let Some(s) = inner.signals.get(&id) {
                        s.readable.notify_one();
                    }
                }
                Event::Writable(id) => {
                    if let Some(s) = inner.signals.get(&id) {
                        s.writable.notify_one();
                    }
                }
                // Rare (only after the global budget ran dry): wake everyone.
                Event::CreditFreed => inner.signals.values().for_each(|s| s.writable.notify_one()),
                Event::Accepted(id) => {
                    if let Some(s) = inner.signals.get(&id) {
                        s.open_result(OpenOutcome::Accepted);
                    }
                }
                Event::Refused {
                    session,
                    reason,
                    detail,
                } => {
                    if let Some(s) = inner.signals.remove(&session) {
                        s.open_result(OpenOutcome::Refused { reason, detail });
                    }
                }
                Event::Reset { session, reason } => {
                    Stats::inc(&self.gateway.stats.sessions_reset);
                    // Reset while it waited to connect: it leaves the line unconnected (its
                    // task wakes to see that).
                    if !inner.connect_order.is_empty() {
                        let _ = inner.connect_order.done(session);
                        self.connect_turn.notify_waiters();
                    }
                    if let Some(s) = inner.signals.remove(&session) {
                        *s.reset_reason.lock().expect("not poisoned") = Some(reason);
                        s.reset.cancel();
                        // Dropping `opened` tells a waiting opener it is over.
                        s.opened.lock().expect("not poisoned").take();
                    }
                }
                Event::Closed(id) => {
                    inner.signals.remove(&id);
                }
                Event::ConnectRequested { session, target } => {
                    let _ = inner.connect_order.queue(target, session);
                    tokio::spawn(super::egress::connect(self.clone(), session, target));
                }
            }
        }
    }

    /// Whether session `id` may connect to its target now (`Some(true)`), must wait for the
    /// connects before it (`Some(false)`), or ended while it waited (`None`).
    pub fn connect_turn(&self, id: SessionId) -> Option<bool> {
        let inner = self.inner.lock().expect("not poisoned");
        inner.connect_order.turn(id)
    }

    /// Session `id`'s connect is over, either way: the next one to its target may go.
    pub fn connect_done(&self, id: SessionId) {
        let _ = self
            .inner
            .lock()
            .expect("not poisoned")
            .connect_order
            .done(id);
        self.connect_turn.notify_waiters();
    }

    /// Waits until session `id` may connect (true), or ended while it waited (false).
    pub async fn wait_connect_turn(&self, id: SessionId) -> bool {
        wait_until(&self.connect_turn, || match self.connect_turn(id) {
            Some(false) => None,
            turn => Some(turn.is_some()),
        })
        .await
    }

    /// Opens a session towards `target` through the peer.
    pub fn open_session(
        self: &Arc<Self>,
        source: SocketAddr,
        target: SocketAddr,
        origin: Origin,
    ) -> Result<
        (
            SessionId,
            Arc<SessionSignals>,
            oneshot::Receiver<OpenOutcome>,
        ),
        SessionError,
    > {
        let (tx, rx) = oneshot::channel();
        let signals = Arc::new(SessionSignals::new(Some(source), Some(tx)));
        let mut inner = self.inner.lock().expect("not poisoned");
        let id = inner.link.core.open(target, origin)?;
        inner.signals.insert(id, signals.clone());
        self.dispatch(&mut inner);
        Ok((id, signals, rx))
    }

    /// Accepts a peer-opened session once its target is connected.
    pub fn accept_session(
        self: &Arc<Self>,
        id: SessionId,
    ) -> Result<Arc<SessionSignals>, SessionError> {
        let signals = Arc::new(SessionSignals::new(None, None));
        let mut inner = self.inner.lock().expect("not poisoned");
        inner.link.core.accept(id)?;
        inner.signals.insert(id, signals.clone());
        self.dispatch(&mut inner);
        Ok(signals)
    }

    /// New caps and weights (a reload): running sessions carry on.
    pub fn set_shares(self: &Arc<Self>, shares: SharePolicy) {
        let mut inner = self.inner.lock().expect("not poisoned");
        inner.link.set_shares(shares);
        self.dispatch(&mut inner);
    }

    /// Takes the tunnel down: every session is reset, every task stops.
    pub fn shutdown(self: &Arc<Self>, reason: ResetReason) {
        if self.closed.is_cancelled() {
            return;
        }
        {
            let mut inner = self.inner.lock().expect("not poisoned");
            let _ = inner.link.reset_all(reason);
            self.dispatch(&mut inner);
        }
        self.closed.cancel();
    }

    /// The core's next deadline, or the grace period's end if sooner.
    fn next_deadline(inner: &Inner) -> Option<u64> {
        let grace = inner.link.poll_timeout();
        inner
            .link
            .core
            .poll_timeout()
            .into_iter()
            .chain(grace)
            .min()
    }

    /// Serves the core's deadlines and the grace period of a held tunnel: when it runs out
    /// without a new control connection, the tunnel is taken down.
    async fn run_timer(self: Arc<Self>) {
        let run = serve_deadlines(
            &self.timer,
            self.epoch.into(),
            || {
                let mut inner = self.inner.lock().expect("not poisoned");
                inner.timer_at = Self::next_deadline(&inner);
                inner.timer_at
            },
            |now| {
                let expired = {
                    let mut inner = self.inner.lock().expect("not poisoned");
                    let expired = inner.link.handle_timeout(now);
                    inner.link.core.handle_timeout(now);
                    self.dispatch(&mut inner);
                    expired
                };
                if expired {
                    self.shutdown(ResetReason::TunnelLost);
                }
            },
        );
        tokio::select! {
            _ = self.closed.cancelled() => {}
            () = run => {}
        }
    }

    /// Starts serving a control connection: the first one, or a new one
    /// after the previous died (then both ends restate their sessions).
    ///
    /// A control connection still in place is retired and closed: the peer
    /// dials a new one only after it gave the old one up, so whatever this end
    /// still holds of it (its RST lost on the way, or still waiting for its
    /// timeout) is dead, and must neither take control messages nor, when it
    /// finally fails, take the new connection's tunnel down.
    pub fn attach_control(
        self: &Arc<Self>,
        reader: RecordReader<OwnedReadHalf>,
        writer: RecordWriter<OwnedWriteHalf>,
    ) {
        let info = reader.info().clone();
        let retire = CancellationToken::new();
        let conn = self.next_conn.fetch_add(1, Ordering::SeqCst);
        let (resumed, old) = {
            let mut guard = self.inner.lock().expect("not poisoned");
            let inner = &mut *guard;
            let live = &inner.live;
            let names = |c: ConnRef| remote_of(live, c, conn, &info);
            let attached = inner.link.attach_control(conn, &names, reader.peer_dedup());
            let old = attached.replaced.and_then(|old| inner.live.remove(&old));
            if let Some(old) = &old {
                old.retire.cancel();
            }
            let live = Live {
                retire: retire.clone(),
                info: info.clone(),
            };
            inner.live.insert(conn, live);
            // The old writer may have died (or been retired) mid-flush.
            self.control_busy.store(false, Ordering::SeqCst);
            self.dispatch(inner);
            (attached.resumed, old)
        };
        drop(old);
        if resumed {
            Stats::inc(&self.gateway.stats.tunnel_resumes);
        }
        self.control_up.send_replace(true);
        tokio::spawn(self.clone().run_control(conn, retire, reader, writer));
    }

    /// Control connection `conn` died (`why`): if it is still the one in place, hold every
    /// session for the grace period, then give up and reset them. A connection that was
    /// replaced already changes nothing.
    fn control_lost(self: &Arc<Self>, conn: ConnRef, why: &dyn std::fmt::Display) {
        let lost = {
            let mut inner = self.inner.lock().expect("not poisoned");
            inner.live.remove(&conn);
            let now = self.now();
            inner.link.lost(conn, now, why)
        };
        let Lost::Control { hold_until } = lost else {
            return;
        };
        if hold_until.is_none() || self.closed.is_cancelled() {
            return self.shutdown(ResetReason::TunnelLost);
        }
        self.control_up.send_replace(false);
        // The timer serves the hold's end (resumed meanwhile, the table forgets it).
        self.timer.notify_one();
    }

    /// Runs `f` on the tunnel's connection table (the dialler decides what to dial from it).
    pub fn with_table<T>(&self, f: impl FnOnce(&ConnTable) -> T) -> T {
        f(&self.inner.lock().expect("not poisoned").link.table)
    }

    /// Whether `conn` is the control connection in place.
    fn is_control(inner: &Inner, conn: ConnRef) -> bool {
        inner.link.table.control() == Some(conn)
    }

    /// Runs control connection `conn` until it fails or is retired.
    async fn run_control(
        self: Arc<Self>,
        conn: ConnRef,
        retire: CancellationToken,
        mut reader: RecordReader<OwnedReadHalf>,
        mut writer: RecordWriter<OwnedWriteHalf>,
    ) {
        let read = async {
            loop {
                // A peer that sends faster than it reads our answers waits
                // here instead of growing the queue.
                wait_until(&self.control_room, || {
                    (!self.with_core(|c| c.control_backlogged())).then_some(())
                })
                .await;
                match reader.read_message().await? {
                    msg @ Message::Data(_) => {
                        return Err(ConnError::Unexpected {
                            got: msg.name(),
                            expected: "a control message",
                        })
                    }
                    msg => self.apply(msg, None),
                }
            }
        };
        let write = async {
            // Takes the next control message if this connection is still the
            // one in place: a retired writer must not take (and lose) any.
            let take = || {
                let mut inner = self.inner.lock().expect("not poisoned");
                if !Self::is_control(&inner, conn) {
                    return None;
                }
                let msg = inner.link.core.poll_control();
                if msg.is_some() {
                    self.control_busy.store(true, Ordering::SeqCst);
                }
                self.dispatch(&mut inner);
                msg
            };
            loop {
                // Marked busy under the core's lock, together with taking the
                // message, so `control_delivered` never sees an empty queue
                // while a message is on its way to the socket.
                let first = wait_until(&self.control_ready, &take).await;
                writer.push(&first)?;
                while let Some(msg) = take() {
                    writer.push(&msg)?;
                }
                writer.flush().await?;
                let inner = self.inner.lock().expect("not poisoned");
                if Self::is_control(&inner, conn) {
                    self.control_busy.store(false, Ordering::SeqCst);
                    self.control_idle.notify_waiters();
                }
            }
        };
        let result: Result<(), ConnError> = tokio::select! {
            _ = self.closed.cancelled() => Ok(()),
            // Replaced by a newer connection, which has taken over.
            _ = retire.cancelled() => return,
            r = read => r,
            r = write => r,
        };
        if self.closed.is_cancelled() {
            return;
        }
        // The loops end only with an error.
        let why = result.err().unwrap_or(ConnError::Closed);
        self.count_failure(&why);
        self.control_lost(conn, &why);
    }

    /// Runs data flow `idx` until it fails or is retired. Whatever it
    /// carried that the peer has not acked is handed to the other flows.
    ///
    /// A connection still in place for `idx` is retired and closed first:
    /// the peer re-attaches a flow only after it gave the old connection up,
    /// so that one is dead even if this end has not noticed (its RST lost,
    /// its timeout not yet due). Its frames go out again at once, and its
    /// eventual end does not touch the new connection's frames.
    ///
    /// The connection is in the table when this returns; the future runs it.
    pub fn run_flow<R, W>(
        self: Arc<Self>,
        idx: usize,
        reader: RecordReader<R>,
        writer: RecordWriter<W>,
    ) -> impl std::future::Future<Output = ()>
    where
        R: AsyncRead + Unpin,
        W: AsyncWrite + Unpin + AsRef<tokio::net::TcpStream>,
    {
        let info = reader.info().clone();
        let id = self.next_conn.fetch_add(1, Ordering::SeqCst);
        let retire = CancellationToken::new();
        let attached = {
            let mut guard = self.inner.lock().expect("not poisoned");
            let inner = &mut *guard;
            let live = &inner.live;
            let names = |c: ConnRef| remote_of(live, c, id, &info);
            // Callers check the index against the flow count.
            inner.link.attach_flow(idx, id, &names).map(|attached| {
                let old = attached.replaced.and_then(|old| inner.live.remove(&old));
                if let Some(old) = &old {
                    old.retire.cancel();
                    self.dispatch(inner);
                }
                let live = Live {
                    retire: retire.clone(),
                    info: info.clone(),
                };
                inner.live.insert(id, live);
                old.is_some()
            })
        };
        async move {
            let Some(replaced) = attached else {
                return;
            };
            if replaced {
                Stats::inc(&self.gateway.stats.flows_lost);
            }
            let result = tokio::select! {
                _ = self.closed.cancelled() => Ok(()),
                // Replaced by a newer connection, which has taken over.
                _ = retire.cancelled() => return,
                r = self.flow_reader(reader) => r,
                r = self.flow_writer(idx, id, writer) => r,
            };
            let in_place = {
                let mut inner = self.inner.lock().expect("not poisoned");
                inner.live.remove(&id);
                let now = self.now();
                let lost = match &result {
                    Err(e) => inner.link.lost(id, now, e),
                    // The tunnel closed: nothing to say.
                    Ok(()) => inner.link.table.lost(id, now),
                };
                self.dispatch(&mut inner);
                lost == Lost::Flow(idx)
            };
            if let Err(e) = &result {
                self.count_failure(e);
                if in_place {
                    Stats::inc(&self.gateway.stats.flows_lost);
                }
            }
        }
    }

    async fn flow_reader<R: AsyncRead + Unpin>(
        self: &Arc<Self>,
        mut reader: RecordReader<R>,
    ) -> Result<(), ConnError> {
        loop {
            // Backpressure, never loss: while endpoints leave the receive
            // budget full, the peer's frames wait in TCP.
            wait_until(&self.receive_room, || {
                (!self.with_core(|c| c.receive_paused())).then_some(())
            })
            .await;
            let msg = reader.read_message().await?;
            if !matches!(msg, Message::Data(_)) {
                return Err(ConnError::Unexpected {
                    got: msg.name(),
                    expected: "data",
                });
            }
            self.apply(msg, reader.take_unpacked());
        }
    }

    async fn flow_writer<W>(
        self: &Arc<Self>,
        idx: usize,
        id: ConnRef,
        mut writer: RecordWriter<W>,
    ) -> Result<(), ConnError>
    where
        W: AsyncWrite + Unpin + AsRef<tokio::net::TcpStream>,
    {
        // Takes flow `idx`'s next frame if this connection is still the one
        // in place: frames a retired connection took would sit in the new
        // one's ledger, sent nowhere.
        let take = || {
            let mut inner = self.inner.lock().expect("not poisoned");
            let in_place = inner.link.table.flow(idx) == Some(id);
            let now = self.now();
            let Inner { link, live, .. } = &mut *inner;
            link.sample_flows(now, |c| live.get(&c)?.info.flow_progress());
            let frame = in_place
                .then(|| inner.link.core.poll_frame(now, idx))
                .flatten();
            self.dispatch(&mut inner);
            frame
        };
        let mut sent = SentBatches::default();
        loop {
            // No new frames while the flow's window is collapsed: they would
            // wait there, holding their sessions (see `stall`).
            if self.flow_stalled(idx, id, writer.info(), &mut sent) {
                tokio::time::sleep(stall::CHECK_EVERY).await;
                continue;
            }
            // Pull only when this flow can send now (TCP_NOTSENT_LOWAT): the
            // flow that can send soonest gets the next frame. Either wait
            // ends at the next check, unless the socket holds nothing that
            // could stall (an idle tunnel's writers sleep until there is work).
            let first = tokio::select! {
                r = writer.get_ref().as_ref().writable() => {
                    r?;
                    let check = (!writer.info().send_queue_empty()).then_some(stall::CHECK_EVERY);
                    tokio::select! {
                        f = wait_until(&self.frames_ready, &take) => f,
                        () = sleep_if(check) => continue,
                    }
                }
                () = tokio::time::sleep(stall::CHECK_EVERY) => continue,
            };
            let mut batch_len = first.payload.len();
            let mut batch = vec![Message::Data(first)];
            while batch_len < WRITE_BATCH {
                match take() {
                    Some(frame) => {
                        batch_len += frame.payload.len();
                        batch.push(Message::Data(frame));
                    }
                    None => break,
                }
            }
            let frames = batch.len();
            writer.push_batch(batch).await?;
            self.note_packing(writer.take_packed());
            writer.flush().await?;
            sent.wrote(writer.info().sent.load(Ordering::Relaxed), frames);
        }
    }

    /// Whether flow `idx`'s connection `id` is stalled with frames stuck
    /// while most other flows send; the first time in a stall, the core
    /// sends them again on the others, and a flow whose rate collapsed
    /// starts its congestion control afresh.
    fn flow_stalled(
        self: &Arc<Self>,
        idx: usize,
        id: ConnRef,
        info: &ConnInfo,
        sent: &mut SentBatches,
    ) -> bool {
        let me = info.send_side().unwrap_or_default();
        let stall = (me.stuck > 0)
            .then(|| {
                let inner = self.inner.lock().expect("not poisoned");
                let table = &inner.link.table;
                let others: Vec<SendSide> = (0..table.flow_count())
                    .filter(|&k| k != idx)
                    .filter_map(|k| inner.live.get(&table.flow(k)?)?.info.send_side())
                    .collect();
                stall::stalled(&me, &others)
            })
            .flatten();
        let stuck = stall.map(|_| me.stuck);
        let now = self.now();
        // A slow flow's frames go again only along with a restart: each
        // time it took a batch it would be slow again, and sent twice.
        let slow = stall == Some(Stall::Rate);
        if slow && !sent.restart_due(now) {
            return true;
        }
        if let Some(frames) = sent.check(info.sent.load(Ordering::Relaxed), stuck) {
            if slow {
                sent.restarted(now);
                let cc = &self.gateway.tuning.congestion;
                let peer = &self.peer;
                match info.restart_congestion_control(cc) {
                    Ok(()) => info!(
                        "peer {peer}: data flow {idx} paced at {} B/s with {} B waiting, far slower than the other flows: {cc} restarted",
                        me.pacing_rate, me.stuck
                    ),
                    Err(e) => warn!("peer {peer}: data flow {idx}: restarting {cc}: {e}"),
                }
            }
            let mut inner = self.inner.lock().expect("not poisoned");
            if inner.link.table.flow(idx) == Some(id) {
                inner.link.core.flow_stalled(idx, frames);
                self.dispatch(&mut inner);
            }
        }
        stuck.is_some()
    }

    /// Credits what packing a batch's frames did to their sessions: once per batch, so
    /// the core's lock is not taken per frame.
    fn note_packing(self: &Arc<Self>, packed: impl ExactSizeIterator<Item = PackNote>) {
        if packed.len() > 0 {
            self.with_core(|c| packed.for_each(|n| c.note_packing(n)));
        }
    }

    /// Applies one message from the peer, with what unpacking it cost (a packed data frame).
    fn apply(self: &Arc<Self>, msg: Message, unpacked: Option<PackNote>) {
        let applied = {
            let mut inner = self.inner.lock().expect("not poisoned");
            // Credited first: the frame may be the session's last.
            if let Some(n) = unpacked {
                inner.link.core.note_packing(n);
            }
            let applied = inner.link.apply(msg);
            self.dispatch(&mut inner);
            applied
        };
        self.gateway.stats.applied(applied);
    }

    /// Counts why a connection ended, for status.
    fn count_failure(&self, e: &ConnError) {
        let stats = &self.gateway.stats;
        match e {
            ConnError::Record(_) => Stats::inc(&stats.records_rejected),
            ConnError::Decode(_) | ConnError::Unpack(_) | ConnError::Unexpected { .. } => {
                Stats::inc(&stats.protocol_errors)
            }
            _ => {}
        }
    }

    /// The tunnel as `lmas status` shows it.
    pub fn status(&self) -> TunnelStatus {
        let inner = self.inner.lock().expect("not poisoned");
        let endpoint = |id| {
            let signals = inner.signals.get(&id);
            let age = signals.map_or(0.0, |g| g.started.elapsed().as_secs_f64());
            (signals.and_then(|g| g.source), age)
        };
        let connection = |id| {
            let c = &inner.live.get(&id)?.info;
            Some(ConnectionStatus {
                local: c.local.to_string(),
                remote: c.remote.to_string(),
                age_secs: c.since.elapsed().as_secs_f64(),
                bytes_sent: c.sent.load(Ordering::Relaxed),
                bytes_received: c.received.load(Ordering::Relaxed),
                tcp: c.tcp_stats(),
                ..Default::default()
            })
        };
        TunnelStatus::of(
            &inner.link,
            *self.control_up.borrow(),
            self.now(),
            endpoint,
            connection,
        )
    }
}

/// How the tunnel's lines name connection `c`: its remote address (`new`, not yet in `live`,
/// is `info`'s).
fn remote_of(live: &HashMap<ConnRef, Live>, c: ConnRef, new: ConnRef, info: &ConnInfo) -> String {
    if c == new {
        return info.remote.to_string();
    }
    live.get(&c)
        .map_or_else(|| "?".to_string(), |l| l.info.remote.to_string())
}

/// Waits until `poll` yields a value, sleeping on `notify` in between. The
/// notification is armed before polling, so a wakeup between the poll and
/// the wait is not lost.
pub async fn wait_until<T>(notify: &Notify, mut poll: impl FnMut() -> Option<T>) -> T {
    loop {
        let notified = notify.notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        if let Some(v) = poll() {
            return v;
        }
        notified.await;
    }
}

/// Sleeps `d`, or forever when there is none.
async fn sleep_if(d: Option<Duration>) {
    match d {
        Some(d) => tokio::time::sleep(d).await,
        None => std::future::pending().await,
    }
}

/// Calls `handle(now)` each time the deadline `poll` gives (µs since
/// `epoch`) comes due, forever. A poke of `notify` while it sleeps reads the
/// deadline again: one that moved earlier (tokens return sooner than a
/// backed-off probe is due) must not be slept through.
pub async fn serve_deadlines(
    notify: &Notify,
    epoch: tokio::time::Instant,
    mut poll: impl FnMut() -> Option<u64>,
    mut handle: impl FnMut(u64),
) {
    let since_epoch = || {
        tokio::time::Instant::now()
            .duration_since(epoch)
            .as_micros() as u64
    };
    loop {
        let due = wait_until(notify, &mut poll).await;
        tokio::select! {
            () = tokio::time::sleep_until(epoch + Duration::from_micros(due)) => handle(since_epoch()),
            () = notify.notified() => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use std::cell::RefCell;

    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_deadline_that_moves_earlier_is_not_slept_through() {
        // The core's next deadline was far off (a probe backed off); then the
        // pacer wants the flows woken sooner and pokes the timer.
        const MS: u64 = 1_000;
        let epoch = tokio::time::Instant::now();
        let (notify, due, fired) = (
            Notify::new(),
            RefCell::new(Some(2_000 * MS)),
            RefCell::new(vec![]),
        );
        let serve = serve_deadlines(
            &notify,
            epoch,
            || *due.borrow(),
            |now| {
                fired.borrow_mut().push(now);
                due.borrow_mut().take();
            },
        );
        let test = async {
            tokio::time::sleep(Duration::from_millis(10)).await;
            *due.borrow_mut() = Some(100 * MS);
            notify.notify_one();
            tokio::time::sleep(Duration::from_millis(140)).await;
        };
        tokio::select! {
            () = serve => unreachable!("serves forever"),
            () = test => {}
        }
        assert_eq!(*fired.borrow(), [100 * MS], "woken at the new deadline");
    }
}

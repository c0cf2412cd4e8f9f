//! A live tunnel on kernel sockets: the handle its tasks share, the tasks that move records
//! between its session core and the control and data connections, and the per-session
//! signals that wake endpoint tasks.
//!
//! The tunnel's state (its session core and connection table) lives in the lifecycle, behind
//! the gateway's link mutex ([`super::wan`]); once the lifecycle gives the tunnel up, what is
//! left of it stays with this handle, for the tasks still winding down. The mutex is held only
//! for short, non-blocking calls (never across an `.await`). After every call the core's
//! events are dispatched to `Notify`s while still holding it, so no wakeup is lost between a
//! state change and its notification.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use log::{info, warn};
use tokio::sync::{oneshot, Notify};
use tokio_util::sync::CancellationToken;

use super::conn::ConnInfo;
use super::wan::Conns;
use super::{Gateway, Reader, Writer};
use crate::admin::status::{ConnectionStatus, TunnelStatus};
use crate::admin::Stats;
use crate::link::stall::{self, SendSide, SentBatches, StallStep};
use crate::link::{
    open_client_session, ConnFailure, ConnRef, ConnTable, ConnectOrder, IdleTimeouts, TunnelState,
};
use crate::protocol::{Message, RefuseReason, ResetReason, SessionId, TunnelId};
use crate::session::{Event, SessionError, TunnelCore};
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

/// The kernel's part of a tunnel beside its state: the sessions' wakeups, and the per-target
/// connect order.
#[derive(Default)]
pub(super) struct Local {
    signals: HashMap<SessionId, Arc<SessionSignals>>,
    /// Per target, the peer's sessions connecting or waiting to, in open order (see
    /// [`super::egress::connect`]).
    connect_order: ConnectOrder,
    /// The control connection in place, as last seen.
    control: Option<ConnRef>,
    /// Ingress sessions with an idle timeout ([`crate::link::idle`]), served by the timer.
    pub idle: IdleTimeouts,
}

/// What is left of a tunnel the lifecycle gave up.
struct Gone {
    state: Box<TunnelState>,
    local: Local,
}

pub struct Tunnel {
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
    pub id: TunnelId,
    /// `NAME (ADDR)` of the peer gateway, for logs.
    pub peer: String,
    /// Cancelled when the tunnel goes down; every task of it stops.
    pub closed: CancellationToken,
    /// Whether a control connection is attached. When it dies the tunnel is
    /// held for the grace period, waiting for a new control connection.
    pub control_up: tokio::sync::watch::Sender<bool>,
    gateway: Arc<Gateway>,
    gone: Mutex<Option<Gone>>,
}

impl Tunnel {
    /// The handle on tunnel `id` (to peer `peer`), which the lifecycle just set up.
    pub(super) fn new(gateway: Arc<Gateway>, id: TunnelId, peer: String) -> Arc<Tunnel> {
        Arc::new(Tunnel {
            frames_ready: Notify::new(),
            control_ready: Notify::new(),
            control_busy: AtomicBool::new(false),
            control_idle: Notify::new(),
            control_room: Notify::new(),
            receive_room: Notify::new(),
            connect_turn: Notify::new(),
            id,
            peer,
            closed: CancellationToken::new(),
            control_up: tokio::sync::watch::channel(false).0,
            gateway,
            gone: Mutex::new(None),
        })
    }

    pub fn gateway(&self) -> &Arc<Gateway> {
        &self.gateway
    }

    pub fn frame_len(&self) -> usize {
        self.gateway.config.limits.frame_len
    }

    pub fn session_count(self: &Arc<Self>) -> usize {
        self.with_core(|c| c.session_count())
    }

    /// Resets every session, telling the peer (unlike giving the tunnel up):
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
            let control = self.with_state(|state, _, conns| {
                let c = state.table.control()?;
                conns.get(&c)?.info.clone()
            });
            if control.is_some_and(|c| c.send_queue_empty()) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// Microseconds since the gateway started: the core's clock.
    pub fn now(&self) -> u64 {
        self.gateway.now_us()
    }

    /// Runs `f` on the core, then dispatches the events it produced.
    pub fn with_core<T>(self: &Arc<Self>, f: impl FnOnce(&mut TunnelCore) -> T) -> T {
        self.with_state(|state, _, _| f(&mut state.core))
    }

    /// Wakes whoever carries frames: the data flows' writers and the lane.
    pub(super) fn frames_ready(&self) -> &Notify {
        &self.frames_ready
    }

    /// Runs `f` on the tunnel's state for the lane, after the pacer's sample of every
    /// carrier's progress if one is due (the data flows may be idle while the lane carries).
    pub(super) fn with_lane_state<T>(
        self: &Arc<Self>,
        now: u64,
        f: impl FnOnce(&mut TunnelState) -> T,
    ) -> T {
        self.with_state(|state, _, conns| {
            state.sample_flows(now, |c| conns.get(&c)?.info.as_ref()?.flow_progress());
            f(state)
        })
    }

    /// Runs `f` on the tunnel's state, the kernel's part of it and the connections: the
    /// lifecycle's while this is its tunnel, else what was left of it. Then dispatches the
    /// core's events.
    fn with_state<T>(
        self: &Arc<Self>,
        f: impl FnOnce(&mut TunnelState, &mut Local, &Conns) -> T,
    ) -> T {
        let mut link = self.gateway.link();
        if let Some((state, local, conns)) = link.parts(self.id) {
            let out = f(state, local, conns);
            self.gateway.settle_core(&mut link);
            return out;
        }
        drop(link);
        let mut gone = self.gone.lock().expect("not poisoned");
        // A handle is made with its tunnel, and is left this when the tunnel goes.
        let Gone { state, local } = gone.as_mut().expect("a tunnel given up");
        let out = f(state, local, &Conns::new());
        self.dispatch(&mut state.core, local);
        out
    }

    /// The lifecycle gave the tunnel up (`state`, its sessions reset): the resets reach their
    /// endpoint tasks, and the tunnel's tasks stop.
    pub(super) fn went_down(self: &Arc<Self>, mut state: Box<TunnelState>, mut local: Local) {
        self.dispatch(&mut state.core, &mut local);
        *self.gone.lock().expect("not poisoned") = Some(Gone { state, local });
        self.control_up.send_replace(false);
        self.closed.cancel();
    }

    /// Follows the control connection in place (`table`'s): a new one starts with nothing
    /// on its way, and new sessions open while there is one.
    pub(super) fn keep_up(&self, table: &ConnTable, local: &mut Local, conns: &Conns) {
        let control = table.control().filter(|c| conns.contains_key(c));
        if control != local.control {
            local.control = control;
            // The old writer may have died (or been retired) mid-flush.
            self.control_busy.store(false, Ordering::SeqCst);
            self.control_idle.notify_waiters();
            self.control_up.send_replace(control.is_some());
        }
    }

    /// Hands the core's events to the tasks waiting for them.
    pub(super) fn dispatch(self: &Arc<Self>, core: &mut TunnelCore, local: &mut Local) {
        while let Some(event) = core.poll_event() {
            match event {
                Event::FramesReady => self.frames_ready.notify_waiters(),
                // Every waiter: a control writer being retired may still be
                // waiting next to the one that took its place.
                Event::ControlReady => self.control_ready.notify_waiters(),
                Event::ControlRoom => self.control_room.notify_waiters(),
                Event::ReceiveRoom => self.receive_room.notify_waiters(),
                Event::Readable(id) => {
                    if let Some(s) = local.signals.get(&id) {
                        s.readable.notify_one();
                    }
                }
                Event::Writable(id) => {
                    if let Some(s) = local.signals.get(&id) {
                        s.writable.notify_one();
                    }
                }
                // Rare (only after the global budget ran dry): wake everyone.
                Event::CreditFreed => local.signals.values().for_each(|s| s.writable.notify_one()),
                Event::Accepted(id) => {
                    if let Some(s) = local.signals.get(&id) {
                        s.open_result(OpenOutcome::Accepted);
                    }
                }
                Event::Refused {
                    session,
                    reason,
                    detail,
                } => {
                    if let Some(s) = local.signals.remove(&session) {
                        s.open_result(OpenOutcome::Refused { reason, detail });
                    }
                }
                Event::Reset { session, reason } => {
                    Stats::inc(&self.gateway.stats.sessions_reset);
                    // Reset while it waited to connect: it leaves the line unconnected (its
                    // task wakes to see that).
                    if !local.connect_order.is_empty() {
                        let _ = local.connect_order.done(session);
                        self.connect_turn.notify_waiters();
                    }
                    if let Some(s) = local.signals.remove(&session) {
                        *s.reset_reason.lock().expect("not poisoned") = Some(reason);
                        s.reset.cancel();
                        // Dropping `opened` tells a waiting opener it is over.
                        s.opened.lock().expect("not poisoned").take();
                    }
                }
                Event::Closed(id) => {
                    local.signals.remove(&id);
                }
                Event::ConnectRequested { session, target } => {
                    let _ = local.connect_order.queue(target, session);
                    tokio::spawn(super::egress::connect(self.clone(), session, target));
                }
            }
        }
    }

    /// Resets session `id` (`label`, of ingress `index`) once it has moved nothing for
    /// `limit`.
    pub fn watch_idle(
        self: &Arc<Self>,
        id: SessionId,
        limit: Duration,
        label: String,
        index: usize,
    ) {
        let now = self.now();
        self.with_state(|_, local, _| local.idle.watch(id, limit, label, index, now));
    }

    /// Whether session `id` may connect to its target now (`Some(true)`), must wait for the
    /// connects before it (`Some(false)`), or ended while it waited (`None`).
    pub fn connect_turn(self: &Arc<Self>, id: SessionId) -> Option<bool> {
        self.with_state(|_, local, _| local.connect_order.turn(id))
    }

    /// Session `id`'s connect is over, either way: the next one to its target may go.
    pub fn connect_done(self: &Arc<Self>, id: SessionId) {
        self.with_state(|_, local, _| local.connect_order.done(id));
        self.connect_turn.notify_waiters();
    }

    /// Waits until session `id` may connect (true), or ended while it waited (false).
    pub async fn wait_connect_turn(self: &Arc<Self>, id: SessionId) -> bool {
        wait_until(&self.connect_turn, || match self.connect_turn(id) {
            Some(false) => None,
            turn => Some(turn.is_some()),
        })
        .await
    }

    /// Opens the session of `client` of ingress `index` towards `target` through the peer.
    pub fn open_session(
        self: &Arc<Self>,
        client: SocketAddr,
        target: SocketAddr,
        index: usize,
    ) -> Result<
        (
            SessionId,
            Arc<SessionSignals>,
            oneshot::Receiver<OpenOutcome>,
        ),
        SessionError,
    > {
        let (tx, rx) = oneshot::channel();
        let signals = Arc::new(SessionSignals::new(Some(client), Some(tx)));
        self.with_state(|state, local, _| {
            let id = open_client_session(&mut state.core, client, target, index, &self.peer)?;
            local.signals.insert(id, signals.clone());
            Ok((id, signals, rx))
        })
    }

    /// Accepts a peer-opened session once its target is connected.
    pub fn accept_session(
        self: &Arc<Self>,
        id: SessionId,
    ) -> Result<Arc<SessionSignals>, SessionError> {
        let signals = Arc::new(SessionSignals::new(None, None));
        self.with_state(|state, local, _| {
            state.core.accept(id)?;
            local.signals.insert(id, signals.clone());
            Ok(signals)
        })
    }

    /// Whether `conn` is the control connection in place.
    fn is_control(self: &Arc<Self>, conn: ConnRef) -> bool {
        self.with_state(|state, _, _| state.table.control() == Some(conn))
    }

    /// Serves control connection `conn`, in place, until it fails.
    pub(super) async fn run_control(
        self: Arc<Self>,
        conn: ConnRef,
        mut reader: Reader,
        mut writer: Writer,
    ) -> Result<(), ConnFailure> {
        let read = async {
            loop {
                // A peer that sends faster than it reads our answers waits
                // here instead of growing the queue.
                wait_until(&self.control_room, || {
                    (!self.with_core(|c| c.control_backlogged())).then_some(())
                })
                .await;
                let msg = reader.read_message().await?;
                self.gateway.message_in_place(conn, msg, None);
            }
        };
        let write = async {
            // Takes the next control message if this connection is still the
            // one in place: a retired writer must not take (and lose) any.
            let take = || {
                self.with_state(|state, _, _| {
                    if state.table.control() != Some(conn) {
                        return None;
                    }
                    let msg = state.core.poll_control();
                    if msg.is_some() {
                        self.control_busy.store(true, Ordering::SeqCst);
                    }
                    msg
                })
            };
            loop {
                // Marked busy under the link's lock, together with taking the
                // message, so `control_delivered` never sees an empty queue
                // while a message is on its way to the socket.
                let first = wait_until(&self.control_ready, &take).await;
                writer.push(&first)?;
                while let Some(msg) = take() {
                    writer.push(&msg)?;
                }
                writer.flush().await?;
                if self.is_control(conn) {
                    self.control_busy.store(false, Ordering::SeqCst);
                    self.control_idle.notify_waiters();
                }
            }
        };
        tokio::select! {
            r = read => r,
            r = write => r,
        }
    }

    /// Serves data flow `idx` on connection `id`, in place, until it fails. Whatever it
    /// carried that the peer has not acked goes out on the other flows when it is lost.
    pub(super) async fn run_flow(
        self: Arc<Self>,
        idx: usize,
        id: ConnRef,
        reader: Reader,
        writer: Writer,
    ) -> Result<(), ConnFailure> {
        tokio::select! {
            r = self.flow_reader(id, reader) => r,
            r = self.flow_writer(idx, id, writer) => r,
        }
    }

    async fn flow_reader(
        self: &Arc<Self>,
        id: ConnRef,
        mut reader: Reader,
    ) -> Result<(), ConnFailure> {
        loop {
            // Backpressure, never loss: while endpoints leave the receive
            // budget full, the peer's frames wait in TCP.
            wait_until(&self.receive_room, || {
                (!self.with_core(|c| c.receive_paused())).then_some(())
            })
            .await;
            let msg = reader.read_message().await?;
            let unpacked = reader.take_unpacked();
            self.gateway.message_in_place(id, msg, unpacked);
        }
    }

    async fn flow_writer(
        self: &Arc<Self>,
        idx: usize,
        id: ConnRef,
        mut writer: Writer,
    ) -> Result<(), ConnFailure> {
        // Takes flow `idx`'s next frame if this connection is still the one
        // in place: frames a retired connection took would sit in the new
        // one's ledger, sent nowhere.
        let take = || {
            let now = self.now();
            self.with_state(|state, _, conns| {
                if state.table.flow(idx) != Some(id) {
                    return None;
                }
                state.sample_flows(now, |c| conns.get(&c)?.info.as_ref()?.flow_progress());
                state.core.poll_frame(now, idx)
            })
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
                self.with_state(|state, _, conns| {
                    let table = &state.table;
                    let others: Vec<SendSide> = (0..table.flow_count())
                        .filter(|&k| k != idx)
                        .filter_map(|k| conns.get(&table.flow(k)?)?.info.as_ref()?.send_side())
                        .collect();
                    stall::stalled(&me, &others)
                })
            })
            .flatten();
        let written = info.sent.load(Ordering::Relaxed);
        let (frames, restart) = match sent.step(self.now(), written, me.stuck, stall) {
            StallStep::Send => return false,
            StallStep::Hold => return true,
            StallStep::Rescue { frames, restart } => (frames, restart),
        };
        if restart {
            let (cc, peer) = (&self.gateway.tuning.congestion, &self.peer);
            match info.restart_congestion_control(cc) {
                Ok(()) => info!(
                    "peer {peer}: data flow {idx} paced at {} B/s with {} B waiting, far slower than the other flows: {cc} restarted",
                    me.pacing_rate, me.stuck
                ),
                Err(e) => warn!("peer {peer}: data flow {idx}: restarting {cc}: {e}"),
            }
        }
        self.with_state(|state, _, _| {
            if state.table.flow(idx) == Some(id) {
                state.core.flow_stalled(idx, frames);
            }
        });
        true
    }

    /// Credits what packing a batch's frames did to their sessions: once per batch, so
    /// the core's lock is not taken per frame.
    fn note_packing(self: &Arc<Self>, packed: impl ExactSizeIterator<Item = PackNote>) {
        if packed.len() > 0 {
            self.with_core(|c| packed.for_each(|n| c.note_packing(n)));
        }
    }

    /// The tunnel as `lmas status` shows it.
    pub fn status(self: &Arc<Self>) -> TunnelStatus {
        let up = *self.control_up.borrow();
        let now = self.now();
        self.with_state(|state, local, conns| {
            let endpoint = |id| {
                let signals = local.signals.get(&id);
                let age = signals.map_or(0.0, |g| g.started.elapsed().as_secs_f64());
                (signals.and_then(|g| g.source), age)
            };
            let connection = |id| {
                let c = conns.get(&id)?.info.as_ref()?;
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
            TunnelStatus::of(state, up, now, endpoint, connection)
        })
    }
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

//! One session's pump: the state machine between the session's local TCP
//! connection (the hypervisor's, or the target's) and the core. The DPDK
//! datapath drives it, lending each session's smoltcp socket for a turn as a
//! [`LocalSocket`]; no I/O or clock here.
//!
//! - Up, endpoint to core: bytes are read from the socket only while the core
//!   has send capacity, one frame's worth at a time, so TCP backpressure
//!   reaches the endpoint. Its FIN becomes `finish` once every byte before it
//!   was taken.
//! - Down, core to endpoint: the core is read only once the socket took all
//!   of the previous read; the core's end of stream closes the socket (our FIN).
//! - A socket that turns closed without both FINs was reset, timed out or
//!   never connected: so is the session (`ConnectionReset`).
//! - Our ingress's session not accepted by the peer within the connect
//!   timeout is reset (`Timeout`); the peer's session whose connect to the
//!   target fails is refused by the driver.

use bytes::{Buf, Bytes};

use super::{Instant, ReadOutcome, SessionError, TunnelCore};
use crate::protocol::{ResetReason, SessionId};

/// A session's local TCP connection, as the pump sees it.
pub trait LocalSocket {
    /// Received bytes wait to be read.
    fn can_recv(&self) -> bool;
    /// Takes up to `max` received bytes (none if none wait).
    fn recv_upto(&mut self, max: usize) -> Bytes;
    /// Offers the endpoint at most `bytes` of window beyond what we have not
    /// read (its migration's share of the LAN window, `session::lan_window`).
    fn limit_receive_window(&mut self, bytes: usize);
    /// Queues what there is room for of `data`; how many bytes that was
    /// (at most `data.len()`).
    fn send(&mut self, data: &[u8]) -> usize;
    /// Queues our FIN.
    fn close(&mut self);
    /// Where the connection is.
    fn phase(&self) -> Phase;
    /// The connection is up: from now on it may be quiet for as long as it
    /// likes (a migration may be), so its connect timeout no longer applies.
    fn clear_timeout(&mut self);
    /// Its TCP state and receive queue, for a log line.
    fn describe(&self) -> String;
}

/// Where a local TCP connection is, as far as the pump cares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Our connect waits for an answer to its SYN.
    Connecting,
    /// Its three-way handshake is under way (a listener took its SYN).
    Handshaking,
    /// Connected, and neither end closed.
    Established,
    /// Connected, and we closed (our FIN); the endpoint's has not come.
    Closing,
    /// Connected, and the endpoint's FIN arrived.
    FinReceived,
    /// Over: both FINs went through, or it was reset, timed out, or never connected.
    Closed,
}

impl Phase {
    /// Past the three-way handshake, and not over.
    fn is_connected(self) -> bool {
        matches!(
            self,
            Phase::Established | Phase::Closing | Phase::FinReceived
        )
    }
}

/// Where a session's local connection is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    /// Our ingress: waiting for the peer's accept.
    Opening,
    /// The peer's session: waiting for the connects before it to the same
    /// target (the driver keeps the order).
    Queued,
    /// The peer's session: connecting to the target until the deadline.
    Connecting {
        deadline: Instant,
    },
    Open,
}

/// What the driver does after a turn of the pump.
#[must_use]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Nothing: bytes moved, or there was nothing to do yet.
    Idle,
    /// The connect to the target completed and the session is open; the core
    /// took it if `accepted`. The next connect to that target may go.
    Connected { accepted: bool },
    /// The connect to the target failed, for this reason: the driver refuses
    /// the session and drops the socket.
    ConnectFailed(&'static str),
    /// The socket ended without a clean end of both directions: the session
    /// was reset (`ConnectionReset`).
    Reset,
    /// The peer did not accept our ingress's session within its connect
    /// timeout: the session was reset (`Timeout`); the driver counts and logs it.
    ConnectTimedOut,
}

/// One session's pump: its state and what is on its way through it.
#[derive(Debug)]
pub struct Pump {
    pub state: State,
    /// Bytes taken from the core that the socket had no room for yet.
    down: Option<Bytes>,
    /// The endpoint's FIN arrived (seen in a state only a FIN leads to);
    /// a socket that turns closed without it was reset.
    fin_seen: bool,
    /// The endpoint half-closed and the core knows.
    up_done: bool,
    /// The core's stream ended and the socket was closed (FIN queued).
    down_done: bool,
    /// Until when the peer may take to accept: the ingress's connect timeout.
    open_by: Instant,
}

impl Pump {
    /// A pump in `state`, with no connect timeout of ours.
    pub fn new(state: State) -> Self {
        Pump {
            state,
            down: None,
            fin_seen: false,
            up_done: false,
            down_done: false,
            open_by: Instant::MAX,
        }
    }

    /// Our ingress's session, which the peer must accept by `open_by`.
    pub fn opening(open_by: Instant) -> Self {
        Pump {
            open_by,
            ..Pump::new(State::Opening)
        }
    }

    /// Moves session `id` forward: its connect, its bytes both ways, its ends.
    pub fn step<S: LocalSocket>(
        &mut self,
        now: Instant,
        id: SessionId,
        core: &mut TunnelCore,
        sock: &mut S,
        frame_len: usize,
    ) -> Outcome {
        match self.state {
            // Its turn to connect has not come.
            State::Queued => Outcome::Idle,
            State::Connecting { deadline } => self.connecting(now, id, core, sock, deadline),
            State::Opening | State::Open => self.transfer(now, id, core, sock, frame_len),
        }
    }

    /// A turn of the peer's session while its connect to the target is under way.
    fn connecting<S: LocalSocket>(
        &mut self,
        now: Instant,
        id: SessionId,
        core: &mut TunnelCore,
        sock: &mut S,
        deadline: Instant,
    ) -> Outcome {
        if sock.phase() == Phase::Established {
            sock.clear_timeout();
            self.state = State::Open;
            let accepted = core.accept(id).is_ok();
            return Outcome::Connected { accepted };
        }
        if sock.phase() != Phase::Connecting {
            return Outcome::ConnectFailed("refused or unreachable");
        }
        if now < deadline {
            Outcome::Idle
        } else {
            Outcome::ConnectFailed("timed out")
        }
    }

    /// A turn of an ingress session or of an open one.
    fn transfer<S: LocalSocket>(
        &mut self,
        now: Instant,
        id: SessionId,
        core: &mut TunnelCore,
        sock: &mut S,
        frame_len: usize,
    ) -> Outcome {
        let phase = sock.phase();
        self.fin_seen |= phase == Phase::FinReceived;
        if phase == Phase::Closed && !(self.fin_seen && self.down_done) {
            // The endpoint reset, timed out, or never finished its
            // handshake: not a clean end of both directions.
            core.reset(id, ResetReason::ConnectionReset);
            return Outcome::Reset;
        }
        // From the first turn, before the peer accepts: the endpoint's
        // congestion window grows with what it may send meanwhile (a round
        // trip), and its send buffer with that, for good.
        if let Ok(Some(window)) = core.endpoint_receive_buffer(id) {
            sock.limit_receive_window(usize::try_from(window).unwrap_or(usize::MAX));
        }
        if self.state == State::Opening && now >= self.open_by {
            // The peer is told (reset, reason timeout) and gives up its connect.
            core.reset(id, ResetReason::Timeout);
            return Outcome::ConnectTimedOut;
        }
        if self.state == State::Opening || !(phase.is_connected() || sock.can_recv()) {
            return Outcome::Idle;
        }
        sock.clear_timeout();
        // A session the core no longer has ends by its event, not here.
        if !self.up_done && self.take_up(id, core, sock, frame_len).is_err() {
            return Outcome::Idle;
        }
        self.give_down(now, id, core, sock);
        Outcome::Idle
    }

    /// Endpoint to core, while the core has room; then the endpoint's FIN.
    fn take_up<S: LocalSocket>(
        &mut self,
        id: SessionId,
        core: &mut TunnelCore,
        sock: &mut S,
        frame_len: usize,
    ) -> Result<(), SessionError> {
        loop {
            let cap = core.send_capacity(id)?;
            if cap == 0 || !sock.can_recv() {
                break;
            }
            // One frame's worth per chunk: heap-sized buffers the
            // allocator recycles (larger ones are mmapped and
            // page-faulted in anew each time).
            let want = (cap as usize).min(frame_len);
            let chunk = sock.recv_upto(want);
            if chunk.is_empty() || core.write(id, chunk).is_err() {
                break;
            }
        }
        if self.fin_seen && !sock.can_recv() {
            log::debug!("session {id}: endpoint finished ({})", sock.describe());
            self.up_done = true;
            let _ = core.finish(id);
        }
        Ok(())
    }

    /// Core to endpoint, while the socket takes it all; then our FIN.
    fn give_down<S: LocalSocket>(
        &mut self,
        now: Instant,
        id: SessionId,
        core: &mut TunnelCore,
        sock: &mut S,
    ) {
        while !self.down_done {
            if let Some(b) = &mut self.down {
                let n = sock.send(b);
                b.advance(n);
                if !b.is_empty() {
                    break;
                }
                self.down = None;
            }
            match core.read(now, id) {
                Ok(ReadOutcome::Data(b)) => self.down = Some(b),
                Ok(ReadOutcome::Finished) => {
                    log::debug!("session {id}: stream finished, closing");
                    sock.close();
                    self.down_done = true;
                }
                Ok(ReadOutcome::Blocked) | Err(_) => break,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::VecDeque;

    use super::*;
    use crate::protocol::Message;
    use crate::session::{Event, Limits, Origin, Side};

    const FRAME_LEN: usize = 700;

    /// An in-memory socket: what the endpoint sent, what it was sent, and its ends.
    #[derive(Debug, Default)]
    struct FakeSocket {
        /// From the endpoint, not read yet.
        incoming: VecDeque<u8>,
        /// To the endpoint.
        outgoing: Vec<u8>,
        /// How many more bytes its send buffer takes.
        room: usize,
        connected: bool,
        fin_received: bool,
        closed: bool,
        /// Our FIN was queued.
        fin_sent: bool,
        timeout_cleared: bool,
        /// Reads asked for, and the largest `max` one asked for.
        reads: usize,
        largest_read: usize,
        /// The window it was told to offer at most.
        receive_window: Option<usize>,
    }

    impl FakeSocket {
        fn connected(incoming: &[u8], room: usize) -> Self {
            FakeSocket {
                incoming: incoming.iter().copied().collect(),
                room,
                connected: true,
                ..FakeSocket::default()
            }
        }
    }

    impl LocalSocket for FakeSocket {
        fn can_recv(&self) -> bool {
            !self.incoming.is_empty()
        }
        fn recv_upto(&mut self, max: usize) -> Bytes {
            self.reads += 1;
            self.largest_read = self.largest_read.max(max);
            let n = max.min(self.incoming.len());
            self.incoming.drain(..n).collect::<Vec<u8>>().into()
        }
        fn limit_receive_window(&mut self, bytes: usize) {
            self.receive_window = Some(bytes);
        }
        fn send(&mut self, data: &[u8]) -> usize {
            let n = data.len().min(self.room);
            self.outgoing.extend_from_slice(&data[..n]);
            self.room -= n;
            n
        }
        fn close(&mut self) {
            self.fin_sent = true;
        }
        fn phase(&self) -> Phase {
            match (
                self.closed,
                self.connected,
                self.fin_received,
                self.fin_sent,
            ) {
                (true, ..) => Phase::Closed,
                (_, false, ..) => Phase::Connecting,
                (_, _, true, _) => Phase::FinReceived,
                (_, _, _, true) => Phase::Closing,
                _ => Phase::Established,
            }
        }
        fn clear_timeout(&mut self) {
            self.timeout_cleared = true;
        }
        fn describe(&self) -> String {
            "fake".into()
        }
    }

    fn limits() -> Limits {
        Limits {
            session_window: 2000,
            global_buffer: 1 << 20,
            unsent_buffer: 1 << 20,
            unsent_time_us: crate::session::unsent::UNSENT_TIME_US,
            receive_budget: 1 << 20,
            frame_len: FRAME_LEN,
            max_sessions: 4,
            // Every read acks: the sender's window comes back at once.
            ack_every: 1,
            ack_delay_us: 100,
        }
    }

    /// Our core (its ingress opened session `id`) and the peer's, wired back
    /// to back by hand; the peer accepts the connect and reads all it is sent.
    struct Pair {
        ours: TunnelCore,
        peer: TunnelCore,
        id: SessionId,
        /// What the peer read of the session, and whether it saw the end.
        peer_received: Vec<u8>,
        peer_finished: bool,
    }

    impl Pair {
        /// Session `id` opened on our side; the peer has not heard of it yet.
        fn opening() -> Pair {
            let mut ours = TunnelCore::new(Side::Dialer, limits(), 1);
            let target = "192.0.2.1:5000".parse().unwrap();
            let id = ours.open(target, Origin::default()).unwrap();
            Pair {
                ours,
                peer: TunnelCore::new(Side::Acceptor, limits(), 1),
                id,
                peer_received: Vec::new(),
                peer_finished: false,
            }
        }

        /// Session `id` open at both ends.
        fn open() -> Pair {
            let mut pair = Pair::opening();
            pair.exchange();
            assert!(pair.our_events().contains(&Event::Accepted(pair.id)));
            pair
        }

        /// Control messages and data frames both ways until nothing moves.
        fn exchange(&mut self) {
            loop {
                let mut moved = false;
                for (from, to) in [(0, 1), (1, 0)] {
                    let cores = [&mut self.ours, &mut self.peer];
                    while let Some(m) = cores[from].poll_control() {
                        cores[to].handle_message(m).unwrap();
                        moved = true;
                    }
                    while let Some(f) = cores[from].poll_frame(0, 0) {
                        cores[to].handle_message(Message::Data(f)).unwrap();
                        moved = true;
                    }
                }
                while let Some(e) = self.peer.poll_event() {
                    if let Event::ConnectRequested { session, .. } = e {
                        self.peer.accept(session).unwrap();
                    }
                }
                while let Ok(out) = self.peer.read(0, self.id) {
                    match out {
                        ReadOutcome::Data(b) => self.peer_received.extend_from_slice(&b),
                        ReadOutcome::Finished => {
                            self.peer_finished = true;
                            break;
                        }
                        ReadOutcome::Blocked => break,
                    }
                }
                if !moved {
                    return;
                }
            }
        }

        fn our_events(&mut self) -> Vec<Event> {
            std::iter::from_fn(|| self.ours.poll_event()).collect()
        }

        fn step(&mut self, pump: &mut Pump, sock: &mut FakeSocket, now: Instant) -> Outcome {
            pump.step(now, self.id, &mut self.ours, sock, FRAME_LEN)
        }

        /// `n` times: an exchange, then a turn of the pump, which has nothing to report.
        fn idle_turns(&mut self, n: usize, pump: &mut Pump, sock: &mut FakeSocket) {
            for _ in 0..n {
                self.exchange();
                assert_eq!(self.step(pump, sock, 0), Outcome::Idle);
            }
        }
    }

    fn pattern(len: usize) -> Vec<u8> {
        (0..len).map(|i| (i % 251) as u8).collect()
    }

    #[test]
    fn up_reads_only_what_the_core_has_room_for_a_frame_at_a_time() {
        let mut pair = Pair::open();
        let sent = pattern(5000);
        let mut sock = FakeSocket::connected(&sent, 0);
        let mut pump = Pump::new(State::Open);
        assert_eq!(pair.step(&mut pump, &mut sock, 0), Outcome::Idle);
        assert!(sock.timeout_cleared);
        assert_eq!(sock.largest_read, FRAME_LEN);
        // The session's window is full: the rest waits in the socket.
        assert_eq!(pair.ours.send_capacity(pair.id), Ok(0));
        let (left, reads) = (sock.incoming.len(), sock.reads);
        assert!(left > 0 && left < sent.len());
        assert_eq!(pair.step(&mut pump, &mut sock, 0), Outcome::Idle);
        assert_eq!(
            (sock.incoming.len(), sock.reads),
            (left, reads),
            "read with no room in the core"
        );
        // The peer's acks bring the room back, a window at a time.
        pair.idle_turns(10, &mut pump, &mut sock);
        pair.exchange();
        assert!(sock.incoming.is_empty());
        assert!(pair.peer_received == sent);
        assert!(!pair.peer_finished);
    }

    #[test]
    fn an_ingress_socket_offers_its_migrations_share_of_the_lan_window() {
        use crate::session::lan_window::migration_window;
        let mut pair = Pair::open();
        let mut sock = FakeSocket::connected(&pattern(100), 0);
        let mut pump = Pump::new(State::Open);
        assert_eq!(pair.step(&mut pump, &mut sock, 0), Outcome::Idle);
        // No rate measured between these two cores: the unmeasured window.
        let window = usize::try_from(migration_window(None)).unwrap();
        assert_eq!(sock.receive_window, Some(window));
    }

    #[test]
    fn down_keeps_what_the_socket_had_no_room_for() {
        let mut pair = Pair::open();
        let sent = pattern(3000);
        pair.peer.write(pair.id, Bytes::from(sent.clone())).unwrap();
        pair.exchange();
        let mut sock = FakeSocket::connected(&[], 1000);
        let mut pump = Pump::new(State::Open);
        assert_eq!(pair.step(&mut pump, &mut sock, 0), Outcome::Idle);
        assert!(sock.outgoing == sent[..1000]);
        // The core still holds what was not read while the socket was full.
        assert!(pair.ours.ready() > 0);
        assert_eq!(pair.step(&mut pump, &mut sock, 0), Outcome::Idle);
        assert_eq!(sock.outgoing.len(), 1000);
        // Room again: the leftover goes first, in order, then the rest.
        sock.room = 1500;
        pair.idle_turns(3, &mut pump, &mut sock);
        assert!(sock.outgoing == sent[..2500]);
        sock.room = usize::MAX;
        pair.idle_turns(3, &mut pump, &mut sock);
        assert!(sock.outgoing == sent);
        assert!(!sock.fin_sent);
    }

    #[test]
    fn the_endpoints_fin_then_the_cores_end_close_cleanly() {
        let mut pair = Pair::open();
        let sent = pattern(5000);
        let mut sock = FakeSocket::connected(&sent, usize::MAX);
        sock.fin_received = true;
        let mut pump = Pump::new(State::Open);
        assert_eq!(pair.step(&mut pump, &mut sock, 0), Outcome::Idle);
        pair.exchange();
        assert!(!pair.peer_finished, "finished before every byte was taken");
        for _ in 0..10 {
            assert_eq!(pair.step(&mut pump, &mut sock, 0), Outcome::Idle);
            pair.exchange();
        }
        assert!(pair.peer_received == sent);
        assert!(pair.peer_finished);
        assert!(!sock.fin_sent, "the core's stream goes on");

        pair.peer
            .write(pair.id, Bytes::from_static(b"reply"))
            .unwrap();
        pair.peer.finish(pair.id).unwrap();
        pair.exchange();
        assert_eq!(pair.step(&mut pump, &mut sock, 0), Outcome::Idle);
        assert_eq!(sock.outgoing, b"reply");
        assert!(sock.fin_sent);
        pair.exchange();
        // Both FINs went through: the socket closes, and that is no reset.
        sock.closed = true;
        sock.connected = false;
        assert_eq!(pair.step(&mut pump, &mut sock, 0), Outcome::Idle);
        let events = pair.our_events();
        assert!(events.contains(&Event::Closed(pair.id)), "{events:?}");
        assert!(!events.iter().any(|e| matches!(e, Event::Reset { .. })));
    }

    #[test]
    fn a_socket_closed_without_both_fins_resets_the_session() {
        // Closed with no FIN at all, and closed after the endpoint's FIN but
        // before the core's end: neither is a clean end of both directions.
        for fin_received in [false, true] {
            let mut pair = Pair::open();
            let mut sock = FakeSocket {
                closed: true,
                fin_received,
                ..FakeSocket::default()
            };
            let mut pump = Pump::new(State::Open);
            assert_eq!(pair.step(&mut pump, &mut sock, 0), Outcome::Reset);
            let reset = Event::Reset {
                session: pair.id,
                reason: ResetReason::ConnectionReset,
            };
            assert!(pair.our_events().contains(&reset));
            let told = std::iter::from_fn(|| pair.ours.poll_control()).any(|m| {
                m == Message::Reset {
                    session: pair.id,
                    reason: ResetReason::ConnectionReset,
                }
            });
            assert!(told, "the peer is told");
        }
    }

    #[test]
    fn opening_past_its_connect_timeout_resets_with_timeout() {
        let mut pair = Pair::opening();
        let mut sock = FakeSocket::connected(b"early", usize::MAX);
        let mut pump = Pump::opening(1_000);
        // Nothing is read before the peer accepts.
        assert_eq!(pair.step(&mut pump, &mut sock, 999), Outcome::Idle);
        assert_eq!(sock.incoming.len(), 5);
        assert_eq!(
            pair.step(&mut pump, &mut sock, 1_000),
            Outcome::ConnectTimedOut
        );
        let reset = Event::Reset {
            session: pair.id,
            reason: ResetReason::Timeout,
        };
        assert!(pair.our_events().contains(&reset));
    }

    #[test]
    fn the_connect_to_the_target_opens_the_session_or_fails_by_its_deadline() {
        // The peer's core with the session our dialer opened.
        let mut pair = Pair::opening();
        let open = pair.ours.poll_control().unwrap();
        let mut peer = TunnelCore::new(Side::Acceptor, limits(), 1);
        peer.handle_message(open).unwrap();
        let connecting = || Pump::new(State::Connecting { deadline: 1_000 });

        let mut queued = Pump::new(State::Queued);
        let mut sock = FakeSocket::connected(b"not yet", 0);
        let outcome = queued.step(0, pair.id, &mut peer, &mut sock, FRAME_LEN);
        assert_eq!(outcome, Outcome::Idle);
        assert_eq!((sock.incoming.len(), sock.timeout_cleared), (7, false));

        let mut pump = connecting();
        let mut sock = FakeSocket::default();
        let outcome = pump.step(999, pair.id, &mut peer, &mut sock, FRAME_LEN);
        assert_eq!(outcome, Outcome::Idle);
        let outcome = pump.step(1_000, pair.id, &mut peer, &mut sock, FRAME_LEN);
        assert_eq!(outcome, Outcome::ConnectFailed("timed out"));

        sock.closed = true;
        let outcome = connecting().step(0, pair.id, &mut peer, &mut sock, FRAME_LEN);
        assert_eq!(outcome, Outcome::ConnectFailed("refused or unreachable"));

        let mut pump = connecting();
        let mut sock = FakeSocket::connected(&[], 0);
        let outcome = pump.step(0, pair.id, &mut peer, &mut sock, FRAME_LEN);
        assert_eq!(outcome, Outcome::Connected { accepted: true });
        assert_eq!(pump.state, State::Open);
        assert!(sock.timeout_cleared);
        let accept = peer.poll_control().unwrap();
        assert!(matches!(accept, Message::Accept { session, .. } if session == pair.id));
    }
}

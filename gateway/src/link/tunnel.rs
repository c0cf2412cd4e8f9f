//! One tunnel's state, sans-IO: the session core and its connection table, and what follows
//! when a connection attaches or dies, a peer message arrives or the grace period runs out.
//! Both datapaths keep their tunnel in one of these, so the rules, the lines in the log and
//! what the driver is asked to count are the same on both; the driver closes the connections
//! it is told to close. Times are the driver's clock in µs.

use std::fmt::Display;
use std::time::Duration;

use log::{debug, info, warn};

use super::conn_table::{ConnRef, ConnTable, ControlAttached, FlowAttached, Lost};
use crate::crypto::DedupOffer;
use crate::protocol::handshake::Shard;
use crate::protocol::{Message, ResetReason, TunnelId};
use crate::session::pacer::FlowProgress;
use crate::session::{
    DedupConfig, Instant, Limits, PeerError, SharePolicy, SharedStore, Side, TunnelCore,
};

/// A tunnel: its id, its session core, which connection serves each role, and how logs name
/// the peer.
pub struct TunnelState {
    pub id: TunnelId,
    pub core: TunnelCore,
    pub table: ConnTable,
    /// `NAME (ADDR)` of the peer, for logs.
    pub peer: String,
    /// Which sub-tunnel of a sharded gateway this is.
    shard: Shard,
    grace: Duration,
}

/// What a peer message came to, for the driver's counters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[must_use = "a message that broke the protocol is counted"]
pub enum Applied {
    Ok,
    /// For a session that just ended (frames and acks still in flight): harmless.
    UnknownSession,
    /// It broke the protocol: the session it named was reset.
    ProtocolError,
}

/// How the tunnel's lines name a connection: its remote address, as the driver knows it.
pub type ConnNames<'a> = &'a dyn Fn(ConnRef) -> String;

/// A tunnel's session core and connection table for `flows` data flows.
#[derive(Clone)]
pub struct TunnelSetup {
    pub side: Side,
    pub limits: Limits,
    pub flows: usize,
    pub grace: Duration,
    pub shard: Shard,
    /// Caps and weights of the whole gateway; a shard enforces its part.
    pub shares: SharePolicy,
    /// `[wan] dedup*`.
    pub dedup: DedupConfig,
    /// The store the gateway keeps across tunnels (`[wan] dedup_dir`); `None`: each tunnel
    /// has its own, in memory.
    pub dedup_store: Option<SharedStore>,
}

impl TunnelState {
    pub fn new(setup: TunnelSetup, id: TunnelId, peer: String) -> TunnelState {
        let TunnelSetup {
            side,
            limits,
            flows,
            grace,
            shard,
            shares,
            dedup,
            dedup_store,
        } = setup;
        let mut core = TunnelCore::new(side, limits, flows)
            .for_shard(shard)
            .with_dedup(dedup, dedup_store);
        core.set_shares(shares.for_shard(shard.count as usize));
        TunnelState {
            id,
            core,
            table: ConnTable::new(flows, grace),
            peer,
            shard,
            grace,
        }
    }

    /// New caps and weights for the whole gateway (a reload); this shard enforces its part.
    pub fn set_shares(&mut self, shares: SharePolicy) {
        self.core
            .set_shares(shares.for_shard(self.shard.count as usize));
    }

    /// `conn` becomes the control connection. The one it replaced (returned) is to be closed:
    /// the peer dials anew only after it gave the old one up, whose RST may have been lost on
    /// the way. A resumed tunnel resyncs: both ends restate their sessions.
    /// `peer_dedup` is what the peer offered for dedup in that connection's handshake.
    pub fn attach_control(
        &mut self,
        conn: ConnRef,
        names: ConnNames<'_>,
        peer_dedup: DedupOffer,
    ) -> ControlAttached {
        let attached = self.table.attach_control(conn);
        self.core.set_peer_dedup(peer_dedup, !attached.resumed);
        if let Some(old) = attached.replaced {
            warn!(
                "tunnel to peer {}: control connection from {} replaced by a new one from {} (the peer gave the old one up); closing the old one",
                self.peer,
                names(old),
                names(conn)
            );
        }
        if attached.resumed {
            self.core.resync();
            info!(
                "tunnel to peer {} resumed with {} sessions",
                self.peer,
                self.core.session_count()
            );
        }
        attached
    }

    /// `conn` becomes data flow `k` (`None`: there is no flow `k`). The one it replaced
    /// (returned) is to be closed, for the same reason as the control connection's; its frames
    /// go out again.
    pub fn attach_flow(
        &mut self,
        k: usize,
        conn: ConnRef,
        names: ConnNames<'_>,
    ) -> Option<FlowAttached> {
        let attached = self.table.attach_flow(k, conn)?;
        if let Some(old) = attached.replaced {
            self.core.flow_lost(k);
            warn!(
                "peer {}: data flow {k} from {} replaced by a new connection from {} (the peer gave the old one up); closing the old one, its frames go out again",
                self.peer,
                names(old),
                names(conn)
            );
        }
        if attached.first_whole {
            // Each shard of a sharded gateway has its own sub-tunnel: say which.
            let shard = if self.shard == Shard::ONE {
                String::new()
            } else {
                format!(" ({})", self.shard)
            };
            info!(
                "tunnel up: peer {}, {} data flows{shard}",
                self.peer,
                self.table.flow_count()
            );
        }
        Some(attached)
    }

    /// Connection `conn` failed or ended at `now`, because of `why`. Only the connection in
    /// place loses its role: a lost data flow's frames go out on the others; a lost control
    /// connection holds the tunnel for the grace period (`hold_until`), or, with none, the
    /// driver takes the tunnel down.
    pub fn lost(&mut self, conn: ConnRef, now: u64, why: &dyn Display) -> Lost {
        let lost = self.table.lost(conn, now);
        let peer = &self.peer;
        match lost {
            Lost::Control { hold_until } => {
                warn!("tunnel to peer {peer}: control connection lost: {why}");
                if hold_until.is_some() {
                    warn!(
                        "tunnel to peer {peer}: holding {} sessions for up to {:?} until the connection is back",
                        self.core.session_count(),
                        self.grace
                    );
                }
            }
            Lost::Flow(k) => {
                self.core.flow_lost(k);
                warn!(
                    "peer {peer}: data flow {k} lost: {why}; its frames go out on the other flows"
                );
            }
            Lost::NotInPlace => {
                debug!("tunnel to peer {peer}: a replaced connection ended: {why}");
            }
        }
        lost
    }

    /// Every data flow's transport progress, read together when the tunnel
    /// pacer wants it (once a round trip); `progress` reads one connection's.
    pub fn sample_flows(
        &mut self,
        now: Instant,
        mut progress: impl FnMut(ConnRef) -> Option<FlowProgress>,
    ) {
        if !self.core.flow_progress_due(now) {
            return;
        }
        let table = &self.table;
        let flows: Vec<_> = (0..table.flow_count())
            .filter_map(|k| Some((k, progress(table.flow(k)?)?)))
            .collect();
        let before = self.core.lane_carries_new();
        self.core.note_flow_progress(now, flows);
        match (before, self.core.lane_carries_new()) {
            (false, true) => info!(
                "tunnel to peer {}: the data flows lose packets: the lane takes the new frames",
                self.peer
            ),
            (true, false) => info!(
                "tunnel to peer {}: the data flows take the new frames again, to see whether the path still loses",
                self.peer
            ),
            _ => {}
        }
    }

    /// Applies one message from the peer to the session core.
    pub fn apply(&mut self, msg: Message) -> Applied {
        let reset = match &msg {
            Message::Reset { session, reason } => Some((*session, *reason)),
            _ => None,
        };
        match self.core.handle_message(msg) {
            Ok(()) => {
                if let Some((id, reason)) = reset {
                    info!("session {id}: reset by peer {}: {reason}", self.peer);
                }
                Applied::Ok
            }
            Err(e @ PeerError::UnknownSession(_)) => {
                debug!("peer {}: {e}", self.peer);
                Applied::UnknownSession
            }
            Err(e) => {
                warn!("peer {}: {e}", self.peer);
                Applied::ProtocolError
            }
        }
    }

    /// When the grace period of a held tunnel runs out.
    pub fn poll_timeout(&self) -> Option<u64> {
        self.table.poll_timeout()
    }

    /// Whether the grace period ran out by `now` (`true` once): then the driver takes the
    /// tunnel down.
    #[must_use = "a tunnel whose grace period ran out must be taken down"]
    pub fn handle_timeout(&mut self, now: u64) -> bool {
        let expired = self.table.handle_timeout(now);
        if expired {
            warn!(
                "tunnel to peer {}: no connection for {:?} (grace period); giving up",
                self.peer, self.grace
            );
        }
        expired
    }

    /// The tunnel goes down: every session is reset (the core reports each). Returns how many.
    pub fn reset_all(&mut self, reason: ResetReason) -> usize {
        let n = self.core.session_count();
        if n > 0 {
            warn!(
                "tunnel to peer {}: resetting {n} sessions: {reason}",
                self.peer
            );
        }
        self.core.reset_all(reason);
        n
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::SessionId;

    fn tunnel(flows: usize) -> TunnelState {
        let setup = TunnelSetup {
            side: Side::Acceptor,
            limits: Limits::default(),
            flows,
            grace: Duration::from_secs(2),
            shard: Shard::ONE,
            shares: SharePolicy::default(),
            dedup: DedupConfig::default(),
            dedup_store: None,
        };
        let id = TunnelId::random(&ring::rand::SystemRandom::new()).expect("random");
        TunnelState::new(setup, id, "gw-a (192.0.2.1:1)".into())
    }

    fn names(c: ConnRef) -> String {
        format!("10.0.0.{c}:4000")
    }

    #[test]
    fn a_replaced_control_connection_is_closed_and_the_tunnel_resumes() {
        let mut t = tunnel(1);
        let first = t.attach_control(1, &names, DedupOffer::default());
        assert_eq!((first.replaced, first.resumed), (None, false));
        let second = t.attach_control(2, &names, DedupOffer::default());
        assert_eq!((second.replaced, second.resumed), (Some(1), true));
        assert_eq!(
            t.lost(1, 5, &"reset"),
            Lost::NotInPlace,
            "the old one's late death"
        );
        assert_eq!(
            t.lost(2, 5, &"reset"),
            Lost::Control {
                hold_until: Some(2_000_005)
            }
        );
        assert!(!t.handle_timeout(2_000_004));
        assert!(t.handle_timeout(2_000_005));
    }

    #[test]
    fn a_message_for_a_session_that_just_ended_is_harmless_and_a_violation_is_told() {
        let mut t = tunnel(1);
        let ack = Message::Ack {
            session: SessionId(7),
            offset: 1,
        };
        assert_eq!(t.apply(ack), Applied::UnknownSession);
        let open = Message::Open {
            session: SessionId(9),
            target: "192.0.2.9:5".parse().unwrap(),
            window: 1,
        };
        assert_eq!(
            t.apply(open),
            Applied::ProtocolError,
            "the acceptor's parity"
        );
        assert_eq!(t.reset_all(ResetReason::TunnelLost), 0);
    }
}

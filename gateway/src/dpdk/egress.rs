//! The remote end of a session on the DPDK datapath: connect to the target
//! the peer asked for, if and only if the allowlist in force permits it when
//! its turn comes ([`crate::link::egress`]), and to one target one connect at a
//! time, in the order the peer opened the sessions ([`crate::link::connect_order`]). The
//! local gateway opens sessions in the order the source's SYNs arrived (see
//! `Net::watch`), and the control connection keeps that order.

use std::net::SocketAddr;

use log::warn;

use super::crypto::CryptoPipe;
use super::engine::Engine;
use super::lan::Endpoint;
use super::phy::FramePort;
use crate::admin::Stats;
use crate::link::{check_egress, EgressCheck, TargetRefusal};
use crate::protocol::SessionId;
use crate::session::pump::State;

impl<P: FramePort, C: CryptoPipe> Engine<P, C> {
    /// The peer asked for a connection to `target` (event `ConnectRequested`): it waits for
    /// the connects before it to the same target.
    pub(super) fn egress_connect(&mut self, id: SessionId, target: SocketAddr, now: u64) {
        let first = self.connect_order.queue(target, id);
        let handle = self.lan_socket();
        let ep = Endpoint::new(handle, State::Queued, target, now);
        self.endpoints.insert(id, ep);
        if first {
            self.start_connect(id, now);
        }
    }

    /// Refuses session `id`'s connect to `target`: one count, one line, and the peer told.
    pub(super) fn refuse_egress(&mut self, id: SessionId, target: SocketAddr, why: TargetRefusal) {
        Stats::inc(&self.stats.sessions_refused);
        let peer = self.link.peer();
        if let Some(t) = &mut self.link.tunnel {
            // Outside the macro: it skips its arguments when the level is off.
            let line = why.refuse(&mut t.core, id, target, &peer);
            warn!("{line}");
        }
    }

    /// Starts the queued connect of session `id`, if the checks allow it now: right before
    /// the connect, so that a reload since the peer opened the session counts.
    fn start_connect(&mut self, id: SessionId, now: u64) {
        let Some(ep) = self.endpoints.get(&id) else {
            return;
        };
        let (h, target) = (ep.handle, ep.target);
        let check = EgressCheck {
            allowed: self.egress.allows(&target),
            stopping: self.stopping,
            ipv4_only: true,
        };
        // Before any connect attempt: never an open relay.
        let connected = match check_egress(&target, check) {
            Err(refusal) => Err(TargetRefusal::Check(refusal)),
            Ok(()) => {
                let SocketAddr::V4(t4) = target else { return };
                let connect = self.lan.connect(h, t4);
                connect.map_err(|e| TargetRefusal::ConnectFailed(e.to_string()))
            }
        };
        match connected {
            Ok(()) => {
                let deadline = now + self.config.connect_timeout_ms * 1000;
                if let Some(ep) = self.endpoints.get_mut(&id) {
                    ep.pump.state = State::Connecting { deadline };
                }
            }
            Err(why) => {
                self.refuse_egress(id, target, why);
                self.endpoints.remove(&id);
                self.close_lan(h, now);
                self.egress_done(id, now);
            }
        }
    }

    /// Session `id`'s connect is over (connected, failed, or the session
    /// ended): the next one to its target may go.
    pub(super) fn egress_done(&mut self, id: SessionId, now: u64) {
        let Some(next) = self.connect_order.done(id) else {
            return;
        };
        let queued = self.endpoints.get(&next);
        if queued.is_some_and(|e| e.pump.state == State::Queued) {
            self.start_connect(next, now);
        }
    }
}

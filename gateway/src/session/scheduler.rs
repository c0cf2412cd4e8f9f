//! Which frame goes out next, and on which flow.
//!
//! Flows *pull*: a datapath asks for a frame only when that flow's socket can
//! take more, so the flow that can send soonest gets the next frame and a
//! slow or dead flow simply stops pulling (it never holds up the others).
//! Resends go first, then sessions with new data in round-robin order, so
//! concurrent sessions share the tunnel fairly.
//!
//! Each flow keeps a ledger of the frames it carried. When a flow dies the
//! ledger becomes resend work for the flows that remain; acked parts are
//! trimmed when the resend is cut, so nothing is sent twice needlessly.

use std::collections::VecDeque;

use crate::protocol::SessionId;

/// A byte range of one session's stream that some flow carried.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Carried {
    pub session: SessionId,
    pub start: u64,
    pub end: u64,
}

#[derive(Debug, Default)]
pub struct Scheduler {
    /// Sessions that may have new data to frame, in round-robin order.
    ready: VecDeque<SessionId>,
    /// Ranges to send again because the flow that carried them died.
    resend: VecDeque<Carried>,
    /// Per flow, what it carried that may not be acked yet.
    ledgers: Vec<VecDeque<Carried>>,
}

impl Scheduler {
    pub fn new(flows: usize) -> Self {
        Scheduler {
            ledgers: vec![VecDeque::new(); flows],
            ..Default::default()
        }
    }

    pub fn flow_count(&self) -> usize {
        self.ledgers.len()
    }

    /// Queues a session that has (or may have) new data. The caller tracks
    /// whether it is already queued.
    pub fn mark_ready(&mut self, session: SessionId) {
        self.ready.push_back(session);
    }

    pub fn next_ready(&mut self) -> Option<SessionId> {
        self.ready.pop_front()
    }

    pub fn next_resend(&mut self) -> Option<Carried> {
        self.resend.pop_front()
    }

    /// Records that `flow` carried a range.
    ///
    /// # Panics
    /// If `flow` is out of range (a caller bug).
    pub fn record(&mut self, flow: usize, carried: Carried) {
        self.ledgers[flow].push_back(carried);
    }

    /// Drops ledger entries at the front of `flow` that `is_done` says are
    /// fully acked, keeping the ledger short.
    pub fn prune(&mut self, flow: usize, mut is_done: impl FnMut(&Carried) -> bool) {
        let ledger = &mut self.ledgers[flow];
        while ledger.front().is_some_and(&mut is_done) {
            ledger.pop_front();
        }
    }

    /// A flow died: everything it carried becomes resend work. Returns how
    /// many ranges were queued.
    pub fn flow_lost(&mut self, flow: usize) -> usize {
        let lost = std::mem::take(&mut self.ledgers[flow]);
        let n = lost.len();
        self.resend.extend(lost);
        n
    }

    /// Forgets a session everywhere (it was reset or finished).
    pub fn forget(&mut self, session: SessionId) {
        self.ready.retain(|s| *s != session);
        self.resend.retain(|c| c.session != session);
        for ledger in &mut self.ledgers {
            ledger.retain(|c| c.session != session);
        }
    }

    pub fn ledger_len(&self, flow: usize) -> usize {
        self.ledgers[flow].len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lost_flow_becomes_resend_work() {
        let mut s = Scheduler::new(2);
        let c = |start, end| Carried {
            session: SessionId(2),
            start,
            end,
        };
        s.record(0, c(0, 10));
        s.record(1, c(10, 20));
        s.record(0, c(20, 30));
        s.prune(0, |c| c.end <= 10);
        assert_eq!(s.ledger_len(0), 1);
        assert_eq!(s.flow_lost(0), 1);
        assert_eq!(s.next_resend(), Some(c(20, 30)));
        assert_eq!(s.ledger_len(1), 1);
    }
}

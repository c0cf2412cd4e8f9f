//! Connects to one target go one at a time, in the order the peer opened the sessions, so the
//! target accepts them in the order the source connected. Some hypervisors depend on it: QEMU
//! before 8.0 tells its migration channels apart by accept order (the main stream first, then
//! the multifd channels). Both datapaths keep one of these; a session that ends while it waits
//! leaves the line without connecting (the target never sees a connection for it).

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;

use crate::protocol::SessionId;

/// The sessions waiting to connect to each target, in open order; the first of each line is
/// connecting.
#[derive(Debug, Default)]
pub struct ConnectOrder {
    lines: HashMap<SocketAddr, VecDeque<SessionId>>,
}

impl ConnectOrder {
    /// Session `id` is to connect to `target`: true if it may start now (its line was empty).
    pub fn queue(&mut self, target: SocketAddr, id: SessionId) -> bool {
        let line = self.lines.entry(target).or_default();
        line.push_back(id);
        line.len() == 1
    }

    /// Whether session `id` may connect now (`Some(true)`), must wait (`Some(false)`), or is not
    /// in any line (`None`: it ended while it waited).
    pub fn turn(&self, id: SessionId) -> Option<bool> {
        self.lines
            .values()
            .find_map(|line| line.iter().position(|&q| q == id).map(|at| at == 0))
    }

    /// Session `id`'s connect is over (connected, failed, or the session ended): it leaves its
    /// line. Returns the session whose turn it is now, if its turn just came.
    pub fn done(&mut self, id: SessionId) -> Option<SessionId> {
        let (&target, line) = self.lines.iter_mut().find(|(_, l)| l.contains(&id))?;
        let was_first = line.front() == Some(&id);
        line.retain(|&q| q != id);
        let next = line.front().copied().filter(|_| was_first);
        if line.is_empty() {
            self.lines.remove(&target);
        }
        next
    }

    /// Sessions in all lines.
    pub fn len(&self) -> usize {
        self.lines.values().map(VecDeque::len).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.lines.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn target(n: u16) -> SocketAddr {
        SocketAddr::from(([192, 0, 2, 1], n))
    }

    #[test]
    fn one_connect_per_target_in_open_order() {
        let mut o = ConnectOrder::default();
        assert!(o.queue(target(1), SessionId(1)));
        assert!(!o.queue(target(1), SessionId(3)));
        assert!(
            o.queue(target(2), SessionId(5)),
            "another target: its own line"
        );
        assert!(!o.queue(target(1), SessionId(7)));
        assert_eq!(o.turn(SessionId(3)), Some(false));
        assert_eq!(o.done(SessionId(1)), Some(SessionId(3)));
        assert_eq!(o.turn(SessionId(3)), Some(true));
        // A waiting session that ends leaves its line without a turn.
        assert_eq!(o.done(SessionId(7)), None);
        assert_eq!(o.turn(SessionId(7)), None);
        assert_eq!(o.done(SessionId(3)), None);
        assert_eq!(o.done(SessionId(5)), None);
        assert!(o.is_empty());
    }

    proptest! {
        /// Under any interleaving of opens and ends: exactly one session per target with
        /// sessions in line has its turn, no session has two, and turns come in open order.
        #[test]
        fn turns_come_one_at_a_time_in_open_order(
            ops in proptest::collection::vec((0u16..3, any::<bool>(), 0usize..8), 1..60)
        ) {
            let mut o = ConnectOrder::default();
            let mut waiting: Vec<(SessionId, SocketAddr)> = Vec::new();
            let mut turns: HashMap<SocketAddr, Vec<SessionId>> = HashMap::new();
            let mut target_of: HashMap<SessionId, SocketAddr> = HashMap::new();
            let mut next = 1u64;
            for (t, open, pick) in ops {
                if open || waiting.is_empty() {
                    let id = SessionId(next);
                    next += 2;
                    target_of.insert(id, target(t));
                    if o.queue(target(t), id) {
                        turns.entry(target(t)).or_default().push(id);
                    }
                    waiting.push((id, target(t)));
                } else {
                    let (id, _) = waiting.remove(pick % waiting.len());
                    if let Some(n) = o.done(id) {
                        turns.entry(target_of[&n]).or_default().push(n);
                    }
                }
                for t in 0..3 {
                    let line = waiting.iter().filter(|(_, a)| *a == target(t));
                    let with_turn = line.clone().filter(|(id, _)| o.turn(*id) == Some(true));
                    prop_assert_eq!(with_turn.count(), line.count().min(1));
                }
            }
            for ids in turns.values() {
                // Ids grow with open order: each target's turns came in open order, once each.
                prop_assert!(ids.windows(2).all(|w| w[0] < w[1]), "{:?}", ids);
            }
            prop_assert_eq!(o.len(), waiting.len());
        }
    }
}

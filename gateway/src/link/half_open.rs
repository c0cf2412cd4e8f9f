//! Connections whose TCP handshake is under way, on a stack without SYN cookies (the DPDK
//! datapath's userspace TCP): each holds a socket until it completes, gives up or times out,
//! so their number is bounded. Beyond the bound the oldest is displaced: a flood of SYNs
//! displaces only itself, and entries marked exempt (sources that authenticated as the peer
//! before) neither count nor are displaced. The tunnel port and the ingress ports keep one
//! each. Times are the driver's clock in µs.

use std::collections::VecDeque;

/// One half-open connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HalfOpen<T> {
    pub item: T,
    /// When its SYN was taken.
    pub since: u64,
    pub exempt: bool,
}

/// Where a half-open connection's handshake stands, as the driver sees its socket.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Handshake {
    UnderWay,
    Completed,
    /// The client gave up (its socket closed).
    GaveUp,
}

/// What [`HalfOpenTable::sweep`] took out.
#[derive(Debug)]
pub struct Swept<T> {
    /// Completed: now connections, in the order they were taken.
    pub completed: Vec<T>,
    /// Their clients gave up.
    pub gave_up: Vec<T>,
    /// Not complete within the timeout.
    pub timed_out: Vec<T>,
}

/// The half-open connections of one port, oldest first.
#[derive(Debug, Clone)]
pub struct HalfOpenTable<T> {
    entries: VecDeque<HalfOpen<T>>,
    /// Entries held at once, not counting exempt ones.
    limit: usize,
}

impl<T: Copy> HalfOpenTable<T> {
    pub fn new(limit: usize) -> Self {
        HalfOpenTable {
            entries: VecDeque::new(),
            limit,
        }
    }

    /// Takes a new half-open connection; returns the one it displaced (the oldest that is not
    /// exempt) if the table was full.
    #[must_use = "a displaced connection must be closed"]
    pub fn push(&mut self, item: T, since: u64, exempt: bool) -> Option<HalfOpen<T>> {
        self.entries.push_back(HalfOpen {
            item,
            since,
            exempt,
        });
        let counted = self.entries.iter().filter(|e| !e.exempt).count();
        if counted <= self.limit {
            return None;
        }
        let oldest = self.entries.iter().position(|e| !e.exempt)?;
        self.entries.remove(oldest)
    }

    /// Takes out, at `now`, the connections whose handshake completed or gave up (as `state`
    /// tells), and those not complete `timeout` µs after their SYN.
    pub fn sweep(
        &mut self,
        now: u64,
        timeout: u64,
        mut state: impl FnMut(T) -> Handshake,
    ) -> Swept<T> {
        let mut swept = Swept {
            completed: Vec::new(),
            gave_up: Vec::new(),
            timed_out: Vec::new(),
        };
        self.entries.retain(|e| {
            let out = match state(e.item) {
                Handshake::Completed => &mut swept.completed,
                Handshake::GaveUp => &mut swept.gave_up,
                Handshake::UnderWay if now.saturating_sub(e.since) >= timeout => {
                    &mut swept.timed_out
                }
                Handshake::UnderWay => return true,
            };
            out.push(e.item);
            false
        });
        swept
    }

    /// Takes out the entry `is` picks (its handshake completed), with when its SYN came.
    pub fn take(&mut self, mut is: impl FnMut(&T) -> bool) -> Option<HalfOpen<T>> {
        let k = self.entries.iter().position(|e| is(&e.item))?;
        self.entries.remove(k)
    }

    pub fn iter(&self) -> impl Iterator<Item = &HalfOpen<T>> {
        self.entries.iter()
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Takes every entry out (the port closes).
    pub fn drain(&mut self) -> impl Iterator<Item = HalfOpen<T>> + '_ {
        self.entries.drain(..)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn a_full_table_displaces_its_oldest_entry_that_is_not_exempt() {
        let mut t = HalfOpenTable::new(2);
        assert_eq!(t.push(1, 0, true), None, "exempt: not counted");
        assert_eq!(t.push(2, 1, false), None);
        assert_eq!(t.push(3, 2, false), None);
        let displaced = t.push(4, 3, false).expect("full");
        assert_eq!((displaced.item, displaced.since), (2, 1));
        assert_eq!(t.iter().map(|e| e.item).collect::<Vec<_>>(), [1, 3, 4]);
    }

    #[test]
    fn a_sweep_takes_out_what_completed_gave_up_or_timed_out() {
        let mut t = HalfOpenTable::new(8);
        for (item, since) in [(1, 0), (2, 0), (3, 0), (4, 5)] {
            assert_eq!(t.push(item, since, false), None);
        }
        let swept = t.sweep(10, 10, |i| match i {
            1 => Handshake::Completed,
            2 => Handshake::GaveUp,
            _ => Handshake::UnderWay,
        });
        assert_eq!(swept.completed, [1]);
        assert_eq!(swept.gave_up, [2]);
        assert_eq!(swept.timed_out, [3], "4 has 5 µs left");
        assert_eq!(t.take(|&i| i == 4).map(|e| e.since), Some(5));
        assert!(t.is_empty());
    }

    proptest! {
        /// However many SYNs come, the table holds at most `limit` entries that are not
        /// exempt, and never displaces an exempt one.
        #[test]
        fn the_bound_holds_and_exempt_entries_stay(
            pushes in proptest::collection::vec(any::<bool>(), 0..200),
            limit in 0usize..16,
        ) {
            let mut t = HalfOpenTable::new(limit);
            for (i, exempt) in pushes.iter().enumerate() {
                if let Some(d) = t.push(i, i as u64, *exempt) {
                    prop_assert!(!d.exempt);
                }
                prop_assert!(t.iter().filter(|e| !e.exempt).count() <= limit);
            }
            let exempt = pushes.iter().filter(|&&e| e).count();
            prop_assert_eq!(t.iter().filter(|e| e.exempt).count(), exempt);
        }
    }
}

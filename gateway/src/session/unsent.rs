//! One unsent budget per migration: how much a group's sessions may take
//! from their endpoints ahead of the data flows.
//!
//! A hypervisor decides when to stop the guest from how fast its sockets
//! drain, and every byte the gateway took but has not sent yet when it stops
//! must still cross the WAN during the downtime. QEMU's multifd opens five
//! connections for one migration; a room of its own for each would let the
//! migration queue five times as much. So a group's sessions share one
//! budget, sized from the rate the tunnel goes at (the pacer's measure of
//! the path, or a link cap) times `limits.unsent_time_us` (5 ms on the
//! kernel datapath, [`UNSENT_TIME_US`]; 20 on DPDK), and at most
//! [`Limits::unsent_buffer`] (4 MiB: at 1 Gbit/s the five share what one
//! had). Each session may hold `unsent_buffer` at most, and one frame (the
//! `floor`) at least. The main channel (the group's first session) is not
//! held back by its siblings: it may hold the whole budget on its own, so
//! the scheduler, which sends it first, always finds its next frame there
//! (one frame at a time, the bulk went between whenever its reader was a
//! moment late). The group then holds twice the budget at most. Without a
//! measured rate (the pacer's first round trip, or pacing off and no cap)
//! there is no group budget, only the per-session room.
//!
//! [`Limits::unsent_buffer`]: super::Limits::unsent_buffer

use rustc_hash::FxHashMap;

use super::shares::GroupKey;

/// How long the WAN takes to send a full group budget at the tunnel's
/// rate, on the kernel datapath (`limits.unsent_ms`). What the budget holds
/// when the guest stops crosses the WAN inside the pause: at RTT 200 ms, 5 ms
/// instead of 20 took 13-25 ms off the part of the pause after the source
/// was done, with the data flows' goodput unchanged at 200 ms with and
/// without 1 % loss (docs/BENCHMARKS.md, "What the pause is made of").
/// Before the tunnel pacer, 10 ms had starved the flows at 200 ms with 1 %
/// loss (717 against 891 Mbit/s); these runs did not show that again.
pub const UNSENT_TIME_US: u64 = 5_000;
/// The same on the DPDK datapath: its engine reads the LAN in a busy
/// loop's turns, on a core it shares, and a 5 ms budget lost it 5-7 % of
/// its goodput at 100 ms (docs/BENCHMARKS.md).
pub const DPDK_UNSENT_TIME_US: u64 = 20_000;
/// The smallest group budget: a slow path still gets a few frames ahead.
pub const MIN_GROUP_UNSENT: u64 = 512 << 10;

#[derive(Debug, Default)]
struct Pool {
    unsent: u64,
    /// Some member may have found no room: wake them all when there is.
    full: bool,
}

#[derive(Debug)]
pub struct UnsentPools {
    pools: FxHashMap<GroupKey, Pool>,
    /// The tunnel's rate the budget is sized from, bytes per second.
    rate: Option<u64>,
    /// How long the tunnel takes to send a full budget, µs
    /// (`Limits::unsent_time_us`).
    hold_us: u64,
    /// The group budget; `None` without a measured rate.
    budget: Option<u64>,
    /// A session's own ceiling (`Limits::unsent_buffer`).
    ceiling: u64,
    /// What a session may always hold.
    floor: u64,
}

impl UnsentPools {
    pub fn new(ceiling: u64, floor: u64, hold_us: u64) -> Self {
        UnsentPools {
            pools: FxHashMap::default(),
            rate: None,
            hold_us,
            budget: None,
            ceiling,
            floor: floor.min(ceiling),
        }
    }

    /// The budget for a tunnel going at `rate` bytes per second (`None`:
    /// not known): what it sends in its hold time. Returns the groups that
    /// had no room and now have some.
    pub fn set_rate(&mut self, rate: Option<u64>) -> Vec<GroupKey> {
        self.rate = rate.filter(|r| *r > 0);
        let budget = self.rate.map(|r| {
            (r.saturating_mul(self.hold_us) / 1_000_000)
                .clamp(MIN_GROUP_UNSENT.min(self.ceiling), self.ceiling)
        });
        if budget == self.budget {
            return Vec::new();
        }
        self.budget = budget;
        let mut freed = Vec::new();
        for (key, pool) in &mut self.pools {
            match budget {
                Some(b) if pool.unsent >= b => pool.full = true,
                _ if pool.full => {
                    pool.full = false;
                    freed.push(*key);
                }
                _ => {}
            }
        }
        freed
    }

    pub fn budget(&self) -> Option<u64> {
        self.budget
    }

    /// The tunnel's rate, bytes per second (`None`: not measured).
    pub fn rate(&self) -> Option<u64> {
        self.rate
    }

    /// What the sessions of `key` hold unsent.
    pub fn unsent(&self, key: GroupKey) -> u64 {
        self.pools.get(&key).map_or(0, |p| p.unsent)
    }

    /// Room for a session of `key` that holds `own` unsent bytes;
    /// `main_channel`: it is its group's first session.
    pub fn room(&self, key: GroupKey, own: u64, main_channel: bool) -> u64 {
        let own_room = self.ceiling.saturating_sub(own);
        let Some(budget) = self.budget else {
            return own_room;
        };
        if main_channel {
            return own_room.min(budget.saturating_sub(own));
        }
        let group = self.pools.get(&key).map_or(0, |p| p.unsent);
        let shared = budget.saturating_sub(group);
        own_room.min(shared.max(self.floor.saturating_sub(own)))
    }

    /// A session of `key` took `bytes` from its endpoint.
    pub fn added(&mut self, key: GroupKey, bytes: u64) {
        let pool = self.pools.entry(key).or_default();
        pool.unsent += bytes;
        if self.budget.is_some_and(|b| pool.unsent >= b) {
            pool.full = true;
        }
    }

    /// `bytes` of a session of `key` went to a flow, or were dropped with it:
    /// whether the group has room again after some member found none.
    #[must_use = "the group's sessions are to be told they may read again"]
    pub fn taken(&mut self, key: GroupKey, bytes: u64) -> bool {
        let Some(pool) = self.pools.get_mut(&key) else {
            return false;
        };
        pool.unsent = pool.unsent.saturating_sub(bytes);
        let freed = pool.full && self.budget.is_none_or(|b| pool.unsent < b);
        if freed {
            pool.full = false;
        }
        if pool.unsent == 0 && !pool.full {
            self.pools.remove(&key);
        }
        freed
    }

    /// Whether a session holding `own` after giving up `taken` bytes just
    /// fell below its own ceiling, or below its floor (from where it may
    /// read again whatever its group holds), or, the main channel, below
    /// the group budget.
    pub fn own_room_returned(&self, own: u64, taken: u64, main_channel: bool) -> bool {
        let budget = self.budget.filter(|_| main_channel);
        [Some(self.ceiling), Some(self.floor), budget]
            .into_iter()
            .flatten()
            .any(|mark| own < mark && own + taken >= mark)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::SocketAddr;

    fn key(port: u16) -> GroupKey {
        GroupKey {
            source: None,
            target: SocketAddr::from(([10, 0, 0, 1], port)),
        }
    }

    const MB: u64 = 1 << 20;
    /// 20 ms, so that the sizes below are round.
    const HOLD_US: u64 = 20_000;

    #[test]
    fn a_slower_tunnel_shrinks_the_budget_and_a_full_group_reads_again_after() {
        let mut p = UnsentPools::new(4 * MB, 64 << 10, HOLD_US);
        // 1 Gbit/s: 2.5 MB in 20 ms.
        let _ = p.set_rate(Some(125_000_000));
        p.added(key(1), 2_000_000);
        assert_eq!(p.room(key(1), 0, false), 500_000);
        // 500 Mbit/s: 1.25 MB.
        assert!(p.set_rate(Some(62_500_000)).is_empty(), "full, and fuller");
        assert_eq!(p.budget(), Some(1_250_000));
        assert_eq!(p.room(key(1), 0, false), 64 << 10, "only a frame each");
        assert_eq!(p.set_rate(Some(125_000_000)), vec![key(1)], "room again");
        assert_eq!(p.budget(), Some(2_500_000));
    }

    #[test]
    fn without_a_rate_each_session_has_its_own_room() {
        let mut p = UnsentPools::new(4 * MB, 64 << 10, HOLD_US);
        p.added(key(1), 3 * MB);
        assert_eq!(
            p.room(key(1), 0, false),
            4 * MB,
            "a sibling is not held back"
        );
        assert_eq!(p.room(key(1), 3 * MB, false), MB);
    }

    #[test]
    fn a_group_shares_rate_times_twenty_ms_and_each_member_keeps_a_frame() {
        let mut p = UnsentPools::new(4 * MB, 64 << 10, HOLD_US);
        // 500 Mbit/s: 1.25 MB in 20 ms.
        assert!(p.set_rate(Some(62_500_000)).is_empty());
        assert_eq!(p.budget(), Some(1_250_000));
        p.added(key(1), 1_250_000);
        assert_eq!(p.room(key(1), 1_250_000, false), 0, "the group is full");
        assert_eq!(
            p.room(key(1), 0, false),
            64 << 10,
            "a member holding nothing may take a frame"
        );
        assert_eq!(
            p.room(key(2), 0, false),
            1_250_000,
            "another migration is not held back"
        );
    }

    #[test]
    fn the_main_channel_has_the_budget_whatever_its_siblings_hold() {
        let mut p = UnsentPools::new(4 * MB, 64 << 10, HOLD_US);
        let _ = p.set_rate(Some(62_500_000));
        p.added(key(1), 1_250_000);
        assert_eq!(p.room(key(1), 0, true), 1_250_000);
        assert_eq!(p.room(key(1), 1_000_000, true), 250_000);
        assert!(
            p.own_room_returned(1_200_000, 100_000, true),
            "below the budget again: it may read"
        );
        assert!(!p.own_room_returned(1_200_000, 100_000, false));
    }

    #[test]
    fn the_budget_stays_between_its_floor_and_a_sessions_ceiling() {
        let mut p = UnsentPools::new(4 * MB, 64 << 10, HOLD_US);
        let _ = p.set_rate(Some(1_000));
        assert_eq!(p.budget(), Some(MIN_GROUP_UNSENT));
        let _ = p.set_rate(Some(100_000_000_000));
        assert_eq!(p.budget(), Some(4 * MB));
    }

    #[test]
    fn a_full_group_is_freed_by_a_pull_or_by_a_faster_path() {
        let mut p = UnsentPools::new(4 * MB, 64 << 10, HOLD_US);
        let _ = p.set_rate(Some(62_500_000));
        p.added(key(1), 1_300_000);
        assert!(!p.taken(key(1), 10_000), "still at or over the budget");
        assert!(p.taken(key(1), 100_000), "room again: wake the members");
        assert!(!p.taken(key(1), 100_000), "woken once");
        p.added(key(1), 500_000);
        assert_eq!(
            p.set_rate(Some(125_000_000)),
            vec![key(1)],
            "a larger budget wakes a full group"
        );
        assert!(p.set_rate(Some(125_000_000)).is_empty());
    }

    #[test]
    fn a_smaller_budget_marks_groups_over_it_full() {
        let mut p = UnsentPools::new(4 * MB, 64 << 10, HOLD_US);
        let _ = p.set_rate(Some(125_000_000));
        p.added(key(1), 2 * MB);
        assert!(!p.taken(key(1), 1), "room left under 2.5 MB");
        let _ = p.set_rate(Some(62_500_000));
        assert!(p.taken(key(1), MB), "under the new budget: wake");
    }

    #[test]
    fn losing_the_rate_frees_full_groups() {
        let mut p = UnsentPools::new(4 * MB, 64 << 10, HOLD_US);
        let _ = p.set_rate(Some(62_500_000));
        p.added(key(1), 2 * MB);
        assert_eq!(p.set_rate(None), vec![key(1)]);
        assert_eq!(p.room(key(1), MB, false), 3 * MB);
    }
}

//! Which frame goes out next, and on which flow.
//!
//! Flows *pull*: a datapath asks for a frame only when that flow's socket can
//! take more, so the flow that can send soonest gets the next frame and a
//! slow or dead flow simply stops pulling (it never holds up the others).
//!
//! Resends go first. New data is shared between migration groups
//! ([`super::shares`]) by deficit round robin: the group whose turn it is
//! gets `weight × frame_len` bytes before the next one's turn, so over time
//! each backlogged group gets its weight's share of what the tunnel sends,
//! whatever the sizes of its frames. A group over its cap, or the tunnel over
//! the link cap, waits for its tokens ([`Scheduler::blocked_until`]). Inside
//! a group the main channel (its first session: QEMU opens it before the
//! multifd channels, and it carries the device state at switchover) goes
//! ahead of the others; those take turns.
//!
//! Each flow keeps a ledger of the frames it carried. When a flow dies the
//! ledger becomes resend work for the flows that remain; acked parts are
//! trimmed when the resend is cut, so nothing is sent twice needlessly.

use std::collections::{BTreeSet, VecDeque};

use rustc_hash::FxHashMap;

use super::shares::{GroupKey, GroupSnapshot, Origin, RateMeter, SharePolicy, TokenBucket};
use super::Instant;
use crate::protocol::SessionId;

/// A byte range of one session's stream that some flow carried.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Carried {
    pub session: SessionId,
    pub start: u64,
    pub end: u64,
}

/// One migration's sessions and its place in the round.
#[derive(Debug)]
struct Group {
    /// Whose weight applies (the first session's ingress).
    origin: Origin,
    weight: u32,
    /// Its sessions; the lowest id is the one opened first, the main channel.
    members: BTreeSet<SessionId>,
    /// The session that made it: names this migration for as long as the group lives (a
    /// later migration with the same key is another group, with another founder).
    founder: SessionId,
    /// Members that may have new data, the main channel always first.
    ready: VecDeque<SessionId>,
    /// Whether it is in the round (`Scheduler::active`).
    active: bool,
    /// Whether its turn is under way: its quantum was granted.
    in_turn: bool,
    /// Bytes it may still send this turn; below zero by less than one frame
    /// after its last frame of a turn, carried into the next.
    deficit: i64,
    cap: Option<TokenBucket>,
    sent: u64,
    meter: RateMeter,
}

#[derive(Debug)]
pub struct Scheduler {
    /// Ranges to send again because the flow that carried them died.
    resend: VecDeque<Carried>,
    /// Per flow, what it carried that may not be acked yet.
    ledgers: Vec<VecDeque<Carried>>,
    groups: FxHashMap<GroupKey, Group>,
    /// Groups with ready sessions, in round order; the front one has the turn.
    active: VecDeque<GroupKey>,
    policy: SharePolicy,
    link: Option<TokenBucket>,
    /// The tunnel pacer's rate (see [`super::pacer`]), beside the link cap.
    pace: Option<TokenBucket>,
    frame_len: usize,
    /// Set when the last pull found only capped work: when tokens return.
    blocked_until: Option<Instant>,
    /// When to wake the flows that found only capped work, until they are
    /// woken ([`Scheduler::unblock`]): a pull by another flow in between
    /// does not cancel it, as `blocked_until` is.
    wake_at: Option<Instant>,
}

/// The tunnel pacer's bursts: longer than a cap's, as its rate is the
/// path's own and a driver woken late (a busy host) must not lose the time.
/// At 1 Gbit/s this is 1.2 MB, a tenth of a 100 ms path's BDP.
const PACE_BURST_US: u64 = 10_000;
/// Flows held back by the pacer go again once this much time's worth of
/// tokens is back: a wake-up per 2 ms, not per frame.
const PACE_WAKE_US: u64 = 2_000;

/// A bucket at `rate` (none: no cap): the old one keeps its balance, else a
/// `fresh` one.
fn retuned(
    old: Option<TokenBucket>,
    rate: Option<u64>,
    frame_len: usize,
    fresh: impl FnOnce(u64) -> TokenBucket,
) -> Option<TokenBucket> {
    match (old, rate) {
        (_, None) => None,
        (Some(mut b), Some(r)) => {
            b.set_rate(r, frame_len);
            Some(b)
        }
        (None, Some(r)) => Some(fresh(r)),
    }
}

/// The lowest id is the session opened first: the main channel.
fn is_main(g: &Group, session: SessionId) -> bool {
    g.members.first() == Some(&session)
}

impl Scheduler {
    pub fn new(flows: usize, frame_len: usize) -> Self {
        Scheduler {
            resend: VecDeque::new(),
            ledgers: vec![VecDeque::new(); flows],
            groups: FxHashMap::default(),
            active: VecDeque::new(),
            policy: SharePolicy::default(),
            link: None,
            pace: None,
            frame_len,
            blocked_until: None,
            wake_at: None,
        }
    }

    pub fn flow_count(&self) -> usize {
        self.ledgers.len()
    }

    /// A new session joins its group (made on first use).
    pub fn join(&mut self, session: SessionId, key: GroupKey, origin: Origin) {
        let (policy, frame_len) = (&self.policy, self.frame_len);
        let g = self.groups.entry(key).or_insert_with(|| Group {
            origin,
            weight: policy.weight(origin),
            members: BTreeSet::new(),
            founder: session,
            ready: VecDeque::new(),
            active: false,
            in_turn: false,
            deficit: 0,
            cap: policy
                .migration_rate
                .map(|r| TokenBucket::new(r, frame_len)),
            sent: 0,
            meter: RateMeter::default(),
        });
        g.members.insert(session);
    }

    /// Queues a session that has (or may have) new data. The caller tracks
    /// whether it is already queued.
    pub fn mark_ready(&mut self, session: SessionId, key: GroupKey) {
        let Some(g) = self.groups.get_mut(&key) else {
            return; // not joined: a caller bug, but nothing to send for it
        };
        if is_main(g, session) {
            g.ready.push_front(session);
        } else {
            g.ready.push_back(session);
        }
        if !g.active {
            g.active = true;
            self.active.push_back(key);
        }
    }

    /// The session whose new data goes next, by turn, weight and caps; the
    /// caller frames from it, re-marks it if it has more, and [`charge`]s
    /// what it sent. `None` with [`blocked_until`] set: only capped work.
    ///
    /// [`charge`]: Scheduler::charge
    /// [`blocked_until`]: Scheduler::blocked_until
    pub fn next_ready(&mut self, now: Instant) -> Option<(GroupKey, SessionId)> {
        self.blocked_until = None;
        if !self.link_allows(now) {
            return None;
        }
        let mut capped: Option<Instant> = None;
        // Each group is looked at most twice: once to grant its turn, once
        // more after a rotation; capped groups are passed over.
        let mut looks = 2 * self.active.len() + 1;
        while looks > 0 {
            looks -= 1;
            let &key = self.active.front()?;
            let Some(g) = self.groups.get_mut(&key) else {
                self.active.pop_front();
                continue;
            };
            if g.ready.is_empty() {
                g.active = false;
                g.in_turn = false;
                g.deficit = 0; // an idle group banks no credit
                self.active.pop_front();
                continue;
            }
            if let Some(cap) = &mut g.cap {
                if !cap.allows(now) {
                    let at = cap.ready_at(now);
                    capped = Some(capped.map_or(at, |c| c.min(at)));
                    // A turn cut short by the cap goes on when tokens
                    // return; it is not granted a second quantum.
                    self.active.rotate_left(1);
                    continue;
                }
            }
            if !g.in_turn {
                g.in_turn = true;
                g.deficit += g.weight as i64 * self.frame_len as i64;
            }
            if g.deficit <= 0 {
                g.in_turn = false;
                self.active.rotate_left(1);
                continue;
            }
            let id = g.ready.pop_front().expect("not empty");
            return Some((key, id));
        }
        self.block(capped);
        None
    }

    /// `bytes` of new data of group `key` went out.
    pub fn charge(&mut self, key: GroupKey, bytes: u64, now: Instant) {
        let Some(g) = self.count_sent(key, bytes, now) else {
            return;
        };
        if g.in_turn {
            g.deficit -= bytes as i64;
            if g.deficit <= 0 {
                g.in_turn = false;
                if self.active.front() == Some(&key) {
                    self.active.rotate_left(1);
                }
            }
        }
    }

    /// `bytes` of group `key` went out: counted against the caps and in
    /// the group's figures (resends too: they cross the link like the rest).
    pub fn charge_caps(&mut self, key: GroupKey, bytes: u64, now: Instant) {
        self.count_sent(key, bytes, now);
    }

    /// Counts `bytes` sent against the link's cap and group `key`'s cap and
    /// figures; returns the group for the caller's own bookkeeping.
    fn count_sent(&mut self, key: GroupKey, bytes: u64, now: Instant) -> Option<&mut Group> {
        for link in self.link.iter_mut().chain(self.pace.iter_mut()) {
            link.charge(bytes);
        }
        let g = self.groups.get_mut(&key)?;
        g.sent += bytes;
        g.meter.add(now, bytes);
        if let Some(cap) = &mut g.cap {
            cap.charge(bytes);
        }
        Some(g)
    }

    /// A frame of group `key` (`None`: its session ended) went on the wire
    /// `bytes` smaller than charged (compression): caps and figures count
    /// what crossed the link.
    pub fn refund(&mut self, key: Option<GroupKey>, bytes: u64) {
        for link in self.link.iter_mut().chain(self.pace.iter_mut()) {
            link.refund(bytes);
        }
        if let Some(g) = key.and_then(|k| self.groups.get_mut(&k)) {
            g.sent = g.sent.saturating_sub(bytes);
            g.meter.remove(bytes);
            if let Some(cap) = &mut g.cap {
                cap.refund(bytes);
            }
        }
    }

    /// Whether the link cap and the pacer let a frame go now (if not, notes
    /// when they will).
    fn link_allows(&mut self, now: Instant) -> bool {
        let mut until: Option<Instant> = None;
        for link in self.link.iter_mut().chain(self.pace.iter_mut()) {
            if !link.allows(now) {
                let at = link.ready_at(now);
                until = Some(until.map_or(at, |u| u.max(at)));
            }
        }
        match until {
            Some(at) => {
                self.block(Some(at));
                false
            }
            None => true,
        }
    }

    /// The tunnel pacer's rate now (`None`: unpaced).
    pub fn set_pacing(&mut self, rate: Option<u64>) {
        let frame_len = self.frame_len;
        self.pace = retuned(self.pace.take(), rate, frame_len, |r| {
            TokenBucket::with_burst(r, frame_len, PACE_BURST_US).waking_after(PACE_WAKE_US)
        });
    }

    /// This pull found only capped work, which may go at `at`.
    fn block(&mut self, at: Option<Instant>) {
        self.blocked_until = at;
        if let Some(at) = at {
            self.wake_at = Some(self.wake_at.map_or(at, |w| w.min(at)));
        }
    }

    /// When flows that found only capped work are to be woken, if any wait.
    pub fn wake_at(&self) -> Option<Instant> {
        self.wake_at
    }

    /// When the work that the last pull found capped may go.
    pub fn blocked_until(&self) -> Option<Instant> {
        self.blocked_until
    }

    /// Forgets that pulls were blocked (the driver was told to pull again).
    pub fn unblock(&mut self) {
        self.blocked_until = None;
        self.wake_at = None;
    }

    /// The next range to send again, if the link cap lets it go now.
    pub fn next_resend(&mut self, now: Instant) -> Option<Carried> {
        if self.resend.is_empty() || !self.link_allows(now) {
            return None;
        }
        self.resend.pop_front()
    }

    /// New rates and weights, in force from the next pull; running sessions
    /// keep their groups and data.
    pub fn set_policy(&mut self, policy: SharePolicy) {
        let frame_len = self.frame_len;
        let bucket = |old, rate| retuned(old, rate, frame_len, |r| TokenBucket::new(r, frame_len));
        self.link = bucket(self.link.take(), policy.link_rate);
        for g in self.groups.values_mut() {
            g.weight = policy.weight(g.origin);
            g.cap = bucket(g.cap.take(), policy.migration_rate);
        }
        self.policy = policy;
        self.unblock();
    }

    pub fn policy(&self) -> &SharePolicy {
        &self.policy
    }

    /// Every group's figures, for status output.
    pub fn groups(&self, now: Instant) -> Vec<GroupSnapshot> {
        let mut out: Vec<GroupSnapshot> = self
            .groups
            .iter()
            .map(|(key, g)| GroupSnapshot {
                key: *key,
                sessions: g.members.len(),
                weight: g.weight,
                cap: g.cap.as_ref().map(TokenBucket::rate),
                sent: g.sent,
                rate: g.meter.rate(now),
                unsent: 0,
                unsent_budget: None,
            })
            .collect();
        out.sort_by_key(|g| g.key);
        out
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

    /// A flow stalled with its newest `frames` not yet on the wire: they
    /// become resend work for the other flows (the flow keeps them in its
    /// ledger, and the far end drops whichever copy comes second). Returns
    /// how many ranges were queued.
    pub fn flow_stalled(&mut self, flow: usize, frames: usize) -> usize {
        let ledger = &self.ledgers[flow];
        let stuck = ledger.iter().skip(ledger.len().saturating_sub(frames));
        let before = self.resend.len();
        self.resend.extend(stuck.copied());
        self.resend.len() - before
    }

    /// Forgets a session everywhere (it was reset or finished); its group
    /// goes with its last session.
    pub fn forget(&mut self, session: SessionId, key: GroupKey) {
        self.resend.retain(|c| c.session != session);
        for ledger in &mut self.ledgers {
            ledger.retain(|c| c.session != session);
        }
        if let Some(g) = self.groups.get_mut(&key) {
            g.ready.retain(|s| *s != session);
            g.members.remove(&session);
            if g.members.is_empty() {
                self.groups.remove(&key);
                self.active.retain(|k| *k != key);
            }
        }
    }

    /// The session that made group `key` (see `Group::founder`).
    pub fn founder(&self, key: GroupKey) -> Option<SessionId> {
        self.groups.get(&key).map(|g| g.founder)
    }

    /// `carried` goes out again (the peer asked for it), before new data.
    pub fn resend_range(&mut self, carried: Carried) {
        self.resend.push_back(carried);
    }

    /// The rest of a range whose start just went out again goes next: a range asked for
    /// again may span several frames, and one frame carries one of them.
    pub fn resend_rest(&mut self, rest: Carried) {
        self.resend.push_front(rest);
    }

    /// Whether `session` is group `key`'s main channel (its first session).
    pub fn is_main_channel(&self, session: SessionId, key: GroupKey) -> bool {
        self.groups.get(&key).is_some_and(|g| is_main(g, session))
    }

    /// How many sessions group `key` has.
    pub fn member_count(&self, key: GroupKey) -> usize {
        self.groups.get(&key).map_or(0, |g| g.members.len())
    }

    /// Calls `f` with each session of group `key`.
    pub fn for_each_member(&self, key: GroupKey, f: impl FnMut(SessionId)) {
        if let Some(g) = self.groups.get(&key) {
            g.members.iter().copied().for_each(f);
        }
    }

    /// Whether anything waits to go: ranges to send again, or a group with a session that
    /// may have new data.
    pub fn has_work(&self) -> bool {
        !self.resend.is_empty()
            || self
                .active
                .iter()
                .any(|k| self.groups.get(k).is_some_and(|g| !g.ready.is_empty()))
    }

    /// The range `flow` was given last.
    pub fn last_carried(&self, flow: usize) -> Option<Carried> {
        self.ledgers.get(flow)?.back().copied()
    }

    pub fn ledger_len(&self, flow: usize) -> usize {
        self.ledgers[flow].len()
    }
}

#[cfg(test)]
mod tests {
    use std::collections::{HashMap, HashSet};

    use proptest::prelude::*;

    use super::*;

    #[test]
    fn lost_flow_becomes_resend_work() {
        let mut s = Scheduler::new(2, 64 << 10);
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
        assert_eq!(s.next_resend(0), Some(c(20, 30)));
        assert_eq!(s.ledger_len(1), 1);
    }

    const F: u64 = 1000;

    fn key(g: u8) -> GroupKey {
        GroupKey {
            source: Some([10, 0, 0, g].into()),
            target: "192.0.2.1:4444".parse().unwrap(),
        }
    }

    /// Sessions with byte backlogs driven through a real scheduler, the way
    /// `TunnelCore::poll_frame` drives it.
    struct Model {
        s: Scheduler,
        backlog: HashMap<SessionId, u64>,
        group: HashMap<SessionId, GroupKey>,
        queued: HashSet<SessionId>,
    }

    impl Model {
        fn new(policy: SharePolicy) -> Self {
            let mut s = Scheduler::new(1, F as usize);
            s.set_policy(policy);
            Model {
                s,
                backlog: HashMap::new(),
                group: HashMap::new(),
                queued: HashSet::new(),
            }
        }

        fn join(&mut self, id: u64, g: u8) {
            let origin = Origin {
                source: key(g).source,
                ingress: Some(g as u16),
            };
            self.s.join(SessionId(id), key(g), origin);
            self.group.insert(SessionId(id), key(g));
            self.backlog.insert(SessionId(id), 0);
        }

        fn arrive(&mut self, id: u64, bytes: u64) {
            let id = SessionId(id);
            *self.backlog.get_mut(&id).unwrap() += bytes;
            if self.queued.insert(id) {
                self.s.mark_ready(id, self.group[&id]);
            }
        }

        fn pull(&mut self, now: Instant, frame: u64) -> Option<(GroupKey, SessionId, u64)> {
            while let Some((k, id)) = self.s.next_ready(now) {
                self.queued.remove(&id);
                let b = self.backlog.get_mut(&id).unwrap();
                let len = frame.min(*b);
                if len == 0 {
                    continue;
                }
                *b -= len;
                if *b > 0 {
                    self.queued.insert(id);
                    self.s.mark_ready(id, k);
                }
                self.s.charge(k, len, now);
                return Some((k, id, len));
            }
            None
        }

        fn group_backlog(&self, g: GroupKey) -> u64 {
            self.group
                .iter()
                .filter(|(_, k)| **k == g)
                .map(|(id, _)| self.backlog[id])
                .sum()
        }
    }

    #[test]
    fn the_main_channel_goes_ahead_of_its_groups_bulk() {
        let mut m = Model::new(SharePolicy::default());
        m.join(2, 1); // main channel: opened first
        m.join(4, 1);
        m.join(6, 1);
        m.arrive(4, 10 * F);
        m.arrive(6, 10 * F);
        assert_eq!(m.pull(0, F).unwrap().1, SessionId(4));
        m.arrive(2, 3 * F);
        for _ in 0..3 {
            assert_eq!(m.pull(0, F).unwrap().1, SessionId(2), "main first");
        }
        let next: Vec<_> = (0..4).map(|_| m.pull(0, F).unwrap().1 .0).collect();
        assert_eq!(next, vec![6, 4, 6, 4], "the bulk takes turns");
    }

    #[test]
    fn a_changed_weight_applies_to_a_running_group() {
        let mut m = Model::new(SharePolicy::default());
        m.join(2, 0);
        m.join(4, 1);
        m.arrive(2, 1000 * F);
        m.arrive(4, 1000 * F);
        m.s.set_policy(SharePolicy {
            weights: vec![1, 3],
            ..Default::default()
        });
        let mut sent = HashMap::new();
        for _ in 0..400 {
            let (k, _, len) = m.pull(0, F).unwrap();
            *sent.entry(k).or_insert(0) += len;
        }
        assert_eq!((sent[&key(0)], sent[&key(1)]), (100 * F, 300 * F));
        let groups = m.s.groups(0);
        assert_eq!(
            groups.iter().map(|g| g.weight).collect::<Vec<_>>(),
            vec![1, 3]
        );
    }

    #[test]
    fn caps_and_figures_count_bytes_on_the_wire() {
        // Each frame is charged at its plain size, then packed to a quarter of it.
        let mut m = Model::new(SharePolicy {
            link_rate: Some(10 * F),
            migration_rate: Some(10 * F),
            weights: vec![],
            pace_tunnel: false,
        });
        m.join(2, 0);
        m.arrive(2, 100 * F);
        let mut frames = 0;
        while let Some((k, _, len)) = m.pull(0, F) {
            m.s.refund(Some(k), len * 3 / 4);
            frames += 1;
        }
        // The burst (one frame's worth at these rates) let four frames of a quarter go.
        assert_eq!(frames, 4);
        assert_eq!(m.s.groups(0)[0].sent, 4 * F / 4);
    }

    #[test]
    fn a_group_goes_with_its_last_session() {
        let mut m = Model::new(SharePolicy::default());
        m.join(2, 0);
        m.join(4, 0);
        m.arrive(2, F);
        m.s.forget(SessionId(2), key(0));
        assert_eq!(m.s.groups(0).len(), 1);
        m.s.forget(SessionId(4), key(0));
        assert!(m.s.groups(0).is_empty());
        assert!(m.s.next_ready(0).is_none());
    }

    #[derive(Debug, Clone)]
    enum Op {
        Arrive { session: u8, bytes: u64 },
        Pull { frame: u64 },
        Wait { us: u64 },
    }

    fn ops() -> impl Strategy<Value = Vec<Op>> {
        prop::collection::vec(
            prop_oneof![
                1 => (0u8..6, 1u64..20 * F).prop_map(|(session, bytes)| Op::Arrive { session, bytes }),
                3 => (1u64..=F).prop_map(|frame| Op::Pull { frame }),
                1 => (1u64..3_000).prop_map(|us| Op::Wait { us }),
            ],
            1..400,
        )
    }

    /// Six sessions in three groups weighted 1, 2 and 3.
    fn three_groups(policy: SharePolicy) -> Model {
        let mut m = Model::new(SharePolicy {
            weights: vec![1, 2, 3],
            ..policy
        });
        for id in 0..6u64 {
            m.join(id, (id % 3) as u8);
        }
        m
    }

    proptest! {
        /// Deficit round robin's bound: while two groups both stay
        /// backlogged, what each sent per unit of weight differs by less
        /// than three frames; and between two frames of a backlogged group
        /// the others send at most their quanta plus one frame each.
        #[test]
        fn weights_are_honoured_and_nobody_starves(ops in ops()) {
            let mut m = three_groups(SharePolicy::default());
            let weight = |g: GroupKey| m_weight(g);
            // Per pair of groups: sent per weight since both became backlogged.
            let mut per_weight: HashMap<(u8, u8), (f64, f64)> = HashMap::new();
            let mut others_since: [u64; 3] = [0; 3];
            for op in ops {
                match op {
                    Op::Arrive { session, bytes } => m.arrive(session as u64, bytes),
                    Op::Wait { .. } => {}
                    Op::Pull { frame } => {
                        let backlogged: Vec<bool> =
                            (0..3).map(|g| m.group_backlog(key(g)) > 0).collect();
                        let Some((k, _, len)) = m.pull(0, frame) else {
                            prop_assert!(backlogged.iter().all(|b| !b), "work left unsent");
                            continue;
                        };
                        let sender = (0..3).find(|g| key(*g) == k).unwrap();
                        for g in 0..3u8 {
                            if g == sender {
                                others_since[g as usize] = 0;
                            } else if backlogged[g as usize] {
                                others_since[g as usize] += len;
                                let most: u64 = (0..3u8)
                                    .filter(|o| *o != g)
                                    .map(|o| (weight(key(o)) as u64 + 1) * F)
                                    .sum();
                                prop_assert!(others_since[g as usize] <= most,
                                    "group {g} starved: others sent {} > {most}",
                                    others_since[g as usize]);
                            } else {
                                others_since[g as usize] = 0;
                            }
                        }
                        for a in 0..3u8 {
                            for b in (a + 1)..3 {
                                let both = backlogged[a as usize] && backlogged[b as usize];
                                let e = per_weight.entry((a, b)).or_insert((0.0, 0.0));
                                if !both {
                                    *e = (0.0, 0.0);
                                    continue;
                                }
                                if sender == a {
                                    e.0 += len as f64 / weight(key(a)) as f64;
                                } else if sender == b {
                                    e.1 += len as f64 / weight(key(b)) as f64;
                                }
                                prop_assert!((e.0 - e.1).abs() < 3.0 * F as f64,
                                    "groups {a} and {b}: {} vs {} per weight", e.0, e.1);
                            }
                        }
                    }
                }
            }
        }

        /// With a cap per migration and one on the link, over any window
        /// a group sends at most rate × window + burst + one frame, and the
        /// tunnel likewise; and capped work never stalls: a pull after
        /// `blocked_until` finds a frame.
        #[test]
        fn caps_hold_over_every_window(ops in ops()) {
            let (group_rate, link_rate) = (1_000_000u64, 3_000_000u64);
            let mut m = three_groups(SharePolicy {
                migration_rate: Some(group_rate),
                link_rate: Some(link_rate),
                weights: vec![],
                pace_tunnel: false,
            });
            let mut now = 0;
            let mut sends: Vec<(Instant, u8, u64)> = Vec::new();
            for op in ops {
                match op {
                    Op::Arrive { session, bytes } => m.arrive(session as u64, bytes),
                    Op::Wait { us } => now += us,
                    // A flow with room pulls several frames at once.
                    Op::Pull { frame } => for _ in 0..8 {
                        match m.pull(now, frame) {
                            Some((k, _, len)) => {
                                let g = (0..3).find(|g| key(*g) == k).unwrap();
                                sends.push((now, g, len));
                            }
                            None => {
                                // The link's tokens, then the group's: at
                                // most two waits and the frame goes.
                                let mut waits = 0;
                                while let Some(at) = m.s.blocked_until() {
                                    prop_assert!(at > now && waits < 2, "waits {waits}");
                                    now = at;
                                    waits += 1;
                                    if let Some((k, _, len)) = m.pull(now, frame) {
                                        let g = (0..3).find(|g| key(*g) == k).unwrap();
                                        sends.push((now, g, len));
                                        break;
                                    }
                                }
                            }
                        }
                    },
                }
            }
            let burst = |rate: u64| (rate * 4_000 / 1_000_000).max(F);
            for i in 0..sends.len() {
                let mut link = 0;
                let mut group = [0u64; 3];
                for &(t, g, len) in &sends[i..] {
                    let window = t - sends[i].0;
                    link += len;
                    group[g as usize] += len;
                    prop_assert!(link <= link_rate * window / 1_000_000 + burst(link_rate) + F,
                        "link sent {link} in {window}us");
                    prop_assert!(group[g as usize]
                        <= group_rate * window / 1_000_000 + burst(group_rate) + F,
                        "group {g} sent {} in {window}us", group[g as usize]);
                }
            }
        }
    }

    fn m_weight(g: GroupKey) -> u32 {
        (0..3u8).find(|i| key(*i) == g).map_or(1, |i| i as u32 + 1)
    }
}

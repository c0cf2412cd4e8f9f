//! The receiving end of the lane: shards in, rebuilt frames out, and what
//! to ack.
//!
//! A group is rebuilt as soon as any `data` of its shards are in; the ones
//! still on the way are then late and dropped. Groups that never gather
//! enough stay open until the sender says it gave up on them (its `floor`:
//! it declared them lost and the frames go again on a data flow), or until
//! open groups would hold more than [`MAX_OPEN_BYTES`].

use std::collections::BTreeMap;

use super::fec::{Codecs, FecError, GroupAssembly};
use super::wire::{Ack, ShardHeader, MAX_ACK_RANGES};
use crate::session::Instant;

/// Memory that groups still gathering shards may hold; past it the oldest
/// is given up (the sender declares it lost in time and it goes again).
pub const MAX_OPEN_BYTES: usize = 16 << 20;
/// Rebuilt groups that make an ack due at once; fewer wait at most
/// [`ACK_DELAY_US`].
const ACK_EVERY_GROUPS: u32 = 2;
pub const ACK_DELAY_US: u64 = 1_000;
/// An ack is sent again this long after it was last sent with something new,
/// in case it was lost: at the end of a burst there is no next one.
const ACK_REPEAT_US: u64 = 3_000;

/// What the receiving end counted.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ReceiverCounters {
    pub shards: u64,
    /// Frames rebuilt with parity (a data shard was missing).
    pub repaired: u64,
    pub frames: u64,
    /// Shards of groups already rebuilt or given up.
    pub late: u64,
    /// Groups dropped before they gathered enough shards.
    pub abandoned: u64,
}

#[derive(Debug, Default)]
pub struct LaneReceiver {
    codecs: Codecs,
    open: BTreeMap<u64, GroupAssembly>,
    open_bytes: usize,
    /// Every group below this one is rebuilt or given up by the sender.
    below: u64,
    /// Rebuilt groups at or above `below`: first → one past the last.
    rebuilt: BTreeMap<u64, u64>,
    largest: Option<(u64, Instant)>,
    /// Frame bytes rebuilt.
    received: u64,
    /// Since when an ack with something new is owed, and groups rebuilt since the last.
    owed_since: Option<Instant>,
    groups_since_ack: u32,
    repeat_at: Option<Instant>,
    counters: ReceiverCounters,
}

impl LaneReceiver {
    pub fn counters(&self) -> ReceiverCounters {
        self.counters
    }

    /// One opened shard (`header` and its plaintext `shard`) that arrived at
    /// `now`; returns the frame its group rebuilt, if this shard completed one.
    /// The header's `floor` is the sender's: groups below it are given up.
    pub fn on_shard(
        &mut self,
        now: Instant,
        header: &ShardHeader,
        shard: &[u8],
    ) -> Result<Option<Vec<u8>>, FecError> {
        self.counters.shards += 1;
        if self.largest.is_none_or(|(l, _)| header.packet > l) {
            self.largest = Some((header.packet, now));
        }
        self.raise_floor(header.floor);
        let group = header.group;
        if group < self.below || self.is_rebuilt(group) {
            self.counters.late += 1;
            return Ok(None);
        }
        let assembly = match self.open.entry(group) {
            std::collections::btree_map::Entry::Occupied(e) => e.into_mut(),
            std::collections::btree_map::Entry::Vacant(e) => {
                let a = GroupAssembly::new(header.shape)?;
                self.open_bytes += a.bytes();
                e.insert(a)
            }
        };
        if assembly.shape() != header.shape {
            // Shards of one group that disagree: a broken peer. Drop the shard, keep the group.
            return Err(FecError::ShardLength {
                got: shard.len(),
                want: assembly.shape().shard_len.into(),
            });
        }
        assembly.insert(header.index.into(), shard)?;
        let frame = if assembly.ready() {
            let a = self.open.remove(&group).expect("just looked up");
            self.open_bytes -= a.bytes();
            let repaired = !a.has_all_data();
            let frame = a.finish(&mut self.codecs)?;
            self.counters.frames += 1;
            self.counters.repaired += u64::from(repaired);
            self.received += frame.len() as u64;
            self.mark_rebuilt(group);
            self.owed_since.get_or_insert(now);
            self.groups_since_ack += 1;
            Some(frame)
        } else {
            None
        };
        self.keep_open_bounded();
        Ok(frame)
    }

    fn is_rebuilt(&self, group: u64) -> bool {
        self.rebuilt
            .range(..=group)
            .next_back()
            .is_some_and(|(_, &end)| group < end)
    }

    fn mark_rebuilt(&mut self, group: u64) {
        let mut start = group;
        let mut end = group + 1;
        if let Some((&s, &e)) = self.rebuilt.range(..group).next_back() {
            if e == group {
                start = s;
                self.rebuilt.remove(&s);
            }
        }
        if let Some(e) = self.rebuilt.remove(&end) {
            end = e;
        }
        self.rebuilt.insert(start, end);
        self.advance_below();
    }

    /// Moves `below` over rebuilt groups that follow it.
    fn advance_below(&mut self) {
        if let Some(end) = self.rebuilt.remove(&self.below) {
            self.below = end;
        }
    }

    /// The sender gave up on groups below `floor`: drop them.
    fn raise_floor(&mut self, floor: u64) {
        if floor <= self.below {
            return;
        }
        self.below = floor;
        while let Some((&g, _)) = self.open.first_key_value() {
            if g >= floor {
                break;
            }
            let a = self.open.remove(&g).expect("first key");
            self.open_bytes -= a.bytes();
            self.counters.abandoned += 1;
        }
        while let Some((&s, &e)) = self.rebuilt.first_key_value() {
            if s > self.below {
                break;
            }
            self.rebuilt.remove(&s);
            self.below = self.below.max(e);
        }
    }

    fn keep_open_bounded(&mut self) {
        while self.open_bytes > MAX_OPEN_BYTES {
            let Some((_, a)) = self.open.pop_first() else {
                break;
            };
            self.open_bytes -= a.bytes();
            self.counters.abandoned += 1;
        }
    }

    /// When [`LaneReceiver::poll_ack`] has one to send.
    pub fn ack_deadline(&self) -> Option<Instant> {
        let owed = self.owed_since.map(|t| {
            if self.groups_since_ack >= ACK_EVERY_GROUPS {
                t
            } else {
                t + ACK_DELAY_US
            }
        });
        match (owed, self.repeat_at) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// The ack to send now, if one is due.
    pub fn poll_ack(&mut self, now: Instant) -> Option<Ack> {
        let deadline = self.ack_deadline()?;
        if now < deadline {
            return None;
        }
        let (largest, at) = self.largest?;
        if self.owed_since.take().is_some() {
            self.repeat_at = Some(now + ACK_REPEAT_US);
        } else {
            self.repeat_at = None;
        }
        self.groups_since_ack = 0;
        Some(Ack {
            largest,
            delay_us: u32::try_from(now.saturating_sub(at)).unwrap_or(u32::MAX),
            received: self.received,
            below: self.below,
            // The oldest ranges first: their groups are the nearest to being declared lost
            // by the sender, which would send them again for nothing. Newer ones wait for
            // the holes below to clear (within the sender's loss wait).
            ranges: self
                .rebuilt
                .iter()
                .take(MAX_ACK_RANGES)
                .map(|(&s, &e)| (s, u32::try_from(e - s).unwrap_or(u32::MAX)))
                .collect(),
        })
    }

    /// Bytes held by groups still gathering shards.
    pub fn open_bytes(&self) -> usize {
        self.open_bytes
    }
}

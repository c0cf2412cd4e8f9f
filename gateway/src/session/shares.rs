//! How the tunnel's sending is shared between migrations, and capped.
//!
//! A migration is the connections one source host opens to one target: QEMU's
//! main channel and its multifd channels all come from the hypervisor's
//! address and go to the destination's listening port. The sessions of one
//! migration form a *group*; groups share the tunnel by weight (deficit round
//! robin, see [`super::scheduler`]), each may be capped, and the tunnel as a
//! whole may be capped. The policy can change at any time (SIGHUP) without
//! touching a session.

use std::net::{IpAddr, SocketAddr};

use super::Instant;

/// Where a session came from, as far as sharing goes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Origin {
    /// The client's address (our ingress sessions); `None` for sessions the
    /// peer opened, which are grouped by target alone.
    pub source: Option<IpAddr>,
    /// Which `[[ingress]]` (by position in the config) took the client; its
    /// weight applies. `None`: weight 1.
    pub ingress: Option<u16>,
}

/// The group a session belongs to: one migration.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct GroupKey {
    pub source: Option<IpAddr>,
    pub target: SocketAddr,
}

/// Rates and weights in force; all optional (no cap, weight 1).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SharePolicy {
    /// Cap of each migration group, bytes per second of payload.
    pub migration_rate: Option<u64>,
    /// Cap of the tunnel as a whole, bytes per second of payload.
    pub link_rate: Option<u64>,
    /// Weight of each `[[ingress]]`, by position; missing entries weigh 1.
    pub weights: Vec<u32>,
    /// Pace the tunnel as a whole at the rate its flows' transports deliver
    /// ([`super::pacer`]), under `link_rate` if that is set too.
    pub pace_tunnel: bool,
}

impl SharePolicy {
    pub fn weight(&self, origin: Origin) -> u32 {
        origin
            .ingress
            .and_then(|i| self.weights.get(i as usize).copied())
            .unwrap_or(1)
            .max(1)
    }

    /// The part of this policy one of `count` shards enforces: each shard
    /// carries its own sessions, so each gets an even part of every cap.
    pub fn for_shard(&self, count: usize) -> SharePolicy {
        let part = |r: u64| (r / count.max(1) as u64).max(1);
        SharePolicy {
            migration_rate: self.migration_rate.map(part),
            link_rate: self.link_rate.map(part),
            weights: self.weights.clone(),
            pace_tunnel: self.pace_tunnel,
        }
    }
}

/// A rate cap: tokens (bytes) refill at `rate` per second up to a small
/// burst; a sender may go when it has any, and pays for what it sent after
/// the fact (so the balance may dip below zero by at most one frame).
#[derive(Debug, Clone)]
pub struct TokenBucket {
    rate: u64,
    /// How long a burst may last at the rate.
    burst_us: u64,
    burst: i64,
    /// A sender waiting for tokens goes again once this long's worth has
    /// come back ([`TokenBucket::min_tokens`]): 0 (one token) for a cap; a
    /// few ms for the pacer, so a waiting flow wakes once per batch, not
    /// once per frame.
    wake_us: u64,
    tokens: i64,
    /// Sub-byte remainder of the last refill, in byte-microseconds, so slow
    /// rates refilled often lose nothing to rounding.
    carry: u64,
    /// When it was last refilled; none before its first use (it starts full).
    last: Option<Instant>,
}

/// The burst allowance: a few ms at the rate, so a driver whose timers fire
/// late by a millisecond or two still reaches the rate; never below one frame.
const BURST_US: u64 = 4_000;

impl TokenBucket {
    pub fn new(rate: u64, frame_len: usize) -> Self {
        Self::with_burst(rate, frame_len, BURST_US)
    }

    /// A bucket whose bursts may last `burst_us` at the rate.
    pub fn with_burst(rate: u64, frame_len: usize, burst_us: u64) -> Self {
        let burst = Self::burst_for(rate, frame_len, burst_us);
        TokenBucket {
            rate,
            burst_us,
            burst,
            wake_us: 0,
            tokens: burst,
            carry: 0,
            last: None,
        }
    }

    fn burst_for(rate: u64, frame_len: usize, burst_us: u64) -> i64 {
        let at_rate = rate.saturating_mul(burst_us) / 1_000_000;
        at_rate.max(frame_len as u64).min(i64::MAX as u64 / 2) as i64
    }

    pub fn rate(&self) -> u64 {
        self.rate
    }

    /// Senders that ran out wait until `wake_us` of tokens have come back
    /// (at most half the burst), then go together.
    pub fn waking_after(mut self, wake_us: u64) -> Self {
        self.wake_us = wake_us;
        self
    }

    /// The tokens a sender needs to go: `wake_us` at the rate, at least one,
    /// at most half the burst.
    fn min_tokens(&self) -> i64 {
        let at_rate = (self.rate.saturating_mul(self.wake_us) / 1_000_000).min(i64::MAX as u64);
        (at_rate as i64).clamp(1, (self.burst / 2).max(1))
    }

    /// A new rate; the balance is kept (clipped to the new burst).
    pub fn set_rate(&mut self, rate: u64, frame_len: usize) {
        self.rate = rate;
        self.burst = Self::burst_for(rate, frame_len, self.burst_us);
        self.tokens = self.tokens.min(self.burst);
    }

    fn refill(&mut self, now: Instant) {
        let last = *self.last.get_or_insert(now);
        if now <= last {
            return;
        }
        let elapsed = now - last;
        self.last = Some(now);
        let total = (self.rate as u128 * elapsed as u128) + self.carry as u128;
        let bytes = total / 1_000_000;
        self.carry = (total % 1_000_000) as u64;
        let bytes = bytes.min(i64::MAX as u128 / 2) as i64;
        self.tokens = self.tokens.saturating_add(bytes).min(self.burst);
        if self.tokens == self.burst {
            self.carry = 0;
        }
    }

    /// Whether a frame may go at `now`.
    pub fn allows(&mut self, now: Instant) -> bool {
        self.refill(now);
        self.tokens >= self.min_tokens()
    }

    /// Pays for `bytes` sent.
    pub fn charge(&mut self, bytes: u64) {
        self.tokens = self
            .tokens
            .saturating_sub(bytes.min(i64::MAX as u64) as i64);
    }

    /// Takes back `bytes` charged too much (the frame went out smaller).
    pub fn refund(&mut self, bytes: u64) {
        let bytes = bytes.min(i64::MAX as u64 / 2) as i64;
        self.tokens = self.tokens.saturating_add(bytes).min(self.burst);
    }

    /// When a sender may go again (`now` if it may).
    pub fn ready_at(&self, now: Instant) -> Instant {
        let need = self.min_tokens();
        if self.tokens >= need || self.rate == 0 {
            return now;
        }
        let owed = (need - self.tokens) as u128 * 1_000_000;
        let owed = owed.saturating_sub(self.carry as u128);
        let us = owed.div_ceil(self.rate as u128).min(u64::MAX as u128) as u64;
        self.last.unwrap_or(now).max(now).saturating_add(us.max(1))
    }
}

/// A measured rate: bytes over windows of at least a second.
#[derive(Debug, Clone, Default)]
pub struct RateMeter {
    /// Since when the current window counts; none before the first bytes.
    window_start: Option<Instant>,
    window_bytes: u64,
    /// Bytes per second over the last complete window.
    last: u64,
}

const RATE_WINDOW_US: u64 = 1_000_000;

impl RateMeter {
    pub fn add(&mut self, now: Instant, bytes: u64) {
        let start = *self.window_start.get_or_insert(now);
        let elapsed = now.saturating_sub(start);
        if elapsed >= RATE_WINDOW_US {
            self.last = (self.window_bytes as u128 * 1_000_000 / elapsed as u128) as u64;
            self.window_start = Some(now);
            self.window_bytes = 0;
        }
        self.window_bytes += bytes;
    }

    /// Takes back bytes counted too many in the current window.
    pub fn remove(&mut self, bytes: u64) {
        self.window_bytes = self.window_bytes.saturating_sub(bytes);
    }

    /// Bytes per second over the last complete window (0 once a whole
    /// window passed with nothing sent).
    pub fn rate(&self, now: Instant) -> u64 {
        match self.window_start {
            Some(start) if now.saturating_sub(start) < 2 * RATE_WINDOW_US => {
                if self.last == 0 && now > start + RATE_WINDOW_US / 5 {
                    // No whole window yet (a short transfer): the first part of one.
                    return (self.window_bytes as u128 * 1_000_000 / (now - start) as u128) as u64;
                }
                self.last
            }
            _ => 0,
        }
    }
}

/// One group as status output shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupSnapshot {
    pub key: GroupKey,
    pub sessions: usize,
    pub weight: u32,
    /// Its cap, bytes per second, if any.
    pub cap: Option<u64>,
    /// Payload bytes it sent in all, as they went on the wire (compressed).
    pub sent: u64,
    /// Bytes per second over the last second.
    pub rate: u64,
    /// Bytes its sessions took from their endpoints and no flow has yet
    /// ([`super::unsent`]), and how many they may; `None`: no group budget
    /// (no measured rate), each session has its own room.
    pub unsent: u64,
    pub unsent_budget: Option<u64>,
}

#[cfg(test)]
mod tests {
    use super::*;

    const SEC: u64 = 1_000_000;

    #[test]
    fn a_bucket_holds_its_rate_within_one_burst_and_one_frame() {
        let frame = 64 << 10;
        let rate = 37_500_000; // 300 Mbit/s
        let mut b = TokenBucket::new(rate, frame);
        let mut sent = 0u64;
        let mut now = 0;
        while now < 10 * SEC {
            if b.allows(now) {
                b.charge(frame as u64);
                sent += frame as u64;
            } else {
                now = b.ready_at(now);
            }
        }
        let most = rate * 10 + b.burst as u64 + frame as u64;
        assert!(sent <= most, "sent {sent} > {most}");
        assert!(sent >= rate * 10 - frame as u64, "sent {sent} < rate");
    }

    #[test]
    fn ready_at_is_when_the_balance_turns_positive() {
        let mut b = TokenBucket::new(1000, 10);
        assert!(b.allows(0), "starts full");
        b.charge(b.burst as u64 + 500);
        let at = b.ready_at(0);
        assert!(!b.allows(at - 1));
        assert!(b.allows(at));
    }

    #[test]
    fn a_shard_enforces_its_part_of_each_cap() {
        let p = SharePolicy {
            migration_rate: Some(300),
            link_rate: Some(1000),
            weights: vec![2],
            pace_tunnel: true,
        };
        let s = p.for_shard(2);
        assert_eq!((s.migration_rate, s.link_rate), (Some(150), Some(500)));
        assert_eq!(
            s.weight(Origin {
                source: None,
                ingress: Some(0)
            }),
            2
        );
        assert_eq!(s.weight(Origin::default()), 1);
    }

    #[test]
    fn the_meter_reports_the_last_whole_second() {
        let mut m = RateMeter::default();
        for i in 0..10 {
            m.add(i * SEC / 10, 100);
        }
        assert_eq!(
            m.rate(SEC * 9 / 10),
            1111,
            "no whole window yet: the part so far"
        );
        m.add(SEC, 0);
        assert_eq!(m.rate(SEC), 1000);
        assert_eq!(m.rate(3 * SEC + 1), 0, "idle for two windows");
    }
}

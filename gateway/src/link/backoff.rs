//! When to dial again after a failed dial: exponential backoff, the same on both datapaths.

use std::time::Duration;

/// The first wait after a failure, and what it grows to.
pub const BACKOFF_MIN: Duration = Duration::from_millis(100);
pub const BACKOFF_MAX: Duration = Duration::from_secs(5);

/// One dialled connection's backoff (the control connection, or one data flow): 100 ms after
/// a failure, doubling to 5 s, back to 100 ms once a dial succeeds. Times are the caller's
/// clock in µs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    delay: Duration,
    not_before: u64,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff {
            delay: BACKOFF_MIN,
            not_before: 0,
        }
    }
}

impl Backoff {
    /// Whether a dial may start at `now`.
    pub fn due(&self, now: u64) -> bool {
        now >= self.not_before
    }

    /// When a dial may start again.
    pub fn not_before(&self) -> u64 {
        self.not_before
    }

    /// How long the next failure makes the caller wait.
    pub fn delay(&self) -> Duration {
        self.delay
    }

    /// A dial failed (or what it set up ended) at `now`: the next is due after [`Backoff::delay`],
    /// which is returned, and the one after waits twice as long.
    pub fn failed(&mut self, now: u64) -> Duration {
        let wait = self.delay;
        self.not_before = now.saturating_add(wait.as_micros() as u64);
        self.delay = (wait * 2).min(BACKOFF_MAX);
        wait
    }

    /// A dial succeeded: the next failure waits the least again.
    pub fn succeeded(&mut self) {
        self.delay = BACKOFF_MIN;
    }

    /// Dial again at once (the connection was lost after it had worked).
    pub fn due_now(&mut self, now: u64) {
        self.not_before = now;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn waits_double_to_the_cap_and_reset_after_a_success() {
        let mut b = Backoff::default();
        assert!(b.due(0));
        let waits: Vec<u128> = (0..8).map(|i| b.failed(i).as_millis()).collect();
        assert_eq!(waits, [100, 200, 400, 800, 1600, 3200, 5000, 5000]);
        assert!(!b.due(7 + 4_999_999), "not before the last wait is over");
        assert!(b.due(7 + 5_000_000));
        b.succeeded();
        assert_eq!(b.failed(10_000_000), BACKOFF_MIN);
        assert!(!b.due(10_000_000));
        b.due_now(10_000_001);
        assert!(b.due(10_000_001));
        assert_eq!(b.delay(), Duration::from_millis(200));
        // A clock at its end does not wrap round to "due".
        let mut end = Backoff::default();
        end.failed(u64::MAX - 1);
        assert!(!end.due(u64::MAX - 1));
    }
}

//! The lowest of the values seen over a sliding window of time (sans-IO: `now` is passed in).
//!
//! Not BBR's min-RTT filter, which keeps one value and takes whatever comes next once that one
//! is a window old: the pacer's floor of the flows' round trip (`session::pacer`) must not jump
//! to the newest round while lower ones are still within the window, or a queue that stood a
//! little above the floor for a window becomes the floor and reads as no queue at all.

use std::collections::VecDeque;

use super::Instant;

/// Values kept at most. One is taken per round (the pacer's floor: at least 10 ms), so a
/// 2.4 s window keeps 240 at most; past this the oldest go (the floor then rises early, never
/// falls below what was seen).
const MAX_SAMPLES: usize = 1024;

#[derive(Debug, Clone, Default)]
pub struct WindowedMin {
    /// The samples that may still be the lowest: oldest first, each higher than the one before.
    samples: VecDeque<(Instant, u64)>,
}

impl WindowedMin {
    /// Takes `value`, seen at `now`, and forgets what is `window_us` old or older (the window
    /// may change from one call to the next: the pacer's cycle follows the min RTT). The newest
    /// value is kept however long the window.
    pub fn take(&mut self, value: u64, now: Instant, window_us: u64) {
        while self.samples.back().is_some_and(|&(_, v)| v >= value) {
            self.samples.pop_back();
        }
        if self.samples.len() == MAX_SAMPLES {
            self.samples.pop_front();
        }
        self.samples.push_back((now, value));
        while self.samples.len() > 1
            && self
                .samples
                .front()
                .is_some_and(|&(at, _)| now.saturating_sub(at) >= window_us)
        {
            self.samples.pop_front();
        }
    }

    /// The lowest value within the window at the last [`WindowedMin::take`].
    pub fn get(&self) -> Option<u64> {
        self.samples.front().map(|&(_, v)| v)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_lowest_within_the_window_not_the_newest_once_the_old_one_expires() {
        let mut m = WindowedMin::default();
        assert_eq!(m.get(), None);
        m.take(100, 0, 1000);
        m.take(101, 300, 1000);
        m.take(105, 600, 1000);
        assert_eq!(m.get(), Some(100));
        m.take(105, 1000, 1000);
        assert_eq!(m.get(), Some(101), "100 is a window old; 101 is not");
        m.take(105, 1300, 1000);
        assert_eq!(m.get(), Some(105));
        m.take(99, 1400, 1000);
        assert_eq!(m.get(), Some(99), "a lower one at once");
    }

    #[test]
    fn the_newest_stays_whatever_the_window() {
        let mut m = WindowedMin::default();
        m.take(7, 0, 10);
        m.take(9, 1_000_000, 10);
        assert_eq!(m.get(), Some(9));
        m.take(8, 1_000_000, 0);
        assert_eq!(m.get(), Some(8));
    }

    #[test]
    fn memory_is_bounded_and_the_minimum_only_rises_when_it_overflows() {
        let mut m = WindowedMin::default();
        for i in 0..10 * MAX_SAMPLES as u64 {
            m.take(i, i, u64::MAX);
        }
        assert_eq!(m.samples.len(), MAX_SAMPLES);
        assert_eq!(m.get(), Some(9 * MAX_SAMPLES as u64));
    }
}

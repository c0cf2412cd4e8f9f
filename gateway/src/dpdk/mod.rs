//! The DPDK appliance datapath (WIP).
pub mod crypto;
pub mod engine;
mod lan;
pub mod net;
pub mod phy;
mod tunnel;
pub mod wan;

/// How an idle poll loop waits: spin, then (if configured) sleep.
pub struct Idle {
    pub sleep_us: u64,
}

/// Empty polls before an idle loop sleeps.
const SPINS_BEFORE_SLEEP: u32 = 1000;

impl Idle {
    /// Called after an empty poll; `polls` counts consecutive empty ones
    /// (the caller resets it to 0 after useful work).
    pub fn wait(&self, polls: &mut u32) {
        *polls = polls.saturating_add(1);
        if self.sleep_us > 0 && *polls > SPINS_BEFORE_SLEEP {
            std::thread::sleep(std::time::Duration::from_micros(self.sleep_us));
        } else {
            std::hint::spin_loop();
        }
    }
}

#[cfg(test)]
mod tests;

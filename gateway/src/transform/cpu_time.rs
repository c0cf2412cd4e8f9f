//! CPU time of the calling thread, for the packing counters.
//!
//! Wall time around a frame's compression counts the time the thread waited for a core too:
//! with more sealing threads than cores (or a busy host) packing then looks several times
//! dearer than it is, and `auto` steps down for nothing.

/// Nanoseconds of CPU the calling thread has used.
pub fn thread_cpu_ns() -> u64 {
    let ts = rustix::time::clock_gettime(rustix::time::ClockId::ThreadCPUTime);
    (ts.tv_sec as u64)
        .saturating_mul(1_000_000_000)
        .saturating_add(ts.tv_nsec as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_work_not_sleep() {
        let t0 = thread_cpu_ns();
        std::thread::sleep(std::time::Duration::from_millis(30));
        let slept = thread_cpu_ns() - t0;
        let t1 = thread_cpu_ns();
        let mut x = 0u64;
        while thread_cpu_ns() - t1 < 20_000_000 {
            x = x.wrapping_add(std::hint::black_box(1));
        }
        assert!(x > 0);
        assert!(slept < 10_000_000, "sleeping 30 ms cost {slept} ns of CPU");
    }
}

//! Seeds that must not be guessed (a userspace stack's initial sequence numbers and ephemeral
//! ports), from the system's random source.

use ring::rand::SecureRandom;

/// 64 random bits; if the system's random source fails, the clock and the process id, which
/// still differ from one start to the next.
pub fn seed() -> u64 {
    let mut b = [0u8; 8];
    if ring::rand::SystemRandom::new().fill(&mut b).is_ok() {
        return u64::from_le_bytes(b);
    }
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    t.as_nanos() as u64 ^ std::process::id() as u64
}

#[cfg(test)]
mod tests {
    #[test]
    fn two_seeds_differ() {
        assert_ne!(super::seed(), super::seed());
    }
}

//! One LAN receive window per migration: how much a group's ingress sockets
//! may take in from the hypervisor ahead of the gateway.
//!
//! Bytes in an ingress socket's receive buffer, and in the hypervisor's own
//! send buffer behind it, have not reached the WAN yet; when the guest is
//! paused they still have to cross it, so they add to the downtime. The
//! hypervisor's send buffer grows with its congestion window, and on the
//! LAN that window grows up to twice what the receiver offers: every byte
//! of receive window costs several bytes of queue on the hypervisor host.
//! QEMU's multifd opens five connections for one migration; a full window
//! for each let a multifd-4 migration queue ~9 MB at the source and 3.6 MB
//! at gw-a against ~3 MB for one stream (docs/BENCHMARKS.md). So a group's
//! sessions share one window, split evenly, but never below
//! [`SESSION_RECEIVE_BUFFER_FLOOR`].
//!
//! The window follows the tunnel's rate: what the tunnel sends in
//! [`LAN_WINDOW_TIME_US`] (1 ms), in powers of two between
//! [`MIN_MIGRATION_WINDOW`] and [`MAX_MIGRATION_WINDOW`]. The group's unsent
//! budget (`session::unsent`, 20 ms) is what keeps the WAN fed while the
//! gateway is a moment late to read; the LAN window only has to refill it
//! as fast as the tunnel drains it, and a LAN round trip is a fraction of a
//! millisecond. A fixed 512 KiB queued ~6 MB ahead of a 1 Gbit/s WAN (the
//! hypervisor's send queue, gw-a's receive buffer and the budget), about
//! 50 ms of the pause.

/// How long the tunnel takes to send one migration's LAN window.
pub const LAN_WINDOW_TIME_US: u64 = 1_000;
/// The least window a migration gets, however slow the tunnel.
pub const MIN_MIGRATION_WINDOW: u64 = 128 << 10;
/// The most: 10 Gbit/s for 1.6 ms. Ingress listeners start their sockets
/// with it, so that the window scale they agree on can carry it.
pub const MAX_MIGRATION_WINDOW: u64 = 2 << 20;
/// Before the tunnel's rate is measured (its first round trip, or pacing
/// off and no cap): enough for 10 Gbit/s over a 0.4 ms LAN round trip.
pub const UNMEASURED_MIGRATION_WINDOW: u64 = 512 << 10;
/// The least a session's socket gets, however many share the migration.
pub const SESSION_RECEIVE_BUFFER_FLOOR: u64 = 64 << 10;

/// One migration's LAN window for a tunnel going at `rate` bytes per second
/// (`None`: not measured). Powers of two, so that it changes only when the
/// rate does by a lot, not with every round trip's estimate.
pub fn migration_window(rate: Option<u64>) -> u64 {
    match rate.filter(|r| *r > 0) {
        None => UNMEASURED_MIGRATION_WINDOW,
        Some(r) => (r.saturating_mul(LAN_WINDOW_TIME_US) / 1_000_000)
            .checked_next_power_of_two()
            .unwrap_or(MAX_MIGRATION_WINDOW)
            .clamp(MIN_MIGRATION_WINDOW, MAX_MIGRATION_WINDOW),
    }
}

/// The receive window of each of a migration's `members` ingress sockets,
/// the tunnel going at `rate`.
pub fn session_share(members: usize, rate: Option<u64>) -> u64 {
    (migration_window(rate) / members.max(1) as u64).max(SESSION_RECEIVE_BUFFER_FLOOR)
}

#[cfg(test)]
mod tests {
    use super::*;

    const GBIT: u64 = 125_000_000;

    #[test]
    fn the_window_is_a_millisecond_of_the_tunnels_rate_in_powers_of_two() {
        // 1 Gbit/s: 125 kB in 1 ms, so 128 KiB.
        assert_eq!(migration_window(Some(GBIT)), 128 << 10);
        assert_eq!(migration_window(Some(GBIT * 95 / 100)), 128 << 10);
        // 10 Gbit/s: 1.25 MB, so 2 MiB.
        assert_eq!(migration_window(Some(10 * GBIT)), 2 << 20);
        // 4 Gbit/s: 500 kB, so 512 KiB.
        assert_eq!(migration_window(Some(4 * GBIT)), 512 << 10);
    }

    #[test]
    fn slow_fast_and_unmeasured_tunnels_stay_within_bounds() {
        assert_eq!(migration_window(Some(GBIT / 100)), MIN_MIGRATION_WINDOW);
        assert_eq!(migration_window(Some(1)), MIN_MIGRATION_WINDOW);
        assert_eq!(migration_window(Some(1000 * GBIT)), MAX_MIGRATION_WINDOW);
        assert_eq!(migration_window(Some(u64::MAX)), MAX_MIGRATION_WINDOW);
        assert_eq!(migration_window(None), UNMEASURED_MIGRATION_WINDOW);
        assert_eq!(migration_window(Some(0)), UNMEASURED_MIGRATION_WINDOW);
    }

    #[test]
    fn a_lone_session_gets_the_whole_window_and_a_group_splits_it() {
        let rate = Some(4 * GBIT);
        let whole = migration_window(rate);
        assert_eq!(session_share(0, rate), whole);
        assert_eq!(session_share(1, rate), whole);
        assert_eq!(session_share(2, rate), whole / 2);
        // QEMU multifd 4: a main channel and four data channels.
        assert_eq!(session_share(5, rate), whole / 5);
    }

    #[test]
    fn a_crowded_group_keeps_the_floor() {
        assert_eq!(session_share(64, None), SESSION_RECEIVE_BUFFER_FLOOR);
        assert_eq!(session_share(5, Some(GBIT)), SESSION_RECEIVE_BUFFER_FLOOR);
        assert_eq!(
            session_share(usize::MAX, None),
            SESSION_RECEIVE_BUFFER_FLOOR
        );
    }
}

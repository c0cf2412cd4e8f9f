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
//! sessions share one window of [`MIGRATION_RECEIVE_BUFFER`], split evenly,
//! but never below [`SESSION_RECEIVE_BUFFER_FLOOR`].

/// What one migration's ingress sockets may buffer together (the kernel
/// doubles it for its bookkeeping). 512 KiB still carries 10 Gbit/s over a
/// LAN round trip of 0.4 ms; an autotuned buffer (up to `tcp_rmem`'s max)
/// took in at LAN speed what then had to cross the WAN after the pause.
pub const MIGRATION_RECEIVE_BUFFER: u64 = 512 << 10;
/// The least a session's socket gets, however many share the migration.
pub const SESSION_RECEIVE_BUFFER_FLOOR: u64 = 64 << 10;

/// The receive buffer of each of a migration's `members` ingress sockets.
pub fn session_share(members: usize) -> u64 {
    (MIGRATION_RECEIVE_BUFFER / members.max(1) as u64).max(SESSION_RECEIVE_BUFFER_FLOOR)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_lone_session_gets_the_whole_window_and_a_group_splits_it() {
        assert_eq!(session_share(0), MIGRATION_RECEIVE_BUFFER);
        assert_eq!(session_share(1), MIGRATION_RECEIVE_BUFFER);
        assert_eq!(session_share(2), MIGRATION_RECEIVE_BUFFER / 2);
        // QEMU multifd 4: a main channel and four data channels.
        assert_eq!(session_share(5), MIGRATION_RECEIVE_BUFFER / 5);
    }

    #[test]
    fn a_crowded_group_keeps_the_floor() {
        assert_eq!(session_share(64), SESSION_RECEIVE_BUFFER_FLOOR);
        assert_eq!(session_share(usize::MAX), SESSION_RECEIVE_BUFFER_FLOOR);
    }
}

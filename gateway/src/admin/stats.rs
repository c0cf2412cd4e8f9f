//! Process-wide counters: every rejection and every notable event is
//! counted here and shown by `lmas status` (and the metrics endpoint).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};

macro_rules! counters {
    ($( $(#[doc = $doc:literal])* $name:ident ),+ $(,)?) => {
        /// Monotonic event counters (relaxed atomics: figures, not locks).
        #[derive(Debug, Default)]
        pub struct Stats {
            $( $(#[doc = $doc])* pub $name: AtomicU64, )+
        }

        impl Stats {
            /// Name and value of every counter.
            pub fn snapshot(&self) -> BTreeMap<String, u64> {
                let mut m = BTreeMap::new();
                $( m.insert(stringify!($name).to_string(), self.$name.load(Ordering::Relaxed)); )+
                m
            }

            /// What counter `name` counts (its doc comment), for metrics' HELP.
            pub fn describe(name: &str) -> Option<&'static str> {
                match name {
                    $( stringify!($name) => Some(concat!($($doc),*).trim_start()), )+
                    _ => None,
                }
            }
        }
    };
}

counters!(
    /// Gateway handshakes that authenticated.
    handshakes_ok,
    /// Handshakes refused: bad prelude or version, unknown key, wrong psk, timeout, garbage.
    handshake_failures,
    /// Connections dropped because too many handshakes were already pending.
    handshakes_busy,
    /// Connections to the tunnel port from outside peer.source, dropped before any state (DPDK: their SYNs).
    tunnel_sources_refused,
    /// SYNs to the tunnel port dropped while no listening socket could be spared (DPDK; the peer's reserve aside).
    tunnel_syns_dropped,
    /// Half-open connections to the tunnel port given up: no handshake within 3 s, or displaced by newer ones (DPDK).
    tunnel_half_open_dropped,
    /// Client connections an ingress refused: source not in its sources, or over its max_sessions_per_source.
    ingress_refused,
    /// Half-open client connections an ingress dropped for newer ones (DPDK: too many handshakes under way).
    ingress_half_open_dropped,
    /// Client connections reset because their session was not open within the ingress connect timeout (or no tunnel came up in time).
    ingress_connect_timeouts,
    /// Sessions reset after moving no byte either way for their ingress idle timeout.
    ingress_idle_timeouts,
    /// Records that failed authentication or had an impossible length (the connection is closed).
    records_rejected,
    /// Messages that decoded but broke the protocol (the session or connection is reset).
    protocol_errors,
    /// Frames or acks for sessions that no longer exist (normal just after a reset).
    unknown_session_messages,
    /// Sessions opened from this gateway's ingress.
    sessions_opened,
    /// Sessions the peer opened that this gateway connected.
    sessions_accepted,
    /// Sessions refused (by the peer, or by this gateway's allowlist or connect failure).
    sessions_refused,
    /// Sessions reset (by either end, or because the tunnel was lost).
    sessions_reset,
    /// Key updates sent (in-place rekeys of a connection direction).
    key_updates,
    /// Datagrams to the lane's port from any address but the peer's (dropped unopened).
    lane_strangers,
    /// Datagrams from the peer's address that the lane refused: malformed, forged, replayed or under old keys.
    lane_datagrams_refused,
    /// Datagrams from the peer the lane dropped while endpoints left the receive budget full (their frames go again on the data flows).
    lane_datagrams_paused,
    /// Frames this gateway sent on the lane (each as one group of datagrams with parity).
    lane_frames_sent,
    /// Of those, frames the peer acked as rebuilt.
    lane_frames_acked,
    /// Frames this gateway declared lost on the lane that were acked soon after: late, not lost (each widens the lane's reordering window).
    lane_frames_late,
    /// Frames this gateway rebuilt from the peer's lane datagrams.
    lane_frames_rebuilt,
    /// Of those, frames that needed parity (a datagram of theirs was lost).
    lane_frames_repaired,
    /// Groups the lane gave up before they gathered enough datagrams (the peer sends them again on a data flow).
    lane_groups_abandoned,
    /// Control connections re-attached to a held tunnel after an outage.
    tunnel_resumes,
    /// Data flows that died (their frames were resent on the others).
    flows_lost,
    /// Config reloads (SIGHUP) applied.
    config_reloads,
    /// Config reloads refused because the new file was invalid (the old config stays).
    config_reload_failures,
);

impl Stats {
    pub fn inc(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }

    pub fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }

    /// Counts what the link layer's lifecycle counted.
    pub fn count(&self, what: crate::link::Count) {
        use crate::link::Count;
        match what {
            Count::HandshakeOk => Stats::inc(&self.handshakes_ok),
            Count::HandshakeBusy => Stats::inc(&self.handshakes_busy),
            Count::HandshakeFailed => Stats::inc(&self.handshake_failures),
            Count::TunnelResumed => Stats::inc(&self.tunnel_resumes),
            Count::FlowLost => Stats::inc(&self.flows_lost),
            Count::RecordRejected => Stats::inc(&self.records_rejected),
            Count::Applied(applied) => self.applied(applied),
        }
    }

    /// Counts a peer message that was for a session just ended, or broke the protocol.
    pub fn applied(&self, applied: crate::link::Applied) {
        match applied {
            crate::link::Applied::Ok => {}
            crate::link::Applied::UnknownSession => Stats::inc(&self.unknown_session_messages),
            crate::link::Applied::ProtocolError => Stats::inc(&self.protocol_errors),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_counter_is_described() {
        for name in Stats::default().snapshot().keys() {
            let help = Stats::describe(name).unwrap_or_else(|| panic!("{name}: no description"));
            assert!(
                !help.is_empty() && !help.starts_with(' '),
                "{name}: {help:?}"
            );
        }
        assert_eq!(
            Stats::describe("handshakes_ok"),
            Some("Gateway handshakes that authenticated.")
        );
        assert_eq!(Stats::describe("nope"), None);
    }
}

//! The datapath-agnostic session core (sans-IO).
//!
//! ```text
//!  endpoint bytes ─► SendStream ─► Scheduler ─► poll_frame(flow k) ─► data flow k
//!  (one session)     (segmenter,    (resends first,                   (any of N)
//!                     send buffer)   then migration groups
//!                                    by weight, within caps)
//!
//!  data flow j ─► handle_message(Data) ─► Reassembler ─► read() ─► endpoint
//!                                          (in order,      │
//!                                           dedup, window) └─► Ack on control
//! ```
//!
//! Credits: the sender never has more than the peer's advertised window in
//! flight per session, and never buffers more than `session_window` per
//! session or `global_buffer` across sessions; when either is exhausted the
//! datapath stops reading from the endpoint, so TCP backpressure reaches the
//! hypervisor. No sockets, threads or clocks here: the DPDK datapath reuses
//! this module unchanged.

pub mod dedup;
pub mod dedup_config;
pub mod dedup_inventory;
pub mod lan_window;
pub mod lane_choice;
pub mod pacer;
pub mod pump;
pub mod recv;
pub mod scheduler;
pub mod send;
pub mod shares;
pub mod tunnel;
pub mod unsent;
pub mod windowed_min;

pub use dedup::SharedStore;
pub use dedup_config::{DedupConfig, DedupMode, DedupScope};
pub use recv::{ReadOutcome, Reassembler, ReassemblyError};
pub use shares::{GroupKey, GroupSnapshot, Origin, SharePolicy};
pub use tunnel::{Event, PeerError, SessionError, SessionSnapshot, Side, TunnelCore, Violation};

/// Microseconds on the caller's monotonic clock.
pub type Instant = u64;

/// Buffer and framing limits of one tunnel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    /// Per session and direction: bytes buffered at the sender, and the
    /// receive window advertised to the peer.
    pub session_window: u64,
    /// Send-buffer bytes across all sessions of the tunnel.
    pub global_buffer: u64,
    /// Per session: bytes taken from the endpoint but not yet handed to a
    /// data flow. Kept small so the source's TCP sees the WAN's rate: a
    /// hypervisor paces its pre-copy and decides when to stop the guest from
    /// how fast its socket drains, and every byte queued here is downtime
    /// after it stops. Data in flight is bounded by `session_window` instead,
    /// which loss recovery needs large. Per session, not per tunnel, so a
    /// session whose peer stopped reading cannot hold the others' room.
    pub unsent_buffer: u64,
    /// How long the tunnel takes, at its measured rate, to send what one
    /// migration's sessions may hold unsent between them (their group
    /// budget, `session::unsent`): what is held when the guest stops crosses
    /// the WAN inside the pause.
    pub unsent_time_us: u64,
    /// Received bytes waiting for endpoints to read them, across sessions:
    /// at this the datapath stops reading data flows (backpressure to the
    /// peer's sender; nothing is dropped).
    pub receive_budget: u64,
    /// Largest data frame payload.
    pub frame_len: usize,
    pub max_sessions: usize,
    /// Send a cumulative ack at least every this many delivered bytes...
    pub ack_every: u64,
    /// ...or this long after the first unacked delivery.
    pub ack_delay_us: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            // A long fat lossy link needs several BDPs in flight: a frame lost on
            // one flow holds the stream head for a retransmission round while
            // the other flows go on (measured: docs/BENCHMARKS.md, WAN lab).
            session_window: 256 << 20,
            global_buffer: 1 << 30,
            receive_budget: 1 << 30,
            // 34 ms at 1 Gbit/s; ample to keep the flows fed from a LAN.
            unsent_buffer: 4 << 20,
            unsent_time_us: unsent::UNSENT_TIME_US,
            frame_len: 64 << 10,
            max_sessions: 4096,
            ack_every: 1 << 20,
            ack_delay_us: 2_000,
        }
    }
}

/// What the core counted; exposed in logs and (later) status output.
#[derive(Debug, Clone, Default)]
pub struct Counters {
    pub data_frames_in: u64,
    pub data_frames_out: u64,
    pub duplicate_bytes_in: u64,
    pub resent_bytes: u64,
    pub flows_lost: u64,
    /// Times a flow stalled with frames unsent and they went on the others.
    pub flow_stalls: u64,
    /// Frames the lane lost (its parity did not cover the path's losses): they went again
    /// on the data flows.
    pub lane_frames_lost: u64,
    /// Times the new frames moved to the lane because the data flows lost
    /// (`wan.lane = "auto"`), and back to the flows after its hold.
    pub lane_chosen: u64,
    pub lane_handed_back: u64,
    pub protocol_errors: u64,
    pub resyncs: u64,
}

impl Counters {
    /// Name and value of every counter, for status output.
    pub fn snapshot(&self) -> std::collections::BTreeMap<String, u64> {
        [
            ("data_frames_in", self.data_frames_in),
            ("data_frames_out", self.data_frames_out),
            ("duplicate_bytes_in", self.duplicate_bytes_in),
            ("resent_bytes", self.resent_bytes),
            ("flows_lost", self.flows_lost),
            ("flow_stalls", self.flow_stalls),
            ("lane_frames_lost", self.lane_frames_lost),
            ("lane_chosen", self.lane_chosen),
            ("lane_handed_back", self.lane_handed_back),
            ("protocol_errors", self.protocol_errors),
            ("resyncs", self.resyncs),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect()
    }
}

#[cfg(test)]
mod tests;

//! LMAS: a gateway that carries VM live-migration TCP streams across a long
//! WAN over N parallel, AES-256-GCM-encrypted TCP flows.
//!
//! ```text
//!  hypervisor ──TCP──► [local gateway] ══ control + N data flows ══► [remote gateway] ──TCP──► hypervisor
//!                       ingress       (Noise IK or IKpsk1, AES-256-GCM)  egress (allowlist)
//! ```
//!
//! Design overview (docs/ARCHITECTURE.md has the diagrams, and the layering
//! rule that `tests/layering.rs` enforces):
//! - The core: no sockets, no async runtime, no datapath. The session core
//!   reads no clock either (`now` is passed in); `crypto::keys` reads key
//!   files, and `crypto::channel` times its packing for the compression policy.
//!   - [`protocol`]: the versioned wire format; encode/decode only.
//!   - [`crypto`]: gateway authentication (a Noise handshake per connection)
//!     and record protection with key updates.
//!   - [`transform`]: per-frame packing (compression, zero runs) between the
//!     session core and the records.
//!   - [`dedup`]: WAN dedup: content-defined chunks, the sender's index and the
//!     receiver's chunk store, chunks the peer holds sent as references.
//!   - [`session`]: `TunnelCore`: segmenter, scheduler across flows,
//!     reassembler, credits.
//!   - [`link`]: what both datapaths do the same way, written once: a WAN
//!     connection's handshake fed raw bytes and its records, which
//!     unauthenticated connections keep a handshake slot, an accepted
//!     connection's first message, the connection table and grace period,
//!     dial backoff, the egress check, the shutdown's drain, the crypto stage's jobs.
//!   - [`frames`]: Ethernet frames as the DPDK datapath's filters read them
//!     (steering to TCP lcores, what reaches a stack, SYNs to the tunnel port).
//! - Two datapaths drive that core and speak the same protocol:
//!   - [`kernel`]: kernel sockets and tokio tasks (portable);
//!   - [`dpdk`]: the appliance: poll-mode lcores, smoltcp over mbufs, crypto
//!     on lcores of its own.
//! - [`admin`]: configuration and reload, the egress allowlist, counters,
//!   `lmas status`, metrics, signals; shared by both datapaths and importing
//!   neither.

#![deny(unsafe_code)]

pub mod admin;
pub mod crypto;
pub mod dedup;
pub mod dpdk;
pub mod frames;
pub mod kernel;
pub mod lane;
pub mod link;
pub mod protocol;
pub mod session;
pub mod sources;
pub mod transform;

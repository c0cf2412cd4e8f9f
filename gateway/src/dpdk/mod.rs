//! The DPDK appliance datapath: poll-mode lcores, a userspace TCP/IP
//! stack (smoltcp) over mbufs, and AES-256-GCM on dedicated lcores, speaking
//! the same wire protocol as the kernel datapath.
//!
//! ```text
//!  LAN NIC ─► io lcore ─ring─► tcp lcore ◄─ring─ io lcore ◄─ WAN NIC
//!                              │ Engine: smoltcp (LAN, WAN), sessions,
//!                              │ tunnel (control + N data flows)
//!                              ▼ records ▲ messages
//!                        crypto lcore(s): AES-256-GCM seal/open
//! ```
//!
//! - [`phy`]: the frame-port trait under the stack (DPDK rings, or memory).
//! - [`net`]: one port's smoltcp interface, with the ARP/IP guard that makes
//!   transparent interception safe.
//! - [`wan`]: one WAN connection: handshake, record framing.
//! - `tunnel` / `lan` / `egress`: the engine's WAN half, LAN half, and
//!   ordered connects to targets.
//! - [`engine`]: the TCP lcore's state and one turn of its loop.
//! - [`crypto`]: the crypto stage (workers, queues, backlog).
//! - `port` / `appliance` (feature `dpdk`): the DPDK glue: I/O lcores,
//!   ring-backed frame ports, EAL and lcore launch, the main lcore.
//! - `sim` (tests and `cargo fuzz` only): the engine on in-memory ports and
//!   wires, on a simulated clock; `tests` runs scenarios on it.
//!
//! Everything but the DPDK glue builds and is tested without DPDK.

#[cfg(feature = "dpdk")]
mod appliance;
pub mod crypto;
mod egress;
pub mod engine;
mod lan;
pub mod net;
pub mod phy;
#[cfg(feature = "dpdk")]
pub mod port;
mod tunnel;
pub mod wan;

#[cfg(feature = "dpdk")]
pub use appliance::run;

/// Without the `dpdk` feature the appliance datapath is not built in.
#[cfg(not(feature = "dpdk"))]
pub fn run(config: crate::admin::Config) -> Result<(), crate::admin::RunError> {
    Err(crate::admin::RunError::field(
        &config.file,
        "gateway.datapath",
        "\"dpdk\", but this lmas was built without the DPDK datapath (rebuild with the default features; it needs libdpdk-dev)",
    ))
}

/// How an idle poll loop waits: spin, then (if configured) sleep.
pub struct Idle {
    pub sleep_us: u64,
}

/// Empty polls before an idle loop sleeps (when it sleeps at all): enough
/// to ride out the gap between two bursts, few enough that a test box's
/// shared CPUs are not burnt spinning.
const SPINS_BEFORE_SLEEP: u32 = 64;

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

#[cfg(any(test, fuzzing))]
pub mod sim;
#[cfg(test)]
mod tests;

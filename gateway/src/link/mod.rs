//! The link layer: the tunnel's lifecycle, what both datapaths do the same way, written once
//! and sans-IO. The datapaths feed it events and carry out what it says; it reads no clock and
//! touches no socket (`now` is passed in, in µs of the driver's clock).
//!
//! - [`handshake`]: one connection's handshake, fed raw bytes.
//! - [`backoff`]: when to dial again after a failure.
//! - [`ingress`]: whether an ingress takes a client's connection, and opening its session.
//! - [`clients`]: the ingress ports' clients: who holds how many, and their paced lines.
//! - [`idle`]: which ingress sessions moved nothing for their idle timeout.
//! - [`egress`]: whether a session's target is taken, checked before any connect.
//! - [`connect_order`]: connects to one target one at a time, in the order sessions opened.
//! - [`drain`]: the shutdown: drain, deadline, resets, notice.
//! - [`admission`]: which unauthenticated connections on the tunnel port keep a handshake slot.
//! - [`syn_gate`]: which SYNs reach the tunnel port's listeners on a stack without SYN
//!   cookies, and the half-open connections they make.
//! - [`half_open`]: connections whose TCP handshake is under way, bounded, on a stack without
//!   SYN cookies.
//! - [`accept`]: what an accepted connection's first message makes of it.
//! - [`records`]: records split off a connection's byte stream.
//! - [`record_queues`]: one connection's records out for opening and sealing, and waiting for
//!   its transport, bounded both ways.
//! - [`crypto_stage`]: sealing and opening records for many connections, as jobs (the DPDK
//!   datapath's crypto lcores run them).
//! - [`failure`]: why a WAN connection failed, what the lifecycle makes of it, what it counts as.
//! - [`stall`]: which of a data flow's newest frames wait while its transport's window is
//!   collapsed, to send again on the others.
//! - [`welcome`]: what the welcome to the dialler's hello makes of the tunnel it held.
//! - [`conn_table`]: which connection serves each role; replacement, loss, the grace period.
//! - [`tunnel`]: one tunnel's core and table, and what follows when a connection attaches or
//!   dies, a peer message arrives or the grace period runs out.
//! - [`dialer`]: when the dialling gateway dials the control connection and each data flow.
//! - [`lifecycle`]: the tunnel's lifecycle over its connections, events in and actions out:
//!   hello, welcome, attach, resume, replacement, grace, dialling, handshake deadlines.

pub mod accept;
pub mod admission;
pub mod backoff;
pub mod clients;
pub mod conn_table;
pub mod connect_order;
pub mod crypto_stage;
pub mod dialer;
pub mod drain;
pub mod egress;
pub mod failure;
pub mod half_open;
pub mod handshake;
pub mod idle;
pub mod ingress;
pub mod lifecycle;
pub mod record_queues;
pub mod records;
pub mod stall;
pub mod syn_gate;
pub mod tunnel;
pub mod welcome;

pub use accept::{first_message, Current, FirstRefusal, FirstStep};
pub use backoff::Backoff;
pub use clients::{Clients, IngressRules};
pub use conn_table::{ConnRef, ConnTable, ControlAttached, FlowAttached, Lost, Role};
pub use connect_order::ConnectOrder;
pub use dialer::{DialFailed, Dialer, FLOWS_ATTACH_TIMEOUT};
pub use drain::{Drain, DrainStep, ResetCause};
pub use egress::{check_egress, EgressCheck, EgressRefusal, TargetRefusal};
pub use failure::ConnFailure;
pub use handshake::{
    ConnHandshake, Done, Identity, LinkHandshakeError, HANDSHAKE_TIMEOUT, PEER_CLOSED_IN_HANDSHAKE,
};
pub use idle::{Idle, IdleTimeouts};
pub use ingress::{
    check_ingress, connect_timeout_line, no_tunnel_line, open_client_session, peer_refused_line,
    IngressCheck, IngressRefusal,
};
pub use lifecycle::{Action, Count, Fault, FaultKind, Lifecycle, LinkError, LinkSetup};
pub use records::{Next, ReadAhead, Record, RecordSplitter};
pub use tunnel::{Applied, ConnNames, TunnelSetup, TunnelState};
pub use welcome::{name_mismatch, welcome_step, WelcomeStep};

/// How logs and status name the peer: `name (address)` when the address is known.
pub fn peer_label(name: &str, addr: Option<std::net::SocketAddr>) -> String {
    match addr {
        Some(a) => format!("{name} ({a})"),
        None => name.to_string(),
    }
}

//! LMAS: a gateway that carries VM live-migration TCP streams across a long
//! WAN over N parallel, AES-256-GCM-encrypted TCP flows.
//!
//! ```text
//!  hypervisor ──TCP──► [local gateway] ══ control + N data flows ══► [remote gateway] ──TCP──► hypervisor
//!                       ingress            (Noise IK, AES-256-GCM)     egress (allowlist)
//! ```
//!
//! Design overview, one idea per module, data flowing one way:
//! - [`protocol`]: the versioned wire format; encode/decode only.
//! - [`crypto`]: gateway authentication (Noise) and record protection.
//! - [`session`]: the sans-IO core: segmenter, scheduler, reassembler, credits.
//! - [`kernel`]: the portable datapath on kernel sockets (tokio).
//! - [`admin`]: configuration, key files, CLI plumbing.

#![deny(unsafe_code)]

pub mod admin;
pub mod admission;
pub mod crypto;
pub mod dpdk;
pub mod kernel;
pub mod protocol;
pub mod session;
pub mod transform;

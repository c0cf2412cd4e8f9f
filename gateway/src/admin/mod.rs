//! Operator-facing plumbing: configuration files, the egress allowlist, logs.

pub mod allowlist;
pub mod client;
pub mod config;
pub mod dpdk;
pub mod stats;
pub mod status;

pub use allowlist::Allowlist;
pub use config::{Config, ConfigError, Datapath, Ingress, IngressMode, TunnelEnd};
pub use stats::Stats;
pub use status::Status;

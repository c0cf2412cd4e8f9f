//! Operator-facing plumbing: configuration files, the egress allowlist, logs.

pub mod allowlist;
pub mod config;

pub use allowlist::Allowlist;
pub use config::{Config, ConfigError, Ingress, IngressMode, TunnelEnd};

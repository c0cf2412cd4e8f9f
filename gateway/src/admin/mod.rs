//! Operator-facing plumbing, shared by every datapath: configuration files
//! and their reload, the egress allowlist, counters, `lmas status` (the admin
//! socket and its client), the Prometheus metrics endpoint, signals.
//!
//! A datapath implements [`StatusSource`] and calls [`serve`]; it then gets
//! `lmas status` and metrics without knowing how they are served.

pub mod allowlist;
pub mod appliance;
pub mod client;
pub mod config;
pub mod dpdk;
pub mod host;
pub mod http;
pub mod metrics;
pub mod reload;
pub mod run_error;
pub mod signals;
pub mod socket;
pub mod stats;
pub mod status;

use std::sync::Arc;

pub use allowlist::Allowlist;
pub use config::{Config, ConfigError, Datapath, Ingress, IngressMode, TunnelEnd};
pub use run_error::RunError;
pub use stats::Stats;
pub use status::{Status, StatusSource};

/// Starts the admin socket and, if `[metrics] bind` is set, the metrics
/// endpoint, both answering from `source`, as tasks on the current tokio
/// runtime. A metrics address that cannot be bound fails (naming the field);
/// an admin socket that cannot be bound only disables `lmas status`, with a
/// warning (status is not worth failing the datapath for).
pub async fn serve(config: &Config, source: Arc<dyn StatusSource>) -> Result<(), ConfigError> {
    if let Some(addr) = config.metrics_bind {
        let listener = http::bind(addr).await.map_err(|e| ConfigError {
            file: config.file.clone(),
            field: "metrics.bind".into(),
            why: format!("cannot listen on {addr}: {e}"),
        })?;
        tokio::spawn(http::serve(source.clone(), listener));
    }
    if let Some(listener) = socket::bind(&config.admin_socket) {
        tokio::spawn(socket::serve(source, listener));
    }
    Ok(())
}

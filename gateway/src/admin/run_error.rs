//! Why a gateway could not start, or stopped: what both datapaths' `run` return. Each names
//! the config field or the host resource to change; `lmas run` prints it and exits non-zero.

use std::fmt::Display;
use std::path::Path;

use super::ConfigError;

#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// A config field this host cannot honour: an address to bind, a DPDK port, lcore or EAL
    /// argument, a datapath this build lacks.
    #[error(transparent)]
    Field(#[from] ConfigError),
    /// Something the process needs from the host (a runtime, signal handlers).
    #[error("{what}: {source}")]
    Host {
        what: &'static str,
        #[source]
        source: std::io::Error,
    },
    /// A DPDK TCP lcore stopped on its own (it runs until told to stop: a bug).
    #[error("the TCP lcore stopped unexpectedly")]
    LcoreStopped,
}

impl RunError {
    /// `field` of config `file` cannot be honoured, because of `why`.
    pub fn field(file: &Path, field: impl Into<String>, why: impl Display) -> RunError {
        RunError::Field(ConfigError {
            file: file.to_path_buf(),
            field: field.into(),
            why: why.to_string(),
        })
    }

    /// The host refused `what`.
    pub fn host(what: &'static str) -> impl FnOnce(std::io::Error) -> RunError {
        move |source| RunError::Host { what, source }
    }
}

//! DPDK failures as values: the call that failed and DPDK's own explanation.

use std::ffi::CStr;

use crate::sys;

/// A DPDK call failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{op}: {message} (errno {code})")]
pub struct Error {
    /// What was being done, e.g. `rte_eth_dev_configure(port 0)`.
    pub op: String,
    /// A positive errno value.
    pub code: i32,
    pub message: String,
}

impl Error {
    /// From a negative-errno return value (ethdev style).
    pub(crate) fn from_ret(op: impl Into<String>, ret: i32) -> Error {
        Self::from_errno(op, ret.unsigned_abs() as i32)
    }

    /// From `rte_errno` (the style of calls that return NULL or -1).
    pub(crate) fn last(op: impl Into<String>) -> Error {
        // SAFETY: reads this thread's per-lcore rte_errno; no preconditions.
        let code = unsafe { sys::lmas_errno() };
        Self::from_errno(op, code)
    }

    fn from_errno(op: impl Into<String>, code: i32) -> Error {
        // SAFETY: rte_strerror returns a pointer to a static or thread-local
        // NUL-terminated string for any value.
        let message = unsafe { CStr::from_ptr(sys::rte_strerror(code)) }
            .to_string_lossy()
            .into_owned();
        Error {
            op: op.into(),
            code,
            message,
        }
    }

    /// A failure the wrapper itself detected (bad argument).
    pub(crate) fn invalid(op: impl Into<String>, message: impl Into<String>) -> Error {
        Error {
            op: op.into(),
            code: libc_einval(),
            message: message.into(),
        }
    }
}

const fn libc_einval() -> i32 {
    22
}

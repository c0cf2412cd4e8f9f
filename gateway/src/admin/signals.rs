//! What an operator asks of a running gateway with signals (`systemctl
//! reload`/`stop`, `kill -HUP`, Ctrl-C), as a stream of requests.
//!
//! SIGHUP asks for a config reload; SIGTERM and SIGINT ask to stop (the
//! first starts a drain, a second one during the drain means "now"). The
//! handlers are installed by [`Signals::install`], before the gateway does
//! anything else, so an early SIGHUP never kills the process (its default
//! action). Must be called on a tokio runtime.

use tokio::signal::unix::{signal, Signal, SignalKind};

/// One operator request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Request {
    /// SIGHUP: re-read the config file.
    Reload,
    /// SIGTERM or SIGINT (named, for logs).
    Stop(&'static str),
}

pub struct Signals {
    hup: Signal,
    term: Signal,
    int: Signal,
}

impl Signals {
    pub fn install() -> std::io::Result<Signals> {
        Ok(Signals {
            hup: signal(SignalKind::hangup())?,
            term: signal(SignalKind::terminate())?,
            int: signal(SignalKind::interrupt())?,
        })
    }

    /// The next request (waits for a signal).
    pub async fn next(&mut self) -> Request {
        tokio::select! {
            _ = self.hup.recv() => Request::Reload,
            _ = self.term.recv() => Request::Stop("SIGTERM"),
            _ = self.int.recv() => Request::Stop("SIGINT"),
        }
    }
}

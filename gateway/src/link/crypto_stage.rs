//! The crypto stage's work, wherever it runs: AES-256-GCM sealing and opening of records
//! for many WAN connections, as jobs in and results out. The DPDK datapath runs it on its
//! crypto lcores (one [`CryptoWorker`] each, behind rings) or inline on the TCP lcore
//! ([`InlineCrypto`]); [`CryptoStage`] is the TCP lcore's side, which never loses or
//! reorders a job when a worker's queue is full.
//!
//! Jobs carry [`Message`]s out (encoded on the worker, so the payload copy is off the caller's
//! thread too) and whole records in. A connection's jobs must reach one worker in order (the
//! record layer's implicit nonce counters follow TCP's byte order); the pipe sees to that.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Instant;

use bytes::BytesMut;

use crate::crypto::{KeyUpdated, Opening, RekeyPolicy, Sealing, TrafficKeys, RECORD_HEADER_LEN};
use crate::link::ConnFailure;
use crate::protocol::Message;
use crate::transform::{PackNote, PackPolicy};

/// Identifies one WAN connection for its whole life (never reused): the link layer's number.
pub type ConnId = super::ConnRef;

/// Work for a crypto worker.
pub enum CryptoJob {
    /// The handshake finished: the connection's traffic keys.
    Install {
        conn: ConnId,
        keys: TrafficKeys,
        policy: RekeyPolicy,
    },
    /// Encode `msg` and seal it as the connection's next record.
    Seal { conn: ConnId, msg: Message },
    /// Open the connection's next record and decode its message.
    Open {
        conn: ConnId,
        header: [u8; RECORD_HEADER_LEN],
        body: BytesMut,
    },
    /// The connection is gone: forget its keys.
    Remove { conn: ConnId },
}

impl CryptoJob {
    pub fn conn(&self) -> ConnId {
        match self {
            CryptoJob::Install { conn, .. }
            | CryptoJob::Seal { conn, .. }
            | CryptoJob::Open { conn, .. }
            | CryptoJob::Remove { conn } => *conn,
        }
    }
}

/// What a worker hands back.
pub enum CryptoDone {
    /// Sealed record bytes, ready for the socket (preceded by a key-update
    /// record when one was due).
    Sealed {
        conn: ConnId,
        record: Vec<u8>,
        key_update: Option<KeyUpdated>,
        /// What packing the data frame did, for its session's figures.
        packed: Option<PackNote>,
    },
    /// The record's message; `None` when it was the peer's key update.
    Opened {
        conn: ConnId,
        msg: Option<Message>,
        /// What unpacking a packed data frame cost, for its session's figures.
        unpacked: Option<PackNote>,
    },
    /// Sealing or opening failed: the connection must be closed.
    Failed { conn: ConnId, error: ConnFailure },
}

/// The keys of every connection pinned to one worker.
#[derive(Default)]
pub struct CryptoWorker {
    conns: rustc_hash::FxHashMap<ConnId, (Sealing, Opening)>,
    /// The gateway's packing policy (`[wan] compression`): data frames are packed here, on
    /// the crypto lcore, before they are sealed (docs/COMPRESSION.md).
    packing: Option<Arc<PackPolicy>>,
}

impl CryptoWorker {
    /// A worker that packs data frames by `packing`, for the peers that unpack them.
    pub fn with_packing(packing: Option<Arc<PackPolicy>>) -> Self {
        CryptoWorker {
            conns: Default::default(),
            packing,
        }
    }

    /// Does one job; `None` for jobs without an answer (install, remove,
    /// and work for a connection already removed).
    pub fn process(&mut self, job: CryptoJob, now: Instant) -> Option<CryptoDone> {
        match job {
            CryptoJob::Install { conn, keys, policy } => {
                let mut sealing = Sealing::new(&keys.send, policy, now);
                let mut opening = Opening::new(&keys.recv);
                if let Some(p) = &self.packing {
                    // Only data frames are packed, so control connections are unaffected.
                    sealing = sealing.with_packing(keys.peer_codecs, p.clone());
                    opening = opening.with_stats(p.clone());
                }
                let state = (sealing, opening);
                self.conns.insert(conn, state);
                None
            }
            CryptoJob::Remove { conn } => {
                self.conns.remove(&conn);
                None
            }
            CryptoJob::Seal { conn, msg } => {
                let (sealing, _) = self.conns.get_mut(&conn)?;
                let mut record = Vec::with_capacity(encoded_len_hint(&msg));
                Some(match sealing.seal(&msg, &mut record, now) {
                    Ok(sealed) => CryptoDone::Sealed {
                        conn,
                        record,
                        key_update: sealed.key_update,
                        packed: sealed.packed,
                    },
                    Err(e) => CryptoDone::Failed {
                        conn,
                        error: ConnFailure::Seal(e),
                    },
                })
            }
            CryptoJob::Open { conn, header, body } => {
                let (_, opening) = self.conns.get_mut(&conn)?;
                Some(match opening.open(header, body) {
                    Ok(o) => CryptoDone::Opened {
                        conn,
                        msg: o.msg,
                        unpacked: o.unpacked,
                    },
                    Err(e) => CryptoDone::Failed {
                        conn,
                        error: e.into(),
                    },
                })
            }
        }
    }
}

/// Room for the record: payload + frame header + length + tag, with slack
/// for a key-update record in front.
fn encoded_len_hint(msg: &Message) -> usize {
    let payload = match msg {
        Message::Data(f) => f.payload.len(),
        _ => 0,
    };
    payload + 128
}

/// Where the TCP lcore sends crypto work and collects results.
pub trait CryptoPipe {
    /// Queues a job; gives it back if the worker's queue is full.
    fn submit(&mut self, job: CryptoJob) -> Result<(), CryptoJob>;
    /// The next finished job, if any.
    fn poll(&mut self) -> Option<CryptoDone>;
}

/// Does the work at once on the caller's thread.
#[derive(Default)]
pub struct InlineCrypto {
    worker: CryptoWorker,
    done: VecDeque<CryptoDone>,
}

impl InlineCrypto {
    pub fn with_packing(packing: Option<Arc<PackPolicy>>) -> Self {
        InlineCrypto {
            worker: CryptoWorker::with_packing(packing),
            done: VecDeque::new(),
        }
    }
}

impl CryptoPipe for InlineCrypto {
    fn submit(&mut self, job: CryptoJob) -> Result<(), CryptoJob> {
        if let Some(d) = self.worker.process(job, Instant::now()) {
            self.done.push_back(d);
        }
        Ok(())
    }

    fn poll(&mut self) -> Option<CryptoDone> {
        self.done.pop_front()
    }
}

/// The TCP lcore's side of the crypto stage: a [`CryptoPipe`] plus a
/// backlog for jobs its ring refused, resubmitted first and in order, so a
/// full ring delays work but never loses or reorders it.
pub struct CryptoStage<C: CryptoPipe> {
    pipe: C,
    backlog: VecDeque<CryptoJob>,
}

impl<C: CryptoPipe> CryptoStage<C> {
    pub fn new(pipe: C) -> Self {
        CryptoStage {
            pipe,
            backlog: VecDeque::new(),
        }
    }

    pub fn submit(&mut self, job: CryptoJob) {
        if !self.backlog.is_empty() {
            self.backlog.push_back(job);
            return;
        }
        if let Err(job) = self.pipe.submit(job) {
            self.backlog.push_back(job);
        }
    }

    /// Retries the backlog; then the next result, if any.
    pub fn poll(&mut self) -> Option<CryptoDone> {
        while let Some(job) = self.backlog.pop_front() {
            if let Err(job) = self.pipe.submit(job) {
                self.backlog.push_front(job);
                break;
            }
        }
        self.pipe.poll()
    }

    /// Jobs waiting for room in a worker's ring.
    pub fn backlog(&self) -> usize {
        self.backlog.len()
    }
}

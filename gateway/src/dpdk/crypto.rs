//! The crypto stage: AES-256-GCM sealing and opening of records, off the
//! TCP lcore, on dedicated crypto lcores.
//!
//! Each WAN connection is pinned to one crypto worker (connection id modulo
//! the worker count), and each worker's queues are FIFO, so the records of
//! one connection are sealed and opened in order: the implicit nonce
//! counters of the record layer stay in step with TCP's byte order. Jobs
//! carry [`Message`]s out (encoded on the worker, so the payload copy is
//! off the TCP lcore too) and whole records in; completions come back on
//! the worker's own queue.
//!
//! The jobs, the worker and the inline pipe are the link layer's
//! ([`crate::link::crypto_stage`]); here is what runs them on lcores:
//! [`CryptoQueues`], the lock-free pair of rings per worker lcore, and the
//! worker lcore's loop.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

use crossbeam_queue::ArrayQueue;

use crate::admin::appliance::RoleCounters;
pub use crate::link::crypto_stage::{
    ConnId, CryptoDone, CryptoJob, CryptoPipe, CryptoStage, CryptoWorker, InlineCrypto,
};
use crate::transform::PackPolicy;

/// The two rings between the TCP lcore and one crypto lcore.
pub struct WorkerRings {
    jobs: ArrayQueue<CryptoJob>,
    done: ArrayQueue<CryptoDone>,
    /// Time spent working and jobs done, for the per-role budget.
    pub counters: Arc<RoleCounters>,
}

/// The TCP lcore's end of every crypto lcore's rings.
pub struct CryptoQueues {
    workers: Vec<Arc<WorkerRings>>,
    /// Round-robin start for `poll`, so no worker's results starve.
    next: usize,
}

/// Jobs (and results) a worker's ring holds.
const RING_SLOTS: usize = 4096;

impl CryptoQueues {
    /// Rings for `n` workers; returns the TCP lcore's end and each worker's.
    pub fn new(n: usize) -> (CryptoQueues, Vec<Arc<WorkerRings>>) {
        let workers: Vec<_> = (0..n.max(1))
            .map(|_| {
                Arc::new(WorkerRings {
                    jobs: ArrayQueue::new(RING_SLOTS),
                    done: ArrayQueue::new(RING_SLOTS),
                    counters: Arc::default(),
                })
            })
            .collect();
        (
            CryptoQueues {
                workers: workers.clone(),
                next: 0,
            },
            workers,
        )
    }
}

impl CryptoPipe for CryptoQueues {
    fn submit(&mut self, job: CryptoJob) -> Result<(), CryptoJob> {
        let w = &self.workers[(job.conn() % self.workers.len() as u64) as usize];
        w.jobs.push(job)
    }

    fn poll(&mut self) -> Option<CryptoDone> {
        let n = self.workers.len();
        for i in 0..n {
            let k = (self.next + i) % n;
            if let Some(d) = self.workers[k].done.pop() {
                self.next = (k + 1) % n;
                return Some(d);
            }
        }
        None
    }
}

/// The loop of one crypto lcore: take jobs, do them, hand results back,
/// until `stop`. When its result ring is full it waits (the TCP lcore
/// drains it every iteration), so nothing is ever dropped.
pub fn run_worker(
    rings: &WorkerRings,
    stop: &AtomicBool,
    idle: &super::Idle,
    packing: Option<Arc<PackPolicy>>,
) {
    let mut worker = CryptoWorker::with_packing(packing);
    let mut idle_polls = 0u32;
    while !stop.load(Ordering::Relaxed) {
        let Some(job) = rings.jobs.pop() else {
            idle.wait(&mut idle_polls);
            continue;
        };
        idle_polls = 0;
        let started = Instant::now();
        if let Some(mut done) = worker.process(job, started) {
            loop {
                match rings.done.push(done) {
                    Ok(()) => break,
                    Err(back) => {
                        if stop.load(Ordering::Relaxed) {
                            return;
                        }
                        done = back;
                        std::hint::spin_loop();
                    }
                }
            }
        }
        rings.counters.add(started, 1);
    }
}

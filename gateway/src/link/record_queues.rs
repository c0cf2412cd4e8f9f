//! One connection's records on their way through a crypto stage that works apart from the
//! connection's driver (the DPDK datapath's crypto lcores): records split off the stream and
//! out for opening, messages out for sealing, and sealed records waiting for room in the
//! transport. Sans-IO: the driver reads into [`RecordQueues::read_space`] and writes through
//! [`RecordQueues::write`] with its own socket calls.
//!
//! Both directions are bounded. While more than [`OPEN_BACKLOG`] bytes of the connection wait
//! to be opened, nothing more is read, so the transport's receive window closes and the peer
//! slows down; a data flow takes another frame only while [`RecordQueues::may_seal`] and its
//! socket has room for all that is queued ([`RecordQueues::queued`]).

use std::collections::VecDeque;

use super::records::{Record, RecordSplitter};
use crate::crypto::RecordError;

/// Record bytes of one connection allowed in the crypto stage at once.
pub const OPEN_BACKLOG: usize = 1 << 20;
/// Seal jobs of one connection in the crypto stage at once.
const SEAL_BACKLOG: usize = 4;

#[derive(Debug, Default)]
pub struct RecordQueues {
    incoming: RecordSplitter,
    /// Body lengths of records out for opening, oldest first, and their sum.
    opening: VecDeque<usize>,
    open_bytes: usize,
    /// Messages out for sealing.
    sealing: usize,
    /// Sealed records waiting for room in the transport; `out_off` of the first is written.
    out: VecDeque<Vec<u8>>,
    out_off: usize,
    out_bytes: usize,
    pub bytes_sent: u64,
    pub bytes_received: u64,
}

impl RecordQueues {
    /// Where the stream's next bytes go, or `None` while the opening backlog is full.
    pub fn read_space(&mut self) -> Option<&mut [u8]> {
        (self.open_bytes < OPEN_BACKLOG).then(|| self.incoming.space())
    }

    /// `n` bytes were read into [`RecordQueues::read_space`]: the whole record once its last
    /// byte is in, counted as out for opening.
    pub fn filled(&mut self, n: usize) -> Result<Option<Record>, RecordError> {
        self.bytes_received += n as u64;
        let record = self.incoming.filled(n)?;
        if let Some(r) = &record {
            self.opening.push_back(r.body.len());
            self.open_bytes += r.body.len();
        }
        Ok(record)
    }

    /// The oldest record out for opening came back.
    pub fn opened(&mut self) {
        if let Some(len) = self.opening.pop_front() {
            self.open_bytes -= len;
        }
    }

    /// A message went out for sealing.
    pub fn sealing(&mut self) {
        self.sealing += 1;
    }

    /// A sealed record came back: it waits for the transport.
    pub fn sealed(&mut self, record: Vec<u8>) {
        self.sealing = self.sealing.saturating_sub(1);
        self.out_bytes += record.len();
        self.out.push_back(record);
    }

    /// Writes waiting records through `send` (which takes what it can of the bytes it is
    /// given, and returns how many) until it takes less than it was given.
    pub fn write<E>(&mut self, mut send: impl FnMut(&[u8]) -> Result<usize, E>) -> Result<(), E> {
        while let Some(front) = self.out.front() {
            let n = send(&front[self.out_off..])?;
            self.bytes_sent += n as u64;
            self.out_bytes -= n;
            self.out_off += n;
            if self.out_off < front.len() {
                break;
            }
            self.out.pop_front();
            self.out_off = 0;
        }
        Ok(())
    }

    /// Bytes the transport must still find room for if one more record of up to `max_record`
    /// bytes is sealed: those waiting, those out for sealing and the new one.
    pub fn queued(&self, max_record: usize) -> usize {
        self.out_bytes + (self.sealing + 1) * max_record
    }

    /// Whether another message may go out for sealing.
    pub fn may_seal(&self) -> bool {
        self.sealing < SEAL_BACKLOG
    }

    /// Nothing of ours is waiting to go out (checked before closing gracefully).
    pub fn drained(&self) -> bool {
        self.sealing == 0 && self.out.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A record whose body is `len` bytes (the splitter checks only the length).
    fn record(len: usize) -> Vec<u8> {
        [(len as u32).to_be_bytes().to_vec(), vec![1; len]].concat()
    }

    #[test]
    fn a_partial_write_resumes_where_it_stopped() {
        let mut q = RecordQueues::default();
        q.sealing();
        q.sealing();
        assert!(!q.drained());
        q.sealed(vec![1; 10]);
        q.sealed(vec![2; 5]);
        assert_eq!(q.queued(100), 15 + 100);
        let mut wire = Vec::new();
        let mut room = 12;
        q.write(|b: &[u8]| {
            let n = b.len().min(room);
            room -= n;
            wire.extend_from_slice(&b[..n]);
            Ok::<_, ()>(n)
        })
        .unwrap();
        assert_eq!(wire.len(), 12);
        assert!(!q.drained());
        q.write(|b: &[u8]| {
            wire.extend_from_slice(b);
            Ok::<_, ()>(b.len())
        })
        .unwrap();
        assert_eq!(wire, [vec![1; 10], vec![2; 5]].concat());
        assert_eq!(q.bytes_sent, 15);
        assert!(q.drained());
    }

    #[test]
    fn reading_stops_while_a_megabyte_waits_to_be_opened() {
        let mut q = RecordQueues::default();
        let one = record(60_000);
        let mut records = 0;
        while let Some(space) = q.read_space() {
            let mut at = 0;
            let mut space = space;
            loop {
                let n = space.len().min(one.len() - at);
                space[..n].copy_from_slice(&one[at..at + n]);
                at += n;
                if q.filled(n).unwrap().is_some() {
                    records += 1;
                    break;
                }
                space = q.read_space().expect("room within a record");
            }
        }
        assert_eq!(records, OPEN_BACKLOG.div_ceil(60_000));
        q.opened();
        assert!(q.read_space().is_some(), "an opened record makes room");
    }

    #[test]
    fn at_most_four_seal_jobs_at_once() {
        let mut q = RecordQueues::default();
        for _ in 0..SEAL_BACKLOG {
            assert!(q.may_seal());
            q.sealing();
        }
        assert!(!q.may_seal());
        q.sealed(Vec::new());
        assert!(q.may_seal());
    }
}

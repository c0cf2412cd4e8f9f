//! Records off a connection's byte stream, the same on both datapaths: a 4-byte length header,
//! then the sealed body it announces, whose length is checked before anything is allocated for
//! it. The driver either hands over bytes it has read already ([`RecordSplitter::feed`]) or
//! reads straight into the space the splitter names ([`RecordSplitter::space`], then
//! [`RecordSplitter::filled`]), which spares a large body a copy. [`ReadAhead`] does both for
//! a driver that reads a stream in chunks.

use bytes::BytesMut;

use crate::crypto::{RecordError, RecordOpener, RECORD_HEADER_LEN};

/// One whole record: its header (the AEAD's associated data) and its sealed body.
#[derive(Debug)]
pub struct Record {
    pub header: [u8; RECORD_HEADER_LEN],
    pub body: BytesMut,
}

/// The record being read: its header so far, then its body so far.
#[derive(Debug, Default)]
pub struct RecordSplitter {
    header: [u8; RECORD_HEADER_LEN],
    header_len: usize,
    /// The body (its whole length, allocated once the header is in) and how much is filled.
    body: Option<(BytesMut, usize)>,
}

impl RecordSplitter {
    /// Where the stream's next bytes go: the rest of the header, or the rest of the body.
    /// Never empty.
    pub fn space(&mut self) -> &mut [u8] {
        match &mut self.body {
            Some((body, filled)) => &mut body[*filled..],
            None => &mut self.header[self.header_len..],
        }
    }

    /// Whether a body is being filled, and how much of it is still to come.
    pub fn body_left(&self) -> Option<usize> {
        self.body.as_ref().map(|(body, filled)| body.len() - filled)
    }

    /// `n` bytes were written at the start of [`RecordSplitter::space`]: the whole record once
    /// its last byte is in. A header announcing an impossible length is an error, and the
    /// connection is beyond repair (the stream has lost its framing).
    #[must_use = "a whole record must be opened"]
    pub fn filled(&mut self, n: usize) -> Result<Option<Record>, RecordError> {
        match &mut self.body {
            Some((body, filled)) => {
                *filled += n;
                debug_assert!(*filled <= body.len(), "more than space() was filled");
                if *filled < body.len() {
                    return Ok(None);
                }
                let (body, _) = self.body.take().expect("matched above");
                self.header_len = 0;
                Ok(Some(Record {
                    header: self.header,
                    body,
                }))
            }
            None => {
                self.header_len += n;
                debug_assert!(self.header_len <= RECORD_HEADER_LEN);
                if self.header_len == RECORD_HEADER_LEN {
                    // At least a tag long: never an empty body.
                    let len = RecordOpener::body_len(self.header)?;
                    self.body = Some((BytesMut::zeroed(len), 0));
                }
                Ok(None)
            }
        }
    }

    /// Takes from `bytes` up to the end of the current record: how many bytes it took, and the
    /// record if it is now whole.
    #[must_use = "a whole record must be opened, and the bytes taken consumed"]
    pub fn feed(&mut self, bytes: &[u8]) -> Result<(usize, Option<Record>), RecordError> {
        let mut used = 0;
        while used < bytes.len() {
            let space = self.space();
            let n = space.len().min(bytes.len() - used);
            space[..n].copy_from_slice(&bytes[used..used + n]);
            used += n;
            if let Some(record) = self.filled(n)? {
                return Ok((used, Some(record)));
            }
        }
        Ok((used, None))
    }
}

/// Read-ahead for record headers and small records.
const READ_AHEAD: usize = 16 * 1024;
/// The rest of a body at least this long is read straight into it.
const READ_DIRECT: usize = 8 * 1024;

/// A splitter with a read-ahead buffer: small records come many per read through the buffer,
/// and the rest of a large body is read straight into its own allocation, so a record held
/// for long pins no memory beyond its size.
#[derive(Debug, Default)]
pub struct ReadAhead {
    splitter: RecordSplitter,
    /// Bytes read past the current record.
    buf: BytesMut,
}

/// What [`ReadAhead::record`] found.
pub enum Next<'a> {
    Record(Record),
    /// Read into the rest of a large body, then call [`ReadAhead::body_filled`].
    ReadBody(&'a mut [u8]),
    /// Read (append) into the read-ahead buffer.
    ReadAhead(&'a mut BytesMut),
}

impl ReadAhead {
    /// The next whole record out of what was read, or where to read next.
    pub fn record(&mut self) -> Result<Next<'_>, RecordError> {
        while !self.buf.is_empty() {
            let (used, record) = self.splitter.feed(&self.buf)?;
            let _ = self.buf.split_to(used);
            if let Some(record) = record {
                return Ok(Next::Record(record));
            }
        }
        if self.splitter.body_left().is_some_and(|n| n >= READ_DIRECT) {
            return Ok(Next::ReadBody(self.splitter.space()));
        }
        self.buf.reserve(READ_AHEAD);
        Ok(Next::ReadAhead(&mut self.buf))
    }

    /// `n` bytes were read into [`Next::ReadBody`]: the record, once whole.
    pub fn body_filled(&mut self, n: usize) -> Result<Option<Record>, RecordError> {
        self.splitter.filled(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crypto::{MAX_RECORD_LEN, TAG_LEN};

    /// A stream of records with bodies of these lengths (body byte i of record r is r + i).
    fn stream(lens: &[usize]) -> Vec<u8> {
        let mut out = Vec::new();
        for (r, &len) in lens.iter().enumerate() {
            out.extend_from_slice(&(len as u32).to_be_bytes());
            out.extend((0..len).map(|i| (r + i) as u8));
        }
        out
    }

    fn check(records: &[Record], lens: &[usize]) {
        assert_eq!(records.len(), lens.len());
        for (r, (rec, &len)) in records.iter().zip(lens).enumerate() {
            assert_eq!(rec.header, (len as u32).to_be_bytes());
            assert!(rec
                .body
                .iter()
                .enumerate()
                .all(|(i, &b)| b == (r + i) as u8));
            assert_eq!(rec.body.len(), len);
        }
    }

    proptest::proptest! {
        /// However the stream is cut (reads of any size, fed or filled in place), the same
        /// records come out whole and in order.
        #[test]
        fn any_cut_of_the_stream_gives_the_same_records(
            lens in proptest::collection::vec(TAG_LEN..3000usize, 1..8),
            cuts in proptest::collection::vec(1usize..5000, 1..64),
            in_place in proptest::prelude::any::<bool>(),
        ) {
            let bytes = stream(&lens);
            let mut s = RecordSplitter::default();
            let (mut at, mut records, mut cut) = (0, Vec::new(), 0);
            while at < bytes.len() {
                let want = cuts[cut % cuts.len()].min(bytes.len() - at);
                cut += 1;
                if in_place {
                    // As a socket read would: at most what the space holds.
                    let space = s.space();
                    let n = want.min(space.len());
                    space[..n].copy_from_slice(&bytes[at..at + n]);
                    at += n;
                    records.extend(s.filled(n).unwrap());
                } else {
                    let mut chunk = &bytes[at..at + want];
                    at += want;
                    while !chunk.is_empty() {
                        let (used, rec) = s.feed(chunk).unwrap();
                        chunk = &chunk[used..];
                        records.extend(rec);
                    }
                }
            }
            check(&records, &lens);
            proptest::prop_assert_eq!(s.body_left(), None);
        }
    }

    #[test]
    fn an_impossible_length_is_refused_before_any_allocation() {
        let mut s = RecordSplitter::default();
        let too_long = ((MAX_RECORD_LEN + 1) as u32).to_be_bytes();
        assert!(matches!(s.feed(&too_long), Err(RecordError::BadLength(_))));
        let mut s = RecordSplitter::default();
        let too_short = ((TAG_LEN - 1) as u32).to_be_bytes();
        assert!(matches!(s.feed(&too_short), Err(RecordError::BadLength(_))));
    }

    #[test]
    fn feed_stops_at_the_end_of_a_record() {
        let bytes = stream(&[20, 30]);
        let mut s = RecordSplitter::default();
        let (used, rec) = s.feed(&bytes).unwrap();
        assert_eq!(used, 24);
        check(&[rec.unwrap()], &[20]);
        assert_eq!(s.body_left(), None);
    }

    /// Reads of every size give the same records.
    #[test]
    fn read_ahead_splits_a_stream_read_in_any_chunks() {
        let lens = [16, 100, 20_000, 40, 9_000, 16];
        let wire = stream(&lens);
        for chunk in [1, 7, 4096, 70_000] {
            let (mut r, mut at, mut records, mut direct) = (ReadAhead::default(), 0, vec![], 0);
            while records.len() < lens.len() {
                let n = |space: usize| space.min(chunk).min(wire.len() - at);
                match r.record().unwrap() {
                    Next::Record(record) => records.push(record),
                    Next::ReadBody(space) => {
                        let n = n(space.len());
                        space[..n].copy_from_slice(&wire[at..at + n]);
                        at += n;
                        direct += 1;
                        records.extend(r.body_filled(n).unwrap());
                    }
                    Next::ReadAhead(buf) => {
                        // As a read into a buffer does: at most its spare room.
                        let n = n(buf.capacity() - buf.len());
                        buf.extend_from_slice(&wire[at..at + n]);
                        at += n;
                    }
                }
            }
            check(&records, &lens);
            // Small reads leave most of a large body to come: it is read straight in.
            assert!(
                chunk > 4096 || direct > 0,
                "chunks of {chunk}: no direct read"
            );
        }
    }
}

//! Content-defined chunk boundaries in one session's byte stream (FastCDC v2020).
//!
//! The boundaries are a property of the stream, not of how the endpoint's writes or the
//! frames cut it: the same stream fed in any split gives the same boundaries (the property
//! test below checks it against `fastcdc::v2020::FastCDC` over the whole stream at once).
//!
//! A boundary is *confirmed* once no later byte can move it: FastCDC found it with at least
//! one more byte after it (its gear hash at a cut reads the byte at the cut), or the chunk
//! reached `max`. Only confirmed boundaries are reported, each as soon as the byte that
//! confirms it is fed, so which are reported depends only on how far the stream was fed;
//! [`Chunker::finish`] confirms the tail at the end of the stream.
//!
//! Cost: FastCDC's scan, about 0.4 ns per byte, in place; only a chunk that spans writes is
//! copied, and scanned again from its start at each write that extends it (at most `max`
//! bytes each time), so feed what was read in one go rather than in pieces of a few bytes.
//!
//! Memory: the bytes since the last confirmed boundary (fewer than `max`), and the confirmed
//! boundaries the caller has not forgotten yet: call [`Chunker::forget_up_to`] once frames
//! are cut, or the list grows with the stream (8 bytes per chunk).

use std::collections::VecDeque;

use fastcdc::v2020;

use super::ChunkSizes;

/// Finds confirmed chunk boundaries in one stream fed write by write.
#[derive(Debug, Clone)]
pub struct Chunker {
    min: usize,
    avg: usize,
    max: usize,
    /// FastCDC's normalization masks (level 1, as `FastCDC::new` uses).
    masks: [u64; 4],
    /// The bytes since the last confirmed boundary (fewer than `max` between calls).
    pending: Vec<u8>,
    /// Stream offset fed so far.
    fed: u64,
    /// Confirmed boundaries not forgotten yet, ascending.
    boundaries: VecDeque<u64>,
    finished: bool,
}

impl Chunker {
    /// A chunker for a stream starting at offset 0.
    ///
    /// # Panics
    /// If `sizes` is outside what FastCDC v2020 accepts (min 64 B..1 MiB, avg 256 B..4 MiB,
    /// max 1 KiB..16 MiB) or not `min <= avg <= max`: a caller bug.
    pub fn new(sizes: ChunkSizes) -> Self {
        let ChunkSizes { min, avg, max } = sizes;
        assert!(
            (v2020::MINIMUM_MIN..=v2020::MINIMUM_MAX).contains(&min)
                && (v2020::AVERAGE_MIN..=v2020::AVERAGE_MAX).contains(&avg)
                && (v2020::MAXIMUM_MIN..=v2020::MAXIMUM_MAX).contains(&max)
                && min <= avg
                && avg <= max,
            "chunk sizes out of FastCDC's range: {sizes:?}"
        );
        // As `FastCDC::with_level(.., Normalization::Level1)` derives them (a test compares).
        let bits = v2020::logarithm2(avg) as usize;
        let (mask_s, mask_l) = (v2020::MASKS[bits + 1], v2020::MASKS[bits - 1]);
        Chunker {
            min: min as usize,
            avg: avg as usize,
            max: max as usize,
            masks: [mask_s, mask_l, mask_s << 1, mask_l << 1],
            pending: Vec::new(),
            fed: 0,
            boundaries: VecDeque::new(),
            finished: false,
        }
    }

    /// Appends the next bytes of the stream. Chunks that start in `data` are scanned in
    /// place; only the open chunk at its end is copied (fewer than `max` bytes), and scanned
    /// again from its start with the next write: a cut is confirmed once FastCDC finds it
    /// before the end of what was fed (its decision depends only on the bytes up to the pair
    /// it reads), or the chunk reached `max`. So the boundaries do not depend on how the
    /// writes cut the stream; tiny writes cost a rescan of the open chunk each.
    ///
    /// # Panics
    /// After [`Chunker::finish`]: a caller bug.
    pub fn feed(&mut self, data: &[u8]) {
        assert!(!self.finished, "Chunker::feed after finish");
        // The stream offset of `data[0]`.
        let data_at = self.fed;
        self.fed += data.len() as u64;
        // `data[pos..]` is neither in a confirmed chunk nor in `pending` yet.
        let mut pos = 0;
        // A chunk begun by earlier writes: extend it (to at most `max`) and look for its end.
        while !self.pending.is_empty() {
            let old = self.pending.len();
            let take = (data.len() - pos).min(self.max - old);
            self.pending.extend_from_slice(&data[pos..pos + take]);
            let Some(c) = self.cut(&self.pending, false) else {
                // No end yet, and all of `data` is in `pending` (else it would hold `max`).
                return;
            };
            let pending_at = data_at + pos as u64 - old as u64;
            self.boundaries.push_back(pending_at + c as u64);
            if c >= old {
                // The next chunk starts in `data`: scan it there, in place.
                pos += c - old;
                self.pending.clear();
            } else {
                // It starts in what earlier writes left: keep that, give back what was taken.
                self.pending.truncate(old);
                self.pending.drain(..c);
            }
        }
        while let Some(c) = self.cut(&data[pos..], false) {
            pos += c;
            self.boundaries.push_back(data_at + pos as u64);
        }
        self.pending.extend_from_slice(&data[pos..]);
    }

    /// End of the stream: the rest is cut as FastCDC cuts it, and its tail becomes the last
    /// boundary (at [`Chunker::fed`]). Idempotent.
    pub fn finish(&mut self) {
        if self.finished {
            return;
        }
        self.finished = true;
        let mut start = 0;
        while start < self.pending.len() {
            let c = self
                .cut(&self.pending[start..], true)
                .expect("a final cut is never empty");
            start += c;
            self.boundaries
                .push_back(self.fed - (self.pending.len() - start) as u64);
        }
        self.pending = Vec::new();
    }

    /// The stream offset fed so far.
    pub fn fed(&self) -> u64 {
        self.fed
    }

    /// Whether [`Chunker::finish`] was called.
    pub fn finished(&self) -> bool {
        self.finished
    }

    /// The largest confirmed boundary `b` with `start < b <= end`, if not forgotten.
    pub fn last_boundary_in(&self, start: u64, end: u64) -> Option<u64> {
        let upto = self.boundaries.partition_point(|&b| b <= end);
        let b = *self.boundaries.get(upto.checked_sub(1)?)?;
        (b > start).then_some(b)
    }

    /// The confirmed boundaries in `(start, end]`, ascending (those not forgotten).
    pub fn boundaries(&self, start: u64, end: u64) -> impl Iterator<Item = u64> + '_ {
        let from = self.boundaries.partition_point(|&b| b <= start);
        self.boundaries
            .range(from..)
            .copied()
            .take_while(move |&b| b <= end)
    }

    /// Drops the confirmed boundaries `<= offset`.
    pub fn forget_up_to(&mut self, offset: u64) {
        while self.boundaries.front().is_some_and(|&b| b <= offset) {
            self.boundaries.pop_front();
        }
    }

    /// The first cut in `src` (a chunk starting at `src[0]`), if confirmed: FastCDC found it
    /// before the end of `src`, or the chunk reached `max`. At the end of the stream
    /// (`last`) every cut counts. `None` for an empty `src`.
    fn cut(&self, src: &[u8], last: bool) -> Option<usize> {
        if src.is_empty() {
            return None;
        }
        let [mask_s, mask_l, mask_s_ls, mask_l_ls] = self.masks;
        let (_, c) = v2020::cut(
            src, self.min, self.avg, self.max, mask_s, mask_l, mask_s_ls, mask_l_ls,
        );
        (c > 0 && (last || c < src.len() || c >= self.max)).then_some(c)
    }
}

#[cfg(test)]
mod tests {
    use super::super::test_data::{xorshift, SMALL};
    use super::*;
    use proptest::prelude::*;

    /// Random bytes with zero runs (which only `max` cuts).
    fn data(seed: u64, len: usize) -> Vec<u8> {
        let mut next = xorshift(seed);
        let mut out = Vec::with_capacity(len);
        while out.len() < len {
            let x = next();
            if x.is_multiple_of(16) {
                out.extend(std::iter::repeat_n(0, (x >> 8) as usize % 5000));
            } else {
                out.extend_from_slice(&x.to_le_bytes());
            }
        }
        out.truncate(len);
        out
    }

    /// FastCDC's own chunk ends over the whole stream at once.
    fn whole(data: &[u8], s: ChunkSizes) -> Vec<u64> {
        v2020::FastCDC::new(data, s.min, s.avg, s.max)
            .map(|c| (c.offset + c.length) as u64)
            .collect()
    }

    fn all(c: &Chunker) -> Vec<u64> {
        c.boundaries(0, u64::MAX).collect()
    }

    #[test]
    fn one_write_then_finish_is_fastcdc() {
        for sizes in [SMALL, super::super::CHUNK_SIZES] {
            let d = data(7, 300_000);
            let mut c = Chunker::new(sizes);
            c.feed(&d);
            c.finish();
            let want = whole(&d, sizes);
            assert!(want.len() > 20);
            assert_eq!(all(&c), want);
            assert_eq!(c.fed(), d.len() as u64);
        }
    }

    #[test]
    fn queries_and_forgetting() {
        let d = data(1, 20_000);
        let mut c = Chunker::new(SMALL);
        c.feed(&d);
        c.finish();
        let b = whole(&d, SMALL);
        assert_eq!(c.last_boundary_in(0, b[0] - 1), None);
        assert_eq!(c.last_boundary_in(0, b[0]), Some(b[0]));
        assert_eq!(c.last_boundary_in(b[0], b[2] - 1), Some(b[1]));
        assert_eq!(c.last_boundary_in(b[1], b[1]), None);
        assert_eq!(c.last_boundary_in(b[1] - 1, b[1]), Some(b[1]));
        assert_eq!(c.boundaries(b[0], b[3]).collect::<Vec<_>>(), b[1..4]);
        assert_eq!(
            c.boundaries(b[0] + 1, b[3] - 1).collect::<Vec<_>>(),
            b[1..3]
        );
        c.forget_up_to(b[1]);
        assert_eq!(c.last_boundary_in(0, b[1]), None);
        assert_eq!(all(&c), b[2..]);
        assert_eq!(c.last_boundary_in(0, u64::MAX), Some(d.len() as u64));
        // Finish is idempotent; an empty stream has no boundary.
        c.finish();
        assert_eq!(all(&c), b[2..]);
        let mut e = Chunker::new(SMALL);
        e.feed(&[]);
        e.finish();
        assert_eq!(all(&e), Vec::<u64>::new());
    }

    #[test]
    fn a_zero_run_is_cut_at_max_once_max_bytes_are_there() {
        let mut c = Chunker::new(SMALL);
        c.feed(&[0; 1023]);
        assert_eq!(all(&c), Vec::<u64>::new());
        c.feed(&[0]);
        assert_eq!(all(&c), [1024]);
        assert!(c.pending.is_empty());
    }

    proptest! {
        /// Fed in any split, the chunker confirms exactly the FastCDC boundaries (over the
        /// whole stream) that the bytes fed so far confirm, keeps fewer than `max` bytes,
        /// and after `finish` reports exactly FastCDC's.
        #[test]
        fn boundaries_do_not_depend_on_how_writes_cut_the_stream(
            seed in any::<u64>(),
            len in 0usize..40_000,
            writes in proptest::collection::vec(0usize..3000, 1..8)
                .prop_filter("some write carries bytes", |w| w.iter().any(|&n| n > 0)),
        ) {
            let d = data(seed, len);
            let want = whole(&d, SMALL);
            let mut c = Chunker::new(SMALL);
            let (mut at, mut w) = (0, 0);
            while at < d.len() {
                let n = writes[w % writes.len()].min(d.len() - at);
                w += 1;
                c.feed(&d[at..at + n]);
                at += n;
                // Exactly FastCDC's boundaries that the bytes fed so far confirm: a chunk of
                // `max` bytes, or a cut whose deciding byte (the first byte after it) was
                // fed. FastCDC reads bytes in pairs from the chunk's start, so that byte
                // counts only once its pair is complete.
                let at = at as u64;
                let due: Vec<u64> = want
                    .iter()
                    .enumerate()
                    .filter(|&(i, &b)| {
                        let prev = if i == 0 { 0 } else { want[i - 1] };
                        let pair_end = prev + (b - prev) / 2 * 2 + 2;
                        pair_end <= at || (b <= at && b - prev == u64::from(SMALL.max))
                    })
                    .map(|(_, &b)| b)
                    .collect();
                prop_assert_eq!(all(&c), due);
                prop_assert!(c.pending.len() < SMALL.max as usize);
            }
            c.finish();
            prop_assert_eq!(all(&c), want);
        }
    }
}

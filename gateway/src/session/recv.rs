//! The receiving half of one session: the reassembler.
//!
//! Frames of one stream arrive on any flow, in any order, possibly more than
//! once (a resend after a flow died may overlap what already arrived). The
//! reassembler keeps only bytes not yet seen, hands them out strictly in
//! order, and refuses anything outside the window it advertised, which bounds
//! its memory.

use std::collections::BTreeMap;

use bytes::Bytes;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ReassemblyError {
    #[error("data at {start}..{end} is beyond the advertised window (delivered {delivered}, window {window})")]
    BeyondWindow {
        start: u64,
        end: u64,
        delivered: u64,
        window: u64,
    },
    #[error("data at {start}..{end} is past the end of stream {fin}")]
    PastFin { start: u64, end: u64, fin: u64 },
    #[error("end of stream {new} contradicts earlier end {old} or data received up to {received}")]
    FinMismatch { new: u64, old: u64, received: u64 },
}

/// What [`Reassembler::read`] found.
#[derive(Debug, PartialEq, Eq)]
pub enum ReadOutcome {
    Data(Bytes),
    /// Everything up to the final offset was read.
    Finished,
    /// Nothing in order yet.
    Blocked,
}

#[derive(Debug)]
pub struct Reassembler {
    /// Bytes handed to the endpoint so far.
    delivered: u64,
    /// Non-overlapping segments at offsets >= `delivered`.
    segments: BTreeMap<u64, Bytes>,
    buffered: u64,
    /// End of the in-order run starting at `delivered`: bytes below it wait
    /// only for the endpoint to read them. (`>= delivered`.)
    in_order: u64,
    /// Segments in that run.
    in_order_segments: usize,
    /// Highest offset seen (end of the furthest segment).
    highest: u64,
    window: u64,
    fin: Option<u64>,
}

impl Reassembler {
    pub fn new(window: u64) -> Self {
        Reassembler {
            delivered: 0,
            segments: BTreeMap::new(),
            buffered: 0,
            in_order: 0,
            in_order_segments: 0,
            highest: 0,
            window,
            fin: None,
        }
    }

    pub fn delivered(&self) -> u64 {
        self.delivered
    }

    pub fn buffered(&self) -> u64 {
        self.buffered
    }

    /// Bytes ready for the endpoint (in order), and how many segments hold
    /// them. Out-of-order bytes wait for the data flows instead.
    pub fn ready(&self) -> (u64, usize) {
        (self.in_order - self.delivered, self.in_order_segments)
    }

    /// The end of the in-order run: every byte below it arrived.
    pub fn in_order_end(&self) -> u64 {
        self.in_order
    }

    pub fn is_finished(&self) -> bool {
        self.fin == Some(self.delivered)
    }

    /// Adds a segment; returns how many new bytes it contributed (0 for a
    /// pure duplicate).
    pub fn insert(&mut self, offset: u64, data: Bytes) -> Result<u64, ReassemblyError> {
        // The offset is the peer's: near the top of the offset space the sum must not wrap.
        let end = offset.saturating_add(data.len() as u64);
        if end > self.delivered.saturating_add(self.window) {
            return Err(ReassemblyError::BeyondWindow {
                start: offset,
                end,
                delivered: self.delivered,
                window: self.window,
            });
        }
        if let Some(fin) = self.fin {
            if end > fin {
                return Err(ReassemblyError::PastFin {
                    start: offset,
                    end,
                    fin,
                });
            }
        }
        self.highest = self.highest.max(end);
        // Fill only the gaps between existing segments inside [start, end).
        let mut cursor = offset.max(self.delivered);
        let mut added = 0;
        while cursor < end {
            // The segment covering or following `cursor`.
            let covering = self
                .segments
                .range(..=cursor)
                .next_back()
                .filter(|(s, d)| *s + d.len() as u64 > cursor)
                .map(|(s, d)| *s + d.len() as u64);
            if let Some(seg_end) = covering {
                cursor = seg_end;
                continue;
            }
            let gap_end = self
                .segments
                .range(cursor..)
                .next()
                .map(|(s, _)| (*s).min(end))
                .unwrap_or(end);
            let piece = data.slice((cursor - offset) as usize..(gap_end - offset) as usize);
            added += piece.len() as u64;
            self.segments.insert(cursor, piece);
            cursor = gap_end;
        }
        self.buffered += added;
        // Segments are keyed by start and do not overlap, so the run grows
        // only by a segment that starts exactly at its end.
        while let Some(d) = self.segments.get(&self.in_order) {
            self.in_order += d.len() as u64;
            self.in_order_segments += 1;
        }
        Ok(added)
    }

    /// Records the final length of the stream.
    pub fn set_fin(&mut self, fin: u64) -> Result<(), ReassemblyError> {
        let conflict = match self.fin {
            Some(old) => old != fin,
            None => fin < self.highest,
        };
        if conflict {
            return Err(ReassemblyError::FinMismatch {
                new: fin,
                old: self.fin.unwrap_or(fin),
                received: self.highest,
            });
        }
        self.fin = Some(fin);
        Ok(())
    }

    /// Takes the next in-order bytes, if any.
    pub fn read(&mut self) -> ReadOutcome {
        if self.is_finished() {
            return ReadOutcome::Finished;
        }
        match self.segments.first_key_value() {
            Some((&start, _)) if start == self.delivered => {
                let (_, data) = self.segments.pop_first().expect("first exists");
                self.delivered += data.len() as u64;
                self.buffered -= data.len() as u64;
                self.in_order_segments -= 1;
                ReadOutcome::Data(data)
            }
            _ => ReadOutcome::Blocked,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn drain(r: &mut Reassembler) -> Vec<u8> {
        let mut out = Vec::new();
        while let ReadOutcome::Data(d) = r.read() {
            out.extend_from_slice(&d);
        }
        out
    }

    #[test]
    fn out_of_order_and_overlaps() {
        let mut r = Reassembler::new(100);
        assert_eq!(r.insert(4, Bytes::from_static(b"efgh")).unwrap(), 4);
        assert_eq!(r.read(), ReadOutcome::Blocked);
        assert_eq!(r.insert(2, Bytes::from_static(b"cdefghij")).unwrap(), 4);
        assert_eq!(r.insert(0, Bytes::from_static(b"ab")).unwrap(), 2);
        assert_eq!(drain(&mut r), b"abcdefghij");
        assert_eq!(
            r.insert(3, Bytes::from_static(b"de")).unwrap(),
            0,
            "old duplicate"
        );
        r.set_fin(10).unwrap();
        assert_eq!(r.read(), ReadOutcome::Finished);
    }

    #[test]
    fn window_and_fin_are_enforced() {
        let mut r = Reassembler::new(8);
        assert!(matches!(
            r.insert(4, Bytes::from_static(b"12345")),
            Err(ReassemblyError::BeyondWindow { .. })
        ));
        r.insert(0, Bytes::from_static(b"123")).unwrap();
        assert!(r.set_fin(2).is_err(), "fin below received data");
        r.set_fin(5).unwrap();
        assert!(r.set_fin(6).is_err(), "fin changed");
        assert!(matches!(
            r.insert(3, Bytes::from_static(b"456")),
            Err(ReassemblyError::PastFin { .. })
        ));
    }

    #[test]
    fn a_frame_at_the_end_of_the_offset_space_is_beyond_the_window() {
        // The offset is the peer's: offset + length must not wrap around to a small end
        // that passes the window check (or panic, with overflow checks on).
        let mut r = Reassembler::new(100);
        assert!(matches!(
            r.insert(u64::MAX - 2, Bytes::from_static(b"12345")),
            Err(ReassemblyError::BeyondWindow { end: u64::MAX, .. })
        ));
        assert_eq!(r.insert(0, Bytes::from_static(b"ab")).unwrap(), 2);
        assert_eq!(drain(&mut r), b"ab");
    }

    /// A stream cut into frames; each frame may be delivered several times
    /// (resends), possibly re-cut at a later start (after a partial ack).
    fn frames_and_order() -> impl Strategy<Value = (Vec<u8>, Vec<(usize, usize)>)> {
        proptest::collection::vec(any::<u8>(), 1..2000).prop_flat_map(|data| {
            let len = data.len();
            let cuts = proptest::collection::vec(1usize..len.max(2), 0..20);
            (Just(data), cuts).prop_flat_map(move |(data, mut cuts)| {
                cuts.push(0);
                cuts.push(len);
                cuts.sort();
                cuts.dedup();
                let frames: Vec<(usize, usize)> = cuts.windows(2).map(|w| (w[0], w[1])).collect();
                let n = frames.len();
                let extra = proptest::collection::vec((0..n, 0usize..50), 0..10);
                (Just(data), Just(frames), extra).prop_flat_map(|(data, frames, extra)| {
                    let mut all = frames.clone();
                    for (i, skip) in extra {
                        let (s, e) = frames[i];
                        all.push(((s + skip).min(e), e));
                    }
                    (Just(data), Just(all).prop_shuffle())
                })
            })
        })
    }

    proptest! {
        #[test]
        fn any_interleaving_yields_the_stream((data, order) in frames_and_order(), read_every in 1usize..5) {
            let mut r = Reassembler::new(data.len() as u64);
            let bytes = Bytes::from(data.clone());
            let mut out = Vec::new();
            for (i, (s, e)) in order.iter().enumerate() {
                r.insert(*s as u64, bytes.slice(*s..*e)).unwrap();
                if i % read_every == 0 {
                    out.extend(drain(&mut r));
                }
                prop_assert!(r.buffered() <= data.len() as u64);
                // The in-order run, counted the slow way.
                let mut end = r.delivered();
                let mut pieces = 0;
                while let Some(d) = r.segments.get(&end) {
                    end += d.len() as u64;
                    pieces += 1;
                }
                prop_assert_eq!(r.ready(), (end - r.delivered(), pieces));
            }
            out.extend(drain(&mut r));
            prop_assert_eq!(r.ready(), (0, 0), "drained");
            r.set_fin(data.len() as u64).unwrap();
            prop_assert_eq!(r.read(), ReadOutcome::Finished);
            prop_assert_eq!(out, data);
        }
    }
}

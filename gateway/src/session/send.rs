//! The sending half of one session: buffers bytes until the peer has
//! delivered them, cuts frames, and serves resends.

use std::collections::VecDeque;

use bytes::{Buf, Bytes};

/// Memory one held piece of a stream costs beyond its payload: its queue
/// entry, the reference-counted buffer header, the allocator's own header.
pub const ENTRY_OVERHEAD: u64 = 128;

/// One direction's send buffer. Offsets are positions in the byte stream.
///
/// ```text
///   acked          next_new                  written
///     |  in flight    |   unsent (queued)       |
/// ```
/// Everything from `acked` to `written` is held here; nothing is dropped
/// until the peer's cumulative ack covers it (invariant 1).
#[derive(Debug, Default)]
pub struct SendStream {
    /// Frames sent at least once and not yet fully acked, in offset order.
    in_flight: VecDeque<(u64, Bytes)>,
    /// Bytes written by the endpoint and not yet framed.
    unsent: VecDeque<Bytes>,
    acked: u64,
    next_new: u64,
    written: u64,
    /// The peer's receive window: we never send past `acked + peer_window`.
    peer_window: u64,
    finished: bool,
}

impl SendStream {
    pub fn new(peer_window: u64) -> Self {
        SendStream {
            peer_window,
            ..Default::default()
        }
    }

    pub fn set_peer_window(&mut self, window: u64) {
        self.peer_window = window;
    }

    /// Bytes held (sent-unacked plus unsent).
    pub fn buffered(&self) -> u64 {
        self.written - self.acked
    }

    /// What the held bytes cost in memory: the payload, plus
    /// [`ENTRY_OVERHEAD`] for each piece it is held in, so a sender of tiny
    /// writes meets the buffer limits as soon as its bookkeeping would.
    pub fn charged(&self) -> u64 {
        self.buffered() + (self.in_flight.len() + self.unsent.len()) as u64 * ENTRY_OVERHEAD
    }

    /// Bytes written and not yet cut into a frame.
    pub fn unsent(&self) -> u64 {
        self.written - self.next_new
    }

    pub fn written(&self) -> u64 {
        self.written
    }

    pub fn acked(&self) -> u64 {
        self.acked
    }

    pub fn is_finished(&self) -> bool {
        self.finished
    }

    /// True once the stream is finished and the peer has every byte.
    pub fn is_complete(&self) -> bool {
        self.finished && self.acked == self.written
    }

    /// Appends endpoint bytes.
    ///
    /// # Panics
    /// After [`SendStream::finish`] (a caller bug).
    pub fn push(&mut self, data: Bytes) {
        assert!(!self.finished, "push after finish");
        if data.is_empty() {
            return;
        }
        self.written += data.len() as u64;
        self.unsent.push_back(data);
    }

    /// Marks the end of the stream; returns the final length.
    pub fn finish(&mut self) -> u64 {
        self.finished = true;
        self.written
    }

    /// True if a new frame could be cut now.
    pub fn has_sendable(&self) -> bool {
        !self.unsent.is_empty() && self.next_new < self.acked + self.peer_window
    }

    /// Cuts the next new frame of at most `max_len` bytes, within the peer's
    /// window, and remembers it as in flight.
    pub fn next_frame(&mut self, max_len: usize) -> Option<(u64, Bytes)> {
        let window_left = (self.acked + self.peer_window).saturating_sub(self.next_new);
        let limit = (max_len as u64).min(window_left) as usize;
        if limit == 0 {
            return None;
        }
        let front = self.unsent.front_mut()?;
        let chunk = if front.len() <= limit {
            self.unsent.pop_front().expect("front exists")
        } else {
            front.split_to(limit)
        };
        let offset = self.next_new;
        self.next_new += chunk.len() as u64;
        self.in_flight.push_back((offset, chunk.clone()));
        Some((offset, chunk))
    }

    /// Where the next new frame of at most `max_len` bytes would start and end, within the
    /// peer's window and what was written.
    pub fn next_span(&self, max_len: usize) -> (u64, u64) {
        let window_left = (self.acked + self.peer_window).saturating_sub(self.next_new);
        let limit = (max_len as u64).min(window_left).min(self.unsent());
        (self.next_new, self.next_new + limit)
    }

    /// [`SendStream::next_frame`], ending where `cut(start, end)` says (at most `end`, more
    /// than `start`) and gathered across the endpoint's writes into one piece: the frame
    /// boundaries of a deduplicated stream follow its content, not its writes.
    pub fn next_frame_cut(
        &mut self,
        max_len: usize,
        cut: impl FnOnce(u64, u64) -> u64,
    ) -> Option<(u64, Bytes)> {
        let (start, limit_end) = self.next_span(max_len);
        if limit_end == start {
            return None;
        }
        let end = cut(start, limit_end).clamp(start + 1, limit_end);
        let len = (end - start) as usize;
        let front = self.unsent.front_mut()?;
        let frame = if front.len() >= len {
            let piece = front.split_to(len);
            if front.is_empty() {
                self.unsent.pop_front();
            }
            piece
        } else {
            let mut gathered = bytes::BytesMut::with_capacity(len);
            while gathered.len() < len {
                let front = self.unsent.front_mut().expect("unsent holds `limit` bytes");
                let take = front.len().min(len - gathered.len());
                gathered.extend_from_slice(&front.split_to(take));
                if front.is_empty() {
                    self.unsent.pop_front();
                }
            }
            gathered.freeze()
        };
        self.next_new = end;
        self.in_flight.push_back((start, frame.clone()));
        Some((start, frame))
    }

    /// Applies a cumulative ack; returns how many bytes were released.
    /// Acks beyond what was sent are ignored (the caller counts them as a
    /// protocol violation via the return of `ack_is_valid`).
    pub fn on_ack(&mut self, offset: u64) -> u64 {
        if offset <= self.acked || offset > self.next_new {
            return 0;
        }
        let released = offset - self.acked;
        self.acked = offset;
        while let Some((start, data)) = self.in_flight.front_mut() {
            let end = *start + data.len() as u64;
            if end <= offset {
                self.in_flight.pop_front();
            } else {
                if *start < offset {
                    let cut = (offset - *start) as usize;
                    data.advance(cut);
                    *start = offset;
                }
                break;
            }
        }
        released
    }

    /// Whether `offset` is a sane cumulative ack (not past what was sent).
    pub fn ack_is_valid(&self, offset: u64) -> bool {
        offset <= self.next_new
    }

    /// The end of what was handed out in frames so far.
    pub fn sent(&self) -> u64 {
        self.next_new
    }

    /// The still-unacked bytes of a frame previously sent at `[start, end)`,
    /// for resending on another flow; `None` if all of it is acked.
    pub fn resend(&self, start: u64, end: u64) -> Option<(u64, Bytes)> {
        let start = start.max(self.acked);
        if start >= end {
            return None;
        }
        // in_flight is sorted by offset and contiguous from `acked`.
        let idx = match self.in_flight.binary_search_by(|(s, _)| s.cmp(&start)) {
            Ok(i) => i,
            Err(0) => return None,
            Err(i) => i - 1,
        };
        let (s, data) = &self.in_flight[idx];
        let from = (start - s) as usize;
        let to = ((end - s) as usize).min(data.len());
        (from < to).then(|| (start, data.slice(from..to)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_respect_window_and_acks_release() {
        let mut s = SendStream::new(10);
        s.push(Bytes::from_static(b"0123456789abcdef"));
        assert_eq!(s.next_frame(4), Some((0, Bytes::from_static(b"0123"))));
        assert_eq!(s.next_frame(100), Some((4, Bytes::from_static(b"456789"))));
        assert_eq!(s.next_frame(100), None, "window full");
        assert_eq!(s.on_ack(6), 6);
        assert_eq!(s.buffered(), 10);
        assert_eq!(s.next_frame(100), Some((10, Bytes::from_static(b"abcdef"))));
        assert_eq!(s.resend(4, 10), Some((6, Bytes::from_static(b"6789"))));
        assert_eq!(s.resend(0, 4), None, "fully acked");
        s.finish();
        assert!(!s.is_complete());
        s.on_ack(16);
        assert!(s.is_complete());
    }

    #[test]
    fn cut_frames_gather_writes_and_end_where_told() {
        let mut s = SendStream::new(100);
        for w in [&b"abc"[..], b"defg", b"h", b"ijklmnop"] {
            s.push(Bytes::copy_from_slice(w));
        }
        assert_eq!(
            s.next_frame_cut(10, |start, end| {
                assert_eq!((start, end), (0, 10));
                6
            }),
            Some((0, Bytes::from_static(b"abcdef")))
        );
        assert_eq!(
            s.next_frame_cut(100, |_, end| end),
            Some((6, Bytes::from_static(b"ghijklmnop"))),
            "the rest, gathered; the cut may not pass what was written"
        );
        assert_eq!(s.next_frame_cut(100, |_, end| end), None);
        assert_eq!(s.resend(0, 6), Some((0, Bytes::from_static(b"abcdef"))));
        s.on_ack(8);
        assert_eq!(s.resend(6, 16), Some((8, Bytes::from_static(b"ijklmnop"))));
        let before = s.charged();
        s.push(Bytes::from_static(b"xyz"));
        assert_eq!(
            s.next_frame_cut(100, |start, _| start),
            Some((16, Bytes::from_static(b"x"))),
            "a cut at the start still sends a byte"
        );
        assert!(s.charged() > before);
    }

    #[test]
    fn bogus_acks_are_ignored() {
        let mut s = SendStream::new(100);
        s.push(Bytes::from_static(b"abc"));
        s.next_frame(2);
        assert!(!s.ack_is_valid(3));
        assert_eq!(s.on_ack(3), 0);
        assert_eq!(s.on_ack(2), 2);
        assert_eq!(s.on_ack(1), 0, "stale ack");
    }
}

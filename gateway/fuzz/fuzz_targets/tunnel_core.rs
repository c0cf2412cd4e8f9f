//! The session core driven by a hostile (authenticated) peer: any sequence
//! of decodable messages and flow events never panics, and the core never
//! buffers beyond its limits.
#![no_main]
use libfuzzer_sys::fuzz_target;
use lmas::protocol::Message;
use lmas::session::{Limits, Side, TunnelCore};

fuzz_target!(|data: &[u8]| {
    let limits = Limits {
        session_window: 1 << 16,
        global_buffer: 1 << 18,
        unsent_buffer: 1 << 14,
        unsent_time_us: lmas::session::unsent::UNSENT_TIME_US,
        receive_budget: 1 << 15,
        frame_len: 1024,
        max_sessions: 8,
        ack_every: 1 << 12,
        ack_delay_us: 10,
    };
    let mut core = TunnelCore::new(Side::Dialer, limits.clone(), 2);
    let target = "192.0.2.1:80".parse().unwrap();
    let mut now = 0u64;
    // Records are length-prefixed (u16) in the fuzz input; a zero-length one
    // is a local action instead.
    let mut rest = data;
    while rest.len() >= 2 {
        let len = u16::from_be_bytes([rest[0], rest[1]]) as usize % 512;
        rest = &rest[2..];
        let take = len.min(rest.len());
        let (rec, tail) = rest.split_at(take);
        rest = tail;
        match rec.first() {
            None => {
                if let Ok(id) = core.open(target, lmas::session::Origin::default()) {
                    let _ = core.write(id, bytes::Bytes::from_static(&[1u8; 3000]));
                }
            }
            Some(0xFE) => core.flow_lost(rec.len() % 2),
            Some(0xFD) => core.resync(),
            _ => {
                if let Ok(msg) = Message::decode(bytes::Bytes::copy_from_slice(rec)) {
                    let _ = core.handle_message(msg);
                }
            }
        }
        now += 500;
        core.handle_timeout(now);
        for flow in 0..2 {
            while core.poll_frame(now, flow).is_some() {}
        }
        while core.poll_control().is_some() {}
        let ids: Vec<_> = core.snapshot().into_iter().map(|s| s.id).collect();
        for id in ids {
            while let Ok(lmas::session::ReadOutcome::Data(_)) = core.read(now, id) {}
        }
        while core.poll_event().is_some() {}
        assert!(core.buffered() <= limits.global_buffer + 3000);
    }
});

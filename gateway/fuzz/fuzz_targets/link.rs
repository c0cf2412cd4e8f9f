//! The link layer's state machines fed an arbitrary event stream: the connection table (attaches,
//! deaths of live and long-replaced connections, time) keeps at most one live connection per
//! role and gives a tunnel up only after a grace period without a control connection; the
//! record splitter, fed the same bytes as a stream, never panics and never hands out a record
//! longer than the header announced.
#![no_main]
use std::time::Duration;

use libfuzzer_sys::fuzz_target;
use lmas::link::{ConnTable, Lost, RecordSplitter, Role};

const GRACE_US: u64 = 4_000_000;

fuzz_target!(|data: &[u8]| {
    let flows = usize::from(data.first().copied().unwrap_or(0) % 5);
    let mut t = ConnTable::new(flows, Duration::from_micros(GRACE_US));
    let (mut now, mut next, mut ever, mut gone) = (0u64, 1u64, Vec::new(), Vec::new());
    let mut lost_at = None;
    for pair in data.chunks(2) {
        let (op, arg) = (pair[0], pair.get(1).copied().unwrap_or(0));
        match op % 4 {
            0 => {
                let a = t.attach_control(next);
                gone.extend(a.replaced);
                ever.push(next);
                next += 1;
                lost_at = None;
            }
            1 => {
                if let Some(a) = t.attach_flow(usize::from(arg), next) {
                    gone.extend(a.replaced);
                    ever.push(next);
                    next += 1;
                } else {
                    assert!(usize::from(arg) >= flows);
                }
            }
            2 => {
                let Some(&c) = ever.get(usize::from(arg)) else { continue };
                let role = t.role_of(c);
                match (role, t.lost(c, now)) {
                    (None, Lost::NotInPlace) => {}
                    (Some(Role::Control), Lost::Control { hold_until }) => {
                        assert_eq!(hold_until, Some(now + GRACE_US));
                        lost_at = Some(now);
                    }
                    (Some(Role::Flow(k)), Lost::Flow(j)) => assert_eq!(k, j),
                    other => panic!("{other:?}"),
                }
                gone.push(c);
            }
            _ => {
                now += u64::from(arg) * 50_000;
                if t.handle_timeout(now) {
                    assert!(now - lost_at.expect("held") >= GRACE_US);
                    lost_at = None;
                }
            }
        }
        for (_, c) in t.connections() {
            assert!(!gone.contains(&c), "connection {c} is gone but still in place");
        }
        assert!(t.connections().filter(|(f, _)| f.is_none()).count() <= 1);
    }

    let mut s = RecordSplitter::default();
    let mut rest = data;
    while !rest.is_empty() {
        match s.feed(rest) {
            Ok((used, record)) => {
                assert!(used > 0 && used <= rest.len());
                if let Some(r) = record {
                    assert_eq!(r.body.len(), u32::from_be_bytes(r.header) as usize);
                }
                rest = &rest[used..];
            }
            Err(_) => break,
        }
    }
});

//! The link layer's lifecycle (`link::Lifecycle`) fed an arbitrary event stream, as a hostile
//! or broken peer and a flaky WAN would make it: connections accepted, dialled, keyed and
//! failed in any order, hellos, attaches and welcomes naming the tunnel or not, any record
//! plaintext the decoder takes, on any connection, and time. It never panics; a connection
//! it closed is never in place in the tunnel's table; every connection in place has a role;
//! and the tunnel's table never holds more than one control connection.
#![no_main]
use std::collections::HashSet;
use std::time::Duration;

use libfuzzer_sys::fuzz_target;
use lmas::crypto::DedupOffer;
use lmas::link::{Action, ConnRef, Fault, FaultKind, Lifecycle, LinkSetup, Role, TunnelSetup};
use lmas::protocol::handshake::Shard;
use lmas::protocol::{Message, ResetReason, TunnelId};
use lmas::session::{DedupConfig, Limits, SharePolicy, Side};

fn setup(dial: bool) -> LinkSetup {
    LinkSetup {
        name: "gw-x".into(),
        peer_name: "gw-y".into(),
        dial: dial.then(|| "192.0.2.2:7700".parse().unwrap()),
        data_flows: 2,
        tunnel: TunnelSetup {
            side: Side::Dialer,
            limits: Limits::default(),
            flows: 0,
            grace: Duration::from_secs(4),
            shard: Shard::ONE,
            shares: SharePolicy::default(),
            dedup: DedupConfig::default(),
            dedup_store: None,
        },
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&first, mut rest)) = data.split_first() else {
        return;
    };
    let mut l = Lifecycle::new(setup(first & 1 == 1));
    let (mut now, mut next) = (1u64, 1 as ConnRef);
    let mut conns: Vec<ConnRef> = Vec::new();
    let mut closed = HashSet::new();
    while let Some((&op, tail)) = rest.split_first() {
        let (arg, tail) = tail.split_first().map_or((0, tail), |(&a, t)| (a, t));
        rest = tail;
        let conn = conns
            .get(usize::from(arg) % conns.len().max(1))
            .copied()
            .unwrap_or(0);
        let current = l.tunnel.as_ref().map(|t| t.id);
        let other = TunnelId::new([arg | 1; 16]);
        let named = if arg & 1 == 0 {
            current.or(other)
        } else {
            other
        };
        match op % 9 {
            0 => {
                l.accepted(next, None, arg & 2 != 0, now);
                conns.push(next);
                next += 1;
            }
            1 => {
                if let Some(role) = l.poll_dial(now) {
                    l.dialling(role, next, now);
                    conns.push(next);
                    next += 1;
                }
            }
            2 => l.keyed(conn, None, DedupOffer::default(), now),
            3 => {
                let msg = Message::Hello {
                    name: "gw-y".into(),
                    data_flows: u16::from(arg % 4),
                    resume: named,
                };
                l.message(conn, msg, now);
            }
            4 => {
                if let Some(tunnel_id) = named {
                    let msg = Message::Attach {
                        tunnel_id,
                        flow: u16::from(arg % 4),
                    };
                    l.message(conn, msg, now);
                }
            }
            5 => {
                if let Some(tunnel_id) = named {
                    let msg = Message::Welcome {
                        tunnel_id,
                        name: "gw-y".into(),
                    };
                    l.message(conn, msg, now);
                }
            }
            6 => {
                // Any record plaintext the decoder takes: the next `arg % 64` bytes.
                let n = (usize::from(arg) % 64).min(rest.len());
                let (body, tail) = rest.split_at(n);
                rest = tail;
                if let Ok(msg) = Message::decode(bytes::Bytes::copy_from_slice(body)) {
                    l.message(conn, msg, now);
                }
            }
            7 => {
                let kind = match arg % 3 {
                    0 => FaultKind::Connect,
                    1 => FaultKind::Closed,
                    _ => FaultKind::Other,
                };
                l.failed(conn, Fault { kind, why: &"gone" }, now);
            }
            _ => {
                now += u64::from(arg) * 100_000;
                if arg == 255 {
                    l.give_up(ResetReason::TunnelLost);
                } else {
                    l.handle_timeout(now);
                }
            }
        }
        while let Some(action) = l.poll_action() {
            match action {
                Action::Close { conn, .. } => {
                    closed.insert(conn);
                }
                Action::TunnelGone(mut t) => while t.core.poll_event().is_some() {},
                Action::Send { conn, .. } => {
                    assert!(!closed.contains(&conn), "sent on {conn} after closing it")
                }
                Action::Count(_) | Action::Trust(_) => {}
            }
        }
        if let Some(t) = &mut l.tunnel {
            while t.core.poll_event().is_some() {}
            while t.core.poll_control().is_some() {}
        }
        if let Some(t) = &l.tunnel {
            let in_place: Vec<_> = t.table.connections().collect();
            assert!(in_place.iter().filter(|(f, _)| f.is_none()).count() <= 1);
            for (flow, c) in in_place {
                assert!(
                    !closed.contains(&c),
                    "connection {c} was closed but is in place"
                );
                let role = if flow.is_none() {
                    Role::Control
                } else {
                    Role::Flow(usize::from(flow.unwrap_or(0)))
                };
                assert_eq!(l.role_of(c), Some(role), "connection {c}");
            }
        }
    }
});

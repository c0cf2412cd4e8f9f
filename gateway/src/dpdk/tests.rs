//! The DPDK datapath's engine without DPDK, in scenarios: two engines back
//! to back on the simulator ([`super::sim`]: in-memory wires with delay,
//! loss and cuts, hosts played by smoltcp stacks, simulated time). Every
//! stream is compared byte for byte.

use std::sync::Arc;

use smoltcp::iface::SocketHandle;
use smoltcp::socket::tcp;

use super::net::Net;
use super::sim::MemPort;
use super::sim::*;
use crate::admin::Config;

#[test]
fn transfer_both_ways_with_half_close_over_a_delayed_wan() {
    let k = keys("both");
    let (a, b) = configs(&k, LISTEN_INGRESS, "a.key.pub", ALLOW_DST);
    let mut sim = Sim::new(a, b, 10_000);
    assert!(sim.run_until(5, |s| s.tunnel_up()), "tunnel never came up");

    let up = pattern(3 << 20, 1);
    let down = pattern(1 << 20, 2);
    let listeners = sim.listen_dst(5000, 1);
    let mut src = sim.connect_src(([10, 0, 1, 1], 6000), up.clone());
    let mut dst_apps = Vec::new();
    let ok = sim.run_until(60, |s| {
        src.run(&mut s.src);
        accept_apps(s, &listeners, &mut dst_apps, &|_| down.clone());
        for app in &mut dst_apps {
            app.run(&mut s.dst);
        }
        src.done() && dst_apps.first().is_some_and(|d| d.done())
    });
    let dst = dst_apps.first().expect("the destination was connected");
    assert!(
        ok,
        "transfer did not finish: up {}/{} down {}/{}",
        dst.got.len(),
        up.len(),
        src.got.len(),
        down.len()
    );
    if dst.got != up {
        let first = dst.got.iter().zip(&up).position(|(a, b)| a != b);
        panic!(
            "upstream bytes differ: got {} of {}, first difference at {first:?}",
            dst.got.len(),
            up.len()
        );
    }
    assert!(src.got == down, "downstream bytes differ");
    assert!(!src.reset && !dst.reset);
    // The session ends on both gateways.
    assert!(sim.run_until(5, |s| s.a.endpoints.is_empty() && s.b.endpoints.is_empty()));
    assert_eq!(sim.stats_a.snapshot()["sessions_opened"], 1);
    assert_eq!(sim.stats_b.snapshot()["sessions_accepted"], 1);
}

#[test]
fn many_sessions_at_once_through_a_lossy_wan() {
    let k = keys("many");
    let (a, b) = configs(&k, LISTEN_INGRESS, "a.key.pub", ALLOW_DST);
    let mut sim = Sim::new(a, b, 5_000);
    sim.wan.loss_ppm = 10_000; // 1 %
    assert!(sim.run_until(10, |s| s.tunnel_up()));
    const N: usize = 6;
    let listeners = sim.listen_dst(5000, N);
    let mut srcs: Vec<App> = (0..N)
        .map(|i| sim.connect_src(([10, 0, 1, 1], 6000), pattern(256 << 10, i as u8)))
        .collect();
    let mut dst_apps = Vec::new();
    let ok = sim.run_until(120, |s| {
        for a in &mut srcs {
            a.run(&mut s.src);
        }
        accept_apps(s, &listeners, &mut dst_apps, &|_| Vec::new());
        for a in &mut dst_apps {
            a.run(&mut s.dst);
        }
        dst_apps.len() == N && dst_apps.iter().all(|d| d.done()) && srcs.iter().all(|a| a.done())
    });
    assert!(ok, "sessions did not finish ({} accepted)", dst_apps.len());
    // Each destination got exactly one source's stream (order of accept is free).
    let mut got: Vec<&Vec<u8>> = dst_apps.iter().map(|d| &d.got).collect();
    let mut want: Vec<&Vec<u8>> = srcs.iter().map(|s| &s.out).collect();
    got.sort();
    want.sort();
    assert!(got == want, "a stream differs");
    assert!(
        sim.wan.lost > 0,
        "the WAN lost nothing: the test did not test loss"
    );
}

#[test]
fn transparent_ingress_keeps_the_original_destination() {
    let k = keys("tproxy");
    let tproxy = "[[ingress]]\nmode = \"tproxy\"\nbind = \"0.0.0.0:5000\"\n";
    let (a, b) = configs(&k, tproxy, "a.key.pub", ALLOW_DST);
    let mut sim = Sim::new(a, b, 1_000);
    assert!(sim.run_until(5, |s| s.tunnel_up()));
    let listeners = sim.listen_dst(5000, 1);
    // The source dials the destination itself; its route goes via gw-a.
    let mut src = sim.connect_src(([10, 0, 3, 2], 5000), pattern(100_000, 7));
    let mut dst_apps = Vec::new();
    let ok = sim.run_until(30, |s| {
        src.run(&mut s.src);
        accept_apps(s, &listeners, &mut dst_apps, &|_| b"pong".to_vec());
        for a in &mut dst_apps {
            a.run(&mut s.dst);
        }
        src.done() && dst_apps.first().is_some_and(|d| d.done())
    });
    assert!(ok);
    assert_eq!(dst_apps[0].got, src.out);
    assert_eq!(src.got, b"pong");
}

#[test]
fn target_outside_the_allowlist_is_refused_and_the_client_reset() {
    let k = keys("allow");
    let (a, b) = configs(
        &k,
        LISTEN_INGRESS,
        "a.key.pub",
        "[egress]\nallow = [\"10.0.3.2:6666\"]\n",
    );
    let mut sim = Sim::new(a, b, 1_000);
    assert!(sim.run_until(5, |s| s.tunnel_up()));
    let listeners = sim.listen_dst(5000, 1);
    let mut src = sim.connect_src(([10, 0, 1, 1], 6000), b"secret".to_vec());
    let ok = sim.run_until(10, |s| {
        src.run(&mut s.src);
        src.reset
    });
    assert!(ok, "the client was not reset");
    assert_eq!(
        sim.dst.socket(listeners[0]).state(),
        tcp::State::Listen,
        "the target was never contacted"
    );
    assert_eq!(sim.stats_b.snapshot()["sessions_refused"], 1);
    assert_eq!(sim.stats_a.snapshot()["sessions_refused"], 1);
}

#[test]
fn wrong_key_is_refused_before_any_session() {
    let k = keys("wrongkey");
    // gw-b expects x's key, not a's.
    let (a, b) = configs(&k, LISTEN_INGRESS, "x.key.pub", ALLOW_DST);
    let mut sim = Sim::new(a, b, 1_000);
    let failures = sim.run_until(5, |s| s.stats_b.snapshot()["handshake_failures"] >= 2);
    assert!(failures, "gw-b did not refuse gw-a's handshakes");
    assert!(
        sim.a.link.tunnel.is_none() && sim.b.link.tunnel.is_none(),
        "no tunnel, no session state"
    );
    let mut src = sim.connect_src(([10, 0, 1, 1], 6000), b"x".to_vec());
    assert!(
        sim.run_until(10, |s| {
            src.run(&mut s.src);
            src.reset
        }),
        "a client with no tunnel is reset after the connect timeout"
    );
}

/// A record that authenticates but holds a message that does not decode is the peer speaking
/// nonsense (`protocol_errors`), as the kernel datapath counts it, not a forged record
/// (`records_rejected`); the connection goes and the tunnel comes back.
#[test]
fn a_malformed_message_in_a_sound_record_is_a_protocol_error() {
    use crate::protocol::{DataFrame, Message, SessionId};
    let k = keys("malformed");
    let (a, b) = configs(&k, LISTEN_INGRESS, "a.key.pub", ALLOW_DST);
    let mut sim = Sim::new(a, b, 1_000);
    assert!(sim.run_until(5, |s| s.tunnel_up()));
    let control = sim.a.link.tunnel.as_ref().and_then(|t| t.table.control());
    let conn = control
        .and_then(|c| sim.a.conns.get_mut(&c))
        .expect("a's control connection");
    // Offset + length overflows: encoded as it is, refused by the decoder.
    let bad = DataFrame {
        session: SessionId(1),
        offset: u64::MAX,
        flags: 0,
        payload: bytes::Bytes::from_static(b"x"),
    };
    conn.seal(Message::Data(bad), &mut sim.a.crypto);
    let counted = |s: &mut Sim| {
        let c = s.stats_b.snapshot();
        c["protocol_errors"] + c["records_rejected"] > 0
    };
    assert!(sim.run_until(5, counted), "gw-b counted nothing");
    let c = sim.stats_b.snapshot();
    assert_eq!(
        (c["protocol_errors"], c["records_rejected"]),
        (1, 0),
        "protocol_errors, records_rejected"
    );
    assert!(sim.run_until(10, |s| s.tunnel_up()), "the tunnel came back");
}

#[test]
fn a_wan_outage_longer_than_the_flow_timeout_is_survived() {
    let k = keys("outage");
    let (a, b) = configs(&k, LISTEN_INGRESS, "a.key.pub", ALLOW_DST);
    let mut sim = Sim::new(a, b, 2_000);
    assert!(sim.run_until(5, |s| s.tunnel_up()));
    let up = pattern(2 << 20, 3);
    let listeners = sim.listen_dst(5000, 1);
    let mut src = sim.connect_src(([10, 0, 1, 1], 6000), up.clone());
    let mut dst_apps = Vec::new();
    let mut run = |sim: &mut Sim, secs: u64, stop: &dyn Fn(&[App]) -> bool| {
        sim.run_until(secs, |s| {
            src.run(&mut s.src);
            accept_apps(s, &listeners, &mut dst_apps, &|_| Vec::new());
            for a in &mut dst_apps {
                a.run(&mut s.dst);
            }
            stop(&dst_apps)
        })
    };
    assert!(
        run(&mut sim, 20, &|d| d
            .first()
            .is_some_and(|d| d.got.len() > 256 << 10)),
        "no progress before the cut"
    );
    sim.wan.cut = true;
    run(&mut sim, 5, &|_| false); // 5 s > flow_timeout (2 s): every WAN connection dies
    assert!(
        sim.a
            .link
            .tunnel
            .as_ref()
            .is_some_and(|t| t.table.poll_timeout().is_some()),
        "gw-a holds the tunnel"
    );
    sim.wan.cut = false;
    assert!(
        run(&mut sim, 60, &|d| d.first().is_some_and(|d| d.done())),
        "transfer did not resume"
    );
    assert!(dst_apps[0].got == up);
    assert!(sim.stats_a.snapshot()["tunnel_resumes"] >= 1);
    assert!(sim.stats_b.snapshot()["tunnel_resumes"] >= 1);
}

#[test]
fn a_killed_data_flow_is_redialled_and_its_frames_resent() {
    let k = keys("killflow");
    let (a, b) = configs(&k, LISTEN_INGRESS, "a.key.pub", ALLOW_DST);
    let mut sim = Sim::new(a, b, 3_000);
    assert!(sim.run_until(5, |s| s.tunnel_up()));
    let up = pattern(32 << 20, 9);
    let listeners = sim.listen_dst(5000, 1);
    let mut src = sim.connect_src(([10, 0, 1, 1], 6000), up.clone());
    let mut dst_apps = Vec::new();
    let mut killed = 0;
    let ok = sim.run_until(60, |s| {
        src.run(&mut s.src);
        accept_apps(s, &listeners, &mut dst_apps, &|_| Vec::new());
        for a in &mut dst_apps {
            a.run(&mut s.dst);
        }
        // Mid-transfer, reset data flow 1 on gw-a's side, twice.
        let progress = dst_apps.first().map_or(0, |d| d.got.len());
        // (The second time once the first re-dial is back.)
        let t = s.a.link.tunnel.as_ref().unwrap();
        let flow1 = t
            .table
            .flow(1)
            .and_then(|c| s.a.conns.get(&c))
            .map(|c| c.handle);
        if let Some(h) = flow1.filter(|_| {
            (killed == 0 && progress > 512 << 10) || (killed == 1 && progress > 2 << 20)
        }) {
            s.a.wan.socket(h).abort();
            killed += 1;
        }
        dst_apps.first().is_some_and(|d| d.done()) && src.done()
    });
    assert_eq!(killed, 2);
    assert!(ok, "transfer did not finish");
    assert!(dst_apps[0].got == up, "bytes differ after flow losses");
    assert_eq!(sim.stats_a.snapshot()["flows_lost"], 2);
    assert!(
        sim.run_until(5, |s| s.tunnel_up()),
        "flow 1 was not re-dialled"
    );
}

/// A path that passes the control connection but not the data flows (a firewall with one
/// port open, a middlebox dropping every new connection): the dialler gives the new tunnel up
/// once its flows have not attached within `FLOWS_ATTACH_TIMEOUT`, and dials anew, as the
/// kernel datapath does, instead of keeping a tunnel that opens sessions and carries nothing.
#[test]
fn a_new_tunnel_whose_flows_never_attach_is_given_up_and_dialled_anew() {
    let k = keys("noflows");
    let (a, b) = configs(&k, LISTEN_INGRESS, "a.key.pub", ALLOW_DST);
    let mut sim = Sim::new(a, b, 1_000);
    // Every connection gw-a dials besides the control connection is cut at once.
    let block_flows = |s: &mut Sim| {
        let t = s.a.link.tunnel.as_ref()?;
        let control = t.table.control()?;
        let flows: Vec<SocketHandle> =
            s.a.conns
                .iter()
                .filter(|(&id, c)| c.dialed && id != control)
                .map(|(_, c)| c.handle)
                .collect();
        for h in flows {
            s.a.wan.socket(h).abort();
        }
        Some(t.id)
    };
    let mut first = None;
    let given_up = sim.run_until(40, |s| {
        let id = block_flows(s);
        first = first.or(id);
        id.is_some() && id != first
    });
    assert!(first.is_some(), "no tunnel at all");
    assert!(given_up, "the tunnel whose flows never attached was kept");
}

#[test]
fn an_outage_longer_than_the_grace_period_resets_both_ends() {
    let k = keys("grace");
    let (a, b) = configs(&k, LISTEN_INGRESS, "a.key.pub", ALLOW_DST);
    let (a, b) = (with_grace(&a, 3), with_grace(&b, 3));
    let mut sim = Sim::new(a, b, 1_000);
    assert!(sim.run_until(5, |s| s.tunnel_up()));
    let listeners = sim.listen_dst(5000, 1);
    let mut src = sim.connect_src(([10, 0, 1, 1], 6000), pattern(64 << 20, 1));
    let mut dst_apps = Vec::new();
    assert!(sim.run_until(20, |s| {
        src.run(&mut s.src);
        accept_apps(s, &listeners, &mut dst_apps, &|_| Vec::new());
        if let Some(d) = dst_apps.first_mut() {
            d.close_after_eof = true;
        }
        for a in &mut dst_apps {
            a.run(&mut s.dst);
        }
        dst_apps.first().is_some_and(|d| !d.got.is_empty())
    }));
    sim.wan.cut = true;
    let both_reset = sim.run_until(15, |s| {
        src.run(&mut s.src);
        for a in &mut dst_apps {
            a.run(&mut s.dst);
        }
        src.reset && dst_apps[0].reset
    });
    assert!(
        both_reset,
        "after flow timeout (2 s) + grace (3 s) both endpoints are reset: src {:?} {} (fin {} closed {} conn {}), dst {:?} {}",
        s_state(&mut sim.src, src.handle),
        src.reset, src.fin_seen, src.closed, src.was_connected,
        s_state(&mut sim.dst, dst_apps[0].handle),
        dst_apps[0].reset
    );
    assert!(dst_apps[0].got.len() < 64 << 20);
}

fn with_grace(c: &Arc<Config>, secs: u64) -> Arc<Config> {
    let mut c = (**c).clone();
    c.grace_period = std::time::Duration::from_secs(secs);
    Arc::new(c)
}

fn s_state(net: &mut Net<MemPort>, h: SocketHandle) -> tcp::State {
    net.socket(h).state()
}

#[test]
fn sessions_reach_the_target_in_the_order_the_source_connected() {
    // QEMU < 8.0 tells its migration channels apart by accept order.
    let k = keys("order");
    let (a, b) = configs(&k, LISTEN_INGRESS, "a.key.pub", ALLOW_DST);
    let mut sim = Sim::new(a, b, 2_000);
    assert!(sim.run_until(5, |s| s.tunnel_up()));
    const N: usize = 8;
    let listeners = sim.listen_dst(5000, N);
    // All SYNs leave the source in one poll, in this order.
    let mut srcs: Vec<App> = (0..N)
        .map(|i| {
            let mut data = vec![i as u8];
            data.extend(pattern(10_000, i as u8));
            sim.connect_src(([10, 0, 1, 1], 6000), data)
        })
        .collect();
    let mut accepted: Vec<SocketHandle> = Vec::new();
    let mut dst_apps = Vec::new();
    let ok = sim.run_until(30, |s| {
        for a in &mut srcs {
            a.run(&mut s.src);
        }
        let fresh: Vec<SocketHandle> = listeners
            .iter()
            .copied()
            .filter(|&h| !accepted.contains(&h) && s.dst.socket(h).state() != tcp::State::Listen)
            .collect();
        assert!(
            fresh.len() <= 1,
            "two connections reached the target in the same step: order unknowable"
        );
        accepted.extend(&fresh);
        accept_apps(s, &accepted, &mut dst_apps, &|_| Vec::new());
        for a in &mut dst_apps {
            a.run(&mut s.dst);
        }
        dst_apps.len() == N && dst_apps.iter().all(|d| d.done())
    });
    assert!(
        ok,
        "{} of {N} sessions finished",
        dst_apps.iter().filter(|d| d.done()).count()
    );
    let order: Vec<u8> = accepted
        .iter()
        .map(|h| dst_apps.iter().find(|d| d.handle == *h).unwrap().got[0])
        .collect();
    assert_eq!(
        order,
        (0..N as u8).collect::<Vec<_>>(),
        "accept order at the target"
    );
}

/// Not a test: a profiling harness for the TCP lcore's work at saturation (both engines, the
/// two host stacks and inline crypto on one thread; no wire delay). Run with
/// `cargo test --release -p lmas --lib dpdk::tests::saturated -- --ignored --nocapture`
/// under `perf record`.
#[test]
#[ignore]
fn saturated_transfer_for_profiling() {
    let k = keys("profile");
    let (a, b) = configs(&k, LISTEN_INGRESS, "a.key.pub", ALLOW_DST);
    let mut sim = Sim::new(a, b, 0);
    sim.lan_a.delay_us = 0;
    sim.lan_b.delay_us = 0;
    assert!(sim.run_until(5, |s| s.tunnel_up()));
    // A first, untimed transfer: the flows' buffers are touched (page faults) and their
    // congestion state is warm, as on a gateway whose tunnel has been up for a while.
    let warm = pattern(64 << 20, 4);
    let listeners = sim.listen_dst(5000, 1);
    let mut src = sim.connect_src(([10, 0, 1, 1], 6000), warm.clone());
    let mut dst_apps = Vec::new();
    assert!(sim.run_until(600, |s| {
        src.run(&mut s.src);
        accept_apps(s, &listeners, &mut dst_apps, &|_| Vec::new());
        for a in &mut dst_apps {
            a.discard = true;
            a.run(&mut s.dst);
        }
        dst_apps.first().is_some_and(|d| d.done())
    }));
    let listeners = sim.listen_dst(5000, 1);
    let mut dst_apps = Vec::new();
    let (lan_a, lan_b, wan) = (sim.lan_a.carried, sim.lan_b.carried, sim.wan.carried);
    sim.busy_a = std::time::Duration::ZERO;
    sim.busy_b = std::time::Duration::ZERO;

    let up = pattern(256 << 20, 5);
    let mut src = sim.connect_src(([10, 0, 1, 1], 6000), up.clone());
    let started = std::time::Instant::now();
    let steps_before = sim.now;
    assert!(sim.run_until(600, |s| {
        src.run(&mut s.src);
        accept_apps(s, &listeners, &mut dst_apps, &|_| Vec::new());
        for a in &mut dst_apps {
            a.discard = true;
            a.run(&mut s.dst);
        }
        dst_apps.first().is_some_and(|d| d.done())
    }));
    let secs = started.elapsed().as_secs_f64();
    assert_eq!(dst_apps[0].received, up.len());
    // Packets through each gateway: its LAN wire and the WAN, both directions.
    let per_packet = |busy: std::time::Duration, lan: u64| {
        busy.as_nanos() as f64 / (lan + sim.wan.carried - wan) as f64
    };
    println!(
        "gateway A (LAN rx, seal, WAN tx): {:.0} ns of TCP-lcore work per packet ({:.2}s); \
         gateway B (WAN rx, open, LAN tx): {:.0} ns ({:.2}s); crypto inline in both",
        per_packet(sim.busy_a, sim.lan_a.carried - lan_a),
        sim.busy_a.as_secs_f64(),
        per_packet(sim.busy_b, sim.lan_b.carried - lan_b),
        sim.busy_b.as_secs_f64()
    );
    println!(
        "{} MiB in {secs:.2}s of CPU ({:.0} Mbit/s for both gateways and both hosts on one thread), {} simulated steps",
        up.len() >> 20,
        up.len() as f64 * 8.0 / secs / 1e6,
        (sim.now - steps_before) / STEP_US
    );
}

/// Random frames, mutated real frames and garbage TCP connections on the tunnel port: the
/// engine never panics, counts and logs the bad handshakes, and the tunnel and a session carry
/// on byte-exact.
#[test]
fn hostile_input_on_both_ports_hurts_nothing() {
    let k = keys("hostile");
    let (a, b) = configs(&k, LISTEN_INGRESS, "a.key.pub", ALLOW_DST);
    let mut sim = Sim::new(a, b, 1_000);
    assert!(sim.run_until(5, |s| s.tunnel_up()));
    let up = pattern(2 << 20, 4);
    let listeners = sim.listen_dst(5000, 1);
    let mut src = sim.connect_src(([10, 0, 1, 1], 6000), up.clone());
    let mut dst_apps = Vec::new();

    // An attacker on gw-b's WAN segment that dials the tunnel port with junk.
    let mut evil = Attacker::new(sim.now);
    let junk: [&[u8]; 4] = [
        b"GET / HTTP/1.1\r\nHost: x\r\n\r\n",
        b"LMAS\x01\x00\xff\xff", // a prelude with an absurd length
        b"LMAS\x07\x00\x00\x60", // an unknown version
        &[
            0x16, 0x03, 0x01, 0x02, 0x00, 0x01, 0x00, 0x01, 0xfc, 0x03, 0x03,
        ], // a TLS hello
    ];
    let mut evil_socks: Vec<(SocketHandle, &[u8])> = Vec::new();
    for j in junk {
        let h = evil
            .dial(std::net::SocketAddrV4::new([10, 0, 2, 2].into(), 7700))
            .expect("a free port");
        evil_socks.push((h, j));
    }
    let mut rng = Wire::new(0);
    let ok = sim.run_until(60, |s| {
        src.run(&mut s.src);
        accept_apps(s, &listeners, &mut dst_apps, &|_| Vec::new());
        for a in &mut dst_apps {
            a.run(&mut s.dst);
        }
        // The attacker sits on gw-a's end of the WAN wire: its frames travel to gw-b with
        // gw-a's, and what comes back for its MAC is taken out of gw-a's inbox.
        evil.net.poll(s.now);
        for (h, j) in &evil_socks {
            let sock = evil.net.socket(*h);
            if sock.may_send() && sock.send_queue() == 0 && sock.state() == tcp::State::Established
            {
                let _ = sock.send_slice(j);
            }
        }
        let port = &mut s.a.wan.port;
        evil.exchange(&mut port.outbox, &mut port.inbox);
        if rng.chance() < 200_000 {
            let len = (rng.chance() % 1600) as usize;
            let mut f: Vec<u8> = (0..len).map(|_| rng.chance() as u8).collect();
            // Half the time, a real frame with a few bytes flipped (passes the guard more often).
            if rng.chance().is_multiple_of(2) {
                if let Some(real) = s.a.wan.port.inbox.front() {
                    f = real.clone();
                    for _ in 0..3 {
                        let i = rng.chance() as usize % f.len().max(1);
                        if let Some(b) = f.get_mut(i) {
                            *b ^= 1 << (rng.chance() % 8);
                        }
                    }
                }
            }
            match rng.chance() % 3 {
                0 => s.a.wan.port.inbox.push_back(f),
                1 => s.b.wan.port.inbox.push_back(f),
                _ => s.a.lan.port.inbox.push_back(f),
            }
        }
        dst_apps.first().is_some_and(|d| d.done())
            && src.done()
            && s.stats_b.snapshot()["handshake_failures"] >= 3
    });
    assert!(
        ok,
        "the session did not finish, or the junk was not refused"
    );
    assert!(dst_apps[0].got == up, "bytes differ");
    let failures = sim.stats_b.snapshot()["handshake_failures"];
    assert!(failures >= 3, "gw-b counted {failures} bad handshakes");
    assert!(sim.tunnel_up(), "the tunnel survived");
}

/// The DPDK datapath credits what packing did to each session: a text session packs, a
/// pseudo-random one is skipped, B sees what unpacking cost, and each side's sessions add up
/// to its tunnel's figures (both sessions held open: the endpoints wait for each other's end).
#[test]
fn each_session_shows_what_packing_did_for_it() {
    use crate::transform::{Choice, Compression, PackFigures, PackPolicy};
    let k = keys("packing");
    let (a, b) = configs(&k, LISTEN_INGRESS, "a.key.pub", ALLOW_DST);
    let policy = Arc::new(PackPolicy::new(Compression::Fixed(Choice::Lz4)));
    let mut sim = Sim::packing(a, b, 2_000, Some(policy.clone()));
    assert!(sim.run_until(5, |s| s.tunnel_up()), "tunnel never came up");
    const LEN: usize = 1 << 20;
    let text: Vec<u8> = b"guest kernel page dirty 0x7f3a "
        .iter()
        .cycle()
        .take(LEN)
        .copied()
        .collect();
    let listeners = sim.listen_dst(5000, 2);
    let mut srcs: Vec<App> = Vec::new();
    let mut dsts: Vec<App> = Vec::new();
    for payload in [text, pattern(LEN, 3)] {
        let mut src = sim.connect_src(([10, 0, 1, 1], 6000), payload);
        src.close_after_eof = true;
        srcs.push(src);
        let n = srcs.len();
        let ok = sim.run_until(30, |s| {
            for app in &mut srcs {
                app.run(&mut s.src);
            }
            accept_apps(s, &listeners, &mut dsts, &|_| Vec::new());
            for app in &mut dsts {
                app.close_after_eof = true;
                app.run(&mut s.dst);
            }
            dsts.len() == n && dsts[n - 1].got.len() == LEN
        });
        assert!(ok, "session {n} did not get its bytes through");
    }
    // Acks settle; nobody closes.
    sim.run_until(1, |_| false);
    let now = sim.now;
    let sessions = |st: &crate::admin::Status| {
        let t = st.tunnel.clone().expect("tunnel");
        assert_eq!(t.sessions.len(), 2, "both sessions held open");
        let mut sum = PackFigures::default();
        for s in &t.sessions {
            let c = &s.compression;
            sum.add(&PackFigures {
                bytes_in: c.bytes_in,
                bytes_out: c.bytes_out,
                frames_packed: c.frames_packed,
                frames_skipped: c.frames_skipped,
                pack_ns: c.pack_ns,
                unpack_ns: c.unpack_ns,
            });
        }
        assert_eq!(
            crate::admin::status::PackingStatus::from(&sum),
            t.compression,
            "the sessions add up to the tunnel"
        );
        t.sessions
    };
    let at_a = sessions(&sim.a.status(now));
    let (text_a, random_a) = (&at_a[0].compression, &at_a[1].compression);
    assert_eq!(text_a.bytes_in, LEN as u64);
    assert!(
        text_a.frames_packed > 0 && text_a.ratio.unwrap() < 0.1,
        "{text_a:?}"
    );
    assert_eq!(random_a.bytes_in, LEN as u64);
    assert_eq!(random_a.bytes_out, LEN as u64, "{random_a:?}");
    assert!(random_a.frames_skipped > 0 && random_a.frames_packed == 0);
    let at_b = sessions(&sim.b.status(now));
    assert!(at_b[0].compression.unpack_ns > 0, "B unpacked the text");
    assert_eq!(at_b[1].compression.unpack_ns, 0, "nothing packed to unpack");
    assert_eq!(at_b[0].compression.bytes_in, 0, "B sent nothing");
}

/// Two TCP lcores (shards) on each gateway, frames steered as the I/O lcore steers them:
/// 32 sessions spread over both sub-tunnels through a lossy WAN, and every stream arrives
/// whole. Both WAN ends of every connection steer to the shard that owns it.
#[test]
fn two_shards_a_side_carry_32_sessions_over_their_own_sub_tunnels() {
    let k = keys("shards");
    // All 32 SYNs come at once: room for them in each shard's backlog.
    let sizes = Sizes {
        listen_backlog: 32,
        ..Sizes::SCENARIOS
    };
    let (a, b) = configs_sized(&k, sizes, LISTEN_INGRESS, "a.key.pub", ALLOW_DST);
    let mut sim = ShardedSim::new(a, b, 2, 2, 5_000);
    sim.wan.loss_ppm = 2_000;
    assert!(
        sim.run_until(10, |s| s.tunnels_up()),
        "the sub-tunnels never came up"
    );
    const N: usize = 32;
    let listeners: Vec<SocketHandle> = (0..N)
        .map(|_| {
            let h = sim.dst.add_socket(1 << 20, 1 << 20);
            sim.dst.socket(h).listen(5000).unwrap();
            h
        })
        .collect();
    let mut srcs: Vec<App> = (0..N)
        .map(|i| {
            let h = sim.src.add_socket(1 << 20, 1 << 20);
            let ingress = std::net::SocketAddrV4::new([10, 0, 1, 1].into(), 6000);
            sim.src.connect(h, ingress).unwrap();
            App::new(h, pattern(64 << 10, i as u8))
        })
        .collect();
    let mut dsts: Vec<App> = Vec::new();
    let mut peak = [0usize; 2];
    let ok = sim.run_until(120, |s| {
        for app in &mut srcs {
            app.run(&mut s.src);
        }
        for &h in &listeners {
            let taken = dsts.iter().any(|d| d.handle == h);
            if !taken && s.dst.socket(h).state() != tcp::State::Listen {
                dsts.push(App::new(h, Vec::new()));
            }
        }
        for app in &mut dsts {
            app.run(&mut s.dst);
        }
        for (k, e) in s.a.iter().enumerate() {
            peak[k] = peak[k].max(e.endpoints.len());
        }
        dsts.len() == N && dsts.iter().all(|d| d.done()) && srcs.iter().all(|a| a.done())
    });
    assert!(ok, "sessions did not finish ({} accepted)", dsts.len());
    let mut got: Vec<&Vec<u8>> = dsts.iter().map(|d| &d.got).collect();
    let mut want: Vec<&Vec<u8>> = srcs.iter().map(|s| &s.out).collect();
    got.sort();
    want.sort();
    assert!(got == want, "a stream differs");
    assert!(
        peak.iter().all(|&p| p > 0),
        "a shard took no session: {peak:?}"
    );
    assert!(sim.wan.lost > 0, "the WAN lost nothing");
    for (k, e) in sim.a.iter().chain(&sim.b).enumerate() {
        for c in e.conns.values() {
            if let (Some(l), Some(r)) = (c.local, c.remote) {
                let steered = crate::frames::steer::shard_of_ports(l.port(), r.port(), 2);
                assert_eq!(steered as usize, k % 2, "{l} - {r} on shard {}", k % 2);
            }
        }
    }
}

/// A gateway with two shards and a peer with one: the acceptor refuses every connection
/// by name (handshake failures), and no tunnel comes up half-way.
#[test]
fn unequal_shard_counts_are_refused_at_the_handshake() {
    let k = keys("shard-mismatch");
    let (a, b) = configs(&k, LISTEN_INGRESS, "a.key.pub", ALLOW_DST);
    let mut sim = ShardedSim::new(a, b, 2, 1, 5_000);
    assert!(!sim.run_until(5, |s| s.b[0].link.tunnel.is_some()));
    assert!(sim.stats_b.snapshot()["handshake_failures"] > 0);
    assert_eq!(sim.stats_b.snapshot()["handshakes_ok"], 0);
}

//! The DPDK datapath's engine (an accepting gateway) fed by an attacker: raw frames on both
//! ports, and real TCP connections to the tunnel port carrying arbitrary bytes. It never
//! panics, whatever arrives. The engine, its ports and the attacker come from the engine's
//! simulator (`lmas::dpdk::sim`), which the scenarios in `dpdk/tests.rs` use too.
#![no_main]
use std::net::SocketAddrV4;
use std::sync::{Arc, OnceLock};

use libfuzzer_sys::fuzz_target;
use lmas::admin::{Config, Stats};
use lmas::dpdk::sim::{self, Attacker, Sizes};

/// gw-b of the simulator's pair, with small buffers (the fuzzer's memory limit), trusting a
/// key the attacker does not have, with an ingress on its LAN so LAN frames find a listener.
fn config() -> Arc<Config> {
    static CONFIG: OnceLock<Arc<Config>> = OnceLock::new();
    CONFIG
        .get_or_init(|| {
            let keys = sim::keys("fuzz-engine");
            let ingress_b = "[[ingress]]\nmode = \"listen\"\nbind = \"10.0.3.1:6000\"\ntarget = \"10.0.2.9:5000\"\n";
            let extra_b = format!("{}{ingress_b}", sim::ALLOW_DST);
            sim::configs_sized(&keys, Sizes::FUZZ, sim::LISTEN_INGRESS, "x.key.pub", &extra_b).1
        })
        .clone()
}

const TUNNEL_PORT: SocketAddrV4 = SocketAddrV4::new(std::net::Ipv4Addr::new(10, 0, 2, 2), 7700);

fuzz_target!(|data: &[u8]| {
    let mut now = 1_000;
    let mut gw = sim::engine(config(), Arc::new(Stats::default()), 0xb, now);
    let mut evil = Attacker::new(now);
    let mut conns = Vec::new();
    let mut rest = data;
    // Ops: [op u8][len u8][len bytes].
    while rest.len() >= 2 {
        let (op, len) = (rest[0], rest[1] as usize);
        let bytes = &rest[2..(2 + len).min(rest.len())];
        rest = &rest[(2 + len).min(rest.len())..];
        match op % 4 {
            0 => gw.wan_port_mut().inbox.push_back(bytes.to_vec()),
            1 => gw.lan_port_mut().inbox.push_back(bytes.to_vec()),
            2 if conns.len() < 4 => conns.extend(evil.dial(TUNNEL_PORT)),
            _ => {
                if let Some(&h) = conns.get(op as usize / 4 % conns.len().max(1)) {
                    let _ = evil.net.socket(h).send_slice(bytes);
                }
            }
        }
        for _ in 0..4 {
            now += 1_000;
            evil.net.poll(now);
            gw.poll(now);
            // The attacker is the only other host on the WAN: what it does not take is lost.
            let wan = gw.wan_port_mut();
            evil.exchange(&mut wan.inbox, &mut wan.outbox);
            wan.outbox.clear();
            gw.lan_port_mut().outbox.clear();
        }
    }
});

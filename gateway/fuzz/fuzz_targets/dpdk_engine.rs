//! The DPDK datapath's engine (an accepting gateway) fed by an attacker: raw frames on both
//! ports, and real TCP connections to the tunnel port carrying arbitrary bytes. It never
//! panics, whatever arrives.
#![no_main]
use std::sync::{Arc, OnceLock};

use libfuzzer_sys::fuzz_target;
use lmas::admin::dpdk::PortSpec;
use lmas::admin::{Config, Stats};
use lmas::crypto::StaticKeypair;
use lmas::dpdk::crypto::InlineCrypto;
use lmas::dpdk::engine::{Engine, Ports};
use lmas::dpdk::net::Net;
use lmas::dpdk::phy::MemPort;

/// An accepting DPDK gateway with small buffers (the fuzzer's memory limit).
fn config() -> Arc<Config> {
    static CONFIG: OnceLock<Arc<Config>> = OnceLock::new();
    CONFIG
        .get_or_init(|| {
            let dir = std::env::temp_dir().join(format!("lmas-fuzz-engine-{}", std::process::id()));
            std::fs::create_dir_all(&dir).unwrap();
            StaticKeypair::generate().unwrap().write(&dir.join("b.key")).unwrap();
            let peer = StaticKeypair::generate().unwrap().public;
            let text = format!(
                "[gateway]\nname = \"gw-b\"\nprivate_key_file = \"b.key\"\ntunnel_listen = \"10.0.2.2:7700\"\n\
                 datapath = \"dpdk\"\n[peer]\nname = \"gw-a\"\npublic_key = \"{peer}\"\n\
                 [wan]\ndata_flows = 2\nsocket_buffer_bytes = 65536\n\
                 [egress]\nallow = [\"10.0.3.2:5000\"]\n\
                 [[ingress]]\nmode = \"listen\"\nbind = \"10.0.3.1:6000\"\ntarget = \"10.0.2.9:5000\"\n\
                 [dpdk]\nlan_socket_buffer_bytes = 65536\nlisten_backlog = 2\n\
                 [dpdk.lan]\ndevice = \"lan\"\naddress = \"10.0.3.1/24\"\n\
                 [dpdk.wan]\ndevice = \"wan\"\naddress = \"10.0.2.2/24\"\n"
            );
            Arc::new(Config::parse(&dir.join("b.toml"), &text).unwrap())
        })
        .clone()
}

const ATTACKER_MAC: [u8; 6] = [2, 0, 0, 0, 0, 0x66];

fuzz_target!(|data: &[u8]| {
    let mut now = 1_000;
    let ports = Ports {
        lan: MemPort::default(),
        lan_mac: [2, 0, 0, 0, 0xb, 1],
        wan: MemPort::default(),
        wan_mac: [2, 0, 0, 0, 0xb, 2],
    };
    let mut gw = Engine::new(config(), Arc::new(Stats::default()), ports, InlineCrypto::default(), now);
    let spec = PortSpec {
        device: "attacker".into(),
        address: [10, 0, 2, 66].into(),
        prefix_len: 24,
        gateway: None,
        intercept: Vec::new(),
        mtu: 1500,
    };
    let mut evil = Net::new(MemPort::default(), ATTACKER_MAC, &spec, 1, now);
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
            2 if conns.len() < 4 => {
                let h = evil.add_socket(1 << 16, 1 << 16);
                if evil.connect(h, std::net::SocketAddrV4::new([10, 0, 2, 2].into(), 7700)).is_ok() {
                    conns.push(h);
                }
            }
            _ => {
                if let Some(&h) = conns.get(op as usize / 4 % conns.len().max(1)) {
                    let _ = evil.socket(h).send_slice(bytes);
                }
            }
        }
        for _ in 0..4 {
            now += 1_000;
            evil.poll(now);
            gw.poll(now);
            gw.wan_port_mut().inbox.extend(evil.port.outbox.drain(..));
            let out = std::mem::take(&mut gw.wan_port_mut().outbox);
            evil.port.inbox.extend(out.into_iter().filter(|f| f.get(..6) == Some(&ATTACKER_MAC[..])));
            gw.lan_port_mut().outbox.clear();
        }
    }
});

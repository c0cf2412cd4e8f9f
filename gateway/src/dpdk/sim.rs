//! A simulator for the DPDK datapath's engine without DPDK: engines on
//! in-memory Ethernet ports, wires between them (delay, loss, cuts),
//! hypervisor hosts and attackers played by plain smoltcp stacks, crypto
//! inline, simulated time. Deterministic: every random draw is seeded.
//!
//! The scenarios in `dpdk/tests.rs` run two engines back to back ([`Sim`]);
//! the fuzz target `dpdk_engine` runs one engine ([`engine`]) against an
//! [`Attacker`]. Built for tests and under `cargo fuzz` (`cfg(fuzzing)`)
//! only: no gateway binary carries it.

use std::collections::VecDeque;
use std::net::SocketAddrV4;
use std::path::PathBuf;
use std::sync::Arc;

use smoltcp::iface::SocketHandle;
use smoltcp::socket::tcp;

use super::crypto::InlineCrypto;
use super::engine::{Engine, Ports};
use super::net::Net;
use super::phy::FramePort;
use crate::admin::dpdk::PortSpec;
use crate::admin::{Config, Stats};
use crate::crypto::StaticKeypair;

/// Simulated time per step.
/// Simulated time per step.
pub const STEP_US: u64 = 200;

/// A link between two ports, both ways: frames in flight with their
/// delivery time, lost at random (seeded: runs repeat) or all while cut.
#[derive(Default)]
pub struct Wire {
    pub delay_us: u64,
    /// Frames lost, per million.
    pub loss_ppm: u64,
    /// Frames carried, both ways.
    pub carried: u64,
    pub cut: bool,
    rng: u64,
    ab: VecDeque<(u64, Vec<u8>)>,
    ba: VecDeque<(u64, Vec<u8>)>,
    pub lost: u64,
}

impl Wire {
    pub fn new(delay_us: u64) -> Wire {
        Wire {
            delay_us,
            rng: 0x9E37_79B9_7F4A_7C15,
            ..Wire::default()
        }
    }

    /// A draw in 0..1_000_000 from the wire's generator (also a seeded
    /// random source for scenarios).
    pub fn chance(&mut self) -> u64 {
        // xorshift64: deterministic runs.
        self.rng ^= self.rng << 13;
        self.rng ^= self.rng >> 7;
        self.rng ^= self.rng << 17;
        self.rng % 1_000_000
    }

    /// Takes what `a` and `b` sent, and delivers what is due by `now`.
    pub fn carry(&mut self, now: u64, a: &mut MemPort, b: &mut MemPort) {
        for (from, q) in [(&mut *a, 0), (&mut *b, 1)] {
            while let Some(f) = from.outbox.pop_front() {
                let lose = self.cut || self.chance() < self.loss_ppm;
                if lose {
                    self.lost += 1;
                    continue;
                }
                self.carried += 1;
                let at = now + self.delay_us;
                if q == 0 {
                    self.ab.push_back((at, f));
                } else {
                    self.ba.push_back((at, f));
                }
            }
        }
        while self.ab.front().is_some_and(|(t, _)| *t <= now) {
            b.inbox.push_back(self.ab.pop_front().expect("checked").1);
        }
        while self.ba.front().is_some_and(|(t, _)| *t <= now) {
            a.inbox.push_back(self.ba.pop_front().expect("checked").1);
        }
    }
}

/// An application on a host: sends `out`, collects what arrives, closes
/// its side once everything is sent.
pub struct App {
    pub handle: SocketHandle,
    pub out: Vec<u8>,
    sent: usize,
    pub got: Vec<u8>,
    pub closed: bool,
    /// The other side finished (FIN seen after everything was read).
    pub eof: bool,
    pub fin_seen: bool,
    pub reset: bool,
    pub was_connected: bool,
    /// Close only after the other side finished (a server that answers
    /// when the request is complete).
    pub close_after_eof: bool,
    /// Count received bytes instead of keeping them (profiling).
    pub discard: bool,
    pub received: usize,
}

impl App {
    pub fn new(handle: SocketHandle, out: Vec<u8>) -> App {
        App {
            handle,
            out,
            sent: 0,
            got: Vec::new(),
            closed: false,
            eof: false,
            fin_seen: false,
            reset: false,
            was_connected: false,
            close_after_eof: false,
            discard: false,
            received: 0,
        }
    }

    /// One turn: note the socket's state, read, send, close when done.
    pub fn run(&mut self, net: &mut Net<MemPort>) {
        let s = net.socket(self.handle);
        if s.state() == tcp::State::Established {
            self.was_connected = true;
        }
        use tcp::State::*;
        self.fin_seen |= matches!(s.state(), CloseWait | LastAck | Closing | TimeWait);
        if self.was_connected && s.state() == Closed && !(self.fin_seen && self.closed) {
            self.reset = true;
        }
        while s.can_recv() {
            let _ = s.recv(|b| {
                self.received += b.len();
                if !self.discard {
                    self.got.extend_from_slice(b);
                }
                (b.len(), ())
            });
        }
        if self.fin_seen && !s.can_recv() {
            self.eof = true;
        }
        if s.may_send() && self.sent < self.out.len() {
            self.sent += s.send_slice(&self.out[self.sent..]).unwrap_or(0);
        }
        if s.may_send()
            && self.sent == self.out.len()
            && !self.closed
            && (self.eof || !self.close_after_eof)
        {
            s.close();
            self.closed = true;
        }
    }

    pub fn done(&self) -> bool {
        self.closed && self.eof && !self.reset
    }
}

/// `len` bytes that differ per `seed` and per offset (a misplaced piece shows).
pub fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u32).wrapping_mul(2654435761).to_be_bytes()[i % 4] ^ seed)
        .collect()
}

/// A temporary directory with key pairs `a`, `b` and `x` (`NAME.key`,
/// `NAME.key.pub`), removed on drop.
pub struct Keys {
    pub dir: PathBuf,
}

impl Drop for Keys {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

pub fn keys(tag: &str) -> Keys {
    let dir = std::env::temp_dir().join(format!("lmas-dpdk-sim-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    for k in ["a", "b", "x"] {
        StaticKeypair::generate()
            .unwrap()
            .write(&dir.join(format!("{k}.key")))
            .unwrap();
    }
    Keys { dir }
}

/// How large a simulated gateway's buffers are.
#[derive(Debug, Clone, Copy)]
pub struct Sizes {
    pub data_flows: u16,
    /// `wan.socket_buffer_bytes`.
    pub wan_buffer: usize,
    /// `dpdk.lan_socket_buffer_bytes`.
    pub lan_buffer: usize,
    /// `dpdk.listen_backlog`.
    pub listen_backlog: usize,
}

impl Sizes {
    /// The scenarios': room for multi-MiB transfers on a delayed WAN.
    pub const SCENARIOS: Sizes = Sizes {
        data_flows: 4,
        wan_buffer: 1 << 20,
        lan_buffer: 512 << 10,
        listen_backlog: 16,
    };
    /// The fuzzer's: it builds an engine per input, under a memory limit.
    pub const FUZZ: Sizes = Sizes {
        data_flows: 2,
        wan_buffer: 64 << 10,
        lan_buffer: 64 << 10,
        listen_backlog: 2,
    };
}

/// The pair's configs: gw-a dials (LAN 10.0.1.1/24, ingress `ingress_a`),
/// gw-b accepts on 10.0.2.2:7700 (LAN 10.0.3.1/24) and trusts the key in
/// `b_peer_key`; `extra_b` is appended to gw-b's (more sections).
pub fn configs(
    k: &Keys,
    ingress_a: &str,
    b_peer_key: &str,
    extra_b: &str,
) -> (Arc<Config>, Arc<Config>) {
    configs_sized(k, Sizes::SCENARIOS, ingress_a, b_peer_key, extra_b)
}

/// [`configs`] with buffers of `sizes`.
pub fn configs_sized(
    k: &Keys,
    sizes: Sizes,
    ingress_a: &str,
    b_peer_key: &str,
    extra_b: &str,
) -> (Arc<Config>, Arc<Config>) {
    let Sizes {
        data_flows,
        wan_buffer,
        lan_buffer,
        listen_backlog,
    } = sizes;
    // The same sizes and timeouts on both ends.
    let wan = format!(
        "[wan]\ndata_flows = {data_flows}\nsocket_buffer_bytes = {wan_buffer}\n\
         flow_timeout_secs = 2\ngrace_period_secs = 20\n"
    );
    let dpdk = format!(
        "[dpdk]\nlan_socket_buffer_bytes = {lan_buffer}\nlisten_backlog = {listen_backlog}\n"
    );
    let a = format!(
        r#"
[gateway]
name = "gw-a"
private_key_file = "a.key"
datapath = "dpdk"
[peer]
name = "gw-b"
public_key_file = "b.key.pub"
connect = "10.0.2.2:7700"
{wan}[egress]
connect_timeout_ms = 3000
{ingress_a}
{dpdk}[dpdk.lan]
device = "lan-a"
address = "10.0.1.1/24"
intercept = ["10.0.3.0/24"]
[dpdk.wan]
device = "wan-a"
address = "10.0.2.1/24"
"#
    );
    let b = format!(
        r#"
[gateway]
name = "gw-b"
private_key_file = "b.key"
tunnel_listen = "10.0.2.2:7700"
datapath = "dpdk"
[peer]
name = "gw-a"
public_key_file = "{b_peer_key}"
{wan}{extra_b}
{dpdk}[dpdk.lan]
device = "lan-b"
address = "10.0.3.1/24"
[dpdk.wan]
device = "wan-b"
address = "10.0.2.2/24"
"#
    );
    let parse = |name: &str, text: &str| {
        Arc::new(Config::parse(&k.dir.join(name), text).unwrap_or_else(|e| panic!("{e}")))
    };
    (parse("a.toml", &a), parse("b.toml", &b))
}

/// gw-a's ingress: listens on 10.0.1.1:6000 for the destination 10.0.3.2:5000.
pub const LISTEN_INGRESS: &str = r#"
[[ingress]]
mode = "listen"
bind = "10.0.1.1:6000"
target = "10.0.3.2:5000"
"#;

/// gw-b's egress: the destination may be reached.
pub const ALLOW_DST: &str = r#"
[egress]
allow = ["10.0.3.2:5000"]
"#;

/// A host (a plain smoltcp stack) at `addr`/24 with MAC `02:00:00:00:00:mac`.
pub fn host(addr: [u8; 4], gateway: Option<[u8; 4]>, mac: u8, now: u64) -> Net<MemPort> {
    let spec = PortSpec {
        device: "host".into(),
        address: addr.into(),
        prefix_len: 24,
        gateway: gateway.map(Into::into),
        intercept: Vec::new(),
        mtu: 1500,
    };
    Net::new(
        MemPort::default(),
        [2, 0, 0, 0, 0, mac],
        &spec,
        mac as u64,
        now,
    )
}

pub type SimEngine = Engine<MemPort, InlineCrypto>;

/// An engine for `config` on in-memory ports with MACs `02:00:00:00:n:1`
/// (LAN) and `…:n:2` (WAN), crypto inline.
pub fn engine(config: Arc<Config>, stats: Arc<Stats>, n: u8, now: u64) -> SimEngine {
    packing_engine(config, stats, n, now, None)
}

/// The same, its crypto stage packing data frames by `packing`.
pub fn packing_engine(
    config: Arc<Config>,
    stats: Arc<Stats>,
    n: u8,
    now: u64,
    packing: Option<Arc<crate::transform::PackPolicy>>,
) -> SimEngine {
    let ports = Ports {
        lan: MemPort::default(),
        lan_mac: [2, 0, 0, 0, n, 1],
        wan: MemPort::default(),
        wan_mac: [2, 0, 0, 0, n, 2],
    };
    Engine::new(
        config,
        stats,
        ports,
        InlineCrypto::with_packing(packing),
        now,
    )
}

/// The whole picture: source host ─ LAN ─ gw-a ═ WAN ═ gw-b ─ LAN ─ destination host.
pub struct Sim {
    pub now: u64,
    pub a: SimEngine,
    pub b: SimEngine,
    /// The source hypervisor, 10.0.1.2 behind gw-a.
    pub src: Net<MemPort>,
    /// The destination, 10.0.3.2 behind gw-b.
    pub dst: Net<MemPort>,
    pub lan_a: Wire,
    pub wan: Wire,
    pub lan_b: Wire,
    pub stats_a: Arc<Stats>,
    pub stats_b: Arc<Stats>,
    /// CPU time spent in each engine's `poll` (the TCP lcore's work).
    pub busy_a: std::time::Duration,
    pub busy_b: std::time::Duration,
}

impl Sim {
    pub fn new(a: Arc<Config>, b: Arc<Config>, wan_delay_us: u64) -> Sim {
        Sim::packing(a, b, wan_delay_us, None)
    }

    /// A pair whose crypto stages pack data frames by `packing` (both use the one policy).
    pub fn packing(
        a: Arc<Config>,
        b: Arc<Config>,
        wan_delay_us: u64,
        packing: Option<Arc<crate::transform::PackPolicy>>,
    ) -> Sim {
        let _ = env_logger::builder().is_test(true).try_init();
        let now = 1_000_000;
        let (stats_a, stats_b) = (Arc::new(Stats::default()), Arc::new(Stats::default()));
        Sim {
            now,
            a: packing_engine(a, stats_a.clone(), 0xa, now, packing.clone()),
            b: packing_engine(b, stats_b.clone(), 0xb, now, packing),
            src: host([10, 0, 1, 2], Some([10, 0, 1, 1]), 0x12, now),
            dst: host([10, 0, 3, 2], Some([10, 0, 3, 1]), 0x32, now),
            lan_a: Wire::new(50),
            wan: Wire::new(wan_delay_us),
            lan_b: Wire::new(50),
            stats_a,
            stats_b,
            busy_a: std::time::Duration::ZERO,
            busy_b: std::time::Duration::ZERO,
        }
    }

    /// One step of simulated time: every stack polls, the wires carry.
    pub fn step(&mut self) {
        self.now += STEP_US;
        let now = self.now;
        self.src.poll(now);
        let t = std::time::Instant::now();
        self.a.poll(now);
        self.busy_a += t.elapsed();
        let t = std::time::Instant::now();
        self.b.poll(now);
        self.busy_b += t.elapsed();
        self.dst.poll(now);
        self.lan_a
            .carry(now, &mut self.src.port, &mut self.a.lan.port);
        self.wan
            .carry(now, &mut self.a.wan.port, &mut self.b.wan.port);
        self.lan_b
            .carry(now, &mut self.b.lan.port, &mut self.dst.port);
    }

    /// Steps until `done` or `limit_s` simulated seconds pass.
    pub fn run_until(&mut self, limit_s: u64, mut done: impl FnMut(&mut Sim) -> bool) -> bool {
        let end = self.now + limit_s * 1_000_000;
        while self.now < end {
            self.step();
            if done(self) {
                return true;
            }
        }
        false
    }

    /// Both ends have a keyed control connection and every data flow.
    pub fn tunnel_up(&mut self) -> bool {
        let up = |e: &SimEngine| {
            e.link.tunnel.as_ref().is_some_and(|t| {
                e.tunnel_is_up()
                    && (0..t.table.flow_count()).all(|k| {
                        t.table
                            .flow(k)
                            .and_then(|c| e.conns.get(&c))
                            .is_some_and(|c| c.is_keyed())
                    })
            })
        };
        up(&self.a) && up(&self.b)
    }

    /// The source dials `to`; the app sends `out`.
    pub fn connect_src(&mut self, to: ([u8; 4], u16), out: Vec<u8>) -> App {
        let h = self.src.add_socket(1 << 20, 1 << 20);
        self.src
            .connect(h, std::net::SocketAddrV4::new(to.0.into(), to.1))
            .unwrap();
        App::new(h, out)
    }

    /// `n` listening sockets on the destination's `port`.
    pub fn listen_dst(&mut self, port: u16, n: usize) -> Vec<SocketHandle> {
        (0..n)
            .map(|_| {
                let h = self.dst.add_socket(1 << 20, 1 << 20);
                self.dst.socket(h).listen(port).unwrap();
                h
            })
            .collect()
    }
}

/// Both gateways with `shards` TCP lcores (engines) each, as the appliance runs them: each
/// port's received frames are steered to its shards as the I/O lcore does
/// ([`crate::frames::steer`]), and what every shard sends leaves by the one port.
pub struct ShardedSim {
    pub now: u64,
    pub a: Vec<SimEngine>,
    pub b: Vec<SimEngine>,
    pub src: Net<MemPort>,
    pub dst: Net<MemPort>,
    pub lan_a: Wire,
    pub wan: Wire,
    pub lan_b: Wire,
    pub stats_a: Arc<Stats>,
    pub stats_b: Arc<Stats>,
    /// Each gateway port as its wire sees it: [lan a, wan a, wan b, lan b].
    nics: [MemPort; 4],
}

/// `count` engines of one gateway, one per shard, on ports with the same MACs.
fn shards(config: &Arc<Config>, stats: &Arc<Stats>, n: u8, count: u8, now: u64) -> Vec<SimEngine> {
    (0..count)
        .map(|index| {
            let ports = Ports {
                lan: MemPort::default(),
                lan_mac: [2, 0, 0, 0, n, 1],
                wan: MemPort::default(),
                wan_mac: [2, 0, 0, 0, n, 2],
            };
            let shard =
                crate::protocol::handshake::Shard::new(index, count).expect("index < count");
            Engine::for_shard(
                config.clone(),
                stats.clone(),
                ports,
                InlineCrypto::with_packing(None),
                shard,
                now,
            )
        })
        .collect()
}

/// Moves what the shards' ends of a port sent to the port, and steers what the port
/// received to the shards' ends (ARP to every one).
fn switch(nic: &mut MemPort, ends: Vec<&mut MemPort>) {
    let count = ends.len() as u8;
    let mut ends = ends;
    for end in ends.iter_mut() {
        nic.outbox.extend(end.outbox.drain(..));
    }
    while let Some(frame) = nic.inbox.pop_front() {
        match crate::frames::steer::steer(&frame, count) {
            crate::frames::steer::Steer::To(k) => ends[k as usize].inbox.push_back(frame),
            crate::frames::steer::Steer::All => {
                for end in ends.iter_mut() {
                    end.inbox.push_back(frame.clone());
                }
            }
        }
    }
}

impl ShardedSim {
    /// gw-a with `shards_a` TCP lcores, gw-b with `shards_b`.
    pub fn new(
        a: Arc<Config>,
        b: Arc<Config>,
        shards_a: u8,
        shards_b: u8,
        wan_delay_us: u64,
    ) -> ShardedSim {
        let _ = env_logger::builder().is_test(true).try_init();
        let now = 1_000_000;
        let (stats_a, stats_b) = (Arc::new(Stats::default()), Arc::new(Stats::default()));
        ShardedSim {
            now,
            a: shards(&a, &stats_a, 0xa, shards_a, now),
            b: shards(&b, &stats_b, 0xb, shards_b, now),
            src: host([10, 0, 1, 2], Some([10, 0, 1, 1]), 0x12, now),
            dst: host([10, 0, 3, 2], Some([10, 0, 3, 1]), 0x32, now),
            lan_a: Wire::new(50),
            wan: Wire::new(wan_delay_us),
            lan_b: Wire::new(50),
            stats_a,
            stats_b,
            nics: Default::default(),
        }
    }

    /// One step of simulated time: every stack polls, the ports steer, the wires carry.
    pub fn step(&mut self) {
        self.now += STEP_US;
        let now = self.now;
        self.src.poll(now);
        for e in self.a.iter_mut().chain(&mut self.b) {
            e.poll(now);
        }
        self.dst.poll(now);
        let [lan_a, wan_a, wan_b, lan_b] = &mut self.nics;
        switch(lan_a, self.a.iter_mut().map(|e| &mut e.lan.port).collect());
        switch(wan_a, self.a.iter_mut().map(|e| &mut e.wan.port).collect());
        switch(wan_b, self.b.iter_mut().map(|e| &mut e.wan.port).collect());
        switch(lan_b, self.b.iter_mut().map(|e| &mut e.lan.port).collect());
        self.lan_a.carry(now, &mut self.src.port, lan_a);
        self.wan.carry(now, wan_a, wan_b);
        self.lan_b.carry(now, lan_b, &mut self.dst.port);
    }

    /// Steps until `done` or `limit_s` simulated seconds pass.
    pub fn run_until(
        &mut self,
        limit_s: u64,
        mut done: impl FnMut(&mut ShardedSim) -> bool,
    ) -> bool {
        let end = self.now + limit_s * 1_000_000;
        while self.now < end {
            self.step();
            if done(self) {
                return true;
            }
        }
        false
    }

    /// Every shard of both gateways has its sub-tunnel up.
    pub fn tunnels_up(&self) -> bool {
        self.a.iter().chain(&self.b).all(|e| e.tunnel_is_up())
    }
}

/// Pairs accepted destination sockets with apps that send `reply(i)`.
pub fn accept_apps(
    sim: &mut Sim,
    handles: &[SocketHandle],
    apps: &mut Vec<App>,
    reply: &dyn Fn(usize) -> Vec<u8>,
) {
    for &h in handles {
        if apps.iter().any(|a| a.handle == h) {
            continue;
        }
        if sim.dst.socket(h).state() != tcp::State::Listen {
            let i = apps.len();
            apps.push(App::new(h, reply(i)));
        }
    }
}
/// A host on a gateway's WAN segment that is not its peer (10.0.2.66, MAC
/// [`Attacker::MAC`]): it dials the tunnel port and sends whatever it is told.
pub struct Attacker {
    pub net: Net<MemPort>,
}

impl Attacker {
    pub const MAC: [u8; 6] = [2, 0, 0, 0, 0, 0x66];

    pub fn new(now: u64) -> Attacker {
        Attacker {
            net: host([10, 0, 2, 66], None, Self::MAC[5], now),
        }
    }

    /// Opens a TCP connection to `to` (usually the tunnel port).
    pub fn dial(&mut self, to: SocketAddrV4) -> Option<SocketHandle> {
        let h = self.net.add_socket(1 << 16, 1 << 16);
        self.net.connect(h, to).ok().map(|()| h)
    }

    /// Puts it on a segment: what it sent joins `towards` (frames on their
    /// way to the gateway), and the frames in `back` addressed to its MAC
    /// are taken out and delivered to it.
    pub fn exchange(&mut self, towards: &mut VecDeque<Vec<u8>>, back: &mut VecDeque<Vec<u8>>) {
        towards.extend(self.net.port.outbox.drain(..));
        let mine = |f: &Vec<u8>| f.get(..6) == Some(&Self::MAC[..]);
        self.net
            .port
            .inbox
            .extend(back.iter().filter(|f| mine(f)).cloned());
        back.retain(|f| !mine(f));
    }
}

/// One end of an in-memory Ethernet link, for tests and simulations: frames
/// sent here appear in `outbox`; frames to receive are put in `inbox` by
/// whoever plays the wire.
#[derive(Default)]
pub struct MemPort {
    pub inbox: VecDeque<Vec<u8>>,
    pub outbox: VecDeque<Vec<u8>>,
    pub tx_drops: u64,
    /// Frames the outbox may hold before `can_send` says no (0: unlimited).
    pub outbox_limit: usize,
}

impl FramePort for MemPort {
    type Rx = Vec<u8>;
    type Tx = Vec<u8>;

    fn recv(&mut self) -> Option<Vec<u8>> {
        self.inbox.pop_front()
    }

    fn can_send(&self) -> bool {
        self.outbox_limit == 0 || self.outbox.len() < self.outbox_limit
    }

    fn tx_buffer(&mut self, len: usize) -> Option<Vec<u8>> {
        self.can_send().then(|| vec![0; len])
    }

    fn send(&mut self, frame: Vec<u8>) {
        self.outbox.push_back(frame);
    }

    fn mtu(&self) -> usize {
        1500
    }

    fn note_tx_drop(&mut self) {
        self.tx_drops += 1;
    }
}

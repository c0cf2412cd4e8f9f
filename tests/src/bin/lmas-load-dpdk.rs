//! `lmas-load-dpdk`: lmas-load's source and sink on a DPDK port, over the same userspace TCP
//! stack as the DPDK datapath (`lmas::dpdk::net`), so that a gateway pair can be measured
//! with no kernel anywhere in the path (memif ports: `scripts/bench-memif.sh`).
//!
//! ```text
//! lmas-load-dpdk --eal "EAL ARGS" --device NAME --address A.B.C.D/N [--gateway G]
//!     source --connect IP:PORT --bytes N [--streams K] [--seed S]
//!     sink --listen PORT [--count K]
//! ```
//!
//! The EAL needs two lcores: the main one runs the stack and the streams, the first worker
//! polls the port (`lmas::dpdk::port::run_io`, as in the gateway). Result lines as lmas-load's:
//! per stream `bytes=N sha256=HEX secs=S mbit_s=R` (the source: connect to the peer's close,
//! stream K has seed S+K; the sink: accept to EOF), then `total bytes=N secs=S mbit_s=R`
//! (first start to last end).

use std::net::{Ipv4Addr, SocketAddrV4};
use std::process::ExitCode;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Instant;

use lmas::admin::appliance::RoleCounters;
use lmas::admin::dpdk::{parse_cidr, PortSpec};
use lmas::dpdk::net::Net;
use lmas::dpdk::port::{open_port, run_io, RingPort};
use lmas::dpdk::Idle;
use lmas_dpdk::Eal;
use lmas_tests::{hex, parse_size, DataGen};
use sha2::{Digest, Sha256};
use smoltcp::iface::SocketHandle;
use smoltcp::socket::tcp;

const USAGE: &str = "usage: lmas-load-dpdk --eal \"EAL ARGS\" --device NAME --address A.B.C.D/N \
[--gateway G] (source --connect IP:PORT --bytes N [--streams K] [--seed S] | sink --listen PORT [--count K])";
/// Socket buffers of each stream: a LAN endpoint's (the gateway's default LAN buffer).
const SOCKET_BUFFER: usize = 4 << 20;
const CHUNK: usize = 64 * 1024;

struct Options {
    eal: Vec<String>,
    spec: PortSpec,
    role: Role,
}

enum Role {
    Source {
        to: SocketAddrV4,
        bytes: u64,
        streams: usize,
        seed: u64,
    },
    Sink {
        port: u16,
        count: usize,
    },
}

fn options() -> Result<Options, String> {
    let mut args = std::env::args().skip(1);
    let (mut eal, mut device, mut address, mut gateway) = (None, None, None, None);
    let mut role = None;
    let (mut connect, mut bytes, mut streams, mut seed, mut listen, mut count) =
        (None, None, 1usize, 1u64, None, 1usize);
    while let Some(a) = args.next() {
        let mut value = || args.next().ok_or(format!("{a} needs a value; {USAGE}"));
        let number = |v: String, what: &str| {
            v.parse::<u64>()
                .map_err(|_| format!("{what}: not a number: {v}"))
        };
        match a.as_str() {
            "--eal" => eal = Some(value()?),
            "--device" => device = Some(value()?),
            "--address" => address = Some(value()?),
            "--gateway" => gateway = Some(value()?),
            "source" | "sink" => role = Some(a.clone()),
            "--connect" => connect = Some(value()?),
            "--bytes" => bytes = Some(parse_size(&value()?).map_err(|e| format!("--bytes: {e}"))?),
            "--streams" => streams = number(value()?, "--streams")?.max(1) as usize,
            "--seed" => seed = number(value()?, "--seed")?,
            "--listen" => listen = Some(number(value()?, "--listen")? as u16),
            "--count" => count = number(value()?, "--count")?.max(1) as usize,
            "-h" | "--help" => {
                println!("{USAGE}");
                std::process::exit(0);
            }
            other => return Err(format!("unknown argument {other}; {USAGE}")),
        }
    }
    let need = |v: Option<String>, what: &str| v.ok_or(format!("{what} is required; {USAGE}"));
    let (addr, prefix_len) = parse_cidr(&need(address, "--address")?)?;
    let spec = PortSpec {
        device: need(device, "--device")?,
        address: addr,
        prefix_len,
        gateway: gateway
            .map(|g| {
                g.parse::<Ipv4Addr>()
                    .map_err(|_| format!("--gateway: {g:?}"))
            })
            .transpose()?,
        intercept: Vec::new(),
        mtu: 1500,
    };
    let role = match role.as_deref() {
        Some("source") => Role::Source {
            to: need(connect, "--connect")?
                .parse()
                .map_err(|_| "--connect: not IP:PORT".to_string())?,
            bytes: bytes.ok_or(format!("--bytes is required; {USAGE}"))?,
            streams,
            seed,
        },
        Some("sink") => Role::Sink {
            port: listen.ok_or(format!("--listen is required; {USAGE}"))?,
            count,
        },
        _ => return Err(format!("say source or sink; {USAGE}")),
    };
    Ok(Options {
        eal: need(eal, "--eal")?
            .split_whitespace()
            .map(str::to_string)
            .collect(),
        spec,
        role,
    })
}

/// One stream of the source: a deterministic byte stream, hashed as it is generated.
struct Outgoing {
    handle: SocketHandle,
    gen: DataGen,
    hash: Sha256,
    total: u64,
    generated: u64,
    buf: Vec<u8>,
    off: usize,
    started: Option<u64>,
    done: Option<(u64, String)>,
}

/// One connection of the sink.
struct Incoming {
    handle: SocketHandle,
    hash: Sha256,
    bytes: u64,
    started: u64,
    done: Option<(u64, String)>,
}

fn main() -> ExitCode {
    match options().and_then(run) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("lmas-load-dpdk: error: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run(o: Options) -> Result<(), String> {
    let eal = Eal::init(&o.eal).map_err(|e| format!("--eal: {e}"))?;
    let io_lcore = *eal
        .worker_lcores()
        .first()
        .ok_or("the EAL needs a worker lcore for the port (e.g. -l 0-1)")?;
    let mut port = open_port("lan", &o.spec, 8191, true, 1)
        .map_err(|(field, why)| format!("{field}: {why}"))?;
    let stop = Arc::new(AtomicBool::new(false));
    let io_stop = stop.clone();
    let io = port
        .io
        .ok_or("the port was opened without its I/O lcore end")?;
    eal.launch(io_lcore, move || {
        let counters = RoleCounters::default();
        run_io(vec![io], &io_stop, &Idle { sleep_us: 20 }, &counters);
        0
    })
    .map_err(|e| format!("launching the I/O lcore: {e}"))?;
    let epoch = Instant::now();
    let now = || epoch.elapsed().as_micros() as u64 + 1;
    let ring = port
        .rings
        .pop()
        .ok_or("the port was opened without a ring")?;
    // Source ports start where the last run's did not: a port reused at once can meet the
    // gateway's socket of the previous run still closing, and wait out SYN backoff.
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
        ^ (std::process::id() as u64) << 20;
    let mut net = Net::new(ring, port.mac, &o.spec, seed, now());
    let result = match o.role {
        Role::Source {
            to,
            bytes,
            streams,
            seed,
        } => source(&mut net, &now, to, bytes, streams, seed),
        Role::Sink { port, count } => sink(&mut net, &now, port, count),
    };
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    eal.wait(io_lcore);
    result
}

fn new_socket(net: &mut Net<RingPort>) -> SocketHandle {
    let h = net.add_socket(SOCKET_BUFFER, SOCKET_BUFFER);
    net.socket(h).set_nagle_enabled(false);
    h
}

fn source(
    net: &mut Net<RingPort>,
    now: &dyn Fn() -> u64,
    to: SocketAddrV4,
    bytes: u64,
    streams: usize,
    seed: u64,
) -> Result<(), String> {
    let mut out = Vec::new();
    for k in 0..streams {
        let handle = new_socket(net);
        net.connect(handle, to)
            .map_err(|e| format!("connect to {to}: {e}"))?;
        out.push(Outgoing {
            handle,
            gen: DataGen::new(seed + k as u64),
            hash: Sha256::new(),
            total: bytes,
            generated: 0,
            buf: vec![0; CHUNK],
            off: CHUNK,
            started: None,
            done: None,
        });
    }
    let deadline = now() + 3_600_000_000;
    while out.iter().any(|s| s.done.is_none()) {
        let t = now();
        if t > deadline {
            return Err("no end after an hour".into());
        }
        net.poll(t);
        for s in out.iter_mut().filter(|s| s.done.is_none()) {
            let sock = net.socket(s.handle);
            match sock.state() {
                tcp::State::SynSent | tcp::State::SynReceived => continue,
                tcp::State::Closed | tcp::State::TimeWait
                    if s.started.is_some() && s.off == s.buf.len() && s.generated == s.total =>
                {
                    s.done = Some((t, hex(&std::mem::take(&mut s.hash).finalize())));
                    continue;
                }
                tcp::State::Closed => return Err(format!("connection to {to} reset or refused")),
                _ => {}
            }
            s.started.get_or_insert(t);
            while sock.can_send() {
                if s.off == s.buf.len() {
                    if s.generated == s.total {
                        sock.close();
                        break;
                    }
                    let n = (s.total - s.generated).min(CHUNK as u64) as usize;
                    s.buf.resize(n, 0);
                    s.gen.fill(&mut s.buf);
                    s.hash.update(&s.buf);
                    s.generated += n as u64;
                    s.off = 0;
                }
                match sock.send_slice(&s.buf[s.off..]) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => s.off += n,
                }
            }
            // The peer's data (none expected) is drained so its FIN is seen.
            while sock.can_recv() {
                let mut sink = [0u8; 4096];
                if sock.recv_slice(&mut sink).unwrap_or(0) == 0 {
                    break;
                }
            }
        }
        net.poll(now());
    }
    report(out.iter().map(|s| {
        let (end, sha) = s.done.clone().expect("all done");
        (s.total, sha, s.started.unwrap_or(end), end)
    }));
    Ok(())
}

fn sink(
    net: &mut Net<RingPort>,
    now: &dyn Fn() -> u64,
    port: u16,
    count: usize,
) -> Result<(), String> {
    let mut listeners: Vec<SocketHandle> = Vec::new();
    let mut conns: Vec<Incoming> = Vec::new();
    let listen = |net: &mut Net<RingPort>| -> Result<SocketHandle, String> {
        let h = new_socket(net);
        net.socket(h)
            .listen(port)
            .map_err(|e| format!("listen on port {port}: {e}"))?;
        Ok(h)
    };
    for _ in 0..count {
        listeners.push(listen(net)?);
    }
    eprintln!("listening on {}:{port}", net.addr);
    let mut buf = vec![0u8; CHUNK];
    while conns.len() < count || conns.iter().any(|c| c.done.is_none()) {
        let t = now();
        net.poll(t);
        listeners.retain(|&h| {
            if net.socket(h).state() == tcp::State::Listen {
                return true;
            }
            conns.push(Incoming {
                handle: h,
                hash: Sha256::new(),
                bytes: 0,
                started: t,
                done: None,
            });
            false
        });
        for c in conns.iter_mut().filter(|c| c.done.is_none()) {
            let sock = net.socket(c.handle);
            if sock.state() == tcp::State::SynReceived {
                continue;
            }
            while sock.can_recv() {
                match sock.recv_slice(&mut buf) {
                    Ok(n) if n > 0 => {
                        c.hash.update(&buf[..n]);
                        c.bytes += n as u64;
                    }
                    _ => break,
                }
            }
            if !sock.may_recv() && !sock.can_recv() {
                if matches!(sock.state(), tcp::State::Closed) && c.bytes == 0 {
                    return Err("a connection was reset before any data".into());
                }
                sock.close();
                c.done = Some((t, hex(&std::mem::take(&mut c.hash).finalize())));
            }
        }
        net.poll(now());
    }
    // Let the FINs and last ACKs out.
    let until = now() + 200_000;
    while now() < until {
        net.poll(now());
    }
    report(conns.iter().map(|c| {
        let (end, sha) = c.done.clone().expect("all done");
        (c.bytes, sha, c.started, end)
    }));
    Ok(())
}

/// One line per stream, then the total: first start to last end.
fn report(streams: impl Iterator<Item = (u64, String, u64, u64)>) {
    let (mut total, mut first, mut last) = (0u64, u64::MAX, 0u64);
    for (bytes, sha, start, end) in streams {
        let secs = end.saturating_sub(start) as f64 / 1e6;
        println!(
            "bytes={bytes} sha256={sha} secs={secs:.6} mbit_s={:.1}",
            bytes as f64 * 8.0 / secs.max(1e-9) / 1e6
        );
        total += bytes;
        first = first.min(start);
        last = last.max(end);
    }
    let secs = last.saturating_sub(first) as f64 / 1e6;
    println!(
        "total bytes={total} secs={secs:.6} mbit_s={:.1}",
        total as f64 * 8.0 / secs.max(1e-9) / 1e6
    );
}

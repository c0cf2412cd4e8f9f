//! One port's userspace TCP/IP stack: a smoltcp interface and its sockets
//! over a [`FramePort`], with the port's address, routes and (LAN side in
//! transparent mode) interception of other hosts' addresses.
//!
//! Transparent interception uses smoltcp's any-IP mode, which accepts IP
//! packets for every address *and answers ARP for every address*. The
//! latter would steal other hosts' traffic on the LAN, so [`Guard`] filters
//! frames before the stack sees them ([`StackFilter`]: ARP only for our own address, IPv4
//! only for our address or an intercepted prefix). On the WAN port of an
//! accepting gateway it also carries the tunnel port's [`TunnelGate`].
//!
//! Listening sockets can be watched ([`Net::watch`]): the stack reports the
//! SYNs they took ([`Net::take_syns`]) and, separately, the connections
//! whose handshake completed ([`Net::take_accepted`]), so that nothing is
//! opened on behalf of a bare SYN.

use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};

use smoltcp::iface::{
    Config, Interface, PollIngressSingleResult, PollResult, SocketHandle, SocketSet,
};
use smoltcp::socket::tcp;
use smoltcp::time::Instant;
use smoltcp::wire::{EthernetAddress, HardwareAddress, IpAddress, IpCidr, IpEndpoint, Ipv4Cidr};

use super::phy::{FramePort, PortDevice};
use crate::admin::dpdk::PortSpec;
use crate::frames::steer::{pick_port, EPHEMERAL};
use crate::frames::{StackFilter, Verdict};
use crate::protocol::handshake::Shard;

mod gate;
pub use gate::TunnelGate;

/// What frames reach the stack: the port's filter, then the tunnel port's gate for IPv4 to
/// our own address.
struct Guard {
    filter: StackFilter,
    /// SYNs to the tunnel port (accepting gateway's WAN port).
    gate: Option<TunnelGate>,
}

impl Guard {
    fn admits(&mut self, frame: &[u8]) -> bool {
        match self.filter.verdict(frame) {
            Verdict::Drop => false,
            Verdict::Pass => true,
            Verdict::Own => self.gate.as_mut().is_none_or(|g| g.admits(frame)),
        }
    }
}

/// A filtering view of a port for the stack (see [`Guard`]).
struct Guarded<'a, P> {
    port: &'a mut P,
    guard: &'a mut Guard,
    dropped: &'a mut u64,
}

impl<P: FramePort> FramePort for Guarded<'_, P> {
    type Rx = P::Rx;
    type Tx = P::Tx;

    fn recv(&mut self) -> Option<P::Rx> {
        loop {
            let frame = self.port.recv()?;
            if self.guard.admits(frame.as_ref()) {
                return Some(frame);
            }
            *self.dropped += 1;
        }
    }

    fn can_send(&self) -> bool {
        self.port.can_send()
    }

    fn tx_buffer(&mut self, len: usize) -> Option<P::Tx> {
        self.port.tx_buffer(len)
    }

    fn send(&mut self, frame: P::Tx) {
        self.port.send(frame)
    }

    fn mtu(&self) -> usize {
        self.port.mtu()
    }

    fn note_tx_drop(&mut self) {
        self.port.note_tx_drop()
    }

    fn flush(&mut self) {
        self.port.flush()
    }
}

/// How a socket leaves the stack.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Retire {
    /// Reset now (RST).
    Abort,
    /// Close (FIN after what is queued); reset if still not closed at this time (µs).
    Close { by: u64 },
}

/// One port's stack.
pub struct Net<P: FramePort> {
    pub port: P,
    iface: Interface,
    pub sockets: SocketSet<'static>,
    guard: Guard,
    pub addr: Ipv4Addr,
    next_port: u16,
    /// Our outgoing connections take source ports that steer to this shard.
    pub shard: Shard,
    /// Frames the guard kept from the stack (other hosts' ARP, foreign IPs).
    pub filtered: u64,
    /// Sockets on their way out: deadline (µs), and the poll count when
    /// retired (a socket stays through one more poll, so its RST or last
    /// ACK goes out before it is removed).
    retired: Vec<(SocketHandle, u64, u64)>,
    polls: u64,
    /// Listening sockets watched, sockets that left listening (SYN taken)
    /// and whose handshake is under way, and the reports for the owner.
    watch: Vec<SocketHandle>,
    embryonic: Vec<SocketHandle>,
    syns: Vec<SocketHandle>,
    taken: Vec<SocketHandle>,
}

impl<P: FramePort> Net<P> {
    /// Sets up the interface: `mac`, the port's address and prefix, a
    /// default route if the spec has a gateway, and any-IP with routes for
    /// the intercepted prefixes.
    pub fn new(mut port: P, mac: [u8; 6], spec: &PortSpec, seed: u64, now: u64) -> Self {
        let mut config = Config::new(HardwareAddress::Ethernet(EthernetAddress(mac)));
        config.random_seed = seed;
        let mut iface = Interface::new(config, &mut PortDevice(&mut port), instant(now));
        let own = spec.address;
        iface.update_ip_addrs(|addrs| {
            let cidr = IpCidr::Ipv4(Ipv4Cidr::new(own, spec.prefix_len));
            addrs.push(cidr).expect("room for one address");
        });
        iface.routes_mut().update(|routes| {
            if let Some(gw) = spec.gateway {
                let _ = routes.push(smoltcp::iface::Route::new_ipv4_gateway(gw));
            }
            // any-IP accepts a packet for a foreign address when a route
            // covers it "via" one of our own addresses.
            for &(net, len) in &spec.intercept {
                let _ = routes.push(smoltcp::iface::Route {
                    cidr: IpCidr::Ipv4(Ipv4Cidr::new(net, len)),
                    via_router: IpAddress::Ipv4(own),
                    preferred_until: None,
                    expires_at: None,
                });
            }
        });
        iface.set_any_ip(!spec.intercept.is_empty());
        Net {
            port,
            iface,
            sockets: SocketSet::new(Vec::new()),
            guard: Guard {
                filter: StackFilter {
                    own,
                    intercept: spec.intercept.clone(),
                },
                gate: None,
            },
            addr: own,
            next_port: *EPHEMERAL.start() + (seed % 8192) as u16,
            shard: Shard::ONE,
            filtered: 0,
            retired: Vec::new(),
            polls: 0,
            watch: Vec::new(),
            embryonic: Vec::new(),
            syns: Vec::new(),
            taken: Vec::new(),
        }
    }

    /// Puts the tunnel port's gate in front of the stack.
    pub fn set_gate(&mut self, gate: TunnelGate) {
        self.guard.gate = Some(gate);
    }

    pub fn gate_mut(&mut self) -> Option<&mut TunnelGate> {
        self.guard.gate.as_mut()
    }

    /// The gate, with the sockets of its half-open connections.
    pub fn gate_with_sockets(&mut self) -> Option<(&mut TunnelGate, &SocketSet<'static>)> {
        Some((self.guard.gate.as_mut()?, &self.sockets))
    }

    /// Moves packets: everything received is processed, everything the
    /// sockets want to send is sent. True if any socket may have changed.
    pub fn poll(&mut self, now: u64) -> bool {
        self.reap(now);
        self.polls += 1;
        if let Some(g) = &mut self.guard.gate {
            g.now = now;
        }
        let mut dev = Guarded {
            port: &mut self.port,
            guard: &mut self.guard,
            dropped: &mut self.filtered,
        };
        let t = instant(now);
        let mut changed = false;
        self.iface.poll_maintenance(t);
        // Ingress one packet at a time, so listeners that take a connection
        // are seen in the order the SYNs arrived (see `watch`).
        loop {
            match self
                .iface
                .poll_ingress_single(t, &mut PortDevice(&mut dev), &mut self.sockets)
            {
                PollIngressSingleResult::None => break,
                PollIngressSingleResult::PacketProcessed => {}
                PollIngressSingleResult::SocketStateChanged => {
                    changed = true;
                    note_syns(
                        &self.sockets,
                        &mut self.watch,
                        &mut self.embryonic,
                        &mut self.syns,
                    );
                }
            }
        }
        if changed {
            note_established(&self.sockets, &mut self.embryonic, &mut self.taken);
        }
        while self
            .iface
            .poll_egress(t, &mut PortDevice(&mut dev), &mut self.sockets)
            != PollResult::None
        {
            changed = true;
        }
        self.port.flush();
        changed
    }

    /// Listening sockets to watch: when one takes a SYN it is reported by
    /// [`Net::take_syns`], and once its handshake completes by
    /// [`Net::take_accepted`], in arrival order. Some hypervisors (QEMU
    /// before 8.0) tell their migration channels apart by the order the
    /// destination accepts them, so that order must survive the tunnel.
    pub fn watch(&mut self, h: SocketHandle) {
        self.watch.push(h);
    }

    /// Watched sockets that took a SYN since the last call, oldest first.
    pub fn take_syns(&mut self) -> std::vec::Drain<'_, SocketHandle> {
        self.syns.drain(..)
    }

    /// Watched sockets whose handshake completed since the last call: in
    /// the order the handshakes completed (the order of their SYNs among
    /// those that completed in the same poll).
    pub fn take_accepted(&mut self) -> std::vec::Drain<'_, SocketHandle> {
        self.taken.drain(..)
    }

    /// Stops watching `h` (closed while listening or half-open).
    pub fn unwatch(&mut self, h: SocketHandle) {
        self.watch.retain(|&w| w != h);
        self.embryonic.retain(|&w| w != h);
    }

    /// A new TCP socket with the given buffer sizes.
    pub fn add_socket(&mut self, rx: usize, tx: usize) -> SocketHandle {
        let s = tcp::Socket::new(
            tcp::SocketBuffer::new(vec![0; rx]),
            tcp::SocketBuffer::new(vec![0; tx]),
        );
        self.sockets.add(s)
    }

    pub fn socket(&mut self, h: SocketHandle) -> &mut tcp::Socket<'static> {
        self.sockets.get_mut::<tcp::Socket>(h)
    }

    pub fn remove(&mut self, h: SocketHandle) {
        self.sockets.remove(h);
    }

    /// Takes a socket out of use: reset or closed as `how` says, removed
    /// once closed (never before the next poll).
    pub fn retire(&mut self, h: SocketHandle, how: Retire, now: u64) {
        let s = self.socket(h);
        let by = match how {
            Retire::Abort => {
                s.abort();
                now
            }
            Retire::Close { by } => {
                s.close();
                by
            }
        };
        self.retired.push((h, by, self.polls));
    }

    fn reap(&mut self, now: u64) {
        let polls = self.polls;
        let mut keep = Vec::with_capacity(self.retired.len());
        for (h, by, at) in std::mem::take(&mut self.retired) {
            let s = self.sockets.get_mut::<tcp::Socket>(h);
            let done = matches!(s.state(), tcp::State::Closed | tcp::State::TimeWait);
            if done && at < polls {
                self.sockets.remove(h);
            } else if !done && now >= by {
                s.abort();
                keep.push((h, by, polls));
            } else {
                keep.push((h, by, at));
            }
        }
        self.retired = keep;
    }

    /// Connects socket `h` to `remote` from our address and a free
    /// ephemeral port that steers to our shard.
    pub fn connect(
        &mut self,
        h: SocketHandle,
        remote: SocketAddrV4,
    ) -> Result<(), tcp::ConnectError> {
        let in_use: std::collections::HashSet<u16> = self
            .sockets
            .iter()
            .filter_map(|(_, s)| match s {
                smoltcp::socket::Socket::Tcp(t) => t.local_endpoint().map(|e| e.port),
                #[allow(unreachable_patterns)]
                _ => None,
            })
            .collect();
        let fits = pick_port(&mut self.next_port, remote.port(), self.shard, |p| {
            in_use.contains(&p)
        });
        let local = fits.ok_or(tcp::ConnectError::Unaddressable)?;
        let remote = IpEndpoint::new(IpAddress::Ipv4(*remote.ip()), remote.port());
        let local = IpEndpoint::new(IpAddress::Ipv4(self.addr), local);
        let socket = self.sockets.get_mut::<tcp::Socket>(h);
        socket.connect(self.iface.context(), remote, local)
    }
}

/// Moves watched sockets that left the listening state (took a SYN) to
/// the half-open ones, and reports them.
fn note_syns(
    sockets: &SocketSet<'static>,
    watch: &mut Vec<SocketHandle>,
    embryonic: &mut Vec<SocketHandle>,
    syns: &mut Vec<SocketHandle>,
) {
    watch.retain(|&h| {
        if sockets.get::<tcp::Socket>(h).state() == tcp::State::Listen {
            true
        } else {
            embryonic.push(h);
            syns.push(h);
            false
        }
    });
}

/// Moves half-open sockets whose handshake completed to `taken`. (Those that
/// closed instead stay until their owner unwatches them.)
fn note_established(
    sockets: &SocketSet<'static>,
    embryonic: &mut Vec<SocketHandle>,
    taken: &mut Vec<SocketHandle>,
) {
    embryonic.retain(|&h| {
        if is_connected(sockets.get::<tcp::Socket>(h)) {
            taken.push(h);
            false
        } else {
            true
        }
    });
}

/// States a socket reaches only after its three-way handshake.
pub fn is_connected(sock: &tcp::Socket) -> bool {
    use tcp::State::*;
    matches!(
        sock.state(),
        Established | FinWait1 | FinWait2 | CloseWait | Closing | LastAck | TimeWait
    )
}

/// smoltcp's clock from ours (microseconds).
pub fn instant(us: u64) -> Instant {
    Instant::from_micros(us as i64)
}

/// A socket endpoint as a std address.
pub fn endpoint_addr(e: IpEndpoint) -> SocketAddr {
    match e.addr {
        IpAddress::Ipv4(a) => SocketAddr::V4(SocketAddrV4::new(a, e.port)),
    }
}

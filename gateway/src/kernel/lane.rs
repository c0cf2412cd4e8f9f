//! The kernel's driver of the lane (`crate::lane`): one UDP socket per gateway, and while a
//! control connection is in place whose peer offered a lane, a task that moves the tunnel's
//! frames through it.
//!
//! - **Out**: the lane pulls frames from the core ([`TunnelCore::poll_lane_frame`]) as the
//!   pacer and its window allow, gathers those ready at once into groups of up to a full
//!   frame's size (`lane::bundle`), and sends each group's datagrams with UDP GSO, up to
//!   [`GSO_SEGMENTS`] to a call, the segment size given with each call (a socket-wide one
//!   would cut the acks sent between them too).
//! - **In**: with UDP GRO the kernel joins datagrams of one size; each datagram's header
//!   says its length (`lane::wire::datagram_len`), so they are split again. Only datagrams
//!   from the peer's address are opened.
//! - **Time**: acks that are due and groups that are lost, from the lane's deadline.
//!
//! The lane's keys come from the control connection's, so the task lives as long as that
//! connection serves: a new one brings new keys and a new lane, and what the old one had on
//! the way goes again on the data flows.
//!
//! [`TunnelCore::poll_lane_frame`]: crate::session::TunnelCore::poll_lane_frame

use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use log::{info, warn};
use socket2::SockRef;
use tokio::io::Interest;
use tokio::net::UdpSocket;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use super::sockopt;
use super::tunnel::{serve_deadlines, wait_until, Tunnel};
use crate::admin::config::LaneSetup;
use crate::admin::{Stats, TunnelEnd};
use crate::crypto::{decode_message, Opened};
use crate::lane::bundle::{self, Bundle, BUNDLE_SHARDS};
use crate::lane::{wire, Lane, LaneConfig, LaneCounters, LaneKeys};
use crate::link::Applied;
use crate::protocol::message::DATA_HEADER_LEN;
use crate::protocol::packed::CodecSet;
use crate::protocol::{DataFrame, Message};
use crate::session::lane_choice::LaneUse;
use crate::session::scheduler::Carried;
use crate::transform::cpu_time::thread_cpu_ns;
use crate::transform::{PackFigures, PackPolicy, Packer, Unpacker};

/// Datagrams per send: within both the kernel's 64 segments and 64 KiB.
pub const GSO_SEGMENTS: usize = 40;
/// The socket's buffers: a few milliseconds of a 10 Gbit/s link.
const SOCKET_BUFFER: usize = 16 << 20;

/// The gateway's lane socket.
pub struct LaneSocket {
    socket: UdpSocket,
    /// The port it is bound to, offered to the peer.
    pub port: u16,
    config: LaneConfig,
    /// Whether it takes the new frames whenever it is up, or while the flows lose.
    lane_use: LaneUse,
    /// Whether the kernel takes UDP_SEGMENT (else one datagram a call).
    gso: bool,
    /// The lane task serving now: a new control connection's lane stops the old one's, so
    /// that two never share the socket.
    serving: Mutex<Serving>,
}

impl LaneSocket {
    /// Binds the lane's UDP socket as `setup` says: on the tunnel address of a listening
    /// gateway, on any address of a dialling one.
    pub fn bind(setup: LaneSetup, tunnel: &TunnelEnd) -> io::Result<LaneSocket> {
        let addr = match tunnel {
            TunnelEnd::Listen(a) => SocketAddr::new(a.ip(), setup.port),
            TunnelEnd::Dial(a) if a.is_ipv4() => {
                SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), setup.port)
            }
            TunnelEnd::Dial(_) => SocketAddr::new(IpAddr::V6(Ipv6Addr::UNSPECIFIED), setup.port),
        };
        let socket = std::net::UdpSocket::bind(addr)?;
        socket.set_nonblocking(true)?;
        let sock = SockRef::from(&socket);
        for (what, r) in [
            ("SO_SNDBUF", sock.set_send_buffer_size(SOCKET_BUFFER)),
            ("SO_RCVBUF", sock.set_recv_buffer_size(SOCKET_BUFFER)),
            ("UDP_GRO", sockopt::set_udp_gro(&sock)),
        ] {
            if let Err(e) = r {
                warn!("lane socket {addr}: {what}: {e}");
            }
        }
        let gso = sockopt::udp_gso_works(&sock);
        let port = socket.local_addr()?.port();
        Ok(LaneSocket {
            socket: UdpSocket::from_std(socket)?,
            port,
            config: LaneConfig {
                parity: setup.parity,
                ..LaneConfig::default()
            },
            lane_use: setup.lane_use,
            gso,
            serving: Mutex::default(),
        })
    }
}

/// What a peer offered for the lane in a control connection's handshake.
#[derive(Clone)]
pub struct LaneOffer {
    /// Derived from the connection's keys.
    pub keys: LaneKeys,
    /// The UDP port it takes lane datagrams on.
    pub port: u16,
    /// The frame codecs it unpacks.
    pub codecs: CodecSet,
}

/// A lane to run: the gateway's socket, the peer's lane address, the keys, and how its
/// frames are packed.
pub struct LaneLink {
    lane: Arc<LaneSocket>,
    peer: SocketAddr,
    keys: LaneKeys,
    /// The codecs frames may be packed in (none: compression is off here).
    codecs: CodecSet,
    /// The gateway's compression: its choice of codec, and its figures.
    packing: Arc<PackPolicy>,
}

impl LaneLink {
    /// The lane of a control connection to `remote` whose peer offered `offer`, if this
    /// gateway has one too. Its frames are packed as the data flows' are (`packing`), if
    /// `compress`.
    pub fn new(
        lane: Option<&Arc<LaneSocket>>,
        remote: SocketAddr,
        offer: Option<LaneOffer>,
        packing: &Arc<PackPolicy>,
        compress: bool,
    ) -> Option<LaneLink> {
        let (lane, offer) = (lane?, offer?);
        Some(LaneLink {
            lane: lane.clone(),
            peer: SocketAddr::new(remote.ip(), offer.port),
            keys: offer.keys,
            codecs: if compress {
                offer.codecs
            } else {
                CodecSet::default()
            },
            packing: packing.clone(),
        })
    }

    /// Appends `frame` to `out` as a message, packed if the gateway's compression says so.
    fn encode(&self, packer: &mut Packer, frame: &DataFrame, out: &mut Vec<u8>) {
        if self.codecs.is_empty() {
            frame.encode(out);
            return;
        }
        let t = thread_cpu_ns();
        let outcome = packer.encode(frame, self.packing.choice(), self.codecs, out);
        let ns = thread_cpu_ns().saturating_sub(t);
        self.packing
            .stats
            .add(&PackFigures::packed(outcome, frame.payload.len(), ns));
    }
}

/// Which lane task serves: its number, and what stops it.
#[derive(Default)]
struct Serving {
    next: u64,
    current: Option<(u64, CancellationToken)>,
}

/// Takes the lane down when the task ends (its control connection went), unless a newer
/// lane took its place.
struct Down {
    tunnel: Arc<Tunnel>,
    lane: Arc<LaneSocket>,
    number: u64,
}

impl Drop for Down {
    fn drop(&mut self) {
        let mut serving = self.lane.serving.lock().expect("not poisoned");
        if serving
            .current
            .as_ref()
            .is_some_and(|(n, _)| *n == self.number)
        {
            serving.current = None;
            drop(serving);
            self.tunnel.with_core(|c| c.set_lane_up(false));
        }
    }
}

/// Adds what the lane counted since `last` to the gateway's counters.
fn publish(stats: &Stats, last: &mut LaneCounters, now: LaneCounters) {
    let (new, old) = (&now, &*last);
    for (counter, new, old) in [
        (
            &stats.lane_frames_sent,
            new.sender.groups,
            old.sender.groups,
        ),
        (&stats.lane_frames_acked, new.sender.acked, old.sender.acked),
        (&stats.lane_frames_late, new.sender.late, old.sender.late),
        (
            &stats.lane_frames_rebuilt,
            new.receiver.frames,
            old.receiver.frames,
        ),
        (
            &stats.lane_frames_repaired,
            new.receiver.repaired,
            old.receiver.repaired,
        ),
        (
            &stats.lane_groups_abandoned,
            new.receiver.abandoned,
            old.receiver.abandoned,
        ),
        (&stats.lane_datagrams_refused, new.refused, old.refused),
    ] {
        Stats::add(counter, new.saturating_sub(old));
    }
    *last = now;
}

/// Moves the tunnel's frames through `link` until dropped.
pub async fn run(tunnel: Arc<Tunnel>, link: LaneLink) {
    info!(
        "peer {}: lane up: frames as datagrams to {}, {} parity shards a frame, {}",
        tunnel.peer,
        link.peer,
        link.lane.config.parity,
        match link.lane.lane_use {
            LaneUse::Always => "the new ones all",
            LaneUse::Auto => "the new ones while the data flows lose",
        }
    );
    let lane: Mutex<Lane<Vec<Carried>>> = Mutex::new(Lane::new(&link.keys, link.lane.config));
    let token = CancellationToken::new();
    let number = {
        let mut serving = link.lane.serving.lock().expect("not poisoned");
        let number = serving.next;
        serving.next += 1;
        if let Some((_, old)) = serving.current.replace((number, token.clone())) {
            old.cancel();
        }
        number
    };
    tunnel.with_core(|c| {
        c.set_lane_use(link.lane.lane_use);
        c.set_lane_up(true);
    });
    let _down = Down {
        tunnel: tunnel.clone(),
        lane: link.lane.clone(),
        number,
    };
    let timer = Notify::new();
    tokio::select! {
        () = token.cancelled() => {}
        () = send(&tunnel, &link, &lane, &timer) => {}
        () = receive(&tunnel, &link, &lane, &timer) => {}
        () = serve_deadlines(
            &timer,
            tunnel.gateway().started.into(),
            || lane.lock().expect("not poisoned").poll_timeout(),
            |now| on_deadline(&tunnel, &link, &lane, now),
        ) => {}
    }
}

/// Frames out, as the core gives them, gathered into groups of up to a full frame's size.
async fn send(
    tunnel: &Arc<Tunnel>,
    link: &LaneLink,
    lane: &Mutex<Lane<Vec<Carried>>>,
    timer: &Notify,
) {
    let take = || {
        let now = tunnel.now();
        let outstanding = lane.lock().expect("not poisoned").outstanding();
        tunnel.with_lane_state(now, |state| state.core.poll_lane_frame(now, outstanding))
    };
    let mut bundle = Bundle::new(link.lane.config.max_shard * BUNDLE_SHARDS);
    // A frame that did not fit the last group: it starts the next one.
    let mut held = None;
    let mut packer = Packer::default();
    let mut out = Vec::new();
    loop {
        let first = match held.take() {
            Some(f) => f,
            None => wait_until(tunnel.frames_ready(), &take).await,
        };
        let mut next = Some(first);
        while let Some((frame, carried)) = next.take() {
            if !bundle.fits(DATA_HEADER_LEN + frame.payload.len()) {
                held = Some((frame, carried));
                break;
            }
            bundle.push(carried, |out| link.encode(&mut packer, &frame, out));
            next = take();
        }
        let (group, carried) = bundle.drain();
        out.clear();
        let sealed = lane.lock().expect("not poisoned").send_frame(
            tunnel.now(),
            &group,
            carried.clone(),
            &mut out,
        );
        let size = match sealed {
            Ok(size) => size,
            Err(e) => {
                // Only our own keys running out gets here (2^40 datagrams): the lane goes
                // down, this group and what it has on the way go on the flows, and it waits
                // for the next control connection's keys.
                warn!(
                    "peer {}: lane: {e}; frames go on the data flows",
                    tunnel.peer
                );
                tunnel.with_core(|c| {
                    let held = held.take().map(|(_, h)| h);
                    carried.into_iter().chain(held).for_each(|h| c.lane_lost(h));
                    c.set_lane_up(false);
                });
                return std::future::pending().await;
            }
        };
        timer.notify_one();
        let per_call = if link.lane.gso { GSO_SEGMENTS } else { 1 };
        let socket = &link.lane.socket;
        for chunk in out.chunks(size * per_call) {
            // A datagram the host drops is a lost one: its group goes again in time.
            let sent = if link.lane.gso {
                let segment = u16::try_from(size).unwrap_or(u16::MAX);
                socket
                    .async_io(Interest::WRITABLE, || {
                        sockopt::send_segments(socket, chunk, link.peer, segment)
                    })
                    .await
            } else {
                socket.send_to(chunk, link.peer).await
            };
            if let Err(e) = sent {
                log::debug!("lane: sending to {}: {e}", link.peer);
            }
        }
    }
}

/// Datagrams in: frames to the core, acks to the lane.
async fn receive(
    tunnel: &Arc<Tunnel>,
    link: &LaneLink,
    lane: &Mutex<Lane<Vec<Carried>>>,
    timer: &Notify,
) {
    let mut buf = vec![0u8; 1 << 16];
    let mut published = LaneCounters::default();
    let mut unpacker = Unpacker::default();
    loop {
        let (n, from) = match link.lane.socket.recv_from(&mut buf).await {
            Ok(x) => x,
            Err(e) => {
                log::debug!("lane: receiving: {e}");
                continue;
            }
        };
        // Anyone may send to the port; only the peer's datagrams cost an AEAD.
        if from.ip() != link.peer.ip() {
            Stats::inc(&tunnel.gateway().stats.lane_strangers);
            continue;
        }
        // Bounded memory, as the data flows' readers stop: while endpoints leave the receive
        // budget full, the lane rebuilds nothing and acks nothing. Its sender then counts
        // those frames lost, and they go again on the flows, which wait. The peer's acks
        // of what we sent still count: an endpoint that does not read what comes back
        // must not stall what this gateway sends.
        let paused = tunnel.with_core(|c| c.receive_paused());
        let now = tunnel.now();
        let mut frames = Vec::new();
        let (progress, freed, ack) = {
            let mut l = lane.lock().expect("not poisoned");
            let before = l.outstanding();
            let received = &mut buf[..n];
            for range in wire::datagrams(received).collect::<Vec<_>>() {
                let datagram = &mut received[range];
                if paused && datagram[0] == wire::KIND_SHARD {
                    Stats::inc(&tunnel.gateway().stats.lane_datagrams_paused);
                    continue;
                }
                if let Ok(Some(frame)) = l.handle_datagram(now, datagram) {
                    frames.push(frame);
                }
            }
            publish(&tunnel.gateway().stats, &mut published, l.counters());
            (l.progress(), l.outstanding() < before, l.poll_ack(now))
        };
        let messages: Vec<Message> = frames
            .into_iter()
            .flat_map(|group| messages_of(&tunnel.peer, Bytes::from(group), &mut unpacker, link))
            .collect();
        let applied: Vec<Applied> = tunnel.with_lane_state(now, |state| {
            state.core.note_lane_progress(progress);
            messages.into_iter().map(|m| state.apply(m)).collect()
        });
        applied
            .into_iter()
            .for_each(|a| tunnel.gateway().stats.applied(a));
        if let Ok(Some(ack)) = ack {
            let _ = link.lane.socket.send_to(&ack, link.peer).await;
        }
        if freed {
            tunnel.frames_ready().notify_waiters();
        }
        timer.notify_one();
    }
}

/// The data frames a rebuilt group carried. Every datagram of it authenticated as the
/// peer's, so anything else is the peer's bug: logged, and the rest of the group dropped.
fn messages_of(
    peer: &impl std::fmt::Display,
    group: Bytes,
    unpacker: &mut Unpacker,
    link: &LaneLink,
) -> Vec<Message> {
    let mut messages = Vec::new();
    for entry in bundle::entries(&group) {
        let range = match entry {
            Ok(r) => r,
            Err(e) => {
                warn!("peer {peer}: {e}: the rest dropped");
                break;
            }
        };
        match decode_message(group.slice(range), unpacker, Some(&link.packing)) {
            Ok(Opened {
                msg: Some(m @ Message::Data(_)),
                ..
            }) => messages.push(m),
            Ok(other) => {
                warn!(
                    "peer {peer}: lane carried a {:?}, not a data frame: dropped",
                    other.msg
                );
            }
            Err(e) => warn!("peer {peer}: lane frame: {e}: dropped"),
        }
    }
    messages
}

/// The lane's deadline came: lost groups go again on the flows, a due ack goes out.
fn on_deadline(tunnel: &Arc<Tunnel>, link: &LaneLink, lane: &Mutex<Lane<Vec<Carried>>>, now: u64) {
    let (lost, ack) = {
        let mut l = lane.lock().expect("not poisoned");
        l.handle_timeout(now);
        let lost: Vec<Carried> = std::iter::from_fn(|| l.poll_lost()).flatten().collect();
        (lost, l.poll_ack(now))
    };
    if !lost.is_empty() {
        tunnel.with_core(|c| lost.into_iter().for_each(|carried| c.lane_lost(carried)));
    }
    if let Ok(Some(ack)) = ack {
        // Never blocks for long: a full socket buffer drops it, as the path may.
        let _ = link.lane.socket.try_send_to(&ack, link.peer);
    }
}

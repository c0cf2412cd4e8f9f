//! Which TCP lcore (shard) a frame belongs to, when a gateway runs several.
//!
//! Each TCP lcore owns a whole share of the gateway: its own smoltcp stacks, LAN sessions and
//! a sub-tunnel of its own (control connection and data flows) to the same shard of the peer.
//! Nothing is shared between them, so every frame of one TCP connection must reach the same
//! lcore, in both directions and on both gateways. The I/O lcore steers by a hash of the
//! connection's two ports that is the same both ways; the end that opens a connection (the
//! dialling gateway for WAN connections, a gateway connecting to a target on its LAN) picks its
//! source port so that the hash lands on its own shard. The peer, with as many shards, steers
//! the connection to the shard of the same index; the handshake checks it (`Shard`).
//!
//! Addresses are left out of the hash, so an address-translating middlebox between the
//! gateways changes nothing; one that rewrites ports breaks sharding (the handshake then fails
//! by name). ARP goes to every shard (each stack keeps its own neighbour cache); other
//! non-TCP frames and fragments go to shard 0.
//!
//! The hash is not keyed: a sender that picks its ports can crowd one shard, which costs it
//! what one TCP lcore costs today, no more.

use crate::protocol::handshake::Shard;

/// Where the I/O lcore sends one received frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Steer {
    To(u8),
    /// A copy to every shard.
    All,
}

/// The shard of a TCP connection between ports `a` and `b` (either order) among `count`.
pub fn shard_of_ports(a: u16, b: u16, count: u8) -> u8 {
    if count <= 1 {
        return 0;
    }
    let (lo, hi) = if a <= b { (a, b) } else { (b, a) };
    // Fibonacci hashing: the high bits of the product mix every input bit.
    let mixed = ((lo as u32) << 16 | hi as u32).wrapping_mul(0x9E37_79B1);
    ((mixed >> 16) % count as u32) as u8
}

/// Whether a connection from our port `local` to `remote` is steered to `shard`.
pub fn port_fits(local: u16, remote: u16, shard: Shard) -> bool {
    shard_of_ports(local, remote, shard.count) == shard.index
}

/// First and last ephemeral port for our outgoing connections.
pub const EPHEMERAL: std::ops::RangeInclusive<u16> = 49152..=65535;

/// An ephemeral port, not `in_use`, for a connection to port `remote` that steers to `shard`:
/// the first from `*next` on (wrapping at the end of the range), and `*next` moves past it.
/// `None` when no such port is free.
pub fn pick_port(
    next: &mut u16,
    remote: u16,
    shard: Shard,
    in_use: impl Fn(u16) -> bool,
) -> Option<u16> {
    for _ in EPHEMERAL {
        let p = *next;
        *next = if p >= *EPHEMERAL.end() {
            *EPHEMERAL.start()
        } else {
            p + 1
        };
        if !in_use(p) && port_fits(p, remote, shard) {
            return Some(p);
        }
    }
    None
}

/// The shard of an Ethernet frame among `count`.
pub fn steer(frame: &[u8], count: u8) -> Steer {
    const ETH: usize = 14;
    if count <= 1 {
        return Steer::To(0);
    }
    match frame.get(12..14) {
        Some([0x08, 0x06]) => Steer::All,
        Some([0x08, 0x00]) => {
            Steer::To(tcp_ports(&frame[ETH..]).map_or(0, |(a, b)| shard_of_ports(a, b, count)))
        }
        _ => Steer::To(0),
    }
}

/// The source and destination ports of an unfragmented IPv4 TCP packet.
fn tcp_ports(ip: &[u8]) -> Option<(u16, u16)> {
    let header = (*ip.first()? & 0x0f) as usize * 4;
    let protocol = *ip.get(9)?;
    let fragment = u16::from_be_bytes([*ip.get(6)?, *ip.get(7)?]);
    // More-fragments set or a non-zero offset: the ports are not in every piece.
    if protocol != 6 || header < 20 || fragment & 0x3fff != 0 {
        return None;
    }
    let ports = ip.get(header..header + 4)?;
    Some((
        u16::from_be_bytes([ports[0], ports[1]]),
        u16::from_be_bytes([ports[2], ports[3]]),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// An Ethernet/IPv4/TCP frame from port `sp` to `dp`.
    fn tcp_frame(sp: u16, dp: u16, fragment: u16) -> Vec<u8> {
        let mut f = vec![0u8; 14 + 20 + 20];
        f[12..14].copy_from_slice(&[0x08, 0x00]);
        f[14] = 0x45;
        f[14 + 6..14 + 8].copy_from_slice(&fragment.to_be_bytes());
        f[14 + 9] = 6;
        f[34..36].copy_from_slice(&sp.to_be_bytes());
        f[36..38].copy_from_slice(&dp.to_be_bytes());
        f
    }

    proptest! {
        /// Every frame goes to exactly one shard that exists, or (ARP) to all of them; any
        /// bytes at all, so a hostile frame cannot make the I/O lcore index out of range.
        #[test]
        fn every_frame_maps_to_one_existing_shard(frame in proptest::collection::vec(any::<u8>(), 0..80), count in 1u8..=16) {
            match steer(&frame, count) {
                Steer::To(k) => prop_assert!(k < count),
                Steer::All => prop_assert_eq!(&frame[12..14], &[0x08, 0x06]),
            }
        }

        /// Both directions of a connection land on the same shard.
        #[test]
        fn both_directions_of_a_connection_meet(a in any::<u16>(), b in any::<u16>(), count in 1u8..=16) {
            prop_assert_eq!(steer(&tcp_frame(a, b, 0), count), steer(&tcp_frame(b, a, 0), count));
            prop_assert_eq!(steer(&tcp_frame(a, b, 0x4000), count), Steer::To(shard_of_ports(a, b, count)));
        }

        /// For any remote port, each shard finds source ports of its own among the ephemeral
        /// ones, and a connection from such a port is steered to that shard on both gateways.
        #[test]
        fn the_opener_can_pick_a_port_for_its_shard(remote in any::<u16>(), count in 1u8..=16) {
            for index in 0..count {
                let shard = Shard::new(index, count).unwrap();
                let local = (49152..=65535u16).find(|&p| port_fits(p, remote, shard));
                let local = local.expect("a port for every shard");
                prop_assert_eq!(steer(&tcp_frame(local, remote, 0), count), Steer::To(index));
                prop_assert_eq!(steer(&tcp_frame(remote, local, 0), count), Steer::To(index));
            }
        }
    }

    #[test]
    fn ports_are_picked_in_turn_for_the_shard_wrapping_and_skipping_those_in_use() {
        let shard = Shard::new(1, 2).unwrap();
        let fits = |p: u16| port_fits(p, 7700, shard);
        let mut next = *EPHEMERAL.end() - 3;
        let mut picked = Vec::new();
        for _ in 0..6 {
            picked.push(pick_port(&mut next, 7700, shard, |p| p % 7 == 0).unwrap());
        }
        assert!(picked
            .iter()
            .all(|&p| fits(p) && p % 7 != 0 && EPHEMERAL.contains(&p)));
        assert!(
            picked.windows(2).any(|w| w[1] < w[0]),
            "wrapped: {picked:?}"
        );
        let mut sorted = picked.clone();
        sorted.dedup();
        assert_eq!(sorted.len(), picked.len(), "each in turn");
        assert_eq!(
            pick_port(&mut next, 7700, shard, |_| true),
            None,
            "all in use"
        );
    }

    #[test]
    fn arp_goes_everywhere_and_the_rest_to_shard_zero() {
        let mut arp = vec![0u8; 42];
        arp[12..14].copy_from_slice(&[0x08, 0x06]);
        assert_eq!(steer(&arp, 2), Steer::All);
        assert_eq!(steer(&arp, 1), Steer::To(0), "one shard: no copies");
        let mut udp = tcp_frame(1, 2, 0);
        udp[14 + 9] = 17;
        assert_eq!(steer(&udp, 4), Steer::To(0));
        assert_eq!(
            steer(&tcp_frame(1, 2, 0x0010), 4),
            Steer::To(0),
            "a later fragment"
        );
        assert_eq!(
            steer(&tcp_frame(1, 2, 0x2000), 4),
            Steer::To(0),
            "more fragments"
        );
        assert_eq!(steer(&[], 4), Steer::To(0));
    }

    /// Ports spread over the shards: no shard gets less than half its share of a run of
    /// consecutive source ports to one destination (a hypervisor's connections).
    #[test]
    fn consecutive_ports_spread_over_the_shards() {
        for count in [2u8, 3, 4, 8] {
            let mut hits = vec![0u32; count as usize];
            for sp in 40000..40000 + 1024u16 {
                hits[shard_of_ports(sp, 49152, count) as usize] += 1;
            }
            let fair = 1024 / count as u32;
            assert!(hits.iter().all(|&h| h > fair / 2), "{count}: {hits:?}");
        }
    }
}

//! Ethernet frames as the DPDK datapath's filters read them, before any stack does: which
//! TCP lcore a frame belongs to ([`steer`]), which frames may reach a port's stack
//! ([`StackFilter`]), and which are SYNs to the tunnel port ([`syn_source`]). Pure functions
//! of the frame's bytes: any bytes at all, never a panic.

use std::net::Ipv4Addr;

use crate::sources::in_prefix;

pub mod steer;

/// Ethernet header bytes before the IP header.
const ETH: usize = 14;

/// What a port's stack may see of a received frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Drop,
    Pass,
    /// IPv4 to our own address (the tunnel port's gate may still drop it).
    Own,
}

/// Transparent interception puts the stack in any-IP mode, which accepts IP packets for every
/// address *and answers ARP for every address*; the latter would steal other hosts' traffic
/// on the LAN. So only ARP for our own address passes, and IPv4 only for our address, a
/// broadcast, or an intercepted prefix.
#[derive(Debug, Clone)]
pub struct StackFilter {
    pub own: Ipv4Addr,
    /// Prefixes whose addresses we terminate as if they were ours.
    pub intercept: Vec<(Ipv4Addr, u8)>,
}

impl StackFilter {
    pub fn verdict(&self, frame: &[u8]) -> Verdict {
        let pass = |yes: bool| if yes { Verdict::Pass } else { Verdict::Drop };
        if frame.len() < ETH {
            return Verdict::Drop;
        }
        let ipv4 = |b: &[u8]| Ipv4Addr::new(b[0], b[1], b[2], b[3]);
        match u16::from_be_bytes([frame[12], frame[13]]) {
            // ARP: the target protocol address is at 24..28 of the ARP body.
            0x0806 => pass(frame.len() >= ETH + 28 && ipv4(&frame[ETH + 24..ETH + 28]) == self.own),
            // IPv4: the destination address is at 16..20 of the header.
            0x0800 if frame.len() >= ETH + 20 => {
                let dst = ipv4(&frame[ETH + 16..ETH + 20]);
                if dst == self.own {
                    return Verdict::Own;
                }
                let intercepted =
                    |&(net, len): &(Ipv4Addr, u8)| in_prefix(dst.into(), net.into(), len);
                pass(dst.is_broadcast() || self.intercept.iter().any(intercepted))
            }
            _ => Verdict::Drop,
        }
    }
}

/// The source of a TCP SYN (no ACK, no RST) to `port` in an Ethernet frame
/// carrying IPv4; `None` for anything else (fragments after the first too).
pub fn syn_source(frame: &[u8], port: u16) -> Option<Ipv4Addr> {
    let ip = frame.get(ETH..)?;
    if ip.len() < 20 || ip[0] >> 4 != 4 || ip[9] != 6 {
        return None;
    }
    let ihl = (ip[0] & 0x0f) as usize * 4;
    let fragment_offset = u16::from_be_bytes([ip[6], ip[7]]) & 0x1fff;
    if ihl < 20 || fragment_offset != 0 {
        return None;
    }
    let tcp = ip.get(ihl..ihl + 14)?;
    let dport = u16::from_be_bytes([tcp[2], tcp[3]]);
    let flags = tcp[13];
    // SYN set; ACK and RST clear.
    (dport == port && flags & 0x16 == 0x02).then(|| Ipv4Addr::new(ip[12], ip[13], ip[14], ip[15]))
}

/// An Ethernet frame with an IPv4 TCP segment from `src` to port `dport`, TCP flags `flags`
/// (for tests here and of the filters built on these).
#[cfg(test)]
pub(crate) fn tcp_frame(src: [u8; 4], dport: u16, flags: u8) -> Vec<u8> {
    let mut f = vec![0u8; ETH + 20 + 20];
    f[12..14].copy_from_slice(&0x0800u16.to_be_bytes());
    f[ETH] = 0x45;
    f[ETH + 9] = 6;
    f[ETH + 12..ETH + 16].copy_from_slice(&src);
    f[ETH + 16..ETH + 20].copy_from_slice(&[10, 0, 2, 1]);
    f[ETH + 22..ETH + 24].copy_from_slice(&dport.to_be_bytes());
    f[ETH + 33] = flags;
    f
}

#[cfg(test)]
mod tests {
    use super::*;

    fn arp_for(target: [u8; 4]) -> Vec<u8> {
        let mut f = vec![0u8; 14 + 28];
        f[12..14].copy_from_slice(&0x0806u16.to_be_bytes());
        f[14 + 24..14 + 28].copy_from_slice(&target);
        f
    }

    fn ipv4_to(dst: [u8; 4]) -> Vec<u8> {
        let mut f = vec![0u8; 14 + 20];
        f[12..14].copy_from_slice(&0x0800u16.to_be_bytes());
        f[14 + 16..14 + 20].copy_from_slice(&dst);
        f
    }

    #[test]
    fn the_filter_answers_arp_only_for_us_and_passes_intercepted_prefixes() {
        let f = StackFilter {
            own: Ipv4Addr::new(10, 0, 1, 1),
            intercept: vec![(Ipv4Addr::new(10, 0, 3, 0), 24)],
        };
        assert_eq!(f.verdict(&arp_for([10, 0, 1, 1])), Verdict::Pass);
        assert_eq!(
            f.verdict(&arp_for([10, 0, 1, 7])),
            Verdict::Drop,
            "another host's ARP"
        );
        assert_eq!(f.verdict(&ipv4_to([10, 0, 1, 1])), Verdict::Own);
        assert_eq!(f.verdict(&ipv4_to([10, 0, 3, 2])), Verdict::Pass);
        assert_eq!(f.verdict(&ipv4_to([255, 255, 255, 255])), Verdict::Pass);
        assert_eq!(f.verdict(&ipv4_to([10, 0, 4, 2])), Verdict::Drop);
        assert_eq!(f.verdict(&[0u8; 10]), Verdict::Drop, "runt");
        assert_eq!(
            f.verdict(&arp_for([10, 0, 1, 1])[..20]),
            Verdict::Drop,
            "truncated ARP"
        );
        assert_eq!(
            f.verdict(&ipv4_to([10, 0, 1, 1])[..30]),
            Verdict::Drop,
            "truncated IPv4"
        );
        let mut ipv6 = ipv4_to([10, 0, 1, 1]);
        ipv6[12..14].copy_from_slice(&0x86ddu16.to_be_bytes());
        assert_eq!(f.verdict(&ipv6), Verdict::Drop);
    }

    #[test]
    fn finds_syns_to_the_port_only() {
        assert_eq!(
            syn_source(&tcp_frame([1, 2, 3, 4], 7700, 0x02), 7700),
            Some(Ipv4Addr::new(1, 2, 3, 4))
        );
        assert_eq!(
            syn_source(&tcp_frame([1, 2, 3, 4], 7700, 0x12), 7700),
            None,
            "SYN-ACK"
        );
        assert_eq!(
            syn_source(&tcp_frame([1, 2, 3, 4], 7700, 0x10), 7700),
            None,
            "ACK"
        );
        assert_eq!(
            syn_source(&tcp_frame([1, 2, 3, 4], 7701, 0x02), 7700),
            None,
            "other port"
        );
        let mut frag = tcp_frame([1, 2, 3, 4], 7700, 0x02);
        frag[14 + 7] = 1;
        assert_eq!(syn_source(&frag, 7700), None, "a later fragment");
        for n in 0..54 {
            // Truncated frames never panic.
            let _ = syn_source(&tcp_frame([1, 2, 3, 4], 7700, 0x02)[..n], 7700);
        }
        let mut long_header = tcp_frame([1, 2, 3, 4], 7700, 0x02);
        long_header[14] = 0x4f;
        assert_eq!(
            syn_source(&long_header, 7700),
            None,
            "header longer than the frame"
        );
    }
}

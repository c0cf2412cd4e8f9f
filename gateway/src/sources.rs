//! Source address allowlists: `peer.source` (who may connect to the tunnel port) and
//! `ingress[i].sources` (who may open sessions through an ingress).
//!
//! Entries are addresses (`203.0.113.7`, `2001:db8::7`) or prefixes (`198.51.100.0/24`,
//! `2001:db8::/64`). An IPv4-mapped IPv6 address (`::ffff:a.b.c.d`, what a dual-stack
//! listener reports for an IPv4 client) is matched as the IPv4 address it carries.

use std::fmt;
use std::net::IpAddr;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Entry {
    net: IpAddr,
    len: u8,
}

/// A list of addresses and prefixes.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SourceList {
    entries: Vec<Entry>,
}

impl SourceList {
    /// Parses `ADDR` or `ADDR/LEN` entries; the error names the entry and why.
    pub fn parse<S: AsRef<str>>(items: &[S]) -> Result<SourceList, String> {
        let entries = items
            .iter()
            .enumerate()
            .map(|(i, s)| {
                parse_entry(s.as_ref())
                    .map_err(|why| format!("entry {i} ({:?}): {why}", s.as_ref()))
            })
            .collect::<Result<_, _>>()?;
        Ok(SourceList { entries })
    }

    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = ip.to_canonical();
        self.entries.iter().any(|e| in_prefix(ip, e.net, e.len))
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Whether any entry is an IPv6 prefix (the DPDK datapath is IPv4-only).
    pub fn has_ipv6(&self) -> bool {
        self.entries.iter().any(|e| e.net.is_ipv6())
    }
}

impl fmt::Display for SourceList {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let parts: Vec<String> = self
            .entries
            .iter()
            .map(|e| format!("{}/{}", e.net, e.len))
            .collect();
        f.write_str(&parts.join(", "))
    }
}

fn parse_entry(s: &str) -> Result<Entry, String> {
    let s = s.trim();
    let (addr, len) = match s.split_once('/') {
        Some((a, l)) => (a, Some(l)),
        None => (s, None),
    };
    let net: IpAddr = addr.parse().map_err(|_| {
        "expected an IP address or prefix, e.g. 203.0.113.7 or 198.51.100.0/24".to_string()
    })?;
    let net = net.to_canonical();
    let max = if net.is_ipv4() { 32 } else { 128 };
    let len = match len {
        None => max,
        Some(l) => match l.parse::<u8>() {
            Ok(n) if n <= max => n,
            _ => return Err(format!("prefix length must be 0 to {max}")),
        },
    };
    Ok(Entry { net, len })
}

/// Whether `ip` is in `net/len` (different families never match).
pub fn in_prefix(ip: IpAddr, net: IpAddr, len: u8) -> bool {
    match (ip, net) {
        (IpAddr::V4(a), IpAddr::V4(n)) => {
            let mask = u32::MAX.checked_shl(32 - len as u32).unwrap_or(0);
            u32::from(a) & mask == u32::from(n) & mask
        }
        (IpAddr::V6(a), IpAddr::V6(n)) => {
            let mask = u128::MAX.checked_shl(128 - len as u32).unwrap_or(0);
            u128::from(a) & mask == u128::from(n) & mask
        }
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn addresses_and_prefixes_of_both_families() {
        let l = SourceList::parse(&["203.0.113.7", "198.51.100.0/24", "2001:db8::/64"]).unwrap();
        assert!(l.contains(ip("203.0.113.7")));
        assert!(!l.contains(ip("203.0.113.8")));
        assert!(l.contains(ip("198.51.100.250")));
        assert!(!l.contains(ip("198.51.101.1")));
        assert!(l.contains(ip("2001:db8::42")));
        assert!(!l.contains(ip("2001:db8:0:1::42")));
        // What a dual-stack listener reports for an IPv4 client.
        assert!(l.contains(ip("::ffff:203.0.113.7")));
        assert!(SourceList::parse(&["0.0.0.0/0"])
            .unwrap()
            .contains(ip("10.1.2.3")));
        assert!(!SourceList::default().contains(ip("10.1.2.3")));
        assert!(l.has_ipv6());
        assert_eq!(
            SourceList::parse(&["10.0.0.1"]).unwrap().to_string(),
            "10.0.0.1/32"
        );
    }

    #[test]
    fn bad_entries_say_which_and_why() {
        for bad in [
            "host.example",
            "10.0.0.0/33",
            "10.0.0.0/x",
            "2001:db8::/129",
            "",
        ] {
            let e = SourceList::parse(&["10.0.0.1", bad]).unwrap_err();
            assert!(e.starts_with("entry 1"), "{bad:?}: {e}");
        }
    }
}

//! Which targets the remote gateway may connect to on its peer's behalf.
//!
//! An empty allowlist allows nothing: the gateway is never an open relay.
//! Entries: `IP:PORT`, `IP:*`, `CIDR:PORT`, `CIDR:LOW-HIGH` (IPv6 in
//! brackets: `[2001:db8::/32]:443`).

use std::fmt;
use std::net::{IpAddr, SocketAddr};

#[derive(Debug, Clone, PartialEq, Eq)]
struct Entry {
    net: IpAddr,
    prefix: u8,
    ports: (u16, u16),
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Allowlist {
    entries: Vec<Entry>,
}

impl Allowlist {
    /// Parses entries; the error says which entry and why.
    pub fn parse<S: AsRef<str>>(items: &[S]) -> Result<Allowlist, String> {
        let entries = items
            .iter()
            .enumerate()
            .map(|(i, s)| {
                parse_entry(s.as_ref())
                    .map_err(|why| format!("entry {i} ({:?}): {why}", s.as_ref()))
            })
            .collect::<Result<_, _>>()?;
        Ok(Allowlist { entries })
    }

    pub fn allows(&self, target: &SocketAddr) -> bool {
        self.entries.iter().any(|e| {
            (e.ports.0..=e.ports.1).contains(&target.port())
                && in_prefix(target.ip(), e.net, e.prefix)
        })
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

impl fmt::Display for Allowlist {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let parts: Vec<String> = self
            .entries
            .iter()
            .map(|e| format!("{}/{}:{}-{}", e.net, e.prefix, e.ports.0, e.ports.1))
            .collect();
        f.write_str(&parts.join(", "))
    }
}

fn parse_entry(s: &str) -> Result<Entry, &'static str> {
    let (host, port) = s.rsplit_once(':').ok_or("expected HOST:PORT")?;
    let host = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host);
    let ports = match port {
        "*" => (0, u16::MAX),
        p => match p.split_once('-') {
            Some((lo, hi)) => {
                let lo = lo.parse().map_err(|_| "bad port range")?;
                let hi = hi.parse().map_err(|_| "bad port range")?;
                if lo > hi {
                    return Err("port range low > high");
                }
                (lo, hi)
            }
            None => {
                let p = p
                    .parse()
                    .map_err(|_| "bad port: use a number, LOW-HIGH or *")?;
                (p, p)
            }
        },
    };
    let (ip, prefix) = match host.split_once('/') {
        Some((ip, len)) => (
            ip,
            Some(len.parse::<u8>().map_err(|_| "bad prefix length")?),
        ),
        None => (host, None),
    };
    let net: IpAddr = ip.parse().map_err(|_| "bad IP address")?;
    let max = if net.is_ipv4() { 32 } else { 128 };
    let prefix = prefix.unwrap_or(max);
    if prefix > max {
        return Err("prefix length too long for the address family");
    }
    Ok(Entry { net, prefix, ports })
}

fn in_prefix(ip: IpAddr, net: IpAddr, prefix: u8) -> bool {
    let ip = match (ip, net) {
        // Accept IPv4-mapped IPv6 targets against IPv4 entries.
        (IpAddr::V6(v6), IpAddr::V4(_)) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => return false,
        },
        _ => ip,
    };
    match (ip, net) {
        (IpAddr::V4(a), IpAddr::V4(b)) => {
            mask_eq(u32::from(a) as u128, u32::from(b) as u128, prefix, 32)
        }
        (IpAddr::V6(a), IpAddr::V6(b)) => mask_eq(u128::from(a), u128::from(b), prefix, 128),
        _ => false,
    }
}

fn mask_eq(a: u128, b: u128, prefix: u8, bits: u8) -> bool {
    if prefix == 0 {
        return true;
    }
    let shift = (bits - prefix) as u32;
    (a >> shift) == (b >> shift)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn allows(list: &[&str], target: &str) -> bool {
        Allowlist::parse(list)
            .unwrap()
            .allows(&target.parse().unwrap())
    }

    #[test]
    fn entries_match_as_documented() {
        assert!(allows(&["127.0.0.1:5000"], "127.0.0.1:5000"));
        assert!(!allows(&["127.0.0.1:5000"], "127.0.0.1:5001"));
        assert!(allows(&["10.0.0.0/8:*"], "10.2.3.4:22"));
        assert!(!allows(&["10.0.0.0/8:*"], "11.0.0.1:22"));
        assert!(allows(&["192.0.2.0/24:4000-4010"], "192.0.2.9:4010"));
        assert!(allows(&["[2001:db8::/32]:443"], "[2001:db8::5]:443"));
        assert!(allows(&["127.0.0.1:80"], "[::ffff:127.0.0.1]:80"));
        assert!(!allows(&[], "127.0.0.1:80"), "empty allows nothing");
    }

    #[test]
    fn bad_entries_are_explained() {
        for bad in [
            "nope",
            "1.2.3.4",
            "1.2.3.4:x",
            "1.2.3.4/33:1",
            "1.2.3.4:9-1",
            "host:80",
        ] {
            let err = Allowlist::parse(&[bad]).unwrap_err();
            assert!(err.contains("entry 0"), "{err}");
        }
    }
}

//! Admission of not-yet-authenticated connections on the tunnel port, the
//! policy both datapaths share.
//!
//! At most a fixed number of handshakes are pending. When a new connection
//! arrives and the table is full, the oldest pending handshake of the
//! source address that holds the most slots is evicted. A flood of silent
//! connections from one place therefore evicts itself, while a real peer —
//! whose handshake takes one round trip — still gets through (a plain
//! first-come limit would lock it out for the whole handshake timeout).

use std::collections::HashMap;
use std::net::IpAddr;

/// Which pending handshake to evict: the oldest (`seq`) of the source with
/// the most entries. `None` only if there are no entries.
pub fn eviction_victim<K: Copy>(entries: impl IntoIterator<Item = (K, IpAddr, u64)>) -> Option<K> {
    let entries: Vec<(K, IpAddr, u64)> = entries.into_iter().collect();
    let mut per_ip: HashMap<IpAddr, usize> = HashMap::new();
    for (_, ip, _) in &entries {
        *per_ip.entry(*ip).or_default() += 1;
    }
    let busiest = per_ip
        .into_iter()
        .max_by_key(|(_, n)| *n)
        .map(|(ip, _)| ip)?;
    entries
        .into_iter()
        .filter(|(_, ip, _)| *ip == busiest)
        .min_by_key(|(_, _, seq)| *seq)
        .map(|(k, _, _)| k)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn oldest_of_the_busiest_source() {
        let flood: IpAddr = "10.0.0.9".parse().unwrap();
        let peer: IpAddr = "10.0.0.1".parse().unwrap();
        let entries = [(1, peer, 1), (2, flood, 2), (3, flood, 3), (4, flood, 4)];
        assert_eq!(eviction_victim(entries), Some(2));
        assert_eq!(eviction_victim(Vec::<(u8, IpAddr, u64)>::new()), None);
    }
}

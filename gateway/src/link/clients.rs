//! The clients of the ingress ports, from a client's first packet until its session ends:
//! whether an ingress takes one ([`check_ingress`]: its `sources`, its
//! `max_sessions_per_source`, the gateway's session limit, shutdown), how many each client
//! address holds on each ingress, and the paced line each refusal or dropped client gets.
//!
//! Both datapaths key their clients by something of their own (the kernel a number per
//! accepted connection, DPDK the connection's socket) and say when one is gone. A client
//! counts against its address's cap from its admission on, so connections still on their way
//! to being sessions (a handshake under way, a session waiting for the tunnel or the peer)
//! count as much as open sessions do.

use std::collections::hash_map::Entry;
use std::hash::Hash;
use std::net::{IpAddr, SocketAddr};

use log::warn;
use rustc_hash::FxHashMap;

use super::admission::Throttle;
use super::ingress::{check_ingress, IngressCheck, IngressRefusal};
use crate::sources::SourceList;

/// What the table needs of one `[[ingress]]`.
#[derive(Debug, Clone)]
pub struct IngressRules {
    pub bind: SocketAddr,
    pub sources: Option<SourceList>,
    pub max_per_source: Option<usize>,
}

/// The ingress ports' clients, keyed by `K`.
#[derive(Debug)]
pub struct Clients<K> {
    rules: Vec<IngressRules>,
    /// Each client's ingress and address.
    clients: FxHashMap<K, (usize, IpAddr)>,
    /// Clients per ingress and address.
    held: FxHashMap<(usize, IpAddr), usize>,
    /// Per ingress: paces the lines a flood would repeat.
    throttles: Vec<Throttle>,
}

impl<K: Hash + Eq + Copy> Clients<K> {
    pub fn new(rules: Vec<IngressRules>) -> Self {
        Clients {
            throttles: rules.iter().map(|_| Throttle::default()).collect(),
            rules,
            clients: FxHashMap::default(),
            held: FxHashMap::default(),
        }
    }

    /// Takes client `key`, from `source`, on ingress `index`, or says why not, with one line
    /// (paced). `limit` is the gateway's session limit and how many sessions it holds, where
    /// the datapath checks it here (`None`: its session core does).
    pub fn admit(
        &mut self,
        key: K,
        index: usize,
        source: SocketAddr,
        limit: Option<(usize, usize)>,
        stopping: bool,
        now: u64,
    ) -> Result<(), IngressRefusal> {
        let ip = source.ip().to_canonical();
        let rules = &self.rules[index];
        let check = IngressCheck {
            index,
            sources: rules.sources.as_ref(),
            max_per_source: rules.max_per_source,
            held_by_source: self.held.get(&(index, ip)).copied().unwrap_or(0),
            limit,
            stopping,
        };
        if let Err(why) = check_ingress(ip, check) {
            self.note(index, now, |bind| {
                format!("{source} -> {bind}: refused: {why}; resetting")
            });
            return Err(why);
        }
        if self.clients.insert(key, (index, ip)).is_none() {
            *self.held.entry((index, ip)).or_default() += 1;
        }
        Ok(())
    }

    /// Client `key` is gone (a key never admitted, or already gone, is ignored).
    pub fn left(&mut self, key: K) {
        let Some(at) = self.clients.remove(&key) else {
            return;
        };
        if let Entry::Occupied(mut held) = self.held.entry(at) {
            *held.get_mut() -= 1;
            if *held.get() == 0 {
                held.remove();
            }
        }
    }

    /// Clients on every ingress.
    pub fn len(&self) -> usize {
        self.clients.len()
    }

    pub fn is_empty(&self) -> bool {
        self.clients.is_empty()
    }

    /// Logs `line(bind)` about a client of ingress `index` unless a flood already filled this
    /// second's lines; the next line says how many were left out.
    pub fn note(&mut self, index: usize, now: u64, line: impl FnOnce(SocketAddr) -> String) {
        if let Some(more) = self.throttles[index].allow(now) {
            warn!("{}{}", line(self.rules[index].bind), Throttle::more(more));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rules(cap: Option<usize>, sources: Option<&[&str]>) -> IngressRules {
        IngressRules {
            bind: "10.0.0.1:4444".parse().unwrap(),
            sources: sources.map(|s| SourceList::parse(s).unwrap()),
            max_per_source: cap,
        }
    }

    fn at(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    #[test]
    fn a_source_holds_its_place_from_admission_until_it_leaves() {
        let mut c = Clients::new(vec![rules(Some(2), None), rules(Some(2), None)]);
        let admit = |c: &mut Clients<u32>, key, index, source| {
            c.admit(key, index, at(source), None, false, 0)
        };
        assert_eq!(admit(&mut c, 1, 0, "10.0.0.7:1000"), Ok(()));
        assert_eq!(admit(&mut c, 2, 0, "10.0.0.7:1001"), Ok(()));
        let full = admit(&mut c, 3, 0, "10.0.0.7:1002").unwrap_err();
        assert!(matches!(full, IngressRefusal::PerSourceCap { cap: 2, .. }));
        assert!(full.by_rule());
        assert_eq!(
            admit(&mut c, 4, 1, "10.0.0.7:1003"),
            Ok(()),
            "each ingress counts its own"
        );
        assert_eq!(
            admit(&mut c, 5, 0, "[::ffff:10.0.0.8]:1004"),
            Ok(()),
            "another address"
        );
        assert_eq!(
            admit(&mut c, 6, 0, "10.0.0.8:1005"),
            Ok(()),
            "a mapped address is the same address"
        );
        assert!(admit(&mut c, 7, 0, "10.0.0.8:1006").is_err());
        c.left(1);
        c.left(1);
        c.left(99);
        assert_eq!(
            admit(&mut c, 8, 0, "10.0.0.7:1007"),
            Ok(()),
            "a place freed once"
        );
        assert!(admit(&mut c, 9, 0, "10.0.0.7:1008").is_err());
        assert_eq!(c.len(), 5);
        for key in [2, 4, 5, 6, 8] {
            c.left(key);
        }
        assert!(c.is_empty());
        assert!(c.held.is_empty(), "nothing counted for addresses that left");
    }

    #[test]
    fn refusals_follow_the_ingress_check_and_take_no_place() {
        let mut c = Clients::new(vec![rules(None, Some(&["10.0.0.0/24"]))]);
        let outside = c.admit(1, 0, at("192.0.2.1:5"), None, false, 0);
        assert_eq!(
            outside.unwrap_err().to_string(),
            "192.0.2.1 is not in ingress[0].sources"
        );
        let busy = c.admit(2, 0, at("10.0.0.9:5"), Some((4, 4)), false, 0);
        assert_eq!(busy, Err(IngressRefusal::Limit { limit: 4 }));
        let stopping = c.admit(3, 0, at("10.0.0.9:5"), None, true, 0);
        assert_eq!(stopping, Err(IngressRefusal::ShuttingDown));
        assert!(c.is_empty());
    }
}

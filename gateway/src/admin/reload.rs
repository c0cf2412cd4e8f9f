//! What a config reload (SIGHUP) may change in a running gateway.
//!
//! The live parts ([`Live`]) are swapped in: the egress allowlist, consulted
//! once per new session, and the caps and weights (`limits.*_rate_mbit`,
//! `ingress[].weight`), which the scheduler applies from its next frame; no
//! running session is disturbed. Every other field shapes sockets, keys or
//! buffers that already exist; a change there is reported as needing a
//! restart and the running value is kept. An invalid file changes nothing
//! (the caller logs the error and keeps the old config).

use log::{info, warn};

use super::{Allowlist, Config, Stats};
use crate::session::SharePolicy;

/// The parts of the config a reload changes in a running gateway.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Live {
    pub egress: Allowlist,
    pub shares: SharePolicy,
}

impl Live {
    /// As `config` sets them.
    pub fn of(config: &Config) -> Live {
        Live {
            egress: config.egress.clone(),
            shares: config.shares.clone(),
        }
    }
}

/// The outcome of comparing the running config with a newly read one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reload {
    /// The new allowlist, if it differs from the one in force.
    pub egress: Option<Allowlist>,
    /// The new caps and weights, if they differ from those in force.
    pub shares: Option<SharePolicy>,
    /// Dotted names of fields that changed but take effect only after a restart.
    pub needs_restart: Vec<&'static str>,
}

/// Re-reads `running`'s file (SIGHUP) and logs what changes, one line per
/// change. Returns the live parts to swap in, if any changed; `live` is what
/// is in force now (which may come from an earlier reload).
pub fn reread(running: &Config, live: &Live, stats: &Stats) -> Option<Live> {
    let file = running.file.display();
    info!("SIGHUP: re-reading {file}");
    let new = match Config::load(&running.file) {
        Ok(c) => c,
        Err(e) => {
            Stats::inc(&stats.config_reload_failures);
            warn!("reload failed, keeping the running config: {e}");
            return None;
        }
    };
    let reload = diff(running, live, &new);
    for field in &reload.needs_restart {
        warn!("reload: {field} changed in {file}; it takes effect only after a restart (the running value stays)");
    }
    match &reload.egress {
        Some(allow) => info!(
            "reload: egress.allow is now [{allow}] (was [{}]); running sessions carry on",
            live.egress
        ),
        None => info!("reload: egress.allow unchanged"),
    }
    match &reload.shares {
        Some(shares) => info!(
            "reload: shares are now {} (were {}); running sessions carry on",
            describe(shares),
            describe(&live.shares)
        ),
        None => info!("reload: caps and weights unchanged"),
    }
    Stats::inc(&stats.config_reloads);
    if reload.egress.is_none() && reload.shares.is_none() {
        return None;
    }
    Some(Live {
        egress: reload.egress.unwrap_or_else(|| live.egress.clone()),
        shares: reload.shares.unwrap_or_else(|| live.shares.clone()),
    })
}

/// Caps and weights in the config's own words, for a log line.
pub fn describe(shares: &SharePolicy) -> String {
    let mbit = |r: Option<u64>| r.map_or("none".to_string(), |r| format!("{}", r * 8 / 1_000_000));
    format!(
        "limits.migration_rate_mbit {}, limits.link_rate_mbit {}, ingress weights {:?}",
        mbit(shares.migration_rate),
        mbit(shares.link_rate),
        shares.weights
    )
}

/// Compares `running` (with `live` in force) with `new` (both validated).
pub fn diff(running: &Config, live: &Live, new: &Config) -> Reload {
    let mut needs_restart = Vec::new();
    let mut check = |field: &'static str, changed: bool| {
        if changed {
            needs_restart.push(field);
        }
    };
    check("gateway.name", running.name != new.name);
    check(
        "gateway.private_key_file",
        running.keypair.public != new.keypair.public,
    );
    check(
        "gateway.psk_file",
        running.psk.as_ref().map(|k| k.0) != new.psk.as_ref().map(|k| k.0),
    );
    check(
        "gateway.tunnel_listen / peer.connect",
        running.tunnel != new.tunnel,
    );
    check(
        "gateway.drain_timeout_secs",
        running.drain_timeout != new.drain_timeout,
    );
    check("peer.name", running.peer_name != new.peer_name);
    check("peer.public_key", running.peer_key != new.peer_key);
    check("peer.source", running.peer_source != new.peer_source);
    check("wan.data_flows", running.data_flows != new.data_flows);
    check("wan.congestion", running.congestion != new.congestion);
    check(
        "wan.socket_buffer_bytes",
        running.socket_buffer != new.socket_buffer,
    );
    check(
        "wan.grace_period_secs",
        running.grace_period != new.grace_period,
    );
    check(
        "wan.flow_timeout_secs",
        running.flow_timeout != new.flow_timeout,
    );
    check(
        "wan.rekey_after_bytes",
        running.rekey_after_bytes != new.rekey_after_bytes,
    );
    check(
        "wan.rekey_interval_secs",
        running.rekey_interval != new.rekey_interval,
    );
    check(
        "ingress (other than weight)",
        running.ingress.len() != new.ingress.len()
            || (running.ingress.iter())
                .zip(&new.ingress)
                .any(|(a, b)| a.differs_beyond_weight(b)),
    );
    check(
        "egress.connect_timeout_ms",
        running.connect_timeout_ms != new.connect_timeout_ms,
    );
    check("limits", running.limits != new.limits);
    check("admin.socket", running.admin_socket != new.admin_socket);
    check("metrics.bind", running.metrics_bind != new.metrics_bind);
    Reload {
        egress: (live.egress != new.egress).then(|| new.egress.clone()),
        shares: (live.shares != new.shares).then(|| new.shares.clone()),
        needs_restart,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::admin::config::test_support::{base, setup};

    #[test]
    fn the_allowlist_caps_and_weights_are_live() {
        let (_d, path, peer) = setup("reload");
        let text = format!("{}[egress]\nallow = [\"127.0.0.1:5000\"]\n", base(&peer));
        let running = Config::parse(&path, &text).unwrap();
        let live = Live::of(&running);
        let same = Config::parse(&path, &text).unwrap();
        assert_eq!(
            diff(&running, &live, &same),
            Reload {
                egress: None,
                shares: None,
                needs_restart: vec![]
            }
        );

        let text2 = text
            .replace("127.0.0.1:5000\"]", "10.0.0.0/8:*\"]")
            .replace("[egress]", "[wan]\ndata_flows = 2\n[egress]");
        let new = Config::parse(&path, &text2).unwrap();
        let r = diff(&running, &live, &new);
        assert_eq!(r.egress.unwrap().to_string(), "10.0.0.0/8:0-65535");
        assert_eq!(r.shares, None);
        assert_eq!(r.needs_restart, vec!["wan.data_flows"]);
        // Back to the first list after a reload: compared with the live one.
        let r = diff(&running, &Live::of(&new), &running);
        assert_eq!(r.egress, Some(running.egress.clone()));

        // Caps and an ingress's weight change live; its bind does not.
        let text3 = text.replace(
            "target = \"127.0.0.1:5000\"",
            "target = \"127.0.0.1:5000\"\nweight = 3\n[limits]\nmigration_rate_mbit = 300\nlink_rate_mbit = 800",
        );
        let new = Config::parse(&path, &text3).unwrap();
        let r = diff(&running, &live, &new);
        let shares = r.shares.unwrap();
        assert_eq!(shares.migration_rate, Some(37_500_000));
        assert_eq!(shares.link_rate, Some(100_000_000));
        assert_eq!(shares.weights, vec![3]);
        assert!(r.needs_restart.is_empty(), "{:?}", r.needs_restart);
        let moved = Config::parse(&path, &text3.replace(":6000", ":6001")).unwrap();
        assert_eq!(
            diff(&running, &live, &moved).needs_restart,
            vec!["ingress (other than weight)"]
        );
        assert_eq!(
            describe(&shares),
            "limits.migration_rate_mbit 300, limits.link_rate_mbit 800, ingress weights [3]"
        );
    }
}

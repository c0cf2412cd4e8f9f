//! What a config reload (SIGHUP) may change in a running gateway.
//!
//! Only the egress allowlist is swapped in: it is consulted once per new
//! session, so changing it cannot disturb a running one. Every other field
//! shapes sockets, keys or buffers that already exist; a change there is
//! reported as needing a restart and the running value is kept. An invalid
//! file changes nothing (the caller logs the error and keeps the old config).

use log::{info, warn};

use super::{Allowlist, Config, Stats};

/// The outcome of comparing the running config with a newly read one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reload {
    /// The new allowlist, if it differs from the running one.
    pub egress: Option<Allowlist>,
    /// Dotted names of fields that changed but take effect only after a restart.
    pub needs_restart: Vec<&'static str>,
}

/// Re-reads `running`'s file (SIGHUP) and logs what changes, one line per
/// change. Returns the allowlist to swap in, if it changed; `egress` is the
/// one in force now (which may come from an earlier reload).
pub fn reread(running: &Config, egress: &Allowlist, stats: &Stats) -> Option<Allowlist> {
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
    let reload = diff(running, egress, &new);
    for field in &reload.needs_restart {
        warn!("reload: {field} changed in {file}; it takes effect only after a restart (the running value stays)");
    }
    match &reload.egress {
        Some(allow) => info!(
            "reload: egress.allow is now [{allow}] (was [{egress}]); running sessions carry on"
        ),
        None => info!("reload: egress.allow unchanged"),
    }
    Stats::inc(&stats.config_reloads);
    reload.egress
}

/// Compares `running` (with `egress` in force) with `new` (both validated).
pub fn diff(running: &Config, egress: &Allowlist, new: &Config) -> Reload {
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
    check("ingress", running.ingress != new.ingress);
    check(
        "egress.connect_timeout_ms",
        running.connect_timeout_ms != new.connect_timeout_ms,
    );
    check("limits", running.limits != new.limits);
    check("admin.socket", running.admin_socket != new.admin_socket);
    check("metrics.bind", running.metrics_bind != new.metrics_bind);
    Reload {
        egress: (*egress != new.egress).then(|| new.egress.clone()),
        needs_restart,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::admin::config::test_support::{base, setup};

    #[test]
    fn only_the_allowlist_is_live() {
        let (_d, path, peer) = setup("reload");
        let text = format!("{}[egress]\nallow = [\"127.0.0.1:5000\"]\n", base(&peer));
        let running = Config::parse(&path, &text).unwrap();
        let same = Config::parse(&path, &text).unwrap();
        assert_eq!(
            diff(&running, &running.egress, &same),
            Reload {
                egress: None,
                needs_restart: vec![]
            }
        );

        let text2 = text
            .replace("127.0.0.1:5000\"]", "10.0.0.0/8:*\"]")
            .replace("[egress]", "[wan]\ndata_flows = 2\n[egress]");
        let new = Config::parse(&path, &text2).unwrap();
        let r = diff(&running, &running.egress, &new);
        assert_eq!(r.egress.unwrap().to_string(), "10.0.0.0/8:0-65535");
        assert_eq!(r.needs_restart, vec!["wan.data_flows"]);
        // Back to the first list after a reload: compared with the live one.
        let r = diff(&running, &new.egress, &running);
        assert_eq!(r.egress, Some(running.egress.clone()));
    }
}

//! One gateway's TOML.

use super::*;

/// One `[[ingress]]` entry.
#[derive(Debug, Clone)]
pub struct Ingress {
    pub bind: SocketAddr,
    /// Where the far gateway connects to (`IP:PORT` text, as written in the config).
    pub target: String,
}

/// One gateway's configuration, rendered by [`GatewayConfig::to_toml`].
#[derive(Debug, Clone)]
pub struct GatewayConfig {
    pub name: String,
    /// As written in the config (relative to the config's directory, or absolute).
    pub private_key_file: String,
    pub psk_file: Option<String>,
    pub tunnel_listen: Option<SocketAddr>,
    pub peer_name: String,
    pub peer_public_key: String,
    pub peer_connect: Option<SocketAddr>,
    pub data_flows: u32,
    pub congestion: Option<String>,
    pub ingress: Vec<Ingress>,
    pub egress_allow: Vec<String>,
    pub session_window_bytes: Option<u64>,
    pub global_buffer_bytes: Option<u64>,
    /// Extra `key = value` lines for the `[limits]` table (e.g. `max_sessions = 2000`).
    pub limits_extra: Vec<String>,
    /// Extra `key = value` lines for the `[wan]` table.
    pub wan_extra: Vec<String>,
    /// The admin socket for `lmas status` (`[admin] socket`).
    pub admin_socket: Option<PathBuf>,
    /// Extra `key = value` lines for the `[gateway]` table (e.g. `drain_timeout_secs = 5`).
    pub gateway_extra: Vec<String>,
    /// The metrics endpoint (`[metrics] bind`); none: metrics off.
    pub metrics_bind: Option<SocketAddr>,
}

fn toml_str(s: &str) -> String {
    let mut out = String::from("\"");
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

impl GatewayConfig {
    pub fn to_toml(&self) -> String {
        let mut t = String::new();
        let _ = writeln!(t, "[gateway]");
        let _ = writeln!(t, "name = {}", toml_str(&self.name));
        let _ = writeln!(t, "private_key_file = {}", toml_str(&self.private_key_file));
        if let Some(p) = &self.psk_file {
            let _ = writeln!(t, "psk_file = {}", toml_str(p));
        }
        if let Some(a) = &self.tunnel_listen {
            let _ = writeln!(t, "tunnel_listen = \"{a}\"");
        }
        for line in &self.gateway_extra {
            let _ = writeln!(t, "{line}");
        }
        let _ = writeln!(t, "\n[peer]");
        let _ = writeln!(t, "name = {}", toml_str(&self.peer_name));
        let _ = writeln!(t, "public_key = {}", toml_str(&self.peer_public_key));
        if let Some(a) = &self.peer_connect {
            let _ = writeln!(t, "connect = \"{a}\"");
        }
        let _ = writeln!(t, "\n[wan]");
        let _ = writeln!(t, "data_flows = {}", self.data_flows);
        if let Some(c) = &self.congestion {
            let _ = writeln!(t, "congestion = {}", toml_str(c));
        }
        for line in &self.wan_extra {
            let _ = writeln!(t, "{line}");
        }
        if let Some(p) = &self.admin_socket {
            let _ = writeln!(
                t,
                "\n[admin]\nsocket = {}",
                toml_str(&p.display().to_string())
            );
        }
        for i in &self.ingress {
            let _ = writeln!(t, "\n[[ingress]]");
            let _ = writeln!(t, "mode = \"listen\"");
            let _ = writeln!(t, "bind = \"{}\"", i.bind);
            let _ = writeln!(t, "target = {}", toml_str(&i.target));
        }
        if !self.egress_allow.is_empty() {
            let allow: Vec<String> = self.egress_allow.iter().map(|a| toml_str(a)).collect();
            let _ = writeln!(t, "\n[egress]");
            let _ = writeln!(t, "allow = [{}]", allow.join(", "));
        }
        if self.session_window_bytes.is_some()
            || self.global_buffer_bytes.is_some()
            || !self.limits_extra.is_empty()
        {
            let _ = writeln!(t, "\n[limits]");
            if let Some(v) = self.session_window_bytes {
                let _ = writeln!(t, "session_window_bytes = {v}");
            }
            if let Some(v) = self.global_buffer_bytes {
                let _ = writeln!(t, "global_buffer_bytes = {v}");
            }
            for line in &self.limits_extra {
                let _ = writeln!(t, "{line}");
            }
        }
        if let Some(a) = &self.metrics_bind {
            let _ = writeln!(t, "\n[metrics]\nbind = \"{a}\"");
        }
        t
    }
}

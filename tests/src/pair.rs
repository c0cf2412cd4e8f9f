//! A pair of gateways: gateway A dials gateway B.

use super::*;

/// What to start: gateway A (`gw-a`, dials) and gateway B (`gw-b`, accepts).
#[derive(Debug, Clone)]
pub struct PairSpec {
    pub data_flows: u32,
    /// Ingress listeners on A, one per target (`IP:PORT`); each binds a free loopback port.
    pub ingress: Vec<String>,
    /// B's egress allowlist.
    pub egress_allow: Vec<String>,
    /// Replace the public key A expects of B (to test a wrong key).
    pub a_peer_key: Option<String>,
    /// Replace the public key B expects of A.
    pub b_peer_key: Option<String>,
    pub session_window_bytes: Option<u64>,
    pub global_buffer_bytes: Option<u64>,
    /// Extra `key = value` lines for A's `[limits]` table only (where A's limits differ from
    /// B's, e.g. `global_buffer_bytes`: then leave [`PairSpec::global_buffer_bytes`] unset).
    pub a_limits_extra: Vec<String>,
    /// The same for B.
    pub b_limits_extra: Vec<String>,
    /// Extra `[wan]` lines for A only, after [`PairSpec::wan_extra`] (e.g. `compression`).
    pub a_wan_extra: Vec<String>,
    /// The same for B.
    pub b_wan_extra: Vec<String>,
    /// Pre-shared key file contents for A and B (written mode 0600 as `gw-X.psk`).
    pub psk_a: Option<String>,
    pub psk_b: Option<String>,
    /// Extra `key = value` lines for both gateways' `[wan]` tables.
    pub wan_extra: Vec<String>,
    /// Where A dials (`peer.connect`) instead of B's `tunnel_listen`, e.g. a proxy in between.
    pub a_connect: Option<SocketAddr>,
    /// Run A and B in network namespaces (see [`netns::Wan::placement`]); `None`: loopback.
    pub netns: Option<netns::Placement>,
    /// Give both gateways a metrics endpoint on a free loopback port (`[metrics] bind`).
    pub metrics: bool,
    /// `gateway.drain_timeout_secs` of both gateways; `None`: the gateway's default.
    pub drain_timeout_secs: Option<u64>,
}

impl Default for PairSpec {
    fn default() -> Self {
        PairSpec {
            data_flows: 4,
            ingress: Vec::new(),
            egress_allow: Vec::new(),
            a_peer_key: None,
            b_peer_key: None,
            session_window_bytes: None,
            global_buffer_bytes: None,
            a_limits_extra: Vec::new(),
            b_limits_extra: Vec::new(),
            a_wan_extra: Vec::new(),
            b_wan_extra: Vec::new(),
            psk_a: None,
            psk_b: None,
            wan_extra: Vec::new(),
            a_connect: None,
            netns: None,
            metrics: false,
            drain_timeout_secs: None,
        }
    }
}

impl PairSpec {
    /// A spec with `data_flows` whose A forwards one ingress to `target`, which B allows.
    pub fn to_target(data_flows: u32, target: SocketAddr) -> PairSpec {
        PairSpec {
            data_flows,
            ingress: vec![target.to_string()],
            egress_allow: vec![target.to_string()],
            ..PairSpec::default()
        }
    }
}

/// Two running gateways in a temporary directory. A has the ingress listeners and dials B's
/// `tunnel_listen`; B has the egress allowlist.
///
/// On drop both are stopped; if the thread is panicking their log tails are printed, and
/// `LMAS_KEEP_TMP=1` keeps the directory.
pub struct Pair {
    pub dir: PathBuf,
    pub a: Gateway,
    pub b: Gateway,
    pub a_config: GatewayConfig,
    pub b_config: GatewayConfig,
    pub tunnel: SocketAddr,
    /// The ingress listeners on A, in the order of [`PairSpec::ingress`].
    pub ingress: Vec<SocketAddr>,
    _tmp: Option<tempfile::TempDir>,
}

/// A new temporary directory (kept if `LMAS_KEEP_TMP` is set).
pub fn temp_dir(prefix: &str) -> (PathBuf, Option<tempfile::TempDir>) {
    let t = tempfile::Builder::new()
        .prefix(prefix)
        .tempdir()
        .expect("create temp dir");
    if std::env::var_os("LMAS_KEEP_TMP").is_some() {
        let p = t.keep();
        eprintln!("keeping {}", p.display());
        (p, None)
    } else {
        (t.path().to_path_buf(), Some(t))
    }
}

impl Pair {
    /// Makes keys and configs and starts B then A (A once B's tunnel port listens). Does not wait
    /// for the tunnel: see [`Pair::wait_up`].
    pub fn launch(spec: &PairSpec) -> Pair {
        let (dir, tmp) = temp_dir("lmas-e2e-");
        let key_a = keygen(&dir.join("gw-a.key"));
        let key_b = keygen(&dir.join("gw-b.key"));
        let tunnel = match &spec.netns {
            Some(p) => SocketAddr::new(p.tunnel_ip, free_port()),
            None => free_addr(),
        };
        let write_psk = |name: &str, text: &Option<String>| -> Option<String> {
            let text = text.as_ref()?;
            let path = dir.join(name);
            fs::write(&path, format!("{text}\n")).expect("write psk file");
            fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o600))
                .expect("chmod psk file");
            Some(name.to_string())
        };
        let psk_a = write_psk("gw-a.psk", &spec.psk_a);
        let psk_b = write_psk("gw-b.psk", &spec.psk_b);
        let gateway_extra: Vec<String> = spec
            .drain_timeout_secs
            .map(|s| format!("drain_timeout_secs = {s}"))
            .into_iter()
            .collect();
        let metrics = || spec.metrics.then(free_addr);
        let ingress: Vec<Ingress> = spec
            .ingress
            .iter()
            .map(|t| Ingress {
                bind: free_addr(),
                target: t.clone(),
            })
            .collect();
        let a_config = GatewayConfig {
            name: "gw-a".into(),
            private_key_file: "gw-a.key".into(),
            psk_file: psk_a,
            tunnel_listen: None,
            peer_name: "gw-b".into(),
            peer_public_key: spec.a_peer_key.clone().unwrap_or(key_b.public.clone()),
            peer_connect: Some(spec.a_connect.unwrap_or(tunnel)),
            data_flows: spec.data_flows,
            congestion: None,
            ingress: ingress.clone(),
            egress_allow: Vec::new(),
            session_window_bytes: spec.session_window_bytes,
            global_buffer_bytes: spec.global_buffer_bytes,
            limits_extra: spec.a_limits_extra.clone(),
            wan_extra: [&spec.wan_extra[..], &spec.a_wan_extra[..]].concat(),
            admin_socket: Some(dir.join("gw-a.sock")),
            gateway_extra: gateway_extra.clone(),
            metrics_bind: metrics(),
        };
        let b_config = GatewayConfig {
            name: "gw-b".into(),
            private_key_file: "gw-b.key".into(),
            psk_file: psk_b,
            tunnel_listen: Some(tunnel),
            peer_name: "gw-a".into(),
            peer_public_key: spec.b_peer_key.clone().unwrap_or(key_a.public.clone()),
            peer_connect: None,
            data_flows: spec.data_flows,
            congestion: None,
            ingress: Vec::new(),
            egress_allow: spec.egress_allow.clone(),
            session_window_bytes: spec.session_window_bytes,
            global_buffer_bytes: spec.global_buffer_bytes,
            limits_extra: spec.b_limits_extra.clone(),
            wan_extra: [&spec.wan_extra[..], &spec.b_wan_extra[..]].concat(),
            admin_socket: Some(dir.join("gw-b.sock")),
            gateway_extra,
            metrics_bind: metrics(),
        };
        let a_path = dir.join("gw-a.toml");
        let b_path = dir.join("gw-b.toml");
        fs::write(&a_path, a_config.to_toml()).expect("write gw-a.toml");
        fs::write(&b_path, b_config.to_toml()).expect("write gw-b.toml");
        let (ns_a, ns_b) = match &spec.netns {
            Some(p) => (Some(p.a.clone()), Some(p.b.clone())),
            None => (None, None),
        };
        let mut b = Gateway::spawn_in("gw-b", &b_path, &dir.join("gw-b.log"), ns_b);
        let b_pid = b.pid().filter(|_| spec.netns.is_some());
        if let Err(e) = wait_listening_in(b_pid, tunnel.port(), TUNNEL_UP_TIMEOUT) {
            let running = b.is_running();
            panic!(
                "gw-b: {e} (tunnel_listen = {tunnel}, running: {running}); log:\n{}",
                b.log_tail(40)
            );
        }
        let a = Gateway::spawn_in("gw-a", &a_path, &dir.join("gw-a.log"), ns_a);
        Pair {
            dir,
            a,
            b,
            a_config,
            b_config,
            tunnel,
            ingress: ingress.iter().map(|i| i.bind).collect(),
            _tmp: tmp,
        }
    }

    /// Waits for `tunnel up` on both gateways and `listening on` for every ingress; panics with
    /// both logs otherwise.
    pub fn wait_up(&mut self) {
        let r = self
            .a
            .wait_for_log("tunnel up: peer gw-b", TUNNEL_UP_TIMEOUT)
            .and_then(|_| {
                self.b
                    .wait_for_log("tunnel up: peer gw-a", TUNNEL_UP_TIMEOUT)
            })
            .and_then(|_| {
                for i in &self.ingress {
                    self.a
                        .wait_for_log(&format!("listening on {i}"), TUNNEL_UP_TIMEOUT)?;
                }
                Ok(())
            });
        if let Err(e) = r {
            panic!("{e}\n--- other gateway logs:\n{}", self.logs());
        }
    }

    /// [`Pair::launch`] then [`Pair::wait_up`].
    pub fn start(spec: &PairSpec) -> Pair {
        let mut p = Pair::launch(spec);
        p.wait_up();
        p
    }

    /// Both logs, labelled.
    pub fn logs(&self) -> String {
        format!(
            "--- gw-a ({}):\n{}\n--- gw-b ({}):\n{}",
            self.a.log_path.display(),
            self.a.log_tail(60),
            self.b.log_path.display(),
            self.b.log_tail(60)
        )
    }

    /// Panics (with both logs) unless both gateways still run.
    pub fn assert_running(&mut self) {
        let a = self.a.is_running();
        let b = self.b.is_running();
        assert!(
            a && b,
            "a gateway died (gw-a running: {a}, gw-b running: {b})\n{}",
            self.logs()
        );
    }
}

impl Drop for Pair {
    fn drop(&mut self) {
        self.a.stop();
        self.b.stop();
        if thread::panicking() {
            eprintln!("gateway logs in {}:\n{}", self.dir.display(), self.logs());
        }
    }
}

/// Parses a size: plain bytes, or with a binary suffix `K`, `M`, `G`, `T` (optionally `iB`/`B`).
pub fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, suffix) = t.split_at(split);
    let n: u64 = num
        .parse()
        .map_err(|_| format!("not a size: {s:?} (use e.g. 1048576, 512M, 1G)"))?;
    let mult: u64 = match suffix.trim().to_ascii_uppercase().as_str() {
        "" | "B" => 1,
        "K" | "KB" | "KIB" => 1 << 10,
        "M" | "MB" | "MIB" => 1 << 20,
        "G" | "GB" | "GIB" => 1 << 30,
        "T" | "TB" | "TIB" => 1 << 40,
        _ => return Err(format!("not a size: {s:?} (use e.g. 1048576, 512M, 1G)")),
    };
    n.checked_mul(mult)
        .ok_or_else(|| format!("size too large: {s:?}"))
}

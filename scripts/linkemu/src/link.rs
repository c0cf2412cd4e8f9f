//! Link parameters, their text form on the control socket, and the kernel pieces configured
//! with the stock tools: `tc` (tbf rate limit) and `iptables` (the NFQUEUE rules).

use std::fmt;
use std::process::{Command, Stdio};

use anyhow::{bail, Context, Result};

/// Parameters of one direction of the link.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Dir {
    /// One-way delay added to every packet, milliseconds.
    pub delay_ms: f64,
    /// Uniform jitter, ± milliseconds (packets are never reordered).
    pub jitter_ms: f64,
    /// Random loss of wire packets, percent.
    pub loss_pct: f64,
}

/// The whole link: a→b is traffic entering the router on device a (leaving on b).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Params {
    pub ab: Dir,
    pub ba: Dir,
    /// Rate limit in Mbit/s per direction (L2 bytes), 0 = no limit.
    pub rate_mbit: f64,
    /// tbf queue in bytes; 0 = automatic (one bandwidth-delay product, at least 256 KiB).
    pub queue_bytes: u64,
}

/// A partial update, as given on the command line or the control socket.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Change {
    pub delay_ab: Option<f64>,
    pub delay_ba: Option<f64>,
    pub jitter_ab: Option<f64>,
    pub jitter_ba: Option<f64>,
    pub loss_ab: Option<f64>,
    pub loss_ba: Option<f64>,
    pub rate_mbit: Option<f64>,
    pub queue_bytes: Option<u64>,
}

const KEYS: [&str; 8] = [
    "delay_ab",
    "delay_ba",
    "jitter_ab",
    "jitter_ba",
    "loss_ab",
    "loss_ba",
    "rate",
    "queue",
];

impl Change {
    pub fn is_empty(&self) -> bool {
        *self == Change::default()
    }

    /// Parses `key=value` words (the control protocol's `set` arguments).
    pub fn parse(words: &str) -> Result<Change> {
        let mut c = Change::default();
        for w in words.split_whitespace() {
            let (k, v) = w
                .split_once('=')
                .with_context(|| format!("expected key=value, got {w:?}"))?;
            let num = || -> Result<f64> {
                let x: f64 = v
                    .parse()
                    .with_context(|| format!("{k}: not a number: {v:?}"))?;
                if !x.is_finite() || x < 0.0 {
                    bail!("{k}: must be a finite number ≥ 0, got {v}");
                }
                Ok(x)
            };
            match k {
                "delay_ab" => c.delay_ab = Some(num()?),
                "delay_ba" => c.delay_ba = Some(num()?),
                "jitter_ab" => c.jitter_ab = Some(num()?),
                "jitter_ba" => c.jitter_ba = Some(num()?),
                "loss_ab" | "loss_ba" => {
                    let x = num()?;
                    if x > 100.0 {
                        bail!("{k}: loss is a percentage (0..100), got {x}");
                    }
                    if k == "loss_ab" {
                        c.loss_ab = Some(x)
                    } else {
                        c.loss_ba = Some(x)
                    }
                }
                "rate" => c.rate_mbit = Some(num()?),
                "queue" => c.queue_bytes = Some(num()? as u64),
                _ => bail!("unknown key {k:?} (known: {})", KEYS.join(", ")),
            }
        }
        Ok(c)
    }

    pub fn apply(&self, p: &mut Params) {
        let set = |dst: &mut f64, v: Option<f64>| {
            if let Some(v) = v {
                *dst = v;
            }
        };
        set(&mut p.ab.delay_ms, self.delay_ab);
        set(&mut p.ba.delay_ms, self.delay_ba);
        set(&mut p.ab.jitter_ms, self.jitter_ab);
        set(&mut p.ba.jitter_ms, self.jitter_ba);
        set(&mut p.ab.loss_pct, self.loss_ab);
        set(&mut p.ba.loss_pct, self.loss_ba);
        set(&mut p.rate_mbit, self.rate_mbit);
        if let Some(q) = self.queue_bytes {
            p.queue_bytes = q;
        }
    }
}

impl fmt::Display for Change {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let vals = [
            self.delay_ab,
            self.delay_ba,
            self.jitter_ab,
            self.jitter_ba,
            self.loss_ab,
            self.loss_ba,
            self.rate_mbit,
            self.queue_bytes.map(|q| q as f64),
        ];
        let mut first = true;
        for (k, v) in KEYS.iter().zip(vals) {
            if let Some(v) = v {
                if !first {
                    f.write_str(" ")?;
                }
                first = false;
                write!(f, "{k}={v}")?;
            }
        }
        Ok(())
    }
}

impl Params {
    pub fn rtt_ms(&self) -> f64 {
        self.ab.delay_ms + self.ba.delay_ms
    }

    /// (burst, limit) in bytes for tbf, or None when unlimited.
    pub fn tbf_sizes(&self) -> Option<(u64, u64)> {
        if self.rate_mbit <= 0.0 {
            return None;
        }
        let bytes_per_s = self.rate_mbit * 1e6 / 8.0;
        // 1 ms of line rate, at least a few MTUs. GSO aggregates larger than the burst are
        // segmented by tbf, which is correct, just costs CPU at high rates.
        let burst = ((bytes_per_s / 1000.0) as u64).max(16 * 1024);
        let limit = if self.queue_bytes > 0 {
            self.queue_bytes
        } else {
            let bdp = bytes_per_s * self.rtt_ms() / 1000.0;
            (bdp as u64).max(256 * 1024)
        };
        Some((burst, limit.max(burst)))
    }
}

fn run(cmd: &mut Command) -> Result<String> {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("cannot run {cmd:?}"))?;
    if !out.status.success() {
        bail!(
            "{cmd:?} failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Installs (or removes, when `p.rate_mbit` is 0) the tbf rate limiter on `dev`'s egress.
pub fn set_rate(dev: &str, p: &Params) -> Result<()> {
    match p.tbf_sizes() {
        None => {
            // No qdisc to delete is fine.
            let _ = run(Command::new("tc").args(["qdisc", "del", "dev", dev, "root"]));
            Ok(())
        }
        Some((burst, limit)) => {
            let rate = format!("{}bit", (p.rate_mbit * 1e6).round() as u64);
            run(Command::new("tc").args([
                "qdisc",
                "replace",
                "dev",
                dev,
                "root",
                "tbf",
                "rate",
                &rate,
                "burst",
                &burst.to_string(),
                "limit",
                &limit.to_string(),
            ]))
            .map(|_| ())
        }
    }
}

pub fn clear_rate(dev: &str) {
    let _ = run(Command::new("tc").args(["qdisc", "del", "dev", dev, "root"]));
}

/// Counters of the root qdisc of `dev` (from `tc -s qdisc show`).
#[derive(Debug, Default, Clone, Copy)]
pub struct QdiscStats {
    pub sent_bytes: u64,
    pub sent_pkts: u64,
    pub dropped: u64,
    pub overlimits: u64,
    pub backlog_bytes: u64,
}

pub fn qdisc_stats(dev: &str) -> QdiscStats {
    let text = run(Command::new("tc").args(["-s", "qdisc", "show", "dev", dev, "root"]))
        .unwrap_or_default();
    parse_qdisc_stats(&text)
}

fn parse_qdisc_stats(text: &str) -> QdiscStats {
    let mut s = QdiscStats::default();
    let words: Vec<&str> = text
        .split(|c: char| c.is_whitespace() || c == ',' || c == '(' || c == ')')
        .filter(|w| !w.is_empty())
        .collect();
    let num = |w: &str| w.trim_end_matches(['b', 'p']).parse::<u64>().unwrap_or(0);
    for (i, w) in words.iter().enumerate() {
        let next = words.get(i + 1).copied().unwrap_or("");
        match *w {
            "Sent" => s.sent_bytes = num(next),
            "bytes" => s.sent_pkts = num(next),
            "dropped" => s.dropped = num(next),
            "overlimits" => s.overlimits = num(next),
            "backlog" => s.backlog_bytes = num(next),
            _ => {}
        }
    }
    s
}

/// Our own iptables chain, jumped to from FORWARD. (This kernel has the xtables NFQUEUE
/// target but no nft `queue` expression, so the rules go through iptables.)
fn chain(name: &str) -> String {
    let mut c = format!("LINKEMU_{name}");
    c.truncate(28);
    c
}

fn iptables(args: &[&str]) -> Result<String> {
    run(Command::new("iptables").arg("-w").args(args))
}

/// Sends forwarded packets entering on `dev_a` to queue `qa` and on `dev_b` to `qb`.
pub fn install_queue_rules(name: &str, dev_a: &str, qa: u16, dev_b: &str, qb: u16) -> Result<()> {
    remove_queue_rules(name);
    let c = chain(name);
    let (qa, qb) = (qa.to_string(), qb.to_string());
    iptables(&["-N", &c]).context("iptables (install iptables; NFQUEUE target needed)")?;
    iptables(&["-A", &c, "-i", dev_a, "-j", "NFQUEUE", "--queue-num", &qa])?;
    iptables(&["-A", &c, "-i", dev_b, "-j", "NFQUEUE", "--queue-num", &qb])?;
    iptables(&["-I", "FORWARD", "1", "-j", &c])?;
    Ok(())
}

pub fn remove_queue_rules(name: &str) {
    let c = chain(name);
    while iptables(&["-D", "FORWARD", "-j", &c]).is_ok() {}
    let _ = iptables(&["-F", &c]);
    let _ = iptables(&["-X", &c]);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn change_round_trip() {
        let c = Change::parse("delay_ab=25 delay_ba=25.5 loss_ab=0.1 rate=1000 queue=0").unwrap();
        assert_eq!(c.delay_ab, Some(25.0));
        assert_eq!(Change::parse(&c.to_string()).unwrap(), c);
        let mut p = Params::default();
        c.apply(&mut p);
        assert_eq!(p.rtt_ms(), 50.5);
        assert_eq!(p.ab.loss_pct, 0.1);
        assert_eq!(p.ba.loss_pct, 0.0);
    }

    #[test]
    fn change_rejects_bad_input() {
        assert!(Change::parse("delay_ab=-1").is_err());
        assert!(Change::parse("loss_ab=101").is_err());
        assert!(Change::parse("bogus=1").is_err());
        assert!(Change::parse("delay_ab").is_err());
        assert!(Change::parse("rate=NaN").is_err());
    }

    #[test]
    fn tbf_queue_is_one_bdp() {
        let mut p = Params {
            rate_mbit: 1000.0,
            ..Default::default()
        };
        p.ab.delay_ms = 50.0;
        p.ba.delay_ms = 50.0;
        let (burst, limit) = p.tbf_sizes().unwrap();
        assert_eq!(burst, 125_000);
        assert_eq!(limit, 12_500_000);
        p.ab.delay_ms = 0.0;
        p.ba.delay_ms = 0.0;
        assert_eq!(p.tbf_sizes().unwrap().1, 256 * 1024);
        p.rate_mbit = 0.0;
        assert!(p.tbf_sizes().is_none());
    }

    #[test]
    fn parses_tc_output() {
        let t = "qdisc tbf 8001: root refcnt 2 rate 1Gbit burst 125000b lat 0us\n \
                 Sent 123456 bytes 789 pkt (dropped 3, overlimits 42 requeues 0)\n \
                 backlog 3028b 2p requeues 0\n";
        let s = parse_qdisc_stats(t);
        assert_eq!(s.sent_bytes, 123456);
        assert_eq!(s.sent_pkts, 789);
        assert_eq!(s.dropped, 3);
        assert_eq!(s.overlimits, 42);
        assert_eq!(s.backlog_bytes, 3028);
    }
}

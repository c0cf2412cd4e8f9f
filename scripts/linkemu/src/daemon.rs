//! The link daemon: runs in the router namespace, owns the NFQUEUE delay line, the XDP loss
//! program and the tbf rate limiters, and answers a line protocol on a Unix socket:
//!
//! * `stats` → one header line and one line per direction, `key=value` words;
//!   `stats-reset` also restarts the lateness statistics (late_avg_us, late_max_us);
//! * `set key=value ...` (keys of [`Change`]) → `ok ...` or `error: ...`;
//! * `quit` → `ok`, then the daemon removes everything it installed and exits.
//!
//! Delay: each forwarded packet is queued (metadata only) and stamped on arrival; its deadline
//! is `max(previous deadline, arrival + delay ± jitter)`, so a direction stays FIFO and one
//! batch verdict releases every packet that is due.

use std::collections::VecDeque;
use std::io::{BufRead, BufReader, Write};
use std::os::fd::AsRawFd;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};

use crate::bpf::{self, LossProgram};
use crate::link::{self, Change, Dir, Params};
use crate::nfqueue::{self, NfQueue, Packet};
use crate::sys;

pub struct Options {
    pub name: String,
    pub dev_a: String,
    pub dev_b: String,
    pub queue_base: u16,
    pub socket: PathBuf,
    pub params: Params,
    /// Keep the XDP program attached even while a direction has no loss.
    pub xdp_always: bool,
    /// Run the delay loop under SCHED_FIFO (it sleeps in ppoll between deadlines).
    pub realtime: bool,
}

struct Held {
    deadline: Instant,
    id: u32,
}

struct Direction {
    label: &'static str,
    /// Packets of this direction arrive on `dev_in` and leave on `dev_out`.
    dev_in: String,
    ifindex_in: u32,
    dev_out: String,
    queue: u16,
    held: VecDeque<Held>,
    last_deadline: Instant,
    delayed: u64,
    batches: u64,
    late_sum_us: f64,
    late_max_us: f64,
    /// Packets counted in late_sum_us/late_max_us (reset by `stats-reset`).
    late_n: u64,
}

impl Direction {
    fn admit(&mut self, id: u32, now: Instant, d: &Dir, rng: &mut u64) {
        let mut delay_us = d.delay_ms * 1000.0;
        if d.jitter_ms > 0.0 {
            let u = next_unit(rng) * 2.0 - 1.0;
            delay_us = (delay_us + u * d.jitter_ms * 1000.0).max(0.0);
        }
        let deadline =
            (now + Duration::from_nanos((delay_us * 1000.0) as u64)).max(self.last_deadline);
        self.last_deadline = deadline;
        self.held.push_back(Held { deadline, id });
    }

    /// Releases every packet due by `now`; returns the last released id.
    fn due(&mut self, now: Instant) -> Option<u32> {
        let mut last = None;
        while let Some(h) = self.held.front() {
            if h.deadline > now {
                break;
            }
            let late = now.duration_since(h.deadline).as_secs_f64() * 1e6;
            self.late_sum_us += late;
            self.late_max_us = self.late_max_us.max(late);
            self.late_n += 1;
            self.delayed += 1;
            last = Some(h.id);
            self.held.pop_front();
        }
        if last.is_some() {
            self.batches += 1;
        }
        last
    }
}

/// xorshift64*: good enough for jitter.
fn next_unit(s: &mut u64) -> f64 {
    *s ^= *s >> 12;
    *s ^= *s << 25;
    *s ^= *s >> 27;
    (s.wrapping_mul(0x2545F4914F6CDD1D) >> 11) as f64 / (1u64 << 53) as f64
}

static STOP: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    STOP.store(true, Ordering::SeqCst);
}

struct Daemon {
    opts: Options,
    params: Params,
    dirs: [Direction; 2],
    nfq: NfQueue,
    xdp: LossProgram,
    started: Instant,
}

/// Removes what a previous (crashed) instance may have left behind.
fn cleanup_kernel(name: &str, dev_a: &str, dev_b: &str) {
    link::remove_queue_rules(name);
    link::clear_rate(dev_a);
    link::clear_rate(dev_b);
}

pub fn run(opts: Options) -> Result<()> {
    sys::install_signal_handlers(on_signal);
    sys::set_timer_slack_ns(1000);
    if opts.realtime {
        if let Err(e) = sys::set_realtime(10) {
            eprintln!(
                "linkemu: warning: SCHED_FIFO refused ({e}); delays may overshoot under load"
            );
        }
    }
    let ifa = bpf::ifindex(&opts.dev_a)?;
    let ifb = bpf::ifindex(&opts.dev_b)?;
    cleanup_kernel(&opts.name, &opts.dev_a, &opts.dev_b);

    let xdp = LossProgram::load()?;

    let (qa, qb) = (opts.queue_base, opts.queue_base + 1);
    let mut nfq = NfQueue::open(64 << 20).context("open NFQUEUE netlink socket")?;
    nfq.bind(qa, 1 << 17)?;
    nfq.bind(qb, 1 << 17)?;

    if let Some(dir) = opts.socket.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("create {}", dir.display()))?;
    }
    let _ = std::fs::remove_file(&opts.socket);
    let listener = UnixListener::bind(&opts.socket)
        .with_context(|| format!("bind control socket {}", opts.socket.display()))?;
    listener.set_nonblocking(true)?;

    let now = Instant::now();
    let mk = |label, dev_in: &str, ifindex_in, dev_out: &str, queue| Direction {
        label,
        dev_in: dev_in.to_string(),
        ifindex_in,
        dev_out: dev_out.to_string(),
        queue,
        held: VecDeque::new(),
        last_deadline: now,
        delayed: 0,
        batches: 0,
        late_sum_us: 0.0,
        late_max_us: 0.0,
        late_n: 0,
    };
    let dirs = [
        mk("a->b", &opts.dev_a, ifa, &opts.dev_b, qa),
        mk("b->a", &opts.dev_b, ifb, &opts.dev_a, qb),
    ];
    let mut d = Daemon {
        params: Params::default(),
        dirs,
        nfq,
        xdp,
        started: now,
        opts,
    };
    let initial = d.opts.params;
    let result = d
        .apply(&initial)
        .and_then(|_| link::install_queue_rules(&d.opts.name, &d.opts.dev_a, qa, &d.opts.dev_b, qb))
        .and_then(|_| {
            eprintln!(
                "linkemu: {} up: {} <-> {} queues {qa},{qb} {}",
                d.opts.name,
                d.opts.dev_a,
                d.opts.dev_b,
                d.describe()
            );
            d.event_loop(&listener)
        });

    // Teardown: stop queueing first, then release whatever is still held.
    link::remove_queue_rules(&d.opts.name);
    for dir in &d.dirs {
        if let Some(h) = dir.held.back() {
            let _ = d.nfq.accept_upto(dir.queue, h.id);
        }
    }
    let _ = d.nfq.unbind(qa);
    let _ = d.nfq.unbind(qb);
    link::clear_rate(&d.opts.dev_a);
    link::clear_rate(&d.opts.dev_b);
    let _ = std::fs::remove_file(&d.opts.socket);
    eprintln!("linkemu: {} down", d.opts.name);
    result
}

impl Daemon {
    fn describe(&self) -> String {
        let p = &self.params;
        let (burst, limit) = p.tbf_sizes().unwrap_or((0, 0));
        format!(
            "delay_ab_ms={} delay_ba_ms={} jitter_ab_ms={} jitter_ba_ms={} loss_ab_pct={} \
             loss_ba_pct={} rate_mbit={} tbf_burst_bytes={burst} tbf_limit_bytes={limit}",
            p.ab.delay_ms,
            p.ba.delay_ms,
            p.ab.jitter_ms,
            p.ba.jitter_ms,
            p.ab.loss_pct,
            p.ba.loss_pct,
            p.rate_mbit,
        )
    }

    fn apply(&mut self, new: &Params) -> Result<()> {
        let old = self.params;
        for (d, p) in self.dirs.iter().zip([new.ab, new.ba]) {
            self.xdp.set_loss(d.ifindex_in, p.loss_pct / 100.0)?;
            // Native XDP on a veth copies every frame into a page-pool page, which triples
            // the receive-buffer truesize and so shrinks the hosts' TCP receive windows
            // (docs/LAB.md). The program is therefore only attached while it has work to do.
            if p.loss_pct > 0.0 || self.opts.xdp_always {
                self.xdp.attach(d.ifindex_in, &d.dev_in)?;
            } else {
                self.xdp.detach(d.ifindex_in);
            }
        }
        if old.tbf_sizes() != new.tbf_sizes() || old.rate_mbit != new.rate_mbit {
            // a->b traffic is shaped where it leaves: on device b (and vice versa).
            link::set_rate(&self.dirs[0].dev_out, new)?;
            link::set_rate(&self.dirs[1].dev_out, new)?;
        }
        self.params = *new;
        Ok(())
    }

    fn event_loop(&mut self, listener: &UnixListener) -> Result<()> {
        let mut rng: u64 = 0x9E3779B97F4A7C15 ^ std::process::id() as u64;
        let mut pkts: Vec<Packet> = Vec::with_capacity(nfqueue::BATCH);
        let nfq_fd = self.nfq.as_raw_fd();
        let ctl_fd = listener.as_raw_fd();
        while !STOP.load(Ordering::SeqCst) {
            let now = Instant::now();
            let next = self
                .dirs
                .iter()
                .filter_map(|d| d.held.front().map(|h| h.deadline))
                .min();
            let timeout = match next {
                Some(t) => t.saturating_duration_since(now),
                None => Duration::from_millis(500),
            };
            let (nfq_ready, ctl_ready) = sys::poll2(nfq_fd, ctl_fd, timeout)?;

            if nfq_ready {
                // Drain a bounded amount so releases are never starved.
                for _ in 0..16 {
                    pkts.clear();
                    let n = self.nfq.recv_batch(&mut pkts).context("NFQUEUE recv")?;
                    let now = Instant::now();
                    for p in &pkts {
                        if let Some(i) = self.dirs.iter().position(|d| d.queue == p.queue) {
                            let dp = if i == 0 {
                                self.params.ab
                            } else {
                                self.params.ba
                            };
                            self.dirs[i].admit(p.id, now, &dp, &mut rng);
                        }
                    }
                    if n < nfqueue::BATCH {
                        break;
                    }
                }
            }

            let now = Instant::now();
            for d in &mut self.dirs {
                if let Some(id) = d.due(now) {
                    self.nfq
                        .accept_upto(d.queue, id)
                        .context("NFQUEUE verdict")?;
                }
            }

            if ctl_ready {
                self.serve(listener);
            }
        }
        Ok(())
    }

    fn serve(&mut self, listener: &UnixListener) {
        while let Ok((stream, _)) = listener.accept() {
            if let Err(e) = self.handle(stream) {
                eprintln!("linkemu: control: {e:#}");
            }
        }
    }

    fn handle(&mut self, stream: UnixStream) -> Result<()> {
        stream.set_nonblocking(false)?;
        stream.set_read_timeout(Some(Duration::from_secs(1)))?;
        let mut line = String::new();
        BufReader::new(&stream).read_line(&mut line)?;
        let line = line.trim();
        let (cmd, rest) = line.split_once(' ').unwrap_or((line, ""));
        let reply = match cmd {
            "stats" | "stats-reset" => {
                // `tc -s` takes milliseconds: run it off the delay loop's thread.
                let (text, devs) = self.stats();
                if cmd == "stats-reset" {
                    for d in &mut self.dirs {
                        d.late_sum_us = 0.0;
                        d.late_max_us = 0.0;
                        d.late_n = 0;
                    }
                }
                std::thread::spawn(move || {
                    let mut text = text;
                    for (i, dev) in devs.iter().enumerate() {
                        let q = link::qdisc_stats(dev);
                        text[i + 1] += &format!(
                            " tbf_sent_bytes={} tbf_sent_pkts={} tbf_dropped={} \
                             tbf_overlimits={} tbf_backlog_bytes={}",
                            q.sent_bytes, q.sent_pkts, q.dropped, q.overlimits, q.backlog_bytes
                        );
                    }
                    let _ = (&stream).write_all((text.join("\n") + "\n").as_bytes());
                });
                return Ok(());
            }
            "set" => {
                let mut p = self.params;
                match Change::parse(rest).map(|c| c.apply(&mut p)) {
                    Ok(()) => match self.apply(&p) {
                        Ok(()) => {
                            eprintln!("linkemu: set {}", self.describe());
                            format!("ok {}\n", self.describe())
                        }
                        Err(e) => format!("error: {e:#}\n"),
                    },
                    Err(e) => format!("error: {e:#}\n"),
                }
            }
            "quit" => {
                STOP.store(true, Ordering::SeqCst);
                "ok\n".to_string()
            }
            _ => format!("error: unknown command {cmd:?} (stats, stats-reset, set, quit)\n"),
        };
        (&stream).write_all(reply.as_bytes())?;
        Ok(())
    }

    /// The stats lines without the tbf counters, and the egress device of each direction.
    fn stats(&self) -> (Vec<String>, Vec<String>) {
        let (burst, limit) = self.params.tbf_sizes().unwrap_or((0, 0));
        let mut lines = vec![format!(
            "name={} pid={} uptime_s={:.1} dev_a={} dev_b={} rate_mbit={} tbf_burst_bytes={burst} \
             tbf_limit_bytes={limit} xdp_always={}",
            self.opts.name,
            std::process::id(),
            self.started.elapsed().as_secs_f64(),
            self.opts.dev_a,
            self.opts.dev_b,
            self.params.rate_mbit,
            self.opts.xdp_always,
        )];
        for (i, d) in self.dirs.iter().enumerate() {
            let p = if i == 0 {
                self.params.ab
            } else {
                self.params.ba
            };
            let w = self.xdp.counters(d.ifindex_in);
            let k = nfqueue::kernel_stats(d.queue);
            let late_avg = if d.late_n > 0 {
                d.late_sum_us / d.late_n as f64
            } else {
                0.0
            };
            lines.push(format!(
                "dir={} in={} out={} delay_ms={} jitter_ms={} loss_pct={} xdp={} \
                 wire_pkts={} wire_bytes={} lost_pkts={} lost_bytes={} \
                 delayed_pkts={} held_pkts={} verdict_batches={} late_avg_us={:.1} \
                 late_max_us={:.1} nfq_kernel_held={} nfq_queue_dropped={} nfq_user_dropped={}",
                d.label,
                d.dev_in,
                d.dev_out,
                p.delay_ms,
                p.jitter_ms,
                p.loss_pct,
                if self.xdp.is_attached(d.ifindex_in) {
                    "on"
                } else {
                    "off"
                },
                w.packets,
                w.bytes,
                w.dropped,
                w.dropped_bytes,
                d.delayed,
                d.held.len(),
                d.batches,
                late_avg,
                d.late_max_us,
                k.total,
                k.queue_dropped,
                k.user_dropped,
            ));
        }
        let devs = self.dirs.iter().map(|d| d.dev_out.clone()).collect();
        (lines, devs)
    }
}

/// Sends one request line to the daemon behind `socket` and returns its reply.
pub fn request(socket: &Path, line: &str) -> Result<String> {
    let mut s = UnixStream::connect(socket).with_context(|| {
        format!(
            "no linkemu daemon at {} (is the link up?)",
            socket.display()
        )
    })?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    s.write_all(line.as_bytes())?;
    s.write_all(b"\n")?;
    let mut out = String::new();
    std::io::Read::read_to_string(&mut s, &mut out)?;
    Ok(out)
}

//! `lmas-load`: traffic source and sink for the demo and benchmark scripts.
//!
//! ```text
//! lmas-load sink   --listen ADDR [--count K]
//! lmas-load source --connect ADDR --bytes N [--seed S] [--max-secs S] [--payload KIND]
//! lmas-load progress --total N [--label TEXT]
//! lmas-load free-ports [N]
//! ```
//!
//! `sink` and `source` show a progress bar (indicatif) on stderr while they run, and
//! `progress` draws one for a shell script's steps; all of them stay quiet when stderr is not
//! a terminal, so logs and CI output hold only the result lines.

use std::io::{self, BufRead, IsTerminal, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener};
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{mpsc, Arc};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use lmas_tests::{
    finish_send, parse_size, recv_all, send_all_until, set_timeouts, write_payload_until, Counting,
    Payload, Received,
};

const USAGE: &str = "\
lmas-load: traffic source and sink for lmas demos and benchmarks

USAGE:
    lmas-load sink --listen ADDR [--count K]
        Accepts K connections (default 1), reads each to EOF, closes it and prints one line
        per connection: bytes=N sha256=HEX secs=S last_unix=T  (secs: accept to EOF; T: the
        wall-clock time, in seconds since 1970, at which its last data arrived). Prints
        `listening on ADDR` to stderr once bound. Exits non-zero if a connection fails.

    lmas-load source --connect ADDR --bytes N [--seed S] [--max-secs S] [--payload KIND]
        Sends N bytes (suffixes K, M, G, T: binary) of a deterministic pseudo-random stream
        (seed S, default 1), shuts down its write side, waits for the peer to close and prints
        bytes=N sha256=HEX secs=S mbit_s=R stopped_unix=T  (secs: connect to the peer's close;
        T: the wall-clock time at which its last write returned). A sink's last_unix minus
        its source's stopped_unix is the stream's tail: how long its last bytes took to arrive
        once the sender had handed them over (both ends on one host: one clock).
        --max-secs S stops sending after S seconds (at a 1 MiB boundary): bytes= is then what
        was sent, a prefix of the same stream, and the sink's hash must still match it.
        --payload KIND: random (default; incompressible), text (text-like 4 KiB pages), or
        guest (guest-memory-like: each 4 KiB page zero, text or random, a third each).

    lmas-load progress --total N [--label TEXT]
        A progress bar for a shell script's N steps. Reads commands from stdin, one a line:
        `step TEXT` (one more step done; TEXT describes the next), `msg TEXT` (new text, same
        step), `println TEXT` (a line above the bar; printed plainly when stderr is not a
        terminal), `end`. Ends at `end` or EOF. The bar itself is drawn only on a terminal.

    lmas-load free-ports [N]
        Prints N (default 1) free TCP ports on 127.0.0.1, one per line.
";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match run(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("lmas-load: error: {e}");
            ExitCode::FAILURE
        }
    }
}

struct Opts {
    listen: Option<String>,
    connect: Option<String>,
    count: u64,
    bytes: Option<u64>,
    seed: u64,
    max_secs: Option<f64>,
    payload: Payload,
    total: Option<u64>,
    label: String,
    positional: Vec<String>,
}

fn parse(args: &[String]) -> Result<Opts, String> {
    let mut o = Opts {
        listen: None,
        connect: None,
        count: 1,
        bytes: None,
        seed: 1,
        max_secs: None,
        payload: Payload::Random,
        total: None,
        label: String::new(),
        positional: Vec::new(),
    };
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let (key, inline) = match a.split_once('=') {
            Some((k, v)) if k.starts_with("--") => (k, Some(v.to_string())),
            _ => (a.as_str(), None),
        };
        let mut value = |name: &str| -> Result<String, String> {
            inline
                .clone()
                .or_else(|| it.next().cloned())
                .ok_or_else(|| format!("{name} needs a value"))
        };
        match key {
            "--listen" => o.listen = Some(value("--listen")?),
            "--connect" => o.connect = Some(value("--connect")?),
            "--count" => {
                let v = value("--count")?;
                o.count = v
                    .parse()
                    .map_err(|_| format!("--count: not a number: {v:?}"))?;
            }
            "--bytes" => o.bytes = Some(parse_size(&value("--bytes")?)?),
            "--seed" => {
                let v = value("--seed")?;
                o.seed = v
                    .parse()
                    .map_err(|_| format!("--seed: not a number: {v:?}"))?;
            }
            "--max-secs" => {
                let v = value("--max-secs")?;
                o.max_secs = Some(
                    v.parse::<f64>()
                        .ok()
                        .filter(|x| x.is_finite() && *x > 0.0)
                        .ok_or_else(|| format!("--max-secs: not a positive number: {v:?}"))?,
                );
            }
            "--payload" => {
                o.payload = match value("--payload")?.as_str() {
                    "random" => Payload::Random,
                    "text" => Payload::Text,
                    "guest" => Payload::Mixed,
                    v => return Err(format!("--payload: random, text or guest, not {v:?}")),
                }
            }
            "--total" => {
                let v = value("--total")?;
                o.total = Some(
                    v.parse()
                        .map_err(|_| format!("--total: not a number: {v:?}"))?,
                );
            }
            "--label" => o.label = value("--label")?,
            s if s.starts_with('-') => return Err(format!("unknown option {s}\n\n{USAGE}")),
            s => o.positional.push(s.to_string()),
        }
    }
    Ok(o)
}

fn run(args: &[String]) -> Result<(), String> {
    let Some(cmd) = args.first() else {
        return Err(format!("no command given\n\n{USAGE}"));
    };
    if cmd == "-h" || cmd == "--help" || cmd == "help" {
        print!("{USAGE}");
        return Ok(());
    }
    if args.iter().any(|a| a == "-h" || a == "--help") {
        print!("{USAGE}");
        return Ok(());
    }
    let o = parse(&args[1..])?;
    match cmd.as_str() {
        "sink" => {
            if !o.positional.is_empty() {
                return Err(format!("sink: unexpected argument {:?}", o.positional[0]));
            }
            let listen = o.listen.ok_or("sink needs --listen ADDR")?;
            sink(&listen, o.count)
        }
        "source" => {
            if !o.positional.is_empty() {
                return Err(format!("source: unexpected argument {:?}", o.positional[0]));
            }
            let connect = o.connect.ok_or("source needs --connect ADDR")?;
            let bytes = o.bytes.ok_or("source needs --bytes N")?;
            source(&connect, bytes, o.seed, o.max_secs, o.payload)
        }
        "progress" => {
            let total = o.total.ok_or("progress needs --total N")?;
            progress(total, &o.label)
        }
        "free-ports" => {
            let n: usize = match o.positional.as_slice() {
                [] => 1,
                [n] => n
                    .parse()
                    .map_err(|_| format!("free-ports: not a number: {n:?}"))?,
                _ => return Err("free-ports takes at most one argument".into()),
            };
            let mut out = io::stdout().lock();
            for _ in 0..n {
                writeln!(out, "{}", lmas_tests::free_port()).map_err(|e| e.to_string())?;
            }
            Ok(())
        }
        other => Err(format!("unknown command {other:?}\n\n{USAGE}")),
    }
}

fn line(r: &Received, last: Option<SystemTime>) -> String {
    format!(
        "bytes={} sha256={} secs={:.6} last_unix={}",
        r.bytes,
        r.sha256,
        r.secs,
        last.map_or_else(|| "none".to_string(), unix_secs)
    )
}

/// `t` in seconds since 1970, to the microsecond.
fn unix_secs(t: SystemTime) -> String {
    let d = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    format!("{}.{:06}", d.as_secs(), d.subsec_micros())
}

fn sink(listen: &str, count: u64) -> Result<(), String> {
    let listener = TcpListener::bind(listen).map_err(|e| format!("bind {listen}: {e}"))?;
    let addr: SocketAddr = listener.local_addr().map_err(|e| e.to_string())?;
    eprintln!("listening on {addr}");
    let received = Arc::new(AtomicU64::new(0));
    let meter = Meter::start(None, "received", received.clone());
    let (tx, rx) = mpsc::channel::<Result<(Received, Option<SystemTime>), String>>();
    let acceptor = thread::spawn(move || {
        for _ in 0..count {
            match listener.accept() {
                Ok((s, peer)) => {
                    let tx = tx.clone();
                    let received = received.clone();
                    thread::spawn(move || {
                        let start = Instant::now();
                        let r = set_timeouts(&s)
                            .and_then(|_| {
                                let mut reader = CountingReader {
                                    inner: &s,
                                    count: received,
                                    last_data: None,
                                };
                                let r = recv_all(&mut reader);
                                let _ = s.shutdown(Shutdown::Both);
                                r.map(|r| (r, reader.last_data))
                            })
                            .map(|(mut r, last)| {
                                r.secs = start.elapsed().as_secs_f64();
                                (r, last)
                            })
                            .map_err(|e| format!("connection from {peer}: {e}"));
                        let _ = tx.send(r);
                    });
                }
                Err(e) => {
                    let _ = tx.send(Err(format!("accept on {addr}: {e}")));
                }
            }
        }
    });
    let mut failed = 0;
    let mut out = io::stdout().lock();
    for _ in 0..count {
        match rx.recv() {
            Ok(Ok((r, last))) => {
                writeln!(out, "{}", line(&r, last)).map_err(|e| e.to_string())?;
                out.flush().map_err(|e| e.to_string())?;
            }
            Ok(Err(e)) => {
                eprintln!("lmas-load sink: {e}");
                failed += 1;
            }
            Err(_) => break,
        }
    }
    let _ = acceptor.join();
    meter.finish();
    if failed > 0 {
        return Err(format!("{failed} of {count} connections failed"));
    }
    Ok(())
}

fn source(
    connect: &str,
    bytes: u64,
    seed: u64,
    max_secs: Option<f64>,
    payload: Payload,
) -> Result<(), String> {
    let start = Instant::now();
    let deadline = max_secs.map(|m| start + Duration::from_secs_f64(m));
    let s = lmas_tests::connect(connect).map_err(|e| format!("source to {connect}: {e}"))?;
    let count = Arc::new(AtomicU64::new(0));
    let meter = Meter::start(Some(bytes), "sent", count.clone());
    let result = (|| -> io::Result<(lmas_tests::Sent, SystemTime)> {
        let mut w = Counting { inner: &s, count };
        let sent = match payload {
            // The stream every other tool checks (`expected_sha256`).
            Payload::Random => send_all_until(&mut w, bytes, seed, deadline)?,
            kind => write_payload_until(&mut w, bytes, seed, kind, deadline)?,
        };
        let stopped = SystemTime::now();
        // The peer closes once it has everything: secs covers delivery, not just buffering.
        Ok((finish_send(&s, sent, start)?, stopped))
    })();
    meter.finish();
    let (sent, stopped) = result.map_err(|e| format!("source to {connect}: {e}"))?;
    println!(
        "bytes={} sha256={} secs={:.6} mbit_s={:.1} stopped_unix={}",
        sent.bytes,
        sent.sha256,
        sent.secs,
        sent.mbit_s(),
        unix_secs(stopped)
    );
    Ok(())
}

/// A reader that counts the bytes read through it into a shared counter.
struct CountingReader<R> {
    inner: R,
    count: Arc<AtomicU64>,
    /// When the last read that returned data did.
    last_data: Option<SystemTime>,
}

impl<R: Read> Read for CountingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        if n > 0 {
            self.last_data = Some(SystemTime::now());
        }
        self.count.fetch_add(n as u64, Ordering::Relaxed);
        Ok(n)
    }
}

/// A byte-count progress bar on stderr (hidden when stderr is not a terminal), fed from a
/// shared counter by a thread that samples it ten times a second.
struct Meter {
    bar: ProgressBar,
    stop: Arc<AtomicBool>,
    ticker: Option<JoinHandle<()>>,
}

impl Meter {
    fn start(total: Option<u64>, what: &str, count: Arc<AtomicU64>) -> Meter {
        let target = ProgressDrawTarget::stderr_with_hz(4);
        let bar = match total {
            Some(t) => ProgressBar::with_draw_target(Some(t), target).with_style(
                ProgressStyle::with_template(&format!(
                    "{{elapsed_precise}} [{{bar:30}}] {{bytes}}/{{total_bytes}} {what}, {{binary_bytes_per_sec}}, eta {{eta}}"
                ))
                .expect("valid template")
                .progress_chars("=> "),
            ),
            None => ProgressBar::with_draw_target(None, target).with_style(
                ProgressStyle::with_template(&format!(
                    "{{elapsed_precise}} {{spinner}} {{bytes}} {what}, {{binary_bytes_per_sec}}"
                ))
                .expect("valid template"),
            ),
        };
        let stop = Arc::new(AtomicBool::new(false));
        let ticker = (!bar.is_hidden()).then(|| {
            let (bar, stop) = (bar.clone(), stop.clone());
            thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    bar.set_position(count.load(Ordering::Relaxed));
                    thread::sleep(Duration::from_millis(100));
                }
            })
        });
        Meter { bar, stop, ticker }
    }

    fn finish(mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.ticker.take() {
            let _ = t.join();
        }
        self.bar.finish_and_clear();
    }
}

/// `lmas-load progress`: a bar for the steps of a shell script, driven through stdin.
fn progress(total: u64, label: &str) -> Result<(), String> {
    let tty = io::stderr().is_terminal();
    let bar = ProgressBar::with_draw_target(Some(total), ProgressDrawTarget::stderr_with_hz(4))
        .with_style(
            ProgressStyle::with_template(
                "{prefix}[{bar:30}] {pos}/{len} {elapsed_precise} (eta {eta}) {wide_msg}",
            )
            .expect("valid template")
            .progress_chars("=> "),
        )
        .with_prefix(if label.is_empty() {
            String::new()
        } else {
            format!("{label} ")
        });
    bar.enable_steady_tick(Duration::from_millis(500));
    for l in io::stdin().lock().lines() {
        let l = l.map_err(|e| format!("reading stdin: {e}"))?;
        let (cmd, text) = l.split_once(' ').unwrap_or((l.as_str(), ""));
        match cmd {
            "step" => {
                bar.inc(1);
                bar.set_message(text.to_string());
            }
            "msg" => bar.set_message(text.to_string()),
            "println" if tty => bar.println(text),
            "println" => eprintln!("{text}"),
            "end" => break,
            _ => {}
        }
    }
    bar.finish_and_clear();
    Ok(())
}

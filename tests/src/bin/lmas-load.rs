//! `lmas-load`: traffic source and sink for the demo and benchmark scripts.
//!
//! ```text
//! lmas-load sink   --listen ADDR [--count K]
//! lmas-load source --connect ADDR --bytes N [--seed S]
//! lmas-load free-ports [N]
//! ```

use std::io::{self, Write};
use std::net::{Shutdown, SocketAddr, TcpListener};
use std::process::ExitCode;
use std::sync::mpsc;
use std::thread;
use std::time::Instant;

use lmas_tests::{parse_size, recv_all, send, set_timeouts, Received};

const USAGE: &str = "\
lmas-load: traffic source and sink for lmas demos and benchmarks

USAGE:
    lmas-load sink --listen ADDR [--count K]
        Accepts K connections (default 1), reads each to EOF, closes it and prints one line
        per connection: bytes=N sha256=HEX secs=S  (secs: accept to EOF). Prints
        `listening on ADDR` to stderr once bound. Exits non-zero if a connection fails.

    lmas-load source --connect ADDR --bytes N [--seed S]
        Sends N bytes (suffixes K, M, G, T: binary) of a deterministic pseudo-random stream
        (seed S, default 1), shuts down its write side, waits for the peer to close and prints
        bytes=N sha256=HEX secs=S mbit_s=R  (secs: connect to the peer's close).

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
    positional: Vec<String>,
}

fn parse(args: &[String]) -> Result<Opts, String> {
    let mut o = Opts {
        listen: None,
        connect: None,
        count: 1,
        bytes: None,
        seed: 1,
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
            source(&connect, bytes, o.seed)
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

fn line(r: &Received) -> String {
    format!("bytes={} sha256={} secs={:.6}", r.bytes, r.sha256, r.secs)
}

fn sink(listen: &str, count: u64) -> Result<(), String> {
    let listener = TcpListener::bind(listen).map_err(|e| format!("bind {listen}: {e}"))?;
    let addr: SocketAddr = listener.local_addr().map_err(|e| e.to_string())?;
    eprintln!("listening on {addr}");
    let (tx, rx) = mpsc::channel::<Result<Received, String>>();
    let acceptor = thread::spawn(move || {
        for _ in 0..count {
            match listener.accept() {
                Ok((s, peer)) => {
                    let tx = tx.clone();
                    thread::spawn(move || {
                        let start = Instant::now();
                        let r = set_timeouts(&s)
                            .and_then(|_| {
                                let mut s = s;
                                let r = recv_all(&mut s);
                                let _ = s.shutdown(Shutdown::Both);
                                r
                            })
                            .map(|mut r| {
                                r.secs = start.elapsed().as_secs_f64();
                                r
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
            Ok(Ok(r)) => {
                writeln!(out, "{}", line(&r)).map_err(|e| e.to_string())?;
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
    if failed > 0 {
        return Err(format!("{failed} of {count} connections failed"));
    }
    Ok(())
}

fn source(connect: &str, bytes: u64, seed: u64) -> Result<(), String> {
    let sent = send(connect, bytes, seed).map_err(|e| format!("source to {connect}: {e}"))?;
    println!(
        "bytes={} sha256={} secs={:.6} mbit_s={:.1}",
        sent.bytes,
        sent.sha256,
        sent.secs,
        sent.mbit_s()
    );
    Ok(())
}

//! A dialling gateway played by the test itself, on a plain blocking socket.
//!
//! It is built from the gateway's own library (`lmas::crypto`, `lmas::protocol`) and speaks the
//! control connection exactly as `lmas run` does (gateway/src/kernel/conn.rs and
//! `connect_control` in gateway/src/kernel/mod.rs), so that a test can then send what a real
//! gateway never would, e.g. a flood of pings whose answers it never reads:
//!
//! 1. the prelude (`LMAS | version | flags`) and Noise `IK` message 1, as `frame_noise` frames
//!    them (`len u16 | noise`);
//! 2. Noise message 2 back (`len u16 | noise`), which yields the traffic keys;
//! 3. sealed records both ways (`len u32 | AES-256-GCM(message)`): `Hello` from the dialler,
//!    `Welcome` from the gateway, then any control messages.
//!
//! No pre-shared key; keys are files written by `lmas keygen` ([`crate::keygen`]).

use std::fmt::Display;
use std::io::{self, ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::BytesMut;
use lmas::crypto::{
    Initiator, Opening, PublicKey, RecordOpener, RekeyPolicy, Sealing, StaticKeypair,
    RECORD_HEADER_LEN,
};
use lmas::protocol::handshake::{check_noise_len, frame_noise};
use lmas::protocol::{Message, TunnelId};

/// An authenticated control connection to a gateway's `tunnel_listen`.
pub struct FakePeer {
    stream: TcpStream,
    sealing: Sealing,
    opening: Opening,
    /// Sealed records not yet written.
    out: Vec<u8>,
}

fn failed(what: &str, e: impl Display) -> io::Error {
    io::Error::other(format!("{what}: {e}"))
}

/// Names an EOF during the handshake as the gateway's refusal (it hangs up on keys it does not
/// accept).
fn handshake_read(e: io::Error) -> io::Error {
    if e.kind() == ErrorKind::UnexpectedEof {
        io::Error::new(
            ErrorKind::UnexpectedEof,
            "the gateway closed the connection during the handshake: it does not accept our key \
             (is its peer.public_key the fake peer's?)",
        )
    } else {
        failed("reading Noise message 2", e)
    }
}

impl FakePeer {
    /// Dials `addr` and authenticates a control connection with the private key in `key_file`
    /// (as written by `lmas keygen`) to the gateway whose public key is `gateway_public` (base64,
    /// as in its `.pub` file).
    pub fn connect(
        addr: SocketAddr,
        key_file: &Path,
        gateway_public: &str,
    ) -> io::Result<FakePeer> {
        let local = StaticKeypair::load(key_file)
            .map_err(|e| failed(&format!("loading {}", key_file.display()), e))?;
        let peer = PublicKey::parse(gateway_public.trim(), "the gateway's public key")
            .map_err(|e| failed("parsing the gateway's public key", e))?;
        let mut stream = crate::connect(addr)?;
        stream.set_nodelay(true)?;
        let (init, prelude, m1) = Initiator::start(&local, &peer, None, false)
            .map_err(|e| failed("starting the handshake", e))?;
        stream
            .write_all(&frame_noise(&prelude.encode(), &m1))
            .map_err(|e| failed("sending Noise message 1", e))?;
        let mut len = [0u8; 2];
        stream.read_exact(&mut len).map_err(handshake_read)?;
        let len = check_noise_len(u16::from_be_bytes(len))
            .map_err(|e| failed("Noise message 2 length", e))?;
        let mut m2 = vec![0u8; len];
        stream.read_exact(&mut m2).map_err(handshake_read)?;
        let keys = init
            .finish(&m2)
            .map_err(|e| failed("finishing the handshake", e))?;
        // Key updates by record count only (the record layer forces those); the gateway follows
        // them whatever our policy.
        let policy = RekeyPolicy {
            after_bytes: u64::MAX,
            after: Duration::from_secs(86_400),
        };
        Ok(FakePeer {
            stream,
            sealing: Sealing::new(&keys.send, policy, Instant::now()),
            opening: Opening::new(&keys.recv),
            out: Vec::new(),
        })
    }

    /// The socket (e.g. to change its timeouts).
    pub fn stream(&self) -> &TcpStream {
        &self.stream
    }

    /// Seals `msg` into the pending output (see [`FakePeer::flush`]).
    pub fn push(&mut self, msg: &Message) -> io::Result<()> {
        self.sealing
            .seal(msg, &mut self.out, Instant::now())
            .map(|_| ())
            .map_err(|e| failed(&format!("sealing {}", msg.name()), e))
    }

    /// Writes every pending record.
    pub fn flush(&mut self) -> io::Result<()> {
        self.stream
            .write_all(&self.out)
            .map_err(|e| failed("writing records", e))?;
        self.out.clear();
        Ok(())
    }

    /// [`FakePeer::push`] then [`FakePeer::flush`].
    pub fn send(&mut self, msg: &Message) -> io::Result<()> {
        self.push(msg)?;
        self.flush()
    }

    /// The next message from the gateway (key updates are applied, not returned).
    pub fn read_message(&mut self) -> io::Result<Message> {
        loop {
            let mut header = [0u8; RECORD_HEADER_LEN];
            self.stream
                .read_exact(&mut header)
                .map_err(|e| failed("reading a record header", e))?;
            let len = RecordOpener::body_len(header).map_err(|e| failed("record header", e))?;
            let mut body = BytesMut::zeroed(len);
            self.stream
                .read_exact(&mut body)
                .map_err(|e| failed("reading a record", e))?;
            if let Some(msg) = self
                .opening
                .open(header, body)
                .map_err(|e| failed("opening a record", e))?
                .msg
            {
                return Ok(msg);
            }
        }
    }

    /// Plays `connect_control`: sends `Hello` for a new tunnel as gateway `name` with
    /// `data_flows` flows and reads the `Welcome`; returns the tunnel id the gateway chose.
    pub fn hello(&mut self, name: &str, data_flows: u16) -> io::Result<TunnelId> {
        self.send(&Message::Hello {
            resume: None,
            name: name.to_string(),
            data_flows,
        })?;
        match self.read_message()? {
            Message::Welcome { tunnel_id, .. } => Ok(tunnel_id),
            other => Err(io::Error::new(
                ErrorKind::InvalidData,
                format!("expected welcome, got {}", other.name()),
            )),
        }
    }

    /// Sends `Ping` records as fast as the gateway takes them, `batch` sealed records per write,
    /// until `until` or `max` pings, and never reads (the gateway's answers pile up wherever it
    /// keeps them). Counts the pings written in `sent`.
    ///
    /// Ends with `Ok` at the deadline or the count, even when the gateway stops reading (a
    /// write makes no progress: retried until the deadline); with the write error if the
    /// gateway closes or resets the connection, which a gateway may rightly do to a peer that
    /// does not read (the caller decides). A record cut short at the deadline is abandoned, so
    /// the connection is useless afterwards.
    pub fn ping_flood(
        &mut self,
        until: Instant,
        max: u64,
        batch: usize,
        sent: &AtomicU64,
    ) -> io::Result<()> {
        self.flush()?;
        self.stream
            .set_write_timeout(Some(Duration::from_millis(200)))?;
        let mut id = 0u64;
        while Instant::now() < until && id < max {
            let n = (batch as u64).min(max - id);
            for _ in 0..n {
                id += 1;
                self.push(&Message::Ping { id })?;
            }
            let mut pos = 0;
            while pos < self.out.len() {
                match self.stream.write(&self.out[pos..]) {
                    Ok(0) => return Err(failed("writing pings", "the gateway closed")),
                    Ok(k) => pos += k,
                    Err(e)
                        if matches!(
                            e.kind(),
                            ErrorKind::WouldBlock | ErrorKind::TimedOut | ErrorKind::Interrupted
                        ) =>
                    {
                        if Instant::now() >= until {
                            return Ok(());
                        }
                    }
                    Err(e) => {
                        return Err(failed(
                            &format!("writing pings after {}", sent.load(Ordering::Relaxed)),
                            e,
                        ))
                    }
                }
            }
            self.out.clear();
            sent.fetch_add(n, Ordering::Relaxed);
        }
        Ok(())
    }
}

//! A server that hashes (SHA-256) every connection it accepts.

use super::*;

/// A server that reads every connection it accepts to EOF, hashing it, then closes it.
///
/// Results come out in completion order through [`Sink::recv`]. Dropping the sink stops
/// accepting.
pub struct Sink {
    addr: SocketAddr,
    rx: Receiver<(SocketAddr, io::Result<Received>)>,
    stop: Arc<AtomicBool>,
    acceptor: Option<JoinHandle<()>>,
}

impl Sink {
    /// A sink on a free loopback port (chosen by the kernel).
    pub fn start() -> Sink {
        Sink::bind(SocketAddr::from(([127, 0, 0, 1], 0))).expect("bind sink")
    }

    /// A sink on `addr`.
    pub fn bind(addr: SocketAddr) -> io::Result<Sink> {
        Sink::from_listener(TcpListener::bind(addr)?)
    }

    /// A sink on a listener made elsewhere (e.g. inside a network namespace: see
    /// [`netns::NetNs::run`]).
    pub fn from_listener(listener: TcpListener) -> io::Result<Sink> {
        let addr = listener.local_addr()?;
        listener.set_nonblocking(true)?;
        let (tx, rx) = mpsc::channel();
        let stop = Arc::new(AtomicBool::new(false));
        let stop2 = stop.clone();
        let acceptor = thread::spawn(move || {
            while !stop2.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((s, peer)) => {
                        let tx = tx.clone();
                        thread::spawn(move || {
                            let r = (|| {
                                s.set_nonblocking(false)?;
                                set_timeouts(&s)?;
                                let mut s = s;
                                recv_all(&mut s)
                            })();
                            let _ = tx.send((peer, r));
                        });
                    }
                    Err(e) if e.kind() == ErrorKind::WouldBlock => {
                        thread::sleep(Duration::from_millis(5))
                    }
                    Err(_) => thread::sleep(Duration::from_millis(5)),
                }
            }
        });
        Ok(Sink {
            addr,
            rx,
            stop,
            acceptor: Some(acceptor),
        })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The next finished connection; panics after `timeout` or on an I/O error.
    pub fn recv(&self, timeout: Duration) -> Received {
        match self.rx.recv_timeout(timeout) {
            Ok((_, Ok(r))) => r,
            Ok((peer, Err(e))) => panic!("sink {}: connection from {peer}: {e}", self.addr),
            Err(RecvTimeoutError::Timeout) => panic!(
                "sink {}: no connection finished within {timeout:?}",
                self.addr
            ),
            Err(RecvTimeoutError::Disconnected) => panic!("sink {}: acceptor died", self.addr),
        }
    }

    /// The next finished connection, or `None` after `timeout`.
    pub fn try_recv(&self, timeout: Duration) -> Option<io::Result<Received>> {
        self.rx.recv_timeout(timeout).ok().map(|(_, r)| r)
    }
}

impl Drop for Sink {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.acceptor.take() {
            let _ = t.join();
        }
    }
}

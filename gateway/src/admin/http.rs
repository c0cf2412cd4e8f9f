//! The optional metrics endpoint: a minimal HTTP/1.1 responder on tokio.
//!
//! `GET /metrics` (or `HEAD`) answers with [`super::metrics::encode`] of a
//! fresh [`Status`](super::Status) from the [`StatusSource`]; any other path
//! is 404, any other method 405, a malformed request 400, a request head
//! over [`MAX_REQUEST`] bytes 431. One request per connection (the response
//! says `Connection: close`). A client gets [`REQUEST_TIMEOUT`] to send its
//! request and [`RESPONSE_TIMEOUT`] to take the answer; at most
//! [`MAX_CLIENTS`] are served at once, more are closed at once. Nothing a
//! client sends can panic the gateway: parsing is [`route`], a pure function
//! of the bytes received.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use log::{info, warn};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;

use super::StatusSource;

/// Longest request head (request line and headers) accepted.
pub const MAX_REQUEST: usize = 8 * 1024;
/// Time a client has to send its request head.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// Time a client has to read the response.
pub const RESPONSE_TIMEOUT: Duration = Duration::from_secs(10);
/// Clients served at once.
pub const MAX_CLIENTS: usize = 16;

/// What to answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Route {
    /// The metrics; `head_only` for HEAD.
    Metrics { head_only: bool },
    /// An error status with a one-line reason.
    Error { status: u16, reason: &'static str },
}

/// Routes a complete request head (everything before the blank line).
pub fn route(head: &[u8]) -> Route {
    let bad = Route::Error {
        status: 400,
        reason: "Bad Request",
    };
    let Ok(head) = std::str::from_utf8(head) else {
        return bad;
    };
    let line = head.split("\r\n").next().unwrap_or_default();
    let mut parts = line.split(' ');
    let (Some(method), Some(target), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return bad;
    };
    if !matches!(version, "HTTP/1.0" | "HTTP/1.1") {
        return Route::Error {
            status: 505,
            reason: "HTTP Version Not Supported",
        };
    }
    let path = target.split('?').next().unwrap_or_default();
    let head_only = match method {
        "GET" => false,
        "HEAD" => true,
        _ => {
            return Route::Error {
                status: 405,
                reason: "Method Not Allowed",
            }
        }
    };
    if path == "/metrics" {
        Route::Metrics { head_only }
    } else {
        Route::Error {
            status: 404,
            reason: "Not Found",
        }
    }
}

/// Binds the endpoint (so a bad address fails the start).
pub async fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let l = TcpListener::bind(addr).await?;
    info!("metrics on http://{addr}/metrics");
    Ok(l)
}

/// Serves `listener` until the task is dropped.
pub async fn serve(source: Arc<dyn StatusSource>, listener: TcpListener) {
    let slots = Arc::new(Semaphore::new(MAX_CLIENTS));
    loop {
        let stream = match listener.accept().await {
            Ok((s, _)) => s,
            Err(e) => {
                warn!("metrics endpoint: accept: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        // Busy: close at once rather than queue (a scraper retries).
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            continue;
        };
        let source = source.clone();
        tokio::spawn(async move {
            answer(&*source, stream).await;
            drop(slot);
        });
    }
}

async fn answer(source: &dyn StatusSource, mut stream: TcpStream) {
    let route = match tokio::time::timeout(REQUEST_TIMEOUT, read_head(&mut stream)).await {
        Ok(Some(Ok(head))) => route(&head),
        Ok(Some(Err(too_long))) => too_long,
        // Timed out, closed early or broken: nothing worth answering.
        Ok(None) | Err(_) => return,
    };
    let response = match route {
        Route::Metrics { head_only } => match super::metrics::encode(&source.status()) {
            Ok(body) => response(200, "OK", super::metrics::CONTENT_TYPE, &body, head_only),
            Err(_) => error_response(500, "Internal Server Error"),
        },
        Route::Error { status, reason } => error_response(status, reason),
    };
    let write = async {
        stream.write_all(&response).await?;
        stream.shutdown().await
    };
    let _ = tokio::time::timeout(RESPONSE_TIMEOUT, write).await;
}

/// Reads up to the end of the request head. `None` if the client went away;
/// `Some(Err(431))` if the head is too long.
async fn read_head(stream: &mut TcpStream) -> Option<Result<Vec<u8>, Route>> {
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 1024];
    loop {
        if let Some(end) = find_end(&buf) {
            buf.truncate(end);
            return Some(Ok(buf));
        }
        if buf.len() > MAX_REQUEST {
            return Some(Err(Route::Error {
                status: 431,
                reason: "Request Header Fields Too Large",
            }));
        }
        match stream.read(&mut chunk).await {
            Ok(0) | Err(_) => return None,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
}

/// Where the head ends: the first blank line.
fn find_end(buf: &[u8]) -> Option<usize> {
    buf.windows(4).position(|w| w == b"\r\n\r\n")
}

fn error_response(status: u16, reason: &str) -> Vec<u8> {
    let body = format!("{status} {reason}\n");
    response(status, reason, "text/plain; charset=utf-8", &body, false)
}

fn response(status: u16, reason: &str, content_type: &str, body: &str, head_only: bool) -> Vec<u8> {
    let mut out = format!(
        "HTTP/1.1 {status} {reason}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n",
        body.len()
    );
    if status == 405 {
        out.push_str("Allow: GET, HEAD\r\n");
    }
    out.push_str("\r\n");
    let mut out = out.into_bytes();
    if !head_only {
        out.extend_from_slice(body.as_bytes());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn status_of(head: &str) -> u16 {
        match route(head.as_bytes()) {
            Route::Metrics { .. } => 200,
            Route::Error { status, .. } => status,
        }
    }

    #[test]
    fn routes() {
        assert_eq!(status_of("GET /metrics HTTP/1.1\r\nHost: x"), 200);
        assert_eq!(status_of("GET /metrics?x=1 HTTP/1.0"), 200);
        assert_eq!(
            route(b"HEAD /metrics HTTP/1.1"),
            Route::Metrics { head_only: true }
        );
        assert_eq!(status_of("GET / HTTP/1.1"), 404);
        assert_eq!(status_of("GET /metricsx HTTP/1.1"), 404);
        assert_eq!(status_of("POST /metrics HTTP/1.1"), 405);
        assert_eq!(status_of("GET /metrics HTTP/2.0"), 505);
        assert_eq!(status_of("GET /metrics"), 400);
        assert_eq!(status_of("GET  /metrics HTTP/1.1"), 400);
        assert_eq!(status_of(""), 400);
        assert_eq!(route(b"GET /\xff HTTP/1.1"), route(b"\xff"));
    }

    #[test]
    fn responses_are_well_formed() {
        let r = String::from_utf8(error_response(405, "Method Not Allowed")).unwrap();
        assert!(r.starts_with("HTTP/1.1 405 Method Not Allowed\r\n"), "{r}");
        assert!(r.contains("Allow: GET, HEAD\r\n"), "{r}");
        let (head, body) = r.split_once("\r\n\r\n").unwrap();
        assert!(head.contains(&format!("Content-Length: {}", body.len())));
        let h = response(200, "OK", "text/plain", "abc", true);
        assert!(String::from_utf8(h)
            .unwrap()
            .ends_with("Content-Length: 3\r\nConnection: close\r\n\r\n"));
    }

    proptest! {
        #[test]
        fn any_bytes_route_without_panicking(head in proptest::collection::vec(any::<u8>(), 0..512)) {
            let _ = route(&head);
            let _ = find_end(&head);
        }
    }
}

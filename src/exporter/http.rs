//! The exporter's HTTP server: its own thread and current-thread runtime,
//! request heads read and parsed by hand (never a body), one response per
//! connection.

use std::future::{poll_fn, Future};
use std::pin::pin;
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use std::sync::Arc;
use std::task::Poll;
use std::time::Duration;

use metrics_exporter_prometheus::PrometheusHandle;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use super::{render, Exporter};
use crate::{Status, Watchdog};

/// What the server thread serves from.
pub(super) struct State {
    pub(super) watchdog: Watchdog,
    pub(super) handle: PrometheusHandle,
    pub(super) active: AtomicUsize,
    pub(super) max_connections: usize,
    pub(super) request_timeout: Duration,
}

pub(super) fn serve_thread(
    listener: std::net::TcpListener,
    state: Arc<State>,
    stop: tokio::sync::oneshot::Receiver<()>,
) {
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            tracing::error!(target: "loopwatch", error = %e, "the exporter could not start its runtime");
            return;
        }
    };
    runtime.block_on(async move {
        let listener = match TcpListener::from_std(listener) {
            Ok(l) => l,
            Err(e) => {
                tracing::error!(target: "loopwatch", error = %e, "the exporter could not listen");
                return;
            }
        };
        let mut stop = pin!(stop);
        loop {
            let accepted = poll_fn(|cx| {
                if stop.as_mut().poll(cx).is_ready() {
                    return Poll::Ready(None);
                }
                listener.poll_accept(cx).map(Some)
            })
            .await;
            let Some(accepted) = accepted else { break };
            let Ok((stream, _peer)) = accepted else {
                // Out of file descriptors, for example: wait a little.
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            };
            if state.active.load(Relaxed) >= state.max_connections {
                drop(stream);
                continue;
            }
            state.active.fetch_add(1, Relaxed);
            let state = state.clone();
            tokio::spawn(async move {
                serve_connection(stream, &state).await;
                state.active.fetch_sub(1, Relaxed);
            });
        }
    });
}

/// What a request asked for.
#[derive(Debug, PartialEq, Eq)]
enum Request {
    Get { path: String, head: bool },
    OtherMethod { path: String },
    Malformed,
    TooLarge,
}

async fn serve_connection(mut stream: TcpStream, state: &State) {
    let _ = stream.set_nodelay(true);
    let request = match tokio::time::timeout(state.request_timeout, read_request(&mut stream)).await
    {
        Ok(Some(request)) => request,
        // Timed out, or closed before a whole request: nothing to answer.
        _ => return,
    };
    let response = respond(&request, state);
    let _ = tokio::time::timeout(state.request_timeout, async {
        let _ = stream.write_all(&response).await;
        let _ = stream.shutdown().await;
    })
    .await;
}

/// Reads the request head (never a body), up to [`Exporter::MAX_REQUEST_HEAD`].
async fn read_request(stream: &mut TcpStream) -> Option<Request> {
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 1024];
    loop {
        let n = stream.read(&mut chunk).await.ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
        if let Some(end) = find_head_end(&buf) {
            return Some(parse_head(&buf[..end]));
        }
        if buf.len() > Exporter::MAX_REQUEST_HEAD {
            return Some(Request::TooLarge);
        }
    }
}

fn find_head_end(buf: &[u8]) -> Option<usize> {
    buf.windows(4)
        .position(|w| w == b"\r\n\r\n")
        .or_else(|| buf.windows(2).position(|w| w == b"\n\n"))
}

fn parse_head(head: &[u8]) -> Request {
    let Ok(head) = std::str::from_utf8(head) else {
        return Request::Malformed;
    };
    let line = head.lines().next().unwrap_or("");
    let mut parts = line.split(' ');
    let (Some(method), Some(target), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Request::Malformed;
    };
    if !version.starts_with("HTTP/1.") || !target.starts_with('/') || method.is_empty() {
        return Request::Malformed;
    }
    let path = target.split('?').next().unwrap_or(target).to_owned();
    match method {
        "GET" => Request::Get { path, head: false },
        "HEAD" => Request::Get { path, head: true },
        _ => Request::OtherMethod { path },
    }
}

fn respond(request: &Request, state: &State) -> Vec<u8> {
    match request {
        Request::Malformed => response(
            400,
            "Bad Request",
            "text/plain",
            b"bad request\n",
            false,
            None,
        ),
        Request::TooLarge => response(
            431,
            "Request Header Fields Too Large",
            "text/plain",
            b"request head too large\n",
            false,
            None,
        ),
        Request::OtherMethod { path } if is_known(path) => response(
            405,
            "Method Not Allowed",
            "text/plain",
            b"only GET and HEAD\n",
            false,
            Some("Allow: GET, HEAD\r\n"),
        ),
        Request::OtherMethod { .. } => not_found(),
        Request::Get { path, head } => match path.as_str() {
            "/metrics" => {
                let body = render::metrics(&state.handle, &state.watchdog);
                response(
                    200,
                    "OK",
                    "text/plain; version=0.0.4; charset=utf-8",
                    body.as_bytes(),
                    *head,
                    None,
                )
            }
            "/health" => {
                let health = state.watchdog.health();
                let body = serde_json::to_vec(&health).unwrap_or_default();
                let (code, reason) = if health.status == Status::Stalled {
                    (503, "Service Unavailable")
                } else {
                    (200, "OK")
                };
                response(code, reason, "application/json", &body, *head, None)
            }
            _ => not_found(),
        },
    }
}

fn is_known(path: &str) -> bool {
    path == "/metrics" || path == "/health"
}

fn not_found() -> Vec<u8> {
    response(
        404,
        "Not Found",
        "text/plain",
        b"not found; try /metrics or /health\n",
        false,
        None,
    )
}

fn response(
    code: u16,
    reason: &str,
    content_type: &str,
    body: &[u8],
    head_only: bool,
    extra: Option<&str>,
) -> Vec<u8> {
    let mut out = format!(
        "HTTP/1.1 {code} {reason}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\nCache-Control: no-store\r\n{}\r\n",
        body.len(),
        extra.unwrap_or("")
    )
    .into_bytes();
    if !head_only {
        out.extend_from_slice(body);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_request_heads() {
        assert_eq!(
            parse_head(b"GET /metrics?x=1 HTTP/1.1\r\nHost: a"),
            Request::Get {
                path: "/metrics".into(),
                head: false
            }
        );
        assert_eq!(
            parse_head(b"HEAD /health HTTP/1.0"),
            Request::Get {
                path: "/health".into(),
                head: true
            }
        );
        assert_eq!(
            parse_head(b"POST /health HTTP/1.1"),
            Request::OtherMethod {
                path: "/health".into()
            }
        );
        for junk in [
            &b"\x00\x01\x02"[..],
            b"GET",
            b"GET /x",
            b"GET x HTTP/1.1",
            b"GET /x SPDY/3",
            b"GET /x HTTP/1.1 extra",
            b"\xff\xfe / HTTP/1.1",
        ] {
            assert_eq!(parse_head(junk), Request::Malformed, "{junk:?}");
        }
    }
}

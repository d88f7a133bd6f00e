//! The exporter's HTTP server: its own thread and current-thread runtime,
//! request heads parsed with `httparse` (never a body), one handler per
//! route, one response per connection.

use std::collections::VecDeque;
use std::future::{poll_fn, Future};
use std::pin::pin;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::Arc;
use std::task::Poll;
use std::time::Duration;

use metrics_exporter_prometheus::PrometheusHandle;
use parking_lot::Mutex;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::AbortHandle;

use super::{page, render, Exporter};
use crate::watchdog::export::connection_dropped;
use crate::{Status, Watchdog};

/// What the server thread serves from.
pub(super) struct State {
    pub(super) watchdog: Watchdog,
    pub(super) handle: PrometheusHandle,
    pub(super) max_connections: usize,
    pub(super) head_timeout: Duration,
    pub(super) request_timeout: Duration,
    pub(super) max_tasks: usize,
}

/// One open connection, as the accept loop keeps it.
struct Conn {
    id: u64,
    /// Set once its whole request head has arrived.
    has_request: Arc<AtomicBool>,
    abort: AbortHandle,
}

/// The open connections, oldest first. Only the server thread (one
/// current-thread runtime) touches it; the mutex is never contended.
#[derive(Default)]
struct Conns(Mutex<VecDeque<Conn>>);

impl Conns {
    fn len(&self) -> usize {
        self.0.lock().len()
    }

    /// Closes the oldest connection that has not sent a whole request, to
    /// make room for a new one; `false` if every connection is being served.
    fn evict_oldest_unfinished(&self) -> bool {
        let mut conns = self.0.lock();
        let Some(i) = conns.iter().position(|c| !c.has_request.load(Relaxed)) else {
            return false;
        };
        if let Some(conn) = conns.remove(i) {
            conn.abort.abort();
        }
        true
    }

    fn remove(&self, id: u64) {
        self.0.lock().retain(|c| c.id != id);
    }
}

/// Takes a connection out of the table when its task ends or is aborted.
struct Leave<'a>(&'a Conns, u64);

impl Drop for Leave<'_> {
    fn drop(&mut self) {
        self.0.remove(self.1);
    }
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
        let conns = Arc::new(Conns::default());
        let mut next_id = 0u64;
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
            // At capacity, the newcomer takes the place of the oldest
            // connection that has not sent a request yet (idle, slowloris,
            // half-open): a flood of them cannot lock scrapes out.
            if conns.len() >= state.max_connections {
                if conns.evict_oldest_unfinished() {
                    connection_dropped("evicted");
                } else {
                    connection_dropped("full");
                    drop(stream);
                    continue;
                }
            }
            next_id += 1;
            let id = next_id;
            let has_request = Arc::new(AtomicBool::new(false));
            let task = {
                let (state, conns, has_request) =
                    (state.clone(), conns.clone(), has_request.clone());
                tokio::spawn(async move {
                    let _leave = Leave(&conns, id);
                    serve_connection(stream, &state, &has_request).await;
                })
            };
            conns.0.lock().push_back(Conn {
                id,
                has_request,
                abort: task.abort_handle(),
            });
            // Let the connections read what has arrived (tokio polls its I/O
            // driver before a yielded task runs again) before the next
            // accept may evict one: a scraper's request, sent right after it
            // connected, is read before a flood can push it out.
            tokio::task::yield_now().await;
        }
    });
}

/// What a request asked for.
#[derive(Debug, PartialEq, Eq)]
enum Request {
    Get {
        path: String,
        query: String,
        head: bool,
    },
    OtherMethod {
        path: String,
    },
    Malformed,
    TooLarge,
}

async fn serve_connection(mut stream: TcpStream, state: &State, has_request: &AtomicBool) {
    let _ = stream.set_nodelay(true);
    let request = match tokio::time::timeout(state.head_timeout, read_request(&mut stream)).await {
        Ok(Some(request)) => request,
        Ok(None) => return, // closed before a whole request
        Err(_) => {
            connection_dropped("timeout");
            return;
        }
    };
    has_request.store(true, Relaxed);
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
        if let Some(request) = parse_head(&buf) {
            return Some(request);
        }
        if buf.len() > Exporter::MAX_REQUEST_HEAD {
            return Some(Request::TooLarge);
        }
    }
}

/// The most headers a request head may have; more is answered 431.
const MAX_HEADERS: usize = 64;

/// What has arrived of a request head, parsed: `None` until it is whole.
fn parse_head(buf: &[u8]) -> Option<Request> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut head = httparse::Request::new(&mut headers);
    match head.parse(buf) {
        Ok(httparse::Status::Partial) => None,
        Ok(httparse::Status::Complete(_)) => Some(match (head.method, head.path) {
            (Some(method), Some(target)) => request_of(method, target),
            _ => Request::Malformed,
        }),
        Err(httparse::Error::TooManyHeaders) => Some(Request::TooLarge),
        Err(_) => Some(Request::Malformed),
    }
}

/// The request a whole head's method and target ask for.
fn request_of(method: &str, target: &str) -> Request {
    // The absolute form (`http://host:port/metrics`), which RFC 9112 asks
    // servers to accept, names the same path.
    let target = match target
        .strip_prefix("http://")
        .or_else(|| target.strip_prefix("https://"))
    {
        Some(rest) => match rest.find('/') {
            Some(slash) if slash > 0 => &rest[slash..],
            _ => return Request::Malformed,
        },
        None => target,
    };
    if !target.starts_with('/') {
        return Request::Malformed;
    }
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    let (path, query) = (path.to_owned(), query.to_owned());
    match method {
        "GET" => Request::Get {
            path,
            query,
            head: false,
        },
        "HEAD" => Request::Get {
            path,
            query,
            head: true,
        },
        _ => Request::OtherMethod { path },
    }
}

/// The answer to a request: errors here, each route by its handler.
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
        Request::Get { path, query, head } => match path.as_str() {
            "/metrics" => metrics(state, *head),
            "/health" => health(state, *head),
            "/tasks" => tasks(state, query, *head),
            "/" => status_page(state, *head),
            _ => not_found(),
        },
    }
}

/// `GET /metrics`: the text exposition.
fn metrics(state: &State, head: bool) -> Vec<u8> {
    let body = render::metrics(&state.handle, &state.watchdog);
    response(
        200,
        "OK",
        "text/plain; version=0.0.4; charset=utf-8",
        body.as_bytes(),
        head,
        None,
    )
}

/// `GET /health`: the health snapshot, 503 while a runtime is stalled.
fn health(state: &State, head: bool) -> Vec<u8> {
    let health = state.watchdog.health();
    let body = serde_json::to_vec(&health).unwrap_or_default();
    let (code, reason) = if health.status == Status::Stalled {
        (503, "Service Unavailable")
    } else {
        (200, "OK")
    };
    response(code, reason, "application/json", &body, head, None)
}

/// `GET /tasks`: the task dump, JSON or text.
fn tasks(state: &State, query: &str, head: bool) -> Vec<u8> {
    let q = match TasksQuery::parse(query, state.max_tasks) {
        Ok(q) => q,
        Err(why) => {
            return response(
                400,
                "Bad Request",
                "text/plain",
                format!("{why}\n").as_bytes(),
                head,
                None,
            )
        }
    };
    let dump = state.watchdog.task_dump(q.limit);
    if q.text {
        let body = dump.to_string();
        response(
            200,
            "OK",
            "text/plain; charset=utf-8",
            body.as_bytes(),
            head,
            None,
        )
    } else {
        let body = serde_json::to_vec(&dump).unwrap_or_default();
        response(200, "OK", "application/json", &body, head, None)
    }
}

/// `GET /`: the status page.
fn status_page(state: &State, head: bool) -> Vec<u8> {
    let health = state.watchdog.health();
    let dump = state
        .watchdog
        .task_dump(page::PAGE_TASKS.min(state.max_tasks));
    let body = page::render(
        &health,
        &dump,
        state.watchdog.hung_task_threshold().as_secs_f64(),
    );
    response(
        200,
        "OK",
        "text/html; charset=utf-8",
        body.as_bytes(),
        head,
        None,
    )
}

/// What `GET /tasks` was asked for: `format=json` (the default) or
/// `format=text`, and `limit=N` tasks at most (at most the exporter's
/// `max_tasks`, which is also the default).
#[derive(Debug, PartialEq, Eq)]
struct TasksQuery {
    text: bool,
    limit: usize,
}

impl TasksQuery {
    fn parse(query: &str, max_tasks: usize) -> Result<TasksQuery, String> {
        let mut q = TasksQuery {
            text: false,
            limit: max_tasks,
        };
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
            match key {
                "format" => match value {
                    "json" => q.text = false,
                    "text" => q.text = true,
                    _ => return Err(format!("bad query: format must be json or text, not {value:?}")),
                },
                "limit" => match value.parse::<usize>() {
                    Ok(n) => q.limit = n.min(max_tasks),
                    Err(_) => {
                        return Err(format!(
                            "bad query: limit must be a number of tasks (at most {max_tasks}), not {value:?}"
                        ))
                    }
                },
                _ => {} // other parameters (cache busters) are ignored
            }
        }
        Ok(q)
    }
}

fn is_known(path: &str) -> bool {
    matches!(path, "/" | "/metrics" | "/health" | "/tasks")
}

fn not_found() -> Vec<u8> {
    response(
        404,
        "Not Found",
        "text/plain",
        b"not found; try / (the status page), /metrics, /health or /tasks\n",
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

    /// A whole head: the request line and headers, then a blank line.
    fn parse(head: &[u8]) -> Option<Request> {
        parse_head(&[head, b"\r\n\r\n"].concat())
    }

    #[test]
    fn parses_request_heads() {
        assert_eq!(
            parse(b"GET /metrics?x=1 HTTP/1.1\r\nHost: a"),
            Some(Request::Get {
                path: "/metrics".into(),
                query: "x=1".into(),
                head: false
            })
        );
        assert_eq!(
            parse(b"HEAD /health HTTP/1.0"),
            Some(Request::Get {
                path: "/health".into(),
                query: String::new(),
                head: true
            })
        );
        assert_eq!(
            parse(b"GET http://127.0.0.1:9377/metrics?x=1 HTTP/1.1\r\nHost: a"),
            Some(Request::Get {
                path: "/metrics".into(),
                query: "x=1".into(),
                head: false
            })
        );
        assert_eq!(
            parse(b"GET https://host/health HTTP/1.1"),
            Some(Request::Get {
                path: "/health".into(),
                query: String::new(),
                head: false
            })
        );
        assert_eq!(
            parse(b"POST /health HTTP/1.1"),
            Some(Request::OtherMethod {
                path: "/health".into()
            })
        );
        // Bare line feeds are taken as line ends.
        assert_eq!(
            parse_head(b"GET /health HTTP/1.1\nHost: a\n\n"),
            Some(Request::Get {
                path: "/health".into(),
                query: String::new(),
                head: false
            })
        );
        for junk in [
            &b"\x00\x01\x02"[..],
            b"GET",
            b"GET /x",
            b"GET x HTTP/1.1",
            b"GET /x SPDY/3",
            b"GET /x HTTP/1.9",
            b"GET /x HTTP/1.",
            b"GET /x HTTP/1.1garbage",
            b"GET /x HTTP/1.1 extra",
            b"\xff\xfe / HTTP/1.1",
            b"GET http:// HTTP/1.1",
            b"GET http:///metrics HTTP/1.1",
            b"GET http://host HTTP/1.1",
            b"GET /x HTTP/1.1\r\nbad header",
        ] {
            assert_eq!(parse(junk), Some(Request::Malformed), "{junk:?}");
        }
    }

    #[test]
    fn a_head_is_parsed_only_once_it_is_whole() {
        assert_eq!(parse_head(b""), None);
        assert_eq!(parse_head(b"GET /metrics HT"), None);
        assert_eq!(parse_head(b"GET /metrics HTTP/1.1\r\nHost: a\r\n"), None);
        assert!(parse_head(b"GET /metrics HTTP/1.1\r\nHost: a\r\n\r\n").is_some());
    }

    #[test]
    fn more_headers_than_allowed_is_too_large() {
        let mut head = b"GET /metrics HTTP/1.1\r\n".to_vec();
        for i in 0..=MAX_HEADERS {
            head.extend_from_slice(format!("X-{i}: y\r\n").as_bytes());
        }
        head.extend_from_slice(b"\r\n");
        assert_eq!(parse_head(&head), Some(Request::TooLarge));
    }

    #[test]
    fn task_queries_take_a_format_and_a_limit_up_to_the_setting() {
        let parse = |q| TasksQuery::parse(q, 1000);
        assert_eq!(
            parse(""),
            Ok(TasksQuery {
                text: false,
                limit: 1000
            })
        );
        assert_eq!(
            parse("format=text&limit=5"),
            Ok(TasksQuery {
                text: true,
                limit: 5
            })
        );
        assert_eq!(
            parse("limit=5000&x=1"),
            Ok(TasksQuery {
                text: false,
                limit: 1000
            })
        );
        assert!(parse("format=xml")
            .unwrap_err()
            .contains("format must be json or text"));
        assert!(parse("limit=-1")
            .unwrap_err()
            .contains("limit must be a number"));
        assert!(parse("limit=").is_err());
    }
}

//! `/metrics` and `/health` over HTTP, from a thread of their own.

use std::fmt::Write as _;
use std::future::{poll_fn, Future};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::pin::pin;
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use std::sync::{Arc, OnceLock};
use std::task::Poll;
use std::thread::JoinHandle;
use std::time::Duration;

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use parking_lot::Mutex;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::{series, Error, Status, Watchdog};

/// The recorder loopwatch installed, kept for later exporters in the process.
static INSTALLED: OnceLock<PrometheusHandle> = OnceLock::new();

/// Serves `GET /metrics` (Prometheus text format) and `GET /health` (the
/// [`Health`](crate::Health) JSON; HTTP 503 while stalled) from a thread of
/// its own, so that both answer while every worker of the application's
/// runtimes is blocked. Made by [`Exporter::builder`]; stops when
/// [`shutdown`](Exporter::shutdown) is called or it is dropped, and frees its port.
///
/// ```
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let watchdog = loopwatch::Watchdog::builder().start()?;
/// let exporter = loopwatch::Exporter::builder()
///     .bind("127.0.0.1:0".parse()?)
///     .start(&watchdog)?;
/// println!("scrape http://{}/metrics", exporter.local_addr());
/// # exporter.shutdown();
/// # watchdog.shutdown();
/// # Ok(()) }
/// ```
#[derive(Debug)]
pub struct Exporter {
    local_addr: SocketAddr,
    stop: Mutex<Option<(tokio::sync::oneshot::Sender<()>, JoinHandle<()>)>>,
}

/// Configures an [`Exporter`].
#[derive(Debug, Clone)]
#[must_use = "a builder does nothing until `start()` is called"]
pub struct ExporterBuilder {
    bind: SocketAddr,
    handle: Option<PrometheusHandle>,
    max_connections: usize,
    request_timeout: Duration,
}

impl Exporter {
    /// The port used when none is given: 9377, on 127.0.0.1.
    pub const DEFAULT_PORT: u16 = 9377;
    /// Default [`ExporterBuilder::max_connections`]: 256.
    pub const DEFAULT_MAX_CONNECTIONS: usize = 256;
    /// Default [`ExporterBuilder::request_timeout`]: 5 s.
    pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
    /// Largest request head (request line and headers) accepted: 8 KiB.
    pub const MAX_REQUEST_HEAD: usize = 8 * 1024;

    /// Starts configuring an exporter.
    pub fn builder() -> ExporterBuilder {
        ExporterBuilder {
            bind: SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), Exporter::DEFAULT_PORT),
            handle: None,
            max_connections: Exporter::DEFAULT_MAX_CONNECTIONS,
            request_timeout: Exporter::DEFAULT_REQUEST_TIMEOUT,
        }
    }

    /// The address it listens on (with the port chosen by the OS for port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Stops serving, joins the thread and frees the port. Calling it again does nothing.
    pub fn shutdown(&self) {
        if let Some((stop, thread)) = self.stop.lock().take() {
            let _ = stop.send(());
            let _ = thread.join();
        }
    }
}

impl Drop for Exporter {
    fn drop(&mut self) {
        self.shutdown();
    }
}

impl ExporterBuilder {
    /// The address to listen on. Default: `127.0.0.1:9377`; port 0 lets the OS choose.
    pub fn bind(mut self, addr: SocketAddr) -> Self {
        self.bind = addr;
        self
    }

    /// Serves the metrics of an existing Prometheus recorder (from
    /// `metrics-exporter-prometheus`) that the application installed itself,
    /// instead of installing one.
    pub fn prometheus_handle(mut self, handle: PrometheusHandle) -> Self {
        self.handle = Some(handle);
        self
    }

    /// Connections served at once; more are closed at once. Default: 256.
    pub fn max_connections(mut self, max: usize) -> Self {
        self.max_connections = max;
        self
    }

    /// How long a client may take to send its request, and to take the
    /// response. Default: 5 s.
    pub fn request_timeout(mut self, timeout: Duration) -> Self {
        self.request_timeout = timeout;
        self
    }

    /// Installs the Prometheus recorder (unless one was handed in), binds the
    /// address and starts the `loopwatch-exporter` thread.
    ///
    /// # Errors
    ///
    /// - [`Error::Bind`]: the address cannot be bound (in use, not local, no permission).
    /// - [`Error::RecorderInstalled`]: the application installed a `metrics`
    ///   recorder already; hand its `PrometheusHandle` in with
    ///   [`prometheus_handle`](ExporterBuilder::prometheus_handle).
    /// - [`Error::InvalidSetting`]: `max_connections` or `request_timeout` is zero.
    /// - [`Error::Thread`]: the OS refused to start the thread.
    pub fn start(self, watchdog: &Watchdog) -> Result<Exporter, Error> {
        if self.max_connections == 0 {
            return Err(Error::InvalidSetting {
                setting: "max_connections",
                reason: "must be at least 1",
            });
        }
        if self.request_timeout.is_zero() {
            return Err(Error::InvalidSetting {
                setting: "request_timeout",
                reason: "must be greater than zero",
            });
        }
        let listener = std::net::TcpListener::bind(self.bind).map_err(|source| Error::Bind {
            addr: self.bind,
            source,
        })?;
        let local_addr = listener.local_addr().map_err(|source| Error::Bind {
            addr: self.bind,
            source,
        })?;
        listener
            .set_nonblocking(true)
            .map_err(|source| Error::Bind {
                addr: self.bind,
                source,
            })?;
        let handle = recorder_handle(self.handle)?;
        let state = Arc::new(State {
            watchdog: watchdog.clone(),
            handle,
            active: AtomicUsize::new(0),
            max_connections: self.max_connections,
            request_timeout: self.request_timeout,
        });
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel();
        let thread = std::thread::Builder::new()
            .name("loopwatch-exporter".into())
            .spawn(move || serve_thread(listener, state, stop_rx))
            .map_err(Error::Thread)?;
        Ok(Exporter {
            local_addr,
            stop: Mutex::new(Some((stop_tx, thread))),
        })
    }
}

fn recorder_handle(provided: Option<PrometheusHandle>) -> Result<PrometheusHandle, Error> {
    if let Some(handle) = provided {
        return Ok(handle);
    }
    if let Some(handle) = INSTALLED.get() {
        return Ok(handle.clone());
    }
    let recorder = buckets(PrometheusBuilder::new()).build_recorder();
    let handle = recorder.handle();
    metrics::set_global_recorder(recorder).map_err(|_| Error::RecorderInstalled)?;
    let _ = INSTALLED.set(handle.clone());
    // Series described before this recorder existed went nowhere.
    series::describe_all();
    Ok(handle)
}

/// Histogram buckets that fit each series.
fn buckets(builder: PrometheusBuilder) -> PrometheusBuilder {
    let stall = [
        1.0, 2.0, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0,
    ];
    let lag = [
        0.0001, 0.0005, 0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
    ];
    let durations = [
        0.000_001, 0.000_01, 0.000_1, 0.000_5, 0.001, 0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
        5.0, 10.0, 30.0,
    ];
    let set = |b: PrometheusBuilder, name: &str, values: &[f64]| {
        b.set_buckets_for_metric(Matcher::Full(name.to_owned()), values)
            .expect("bucket lists are not empty")
    };
    let builder = set(builder, series::STALL_DURATION_SECONDS, &stall);
    let builder = set(builder, series::HEARTBEAT_LAG_SECONDS, &lag);
    let builder = set(builder, series::POLL_DURATION_SECONDS, &durations);
    set(builder, series::CALL_DURATION_SECONDS, &durations)
}

struct State {
    watchdog: Watchdog,
    handle: PrometheusHandle,
    active: AtomicUsize,
    max_connections: usize,
    request_timeout: Duration,
}

fn serve_thread(
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
                let body = render_metrics(state);
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

/// The exposition: the recorder's series, then the watched runtimes' and the
/// process's, rendered here so that float counters keep their fractions.
fn render_metrics(state: &State) -> String {
    state.handle.run_upkeep();
    let mut text = state.handle.render();
    if !text.is_empty() && !text.ends_with('\n') {
        text.push('\n');
    }
    render_runtimes(&mut text, &state.watchdog.runtime_samples());
    render_process(&mut text, &crate::process::read());
    text
}

fn render_runtimes(out: &mut String, runtimes: &[crate::watchdog::RuntimeSample]) {
    if runtimes.is_empty() {
        return;
    }
    type Field = fn(&crate::watchdog::RuntimeSample) -> f64;
    let families: [(&str, &str, &str, Field); 5] = [
        (
            "loopwatch_runtime_workers",
            "gauge",
            "Worker threads of the runtime.",
            |r| r.workers as f64,
        ),
        (
            "loopwatch_runtime_alive_tasks",
            "gauge",
            "Tasks alive in the runtime.",
            |r| r.alive_tasks as f64,
        ),
        (
            "loopwatch_runtime_global_queue_depth",
            "gauge",
            "Tasks waiting in the runtime's global queue.",
            |r| r.global_queue_depth as f64,
        ),
        (
            "loopwatch_runtime_busy_seconds_total",
            "counter",
            "Time the runtime's workers spent busy, summed over workers.",
            |r| r.busy_seconds,
        ),
        (
            "loopwatch_runtime_parks_total",
            "counter",
            "Times the runtime's workers parked, summed over workers.",
            |r| r.parks as f64,
        ),
    ];
    for (name, kind, help, value) in families {
        family(out, runtimes, name, kind, help, value);
    }
    #[cfg(tokio_unstable)]
    {
        let unstable: [(&str, &str, &str, Field); 6] = [
            ("loopwatch_runtime_polls_total", "counter", "Task polls, summed over workers (tokio_unstable; published by tokio at park and every 61 polls).", |r| r.unstable.polls as f64),
            ("loopwatch_runtime_steals_total", "counter", "Tasks stolen between workers (tokio_unstable).", |r| r.unstable.steals as f64),
            ("loopwatch_runtime_overflows_total", "counter", "Times a worker's local queue overflowed (tokio_unstable).", |r| r.unstable.overflows as f64),
            ("loopwatch_runtime_spawned_tasks_total", "counter", "Tasks spawned on the runtime (tokio_unstable).", |r| r.unstable.spawned_tasks as f64),
            ("loopwatch_runtime_budget_forced_yields_total", "counter", "Times tasks were forced to yield by the coop budget (tokio_unstable).", |r| r.unstable.budget_forced_yields as f64),
            ("loopwatch_runtime_blocking_threads", "gauge", "Threads of the runtime's blocking pool (tokio_unstable).", |r| r.unstable.blocking_threads as f64),
        ];
        for (name, kind, help, value) in unstable {
            family(out, runtimes, name, kind, help, value);
        }
    }
}

fn family(
    out: &mut String,
    runtimes: &[crate::watchdog::RuntimeSample],
    name: &str,
    kind: &str,
    help: &str,
    value: fn(&crate::watchdog::RuntimeSample) -> f64,
) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
    for r in runtimes {
        let _ = writeln!(
            out,
            "{name}{{runtime=\"{}\"}} {}",
            escape(&r.name),
            value(r)
        );
    }
}

fn render_process(out: &mut String, p: &crate::process::ProcessStats) {
    if p.resident_memory_bytes == 0 {
        return; // not read on this platform
    }
    let families: [(&str, &str, &str, f64); 7] = [
        (
            "process_cpu_seconds_total",
            "counter",
            "Total user and system CPU time spent in seconds.",
            p.cpu_seconds,
        ),
        (
            "process_resident_memory_bytes",
            "gauge",
            "Resident memory size in bytes.",
            p.resident_memory_bytes as f64,
        ),
        (
            "process_virtual_memory_bytes",
            "gauge",
            "Virtual memory size in bytes.",
            p.virtual_memory_bytes as f64,
        ),
        (
            "process_open_fds",
            "gauge",
            "Number of open file descriptors.",
            p.open_fds as f64,
        ),
        (
            "process_max_fds",
            "gauge",
            "Maximum number of open file descriptors.",
            p.max_fds as f64,
        ),
        (
            "process_threads",
            "gauge",
            "Number of OS threads in the process.",
            p.threads as f64,
        ),
        (
            "process_start_time_seconds",
            "gauge",
            "Start time of the process since unix epoch in seconds.",
            p.start_time_seconds,
        ),
    ];
    for (name, kind, help, value) in families {
        let _ = writeln!(
            out,
            "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}"
        );
    }
}

/// Escapes a label value for the text format.
fn escape(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
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

    #[test]
    fn escapes_label_values() {
        assert_eq!(escape(r#"a"b\c"#), r#"a\"b\\c"#);
    }
}

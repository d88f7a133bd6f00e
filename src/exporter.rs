//! The exporter: `/metrics`, `/health`, `/tasks` and the status page `/`
//! over HTTP, from a thread of their own.
//!
//! - this file: [`Exporter`], [`ExporterBuilder`], and the Prometheus recorder;
//! - [`http`]: the server thread, request parsing and responses;
//! - [`render`]: the `/metrics` exposition;
//! - [`page`]: the status page.
//!
//! The exporter only reads: the recorder's series, the health snapshot and
//! the process figures the watchdog published, the watched runtimes' tokio
//! metrics, and the duration buckets of the name registry. Detection never
//! depends on it.

mod http;
mod page;
mod render;

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::{Arc, OnceLock};
use std::thread::JoinHandle;
use std::time::Duration;

use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use parking_lot::Mutex;

use crate::{Error, Watchdog};

/// The recorder loopwatch installed, kept for later exporters in the process.
static INSTALLED: OnceLock<PrometheusHandle> = OnceLock::new();

/// Serves `GET /metrics` (Prometheus text format), `GET /health` (the
/// [`Health`](crate::Health) JSON; HTTP 503 while stalled), `GET /tasks`
/// (the [`TaskDump`](crate::TaskDump) as JSON, or `?format=text`; `?limit=N`)
/// and `GET /` (a status page for people) from a thread of its own, so that
/// they answer while every worker of the application's runtimes is blocked. Made by [`Exporter::builder`]; stops when
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
#[must_use = "dropping the exporter stops it and frees its port; keep it for as long as it should serve"]
pub struct Exporter {
    local_addr: SocketAddr,
    /// The process that started it; a child made by `fork()` has no thread to join.
    pid: u32,
    stop: Mutex<Option<(tokio::sync::oneshot::Sender<()>, JoinHandle<()>)>>,
}

/// Configures an [`Exporter`].
#[derive(Debug, Clone)]
#[must_use = "a builder does nothing until `start()` is called"]
pub struct ExporterBuilder {
    bind: SocketAddr,
    handle: Option<PrometheusHandle>,
    max_connections: usize,
    head_timeout: Duration,
    request_timeout: Duration,
    max_tasks: usize,
}

impl Exporter {
    /// The port used when none is given: 9377, on 127.0.0.1.
    pub const DEFAULT_PORT: u16 = 9377;
    /// Default [`ExporterBuilder::max_connections`]: 256.
    pub const DEFAULT_MAX_CONNECTIONS: usize = 256;
    /// Default [`ExporterBuilder::head_timeout`]: 1 s.
    pub const DEFAULT_HEAD_TIMEOUT: Duration = Duration::from_secs(1);
    /// Default [`ExporterBuilder::request_timeout`]: 5 s.
    pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
    /// Largest request head (request line and headers) accepted: 8 KiB.
    pub const MAX_REQUEST_HEAD: usize = 8 * 1024;
    /// Default [`ExporterBuilder::max_tasks`]: 1,000.
    pub const DEFAULT_MAX_TASKS: usize = 1_000;

    /// Starts configuring an exporter.
    pub fn builder() -> ExporterBuilder {
        ExporterBuilder {
            bind: SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), Exporter::DEFAULT_PORT),
            handle: None,
            max_connections: Exporter::DEFAULT_MAX_CONNECTIONS,
            head_timeout: Exporter::DEFAULT_HEAD_TIMEOUT,
            request_timeout: Exporter::DEFAULT_REQUEST_TIMEOUT,
            max_tasks: Exporter::DEFAULT_MAX_TASKS,
        }
    }

    /// The address it listens on (with the port chosen by the OS for port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Stops serving, joins the thread and frees the port. Calling it again
    /// does nothing. In a child process made by `fork()` it returns at once:
    /// the server thread stayed in the parent, which goes on serving.
    pub fn shutdown(&self) {
        if let Some((stop, thread)) = self.stop.lock().take() {
            if std::process::id() != self.pid {
                std::mem::forget((stop, thread));
                return;
            }
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
    /// An exporter configured from the environment: `Some` with
    /// [`bind`](Self::bind) set to `LOOPWATCH_ADDR` (an IP address and a
    /// port, e.g. `0.0.0.0:9377`), `None` when that variable is unset or
    /// empty (no exporter wanted) or `LOOPWATCH=off`. Settings called on
    /// the builder afterwards win over the environment.
    ///
    /// ```
    /// # fn main() -> Result<(), loopwatch::Error> {
    /// let watchdog = loopwatch::WatchdogBuilder::from_env()?.start()?;
    /// // LOOPWATCH_ADDR=0.0.0.0:9377 ./service
    /// let exporter = match loopwatch::ExporterBuilder::from_env()? {
    ///     Some(builder) => Some(builder.start(&watchdog)?),
    ///     None => None,
    /// };
    /// # drop(exporter); watchdog.shutdown();
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    ///
    /// [`Error::InvalidEnv`]: `LOOPWATCH_ADDR` is not an address and a port,
    /// or `LOOPWATCH` is neither on nor off.
    pub fn from_env() -> Result<Option<ExporterBuilder>, Error> {
        if crate::env::turned_off()? {
            return Ok(None);
        }
        Ok(crate::env::addr()?.map(|addr| Exporter::builder().bind(addr)))
    }

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

    /// Connections open at once. Default: 256. When a new connection finds
    /// them all taken, the oldest one that has not sent a whole request yet
    /// (idle, slowloris, half-open) is closed to make room; only when every
    /// one is being answered is the new one closed. Either way it is counted
    /// in `loopwatch_exporter_connections_dropped_total`. So a flood of idle
    /// connections cannot lock scrapes out.
    pub fn max_connections(mut self, max: usize) -> Self {
        self.max_connections = max;
        self
    }

    /// How long a client may take to send its whole request head after it
    /// connected; a connection that has not by then is closed. Default: 1 s
    /// (a scraper sends its request at once). Never longer than
    /// [`request_timeout`](ExporterBuilder::request_timeout).
    pub fn head_timeout(mut self, timeout: Duration) -> Self {
        self.head_timeout = timeout;
        self
    }

    /// How long a whole exchange may take, the response included. Default: 5 s.
    pub fn request_timeout(mut self, timeout: Duration) -> Self {
        self.request_timeout = timeout;
        self
    }

    /// Most tasks `GET /tasks` lists (the longest idle first; its counts
    /// cover every live task whatever this is). Default: 1,000. A request
    /// may ask for fewer with `?limit=N`. The time of a request grows with
    /// the live tasks (each one's record is read, about 1 ms per 100,000),
    /// its memory with this number only.
    pub fn max_tasks(mut self, max: usize) -> Self {
        self.max_tasks = max;
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
    /// - [`Error::InvalidSetting`]: `max_connections`, `head_timeout` or
    ///   `request_timeout` is zero.
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
        if self.head_timeout.is_zero() {
            return Err(Error::InvalidSetting {
                setting: "head_timeout",
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
        widen_backlog(&listener);
        let handle = recorder_handle(self.handle)?;
        let state = Arc::new(http::State {
            watchdog: watchdog.clone(),
            handle,
            max_connections: self.max_connections,
            head_timeout: self.head_timeout.min(self.request_timeout),
            request_timeout: self.request_timeout,
            max_tasks: self.max_tasks,
        });
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel();
        let thread = std::thread::Builder::new()
            .name("loopwatch-exporter".into())
            .spawn(move || http::serve_thread(listener, state, stop_rx))
            .map_err(Error::Thread)?;
        Ok(Exporter {
            local_addr,
            pid: std::process::id(),
            stop: Mutex::new(Some((stop_tx, thread))),
        })
    }
}

/// The queue of connections the kernel completes before the server accepts
/// them: std listens with 128, and a burst of more connections (a flood)
/// makes the kernel drop the SYNs past it, so that a scraper connecting then
/// waits for its SYN to be sent again, a second later.
const BACKLOG: i32 = 1024;

/// Listens again with [`BACKLOG`] (Linux and the BSDs take a second
/// `listen` as a new backlog; the kernel caps it at its `somaxconn`).
fn widen_backlog(listener: &std::net::TcpListener) {
    #[cfg(unix)]
    {
        use std::os::fd::AsRawFd as _;
        // SAFETY: `listen` on a socket we own, already listening.
        let _ = unsafe { libc::listen(listener.as_raw_fd(), BACKLOG) };
    }
    #[cfg(not(unix))]
    let _ = listener;
}

fn recorder_handle(provided: Option<PrometheusHandle>) -> Result<PrometheusHandle, Error> {
    if let Some(handle) = provided {
        return Ok(handle);
    }
    if let Some(handle) = INSTALLED.get() {
        return Ok(handle.clone());
    }
    let recorder = PrometheusBuilder::new().build_recorder();
    let handle = recorder.handle();
    metrics::set_global_recorder(recorder).map_err(|_| Error::RecorderInstalled)?;
    let _ = INSTALLED.set(handle.clone());
    // Series described before this recorder existed went nowhere.
    crate::watchdog::export::describe_all();
    Ok(handle)
}

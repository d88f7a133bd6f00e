//! A connection flood against an HTTP server, and scrapes through it: for
//! the exporter's flood test and `connection_flood` (in `extras/`).

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// How the flood's connections behave.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Connects and sends nothing (also what a half-open connection looks
    /// like from the server).
    Idle,
    /// Sends a request line, then one header byte every 100 ms, never
    /// finishing the head.
    Slowloris,
}

/// Keeps `count` connections of one kind open until dropped, opening a new
/// one within a few milliseconds whenever the server closes one.
#[derive(Debug)]
pub struct Flood {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
    /// Connections opened in all (the first `count` and every reopening).
    pub opened: Arc<AtomicU64>,
}

impl Flood {
    /// Opens `count` connections of `kind` to `addr`, from a thread of its
    /// own.
    pub fn start(addr: SocketAddr, kind: Kind, count: usize) -> Flood {
        let stop = Arc::new(AtomicBool::new(false));
        let opened = Arc::new(AtomicU64::new(0));
        let thread = {
            let (stop, opened) = (stop.clone(), opened.clone());
            std::thread::spawn(move || hold(addr, kind, count, &stop, &opened))
        };
        Flood {
            stop,
            thread: Some(thread),
            opened,
        }
    }
}

impl Drop for Flood {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn open(addr: SocketAddr, kind: Kind, opened: &AtomicU64) -> Option<TcpStream> {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(1)).ok()?;
    opened.fetch_add(1, Ordering::Relaxed);
    if kind == Kind::Slowloris {
        stream.write_all(b"GET /metrics HTTP/1.1\r\nX-a: ").ok()?;
    }
    stream.set_nonblocking(true).ok()?;
    Some(stream)
}

fn hold(addr: SocketAddr, kind: Kind, count: usize, stop: &AtomicBool, opened: &AtomicU64) {
    let mut streams: Vec<Option<TcpStream>> =
        (0..count).map(|_| open(addr, kind, opened)).collect();
    let mut buf = [0u8; 256];
    let mut last_drip = Instant::now();
    while !stop.load(Ordering::Relaxed) {
        // Reopen closed connections at once, as an attacker would.
        std::thread::sleep(Duration::from_millis(5));
        let drip = kind == Kind::Slowloris && last_drip.elapsed() >= Duration::from_millis(100);
        if drip {
            last_drip = Instant::now();
        }
        for slot in streams.iter_mut() {
            let alive = match slot {
                Some(stream) => {
                    let closed = match stream.read(&mut buf) {
                        Ok(n) => n == 0,
                        Err(e) => e.kind() != ErrorKind::WouldBlock,
                    };
                    !closed && (!drip || stream.write(b"a").is_ok())
                }
                None => false,
            };
            if !alive && !stop.load(Ordering::Relaxed) {
                *slot = open(addr, kind, opened);
            }
        }
    }
}

/// One `GET path`: the status code and the time to the whole response, or
/// `None` if no whole response came within `timeout`.
pub fn get(addr: SocketAddr, path: &str, timeout: Duration) -> Option<(u16, Duration)> {
    let began = Instant::now();
    let mut stream = TcpStream::connect_timeout(&addr, timeout).ok()?;
    stream.set_read_timeout(Some(timeout)).ok()?;
    stream
        .write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes())
        .ok()?;
    let mut response = Vec::new();
    stream.read_to_end(&mut response).ok()?;
    let took = began.elapsed();
    let head = std::str::from_utf8(response.get(..12)?).ok()?;
    let code = head.strip_prefix("HTTP/1.1 ")?.parse().ok()?;
    (took <= timeout).then_some((code, took))
}

/// Scrapes `/metrics` and `/health` in turn, `count` times, `every` apart.
pub fn scrapes(addr: SocketAddr, count: usize, every: Duration) -> Vec<Option<(u16, Duration)>> {
    (0..count)
        .map(|i| {
            std::thread::sleep(every);
            let path = if i % 2 == 0 { "/metrics" } else { "/health" };
            get(addr, path, Duration::from_secs(2))
        })
        .collect()
}

/// The fraction answered with 200 OK, and the p50 and p99 latency of those.
pub fn summary(results: &[Option<(u16, Duration)>]) -> (f64, Duration, Duration) {
    let mut ok: Vec<Duration> = results
        .iter()
        .flatten()
        .filter(|(c, _)| *c == 200)
        .map(|(_, d)| *d)
        .collect();
    ok.sort();
    let at = |q: f64| {
        ok.get(((ok.len() as f64 * q).ceil() as usize).saturating_sub(1))
            .copied()
            .unwrap_or_default()
    };
    (
        ok.len() as f64 / results.len().max(1) as f64,
        at(0.5),
        at(0.99),
    )
}

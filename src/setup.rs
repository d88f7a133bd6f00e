//! What `#[loopwatch::main]` runs around `main`'s body: the runtime built
//! with loopwatch's hooks, the watchdog and the exporter from the
//! environment, and their shutdown after the body returns.

use std::future::Future;

#[cfg(feature = "exporter")]
use crate::ExporterBuilder;
use crate::{Error, WatchdogBuilder};

/// The name the runtime of `#[loopwatch::main]` is watched under.
pub(crate) const RUNTIME_NAME: &str = "main";

/// Ends the process at start on a setup error: the message on stderr, exit
/// status 2, before `main`'s body runs.
fn fail(e: Error) -> ! {
    eprintln!("{e}");
    std::process::exit(2)
}

/// Builds the runtime from `builder` (with loopwatch's hooks unless
/// `LOOPWATCH=off`), starts the watchdog (`WatchdogBuilder::from_env`),
/// watches the runtime as `"main"`, starts the exporter when `LOOPWATCH_ADDR`
/// is set, runs `body` to completion, then shuts the exporter and the
/// watchdog down.
pub fn run_main<F: Future>(
    mut builder: tokio::runtime::Builder,
    flavor: &'static str,
    body: F,
) -> F::Output {
    let off = crate::env::turned_off().unwrap_or_else(|e| fail(e));
    if !off {
        crate::install_runtime_hooks(&mut builder);
    }
    let rt = builder
        .enable_all()
        .build()
        .expect("Failed building the Runtime");
    if off {
        return rt.block_on(body);
    }
    let watchdog = WatchdogBuilder::from_env()
        .and_then(WatchdogBuilder::start)
        .unwrap_or_else(|e| fail(e));
    watchdog
        .watch_runtime(RUNTIME_NAME, rt.handle())
        .unwrap_or_else(|e| fail(e));
    #[cfg(feature = "exporter")]
    let exporter = ExporterBuilder::from_env()
        .and_then(|b| b.map(|b| b.start(&watchdog)).transpose())
        .unwrap_or_else(|e| fail(e));
    tracing::debug!(target: "loopwatch", flavor, "#[loopwatch::main]: watching the runtime as \"main\"");
    let out = rt.block_on(body);
    #[cfg(feature = "exporter")]
    drop(exporter);
    watchdog.shutdown();
    out
}

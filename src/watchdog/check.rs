//! The check loop: what the watchdog thread does every `check_interval`.
//!
//! Each check keeps the runtime set in step with `watch_runtime`, runs
//! detection on every runtime, feeds what it found to the stall machine,
//! hands each resulting event to the evidence collector and the recent-stalls
//! ring, reads the application's activity when due, publishes one health
//! snapshot, and only then sends the reports (log, metrics, callback), so
//! that a callback asking for health sees the stall it is told about. Each
//! of those is a type of its own; this file only orders them.

use std::sync::{mpsc, Arc};
use std::time::Duration;

use crate::board::slot;
use crate::clock::{nanos, now_ns};
use crate::watchdog::activity::Activity;
use crate::watchdog::builder::Config;
use crate::watchdog::callback::CallbackQueue;
use crate::watchdog::cause::{self, PauseDetector};
use crate::watchdog::detect::{Thresholds, Unknowns};
use crate::watchdog::evidence::{DriverRead, EvidenceCollector};
use crate::watchdog::handle::Shared;
use crate::watchdog::recent::RecentStalls;
use crate::watchdog::report::Reporter;
use crate::watchdog::runtimes::{RuntimeRef, RuntimeSet};
use crate::watchdog::snapshot::{self, Inputs};
use crate::watchdog::stall::{Candidate, Event, StallMachine};
use crate::watchdog::{publish, threads};

/// The watchdog thread's state.
#[derive(Debug)]
pub(crate) struct Checker {
    shared: Arc<Shared>,
    thresholds: Thresholds,
    /// How often each runtime's heartbeat task is woken (ns).
    heartbeat_ns: u64,
    runtimes: RuntimeSet,
    stalls: StallMachine,
    evidence: EvidenceCollector,
    recent: RecentStalls,
    reporter: Reporter,
    activity: Activity,
    /// Hung tasks' await traces (with tokio's task dumps).
    traces: super::traces::AwaitTraces,
    /// systemd's watchdog, when asked for and set up by the environment.
    #[cfg(unix)]
    systemd: Option<super::systemd::Notifier>,
    /// `abort_after` (ns).
    abort_ns: Option<u64>,
    /// Pauses of the whole process, told from the watchdog thread's times.
    pauses: PauseDetector,
    /// Threads not known to loopwatch that may be stuck (named as workers,
    /// or any), when last listed (ns): timed while a runtime known only by
    /// its handle, or a current-thread runtime whose driver is not known,
    /// may be stuck.
    unknown_workers: (u64, Unknowns, Vec<i64>),
}

/// Runs checks until the handle drops the sender (shutdown), which ends the
/// wait at once.
pub(crate) fn run(mut checker: Checker, stop: &mpsc::Receiver<()>) {
    let interval = checker.shared.config.check_interval;
    tracing::debug!(target: "loopwatch", config = ?checker.shared.config, "watchdog started");
    while let Err(mpsc::RecvTimeoutError::Timeout) = stop.recv_timeout(interval) {
        checker.check();
    }
    tracing::debug!(target: "loopwatch", "watchdog stopped");
}

/// How often the heartbeat task of each runtime is woken: a tenth of the
/// stall threshold, at least every check and at most every second. Each wake
/// is a cross-thread wake-up, the largest part of a check's cost per runtime.
fn heartbeat_interval(config: &Config) -> Duration {
    let floor = config.check_interval;
    (config.stall_threshold / 10).clamp(floor, floor.max(Duration::from_secs(1)))
}

impl Checker {
    pub(crate) fn new(shared: Arc<Shared>, callback: Option<CallbackQueue>) -> Self {
        let config = &shared.config;
        Checker {
            thresholds: Thresholds {
                stall_ns: nanos(config.stall_threshold),
                check_ns: nanos(config.check_interval),
                sample_stacks: config.sample_stacks,
            },
            heartbeat_ns: nanos(heartbeat_interval(config)),
            runtimes: RuntimeSet::default(),
            stalls: StallMachine::new(config.stall_threshold, config.max_reports_per_minute),
            evidence: EvidenceCollector::new(config.sample_stacks, config.full_stacks),
            recent: RecentStalls::new(config.recent_stalls),
            reporter: Reporter::new(callback),
            activity: Activity::new(config),
            traces: super::traces::AwaitTraces::default(),
            #[cfg(unix)]
            systemd: config
                .notify_systemd
                .then(|| super::systemd::Notifier::from_env(config.check_interval))
                .flatten(),
            abort_ns: config.abort_after.map(nanos),
            pauses: PauseDetector::new(config.check_interval),
            unknown_workers: (0, Unknowns::None, Vec::new()),
            shared,
        }
    }

    /// One check.
    pub(crate) fn check(&mut self) {
        let gone = self.runtimes.sync(&mut self.shared.runtimes.lock());
        for runtime in &gone {
            self.reporter.runtime_gone(runtime);
        }
        let now = now_ns();
        if let Some(pause) = self.pauses.check_started(now) {
            self.activity.paused(pause.end, pause.len);
            *self.shared.process.lock() = self.activity.process();
            tracing::info!(
                target: "loopwatch",
                paused_seconds = pause.len as f64 / 1e9,
                "the whole process was paused for {:.1} s (stopped, a frozen cgroup or a paused VM); not a stall",
                pause.len as f64 / 1e9
            );
        }
        let seen = self.detect(now);
        let events = self.stalls.update(now, seen);
        // New stalls are counted and shown in health at once: gathering
        // their evidence (a stack to take and symbolize per stalled worker)
        // may take a while, and health and the stall counter are what load
        // balancers, scrapes and alerts see.
        let mut flagged = false;
        for event in &events {
            if let Event::Report {
                report, candidate, ..
            } = event
            {
                // A stall detection could not confirm is flagged once its
                // evidence has not shown it to be none (in `handle`).
                if report.escalation == 0 && report.unconfirmed.is_none() {
                    flagged = true;
                    self.flag(report, candidate);
                }
            }
        }
        if flagged {
            self.publish(now);
        }
        // The stuck threads of the runtimes known only by their handle, for
        // all of this check's reports in one search.
        let searched: Vec<(&Candidate, &super::detect::RuntimeMonitor)> = events
            .iter()
            .filter_map(|e| match e {
                Event::Report { candidate, .. } => self
                    .runtimes
                    .get(candidate.runtime.serial)
                    .map(|w| (candidate, &w.monitor)),
                Event::End { .. } => None,
            })
            .collect();
        self.evidence.find_threads(&searched);
        let mut reports = Vec::new();
        for event in events {
            reports.extend(self.handle(event, &gone));
        }
        self.evidence.end_check();
        self.traces.collect(now);
        if self.activity.tick(now) {
            *self.shared.process.lock() = self.activity.process();
            let runtimes = self.shared.runtimes.lock().clone();
            self.traces.tick(
                now,
                &runtimes,
                self.activity.hung_ids(),
                self.heartbeat_ns,
                nanos(self.shared.config.hung_task_threshold),
            );
        }
        let health = self.publish(now);
        #[cfg(unix)]
        if let Some(systemd) = &mut self.systemd {
            systemd.update(now, self.stalls.active().next().is_some(), &health);
        }
        // Reports go out once health shows them, so that a callback that
        // asks for health sees the stall it is told about.
        for report in &reports {
            self.reporter.report(report);
        }
        self.abort_if_due(now);
        self.pauses.check_ended(now_ns());
    }

    /// With `abort_after`: a stall that lasted that long ends the process,
    /// with its report, stack included, on stderr.
    fn abort_if_due(&mut self, now: u64) {
        let Some(abort_ns) = self.abort_ns else {
            return;
        };
        let Some((candidate, escalation)) = self.stalls.lasting(now, abort_ns) else {
            return;
        };
        let candidate = candidate.clone();
        let mut report = candidate.report(now, escalation);
        let monitor = self
            .runtimes
            .get(candidate.runtime.serial)
            .map(|w| &w.monitor);
        if self.evidence.add(&mut report, &candidate, monitor) == DriverRead::Outside {
            // Nobody drives that runtime: it is not stalled.
            self.driver_read(&candidate, false);
            return;
        }
        super::abort::abort_with(&report, Duration::from_nanos(abort_ns));
    }

    /// Samples every runtime, finds its stalls, and wakes its heartbeat when due.
    fn detect(&mut self, now: u64) -> Vec<Candidate> {
        let slots = slot::snapshot();
        let drivers: Vec<i64> = self
            .runtimes
            .iter()
            .map(|w| w.monitor.driver_tid())
            .collect();
        let mut seen = Vec::new();
        let mut suspects = Vec::new();
        let mut unknown = Unknowns::None;
        for watched in self.runtimes.iter_mut() {
            let monitor = &mut watched.monitor;
            monitor.sample(now);
            seen.extend(monitor.detect(
                now,
                &slots,
                &drivers,
                self.thresholds,
                &self.pauses,
                self.evidence.symbolizer(),
            ));
            unknown =
                unknown.max(monitor.suspects(now, &slots, self.thresholds.check_ns, &mut suspects));
            if now.saturating_sub(monitor.last_poke) >= self.heartbeat_ns {
                monitor.last_poke = now;
                monitor.entry.beat.poke(now);
            }
        }
        if unknown != Unknowns::None {
            // Listed again at most once a second while needed.
            let (at, kind, list) = &mut self.unknown_workers;
            if *at == 0 || now.saturating_sub(*at) >= 1_000_000_000 || *kind != unknown {
                *at = now;
                *kind = unknown;
                *list = match unknown {
                    Unknowns::Any => threads::all_threads(&suspects, cause::MAX_TIMED),
                    _ => threads::worker_named_threads(&slots, &suspects, cause::MAX_TIMED),
                };
            }
            for &tid in list.iter() {
                if !suspects.contains(&tid) {
                    suspects.push(tid);
                }
            }
        } else {
            self.unknown_workers = (0, Unknowns::None, Vec::new());
        }
        self.evidence.cpu().observe(now, &suspects);
        seen
    }

    /// Applies one event; returns the report to send, if any.
    fn handle(&mut self, event: Event, gone: &[RuntimeRef]) -> Option<crate::StallReport> {
        match event {
            Event::Report {
                mut report,
                candidate,
                held,
            } => {
                // Every report gets its evidence, held back or not: health
                // and the recent stalls show it either way.
                let monitor = self
                    .runtimes
                    .get(candidate.runtime.serial)
                    .map(|w| &w.monitor);
                let unconfirmed = report.unconfirmed.is_some();
                match self.evidence.add(&mut report, &candidate, monitor) {
                    DriverRead::Nothing => {}
                    DriverRead::Inside => self.driver_read(&candidate, true),
                    DriverRead::Outside => {
                        // Nobody drives the runtime: no stall. One flagged
                        // now is taken back; one already reported ends at
                        // the next check.
                        self.driver_read(&candidate, false);
                        tracing::debug!(
                            target: "loopwatch",
                            runtime = %candidate.runtime.name,
                            "the stack of the thread that drove the runtime shows it outside block_on: not stalled"
                        );
                        if report.escalation == 0 {
                            self.stalls.withdraw(candidate.key);
                            self.evidence.forget(candidate.key);
                        }
                        return None;
                    }
                }
                if report.escalation == 0 {
                    if unconfirmed {
                        // Flagged now that its evidence did not take it back.
                        self.flag(&report, &candidate);
                    }
                    publish::stall_cause(&report.runtime, report.cause);
                }
                self.recent.record(candidate.key, &report);
                if held {
                    self.reporter.suppressed();
                    return None;
                }
                Some(*report)
            }
            Event::End {
                candidate,
                duration,
                reported,
            } => {
                self.evidence.forget(candidate.key);
                // Stalls of runtimes that shut down are not counted as ended stalls.
                if gone.contains(&candidate.runtime) {
                    self.reporter.stall_abandoned(&candidate.runtime, reported);
                    return None;
                }
                self.recent.ended(candidate.key, duration);
                if let Some(watched) = self.runtimes.get_mut(candidate.runtime.serial) {
                    watched.history.last_stall_ns = Some(nanos(duration));
                    watched.history.last_stall_end = now_ns();
                }
                self.reporter.ended(
                    &candidate.runtime,
                    candidate.worker,
                    candidate.task,
                    duration,
                    reported,
                );
                None
            }
        }
    }

    /// Counts a new stall, in its runtime's history and its metrics.
    fn flag(&mut self, report: &crate::StallReport, candidate: &Candidate) {
        if let Some(watched) = self.runtimes.get_mut(candidate.runtime.serial) {
            watched.history.stalls += 1;
        }
        self.reporter.stall_flagged(report);
    }

    /// Tells the runtime's monitor what the stack of its driver said.
    fn driver_read(&mut self, candidate: &Candidate, inside: bool) {
        if let Some(watched) = self.runtimes.get_mut(candidate.runtime.serial) {
            watched.monitor.driver_read(now_ns(), inside);
        }
    }

    /// Updates the per-runtime gauges and replaces the health snapshot.
    fn publish(&mut self, now: u64) -> Arc<crate::Health> {
        let active: Vec<&Candidate> = self.stalls.active().collect();
        for watched in self.runtimes.iter_mut() {
            let serial = watched.monitor.entry.serial;
            let stalled = active.iter().filter(|c| c.runtime.serial == serial).count();
            self.reporter.runtime_gauges(watched, stalled, now);
        }
        let health = snapshot::assemble(Inputs {
            now,
            config: &self.shared.config,
            runtimes: &self.runtimes,
            stalls: &active,
            evidence: &self.evidence,
            activity: self.activity.summary(),
            process: self.activity.process(),
            recent_stalls: self.recent.newest_first(),
        });
        let health = Arc::new(health);
        *self.shared.health.lock() = health.clone();
        health
    }
}

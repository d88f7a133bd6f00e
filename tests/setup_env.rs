//! One-line adoption: `#[loopwatch::main]` and configuration from the
//! environment (`WatchdogBuilder::from_env`, `ExporterBuilder::from_env`).
//! Every test that needs variables set runs in a child process of its own
//! with them, since the environment is the whole process's.

mod common;

use std::time::Duration;

use loopwatch::{Error, ExporterBuilder, Watchdog, WatchdogBuilder};

/// Runs test `name` of this binary in a child process with `env` set (and
/// `LOOPWATCH_TEST_CHILD`); returns its exit status and output.
fn child(name: &str, env: &[(&str, &str)]) -> (Option<i32>, String) {
    let mut all = vec![("LOOPWATCH_TEST_CHILD", "1")];
    all.extend_from_slice(env);
    common::child_process(name, &all)
}

fn in_child() -> bool {
    std::env::var_os("LOOPWATCH_TEST_CHILD").is_some()
}

fn passed(name: &str, env: &[(&str, &str)]) {
    let (code, text) = child(name, env);
    assert!(
        code == Some(0) && text.contains("1 passed"),
        "the child running {name} failed:\n{text}"
    );
}

/// A port free right now on 127.0.0.1.
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

mod app {
    use std::time::Duration;

    /// A service's main: a worker blocked for 3 s by an uninstrumented
    /// task, while `/health` and `/metrics` are asked for.
    #[loopwatch::main(worker_threads = 2)]
    pub async fn main() -> Result<(), Box<dyn std::error::Error>> {
        let port: u16 = std::env::var("TEST_PORT")?.parse()?;
        let watchdog = loopwatch::Watchdog::current().ok_or("no watchdog runs")?;
        assert_eq!(watchdog.stall_threshold(), Duration::from_millis(500));
        let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
        let blocked = tokio::spawn(async { std::thread::sleep(Duration::from_millis(3000)) });
        // Asked for from a plain thread: the runtime's workers may all be
        // busy, the exporter is not. Asked again until the stall's report
        // has its cause (the first report after the threshold, once the
        // stuck thread has been timed over a check): the test processes
        // beside this one may delay the block's start and the first check.
        let health = std::thread::spawn(move || {
            let began = std::time::Instant::now();
            loop {
                std::thread::sleep(Duration::from_millis(100));
                let health = super::common::get(addr, "/health");
                let known = health.status == 503 && !health.body.contains("\"cause\":\"unknown\"");
                if known || began.elapsed() > Duration::from_millis(2600) {
                    return (health, super::common::get(addr, "/metrics"));
                }
            }
        })
        .join()
        .map_err(|_| "the scraping thread panicked")?;
        blocked.await?;
        let (health, metrics) = health;
        assert_eq!(health.status, 503, "{}", health.body);
        let json: serde_json::Value = serde_json::from_str(&health.body)?;
        let runtime = &json["runtimes"][0];
        assert_eq!(runtime["name"], "main");
        let stalled = &runtime["stalled_workers"][0];
        // Hooked: the stuck worker's thread is known without a search.
        assert!(stalled["thread"].is_string(), "{json}");
        assert_eq!(stalled["cause"], "blocked", "{json}");
        assert!(
            metrics
                .body
                .contains("loopwatch_stalls_total{runtime=\"main\"} 1"),
            "{}",
            metrics.body
        );
        println!("main returns");
        Ok(())
    }
}

#[test]
fn the_main_attribute_watches_the_hooked_runtime_and_serves_the_exporter_from_the_environment() {
    if in_child() {
        app::main().unwrap();
        // After main: shut down, the port closed.
        assert!(Watchdog::current().is_none());
        let port: u16 = std::env::var("TEST_PORT").unwrap().parse().unwrap();
        assert!(std::net::TcpStream::connect(("127.0.0.1", port)).is_err());
        return;
    }
    let port = free_port().to_string();
    passed(
        "the_main_attribute_watches_the_hooked_runtime_and_serves_the_exporter_from_the_environment",
        &[
            ("LOOPWATCH_STALL_THRESHOLD", "500ms"),
            ("LOOPWATCH_CHECK_INTERVAL", "50ms"),
            ("LOOPWATCH_ADDR", &format!("127.0.0.1:{port}")),
            ("TEST_PORT", &port),
        ],
    );
}

mod plain {
    /// A main that only says it ran, on a current-thread runtime.
    #[loopwatch::main(flavor = "current_thread")]
    pub async fn main() {
        assert_eq!(
            tokio::runtime::Handle::current().runtime_flavor(),
            tokio::runtime::RuntimeFlavor::CurrentThread
        );
        println!(
            "body ran; watchdog {}",
            if loopwatch::Watchdog::current().is_some() {
                "on"
            } else {
                "off"
            }
        );
    }
}

#[test]
fn a_bad_variable_ends_the_process_before_main_with_the_variable_named() {
    if in_child() {
        plain::main();
        return;
    }
    let (code, text) = child(
        "a_bad_variable_ends_the_process_before_main_with_the_variable_named",
        &[("LOOPWATCH_STALL_THRESHOLD", "5x")],
    );
    assert_eq!(code, Some(2), "{text}");
    assert!(
        text.contains("environment variable LOOPWATCH_STALL_THRESHOLD=\"5x\" is not valid: expected a duration"),
        "{text}"
    );
    assert!(!text.contains("body ran"), "{text}");
    // A value that parses but cannot work names the variable too.
    let (code, text) = child(
        "a_bad_variable_ends_the_process_before_main_with_the_variable_named",
        &[("LOOPWATCH_CHECK_INTERVAL", "10s")],
    );
    assert_eq!(code, Some(2), "{text}");
    assert!(
        text.contains(
            "environment variable LOOPWATCH_CHECK_INTERVAL=\"10s\" is not valid: `check_interval`"
        ),
        "{text}"
    );
    let (code, text) = child(
        "a_bad_variable_ends_the_process_before_main_with_the_variable_named",
        &[("LOOPWATCH_ADDR", "localhost")],
    );
    assert_eq!(code, Some(2), "{text}");
    assert!(text.contains("LOOPWATCH_ADDR=\"localhost\""), "{text}");
}

#[test]
fn loopwatch_off_runs_main_unwatched() {
    if in_child() {
        plain::main();
        return;
    }
    let (code, text) = child("loopwatch_off_runs_main_unwatched", &[("LOOPWATCH", "off")]);
    assert_eq!(code, Some(0), "{text}");
    assert!(text.contains("body ran; watchdog off"), "{text}");
    let (code, text) = child("loopwatch_off_runs_main_unwatched", &[]);
    assert_eq!(code, Some(0), "{text}");
    assert!(text.contains("body ran; watchdog on"), "{text}");
    let (code, text) = child(
        "loopwatch_off_runs_main_unwatched",
        &[("LOOPWATCH", "maybe")],
    );
    assert_eq!(code, Some(2), "{text}");
    assert!(text.contains("LOOPWATCH=\"maybe\""), "{text}");
}

#[test]
fn every_variable_sets_its_setting_and_code_wins_over_the_environment() {
    if !in_child() {
        return passed(
            "every_variable_sets_its_setting_and_code_wins_over_the_environment",
            &[
                ("LOOPWATCH_STALL_THRESHOLD", "2s"),
                ("LOOPWATCH_BLOCKING_THRESHOLD", "150ms"),
                ("LOOPWATCH_SLOW_CALL_THRESHOLD", "3s"),
                ("LOOPWATCH_HUNG_TASK_THRESHOLD", "90s"),
                ("LOOPWATCH_CHECK_INTERVAL", "40ms"),
                ("LOOPWATCH_ABORT_AFTER", "off"),
                ("LOOPWATCH_NOTIFY_SYSTEMD", "no"),
                ("LOOPWATCH_SAMPLE_STACKS", "false"),
                ("LOOPWATCH_ADDR", "127.0.0.1:0"),
            ],
        );
    }
    let _serial = common::serial();
    let watchdog = WatchdogBuilder::from_env().unwrap().start().unwrap();
    assert_eq!(watchdog.stall_threshold(), Duration::from_secs(2));
    assert_eq!(watchdog.blocking_threshold(), Duration::from_millis(150));
    assert_eq!(watchdog.slow_call_threshold(), Duration::from_secs(3));
    assert_eq!(watchdog.hung_task_threshold(), Duration::from_secs(90));
    assert_eq!(watchdog.check_interval(), Duration::from_millis(40));
    assert!(!watchdog.is_off());
    let exporter = ExporterBuilder::from_env()
        .unwrap()
        .expect("LOOPWATCH_ADDR asks for an exporter")
        .start(&watchdog)
        .unwrap();
    assert_eq!(exporter.local_addr().ip().to_string(), "127.0.0.1");
    exporter.shutdown();
    watchdog.shutdown();
    // Code after from_env wins.
    let watchdog = WatchdogBuilder::from_env()
        .unwrap()
        .stall_threshold(Duration::from_secs(7))
        .check_interval(Duration::from_millis(100))
        .start()
        .unwrap();
    assert_eq!(watchdog.stall_threshold(), Duration::from_secs(7));
    assert_eq!(watchdog.check_interval(), Duration::from_millis(100));
    assert_eq!(watchdog.slow_call_threshold(), Duration::from_secs(3));
    watchdog.shutdown();
}

#[test]
fn a_value_that_cannot_work_names_its_variable_unless_code_replaced_it() {
    if !in_child() {
        return passed(
            "a_value_that_cannot_work_names_its_variable_unless_code_replaced_it",
            &[("LOOPWATCH_STALL_THRESHOLD", "0s")],
        );
    }
    let _serial = common::serial();
    match WatchdogBuilder::from_env().unwrap().start() {
        Err(Error::InvalidEnv {
            variable, value, ..
        }) => {
            assert_eq!(variable, "LOOPWATCH_STALL_THRESHOLD");
            assert_eq!(value, "0s");
        }
        other => panic!("expected InvalidEnv, got {other:?}"),
    }
    let watchdog = WatchdogBuilder::from_env()
        .unwrap()
        .stall_threshold(Duration::from_secs(1))
        .start()
        .unwrap();
    assert_eq!(watchdog.stall_threshold(), Duration::from_secs(1));
    watchdog.shutdown();
}

#[test]
fn loopwatch_off_gives_a_watchdog_that_watches_nothing_and_no_exporter() {
    if !in_child() {
        return passed(
            "loopwatch_off_gives_a_watchdog_that_watches_nothing_and_no_exporter",
            &[("LOOPWATCH", "OFF"), ("LOOPWATCH_ADDR", "127.0.0.1:0")],
        );
    }
    let _serial = common::serial();
    let watchdog = WatchdogBuilder::from_env().unwrap().start().unwrap();
    assert!(watchdog.is_off());
    assert!(!watchdog.is_running());
    let rt = common::multi_thread(1);
    watchdog.watch_runtime("off", rt.handle()).unwrap();
    let health = watchdog.health();
    assert_eq!(health.status, loopwatch::Status::Healthy);
    assert!(health.runtimes.is_empty());
    assert_eq!(
        health.issues,
        ["loopwatch is off (LOOPWATCH=off): nothing is watched"]
    );
    assert!(ExporterBuilder::from_env().unwrap().is_none());
    // A bad name is still an error.
    assert!(watchdog.watch_runtime("", rt.handle()).is_err());
    // Another watchdog may start: the off one holds nothing.
    let real = Watchdog::builder().start().unwrap();
    real.shutdown();
}

#[test]
fn bad_values_are_errors_naming_the_variable_its_value_and_what_it_accepts() {
    let cases: &[(&str, &str, &str)] = &[
        ("LOOPWATCH_STALL_THRESHOLD", "five", "expected a duration"),
        ("LOOPWATCH_SAMPLE_STACKS", "sometimes", "expected a boolean"),
        ("LOOPWATCH_ABORT_AFTER", "later", "or off"),
        ("LOOPWATCH_ADDR", "9377", "an IP address and a port"),
    ];
    if in_child() {
        let variable = std::env::var("TEST_VARIABLE").unwrap();
        let err = if variable == "LOOPWATCH_ADDR" {
            ExporterBuilder::from_env().map(|_| ()).unwrap_err()
        } else {
            WatchdogBuilder::from_env().map(|_| ()).unwrap_err()
        };
        println!("error: {err}");
        return;
    }
    for (variable, value, expected) in cases {
        let (code, text) = child(
            "bad_values_are_errors_naming_the_variable_its_value_and_what_it_accepts",
            &[(variable, value), ("TEST_VARIABLE", variable)],
        );
        assert_eq!(code, Some(0), "{text}");
        let line =
            format!("error: loopwatch: environment variable {variable}={value:?} is not valid: ");
        assert!(text.contains(&line), "{text}");
        assert!(text.contains(expected), "{text}");
    }
}

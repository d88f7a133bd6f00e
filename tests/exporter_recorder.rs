//! An application that installed its own Prometheus recorder hands its
//! handle to the exporter. (Its own test binary: it installs the global recorder.)

mod common;

use std::time::Duration;

use common::{get, serial};
use loopwatch::{Error, Exporter, Watchdog};

#[test]
fn an_installed_recorder_is_a_clear_error_and_its_handle_can_be_served() {
    let _serial = serial();
    let handle = metrics_exporter_prometheus::PrometheusBuilder::new()
        .install_recorder()
        .expect("the application's own recorder");
    let watchdog = Watchdog::builder()
        .check_interval(Duration::from_millis(25))
        .start()
        .unwrap();
    let rt = common::multi_thread(1);
    watchdog.watch_runtime("own", rt.handle()).unwrap();

    let err = Exporter::builder()
        .bind("127.0.0.1:0".parse().unwrap())
        .start(&watchdog)
        .unwrap_err();
    assert!(matches!(err, Error::RecorderInstalled), "{err:?}");
    assert!(err.to_string().contains("prometheus_handle"), "{err}");

    let exporter = Exporter::builder()
        .bind("127.0.0.1:0".parse().unwrap())
        .prometheus_handle(handle)
        .start(&watchdog)
        .unwrap();
    std::thread::sleep(Duration::from_millis(100));
    let body = get(exporter.local_addr(), "/metrics").body;
    assert!(
        body.contains("loopwatch_stalled_workers{runtime=\"own\"} 0"),
        "{body}"
    );
    assert!(
        body.contains("loopwatch_runtime_workers{runtime=\"own\"} 1"),
        "{body}"
    );
    exporter.shutdown();
    watchdog.shutdown();
}

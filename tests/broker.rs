//! The event log and the broker that holds it: a broker that loses the log
//! is detected and the runbook rebuilds from the journal; a durable broker
//! keeps the log across its own restarts.

mod common;

use std::time::{Duration, Instant};

use vitrina::region::load;
use vitrina::stack::tansu::{LocalBroker, Storage};

/// A broker of the test's own under a temp dir, removed on drop.
struct OwnBroker {
    dir: std::path::PathBuf,
    broker: LocalBroker,
    port: u16,
}

impl OwnBroker {
    fn start(tag: &str, storage: Storage) -> OwnBroker {
        let dir = std::env::temp_dir().join(format!("vitrina-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let broker = LocalBroker::new(&vitrina::config::StackConfig::default(), dir.clone())
            .with_storage(storage);
        let port = broker.start(common::free_port()).unwrap();
        OwnBroker { dir, broker, port }
    }

    fn brokers(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    fn restart(&self) {
        self.broker.stop().unwrap();
        self.broker.start(self.port).unwrap();
    }
}

impl Drop for OwnBroker {
    fn drop(&mut self) {
        let _ = self.broker.stop();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Waits (`within` at most) for a stage to stop by itself; its exit code.
async fn stops_by_itself(child: &mut std::process::Child, log: &str, within: Duration) -> i32 {
    let deadline = Instant::now() + within;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status.code().unwrap_or(-1);
        }
        if Instant::now() > deadline {
            common::kill(child, libc::SIGKILL);
            panic!(
                "{log} did not stop in {within:?}:\n{}",
                common::log_tail(log, 30)
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// A memory broker restarted under a running pipeline: the log is gone
/// while the slot and the showcase are past it. The projector stops with
/// the lost-log error, capture (restarted) refuses to stream a slot whose
/// load it cannot prove, and the runbook's steps (drop the slot, a new
/// initial load, `replay --restart --new-log`) bring back a showcase equal
/// to the journal.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_that_loses_its_log_is_detected_and_the_runbook_rebuilds() {
    let cfg = common::journal_db("t_lost_log").await;
    let db = common::db_name(&cfg);
    load::load(
        &cfg,
        &common::small_region(81, 1, 15, 0.02),
        2,
        false,
        false,
    )
    .await
    .unwrap();
    let show = common::fresh_db("t_lost_log_show").await;
    let show_db = common::db_name(&show);
    let name = format!("lost{}", std::process::id());
    let broker = OwnBroker::start("lost-log", Storage::Memory);
    let brokers = broker.brokers();
    let env: Vec<(&str, &str)> = vec![
        ("VITRINA_KAFKA__BROKERS", &brokers),
        ("VITRINA_SHOWCASE__DATABASE", &show_db),
        ("VITRINA_PROJECTOR__METRICS_LISTEN", "127.0.0.1:0"),
    ];
    let log_c = format!("{name}-capture");
    let log_p = format!("{name}-project");
    let mut capture = common::spawn_vitrina("capture", &db, &name, &log_c, &env);
    let mut projector = common::spawn_vitrina("project", &db, &name, &log_p, &env);
    common::wait_caught_up(&cfg, &name, Duration::from_secs(240)).await;
    common::wait_projected_on(&brokers, &show, &name, Duration::from_secs(240)).await;

    // The broker comes back empty.
    broker.restart();
    let code = stops_by_itself(&mut projector, &log_p, Duration::from_secs(90)).await;
    assert_eq!(code, 1, "{}", common::log_tail(&log_p, 20));
    let said = common::log_tail(&log_p, 40);
    assert!(
        said.contains("the event log holds less than showcase `showcase` has applied")
            && said.contains("The event log was lost"),
        "{said}"
    );
    // The showcase still serves what it had.
    let c = vitrina::pg::connect(&show).await.unwrap();
    let rows: i64 = c
        .query_one("SELECT count(*) FROM showcase.grade", &[])
        .await
        .unwrap()
        .get(0);
    assert!(rows > 0);
    common::kill(&mut capture, libc::SIGTERM);
    let _ = capture.wait();
    let (code, err) = common::run_capture_to_exit_with(&db, &name, &env);
    assert_eq!(code, Some(1), "{err}");
    assert!(
        err.contains("no record of its initial load was found")
            && err.contains("The event log was lost"),
        "{err}"
    );

    // The runbook: journal changes meanwhile, a new initial load, a replay.
    let report = common::spawn_workload(&cfg, 20, 0, 5).await.unwrap();
    assert_eq!(report.failed_transactions, 0);
    let j = vitrina::pg::connect(&cfg).await.unwrap();
    j.execute("SELECT pg_drop_replication_slot($1)", &[&name])
        .await
        .unwrap();
    let mut capture = common::spawn_vitrina("capture", &db, &name, &log_c, &env);
    common::wait_caught_up(&cfg, &name, Duration::from_secs(240)).await;
    let out = common::run_vitrina(&db, &name, &["replay", "--restart", "--new-log"], &env);
    assert!(
        out.status.success(),
        "replay: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut projector = common::spawn_vitrina("project", &db, &name, &log_p, &env);
    common::wait_projected_on(&brokers, &show, &name, Duration::from_secs(240)).await;
    common::assert_showcase_converges(
        "showcase vs journal after the rebuild",
        &show,
        &common::under_consent(&cfg, common::journal_view(&cfg, true).await).await,
        Duration::from_secs(60),
    )
    .await;
    assert!(
        projector.try_wait().unwrap().is_none(),
        "the projector runs"
    );
    common::kill(&mut projector, libc::SIGTERM);
    common::kill(&mut capture, libc::SIGTERM);
}

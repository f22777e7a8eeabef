//! Faults past their timeouts, each ending with the showcase compared to
//! the journal row by row: the journal restarted (fast) under a workload
//! with capture attached, and the broker frozen (SIGSTOP) for longer than
//! the journal's `wal_sender_timeout`. Each test runs its own journal
//! cluster (and broker), so it can break them without touching the others.
//! Each prints the highest freshness age seen while its fault ran.
//!
//! `VITRINA_SLOW_FAULTS=1` runs the broker freeze for 150 s against the
//! server's default `wal_sender_timeout` (60 s) instead of 15 s against 5 s.

mod common;

use std::time::{Duration, Instant};

use vitrina::region::load;

/// A journal cluster of the test's own, as `vitrina` sees an external one.
struct Journal {
    cluster: common::OwnCluster,
    cfg: tokio_postgres::Config,
}

impl Journal {
    async fn start(tag: &str, settings: &str, seed: u64) -> Journal {
        let cluster = common::OwnCluster::start(tag, settings);
        let admin = vitrina::pg::connect(&cluster.config()).await.unwrap();
        admin
            .batch_execute("CREATE DATABASE journal")
            .await
            .unwrap();
        let mut cfg = cluster.config();
        cfg.dbname("journal");
        let mut c = vitrina::pg::connect(&cfg).await.unwrap();
        vitrina::journal::migrate(&mut c).await.unwrap();
        load::load(
            &cfg,
            &common::small_region(seed, 1, 30, 0.02),
            2,
            false,
            false,
        )
        .await
        .unwrap();
        Journal { cluster, cfg }
    }

    fn env(&self) -> Vec<(&'static str, String)> {
        let mut e = self.cluster.as_journal();
        e.push(("VITRINA_JOURNAL__DATABASE", "journal".into()));
        e
    }
}

fn spawn(command: &str, name: &str, env: &[(&'static str, String)]) -> std::process::Child {
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    common::spawn_vitrina(command, "journal", name, &format!("{name}-{command}"), &env)
}

fn alive(child: &mut std::process::Child, what: &str, name: &str) {
    assert!(
        child.try_wait().unwrap().is_none(),
        "{what} exited: {}",
        common::log_tail(&format!("{name}-{what}"), 30)
    );
}

async fn compare(
    brokers: &str,
    journal: &tokio_postgres::Config,
    showcase: &tokio_postgres::Config,
    name: &str,
) {
    common::assert_projected_equals_journal(
        brokers,
        journal,
        showcase,
        name,
        "showcase vs journal",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn journal_fast_restart_under_a_workload_with_capture_attached() {
    let j = Journal::start("restart", "", 71).await;
    let show = common::fresh_db("t_fault_restart").await;
    let name = format!("restart{}", std::process::id());
    let mut env = j.env();
    env.push(("VITRINA_SHOWCASE__DATABASE", common::db_name(&show)));
    env.push(("VITRINA_PROJECTOR__METRICS_LISTEN", "127.0.0.1:0".into()));
    let mut capture = spawn("capture", &name, &env);
    let mut projector = spawn("project", &name, &env);
    common::wait_caught_up(&j.cfg, &name, Duration::from_secs(240)).await;

    let load_task = common::spawn_workload(&j.cfg, 6, 0, 5);
    let watch = common::FreshnessWatch::start(&show);
    tokio::time::sleep(Duration::from_secs(3)).await;
    // The DBA's minor upgrade: a fast restart while capture streams and the
    // workload writes. pg_ctl fails if the server does not stop in 20 s.
    let t0 = Instant::now();
    j.cluster
        .pg
        .stop_fast(20)
        .unwrap_or_else(|e| panic!("the journal did not shut down with capture attached: {e}"));
    let stopped = t0.elapsed();
    j.cluster.pg.start(j.cluster.port).unwrap();
    eprintln!(
        "journal fast restart: stopped in {:.2} s, up again in {:.2} s",
        stopped.as_secs_f64(),
        t0.elapsed().as_secs_f64()
    );
    // The workload's sessions died with the server; write some more.
    let _ = load_task.await;
    let report = common::spawn_workload(&j.cfg, 5, 0, 6).await.unwrap();
    assert_eq!(report.failed_transactions, 0);
    common::wait_caught_up(&j.cfg, &name, Duration::from_secs(240)).await;
    alive(&mut capture, "capture", &name);
    alive(&mut projector, "project", &name);
    compare(common::stack().brokers(), &j.cfg, &show, &name).await;
    eprintln!(
        "journal fast restart: highest freshness during the fault {:.1} s",
        watch.highest().await.expect("freshness was known")
    );
    common::kill(&mut projector, libc::SIGTERM);
    common::kill(&mut capture, libc::SIGTERM);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broker_frozen_past_the_wal_sender_timeout() {
    // Three wal_sender_timeouts of 5 s; slow: 150 s against the default 60 s.
    let (settings, frozen_s) = if common::slow_faults() {
        ("", 150)
    } else {
        ("wal_sender_timeout = '5s'\n", 15)
    };
    let j = Journal::start("frozen", settings, 71).await;
    // A broker of the test's own, to freeze.
    let dir = std::env::temp_dir().join(format!("vitrina-frozen-broker-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let broker = vitrina::stack::broker::LocalBroker::new(
        &vitrina::config::StackConfig::default(),
        dir.clone(),
    )
    .with_storage(vitrina::stack::broker::Storage::Memory);
    let port = broker.start(common::free_port()).unwrap();
    let pid = broker.running_pid().expect("the broker runs");
    let show = common::fresh_db("t_fault_frozen").await;
    let name = format!("frozen{}", std::process::id());
    let mut env = j.env();
    env.push(("VITRINA_KAFKA__BROKERS", format!("127.0.0.1:{port}")));
    env.push(("VITRINA_KAFKA__REPLICATION_FACTOR", "1".into()));
    env.push(("VITRINA_KAFKA__MIN_INSYNC_REPLICAS", "1".into()));
    // A small in-flight window: the frozen broker holds capture back within
    // a second, and it must stay connected past wal_sender_timeout.
    env.push(("VITRINA_CAPTURE__MAX_IN_FLIGHT", "100".into()));
    env.push(("VITRINA_SHOWCASE__DATABASE", common::db_name(&show)));
    env.push(("VITRINA_PROJECTOR__METRICS_LISTEN", "127.0.0.1:0".into()));
    let mut capture = spawn("capture", &name, &env);
    let mut projector = spawn("project", &name, &env);
    common::wait_caught_up(&j.cfg, &name, Duration::from_secs(240)).await;

    let load_task = common::spawn_workload(&j.cfg, frozen_s + 5, 0, 7);
    let watch = common::FreshnessWatch::start(&show);
    tokio::time::sleep(Duration::from_secs(3)).await;
    // SAFETY: signalling the broker process this test started.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGSTOP) }, 0);
    tokio::time::sleep(Duration::from_secs(frozen_s)).await;
    assert_eq!(unsafe { libc::kill(pid, libc::SIGCONT) }, 0);
    let back = Instant::now();
    let report = load_task.await.unwrap();
    assert_eq!(report.failed_transactions, 0, "the journal never noticed");
    alive(&mut capture, "capture", &name);
    alive(&mut projector, "project", &name);
    common::wait_caught_up(&j.cfg, &name, Duration::from_secs(240)).await;
    eprintln!(
        "broker frozen {frozen_s} s: capture caught up {:.1} s after its return",
        back.elapsed().as_secs_f64()
    );
    // Freshness back to normal within 60 s of the broker's return.
    let c = vitrina::pg::connect(&show).await.unwrap();
    loop {
        let fresh: Option<f64> = c
            .query_one(
                "SELECT extract(epoch FROM now() - fresh_as_of)::float8 FROM showcase.status",
                &[],
            )
            .await
            .unwrap()
            .get(0);
        if fresh.is_some_and(|f| f < 10.0) {
            eprintln!(
                "freshness {:.1} s, {:.1} s after the broker's return; highest during the fault {:.1} s",
                fresh.unwrap(),
                back.elapsed().as_secs_f64(),
                watch.highest().await.expect("freshness was known")
            );
            break;
        }
        assert!(
            back.elapsed() < Duration::from_secs(60),
            "freshness {fresh:?} s a minute after the broker's return"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    // Held back by the frozen broker, capture kept reporting to the server:
    // its replication connection outlived three wal_sender_timeouts.
    let log = common::log_tail(&format!("{name}-capture"), 10_000);
    assert!(
        !log.contains("transient failure"),
        "capture lost its replication connection:\n{log}"
    );
    compare(&format!("127.0.0.1:{port}"), &j.cfg, &show, &name).await;
    common::kill(&mut projector, libc::SIGTERM);
    common::kill(&mut capture, libc::SIGTERM);
    let _ = broker.stop();
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn showcase_database_restarted_under_a_workload() {
    let cfg = common::journal_db("t_fault_showcase").await;
    let db = common::db_name(&cfg);
    load::load(
        &cfg,
        &common::small_region(71, 1, 30, 0.02),
        2,
        false,
        false,
    )
    .await
    .unwrap();
    // The showcase on a server of the test's own, to restart.
    let cluster = common::OwnCluster::start("showrestart", "");
    let admin = vitrina::pg::connect(&cluster.config()).await.unwrap();
    admin
        .batch_execute("CREATE DATABASE showcase")
        .await
        .unwrap();
    drop(admin);
    let mut show = cluster.config();
    show.dbname("showcase");
    let name = format!("showrestart{}", std::process::id());
    let env: Vec<(&'static str, String)> = vec![
        ("VITRINA_SHOWCASE__HOST", "127.0.0.1".into()),
        ("VITRINA_SHOWCASE__PORT", cluster.port.to_string()),
        (
            "VITRINA_SHOWCASE__USER",
            vitrina::stack::postgres::SUPERUSER.into(),
        ),
        ("VITRINA_SHOWCASE__DATABASE", "showcase".into()),
        ("VITRINA_PROJECTOR__METRICS_LISTEN", "127.0.0.1:0".into()),
    ];
    let env_ref: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let mut capture = common::spawn_capture(&db, &name);
    let mut projector =
        common::spawn_vitrina("project", &db, &name, &format!("{name}-project"), &env_ref);
    common::wait_caught_up(&cfg, &name, Duration::from_secs(240)).await;
    let load_task = common::spawn_workload(&cfg, 8, 0, 9);
    let watch = common::FreshnessWatch::start(&show);
    tokio::time::sleep(Duration::from_secs(3)).await;
    cluster.pg.stop_fast(20).unwrap();
    tokio::time::sleep(Duration::from_secs(2)).await;
    cluster.pg.start(cluster.port).unwrap();
    let restarted = Instant::now();
    assert_eq!(load_task.await.unwrap().failed_transactions, 0);
    common::wait_caught_up(&cfg, &name, Duration::from_secs(240)).await;
    alive(&mut projector, "project", &name);
    compare(common::stack().brokers(), &cfg, &show, &name).await;
    eprintln!(
        "showcase restarted: the projector caught up {:.1} s after the server was back; highest freshness during the fault {:.1} s",
        restarted.elapsed().as_secs_f64(),
        watch.highest().await.expect("freshness was known")
    );
    let log = common::log_tail(&format!("{name}-project"), 10_000);
    assert!(
        log.contains("transient failure; restarting"),
        "the projector restarted itself:\n{log}"
    );
    common::kill(&mut projector, libc::SIGTERM);
    common::kill(&mut capture, libc::SIGTERM);
}

/// The partitions `log`'s projector said it holds, at its latest
/// assignment (None: never assigned).
fn assigned_partitions(log: &str) -> Option<usize> {
    last_assignment_field(log, "partitions=")
}

/// A number of the last "assigned" line of a projector's log (`field` with
/// its `=`).
fn last_assignment_field(log: &str, field: &str) -> Option<usize> {
    // The log is colored: drop the escape sequences first.
    let text = common::log_tail(log, 100_000);
    let mut plain = String::with_capacity(text.len());
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c == '\x1b' {
            for c in chars.by_ref() {
                if c == 'm' {
                    break;
                }
            }
        } else {
            plain.push(c);
        }
    }
    plain
        .lines()
        .rfind(|l| l.contains("assigned; positioned at the showcase's committed offsets"))
        .and_then(|l| l.split(field).nth(1))
        .and_then(|n| n.split(|c: char| !c.is_ascii_digit()).next()?.parse().ok())
}

async fn wait_assigned(
    log: &str,
    broker_log: &std::path::Path,
    what: impl Fn(usize) -> bool,
    timeout: Duration,
    why: &str,
) {
    let deadline = Instant::now() + timeout;
    while !assigned_partitions(log).is_some_and(&what) {
        assert!(
            Instant::now() < deadline,
            "{why} within {timeout:?}; latest assignment {:?}:\n{}\nthe broker's log:\n{}",
            assigned_partitions(log),
            common::log_tail(log, 30),
            std::fs::read_to_string(broker_log)
                .map(|t| t
                    .lines()
                    .rev()
                    .take(60)
                    .collect::<Vec<_>>()
                    .into_iter()
                    .rev()
                    .collect::<Vec<_>>()
                    .join("\n"))
                .unwrap_or_else(|e| format!("({e})"))
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

/// Several projectors as one consumer group (`projector.assignment =
/// group`) share the partitions; one SIGKILLed under a workload, the other
/// takes them all after the session timeout; the killed one back, they
/// share again; the first stopped cleanly, the second takes them all. The
/// showcase equals the journal at the end.
///
/// This test found a race of the consent-gated detail between members: a
/// detail recomputation wrote onto a row another member had just turned
/// into an excused absence (its reason lost). Apply transactions doing
/// medical work are now serialized (which also closes the race of a
/// consent and a mark applied concurrently, each missing the other) and
/// the recomputation rechecks the row (`tests/showcase.rs` has both).
///
/// Rebalances: a revocation waits for the member's apply in flight; an
/// assignment positions at the showcase's committed offsets (the survivor
/// says how many partitions another member had advanced).
///
/// It was ignored while the stack ran tansu 0.6.0, whose group coordinator
/// wedged under it (a member expired by another's Heartbeat dropped while
/// the group stayed formed; a leader that left while the group formed kept
/// leading). nisshi 0.8.1's coordinator passes it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn projector_group_rebalances_when_a_member_dies_or_leaves() {
    let cfg = common::journal_db("t_fault_group").await;
    let db = common::db_name(&cfg);
    load::load(
        &cfg,
        &common::small_region(73, 1, 20, 0.02),
        2,
        false,
        false,
    )
    .await
    .unwrap();
    let show = common::fresh_db("t_fault_group_show").await;
    let show_db = common::db_name(&show);
    let name = format!("group{}", std::process::id());
    // A broker of the test's own: its group coordinator serves this group only.
    let dir = std::env::temp_dir().join(format!("vitrina-group-broker-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let broker = vitrina::stack::broker::LocalBroker::new(
        &vitrina::config::StackConfig::default(),
        dir.clone(),
    )
    .with_storage(vitrina::stack::broker::Storage::Memory);
    let port = broker.start(common::free_port()).unwrap();
    let broker_log = broker.log_path();
    let brokers = format!("127.0.0.1:{port}");
    let env: Vec<(&str, &str)> = vec![
        ("VITRINA_KAFKA__BROKERS", &brokers),
        ("VITRINA_KAFKA__REPLICATION_FACTOR", "1"),
        ("VITRINA_KAFKA__MIN_INSYNC_REPLICAS", "1"),
        ("VITRINA_SHOWCASE__DATABASE", &show_db),
        ("VITRINA_PROJECTOR__METRICS_LISTEN", "127.0.0.1:0"),
        ("VITRINA_PROJECTOR__ASSIGNMENT", "group"),
    ];
    let member = |n: u32| -> (std::process::Child, String) {
        let log = format!("{name}-project-{n}");
        (
            common::spawn_vitrina("project", &db, &name, &log, &env),
            log,
        )
    };
    let mut capture = common::spawn_vitrina("capture", &db, &name, &name, &env);
    common::wait_caught_up(&cfg, &name, Duration::from_secs(240)).await;
    // Members join one after the other (as a rolling deploy starts them).
    let (mut a, log_a) = member(1);
    wait_assigned(
        &log_a,
        &broker_log,
        |n| n > 0,
        Duration::from_secs(90),
        "the first member is assigned",
    )
    .await;
    // Every topic exists now (the projector creates the ones capture did not).
    let total = vitrina::kafka::end_offsets(
        &vitrina::connections::KafkaEndpoint::new(&brokers),
        &vitrina::kafka::event_topics(&name)
            .into_iter()
            .chain([vitrina::kafka::detail_topic(&name)])
            .collect::<Vec<_>>(),
    )
    .await
    .unwrap()
    .len();
    wait_assigned(
        &log_a,
        &broker_log,
        |n| n == total,
        Duration::from_secs(90),
        "the only member holds every partition",
    )
    .await;
    let (mut b, log_b) = member(2);
    let shared = |n: usize| n > 0 && n < total;
    wait_assigned(
        &log_b,
        &broker_log,
        shared,
        Duration::from_secs(90),
        "the second member shares",
    )
    .await;
    let deadline = Instant::now() + Duration::from_secs(90);
    while assigned_partitions(&log_a).unwrap_or(0) + assigned_partitions(&log_b).unwrap_or(0)
        != total
    {
        assert!(
            Instant::now() < deadline,
            "the members do not share {total} partitions: {:?} + {:?}",
            assigned_partitions(&log_a),
            assigned_partitions(&log_b)
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }

    let load_task = common::spawn_workload(&cfg, 25, 0, 11);
    let watch = common::FreshnessWatch::start(&show);
    tokio::time::sleep(Duration::from_secs(4)).await;
    common::kill(&mut b, libc::SIGKILL);
    let died = Instant::now();
    wait_assigned(
        &log_a,
        &broker_log,
        |n| n == total,
        Duration::from_secs(90),
        "the survivor takes every partition",
    )
    .await;
    eprintln!(
        "group: a member SIGKILLed, the other held all {total} partitions {:.1} s later",
        died.elapsed().as_secs_f64()
    );
    // The survivor positioned the partitions it held before the second
    // member joined at what that member committed since, not where the
    // survivor itself had left them.
    let advanced = last_assignment_field(&log_a, "advanced_by_others=");
    assert!(
        advanced.is_some_and(|n| n > 0),
        "the survivor read the showcase's offsets on assignment: {advanced:?}\n{}",
        common::log_tail(&log_a, 20)
    );
    let (mut b, log_b) = member(3);
    wait_assigned(
        &log_b,
        &broker_log,
        shared,
        Duration::from_secs(90),
        "a member back shares again",
    )
    .await;
    assert_eq!(load_task.await.unwrap().failed_transactions, 0);
    common::kill(&mut a, libc::SIGTERM);
    let left = Instant::now();
    wait_assigned(
        &log_b,
        &broker_log,
        |n| n == total,
        Duration::from_secs(90),
        "the remaining member takes every partition",
    )
    .await;
    eprintln!(
        "group: a member stopped, the other held all {total} partitions {:.1} s later",
        left.elapsed().as_secs_f64()
    );
    let report = common::spawn_workload(&cfg, 3, 0, 12).await.unwrap();
    assert_eq!(report.failed_transactions, 0);
    common::wait_caught_up(&cfg, &name, Duration::from_secs(240)).await;
    compare(&brokers, &cfg, &show, &name).await;
    eprintln!(
        "group: highest freshness during the rebalances {:.1} s",
        watch.highest().await.expect("freshness was known")
    );
    alive(&mut b, "project-3", &name);
    common::kill(&mut b, libc::SIGTERM);
    common::kill(&mut capture, libc::SIGTERM);
    let _ = broker.stop();
    let _ = std::fs::remove_dir_all(&dir);
}

//! The event log and the broker that holds it: a broker that loses the log
//! is detected and the runbook rebuilds from the journal; a durable broker
//! keeps the log across its own restarts.

mod common;

use std::process::Child;
use std::time::{Duration, Instant};

use vitrina::region::load;
use vitrina::stack::broker::{LocalBroker, Storage};

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
        if std::thread::panicking() && std::env::var_os("KEEP_FAILED_BROKER").is_some() {
            eprintln!("broker left running for a look: {}", self.dir.display());
            return;
        }
        let _ = self.broker.stop();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A loaded journal, an empty showcase and a broker of the test's own, with
/// capture and the projector running on them (slot, publication and topic
/// prefix `name`; logs `<name>-capture`, `<name>-project`).
struct Pipeline {
    cfg: tokio_postgres::Config,
    db: String,
    show: tokio_postgres::Config,
    show_db: String,
    name: String,
    broker: OwnBroker,
    brokers: String,
    log_c: String,
    log_p: String,
}

impl Pipeline {
    async fn start(tag: &str, seed: u64, storage: Storage) -> (Pipeline, Child, Child) {
        let cfg = common::journal_db(&format!("t_{tag}")).await;
        let db = common::db_name(&cfg);
        load::load(
            &cfg,
            &common::small_region(seed, 1, 15, 0.02),
            2,
            false,
            false,
        )
        .await
        .unwrap();
        let show = common::fresh_db(&format!("t_{tag}_show")).await;
        let show_db = common::db_name(&show);
        let name = format!("{}{}", tag.replace('_', ""), std::process::id());
        let broker = OwnBroker::start(&tag.replace('_', "-"), storage);
        let brokers = broker.brokers();
        let p = Pipeline {
            log_c: format!("{name}-capture"),
            log_p: format!("{name}-project"),
            cfg,
            db,
            show,
            show_db,
            name,
            broker,
            brokers,
        };
        let capture = p.spawn("capture");
        let projector = p.spawn("project");
        (p, capture, projector)
    }

    fn env(&self) -> Vec<(&str, &str)> {
        vec![
            ("VITRINA_KAFKA__BROKERS", &self.brokers),
            // One broker: one replica (a configured cluster defaults to 3 / 2).
            ("VITRINA_KAFKA__REPLICATION_FACTOR", "1"),
            ("VITRINA_KAFKA__MIN_INSYNC_REPLICAS", "1"),
            ("VITRINA_SHOWCASE__DATABASE", &self.show_db),
            ("VITRINA_PROJECTOR__METRICS_LISTEN", "127.0.0.1:0"),
        ]
    }

    /// `vitrina capture` or `vitrina project`, logging to its log.
    fn spawn(&self, command: &str) -> Child {
        let log = if command == "capture" {
            &self.log_c
        } else {
            &self.log_p
        };
        common::spawn_vitrina(command, &self.db, &self.name, log, &self.env())
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
    let (p, mut capture, mut projector) = Pipeline::start("lost_log", 81, Storage::Memory).await;
    let (cfg, db, show, name) = (p.cfg.clone(), p.db.clone(), p.show.clone(), p.name.clone());
    let (brokers, log_c, log_p, broker) = (
        p.brokers.clone(),
        p.log_c.clone(),
        p.log_p.clone(),
        &p.broker,
    );
    let env = p.env();
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
    common::assert_projected_equals_journal(
        &brokers,
        &cfg,
        &show,
        &name,
        "showcase vs journal after the rebuild",
    )
    .await;
    assert!(
        projector.try_wait().unwrap().is_none(),
        "the projector runs"
    );
    common::kill(&mut projector, libc::SIGTERM);
    common::kill(&mut capture, libc::SIGTERM);
}

/// The postgres-backed broker (nisshi) SIGKILLed and started again, twice,
/// under a workload: capture and the projector ride it out, every event is
/// still on the topics (they fold to the journal), no partition ends before
/// what the projector applied, and the showcase equals the journal row by
/// row.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_postgres_log_survives_broker_kills_under_a_workload() {
    kills_under_a_workload("pg_kill", 83, Storage::Postgres, LogCluster::Runs).await;
}

/// The log's PostgreSQL cluster restarts (`pg_ctl stop -m fast`, then a
/// start on the same port) under the workload while the broker runs on, as
/// it would for a minor upgrade or a settings change; the broker is still
/// SIGKILLed once before that. Nothing acknowledged may be lost and the
/// pipeline must carry on by itself.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_postgres_log_survives_a_restart_of_its_cluster_under_a_workload() {
    kills_under_a_workload("pg_restart", 83, Storage::Postgres, LogCluster::Restarts).await;
}

/// As above, but the second time the log's own PostgreSQL cluster crashes
/// too (`pg_ctl stop -m immediate`, then the broker's SIGKILL).
///
/// Once ignored: one run in six stopped with the lost-log error. The cause
/// was nisshi's end-offset answer lagging records already read (decision
/// 0005); the projector now confirms a short answer against the log.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_postgres_log_survives_a_crash_of_its_cluster_under_a_workload() {
    kills_under_a_workload("pg_crash", 83, Storage::Postgres, LogCluster::Crashes).await;
}

/// What happens to the log's own PostgreSQL cluster at the second fault.
#[derive(Clone, Copy, PartialEq)]
enum LogCluster {
    /// Nothing: the broker alone is SIGKILLed.
    Runs,
    /// It crashes (`pg_ctl stop -m immediate`: no shutdown checkpoint,
    /// recovery from its WAL at the next start), then the broker's SIGKILL.
    Crashes,
    /// It restarts cleanly (`-m fast`) while the broker runs on.
    Restarts,
}

/// Two faults 5 s and 8 s into a 30 s workload: a SIGKILL of the broker,
/// then another one, or what `second` does to the log's cluster.
async fn kills_under_a_workload(tag: &str, seed: u64, storage: Storage, second: LogCluster) {
    let (p, mut capture, mut projector) = Pipeline::start(tag, seed, storage).await;
    let (cfg, show, name) = (p.cfg.clone(), p.show.clone(), p.name.clone());
    let (brokers, broker) = (p.brokers.clone(), &p.broker);
    common::wait_caught_up(&cfg, &name, Duration::from_secs(240)).await;
    let before = common::read_all_on(&brokers, &name).len();

    let load_task = common::spawn_workload(&cfg, 30, 0, 9);
    for (round, pause) in [5, 8].into_iter().enumerate() {
        tokio::time::sleep(Duration::from_secs(pause)).await;
        let fault = if round == 1 { second } else { LogCluster::Runs };
        if fault == LogCluster::Restarts {
            let pg = broker.broker.log_cluster().unwrap();
            let port = pg.running_port().expect("the log's cluster runs");
            let stopped = Instant::now();
            pg.stop_fast(30).unwrap();
            tokio::time::sleep(Duration::from_secs(2)).await;
            pg.start(port).unwrap();
            eprintln!(
                "the log's cluster: stopped, serving again {:.1} s later",
                stopped.elapsed().as_secs_f64()
            );
            continue;
        }
        let pid = broker.broker.running_pid().expect("the broker runs");
        if fault == LogCluster::Crashes {
            broker
                .broker
                .log_cluster()
                .unwrap()
                .stop_immediate()
                .unwrap();
        }
        // SAFETY: kill(2) on the broker we started.
        unsafe {
            libc::kill(pid, libc::SIGKILL);
        }
        let died = Instant::now();
        while vitrina::stack::process::pid_alive(pid) {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
        broker.broker.start(broker.port).unwrap();
        eprintln!(
            "broker{}: killed, serving again {:.1} s later",
            if fault == LogCluster::Crashes {
                " and its log's cluster"
            } else {
                ""
            },
            died.elapsed().as_secs_f64()
        );
    }
    let report = load_task.await.unwrap();
    assert_eq!(report.failed_transactions, 0);
    common::wait_caught_up(&cfg, &name, Duration::from_secs(240)).await;
    assert!(capture.try_wait().unwrap().is_none(), "capture runs");
    assert!(
        projector.try_wait().unwrap().is_none(),
        "the projector runs"
    );

    let messages = common::read_all_on(&brokers, &name);
    assert!(
        messages.len() > before,
        "the workload's events are on the topics"
    );
    let (got, _) = common::fold(&messages, &name);
    common::assert_same_state(
        "topics vs journal",
        &got,
        &common::journal_state(&cfg).await,
    );
    common::assert_projected_equals_journal(&brokers, &cfg, &show, &name, "showcase vs journal")
        .await;
    common::kill(&mut projector, libc::SIGTERM);
    common::kill(&mut capture, libc::SIGTERM);
}

/// `down` then `up` of a local stack with postgres storage keeps every
/// event: the same messages, offset for offset; `status` says where the log
/// lives.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn down_and_up_keep_every_event() {
    let dir = std::env::temp_dir().join(format!("vitrina-downup-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let cfg = vitrina::config::Config {
        state_dir: dir.clone(),
        stack: vitrina::config::StackConfig {
            kafka_storage: Storage::Postgres,
            ..Default::default()
        },
        ..Default::default()
    };
    let stack = vitrina::stack::Stack::new(&cfg).unwrap();
    let up = {
        let s = vitrina::stack::Stack::new(&cfg).unwrap();
        tokio::task::spawn_blocking(move || s.up())
            .await
            .unwrap()
            .unwrap()
    };
    let kafka = up.iter().find(|s| s.service == "kafka").unwrap();
    assert!(
        kafka
            .data
            .starts_with("postgres database eventlog (127.0.0.1:"),
        "{}",
        kafka.data
    );
    let brokers = stack.local_services().kafka.expect("a local broker");
    let topic = "downup.grade.v1".to_string();
    let ep = vitrina::connections::KafkaEndpoint::new(&brokers);
    vitrina::kafka::ensure_topics(&ep, std::slice::from_ref(&topic), 3)
        .await
        .unwrap();
    let p = vitrina::kafka::producer(&ep, 5, "lz4", 1_000_000).unwrap();
    let mut acks = Vec::new();
    for i in 0..20_000 {
        let (k, v) = (format!("k{i}"), format!("v{i}"));
        acks.push(
            p.send_result(
                rdkafka::producer::FutureRecord::to(&topic)
                    .key(&k)
                    .payload(&v),
            )
            .unwrap(),
        );
    }
    for a in acks {
        a.await.unwrap().unwrap();
    }
    drop(p);
    let read = |brokers: String| {
        let mut m = common::read_all_on(&brokers, "downup");
        m.sort();
        m
    };
    let before = tokio::task::spawn_blocking({
        let b = brokers.clone();
        move || read(b)
    })
    .await
    .unwrap();
    assert_eq!(before.len(), 20_000);
    let s = vitrina::stack::Stack::new(&cfg).unwrap();
    let stopped = tokio::task::spawn_blocking(move || s.down())
        .await
        .unwrap()
        .unwrap();
    assert!(stopped.contains(&"kafka"), "{stopped:?}");
    let s = vitrina::stack::Stack::new(&cfg).unwrap();
    tokio::task::spawn_blocking(move || s.up())
        .await
        .unwrap()
        .unwrap();
    let brokers = stack.local_services().kafka.expect("a local broker");
    let after = tokio::task::spawn_blocking(move || read(brokers))
        .await
        .unwrap();
    assert_eq!(after.len(), before.len(), "events after down and up");
    assert!(after == before, "the same messages");
    let s = vitrina::stack::Stack::new(&cfg).unwrap();
    tokio::task::spawn_blocking(move || s.down())
        .await
        .unwrap()
        .unwrap();
    let _ = std::fs::remove_dir_all(&dir);
}

/// A broker started with one storage is the one every other command finds,
/// whatever storage their configuration names (the tests' subprocesses run
/// with the default, postgres, against the shared memory broker); `up` with
/// the other storage refuses and says how to switch.
#[test]
fn a_broker_of_another_storage_setting_is_found_and_not_doubled() {
    let b = OwnBroker::start("other-storage", Storage::Memory);
    let other = LocalBroker::new(&vitrina::config::StackConfig::default(), b.dir.clone())
        .with_storage(Storage::Postgres);
    assert_eq!(other.running_pid(), b.broker.running_pid());
    assert!(
        other.log_path().ends_with("nisshi-memory.log"),
        "{:?}",
        other.log_path()
    );
    assert!(
        other.describe_storage().contains("nisshi-memory runs"),
        "{}",
        other.describe_storage()
    );
    let err = other.start(b.port).unwrap_err().to_string();
    assert!(
        err.contains("still runs") && err.contains("vitrina down"),
        "{err}"
    );
}

/// Grows `topics` to `partitions` the way the broker's own storage keeps
/// them (nisshi 0.8.1 has no CreatePartitions; Apache Kafka's operators run
/// `kafka-topics.sh --alter --partitions`, which does the same).
async fn grow(broker: &OwnBroker, topics: &[String], partitions: i32) {
    let port = broker
        .broker
        .log_cluster()
        .unwrap()
        .running_port()
        .expect("the log's cluster runs");
    let mut pg = tokio_postgres::Config::new();
    pg.host("127.0.0.1")
        .port(port)
        .user(vitrina::stack::postgres::SUPERUSER)
        .dbname(vitrina::stack::broker::LOG_DATABASE);
    let (c, conn) = pg.connect(tokio_postgres::NoTls).await.unwrap();
    tokio::spawn(conn);
    for t in topics {
        let grown = c
            .execute(
                "WITH t AS (UPDATE topic SET partitions = $2 WHERE name = $1 RETURNING id, partitions),
                      p AS (INSERT INTO topition (topic, partition)
                            SELECT t.id, g FROM t, generate_series(
                                (SELECT count(*) FROM topition WHERE topic = (SELECT id FROM t))::int,
                                $2 - 1) g
                            RETURNING id)
                 INSERT INTO watermark (topition, low, high) SELECT id, 0, 0 FROM p",
                &[t, &partitions],
            )
            .await
            .unwrap();
        assert!(grown > 0, "{t} grew");
    }
}

/// Partitions an operator adds to the live event topics: capture spreads
/// keys over them and broadcasts watermarks to them within its 30 s re-read,
/// the projector reads them, and the showcase still equals the journal. The
/// restricted topic may not grow (a key's tombstone must share its detail's
/// partition): capture stops, saying so.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn partitions_added_to_live_topics_are_published_to_and_read() {
    use vitrina::events::codec::Registry;
    use vitrina::events::{Message, Op};
    let (p, mut capture, mut projector) = Pipeline::start("grow", 61, Storage::Postgres).await;
    let (cfg, show, name, brokers) = (
        p.cfg.clone(),
        p.show.clone(),
        p.name.clone(),
        p.brokers.clone(),
    );
    common::wait_caught_up(&cfg, &name, Duration::from_secs(240)).await;
    let events = vitrina::kafka::event_topics(&name);
    grow(&p.broker, &events, 5).await;
    // Capture re-reads the counts every 30 s.
    tokio::time::sleep(Duration::from_secs(35)).await;
    let report = common::spawn_workload(&cfg, 15, 0, 12).await.unwrap();
    assert_eq!(report.failed_transactions, 0);
    common::wait_caught_up(&cfg, &name, Duration::from_secs(240)).await;

    let messages = common::read_all_on(&brokers, &name);
    let reg = Registry::new();
    let (mut keyed, mut marks) = (0, 0);
    for (topic, partition, _, payload) in &messages {
        if *partition < 3 || !events.contains(topic) {
            continue;
        }
        match reg.decode_message(payload) {
            Ok(Message::Event(e)) if e.op != Op::Truncate => keyed += 1,
            Ok(Message::Watermark(_)) => marks += 1,
            _ => {}
        }
    }
    eprintln!("on the added partitions: {keyed} keyed events, {marks} watermarks");
    assert!(keyed > 50, "keys spread over the added partitions: {keyed}");
    assert!(marks > 0, "watermarks reach the added partitions");
    common::assert_projected_equals_journal(&brokers, &cfg, &show, &name, "showcase vs journal")
        .await;
    assert!(
        projector.try_wait().unwrap().is_none(),
        "the projector runs"
    );

    grow(&p.broker, &[vitrina::kafka::detail_topic(&name)], 4).await;
    let load = common::spawn_workload(&cfg, 40, 0, 13);
    let code = stops_by_itself(&mut capture, &p.log_c, Duration::from_secs(90)).await;
    let log = common::log_tail(&p.log_c, 40);
    assert_eq!(code, 1, "{log}");
    assert!(
        log.contains("has 4 partitions; its records were published over 3"),
        "{log}"
    );
    let _ = load.await;
    common::kill(&mut projector, libc::SIGTERM);
}

/// A TCP proxy in front of a broker that counts the CreateTopics requests
/// (API key 19) clients send through it: what a principal without CREATE
/// would be refused on a cluster with ACLs (nisshi 0.8.1 stores ACLs but
/// enforces none, so the wire is watched instead).
struct WatchingProxy {
    port: u16,
    creates: std::sync::Arc<std::sync::atomic::AtomicUsize>,
}

impl WatchingProxy {
    /// Listens on a free port, forwarding to `127.0.0.1:upstream` (which
    /// need not run yet).
    async fn start(upstream: u16) -> WatchingProxy {
        use std::sync::atomic::Ordering;
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let creates = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let seen = creates.clone();
        tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let Ok(broker) = tokio::net::TcpStream::connect(("127.0.0.1", upstream)).await
                else {
                    continue;
                };
                let (mut cr, mut cw) = client.into_split();
                let (mut br, mut bw) = broker.into_split();
                tokio::spawn(async move {
                    let _ = tokio::io::copy(&mut br, &mut cw).await;
                });
                let seen = seen.clone();
                tokio::spawn(async move {
                    // Requests: a 4-byte size, then the header (api key first).
                    let mut size = [0u8; 4];
                    while cr.read_exact(&mut size).await.is_ok() {
                        let mut body = vec![0u8; u32::from_be_bytes(size) as usize];
                        if cr.read_exact(&mut body).await.is_err() {
                            break;
                        }
                        if body.len() >= 2 && i16::from_be_bytes([body[0], body[1]]) == 19 {
                            seen.fetch_add(1, Ordering::SeqCst);
                        }
                        if bw.write_all(&size).await.is_err() || bw.write_all(&body).await.is_err()
                        {
                            break;
                        }
                    }
                });
            }
        });
        WatchingProxy { port, creates }
    }

    fn creates(&self) -> usize {
        self.creates.load(std::sync::atomic::Ordering::SeqCst)
    }
}

/// A principal that may describe and write but not create: once the
/// topics exist (an operator made them), no stage asks to create one.
/// Kafka checks CREATE before existence, so a CreateTopics of an existing
/// topic would be refused such a principal. The proxy sees the first
/// provisioning create the missing topics (so it would see a second).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stages_ask_to_create_no_topic_that_exists() {
    let dir = std::env::temp_dir().join(format!("vitrina-nocreate-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let upstream = common::free_port();
    let proxy = WatchingProxy::start(upstream).await;
    let broker = LocalBroker::new(&vitrina::config::StackConfig::default(), dir.clone())
        .with_storage(Storage::Memory)
        .advertising(&format!("127.0.0.1:{}", proxy.port));
    broker.start(upstream).unwrap();
    let brokers = format!("127.0.0.1:{}", proxy.port);
    let kafka = vitrina::connections::KafkaEndpoint::new(&brokers);
    let name = format!("nocreate{}", std::process::id());
    let mut topics = vitrina::kafka::event_topics(&name);
    topics.push(vitrina::kafka::detail_topic(&name));
    topics.push(vitrina::kafka::dead_letter_topic(&name));
    let partitions = vitrina::config::Config::default().capture.partitions;

    // The operator's provisioning (here: vitrina's own, through the proxy).
    vitrina::kafka::ensure_topics(&kafka, &topics, partitions)
        .await
        .unwrap();
    let made = proxy.creates();
    assert!(made > 0, "the proxy sees CreateTopics");
    vitrina::kafka::ensure_topics(&kafka, &topics, partitions)
        .await
        .unwrap();
    assert_eq!(
        proxy.creates(),
        made,
        "provisioning existing topics creates nothing"
    );

    // A stage on them: the projector starts and projects.
    let show = common::fresh_db("t_nocreate_show").await;
    let show_db = common::db_name(&show);
    let log = format!("{name}-project");
    let env = [
        ("VITRINA_KAFKA__BROKERS", brokers.as_str()),
        ("VITRINA_KAFKA__REPLICATION_FACTOR", "1"),
        ("VITRINA_KAFKA__MIN_INSYNC_REPLICAS", "1"),
        ("VITRINA_SHOWCASE__DATABASE", show_db.as_str()),
        ("VITRINA_PROJECTOR__METRICS_LISTEN", "127.0.0.1:0"),
    ];
    let mut projector = common::spawn_vitrina("project", "postgres", &name, &log, &env);
    let deadline = Instant::now() + Duration::from_secs(60);
    while !common::log_tail(&log, 200).contains("projecting") {
        assert!(
            projector.try_wait().unwrap().is_none() && Instant::now() < deadline,
            "the projector did not start:\n{}",
            common::log_tail(&log, 30)
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(
        proxy.creates(),
        made,
        "the projector asked to create existing topics"
    );
    common::kill(&mut projector, libc::SIGTERM);
    let _ = broker.stop();
    let _ = std::fs::remove_dir_all(&dir);
}

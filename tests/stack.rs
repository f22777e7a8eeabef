//! The local stack comes up, is reachable, and `up` is idempotent.

mod common;

use std::time::Duration;

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::consumer::{CommitMode, Consumer, StreamConsumer};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{ClientConfig, Message};
use vitrina::config::Config;
use vitrina::stack::Stack;

#[tokio::test]
async fn postgres_has_logical_replication_and_accepts_a_replication_connection() {
    let st = common::stack();
    let c = vitrina::pg::connect(&st.pg_config("postgres"))
        .await
        .unwrap();
    let wal: String = c.query_one("SHOW wal_level", &[]).await.unwrap().get(0);
    assert_eq!(wal, "logical");

    // A walsender connection (replication=database) that creates a pgoutput
    // slot, as capture will. tokio-postgres has no replication mode, so psql
    // from the same server installation speaks it.
    let psql = Stack::new(&st.cfg)
        .unwrap()
        .postgres()
        .unwrap()
        .bin_dir
        .join("psql");
    let conninfo = format!(
        "host={} port={} user={} dbname=postgres replication=database",
        st.conns.journal().unwrap().host,
        st.conns.journal().unwrap().port,
        st.conns.journal().unwrap().user
    );
    let slot = format!("t_slot_{}", std::process::id());
    let out = std::process::Command::new(psql)
        .arg(&conninfo)
        .args(["-X", "-A", "-t", "-v", "ON_ERROR_STOP=1"])
        .args(["-c", "IDENTIFY_SYSTEM"])
        .args([
            "-c",
            &format!("CREATE_REPLICATION_SLOT {slot} TEMPORARY LOGICAL pgoutput"),
        ])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains(&slot), "slot created: {text}");
    assert!(
        text.lines().next().unwrap().contains('/'),
        "IDENTIFY_SYSTEM gives an LSN: {text}"
    );
}

#[tokio::test]
async fn up_twice_is_harmless_and_status_reports_both_services() {
    let st = common::stack();
    let stack = Stack::new(&st.cfg).unwrap();
    let before = stack.status().unwrap();
    let again = tokio::task::spawn_blocking(move || stack.up())
        .await
        .unwrap()
        .unwrap();
    for (a, b) in before.iter().zip(&again) {
        assert!(b.running, "{} runs", b.service);
        assert_eq!(a.pid, b.pid, "{} was not restarted", a.service);
        assert_eq!(a.address, b.address);
    }
    assert_eq!(again.len(), 2);
}

#[tokio::test]
async fn kafka_produce_and_consume_through_a_consumer_group() {
    let st = common::stack();
    let brokers = st.brokers();
    let topic = format!("t-stack-{}", std::process::id());
    let admin: AdminClient<_> = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .create()
        .unwrap();
    let res = admin
        .create_topics(
            &[NewTopic::new(&topic, 2, TopicReplication::Fixed(1))],
            &AdminOptions::new(),
        )
        .await
        .unwrap();
    assert!(res[0].is_ok(), "{res:?}");

    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .create()
        .unwrap();
    for i in 0..10 {
        let payload = format!("message {i}");
        let key = format!("k{i}");
        producer
            .send(
                FutureRecord::to(&topic).payload(&payload).key(&key),
                Duration::from_secs(10),
            )
            .await
            .map_err(|(e, _)| e)
            .unwrap();
    }

    let consumer: StreamConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", format!("g-{topic}"))
        .set("auto.offset.reset", "earliest")
        .set("enable.auto.commit", "false")
        .set("session.timeout.ms", "6000")
        .create()
        .unwrap();
    consumer.subscribe(&[&topic]).unwrap();
    let mut got = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while got.len() < 10 {
        let m = tokio::time::timeout_at(deadline, consumer.recv())
            .await
            .expect("all 10 messages within 60 s")
            .unwrap();
        got.push(String::from_utf8(m.payload().unwrap().to_vec()).unwrap());
        consumer.commit_message(&m, CommitMode::Sync).unwrap();
    }
    got.sort();
    let mut want: Vec<String> = (0..10).map(|i| format!("message {i}")).collect();
    want.sort();
    assert_eq!(got, want);
}

#[test]
fn a_missing_broker_binary_says_how_to_install_it() {
    let dir = std::env::temp_dir().join(format!("vitrina-missing-{}", std::process::id()));
    let mut cfg = Config {
        state_dir: dir,
        ..Config::default()
    };
    cfg.journal.host = Some("127.0.0.1".into()); // external: only the broker is local
    cfg.showcase.host = Some("127.0.0.1".into());
    cfg.stack.nisshi_bin = "/nonexistent/nisshi".into();
    // One broker, nisshi, serves both storages (decision 0006).
    for storage in [
        vitrina::stack::broker::Storage::Postgres,
        vitrina::stack::broker::Storage::Memory,
    ] {
        cfg.stack.kafka_storage = storage;
        let err = Stack::new(&cfg).unwrap().up().unwrap_err().to_string();
        assert!(err.contains("cargo install nisshi"), "{storage:?}: {err}");
        assert!(err.contains("scripts/bootstrap"), "{storage:?}: {err}");
    }
}

/// The end offsets lag, status and replay read are the log's true ends when
/// every batch holds many records (tansu 0.6.0 answered ListOffsets(Latest)
/// with the newest batch's base offset + 1, corrected only under
/// `kafka.broker = "tansu-0.6"`; the test stack's nisshi answers right).
#[tokio::test]
async fn end_offsets_are_the_true_ends_of_partitions_written_in_large_batches() {
    let st = common::stack();
    let kafka = vitrina::connections::KafkaEndpoint::new(st.brokers());
    let topic = format!("t-ends-{}", std::process::id());
    let empty = format!("t-ends-empty-{}", std::process::id());
    vitrina::kafka::ensure_topics(&kafka, &[topic.clone(), empty.clone()], 3)
        .await
        .unwrap();
    let p = vitrina::kafka::producer(&kafka, 50, "lz4", 1_000_000).unwrap();
    let mut sent: std::collections::HashMap<i32, i64> = Default::default();
    for round in 0..3 {
        let mut acks = Vec::new();
        for i in 0..2_000 {
            let key = format!("{round}-{i}");
            acks.push(
                p.send_result(FutureRecord::to(&topic).key(&key).payload("x"))
                    .unwrap(),
            );
        }
        for a in acks {
            let d = a.await.unwrap().unwrap();
            *sent.entry(d.partition).or_default() += 1;
        }
    }
    let ends = vitrina::kafka::end_offsets(&kafka, &[topic.clone(), empty.clone()])
        .await
        .unwrap();
    for partition in 0..3 {
        assert_eq!(
            ends.get(&(topic.clone(), partition)).copied(),
            Some(sent.get(&partition).copied().unwrap_or(0)),
            "{topic}[{partition}]"
        );
        assert_eq!(ends.get(&(empty.clone(), partition)).copied(), Some(0));
    }
}

/// Reading from an offset inside a record batch returns that batch's rest.
/// tansu 0.6.0 answered such a Fetch with the batches after it (seen: from
/// 3,070 the first record came back at 3,098); `kafka::fetch_position`
/// looks back one producer batch only under `kafka.broker = "tansu-0.6"`.
/// The test stack's nisshi is asked for the offset itself.
#[tokio::test]
async fn a_read_from_inside_a_record_batch_starts_at_that_offset() {
    let st = common::stack();
    let kafka = vitrina::connections::KafkaEndpoint::new(st.brokers());
    let topic = format!("t-mid-batch-{}", std::process::id());
    vitrina::kafka::ensure_topics(&kafka, std::slice::from_ref(&topic), 1)
        .await
        .unwrap();
    // One linger window: the 500 records travel as few large batches.
    let p = vitrina::kafka::producer(&kafka, 200, "none", 1_000_000).unwrap();
    let mut acks = Vec::new();
    for i in 0..500 {
        let key = i.to_string();
        acks.push(
            p.send_result(FutureRecord::to(&topic).key(&key).payload("x"))
                .unwrap(),
        );
    }
    for a in acks {
        a.await.unwrap().unwrap();
    }
    for from in [1, 137, 250, 499] {
        let (k, t) = (kafka.clone(), topic.clone());
        let records = tokio::task::spawn_blocking(move || {
            vitrina::kafka::read_partition_blocking(&k, &t, 0, from, Duration::from_secs(30))
        })
        .await
        .unwrap()
        .unwrap();
        let offsets: Vec<i64> = records.iter().map(|r| r.0).collect();
        assert_eq!(
            offsets,
            (from..500).collect::<Vec<_>>(),
            "read from {from}: every record from there, none before"
        );
    }
}

/// Topics as an operator pre-creates them, with settings vitrina cannot
/// work with: `vitrina check kafka` names each setting found, the one
/// needed and the `kafka-configs.sh` command, creating nothing; a stage
/// (the ProStore feed, which reads the event topics) stops with the same
/// report instead of running on a log that would expire.
#[tokio::test]
async fn pre_created_topics_with_wrong_settings_are_reported_and_stop_a_stage() {
    let st = common::stack();
    let prefix = format!("topics{}", std::process::id());
    let (grade, detail) = (
        format!("{prefix}.grade.v1"),
        format!("{prefix}.medical_detail.v1"),
    );
    // Made the way an operator's script would, not by vitrina: Kafka's
    // default retention (7 days) on the log, no compaction on the detail.
    let admin: AdminClient<_> = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", st.brokers())
        .create()
        .unwrap();
    let made = admin
        .create_topics(
            &[
                NewTopic::new(&grade, 3, TopicReplication::Fixed(1))
                    .set("retention.ms", "604800000"),
                NewTopic::new(&detail, 3, TopicReplication::Fixed(1))
                    .set("cleanup.policy", "delete"),
            ],
            &AdminOptions::new(),
        )
        .await
        .unwrap();
    assert!(made.iter().all(|r| r.is_ok()), "{made:?}");

    let env = [("VITRINA_PROSTORE__METRICS_LISTEN", "127.0.0.1:0")];
    let out = common::run_vitrina("postgres", &prefix, &["check", "kafka", "--json"], &env);
    assert_eq!(out.status.code(), Some(1), "a wrong topic fails the check");
    let report: serde_json::Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&out.stdout)));
    let wrong: Vec<(String, String, String, String)> = report["mismatches"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| {
            let s = |k: &str| m[k].as_str().unwrap().to_string();
            (s("topic"), s("setting"), s("found"), s("fix"))
        })
        .collect();
    assert!(
        wrong.contains(&(
            grade.clone(),
            "retention.ms".into(),
            "604800000".into(),
            format!("kafka-configs.sh --bootstrap-server {} --alter --entity-type topics --entity-name {grade} --add-config retention.ms=-1", st.brokers()),
        )),
        "{wrong:#?}"
    );
    assert!(
        wrong
            .iter()
            .any(|(t, s, f, _)| *t == detail && s == "cleanup.policy" && f == "delete"),
        "{wrong:#?}"
    );
    let missing = report["missing"].as_array().unwrap();
    let state = format!("{prefix}.capture_state.v1");
    assert!(
        missing.iter().any(|m| m[0] == state.as_str()
            && m[1]
                .as_str()
                .unwrap()
                .contains("--config cleanup.policy=compact")),
        "{missing:?}"
    );

    // A stage stops on the same report, and creates nothing meanwhile.
    let out = common::run_vitrina("postgres", &prefix, &["prostore", "feed"], &env);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "the feed must not run: {err}");
    println!("the feed's message:\n{err}");
    assert!(
        err.contains(&format!(
            "topic {grade}: retention.ms is 604800000, vitrina needs -1"
        )) && err.contains("kafka-configs.sh"),
        "{err}"
    );
    let md = {
        let c: rdkafka::consumer::BaseConsumer = rdkafka::ClientConfig::new()
            .set("bootstrap.servers", st.brokers())
            .create()
            .unwrap();
        c.fetch_metadata(None, Duration::from_secs(10)).unwrap()
    };
    let ours: Vec<&str> = md
        .topics()
        .iter()
        .map(|t| t.name())
        .filter(|n| n.starts_with(&format!("{prefix}.")))
        .collect();
    assert_eq!(ours.len(), 2, "nothing created: {ours:?}");
}

/// The projector's `vitrina_projector_consumer_lag_messages` of each
/// partition, scraped from `/metrics` at `addr`.
fn lag_metric(addr: &str) -> std::collections::BTreeMap<String, i64> {
    let (_, body) = common::http_get(addr, "/metrics");
    body.lines()
        .filter_map(|l| l.strip_prefix("vitrina_projector_consumer_lag_messages{"))
        .filter_map(|l| {
            let (labels, value) = l.split_once("} ")?;
            let label = |k: &str| {
                let at = labels.find(&format!("{k}=\""))? + k.len() + 2;
                Some(labels[at..].split('"').next()?.to_string())
            };
            Some((
                format!("{}[{}]", label("topic")?, label("partition")?),
                value.trim().parse::<f64>().ok()? as i64,
            ))
        })
        .collect()
}

/// The projector's applied offsets reach its Kafka consumer group (after
/// the showcase's commit), so the standard tools see its lag: confluent-kafka
/// reads the group's committed offsets and the log's ends, and each
/// partition's lag is the projector's own metric. A partition stopped before
/// an event of an unknown schema keeps a lag both see.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_consumer_group_shows_the_projectors_lag_to_standard_tools() {
    use vitrina::region::load;
    let cfg = common::journal_db("t_group_lag").await;
    let db = common::db_name(&cfg);
    load::load(&cfg, &common::small_region(71, 1, 15, 0.0), 2, false, false)
        .await
        .unwrap();
    let show = common::fresh_db("t_group_lag_show").await;
    let show_db = common::db_name(&show);
    let name = format!("grouplag{}", std::process::id());
    let metrics = format!("127.0.0.1:{}", common::free_port());
    let env = [
        ("VITRINA_SHOWCASE__DATABASE", show_db.as_str()),
        ("VITRINA_PROJECTOR__METRICS_LISTEN", metrics.as_str()),
    ];
    let mut capture = common::spawn_capture(&db, &name);
    let log = format!("{name}-projector");
    let mut projector = common::spawn_vitrina("project", &db, &name, &log, &env);
    common::wait_caught_up(&cfg, &name, Duration::from_secs(240)).await;

    // An event of a schema from the future stops grade[0] before it.
    let topic = vitrina::kafka::topic(&name, "grade");
    common::publish_from_the_future(&topic).await;
    let report = common::spawn_workload(&cfg, 4, 0, 72).await.unwrap();
    assert_eq!(report.failed_transactions, 0);
    common::wait_caught_up(&cfg, &name, Duration::from_secs(240)).await;
    // No more watermarks: the log stands still.
    common::kill(&mut capture, libc::SIGTERM);
    capture.wait().unwrap();

    let mut topics = vitrina::kafka::event_topics(&name);
    topics.push(vitrina::kafka::detail_topic(&name));
    let group = format!("{name}-projector-{show_db}");
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/group_lag.py");
    let deadline = std::time::Instant::now() + Duration::from_secs(90);
    let (theirs, ours) = loop {
        let out = std::process::Command::new("python3")
            .arg(&script)
            .arg(common::stack().brokers())
            .arg(&group)
            .args(&topics)
            .output()
            .expect("python3 runs (scripts/bootstrap installs confluent-kafka)");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let said: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        let theirs: std::collections::BTreeMap<String, i64> = said
            .as_object()
            .unwrap()
            .iter()
            .map(|(k, v)| (k.clone(), v["lag"].as_i64().unwrap()))
            .collect();
        let ours = lag_metric(&metrics);
        let stalled = format!("{topic}[0]");
        if theirs == ours && theirs.get(&stalled).is_some_and(|l| *l > 0) {
            break (theirs, ours);
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the group's lag (confluent-kafka) never matched the projector's metric:\ntheirs {theirs:?}\nours   {ours:?}\n{}",
            common::log_tail(&log, 20)
        );
        tokio::time::sleep(Duration::from_secs(2)).await;
    };
    let total: i64 = theirs.values().sum();
    eprintln!(
        "lag per confluent-kafka = the projector's metric over {} partitions, {total} records in all (grade[0]: {})",
        ours.len(),
        theirs[&format!("{topic}[0]")]
    );
    assert!(ours.len() >= topics.len(), "every partition reported");
    common::kill(&mut projector, libc::SIGTERM);
}

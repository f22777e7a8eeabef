//! The edges real journals have (issue 11): tables without a usable replica
//! identity, partitioned tables, unchanged TOASTed values, rows larger than
//! the broker takes, multi-row inserts, deletes and their partitions, an
//! initial load whose progress record is gone, a slot lost and made again,
//! a mapping that leaves entities out, and events of a schema the
//! projector does not know. Each ends comparing with the journal.

mod common;

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use vitrina::events::codec::Registry;
use vitrina::events::{Message, Op};
use vitrina::region::load;

async fn exists(c: &tokio_postgres::Client, sql: &str, name: &str) -> bool {
    c.query_opt(sql, &[&name]).await.unwrap().is_some()
}

/// Nothing changed in the journal: no publication, no slot.
async fn untouched(c: &tokio_postgres::Client, name: &str) {
    assert!(
        !exists(c, "SELECT 1 FROM pg_publication WHERE pubname = $1", name).await,
        "a publication was created"
    );
    assert!(
        !exists(
            c,
            "SELECT 1 FROM pg_replication_slots WHERE slot_name = $1",
            name
        )
        .await,
        "a slot was created"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tables_whose_replica_identity_cannot_serve_are_refused_before_anything_changes() {
    let cfg = common::journal_db("t_edge_ident").await;
    let db = common::db_name(&cfg);
    let c = vitrina::pg::connect(&cfg).await.unwrap();
    let name = format!("edgeident{}", std::process::id());

    // No replica identity: publishing it would break the journal's updates.
    c.batch_execute("ALTER TABLE journal.subjects REPLICA IDENTITY NOTHING")
        .await
        .unwrap();
    let (code, err) = common::run_capture_to_exit_with(&db, &name, &[]);
    assert_eq!(code, Some(1), "{err}");
    assert!(
        err.contains("journal.subjects has no replica identity")
            && err.contains("ALTER TABLE journal.subjects REPLICA IDENTITY FULL"),
        "{err}"
    );
    untouched(&c, &name).await;
    c.batch_execute(
        "INSERT INTO journal.subjects (code, name) VALUES ('X1', 'Астрономия');
         UPDATE journal.subjects SET name = 'Астрономия 2' WHERE code = 'X1';
         DELETE FROM journal.subjects WHERE code = 'X1';",
    )
    .await
    .expect("the journal's own writes still work");

    // Deletes keyed by the student need the student in the old row.
    c.batch_execute(
        "ALTER TABLE journal.subjects REPLICA IDENTITY DEFAULT;
         ALTER TABLE journal.grades REPLICA IDENTITY DEFAULT;",
    )
    .await
    .unwrap();
    let (code, err) = common::run_capture_to_exit_with(&db, &name, &[]);
    assert_eq!(code, Some(1), "{err}");
    assert!(
        err.contains("journal.grades has a replica identity of (id) without [\"student_id\"]")
            && err.contains("REPLICA IDENTITY FULL"),
        "{err}"
    );
    untouched(&c, &name).await;
}

/// Random letters: incompressible enough to be stored out of line (TOAST),
/// and nothing the free-text scrubber would touch.
fn letters(n: usize, seed: u64) -> String {
    let mut rng = vitrina::region::rng::Rng::new(seed);
    (0..n)
        .map(|_| (b'a' + rng.below(26) as u8) as char)
        .collect()
}

async fn copy_grades(c: &tokio_postgres::Client, n: i64) {
    use futures::SinkExt;
    let cols = "student_id, lesson_id, class_id, subject_id, teacher_id, kind, period, mark, passed, weight, comment, updated_by";
    let mut data = Vec::new();
    let out = c
        .copy_out(&format!(
            "COPY (SELECT {cols} FROM journal.grades ORDER BY id LIMIT {n}) TO STDOUT"
        ))
        .await
        .unwrap();
    futures::pin_mut!(out);
    while let Some(chunk) = futures::StreamExt::next(&mut out).await {
        data.extend_from_slice(&chunk.unwrap());
    }
    let sink = c
        .copy_in(&format!("COPY journal.grades ({cols}) FROM STDIN"))
        .await
        .unwrap();
    futures::pin_mut!(sink);
    sink.send(bytes::Bytes::from(data)).await.unwrap();
    sink.as_mut().finish().await.unwrap();
}

/// One capture run meets a multi-row COPY, an UPDATE that leaves a TOASTed
/// homework unchanged, a homework over `capture.max_message_bytes`, and a
/// workload with deletes: event ids are unique, the TOASTed value rides
/// the update, the oversize row is dead-lettered with its table, key and
/// size while capture goes on, and every change of a row travels on one
/// partition.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn multi_row_inserts_toast_oversize_rows_and_deletes_on_their_partition() {
    let cfg = common::journal_db("t_edge_rows").await;
    let db = common::db_name(&cfg);
    load::load(
        &cfg,
        &common::small_region(61, 1, 30, 0.02),
        2,
        false,
        false,
    )
    .await
    .unwrap();
    let name = format!("edgerows{}", std::process::id());
    let mut capture = common::spawn_capture(&db, &name);
    common::wait_caught_up(&cfg, &name, Duration::from_secs(240)).await;
    let c = vitrina::pg::connect(&cfg).await.unwrap();

    copy_grades(&c, 40).await;
    let lessons: Vec<i64> =
        common::column(&c, "SELECT id FROM journal.lessons ORDER BY id LIMIT 3").await;
    let (toasted, big, later) = (lessons[0], lessons[1], lessons[2]);
    let long = letters(40_000, 5);
    c.execute(
        "UPDATE journal.lessons SET homework = $1 WHERE id = $2",
        &[&long, &toasted],
    )
    .await
    .unwrap();
    let stored: i32 = c
        .query_one(
            "SELECT pg_column_size(homework) FROM journal.lessons WHERE id = $1",
            &[&toasted],
        )
        .await
        .unwrap()
        .get(0);
    assert!(
        stored > 20_000,
        "the homework is stored uncompressed: {stored}"
    );
    c.execute(
        "UPDATE journal.lessons SET topic = 'Повторение' WHERE id = $1",
        &[&toasted],
    )
    .await
    .unwrap();
    let huge = letters(1_500_000, 6);
    c.execute(
        "UPDATE journal.lessons SET homework = $1 WHERE id = $2",
        &[&huge, &big],
    )
    .await
    .unwrap();
    c.execute(
        "UPDATE journal.lessons SET topic = 'После большого' WHERE id = $1",
        &[&later],
    )
    .await
    .unwrap();
    let report = common::spawn_workload(&cfg, 4, 0, 62).await.unwrap();
    assert_eq!(report.failed_transactions, 0);
    common::wait_caught_up(&cfg, &name, Duration::from_secs(240)).await;
    assert!(
        capture.try_wait().unwrap().is_none(),
        "capture goes on after an oversize row:\n{}",
        common::log_tail(&name, 40)
    );
    let messages = common::read_all(&name);
    common::kill(&mut capture, libc::SIGTERM);

    let reg = Registry::new();
    let mut ids = HashSet::new();
    let mut partitions: HashMap<(String, String), HashSet<i32>> = HashMap::new();
    let mut toasted_homework = None;
    let mut later_seen = false;
    let mut dead = Vec::new();
    for (topic, partition, _, payload) in &messages {
        if topic.ends_with(".deadletter.v1") {
            dead.push(serde_json::from_slice::<serde_json::Value>(payload).unwrap());
            continue;
        }
        if topic.ends_with(".medical_detail.v1") {
            continue;
        }
        let Ok(Message::Event(e)) = reg.decode_message(payload) else {
            continue;
        };
        if e.op == Op::Truncate {
            continue;
        }
        assert!(
            ids.insert(e.event_id.clone()),
            "event id {} twice",
            e.event_id
        );
        partitions
            .entry((e.entity.name.to_string(), e.key.clone()))
            .or_default()
            .insert(*partition);
        if e.entity.name == "lesson" && e.op == Op::Update {
            let i = e.entity.index("homework").unwrap();
            let topic_i = e.entity.index("topic").unwrap();
            let after = e.after.as_ref().unwrap();
            if e.key == toasted.to_string()
                && after[topic_i] == vitrina::events::Val::Str("Повторение".into())
            {
                toasted_homework = Some(after[i].clone());
            }
            later_seen |= e.key == later.to_string();
        }
    }
    assert!(ids.len() > 1000, "{} events", ids.len());
    assert_eq!(
        toasted_homework,
        Some(vitrina::events::Val::Str(long)),
        "the update carries the unchanged TOASTed homework"
    );
    let split: Vec<_> = partitions.iter().filter(|(_, p)| p.len() > 1).collect();
    assert!(
        split.is_empty(),
        "rows whose changes took two partitions: {split:?}"
    );
    let grade_deletes = report
        .by_operation
        .iter()
        .any(|(k, n)| k.contains("deletion") && *n > 0);
    assert!(
        grade_deletes,
        "the workload deleted rows: {:?}",
        report.by_operation
    );
    let oversize: Vec<_> = dead.iter().filter(|d| d["kind"] == "oversize").collect();
    assert_eq!(oversize.len(), 1, "dead letters: {dead:?}");
    assert_eq!(oversize[0]["table"], "journal.lessons");
    assert_eq!(oversize[0]["key"], big.to_string());
    assert!(oversize[0]["size_bytes"].as_u64().unwrap() > 1_000_000);
    assert!(
        !dead.iter().any(|d| d["kind"] == "unmappable"),
        "nothing else was dead-lettered: {dead:?}"
    );
    assert!(
        later_seen,
        "the change after the oversize row was published"
    );
    // The topics still say what the journal holds, but for the oversize row.
    let (mut got, _) = common::fold(&messages, &name);
    let mut want = common::journal_state(&cfg).await;
    let k = ("lesson".to_string(), big.to_string());
    got.remove(&k);
    want.remove(&k);
    common::assert_same_state("topics vs journal", &got, &want);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partitioned_journal_table_is_captured_through_its_root() {
    let cfg = common::journal_db("t_edge_part").await;
    let db = common::db_name(&cfg);
    let c = vitrina::pg::connect(&cfg).await.unwrap();
    c.batch_execute(
        "ALTER TABLE journal.grades RENAME TO grades_flat;
         CREATE TABLE journal.grades (LIKE journal.grades_flat INCLUDING ALL) PARTITION BY HASH (id);
         CREATE TABLE journal.grades_p0 PARTITION OF journal.grades FOR VALUES WITH (MODULUS 2, REMAINDER 0);
         CREATE TABLE journal.grades_p1 PARTITION OF journal.grades FOR VALUES WITH (MODULUS 2, REMAINDER 1);
         ALTER TABLE journal.grades_p0 REPLICA IDENTITY FULL;
         ALTER TABLE journal.grades_p1 REPLICA IDENTITY FULL;
         DROP TABLE journal.grades_flat;",
    )
    .await
    .unwrap();
    load::load(
        &cfg,
        &common::small_region(63, 1, 20, 0.02),
        2,
        false,
        false,
    )
    .await
    .unwrap();
    c.batch_execute(
        "SELECT setval(pg_get_serial_sequence('journal.grades', 'id'), (SELECT max(id) FROM journal.grades))",
    )
    .await
    .unwrap();

    // A DBA's publication that names the partitions: refused with the fix.
    let name = format!("edgepart{}", std::process::id());
    let tables: Vec<String> = vitrina::capture::mapping::Mapping::reference()
        .tables
        .iter()
        .map(|t| t.table.clone())
        .collect();
    c.batch_execute(&format!(
        "CREATE PUBLICATION {name} FOR TABLE {}",
        tables.join(", ")
    ))
    .await
    .unwrap();
    let (code, err) = common::run_capture_to_exit_with(&db, &name, &[]);
    assert_eq!(code, Some(1), "{err}");
    assert!(
        err.contains("publish_via_partition_root = true") && err.contains("journal.grades"),
        "{err}"
    );
    c.batch_execute(&format!("DROP PUBLICATION {name}"))
        .await
        .unwrap();

    // Capture's own publication publishes through the root.
    let mut capture = common::spawn_capture(&db, &name);
    common::wait_caught_up(&cfg, &name, Duration::from_secs(240)).await;
    let report = common::spawn_workload(&cfg, 4, 0, 64).await.unwrap();
    assert_eq!(report.failed_transactions, 0);
    common::wait_caught_up(&cfg, &name, Duration::from_secs(240)).await;
    let messages = common::read_all(&name);
    common::kill(&mut capture, libc::SIGTERM);
    let (got, _) = common::fold(&messages, &name);
    let want = common::journal_state(&cfg).await;
    let grades = |s: &common::FoldState| s.keys().filter(|k| k.0 == "grade").count();
    assert!(grades(&want) > 100);
    common::assert_same_state("topics vs a journal with partitioned grades", &got, &want);
}

/// The progress record of an interrupted initial load is gone with the
/// capture's disk (a container restarted): capture still resumes the load
/// (its progress lives on Kafka), and a slot with no record anywhere is
/// refused rather than streamed as loaded.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_interrupted_load_survives_the_loss_of_capture_s_disk() {
    let cfg = common::journal_db("t_edge_load").await;
    let db = common::db_name(&cfg);
    load::load(
        &cfg,
        &common::small_region(65, 2, 120, 0.02),
        2,
        false,
        false,
    )
    .await
    .unwrap();
    let name = format!("edgeload{}", std::process::id());
    let env = [("VITRINA_CAPTURE__SNAPSHOT_CONNECTIONS", "1")];
    let mut first = common::spawn_vitrina("capture", &db, &name, &name, &env);
    let c = vitrina::pg::connect(&cfg).await.unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    // Killed once the slot exists and the first table is copied.
    loop {
        let log = common::log_tail(&name, 1000);
        if log.contains("table copied") {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no table copied:\n{log}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    common::kill(&mut first, libc::SIGKILL);
    // The capture's disk is gone: whatever it kept there (earlier
    // releases kept the load's progress in this file) is lost.
    let _ = std::fs::remove_file(
        common::stack_dir()
            .join("capture")
            .join(format!("{name}.json")),
    );
    let mut second = common::spawn_vitrina("capture", &db, &name, &name, &env);
    common::wait_caught_up(&cfg, &name, Duration::from_secs(240)).await;
    let log = common::log_tail(&name, 10_000);
    let messages = common::read_all(&name);
    common::kill(&mut second, libc::SIGTERM);
    assert!(
        log.contains("resuming the interrupted initial load"),
        "the second capture resumed the load:\n{log}"
    );
    let (got, _) = common::fold(&messages, &name);
    common::assert_same_state(
        "topics vs journal after a load interrupted and its disk lost",
        &got,
        &common::journal_state(&cfg).await,
    );

    // A slot nobody recorded a load for: refused with what to do.
    let other = format!("{name}x");
    c.execute(
        "SELECT pg_create_logical_replication_slot($1, 'pgoutput')",
        &[&other],
    )
    .await
    .unwrap();
    let (code, err) = common::run_capture_to_exit_with(&db, &other, &[]);
    assert_eq!(code, Some(1), "{err}");
    assert!(
        err.contains("exists but no record of its initial load")
            && err.contains("pg_drop_replication_slot"),
        "{err}"
    );
    c.execute("SELECT pg_drop_replication_slot($1)", &[&other])
        .await
        .unwrap();
}

/// A slot lost (dropped) while capture was stopped: capture makes a new
/// one and re-snapshots every table while streaming; each table's
/// withdrawal at the end takes rows deleted while no slot existed out of
/// the showcase too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_slot_is_recovered_and_rows_deleted_in_the_gap_are_withdrawn() {
    let cfg = common::journal_db("t_edge_reload").await;
    let db = common::db_name(&cfg);
    load::load(
        &cfg,
        &common::small_region(66, 1, 20, 0.02),
        2,
        false,
        false,
    )
    .await
    .unwrap();
    let show = common::fresh_db("t_edge_reload_show").await;
    let name = format!("edgereload{}", std::process::id());
    let mut capture = common::spawn_capture(&db, &name);
    let mut projector = common::spawn_projector(&db, &name, &common::db_name(&show));
    common::wait_caught_up(&cfg, &name, Duration::from_secs(240)).await;
    common::kill(&mut capture, libc::SIGTERM);
    let c = vitrina::pg::connect(&cfg).await.unwrap();
    c.execute("SELECT pg_drop_replication_slot($1)", &[&name])
        .await
        .unwrap();
    let gone = c
        .execute(
            "DELETE FROM journal.grades WHERE id IN (SELECT id FROM journal.grades ORDER BY id LIMIT 25)",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(gone, 25);
    let mut capture = common::spawn_capture(&db, &name);
    common::assert_showcase_equals_journal(
        "showcase vs journal after a lost slot's recovery",
        &cfg,
        &name,
        &show,
    )
    .await;
    common::kill(&mut projector, libc::SIGTERM);
    common::kill(&mut capture, libc::SIGTERM);
}

/// A region whose journal has no medical exemptions table maps it out:
/// freshness is known from the topics capture does publish, and the
/// projector reports ready.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn freshness_follows_the_entities_capture_publishes() {
    let cfg = common::journal_db("t_edge_fresh").await;
    let db = common::db_name(&cfg);
    load::load(
        &cfg,
        &common::small_region(67, 1, 10, 0.02),
        2,
        false,
        false,
    )
    .await
    .unwrap();
    let mapping = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("config/mapping.toml"),
    )
    .unwrap();
    let blocks: Vec<&str> = mapping.split("[[table]]").collect();
    let kept: Vec<&str> = blocks
        .iter()
        .copied()
        .filter(|b| !b.contains("table = \"journal.medical_exemptions\""))
        .collect();
    assert_eq!(kept.len() + 1, blocks.len(), "one table mapped out");
    let file =
        std::env::temp_dir().join(format!("vitrina-edge-mapping-{}.toml", std::process::id()));
    std::fs::write(&file, kept.join("[[table]]")).unwrap();
    let file_s = file.display().to_string();
    let show = common::fresh_db("t_edge_fresh_show").await;
    let show_db = common::db_name(&show);
    let name = format!("edgefresh{}", std::process::id());
    let metrics = format!("127.0.0.1:{}", common::free_port());
    let env = [
        ("VITRINA_CAPTURE__MAPPING_FILE", file_s.as_str()),
        ("VITRINA_SHOWCASE__DATABASE", show_db.as_str()),
        ("VITRINA_PROJECTOR__METRICS_LISTEN", metrics.as_str()),
    ];
    let mut capture = common::spawn_vitrina("capture", &db, &name, &name, &env);
    let mut projector =
        common::spawn_vitrina("project", &db, &name, &format!("{name}-projector"), &env);
    common::wait_caught_up(&cfg, &name, Duration::from_secs(240)).await;
    let deadline = std::time::Instant::now() + Duration::from_secs(90);
    let (code, body) = loop {
        let (code, body) = common::http_get(&metrics, "/readyz");
        if code == 200 || std::time::Instant::now() > deadline {
            break (code, body);
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    assert_eq!(code, 200, "the projector is ready: {body}");
    let s = vitrina::pg::connect(&show).await.unwrap();
    let row = s
        .query_one(
            "SELECT extract(epoch FROM now() - fresh_as_of)::float8, sla_state FROM showcase.status",
            &[],
        )
        .await
        .unwrap();
    let (age, state): (Option<f64>, String) = (row.get(0), row.get(1));
    assert!(
        age.is_some_and(|a| a < 60.0) && state == "ok",
        "{age:?} {state}"
    );
    let entities: Vec<String> =
        common::column(&s, "SELECT entity FROM showcase.entity_freshness").await;
    assert!(
        !entities.iter().any(|e| e == "medical_exemption") && entities.iter().any(|e| e == "grade"),
        "{entities:?}"
    );
    common::kill(&mut projector, libc::SIGTERM);
    common::kill(&mut capture, libc::SIGTERM);
    let _ = std::fs::remove_file(&file);
}

/// An event of a schema this projector does not know (a newer capture)
/// stops its partition: nothing at or after it is applied or committed,
/// `/readyz` says why, no dead letter hides it; a projector started again
/// stops at the same offset. Other partitions go on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unknown_schema_stops_its_partition_instead_of_being_skipped() {
    let cfg = common::journal_db("t_edge_schema").await;
    let db = common::db_name(&cfg);
    load::load(
        &cfg,
        &common::small_region(68, 1, 10, 0.02),
        2,
        false,
        false,
    )
    .await
    .unwrap();
    let show = common::fresh_db("t_edge_schema_show").await;
    let show_db = common::db_name(&show);
    let name = format!("edgeschema{}", std::process::id());
    let metrics = format!("127.0.0.1:{}", common::free_port());
    let env = [
        ("VITRINA_SHOWCASE__DATABASE", show_db.as_str()),
        ("VITRINA_PROJECTOR__METRICS_LISTEN", metrics.as_str()),
    ];
    let mut capture = common::spawn_capture(&db, &name);
    let log = format!("{name}-projector");
    let mut projector = common::spawn_vitrina("project", &db, &name, &log, &env);
    common::wait_caught_up(&cfg, &name, Duration::from_secs(240)).await;
    common::wait_projected(&show, &name, Duration::from_secs(240)).await;

    let topic = vitrina::kafka::topic(&name, "grade");
    // Its offset from the delivery report.
    let at = common::publish_from_the_future(&topic).await;
    let report = common::spawn_workload(&cfg, 4, 0, 69).await.unwrap();
    assert_eq!(report.failed_transactions, 0);
    common::wait_caught_up(&cfg, &name, Duration::from_secs(240)).await;

    let s = vitrina::pg::connect(&show).await.unwrap();
    let offset = |p: i32| {
        let (s, t) = (&s, topic.clone());
        async move {
            s.query_one(
                "SELECT next_offset FROM showcase.consumer_offsets WHERE topic = $1 AND partition = $2",
                &[&t, &p],
            )
            .await
            .unwrap()
            .get::<_, i64>(0)
        }
    };
    for round in 0..2 {
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        let body = loop {
            let (code, body) = common::http_get(&metrics, "/readyz");
            if code == 503 && body.contains("fingerprint abababababababab") {
                break body;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "round {round}: /readyz {code} {body}\n{}",
                common::log_tail(&log, 30)
            );
            tokio::time::sleep(Duration::from_millis(300)).await;
        };
        assert!(
            body.contains(&format!("{topic}[0] stopped at offset {at}")),
            "{body}"
        );
        tokio::time::sleep(Duration::from_secs(2)).await;
        assert_eq!(
            offset(0).await,
            at,
            "round {round}: nothing past it committed"
        );
        assert!(offset(1).await > 0, "the other partitions go on");
        // Started again (still not knowing the schema): stops there again.
        common::kill(&mut projector, libc::SIGTERM);
        projector = common::spawn_vitrina("project", &db, &name, &log, &env);
    }
    let dead: Vec<_> = common::read_all(&name)
        .into_iter()
        .filter(|(t, ..)| t.ends_with(".deadletter.v1"))
        .collect();
    assert!(dead.is_empty(), "no dead letter for it: {}", dead.len());
    common::kill(&mut projector, libc::SIGTERM);
    common::kill(&mut capture, libc::SIGTERM);
}

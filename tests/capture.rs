//! Capture against the real PostgreSQL and broker: every committed change
//! reaches Kafka and nothing else; SIGKILL loses nothing; no personal data
//! leaves; the slot advances on an idle journal; bad input and schema drift
//! are dead-lettered or flagged, and capture keeps running.

mod common;

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use vitrina::config::WorkloadConfig;
use vitrina::events::codec::Registry;
use vitrina::events::{Message, Op};
use vitrina::region::{load, workload, RegionSpec};

fn spec(seed: u64, invalid: f64) -> RegionSpec {
    common::small_region(seed, 1, 40, invalid)
}

use common::fold;

fn stop(mut child: std::process::Child) {
    common::kill(&mut child, libc::SIGTERM);
}

async fn slot_free(cfg: &tokio_postgres::Config, slot: &str) {
    common::wait_slot_active(cfg, slot, false, Duration::from_secs(10)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_committed_change_reaches_kafka_and_nothing_else_and_no_personal_data() {
    let cfg = common::journal_db("t_cap_all").await;
    let db = common::db_name(&cfg);
    load::load(&cfg, &spec(41, 0.05), 2, false, false)
        .await
        .unwrap();
    let name = format!("capall{}", std::process::id());
    let child = common::spawn_capture(&db, &name);
    common::wait_caught_up(&cfg, &name, Duration::from_secs(240)).await;
    let w = WorkloadConfig {
        rate: 400,
        duration_s: 4,
        sessions: 4,
        mass_enrolment: 150,
        seed: 3,
        ..Default::default()
    };
    let report = workload::run(&cfg, &w, false).await.unwrap();
    assert_eq!(report.failed_transactions, 0);
    common::wait_caught_up(&cfg, &name, Duration::from_secs(240)).await;
    let messages = common::read_all(&name);
    stop(child);

    let (got, events) = fold(&messages, &name);
    let want = common::journal_state(&cfg).await;
    assert!(
        events as u64 > report.changes,
        "{events} events for {} workload changes plus the snapshot",
        report.changes
    );
    common::assert_same_state("topics vs journal", &got, &want);

    // No personal data on any topic: names, raw SNILS, passports, birth certificates.
    let c = vitrina::pg::connect(&cfg).await.unwrap();
    let mut needles: HashSet<String> = HashSet::new();
    for q in [
        "SELECT last_name, snils, passport_series || passport_number, passport_series || ' ' || passport_number, birth_certificate_series || birth_certificate_number FROM journal.students",
        "SELECT last_name, snils, passport_series || passport_number, passport_series || ' ' || passport_number, NULL FROM journal.parents",
    ] {
        for r in c.query(q, &[]).await.unwrap() {
            for i in 0..5 {
                if let Some(v) = r.get::<_, Option<String>>(i) {
                    needles.insert(v.clone());
                    if i == 1 {
                        needles.insert(v.chars().filter(char::is_ascii_digit).collect());
                    }
                }
            }
        }
    }
    let full_names: HashSet<String> = c
        .query("SELECT last_name || ' ' || first_name FROM journal.students UNION SELECT last_name || ' ' || first_name FROM journal.parents", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert!(needles.len() > 50);
    for (topic, _, key, payload) in &messages {
        let text = String::from_utf8_lossy(payload);
        let key = String::from_utf8_lossy(key);
        // Organizations carry their head's name (a public registry fact),
        // drawn from the same surname list: check full names there.
        let list: Vec<&String> = if topic.ends_with(".organization.v1") {
            full_names.iter().collect()
        } else {
            needles.iter().collect()
        };
        for n in list {
            assert!(
                !text.contains(n.as_str()) && !key.contains(n.as_str()),
                "personal data on {topic}"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_at_random_moments_loses_nothing_and_duplicates_keep_their_ids() {
    let cfg = common::journal_db("t_cap_kill").await;
    let db = common::db_name(&cfg);
    load::load(&cfg, &spec(42, 0.02), 2, false, false)
        .await
        .unwrap();
    let name = format!("capkill{}", std::process::id());
    // The first kills land in the initial load and exercise its per-table
    // resume; then ten more while capture streams the live workload.
    let mut child = common::spawn_capture(&db, &name);
    // Long enough for ten restarts, each with its catch-up, on a loaded CI machine.
    let load_task = common::spawn_workload(&cfg, 70, 300, 9);
    let mut rng = vitrina::region::rng::Rng::new(std::process::id() as u64);
    for _ in 0..2 {
        tokio::time::sleep(Duration::from_millis(rng.range(300, 1500) as u64)).await;
        common::kill(&mut child, libc::SIGKILL);
        slot_free(&cfg, &name).await;
        child = common::spawn_capture(&db, &name);
    }
    let mut kills = 2;
    while kills < 12 {
        common::wait_caught_up(&cfg, &name, Duration::from_secs(240)).await;
        tokio::time::sleep(Duration::from_millis(rng.range(200, 1500) as u64)).await;
        assert!(
            !load_task.is_finished(),
            "kills land during the live workload"
        );
        common::kill(&mut child, libc::SIGKILL);
        kills += 1;
        slot_free(&cfg, &name).await;
        child = common::spawn_capture(&db, &name);
    }
    let report = load_task.await.unwrap();
    assert_eq!(report.failed_transactions, 0);
    common::wait_caught_up(&cfg, &name, Duration::from_secs(240)).await;
    let messages = common::read_all(&name);
    stop(child);

    let (got, _) = fold(&messages, &name);
    common::assert_same_state(
        "topics vs journal",
        &got,
        &common::journal_state(&cfg).await,
    );

    // A change sent twice is the same event: same id, same bytes.
    let reg = Registry::new();
    let mut by_id: HashMap<String, &Vec<u8>> = HashMap::new();
    let mut duplicates = 0;
    for (topic, _, _, payload) in &messages {
        if topic.ends_with(".deadletter.v1") {
            continue;
        }
        let Ok(Message::Event(e)) = reg.decode_message(payload) else {
            continue;
        };
        if e.op == Op::Truncate {
            continue;
        }
        if let Some(prev) = by_id.insert(e.event_id.clone(), payload) {
            duplicates += 1;
            assert_eq!(
                prev, payload,
                "event {} re-sent with other content",
                e.event_id
            );
        }
    }
    let log = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join(format!("target/test-logs/{name}.log")),
    )
    .unwrap();
    let streaming_runs = log.matches("streaming").count();
    assert!(
        streaming_runs >= 11,
        "ten kills hit a streaming capture ({streaming_runs} streaming starts)"
    );
    eprintln!(
        "{kills} kills ({} resumed an interrupted initial load), {} messages, {duplicates} re-sent events (identical)",
        log.matches("resuming the interrupted initial load").count(),
        messages.len()
    );
}

async fn slot_pos(c: &tokio_postgres::Client, name: &str) -> (String, String, f64) {
    let r = c
        .query_one(
            "SELECT confirmed_flush_lsn::text, restart_lsn::text, (pg_current_wal_lsn() - confirmed_flush_lsn)::float8
             FROM pg_replication_slots WHERE slot_name = $1",
            &[&name],
        )
        .await
        .unwrap();
    (r.get(0), r.get(1), r.get(2))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_journal_keeps_the_slot_advancing() {
    let cfg = common::journal_db("t_cap_idle").await;
    let db = common::db_name(&cfg);
    let name = format!("capidle{}", std::process::id());
    let child = common::spawn_capture(&db, &name);
    common::wait_caught_up(&cfg, &name, Duration::from_secs(180)).await;
    let c = vitrina::pg::connect(&cfg).await.unwrap();
    let (flush0, restart0, _) = slot_pos(&c, &name).await;
    let lsn = |s: &str| vitrina::lsn::parse(s).unwrap();
    // Over many heartbeat intervals (500 ms) the confirmed position and the
    // slot's restart_lsn move on, so the WAL the slot retains does not grow.
    // restart_lsn moves once the server has logged a running-transactions
    // record (a checkpoint does) and capture has confirmed past it.
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    let (mut flush1, mut restart1);
    loop {
        c.batch_execute("CHECKPOINT").await.unwrap();
        tokio::time::sleep(Duration::from_secs(1)).await;
        (flush1, restart1, _) = slot_pos(&c, &name).await;
        if lsn(&flush1) > lsn(&flush0) && lsn(&restart1) > lsn(&restart0) {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "on an idle journal the slot must advance within 60 s (120 heartbeats): \
             confirmed {flush0} → {flush1}, restart_lsn {restart0} → {restart1}\n{}",
            common::log_tail(&name, 20)
        );
    }
    // Whatever the WAL end was a moment ago (other databases of the test
    // cluster write WAL too), the slot confirms past it within a few
    // heartbeats: nothing piles up behind an idle journal.
    common::wait_caught_up(&cfg, &name, Duration::from_secs(10)).await;
    stop(child);
    // Watermarks went to every partition.
    let messages = common::read_all(&name);
    let reg = Registry::new();
    let partitions: HashSet<(String, i32)> = messages
        .iter()
        .filter(|(_, _, _, p)| matches!(reg.decode_message(p), Ok(Message::Watermark(_))))
        .map(|(t, p, _, _)| (t.clone(), *p))
        .collect();
    assert_eq!(
        partitions.len(),
        vitrina::events::ENTITIES.len() * 3,
        "a watermark on each partition of each topic"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_and_schema_drift_are_flagged_or_dead_lettered_and_capture_keeps_running() {
    let cfg = common::journal_db("t_cap_bad").await;
    let db = common::db_name(&cfg);
    load::load(&cfg, &spec(43, 0.2), 1, false, false)
        .await
        .unwrap();
    let name = format!("capbad{}", std::process::id());
    let mut child = common::spawn_capture(&db, &name);
    common::wait_caught_up(&cfg, &name, Duration::from_secs(240)).await;
    let c = vitrina::pg::connect(&cfg).await.unwrap();
    c.batch_execute(
        "ALTER TABLE journal.lessons ADD COLUMN classroom_note text;
         INSERT INTO journal.lessons (class_id, subject_id, teacher_id, lesson_date, slot, starts_at, ends_at, updated_by, classroom_note)
           SELECT class_id, subject_id, teacher_id, lesson_date, 9, starts_at, ends_at, 'op:test', 'new column' FROM journal.lessons LIMIT 1;
         ALTER TABLE journal.medical_exemptions DROP COLUMN pe_group;
         INSERT INTO journal.medical_exemptions (student_id, starts_on, ends_on, document_number, updated_by)
           SELECT id, DATE '2026-11-21', DATE '2026-11-25', 'ЕМИАС-T-1', 'emias:test' FROM journal.students LIMIT 1;
         ALTER TABLE journal.subjects ALTER COLUMN pass_fail TYPE text;
         INSERT INTO journal.subjects (id, code, name, pass_fail) VALUES (999, 'X', 'Испытание', 'maybe');
         TRUNCATE journal.teacher_classes;
         INSERT INTO journal.grades (student_id, lesson_id, class_id, subject_id, teacher_id, kind, mark, updated_by)
           SELECT g.student_id, g.lesson_id, g.class_id, g.subject_id, g.teacher_id, 'current', 5, 'op:after-drift' FROM journal.grades g WHERE g.kind = 'current' LIMIT 1;",
    )
    .await
    .unwrap();
    common::wait_caught_up(&cfg, &name, Duration::from_secs(180)).await;
    assert!(child.try_wait().unwrap().is_none(), "capture keeps running");
    let messages = common::read_all(&name);
    stop(child);

    let reg = Registry::new();
    let mut dead: Vec<serde_json::Value> = Vec::new();
    let mut flagged_students = 0;
    let (mut new_column_lesson, mut truncates, mut grade_after) = (false, 0, false);
    for (topic, _, _, payload) in &messages {
        if topic.ends_with(".deadletter.v1") {
            dead.push(serde_json::from_slice(payload).expect("dead letters are JSON"));
            continue;
        }
        let Ok(Message::Event(e)) = reg.decode_message(payload) else {
            continue;
        };
        match (e.entity.name, e.op) {
            ("student", Op::Read) if e.quality.iter().any(|q| q == "snils_invalid") => {
                flagged_students += 1
            }
            ("lesson", Op::Create) => new_column_lesson = true,
            // Not the initial load's withdrawal (a snapshot TRUNCATE).
            ("teaching_assignment", Op::Truncate) if !e.source.snapshot => truncates += 1,
            ("grade", Op::Create) if e.actor.as_deref() == Some("op:after-drift") => {
                grade_after = true
            }
            _ => {}
        }
    }
    // Invalid SNILS: published, flagged; as many as the journal holds.
    let invalid: i64 = {
        let rows = c
            .query(
                "SELECT snils FROM journal.students WHERE snils IS NOT NULL",
                &[],
            )
            .await
            .unwrap();
        rows.iter()
            .filter(|r| vitrina::identifiers::normalize_snils(r.get::<_, &str>(0)).is_err())
            .count() as i64
    };
    assert!(invalid > 0);
    assert_eq!(
        flagged_students, invalid,
        "every student with an invalid SNILS is published with the flag"
    );
    assert!(
        new_column_lesson,
        "an added column is ignored, the row still published"
    );
    assert_eq!(
        truncates, 3,
        "TRUNCATE reaches every partition of the topic"
    );
    assert!(grade_after, "changes after the drift still flow");
    let reasons: Vec<String> = dead
        .iter()
        .map(|d| d["reason"].as_str().unwrap().to_string())
        .collect();
    assert!(
        reasons
            .iter()
            .any(|r| r.contains("`pe_group`") && r.contains("journal.medical_exemptions")),
        "a dropped mapped column is dead-lettered with the reason: {reasons:?}"
    );
    assert!(
        reasons
            .iter()
            .any(|r| r.contains("journal.subjects") && r.contains("Bool")),
        "an unparsable value is dead-lettered: {reasons:?}"
    );
    for d in &dead {
        assert!(d["lsn"].as_str().unwrap().contains('/'));
        assert!(
            !d.to_string().contains("maybe"),
            "no values in dead letters"
        );
    }
}

fn run_capture_to_exit(db: &str, name: &str) -> (Option<i32>, String) {
    common::run_capture_to_exit_with(db, name, &[])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_capture_on_the_same_slot_is_refused_with_a_hint() {
    let cfg = common::journal_db("t_cap_twice").await;
    let db = common::db_name(&cfg);
    let name = format!("captwice{}", std::process::id());
    let first = common::spawn_capture(&db, &name);
    common::wait_caught_up(&cfg, &name, Duration::from_secs(180)).await;
    let mut first = first;
    let (code, err) = run_capture_to_exit(&db, &name);
    assert!(
        first.try_wait().unwrap().is_none(),
        "the first capture keeps running: {}",
        common::log_tail(&name, 40)
    );
    stop(first);
    assert_eq!(code, Some(1), "{err}");
    assert!(
        err.contains("is active in process") && err.contains("another capture"),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_publication_missing_a_mapped_table_is_refused_with_a_hint() {
    let cfg = common::journal_db("t_cap_pub").await;
    let db = common::db_name(&cfg);
    let name = format!("cappub{}", std::process::id());
    let c = vitrina::pg::connect(&cfg).await.unwrap();
    c.batch_execute(&format!(
        "CREATE PUBLICATION {name} FOR TABLE journal.grades"
    ))
    .await
    .unwrap();
    let (code, err) = run_capture_to_exit(&db, &name);
    assert_eq!(code, Some(1), "{err}");
    assert!(
        err.contains(&format!("ALTER PUBLICATION {name} ADD TABLE"))
            && err.contains("journal.students"),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_role_without_replication_is_refused_with_a_hint() {
    let cfg = common::journal_db("t_cap_role").await;
    let db = common::db_name(&cfg);
    let name = format!("caprole{}", std::process::id());
    let c = vitrina::pg::connect(&cfg).await.unwrap();
    c.batch_execute(&format!(
        "DROP ROLE IF EXISTS {name}; CREATE ROLE {name} LOGIN NOREPLICATION"
    ))
    .await
    .unwrap();
    // The local stack always connects as its superuser: point capture at
    // the same server as an external one, as this role.
    let port = cfg.get_ports()[0].to_string();
    let (code, err) = common::run_capture_to_exit_with(
        &db,
        &name,
        &[
            ("VITRINA_JOURNAL__HOST", "127.0.0.1"),
            ("VITRINA_JOURNAL__PORT", &port),
            ("VITRINA_JOURNAL__USER", &name),
        ],
    );
    let _ = c.batch_execute(&format!("DROP ROLE {name}")).await;
    assert_eq!(code, Some(1), "{err}");
    assert!(
        err.contains(&format!("user `{name}` lacks a privilege"))
            && err.contains(&format!("ALTER ROLE {name} REPLICATION")),
        "{err}"
    );
}

/// `wal_level = replica`: capture refuses before touching Kafka, saying
/// which setting to change.
#[test]
fn wal_level_other_than_logical_is_refused_with_a_hint() {
    let cluster = common::OwnCluster::start("walreplica", "wal_level = replica\n");
    let env = cluster.as_journal();
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let (code, err) = common::run_capture_to_exit_with("postgres", "capwal", &env);
    drop(cluster);
    assert_eq!(code, Some(1), "{err}");
    assert!(
        err.contains("wal_level is `replica`") && err.contains("set wal_level = logical"),
        "{err}"
    );
}

/// The `wal_status` of slot `caplost`.
async fn wal_status(c: &tokio_postgres::Client) -> Option<String> {
    c.query_one(
        "SELECT wal_status FROM pg_replication_slots WHERE slot_name = 'caplost'",
        &[],
    )
    .await
    .unwrap()
    .get(0)
}

/// A slot whose WAL outgrew `max_slot_wal_keep_size` is lost. With
/// `capture.recover_lost_slot` off capture says so, and how to start again,
/// instead of streaming with a gap; with it on (the default) capture drops
/// the slot and makes a new one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_invalidated_slot_is_refused_with_a_hint_or_recovered() {
    let cluster = common::OwnCluster::start("slotlost", "max_slot_wal_keep_size = '1MB'\n");
    let mut c = vitrina::pg::connect(&cluster.config()).await.unwrap();
    vitrina::journal::migrate(&mut c).await.unwrap();
    c.batch_execute("SELECT pg_create_logical_replication_slot('caplost', 'pgoutput')")
        .await
        .unwrap();
    // WAL past the slot's keep size, then a checkpoint invalidates it.
    for _ in 0..4 {
        c.batch_execute(
            "CREATE TABLE IF NOT EXISTS filler (x int);
             INSERT INTO filler SELECT generate_series(1, 50000);
             SELECT pg_switch_wal();",
        )
        .await
        .unwrap();
    }
    c.batch_execute("CHECKPOINT").await.unwrap();
    let status: String = wal_status(&c).await.expect("the slot exists");
    assert_eq!(status, "lost", "the setup must invalidate the slot");
    let env = cluster.as_journal();
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let log = format!("caplost{}", std::process::id());
    let mut off = env.clone();
    off.push(("VITRINA_CAPTURE__RECOVER_LOST_SLOT", "false"));
    let (code, err) = common::run_capture_to_exit_with("postgres", "caplost", &off);
    assert_eq!(code, Some(1), "{err}");
    assert!(
        err.contains("replication slot `caplost` was invalidated")
            && err.contains("capture.recover_lost_slot = true"),
        "{err}"
    );
    // Recovered: the slot dropped and made again, capture streaming from it.
    let child = common::spawn_vitrina("capture", "postgres", "caplost", &log, &env);
    common::wait_caught_up(&cluster.config(), "caplost", Duration::from_secs(120)).await;
    let status = wal_status(&c).await;
    assert_ne!(status.as_deref(), Some("lost"), "a new slot streams");
    assert!(
        common::log_tail(&log, 200).contains("was invalidated (max_slot_wal_keep_size): dropped"),
        "{}",
        common::log_tail(&log, 30)
    );
    stop(child);
    drop(c);
    drop(cluster);
}

/// Least privilege: capture runs as a role with REPLICATION and SELECT on
/// the journal only. Without a publication it says what the DBA runs; with
/// the DBA's publication it captures everything.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn capture_runs_as_a_role_with_replication_and_select_only() {
    let cfg = common::journal_db("t_cap_least").await;
    let db = common::db_name(&cfg);
    load::load(&cfg, &spec(43, 0.02), 2, false, false)
        .await
        .unwrap();
    let name = format!("capleast{}", std::process::id());
    let c = vitrina::pg::connect(&cfg).await.unwrap();
    c.batch_execute(&format!(
        "DROP ROLE IF EXISTS {name}; CREATE ROLE {name} LOGIN REPLICATION;
         GRANT USAGE ON SCHEMA journal TO {name};
         GRANT SELECT ON ALL TABLES IN SCHEMA journal TO {name};"
    ))
    .await
    .unwrap();
    let port = cfg.get_ports()[0].to_string();
    let env = [
        ("VITRINA_JOURNAL__HOST", "127.0.0.1"),
        ("VITRINA_JOURNAL__PORT", port.as_str()),
        ("VITRINA_JOURNAL__USER", name.as_str()),
    ];
    let (code, err) = common::run_capture_to_exit_with(&db, &name, &env);
    assert_eq!(code, Some(1), "{err}");
    assert!(
        err.contains("a DBA runs: CREATE PUBLICATION") && err.contains("\"grades\""),
        "{err}"
    );
    // The DBA creates it; capture needs nothing more.
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
    let mut child = common::spawn_vitrina("capture", &db, &name, &name, &env);
    common::wait_caught_up(&cfg, &name, Duration::from_secs(240)).await;
    let report = common::spawn_workload(&cfg, 4, 0, 8).await.unwrap();
    assert_eq!(report.failed_transactions, 0);
    common::wait_caught_up(&cfg, &name, Duration::from_secs(240)).await;
    let messages = common::read_all(&name);
    common::kill(&mut child, libc::SIGTERM);
    let (got, _) = fold(&messages, &name);
    common::assert_same_state(
        "topics from a least-privilege capture vs journal",
        &got,
        &common::journal_state(&cfg).await,
    );
    let super_: bool = c
        .query_one("SELECT rolsuper FROM pg_roles WHERE rolname = $1", &[&name])
        .await
        .unwrap()
        .get(0);
    assert!(!super_);
}

/// The compose stack's journal roles (docker/initdb/journal.sql), applied
/// as the postgres image applies them, on a cluster of the test's own: the
/// journal's owner creates the tables afterwards, and capture runs as
/// `vitrina_capture` (REPLICATION, SELECT by default privileges, the
/// DBA's publication) end to end.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_compose_journal_roles_let_capture_run_without_superuser() {
    let cluster = common::OwnCluster::start("composeroles", "");
    let admin = vitrina::pg::connect(&cluster.config()).await.unwrap();
    // The image's POSTGRES_USER is the cluster's superuser and owns POSTGRES_DB.
    for sql in [
        "CREATE ROLE journal_owner LOGIN SUPERUSER",
        "CREATE DATABASE journal OWNER journal_owner",
    ] {
        admin.batch_execute(sql).await.unwrap();
    }
    let mut owner = cluster.config();
    owner.user("journal_owner").dbname("journal");
    let c = vitrina::pg::connect(&owner).await.unwrap();
    let init = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("docker/initdb/journal.sql"),
    )
    .unwrap();
    c.batch_execute(&init).await.unwrap();
    // Then the school system creates its tables (here: the reference journal).
    let mut mc = vitrina::pg::connect(&owner).await.unwrap();
    vitrina::journal::migrate(&mut mc).await.unwrap();
    load::load(&owner, &spec(44, 0.02), 2, false, false)
        .await
        .unwrap();
    let compose = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("docker/compose.yml"),
    )
    .unwrap();
    assert!(
        compose.contains("VITRINA_JOURNAL__USER: vitrina_capture"),
        "compose runs capture as the role the init script makes"
    );
    let name = format!("composeroles{}", std::process::id());
    let port = cluster.port.to_string();
    let env = [
        ("VITRINA_JOURNAL__HOST", "127.0.0.1"),
        ("VITRINA_JOURNAL__PORT", port.as_str()),
        ("VITRINA_JOURNAL__USER", "vitrina_capture"),
        ("VITRINA_CAPTURE__PUBLICATION", "vitrina"),
    ];
    let mut child = common::spawn_vitrina("capture", "journal", &name, &name, &env);
    common::wait_caught_up(&owner, &name, Duration::from_secs(240)).await;
    let report = common::spawn_workload(&owner, 3, 0, 8).await.unwrap();
    assert_eq!(report.failed_transactions, 0);
    common::wait_caught_up(&owner, &name, Duration::from_secs(240)).await;
    let messages = common::read_all(&name);
    common::kill(&mut child, libc::SIGTERM);
    let (got, _) = fold(&messages, &name);
    common::assert_same_state(
        "topics from the compose capture role vs journal",
        &got,
        &common::journal_state(&owner).await,
    );
    let row = c
        .query_one(
            "SELECT rolsuper, rolreplication FROM pg_roles WHERE rolname = 'vitrina_capture'",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(
        (row.get::<_, bool>(0), row.get::<_, bool>(1)),
        (false, true)
    );
}

/// A fatal error of the idempotent producer (librdkafka's own test hook,
/// raised by a failpoint while the initial load publishes) restarts
/// capture with a fresh producer instead of stopping it for good, and
/// loses nothing: the topics fold to the journal after a live workload.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fatal_producer_error_restarts_capture_with_a_fresh_producer_and_loses_nothing() {
    let cfg = common::journal_db("t_cap_fatal").await;
    let db = common::db_name(&cfg);
    load::load(&cfg, &spec(44, 0.0), 2, false, false)
        .await
        .unwrap();
    let name = format!("capfatal{}", std::process::id());
    let mut child = common::spawn_vitrina(
        "capture",
        &db,
        &name,
        &name,
        &[common::failpoints("capture-producer-fatal=return(2000)")],
    );
    let report = common::spawn_workload(&cfg, 15, 200, 4).await.unwrap();
    assert_eq!(report.failed_transactions, 0);
    common::wait_caught_up(&cfg, &name, Duration::from_secs(240)).await;
    assert!(
        child.try_wait().unwrap().is_none(),
        "capture runs on after the fatal error:\n{}",
        common::log_tail(&name, 30)
    );
    let messages = common::read_all(&name);
    stop(child);
    let log = common::log_tail(&name, 100_000);
    assert!(
        log.contains("failpoint: raising a fatal producer error"),
        "the fault was raised:\n{}",
        common::log_tail(&name, 30)
    );
    assert!(
        log.contains("transient failure; restarting"),
        "capture restarted itself:\n{}",
        common::log_tail(&name, 30)
    );
    let (got, _) = fold(&messages, &name);
    common::assert_same_state(
        "topics vs journal after a fatal producer error",
        &got,
        &common::journal_state(&cfg).await,
    );
}

/// Keys land where Apache Kafka's Java producer puts them (murmur2), so a
/// JVM consumer or a Streams application co-partitions with the topics:
/// every keyed event and restricted record, checked by kafka-python's
/// murmur2. Then a capture configured with another partitioner is refused
/// on the same slot, naming both and the way to move.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_land_where_a_java_producer_puts_them_and_a_partitioner_change_is_refused() {
    let cfg = common::journal_db("t_cap_murmur").await;
    let db = common::db_name(&cfg);
    load::load(&cfg, &spec(45, 0.0), 2, false, false)
        .await
        .unwrap();
    let name = format!("capmurmur{}", std::process::id());
    let child = common::spawn_capture(&db, &name);
    let report = common::spawn_workload(&cfg, 5, 50, 6).await.unwrap();
    assert_eq!(report.failed_transactions, 0);
    common::wait_caught_up(&cfg, &name, Duration::from_secs(240)).await;
    let messages = common::read_all(&name);
    stop(child);
    slot_free(&cfg, &name).await;

    let reg = Registry::new();
    let detail = format!("{name}.medical_detail.v1");
    let mut lines = String::new();
    for (topic, partition, key, payload) in &messages {
        let keyed = if *topic == detail {
            !payload.is_empty()
        } else {
            // Truncates and watermarks go to every partition by number.
            matches!(reg.decode_message(payload), Ok(Message::Event(e)) if e.op != Op::Truncate)
        };
        if !keyed {
            continue;
        }
        let hex: String = key.iter().map(|b| format!("{b:02x}")).collect();
        // capture.partitions (3) for every topic the tests make.
        lines.push_str(
            &serde_json::json!({"topic": topic, "partition": partition, "key": hex, "partitions": 3})
                .to_string(),
        );
        lines.push('\n');
    }
    let file = std::env::temp_dir().join(format!("vitrina-murmur2-{}.jsonl", std::process::id()));
    std::fs::write(&file, lines).unwrap();
    let script =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/murmur2_partitions.py");
    let out = std::process::Command::new("python3")
        .arg(&script)
        .arg(&file)
        .output()
        .expect("python3 runs (scripts/bootstrap installs kafka-python)");
    let _ = std::fs::remove_file(&file);
    assert!(
        out.status.success(),
        "kafka-python's murmur2 disagrees: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let said: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    eprintln!("partitions checked by kafka-python: {said}");
    assert!(said["checked"].as_u64().unwrap() > 1000, "{said}");
    assert!(
        said["topics"].get(&detail).is_some(),
        "restricted records checked: {said}"
    );

    let (code, err) = common::run_capture_to_exit_with(
        &db,
        &name,
        &[("VITRINA_KAFKA__PARTITIONER", "consistent_random")],
    );
    assert_eq!(code, Some(1), "{err}");
    assert!(
        err.contains("published its events with kafka.partitioner = \"murmur2_random\"")
            && err.contains("new capture.topic_prefix"),
        "{err}"
    );
}

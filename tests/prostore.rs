//! The ProStore upload feed, read by an Avro implementation that is not
//! ours (fastavro's Object Container File reader) and folded with
//! ProStore's delta semantics into PostgreSQL: the result equals the
//! showcase, table by table, after the feed died mid-delta and was killed
//! under a workload.

mod common;

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use vitrina::connections::KafkaEndpoint;
use vitrina::events::contract::{Class, ENTITIES};
use vitrina::prostore::feed::{read_manifest, Commit, Manifest};
use vitrina::region::load;

/// The committed deltas, each once, in order; every plan before its commit.
fn commits(manifest: &[Manifest]) -> Vec<Commit> {
    let mut out: Vec<Commit> = Vec::new();
    let mut planned: Option<u64> = None;
    for m in manifest {
        match m {
            Manifest::Plan(p) => {
                assert_eq!(p.delta, out.len() as u64, "plans are numbered in order");
                planned = Some(p.delta);
            }
            Manifest::Commit(c) if out.last().is_some_and(|l| l.delta == c.delta) => {}
            Manifest::Commit(c) => {
                assert_eq!(
                    planned,
                    Some(c.delta),
                    "commit {} follows its plan",
                    c.delta
                );
                out.push(c.clone());
            }
        }
    }
    out
}

/// The offset of the last event (not watermark) on every event partition.
async fn last_events(kafka: &KafkaEndpoint, prefix: &str) -> HashMap<String, i64> {
    let ends = vitrina::kafka::end_offsets(kafka, &vitrina::kafka::event_topics(prefix))
        .await
        .unwrap();
    let registry = vitrina::events::codec::Registry::new();
    let what: Vec<(String, i32, i64)> = ends.keys().map(|(t, p)| (t.clone(), *p, 0)).collect();
    let k = kafka.clone();
    let records = tokio::task::spawn_blocking(move || {
        vitrina::kafka::read_partitions_blocking(&k, &what, Duration::from_secs(120))
    })
    .await
    .unwrap()
    .unwrap();
    let mut out = HashMap::new();
    for ((t, p), records) in records {
        if let Some(o) = records
            .iter()
            .filter(|(_, _, v)| {
                matches!(
                    registry.decode_message(v.as_deref().unwrap_or_default()),
                    Ok(vitrina::events::Message::Event(_))
                )
            })
            .map(|(o, ..)| *o)
            .max()
        {
            out.insert(format!("{t}[{p}]"), o);
        }
    }
    out
}

/// Waits until the committed deltas hold every event the topics hold (the
/// watermarks after them need no delta).
async fn wait_fed(
    kafka: &KafkaEndpoint,
    prefix: &str,
    log: &str,
    timeout: Duration,
) -> Vec<Commit> {
    let deadline = Instant::now() + timeout;
    let last = last_events(kafka, prefix).await;
    loop {
        let (k, p) = (kafka.clone(), prefix.to_string());
        let manifest = tokio::task::spawn_blocking(move || read_manifest(&k, &p))
            .await
            .unwrap()
            .unwrap();
        let c = commits(&manifest);
        let short: Vec<String> = last
            .iter()
            .filter(|(tp, o)| {
                c.last()
                    .and_then(|l| l.to.get(*tp))
                    .is_none_or(|to| to <= *o)
            })
            .map(|(tp, o)| format!("{tp}: event at {o}"))
            .collect();
        if short.is_empty() {
            return c;
        }
        assert!(
            Instant::now() < deadline,
            "the feed did not take in every event within {timeout:?}: {} partition(s) short, e.g. {:?}\n{}",
            short.len(),
            &short[..short.len().min(3)],
            common::log_tail(log, 30)
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prostore_deltas_read_by_fastavro_fold_into_the_showcase() {
    let cfg = common::journal_db("t_prostore").await;
    let db = common::db_name(&cfg);
    load::load(
        &cfg,
        &common::small_region(91, 1, 15, 0.02),
        2,
        false,
        false,
    )
    .await
    .unwrap();
    let show = common::fresh_db("t_prostore_show").await;
    let show_db = common::db_name(&show);
    let name = format!("prostore{}", std::process::id());
    let (log_c, log_p, log_f) = (
        format!("{name}-capture"),
        format!("{name}-project"),
        format!("{name}-prostore"),
    );
    let env: Vec<(&str, &str)> = vec![
        ("VITRINA_SHOWCASE__DATABASE", &show_db),
        ("VITRINA_PROJECTOR__METRICS_LISTEN", "127.0.0.1:0"),
        ("VITRINA_PROSTORE__METRICS_LISTEN", "127.0.0.1:0"),
        ("VITRINA_PROSTORE__DELTA_INTERVAL_MS", "2000"),
        // Several messages per table and delta.
        ("VITRINA_PROSTORE__RECORDS_PER_MESSAGE", "300"),
    ];
    let mut capture = common::spawn_vitrina("capture", &db, &name, &log_c, &env);
    let mut projector = common::spawn_vitrina("project", &db, &name, &log_p, &env);
    common::wait_caught_up(&cfg, &name, Duration::from_secs(240)).await;

    // The first feed dies after 3 messages of its first delta, before the
    // commit: the next one must finish that delta, adding only what is
    // missing, although its message limit is another (the plan's counts:
    // files split at 8 KiB; a key in two files would be in the delta twice).
    let mut dying = env.clone();
    dying.push(common::failpoints("prostore-crash-before-commit=return(3)"));
    dying.push(("VITRINA_CAPTURE__MAX_MESSAGE_BYTES", "8192"));
    let mut feed = common::spawn_vitrina("prostore feed", &db, &name, &log_f, &dying);
    let status = feed.wait().unwrap();
    assert!(
        !status.success() && common::log_tail(&log_f, 100).contains("failpoint: crashing"),
        "the failpoint ends the feed ({status:?}):\n{}",
        common::log_tail(&log_f, 30)
    );
    let kafka = KafkaEndpoint::new(common::stack().brokers());

    let load_task = common::spawn_workload(&cfg, 20, 0, 17);
    let mut feed = common::spawn_vitrina("prostore feed", &db, &name, &log_f, &env);
    for _ in 0..2 {
        tokio::time::sleep(Duration::from_secs(6)).await;
        common::kill(&mut feed, libc::SIGKILL);
        feed = common::spawn_vitrina("prostore feed", &db, &name, &log_f, &env);
    }
    assert_eq!(load_task.await.unwrap().failed_transactions, 0);
    let log = common::log_tail(&log_f, 100_000);
    assert!(
        log.contains("finishing a delta planned before a restart"),
        "the delta left by the hook is finished:\n{}",
        common::log_tail(&log_f, 30)
    );
    // Everything the workload wrote is on the topics (capture may lag on a
    // busy machine), in the showcase, then in committed deltas.
    common::wait_caught_up(&cfg, &name, Duration::from_secs(240)).await;
    common::wait_projected(&show, &name, Duration::from_secs(240)).await;
    let commits = wait_fed(&kafka, &name, &log_f, Duration::from_secs(240)).await;

    // Every upload message is in exactly one committed delta's range.
    let dir = std::env::temp_dir().join(format!("vitrina-prostore-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let mut covered: HashMap<String, BTreeMap<i64, u64>> = HashMap::new();
    for c in &commits {
        for t in &c.tables {
            for o in t.first_offset..=t.last_offset {
                assert!(
                    covered
                        .entry(t.topic.clone())
                        .or_default()
                        .insert(o, c.delta)
                        .is_none(),
                    "{}@{o} is in two deltas",
                    t.topic
                );
            }
            assert_eq!(
                (t.last_offset - t.first_offset + 1) as usize,
                t.messages,
                "delta {} {}: its messages are contiguous",
                c.delta,
                t.table
            );
        }
    }
    for e in ENTITIES {
        let topic = vitrina::prostore::upload_topic(&name, e.name);
        let (k, t) = (kafka.clone(), topic.clone());
        let records = tokio::task::spawn_blocking(move || {
            vitrina::kafka::read_partition_blocking(&k, &t, 0, 0, Duration::from_secs(60))
        })
        .await
        .unwrap()
        .unwrap();
        let mine = covered.remove(&topic).unwrap_or_default();
        assert_eq!(
            records.len(),
            mine.len(),
            "{topic}: every message belongs to a committed delta (no orphans, no duplicates)"
        );
        for (offset, key, value) in records {
            let delta = mine[&offset];
            let key = String::from_utf8(key.unwrap()).unwrap();
            assert!(
                key.starts_with(&format!("{delta}:{}:", e.name)),
                "{topic}@{offset}: key {key}"
            );
            let path = dir.join(delta.to_string()).join(e.name);
            std::fs::create_dir_all(&path).unwrap();
            std::fs::write(path.join(format!("{offset}.avro")), value.unwrap()).unwrap();
        }
    }

    // fastavro reads them; the fold applies them delta by delta.
    let out = std::process::Command::new("python3")
        .arg(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/fastavro_ocf.py"
        ))
        .arg(&dir)
        .output()
        .expect("python3 runs (scripts/bootstrap installs fastavro)");
    assert!(
        out.status.success(),
        "fastavro refused the feed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut by_delta: BTreeMap<u64, Vec<serde_json::Value>> = BTreeMap::new();
    for line in String::from_utf8(out.stdout).unwrap().lines() {
        let v: serde_json::Value = serde_json::from_str(line).unwrap();
        by_delta
            .entry(v["delta"].as_u64().unwrap())
            .or_default()
            .push(v);
    }
    let mut client = vitrina::pg::connect(&show).await.unwrap();
    client.batch_execute("CREATE SCHEMA fold").await.unwrap();
    for e in ENTITIES {
        client
            .batch_execute(&vitrina::showcase::table_ddl("fold", e))
            .await
            .unwrap();
    }
    let committed: HashMap<u64, &Commit> = commits.iter().map(|c| (c.delta, c)).collect();
    let mut lag_us: Vec<i64> = Vec::new();
    let mut records = 0;
    for (delta, rows) in &by_delta {
        let c = committed[delta];
        let tx = client.build_transaction().start().await.unwrap();
        for t in &c.truncate {
            tx.execute(
                &format!(
                    "DELETE FROM fold.{} WHERE (source_commit_lsn, source_lsn) < ($1, $2)",
                    t.table
                ),
                &[&(t.commit_lsn as i64), &(t.lsn as i64)],
            )
            .await
            .unwrap();
        }
        for e in ENTITIES {
            let mine: Vec<&serde_json::Value> =
                rows.iter().filter(|r| r["table"] == e.name).collect();
            let (del, up): (Vec<&serde_json::Value>, Vec<&serde_json::Value>) =
                mine.iter().copied().partition(|r| r["sys_op"] == 1);
            let keys: Vec<String> = del
                .iter()
                .map(|r| r["row"]["key"].as_str().unwrap().to_string())
                .collect();
            tx.execute(
                &format!("DELETE FROM fold.{} WHERE key = ANY($1)", e.name),
                &[&keys],
            )
            .await
            .unwrap();
            let cols: Vec<String> = ["key"]
                .into_iter()
                .chain(e.fields.iter().map(|f| f.name))
                .chain([
                    "source_commit_lsn",
                    "source_lsn",
                    "source_commit_time",
                    "event_id",
                ])
                .map(String::from)
                .collect();
            let json = serde_json::Value::Array(
                up.iter()
                    .map(|r| {
                        let mut row = r["row"].clone();
                        // Microseconds → PostgreSQL's own literals.
                        for f in e
                            .fields
                            .iter()
                            .map(|f| (f.name, f.ty))
                            .chain([("source_commit_time", vitrina::events::Ty::Timestamp)])
                        {
                            let v = &mut row[f.0];
                            if let Some(us) = v.as_i64() {
                                match f.1 {
                                    vitrina::events::Ty::Timestamp => {
                                        *v = serde_json::json!(
                                            chrono::DateTime::from_timestamp_micros(us)
                                                .unwrap()
                                                .to_rfc3339()
                                        )
                                    }
                                    vitrina::events::Ty::Time => {
                                        *v = serde_json::json!(format!(
                                            "{:02}:{:02}:{:02}.{:06}",
                                            us / 3_600_000_000,
                                            us / 60_000_000 % 60,
                                            us / 1_000_000 % 60,
                                            us % 1_000_000
                                        ))
                                    }
                                    _ => {}
                                }
                            }
                        }
                        row
                    })
                    .collect(),
            );
            for r in &up {
                lag_us
                    .push(c.committed_at_micros - r["row"]["source_commit_time"].as_i64().unwrap());
            }
            records += mine.len();
            let list = cols.join(", ");
            let set: Vec<String> = cols[1..]
                .iter()
                .map(|c| format!("{c} = EXCLUDED.{c}"))
                .collect();
            tx.execute(
                &format!(
                    "INSERT INTO fold.{t} ({list}) SELECT {list} FROM json_populate_recordset(NULL::fold.{t}, $1::text::json)
                     ON CONFLICT (key) DO UPDATE SET {set}",
                    t = e.name,
                    set = set.join(", ")
                ),
                &[&json.to_string()],
            )
            .await
            .unwrap();
        }
        tx.commit().await.unwrap();
    }
    assert!(records > 0);

    // The fold equals the showcase's live rows, medical detail aside.
    for e in ENTITIES {
        let mut show_cols = vec!["key".to_string()];
        let mut fold_cols = vec!["key".to_string()];
        for f in e.fields {
            fold_cols.push(f.name.to_string());
            show_cols.push(match f.class {
                Class::Medical => format!("NULL::text AS {}", f.name),
                Class::MedicalWhen(w, v) => {
                    format!(
                        "CASE WHEN {w} = '{v}' THEN NULL ELSE {n} END AS {n}",
                        n = f.name
                    )
                }
                Class::Plain | Class::FreeText => f.name.to_string(),
            });
        }
        for c in [
            "source_commit_lsn",
            "source_lsn",
            "source_commit_time",
            "event_id",
        ] {
            show_cols.push(c.into());
            fold_cols.push(c.into());
        }
        let q = format!(
            "SELECT (SELECT count(*) FROM (SELECT {s} FROM showcase.{t} WHERE NOT deleted EXCEPT ALL SELECT {f} FROM fold.{t}) a),
                    (SELECT count(*) FROM (SELECT {f} FROM fold.{t} EXCEPT ALL SELECT {s} FROM showcase.{t} WHERE NOT deleted) b),
                    (SELECT count(*) FROM fold.{t})",
            s = show_cols.join(", "),
            f = fold_cols.join(", "),
            t = e.name
        );
        let row = client.query_one(&q, &[]).await.unwrap();
        let (missing, extra, n): (i64, i64, i64) = (row.get(0), row.get(1), row.get(2));
        assert_eq!(
            (missing, extra),
            (0, 0),
            "{}: the fold of the ProStore deltas ({n} rows) differs from the showcase",
            e.name
        );
    }
    lag_us.sort_unstable();
    let q = |p: f64| lag_us[((lag_us.len() - 1) as f64 * p) as usize] as f64 / 1e6;
    eprintln!(
        "prostore: {} deltas, {records} records; journal commit → delta committed p50 {:.1} s, p99 {:.1} s (includes the initial load and the restarts)",
        commits.len(),
        q(0.5),
        q(0.99)
    );
    // The last feed says how fresh it is: capture's watermarks keep it
    // within a delta interval or two of now.
    let listen = common::log_tail(&log_f, 100_000)
        .lines()
        .filter(|l| l.contains("serving /metrics"))
        .filter_map(|l| l.split_once("127.0.0.1:"))
        .map(|(_, rest)| {
            let port: String = rest.chars().take_while(char::is_ascii_digit).collect();
            format!("127.0.0.1:{port}")
        })
        .next_back()
        .expect("the feed logs its metrics address");
    let deadline = Instant::now() + Duration::from_secs(30);
    let behind = loop {
        let (_, metrics) = common::http_get(&listen, "/metrics");
        let fed = metrics
            .lines()
            .find_map(|l| l.strip_prefix("vitrina_prostore_fed_through_seconds "))
            .and_then(|v| v.trim().parse::<f64>().ok());
        if let Some(fed) = fed {
            break chrono::Utc::now().timestamp_micros() as f64 / 1e6 - fed;
        }
        assert!(
            Instant::now() < deadline,
            "no fed-through gauge:\n{metrics}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    assert!(
        (0.0..30.0).contains(&behind),
        "the idle feed is fed through the last watermarks: {behind:.1} s behind"
    );
    common::kill(&mut feed, libc::SIGTERM);
    common::kill(&mut projector, libc::SIGTERM);
    common::kill(&mut capture, libc::SIGTERM);
    let _ = std::fs::remove_dir_all(&dir);
}

//! The projector against real PostgreSQL and broker: after a live workload
//! through capture and projector the showcase equals the journal under the
//! same mapping, also when the projector is killed with SIGKILL at random
//! moments; freshness is truthful.

mod common;

use std::time::Duration;

use vitrina::region::load;

async fn freshness(c: &tokio_postgres::Client) -> (f64, String) {
    let r = c
        .query_one("SELECT extract(epoch FROM now() - fresh_as_of)::float8, sla_state FROM showcase.status", &[])
        .await
        .unwrap();
    (
        r.get::<_, Option<f64>>(0).unwrap_or(f64::INFINITY),
        r.get::<_, String>(1),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn showcase_equals_the_journal_after_a_workload_with_the_projector_killed_ten_times() {
    let cfg = common::journal_db("t_proj").await;
    let db = common::db_name(&cfg);
    let spec = common::small_region(51, 1, 40, 0.02);
    load::load(&cfg, &spec, 2, false, false).await.unwrap();
    let showcase = common::fresh_db("t_proj_show").await;
    let show_db = common::db_name(&showcase);
    let name = format!("proj{}", std::process::id());
    let mut capture = common::spawn_capture(&db, &name);
    common::wait_caught_up(&cfg, &name, Duration::from_secs(240)).await;
    let mut projector = common::spawn_projector(&db, &name, &show_db);

    let load_task = common::spawn_workload(&cfg, 30, 200, 5);
    let mut rng = vitrina::region::rng::Rng::new(std::process::id() as u64);
    for _ in 0..10 {
        tokio::time::sleep(Duration::from_millis(rng.range(500, 2500) as u64)).await;
        common::kill(&mut projector, libc::SIGKILL);
        projector = common::spawn_projector(&db, &name, &show_db);
    }
    // The last projector serves its endpoints on a known port, with a
    // short SLA budget so that stopping capture breaches it in seconds.
    common::kill(&mut projector, libc::SIGKILL);
    let listen = format!("127.0.0.1:{}", common::free_port());
    projector = common::spawn_vitrina(
        "project",
        &db,
        &name,
        &format!("{name}-projector"),
        &[
            ("VITRINA_SHOWCASE__DATABASE", show_db.as_str()),
            ("VITRINA_PROJECTOR__METRICS_LISTEN", listen.as_str()),
            ("VITRINA_PROJECTOR__SLA_BUDGET_S", "15"),
            ("VITRINA_PROJECTOR__AT_RISK_S", "10"),
        ],
    );
    let report = load_task.await.unwrap();
    assert_eq!(report.failed_transactions, 0);
    common::assert_showcase_equals_journal("showcase vs journal", &cfg, &name, &showcase).await;

    // Freshness is truthful: near the heartbeat interval while capture runs
    // (within 30 s of catching up: on a loaded machine a catch-up's last
    // batches can hold it above 10 s for a while)…
    let c = vitrina::pg::connect(&showcase).await.unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        tokio::time::sleep(Duration::from_secs(2)).await;
        let (fresh, state) = freshness(&c).await;
        if fresh < 10.0 && state == "ok" {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "freshness {fresh} s, {state}"
        );
    }
    assert_eq!(common::http_get(&listen, "/healthz").0, 200);
    assert_eq!(
        common::http_get(&listen, "/readyz"),
        (200, "ready\n".into())
    );
    let (_, metrics) = common::http_get(&listen, "/metrics");
    for name in [
        "vitrina_showcase_freshness_seconds",
        "vitrina_showcase_entity_freshness_seconds{entity=\"grade\"}",
        "vitrina_showcase_sla_state{state=\"ok\"} 1",
        "vitrina_projector_consumer_lag_messages{",
        "vitrina_projector_consumer_lag_seconds{",
        "vitrina_projector_commit_to_visible_seconds_bucket{entity=\"grade\"",
        "vitrina_projector_batch_seconds_bucket",
    ] {
        assert!(metrics.contains(name), "/metrics lacks {name}:\n{metrics}");
    }
    // …and it grows by about the time capture is stopped, until the SLA
    // is breached and the projector is no longer ready.
    // From the steady state (a loaded machine may leave the projector a
    // few seconds behind at this point).
    // Up to 90 s: under the full suite (three tests at a time on two
    // cores) the projector was seen 10 s behind after 30.
    let settle = std::time::Instant::now() + Duration::from_secs(90);
    while freshness(&c).await.0 > 2.0 && std::time::Instant::now() < settle {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let (before, _) = freshness(&c).await;
    common::kill(&mut capture, libc::SIGTERM);
    tokio::time::sleep(Duration::from_secs(6)).await;
    let (stale, _) = freshness(&c).await;
    // The status row is refreshed every second: ±1 s, plus a heartbeat.
    // A projector still `before` seconds behind when capture stops catches
    // up meanwhile, so the growth can be short of 6 s by that lag, but
    // freshness must still end at least 4.5 s and 1 s above where it was.
    assert!(
        stale >= (before + 1.0).max(4.5) && stale - before <= 8.5,
        "freshness grows by about the 6 s capture is down: {before} → {stale}"
    );
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while freshness(&c).await.1 != "breached" {
        assert!(
            std::time::Instant::now() < deadline,
            "the SLA is breached 15 s after capture stopped"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (code, why) = common::http_get(&listen, "/readyz");
    assert_eq!((code, why.as_str()), (503, "freshness SLA breached\n"));
    assert_eq!(
        common::http_get(&listen, "/healthz").0,
        200,
        "alive though not ready"
    );
    let (_, metrics) = common::http_get(&listen, "/metrics");
    // At least this breach (a loaded machine may have seen an earlier one
    // while the last projector caught up).
    let breaches: f64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("vitrina_showcase_sla_breaches_total "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0.0);
    assert!(breaches >= 1.0, "{metrics}");
    assert!(
        metrics.contains("vitrina_projector_catch_up_mode 1"),
        "{metrics}"
    );
    common::kill(&mut projector, libc::SIGTERM);
}

/// `vitrina replay <args> --json` against showcase database `showcase`.
fn replay(db: &str, name: &str, showcase: &str, args: &[&str]) -> serde_json::Value {
    let args: Vec<&str> = ["replay"]
        .iter()
        .chain(args)
        .chain(&["--json"])
        .copied()
        .collect();
    let out = common::run_vitrina(
        db,
        name,
        &args,
        &[
            ("VITRINA_SHOWCASE__DATABASE", showcase),
            ("VITRINA_PROJECTOR__REPLAY_METRICS_LISTEN", "127.0.0.1:0"),
        ],
    );
    assert!(
        out.status.success(),
        "replay {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

fn all_tables_same(report: &serde_json::Value) -> bool {
    report["tables"]
        .as_array()
        .unwrap()
        .iter()
        .all(|t| t["old_rows"] == t["new_rows"] && t["old_checksum"] == t["new_checksum"])
}

/// Publishes again the first grade event of topics `prefix` as a change
/// committed now, at the journal's current WAL position, with a Kafka
/// timestamp a day before (a skewed clock), on its partition; returns the
/// time it was committed at and its key.
async fn publish_skewed(
    journal: &tokio_postgres::Config,
    prefix: &str,
) -> (chrono::DateTime<chrono::Utc>, String) {
    use rdkafka::producer::{FutureProducer, FutureRecord};
    use vitrina::events::codec::Registry;
    use vitrina::events::Message;
    let mut reg = Registry::new();
    let topic = vitrina::kafka::topic(prefix, "grade");
    let (partition, key, mut e) = common::read_all(prefix)
        .into_iter()
        .filter(|(t, ..)| *t == topic)
        .find_map(|(_, p, key, value)| match reg.decode_message(&value) {
            // The log's first grade: the workload corrects recent ones,
            // which would carry the row into the replay anyway.
            Ok(Message::Event(e)) if e.after.is_some() => Some((p, key, e)),
            _ => None,
        })
        .expect("a grade event in the log");
    let producer: FutureProducer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", common::stack().brokers())
        .create()
        .unwrap();
    let c = vitrina::pg::connect(journal).await.unwrap();
    let wal: String = c
        .query_one("SELECT pg_current_wal_lsn()::text", &[])
        .await
        .unwrap()
        .get(0);
    let at = vitrina::lsn::parse(&wal).unwrap();
    // Every record before it on the partition is stamped before `mid`.
    let mid = chrono::Utc::now();
    e.source.commit_lsn = at;
    e.source.lsn = at;
    e.source.commit_time_micros = mid.timestamp_micros();
    e.source.snapshot = false;
    e.op = vitrina::events::Op::Update;
    e.event_id = format!("skewed-{}", e.key);
    let payload = reg.encode(&e).unwrap();
    producer
        .send(
            FutureRecord::to(&topic)
                .key(&key)
                .payload(&payload)
                .partition(partition)
                .timestamp((mid - chrono::Duration::days(1)).timestamp_millis()),
            Duration::from_secs(10),
        )
        .await
        .unwrap();
    (mid, e.key)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replay_rebuilds_the_showcase_beside_the_live_one_and_swaps_it_in() {
    let cfg = common::journal_db("t_replay").await;
    let db = common::db_name(&cfg);
    let spec = common::small_region(52, 1, 30, 0.02);
    load::load(&cfg, &spec, 2, false, false).await.unwrap();
    let showcase = common::fresh_db("t_replay_show").await;
    let show_db = common::db_name(&showcase);
    let name = format!("repl{}", std::process::id());
    let mut capture = common::spawn_capture(&db, &name);
    common::wait_caught_up(&cfg, &name, Duration::from_secs(240)).await;
    let mut projector = common::spawn_projector(&db, &name, &show_db);
    common::wait_projected(&showcase, &name, Duration::from_secs(240)).await;

    // On a quiet log a replay rebuilds exactly what the live projector built.
    let quiet = replay(&db, &name, &show_db, &["--no-swap"]);
    assert!(quiet["events"].as_u64().unwrap() > 1000, "{quiet}");
    assert!(all_tables_same(&quiet), "replay differs from live: {quiet}");
    assert!(quiet["tables"]
        .as_array()
        .unwrap()
        .iter()
        .any(|t| t["new_rows"].as_i64().unwrap() > 100));

    // From a time: the rows last changed before it, then the log after it.
    // A change committed at `mid` whose Kafka timestamp a skewed clock put
    // a day before it: the first record on its partition from `mid` on, so
    // the first one stamped at or after `mid` follows it.
    let (mid_t, skewed_key) = publish_skewed(&cfg, &name).await;
    let mid = mid_t.to_rfc3339();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let edits = common::spawn_workload(&cfg, 3, 0, 8).await.unwrap();
    assert!(edits.changes > 0);
    common::wait_caught_up(&cfg, &name, Duration::from_secs(240)).await;
    common::wait_projected(&showcase, &name, Duration::from_secs(240)).await;
    let partial = replay(&db, &name, &show_db, &["--no-swap", "--from", &mid]);
    assert!(
        all_tables_same(&partial),
        "replay --from differs: {partial}"
    );
    // Without the margin, only the check by journal position finds it.
    let unmargined = replay(
        &db,
        &name,
        &show_db,
        &["--no-swap", "--from", &mid, "--margin", "0"],
    );
    assert!(
        all_tables_same(&unmargined),
        "replay --from --margin 0 lost the change stamped before its time (grade {skewed_key}): {unmargined}"
    );
    assert!(
        unmargined["events"].as_u64().unwrap() < quiet["events"].as_u64().unwrap(),
        "--from reads less of the log: {unmargined}"
    );

    // Under a live workload, with the live projector serving: swap.
    let load_task = common::spawn_workload(&cfg, 15, 0, 9);
    tokio::time::sleep(Duration::from_secs(3)).await;
    let swapped = replay(&db, &name, &show_db, &["--restart"]);
    assert_eq!(swapped["swapped"], true);
    let report = load_task.await.unwrap();
    assert_eq!(report.failed_transactions, 0);
    common::assert_showcase_equals_journal(
        "swapped-in showcase (kept up by the live projector) vs journal",
        &cfg,
        &name,
        &showcase,
    )
    .await;
    let c = vitrina::pg::connect(&showcase).await.unwrap();
    let previous: i64 = c
        .query_one("SELECT count(*) FROM showcase_previous.grade", &[])
        .await
        .unwrap()
        .get(0);
    assert!(previous > 0, "the old showcase is kept");
    assert!(
        projector.try_wait().unwrap().is_none(),
        "the live projector kept running"
    );
    common::kill(&mut capture, libc::SIGTERM);
    common::kill(&mut projector, libc::SIGTERM);
}

/// The journal and the showcase on two different PostgreSQL servers, as
/// a region runs them: capture reads the shared test cluster, the
/// projector writes a cluster of this test's own, reached as an external
/// server; the showcase equals the journal after a workload.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn journal_and_showcase_on_two_servers() {
    let cfg = common::journal_db("t_two").await;
    let db = common::db_name(&cfg);
    let spec = common::small_region(53, 1, 30, 0.02);
    load::load(&cfg, &spec, 2, false, false).await.unwrap();
    let cluster = common::OwnCluster::start("twoservers", "");
    let admin = vitrina::pg::connect(&cluster.config()).await.unwrap();
    admin
        .batch_execute("CREATE DATABASE showcase")
        .await
        .unwrap();
    let mut showcase = cluster.config();
    showcase.dbname("showcase");
    let name = format!("two{}", std::process::id());
    let mut capture = common::spawn_capture(&db, &name);
    let port = cluster.port.to_string();
    let mut projector = common::spawn_vitrina(
        "project",
        &db,
        &name,
        &format!("{name}-projector"),
        &[
            ("VITRINA_SHOWCASE__HOST", "127.0.0.1"),
            ("VITRINA_SHOWCASE__PORT", port.as_str()),
            (
                "VITRINA_SHOWCASE__USER",
                vitrina::stack::postgres::SUPERUSER,
            ),
            ("VITRINA_SHOWCASE__DATABASE", "showcase"),
            ("VITRINA_PROJECTOR__METRICS_LISTEN", "127.0.0.1:0"),
        ],
    );
    let report = common::spawn_workload(&cfg, 10, 100, 9).await.unwrap();
    assert_eq!(report.failed_transactions, 0);
    common::assert_showcase_equals_journal(
        "showcase on its own server vs journal",
        &cfg,
        &name,
        &showcase,
    )
    .await;
    common::kill(&mut projector, libc::SIGTERM);
    common::kill(&mut capture, libc::SIGTERM);
    drop(admin);
}

/// Least privilege on the showcase side: the projector runs as a role that
/// may only create schemas in the showcase database (it owns what it
/// makes); a reader role reads `showcase` but not the private schema, and
/// keeps its access across a replay's swap.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn projector_as_an_owner_role_and_readers_keep_access_across_a_swap() {
    let cfg = common::journal_db("t_proj_roles").await;
    let db = common::db_name(&cfg);
    load::load(
        &cfg,
        &common::small_region(55, 1, 20, 0.02),
        2,
        false,
        false,
    )
    .await
    .unwrap();
    let show = common::fresh_db("t_proj_roles_show").await;
    let show_db = common::db_name(&show);
    let name = format!("projroles{}", std::process::id());
    let (owner, reader) = (format!("{name}_owner"), format!("{name}_reader"));
    let admin = vitrina::pg::connect(&show).await.unwrap();
    admin
        .batch_execute(&format!(
            "DROP ROLE IF EXISTS {owner}; DROP ROLE IF EXISTS {reader};
             CREATE ROLE {owner} LOGIN; CREATE ROLE {reader} LOGIN;
             GRANT CREATE ON DATABASE {show_db} TO {owner};"
        ))
        .await
        .unwrap();
    let port = show.get_ports()[0].to_string();
    let readers = format!("[\"{reader}\"]");
    let env = [
        ("VITRINA_SHOWCASE__HOST", "127.0.0.1"),
        ("VITRINA_SHOWCASE__PORT", port.as_str()),
        ("VITRINA_SHOWCASE__USER", owner.as_str()),
        ("VITRINA_SHOWCASE__DATABASE", show_db.as_str()),
        ("VITRINA_PROJECTOR__READERS", readers.as_str()),
        ("VITRINA_PROJECTOR__METRICS_LISTEN", "127.0.0.1:0"),
        ("VITRINA_PROJECTOR__REPLAY_METRICS_LISTEN", "127.0.0.1:0"),
    ];
    let mut capture = common::spawn_capture(&db, &name);
    let mut projector =
        common::spawn_vitrina("project", &db, &name, &format!("{name}-projector"), &env);
    common::wait_caught_up(&cfg, &name, Duration::from_secs(240)).await;
    common::wait_projected(&show, &name, Duration::from_secs(240)).await;
    let mut as_reader = show.clone();
    as_reader.user(&reader);
    let r = vitrina::pg::connect(&as_reader).await.unwrap();
    let before = grade_count(&r)
        .await
        .expect("the reader reads the showcase");
    assert!(before > 0);
    let private = r
        .query_one(
            "SELECT count(*) FROM showcase_private.attendance_medical",
            &[],
        )
        .await
        .unwrap_err();
    assert!(
        private.to_string().contains("permission denied")
            || format!("{private:?}").contains("42501"),
        "{private:?}"
    );
    let owned: String = admin
        .query_one(
            "SELECT nspowner::regrole::text FROM pg_namespace WHERE nspname = 'showcase'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(owned, owner, "the projector owns the schema it made");
    // A replay as the same role swaps a new showcase in; the reader keeps access.
    let out = common::run_vitrina(&db, &name, &["replay", "--json"], &env);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let r = vitrina::pg::connect(&as_reader).await.unwrap();
    let after = grade_count(&r)
        .await
        .expect("the reader reads the swapped showcase");
    assert_eq!(after, before);
    common::kill(&mut projector, libc::SIGTERM);
    common::kill(&mut capture, libc::SIGTERM);
}

async fn grade_count(c: &tokio_postgres::Client) -> Result<i64, tokio_postgres::Error> {
    c.query_one("SELECT count(*) FROM showcase.grade", &[])
        .await
        .map(|row| row.get(0))
}

/// The projector dies after a batch's writers committed and before its
/// offsets did (rows ahead of the recorded offsets), several times under a
/// workload; the next one reads those rows again and the showcase still
/// equals the journal row by row.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_projector_dying_between_its_writers_and_its_offsets_loses_and_doubles_nothing() {
    let cfg = common::journal_db("t_proj_split").await;
    let db = common::db_name(&cfg);
    load::load(
        &cfg,
        &common::small_region(53, 1, 30, 0.02),
        2,
        false,
        false,
    )
    .await
    .unwrap();
    let showcase = common::fresh_db("t_proj_split_show").await;
    let show_db = common::db_name(&showcase);
    let name = format!("projsplit{}", std::process::id());
    let log = format!("{name}-projector");
    let mut capture = common::spawn_capture(&db, &name);
    common::wait_caught_up(&cfg, &name, Duration::from_secs(240)).await;
    let load_task = common::spawn_workload(&cfg, 20, 100, 9);
    let env = [
        ("VITRINA_SHOWCASE__DATABASE", show_db.as_str()),
        ("VITRINA_PROJECTOR__METRICS_LISTEN", "127.0.0.1:0"),
    ];
    // Small batches, so that a crash lands mid-load and mid-workload.
    let mut dying = env.to_vec();
    dying.push(("VITRINA_PROJECTOR__BATCH_SIZE", "2000"));
    dying.push(("VITRINA_PROJECTOR__CATCH_UP_BATCH_SIZE", "2000"));
    for spec in [
        "projector-crash-before-offsets=return(3)",
        "projector-crash-before-offsets=return(5)",
        "projector-crash-before-offsets=return(2)",
    ] {
        let mut with = dying.clone();
        with.push(common::failpoints(spec));
        let mut p = common::spawn_vitrina("project", &db, &name, &log, &with);
        let status = p.wait().unwrap();
        assert!(
            !status.success(),
            "the failpoint ends the projector ({status:?}):\n{}",
            common::log_tail(&log, 30)
        );
    }
    let crashes = common::log_tail(&log, 100_000)
        .matches("failpoint: crashing")
        .count();
    assert_eq!(crashes, 3, "{}", common::log_tail(&log, 30));
    let mut projector = common::spawn_vitrina("project", &db, &name, &log, &env);
    assert_eq!(load_task.await.unwrap().failed_transactions, 0);
    common::assert_showcase_equals_journal(
        "showcase vs journal after crashes between writers and offsets",
        &cfg,
        &name,
        &showcase,
    )
    .await;
    common::kill(&mut projector, libc::SIGKILL);
    common::kill(&mut capture, libc::SIGKILL);
}

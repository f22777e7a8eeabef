//! Recovery without a full reload: a table re-read in chunks between
//! watermarks while capture streams (`vitrina resnapshot`), killed mid-way;
//! and a replication slot dropped under a workload, from which capture
//! recovers by itself. Each ends with the topics folded equal to the
//! journal and the showcase equal to it row by row.

mod common;

use std::time::{Duration, Instant};

use vitrina::events::codec::Registry;
use vitrina::events::{Message, Op};
use vitrina::region::load;

/// Small chunks, throttled: the re-snapshot of one table takes seconds, so
/// that kills land in its middle.
const SLOW: [(&str, &str); 2] = [
    ("VITRINA_CAPTURE__RESNAPSHOT_CHUNK_ROWS", "100"),
    ("VITRINA_CAPTURE__RESNAPSHOT_ROWS_PER_SECOND", "300"),
];

/// Unthrottled: a lost slot's recovery re-reads every table.
const FAST: [(&str, &str); 2] = [
    ("VITRINA_CAPTURE__RESNAPSHOT_CHUNK_ROWS", "2000"),
    ("VITRINA_CAPTURE__RESNAPSHOT_ROWS_PER_SECOND", "0"),
];

fn log_of(name: &str) -> String {
    std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join(format!("target/test-logs/{name}.log")),
    )
    .unwrap_or_default()
}

/// Waits until capture's log holds `needle` at least `count` times.
async fn wait_log(name: &str, needle: &str, count: usize, timeout: Duration) {
    let deadline = Instant::now() + timeout;
    while log_of(name).matches(needle).count() < count {
        assert!(
            Instant::now() < deadline,
            "capture's log did not say `{needle}` {count} times within {timeout:?}:\n{}",
            common::log_tail(name, 30)
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Journal, showcase, capture and projector for one test.
struct Pipeline {
    journal: tokio_postgres::Config,
    db: String,
    show: tokio_postgres::Config,
    name: String,
    capture: std::process::Child,
    projector: std::process::Child,
    env: &'static [(&'static str, &'static str)],
}

impl Pipeline {
    async fn start(tag: &str, env: &'static [(&'static str, &'static str)]) -> Pipeline {
        let journal = common::journal_db(&format!("t_{tag}")).await;
        let db = common::db_name(&journal);
        load::load(
            &journal,
            &common::small_region(7, 1, 60, 0.02),
            2,
            false,
            false,
        )
        .await
        .unwrap();
        let show = common::fresh_db(&format!("t_{tag}_show")).await;
        let name = format!("{tag}{}", std::process::id());
        let capture = common::spawn_vitrina("capture", &db, &name, &name, env);
        let projector = common::spawn_projector(&db, &name, &common::db_name(&show));
        common::wait_caught_up(&journal, &name, Duration::from_secs(240)).await;
        Pipeline {
            journal,
            db,
            show,
            name,
            capture,
            projector,
            env,
        }
    }

    async fn restart_capture(&mut self) {
        common::kill(&mut self.capture, libc::SIGKILL);
        common::wait_slot_active(&self.journal, &self.name, false, Duration::from_secs(10)).await;
        self.capture = common::spawn_vitrina("capture", &self.db, &self.name, &self.name, self.env);
    }

    /// The topics folded equal the journal, then the showcase equals it.
    async fn assert_equal(&self, what: &str) {
        common::wait_caught_up(&self.journal, &self.name, Duration::from_secs(240)).await;
        let messages = common::read_all(&self.name);
        let (got, _) = common::fold(&messages, &self.name);
        common::assert_same_state(
            &format!("{what}: topics vs journal"),
            &got,
            &common::journal_state(&self.journal).await,
        );
        common::assert_showcase_equals_journal(what, &self.journal, &self.name, &self.show).await;
    }

    fn stop(mut self) {
        common::kill(&mut self.capture, libc::SIGTERM);
        common::kill(&mut self.projector, libc::SIGTERM);
    }
}

/// Events of `entity` re-read by a re-snapshot (a READ inside a journal
/// transaction: the high watermark's; the initial load's have none), and
/// the withdrawals that ended one.
fn reread(messages: &[(String, i32, Vec<u8>, Vec<u8>)], entity: &str) -> (usize, usize) {
    let reg = Registry::new();
    let (mut keys, mut withdrawals) = (std::collections::HashSet::new(), 0);
    for (_, _, _, payload) in messages {
        let Ok(Message::Event(e)) = reg.decode_message(payload) else {
            continue;
        };
        if e.entity.name != entity {
            continue;
        }
        if e.op == Op::Read && e.source.txid != 0 {
            keys.insert(e.key.clone());
        }
        if e.op == Op::Truncate && e.event_id.starts_with('W') {
            withdrawals += 1;
        }
    }
    (keys.len(), withdrawals)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_table_resnapshotted_under_a_workload_and_killed_twice_ends_equal_to_the_journal() {
    let mut p = Pipeline::start("resnap", &SLOW).await;
    let c = vitrina::pg::connect(&p.journal).await.unwrap();
    let grades: i64 = c
        .query_one("SELECT count(*) FROM journal.grades", &[])
        .await
        .unwrap()
        .get(0);
    let load_task = common::spawn_workload(&p.journal, 45, 0, 11);
    let watch = common::FreshnessWatch::start(&p.show);

    // A request any journal role can write, with SQL smuggled into its
    // condition: refused by capture, which streams on.
    let smuggled = serde_json::json!({
        "table": "journal.grades",
        "where": "true) UNION SELECT id, id, id, id, id, id, id, id, id, id FROM journal.students --"
    });
    c.execute(
        "SELECT pg_logical_emit_message(true, $1, $2)",
        &[
            &format!("vitrina.resnapshot.{}", p.name),
            &smuggled.to_string(),
        ],
    )
    .await
    .unwrap();
    wait_log(
        &p.name,
        "a re-snapshot request is refused",
        1,
        Duration::from_secs(60),
    )
    .await;
    let out = common::run_vitrina(&p.db, &p.name, &["resnapshot", "journal.grades"], &SLOW);
    assert!(
        out.status.success(),
        "vitrina resnapshot: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let started = Instant::now();
    // Killed twice while it reads: each start goes on from the last chunk
    // acknowledged.
    for k in 1..=2 {
        wait_log(&p.name, "re-snapshot reading", k, Duration::from_secs(60)).await;
        tokio::time::sleep(Duration::from_millis(2500)).await;
        assert!(
            !log_of(&p.name).contains("re-snapshot finished"),
            "kill {k} lands while the re-snapshot reads ({grades} rows at 300 rows/s)"
        );
        p.restart_capture().await;
    }
    wait_log(&p.name, "re-snapshot finished", 1, Duration::from_secs(240)).await;
    let took = started.elapsed();
    let freshness = watch.highest().await;
    let report = load_task.await.unwrap();
    assert_eq!(report.failed_transactions, 0);

    p.assert_equal("a re-snapshot killed twice").await;
    let (keys, withdrawals) = reread(&common::read_all(&p.name), "grade");
    let resumed = log_of(&p.name).matches("re-snapshot reading").count();
    eprintln!(
        "re-snapshot of journal.grades ({grades} rows): {took:.1?} with 2 kills, {resumed} starts, {keys} keys re-read, {withdrawals} withdrawal(s); highest freshness age during it {freshness:?} s; workload {} changes",
        report.changes
    );
    assert!(resumed >= 3, "the kills interrupted the re-snapshot");
    assert!(
        keys as i64 >= grades / 2,
        "the re-snapshot re-read the table ({keys} of {grades} keys; rows the workload changed meanwhile are the stream's)"
    );
    assert!(withdrawals >= 1, "a whole table ends with a withdrawal");
    let freshness = freshness.expect("the showcase reported its freshness");
    assert!(
        freshness < 60.0,
        "the stream went on during the re-snapshot (freshness age {freshness} s)"
    );
    p.stop();
}

/// `vitrina resnapshot` refuses a condition that is not a plain one, and
/// says what a condition may hold, before it writes anything.
#[test]
fn a_condition_with_sql_in_it_is_refused_before_anything_is_written() {
    let out = common::run_vitrina(
        "nowhere",
        "nothing",
        &[
            "resnapshot",
            "journal.grades",
            "--where",
            "id = 1; DROP TABLE journal.grades",
        ],
        &[],
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert!(
        err.contains("holds `;`") && err.contains("joined by AND, OR"),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slot_dropped_under_a_workload_recovers_by_itself_and_rows_deleted_meanwhile_are_gone() {
    let p = Pipeline::start("slotlost", &FAST).await;
    let c = vitrina::pg::connect(&p.journal).await.unwrap();
    let load_task = common::spawn_workload(&p.journal, 40, 0, 13);
    let watch = common::FreshnessWatch::start(&p.show);
    tokio::time::sleep(Duration::from_secs(3)).await;

    // Capture held still while its walsender is terminated and its slot
    // dropped; the journal deletes rows that no slot streams.
    let pid = p.capture.id() as i32;
    // SAFETY: signals to our own child.
    unsafe { libc::kill(pid, libc::SIGSTOP) };
    c.execute(
        "SELECT pg_terminate_backend(active_pid) FROM pg_replication_slots WHERE slot_name = $1 AND active_pid IS NOT NULL",
        &[&p.name],
    )
    .await
    .unwrap();
    common::wait_slot_active(&p.journal, &p.name, false, Duration::from_secs(10)).await;
    c.execute("SELECT pg_drop_replication_slot($1)", &[&p.name])
        .await
        .unwrap();
    let gone: Vec<i64> = common::column(
        &c,
        "DELETE FROM journal.grades WHERE id IN (SELECT id FROM journal.grades ORDER BY id LIMIT 25) RETURNING id",
    )
    .await;
    assert_eq!(gone.len(), 25);
    // Retained WAL while the recovery runs, sampled (bytes).
    let highest = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let retained = {
        let (cfg, name, highest) = (p.journal.clone(), p.name.clone(), highest.clone());
        tokio::spawn(async move {
            let c = vitrina::pg::connect(&cfg).await.unwrap();
            loop {
                if let Ok(Some(r)) = c
                    .query_opt(
                        "SELECT (pg_current_wal_lsn() - restart_lsn)::float8 FROM pg_replication_slots WHERE slot_name = $1",
                        &[&name],
                    )
                    .await
                {
                    let bytes = r.get::<_, Option<f64>>(0).unwrap_or(0.0) as u64;
                    highest.fetch_max(bytes, std::sync::atomic::Ordering::Relaxed);
                }
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
        })
    };
    let started = Instant::now();
    unsafe { libc::kill(pid, libc::SIGCONT) };

    wait_log(
        &p.name,
        "replication slot was lost",
        1,
        Duration::from_secs(60),
    )
    .await;
    let tables = vitrina::capture::mapping::Mapping::reference().tables.len();
    wait_log(
        &p.name,
        "re-snapshot finished",
        tables,
        Duration::from_secs(400),
    )
    .await;
    let took = started.elapsed();
    retained.abort();
    let freshness = watch.highest().await;
    let report = load_task.await.unwrap();
    assert_eq!(report.failed_transactions, 0);

    p.assert_equal("a slot dropped and recovered").await;
    let show = vitrina::pg::connect(&p.show).await.unwrap();
    let standing: i64 = show
        .query_one(
            "SELECT count(*) FROM showcase.grade WHERE NOT deleted AND key = ANY($1)",
            &[&gone.iter().map(|g| g.to_string()).collect::<Vec<_>>()],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(
        standing, 0,
        "grades deleted while no slot existed are gone from the showcase"
    );
    let (keys, withdrawals) = reread(&common::read_all(&p.name), "grade");
    eprintln!(
        "slot dropped: recovered ({tables} tables re-snapshotted) in {took:.1?}; {keys} grade keys re-read, {withdrawals} withdrawal(s) of grades; highest freshness age {freshness:?} s; WAL retained by the new slot at most {:.1} MB",
        highest.load(std::sync::atomic::Ordering::Relaxed) as f64 / 1e6
    );
    assert!(withdrawals >= 1);
    p.stop();
}

/// The race plain DBLog leaves open on PostgreSQL: a transaction whose
/// commit the stream already carried is still running in a chunk's
/// snapshot (here it waits for a synchronous standby that never answers:
/// PostgreSQL writes the commit record, then waits, then makes the
/// transaction visible). Published, the chunk would put the row's older
/// state after the newer one; capture reads the chunk again until the
/// transaction is visible, and the topics end equal to the journal.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_chunk_older_than_a_change_the_stream_carried_is_read_again() {
    common::stack(); // the broker
    let cluster = common::OwnCluster::start(
        "resnaprace",
        "synchronous_standby_names = 'ghost'\nsynchronous_commit = local\n",
    );
    let mut c = vitrina::pg::connect(&cluster.config()).await.unwrap();
    vitrina::journal::migrate(&mut c).await.unwrap();
    load::load(
        &cluster.config(),
        &common::small_region(9, 1, 20, 0.0),
        2,
        false,
        false,
    )
    .await
    .unwrap();
    let name = format!("resnaprace{}", std::process::id());
    let env = cluster.as_journal();
    let mut env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    env.extend(FAST);
    let mut capture = common::spawn_vitrina("capture", "postgres", &name, &name, &env);
    common::wait_caught_up(&cluster.config(), &name, Duration::from_secs(120)).await;

    // The racer: committed in WAL (the stream carries it), invisible to
    // every snapshot while it waits for the standby.
    let racer = {
        let cfg = cluster.config();
        tokio::spawn(async move {
            let r = vitrina::pg::connect(&cfg).await.unwrap();
            r.batch_execute(
                "SET synchronous_commit = on;
                 UPDATE journal.grades SET weight = 9.5, updated_at = now()
                  WHERE id = (SELECT min(id) FROM journal.grades)",
            )
            .await
            .unwrap();
        })
    };
    common::wait_caught_up(&cluster.config(), &name, Duration::from_secs(60)).await;
    assert!(!racer.is_finished(), "the racer waits for its standby");
    let visible: f64 = c
        .query_one(
            "SELECT weight::float8 FROM journal.grades WHERE id = (SELECT min(id) FROM journal.grades)",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_ne!(visible, 9.5, "the racer's change is not visible yet");

    let out = common::run_vitrina("postgres", &name, &["resnapshot", "journal.grades"], &env);
    assert!(
        out.status.success(),
        "vitrina resnapshot: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    wait_log(
        &name,
        "re-snapshot chunk read again",
        2,
        Duration::from_secs(60),
    )
    .await;
    // The standby requirement lifted: the racer becomes visible.
    c.batch_execute("ALTER SYSTEM SET synchronous_standby_names = ''")
        .await
        .unwrap();
    c.batch_execute("SELECT pg_reload_conf()").await.unwrap();
    tokio::time::timeout(Duration::from_secs(30), racer)
        .await
        .expect("the racer commits once no standby is required")
        .unwrap();
    wait_log(&name, "re-snapshot finished", 1, Duration::from_secs(120)).await;
    common::wait_caught_up(&cluster.config(), &name, Duration::from_secs(60)).await;
    let messages = common::read_all(&name);
    let (got, _) = common::fold(&messages, &name);
    common::kill(&mut capture, libc::SIGTERM);
    common::assert_same_state(
        "topics vs journal after a chunk raced a committed transaction",
        &got,
        &common::journal_state(&cluster.config()).await,
    );
    drop(c);
    drop(cluster);
}

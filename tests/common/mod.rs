//! Shared test harness: one private PostgreSQL + tansu stack for the whole
//! test run (started on first use, under `VITRINA_TEST_STACK_DIR` or
//! `target/test-stack`), and a fresh database per test so tests can run in
//! parallel without seeing each other's rows.
#![allow(dead_code)]

use std::os::fd::AsRawFd;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::OnceLock;

use vitrina::config::Config;
use vitrina::connections::Connections;
use vitrina::stack::Stack;

pub struct TestStack {
    pub cfg: Config,
    pub conns: Connections,
}

impl TestStack {
    pub fn brokers(&self) -> &str {
        &self.conns.kafka().expect("test broker runs").brokers
    }

    /// The test cluster's database `db`, as its superuser.
    pub fn pg_config(&self, db: &str) -> tokio_postgres::Config {
        self.conns
            .journal()
            .unwrap()
            .with_database(db)
            .config()
            .config
    }
}

static STACK: OnceLock<TestStack> = OnceLock::new();

pub fn stack_dir() -> PathBuf {
    std::env::var_os("VITRINA_TEST_STACK_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/test-stack"))
}

/// The shared stack, started if needed. Test processes serialize `up` with
/// an exclusive lock on a file, so only one of them starts the services.
pub fn stack() -> &'static TestStack {
    STACK.get_or_init(|| {
        let dir = stack_dir();
        std::fs::create_dir_all(&dir).expect("create test stack dir");
        let lock = std::fs::File::create(dir.join("up.lock")).expect("lock file");
        // SAFETY: flock on an open descriptor we own.
        assert_eq!(unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX) }, 0);
        // Memory storage, the fastest: the shared broker is never
        // restarted; tests that restart a broker start one of their own
        // (tests/broker.rs).
        let cfg = Config {
            state_dir: dir,
            stack: vitrina::config::StackConfig {
                kafka_storage: vitrina::stack::broker::Storage::Memory,
                ..Default::default()
            },
            ..Config::default()
        };
        let stack = Stack::new(&cfg).expect("stack");
        stack
            .up()
            .unwrap_or_else(|e| panic!("starting the test stack: {e}"));
        let conns = stack.connections().expect("connections");
        let admin = conns
            .journal()
            .unwrap()
            .with_database("postgres")
            .config()
            .config;
        std::thread::spawn(move || {
            tokio::runtime::Runtime::new()
                .unwrap()
                .block_on(clean_leftovers(&admin))
        })
        .join()
        .expect("cleaning the test stack");
        drop(lock);
        TestStack { cfg, conns }
    })
}

/// Drops what finished test processes left behind: their replication
/// slots (which would hold WAL and use up max_replication_slots) and their
/// databases (`<prefix>_<pid>_<n>` of a pid no longer running).
async fn clean_leftovers(admin: &tokio_postgres::Config) {
    let c = vitrina::pg::connect(admin).await.expect("admin connection");
    let rows = c
        .query(
            "SELECT slot_name::text, database::text FROM pg_replication_slots WHERE NOT active",
            &[],
        )
        .await
        .unwrap();
    let gone = |db: &str| {
        db.rsplit('_')
            .nth(1)
            .and_then(|p| p.parse::<u32>().ok())
            .is_some_and(|pid| !std::path::Path::new(&format!("/proc/{pid}")).exists())
    };
    for r in rows {
        let (slot, db): (String, Option<String>) = (r.get(0), r.get(1));
        if db.as_deref().is_some_and(gone) {
            let _ = c
                .execute("SELECT pg_drop_replication_slot($1)", &[&slot])
                .await;
        }
    }
    let dbs: Vec<String> = column(
        &c,
        "SELECT datname::text FROM pg_database WHERE datname LIKE 't\\_%'",
    )
    .await;
    for db in dbs.iter().filter(|d| gone(d)) {
        let _ = c
            .batch_execute(&format!("DROP DATABASE IF EXISTS {db} WITH (FORCE)"))
            .await;
    }
}

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// A new, empty database for one test.
pub async fn fresh_db(prefix: &str) -> tokio_postgres::Config {
    let st = stack();
    let name = format!(
        "{prefix}_{}_{}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::SeqCst)
    );
    let admin = vitrina::pg::connect(&st.pg_config("postgres"))
        .await
        .expect("admin connection");
    for sql in [
        format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"),
        format!("CREATE DATABASE {name}"),
    ] {
        admin
            .batch_execute(&sql)
            .await
            .expect("create test database");
    }
    st.pg_config(&name)
}

/// A fresh database with the reference journal schema.
pub async fn journal_db(prefix: &str) -> tokio_postgres::Config {
    let cfg = fresh_db(prefix).await;
    let mut c = vitrina::pg::connect(&cfg).await.unwrap();
    vitrina::journal::migrate(&mut c).await.expect("migrate");
    cfg
}

/// The test stack's state dir as an environment override for child processes.
pub fn child_env(cmd: &mut std::process::Command, db: &str, name: &str) {
    cmd.env_remove("VITRINA_CONFIG")
        .env("VITRINA_STATE_DIR", stack_dir())
        .env("VITRINA_JOURNAL__DATABASE", db)
        .env("VITRINA_CAPTURE__SLOT", name)
        .env("VITRINA_CAPTURE__PUBLICATION", name)
        .env("VITRINA_CAPTURE__TOPIC_PREFIX", name)
        .env("VITRINA_CAPTURE__METRICS_LISTEN", "127.0.0.1:0")
        .env("VITRINA_CAPTURE__HEARTBEAT_INTERVAL_MS", "500")
        .env("VITRINA_LOG", "warn,vitrina=info");
}

/// The last `lines` lines of target/test-logs/<log>.log, for failure messages.
pub fn log_tail(log: &str, lines: usize) -> String {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("target/test-logs")
        .join(format!("{log}.log"));
    let text = std::fs::read_to_string(&path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// Starts `vitrina <command>` for journal `db` with slot, publication and
/// topic prefix `name`; output goes to target/test-logs/<log>.log. The
/// child dies with the test (a panicking test must not leave capture
/// holding a walsender, which stalls the cluster's shutdown).
/// The environment entry that arms failpoints (`src/failpoint.rs`) in a
/// process the test starts: `spec` is `name=actions[;name=actions]`.
/// Fails the test at once in a build without them, which would otherwise
/// run the fault's scenario without its fault.
pub fn failpoints(spec: &'static str) -> (&'static str, &'static str) {
    if !cfg!(feature = "failpoints") {
        panic!(
            "this test arms failpoints ({spec}): run it with `cargo test --features failpoints` \
             (scripts/test does)"
        );
    }
    ("FAILPOINTS", spec)
}

pub fn spawn_vitrina(
    command: &str,
    db: &str,
    name: &str,
    log: &str,
    env: &[(&str, &str)],
) -> std::process::Child {
    let logs = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/test-logs");
    std::fs::create_dir_all(&logs).unwrap();
    let out = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(logs.join(format!("{log}.log")))
        .unwrap();
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_vitrina"));
    child_env(&mut cmd, db, name);
    cmd.envs(env.iter().copied())
        .args(command.split_whitespace())
        .stdout(out.try_clone().unwrap())
        .stderr(out);
    dies_with_test(&mut cmd);
    cmd.spawn()
        .unwrap_or_else(|e| panic!("spawn vitrina {command}: {e}"))
}

/// Runs `vitrina <args>` to its end for journal `db` (slot, publication,
/// topic prefix `name`), with `env` on top of the test environment.
pub fn run_vitrina(
    db: &str,
    name: &str,
    args: &[&str],
    env: &[(&str, &str)],
) -> std::process::Output {
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_vitrina"));
    child_env(&mut cmd, db, name);
    cmd.envs(env.iter().copied())
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("vitrina {args:?}: {e}"))
}

/// A small synthetic region: one history year plus the current one, as of
/// 2026-11-20, so tests load in seconds and see the same dates every day.
pub fn small_region(
    seed: u64,
    schools: u32,
    students_per_school: u32,
    invalid_identifier_share: f64,
) -> vitrina::region::RegionSpec {
    vitrina::region::RegionSpec {
        seed,
        schools,
        students_per_school,
        history_years: 1,
        as_of: chrono::NaiveDate::from_ymd_opt(2026, 11, 20).unwrap(),
        invalid_identifier_share,
    }
}

/// The child gets SIGKILL when the test process dies (a panicking test must
/// not leave a server or a walsender holder behind).
pub fn dies_with_test(cmd: &mut std::process::Command) {
    use std::os::unix::process::CommandExt;
    // SAFETY: prctl in the child before exec; async-signal-safe.
    unsafe {
        cmd.pre_exec(|| {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
            Ok(())
        });
    }
}

/// `vitrina capture` for journal `db` (slot, publication, topic prefix `name`).
pub fn spawn_capture(db: &str, name: &str) -> std::process::Child {
    spawn_vitrina("capture", db, name, name, &[])
}

/// `vitrina project` from topics `name` into database `showcase`.
pub fn spawn_projector(db: &str, name: &str, showcase: &str) -> std::process::Child {
    spawn_vitrina(
        "project",
        db,
        name,
        &format!("{name}-projector"),
        &[
            ("VITRINA_SHOWCASE__DATABASE", showcase),
            ("VITRINA_PROJECTOR__METRICS_LISTEN", "127.0.0.1:0"),
        ],
    )
}

/// The first column of every row `sql` returns.
pub async fn column<T>(c: &tokio_postgres::Client, sql: &str) -> Vec<T>
where
    T: for<'a> tokio_postgres::types::FromSql<'a>,
{
    c.query(sql, &[])
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"))
        .iter()
        .map(|r| r.get(0))
        .collect()
}

/// A TCP port free right now on 127.0.0.1.
pub fn free_port() -> u16 {
    free_ports(1)[0]
}

/// `n` distinct TCP ports free right now on 127.0.0.1 (held together while
/// chosen, so the kernel cannot hand out one twice).
pub fn free_ports(n: usize) -> Vec<u16> {
    let held: Vec<std::net::TcpListener> = (0..n)
        .map(|_| std::net::TcpListener::bind("127.0.0.1:0").unwrap())
        .collect();
    held.iter()
        .map(|l| l.local_addr().unwrap().port())
        .collect()
}

/// GET `path` from `addr`: (status code, body); (0, error) when unreachable.
pub fn http_get(addr: &str, path: &str) -> (u16, String) {
    use std::io::{Read, Write};
    let Ok(mut s) = std::net::TcpStream::connect(addr) else {
        return (0, format!("{addr} unreachable"));
    };
    s.set_read_timeout(Some(std::time::Duration::from_secs(10)))
        .unwrap();
    // A server that is going away (a replay finishing) may reset the
    // connection it has just accepted: unreachable, too.
    if let Err(e) = write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    ) {
        return (0, format!("{addr}: {e}"));
    }
    let mut text = String::new();
    let _ = s.read_to_string(&mut text);
    let code = text
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = text.split_once("\r\n\r\n").map(|x| x.1).unwrap_or("");
    (code, body.to_string())
}

/// What the journal holds, per (entity, key), mapped as capture maps it.
pub async fn journal_state(
    cfg: &(impl vitrina::pg::Connectable + ?Sized),
) -> std::collections::BTreeMap<(String, String), Vec<vitrina::events::Val>> {
    journal_view(cfg, false).await
}

/// What the journal holds, as capture publishes it: mapped, free text
/// scrubbed of the journal's names and numbers, and medical detail either
/// out (`keep_medical` false: the general topics) or kept (what the
/// showcase may show under consent).
pub async fn journal_view(
    cfg: &(impl vitrina::pg::Connectable + ?Sized),
    keep_medical: bool,
) -> std::collections::BTreeMap<(String, String), Vec<vitrina::events::Val>> {
    use futures::StreamExt;
    let c = vitrina::pg::connect(cfg).await.unwrap();
    let dp = vitrina::privacy::Depersonalizer::new(vitrina::privacy::Mode::Plain);
    let mapping = vitrina::capture::mapping::Mapping::reference();
    let mut fields = vitrina::capture::gate::Fields::new(true);
    for n in &mapping.names {
        for col in &n.columns {
            let names: Vec<Option<String>> =
                column(&c, &format!("SELECT {col} FROM {}", n.table)).await;
            for name in names.into_iter().flatten() {
                fields.learn(&name);
            }
        }
    }
    let mut out = std::collections::BTreeMap::new();
    for t in mapping.tables {
        let cols = t.columns();
        let sql = format!(
            "COPY (SELECT {} FROM {}) TO STDOUT",
            cols.join(", "),
            t.table
        );
        let chunks: Vec<_> = c.copy_out(&sql).await.unwrap().collect().await;
        let bytes: Vec<u8> = chunks
            .into_iter()
            .flat_map(|b| b.unwrap().to_vec())
            .collect();
        for line in String::from_utf8(bytes).unwrap().lines() {
            let row = vitrina::capture::snapshot::CopyRow::parse(cols, line);
            let mut m = t.map_row(&row, &dp).unwrap();
            let applied = fields.apply(t.entity, &mut m.after);
            if keep_medical {
                for (name, v) in applied.detail.into_iter().flatten() {
                    if let (Some(i), Some(v)) = (t.entity.index(name), v) {
                        m.after[i] = vitrina::events::Val::Str(v);
                    }
                }
            }
            out.insert((t.entity.name.to_string(), m.key), m.after);
        }
    }
    out
}

/// Asserts two (entity, key) → state maps are equal, naming a few differences.
pub fn assert_same_state(
    what: &str,
    got: &std::collections::BTreeMap<(String, String), Vec<vitrina::events::Val>>,
    want: &std::collections::BTreeMap<(String, String), Vec<vitrina::events::Val>>,
) {
    let missing: Vec<_> = want
        .keys()
        .filter(|k| !got.contains_key(*k))
        .take(5)
        .collect();
    let extra: Vec<_> = got
        .keys()
        .filter(|k| !want.contains_key(*k))
        .take(5)
        .collect();
    let differ: Vec<_> = want
        .iter()
        .filter(|(k, v)| got.get(*k).is_some_and(|g| g != *v))
        .map(|(k, _)| k)
        .take(5)
        .collect();
    let first = differ
        .first()
        .map(|k| {
            format!(
                "\n  {k:?}\n  got  {:?}\n  want {:?}",
                got.get(*k),
                want.get(*k)
            )
        })
        .unwrap_or_default();
    assert!(
        missing.is_empty() && extra.is_empty() && differ.is_empty(),
        "{what}: {} vs {} entities; missing {missing:?}; extra {extra:?}; different {differ:?}{first}",
        got.len(),
        want.len()
    );
}

pub fn db_name(cfg: &tokio_postgres::Config) -> String {
    cfg.get_dbname().unwrap().to_string()
}

/// Waits until slot `slot` is (or is no longer) held by a walsender.
pub async fn wait_slot_active(
    cfg: &(impl vitrina::pg::Connectable + ?Sized),
    slot: &str,
    active: bool,
    timeout: std::time::Duration,
) {
    let c = vitrina::pg::connect(cfg).await.unwrap();
    let deadline = std::time::Instant::now() + timeout;
    loop {
        let now = vitrina::capture::preflight::slot_now(&c, slot)
            .await
            .unwrap();
        let done = match now {
            Some(s) if active => s.streaming,
            Some(s) => !s.held,
            None => !active,
        };
        if done {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "slot {slot} did not become {} in {timeout:?}; the end of its log:\n{}",
            if active {
                "active (capture streaming)"
            } else {
                "free"
            },
            log_tail(slot, 40)
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}

/// Stops a child: `sig` (SIGTERM to let it drain, SIGKILL to crash it), then reaps it.
pub fn kill(child: &mut std::process::Child, sig: i32) {
    // SAFETY: kill(2) on our own child.
    unsafe {
        libc::kill(child.id() as i32, sig);
    }
    let _ = child.wait();
}

/// Runs the live workload in the background.
pub fn spawn_workload(
    cfg: &tokio_postgres::Config,
    duration_s: u64,
    mass_enrolment: u32,
    seed: u64,
) -> tokio::task::JoinHandle<vitrina::region::workload::WorkloadReport> {
    let cfg = cfg.clone();
    tokio::spawn(async move {
        let w = vitrina::config::WorkloadConfig {
            rate: 300,
            duration_s,
            sessions: 4,
            mass_enrolment,
            seed,
            ..Default::default()
        };
        vitrina::region::workload::run(&cfg, &w, false)
            .await
            .unwrap()
    })
}

/// Waits until capture streams (the slot is active: the initial load is
/// over) and the slot has confirmed everything written before that.
pub async fn wait_caught_up(
    cfg: &(impl vitrina::pg::Connectable + ?Sized),
    slot: &str,
    timeout: std::time::Duration,
) {
    let c = vitrina::pg::connect(cfg).await.unwrap();
    wait_slot_active(cfg, slot, true, timeout).await;
    let target: String = c
        .query_one("SELECT pg_current_wal_insert_lsn()::text", &[])
        .await
        .unwrap()
        .get(0);
    let target = vitrina::lsn::parse(&target).unwrap();
    let deadline = std::time::Instant::now() + timeout;
    loop {
        // The slot appears once capture created it (after its preflight).
        let now = vitrina::capture::preflight::slot_now(&c, slot)
            .await
            .unwrap();
        if now.and_then(|s| s.confirmed_flush) >= Some(target) {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "slot {slot} did not reach {} in {timeout:?}",
            vitrina::lsn::format(target)
        );
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
}

/// The topics of `prefix` in `md`, without capture's own state topic (and
/// without the dead-letter topic unless `dead_letters`).
fn log_topics(md: &rdkafka::metadata::Metadata, prefix: &str, dead_letters: bool) -> Vec<String> {
    md.topics()
        .iter()
        .map(|t| t.name().to_string())
        .filter(|t| {
            t.starts_with(&format!("{prefix}."))
                && t.ends_with(".v1")
                && (dead_letters || !t.ends_with("deadletter.v1"))
                && *t != vitrina::kafka::capture_state_topic(prefix)
        })
        .collect()
}

/// Waits until the projector has applied the whole log at `brokers`, then
/// until the showcase equals the journal (under the consent rule).
pub async fn assert_projected_equals_journal(
    brokers: &str,
    journal: &tokio_postgres::Config,
    showcase: &tokio_postgres::Config,
    name: &str,
    what: &str,
) {
    wait_projected_on(brokers, showcase, name, std::time::Duration::from_secs(240)).await;
    assert_converges_to_journal(what, journal, showcase).await;
}

/// Every message of every topic with `prefix` (read from the beginning to
/// the current end, without a consumer group): (topic, partition, key,
/// payload). Not capture's own state topic (JSON, not part of the log).
pub fn read_all(prefix: &str) -> Vec<(String, i32, Vec<u8>, Vec<u8>)> {
    read_all_on(stack().brokers(), prefix)
}

/// [`read_all`] from the broker at `brokers`.
pub fn read_all_on(brokers: &str, prefix: &str) -> Vec<(String, i32, Vec<u8>, Vec<u8>)> {
    use rdkafka::consumer::{BaseConsumer, Consumer};
    use rdkafka::{ClientConfig, Message, Offset, TopicPartitionList};
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", format!("reader-{prefix}"))
        .set("enable.auto.commit", "false")
        .create()
        .unwrap();
    let md = consumer
        .fetch_metadata(None, std::time::Duration::from_secs(10))
        .unwrap();
    let names = log_topics(&md, prefix, true);
    // The true ends (tansu's ListOffsets answers short of them).
    let all_ends = vitrina::kafka::end_offsets_blocking(
        &vitrina::connections::KafkaEndpoint::new(brokers),
        &names,
    )
    .unwrap();
    let mut tpl = TopicPartitionList::new();
    let mut ends = std::collections::HashMap::new();
    for ((t, p), hi) in all_ends {
        if hi > 0 {
            tpl.add_partition_offset(&t, p, Offset::Beginning).unwrap();
            ends.insert((t, p), hi);
        }
    }
    let mut out = Vec::new();
    if ends.is_empty() {
        return out;
    }
    consumer.assign(&tpl).unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
    let mut done = std::collections::HashSet::new();
    while done.len() < ends.len() {
        assert!(
            std::time::Instant::now() < deadline,
            "reading {prefix}.* timed out"
        );
        match consumer.poll(std::time::Duration::from_millis(500)) {
            Some(Ok(m)) => {
                let k = (m.topic().to_string(), m.partition());
                out.push((
                    m.topic().to_string(),
                    m.partition(),
                    m.key().unwrap_or_default().to_vec(),
                    m.payload().unwrap_or_default().to_vec(),
                ));
                if m.offset() + 1 >= ends[&k] {
                    done.insert(k);
                }
            }
            Some(Err(e)) => panic!("consume: {e}"),
            None => {}
        }
    }
    // tansu's end offsets can be early (ListOffsets(Latest) answers the
    // newest batch's base): read on for a while (a running capture writes
    // watermarks every heartbeat, so "until nothing new" would not end).
    let tail = std::time::Instant::now() + std::time::Duration::from_secs(2);
    while std::time::Instant::now() < tail {
        let Some(Ok(m)) = consumer.poll(std::time::Duration::from_millis(500)) else {
            continue;
        };
        out.push((
            m.topic().to_string(),
            m.partition(),
            m.key().unwrap_or_default().to_vec(),
            m.payload().unwrap_or_default().to_vec(),
        ));
    }
    out
}

/// A PostgreSQL cluster of this test's own (under the temp dir), with
/// `settings` appended to its configuration; stopped and removed on drop.
pub struct OwnCluster {
    pub pg: vitrina::stack::postgres::LocalPostgres,
    root: std::path::PathBuf,
    pub port: u16,
}

impl OwnCluster {
    pub fn start(tag: &str, settings: &str) -> OwnCluster {
        OwnCluster::start_with(tag, settings, |_| {})
    }

    /// [`OwnCluster::start`], calling `prepare` with the data directory
    /// between initdb and the first start (to place certificates).
    pub fn start_with(
        tag: &str,
        settings: &str,
        prepare: impl FnOnce(&std::path::Path),
    ) -> OwnCluster {
        let root = std::env::temp_dir().join(format!("vitrina-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        let pg = vitrina::stack::postgres::LocalPostgres::new(
            &vitrina::config::StackConfig::default(),
            root.clone(),
        )
        .unwrap();
        pg.init().unwrap();
        let conf = pg.data_dir().join("postgresql.conf");
        let mut text = std::fs::read_to_string(&conf).unwrap();
        text.push_str(settings);
        std::fs::write(&conf, text).unwrap();
        prepare(&pg.data_dir());
        let port = pg.start(free_port()).unwrap();
        OwnCluster { pg, root, port }
    }

    pub fn config(&self) -> tokio_postgres::Config {
        let mut c = tokio_postgres::Config::new();
        c.host("127.0.0.1")
            .port(self.port)
            .user(vitrina::stack::postgres::SUPERUSER)
            .dbname("postgres");
        c
    }

    /// Environment that makes `vitrina` use this cluster as its journal.
    pub fn as_journal(&self) -> Vec<(&'static str, String)> {
        vec![
            ("VITRINA_JOURNAL__HOST", "127.0.0.1".into()),
            ("VITRINA_JOURNAL__PORT", self.port.to_string()),
        ]
    }
}

impl Drop for OwnCluster {
    fn drop(&mut self) {
        let _ = self.pg.stop();
        let _ = std::fs::remove_dir_all(&self.root);
    }
}

/// (entity, key) → state of a showcase or of the journal.
pub type ShowState = std::collections::BTreeMap<(String, String), Vec<vitrina::events::Val>>;

pub async fn showcase_state(cfg: &(impl vitrina::pg::Connectable + ?Sized)) -> ShowState {
    use chrono::{DateTime, NaiveDate, NaiveTime, Timelike, Utc};
    use vitrina::events::{contract::ENTITIES, Ty, Val};
    let c = vitrina::pg::connect(cfg).await.unwrap();
    let epoch = NaiveDate::from_ymd_opt(1970, 1, 1).unwrap();
    let mut out = ShowState::new();
    for e in ENTITIES {
        let cols: Vec<&str> = e.fields.iter().map(|f| f.name).collect();
        let sql = format!(
            "SELECT key, {} FROM showcase.{} WHERE NOT deleted",
            cols.join(", "),
            e.name
        );
        for r in c.query(&sql, &[]).await.unwrap() {
            let mut vals = Vec::new();
            for (i, f) in e.fields.iter().enumerate() {
                let j = i + 1;
                let v = match f.ty {
                    Ty::Long => r.get::<_, Option<i64>>(j).map(Val::Long),
                    Ty::Int => r.get::<_, Option<i32>>(j).map(Val::Int),
                    Ty::Double => r.get::<_, Option<f64>>(j).map(Val::Double),
                    Ty::Bool => r.get::<_, Option<bool>>(j).map(Val::Bool),
                    Ty::Str => r.get::<_, Option<String>>(j).map(Val::Str),
                    Ty::Date => r
                        .get::<_, Option<NaiveDate>>(j)
                        .map(|d| Val::Date((d - epoch).num_days() as i32)),
                    Ty::Timestamp => r
                        .get::<_, Option<DateTime<Utc>>>(j)
                        .map(|t| Val::Timestamp(t.timestamp_micros())),
                    Ty::Time => r.get::<_, Option<NaiveTime>>(j).map(|t| {
                        Val::Time(
                            t.num_seconds_from_midnight() as i64 * 1_000_000
                                + (t.nanosecond() / 1000) as i64,
                        )
                    }),
                };
                vals.push(v.unwrap_or(Val::Null));
            }
            out.insert((e.name.to_string(), r.get(0)), vals);
        }
    }
    out
}

/// Waits until the projector's stored offsets reach the end of every topic.
pub async fn wait_projected(
    showcase: &(impl vitrina::pg::Connectable + ?Sized),
    prefix: &str,
    timeout: std::time::Duration,
) {
    wait_projected_on(stack().brokers(), showcase, prefix, timeout).await
}

/// [`wait_projected`] against the broker at `brokers`.
pub async fn wait_projected_on(
    brokers: &str,
    showcase: &(impl vitrina::pg::Connectable + ?Sized),
    prefix: &str,
    timeout: std::time::Duration,
) {
    wait_projected_with(brokers, &[], showcase, prefix, timeout).await
}

/// [`wait_projected_on`] with client properties (TLS).
pub async fn wait_projected_with(
    brokers: &str,
    props: &[(&str, &str)],
    showcase: &(impl vitrina::pg::Connectable + ?Sized),
    prefix: &str,
    timeout: std::time::Duration,
) {
    use rdkafka::consumer::{BaseConsumer, Consumer};
    use std::time::Duration;
    let mut client = rdkafka::ClientConfig::new();
    client.set("bootstrap.servers", brokers);
    for (k, v) in props {
        client.set(*k, *v);
    }
    let consumer: BaseConsumer = client.create().unwrap();
    let md = consumer
        .fetch_metadata(None, Duration::from_secs(10))
        .unwrap();
    let names = log_topics(&md, prefix, false);
    let mut kafka = vitrina::connections::KafkaEndpoint::new(brokers);
    for (k, v) in props {
        kafka.properties.0.insert(k.to_string(), v.to_string());
    }
    // The true ends (tansu's ListOffsets answers short of them).
    let ends: Vec<(String, i32, i64)> = vitrina::kafka::end_offsets(&kafka, &names)
        .await
        .unwrap()
        .into_iter()
        .map(|((t, p), hi)| (t, p, hi))
        .collect();
    let c = vitrina::pg::connect(showcase).await.unwrap();
    let deadline = std::time::Instant::now() + timeout;
    loop {
        let mut behind = 0;
        for (t, p, hi) in &ends {
            let at: Option<i64> = c
                .query_opt("SELECT next_offset FROM showcase.consumer_offsets WHERE topic = $1 AND partition = $2", &[t, p])
                .await
                .ok()
                .flatten()
                .map(|r| r.get(0));
            if at.unwrap_or(0) < *hi {
                behind += 1;
            }
        }
        if behind == 0 {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{behind} partitions not projected in {timeout:?}"
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

/// The journal's state as the showcase may show it: medical detail (the
/// reason of an illness mark, an exemption's diagnosis and PE group) only
/// for students with a granted medical-data consent, computed here straight
/// from the journal tables.
pub async fn under_consent(
    cfg: &(impl vitrina::pg::Connectable + ?Sized),
    mut state: ShowState,
) -> ShowState {
    use vitrina::events::Val;
    let c = vitrina::pg::connect(cfg).await.unwrap();
    let consenting: std::collections::HashSet<i64> = column(
        &c,
        "SELECT DISTINCT student_id FROM journal.parental_consents
          WHERE kind = 'medical_data_transfer' AND status = 'granted'",
    )
    .await
    .into_iter()
    .collect();
    let index = |entity: &str, field: &str| {
        vitrina::events::contract::entity(entity)
            .unwrap()
            .fields
            .iter()
            .position(|f| f.name == field)
            .unwrap()
    };
    let mut redacted = 0;
    for ((entity, _), vals) in state.iter_mut() {
        let hidden: &[&str] = match entity.as_str() {
            "attendance" if vals[index("attendance", "code")] == Val::Str("Б".into()) => {
                &["reason"]
            }
            "medical_exemption" => &["diagnosis_group", "pe_group"],
            _ => continue,
        };
        let Val::Long(student) = vals[index(entity, "student_id")] else {
            continue;
        };
        if consenting.contains(&student) {
            continue;
        }
        for f in hidden {
            let i = index(entity, f);
            if vals[i] != Val::Null {
                vals[i] = Val::Null;
                redacted += 1;
            }
        }
    }
    assert!(
        redacted > 0,
        "the region has medical detail without consent"
    );
    state
}

fn openssl(dir: &std::path::Path, args: &[&str]) {
    let out = std::process::Command::new("openssl")
        .current_dir(dir)
        .args(args)
        .output()
        .expect("openssl runs (Debian's openssl)");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A CA, a server certificate it signed for 127.0.0.1 and localhost, and
/// another CA that signed nothing here.
pub fn certificates(dir: &std::path::Path) {
    std::fs::create_dir_all(dir).unwrap();
    openssl(
        dir,
        &[
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            "ca.key",
            "-out",
            "ca.crt",
            "-days",
            "2",
            "-subj",
            "/CN=vitrina test CA",
        ],
    );
    openssl(
        dir,
        &[
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            "server.key",
            "-out",
            "server.csr",
            "-subj",
            "/CN=localhost",
        ],
    );
    std::fs::write(
        dir.join("san.ext"),
        "subjectAltName=IP:127.0.0.1,DNS:localhost\n",
    )
    .unwrap();
    openssl(
        dir,
        &[
            "x509",
            "-req",
            "-in",
            "server.csr",
            "-CA",
            "ca.crt",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            "server.crt",
            "-days",
            "2",
            "-extfile",
            "san.ext",
        ],
    );
    openssl(
        dir,
        &[
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            "other.key",
            "-out",
            "other.crt",
            "-days",
            "2",
            "-subj",
            "/CN=another CA",
        ],
    );
}

/// Waits until the showcase at `showcase` holds `want` (the broker's end
/// offsets, which `wait_projected` reads, can be early on tansu), then
/// asserts it, naming the differences.
pub async fn assert_showcase_converges(
    what: &str,
    showcase: &(impl vitrina::pg::Connectable + ?Sized),
    want: &ShowState,
    timeout: std::time::Duration,
) {
    let deadline = std::time::Instant::now() + timeout;
    loop {
        let got = showcase_state(showcase).await;
        if &got == want || std::time::Instant::now() > deadline {
            assert_same_state(what, &got, want);
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    }
}

/// Capture caught up with `journal`, the showcase with capture's topics
/// (`name` is the slot and the topic prefix), then the showcase equal to
/// the journal under consent, row by row: how a test ends that compares
/// them after its faults.
pub async fn assert_showcase_equals_journal(
    what: &str,
    journal: &(impl vitrina::pg::Connectable + ?Sized),
    name: &str,
    showcase: &(impl vitrina::pg::Connectable + ?Sized),
) {
    let timeout = std::time::Duration::from_secs(240);
    wait_caught_up(journal, name, timeout).await;
    wait_projected(showcase, name, timeout).await;
    assert_converges_to_journal(what, journal, showcase).await;
}

/// The showcase converges to the journal under the consent rule, row by row
/// (within 60 s).
async fn assert_converges_to_journal(
    what: &str,
    journal: &(impl vitrina::pg::Connectable + ?Sized),
    showcase: &(impl vitrina::pg::Connectable + ?Sized),
) {
    assert_showcase_converges(
        what,
        showcase,
        &under_consent(journal, journal_view(journal, true).await).await,
        std::time::Duration::from_secs(60),
    )
    .await;
}

/// The highest freshness age (`now() - showcase.status.fresh_as_of`, in
/// seconds) seen while a fault runs, sampled every 250 ms until
/// [`FreshnessWatch::highest`] is called.
pub struct FreshnessWatch {
    stop: tokio_util::sync::CancellationToken,
    task: tokio::task::JoinHandle<Option<f64>>,
}

impl FreshnessWatch {
    pub fn start(showcase: &tokio_postgres::Config) -> FreshnessWatch {
        let (cfg, stop) = (showcase.clone(), tokio_util::sync::CancellationToken::new());
        let token = stop.clone();
        let task = tokio::spawn(async move {
            let mut highest: Option<f64> = None;
            let mut client = None;
            while !token.is_cancelled() {
                if client.is_none() {
                    // The showcase may itself be the fault: reconnect.
                    client = vitrina::pg::connect(&cfg).await.ok();
                }
                if let Some(c) = &client {
                    match c
                        .query_one(
                            "SELECT extract(epoch FROM now() - fresh_as_of)::float8 FROM showcase.status",
                            &[],
                        )
                        .await
                    {
                        Ok(r) => {
                            if let Some(age) = r.get::<_, Option<f64>>(0) {
                                highest = Some(highest.map_or(age, |h: f64| h.max(age)));
                            }
                        }
                        Err(_) => client = None,
                    }
                }
                tokio::select! {
                    _ = token.cancelled() => {}
                    _ = tokio::time::sleep(std::time::Duration::from_millis(250)) => {}
                }
            }
            highest
        });
        FreshnessWatch { stop, task }
    }

    /// Stops sampling; the highest age seen (None: never known).
    pub async fn highest(self) -> Option<f64> {
        self.stop.cancel();
        self.task.await.unwrap()
    }
}

/// Slow fault variants (minutes of outage against default timeouts) run
/// only with `VITRINA_SLOW_FAULTS=1`.
pub fn slow_faults() -> bool {
    std::env::var("VITRINA_SLOW_FAULTS").is_ok_and(|v| v == "1")
}

pub type FoldState = std::collections::BTreeMap<(String, String), Vec<vitrina::events::Val>>;
/// Source position (commit LSN, change LSN) and state of the latest event per key.
type Latest =
    std::collections::HashMap<(String, String), ((u64, u64), Option<Vec<vitrina::events::Val>>)>;

/// What the topics say the journal holds: per (entity, key), the state of
/// the event with the highest source position.
pub fn fold(messages: &[(String, i32, Vec<u8>, Vec<u8>)], prefix: &str) -> (FoldState, usize) {
    use std::collections::HashMap;
    use vitrina::events::{codec::Registry, Message, Op};
    let reg = Registry::new();
    let mut latest: Latest = HashMap::new();
    let mut truncated: HashMap<String, (u64, u64)> = HashMap::new();
    let mut events = 0;
    for (topic, _, _, payload) in messages {
        if topic == &format!("{prefix}.deadletter.v1")
            || topic == &format!("{prefix}.medical_detail.v1")
        {
            continue;
        }
        let Message::Event(e) = reg
            .decode_message(payload)
            .expect("every message decodes with avro/")
        else {
            continue;
        };
        events += 1;
        let pos = (e.source.commit_lsn, e.source.lsn);
        if e.op == Op::Truncate {
            let t = truncated.entry(e.entity.name.to_string()).or_default();
            *t = (*t).max(pos);
            continue;
        }
        let k = (e.entity.name.to_string(), e.key.clone());
        let slot = latest.entry(k).or_insert(((0, 0), None));
        if pos >= slot.0 {
            *slot = (pos, e.after.clone());
        }
    }
    let state = latest
        .into_iter()
        .filter(|((entity, _), (pos, _))| truncated.get(entity).is_none_or(|t| pos > t))
        .filter_map(|(k, (_, after))| after.map(|a| (k, a)))
        .collect();
    (state, events)
}

/// `vitrina capture` run to its end: exit code and standard error.
pub fn run_capture_to_exit_with(
    db: &str,
    name: &str,
    env: &[(&str, &str)],
) -> (Option<i32>, String) {
    let out = run_vitrina(db, name, &["capture"], env);
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).to_string(),
    )
}

/// Publishes to `topic[0]` of the test stack's broker an event of a schema
/// no vitrina knows (fingerprint abababababababab); its offset, from the
/// delivery report.
pub async fn publish_from_the_future(topic: &str) -> i64 {
    use rdkafka::producer::{FutureProducer, FutureRecord};
    let producer: FutureProducer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", stack().brokers())
        .create()
        .unwrap();
    let mut newer = vitrina::events::codec::MAGIC.to_vec();
    newer.extend_from_slice(&[0xAB; 8]);
    newer.extend_from_slice(b"a body of a schema from the future");
    producer
        .send(
            FutureRecord::to(topic)
                .key("1")
                .payload(&newer)
                .partition(0),
            std::time::Duration::from_secs(10),
        )
        .await
        .unwrap()
        .offset
}

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
use vitrina::stack::{Endpoints, Stack};

pub struct TestStack {
    pub cfg: Config,
    pub ep: Endpoints,
}

impl TestStack {
    pub fn brokers(&self) -> &str {
        self.ep.kafka_brokers.as_deref().expect("test broker runs")
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
        let cfg = Config {
            state_dir: dir,
            ..Config::default()
        };
        let stack = Stack::new(&cfg).expect("stack");
        stack
            .up()
            .unwrap_or_else(|e| panic!("starting the test stack: {e}"));
        let ep = stack.endpoints().expect("endpoints");
        drop(lock);
        TestStack { cfg, ep }
    })
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
    let admin = vitrina::pg::connect(&st.ep.pg_config("postgres"))
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
    st.ep.pg_config(&name)
}

/// A fresh database with the reference journal schema.
pub async fn journal_db(prefix: &str) -> tokio_postgres::Config {
    let cfg = fresh_db(prefix).await;
    let mut c = vitrina::pg::connect(&cfg).await.unwrap();
    vitrina::journal::migrate(&mut c).await.expect("migrate");
    cfg
}

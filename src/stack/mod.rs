//! The local stack: a private PostgreSQL cluster with logical replication and
//! a Kafka-protocol broker (nisshi, keeping the log where
//! `stack.kafka_storage` says),
//! started as plain processes under `state_dir`. Used when the configuration
//! names no external services.
//!
//! ```text
//!   state_dir/
//!     stack.json          ports and pids, read by `status` and by every command
//!     postgres/data       the cluster (initdb), vitrina.conf, postmaster.pid
//!     postgres/run        its unix socket
//!     postgres/postgres.log
//!     kafka/postgres/     the event log's own cluster, with stack.kafka_storage = "postgres"
//!     kafka/<broker>.log  the broker's output, kafka/<broker>.pid (nisshi for
//!                         "postgres", nisshi-memory for "memory")
//! ```
//!
//! Invariants:
//! - `up` is idempotent: services that run are left alone (with memory
//!   storage, restarting the broker would lose the event log).
//! - Every service is checked for readiness before `up` returns.
//! - A missing binary is an error that says how to install it.

pub mod broker;
pub mod postgres;
pub mod process;

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::config::Config;
use crate::connections::{Connections, LocalServices};

#[derive(Debug, thiserror::Error)]
pub enum StackError {
    #[error("{what} not found\nhint: {hint}")]
    MissingBinary { what: String, hint: &'static str },
    #[error("OS user `{0}` does not exist; PostgreSQL cannot run as root\nhint: install postgresql (it creates the `postgres` user) or set stack.pg_os_user to an unprivileged user")]
    NoOsUser(String),
    #[error("cannot start {what}: {source}")]
    Spawn {
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{what} failed:\n{output}\nhint: see {log}", log = .log.display())]
    Failed {
        what: String,
        output: String,
        log: PathBuf,
    },
    #[error("{what} did not become ready in time; last lines of {log}:\n{tail}", log = .log.display())]
    NotReady {
        what: String,
        log: PathBuf,
        tail: String,
    },
    #[error("{path}: {source}", path = .path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// What `up` recorded: enough for any later command to find the services.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct StackState {
    pub postgres_port: Option<u16>,
    pub kafka_port: Option<u16>,
}

pub struct Stack {
    state_dir: PathBuf,
    cfg: Config,
}

/// One line of `vitrina status`.
#[derive(Debug, Clone, Serialize)]
pub struct ServiceStatus {
    pub service: &'static str,
    pub running: bool,
    pub pid: Option<i32>,
    pub address: Option<String>,
    pub data: String,
    pub log: String,
}

/// The services as a table (`vitrina up`, `vitrina status`).
pub fn render_services(st: &[ServiceStatus]) -> String {
    let mut o = format!(
        "{:<10} {:<8} {:>8}  {:<22} LOG\n",
        "SERVICE", "STATE", "PID", "ADDRESS"
    );
    for s in st {
        o.push_str(&format!(
            "{:<10} {:<8} {:>8}  {:<22} {}\n",
            s.service,
            if s.running { "running" } else { "stopped" },
            s.pid.map(|p| p.to_string()).unwrap_or_else(|| "-".into()),
            s.address.clone().unwrap_or_else(|| "-".into()),
            s.log
        ));
    }
    for s in st.iter().filter(|s| s.data != "-") {
        o.push_str(&format!("{} data: {}\n", s.service, s.data));
    }
    o
}

impl Stack {
    pub fn new(cfg: &Config) -> Result<Stack, StackError> {
        let dir = &cfg.state_dir;
        std::fs::create_dir_all(dir).map_err(|e| StackError::Io {
            path: dir.clone(),
            source: e,
        })?;
        let state_dir = dir.canonicalize().map_err(|e| StackError::Io {
            path: dir.clone(),
            source: e,
        })?;
        Ok(Stack {
            state_dir,
            cfg: cfg.clone(),
        })
    }

    fn state_path(&self) -> PathBuf {
        self.state_dir.join("stack.json")
    }

    pub fn read_state(&self) -> StackState {
        std::fs::read(self.state_path())
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or_default()
    }

    fn write_state(&self, s: &StackState) -> Result<(), StackError> {
        let path = self.state_path();
        let tmp = path.with_extension("json.tmp");
        let bytes = serde_json::to_vec_pretty(s).expect("state serializes");
        std::fs::write(&tmp, bytes)
            .and_then(|_| std::fs::rename(&tmp, &path))
            .map_err(|e| StackError::Io { path, source: e })
    }

    pub fn postgres(&self) -> Result<postgres::LocalPostgres, StackError> {
        postgres::LocalPostgres::new(&self.cfg.stack, self.postgres_root())
    }

    /// `state_dir/postgres`, or where [`cluster_root`] moves it.
    fn postgres_root(&self) -> PathBuf {
        cluster_root(self.state_dir.join("postgres"))
    }

    pub fn broker(&self) -> broker::LocalBroker {
        broker::LocalBroker::new(&self.cfg.stack, self.state_dir.join("kafka"))
    }

    fn wants_local_postgres(&self) -> bool {
        self.cfg.journal.is_local() || self.cfg.showcase.is_local()
    }

    fn wants_local_kafka(&self) -> bool {
        self.cfg.kafka.brokers.is_none()
    }

    /// Starts what is not running; harmless when everything runs.
    pub fn up(&self) -> Result<Vec<ServiceStatus>, StackError> {
        let mut state = self.read_state();
        if self.wants_local_postgres() {
            let pg = self.postgres()?;
            let port = pick_port(
                pg.running_port().filter(|_| pg.running_pid().is_some()),
                self.cfg.stack.pg_port,
                state.postgres_port,
            )?;
            state.postgres_port = Some(pg.start(port)?);
            self.write_state(&state)?;
        }
        if self.wants_local_kafka() {
            let broker = self.broker();
            let running = broker.running_pid().and(state.kafka_port);
            let port = pick_port(running, self.cfg.stack.kafka_port, state.kafka_port)?;
            state.kafka_port = Some(broker.start(port)?);
            self.write_state(&state)?;
        }
        self.status()
    }

    /// Stops the local services; returns what was stopped.
    pub fn down(&self) -> Result<Vec<&'static str>, StackError> {
        let mut stopped = Vec::new();
        if self.broker().stop()? {
            stopped.push("kafka");
        }
        if let Ok(pg) = self.postgres() {
            if pg.stop()? {
                stopped.push("postgres");
            }
        }
        Ok(stopped)
    }

    pub fn status(&self) -> Result<Vec<ServiceStatus>, StackError> {
        let state = self.read_state();
        let mut out = Vec::new();
        for (section, db) in [
            ("journal", &self.cfg.journal),
            ("showcase", &self.cfg.showcase),
        ] {
            if let Some(host) = &db.host {
                out.push(ServiceStatus {
                    service: section,
                    running: true,
                    pid: None,
                    address: Some(format!("{host}:{} (external)", db.port.unwrap_or(5432))),
                    data: "-".into(),
                    log: "-".into(),
                });
            }
        }
        if self.wants_local_postgres() {
            let pg = self.postgres()?;
            let pid = pg.running_pid();
            out.push(ServiceStatus {
                service: "postgres",
                running: pid.is_some(),
                pid,
                address: pg
                    .running_port()
                    .or(state.postgres_port)
                    .map(|p| format!("127.0.0.1:{p}")),
                data: pg.data_dir().display().to_string(),
                log: pg.log_path().display().to_string(),
            });
        }
        if let Some(brokers) = &self.cfg.kafka.brokers {
            out.push(ServiceStatus {
                service: "kafka",
                running: true,
                pid: None,
                address: Some(format!("{brokers} (external)")),
                data: "-".into(),
                log: "-".into(),
            });
        } else {
            let b = self.broker();
            let pid = b.running_pid();
            out.push(ServiceStatus {
                service: "kafka",
                running: pid.is_some(),
                pid,
                address: state.kafka_port.map(|p| format!("127.0.0.1:{p}")),
                data: b.describe_storage(),
                log: b.log_path().display().to_string(),
            });
        }
        Ok(out)
    }

    /// What the local stack runs now: the provider of every section the
    /// configuration leaves without a host.
    pub fn local_services(&self) -> LocalServices {
        let state = self.read_state();
        let postgres = self.postgres().ok().and_then(|pg| {
            pg.running_pid()?;
            let port = pg.running_port().or(state.postgres_port)?;
            Some((
                "127.0.0.1".to_string(),
                port,
                postgres::SUPERUSER.to_string(),
            ))
        });
        let kafka = state
            .kafka_port
            .filter(|_| self.broker().running_pid().is_some())
            .map(|port| format!("127.0.0.1:{port}"));
        LocalServices { postgres, kafka }
    }

    /// The connections every command uses: external ones from the
    /// configuration, the rest from the running local stack.
    pub fn connections(&self) -> Result<Connections, StackError> {
        Ok(Connections::resolve(&self.cfg, &self.local_services()))
    }
}

/// Where a local PostgreSQL cluster wanted at `wanted` lives: there, unless
/// vitrina runs as root and the unprivileged server user could not reach it
/// (a parent directory closed to others, like `/root`); then a directory
/// under the system temp dir named after `wanted`, so each keeps its own.
pub fn cluster_root(wanted: PathBuf) -> PathBuf {
    let parent = wanted.parent().unwrap_or(&wanted);
    if !process::is_root() || process::traversable_by_others(parent) {
        return wanted;
    }
    let tag = crate::journal::checksum(&parent.to_string_lossy());
    let name = wanted
        .file_name()
        .map_or("postgres".into(), |n| n.to_string_lossy());
    std::env::temp_dir().join(format!("vitrina-{name}-{tag}"))
}

/// The port to start a service on: the one it runs on, else the configured
/// one, else the one used last time if still free, else a fresh free one.
fn pick_port(running: Option<u16>, configured: u16, last: Option<u16>) -> Result<u16, StackError> {
    if let Some(p) = running {
        return Ok(p);
    }
    if configured != 0 {
        return Ok(configured);
    }
    if let Some(p) = last.filter(|p| process::port_is_free(*p)) {
        return Ok(p);
    }
    process::free_port().map_err(|e| StackError::Io {
        path: PathBuf::from("127.0.0.1:0"),
        source: e,
    })
}

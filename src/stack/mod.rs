//! The local stack: a private PostgreSQL cluster with logical replication and
//! a tansu Kafka-protocol broker, started as plain processes under
//! `state_dir`. Used when the configuration names no external services.
//!
//! ```text
//!   state_dir/
//!     stack.json          ports and pids, read by `status` and by every command
//!     postgres/data       the cluster (initdb), vitrina.conf, postmaster.pid
//!     postgres/run        its unix socket
//!     postgres/postgres.log
//!     kafka/tansu.log     the broker's output, kafka/tansu.pid
//! ```
//!
//! Invariants:
//! - `up` is idempotent: services that run are left alone (tansu keeps its
//!   records in memory, so restarting it would lose the event log).
//! - Every service is checked for readiness before `up` returns.
//! - A missing binary is an error that says how to install it.

pub mod postgres;
pub mod process;
pub mod tansu;

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::config::Config;

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
    #[error("the local stack is not running (no {state} or its services are down)\nhint: run `vitrina up` first, or configure postgres.host and kafka.brokers for external services", state = .0.display())]
    NotUp(PathBuf),
}

/// What `up` recorded: enough for any later command to find the services.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct StackState {
    pub postgres_port: Option<u16>,
    pub kafka_port: Option<u16>,
}

/// Where the services are, local or external.
#[derive(Debug, Clone, Serialize)]
pub struct Endpoints {
    pub pg_host: String,
    pub pg_port: u16,
    pub pg_user: String,
    #[serde(skip)]
    pub pg_password: Option<crate::config::Secret>,
    /// `None` when the local broker is not running.
    pub kafka_brokers: Option<String>,
}

impl Endpoints {
    /// A libpq-style connection string for `database`, for tokio-postgres.
    pub fn pg_config(&self, database: &str) -> tokio_postgres::Config {
        let mut c = tokio_postgres::Config::new();
        c.host(&self.pg_host)
            .port(self.pg_port)
            .user(&self.pg_user)
            .dbname(database)
            .application_name("vitrina");
        if let Some(p) = &self.pg_password {
            c.password(p.expose());
        }
        c
    }

    /// The Kafka bootstrap servers, or an error saying how to start them.
    pub fn kafka(&self, state_dir: &Path) -> Result<&str, StackError> {
        self.kafka_brokers
            .as_deref()
            .ok_or_else(|| StackError::NotUp(state_dir.join("stack.json")))
    }

    /// A URL for people and tools like psql (password left out).
    pub fn pg_url(&self, database: &str) -> String {
        format!(
            "postgres://{}@{}:{}/{}",
            self.pg_user, self.pg_host, self.pg_port, database
        )
    }
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

    /// `state_dir/postgres`, unless vitrina runs as root and the unprivileged
    /// server user could not reach it (a parent directory closed to others,
    /// like `/root`): then a directory under the system temp dir, named
    /// after the state dir so each state dir keeps its own cluster.
    fn postgres_root(&self) -> PathBuf {
        let wanted = self.state_dir.join("postgres");
        if !process::is_root() || process::traversable_by_others(&self.state_dir) {
            return wanted;
        }
        let tag = crate::journal::checksum(&self.state_dir.to_string_lossy());
        std::env::temp_dir().join(format!("vitrina-postgres-{tag}"))
    }

    pub fn broker(&self) -> tansu::LocalBroker {
        tansu::LocalBroker::new(&self.cfg.stack, self.state_dir.join("kafka"))
    }

    fn wants_local_postgres(&self) -> bool {
        self.cfg.postgres.host.is_none()
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
        if let Some(host) = &self.cfg.postgres.host {
            out.push(ServiceStatus {
                service: "postgres",
                running: true,
                pid: None,
                address: Some(format!(
                    "{host}:{} (external)",
                    self.cfg.postgres.port.unwrap_or(5432)
                )),
                data: "-".into(),
                log: "-".into(),
            });
        } else {
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
                data: "memory (lost when the broker stops)".into(),
                log: b.log_path().display().to_string(),
            });
        }
        Ok(out)
    }

    /// The endpoints every command uses: external ones from the config, else
    /// the running local stack's. PostgreSQL must be reachable; Kafka is
    /// checked by the commands that need it ([`Endpoints::kafka`]).
    pub fn endpoints(&self) -> Result<Endpoints, StackError> {
        let state = self.read_state();
        let (pg_host, pg_port) = match &self.cfg.postgres.host {
            Some(h) => (h.clone(), self.cfg.postgres.port.unwrap_or(5432)),
            None => {
                let pg = self.postgres()?;
                if pg.running_pid().is_none() {
                    return Err(StackError::NotUp(self.state_path()));
                }
                let port = pg
                    .running_port()
                    .or(state.postgres_port)
                    .ok_or_else(|| StackError::NotUp(self.state_path()))?;
                ("127.0.0.1".to_string(), port)
            }
        };
        let kafka_brokers = match &self.cfg.kafka.brokers {
            Some(b) => Some(b.clone()),
            None => state
                .kafka_port
                .filter(|_| self.broker().running_pid().is_some())
                .map(|port| format!("127.0.0.1:{port}")),
        };
        Ok(Endpoints {
            pg_host,
            pg_port,
            pg_user: if self.cfg.postgres.host.is_some() {
                self.cfg.postgres.user.clone()
            } else {
                postgres::SUPERUSER.to_string()
            },
            pg_password: self.cfg.postgres.password.clone(),
            kafka_brokers,
        })
    }
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

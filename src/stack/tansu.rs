//! The local Kafka-protocol broker: tansu (crates.io, pinned in
//! `scripts/bootstrap`) on loopback, keeping the event log in memory, or in
//! a SQLite file under its directory (its `libsql` engine; decision 0004).
//!
//! Memory storage keeps no records across the broker's restart, so `start`
//! never restarts a running broker.

use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::ClientConfig;

use super::process::{self, find_executable, pid_alive};
use super::StackError;
use crate::config::StackConfig;

/// The tansu release vitrina is tested with (installed by `scripts/bootstrap`).
pub const TANSU_VERSION: &str = "0.6.0";

/// Where the broker keeps the event log.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Storage {
    /// In the broker's memory: lost when it stops; both stages detect the
    /// loss (decision 0004).
    #[default]
    Memory,
    /// `kafka/tansu.db` (SQLite, write-ahead log): survives `down`/`up`;
    /// seen losing acknowledged records on a SIGKILL; slows down as the log grows
    /// (decision 0004: answered at once after a restart with 604,000
    /// events, not for minutes with 2.9 million).
    Disk,
}

/// The file the disk storage keeps, relative to the broker's directory.
pub const DISK_FILE: &str = "tansu.db";

impl Storage {
    /// tansu's `--storage-engine` (the SQLite path is taken relative to the
    /// broker's working directory, its root here).
    fn engine_url(self) -> String {
        match self {
            Storage::Disk => format!("sqlite://{DISK_FILE}"),
            Storage::Memory => "memory://tansu/".to_string(),
        }
    }
}

pub struct LocalBroker {
    bin: PathBuf,
    root: PathBuf,
    ready_timeout: Duration,
    /// The address clients are told to use, when it is not the listener's
    /// (a TLS terminator in front of the broker).
    advertised: Option<String>,
    /// Clients must authenticate (SASL) before anything else.
    authentication: bool,
    storage: Storage,
}

impl LocalBroker {
    pub fn new(cfg: &StackConfig, root: PathBuf) -> Self {
        LocalBroker {
            advertised: None,
            authentication: false,
            storage: cfg.kafka_storage,
            bin: cfg.tansu_bin.clone(),
            root,
            ready_timeout: Duration::from_secs(cfg.ready_timeout_s),
        }
    }

    /// Keeps the log in `storage` rather than the configured one.
    pub fn with_storage(mut self, storage: Storage) -> Self {
        self.storage = storage;
        self
    }

    pub fn storage(&self) -> Storage {
        self.storage
    }

    /// Where the log lives, for `status`.
    pub fn describe_storage(&self) -> String {
        match self.storage {
            Storage::Disk => self.root.join(DISK_FILE).display().to_string(),
            Storage::Memory => "memory (lost when the broker stops)".to_string(),
        }
    }

    /// Tells clients to connect to `host:port` (e.g. stunnel in front).
    pub fn advertising(mut self, host_port: &str) -> Self {
        self.advertised = Some(format!("tcp://{host_port}"));
        self
    }

    /// Requires SASL authentication of every client (tansu's
    /// `--authentication`). With the storage engines built here tansu
    /// knows no SCRAM credentials: every login is refused.
    pub fn authenticating(mut self) -> Self {
        self.authentication = true;
        self
    }

    pub fn log_path(&self) -> PathBuf {
        self.root.join("tansu.log")
    }
    fn pid_path(&self) -> PathBuf {
        self.root.join("tansu.pid")
    }

    pub fn running_pid(&self) -> Option<i32> {
        let pid: i32 = std::fs::read_to_string(self.pid_path())
            .ok()?
            .trim()
            .parse()
            .ok()?;
        pid_alive(pid).then_some(pid)
    }

    pub fn start(&self, port: u16) -> Result<u16, StackError> {
        if self.running_pid().is_some() {
            return Ok(port);
        }
        let bin = find_executable(&self.bin).ok_or_else(|| StackError::MissingBinary {
            what: format!("the tansu broker (`{}`)", self.bin.display()),
            hint: "run scripts/bootstrap (it runs `cargo install tansu --version 0.6.0 --locked --features dynostore,libsql`), or set stack.tansu_bin",
        })?;
        std::fs::create_dir_all(&self.root).map_err(|e| StackError::Io {
            path: self.root.clone(),
            source: e,
        })?;
        let log = std::fs::File::create(self.log_path()).map_err(|e| StackError::Io {
            path: self.log_path(),
            source: e,
        })?;
        let log2 = log.try_clone().map_err(|e| StackError::Io {
            path: self.log_path(),
            source: e,
        })?;
        let url = format!("tcp://127.0.0.1:{port}");
        let mut cmd = Command::new(&bin);
        cmd.arg("broker");
        if self.authentication {
            cmd.arg("--authentication");
        }
        let child = cmd
            .args(["--storage-engine", &self.storage.engine_url()])
            .args(["--listener-url", &url])
            .args([
                "--advertised-listener-url",
                self.advertised.as_deref().unwrap_or(&url),
            ])
            .current_dir(&self.root)
            // The group coordinator's decisions (members expired, leaders
            // chosen) at info: few lines, and what a stalled group needs.
            .env("RUST_LOG", "warn,tansu_broker::coordinator=info")
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log2)
            // Its own process group: a Ctrl-C in the shell that ran `up`
            // does not reach the broker.
            .process_group(0)
            .spawn()
            .map_err(|e| StackError::Spawn {
                what: format!("tansu ({})", bin.display()),
                source: e,
            })?;
        let pid = child.id() as i32;
        // The broker outlives us; dropping `child` neither waits nor kills.
        drop(child);
        std::fs::write(self.pid_path(), pid.to_string()).map_err(|e| StackError::Io {
            path: self.pid_path(),
            source: e,
        })?;
        // Stop waiting as soon as the broker exits (bad flags, missing
        // storage feature, port taken).
        process::wait_until(self.ready_timeout, || {
            !pid_alive(pid) || process::port_accepts(port)
        });
        // Behind a terminator, metadata would send the check elsewhere.
        let ready = pid_alive(pid)
            && process::port_accepts(port)
            && (self.advertised.is_some()
                || metadata_ok(&format!("127.0.0.1:{port}"), self.ready_timeout));
        if !ready {
            process::signal(pid, libc::SIGKILL);
            let tail = process::tail(&self.log_path(), 20);
            if tail.contains("FeatureNotEnabled") {
                return Err(StackError::MissingBinary {
                    what: format!(
                        "a tansu built with the storage engine for {} (`{}`)",
                        self.storage.engine_url(),
                        bin.display()
                    ),
                    hint: "run scripts/bootstrap (it runs `cargo install tansu --version 0.6.0 --locked --features dynostore,libsql`), or set stack.kafka_storage = \"memory\"",
                });
            }
            return Err(StackError::NotReady {
                what: format!("tansu on 127.0.0.1:{port}"),
                log: self.log_path(),
                tail,
            });
        }
        Ok(port)
    }

    pub fn stop(&self) -> Result<bool, StackError> {
        let Some(pid) = self.running_pid() else {
            return Ok(false);
        };
        process::signal(pid, libc::SIGCONT);
        process::signal(pid, libc::SIGTERM);
        if !process::wait_until(Duration::from_secs(10), || !pid_alive(pid)) {
            process::signal(pid, libc::SIGKILL);
            process::wait_until(Duration::from_secs(5), || !pid_alive(pid));
        }
        let _ = std::fs::remove_file(self.pid_path());
        Ok(true)
    }
}

/// True when the broker answers a metadata request.
pub fn metadata_ok(brokers: &str, timeout: Duration) -> bool {
    let consumer: Result<BaseConsumer, _> = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("log_level", "3")
        .create();
    let Ok(consumer) = consumer else {
        return false;
    };
    process::wait_until(timeout, || {
        consumer
            .fetch_metadata(None, Duration::from_secs(2))
            .is_ok()
    })
}

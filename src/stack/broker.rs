//! The local Kafka-protocol broker on loopback: nisshi 0.8.1 (tansu's
//! successor, crates.io), one build serving both storages (decision 0006):
//! - "postgres": the log in a PostgreSQL cluster of its own under the
//!   broker's directory, so it survives `down`/`up` and a SIGKILL of the
//!   broker or of that cluster (decision 0005);
//! - "memory": the log in the broker's memory (its `dynostore` engine).
//!
//! Memory storage keeps no records across the broker's restart, so `start`
//! never restarts a running broker.

use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::ClientConfig;

use super::postgres::{self, LocalPostgres};
use super::process::{self, find_executable, pid_alive};
use super::StackError;
use crate::config::StackConfig;

/// The nisshi release vitrina is tested with (installed by `scripts/bootstrap`).
pub const NISSHI_VERSION: &str = "0.8.1";

/// Where the broker keeps the event log.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase", try_from = "String")]
pub enum Storage {
    /// In the broker's memory: lost when it stops; both stages detect the
    /// loss (decision 0004). The fastest: what the tests use.
    Memory,
    /// The database `eventlog` of a PostgreSQL cluster of the broker's own
    /// (`kafka/postgres`), served by nisshi (decision 0005). The default.
    #[default]
    Postgres,
}

/// The broker instances a stack directory may hold, each with its pid file
/// and its output under the broker's directory: nisshi on the postgres
/// storage, nisshi on the memory storage, and tansu, the broker of the
/// memory storage before decision 0006, which `down` still stops.
const INSTANCES: [&str; 3] = ["nisshi", "nisshi-memory", "tansu"];
/// The database the postgres storage keeps the log in.
pub const LOG_DATABASE: &str = "eventlog";

impl TryFrom<String> for Storage {
    type Error = String;

    fn try_from(s: String) -> Result<Self, Self::Error> {
        match s.as_str() {
            "postgres" => Ok(Storage::Postgres),
            "memory" => Ok(Storage::Memory),
            "disk" => Err(
                "\"disk\" (tansu's SQLite log) is no longer offered: it lost acknowledged \
                 records on a SIGKILL (decision 0004) and needed a second broker build \
                 (decision 0006); use \"postgres\", the default, which keeps the log across \
                 down/up and kills"
                    .to_string(),
            ),
            other => Err(format!(
                "unknown storage {other:?}: \"postgres\" (the default) or \"memory\""
            )),
        }
    }
}

impl Storage {
    /// The broker's `--storage-engine`; `log_port` is the port of the log's
    /// cluster, for the postgres storage.
    fn engine_url(self, log_port: u16) -> String {
        match self {
            Storage::Memory => "memory://nisshi/".to_string(),
            Storage::Postgres => format!(
                "postgres://{}@127.0.0.1:{log_port}/{LOG_DATABASE}",
                postgres::SUPERUSER
            ),
        }
    }

    /// The broker instance this storage runs (see [`INSTANCES`]).
    fn instance(self) -> &'static str {
        match self {
            Storage::Postgres => "nisshi",
            Storage::Memory => "nisshi-memory",
        }
    }
}

/// What to do when no nisshi with the needed engines is found: the command
/// `scripts/bootstrap` runs, word for word.
const INSTALL_HINT: &str = "run scripts/bootstrap (it runs `cargo install nisshi --version 0.8.1 --locked --ignore-rust-version --no-default-features --features dynostore,postgres --config scripts/broker-profile.toml`), or set stack.nisshi_bin";

pub struct LocalBroker {
    cfg: StackConfig,
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
            cfg: cfg.clone(),
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

    fn bin(&self) -> &PathBuf {
        &self.cfg.nisshi_bin
    }

    /// The PostgreSQL cluster that holds the log (postgres storage):
    /// `kafka/postgres`, or a directory under the system temp dir where the
    /// server user could not reach that one (see [`super::cluster_root`]).
    pub fn log_cluster(&self) -> Result<LocalPostgres, StackError> {
        LocalPostgres::new(&self.cfg, super::cluster_root(self.root.join("postgres")))
    }

    /// Where the log lives, for `status`.
    pub fn describe_storage(&self) -> String {
        if let Some((other, _)) = self
            .running()
            .filter(|(b, _)| *b != self.storage.instance())
        {
            return format!(
                "{other} runs with the storage of an earlier stack.kafka_storage (not {:?}); `vitrina down` and `up` switch",
                self.storage
            );
        }
        match self.storage {
            Storage::Memory => "memory (lost when the broker stops)".to_string(),
            Storage::Postgres => match self.log_cluster() {
                Ok(pg) => {
                    let at = pg
                        .running_port()
                        .filter(|_| pg.running_pid().is_some())
                        .map_or("not running".to_string(), |p| format!("127.0.0.1:{p}"));
                    format!(
                        "postgres database {LOG_DATABASE} ({at}; data {})",
                        pg.data_dir().display()
                    )
                }
                Err(e) => format!("postgres: {e}"),
            },
        }
    }

    /// Tells clients to connect to `host:port` (e.g. stunnel in front).
    pub fn advertising(mut self, host_port: &str) -> Self {
        self.advertised = Some(format!("tcp://{host_port}"));
        self
    }

    /// Requires SASL authentication of every client (the broker's
    /// `--authentication`). nisshi refuses it on the memory storage, which
    /// cannot keep SCRAM users; on the postgres storage it knows the users
    /// created through the Kafka API (AlterUserScramCredentials), and none
    /// are created here: every login is refused.
    pub fn authenticating(mut self) -> Self {
        self.authentication = true;
        self
    }

    /// The output of the broker that runs (see [`Self::running_pid`]), else
    /// of this storage's.
    pub fn log_path(&self) -> PathBuf {
        let name = self.running().map_or(self.storage.instance(), |(b, _)| b);
        self.root.join(format!("{name}.log"))
    }
    fn pid_path(&self) -> PathBuf {
        self.pid_path_of(self.storage.instance())
    }
    fn pid_path_of(&self, broker: &str) -> PathBuf {
        self.root.join(format!("{broker}.pid"))
    }

    /// The pid of the broker running under this directory: this storage's,
    /// else one an earlier setting of `stack.kafka_storage` started (commands
    /// other than `up` use whichever runs).
    pub fn running_pid(&self) -> Option<i32> {
        self.running().map(|(_, pid)| pid)
    }

    /// The broker running under this directory and its pid: this storage's
    /// first.
    fn running(&self) -> Option<(&'static str, i32)> {
        let own = self.storage.instance();
        std::iter::once(own)
            .chain(INSTANCES.into_iter().filter(|b| *b != own))
            .find_map(|b| Some((b, read_pid(&self.pid_path_of(b))?)))
    }

    /// Starts the log's cluster (postgres storage) unless it runs, and
    /// creates its database; the cluster's port.
    fn start_log_cluster(&self) -> Result<u16, StackError> {
        let pg = self.log_cluster()?;
        let running = pg.running_port().filter(|_| pg.running_pid().is_some());
        let port = match running {
            Some(p) => p,
            None => process::free_port().map_err(|e| StackError::Io {
                path: PathBuf::from("127.0.0.1:0"),
                source: e,
            })?,
        };
        let port = pg.start(port)?;
        pg.create_database(port, LOG_DATABASE)?;
        Ok(port)
    }

    pub fn start(&self, port: u16) -> Result<u16, StackError> {
        let name = self.storage.instance();
        if let Some((other, pid)) = self.running().filter(|(b, _)| *b != name) {
            return Err(StackError::Failed {
                what: format!(
                    "starting {name} for stack.kafka_storage = {:?}",
                    self.storage
                ),
                output: format!(
                    "{other} (pid {pid}) still runs from an earlier setting of stack.kafka_storage; `vitrina down` stops it"
                ),
                log: self.pid_path_of(other),
            });
        }
        let bin = find_executable(self.bin()).ok_or_else(|| StackError::MissingBinary {
            what: format!("the nisshi broker (`{}`)", self.bin().display()),
            hint: INSTALL_HINT,
        })?;
        let log_port = match self.storage {
            Storage::Postgres => self.start_log_cluster()?,
            Storage::Memory => 0,
        };
        if self.running().is_some() {
            return Ok(port);
        }
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
        let engine = self.storage.engine_url(log_port);
        let mut cmd = Command::new(&bin);
        cmd.arg("broker");
        if self.authentication {
            cmd.arg("--authentication");
        }
        cmd.arg("--silent");
        let child = cmd
            .args(["--storage-engine", &engine])
            .args(["--listener-url", &url])
            .args([
                "--advertised-listener-url",
                self.advertised.as_deref().unwrap_or(&url),
            ])
            .current_dir(&self.root)
            // The group coordinator's decisions (members expired, leaders
            // chosen) at info: few lines, and what a stalled group needs.
            .env("RUST_LOG", "warn,nisshi_broker::coordinator=info")
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log2)
            // Its own process group: a Ctrl-C in the shell that ran `up`
            // does not reach the broker.
            .process_group(0)
            .spawn()
            .map_err(|e| StackError::Spawn {
                what: format!("{name} ({})", bin.display()),
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
            if tail.contains("FeatureNotEnabled") || tail.contains("NoEngineForScheme") {
                return Err(StackError::MissingBinary {
                    what: format!(
                        "a nisshi built with the storage engine for {} (`{}`)",
                        self.storage.engine_url(log_port),
                        bin.display()
                    ),
                    hint: INSTALL_HINT,
                });
            }
            return Err(StackError::NotReady {
                what: format!("{name} on 127.0.0.1:{port}"),
                log: self.log_path(),
                tail,
            });
        }
        Ok(port)
    }

    /// Stops the broker, then the log's cluster (postgres storage); true
    /// when something ran.
    pub fn stop(&self) -> Result<bool, StackError> {
        let mut stopped = false;
        for broker in INSTANCES {
            let path = self.pid_path_of(broker);
            if let Some(pid) = read_pid(&path) {
                process::signal(pid, libc::SIGCONT);
                process::signal(pid, libc::SIGTERM);
                if !process::wait_until(Duration::from_secs(10), || !pid_alive(pid)) {
                    process::signal(pid, libc::SIGKILL);
                    process::wait_until(Duration::from_secs(5), || !pid_alive(pid));
                }
                let _ = std::fs::remove_file(&path);
                stopped = true;
            }
        }
        if self.storage == Storage::Postgres {
            stopped |= self.log_cluster()?.stop()?;
        }
        Ok(stopped)
    }
}

fn read_pid(path: &std::path::Path) -> Option<i32> {
    let pid: i32 = std::fs::read_to_string(path).ok()?.trim().parse().ok()?;
    pid_alive(pid).then_some(pid)
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

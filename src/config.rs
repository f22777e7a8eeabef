//! Configuration: one TOML file plus `VITRINA_*` environment overrides.
//!
//! - Every struct denies unknown fields: a typo in a key is an error that
//!   names the key, never a silent default.
//! - An environment variable `VITRINA_SECTION__KEY=value` overrides
//!   `[section] key = value` (double underscore between levels, any case).
//!   The value is read as a TOML value when it parses as one (`20`, `true`,
//!   `"text"`), otherwise as a plain string. `VITRINA_CONFIG` (the file) and
//!   `VITRINA_LOG` (the log filter) are not overrides.
//! - [`Config::validate`] runs at start and names the key and the broken
//!   constraint.
//! - Secrets are wrapped in [`Secret`], whose `Debug` and `Display` print `***`.

use std::fmt;
use std::path::{Path, PathBuf};

use chrono::NaiveDate;
use serde::{Deserialize, Serialize};

/// Environment variables with this prefix override configuration keys.
pub const ENV_PREFIX: &str = "VITRINA_";
/// Environment variables that carry the prefix but are not overrides.
const ENV_RESERVED: &[&str] = &[
    "VITRINA_CONFIG",
    "VITRINA_LOG",
    "VITRINA_LOG_JSON",
    "VITRINA_TEST_STACK_DIR",
];

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}\nhint: pass an existing file with --config or VITRINA_CONFIG, or omit it to use the defaults")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("config file {path} is not valid TOML: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("environment variable {var} does not name a config key: {message}\nhint: use VITRINA_<SECTION>__<KEY>, e.g. VITRINA_REGION__SCHOOLS=20")]
    Env { var: String, message: String },
    #[error("invalid configuration ({origin}): {message}\nhint: see config/vitrina.example.toml for every key with its meaning")]
    Shape { origin: String, message: String },
    #[error("invalid configuration: `{key}` {constraint}")]
    Invalid {
        key: &'static str,
        constraint: String,
    },
}

/// A string that must not be printed: passwords, HMAC keys.
#[derive(Clone, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    pub fn new(s: impl Into<String>) -> Self {
        Secret(s.into())
    }
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Where the local stack keeps its clusters, logs and state file.
    pub state_dir: PathBuf,
    /// The journal database capture reads (the regional journal's server).
    pub journal: DatabaseConfig,
    /// The showcase database the projector writes.
    pub showcase: DatabaseConfig,
    pub kafka: KafkaConfig,
    pub stack: StackConfig,
    pub region: RegionConfig,
    pub workload: WorkloadConfig,
    pub capture: CaptureConfig,
    pub projector: ProjectorConfig,
}

/// The projector: event topics → the showcase database.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct ProjectorConfig {
    /// Prometheus exporter address (`/metrics`, `/healthz`, `/readyz`).
    pub metrics_listen: String,
    /// Exporter address of `vitrina replay` while it runs.
    pub replay_metrics_listen: String,
    /// Freshness budget: a change must be visible this many seconds after
    /// its journal commit (the law's 10 minutes).
    pub sla_budget_s: u64,
    /// Freshness above this is "at risk": the projector switches to
    /// catch-up mode and alerts warn before the budget is spent.
    pub at_risk_s: u64,
    /// Events per apply transaction in normal operation.
    pub batch_size: usize,
    /// Longest wait to fill a batch, in milliseconds.
    pub batch_wait_ms: u64,
    /// Events per apply transaction in catch-up mode (SLA at risk or
    /// breached, or far behind the log).
    pub catch_up_batch_size: usize,
    /// Apply transactions run in parallel, each with its own topics and
    /// their offsets (1: one transaction per batch; 2: grades apart from
    /// the rest).
    pub apply_connections: usize,
    /// Seconds between quality-check rounds in the running projector.
    pub quality_interval_s: u64,
    /// A reference to a row not in the showcase is "pending" this long
    /// (it may arrive late on another topic), then a violation.
    pub pending_grace_s: u64,
}

impl Default for ProjectorConfig {
    fn default() -> Self {
        ProjectorConfig {
            metrics_listen: "127.0.0.1:9465".into(),
            replay_metrics_listen: "127.0.0.1:9466".into(),
            sla_budget_s: 600,
            at_risk_s: 300,
            batch_size: 5000,
            batch_wait_ms: 100,
            catch_up_batch_size: 50_000,
            apply_connections: 2,
            quality_interval_s: 60,
            pending_grace_s: 600,
        }
    }
}

impl Default for Config {
    fn default() -> Self {
        Config {
            state_dir: PathBuf::from(".vitrina"),
            journal: DatabaseConfig::named("journal"),
            showcase: DatabaseConfig::named("showcase"),
            kafka: KafkaConfig::default(),
            stack: StackConfig::default(),
            region: RegionConfig::default(),
            workload: WorkloadConfig::default(),
            capture: CaptureConfig::default(),
            projector: ProjectorConfig::default(),
        }
    }
}

/// How identifiers are depersonalized.
#[derive(Debug, Clone, Copy, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Hashing {
    /// Unsalted Streebog-512, matchable across systems.
    Plain,
    /// HMAC-Streebog-512 with `capture.hmac_key`.
    Keyed,
}

/// Capture: journal WAL → domain events on Kafka.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct CaptureConfig {
    /// Logical replication slot (created when absent).
    pub slot: String,
    /// Publication over the mapped tables (created when absent).
    pub publication: String,
    /// Topics are `<topic_prefix>.<entity>.v1`; dead letters go to `<topic_prefix>.deadletter.v1`.
    pub topic_prefix: String,
    /// Partitions of each topic created at start.
    pub partitions: i32,
    /// Replication factor of topics created at start (3 on a production
    /// Kafka cluster; 1 on the local single broker).
    pub replication_factor: i32,
    /// Interval of heartbeats (a logical message through the slot) and the
    /// watermarks sent to every partition after each one.
    pub heartbeat_interval_ms: u64,
    /// Mapping file; unset: the reference journal's `config/mapping.toml`.
    pub mapping_file: Option<PathBuf>,
    pub hashing: Hashing,
    /// Regional secret for `hashing = "keyed"`.
    pub hmac_key: Option<Secret>,
    /// Prometheus exporter address (`/metrics`).
    pub metrics_listen: String,
    /// Events produced but not yet acknowledged, at most (backpressure).
    pub max_in_flight: usize,
    /// Take an initial snapshot when the slot is created.
    pub snapshot: bool,
    /// Full academic years of history before the current one in the initial load.
    pub history_years: u32,
    /// Parallel table copies during the initial load.
    pub snapshot_connections: u32,
    /// librdkafka `linger.ms`.
    pub linger_ms: u32,
    /// librdkafka `compression.type`.
    pub compression: String,
}

impl Default for CaptureConfig {
    fn default() -> Self {
        CaptureConfig {
            slot: "vitrina".into(),
            publication: "vitrina".into(),
            topic_prefix: "vitrina".into(),
            partitions: 3,
            replication_factor: 1,
            heartbeat_interval_ms: 5000,
            mapping_file: None,
            hashing: Hashing::Plain,
            hmac_key: None,
            metrics_listen: "127.0.0.1:9464".into(),
            max_in_flight: 50_000,
            snapshot: true,
            history_years: 3,
            snapshot_connections: 2,
            linger_ms: 5,
            compression: "lz4".into(),
        }
    }
}

/// One PostgreSQL database: the journal or the showcase. Without `host`,
/// the local stack's cluster is used (as its superuser).
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct DatabaseConfig {
    /// Host of an external PostgreSQL; unset means "the local stack's".
    pub host: Option<String>,
    pub port: Option<u16>,
    pub user: String,
    pub password: Option<Secret>,
    pub database: String,
    /// Connect timeout in seconds.
    pub connect_timeout_s: u64,
}

impl DatabaseConfig {
    pub fn named(database: &str) -> DatabaseConfig {
        DatabaseConfig {
            host: None,
            port: None,
            user: "vitrina".into(),
            password: None,
            database: database.into(),
            connect_timeout_s: 10,
        }
    }

    /// True when the local stack provides this database.
    pub fn is_local(&self) -> bool {
        self.host.is_none()
    }
}

impl Default for DatabaseConfig {
    fn default() -> Self {
        DatabaseConfig::named("journal")
    }
}

/// The Kafka cluster. Without `brokers`, the local stack's broker is used.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct KafkaConfig {
    /// `host:port,host:port`; unset means "the local stack's".
    pub brokers: Option<String>,
    /// librdkafka `session.timeout.ms` for consumer groups. tansu joins a
    /// group in about 3 s with 6000 ms and about 23 s with the default.
    pub session_timeout_ms: u32,
}

impl Default for KafkaConfig {
    fn default() -> Self {
        KafkaConfig {
            brokers: None,
            session_timeout_ms: 6000,
        }
    }
}

/// How the local stack is started.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct StackConfig {
    /// Directory with `initdb`, `pg_ctl`, `postgres`; unset: the newest
    /// `/usr/lib/postgresql/*/bin`, else `pg_config --bindir`, else `PATH`.
    pub pg_bin_dir: Option<PathBuf>,
    /// OS user that runs the PostgreSQL server when vitrina runs as root
    /// (PostgreSQL refuses to run as root).
    pub pg_os_user: String,
    /// Fixed port for the local PostgreSQL; 0 picks a free one.
    pub pg_port: u16,
    /// `max_slot_wal_keep_size` of the local cluster, in MB (-1: unlimited).
    pub pg_max_slot_wal_keep_size_mb: i64,
    /// The tansu binary (name on PATH or a path).
    pub tansu_bin: PathBuf,
    /// Fixed port for the local broker; 0 picks a free one.
    pub kafka_port: u16,
    /// Seconds to wait for each service to become ready.
    pub ready_timeout_s: u64,
}

impl Default for StackConfig {
    fn default() -> Self {
        StackConfig {
            pg_bin_dir: None,
            pg_os_user: "postgres".into(),
            pg_port: 0,
            pg_max_slot_wal_keep_size_mb: 10_240,
            tansu_bin: PathBuf::from("tansu"),
            kafka_port: 0,
            ready_timeout_s: 60,
        }
    }
}

/// The synthetic region (`vitrina generate`).
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct RegionConfig {
    /// Same seed, same knobs, same `as_of`: the same region, row for row.
    pub seed: u64,
    pub schools: u32,
    pub students_per_school: u32,
    /// Full academic years of history before the current one.
    pub history_years: u32,
    /// The day the region is generated "as of" (its current academic year
    /// runs up to here). Unset: today. Set it for reproducible regions.
    pub as_of: Option<NaiveDate>,
    /// Share (0..=0.2) of people whose SNILS or documents are deliberately
    /// invalid, to exercise the bad-input paths.
    pub invalid_identifier_share: f64,
    /// Parallel COPY connections used by the loader.
    pub load_connections: u32,
}

impl Default for RegionConfig {
    fn default() -> Self {
        RegionConfig {
            seed: 42,
            schools: 20,
            students_per_school: 500,
            history_years: 3,
            as_of: None,
            invalid_identifier_share: 0.01,
            load_connections: 2,
        }
    }
}

/// The live workload (`vitrina workload`).
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct WorkloadConfig {
    /// Target row changes per second (inserts + updates + deletes).
    pub rate: u32,
    /// Seconds to run.
    pub duration_s: u64,
    /// Concurrent database sessions (teachers typing at once).
    pub sessions: u32,
    /// Students enrolled by the September mass-enrolment transaction at the
    /// start of the run (0: none).
    pub mass_enrolment: u32,
    pub seed: u64,
}

impl Default for WorkloadConfig {
    fn default() -> Self {
        WorkloadConfig {
            rate: 500,
            duration_s: 60,
            sessions: 8,
            mass_enrolment: 0,
            seed: 7,
        }
    }
}

impl Config {
    /// Loads `path` (or the defaults when `None`), applies `VITRINA_*`
    /// overrides from `env`, and validates.
    pub fn load(
        path: Option<&Path>,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Config, ConfigError> {
        let (mut value, origin) = match path {
            Some(p) => {
                let text = std::fs::read_to_string(p).map_err(|source| ConfigError::Read {
                    path: p.to_path_buf(),
                    source,
                })?;
                let v: toml::Table = toml::from_str(&text).map_err(|e| ConfigError::Parse {
                    path: p.to_path_buf(),
                    message: e.to_string(),
                })?;
                (v, format!("file {}", p.display()))
            }
            None => (toml::Table::new(), "defaults".to_string()),
        };
        let mut overridden = Vec::new();
        for (var, raw) in env {
            if !var.starts_with(ENV_PREFIX) || ENV_RESERVED.contains(&var.as_str()) {
                continue;
            }
            apply_env(&mut value, &var, &raw)?;
            overridden.push(var);
        }
        let cfg: Config = Config::deserialize(toml::Value::Table(value)).map_err(|e| {
            let origin = if overridden.is_empty() {
                origin.clone()
            } else {
                format!("{origin} with {}", overridden.join(", "))
            };
            ConfigError::Shape {
                origin,
                message: e.to_string().trim().to_string(),
            }
        })?;
        cfg.validate()?;
        Ok(cfg)
    }

    /// Checks constraints serde cannot express.
    pub fn validate(&self) -> Result<(), ConfigError> {
        fn bad(key: &'static str, constraint: impl Into<String>) -> Result<(), ConfigError> {
            Err(ConfigError::Invalid {
                key,
                constraint: constraint.into(),
            })
        }
        let r = &self.region;
        if r.schools == 0 {
            return bad("region.schools", "must be at least 1");
        }
        if r.students_per_school < 11 {
            return bad(
                "region.students_per_school",
                "must be at least 11 (one student per grade level)",
            );
        }
        if r.history_years > 20 {
            return bad("region.history_years", "must be at most 20");
        }
        if !(0.0..=0.2).contains(&r.invalid_identifier_share) {
            return bad(
                "region.invalid_identifier_share",
                "must be within 0.0..=0.2",
            );
        }
        if r.load_connections == 0 || r.load_connections > 32 {
            return bad("region.load_connections", "must be within 1..=32");
        }
        let w = &self.workload;
        if w.rate == 0 {
            return bad("workload.rate", "must be at least 1 change per second");
        }
        if w.sessions == 0 || w.sessions > 64 {
            return bad("workload.sessions", "must be within 1..=64");
        }
        for (db, database_key, port_key, section) in [
            (&self.journal, "journal.database", "journal.port", "journal"),
            (
                &self.showcase,
                "showcase.database",
                "showcase.port",
                "showcase",
            ),
        ] {
            if db.database.is_empty() {
                return bad(database_key, "must not be empty");
            }
            if db.port.is_some() && db.host.is_none() {
                return bad(
                    port_key,
                    format!("is set but {section}.host is not; set both for an external server, or neither for the local stack"),
                );
            }
        }
        if self.journal.is_local() == self.showcase.is_local()
            && self.journal.host == self.showcase.host
            && self.journal.port == self.showcase.port
            && self.journal.database == self.showcase.database
        {
            return bad(
                "showcase.database",
                "names the journal database; the showcase needs a database of its own",
            );
        }
        let p = &self.projector;
        if p.sla_budget_s == 0 {
            return bad("projector.sla_budget_s", "must be at least 1");
        }
        if p.at_risk_s == 0 || p.at_risk_s >= p.sla_budget_s {
            return bad(
                "projector.at_risk_s",
                format!(
                    "must be within 1..{} (below projector.sla_budget_s)",
                    p.sla_budget_s
                ),
            );
        }
        if p.batch_size == 0 || p.catch_up_batch_size < p.batch_size {
            return bad(
                "projector.catch_up_batch_size",
                "must be at least projector.batch_size, which must be at least 1",
            );
        }
        if !(1..=2).contains(&p.apply_connections) {
            return bad("projector.apply_connections", "must be 1 or 2");
        }
        if p.quality_interval_s == 0 {
            return bad("projector.quality_interval_s", "must be at least 1");
        }
        if p.batch_wait_ms == 0 || p.batch_wait_ms > 60_000 {
            return bad("projector.batch_wait_ms", "must be within 1..=60000");
        }
        if self.kafka.session_timeout_ms < 1000 {
            return bad("kafka.session_timeout_ms", "must be at least 1000");
        }
        let c = &self.capture;
        let ident_ok = |s: &str| {
            !s.is_empty()
                && s.len() <= 63
                && s.chars()
                    .all(|ch| ch.is_ascii_lowercase() || ch.is_ascii_digit() || ch == '_')
        };
        if !ident_ok(&c.slot) {
            return bad(
                "capture.slot",
                "must be 1..=63 characters of a-z, 0-9 and _",
            );
        }
        if !ident_ok(&c.publication) {
            return bad(
                "capture.publication",
                "must be 1..=63 characters of a-z, 0-9 and _",
            );
        }
        if c.topic_prefix.is_empty()
            || !c
                .topic_prefix
                .chars()
                .all(|ch| ch.is_ascii_alphanumeric() || "._-".contains(ch))
        {
            return bad(
                "capture.topic_prefix",
                "must be non-empty ASCII letters, digits, '.', '_' or '-'",
            );
        }
        if c.partitions < 1 || c.partitions > 1000 {
            return bad("capture.partitions", "must be within 1..=1000");
        }
        if c.replication_factor < 1 {
            return bad("capture.replication_factor", "must be at least 1");
        }
        if c.heartbeat_interval_ms < 100 {
            return bad("capture.heartbeat_interval_ms", "must be at least 100");
        }
        if c.hashing == Hashing::Keyed && c.hmac_key.as_ref().is_none_or(|k| k.expose().len() < 16)
        {
            return bad(
                "capture.hmac_key",
                "must be set (at least 16 characters) when capture.hashing = \"keyed\"",
            );
        }
        if c.max_in_flight < 100 {
            return bad("capture.max_in_flight", "must be at least 100");
        }
        if c.snapshot_connections == 0 || c.snapshot_connections > 32 {
            return bad("capture.snapshot_connections", "must be within 1..=32");
        }
        if !["none", "gzip", "snappy", "lz4", "zstd"].contains(&c.compression.as_str()) {
            return bad(
                "capture.compression",
                "must be one of none, gzip, snappy, lz4, zstd",
            );
        }
        if self.stack.ready_timeout_s == 0 {
            return bad("stack.ready_timeout_s", "must be at least 1");
        }
        Ok(())
    }
}

fn apply_env(root: &mut toml::Table, var: &str, raw: &str) -> Result<(), ConfigError> {
    let path: Vec<String> = var[ENV_PREFIX.len()..]
        .split("__")
        .map(|s| s.to_ascii_lowercase())
        .collect();
    if path.iter().any(String::is_empty) {
        return Err(ConfigError::Env {
            var: var.to_string(),
            message: "empty key segment".into(),
        });
    }
    let value = toml::from_str::<toml::Table>(&format!("v = {raw}"))
        .ok()
        .and_then(|mut t| t.remove("v"))
        .unwrap_or_else(|| toml::Value::String(raw.to_string()));
    let mut table = root;
    for seg in &path[..path.len() - 1] {
        let entry = table
            .entry(seg.clone())
            .or_insert_with(|| toml::Value::Table(toml::Table::new()));
        table = entry.as_table_mut().ok_or_else(|| ConfigError::Env {
            var: var.to_string(),
            message: format!("`{seg}` is a value, not a section"),
        })?;
    }
    table.insert(path[path.len() - 1].clone(), value);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load_str(text: &str, env: &[(&str, &str)]) -> Result<Config, ConfigError> {
        let dir = std::env::temp_dir().join(format!("vitrina-cfg-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join(format!("c{}.toml", text.len()));
        std::fs::write(&p, text).unwrap();
        Config::load(
            Some(&p),
            env.iter().map(|(k, v)| (k.to_string(), v.to_string())),
        )
    }

    #[test]
    fn defaults_are_valid() {
        let c = Config::load(None, Vec::new()).unwrap();
        assert_eq!(c.region.schools, 20);
    }

    #[test]
    fn unknown_key_is_an_error_naming_it() {
        let e = load_str("[region]\nschoolz = 3\n", &[]).unwrap_err();
        assert!(e.to_string().contains("schoolz"), "{e}");
    }

    #[test]
    fn env_overrides_file() {
        let c = load_str(
            "[region]\nschools = 3\n",
            &[
                ("VITRINA_REGION__SCHOOLS", "5"),
                ("VITRINA_JOURNAL__HOST", "db.example"),
                ("VITRINA_CONFIG", "ignored"),
            ],
        )
        .unwrap();
        assert_eq!(c.region.schools, 5);
        assert_eq!(c.journal.host.as_deref(), Some("db.example"));
    }

    #[test]
    fn unknown_env_key_is_an_error_naming_it() {
        let e = load_str("", &[("VITRINA_REGION__SCHOOLZ", "5")]).unwrap_err();
        let s = e.to_string();
        assert!(
            s.contains("schoolz") && s.contains("VITRINA_REGION__SCHOOLZ"),
            "{s}"
        );
    }

    #[test]
    fn validation_names_key_and_constraint() {
        let e = load_str("[region]\ninvalid_identifier_share = 0.5\n", &[]).unwrap_err();
        assert_eq!(
            e.to_string(),
            "invalid configuration: `region.invalid_identifier_share` must be within 0.0..=0.2"
        );
    }

    #[test]
    fn secrets_do_not_print() {
        let c = load_str("[journal]\npassword = \"hunter2\"\n", &[]).unwrap();
        assert!(!format!("{c:?}").contains("hunter2"));
        assert_eq!(c.journal.password.unwrap().expose(), "hunter2");
    }

    #[test]
    fn as_of_parses_as_date() {
        let c = load_str("[region]\nas_of = 2026-11-20\n", &[]).unwrap();
        assert_eq!(c.region.as_of, NaiveDate::from_ymd_opt(2026, 11, 20));
    }
}

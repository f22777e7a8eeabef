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

use serde::{Deserialize, Serialize};

mod sections;
pub use sections::{
    Assignment, Broker, CaptureConfig, DatabaseConfig, HashForm, HashForms, Hashing, KafkaConfig,
    KafkaProperties, ProjectorConfig, ProstoreConfig, RdmConfig, RegionConfig, StackConfig,
    WorkloadConfig,
};

/// librdkafka properties vitrina owns: the servers, and what its
/// exactly-once and nothing-lost guarantees rest on.
const RESERVED_KAFKA: &[&str] = &[
    "bootstrap.servers",
    "enable.idempotence",
    "acks",
    "message.timeout.ms",
    "group.id",
    "enable.auto.commit",
    "enable.auto.offset.store",
    "auto.offset.reset",
];

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

/// A string that must not be printed: passwords, HMAC keys. It reads
/// from configuration as itself and serializes (`vitrina config`) as `***`.
#[derive(Clone, Default, Deserialize, PartialEq, Eq)]
#[serde(transparent)]
pub struct Secret(String);

impl Serialize for Secret {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str("***")
    }
}

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
    pub prostore: ProstoreConfig,
    pub rdm: RdmConfig,
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
            prostore: ProstoreConfig::default(),
            rdm: RdmConfig::default(),
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
        let mut cfg = cfg;
        cfg.read_secret_files()?;
        cfg.validate()?;
        Ok(cfg)
    }

    /// Reads `*_file` secrets into their keys; both set is an error.
    fn read_secret_files(&mut self) -> Result<(), ConfigError> {
        fn read(
            key: &'static str,
            file: &Option<PathBuf>,
            value: &mut Option<Secret>,
        ) -> Result<(), ConfigError> {
            let Some(path) = file else { return Ok(()) };
            if value.is_some() {
                return Err(ConfigError::Invalid {
                    key,
                    constraint: "and the key it replaces are both set; keep one".into(),
                });
            }
            let text = std::fs::read_to_string(path).map_err(|e| ConfigError::Invalid {
                key,
                constraint: format!("names {} which cannot be read: {e}", path.display()),
            })?;
            *value = Some(Secret::new(text.trim_end_matches(['\n', '\r'])));
            Ok(())
        }
        read(
            "journal.password_file",
            &self.journal.password_file,
            &mut self.journal.password,
        )?;
        read(
            "showcase.password_file",
            &self.showcase.password_file,
            &mut self.showcase.password,
        )?;
        read(
            "capture.hmac_key_file",
            &self.capture.hmac_key_file,
            &mut self.capture.hmac_key,
        )?;
        read("rdm.token_file", &self.rdm.token_file, &mut self.rdm.token)
    }

    /// Checks constraints serde cannot express, section by section.
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.validate_region()?;
        self.validate_databases()?;
        self.validate_projector()?;
        self.validate_kafka()?;
        self.validate_capture()?;
        self.validate_prostore_and_rdm()?;
        if self.stack.ready_timeout_s == 0 {
            return bad("stack.ready_timeout_s", "must be at least 1");
        }
        Ok(())
    }

    /// `[region]` and `[workload]`: the synthetic region and its changes.
    fn validate_region(&self) -> Result<(), ConfigError> {
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
        Ok(())
    }

    /// `[journal]` and `[showcase]`: two databases, TLS settings that go together.
    fn validate_databases(&self) -> Result<(), ConfigError> {
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
        for (db, section) in [(&self.journal, "journal"), (&self.showcase, "showcase")] {
            let verify = matches!(
                db.sslmode,
                Some(crate::pg::SslMode::VerifyCa | crate::pg::SslMode::VerifyFull)
            );
            if verify && db.sslrootcert.is_none() {
                return bad(
                    if section == "journal" {
                        "journal.sslrootcert"
                    } else {
                        "showcase.sslrootcert"
                    },
                    format!(
                        "must name the CA certificate when {section}.sslmode verifies the server"
                    ),
                );
            }
            if db.sslcert.is_some() != db.sslkey.is_some() {
                return bad(
                    if section == "journal" {
                        "journal.sslcert"
                    } else {
                        "showcase.sslcert"
                    },
                    "and sslkey go together",
                );
            }
        }
        if self.journal.sslcert.is_some() {
            return bad(
                "journal.sslcert",
                "is not supported: capture's replication connection (pg_walstream 0.9) cannot present a client certificate; authenticate with a password (SCRAM) over verify-full TLS",
            );
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
        Ok(())
    }

    /// `[projector]`.
    fn validate_projector(&self) -> Result<(), ConfigError> {
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
        if !(1..=8).contains(&p.apply_connections) {
            return bad("projector.apply_connections", "must be within 1..=8");
        }
        if p.quality_interval_s == 0 {
            return bad("projector.quality_interval_s", "must be at least 1");
        }
        if p.batch_wait_ms == 0 || p.batch_wait_ms > 60_000 {
            return bad("projector.batch_wait_ms", "must be within 1..=60000");
        }
        Ok(())
    }

    /// `[kafka]`: properties vitrina sets itself are refused.
    fn validate_kafka(&self) -> Result<(), ConfigError> {
        for key in self.kafka.properties.0.keys() {
            if RESERVED_KAFKA.contains(&key.as_str()) {
                return Err(ConfigError::Invalid {
                    key: "kafka.properties",
                    constraint: format!("may not set `{key}`: vitrina sets it for its guarantees (use kafka.brokers for the servers)"),
                });
            }
        }
        let k = &self.kafka;
        if k.replication_factor.is_some_and(|r| r < 1) {
            return bad("kafka.replication_factor", "must be at least 1");
        }
        if k.min_insync_replicas.is_some_and(|m| m < 1) {
            return bad("kafka.min_insync_replicas", "must be at least 1");
        }
        if let (Some(r), Some(m)) = (k.replication_factor, k.min_insync_replicas) {
            if m > r {
                return bad(
                    "kafka.min_insync_replicas",
                    format!("must be at most kafka.replication_factor ({r}): no write could be acknowledged"),
                );
            }
        }
        const PARTITIONERS: &[&str] = &[
            "murmur2_random",
            "murmur2",
            "consistent_random",
            "consistent",
            "fnv1a_random",
            "fnv1a",
        ];
        if !PARTITIONERS.contains(&k.partitioner.as_str()) {
            return bad(
                "kafka.partitioner",
                format!(
                    "must be one of {} (librdkafka's keyed partitioners)",
                    PARTITIONERS.join(", ")
                ),
            );
        }
        if self.kafka.session_timeout_ms < 1000 {
            return bad("kafka.session_timeout_ms", "must be at least 1000");
        }
        Ok(())
    }

    /// `[capture]`.
    fn validate_capture(&self) -> Result<(), ConfigError> {
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
        if c.replication_factor.is_some() {
            return bad(
                "capture.replication_factor",
                "has moved to kafka.replication_factor (with kafka.min_insync_replicas beside it)",
            );
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
        if !(4096..=100_000_000).contains(&c.max_message_bytes) {
            return bad(
                "capture.max_message_bytes",
                "must be within 4096..=100000000",
            );
        }
        if c.max_in_flight < 100 {
            return bad("capture.max_in_flight", "must be at least 100");
        }
        if !(100..=1_000_000).contains(&c.resnapshot_chunk_rows) {
            return bad(
                "capture.resnapshot_chunk_rows",
                "must be within 100..=1000000",
            );
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
        Ok(())
    }

    /// `[prostore]` and `[rdm]`.
    fn validate_prostore_and_rdm(&self) -> Result<(), ConfigError> {
        if self.prostore.delta_interval_ms < 1000 {
            return bad(
                "prostore.delta_interval_ms",
                "must be at least 1000 (ProStore wants delta commits at least 1 s apart)",
            );
        }
        if self.prostore.records_per_message == 0 || self.prostore.max_delta_changes == 0 {
            return bad(
                "prostore.records_per_message",
                "records_per_message and max_delta_changes must be at least 1",
            );
        }
        let rdm = &self.rdm;
        if rdm.batch_interval_ms < 1000 {
            return bad("rdm.batch_interval_ms", "must be at least 1000");
        }
        if rdm.utc_offset_minutes.abs() >= 24 * 60 {
            return bad("rdm.utc_offset_minutes", "must be within a day of UTC");
        }
        if rdm.max_rows_per_file == 0 {
            return bad("rdm.max_rows_per_file", "must be at least 1");
        }
        if !(rdm.url.starts_with("http://") || rdm.url.starts_with("https://")) {
            return bad("rdm.url", "must start with http:// or https://");
        }
        if rdm.status_poll_ms < 10 || rdm.request_timeout_ms < 100 {
            return bad(
                "rdm.status_poll_ms",
                "status_poll_ms must be at least 10 and request_timeout_ms at least 100",
            );
        }
        Ok(())
    }
}

/// A configuration value out of its bounds.
fn bad(key: &'static str, constraint: impl Into<String>) -> Result<(), ConfigError> {
    Err(ConfigError::Invalid {
        key,
        constraint: constraint.into(),
    })
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
mod tests;

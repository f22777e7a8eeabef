//! The configuration's sections, each with its documented keys and
//! defaults. Constraints between keys are checked in [`super::Config::validate`].

use std::path::PathBuf;

use chrono::NaiveDate;
use serde::{Deserialize, Serialize};

use super::Secret;

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
    /// Apply transactions run in parallel per batch, each with its own
    /// rows; with more than one, another connection records the offsets
    /// after they committed (1: one transaction per batch).
    pub apply_connections: usize,
    /// Seconds between quality-check rounds in the running projector.
    pub quality_interval_s: u64,
    /// A reference to a row not in the showcase is "pending" this long
    /// (it may arrive late on another topic), then a violation.
    pub pending_grace_s: u64,
    /// Roles that read the showcase (the federal side's, the analysts'):
    /// granted USAGE and SELECT on schema `showcase`, kept across a
    /// replay's swap; never the private schema.
    pub readers: Vec<String>,
    /// `self`: one projector reads every partition, assigned by itself,
    /// with no group coordination (it applies again within seconds of a
    /// broker's return); `group`: several projectors share the partitions
    /// through the broker's consumer group.
    pub assignment: Assignment,
}

/// How the projector gets its partitions.
#[derive(Debug, Clone, Copy, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Assignment {
    #[serde(rename = "self")]
    SelfAssigned,
    Group,
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
            assignment: Assignment::SelfAssigned,
            readers: Vec::new(),
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

/// The form of an identifier that is hashed.
#[derive(Debug, Clone, Copy, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum HashForm {
    /// vitrina's normalized form (SNILS as its 11 digits, documents as
    /// series + number in digits/upper case): one person, one hash, however
    /// the journal wrote the number.
    #[default]
    Normalized,
    /// The raw value with whitespace removed (SNILS `112-233-44595`): the
    /// form BARS's RDM integration hashes. For two-part documents, series
    /// then number, each stripped, concatenated.
    Stripped,
}

/// The hashed form per identifier (`[capture.hash_forms]`). Either way the
/// value is validated first: an invalid identifier is never hashed.
#[derive(Debug, Clone, Copy, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct HashForms {
    pub snils: HashForm,
    pub passport: HashForm,
    pub birth_certificate: HashForm,
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
    /// Moved to `kafka.replication_factor`; set here, it is refused with
    /// that hint.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub replication_factor: Option<i32>,
    /// Interval of heartbeats (a logical message through the slot) and the
    /// watermarks sent to every partition after each one.
    pub heartbeat_interval_ms: u64,
    /// Mapping file; unset: the reference journal's `config/mapping.toml`.
    pub mapping_file: Option<PathBuf>,
    pub hashing: Hashing,
    /// Which form of each identifier is hashed (normalized by default).
    pub hash_forms: HashForms,
    /// Regional secret for `hashing = "keyed"`.
    pub hmac_key: Option<Secret>,
    /// A file holding the HMAC key (trailing newline ignored), instead of
    /// `hmac_key`.
    pub hmac_key_file: Option<PathBuf>,
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
    /// Replace people's names and long numbers in free-text fields before
    /// publishing (off only to measure its cost).
    pub scrub_free_text: bool,
    /// The largest encoded event capture sends (bytes); a larger one (a
    /// homework with an embedded image) is dead-lettered with its table,
    /// key and size, and capture goes on. Keep it at or below the topics'
    /// `max.message.bytes` (Kafka's default: 1,048,588).
    pub max_message_bytes: usize,
    /// Rows per chunk of a re-snapshot (`vitrina resnapshot`, a lost slot's
    /// recovery): one short transaction on the journal per chunk.
    pub resnapshot_chunk_rows: u32,
    /// Rows per second a re-snapshot reads from the journal, at most (0:
    /// unthrottled), so the journal's users do not feel it.
    pub resnapshot_rows_per_second: u32,
    /// A slot lost (dropped, invalidated by `max_slot_wal_keep_size`, or
    /// absent after a failover): make a new one and re-snapshot every mapped
    /// table while streaming from it. Off: stop and say what to do.
    pub recover_lost_slot: bool,
}

impl Default for CaptureConfig {
    fn default() -> Self {
        CaptureConfig {
            slot: "vitrina".into(),
            publication: "vitrina".into(),
            topic_prefix: "vitrina".into(),
            partitions: 3,
            replication_factor: None,
            heartbeat_interval_ms: 5000,
            mapping_file: None,
            hashing: Hashing::Plain,
            hash_forms: HashForms::default(),
            hmac_key: None,
            hmac_key_file: None,
            metrics_listen: "127.0.0.1:9464".into(),
            max_in_flight: 50_000,
            snapshot: true,
            history_years: 3,
            snapshot_connections: 2,
            linger_ms: 5,
            compression: "lz4".into(),
            scrub_free_text: true,
            max_message_bytes: 1_000_000,
            resnapshot_chunk_rows: 5_000,
            resnapshot_rows_per_second: 50_000,
            recover_lost_slot: true,
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
    /// A file holding the password (trailing newline ignored), instead of
    /// `password`: a mounted secret.
    pub password_file: Option<PathBuf>,
    pub database: String,
    /// Connect timeout in seconds.
    pub connect_timeout_s: u64,
    /// libpq's sslmode: disable, prefer, require, verify-ca, verify-full.
    /// Unset: prefer (disable for the local stack's cluster).
    pub sslmode: Option<crate::pg::SslMode>,
    /// CA certificate (PEM) the server's certificate must chain to
    /// (verify-ca, verify-full).
    pub sslrootcert: Option<PathBuf>,
    /// Client certificate and key (PEM), when the server asks for one
    /// (showcase only: capture's replication connection cannot present one).
    pub sslcert: Option<PathBuf>,
    pub sslkey: Option<PathBuf>,
}

impl DatabaseConfig {
    pub fn named(database: &str) -> DatabaseConfig {
        DatabaseConfig {
            host: None,
            port: None,
            user: "vitrina".into(),
            password: None,
            password_file: None,
            database: database.into(),
            connect_timeout_s: 10,
            sslmode: None,
            sslrootcert: None,
            sslcert: None,
            sslkey: None,
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
    /// librdkafka `session.timeout.ms` for consumer groups. The local
    /// broker joins a group in about 3 s with 6000 ms and about 23 s with
    /// the default.
    pub session_timeout_ms: u32,
    /// librdkafka properties for every client (producer, consumer, admin),
    /// e.g. `security.protocol = "SASL_SSL"`, `sasl.mechanism =
    /// "SCRAM-SHA-512"`, `sasl.username`, `sasl.password`,
    /// `ssl.ca.location`. Values of keys that name a secret print as `***`.
    pub properties: KafkaProperties,
    /// Replicas of every topic vitrina creates, and the fewest an existing
    /// one may have. Unset: 3 on a configured cluster, 1 on the local
    /// stack's single broker.
    pub replication_factor: Option<i32>,
    /// `min.insync.replicas` of every topic: with `acks=all`, an event is
    /// acknowledged (and its LSN confirmed to the slot) only once this many
    /// replicas hold it. Unset: 2 on a configured cluster, 1 on the local
    /// stack.
    pub min_insync_replicas: Option<i32>,
    /// librdkafka `partitioner`: `murmur2_random` puts a key where Apache
    /// Kafka's Java producer does, so JVM consumers and Streams
    /// applications co-partition with vitrina's topics. Topics written
    /// with another one keep it (capture refuses a change on a slot that
    /// published with another; docs/operations.md).
    pub partitioner: String,
    /// The broker software, for the workarounds only it needs
    /// (`src/kafka/quirks.rs`): "kafka" (Apache Kafka, and brokers that
    /// answer as it documents: nisshi 0.8.1, the local stack's) or
    /// "tansu-0.6".
    pub broker: Broker,
}

/// Which broker software serves the cluster (see [`KafkaConfig::broker`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
pub enum Broker {
    /// Apache Kafka's documented behaviour.
    #[default]
    #[serde(rename = "kafka")]
    Kafka,
    /// tansu 0.6.0: ListOffsets(Latest) short of the end by the rest of the
    /// newest record batch; a Fetch inside a batch answered from the next.
    #[serde(rename = "tansu-0.6")]
    Tansu06,
}

impl Default for KafkaConfig {
    fn default() -> Self {
        KafkaConfig {
            brokers: None,
            session_timeout_ms: 6000,
            properties: KafkaProperties::default(),
            replication_factor: None,
            min_insync_replicas: None,
            partitioner: "murmur2_random".into(),
            broker: Broker::Kafka,
        }
    }
}

/// librdkafka properties; those whose key names a secret (`password`,
/// `secret`, `token`, `.key`, `jaas`) serialize as `***`.
#[derive(Clone, Default, Deserialize, PartialEq, Eq)]
#[serde(transparent)]
pub struct KafkaProperties(pub std::collections::BTreeMap<String, String>);

impl KafkaProperties {
    pub fn is_secret(key: &str) -> bool {
        ["password", "secret", "token", "jaas"]
            .iter()
            .any(|w| key.contains(w))
            || key.ends_with(".key")
            || key.ends_with("key.pem")
    }
}

impl std::fmt::Debug for KafkaProperties {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_map()
            .entries(self.0.iter().map(|(k, v)| {
                (
                    k,
                    if Self::is_secret(k) {
                        "***"
                    } else {
                        v.as_str()
                    },
                )
            }))
            .finish()
    }
}

impl Serialize for KafkaProperties {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let mut m = s.serialize_map(Some(self.0.len()))?;
        for (k, v) in &self.0 {
            m.serialize_entry(
                k,
                if Self::is_secret(k) {
                    "***"
                } else {
                    v.as_str()
                },
            )?;
        }
        m.end()
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
    /// The nisshi binary (name on PATH or a path): the broker of both
    /// storages (decision 0006).
    pub nisshi_bin: PathBuf,
    /// Fixed port for the local broker; 0 picks a free one.
    pub kafka_port: u16,
    /// Where the local broker keeps the event log: "postgres" (a private
    /// PostgreSQL cluster under `state_dir/kafka`, kept across `down`/`up`
    /// and kills of either process; decision 0005) or "memory" (lost when
    /// the broker stops, detected by both stages).
    pub kafka_storage: crate::stack::broker::Storage,
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
            nisshi_bin: PathBuf::from("nisshi"),
            kafka_port: 0,
            kafka_storage: Default::default(),
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
    /// Consent changes relative to the workload's own mix (1.0: about 5 %
    /// of transactions, 0.3 % of row changes; 0.1: the steady-state mix
    /// `vitrina bench capture` prints beside it).
    pub consent_share: f64,
}

impl Default for WorkloadConfig {
    fn default() -> Self {
        WorkloadConfig {
            rate: 500,
            duration_s: 60,
            sessions: 8,
            mass_enrolment: 0,
            seed: 7,
            consent_share: 1.0,
        }
    }
}

/// The ProStore upload feed (`vitrina prostore feed`): the showcase's tables
/// as deltas of Avro container files for the standard regional showcase.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct ProstoreConfig {
    /// A delta is cut this often (when anything changed). ProStore wants
    /// commits at least 1 s apart.
    pub delta_interval_ms: u64,
    /// Records per upload message (one Avro container file); fewer where a
    /// file would exceed `capture.max_message_bytes`.
    pub records_per_message: usize,
    /// A delta is cut early once it holds this many changes (the initial
    /// history arrives as a series of such deltas).
    pub max_delta_changes: usize,
    /// ProStore logical database in `vitrina prostore ddl`.
    pub datamart: String,
    /// Prometheus exporter address of the feed.
    pub metrics_listen: String,
}

impl Default for ProstoreConfig {
    fn default() -> Self {
        ProstoreConfig {
            delta_interval_ms: 10_000,
            records_per_message: 1000,
            max_delta_changes: 200_000,
            datamart: "vitrina".into(),
            metrics_listen: "127.0.0.1:9467".into(),
        }
    }
}

/// The RDM upload client (`vitrina rdm upload`): the regional data mart's
/// public entities, as CSV micro-batches to its upload service.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct RdmConfig {
    /// Base address of the upload service (`scheme://host:port`, a path
    /// prefix allowed).
    pub url: String,
    /// API version in the service's paths (`/{version}/datamarts/…`).
    pub api_version: String,
    /// The data mart's mnemonic (`datamart_name` in the paths).
    pub datamart: String,
    /// Bearer token sent as `Authorization: Bearer …`; unset: none sent.
    pub token: Option<Secret>,
    /// A file holding the token (read at start; instead of `token`).
    pub token_file: Option<PathBuf>,
    /// Certificate authority (PEM) for an `https` service signed by a
    /// private CA; the public web roots are trusted as well.
    pub ca_file: Option<PathBuf>,
    /// Prefix of every identifier sent (`<prefix>-<id>`), naming the source
    /// system, as vendors' clients do; empty: identifiers as they are.
    /// A number is taken as its digits (`VITRINA_RDM__ID_PREFIX=69`).
    #[serde(deserialize_with = "string_or_number")]
    pub id_prefix: String,
    /// The region's offset from UTC in minutes (datetimes are sent in local
    /// time without a zone, as vendors send them; 180 = Moscow).
    pub utc_offset_minutes: i32,
    /// A micro-batch is cut this often (when anything changed).
    pub batch_interval_ms: u64,
    /// Rows per uploaded file; a batch's larger files are split.
    pub max_rows_per_file: usize,
    /// Timeout of one HTTP request.
    pub request_timeout_ms: u64,
    /// First wait between status polls; doubles up to 30 s.
    pub status_poll_ms: u64,
    /// Prometheus exporter address of the client.
    pub metrics_listen: String,
}

impl Default for RdmConfig {
    fn default() -> Self {
        RdmConfig {
            url: "http://127.0.0.1:8090".into(),
            api_version: "v2".into(),
            datamart: "vitrina".into(),
            token: None,
            token_file: None,
            ca_file: None,
            id_prefix: String::new(),
            utc_offset_minutes: 180,
            batch_interval_ms: 30_000,
            max_rows_per_file: 10_000,
            request_timeout_ms: 30_000,
            status_poll_ms: 1000,
            metrics_listen: "127.0.0.1:9468".into(),
        }
    }
}

/// A string, or a number as its text (an environment override of a
/// string key that looks like a number arrives as a number).
fn string_or_number<'de, D: serde::Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Text {
        S(String),
        I(i64),
    }
    Ok(match Text::deserialize(d)? {
        Text::S(s) => s,
        Text::I(i) => i.to_string(),
    })
}

//! Topics as a Kafka operator expects them: described first, created only
//! when missing, and every existing topic's settings checked against what
//! vitrina needs of it. A mismatch names the topic, the setting found, the
//! one needed and the command that fixes it. Works for a principal that may
//! describe and write topics but not create them (the operator creates
//! them beforehand: `vitrina check kafka` prints what is missing).
//!
//! What each kind of topic needs, and why:
//! - the event log (`<prefix>.<entity>.v1`, the dead letters, the ProStore
//!   upload topics and manifest, the RDM upload journal): kept forever
//!   (`cleanup.policy=delete`, `retention.ms=-1`, `retention.bytes=-1`):
//!   it is the source of truth every projection is rebuilt from;
//! - the restricted topic (medical detail) and state topics (capture's load
//!   state, the RDM checkpoint): `cleanup.policy=compact`; the restricted
//!   topic also bounds how long an erased record survives
//!   (`max.compaction.lag.ms` ≤ 1 day) and keeps tombstones a day;
//! - every topic: `min.insync.replicas` and the replication factor at least
//!   the configured ones (`kafka.min_insync_replicas`, `kafka.replication_factor`),
//!   `unclean.leader.election.enable=false` (an acknowledged event must not
//!   vanish with a lost leader), and at least the partitions capture
//!   publishes to.
//!
//! A setting a broker does not report is taken at Apache Kafka's documented
//! default (nisshi reports only the settings a topic was created with).

use std::collections::HashMap;
use std::time::Duration;

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, ResourceSpecifier, TopicReplication};
use rdkafka::error::RDKafkaErrorCode;
use rdkafka::producer::{FutureProducer, Producer as _};

use super::{Context, KafkaError};
use crate::connections::KafkaEndpoint;

/// What a topic is for; its settings follow.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Kept forever: the event log and the stages' journals.
    Log,
    /// Medical detail under consent: compacted, erasure bounded in time.
    Restricted,
    /// A stage's own state: compacted, the latest record per key.
    State,
}

impl Kind {
    /// The kind of one of vitrina's topics, by its name (the restricted
    /// topic and the state topics end in fixed names).
    pub fn of(topic: &str) -> Kind {
        if topic.ends_with(".medical_detail.v1") {
            Kind::Restricted
        } else if topic.ends_with(".capture_state.v1") || topic.ends_with(".rdm.checkpoint") {
            Kind::State
        } else {
            Kind::Log
        }
    }

    /// The settings a topic of this kind is created with.
    fn settings(self) -> &'static [(&'static str, &'static str)] {
        match self {
            Kind::Log => LOG,
            Kind::Restricted => RESTRICTED,
            Kind::State => STATE,
        }
    }
}

/// The event log: kept forever.
const LOG: &[(&str, &str)] = &[
    ("cleanup.policy", "delete"),
    ("retention.ms", "-1"),
    ("retention.bytes", "-1"),
];

/// The restricted topic: only the latest record per key is kept, and a
/// tombstone erases it. With these settings Kafka's log cleaner rewrites a
/// segment at the latest a day after it was written (rolled after an hour),
/// and keeps a tombstone [`TOMBSTONE_RETENTION_MS`] after that.
const RESTRICTED: &[(&str, &str)] = &[
    ("cleanup.policy", "compact"),
    ("min.cleanable.dirty.ratio", "0.01"),
    ("segment.ms", "3600000"),
    ("max.compaction.lag.ms", "86400000"),
    ("delete.retention.ms", "604800000"),
];

/// How long a tombstone outlives compaction on the restricted topic: the
/// longest outage of a reader (the projector, an interrupted replay) after
/// which it still meets the tombstones of what was erased meanwhile. Seven
/// days; `VitrinaErasureAtRisk` fires after three days without the
/// projector (docs/decisions/0003).
pub const TOMBSTONE_RETENTION_MS: i64 = 604_800_000;

/// A stage's state: the latest record per key.
const STATE: &[(&str, &str)] = &[
    ("cleanup.policy", "compact"),
    ("min.cleanable.dirty.ratio", "0.01"),
    ("segment.ms", "3600000"),
];

/// Apache Kafka's documented topic defaults, for settings a broker does
/// not report.
fn kafka_default(setting: &str) -> &'static str {
    match setting {
        "cleanup.policy" => "delete",
        "retention.ms" => "604800000",
        "retention.bytes" => "-1",
        "min.insync.replicas" => "1",
        "unclean.leader.election.enable" => "false",
        "max.compaction.lag.ms" => "9223372036854775807",
        "delete.retention.ms" => "86400000",
        _ => "",
    }
}

/// A topic a stage needs.
#[derive(Debug, Clone)]
pub struct Need {
    pub topic: String,
    pub kind: Kind,
    /// Partitions to create it with, and the fewest it may have.
    pub partitions: i32,
}

impl Need {
    /// `topic`, of the kind its name says.
    pub fn topic(topic: impl Into<String>, partitions: i32) -> Need {
        let topic = topic.into();
        Need {
            kind: Kind::of(&topic),
            topic,
            partitions,
        }
    }
}

/// Needs for `topics`, each of the kind its name says.
pub fn needs(topics: &[String], partitions: i32) -> Vec<Need> {
    topics.iter().map(|t| Need::topic(t, partitions)).collect()
}

/// A setting of an existing topic that is not what vitrina needs.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Mismatch {
    pub topic: String,
    pub setting: String,
    pub found: String,
    pub needed: String,
    /// The command that fixes it.
    pub fix: String,
}

impl std::fmt::Display for Mismatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "topic {}: {} is {}, vitrina needs {}\n  fix: {}",
            self.topic, self.setting, self.found, self.needed, self.fix
        )
    }
}

/// What [`check`] found.
#[derive(Debug, Default, Clone, serde::Serialize)]
pub struct Report {
    /// Topics present and as needed.
    pub ok: Vec<String>,
    /// Topics absent, with the command that creates them.
    pub missing: Vec<(String, String)>,
    pub mismatches: Vec<Mismatch>,
}

impl std::fmt::Display for Report {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for t in &self.ok {
            writeln!(f, "ok       {t}")?;
        }
        for (t, create) in &self.missing {
            writeln!(f, "missing  {t}\n  create: {create}")?;
        }
        for m in &self.mismatches {
            writeln!(f, "wrong    {m}")?;
        }
        Ok(())
    }
}

/// An admin client (closing one blocks for about 0.1 s: drop it off the
/// async runtime's threads).
fn admin_client(kafka: &KafkaEndpoint) -> Result<AdminClient<Context>, KafkaError> {
    kafka
        .client_config()
        .create_with_context(Context)
        .map_err(|source| KafkaError::Client {
            brokers: kafka.brokers.clone(),
            source,
        })
}

/// What the cluster says of a topic: partitions, and the fewest replicas
/// of any of its partitions.
#[derive(Debug, Clone, Copy)]
struct Described {
    partitions: i32,
    replicas: i32,
}

/// The topics of the cluster, as its metadata describes them.
async fn describe(kafka: &KafkaEndpoint) -> Result<HashMap<String, Described>, KafkaError> {
    let k = kafka.clone();
    tokio::task::spawn_blocking(move || {
        // A producer's client: its polling thread hands a refused client
        // (a TLS certificate, SASL credentials) to the stage at once,
        // while this waits for the metadata. It produces nothing.
        let client: FutureProducer<Context> = k
            .client_config()
            .set("log_level", "3")
            .set("allow.auto.create.topics", "false")
            .create_with_context(Context)
            .map_err(|source| KafkaError::Client {
                brokers: k.brokers.clone(),
                source,
            })?;
        let md = client
            .client()
            .fetch_metadata(None, Duration::from_secs(30))
            .map_err(|e| KafkaError::op("describing the cluster's topics", e))?;
        let topics = md
            .topics()
            .iter()
            .filter(|t| t.error().is_none())
            .map(|t| {
                let replicas = t
                    .partitions()
                    .iter()
                    .map(|p| p.replicas().len() as i32)
                    .min()
                    .unwrap_or(0);
                let d = Described {
                    partitions: t.partitions().len() as i32,
                    replicas,
                };
                (t.name().to_string(), d)
            })
            .collect();
        std::thread::spawn(move || drop(client));
        Ok(topics)
    })
    .await
    .map_err(|e| KafkaError::Task(format!("describing topics: {e}")))?
}

/// Each topic's settings as the broker reports them.
async fn configs(
    admin: &AdminClient<Context>,
    topics: &[&str],
) -> Result<HashMap<String, HashMap<String, String>>, KafkaError> {
    if topics.is_empty() {
        return Ok(HashMap::new());
    }
    let specs: Vec<ResourceSpecifier> =
        topics.iter().map(|t| ResourceSpecifier::Topic(t)).collect();
    let opts = AdminOptions::new().request_timeout(Some(Duration::from_secs(30)));
    let results = admin
        .describe_configs(&specs, &opts)
        .await
        .map_err(|e| KafkaError::op("describing the topics' settings", e))?;
    let mut out = HashMap::new();
    for (topic, r) in topics.iter().zip(results) {
        let resource = r.map_err(|code| {
            KafkaError::op(
                format!("describing the settings of {topic}"),
                rdkafka::error::KafkaError::AdminOp(code),
            )
        })?;
        let entries = resource
            .entries
            .into_iter()
            .filter_map(|e| Some((e.name, e.value?)))
            .collect();
        out.insert(topic.to_string(), entries);
    }
    Ok(out)
}

/// The commands an operator runs against `brokers`.
struct Fixes<'a> {
    brokers: &'a str,
}

impl Fixes<'_> {
    fn config(&self, topic: &str, setting: &str, value: &str) -> String {
        format!(
            "kafka-configs.sh --bootstrap-server {} --alter --entity-type topics --entity-name {topic} --add-config {setting}={value}",
            self.brokers
        )
    }

    fn create(&self, need: &Need, kafka: &KafkaEndpoint) -> String {
        let mut configs: Vec<String> = need
            .kind
            .settings()
            .iter()
            .map(|(k, v)| format!("--config {k}={v}"))
            .collect();
        configs.push(format!(
            "--config min.insync.replicas={}",
            kafka.min_insync_replicas
        ));
        configs.push("--config unclean.leader.election.enable=false".into());
        format!(
            "kafka-topics.sh --bootstrap-server {} --create --topic {} --partitions {} --replication-factor {} {}",
            self.brokers,
            need.topic,
            need.partitions,
            kafka.replication_factor,
            configs.join(" ")
        )
    }
}

/// How a setting's found value must compare with the needed one.
enum Rule {
    Equal,
    /// A number at least the needed one.
    AtLeast,
    /// A number at most the needed one.
    AtMost,
}

/// The settings vitrina checks on a topic of `kind`: (setting, needed, rule).
fn rules(kind: Kind, kafka: &KafkaEndpoint) -> Vec<(&'static str, String, Rule)> {
    let mut r = match kind {
        Kind::Log => vec![
            ("cleanup.policy", "delete".to_string(), Rule::Equal),
            ("retention.ms", "-1".to_string(), Rule::Equal),
            ("retention.bytes", "-1".to_string(), Rule::Equal),
        ],
        Kind::Restricted => vec![
            ("cleanup.policy", "compact".to_string(), Rule::Equal),
            (
                "max.compaction.lag.ms",
                "86400000".to_string(),
                Rule::AtMost,
            ),
            (
                "delete.retention.ms",
                TOMBSTONE_RETENTION_MS.to_string(),
                Rule::AtLeast,
            ),
        ],
        Kind::State => vec![("cleanup.policy", "compact".to_string(), Rule::Equal)],
    };
    r.push((
        "min.insync.replicas",
        kafka.min_insync_replicas.to_string(),
        Rule::AtLeast,
    ));
    r.push((
        "unclean.leader.election.enable",
        "false".to_string(),
        Rule::Equal,
    ));
    r
}

fn satisfies(found: &str, needed: &str, rule: &Rule) -> bool {
    let num = |s: &str| s.trim().parse::<i128>().ok();
    match rule {
        Rule::Equal => found.trim() == needed,
        Rule::AtLeast => matches!((num(found), num(needed)), (Some(f), Some(n)) if f >= n),
        // -1 (unlimited) is above any bound.
        Rule::AtMost => matches!((num(found), num(needed)), (Some(f), Some(n)) if f >= 0 && f <= n),
    }
}

/// The mismatches of one existing topic.
fn mismatches(
    need: &Need,
    described: Described,
    settings: &HashMap<String, String>,
    kafka: &KafkaEndpoint,
    fixes: &Fixes,
) -> Vec<Mismatch> {
    let mut out = Vec::new();
    for (setting, needed, rule) in rules(need.kind, kafka) {
        let found = settings
            .get(setting)
            .map(String::as_str)
            .unwrap_or_else(|| kafka_default(setting));
        if !satisfies(found, &needed, &rule) {
            let relation = match rule {
                Rule::Equal => needed.clone(),
                Rule::AtLeast => format!("at least {needed}"),
                Rule::AtMost => format!("at most {needed}"),
            };
            out.push(Mismatch {
                topic: need.topic.clone(),
                setting: setting.to_string(),
                found: found.to_string(),
                needed: relation,
                fix: fixes.config(&need.topic, setting, &needed),
            });
        }
    }
    if described.partitions < need.partitions {
        out.push(Mismatch {
            topic: need.topic.clone(),
            setting: "partitions".into(),
            found: described.partitions.to_string(),
            needed: format!("at least {} (capture.partitions)", need.partitions),
            fix: format!(
                "kafka-topics.sh --bootstrap-server {} --alter --topic {} --partitions {}   (or set capture.partitions = {})",
                fixes.brokers, need.topic, need.partitions, described.partitions
            ),
        });
    }
    if described.replicas < kafka.replication_factor {
        out.push(Mismatch {
            topic: need.topic.clone(),
            setting: "replication factor".into(),
            found: described.replicas.to_string(),
            needed: format!("at least {} (kafka.replication_factor)", kafka.replication_factor),
            fix: format!(
                "kafka-reassign-partitions.sh --bootstrap-server {} --execute --reassignment-json-file <a plan listing {} replicas for each partition of {}>",
                fixes.brokers, kafka.replication_factor, need.topic
            ),
        });
    }
    out
}

/// Describes the topics of `needs` and checks each existing one; creates
/// nothing.
pub async fn check(kafka: &KafkaEndpoint, needs: &[Need]) -> Result<Report, KafkaError> {
    let cluster = describe(kafka).await?;
    let admin = admin_client(kafka)?;
    let fixes = Fixes {
        brokers: &kafka.brokers,
    };
    let present: Vec<&str> = needs
        .iter()
        .filter(|n| cluster.contains_key(&n.topic))
        .map(|n| n.topic.as_str())
        .collect();
    let settings = configs(&admin, &present).await;
    std::thread::spawn(move || drop(admin));
    let settings = settings?;
    let mut report = Report::default();
    for need in needs {
        match cluster.get(&need.topic) {
            None => report
                .missing
                .push((need.topic.clone(), fixes.create(need, kafka))),
            Some(d) => {
                let empty = HashMap::new();
                let s = settings.get(&need.topic).unwrap_or(&empty);
                let found = mismatches(need, *d, s, kafka, &fixes);
                if found.is_empty() {
                    report.ok.push(need.topic.clone());
                }
                report.mismatches.extend(found);
            }
        }
    }
    Ok(report)
}

/// Makes the topics of `needs` ready for a stage: creates those missing
/// (in one request), and stops with [`KafkaError::TopicSettings`] when an
/// existing one is not as needed.
pub async fn provision(kafka: &KafkaEndpoint, needs: &[Need]) -> Result<(), KafkaError> {
    let report = check(kafka, needs).await?;
    if !report.mismatches.is_empty() {
        return Err(KafkaError::TopicSettings(
            report
                .mismatches
                .iter()
                .map(|m| m.to_string())
                .collect::<Vec<_>>()
                .join("\n"),
        ));
    }
    let missing: Vec<&Need> = needs
        .iter()
        .filter(|n| report.missing.iter().any(|(t, _)| *t == n.topic))
        .collect();
    create(kafka, &missing).await
}

/// Creates `needs` in one request; a topic another stage created meanwhile
/// counts as created.
async fn create(kafka: &KafkaEndpoint, needs: &[&Need]) -> Result<(), KafkaError> {
    if needs.is_empty() {
        return Ok(());
    }
    let admin = admin_client(kafka)?;
    let min_isr = kafka.min_insync_replicas.to_string();
    let new: Vec<NewTopic> = needs
        .iter()
        .map(|n| {
            n.kind
                .settings()
                .iter()
                .fold(
                    NewTopic::new(
                        &n.topic,
                        n.partitions,
                        TopicReplication::Fixed(kafka.replication_factor),
                    ),
                    |t, (k, v)| t.set(k, v),
                )
                .set("min.insync.replicas", &min_isr)
                .set("unclean.leader.election.enable", "false")
        })
        .collect();
    let opts = AdminOptions::new().operation_timeout(Some(Duration::from_secs(30)));
    let results = admin.create_topics(&new, &opts).await;
    // Closing an admin client blocks for about 0.1 s: not on this thread.
    std::thread::spawn(move || drop(admin));
    let fixes = Fixes {
        brokers: &kafka.brokers,
    };
    let refused = |topic: String, source: rdkafka::error::KafkaError| {
        let create = needs
            .iter()
            .map(|n| fixes.create(n, kafka))
            .collect::<Vec<_>>()
            .join("\n  ");
        KafkaError::Create(Box::new(super::CreateRefused {
            topic,
            source,
            create,
        }))
    };
    let names = || {
        needs
            .iter()
            .map(|n| n.topic.as_str())
            .collect::<Vec<_>>()
            .join(",")
    };
    for r in results.map_err(|e| refused(names(), e))? {
        match r {
            Ok(_) | Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((topic, code)) => {
                return Err(refused(topic, rdkafka::error::KafkaError::AdminOp(code)))
            }
        }
    }
    tracing::info!(
        topics = %names(),
        replication_factor = kafka.replication_factor,
        min_insync_replicas = kafka.min_insync_replicas,
        "topics created"
    );
    Ok(())
}

/// Creates those of `topics` that are missing and checks the others, each
/// of the kind its name says, with `partitions`.
pub async fn ensure_topics(
    kafka: &KafkaEndpoint,
    topics: &[String],
    partitions: i32,
) -> Result<(), KafkaError> {
    provision(kafka, &needs(topics, partitions)).await
}

/// Deletes those of `topics` that exist (a bench's own, when it ends);
/// the topics it could not delete, with the broker's reason.
pub async fn delete_topics(
    kafka: &KafkaEndpoint,
    topics: &[String],
) -> Result<Vec<(String, String)>, KafkaError> {
    if topics.is_empty() {
        return Ok(vec![]);
    }
    let admin = admin_client(kafka)?;
    let names: Vec<&str> = topics.iter().map(String::as_str).collect();
    let opts = AdminOptions::new().operation_timeout(Some(Duration::from_secs(30)));
    let results = admin
        .delete_topics(&names, &opts)
        .await
        .map_err(|source| KafkaError::Topic {
            topic: names.join(","),
            source,
        })?;
    std::thread::spawn(move || drop(admin));
    Ok(results
        .into_iter()
        .filter_map(|r| match r {
            Ok(_) | Err((_, RDKafkaErrorCode::UnknownTopicOrPartition)) => None,
            Err((topic, code)) => Some((topic, code.to_string())),
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn endpoint(rf: i32, min_isr: i32) -> KafkaEndpoint {
        let mut k = KafkaEndpoint::new("b1:9092");
        k.replication_factor = rf;
        k.min_insync_replicas = min_isr;
        k
    }

    #[test]
    fn a_pre_created_topic_with_kafka_defaults_is_told_what_to_change() {
        let k = endpoint(3, 2);
        let fixes = Fixes { brokers: "b1:9092" };
        let need = Need::topic("vitrina.grade.v1", 3);
        // A broker that reports nothing: Kafka's defaults (7-day retention).
        let found = mismatches(
            &need,
            Described {
                partitions: 3,
                replicas: 3,
            },
            &HashMap::new(),
            &k,
            &fixes,
        );
        let settings: Vec<&str> = found.iter().map(|m| m.setting.as_str()).collect();
        assert_eq!(settings, ["retention.ms", "min.insync.replicas"]);
        assert_eq!(found[0].found, "604800000");
        assert_eq!(
            found[0].fix,
            "kafka-configs.sh --bootstrap-server b1:9092 --alter --entity-type topics --entity-name vitrina.grade.v1 --add-config retention.ms=-1"
        );
    }

    #[test]
    fn the_restricted_topic_must_compact_and_bound_erasure() {
        let k = endpoint(1, 1);
        let fixes = Fixes { brokers: "b" };
        let need = Need::topic("vitrina.medical_detail.v1", 1);
        assert_eq!(need.kind, Kind::Restricted);
        let settings = HashMap::from([
            ("cleanup.policy".to_string(), "compact".to_string()),
            ("max.compaction.lag.ms".to_string(), "-1".to_string()),
        ]);
        let d = Described {
            partitions: 1,
            replicas: 1,
        };
        let found = mismatches(&need, d, &settings, &k, &fixes);
        let settings: Vec<&str> = found.iter().map(|m| m.setting.as_str()).collect();
        // Unbounded compaction lag; tombstones kept Kafka's default day.
        assert_eq!(settings, ["max.compaction.lag.ms", "delete.retention.ms"]);
        let created: HashMap<String, String> = RESTRICTED
            .iter()
            .map(|(a, b)| (a.to_string(), b.to_string()))
            .collect();
        assert!(mismatches(&need, d, &created, &k, &fixes).is_empty());
    }

    #[test]
    fn too_few_partitions_or_replicas_are_mismatches() {
        let k = endpoint(3, 1);
        let fixes = Fixes { brokers: "b" };
        let need = Need::topic("vitrina.capture_state.v1", 1);
        assert_eq!(need.kind, Kind::State);
        let compact = HashMap::from([("cleanup.policy".to_string(), "compact".to_string())]);
        let found = mismatches(
            &need,
            Described {
                partitions: 1,
                replicas: 1,
            },
            &compact,
            &k,
            &fixes,
        );
        assert_eq!(found.len(), 1);
        assert_eq!(found[0].setting, "replication factor");
        let log = Need::topic("vitrina.grade.v1", 6);
        let kept: HashMap<String, String> = LOG
            .iter()
            .map(|(a, b)| (a.to_string(), b.to_string()))
            .collect();
        let found = mismatches(
            &log,
            Described {
                partitions: 3,
                replicas: 3,
            },
            &kept,
            &k,
            &fixes,
        );
        assert_eq!(found.len(), 1);
        assert_eq!(found[0].setting, "partitions");
    }
}

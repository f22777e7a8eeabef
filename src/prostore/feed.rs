//! `vitrina prostore feed`: the event log → ProStore upload topics, in
//! numbered deltas.
//!
//! Every `prostore.delta_interval_ms` the changes read since the last delta
//! become delta N: per table, the latest state of each key (so a key is in
//! a delta at most once, as ProStore requires), sorted by key, in Object
//! Container Files of at most `records_per_message` records, on the table's
//! upload topic. The manifest topic says what delta N is:
//!
//! ```text
//!   plan N    {from, to: source offsets; floor: positions seen before N}   written first
//!   …         the OCF messages of N, keyed "N:<table>:<i>/<n>"
//!   commit N  {tables: topic and offsets of N's messages, truncate, committed_at}
//! ```
//!
//! A driver (an operator, or ProStore's loader) loads delta N once commit N
//! is there: `BEGIN DELTA`, for a table in `truncate` (a TRUNCATE in the
//! journal) every row older than its position deleted (`DELETE FROM t WHERE
//! source_commit_lsn < C OR (source_commit_lsn = C AND source_lsn < L)`),
//! then per table the records in its range (`sys_op` 0 upserts, 1 deletes),
//! `COMMIT DELTA`.
//!
//! Exactly once per delta across restarts: the content of delta N is a
//! function of its plan (the same source range read with the same floor
//! gives the same rows and chunks). A feed that finds plan N without commit
//! N rebuilds N from the plan, produces only the chunks the upload topics
//! lack, and writes commit N; delta N + 1 starts at N's `to`.
//!
//! Assumption: on each source partition, capture publishes changes in
//! source-position order, except when it re-sends after a restart (what it
//! re-sends was published before). A change below the partition's floor is
//! such a re-send and is skipped, so a later delta never carries an older
//! state than an earlier one.

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use futures::future::join_all;
use rdkafka::consumer::StreamConsumer;
use rdkafka::message::Message as _;
use rdkafka::producer::FutureRecord;
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

use super::{encode_ocf, manifest_topic, schema, upload_topic, Row};
use crate::config::Config;
use crate::connections::KafkaEndpoint;
use crate::error::{Classify, ErrorKind};
use crate::events::codec::{CodecError, Registry};
use crate::events::fold::Fold;
use crate::events::Message;
use crate::events::{Entity, Event, Op, ENTITIES};
use crate::kafka;

/// `topic[partition]`, the key of offsets and floors in the manifest.
fn tp_key(topic: &str, partition: i32) -> String {
    format!("{topic}[{partition}]")
}

/// The (topic, partition) of a [`tp_key`].
fn parse_tp(k: &str) -> Option<(String, i32)> {
    let (t, rest) = k.rsplit_once('[')?;
    Some((t.to_string(), rest.strip_suffix(']')?.parse().ok()?))
}

/// One record of the manifest topic.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum Manifest {
    Plan(Plan),
    Commit(Commit),
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Plan {
    pub delta: u64,
    /// Source offsets the delta starts at (`topic[p]` → offset).
    pub from: BTreeMap<String, i64>,
    /// Source offsets it ends before.
    pub to: BTreeMap<String, i64>,
    /// Per source partition, the highest position seen before this delta.
    pub floor: BTreeMap<String, (u64, u64)>,
    /// Per table, the position of the latest journal TRUNCATE before this
    /// delta: older changes read later are not loaded.
    #[serde(default)]
    pub truncated: BTreeMap<String, (u64, u64)>,
    pub records_per_message: usize,
    /// The byte limit of one message (`capture.max_message_bytes` when
    /// planned): a file over it is split in halves. `None` in plans written
    /// before it was recorded (the current setting is used then).
    #[serde(default)]
    pub max_message_bytes: Option<usize>,
    pub planned_at_micros: i64,
}

impl Plan {
    /// How the delta's rows become files: every parameter that shapes them.
    fn shape(&self, current_limit: usize) -> Shape {
        Shape {
            records_per_message: self.records_per_message,
            max_message_bytes: self.max_message_bytes.unwrap_or(current_limit),
        }
    }
}

/// What decides a delta's files besides its rows, taken from its plan so
/// a restart with changed settings rebuilds the same files.
#[derive(Debug, Clone, Copy)]
struct Shape {
    records_per_message: usize,
    max_message_bytes: usize,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct TableRange {
    pub table: String,
    pub topic: String,
    pub partition: i32,
    pub first_offset: i64,
    pub last_offset: i64,
    pub messages: usize,
    pub upserts: usize,
    pub deletes: usize,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct TruncateAt {
    pub table: String,
    pub commit_lsn: u64,
    pub lsn: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Commit {
    pub delta: u64,
    pub to: BTreeMap<String, i64>,
    /// The floor after this delta.
    pub floor: BTreeMap<String, (u64, u64)>,
    pub tables: Vec<TableRange>,
    /// Tables truncated in the journal within this delta: their rows older
    /// than the truncate's position are deleted before the records load.
    /// A TRUNCATE is on every partition of its table, so the same one may
    /// come again in a later delta; deleting by position makes that harmless.
    pub truncate: Vec<TruncateAt>,
    /// [`Plan::truncated`] after this delta.
    #[serde(default)]
    pub truncated: BTreeMap<String, (u64, u64)>,
    pub committed_at_micros: i64,
    /// Journal commit times of the oldest and newest change in the delta.
    pub oldest_commit_time_micros: i64,
    pub newest_commit_time_micros: i64,
}

#[derive(Debug, thiserror::Error)]
pub enum FeedError {
    #[error(transparent)]
    Kafka(#[from] kafka::KafkaError),
    #[error("{topic}[{partition}] offset {offset} holds an event of schema {fingerprint}, which this vitrina does not know; the feed stops rather than skip it\nhint: upgrade vitrina to the version of capture, then start the feed again (it resumes from its last delta)")]
    UnknownSchema {
        topic: String,
        partition: i32,
        offset: i64,
        fingerprint: String,
    },
    #[error("the delta manifest {topic} is not readable: offset {offset}: {reason}\nhint: it is written only by `vitrina prostore feed`; if it was edited, restore it or start a new feed on new topics (capture.topic_prefix)")]
    Manifest {
        topic: String,
        offset: i64,
        reason: String,
    },
}

impl FeedError {
    fn client(what: impl Into<String>, source: rdkafka::error::KafkaError) -> FeedError {
        FeedError::Kafka(kafka::KafkaError::op(what, source))
    }
}

impl Classify for FeedError {
    fn kind(&self) -> ErrorKind {
        match self {
            FeedError::Kafka(e) => e.kind(),
            FeedError::UnknownSchema { .. } | FeedError::Manifest { .. } => ErrorKind::Definite,
        }
    }
}

/// Where the feed goes on from, read from the manifest.
#[derive(Debug, Default)]
struct Resume {
    next_delta: u64,
    from: BTreeMap<String, i64>,
    floor: BTreeMap<String, (u64, u64)>,
    truncated: BTreeMap<String, (u64, u64)>,
    /// A plan without its commit: rebuild it first.
    pending: Option<Plan>,
    /// Per upload topic, the offset after the last committed delta's records.
    table_next: BTreeMap<String, i64>,
}

fn resume(kafka: &KafkaEndpoint, prefix: &str) -> Result<Resume, FeedError> {
    let topic = manifest_topic(prefix);
    let mut r = Resume::default();
    for (offset, m) in kafka::read_json_blocking::<Manifest>(kafka, &topic, 0)? {
        let bad = |reason: String| FeedError::Manifest {
            topic: topic.clone(),
            offset,
            reason,
        };
        let m = m.map_err(bad)?;
        match m {
            Manifest::Plan(p) => {
                if p.delta != r.next_delta {
                    return Err(bad(format!(
                        "plan {} where delta {} was due",
                        p.delta, r.next_delta
                    )));
                }
                r.pending = Some(p);
            }
            Manifest::Commit(c) => {
                // A commit written twice (a restart between its write and
                // its ack) is the same delta: the first counts.
                if c.delta + 1 == r.next_delta && r.pending.is_none() {
                    continue;
                }
                if r.pending.as_ref().map(|p| p.delta) != Some(c.delta) {
                    return Err(bad(format!("commit {} without its plan", c.delta)));
                }
                r.pending = None;
                r.next_delta = c.delta + 1;
                r.from = c.to.clone();
                r.floor = c.floor.clone();
                r.truncated = c.truncated.clone();
                for t in &c.tables {
                    r.table_next.insert(t.topic.clone(), t.last_offset + 1);
                }
            }
        }
    }
    Ok(r)
}

/// The changes of one delta being gathered.
struct Gather {
    fold: Fold<&'static str, String, Row>,
    changes: usize,
    skipped: usize,
    oldest: Option<i64>,
    newest: Option<i64>,
}

impl Gather {
    /// A delta after earlier ones: per table, their latest journal TRUNCATE.
    fn new(truncated: &BTreeMap<String, (u64, u64)>) -> Gather {
        Gather {
            fold: Fold::above(truncated.clone()),
            changes: 0,
            skipped: 0,
            oldest: None,
            newest: None,
        }
    }

    fn add(&mut self, e: &Event) {
        self.changes += 1;
        let t = e.source.commit_time_micros;
        self.oldest = Some(self.oldest.map_or(t, |o| o.min(t)));
        self.newest = Some(self.newest.map_or(t, |o| o.max(t)));
        let pos = (e.source.commit_lsn, e.source.lsn);
        if e.op == Op::Truncate {
            self.fold.truncate(e.entity.name, pos, ());
        } else {
            let row = Row::of(e);
            self.fold.put(e.entity.name, row.key.clone(), pos, row);
        }
    }

    /// Per table, the latest journal TRUNCATE, this delta's included.
    fn truncated(&self) -> &BTreeMap<String, (u64, u64)> {
        self.fold.floor()
    }

    fn is_empty(&self) -> bool {
        self.changes == 0
    }
}

/// What the feed reads one message as.
enum Read {
    Change(Box<Event>),
    /// Capture's progress marker: everything on its partition up to this
    /// journal commit time (microseconds) is published.
    Mark(i64),
    /// A watermark, a re-sent change, or an undecodable message (dead-lettered).
    Nothing,
}

pub struct Feed {
    cfg: Config,
    kafka: KafkaEndpoint,
    registry: Registry,
    producer: kafka::Producer,
    prefix: String,
    sources: Vec<String>,
    schemas: HashMap<&'static str, apache_avro::Schema>,
}

/// Messages of one delta, built from its plan.
struct Built {
    tables: Vec<BuiltTable>,
    truncate: Vec<TruncateAt>,
}

/// One table's messages in a delta: (place `i/n`, OCF) in order.
struct BuiltTable {
    entity: &'static Entity,
    files: Vec<(String, Vec<u8>)>,
    upserts: usize,
    deletes: usize,
}

impl Feed {
    pub fn new(cfg: &Config, kafka: KafkaEndpoint) -> Result<Feed, FeedError> {
        let prefix = cfg.capture.topic_prefix.clone();
        let producer = kafka::producer(&kafka, 5, "none", cfg.capture.max_message_bytes)?;
        Ok(Feed {
            cfg: cfg.clone(),
            registry: Registry::new(),
            producer,
            sources: kafka::event_topics(&prefix),
            schemas: ENTITIES.iter().map(|e| (e.name, schema(e))).collect(),
            prefix,
            kafka,
        })
    }

    /// Runs until `cancel`: deltas every `delta_interval_ms`.
    pub async fn run(&mut self, cancel: CancellationToken) -> Result<(), FeedError> {
        kafka::provision(&self.kafka, &topic_needs(&self.cfg)).await?;
        let (k, p) = (self.kafka.clone(), self.prefix.clone());
        let mut at = tokio::task::spawn_blocking(move || resume(&k, &p))
            .await
            .map_err(|e| kafka::KafkaError::Task(e.to_string()))??;
        if let Some(plan) = at.pending.take() {
            tracing::info!(
                delta = plan.delta,
                "finishing a delta planned before a restart"
            );
            let commit = self.finish(&plan, &at.table_next).await?;
            at.from = commit.to.clone();
            at.floor = commit.floor.clone();
            at.truncated = commit.truncated.clone();
            at.next_delta = plan.delta + 1;
        }
        tracing::info!(next_delta = at.next_delta, "feeding ProStore upload topics");
        let (consumer, mut taken) = self.consumer(&at.from).await?;
        // Partitions an operator adds are read from their beginning.
        let mut counts = kafka::watch_partitions(
            kafka::Ends::new(&self.kafka)?,
            self.sources.clone(),
            taken.clone(),
            Duration::from_secs(30),
            cancel.clone(),
        );
        let interval = Duration::from_millis(self.cfg.prostore.delta_interval_ms);
        let mut next = at.from.clone();
        let mut floor = at.floor.clone();
        let mut gather = Gather::new(&at.truncated);
        let mut plan_from = at.from.clone();
        let mut plan_floor = floor.clone();
        let mut plan_truncated = at.truncated.clone();
        let mut deadline = Instant::now() + interval;
        // Where a restart would read from, for the standard lag tools.
        let mut group = kafka::GroupCommits::default();
        // Per source partition, the journal commit time of the latest
        // change or watermark read.
        let mut seen: HashMap<String, i64> = HashMap::new();
        loop {
            if counts.has_changed().unwrap_or(false) {
                let now = counts.borrow_and_update().clone();
                kafka::assign_added(&consumer, &mut taken, &now)?;
            }
            let wait = deadline.saturating_duration_since(Instant::now());
            let full = gather.changes >= self.cfg.prostore.max_delta_changes;
            if wait.is_zero() || full {
                tracing::debug!(
                    changes = gather.changes,
                    skipped = gather.skipped,
                    "delta interval over"
                );
                if !gather.is_empty() {
                    let plan = Plan {
                        delta: at.next_delta,
                        from: plan_from.clone(),
                        to: next.clone(),
                        floor: plan_floor.clone(),
                        truncated: plan_truncated.clone(),
                        records_per_message: self.cfg.prostore.records_per_message,
                        max_message_bytes: Some(self.cfg.capture.max_message_bytes),
                        planned_at_micros: now_micros(),
                    };
                    self.write_manifest(&Manifest::Plan(plan.clone())).await?;
                    let built =
                        self.build(&gather, plan.shape(self.cfg.capture.max_message_bytes))?;
                    let commit = self
                        .publish(&plan, built, &BTreeMap::new(), floor.clone(), &gather)
                        .await?;
                    self.write_manifest(&Manifest::Commit(commit)).await?;
                    at.next_delta += 1;
                    plan_from = next.clone();
                    plan_floor = floor.clone();
                    plan_truncated = gather.truncated().clone();
                    gather = Gather::new(&plan_truncated);
                }
                let fed: HashMap<(String, i32), i64> = plan_from
                    .iter()
                    .filter_map(|(k, o)| Some((parse_tp(k)?, *o)))
                    .collect();
                group.commit(&consumer, &fed, "prostore");
                // Everything read is committed now: the feed holds every
                // journal change up to the oldest partition's latest time.
                if let Some(t) = seen.values().min() {
                    metrics::gauge!(crate::observability::PROSTORE_FED_THROUGH)
                        .set(*t as f64 / 1e6);
                }
                deadline = Instant::now() + interval;
                if cancel.is_cancelled() {
                    return Ok(());
                }
                continue;
            }
            tokio::select! {
                _ = cancel.cancelled() => {
                    // The open delta is not planned: a restart reads it again.
                    return Ok(());
                }
                m = tokio::time::timeout(wait, consumer.recv()) => {
                    let Ok(m) = m else { continue };
                    let m = m.map_err(|e| FeedError::client("reading the event topics", e))?;
                    let k = tp_key(m.topic(), m.partition());
                    if !Self::in_order(&consumer, &m, &k, &mut next)? {
                        continue;
                    }
                    match self.read(&m, &k, &mut floor).await? {
                        Read::Change(e) => {
                            seen.insert(k, e.source.commit_time_micros);
                            gather.add(&e);
                        }
                        Read::Mark(t) => {
                            seen.insert(k, t);
                            gather.skipped += 1;
                        }
                        Read::Nothing => gather.skipped += 1,
                    }
                }
            }
        }
    }

    /// Whether `m` is the next record of its partition per `next` (then
    /// `next` moves past it). Records before it come from positioning one
    /// producer batch early ([`kafka::fetch_position`]) and are dropped. A
    /// record past it means the broker skipped some (tansu 0.6.0 with a
    /// record batch larger than [`kafka::FETCH_LOOKBACK`]): reading on would
    /// leave changes out, so the partition is read again from its start.
    /// A partition `next` does not know takes its first record as it comes.
    fn in_order(
        consumer: &StreamConsumer<kafka::Context>,
        m: &rdkafka::message::BorrowedMessage<'_>,
        k: &str,
        next: &mut BTreeMap<String, i64>,
    ) -> Result<bool, FeedError> {
        let expected = next.get(k).copied();
        match kafka::Order::of(m.offset(), expected, false) {
            kafka::Order::Seen => return Ok(false),
            kafka::Order::Gap => {
                let expected = expected.unwrap_or_default();
                kafka::rewind(consumer, m.topic(), m.partition(), expected, m.offset())?;
                return Ok(false);
            }
            kafka::Order::Next => {}
        }
        next.insert(k.to_string(), m.offset() + 1);
        Ok(true)
    }

    /// Decodes a source message; raises the floor of its partition.
    async fn read(
        &self,
        m: &rdkafka::message::BorrowedMessage<'_>,
        k: &str,
        floor: &mut BTreeMap<String, (u64, u64)>,
    ) -> Result<Read, FeedError> {
        match self
            .registry
            .decode_message(m.payload().unwrap_or_default())
        {
            Ok(Message::Watermark(w)) => Ok(Read::Mark(w.commit_time_micros)),
            Ok(Message::Event(e)) => {
                let pos = (e.source.commit_lsn, e.source.lsn);
                let f = floor.entry(k.to_string()).or_insert((0, 0));
                if pos < *f {
                    metrics::counter!(crate::observability::PROSTORE_RESENT).increment(1);
                    return Ok(Read::Nothing);
                }
                *f = pos;
                Ok(Read::Change(Box::new(e)))
            }
            Err(CodecError::UnknownSchema { fingerprint }) => Err(FeedError::UnknownSchema {
                topic: m.topic().into(),
                partition: m.partition(),
                offset: m.offset(),
                fingerprint,
            }),
            Err(err) => {
                self.dead_letter(m.topic(), m.partition(), m.offset(), &err.to_string())
                    .await?;
                Ok(Read::Nothing)
            }
        }
    }

    async fn dead_letter(
        &self,
        topic: &str,
        partition: i32,
        offset: i64,
        reason: &str,
    ) -> Result<(), FeedError> {
        metrics::counter!(crate::observability::PROSTORE_DEAD_LETTERS).increment(1);
        tracing::warn!(
            topic,
            partition,
            offset,
            reason,
            "left out of the ProStore feed; dead-lettered"
        );
        let at = serde_json::json!({"topic": topic, "partition": partition, "offset": offset});
        kafka::dead_letter(&self.producer, &self.prefix, "prostore", reason, topic, at)
            .await
            .map_err(|e| FeedError::client("writing to the dead-letter topic", e))
    }

    /// A consumer of every source partition, at `from` (the start where
    /// the manifest has no offset), and the partition count of each topic.
    async fn consumer(
        &self,
        from: &BTreeMap<String, i64>,
    ) -> Result<(StreamConsumer<kafka::Context>, HashMap<String, i32>), FeedError> {
        let consumer: StreamConsumer<kafka::Context> = self
            .kafka
            .client_config()
            .set("group.id", format!("{}.prostore-feed", self.prefix))
            .set("fetch.queue.backoff.ms", kafka::FETCH_QUEUE_BACKOFF_MS)
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            .set("auto.offset.reset", "earliest")
            .set("log_level", "4")
            .create_with_context(kafka::Context)
            .map_err(|e| FeedError::client("creating the consumer", e))?;
        let taken = kafka::assign_at(&self.kafka, &consumer, &self.sources, |t, p| {
            from.get(&tp_key(t, p)).copied()
        })
        .map_err(|e| FeedError::client("assigning the event topics", e))?;
        Ok((consumer, taken))
    }

    /// The messages of a delta: per table, its rows sorted by key in chunks.
    fn build(&self, g: &Gather, shape: Shape) -> Result<Built, FeedError> {
        let (per_message, limit) = (shape.records_per_message, shape.max_message_bytes);
        let mut tables = Vec::new();
        for e in ENTITIES {
            let Some(rows) = g.fold.rows(e.name) else {
                continue;
            };
            let rows: Vec<Row> = rows.values().map(|(_, r)| r.clone()).collect();
            let upserts = rows.iter().filter(|r| r.after.is_some()).count();
            let deletes = rows.len() - upserts;
            let schema = &self.schemas[e.name];
            let mut files = Vec::new();
            for chunk in rows.chunks(per_message.max(1)) {
                self.encode_within(e, schema, chunk, limit, &mut files)?;
            }
            tables.push((e, files, upserts, deletes));
        }
        let mut truncate: Vec<TruncateAt> = g
            .fold
            .truncates()
            .iter()
            .map(|(t, ((commit_lsn, lsn), ()))| TruncateAt {
                table: t.to_string(),
                commit_lsn: *commit_lsn,
                lsn: *lsn,
            })
            .collect();
        truncate.sort_by(|a, b| a.table.cmp(&b.table));
        // Chunk keys name their place: "<delta>:<table>:<i>/<n>" is set at
        // publish time; here only the files.
        Ok(Built {
            tables: tables
                .into_iter()
                .map(|(entity, files, upserts, deletes)| {
                    let n = files.len();
                    BuiltTable {
                        entity,
                        files: files
                            .into_iter()
                            .enumerate()
                            .map(|(i, f)| (format!("{}/{n}", i + 1), f))
                            .collect(),
                        upserts,
                        deletes,
                    }
                })
                .collect(),
            truncate,
        })
    }

    /// Encodes `rows`, halving until each file fits `limit` bytes. A row
    /// that cannot fit alone is dead-lettered with its table, key and size.
    fn encode_within(
        &self,
        e: &'static Entity,
        schema: &apache_avro::Schema,
        rows: &[Row],
        limit: usize,
        out: &mut Vec<Vec<u8>>,
    ) -> Result<(), FeedError> {
        let file = encode_ocf(e, schema, rows).map_err(|reason| FeedError::Manifest {
            topic: upload_topic(&self.prefix, e.name),
            offset: -1,
            reason,
        })?;
        if file.len() <= limit {
            out.push(file);
        } else if rows.len() > 1 {
            let (a, b) = rows.split_at(rows.len() / 2);
            self.encode_within(e, schema, a, limit, out)?;
            self.encode_within(e, schema, b, limit, out)?;
        } else {
            metrics::counter!(crate::observability::PROSTORE_OVERSIZE).increment(1);
            tracing::error!(
                table = e.name,
                key = %rows[0].key,
                bytes = file.len(),
                limit,
                "a row larger than capture.max_message_bytes is left out of the feed"
            );
        }
        Ok(())
    }

    /// Produces the chunks of `plan`'s delta that `present` (chunk key →
    /// offset, per topic) lacks; returns its commit.
    async fn publish(
        &self,
        plan: &Plan,
        built: Built,
        present: &BTreeMap<String, BTreeMap<String, i64>>,
        floor: BTreeMap<String, (u64, u64)>,
        g: &Gather,
    ) -> Result<Commit, FeedError> {
        let mut sends = Vec::new();
        let mut ranges = Vec::new();
        let truncate = built.truncate;
        for t in built.tables {
            let (e, files, upserts, deletes) = (t.entity, t.files, t.upserts, t.deletes);
            let topic = upload_topic(&self.prefix, e.name);
            let had = present.get(&topic);
            let mut offsets: Vec<i64> = Vec::new();
            let messages = files.len();
            for (place, payload) in files {
                let key = format!("{}:{}:{place}", plan.delta, e.name);
                if let Some(o) = had.and_then(|h| h.get(&key)) {
                    offsets.push(*o);
                    continue;
                }
                let topic = topic.clone();
                let producer = self.producer.clone();
                sends.push(async move {
                    producer
                        .send(
                            FutureRecord::to(&topic).key(&key).payload(&payload),
                            Duration::from_secs(0),
                        )
                        .await
                        .map(|d| (topic, d.offset))
                        .map_err(|(err, _)| err)
                });
            }
            ranges.push((e, topic, offsets, messages, upserts, deletes));
        }
        // A crash after this many messages of a delta, its commit never
        // written (tests/prostore.rs).
        if let Some(n) = crate::failpoint!("prostore-crash-before-commit")
            .and_then(|v| v.parse::<usize>().ok())
            .filter(|n| present.is_empty() && *n < sends.len())
        {
            let mut sends = sends;
            for r in join_all(sends.drain(..n)).await {
                r.map_err(|e| FeedError::client("writing an upload message", e))?;
            }
            crate::failpoint::crash();
        }
        let mut produced: HashMap<String, Vec<i64>> = HashMap::new();
        for r in join_all(sends).await {
            let (topic, offset) =
                r.map_err(|e| FeedError::client("writing an upload message", e))?;
            produced.entry(topic).or_default().push(offset);
        }
        let tables = ranges
            .into_iter()
            .map(|(e, topic, mut offsets, messages, upserts, deletes)| {
                offsets.extend(produced.remove(&topic).unwrap_or_default());
                TableRange {
                    table: e.name.to_string(),
                    first_offset: offsets.iter().copied().min().unwrap_or(-1),
                    last_offset: offsets.iter().copied().max().unwrap_or(-1),
                    topic,
                    partition: 0,
                    messages,
                    upserts,
                    deletes,
                }
            })
            .collect::<Vec<_>>();
        let committed_at = now_micros();
        let records: usize = tables.iter().map(|t| t.upserts + t.deletes).sum();
        metrics::counter!(crate::observability::PROSTORE_DELTAS).increment(1);
        metrics::counter!(crate::observability::PROSTORE_RECORDS).increment(records as u64);
        metrics::gauge!(crate::observability::PROSTORE_LAST_DELTA).set(plan.delta as f64);
        if let Some(oldest) = g.oldest {
            metrics::histogram!(crate::observability::PROSTORE_COMMIT_TO_DELTA)
                .record((committed_at - oldest) as f64 / 1e6);
        }
        tracing::info!(
            delta = plan.delta,
            records,
            tables = tables.len(),
            changes = g.changes,
            "delta committed"
        );
        Ok(Commit {
            delta: plan.delta,
            to: plan.to.clone(),
            floor,
            tables,
            truncate,
            truncated: g.truncated().clone(),
            committed_at_micros: committed_at,
            oldest_commit_time_micros: g.oldest.unwrap_or(0),
            newest_commit_time_micros: g.newest.unwrap_or(0),
        })
    }

    /// Rebuilds `plan`'s delta from its source range, produces what the
    /// upload topics lack and writes its commit.
    async fn finish(
        &self,
        plan: &Plan,
        table_next: &BTreeMap<String, i64>,
    ) -> Result<Commit, FeedError> {
        let (consumer, _) = self.consumer(&plan.from).await?;
        let mut floor = plan.floor.clone();
        let mut gather = Gather::new(&plan.truncated);
        let mut remaining: BTreeMap<String, i64> = plan
            .to
            .iter()
            .filter(|(k, to)| plan.from.get(*k).copied().unwrap_or(0) < **to)
            .map(|(k, to)| (k.clone(), *to))
            .collect();
        let mut expect = plan.from.clone();
        while !remaining.is_empty() {
            let m = tokio::time::timeout(Duration::from_secs(120), consumer.recv())
                .await
                .map_err(|_| {
                    kafka::KafkaError::Timeout(format!(
                        "re-reading delta {}: {} partition(s) short of the planned range",
                        plan.delta,
                        remaining.len()
                    ))
                })?
                .map_err(|e| FeedError::client("re-reading the event topics", e))?;
            let k = tp_key(m.topic(), m.partition());
            let Some(to) = remaining.get(&k).copied() else {
                continue;
            };
            if !Self::in_order(&consumer, &m, &k, &mut expect)? {
                continue;
            }
            if m.offset() >= to {
                remaining.remove(&k);
                continue;
            }
            if m.offset() + 1 >= to {
                remaining.remove(&k);
            }
            if let Read::Change(e) = self.read(&m, &k, &mut floor).await? {
                gather.add(&e);
            }
        }
        drop(consumer);
        let built = self.build(&gather, plan.shape(self.cfg.capture.max_message_bytes))?;
        // What an earlier run already produced of this delta.
        let what: Vec<(String, i32, i64)> = built
            .tables
            .iter()
            .map(|t| {
                let topic = upload_topic(&self.prefix, t.entity.name);
                let from = table_next.get(&topic).copied().unwrap_or(0);
                (topic, 0, from)
            })
            .collect();
        let k = self.kafka.clone();
        let records = tokio::task::spawn_blocking(move || {
            kafka::read_partitions_blocking(&k, &what, Duration::from_secs(120))
        })
        .await
        .map_err(|e| kafka::KafkaError::Task(e.to_string()))??;
        let mine = format!("{}:", plan.delta);
        let present: BTreeMap<String, BTreeMap<String, i64>> = records
            .into_iter()
            .map(|((topic, _), records)| {
                let found = records
                    .into_iter()
                    .filter_map(|(o, key, _)| Some((String::from_utf8(key?).ok()?, o)))
                    .filter(|(key, _)| key.starts_with(&mine))
                    .collect();
                (topic, found)
            })
            .collect();
        let commit = self.publish(plan, built, &present, floor, &gather).await?;
        self.write_manifest(&Manifest::Commit(commit.clone()))
            .await?;
        Ok(commit)
    }

    async fn write_manifest(&self, m: &Manifest) -> Result<(), FeedError> {
        let (key, delta) = match m {
            Manifest::Plan(p) => ("plan", p.delta),
            Manifest::Commit(c) => ("commit", c.delta),
        };
        let body = serde_json::to_vec(m).expect("a manifest serializes");
        let topic = manifest_topic(&self.prefix);
        let key = format!("{key}:{delta}");
        kafka::append(&self.producer, &topic, Some(&key), &body)
            .await
            .map_err(|e| FeedError::client("writing the delta manifest", e))?;
        Ok(())
    }
}

fn now_micros() -> i64 {
    chrono::Utc::now().timestamp_micros()
}

/// The topics the feed needs: its upload topics and manifest (one
/// partition each), and the event topics as capture makes them (a feed
/// started first would otherwise find no partitions to read).
pub fn topic_needs(cfg: &Config) -> Vec<kafka::Need> {
    let prefix = &cfg.capture.topic_prefix;
    let uploads: Vec<String> = ENTITIES
        .iter()
        .map(|e| upload_topic(prefix, e.name))
        .chain([manifest_topic(prefix)])
        .collect();
    let mut needs = kafka::needs(&uploads, 1);
    needs.extend(kafka::needs(
        &kafka::event_topics(prefix),
        cfg.capture.partitions,
    ));
    needs
}

/// The manifest's records, for drivers and tests.
pub fn read_manifest(kafka: &KafkaEndpoint, prefix: &str) -> Result<Vec<Manifest>, FeedError> {
    let topic = manifest_topic(prefix);
    kafka::read_json_blocking(kafka, &topic, 0)?
        .into_iter()
        .map(|(offset, m)| {
            m.map_err(|reason| FeedError::Manifest {
                topic: topic.clone(),
                offset,
                reason,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn partition_keys_round_trip() {
        assert_eq!(
            parse_tp(&tp_key("vitrina.grade.v1", 7)),
            Some(("vitrina.grade.v1".to_string(), 7))
        );
    }
}

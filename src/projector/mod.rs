//! The projector: event topics → the showcase, with exactly-once effect.
//!
//! ```text
//!   vitrina.<entity>.v1 ──consumer group──▶ batch ──one transaction──▶ showcase rows
//!                                                                    + consumer offsets
//!                                                                    + watermarks → fresh_as_of
//! ```
//!
//! Invariants:
//! - Offsets live in the showcase database and commit with the rows; on
//!   start and on every rebalance the consumer is positioned at them.
//! - Apply is idempotent and order-safe ([`crate::showcase::apply`]), so a
//!   batch replayed after a crash changes nothing twice.
//! - `fresh_as_of` is the oldest of the latest watermarks over all
//!   partitions (per entity: over that entity's partitions): every journal
//!   change committed up to it is visible. It stops moving when capture
//!   stops, and moves with heartbeats when the journal is idle.
//! - An event that fails to decode goes to the dead-letter topic with the
//!   reason and its position; the partition goes on.
//! - When the SLA is at risk or breached, or the projector is far behind
//!   the log, it applies larger batches (catch-up mode) and says so.

pub mod replay;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext, StreamConsumer};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::types::RDKafkaRespErr;
use rdkafka::{ClientConfig, ClientContext, Message, Offset, TopicPartitionList};
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::config::Config;
use crate::events::codec::Registry;
use crate::events::{Message as Decoded, ENTITIES};
use crate::kafka;
use crate::observability as obs;
use crate::pg::{self, PgError};
use crate::showcase::{self, apply};
use crate::stack::Endpoints;

#[derive(Debug, thiserror::Error)]
pub enum ProjectorError {
    #[error(transparent)]
    Pg(#[from] PgError),
    #[error(transparent)]
    Kafka(#[from] kafka::KafkaError),
    #[error("Kafka consumer: {0}")]
    Consumer(String),
    #[error("{0}")]
    Replay(String),
}

/// (topic, partition)
pub type Tp = (String, i32);
type Offsets = Arc<Mutex<HashMap<Tp, i64>>>;

/// Positions newly assigned partitions at the offsets the showcase holds.
struct SeekToShowcase {
    offsets: Offsets,
    /// Partitions currently assigned to this member.
    assigned: Arc<std::sync::atomic::AtomicUsize>,
}

impl ClientContext for SeekToShowcase {}

impl ConsumerContext for SeekToShowcase {
    fn rebalance(
        &self,
        consumer: &BaseConsumer<Self>,
        err: RDKafkaRespErr,
        tpl: &mut TopicPartitionList,
    ) {
        if err == RDKafkaRespErr::RD_KAFKA_RESP_ERR__ASSIGN_PARTITIONS {
            let known = self.offsets.lock().unwrap();
            let mut assign = TopicPartitionList::new();
            for e in tpl.elements() {
                let at = known
                    .get(&(e.topic().to_string(), e.partition()))
                    .map(|o| Offset::Offset(*o))
                    .unwrap_or(Offset::Beginning);
                let _ = assign.add_partition_offset(e.topic(), e.partition(), at);
            }
            tracing::info!(
                partitions = assign.count(),
                "assigned; positioned at the showcase's offsets"
            );
            self.assigned
                .store(assign.count(), std::sync::atomic::Ordering::SeqCst);
            if let Err(e) = consumer.assign(&assign) {
                tracing::error!(error = %e, "assign failed");
            }
        } else {
            self.assigned.store(0, std::sync::atomic::Ordering::SeqCst);
            let _ = consumer.unassign();
        }
    }
}

/// SLA state of a freshness age.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sla {
    Ok,
    AtRisk,
    Breached,
}

impl Sla {
    pub fn of(age_s: Option<f64>, at_risk_s: u64, budget_s: u64) -> Sla {
        match age_s {
            Some(a) if a < at_risk_s as f64 => Sla::Ok,
            Some(a) if a < budget_s as f64 => Sla::AtRisk,
            _ => Sla::Breached,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Sla::Ok => "ok",
            Sla::AtRisk => "at_risk",
            Sla::Breached => "breached",
        }
    }
}

/// What one batch did.
#[derive(Debug, Default)]
pub struct Step {
    /// Messages consumed (events, watermarks, dead letters).
    pub messages: usize,
    pub events: usize,
    pub applied: apply::Applied,
    /// Time spent receiving and decoding, and in the apply transaction.
    pub gather: Duration,
    pub apply: Duration,
}

/// Messages gathered for one apply transaction.
#[derive(Default)]
struct Batch {
    messages: usize,
    events: Vec<crate::events::Event>,
    marks: Vec<apply::WatermarkAt>,
    /// Next offset per partition after this batch.
    next: HashMap<Tp, i64>,
    /// Commit time (µs) of the batch's last record per partition.
    times: HashMap<Tp, i64>,
    gather: Duration,
}

/// The Kafka side: the consumer, decoding, dead letters.
struct Source {
    consumer: StreamConsumer<SeekToShowcase>,
    registry: Registry,
    dlq: FutureProducer,
    prefix: String,
    /// Next offset expected per partition: what is applied or in flight.
    gathered: HashMap<Tp, i64>,
    assigned: Arc<std::sync::atomic::AtomicUsize>,
    /// Since when no partition is assigned, and how long that may last.
    unassigned_since: Option<Instant>,
    rejoin_after: Duration,
    topics: Vec<String>,
}

/// The PostgreSQL side: apply transactions into one schema. With two
/// connections, the topics are split between two parallel transactions
/// ([`on_second`]), each committing its own topics' offsets with their
/// rows.
struct Sink {
    client: tokio_postgres::Client,
    second: Option<tokio_postgres::Client>,
    schema: String,
    offsets: Offsets,
    /// Journal commit time (µs) of the last record applied per partition.
    last_time: HashMap<Tp, i64>,
    /// Benchmarks: commit → visible seconds of every streamed event.
    probe: Option<LatencyProbe>,
}

/// Collects commit → visible latencies (seconds) for benchmarks.
pub type LatencyProbe = Arc<Mutex<Vec<f64>>>;

/// A consumer group applying the event topics to one showcase schema.
/// Gathering the next batch overlaps applying the previous one.
pub struct Projection {
    source: Source,
    /// None only while a spawned apply task owns it.
    sink: Option<Sink>,
    in_flight: Option<Batch>,
    topics: Vec<String>,
    brokers: String,
}

impl Projection {
    /// Connects to the showcase database, creates schema `schema` if needed,
    /// and subscribes group `group` to the event topics.
    pub async fn open(
        cfg: &Config,
        ep: &Endpoints,
        showcase_db: &str,
        schema: &str,
        group: &str,
    ) -> Result<Projection, ProjectorError> {
        let prefix = cfg.capture.topic_prefix.clone();
        let assigned = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let client = pg::connect(&ep.pg_config(showcase_db)).await?;
        showcase::migrate(&client, schema).await?;
        let stored = stored_offsets(&client, schema).await?;
        let offsets: Offsets = Arc::new(Mutex::new(stored.clone()));
        let brokers = ep
            .kafka(&cfg.state_dir)
            .map_err(|e| ProjectorError::Consumer(e.to_string()))?
            .to_string();
        let topics = event_topics(&prefix);
        kafka::ensure_topics(
            &brokers,
            &topics,
            cfg.capture.partitions,
            cfg.capture.replication_factor,
        )
        .await?;
        let consumer: StreamConsumer<SeekToShowcase> = ClientConfig::new()
            .set("bootstrap.servers", &brokers)
            .set("group.id", group)
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            .set("auto.offset.reset", "earliest")
            .set(
                "session.timeout.ms",
                cfg.kafka.session_timeout_ms.to_string(),
            )
            .set("log_level", "4")
            .create_with_context(SeekToShowcase {
                offsets: offsets.clone(),
                assigned: assigned.clone(),
            })
            .map_err(|e| ProjectorError::Consumer(e.to_string()))?;
        let topic_refs: Vec<&str> = topics.iter().map(String::as_str).collect();
        consumer
            .subscribe(&topic_refs)
            .map_err(|e| ProjectorError::Consumer(e.to_string()))?;
        let dlq: FutureProducer = kafka::producer(&brokers, 5, "lz4")?;
        for t in &topics {
            metrics::counter!(obs::PROJECTOR_DEAD_LETTERS, "topic" => t.clone()).increment(0);
        }
        let second = if cfg.projector.apply_connections > 1 {
            Some(pg::connect(&ep.pg_config(showcase_db)).await?)
        } else {
            None
        };
        Ok(Projection {
            source: Source {
                consumer,
                registry: Registry::new(),
                dlq,
                prefix,
                gathered: stored,
                assigned,
                unassigned_since: None,
                rejoin_after: Duration::from_millis(cfg.kafka.session_timeout_ms as u64 * 3),
                topics: topics.clone(),
            },
            sink: Some(Sink {
                client,
                second,
                schema: schema.to_string(),
                offsets,
                last_time: HashMap::new(),
                probe: None,
            }),
            in_flight: None,
            topics,
            brokers,
        })
    }

    pub fn client(&self) -> &tokio_postgres::Client {
        &self.sink().client
    }

    pub fn brokers(&self) -> &str {
        &self.brokers
    }

    pub fn topics(&self) -> &[String] {
        &self.topics
    }

    /// Next offset to apply, per partition, as committed in the showcase.
    pub fn offsets(&self) -> HashMap<Tp, i64> {
        self.sink().offsets.lock().unwrap().clone()
    }

    /// Applies the batch gathered by the previous call while gathering the
    /// next one (up to `batch_size` messages, waiting at most `wait`). With
    /// `cap`, a partition is not read at or beyond its cap (a partition
    /// missing from `cap` is not read at all).
    pub async fn step(
        &mut self,
        batch_size: usize,
        wait: Duration,
        cancel: &CancellationToken,
        cap: Option<&HashMap<Tp, i64>>,
    ) -> Result<Step, ProjectorError> {
        let (applied, gathered) = match self.in_flight.take() {
            Some(b) => {
                // The apply runs on its own task (another worker thread):
                // building its arrays is CPU work that would otherwise
                // take turns with decoding the next batch.
                let mut sink = self.sink.take().expect("no apply in flight");
                let task = tokio::spawn(async move {
                    let r = sink.apply(b).await;
                    (sink, r)
                });
                let g = self.source.gather(batch_size, wait, cancel, cap).await;
                let (sink, a) = task
                    .await
                    .map_err(|e| ProjectorError::Consumer(format!("apply task: {e}")))?;
                self.sink = Some(sink);
                (a?, g?)
            }
            None => (
                Step::default(),
                self.source.gather(batch_size, wait, cancel, cap).await?,
            ),
        };
        if gathered.messages > 0 {
            self.in_flight = Some(gathered);
        }
        Ok(applied)
    }

    /// Applies what is gathered and not yet applied.
    pub async fn flush(&mut self) -> Result<Step, ProjectorError> {
        match self.in_flight.take() {
            Some(b) => self.sink_mut().apply(b).await,
            None => Ok(Step::default()),
        }
    }

    fn sink(&self) -> &Sink {
        self.sink.as_ref().expect("no apply in flight")
    }

    fn sink_mut(&mut self) -> &mut Sink {
        self.sink.as_mut().expect("no apply in flight")
    }
}

impl Source {
    async fn gather(
        &mut self,
        batch_size: usize,
        wait: Duration,
        cancel: &CancellationToken,
        cap: Option<&HashMap<Tp, i64>>,
    ) -> Result<Batch, ProjectorError> {
        self.watch_assignment()?;
        let mut b = Batch::default();
        let mut cur: Tp = (String::new(), -1);
        let t0 = Instant::now();
        let deadline = t0 + wait;
        while b.messages < batch_size {
            let left = deadline.saturating_duration_since(Instant::now());
            let m = tokio::select! {
                _ = cancel.cancelled() => break,
                r = tokio::time::timeout(left.max(Duration::from_millis(1)), self.consumer.recv()) => r,
            };
            let m = match m {
                Err(_) => break,
                Ok(Err(e)) => return Err(ProjectorError::Consumer(e.to_string())),
                Ok(Ok(m)) => m,
            };
            // Messages come in runs per partition: the key is built once
            // per run, and the maps below copy it only for a new partition.
            if cur.1 != m.partition() || cur.0 != m.topic() {
                cur = (m.topic().to_string(), m.partition());
            }
            let k = &cur;
            let expected = self.gathered.get(k).copied().unwrap_or(0);
            // Never apply twice what is applied or in flight.
            if m.offset() < expected {
                continue;
            }
            if let Some(cap) = cap {
                if m.offset() >= cap.get(k).copied().unwrap_or(0) {
                    let mut tpl = TopicPartitionList::new();
                    tpl.add_partition(&k.0, k.1);
                    let _ = self.consumer.pause(&tpl);
                    continue;
                }
            }
            // The broker must hand us the partition from the offset we
            // asked for. Seen with tansu: a fetch from the middle of a
            // record batch returns the next batch. Rewind the partition to
            // its beginning; what is applied already is skipped above.
            if m.offset() > expected {
                tracing::warn!(topic = %k.0, partition = k.1, expected, got = m.offset(), "broker skipped offsets; rewinding the partition");
                metrics::counter!(obs::PROJECTOR_REWINDS).increment(1);
                self.consumer
                    .seek(&k.0, k.1, Offset::Beginning, Duration::from_secs(10))
                    .map_err(|e| {
                        ProjectorError::Consumer(format!("rewinding {}[{}]: {e}", k.0, k.1))
                    })?;
                continue;
            }
            b.messages += 1;
            set(&mut self.gathered, k, m.offset() + 1);
            set(&mut b.next, k, m.offset() + 1);
            match self
                .registry
                .decode_message(m.payload().unwrap_or_default())
            {
                Ok(Decoded::Event(e)) => {
                    set(&mut b.times, k, e.source.commit_time_micros);
                    b.events.push(e);
                }
                Ok(Decoded::Watermark(w)) => {
                    set(&mut b.times, k, w.commit_time_micros);
                    b.marks
                        .push((k.0.clone(), k.1, w.commit_time_micros, w.commit_lsn));
                }
                Err(err) => self.dead_letter(&m, &err.to_string()).await?,
            }
        }
        b.gather = t0.elapsed();
        Ok(b)
    }

    /// A member left without partitions for several session timeouts
    /// rejoins the group. Seen with tansu: members killed in quick
    /// succession leave the survivor with an empty assignment and no
    /// rebalance once their sessions expire. With at most as many members as
    /// partitions, an empty assignment is never the steady state.
    fn watch_assignment(&mut self) -> Result<(), ProjectorError> {
        if self.assigned.load(std::sync::atomic::Ordering::SeqCst) > 0 {
            self.unassigned_since = None;
            return Ok(());
        }
        let since = *self.unassigned_since.get_or_insert_with(Instant::now);
        if since.elapsed() < self.rejoin_after {
            return Ok(());
        }
        tracing::warn!(
            waited_s = since.elapsed().as_secs(),
            "no partitions assigned; rejoining the consumer group"
        );
        self.consumer.unsubscribe();
        let refs: Vec<&str> = self.topics.iter().map(String::as_str).collect();
        self.consumer
            .subscribe(&refs)
            .map_err(|e| ProjectorError::Consumer(format!("rejoining the group: {e}")))?;
        self.unassigned_since = Some(Instant::now());
        Ok(())
    }

    async fn dead_letter(
        &self,
        m: &rdkafka::message::BorrowedMessage<'_>,
        reason: &str,
    ) -> Result<(), ProjectorError> {
        metrics::counter!(obs::PROJECTOR_DEAD_LETTERS, "topic" => m.topic().to_string())
            .increment(1);
        tracing::warn!(
            topic = m.topic(),
            partition = m.partition(),
            offset = m.offset(),
            reason,
            "event dead-lettered"
        );
        let body = serde_json::json!({
            "stage": "projector", "reason": reason, "topic": m.topic(),
            "partition": m.partition(), "offset": m.offset(),
        })
        .to_string();
        let dlt = kafka::dead_letter_topic(&self.prefix);
        self.dlq
            .send(
                FutureRecord::to(&dlt).key(m.topic()).payload(&body),
                Duration::from_secs(0),
            )
            .await
            .map_err(|(e, _)| ProjectorError::Consumer(format!("dead-letter topic: {e}")))?;
        Ok(())
    }
}

impl Sink {
    /// Applies `b` with its offsets and watermarks in one transaction.
    async fn apply(&mut self, b: Batch) -> Result<Step, ProjectorError> {
        // One span per apply batch, with the source positions it covers.
        let lsns = || b.events.iter().map(|e| e.source.commit_lsn);
        let span = tracing::debug_span!(
            "projector_batch",
            schema = %self.schema,
            messages = b.messages,
            events = b.events.len(),
            first_commit_lsn = %crate::capture::preflight::format_lsn(lsns().min().unwrap_or(0)),
            last_commit_lsn = %crate::capture::preflight::format_lsn(lsns().max().unwrap_or(0)),
        );
        self.apply_in_span(b).instrument(span).await
    }

    async fn apply_in_span(&mut self, mut b: Batch) -> Result<Step, ProjectorError> {
        let t0 = Instant::now();
        let offs: Vec<(String, i32, i64)> = b
            .next
            .iter()
            .map(|((t, p), o)| (t.clone(), *p, *o))
            .collect();
        let applied = match self.second.as_mut() {
            None => {
                apply::apply_with_watermarks(
                    &mut self.client,
                    &self.schema,
                    &b.events,
                    &offs,
                    &b.marks,
                )
                .await?
            }
            Some(second) => {
                let (eb, ea): (Vec<_>, Vec<_>) = std::mem::take(&mut b.events)
                    .into_iter()
                    .partition(|e| on_second_entity(e.entity.name));
                let (ob, oa): (Vec<_>, Vec<_>) = offs.into_iter().partition(|o| on_second(&o.0));
                let (mb, ma): (Vec<_>, Vec<_>) =
                    b.marks.iter().cloned().partition(|m| on_second(&m.0));
                let (ra, rb) = tokio::join!(
                    apply::apply_with_watermarks(&mut self.client, &self.schema, &ea, &oa, &ma),
                    apply::apply_with_watermarks(second, &self.schema, &eb, &ob, &mb),
                );
                let (ra, rb) = (ra?, rb?);
                b.events = ea;
                b.events.extend(eb);
                apply::Applied {
                    written: ra.written + rb.written,
                    skipped: ra.skipped + rb.skipped,
                    truncated: ra.truncated + rb.truncated,
                    consent_updates: ra.consent_updates + rb.consent_updates,
                }
            }
        };
        {
            let mut known = self.offsets.lock().unwrap();
            for (k, o) in b.next {
                let e = known.entry(k).or_insert(0);
                *e = (*e).max(o);
            }
        }
        self.last_time.extend(b.times);
        let step = Step {
            messages: b.messages,
            events: b.events.len(),
            applied,
            gather: b.gather,
            apply: t0.elapsed(),
        };
        metrics::counter!(obs::PROJECTOR_EVENTS).increment(step.events as u64);
        metrics::counter!(obs::PROJECTOR_ROWS_WRITTEN).increment(step.applied.written);
        metrics::counter!(obs::PROJECTOR_CONSENT_UPDATES).increment(step.applied.consent_updates);
        metrics::histogram!(obs::PROJECTOR_BATCH_SECONDS).record(step.apply.as_secs_f64());
        metrics::histogram!(obs::PROJECTOR_BATCH_EVENTS).record(step.messages as f64);
        let now = chrono::Utc::now().timestamp_micros();
        let mut probe = self.probe.as_ref().map(|p| p.lock().unwrap());
        // One histogram handle per entity and batch, not a registry lookup per event.
        let mut visible: HashMap<&'static str, metrics::Histogram> = HashMap::new();
        for e in b.events.iter().filter(|e| !e.source.snapshot) {
            let lag = ((now - e.source.commit_time_micros) as f64 / 1e6).max(0.0);
            visible
                .entry(e.entity.name)
                .or_insert_with(|| {
                    metrics::histogram!(obs::PROJECTOR_VISIBLE_LATENCY, "entity" => e.entity.name)
                })
                .record(lag);
            if let Some(p) = probe.as_mut() {
                p.push(lag);
            }
        }
        Ok(step)
    }
}

/// `map[k] = v`, copying the key only when it is new.
fn set<V>(map: &mut HashMap<Tp, V>, k: &Tp, v: V) {
    match map.get_mut(k) {
        Some(slot) => *slot = v,
        None => {
            map.insert(k.clone(), v);
        }
    }
}

/// Which of two apply transactions a topic's events go to: grades (two
/// thirds of the log) to the first, everything else to the second. The
/// split is by topic, hence by table: the two transactions never write
/// the same row. (A split by partition deadlocked: a row's create and
/// delete can travel on different partitions, since a delete carries only
/// the row's key, not its student.) Consent and the medical entities share
/// a transaction.
fn on_second(topic: &str) -> bool {
    !topic.ends_with(".grade.v1")
}

fn on_second_entity(entity: &str) -> bool {
    entity != "grade"
}

/// The event topics (not the dead-letter topic).
pub fn event_topics(prefix: &str) -> Vec<String> {
    ENTITIES
        .iter()
        .map(|e| kafka::topic(prefix, e.name))
        .collect()
}

/// The Kafka offsets applied to showcase `schema`, next to its rows.
pub(crate) async fn stored_offsets(
    client: &impl tokio_postgres::GenericClient,
    schema: &str,
) -> Result<HashMap<Tp, i64>, ProjectorError> {
    Ok(client
        .query(
            &format!("SELECT topic, partition, next_offset FROM {schema}.consumer_offsets"),
            &[],
        )
        .await
        .map_err(PgError::query("reading consumer offsets"))?
        .iter()
        .map(|r| ((r.get(0), r.get(1)), r.get(2)))
        .collect())
}

/// End offsets (next offset to be written) of every partition of `topics`,
/// read on a blocking thread.
pub async fn end_offsets(
    brokers: &str,
    topics: &[String],
) -> Result<HashMap<Tp, i64>, ProjectorError> {
    let (b, t) = (brokers.to_string(), topics.to_vec());
    tokio::task::spawn_blocking(move || end_offsets_blocking(&b, &t))
        .await
        .map_err(|e| ProjectorError::Consumer(format!("reading end offsets: {e}")))?
}

/// [`end_offsets`] on the calling thread.
pub fn end_offsets_blocking(
    brokers: &str,
    topics: &[String],
) -> Result<HashMap<Tp, i64>, ProjectorError> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("log_level", "3")
        .create()
        .map_err(|e| ProjectorError::Consumer(e.to_string()))?;
    let md = consumer
        .fetch_metadata(None, Duration::from_secs(10))
        .map_err(|e| ProjectorError::Consumer(format!("metadata: {e}")))?;
    let mut out = HashMap::new();
    for t in md
        .topics()
        .iter()
        .filter(|t| topics.iter().any(|x| x == t.name()))
    {
        for p in t.partitions() {
            let (_, hi) = consumer
                .fetch_watermarks(t.name(), p.id(), Duration::from_secs(10))
                .map_err(|e| ProjectorError::Consumer(format!("offsets of {}: {e}", t.name())))?;
            out.insert((t.name().to_string(), p.id()), hi);
        }
    }
    Ok(out)
}

/// Runs the live projector into schema `showcase` until `cancel`.
pub async fn run(
    cfg: &Config,
    ep: &Endpoints,
    showcase_db: &str,
    cancel: CancellationToken,
) -> Result<(), ProjectorError> {
    run_probed(cfg, ep, showcase_db, cancel, None).await
}

/// [`run`], recording commit → visible latencies into `probe`.
pub async fn run_probed(
    cfg: &Config,
    ep: &Endpoints,
    showcase_db: &str,
    cancel: CancellationToken,
    probe: Option<LatencyProbe>,
) -> Result<(), ProjectorError> {
    let group = format!("{}-projector-{showcase_db}", cfg.capture.topic_prefix);
    let mut p = Projection::open(cfg, ep, showcase_db, showcase::SCHEMA, &group).await?;
    p.sink_mut().probe = probe;
    let p_cfg = &cfg.projector;
    let partitions_per_topic = cfg.capture.partitions as i64;
    let health = crate::http::health();
    tracing::info!(
        topics = p.topics.len(),
        database = showcase_db,
        "projecting"
    );

    // Log end offsets, refreshed in the background for lag.
    let ends: Arc<Mutex<HashMap<Tp, i64>>> = Arc::default();
    let lag_task = {
        let (ends, brokers, topics, cancel) = (
            ends.clone(),
            p.brokers.clone(),
            p.topics.clone(),
            cancel.clone(),
        );
        tokio::spawn(async move {
            while !cancel.is_cancelled() {
                if let Ok(e) = end_offsets(&brokers, &topics).await {
                    *ends.lock().unwrap() = e;
                }
                tokio::time::sleep(Duration::from_secs(5)).await;
            }
        })
    };

    // Quality checks on their own connection, every quality_interval_s.
    let quality_task = {
        let (pg, cancel, every, grace) = (
            ep.pg_config(showcase_db),
            cancel.clone(),
            Duration::from_secs(p_cfg.quality_interval_s),
            p_cfg.pending_grace_s,
        );
        tokio::spawn(async move {
            let Ok(c) = pg::connect(&pg).await else {
                tracing::error!("quality checks: cannot connect to the showcase database");
                return;
            };
            while !cancel.is_cancelled() {
                match showcase::quality::run(&c, showcase::SCHEMA, grace).await {
                    Ok(r) if r.violations() > 0 => {
                        tracing::warn!(
                            violations = r.violations(),
                            "quality checks found violations (vitrina quality)"
                        )
                    }
                    Ok(_) => {}
                    Err(e) => tracing::warn!(error = %e, "quality checks failed"),
                }
                tokio::select! {
                    _ = cancel.cancelled() => {}
                    _ = tokio::time::sleep(every) => {}
                }
            }
        })
    };

    let mut sla = Sla::Breached;
    let mut catch_up = false;
    let mut last_status = Instant::now() - Duration::from_secs(10);
    let result = loop {
        health.beat();
        let lag_total = report_lag(&p, &ends.lock().unwrap());
        let want_catch_up = sla != Sla::Ok || lag_total > p_cfg.catch_up_batch_size as i64;
        if want_catch_up != catch_up {
            catch_up = want_catch_up;
            tracing::info!(
                catch_up,
                sla = sla.as_str(),
                behind = lag_total,
                "{}",
                if catch_up {
                    "catch-up mode: larger batches until fresh and caught up"
                } else {
                    "normal mode"
                }
            );
            metrics::gauge!(obs::PROJECTOR_CATCH_UP).set(if catch_up { 1.0 } else { 0.0 });
        }
        let (size, wait) = if catch_up {
            (
                p_cfg.catch_up_batch_size,
                Duration::from_millis(p_cfg.batch_wait_ms * 5),
            )
        } else {
            (p_cfg.batch_size, Duration::from_millis(p_cfg.batch_wait_ms))
        };
        let step = match p.step(size, wait, &cancel, None).await {
            Ok(s) => s,
            Err(e) => break Err(e),
        };
        // Freshness at least once a second, and after every applied batch.
        if step.messages > 0 || last_status.elapsed() >= Duration::from_secs(1) {
            last_status = Instant::now();
            let now = match update_freshness(
                p.client(),
                showcase::SCHEMA,
                &cfg.capture.topic_prefix,
                partitions_per_topic,
                p_cfg,
            )
            .await
            {
                Ok(s) => s,
                Err(e) => break Err(e),
            };
            if now == Sla::Breached && sla != Sla::Breached {
                metrics::counter!(obs::SHOWCASE_SLA_BREACHES).increment(1);
                tracing::error!(
                    "freshness SLA breached: changes older than {} s are not all visible",
                    p_cfg.sla_budget_s
                );
            }
            sla = now;
            match sla {
                Sla::Breached => health.not_ready("freshness SLA breached"),
                _ => health.ready(),
            }
        }
        if cancel.is_cancelled() {
            break p.flush().await.map(|_| ());
        }
    };
    lag_task.abort();
    quality_task.abort();
    result
}

/// Publishes consumer lag per partition (messages and seconds); returns
/// the total in messages.
fn report_lag(p: &Projection, ends: &HashMap<Tp, i64>) -> i64 {
    let applied = p.sink().offsets.lock().unwrap();
    let now = chrono::Utc::now().timestamp_micros();
    let mut total = 0;
    for (tp, end) in ends {
        let at = applied.get(tp).copied().unwrap_or(0);
        let behind = (end - at).max(0);
        total += behind;
        // Seconds: how old the last applied record is while more wait; 0
        // when caught up.
        let secs = if behind == 0 {
            0.0
        } else {
            p.sink()
                .last_time
                .get(tp)
                .map(|t| (now - t).max(0) as f64 / 1e6)
                .unwrap_or(0.0)
        };
        let labels = [("topic", tp.0.clone()), ("partition", tp.1.to_string())];
        metrics::gauge!(obs::PROJECTOR_LAG_MESSAGES, &labels).set(behind as f64);
        metrics::gauge!(obs::PROJECTOR_LAG_SECONDS, &labels).set(secs);
    }
    total
}

/// Recomputes `fresh_as_of` and the SLA state, overall and per entity, in
/// the showcase and as metrics. A topic whose partitions have not all
/// reported a watermark yet has no freshness (breached).
pub async fn update_freshness(
    client: &tokio_postgres::Client,
    schema: &str,
    prefix: &str,
    partitions_per_topic: i64,
    p: &crate::config::ProjectorConfig,
) -> Result<Sla, ProjectorError> {
    let rows = client
        .query(
            &format!(
                "SELECT topic, count(*), extract(epoch FROM now() - min(commit_time))::float8
                   FROM {schema}.watermarks GROUP BY topic"
            ),
            &[],
        )
        .await
        .map_err(PgError::query("reading watermarks"))?;
    let by_topic: HashMap<String, Option<f64>> = rows
        .iter()
        .map(|r| {
            let (t, n, age): (String, i64, Option<f64>) = (r.get(0), r.get(1), r.get(2));
            (t, if n >= partitions_per_topic { age } else { None })
        })
        .collect();
    let mut overall: Option<f64> = Some(0.0);
    let mut per_entity: Vec<(&str, Option<f64>, Sla)> = Vec::new();
    for e in ENTITIES {
        let age = by_topic
            .get(&kafka::topic(prefix, e.name))
            .copied()
            .flatten();
        overall = match (overall, age) {
            (Some(o), Some(a)) => Some(o.max(a)),
            _ => None,
        };
        per_entity.push((e.name, age, Sla::of(age, p.at_risk_s, p.sla_budget_s)));
    }
    let sla = Sla::of(overall, p.at_risk_s, p.sla_budget_s);
    client
        .execute(
            &format!(
                "INSERT INTO {schema}.status (id, fresh_as_of, sla_state) VALUES (1, now() - make_interval(secs => $1), $2)
                 ON CONFLICT (id) DO UPDATE SET fresh_as_of = EXCLUDED.fresh_as_of, sla_state = EXCLUDED.sla_state, updated_at = now()"
            ),
            &[&overall, &sla.as_str()],
        )
        .await
        .map_err(PgError::query("updating the showcase status"))?;
    let names: Vec<&str> = per_entity.iter().map(|x| x.0).collect();
    let ages: Vec<Option<f64>> = per_entity.iter().map(|x| x.1).collect();
    let states: Vec<&str> = per_entity.iter().map(|x| x.2.as_str()).collect();
    client
        .execute(
            &format!(
                "INSERT INTO {schema}.entity_freshness (entity, fresh_as_of, sla_state)
                 SELECT e, now() - make_interval(secs => a), s FROM unnest($1::text[], $2::float8[], $3::text[]) AS x(e, a, s)
                 ON CONFLICT (entity) DO UPDATE SET fresh_as_of = EXCLUDED.fresh_as_of, sla_state = EXCLUDED.sla_state, updated_at = now()"
            ),
            &[&names, &ages, &states],
        )
        .await
        .map_err(PgError::query("updating the per-entity freshness"))?;
    if let Some(a) = overall {
        metrics::gauge!(obs::SHOWCASE_FRESHNESS).set(a);
    }
    for (name, age, _) in &per_entity {
        if let Some(a) = age {
            metrics::gauge!(obs::SHOWCASE_ENTITY_FRESHNESS, "entity" => *name).set(*a);
        }
    }
    for s in [Sla::Ok, Sla::AtRisk, Sla::Breached] {
        metrics::gauge!(obs::SHOWCASE_SLA_STATE, "state" => s.as_str()).set(if s == sla {
            1.0
        } else {
            0.0
        });
    }
    Ok(sla)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sla_state_follows_the_thresholds() {
        assert_eq!(Sla::of(Some(10.0), 300, 600), Sla::Ok);
        assert_eq!(Sla::of(Some(300.0), 300, 600), Sla::AtRisk);
        assert_eq!(Sla::of(Some(599.9), 300, 600), Sla::AtRisk);
        assert_eq!(Sla::of(Some(600.0), 300, 600), Sla::Breached);
        assert_eq!(
            Sla::of(None, 300, 600),
            Sla::Breached,
            "unknown freshness is no freshness"
        );
    }
}

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
//!
//! Layout: [`source`] (consumer, rebalance, gather), [`sink`] (apply
//! transactions), [`freshness`] (SLA and lag), [`replay`] (a shadow schema
//! rebuilt from the log, swapped in).

pub mod freshness;
pub mod replay;
mod replay_seed;
pub mod sink;
pub mod source;

use std::collections::HashMap;
use std::sync::atomic::AtomicUsize;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rdkafka::consumer::{Consumer, StreamConsumer};
use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::connections::{KafkaEndpoint, PgEndpoint};
use crate::error::{Classify, ErrorKind};
use crate::events::codec::Registry;
use crate::http::Health;
use crate::kafka;
pub use crate::kafka::{end_offsets, end_offsets_blocking};
use crate::observability as obs;
use crate::pg::{self, PgError};
use crate::showcase;
pub use freshness::{update_freshness, Sla};
pub use sink::Step;
use sink::{Batch, Sink};
use source::{Offsets, SeekToShowcase, Source};

#[derive(Debug, thiserror::Error)]
pub enum ProjectorError {
    #[error(transparent)]
    Pg(#[from] PgError),
    #[error(transparent)]
    Kafka(#[from] kafka::KafkaError),
    #[error(transparent)]
    Connections(#[from] crate::connections::ConnectionError),
    #[error("projector task failed: {0}")]
    Task(String),
    #[error("{0}")]
    Replay(String),
    #[error("the event log holds less than showcase `{schema}` has applied: {worst} ({more} partition(s) in all); the broker lost events (memory storage restarted, or its data removed), and reading on would skip or misplace new ones\nhint: docs/operations.md, \"The event log was lost\": recreate the log from the journal (drop capture's slot for a new initial load), then `vitrina replay --restart --new-log`")]
    LogLost {
        schema: String,
        worst: String,
        more: usize,
    },
}

impl ProjectorError {
    /// [`ProjectorError::LogLost`] when the log ends before what `applied`
    /// holds on some partition.
    pub(crate) fn log_lost(
        schema: &str,
        applied: &HashMap<Tp, i64>,
        ends: &HashMap<Tp, i64>,
    ) -> Option<ProjectorError> {
        let short = freshness::log_shortfall(applied, ends);
        let ((topic, partition), at, end) = short.first()?;
        Some(ProjectorError::LogLost {
            schema: schema.to_string(),
            worst: format!(
                "{topic}[{partition}] ends at offset {end}, the showcase applied up to {at}"
            ),
            more: short.len(),
        })
    }
}

impl ProjectorError {
    /// [`ProjectorError::log_lost`], confirmed: a partition whose end
    /// answer is short counts only when the log holds no record at or
    /// after the last one applied (an end-offset answer can lag a record
    /// already read).
    pub(crate) async fn log_lost_confirmed(
        kafka: &crate::connections::KafkaEndpoint,
        schema: &str,
        applied: &HashMap<Tp, i64>,
        ends: &HashMap<Tp, i64>,
    ) -> Result<Option<ProjectorError>, ProjectorError> {
        let short = freshness::log_shortfall(applied, ends);
        if short.is_empty() {
            return Ok(None);
        }
        let wanted: Vec<(Tp, i64)> = short
            .iter()
            .map(|(tp, at, _)| (tp.clone(), at - 1))
            .collect();
        let missing = kafka::missing_records(kafka, &wanted).await?;
        if missing.len() < short.len() {
            let (tp, at, end) = &short[0];
            tracing::warn!(
                topic = %tp.0,
                partition = tp.1,
                end,
                applied = at,
                found = short.len() - missing.len(),
                "the broker answered an end offset below records it holds; its answer is not trusted for the lost-log check"
            );
        }
        let missing: HashMap<Tp, i64> = missing.into_iter().map(|(tp, at)| (tp, at + 1)).collect();
        Ok(ProjectorError::log_lost(schema, &missing, ends))
    }

    /// A Kafka client's operation failed (see [`kafka::KafkaError::op`]).
    pub(crate) fn kafka(
        what: impl Into<String>,
        source: rdkafka::error::KafkaError,
    ) -> ProjectorError {
        ProjectorError::Kafka(kafka::KafkaError::op(what, source))
    }
}

impl Classify for ProjectorError {
    fn kind(&self) -> ErrorKind {
        match self {
            ProjectorError::Pg(e) => e.kind(),
            ProjectorError::Kafka(e) => e.kind(),
            ProjectorError::Connections(_)
            | ProjectorError::Task(_)
            | ProjectorError::Replay(_)
            | ProjectorError::LogLost { .. } => ErrorKind::Definite,
        }
    }
}

/// (topic, partition)
pub type Tp = (String, i32);

/// The log's end offsets, as last read in the background, and which
/// reading it is.
#[derive(Default)]
struct Ends {
    round: u64,
    offsets: HashMap<Tp, i64>,
}

/// A consumer group applying the event topics to one showcase schema.
/// Gathering the next batch overlaps applying the previous one.
pub struct Projection {
    source: Source,
    /// None only while a spawned apply task owns it.
    sink: Option<Sink>,
    in_flight: Option<Batch>,
    /// Whether the apply task runs (group mode's revocation waits for it).
    applying: Arc<source::InFlight>,
    topics: Vec<String>,
    kafka: KafkaEndpoint,
}

impl Projection {
    /// Connects to the showcase database, creates schema `schema` if needed,
    /// and subscribes group `group` to the event topics.
    pub async fn open(
        cfg: &Config,
        showcase_db: &PgEndpoint,
        kafka_ep: &KafkaEndpoint,
        schema: &str,
        group: &str,
    ) -> Result<Projection, ProjectorError> {
        let prefix = cfg.capture.topic_prefix.clone();
        let assigned = Arc::new(AtomicUsize::new(0));
        let in_flight: Arc<source::InFlight> = Arc::default();
        let client = pg::connect(&showcase_db.config()).await?;
        showcase::migrate(&client, schema).await?;
        let stored = showcase::stored_offsets(&client, schema).await?;
        let offsets: Offsets = Arc::new(Mutex::new(stored.clone()));
        let mut topics = kafka::event_topics(&prefix);
        topics.push(kafka::detail_topic(&prefix));
        // The producer first: its polling thread reports the client's
        // errors (a broker unreachable, a TLS handshake or SASL login
        // refused) while the topics are being created.
        let dlq = kafka::producer(kafka_ep, 5, "lz4", 1_000_000)?;
        // The dead-letter topic too: a projector may start before capture.
        let mut needed = topics.clone();
        needed.push(kafka::dead_letter_topic(&prefix));
        kafka::ensure_topics(kafka_ep, &needed, cfg.capture.partitions).await?;
        // The log must hold everything this schema applied: a broker that
        // lost it would otherwise be read at offsets that mean other events.
        let ends = kafka::end_offsets(kafka_ep, &topics).await?;
        if let Some(e) =
            ProjectorError::log_lost_confirmed(kafka_ep, schema, &stored, &ends).await?
        {
            return Err(e);
        }
        let consumer: StreamConsumer<SeekToShowcase> = kafka_ep
            .client_config()
            .set("group.id", group)
            .set("fetch.queue.backoff.ms", kafka::FETCH_QUEUE_BACKOFF_MS)
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            .set("auto.offset.reset", "earliest")
            .set(
                "session.timeout.ms",
                kafka_ep.session_timeout_ms.to_string(),
            )
            .set("log_level", "4")
            // A group member sees partitions added to the topics (and the
            // group rebalances) within this time; Kafka's default is 5 min.
            .set("topic.metadata.refresh.interval.ms", "30000")
            .create_with_context(SeekToShowcase {
                offsets: offsets.clone(),
                kafka: kafka_ep.clone(),
                assigned: assigned.clone(),
                showcase: showcase_db.clone(),
                schema: schema.to_string(),
                in_flight: in_flight.clone(),
                generation: Default::default(),
            })
            .map_err(|e| ProjectorError::kafka("creating the consumer", e))?;
        let mut taken = HashMap::new();
        match cfg.projector.assignment {
            crate::config::Assignment::Group => {
                let topic_refs: Vec<&str> = topics.iter().map(String::as_str).collect();
                consumer
                    .subscribe(&topic_refs)
                    .map_err(|e| ProjectorError::kafka("subscribing to the event topics", e))?;
            }
            crate::config::Assignment::SelfAssigned => {
                taken = source::assign_all(kafka_ep, &consumer, &topics, &stored)?;
                let n = taken.values().sum::<i32>() as usize;
                assigned.store(n, std::sync::atomic::Ordering::SeqCst);
                tracing::info!(
                    partitions = n,
                    "assigned every partition; positioned at the showcase's offsets"
                );
            }
        }
        for t in &topics {
            metrics::counter!(obs::PROJECTOR_DEAD_LETTERS, "topic" => t.clone()).increment(0);
        }
        // One connection records positions; with more than one writer,
        // each writer has its own.
        let mut writers = Vec::new();
        if cfg.projector.apply_connections > 1 {
            for _ in 0..cfg.projector.apply_connections {
                writers.push(pg::connect(&showcase_db.config()).await?);
            }
        }
        // The apply statements are planned as costly (large arrays), so
        // PostgreSQL would compile each with JIT, anew for every batch:
        // time spent before each statement runs, never recovered.
        for c in std::iter::once(&client).chain(&writers) {
            c.batch_execute("SET jit = off")
                .await
                .map_err(PgError::query("turning JIT off for the apply sessions"))?;
        }
        Ok(Projection {
            source: Source {
                consumer,
                registry: Registry::new(),
                dlq,
                prefix,
                gathered: stored,
                assigned,
                unassigned_since: None,
                rejoin_after: Duration::from_millis(kafka_ep.session_timeout_ms as u64 * 3),
                grouped: cfg.projector.assignment == crate::config::Assignment::Group,
                stalled: HashMap::new(),
                taken,
                counts: None,
                group_commits: Default::default(),
                offsets: offsets.clone(),
                topics: topics.clone(),
                detail_topic: kafka::detail_topic(&cfg.capture.topic_prefix),
            },
            sink: Some(Sink::new(client, writers, schema, offsets)),
            in_flight: None,
            applying: in_flight,
            topics,
            kafka: kafka_ep.clone(),
        })
    }

    pub fn client(&self) -> &tokio_postgres::Client {
        &self.sink().client
    }

    pub fn kafka(&self) -> &KafkaEndpoint {
        &self.kafka
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
        let t_step = Instant::now();
        let (applied, gathered) = match self.in_flight.take() {
            Some(b) => {
                // The apply runs on its own task (another worker thread):
                // building its arrays is CPU work that would otherwise
                // take turns with decoding the next batch.
                let mut sink = self.sink.take().expect("no apply in flight");
                let applying = self.applying.begin();
                let task = tokio::spawn(async move {
                    let r = sink.apply(b).await;
                    drop(applying);
                    (sink, r)
                });
                // A task spawned from a worker waits in that worker's
                // unstealable next-task slot until the spawner yields; the
                // gather below rarely does while messages are ready, so the
                // apply would only start when the gather ends (measured:
                // steps as long as both together). Yielding once lets this
                // worker start the apply and another take the gather.
                tokio::task::yield_now().await;
                let g = self.source.gather(batch_size, wait, cancel, cap).await;
                let (sink, a) = task
                    .await
                    .map_err(|e| ProjectorError::Task(format!("apply task: {e}")))?;
                self.sink = Some(sink);
                (a?, g?)
            }
            None => (
                Step::default(),
                self.source.gather(batch_size, wait, cancel, cap).await?,
            ),
        };
        tracing::debug!(
            step_s = t_step.elapsed().as_secs_f64(),
            applied = applied.events,
            apply_s = applied.apply.as_secs_f64(),
            gathered = gathered.messages,
            gather_s = gathered.gather.as_secs_f64(),
            "step"
        );
        if gathered.messages > 0 {
            self.in_flight = Some(gathered);
        }
        // What the showcase committed, for the standard lag tools.
        let committed = self.sink().offsets.lock().unwrap().clone();
        self.source.commit_group(committed);
        Ok(applied)
    }

    /// Applies what is gathered and not yet applied.
    pub async fn flush(&mut self) -> Result<Step, ProjectorError> {
        match self.in_flight.take() {
            Some(b) => self.sink_mut().apply(b).await,
            None => Ok(Step::default()),
        }
    }

    /// Commit → visible seconds of each applied batch's streamed events.
    pub fn subscribe_visible(&self) -> broadcast::Receiver<Arc<[f64]>> {
        self.sink().subscribe_visible()
    }

    /// Why a partition stopped before an event of an unknown schema.
    pub fn stalled(&self) -> Option<&String> {
        self.source.stalled()
    }

    fn sink(&self) -> &Sink {
        self.sink.as_ref().expect("no apply in flight")
    }

    fn sink_mut(&mut self) -> &mut Sink {
        self.sink.as_mut().expect("no apply in flight")
    }
}

/// The live projector: the event topics into schema `showcase` of the
/// showcase database, with freshness, lag and quality checks.
pub struct Projector {
    cfg: Config,
    showcase: PgEndpoint,
    kafka: KafkaEndpoint,
    health: Arc<Health>,
    visible: broadcast::Sender<Arc<[f64]>>,
    /// In catch-up mode (from the start until fresh and caught up): the
    /// quality checks wait, their findings on a half-loaded showcase being
    /// noise and their scans competing with the load.
    catching_up: Arc<std::sync::atomic::AtomicBool>,
}

impl Projector {
    pub fn new(cfg: &Config, showcase: &PgEndpoint, kafka: &KafkaEndpoint) -> Projector {
        Projector {
            cfg: cfg.clone(),
            showcase: showcase.clone(),
            kafka: kafka.clone(),
            health: Arc::new(Health::new(Duration::from_secs(120))),
            visible: broadcast::channel(1024).0,
            catching_up: Arc::new(std::sync::atomic::AtomicBool::new(true)),
        }
    }

    /// Liveness and readiness of this projector (`/healthz`, `/readyz`).
    pub fn health(&self) -> Arc<Health> {
        self.health.clone()
    }

    /// Commit → visible seconds of the streamed events of every applied
    /// batch, from now on (benchmarks).
    pub fn subscribe_visible(&self) -> broadcast::Receiver<Arc<[f64]>> {
        self.visible.subscribe()
    }

    /// Runs until `cancel` fires or an error stops it.
    pub async fn run(&self, cancel: CancellationToken) -> Result<(), ProjectorError> {
        // A broker that refuses this client (certificate, credentials) is
        // a definite error: retrying would only repeat it.
        let r = tokio::select! {
            r = self.run_inner(&cancel) => r,
            e = kafka::refused() => Err(e.into()),
        };
        self.health.not_ready(match &r {
            Ok(()) => "projector stopped".to_string(),
            Err(e) => format!(
                "projector failed: {}",
                e.to_string().lines().next().unwrap_or("")
            ),
        });
        r
    }

    async fn run_inner(&self, cancel: &CancellationToken) -> Result<(), ProjectorError> {
        let cfg = &self.cfg;
        let group = format!(
            "{}-projector-{}",
            cfg.capture.topic_prefix, self.showcase.database
        );
        let mut p =
            Projection::open(cfg, &self.showcase, &self.kafka, showcase::SCHEMA, &group).await?;
        showcase::grant_readers(p.client(), showcase::SCHEMA, &cfg.projector.readers).await?;
        let forward = {
            let (mut rx, tx) = (p.subscribe_visible(), self.visible.clone());
            tokio::spawn(async move {
                while let Ok(v) = rx.recv().await {
                    let _ = tx.send(v);
                }
            })
        };
        tracing::info!(
            topics = p.topics.len(),
            database = %self.showcase.database,
            "projecting"
        );
        // Log end offsets, refreshed in the background for lag on one
        // client; the partition counts they show reach the source.
        let ends: Arc<Mutex<Ends>> = Arc::default();
        let (counts_tx, counts_rx) = tokio::sync::watch::channel(p.source.taken.clone());
        p.source.counts = Some(counts_rx);
        let client = kafka::Ends::new(&p.kafka)?;
        let lag_task = {
            let (ends, topics, cancel) = (ends.clone(), p.topics.clone(), cancel.clone());
            tokio::spawn(async move {
                while !cancel.is_cancelled() {
                    match client.read(&topics).await {
                        Ok(e) => {
                            let mut counts: HashMap<String, i32> = HashMap::new();
                            for (t, part) in e.keys() {
                                let n = counts.entry(t.clone()).or_default();
                                *n = (*n).max(part + 1);
                            }
                            kafka::publish_counts(&counts_tx, counts);
                            let mut ends = ends.lock().unwrap();
                            ends.round += 1;
                            ends.offsets = e;
                        }
                        Err(e) => {
                            tracing::debug!(error = %e, "reading the log's ends failed; trying again")
                        }
                    }
                    tokio::time::sleep(Duration::from_secs(5)).await;
                }
            })
        };
        let quality_task = tokio::spawn(quality_rounds(
            self.showcase.config(),
            cancel.clone(),
            Duration::from_secs(cfg.projector.quality_interval_s),
            cfg.projector.pending_grace_s,
            self.catching_up.clone(),
        ));
        let r = self.project(&mut p, &ends, cancel).await;
        lag_task.abort();
        quality_task.abort();
        forward.abort();
        r
    }

    /// The main loop: batches in, freshness and SLA state out.
    async fn project(
        &self,
        p: &mut Projection,
        ends: &Mutex<Ends>,
        cancel: &CancellationToken,
    ) -> Result<(), ProjectorError> {
        let (cfg, p_cfg, health) = (&self.cfg, &self.cfg.projector, &self.health);
        let partitions_per_topic = cfg.capture.partitions as i64;
        let mut sla = Sla::Breached;
        // The last state measured from known ages (an unknown state
        // leaves it as it was), and the topic that made freshness unknown.
        let (mut measured, mut unknown) = (Sla::Ok, None::<String>);
        let mut catch_up = false;
        let mut last_status = Instant::now() - Duration::from_secs(10);
        // Refresh rounds of the log's ends seen, and how many in a row
        // found the log shorter than what was applied (two in a row stop
        // the projector: one may be a broker restarting).
        let (mut round, mut short_rounds) = (0u64, 0u32);
        let mut pace = Pace::default();
        loop {
            health.beat();
            let applied = p.offsets();
            let new_round = {
                let ends = ends.lock().unwrap();
                (ends.round != round).then(|| (ends.round, ends.offsets.clone()))
            };
            if let Some((r, offsets)) = new_round {
                round = r;
                match ProjectorError::log_lost(showcase::SCHEMA, &applied, &offsets) {
                    Some(_) if short_rounds >= 1 => {
                        match ProjectorError::log_lost_confirmed(
                            &p.kafka,
                            showcase::SCHEMA,
                            &applied,
                            &offsets,
                        )
                        .await?
                        {
                            Some(e) => return Err(e),
                            None => short_rounds = 0,
                        }
                    }
                    Some(_) => short_rounds += 1,
                    None => short_rounds = 0,
                }
            }
            let lag_total = {
                let ends = ends.lock().unwrap();
                freshness::report_lag(&applied, &p.sink().last_time, &ends.offsets)
            };
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
                self.catching_up
                    .store(catch_up, std::sync::atomic::Ordering::Relaxed);
            }
            let (size, wait) = if catch_up {
                (
                    p_cfg.catch_up_batch_size,
                    Duration::from_millis(p_cfg.batch_wait_ms * 5),
                )
            } else {
                (p_cfg.batch_size, Duration::from_millis(p_cfg.batch_wait_ms))
            };
            let step = p.step(size, wait, cancel, None).await?;
            pace.add(&step);
            if catch_up && pace.since.elapsed() >= Duration::from_secs(10) {
                // Receiving and applying overlap: the larger one bounds the rate.
                tracing::info!(
                    events = pace.events,
                    events_per_s = (pace.events as f64 / pace.since.elapsed().as_secs_f64()) as u64,
                    receiving_s = format!("{:.1}", pace.gather.as_secs_f64()),
                    applying_s = format!("{:.1}", pace.apply.as_secs_f64()),
                    "catching up"
                );
                pace = Pace::default();
            }
            // Freshness at least once a second, and after every applied batch.
            if step.messages > 0 || last_status.elapsed() >= Duration::from_secs(1) {
                last_status = Instant::now();
                let ends_now = ends.lock().unwrap().offsets.clone();
                let now = update_freshness(
                    p.client(),
                    showcase::SCHEMA,
                    &cfg.capture.topic_prefix,
                    partitions_per_topic,
                    &ends_now,
                    p_cfg,
                )
                .await?;
                match (&now.unknown, now.sla) {
                    (Some(topic), _) if unknown.as_ref() != Some(topic) => tracing::warn!(
                        topic = %topic,
                        "freshness unknown: not every partition has a watermark applied yet (readiness stays down until it has)"
                    ),
                    (None, Sla::Breached) if measured != Sla::Breached => {
                        metrics::counter!(obs::SHOWCASE_SLA_BREACHES).increment(1);
                        tracing::error!(
                            "freshness SLA breached: changes older than {} s are not all visible",
                            p_cfg.sla_budget_s
                        );
                    }
                    _ => {}
                }
                sla = now.sla;
                if now.unknown.is_none() {
                    measured = sla;
                }
                unknown = now.unknown;
                match (p.stalled(), sla, &unknown) {
                    (Some(why), _, _) => health.not_ready(why.clone()),
                    (None, Sla::Breached, Some(_)) => health.not_ready(
                        "freshness unknown: not every partition has a watermark applied yet",
                    ),
                    (None, Sla::Breached, None) => health.not_ready("freshness SLA breached"),
                    (None, _, _) => health.ready(),
                }
            }
            if cancel.is_cancelled() {
                return p.flush().await.map(|_| ());
            }
        }
    }
}

/// Events applied, and time receiving and applying, since `since`.
struct Pace {
    since: Instant,
    events: usize,
    gather: Duration,
    apply: Duration,
}

impl Default for Pace {
    fn default() -> Pace {
        Pace {
            since: Instant::now(),
            events: 0,
            gather: Duration::ZERO,
            apply: Duration::ZERO,
        }
    }
}

impl Pace {
    fn add(&mut self, s: &Step) {
        self.events += s.events;
        self.gather += s.gather;
        self.apply += s.apply;
    }
}

/// Quality checks on their own connection, every `every`.
async fn quality_rounds(
    pg: crate::pg::Target,
    cancel: CancellationToken,
    every: Duration,
    grace: u64,
    catching_up: Arc<std::sync::atomic::AtomicBool>,
) {
    let Ok(c) = pg::connect(&pg).await else {
        tracing::error!("quality checks: cannot connect to the showcase database");
        return;
    };
    while !cancel.is_cancelled() {
        if catching_up.load(std::sync::atomic::Ordering::Relaxed) {
            tokio::select! {
                _ = cancel.cancelled() => {}
                _ = tokio::time::sleep(Duration::from_secs(1)) => {}
            }
            continue;
        }
        let t0 = std::time::Instant::now();
        let r = showcase::quality::run(&c, showcase::SCHEMA, grace).await;
        let took = t0.elapsed();
        metrics::histogram!(obs::QUALITY_RUN_SECONDS).record(took.as_secs_f64());
        match r {
            Ok(r) if r.violations() > 0 => {
                tracing::warn!(
                    violations = r.violations(),
                    "quality checks found violations (vitrina quality)"
                )
            }
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "quality checks failed"),
        }
        // The checks scan the showcase, so a round costs more as the
        // region grows (measured: 2 s at the demo region, 18 s at ten
        // times it). Rounds are spaced by at least QUALITY_IDLE_FACTOR
        // times the last one: they take at most a tenth of one core of the
        // showcase's server whatever the region's size, at the price of a
        // longer interval in a large region.
        let pause = every.max(took * QUALITY_IDLE_FACTOR);
        if pause > every {
            tracing::debug!(
                seconds = pause.as_secs(),
                round_s = took.as_secs_f64(),
                "next quality round later than quality_interval_s: the last round was long"
            );
        }
        tokio::select! {
            _ = cancel.cancelled() => {}
            _ = tokio::time::sleep(pause) => {}
        }
    }
}

/// Quality rounds are spaced by at least this many times the last round's
/// duration (see [`quality_rounds`]).
const QUALITY_IDLE_FACTOR: u32 = 9;

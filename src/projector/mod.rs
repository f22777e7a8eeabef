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
//!   partitions: every journal change committed up to it is visible. It
//!   stops moving when capture stops, and moves with heartbeats when the
//!   journal is idle.
//! - An event that fails to decode goes to the dead-letter topic with the
//!   reason and its position; the partition goes on.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext, StreamConsumer};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::types::RDKafkaRespErr;
use rdkafka::{ClientConfig, ClientContext, Message, Offset, TopicPartitionList};
use tokio_util::sync::CancellationToken;

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
}

type Offsets = Arc<Mutex<HashMap<(String, i32), i64>>>;

/// Positions newly assigned partitions at the offsets the showcase holds.
struct SeekToShowcase {
    offsets: Offsets,
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
            if let Err(e) = consumer.assign(&assign) {
                tracing::error!(error = %e, "assign failed");
            }
        } else {
            let _ = consumer.unassign();
        }
    }
}

pub struct Knobs {
    pub batch_size: usize,
    pub batch_wait: Duration,
}

/// Runs the projector until `cancel`.
pub async fn run(
    cfg: &Config,
    ep: &Endpoints,
    showcase_db: &str,
    cancel: CancellationToken,
) -> Result<(), ProjectorError> {
    let prefix = &cfg.capture.topic_prefix;
    let mut client = pg::connect(&ep.pg_config(showcase_db)).await?;
    showcase::migrate(&client, showcase::SCHEMA).await?;
    let offsets: Offsets = Arc::new(Mutex::new(HashMap::new()));
    for r in client
        .query(
            "SELECT topic, partition, next_offset FROM showcase.consumer_offsets",
            &[],
        )
        .await
        .map_err(PgError::query("reading consumer offsets"))?
    {
        offsets
            .lock()
            .unwrap()
            .insert((r.get(0), r.get(1)), r.get(2));
    }
    let brokers = ep
        .kafka(&cfg.state_dir)
        .map_err(|e| ProjectorError::Consumer(e.to_string()))?
        .to_string();
    let topics: Vec<String> = ENTITIES
        .iter()
        .map(|e| kafka::topic(prefix, e.name))
        .collect();
    kafka::ensure_topics(
        &brokers,
        &topics,
        cfg.capture.partitions,
        cfg.capture.replication_factor,
    )
    .await?;
    let consumer: StreamConsumer<SeekToShowcase> = ClientConfig::new()
        .set("bootstrap.servers", &brokers)
        .set("group.id", format!("{prefix}-projector-{showcase_db}"))
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
        })
        .map_err(|e| ProjectorError::Consumer(e.to_string()))?;
    let topic_refs: Vec<&str> = topics.iter().map(String::as_str).collect();
    consumer
        .subscribe(&topic_refs)
        .map_err(|e| ProjectorError::Consumer(e.to_string()))?;
    let dlq: FutureProducer = kafka::producer(&brokers, 5, "lz4")?;
    let registry = Registry::new();
    let expected_partitions = (topics.len() as i64) * cfg.capture.partitions as i64;
    let knobs = Knobs {
        batch_size: 5000,
        batch_wait: Duration::from_millis(100),
    };
    tracing::info!(topics = topics.len(), database = showcase_db, "projecting");

    loop {
        // Gather a batch.
        let mut events = Vec::new();
        let mut marks = Vec::new();
        let mut next: HashMap<(String, i32), i64> = HashMap::new();
        let deadline = Instant::now() + knobs.batch_wait;
        while events.len() + marks.len() < knobs.batch_size {
            let left = deadline.saturating_duration_since(Instant::now());
            let m = tokio::select! {
                _ = cancel.cancelled() => break,
                r = tokio::time::timeout(left.max(Duration::from_millis(1)), consumer.recv()) => r,
            };
            let m = match m {
                Err(_) => break,
                Ok(Err(e)) => return Err(ProjectorError::Consumer(e.to_string())),
                Ok(Ok(m)) => m,
            };
            let k = (m.topic().to_string(), m.partition());
            // Never apply below what the showcase already holds.
            if offsets
                .lock()
                .unwrap()
                .get(&k)
                .is_some_and(|o| m.offset() < *o)
            {
                continue;
            }
            {
                // The broker must hand us the partition from the offset we
                // asked for. Seen with tansu: a fetch from the middle of a
                // record batch returns the next batch. Rewind the partition
                // to its beginning; what is applied already is skipped above.
                let known = offsets.lock().unwrap().get(&k).copied().unwrap_or(0);
                let expected = next.get(&k).copied().unwrap_or(known);
                if m.offset() > expected {
                    tracing::warn!(topic = %k.0, partition = k.1, expected, got = m.offset(), "broker skipped offsets; rewinding the partition");
                    metrics::counter!(obs::PROJECTOR_REWINDS).increment(1);
                    consumer
                        .seek(&k.0, k.1, Offset::Beginning, Duration::from_secs(10))
                        .map_err(|e| {
                            ProjectorError::Consumer(format!("rewinding {}[{}]: {e}", k.0, k.1))
                        })?;
                    continue;
                }
            }
            next.insert(k.clone(), m.offset() + 1);
            match registry.decode_message(m.payload().unwrap_or_default()) {
                Ok(Decoded::Event(e)) => events.push(e),
                Ok(Decoded::Watermark(w)) => {
                    marks.push((k.0, k.1, w.commit_time_micros, w.commit_lsn))
                }
                Err(err) => {
                    metrics::counter!(obs::PROJECTOR_DEAD_LETTERS, "topic" => m.topic().to_string()).increment(1);
                    tracing::warn!(topic = m.topic(), partition = m.partition(), offset = m.offset(), reason = %err, "event dead-lettered");
                    let body = serde_json::json!({
                        "stage": "projector", "reason": err.to_string(), "topic": m.topic(),
                        "partition": m.partition(), "offset": m.offset(),
                    })
                    .to_string();
                    let dlt = kafka::dead_letter_topic(prefix);
                    let r = dlq
                        .send(
                            FutureRecord::to(&dlt).key(m.topic()).payload(&body),
                            Duration::from_secs(0),
                        )
                        .await;
                    if let Err((e, _)) = r {
                        return Err(ProjectorError::Consumer(format!("dead-letter topic: {e}")));
                    }
                }
            }
        }
        if cancel.is_cancelled() && next.is_empty() {
            return Ok(());
        }
        if !next.is_empty() {
            let t0 = Instant::now();
            let offs: Vec<(String, i32, i64)> =
                next.iter().map(|((t, p), o)| (t.clone(), *p, *o)).collect();
            let a =
                apply::apply_with_watermarks(&mut client, showcase::SCHEMA, &events, &offs, &marks)
                    .await?;
            {
                let mut known = offsets.lock().unwrap();
                for ((t, p), o) in next {
                    let e = known.entry((t, p)).or_insert(0);
                    *e = (*e).max(o);
                }
            }
            metrics::counter!(obs::PROJECTOR_EVENTS).increment(events.len() as u64);
            metrics::counter!(obs::PROJECTOR_ROWS_WRITTEN).increment(a.written);
            metrics::histogram!(obs::PROJECTOR_BATCH_SECONDS).record(t0.elapsed().as_secs_f64());
            let now = chrono::Utc::now().timestamp_micros();
            for e in &events {
                let lag = (now - e.source.commit_time_micros) as f64 / 1e6;
                if !e.source.snapshot {
                    metrics::histogram!(obs::PROJECTOR_VISIBLE_LATENCY, "entity" => e.entity.name)
                        .record(lag.max(0.0));
                }
            }
        }
        update_freshness(&client, expected_partitions).await?;
        if cancel.is_cancelled() {
            return Ok(());
        }
    }
}

/// Recomputes `fresh_as_of` and the SLA state, in the showcase and as metrics.
async fn update_freshness(
    client: &tokio_postgres::Client,
    expected_partitions: i64,
) -> Result<(), ProjectorError> {
    let r = client
        .query_one(
            "SELECT count(*), extract(epoch FROM now() - min(commit_time))::float8 FROM showcase.watermarks",
            &[],
        )
        .await
        .map_err(PgError::query("reading watermarks"))?;
    let (n, age): (i64, Option<f64>) = (r.get(0), r.get(1));
    let age = if n >= expected_partitions { age } else { None };
    let state = match age {
        Some(a) if a < 300.0 => "ok",
        Some(a) if a < 600.0 => "at_risk",
        _ => "breached",
    };
    client
        .execute(
            "INSERT INTO showcase.status (id, fresh_as_of, sla_state) VALUES (1, now() - make_interval(secs => $1), $2)
             ON CONFLICT (id) DO UPDATE SET fresh_as_of = EXCLUDED.fresh_as_of, sla_state = EXCLUDED.sla_state, updated_at = now()",
            &[&age, &state],
        )
        .await
        .map_err(PgError::query("updating showcase.status"))?;
    if let Some(a) = age {
        metrics::gauge!(obs::SHOWCASE_FRESHNESS).set(a);
    }
    for s in ["ok", "at_risk", "breached"] {
        metrics::gauge!(obs::SHOWCASE_SLA_STATE, "state" => s).set(if s == state {
            1.0
        } else {
            0.0
        });
    }
    Ok(())
}

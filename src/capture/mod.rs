//! Capture: the journal's WAL → depersonalized domain events on Kafka.
//!
//! ```text
//!   journal ──pgoutput──▶ stream loop ──map+hash+encode──▶ producer (idempotent, acks=all)
//!      ▲                      │ in order: deliveries, then the commit marker     │
//!      │                      ▼                                                  │
//!      └── confirm LSN ◀── acker: awaits every delivery of a transaction ◀───────┘
//! ```
//!
//! Invariants:
//! - An LSN is confirmed to the slot only after Kafka acknowledged every
//!   event (and dead letter, and watermark) at or below it: the acker awaits
//!   deliveries in the order they were produced and confirms a transaction's
//!   end LSN only after its commit marker, which follows all its deliveries.
//! - After a crash capture resumes from the confirmed LSN; a change sent
//!   again carries the same event id (derived from its WAL position).
//! - Memory is bounded: at most `capture.max_in_flight` events wait for
//!   acknowledgement; the stream loop blocks when the acker is behind, and no
//!   transaction is ever held in memory (the server sends it after commit,
//!   change by change, and changes are produced as they arrive).
//! - Names and raw document numbers never leave this module: rows are
//!   mapped ([`mapping`]) before anything is encoded, logged or counted.
//! - Heartbeats: every `heartbeat_interval_ms` a transactional logical
//!   message goes through the slot; when it arrives, a watermark is written
//!   to every partition of every topic, and its commit is confirmed, so the
//!   slot advances on a quiet journal.

pub mod mapping;
pub mod preflight;
pub mod snapshot;

use std::collections::HashMap;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use pg_walstream::{
    ColumnValue, EventType, LogicalReplicationStream, ReplicationError, ReplicationSlotOptions,
    ReplicationStreamConfig, RowData, SharedLsnFeedback,
};
use rdkafka::error::{KafkaError as RdKafkaError, RDKafkaErrorCode};
use rdkafka::producer::{DeliveryFuture, FutureProducer, FutureRecord, Producer};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::config::{Config, Hashing};
use crate::events::codec::Registry;
use crate::events::{self, Event, Op, Source, Watermark, ENTITIES};
use crate::kafka;
use crate::observability as obs;
use crate::pg::{self, PgError};
use crate::privacy::{Depersonalizer, Mode};
use crate::stack::Endpoints;
use mapping::{Mapping, Row, TableMapping};
use preflight::{format_lsn, SlotState};

#[derive(Debug, thiserror::Error)]
pub enum CaptureError {
    #[error(transparent)]
    Pg(#[from] PgError),
    #[error(transparent)]
    Kafka(#[from] kafka::KafkaError),
    #[error(transparent)]
    Mapping(#[from] mapping::MappingError),
    #[error("wal_level is `{0}`, logical replication needs `logical`\nhint: set wal_level = logical in postgresql.conf and restart the server")]
    WalLevel(String),
    #[error("user `{user}` lacks a privilege capture needs\nhint: {hint}")]
    Privilege { user: String, hint: String },
    #[error("mapped table {0} does not exist in the journal\nhint: fix the table name in the mapping file, or remove its [[table]]")]
    MissingTable(String),
    #[error("publication `{publication}` does not include mapped tables {tables:?}\nhint: ALTER PUBLICATION {publication} ADD TABLE {list};", list = .tables.join(", "))]
    PublicationMissing {
        publication: String,
        tables: Vec<String>,
    },
    #[error("replication slot `{slot}` is active in process {pid}; another capture is running against this database\nhint: stop the other capture, or give this one another capture.slot")]
    SlotActive { slot: String, pid: i32 },
    #[error("replication slot `{0}` was invalidated (its WAL exceeded max_slot_wal_keep_size); changes since its position are gone\nhint: drop the slot (SELECT pg_drop_replication_slot('{0}')) and start capture again: it takes a new initial snapshot; consumers should replay from it")]
    SlotInvalidated(String),
    #[error("replication slot `{slot}` uses plugin `{plugin}` in database `{database}`; capture needs a pgoutput slot in the journal database\nhint: choose another capture.slot")]
    SlotForeign {
        slot: String,
        plugin: String,
        database: String,
    },
    #[error("replication stream failed: {0}")]
    Replication(String),
    #[error("Kafka did not acknowledge an event: {0}\nhint: nothing after the last confirmed LSN is lost; capture resumes from it on restart")]
    Delivery(String),
    #[error("capture task failed: {0}")]
    Task(String),
}

/// Something the acker must see, in production order.
enum Ack {
    Delivery(DeliveryFuture, &'static str, Op),
    Other(DeliveryFuture),
    Commit {
        end_lsn: u64,
        commit_time_micros: i64,
    },
    /// Fires when everything enqueued before it is acknowledged.
    Mark(tokio::sync::oneshot::Sender<()>),
}

/// A change that could not become an event, as written to the dead-letter
/// topic. Carries names of columns and positions, never values.
#[derive(Debug, Clone, serde::Serialize)]
pub struct DeadLetter {
    pub reason: String,
    pub kind: &'static str,
    pub table: String,
    pub entity: Option<&'static str>,
    pub op: &'static str,
    pub lsn: String,
    pub commit_lsn: String,
    pub txid: i64,
    pub commit_time_micros: i64,
    pub capture: String,
}

/// Owns the producer and the order of everything sent.
pub struct Publisher {
    producer: FutureProducer,
    registry: Registry,
    acks: mpsc::Sender<Ack>,
    prefix: String,
    slot: String,
    /// Topic of each entity, named once rather than per event.
    topics: HashMap<&'static str, String>,
    partitions: HashMap<String, i32>,
    in_flight: Arc<AtomicI64>,
}

impl Publisher {
    async fn produce(
        &self,
        topic: &str,
        key: &str,
        payload: &[u8],
        partition: Option<i32>,
    ) -> Result<DeliveryFuture, CaptureError> {
        let mut record = FutureRecord::to(topic).key(key).payload(payload);
        if let Some(p) = partition {
            record = record.partition(p);
        }
        loop {
            match self.producer.send_result(record) {
                Ok(f) => {
                    self.in_flight.fetch_add(1, Ordering::Relaxed);
                    return Ok(f);
                }
                Err((RdKafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), r)) => {
                    record = r;
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
                Err((e, _)) => return Err(CaptureError::Delivery(e.to_string())),
            }
        }
    }

    fn topic(&self, entity: &str) -> &str {
        self.topics
            .get(entity)
            .map(String::as_str)
            .unwrap_or_default()
    }

    async fn enqueue(&self, a: Ack) -> Result<(), CaptureError> {
        self.acks
            .send(a)
            .await
            .map_err(|_| CaptureError::Task("the acker stopped".into()))
    }

    pub async fn send_event(&mut self, e: &Event, partition_key: &str) -> Result<(), CaptureError> {
        match self.registry.encode(e) {
            Ok(bytes) => {
                let topic = self.topic(e.entity.name);
                let f = self.produce(topic, partition_key, &bytes, None).await?;
                for q in &e.quality {
                    metrics::counter!(obs::CAPTURE_QUALITY_FLAGS, "entity" => e.entity.name, "flag" => q.clone()).increment(1);
                }
                self.enqueue(Ack::Delivery(f, e.entity.name, e.op)).await
            }
            Err(err) => {
                self.dead_letter(DeadLetter {
                    reason: err.to_string(),
                    kind: "encode",
                    table: e.source.table.clone(),
                    entity: Some(e.entity.name),
                    op: e.op.symbol(),
                    lsn: format_lsn(e.source.lsn),
                    commit_lsn: format_lsn(e.source.commit_lsn),
                    txid: e.source.txid,
                    commit_time_micros: e.source.commit_time_micros,
                    capture: self.slot.clone(),
                })
                .await
            }
        }
    }

    /// TRUNCATE events go to every partition, so each key's stream sees
    /// the truncate in order with its own events.
    pub async fn send_to_all_partitions(&mut self, e: &Event) -> Result<(), CaptureError> {
        let bytes = self
            .registry
            .encode(e)
            .map_err(|err| CaptureError::Task(err.to_string()))?;
        let topic = self.topic(e.entity.name);
        let n = self.partitions.get(topic).copied().unwrap_or(1);
        for p in 0..n {
            let f = self.produce(topic, &e.key, &bytes, Some(p)).await?;
            self.enqueue(Ack::Delivery(f, e.entity.name, e.op)).await?;
        }
        Ok(())
    }

    pub async fn dead_letter(&mut self, dl: DeadLetter) -> Result<(), CaptureError> {
        tracing::warn!(table = %dl.table, kind = dl.kind, reason = %dl.reason, lsn = %dl.lsn, "change dead-lettered");
        metrics::counter!(obs::CAPTURE_DEAD_LETTERS, "table" => dl.table.clone(), "kind" => dl.kind).increment(1);
        let payload = serde_json::to_vec(&dl).expect("dead letter serializes");
        let topic = kafka::dead_letter_topic(&self.prefix);
        let f = self.produce(&topic, &dl.table, &payload, None).await?;
        self.enqueue(Ack::Other(f)).await
    }

    pub async fn watermarks(
        &mut self,
        commit_lsn: u64,
        commit_time_micros: i64,
    ) -> Result<(), CaptureError> {
        let now = chrono::Utc::now().timestamp_micros();
        let topics: Vec<(String, i32)> = self
            .partitions
            .iter()
            .filter(|(t, _)| **t != kafka::dead_letter_topic(&self.prefix))
            .map(|(t, n)| (t.clone(), *n))
            .collect();
        for (topic, n) in topics {
            for p in 0..n {
                let bytes = self.registry.encode_watermark(&Watermark {
                    capture: self.slot.clone(),
                    commit_lsn,
                    commit_time_micros,
                    emitted_at_micros: now,
                    partition: p,
                });
                let f = self.produce(&topic, "", &bytes, Some(p)).await?;
                self.enqueue(Ack::Other(f)).await?;
                metrics::counter!(obs::CAPTURE_WATERMARKS).increment(1);
            }
        }
        Ok(())
    }

    /// A receiver that fires once everything sent so far is acknowledged.
    pub async fn mark(&self) -> Result<tokio::sync::oneshot::Receiver<()>, CaptureError> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.enqueue(Ack::Mark(tx)).await?;
        Ok(rx)
    }

    /// Waits until everything sent so far is acknowledged.
    pub async fn flush_and_wait(&self) -> Result<(), CaptureError> {
        self.mark()
            .await?
            .await
            .map_err(|_| CaptureError::Task("the acker stopped before acknowledging".into()))
    }

    pub async fn commit(&self, end_lsn: u64, commit_time_micros: i64) -> Result<(), CaptureError> {
        self.enqueue(Ack::Commit {
            end_lsn,
            commit_time_micros,
        })
        .await
    }
}

/// What a benchmark or test watches from outside: the confirmed LSN and,
/// when `record` is set, each transaction's commit → acknowledged latency.
#[derive(Default)]
pub struct Probe {
    pub confirmed: AtomicU64,
    /// Events acknowledged by Kafka.
    pub events: AtomicU64,
    pub record: std::sync::atomic::AtomicBool,
    pub latencies: std::sync::Mutex<Vec<f64>>,
    /// Rows of the initial load, set once every one is acknowledged.
    pub loaded_rows: AtomicU64,
}

/// One delivery report: acknowledged, or the reason it is not.
async fn delivered(f: DeliveryFuture) -> Result<(), CaptureError> {
    match f.await {
        Ok(Ok(_)) => Ok(()),
        Ok(Err((e, _))) => Err(CaptureError::Delivery(e.to_string())),
        Err(_) => Err(CaptureError::Delivery(
            "delivery report lost (producer gone)".into(),
        )),
    }
}

/// Awaits deliveries in production order and confirms LSNs.
async fn acker(
    mut rx: mpsc::Receiver<Ack>,
    feedback: Arc<SharedLsnFeedback>,
    in_flight: Arc<AtomicI64>,
    confirmed: Arc<AtomicU64>,
    last_commit_time: Arc<AtomicI64>,
    probe: Option<Arc<Probe>>,
) -> Result<(), CaptureError> {
    // One counter handle per (entity, op), looked up in the registry once.
    let mut events: HashMap<(&'static str, Op), metrics::Counter> = HashMap::new();
    while let Some(a) = rx.recv().await {
        match a {
            Ack::Delivery(f, entity, op) => {
                delivered(f).await?;
                in_flight.fetch_sub(1, Ordering::Relaxed);
                events
                    .entry((entity, op))
                    .or_insert_with(|| {
                        metrics::counter!(obs::CAPTURE_EVENTS, "entity" => entity, "op" => op.symbol())
                    })
                    .increment(1);
                if let Some(p) = &probe {
                    p.events.fetch_add(1, Ordering::Relaxed);
                }
            }
            Ack::Other(f) => {
                delivered(f).await?;
                in_flight.fetch_sub(1, Ordering::Relaxed);
            }
            Ack::Mark(tx) => {
                let _ = tx.send(());
            }
            Ack::Commit {
                end_lsn,
                commit_time_micros,
            } => {
                feedback.update_flushed_lsn(end_lsn);
                feedback.update_applied_lsn(end_lsn);
                confirmed.fetch_max(end_lsn, Ordering::SeqCst);
                last_commit_time.fetch_max(commit_time_micros, Ordering::SeqCst);
                let latency =
                    (chrono::Utc::now().timestamp_micros() - commit_time_micros) as f64 / 1e6;
                metrics::histogram!(obs::CAPTURE_ACK_LATENCY).record(latency.max(0.0));
                if let Some(p) = &probe {
                    p.confirmed.fetch_max(end_lsn, Ordering::SeqCst);
                    if p.record.load(Ordering::Relaxed) {
                        p.latencies.lock().unwrap().push(latency.max(0.0));
                    }
                }
                metrics::counter!(obs::CAPTURE_TRANSACTIONS).increment(1);
                metrics::gauge!(obs::CAPTURE_CONFIRMED_LSN).set(end_lsn as f64);
            }
        }
        metrics::gauge!(obs::CAPTURE_IN_FLIGHT).set(in_flight.load(Ordering::Relaxed) as f64);
    }
    Ok(())
}

struct WalRow<'a>(&'a RowData);

impl Row for WalRow<'_> {
    fn get(&self, column: &str) -> Option<Option<&str>> {
        self.0.get(column).map(|v| match v {
            ColumnValue::Null => None,
            other => other.as_str(),
        })
    }
}

/// pgoutput v1 with logical messages (heartbeats) from `slot`, which
/// exports a snapshot when created (the initial load reads at it).
fn stream_config(slot: &str, publication: &str, temporary: bool) -> ReplicationStreamConfig {
    ReplicationStreamConfig::builder(slot, publication)
        .with_protocol_version(1)
        .with_messages(true)
        .with_slot_options(ReplicationSlotOptions {
            temporary,
            snapshot: Some("export".into()),
            ..Default::default()
        })
}

fn conn_string(ep: &Endpoints, database: &str) -> String {
    let auth = match &ep.pg_password {
        Some(p) => format!("{}:{}", ep.pg_user, crate::pg::percent_encode(p.expose())),
        None => ep.pg_user.clone(),
    };
    format!(
        "postgresql://{auth}@{}:{}/{database}?replication=database&application_name=vitrina-capture",
        ep.pg_host, ep.pg_port
    )
}

/// The transaction being received.
#[derive(Default)]
struct Txn {
    xid: i64,
    commit_lsn: u64,
    commit_time_micros: i64,
    heartbeat: bool,
}

/// Runs capture until `cancel` fires or a fatal error.
pub async fn run(
    cfg: &Config,
    ep: &Endpoints,
    cancel: CancellationToken,
) -> Result<(), CaptureError> {
    run_probed(cfg, ep, cancel, None).await
}

/// [`run`], reporting progress to `probe` (benchmarks).
pub async fn run_probed(
    cfg: &Config,
    ep: &Endpoints,
    cancel: CancellationToken,
    probe: Option<Arc<Probe>>,
) -> Result<(), CaptureError> {
    // Alive while the initial load runs (no streaming loop turns yet);
    // once streaming, the loop's own turns are the liveness signal.
    let alive = {
        let cancel = cancel.clone();
        tokio::spawn(async move {
            while !cancel.is_cancelled() && !crate::http::health().is_ready() {
                crate::http::health().beat();
                tokio::time::sleep(Duration::from_secs(5)).await;
            }
        })
    };
    let r = run_inner(cfg, ep, cancel, probe).await;
    alive.abort();
    crate::http::health().not_ready("capture stopped");
    r
}

async fn run_inner(
    cfg: &Config,
    ep: &Endpoints,
    cancel: CancellationToken,
    probe: Option<Arc<Probe>>,
) -> Result<(), CaptureError> {
    let c = &cfg.capture;
    let mapping = Mapping::load(c.mapping_file.as_deref())?;
    // Dead-letter series exist from the start, at 0, so that increase()
    // and alerts see the first one.
    for t in &mapping.tables {
        for kind in ["unmappable", "encode"] {
            metrics::counter!(obs::CAPTURE_DEAD_LETTERS, "table" => t.table.clone(), "kind" => kind)
                .increment(0);
        }
    }
    let dp = Depersonalizer::new(match c.hashing {
        Hashing::Plain => Mode::Plain,
        Hashing::Keyed => Mode::Keyed(
            c.hmac_key
                .as_ref()
                .map(|k| k.expose().as_bytes().to_vec())
                .unwrap_or_default(),
        ),
    });
    let db = &cfg.postgres.journal_database;
    let sql = pg::connect(&ep.pg_config(db)).await?;
    let (slot_state, _missing) = preflight::check(&sql, &mapping, &c.slot, &c.publication).await?;

    let brokers = ep
        .kafka(&cfg.state_dir)
        .map_err(|e| CaptureError::Task(e.to_string()))?
        .to_string();
    let mut topics: Vec<String> = mapping
        .tables
        .iter()
        .map(|t| kafka::topic(&c.topic_prefix, t.entity.name))
        .collect();
    topics.sort();
    topics.dedup();
    topics.push(kafka::dead_letter_topic(&c.topic_prefix));
    kafka::ensure_topics(&brokers, &topics, c.partitions, c.replication_factor).await?;
    let producer = kafka::producer(&brokers, c.linger_ms, &c.compression)?;
    let md = producer
        .client()
        .fetch_metadata(None, Duration::from_secs(30))
        .map_err(|e| CaptureError::Delivery(format!("topic metadata: {e}")))?;
    let mut partitions = HashMap::new();
    for t in &topics {
        let n = md
            .topics()
            .iter()
            .find(|m| m.name() == t)
            .map(|m| m.partitions().len() as i32)
            .filter(|n| *n > 0)
            .unwrap_or(c.partitions);
        partitions.insert(t.clone(), n);
    }

    // Confirmed positions reach the server within a heartbeat or a second.
    let rcfg = stream_config(&c.slot, &c.publication, false)
        .with_feedback_interval(Duration::from_millis(c.heartbeat_interval_ms.min(1000)));
    let mut stream = LogicalReplicationStream::new(&conn_string(ep, db), rcfg)
        .await
        .map_err(|e| CaptureError::Replication(e.to_string()))?;

    let (tx, rx) = mpsc::channel::<Ack>(c.max_in_flight);
    let in_flight = Arc::new(AtomicI64::new(0));
    let confirmed = Arc::new(AtomicU64::new(0));
    let last_commit_time = Arc::new(AtomicI64::new(chrono::Utc::now().timestamp_micros()));
    let acker_task = tokio::spawn(acker(
        rx,
        stream.shared_lsn_feedback.clone(),
        in_flight.clone(),
        confirmed.clone(),
        last_commit_time.clone(),
        probe.clone(),
    ));
    let mut publisher = Publisher {
        producer: producer.clone(),
        registry: Registry::new(),
        acks: tx,
        prefix: c.topic_prefix.clone(),
        slot: c.slot.clone(),
        topics: ENTITIES
            .iter()
            .map(|e| (e.name, kafka::topic(&c.topic_prefix, e.name)))
            .collect(),
        partitions,
        in_flight: in_flight.clone(),
    };

    // The initial load, at the slot's exported snapshot, before streaming.
    let mut skip_before: HashMap<String, u64> = HashMap::new();
    let state_path = cfg
        .state_dir
        .join("capture")
        .join(format!("{}.json", c.slot));
    let mut state = snapshot::State::load(&state_path);
    if slot_state == SlotState::Absent {
        // Recorded before the slot exists: a crash after creating it then
        // resumes the load instead of skipping it.
        state = snapshot::State {
            started: c.snapshot,
            ..Default::default()
        };
        state.save(&state_path);
        stream
            .ensure_replication_slot()
            .await
            .map_err(|e| CaptureError::Replication(e.to_string()))?;
        let lsn = slot_lsn(&sql, &c.slot).await?;
        tracing::info!(slot = %c.slot, lsn = %format_lsn(lsn), "replication slot created");
        if c.snapshot {
            let name = stream
                .exported_snapshot_name()
                .ok_or_else(|| {
                    CaptureError::Replication("the new slot exported no snapshot".into())
                })?
                .to_string();
            let tables: Vec<&TableMapping> = mapping.tables.iter().collect();
            let rows = snapshot::load_tables(
                cfg,
                ep,
                &tables,
                &name,
                lsn,
                &dp,
                &mut publisher,
                &mut state,
                &state_path,
            )
            .await?;
            if let Some(p) = &probe {
                p.loaded_rows.store(rows.max(1), Ordering::SeqCst);
            }
        }
        state.done = true;
        state.save(&state_path);
    } else if c.snapshot && state.started && !state.done {
        // An interrupted initial load: the remaining tables are copied at a
        // new snapshot, and their streamed changes up to it are skipped.
        let remaining: Vec<&TableMapping> = mapping
            .tables
            .iter()
            .filter(|t| !state.tables_done.contains(&t.table))
            .collect();
        tracing::info!(
            tables = remaining.len(),
            "resuming the interrupted initial load"
        );
        let resume_slot = format!("{}_resume", c.slot);
        let rcfg2 = stream_config(&resume_slot, &c.publication, true);
        let mut helper = LogicalReplicationStream::new(&conn_string(ep, db), rcfg2)
            .await
            .map_err(|e| CaptureError::Replication(e.to_string()))?;
        helper
            .ensure_replication_slot()
            .await
            .map_err(|e| CaptureError::Replication(e.to_string()))?;
        let lsn = slot_lsn(&sql, &resume_slot).await?;
        let name = helper
            .exported_snapshot_name()
            .ok_or_else(|| {
                CaptureError::Replication("the resume slot exported no snapshot".into())
            })?
            .to_string();
        for t in &remaining {
            state.table_lsn.insert(t.table.clone(), lsn);
        }
        state.save(&state_path);
        // Rows of these tables published before the interruption are
        // withdrawn: a TRUNCATE just before the new snapshot's rows, on
        // every partition. Consumers then hold exactly the new snapshot.
        for t in &remaining {
            let e = Event {
                event_id: format!("R{lsn:016X}-{}", t.table),
                entity: t.entity,
                op: Op::Truncate,
                key: "*".into(),
                source: Source {
                    lsn: 0,
                    commit_lsn: lsn,
                    txid: 0,
                    commit_time_micros: chrono::Utc::now().timestamp_micros(),
                    table: t.table.clone(),
                    snapshot: true,
                },
                actor: None,
                quality: vec![],
                after: None,
            };
            publisher.send_to_all_partitions(&e).await?;
        }
        snapshot::load_tables(
            cfg,
            ep,
            &remaining,
            &name,
            lsn,
            &dp,
            &mut publisher,
            &mut state,
            &state_path,
        )
        .await?;
        drop(helper); // the temporary slot goes with its connection
        state.done = true;
        state.save(&state_path);
    }
    skip_before.extend(state.table_lsn.clone());

    stream
        .start(None)
        .await
        .map_err(|e| start_error(&c.slot, e))?;
    tracing::info!(slot = %c.slot, publication = %c.publication, "streaming");
    crate::http::health().ready();

    // Heartbeats and slot metrics on their own connection.
    let side = tokio::spawn(side_tasks(
        ep.pg_config(db),
        c.slot.clone(),
        Duration::from_millis(c.heartbeat_interval_ms),
        last_commit_time.clone(),
        cancel.clone(),
    ));

    let heartbeat_prefix = format!("vitrina.heartbeat.{}", c.slot);
    let mut txn = Txn::default();
    let mut acker_task = acker_task;
    let health = crate::http::health();
    let result: Result<(), CaptureError> = loop {
        // Heartbeat messages keep this loop turning on an idle journal.
        health.beat();
        let ev = tokio::select! {
            r = stream.next_event(&cancel) => r,
            a = &mut acker_task => {
                break match a {
                    Ok(Ok(())) => Err(CaptureError::Task("the acker stopped".into())),
                    Ok(Err(e)) => Err(e),
                    Err(e) => Err(CaptureError::Task(e.to_string())),
                };
            }
        };
        let ev = match ev {
            Ok(ev) => ev,
            Err(ReplicationError::Cancelled(_)) => break Ok(()),
            Err(e) => {
                metrics::counter!(obs::CAPTURE_ERRORS, "kind" => "replication").increment(1);
                break Err(CaptureError::Replication(e.to_string()));
            }
        };
        let lsn = ev.lsn.value();
        let r = handle(
            ev.event_type,
            lsn,
            &mut txn,
            &mapping,
            &dp,
            &mut publisher,
            &skip_before,
            &heartbeat_prefix,
        )
        .await;
        if let Err(e) = r {
            break Err(e);
        }
        // pg_walstream looks at its feedback timer only every 128 frames:
        // on a quiet journal (a heartbeat is 3 frames) the confirmed
        // position would reach the server minutes late and the slot would
        // hold WAL meanwhile. Checking after every event costs a clock read.
        stream.maybe_send_feedback().await;
    };

    // Drain: everything produced is acknowledged and confirmed, then told
    // to the server, before we go.
    side.abort();
    drop(publisher);
    let drained = match tokio::time::timeout(Duration::from_secs(30), acker_task).await {
        Ok(Ok(r)) => r,
        Ok(Err(e)) => Err(CaptureError::Task(e.to_string())),
        Err(_) => Err(CaptureError::Delivery(
            "acknowledgements did not arrive within 30 s of shutdown".into(),
        )),
    };
    if result.is_ok() {
        let _ = stream.send_feedback().await;
    }
    let _ = stream.stop().await;
    tracing::info!(confirmed = %format_lsn(confirmed.load(Ordering::SeqCst)), "capture stopped");
    result.and(drained)
}

/// START_REPLICATION's refusal because another process took the slot
/// between our preflight and now reads as the preflight's own error.
fn start_error(slot: &str, e: ReplicationError) -> CaptureError {
    let text = e.to_string();
    if text.contains("55006") {
        let pid = text
            .split("is active for PID ")
            .nth(1)
            .and_then(|rest| rest.split(|c: char| !c.is_ascii_digit()).next())
            .and_then(|n| n.parse().ok())
            .unwrap_or(0);
        return CaptureError::SlotActive {
            slot: slot.to_string(),
            pid,
        };
    }
    CaptureError::Replication(text)
}

async fn slot_lsn(sql: &tokio_postgres::Client, slot: &str) -> Result<u64, CaptureError> {
    let row = sql
        .query_one(
            "SELECT confirmed_flush_lsn::text FROM pg_replication_slots WHERE slot_name = $1",
            &[&slot],
        )
        .await
        .map_err(PgError::query("reading the slot position"))?;
    let s: Option<String> = row.get(0);
    Ok(s.as_deref().and_then(preflight::parse_lsn).unwrap_or(0))
}

#[allow(clippy::too_many_arguments)]
async fn handle(
    ev: EventType,
    lsn: u64,
    txn: &mut Txn,
    mapping: &Mapping,
    dp: &Depersonalizer,
    publisher: &mut Publisher,
    skip_before: &HashMap<String, u64>,
    heartbeat_prefix: &str,
) -> Result<(), CaptureError> {
    let (tm, op, new, old) = match ev {
        EventType::Begin {
            transaction_id,
            final_lsn,
            commit_timestamp,
        } => {
            *txn = Txn {
                xid: transaction_id as i64,
                commit_lsn: final_lsn.value(),
                commit_time_micros: commit_timestamp.timestamp_micros(),
                heartbeat: false,
            };
            return Ok(());
        }
        EventType::Commit {
            commit_timestamp,
            end_lsn,
            ..
        } => {
            let t = commit_timestamp.timestamp_micros();
            // One span per journal transaction (capture's batch), with its
            // source positions; FmtSpan::CLOSE logs it at debug level.
            let span = tracing::debug_span!(
                "capture_txn",
                xid = txn.xid,
                commit_lsn = %format_lsn(txn.commit_lsn),
                end_lsn = %format_lsn(end_lsn.value()),
                heartbeat = txn.heartbeat
            );
            return async {
                if txn.heartbeat {
                    publisher.watermarks(txn.commit_lsn, t).await?;
                }
                publisher.commit(end_lsn.value(), t).await
            }
            .instrument(span)
            .await;
        }
        EventType::Message { prefix, .. } => {
            if &*prefix == heartbeat_prefix {
                txn.heartbeat = true;
            }
            return Ok(());
        }
        EventType::Insert {
            schema,
            table,
            data,
            ..
        } => (
            mapping.table_of(&schema, &table),
            Op::Create,
            Some(data),
            None,
        ),
        EventType::Update {
            schema,
            table,
            new_data,
            old_data,
            ..
        } => (
            mapping.table_of(&schema, &table),
            Op::Update,
            Some(new_data),
            old_data,
        ),
        EventType::Delete {
            schema,
            table,
            old_data,
            ..
        } => (
            mapping.table_of(&schema, &table),
            Op::Delete,
            None,
            Some(old_data),
        ),
        EventType::Truncate { tables, .. } => {
            for t in tables {
                let Some(tm) = mapping.table(&t) else {
                    continue;
                };
                if skip_before
                    .get(tm.table.as_str())
                    .is_some_and(|l| txn.commit_lsn < *l)
                {
                    continue;
                }
                let e = Event {
                    event_id: events::change_event_id(txn.commit_lsn, lsn, &tm.table),
                    entity: tm.entity,
                    op: Op::Truncate,
                    key: "*".into(),
                    source: source(txn, lsn, &tm.table),
                    actor: None,
                    quality: vec![],
                    after: None,
                };
                publisher.send_to_all_partitions(&e).await?;
            }
            return Ok(());
        }
        _ => return Ok(()),
    };
    let Some(tm) = tm else {
        return Ok(()); // not a mapped table
    };
    if skip_before
        .get(tm.table.as_str())
        .is_some_and(|l| txn.commit_lsn < *l)
    {
        return Ok(()); // already in the resumed snapshot of this table
    }
    let dead = |reason: String, kind: &'static str| DeadLetter {
        reason,
        kind,
        table: tm.table.clone(),
        entity: Some(tm.entity.name),
        op: op.symbol(),
        lsn: format_lsn(lsn),
        commit_lsn: format_lsn(txn.commit_lsn),
        txid: txn.xid,
        commit_time_micros: txn.commit_time_micros,
        capture: publisher.slot.clone(),
    };
    let event_id = events::change_event_id(txn.commit_lsn, lsn, &tm.table);
    match (new, old) {
        (Some(row), _) => match tm.map_row(&WalRow(&row), dp) {
            Ok(m) => {
                let e = Event {
                    event_id,
                    entity: tm.entity,
                    op,
                    key: m.key,
                    source: source(txn, lsn, &tm.table),
                    actor: m.actor,
                    quality: m.quality,
                    after: Some(m.after),
                };
                publisher.send_event(&e, &m.partition_key).await
            }
            Err(u) => publisher.dead_letter(dead(u.0, "unmappable")).await,
        },
        (None, Some(old)) => match tm.key_of(&WalRow(&old)) {
            Ok(key) => {
                let pk = tm.partition_key_of_old(&WalRow(&old), &key);
                let e = Event {
                    event_id,
                    entity: tm.entity,
                    op,
                    key,
                    source: source(txn, lsn, &tm.table),
                    actor: None,
                    quality: vec![],
                    after: None,
                };
                publisher.send_event(&e, &pk).await
            }
            Err(u) => publisher.dead_letter(dead(u.0, "unmappable")).await,
        },
        (None, None) => Ok(()),
    }
}

fn source(txn: &Txn, lsn: u64, table: &str) -> Source {
    Source {
        lsn,
        commit_lsn: txn.commit_lsn,
        txid: txn.xid,
        commit_time_micros: txn.commit_time_micros,
        table: table.to_string(),
        snapshot: false,
    }
}

/// Heartbeats through the slot, and slot metrics.
async fn side_tasks(
    pg_cfg: tokio_postgres::Config,
    slot: String,
    interval: Duration,
    last_commit_time: Arc<AtomicI64>,
    cancel: CancellationToken,
) {
    let prefix = format!("vitrina.heartbeat.{slot}");
    let mut client = None;
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last_metrics = Instant::now() - Duration::from_secs(60);
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tick.tick() => {}
        }
        if client.is_none() {
            client = pg::connect(&pg_cfg).await.ok();
        }
        let Some(c) = &client else { continue };
        if let Err(e) = c
            .execute("SELECT pg_logical_emit_message(true, $1, '')", &[&prefix])
            .await
        {
            tracing::warn!(error = %pg::describe_error(&e), "heartbeat failed");
            metrics::counter!(obs::CAPTURE_ERRORS, "kind" => "heartbeat").increment(1);
            client = None;
            continue;
        }
        if last_metrics.elapsed() >= interval.min(Duration::from_secs(5)) {
            last_metrics = Instant::now();
            if let Ok(Some(r)) = c
                .query_opt(
                    "SELECT (pg_current_wal_lsn() - confirmed_flush_lsn)::float8, (pg_current_wal_lsn() - restart_lsn)::float8
                     FROM pg_replication_slots WHERE slot_name = $1",
                    &[&slot],
                )
                .await
            {
                metrics::gauge!(obs::CAPTURE_LAG_BYTES).set(r.get::<_, Option<f64>>(0).unwrap_or(0.0));
                metrics::gauge!(obs::CAPTURE_SLOT_RETAINED_BYTES).set(r.get::<_, Option<f64>>(1).unwrap_or(0.0));
            }
            let age = (chrono::Utc::now().timestamp_micros()
                - last_commit_time.load(Ordering::SeqCst)) as f64
                / 1e6;
            metrics::gauge!(obs::CAPTURE_LAG_SECONDS).set(age.max(0.0));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_slot_taken_between_preflight_and_start_reads_as_slot_active() {
        let e = ReplicationError::TransientConnection(
            "[55006] START_REPLICATION did not enter COPY mode: ERROR: replication slot \"s1\" is active for PID 7017 (SQLSTATE 55006)".into(),
        );
        match start_error("s1", e) {
            CaptureError::SlotActive { slot, pid } => {
                assert_eq!((slot.as_str(), pid), ("s1", 7017))
            }
            other => panic!("{other}"),
        }
        let other = ReplicationError::TransientConnection("connection reset".into());
        assert!(matches!(
            start_error("s1", other),
            CaptureError::Replication(_)
        ));
    }
}

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
//!
//! Layout: [`preflight`] (checks before touching anything), [`initial_load`]
//! and [`snapshot`] (the first load and its resumption), [`stream`] (WAL
//! messages → events), [`publisher`] (Kafka and the acker), [`heartbeat`]
//! (the slot advances on a quiet journal), [`mapping`] (rows → events).
//! - Heartbeats: every `heartbeat_interval_ms` a transactional logical
//!   message goes through the slot; when it arrives, a watermark is written
//!   to every partition of every topic, and its commit is confirmed, so the
//!   slot advances on a quiet journal.

pub mod acks;
pub mod gate;
pub mod heartbeat;
pub mod initial_load;
pub mod load_state;
pub mod mapping;
pub mod preflight;
pub mod publisher;
pub mod resnapshot;
pub mod snapshot;
pub mod stream;

use std::collections::HashMap;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use pg_walstream::{
    LogicalReplicationStream, ReplicationError, ReplicationSlotOptions, ReplicationStreamConfig,
};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::config::{Config, Hashing};
use crate::connections::{KafkaEndpoint, PgEndpoint};
use crate::error::{Classify, ErrorKind};
use crate::events::codec::Registry;
use crate::events::ENTITIES;
use crate::http::Health;
use crate::kafka;
use crate::lsn;
use crate::observability as obs;
use crate::pg::{self, PgError};
use crate::privacy::{Depersonalizer, Mode};
use mapping::Mapping;
use publisher::Ack;
pub use publisher::{Confirmed, DeadLetter, Progress, Publisher, Spent};

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
    #[error("mapped table {table} {problem}\nhint: {hint}")]
    ReplicaIdentity {
        table: String,
        problem: String,
        hint: String,
    },
    #[error("publication `{publication}` publishes the partitions of {tables:?}, not the tables themselves, and no mapping names a partition\nhint: ALTER PUBLICATION {publication} SET (publish_via_partition_root = true);")]
    PublicationPartitions {
        publication: String,
        tables: Vec<String>,
    },
    #[error("replication slot `{slot}` is active in process {pid}; another capture is running against this database\nhint: stop the other capture, or give this one another capture.slot")]
    SlotActive { slot: String, pid: i32 },
    #[error("replication slot `{0}` was invalidated (its WAL exceeded max_slot_wal_keep_size); changes since its position are gone\nhint: set capture.recover_lost_slot = true and start capture again: it drops the slot, makes a new one and re-snapshots every mapped table while streaming (docs/operations.md, \"A lost slot\")")]
    SlotInvalidated(String),
    #[error("replication slot `{0}` is gone (dropped, or not on this primary after a failover) while the load state says its initial load finished; changes since its last position are not in the log\nhint: set capture.recover_lost_slot = true and start capture again: it makes a new slot and re-snapshots every mapped table while streaming (docs/operations.md, \"A lost slot\")")]
    SlotLost(String),
    #[error("replication slot `{slot}` uses plugin `{plugin}` in database `{database}`; capture needs a pgoutput slot in the journal database\nhint: choose another capture.slot")]
    SlotForeign {
        slot: String,
        plugin: String,
        database: String,
    },
    #[error("replication slot `{slot}` published its events with kafka.partitioner = \"{wrote}\"; with \"{wanted}\" a key's next events would land on other partitions than its earlier ones, and consumers that read a key's partition in order would miss or misorder them\nhint: keep kafka.partitioner = \"{wrote}\" for these topics, or move to \"{wanted}\" on new topics: a new capture.topic_prefix and capture.slot (a full initial load into them), `vitrina replay --restart --new-log`, then delete the old topics, the restricted one first (docs/operations.md, \"Changing the partitioner\")")]
    PartitionerChanged {
        slot: String,
        wrote: String,
        wanted: String,
    },
    #[error("the restricted topic {topic} has {now} partitions; its records were published over {was}: a key's next record would land on another partition than its earlier ones, and its tombstone would no longer erase them (compaction works within a partition)\nhint: Kafka cannot take partitions away: give the restricted topic back its {was} partitions (delete and re-create it with --partitions {was}, then restart capture: a new initial load fills it), or move to new topics (a new capture.topic_prefix and capture.slot); docs/operations.md, \"Adding partitions\"")]
    RestrictedPartitions { topic: String, was: i32, now: i32 },
    #[error(transparent)]
    Connections(#[from] crate::connections::ConnectionError),
    #[error("replication stream failed: {0}")]
    Replication(#[source] ReplicationError),
    #[error("{0}")]
    NoSnapshot(&'static str),
    #[error("Kafka did not acknowledge an event: {message}\nhint: nothing after the last confirmed LSN is lost; capture resumes from it on restart")]
    Delivery { message: String, kind: ErrorKind },
    #[error("{0}\nhint: fix or remove that record (see the runbook, \"The initial load's state\"); capture changed nothing")]
    LoadState(String),
    #[error("replication slot `{slot}` exists but no record of its initial load was found ({store}, nor the file of earlier releases); streaming it as if loaded could skip the load for good (a broker that lost its event log loses this record with it)\nhint: docs/operations.md, \"The event log was lost\": drop the slot (SELECT pg_drop_replication_slot('{slot}')) and start capture again: it makes a new initial load, and `vitrina replay --restart --new-log` rebuilds the showcase from it")]
    LoadStateMissing { slot: String, store: String },
    #[error("capture task failed: {0}")]
    Task(String),
    /// A re-snapshot request that cannot run (its message says why).
    #[error("{0}")]
    Request(String),
}

impl CaptureError {
    pub(crate) fn delivery(e: &rdkafka::error::KafkaError) -> CaptureError {
        CaptureError::Delivery {
            message: e.to_string(),
            kind: crate::error::kafka_kind(e),
        }
    }
}

impl Classify for CaptureError {
    fn kind(&self) -> ErrorKind {
        use CaptureError as E;
        match self {
            E::Pg(e) => e.kind(),
            E::Kafka(e) => e.kind(),
            // pg_walstream sorts its own errors; a dropped or refused
            // replication connection (a server restarting) is transient.
            E::Replication(e) if e.is_permanent() => ErrorKind::Definite,
            E::Replication(_) => ErrorKind::Transient,
            E::Delivery { kind, .. } => *kind,
            E::Mapping(_)
            | E::WalLevel(_)
            | E::Privilege { .. }
            | E::MissingTable(_)
            | E::PublicationMissing { .. }
            | E::ReplicaIdentity { .. }
            | E::PublicationPartitions { .. }
            | E::SlotActive { .. }
            | E::SlotInvalidated(_)
            | E::SlotLost(_)
            | E::SlotForeign { .. }
            | E::PartitionerChanged { .. }
            | E::RestrictedPartitions { .. }
            | E::Connections(_)
            | E::NoSnapshot(_)
            | E::LoadState(_)
            | E::LoadStateMissing { .. }
            | E::Task(_)
            | E::Request(_) => ErrorKind::Definite,
        }
    }
}

/// How often capture reports to the server while Kafka holds it back.
const KEEPALIVE_WHILE_BLOCKED: Duration = Duration::from_secs(2);

/// Held back by Kafka this long, capture reports itself not ready.
const WAITING_NOT_READY: Duration = Duration::from_secs(10);

/// How often an idle capture confirms the server's sent position.
const IDLE_TICK: Duration = Duration::from_secs(1);

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

/// One capture: a journal, its slot and publication, a Kafka cluster.
pub struct Capture {
    cfg: Config,
    journal: PgEndpoint,
    kafka: KafkaEndpoint,
    health: Arc<Health>,
    progress: Arc<Progress>,
}

impl Capture {
    pub fn new(cfg: &Config, journal: &PgEndpoint, kafka: &KafkaEndpoint) -> Capture {
        Capture {
            cfg: cfg.clone(),
            journal: journal.clone(),
            kafka: kafka.clone(),
            health: Arc::new(Health::new(Duration::from_secs(120))),
            progress: Arc::new(Progress::default()),
        }
    }

    /// Liveness and readiness of this capture (`/healthz`, `/readyz`).
    pub fn health(&self) -> Arc<Health> {
        self.health.clone()
    }

    /// What it has confirmed so far; survives restarts of [`Capture::run`].
    pub fn progress(&self) -> Arc<Progress> {
        self.progress.clone()
    }

    /// Runs capture until `cancel` fires or an error stops it.
    pub async fn run(&self, cancel: CancellationToken) -> Result<(), CaptureError> {
        // Alive while the initial load runs (no streaming loop turns yet);
        // once streaming, the loop's own turns are the liveness signal.
        let alive = {
            let (cancel, health) = (cancel.clone(), self.health.clone());
            tokio::spawn(async move {
                while !cancel.is_cancelled() && !health.is_ready() {
                    health.beat();
                    tokio::time::sleep(Duration::from_secs(5)).await;
                }
            })
        };
        // A broker that refuses this client (certificate, credentials) is
        // a definite error: retrying would only repeat it.
        let r = tokio::select! {
            r = self.run_inner(cancel) => r,
            e = kafka::refused() => Err(e.into()),
        };
        alive.abort();
        self.health.not_ready(match &r {
            Ok(()) => "capture stopped".to_string(),
            Err(e) => format!(
                "capture failed: {}",
                e.to_string().lines().next().unwrap_or("")
            ),
        });
        r
    }

    async fn run_inner(&self, cancel: CancellationToken) -> Result<(), CaptureError> {
        let c = &self.cfg.capture;
        let Started {
            mapping,
            dp,
            sql,
            load_state,
            slot_state,
            slot_lost,
            mut stream,
            mut publisher,
            mut acker_task,
            last_commit_time,
        } = self.start().await?;
        let cfg = &self.cfg;
        // The names and consents from the journal, and (for a slot that
        // exists) the load's progress from Kafka, read at the same time.
        let gate_client = pg::connect(&self.journal.config()).await?;
        let (gate, stored) = tokio::join!(
            gate::Gate::open(gate_client, &mapping, c.scrub_free_text),
            // For an absent slot too: a slot lost or dropped leaves the
            // record of what its topics were written with.
            load_state.read()
        );
        let (mut gate, stored) = (gate?, stored?);
        gate.progress = Some(self.progress.clone());

        // The initial load, at the slot's exported snapshot, before streaming.
        let loader = initial_load::Loader {
            cfg,
            journal: &self.journal,
            sql: &sql,
            tables: &mapping.tables,
            dp: &dp,
            progress: &self.progress,
            store: &load_state,
            slot_lost,
        };
        let state = loader
            .run(&slot_state, stored, &mut stream, &mut publisher, &mut gate)
            .await?;
        let skip_before = state.table_lsn.clone();
        // Re-snapshots recorded (a lost slot's, or requested and not
        // finished) and those requested while streaming.
        let jobs = state.resnapshots.clone();
        let shared = Arc::new(resnapshot::Shared {
            state: tokio::sync::Mutex::new(state),
            store: load_state.clone(),
        });
        let (resnap, channels) = resnapshot::Resnapshots::new(&c.slot, shared.clone(), &jobs);

        stream
            .start(None)
            .await
            .map_err(|e| stream::start_error(&c.slot, e))?;
        tracing::info!(slot = %c.slot, publication = %c.publication, "streaming");
        self.progress
            .streaming_since_micros
            .store(chrono::Utc::now().timestamp_micros(), Ordering::SeqCst);
        self.health.ready();

        // Heartbeats and slot metrics on their own connection.
        let side = tokio::spawn(heartbeat::run(
            self.journal.config(),
            c.slot.clone(),
            Duration::from_millis(c.heartbeat_interval_ms),
            last_commit_time,
            cancel.clone(),
        ));
        let reader = tokio::spawn(
            resnapshot::Reader {
                journal: self.journal.clone(),
                tables: mapping.tables.clone(),
                history_years: c.history_years,
                chunk_rows: c.resnapshot_chunk_rows,
                rows_per_second: c.resnapshot_rows_per_second,
                slot: c.slot.clone(),
                shared,
            }
            .run(channels),
        );
        let mut streamer = stream::Streamer::new(
            mapping,
            dp,
            publisher,
            skip_before,
            heartbeat::prefix(&c.slot),
            gate,
            resnap,
        );
        let (result, acker_ended) = self
            .stream(&mut stream, &mut streamer, &mut acker_task, &cancel)
            .await;
        // Drain: everything produced is acknowledged and confirmed, then told
        // to the server, before we go. A re-snapshot goes on from its last
        // chunk at the next start.
        side.abort();
        reader.abort();
        // Gone before this run ends: none of its saves follows the next
        // run's.
        let _ = reader.await;
        drop(streamer.into_publisher());
        let drained = if acker_ended {
            Ok(())
        } else {
            match tokio::time::timeout(Duration::from_secs(30), acker_task).await {
                Ok(Ok(r)) => r,
                Ok(Err(e)) => Err(CaptureError::Task(e.to_string())),
                Err(_) => Err(CaptureError::Delivery {
                    message: "acknowledgements did not arrive within 30 s of shutdown".into(),
                    kind: ErrorKind::Transient,
                }),
            }
        };
        if result.is_ok() {
            send_feedback(&mut stream).await;
        }
        if let Err(e) = stream.stop().await {
            metrics::counter!(obs::CAPTURE_ERRORS, "kind" => "replication").increment(1);
            tracing::warn!(error = %e, "stopping the replication stream failed; the server ends it when the connection closes");
        }
        tracing::info!(confirmed = %lsn::format(self.progress.confirmed.load(Ordering::SeqCst)), "capture stopped");
        match (result, drained) {
            // Handling found the acker gone: its own error says why.
            (Err(CaptureError::Task(_)), Err(cause)) => Err(cause),
            (result, drained) => result.and(drained),
        }
    }

    /// Everything before the stream: the mapping and the journal checked,
    /// topics made, the producer and its acker, the replication stream
    /// opened (not started).
    async fn start(&self) -> Result<Started, CaptureError> {
        let (cfg, c) = (&self.cfg, &self.cfg.capture);
        let mapping = Mapping::load(c.mapping_file.as_deref())?;
        // Dead-letter series exist from the start, at 0, so that increase()
        // and alerts see the first one.
        for t in &mapping.tables {
            for kind in ["unmappable", "encode", "oversize"] {
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
        })
        .with_forms(c.hash_forms);
        let sql = pg::connect(&self.journal.config()).await?;
        let (slot_state, _missing) =
            preflight::check(&sql, &mapping, &c.slot, &c.publication).await?;
        let (slot_state, slot_lost) = match slot_state {
            preflight::SlotState::Invalidated if c.recover_lost_slot => {
                drop_invalidated(&sql, &c.slot).await?;
                (preflight::SlotState::Absent, "invalidated")
            }
            preflight::SlotState::Invalidated => {
                return Err(CaptureError::SlotInvalidated(c.slot.clone()))
            }
            s => (s, "absent"),
        };

        let topics = topics(&mapping, &c.topic_prefix);
        // Provisioning's client reports a refused client (a TLS handshake,
        // SASL credentials: a definite stop) while it describes the topics.
        // The producer comes after the topics exist (made before them, it
        // was seen to deliver its first messages seconds late).
        kafka::provision(&self.kafka, &topic_needs(&mapping, cfg)).await?;
        // Capture's records are numbered and acknowledged by delivery
        // report (super::acks); the load state waits for its own records.
        let tracker = acks::Tracker::new(self.progress.clone());
        let settings = kafka::producer_config(
            &self.kafka,
            c.linger_ms,
            &c.compression,
            c.max_message_bytes,
        );
        let producer: acks::SeqProducer = kafka::create(
            &self.kafka,
            &settings,
            acks::SeqContext {
                tracker: tracker.clone(),
            },
        )?;
        // The load state's records need no idempotence: one record in
        // flight at a time keeps them in order, a retried duplicate is the
        // same state, and an idempotent producer's first delivery waits for
        // its producer id (about 0.5-1.2 s measured), which the state read
        // at every start would wait for.
        let state_producer: kafka::Producer = kafka::create(
            &self.kafka,
            settings
                .clone()
                .set("enable.idempotence", "false")
                .set("max.in.flight.requests.per.connection", "1"),
            kafka::Context,
        )?;
        let load_state = load_state::LoadStateStore::new(
            &self.kafka,
            &state_producer,
            &c.topic_prefix,
            &c.slot,
            cfg.state_dir
                .join("capture")
                .join(format!("{}.json", c.slot)),
        );
        let (partitions, counts) = partition_counts(&self.kafka, &topics).await?;

        // Confirmed positions reach the server within a heartbeat or a second.
        let rcfg = stream_config(&c.slot, &c.publication, false)
            .with_feedback_interval(Duration::from_millis(c.heartbeat_interval_ms.min(1000)));
        let stream =
            LogicalReplicationStream::new(&self.journal.replication_url("vitrina-capture"), rcfg)
                .await
                .map_err(CaptureError::Replication)?;

        let (tx, rx) = mpsc::channel::<Ack>(c.max_in_flight);
        let last_commit_time = Arc::new(AtomicI64::new(chrono::Utc::now().timestamp_micros()));
        let acker_task = tokio::spawn(publisher::acker(
            rx,
            tracker.clone(),
            stream.shared_lsn_feedback.clone(),
            last_commit_time.clone(),
            self.progress.clone(),
        ));
        let publisher = Publisher {
            producer,
            tracker,
            max_in_flight: c.max_in_flight as u64,
            registry: Registry::new(),
            acks: tx,
            prefix: c.topic_prefix.clone(),
            slot: c.slot.clone(),
            topics: ENTITIES
                .iter()
                .map(|e| (e.name, kafka::topic(&c.topic_prefix, e.name)))
                .collect(),
            partitions,
            counts,
            partitioner: kafka::Partitioner::of(&cfg.kafka.partitioner)
                .expect("kafka.partitioner is validated"),
            detail_topic: kafka::detail_topic(&c.topic_prefix),
            last_commit: 0,
            max_message_bytes: c.max_message_bytes,
            held: None,
            sent: Default::default(),
            buf: Vec::new(),
        };
        Ok(Started {
            mapping,
            dp,
            sql,
            load_state: Arc::new(load_state),
            slot_state,
            slot_lost,
            stream,
            publisher,
            acker_task,
            last_commit_time,
        })
    }

    /// Streams changes until cancelled or failed: the result, and whether
    /// the acker ended (its end is the loop's error, not to be awaited again).
    async fn stream(
        &self,
        stream: &mut LogicalReplicationStream,
        streamer: &mut stream::Streamer,
        acker_task: &mut tokio::task::JoinHandle<Result<(), CaptureError>>,
        cancel: &CancellationToken,
    ) -> (Result<(), CaptureError>, bool) {
        // A tick wakes the loop every second even when the server sends only
        // keepalives (pg_walstream's cancellation is safe mid-stream): when
        // idle, capture confirms what the server says it has sent, so a
        // walsender waiting for that at shutdown lets the server stop.
        let tick_slot = Arc::new(std::sync::Mutex::new(cancel.child_token()));
        let ticker = {
            let slot = tick_slot.clone();
            tokio::spawn(async move {
                loop {
                    tokio::time::sleep(IDLE_TICK).await;
                    slot.lock().unwrap().cancel();
                }
            })
        };
        let mut tick = tick_slot.lock().unwrap().clone();
        // A consent flush's answer from the journal wakes the loop to land it.
        streamer.gate.wake = Some({
            let slot = tick_slot.clone();
            Arc::new(move || slot.lock().unwrap().cancel())
        });
        // Consent changes waiting for their flip wake the loop within
        // FLIP_WAIT even when the stream brings nothing more.
        let mut flip_wake: Option<tokio::task::JoinHandle<()>> = None;
        // The acker's end breaks the loop with its error; the drain must not
        // wait for it again.
        let mut acker_ended = false;
        let result: Result<(), CaptureError> = loop {
            // Heartbeat messages keep this loop turning on an idle journal.
            self.health.beat();
            let spent = &self.progress.spent;
            let reading = std::time::Instant::now();
            let ev = tokio::select! {
                r = stream.next_event(&tick) => r,
                a = &mut *acker_task => {
                    acker_ended = true;
                    break match a {
                        Ok(Ok(())) => Err(CaptureError::Task("the acker stopped".into())),
                        Ok(Err(e)) => Err(e),
                        Err(e) => Err(CaptureError::Task(e.to_string())),
                    };
                }
            };
            Spent::add(&spent.reading_micros, reading);
            // An event to handle, or None: the flips that wait are due.
            let ev = match ev {
                Ok(ev) => {
                    spent.handled_lsn.store(ev.lsn.value(), Ordering::Relaxed);
                    Some((ev.event_type, ev.lsn.value()))
                }
                Err(ReplicationError::Cancelled(_)) if cancel.is_cancelled() => {
                    // What was received is published and confirmed in the drain
                    // (a broker that cannot take it leaves it for the next start).
                    break match tokio::time::timeout(SHUTDOWN_FLUSH, streamer.flush_flips()).await {
                        Ok(r) => r,
                        Err(_) => Err(CaptureError::Delivery {
                            message: format!("consent changes waiting for their flip were not flushed within {} s of shutdown; they are not confirmed and are read again at the next start", SHUTDOWN_FLUSH.as_secs()),
                            kind: ErrorKind::Transient,
                        }),
                    };
                }
                Err(ReplicationError::Cancelled(_)) => {
                    tick = cancel.child_token();
                    *tick_slot.lock().unwrap() = tick.clone();
                    flip_wake = None;
                    if streamer.idle(&self.progress) {
                        let sent = stream.current_lsn();
                        if sent > self.progress.confirmed.load(Ordering::SeqCst) {
                            stream.shared_lsn_feedback.update_flushed_lsn(sent);
                            stream.shared_lsn_feedback.update_applied_lsn(sent);
                            self.progress.confirmed.fetch_max(sent, Ordering::SeqCst);
                            send_feedback(stream).await;
                        }
                    }
                    if !streamer.gate.has_pending() {
                        continue;
                    }
                    None
                }
                Err(e) => {
                    metrics::counter!(obs::CAPTURE_ERRORS, "kind" => "replication").increment(1);
                    break Err(CaptureError::Replication(e));
                }
            };
            // Handling waits when Kafka is behind (at most max_in_flight
            // unacknowledged): meanwhile capture keeps telling the server it
            // is alive, so a long broker outage never reaches
            // wal_sender_timeout. The timer is set only when handling waits.
            let handling = std::time::Instant::now();
            let r = self
                .keeping_alive(stream, streamer.handle_or_flush(ev))
                .await;
            Spent::add(&spent.handling_micros, handling);
            if let Err(e) = r {
                break Err(e);
            }
            if streamer.gate.has_pending() && flip_wake.as_ref().is_none_or(|w| w.is_finished()) {
                let slot = tick_slot.clone();
                flip_wake = Some(tokio::spawn(async move {
                    tokio::time::sleep(gate::FLIP_WAIT).await;
                    slot.lock().unwrap().cancel();
                }));
            }
            // pg_walstream looks at its feedback timer only every 128 frames:
            // on a quiet journal (a heartbeat is 3 frames) the confirmed
            // position would reach the server minutes late and the slot would
            // hold WAL meanwhile. Checking after every event costs a clock read.
            stream.maybe_send_feedback().await;
        };
        ticker.abort();
        if let Some(w) = flip_wake {
            w.abort();
        }
        (result, acker_ended)
    }

    /// Awaits `handling`, which waits when Kafka is behind (at most
    /// max_in_flight unacknowledged): meanwhile capture keeps telling the
    /// server it is alive, so a long broker outage never reaches
    /// wal_sender_timeout. The timer is set only when handling waits.
    async fn keeping_alive(
        &self,
        stream: &mut LogicalReplicationStream,
        handling: impl std::future::Future<Output = Result<(), CaptureError>>,
    ) -> Result<(), CaptureError> {
        let mut handled = std::pin::pin!(handling);
        if let std::task::Poll::Ready(r) = futures::poll!(handled.as_mut()) {
            return r;
        }
        let since = std::time::Instant::now();
        let r = loop {
            tokio::select! {
                r = handled.as_mut() => break r,
                _ = tokio::time::sleep(KEEPALIVE_WHILE_BLOCKED) => {
                    self.health.beat();
                    send_feedback(stream).await;
                    if since.elapsed() >= WAITING_NOT_READY {
                        self.health.not_ready(format!(
                            "waiting for Kafka to acknowledge events for {} s (capture.max_in_flight reached)",
                            since.elapsed().as_secs()
                        ));
                    }
                }
            }
        };
        if since.elapsed() >= WAITING_NOT_READY {
            self.health.ready();
        }
        r
    }
}

/// What [`Capture::start`] opens.
struct Started {
    mapping: Mapping,
    dp: Depersonalizer,
    sql: tokio_postgres::Client,
    load_state: Arc<load_state::LoadStateStore>,
    slot_state: preflight::SlotState,
    /// Why the slot would be missing: "absent", or "invalidated" (dropped
    /// by capture at start).
    slot_lost: &'static str,
    stream: LogicalReplicationStream,
    publisher: Publisher,
    acker_task: tokio::task::JoinHandle<Result<(), CaptureError>>,
    last_commit_time: Arc<AtomicI64>,
}

/// Drops an invalidated slot (its WAL is gone; nothing can stream from
/// it), so that capture makes a new one and recovers.
async fn drop_invalidated(sql: &tokio_postgres::Client, slot: &str) -> Result<(), CaptureError> {
    sql.execute("SELECT pg_drop_replication_slot($1)", &[&slot])
        .await
        .map_err(pg::PgError::query(format!(
            "dropping the invalidated replication slot {slot}"
        )))?;
    metrics::counter!(obs::CAPTURE_SLOT_RECOVERIES, "reason" => "invalidated").increment(1);
    tracing::warn!(slot = %slot, "replication slot was invalidated (max_slot_wal_keep_size): dropped; capture makes a new one and re-snapshots every mapped table while streaming");
    Ok(())
}

/// How long the shutdown waits for consent changes to be flushed.
const SHUTDOWN_FLUSH: Duration = Duration::from_secs(30);

/// Tells the server the confirmed position now. A failure is counted and
/// logged: the next feedback (within a second) carries the same position.
async fn send_feedback(stream: &mut LogicalReplicationStream) {
    if let Err(e) = stream.send_feedback().await {
        metrics::counter!(obs::CAPTURE_ERRORS, "kind" => "feedback").increment(1);
        tracing::warn!(error = %e, "sending the confirmed position to the server failed; the next feedback carries it");
    }
}

/// The topics capture needs: those it publishes to ([`topics`]) with
/// `capture.partitions`, and its load state (one partition, compacted).
pub fn topic_needs(mapping: &Mapping, cfg: &Config) -> Vec<kafka::Need> {
    let c = &cfg.capture;
    let mut needs = kafka::needs(&topics(mapping, &c.topic_prefix), c.partitions);
    needs.push(kafka::Need::topic(
        kafka::capture_state_topic(&c.topic_prefix),
        1,
    ));
    needs
}

/// The topics a capture with `mapping` publishes to under `prefix`: one
/// per mapped entity, the dead letters and the restricted topic.
pub fn topics(mapping: &Mapping, prefix: &str) -> Vec<String> {
    let mut topics: Vec<String> = mapping
        .tables
        .iter()
        .map(|t| kafka::topic(prefix, t.entity.name))
        .collect();
    topics.sort();
    topics.dedup();
    topics.push(kafka::dead_letter_topic(prefix));
    topics.push(kafka::detail_topic(prefix));
    topics
}

/// Partitions of each topic as the cluster has them, and their counts
/// re-read every 30 s (a topic an operator grew is published to within
/// that time; see [`Publisher::refresh_partitions`]).
async fn partition_counts(
    kafka: &crate::connections::KafkaEndpoint,
    topics: &[String],
) -> Result<
    (
        HashMap<String, i32>,
        tokio::sync::watch::Receiver<HashMap<String, i32>>,
    ),
    CaptureError,
> {
    let ends = kafka::Ends::new(kafka)?;
    let partitions = ends.partitions(topics).await?;
    if let Some(t) = topics.iter().find(|t| !partitions.contains_key(*t)) {
        return Err(kafka::KafkaError::Timeout(format!(
            "topic {t} has no partitions in the cluster's metadata yet"
        ))
        .into());
    }
    let counts = kafka::watch_partitions(
        ends,
        topics.to_vec(),
        partitions.clone(),
        PARTITIONS_REREAD,
        CancellationToken::new(),
    );
    Ok((partitions, counts))
}

/// How often capture re-reads the partition counts of its topics.
const PARTITIONS_REREAD: Duration = Duration::from_secs(30);

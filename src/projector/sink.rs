//! The sink: one apply transaction per batch into one showcase schema,
//! carrying the batch's rows, its consumer offsets and its watermarks.
//!
//! Invariants:
//! - Rows, offsets and watermarks commit together or not at all: a crash
//!   at any point leaves the showcase at a batch boundary, and the source
//!   resumes exactly after it.
//! - Apply is idempotent and order-safe ([`crate::showcase::apply`]), so a
//!   batch applied again changes nothing twice.
//! - With several writers, a batch's rows are split between parallel
//!   transactions that never write the same row; the offsets and
//!   watermarks commit after all of them ([`apply::apply_on`]).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::broadcast;
use tracing::Instrument;

use super::source::Offsets;
use super::{ProjectorError, Tp};
use crate::observability as obs;
use crate::showcase::apply;

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
pub(super) struct Batch {
    pub(super) messages: usize,
    pub(super) events: Vec<crate::events::Event>,
    pub(super) marks: Vec<apply::WatermarkAt>,
    /// Records of the restricted topic, in the order consumed.
    pub(super) details: Vec<apply::DetailChange>,
    /// Next offset per partition after this batch.
    pub(super) next: HashMap<Tp, i64>,
    /// Commit time (µs) of the batch's last record per partition.
    pub(super) times: HashMap<Tp, i64>,
    pub(super) gather: Duration,
}

/// The PostgreSQL side: apply transactions into one schema.
pub(super) struct Sink {
    /// Records offsets and watermarks (and, alone, applies everything).
    pub(super) client: tokio_postgres::Client,
    /// Parallel apply transactions ([`apply::apply_on`]).
    writers: Vec<tokio_postgres::Client>,
    bulk: apply::Bulk,
    pub(super) schema: String,
    pub(super) offsets: Offsets,
    /// Journal commit time (µs) of the last record applied per partition.
    pub(super) last_time: HashMap<Tp, i64>,
    /// Commit → visible seconds of the streamed events of each batch, for
    /// those who subscribe.
    visible: broadcast::Sender<Arc<[f64]>>,
}

impl Sink {
    pub(super) fn new(
        client: tokio_postgres::Client,
        writers: Vec<tokio_postgres::Client>,
        schema: &str,
        offsets: Offsets,
    ) -> Sink {
        Sink {
            client,
            writers,
            bulk: apply::Bulk::default(),
            schema: schema.to_string(),
            offsets,
            last_time: HashMap::new(),
            visible: broadcast::channel(1024).0,
        }
    }

    /// Commit → visible seconds of each applied batch's streamed events.
    pub(super) fn subscribe_visible(&self) -> broadcast::Receiver<Arc<[f64]>> {
        self.visible.subscribe()
    }

    /// Applies `b` with its offsets and watermarks in one transaction.
    pub(super) async fn apply(&mut self, b: Batch) -> Result<Step, ProjectorError> {
        // One span per apply batch, with the source positions it covers.
        let lsns = || b.events.iter().map(|e| e.source.commit_lsn);
        let span = tracing::debug_span!(
            "projector_batch",
            schema = %self.schema,
            messages = b.messages,
            events = b.events.len(),
            first_commit_lsn = %crate::lsn::format(lsns().min().unwrap_or(0)),
            last_commit_lsn = %crate::lsn::format(lsns().max().unwrap_or(0)),
        );
        self.apply_in_span(b).instrument(span).await
    }

    async fn apply_in_span(&mut self, b: Batch) -> Result<Step, ProjectorError> {
        let t0 = Instant::now();
        let offs: Vec<(String, i32, i64)> = b
            .next
            .iter()
            .map(|((t, p), o)| (t.clone(), *p, *o))
            .collect();
        let applied = apply::apply_on(
            &mut self.client,
            &mut self.writers,
            &self.schema,
            &b.events,
            &b.details,
            (&offs, &b.marks),
            &mut self.bulk,
        )
        .await?;
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
        let mut seen: Option<Vec<f64>> = (self.visible.receiver_count() > 0).then(Vec::new);
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
            if let Some(s) = seen.as_mut() {
                s.push(lag);
            }
        }
        if let Some(s) = seen {
            let _ = self.visible.send(s.into());
        }
        Ok(step)
    }
}

/// `map[k] = v`, copying the key only when it is new.
pub(super) fn set<V>(map: &mut HashMap<Tp, V>, k: &Tp, v: V) {
    match map.get_mut(k) {
        Some(slot) => *slot = v,
        None => {
            map.insert(k.clone(), v);
        }
    }
}

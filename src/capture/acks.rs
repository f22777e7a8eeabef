//! Acknowledgement by sequence number: what the acker confirms is decided
//! by counting, not by a future per record.
//!
//! ```text
//!   publisher: record n ──produce(opaque = n, tag)──▶ librdkafka
//!                                                        │ delivery report (its polling thread)
//!   Tracker: acknowledged n ◀───────────────────────────┘
//!            low = the first n not yet acknowledged (every n below it is)
//!   acker: Commit(end_lsn, upto) waits until low ≥ upto, then confirms end_lsn
//! ```
//!
//! Invariants:
//! - `low` only grows, and only past numbers whose records Kafka
//!   acknowledged: reports arrive in order within a partition but not
//!   across partitions, so a window of the numbers in flight says which are
//!   done, and `low` moves over a contiguous run of them.
//! - A failed delivery is final for this process: the tracker keeps the
//!   first error, `low` never passes the failed number, and every waiter
//!   and the next produce return that error (capture restarts and reads
//!   the stream again from the last confirmed position).
//! - The window holds at most `capture.max_in_flight` numbers: the
//!   publisher waits for room before producing more.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use rdkafka::client::ClientContext;
use rdkafka::config::RDKafkaLogLevel;
use rdkafka::producer::{DeliveryResult, ProducerContext};
use tokio::sync::Notify;

use super::publisher::Progress;
use super::CaptureError;
use crate::events::{Entity, Op, ENTITIES};
use crate::observability as obs;

/// The producer capture publishes through.
pub type SeqProducer = rdkafka::producer::ThreadedProducer<SeqContext>;

/// What a record is, for the counters its acknowledgement moves: 0 for a
/// record that is not an event (detail, tombstone, dead letter, watermark),
/// else 1 + its entity's place × 5 + its operation.
pub(super) type Tag = u8;

pub(super) const OTHER: Tag = 0;

const OPS: usize = Op::SYMBOLS.len();

/// The tag of an event of `entity` with `op`.
pub(super) fn event_tag(entity: &'static Entity, op: Op) -> Tag {
    let i = ENTITIES
        .iter()
        .position(|e| std::ptr::eq(e, entity))
        .or_else(|| ENTITIES.iter().position(|e| e.name == entity.name))
        .unwrap_or(0);
    (1 + i * OPS + op as usize) as Tag
}

/// Sequence number and tag in one opaque word, as librdkafka hands it back.
pub(super) fn opaque(seq: u64, tag: Tag) -> usize {
    ((seq as usize) << 8) | tag as usize
}

/// Who waits for `low` to reach a number.
#[derive(Default)]
struct Waiter {
    /// The number waited for; u64::MAX when nobody waits.
    want: AtomicU64,
    notify: Notify,
}

impl Waiter {
    fn new() -> Waiter {
        Waiter {
            want: AtomicU64::new(u64::MAX),
            notify: Notify::new(),
        }
    }

    fn wake_if(&self, low: u64) {
        if low >= self.want.load(Ordering::SeqCst) {
            self.notify.notify_one();
        }
    }
}

/// The numbers in flight: `done[i]` says whether `low + i` is acknowledged.
#[derive(Default)]
struct Window {
    low: u64,
    done: VecDeque<bool>,
}

impl Window {
    /// Marks `seq` acknowledged; the new `low` when it moved.
    fn ack(&mut self, seq: u64) -> Option<u64> {
        let Some(i) = seq.checked_sub(self.low).map(|i| i as usize) else {
            return None; // reported twice: already below low
        };
        if i >= self.done.len() {
            self.done.resize(i + 1, false);
        }
        self.done[i] = true;
        if i != 0 {
            return None;
        }
        while self.done.front() == Some(&true) {
            self.done.pop_front();
            self.low += 1;
        }
        Some(self.low)
    }
}

/// Shared by the publisher (numbers records, waits for room), the
/// producer's delivery reports (mark numbers done) and the acker (waits
/// for a commit's records).
pub struct Tracker {
    /// The number the next record gets (the publisher's, one writer).
    next: AtomicU64,
    low: AtomicU64,
    window: Mutex<Window>,
    failed: AtomicBool,
    error: Mutex<Option<(String, crate::error::ErrorKind)>>,
    acker: Waiter,
    room: Waiter,
    /// Events acknowledged, per tag; handles made on first use.
    counters: Vec<OnceLock<metrics::Counter>>,
    progress: Arc<Progress>,
}

impl Tracker {
    pub(super) fn new(progress: Arc<Progress>) -> Arc<Tracker> {
        Arc::new(Tracker {
            next: AtomicU64::new(0),
            low: AtomicU64::new(0),
            window: Mutex::new(Window::default()),
            failed: AtomicBool::new(false),
            error: Mutex::new(None),
            acker: Waiter::new(),
            room: Waiter::new(),
            counters: (0..=ENTITIES.len() * OPS)
                .map(|_| OnceLock::new())
                .collect(),
            progress,
        })
    }

    /// The first number not yet acknowledged.
    pub(super) fn low(&self) -> u64 {
        self.low.load(Ordering::SeqCst)
    }

    /// The number the next record gets: every record below it is produced.
    pub(super) fn produced(&self) -> u64 {
        self.next.load(Ordering::Relaxed)
    }

    /// Record `seq` was handed to the producer.
    pub(super) fn sent(&self, seq: u64) {
        self.next.store(seq + 1, Ordering::Relaxed);
    }

    /// Records produced and not yet acknowledged.
    pub(super) fn in_flight(&self) -> u64 {
        self.produced().saturating_sub(self.low())
    }

    /// The first failed delivery, if any.
    pub(super) fn check(&self) -> Result<(), CaptureError> {
        if !self.failed.load(Ordering::SeqCst) {
            return Ok(());
        }
        let e = self.error.lock().unwrap_or_else(|p| p.into_inner());
        let (message, kind) = e
            .clone()
            .unwrap_or_else(|| ("delivery failed".into(), crate::error::ErrorKind::Transient));
        Err(CaptureError::Delivery { message, kind })
    }

    /// Waits until every record numbered below `upto` is acknowledged (the
    /// acker, for a commit or a mark).
    pub(super) async fn acknowledged(&self, upto: u64) -> Result<(), CaptureError> {
        self.wait(upto, &self.acker).await
    }

    /// Waits until `upto` is acknowledged, for room in the window (the
    /// publisher, at `capture.max_in_flight`).
    pub(super) async fn room(&self, upto: u64) -> Result<(), CaptureError> {
        self.wait(upto, &self.room).await
    }

    async fn wait(&self, upto: u64, w: &Waiter) -> Result<(), CaptureError> {
        loop {
            self.check()?;
            if self.low() >= upto {
                w.want.store(u64::MAX, Ordering::SeqCst);
                return Ok(());
            }
            let notified = w.notify.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            w.want.store(upto, Ordering::SeqCst);
            if self.low() >= upto || self.failed.load(Ordering::SeqCst) {
                continue;
            }
            notified.await;
        }
    }

    /// A delivery report: record `seq` acknowledged, or failed with `error`.
    fn report(&self, seq: u64, tag: Tag, error: Option<&rdkafka::error::KafkaError>) {
        if let Some(e) = error {
            let mut first = self.error.lock().unwrap_or_else(|p| p.into_inner());
            if first.is_none() {
                *first = Some((e.to_string(), crate::error::kafka_kind(e)));
            }
            self.failed.store(true, Ordering::SeqCst);
            drop(first);
            self.acker.notify.notify_one();
            self.room.notify.notify_one();
            return;
        }
        let moved = self
            .window
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .ack(seq);
        if let Some(low) = moved {
            self.low.store(low, Ordering::SeqCst);
            self.acker.wake_if(low);
            self.room.wake_if(low);
        }
        if tag != OTHER {
            self.count(tag);
        }
    }

    fn count(&self, tag: Tag) {
        let i = tag as usize - 1;
        let Some(slot) = self.counters.get(tag as usize) else {
            return;
        };
        let (entity, op) = (&ENTITIES[i / OPS], Op::SYMBOLS[i % OPS]);
        slot.get_or_init(
            || metrics::counter!(obs::CAPTURE_EVENTS, "entity" => entity.name, "op" => op),
        )
        .increment(1);
        self.progress.events.fetch_add(1, Ordering::Relaxed);
    }
}

/// The producer's context: librdkafka's log and client errors as every
/// vitrina client has them ([`crate::kafka::Context`]), and delivery
/// reports to the [`Tracker`].
pub struct SeqContext {
    pub(super) tracker: Arc<Tracker>,
}

impl ClientContext for SeqContext {
    fn log(&self, level: RDKafkaLogLevel, fac: &str, message: &str) {
        crate::kafka::log_line(level, fac, message);
    }

    fn error(&self, error: rdkafka::error::KafkaError, reason: &str) {
        crate::kafka::client_error(&error, reason);
    }
}

impl ProducerContext for SeqContext {
    type DeliveryOpaque = usize;

    fn delivery(&self, result: &DeliveryResult<'_>, opaque: usize) {
        let (seq, tag) = ((opaque >> 8) as u64, (opaque & 0xff) as Tag);
        self.tracker
            .report(seq, tag, result.as_ref().err().map(|(e, _)| e));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn low_moves_only_over_a_contiguous_run_of_acknowledged_numbers() {
        let mut w = Window::default();
        assert_eq!(w.ack(2), None);
        assert_eq!(w.ack(1), None);
        assert_eq!(w.ack(0), Some(3));
        assert_eq!(w.ack(4), None);
        assert_eq!(w.ack(3), Some(5));
        assert!(w.done.is_empty());
        assert_eq!(w.ack(1), None, "a number below low changes nothing");
        assert_eq!(w.low, 5);
    }

    #[test]
    fn tags_and_numbers_come_back_from_the_opaque_word() {
        let e = &ENTITIES[ENTITIES.len() - 1];
        let tag = event_tag(e, Op::Truncate);
        let (seq, back) = (1u64 << 40, opaque(1 << 40, tag));
        assert_eq!(((back >> 8) as u64, (back & 0xff) as Tag), (seq, tag));
        let i = tag as usize - 1;
        assert_eq!(ENTITIES[i / OPS].name, e.name);
        assert_eq!(Op::SYMBOLS[i % OPS], "TRUNCATE");
    }

    #[tokio::test]
    async fn a_waiter_wakes_when_its_number_is_acknowledged_and_a_failure_wakes_everyone() {
        let t = Tracker::new(Arc::new(Progress::default()));
        let waiting = {
            let t = t.clone();
            tokio::spawn(async move { t.acknowledged(3).await })
        };
        tokio::task::yield_now().await;
        t.report(1, OTHER, None);
        t.report(0, OTHER, None);
        assert!(!waiting.is_finished());
        t.report(2, OTHER, None);
        waiting.await.unwrap().unwrap();
        let blocked = {
            let t = t.clone();
            tokio::spawn(async move { t.room(10).await })
        };
        tokio::task::yield_now().await;
        let e = rdkafka::error::KafkaError::MessageProduction(
            rdkafka::types::RDKafkaErrorCode::MessageTimedOut,
        );
        t.report(3, OTHER, Some(&e));
        assert!(blocked.await.unwrap().is_err());
        assert_eq!(t.low(), 3, "low never passes a failed number");
        assert!(t.check().is_err());
    }
}

//! Heartbeats: every `capture.heartbeat_interval_ms` a transactional
//! logical message goes through the slot. When the stream sees it, a
//! watermark goes to every partition of every topic and its commit is
//! confirmed, so the slot advances and consumers know how fresh they are
//! even on a quiet journal. The same connection reads the slot's lag and
//! retained WAL for the metrics.
//!
//! Invariants:
//! - A failed heartbeat is counted and retried on a new connection at the
//!   next tick; it never stops capture.

use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

use crate::observability as obs;
use crate::pg;

/// The logical message prefix of `slot`'s heartbeats.
pub fn prefix(slot: &str) -> String {
    format!("vitrina.heartbeat.{slot}")
}

/// Heartbeats through the slot, and slot metrics.
pub(super) async fn run(
    pg_cfg: crate::pg::Target,
    slot: String,
    interval: Duration,
    last_commit_time: Arc<AtomicI64>,
    cancel: CancellationToken,
) {
    let prefix = prefix(&slot);
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

//! Benchmarks that print figures against a reference measured in the same
//! run on the same machine: [`capture`] (`vitrina bench capture`) and
//! [`projector`] (`vitrina bench projector`). Development tools: they create
//! slots, publications and databases, and write synthetic changes, so they
//! run only against the local stack or a journal named on the command line.

mod big_txn;
pub mod capture;
pub mod projector;
mod report;

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

use crate::capture::{Capture, CaptureError, Progress};
use crate::config::Config;
use crate::connections::Connections;

pub use capture::{capture, CaptureBench, Knobs};
pub use projector::{projector, ProjectorBench, ProjectorKnobs};

#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    #[error("{0}")]
    Failed(String),
}

pub(crate) fn fail(e: impl std::fmt::Display) -> BenchError {
    BenchError::Failed(e.to_string())
}

pub(crate) fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

pub(crate) fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i]
}

/// `cfg` with capture on its own slot, publication and topic prefix.
pub(crate) fn capture_config(
    cfg: &Config,
    slot: &str,
    publication: &str,
    topic_prefix: &str,
    snapshot: bool,
    heartbeat_interval_ms: u64,
) -> Config {
    let mut c = cfg.clone();
    c.capture.slot = slot.to_string();
    c.capture.publication = publication.to_string();
    c.capture.topic_prefix = topic_prefix.to_string();
    c.capture.snapshot = snapshot;
    c.capture.heartbeat_interval_ms = heartbeat_interval_ms;
    c
}

type CaptureTask = tokio::task::JoinHandle<Result<(), CaptureError>>;

/// Capture in this process until `cancel`, and its progress.
pub(crate) fn spawn_capture(
    cfg: &Config,
    conns: &Connections,
    cancel: &CancellationToken,
) -> Result<(CaptureTask, Arc<Progress>), BenchError> {
    let capture = Capture::new(
        cfg,
        conns.journal().map_err(fail)?,
        conns.kafka().map_err(fail)?,
    );
    let progress = capture.progress();
    let cancel = cancel.clone();
    Ok((
        tokio::spawn(async move { capture.run(cancel).await }),
        progress,
    ))
}

/// Seconds capture takes from start until everything up to `end` is
/// acknowledged by Kafka and confirmed, and the part of them it streamed
/// (after start-up: preflight, topics, load state, names).
pub(crate) async fn timed_capture(
    cfg: &Config,
    conns: &Connections,
    end: u64,
) -> Result<(f64, f64), BenchError> {
    // Capture starts on topics that exist, as every start after a
    // region's first does: their creation is not part of the timing.
    let c = &cfg.capture;
    let mapping =
        crate::capture::mapping::Mapping::load(c.mapping_file.as_deref()).map_err(fail)?;
    let kafka = conns.kafka().map_err(fail)?;
    let topics = crate::capture::topics(&mapping, &c.topic_prefix);
    let state_topic = crate::kafka::capture_state_topic(&c.topic_prefix);
    crate::kafka::ensure_capture_topics(
        kafka,
        &topics,
        &state_topic,
        c.partitions,
        c.replication_factor,
    )
    .await
    .map_err(fail)?;
    let cancel = CancellationToken::new();
    let t0 = Instant::now();
    let (task, probe) = spawn_capture(cfg, conns, &cancel)?;
    loop {
        if probe.confirmed.load(Ordering::SeqCst) >= end {
            break;
        }
        if task.is_finished() {
            let r = task.await.map_err(fail)?;
            return Err(fail(format!("capture stopped early: {r:?}")));
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let secs = t0.elapsed().as_secs_f64();
    let since = probe.streaming_since_micros.load(Ordering::SeqCst);
    let streamed = (chrono::Utc::now().timestamp_micros() - since) as f64 / 1e6;
    cancel.cancel();
    let _ = task.await;
    Ok((secs, streamed.min(secs)))
}

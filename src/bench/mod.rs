//! Benchmarks that print figures against a reference measured in the same
//! run on the same machine: [`capture`] (`vitrina bench capture`) and
//! [`projector`] (`vitrina bench projector`). Development tools: they create
//! slots, publications and databases, and write synthetic changes, so they
//! run only against the local stack or a journal named on the command line.

mod big_txn;
pub mod capture;
pub mod cpu;
pub mod projector;
pub mod region;
mod report;

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

use crate::capture::{Capture, CaptureError, Progress};
use crate::config::Config;
use crate::connections::Connections;

pub use capture::{capture, CaptureBench, Knobs};
pub use cpu::CpuSplit;
pub use projector::{projector, ProjectorBench, ProjectorKnobs};
pub use region::{region, RegionBench, RegionKnobs};

#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    #[error("{0}")]
    Failed(String),
}

pub(crate) fn fail(e: impl std::fmt::Display) -> BenchError {
    BenchError::Failed(e.to_string())
}

/// The median; NaN for no values (a stage not run, e.g. `--replays 0`).
pub(crate) fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let n = v.len();
    if n == 0 {
        f64::NAN
    } else if n % 2 == 1 {
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

/// Capture from a new slot until its initial load is acknowledged by
/// Kafka: rows loaded and seconds.
pub(crate) async fn load_through_capture(
    c: &Config,
    conns: &crate::connections::Connections,
) -> Result<(u64, f64), BenchError> {
    let cancel = CancellationToken::new();
    let t0 = Instant::now();
    let (task, probe) = spawn_capture(c, conns, &cancel)?;
    while probe.loaded_rows.load(Ordering::SeqCst) == 0 {
        if task.is_finished() {
            let r = task.await.map_err(fail)?;
            return Err(fail(format!(
                "capture stopped during the initial load: {r:?}"
            )));
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let secs = t0.elapsed().as_secs_f64();
    let loaded = probe.loaded_rows.load(Ordering::SeqCst);
    cancel.cancel();
    let _ = task.await;
    Ok((loaded, secs))
}

impl Timed {
    /// Capture's own CPU per record published, in µs, from the start of
    /// streaming (every record is published while streaming).
    pub fn own_us_per_record(&self) -> f64 {
        self.streaming_own_s * 1e6 / self.records as f64
    }
}

/// One timed capture run (see [`timed_capture`]).
#[derive(Debug, Clone, Copy, Default, serde::Serialize)]
pub struct Timed {
    /// From start until everything up to the range's end is acknowledged
    /// by Kafka and confirmed.
    pub secs: f64,
    /// Of them, from the start of streaming (after start-up: preflight,
    /// topics, load state, names).
    pub streaming_s: f64,
    /// CPU seconds the processes of the bench's roots used meanwhile.
    pub cpu: cpu::CpuSplit,
    /// The stream loop's own account (see [`crate::capture::Spent`]):
    /// waiting for messages, handling them, and of that the consent
    /// flushes and their queries.
    pub reading_s: f64,
    pub handling_s: f64,
    pub flush_s: f64,
    pub flush_query_s: f64,
    pub flushes: u64,
    pub flush_records: u64,
    /// Records Kafka acknowledged (events, restricted-topic records, dead
    /// letters): what capture's own CPU is divided by.
    pub records: u64,
    /// CPU seconds of this process from the start of streaming (start-up
    /// left out: preflight, topics, names, load state).
    pub streaming_own_s: f64,
    /// From the range's last message handled until it was confirmed:
    /// the wait for Kafka's acknowledgements (and a last flush).
    pub tail_s: f64,
}

/// Capture on `cfg` from start until everything up to `end` is
/// acknowledged and confirmed, timed.
pub(crate) async fn timed_capture(
    cfg: &Config,
    conns: &Connections,
    end: u64,
    roots: &cpu::Roots,
) -> Result<Timed, BenchError> {
    // Capture starts on topics that exist, as every start after a
    // region's first does: their creation is not part of the timing.
    let c = &cfg.capture;
    let mapping =
        crate::capture::mapping::Mapping::load(c.mapping_file.as_deref()).map_err(fail)?;
    let kafka = conns.kafka().map_err(fail)?;
    crate::kafka::provision(kafka, &crate::capture::topic_needs(&mapping, cfg))
        .await
        .map_err(fail)?;
    let cancel = CancellationToken::new();
    let cpu0 = roots.now();
    let t0 = Instant::now();
    let (task, probe) = spawn_capture(cfg, conns, &cancel)?;
    let mut handled_end: Option<Instant> = None;
    let mut streaming_cpu0: Option<cpu::CpuSplit> = None;
    loop {
        if streaming_cpu0.is_none() && probe.streaming_since_micros.load(Ordering::SeqCst) != 0 {
            streaming_cpu0 = Some(roots.now());
        }
        if handled_end.is_none() && probe.spent.handled_lsn.load(Ordering::Relaxed) >= end {
            handled_end = Some(Instant::now());
        }
        if probe.confirmed.load(Ordering::SeqCst) >= end {
            break;
        }
        if task.is_finished() {
            let r = task.await.map_err(fail)?;
            return Err(fail(format!("capture stopped early: {r:?}")));
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let done = Instant::now();
    let secs = t0.elapsed().as_secs_f64();
    let used = roots.since(&cpu0);
    let streaming_own_s =
        streaming_cpu0.map_or(used.own_s, |c| used.own_s - (c.own_s - cpu0.own_s));
    let since = probe.streaming_since_micros.load(Ordering::SeqCst);
    let streamed = (chrono::Utc::now().timestamp_micros() - since) as f64 / 1e6;
    let sp = &probe.spent;
    let s = |c: &std::sync::atomic::AtomicU64| c.load(Ordering::Relaxed) as f64 / 1e6;
    let timed = Timed {
        secs,
        streaming_s: streamed.min(secs),
        cpu: used,
        reading_s: s(&sp.reading_micros),
        handling_s: s(&sp.handling_micros),
        flush_s: s(&sp.flush_micros),
        flush_query_s: s(&sp.flush_query_micros),
        flushes: sp.flushes.load(Ordering::Relaxed),
        flush_records: sp.flush_records.load(Ordering::Relaxed),
        records: probe.records.load(Ordering::Relaxed),
        streaming_own_s,
        tail_s: handled_end.map_or(0.0, |t| (done - t).as_secs_f64()),
    };
    cancel.cancel();
    let _ = task.await;
    Ok(timed)
}

/// The names of the topics the broker holds.
pub(crate) async fn broker_topics(
    kafka: &crate::connections::KafkaEndpoint,
) -> Result<Vec<String>, BenchError> {
    use rdkafka::consumer::{BaseConsumer, Consumer};
    let k = kafka.clone();
    tokio::task::spawn_blocking(move || {
        let c: BaseConsumer = k.client_config().create().map_err(fail)?;
        let md = c
            .fetch_metadata(None, Duration::from_secs(10))
            .map_err(fail)?;
        Ok::<_, BenchError>(md.topics().iter().map(|t| t.name().to_string()).collect())
    })
    .await
    .map_err(fail)?
}

/// Deletes the topics of this bench's runs (names starting `prefix`): a
/// bench leaves the broker as it found it, so the next one measures the
/// same stack. A broker that refuses is reported, not fatal.
pub(crate) async fn delete_own_topics(kafka: &crate::connections::KafkaEndpoint, prefix: &str) {
    let own: Vec<String> = match broker_topics(kafka).await {
        Ok(all) => all.into_iter().filter(|t| t.starts_with(prefix)).collect(),
        Err(e) => {
            eprintln!("bench: could not list the broker's topics to delete this bench's: {e}");
            return;
        }
    };
    match crate::kafka::delete_topics(kafka, &own).await {
        Ok(left) if left.is_empty() => {
            eprintln!("bench: deleted this bench's {} topics", own.len())
        }
        Ok(left) => eprintln!(
            "bench: the broker kept {} of this bench's {} topics, e.g. {} ({}); delete them by hand",
            left.len(),
            own.len(),
            left[0].0,
            left[0].1
        ),
        Err(e) => eprintln!("bench: deleting this bench's topics: {e}"),
    }
}

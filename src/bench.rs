//! `vitrina bench capture`: capture's figures, each against a reference
//! measured in the same run on the same machine.
//!
//! - Throughput: the live workload writes a WAL range while nobody reads;
//!   then, run after run, `pg_recvlogical` (pgoutput, to /dev/null) and
//!   capture (WAL → Kafka acknowledged) each read the whole range from a slot
//!   of their own created before the workload. Medians and their ratio.
//! - Latency: capture streams while the workload runs at a steady rate;
//!   commit → Kafka-acknowledged latency per transaction, p50/p99.
//! - Initial load: capture's load of the region (slot created, snapshot
//!   copied, every row acknowledged by Kafka) against reading the same rows
//!   with the same COPY statements and parallelism, bytes discarded.
//! - A large transaction (a September mass enrolment of N students: 2N row
//!   changes in one transaction): capture runs as a child process, and its
//!   peak RSS (VmHWM) is read when the whole transaction is confirmed.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use tokio_util::sync::CancellationToken;

use crate::capture::{self, Probe};
use crate::config::{Config, WorkloadConfig};
use crate::pg;
use crate::region::workload;
use crate::stack::{Endpoints, Stack};

#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    #[error("{0}")]
    Failed(String),
}

fn fail(e: impl std::fmt::Display) -> BenchError {
    BenchError::Failed(e.to_string())
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct CaptureBench {
    pub wal_bytes: i64,
    pub changes: u64,
    pub runs: Vec<(f64, f64)>,
    pub recvlogical_median_s: f64,
    pub capture_median_s: f64,
    pub throughput_ratio: f64,
    pub capture_changes_per_s: f64,
    pub latency_rate_target: u32,
    pub latency_rate_achieved: f64,
    pub latency_transactions: usize,
    pub latency_p50_ms: f64,
    pub latency_p99_ms: f64,
    pub latency_max_ms: f64,
    pub load: Option<LoadFigures>,
    pub big_txn: Option<BigTxnFigures>,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct LoadFigures {
    pub rows: u64,
    /// (COPY reference s, capture s) per run.
    pub runs: Vec<(f64, f64)>,
    pub copy_median_s: f64,
    pub capture_median_s: f64,
    pub capture_rows_per_s: f64,
    pub ratio: f64,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct BigTxnFigures {
    pub students: u32,
    pub row_changes: u64,
    pub commit_s: f64,
    /// From the commit until capture confirmed the transaction's end.
    pub confirm_s: f64,
    pub idle_rss_mb: f64,
    pub peak_rss_mb: f64,
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i]
}

pub struct Knobs {
    pub runs: u32,
    pub seconds: u64,
    pub rate: u32,
    pub latency_rate: u32,
    pub latency_seconds: u64,
    /// Initial-load runs (0 skips the phase).
    pub load_runs: u32,
    /// Students in the large-transaction phase (0 skips it).
    pub big_txn_students: u32,
    /// The config file, for the capture child of the large-transaction phase.
    pub config_file: Option<std::path::PathBuf>,
}

pub async fn capture(cfg: &Config, knobs: &Knobs) -> Result<CaptureBench, BenchError> {
    let stack = Stack::new(cfg).map_err(fail)?;
    let ep = stack.endpoints().map_err(fail)?;
    let db = cfg.postgres.journal_database.clone();
    let sql = pg::connect(&ep.pg_config(&db)).await.map_err(fail)?;
    let tag = format!("bench{}", std::process::id());
    let publication = tag.clone();

    // One publication, and 2 × runs slots at the same position.
    let mapping =
        capture::mapping::Mapping::load(cfg.capture.mapping_file.as_deref()).map_err(fail)?;
    let tables: Vec<String> = mapping.tables.iter().map(|t| t.table.clone()).collect();
    sql.batch_execute(&format!(
        "CREATE PUBLICATION {publication} FOR TABLE {}",
        tables.join(", ")
    ))
    .await
    .map_err(fail)?;
    let load = if knobs.load_runs > 0 {
        Some(initial_load(cfg, &ep, &mapping, &tag, knobs.load_runs).await?)
    } else {
        None
    };
    for r in 0..knobs.runs {
        for kind in ["recv", "cap"] {
            sql.execute(
                "SELECT pg_create_logical_replication_slot($1, 'pgoutput')",
                &[&format!("{tag}_{kind}_{r}")],
            )
            .await
            .map_err(fail)?;
        }
    }
    let start_lsn: String = sql
        .query_one("SELECT pg_current_wal_lsn()::text", &[])
        .await
        .map_err(fail)?
        .get(0);
    eprintln!(
        "bench: workload {} s at {} changes/s writes the WAL range",
        knobs.seconds, knobs.rate
    );
    let w = WorkloadConfig {
        rate: knobs.rate,
        duration_s: knobs.seconds,
        sessions: 8,
        mass_enrolment: 0,
        seed: 11,
    };
    let report = workload::run(&ep.pg_config(&db), &w, false)
        .await
        .map_err(fail)?;
    // A marker that ends the range for both readers.
    let end_lsn: String = sql
        .query_one(
            "SELECT pg_logical_emit_message(true, 'vitrina.bench.end', '')::text",
            &[],
        )
        .await
        .map_err(fail)?
        .get(0);
    let end = capture::preflight::parse_lsn(&end_lsn).unwrap_or(0);
    let wal_bytes: i64 = sql
        .query_one(
            "SELECT pg_wal_lsn_diff($1::text::pg_lsn, $2::text::pg_lsn)::int8",
            &[&end_lsn, &start_lsn],
        )
        .await
        .map_err(fail)?
        .get(0);
    eprintln!(
        "bench: {} changes, {:.1} MB of WAL",
        report.changes,
        wal_bytes as f64 / 1e6
    );

    let bin = stack
        .postgres()
        .map_err(fail)?
        .bin_dir
        .join("pg_recvlogical");
    let mut runs = Vec::new();
    for r in 0..knobs.runs {
        let t0 = Instant::now();
        let status = tokio::process::Command::new(&bin)
            .args([
                "-h",
                &ep.pg_host,
                "-p",
                &ep.pg_port.to_string(),
                "-U",
                &ep.pg_user,
                "-d",
                &db,
            ])
            .args([
                "--slot",
                &format!("{tag}_recv_{r}"),
                "--start",
                "-E",
                &end_lsn,
            ])
            .args([
                "-o",
                "proto_version=1",
                "-o",
                &format!("publication_names={publication}"),
            ])
            .args(["-f", "/dev/null"])
            .status()
            .await
            .map_err(fail)?;
        if !status.success() {
            return Err(fail(format!("pg_recvlogical failed: {status}")));
        }
        let reference = t0.elapsed().as_secs_f64();

        let c = capture_config(
            cfg,
            &format!("{tag}_cap_{r}"),
            &publication,
            &format!("{tag}-{r}"),
            false,
            3_600_000,
        );
        let secs = timed_capture(&c, &ep, end).await?;
        eprintln!(
            "bench: run {}: pg_recvlogical {reference:.3} s, capture {secs:.3} s",
            r + 1
        );
        runs.push((reference, secs));
    }
    for r in 0..knobs.runs {
        for kind in ["recv", "cap"] {
            let _ = sql
                .execute(
                    "SELECT pg_drop_replication_slot($1)",
                    &[&format!("{tag}_{kind}_{r}")],
                )
                .await;
        }
    }

    // Latency at a steady rate, capture streaming and caught up.
    let c = capture_config(
        cfg,
        &format!("{tag}_lat"),
        &publication,
        &format!("{tag}-lat"),
        false,
        5000,
    );
    let probe = Arc::new(Probe::default());
    let cancel = CancellationToken::new();
    let task = spawn_capture(&c, &ep, &cancel, &probe);
    // Wait until it streams.
    let deadline = Instant::now() + Duration::from_secs(60);
    while probe.confirmed.load(Ordering::SeqCst) == 0 {
        if Instant::now() > deadline || task.is_finished() {
            return Err(fail("capture did not start streaming for the latency run"));
        }
        let _ = sql
            .execute(
                "SELECT pg_logical_emit_message(true, 'vitrina.bench.warmup', '')",
                &[],
            )
            .await;
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    probe.record.store(true, Ordering::SeqCst);
    eprintln!(
        "bench: latency at {} changes/s for {} s",
        knobs.latency_rate, knobs.latency_seconds
    );
    let w = WorkloadConfig {
        rate: knobs.latency_rate,
        duration_s: knobs.latency_seconds,
        sessions: 8,
        mass_enrolment: 0,
        seed: 12,
    };
    let lat_report = workload::run(&ep.pg_config(&db), &w, false)
        .await
        .map_err(fail)?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    probe.record.store(false, Ordering::SeqCst);
    cancel.cancel();
    let _ = task.await;
    let _ = sql
        .execute("SELECT pg_drop_replication_slot($1)", &[&c.capture.slot])
        .await;
    let mut lat = probe.latencies.lock().unwrap().clone();
    lat.sort_by(|a, b| a.partial_cmp(b).unwrap());

    let big_txn = if knobs.big_txn_students > 0 {
        Some(big_transaction(cfg, &ep, &tag, knobs).await?)
    } else {
        None
    };
    let _ = sql
        .batch_execute(&format!("DROP PUBLICATION {publication}"))
        .await;

    let mut refs: Vec<f64> = runs.iter().map(|r| r.0).collect();
    let mut caps: Vec<f64> = runs.iter().map(|r| r.1).collect();
    let (mr, mc) = (median(&mut refs), median(&mut caps));
    Ok(CaptureBench {
        wal_bytes,
        changes: report.changes,
        runs,
        recvlogical_median_s: mr,
        capture_median_s: mc,
        throughput_ratio: mr / mc,
        capture_changes_per_s: report.changes as f64 / mc,
        latency_rate_target: knobs.latency_rate,
        latency_rate_achieved: lat_report.changes_per_second,
        latency_transactions: lat.len(),
        latency_p50_ms: percentile(&lat, 0.5) * 1000.0,
        latency_p99_ms: percentile(&lat, 0.99) * 1000.0,
        latency_max_ms: lat.last().copied().unwrap_or(f64::NAN) * 1000.0,
        load,
        big_txn,
    })
}

/// Run after run: the mapped tables read with capture's own COPY statements
/// on as many connections (the reference), then capture's initial load from
/// a new slot until every row is acknowledged by Kafka.
async fn initial_load(
    cfg: &Config,
    ep: &Endpoints,
    mapping: &capture::mapping::Mapping,
    tag: &str,
    runs: u32,
) -> Result<LoadFigures, BenchError> {
    let db = &cfg.postgres.journal_database;
    let window = capture::snapshot::window_start(
        chrono::Local::now().date_naive(),
        cfg.capture.history_years,
    );
    let statements: Vec<String> = mapping
        .tables
        .iter()
        .map(|t| capture::snapshot::copy_sql(t, window))
        .collect();
    let conns = cfg.capture.snapshot_connections.max(1) as usize;
    let mut figures = Vec::new();
    let mut rows = 0;
    for r in 0..runs {
        let t0 = Instant::now();
        let pg_cfg = ep.pg_config(db);
        let counts: Vec<Result<u64, BenchError>> = futures::stream::iter(statements.clone())
            .map(|stmt| {
                let pg_cfg = pg_cfg.clone();
                async move {
                    use futures::StreamExt;
                    let client = pg::connect(&pg_cfg).await.map_err(fail)?;
                    let stream = client.copy_out(stmt.as_str()).await.map_err(fail)?;
                    futures::pin_mut!(stream);
                    let mut n = 0u64;
                    while let Some(chunk) = stream.next().await {
                        n += chunk.map_err(fail)?.iter().filter(|b| **b == b'\n').count() as u64;
                    }
                    Ok(n)
                }
            })
            .buffer_unordered(conns)
            .collect()
            .await;
        rows = counts.into_iter().sum::<Result<u64, BenchError>>()?;
        let reference = t0.elapsed().as_secs_f64();

        let c = capture_config(
            cfg,
            &format!("{tag}_load_{r}"),
            tag,
            &format!("{tag}-load-{r}"),
            true,
            cfg.capture.heartbeat_interval_ms,
        );
        let probe = Arc::new(Probe::default());
        let cancel = CancellationToken::new();
        let t0 = Instant::now();
        let task = spawn_capture(&c, ep, &cancel, &probe);
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
        let sql = pg::connect(&ep.pg_config(db)).await.map_err(fail)?;
        let _ = sql
            .execute("SELECT pg_drop_replication_slot($1)", &[&c.capture.slot])
            .await;
        let _ = std::fs::remove_file(
            c.state_dir
                .join("capture")
                .join(format!("{}.json", c.capture.slot)),
        );
        eprintln!(
            "bench: load run {}: COPY of {rows} rows {reference:.2} s, capture loaded {loaded} rows in {secs:.2} s ({:.0} rows/s)",
            r + 1,
            loaded as f64 / secs
        );
        figures.push((reference, secs));
    }
    let mut refs: Vec<f64> = figures.iter().map(|r| r.0).collect();
    let mut caps: Vec<f64> = figures.iter().map(|r| r.1).collect();
    let (mr, mc) = (median(&mut refs), median(&mut caps));
    Ok(LoadFigures {
        rows,
        runs: figures,
        copy_median_s: mr,
        capture_median_s: mc,
        capture_rows_per_s: rows as f64 / mc,
        ratio: mr / mc,
    })
}

/// KiB → MB of one line (`VmRSS:`, `VmHWM:`) of /proc/<pid>/status.
fn proc_status_mb(pid: u32, field: &str) -> Option<f64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = text.lines().find(|l| l.starts_with(field))?;
    let kib: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024.0 / 1e6)
}

/// `vitrina capture` as a child streaming from a new slot; one mass
/// enrolment of `students` in a single transaction; the child's peak RSS
/// once the transaction is confirmed. The students and orders it added are
/// deleted afterwards (the slot is gone by then).
async fn big_transaction(
    cfg: &Config,
    ep: &Endpoints,
    tag: &str,
    knobs: &Knobs,
) -> Result<BigTxnFigures, BenchError> {
    let db = &cfg.postgres.journal_database;
    let sql = pg::connect(&ep.pg_config(db)).await.map_err(fail)?;
    let slot = format!("{tag}_big");
    let max_ids: (i64, i64) = {
        let r = sql
            .query_one(
                "SELECT (SELECT coalesce(max(id), 0) FROM journal.students),
                        (SELECT coalesce(max(id), 0) FROM journal.enrolment_orders)",
                &[],
            )
            .await
            .map_err(fail)?;
        (r.get(0), r.get(1))
    };
    let log = cfg.state_dir.join(format!("bench-capture-{tag}.log"));
    let out = std::fs::File::create(&log).map_err(fail)?;
    let mut cmd = tokio::process::Command::new(std::env::current_exe().map_err(fail)?);
    if let Some(f) = &knobs.config_file {
        cmd.arg("--config").arg(f);
    }
    let mut child = cmd
        .arg("capture")
        .env("VITRINA_STATE_DIR", &cfg.state_dir)
        .env("VITRINA_CAPTURE__SLOT", &slot)
        .env("VITRINA_CAPTURE__PUBLICATION", tag)
        .env("VITRINA_CAPTURE__TOPIC_PREFIX", format!("{tag}-big"))
        .env("VITRINA_CAPTURE__SNAPSHOT", "false")
        .env("VITRINA_CAPTURE__METRICS_LISTEN", "127.0.0.1:0")
        .env("VITRINA_LOG", "warn,vitrina=info")
        .stdout(out.try_clone().map_err(fail)?)
        .stderr(out)
        .kill_on_drop(true)
        .spawn()
        .map_err(fail)?;
    let pid = child.id().ok_or_else(|| fail("capture child has no pid"))?;
    // Streaming: the slot exists and its walsender is past the start.
    let slot_now = || async {
        capture::preflight::slot_now(&sql, &slot)
            .await
            .map_err(fail)
            .map(Option::unwrap_or_default)
    };
    let deadline = Instant::now() + Duration::from_secs(120);
    while !slot_now().await?.streaming {
        if Instant::now() > deadline || child.try_wait().map_err(fail)?.is_some() {
            return Err(fail(format!(
                "capture child did not start streaming; see {}",
                log.display()
            )));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let idle = proc_status_mb(pid, "VmRSS:").unwrap_or(f64::NAN);
    eprintln!(
        "bench: mass enrolment of {} students in one transaction (capture idle at {idle:.1} MB RSS)",
        knobs.big_txn_students
    );
    let w = WorkloadConfig {
        rate: 1,
        duration_s: 0,
        sessions: 1,
        mass_enrolment: knobs.big_txn_students,
        seed: 13,
    };
    let t0 = Instant::now();
    let report = workload::run(&ep.pg_config(db), &w, false)
        .await
        .map_err(fail)?;
    let commit_s = t0.elapsed().as_secs_f64();
    let end: String = sql
        .query_one("SELECT pg_current_wal_insert_lsn()::text", &[])
        .await
        .map_err(fail)?
        .get(0);
    let end = capture::preflight::parse_lsn(&end).unwrap_or(u64::MAX);
    let t1 = Instant::now();
    let deadline = Instant::now() + Duration::from_secs(1800);
    while slot_now().await?.confirmed_flush < Some(end) {
        if Instant::now() > deadline || child.try_wait().map_err(fail)?.is_some() {
            return Err(fail(format!(
                "capture child did not confirm the transaction; see {}",
                log.display()
            )));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let confirm_s = t1.elapsed().as_secs_f64();
    let peak = proc_status_mb(pid, "VmHWM:").unwrap_or(f64::NAN);
    let _ = child.kill().await;
    let _ = sql
        .execute("SELECT pg_drop_replication_slot($1)", &[&slot])
        .await;
    let _ = sql
        .execute(
            "DELETE FROM journal.enrolment_orders WHERE id > $1",
            &[&max_ids.1],
        )
        .await;
    let _ = sql
        .execute("DELETE FROM journal.students WHERE id > $1", &[&max_ids.0])
        .await;
    Ok(BigTxnFigures {
        students: knobs.big_txn_students,
        row_changes: report.mass_enrolment_changes,
        commit_s,
        confirm_s,
        idle_rss_mb: idle,
        peak_rss_mb: peak,
    })
}

/// `cfg` with capture on its own slot, publication and topic prefix.
fn capture_config(
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

/// Capture in this process, reporting to `probe`, until `cancel`.
fn spawn_capture(
    cfg: &Config,
    ep: &Endpoints,
    cancel: &CancellationToken,
    probe: &Arc<Probe>,
) -> tokio::task::JoinHandle<Result<(), capture::CaptureError>> {
    let (c, ep, cancel, probe) = (cfg.clone(), ep.clone(), cancel.clone(), probe.clone());
    tokio::spawn(async move { capture::run_probed(&c, &ep, cancel, Some(probe)).await })
}

/// Seconds capture takes from start until everything up to `end` is
/// acknowledged by Kafka and confirmed.
async fn timed_capture(cfg: &Config, ep: &Endpoints, end: u64) -> Result<f64, BenchError> {
    let probe = Arc::new(Probe::default());
    let cancel = CancellationToken::new();
    let t0 = Instant::now();
    let task = spawn_capture(cfg, ep, &cancel, &probe);
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
    cancel.cancel();
    let _ = task.await;
    Ok(secs)
}

/// `vitrina bench projector` figures.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ProjectorBench {
    /// Events of the initial load applied before the latency runs, and how fast.
    pub initial_events: u64,
    pub initial_events_per_s: f64,
    pub rates: Vec<RateRun>,
    /// Highest achieved rate (median over runs) whose median p99 stayed under 10 s.
    pub max_rate_p99_under_10s: Option<u32>,
    /// Replays of the whole log into a fresh shadow: events/s, end to end
    /// (group join, apply, SET LOGGED, checksums) and while applying.
    pub replay_events: u64,
    pub replay_events_per_s: Vec<f64>,
    pub replay_apply_events_per_s: Vec<f64>,
    pub replay_median_events_per_s: f64,
    pub replay_apply_median_events_per_s: f64,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct RateRun {
    pub target: u32,
    /// Achieved changes/s per run.
    pub achieved: Vec<f64>,
    pub p50_ms: Vec<f64>,
    pub p99_ms: Vec<f64>,
    pub median_p50_ms: f64,
    pub median_p99_ms: f64,
}

pub struct ProjectorKnobs {
    pub runs: u32,
    pub seconds: u64,
    pub rates: Vec<u32>,
    pub replays: u32,
}

/// Capture with its initial load and the projector run in this process
/// against the configured journal; the workload runs at each rate while
/// the projector records commit → visible latency per event; then the
/// whole log is replayed into a shadow, several times.
pub async fn projector(cfg: &Config, knobs: &ProjectorKnobs) -> Result<ProjectorBench, BenchError> {
    let ep = Stack::new(cfg).map_err(fail)?.endpoints().map_err(fail)?;
    let db = cfg.postgres.journal_database.clone();
    let sql = pg::connect(&ep.pg_config(&db)).await.map_err(fail)?;
    let tag = format!("benchp{}", std::process::id());
    let mut c = capture_config(cfg, &tag, &tag, &tag, true, 1000);
    c.projector.database = tag.clone();
    pg::ensure_database(&ep.pg_config("postgres"), &tag)
        .await
        .map_err(fail)?;

    let cap_probe = Arc::new(Probe::default());
    let cancel = CancellationToken::new();
    let capture = spawn_capture(&c, &ep, &cancel, &cap_probe);
    while cap_probe.confirmed.load(Ordering::SeqCst) == 0 {
        if capture.is_finished() {
            return Err(fail("capture stopped before streaming"));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let initial = cap_probe.events.load(Ordering::SeqCst);
    eprintln!("bench: capture streaming; {initial} events of the initial load on Kafka");

    let lat: crate::projector::LatencyProbe = Arc::default();
    let (c3, ep3, cancel3, lat3) = (c.clone(), ep.clone(), cancel.clone(), lat.clone());
    let mut projector = tokio::spawn(async move {
        crate::projector::run_probed(&c3, &ep3, &c3.projector.database, cancel3, Some(lat3)).await
    });
    let show = pg::connect(&ep.pg_config(&tag)).await.map_err(fail)?;
    let fresh_after = |t: chrono::DateTime<chrono::Utc>| {
        let (show, projector) = (&show, &projector);
        async move {
            loop {
                let ok = show
                    .query_opt(
                        "SELECT 1 FROM showcase.status WHERE fresh_as_of >= $1",
                        &[&t],
                    )
                    .await
                    .map(|r| r.is_some())
                    .unwrap_or(false);
                if ok {
                    return Ok(());
                }
                if projector.is_finished() {
                    return Err(fail("the projector stopped (its error follows)"));
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    };
    let t0 = Instant::now();
    if let Err(e) = fresh_after(chrono::Utc::now()).await {
        return Err(fail(format!("{e}: {:?}", (&mut projector).await)));
    }
    let initial_s = t0.elapsed().as_secs_f64();
    eprintln!(
        "bench: initial load projected in {initial_s:.1} s ({:.0} events/s)",
        initial as f64 / initial_s
    );

    let mut rates = Vec::new();
    for (i, &rate) in knobs.rates.iter().enumerate() {
        let mut run = RateRun {
            target: rate,
            achieved: vec![],
            p50_ms: vec![],
            p99_ms: vec![],
            median_p50_ms: 0.0,
            median_p99_ms: 0.0,
        };
        for r in 0..knobs.runs {
            lat.lock().unwrap().clear();
            let w = WorkloadConfig {
                rate,
                duration_s: knobs.seconds,
                sessions: 8,
                mass_enrolment: 0,
                seed: 100 + (i as u64) * 10 + r as u64,
            };
            let rep = workload::run(&ep.pg_config(&db), &w, false)
                .await
                .map_err(fail)?;
            if let Err(e) = fresh_after(chrono::Utc::now()).await {
                return Err(fail(format!("{e}: {:?}", (&mut projector).await)));
            }
            let mut l = std::mem::take(&mut *lat.lock().unwrap());
            l.sort_by(|a, b| a.partial_cmp(b).unwrap());
            let (p50, p99) = (percentile(&l, 0.5) * 1e3, percentile(&l, 0.99) * 1e3);
            eprintln!(
                "bench: {rate}/s run {}: achieved {:.0}/s, {} events, commit → visible p50 {p50:.0} ms, p99 {p99:.0} ms",
                r + 1,
                rep.changes_per_second,
                l.len()
            );
            run.achieved.push(rep.changes_per_second);
            run.p50_ms.push(p50);
            run.p99_ms.push(p99);
        }
        run.median_p50_ms = median(&mut run.p50_ms.clone());
        run.median_p99_ms = median(&mut run.p99_ms.clone());
        rates.push(run);
    }
    // The rate reached, not the one asked for: on a small machine the
    // workload, capture, projector and PostgreSQL share the cores.
    let max_rate = rates
        .iter()
        .filter(|r| r.median_p99_ms < 10_000.0)
        .map(|r| median(&mut r.achieved.clone()).round() as u32)
        .max();
    cancel.cancel();
    let _ = capture.await;
    let _ = projector.await;

    let mut replay_eps = Vec::new();
    let mut apply_eps = Vec::new();
    let mut replay_events = 0;
    for r in 0..knobs.replays {
        let opts = crate::projector::replay::Options {
            from: None,
            swap: false,
            restart: true,
        };
        let rep = crate::projector::replay::run(&c, &ep, &tag, &opts, CancellationToken::new())
            .await
            .map_err(fail)?;
        eprintln!(
            "bench: replay {}: {} events in {:.1} s: {:.0} events/s end to end, {:.0} events/s applying",
            r + 1,
            rep.events,
            rep.seconds,
            rep.events_per_s,
            rep.events as f64 / rep.apply_seconds.max(rep.gather_seconds).max(1e-9)
        );
        replay_events = rep.events;
        replay_eps.push(rep.events_per_s);
        apply_eps.push(rep.events as f64 / rep.apply_seconds.max(rep.gather_seconds).max(1e-9));
    }
    let _ = sql
        .execute("SELECT pg_drop_replication_slot($1)", &[&tag])
        .await;
    let _ = sql.batch_execute(&format!("DROP PUBLICATION {tag}")).await;
    Ok(ProjectorBench {
        initial_events: initial,
        initial_events_per_s: initial as f64 / initial_s,
        rates,
        max_rate_p99_under_10s: max_rate,
        replay_events,
        replay_median_events_per_s: median(&mut replay_eps.clone()),
        replay_apply_median_events_per_s: median(&mut apply_eps.clone()),
        replay_events_per_s: replay_eps,
        replay_apply_events_per_s: apply_eps,
    })
}

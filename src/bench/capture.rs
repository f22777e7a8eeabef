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
use std::time::{Duration, Instant};

use futures::StreamExt;
use tokio_util::sync::CancellationToken;

use super::{capture_config, fail, median, percentile, spawn_capture, timed_capture, BenchError};
use crate::capture;
use crate::config::{Config, WorkloadConfig};
use crate::connections::Connections;
use crate::pg;
use crate::region::workload;
use crate::stack::Stack;

#[derive(Debug, Clone, serde::Serialize)]
pub struct CaptureBench {
    /// What the broker held when the bench began: capture's speed on tansu
    /// depends on it (see docs/capture.md), so the figures say.
    pub broker_topics: usize,
    pub broker_partitions: usize,
    /// Sum of the end offsets the broker reports (tansu's can be low).
    pub broker_messages: i64,
    pub wal_bytes: i64,
    pub changes: u64,
    pub runs: Vec<(f64, f64)>,
    pub recvlogical_median_s: f64,
    pub capture_median_s: f64,
    pub throughput_ratio: f64,
    pub capture_changes_per_s: f64,
    /// Of each capture run, the seconds from the start of streaming (after
    /// start-up), their median, and pg_recvlogical's median ÷ it.
    pub streaming_runs: Vec<f64>,
    pub streaming_median_s: f64,
    pub streaming_ratio: f64,
    /// CPU seconds per run of pg_recvlogical (the process itself, the
    /// journal's server), and each capture run's breakdown.
    pub recvlogical_cpu: Vec<super::cpu::CpuSplit>,
    pub capture_timed: Vec<super::Timed>,
    /// Capture without free-text scrubbing over the same range, per run (s),
    /// its median, and scrubbed ÷ unscrubbed time (the cost of scrubbing).
    pub unscrubbed_runs: Vec<f64>,
    pub unscrubbed_median_s: f64,
    pub scrub_cost_ratio: f64,
    pub latency_rate_target: u32,
    pub latency_rate_achieved: f64,
    pub latency_transactions: usize,
    pub latency_p50_ms: f64,
    pub latency_p99_ms: f64,
    pub latency_max_ms: f64,
    pub load: Option<LoadFigures>,
    pub big_txn: Option<BigTxnFigures>,
    /// The same figures over a range written with the steady-state mix.
    pub steady: Option<MixFigures>,
}

/// Throughput over one range of a mix: medians of its runs.
#[derive(Debug, Clone, serde::Serialize)]
pub struct MixFigures {
    pub consent_share: f64,
    pub changes: u64,
    pub wal_bytes: i64,
    pub runs: Vec<(f64, f64)>,
    pub recvlogical_median_s: f64,
    pub capture_median_s: f64,
    pub throughput_ratio: f64,
    pub streaming_ratio: f64,
    pub capture_timed: Vec<super::Timed>,
    /// Commit → ack at the latency rate with this mix.
    pub latency_p50_ms: f64,
    pub latency_p99_ms: f64,
    pub latency_max_ms: f64,
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
    /// Runs over a range of the steady-state mix (0 skips them).
    pub steady_runs: u32,
    /// The config file, for the capture child of the large-transaction phase.
    pub config_file: Option<std::path::PathBuf>,
}

pub async fn capture(cfg: &Config, knobs: &Knobs) -> Result<CaptureBench, BenchError> {
    let stack = Stack::new(cfg).map_err(fail)?;
    let conns = stack.connections().map_err(fail)?;
    let sql = pg::connect(&conns.journal().map_err(fail)?.config())
        .await
        .map_err(fail)?;
    let tag = format!("bench{}", std::process::id());
    let publication = tag.clone();
    let (broker_topics, broker_partitions, broker_messages) =
        broker_holds(conns.kafka().map_err(fail)?).await?;
    eprintln!(
        "bench: the broker holds {broker_topics} topics, {broker_partitions} partitions, {broker_messages} messages by its end offsets"
    );

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
        Some(initial_load(cfg, &conns, &mapping, &tag, knobs.load_runs).await?)
    } else {
        None
    };
    let kinds = ["recv", "cap", "raw"];
    let range = write_range(&sql, &conns, &tag, knobs.runs, knobs, 1.0, &kinds).await?;
    let Range {
        report,
        end_lsn,
        end,
        wal_bytes,
    } = range;

    let journal_pg = stack.postgres().map_err(fail)?;
    let bin = journal_pg.bin_dir.join("pg_recvlogical");
    let roots = cpu_roots(&stack, &journal_pg);
    let (mut recv_cpu, mut cap_timed) = (Vec::new(), Vec::new());
    let mut runs = Vec::new();
    let mut unscrubbed = Vec::new();
    let mut streaming = Vec::new();
    let reader = Reader {
        cfg,
        conns: &conns,
        bin: &bin,
        roots: &roots,
        publication: &publication,
    };
    for r in 0..knobs.runs {
        let run = reader
            .run(
                &format!("{tag}_%_{r}"),
                &format!("{tag}-{r}"),
                &end_lsn,
                end,
                true,
            )
            .await?;
        eprintln!(
            "bench: run {}: pg_recvlogical {:.3} s, capture {:.3} s ({:.3} s streaming), without scrubbing {:.3} s",
            r + 1,
            run.reference,
            run.timed.secs,
            run.timed.streaming_s,
            run.raw
        );
        recv_cpu.push(run.recv_cpu);
        runs.push((run.reference, run.timed.secs));
        streaming.push(run.timed.streaming_s);
        unscrubbed.push(run.raw);
        cap_timed.push(run.timed);
    }
    drop_slots(&sql, &tag, knobs.runs).await;

    let steady = if knobs.steady_runs > 0 {
        Some(
            steady_mix(
                cfg,
                &conns,
                &sql,
                &format!("{tag}s"),
                &publication,
                knobs,
                &bin,
                &roots,
            )
            .await?,
        )
    } else {
        None
    };

    // Latency at a steady rate, capture streaming and caught up.
    let (lat, lat_report) = latency(cfg, &conns, &sql, &tag, &publication, knobs, 1.0).await?;

    let big_txn = if knobs.big_txn_students > 0 {
        Some(super::big_txn::big_transaction(cfg, &conns, &tag, knobs).await?)
    } else {
        None
    };
    let _ = sql
        .batch_execute(&format!("DROP PUBLICATION {publication}"))
        .await;
    for prefix in [format!("{tag}-"), format!("{tag}s-")] {
        super::delete_own_topics(conns.kafka().map_err(fail)?, &prefix).await;
    }

    let mut refs: Vec<f64> = runs.iter().map(|r| r.0).collect();
    let mut caps: Vec<f64> = runs.iter().map(|r| r.1).collect();
    let (mr, mc) = (median(&mut refs), median(&mut caps));
    let mu = median(&mut unscrubbed.clone());
    let ms = median(&mut streaming.clone());
    Ok(CaptureBench {
        streaming_runs: streaming,
        streaming_median_s: ms,
        streaming_ratio: mr / ms,
        recvlogical_cpu: recv_cpu,
        capture_timed: cap_timed,
        broker_topics,
        broker_partitions,
        broker_messages,
        unscrubbed_runs: unscrubbed,
        unscrubbed_median_s: mu,
        scrub_cost_ratio: mc / mu,
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
        steady,
    })
}

/// What every throughput run reads with: pg_recvlogical, then capture on
/// slots of their own over the same range.
struct Reader<'a> {
    cfg: &'a Config,
    conns: &'a Connections,
    bin: &'a std::path::Path,
    roots: &'a super::cpu::Roots,
    publication: &'a str,
}

/// One run's figures.
struct Run {
    reference: f64,
    recv_cpu: super::cpu::CpuSplit,
    timed: super::Timed,
    /// Capture without free-text scrubbing, when asked for (else NaN).
    raw: f64,
}

impl Reader<'_> {
    /// pg_recvlogical, capture (and, with `unscrubbed`, capture without
    /// free-text scrubbing) over the range ending at `end`; `slots` names
    /// the slots with `%` for the reader's kind (recv, cap, raw).
    async fn run(
        &self,
        slots: &str,
        topics: &str,
        end_lsn: &str,
        end: u64,
        unscrubbed: bool,
    ) -> Result<Run, BenchError> {
        let slot = |kind: &str| slots.replace('%', kind);
        let cpu0 = self.roots.now();
        let t0 = Instant::now();
        recvlogical(
            self.bin,
            self.conns,
            &slot("recv"),
            end_lsn,
            self.publication,
        )
        .await?;
        let reference = t0.elapsed().as_secs_f64();
        let recv_cpu = self.roots.since(&cpu0);
        let c = capture_config(
            self.cfg,
            &slot("cap"),
            self.publication,
            topics,
            false,
            3_600_000,
        );
        let timed = timed_capture(&c, self.conns, end, self.roots).await?;
        let raw = if unscrubbed {
            // The same range without free-text scrubbing: its cost, same run.
            let mut c = capture_config(
                self.cfg,
                &slot("raw"),
                self.publication,
                &format!("{topics}-raw"),
                false,
                3_600_000,
            );
            c.capture.scrub_free_text = false;
            timed_capture(&c, self.conns, end, self.roots).await?.secs
        } else {
            f64::NAN
        };
        Ok(Run {
            reference,
            recv_cpu,
            timed,
            raw,
        })
    }
}

/// Drops the slots `write_range` made for `runs` runs under `tag`.
async fn drop_slots(sql: &tokio_postgres::Client, tag: &str, runs: u32) {
    for r in 0..runs {
        for kind in ["recv", "cap", "raw"] {
            let _ = sql
                .execute(
                    "SELECT pg_drop_replication_slot($1)",
                    &[&format!("{tag}_{kind}_{r}")],
                )
                .await;
        }
    }
}

/// The steady-state mix (a tenth of the workload's consent changes): a range
/// of its own, read by pg_recvlogical and capture run after run.
#[allow(clippy::too_many_arguments)]
async fn steady_mix(
    cfg: &Config,
    conns: &Connections,
    sql: &tokio_postgres::Client,
    tag: &str,
    publication: &str,
    knobs: &Knobs,
    bin: &std::path::Path,
    roots: &super::cpu::Roots,
) -> Result<MixFigures, BenchError> {
    let share = 0.1;
    let range = write_range(
        sql,
        conns,
        tag,
        knobs.steady_runs,
        knobs,
        share,
        &["recv", "cap"],
    )
    .await?;
    let reader = Reader {
        cfg,
        conns,
        bin,
        roots,
        publication,
    };
    let (mut runs, mut timed) = (Vec::new(), Vec::new());
    for r in 0..knobs.steady_runs {
        let run = reader
            .run(
                &format!("{tag}_%_{r}"),
                &format!("{tag}-{r}"),
                &range.end_lsn,
                range.end,
                false,
            )
            .await?;
        eprintln!(
            "bench: steady-state mix, run {}: pg_recvlogical {:.3} s, capture {:.3} s",
            r + 1,
            run.reference,
            run.timed.secs
        );
        runs.push((run.reference, run.timed.secs));
        timed.push(run.timed);
    }
    drop_slots(sql, tag, knobs.steady_runs).await;
    // Commit → ack at the latency rate with this mix.
    let (lat, _) = latency(cfg, conns, sql, tag, publication, knobs, share).await?;
    let mr = median(&mut runs.iter().map(|r| r.0).collect::<Vec<_>>());
    let mc = median(&mut runs.iter().map(|r| r.1).collect::<Vec<_>>());
    let ms = median(&mut timed.iter().map(|t| t.streaming_s).collect::<Vec<_>>());
    Ok(MixFigures {
        consent_share: share,
        changes: range.report.changes,
        wal_bytes: range.wal_bytes,
        runs,
        recvlogical_median_s: mr,
        capture_median_s: mc,
        throughput_ratio: mr / mc,
        streaming_ratio: mr / ms,
        capture_timed: timed,
        latency_p50_ms: percentile(&lat, 0.5) * 1000.0,
        latency_p99_ms: percentile(&lat, 0.99) * 1000.0,
        latency_max_ms: lat.last().copied().unwrap_or(f64::NAN) * 1000.0,
    })
}

/// The WAL range every run reads: its slots made at its start (one per run
/// and kind: pg_recvlogical's `recv`, capture's `cap`, capture's without
/// scrubbing `raw`), then the workload.
struct Range {
    report: workload::WorkloadReport,
    end_lsn: String,
    end: u64,
    wal_bytes: i64,
}

async fn write_range(
    sql: &tokio_postgres::Client,
    conns: &crate::connections::Connections,
    tag: &str,
    runs: u32,
    knobs: &Knobs,
    consent_share: f64,
    kinds: &[&str],
) -> Result<Range, BenchError> {
    for r in 0..runs {
        for kind in kinds {
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
        "bench: workload {} s at {} changes/s (consent changes × {consent_share} of the mix) writes the WAL range",
        knobs.seconds, knobs.rate
    );
    let w = WorkloadConfig {
        rate: knobs.rate,
        duration_s: knobs.seconds,
        sessions: 8,
        mass_enrolment: 0,
        seed: 11,
        consent_share,
    };
    let report = workload::run(&conns.journal().map_err(fail)?.config(), &w, false)
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
    let end = crate::lsn::parse(&end_lsn).unwrap_or(0);
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
    Ok(Range {
        report,
        end_lsn,
        end,
        wal_bytes,
    })
}

/// pg_recvlogical reads slot `slot` up to `end_lsn` into /dev/null: the
/// reference for capture's throughput.
async fn recvlogical(
    bin: &std::path::Path,
    conns: &crate::connections::Connections,
    slot: &str,
    end_lsn: &str,
    publication: &str,
) -> Result<(), BenchError> {
    let j = conns.journal().map_err(fail)?;
    let mut cmd = tokio::process::Command::new(bin);
    if let Some(p) = j.password() {
        cmd.env("PGPASSWORD", p.expose());
    }
    let status = cmd
        .args([
            "-h",
            &j.host,
            "-p",
            &j.port.to_string(),
            "-U",
            &j.user,
            "-d",
            &j.database,
        ])
        .args(["--slot", slot, "--start", "-E", end_lsn])
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
    Ok(())
}

/// Commit → confirmed latency of a capture streaming at a steady rate:
/// the sorted latencies (seconds), and the workload's report.
async fn latency(
    cfg: &Config,
    conns: &crate::connections::Connections,
    sql: &tokio_postgres::Client,
    tag: &str,
    publication: &str,
    knobs: &Knobs,
    consent_share: f64,
) -> Result<(Vec<f64>, workload::WorkloadReport), BenchError> {
    let c = capture_config(
        cfg,
        &format!("{tag}_lat"),
        publication,
        &format!("{tag}-lat"),
        false,
        5000,
    );
    let cancel = CancellationToken::new();
    let (task, probe) = spawn_capture(&c, conns, &cancel)?;
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
    let mut confirmed = probe.subscribe();
    let recorder = tokio::spawn(async move {
        let mut lat = Vec::new();
        loop {
            match confirmed.recv().await {
                Ok(c) => {
                    lat.push(((c.confirmed_at_micros - c.commit_time_micros) as f64 / 1e6).max(0.0))
                }
                Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => continue,
                Err(_) => return lat,
            }
        }
    });
    eprintln!(
        "bench: latency at {} changes/s for {} s (consent changes × {consent_share} of the mix)",
        knobs.latency_rate, knobs.latency_seconds
    );
    let w = WorkloadConfig {
        rate: knobs.latency_rate,
        duration_s: knobs.latency_seconds,
        sessions: 8,
        mass_enrolment: 0,
        seed: 12,
        consent_share,
    };
    let lat_report = workload::run(&conns.journal().map_err(fail)?.config(), &w, false)
        .await
        .map_err(fail)?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    cancel.cancel();
    let _ = task.await;
    drop(probe);
    let _ = sql
        .execute("SELECT pg_drop_replication_slot($1)", &[&c.capture.slot])
        .await;
    let mut lat = recorder.await.map_err(fail)?;
    lat.sort_by(|a, b| a.partial_cmp(b).unwrap());

    Ok((lat, lat_report))
}

/// The rows of `statements` (`COPY … TO STDOUT`, text) read and dropped,
/// `parallel` at a time, each on a connection of its own: PostgreSQL's own
/// speed at handing out the rows.
pub(super) async fn copy_out(
    pg_cfg: &tokio_postgres::Config,
    statements: &[String],
    parallel: usize,
) -> Result<u64, BenchError> {
    let counts: Vec<Result<u64, BenchError>> = futures::stream::iter(statements.to_vec())
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
        .buffer_unordered(parallel)
        .collect()
        .await;
    counts.into_iter().sum()
}

/// Run after run: the mapped tables read with capture's own COPY statements
/// on as many connections (the reference), then capture's initial load from
/// a new slot until every row is acknowledged by Kafka.
async fn initial_load(
    cfg: &Config,
    conns: &Connections,
    mapping: &capture::mapping::Mapping,
    tag: &str,
    runs: u32,
) -> Result<LoadFigures, BenchError> {
    let window = capture::snapshot::window_start(
        chrono::Local::now().date_naive(),
        cfg.capture.history_years,
    );
    let statements: Vec<String> = mapping
        .tables
        .iter()
        .map(|t| capture::snapshot::copy_sql(t, window))
        .collect();
    let parallel = cfg.capture.snapshot_connections.max(1) as usize;
    let mut figures = Vec::new();
    let mut rows = 0;
    for r in 0..runs {
        let t0 = Instant::now();
        rows = copy_out(
            &conns.journal().map_err(fail)?.config(),
            &statements,
            parallel,
        )
        .await?;
        let reference = t0.elapsed().as_secs_f64();

        let c = capture_config(
            cfg,
            &format!("{tag}_load_{r}"),
            tag,
            &format!("{tag}-load-{r}"),
            true,
            cfg.capture.heartbeat_interval_ms,
        );
        let (loaded, secs) = super::load_through_capture(&c, conns).await?;
        let sql = pg::connect(&conns.journal().map_err(fail)?.config())
            .await
            .map_err(fail)?;
        let _ = sql
            .execute("SELECT pg_drop_replication_slot($1)", &[&c.capture.slot])
            .await;
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

/// The local stack's journal server and broker (with the cluster holding
/// its log), for the CPU split; none when they are not ours to read.
pub(super) fn cpu_roots(
    stack: &Stack,
    journal: &crate::stack::postgres::LocalPostgres,
) -> super::cpu::Roots {
    let broker = stack.broker();
    let log_cluster = broker.log_cluster().ok().and_then(|pg| pg.running_pid());
    super::cpu::Roots {
        journal: journal.running_pid(),
        broker: broker
            .running_pid()
            .into_iter()
            .chain(log_cluster)
            .collect(),
    }
}

/// Topics, partitions and messages (by end offsets) the broker holds.
async fn broker_holds(
    kafka: &crate::connections::KafkaEndpoint,
) -> Result<(usize, usize, i64), BenchError> {
    let topics = super::broker_topics(kafka).await?;
    let ends = crate::kafka::end_offsets(kafka, &topics)
        .await
        .map_err(fail)?;
    Ok((topics.len(), ends.len(), ends.values().sum()))
}

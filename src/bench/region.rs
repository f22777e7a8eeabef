//! `vitrina bench region`: a region of N schools (default 50, ten times the
//! demo's) through every stage, each beside what this machine's PostgreSQL
//! itself does with the same rows in the same run:
//!
//! - capture's initial load (journal → Kafka) against `COPY (SELECT …) TO
//!   STDOUT` of the mapped tables with capture's statements, on as many
//!   connections as its load uses;
//! - the projector's initial load (Kafka → showcase) and a replay of the
//!   whole log against `COPY … FROM STDIN` of the showcase's rows into
//!   tables shaped like the showcase's (indexes included), on as many
//!   connections as the projector applies on;
//! - the ProStore feed's first load of the same log, against the
//!   projector's rate.
//!
//! Per stage: rows or events per second, CPU seconds per 100,000 of them
//! for vitrina (this process), PostgreSQL (the local stack's one cluster
//! holds both the journal and the showcase) and the broker, and this
//! process's peak RSS during the stage (the peak is reset between stages).
//! The region is generated once into its own journal database and kept.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

use super::cpu::{CpuSplit, Roots};
use super::{capture_config, fail, BenchError};
use crate::config::Config;
use crate::connections::{KafkaEndpoint, PgEndpoint};
use crate::pg;
use crate::stack::Stack;

/// `vitrina bench region` knobs.
pub struct RegionKnobs {
    pub schools: u32,
    pub students_per_school: u32,
}

/// One stage's figures.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Stage {
    pub name: &'static str,
    /// What is counted: "rows" or "events".
    pub unit: &'static str,
    pub count: u64,
    pub seconds: f64,
    pub per_s: f64,
    /// The same machine's PostgreSQL at the same job, in the same run.
    pub reference: Option<Reference>,
    /// `per_s` ÷ the reference's rate.
    pub ratio: Option<f64>,
    pub cpu: CpuSplit,
    /// Peak RSS of this process during the stage, MiB.
    pub peak_rss_mib: f64,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct Reference {
    pub what: String,
    pub rows: u64,
    pub seconds: f64,
    pub rows_per_s: f64,
}

/// `vitrina bench region` figures.
#[derive(Debug, Clone, serde::Serialize)]
pub struct RegionBench {
    pub schools: u32,
    pub students: i64,
    pub journal_rows: i64,
    pub stages: Vec<Stage>,
    /// One round of the quality checks over the loaded showcase, seconds.
    pub quality_run_s: f64,
}

/// Peak RSS (VmHWM) of this process since the last [`reset_peak`], MiB.
fn peak_rss_mib() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse::<f64>().ok())
        })
        .map_or(0.0, |kib| kib / 1024.0)
}

/// Resets the peak RSS to the current RSS (Linux ≥ 4.0).
fn reset_peak() {
    let _ = std::fs::write("/proc/self/clear_refs", "5");
}

/// Measures one stage: its CPU split and peak RSS around `f`.
async fn measured<T>(
    roots: &Roots,
    f: impl std::future::Future<Output = Result<T, BenchError>>,
) -> Result<(T, CpuSplit, f64), BenchError> {
    reset_peak();
    let cpu0 = roots.now();
    let out = f.await?;
    Ok((out, roots.since(&cpu0), peak_rss_mib()))
}

fn stage(
    name: &'static str,
    unit: &'static str,
    (count, seconds): (u64, f64),
    reference: Option<Reference>,
    (cpu, peak_rss_mib): (CpuSplit, f64),
) -> Stage {
    let per_s = count as f64 / seconds.max(1e-9);
    let ratio = reference.as_ref().map(|r| per_s / r.rows_per_s.max(1e-9));
    eprintln!(
        "bench: {name}: {count} {unit} in {seconds:.1} s ({per_s:.0}/s){}",
        ratio.map_or(String::new(), |r| format!(", {r:.2} of the reference"))
    );
    Stage {
        name,
        unit,
        count,
        seconds,
        per_s,
        reference,
        ratio,
        cpu,
        peak_rss_mib,
    }
}

pub async fn region(cfg: &Config, knobs: &RegionKnobs) -> Result<RegionBench, BenchError> {
    let stack = Stack::new(cfg).map_err(fail)?;
    let base = stack.connections().map_err(fail)?;
    let name = format!("vitrina_region_{}", knobs.schools);
    let journal = base.journal().map_err(fail)?.with_database(&name);
    let showcase = base
        .showcase()
        .map_err(fail)?
        .with_database(&format!("{name}_show"));
    let kafka = base.kafka().map_err(fail)?.clone();
    let (students, journal_rows) = ensure_region(cfg, &journal, knobs).await?;
    let roots = super::capture::cpu_roots(&stack, &stack.postgres().map_err(fail)?);

    let tag = format!("benchr{}", std::process::id());
    let mut c = capture_config(cfg, &tag, &tag, &tag, true, 1000);
    c.journal.database = name.clone();
    c.showcase.database = showcase.database.clone();
    let conns = Stack::new(&c).map_err(fail)?.connections().map_err(fail)?;
    let mut stages = Vec::new();

    // Capture's initial load and its reference.
    let mapping =
        crate::capture::mapping::Mapping::load(c.capture.mapping_file.as_deref()).map_err(fail)?;
    let window = crate::capture::snapshot::window_start(
        chrono::Local::now().date_naive(),
        c.capture.history_years,
    );
    let statements: Vec<String> = mapping
        .tables
        .iter()
        .map(|t| crate::capture::snapshot::copy_sql(t, window))
        .collect();
    let parallel = c.capture.snapshot_connections.max(1) as usize;
    let t0 = Instant::now();
    let rows = super::capture::copy_out(&journal.config(), &statements, parallel).await?;
    let copy_to = Reference {
        what: format!("COPY (SELECT …) TO STDOUT, {parallel} connections"),
        rows,
        seconds: t0.elapsed().as_secs_f64(),
        rows_per_s: rows as f64 / t0.elapsed().as_secs_f64(),
    };
    crate::kafka::provision(&kafka, &crate::capture::topic_needs(&mapping, &c))
        .await
        .map_err(fail)?;
    let (loaded, cpu, rss) = measured(&roots, super::load_through_capture(&c, &conns)).await?;
    // The log holds the load now: the slot would only hold the WAL the
    // later stages write (the showcase shares the cluster here).
    drop_slot(&journal, &tag).await;
    stages.push(stage(
        "capture initial load",
        "rows",
        loaded,
        Some(copy_to),
        (cpu, rss),
    ));

    // The log as it now stands (capture stopped: it stays put).
    let mut topics = crate::kafka::event_topics(&tag);
    topics.push(crate::kafka::detail_topic(&tag));
    let ends = crate::kafka::end_offsets(&kafka, &topics)
        .await
        .map_err(fail)?;
    let events: i64 = ends.values().sum();

    let (projected, cpu, rss) = measured(&roots, project_all(&c, &showcase, &kafka, &ends)).await?;
    // One round of the quality checks over the full showcase: what each
    // round costs at this size.
    let quality_s = {
        let client = pg::connect(&showcase.config()).await.map_err(fail)?;
        let t0 = Instant::now();
        crate::showcase::quality::run(
            &client,
            crate::showcase::SCHEMA,
            c.projector.pending_grace_s,
        )
        .await
        .map_err(fail)?;
        t0.elapsed().as_secs_f64()
    };
    eprintln!("bench: one round of the quality checks: {quality_s:.1} s");
    let apply_connections = c.projector.apply_connections.max(1) as usize;
    let copy_from = copy_from_reference(&showcase, apply_connections).await?;
    stages.push(stage(
        "projector initial load",
        "events",
        (events as u64, projected),
        Some(copy_from.clone()),
        (cpu, rss),
    ));

    let (replayed, cpu, rss) = measured(&roots, replay_all(&c, &showcase, &kafka)).await?;
    stages.push(stage(
        "replay of the whole log",
        "events",
        replayed,
        Some(copy_from),
        (cpu, rss),
    ));

    let event_topics = crate::kafka::event_topics(&tag);
    let fed_events: i64 = ends
        .iter()
        .filter(|((t, _), _)| event_topics.contains(t))
        .map(|(_, o)| *o)
        .sum();
    let (fed, cpu, rss) = measured(&roots, feed_all(&c, &kafka, fed_events)).await?;
    stages.push(stage(
        "ProStore feed first load",
        "events",
        (fed_events as u64, fed),
        None,
        (cpu, rss),
    ));

    cleanup(&journal, &showcase, &kafka, &tag).await;
    Ok(RegionBench {
        schools: knobs.schools,
        students,
        journal_rows,
        stages,
        quality_run_s: quality_s,
    })
}

/// The region's journal: generated the first time (not timed as a stage),
/// kept for later runs. Its students and rows.
async fn ensure_region(
    cfg: &Config,
    journal: &PgEndpoint,
    knobs: &RegionKnobs,
) -> Result<(i64, i64), BenchError> {
    crate::demo::migrate(journal).await.map_err(fail)?;
    let c = pg::connect(&journal.config()).await.map_err(fail)?;
    let count = |sql: &'static str| {
        let c = &c;
        async move {
            c.query_one(sql, &[])
                .await
                .map(|r| r.get::<_, i64>(0))
                .map_err(fail)
        }
    };
    if count("SELECT count(*) FROM journal.students").await? == 0 {
        let mut r = cfg.clone();
        r.region.schools = knobs.schools;
        r.region.students_per_school = knobs.students_per_school;
        eprintln!(
            "bench: generating a region of {} schools into database {} (once; kept for later runs)",
            knobs.schools, journal.database
        );
        let t0 = Instant::now();
        crate::demo::generate(&r, journal, false, false, false)
            .await
            .map_err(fail)?;
        eprintln!("bench: generated in {:.0} s", t0.elapsed().as_secs_f64());
    }
    // Planner estimates: exact after the generator's ANALYZE, kept across a
    // crash of the cluster (which resets pg_stat counters).
    let rows = count(
        "SELECT sum(greatest(c.reltuples, 0))::bigint FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = 'journal' AND c.relkind = 'r'",
    )
    .await?;
    Ok((count("SELECT count(*) FROM journal.students").await?, rows))
}

/// The projector from an empty showcase until it has applied the log up to
/// `ends`: seconds.
async fn project_all(
    c: &Config,
    showcase: &PgEndpoint,
    kafka: &KafkaEndpoint,
    ends: &HashMap<(String, i32), i64>,
) -> Result<f64, BenchError> {
    let admin = showcase.with_database("postgres").config();
    let _ = pg::connect(&admin)
        .await
        .map_err(fail)?
        .batch_execute(&format!(
            "DROP DATABASE IF EXISTS {} WITH (FORCE)",
            showcase.database
        ))
        .await;
    pg::ensure_database(&admin, &showcase.database)
        .await
        .map_err(fail)?;
    let proj = crate::projector::Projector::new(c, showcase, kafka);
    let cancel = CancellationToken::new();
    let cancel2 = cancel.clone();
    let t0 = Instant::now();
    let mut task = tokio::spawn(async move { proj.run(cancel2).await });
    let want: i64 = ends.values().sum();
    loop {
        tokio::time::sleep(Duration::from_millis(200)).await;
        if task.is_finished() {
            return Err(fail(format!(
                "the projector stopped: {:?}",
                (&mut task).await
            )));
        }
        let Ok(client) = pg::connect(&showcase.config()).await else {
            continue;
        };
        let applied: Option<i64> = client
            .query_one(
                "SELECT sum(next_offset)::bigint FROM showcase.consumer_offsets",
                &[],
            )
            .await
            .ok()
            .and_then(|r| r.get(0));
        if applied.unwrap_or(0) >= want {
            break;
        }
    }
    let secs = t0.elapsed().as_secs_f64();
    cancel.cancel();
    let _ = task.await;
    Ok(secs)
}

/// `COPY … FROM STDIN` (binary) of every showcase entity table's rows into
/// a clone of it (`LIKE … INCLUDING ALL`: its indexes too), `parallel`
/// tables at a time, each piped from `COPY … TO STDOUT` on a connection of
/// its own.
async fn copy_from_reference(
    showcase: &PgEndpoint,
    parallel: usize,
) -> Result<Reference, BenchError> {
    use futures::{SinkExt, StreamExt};
    let cfg = showcase.config();
    let admin = pg::connect(&cfg).await.map_err(fail)?;
    let tables: Vec<&str> = crate::events::ENTITIES.iter().map(|e| e.name).collect();
    let mut ddl =
        String::from("DROP SCHEMA IF EXISTS bench_copy CASCADE; CREATE SCHEMA bench_copy;");
    for t in &tables {
        ddl.push_str(&format!(
            "CREATE TABLE bench_copy.{t} (LIKE showcase.{t} INCLUDING ALL);"
        ));
    }
    admin.batch_execute(&ddl).await.map_err(fail)?;
    let t0 = Instant::now();
    let counts: Vec<Result<u64, BenchError>> = futures::stream::iter(tables)
        .map(|t| {
            let cfg = cfg.clone();
            async move {
                let (from, to) = (
                    pg::connect(&cfg).await.map_err(fail)?,
                    pg::connect(&cfg).await.map_err(fail)?,
                );
                let out = from
                    .copy_out(&format!("COPY showcase.{t} TO STDOUT (FORMAT binary)"))
                    .await
                    .map_err(fail)?;
                let sink = to
                    .copy_in::<_, bytes::Bytes>(&format!(
                        "COPY bench_copy.{t} FROM STDIN (FORMAT binary)"
                    ))
                    .await
                    .map_err(fail)?;
                futures::pin_mut!(out);
                futures::pin_mut!(sink);
                while let Some(chunk) = out.next().await {
                    sink.send(chunk.map_err(fail)?).await.map_err(fail)?;
                }
                sink.as_mut().finish().await.map_err(fail)
            }
        })
        .buffer_unordered(parallel)
        .collect()
        .await;
    let rows: u64 = counts.into_iter().sum::<Result<u64, BenchError>>()?;
    let seconds = t0.elapsed().as_secs_f64();
    let _ = admin
        .batch_execute("DROP SCHEMA IF EXISTS bench_copy CASCADE")
        .await;
    eprintln!("bench: COPY FROM reference: {rows} rows in {seconds:.1} s");
    Ok(Reference {
        what: format!(
            "COPY … FROM STDIN into clones of the showcase's tables, {parallel} connections"
        ),
        rows,
        seconds,
        rows_per_s: rows as f64 / seconds,
    })
}

/// A replay of the whole log into a fresh shadow (no swap): events, seconds.
async fn replay_all(
    c: &Config,
    showcase: &PgEndpoint,
    kafka: &KafkaEndpoint,
) -> Result<(u64, f64), BenchError> {
    let opts = crate::projector::replay::Options {
        from: None,
        margin: Duration::ZERO,
        swap: false,
        restart: true,
        new_log: false,
    };
    let rep = crate::projector::replay::run(c, showcase, kafka, &opts, CancellationToken::new())
        .await
        .map_err(fail)?;
    eprintln!(
        "bench: replay: {:.1} s receiving and decoding, {:.1} s applying (they overlap)",
        rep.gather_seconds, rep.apply_seconds
    );
    Ok((rep.events, rep.seconds))
}

/// The ProStore feed from nothing until a committed delta covers the
/// `events` of the event topics: seconds.
async fn feed_all(c: &Config, kafka: &KafkaEndpoint, events: i64) -> Result<f64, BenchError> {
    let mut feed = crate::prostore::feed::Feed::new(c, kafka.clone()).map_err(fail)?;
    let cancel = CancellationToken::new();
    let cancel2 = cancel.clone();
    let t0 = Instant::now();
    let mut task = tokio::spawn(async move { feed.run(cancel2).await });
    let prefix = c.capture.topic_prefix.clone();
    loop {
        tokio::time::sleep(Duration::from_secs(1)).await;
        if task.is_finished() {
            return Err(fail(format!("the feed stopped: {:?}", (&mut task).await)));
        }
        let (k, p) = (kafka.clone(), prefix.clone());
        let manifest =
            tokio::task::spawn_blocking(move || crate::prostore::feed::read_manifest(&k, &p))
                .await
                .map_err(fail)?
                .map_err(fail)?;
        let fed = manifest
            .iter()
            .rev()
            .find_map(|m| match m {
                crate::prostore::feed::Manifest::Commit(c) => Some(c.to.values().sum::<i64>()),
                _ => None,
            })
            .unwrap_or(0);
        if fed >= events {
            break;
        }
    }
    let secs = t0.elapsed().as_secs_f64();
    cancel.cancel();
    let _ = task.await;
    Ok(secs)
}

/// Drops the bench's slot and publication.
async fn drop_slot(journal: &PgEndpoint, tag: &str) {
    if let Ok(sql) = pg::connect(&journal.config()).await {
        // A walsender that has not exited yet keeps the slot active.
        for _ in 0..40 {
            let dropped = sql
                .execute(
                    "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots WHERE slot_name = $1",
                    &[&tag],
                )
                .await;
            let left = sql
                .query_opt(
                    "SELECT 1 FROM pg_replication_slots WHERE slot_name = $1",
                    &[&tag],
                )
                .await;
            if dropped.is_ok() || matches!(left, Ok(None)) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        let _ = sql
            .batch_execute(&format!("DROP PUBLICATION IF EXISTS {tag}"))
            .await;
    }
}

/// Drops the bench's slot, publication, showcase and topics; keeps the
/// region's journal for the next run.
async fn cleanup(journal: &PgEndpoint, showcase: &PgEndpoint, kafka: &KafkaEndpoint, tag: &str) {
    drop_slot(journal, tag).await;
    if let Ok(admin) = pg::connect(&showcase.with_database("postgres").config()).await {
        let _ = admin
            .batch_execute(&format!(
                "DROP DATABASE IF EXISTS {} WITH (FORCE)",
                showcase.database
            ))
            .await;
    }
    super::delete_own_topics(kafka, &format!("{tag}.")).await;
}

impl std::fmt::Display for RegionBench {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(
            f,
            "region bench: {} schools, {} students, {} journal rows",
            self.schools, self.students, self.journal_rows
        )?;
        writeln!(
            f,
            "{:<26} {:>12} {:>9} {:>14} {:>6}  {:>27}  {:>9}",
            "stage",
            "count",
            "seconds",
            "rate /s",
            "ratio",
            "CPU s/100k: vitrina pg kafka",
            "peak RSS"
        )?;
        for s in &self.stages {
            let per = |x: f64| x / (s.count as f64 / 1e5).max(1e-9);
            writeln!(
                f,
                "{:<26} {:>12} {:>9.1} {:>14.0} {:>6}  {:>13.2} {:>6.2} {:>6.2}  {:>5.0} MiB",
                s.name,
                format!("{} {}", s.count, s.unit),
                s.seconds,
                s.per_s,
                s.ratio.map_or("-".into(), |r| format!("{r:.2}")),
                per(s.cpu.own_s),
                per(s.cpu.journal_s),
                per(s.cpu.broker_s),
                s.peak_rss_mib
            )?;
            if let Some(r) = &s.reference {
                writeln!(
                    f,
                    "  reference: {}: {} rows in {:.1} s, {:.0} rows/s",
                    r.what, r.rows, r.seconds, r.rows_per_s
                )?;
            }
        }
        writeln!(
            f,
            "one round of the quality checks over the loaded showcase: {:.1} s",
            self.quality_run_s
        )?;
        writeln!(
            f,
            "(pg: the local stack's one PostgreSQL cluster, journal and showcase; ratio: rate ÷ the reference's rows/s, measured in this run)"
        )
    }
}

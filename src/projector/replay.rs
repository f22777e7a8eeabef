//! Replay: rebuild the showcase from the event log into a shadow schema
//! while the live projector keeps serving, then swap it in atomically.
//!
//! ```text
//!   log ──replay group──▶ showcase_replay ──(caught up)──▶ lock live apply
//!                                                        ▶ catch up to the live offsets
//!                                                        ▶ showcase → showcase_previous
//!                                                        ▶ showcase_replay → showcase
//! ```
//!
//! Invariants:
//! - The live projector takes a shared advisory lock (keyed by its schema
//!   name) in every apply transaction; the swap takes it exclusively, so no
//!   live batch is half-way when the schemas change names.
//! - The swap happens only when the shadow has applied at least every
//!   offset the live showcase has, so nothing the live showcase showed is
//!   missing from its replacement. A live projector that then applies
//!   events the shadow already holds changes nothing (apply is idempotent).
//! - `--from T`: the shadow starts as the live rows at or below a journal
//!   position B (the newest position of a row last changed before T) and
//!   consumes, on every partition, from an offset before which every record
//!   is at or below B ([`super::replay_seed`]). Events carry whole row
//!   states and apply is idempotent by position, so this equals a replay
//!   from the start.
//! - A replay interrupted before the swap resumes from the shadow's own
//!   offsets (`--restart` drops the shadow instead).

use std::collections::HashMap;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use indicatif::ProgressBar;
use serde::Serialize;
use tokio_util::sync::CancellationToken;

use super::{Projection, ProjectorError, Tp};
use crate::config::Config;
use crate::connections::{KafkaEndpoint, PgEndpoint};
use crate::events::ENTITIES;
use crate::kafka::end_offsets;
use crate::observability as obs;
use crate::pg::PgError;
use crate::showcase::{self, consent};

/// Schema the replay builds.
pub const SHADOW: &str = "showcase_replay";
/// Where the replaced showcase is kept (until the next replay).
pub const PREVIOUS: &str = "showcase_previous";

pub struct Options {
    /// Rebuild from this time instead of the start of the log.
    pub from: Option<DateTime<Utc>>,
    /// With `from`: how far before it the log is read at least (Kafka's
    /// timestamps are capture's or the broker's clock, not the journal's,
    /// and a change reaches the log after its commit).
    pub margin: Duration,
    /// Swap the shadow in when caught up (else leave it for inspection).
    pub swap: bool,
    /// Drop an existing shadow instead of resuming it.
    pub restart: bool,
    /// The log was recreated after a loss: the live showcase's offsets
    /// mean nothing in it, so the swap neither waits for them nor catches
    /// up to them (the live projector must be stopped: it refuses to run
    /// on such a log anyway).
    pub new_log: bool,
}

#[derive(Debug, Serialize)]
pub struct TableReport {
    pub table: String,
    pub old_rows: i64,
    pub new_rows: i64,
    pub old_checksum: String,
    pub new_checksum: String,
}

impl TableReport {
    pub fn same(&self) -> bool {
        self.old_rows == self.new_rows && self.old_checksum == self.new_checksum
    }
}

#[derive(Debug, Serialize)]
pub struct Report {
    pub events: u64,
    pub seconds: f64,
    pub events_per_s: f64,
    pub swapped: bool,
    /// Messages the shadow had applied beyond the live showcase at the
    /// swap (differences in the report may come from them).
    pub ahead_of_live: i64,
    /// Seconds receiving and decoding, and applying (PostgreSQL).
    pub gather_seconds: f64,
    pub apply_seconds: f64,
    pub tables: Vec<TableReport>,
}

async fn schema_exists(c: &tokio_postgres::Client, schema: &str) -> Result<bool, ProjectorError> {
    Ok(c.query_one(
        "SELECT EXISTS (SELECT 1 FROM pg_namespace WHERE nspname = $1)",
        &[&schema],
    )
    .await
    .map_err(PgError::query("looking up a schema"))?
    .get(0))
}

async fn drop_shadow(c: &tokio_postgres::Client) -> Result<(), ProjectorError> {
    c.batch_execute(&format!(
        "DROP SCHEMA IF EXISTS {SHADOW} CASCADE; DROP SCHEMA IF EXISTS {} CASCADE;",
        consent::private_schema(SHADOW)
    ))
    .await
    .map_err(PgError::query("dropping the shadow showcase"))?;
    Ok(())
}

/// Runs a replay; see the module docs.
pub async fn run(
    cfg: &Config,
    showcase_db: &PgEndpoint,
    kafka: &KafkaEndpoint,
    opts: &Options,
    cancel: CancellationToken,
) -> Result<Report, ProjectorError> {
    let t0 = Instant::now();
    let admin = crate::pg::connect(&showcase_db.config()).await?;
    showcase::migrate(&admin, showcase::SCHEMA).await?;
    if opts.restart || opts.from.is_some() {
        drop_shadow(&admin).await?;
    } else if schema_exists(&admin, SHADOW).await? {
        tracing::info!("resuming the replay in {SHADOW} (--restart starts over)");
    }
    let fresh = !schema_exists(&admin, SHADOW).await?;
    showcase::migrate(&admin, SHADOW).await?;
    // The shadow is built logged: with the bulk insert into its empty
    // tables, an unlogged build and the rewrite that made it durable before
    // the swap cost as much as writing WAL throughout (measured at the demo
    // region: 17.5 s against 17.1 s end to end), and a server crash no
    // longer empties it: the replay resumes where it was. (A shadow left
    // unlogged by an earlier release is made logged below.)
    if let (Some(from), true) = (opts.from, fresh) {
        super::replay_seed::seed_from(cfg, kafka, &admin, from, opts.margin).await?;
    }
    let group = format!(
        "{}-replay-{}",
        cfg.capture.topic_prefix, showcase_db.database
    );
    let mut p = Projection::open(cfg, showcase_db, kafka, SHADOW, &group).await?;
    let batch = cfg.projector.catch_up_batch_size;
    let mut report = catch_up(&mut p, batch, &cancel).await?;
    let t_logged = Instant::now();
    make_logged(&admin).await?;
    tracing::info!(
        seconds = t_logged.elapsed().as_secs_f64(),
        "shadow made durable (SET LOGGED)"
    );
    if !opts.swap {
        let t = Instant::now();
        report.tables = compare(&admin, showcase::SCHEMA, SHADOW).await?;
        tracing::info!(
            seconds = t.elapsed().as_secs_f64(),
            "compared with the live showcase"
        );
    } else {
        swap(cfg, admin, &mut p, opts, &cancel, &mut report).await?;
    }
    report.seconds = t0.elapsed().as_secs_f64();
    report.events_per_s = report.events as f64 / report.seconds.max(1e-9);
    Ok(report)
}

/// Phase 1: the shadow up to the log's end as it was when it started.
async fn catch_up(
    p: &mut Projection,
    batch: usize,
    cancel: &CancellationToken,
) -> Result<Report, ProjectorError> {
    let start: i64 = p.offsets().values().sum();
    let ends = end_offsets(p.kafka(), p.topics()).await?;
    let total: i64 = ends.values().sum::<i64>() - start;
    let bar = progress_bar(total.max(0) as u64);
    let mut events = 0u64;
    let (mut gather, mut applying) = (Duration::ZERO, Duration::ZERO);
    let mut last_log = Instant::now();
    loop {
        let behind = remaining(&p.offsets(), &ends);
        let done = total - behind;
        bar.set_position(done.max(0) as u64);
        metrics::gauge!(obs::REPLAY_REMAINING).set(behind as f64);
        metrics::gauge!(obs::REPLAY_PROGRESS).set(if total > 0 {
            done as f64 / total as f64
        } else {
            1.0
        });
        if last_log.elapsed() > Duration::from_secs(10) {
            last_log = Instant::now();
            tracing::info!(applied = done, remaining = behind, "replaying");
        }
        if behind == 0 {
            break;
        }
        if cancel.is_cancelled() {
            bar.abandon_with_message("interrupted; run again to resume");
            return Err(ProjectorError::Replay(
                "interrupted before the swap; `vitrina replay` resumes from the shadow's offsets"
                    .into(),
            ));
        }
        let s = p
            .step(batch, Duration::from_millis(500), cancel, None)
            .await?;
        if let Some(why) = p.stalled() {
            return Err(ProjectorError::Replay(format!("{why}; nothing swapped")));
        }
        events += s.events as u64;
        gather += s.gather;
        applying += s.apply;
        metrics::counter!(obs::REPLAY_EVENTS).increment(s.events as u64);
    }
    events += p.flush().await?.events as u64;
    bar.finish_with_message("caught up");
    Ok(Report {
        events,
        seconds: 0.0,
        events_per_s: 0.0,
        swapped: false,
        ahead_of_live: 0,
        gather_seconds: gather.as_secs_f64(),
        apply_seconds: applying.as_secs_f64(),
        tables: Vec::new(),
    })
}

/// Phase 2: lets the live projector reach the shadow's offsets, pauses
/// it, brings the shadow to exactly its offsets, compares, swaps.
async fn swap(
    cfg: &Config,
    mut admin: tokio_postgres::Client,
    p: &mut Projection,
    opts: &Options,
    cancel: &CancellationToken,
    report: &mut Report,
) -> Result<(), ProjectorError> {
    let batch = cfg.projector.catch_up_batch_size;
    let mut events = 0u64;
    let shadow = p.offsets();
    let waited = Instant::now();
    while !opts.new_log
        && remaining(&live_offsets(&admin).await?, &shadow) > 0
        && waited.elapsed() < Duration::from_secs(60)
    {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let tx = admin
        .transaction()
        .await
        .map_err(PgError::query("starting the swap"))?;
    tx.execute(
        "SELECT pg_advisory_xact_lock(hashtext($1))",
        &[&showcase::apply_lock_key(showcase::SCHEMA)],
    )
    .await
    .map_err(PgError::query("pausing the live projector"))?;
    let live = if opts.new_log {
        p.offsets()
    } else {
        live_offsets(&tx).await?
    };
    let paused = Instant::now();
    while remaining(&p.offsets(), &live) > 0 {
        if paused.elapsed() > Duration::from_secs(120) {
            return Err(ProjectorError::Replay(
                "the shadow did not reach the live showcase's offsets within 120 s of pausing it; nothing swapped".into(),
            ));
        }
        let s = p
            .step(batch, Duration::from_millis(200), cancel, Some(&live))
            .await?;
        if let Some(why) = p.stalled() {
            return Err(ProjectorError::Replay(format!("{why}; nothing swapped")));
        }
        events += s.events as u64;
    }
    events += p.flush().await?.events as u64;
    report.ahead_of_live = p
        .offsets()
        .iter()
        .map(|(k, o)| o - live.get(k).copied().unwrap_or(0))
        .sum();
    report.tables = compare(&tx, showcase::SCHEMA, SHADOW).await?;
    let (live_p, shadow_p, prev_p) = (
        consent::private_schema(showcase::SCHEMA),
        consent::private_schema(SHADOW),
        consent::private_schema(PREVIOUS),
    );
    // The previous showcase keeps no medical detail: a revocation
    // after the swap could not reach it. Its private schema goes, and
    // its medical columns are emptied ([`strip_medical_sql`]).
    // Readers keep their access: the shadow gets their grants before
    // it becomes the showcase.
    showcase::grant_readers(&tx, SHADOW, &cfg.projector.readers).await?;
    let strip = strip_medical_sql();
    tx.batch_execute(&format!(
        "DROP SCHEMA IF EXISTS {PREVIOUS} CASCADE;
         DROP SCHEMA IF EXISTS {prev_p} CASCADE;
         ALTER SCHEMA {live} RENAME TO {PREVIOUS};
         DROP SCHEMA {live_p} CASCADE;
         ALTER SCHEMA {SHADOW} RENAME TO {live};
         ALTER SCHEMA {shadow_p} RENAME TO {live_p};
         {strip}",
        live = showcase::SCHEMA
    ))
    .await
    .map_err(PgError::query("swapping the shadow showcase in"))?;
    tx.commit()
        .await
        .map_err(PgError::query("committing the swap"))?;
    report.swapped = true;
    metrics::counter!(obs::REPLAY_SWAPS).increment(1);
    tracing::info!(
        paused_ms = paused.elapsed().as_millis() as u64,
        "swapped: the replayed showcase is live; the old one is {PREVIOUS}"
    );
    report.events += events;
    Ok(())
}

/// Empties the medical columns of the previous showcase: it keeps no
/// medical detail, since a revocation after the swap could not reach it.
fn strip_medical_sql() -> String {
    consent::MEDICAL
        .iter()
        .map(|m| {
            let nulls: Vec<String> = m.fields.iter().map(|f| format!("{f} = NULL")).collect();
            let when = m
                .when
                .map(|(f, v)| format!("{f} = '{v}' AND "))
                .unwrap_or_default();
            format!(
                "UPDATE {PREVIOUS}.{e} SET {n} WHERE {when}({c});\n",
                e = m.entity,
                n = nulls.join(", "),
                c = m
                    .fields
                    .iter()
                    .map(|f| format!("{f} IS NOT NULL"))
                    .collect::<Vec<_>>()
                    .join(" OR ")
            )
        })
        .collect()
}

/// Every table of the shadow (and its private schema) LOGGED: a no-op for
/// a shadow built by this release, a rewrite of one an earlier release
/// left unlogged.
async fn make_logged(c: &tokio_postgres::Client) -> Result<(), ProjectorError> {
    let rows = c
        .query(
            "SELECT format('%I.%I', n.nspname, t.relname) FROM pg_class t JOIN pg_namespace n ON n.oid = t.relnamespace
              WHERE n.nspname IN ($1, $2) AND t.relkind = 'r'",
            &[&SHADOW, &consent::private_schema(SHADOW)],
        )
        .await
        .map_err(PgError::query("listing the shadow tables"))?;
    for r in rows {
        let t: String = r.get(0);
        c.batch_execute(&format!("ALTER TABLE {t} SET LOGGED"))
            .await
            .map_err(PgError::query(format!("making {t} logged")))?;
    }
    Ok(())
}

async fn live_offsets(
    c: &impl tokio_postgres::GenericClient,
) -> Result<HashMap<Tp, i64>, ProjectorError> {
    Ok(showcase::stored_offsets(c, showcase::SCHEMA).await?)
}

fn remaining(have: &HashMap<Tp, i64>, want: &HashMap<Tp, i64>) -> i64 {
    want.iter()
        .map(|(k, w)| (w - have.get(k).copied().unwrap_or(0)).max(0))
        .sum()
}

fn progress_bar(len: u64) -> ProgressBar {
    crate::progress::bar(
        len,
        "{spinner} replay [{bar:30}] {human_pos}/{human_len} events  {per_sec}  ETA {eta}  {msg}",
        true,
    )
}

/// Row counts (not deleted) and an order-independent checksum of every
/// entity table in both schemas. The checksum covers keys, states,
/// tombstones and source positions, not `applied_at`.
async fn compare(
    c: &impl tokio_postgres::GenericClient,
    old: &str,
    new: &str,
) -> Result<Vec<TableReport>, ProjectorError> {
    let mut out = Vec::new();
    for e in ENTITIES {
        let mut cols = vec!["key"];
        cols.extend(e.fields.iter().map(|f| f.name));
        cols.extend([
            "deleted",
            "source_commit_lsn",
            "source_lsn",
            "source_commit_time",
            "event_id",
        ]);
        let row = format!("({})", cols.join(", "));
        let one = |schema: &str| {
            format!(
                // hash_record_extended (PostgreSQL 14+): a 64-bit hash of
                // the row's values, five times cheaper than md5 of its text
                // (measured: 0.32 s against 1.72 s per million rows).
                "SELECT count(*) FILTER (WHERE NOT deleted),
                        coalesce(sum(hash_record_extended({row}, 0)::numeric), 0)::text
                   FROM {schema}.{t}",
                t = e.name
            )
        };
        let a = c
            .query_one(&one(old), &[])
            .await
            .map_err(PgError::query(format!("checksumming {old}.{}", e.name)))?;
        let b = c
            .query_one(&one(new), &[])
            .await
            .map_err(PgError::query(format!("checksumming {new}.{}", e.name)))?;
        out.push(TableReport {
            table: e.name.to_string(),
            old_rows: a.get(0),
            new_rows: b.get(0),
            old_checksum: a.get(1),
            new_checksum: b.get(1),
        });
    }
    Ok(out)
}

impl std::fmt::Display for Report {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let r = self;
        writeln!(
            f,
            "replayed {} events in {:.1} s ({:.0} events/s); {}",
            r.events,
            r.seconds,
            r.events_per_s,
            if r.swapped {
                "swapped in (the old showcase is kept as showcase_previous)"
            } else {
                "not swapped (the shadow is showcase_replay)"
            }
        )?;
        if r.ahead_of_live > 0 {
            writeln!(
                f,
                "the replay applied {} messages the old showcase had not yet: differences below may be those",
                r.ahead_of_live
            )?;
        }
        writeln!(
            f,
            "{:<22} {:>10} {:>10}  {:<20} {:<20} ",
            "TABLE", "OLD ROWS", "NEW ROWS", "OLD CHECKSUM", "NEW CHECKSUM"
        )?;
        for t in &r.tables {
            writeln!(
                f,
                "{:<22} {:>10} {:>10}  {:<20} {:<20} {}",
                t.table,
                t.old_rows,
                t.new_rows,
                t.old_checksum,
                t.new_checksum,
                if t.same() { "same" } else { "DIFFERENT" }
            )?;
        }
        Ok(())
    }
}

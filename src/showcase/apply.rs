//! Applying a batch of events to the showcase, with the consumed offsets,
//! in one PostgreSQL transaction.
//!
//! Invariants:
//! - Idempotent: applying an event twice leaves the showcase unchanged.
//! - Order-safe: a row is replaced only by an event with a higher source
//!   position `(commit_lsn, lsn)`; deletes leave tombstones with their
//!   position; a TRUNCATE tombstones every row older than itself.
//! - One statement per entity per batch (`unnest` of typed arrays), no
//!   per-event round trips; offsets are written in the same transaction, so
//!   rows and offsets commit together or not at all.

use std::collections::HashMap;

use chrono::{DateTime, NaiveDate, NaiveTime, Utc};
use tokio_postgres::types::ToSql;
use tokio_postgres::Client;

use super::consent::{self, Medical};
use crate::events::contract::{Entity, Ty};
use crate::events::fold::Fold;
use crate::events::{Detail, Event, Op, Val};
use crate::pg::PgError;

/// The latest truncate of each entity in a batch, with its position.
type Truncates<'a> = HashMap<&'static str, ((u64, u64), &'a Event)>;

#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Applied {
    /// Rows inserted or replaced (including tombstones).
    pub written: u64,
    /// Events older than what the showcase holds (or superseded in the batch).
    pub skipped: u64,
    pub truncated: u64,
    /// Showcase rows whose medical detail was revealed or redacted.
    pub consent_updates: u64,
}

fn pos(e: &Event) -> (u64, u64) {
    (e.source.commit_lsn, e.source.lsn)
}

/// One column of a batch, borrowing the events' strings (no per-row copies).
enum Col<'a> {
    I64(Vec<Option<i64>>),
    I32(Vec<Option<i32>>),
    F64(Vec<Option<f64>>),
    Bool(Vec<Option<bool>>),
    Text(Vec<Option<&'a str>>),
    Date(Vec<Option<NaiveDate>>),
    Ts(Vec<Option<DateTime<Utc>>>),
    Time(Vec<Option<NaiveTime>>),
}

impl<'a> Col<'a> {
    fn new(ty: Ty) -> Col<'a> {
        match ty {
            Ty::Long => Col::I64(Vec::new()),
            Ty::Int => Col::I32(Vec::new()),
            Ty::Double => Col::F64(Vec::new()),
            Ty::Bool => Col::Bool(Vec::new()),
            Ty::Str => Col::Text(Vec::new()),
            Ty::Date => Col::Date(Vec::new()),
            Ty::Timestamp => Col::Ts(Vec::new()),
            Ty::Time => Col::Time(Vec::new()),
        }
    }

    fn push(&mut self, v: Option<&'a Val>) {
        let epoch = NaiveDate::from_ymd_opt(1970, 1, 1).unwrap();
        match (self, v) {
            (Col::I64(c), Some(Val::Long(x))) => c.push(Some(*x)),
            (Col::I32(c), Some(Val::Int(x))) => c.push(Some(*x)),
            (Col::F64(c), Some(Val::Double(x))) => c.push(Some(*x)),
            (Col::Bool(c), Some(Val::Bool(x))) => c.push(Some(*x)),
            (Col::Text(c), Some(Val::Str(x))) => c.push(Some(x.as_str())),
            (Col::Date(c), Some(Val::Date(d))) => {
                c.push(Some(epoch + chrono::Duration::days(*d as i64)))
            }
            (Col::Ts(c), Some(Val::Timestamp(t))) => c.push(DateTime::from_timestamp_micros(*t)),
            (Col::Time(c), Some(Val::Time(t))) => {
                c.push(NaiveTime::from_num_seconds_from_midnight_opt(
                    (*t / 1_000_000) as u32,
                    ((*t % 1_000_000) * 1000) as u32,
                ))
            }
            (Col::I64(c), _) => c.push(None),
            (Col::I32(c), _) => c.push(None),
            (Col::F64(c), _) => c.push(None),
            (Col::Bool(c), _) => c.push(None),
            (Col::Text(c), _) => c.push(None),
            (Col::Date(c), _) => c.push(None),
            (Col::Ts(c), _) => c.push(None),
            (Col::Time(c), _) => c.push(None),
        }
    }

    fn as_sql(&self) -> &(dyn ToSql + Sync) {
        match self {
            Col::I64(c) => c,
            Col::I32(c) => c,
            Col::F64(c) => c,
            Col::Bool(c) => c,
            Col::Text(c) => c,
            Col::Date(c) => c,
            Col::Ts(c) => c,
            Col::Time(c) => c,
        }
    }

    fn array_type(ty: Ty) -> &'static str {
        match ty {
            Ty::Long => "bigint[]",
            Ty::Int => "integer[]",
            Ty::Double => "float8[]",
            Ty::Bool => "boolean[]",
            Ty::Str => "text[]",
            Ty::Date => "date[]",
            Ty::Timestamp => "timestamptz[]",
            Ty::Time => "time[]",
        }
    }
}

/// `INSERT … SELECT * FROM unnest(…)` of an entity's rows; with `upsert`,
/// a row replaces the one held only from a later source position.
fn insert_sql(schema: &str, e: &Entity, upsert: bool) -> String {
    let names: Vec<&str> = e.fields.iter().map(|f| f.name).collect();
    let mut casts = vec!["$1::text[]".to_string()];
    for (i, f) in e.fields.iter().enumerate() {
        casts.push(format!("${}::{}", i + 2, Col::array_type(f.ty)));
    }
    let n = e.fields.len() + 2;
    casts.push(format!("${n}::boolean[]"));
    casts.push(format!("${}::bigint[]", n + 1));
    casts.push(format!("${}::bigint[]", n + 2));
    casts.push(format!("${}::timestamptz[]", n + 3));
    casts.push(format!("${}::text[]", n + 4));
    let all_cols = format!(
        "key, {}, deleted, source_commit_lsn, source_lsn, source_commit_time, event_id",
        names.join(", ")
    );
    let insert = format!(
        "INSERT INTO {schema}.{t} AS cur ({all_cols}) SELECT * FROM unnest({casts})",
        t = e.name,
        casts = casts.join(", "),
    );
    if !upsert {
        return insert;
    }
    let sets: Vec<String> = names
        .iter()
        .chain(
            [
                "deleted",
                "source_commit_lsn",
                "source_lsn",
                "source_commit_time",
                "event_id",
            ]
            .iter(),
        )
        .map(|c| format!("{c} = EXCLUDED.{c}"))
        .collect();
    format!(
        "{insert}
         ON CONFLICT (key) DO UPDATE SET {sets}, applied_at = now()
         WHERE (cur.source_commit_lsn, cur.source_lsn) < (EXCLUDED.source_commit_lsn, EXCLUDED.source_lsn)",
        sets = sets.join(", ")
    )
}

/// Entities with fewer rows in a batch than this are always upserted.
const BULK_MIN_ROWS: usize = 500;

/// The bulk path of a catch-up: an entity's rows of a batch are first
/// inserted plainly, inside a savepoint (no conflict check: about a
/// quarter less PostgreSQL time than the upsert; measured on 2 million
/// rows, 10.4 s against 13.9 s); if one of them exists already the
/// insert fails as a whole, is rolled back to the savepoint
/// and the rows are upserted instead. Rows new to the showcase (an initial
/// load, a replay into an empty shadow) take the bulk path; an entity
/// whose insert conflicted skips it for the next 2, 4, … 64 batches, so
/// steady streaming (updates of rows held) pays for a failed insert
/// rarely. Small batches never try it.
#[derive(Debug, Default)]
pub struct Bulk {
    /// Per entity: conflicts in a row, and batches still to skip.
    state: HashMap<&'static str, (u32, u32)>,
}

impl Bulk {
    /// The entities of a batch that try the plain insert.
    fn choose(&mut self, by_entity: &ByEntity<'_>) -> Vec<&'static str> {
        let mut chosen = Vec::new();
        for (e, evs) in by_entity {
            if evs.len() < BULK_MIN_ROWS {
                continue;
            }
            let s = self.state.entry(e.name).or_default();
            if s.1 > 0 {
                s.1 -= 1;
            } else {
                chosen.push(e.name);
            }
        }
        chosen
    }

    fn outcome(&mut self, entity: &'static str, inserted: bool) {
        let s = self.state.entry(entity).or_default();
        if inserted {
            *s = (0, 0);
        } else {
            s.0 = (s.0 + 1).min(6);
            s.1 = 1 << s.0;
            metrics::counter!(crate::observability::PROJECTOR_BULK_CONFLICTS, "entity" => entity)
                .increment(1);
        }
    }
}

/// Applies `events` and records `offsets` (topic, partition, next offset)
/// in one transaction.
pub async fn apply_batch(
    client: &mut Client,
    schema: &str,
    events: &[Event],
    offsets: &[(String, i32, i64)],
) -> Result<Applied, PgError> {
    apply_with_watermarks(client, schema, events, &[], offsets, &[]).await
}

/// A record of the restricted topic: a row's medical detail, or its
/// tombstone, with its offset. A key's records share one partition (the
/// topic may not grow), so the offset orders them: a record read again (a
/// rebalance, a restart) never replaces a later one.
#[derive(Debug, Clone, PartialEq)]
pub enum DetailChange {
    Keep(Detail, i64),
    Erase {
        entity: String,
        key: String,
        offset: i64,
    },
}

impl DetailChange {
    fn id(&self) -> (&str, &str) {
        match self {
            DetailChange::Keep(d, _) => (d.entity.name, d.key.as_str()),
            DetailChange::Erase { entity, key, .. } => (entity.as_str(), key.as_str()),
        }
    }

    fn offset(&self) -> i64 {
        match self {
            DetailChange::Keep(_, o) | DetailChange::Erase { offset: o, .. } => *o,
        }
    }
}

/// The restricted topic's records, into the private tables: the last
/// record of each key wins. Returns the keys touched, per entity.
async fn apply_details(
    tx: &tokio_postgres::Transaction<'_>,
    schema: &str,
    details: &[DetailChange],
) -> Result<HashMap<&'static str, Vec<String>>, PgError> {
    let mut last: HashMap<(&str, &str), &DetailChange> = HashMap::new();
    for d in details {
        last.insert(d.id(), d);
    }
    let mut touched: HashMap<&'static str, Vec<String>> = HashMap::new();
    for m in consent::MEDICAL {
        // In key order: concurrent writers of the same keys (group members
        // around a rebalance) lock them in one order, never in a cycle.
        let (mut keep, mut erase): (Vec<&DetailChange>, Vec<&DetailChange>) = last
            .values()
            .filter(|d| d.id().0 == m.entity)
            .partition(|d| matches!(d, DetailChange::Keep(..)));
        keep.sort_unstable_by_key(|d| d.id().1);
        erase.sort_unstable_by_key(|d| d.id().1);
        if !erase.is_empty() {
            let keys: Vec<&str> = erase.iter().map(|d| d.id().1).collect();
            let offsets: Vec<i64> = erase.iter().map(|d| d.offset()).collect();
            tx.execute(&consent::detail_erase_sql(m, schema), &[&keys, &offsets])
                .await
                .map_err(PgError::query(format!(
                    "erasing the medical detail of {}",
                    m.entity
                )))?;
            touched
                .entry(m.entity)
                .or_default()
                .extend(keys.iter().map(|k| k.to_string()));
        }
        let offsets: Vec<i64> = keep.iter().map(|d| d.offset()).collect();
        let keep: Vec<&Detail> = keep
            .iter()
            .filter_map(|d| match d {
                DetailChange::Keep(d, _) => Some(d),
                DetailChange::Erase { .. } => None,
            })
            .collect();
        if keep.is_empty() {
            continue;
        }
        let keys: Vec<&str> = keep.iter().map(|d| d.key.as_str()).collect();
        let students: Vec<Option<i64>> = keep.iter().map(|d| d.student_id).collect();
        let fields: Vec<Vec<Option<&str>>> = m
            .fields
            .iter()
            .map(|f| {
                keep.iter()
                    .map(|d| {
                        d.fields
                            .iter()
                            .find(|(n, _)| n == f)
                            .and_then(|(_, v)| v.as_deref())
                    })
                    .collect()
            })
            .collect();
        let commit_lsn: Vec<i64> = keep.iter().map(|d| d.commit_lsn as i64).collect();
        let lsn: Vec<i64> = keep.iter().map(|d| d.lsn as i64).collect();
        let mut params: Vec<&(dyn ToSql + Sync)> = vec![&keys, &students];
        params.extend(fields.iter().map(|f| f as &(dyn ToSql + Sync)));
        params.push(&commit_lsn);
        params.push(&lsn);
        params.push(&offsets);
        tx.execute(&consent::detail_upsert_sql(m, schema), &params)
            .await
            .map_err(PgError::query(format!(
                "keeping the medical detail of {}",
                m.entity
            )))?;
        touched
            .entry(m.entity)
            .or_default()
            .extend(keys.iter().map(|k| k.to_string()));
    }
    Ok(touched)
}

/// A watermark consumed from (topic, partition): journal commit time (µs) and LSN.
pub type WatermarkAt = (String, i32, i64, u64);

/// A batch folded: the latest event per key, minus truncates; the truncate
/// events ride along for their positions and ids.
type Batch<'a> = Fold<&'static str, &'a str, &'a Event, &'a Event>;

/// Per entity, its latest events in key order (the same order in every
/// transaction, so concurrent upserts do not deadlock).
type ByEntity<'a> = Vec<(&'static Entity, Vec<&'a Event>)>;

fn fold(events: &[Event]) -> Batch<'_> {
    let mut batch = Batch::default();
    for e in events {
        if e.op == Op::Truncate {
            batch.truncate(e.entity.name, pos(e), e);
        } else {
            batch.put(e.entity.name, e.key.as_str(), pos(e), e);
        }
    }
    batch
}

fn by_entity<'a>(batch: &Batch<'a>) -> ByEntity<'a> {
    let mut out: ByEntity = batch
        .entities()
        .filter_map(|(_, rows)| {
            let evs: Vec<&Event> = rows.values().map(|(_, e)| *e).collect();
            Some((evs.first()?.entity, evs))
        })
        .collect();
    out.sort_by_key(|(e, _)| e.name);
    out
}

/// [`apply_batch`], also recording the watermarks consumed in the batch
/// (they follow every event of their partition applied here or before).
pub async fn apply_with_watermarks(
    client: &mut Client,
    schema: &str,
    events: &[Event],
    details: &[DetailChange],
    offsets: &[(String, i32, i64)],
    watermarks: &[WatermarkAt],
) -> Result<Applied, PgError> {
    apply_on(
        client,
        &mut [],
        schema,
        events,
        details,
        (offsets, watermarks),
        &mut Bulk::default(),
    )
    .await
}

/// A batch's rows of one transaction, with (in the one that carries
/// them) the truncates and the restricted topic's records.
struct Part<'a> {
    rows: ByEntity<'a>,
    truncates: Option<&'a Truncates<'a>>,
    details: &'a [DetailChange],
}

/// Applies a batch and records its offsets and watermarks.
///
/// With no `writers`, all of it in one transaction on `home`. With
/// writers, the rows are split between them, one transaction each, run in
/// parallel: truncated entities, consent and the medical entities (with
/// the restricted topic's records) go whole to the first writer; every
/// other entity's rows are cut into key ranges that even out the writers'
/// loads. No two of them write the same row. `home` holds the apply lock
/// (a replay's swap waits for it) from before the writers begin until it
/// commits the offsets and watermarks, after every writer committed: a
/// crash in between leaves rows ahead of the recorded offsets, which are
/// read and applied again, changing nothing (apply is idempotent by source
/// position), so no change is lost or shown twice. `home` writes no row
/// the writers or another member's writers wait for: the wait for the
/// writers, which PostgreSQL cannot see, closes no cycle.
pub async fn apply_on(
    home: &mut Client,
    writers: &mut [Client],
    schema: &str,
    events: &[Event],
    details: &[DetailChange],
    (offsets, watermarks): (&[(String, i32, i64)], &[WatermarkAt]),
    bulk: &mut Bulk,
) -> Result<Applied, PgError> {
    let batch = fold(events);
    let by_entity = by_entity(&batch);
    let bulky = bulk.choose(&by_entity);
    let tx = home
        .transaction()
        .await
        .map_err(PgError::query("starting an apply transaction"))?;
    // A replay's swap pauses us here (see projector::replay).
    tx.execute(super::apply_lock_sql(), &[&schema])
        .await
        .map_err(PgError::query("taking the apply lock"))?;
    let mut applied = Applied {
        skipped: batch.dropped(),
        ..Applied::default()
    };
    let mut outcomes = Vec::new();
    if writers.is_empty() {
        let part = Part {
            rows: by_entity,
            truncates: Some(batch.truncates()),
            details,
        };
        let (a, o) = write_part(&tx, schema, part, &bulky).await?;
        applied.add(&a);
        outcomes = o;
    } else {
        let parts = split(by_entity, batch.truncates(), details, writers.len());
        let runs = writers.iter_mut().zip(parts).map(|(c, part)| {
            let bulky = &bulky;
            async move {
                let tx = c
                    .transaction()
                    .await
                    .map_err(PgError::query("starting an apply transaction"))?;
                let r = write_part(&tx, schema, part, bulky).await?;
                tx.commit()
                    .await
                    .map_err(PgError::query("committing an apply transaction"))?;
                Ok::<_, PgError>(r)
            }
        });
        for r in futures::future::join_all(runs).await {
            let (a, o) = r?;
            applied.add(&a);
            outcomes.extend(o);
        }
        // The writers committed; the offsets have not.
        if let Some(n) = crate::failpoint!("projector-crash-before-offsets") {
            static BATCHES: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
            let seen = BATCHES.fetch_add(1, std::sync::atomic::Ordering::SeqCst) + 1;
            if seen >= n.parse::<u64>().unwrap_or(1) {
                crate::failpoint::crash();
            }
        }
    }
    record_positions(&tx, schema, offsets, watermarks).await?;
    tx.commit()
        .await
        .map_err(PgError::query("committing an apply transaction"))?;
    for (entity, inserted) in outcomes {
        bulk.outcome(entity, inserted);
    }
    Ok(applied)
}

impl Applied {
    fn add(&mut self, o: &Applied) {
        self.written += o.written;
        self.skipped += o.skipped;
        self.truncated += o.truncated;
        self.consent_updates += o.consent_updates;
    }
}

/// Cuts a batch into `n` parts (see [`apply_on`]).
fn split<'a>(
    by_entity: ByEntity<'a>,
    truncates: &'a Truncates<'a>,
    details: &'a [DetailChange],
    n: usize,
) -> Vec<Part<'a>> {
    let whole = |name: &str| {
        name == "consent" || consent::medical(name).is_some() || truncates.contains_key(name)
    };
    let (first, rest): (ByEntity, ByEntity) =
        by_entity.into_iter().partition(|(e, _)| whole(e.name));
    let first_rows: usize = first.iter().map(|(_, v)| v.len()).sum();
    let rest_rows: usize = rest.iter().map(|(_, v)| v.len()).sum();
    let per = (first_rows + rest_rows).div_ceil(n);
    let mut quota: Vec<usize> = (0..n)
        .map(|i| {
            if i == 0 {
                per.saturating_sub(first_rows)
            } else {
                per
            }
        })
        .collect();
    let mut parts: Vec<Part> = (0..n)
        .map(|i| Part {
            rows: Vec::new(),
            truncates: (i == 0).then_some(truncates),
            details: if i == 0 { details } else { &[] },
        })
        .collect();
    parts[0].rows = first;
    let mut w = 0;
    for (entity, evs) in rest {
        let mut left = &evs[..];
        while !left.is_empty() {
            while w + 1 < n && quota[w] == 0 {
                w += 1;
            }
            let take = if w + 1 == n {
                left.len()
            } else {
                quota[w].min(left.len())
            };
            parts[w].rows.push((entity, left[..take].to_vec()));
            quota[w] -= take.min(quota[w]);
            left = &left[take..];
        }
    }
    parts
}

/// Writes one part in `tx`: truncates, rows, restricted records, and the
/// shown medical detail they change. Returns what it did and, per entity
/// that tried the bulk insert, whether it took.
async fn write_part(
    tx: &tokio_postgres::Transaction<'_>,
    schema: &str,
    part: Part<'_>,
    bulky: &[&'static str],
) -> Result<(Applied, Vec<(&'static str, bool)>), PgError> {
    let no_truncates = HashMap::new();
    let truncates = part.truncates.unwrap_or(&no_truncates);
    let (by_entity, details) = (&part.rows, part.details);
    let mut applied = Applied::default();
    // The shown medical detail of a row is recomputed from its row, its
    // private detail and its student's consents, which may arrive through
    // different transactions (different group members, or parts of one
    // batch). Concurrent, each would miss the other's uncommitted writes
    // and a recomputation could even act on a stale copy of a row another
    // one just changed. Taken before any write, this lock runs them one
    // after the other, each seeing what the previous one committed.
    let medical_work = !details.is_empty()
        || by_entity
            .iter()
            .map(|(e, _)| e.name)
            .chain(truncates.keys().copied())
            .any(|name| name == "consent" || consent::medical(name).is_some());
    if medical_work {
        tx.execute(super::medical_lock_sql(), &[&schema])
            .await
            .map_err(PgError::query("taking the medical detail lock"))?;
    }
    let mut touched = Touched::of(tx, schema, by_entity).await?;
    touched.all_students = truncates.contains_key("consent");
    applied.truncated = truncate(tx, schema, truncates).await?;
    let mut outcomes = Vec::new();
    for (entity, evs) in by_entity {
        let bulk = bulky.contains(&entity.name);
        let (n, inserted) = upsert(tx, schema, entity, evs, bulk).await?;
        if bulk {
            outcomes.push((entity.name, inserted));
        }
        applied.written += n;
        applied.skipped += evs.len() as u64 - n;
    }
    // Medical detail comes only from the restricted topic: a general event
    // carries none (capture nulls it), so it never writes the private tables.
    for (entity, keys) in apply_details(tx, schema, details).await? {
        touched.medical_keys.entry(entity).or_default().extend(keys);
    }
    applied.consent_updates = touched.refresh(tx, schema).await?;
    Ok((applied, outcomes))
}

/// Whose shown medical detail a batch may change: the students whose
/// consent changed (all their medical rows), and the medical rows written.
#[derive(Default)]
struct Touched {
    students: Vec<i64>,
    all_students: bool,
    medical_keys: HashMap<&'static str, Vec<String>>,
}

impl Touched {
    async fn of(
        tx: &tokio_postgres::Transaction<'_>,
        schema: &str,
        by_entity: &ByEntity<'_>,
    ) -> Result<Touched, PgError> {
        let mut t = Touched::default();
        for (entity, evs) in by_entity {
            if let Some(m) = consent::medical(entity.name) {
                let holds = m.holds();
                t.medical_keys.entry(entity.name).or_default().extend(
                    evs.iter()
                        .filter(|e| e.after.as_deref().is_some_and(&holds))
                        .map(|e| e.key.clone()),
                );
            }
            if entity.name != "consent" {
                continue;
            }
            t.students
                .extend(evs.iter().filter_map(|e| consent::student_of(e)));
            // A deleted consent no longer names its student: look it up.
            let gone: Vec<&str> = evs
                .iter()
                .filter(|e| e.after.is_none())
                .map(|e| e.key.as_str())
                .collect();
            if gone.is_empty() {
                continue;
            }
            for r in tx
                .query(
                    &format!("SELECT student_id FROM {schema}.consent WHERE key = ANY($1) AND student_id IS NOT NULL"),
                    &[&gone],
                )
                .await
                .map_err(PgError::query("reading deleted consents"))?
            {
                t.students.push(r.get(0));
            }
        }
        Ok(t)
    }

    /// Recomputes the shown medical detail of what was touched.
    async fn refresh(
        mut self,
        tx: &tokio_postgres::Transaction<'_>,
        schema: &str,
    ) -> Result<u64, PgError> {
        self.students.sort_unstable();
        self.students.dedup();
        let filter: Option<&Vec<i64>> = (!self.all_students).then_some(&self.students);
        let mut updated = 0;
        for m in consent::MEDICAL {
            let keys = self.medical_keys.remove(m.entity).unwrap_or_default();
            if self.all_students || !self.students.is_empty() || !keys.is_empty() {
                updated += tx
                    .execute(&consent::refresh_sql(m, schema), &[&filter, &keys])
                    .await
                    .map_err(PgError::query(format!(
                        "applying consent to the medical detail of {}",
                        m.entity
                    )))?;
            }
        }
        Ok(updated)
    }
}

/// Each truncated entity's rows older than its latest truncate become
/// tombstones (and its private medical detail goes). Returns the rows.
async fn truncate(
    tx: &tokio_postgres::Transaction<'_>,
    schema: &str,
    truncates: &Truncates<'_>,
) -> Result<u64, PgError> {
    let mut rows = 0;
    let mut names: Vec<&&str> = truncates.keys().collect();
    names.sort();
    for name in names {
        let (_, t) = truncates[*name];
        rows += tx
            .execute(
                &format!(
                    "UPDATE {schema}.{name} SET deleted = true, source_commit_lsn = $1, source_lsn = $2, source_commit_time = $3, event_id = $4, applied_at = now()
                     WHERE NOT deleted AND (source_commit_lsn, source_lsn) < ($1, $2)"
                ),
                &[
                    &(t.source.commit_lsn as i64),
                    &(t.source.lsn as i64),
                    &DateTime::from_timestamp_micros(t.source.commit_time_micros),
                    &t.event_id,
                ],
            )
            .await
            .map_err(PgError::query(format!("truncating showcase.{name}")))?;
        if let Some(m) = consent::medical(name) {
            tx.execute(
                &consent::private_truncate_sql(m, schema),
                &[&(t.source.commit_lsn as i64), &(t.source.lsn as i64)],
            )
            .await
            .map_err(PgError::query(format!(
                "truncating the medical detail of {name}"
            )))?;
        }
    }
    Ok(rows)
}

/// One statement for an entity's latest events; returns the rows written
/// (an event older than the row held writes nothing).
///
/// With `bulk`, a plain insert first (see [`Bulk`]): the flag returned
/// says whether it took.
async fn upsert(
    tx: &tokio_postgres::Transaction<'_>,
    schema: &str,
    entity: &Entity,
    evs: &[&Event],
    bulk: bool,
) -> Result<(u64, bool), PgError> {
    let mut keys = Vec::with_capacity(evs.len());
    let mut cols: Vec<Col> = entity.fields.iter().map(|f| Col::new(f.ty)).collect();
    let (mut deleted, mut commit_lsn, mut lsn, mut commit_time, mut ids) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let medical = consent::medical(entity.name);
    let held: Vec<usize> = medical.map(Medical::field_indexes).unwrap_or_default();
    let holds = medical.map(Medical::holds);
    for e in evs {
        keys.push(e.key.as_str());
        // Medical detail enters the showcase row only through the
        // consent refresh.
        let hold = holds
            .as_ref()
            .is_some_and(|h| e.after.as_deref().is_some_and(h));
        for (i, c) in cols.iter_mut().enumerate() {
            if hold && held.contains(&i) {
                c.push(None);
            } else {
                c.push(e.after.as_ref().map(|a| &a[i]));
            }
        }
        deleted.push(e.after.is_none());
        commit_lsn.push(e.source.commit_lsn as i64);
        lsn.push(e.source.lsn as i64);
        commit_time.push(DateTime::from_timestamp_micros(e.source.commit_time_micros));
        ids.push(e.event_id.as_str());
    }
    let mut params: Vec<&(dyn ToSql + Sync)> = vec![&keys];
    params.extend(cols.iter().map(Col::as_sql));
    params.push(&deleted);
    params.push(&commit_lsn);
    params.push(&lsn);
    params.push(&commit_time);
    params.push(&ids);
    if bulk {
        tx.batch_execute("SAVEPOINT vitrina_bulk")
            .await
            .map_err(PgError::query("starting a bulk insert"))?;
        match tx
            .execute(&insert_sql(schema, entity, false), &params)
            .await
        {
            Ok(n) => {
                tx.batch_execute("RELEASE SAVEPOINT vitrina_bulk")
                    .await
                    .map_err(PgError::query("ending a bulk insert"))?;
                return Ok((n, true));
            }
            Err(e) if e.code() == Some(&tokio_postgres::error::SqlState::UNIQUE_VIOLATION) => {
                tx.batch_execute("ROLLBACK TO SAVEPOINT vitrina_bulk")
                    .await
                    .map_err(PgError::query("undoing a bulk insert"))?;
            }
            Err(e) => {
                return Err(PgError::query(format!(
                    "inserting into showcase.{}",
                    entity.name
                ))(e))
            }
        }
    }
    let n = tx
        .execute(&insert_sql(schema, entity, true), &params)
        .await
        .map_err(PgError::query(format!(
            "upserting into showcase.{}",
            entity.name
        )))?;
    Ok((n, false))
}

/// The batch's watermarks and consumed offsets, never moved backwards.
async fn record_positions(
    tx: &tokio_postgres::Transaction<'_>,
    schema: &str,
    offsets: &[(String, i32, i64)],
    watermarks: &[WatermarkAt],
) -> Result<(), PgError> {
    // In (topic, partition) order, as every other writer takes them.
    let mut watermarks: Vec<&WatermarkAt> = watermarks.iter().collect();
    watermarks.sort_unstable_by(|a, b| (&a.0, a.1).cmp(&(&b.0, b.1)));
    let mut offsets: Vec<&(String, i32, i64)> = offsets.iter().collect();
    offsets.sort_unstable();
    for (topic, partition, time, lsn) in watermarks {
        tx.execute(
            &format!(
                "INSERT INTO {schema}.watermarks (topic, partition, commit_time, commit_lsn) VALUES ($1, $2, $3, $4)
                 ON CONFLICT (topic, partition) DO UPDATE SET commit_time = greatest({schema}.watermarks.commit_time, EXCLUDED.commit_time),
                   commit_lsn = greatest({schema}.watermarks.commit_lsn, EXCLUDED.commit_lsn), updated_at = now()"
            ),
            &[topic, partition, &DateTime::from_timestamp_micros(*time), &(*lsn as i64)],
        )
        .await
        .map_err(PgError::query("recording watermarks"))?;
    }
    for (topic, partition, next) in offsets {
        tx.execute(
            &format!(
                "INSERT INTO {schema}.consumer_offsets (topic, partition, next_offset) VALUES ($1, $2, $3)
                 ON CONFLICT (topic, partition) DO UPDATE SET next_offset = greatest({schema}.consumer_offsets.next_offset, EXCLUDED.next_offset), updated_at = now()"
            ),
            &[topic, partition, next],
        )
        .await
        .map_err(PgError::query("recording consumed offsets"))?;
    }
    Ok(())
}

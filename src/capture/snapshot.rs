//! The initial load: every mapped table copied at the slot's exported
//! snapshot, limited to the history window, as READ events; then streaming
//! continues from the slot's position with no gap and no duplicate.
//!
//! Invariants:
//! - Rows are read in `REPEATABLE READ` transactions that adopt the exported
//!   snapshot, so they show exactly the commits before the slot's
//!   consistent point; the stream delivers exactly the commits after it.
//! - Tables are copied in parallel (`capture.snapshot_connections`), rows
//!   are published by one task in the order they arrive.
//! - Progress is kept per table in `state_dir/capture/<slot>.json`. A table
//!   counts as done only when all its events are acknowledged. An
//!   interrupted load resumes with the tables not done, at a new snapshot
//!   (a temporary slot's), and the stream skips those tables' changes that
//!   committed before that snapshot: still no gap and no duplicate.
//! - Rows outside the history window (per-table `history` column older than
//!   1 September of `history_years` academic years before the current one)
//!   are not loaded.

use std::borrow::Cow;
use std::collections::HashMap;
use std::time::Instant;

use chrono::{Datelike, NaiveDate};
use futures::StreamExt;
use tokio::sync::mpsc;

use super::gate::{self, Gate};
use super::mapping::{Row, TableMapping};
use super::{CaptureError, DeadLetter, Publisher};
use crate::config::Config;
use crate::connections::PgEndpoint;
use crate::events::{self, Event, Op, Source};
use crate::observability as obs;
use crate::pg::{self, PgError};
use crate::privacy::Depersonalizer;

/// The initial load's progress ([`super::load_state`] keeps it).
#[derive(Debug, Default, Clone, serde::Serialize, serde::Deserialize)]
pub struct State {
    pub started: bool,
    pub done: bool,
    pub tables_done: Vec<String>,
    /// Tables loaded at a resume snapshot: their changes that committed
    /// before this LSN are already in the snapshot.
    pub table_lsn: HashMap<String, u64>,
    /// The partitioner the slot's events were published with; absent in
    /// states written before it was recorded: librdkafka's default then,
    /// `consistent_random` (CRC32).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub partitioner: Option<String>,
    /// Partitions of the restricted topic when the slot was made: a key's
    /// detail and its tombstone must share a partition, so it may not grow
    /// (absent in states written before it was recorded).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub restricted_partitions: Option<i32>,
    /// Re-snapshots not finished ([`super::resnapshot`]), oldest first.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub resnapshots: Vec<super::resnapshot::Job>,
    /// Ids of the latest re-snapshots finished: a request read again from
    /// the slot after a restart is not run twice.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub resnapshots_done: Vec<String>,
}

/// What librdkafka partitioned with before vitrina chose a partitioner.
pub const LEGACY_PARTITIONER: &str = "consistent_random";

/// First day of the history window: 1 September, `years` academic years
/// before the current one.
pub fn window_start(today: NaiveDate, years: u32) -> NaiveDate {
    let current = if today.month() >= 9 {
        today.year()
    } else {
        today.year() - 1
    };
    NaiveDate::from_ymd_opt(current - years as i32, 9, 1).expect("valid date")
}

enum Item {
    /// Rows read, in the order read ([`BATCH`] at a time: one channel
    /// entry and one wake-up for each, not for every row).
    Rows(Vec<Read>),
    TableDone(String, u64),
    Failed(CaptureError),
}

/// One row read.
enum Read {
    /// An event (through the gate's fields: scrubbed, medical detail out),
    /// its Kafka key, and what the gate took out.
    Event(Event, String, gate::Applied),
    Dead(DeadLetter),
}

/// Rows a copier hands to the publishing task at a time.
const BATCH: usize = 256;

/// Splits one line of COPY text format into fields (`None` = NULL). A
/// field without escapes is borrowed from the line.
pub fn parse_copy_line(line: &str) -> Vec<Option<Cow<'_, str>>> {
    line.split('\t')
        .map(|f| {
            if f == "\\N" {
                return None;
            }
            if !f.contains('\\') {
                return Some(Cow::Borrowed(f));
            }
            let mut out = String::with_capacity(f.len());
            let mut chars = f.chars();
            while let Some(c) = chars.next() {
                if c == '\\' {
                    match chars.next() {
                        Some('t') => out.push('\t'),
                        Some('n') => out.push('\n'),
                        Some('r') => out.push('\r'),
                        Some('b') => out.push('\u{8}'),
                        Some('f') => out.push('\u{c}'),
                        Some('v') => out.push('\u{b}'),
                        Some(other) => out.push(other),
                        None => out.push('\\'),
                    }
                } else {
                    out.push(c);
                }
            }
            Some(Cow::Owned(out))
        })
        .collect()
}

/// One COPY line as a [`Row`]: the fields of `columns`, in their order.
pub struct CopyRow<'a> {
    columns: &'a [String],
    fields: Vec<Option<Cow<'a, str>>>,
}

impl<'a> CopyRow<'a> {
    pub fn parse(columns: &'a [String], line: &'a str) -> CopyRow<'a> {
        CopyRow {
            columns,
            fields: parse_copy_line(line),
        }
    }
}

impl Row for CopyRow<'_> {
    fn get(&self, column: &str) -> Option<Option<&str>> {
        let i = self.columns.iter().position(|c| c == column)?;
        self.fields.get(i).map(|v| v.as_deref())
    }

    fn at(&self, i: usize, column: &str) -> Option<Option<&str>> {
        // Read with the mapping's own column list (the load's COPY): the
        // name at `i` is the one asked for.
        match self.columns.get(i) {
            Some(c) if c == column => self.fields.get(i).map(|v| v.as_deref()),
            _ => self.get(column),
        }
    }
}

/// An exported snapshot and the slot position it stands for.
#[derive(Debug, Clone)]
pub struct At {
    pub name: String,
    pub lsn: u64,
}

/// What a load of tables needs from the capture running it.
pub struct TableLoad<'a> {
    pub cfg: &'a Config,
    pub journal: &'a PgEndpoint,
    pub dp: &'a Depersonalizer,
    /// Where progress is recorded ([`State`]).
    pub store: &'a super::load_state::LoadStateStore,
}

/// One worker's copy of what every table copy needs.
#[derive(Clone)]
struct Copier {
    at: At,
    /// The snapshot rows' commit time (µs): when the load started.
    time: i64,
    window: NaiveDate,
    dp: Depersonalizer,
    slot: String,
    /// The gate's fields, names learned while the load runs
    /// ([`Gate::refresh_during_load`]).
    fields: std::sync::Arc<std::sync::RwLock<gate::Fields>>,
}

impl TableLoad<'_> {
    /// Copies `tables` at snapshot `at` and publishes their rows; returns
    /// the rows published. A table is recorded done in `state` once all
    /// its events are acknowledged.
    pub async fn run(
        &self,
        tables: &[&TableMapping],
        at: &At,
        publisher: &mut Publisher,
        gate: &mut Gate,
        state: &mut State,
    ) -> Result<u64, CaptureError> {
        load_tables(self, tables, at, publisher, gate, state).await
    }
}

async fn load_tables(
    load: &TableLoad<'_>,
    tables: &[&TableMapping],
    at: &At,
    publisher: &mut Publisher,
    gate: &mut Gate,
    state: &mut State,
) -> Result<u64, CaptureError> {
    let (cfg, store) = (load.cfg, load.store);
    let started = Instant::now();
    let window = window_start(chrono::Local::now().date_naive(), cfg.capture.history_years);
    let snapshot_time = chrono::Utc::now().timestamp_micros();
    tracing::info!(tables = tables.len(), window_start = %window, "initial load");
    metrics::gauge!(obs::CAPTURE_SNAPSHOT_TABLES).set(tables.len() as f64);
    let (tx, mut rx) = mpsc::channel::<Item>(10_000 / BATCH);
    let queue: std::sync::Arc<std::sync::Mutex<Vec<TableMapping>>> = std::sync::Arc::new(
        std::sync::Mutex::new(tables.iter().rev().map(|t| (*t).clone()).collect()),
    );
    let fields = std::sync::Arc::new(std::sync::RwLock::new(gate.fields.clone()));
    let (refresher, mut consenting) = gate.refresh_during_load(fields.clone());
    let _refresher = AbortOnDrop(refresher);
    let copier = Copier {
        at: at.clone(),
        time: snapshot_time,
        window,
        dp: load.dp.clone(),
        slot: cfg.capture.slot.clone(),
        fields: fields.clone(),
    };
    let mut workers = Vec::new();
    for _ in 0..cfg.capture.snapshot_connections.max(1) {
        let (tx, queue, copier) = (tx.clone(), queue.clone(), copier.clone());
        let pg_cfg = load.journal.config();
        workers.push(tokio::spawn(async move {
            loop {
                let Some(t) = queue.lock().unwrap().pop() else {
                    return;
                };
                if let Err(e) = copier.copy_table(&pg_cfg, &t, &tx).await {
                    let _ = tx.send(Item::Failed(e)).await;
                    return;
                }
            }
        }));
    }
    drop(tx);
    let bar = crate::progress::bar(
        tables.len() as u64,
        "{spinner} initial load [{bar:30}] {pos}/{len} tables  {msg}  ETA {eta}",
        true,
    );
    let mut rows: u64 = 0;
    let mut pending: Vec<(String, tokio::sync::oneshot::Receiver<()>)> = Vec::new();
    while let Some(item) = rx.recv().await {
        // Tables whose every event is acknowledged are recorded as done.
        let before = pending.len();
        pending.retain_mut(|(table, rx)| match rx.try_recv() {
            Ok(()) => {
                state.tables_done.push(table.clone());
                false
            }
            Err(tokio::sync::oneshot::error::TryRecvError::Empty) => true,
            Err(_) => false,
        });
        if pending.len() != before {
            store.save(state).await?;
            metrics::gauge!(obs::CAPTURE_SNAPSHOT_TABLES_DONE).set(state.tables_done.len() as f64);
        }
        if consenting.has_changed().unwrap_or(false) {
            if let Some(now) = consenting.borrow_and_update().as_ref() {
                gate.keep_consenting(now);
            }
        }
        match item {
            Item::Rows(batch) => {
                for read in batch {
                    match read {
                        Read::Event(e, pk, applied) => {
                            publish_read(&e, &pk, &applied, gate, publisher).await?;
                            rows += 1;
                            if rows % 10_000 == 0 {
                                bar.set_message(format!(
                                    "{rows} rows, {:.0} rows/s",
                                    rows as f64 / started.elapsed().as_secs_f64()
                                ));
                            }
                        }
                        Read::Dead(d) => publisher.dead_letter(d).await?,
                    }
                }
            }
            Item::TableDone(table, n) => {
                // Done once everything sent before this point is acknowledged.
                pending.push((table.clone(), publisher.mark().await?));
                metrics::counter!(obs::CAPTURE_SNAPSHOT_ROWS, "table" => table.clone())
                    .increment(n);
                tracing::info!(table = %table, rows = n, "table copied");
                bar.inc(1);
            }
            Item::Failed(e) => return Err(e),
        }
    }
    for w in workers {
        w.await.map_err(|e| CaptureError::Task(e.to_string()))?;
    }
    // Wait for every acknowledgement before recording the tables as done.
    for (table, rx) in pending {
        rx.await
            .map_err(|_| CaptureError::Task("the acker stopped before acknowledging".into()))?;
        state.tables_done.push(table);
    }
    store.save(state).await?;
    metrics::gauge!(obs::CAPTURE_SNAPSHOT_TABLES_DONE).set(state.tables_done.len() as f64);
    // The stream scrubs with every name the load learned.
    gate.fields = fields.read().unwrap_or_else(|p| p.into_inner()).clone();
    bar.finish_and_clear();
    let secs = started.elapsed().as_secs_f64();
    tracing::info!(
        rows,
        seconds = secs,
        rows_per_second = rows as f64 / secs,
        "initial load finished"
    );
    Ok(rows)
}

/// Where rows read from the journal stand in the log: a snapshot's, or a
/// re-snapshot chunk's high watermark.
pub(super) struct ReadAt {
    /// The position in the rows' event ids (and their dead letters').
    pub id_lsn: u64,
    pub commit_lsn: u64,
    pub lsn: u64,
    pub commit_time_micros: i64,
    pub txid: i64,
}

impl ReadAt {
    /// A row of `t`, mapped (and through the gate's fields), as its READ
    /// event and Kafka key.
    pub(super) fn event(&self, t: &TableMapping, m: super::mapping::Mapped) -> (Event, String) {
        let e = Event {
            event_id: events::snapshot_event_id(self.id_lsn, &t.table, &m.key),
            entity: t.entity,
            op: Op::Read,
            key: m.key,
            source: Source {
                lsn: self.lsn,
                commit_lsn: self.commit_lsn,
                txid: self.txid,
                commit_time_micros: self.commit_time_micros,
                table: t.table.clone(),
                snapshot: true,
            },
            actor: m.actor,
            quality: m.quality,
            after: Some(m.after),
        };
        (e, m.partition_key)
    }

    /// The dead letter of a row of `t` that cannot be mapped.
    pub(super) fn dead_letter(&self, t: &TableMapping, reason: String, slot: &str) -> DeadLetter {
        DeadLetter {
            reason,
            kind: "unmappable",
            table: t.table.clone(),
            entity: Some(t.entity.name),
            op: "READ",
            lsn: crate::lsn::format(self.id_lsn),
            commit_lsn: crate::lsn::format(self.id_lsn),
            txid: self.txid,
            commit_time_micros: self.commit_time_micros,
            capture: slot.to_string(),
            key: None,
            size_bytes: None,
        }
    }
}

/// Publishes a row read from the journal (`e`, its Kafka key `pk`, what
/// the gate took out of it) and, for a medical entity, what it means for
/// the restricted topic.
pub(super) async fn publish_read(
    e: &Event,
    pk: &str,
    applied: &gate::Applied,
    gate: &mut Gate,
    publisher: &mut Publisher,
) -> Result<(), CaptureError> {
    publisher.send_event(e, pk).await?;
    gate.count(e.entity, applied);
    if e.entity.has_medical() {
        let student = e
            .after
            .as_deref()
            .and_then(|a| gate::student_of(e.entity, a));
        let here = gate::At {
            commit_lsn: e.source.commit_lsn,
            lsn: e.source.lsn,
            commit_time_micros: e.source.commit_time_micros,
        };
        gate.row_changed(
            e.entity,
            &e.key,
            student,
            Some((applied, e.op)),
            here,
            publisher,
        )
        .await?;
    }
    Ok(())
}

/// Aborts a task when dropped: the load's refresher ends with the load,
/// however it ends.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// The COPY statement that reads table `t`'s mapped columns, limited to
/// the history window.
pub fn copy_sql(t: &TableMapping, window: NaiveDate) -> String {
    let (schema, name) = t.table.split_once('.').expect("schema.table");
    let col_list = t
        .columns()
        .iter()
        .map(|c| pg::ident(c))
        .collect::<Vec<_>>()
        .join(", ");
    let filter = match &t.history {
        Some(h) => format!(" WHERE {} >= DATE '{window}'", pg::ident(h)),
        None => String::new(),
    };
    format!(
        "COPY (SELECT {col_list} FROM {}.{}{filter}) TO STDOUT",
        pg::ident(schema),
        pg::ident(name)
    )
}

impl Copier {
    /// Copies table `t` at the snapshot, sending its rows as events (or dead
    /// letters) and then `TableDone`.
    async fn copy_table(
        &self,
        pg_cfg: &crate::pg::Target,
        t: &TableMapping,
        tx: &mpsc::Sender<Item>,
    ) -> Result<(), CaptureError> {
        let (snapshot_name, snapshot_lsn, snapshot_time, window, dp, slot) = (
            &self.at.name,
            self.at.lsn,
            self.time,
            self.window,
            &self.dp,
            &self.slot,
        );
        let mut client = pg::connect(pg_cfg).await?;
        let txn = client
            .build_transaction()
            .isolation_level(tokio_postgres::IsolationLevel::RepeatableRead)
            .read_only(true)
            .start()
            .await
            .map_err(PgError::query("starting the snapshot transaction"))?;
        txn.batch_execute(&format!(
            "SET TRANSACTION SNAPSHOT '{}'",
            snapshot_name.replace('\'', "")
        ))
        .await
        .map_err(PgError::query(format!(
            "adopting snapshot {snapshot_name} for {}",
            t.table
        )))?;
        let cols = t.columns();
        let sql = copy_sql(t, window);
        let stream = txn
            .copy_out(&sql)
            .await
            .map_err(PgError::query(format!("COPY of {}", t.table)))?;
        futures::pin_mut!(stream);
        let (commit_lsn, lsn) = events::snapshot_position(snapshot_lsn);
        let read_at = ReadAt {
            id_lsn: snapshot_lsn,
            commit_lsn,
            lsn,
            commit_time_micros: snapshot_time,
            txid: 0,
        };
        let read = |line: &str| {
            let row = CopyRow::parse(cols, line);
            match t.map_row(&row, dp) {
                Ok(mut m) => {
                    let applied = self
                        .fields
                        .read()
                        .unwrap_or_else(|p| p.into_inner())
                        .apply(t.entity, &mut m.after);
                    let (e, pk) = read_at.event(t, m);
                    Read::Event(e, pk, applied)
                }
                Err(u) => Read::Dead(read_at.dead_letter(t, u.0, slot)),
            }
        };
        // PostgreSQL sends a row a message: a line is split over messages
        // only by a proxy, and then waits in `carry`.
        let mut carry = Vec::new();
        let mut batch = Vec::with_capacity(BATCH);
        let mut n = 0u64;
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.map_err(PgError::query(format!("COPY of {}", t.table)))?;
            let whole = carry.is_empty();
            if !whole {
                carry.extend_from_slice(&chunk);
            }
            let data: &[u8] = if whole { &chunk } else { &carry };
            let mut start = 0;
            while let Some(pos) = data[start..].iter().position(|b| *b == b'\n') {
                let line = std::str::from_utf8(&data[start..start + pos]).unwrap_or_default();
                batch.push(read(line));
                n += 1;
                start += pos + 1;
            }
            if whole {
                carry.extend_from_slice(&chunk[start..]);
            } else {
                carry.drain(..start);
            }
            if batch.len() >= BATCH
                && tx
                    .send(Item::Rows(std::mem::replace(
                        &mut batch,
                        Vec::with_capacity(BATCH),
                    )))
                    .await
                    .is_err()
            {
                return Ok(());
            }
        }
        if !batch.is_empty() && tx.send(Item::Rows(batch)).await.is_err() {
            return Ok(());
        }
        let _ = tx.send(Item::TableDone(t.table.clone(), n)).await;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn window_starts_on_the_first_of_september() {
        let d = |y, m, dd| NaiveDate::from_ymd_opt(y, m, dd).unwrap();
        assert_eq!(window_start(d(2026, 11, 23), 3), d(2023, 9, 1));
        assert_eq!(window_start(d(2026, 8, 31), 3), d(2022, 9, 1));
    }

    #[test]
    fn copy_lines_unescape() {
        assert_eq!(
            parse_copy_line("1\t\\N\ta\\tb\\\\c"),
            vec![Some("1".into()), None, Some("a\tb\\c".into())]
        );
        let cols = vec!["id".to_string(), "note".to_string()];
        let row = CopyRow::parse(&cols, "7\t\\N");
        assert_eq!(row.get("id"), Some(Some("7")));
        assert_eq!(row.get("note"), Some(None));
        assert_eq!(row.get("gone"), None);
    }
}

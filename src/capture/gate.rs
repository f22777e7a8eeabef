//! The privacy gate between a mapped row and Kafka: free text loses its
//! names and numbers, medical detail leaves the general event, and reaches
//! the restricted topic only while the student's parent consents.
//!
//! ```text
//!   mapped row ──scrub free text──▶ general event (medical fields null) ──▶ vitrina.<entity>.v1
//!        └──medical detail──▶ consent active? ──yes──▶ vitrina.medical_detail.v1 (compacted)
//!   consent changed ──▶ waits (≤ FLIP_WAIT, ≤ FLIP_BATCH students) ──▶ flight takes off: one query
//!        per table for the waiting students' rows that hold detail now, on its own task
//!   … the stream goes on; medical row changes wait behind the flight …
//!   answer ──▶ flight lands: granted: published; else: tombstones; then the row changes that waited
//! ```
//!
//! Invariants:
//! - No general event carries a medical field's value, whatever the
//!   mapping says: the split follows the contract's field classes
//!   ([`crate::events::contract::Class`]), after mapping and before encoding.
//! - Detail is published only for a student in the consenting set; the set
//!   follows the journal *now*: loaded at start and again inside the
//!   initial load's exported snapshot (what changed between the two is in
//!   neither the first reading nor the stream), narrowed every `REFRESH`
//!   while the load runs (a revocation since the snapshot), re-read for the students
//!   of every consent change the stream carries when their flip runs, and
//!   re-read whole every `REFRESH` (so a revocation stops publication
//!   within that time even when capture is behind the journal). A student
//!   whose flip waits counts as not consenting.
//! - Nothing after a consent change is confirmed to the slot before its
//!   flip's records are acknowledged: the publisher holds commit markers
//!   while a flip waits or flies.
//! - A flight's queries read the journal while the stream goes on; every
//!   medical row change streamed meanwhile is published after the flight's
//!   records, so the restricted topic ends as a flush done in place (the
//!   stream stopped for its queries) would leave it.
//! - Only medical-data consents flip: a consent of another kind changes
//!   nothing on the restricted topic.
//! - The restricted topic holds detail only of rows that held it when last
//!   published: a deleted row, or a changed one that is not published with
//!   detail, gets a tombstone (a tombstone for a key that never had detail
//!   erases nothing and is harmless), so a revocation needs to erase only
//!   the rows that hold detail in the journal now.
//! - The names to scrub are read at start, inside the snapshot, every
//!   `NAMES_REFRESH` while the load runs, and learned from every person row
//!   the stream carries; they stay in this process's memory.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use super::mapping::{Mapping, Row, TableMapping};
use super::publisher::Publisher;
use super::CaptureError;
use crate::events::contract::{Class, Entity};
use crate::events::{schema, Detail, Op, Val};
use crate::observability as obs;
use crate::pg::PgError;
use crate::privacy::scrub::Scrubber;

/// Consent kind that allows medical detail to leave the region.
pub const CONSENT_KIND: &str = "medical_data_transfer";
/// How often the consenting set is re-read whole from the journal.
pub const REFRESH: Duration = Duration::from_secs(10);
/// How often an initial load re-reads the names to scrub.
pub const NAMES_REFRESH: Duration = Duration::from_secs(60);

/// Where a change sits in the WAL, for the detail it publishes.
#[derive(Debug, Clone, Copy, Default)]
pub struct At {
    pub commit_lsn: u64,
    pub lsn: u64,
    pub commit_time_micros: i64,
}

/// The pure part of the gate: scrubbing and splitting a state. Cloned into
/// the initial load's workers.
#[derive(Debug, Clone, Default)]
pub struct Fields {
    scrubber: Scrubber,
    /// Whether free text is scrubbed (`capture.scrub_free_text`).
    scrub: bool,
}

/// What [`Fields::apply`] did to one state.
#[derive(Debug, Default)]
pub struct Applied {
    /// The medical values taken out, by field name (every medical field of
    /// the contract); `None` when the entity has no medical field.
    pub detail: Option<Vec<(&'static str, Option<String>)>>,
    /// Replacements per field index.
    pub scrubbed: Vec<(usize, u32)>,
}

impl Applied {
    /// Whether the row holds any medical value.
    pub fn holds_detail(&self) -> bool {
        self.detail
            .as_ref()
            .is_some_and(|d| d.iter().any(|(_, v)| v.is_some()))
    }
}

impl Fields {
    pub fn new(scrub: bool) -> Fields {
        Fields {
            scrubber: Scrubber::default(),
            scrub,
        }
    }

    pub fn learn(&mut self, name: &str) {
        self.scrubber.learn(name);
    }

    pub fn names(&self) -> usize {
        self.scrubber.len()
    }

    /// Scrubs the free text of `after` and moves its medical values out.
    pub fn apply(&self, entity: &Entity, after: &mut [Val]) -> Applied {
        let mut out = Applied::default();
        if entity.has_medical() {
            out.detail = Some(detail_slots());
        }
        for (i, f) in entity.fields.iter().enumerate() {
            if f.class == Class::Plain {
                continue;
            }
            let medical = is_medical(f.class, |field| {
                match entity.index(field).map(|j| &after[j]) {
                    Some(Val::Str(s)) => Some(s.as_str()),
                    _ => None,
                }
            });
            if medical {
                let v = match std::mem::replace(&mut after[i], Val::Null) {
                    Val::Str(s) => Some(self.scrub_counted(&s, i, &mut out.scrubbed)),
                    _ => None,
                };
                put(out.detail.as_mut(), f.name, v);
            } else if self.scrub {
                if let Val::Str(s) = &after[i] {
                    let (clean, n) = self.scrubber.scrub(s);
                    if n > 0 {
                        after[i] = Val::Str(clean);
                        out.scrubbed.push((i, n));
                    }
                }
            }
        }
        out
    }

    /// The medical detail of a row given as text by field name (a row the
    /// gate read from the journal), scrubbed: what [`Fields::apply`] would
    /// move out of its mapped state.
    /// Replacements are added to `counts` by field index, as
    /// [`Applied::scrubbed`] holds them.
    pub fn detail_of<'a>(
        &self,
        entity: &Entity,
        text: impl Fn(&str) -> Option<&'a str>,
        counts: &mut Vec<(usize, u32)>,
    ) -> Vec<(&'static str, Option<String>)> {
        let mut detail = detail_slots();
        for (i, f) in entity.fields.iter().enumerate() {
            if matches!(f.class, Class::Medical | Class::MedicalWhen(..))
                && is_medical(f.class, &text)
            {
                let v = text(f.name).map(|s| self.scrub_counted(s, i, counts));
                put(Some(&mut detail), f.name, v);
            }
        }
        detail
    }

    /// Detail is text a person typed too: scrubbed before it goes anywhere.
    fn scrub_counted(&self, s: &str, i: usize, counts: &mut Vec<(usize, u32)>) -> String {
        if !self.scrub {
            return s.to_string();
        }
        let (clean, n) = self.scrubber.scrub(s);
        if n > 0 {
            counts.push((i, n));
        }
        clean
    }
}

/// One slot per medical field of the contract, all empty.
fn detail_slots() -> Vec<(&'static str, Option<String>)> {
    schema::medical_fields()
        .iter()
        .map(|n| (*n, None))
        .collect()
}

fn put(detail: Option<&mut Vec<(&'static str, Option<String>)>>, field: &str, v: Option<String>) {
    if let Some(slot) = detail.and_then(|d| d.iter_mut().find(|(n, _)| *n == field)) {
        slot.1 = v;
    }
}

/// Whether a field of class `class` carries medical detail in a state
/// whose text values `text` gives by field name.
fn is_medical<'a>(class: Class, text: impl Fn(&str) -> Option<&'a str>) -> bool {
    match class {
        Class::Medical => true,
        Class::MedicalWhen(field, value) => text(field) == Some(value),
        Class::Plain | Class::FreeText => false,
    }
}

/// Where the consents are in the journal.
struct ConsentTable {
    table: String,
    key: Vec<String>,
    student: String,
    kind: String,
    status: String,
}

/// A journal table with medical fields: how to read the rows of a set of
/// students that hold detail now.
struct MedicalTable {
    mapping: TableMapping,
    /// The columns `sql` returns after the student (as text).
    columns: Vec<String>,
    /// `$1`: the students (bigint[]).
    sql: String,
}

impl MedicalTable {
    fn new(t: &TableMapping) -> Option<MedicalTable> {
        let student = t.column_of("student_id")?.to_string();
        let mut columns: Vec<String> = t.key.clone();
        // Rows that can hold detail now: a medical column set (and, for a
        // field medical only on a condition, the condition holds). A field
        // or condition not read straight from a column (a hash) makes every
        // row of the student a candidate; the gate checks each row anyway.
        let mut holds = Vec::new();
        let mut every_row = false;
        for f in t.entity.fields {
            let when = match f.class {
                Class::Medical => None,
                Class::MedicalWhen(field, value) => Some((field, value)),
                _ => continue,
            };
            let Some(col) = t.column_of(f.name) else {
                every_row = true;
                continue;
            };
            columns.push(col.to_string());
            let mut cond = format!("{} IS NOT NULL", crate::pg::ident(col));
            if let Some((field, value)) = when {
                let Some(wcol) = t.column_of(field) else {
                    every_row = true;
                    continue;
                };
                columns.push(wcol.to_string());
                cond = format!(
                    "{cond} AND {}::text = {}",
                    crate::pg::ident(wcol),
                    crate::pg::literal(value)
                );
            }
            holds.push(format!("({cond})"));
        }
        columns.sort();
        columns.dedup();
        let filter = if every_row || holds.is_empty() {
            String::new()
        } else {
            format!(" AND ({})", holds.join(" OR "))
        };
        let select: Vec<String> = columns
            .iter()
            .map(|c| format!("{}::text", crate::pg::ident(c)))
            .collect();
        let sql = format!(
            "SELECT {s}::bigint, {cols} FROM {t} WHERE {s} = ANY($1::bigint[]){filter}",
            s = crate::pg::ident(&student),
            cols = select.join(", "),
            t = quoted(&t.table),
        );
        Some(MedicalTable {
            mapping: t.clone(),
            columns,
            sql,
        })
    }
}

/// A row [`MedicalTable::sql`] returned, by column name.
struct Candidate<'a> {
    row: &'a tokio_postgres::Row,
    columns: &'a [String],
}

impl Row for Candidate<'_> {
    fn get(&self, column: &str) -> Option<Option<&str>> {
        let i = self.columns.iter().position(|c| c == column)?;
        Some(self.row.get::<_, Option<&str>>(i + 1))
    }
}

/// Consent changes wait at most this long for their flip (while they wait,
/// the transactions after them are not confirmed to the slot)…
pub const FLIP_WAIT: Duration = Duration::from_millis(100);
/// … or until this many students wait.
pub const FLIP_BATCH: usize = 500;
/// Medical row changes held behind a flight at most; past this the stream
/// waits for the flight to land.
pub const MAX_DEFERRED: usize = 10_000;

/// A flush in the air: its journal queries run on their own task while the
/// stream goes on. It lands (publishes its records) at the next commit or
/// wake after the queries answer; until then every medical row change the
/// stream brings waits behind it, so the restricted topic gets exactly the
/// records a flush done in place would have sent, in the same order.
struct Flight {
    /// The students it flips, with the position of each one's latest change.
    pending: HashMap<i64, At>,
    answer: tokio::sync::oneshot::Receiver<Result<Answer, CaptureError>>,
    deferred: Vec<Deferred>,
    /// How many commits the publisher held when a consent change first
    /// waited after take-off: those land with this flight, the rest wait for
    /// the next one.
    held_before_next: Option<usize>,
}

/// What the journal answered a flight: the students consenting now, and per
/// medical table their rows that hold detail now.
struct Answer {
    granted: HashSet<i64>,
    rows: Vec<Vec<tokio_postgres::Row>>,
    took: Duration,
}

/// A medical row change held behind a flight, as [`Gate::row_changed`] got it.
struct Deferred {
    entity: &'static Entity,
    key: String,
    student: Option<i64>,
    change: Option<(Applied, Op)>,
    at: At,
}

/// The gate of a running capture: [`Fields`] plus the consenting set and
/// the journal connection that keeps it true.
pub struct Gate {
    pub fields: Fields,
    client: std::sync::Arc<tokio_postgres::Client>,
    /// The queries of the names to scrub (none when free text is kept).
    names_sql: Vec<String>,
    consents: Option<ConsentTable>,
    medical: Vec<MedicalTable>,
    /// Students whose parent consents now (never one in `pending`).
    active: HashSet<i64>,
    /// Students whose consent changed and whose detail is yet to be
    /// published or erased, with the position of the latest change.
    pending: HashMap<i64, At>,
    pending_since: Option<Instant>,
    /// Consent key → student, for consent rows deleted later.
    consent_students: HashMap<String, i64>,
    refreshed: Instant,
    /// One counter handle per (entity, field) scrubbed.
    counters: HashMap<(&'static str, usize), metrics::Counter>,
    /// Where the flushes' time is summed (capture's progress).
    pub(super) progress: Option<std::sync::Arc<super::Progress>>,
    flight: Option<Flight>,
    /// Called when a flight's answer arrives (wakes the stream loop).
    pub(super) wake: Option<std::sync::Arc<dyn Fn() + Send + Sync>>,
}

fn q(what: &'static str) -> impl FnOnce(tokio_postgres::Error) -> PgError {
    PgError::query(what)
}

fn quoted(table: &str) -> String {
    match table.split_once('.') {
        Some((s, t)) => format!("{}.{}", crate::pg::ident(s), crate::pg::ident(t)),
        None => crate::pg::ident(table),
    }
}

impl Gate {
    /// Loads the names and the consenting set from the journal. A capture
    /// that loads a snapshot reads them again inside it
    /// ([`Gate::read_at_snapshot`]).
    pub async fn open(
        client: tokio_postgres::Client,
        mapping: &Mapping,
        scrub: bool,
    ) -> Result<Gate, CaptureError> {
        let names_sql = if scrub {
            mapping
                .names
                .iter()
                .map(|n| {
                    let cols: Vec<String> =
                        n.columns.iter().map(|c| crate::pg::ident(c)).collect();
                    format!(
                        "SELECT DISTINCT x FROM {t}, unnest(ARRAY[{cols}]::text[]) AS x WHERE x IS NOT NULL",
                        t = quoted(&n.table),
                        cols = cols.join(", ")
                    )
                })
                .collect()
        } else {
            Vec::new()
        };
        let consents = mapping.of_entity("consent").and_then(|tm| {
            Some(ConsentTable {
                table: tm.table.clone(),
                key: tm.key.clone(),
                student: tm.column_of("student_id")?.to_string(),
                kind: tm.column_of("kind")?.to_string(),
                status: tm.column_of("status")?.to_string(),
            })
        });
        let medical = mapping
            .tables
            .iter()
            .filter(|t| t.entity.has_medical())
            .filter_map(MedicalTable::new)
            .collect();
        let mut gate = Gate {
            fields: Fields::new(scrub),
            client: std::sync::Arc::new(client),
            names_sql,
            consents,
            medical,
            active: HashSet::new(),
            pending: HashMap::new(),
            pending_since: None,
            consent_students: HashMap::new(),
            refreshed: Instant::now(),
            counters: HashMap::new(),
            progress: None,
            flight: None,
            wake: None,
        };
        gate.read_journal().await?;
        Ok(gate)
    }

    /// The names to scrub (learned, never forgotten) and the consenting set
    /// (replaced), as the connection's transaction shows them.
    async fn read_journal(&mut self) -> Result<(), CaptureError> {
        for n in read_names(&self.client, &self.names_sql).await? {
            self.fields.learn(&n);
        }
        if self.fields.scrub {
            tracing::info!(
                names = self.fields.names(),
                "free text: names to replace loaded"
            );
        }
        self.active = self.read_active().await?;
        metrics::gauge!(obs::CAPTURE_CONSENTING).set(self.active.len() as f64);
        Ok(())
    }

    /// Reads the names and the consenting set again inside the exported
    /// snapshot `snapshot`, before a row of it is published: a consent
    /// revoked or a person added after [`Gate::open`] and before the slot
    /// existed is in neither the first reading nor the stream.
    pub async fn read_at_snapshot(&mut self, snapshot: &str) -> Result<(), CaptureError> {
        self.client
            .batch_execute(&format!(
                "BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY; SET TRANSACTION SNAPSHOT {}",
                crate::pg::literal(snapshot)
            ))
            .await
            .map_err(q(
                "adopting the exported snapshot to read consents and names",
            ))?;
        let read = self.read_journal().await;
        let end = if read.is_ok() { "COMMIT" } else { "ROLLBACK" };
        let ended = self
            .client
            .batch_execute(end)
            .await
            .map_err(q("ending the consent and name reading at the snapshot"));
        read?;
        ended?;
        Ok(())
    }

    /// A task that re-reads the journal while an initial load runs, which
    /// neither the snapshot nor (until the load ends) the stream shows: the
    /// consenting set every [`REFRESH`], sent on the returned channel (the
    /// load keeps only students in both it and the snapshot's set), and
    /// the names every [`NAMES_REFRESH`], learned into `fields` (the load's
    /// workers scrub with it).
    pub(super) fn refresh_during_load(
        &self,
        fields: std::sync::Arc<std::sync::RwLock<Fields>>,
    ) -> (
        tokio::task::JoinHandle<()>,
        tokio::sync::watch::Receiver<Option<HashSet<i64>>>,
    ) {
        let (tx, rx) = tokio::sync::watch::channel(None);
        let client = self.client.clone();
        let names_sql = self.names_sql.clone();
        let active_sql = self.active_sql();
        let task = tokio::spawn(async move {
            let mut last_names = Instant::now();
            loop {
                tokio::time::sleep(REFRESH).await;
                if let Some(sql) = &active_sql {
                    match query_active(&client, sql).await {
                        Ok(rows) => {
                            let _ = tx.send(Some(rows.into_iter().map(|(_, s)| s).collect()));
                        }
                        Err(e) => {
                            metrics::counter!(obs::CAPTURE_ERRORS, "kind" => "refresh")
                                .increment(1);
                            tracing::warn!(error = %e, "re-reading the consents during the load failed; the next try is in 10 s");
                        }
                    }
                }
                if names_sql.is_empty() || last_names.elapsed() < NAMES_REFRESH {
                    continue;
                }
                last_names = Instant::now();
                match read_names(&client, &names_sql).await {
                    Ok(names) => {
                        let mut f = fields.write().unwrap_or_else(|p| p.into_inner());
                        for n in names {
                            f.learn(&n);
                        }
                    }
                    Err(e) => {
                        metrics::counter!(obs::CAPTURE_ERRORS, "kind" => "refresh").increment(1);
                        tracing::warn!(error = %e, "re-reading the names during the load failed; the next try is in a minute");
                    }
                }
            }
        });
        (task, rx)
    }

    /// During an initial load: students not in `now` (a revocation since
    /// the snapshot) stop counting as consenting; the stream's flip for
    /// the revocation erases what was published before. A grant since the
    /// snapshot waits for its flip.
    pub(super) fn keep_consenting(&mut self, now: &HashSet<i64>) {
        self.active.retain(|s| now.contains(s));
        metrics::gauge!(obs::CAPTURE_CONSENTING).set(self.active.len() as f64);
    }

    /// The consent table's `SELECT` of granted medical-data consents, with
    /// `extra` appended to its condition.
    fn granted_sql(&self, c: &ConsentTable, select: &str, extra: &str) -> String {
        format!(
            "SELECT {select} FROM {t} WHERE {kind} = $1 AND {status} = 'granted'{extra}",
            t = quoted(&c.table),
            kind = crate::pg::ident(&c.kind),
            status = crate::pg::ident(&c.status),
        )
    }

    /// The query of every granted consent's key and student (`$1`: the kind).
    fn active_sql(&self) -> Option<String> {
        let c = self.consents.as_ref()?;
        let key: Vec<String> = c
            .key
            .iter()
            .map(|k| format!("{}::text", crate::pg::ident(k)))
            .collect();
        let select = format!(
            "concat_ws(':', {}), {}::bigint",
            key.join(", "),
            crate::pg::ident(&c.student)
        );
        Some(self.granted_sql(c, &select, ""))
    }

    /// Students with an active consent now, and the consent keys.
    async fn read_active(&mut self) -> Result<HashSet<i64>, CaptureError> {
        let Some(sql) = self.active_sql() else {
            return Ok(HashSet::new());
        };
        let mut active = HashSet::new();
        for (k, s) in query_active(&self.client, &sql).await? {
            self.consent_students.insert(k, s);
            active.insert(s);
        }
        Ok(active)
    }

    /// The query for which of the students `$2` have a parent consenting
    /// now, as the journal says (`$1`: the consent kind).
    fn consenting_sql(&self) -> Option<String> {
        let c = self.consents.as_ref()?;
        let s = crate::pg::ident(&c.student);
        Some(self.granted_sql(
            c,
            &format!("DISTINCT {s}::bigint"),
            &format!(" AND {s} = ANY($2::bigint[])"),
        ))
    }

    /// Counts replacements per (entity, field), never values.
    pub fn count(&mut self, entity: &'static Entity, applied: &Applied) {
        self.count_scrubbed(entity, &applied.scrubbed);
    }

    fn count_scrubbed(&mut self, entity: &'static Entity, scrubbed: &[(usize, u32)]) {
        for (i, n) in scrubbed {
            self.counters
                .entry((entity.name, *i))
                .or_insert_with(|| {
                    metrics::counter!(obs::CAPTURE_SCRUBBED, "entity" => entity.name, "field" => entity.fields[*i].name)
                })
                .increment(*n as u64);
        }
    }

    /// Learns the names of a person row the stream carries.
    pub fn learn_row(&mut self, row: &dyn Row, columns: &[String]) {
        if !self.fields.scrub {
            return;
        }
        for c in columns {
            if let Some(Some(v)) = row.get(c) {
                self.fields.learn(v);
            }
        }
    }

    /// Publishes what a changed row of a medical entity means for the
    /// restricted topic: its detail under consent, else a tombstone
    /// (`applied` None: deleted). While a flight is in the air the change
    /// waits behind it ([`Flight`]).
    pub async fn row_changed(
        &mut self,
        entity: &'static Entity,
        key: &str,
        student: Option<i64>,
        applied: Option<(&Applied, Op)>,
        at: At,
        publisher: &mut Publisher,
    ) -> Result<(), CaptureError> {
        let Some(f) = &mut self.flight else {
            return self
                .publish_row(entity, key, student, applied, at, publisher)
                .await;
        };
        f.deferred.push(Deferred {
            entity,
            key: key.to_string(),
            student,
            change: applied.map(|(a, op)| {
                let kept = Applied {
                    detail: a.detail.clone(),
                    scrubbed: Vec::new(),
                };
                (kept, op)
            }),
            at,
        });
        if f.deferred.len() >= MAX_DEFERRED {
            self.land(publisher, true).await?;
        }
        Ok(())
    }

    /// [`Gate::row_changed`] now: a new row without published detail
    /// needs no record; a changed one does, whatever the consent: a flip
    /// may have published it from the journal's newer state, or under a
    /// consent since revoked, and a revocation erases only rows holding
    /// detail.
    async fn publish_row(
        &mut self,
        entity: &'static Entity,
        key: &str,
        student: Option<i64>,
        applied: Option<(&Applied, Op)>,
        at: At,
        publisher: &mut Publisher,
    ) -> Result<(), CaptureError> {
        let Some((applied, op)) = applied else {
            return publisher.send_tombstone(entity.name, key).await;
        };
        let Some(detail) = &applied.detail else {
            return Ok(());
        };
        let active = student.is_some_and(|s| self.active.contains(&s));
        if active && applied.holds_detail() {
            publisher
                .send_detail(&Detail {
                    entity,
                    key: key.to_string(),
                    student_id: student,
                    fields: detail.clone(),
                    commit_lsn: at.commit_lsn,
                    lsn: at.lsn,
                    commit_time_micros: at.commit_time_micros,
                })
                .await
        } else if active || !matches!(op, Op::Create | Op::Read) {
            publisher.send_tombstone(entity.name, key).await
        } else {
            Ok(())
        }
    }

    /// A consent row changed (`student` None: deleted, looked up by key;
    /// `kind` the consent's kind when the row says): the student's detail
    /// is published or erased at the next [`Gate::flush`], as the journal's
    /// consents then say. Until then the student counts as not consenting.
    /// A consent of another kind (photo publication, say) changes nothing
    /// here, unless the row was a medical-data consent before.
    pub fn consent_changed(
        &mut self,
        key: &str,
        student: Option<i64>,
        kind: Option<&str>,
        at: At,
        publisher: &mut Publisher,
    ) {
        // Unknown kind: taken as medical (a flip too many is harmless).
        let medical = kind.is_none_or(|k| k == CONSENT_KIND);
        let student = match student {
            Some(s) if medical => {
                self.consent_students.insert(key.to_string(), s);
                s
            }
            // Another kind now: a flip only if it was a medical one.
            Some(s) => match self.consent_students.remove(key) {
                Some(_) => s,
                None => return,
            },
            None => match self.consent_students.remove(key) {
                Some(s) => s,
                None => return,
            },
        };
        // Always acted on, even when the consenting set already agrees: it
        // follows the journal now, so after a restart it may already hold
        // a grant whose change the stream is only now replaying, and the
        // student's existing detail would never be published. Publishing
        // again is harmless (the topic is compacted; the last record wins).
        self.wait_for_flip(student, at, publisher);
    }

    fn wait_for_flip(&mut self, student: i64, at: At, publisher: &mut Publisher) {
        self.active.remove(&student);
        self.pending.insert(student, at);
        self.pending_since.get_or_insert_with(Instant::now);
        if let Some(f) = &mut self.flight {
            f.held_before_next.get_or_insert(publisher.held_len());
        }
        publisher.hold();
    }

    /// Whether consent changes wait for their flip, or a flight is in the air.
    pub fn has_pending(&self) -> bool {
        !self.pending.is_empty() || self.flight.is_some()
    }

    /// Whether the waiting flips are due ([`FLIP_WAIT`], [`FLIP_BATCH`]).
    fn flush_due(&self) -> bool {
        self.pending.len() >= FLIP_BATCH
            || self.pending_since.is_some_and(|t| t.elapsed() >= FLIP_WAIT)
    }

    /// Re-reads the whole consenting set every [`REFRESH`]; every student
    /// it disagrees on waits for a flip.
    pub async fn maybe_refresh(
        &mut self,
        at: At,
        publisher: &mut Publisher,
    ) -> Result<(), CaptureError> {
        if self.refreshed.elapsed() < REFRESH || self.consents.is_none() {
            return Ok(());
        }
        self.refreshed = Instant::now();
        let now = self.read_active().await?;
        let flying = |s: &i64| {
            self.flight
                .as_ref()
                .is_some_and(|f| f.pending.contains_key(s))
        };
        let changed: Vec<i64> = now
            .symmetric_difference(&self.active)
            .filter(|s| !self.pending.contains_key(s) && !flying(s))
            .copied()
            .collect();
        for s in changed {
            self.wait_for_flip(s, at, publisher);
        }
        Ok(())
    }

    /// Lands a flight whose answer has come, and takes off with the flips
    /// that are due; never waits for the journal. With nothing waiting,
    /// the held commits go to the acker.
    pub async fn flush(&mut self, publisher: &mut Publisher) -> Result<(), CaptureError> {
        self.land(publisher, false).await?;
        if self.flight.is_none() {
            if self.pending.is_empty() {
                return publisher.release().await;
            }
            if self.flush_due() {
                self.take_off();
            }
        }
        Ok(())
    }

    /// Every waiting flip flown and landed (at shutdown), then the held
    /// commits released.
    pub async fn flush_all(&mut self, publisher: &mut Publisher) -> Result<(), CaptureError> {
        loop {
            self.land(publisher, true).await?;
            if self.pending.is_empty() {
                return publisher.release().await;
            }
            self.take_off();
        }
    }

    /// The waiting flips, in one flight: the consents of every waiting
    /// student read once, then per medical table one query for their rows
    /// that hold detail now, all pipelined on the gate's connection.
    fn take_off(&mut self) {
        if self.pending.is_empty() || self.flight.is_some() {
            return;
        }
        let pending = std::mem::take(&mut self.pending);
        self.pending_since = None;
        let students: Vec<i64> = pending.keys().copied().collect();
        let client = self.client.clone();
        let consenting = self.consenting_sql();
        let tables: Vec<String> = self.medical.iter().map(|m| m.sql.clone()).collect();
        let wake = self.wake.clone();
        let (tx, rx) = tokio::sync::oneshot::channel();
        tokio::spawn(async move {
            // A crash before the flip's records are sent, after time enough
            // for capture to tell the server a confirmation (tests/privacy.rs).
            if let Some(ms) = crate::failpoint!("capture-flush-crash") {
                tokio::time::sleep(crate::failpoint::millis(&ms)).await;
                crate::failpoint::crash();
            }
            let asked = Instant::now();
            let answer = ask(&client, consenting.as_deref(), &tables, &students).await;
            let answer = answer.map(|(granted, rows)| Answer {
                granted,
                rows,
                took: asked.elapsed(),
            });
            // The journal changes between the flight's queries and its
            // landing (tests/privacy.rs).
            if let Some(ms) = crate::failpoint!("capture-flight-lands-late") {
                tokio::time::sleep(crate::failpoint::millis(&ms)).await;
            }
            let _ = tx.send(answer);
            if let Some(w) = wake {
                w();
            }
        });
        self.flight = Some(Flight {
            pending,
            answer: rx,
            deferred: Vec::new(),
            held_before_next: None,
        });
    }

    /// The flight's records (consenting students' detail published, the
    /// others' erased), then the row changes deferred behind it, then the
    /// commits before the next consent change. `wait`: for the answer;
    /// otherwise a flight still in the air stays there (false).
    async fn land(&mut self, publisher: &mut Publisher, wait: bool) -> Result<bool, CaptureError> {
        use tokio::sync::oneshot::error::TryRecvError;
        let Some(mut f) = self.flight.take() else {
            return Ok(false);
        };
        let gone = || CaptureError::Task("the consent flush's queries stopped".into());
        let answer = if wait {
            (&mut f.answer).await.map_err(|_| gone())?
        } else {
            match f.answer.try_recv() {
                Ok(a) => a,
                Err(TryRecvError::Empty) => {
                    self.flight = Some(f);
                    return Ok(false);
                }
                Err(TryRecvError::Closed) => return Err(gone()),
            }
        };
        let Answer {
            granted,
            rows: per_table,
            took,
        } = answer?;
        let started = Instant::now();
        let mut records = 0u64;
        tracing::debug!(
            students = f.pending.len(),
            granted = granted.len(),
            "medical-data consents changed; publishing or erasing their detail on the restricted topic"
        );
        // Free-text replacements in the detail published, per entity.
        let mut counted: Vec<(&'static Entity, Vec<(usize, u32)>)> = Vec::new();
        for (m, rows) in self.medical.iter().zip(&per_table) {
            let entity = m.mapping.entity;
            let mut scrubbed = Vec::new();
            for row in rows {
                let student: i64 = row.get(0);
                let c = Candidate {
                    row,
                    columns: &m.columns,
                };
                let Ok(key) = m.mapping.key_of(&c) else {
                    continue;
                };
                let Some(at) = f.pending.get(&student) else {
                    continue;
                };
                if !granted.contains(&student) {
                    records += 1;
                    publisher.send_tombstone(entity.name, &key).await?;
                    continue;
                }
                // Read (and scrubbed) only for what is published.
                let mut row_scrubbed = Vec::new();
                let detail = self.fields.detail_of(
                    entity,
                    |field| {
                        m.mapping
                            .column_of(field)
                            .and_then(|col| c.get(col).flatten())
                    },
                    &mut row_scrubbed,
                );
                if detail.iter().any(|(_, v)| v.is_some()) {
                    scrubbed.append(&mut row_scrubbed);
                    records += 1;
                    publisher
                        .send_detail(&Detail {
                            entity,
                            key,
                            student_id: Some(student),
                            fields: detail,
                            commit_lsn: at.commit_lsn,
                            lsn: at.lsn,
                            commit_time_micros: at.commit_time_micros,
                        })
                        .await?;
                }
            }
            counted.push((entity, scrubbed));
        }
        for (entity, scrubbed) in &counted {
            self.count_scrubbed(entity, scrubbed);
        }
        // A student whose consent changed again meanwhile waits for the
        // next flight, not consenting until then.
        let waiting = &self.pending;
        self.active
            .extend(granted.into_iter().filter(|s| !waiting.contains_key(s)));
        metrics::gauge!(obs::CAPTURE_CONSENTING).set(self.active.len() as f64);
        for d in std::mem::take(&mut f.deferred) {
            let change = d.change.as_ref().map(|(a, op)| (a, *op));
            self.publish_row(d.entity, &d.key, d.student, change, d.at, publisher)
                .await?;
        }
        if self.pending.is_empty() {
            publisher.release().await?;
        } else {
            publisher
                .release_first(f.held_before_next.unwrap_or(0))
                .await?;
        }
        if let Some(p) = &self.progress {
            let spent = &p.spent;
            super::Spent::add(&spent.flush_micros, started);
            let q = took.as_micros() as u64;
            spent.flush_query_micros.fetch_add(q, Ordering::Relaxed);
            spent.flushes.fetch_add(1, Ordering::Relaxed);
            spent.flush_records.fetch_add(records, Ordering::Relaxed);
        }
        Ok(true)
    }
}

/// Every name the queries `sql` return.
async fn read_names(
    client: &tokio_postgres::Client,
    sql: &[String],
) -> Result<Vec<String>, CaptureError> {
    let mut names = Vec::new();
    for q1 in sql {
        for r in client
            .query(q1.as_str(), &[])
            .await
            .map_err(q("reading the names to replace in free text"))?
        {
            names.push(r.get::<_, String>(0));
        }
    }
    Ok(names)
}

/// The granted consents' keys and students ([`Gate::active_sql`]).
async fn query_active(
    client: &tokio_postgres::Client,
    sql: &str,
) -> Result<Vec<(String, i64)>, CaptureError> {
    let rows = client
        .query(sql, &[&CONSENT_KIND])
        .await
        .map_err(q("reading the medical-data consents"))?;
    Ok(rows.into_iter().map(|r| (r.get(0), r.get(1))).collect())
}

/// A flight's queries, pipelined on one connection: the consents of
/// `students` (none without a consent table) and per medical table its
/// query's rows.
async fn ask(
    client: &tokio_postgres::Client,
    consenting: Option<&str>,
    tables: &[String],
    students: &[i64],
) -> Result<(HashSet<i64>, Vec<Vec<tokio_postgres::Row>>), CaptureError> {
    let granted = async {
        let Some(sql) = consenting else {
            return Ok(HashSet::new());
        };
        let rows = client
            .query(sql, &[&CONSENT_KIND, &students])
            .await
            .map_err(q("checking students' medical-data consents"))?;
        Ok::<_, CaptureError>(rows.iter().map(|r| r.get(0)).collect())
    };
    let per_table = futures::future::try_join_all(tables.iter().map(|sql| async move {
        client
            .query(sql, &[&students])
            .await
            .map_err(|e| CaptureError::from(q("reading students' medical rows")(e)))
    }));
    futures::try_join!(granted, per_table)
}

/// The student of a state, for entities that have one.
pub fn student_of(entity: &Entity, after: &[Val]) -> Option<i64> {
    match after.get(entity.index("student_id")?)? {
        Val::Long(id) => Some(*id),
        _ => None,
    }
}

#[cfg(test)]
#[path = "gate_tests.rs"]
mod tests;

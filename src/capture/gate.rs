//! The privacy gate between a mapped row and Kafka: free text loses its
//! names and numbers, medical detail leaves the general event, and reaches
//! the restricted topic only while the student's parent consents.
//!
//! ```text
//!   mapped row ──scrub free text──▶ general event (medical fields null) ──▶ vitrina.<entity>.v1
//!        └──medical detail──▶ consent active? ──yes──▶ vitrina.medical_detail.v1 (compacted)
//!   consent granted  ──▶ the student's existing detail, read from the journal, published
//!   consent revoked  ──▶ a tombstone for every row of the student (compaction erases the rest)
//! ```
//!
//! Invariants:
//! - No general event carries a medical field's value, whatever the
//!   mapping says: the split follows the contract's field classes
//!   ([`crate::events::contract::Class`]), after mapping and before encoding.
//! - Detail is published only for a student in the consenting set; the set
//!   follows the journal *now*: loaded at start, re-read for a student on
//!   every consent change the stream carries, and re-read whole every
//!   `REFRESH` (so a revocation stops publication within that time even
//!   when capture is behind the journal).
//! - A row whose detail is gone (deleted, code no longer Б, consent
//!   revoked) gets a tombstone; a tombstone for a key that never had detail
//!   erases nothing and is harmless.
//! - Names learned from the journal stay in this process's memory.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::{Duration, Instant};

use super::mapping::{Mapping, Row, TableMapping};
use super::publisher::Publisher;
use super::CaptureError;
use crate::events::contract::{Class, Entity};
use crate::events::{schema, Detail, Val};
use crate::observability as obs;
use crate::pg::PgError;
use crate::privacy::scrub::Scrubber;
use crate::privacy::Depersonalizer;

/// Consent kind that allows medical detail to leave the region.
pub const CONSENT_KIND: &str = "medical_data_transfer";
/// How often the consenting set is re-read whole from the journal.
pub const REFRESH: Duration = Duration::from_secs(10);

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
        let mut detail: Option<Vec<(&'static str, Option<String>)>> = None;
        for (i, f) in entity.fields.iter().enumerate() {
            let medical = match f.class {
                Class::Plain => continue,
                Class::FreeText => false,
                Class::Medical => true,
                Class::MedicalWhen(field, value) => entity
                    .index(field)
                    .is_some_and(|j| matches!(&after[j], Val::Str(s) if s == value)),
            };
            if matches!(f.class, Class::Medical | Class::MedicalWhen(..)) && detail.is_none() {
                detail = Some(
                    schema::medical_fields()
                        .iter()
                        .map(|n| (*n, None))
                        .collect(),
                );
            }
            if medical {
                // Detail is text a person typed too: scrubbed before it
                // goes anywhere.
                let v = match std::mem::replace(&mut after[i], Val::Null) {
                    Val::Str(s) if self.scrub => {
                        let (clean, n) = self.scrubber.scrub(&s);
                        if n > 0 {
                            out.scrubbed.push((i, n));
                        }
                        Some(clean)
                    }
                    Val::Str(s) => Some(s),
                    _ => None,
                };
                if let Some(slot) = detail
                    .as_mut()
                    .and_then(|d| d.iter_mut().find(|(n, _)| *n == f.name))
                {
                    slot.1 = v;
                }
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
        out.detail = detail;
        out
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

/// A journal table with medical fields, and its student column.
struct MedicalTable {
    mapping: TableMapping,
    student: String,
}

/// The gate of a running capture: [`Fields`] plus the consenting set and
/// the journal connection that keeps it true.
pub struct Gate {
    pub fields: Fields,
    client: tokio_postgres::Client,
    dp: Depersonalizer,
    consents: Option<ConsentTable>,
    medical: Vec<MedicalTable>,
    /// Students whose parent consents now.
    active: HashSet<i64>,
    /// Consent key → student, for consent rows deleted later.
    consent_students: HashMap<String, i64>,
    refreshed: Instant,
    /// One counter handle per (entity, field) scrubbed.
    counters: HashMap<(&'static str, usize), metrics::Counter>,
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
    /// Loads the names and the consenting set from the journal.
    pub async fn open(
        client: tokio_postgres::Client,
        mapping: &Mapping,
        dp: &Depersonalizer,
        scrub: bool,
    ) -> Result<Gate, CaptureError> {
        let mut fields = Fields::new(scrub);
        if scrub {
            for n in &mapping.names {
                let cols: Vec<String> = n.columns.iter().map(|c| crate::pg::ident(c)).collect();
                let sql = format!(
                    "SELECT DISTINCT x FROM {t}, unnest(ARRAY[{cols}]::text[]) AS x WHERE x IS NOT NULL",
                    t = quoted(&n.table),
                    cols = cols.join(", ")
                );
                for r in client
                    .query(&sql, &[])
                    .await
                    .map_err(q("reading the names to replace in free text"))?
                {
                    fields.learn(r.get::<_, &str>(0));
                }
            }
            tracing::info!(names = fields.names(), "free text: names to replace loaded");
        }
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
            .filter_map(|t| {
                Some(MedicalTable {
                    student: t.column_of("student_id")?.to_string(),
                    mapping: t.clone(),
                })
            })
            .collect();
        let mut gate = Gate {
            fields,
            client,
            dp: dp.clone(),
            consents,
            medical,
            active: HashSet::new(),
            consent_students: HashMap::new(),
            refreshed: Instant::now(),
            counters: HashMap::new(),
        };
        gate.active = gate.read_active().await?;
        metrics::gauge!(obs::CAPTURE_CONSENTING).set(gate.active.len() as f64);
        Ok(gate)
    }

    /// Students with an active consent now, and the consent keys.
    async fn read_active(&mut self) -> Result<HashSet<i64>, CaptureError> {
        let Some(c) = &self.consents else {
            return Ok(HashSet::new());
        };
        let key: Vec<String> = c
            .key
            .iter()
            .map(|k| format!("{}::text", crate::pg::ident(k)))
            .collect();
        let sql = format!(
            "SELECT concat_ws(':', {key}), {s}::bigint FROM {t} WHERE {kind} = $1 AND {status} = 'granted'",
            key = key.join(", "),
            s = crate::pg::ident(&c.student),
            t = quoted(&c.table),
            kind = crate::pg::ident(&c.kind),
            status = crate::pg::ident(&c.status),
        );
        let rows = self
            .client
            .query(&sql, &[&CONSENT_KIND])
            .await
            .map_err(q("reading the medical-data consents"))?;
        let mut active = HashSet::new();
        for r in rows {
            let (k, s): (String, i64) = (r.get(0), r.get(1));
            self.consent_students.insert(k, s);
            active.insert(s);
        }
        Ok(active)
    }

    /// Whether `student`'s parent consents now, as the journal says.
    async fn consents_now(&self, student: i64) -> Result<bool, CaptureError> {
        let Some(c) = &self.consents else {
            return Ok(false);
        };
        let sql = format!(
            "SELECT EXISTS (SELECT 1 FROM {t} WHERE {s} = $1 AND {kind} = $2 AND {status} = 'granted')",
            t = quoted(&c.table),
            s = crate::pg::ident(&c.student),
            kind = crate::pg::ident(&c.kind),
            status = crate::pg::ident(&c.status),
        );
        Ok(self
            .client
            .query_one(&sql, &[&student, &CONSENT_KIND])
            .await
            .map_err(q("checking a student's medical-data consent"))?
            .get(0))
    }

    /// Counts replacements per (entity, field), never values.
    pub fn count(&mut self, entity: &'static Entity, applied: &Applied) {
        for (i, n) in &applied.scrubbed {
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
    /// restricted topic: its detail under consent, a tombstone when it holds
    /// none any more (or is deleted: `applied` is None).
    pub async fn row_changed(
        &mut self,
        entity: &'static Entity,
        key: &str,
        student: Option<i64>,
        applied: Option<&Applied>,
        at: At,
        publisher: &mut Publisher,
    ) -> Result<(), CaptureError> {
        let Some(applied) = applied else {
            return publisher.send_tombstone(entity.name, key).await;
        };
        let Some(detail) = &applied.detail else {
            return Ok(());
        };
        if !student.is_some_and(|s| self.active.contains(&s)) {
            return Ok(());
        }
        if applied.holds_detail() {
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
        } else {
            publisher.send_tombstone(entity.name, key).await
        }
    }

    /// A consent row changed (`student` None: deleted, looked up by key):
    /// re-reads the student's consent and acts on a change.
    pub async fn consent_changed(
        &mut self,
        key: &str,
        student: Option<i64>,
        at: At,
        publisher: &mut Publisher,
    ) -> Result<(), CaptureError> {
        let student = match student {
            Some(s) => {
                self.consent_students.insert(key.to_string(), s);
                s
            }
            None => match self.consent_students.remove(key) {
                Some(s) => s,
                None => return Ok(()),
            },
        };
        let now = self.consents_now(student).await?;
        // Always acted on, even when the consenting set already agrees: it
        // follows the journal now, so after a restart it may already hold
        // a grant whose change the stream is only now replaying, and the
        // student's existing detail would never be published. Publishing
        // again is harmless (positions order it; the topic is compacted).
        self.flip(student, now, true, at, publisher).await
    }

    /// Re-reads the whole consenting set every [`REFRESH`] and acts on
    /// every change.
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
        let granted: Vec<i64> = now.difference(&self.active).copied().collect();
        let revoked: Vec<i64> = self.active.difference(&now).copied().collect();
        for s in granted {
            self.flip(s, true, false, at, publisher).await?;
        }
        for s in revoked {
            self.flip(s, false, false, at, publisher).await?;
        }
        Ok(())
    }

    /// Publishes (`active`) or erases the student's detail, when the
    /// consenting set changes or `always`.
    async fn flip(
        &mut self,
        student: i64,
        active: bool,
        always: bool,
        at: At,
        publisher: &mut Publisher,
    ) -> Result<(), CaptureError> {
        if active == self.active.contains(&student) && !always {
            return Ok(());
        }
        if active {
            self.active.insert(student);
        } else {
            self.active.remove(&student);
        }
        metrics::gauge!(obs::CAPTURE_CONSENTING).set(self.active.len() as f64);
        tracing::debug!(
            granted = active,
            "medical-data consent changed for a student; {} the restricted topic",
            if active {
                "publishing existing detail to"
            } else {
                "erasing their detail from"
            }
        );
        for i in 0..self.medical.len() {
            let rows = self.student_rows(i, student).await?;
            let m = &self.medical[i];
            let entity = m.mapping.entity;
            for row in rows {
                let Ok(mut mapped) = m.mapping.map_row(&row, &self.dp) else {
                    continue;
                };
                if !active {
                    publisher.send_tombstone(entity.name, &mapped.key).await?;
                    continue;
                }
                let applied = self.fields.apply(entity, &mut mapped.after);
                if applied.holds_detail() {
                    publisher
                        .send_detail(&Detail {
                            entity,
                            key: mapped.key,
                            student_id: Some(student),
                            fields: applied.detail.unwrap_or_default(),
                            commit_lsn: at.commit_lsn,
                            lsn: at.lsn,
                            commit_time_micros: at.commit_time_micros,
                        })
                        .await?;
                }
            }
        }
        Ok(())
    }

    /// The current rows of medical table `i` for `student`, as text.
    async fn student_rows(
        &self,
        i: usize,
        student: i64,
    ) -> Result<Vec<BTreeMap<String, Option<String>>>, CaptureError> {
        let m = &self.medical[i];
        let cols = m.mapping.columns();
        let select: Vec<String> = cols
            .iter()
            .map(|c| format!("{}::text", crate::pg::ident(c)))
            .collect();
        let sql = format!(
            "SELECT {} FROM {} WHERE {} = $1",
            select.join(", "),
            quoted(&m.mapping.table),
            crate::pg::ident(&m.student)
        );
        let rows = self
            .client
            .query(&sql, &[&student])
            .await
            .map_err(q("reading a student's medical rows"))?;
        Ok(rows
            .iter()
            .map(|r| {
                cols.iter()
                    .enumerate()
                    .map(|(j, c)| (c.clone(), r.get::<_, Option<String>>(j)))
                    .collect()
            })
            .collect())
    }
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

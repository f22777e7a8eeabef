//! The stream: pgoutput messages in, domain events out, one transaction at
//! a time, in commit order.
//!
//! ```text
//!   Begin ─▶ Insert/Update/Delete/Truncate … ─▶ Commit
//!              │ map + depersonalize (mapping)      │
//!              ▼                                    ▼
//!        publisher.send_event              publisher.commit(end_lsn)  (+ watermarks after a heartbeat)
//! ```
//!
//! Invariants:
//! - Names and raw document numbers never leave this module's rows: a row
//!   is mapped ([`super::mapping`]) before anything is encoded, logged or
//!   counted; what cannot be mapped is dead-lettered with column names only.
//!   Every mapped state then passes the privacy gate ([`super::gate`]): free
//!   text scrubbed, medical detail out of the general event and onto the
//!   restricted topic only under consent.
//! - A change's event id derives from its WAL position, so a change sent
//!   again after a restart carries the same id.
//! - Changes of a table reloaded at a resume snapshot that committed
//!   before that snapshot are skipped: they are in the snapshot already.

use std::collections::HashMap;

use pg_walstream::{ColumnValue, EventType, ReplicationError, RowData};
use tracing::Instrument;

use super::gate::{self, Gate};
use super::mapping::{Mapping, Row};
use super::publisher::{DeadLetter, Publisher};
use super::resnapshot::{self, Resnapshots, Seen};
use super::CaptureError;
use crate::events::{self, Event, Op, Source};
use crate::lsn;
use crate::privacy::Depersonalizer;

struct WalRow<'a>(&'a RowData);

impl Row for WalRow<'_> {
    fn get(&self, column: &str) -> Option<Option<&str>> {
        wal_value(self.0, column)
    }
}

fn wal_value<'r>(row: &'r RowData, column: &str) -> Option<Option<&'r str>> {
    row.get(column).map(|v| match v {
        ColumnValue::Null => None,
        other => other.as_str(),
    })
}

/// An UPDATE's new row; a column it lacks (a TOASTed value the UPDATE
/// left unchanged) comes from the old row, which a table with REPLICA
/// IDENTITY FULL sends whole.
struct Updated<'a> {
    new: &'a RowData,
    old: Option<&'a RowData>,
}

impl Row for Updated<'_> {
    fn get(&self, column: &str) -> Option<Option<&str>> {
        wal_value(self.new, column).or_else(|| self.old.and_then(|o| wal_value(o, column)))
    }
}

/// The transaction being received.
#[derive(Default)]
struct Txn {
    xid: i64,
    commit_lsn: u64,
    commit_time_micros: i64,
    heartbeat: bool,
    /// Between Begin and Commit.
    open: bool,
    /// The position of the previous row change, and how many changes came
    /// at it before this one (a multi-row insert gives them one position).
    last_lsn: u64,
    seq: u32,
}

impl Txn {
    /// This change's place among the changes at `lsn`.
    fn seq_at(&mut self, lsn: u64) -> u32 {
        if lsn == self.last_lsn {
            self.seq += 1;
        } else {
            (self.last_lsn, self.seq) = (lsn, 0);
        }
        self.seq
    }
}

/// Turns the replication stream's messages into published events.
pub struct Streamer {
    pub(super) mapping: Mapping,
    pub(super) dp: Depersonalizer,
    pub(super) publisher: Publisher,
    /// Per table: changes committed before this LSN are in a resumed snapshot.
    pub(super) skip_before: HashMap<String, u64>,
    pub(super) heartbeat_prefix: String,
    pub(super) gate: Gate,
    /// Re-snapshots: requests, watermarks, chunks.
    resnap: Resnapshots,
    txn: Txn,
}

impl Streamer {
    pub(super) fn new(
        mapping: Mapping,
        dp: Depersonalizer,
        publisher: Publisher,
        skip_before: HashMap<String, u64>,
        heartbeat_prefix: String,
        gate: Gate,
        resnap: Resnapshots,
    ) -> Streamer {
        Streamer {
            mapping,
            dp,
            publisher,
            skip_before,
            heartbeat_prefix,
            gate,
            resnap,
            txn: Txn::default(),
        }
    }

    pub(super) fn into_publisher(self) -> Publisher {
        self.publisher
    }

    /// Between transactions, with every delivered change acknowledged:
    /// the stream may confirm what the server says it has sent.
    pub(super) fn idle(&self, progress: &super::Progress) -> bool {
        !self.txn.open && self.publisher.drained(progress)
    }

    /// Publishes or erases the detail of every student whose consent
    /// changed, waiting for the journal, and lets the commits held behind
    /// them be confirmed (at shutdown).
    pub(super) async fn flush_flips(&mut self) -> Result<(), CaptureError> {
        self.gate.flush_all(&mut self.publisher).await
    }

    /// [`Streamer::handle`] a message, or (None) the gate's
    /// [`Gate::flush`]: land a flight that has answered, take off with the
    /// flips that are due.
    pub(super) async fn handle_or_flush(
        &mut self,
        ev: Option<(EventType, u64)>,
    ) -> Result<(), CaptureError> {
        match ev {
            Some((ev, lsn)) => self.handle(ev, lsn).await,
            None => self.gate.flush(&mut self.publisher).await,
        }
    }

    /// Handles one message of the stream at WAL position `lsn`.
    pub(super) async fn handle(&mut self, ev: EventType, lsn: u64) -> Result<(), CaptureError> {
        match ev {
            EventType::Begin {
                transaction_id,
                final_lsn,
                commit_timestamp,
            } => {
                self.txn = Txn {
                    xid: transaction_id as i64,
                    commit_lsn: final_lsn.value(),
                    commit_time_micros: commit_timestamp.timestamp_micros(),
                    heartbeat: false,
                    open: true,
                    last_lsn: 0,
                    seq: 0,
                };
                Ok(())
            }
            EventType::Commit {
                commit_timestamp,
                end_lsn,
                ..
            } => {
                self.commit(commit_timestamp.timestamp_micros(), end_lsn.value())
                    .await
            }
            EventType::Message {
                prefix,
                content,
                message_lsn,
                ..
            } => {
                if *prefix == *self.heartbeat_prefix {
                    self.txn.heartbeat = true;
                    return Ok(());
                }
                match self.resnap.message(&prefix, &content) {
                    Seen::Chunk(c) => self.chunk(*c, message_lsn.value()).await,
                    Seen::Other | Seen::Noted => Ok(()),
                }
            }
            EventType::Insert {
                schema,
                table,
                data,
                ..
            } => {
                self.change(&schema, &table, Op::Create, Some(data), None, lsn)
                    .await
            }
            EventType::Update {
                schema,
                table,
                new_data,
                old_data,
                ..
            } => {
                self.change(&schema, &table, Op::Update, Some(new_data), old_data, lsn)
                    .await
            }
            EventType::Delete {
                schema,
                table,
                old_data,
                ..
            } => {
                self.change(&schema, &table, Op::Delete, None, Some(old_data), lsn)
                    .await
            }
            EventType::Truncate { tables, .. } => self.truncate(&tables, lsn).await,
            _ => Ok(()),
        }
    }

    /// A re-snapshot's chunk at its high watermark (`lsn`, in the
    /// transaction being received).
    async fn chunk(
        &mut self,
        (chunk, window): (resnapshot::Chunk, resnapshot::Window),
        lsn: u64,
    ) -> Result<(), CaptureError> {
        let at = resnapshot::At {
            commit_lsn: self.txn.commit_lsn,
            lsn,
            commit_time_micros: self.txn.commit_time_micros,
            xid: self.txn.xid as u32,
        };
        let slot = self.publisher.slot().to_string();
        resnapshot::Publish {
            resnap: &mut self.resnap,
            mapping: &self.mapping,
            dp: &self.dp,
            gate: &mut self.gate,
            publisher: &mut self.publisher,
            slot: &slot,
        }
        .chunk(chunk, window, at)
        .await
    }

    /// The transaction's commit: watermarks after a heartbeat, the
    /// consents refreshed when due, re-snapshot requests recorded, the
    /// commit queued for confirmation.
    async fn commit(&mut self, t: i64, end_lsn: u64) -> Result<(), CaptureError> {
        let Streamer {
            publisher,
            txn,
            gate,
            resnap,
            mapping,
            ..
        } = self;
        txn.open = false;
        // One span per journal transaction (capture's batch), with its
        // source positions; FmtSpan::CLOSE logs it at debug level.
        let span = tracing::debug_span!(
            "capture_txn",
            xid = txn.xid,
            commit_lsn = %lsn::format(txn.commit_lsn),
            end_lsn = %lsn::format(end_lsn),
            heartbeat = txn.heartbeat
        );
        async {
            if txn.heartbeat {
                publisher.watermarks(txn.commit_lsn, t).await?;
            }
            // A revocation seen in the journal stops publication
            // within the refresh, however far behind the stream is.
            gate.maybe_refresh(at(txn, txn.commit_lsn), publisher)
                .await?;
            resnap
                .commit(txn.xid as u32, txn.commit_lsn, mapping)
                .await?;
            publisher.commit(end_lsn, t).await?;
            if gate.has_pending() {
                gate.flush(publisher).await?;
            }
            Ok(())
        }
        .instrument(span)
        .await
    }

    /// A TRUNCATE of `tables`: one event per mapped table, to every
    /// partition of its topic.
    async fn truncate(
        &mut self,
        tables: &[std::sync::Arc<str>],
        lsn: u64,
    ) -> Result<(), CaptureError> {
        let Streamer {
            mapping,
            publisher,
            txn,
            skip_before,
            resnap,
            ..
        } = self;
        for t in tables {
            let Some(tm) = mapping.table(t) else {
                continue;
            };
            if in_resumed_snapshot(skip_before, &tm.table, txn) {
                continue;
            }
            resnap.truncated(&tm.table);
            let e = Event {
                event_id: events::change_event_id(txn.commit_lsn, lsn, 0, &tm.table),
                entity: tm.entity,
                op: Op::Truncate,
                key: "*".into(),
                source: source(txn, lsn, &tm.table),
                actor: None,
                quality: vec![],
                after: None,
            };
            publisher.send_to_all_partitions(&e).await?;
        }
        Ok(())
    }

    /// A row's INSERT, UPDATE (`new` and, with REPLICA IDENTITY FULL,
    /// `old`) or DELETE (`old` only).
    async fn change(
        &mut self,
        schema: &str,
        table: &str,
        op: Op,
        new: Option<RowData>,
        old: Option<RowData>,
        lsn: u64,
    ) -> Result<(), CaptureError> {
        let Streamer {
            mapping,
            dp,
            publisher,
            txn,
            skip_before,
            gate,
            resnap,
            ..
        } = self;
        let tm = mapping.table_of(schema, table);
        let Some(tm) = tm else {
            return Ok(()); // not a mapped table
        };
        if in_resumed_snapshot(skip_before, &tm.table, txn) {
            return Ok(());
        }
        // A table being re-snapshotted: the keys this change touches (the
        // old one too, when an update moved the row to another key).
        if resnap.watches(&tm.table) {
            let key = match (&new, &old) {
                (Some(n), o) => tm
                    .key_of(&Updated {
                        new: n,
                        old: o.as_ref(),
                    })
                    .ok(),
                (None, Some(o)) => tm.key_of(&WalRow(o)).ok(),
                (None, None) => None,
            };
            resnap.changed(&tm.table, key.as_deref());
            if let (Some(_), Some(o)) = (&new, &old) {
                if let Ok(k) = tm.key_of(&WalRow(o)) {
                    if key.as_ref() != Some(&k) {
                        resnap.changed(&tm.table, Some(&k));
                    }
                }
            }
        }
        let seq = txn.seq_at(lsn);
        let dead = |reason: String, kind: &'static str| DeadLetter {
            reason,
            kind,
            table: tm.table.clone(),
            entity: Some(tm.entity.name),
            op: op.symbol(),
            lsn: lsn::format(lsn),
            commit_lsn: lsn::format(txn.commit_lsn),
            txid: txn.xid,
            commit_time_micros: txn.commit_time_micros,
            capture: publisher.slot().to_string(),
            key: None,
            size_bytes: None,
        };
        let event_id = events::change_event_id(txn.commit_lsn, lsn, seq, &tm.table);
        let here = at(txn, lsn);
        match (new, old) {
            (Some(row), old) => {
                let row = Updated {
                    new: &row,
                    old: old.as_ref(),
                };
                // People's names feed the free-text scrubber, in memory.
                if let Some(n) = mapping.names_of(schema, table) {
                    gate.learn_row(&row, &n.columns);
                }
                match tm.map_row(&row, dp) {
                    Ok(mut m) => {
                        let applied = gate.fields.apply(tm.entity, &mut m.after);
                        gate.count(tm.entity, &applied);
                        let student = gate::student_of(tm.entity, &m.after);
                        let e = Event {
                            event_id,
                            entity: tm.entity,
                            op,
                            key: m.key,
                            source: source(txn, lsn, &tm.table),
                            actor: m.actor,
                            quality: m.quality,
                            after: Some(m.after),
                        };
                        publisher.send_event(&e, &m.partition_key).await?;
                        if tm.entity.has_medical() {
                            gate.row_changed(
                                tm.entity,
                                &e.key,
                                student,
                                Some((&applied, op)),
                                here,
                                publisher,
                            )
                            .await?;
                        }
                        if tm.entity.name == "consent" {
                            let kind = e.after.as_deref().and_then(|a| {
                                match a.get(tm.entity.index("kind")?) {
                                    Some(events::Val::Str(k)) => Some(k.as_str()),
                                    _ => None,
                                }
                            });
                            gate.consent_changed(&e.key, student, kind, here, publisher);
                        }
                        Ok(())
                    }
                    Err(u) => publisher.dead_letter(dead(u.0, "unmappable")).await,
                }
            }
            (None, Some(old)) => match tm.key_of(&WalRow(&old)) {
                Ok(key) => {
                    let pk = tm.partition_key_of_old(&WalRow(&old), &key);
                    let e = Event {
                        event_id,
                        entity: tm.entity,
                        op,
                        key,
                        source: source(txn, lsn, &tm.table),
                        actor: None,
                        quality: vec![],
                        after: None,
                    };
                    publisher.send_event(&e, &pk).await?;
                    if tm.entity.has_medical() {
                        gate.row_changed(tm.entity, &e.key, None, None, here, publisher)
                            .await?;
                    }
                    if tm.entity.name == "consent" {
                        gate.consent_changed(&e.key, None, None, here, publisher);
                    }
                    Ok(())
                }
                Err(u) => publisher.dead_letter(dead(u.0, "unmappable")).await,
            },
            (None, None) => Ok(()),
        }
    }
}

/// Whether `txn` committed before the resume snapshot of `table`, which
/// holds its changes already.
fn in_resumed_snapshot(skip_before: &HashMap<String, u64>, table: &str, txn: &Txn) -> bool {
    skip_before.get(table).is_some_and(|l| txn.commit_lsn < *l)
}

fn at(txn: &Txn, lsn: u64) -> gate::At {
    gate::At {
        commit_lsn: txn.commit_lsn,
        lsn,
        commit_time_micros: txn.commit_time_micros,
    }
}

fn source(txn: &Txn, lsn: u64, table: &str) -> Source {
    Source {
        lsn,
        commit_lsn: txn.commit_lsn,
        txid: txn.xid,
        commit_time_micros: txn.commit_time_micros,
        table: table.to_string(),
        snapshot: false,
    }
}

/// START_REPLICATION's refusal because another process took the slot
/// between our preflight and now reads as the preflight's own error.
pub(super) fn start_error(slot: &str, e: ReplicationError) -> CaptureError {
    let text = e.to_string();
    if text.contains("55006") {
        let pid = text
            .split("is active for PID ")
            .nth(1)
            .and_then(|rest| rest.split(|c: char| !c.is_ascii_digit()).next())
            .and_then(|n| n.parse().ok())
            .unwrap_or(0);
        return CaptureError::SlotActive {
            slot: slot.to_string(),
            pid,
        };
    }
    CaptureError::Replication(e)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_slot_taken_between_preflight_and_start_reads_as_slot_active() {
        let e = ReplicationError::TransientConnection(
            "[55006] START_REPLICATION did not enter COPY mode: ERROR: replication slot \"s1\" is active for PID 7017 (SQLSTATE 55006)".into(),
        );
        match start_error("s1", e) {
            CaptureError::SlotActive { slot, pid } => {
                assert_eq!((slot.as_str(), pid), ("s1", 7017))
            }
            other => panic!("{other}"),
        }
        let other = ReplicationError::TransientConnection("connection reset".into());
        assert!(matches!(
            start_error("s1", other),
            CaptureError::Replication(_)
        ));
    }
}

//! The initial load, decided: a new slot gets a full load at its exported
//! snapshot; an interrupted load resumes with the tables not yet done at a
//! temporary slot's snapshot; otherwise there is nothing to load.
//!
//! ```text
//!   slot absent ──create slot (exports snapshot S)──▶ load every table at S ──▶ stream from S
//!   load interrupted ──temporary slot (snapshot R)──▶ TRUNCATE + reload the tables not done at R
//!                                                     ──▶ stream from the slot, skipping their changes < R
//! ```
//!
//! Invariants:
//! - Progress is recorded before the slot exists, so a crash right after
//!   creating it resumes the load instead of skipping it.
//! - Rows of a table published before are withdrawn (a TRUNCATE on every
//!   partition, positioned below the snapshot's rows) before the table is
//!   loaded: at a resumed load, and at a new full load (a slot lost and
//!   made again), so rows deleted in between do not survive downstream.

use std::sync::atomic::Ordering;

use pg_walstream::LogicalReplicationStream;

use super::gate::Gate;
use super::load_state::LoadStateStore;
use super::mapping::TableMapping;
use super::preflight::SlotState;
use super::publisher::{Progress, Publisher};
use super::{snapshot, stream_config, CaptureError};
use crate::config::Config;
use crate::connections::PgEndpoint;
use crate::events::{Event, Op, Source};
use crate::lsn;
use crate::privacy::Depersonalizer;

/// What the load needs from the running capture.
pub(super) struct Loader<'a> {
    pub cfg: &'a Config,
    pub journal: &'a PgEndpoint,
    pub sql: &'a tokio_postgres::Client,
    pub tables: &'a [TableMapping],
    pub dp: &'a Depersonalizer,
    pub progress: &'a Progress,
    /// Where the load's progress is recorded.
    pub store: &'a LoadStateStore,
    /// Why an absent slot is missing: "absent", or "invalidated" (capture
    /// dropped it, and counted it).
    pub slot_lost: &'static str,
}

impl Loader<'_> {
    fn table_load(&self) -> snapshot::TableLoad<'_> {
        snapshot::TableLoad {
            cfg: self.cfg,
            journal: self.journal,
            dp: self.dp,
            store: self.store,
        }
    }

    /// Runs the load the slot's state calls for (`stored`: the load state
    /// read from its store); returns the state: per table, the LSN before
    /// which its streamed changes are already loaded, and the re-snapshots
    /// to run while streaming.
    pub async fn run(
        &self,
        slot_state: &SlotState,
        stored: Option<snapshot::State>,
        stream: &mut LogicalReplicationStream,
        publisher: &mut Publisher,
        gate: &mut Gate,
    ) -> Result<snapshot::State, CaptureError> {
        let c = &self.cfg.capture;
        let restricted = publisher.restricted_partitions();
        if let Some(s) = &stored {
            self.same_partitioner(s)?;
            if let Some(was) = s.restricted_partitions.filter(|was| *was != restricted) {
                return Err(CaptureError::RestrictedPartitions {
                    topic: publisher.detail_topic.clone(),
                    was,
                    now: restricted,
                });
            }
        }
        if *slot_state == SlotState::Absent {
            // The slot is gone after a finished load: dropped, invalidated,
            // or not on the primary a failover promoted.
            if let Some(prev) = stored.filter(|s| s.done && c.snapshot) {
                return self.recover(prev, stream).await;
            }
            let mut state = snapshot::State {
                started: c.snapshot,
                partitioner: Some(self.cfg.kafka.partitioner.clone()),
                restricted_partitions: Some(restricted),
                ..Default::default()
            };
            self.store.save(&state).await?;
            // Holds the window between the gate's first reading and the
            // snapshot open (tests/privacy.rs).
            if let Some(ms) = crate::failpoint!("capture-before-snapshot") {
                tracing::warn!("failpoint: waiting before the slot and its snapshot");
                tokio::time::sleep(crate::failpoint::millis(&ms)).await;
            }
            stream
                .ensure_replication_slot()
                .await
                .map_err(CaptureError::Replication)?;
            let lsn = slot_lsn(self.sql, &c.slot).await?;
            tracing::info!(slot = %c.slot, lsn = %lsn::format(lsn), "replication slot created");
            if c.snapshot {
                let name = stream
                    .exported_snapshot_name()
                    .ok_or(CaptureError::NoSnapshot(
                        "the new slot exported no snapshot",
                    ))?
                    .to_string();
                gate.read_at_snapshot(&name).await?;
                let tables: Vec<&TableMapping> = self.tables.iter().collect();
                // A new slot after a lost one (or a second load into the
                // same topics): what the topics hold from before is
                // withdrawn, so rows deleted meanwhile do not survive.
                withdraw(&tables, lsn, publisher).await?;
                let at = snapshot::At { name, lsn };
                let rows = self
                    .table_load()
                    .run(&tables, &at, publisher, gate, &mut state)
                    .await?;
                self.progress
                    .loaded_rows
                    .store(rows.max(1), Ordering::SeqCst);
            }
            state.done = true;
            self.store.save(&state).await?;
            return Ok(state);
        }
        let mut state = match stored {
            Some(s) => s,
            // Without an initial load there is nothing to have lost.
            None if !c.snapshot => snapshot::State::default(),
            None => {
                return Err(CaptureError::LoadStateMissing {
                    slot: c.slot.clone(),
                    store: self.store.describe(),
                })
            }
        };
        if c.snapshot && state.started && !state.done {
            self.resume(&mut state, publisher, gate).await?;
        }
        Ok(state)
    }

    /// A lost slot after a finished load: a new slot, and every mapped
    /// table re-snapshotted while capture streams from it
    /// ([`super::resnapshot`]). The jobs are recorded before the slot is
    /// made, starting at a WAL position at or below its consistent point:
    /// a crash in between makes them again, and rows deleted while no slot
    /// existed fall below every job's start and are withdrawn at its end.
    async fn recover(
        &self,
        mut state: snapshot::State,
        stream: &mut LogicalReplicationStream,
    ) -> Result<snapshot::State, CaptureError> {
        let c = &self.cfg.capture;
        if !c.recover_lost_slot {
            return Err(CaptureError::SlotLost(c.slot.clone()));
        }
        let row = self
            .sql
            .query_one("SELECT pg_current_wal_lsn()::text", &[])
            .await
            .map_err(crate::pg::PgError::query("reading the WAL position"))?;
        let start = row
            .get::<_, Option<String>>(0)
            .as_deref()
            .and_then(lsn::parse)
            .unwrap_or(0);
        state.table_lsn.clear();
        state.resnapshots = self
            .tables
            .iter()
            .map(|t| super::resnapshot::Job::new(&t.table, None, start, "slot lost"))
            .collect();
        self.store.save(&state).await?;
        stream
            .ensure_replication_slot()
            .await
            .map_err(CaptureError::Replication)?;
        let at = slot_lsn(self.sql, &c.slot).await?;
        if self.slot_lost == "absent" {
            metrics::counter!(crate::observability::CAPTURE_SLOT_RECOVERIES, "reason" => "absent")
                .increment(1);
        }
        tracing::warn!(
            slot = %c.slot,
            lsn = %lsn::format(at),
            tables = self.tables.len(),
            "replication slot was lost: a new one streams from here, and every mapped table is re-snapshotted while it does (rows deleted meanwhile are withdrawn at the end of each table)"
        );
        Ok(state)
    }

    /// The topics were written with the configured partitioner: a change
    /// would put a key's next events on other partitions than its earlier
    /// ones (and its restricted records beyond its tombstones' reach).
    fn same_partitioner(&self, stored: &snapshot::State) -> Result<(), CaptureError> {
        let wrote = stored
            .partitioner
            .as_deref()
            .unwrap_or(snapshot::LEGACY_PARTITIONER);
        if wrote == self.cfg.kafka.partitioner {
            return Ok(());
        }
        Err(CaptureError::PartitionerChanged {
            slot: self.cfg.capture.slot.clone(),
            wrote: wrote.to_string(),
            wanted: self.cfg.kafka.partitioner.clone(),
        })
    }

    /// An interrupted initial load: the remaining tables are copied at a
    /// new snapshot, and their streamed changes up to it are skipped.
    async fn resume(
        &self,
        state: &mut snapshot::State,
        publisher: &mut Publisher,
        gate: &mut Gate,
    ) -> Result<(), CaptureError> {
        let c = &self.cfg.capture;
        let remaining: Vec<&TableMapping> = self
            .tables
            .iter()
            .filter(|t| !state.tables_done.contains(&t.table))
            .collect();
        tracing::info!(
            tables = remaining.len(),
            "resuming the interrupted initial load"
        );
        let resume_slot = format!("{}_resume", c.slot);
        let mut helper = LogicalReplicationStream::new(
            &self.journal.replication_url("vitrina-capture-resume"),
            stream_config(&resume_slot, &c.publication, true),
        )
        .await
        .map_err(CaptureError::Replication)?;
        helper
            .ensure_replication_slot()
            .await
            .map_err(CaptureError::Replication)?;
        let lsn = slot_lsn(self.sql, &resume_slot).await?;
        let name = helper
            .exported_snapshot_name()
            .ok_or(CaptureError::NoSnapshot(
                "the resume slot exported no snapshot",
            ))?
            .to_string();
        gate.read_at_snapshot(&name).await?;
        for t in &remaining {
            state.table_lsn.insert(t.table.clone(), lsn);
        }
        self.store.save(state).await?;
        // Rows of these tables published before the interruption are
        // withdrawn: a TRUNCATE just before the new snapshot's rows, on
        // every partition. Consumers then hold exactly the new snapshot.
        withdraw(&remaining, lsn, publisher).await?;
        let at = snapshot::At { name, lsn };
        self.table_load()
            .run(&remaining, &at, publisher, gate, state)
            .await?;
        drop(helper); // the temporary slot goes with its connection
        state.done = true;
        self.store.save(state).await?;
        Ok(())
    }
}

async fn slot_lsn(sql: &tokio_postgres::Client, slot: &str) -> Result<u64, CaptureError> {
    let row = sql
        .query_one(
            "SELECT confirmed_flush_lsn::text FROM pg_replication_slots WHERE slot_name = $1",
            &[&slot],
        )
        .await
        .map_err(crate::pg::PgError::query("reading the slot position"))?;
    let s: Option<String> = row.get(0);
    Ok(s.as_deref().and_then(lsn::parse).unwrap_or(0))
}

/// A TRUNCATE of each table, on every partition, positioned just below the
/// rows of the snapshot at `lsn` that follows it: every row published
/// before is withdrawn, the snapshot's rows stand.
async fn withdraw(
    tables: &[&TableMapping],
    lsn: u64,
    publisher: &mut Publisher,
) -> Result<(), CaptureError> {
    let now = chrono::Utc::now().timestamp_micros();
    for t in tables {
        withdraw_below(t, lsn, format!("R{lsn:016X}-{}", t.table), now, publisher).await?;
    }
    Ok(())
}

/// A TRUNCATE of table `t` on every partition of its topic, positioned
/// just below `lsn` ([`crate::events::withdrawal_position`]): every change
/// of it below that position is withdrawn, everything above stands.
pub(super) async fn withdraw_below(
    t: &TableMapping,
    lsn: u64,
    event_id: String,
    commit_time_micros: i64,
    publisher: &mut Publisher,
) -> Result<(), CaptureError> {
    let (commit_lsn, at) = crate::events::withdrawal_position(lsn);
    let e = Event {
        event_id,
        entity: t.entity,
        op: Op::Truncate,
        key: "*".into(),
        source: Source {
            lsn: at,
            commit_lsn,
            txid: 0,
            commit_time_micros,
            table: t.table.clone(),
            snapshot: true,
        },
        actor: None,
        quality: vec![],
        after: None,
    };
    publisher.send_to_all_partitions(&e).await
}

//! Every metric vitrina exports, named and described once, with its unit.
//! Prometheus naming: `vitrina_<noun>_<unit>[_total]`; labels are bounded
//! (`entity`, `kind`, `reason`, `table`), never an id or a value.

use metrics::{describe_counter, describe_gauge, describe_histogram, Unit};

pub const CAPTURE_EVENTS: &str = "vitrina_capture_events_total";
pub const CAPTURE_DEAD_LETTERS: &str = "vitrina_capture_dead_letters_total";
pub const CAPTURE_QUALITY_FLAGS: &str = "vitrina_capture_quality_flags_total";
pub const CAPTURE_ERRORS: &str = "vitrina_capture_errors_total";
pub const CAPTURE_TRANSACTIONS: &str = "vitrina_capture_transactions_total";
pub const CAPTURE_ACK_LATENCY: &str = "vitrina_capture_commit_to_ack_seconds";
pub const CAPTURE_CONFIRMED_LSN: &str = "vitrina_capture_confirmed_lsn";
pub const CAPTURE_LAG_BYTES: &str = "vitrina_capture_replication_lag_bytes";
pub const CAPTURE_LAG_SECONDS: &str = "vitrina_capture_replication_lag_seconds";
pub const CAPTURE_SLOT_RETAINED_BYTES: &str = "vitrina_capture_slot_retained_wal_bytes";
pub const CAPTURE_IN_FLIGHT: &str = "vitrina_capture_in_flight_events";
pub const CAPTURE_WATERMARKS: &str = "vitrina_capture_watermarks_total";
pub const GROUP_COMMIT_ERRORS: &str = "vitrina_group_commit_errors_total";
pub const CAPTURE_PARTITIONS_ADDED: &str = "vitrina_capture_partitions_added_total";
pub const CAPTURE_SNAPSHOT_ROWS: &str = "vitrina_capture_snapshot_rows_total";
pub const CAPTURE_SNAPSHOT_TABLES_DONE: &str = "vitrina_capture_snapshot_tables_done";
/// Records written to the restricted topic (label `kind`: detail, tombstone).
pub const CAPTURE_DETAILS: &str = "vitrina_capture_medical_detail_records_total";
/// Names and numbers replaced in free text (labels `entity`, `field`).
pub const CAPTURE_SCRUBBED: &str = "vitrina_capture_free_text_replacements_total";
/// Students whose parents consent to medical-data transfer, as capture knows them.
pub const CAPTURE_CONSENTING: &str = "vitrina_capture_consenting_students";
pub const CAPTURE_SNAPSHOT_TABLES: &str = "vitrina_capture_snapshot_tables";
/// Re-snapshots not finished (`vitrina resnapshot`, a lost slot's recovery).
pub const CAPTURE_RESNAPSHOT_JOBS: &str = "vitrina_capture_resnapshot_jobs";
pub const CAPTURE_RESNAPSHOT_ROWS: &str = "vitrina_capture_resnapshot_rows_total";
pub const CAPTURE_RESNAPSHOT_OVERTAKEN: &str = "vitrina_capture_resnapshot_overtaken_rows_total";
pub const CAPTURE_RESNAPSHOT_CHUNKS: &str = "vitrina_capture_resnapshot_chunks_total";
pub const CAPTURE_SLOT_RECOVERIES: &str = "vitrina_capture_slot_recoveries_total";

pub const PROJECTOR_EVENTS: &str = "vitrina_projector_events_total";
pub const PROJECTOR_ROWS_WRITTEN: &str = "vitrina_projector_rows_written_total";
pub const PROJECTOR_DEAD_LETTERS: &str = "vitrina_projector_dead_letters_total";
pub const PROJECTOR_BATCH_SECONDS: &str = "vitrina_projector_batch_seconds";
pub const PROJECTOR_VISIBLE_LATENCY: &str = "vitrina_projector_commit_to_visible_seconds";
pub const PROJECTOR_REWINDS: &str = "vitrina_projector_rewinds_total";
/// Failures the projector rides over without stopping (label `kind`:
/// `assign`, `unassign`).
pub const PROJECTOR_ERRORS: &str = "vitrina_projector_errors_total";
pub const PROJECTOR_CONSENT_UPDATES: &str = "vitrina_projector_consent_updates_total";
/// Bulk inserts of a batch's rows that met a row already held and were
/// upserted instead (label `entity`; see `showcase::apply::Bulk`).
pub const PROJECTOR_BULK_CONFLICTS: &str = "vitrina_projector_bulk_conflicts_total";
pub const PROJECTOR_BATCH_EVENTS: &str = "vitrina_projector_batch_messages";
pub const PROJECTOR_CATCH_UP: &str = "vitrina_projector_catch_up_mode";
/// Partitions stopped before an event of a schema the projector does not know.
pub const PROJECTOR_PARTITIONS_STALLED: &str = "vitrina_projector_partitions_stalled";
pub const PROJECTOR_LAG_MESSAGES: &str = "vitrina_projector_consumer_lag_messages";
pub const PROJECTOR_LAG_SECONDS: &str = "vitrina_projector_consumer_lag_seconds";
pub const SHOWCASE_FRESHNESS: &str = "vitrina_showcase_freshness_seconds";
pub const SHOWCASE_ENTITY_FRESHNESS: &str = "vitrina_showcase_entity_freshness_seconds";
pub const SHOWCASE_SLA_BREACHES: &str = "vitrina_showcase_sla_breaches_total";
/// Restarts of a stage after a transient failure (label `stage`).
pub const STAGE_RESTARTS: &str = "vitrina_stage_restarts_total";
pub const REPLAY_EVENTS: &str = "vitrina_replay_events_total";
pub const REPLAY_PROGRESS: &str = "vitrina_replay_progress_ratio";
pub const REPLAY_REMAINING: &str = "vitrina_replay_remaining_messages";
pub const REPLAY_SWAPS: &str = "vitrina_replay_swaps_total";
pub const QUALITY_VIOLATIONS: &str = "vitrina_quality_violations";
pub const QUALITY_PENDING: &str = "vitrina_quality_pending_references";
pub const QUALITY_CHECK_RUNS: &str = "vitrina_quality_check_runs_total";
pub const QUALITY_RUN_SECONDS: &str = "vitrina_quality_run_seconds";
pub const SHOWCASE_SLA_STATE: &str = "vitrina_showcase_sla_state";

/// Describes the projector metrics, and starts its event counters at 0 so
/// that `rate()` and alerts see a series before the first event.
pub fn describe_projector() {
    describe_restarts("projector");
    for c in [
        PROJECTOR_REWINDS,
        PROJECTOR_CONSENT_UPDATES,
        SHOWCASE_SLA_BREACHES,
        PROJECTOR_EVENTS,
        PROJECTOR_ROWS_WRITTEN,
    ] {
        metrics::counter!(c).increment(0);
    }
    for kind in ["assign", "unassign"] {
        metrics::counter!(PROJECTOR_ERRORS, "kind" => kind).increment(0);
    }
    describe_counter!(
        PROJECTOR_ERRORS,
        Unit::Count,
        "Consumer group assignments the projector could not take or give up (it rejoins the group)."
    );
    describe_counter!(
        PROJECTOR_EVENTS,
        Unit::Count,
        "Events consumed and applied (including replays the order guard skipped)."
    );
    describe_counter!(
        PROJECTOR_ROWS_WRITTEN,
        Unit::Count,
        "Showcase rows inserted or replaced."
    );
    describe_counter!(
        PROJECTOR_DEAD_LETTERS,
        Unit::Count,
        "Messages that failed to decode, sent to the dead-letter topic, by topic."
    );
    describe_histogram!(
        PROJECTOR_BATCH_SECONDS,
        Unit::Seconds,
        "Duration of one apply transaction."
    );
    describe_histogram!(
        PROJECTOR_VISIBLE_LATENCY,
        Unit::Seconds,
        "Journal commit to visible in the showcase, per entity."
    );
    describe_counter!(
        PROJECTOR_CONSENT_UPDATES,
        Unit::Count,
        "Showcase rows whose medical detail was revealed (consent granted) or redacted (revoked)."
    );
    describe_counter!(
        PROJECTOR_BULK_CONFLICTS,
        Unit::Count,
        "Bulk inserts of a catch-up batch that met rows already in the showcase and were upserted instead, by entity."
    );
    describe_histogram!(
        PROJECTOR_BATCH_EVENTS,
        Unit::Count,
        "Messages per apply transaction."
    );
    metrics::gauge!(PROJECTOR_PARTITIONS_STALLED).set(0.0);
    describe_gauge!(
        PROJECTOR_PARTITIONS_STALLED,
        Unit::Count,
        "Partitions stopped before an event whose schema this projector does not know (a newer capture): upgrade the projector."
    );
    describe_gauge!(
        PROJECTOR_CATCH_UP,
        "1 while the projector is in catch-up mode (larger batches), 0 otherwise."
    );
    describe_gauge!(
        PROJECTOR_LAG_MESSAGES,
        Unit::Count,
        "Messages in the log not yet applied, per topic and partition."
    );
    describe_gauge!(
        PROJECTOR_LAG_SECONDS,
        Unit::Seconds,
        "Age of the last applied record while more wait, per topic and partition (0 when caught up)."
    );
    describe_gauge!(
        SHOWCASE_ENTITY_FRESHNESS,
        Unit::Seconds,
        "Now minus fresh_as_of of one entity's topic partitions."
    );
    describe_counter!(
        SHOWCASE_SLA_BREACHES,
        Unit::Count,
        "Transitions into the breached SLA state."
    );
    describe_counter!(
        QUALITY_CHECK_RUNS,
        Unit::Count,
        "Quality-check rounds run over the showcase."
    );
    describe_histogram!(
        QUALITY_RUN_SECONDS,
        Unit::Seconds,
        "Duration of one quality-check round (they wait while the projector catches up)."
    );
    describe_gauge!(
        QUALITY_VIOLATIONS,
        Unit::Count,
        "Showcase rows failing a quality check, by dimension (completeness, actuality, consistency, connectedness) and check."
    );
    describe_gauge!(
        QUALITY_PENDING,
        Unit::Count,
        "References to rows not yet in the showcase, within the grace period (late arrivals held as pending), by check."
    );
    describe_gauge!(
        SHOWCASE_FRESHNESS,
        Unit::Seconds,
        "Now minus fresh_as_of: every journal change older than this is visible."
    );
    describe_gauge!(
        SHOWCASE_SLA_STATE,
        "1 for the current SLA state (ok, at_risk, breached), 0 for the others."
    );
}

/// Describes the capture metrics (call once after installing the exporter),
/// and starts the error counters at 0.
fn describe_restarts(stage: &'static str) {
    metrics::counter!(STAGE_RESTARTS, "stage" => stage).increment(0);
    describe_counter!(
        STAGE_RESTARTS,
        Unit::Count,
        "Restarts of a stage after a transient failure (a server restarting, a broker away), with backoff"
    );
}

pub fn describe_capture() {
    describe_restarts("capture");
    for kind in ["detail", "tombstone"] {
        metrics::counter!(CAPTURE_DETAILS, "kind" => kind).increment(0);
    }
    describe_counter!(
        CAPTURE_DETAILS,
        Unit::Count,
        "Records written to the restricted medical-detail topic: detail under consent, tombstones on revocation and deletion"
    );
    describe_counter!(
        CAPTURE_SCRUBBED,
        Unit::Count,
        "Names and long numbers replaced in free-text fields before publishing (never the values)"
    );
    describe_gauge!(
        CAPTURE_CONSENTING,
        Unit::Count,
        "Students with an active consent to medical-data transfer, as capture follows them"
    );
    for kind in ["replication", "heartbeat", "refresh"] {
        metrics::counter!(CAPTURE_ERRORS, "kind" => kind).increment(0);
    }
    metrics::counter!(CAPTURE_WATERMARKS).increment(0);
    metrics::counter!(CAPTURE_PARTITIONS_ADDED).increment(0);
    describe_counter!(
        CAPTURE_EVENTS,
        Unit::Count,
        "Events acknowledged by Kafka, by entity and op."
    );
    describe_counter!(
        CAPTURE_DEAD_LETTERS,
        Unit::Count,
        "Changes sent to the dead-letter topic, by table and reason kind."
    );
    describe_counter!(
        CAPTURE_QUALITY_FLAGS,
        Unit::Count,
        "Quality flags raised on published events (e.g. snils_invalid), by entity and flag."
    );
    describe_counter!(
        CAPTURE_ERRORS,
        Unit::Count,
        "Capture errors by kind (replication, kafka, postgres)."
    );
    describe_counter!(
        CAPTURE_TRANSACTIONS,
        Unit::Count,
        "Journal transactions fully acknowledged by Kafka and confirmed to the slot."
    );
    describe_histogram!(
        CAPTURE_ACK_LATENCY,
        Unit::Seconds,
        "Journal commit to Kafka acknowledgement of the whole transaction."
    );
    describe_gauge!(
        CAPTURE_CONFIRMED_LSN,
        "Highest LSN confirmed to the slot (all events at or below it acknowledged)."
    );
    describe_gauge!(
        CAPTURE_LAG_BYTES,
        Unit::Bytes,
        "Server WAL end minus the slot's confirmed flush LSN."
    );
    describe_gauge!(
        CAPTURE_LAG_SECONDS,
        Unit::Seconds,
        "Now minus the commit time of the last confirmed transaction, while changes are pending."
    );
    describe_gauge!(
        CAPTURE_SLOT_RETAINED_BYTES,
        Unit::Bytes,
        "WAL retained by the slot (server WAL end minus restart LSN)."
    );
    describe_gauge!(
        CAPTURE_IN_FLIGHT,
        Unit::Count,
        "Events produced and not yet acknowledged."
    );
    describe_counter!(
        GROUP_COMMIT_ERRORS,
        Unit::Count,
        "Commits of applied offsets to a stage's Kafka consumer group (informational, for kafka-consumer-groups.sh and Burrow) that failed, by stage."
    );
    describe_counter!(
        CAPTURE_PARTITIONS_ADDED,
        Unit::Count,
        "Partitions added to event topics that capture took up while running."
    );
    describe_counter!(
        CAPTURE_WATERMARKS,
        Unit::Count,
        "Heartbeat watermarks written (one per partition per heartbeat)."
    );
    describe_counter!(
        CAPTURE_SNAPSHOT_ROWS,
        Unit::Count,
        "Initial-load rows published, by table."
    );
    describe_gauge!(
        CAPTURE_SNAPSHOT_TABLES_DONE,
        Unit::Count,
        "Initial-load tables finished."
    );
    describe_gauge!(
        CAPTURE_SNAPSHOT_TABLES,
        Unit::Count,
        "Initial-load tables in all."
    );
    metrics::gauge!(CAPTURE_RESNAPSHOT_JOBS).set(0.0);
    metrics::counter!(CAPTURE_SLOT_RECOVERIES, "reason" => "absent").increment(0);
    metrics::counter!(CAPTURE_SLOT_RECOVERIES, "reason" => "invalidated").increment(0);
    describe_gauge!(
        CAPTURE_RESNAPSHOT_JOBS,
        Unit::Count,
        "Re-snapshots not finished (requested with `vitrina resnapshot`, or a lost slot's recovery)."
    );
    describe_counter!(
        CAPTURE_RESNAPSHOT_ROWS,
        Unit::Count,
        "Rows published by re-snapshots, by table."
    );
    describe_counter!(
        CAPTURE_RESNAPSHOT_OVERTAKEN,
        Unit::Count,
        "Rows of re-snapshot chunks not published because the stream carried a change of their key inside the chunk's window, by table."
    );
    describe_counter!(
        CAPTURE_RESNAPSHOT_CHUNKS,
        Unit::Count,
        "Re-snapshot chunks, by table and outcome (published; read_again: a transaction committed before the low watermark was not yet visible to the chunk)."
    );
    describe_counter!(
        CAPTURE_SLOT_RECOVERIES,
        Unit::Count,
        "Replication slots made again after the slot was lost, by reason (absent: dropped, or a failover; invalidated: max_slot_wal_keep_size); each starts a re-snapshot of every mapped table."
    );
}

/// Describes the replay metrics (counters start at 0).
pub fn describe_replay() {
    metrics::counter!(REPLAY_EVENTS).increment(0);
    metrics::counter!(REPLAY_SWAPS).increment(0);
    describe_counter!(
        REPLAY_EVENTS,
        Unit::Count,
        "Events applied to the shadow showcase by the running replay."
    );
    describe_gauge!(
        REPLAY_PROGRESS,
        "Share of the log the replay has applied (0..1)."
    );
    describe_gauge!(
        REPLAY_REMAINING,
        Unit::Count,
        "Messages the replay has still to apply before it can swap."
    );
    describe_counter!(REPLAY_SWAPS, Unit::Count, "Shadow showcases swapped in.");
}

pub const PROSTORE_DELTAS: &str = "vitrina_prostore_deltas_total";
pub const PROSTORE_RECORDS: &str = "vitrina_prostore_records_total";
pub const PROSTORE_LAST_DELTA: &str = "vitrina_prostore_last_delta";
pub const PROSTORE_COMMIT_TO_DELTA: &str = "vitrina_prostore_commit_to_delta_seconds";
pub const PROSTORE_FED_THROUGH: &str = "vitrina_prostore_fed_through_seconds";
pub const PROSTORE_RESENT: &str = "vitrina_prostore_resent_changes_skipped_total";
pub const PROSTORE_DEAD_LETTERS: &str = "vitrina_prostore_dead_letters_total";
pub const PROSTORE_OVERSIZE: &str = "vitrina_prostore_oversize_rows_total";

/// The ProStore feed's metrics, described and zeroed so dashboards see them
/// before the first delta.
pub fn describe_prostore() {
    describe_restarts("prostore");
    metrics::describe_counter!(
        PROSTORE_DELTAS,
        "Deltas committed to the ProStore upload topics."
    );
    metrics::describe_counter!(
        PROSTORE_RECORDS,
        "Records (upserts and deletes) in committed deltas."
    );
    metrics::describe_gauge!(PROSTORE_LAST_DELTA, "Number of the last committed delta.");
    metrics::describe_histogram!(
        PROSTORE_COMMIT_TO_DELTA,
        metrics::Unit::Seconds,
        "From the journal commit of a delta's oldest change to the delta's commit."
    );
    metrics::describe_counter!(
        PROSTORE_RESENT,
        "Changes capture sent again after a restart, skipped."
    );
    metrics::describe_counter!(
        PROSTORE_DEAD_LETTERS,
        "Messages the feed could not decode, dead-lettered."
    );
    metrics::describe_counter!(
        PROSTORE_OVERSIZE,
        "Rows too large for one upload message, left out (logged)."
    );
    for c in [
        PROSTORE_DELTAS,
        PROSTORE_RECORDS,
        PROSTORE_RESENT,
        PROSTORE_DEAD_LETTERS,
        PROSTORE_OVERSIZE,
    ] {
        metrics::counter!(c).increment(0);
    }
}

pub const RDM_ROWS_SENT: &str = "vitrina_rdm_rows_sent_total";
pub const RDM_ROWS_ACCEPTED: &str = "vitrina_rdm_rows_accepted_total";
pub const RDM_ROWS_REJECTED: &str = "vitrina_rdm_rows_rejected_total";
pub const RDM_RETRIES: &str = "vitrina_rdm_request_retries_total";
pub const RDM_UPLOAD_SECONDS: &str = "vitrina_rdm_upload_seconds";
pub const RDM_COMMIT_TO_ACCEPTED: &str = "vitrina_rdm_commit_to_accepted_seconds";
pub const RDM_BATCHES: &str = "vitrina_rdm_batches_total";
pub const RDM_LAST_BATCH: &str = "vitrina_rdm_last_batch";
pub const RDM_PENDING_DELTAS: &str = "vitrina_rdm_pending_deltas";
pub const RDM_OLDEST_PENDING: &str = "vitrina_rdm_oldest_pending_delta_seconds";

/// The RDM client's metrics, described and zeroed so dashboards see them
/// before the first batch.
pub fn describe_rdm() {
    describe_restarts("rdm");
    metrics::describe_counter!(
        RDM_ROWS_SENT,
        "Rows sent to the RDM upload service (a resent file counts again), by table and operation."
    );
    metrics::describe_counter!(
        RDM_ROWS_ACCEPTED,
        "Rows in files the service accepted (status 3)."
    );
    metrics::describe_counter!(
        RDM_ROWS_REJECTED,
        "Rows in files the service rejected (a 4xx answer or status 4, 5, 7), dead-lettered."
    );
    metrics::describe_counter!(
        RDM_RETRIES,
        "Requests to the service retried after a transient failure (unreachable, timeout, 5xx, 429)."
    );
    metrics::describe_histogram!(
        RDM_UPLOAD_SECONDS,
        metrics::Unit::Seconds,
        "From sending a file to its final status."
    );
    metrics::describe_histogram!(
        RDM_COMMIT_TO_ACCEPTED,
        metrics::Unit::Seconds,
        "From a row's journal commit to the service accepting it."
    );
    metrics::describe_counter!(RDM_BATCHES, "Batches committed to the upload journal.");
    metrics::describe_gauge!(RDM_LAST_BATCH, "Number of the last committed batch.");
    metrics::describe_gauge!(
        RDM_PENDING_DELTAS,
        "ProStore feed deltas committed and not yet uploaded."
    );
    metrics::describe_gauge!(
        RDM_OLDEST_PENDING,
        metrics::Unit::Seconds,
        "Age of the oldest committed delta not yet uploaded; 0 when none waits."
    );
    for c in [RDM_BATCHES, RDM_RETRIES] {
        metrics::counter!(c).increment(0);
    }
    for t in crate::rdm::TABLES {
        for op in ["upload", "delete"] {
            for c in [RDM_ROWS_SENT, RDM_ROWS_ACCEPTED, RDM_ROWS_REJECTED] {
                metrics::counter!(c, "table" => t.name, "operation" => op).increment(0);
            }
        }
    }
    metrics::gauge!(RDM_PENDING_DELTAS).set(0.0);
    metrics::gauge!(RDM_OLDEST_PENDING).set(0.0);
}

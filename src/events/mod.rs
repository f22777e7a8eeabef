//! Domain events and their Avro codec. No I/O here.
//!
//! Every event shares one envelope:
//!
//! ```text
//!   event_id        deterministic from the source position: a re-read change gets the same id
//!   op              CREATE | UPDATE | DELETE | READ (snapshot) | TRUNCATE
//!   entity, key     what the event is about
//!   source          { lsn, commit_lsn, txid, commit_time, table, snapshot }
//!   actor           who edited (ESIA or operator account), when the journal records it
//!   schema_version  of the contract
//!   quality         flags such as "snils_invalid": the change is published, flagged
//!   after           the new state, or null for DELETE and TRUNCATE
//! ```
//!
//! Messages use the Avro single-object encoding: `C3 01`, the 8-byte
//! little-endian CRC-64-AVRO (Rabin) fingerprint of the schema's Parsing
//! Canonical Form as the specification defines it ([`canonical`]), then the
//! Avro binary body; a consumer holding `avro/` can decode any
//! message ([`codec::Registry::decode`]).

pub mod canonical;
pub mod codec;
pub mod contract;
pub mod fold;
pub mod schema;

pub use contract::{Entity, Field, Ty, ENTITIES};

/// Version of the event contract carried in every event.
pub const SCHEMA_VERSION: i32 = 1;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Op {
    Create,
    Update,
    Delete,
    Read,
    Truncate,
}

impl Op {
    pub const SYMBOLS: [&'static str; 5] = ["CREATE", "UPDATE", "DELETE", "READ", "TRUNCATE"];

    pub fn symbol(self) -> &'static str {
        Self::SYMBOLS[self as usize]
    }

    pub fn from_symbol(s: &str) -> Option<Op> {
        [Op::Create, Op::Update, Op::Delete, Op::Read, Op::Truncate]
            .into_iter()
            .find(|o| o.symbol() == s)
    }
}

/// Where a change came from in the journal's WAL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Source {
    /// LSN of the change itself (of the snapshot for READ events).
    pub lsn: u64,
    /// LSN of the commit of its transaction (of the snapshot for READ).
    pub commit_lsn: u64,
    pub txid: i64,
    /// Commit time, microseconds since the Unix epoch.
    pub commit_time_micros: i64,
    /// `schema.table` in the journal.
    pub table: String,
    pub snapshot: bool,
}

/// A state field's value.
#[derive(Debug, Clone, PartialEq)]
pub enum Val {
    Null,
    Long(i64),
    Int(i32),
    Double(f64),
    Bool(bool),
    Str(String),
    /// Days since 1970-01-01.
    Date(i32),
    /// Microseconds since the Unix epoch.
    Timestamp(i64),
    /// Microseconds since midnight.
    Time(i64),
}

#[derive(Debug, Clone, PartialEq)]
pub struct Event {
    pub event_id: String,
    pub entity: &'static Entity,
    pub op: Op,
    pub key: String,
    pub source: Source,
    pub actor: Option<String>,
    pub quality: Vec<String>,
    /// Values in the order of `entity.fields`; `None` for DELETE/TRUNCATE.
    pub after: Option<Vec<Val>>,
}

/// Capture's progress marker (see [`schema::watermark_avsc`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Watermark {
    pub capture: String,
    pub commit_lsn: u64,
    pub commit_time_micros: i64,
    pub emitted_at_micros: i64,
    pub partition: i32,
}

/// The medical detail of one journal row, for the restricted topic
/// (`<prefix>.medical_detail.v1`, compacted, keyed `<entity>:<key>`).
/// Published only while the student's parent consents; a revocation
/// publishes a tombstone (no value) for every such key.
#[derive(Debug, Clone, PartialEq)]
pub struct Detail {
    pub entity: &'static Entity,
    pub key: String,
    pub student_id: Option<i64>,
    /// Every medical field of the contract (all entities'), by name; the
    /// ones this entity lacks are `None`.
    pub fields: Vec<(&'static str, Option<String>)>,
    pub commit_lsn: u64,
    pub lsn: u64,
    pub commit_time_micros: i64,
}

impl Detail {
    /// The Kafka key of a row's detail, and of its tombstone.
    pub fn kafka_key(entity: &str, key: &str) -> String {
        format!("{entity}:{key}")
    }
}

/// Anything found on an event topic.
#[derive(Debug, Clone, PartialEq)]
pub enum Message {
    Event(Event),
    Watermark(Watermark),
}

/// The id of a streamed change: its WAL position, its commit, and the table
/// (a TRUNCATE of several tables is one WAL record and several events).
/// Rows of one multi-row insert (COPY into the journal) share one WAL
/// record and so one position: `seq` is the row's place among the changes
/// at that position (0 for the first, and for every single-row change),
/// so ids stay unique and a change read again gets the same id.
pub fn change_event_id(commit_lsn: u64, lsn: u64, seq: u32, table: &str) -> String {
    if seq == 0 {
        format!("{commit_lsn:016X}-{lsn:016X}-{table}")
    } else {
        format!("{commit_lsn:016X}-{lsn:016X}.{seq}-{table}")
    }
}

/// The position `(commit_lsn, lsn)` of every row read at a snapshot whose
/// consistent point is `snapshot_lsn`: just below every streamed change
/// (a transaction committing exactly at the consistent point is streamed,
/// not in the snapshot, and must win over the snapshot's rows).
pub fn snapshot_position(snapshot_lsn: u64) -> (u64, u64) {
    let p = snapshot_lsn.saturating_sub(1);
    (p, p)
}

/// The position of the TRUNCATE that withdraws a table's earlier rows just
/// before it is loaded again at `snapshot_lsn`: below that snapshot's rows.
pub fn withdrawal_position(snapshot_lsn: u64) -> (u64, u64) {
    (snapshot_lsn.saturating_sub(1), 0)
}

/// The id of a snapshot read: the snapshot's position, the table and key.
pub fn snapshot_event_id(snapshot_lsn: u64, table: &str, key: &str) -> String {
    format!("S{snapshot_lsn:016X}-{table}-{key}")
}

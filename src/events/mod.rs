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
    let mut id = String::with_capacity(35 + 11 + table.len());
    push_hex16(&mut id, commit_lsn);
    id.push('-');
    push_hex16(&mut id, lsn);
    if seq != 0 {
        id.push('.');
        id.push_str(&seq.to_string());
    }
    id.push('-');
    id.push_str(table);
    id
}

/// `v` as 16 upper-case hex digits (`{v:016X}` without the formatter:
/// two of these are in every event id).
fn push_hex16(out: &mut String, v: u64) {
    const DIGITS: &[u8; 16] = b"0123456789ABCDEF";
    for shift in (0..16).rev() {
        out.push(DIGITS[((v >> (shift * 4)) & 0xF) as usize] as char);
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
    let mut id = String::with_capacity(18 + table.len() + 1 + key.len());
    id.push('S');
    push_hex16(&mut id, snapshot_lsn);
    id.push('-');
    id.push_str(table);
    id.push('-');
    id.push_str(key);
    id
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn event_ids_read_as_their_formats_say() {
        for (c, l, seq) in [
            (0u64, 0u64, 0u32),
            (0x16B3_7A80, 0x16B3_7A10, 0),
            (u64::MAX, 1, 7),
        ] {
            let want = if seq == 0 {
                format!("{c:016X}-{l:016X}-journal.grades")
            } else {
                format!("{c:016X}-{l:016X}.{seq}-journal.grades")
            };
            assert_eq!(change_event_id(c, l, seq, "journal.grades"), want);
            assert_eq!(
                snapshot_event_id(l, "journal.grades", "12:3"),
                format!("S{l:016X}-journal.grades-12:3")
            );
        }
    }
}

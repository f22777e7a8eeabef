//! The mapping from journal tables and columns to domain events. A region
//! with another journal schema writes a mapping file, not code; the
//! reference journal's mapping (`config/mapping.toml`) is the default.
//!
//! Invariants:
//! - Only columns the mapping names are read; every other column (names,
//!   addresses, raw documents) is dropped here, inside capture.
//! - Hashed fields go through [`crate::privacy`]: an invalid identifier
//!   yields no hash and a quality flag (`<kind>_invalid`), never an error.
//! - A row that cannot be mapped (a missing or unparsable mapped column) is
//!   an [`Unmappable`] with a reason that names columns, never values.

use std::collections::BTreeMap;
use std::path::Path;

use chrono::{DateTime, NaiveDate, NaiveTime, Timelike};
use serde::Deserialize;

use crate::events::contract::{self, Entity, Ty};
use crate::events::Val;
use crate::privacy::{Depersonalizer, IdKind};

/// The reference journal's mapping, used when no mapping file is configured.
pub const DEFAULT_MAPPING: &str = include_str!("../../config/mapping.toml");

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct MappingFile {
    table: Vec<TableSpec>,
    /// Where people's names are: capture learns them to replace them in
    /// free text (they are never published).
    #[serde(default)]
    names: Vec<NameSource>,
}

/// A journal table and its columns holding people's names.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NameSource {
    pub table: String,
    pub columns: Vec<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TableSpec {
    table: String,
    entity: String,
    key: Vec<String>,
    partition_by: Option<String>,
    actor: Option<String>,
    /// Column whose value decides whether a row is inside the initial-load
    /// history window (a date or timestamp).
    history: Option<String>,
    #[serde(default)]
    fields: BTreeMap<String, FieldSpec>,
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum FieldSpec {
    Column(String),
    Hash {
        hash: HashKind,
        columns: Vec<String>,
    },
}

#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum HashKind {
    Snils,
    Passport,
    BirthCertificate,
    /// Any other document number: whitespace removed, upper-cased.
    Document,
}

#[derive(Debug, Clone)]
pub enum Source {
    Column(String),
    Hash(HashKind, Vec<String>),
}

/// One journal table's compiled mapping.
#[derive(Debug, Clone)]
pub struct TableMapping {
    /// `schema.table`.
    pub table: String,
    pub entity: &'static Entity,
    pub key: Vec<String>,
    pub partition_by: Option<String>,
    pub actor: Option<String>,
    pub history: Option<String>,
    /// One source per contract field, in contract order.
    pub sources: Vec<Source>,
    /// Every journal column this mapping reads, sorted: the order the
    /// initial load's COPY reads them in.
    cols: Vec<String>,
    /// Where each column the mapping reads stands in `cols`, found once.
    plan: Plan,
}

/// Indexes into [`TableMapping::columns`] of the key, partition and actor
/// columns and of each source's columns: a row laid out in that order
/// ([`Row::at`]) is read without a search by name.
#[derive(Debug, Clone, Default)]
struct Plan {
    key: Vec<usize>,
    partition_by: Option<usize>,
    actor: Option<usize>,
    /// Per source: its column, or a hash's first and second column.
    sources: Vec<(usize, Option<usize>)>,
}

impl Plan {
    fn new(cols: &[String], t: &TableMapping) -> Plan {
        let at = |c: &String| {
            cols.binary_search(c)
                .expect("cols holds every mapped column")
        };
        Plan {
            key: t.key.iter().map(at).collect(),
            partition_by: t.partition_by.as_ref().map(at),
            actor: t.actor.as_ref().map(at),
            sources: t
                .sources
                .iter()
                .map(|s| match s {
                    Source::Column(c) => (at(c), None),
                    Source::Hash(_, cs) => (at(&cs[0]), cs.get(1).map(at)),
                })
                .collect(),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum MappingError {
    #[error("mapping {origin}: {message}\nhint: see config/mapping.toml for the reference journal's mapping")]
    Invalid { origin: String, message: String },
}

/// Why a row could not become an event (goes to the dead-letter topic).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct Unmappable(pub String);

#[derive(Debug, Clone)]
pub struct Mapping {
    pub tables: Vec<TableMapping>,
    pub names: Vec<NameSource>,
}

impl Mapping {
    pub fn reference() -> Mapping {
        Mapping::parse(DEFAULT_MAPPING, "config/mapping.toml (built in)")
            .expect("built-in mapping is valid")
    }

    pub fn load(path: Option<&Path>) -> Result<Mapping, MappingError> {
        match path {
            None => Ok(Mapping::reference()),
            Some(p) => {
                let text = std::fs::read_to_string(p).map_err(|e| MappingError::Invalid {
                    origin: p.display().to_string(),
                    message: e.to_string(),
                })?;
                Mapping::parse(&text, &p.display().to_string())
            }
        }
    }

    pub fn parse(text: &str, origin: &str) -> Result<Mapping, MappingError> {
        let bad = |message: String| MappingError::Invalid {
            origin: origin.to_string(),
            message,
        };
        let file: MappingFile = toml::from_str(text).map_err(|e| bad(e.to_string()))?;
        let mut tables = Vec::new();
        for t in file.table {
            let entity = contract::entity(&t.entity).ok_or_else(|| {
                bad(format!(
                    "table {}: unknown entity `{}` (known: {})",
                    t.table,
                    t.entity,
                    contract::ENTITIES
                        .iter()
                        .map(|e| e.name)
                        .collect::<Vec<_>>()
                        .join(", ")
                ))
            })?;
            if !t.table.contains('.') {
                return Err(bad(format!(
                    "table `{}` must be schema-qualified (schema.table)",
                    t.table
                )));
            }
            if t.key.is_empty() {
                return Err(bad(format!(
                    "table {}: `key` needs at least one column",
                    t.table
                )));
            }
            for name in t.fields.keys() {
                if entity.field(name).is_none() {
                    return Err(bad(format!(
                        "table {}: entity `{}` has no field `{name}`",
                        t.table, entity.name
                    )));
                }
            }
            let mut sources = Vec::new();
            for f in entity.fields {
                let src =
                    match t.fields.get(f.name) {
                        None => Source::Column(f.name.to_string()),
                        Some(FieldSpec::Column(c)) => Source::Column(c.clone()),
                        Some(FieldSpec::Hash { hash, columns }) => {
                            let want = if *hash == HashKind::Passport
                                || *hash == HashKind::BirthCertificate
                            {
                                2
                            } else {
                                1
                            };
                            if columns.len() != want {
                                return Err(bad(format!(
                                "table {}: field `{}` hashes {:?} from {} column(s), needs {want}",
                                t.table, f.name, hash, columns.len()
                            )));
                            }
                            if f.ty != Ty::Str {
                                return Err(bad(format!(
                                    "table {}: hashed field `{}` must be a string field",
                                    t.table, f.name
                                )));
                            }
                            Source::Hash(*hash, columns.clone())
                        }
                    };
                sources.push(src);
            }
            let mut m = TableMapping {
                table: t.table,
                entity,
                key: t.key,
                partition_by: t.partition_by,
                actor: t.actor,
                history: t.history,
                sources,
                cols: Vec::new(),
                plan: Plan::default(),
            };
            m.cols = m.read_columns();
            m.plan = Plan::new(&m.cols, &m);
            tables.push(m);
        }
        for n in &file.names {
            if !n.table.contains('.') || n.columns.is_empty() {
                return Err(bad(format!(
                    "[[names]] {}: needs a schema-qualified table and at least one column",
                    n.table
                )));
            }
        }
        Ok(Mapping {
            tables,
            names: file.names,
        })
    }

    /// The name columns of `schema`.`table`, when it holds people's names.
    pub fn names_of(&self, schema: &str, table: &str) -> Option<&NameSource> {
        self.names
            .iter()
            .find(|n| qualified_is(&n.table, schema, table))
    }

    /// The mapping of the table that feeds `entity`.
    pub fn of_entity(&self, entity: &str) -> Option<&TableMapping> {
        self.tables.iter().find(|t| t.entity.name == entity)
    }

    pub fn table(&self, qualified: &str) -> Option<&TableMapping> {
        self.tables.iter().find(|t| t.table == qualified)
    }

    /// The mapping of `schema`.`table`, without building the qualified name
    /// (called for every change capture receives).
    pub fn table_of(&self, schema: &str, table: &str) -> Option<&TableMapping> {
        self.tables
            .iter()
            .find(|t| qualified_is(&t.table, schema, table))
    }
}

/// Whether `qualified` is `schema.table` (compared in place: this runs for
/// every change capture receives).
fn qualified_is(qualified: &str, schema: &str, table: &str) -> bool {
    qualified.len() == schema.len() + 1 + table.len()
        && qualified.as_bytes()[schema.len()] == b'.'
        && qualified.starts_with(schema)
        && qualified.ends_with(table)
}

impl TableMapping {
    /// The journal column contract field `field` comes from, when it is a
    /// plain column.
    pub fn column_of(&self, field: &str) -> Option<&str> {
        let i = self.entity.index(field)?;
        match &self.sources[i] {
            Source::Column(c) => Some(c),
            Source::Hash(..) => None,
        }
    }

    /// Every journal column this mapping reads, sorted.
    pub fn columns(&self) -> &[String] {
        &self.cols
    }

    fn read_columns(&self) -> Vec<String> {
        let mut cols: Vec<String> = self.key.clone();
        cols.extend(self.partition_by.iter().cloned());
        cols.extend(self.actor.iter().cloned());
        for s in &self.sources {
            match s {
                Source::Column(c) => cols.push(c.clone()),
                Source::Hash(_, cs) => cols.extend(cs.iter().cloned()),
            }
        }
        cols.sort();
        cols.dedup();
        cols
    }
}

/// A row as capture sees it: column name → text value (`None` = NULL).
/// A column absent from the row is reported as missing.
pub trait Row {
    fn get(&self, column: &str) -> Option<Option<&str>>;

    /// Column `column`, which stands at `i` in the mapping's
    /// [`TableMapping::columns`]: a row laid out in that order answers
    /// without searching.
    fn at(&self, i: usize, column: &str) -> Option<Option<&str>> {
        let _ = i;
        self.get(column)
    }
}

impl Row for BTreeMap<String, Option<String>> {
    fn get(&self, column: &str) -> Option<Option<&str>> {
        BTreeMap::get(self, column).map(|v| v.as_deref())
    }
}

/// A mapped row: the event's key, Kafka key, actor, state and quality flags.
#[derive(Debug, Clone, PartialEq)]
pub struct Mapped {
    pub key: String,
    pub partition_key: String,
    pub actor: Option<String>,
    pub after: Vec<Val>,
    pub quality: Vec<String>,
}

fn missing(t: &TableMapping, col: &str) -> Unmappable {
    Unmappable(format!(
        "mapped column `{col}` is missing from {} (dropped or renamed? or, in an UPDATE, a TOASTed value left unchanged: ALTER TABLE {} REPLICA IDENTITY FULL sends it in the old row); entity `{}` cannot be built",
        t.table,
        t.table, t.entity.name
    ))
}

fn parse_val(ty: Ty, text: &str) -> Result<Val, String> {
    // The value itself stays out of the reason: it may be personal data.
    let bad = || {
        format!(
            "cannot read a {}-character value as {ty:?}",
            text.chars().count()
        )
    };
    Ok(match ty {
        Ty::Long => Val::Long(text.parse().map_err(|_| bad())?),
        Ty::Int => Val::Int(text.parse().map_err(|_| bad())?),
        Ty::Double => Val::Double(text.parse().map_err(|_| bad())?),
        Ty::Bool => Val::Bool(match text {
            "t" | "true" => true,
            "f" | "false" => false,
            _ => return Err(bad()),
        }),
        Ty::Str => Val::Str(text.to_string()),
        // PostgreSQL's own output forms are read directly; anything else
        // (BC dates, years past 9999) goes through chrono's parser, which
        // reads a format string per call and cost a few per cent of
        // capture's time.
        Ty::Date => Val::Date(match pg_text::date(text) {
            Some(d) => d,
            None => {
                let d = NaiveDate::parse_from_str(text, "%Y-%m-%d").map_err(|_| bad())?;
                (d - NaiveDate::from_ymd_opt(1970, 1, 1).unwrap()).num_days() as i32
            }
        }),
        Ty::Timestamp => Val::Timestamp(match pg_text::timestamptz(text) {
            Some(t) => t,
            None => DateTime::parse_from_str(text, "%Y-%m-%d %H:%M:%S%.f%#z")
                .map_err(|_| bad())?
                .timestamp_micros(),
        }),
        Ty::Time => Val::Time(match pg_text::time(text) {
            Some(t) => t,
            None => {
                let t = NaiveTime::parse_from_str(text, "%H:%M:%S%.f").map_err(|_| bad())?;
                t.num_seconds_from_midnight() as i64 * 1_000_000 + (t.nanosecond() / 1000) as i64
            }
        }),
    })
}

/// PostgreSQL's text output of dates and times (DateStyle ISO), read
/// without a format string; `None` for anything else, which the caller
/// hands to chrono.
mod pg_text {
    use chrono::{Datelike, NaiveDate};

    fn digits(b: &[u8]) -> Option<u32> {
        b.iter().try_fold(0u32, |n, c| {
            c.is_ascii_digit().then(|| n * 10 + u32::from(c - b'0'))
        })
    }

    /// `YYYY-MM-DD`: days since 1970-01-01.
    pub fn date(s: &str) -> Option<i32> {
        let b = s.as_bytes();
        if b.len() != 10 || b[4] != b'-' || b[7] != b'-' {
            return None;
        }
        let d = NaiveDate::from_ymd_opt(
            digits(&b[0..4])? as i32,
            digits(&b[5..7])?,
            digits(&b[8..10])?,
        )?;
        Some(d.num_days_from_ce() - 719_163)
    }

    /// `HH:MM:SS[.f…]`, the fraction up to microseconds: µs since midnight;
    /// the length of what was read.
    fn time_prefix(b: &[u8]) -> Option<(i64, usize)> {
        if b.len() < 8 || b[2] != b':' || b[5] != b':' {
            return None;
        }
        let (h, m, sec) = (digits(&b[0..2])?, digits(&b[3..5])?, digits(&b[6..8])?);
        if h > 23 || m > 59 || sec > 59 {
            return None;
        }
        let mut micros = (i64::from(h) * 3600 + i64::from(m) * 60 + i64::from(sec)) * 1_000_000;
        let mut n = 8;
        if b.get(8) == Some(&b'.') {
            let frac = b[9..].iter().take_while(|c| c.is_ascii_digit()).count();
            if frac == 0 || frac > 6 {
                return None;
            }
            let f = digits(&b[9..9 + frac])?;
            micros += i64::from(f) * 10i64.pow(6 - frac as u32);
            n = 9 + frac;
        }
        Some((micros, n))
    }

    /// `HH:MM:SS[.f…]`: µs since midnight.
    pub fn time(s: &str) -> Option<i64> {
        let (micros, n) = time_prefix(s.as_bytes())?;
        (n == s.len()).then_some(micros)
    }

    /// `YYYY-MM-DD HH:MM:SS[.f…]±HH[:MM[:SS]]`: µs since the epoch.
    pub fn timestamptz(s: &str) -> Option<i64> {
        let b = s.as_bytes();
        if b.len() < 22 || b[10] != b' ' {
            return None;
        }
        let days = i64::from(date(&s[..10])?);
        let (micros, n) = time_prefix(&b[11..])?;
        let z = &b[11 + n..];
        let sign = match z.first()? {
            b'+' => 1,
            b'-' => -1,
            _ => return None,
        };
        let mut offset = i64::from(digits(z.get(1..3)?)?) * 3600;
        let mut rest = &z[3..];
        for unit in [60, 1] {
            match rest {
                [] => break,
                [b':', a, b2, tail @ ..] => {
                    offset += i64::from(digits(&[*a, *b2])?) * unit;
                    rest = tail;
                }
                _ => return None,
            }
        }
        if !rest.is_empty() {
            return None;
        }
        Some(days * 86_400_000_000 + micros - sign * offset * 1_000_000)
    }
}

fn normalize_document(s: &str) -> String {
    s.chars()
        .filter(|c| !c.is_whitespace())
        .flat_map(char::to_uppercase)
        .collect()
}

impl TableMapping {
    /// Maps a row (new state for inserts/updates/reads).
    pub fn map_row(&self, row: &dyn Row, dp: &Depersonalizer) -> Result<Mapped, Unmappable> {
        let p = &self.plan;
        let get = |i: usize, c: &str| row.at(i, c).ok_or_else(|| missing(self, c));
        let key = self.key_of(row)?;
        let partition_key = match (&self.partition_by, p.partition_by) {
            (Some(c), Some(i)) => get(i, c)?.unwrap_or(&key).to_string(),
            _ => key.clone(),
        };
        let actor = match (&self.actor, p.actor) {
            (Some(c), Some(i)) => get(i, c)?.map(str::to_string),
            _ => None,
        };
        let mut after = Vec::with_capacity(self.sources.len());
        let mut quality = Vec::new();
        for ((f, src), &(i, j)) in self.entity.fields.iter().zip(&self.sources).zip(&p.sources) {
            let v = match src {
                Source::Column(c) => match get(i, c)? {
                    None => Val::Null,
                    Some(text) => parse_val(f.ty, text).map_err(|m| {
                        Unmappable(format!("{}.{} (field `{}`): {m}", self.table, c, f.name))
                    })?,
                },
                Source::Hash(kind, cols) => {
                    let first = get(i, &cols[0])?;
                    let second = match (cols.get(1), j) {
                        (Some(c), Some(j)) => get(j, c)?,
                        _ => None,
                    };
                    match (first, kind) {
                        (None, _) => Val::Null,
                        (Some(raw), HashKind::Document) => {
                            Val::Str(dp.digest(&normalize_document(raw)))
                        }
                        (Some(raw), k) => {
                            let id_kind = match k {
                                HashKind::Snils => IdKind::Snils,
                                HashKind::Passport => IdKind::Passport,
                                _ => IdKind::BirthCertificate,
                            };
                            if cols.len() == 2 && second.is_none() {
                                quality.push(format!("{}_invalid", id_kind.as_str()));
                                Val::Null
                            } else {
                                match dp.identifier(id_kind, raw, second) {
                                    Ok(h) => Val::Str(h),
                                    Err(_) => {
                                        quality.push(format!("{}_invalid", id_kind.as_str()));
                                        Val::Null
                                    }
                                }
                            }
                        }
                    }
                }
            };
            if matches!(v, Val::Null) && !f.nullable {
                return Err(Unmappable(format!(
                    "{}: required field `{}` of entity `{}` is NULL",
                    self.table, f.name, self.entity.name
                )));
            }
            after.push(v);
        }
        Ok(Mapped {
            key,
            partition_key,
            actor,
            after,
            quality,
        })
    }

    /// The entity key from key columns, joined by `:` (for deletes: the
    /// old key).
    pub fn key_of(&self, row: &dyn Row) -> Result<String, Unmappable> {
        let mut key = String::new();
        for (n, (c, &i)) in self.key.iter().zip(&self.plan.key).enumerate() {
            match row.at(i, c).ok_or_else(|| missing(self, c))? {
                Some(v) => {
                    if n > 0 {
                        key.push(':');
                    }
                    key.push_str(v);
                }
                None => {
                    return Err(Unmappable(format!(
                        "{}: key column `{c}` is NULL",
                        self.table
                    )))
                }
            }
        }
        Ok(key)
    }

    /// The Kafka key of a delete: the partition column when the old row has
    /// it (REPLICA IDENTITY FULL), else the entity key.
    pub fn partition_key_of_old(&self, row: &dyn Row, key: &str) -> String {
        self.partition_by
            .as_ref()
            .and_then(|c| row.get(c).flatten())
            .unwrap_or(key)
            .to_string()
    }
}

#[cfg(test)]
#[path = "mapping_tests.rs"]
mod tests;

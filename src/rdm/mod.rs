//! The regional data mart (RDM, региональная витрина данных) upload
//! service: its public entities as CSV files, sent by [`upload`].
//!
//! An RDM table is made from one contract entity: ORGANISATIONS from
//! `organization`, ADDRESS and ADDRESS_ORGANISATION both from
//! `organization_address`, TELECOM from `organization_contact`. Column
//! order, names and required columns are the public entity descriptions
//! (`edu-rdm-integration`'s `rdm_entities/entities.py`).
//!
//! A file is what vendors' clients send: a header row of column names, then
//! one row per record, `;`-separated, lines joined by `\n`; a value is
//! quoted (`"` doubled inside) unless it is empty and not required;
//! datetimes are `YYYY-MM-DD hh:mm:ss` in the region's local time, dates
//! `YYYY-MM-DD`, booleans `True`/`False`; identifiers carry the configured
//! source prefix (`<prefix>-<id>`). Every row has `create_datetime` (the
//! journal commit of the row's latest change) and `send_datetime` (when its
//! batch was planned).
//!
//! Invariants:
//! - Only these tables leave through RDM: organizations' registry data,
//!   addresses and contact points. People's addresses and contacts are in
//!   no contract entity, so they cannot.
//! - A file's content is a function of its batch's plan ([`upload`]), so a
//!   resent file is byte-identical to the first one.

mod checkpoint;
pub mod client;
pub mod upload;

use std::collections::BTreeMap;

use apache_avro::types::Value;
use chrono::{DateTime, FixedOffset, NaiveDate, Utc};

/// Where an RDM column's value comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Src {
    /// A contract field, as it is.
    Field(&'static str),
    /// A contract field holding an identifier: sent with the source prefix.
    Id(&'static str),
    /// The journal commit time of the row's latest change.
    Created,
    /// When the row's batch was planned.
    Sent,
}

#[derive(Debug, Clone, Copy)]
pub struct Column {
    pub name: &'static str,
    pub src: Src,
    pub required: bool,
}

/// One RDM table: its name in the service's paths, the contract entity it
/// is made from, its columns in order and its primary key columns.
#[derive(Debug)]
pub struct Table {
    pub name: &'static str,
    pub entity: &'static str,
    pub columns: &'static [Column],
    pub primary_key: &'static [&'static str],
}

const fn req(name: &'static str, src: Src) -> Column {
    Column {
        name,
        src,
        required: true,
    }
}
const fn opt(name: &'static str, src: Src) -> Column {
    Column {
        name,
        src,
        required: false,
    }
}

use Src::{Created, Field, Id, Sent};

/// The public RDM entities vitrina delivers, parents before children (the
/// order uploads go in; deletes go in reverse).
pub const TABLES: &[Table] = &[
    Table {
        name: "organisations",
        entity: "organization",
        columns: &[
            req("id", Id("id")),
            req("rosobr_id", Field("rosobr_id")),
            req("ogrn", Field("ogrn")),
            opt("okpo", Field("okpo")),
            req("inn", Field("inn")),
            req("kpp", Field("kpp")),
            opt("active", Field("active")),
            req("okpf", Field("okopf")),
            req("okfs", Field("okfs")),
            req("okogu", Field("okogu")),
            req("okato", Field("okato")),
            req("oktmo", Field("oktmo")),
            req("name", Field("full_name")),
            opt("partof_id", Id("parent_id")),
            req("executive_name", Field("head_name")),
            req("executive_position", Field("head_position")),
            req("phone", Field("phone")),
            req("create_datetime", Created),
            req("send_datetime", Sent),
        ],
        primary_key: &["id"],
    },
    Table {
        name: "address",
        entity: "organization_address",
        columns: &[
            req("id", Id("id")),
            opt("use_address", Field("use_address")),
            req("type_address", Field("type_address")),
            req("text", Field("text")),
            opt("city", Field("city")),
            opt("district", Field("district")),
            opt("state", Field("state")),
            opt("postal_code", Field("postal_code")),
            opt("country", Field("country")),
            opt("start_datetime", Field("start_datetime")),
            opt("end_datetime", Field("end_datetime")),
            opt("flat", Field("flat")),
            opt("building", Field("building")),
            opt("house", Field("house")),
            opt("street", Field("street")),
            req("create_datetime", Created),
            req("send_datetime", Sent),
        ],
        primary_key: &["id"],
    },
    Table {
        name: "address_organisation",
        entity: "organization_address",
        columns: &[
            req("address_id", Id("id")),
            req("organisation_id", Id("organization_id")),
            req("create_datetime", Created),
            req("send_datetime", Sent),
        ],
        primary_key: &["address_id", "organisation_id"],
    },
    Table {
        name: "telecom",
        entity: "organization_contact",
        columns: &[
            req("id", Id("id")),
            opt("type_contact", Field("type_contact")),
            opt("value_type", Field("value_type")),
            opt("use_cod", Field("use_cod")),
            opt("rank_contact", Field("rank_contact")),
            opt("start_datetime", Field("start_datetime")),
            opt("end_datetime", Field("end_datetime")),
            req("create_datetime", Created),
            req("send_datetime", Sent),
        ],
        primary_key: &["id"],
    },
];

/// The RDM tables made from `entity`.
pub fn tables_of(entity: &str) -> impl Iterator<Item = &'static Table> + '_ {
    TABLES.iter().filter(move |t| t.entity == entity)
}

/// The contract entities RDM tables are made from, each once.
pub fn entities() -> Vec<&'static str> {
    let mut out: Vec<&'static str> = Vec::new();
    for t in TABLES {
        if !out.contains(&t.entity) {
            out.push(t.entity);
        }
    }
    out
}

/// The two operations of the service: `upload` (create or update) and
/// `delete`, each a path segment.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Operation {
    Upload,
    Delete,
}

impl Operation {
    pub fn as_str(self) -> &'static str {
        match self {
            Operation::Upload => "upload",
            Operation::Delete => "delete",
        }
    }
}

/// How values are written: the identifier prefix and the local offset.
#[derive(Debug, Clone)]
pub struct Format {
    pub id_prefix: String,
    pub offset: FixedOffset,
}

impl Format {
    /// A value's text before quoting (empty for null).
    fn text(&self, v: &Value, id: bool) -> String {
        let s = match v {
            Value::Null => return String::new(),
            Value::Union(_, inner) => return self.text(inner, id),
            Value::String(s) => s.chars().filter(|c| !c.is_control()).collect(),
            Value::Long(n) => n.to_string(),
            Value::Int(n) => n.to_string(),
            Value::Boolean(b) => if *b { "True" } else { "False" }.to_string(),
            Value::Double(d) => d.to_string(),
            Value::Date(d) => NaiveDate::from_num_days_from_ce_opt(*d + 719_163)
                .map(|d| d.format("%Y-%m-%d").to_string())
                .unwrap_or_default(),
            Value::TimestampMicros(us) => self.datetime(*us),
            Value::TimeMicros(us) => {
                let s = us / 1_000_000;
                format!("{:02}:{:02}:{:02}", s / 3600, s / 60 % 60, s % 60)
            }
            other => format!("{other:?}"),
        };
        if id && !s.is_empty() && !self.id_prefix.is_empty() {
            format!("{}-{s}", self.id_prefix)
        } else {
            s
        }
    }

    /// `YYYY-MM-DD hh:mm:ss` in the region's local time.
    pub fn datetime(&self, micros: i64) -> String {
        DateTime::<Utc>::from_timestamp_micros(micros)
            .map(|t| {
                t.with_timezone(&self.offset)
                    .format("%Y-%m-%d %H:%M:%S")
                    .to_string()
            })
            .unwrap_or_default()
    }
}

/// One value as it stands in a file.
fn cell(text: &str, required: bool) -> String {
    if text.is_empty() && !required {
        String::new()
    } else {
        format!("\"{}\"", text.replace('"', "\"\""))
    }
}

/// A row of an RDM table before it is sent: its cells except
/// `send_datetime`, which the batch supplies.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Rendered {
    /// The primary key columns' texts, joined by `|`.
    pub pk: String,
    pub cells: Vec<String>,
}

impl Table {
    /// The header row.
    pub fn header(&self) -> String {
        self.columns
            .iter()
            .map(|c| c.name)
            .collect::<Vec<_>>()
            .join(";")
    }

    /// The row an upload record leaves (`fields` by contract name).
    pub fn render(
        &self,
        fields: &BTreeMap<String, Value>,
        commit_time_micros: i64,
        f: &Format,
    ) -> Rendered {
        let mut pk = Vec::new();
        let cells = self
            .columns
            .iter()
            .map(|c| {
                let text = match c.src {
                    Src::Field(n) => fields.get(n).map(|v| f.text(v, false)).unwrap_or_default(),
                    Src::Id(n) => fields.get(n).map(|v| f.text(v, true)).unwrap_or_default(),
                    Src::Created => f.datetime(commit_time_micros),
                    Src::Sent => String::new(),
                };
                if self.primary_key.contains(&c.name) {
                    pk.push(text.clone());
                }
                if c.src == Src::Sent {
                    String::new()
                } else {
                    cell(&text, c.required)
                }
            })
            .collect();
        Rendered {
            pk: pk.join("|"),
            cells,
        }
    }

    /// One line of a file: `r` with `send_datetime` filled in.
    pub fn line(&self, r: &Rendered, sent: &str) -> String {
        self.columns
            .iter()
            .zip(&r.cells)
            .map(|(c, v)| {
                if c.src == Src::Sent {
                    cell(sent, c.required)
                } else {
                    v.clone()
                }
            })
            .collect::<Vec<_>>()
            .join(";")
    }

    /// A whole file: the header, then `rows`.
    pub fn file<'a>(&self, rows: impl IntoIterator<Item = &'a Rendered>, sent: &str) -> String {
        let mut out = self.header();
        for r in rows {
            out.push('\n');
            out.push_str(&self.line(r, sent));
        }
        out
    }
}

/// The service's request status codes (`GET /{version}/requests/{id}/status`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    /// −1 loading into the buffer, 0 buffered, 1 waiting for a delta to
    /// open, 2 processing, 6 format-logical control running.
    Pending,
    /// 3: processed successfully.
    Accepted,
    /// 4 processing failed, 5 request id not found, 7 format-logical
    /// control errors.
    Rejected,
}

impl Status {
    pub fn of(code: i64) -> Option<Status> {
        match code {
            -1 | 0 | 1 | 2 | 6 => Some(Status::Pending),
            3 => Some(Status::Accepted),
            4 | 5 | 7 => Some(Status::Rejected),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fmt(prefix: &str) -> Format {
        Format {
            id_prefix: prefix.into(),
            offset: FixedOffset::east_opt(3 * 3600).unwrap(),
        }
    }

    fn org() -> BTreeMap<String, Value> {
        let mut m = BTreeMap::new();
        m.insert("id".into(), Value::Long(7));
        m.insert(
            "full_name".into(),
            Value::String("МБОУ \"Школа №7\"\u{7}".into()),
        );
        m.insert("active".into(), Value::Boolean(true));
        m.insert("parent_id".into(), Value::Null);
        m.insert(
            "okpo".into(),
            Value::Union(1, Box::new(Value::String(String::new()))),
        );
        m
    }

    #[test]
    fn a_row_is_written_as_vendors_write_it() {
        let t = &TABLES[0];
        // 2026-12-01 09:30:00 UTC is 12:30:00 in Moscow.
        let r = t.render(&org(), 1_796_117_400_000_000, &fmt("69"));
        let line = t.line(&r, "2026-12-01 12:31:00");
        let cells: Vec<&str> = line.split(';').collect();
        assert_eq!(cells.len(), t.columns.len());
        assert_eq!(cells[0], "\"69-7\"", "identifiers carry the prefix");
        assert_eq!(cells[1], "\"\"", "a required empty value is quoted");
        assert_eq!(cells[3], "", "an optional empty value is not");
        assert_eq!(cells[6], "\"True\"");
        assert_eq!(
            cells[12], "\"МБОУ \"\"Школа №7\"\"\"",
            "quotes doubled, control characters dropped"
        );
        assert_eq!(cells[13], "", "no parent");
        assert_eq!(cells[17], "\"2026-12-01 12:30:00\"");
        assert_eq!(cells[18], "\"2026-12-01 12:31:00\"");
        assert_eq!(r.pk, "69-7");
    }

    #[test]
    fn a_file_has_the_header_then_rows() {
        let t = &TABLES[2];
        let mut m = BTreeMap::new();
        m.insert("id".into(), Value::Long(3));
        m.insert("organization_id".into(), Value::Long(2));
        let r = t.render(&m, 0, &fmt(""));
        assert_eq!(r.pk, "3|2");
        assert_eq!(
            t.file([&r, &r], "2026-01-01 00:00:00"),
            "address_id;organisation_id;create_datetime;send_datetime\n\
             \"3\";\"2\";\"1970-01-01 03:00:00\";\"2026-01-01 00:00:00\"\n\
             \"3\";\"2\";\"1970-01-01 03:00:00\";\"2026-01-01 00:00:00\""
        );
    }

    #[test]
    fn every_column_names_a_field_of_its_entity() {
        for t in TABLES {
            let e = crate::events::ENTITIES
                .iter()
                .find(|e| e.name == t.entity)
                .unwrap_or_else(|| panic!("{} names no entity", t.name));
            for c in t.columns {
                if let Src::Field(n) | Src::Id(n) = c.src {
                    assert!(
                        e.fields.iter().any(|f| f.name == n),
                        "{}.{} reads {n}, which {} lacks",
                        t.name,
                        c.name,
                        e.name
                    );
                }
            }
            for k in t.primary_key {
                assert!(t.columns.iter().any(|c| c.name == *k));
            }
        }
    }

    #[test]
    fn status_codes_sort_into_outcomes() {
        assert_eq!(Status::of(1), Some(Status::Pending));
        assert_eq!(Status::of(3), Some(Status::Accepted));
        assert_eq!(Status::of(7), Some(Status::Rejected));
        assert_eq!(Status::of(42), None);
    }
}

//! The ProStore upload feed: the showcase's tables as the standard regional
//! showcase software (ProStore) ingests them from Kafka.
//!
//! Layout of one upload message (ProStore's "upload format"): the value is
//! an Avro Object Container File with its schema embedded, holding many
//! records; the record is flat (primitives, unions with null, `date`,
//! `time-micros`, `timestamp-micros`) and its fields follow the target
//! table's columns in order, with `sys_op` last (0 insert or update, 1
//! delete).
//!
//! A table here is a showcase table of the event contract: `key`, the
//! contract's fields, the source position and commit time and the event id
//! of the row's latest change, then `sys_op`. The message key is free in
//! ProStore; ours is `<delta>:<table>:<chunk>/<chunks>` ([`feed`]).
//!
//! Invariants:
//! - No medical detail: fields of class `Medical` are always null, and a
//!   `MedicalWhen` field is null on the rows it is medical for, whatever an
//!   event carries (the general topics already carry them so; this is the
//!   federal boundary, so it is enforced again here).
//! - Free text is what capture published (names and documents replaced).

pub mod feed;

#[cfg(test)]
use apache_avro::types::Value;
use apache_avro::Schema;

use crate::events::codec::{put_long, put_str, put_val};
use crate::events::contract::{Class, Entity, Ty, ENTITIES};
use crate::events::{Event, Op, Val};

/// The upload topic of `entity`'s table: `<prefix>.prostore.<entity>`.
pub fn upload_topic(prefix: &str, entity: &str) -> String {
    format!("{prefix}.prostore.{entity}")
}

/// The delta manifest: plans and commits of every delta, in order.
pub fn manifest_topic(prefix: &str) -> String {
    format!("{prefix}.prostore.deltas")
}

/// A column after `key` and the contract's fields.
const TRAILER: [(&str, &str, &str); 4] = [
    ("source_commit_lsn", "\"long\"", "BIGINT"),
    ("source_lsn", "\"long\"", "BIGINT"),
    (
        "source_commit_time",
        "{\"type\": \"long\", \"logicalType\": \"timestamp-micros\"}",
        "TIMESTAMP(6)",
    ),
    ("event_id", "\"string\"", "VARCHAR"),
];

fn avro_type(ty: Ty) -> &'static str {
    match ty {
        Ty::Long => "\"long\"",
        Ty::Int => "\"int\"",
        Ty::Double => "\"double\"",
        Ty::Bool => "\"boolean\"",
        Ty::Str => "\"string\"",
        Ty::Date => "{\"type\": \"int\", \"logicalType\": \"date\"}",
        Ty::Timestamp => "{\"type\": \"long\", \"logicalType\": \"timestamp-micros\"}",
        Ty::Time => "{\"type\": \"long\", \"logicalType\": \"time-micros\"}",
    }
}

/// ProStore's logical type for a contract type (its `BIGINT` is an Avro
/// long, `INT32` an int).
fn prostore_type(ty: Ty) -> &'static str {
    match ty {
        Ty::Long => "BIGINT",
        Ty::Int => "INT32",
        Ty::Double => "DOUBLE",
        Ty::Bool => "BOOLEAN",
        Ty::Str => "VARCHAR",
        Ty::Date => "DATE",
        Ty::Timestamp => "TIMESTAMP(6)",
        Ty::Time => "TIME(6)",
    }
}

/// The upload record's Avro schema (JSON) for `e`'s table. Every contract
/// field is nullable: a delete carries only the key and the position.
pub fn schema_json(e: &Entity) -> String {
    let mut fields = vec!["{\"name\": \"key\", \"type\": \"string\"}".to_string()];
    for f in e.fields {
        fields.push(format!(
            "{{\"name\": \"{}\", \"type\": [\"null\", {}], \"default\": null}}",
            f.name,
            avro_type(f.ty)
        ));
    }
    for (name, ty, _) in TRAILER {
        fields.push(format!("{{\"name\": \"{name}\", \"type\": {ty}}}"));
    }
    fields.push("{\"name\": \"sys_op\", \"type\": \"int\"}".into());
    format!(
        "{{\"type\": \"record\", \"name\": \"{}Upload\", \"namespace\": \"vitrina.prostore\", \"fields\": [{}]}}",
        e.record,
        fields.join(", ")
    )
}

/// [`schema_json`] parsed.
pub fn schema(e: &Entity) -> Schema {
    Schema::parse_str(&schema_json(e)).expect("the upload schema is valid Avro")
}

/// The columns of `e`'s table as ProStore declares them.
fn columns(e: &Entity) -> Vec<String> {
    let mut cols = vec!["  key VARCHAR NOT NULL".to_string()];
    for f in e.fields {
        cols.push(format!("  {} {} NULL", f.name, prostore_type(f.ty)));
    }
    for (name, _, ty) in TRAILER {
        cols.push(format!("  {name} {ty} NOT NULL"));
    }
    cols
}

/// `CREATE TABLE` and `CREATE UPLOAD EXTERNAL TABLE` for every table of the
/// contract in logical database `datamart`, reading from `brokers`.
pub fn ddl(datamart: &str, brokers: &str, prefix: &str, message_limit: usize) -> String {
    let mut out = format!(
        "-- vitrina's ProStore upload contract: one logical table per showcase table.\n\
         -- Load a delta as its manifest on {} says (docs/prostore.md).\n",
        manifest_topic(prefix)
    );
    for e in ENTITIES {
        let cols = columns(e);
        out.push_str(&format!(
            "\nCREATE TABLE IF NOT EXISTS {datamart}.{name} (\n{cols},\n  PRIMARY KEY (key)\n) DISTRIBUTED BY (key);\n\n\
             CREATE UPLOAD EXTERNAL TABLE IF NOT EXISTS {datamart}.{name}_ext_upload (\n{cols}\n)\n\
             LOCATION 'kafka_brokers://{brokers}/{topic}'\nFORMAT 'AVRO'\nMESSAGE_LIMIT {message_limit};\n",
            name = e.name,
            cols = cols.join(",\n"),
            topic = upload_topic(prefix, e.name),
        ));
    }
    out
}

/// A table row as the feed holds it: the latest change of one key.
#[derive(Debug, Clone, PartialEq)]
pub struct Row {
    pub key: String,
    /// The contract's fields; `None` for a delete.
    pub after: Option<Vec<Val>>,
    pub commit_lsn: u64,
    pub lsn: u64,
    pub commit_time_micros: i64,
    pub event_id: String,
}

impl Row {
    /// The row an event leaves, medical detail nulled ([module docs](self)).
    pub fn of(e: &Event) -> Row {
        let after = match e.op {
            Op::Delete | Op::Truncate => None,
            Op::Create | Op::Update | Op::Read => e.after.clone().map(|v| redact(e.entity, v)),
        };
        Row {
            key: e.key.clone(),
            after,
            commit_lsn: e.source.commit_lsn,
            lsn: e.source.lsn,
            commit_time_micros: e.source.commit_time_micros,
            event_id: e.event_id.clone(),
        }
    }

    pub fn position(&self) -> (u64, u64) {
        (self.commit_lsn, self.lsn)
    }
}

/// `values` with every medical field of `e` nulled.
fn redact(e: &Entity, mut values: Vec<Val>) -> Vec<Val> {
    let medical_rows: Vec<bool> = e
        .fields
        .iter()
        .map(|f| match f.class {
            Class::Medical => true,
            Class::MedicalWhen(field, value) => e
                .fields
                .iter()
                .position(|g| g.name == field)
                .and_then(|i| values.get(i))
                .is_some_and(|v| matches!(v, Val::Str(s) if s == value)),
            Class::Plain | Class::FreeText => false,
        })
        .collect();
    for (v, medical) in values.iter_mut().zip(medical_rows) {
        if medical {
            *v = Val::Null;
        }
    }
    values
}

#[cfg(test)]
fn avro_value(v: &Val) -> Value {
    let inner = match v {
        Val::Null => return Value::Union(0, Box::new(Value::Null)),
        Val::Long(x) => Value::Long(*x),
        Val::Int(x) => Value::Int(*x),
        Val::Double(x) => Value::Double(*x),
        Val::Bool(x) => Value::Boolean(*x),
        Val::Str(s) => Value::String(s.clone()),
        Val::Date(d) => Value::Date(*d),
        Val::Timestamp(t) => Value::TimestampMicros(*t),
        Val::Time(t) => Value::TimeMicros(*t),
    };
    Value::Union(1, Box::new(inner))
}

/// The sync marker of a file of `rows`: derived from what the file holds,
/// so the same rows always make the same bytes (a delta rebuilt after a
/// restart equals the one planned), and two files of a delta differ.
fn sync_marker(e: &Entity, rows: &[Row]) -> [u8; 16] {
    use streebog::Digest;
    let mut h = streebog::Streebog256::new();
    h.update(e.name.as_bytes());
    for r in rows {
        h.update(r.key.as_bytes());
        h.update(r.commit_lsn.to_le_bytes());
        h.update(r.lsn.to_le_bytes());
    }
    let mut marker = [0u8; 16];
    marker.copy_from_slice(&h.finalize()[..16]);
    marker
}

/// An Object Container File's header with its metadata in a fixed order
/// (the avro crate writes them from a hash map, in a random order).
fn ocf_header(schema: &Schema, marker: &[u8; 16], out: &mut Vec<u8>) -> Result<(), String> {
    fn long(n: i64, out: &mut Vec<u8>) {
        let mut z = ((n << 1) ^ (n >> 63)) as u64;
        while z >= 0x80 {
            out.push((z as u8) | 0x80);
            z >>= 7;
        }
        out.push(z as u8);
    }
    fn bytes(b: &[u8], out: &mut Vec<u8>) {
        long(b.len() as i64, out);
        out.extend_from_slice(b);
    }
    let json = serde_json::to_string(schema).map_err(|e| format!("the upload schema: {e}"))?;
    out.extend_from_slice(b"Obj\x01");
    long(2, out);
    bytes(b"avro.codec", out);
    bytes(b"null", out);
    bytes(b"avro.schema", out);
    bytes(json.as_bytes(), out);
    long(0, out);
    out.extend_from_slice(marker);
    Ok(())
}

/// One Object Container File holding `rows` of `e`'s table; the same rows
/// give the same bytes.
pub fn encode_ocf(e: &Entity, schema: &Schema, rows: &[Row]) -> Result<Vec<u8>, String> {
    let marker = sync_marker(e, rows);
    let mut out = Vec::with_capacity(rows.len() * 128 + 1024);
    ocf_header(schema, &marker, &mut out)?;
    // Data blocks written directly (a tenth of apache-avro's writer's CPU
    // per record); the tests read them with apache-avro and fastavro.
    let mut block = Vec::with_capacity(OCF_BLOCK_BYTES + 1024);
    let mut count = 0i64;
    let flush = |block: &mut Vec<u8>, count: &mut i64, out: &mut Vec<u8>| {
        if *count > 0 {
            put_long(out, *count);
            put_long(out, block.len() as i64);
            out.extend_from_slice(block);
            out.extend_from_slice(&marker);
            block.clear();
            *count = 0;
        }
    };
    for r in rows {
        put_str(&mut block, &r.key);
        for (i, f) in e.fields.iter().enumerate() {
            match r.after.as_ref().and_then(|a| a.get(i)) {
                None | Some(Val::Null) => put_long(&mut block, 0),
                Some(v) => {
                    put_long(&mut block, 1);
                    put_val(&mut block, v, f.ty)
                        .map_err(|err| format!("{}: key {}: `{}`: {err}", e.name, r.key, f.name))?;
                }
            }
        }
        put_long(&mut block, r.commit_lsn as i64);
        put_long(&mut block, r.lsn as i64);
        put_long(&mut block, r.commit_time_micros);
        put_str(&mut block, &r.event_id);
        put_long(&mut block, if r.after.is_some() { 0 } else { 1 });
        count += 1;
        if block.len() >= OCF_BLOCK_BYTES {
            flush(&mut block, &mut count, &mut out);
        }
    }
    flush(&mut block, &mut count, &mut out);
    Ok(out)
}

/// A data block of an Object Container File is closed past this size.
const OCF_BLOCK_BYTES: usize = 64 * 1024;

/// [`encode_ocf`] through apache-avro's generic writer (the tests'
/// reference).
#[cfg(test)]
pub fn encode_ocf_reference(e: &Entity, schema: &Schema, rows: &[Row]) -> Result<Vec<u8>, String> {
    let marker = sync_marker(e, rows);
    let mut out = Vec::with_capacity(rows.len() * 128 + 1024);
    ocf_header(schema, &marker, &mut out)?;
    let mut w = apache_avro::Writer::append_to(schema, out, marker);
    for r in rows {
        let mut fields: Vec<(String, Value)> = Vec::with_capacity(e.fields.len() + 6);
        fields.push(("key".into(), Value::String(r.key.clone())));
        for (i, f) in e.fields.iter().enumerate() {
            let v = r
                .after
                .as_ref()
                .and_then(|a| a.get(i))
                .unwrap_or(&Val::Null);
            fields.push((f.name.into(), avro_value(v)));
        }
        fields.push(("source_commit_lsn".into(), Value::Long(r.commit_lsn as i64)));
        fields.push(("source_lsn".into(), Value::Long(r.lsn as i64)));
        fields.push((
            "source_commit_time".into(),
            Value::TimestampMicros(r.commit_time_micros),
        ));
        fields.push(("event_id".into(), Value::String(r.event_id.clone())));
        fields.push((
            "sys_op".into(),
            Value::Int(if r.after.is_some() { 0 } else { 1 }),
        ));
        w.append(Value::Record(fields))
            .map_err(|err| format!("{}: key {}: {err}", e.name, r.key))?;
    }
    w.into_inner()
        .map_err(|err| format!("{}: closing the container: {err}", e.name))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_upload_schema_parses_and_ends_with_sys_op() {
        for e in ENTITIES {
            let s = schema(e);
            let Schema::Record(r) = s else {
                panic!("{}: not a record", e.name)
            };
            assert_eq!(r.fields.last().unwrap().name, "sys_op", "{}", e.name);
            assert_eq!(r.fields.len(), e.fields.len() + 6, "{}", e.name);
        }
    }

    #[test]
    fn the_direct_writer_writes_what_apache_avro_reads_as_its_own_writers_rows() {
        let value = |ty: Ty, i: i64| match ty {
            Ty::Long => Val::Long(i * 1_000_003 - 7),
            Ty::Int => Val::Int(i as i32 - 3),
            Ty::Double => Val::Double(i as f64 / 3.0),
            Ty::Bool => Val::Bool(i % 2 == 0),
            Ty::Str => Val::Str(format!("значение {i}")),
            Ty::Date => Val::Date(19_000 + i as i32),
            Ty::Timestamp => Val::Timestamp(1_700_000_000_000_000 + i),
            Ty::Time => Val::Time(36_000_000_000 + i),
        };
        for e in ENTITIES {
            // Enough rows for several data blocks; every third a delete,
            // every field null in some rows.
            let rows: Vec<Row> = (0..3000i64)
                .map(|i| Row {
                    key: format!("k{i}"),
                    after: (i % 3 != 0).then(|| {
                        e.fields
                            .iter()
                            .enumerate()
                            .map(|(j, f)| {
                                if (i + j as i64) % 5 == 0 {
                                    Val::Null
                                } else {
                                    value(f.ty, i)
                                }
                            })
                            .collect()
                    }),
                    commit_lsn: 1000 + i as u64,
                    lsn: 7 + i as u64,
                    commit_time_micros: 1_700_000_000_000_000 + i,
                    event_id: format!("e{i}"),
                })
                .collect();
            let s = schema(e);
            let read = |bytes: Vec<u8>| -> Vec<Value> {
                apache_avro::Reader::new(&bytes[..])
                    .unwrap()
                    .map(|v| v.unwrap())
                    .collect()
            };
            let direct = encode_ocf(e, &s, &rows).unwrap();
            let ours = read(direct.clone());
            assert_eq!(ours.len(), rows.len(), "{}", e.name);
            assert_eq!(
                ours,
                read(encode_ocf_reference(e, &s, &rows).unwrap()),
                "{}",
                e.name
            );
            let marker = &direct[direct.len() - 16..];
            let blocks = direct.windows(16).filter(|w| *w == marker).count() - 1;
            assert!(blocks > 1, "{}: {blocks} data blocks", e.name);
        }
    }

    #[test]
    fn the_same_rows_make_the_same_file() {
        let e = ENTITIES.iter().find(|e| e.name == "subject").unwrap();
        let rows: Vec<Row> = (0..50)
            .map(|i| Row {
                key: i.to_string(),
                after: None,
                commit_lsn: 100 + i,
                lsn: 7,
                commit_time_micros: 1_700_000_000_000_000,
                event_id: format!("e{i}"),
            })
            .collect();
        let s = schema(e);
        let a = encode_ocf(e, &s, &rows).unwrap();
        assert_eq!(a, encode_ocf(e, &s, &rows).unwrap());
        assert_ne!(a, encode_ocf(e, &s, &rows[1..]).unwrap());
        let read = apache_avro::Reader::new(&a[..]).unwrap();
        assert_eq!(read.count(), rows.len(), "the header we write is read back");
    }

    #[test]
    fn an_illness_reason_never_reaches_the_feed() {
        let e = ENTITIES.iter().find(|e| e.name == "attendance").unwrap();
        let code = e.fields.iter().position(|f| f.name == "code").unwrap();
        let reason = e.fields.iter().position(|f| f.name == "reason").unwrap();
        let mut values = vec![Val::Null; e.fields.len()];
        values[code] = Val::Str("Б".into());
        values[reason] = Val::Str("грипп".into());
        assert_eq!(redact(e, values.clone())[reason], Val::Null);
        values[code] = Val::Str("У".into());
        assert_eq!(
            redact(e, values)[reason],
            Val::Str("грипп".into()),
            "not medical on an excused absence"
        );
    }
}

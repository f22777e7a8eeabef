//! The pure codec: [`Event`] ⇄ Avro single-object bytes.
//!
//! Invariant: `decode(encode(e)) == e` for every event the contract admits
//! (tested below over every entity).

use std::collections::HashMap;

use apache_avro::types::Value;
use apache_avro::{GenericSingleObjectWriter, Schema};

use super::contract::{Entity, Ty, ENTITIES};
use super::{canonical, schema, Event, Message, Op, Source, Val, Watermark};

/// Single-object encoding marker.
pub const MAGIC: [u8; 2] = [0xC3, 0x01];

#[derive(Debug, thiserror::Error)]
pub enum CodecError {
    #[error("message is not Avro single-object encoded (no C3 01 marker; {len} bytes)")]
    NotSingleObject { len: usize },
    #[error("unknown schema fingerprint {fingerprint}: not one of the schemas in avro/\nhint: update avro/ from the producer's release")]
    UnknownSchema { fingerprint: String },
    #[error("Avro body does not match schema {schema}: {message}")]
    Body { schema: String, message: String },
    #[error("event of entity `{entity}` does not fit its contract: {message}")]
    Contract { entity: String, message: String },
}

struct Known {
    entity: &'static Entity,
    schema: Schema,
    fingerprint: [u8; 8],
}

/// An older release's writer schema of an entity: its events decode
/// through Avro schema resolution into the current (reader) schema.
struct Older {
    known: usize,
    writer: Schema,
}

/// Writer schemas of earlier releases still to be read: (entity, .avsc).
/// When a release changes an entity's schema, the one it replaces is added
/// here (compatibly: new fields with defaults), so a projector reads what
/// an older capture wrote. The files live in `avro/history/`, named
/// `<entity>.<date the schema was replaced>.avsc`.
pub const WRITER_HISTORY: &[(&str, &str)] = &[(
    "organization",
    include_str!("../../avro/history/organization.2026-11-30.avsc"),
)];

/// All event schemas, by entity and by fingerprint.
pub struct Registry {
    known: Vec<Known>,
    by_fingerprint: HashMap<[u8; 8], usize>,
    older: HashMap<[u8; 8], Older>,
    writers: HashMap<&'static str, GenericSingleObjectWriter>,
    /// The watermark's schema, for the tests' reference reader.
    #[cfg(test)]
    watermark: Schema,
    watermark_fp: [u8; 8],
    watermark_writer: GenericSingleObjectWriter,
    detail: Schema,
    detail_fp: [u8; 8],
}

impl Registry {
    pub fn new() -> Registry {
        Self::with_history(WRITER_HISTORY)
    }

    /// A registry that also reads the given older writer schemas.
    ///
    /// Panics on a history entry that does not parse or names no entity:
    /// the history is compiled in, a test covers it.
    pub fn with_history(history: &[(&str, &str)]) -> Registry {
        let mut known = Vec::new();
        let mut by_fingerprint = HashMap::new();
        let mut writers = HashMap::new();
        for e in ENTITIES {
            let json = schema::avsc(e);
            let schema = Schema::parse(&json).expect("generated schema parses");
            let fingerprint = canonical::fingerprint(&json);
            by_fingerprint.insert(fingerprint, known.len());
            writers.insert(
                e.name,
                GenericSingleObjectWriter::new_with_capacity(&schema, 512).expect("writer"),
            );
            known.push(Known {
                entity: e,
                schema,
                fingerprint,
            });
        }
        let watermark_json = schema::watermark_avsc();
        let watermark = Schema::parse(&watermark_json).expect("watermark schema parses");
        let watermark_fp = canonical::fingerprint(&watermark_json);
        let watermark_writer =
            GenericSingleObjectWriter::new_with_capacity(&watermark, 64).expect("writer");
        let detail_json = schema::detail_avsc();
        let detail = Schema::parse(&detail_json).expect("detail schema parses");
        let detail_fp = canonical::fingerprint(&detail_json);
        let mut older = HashMap::new();
        for (entity, json) in history {
            let i = known
                .iter()
                .position(|k: &Known| k.entity.name == *entity)
                .unwrap_or_else(|| panic!("writer history names unknown entity {entity}"));
            let json: serde_json::Value =
                serde_json::from_str(json).expect("a historic writer schema is JSON");
            let writer = Schema::parse(&json).expect("a historic writer schema parses");
            older.insert(canonical::fingerprint(&json), Older { known: i, writer });
        }
        Registry {
            older,
            detail,
            detail_fp,
            known,
            by_fingerprint,
            writers,
            #[cfg(test)]
            watermark,
            watermark_fp,
            watermark_writer,
        }
    }

    pub fn watermark_fingerprint(&self) -> String {
        hex8(&self.watermark_fp)
    }

    pub fn detail_fingerprint(&self) -> String {
        hex8(&self.detail_fp)
    }

    pub fn encode_watermark(&mut self, w: &Watermark) -> Vec<u8> {
        let v = Value::Record(vec![
            ("capture".into(), Value::String(w.capture.clone())),
            ("commit_lsn".into(), Value::Long(w.commit_lsn as i64)),
            (
                "commit_time".into(),
                Value::TimestampMicros(w.commit_time_micros),
            ),
            (
                "emitted_at".into(),
                Value::TimestampMicros(w.emitted_at_micros),
            ),
            ("partition".into(), Value::Int(w.partition)),
        ]);
        let mut out = Vec::with_capacity(64);
        self.watermark_writer
            .write_value_ref(&v, &mut out)
            .expect("watermark matches its schema");
        // apache-avro's writer heads the message with its own fingerprint,
        // over a canonical form that is not the specification's.
        out[2..10].copy_from_slice(&self.watermark_fp);
        out
    }

    /// Decodes anything found on an event topic: an event or a watermark.
    pub fn decode_message(&self, bytes: &[u8]) -> Result<Message, CodecError> {
        if bytes.len() >= 10 && bytes[..2] == MAGIC && bytes[2..10] == self.watermark_fp {
            return read_watermark(&bytes[10..])
                .map(Message::Watermark)
                .map_err(|message| CodecError::Body {
                    schema: "Watermark".into(),
                    message,
                });
        }
        self.decode(bytes).map(Message::Event)
    }

    /// The watermark through apache-avro's generic reader (the tests'
    /// reference).
    #[cfg(test)]
    pub fn decode_watermark_reference(&self, bytes: &[u8]) -> Result<Watermark, CodecError> {
        let mut body = &bytes[10..];
        let v = apache_avro::from_avro_datum(&self.watermark, &mut body, None).map_err(|e| {
            CodecError::Body {
                schema: "Watermark".into(),
                message: e.to_string(),
            }
        })?;
        let Value::Record(fields) = v else {
            return Err(CodecError::Body {
                schema: "Watermark".into(),
                message: "not a record".into(),
            });
        };
        let mut m: HashMap<String, Value> = fields.into_iter().collect();
        let mut long = |k: &str| match m.remove(k) {
            Some(Value::Long(x)) | Some(Value::TimestampMicros(x)) => Ok(x),
            Some(Value::Int(x)) => Ok(x as i64),
            other => Err(CodecError::Body {
                schema: "Watermark".into(),
                message: format!("{k}: {other:?}"),
            }),
        };
        let commit_lsn = long("commit_lsn")? as u64;
        let commit_time_micros = long("commit_time")?;
        let emitted_at_micros = long("emitted_at")?;
        let partition = long("partition")? as i32;
        let capture = match m.remove("capture") {
            Some(Value::String(s)) => s,
            other => {
                return Err(CodecError::Body {
                    schema: "Watermark".into(),
                    message: format!("capture: {other:?}"),
                })
            }
        };
        Ok(Watermark {
            capture,
            commit_lsn,
            commit_time_micros,
            emitted_at_micros,
            partition,
        })
    }

    /// (entity, fingerprint as hex) for every schema, e.g. for `vitrina schemas`.
    pub fn fingerprints(&self) -> Vec<(&'static Entity, String)> {
        self.known
            .iter()
            .map(|k| (k.entity, hex8(&k.fingerprint)))
            .collect()
    }

    pub fn schema(&self, entity: &str) -> Option<&Schema> {
        self.known
            .iter()
            .find(|k| k.entity.name == entity)
            .map(|k| &k.schema)
    }

    /// Encodes `e` as a single-object message. A direct Avro binary writer
    /// (the hot path of capture); the test suite checks it byte for byte
    /// against apache-avro's writer.
    pub fn encode(&mut self, e: &Event) -> Result<Vec<u8>, CodecError> {
        let mut out = Vec::with_capacity(256);
        self.encode_into(e, &mut out)?;
        Ok(out)
    }

    /// [`Registry::encode`] into `out` (cleared first): a publisher reuses
    /// one buffer for every event.
    pub fn encode_into(&self, e: &Event, out: &mut Vec<u8>) -> Result<(), CodecError> {
        let fp = self
            .known
            .iter()
            .find(|k| std::ptr::eq(k.entity, e.entity))
            .or_else(|| self.known.iter().find(|k| k.entity.name == e.entity.name))
            .map(|k| k.fingerprint)
            .ok_or_else(|| CodecError::Contract {
                entity: e.entity.name.to_string(),
                message: "no such entity".into(),
            })?;
        out.clear();
        out.extend_from_slice(&MAGIC);
        out.extend_from_slice(&fp);
        write_event(out, e).map_err(|message| CodecError::Contract {
            entity: e.entity.name.to_string(),
            message,
        })
    }

    /// The same encoding through apache-avro's generic writer (reference).
    pub fn encode_reference(&mut self, e: &Event) -> Result<Vec<u8>, CodecError> {
        let value = to_value(e)?;
        let w = self
            .writers
            .get_mut(e.entity.name)
            .ok_or_else(|| CodecError::Contract {
                entity: e.entity.name.to_string(),
                message: "no such entity".into(),
            })?;
        let mut out = Vec::with_capacity(256);
        w.write_value_ref(&value, &mut out)
            .map_err(|err| CodecError::Contract {
                entity: e.entity.name.to_string(),
                message: err.to_string(),
            })?;
        if let Some(k) = self.known.iter().find(|k| k.entity.name == e.entity.name) {
            out[2..10].copy_from_slice(&k.fingerprint);
        }
        Ok(out)
    }

    /// [`Registry::decode`] through apache-avro's generic reader (the
    /// tests' reference for the direct reader).
    #[cfg(test)]
    pub fn decode_reference(&self, bytes: &[u8]) -> Result<Event, CodecError> {
        let (k, writer) = self.resolve(bytes)?;
        decode_generic(k, writer, &bytes[10..])
    }

    /// Decodes a single-object message with whichever known schema its
    /// fingerprint names.
    pub fn decode(&self, bytes: &[u8]) -> Result<Event, CodecError> {
        let (k, writer) = self.resolve(bytes)?;
        match writer {
            // The current schema: read directly (the projector's hot path;
            // the tests check it against apache-avro's reader).
            None => read_event(k.entity, &bytes[10..]).map_err(|message| CodecError::Body {
                schema: k.entity.record.to_string(),
                message,
            }),
            Some(_) => decode_generic(k, writer, &bytes[10..]),
        }
    }

    /// The schema a message names: a current one, or an older writer
    /// schema with the current one it resolves into.
    fn resolve(&self, bytes: &[u8]) -> Result<(&Known, Option<&Schema>), CodecError> {
        if bytes.len() < 10 || bytes[..2] != MAGIC {
            return Err(CodecError::NotSingleObject { len: bytes.len() });
        }
        let fp: [u8; 8] = bytes[2..10].try_into().expect("8 bytes");
        match self.by_fingerprint.get(&fp) {
            Some(i) => Ok((&self.known[*i], None)),
            None => match self.older.get(&fp) {
                Some(o) => Ok((&self.known[o.known], Some(&o.writer))),
                None => Err(CodecError::UnknownSchema {
                    fingerprint: hex8(&fp),
                }),
            },
        }
    }
}

/// An event body through apache-avro's generic reader, written in `k`'s
/// schema or in an older `writer` schema resolved into it.
fn decode_generic(
    k: &Known,
    writer: Option<&Schema>,
    mut body: &[u8],
) -> Result<Event, CodecError> {
    let value = match writer {
        None => apache_avro::from_avro_datum(&k.schema, &mut body, None),
        Some(w) => apache_avro::from_avro_datum(w, &mut body, Some(&k.schema)),
    }
    .map_err(|e| CodecError::Body {
        schema: k.entity.record.to_string(),
        message: e.to_string(),
    })?;
    from_value(k.entity, value).map_err(|message| CodecError::Body {
        schema: k.entity.record.to_string(),
        message,
    })
}

impl Default for Registry {
    fn default() -> Self {
        Self::new()
    }
}

/// Avro `long` (zigzag varint).
pub(crate) fn put_long(out: &mut Vec<u8>, v: i64) {
    let mut n = ((v << 1) ^ (v >> 63)) as u64;
    while n >= 0x80 {
        out.push((n as u8 & 0x7f) | 0x80);
        n >>= 7;
    }
    out.push(n as u8);
}

/// Avro `string`.
pub(crate) fn put_str(out: &mut Vec<u8>, s: &str) {
    put_long(out, s.len() as i64);
    out.extend_from_slice(s.as_bytes());
}

/// A non-null value of type `ty`.
pub(crate) fn put_val(out: &mut Vec<u8>, v: &Val, ty: Ty) -> Result<(), String> {
    match (v, ty) {
        (Val::Long(x), Ty::Long)
        | (Val::Timestamp(x), Ty::Timestamp)
        | (Val::Time(x), Ty::Time) => put_long(out, *x),
        (Val::Int(x), Ty::Int) | (Val::Date(x), Ty::Date) => put_long(out, *x as i64),
        (Val::Double(x), Ty::Double) => out.extend_from_slice(&x.to_le_bytes()),
        (Val::Bool(x), Ty::Bool) => out.push(u8::from(*x)),
        (Val::Str(x), Ty::Str) => put_str(out, x),
        (other, ty) => return Err(format!("{other:?} is not a {ty:?}")),
    }
    Ok(())
}

/// Avro binary of the event record (fields in schema order).
fn write_event(out: &mut Vec<u8>, e: &Event) -> Result<(), String> {
    put_str(out, &e.event_id);
    put_long(out, e.op as i64);
    put_str(out, e.entity.name);
    put_str(out, &e.key);
    let s = &e.source;
    put_long(out, s.lsn as i64);
    put_long(out, s.commit_lsn as i64);
    put_long(out, s.txid);
    put_long(out, s.commit_time_micros);
    put_str(out, &s.table);
    out.push(u8::from(s.snapshot));
    match &e.actor {
        None => put_long(out, 0),
        Some(a) => {
            put_long(out, 1);
            put_str(out, a);
        }
    }
    put_long(out, super::SCHEMA_VERSION as i64);
    if !e.quality.is_empty() {
        put_long(out, e.quality.len() as i64);
        for q in &e.quality {
            put_str(out, q);
        }
    }
    put_long(out, 0);
    match &e.after {
        None => put_long(out, 0),
        Some(vals) => {
            if vals.len() != e.entity.fields.len() {
                return Err(format!(
                    "{} values for {} fields",
                    vals.len(),
                    e.entity.fields.len()
                ));
            }
            put_long(out, 1);
            for (f, v) in e.entity.fields.iter().zip(vals) {
                match (v, f.nullable) {
                    (Val::Null, true) => put_long(out, 0),
                    (Val::Null, false) => return Err(format!("`{}` is required", f.name)),
                    (v, true) => {
                        put_long(out, 1);
                        put_val(out, v, f.ty).map_err(|m| format!("`{}`: {m}", f.name))?;
                    }
                    (v, false) => {
                        put_val(out, v, f.ty).map_err(|m| format!("`{}`: {m}", f.name))?
                    }
                }
            }
        }
    }
    Ok(())
}

/// Avro binary, read directly.
struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn byte(&mut self) -> Result<u8, String> {
        let (b, rest) = self.0.split_first().ok_or("truncated")?;
        self.0 = rest;
        Ok(*b)
    }

    fn long(&mut self) -> Result<i64, String> {
        let mut n: u64 = 0;
        for shift in (0..64).step_by(7) {
            let b = self.byte()?;
            n |= ((b & 0x7f) as u64) << shift;
            if b & 0x80 == 0 {
                return Ok((n >> 1) as i64 ^ -((n & 1) as i64));
            }
        }
        Err("variable-length integer longer than 10 bytes".into())
    }

    fn int(&mut self) -> Result<i32, String> {
        let v = self.long()?;
        i32::try_from(v).map_err(|_| format!("int out of range: {v}"))
    }

    fn str(&mut self) -> Result<&'a str, String> {
        let len = self.long()?;
        let len = usize::try_from(len).map_err(|_| format!("negative string length {len}"))?;
        if len > self.0.len() {
            return Err(format!("string of {len} bytes past the end"));
        }
        let (s, rest) = self.0.split_at(len);
        self.0 = rest;
        std::str::from_utf8(s).map_err(|e| format!("string is not UTF-8: {e}"))
    }

    fn double(&mut self) -> Result<f64, String> {
        if self.0.len() < 8 {
            return Err("truncated".into());
        }
        let (b, rest) = self.0.split_at(8);
        self.0 = rest;
        Ok(f64::from_le_bytes(b.try_into().expect("8 bytes")))
    }

    fn bool(&mut self) -> Result<bool, String> {
        match self.byte()? {
            0 => Ok(false),
            1 => Ok(true),
            b => Err(format!("boolean byte {b}")),
        }
    }

    /// A `["null", T]` union: whether T follows.
    fn some(&mut self) -> Result<bool, String> {
        match self.long()? {
            0 => Ok(false),
            1 => Ok(true),
            i => Err(format!("union branch {i} of 2")),
        }
    }

    fn val(&mut self, ty: Ty) -> Result<Val, String> {
        Ok(match ty {
            Ty::Long => Val::Long(self.long()?),
            Ty::Timestamp => Val::Timestamp(self.long()?),
            Ty::Time => Val::Time(self.long()?),
            Ty::Int => Val::Int(self.int()?),
            Ty::Date => Val::Date(self.int()?),
            Ty::Double => Val::Double(self.double()?),
            Ty::Bool => Val::Bool(self.bool()?),
            Ty::Str => Val::Str(self.str()?.to_string()),
        })
    }
}

/// The event record in the current schema of `entity` (the inverse of
/// [`write_event`]).
fn read_event(entity: &'static Entity, body: &[u8]) -> Result<Event, String> {
    let mut r = Reader(body);
    let event_id = r.str()?.to_string();
    let op = match r.long()? {
        0 => Op::Create,
        1 => Op::Update,
        2 => Op::Delete,
        3 => Op::Read,
        4 => Op::Truncate,
        i => return Err(format!("op: enum index {i} of 5")),
    };
    let name = r.str()?;
    if name != entity.name {
        return Err(format!("entity `{name}` in a {} record", entity.name));
    }
    let key = r.str()?.to_string();
    let source = Source {
        lsn: r.long()? as u64,
        commit_lsn: r.long()? as u64,
        txid: r.long()?,
        commit_time_micros: r.long()?,
        table: r.str()?.to_string(),
        snapshot: r.bool()?,
    };
    let actor = match r.some()? {
        true => Some(r.str()?.to_string()),
        false => None,
    };
    let _schema_version = r.int()?;
    let mut quality = Vec::new();
    loop {
        let n = r.long()?;
        if n == 0 {
            break;
        }
        if n < 0 {
            // A block with its size in bytes first.
            r.long()?;
        }
        for _ in 0..n.unsigned_abs() {
            quality.push(r.str()?.to_string());
        }
    }
    let after = match r.some()? {
        false => None,
        true => {
            let mut vals = Vec::with_capacity(entity.fields.len());
            for f in entity.fields {
                let present = !f.nullable || r.some()?;
                vals.push(if present { r.val(f.ty)? } else { Val::Null });
            }
            Some(vals)
        }
    };
    Ok(Event {
        event_id,
        entity,
        op,
        key,
        source,
        actor,
        quality,
        after,
    })
}

/// The watermark record, read directly.
fn read_watermark(body: &[u8]) -> Result<Watermark, String> {
    let mut r = Reader(body);
    Ok(Watermark {
        capture: r.str()?.to_string(),
        commit_lsn: r.long()? as u64,
        commit_time_micros: r.long()?,
        emitted_at_micros: r.long()?,
        partition: r.int()?,
    })
}

fn hex8(b: &[u8; 8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn val_to_avro(v: &Val, ty: Ty) -> Result<Value, String> {
    Ok(match (v, ty) {
        (Val::Long(x), Ty::Long) => Value::Long(*x),
        (Val::Int(x), Ty::Int) => Value::Int(*x),
        (Val::Double(x), Ty::Double) => Value::Double(*x),
        (Val::Bool(x), Ty::Bool) => Value::Boolean(*x),
        (Val::Str(x), Ty::Str) => Value::String(x.clone()),
        (Val::Date(x), Ty::Date) => Value::Date(*x),
        (Val::Timestamp(x), Ty::Timestamp) => Value::TimestampMicros(*x),
        (Val::Time(x), Ty::Time) => Value::TimeMicros(*x),
        (other, ty) => return Err(format!("{other:?} is not a {ty:?}")),
    })
}

fn to_value(e: &Event) -> Result<Value, CodecError> {
    let bad = |message: String| CodecError::Contract {
        entity: e.entity.name.to_string(),
        message,
    };
    let after = match &e.after {
        None => Value::Union(0, Box::new(Value::Null)),
        Some(vals) => {
            if vals.len() != e.entity.fields.len() {
                return Err(bad(format!(
                    "{} values for {} fields",
                    vals.len(),
                    e.entity.fields.len()
                )));
            }
            let mut fields = Vec::with_capacity(vals.len());
            for (f, v) in e.entity.fields.iter().zip(vals) {
                let av = match (v, f.nullable) {
                    (Val::Null, true) => Value::Union(0, Box::new(Value::Null)),
                    (Val::Null, false) => return Err(bad(format!("`{}` is required", f.name))),
                    (v, true) => Value::Union(
                        1,
                        Box::new(
                            val_to_avro(v, f.ty).map_err(|m| bad(format!("`{}`: {m}", f.name)))?,
                        ),
                    ),
                    (v, false) => {
                        val_to_avro(v, f.ty).map_err(|m| bad(format!("`{}`: {m}", f.name)))?
                    }
                };
                fields.push((f.name.to_string(), av));
            }
            Value::Union(1, Box::new(Value::Record(fields)))
        }
    };
    let s = &e.source;
    Ok(Value::Record(vec![
        ("event_id".into(), Value::String(e.event_id.clone())),
        ("op".into(), Value::Enum(e.op as u32, e.op.symbol().into())),
        ("entity".into(), Value::String(e.entity.name.into())),
        ("key".into(), Value::String(e.key.clone())),
        (
            "source".into(),
            Value::Record(vec![
                ("lsn".into(), Value::Long(s.lsn as i64)),
                ("commit_lsn".into(), Value::Long(s.commit_lsn as i64)),
                ("txid".into(), Value::Long(s.txid)),
                (
                    "commit_time".into(),
                    Value::TimestampMicros(s.commit_time_micros),
                ),
                ("table".into(), Value::String(s.table.clone())),
                ("snapshot".into(), Value::Boolean(s.snapshot)),
            ]),
        ),
        (
            "actor".into(),
            match &e.actor {
                Some(a) => Value::Union(1, Box::new(Value::String(a.clone()))),
                None => Value::Union(0, Box::new(Value::Null)),
            },
        ),
        ("schema_version".into(), Value::Int(super::SCHEMA_VERSION)),
        (
            "quality".into(),
            Value::Array(e.quality.iter().map(|q| Value::String(q.clone())).collect()),
        ),
        ("after".into(), after),
    ]))
}

fn unwrap_union(v: Value) -> Value {
    match v {
        Value::Union(_, inner) => *inner,
        other => other,
    }
}

fn avro_to_val(v: Value) -> Result<Val, String> {
    Ok(match unwrap_union(v) {
        Value::Null => Val::Null,
        Value::Long(x) => Val::Long(x),
        Value::Int(x) => Val::Int(x),
        Value::Double(x) => Val::Double(x),
        Value::Boolean(x) => Val::Bool(x),
        Value::String(x) => Val::Str(x),
        Value::Date(x) => Val::Date(x),
        Value::TimestampMicros(x) => Val::Timestamp(x),
        Value::TimeMicros(x) => Val::Time(x),
        other => return Err(format!("unexpected value {other:?}")),
    })
}

fn from_value(entity: &'static Entity, v: Value) -> Result<Event, String> {
    let Value::Record(fields) = v else {
        return Err("body is not a record".into());
    };
    let mut m: HashMap<String, Value> = fields.into_iter().collect();
    let mut take = |k: &str| m.remove(k).ok_or_else(|| format!("missing field {k}"));
    let string = |v: Value| match unwrap_union(v) {
        Value::String(s) => Ok(s),
        other => Err(format!("expected string, got {other:?}")),
    };
    let event_id = string(take("event_id")?)?;
    let op = match take("op")? {
        Value::Enum(_, s) => Op::from_symbol(&s).ok_or_else(|| format!("unknown op {s}"))?,
        other => return Err(format!("op: {other:?}")),
    };
    let key = string(take("key")?)?;
    let Value::Record(src) = take("source")? else {
        return Err("source is not a record".into());
    };
    let mut s: HashMap<String, Value> = src.into_iter().collect();
    let long = |v: Option<Value>| match v {
        Some(Value::Long(x)) | Some(Value::TimestampMicros(x)) => Ok(x),
        other => Err(format!("expected long, got {other:?}")),
    };
    let source = Source {
        lsn: long(s.remove("lsn"))? as u64,
        commit_lsn: long(s.remove("commit_lsn"))? as u64,
        txid: long(s.remove("txid"))?,
        commit_time_micros: long(s.remove("commit_time"))?,
        table: string(s.remove("table").ok_or("missing table")?)?,
        snapshot: matches!(s.remove("snapshot"), Some(Value::Boolean(true))),
    };
    let actor = match unwrap_union(take("actor")?) {
        Value::String(a) => Some(a),
        _ => None,
    };
    let quality = match take("quality")? {
        Value::Array(items) => items.into_iter().map(string).collect::<Result<_, _>>()?,
        other => return Err(format!("quality: {other:?}")),
    };
    let after = match unwrap_union(take("after")?) {
        Value::Null => None,
        Value::Record(fs) => {
            let mut vals = Vec::with_capacity(fs.len());
            for (_, v) in fs {
                vals.push(avro_to_val(v)?);
            }
            Some(vals)
        }
        other => return Err(format!("after: {other:?}")),
    };
    Ok(Event {
        event_id,
        entity,
        op,
        key,
        source,
        actor,
        quality,
        after,
    })
}

#[path = "codec_detail.rs"]
mod detail;

#[cfg(test)]
#[path = "codec_tests.rs"]
mod tests;

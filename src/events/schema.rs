//! Avro schemas of the events, generated from [`super::contract`]. Each
//! schema is self-contained (the envelope's named types are defined inline),
//! so one `.avsc` file decodes one topic.

use serde_json::{json, Value};

use super::contract::{Entity, Ty};
use super::Op;

pub const NAMESPACE: &str = "vitrina.events";

fn field_type(ty: Ty) -> Value {
    match ty {
        Ty::Long => json!("long"),
        Ty::Int => json!("int"),
        Ty::Double => json!("double"),
        Ty::Bool => json!("boolean"),
        Ty::Str => json!("string"),
        Ty::Date => json!({"type": "int", "logicalType": "date"}),
        Ty::Timestamp => json!({"type": "long", "logicalType": "timestamp-micros"}),
        Ty::Time => json!({"type": "long", "logicalType": "time-micros"}),
    }
}

/// The event schema of `e` as JSON.
pub fn avsc(e: &Entity) -> Value {
    let state_fields: Vec<Value> = e
        .fields
        .iter()
        .map(|f| {
            let doc = match f.class.label() {
                Some(label) => format!("[{label}] {}", f.doc),
                None => f.doc.to_string(),
            };
            let mut v = if f.nullable {
                json!({"name": f.name, "type": ["null", field_type(f.ty)], "default": null, "doc": doc})
            } else {
                json!({"name": f.name, "type": field_type(f.ty), "doc": doc})
            };
            if let Some(label) = f.class.label() {
                v["vitrina_class"] = json!(label);
            }
            v
        })
        .collect();
    json!({
        "type": "record",
        "name": format!("{}Event", e.record),
        "namespace": NAMESPACE,
        "doc": format!("{} Topic vitrina.{}.v1.", e.doc, e.name),
        "fields": [
            {"name": "event_id", "type": "string",
             "doc": "Deterministic from the source position: a change read twice carries the same id. Use it to deduplicate."},
            {"name": "op", "type": {"type": "enum", "name": "Op", "symbols": Op::SYMBOLS,
              "doc": "CREATE, UPDATE, DELETE; READ for initial-load snapshot rows; TRUNCATE when the table was emptied."},
             "doc": "What happened."},
            {"name": "entity", "type": "string", "doc": "Entity name, as in the topic."},
            {"name": "key", "type": "string", "doc": "Entity key (the journal id; composite keys joined with ':'). Also the Kafka message key, except for events about a student, keyed by the student."},
            {"name": "source", "type": {
                "type": "record", "name": "Source", "doc": "Where the change came from.",
                "fields": [
                    {"name": "lsn", "type": "long", "doc": "WAL position of the change (of the snapshot for READ)."},
                    {"name": "commit_lsn", "type": "long", "doc": "WAL position of the commit of its transaction."},
                    {"name": "txid", "type": "long", "doc": "Transaction id in the journal."},
                    {"name": "commit_time", "type": {"type": "long", "logicalType": "timestamp-micros"}, "doc": "Commit time in the journal."},
                    {"name": "table", "type": "string", "doc": "schema.table in the journal."},
                    {"name": "snapshot", "type": "boolean", "doc": "True for initial-load rows."}
                ]}, "doc": "Source position."},
            {"name": "actor", "type": ["null", "string"], "default": null,
             "doc": "Who made the change (ESIA or operator account), when the journal records it."},
            {"name": "schema_version", "type": "int", "doc": "Version of the event contract."},
            {"name": "quality", "type": {"type": "array", "items": "string"},
             "doc": "Data-quality flags, e.g. snils_invalid: the value failed validation and was not hashed."},
            {"name": "after", "type": ["null", {
                "type": "record", "name": e.record, "doc": e.doc, "fields": state_fields}],
             "default": null, "doc": "State after the change; null for DELETE and TRUNCATE."}
        ]
    })
}

/// File name of an entity's schema in `avro/`.
pub fn file_name(e: &Entity) -> String {
    format!("{}.avsc", e.name)
}

/// Pretty JSON text of the schema, as written to `avro/`.
pub fn avsc_text(e: &Entity) -> String {
    let mut s = serde_json::to_string_pretty(&avsc(e)).expect("schema serializes");
    s.push('\n');
    s
}

/// The watermark record capture writes to every partition of every topic
/// after each heartbeat: everything committed in the journal up to
/// `commit_time` was written to this partition before it.
pub fn watermark_avsc() -> Value {
    json!({
        "type": "record",
        "name": "Watermark",
        "namespace": NAMESPACE,
        "doc": "Capture's progress marker, written to every partition of every topic after each heartbeat. Every change committed in the journal at or before commit_time (LSN commit_lsn) precedes this record on this partition. Consumers compute freshness from it; it carries no entity state.",
        "fields": [
            {"name": "capture", "type": "string", "doc": "Slot name of the capture that wrote it."},
            {"name": "commit_lsn", "type": "long", "doc": "Commit LSN of the heartbeat transaction."},
            {"name": "commit_time", "type": {"type": "long", "logicalType": "timestamp-micros"}, "doc": "Commit time of the heartbeat transaction in the journal."},
            {"name": "emitted_at", "type": {"type": "long", "logicalType": "timestamp-micros"}, "doc": "When capture wrote the watermark."},
            {"name": "partition", "type": "int", "doc": "The partition it was written to."}
        ]
    })
}

pub const WATERMARK_FILE: &str = "watermark.avsc";

/// The medical fields of the whole contract, in contract order, once each.
/// (computed once: the gate asks for every row of a medical entity).
pub fn medical_fields() -> &'static [&'static str] {
    static FIELDS: std::sync::OnceLock<Vec<&'static str>> = std::sync::OnceLock::new();
    FIELDS.get_or_init(|| {
        let mut out: Vec<&'static str> = Vec::new();
        for e in super::ENTITIES {
            for f in e.fields {
                if f.class.label() == Some("medical") && !out.contains(&f.name) {
                    out.push(f.name);
                }
            }
        }
        out
    })
}

/// File of the restricted topic's schema in `avro/`.
pub const DETAIL_FILE: &str = "medical_detail.avsc";

/// The schema of the restricted topic's records ([`super::Detail`]).
pub fn detail_avsc() -> Value {
    let mut fields = vec![
        json!({"name": "entity", "type": "string", "doc": "Entity of the row (attendance, medical_exemption)."}),
        json!({"name": "key", "type": "string", "doc": "The row's key, as on the entity's topic."}),
        json!({"name": "student_id", "type": ["null", "long"], "default": null, "doc": "Journal id of the student."}),
    ];
    for &name in medical_fields() {
        fields.push(json!({"name": name, "type": ["null", "string"], "default": null,
            "doc": format!("[medical] {name} of the row; null when the entity has no such field or the row holds none."), "vitrina_class": "medical"}));
    }
    fields.push(json!({"name": "commit_lsn", "type": "long", "doc": "Commit LSN of the change (or of the consent) that published it."}));
    fields.push(json!({"name": "lsn", "type": "long", "doc": "LSN of that change."}));
    fields.push(json!({"name": "commit_time", "type": {"type": "long", "logicalType": "timestamp-micros"}, "doc": "Commit time in the journal."}));
    json!({
        "type": "record",
        "name": "MedicalDetail",
        "namespace": NAMESPACE,
        "doc": "Medical detail of one journal row (the reason of an illness mark, an exemption's diagnosis and PE groups). Restricted topic vitrina.medical_detail.v1: compacted, keyed <entity>:<key>; a record exists only while a parent's consent to medical-data transfer is active, and a tombstone (no value) erases a key: on revocation for every key of the student that holds detail, and when a row is deleted or changes without detail being published for it. Grant access to this topic only to consumers entitled to medical data.",
        "fields": fields
    })
}

pub fn detail_text() -> String {
    let mut s = serde_json::to_string_pretty(&detail_avsc()).expect("schema serializes");
    s.push('\n');
    s
}

pub fn watermark_text() -> String {
    let mut s = serde_json::to_string_pretty(&watermark_avsc()).expect("schema serializes");
    s.push('\n');
    s
}

/// `vitrina schemas`: every topic's schema and the fingerprint its
/// messages carry.
pub fn listing(reg: &super::codec::Registry) -> String {
    let mut o = format!(
        "{:<32} {:<40} FINGERPRINT (CRC-64-AVRO, as in the message header)\n",
        "TOPIC", "SCHEMA"
    );
    o.push_str(&format!(
        "{:<32} {:<40} {}\n",
        "(every topic)",
        "vitrina.events.Watermark",
        reg.watermark_fingerprint()
    ));
    for (e, fp) in reg.fingerprints() {
        o.push_str(&format!(
            "{:<32} {:<40} {fp}\n",
            format!("vitrina.{}.v1", e.name),
            format!("{NAMESPACE}.{}Event", e.record)
        ));
    }
    o.push_str(&format!(
        "{:<32} {:<40} {}  (restricted, compacted)\n",
        "vitrina.medical_detail.v1",
        format!("{NAMESPACE}.MedicalDetail"),
        reg.detail_fingerprint()
    ));
    o.push_str("\nFIELDS MARKED (medical: never on a general topic; free_text: names and numbers replaced)\n");
    for e in super::ENTITIES {
        for f in e.fields {
            let label = match f.class {
                super::contract::Class::MedicalWhen(w, v) => {
                    format!("medical when {w} = {v}, free_text otherwise")
                }
                c => match c.label() {
                    Some(l) => l.to_string(),
                    None => continue,
                },
            };
            o.push_str(&format!("{:<32} {:<24} {label}\n", e.name, f.name));
        }
    }
    o
}

/// Writes every `.avsc` file (one per entity, and the watermark's) into
/// `dir`; returns how many.
pub fn write_all(dir: &std::path::Path) -> std::io::Result<usize> {
    std::fs::create_dir_all(dir)?;
    for e in super::ENTITIES {
        std::fs::write(dir.join(file_name(e)), avsc_text(e))?;
    }
    std::fs::write(dir.join(WATERMARK_FILE), watermark_text())?;
    std::fs::write(dir.join(DETAIL_FILE), detail_text())?;
    Ok(super::ENTITIES.len() + 2)
}

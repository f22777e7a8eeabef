//! The restricted topic's records ([`Detail`]) through the same registry:
//! single-object encoded with the `MedicalDetail` schema.

use std::collections::HashMap;

use apache_avro::types::Value;

use super::{hex8, put_long, put_str, CodecError, Registry, MAGIC};
use crate::events::{schema, Detail};

impl Registry {
    /// A restricted-topic record, single-object encoded (written field by
    /// field in schema order, as [`super::write_event`] writes events; a
    /// test holds it to apache-avro's encoding of the same record).
    pub fn encode_detail(&self, d: &Detail) -> Vec<u8> {
        let mut out = Vec::with_capacity(64 + d.key.len());
        out.extend_from_slice(&MAGIC);
        out.extend_from_slice(&self.detail_fp);
        put_str(&mut out, d.entity.name);
        put_str(&mut out, &d.key);
        match d.student_id {
            Some(id) => {
                put_long(&mut out, 1);
                put_long(&mut out, id);
            }
            None => put_long(&mut out, 0),
        }
        for name in schema::medical_fields() {
            match d
                .fields
                .iter()
                .find(|(n, _)| n == name)
                .and_then(|(_, v)| v.as_deref())
            {
                Some(s) => {
                    put_long(&mut out, 1);
                    put_str(&mut out, s);
                }
                None => put_long(&mut out, 0),
            }
        }
        put_long(&mut out, d.commit_lsn as i64);
        put_long(&mut out, d.lsn as i64);
        put_long(&mut out, d.commit_time_micros);
        out
    }

    /// [`Registry::encode_detail`] through apache-avro's `Value`: the reference.
    #[cfg(test)]
    pub(super) fn encode_detail_by_value(&self, d: &Detail) -> Vec<u8> {
        let mut fields = vec![
            (
                "entity".to_string(),
                Value::String(d.entity.name.to_string()),
            ),
            ("key".to_string(), Value::String(d.key.clone())),
            (
                "student_id".to_string(),
                match d.student_id {
                    Some(id) => Value::Union(1, Box::new(Value::Long(id))),
                    None => Value::Union(0, Box::new(Value::Null)),
                },
            ),
        ];
        for (name, v) in &d.fields {
            fields.push((
                name.to_string(),
                match v {
                    Some(s) => Value::Union(1, Box::new(Value::String(s.clone()))),
                    None => Value::Union(0, Box::new(Value::Null)),
                },
            ));
        }
        fields.push(("commit_lsn".into(), Value::Long(d.commit_lsn as i64)));
        fields.push(("lsn".into(), Value::Long(d.lsn as i64)));
        fields.push((
            "commit_time".into(),
            Value::TimestampMicros(d.commit_time_micros),
        ));
        let body = apache_avro::to_avro_datum(&self.detail, Value::Record(fields))
            .expect("detail matches its schema");
        let mut out = Vec::with_capacity(body.len() + 10);
        out.extend_from_slice(&MAGIC);
        out.extend_from_slice(&self.detail_fp);
        out.extend_from_slice(&body);
        out
    }

    /// Decodes a restricted-topic record.
    pub fn decode_detail(&self, bytes: &[u8]) -> Result<Detail, CodecError> {
        if bytes.len() < 10 || bytes[..2] != MAGIC {
            return Err(CodecError::NotSingleObject { len: bytes.len() });
        }
        if bytes[2..10] != self.detail_fp {
            return Err(CodecError::UnknownSchema {
                fingerprint: hex8(bytes[2..10].try_into().expect("8 bytes")),
            });
        }
        let bad = |message: String| CodecError::Body {
            schema: "MedicalDetail".into(),
            message,
        };
        let mut body = &bytes[10..];
        let v = apache_avro::from_avro_datum(&self.detail, &mut body, None)
            .map_err(|e| bad(e.to_string()))?;
        let Value::Record(fields) = v else {
            return Err(bad("not a record".into()));
        };
        let mut m: HashMap<String, Value> = fields.into_iter().collect();
        let unwrap = |v: Option<Value>| match v {
            Some(Value::Union(_, b)) => Some(*b),
            other => other,
        };
        let text = |v: Option<Value>| match unwrap(v) {
            Some(Value::String(s)) => Some(s),
            _ => None,
        };
        let entity_name = text(m.remove("entity")).ok_or_else(|| bad("entity".into()))?;
        let entity = crate::events::contract::entity(&entity_name)
            .ok_or_else(|| bad(format!("unknown entity {entity_name}")))?;
        let key = text(m.remove("key")).ok_or_else(|| bad("key".into()))?;
        let student_id = match unwrap(m.remove("student_id")) {
            Some(Value::Long(id)) => Some(id),
            _ => None,
        };
        let fields = schema::medical_fields()
            .iter()
            .map(|f| (*f, text(m.remove(*f))))
            .collect();
        let long = |v: Option<Value>| match v {
            Some(Value::Long(x)) | Some(Value::TimestampMicros(x)) => Ok(x),
            other => Err(bad(format!("{other:?}"))),
        };
        Ok(Detail {
            entity,
            key,
            student_id,
            fields,
            commit_lsn: long(m.remove("commit_lsn"))? as u64,
            lsn: long(m.remove("lsn"))? as u64,
            commit_time_micros: long(m.remove("commit_time"))?,
        })
    }
}

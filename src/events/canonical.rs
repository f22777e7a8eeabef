//! The Avro specification's Parsing Canonical Form and its CRC-64-AVRO
//! fingerprint, as the single-object header carries it.
//!
//! Written here rather than taken from apache-avro: its canonical form keeps
//! `{"type":"long"}` for a primitive with a logical type, where the
//! specification's [PRIMITIVES] rule reduces it to `"long"` (as Java's
//! `SchemaNormalization`, the reference implementation, and fastavro do).
//! A fingerprint over the wrong form matches no stock consumer.
//!
//! Rules applied ([Parsing Canonical Form for Schemas]):
//! - [PRIMITIVES] a primitive, with or without attributes, is its name;
//! - [FULLNAMES] names become full names; a named type defined once is
//!   referred to by its full name afterwards;
//! - [STRIP] only `type`, `name`, `fields`, `symbols`, `items`, `values`,
//!   `size` are kept (docs, defaults, aliases, logical types go);
//! - [ORDER] in that order; [WHITESPACE] none; [STRINGS] as JSON, UTF-8.
//!
//! [Parsing Canonical Form for Schemas]: https://avro.apache.org/docs/1.11.1/specification/#parsing-canonical-form-for-schemas

use std::collections::HashSet;

use serde_json::Value;

const PRIMITIVES: &[&str] = &[
    "null", "boolean", "int", "long", "float", "double", "bytes", "string",
];

/// The Parsing Canonical Form of a schema given as JSON.
pub fn parsing_canonical_form(schema: &Value) -> String {
    let mut out = String::new();
    let mut defined = HashSet::new();
    write(schema, None, &mut defined, &mut out);
    out
}

/// The CRC-64-AVRO fingerprint of `schema`'s canonical form, in the byte
/// order of the single-object header (little-endian).
pub fn fingerprint(schema: &Value) -> [u8; 8] {
    crc64_avro(parsing_canonical_form(schema).as_bytes()).to_le_bytes()
}

/// CRC-64-AVRO (the specification's Rabin fingerprint).
pub fn crc64_avro(bytes: &[u8]) -> u64 {
    const EMPTY: u64 = 0xc15d_213a_a4d7_a795;
    let table: [u64; 256] = std::array::from_fn(|i| {
        let mut fp = i as u64;
        for _ in 0..8 {
            fp = (fp >> 1) ^ (EMPTY & (0u64.wrapping_sub(fp & 1)));
        }
        fp
    });
    let mut fp = EMPTY;
    for b in bytes {
        fp = (fp >> 8) ^ table[((fp ^ *b as u64) & 0xff) as usize];
    }
    fp
}

fn full_name(name: &str, namespace: Option<&str>) -> String {
    if name.contains('.') {
        return name.to_string();
    }
    match namespace {
        Some(ns) if !ns.is_empty() => format!("{ns}.{name}"),
        _ => name.to_string(),
    }
}

fn json_string(s: &str) -> String {
    serde_json::to_string(s).expect("a string serializes")
}

fn write(v: &Value, namespace: Option<&str>, defined: &mut HashSet<String>, out: &mut String) {
    match v {
        Value::String(name) => {
            if PRIMITIVES.contains(&name.as_str()) {
                out.push_str(&json_string(name));
            } else {
                out.push_str(&json_string(&full_name(name, namespace)));
            }
        }
        Value::Array(branches) => {
            out.push('[');
            for (i, b) in branches.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write(b, namespace, defined, out);
            }
            out.push(']');
        }
        Value::Object(o) => {
            let ty = o.get("type");
            match ty {
                Some(Value::String(t)) if PRIMITIVES.contains(&t.as_str()) => {
                    out.push_str(&json_string(t));
                }
                Some(Value::String(t))
                    if t == "record" || t == "error" || t == "enum" || t == "fixed" =>
                {
                    let name = o.get("name").and_then(Value::as_str).unwrap_or_default();
                    let ns = o.get("namespace").and_then(Value::as_str).or(namespace);
                    let full = full_name(name, ns);
                    if !defined.insert(full.clone()) {
                        out.push_str(&json_string(&full));
                        return;
                    }
                    // Names inside take the namespace of the full name.
                    let inner_ns = full.rsplit_once('.').map(|(ns, _)| ns.to_string());
                    out.push_str(&format!(
                        "{{\"name\":{},\"type\":{}",
                        json_string(&full),
                        json_string(t)
                    ));
                    if t == "enum" {
                        let symbols: Vec<String> = o
                            .get("symbols")
                            .and_then(Value::as_array)
                            .map(|a| {
                                a.iter()
                                    .filter_map(Value::as_str)
                                    .map(json_string)
                                    .collect()
                            })
                            .unwrap_or_default();
                        out.push_str(&format!(",\"symbols\":[{}]", symbols.join(",")));
                    }
                    if t == "fixed" {
                        let size = o.get("size").and_then(Value::as_u64).unwrap_or(0);
                        out.push_str(&format!(",\"size\":{size}"));
                    }
                    if t == "record" || t == "error" {
                        out.push_str(",\"fields\":[");
                        let fields = o.get("fields").and_then(Value::as_array);
                        for (i, f) in fields.into_iter().flatten().enumerate() {
                            if i > 0 {
                                out.push(',');
                            }
                            let fname = f.get("name").and_then(Value::as_str).unwrap_or_default();
                            out.push_str(&format!("{{\"name\":{},\"type\":", json_string(fname)));
                            write(
                                f.get("type").unwrap_or(&Value::Null),
                                inner_ns.as_deref(),
                                defined,
                                out,
                            );
                            out.push('}');
                        }
                        out.push(']');
                    }
                    out.push('}');
                }
                Some(Value::String(t)) if t == "array" => {
                    out.push_str("{\"type\":\"array\",\"items\":");
                    write(
                        o.get("items").unwrap_or(&Value::Null),
                        namespace,
                        defined,
                        out,
                    );
                    out.push('}');
                }
                Some(Value::String(t)) if t == "map" => {
                    out.push_str("{\"type\":\"map\",\"values\":");
                    write(
                        o.get("values").unwrap_or(&Value::Null),
                        namespace,
                        defined,
                        out,
                    );
                    out.push('}');
                }
                // A named type referred to as {"type": "Name"}.
                Some(other) => write(other, namespace, defined, out),
                None => out.push_str("null"),
            }
        }
        other => out.push_str(&other.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn logical_types_reduce_to_their_primitive() {
        let s = json!({"type": "record", "name": "R", "namespace": "a.b", "doc": "x", "fields": [
            {"name": "t", "type": {"type": "long", "logicalType": "timestamp-micros"}, "doc": "d"},
            {"name": "d", "type": ["null", {"type": "int", "logicalType": "date"}], "default": null},
            {"name": "e", "type": {"type": "enum", "name": "E", "symbols": ["A", "B"]}},
            {"name": "e2", "type": "E"},
        ]});
        assert_eq!(
            parsing_canonical_form(&s),
            r#"{"name":"a.b.R","type":"record","fields":[{"name":"t","type":"long"},{"name":"d","type":["null","int"]},{"name":"e","type":{"name":"a.b.E","type":"enum","symbols":["A","B"]}},{"name":"e2","type":"a.b.E"}]}"#
        );
    }

    #[test]
    fn crc64_avro_agrees_with_apache_avro_where_its_canonical_form_is_right() {
        // For a schema without logical types apache-avro's canonical form is
        // the specification's, so its Rabin fingerprint checks our CRC.
        use apache_avro::rabin::Rabin;
        for text in [
            r#""int""#,
            r#"{"type":"record","name":"x.R","fields":[{"name":"a","type":"string"}]}"#,
        ] {
            let theirs = apache_avro::Schema::parse_str(text)
                .unwrap()
                .fingerprint::<Rabin>();
            let v: Value = serde_json::from_str(text).unwrap();
            assert_eq!(fingerprint(&v).to_vec(), theirs.bytes, "{text}");
        }
    }
}

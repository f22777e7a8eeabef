//! Unit tests of `codec`.

use super::*;
use crate::events::Detail;
use crate::region::rng::Rng;

fn sample(e: &'static Entity, rng: &mut Rng, op: Op) -> Event {
    let after = (!matches!(op, Op::Delete | Op::Truncate)).then(|| {
        e.fields
            .iter()
            .map(|f| {
                if f.nullable && rng.chance(0.3) {
                    return Val::Null;
                }
                match f.ty {
                    Ty::Long => Val::Long(rng.next_u64() as i64),
                    Ty::Int => Val::Int(rng.next_u64() as i32),
                    Ty::Double => Val::Double(rng.unit() * 3.0),
                    Ty::Bool => Val::Bool(rng.chance(0.5)),
                    Ty::Str => Val::Str(format!("текст {}", rng.below(1000))),
                    Ty::Date => Val::Date(rng.range(0, 30000) as i32),
                    Ty::Timestamp => Val::Timestamp(rng.range(0, 2_000_000_000_000_000)),
                    Ty::Time => Val::Time(rng.range(0, 86_399_999_999)),
                }
            })
            .collect()
    });
    Event {
        event_id: super::super::change_event_id(rng.next_u64(), rng.next_u64(), 0, "journal.t"),
        entity: e,
        op,
        key: rng.below(1_000_000).to_string(),
        source: Source {
            lsn: rng.next_u64() >> 1,
            commit_lsn: rng.next_u64() >> 1,
            txid: rng.below(1 << 31) as i64,
            commit_time_micros: rng.range(0, 2_000_000_000_000_000),
            table: format!("journal.{}", e.name),
            snapshot: op == Op::Read,
        },
        actor: rng.chance(0.5).then(|| "1000100123".to_string()),
        quality: if rng.chance(0.3) {
            vec!["snils_invalid".into()]
        } else {
            vec![]
        },
        after,
    }
}

#[test]
fn every_entity_round_trips() {
    let mut reg = Registry::new();
    let mut rng = Rng::new(99);
    for e in ENTITIES {
        for op in [Op::Create, Op::Update, Op::Delete, Op::Read, Op::Truncate] {
            for _ in 0..20 {
                let ev = sample(e, &mut rng, op);
                let bytes = reg.encode(&ev).unwrap();
                assert_eq!(&bytes[..2], &MAGIC);
                assert_eq!(
                    bytes,
                    reg.encode_reference(&ev).unwrap(),
                    "fast encoder = apache-avro writer"
                );
                assert_eq!(reg.decode(&bytes).unwrap(), ev);
                assert_eq!(
                    reg.decode_reference(&bytes).unwrap(),
                    ev,
                    "apache-avro's reader reads what the direct reader reads"
                );
            }
        }
    }
}

#[test]
fn the_direct_reader_accepts_nothing_apache_avro_refuses_and_never_panics() {
    let mut reg = Registry::new();
    let mut rng = Rng::new(7);
    for e in ENTITIES {
        let ev = sample(e, &mut rng, Op::Update);
        let bytes = reg.encode(&ev).unwrap();
        // Every truncation of the body is refused (apache-avro's reader
        // accepts some: a missing last value reads as zero).
        for cut in 10..bytes.len() {
            assert!(
                reg.decode(&bytes[..cut]).is_err(),
                "{}: cut at {cut}",
                e.name
            );
        }
        // Every single byte flipped: what the direct reader accepts,
        // apache-avro's accepts and reads the same. (The direct reader is
        // the stricter: apache-avro reads a missing last value as zero and
        // does not check the entity's name.)
        for i in 10..bytes.len() {
            let mut bad = bytes.clone();
            bad[i] ^= 0xff;
            match (reg.decode(&bad), reg.decode_reference(&bad)) {
                (Ok(a), Ok(b)) => assert_eq!(a, b, "{}: byte {i}", e.name),
                (Err(_), _) => {}
                (Ok(a), Err(b)) => panic!("{}: byte {i}: direct {a:?}, reference {b}", e.name),
            }
        }
    }
}

#[test]
fn arrays_written_in_sized_blocks_are_read() {
    // Other Avro writers (Java's, with a block size) may write an array
    // block with a negative count followed by the block's size in bytes.
    let mut reg = Registry::new();
    let mut rng = Rng::new(3);
    let e = ENTITIES.iter().find(|e| e.name == "grade").unwrap();
    let mut ev = sample(e, &mut rng, Op::Create);
    ev.quality = vec!["a".into(), "bc".into()];
    let bytes = reg.encode(&ev).unwrap();
    // The quality array as written: count 2 (zigzag 4), "a", "bc", end 0.
    let plain = [4u8, 2, b'a', 4, b'b', b'c', 0];
    let at = bytes
        .windows(plain.len())
        .position(|w| w == plain)
        .expect("the array's bytes");
    // Count -2 (zigzag 3), then the block's 5 bytes (zigzag 10).
    let sized = [3u8, 10, 2, b'a', 4, b'b', b'c', 0];
    let mut other = bytes[..at].to_vec();
    other.extend_from_slice(&sized);
    other.extend_from_slice(&bytes[at + plain.len()..]);
    assert_eq!(reg.decode(&other).unwrap(), ev);
    assert_eq!(reg.decode_reference(&other).unwrap(), ev);
}

#[test]
fn header_is_the_spec_rabin_fingerprint_little_endian() {
    // CRC-64-AVRO of the canonical form, computed here from the spec's
    // algorithm, compared with what the encoder writes.
    fn rabin(data: &[u8]) -> u64 {
        const EMPTY: u64 = 0xc15d213aa4d7a795;
        let mut table = [0u64; 256];
        for (i, t) in table.iter_mut().enumerate() {
            let mut fp = i as u64;
            for _ in 0..8 {
                fp = (fp >> 1) ^ (EMPTY & (!(fp & 1)).wrapping_add(1));
            }
            *t = fp;
        }
        let mut fp = EMPTY;
        for b in data {
            fp = (fp >> 8) ^ table[((fp ^ *b as u64) & 0xff) as usize];
        }
        fp
    }
    let mut reg = Registry::new();
    let mut rng = Rng::new(1);
    let e = super::super::contract::entity("grade").unwrap();
    let bytes = reg.encode(&sample(e, &mut rng, Op::Create)).unwrap();
    let canonical = super::super::canonical::parsing_canonical_form(&schema::avsc(e));
    assert!(
        !canonical.contains("logicalType") && !canonical.contains("{\"type\":\"long\"}"),
        "primitives with logical types reduce to their name: {canonical}"
    );
    assert_eq!(&bytes[2..10], &rabin(canonical.as_bytes()).to_le_bytes());
}

#[test]
fn watermarks_round_trip_and_are_told_apart_from_events() {
    let mut reg = Registry::new();
    let w = Watermark {
        capture: "vitrina".into(),
        commit_lsn: 42,
        commit_time_micros: 1_700_000_000_000_000,
        emitted_at_micros: 1_700_000_000_100_000,
        partition: 2,
    };
    let bytes = reg.encode_watermark(&w);
    assert_eq!(
        reg.decode_message(&bytes).unwrap(),
        Message::Watermark(w.clone())
    );
    assert_eq!(reg.decode_watermark_reference(&bytes).unwrap(), w);
    assert!(
        reg.decode(&bytes).is_err(),
        "a watermark is not an entity event"
    );
}

#[test]
fn garbage_and_unknown_schemas_are_refused() {
    let reg = Registry::new();
    assert!(matches!(
        reg.decode(b"hello"),
        Err(CodecError::NotSingleObject { .. })
    ));
    let mut msg = vec![0xC3, 0x01, 1, 2, 3, 4, 5, 6, 7, 8];
    msg.extend_from_slice(b"body");
    assert!(matches!(
        reg.decode(&msg),
        Err(CodecError::UnknownSchema { .. })
    ));
}

#[test]
fn a_required_field_cannot_be_null() {
    let mut reg = Registry::new();
    let mut rng = Rng::new(2);
    let e = super::super::contract::entity("grade").unwrap();
    let mut ev = sample(e, &mut rng, Op::Create);
    ev.after.as_mut().unwrap()[0] = Val::Null;
    let err = reg.encode(&ev).unwrap_err().to_string();
    assert!(err.contains("`id` is required"), "{err}");
}

#[test]
fn details_round_trip() {
    let reg = Registry::new();
    let e = super::super::contract::entity("attendance").unwrap();
    let d = Detail {
        entity: e,
        key: "42".into(),
        student_id: Some(7),
        fields: schema::medical_fields()
            .iter()
            .map(|f| (*f, (*f == "reason").then(|| "болезнь: ОРВИ".to_string())))
            .collect(),
        commit_lsn: 100,
        lsn: 90,
        commit_time_micros: 1_700_000_000_000_000,
    };
    let bytes = reg.encode_detail(&d);
    assert_eq!(&bytes[2..10], &reg.detail_fp);
    assert_eq!(reg.decode_detail(&bytes).unwrap(), d);
    assert!(reg.decode_message(&bytes).is_err(), "not an event");
}

#[test]
fn details_are_written_as_apache_avro_writes_them() {
    let reg = Registry::new();
    for (entity, student, values) in [
        ("attendance", Some(7), vec![("reason", "болезнь: ОРВИ")]),
        ("attendance", None, vec![]),
        (
            "medical_exemption",
            Some(-3),
            vec![("diagnosis_group", "J00-J06"), ("pe_group", "")],
        ),
    ] {
        let d = Detail {
            entity: super::super::contract::entity(entity).unwrap(),
            key: format!("{entity}-{}", values.len()),
            student_id: student,
            fields: schema::medical_fields()
                .iter()
                .map(|f| {
                    let v = values
                        .iter()
                        .find(|(n, _)| n == f)
                        .map(|(_, v)| v.to_string());
                    (*f, v)
                })
                .collect(),
            commit_lsn: u64::MAX / 3,
            lsn: 1,
            commit_time_micros: -5,
        };
        assert_eq!(
            reg.encode_detail(&d),
            reg.encode_detail_by_value(&d),
            "{d:?}"
        );
    }
}

/// An older capture's writer schema (here: grade before its `comment`
/// field existed) decodes through Avro schema resolution into the current
/// one; a fingerprint neither current nor historic is refused as unknown.
#[test]
fn an_older_writer_schema_resolves_against_the_current_one() {
    let grade = ENTITIES.iter().find(|e| e.name == "grade").unwrap();
    let mut old = schema::avsc(grade);
    let after = old["fields"]
        .as_array_mut()
        .unwrap()
        .iter_mut()
        .find(|f| f["name"] == "after")
        .unwrap();
    let fields = after["type"][1]["fields"].as_array_mut().unwrap();
    let before = fields.len();
    fields.retain(|f| f["name"] != "comment");
    assert_eq!(fields.len(), before - 1);
    let old_text = old.to_string();
    let old_schema = Schema::parse(&old).unwrap();

    let mut current = Registry::new();
    let mut rng = Rng::new(7);
    let mut ev = sample(grade, &mut rng, Op::Create);
    let comment = grade.index("comment").unwrap();
    ev.after.as_mut().unwrap()[comment] = Val::Str("забыл тетрадь".into());
    let bytes = current.encode(&ev).unwrap();
    // The same event as the older release wrote it.
    let cur_schema = current.schema("grade").unwrap().clone();
    let mut value = apache_avro::from_avro_datum(&cur_schema, &mut &bytes[10..], None).unwrap();
    let Value::Record(top) = &mut value else {
        panic!()
    };
    let (_, after_v) = top.iter_mut().find(|(n, _)| n == "after").unwrap();
    let Value::Union(_, inner) = after_v else {
        panic!()
    };
    let Value::Record(af) = inner.as_mut() else {
        panic!()
    };
    af.retain(|(n, _)| n != "comment");
    let mut old_bytes = MAGIC.to_vec();
    old_bytes.extend_from_slice(&canonical::fingerprint(&old));
    old_bytes.extend(apache_avro::to_avro_datum(&old_schema, value).unwrap());

    match current.decode(&old_bytes) {
        Err(CodecError::UnknownSchema { .. }) => {}
        other => panic!("without its history the older schema is unknown: {other:?}"),
    }
    let reader = Registry::with_history(&[("grade", &old_text)]);
    let got = reader.decode(&old_bytes).unwrap();
    let mut want = ev.clone();
    want.after.as_mut().unwrap()[comment] = Val::Null;
    assert_eq!(
        got, want,
        "the field the older writer lacked takes its default"
    );
    // Current events still decode as before.
    assert_eq!(reader.decode(&bytes).unwrap(), ev);
}

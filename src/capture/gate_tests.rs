//! Unit tests of `gate`.

use super::*;
use crate::events::contract::entity;

fn state(e: &Entity, set: &[(&str, &str)]) -> Vec<Val> {
    let mut v = vec![Val::Null; e.fields.len()];
    for (f, x) in set {
        v[e.index(f).unwrap()] = Val::Str(x.to_string());
    }
    v
}

#[test]
fn medical_values_never_stay_in_the_general_state() {
    let mut f = Fields::new(true);
    f.learn("Иванов");
    let att = entity("attendance").unwrap();
    let mut ill = state(att, &[("code", "Б"), ("reason", "болезнь: ОРВИ")]);
    let a = f.apply(att, &mut ill);
    assert_eq!(ill[att.index("reason").unwrap()], Val::Null);
    assert!(a.holds_detail());
    let d = a.detail.unwrap();
    assert_eq!(
        d.iter().find(|(n, _)| *n == "reason").unwrap().1.as_deref(),
        Some("болезнь: ОРВИ")
    );
    // Another code: the reason is free text, scrubbed, and stays.
    let mut absent = state(att, &[("code", "Н"), ("reason", "Иванов на соревнованиях")]);
    let a = f.apply(att, &mut absent);
    assert!(!a.holds_detail());
    assert_eq!(
        absent[att.index("reason").unwrap()],
        Val::Str("[ФИО] на соревнованиях".into())
    );
    let ex = entity("medical_exemption").unwrap();
    let mut e = state(
        ex,
        &[("diagnosis_group", "J00-J06"), ("pe_group", "special")],
    );
    let a = f.apply(ex, &mut e);
    assert!(a.holds_detail());
    assert!(e.iter().all(|v| *v == Val::Null));
}

#[test]
fn every_medical_field_of_the_contract_is_a_nullable_string() {
    for e in crate::events::ENTITIES {
        for fl in e.fields {
            if fl.class.label().is_some() {
                assert!(
                    fl.nullable && fl.ty == crate::events::Ty::Str,
                    "{}.{}",
                    e.name,
                    fl.name
                );
            }
        }
    }
}

/// Detail a flip reads from the journal is scrubbed like the stream's, and
/// its replacements are counted by field, as `apply` counts them.
#[test]
fn detail_read_for_a_flip_is_scrubbed_and_counted() {
    let mut f = Fields::new(true);
    f.learn("Иванов");
    let att = entity("attendance").unwrap();
    let row = [("code", "Б"), ("reason", "Иванову: ОРВИ")];
    let text = |field: &str| row.iter().find(|(n, _)| *n == field).map(|(_, v)| *v);
    let mut counts = Vec::new();
    let d = f.detail_of(att, text, &mut counts);
    assert_eq!(
        d.iter().find(|(n, _)| *n == "reason").unwrap().1.as_deref(),
        Some("[ФИО]: ОРВИ")
    );
    assert_eq!(counts, vec![(att.index("reason").unwrap(), 1)]);
    // The stream's path counts the same field for the same text.
    let mut state = state(att, &row);
    let a = f.apply(att, &mut state);
    assert_eq!(a.scrubbed, counts);
}

//! Consent-gated medical detail (seed 002, 004: medical data leave the
//! region only with a parent's written consent).
//!
//! Medical detail (an illness reason on attendance code Б, the diagnosis
//! group and PE group of a ЕМИАС exemption) is shown in a showcase table
//! only while the student has an active consent of kind
//! `medical_data_transfer` (any parent, status `granted`, not deleted).
//!
//! Invariants:
//! - The raw detail is kept in `<schema>_private.<entity>_medical`, a schema
//!   readers are not granted; the showcase row holds it or NULL.
//! - After every batch, the detail of every student the batch touched
//!   (their medical rows or their consents) is recomputed from the private
//!   copy and the consent rows. The result does not depend on the order in
//!   which consent and medical events arrive: a consent applied after the
//!   attendance it covers still reveals it, a revocation redacts what was
//!   shown before.

use crate::events::contract::{Entity, ENTITIES};
use crate::events::{Event, Val};

/// Consent kind that allows medical detail.
pub const CONSENT_KIND: &str = "medical_data_transfer";

/// An entity with medical fields, shown only under consent.
pub struct Medical {
    pub entity: &'static str,
    /// Text fields holding medical detail.
    pub fields: &'static [&'static str],
    /// Only rows where this field equals this value are medical (all when None).
    pub when: Option<(&'static str, &'static str)>,
}

pub const MEDICAL: &[Medical] = &[
    Medical {
        entity: "attendance",
        fields: &["reason"],
        when: Some(("code", "Б")),
    },
    Medical {
        entity: "medical_exemption",
        fields: &["diagnosis_group", "pe_group"],
        when: None,
    },
];

pub fn medical(entity: &str) -> Option<&'static Medical> {
    MEDICAL.iter().find(|m| m.entity == entity)
}

pub fn private_schema(schema: &str) -> String {
    format!("{schema}_private")
}

fn entity(name: &str) -> &'static Entity {
    ENTITIES
        .iter()
        .find(|e| e.name == name)
        .expect("medical entities are in the contract")
}

fn field_index(e: &Entity, name: &str) -> usize {
    e.fields
        .iter()
        .position(|f| f.name == name)
        .expect("medical fields are in the contract")
}

impl Medical {
    /// Positions of the medical fields in the entity's record.
    pub fn field_indexes(&self) -> Vec<usize> {
        let e = entity(self.entity);
        self.fields.iter().map(|f| field_index(e, f)).collect()
    }

    /// Whether a state (the contract's field values) holds medical detail;
    /// the condition's field is looked up once, not per state.
    pub fn holds(&self) -> impl Fn(&[Val]) -> bool + 'static {
        let when = self
            .when
            .map(|(field, value)| (field_index(entity(self.entity), field), value));
        move |after: &[Val]| match when {
            None => true,
            Some((i, value)) => matches!(&after[i], Val::Str(s) if s == value),
        }
    }

    fn private_table(&self, schema: &str) -> String {
        format!("{}.{}_medical", private_schema(schema), self.entity)
    }
}

/// Student id of an event's state, for entities that have one.
pub fn student_of(e: &Event) -> Option<i64> {
    let i = field_index(e.entity, "student_id");
    match e.after.as_ref()?.get(i)? {
        Val::Long(id) => Some(*id),
        _ => None,
    }
}

/// Private tables and the indexes the recomputation needs.
pub fn ddl(schema: &str) -> String {
    let private = private_schema(schema);
    let mut out = format!(
        "CREATE SCHEMA IF NOT EXISTS {private};
COMMENT ON SCHEMA {private} IS 'Medical detail held back until a parent consents; not for showcase readers.';
CREATE INDEX IF NOT EXISTS consent_student_idx ON {schema}.consent (student_id);
"
    );
    for m in MEDICAL {
        let cols: Vec<String> = m.fields.iter().map(|f| format!("    {f} text")).collect();
        out.push_str(&format!(
            "CREATE TABLE IF NOT EXISTS {table} (
    key text PRIMARY KEY,
    student_id bigint,
{cols},
    source_commit_lsn bigint NOT NULL,
    source_lsn bigint NOT NULL,
    detail_offset bigint NOT NULL DEFAULT -1
);
ALTER TABLE {table} ADD COLUMN IF NOT EXISTS detail_offset bigint NOT NULL DEFAULT -1;
CREATE INDEX IF NOT EXISTS {e}_student_idx ON {schema}.{e} (student_id);
CREATE INDEX IF NOT EXISTS {e}_medical_student_idx ON {schema}.{e} (student_id) WHERE NOT deleted{partial};
",
            table = m.private_table(schema),
            e = m.entity,
            cols = cols.join(",\n"),
            partial = m.when.map(|(f, v)| format!(" AND {f} = '{v}'")).unwrap_or_default(),
        ));
    }
    out
}

/// Upsert of detail from the restricted topic (`$1` keys, `$2` students,
/// one text array per field, commit LSNs, LSNs, restricted-topic offsets):
/// the record of a key at the highest offset wins (a key's records are in
/// order on one partition; one read again after a rebalance or a restart
/// replaces nothing later).
pub fn detail_upsert_sql(m: &Medical, schema: &str) -> String {
    let n = m.fields.len();
    let mut casts = vec!["$1::text[]".to_string(), "$2::bigint[]".to_string()];
    casts.extend((0..n).map(|i| format!("${}::text[]", i + 3)));
    casts.extend((n + 3..=n + 5).map(|i| format!("${i}::bigint[]")));
    let sets: Vec<String> = ["student_id"]
        .iter()
        .chain(m.fields.iter())
        .chain(["source_commit_lsn", "source_lsn", "detail_offset"].iter())
        .map(|c| format!("{c} = EXCLUDED.{c}"))
        .collect();
    format!(
        "INSERT INTO {t} AS cur (key, student_id, {fields}, source_commit_lsn, source_lsn, detail_offset)
         SELECT * FROM unnest({casts})
         ON CONFLICT (key) DO UPDATE SET {sets}
         WHERE cur.detail_offset < EXCLUDED.detail_offset",
        t = m.private_table(schema),
        fields = m.fields.join(", "),
        casts = casts.join(", "),
        sets = sets.join(", ")
    )
}

/// Tombstones on the restricted topic: the detail of keys `$1` is erased,
/// unless a later record of the key (offsets `$2`) is applied already.
pub fn detail_erase_sql(m: &Medical, schema: &str) -> String {
    let nulls: Vec<String> = m.fields.iter().map(|f| format!("{f} = NULL")).collect();
    format!(
        "UPDATE {t} p SET {nulls}, source_commit_lsn = 0, source_lsn = 0, detail_offset = x.o
         FROM unnest($1::text[], $2::bigint[]) AS x(key, o)
         WHERE p.key = x.key AND p.detail_offset < x.o",
        t = m.private_table(schema),
        nulls = nulls.join(", ")
    )
}

/// Clears the private detail of keys `$1` older than positions (`$2`, `$3`).
pub fn private_clear_sql(m: &Medical, schema: &str) -> String {
    let nulls: Vec<String> = m.fields.iter().map(|f| format!("{f} = NULL")).collect();
    format!(
        "UPDATE {t} p SET {nulls}, source_commit_lsn = x.cl, source_lsn = x.l
         FROM unnest($1::text[], $2::bigint[], $3::bigint[]) AS x(key, cl, l)
         WHERE p.key = x.key AND (p.source_commit_lsn, p.source_lsn) < (x.cl, x.l)",
        t = m.private_table(schema),
        nulls = nulls.join(", ")
    )
}

/// Clears the private detail older than a TRUNCATE's position (`$1`, `$2`).
pub fn private_truncate_sql(m: &Medical, schema: &str) -> String {
    let nulls: Vec<String> = m.fields.iter().map(|f| format!("{f} = NULL")).collect();
    format!(
        "UPDATE {t} SET {nulls}, source_commit_lsn = $1, source_lsn = $2
         WHERE (source_commit_lsn, source_lsn) < ($1, $2)",
        t = m.private_table(schema),
        nulls = nulls.join(", ")
    )
}

/// Recomputes the shown detail of the rows of the students in `$1` (all
/// when NULL) and of the rows keyed `$2`: the private value under an
/// active consent, NULL otherwise. Touches only rows whose shown value
/// changes. The conditions on the row are checked again on the updated
/// row itself (`s`), so a row another transaction changed meanwhile (an
/// illness mark turned into an excused absence) is left alone.
pub fn refresh_sql(m: &Medical, schema: &str) -> String {
    let shown: Vec<String> = m
        .fields
        .iter()
        .map(|f| format!("CASE WHEN ok.granted THEN p.{f} END AS {f}"))
        .collect();
    let sets: Vec<String> = m.fields.iter().map(|f| format!("{f} = v.{f}")).collect();
    let cur: Vec<String> = m.fields.iter().map(|f| format!("s.{f}")).collect();
    let new: Vec<String> = m.fields.iter().map(|f| format!("v.{f}")).collect();
    let when = |t: &str| {
        m.when
            .map(|(f, v)| format!("AND {t}.{f} = '{v}'"))
            .unwrap_or_default()
    };
    // The rows to recompute are joined to the key and student arrays as
    // sets (unnest), not filtered by `= ANY(array)`: as a filter, that
    // compares every scanned row with every element of the array, which
    // at ten times the demo region (thousands of keys per batch of the
    // initial load) took 25-40 s per statement.
    format!(
        "WITH k AS (
           SELECT unnest($2::text[]) AS key
           UNION
           SELECT a.key FROM {schema}.{e} a JOIN unnest($1::bigint[]) AS st(id) ON a.student_id = st.id
             WHERE NOT a.deleted {when}
           UNION
           SELECT a.key FROM {schema}.{e} a WHERE $1::bigint[] IS NULL AND NOT a.deleted {when}),
         v AS MATERIALIZED (
           SELECT a.key, {shown}
           FROM k
           JOIN {schema}.{e} a ON a.key = k.key
           JOIN {private} p ON p.key = a.key
           CROSS JOIN LATERAL (SELECT EXISTS (
               SELECT 1 FROM {schema}.consent c
               WHERE c.student_id = a.student_id AND c.kind = '{CONSENT_KIND}'
                 AND c.status = 'granted' AND NOT c.deleted) AS granted) ok
           WHERE NOT a.deleted {when})
         UPDATE {schema}.{e} s SET {sets}
         FROM v
         WHERE s.key = v.key AND NOT s.deleted {when_s} AND ({cur}) IS DISTINCT FROM ({new})",
        e = m.entity,
        private = m.private_table(schema),
        shown = shown.join(", "),
        sets = sets.join(", "),
        cur = cur.join(", "),
        new = new.join(", "),
        when = when("a"),
        when_s = when("s"),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::events::contract::Ty;

    #[test]
    fn medical_fields_are_text_fields_of_entities_with_a_student() {
        for m in MEDICAL {
            let e = entity(m.entity);
            for i in m.field_indexes() {
                assert_eq!(e.fields[i].ty, Ty::Str, "{}.{}", m.entity, e.fields[i].name);
            }
            field_index(e, "student_id");
            if let Some((f, _)) = m.when {
                field_index(e, f);
            }
        }
        field_index(entity("consent"), "student_id");
    }

    #[test]
    fn the_medical_list_is_the_contracts() {
        use crate::events::contract::Class;
        for e in ENTITIES {
            let fields: Vec<&str> = e
                .fields
                .iter()
                .filter(|f| matches!(f.class, Class::Medical | Class::MedicalWhen(..)))
                .map(|f| f.name)
                .collect();
            match medical(e.name) {
                None => assert!(fields.is_empty(), "{} has medical fields", e.name),
                Some(m) => {
                    assert_eq!(m.fields, fields.as_slice(), "{}", e.name);
                    for f in e.fields.iter().filter(|f| fields.contains(&f.name)) {
                        let when = match f.class {
                            Class::MedicalWhen(a, b) => Some((a, b)),
                            _ => None,
                        };
                        assert_eq!(m.when, when, "{}.{}", e.name, f.name);
                    }
                }
            }
        }
        assert!(detail_upsert_sql(medical("attendance").unwrap(), "s").contains("ON CONFLICT"));
        // Guarded by the restricted topic's offset, not the journal position
        // (a re-granted consent sends a row's detail again at its old
        // position, after the tombstone that erased it).
        assert!(detail_upsert_sql(medical("attendance").unwrap(), "s")
            .contains("WHERE cur.detail_offset < EXCLUDED.detail_offset"));
    }

    #[test]
    fn only_illness_marks_are_medical() {
        let m = medical("attendance").unwrap();
        let e = entity("attendance");
        let mut after = vec![Val::Null; e.fields.len()];
        after[field_index(e, "code")] = Val::Str("Б".into());
        assert!(m.holds()(&after));
        after[field_index(e, "code")] = Val::Str("Н".into());
        assert!(!m.holds()(&after));
        assert!(medical("medical_exemption").unwrap().holds()(&after));
        assert!(medical("grade").is_none());
    }
}

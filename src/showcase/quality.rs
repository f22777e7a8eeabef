//! Quality control of the showcase (seed 001 §5: completeness, actuality,
//! consistency, connectedness).
//!
//! Invariants:
//! - Checks read the showcase; they never change or drop a showcase row.
//! - A reference to a row not (yet) in the showcase is held in
//!   `<schema>.pending_references` with the time it was first seen; it is
//!   resolved when the referenced row arrives. Only a reference pending
//!   longer than the grace period counts as a connectedness violation:
//!   topics are consumed independently, so a grade may land before its
//!   student.

use serde::Serialize;
use tokio_postgres::GenericClient;

use crate::events::contract::ENTITIES;
use crate::observability as obs;
use crate::pg::PgError;

/// (entity, field, referenced entity): every id field that names another entity.
pub const REFERENCES: &[(&str, &str, &str)] = &[
    ("grade", "student_id", "student"),
    ("grade", "lesson_id", "lesson"),
    ("grade", "class_id", "class"),
    ("grade", "subject_id", "subject"),
    ("attendance", "student_id", "student"),
    ("attendance", "lesson_id", "lesson"),
    ("enrolment_order", "student_id", "student"),
    ("enrolment_order", "organization_id", "organization"),
    ("parent_link", "student_id", "student"),
    ("parent_link", "parent_id", "parent"),
    ("lesson", "class_id", "class"),
    ("lesson", "subject_id", "subject"),
    ("lesson", "teacher_id", "teacher"),
    ("class", "organization_id", "organization"),
    ("consent", "student_id", "student"),
    ("medical_exemption", "student_id", "student"),
];

/// Consistency rules: (name, what it finds, query counting offending rows).
fn consistency(schema: &str) -> Vec<(&'static str, &'static str, String)> {
    vec![
        (
            "grade_mark_out_of_scale",
            "a mark outside the five-point scale 1..5",
            format!("SELECT count(*) FROM {schema}.grade WHERE NOT deleted AND mark NOT BETWEEN 1 AND 5"),
        ),
        (
            "grade_without_result",
            "a grade with neither a mark nor a pass/fail result",
            format!("SELECT count(*) FROM {schema}.grade WHERE NOT deleted AND mark IS NULL AND passed IS NULL"),
        ),
        (
            "attendance_for_deleted_lesson",
            "an attendance mark for a lesson deleted from the journal",
            format!(
                "SELECT count(*) FROM {schema}.attendance a JOIN {schema}.lesson l ON l.key = a.lesson_id::text
                  WHERE NOT a.deleted AND l.deleted"
            ),
        ),
        (
            "student_in_two_classes",
            "a student placed in two classes of one school in one academic year at once",
            format!(
                "WITH moves AS (
                   SELECT student_id, to_class_id, from_class_id, effective_date
                     FROM {schema}.enrolment_order
                    WHERE NOT deleted AND effective_date <= current_date),
                 placed AS (
                   SELECT j.student_id, j.to_class_id AS class_id FROM moves j
                    WHERE j.to_class_id IS NOT NULL
                      AND NOT EXISTS (SELECT 1 FROM moves l
                                       WHERE l.student_id = j.student_id AND l.from_class_id = j.to_class_id
                                         AND l.effective_date >= j.effective_date))
                 SELECT count(*) FROM (
                   SELECT p.student_id FROM placed p JOIN {schema}.class c ON c.key = p.class_id::text AND NOT c.deleted
                    GROUP BY p.student_id, c.organization_id, c.academic_year
                   HAVING count(DISTINCT p.class_id) > 1) x"
            ),
        ),
    ]
}

#[derive(Debug, Clone, Serialize)]
pub struct Finding {
    /// completeness, actuality, consistency or connectedness
    pub dimension: &'static str,
    pub check: String,
    pub what: String,
    /// Offending rows (for actuality: entities not fresh).
    pub violations: i64,
    /// Connectedness only: references still within the grace period.
    pub pending: i64,
}

#[derive(Debug, Serialize)]
pub struct QualityReport {
    pub findings: Vec<Finding>,
}

impl QualityReport {
    pub fn violations(&self) -> i64 {
        self.findings.iter().map(|f| f.violations).sum()
    }
}

/// Pending-reference bookkeeping for schema `schema`.
pub fn ddl(schema: &str) -> String {
    format!(
        "CREATE TABLE IF NOT EXISTS {schema}.pending_references (
    entity text NOT NULL,
    key text NOT NULL,
    field text NOT NULL,
    ref_entity text NOT NULL,
    ref_key text NOT NULL,
    first_seen timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (entity, key, field)
);
COMMENT ON TABLE {schema}.pending_references IS 'References to rows not (yet) in the showcase, since first_seen; resolved when the row arrives.';
CREATE TABLE IF NOT EXISTS {schema}.quality (
    dimension text NOT NULL,
    check_name text NOT NULL,
    violations bigint NOT NULL,
    pending bigint NOT NULL DEFAULT 0,
    checked_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (dimension, check_name)
);
COMMENT ON TABLE {schema}.quality IS 'Latest quality-check results (seed 001 §5).';
"
    )
}

/// Runs every check once over `schema`, records the results in
/// `<schema>.quality` and as metrics, and returns them. References pending
/// longer than `grace_s` seconds are violations.
pub async fn run(
    c: &impl GenericClient,
    schema: &str,
    grace_s: u64,
) -> Result<QualityReport, PgError> {
    let q = |what: &str| PgError::query(format!("quality check: {what}"));
    let mut findings = Vec::new();

    // Completeness: required (non-nullable) fields present in live rows.
    for e in ENTITIES {
        let required: Vec<String> = e
            .fields
            .iter()
            .filter(|f| !f.nullable)
            .map(|f| format!("{} IS NULL", f.name))
            .collect();
        let n: i64 = c
            .query_one(
                &format!(
                    "SELECT count(*) FROM {schema}.{} WHERE NOT deleted AND ({})",
                    e.name,
                    required.join(" OR ")
                ),
                &[],
            )
            .await
            .map_err(q(e.name))?
            .get(0);
        findings.push(Finding {
            dimension: "completeness",
            check: format!("{}_required_fields", e.name),
            what: format!("{} rows missing a required field", e.name),
            violations: n,
            pending: 0,
        });
    }

    // Actuality: entities whose freshness is not within the SLA.
    let stale: i64 = c
        .query_one(
            &format!("SELECT count(*) FROM {schema}.entity_freshness WHERE sla_state <> 'ok'"),
            &[],
        )
        .await
        .map_err(q("actuality"))?
        .get(0);
    findings.push(Finding {
        dimension: "actuality",
        check: "entity_freshness".into(),
        what: "entities whose freshness is at risk or breached".into(),
        violations: stale,
        pending: 0,
    });

    for (name, what, sql) in consistency(schema) {
        let n: i64 = c.query_one(&sql, &[]).await.map_err(q(name))?.get(0);
        findings.push(Finding {
            dimension: "consistency",
            check: name.into(),
            what: what.into(),
            violations: n,
            pending: 0,
        });
    }

    // Connectedness: record new dangling references, resolve arrived ones.
    for (entity, field, target) in REFERENCES {
        c.execute(
            &format!(
                "INSERT INTO {schema}.pending_references (entity, key, field, ref_entity, ref_key)
                 SELECT '{entity}', r.key, '{field}', '{target}', r.{field}::text FROM {schema}.{entity} r
                  WHERE NOT r.deleted AND r.{field} IS NOT NULL
                    AND NOT EXISTS (SELECT 1 FROM {schema}.{target} t WHERE t.key = r.{field}::text AND NOT t.deleted)
                 ON CONFLICT (entity, key, field) DO UPDATE SET ref_key = EXCLUDED.ref_key
                   WHERE {schema}.pending_references.ref_key <> EXCLUDED.ref_key"
            ),
            &[],
        )
        .await
        .map_err(q("recording pending references"))?;
        c.execute(
            &format!(
                "DELETE FROM {schema}.pending_references p
                  WHERE p.entity = '{entity}' AND p.field = '{field}'
                    AND (EXISTS (SELECT 1 FROM {schema}.{target} t WHERE t.key = p.ref_key AND NOT t.deleted)
                         OR NOT EXISTS (SELECT 1 FROM {schema}.{entity} r
                                         WHERE r.key = p.key AND NOT r.deleted AND r.{field}::text = p.ref_key))"
            ),
            &[],
        )
        .await
        .map_err(q("resolving pending references"))?;
        let r = c
            .query_one(
                &format!(
                    "SELECT count(*) FILTER (WHERE first_seen < now() - make_interval(secs => $1)),
                            count(*) FILTER (WHERE first_seen >= now() - make_interval(secs => $1))
                       FROM {schema}.pending_references WHERE entity = '{entity}' AND field = '{field}'"
                ),
                &[&(grace_s as f64)],
            )
            .await
            .map_err(q("counting pending references"))?;
        findings.push(Finding {
            dimension: "connectedness",
            check: format!("{entity}_{field}"),
            what: format!("{entity}.{field} naming a {target} not in the showcase"),
            violations: r.get(0),
            pending: r.get(1),
        });
    }

    let dims: Vec<&str> = findings.iter().map(|f| f.dimension).collect();
    let checks: Vec<&str> = findings.iter().map(|f| f.check.as_str()).collect();
    let counts: Vec<i64> = findings.iter().map(|f| f.violations).collect();
    let pending: Vec<i64> = findings.iter().map(|f| f.pending).collect();
    c.execute(
        &format!(
            "INSERT INTO {schema}.quality (dimension, check_name, violations, pending)
             SELECT * FROM unnest($1::text[], $2::text[], $3::bigint[], $4::bigint[])
             ON CONFLICT (dimension, check_name) DO UPDATE SET violations = EXCLUDED.violations,
               pending = EXCLUDED.pending, checked_at = now()"
        ),
        &[&dims, &checks, &counts, &pending],
    )
    .await
    .map_err(q("recording results"))?;
    metrics::counter!(obs::QUALITY_CHECK_RUNS).increment(1);
    for f in &findings {
        metrics::gauge!(obs::QUALITY_VIOLATIONS, "dimension" => f.dimension, "check" => f.check.clone())
            .set(f.violations as f64);
        if f.dimension == "connectedness" {
            metrics::gauge!(obs::QUALITY_PENDING, "check" => f.check.clone()).set(f.pending as f64);
        }
    }
    Ok(QualityReport { findings })
}

impl QualityReport {
    /// The report as a table, with the grace that makes a reference
    /// pending rather than violated.
    pub fn render(&self, pending_grace_s: u64) -> String {
        let mut o = format!(
            "{:<14} {:<36} {:>10} {:>8}  WHAT\n",
            "DIMENSION", "CHECK", "VIOLATIONS", "PENDING"
        );
        for f in &self.findings {
            o.push_str(&format!(
                "{:<14} {:<36} {:>10} {:>8}  {}\n",
                f.dimension, f.check, f.violations, f.pending, f.what
            ));
        }
        o.push_str(&format!(
            "{} violations in all; pending references resolve when the referenced rows arrive (grace {} s)\n",
            self.violations(),
            pending_grace_s
        ));
        o
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn references_name_id_fields_of_contract_entities() {
        for (entity, field, target) in REFERENCES {
            let e = crate::events::contract::entity(entity).expect(entity);
            assert!(e.field(field).is_some(), "{entity}.{field}");
            let t = crate::events::contract::entity(target).expect(target);
            assert!(t.field("id").is_some(), "{target} is keyed by id");
        }
    }
}

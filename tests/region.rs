//! The synthetic region: deterministic for a seed, identifiers valid except
//! the deliberately broken ones, foreign keys and cross-table facts hold, and
//! the live workload commits what it says.

mod common;

use vitrina::config::WorkloadConfig;
use vitrina::identifiers as ids;
use vitrina::region::{chunk, load, skeleton, workload, RegionSpec};

fn spec(seed: u64, invalid: f64) -> RegionSpec {
    common::small_region(seed, 2, 60, invalid)
}

fn all_bytes(s: &RegionSpec) -> Vec<u8> {
    let sk = skeleton::build(s);
    let mut out = Vec::new();
    for b in load::skeleton_bufs(&sk) {
        out.extend(b.data);
    }
    for school in 0..sk.organizations.len() {
        for y in 0..sk.years {
            let ch = chunk::generate(&sk, school, y);
            for b in [ch.lessons, ch.grades, ch.attendance, ch.exemptions] {
                out.extend(b.data);
            }
        }
    }
    out
}

#[test]
fn generator_is_deterministic_for_a_seed() {
    let a = all_bytes(&spec(11, 0.05));
    let b = all_bytes(&spec(11, 0.05));
    assert!(
        a.len() > 1_000_000,
        "a region of some size: {} bytes",
        a.len()
    );
    assert!(a == b, "same seed, same rows");
    let c = all_bytes(&spec(12, 0.05));
    assert!(a != c, "another seed, another region");
}

#[test]
fn identifiers_are_valid_except_the_deliberately_invalid_ones() {
    let mut s = spec(5, 0.2);
    s.schools = 6;
    let sk = skeleton::build(&s);
    let people = sk
        .students
        .iter()
        .map(|s| &s.person)
        .chain(sk.parents.iter().map(|p| &p.person));
    let (mut valid, mut invalid) = (0, 0);
    for p in people {
        if let Some(snils) = &p.snils {
            let ok = ids::normalize_snils(snils).is_ok();
            assert_eq!(
                ok, !p.snils_invalid,
                "SNILS validity matches the generator's intent"
            );
            if ok {
                valid += 1
            } else {
                invalid += 1
            }
        }
        if let Some((series, number, _)) = &p.passport {
            assert_eq!(
                ids::normalize_passport(series, number).is_ok(),
                !p.passport_invalid
            );
        }
    }
    assert!(
        valid > 300 && invalid > 10,
        "both kinds present: {valid} valid, {invalid} invalid"
    );
    for t in &sk.teachers {
        if let Some(snils) = &t.snils {
            let _ = ids::normalize_snils(snils); // teachers may be invalid too; must not panic
        }
    }
    let mut bc_invalid = 0;
    for st in &sk.students {
        let (series, number, _, _) = &st.birth_certificate;
        let ok = ids::normalize_birth_certificate(series, number).is_ok();
        assert_eq!(
            ok, !st.birth_certificate_invalid,
            "birth certificate {series}"
        );
        bc_invalid += usize::from(!ok);
    }
    assert!(bc_invalid > 0);
    for o in &sk.organizations {
        let ok = ids::validate_inn(&o.inn).is_ok() && ids::validate_ogrn(&o.ogrn).is_ok();
        assert_eq!(ok, !o.invalid_ids);
        assert!(ids::validate_kpp(&o.kpp).is_ok());
    }
}

#[test]
fn region_covers_history_window_and_current_year() {
    let mut s = spec(3, 0.0);
    s.history_years = 3;
    let sk = skeleton::build(&s);
    assert_eq!(sk.years, 4);
    assert_eq!(sk.first_year, 2023);
    let years: std::collections::BTreeSet<i32> = sk.classes.iter().map(|c| c.year).collect();
    assert_eq!(
        years.into_iter().collect::<Vec<_>>(),
        vec![2023, 2024, 2025, 2026]
    );
    let kinds: std::collections::BTreeSet<&str> = sk.orders.iter().map(|o| o.kind).collect();
    for k in ["admission", "transfer", "graduation", "expulsion"] {
        assert!(kinds.contains(k), "orders of kind {k}");
    }
}

#[tokio::test]
async fn loaded_region_keeps_foreign_keys_and_cross_table_facts() {
    let cfg = common::journal_db("t_region").await;
    let report = load::load(&cfg, &spec(21, 0.02), 2, false, false)
        .await
        .unwrap();
    assert!(report.total_rows > 50_000, "{report:?}");
    let c = vitrina::pg::connect(&cfg).await.unwrap();
    let count = |sql: &'static str| {
        let c = &c;
        async move { c.query_one(sql, &[]).await.unwrap().get::<_, i64>(0) }
    };
    // The loader's counts are what the database holds.
    for (table, n) in &report.rows {
        let sql = format!("SELECT count(*) FROM journal.{table}");
        let got: i64 = c.query_one(&sql, &[]).await.unwrap().get(0);
        assert_eq!(got as u64, *n, "{table}");
    }
    // Every foreign key exists and is validated.
    let fks = count("SELECT count(*) FROM pg_constraint WHERE connamespace = 'journal'::regnamespace AND contype = 'f' AND convalidated").await;
    let declared = vitrina::journal::MIGRATIONS
        .iter()
        .map(|m| m.sql.matches("REFERENCES").count() as i64)
        .sum::<i64>();
    assert_eq!(
        fks, declared,
        "every declared foreign key is there and validated"
    );
    // Facts foreign keys cannot express.
    assert_eq!(count("SELECT count(*) FROM journal.grades g JOIN journal.lessons l ON l.id = g.lesson_id WHERE l.class_id <> g.class_id").await, 0, "a current grade belongs to its lesson's class");
    assert_eq!(count("SELECT count(*) FROM journal.lessons l JOIN journal.classes c ON c.id = l.class_id JOIN journal.teachers t ON t.id = l.teacher_id WHERE t.organization_id <> c.organization_id").await, 0, "teachers teach in their own school");
    assert_eq!(count("SELECT count(*) FROM journal.grades g WHERE NOT EXISTS (SELECT 1 FROM journal.enrolment_orders o WHERE o.student_id = g.student_id AND o.to_class_id = g.class_id)").await, 0, "every graded student was ordered into that class");
    assert_eq!(count("SELECT count(*) FROM journal.attendance a JOIN journal.lessons l ON l.id = a.lesson_id JOIN journal.students s ON s.id = a.student_id JOIN journal.enrolment_orders o ON o.student_id = s.id AND o.kind = 'expulsion' WHERE l.lesson_date >= o.effective_date").await, 0, "no attendance after expulsion");
    assert_eq!(
        count("SELECT count(*) FROM journal.lessons WHERE lesson_date >= DATE '2026-11-20'").await,
        0,
        "history stops before the as-of day"
    );
    assert!(count("SELECT count(DISTINCT kind) FROM journal.grades").await >= 4);
    assert_eq!(
        count("SELECT count(DISTINCT code) FROM journal.attendance").await,
        4
    );
    // A second load without --replace is refused and changes nothing.
    let err = load::load(&cfg, &spec(21, 0.02), 1, false, false)
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("--replace"), "{err}");
}

#[tokio::test]
async fn same_seed_loads_identical_databases() {
    let a = common::journal_db("t_det_a").await;
    let b = common::journal_db("t_det_b").await;
    load::load(&a, &spec(33, 0.02), 2, false, false)
        .await
        .unwrap();
    load::load(&b, &spec(33, 0.02), 1, false, false)
        .await
        .unwrap();
    let digest = |cfg: tokio_postgres::Config| async move {
        let c = vitrina::pg::connect(&cfg).await.unwrap();
        let mut out = Vec::new();
        for t in load::TABLES {
            let sql =
                format!("SELECT md5(string_agg(x::text, '|' ORDER BY x::text)) FROM journal.{t} x");
            out.push((
                t.to_string(),
                c.query_one(&sql, &[])
                    .await
                    .unwrap()
                    .get::<_, Option<String>>(0),
            ));
        }
        out
    };
    let (da, db) = (digest(a).await, digest(b).await);
    assert_eq!(
        da, db,
        "same seed, same rows, whatever the number of loader connections"
    );
}

#[tokio::test]
async fn workload_commits_lessons_with_grades_and_a_mass_enrolment_in_one_transaction() {
    let cfg = common::journal_db("t_workload").await;
    load::load(&cfg, &spec(8, 0.0), 2, false, false)
        .await
        .unwrap();
    let c = vitrina::pg::connect(&cfg).await.unwrap();
    let lessons_before: i64 = c
        .query_one("SELECT count(*) FROM journal.lessons", &[])
        .await
        .unwrap()
        .get(0);
    let w = WorkloadConfig {
        rate: 300,
        duration_s: 3,
        sessions: 3,
        mass_enrolment: 250,
        seed: 1,
        ..Default::default()
    };
    let report = workload::run(&cfg, &w, false).await.unwrap();
    assert_eq!(report.failed_transactions, 0, "{report}");
    assert!(report.changes > 100, "{report}");
    let entries = report
        .by_operation
        .get("lesson_entry")
        .copied()
        .unwrap_or(0) as i64;
    assert!(entries > 10, "{report}");
    let lessons_after: i64 = c
        .query_one("SELECT count(*) FROM journal.lessons", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(
        lessons_after - lessons_before,
        entries,
        "one lesson per lesson entry"
    );
    // The mass enrolment: 250 students and 250 orders, all in one transaction
    // (created_at defaults to now(), the transaction's start time).
    let row = c
        .query_one(
            "SELECT count(*), count(DISTINCT created_at) FROM (
                 SELECT created_at FROM journal.students WHERE regional_account_id LIKE 'SE-%'
                 UNION ALL
                 SELECT created_at FROM journal.enrolment_orders WHERE updated_by = 'op:mass-enrolment') x",
            &[],
        )
        .await
        .unwrap();
    assert_eq!((row.get::<_, i64>(0), row.get::<_, i64>(1)), (500, 1));
    let orders: i64 = c
        .query_one(
            "SELECT count(*) FROM journal.enrolment_orders WHERE updated_by = 'op:mass-enrolment'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(orders, 250);
    assert_eq!(report.mass_enrolment_changes, 500);
}

//! The September mass enrolment: one transaction admitting thousands of
//! first-graders, students and orders together.

#![allow(unused_imports)]
use super::super::names;
use super::super::rng::Rng;
use super::*;
use crate::config::WorkloadConfig;
use crate::identifiers;
use crate::pg::{self, PgError};
use chrono::{Datelike, NaiveDate};
use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio_postgres::Client;

/// September mass enrolment: `n` new first-graders and their admission
/// orders, spread over the schools, in one transaction.
pub(super) async fn mass_enrolment(
    client: &Client,
    state: &Mutex<State>,
    n: u32,
    seed: u64,
) -> Result<u64, WorkloadError> {
    let firsts: Vec<(usize, i64, i64)> = {
        let st = state.lock().unwrap();
        st.classes
            .iter()
            .enumerate()
            .filter(|(_, c)| c.level == 1)
            .map(|(i, c)| (i, c.id, c.organization_id))
            .collect()
    };
    if firsts.is_empty() {
        return Ok(0);
    }
    let mut rng = Rng::derive(seed, &[4]);
    let today = chrono::Local::now().date_naive();
    let mut ids = Vec::new();
    let mut snils = Vec::new();
    let mut last = Vec::new();
    let mut first = Vec::new();
    let mut middle = Vec::new();
    let mut sex = Vec::new();
    let mut born = Vec::new();
    let mut bc_series = Vec::new();
    let mut bc_number = Vec::new();
    let mut account = Vec::new();
    let mut class_ids = Vec::new();
    let mut orgs = Vec::new();
    let year = if today.month() >= 9 {
        today.year()
    } else {
        today.year() - 1
    };
    let stamp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    for k in 0..n {
        let female = rng.chance(0.49);
        let surname = *rng.pick(names::SURNAMES);
        let father = *rng.pick(names::MALE_FIRST);
        let mut body = rng.digits(9);
        body[0] = 1 + rng.below(9) as u32;
        let check = identifiers::snils_check(&body);
        let digits: String = body
            .iter()
            .map(|d| char::from_digit(*d, 10).unwrap())
            .collect::<String>()
            + &format!("{check:02}");
        snils.push(identifiers::format_snils(&digits));
        last.push(if female {
            names::feminine(surname)
        } else {
            surname.to_string()
        });
        first.push(if female {
            rng.pick(names::FEMALE_FIRST).to_string()
        } else {
            rng.pick(names::MALE_FIRST).to_string()
        });
        middle.push(names::patronymic(father, female));
        sex.push(if female { "F" } else { "M" }.to_string());
        born.push(
            NaiveDate::from_ymd_opt(year - 7, 1 + rng.below(12) as u32, 1 + rng.below(28) as u32)
                .unwrap(),
        );
        bc_series.push(format!(
            "{}-{}{}",
            rng.pick(&["I", "II", "IV", "VI"]),
            rng.pick(&['А', 'Б', 'К', 'М', 'Р']),
            rng.pick(&['Д', 'Н', 'С', 'Т', 'Ю'])
        ));
        bc_number.push(format!("{:06}", rng.below(1_000_000)));
        account.push(format!("SE-69-{stamp}-{k:06}"));
        let (_, class_id, org) = firsts[k as usize % firsts.len()];
        class_ids.push(class_id);
        orgs.push(org);
    }
    let t0 = Instant::now();
    client
        .batch_execute("BEGIN")
        .await
        .map_err(PgError::query("mass enrolment"))?;
    let rows = client
        .query(
            "INSERT INTO journal.students (snils, last_name, first_name, middle_name, sex, birth_date, birth_place, identity_document_kind, birth_certificate_series, birth_certificate_number, birth_certificate_issued_on, regional_account_id, updated_by)
             SELECT s, l, f, m, x::char(1), b, 'г. Тверь', 'birth_certificate', bs, bn, b + 20, a, 'op:mass-enrolment'
             FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], $6::date[], $7::text[], $8::text[], $9::text[]) AS u(s, l, f, m, x, b, bs, bn, a)
             RETURNING id, regional_account_id",
            &[&snils, &last, &first, &middle, &sex, &born, &bc_series, &bc_number, &account],
        )
        .await
        .map_err(PgError::query("mass enrolment: inserting students"))?;
    let by_account: HashMap<String, i64> = rows.into_iter().map(|r| (r.get(1), r.get(0))).collect();
    ids.extend(account.iter().map(|a| by_account[a]));
    let number = format!("{}-у/{}", 300 + n % 100, year);
    let inserted = client
        .execute(
            "INSERT INTO journal.enrolment_orders (organization_id, student_id, kind, number, order_date, effective_date, to_class_id, to_organization_id, education_form, programme_kind, updated_by)
             SELECT o, s, 'admission', $4, current_date, current_date, c, o, 'full_time', 'primary_general', 'op:mass-enrolment'
             FROM unnest($1::bigint[], $2::bigint[], $3::bigint[]) AS u(o, s, c)",
            &[&orgs, &ids, &class_ids, &number],
        )
        .await
        .map_err(PgError::query("mass enrolment: inserting orders"))?;
    client
        .batch_execute("COMMIT")
        .await
        .map_err(PgError::query("mass enrolment: commit"))?;
    tracing::info!(
        students = n,
        seconds = t0.elapsed().as_secs_f64(),
        "mass enrolment committed"
    );
    let mut st = state.lock().unwrap();
    for (k, id) in ids.iter().enumerate() {
        let pos = firsts[k % firsts.len()].0;
        st.classes[pos].students.push(*id);
        st.student_class.insert(*id, pos);
    }
    Ok(n as u64 + inserted)
}

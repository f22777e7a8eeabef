//! Organizations of the synthetic region, and the enrolment orders and
//! parental consents of its students.

#![allow(unused_imports)]
use super::super::calendar::{academic_year_of, programme_kind, ymd, SUBJECTS};
use super::super::names;
use super::super::rng::Rng;
use super::super::RegionSpec;
use super::*;
use crate::identifiers as ids;
use chrono::{Datelike, Duration, NaiveDate, NaiveDateTime, NaiveTime};

pub(super) fn organization(
    rng: &mut Rng,
    spec: &RegionSpec,
    school: usize,
    city: usize,
) -> Organization {
    let number = school + 1;
    let (kind, full, short) = match school % 10 {
        3 => (
            "gymnasium",
            format!("Муниципальное бюджетное общеобразовательное учреждение «Гимназия № {number}»"),
            format!("МБОУ Гимназия № {number}"),
        ),
        7 => (
            "lyceum",
            format!("Муниципальное бюджетное общеобразовательное учреждение «Лицей № {number}»"),
            format!("МБОУ Лицей № {number}"),
        ),
        _ => (
            "school",
            format!("Муниципальное бюджетное общеобразовательное учреждение «Средняя общеобразовательная школа № {number}»"),
            format!("МБОУ СОШ № {number}"),
        ),
    };
    let invalid_ids = rng.chance(spec.invalid_identifier_share);
    let mut inn9 = vec![6, 9, 5, 0];
    inn9.extend(rng.digits(5));
    let mut inn_check = ids::inn10_check(&inn9);
    let mut ogrn12 = vec![1, 0, 2, 6, 9, 0];
    ogrn12.extend(rng.digits(6));
    let mut ogrn_check = ids::ogrn_check(&ogrn12);
    if invalid_ids {
        inn_check = (inn_check + 1) % 10;
        ogrn_check = (ogrn_check + 3) % 10;
    }
    let to_s = |d: &[u32]| -> String {
        d.iter()
            .map(|x| char::from_digit(*x, 10).unwrap())
            .collect()
    };
    let inn = format!("{}{inn_check}", to_s(&inn9));
    let ogrn = format!("{}{ogrn_check}", to_s(&ogrn12));
    let kpp = format!("{}01001", &inn[..4]);
    let head_female = rng.chance(0.7);
    let surname = *rng.pick(names::SURNAMES);
    let head_name = format!(
        "{} {} {}",
        if head_female {
            names::feminine(surname)
        } else {
            surname.to_string()
        },
        if head_female {
            rng.pick(names::FEMALE_FIRST)
        } else {
            rng.pick(names::MALE_FIRST)
        },
        names::patronymic(rng.pick::<&str>(names::MALE_FIRST), head_female)
    );
    Organization {
        id: school as i64 + 1,
        regional_id: format!("OO-{REGION}-{number:04}"),
        full_name: format!("{full} г. {}", names::CITIES[city].0),
        short_name: short,
        kind,
        inn,
        ogrn,
        kpp,
        okato: format!("28{:03}000000", 401 + city),
        oktmo: format!("28{:03}000", 701 + city),
        licence_number: format!("Л035-01245-{REGION}/{:08}", rng.below(100_000_000)),
        licence_issued_on: random_date(rng, ymd(2012, 1, 1), ymd(2020, 12, 31)),
        accreditation_number: format!("А007-01245-{REGION}/{:08}", rng.below(100_000_000)),
        head_name,
        phone: format!(
            "+7 (4822) {:02}-{:02}-{:02}",
            rng.range(30, 79),
            rng.below(100),
            rng.below(100)
        ),
        email: format!("school{number}@edu.tver.example"),
        website: format!("https://school{number}.tver.example"),
        address: address(rng, city),
        city,
        invalid_ids,
    }
}

pub(super) fn orders_and_consents(sk: &mut Skeleton, rng: &mut Rng) {
    let mut orders = Vec::new();
    let mut consents = Vec::new();
    let as_of = sk.spec.as_of;
    for s in &sk.students {
        let org = s.school as i64 + 1;
        let secretary = format!("op:{}-secretary", sk.organizations[s.school].regional_id);
        let programme = |level: i32| {
            if s.adapted {
                "adapted"
            } else {
                programme_kind(level as i16)
            }
        };
        let entry_year = sk.first_year + 1 - s.cohort;
        let mut push = |kind: &'static str,
                        number: String,
                        order_date: NaiveDate,
                        effective: NaiveDate,
                        from: Option<i64>,
                        to: Option<i64>,
                        level: i32,
                        reason: Option<&'static str>| {
            if order_date > as_of {
                return;
            }
            orders.push(Order {
                id: 0,
                organization_id: org,
                student_id: s.id,
                kind,
                number,
                order_date,
                effective_date: effective,
                from_class_id: from,
                to_class_id: to,
                to_organization_id: if kind == "admission" { Some(org) } else { None },
                education_form: s.education_form,
                programme_kind: programme(level),
                reason,
                updated_by: secretary.clone(),
            });
        };
        let class_id = |yi: i64| -> Option<i64> {
            if yi < 0 || yi >= sk.years as i64 {
                return None;
            }
            sk.class_of(s, yi as usize).map(|c| sk.classes[c].id)
        };
        // Admission to 1st grade (possibly before the generated years).
        let yi1 = (entry_year - sk.first_year) as i64;
        push(
            "admission",
            format!("{}-у/{}", 10 + s.school, entry_year),
            ymd(entry_year, 8, 25),
            ymd(entry_year, 9, 1),
            None,
            class_id(yi1),
            1,
            None,
        );
        let left = s.left_on.unwrap_or(NaiveDate::MAX);
        // Moving up a grade; in the first generated year the class the
        // student came from lies before the window.
        for yi in 0..sk.years as i64 {
            let level = s.cohort + yi as i32;
            let year = sk.first_year + yi as i32;
            if !(2..=11).contains(&level) || ymd(year, 9, 1) > left {
                continue;
            }
            push(
                "transfer",
                format!("{}-п/{}", 40 + s.school, year),
                ymd(year, 5, 30),
                ymd(year, 9, 1),
                class_id(yi - 1),
                class_id(yi),
                level,
                Some("перевод в следующий класс"),
            );
        }
        // Graduation after 11th grade.
        let grad_year = entry_year + 11;
        if ymd(grad_year, 6, 25) <= left.min(as_of) && grad_year > sk.first_year {
            push(
                "graduation",
                format!("{}-в/{}", 70 + s.school, grad_year),
                ymd(grad_year, 6, 25),
                ymd(grad_year, 6, 30),
                class_id((grad_year - 1 - sk.first_year) as i64),
                None,
                11,
                Some("освоение образовательной программы среднего общего образования"),
            );
        }
        if let Some(d) = s.left_on {
            let yi = (academic_year_of(d) - sk.first_year) as i64;
            push(
                "expulsion",
                format!("{}-о/{}", 90 + s.school, d.year()),
                d - Duration::days(3),
                d,
                class_id(yi),
                None,
                (s.cohort + yi as i32).clamp(1, 11),
                Some("перевод в организацию другого региона (смена места жительства)"),
            );
        }
        // Consents: given by the first parent when the child is enrolled.
        let (parent, _) = s.parent_ids[0];
        let parent_esia = sk.parents[parent as usize - 1]
            .person
            .esia_id
            .clone()
            .unwrap_or_else(|| secretary.clone());
        let start = ymd(entry_year.max(sk.first_year), 9, 1).min(as_of);
        for (kind, p) in [
            ("personal_data_processing", 0.95),
            ("medical_data_transfer", 0.6),
            ("photo_publication", 0.3),
        ] {
            if !rng.chance(p) {
                continue;
            }
            let granted = at(
                random_date(rng, start - Duration::days(10), start),
                10,
                rng.below(60) as u32,
            );
            let revoked = (kind == "medical_data_transfer" && rng.chance(0.08))
                .then(|| {
                    at(
                        random_date(
                            rng,
                            granted.date() + Duration::days(30),
                            as_of.max(granted.date() + Duration::days(30)),
                        ),
                        11,
                        0,
                    )
                })
                .filter(|r| r.date() < as_of);
            consents.push(Consent {
                id: 0,
                student_id: s.id,
                parent_id: parent,
                kind,
                granted_at: granted,
                revoked_at: revoked,
                document_number: format!("С-{}", digits_str(rng, 7)),
                updated_by: parent_esia.clone(),
            });
        }
    }
    orders.sort_by_key(|o| (o.order_date, o.organization_id, o.student_id));
    for (i, o) in orders.iter_mut().enumerate() {
        o.id = i as i64 + 1;
    }
    for (i, c) in consents.iter_mut().enumerate() {
        c.id = i as i64 + 1;
    }
    sk.orders = orders;
    sk.consents = consents;
}

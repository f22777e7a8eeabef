//! People of the synthetic region: identifiers (ESIA, SNILS, passports, birth
//! certificates, some deliberately invalid), names and addresses.

#![allow(unused_imports)]
use super::super::calendar::{academic_year_of, programme_kind, ymd, SUBJECTS};
use super::super::names;
use super::super::rng::Rng;
use super::super::RegionSpec;
use super::*;
use crate::identifiers as ids;
use chrono::{Datelike, Duration, NaiveDate, NaiveDateTime, NaiveTime};

pub(super) struct Ids {
    pub(super) esia: u64,
    pub(super) regional: u64,
}

impl Ids {
    pub(super) fn esia(&mut self, rng: &mut Rng) -> String {
        self.esia += 1 + rng.below(40);
        self.esia.to_string()
    }
    pub(super) fn regional(&mut self, prefix: &str) -> String {
        self.regional += 1;
        format!("{prefix}-{REGION}-{:08}", self.regional)
    }
}

pub(super) fn snils(rng: &mut Rng, invalid: bool) -> String {
    let mut body = rng.digits(9);
    body[0] = 1 + rng.below(9) as u32;
    let mut check = ids::snils_check(&body);
    if invalid {
        check = (check + 1 + rng.below(98) as u32) % 100;
    }
    let digits: String = body
        .iter()
        .map(|d| char::from_digit(*d, 10).unwrap())
        .collect::<String>()
        + &format!("{check:02}");
    ids::format_snils(&digits)
}

pub(super) fn digits_str(rng: &mut Rng, n: usize) -> String {
    rng.digits(n)
        .into_iter()
        .map(|d| char::from_digit(d, 10).unwrap())
        .collect()
}

pub(super) fn address(rng: &mut Rng, city: usize) -> String {
    let (name, index) = names::CITIES[city];
    format!(
        "{index}{:03}, Тверская обл., г. {name}, {}, д. {}, кв. {}",
        rng.below(100),
        rng.pick(names::STREETS),
        rng.range(1, 120),
        rng.range(1, 200)
    )
}

pub(super) fn random_date(rng: &mut Rng, from: NaiveDate, to: NaiveDate) -> NaiveDate {
    let span = (to - from).num_days().max(0);
    from + Duration::days(rng.range(0, span))
}

pub(super) fn at(d: NaiveDate, h: u32, m: u32) -> NaiveDateTime {
    d.and_time(NaiveTime::from_hms_opt(h, m, 0).unwrap())
}

pub(super) fn passport(
    rng: &mut Rng,
    issued: NaiveDate,
    invalid: bool,
) -> (String, String, NaiveDate) {
    let series = if invalid {
        // A typo: three digits of series.
        format!("{REGION}{}", rng.below(10))
    } else {
        format!("{REGION}{:02}", issued.year() % 100)
    };
    (series, digits_str(rng, 6), issued)
}

pub(super) const ROMAN: &[&str] = &[
    "I", "II", "III", "IV", "V", "VI", "VII", "VIII", "IX", "X", "XI", "XII", "XIV", "XIX",
];
pub(super) const CYR_LETTERS: &[char] = &[
    'А', 'Б', 'В', 'Г', 'Д', 'Е', 'Ж', 'З', 'И', 'К', 'Л', 'М', 'Н', 'О', 'П', 'Р', 'С', 'Т', 'У',
    'Ф', 'Х', 'Ц', 'Ч', 'Ш', 'Щ', 'Э', 'Ю', 'Я',
];

/// Birth certificate (series, number, issued on, civil record number).
pub(super) fn birth_certificate(
    rng: &mut Rng,
    born: NaiveDate,
    invalid: bool,
    lookalike: bool,
) -> (String, String, NaiveDate, String) {
    let mut roman = rng.pick(ROMAN).to_string();
    if lookalike {
        // People type Cyrillic І, Х, У for the Roman letters.
        roman = roman.replace('I', "І").replace('X', "Х").replace('V', "У");
    }
    let letters: String = if invalid {
        // Latin look-alikes in the Cyrillic part: not a valid series.
        "MK".to_string()
    } else {
        [*rng.pick(CYR_LETTERS), *rng.pick(CYR_LETTERS)]
            .iter()
            .collect()
    };
    let issued = born + Duration::days(rng.range(7, 40));
    let record = format!("1{REGION}{}", digits_str(rng, 18));
    (
        format!("{roman}-{letters}"),
        digits_str(rng, 6),
        issued,
        record,
    )
}

#[allow(clippy::too_many_arguments)]
pub(super) fn person(
    rng: &mut Rng,
    ids: &mut Ids,
    spec: &RegionSpec,
    surname: &str,
    female: bool,
    father_name: &str,
    birth_date: NaiveDate,
    esia_share: f64,
    prefix: &str,
    city: usize,
) -> Person {
    let invalid = rng.chance(spec.invalid_identifier_share);
    let snils_invalid = invalid && rng.chance(0.5);
    let has_snils = rng.chance(0.97) || snils_invalid;
    let age_days = (spec.as_of - birth_date).num_days();
    let fourteen = birth_date
        .with_year(birth_date.year() + 14)
        .unwrap_or(birth_date + Duration::days(14 * 365));
    let has_passport = age_days >= 14 * 365 + 4 && fourteen < spec.as_of;
    let passport_invalid = invalid && !snils_invalid && has_passport;
    let issued = fourteen + Duration::days(rng.range(5, 40));
    Person {
        esia_id: rng.chance(esia_share).then(|| ids.esia(rng)),
        snils: has_snils.then(|| snils(rng, snils_invalid)),
        snils_invalid,
        last_name: if female {
            names::feminine(surname)
        } else {
            surname.to_string()
        },
        first_name: if female {
            rng.pick(names::FEMALE_FIRST).to_string()
        } else {
            rng.pick(names::MALE_FIRST).to_string()
        },
        middle_name: names::patronymic(father_name, female),
        sex: if female { "F" } else { "M" },
        birth_date,
        passport: has_passport.then(|| passport(rng, issued.min(spec.as_of), passport_invalid)),
        passport_invalid,
        regional_account_id: ids.regional(prefix),
        address: address(rng, city),
    }
}

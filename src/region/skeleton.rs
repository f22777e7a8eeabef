//! The region's skeleton: organizations, teachers, classes, students,
//! parents, enrolment orders and consents. Small enough to hold in memory
//! (a few hundred bytes per person); the bulky per-lesson rows are generated
//! per school and year in [`super::chunk`].

use chrono::{Datelike, Duration, NaiveDate, NaiveDateTime, NaiveTime};

use super::calendar::{academic_year_of, programme_kind, ymd, SUBJECTS};
use super::names;
use super::rng::Rng;
use super::RegionSpec;
use crate::identifiers as ids;

/// Students per class at most.
const CLASS_SIZE: u32 = 28;
const LETTERS: &[&str] = &["А", "Б", "В", "Г", "Д", "Е", "Ж", "З", "И", "К"];
/// Region code used in documents and ids (Тверская область).
const REGION: &str = "69";

/// The class letter (А, Б, …) of letter index `i`.
pub fn letter(i: usize) -> &'static str {
    LETTERS[i % LETTERS.len()]
}

/// A family siblings share: surname, parents (id, relation), father's first name.
type Family = (String, Vec<(i64, &'static str)>, String);

pub struct Organization {
    pub id: i64,
    pub regional_id: String,
    pub full_name: String,
    pub short_name: String,
    pub kind: &'static str,
    pub inn: String,
    pub ogrn: String,
    pub kpp: String,
    pub okato: String,
    pub oktmo: String,
    pub licence_number: String,
    pub licence_issued_on: NaiveDate,
    pub accreditation_number: String,
    pub head_name: String,
    pub phone: String,
    pub email: String,
    pub website: String,
    pub address: String,
    pub city: usize,
    /// True when INN or OGRN were deliberately broken.
    pub invalid_ids: bool,
}

pub struct Teacher {
    pub id: i64,
    pub organization_id: i64,
    pub esia_id: String,
    pub snils: Option<String>,
    pub last_name: String,
    pub first_name: String,
    pub middle_name: String,
    pub sex: &'static str,
    pub birth_date: NaiveDate,
    pub regional_account_id: String,
    pub position: &'static str,
    pub qualification: Option<&'static str>,
    pub speciality: String,
    pub hired_on: NaiveDate,
    pub order_number: String,
    /// Subject indices (into `SUBJECTS`) this teacher teaches.
    pub subjects: Vec<usize>,
}

pub struct Class {
    pub id: i64,
    pub organization_id: i64,
    pub school: usize,
    pub year: i32,
    pub level: i16,
    pub letter: usize,
    pub homeroom_teacher_id: i64,
    /// Teacher id for each subject index taught in this class.
    pub teacher_for: Vec<(usize, i64)>,
}

pub struct Person {
    pub esia_id: Option<String>,
    pub snils: Option<String>,
    /// The SNILS as generated was deliberately made invalid.
    pub snils_invalid: bool,
    pub last_name: String,
    pub first_name: String,
    pub middle_name: String,
    pub sex: &'static str,
    pub birth_date: NaiveDate,
    pub passport: Option<(String, String, NaiveDate)>,
    pub passport_invalid: bool,
    pub regional_account_id: String,
    pub address: String,
}

pub struct Student {
    pub id: i64,
    pub school: usize,
    /// Level in the first generated academic year (may be ≤ 0: not yet at school).
    pub cohort: i32,
    pub letter: usize,
    pub person: Person,
    pub birth_place: String,
    pub birth_certificate: (String, String, NaiveDate, String),
    pub birth_certificate_invalid: bool,
    pub movement_first: bool,
    pub health_group: i16,
    pub adapted: bool,
    pub education_form: &'static str,
    /// Expelled on this day (left the region).
    pub left_on: Option<NaiveDate>,
    /// Typical mark, 2.5..5.0.
    pub ability: f64,
    /// Chance per school day of falling ill.
    pub sickliness: f64,
    pub parent_ids: Vec<(i64, &'static str)>,
}

pub struct Parent {
    pub id: i64,
    pub person: Person,
    pub email: String,
    pub phone: String,
}

pub struct Order {
    pub id: i64,
    pub organization_id: i64,
    pub student_id: i64,
    pub kind: &'static str,
    pub number: String,
    pub order_date: NaiveDate,
    pub effective_date: NaiveDate,
    pub from_class_id: Option<i64>,
    pub to_class_id: Option<i64>,
    pub to_organization_id: Option<i64>,
    pub education_form: &'static str,
    pub programme_kind: &'static str,
    pub reason: Option<&'static str>,
    pub updated_by: String,
}

pub struct Consent {
    pub id: i64,
    pub student_id: i64,
    pub parent_id: i64,
    pub kind: &'static str,
    pub granted_at: NaiveDateTime,
    pub revoked_at: Option<NaiveDateTime>,
    pub document_number: String,
    pub updated_by: String,
}

pub struct Skeleton {
    pub spec: RegionSpec,
    /// Start year of the first generated academic year.
    pub first_year: i32,
    /// Number of generated academic years (history + current).
    pub years: usize,
    pub organizations: Vec<Organization>,
    pub teachers: Vec<Teacher>,
    pub classes: Vec<Class>,
    pub students: Vec<Student>,
    pub parents: Vec<Parent>,
    pub orders: Vec<Order>,
    pub consents: Vec<Consent>,
    /// `class_index[school][year_index][level-1][letter]` → index into `classes`.
    pub class_index: Vec<Vec<Vec<Vec<usize>>>>,
    /// Students of each school, as indices into `students`.
    pub school_students: Vec<Vec<usize>>,
}

impl Skeleton {
    pub fn current_year(&self) -> i32 {
        self.first_year + self.years as i32 - 1
    }

    /// The student's class (index into `classes`) in academic year index `yi`.
    pub fn class_of(&self, s: &Student, yi: usize) -> Option<usize> {
        let level = s.cohort + yi as i32;
        if !(1..=11).contains(&level) {
            return None;
        }
        self.class_index[s.school][yi][(level - 1) as usize]
            .get(s.letter)
            .copied()
    }
}

struct Ids {
    esia: u64,
    regional: u64,
}

impl Ids {
    fn esia(&mut self, rng: &mut Rng) -> String {
        self.esia += 1 + rng.below(40);
        self.esia.to_string()
    }
    fn regional(&mut self, prefix: &str) -> String {
        self.regional += 1;
        format!("{prefix}-{REGION}-{:08}", self.regional)
    }
}

fn snils(rng: &mut Rng, invalid: bool) -> String {
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

fn digits_str(rng: &mut Rng, n: usize) -> String {
    rng.digits(n)
        .into_iter()
        .map(|d| char::from_digit(d, 10).unwrap())
        .collect()
}

fn address(rng: &mut Rng, city: usize) -> String {
    let (name, index) = names::CITIES[city];
    format!(
        "{index}{:03}, Тверская обл., г. {name}, {}, д. {}, кв. {}",
        rng.below(100),
        rng.pick(names::STREETS),
        rng.range(1, 120),
        rng.range(1, 200)
    )
}

fn random_date(rng: &mut Rng, from: NaiveDate, to: NaiveDate) -> NaiveDate {
    let span = (to - from).num_days().max(0);
    from + Duration::days(rng.range(0, span))
}

fn at(d: NaiveDate, h: u32, m: u32) -> NaiveDateTime {
    d.and_time(NaiveTime::from_hms_opt(h, m, 0).unwrap())
}

fn passport(rng: &mut Rng, issued: NaiveDate, invalid: bool) -> (String, String, NaiveDate) {
    let series = if invalid {
        // A typo: three digits of series.
        format!("{REGION}{}", rng.below(10))
    } else {
        format!("{REGION}{:02}", issued.year() % 100)
    };
    (series, digits_str(rng, 6), issued)
}

const ROMAN: &[&str] = &[
    "I", "II", "III", "IV", "V", "VI", "VII", "VIII", "IX", "X", "XI", "XII", "XIV", "XIX",
];
const CYR_LETTERS: &[char] = &[
    'А', 'Б', 'В', 'Г', 'Д', 'Е', 'Ж', 'З', 'И', 'К', 'Л', 'М', 'Н', 'О', 'П', 'Р', 'С', 'Т', 'У',
    'Ф', 'Х', 'Ц', 'Ч', 'Ш', 'Щ', 'Э', 'Ю', 'Я',
];

/// Birth certificate (series, number, issued on, civil record number).
fn birth_certificate(
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
fn person(
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

/// Builds the skeleton of the region described by `spec`.
pub fn build(spec: &RegionSpec) -> Skeleton {
    let mut rng = Rng::derive(spec.seed, &[0]);
    let current_year = academic_year_of(spec.as_of);
    let first_year = current_year - spec.history_years as i32;
    let years = spec.history_years as usize + 1;
    let mut ids = Ids {
        esia: 1_000_100_000,
        regional: 0,
    };
    let mut sk = Skeleton {
        spec: spec.clone(),
        first_year,
        years,
        organizations: Vec::new(),
        teachers: Vec::new(),
        classes: Vec::new(),
        students: Vec::new(),
        parents: Vec::new(),
        orders: Vec::new(),
        consents: Vec::new(),
        class_index: Vec::new(),
        school_students: Vec::new(),
    };

    let per_cohort = spec.students_per_school / 11;
    let extra = spec.students_per_school % 11;
    // Cohorts by their level in the first year: those that start school
    // later have levels ≤ 0 then.
    let cohorts: Vec<i32> = (2 - years as i32..=11).collect();
    let cohort_size = |c: i32| -> u32 {
        // Level in the current year decides who gets the remainder.
        let level_now = c + years as i32 - 1;
        per_cohort + u32::from((1..=extra as i32).contains(&level_now))
    };
    let letters_of = |c: i32| -> usize { cohort_size(c).div_ceil(CLASS_SIZE).max(1) as usize };

    for school in 0..spec.schools as usize {
        let org_id = school as i64 + 1;
        let city = if school < spec.schools as usize / 2 {
            0
        } else {
            1 + school % (names::CITIES.len() - 1)
        };
        sk.organizations
            .push(organization(&mut rng, spec, school, city));

        // Teachers: one primary teacher per primary class, subject teachers
        // in proportion to the weekly hours of levels 5–11.
        let first_teacher = sk.teachers.len();
        let primary_classes: usize = (1..=4).map(|l| letters_of(l - (years as i32 - 1))).sum();
        let mut teacher_subjects: Vec<Vec<usize>> = vec![
            SUBJECTS
                .iter()
                .enumerate()
                .filter(|(_, s)| s.homeroom)
                .map(|(i, _)| i)
                .collect();
            primary_classes.max(1)
        ];
        let upper_classes: usize = (5..=11).map(|l| letters_of(l - (years as i32 - 1))).sum();
        for (i, s) in SUBJECTS.iter().enumerate() {
            let upper_hours: u32 = s.hours[4..].iter().map(|h| *h as u32).sum::<u32>();
            let lower_only = !s.homeroom && s.hours[..4].iter().any(|h| *h > 0);
            let weekly = upper_hours as f64 / 7.0 * upper_classes as f64
                + if lower_only {
                    s.hours[..4].iter().map(|h| *h as f64).sum::<f64>() / 4.0
                        * primary_classes as f64
                } else {
                    0.0
                };
            let n = (weekly / 20.0)
                .ceil()
                .max(if weekly > 0.0 { 1.0 } else { 0.0 }) as usize;
            for _ in 0..n {
                teacher_subjects.push(vec![i]);
            }
        }
        for (k, subjects) in teacher_subjects.into_iter().enumerate() {
            let female = rng.chance(0.82);
            let surname = *rng.pick(names::SURNAMES);
            let father = *rng.pick(names::MALE_FIRST);
            let born = random_date(&mut rng, ymd(1962, 1, 1), ymd(2001, 12, 31));
            let p = person(
                &mut rng, &mut ids, spec, surname, female, father, born, 1.0, "T", city,
            );
            let hired_on = random_date(
                &mut rng,
                born + Duration::days(22 * 365),
                ymd(first_year, 8, 30).max(born + Duration::days(22 * 365 + 1)),
            );
            let primary = subjects.len() > 1;
            sk.teachers.push(Teacher {
                id: (first_teacher + k) as i64 + 1,
                organization_id: org_id,
                esia_id: p.esia_id.clone().unwrap_or_else(|| ids.esia(&mut rng)),
                snils: p.snils.clone(),
                last_name: p.last_name,
                first_name: p.first_name,
                middle_name: p.middle_name,
                sex: p.sex,
                birth_date: born,
                regional_account_id: p.regional_account_id,
                position: if primary {
                    "учитель начальных классов"
                } else {
                    "учитель"
                },
                qualification: *rng.pick(&[Some("высшая"), Some("первая"), None]),
                speciality: if primary {
                    "педагогика и методика начального образования".to_string()
                } else {
                    format!("преподавание предмета «{}»", SUBJECTS[subjects[0]].name)
                },
                hired_on,
                order_number: format!("{}-к", rng.range(1, 250)),
                subjects,
            });
        }
        let teachers_here = &sk.teachers[first_teacher..];
        let primary_teachers: Vec<i64> = teachers_here
            .iter()
            .filter(|t| t.subjects.len() > 1)
            .map(|t| t.id)
            .collect();
        let subject_teachers = |subject: usize| -> Vec<i64> {
            teachers_here
                .iter()
                .filter(|t| t.subjects.len() == 1 && t.subjects[0] == subject)
                .map(|t| t.id)
                .collect()
        };
        let by_subject: Vec<Vec<i64>> = (0..SUBJECTS.len()).map(subject_teachers).collect();

        // Classes for every year and level.
        let mut index_years = Vec::new();
        for yi in 0..years {
            let year = first_year + yi as i32;
            let mut levels = Vec::new();
            for level in 1..=11i16 {
                let cohort = level as i32 - yi as i32;
                let mut letters = Vec::new();
                for letter in 0..letters_of(cohort) {
                    let class_idx = sk.classes.len();
                    // Primary teachers follow their class from 1st to 4th grade.
                    let primary_slot = (cohort.rem_euclid(4) as usize) * 3 + letter;
                    let mut teacher_for = Vec::new();
                    for (si, s) in SUBJECTS.iter().enumerate() {
                        if s.hours[level as usize - 1] == 0 {
                            continue;
                        }
                        let t = if level <= 4 && s.homeroom && !primary_teachers.is_empty() {
                            primary_teachers[primary_slot % primary_teachers.len()]
                        } else if !by_subject[si].is_empty() {
                            by_subject[si][(class_idx + letter) % by_subject[si].len()]
                        } else {
                            primary_teachers[0]
                        };
                        teacher_for.push((si, t));
                    }
                    let homeroom_teacher_id = if level <= 4 {
                        teacher_for[0].1
                    } else {
                        teacher_for[(class_idx + 3) % teacher_for.len()].1
                    };
                    sk.classes.push(Class {
                        id: class_idx as i64 + 1,
                        organization_id: org_id,
                        school,
                        year,
                        level,
                        letter,
                        homeroom_teacher_id,
                        teacher_for,
                    });
                    letters.push(class_idx);
                }
                levels.push(letters);
            }
            index_years.push(levels);
        }
        sk.class_index.push(index_years);

        // Students, cohort by cohort, with their parents.
        let mut here = Vec::new();
        let mut last_family: Option<Family> = None;
        for &c in &cohorts {
            let entry_year = first_year + 1 - c; // the year they entered 1st grade
            let letters = letters_of(c);
            for k in 0..cohort_size(c) {
                let female = rng.chance(0.49);
                let born = random_date(
                    &mut rng,
                    ymd(entry_year - 8, 9, 1),
                    ymd(entry_year - 7, 8, 31),
                );
                // Siblings share a family: same surname, same parents.
                let sibling = rng.chance(0.12) && last_family.is_some();
                let (surname, parent_ids, father) = if sibling {
                    last_family.clone().unwrap()
                } else {
                    let surname = rng.pick(names::SURNAMES).to_string();
                    let father = rng.pick(names::MALE_FIRST).to_string();
                    let mut parent_ids = Vec::new();
                    let guardian = rng.chance(0.02);
                    let mother = !guardian && rng.chance(0.97);
                    let has_father = !guardian && rng.chance(0.72);
                    let make = |rel: &'static str,
                                fem: bool,
                                rng: &mut Rng,
                                ids: &mut Ids,
                                sk: &mut Skeleton|
                     -> (i64, &'static str) {
                        let pb = random_date(
                            rng,
                            born - Duration::days(42 * 365),
                            born - Duration::days(19 * 365),
                        );
                        let fam = if rel == "guardian" {
                            rng.pick(names::SURNAMES).to_string()
                        } else {
                            surname.clone()
                        };
                        let grandfather = *rng.pick(names::MALE_FIRST);
                        let mut p =
                            person(rng, ids, spec, &fam, fem, grandfather, pb, 0.9, "P", city);
                        if rel == "father" {
                            p.first_name = father.clone();
                        }
                        let id = sk.parents.len() as i64 + 1;
                        let account = p.regional_account_id.clone();
                        sk.parents.push(Parent {
                            id,
                            person: p,
                            email: format!("{}@mail.example", account.to_lowercase()),
                            phone: format!("+7 9{}", digits_str(rng, 9)),
                        });
                        (id, rel)
                    };
                    if mother {
                        parent_ids.push(make("mother", true, &mut rng, &mut ids, &mut sk));
                    }
                    if has_father {
                        parent_ids.push(make("father", false, &mut rng, &mut ids, &mut sk));
                    }
                    if parent_ids.is_empty() {
                        let fem = rng.chance(0.8);
                        parent_ids.push(make("guardian", fem, &mut rng, &mut ids, &mut sk));
                    }
                    (surname, parent_ids, father)
                };
                last_family = Some((surname.clone(), parent_ids.clone(), father.clone()));
                let p = person(
                    &mut rng, &mut ids, spec, &surname, female, &father, born, 0.85, "S", city,
                );
                let invalid_bc = rng.chance(spec.invalid_identifier_share / 2.0);
                let lookalike = rng.chance(0.05);
                let bc = birth_certificate(&mut rng, born, invalid_bc, lookalike);
                // Expulsion (moved away) during one of the generated years.
                let left_on = (0..years)
                    .find(|_| rng.chance(0.008))
                    .map(|yi| {
                        random_date(
                            &mut rng,
                            ymd(first_year + yi as i32, 9, 15),
                            ymd(first_year + yi as i32 + 1, 5, 15),
                        )
                    })
                    .filter(|d| *d < spec.as_of);
                let id = sk.students.len() as i64 + 1;
                here.push(sk.students.len());
                sk.students.push(Student {
                    id,
                    school,
                    cohort: c,
                    letter: k as usize % letters,
                    person: p,
                    birth_place: format!("г. {}", names::CITIES[city].0),
                    birth_certificate: bc,
                    birth_certificate_invalid: invalid_bc,
                    movement_first: rng.chance(0.3),
                    health_group: *rng.pick(&[1, 2, 2, 2, 3, 3, 4]),
                    adapted: rng.chance(0.02),
                    education_form: if rng.chance(0.985) {
                        "full_time"
                    } else {
                        rng.pick::<&str>(&["family", "part_time"])
                    },
                    left_on,
                    ability: rng.normal(3.9, 0.45).clamp(2.6, 5.0),
                    sickliness: rng.unit() * 0.012 + 0.002,
                    parent_ids,
                });
            }
        }
        sk.school_students.push(here);
    }
    orders_and_consents(&mut sk, &mut rng);
    sk
}

fn organization(rng: &mut Rng, spec: &RegionSpec, school: usize, city: usize) -> Organization {
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

fn orders_and_consents(sk: &mut Skeleton, rng: &mut Rng) {
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

/// Weekly timetable of a class: for each weekday (0..5), subject indices by slot.
pub fn timetable(class: &Class, seed: u64) -> Vec<Vec<usize>> {
    let mut rng = Rng::derive(seed, &[1, class.id as u64]);
    let mut lessons: Vec<usize> = Vec::new();
    for (si, s) in SUBJECTS.iter().enumerate() {
        for _ in 0..s.hours[class.level as usize - 1] {
            lessons.push(si);
        }
    }
    rng.shuffle(&mut lessons);
    let mut days = vec![Vec::new(); 5];
    for (i, si) in lessons.into_iter().enumerate() {
        days[i % 5].push(si);
    }
    days
}

pub fn teacher_of(class: &Class, subject: usize) -> i64 {
    class
        .teacher_for
        .iter()
        .find(|(s, _)| *s == subject)
        .map(|(_, t)| *t)
        .unwrap_or(class.homeroom_teacher_id)
}

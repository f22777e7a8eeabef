//! The region's skeleton: organizations, teachers, classes, students,
//! parents, enrolment orders and consents. Small enough to hold in memory
//! (a few hundred bytes per person); the bulky per-lesson rows are generated
//! per school and year in [`super::chunk`].

use chrono::{Duration, NaiveDate, NaiveDateTime};

use super::calendar::{academic_year_of, ymd, SUBJECTS};
use super::names;
use super::rng::Rng;
use super::RegionSpec;

mod orders;
mod people;
pub mod rows;
use orders::*;
use people::*;

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

//! What one workload transaction does: the operations, their mix, their statements.

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

pub(super) const OPS: &[(&str, u32)] = &[
    ("lesson_entry", 50),
    ("grade_correction", 14),
    ("grade_deletion", 4),
    ("attendance_correction", 7),
    ("attendance_deletion", 2),
    ("homework_edit", 6),
    ("class_transfer", 4),
    ("consent_change", 5),
    ("medical_exemption", 5),
    ("student_edit", 3),
    ("organization_contact_edit", 1),
];

/// An operation by the mix's weights, consent changes scaled by
/// `consent_share` (weights in tenths, so 0.1 keeps one).
pub(super) fn pick_op(rng: &mut Rng, consent_share: f64) -> &'static str {
    let weight = |op: &str, w: u32| {
        if op == "consent_change" {
            (f64::from(w * 10) * consent_share).round() as u32
        } else {
            w * 10
        }
    };
    let total: u32 = OPS.iter().map(|(op, w)| weight(op, *w)).sum();
    let mut x = rng.below(total as u64) as u32;
    for (op, w) in OPS {
        let w = weight(op, *w);
        if x < w {
            return op;
        }
        x -= w;
    }
    OPS[0].0
}

/// One transaction's statements, decided before it runs.
pub(super) enum Plan {
    Lesson {
        lesson: LessonRow,
        grades: Vec<(i64, i16, f64)>,
        absences: Vec<(i64, &'static str, Option<String>)>,
    },
    GradeCorrection {
        id: i64,
        mark: i16,
        by: String,
    },
    GradeDeletion {
        id: i64,
    },
    AttendanceCorrection {
        id: i64,
        by: String,
    },
    AttendanceDeletion {
        id: i64,
    },
    Homework {
        lesson: i64,
        text: String,
    },
    Transfer {
        student: i64,
        org: i64,
        from_id: i64,
        to_id: i64,
        level: i16,
    },
    ConsentRevoke {
        consent: i64,
    },
    ConsentGrant {
        student: i64,
        parent: i64,
        by: String,
    },
    Exemption {
        student: i64,
        code: &'static str,
        days: i64,
    },
    StudentEdit {
        student: i64,
    },
    /// A school's phone number changes (its contact point and its record).
    ContactEdit {
        organization: i64,
        phone: String,
    },
}

pub(super) struct LessonRow {
    class_id: i64,
    subject: i64,
    teacher: i64,
    by: String,
    slot: i16,
    date: NaiveDate,
    topic: String,
    homework: Option<String>,
}

impl Plan {
    pub(super) fn changes(&self) -> u64 {
        match self {
            Plan::Lesson {
                grades, absences, ..
            } => 1 + grades.len() as u64 + absences.len() as u64,
            Plan::ContactEdit { .. } => 2,
            _ => 1,
        }
    }
}

pub(super) fn plan(op: &str, state: &Mutex<State>, rng: &mut Rng) -> Option<Plan> {
    let mut st = state.lock().unwrap();
    match op {
        "lesson_entry" => {
            let ci = rng.below(st.classes.len() as u64) as usize;
            let today = st.today;
            let note = if rng.chance(0.15) {
                mention(&st.surnames, rng)
                    .map(|n| format!(" ({n} — переписать)"))
                    .unwrap_or_default()
            } else {
                String::new()
            };
            let class = &mut st.classes[ci];
            if class.students.is_empty() || class.subjects.is_empty() {
                return None;
            }
            class.slot = class.slot % 8 + 1;
            let (subject, teacher, by) = rng.pick(&class.subjects).clone();
            let mut pool = class.students.clone();
            rng.shuffle(&mut pool);
            let n_abs = rng.below(3) as usize;
            let n_grades = if class.level >= 2 {
                2 + rng.below(5) as usize
            } else {
                0
            };
            let absences: Vec<_> = pool
                .iter()
                .take(n_abs)
                .map(|s| {
                    if rng.chance(0.5) {
                        (
                            *s,
                            "Б",
                            Some(format!("болезнь: {}", rng.pick(names::ILLNESSES).1)),
                        )
                    } else {
                        (*s, "Н", None)
                    }
                })
                .collect();
            let grades = pool
                .iter()
                .skip(n_abs)
                .take(n_grades)
                .map(|s| {
                    (
                        *s,
                        rng.range(2, 5) as i16,
                        if rng.chance(0.1) { 2.0 } else { 1.0 },
                    )
                })
                .collect();
            let topic_no = rng.range(1, 40);
            Some(Plan::Lesson {
                lesson: LessonRow {
                    class_id: class.id,
                    subject,
                    teacher,
                    by,
                    slot: class.slot,
                    date: today,
                    topic: format!("тема {topic_no}"),
                    homework: rng
                        .chance(0.7)
                        .then(|| format!("§{topic_no}, упр. {}{note}", rng.range(1, 400))),
                },
                grades,
                absences,
            })
        }
        "grade_correction" => {
            let (id, by) = st
                .recent_grades
                .get(rng.below(st.recent_grades.len().max(1) as u64) as usize)?
                .clone();
            Some(Plan::GradeCorrection {
                id,
                mark: rng.range(2, 5) as i16,
                by,
            })
        }
        "grade_deletion" => {
            if st.recent_grades.is_empty() {
                return None;
            }
            let i = rng.below(st.recent_grades.len() as u64) as usize;
            let (id, _) = st.recent_grades.swap_remove(i);
            Some(Plan::GradeDeletion { id })
        }
        "attendance_correction" => {
            let (id, by) = st
                .recent_attendance
                .get(rng.below(st.recent_attendance.len().max(1) as u64) as usize)?
                .clone();
            Some(Plan::AttendanceCorrection { id, by })
        }
        "attendance_deletion" => {
            if st.recent_attendance.is_empty() {
                return None;
            }
            let i = rng.below(st.recent_attendance.len() as u64) as usize;
            let (id, _) = st.recent_attendance.swap_remove(i);
            Some(Plan::AttendanceDeletion { id })
        }
        "homework_edit" => {
            let lesson = *st
                .recent_lessons
                .get(rng.below(st.recent_lessons.len().max(1) as u64) as usize)?;
            let mut text = format!(
                "повторить §{}, задачи {}–{}",
                rng.range(1, 40),
                rng.range(1, 20),
                rng.range(21, 40)
            );
            // Teachers type what they should not: a pupil's name, a document.
            if rng.chance(0.3) {
                if let Some(n) = mention(&st.surnames, rng) {
                    text.push_str(&format!("; {n} принести справку"));
                }
            }
            if rng.chance(0.1) {
                text.push_str(&format!(
                    ", СНИЛС {:03}-{:03}-{:03} {:02}",
                    rng.range(100, 999),
                    rng.range(100, 999),
                    rng.range(100, 999),
                    rng.range(10, 99)
                ));
            }
            Some(Plan::Homework { lesson, text })
        }
        "class_transfer" => {
            let from = rng.below(st.classes.len() as u64) as usize;
            let (org, level) = (st.classes[from].organization_id, st.classes[from].level);
            let parallels: Vec<usize> = (0..st.classes.len())
                .filter(|&c| {
                    c != from
                        && st.classes[c].organization_id == org
                        && st.classes[c].level == level
                })
                .collect();
            if parallels.is_empty() || st.classes[from].students.len() < 2 {
                return None;
            }
            let to = *rng.pick(&parallels);
            let k = rng.below(st.classes[from].students.len() as u64) as usize;
            let student = st.classes[from].students.swap_remove(k);
            st.classes[to].students.push(student);
            st.student_class.insert(student, to);
            Some(Plan::Transfer {
                student,
                org,
                from_id: st.classes[from].id,
                to_id: st.classes[to].id,
                level,
            })
        }
        "consent_change" => {
            if rng.chance(0.5) && !st.consent_active.is_empty() {
                let i = rng.below(st.consent_active.len() as u64) as usize;
                let (student, consent) = st.consent_active.swap_remove(i);
                st.consent_none.push(student);
                Some(Plan::ConsentRevoke { consent })
            } else if !st.consent_none.is_empty() {
                let i = rng.below(st.consent_none.len() as u64) as usize;
                let student = st.consent_none.swap_remove(i);
                let (parent, by) = st.first_parent.get(&student)?.clone();
                Some(Plan::ConsentGrant {
                    student,
                    parent,
                    by,
                })
            } else {
                None
            }
        }
        "medical_exemption" => {
            let ci = rng.below(st.classes.len() as u64) as usize;
            let student = *st.classes[ci].students.first()?;
            let student = st.classes[ci]
                .students
                .get(rng.below(st.classes[ci].students.len() as u64) as usize)
                .copied()
                .unwrap_or(student);
            Some(Plan::Exemption {
                student,
                code: rng.pick(names::ILLNESSES).0,
                days: rng.range(3, 10),
            })
        }
        "student_edit" => {
            let ci = rng.below(st.classes.len() as u64) as usize;
            let students = &st.classes[ci].students;
            let student = *students.get(rng.below(students.len().max(1) as u64) as usize)?;
            Some(Plan::StudentEdit { student })
        }
        "organization_contact_edit" => {
            let ci = rng.below(st.classes.len() as u64) as usize;
            let organization = st.classes.get(ci)?.organization_id;
            let phone = format!(
                "+7 (4822) {:02}-{:02}-{:02}",
                rng.range(30, 79),
                rng.below(100),
                rng.below(100)
            );
            Some(Plan::ContactEdit {
                organization,
                phone,
            })
        }
        _ => None,
    }
}

/// What a committed transaction created, for later corrections.
#[derive(Default)]
pub(super) struct Created {
    pub(super) changes: u64,
    lesson: Option<i64>,
    grades: Vec<i64>,
    attendance: Vec<i64>,
    by: String,
}

pub(super) fn remember(state: &Mutex<State>, created: Created) {
    let mut st = state.lock().unwrap();
    if let Some(l) = created.lesson {
        push_bounded(&mut st.recent_lessons, l);
    }
    for g in created.grades {
        push_bounded(&mut st.recent_grades, (g, created.by.clone()));
    }
    for a in created.attendance {
        push_bounded(&mut st.recent_attendance, (a, created.by.clone()));
    }
}

pub(super) async fn execute(
    client: &mut Client,
    plan: &Plan,
) -> Result<Created, tokio_postgres::Error> {
    let tx = client.transaction().await?;
    let n = match plan {
        Plan::Lesson { lesson: l, grades, absences, .. } => {
            let row = tx
                .query_one(
                    "INSERT INTO journal.lessons (class_id, subject_id, teacher_id, lesson_date, slot, starts_at, ends_at, topic, homework, homework_due, updated_by)
                     VALUES ($1, $2, $3, $4, $5::smallint, time '08:30' + ($5::smallint - 1) * interval '55 minutes', time '09:15' + ($5::smallint - 1) * interval '55 minutes', $6, $7, $8, $9)
                     RETURNING id",
                    &[&l.class_id, &l.subject, &l.teacher, &l.date, &l.slot, &l.topic, &l.homework, &l.homework.as_ref().map(|_| l.date + chrono::Duration::days(1)), &l.by],
                )
                .await?;
            let lesson_id: i64 = row.get(0);
            let mut created = Created { changes: 1, lesson: Some(lesson_id), by: l.by.clone(), ..Created::default() };
            if !grades.is_empty() {
                let students: Vec<i64> = grades.iter().map(|g| g.0).collect();
                let marks: Vec<i16> = grades.iter().map(|g| g.1).collect();
                let weights: Vec<f64> = grades.iter().map(|g| g.2).collect();
                created.grades = tx
                    .query(
                        "INSERT INTO journal.grades (student_id, lesson_id, class_id, subject_id, teacher_id, kind, mark, weight, updated_by)
                         SELECT s, $2, $3, $4, $5, 'current', m, w::numeric(3,1), $6
                         FROM unnest($1::bigint[], $7::smallint[], $8::float8[]) AS x(s, m, w) RETURNING id",
                        &[&students, &lesson_id, &l.class_id, &l.subject, &l.teacher, &l.by, &marks, &weights],
                    )
                    .await?
                    .iter()
                    .map(|r| r.get(0))
                    .collect();
                created.changes += created.grades.len() as u64;
            }
            if !absences.is_empty() {
                let students: Vec<i64> = absences.iter().map(|a| a.0).collect();
                let codes: Vec<&str> = absences.iter().map(|a| a.1).collect();
                let reasons: Vec<Option<String>> = absences.iter().map(|a| a.2.clone()).collect();
                created.attendance = tx
                    .query(
                        "INSERT INTO journal.attendance (lesson_id, student_id, code, reason, teacher_id, updated_by)
                         SELECT $1, s, c, r, $5, $6 FROM unnest($2::bigint[], $3::text[], $4::text[]) AS x(s, c, r) RETURNING id",
                        &[&lesson_id, &students, &codes, &reasons, &l.teacher, &l.by],
                    )
                    .await?
                    .iter()
                    .map(|r| r.get(0))
                    .collect();
                created.changes += created.attendance.len() as u64;
            }
            tx.commit().await?;
            return Ok(created);
        }
        Plan::GradeCorrection { id, mark, by } => {
            tx.execute(
                "UPDATE journal.grades SET mark = CASE WHEN passed IS NULL THEN $2::smallint END, updated_at = now(), updated_by = $3 WHERE id = $1",
                &[id, mark, by],
            )
            .await?
        }
        Plan::GradeDeletion { id } => tx.execute("DELETE FROM journal.grades WHERE id = $1", &[id]).await?,
        Plan::AttendanceCorrection { id, by } => {
            tx.execute(
                "UPDATE journal.attendance SET code = 'У', reason = 'справка предоставлена родителями', updated_at = now(), updated_by = $2 WHERE id = $1",
                &[id, by],
            )
            .await?
        }
        Plan::AttendanceDeletion { id } => tx.execute("DELETE FROM journal.attendance WHERE id = $1", &[id]).await?,
        Plan::Homework { lesson, text } => {
            tx.execute(
                "UPDATE journal.lessons SET homework = $2, updated_at = now() WHERE id = $1",
                &[lesson, text],
            )
            .await?
        }
        Plan::Transfer { student, org, from_id, to_id, level, .. } => {
            let number = format!("{}-п/{}", 200 + org, chrono::Local::now().year());
            let programme = crate::region::calendar::programme_kind(*level);
            tx.execute(
                "INSERT INTO journal.enrolment_orders (organization_id, student_id, kind, number, order_date, effective_date, from_class_id, to_class_id, education_form, programme_kind, reason, updated_by)
                 VALUES ($1, $2, 'transfer', $3, current_date, current_date, $4, $5, 'full_time', $6, 'перевод в параллельный класс по заявлению родителей', 'op:secretary')",
                &[org, student, &number, from_id, to_id, &programme],
            )
            .await?
        }
        Plan::ConsentRevoke { consent, .. } => {
            tx.execute(
                "UPDATE journal.parental_consents SET status = 'revoked', revoked_at = now(), updated_at = now() WHERE id = $1 AND status = 'granted'",
                &[consent],
            )
            .await?
        }
        Plan::ConsentGrant { student, parent, by } => {
            tx.execute(
                "INSERT INTO journal.parental_consents (student_id, parent_id, kind, status, granted_at, document_number, document_date, updated_by)
                 VALUES ($1::bigint, $2, 'medical_data_transfer', 'granted', now(), 'С-' || (1000000 + $1::bigint % 9000000)::text, current_date, $3)",
                &[student, parent, by],
            )
            .await?
        }
        Plan::Exemption { student, code, days } => {
            tx.execute(
                "INSERT INTO journal.medical_exemptions (student_id, starts_on, ends_on, document_number, diagnosis_group, updated_by)
                 VALUES ($1::bigint, current_date, current_date + $2::int, 'ЕМИАС-' || $1::bigint::text || '-' || extract(epoch FROM now())::bigint::text, $3, 'emias:gateway')",
                &[student, &(*days as i32), code],
            )
            .await?
        }
        Plan::StudentEdit { student } => {
            tx.execute(
                "UPDATE journal.students SET movement_first_member = NOT movement_first_member, updated_at = now(), updated_by = 'op:secretary' WHERE id = $1",
                &[student],
            )
            .await?
        }
        Plan::ContactEdit {
            organization,
            phone,
        } => {
            tx.execute(
                "UPDATE journal.organizations SET phone = $2, updated_at = now(), updated_by = 'op:region-admin' WHERE id = $1",
                &[organization, phone],
            )
            .await?
                + tx.execute(
                    "UPDATE journal.organization_contacts SET value_type = $2, updated_at = now(), updated_by = 'op:region-admin' WHERE organization_id = $1 AND type_contact = 1",
                    &[organization, phone],
                )
                .await?
        }
    };
    tx.commit().await?;
    Ok(Created {
        changes: n,
        ..Created::default()
    })
}

/// A surname of the region in one of the forms teachers write it in
/// (Иванов, Иванову, Ивановым; Иванова, Ивановой).
fn mention(surnames: &[String], rng: &mut Rng) -> Option<String> {
    let s = surnames.get(rng.below(surnames.len().max(1) as u64) as usize)?;
    let form = rng.below(3);
    Some(match s.strip_suffix('а') {
        Some(stem) if form > 0 => format!("{stem}ой"),
        _ => match form {
            1 => format!("{s}у"),
            2 => format!("{s}ым"),
            _ => s.clone(),
        },
    })
}

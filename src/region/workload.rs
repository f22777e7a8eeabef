//! The live workload: what a school region does to its journal during a
//! school day, at a configured rate of row changes per second.
//!
//! Each operation is one transaction, as the journal's UI would commit it:
//! - a teacher enters a lesson: the lesson (topic, homework), then its grades
//!   and attendance marks together;
//! - corrections (a mark changed, an absence excused) and deletions;
//! - homework edits; a student's details edited;
//! - enrolment orders moving a student between parallel classes;
//! - parents granting and revoking consent to medical-data transfer;
//! - ЕМИАС exemptions arriving;
//! - optionally, at the start, a September mass enrolment: one transaction
//!   admitting thousands of first-graders (students and orders).
//!
//! The rate limiter paces *changes* (rows inserted, updated or deleted), not
//! transactions, so a big lesson entry costs more budget than a correction.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chrono::{Datelike, NaiveDate};
use tokio_postgres::Client;

use super::names;
use super::rng::Rng;
use crate::config::WorkloadConfig;
use crate::identifiers;
use crate::pg::{self, PgError};

#[derive(Debug, thiserror::Error)]
pub enum WorkloadError {
    #[error(transparent)]
    Pg(#[from] PgError),
    #[error("the journal has no classes in its latest academic year\nhint: run `vitrina generate` first")]
    EmptyJournal,
    #[error("workload session failed: {0}")]
    Task(String),
    #[error("too many failed transactions ({0}); last error: {1}")]
    TooManyErrors(u64, String),
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct WorkloadReport {
    pub target_changes_per_second: u32,
    pub seconds: f64,
    pub transactions: u64,
    pub changes: u64,
    pub changes_per_second: f64,
    pub mass_enrolment_changes: u64,
    pub failed_transactions: u64,
    pub by_operation: BTreeMap<String, u64>,
}

impl fmt::Display for WorkloadReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "workload: {} changes in {} transactions, {:.1} s in all; steady rate {:.0} changes/s (target {}/s); {} failed",
            self.changes,
            self.transactions,
            self.seconds,
            self.changes_per_second,
            self.target_changes_per_second,
            self.failed_transactions
        )?;
        if self.mass_enrolment_changes > 0 {
            writeln!(
                f,
                "  mass enrolment: {} changes in one transaction",
                self.mass_enrolment_changes
            )?;
        }
        for (op, n) in &self.by_operation {
            writeln!(f, "  {op:<22} {n:>8} transactions")?;
        }
        Ok(())
    }
}

#[derive(Clone)]
struct ClassInfo {
    id: i64,
    organization_id: i64,
    level: i16,
    /// (subject id, teacher id, teacher esia)
    subjects: Vec<(i64, i64, String)>,
    students: Vec<i64>,
    slot: i16,
}

struct State {
    today: NaiveDate,
    classes: Vec<ClassInfo>,
    student_class: HashMap<i64, usize>,
    recent_lessons: Vec<i64>,
    recent_grades: Vec<(i64, String)>,
    recent_attendance: Vec<(i64, String)>,
    /// Students whose medical consent is active (consent id), and those without one.
    consent_active: Vec<(i64, i64)>,
    consent_none: Vec<i64>,
    first_parent: HashMap<i64, (i64, String)>,
}

fn push_bounded<T>(v: &mut Vec<T>, x: T) {
    if v.len() >= 5000 {
        v.swap_remove(0);
    }
    v.push(x);
}

/// Paces changes: `acquire(n)` returns when `n` more changes fit the rate.
struct Pacer {
    next: Mutex<Instant>,
    per_change: Duration,
}

impl Pacer {
    async fn acquire(&self, n: u64) {
        let at = {
            let mut next = self.next.lock().unwrap();
            // Sessions that fell behind may catch up, but at most one
            // second's worth: the rate is a rate, not a quota.
            let floor = Instant::now()
                .checked_sub(Duration::from_secs(1))
                .unwrap_or_else(Instant::now);
            if *next < floor {
                *next = floor;
            }
            let at = *next;
            *next += self.per_change * n as u32;
            at
        };
        tokio::time::sleep_until(at.into()).await;
    }
}

async fn load_state(client: &Client) -> Result<State, WorkloadError> {
    let year: Option<i16> = client
        .query_one("SELECT max(academic_year) FROM journal.classes", &[])
        .await
        .map_err(PgError::query("reading classes"))?
        .get(0);
    let year = year.ok_or(WorkloadError::EmptyJournal)?;
    let rows = client
        .query(
            "SELECT c.id, c.organization_id, c.level, tc.subject_id, tc.teacher_id, t.esia_id
             FROM journal.classes c
             JOIN journal.teacher_classes tc ON tc.class_id = c.id
             JOIN journal.teachers t ON t.id = tc.teacher_id
             WHERE c.academic_year = $1 ORDER BY c.id, tc.subject_id",
            &[&year],
        )
        .await
        .map_err(PgError::query("reading the current classes"))?;
    let mut classes: Vec<ClassInfo> = Vec::new();
    let mut class_pos: HashMap<i64, usize> = HashMap::new();
    for r in rows {
        let id: i64 = r.get(0);
        let pos = *class_pos.entry(id).or_insert_with(|| {
            classes.push(ClassInfo {
                id,
                organization_id: r.get(1),
                level: r.get(2),
                subjects: Vec::new(),
                students: Vec::new(),
                slot: 0,
            });
            classes.len() - 1
        });
        classes[pos].subjects.push((r.get(3), r.get(4), r.get(5)));
    }
    if classes.is_empty() {
        return Err(WorkloadError::EmptyJournal);
    }
    // Each student's class: the latest order placing them in a current class,
    // unless a later order took them out.
    let rows = client
        .query(
            "SELECT DISTINCT ON (student_id) student_id, kind, to_class_id
             FROM journal.enrolment_orders
             ORDER BY student_id, effective_date DESC, id DESC",
            &[],
        )
        .await
        .map_err(PgError::query("reading enrolment orders"))?;
    let mut student_class = HashMap::new();
    for r in rows {
        let kind: &str = r.get(1);
        let to: Option<i64> = r.get(2);
        if let (true, Some(to)) = (matches!(kind, "admission" | "transfer" | "enrolment"), to) {
            if let Some(&pos) = class_pos.get(&to) {
                classes[pos].students.push(r.get(0));
                student_class.insert(r.get::<_, i64>(0), pos);
            }
        }
    }
    let consents = client
        .query(
            "SELECT DISTINCT ON (student_id) student_id, id, status FROM journal.parental_consents
             WHERE kind = 'medical_data_transfer' ORDER BY student_id, id DESC",
            &[],
        )
        .await
        .map_err(PgError::query("reading consents"))?;
    let mut consent_active = Vec::new();
    let mut has_consent_row = std::collections::HashSet::new();
    for r in consents {
        let s: i64 = r.get(0);
        has_consent_row.insert(s);
        if r.get::<_, &str>(2) == "granted" {
            consent_active.push((s, r.get(1)));
        }
    }
    let parents = client
        .query(
            "SELECT DISTINCT ON (sp.student_id) sp.student_id, sp.parent_id, coalesce(p.esia_id, 'op:unknown')
             FROM journal.student_parents sp JOIN journal.parents p ON p.id = sp.parent_id
             ORDER BY sp.student_id, sp.id",
            &[],
        )
        .await
        .map_err(PgError::query("reading parents"))?;
    let first_parent: HashMap<i64, (i64, String)> = parents
        .into_iter()
        .map(|r| (r.get(0), (r.get(1), r.get(2))))
        .collect();
    let consent_none = student_class
        .keys()
        .copied()
        .filter(|s| !has_consent_row.contains(s) && first_parent.contains_key(s))
        .collect();
    let recent_grades = client
        .query(
            "SELECT g.id, t.esia_id FROM journal.grades g JOIN journal.teachers t ON t.id = g.teacher_id
             ORDER BY g.id DESC LIMIT 2000",
            &[],
        )
        .await
        .map_err(PgError::query("reading recent grades"))?
        .into_iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    let recent_attendance = client
        .query(
            "SELECT a.id, t.esia_id FROM journal.attendance a JOIN journal.teachers t ON t.id = a.teacher_id
             ORDER BY a.id DESC LIMIT 2000",
            &[],
        )
        .await
        .map_err(PgError::query("reading recent attendance"))?
        .into_iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    Ok(State {
        today: chrono::Local::now().date_naive(),
        classes,
        student_class,
        recent_lessons: Vec::new(),
        recent_grades,
        recent_attendance,
        consent_active,
        consent_none,
        first_parent,
    })
}

/// Runs the workload described by `cfg` against the journal at `pg_cfg`.
pub async fn run(
    pg_cfg: &tokio_postgres::Config,
    cfg: &WorkloadConfig,
    progress: bool,
) -> Result<WorkloadReport, WorkloadError> {
    let setup = pg::connect(pg_cfg).await?;
    let state = Arc::new(Mutex::new(load_state(&setup).await?));
    let mut mass_changes = 0;
    let started = Instant::now();
    if cfg.mass_enrolment > 0 {
        mass_changes = mass_enrolment(&setup, &state, cfg.mass_enrolment, cfg.seed).await?;
    }
    let steady_start = Instant::now();
    let pacer = Arc::new(Pacer {
        next: Mutex::new(Instant::now()),
        per_change: Duration::from_secs_f64(1.0 / cfg.rate as f64),
    });
    let deadline = Instant::now() + Duration::from_secs(cfg.duration_s);
    let changes = Arc::new(AtomicU64::new(0));
    let bar = crate::progress::bar(
        cfg.duration_s,
        "{spinner} workload [{bar:30}] {pos}/{len} s  {msg}",
        progress,
    );
    let mut tasks = Vec::new();
    for w in 0..cfg.sessions {
        let (state, pacer, changes) = (state.clone(), pacer.clone(), changes.clone());
        let pg_cfg = pg_cfg.clone();
        let seed = cfg.seed;
        tasks.push(tokio::spawn(async move {
            let mut client = pg::connect(&pg_cfg).await?;
            let mut rng = Rng::derive(seed, &[3, w as u64]);
            let mut by_op: BTreeMap<String, u64> = BTreeMap::new();
            let (mut txs, mut failed) = (0u64, 0u64);
            while Instant::now() < deadline {
                let op = pick_op(&mut rng);
                let plan = plan(op, &state, &mut rng);
                let Some(plan) = plan else { continue };
                pacer.acquire(plan.changes()).await;
                if Instant::now() >= deadline {
                    break;
                }
                match execute(&mut client, &plan).await {
                    Ok(created) => {
                        changes.fetch_add(created.changes, Ordering::Relaxed);
                        txs += 1;
                        *by_op.entry(op.to_string()).or_default() += 1;
                        remember(&state, created);
                    }
                    Err(e) => {
                        failed += 1;
                        let text = pg::describe_error(&e);
                        tracing::warn!(operation = op, error = %text, "workload transaction failed");
                        if failed > 100 {
                            return Err(WorkloadError::TooManyErrors(failed, text));
                        }
                    }
                }
            }
            Ok::<_, WorkloadError>((txs, failed, by_op))
        }));
    }
    let ticker = {
        let (bar, changes) = (bar.clone(), changes.clone());
        tokio::spawn(async move {
            let t0 = Instant::now();
            loop {
                tokio::time::sleep(Duration::from_millis(500)).await;
                let s = t0.elapsed().as_secs_f64();
                bar.set_position(s as u64);
                bar.set_message(format!(
                    "{:.0} changes/s",
                    changes.load(Ordering::Relaxed) as f64 / s
                ));
            }
        })
    };
    let mut report = WorkloadReport {
        target_changes_per_second: cfg.rate,
        seconds: 0.0,
        transactions: 0,
        changes: 0,
        changes_per_second: 0.0,
        mass_enrolment_changes: mass_changes,
        failed_transactions: 0,
        by_operation: BTreeMap::new(),
    };
    for t in tasks {
        let (txs, failed, by_op) = t.await.map_err(|e| WorkloadError::Task(e.to_string()))??;
        report.transactions += txs;
        report.failed_transactions += failed;
        for (k, v) in by_op {
            *report.by_operation.entry(k).or_default() += v;
        }
    }
    ticker.abort();
    bar.finish_and_clear();
    report.seconds = started.elapsed().as_secs_f64();
    // The steady rate leaves the one-off mass enrolment out.
    report.changes = changes.load(Ordering::Relaxed);
    report.changes_per_second = report.changes as f64 / steady_start.elapsed().as_secs_f64();
    Ok(report)
}

const OPS: &[(&str, u32)] = &[
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
];

fn pick_op(rng: &mut Rng) -> &'static str {
    let total: u32 = OPS.iter().map(|(_, w)| w).sum();
    let mut x = rng.below(total as u64) as u32;
    for (op, w) in OPS {
        if x < *w {
            return op;
        }
        x -= w;
    }
    OPS[0].0
}

/// One transaction's statements, decided before it runs.
enum Plan {
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
}

struct LessonRow {
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
    fn changes(&self) -> u64 {
        match self {
            Plan::Lesson {
                grades, absences, ..
            } => 1 + grades.len() as u64 + absences.len() as u64,
            _ => 1,
        }
    }
}

fn plan(op: &str, state: &Mutex<State>, rng: &mut Rng) -> Option<Plan> {
    let mut st = state.lock().unwrap();
    match op {
        "lesson_entry" => {
            let ci = rng.below(st.classes.len() as u64) as usize;
            let today = st.today;
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
                        .then(|| format!("§{topic_no}, упр. {}", rng.range(1, 400))),
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
            Some(Plan::Homework {
                lesson,
                text: format!(
                    "повторить §{}, задачи {}–{}",
                    rng.range(1, 40),
                    rng.range(1, 20),
                    rng.range(21, 40)
                ),
            })
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
        _ => None,
    }
}

/// What a committed transaction created, for later corrections.
#[derive(Default)]
struct Created {
    changes: u64,
    lesson: Option<i64>,
    grades: Vec<i64>,
    attendance: Vec<i64>,
    by: String,
}

fn remember(state: &Mutex<State>, created: Created) {
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

async fn execute(client: &mut Client, plan: &Plan) -> Result<Created, tokio_postgres::Error> {
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
            let programme = super::calendar::programme_kind(*level);
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
    };
    tx.commit().await?;
    Ok(Created {
        changes: n,
        ..Created::default()
    })
}

/// September mass enrolment: `n` new first-graders and their admission
/// orders, spread over the schools, in one transaction.
async fn mass_enrolment(
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

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

use chrono::NaiveDate;
use tokio_postgres::Client;

use super::rng::Rng;
use crate::config::WorkloadConfig;
use crate::pg::{self, PgError};

mod enrolment;
mod plan;
use enrolment::*;
use plan::*;

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
            writeln!(f, "  {op:<25} {n:>8} transactions")?;
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
    /// Surnames of the region's students: teachers write them into free
    /// text, which capture must scrub.
    surnames: Vec<String>,
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
    let surnames = client
        .query(
            "SELECT DISTINCT last_name FROM journal.students ORDER BY last_name LIMIT 500",
            &[],
        )
        .await
        .map_err(PgError::query("reading surnames"))?
        .into_iter()
        .map(|r| r.get(0))
        .collect();
    Ok(State {
        surnames,
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
        let (seed, consent_share) = (cfg.seed, cfg.consent_share);
        tasks.push(tokio::spawn(async move {
            let mut client = pg::connect(&pg_cfg).await?;
            let mut rng = Rng::derive(seed, &[3, w as u64]);
            let mut by_op: BTreeMap<String, u64> = BTreeMap::new();
            let (mut txs, mut failed) = (0u64, 0u64);
            while Instant::now() < deadline {
                let op = pick_op(&mut rng, consent_share);
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

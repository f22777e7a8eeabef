//! Bulk load of a synthetic region through COPY: the skeleton first (in one
//! transaction), then school-year chunks on parallel connections, each chunk
//! in its own transaction so foreign keys are checked as rows arrive.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::SinkExt;
use tokio_postgres::Client;

use super::chunk::{self, Chunk};
use super::copy::CopyBuf;
use super::skeleton::{self, Skeleton};
use super::RegionSpec;
use crate::pg::{self, PgError};

#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error(transparent)]
    Pg(#[from] PgError),
    #[error("the journal database already holds a region ({students} students)\nhint: pass --replace to truncate the journal tables and load anew")]
    NotEmpty { students: i64 },
    #[error("the journal schema is missing: {0}\nhint: run `vitrina migrate` first")]
    NoSchema(String),
    #[error("generator task failed: {0}")]
    Task(String),
}

/// Tables in load order (parents first); also the truncate list.
pub const TABLES: &[&str] = &[
    "organizations",
    "subjects",
    "teachers",
    "classes",
    "teacher_classes",
    "students",
    "parents",
    "student_parents",
    "lessons",
    "grades",
    "attendance",
    "enrolment_orders",
    "parental_consents",
    "medical_exemptions",
];

#[derive(Debug, Clone, serde::Serialize)]
pub struct LoadReport {
    pub rows: BTreeMap<String, u64>,
    pub total_rows: u64,
    pub seconds: f64,
    pub rows_per_second: f64,
    pub database_bytes: i64,
    pub invalid_snils: usize,
    pub invalid_documents: usize,
    pub invalid_organization_ids: usize,
}

impl std::fmt::Display for LoadReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(
            f,
            "loaded {} rows in {:.1} s: {:.0} rows/s; database size {:.1} MiB",
            self.total_rows,
            self.seconds,
            self.rows_per_second,
            self.database_bytes as f64 / 1048576.0
        )?;
        for (t, n) in &self.rows {
            writeln!(f, "  {t:<20} {n:>12}")?;
        }
        writeln!(
            f,
            "deliberately invalid: {} SNILS, {} student documents, {} organizations' INN/OGRN",
            self.invalid_snils, self.invalid_documents, self.invalid_organization_ids
        )
    }
}

async fn copy(client: &tokio_postgres::Transaction<'_>, buf: CopyBuf) -> Result<u64, PgError> {
    if buf.rows == 0 {
        return Ok(0);
    }
    let what = format!("COPY into journal.{}", buf.table);
    let sink = client
        .copy_in(&buf.statement())
        .await
        .map_err(PgError::query(what.clone()))?;
    futures::pin_mut!(sink);
    let data = Bytes::from(buf.data);
    let mut off = 0;
    while off < data.len() {
        let end = (off + (1 << 20)).min(data.len());
        sink.send(data.slice(off..end))
            .await
            .map_err(PgError::query(what.clone()))?;
        off = end;
    }
    sink.finish().await.map_err(PgError::query(what))?;
    Ok(buf.rows)
}

/// Loads the region described by `spec` into the journal at `pg_cfg`.
pub async fn load(
    pg_cfg: &tokio_postgres::Config,
    spec: &RegionSpec,
    connections: usize,
    replace: bool,
    progress: bool,
) -> Result<LoadReport, LoadError> {
    let started = Instant::now();
    let mut client = pg::connect(pg_cfg).await?;
    let students: i64 = match client
        .query_one("SELECT count(*) FROM journal.students", &[])
        .await
    {
        Ok(r) => r.get(0),
        Err(e) => return Err(LoadError::NoSchema(e.to_string())),
    };
    if students > 0 && !replace {
        return Err(LoadError::NotEmpty { students });
    }
    if replace {
        let list: Vec<String> = TABLES.iter().map(|t| format!("journal.{t}")).collect();
        client
            .batch_execute(&format!(
                "TRUNCATE {} RESTART IDENTITY CASCADE",
                list.join(", ")
            ))
            .await
            .map_err(PgError::query("truncating the journal"))?;
    }

    let spec2 = spec.clone();
    let sk = Arc::new(
        tokio::task::spawn_blocking(move || skeleton::build(&spec2))
            .await
            .map_err(|e| LoadError::Task(e.to_string()))?,
    );
    let mut rows: BTreeMap<String, u64> = BTreeMap::new();
    {
        let tx = client
            .transaction()
            .await
            .map_err(PgError::query("starting the skeleton load"))?;
        for buf in skeleton_bufs(&sk) {
            let table = buf.table.to_string();
            let n = copy(&tx, buf).await?;
            *rows.entry(table).or_default() += n;
        }
        tx.commit()
            .await
            .map_err(PgError::query("committing the skeleton"))?;
    }

    let jobs: Vec<(usize, usize)> = (0..sk.organizations.len())
        .flat_map(|s| (0..sk.years).map(move |y| (s, y)))
        .collect();
    let bar = crate::progress::bar(
        jobs.len() as u64,
        "{spinner} loading [{bar:30}] {pos}/{len} school-years  {msg}  ETA {eta}",
        progress,
    );
    bar.enable_steady_tick(Duration::from_millis(200));
    let next = Arc::new(AtomicUsize::new(0));
    let loaded = Arc::new(AtomicU64::new(rows.values().sum()));
    let jobs = Arc::new(jobs);
    let mut workers = Vec::new();
    for _ in 0..connections.max(1) {
        let (sk, next, jobs, loaded, bar) = (
            sk.clone(),
            next.clone(),
            jobs.clone(),
            loaded.clone(),
            bar.clone(),
        );
        let cfg = pg_cfg.clone();
        workers.push(tokio::spawn(async move {
            let mut client = pg::connect(&cfg).await?;
            let mut counts: BTreeMap<String, u64> = BTreeMap::new();
            // Generate the next chunk while the current one is copied.
            let gen = |i: usize| {
                let (sk, jobs) = (sk.clone(), jobs.clone());
                tokio::task::spawn_blocking(move || {
                    let (s, y) = jobs[i];
                    chunk::generate(&sk, s, y)
                })
            };
            let mut pending = {
                let i = next.fetch_add(1, Ordering::SeqCst);
                (i < jobs.len()).then(|| gen(i))
            };
            while let Some(task) = pending.take() {
                let ch = task.await.map_err(|e| LoadError::Task(e.to_string()))?;
                let i = next.fetch_add(1, Ordering::SeqCst);
                pending = (i < jobs.len()).then(|| gen(i));
                let n = load_chunk(&mut client, ch, &mut counts).await?;
                let total = loaded.fetch_add(n, Ordering::SeqCst) + n;
                let secs = started.elapsed().as_secs_f64();
                bar.set_message(format!(
                    "{:.1}M rows, {:.0} rows/s",
                    total as f64 / 1e6,
                    total as f64 / secs
                ));
                bar.inc(1);
            }
            Ok::<_, LoadError>(counts)
        }));
    }
    for w in workers {
        let counts = w.await.map_err(|e| LoadError::Task(e.to_string()))??;
        for (t, n) in counts {
            *rows.entry(t).or_default() += n;
        }
    }
    bar.finish_and_clear();

    // Identity sequences continue after the loaded ids (the live workload
    // inserts without ids).
    let mut fix = String::new();
    for t in TABLES {
        if *t == "teacher_classes" {
            continue;
        }
        fix.push_str(&format!(
            "SELECT setval(pg_get_serial_sequence('journal.{t}', 'id'), coalesce((SELECT max(id) FROM journal.{t}), 0) + 1, false);\n"
        ));
    }
    client
        .batch_execute(&fix)
        .await
        .map_err(PgError::query("advancing identity sequences"))?;
    client
        .batch_execute("ANALYZE")
        .await
        .map_err(PgError::query("ANALYZE"))?;
    let seconds = started.elapsed().as_secs_f64();
    let database_bytes: i64 = client
        .query_one("SELECT pg_database_size(current_database())", &[])
        .await
        .map_err(PgError::query("measuring the database"))?
        .get(0);
    let total_rows = rows.values().sum();
    Ok(LoadReport {
        total_rows,
        rows_per_second: total_rows as f64 / seconds,
        seconds,
        database_bytes,
        rows,
        invalid_snils: sk
            .students
            .iter()
            .map(|s| &s.person)
            .chain(sk.parents.iter().map(|p| &p.person))
            .filter(|p| p.snils_invalid)
            .count(),
        invalid_documents: sk
            .students
            .iter()
            .filter(|s| s.birth_certificate_invalid || s.person.passport_invalid)
            .count(),
        invalid_organization_ids: sk.organizations.iter().filter(|o| o.invalid_ids).count(),
    })
}

async fn load_chunk(
    client: &mut Client,
    ch: Chunk,
    counts: &mut BTreeMap<String, u64>,
) -> Result<u64, LoadError> {
    let tx = client
        .transaction()
        .await
        .map_err(PgError::query("starting a chunk"))?;
    let mut n = 0;
    for buf in [ch.lessons, ch.grades, ch.attendance, ch.exemptions] {
        let table = buf.table.to_string();
        let k = copy(&tx, buf).await?;
        *counts.entry(table).or_default() += k;
        n += k;
    }
    tx.commit()
        .await
        .map_err(PgError::query("committing a chunk"))?;
    Ok(n)
}

/// The skeleton's rows, table by table, in load order.
pub fn skeleton_bufs(sk: &Skeleton) -> Vec<CopyBuf> {
    use super::calendar::{programme_kind, SUBJECTS};
    let created = sk.spec.as_of.and_hms_opt(0, 0, 0).unwrap()
        - chrono::Duration::days(365 * (sk.years as i64));
    let admin = "op:region-admin";

    let mut orgs = CopyBuf::new("organizations", "id, regional_id, full_name, short_name, kind, inn, ogrn, kpp, okopf, okfs, okogu, okato, oktmo, licence_number, licence_issued_on, accreditation_number, head_name, head_position, phone, email, website, legal_address, actual_address, created_at, updated_at, updated_by");
    for o in &sk.organizations {
        orgs.val(o.id)
            .text(&o.regional_id)
            .text(&o.full_name)
            .text(&o.short_name)
            .text(o.kind)
            .text(&o.inn)
            .text(&o.ogrn)
            .text(&o.kpp)
            .text("75403")
            .text("14")
            .text("4210007")
            .text(&o.okato)
            .text(&o.oktmo)
            .text(&o.licence_number)
            .date(o.licence_issued_on)
            .text(&o.accreditation_number)
            .text(&o.head_name)
            .text("Директор")
            .text(&o.phone)
            .text(&o.email)
            .text(&o.website)
            .text(&o.address)
            .text(&o.address)
            .ts(created)
            .ts(created)
            .text(admin);
        orgs.end_row();
    }

    let mut subjects = CopyBuf::new("subjects", "id, code, name, pass_fail");
    for (i, s) in SUBJECTS.iter().enumerate() {
        subjects
            .val(i + 1)
            .text(s.code)
            .text(s.name)
            .val(s.pass_fail);
        subjects.end_row();
    }

    let mut teachers = CopyBuf::new("teachers", "id, organization_id, esia_id, snils, last_name, first_name, middle_name, sex, birth_date, citizenship, regional_account_id, position, qualification_category, education, speciality, restrictions, email, hired_on, employment_order_number, created_at, updated_at, updated_by");
    for t in &sk.teachers {
        teachers
            .val(t.id)
            .val(t.organization_id)
            .text(&t.esia_id)
            .opt_text(t.snils.as_deref())
            .text(&t.last_name)
            .text(&t.first_name)
            .text(&t.middle_name)
            .text(t.sex)
            .date(t.birth_date)
            .text("RUS")
            .text(&t.regional_account_id)
            .text(t.position)
            .opt_text(t.qualification)
            .text("высшее педагогическое")
            .text(&t.speciality)
            .null()
            .text(&format!(
                "{}@edu.tver.example",
                t.regional_account_id.to_lowercase()
            ))
            .date(t.hired_on)
            .text(&t.order_number)
            .ts(created)
            .ts(created)
            .text(admin);
        teachers.end_row();
    }

    let mut classes = CopyBuf::new("classes", "id, organization_id, academic_year, level, letter, homeroom_teacher_id, programme_kind, created_at, updated_at, updated_by");
    let mut teacher_classes = CopyBuf::new("teacher_classes", "teacher_id, class_id, subject_id");
    for c in &sk.classes {
        let made = super::calendar::ymd(c.year, 8, 28)
            .and_hms_opt(12, 0, 0)
            .unwrap();
        classes
            .val(c.id)
            .val(c.organization_id)
            .val(c.year)
            .val(c.level)
            .text(super::skeleton::letter(c.letter))
            .val(c.homeroom_teacher_id)
            .text(programme_kind(c.level))
            .ts(made)
            .ts(made)
            .text(&format!(
                "op:{}-secretary",
                sk.organizations[c.school].regional_id
            ));
        classes.end_row();
        for (subject, teacher) in &c.teacher_for {
            teacher_classes.val(teacher).val(c.id).val(subject + 1);
            teacher_classes.end_row();
        }
    }

    let mut students = CopyBuf::new("students", "id, esia_id, snils, last_name, first_name, middle_name, sex, birth_date, birth_place, citizenship, identity_document_kind, passport_series, passport_number, passport_issued_on, passport_issuer, birth_certificate_series, birth_certificate_number, birth_certificate_issued_on, civil_record_number, civil_record_date, regional_account_id, movement_first_member, health_group, address, created_at, updated_at, updated_by");
    for s in &sk.students {
        let p = &s.person;
        let (bs, bn, bi, rec) = &s.birth_certificate;
        students
            .val(s.id)
            .opt_text(p.esia_id.as_deref())
            .opt_text(p.snils.as_deref())
            .text(&p.last_name)
            .text(&p.first_name)
            .text(&p.middle_name)
            .text(p.sex)
            .date(p.birth_date)
            .text(&s.birth_place)
            .text("RUS")
            .text(if p.passport.is_some() {
                "passport"
            } else {
                "birth_certificate"
            })
            .opt_text(p.passport.as_ref().map(|x| x.0.as_str()))
            .opt_text(p.passport.as_ref().map(|x| x.1.as_str()))
            .opt_date(p.passport.as_ref().map(|x| x.2))
            .opt_text(
                p.passport
                    .as_ref()
                    .map(|_| "УМВД России по Тверской области"),
            )
            .text(bs)
            .text(bn)
            .date(*bi)
            .text(rec)
            .date(*bi)
            .text(&p.regional_account_id)
            .val(s.movement_first)
            .val(s.health_group)
            .text(&p.address)
            .ts(created)
            .ts(created)
            .text(admin);
        students.end_row();
    }

    let mut parents = CopyBuf::new("parents", "id, esia_id, snils, last_name, first_name, middle_name, sex, birth_date, citizenship, passport_series, passport_number, email, phone, regional_account_id, address, created_at, updated_at, updated_by");
    for pr in &sk.parents {
        let p = &pr.person;
        parents
            .val(pr.id)
            .opt_text(p.esia_id.as_deref())
            .opt_text(p.snils.as_deref())
            .text(&p.last_name)
            .text(&p.first_name)
            .text(&p.middle_name)
            .text(p.sex)
            .date(p.birth_date)
            .text("RUS")
            .opt_text(p.passport.as_ref().map(|x| x.0.as_str()))
            .opt_text(p.passport.as_ref().map(|x| x.1.as_str()))
            .text(&pr.email)
            .text(&pr.phone)
            .text(&p.regional_account_id)
            .text(&p.address)
            .ts(created)
            .ts(created)
            .text(admin);
        parents.end_row();
    }

    let mut links = CopyBuf::new("student_parents", "id, student_id, parent_id, relation, authority_document_kind, authority_document_number, authority_document_date, guardianship_body, created_at, updated_at, updated_by");
    let mut link_id = 0;
    for s in &sk.students {
        for (parent, relation) in &s.parent_ids {
            link_id += 1;
            let guardian = *relation == "guardian";
            links
                .val(link_id)
                .val(s.id)
                .val(parent)
                .text(relation)
                .text(if guardian {
                    "guardianship_decision"
                } else {
                    "birth_certificate"
                })
                .text(&if guardian {
                    format!("{}-р", 100 + link_id % 900)
                } else {
                    format!("{}{}", s.birth_certificate.0, s.birth_certificate.1)
                })
                .date(s.birth_certificate.2)
                .opt_text(guardian.then_some("Отдел опеки и попечительства администрации г. Твери"))
                .ts(created)
                .ts(created)
                .text(admin);
            links.end_row();
        }
    }

    let mut orders = CopyBuf::new("enrolment_orders", "id, organization_id, student_id, kind, number, order_date, effective_date, from_class_id, to_class_id, from_organization_id, to_organization_id, education_form, programme_kind, reason, created_at, updated_at, updated_by");
    for o in &sk.orders {
        let at = o.order_date.and_hms_opt(11, 0, 0).unwrap();
        orders
            .val(o.id)
            .val(o.organization_id)
            .val(o.student_id)
            .text(o.kind)
            .text(&o.number)
            .date(o.order_date)
            .date(o.effective_date)
            .opt_val(o.from_class_id)
            .opt_val(o.to_class_id)
            .opt_val((o.kind == "expulsion").then_some(o.organization_id))
            .opt_val(o.to_organization_id)
            .text(o.education_form)
            .text(o.programme_kind)
            .opt_text(o.reason)
            .ts(at)
            .ts(at)
            .text(&o.updated_by);
        orders.end_row();
    }

    let mut consents = CopyBuf::new("parental_consents", "id, student_id, parent_id, kind, status, granted_at, revoked_at, document_number, document_date, created_at, updated_at, updated_by");
    for c in &sk.consents {
        let last = c.revoked_at.unwrap_or(c.granted_at);
        consents
            .val(c.id)
            .val(c.student_id)
            .val(c.parent_id)
            .text(c.kind)
            .text(if c.revoked_at.is_some() {
                "revoked"
            } else {
                "granted"
            })
            .ts(c.granted_at)
            .opt_val(c.revoked_at.map(|r| r.format("%Y-%m-%d %H:%M:%S+03")))
            .text(&c.document_number)
            .date(c.granted_at.date())
            .ts(c.granted_at)
            .ts(last)
            .text(&c.updated_by);
        consents.end_row();
    }

    vec![
        orgs,
        subjects,
        teachers,
        classes,
        teacher_classes,
        students,
        parents,
        links,
        orders,
        consents,
    ]
}

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
use super::skeleton;
pub use super::skeleton::rows::skeleton_bufs;
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
    "organization_addresses",
    "organization_contacts",
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

//! `vitrina demo` and the development commands it strings together: the
//! local stack up, the reference journal migrated, a synthetic region
//! generated (if the journal is empty), capture and the projector in this
//! process, the live workload through to the showcase, then freshness and
//! quality. Every step prints what it did and how long it took.
//!
//! Invariant: these commands act only on a journal the development-tool
//! guard allows ([`crate::devtools`]); the caller checks before calling.

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

use crate::capture::{Capture, CaptureError};
use crate::config::Config;
use crate::connections::{Connections, PgEndpoint};
use crate::projector::{Projector, ProjectorError};
use crate::region::{load, workload, RegionSpec};
use crate::{journal, pg, showcase};

#[derive(Debug, thiserror::Error)]
pub enum DemoError {
    #[error(transparent)]
    Pg(#[from] pg::PgError),
    #[error(transparent)]
    Migrate(#[from] journal::MigrateError),
    #[error(transparent)]
    Load(#[from] load::LoadError),
    #[error(transparent)]
    Workload(#[from] workload::WorkloadError),
    #[error(transparent)]
    Capture(#[from] CaptureError),
    #[error(transparent)]
    Projector(#[from] ProjectorError),
    #[error(transparent)]
    Connections(#[from] crate::connections::ConnectionError),
    #[error("{0}")]
    Failed(String),
}

impl From<tokio_postgres::Error> for DemoError {
    fn from(e: tokio_postgres::Error) -> Self {
        DemoError::Failed(pg::describe_error(&e))
    }
}

/// Creates the journal database (local stack) and applies the reference
/// journal migrations; returns the versions applied.
pub async fn migrate(journal: &PgEndpoint) -> Result<Vec<i32>, DemoError> {
    if journal.local {
        pg::ensure_database(
            &journal.with_database("postgres").config(),
            &journal.database,
        )
        .await?;
    }
    let mut client = pg::connect(&journal.config()).await?;
    Ok(journal::migrate(&mut client).await?)
}

/// Generates the configured region into the journal and prints the report.
pub async fn generate(
    cfg: &Config,
    journal: &PgEndpoint,
    replace: bool,
    json: bool,
    progress: bool,
) -> Result<(), DemoError> {
    let spec = RegionSpec::from_config(&cfg.region, chrono::Local::now().date_naive());
    eprintln!(
        "generating region: seed {}, {} schools × {} students, {} history years + current, as of {}",
        spec.seed, spec.schools, spec.students_per_school, spec.history_years, spec.as_of
    );
    let report = load::load(
        &journal.config(),
        &spec,
        cfg.region.load_connections as usize,
        replace,
        progress,
    )
    .await?;
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(&report).expect("report serializes")
        );
    } else {
        print!("{report}");
    }
    Ok(())
}

/// Runs the configured live workload and prints its report.
pub async fn workload(
    cfg: &Config,
    journal: &PgEndpoint,
    json: bool,
    progress: bool,
) -> Result<(), DemoError> {
    let report = workload::run(&journal.config(), &cfg.workload, progress).await?;
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(&report).expect("report serializes")
        );
    } else {
        println!("{report}");
    }
    Ok(())
}

/// Waits until the showcase says it is fresh as of `since`.
async fn fresh_after(
    showcase: &tokio_postgres::Client,
    projector: &mut tokio::task::JoinHandle<Result<(), ProjectorError>>,
    since: chrono::DateTime<chrono::Utc>,
) -> Result<(), DemoError> {
    loop {
        let r = showcase
            .query_opt(
                "SELECT fresh_as_of FROM showcase.status WHERE fresh_as_of >= $1",
                &[&since],
            )
            .await?;
        if r.is_some() {
            return Ok(());
        }
        if projector.is_finished() {
            // Its own error says what happened and what to do.
            let why = match projector.await {
                Ok(Ok(())) => "it ended without an error".to_string(),
                Ok(Err(e)) => e.to_string(),
                Err(e) => e.to_string(),
            };
            return Err(DemoError::Failed(format!("the projector stopped: {why}")));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The demo after `up` and `migrate`: generate if empty, capture and the
/// projector, the workload, freshness and quality.
pub async fn run(
    mut cfg: Config,
    conns: &Connections,
    schools: u32,
    students_per_school: u32,
    duration_s: u64,
) -> Result<(), DemoError> {
    let client = pg::connect(&conns.journal()?.config()).await?;
    let students: i64 = client
        .query_one("SELECT count(*) FROM journal.students", &[])
        .await?
        .get(0);
    if students == 0 {
        cfg.region.schools = schools;
        cfg.region.students_per_school = students_per_school;
        cfg.validate()
            .map_err(|e| DemoError::Failed(e.to_string()))?;
        generate(&cfg, conns.journal()?, false, false, false).await?;
    } else {
        println!("journal already holds {students} students; keeping them");
    }
    let kafka = conns.kafka()?;

    // Capture: initial load (first run), then streaming.
    let capture = Capture::new(&cfg, conns.journal()?, kafka);
    crate::http::serve(&cfg.capture.metrics_listen, capture.health())
        .await
        .map_err(DemoError::Failed)?;
    crate::observability::describe_capture();
    crate::observability::describe_projector();
    let progress = capture.progress();
    let cancel = CancellationToken::new();
    let cancel2 = cancel.clone();
    let capture = tokio::spawn(async move { capture.run(cancel2).await });
    println!(
        "capture: starting (metrics on http://{}/metrics)",
        cfg.capture.metrics_listen
    );
    let (capture, loaded) = until_streaming(capture, &progress).await?;

    // The projector: the event log into the showcase database.
    let sc = conns.showcase()?;
    if sc.local {
        pg::ensure_database(&sc.with_database("postgres").config(), &sc.database).await?;
    }
    let showcase_client = pg::connect(&sc.config()).await?;
    showcase::migrate(&showcase_client, showcase::SCHEMA).await?;
    let projector = Projector::new(&cfg, sc, kafka);
    let cancel3 = cancel.clone();
    let mut projector = tokio::spawn(async move { projector.run(cancel3).await });
    println!(
        "projector: projecting into database {} (schema showcase)",
        sc.database
    );
    // The ProStore upload feed: the same log in deltas for the standard showcase.
    let mut feed = crate::prostore::feed::Feed::new(&cfg, kafka.clone())
        .map_err(|e| DemoError::Failed(e.to_string()))?;
    crate::observability::describe_prostore();
    let cancel4 = cancel.clone();
    let feed = tokio::spawn(async move { feed.run(cancel4).await });
    println!(
        "prostore: feeding {}.prostore.<table> in deltas every {} ms (manifest {})",
        cfg.capture.topic_prefix,
        cfg.prostore.delta_interval_ms,
        crate::prostore::manifest_topic(&cfg.capture.topic_prefix)
    );
    let t2 = Instant::now();
    fresh_after(&showcase_client, &mut projector, chrono::Utc::now()).await?;
    println!(
        "projector: the initial load is in the showcase after {:.1} s",
        t2.elapsed().as_secs_f64()
    );

    cfg.workload.duration_s = duration_s;
    if cfg.workload.mass_enrolment == 0 {
        cfg.workload.mass_enrolment = 300;
    }
    workload(&cfg, conns.journal()?, false, false).await?;
    let workload_end = chrono::Utc::now();
    let end: String = client
        .query_one(
            "SELECT pg_logical_emit_message(true, 'vitrina.demo.end', '')::text",
            &[],
        )
        .await?
        .get(0);
    let end = crate::lsn::parse(&end).unwrap_or(0);
    let t1 = Instant::now();
    while progress.confirmed.load(Ordering::SeqCst) < end {
        if capture.is_finished() {
            return Err(DemoError::Failed(
                "capture stopped while catching up".into(),
            ));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let events = progress.events.load(Ordering::SeqCst);
    println!(
        "capture: caught up {:.2} s after the workload ended; {} events on Kafka ({} from the live workload), topics {}.<entity>.v1",
        t1.elapsed().as_secs_f64(),
        events,
        events - loaded,
        cfg.capture.topic_prefix
    );
    let t3 = Instant::now();
    fresh_after(&showcase_client, &mut projector, workload_end).await?;
    println!(
        "showcase: every change up to the workload's end visible {:.2} s after it (fresh_as_of; the SLA is 600 s)",
        t3.elapsed().as_secs_f64()
    );
    let q = showcase::quality::run(
        &showcase_client,
        showcase::SCHEMA,
        cfg.projector.pending_grace_s,
    )
    .await?;
    let pending: i64 = q.findings.iter().map(|f| f.pending).sum();
    println!(
        "quality: {} violations, {} references pending (`vitrina quality` for the report)",
        q.violations(),
        pending
    );
    // A delta cut after capture caught up holds everything it had read.
    let caught_up = chrono::Utc::now().timestamp_micros();
    report_deltas(
        &cfg,
        kafka,
        &feed,
        caught_up,
        workload_end.timestamp_micros(),
    )
    .await?;
    cancel.cancel();
    let join = |e: tokio::task::JoinError| DemoError::Failed(e.to_string());
    capture.await.map_err(join)??;
    projector.await.map_err(join)??;
    feed.await
        .map_err(join)?
        .map_err(|e| DemoError::Failed(e.to_string()))?;
    println!(
        "\njournal: {}\nshowcase: {}\nkafka: {}\nthe stack keeps running; `vitrina status` shows it, `vitrina capture` and `vitrina project` resume, `vitrina down` stops it",
        conns.journal()?.url(),
        sc.url(),
        kafka.brokers
    );
    Ok(())
}

/// Waits for capture's initial load to be published and confirmed: the
/// capture task, and how many events the load published.
async fn until_streaming(
    capture: tokio::task::JoinHandle<Result<(), crate::capture::CaptureError>>,
    progress: &crate::capture::Progress,
) -> Result<
    (
        tokio::task::JoinHandle<Result<(), crate::capture::CaptureError>>,
        u64,
    ),
    DemoError,
> {
    let t0 = Instant::now();
    while progress.confirmed.load(Ordering::SeqCst) == 0 {
        if capture.is_finished() {
            capture
                .await
                .map_err(|e| DemoError::Failed(e.to_string()))??;
            return Err(DemoError::Failed("capture stopped before streaming".into()));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let loaded = progress.events.load(Ordering::SeqCst);
    println!(
        "capture: streaming after {:.1} s ({} events of the initial load published)",
        t0.elapsed().as_secs_f64(),
        loaded
    );
    Ok((capture, loaded))
}

/// Waits (up to 120 s) for the ProStore feed to commit a delta holding
/// everything capture had published, and prints what the manifest holds.
async fn report_deltas<T>(
    cfg: &Config,
    kafka: &crate::connections::KafkaEndpoint,
    feed: &tokio::task::JoinHandle<T>,
    caught_up: i64,
    workload_end: i64,
) -> Result<(), DemoError> {
    let t4 = Instant::now();
    let mut last = None;
    while t4.elapsed() < Duration::from_secs(120) {
        if feed.is_finished() {
            break;
        }
        let (k, p) = (kafka.clone(), cfg.capture.topic_prefix.clone());
        let commits: Vec<crate::prostore::feed::Commit> =
            tokio::task::spawn_blocking(move || crate::prostore::feed::read_manifest(&k, &p))
                .await
                .map_err(|e| DemoError::Failed(e.to_string()))?
                .map_err(|e| DemoError::Failed(e.to_string()))?
                .into_iter()
                .filter_map(|m| match m {
                    crate::prostore::feed::Manifest::Commit(c) => Some(c),
                    crate::prostore::feed::Manifest::Plan(_) => None,
                })
                .collect();
        let records: usize = commits
            .iter()
            .flat_map(|c| &c.tables)
            .map(|t| t.upserts + t.deletes)
            .sum();
        if let Some(c) = commits.last() {
            last = Some((c.delta, commits.len(), records));
            // Past the workload's end, and either cut after capture caught
            // up or nothing new for two intervals since (no change left).
            let quiet = t4.elapsed() > Duration::from_millis(2 * cfg.prostore.delta_interval_ms);
            if c.committed_at_micros > caught_up || (c.committed_at_micros > workload_end && quiet)
            {
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    match last {
        Some((delta, n, records)) => println!(
            "prostore: {n} deltas committed (last: delta {delta}), {records} records (`vitrina prostore manifest`, docs/prostore.md)"
        ),
        None => println!("prostore: no delta committed yet"),
    }
    Ok(())
}

//! The `vitrina` command: orchestration only; the work lives in the library.

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use vitrina::config::Config;
use vitrina::region::{load, workload, RegionSpec};
use vitrina::stack::Stack;
use vitrina::{journal, pg};

#[derive(Parser)]
#[command(
    name = "vitrina",
    version,
    about = "CDC from regional school journals to the «Моя школа» showcase"
)]
struct Cli {
    /// Config file (TOML). Keys can be overridden with VITRINA_<SECTION>__<KEY>.
    #[arg(long, short, env = "VITRINA_CONFIG", global = true)]
    config: Option<PathBuf>,
    /// Log as JSON lines instead of text (or VITRINA_LOG_JSON=1).
    #[arg(long, global = true, env = "VITRINA_LOG_JSON", value_parser = clap::builder::BoolishValueParser::new())]
    log_json: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Start the local stack (PostgreSQL with logical replication, tansu); harmless when it runs.
    Up,
    /// Stop the local stack.
    Down,
    /// Show what runs where.
    Status {
        #[arg(long)]
        json: bool,
    },
    /// Print the effective configuration (secrets hidden).
    Config,
    /// Create the journal database if needed and apply the reference journal migrations.
    Migrate,
    /// Generate a synthetic region and bulk-load it into the journal.
    Generate {
        #[arg(long)]
        seed: Option<u64>,
        #[arg(long)]
        schools: Option<u32>,
        #[arg(long)]
        students_per_school: Option<u32>,
        #[arg(long)]
        history_years: Option<u32>,
        /// Generate "as of" this day (YYYY-MM-DD); default: region.as_of or today.
        #[arg(long)]
        as_of: Option<chrono::NaiveDate>,
        /// Truncate the journal first if it holds a region.
        #[arg(long)]
        replace: bool,
        /// Print the report as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Run the live workload: teachers and secretaries editing the journal.
    Workload {
        /// Target changes per second.
        #[arg(long)]
        rate: Option<u32>,
        /// Seconds to run.
        #[arg(long)]
        duration: Option<u64>,
        /// Students in a September mass-enrolment transaction at the start.
        #[arg(long)]
        mass_enrolment: Option<u32>,
        /// Concurrent database sessions.
        #[arg(long)]
        sessions: Option<u32>,
        #[arg(long)]
        json: bool,
    },
    /// Capture: stream the journal's changes to Kafka as depersonalized Avro events (until SIGINT/SIGTERM).
    Capture,
    /// Benchmarks that print figures against a reference measured in the same run.
    Bench {
        #[command(subcommand)]
        what: BenchWhat,
    },
    /// Project the event topics into the showcase database (until SIGINT/SIGTERM).
    Project,
    /// Run the quality checks (completeness, actuality, consistency, connectedness) over the showcase and report.
    Quality {
        /// Print the report as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Rebuild the showcase from the event log into a shadow schema while the live one serves, then swap it in.
    Replay {
        /// Rebuild from this time (RFC 3339, e.g. 2026-11-01T00:00:00Z) instead of the start of the log.
        #[arg(long)]
        from: Option<String>,
        /// Build the shadow (showcase_replay) and report, but do not swap it in.
        #[arg(long)]
        no_swap: bool,
        /// Drop an interrupted replay's shadow instead of resuming it.
        #[arg(long)]
        restart: bool,
        /// Print the report as JSON.
        #[arg(long)]
        json: bool,
    },
    /// List the event schemas (topic, Avro record, fingerprint); --write DIR writes the .avsc files.
    Schemas {
        #[arg(long)]
        write: Option<PathBuf>,
    },
    /// The demo: up, migrate, generate (if the journal is empty), capture and projector, then the live workload through to the showcase.
    Demo {
        /// Seconds of live workload.
        #[arg(long, default_value_t = 30)]
        duration: u64,
        /// Schools in the demo region (the full default region is `vitrina generate`).
        #[arg(long, default_value_t = 5)]
        schools: u32,
        #[arg(long, default_value_t = 300)]
        students_per_school: u32,
    },
}

#[derive(Subcommand)]
enum BenchWhat {
    /// Capture throughput vs pg_recvlogical on the same WAL range, and commit → ack latency at a steady rate.
    Capture {
        #[arg(long, default_value_t = 3)]
        runs: u32,
        /// Seconds of workload that write the WAL range.
        #[arg(long, default_value_t = 20)]
        seconds: u64,
        #[arg(long, default_value_t = 4000)]
        rate: u32,
        #[arg(long, default_value_t = 2000)]
        latency_rate: u32,
        #[arg(long, default_value_t = 30)]
        latency_seconds: u64,
        /// Runs of the initial load of the configured region (0 skips).
        #[arg(long, default_value_t = 3)]
        load_runs: u32,
        /// Students of the one-transaction mass enrolment whose peak RSS is measured (0 skips).
        #[arg(long, default_value_t = 1_000_000)]
        big_txn_students: u32,
        #[arg(long)]
        json: bool,
    },
    /// Commit → visible latency (p50/p99) at steady rates through capture and projector, and replay throughput.
    Projector {
        /// Runs per rate (medians are reported).
        #[arg(long, default_value_t = 3)]
        runs: u32,
        /// Seconds of workload per run.
        #[arg(long, default_value_t = 20)]
        seconds: u64,
        /// Target rates (changes/s), comma-separated.
        #[arg(long, value_delimiter = ',', default_value = "2000,4000,6000,8000")]
        rates: Vec<u32>,
        /// Replays of the whole log into a fresh shadow.
        #[arg(long, default_value_t = 3)]
        replays: u32,
        #[arg(long)]
        json: bool,
    },
}

fn init_tracing(json: bool) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("VITRINA_LOG").unwrap_or_else(|_| {
        tracing_subscriber::EnvFilter::new(
            "info,tokio_postgres=warn,rdkafka=warn,pg_walstream=warn",
        )
    });
    let b = tracing_subscriber::fmt()
        .with_env_filter(filter)
        // Batch spans (capture_txn, projector_batch) log when they close,
        // with their source positions and duration, at debug level.
        .with_span_events(tracing_subscriber::fmt::format::FmtSpan::CLOSE)
        .with_writer(std::io::stderr);
    if json {
        b.json().init();
    } else {
        b.init();
    }
}

fn main() {
    // Behave like a Unix tool when piped into `head`: die quietly on SIGPIPE.
    // SAFETY: setting a signal disposition before any threads start.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
    let cli = Cli::parse();
    init_tracing(cli.log_json);
    if let Err(e) = real_main(cli) {
        // The error's own text carries the hint; the chain adds the causes.
        eprintln!("error: {e}");
        for cause in e.chain().skip(1) {
            eprintln!("  caused by: {cause}");
        }
        std::process::exit(1);
    }
}

fn real_main(cli: Cli) -> Result<()> {
    let cfg = Config::load(cli.config.as_deref(), std::env::vars())?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the tokio runtime")?;
    rt.block_on(run(cli.command, cfg, cli.config))
}

async fn run(command: Command, mut cfg: Config, config_file: Option<PathBuf>) -> Result<()> {
    match command {
        Command::Up => {
            let stack = Stack::new(&cfg)?;
            let st = tokio::task::spawn_blocking(move || stack.up()).await??;
            print_status(&st);
        }
        Command::Down => {
            let stack = Stack::new(&cfg)?;
            let stopped = stack.down()?;
            if stopped.is_empty() {
                println!("nothing was running");
            } else {
                println!("stopped: {}", stopped.join(", "));
            }
        }
        Command::Status { json } => {
            let stack = Stack::new(&cfg)?;
            let st = stack.status()?;
            let pipeline = match stack.endpoints() {
                Ok(ep) => Some(vitrina::status::pipeline(&cfg, &ep).await),
                Err(_) => None,
            };
            if json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(
                        &serde_json::json!({"services": st, "pipeline": pipeline})
                    )?
                );
            } else {
                print_status(&st);
                if let Some(p) = &pipeline {
                    print!("{}", vitrina::status::render(p, cfg.projector.sla_budget_s));
                }
            }
        }
        Command::Config => {
            print!("{}", toml::to_string_pretty(&cfg)?);
        }
        Command::Migrate => {
            let applied = migrate(&cfg).await?;
            if applied.is_empty() {
                println!("journal schema is up to date");
            } else {
                println!("applied journal migrations: {applied:?}");
            }
        }
        Command::Generate {
            seed,
            schools,
            students_per_school,
            history_years,
            as_of,
            replace,
            json,
        } => {
            let r = &mut cfg.region;
            r.seed = seed.unwrap_or(r.seed);
            r.schools = schools.unwrap_or(r.schools);
            r.students_per_school = students_per_school.unwrap_or(r.students_per_school);
            r.history_years = history_years.unwrap_or(r.history_years);
            r.as_of = as_of.or(r.as_of);
            cfg.validate()?;
            generate(&cfg, replace, json).await?;
        }
        Command::Workload {
            rate,
            duration,
            mass_enrolment,
            sessions,
            json,
        } => {
            let w = &mut cfg.workload;
            w.sessions = sessions.unwrap_or(w.sessions);
            w.rate = rate.unwrap_or(w.rate);
            w.duration_s = duration.unwrap_or(w.duration_s);
            w.mass_enrolment = mass_enrolment.unwrap_or(w.mass_enrolment);
            cfg.validate()?;
            run_workload(&cfg, json).await?;
        }
        Command::Capture => {
            let ep = Stack::new(&cfg)?.endpoints()?;
            vitrina::http::serve(&cfg.capture.metrics_listen)
                .await
                .map_err(anyhow::Error::msg)?;
            vitrina::observability::describe_capture();
            vitrina::capture::run(&cfg, &ep, shutdown_on_signal()).await?;
        }
        Command::Bench {
            what:
                BenchWhat::Capture {
                    runs,
                    seconds,
                    rate,
                    latency_rate,
                    latency_seconds,
                    load_runs,
                    big_txn_students,
                    json,
                },
        } => {
            let knobs = vitrina::bench::Knobs {
                runs,
                seconds,
                rate,
                latency_rate,
                latency_seconds,
                load_runs,
                big_txn_students,
                config_file: config_file.clone(),
            };
            let b = vitrina::bench::capture(&cfg, &knobs).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&b)?);
            } else {
                println!(
                    "capture benchmark ({} changes, {:.1} MB of WAL, {} runs)",
                    b.changes,
                    b.wal_bytes as f64 / 1e6,
                    b.runs.len()
                );
                for (i, (r, c)) in b.runs.iter().enumerate() {
                    println!(
                        "  run {}: pg_recvlogical {r:.3} s   capture (WAL → Kafka acked) {c:.3} s",
                        i + 1
                    );
                }
                println!(
                    "  median: pg_recvlogical {:.3} s, capture {:.3} s; throughput ratio {:.2} (target ≥ 0.7); capture {:.0} changes/s",
                    b.recvlogical_median_s, b.capture_median_s, b.throughput_ratio, b.capture_changes_per_s
                );
                println!(
                    "  commit → ack latency at {} changes/s (achieved {:.0}/s, {} transactions): p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms (target p99 < 500 ms)",
                    b.latency_rate_target, b.latency_rate_achieved, b.latency_transactions, b.latency_p50_ms, b.latency_p99_ms, b.latency_max_ms
                );
                if let Some(l) = &b.load {
                    for (i, (r, c)) in l.runs.iter().enumerate() {
                        println!(
                            "  initial load run {}: COPY of the same rows {r:.2} s   capture (snapshot → Kafka acked) {c:.2} s",
                            i + 1
                        );
                    }
                    println!(
                        "  initial load of {} rows: median COPY {:.2} s, capture {:.2} s ({:.0} rows/s, target ≥ 100,000); ratio to COPY {:.2}",
                        l.rows, l.copy_median_s, l.capture_median_s, l.capture_rows_per_s, l.ratio
                    );
                }
                if let Some(t) = &b.big_txn {
                    println!(
                        "  one transaction of {} row changes (mass enrolment of {} students, committed in {:.1} s): confirmed {:.1} s after commit; capture RSS idle {:.1} MB, peak {:.1} MB (target < 300 MiB)",
                        t.row_changes, t.students, t.commit_s, t.confirm_s, t.idle_rss_mb, t.peak_rss_mb
                    );
                }
            }
        }
        Command::Bench {
            what:
                BenchWhat::Projector {
                    runs,
                    seconds,
                    rates,
                    replays,
                    json,
                },
        } => {
            let knobs = vitrina::bench::ProjectorKnobs {
                runs,
                seconds,
                rates,
                replays,
            };
            let b = vitrina::bench::projector(&cfg, &knobs).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&b)?);
            } else {
                println!(
                    "projector benchmark (initial load: {} events projected at {:.0} events/s)",
                    b.initial_events, b.initial_events_per_s
                );
                for r in &b.rates {
                    let ach: Vec<String> = r.achieved.iter().map(|a| format!("{a:.0}")).collect();
                    println!(
                        "  {:>5}/s (achieved {}): commit → visible p50 {:.0} ms, p99 {:.0} ms (medians of {} runs)",
                        r.target,
                        ach.join(", "),
                        r.median_p50_ms,
                        r.median_p99_ms,
                        r.p99_ms.len()
                    );
                }
                println!(
                    "  highest achieved rate with p99 < 10 s: {} (target at 2,000/s: p99 < 2 s)",
                    b.max_rate_p99_under_10s
                        .map(|r| format!("{r}/s"))
                        .unwrap_or_else(|| "none".into())
                );
                println!(
                    "  replay of {} events: median {:.0} events/s end to end, {:.0} events/s while applying (target ≥ 50,000)",
                    b.replay_events, b.replay_median_events_per_s, b.replay_apply_median_events_per_s
                );
            }
        }
        Command::Project => {
            let ep = Stack::new(&cfg)?.endpoints()?;
            if cfg.postgres.host.is_none() {
                pg::ensure_database(&ep.pg_config("postgres"), &cfg.projector.database).await?;
            }
            vitrina::http::serve(&cfg.projector.metrics_listen)
                .await
                .map_err(anyhow::Error::msg)?;
            vitrina::observability::describe_projector();
            vitrina::projector::run(&cfg, &ep, &cfg.projector.database, shutdown_on_signal())
                .await?;
        }
        Command::Quality { json } => {
            let ep = Stack::new(&cfg)?.endpoints()?;
            let c = pg::connect(&ep.pg_config(&cfg.projector.database)).await?;
            vitrina::showcase::migrate(&c, vitrina::showcase::SCHEMA).await?;
            let r = vitrina::showcase::quality::run(
                &c,
                vitrina::showcase::SCHEMA,
                cfg.projector.pending_grace_s,
            )
            .await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&r)?);
            } else {
                println!(
                    "{:<14} {:<36} {:>10} {:>8}  WHAT",
                    "DIMENSION", "CHECK", "VIOLATIONS", "PENDING"
                );
                for f in &r.findings {
                    println!(
                        "{:<14} {:<36} {:>10} {:>8}  {}",
                        f.dimension, f.check, f.violations, f.pending, f.what
                    );
                }
                println!(
                    "{} violations in all; pending references resolve when the referenced rows arrive (grace {} s)",
                    r.violations(),
                    cfg.projector.pending_grace_s
                );
            }
        }
        Command::Replay {
            from,
            no_swap,
            restart,
            json,
        } => {
            let from = from
                .map(|f| {
                    chrono::DateTime::parse_from_rfc3339(&f)
                        .map(|t| t.with_timezone(&chrono::Utc))
                        .map_err(|e| {
                            anyhow::anyhow!(
                                "--from `{f}` is not an RFC 3339 time ({e}); example: 2026-11-01T00:00:00+03:00"
                            )
                        })
                })
                .transpose()?;
            let ep = Stack::new(&cfg)?.endpoints()?;
            vitrina::http::serve(&cfg.projector.replay_metrics_listen)
                .await
                .map_err(anyhow::Error::msg)?;
            vitrina::observability::describe_projector();
            vitrina::observability::describe_replay();
            let opts = vitrina::projector::replay::Options {
                from,
                swap: !no_swap,
                restart,
            };
            let r = vitrina::projector::replay::run(
                &cfg,
                &ep,
                &cfg.projector.database,
                &opts,
                shutdown_on_signal(),
            )
            .await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&r)?);
            } else {
                print_replay(&r);
            }
        }
        Command::Schemas { write } => {
            let reg = vitrina::events::codec::Registry::new();
            println!(
                "{:<32} {:<40} FINGERPRINT (CRC-64-AVRO, as in the message header)",
                "TOPIC", "SCHEMA"
            );
            println!(
                "{:<32} {:<40} {}",
                "(every topic)",
                "vitrina.events.Watermark",
                reg.watermark_fingerprint()
            );
            for (e, fp) in reg.fingerprints() {
                println!(
                    "{:<32} {:<40} {fp}",
                    format!("vitrina.{}.v1", e.name),
                    format!("{}.{}Event", vitrina::events::schema::NAMESPACE, e.record)
                );
            }
            if let Some(dir) = write {
                std::fs::create_dir_all(&dir)?;
                for e in vitrina::events::ENTITIES {
                    let path = dir.join(vitrina::events::schema::file_name(e));
                    std::fs::write(&path, vitrina::events::schema::avsc_text(e))
                        .with_context(|| format!("writing {}", path.display()))?;
                }
                std::fs::write(
                    dir.join(vitrina::events::schema::WATERMARK_FILE),
                    vitrina::events::schema::watermark_text(),
                )?;
                println!(
                    "wrote {} schemas to {}",
                    vitrina::events::ENTITIES.len() + 1,
                    dir.display()
                );
            }
        }
        Command::Demo {
            duration,
            schools,
            students_per_school,
        } => {
            let stack = Stack::new(&cfg)?;
            let st = tokio::task::spawn_blocking(move || stack.up()).await??;
            print_status(&st);
            migrate(&cfg).await?;
            let ep = Stack::new(&cfg)?.endpoints()?;
            let client = pg::connect(&ep.pg_config(&cfg.postgres.journal_database)).await?;
            let students: i64 = client
                .query_one("SELECT count(*) FROM journal.students", &[])
                .await?
                .get(0);
            if students == 0 {
                cfg.region.schools = schools;
                cfg.region.students_per_school = students_per_school;
                cfg.validate()?;
                generate(&cfg, false, false).await?;
            } else {
                println!("journal already holds {students} students; keeping them");
            }

            // Capture: initial load (first run), then streaming.
            vitrina::http::serve(&cfg.capture.metrics_listen)
                .await
                .map_err(anyhow::Error::msg)?;
            vitrina::observability::describe_capture();
            vitrina::observability::describe_projector();
            let probe = std::sync::Arc::new(vitrina::capture::Probe::default());
            let cancel = tokio_util::sync::CancellationToken::new();
            let (c2, ep2, cancel2, probe2) =
                (cfg.clone(), ep.clone(), cancel.clone(), probe.clone());
            let capture = tokio::spawn(async move {
                vitrina::capture::run_probed(&c2, &ep2, cancel2, Some(probe2)).await
            });
            println!(
                "capture: starting (metrics on http://{}/metrics)",
                cfg.capture.metrics_listen
            );
            let t0 = std::time::Instant::now();
            while probe.confirmed.load(std::sync::atomic::Ordering::SeqCst) == 0 {
                if capture.is_finished() {
                    capture.await??;
                    anyhow::bail!("capture stopped before streaming");
                }
                tokio::time::sleep(std::time::Duration::from_millis(200)).await;
            }
            let loaded = probe.events.load(std::sync::atomic::Ordering::SeqCst);
            println!(
                "capture: streaming after {:.1} s ({} events of the initial load published)",
                t0.elapsed().as_secs_f64(),
                loaded
            );
            // The projector: the event log into the showcase database.
            if cfg.postgres.host.is_none() {
                pg::ensure_database(&ep.pg_config("postgres"), &cfg.projector.database).await?;
            }
            let showcase = pg::connect(&ep.pg_config(&cfg.projector.database)).await?;
            vitrina::showcase::migrate(&showcase, vitrina::showcase::SCHEMA).await?;
            let (c3, ep3, cancel3) = (cfg.clone(), ep.clone(), cancel.clone());
            let projector = tokio::spawn(async move {
                vitrina::projector::run(&c3, &ep3, &c3.projector.database, cancel3).await
            });
            println!(
                "projector: projecting into database {} (schema showcase)",
                cfg.projector.database
            );
            let fresh_after = |since: chrono::DateTime<chrono::Utc>| {
                let showcase = &showcase;
                let projector = &projector;
                async move {
                    loop {
                        let r = showcase
                            .query_opt(
                                "SELECT fresh_as_of FROM showcase.status WHERE fresh_as_of >= $1",
                                &[&since],
                            )
                            .await?;
                        if r.is_some() {
                            return anyhow::Ok(());
                        }
                        anyhow::ensure!(!projector.is_finished(), "the projector stopped");
                        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                    }
                }
            };
            let t2 = std::time::Instant::now();
            fresh_after(chrono::Utc::now()).await?;
            println!(
                "projector: the initial load is in the showcase after {:.1} s",
                t2.elapsed().as_secs_f64()
            );

            cfg.workload.duration_s = duration;
            if cfg.workload.mass_enrolment == 0 {
                cfg.workload.mass_enrolment = 300;
            }
            run_workload(&cfg, false).await?;
            let workload_end = chrono::Utc::now();
            let end: String = client
                .query_one(
                    "SELECT pg_logical_emit_message(true, 'vitrina.demo.end', '')::text",
                    &[],
                )
                .await?
                .get(0);
            let end = vitrina::capture::preflight::parse_lsn(&end).unwrap_or(0);
            let t1 = std::time::Instant::now();
            while probe.confirmed.load(std::sync::atomic::Ordering::SeqCst) < end {
                anyhow::ensure!(!capture.is_finished(), "capture stopped while catching up");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            }
            println!(
                "capture: caught up {:.2} s after the workload ended; {} events on Kafka ({} from the live workload), topics {}.<entity>.v1",
                t1.elapsed().as_secs_f64(),
                probe.events.load(std::sync::atomic::Ordering::SeqCst),
                probe.events.load(std::sync::atomic::Ordering::SeqCst) - loaded,
                cfg.capture.topic_prefix
            );
            let t3 = std::time::Instant::now();
            fresh_after(workload_end).await?;
            println!(
                "showcase: every change up to the workload's end visible {:.2} s after it (fresh_as_of; the SLA is 600 s)",
                t3.elapsed().as_secs_f64()
            );
            let q = vitrina::showcase::quality::run(
                &showcase,
                vitrina::showcase::SCHEMA,
                cfg.projector.pending_grace_s,
            )
            .await?;
            let pending: i64 = q.findings.iter().map(|f| f.pending).sum();
            println!(
                "quality: {} violations, {} references pending (`vitrina quality` for the report)",
                q.violations(),
                pending
            );
            cancel.cancel();
            capture.await??;
            projector.await??;
            println!(
                "\njournal: {}\nshowcase: {}\nkafka: {}\nthe stack keeps running; `vitrina status` shows it, `vitrina capture` and `vitrina project` resume, `vitrina down` stops it",
                ep.pg_url(&cfg.postgres.journal_database),
                ep.pg_url(&cfg.projector.database),
                ep.kafka_brokers.as_deref().unwrap_or("-")
            );
        }
    }
    Ok(())
}

/// A token cancelled on SIGINT or SIGTERM: long-running commands drain and
/// stop cleanly.
fn shutdown_on_signal() -> tokio_util::sync::CancellationToken {
    let cancel = tokio_util::sync::CancellationToken::new();
    let c2 = cancel.clone();
    tokio::spawn(async move {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("SIGTERM handler");
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
        tracing::info!("stopping: draining work in flight");
        c2.cancel();
    });
    cancel
}

fn print_replay(r: &vitrina::projector::replay::Report) {
    println!(
        "replayed {} events in {:.1} s ({:.0} events/s); {}",
        r.events,
        r.seconds,
        r.events_per_s,
        if r.swapped {
            "swapped in (the old showcase is kept as showcase_previous)"
        } else {
            "not swapped (the shadow is showcase_replay)"
        }
    );
    if r.ahead_of_live > 0 {
        println!(
            "the replay applied {} messages the old showcase had not yet: differences below may be those",
            r.ahead_of_live
        );
    }
    println!(
        "{:<22} {:>10} {:>10}  {:<20} {:<20} ",
        "TABLE", "OLD ROWS", "NEW ROWS", "OLD CHECKSUM", "NEW CHECKSUM"
    );
    for t in &r.tables {
        println!(
            "{:<22} {:>10} {:>10}  {:<20} {:<20} {}",
            t.table,
            t.old_rows,
            t.new_rows,
            t.old_checksum,
            t.new_checksum,
            if t.same() { "same" } else { "DIFFERENT" }
        );
    }
}

fn print_status(st: &[vitrina::stack::ServiceStatus]) {
    println!(
        "{:<10} {:<8} {:>8}  {:<22} LOG",
        "SERVICE", "STATE", "PID", "ADDRESS"
    );
    for s in st {
        println!(
            "{:<10} {:<8} {:>8}  {:<22} {}",
            s.service,
            if s.running { "running" } else { "stopped" },
            s.pid.map(|p| p.to_string()).unwrap_or_else(|| "-".into()),
            s.address.clone().unwrap_or_else(|| "-".into()),
            s.log
        );
    }
}

async fn migrate(cfg: &Config) -> Result<Vec<i32>> {
    let ep = Stack::new(cfg)?.endpoints()?;
    let admin = ep.pg_config("postgres");
    if cfg.postgres.host.is_none() {
        pg::ensure_database(&admin, &cfg.postgres.journal_database).await?;
    }
    let mut client = pg::connect(&ep.pg_config(&cfg.postgres.journal_database)).await?;
    Ok(journal::migrate(&mut client).await?)
}

async fn generate(cfg: &Config, replace: bool, json: bool) -> Result<()> {
    let ep = Stack::new(cfg)?.endpoints()?;
    let spec = RegionSpec::from_config(&cfg.region, chrono::Local::now().date_naive());
    eprintln!(
        "generating region: seed {}, {} schools × {} students, {} history years + current, as of {}",
        spec.seed, spec.schools, spec.students_per_school, spec.history_years, spec.as_of
    );
    let report = load::load(
        &ep.pg_config(&cfg.postgres.journal_database),
        &spec,
        cfg.region.load_connections as usize,
        replace,
        !json && console_is_tty(),
    )
    .await?;
    if json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        println!(
            "loaded {} rows in {:.1} s: {:.0} rows/s; database size {:.1} MiB",
            report.total_rows,
            report.seconds,
            report.rows_per_second,
            report.database_bytes as f64 / 1048576.0
        );
        for (t, n) in &report.rows {
            println!("  {t:<20} {n:>12}");
        }
        println!(
            "deliberately invalid: {} SNILS, {} student documents, {} organizations' INN/OGRN",
            report.invalid_snils, report.invalid_documents, report.invalid_organization_ids
        );
    }
    Ok(())
}

async fn run_workload(cfg: &Config, json: bool) -> Result<()> {
    let ep = Stack::new(cfg)?.endpoints()?;
    let report = workload::run(
        &ep.pg_config(&cfg.postgres.journal_database),
        &cfg.workload,
        !json && console_is_tty(),
    )
    .await?;
    if json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        println!("{report}");
    }
    Ok(())
}

fn console_is_tty() -> bool {
    use std::io::IsTerminal;
    std::io::stderr().is_terminal()
}

//! The `vitrina` command: orchestration only; the work lives in the library.

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use vitrina::config::Config;
use vitrina::connections::Connections;
use vitrina::error::{supervise, Backoff};
use vitrina::stack::{render_services, Stack};
use vitrina::{devtools, pg};

/// mimalloc rather than glibc's malloc: capture's per-record path allocates
/// a few dozen small blocks per change, and glibc's malloc/free were about
/// 15 % of its samples in a `perf` profile (docs/capture.md).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

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
    /// Let a development tool (migrate, generate, workload, bench, demo)
    /// act on this journal database although it is not the local stack's.
    #[arg(long, global = true, value_name = "NAME")]
    allow_database: Option<String>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Start the local stack (PostgreSQL with logical replication, nisshi); harmless when it runs.
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
    /// Ask the running capture to read a mapped table again, in chunks, while it streams
    /// (a whole table also withdraws rows deleted while nothing streamed them).
    Resnapshot {
        /// The mapped table, as schema.table.
        table: String,
        /// Only the rows this SQL condition on the table's columns selects (no withdrawal).
        #[arg(long = "where", value_name = "SQL")]
        filter: Option<String>,
    },
    /// Benchmarks that print figures against a reference measured in the same run.
    Bench {
        #[command(subcommand)]
        what: BenchWhat,
    },
    /// Project the event topics into the showcase database (until SIGINT/SIGTERM).
    Project,
    /// The ProStore upload feed for the standard regional showcase.
    Prostore {
        #[command(subcommand)]
        what: ProstoreWhat,
    },
    /// The RDM upload client for the regional data mart's upload service.
    Rdm {
        #[command(subcommand)]
        what: RdmWhat,
    },
    /// Check the services as a stage would before it starts, changing nothing.
    Check {
        #[command(subcommand)]
        what: CheckWhat,
    },
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
        /// With --from: read the log from at least this many seconds before it (capture's and the
        /// broker's clocks are not the journal's; a change reaches the log after its commit).
        /// Records stamped earlier still count: the start is checked by journal position.
        #[arg(long, default_value_t = 600, value_name = "SECONDS")]
        margin: u64,
        /// Build the shadow (showcase_replay) and report, but do not swap it in.
        #[arg(long)]
        no_swap: bool,
        /// Drop an interrupted replay's shadow instead of resuming it.
        #[arg(long)]
        restart: bool,
        /// The event log was recreated after a loss (a new initial load): the live showcase's
        /// offsets refer to the old log, so the swap does not wait for them. Stop the projector first.
        #[arg(long)]
        new_log: bool,
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
enum ProstoreWhat {
    /// Print ProStore's CREATE TABLE and CREATE UPLOAD EXTERNAL TABLE statements for every table.
    Ddl,
    /// Feed the upload topics from the event log in numbered deltas (until SIGINT/SIGTERM).
    Feed,
    /// Print the delta manifest (plans and commits), one JSON object per line.
    Manifest,
}

#[derive(Subcommand)]
enum CheckWhat {
    /// Every topic capture, the projector, the ProStore feed and the RDM client need: present, and
    /// with the settings they need (retention, compaction, replicas, partitions); the commands that
    /// create or fix them. Exits 1 when a topic is missing or wrong.
    Kafka {
        /// Print the report as JSON.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand)]
enum RdmWhat {
    /// Upload the ProStore feed's deltas of the public RDM entities in micro-batches (until SIGINT/SIGTERM).
    Upload,
    /// Print the upload journal (plans, sent files, outcomes, commits), one JSON object per line.
    Journal,
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
        /// Runs over a second range written with the steady-state mix (a
        /// tenth of the consent changes; 0 skips).
        #[arg(long, default_value_t = 3)]
        steady_runs: u32,
        #[arg(long)]
        json: bool,
    },
    /// A region of N schools through every stage (initial load, projector, replay, ProStore feed), each beside raw COPY in the same run.
    Region {
        /// Schools (the demo region has 5; the default is ten times that).
        #[arg(long, default_value_t = 50)]
        schools: u32,
        #[arg(long, default_value_t = 300)]
        students_per_school: u32,
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
    let _failpoints = vitrina::failpoint::setup();
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
    let ctx = Ctx {
        config_file: cli.config,
        allow_database: cli.allow_database,
    };
    rt.block_on(run(cli.command, cfg, ctx))
}

/// What every command may need besides the configuration.
struct Ctx {
    config_file: Option<PathBuf>,
    allow_database: Option<String>,
}

impl Ctx {
    /// The connections, after checking that development tool `tool` may
    /// act on the journal they name.
    fn dev_connections(&self, tool: &'static str, cfg: &Config) -> Result<Connections> {
        let conns = Stack::new(cfg)?.connections()?;
        devtools::check_target(tool, conns.journal()?, self.allow_database.as_deref())?;
        Ok(conns)
    }
}

/// How long a stage must have run for its restart backoff to start over.
const HEALTHY_AFTER: std::time::Duration = std::time::Duration::from_secs(60);

fn restart_backoff() -> Backoff {
    Backoff::new(
        std::time::Duration::from_secs(1),
        std::time::Duration::from_secs(30),
    )
}

async fn run(command: Command, cfg: Config, ctx: Ctx) -> Result<()> {
    match command {
        Command::Up => {
            let stack = Stack::new(&cfg)?;
            let st = tokio::task::spawn_blocking(move || stack.up()).await??;
            print!("{}", render_services(&st));
        }
        Command::Down => {
            let stopped = Stack::new(&cfg)?.down()?;
            if stopped.is_empty() {
                println!("nothing was running");
            } else {
                println!("stopped: {}", stopped.join(", "));
            }
        }
        Command::Status { json } => status(&cfg, json).await?,
        Command::Config => print!("{}", toml::to_string_pretty(&cfg)?),
        Command::Capture => capture(&cfg).await?,
        Command::Resnapshot { table, filter } => {
            resnapshot(&cfg, &table, filter.as_deref()).await?
        }
        Command::Project => project(&cfg).await?,
        Command::Prostore { what } => prostore(what, &cfg).await?,
        Command::Rdm { what } => rdm(what, &cfg).await?,
        Command::Check {
            what: CheckWhat::Kafka { json },
        } => check_kafka(&cfg, json).await?,
        Command::Quality { json } => quality(&cfg, json).await?,
        Command::Replay {
            from,
            margin,
            no_swap,
            restart,
            new_log,
            json,
        } => {
            let opts = vitrina::projector::replay::Options {
                from: from.as_deref().map(parse_from).transpose()?,
                margin: std::time::Duration::from_secs(margin),
                swap: !no_swap,
                restart,
                new_log,
            };
            replay(&cfg, &opts, json).await?
        }
        Command::Schemas { write } => {
            let reg = vitrina::events::codec::Registry::new();
            print!("{}", vitrina::events::schema::listing(&reg));
            if let Some(dir) = write {
                let n = vitrina::events::schema::write_all(&dir)
                    .with_context(|| format!("writing the schemas into {}", dir.display()))?;
                println!("wrote {n} schemas to {}", dir.display());
            }
        }
        dev => dev_command(dev, cfg, ctx).await?,
    }
    Ok(())
}

/// Prints `v` as pretty JSON, or as its text.
fn emit<T: serde::Serialize + std::fmt::Display>(v: &T, json: bool) -> Result<()> {
    if json {
        println!("{}", serde_json::to_string_pretty(v)?);
    } else {
        print!("{v}");
    }
    Ok(())
}

/// Serves a stage's metrics and health on `listen`.
async fn serve(listen: &str, health: std::sync::Arc<vitrina::http::Health>) -> Result<()> {
    vitrina::http::serve(listen, health)
        .await
        .map(|_| ())
        .map_err(anyhow::Error::msg)
}

/// A health endpoint for a stage without a readiness of its own.
fn ready_health() -> std::sync::Arc<vitrina::http::Health> {
    let health = std::sync::Arc::new(vitrina::http::Health::new(std::time::Duration::from_secs(
        3600,
    )));
    health.ready();
    health
}

async fn status(cfg: &Config, json: bool) -> Result<()> {
    let stack = Stack::new(cfg)?;
    let st = stack.status()?;
    let pipeline = match stack.connections() {
        Ok(conns) => Some(vitrina::status::pipeline(cfg, &conns).await),
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
        print!("{}", render_services(&st));
        if let Some(p) = &pipeline {
            print!("{}", vitrina::status::render(p, cfg.projector.sla_budget_s));
        }
    }
    Ok(())
}

async fn capture(cfg: &Config) -> Result<()> {
    let conns = Stack::new(cfg)?.connections()?;
    let capture = vitrina::capture::Capture::new(cfg, conns.journal()?, conns.kafka()?);
    serve(&cfg.capture.metrics_listen, capture.health()).await?;
    vitrina::observability::describe_capture();
    let cancel = shutdown_on_signal();
    supervise("capture", restart_backoff(), HEALTHY_AFTER, &cancel, || {
        capture.run(cancel.clone())
    })
    .await?;
    Ok(())
}

async fn resnapshot(cfg: &Config, table: &str, filter: Option<&str>) -> Result<()> {
    let mapping = vitrina::capture::mapping::Mapping::load(cfg.capture.mapping_file.as_deref())?;
    vitrina::capture::resnapshot::check_request(&mapping, table, filter)?;
    let conns = Stack::new(cfg)?.connections()?;
    let at = vitrina::capture::resnapshot::request(
        conns.journal()?,
        &mapping,
        &cfg.capture.slot,
        table,
        filter,
    )
    .await?;
    println!(
        "re-snapshot of {table} requested at {at} (slot {}): capture reads it in chunks of {} rows, at most {} rows/s, while it streams.\nprogress: vitrina_capture_resnapshot_jobs and vitrina_capture_resnapshot_rows_total{{table=\"{table}\"}} on capture's /metrics ({}), and `vitrina status`",
        cfg.capture.slot,
        cfg.capture.resnapshot_chunk_rows,
        cfg.capture.resnapshot_rows_per_second,
        cfg.capture.metrics_listen
    );
    Ok(())
}

async fn project(cfg: &Config) -> Result<()> {
    let conns = Stack::new(cfg)?.connections()?;
    let sc = conns.showcase()?;
    if sc.local {
        pg::ensure_database(&sc.with_database("postgres").config(), &sc.database).await?;
    }
    let projector = vitrina::projector::Projector::new(cfg, sc, conns.kafka()?);
    serve(&cfg.projector.metrics_listen, projector.health()).await?;
    vitrina::observability::describe_projector();
    let cancel = shutdown_on_signal();
    supervise(
        "projector",
        restart_backoff(),
        HEALTHY_AFTER,
        &cancel,
        || projector.run(cancel.clone()),
    )
    .await?;
    Ok(())
}

async fn prostore(what: ProstoreWhat, cfg: &Config) -> Result<()> {
    match what {
        ProstoreWhat::Ddl => {
            // The brokers ProStore reads from: the configured or local
            // ones, else a placeholder to replace.
            let brokers = Stack::new(cfg)
                .ok()
                .and_then(|s| s.connections().ok())
                .and_then(|c| c.kafka().ok().map(|k| k.brokers.clone()))
                .unwrap_or_else(|| "KAFKA_BROKERS".into());
            print!(
                "{}",
                vitrina::prostore::ddl(
                    &cfg.prostore.datamart,
                    &brokers,
                    &cfg.capture.topic_prefix,
                    cfg.prostore.records_per_message,
                )
            );
        }
        ProstoreWhat::Manifest => {
            print_records(cfg, vitrina::prostore::feed::read_manifest).await?
        }
        ProstoreWhat::Feed => {
            let conns = Stack::new(cfg)?.connections()?;
            let kafka = conns.kafka()?;
            serve(&cfg.prostore.metrics_listen, ready_health()).await?;
            vitrina::observability::describe_prostore();
            let cancel = shutdown_on_signal();
            supervise(
                "prostore",
                restart_backoff(),
                HEALTHY_AFTER,
                &cancel,
                || {
                    let (cfg, kafka, cancel) = (cfg.clone(), kafka.clone(), cancel.clone());
                    async move {
                        vitrina::prostore::feed::Feed::new(&cfg, kafka)?
                            .run(cancel)
                            .await
                    }
                },
            )
            .await?;
        }
    }
    Ok(())
}

/// Reads a bookkeeping topic whole with `read` (off the runtime's
/// threads) and prints its records as JSON lines.
async fn print_records<T, E>(
    cfg: &Config,
    read: fn(&vitrina::connections::KafkaEndpoint, &str) -> std::result::Result<Vec<T>, E>,
) -> Result<()>
where
    T: serde::Serialize + Send + 'static,
    E: std::error::Error + Send + Sync + 'static,
{
    let kafka = Stack::new(cfg)?.connections()?.kafka()?.clone();
    let prefix = cfg.capture.topic_prefix.clone();
    let records = tokio::task::spawn_blocking(move || read(&kafka, &prefix)).await??;
    for r in records {
        println!("{}", serde_json::to_string(&r)?);
    }
    Ok(())
}

async fn rdm(what: RdmWhat, cfg: &Config) -> Result<()> {
    match what {
        RdmWhat::Journal => print_records(cfg, vitrina::rdm::upload::read_entries).await?,
        RdmWhat::Upload => {
            let kafka = Stack::new(cfg)?.connections()?.kafka()?.clone();
            let health = std::sync::Arc::new(vitrina::http::Health::new(
                std::time::Duration::from_secs(3600),
            ));
            serve(&cfg.rdm.metrics_listen, health.clone()).await?;
            vitrina::observability::describe_rdm();
            let cancel = shutdown_on_signal();
            supervise("rdm", restart_backoff(), HEALTHY_AFTER, &cancel, || {
                let (cfg, kafka, cancel, health) =
                    (cfg.clone(), kafka.clone(), cancel.clone(), health.clone());
                async move {
                    vitrina::rdm::upload::Uploader::new(&cfg, kafka, health)?
                        .run(cancel)
                        .await
                }
            })
            .await?;
        }
    }
    Ok(())
}

/// `vitrina check kafka`: the topics every stage needs, checked.
async fn check_kafka(cfg: &Config, json: bool) -> Result<()> {
    let conns = Stack::new(cfg)?.connections()?;
    let kafka = conns.kafka()?;
    let mapping = vitrina::capture::mapping::Mapping::load(cfg.capture.mapping_file.as_deref())?;
    let mut needs = vitrina::capture::topic_needs(&mapping, cfg);
    needs.extend(vitrina::prostore::feed::topic_needs(cfg));
    needs.extend(vitrina::rdm::upload::topic_needs(&cfg.capture.topic_prefix));
    // One need per topic: the most partitions any stage wants.
    needs.sort_by(|a, b| a.topic.cmp(&b.topic).then(b.partitions.cmp(&a.partitions)));
    needs.dedup_by(|a, b| a.topic == b.topic);
    let report = vitrina::kafka::check(kafka, &needs).await?;
    if json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        println!(
            "Kafka {} (replication factor {}, min.insync.replicas {}):",
            kafka.brokers, kafka.replication_factor, kafka.min_insync_replicas
        );
        print!("{report}");
    }
    if !report.missing.is_empty() || !report.mismatches.is_empty() {
        std::process::exit(1);
    }
    Ok(())
}

async fn quality(cfg: &Config, json: bool) -> Result<()> {
    let conns = Stack::new(cfg)?.connections()?;
    let c = pg::connect(&conns.showcase()?.config()).await?;
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
        print!("{}", r.render(cfg.projector.pending_grace_s));
    }
    Ok(())
}

/// `--from` of `vitrina replay`: an RFC 3339 time.
fn parse_from(f: &str) -> Result<chrono::DateTime<chrono::Utc>> {
    chrono::DateTime::parse_from_rfc3339(f)
        .map(|t| t.with_timezone(&chrono::Utc))
        .map_err(|e| {
            anyhow::anyhow!(
                "--from `{f}` is not an RFC 3339 time ({e}); example: 2026-11-01T00:00:00+03:00"
            )
        })
}

async fn replay(
    cfg: &Config,
    opts: &vitrina::projector::replay::Options,
    json: bool,
) -> Result<()> {
    let conns = Stack::new(cfg)?.connections()?;
    serve(&cfg.projector.replay_metrics_listen, ready_health()).await?;
    vitrina::observability::describe_projector();
    vitrina::observability::describe_replay();
    let r = vitrina::projector::replay::run(
        cfg,
        conns.showcase()?,
        conns.kafka()?,
        opts,
        shutdown_on_signal(),
    )
    .await?;
    emit(&r, json)
}

/// The commands of the local stack's synthetic region: migrate, generate,
/// workload, bench and demo.
async fn dev_command(command: Command, mut cfg: Config, ctx: Ctx) -> Result<()> {
    match command {
        Command::Migrate => {
            let conns = ctx.dev_connections("migrate", &cfg)?;
            let applied = vitrina::demo::migrate(conns.journal()?).await?;
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
            let conns = ctx.dev_connections("generate", &cfg)?;
            let tty = !json && console_is_tty();
            vitrina::demo::generate(&cfg, conns.journal()?, replace, json, tty).await?;
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
            let conns = ctx.dev_connections("workload", &cfg)?;
            let tty = !json && console_is_tty();
            vitrina::demo::workload(&cfg, conns.journal()?, json, tty).await?;
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
                    steady_runs,
                    json,
                },
        } => {
            ctx.dev_connections("bench", &cfg)?;
            let knobs = vitrina::bench::Knobs {
                runs,
                seconds,
                rate,
                latency_rate,
                latency_seconds,
                load_runs,
                big_txn_students,
                steady_runs,
                config_file: ctx.config_file.clone(),
            };
            let b = vitrina::bench::capture(&cfg, &knobs).await?;
            emit(&b, json)?;
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
            ctx.dev_connections("bench", &cfg)?;
            let knobs = vitrina::bench::ProjectorKnobs {
                runs,
                seconds,
                rates,
                replays,
            };
            let b = vitrina::bench::projector(&cfg, &knobs).await?;
            emit(&b, json)?;
        }
        Command::Bench {
            what:
                BenchWhat::Region {
                    schools,
                    students_per_school,
                    json,
                },
        } => {
            ctx.dev_connections("bench", &cfg)?;
            let knobs = vitrina::bench::RegionKnobs {
                schools,
                students_per_school,
            };
            let b = vitrina::bench::region(&cfg, &knobs).await?;
            emit(&b, json)?;
        }
        Command::Demo {
            duration,
            schools,
            students_per_school,
        } => {
            let stack = Stack::new(&cfg)?;
            let st = tokio::task::spawn_blocking(move || stack.up()).await??;
            print!("{}", render_services(&st));
            let conns = ctx.dev_connections("demo", &cfg)?;
            vitrina::demo::migrate(conns.journal()?).await?;
            vitrina::demo::run(cfg, &conns, schools, students_per_school, duration).await?;
        }
        _ => unreachable!("run() passes only the development commands here"),
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

fn console_is_tty() -> bool {
    use std::io::IsTerminal;
    std::io::stderr().is_terminal()
}

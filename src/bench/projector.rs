//! `vitrina bench projector`: commit → visible latency through capture and
//! the projector at steady rates, and replay throughput.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

use super::{capture_config, fail, median, percentile, spawn_capture, BenchError};
use crate::config::{Config, WorkloadConfig};
use crate::pg;
use crate::region::workload;
use crate::stack::Stack;

/// `vitrina bench projector` figures.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ProjectorBench {
    /// Events of the initial load applied before the latency runs, and how fast.
    pub initial_events: u64,
    pub initial_events_per_s: f64,
    pub rates: Vec<RateRun>,
    /// Highest achieved rate (median over runs) whose median p99 stayed under 10 s.
    pub max_rate_p99_under_10s: Option<u32>,
    /// Replays of the whole log into a fresh shadow: events/s, end to end
    /// (group join, apply, SET LOGGED, checksums) and while applying.
    pub replay_events: u64,
    pub replay_events_per_s: Vec<f64>,
    pub replay_apply_events_per_s: Vec<f64>,
    pub replay_median_events_per_s: f64,
    pub replay_apply_median_events_per_s: f64,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct RateRun {
    pub target: u32,
    /// Achieved changes/s per run.
    pub achieved: Vec<f64>,
    pub p50_ms: Vec<f64>,
    pub p99_ms: Vec<f64>,
    pub median_p50_ms: f64,
    pub median_p99_ms: f64,
    /// Highest commit → visible latency of each run.
    pub max_ms: Vec<f64>,
    /// Seconds from the workload's end until the showcase was fresh as of
    /// that moment (every change of the run visible), per run.
    pub all_visible_after_s: Vec<f64>,
    pub median_max_ms: f64,
    pub median_all_visible_after_s: f64,
}

impl RateRun {
    /// One run's figures: achieved rate, latencies (seconds), and the
    /// seconds until everything was visible after the workload ended.
    fn record(&mut self, n: u32, achieved: f64, mut l: Vec<f64>, all_visible: f64) {
        l.sort_by(|a, b| a.partial_cmp(b).unwrap());
        let (p50, p99) = (percentile(&l, 0.5) * 1e3, percentile(&l, 0.99) * 1e3);
        let max = l.last().copied().unwrap_or(0.0) * 1e3;
        eprintln!(
            "bench: {}/s run {n}: achieved {achieved:.0}/s, {} events, commit → visible p50 {p50:.0} ms, p99 {p99:.0} ms, max {max:.0} ms; all visible {all_visible:.1} s after the workload ended",
            self.target,
            l.len()
        );
        self.max_ms.push(max);
        self.all_visible_after_s.push(all_visible);
        self.achieved.push(achieved);
        self.p50_ms.push(p50);
        self.p99_ms.push(p99);
    }
}

pub struct ProjectorKnobs {
    pub runs: u32,
    pub seconds: u64,
    pub rates: Vec<u32>,
    pub replays: u32,
}

/// Capture with its initial load and the projector run in this process
/// against the configured journal; the workload runs at each rate while
/// the projector records commit → visible latency per event; then the
/// whole log is replayed into a shadow, several times.
pub async fn projector(cfg: &Config, knobs: &ProjectorKnobs) -> Result<ProjectorBench, BenchError> {
    let conns = Stack::new(cfg).map_err(fail)?.connections().map_err(fail)?;
    let sql = pg::connect(&conns.journal().map_err(fail)?.config())
        .await
        .map_err(fail)?;
    let tag = format!("benchp{}", std::process::id());
    let mut c = capture_config(cfg, &tag, &tag, &tag, true, 1000);
    c.showcase.database = tag.clone();
    let showcase = conns.showcase().map_err(fail)?.with_database(&tag);
    pg::ensure_database(&showcase.with_database("postgres").config(), &tag)
        .await
        .map_err(fail)?;
    let kafka = conns.kafka().map_err(fail)?;

    let cancel = CancellationToken::new();
    let (capture, cap_probe) = spawn_capture(&c, &conns, &cancel)?;
    while cap_probe.confirmed.load(Ordering::SeqCst) == 0 {
        if capture.is_finished() {
            return Err(fail("capture stopped before streaming"));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let initial = cap_probe.events.load(Ordering::SeqCst);
    eprintln!("bench: capture streaming; {initial} events of the initial load on Kafka");

    let proj = crate::projector::Projector::new(&c, &showcase, kafka);
    let lat: Arc<std::sync::Mutex<Vec<f64>>> = Arc::default();
    let recorder = {
        let (mut rx, lat) = (proj.subscribe_visible(), lat.clone());
        tokio::spawn(async move {
            loop {
                match rx.recv().await {
                    Ok(v) => lat.lock().unwrap().extend_from_slice(&v),
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => continue,
                    Err(_) => return,
                }
            }
        })
    };
    let cancel3 = cancel.clone();
    let mut projector = tokio::spawn(async move { proj.run(cancel3).await });
    let show = pg::connect(&showcase.config()).await.map_err(fail)?;
    let fresh_after = |t: chrono::DateTime<chrono::Utc>| {
        let (show, projector) = (&show, &projector);
        async move {
            loop {
                let ok = show
                    .query_opt(
                        "SELECT 1 FROM showcase.status WHERE fresh_as_of >= $1",
                        &[&t],
                    )
                    .await
                    .map(|r| r.is_some())
                    .unwrap_or(false);
                if ok {
                    return Ok(());
                }
                if projector.is_finished() {
                    return Err(fail("the projector stopped (its error follows)"));
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    };
    let t0 = Instant::now();
    if let Err(e) = fresh_after(chrono::Utc::now()).await {
        return Err(fail(format!("{e}: {:?}", (&mut projector).await)));
    }
    let initial_s = t0.elapsed().as_secs_f64();
    eprintln!(
        "bench: initial load projected in {initial_s:.1} s ({:.0} events/s)",
        initial as f64 / initial_s
    );

    let mut rates = Vec::new();
    for (i, &rate) in knobs.rates.iter().enumerate() {
        let mut run = RateRun {
            target: rate,
            achieved: vec![],
            p50_ms: vec![],
            p99_ms: vec![],
            median_p50_ms: 0.0,
            median_p99_ms: 0.0,
            max_ms: vec![],
            all_visible_after_s: vec![],
            median_max_ms: 0.0,
            median_all_visible_after_s: 0.0,
        };
        for r in 0..knobs.runs {
            lat.lock().unwrap().clear();
            let w = WorkloadConfig {
                rate,
                duration_s: knobs.seconds,
                sessions: 8,
                mass_enrolment: 0,
                seed: 100 + (i as u64) * 10 + r as u64,
                ..Default::default()
            };
            let rep = workload::run(&conns.journal().map_err(fail)?.config(), &w, false)
                .await
                .map_err(fail)?;
            let ended = Instant::now();
            if let Err(e) = fresh_after(chrono::Utc::now()).await {
                return Err(fail(format!("{e}: {:?}", (&mut projector).await)));
            }
            let all_visible = ended.elapsed().as_secs_f64();
            let l = std::mem::take(&mut *lat.lock().unwrap());
            run.record(r + 1, rep.changes_per_second, l, all_visible);
        }
        run.median_p50_ms = median(&mut run.p50_ms.clone());
        run.median_p99_ms = median(&mut run.p99_ms.clone());
        run.median_max_ms = median(&mut run.max_ms.clone());
        run.median_all_visible_after_s = median(&mut run.all_visible_after_s.clone());
        rates.push(run);
    }
    // The rate reached, not the one asked for: on a small machine the
    // workload, capture, projector and PostgreSQL share the cores.
    let max_rate = rates
        .iter()
        .filter(|r| r.median_p99_ms < 10_000.0)
        .map(|r| median(&mut r.achieved.clone()).round() as u32)
        .max();
    cancel.cancel();
    let _ = capture.await;
    let _ = projector.await;
    recorder.abort();

    let (replay_events, replay_eps, apply_eps) =
        replays(&c, &showcase, kafka, knobs.replays).await?;
    let _ = sql
        .execute("SELECT pg_drop_replication_slot($1)", &[&tag])
        .await;
    let _ = sql.batch_execute(&format!("DROP PUBLICATION {tag}")).await;
    super::delete_own_topics(conns.kafka().map_err(fail)?, &format!("{tag}.")).await;
    Ok(ProjectorBench {
        initial_events: initial,
        initial_events_per_s: initial as f64 / initial_s,
        rates,
        max_rate_p99_under_10s: max_rate,
        replay_events,
        replay_median_events_per_s: median(&mut replay_eps.clone()),
        replay_apply_median_events_per_s: median(&mut apply_eps.clone()),
        replay_events_per_s: replay_eps,
        replay_apply_events_per_s: apply_eps,
    })
}

/// The whole log replayed into a shadow `n` times: events, and per run the
/// events per second end to end and while applying.
async fn replays(
    c: &Config,
    showcase: &crate::connections::PgEndpoint,
    kafka: &crate::connections::KafkaEndpoint,
    n: u32,
) -> Result<(u64, Vec<f64>, Vec<f64>), BenchError> {
    let mut replay_eps = Vec::new();
    let mut apply_eps = Vec::new();
    let mut replay_events = 0;
    for r in 0..n {
        let opts = crate::projector::replay::Options {
            from: None,
            margin: std::time::Duration::ZERO,
            swap: false,
            restart: true,
            new_log: false,
        };
        let rep =
            crate::projector::replay::run(c, showcase, kafka, &opts, CancellationToken::new())
                .await
                .map_err(fail)?;
        eprintln!(
            "bench: replay {}: {} events in {:.1} s: {:.0} events/s end to end, {:.0} events/s applying",
            r + 1,
            rep.events,
            rep.seconds,
            rep.events_per_s,
            rep.events as f64 / rep.apply_seconds.max(rep.gather_seconds).max(1e-9)
        );
        replay_events = rep.events;
        replay_eps.push(rep.events_per_s);
        apply_eps.push(rep.events as f64 / rep.apply_seconds.max(rep.gather_seconds).max(1e-9));
    }
    Ok((replay_events, replay_eps, apply_eps))
}

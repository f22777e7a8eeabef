//! The benchmarks' reports as people read them (`--json` prints the
//! structs themselves).

use std::fmt;

use super::{CaptureBench, ProjectorBench};

impl fmt::Display for CaptureBench {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let b = self;
        writeln!(
            f,
            "capture benchmark ({} changes, {:.1} MB of WAL, {} runs; the broker held {} topics, {} partitions, {} messages)",
            b.changes,
            b.wal_bytes as f64 / 1e6,
            b.runs.len(),
            b.broker_topics,
            b.broker_partitions,
            b.broker_messages
        )?;
        for (i, ((r, c), s)) in b.runs.iter().zip(&b.streaming_runs).enumerate() {
            writeln!(
                f,
                "  run {}: pg_recvlogical {r:.3} s   capture (WAL → Kafka acked) {c:.3} s, of which streaming {s:.3} s",
                i + 1
            )?;
            if let (Some(rc), Some(t)) = (b.recvlogical_cpu.get(i), b.capture_timed.get(i)) {
                let cc = &t.cpu;
                writeln!(
                    f,
                    "         CPU s: pg_recvlogical {:.2} + journal server {:.2} + broker (idle) {:.2} = {:.2} ({:.0} % of {cores} cores)   capture {:.2} + journal server {:.2} + broker {:.2} = {:.2} ({:.0} % of {cores} cores)",
                    rc.own_s,
                    rc.journal_s,
                    rc.broker_s,
                    rc.total(),
                    busy(rc.total(), *r),
                    cc.own_s,
                    cc.journal_s,
                    cc.broker_s,
                    cc.total(),
                    busy(cc.total(), *c),
                    cores = cores(),
                )?;
                writeln!(
                    f,
                    "         capture's stream loop: reading {:.3} s, handling {:.3} s (consent flushes landing {:.3} s in {}, {} records; their journal queries, beside the stream, {:.3} s); last message to confirmed {:.3} s",
                    t.reading_s,
                    t.handling_s,
                    t.flush_s,
                    t.flushes,
                    t.flush_records,
                    t.flush_query_s,
                    t.tail_s,
                )?;
            }
        }
        writeln!(
            f,
            "  median: pg_recvlogical {:.3} s, capture {:.3} s; throughput ratio {:.2} (target ≥ 0.65); capture {:.0} changes/s",
            b.recvlogical_median_s, b.capture_median_s, b.throughput_ratio, b.capture_changes_per_s
        )?;
        writeln!(
            f,
            "  streaming only (capture's start-up left out): median {:.3} s, ratio {:.2} to pg_recvlogical (which includes its own start-up)",
            b.streaming_median_s, b.streaming_ratio
        )?;
        if !b.capture_timed.is_empty() {
            let med = |get: &dyn Fn(&super::Timed) -> f64| {
                super::median(&mut b.capture_timed.iter().map(get).collect::<Vec<_>>())
            };
            let cpu = med(&|t| t.cpu.total());
            writeln!(
                f,
                "  capture's own CPU per record published, while streaming: {:.2} µs (median; {:.0} records a run: events, restricted-topic detail and tombstones; target ≤ 3 µs; start-up {:.2} CPU s a run on top)",
                med(&|t| t.own_us_per_record()),
                med(&|t| t.records as f64),
                med(&|t| t.cpu.own_s - t.streaming_own_s),
            )?;
            writeln!(
                f,
                "  where capture's time went (medians): reading the stream {:.3} s, handling {:.3} s, of which consent flushes landing {:.3} s ({:.0} records; their journal queries, beside the stream, {:.3} s); last message to confirmed {:.3} s",
                med(&|t| t.reading_s),
                med(&|t| t.handling_s),
                med(&|t| t.flush_s),
                med(&|t| t.flush_records as f64),
                med(&|t| t.flush_query_s),
                med(&|t| t.tail_s),
            )?;
            writeln!(
                f,
                "  CPU bound: a capture run kept capture ({:.2} s), the journal's server ({:.2} s) and the broker ({:.2} s) busy for {cpu:.2} CPU s (medians); on {} cores no run can take under {:.3} s, so on this machine the ratio cannot pass {:.2} with this CPU use (the CPU-bound ceiling); the median run reached {:.2} of it (target ≥ 0.9)",
                med(&|t| t.cpu.own_s),
                med(&|t| t.cpu.journal_s),
                med(&|t| t.cpu.broker_s),
                cores(),
                cpu / cores() as f64,
                b.recvlogical_median_s / (cpu / cores() as f64),
                b.throughput_ratio / (b.recvlogical_median_s / (cpu / cores() as f64)),
            )?;
        }
        writeln!(
            f,
            "  free-text scrubbing: capture {:.3} s with, {:.3} s without (medians, same range, same run); with ÷ without {:.2}",
            b.capture_median_s, b.unscrubbed_median_s, b.scrub_cost_ratio
        )?;
        writeln!(
            f,
            "  commit → ack latency at {} changes/s (achieved {:.0}/s, {} transactions): p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms (target p99 ≤ 250 ms)",
            b.latency_rate_target, b.latency_rate_achieved, b.latency_transactions, b.latency_p50_ms, b.latency_p99_ms, b.latency_max_ms
        )?;
        if let Some(m) = &b.steady {
            let med = |get: &dyn Fn(&super::Timed) -> f64| {
                super::median(&mut m.capture_timed.iter().map(get).collect::<Vec<_>>())
            };
            let cpu = med(&|t| t.cpu.total());
            writeln!(
                f,
                "  steady-state mix (consent changes × {}; {} changes, {:.1} MB of WAL, {} runs): pg_recvlogical {:.3} s, capture {:.3} s; ratio {:.2} from start, {:.2} streaming; own CPU {:.2} µs per record ({:.0} records); CPU-bound ceiling {:.2}; commit → ack at {}/s p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
                m.consent_share,
                m.changes,
                m.wal_bytes as f64 / 1e6,
                m.runs.len(),
                m.recvlogical_median_s,
                m.capture_median_s,
                m.throughput_ratio,
                m.streaming_ratio,
                med(&|t| t.own_us_per_record()),
                med(&|t| t.records as f64),
                m.recvlogical_median_s / (cpu / cores() as f64),
                b.latency_rate_target,
                m.latency_p50_ms,
                m.latency_p99_ms,
                m.latency_max_ms,
            )?;
        }
        if let Some(l) = &b.load {
            for (i, (r, c)) in l.runs.iter().enumerate() {
                writeln!(
                    f,
                    "  initial load run {}: COPY of the same rows {r:.2} s   capture (snapshot → Kafka acked) {c:.2} s",
                    i + 1
                )?;
            }
            writeln!(
                f,
                "  initial load of {} rows: median COPY {:.2} s, capture {:.2} s ({:.0} rows/s, target ≥ 100,000); ratio to COPY {:.2}",
                l.rows, l.copy_median_s, l.capture_median_s, l.capture_rows_per_s, l.ratio
            )?;
        }
        if let Some(t) = &b.big_txn {
            writeln!(
                f,
                "  one transaction of {} row changes (mass enrolment of {} students, committed in {:.1} s): confirmed {:.1} s after commit; capture RSS idle {:.1} MB, peak {:.1} MB (target < 300 MiB)",
                t.row_changes, t.students, t.commit_s, t.confirm_s, t.idle_rss_mb, t.peak_rss_mb
            )?;
        }
        Ok(())
    }
}

impl fmt::Display for ProjectorBench {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let b = self;
        writeln!(
            f,
            "projector benchmark (initial load: {} events projected at {:.0} events/s)",
            b.initial_events, b.initial_events_per_s
        )?;
        for r in &b.rates {
            let ach: Vec<String> = r.achieved.iter().map(|a| format!("{a:.0}")).collect();
            writeln!(
                f,
                "  {:>5}/s (achieved {}): commit → visible p50 {:.0} ms, p99 {:.0} ms, max {:.0} ms; all visible {:.1} s after the workload ended (medians of {} runs)",
                r.target,
                ach.join(", "),
                r.median_p50_ms,
                r.median_p99_ms,
                r.median_max_ms,
                r.median_all_visible_after_s,
                r.p99_ms.len()
            )?;
        }
        writeln!(
            f,
            "  highest achieved rate with p99 < 10 s: {} (target at 2,000/s: p99 < 2 s)",
            b.max_rate_p99_under_10s
                .map(|r| format!("{r}/s"))
                .unwrap_or_else(|| "none".into())
        )?;
        if b.replay_events_per_s.is_empty() {
            return Ok(());
        }
        writeln!(
            f,
            "  replay of {} events: median {:.0} events/s end to end, {:.0} events/s while applying (target ≥ 50,000)",
            b.replay_events, b.replay_median_events_per_s, b.replay_apply_median_events_per_s
        )
    }
}

fn cores() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// CPU seconds over `wall` seconds as a share of the machine's cores.
fn busy(cpu_s: f64, wall_s: f64) -> f64 {
    100.0 * cpu_s / (wall_s * cores() as f64)
}

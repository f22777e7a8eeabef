//! The large-transaction phase of `vitrina bench capture`: capture's peak
//! memory across one September mass enrolment committed in a single
//! transaction.

use std::time::{Duration, Instant};

use super::capture::{BigTxnFigures, Knobs};
use super::{fail, BenchError};
use crate::capture;
use crate::config::{Config, WorkloadConfig};
use crate::connections::Connections;
use crate::pg;
use crate::region::workload;

/// KiB → MB of one line (`VmRSS:`, `VmHWM:`) of /proc/<pid>/status.
fn proc_status_mb(pid: u32, field: &str) -> Option<f64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = text.lines().find(|l| l.starts_with(field))?;
    let kib: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024.0 / 1e6)
}

/// `vitrina capture` as a child streaming from a new slot; one mass
/// enrolment of `students` in a single transaction; the child's peak RSS
/// once the transaction is confirmed. The students and orders it added are
/// deleted afterwards (the slot is gone by then).
pub(super) async fn big_transaction(
    cfg: &Config,
    conns: &Connections,
    tag: &str,
    knobs: &Knobs,
) -> Result<BigTxnFigures, BenchError> {
    let sql = pg::connect(&conns.journal().map_err(fail)?.config())
        .await
        .map_err(fail)?;
    let slot = format!("{tag}_big");
    let max_ids: (i64, i64) = {
        let r = sql
            .query_one(
                "SELECT (SELECT coalesce(max(id), 0) FROM journal.students),
                        (SELECT coalesce(max(id), 0) FROM journal.enrolment_orders)",
                &[],
            )
            .await
            .map_err(fail)?;
        (r.get(0), r.get(1))
    };
    let log = cfg.state_dir.join(format!("bench-capture-{tag}.log"));
    let out = std::fs::File::create(&log).map_err(fail)?;
    let mut cmd = tokio::process::Command::new(std::env::current_exe().map_err(fail)?);
    if let Some(f) = &knobs.config_file {
        cmd.arg("--config").arg(f);
    }
    let mut child = cmd
        .arg("capture")
        .env("VITRINA_STATE_DIR", &cfg.state_dir)
        .env("VITRINA_CAPTURE__SLOT", &slot)
        .env("VITRINA_CAPTURE__PUBLICATION", tag)
        .env("VITRINA_CAPTURE__TOPIC_PREFIX", format!("{tag}-big"))
        .env("VITRINA_CAPTURE__SNAPSHOT", "false")
        .env("VITRINA_CAPTURE__METRICS_LISTEN", "127.0.0.1:0")
        .env("VITRINA_LOG", "warn,vitrina=info")
        .stdout(out.try_clone().map_err(fail)?)
        .stderr(out)
        .kill_on_drop(true)
        .spawn()
        .map_err(fail)?;
    let pid = child.id().ok_or_else(|| fail("capture child has no pid"))?;
    // Streaming: the slot exists and its walsender is past the start.
    let slot_now = || async {
        capture::preflight::slot_now(&sql, &slot)
            .await
            .map_err(fail)
            .map(Option::unwrap_or_default)
    };
    let deadline = Instant::now() + Duration::from_secs(120);
    while !slot_now().await?.streaming {
        if Instant::now() > deadline || child.try_wait().map_err(fail)?.is_some() {
            return Err(fail(format!(
                "capture child did not start streaming; see {}",
                log.display()
            )));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let idle = proc_status_mb(pid, "VmRSS:").unwrap_or(f64::NAN);
    eprintln!(
        "bench: mass enrolment of {} students in one transaction (capture idle at {idle:.1} MB RSS)",
        knobs.big_txn_students
    );
    let w = WorkloadConfig {
        rate: 1,
        duration_s: 0,
        sessions: 1,
        mass_enrolment: knobs.big_txn_students,
        seed: 13,
        ..Default::default()
    };
    let t0 = Instant::now();
    let report = workload::run(&conns.journal().map_err(fail)?.config(), &w, false)
        .await
        .map_err(fail)?;
    let commit_s = t0.elapsed().as_secs_f64();
    let end: String = sql
        .query_one("SELECT pg_current_wal_insert_lsn()::text", &[])
        .await
        .map_err(fail)?
        .get(0);
    let end = crate::lsn::parse(&end).unwrap_or(u64::MAX);
    let t1 = Instant::now();
    let deadline = Instant::now() + Duration::from_secs(1800);
    while slot_now().await?.confirmed_flush < Some(end) {
        if Instant::now() > deadline || child.try_wait().map_err(fail)?.is_some() {
            return Err(fail(format!(
                "capture child did not confirm the transaction; see {}",
                log.display()
            )));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let confirm_s = t1.elapsed().as_secs_f64();
    let peak = proc_status_mb(pid, "VmHWM:").unwrap_or(f64::NAN);
    let _ = child.kill().await;
    let _ = sql
        .execute("SELECT pg_drop_replication_slot($1)", &[&slot])
        .await;
    let _ = sql
        .execute(
            "DELETE FROM journal.enrolment_orders WHERE id > $1",
            &[&max_ids.1],
        )
        .await;
    let _ = sql
        .execute("DELETE FROM journal.students WHERE id > $1", &[&max_ids.0])
        .await;
    Ok(BigTxnFigures {
        students: knobs.big_txn_students,
        row_changes: report.mass_enrolment_changes,
        commit_s,
        confirm_s,
        idle_rss_mb: idle,
        peak_rss_mb: peak,
    })
}

//! `vitrina status`: what a person on call needs at a glance — capture's
//! position and lag, the slot's WAL retention, per-entity freshness and
//! SLA state, consumer lag, dead letters, quality. Each part reads one
//! source (journal server, showcase database, Kafka); a source that cannot
//! be reached is reported as such, never hides the others.

use std::collections::BTreeMap;

use serde::Serialize;

use crate::config::Config;
use crate::connections::Connections;
use crate::kafka;
use crate::kafka::{end_offsets, event_topics};

#[derive(Debug, Default, Serialize)]
pub struct Pipeline {
    pub capture: Option<Capture>,
    pub showcase: Option<Showcase>,
    pub dead_letters: Option<i64>,
    /// Why a part is missing.
    pub problems: Vec<String>,
}

#[derive(Debug, Serialize)]
pub struct Capture {
    pub slot: String,
    pub active_pid: Option<i32>,
    pub confirmed_lsn: Option<String>,
    pub lag_bytes: Option<i64>,
    pub retained_wal_bytes: Option<i64>,
    pub wal_status: Option<String>,
    /// Re-snapshots, from capture's `/metrics` (None: not reachable).
    pub resnapshots: Option<Resnapshots>,
}

/// What capture's metrics say of its re-snapshots.
#[derive(Debug, Default, Serialize, PartialEq)]
pub struct Resnapshots {
    /// Not finished.
    pub running: u64,
    /// Rows re-read since capture started, by table.
    pub rows: BTreeMap<String, u64>,
}

#[derive(Debug, Serialize)]
pub struct Showcase {
    pub fresh_as_of: Option<chrono::DateTime<chrono::Utc>>,
    pub freshness_s: Option<f64>,
    pub sla_state: Option<String>,
    pub entities: Vec<EntityStatus>,
    pub consumer_lag_messages: Option<i64>,
    pub quality_violations: Option<i64>,
    pub pending_references: Option<i64>,
}

#[derive(Debug, Serialize)]
pub struct EntityStatus {
    pub entity: String,
    pub freshness_s: Option<f64>,
    pub sla_state: String,
    pub consumer_lag_messages: Option<i64>,
}

/// Reads the pipeline's state from its sources.
pub async fn pipeline(cfg: &Config, conns: &Connections) -> Pipeline {
    let mut out = Pipeline::default();
    let c = &cfg.capture;
    match connect(conns.journal()).await {
        Ok(j) => {
            let r = j
                .query_opt(
                    "SELECT active_pid, confirmed_flush_lsn::text,
                            pg_wal_lsn_diff(pg_current_wal_lsn(), confirmed_flush_lsn)::int8,
                            pg_wal_lsn_diff(pg_current_wal_lsn(), restart_lsn)::int8, wal_status
                       FROM pg_replication_slots WHERE slot_name = $1",
                    &[&c.slot],
                )
                .await;
            match r {
                Ok(Some(r)) => {
                    out.capture = Some(Capture {
                        slot: c.slot.clone(),
                        active_pid: r.get(0),
                        confirmed_lsn: r.get(1),
                        lag_bytes: r.get(2),
                        retained_wal_bytes: r.get(3),
                        wal_status: r.get(4),
                        resnapshots: scrape(&c.metrics_listen).await.map(|m| resnapshots(&m)),
                    })
                }
                Ok(None) => out.problems.push(format!(
                    "no replication slot `{}`: capture has not run yet (`vitrina capture`)",
                    c.slot
                )),
                Err(e) => out.problems.push(format!("journal: {e}")),
            }
        }
        Err(e) => out.problems.push(format!("journal database: {e}")),
    }

    let ends = match conns.kafka() {
        Ok(k) => {
            let mut topics = event_topics(&c.topic_prefix);
            topics.push(kafka::dead_letter_topic(&c.topic_prefix));
            end_offsets(k, &topics).await.ok()
        }
        Err(_) => None,
    };
    if ends.is_none() {
        out.problems.push("Kafka: not reachable".into());
    }
    let dlt = kafka::dead_letter_topic(&c.topic_prefix);
    out.dead_letters = ends.as_ref().map(|e| {
        e.iter()
            .filter(|((t, _), _)| *t == dlt)
            .map(|(_, o)| *o)
            .sum()
    });

    match connect(conns.showcase()).await {
        Ok(s) => match showcase(&s, cfg, ends.as_ref()).await {
            Ok(v) => out.showcase = Some(v),
            Err(e) => out.problems.push(format!(
                "showcase: {e} (has the projector run? `vitrina project`)"
            )),
        },
        Err(e) => out.problems.push(format!("showcase database: {e}")),
    }
    out
}

async fn showcase(
    s: &tokio_postgres::Client,
    cfg: &Config,
    ends: Option<&std::collections::HashMap<(String, i32), i64>>,
) -> Result<Showcase, tokio_postgres::Error> {
    let st = s
        .query_opt(
            "SELECT fresh_as_of, extract(epoch FROM now() - fresh_as_of)::float8, sla_state FROM showcase.status",
            &[],
        )
        .await?;
    let applied: BTreeMap<(String, i32), i64> = s
        .query(
            "SELECT topic, partition, next_offset FROM showcase.consumer_offsets",
            &[],
        )
        .await?
        .iter()
        .map(|r| ((r.get(0), r.get(1)), r.get(2)))
        .collect();
    let lag_of = |topic: &str| -> Option<i64> {
        ends.map(|e| {
            e.iter()
                .filter(|((t, _), _)| t == topic)
                .map(|(k, end)| (end - applied.get(k).copied().unwrap_or(0)).max(0))
                .sum()
        })
    };
    let entities = s
        .query(
            "SELECT entity, extract(epoch FROM now() - fresh_as_of)::float8, sla_state
               FROM showcase.entity_freshness ORDER BY entity",
            &[],
        )
        .await?
        .iter()
        .map(|r| {
            let entity: String = r.get(0);
            let topic = kafka::topic(&cfg.capture.topic_prefix, &entity);
            let age: Option<f64> = r.get(1);
            EntityStatus {
                consumer_lag_messages: lag_of(&topic),
                entity,
                freshness_s: age,
                // From the age now, not the state stored when the
                // projector last ran: a stopped projector stores nothing.
                sla_state: sla(age, cfg).into(),
            }
        })
        .collect::<Vec<_>>();
    let total_lag = if ends.is_some() {
        Some(
            event_topics(&cfg.capture.topic_prefix)
                .iter()
                .filter_map(|t| lag_of(t))
                .sum(),
        )
    } else {
        None
    };
    let q = s
        .query_one(
            "SELECT sum(violations) FILTER (WHERE dimension <> 'actuality')::int8, sum(pending)::int8 FROM showcase.quality",
            &[],
        )
        .await?;
    Ok(Showcase {
        fresh_as_of: st.as_ref().and_then(|r| r.get(0)),
        freshness_s: st.as_ref().and_then(|r| r.get(1)),
        sla_state: st.as_ref().map(|r| sla(r.get(1), cfg).to_string()),
        entities,
        consumer_lag_messages: total_lag,
        quality_violations: q.get(0),
        pending_references: q.get(1),
    })
}

fn sla(age: Option<f64>, cfg: &Config) -> &'static str {
    crate::projector::Sla::of(age, cfg.projector.at_risk_s, cfg.projector.sla_budget_s).as_str()
}

fn opt<T: std::fmt::Display>(v: Option<T>) -> String {
    v.map(|v| v.to_string()).unwrap_or_else(|| "-".into())
}

fn bytes(v: Option<i64>) -> String {
    match v {
        None => "-".into(),
        Some(b) if b >= 1 << 30 => format!("{:.1} GiB", b as f64 / (1u64 << 30) as f64),
        Some(b) if b >= 1 << 20 => format!("{:.1} MiB", b as f64 / (1u64 << 20) as f64),
        Some(b) => format!("{b} B"),
    }
}

fn secs(v: Option<f64>) -> String {
    v.map(|s| format!("{s:.1} s"))
        .unwrap_or_else(|| "unknown".into())
}

/// The on-call view as text.
pub fn render(p: &Pipeline, budget_s: u64) -> String {
    let mut o = String::new();
    o.push_str("\nCAPTURE\n");
    match &p.capture {
        Some(c) => o.push_str(&format!(
            "  slot {:<20} {}  confirmed {}  lag {}  WAL retained {}  ({})\n",
            c.slot,
            match c.active_pid {
                Some(pid) => format!("streaming (walsender {pid})"),
                None => "NOT STREAMING".into(),
            },
            opt(c.confirmed_lsn.as_deref()),
            bytes(c.lag_bytes),
            bytes(c.retained_wal_bytes),
            opt(c.wal_status.as_deref()),
        )),
        None => o.push_str("  -\n"),
    }
    if let Some(r) = p.capture.as_ref().and_then(|c| c.resnapshots.as_ref()) {
        let rows: Vec<String> = r.rows.iter().map(|(t, n)| format!("{t} {n}")).collect();
        o.push_str(&format!(
            "  re-snapshots running {}; rows re-read since start: {}\n",
            r.running,
            if rows.is_empty() {
                "-".into()
            } else {
                rows.join(", ")
            }
        ));
    }
    o.push_str(&format!("\nSHOWCASE (budget {budget_s} s)\n"));
    match &p.showcase {
        Some(s) => {
            o.push_str(&format!(
                "  fresh as of {}  freshness {}  SLA {}  consumer lag {} messages\n",
                opt(s.fresh_as_of.map(|t| t.format("%Y-%m-%d %H:%M:%S UTC"))),
                secs(s.freshness_s),
                s.sla_state.as_deref().unwrap_or("-").to_uppercase(),
                opt(s.consumer_lag_messages)
            ));
            o.push_str(&format!(
                "  {:<22} {:>12}  {:<9} {:>12}\n",
                "ENTITY", "FRESHNESS", "SLA", "LAG (MSGS)"
            ));
            for e in &s.entities {
                o.push_str(&format!(
                    "  {:<22} {:>12}  {:<9} {:>12}\n",
                    e.entity,
                    secs(e.freshness_s),
                    e.sla_state,
                    opt(e.consumer_lag_messages)
                ));
            }
            o.push_str(&format!(
                "  quality: {} violations, {} references pending (`vitrina quality`)\n",
                opt(s.quality_violations),
                opt(s.pending_references)
            ));
        }
        None => o.push_str("  -\n"),
    }
    o.push_str(&format!("\nDEAD LETTERS  {}\n", opt(p.dead_letters)));
    for pr in &p.problems {
        o.push_str(&format!("! {pr}\n"));
    }
    o
}

/// Capture's `/metrics` text at `addr`, if it answers within a second.
async fn scrape(addr: &str) -> Option<String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let fetch = async {
        let mut s = tokio::net::TcpStream::connect(addr).await.ok()?;
        s.write_all(b"GET /metrics HTTP/1.0\r\nHost: vitrina\r\n\r\n")
            .await
            .ok()?;
        let mut body = String::new();
        s.read_to_string(&mut body).await.ok()?;
        Some(body)
    };
    tokio::time::timeout(std::time::Duration::from_secs(1), fetch)
        .await
        .ok()
        .flatten()
}

/// The re-snapshot series of a Prometheus text exposition.
pub fn resnapshots(metrics: &str) -> Resnapshots {
    let mut r = Resnapshots::default();
    for line in metrics.lines() {
        let Some((series, value)) = line.rsplit_once(' ') else {
            continue;
        };
        let value = value.parse::<f64>().unwrap_or(0.0) as u64;
        if series == crate::observability::CAPTURE_RESNAPSHOT_JOBS {
            r.running = value;
        } else if let Some(labels) = series
            .strip_prefix(crate::observability::CAPTURE_RESNAPSHOT_ROWS)
            .and_then(|l| l.strip_prefix('{'))
        {
            if let Some(table) = labels
                .split(',')
                .find_map(|l| l.strip_prefix("table=\""))
                .and_then(|t| t.split('"').next())
            {
                r.rows.insert(table.to_string(), value);
            }
        }
    }
    r
}

async fn connect(
    ep: Result<&crate::connections::PgEndpoint, crate::connections::ConnectionError>,
) -> Result<tokio_postgres::Client, String> {
    let ep = ep.map_err(|e| e.to_string())?;
    crate::pg::connect(&ep.config())
        .await
        .map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resnapshots_are_read_from_the_metrics_text() {
        let text = "# TYPE vitrina_capture_resnapshot_jobs gauge\nvitrina_capture_resnapshot_jobs 2\nvitrina_capture_resnapshot_rows_total{table=\"journal.grades\"} 4500\nvitrina_capture_events_total{entity=\"grade\"} 9\n";
        let r = resnapshots(text);
        assert_eq!(r.running, 2);
        assert_eq!(r.rows.get("journal.grades"), Some(&4500));
        assert_eq!(r.rows.len(), 1);
    }
}

//! Freshness: how old the newest change is that may still be missing from
//! the showcase, overall and per entity, against the SLA budget (the law's
//! 10 minutes); and consumer lag per partition.
//!
//! Invariants:
//! - `fresh_as_of` is the oldest of the latest watermarks over the
//!   partitions of the topics capture publishes: every journal change
//!   committed up to it is visible. It stops moving when capture stops, and
//!   moves with heartbeats when the journal is idle.
//! - A topic whose partitions have not all reported a watermark has no
//!   freshness: unknown counts as breached.
//! - The topics that count are those capture publishes: every one it
//!   writes to gets watermarks, so a topic without any watermark and
//!   without any record (an entity the region's mapping leaves out) is not
//!   expected. A topic holding records but no watermark applied yet (the
//!   first catch-up reaches topics one batch at a time) is unknown, not
//!   absent: otherwise the state reads ok before that topic is applied,
//!   then breached when its first partition is. With no watermark at all
//!   yet, freshness is unknown.
//! - Unknown is reported as breached (readiness down, state metric), but
//!   it is not a measured breach: the breach counter and the error log
//!   are for a known age over the budget.

use std::collections::HashMap;

use super::{ProjectorError, Tp};
use crate::events::ENTITIES;
use crate::kafka;
use crate::observability as obs;
use crate::pg::PgError;

/// SLA state of a freshness age.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sla {
    Ok,
    AtRisk,
    Breached,
}

impl Sla {
    pub fn of(age_s: Option<f64>, at_risk_s: u64, budget_s: u64) -> Sla {
        match age_s {
            Some(a) if a < at_risk_s as f64 => Sla::Ok,
            Some(a) if a < budget_s as f64 => Sla::AtRisk,
            _ => Sla::Breached,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Sla::Ok => "ok",
            Sla::AtRisk => "at_risk",
            Sla::Breached => "breached",
        }
    }
}

/// The SLA state, and when it is unknown, the first topic that makes it so.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Freshness {
    pub sla: Sla,
    /// A topic without a watermark on every partition yet, when no known
    /// age already breaches the budget.
    pub unknown: Option<String>,
}

/// Recomputes `fresh_as_of` and the SLA state, overall and per entity, in
/// the showcase and as metrics. A topic whose partitions have not all
/// reported a watermark yet has no freshness (breached); so has one that
/// holds records (`ends`: the log's end offsets) but no watermark at all.
pub async fn update_freshness(
    client: &tokio_postgres::Client,
    schema: &str,
    prefix: &str,
    partitions_per_topic: i64,
    ends: &HashMap<Tp, i64>,
    p: &crate::config::ProjectorConfig,
) -> Result<Freshness, ProjectorError> {
    let rows = client
        .query(
            &format!(
                "SELECT topic, count(*), extract(epoch FROM now() - min(commit_time))::float8
                   FROM {schema}.watermarks GROUP BY topic"
            ),
            &[],
        )
        .await
        .map_err(PgError::query("reading watermarks"))?;
    let by_topic: HashMap<String, Option<f64>> = rows
        .iter()
        .map(|r| {
            let (t, n, age): (String, i64, Option<f64>) = (r.get(0), r.get(1), r.get(2));
            // Every partition the log has (a topic may have more than
            // capture.partitions: pre-created, or grown since).
            let want = ends
                .keys()
                .filter(|(topic, _)| *topic == t)
                .count()
                .max(partitions_per_topic as usize) as i64;
            (t, if n >= want { age } else { None })
        })
        .collect();
    let Assessed {
        overall,
        per_entity,
        sla,
        unknown,
    } = assess(&by_topic, ends, prefix, p);
    client
        .execute(
            &format!(
                "INSERT INTO {schema}.status (id, fresh_as_of, sla_state) VALUES (1, now() - make_interval(secs => $1), $2)
                 ON CONFLICT (id) DO UPDATE SET fresh_as_of = EXCLUDED.fresh_as_of, sla_state = EXCLUDED.sla_state, updated_at = now()"
            ),
            &[&overall, &sla.as_str()],
        )
        .await
        .map_err(PgError::query("updating the showcase status"))?;
    let names: Vec<&str> = per_entity.iter().map(|x| x.0).collect();
    let ages: Vec<Option<f64>> = per_entity.iter().map(|x| x.1).collect();
    let states: Vec<&str> = per_entity.iter().map(|x| x.2.as_str()).collect();
    client
        .execute(
            &format!(
                "INSERT INTO {schema}.entity_freshness (entity, fresh_as_of, sla_state)
                 SELECT e, now() - make_interval(secs => a), s FROM unnest($1::text[], $2::float8[], $3::text[]) AS x(e, a, s)
                 ON CONFLICT (entity) DO UPDATE SET fresh_as_of = EXCLUDED.fresh_as_of, sla_state = EXCLUDED.sla_state, updated_at = now()"
            ),
            &[&names, &ages, &states],
        )
        .await
        .map_err(PgError::query("updating the per-entity freshness"))?;
    if let Some(a) = overall {
        metrics::gauge!(obs::SHOWCASE_FRESHNESS).set(a);
    }
    for (name, age, _) in &per_entity {
        if let Some(a) = age {
            metrics::gauge!(obs::SHOWCASE_ENTITY_FRESHNESS, "entity" => *name).set(*a);
        }
    }
    for s in [Sla::Ok, Sla::AtRisk, Sla::Breached] {
        metrics::gauge!(obs::SHOWCASE_SLA_STATE, "state" => s.as_str()).set(if s == sla {
            1.0
        } else {
            0.0
        });
    }
    Ok(Freshness { sla, unknown })
}

/// What the watermarks say, before it is written down.
struct Assessed {
    overall: Option<f64>,
    per_entity: Vec<(&'static str, Option<f64>, Sla)>,
    sla: Sla,
    unknown: Option<String>,
}

/// Freshness from the age of the oldest latest watermark per topic (`None`:
/// not every partition has one) and the log's end offsets.
fn assess(
    by_topic: &HashMap<String, Option<f64>>,
    ends: &HashMap<Tp, i64>,
    prefix: &str,
    p: &crate::config::ProjectorConfig,
) -> Assessed {
    let mut overall: Option<f64> = (!by_topic.is_empty()).then_some(0.0);
    let mut per_entity: Vec<(&'static str, Option<f64>, Sla)> = Vec::new();
    for e in ENTITIES {
        let topic = kafka::topic(prefix, e.name);
        let age = match by_topic.get(&topic).copied() {
            Some(age) => age,
            None if holds_records(ends, &topic) => None,
            None => continue, // not published by capture
        };
        overall = match (overall, age) {
            (Some(o), Some(a)) => Some(o.max(a)),
            _ => None,
        };
        per_entity.push((e.name, age, Sla::of(age, p.at_risk_s, p.sla_budget_s)));
    }
    let sla = Sla::of(overall, p.at_risk_s, p.sla_budget_s);
    // A known age over the budget is a measured breach, whatever else is
    // unknown beside it.
    let aged = per_entity
        .iter()
        .any(|(_, age, _)| age.is_some_and(|a| a >= p.sla_budget_s as f64));
    let unknown = match per_entity.iter().find(|(_, age, _)| age.is_none()) {
        _ if aged => None,
        _ if by_topic.is_empty() => Some("every topic (no watermark applied yet)".into()),
        Some((name, _, _)) => Some(kafka::topic(prefix, name)),
        None => None,
    };
    Assessed {
        overall,
        per_entity,
        sla,
        unknown,
    }
}

/// Whether the log holds any record of `topic` (by the last end offsets read).
fn holds_records(ends: &HashMap<Tp, i64>, topic: &str) -> bool {
    ends.iter().any(|((t, _), end)| t == topic && *end > 0)
}

/// Publishes consumer lag per partition (messages and seconds); returns
/// the total in messages.
pub(super) fn report_lag(
    applied: &HashMap<Tp, i64>,
    last_time: &HashMap<Tp, i64>,
    ends: &HashMap<Tp, i64>,
) -> i64 {
    let now = chrono::Utc::now().timestamp_micros();
    let mut total = 0;
    for (tp, end) in ends {
        let at = applied.get(tp).copied().unwrap_or(0);
        let behind = (end - at).max(0);
        total += behind;
        // Seconds: how old the last applied record is while more wait; 0
        // when caught up.
        let secs = if behind == 0 {
            0.0
        } else {
            last_time
                .get(tp)
                .map(|t| (now - t).max(0) as f64 / 1e6)
                .unwrap_or(0.0)
        };
        let labels = [("topic", tp.0.clone()), ("partition", tp.1.to_string())];
        metrics::gauge!(obs::PROJECTOR_LAG_MESSAGES, &labels).set(behind as f64);
        metrics::gauge!(obs::PROJECTOR_LAG_SECONDS, &labels).set(secs);
    }
    total
}

/// Partitions the showcase has applied further than the log now reaches
/// (topic, partition, applied next offset, log end), worst first. A log
/// only grows, so any entry means the broker lost events. A partition the
/// broker does not list at all counts as ending at 0 when it lists others.
pub(super) fn log_shortfall(
    applied: &HashMap<Tp, i64>,
    ends: &HashMap<Tp, i64>,
) -> Vec<(Tp, i64, i64)> {
    if ends.is_empty() {
        return Vec::new();
    }
    let mut short: Vec<(Tp, i64, i64)> = applied
        .iter()
        .filter_map(|(tp, at)| {
            let end = ends.get(tp).copied().unwrap_or(0);
            (*at > end).then(|| (tp.clone(), *at, end))
        })
        .collect();
    short.sort_by_key(|(tp, at, end)| (end - at, tp.clone()));
    short
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_topic_with_records_but_no_watermark_yet_is_unknown_not_absent() {
        let p = crate::config::ProjectorConfig::default();
        let grade = kafka::topic("v", "grade");
        let lesson = kafka::topic("v", "lesson");
        let by_topic = HashMap::from([(grade.clone(), Some(3.0))]);
        let tp = |t: &str, n: i32| (t.to_string(), n);
        // The first catch-up applied grade's watermarks, not lesson's yet.
        let ends = HashMap::from([(tp(&grade, 0), 10), (tp(&lesson, 1), 4)]);
        let a = assess(&by_topic, &ends, "v", &p);
        assert_eq!(
            (a.sla, a.unknown.as_deref()),
            (Sla::Breached, Some(lesson.as_str()))
        );
        assert_eq!(a.overall, None);
        // A topic with neither (mapped out) is not expected.
        let ends = HashMap::from([(tp(&grade, 0), 10), (tp(&lesson, 1), 0)]);
        let a = assess(&by_topic, &ends, "v", &p);
        assert_eq!((a.sla, a.unknown), (Sla::Ok, None));
        assert_eq!(a.overall, Some(3.0));
        // A partition short of a watermark: unknown; a known age over the
        // budget beside it is a measured breach, not an unknown.
        let by_topic = HashMap::from([(grade.clone(), Some(3.0)), (lesson.clone(), None)]);
        let a = assess(&by_topic, &ends, "v", &p);
        assert_eq!(
            (a.sla, a.unknown.as_deref()),
            (Sla::Breached, Some(lesson.as_str()))
        );
        let by_topic = HashMap::from([(grade.clone(), Some(700.0)), (lesson.clone(), None)]);
        let a = assess(&by_topic, &ends, "v", &p);
        assert_eq!((a.sla, a.unknown), (Sla::Breached, None));
        // Nothing applied yet.
        let a = assess(&HashMap::new(), &HashMap::new(), "v", &p);
        assert_eq!(a.sla, Sla::Breached);
        assert!(a.unknown.is_some());
    }

    #[test]
    fn a_log_shorter_than_what_was_applied_is_found() {
        let tp = |t: &str, p: i32| (t.to_string(), p);
        let applied = HashMap::from([(tp("g", 0), 10), (tp("g", 1), 5), (tp("a", 0), 7)]);
        // Caught up, behind: nothing.
        let ends = HashMap::from([(tp("g", 0), 10), (tp("g", 1), 9), (tp("a", 0), 7)]);
        assert!(log_shortfall(&applied, &ends).is_empty());
        // A broker that answered nothing says nothing.
        assert!(log_shortfall(&applied, &HashMap::new()).is_empty());
        // Emptied partitions, and a topic no longer listed.
        let ends = HashMap::from([(tp("g", 0), 0), (tp("g", 1), 5)]);
        assert_eq!(
            log_shortfall(&applied, &ends),
            vec![(tp("g", 0), 10, 0), (tp("a", 0), 7, 0)]
        );
    }

    #[test]
    fn sla_state_follows_the_thresholds() {
        assert_eq!(Sla::of(Some(10.0), 300, 600), Sla::Ok);
        assert_eq!(Sla::of(Some(300.0), 300, 600), Sla::AtRisk);
        assert_eq!(Sla::of(Some(599.9), 300, 600), Sla::AtRisk);
        assert_eq!(Sla::of(Some(600.0), 300, 600), Sla::Breached);
        assert_eq!(
            Sla::of(None, 300, 600),
            Sla::Breached,
            "unknown freshness is no freshness"
        );
    }
}

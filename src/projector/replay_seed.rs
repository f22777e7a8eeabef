//! `replay --from T`: the shadow seeded from the live showcase, and the
//! offsets the replay reads from, with one boundary between them that is a
//! journal position, not a clock.
//!
//! ```text
//!   B = newest position among the live rows last changed before T
//!   seed:   live rows at or below B (and their held-back detail)
//!   stream: per partition, from an offset s with every record before s at or below B:
//!           s = min(first offset stamped at or after T − margin, the live showcase's offset),
//!           then stepped back while record s−1 is above B
//! ```
//!
//! Invariants:
//! - Every change above B is read by the replay: a partition's records are
//!   in commit order, so once record s−1 is at or below B, all before it
//!   are. Kafka's timestamps (capture's or the broker's clock) only choose
//!   where to start looking; a record stamped before T by a skewed clock is
//!   found by the step back.
//! - Every change the live showcase has not applied is read too: s is never
//!   past the live showcase's own offset.
//! - Reading a change twice is harmless: apply is idempotent by position.

use std::collections::HashMap;
use std::time::Duration;

use chrono::{DateTime, Utc};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::{Message, Offset, TopicPartitionList};

use super::replay::SHADOW;
use super::{ProjectorError, Tp};
use crate::config::Config;
use crate::connections::KafkaEndpoint;
use crate::events::codec::Registry;
use crate::events::{Message as Decoded, ENTITIES};
use crate::kafka::end_offsets_blocking;
use crate::pg::PgError;
use crate::showcase::{self, consent};

/// Seeds the shadow with the live rows at or below the boundary of `from`,
/// their held-back medical detail, and the offsets to read from.
pub(super) async fn seed_from(
    cfg: &Config,
    kafka: &KafkaEndpoint,
    c: &tokio_postgres::Client,
    from: DateTime<Utc>,
    margin: Duration,
) -> Result<(), ProjectorError> {
    let live = showcase::SCHEMA;
    let boundary = boundary_before(c, from).await?;
    for e in ENTITIES {
        c.execute(
            &format!(
                "INSERT INTO {SHADOW}.{t} SELECT * FROM {live}.{t} WHERE source_commit_lsn <= $1",
                t = e.name
            ),
            &[&boundary],
        )
        .await
        .map_err(PgError::query(format!("seeding {SHADOW}.{}", e.name)))?;
    }
    for m in consent::MEDICAL {
        c.execute(
            &format!(
                "INSERT INTO {sp}.{t}_medical SELECT p.* FROM {lp}.{t}_medical p JOIN {SHADOW}.{t} s USING (key)",
                sp = consent::private_schema(SHADOW),
                lp = consent::private_schema(live),
                t = m.entity
            ),
            &[],
        )
        .await
        .map_err(PgError::query(format!("seeding the medical detail of {}", m.entity)))?;
    }
    let applied: HashMap<Tp, i64> = c
        .query(
            &format!("SELECT topic, partition, next_offset FROM {live}.consumer_offsets"),
            &[],
        )
        .await
        .map_err(PgError::query("reading the live showcase's offsets"))?
        .into_iter()
        .map(|r| ((r.get(0), r.get(1)), r.get(2)))
        .collect();
    let kafka = kafka.clone();
    let topics = crate::kafka::event_topics(&cfg.capture.topic_prefix);
    let look_from = from - chrono::Duration::from_std(margin).unwrap_or_default();
    let at = tokio::task::spawn_blocking(move || {
        start_offsets(&kafka, &topics, look_from, boundary, &applied)
    })
    .await
    .map_err(|e| ProjectorError::Replay(e.to_string()))??;
    let stepped_back = at.iter().filter(|(_, _, stepped)| *stepped).count();
    for ((t, p), o, _) in &at {
        c.execute(
            &format!("INSERT INTO {SHADOW}.consumer_offsets (topic, partition, next_offset) VALUES ($1, $2, $3)"),
            &[t, p, o],
        )
        .await
        .map_err(PgError::query("seeding the replay offsets"))?;
    }
    let all: Option<Vec<i64>> = None;
    for m in consent::MEDICAL {
        c.execute(
            &consent::refresh_sql(m, SHADOW),
            &[&all, &Vec::<String>::new()],
        )
        .await
        .map_err(PgError::query("applying consent to the seeded rows"))?;
    }
    tracing::info!(
        %from,
        boundary = %crate::lsn::format(boundary as u64),
        margin_s = margin.as_secs(),
        partitions = at.len(),
        stepped_back,
        "shadow seeded with the live rows at or below the boundary; the log is read from above it"
    );
    Ok(())
}

/// The newest journal position among the live rows last changed before
/// `from` (0 when there is none).
async fn boundary_before(
    c: &tokio_postgres::Client,
    from: DateTime<Utc>,
) -> Result<i64, ProjectorError> {
    let live = showcase::SCHEMA;
    let newest: Vec<String> = ENTITIES
        .iter()
        .map(|e| {
            format!(
                "SELECT max(source_commit_lsn) AS m FROM {live}.{t} WHERE source_commit_time < $1",
                t = e.name
            )
        })
        .collect();
    let sql = format!(
        "SELECT coalesce(max(m), 0) FROM ({}) AS newest",
        newest.join(" UNION ALL ")
    );
    Ok(c.query_one(&sql, &[&from])
        .await
        .map_err(PgError::query("finding the replay's boundary position"))?
        .get(0))
}

/// Per partition of `topics`: the offset to read from, and whether it was
/// stepped back from where the timestamps pointed.
fn start_offsets(
    kafka: &KafkaEndpoint,
    topics: &[String],
    look_from: DateTime<Utc>,
    boundary: i64,
    applied: &HashMap<Tp, i64>,
) -> Result<Vec<(Tp, i64, bool)>, ProjectorError> {
    let ends = end_offsets_blocking(kafka, topics)?;
    let consumer: BaseConsumer = kafka
        .client_config()
        .set("log_level", "3")
        // Assigned, never subscribed nor committed: the id names no group.
        .set("group.id", "vitrina-reader")
        .set("enable.auto.commit", "false")
        .set("fetch.wait.max.ms", "10")
        .create()
        .map_err(|e| ProjectorError::kafka("creating a consumer", e))?;
    let mut tpl = TopicPartitionList::new();
    for (t, p) in ends.keys() {
        tpl.add_partition_offset(t, *p, Offset::Offset(look_from.timestamp_millis()))
            .map_err(|e| ProjectorError::kafka("listing partitions", e))?;
    }
    let found = consumer
        .offsets_for_times(tpl, Duration::from_secs(30))
        .map_err(|e| ProjectorError::kafka(format!("finding the offsets at {look_from}"), e))?;
    let registry = Registry::new();
    let mut out = Vec::new();
    for e in found.elements() {
        let k: Tp = (e.topic().to_string(), e.partition());
        let end = ends.get(&k).copied().unwrap_or(0);
        // No record stamped at or after it: from the end.
        let stamped = match e.offset() {
            Offset::Offset(o) => o.min(end),
            _ => end,
        };
        let start = stamped.min(applied.get(&k).copied().unwrap_or(0));
        let s = step_back(kafka, &consumer, &registry, &k, start, boundary)?;
        out.push((k, s, s < start));
    }
    Ok(out)
}

/// From `start`, steps back (1, 2, 4, … records) until the record before
/// the offset is at or below `boundary`, or the partition's start.
fn step_back(
    kafka: &KafkaEndpoint,
    consumer: &BaseConsumer,
    registry: &Registry,
    k: &Tp,
    start: i64,
    boundary: i64,
) -> Result<i64, ProjectorError> {
    let (mut s, mut step) = (start, 1i64);
    while s > 0 {
        match position_at(kafka, consumer, registry, k, s - 1)? {
            Some(p) if p <= boundary => break,
            _ => {
                tracing::info!(topic = %k.0, partition = k.1, offset = s - 1, "a record above the replay's boundary before the timestamps' offset; reading from earlier");
                s = (s - step).max(0);
                step *= 2;
            }
        }
    }
    Ok(s)
}

/// The journal position (commit LSN) of record `offset` of partition `k`;
/// `None` when it cannot be read (gone, skipped by the broker, or not an
/// event): the caller then looks earlier.
fn position_at(
    kafka: &KafkaEndpoint,
    consumer: &BaseConsumer,
    registry: &Registry,
    k: &Tp,
    offset: i64,
) -> Result<Option<i64>, ProjectorError> {
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset(&k.0, k.1, crate::kafka::fetch_position(kafka, offset))
        .map_err(|e| ProjectorError::kafka("positioning a reader", e))?;
    consumer
        .assign(&tpl)
        .map_err(|e| ProjectorError::kafka(format!("reading {}[{}]", k.0, k.1), e))?;
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while std::time::Instant::now() < deadline {
        let Some(m) = consumer.poll(Duration::from_millis(500)) else {
            continue;
        };
        let m = m.map_err(|e| ProjectorError::kafka(format!("reading {}[{}]", k.0, k.1), e))?;
        if m.offset() < offset {
            continue;
        }
        if m.offset() > offset {
            return Ok(None);
        }
        return Ok(
            match registry.decode_message(m.payload().unwrap_or_default()) {
                Ok(Decoded::Event(e)) => Some(e.source.commit_lsn as i64),
                Ok(Decoded::Watermark(w)) => Some(w.commit_lsn as i64),
                Err(_) => None,
            },
        );
    }
    Err(ProjectorError::Replay(format!(
        "{}[{}] offset {offset} was not read within 30 s; is the broker reachable?",
        k.0, k.1
    )))
}

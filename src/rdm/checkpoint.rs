//! The RDM client's checkpoint: what the service holds after a committed
//! batch, so a start reads a bounded amount whatever the history's length.
//!
//! ```text
//!   <prefix>.rdm.checkpoint (one partition, compacted)
//!     part/<i>    {batch, rows: [(table, key, row)]}    the service's rows, ≤ PART_BYTES each
//!     checkpoint  {batch, next_batch, next_delta, manifest_offset, journal_offset, parts}   last
//! ```
//!
//! Invariants:
//! - The header is written after its parts and names their offsets; a
//!   reader takes the newest header and reads exactly those offsets, so a
//!   crash between parts and header leaves the previous checkpoint whole.
//!   (Parts are keyed by index: on a compacting broker a crash there may
//!   overwrite an older part the previous header names; the reader then
//!   finds a part of another batch and falls back to the whole history.)
//! - A start reads the newest header (from the topic's last records), its
//!   parts, the upload journal after the batch's commit and the manifest
//!   after the deltas it covered: independent of how many batches came
//!   before.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::upload::{Live, LiveRow, UploadError};
use super::TABLES;
use crate::connections::KafkaEndpoint;
use crate::kafka;

/// A part's rows at most (bytes of JSON), well under a message's limit.
const PART_BYTES: usize = 256 * 1024;
/// How many of the topic's last records a start reads to find the header.
const TAIL: i64 = 64;
const HEADER_KEY: &str = "checkpoint";

pub fn topic(prefix: &str) -> String {
    format!("{prefix}.rdm.checkpoint")
}

/// Where the client stands after batch `batch` was committed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(super) struct Header {
    /// The last committed batch.
    pub batch: u64,
    pub next_batch: u64,
    /// The first delta no batch has covered.
    pub next_delta: u64,
    /// The manifest offset from which deltas ≥ `next_delta` are read.
    pub manifest_offset: i64,
    /// The upload journal's offset after the batch's commit.
    pub journal_offset: i64,
    /// Offsets of the parts in this topic.
    #[serde(default)]
    pub parts: Vec<i64>,
}

#[derive(Debug, Serialize, Deserialize)]
struct Part {
    batch: u64,
    rows: Vec<(String, String, LiveRow)>,
}

/// Writes a checkpoint of `live` at `header` (its `parts` filled in here).
pub(super) async fn write(
    producer: &kafka::Producer,
    prefix: &str,
    mut header: Header,
    live: &Live,
) -> Result<Header, UploadError> {
    let topic = topic(prefix);
    let mut parts: Vec<Part> = vec![Part {
        batch: header.batch,
        rows: Vec::new(),
    }];
    let mut size = 0;
    for (table, rows) in live {
        for (key, row) in rows {
            let n = table.len() + key.len() + row_size(row);
            if size + n > PART_BYTES && !parts.last().expect("one part").rows.is_empty() {
                parts.push(Part {
                    batch: header.batch,
                    rows: Vec::new(),
                });
                size = 0;
            }
            size += n;
            let last = parts.last_mut().expect("one part");
            last.rows
                .push((table.to_string(), key.clone(), row.clone()));
        }
    }
    header.parts.clear();
    for (i, part) in parts.iter().enumerate() {
        let body = serde_json::to_vec(part).expect("a checkpoint part serializes");
        let key = format!("part/{i}");
        let offset = kafka::append(producer, &topic, Some(&key), &body)
            .await
            .map_err(|e| UploadError::client("writing the RDM checkpoint", e))?;
        header.parts.push(offset);
    }
    let body = serde_json::to_vec(&header).expect("a checkpoint header serializes");
    kafka::append(producer, &topic, Some(HEADER_KEY), &body)
        .await
        .map_err(|e| UploadError::client("writing the RDM checkpoint", e))?;
    Ok(header)
}

fn row_size(r: &LiveRow) -> usize {
    serde_json::to_vec(r).map_or(0, |v| v.len()) + 8
}

/// The newest checkpoint and the service's rows it holds; `None` when
/// there is none, or when it cannot be read whole (the caller rebuilds
/// from the whole history then, and says so).
pub(super) fn read(
    kafka: &KafkaEndpoint,
    prefix: &str,
) -> Result<Option<(Header, Live)>, UploadError> {
    let topic = topic(prefix);
    let ends = kafka::end_offsets_blocking(kafka, std::slice::from_ref(&topic))?;
    let end = ends.get(&(topic.clone(), 0)).copied().unwrap_or(0);
    if end == 0 {
        return Ok(None);
    }
    let tail = kafka::read_ranges_blocking(
        kafka,
        &[(topic.clone(), 0, (end - TAIL).max(0), end)],
        Duration::from_secs(60),
    )?;
    let header = tail
        .get(&(topic.clone(), 0))
        .into_iter()
        .flatten()
        .rev()
        .find(|(_, k, _)| k.as_deref() == Some(HEADER_KEY.as_bytes()))
        .and_then(|(_, _, v)| serde_json::from_slice::<Header>(v.as_deref()?).ok());
    let Some(header) = header else {
        tracing::warn!(%topic, "no readable checkpoint among the topic's last records");
        return Ok(None);
    };
    let (Some(first), Some(last)) = (header.parts.first(), header.parts.last()) else {
        return Ok(Some((header, Live::new())));
    };
    let read = kafka::read_ranges_blocking(
        kafka,
        &[(topic.clone(), 0, *first, last + 1)],
        Duration::from_secs(120),
    )?;
    let records = read.get(&(topic.clone(), 0)).cloned().unwrap_or_default();
    let mut live = Live::new();
    for offset in &header.parts {
        let Some((_, _, Some(v))) = records.iter().find(|(o, _, _)| o == offset) else {
            tracing::warn!(%topic, offset, "a checkpoint part is missing");
            return Ok(None);
        };
        let part: Part = match serde_json::from_slice(v) {
            Ok(p) => p,
            Err(e) => {
                tracing::warn!(%topic, offset, error = %e, "a checkpoint part does not read");
                return Ok(None);
            }
        };
        if part.batch != header.batch {
            tracing::warn!(%topic, offset, "a checkpoint part of another batch");
            return Ok(None);
        }
        for (table, key, row) in part.rows {
            let Some(t) = TABLES.iter().find(|t| t.name == table) else {
                tracing::warn!(%topic, offset, table, "a checkpoint part names an unknown table");
                return Ok(None);
            };
            live.entry(t.name).or_default().insert(key, row);
        }
    }
    Ok(Some((header, live)))
}

//! `vitrina rdm upload`: the ProStore feed's committed deltas → the RDM
//! upload service, in micro-batches.
//!
//! Every `rdm.batch_interval_ms`, the deltas committed since the last batch
//! become batch B: per RDM table, the latest state of each key (a key is in
//! one file of a batch at most), compared with what the service already
//! accepted (`live`): changed rows go to `…/upload`, rows deleted in the
//! journal (or by a journal TRUNCATE) go to `…/delete` as the full row last
//! accepted. A file is sent, its status polled until the service accepts
//! or rejects it, and only then the next file goes. The upload journal
//! (`<prefix>.rdm.uploads`, one partition) records it:
//!
//! ```text
//!   plan B    {from_delta, to_delta, sent_at}         before the first file
//!   sent B f  {request_id, rows, digest}               after the service took file f
//!   done B f  {accepted, code, reason}                 its final status
//!   commit B                                           after the last file
//! ```
//!
//! No resend can duplicate: a file's content is a function of the plan and
//! of `live` before B (itself rebuilt from the journal's accepted files), so
//! a restart rebuilds the same files. A file with `sent` is not sent again:
//! its status is polled. Only a crash between the service's answer and the
//! `sent` record resends a file, byte-identical, whose rows the service
//! upserts or deletes by primary key to the same end.
//!
//! Rejected files (a 4xx answer, or status 4, 5 or 7) are dead-lettered
//! row by row with the service's reason, and the batch goes on.

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use apache_avro::types::Value;
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

use super::checkpoint;
use super::client::{Client, RdmError};
use super::{tables_of, Format, Operation, Rendered, Status, Table, TABLES};
use crate::config::Config;
use crate::connections::KafkaEndpoint;
use crate::error::{Backoff, Classify, ErrorKind};
use crate::events::fold::Fold;
use crate::kafka;
use crate::prostore::feed::{Commit, Manifest};
use crate::prostore::manifest_topic;

/// The upload journal of the RDM client.
pub fn journal_topic(prefix: &str) -> String {
    format!("{prefix}.rdm.uploads")
}

/// One record of the upload journal.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum Entry {
    Plan {
        batch: u64,
        from_delta: u64,
        to_delta: u64,
        sent_at_micros: i64,
        /// The settings that shape the batch's files, recorded so a
        /// restart rebuilds the same files whatever the settings are then
        /// (absent in plans written before they were recorded).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        shape: Option<BatchShape>,
    },
    Sent {
        batch: u64,
        file: String,
        request_id: String,
        rows: usize,
        digest: String,
    },
    Done {
        batch: u64,
        file: String,
        accepted: bool,
        /// The service's status code; none for an HTTP refusal.
        code: Option<i64>,
        reason: String,
    },
    Commit {
        batch: u64,
        committed_at_micros: i64,
    },
}

#[derive(Debug, thiserror::Error)]
pub enum UploadError {
    #[error(transparent)]
    Kafka(#[from] kafka::KafkaError),
    #[error(transparent)]
    Rdm(#[from] RdmError),
    #[error("{topic} offset {offset} is not readable: {reason}\nhint: {topic} is written only by vitrina ({what}); if it was edited, restore it, or start afresh on new topics (capture.topic_prefix)")]
    Journal {
        topic: String,
        offset: i64,
        what: &'static str,
        reason: String,
    },
    #[error("{topic} offset {offset}: an upload container file does not decode: {reason}")]
    Source {
        topic: String,
        offset: i64,
        reason: String,
    },
}

impl UploadError {
    pub(super) fn client(
        what: impl Into<String>,
        source: rdkafka::error::KafkaError,
    ) -> UploadError {
        UploadError::Kafka(kafka::KafkaError::op(what, source))
    }
}

impl Classify for UploadError {
    fn kind(&self) -> ErrorKind {
        match self {
            UploadError::Kafka(e) => e.kind(),
            UploadError::Rdm(e) => e.kind(),
            UploadError::Journal { .. } | UploadError::Source { .. } => ErrorKind::Definite,
        }
    }
}

/// One record of an upload topic: a row's latest state in a delta.
#[derive(Debug, Clone)]
struct Record {
    key: String,
    /// Contract fields by name; `None` for a delete.
    fields: Option<BTreeMap<String, Value>>,
    position: (u64, u64),
    commit_time_micros: i64,
}

/// One committed delta, as far as RDM tables care.
#[derive(Debug, Clone)]
struct Delta {
    number: u64,
    committed_at_micros: i64,
    /// (entity, position) of each journal TRUNCATE in the delta.
    truncate: Vec<(String, (u64, u64))>,
    /// Per entity, its records in the delta.
    records: BTreeMap<String, Vec<Record>>,
}

/// A row the service has accepted.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(super) struct LiveRow {
    rendered: Rendered,
    position: (u64, u64),
}

/// Per RDM table, per source key: what the service holds.
pub(super) type Live = BTreeMap<&'static str, BTreeMap<String, LiveRow>>;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum RowKind {
    Upsert,
    Delete,
    /// The old row of a key whose primary key changed: deleted from the
    /// service, while the key's new row is uploaded in the same batch.
    Replaced,
}

#[derive(Debug, Clone)]
struct FileRow {
    key: String,
    rendered: Rendered,
    position: (u64, u64),
    commit_time_micros: i64,
    kind: RowKind,
}

/// One file of a batch.
#[derive(Debug, Clone)]
struct File {
    table: &'static Table,
    op: Operation,
    part: usize,
    rows: Vec<FileRow>,
}

impl File {
    fn id(&self) -> String {
        format!("{}/{}/{}", self.table.name, self.op.as_str(), self.part)
    }
}

/// Columns whose texts decide whether a row changed (not the times).
fn same_content(t: &Table, a: &Rendered, b: &Rendered) -> bool {
    t.columns
        .iter()
        .zip(a.cells.iter().zip(&b.cells))
        .all(|(c, (x, y))| matches!(c.src, super::Src::Created | super::Src::Sent) || x == y)
}

/// What a batch changes in one RDM table, per source key.
enum Change<'a> {
    Upsert(Rendered, &'a Record),
    /// Deleted at (position, commit time).
    Delete((u64, u64), i64),
}

/// The latest record per key over `deltas` (minus truncates), rendered per
/// table, with the deletes a truncate makes of rows the service holds.
fn changes<'a>(
    deltas: &'a [Delta],
    live: &'a Live,
    fmt: &Format,
) -> BTreeMap<&'static str, BTreeMap<&'a str, Change<'a>>> {
    let mut fold: Fold<&str, &str, &Record, i64> = Fold::default();
    for d in deltas {
        for (entity, at) in &d.truncate {
            fold.truncate(entity.as_str(), *at, d.committed_at_micros);
        }
        for (entity, records) in &d.records {
            for r in records {
                fold.put(entity.as_str(), r.key.as_str(), r.position, r);
            }
        }
    }
    let mut out: BTreeMap<&'static str, BTreeMap<&str, Change>> = BTreeMap::new();
    for (entity, rows) in fold.entities() {
        for t in tables_of(entity) {
            let ch = out.entry(t.name).or_default();
            for (key, (_, r)) in rows {
                ch.insert(
                    key,
                    match &r.fields {
                        Some(f) => Change::Upsert(t.render(f, r.commit_time_micros, fmt), r),
                        None => Change::Delete(r.position, r.commit_time_micros),
                    },
                );
            }
        }
    }
    for (entity, (at, time)) in fold.truncates() {
        for t in tables_of(entity) {
            let ch = out.entry(t.name).or_default();
            for (key, held) in live.get(t.name).into_iter().flatten() {
                if held.position < *at && !ch.contains_key(key.as_str()) {
                    ch.insert(key.as_str(), Change::Delete(*at, *time));
                }
            }
        }
    }
    out
}

/// The files of a batch over `deltas`, given what the service holds.
fn build(deltas: &[Delta], live: &Live, fmt: &Format, max_rows: usize) -> Vec<File> {
    let changes = changes(deltas, live, fmt);
    let mut uploads = Vec::new();
    let mut deletes = Vec::new();
    for t in TABLES {
        let Some(ch) = changes.get(t.name) else {
            continue;
        };
        let held = live.get(t.name);
        let mut up = Vec::new();
        let mut del = Vec::new();
        for (key, c) in ch {
            let old = held.and_then(|h| h.get(*key));
            let row = |rendered: &Rendered, position, commit_time_micros, kind| FileRow {
                key: key.to_string(),
                rendered: rendered.clone(),
                position,
                commit_time_micros,
                kind,
            };
            match c {
                Change::Upsert(r, rec) => {
                    if old.is_some_and(|o| same_content(t, &o.rendered, r)) {
                        continue;
                    }
                    let (pos, time) = (rec.position, rec.commit_time_micros);
                    if let Some(o) = old.filter(|o| o.rendered.pk != r.pk) {
                        del.push(row(&o.rendered, pos, time, RowKind::Replaced));
                    }
                    up.push(row(r, pos, time, RowKind::Upsert));
                }
                Change::Delete(pos, time) => {
                    if let Some(o) = old {
                        del.push(row(&o.rendered, *pos, *time, RowKind::Delete));
                    }
                }
            }
        }
        let split = |op, rows: Vec<FileRow>, out: &mut Vec<File>| {
            for (part, chunk) in rows.chunks(max_rows).enumerate() {
                out.push(File {
                    table: t,
                    op,
                    part,
                    rows: chunk.to_vec(),
                });
            }
        };
        split(Operation::Upload, up, &mut uploads);
        split(Operation::Delete, del, &mut deletes);
    }
    // Parents before children on upload; children first on delete.
    deletes.reverse();
    uploads.extend(deletes);
    uploads
}

/// What an accepted file leaves in the service.
fn apply(live: &mut Live, f: &File) {
    let held = live.entry(f.table.name).or_default();
    for r in &f.rows {
        match r.kind {
            RowKind::Upsert => {
                held.insert(
                    r.key.clone(),
                    LiveRow {
                        rendered: r.rendered.clone(),
                        position: r.position,
                    },
                );
            }
            RowKind::Delete => {
                held.remove(&r.key);
            }
            RowKind::Replaced => {}
        }
    }
}

/// FNV-1a of a file's body: tells a rebuilt file from the one first sent.
fn digest(body: &str) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in body.bytes() {
        h ^= b as u64;
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    format!("{h:016x}")
}

/// The settings that shape a batch's files.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BatchShape {
    pub max_rows_per_file: usize,
    pub id_prefix: String,
    pub utc_offset_minutes: i32,
}

impl BatchShape {
    fn of(cfg: &Config) -> BatchShape {
        BatchShape {
            max_rows_per_file: cfg.rdm.max_rows_per_file,
            id_prefix: cfg.rdm.id_prefix.clone(),
            utc_offset_minutes: cfg.rdm.utc_offset_minutes,
        }
    }

    fn format(&self) -> Format {
        Format {
            id_prefix: self.id_prefix.clone(),
            offset: chrono::FixedOffset::east_opt(self.utc_offset_minutes * 60)
                .unwrap_or_else(|| chrono::FixedOffset::east_opt(0).expect("UTC")),
        }
    }
}

/// A batch as the journal has it.
#[derive(Debug, Default, Clone)]
struct JournalBatch {
    batch: u64,
    from_delta: u64,
    to_delta: u64,
    sent_at_micros: i64,
    /// `None` in plans that did not record it: the current settings.
    shape: Option<BatchShape>,
    sent: BTreeMap<String, (String, String)>,
    done: BTreeMap<String, bool>,
    committed: bool,
}

/// The journal from `from` on, after batch `after` (none: from the start);
/// the batches found and the offset after the last record.
fn read_journal(
    kafka: &KafkaEndpoint,
    prefix: &str,
    from: i64,
    after: Option<u64>,
) -> Result<(Vec<JournalBatch>, i64), UploadError> {
    let topic = journal_topic(prefix);
    let mut out: Vec<JournalBatch> = Vec::new();
    let mut next = from;
    for (offset, e) in kafka::read_json_blocking::<Entry>(kafka, &topic, from)? {
        next = offset + 1;
        let bad = |reason: String| UploadError::Journal {
            topic: topic.clone(),
            offset,
            what: "`vitrina rdm upload`",
            reason,
        };
        let e = e.map_err(bad)?;
        let last_batch = out.last().map(|b| b.batch).or(after);
        let open = out.last_mut().filter(|b| !b.committed);
        match e {
            Entry::Plan {
                batch,
                from_delta,
                to_delta,
                sent_at_micros,
                shape,
            } => {
                // A plan written twice (a restart before its ack) is one.
                if let Some(b) = open {
                    if b.batch == batch {
                        continue;
                    }
                    return Err(bad(format!("plan {batch} while batch {} is open", b.batch)));
                }
                let due = last_batch.map_or(0, |b| b + 1);
                if batch != due {
                    return Err(bad(format!("plan {batch} where batch {due} was due")));
                }
                out.push(JournalBatch {
                    batch,
                    from_delta,
                    to_delta,
                    sent_at_micros,
                    shape,
                    ..JournalBatch::default()
                });
            }
            Entry::Sent {
                batch,
                file,
                request_id,
                digest,
                ..
            } => {
                let b = open
                    .filter(|b| b.batch == batch)
                    .ok_or_else(|| bad(format!("sent {batch} {file} outside its batch")))?;
                b.sent.entry(file).or_insert((request_id, digest));
            }
            Entry::Done {
                batch,
                file,
                accepted,
                ..
            } => {
                let b = open
                    .filter(|b| b.batch == batch)
                    .ok_or_else(|| bad(format!("done {batch} {file} outside its batch")))?;
                b.done.entry(file).or_insert(accepted);
            }
            Entry::Commit { batch, .. } => match open {
                Some(b) if b.batch == batch => b.committed = true,
                // A commit written twice.
                None if last_batch == Some(batch) => {}
                _ => return Err(bad(format!("commit {batch} without its plan"))),
            },
        }
    }
    Ok((out, next))
}

/// Reads the manifest from `offset` on: the committed deltas found there
/// (with their RDM entities' records) and the offset after the last record.
fn read_deltas(
    kafka: &KafkaEndpoint,
    prefix: &str,
    offset: i64,
    next_delta: u64,
) -> Result<(Vec<Delta>, i64), UploadError> {
    let topic = manifest_topic(prefix);
    let mut commits: Vec<Commit> = Vec::new();
    let mut next_offset = offset;
    let mut due = next_delta;
    for (o, m) in kafka::read_json_blocking::<Manifest>(kafka, &topic, offset)? {
        next_offset = o + 1;
        let m = m.map_err(|reason| UploadError::Journal {
            topic: topic.clone(),
            offset: o,
            what: "`vitrina prostore feed`",
            reason,
        })?;
        if let Manifest::Commit(c) = m {
            // A commit written twice is one delta.
            if c.delta >= due {
                due = c.delta + 1;
                commits.push(c);
            }
        }
    }
    let wanted = super::entities();
    // Per upload topic, the first offset any commit needs.
    let mut ranges: BTreeMap<String, i64> = BTreeMap::new();
    for c in &commits {
        for t in c
            .tables
            .iter()
            .filter(|t| wanted.contains(&t.table.as_str()))
        {
            let from = ranges.entry(t.topic.clone()).or_insert(t.first_offset);
            *from = (*from).min(t.first_offset);
        }
    }
    let what: Vec<(String, i32, i64)> = ranges.iter().map(|(t, o)| (t.clone(), 0, *o)).collect();
    let read = if what.is_empty() {
        Default::default()
    } else {
        kafka::read_partitions_blocking(kafka, &what, Duration::from_secs(300))?
    };
    let mut deltas = Vec::with_capacity(commits.len());
    for c in commits {
        let mut records: BTreeMap<String, Vec<Record>> = BTreeMap::new();
        for t in c
            .tables
            .iter()
            .filter(|t| wanted.contains(&t.table.as_str()))
        {
            let msgs = read
                .get(&(t.topic.clone(), 0))
                .map(Vec::as_slice)
                .unwrap_or(&[]);
            let out = records.entry(t.table.clone()).or_default();
            for (o, _, v) in msgs
                .iter()
                .filter(|(o, _, _)| (t.first_offset..=t.last_offset).contains(o))
            {
                decode(v.as_deref().unwrap_or_default(), out).map_err(|reason| {
                    UploadError::Source {
                        topic: t.topic.clone(),
                        offset: *o,
                        reason,
                    }
                })?;
            }
        }
        deltas.push(Delta {
            number: c.delta,
            committed_at_micros: c.committed_at_micros,
            truncate: c
                .truncate
                .iter()
                .map(|t| (t.table.clone(), (t.commit_lsn, t.lsn)))
                .collect(),
            records,
        });
    }
    Ok((deltas, next_offset))
}

/// The records of one upload message (an Avro container file).
fn decode(ocf: &[u8], out: &mut Vec<Record>) -> Result<(), String> {
    let reader = apache_avro::Reader::new(ocf).map_err(|e| e.to_string())?;
    for v in reader {
        let Value::Record(fields) = v.map_err(|e| e.to_string())? else {
            return Err("a record that is not an Avro record".into());
        };
        let mut m: BTreeMap<String, Value> = BTreeMap::new();
        for (name, v) in fields {
            let v = match v {
                Value::Union(_, inner) => *inner,
                v => v,
            };
            m.insert(name, v);
        }
        let long = |m: &BTreeMap<String, Value>, k: &str| match m.get(k) {
            Some(Value::Long(n)) | Some(Value::TimestampMicros(n)) => Ok(*n),
            Some(Value::Int(n)) => Ok(*n as i64),
            _ => Err(format!("no {k}")),
        };
        let key = match m.get("key") {
            Some(Value::String(s)) => s.clone(),
            _ => return Err("no key".into()),
        };
        let position = (
            long(&m, "source_commit_lsn")? as u64,
            long(&m, "source_lsn")? as u64,
        );
        let commit_time_micros = long(&m, "source_commit_time")?;
        let delete = long(&m, "sys_op")? == 1;
        out.push(Record {
            key,
            fields: (!delete).then_some(m),
            position,
            commit_time_micros,
        });
    }
    Ok(())
}

/// A checkpoint at most this long after the last when no batch was sent.
const CHECKPOINT_EVERY: Duration = Duration::from_secs(60);

/// Where the client stands between batches.
struct Resumed {
    /// What the service holds.
    live: Live,
    next_delta: u64,
    next_batch: u64,
    /// The manifest offset read up to.
    manifest_at: i64,
    /// Deltas read and not yet in a batch.
    queue: Vec<Delta>,
    /// A batch planned before a restart and not committed, with its files.
    pending: Option<(JournalBatch, Vec<File>)>,
}

pub struct Uploader {
    cfg: Config,
    kafka: KafkaEndpoint,
    client: Client,
    producer: kafka::Producer,
    prefix: String,
    fmt: Format,
    health: std::sync::Arc<crate::http::Health>,
    /// Commit time of the oldest delta not yet uploaded (microseconds).
    pending_since: Option<i64>,
    /// The upload journal's offset after the last entry written.
    journal_next: i64,
    /// When the last checkpoint was written.
    checkpointed: Instant,
    /// The manifest offsets uploaded through, for the standard lag tools
    /// (group `<prefix>.rdm-upload`; informational).
    group: kafka::GroupCommitter,
}

impl Uploader {
    pub fn new(
        cfg: &Config,
        kafka: KafkaEndpoint,
        health: std::sync::Arc<crate::http::Health>,
    ) -> Result<Uploader, UploadError> {
        let prefix = cfg.capture.topic_prefix.clone();
        let producer = kafka::producer(&kafka, 0, "none", cfg.capture.max_message_bytes)?;
        let group = kafka::GroupCommitter::new(&kafka, &format!("{prefix}.rdm-upload"), "rdm")?;
        let offset = chrono::FixedOffset::east_opt(cfg.rdm.utc_offset_minutes * 60)
            .expect("validated: within a day");
        Ok(Uploader {
            client: Client::new(&cfg.rdm)?,
            fmt: Format {
                id_prefix: cfg.rdm.id_prefix.clone(),
                offset,
            },
            cfg: cfg.clone(),
            kafka,
            producer,
            prefix,
            health,
            pending_since: None,
            journal_next: 0,
            checkpointed: Instant::now(),
            group,
        })
    }

    /// Runs until `cancel`: a batch every `batch_interval_ms`.
    pub async fn run(&mut self, cancel: CancellationToken) -> Result<(), UploadError> {
        kafka::provision(&self.kafka, &topic_needs(&self.prefix)).await?;
        let mut at = self.resume().await?;
        if let Some((b, files)) = at.pending.take() {
            self.pending_since = at
                .queue
                .iter()
                .find(|d| d.number >= b.from_delta)
                .map(|d| d.committed_at_micros);
            tracing::info!(
                batch = b.batch,
                "finishing a batch planned before a restart"
            );
            if !self.send_batch(&b, files, &mut at.live, &cancel).await? {
                return Ok(());
            }
        }
        let next_delta = at.next_delta;
        at.queue.retain(|d| d.number >= next_delta);
        self.health.ready();
        tracing::info!(
            next_batch = at.next_batch,
            next_delta = at.next_delta,
            url = %self.cfg.rdm.url,
            "uploading to the RDM upload service"
        );
        let interval = Duration::from_millis(self.cfg.rdm.batch_interval_ms);
        loop {
            let started = Instant::now();
            self.health.beat();
            if !self.next_batch(&mut at, &cancel).await? {
                return Ok(());
            }
            let wait = interval.saturating_sub(started.elapsed());
            tokio::select! {
                _ = cancel.cancelled() => return Ok(()),
                _ = tokio::time::sleep(wait) => {}
            }
        }
    }

    /// Where a start finds the client: the newest checkpoint (or the
    /// start of the history), then the journal and the manifest after it.
    async fn resume(&mut self) -> Result<Resumed, UploadError> {
        let t0 = Instant::now();
        let (k, p) = (self.kafka.clone(), self.prefix.clone());
        let (cp, (journal, journal_next), (deltas, manifest_at)) =
            tokio::task::spawn_blocking(move || {
                let cp = checkpoint::read(&k, &p)?;
                let (j_from, after, m_from, d_from) = match &cp {
                    Some((h, _)) => (
                        h.journal_offset,
                        Some(h.batch),
                        h.manifest_offset,
                        h.next_delta,
                    ),
                    None => (0, None, 0, 0),
                };
                Ok::<_, UploadError>((
                    cp,
                    read_journal(&k, &p, j_from, after)?,
                    read_deltas(&k, &p, m_from, d_from)?,
                ))
            })
            .await
            .map_err(|e| kafka::KafkaError::Task(e.to_string()))??;
        self.journal_next = journal_next;
        let from_checkpoint = cp.as_ref().map(|(h, _)| h.batch);
        let mut at = match cp {
            Some((h, live)) => Resumed {
                live,
                next_delta: h.next_delta,
                next_batch: h.next_batch,
                manifest_at,
                queue: Vec::new(),
                pending: None,
            },
            None => Resumed {
                live: Live::new(),
                next_delta: 0,
                next_batch: 0,
                manifest_at,
                queue: Vec::new(),
                pending: None,
            },
        };
        let batches = journal.len();
        // What the service holds: the accepted files of committed batches.
        for b in journal {
            let shape = b.shape.clone().unwrap_or_else(|| BatchShape::of(&self.cfg));
            let files = build(
                &in_range(&deltas, b.from_delta, b.to_delta),
                &at.live,
                &shape.format(),
                shape.max_rows_per_file,
            );
            at.next_delta = b.to_delta + 1;
            at.next_batch = b.batch + 1;
            if b.committed {
                for f in &files {
                    if b.done.get(&f.id()) == Some(&true) {
                        apply(&mut at.live, f);
                    }
                }
            } else {
                at.pending = Some((b, files));
            }
        }
        tracing::info!(
            checkpoint_batch = ?from_checkpoint,
            journal_batches_read = batches,
            deltas_read = deltas.len(),
            seconds = t0.elapsed().as_secs_f64(),
            "RDM client state read"
        );
        at.queue = deltas;
        Ok(at)
    }

    /// Reads the deltas committed since, and sends the batch they make
    /// (none when the service lacks nothing); false when cancelled.
    async fn next_batch(
        &mut self,
        at: &mut Resumed,
        cancel: &CancellationToken,
    ) -> Result<bool, UploadError> {
        let (k, p) = (self.kafka.clone(), self.prefix.clone());
        let due = at.queue.last().map_or(at.next_delta, |d| d.number + 1);
        let from = at.manifest_at;
        let (more, manifest_at) =
            tokio::task::spawn_blocking(move || read_deltas(&k, &p, from, due))
                .await
                .map_err(|e| kafka::KafkaError::Task(e.to_string()))??;
        at.manifest_at = manifest_at;
        at.queue.extend(more);
        metrics::gauge!(crate::observability::RDM_PENDING_DELTAS).set(at.queue.len() as f64);
        self.pending_since = at.queue.first().map(|d| d.committed_at_micros);
        self.report_pending();
        let (Some(first), Some(last)) = (at.queue.first(), at.queue.last()) else {
            return Ok(true);
        };
        let shape = BatchShape::of(&self.cfg);
        let files = build(
            &at.queue,
            &at.live,
            &shape.format(),
            shape.max_rows_per_file,
        );
        let (from_delta, to_delta) = (first.number, last.number);
        let committed = !files.is_empty();
        if committed {
            let b = JournalBatch {
                batch: at.next_batch,
                from_delta,
                to_delta,
                sent_at_micros: chrono::Utc::now().timestamp_micros(),
                shape: Some(shape.clone()),
                ..JournalBatch::default()
            };
            self.write(&Entry::Plan {
                batch: b.batch,
                from_delta,
                to_delta,
                sent_at_micros: b.sent_at_micros,
                shape: Some(shape),
            })
            .await?;
            if !self.send_batch(&b, files, &mut at.live, cancel).await? {
                return Ok(false);
            }
            at.next_batch += 1;
        }
        // Nothing the service lacks: no batch, and a restart finds the same.
        at.next_delta = to_delta + 1;
        at.queue.clear();
        // Every delta read is uploaded (or needed nothing).
        self.group.commit(&HashMap::from([(
            (crate::prostore::manifest_topic(&self.prefix), 0),
            at.manifest_at,
        )]));
        self.pending_since = None;
        self.report_pending();
        metrics::gauge!(crate::observability::RDM_PENDING_DELTAS).set(0.0);
        if at.next_batch > 0 && (committed || self.checkpointed.elapsed() >= CHECKPOINT_EVERY) {
            self.checkpoint(at).await?;
        }
        Ok(true)
    }

    /// Records where the client stands (every delta read is covered).
    async fn checkpoint(&mut self, at: &Resumed) -> Result<(), UploadError> {
        let header = checkpoint::Header {
            batch: at.next_batch - 1,
            next_batch: at.next_batch,
            next_delta: at.next_delta,
            manifest_offset: at.manifest_at,
            journal_offset: self.journal_next,
            parts: Vec::new(),
        };
        checkpoint::write(&self.producer, &self.prefix, header, &at.live).await?;
        self.checkpointed = Instant::now();
        Ok(())
    }

    /// Sends the files of batch `b` the journal does not have as done, then
    /// commits it; false when cancelled before the end.
    async fn send_batch(
        &mut self,
        b: &JournalBatch,
        files: Vec<File>,
        live: &mut Live,
        cancel: &CancellationToken,
    ) -> Result<bool, UploadError> {
        let fmt = b
            .shape
            .as_ref()
            .map_or_else(|| self.fmt.clone(), BatchShape::format);
        let sent_text = fmt.datetime(b.sent_at_micros);
        for f in &files {
            let id = f.id();
            if let Some(accepted) = b.done.get(&id) {
                if *accepted {
                    apply(live, f);
                }
                continue;
            }
            let body = f.table.file(f.rows.iter().map(|r| &r.rendered), &sent_text);
            let started = Instant::now();
            let outcome = match b.sent.get(&id) {
                Some((request_id, was)) => {
                    if *was != digest(&body) {
                        tracing::warn!(
                            batch = b.batch,
                            file = %id,
                            "a rebuilt file differs from the one sent before the restart; polling the one sent"
                        );
                    }
                    Posted::Request(request_id.clone())
                }
                None => self.post(b.batch, f, &id, body, cancel).await?,
            };
            let (request_id, outcome) = match outcome {
                Posted::Request(r) => match self.poll(&r, cancel).await? {
                    Some(o) => (r, o),
                    None => return Ok(false),
                },
                Posted::Refused(o) => (String::new(), o),
                Posted::Cancelled => return Ok(false),
            };
            self.finish(
                b.batch,
                f,
                &id,
                &request_id,
                outcome,
                started,
                &sent_text,
                live,
            )
            .await?;
        }
        self.write(&Entry::Commit {
            batch: b.batch,
            committed_at_micros: chrono::Utc::now().timestamp_micros(),
        })
        .await?;
        metrics::counter!(crate::observability::RDM_BATCHES).increment(1);
        metrics::gauge!(crate::observability::RDM_LAST_BATCH).set(b.batch as f64);
        Ok(true)
    }
}

/// What became of a file when it was sent.
enum Posted {
    Request(String),
    /// The service refused the file itself (a 4xx answer).
    Refused(Outcome),
    Cancelled,
}

/// The final word on one file.
#[derive(Debug, Clone)]
struct Outcome {
    accepted: bool,
    code: Option<i64>,
    reason: String,
}

impl Uploader {
    /// The age of the oldest delta not yet uploaded, kept current while a
    /// batch waits on the service.
    fn report_pending(&self) {
        let age = self.pending_since.map_or(0.0, |t| {
            ((chrono::Utc::now().timestamp_micros() - t) as f64 / 1e6).max(0.0)
        });
        metrics::gauge!(crate::observability::RDM_OLDEST_PENDING).set(age);
    }

    fn backoff(&self) -> Backoff {
        Backoff::new(
            Duration::from_millis(self.cfg.rdm.status_poll_ms.min(500)),
            Duration::from_secs(30),
        )
    }

    /// Sleeps `d` unless cancelled first (then false).
    async fn pause(d: Duration, cancel: &CancellationToken) -> bool {
        tokio::select! {
            _ = cancel.cancelled() => false,
            _ = tokio::time::sleep(d) => true,
        }
    }

    /// Sends a file until the service takes or refuses it; records `sent`.
    async fn post(
        &mut self,
        batch: u64,
        f: &File,
        id: &str,
        body: String,
        cancel: &CancellationToken,
    ) -> Result<Posted, UploadError> {
        let mut backoff = self.backoff();
        let d = digest(&body);
        loop {
            metrics::counter!(crate::observability::RDM_ROWS_SENT,
                "table" => f.table.name, "operation" => f.op.as_str())
            .increment(f.rows.len() as u64);
            match self.client.upload(f.table.name, f.op, body.clone()).await {
                Ok(request_id) => {
                    self.write(&Entry::Sent {
                        batch,
                        file: id.to_string(),
                        request_id: request_id.clone(),
                        rows: f.rows.len(),
                        digest: d,
                    })
                    .await?;
                    tracing::info!(batch, file = id, rows = f.rows.len(), request_id = %request_id, "file sent");
                    // A crash with the file accepted and its status not yet
                    // read (tests/rdm.rs).
                    if crate::failpoint!("rdm-crash-after-send").is_some() {
                        crate::failpoint::crash();
                    }
                    return Ok(Posted::Request(request_id));
                }
                Err(RdmError::Refused { status, body, .. }) => {
                    return Ok(Posted::Refused(Outcome {
                        accepted: false,
                        code: None,
                        reason: format!("HTTP {status}: {body}"),
                    }))
                }
                Err(e) if e.is_transient() => {
                    let delay = backoff.next_delay();
                    metrics::counter!(crate::observability::RDM_RETRIES).increment(1);
                    tracing::warn!(batch, file = id, error = %e, retry_in_s = delay.as_secs_f64(), "sending a file failed; retrying");
                    self.health
                        .not_ready(format!("the RDM upload service is failing: {e}"));
                    self.report_pending();
                    self.health.beat();
                    if !Self::pause(delay, cancel).await {
                        return Ok(Posted::Cancelled);
                    }
                }
                Err(e) => return Err(e.into()),
            }
        }
    }

    /// Polls a request's status until it is final (None: cancelled).
    async fn poll(
        &mut self,
        request_id: &str,
        cancel: &CancellationToken,
    ) -> Result<Option<Outcome>, UploadError> {
        let mut wait = Backoff::new(
            Duration::from_millis(self.cfg.rdm.status_poll_ms),
            Duration::from_secs(30),
        );
        let mut backoff = self.backoff();
        let started = Instant::now();
        let mut last_code = None;
        loop {
            let delay = match self.client.status(request_id).await {
                Ok(st) => {
                    self.health.ready();
                    match Status::of(st.code) {
                        Some(Status::Accepted) => {
                            return Ok(Some(Outcome {
                                accepted: true,
                                code: Some(st.code),
                                reason: st.description,
                            }))
                        }
                        Some(Status::Rejected) => {
                            return Ok(Some(Outcome {
                                accepted: false,
                                code: Some(st.code),
                                reason: st.description,
                            }))
                        }
                        Some(Status::Pending) => {}
                        None => {
                            tracing::warn!(request_id, code = st.code, description = %st.description, "unknown status code; waiting as for a pending one")
                        }
                    }
                    if last_code != Some(st.code) {
                        tracing::debug!(request_id, code = st.code, description = %st.description, waited_s = started.elapsed().as_secs_f64(), "request pending");
                        last_code = Some(st.code);
                    }
                    wait.next_delay()
                }
                Err(RdmError::Refused { status, body, .. }) => {
                    return Ok(Some(Outcome {
                        accepted: false,
                        code: None,
                        reason: format!("status of request {request_id}: HTTP {status}: {body}"),
                    }))
                }
                Err(e) if e.is_transient() => {
                    metrics::counter!(crate::observability::RDM_RETRIES).increment(1);
                    let d = backoff.next_delay();
                    tracing::warn!(request_id, error = %e, retry_in_s = d.as_secs_f64(), "reading a request's status failed; retrying");
                    self.health
                        .not_ready(format!("the RDM upload service is failing: {e}"));
                    d
                }
                Err(e) => return Err(e.into()),
            };
            self.report_pending();
            self.health.beat();
            if !Self::pause(delay, cancel).await {
                return Ok(None);
            }
        }
    }

    /// Records a file's outcome: `done`, metrics, dead letters, `live`.
    #[allow(clippy::too_many_arguments)]
    async fn finish(
        &mut self,
        batch: u64,
        f: &File,
        id: &str,
        request_id: &str,
        o: Outcome,
        started: Instant,
        sent: &str,
        live: &mut Live,
    ) -> Result<(), UploadError> {
        self.write(&Entry::Done {
            batch,
            file: id.to_string(),
            accepted: o.accepted,
            code: o.code,
            reason: o.reason.clone(),
        })
        .await?;
        let labels = [("table", f.table.name), ("operation", f.op.as_str())];
        metrics::histogram!(crate::observability::RDM_UPLOAD_SECONDS, &labels)
            .record(started.elapsed().as_secs_f64());
        if o.accepted {
            apply(live, f);
            metrics::counter!(crate::observability::RDM_ROWS_ACCEPTED, &labels)
                .increment(f.rows.len() as u64);
            let now = chrono::Utc::now().timestamp_micros();
            let h = metrics::histogram!(crate::observability::RDM_COMMIT_TO_ACCEPTED);
            for r in &f.rows {
                h.record((now - r.commit_time_micros).max(0) as f64 / 1e6);
            }
            tracing::info!(batch, file = id, rows = f.rows.len(), "file accepted");
            return Ok(());
        }
        metrics::counter!(crate::observability::RDM_ROWS_REJECTED, &labels)
            .increment(f.rows.len() as u64);
        tracing::warn!(batch, file = id, rows = f.rows.len(), request_id, code = ?o.code, reason = %o.reason, "file rejected; its rows are dead-lettered");
        for r in &f.rows {
            let at = serde_json::json!({
                "code": o.code, "table": f.table.name, "operation": f.op.as_str(),
                "key": r.key, "batch": batch, "file": id, "request_id": request_id,
                "row": f.table.line(&r.rendered, sent),
            });
            kafka::dead_letter(
                &self.producer,
                &self.prefix,
                "rdm",
                &o.reason,
                f.table.name,
                at,
            )
            .await
            .map_err(|e| UploadError::client("writing to the dead-letter topic", e))?;
        }
        Ok(())
    }

    async fn write(&mut self, e: &Entry) -> Result<(), UploadError> {
        let body = serde_json::to_vec(e).expect("a journal entry serializes");
        let topic = journal_topic(&self.prefix);
        let offset = kafka::append(&self.producer, &topic, None, &body)
            .await
            .map_err(|e| UploadError::client("writing the upload journal", e))?;
        self.journal_next = self.journal_next.max(offset + 1);
        Ok(())
    }
}

/// The topics the RDM client needs: its journal and checkpoint, and the
/// ProStore manifest it reads (one partition each).
pub fn topic_needs(prefix: &str) -> Vec<kafka::Need> {
    kafka::needs(
        &[
            journal_topic(prefix),
            manifest_topic(prefix),
            checkpoint::topic(prefix),
        ],
        1,
    )
}

/// The upload journal's entries, for operators and tests.
pub fn read_entries(kafka: &KafkaEndpoint, prefix: &str) -> Result<Vec<Entry>, UploadError> {
    let topic = journal_topic(prefix);
    kafka::read_json_blocking(kafka, &topic, 0)?
        .into_iter()
        .map(|(offset, e)| {
            e.map_err(|reason| UploadError::Journal {
                topic: topic.clone(),
                offset,
                what: "`vitrina rdm upload`",
                reason,
            })
        })
        .collect()
}

/// The deltas numbered `from..=to`.
fn in_range(deltas: &[Delta], from: u64, to: u64) -> Vec<Delta> {
    deltas
        .iter()
        .filter(|d| (from..=to).contains(&d.number))
        .cloned()
        .collect()
}

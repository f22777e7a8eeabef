//! Re-snapshots while streaming (DBLog): a table, or a slice of it, read
//! again in chunks by key, each chunk between a low and a high watermark
//! written to the journal's WAL, while the stream goes on.
//!
//! ```text
//!   reader (its own connection)                     stream loop
//!   emit lw(id) ────────────── WAL ───────────────▶ lw(id): a window opens on the table
//!   BEGIN REPEATABLE READ                             the table's changes: keys and xids noted
//!     pg_current_snapshot(); chunk by key ──chunk──▶ (held)
//!     emit hw(id); COMMIT ──── WAL ───────────────▶ hw(id): rows not changed in the window
//!                                                     published as READ at hw's position
//!   await their acknowledgement ◀──────────────────── a marker after the chunk's events
//!   save the cursor; throttle; the next chunk
//!   whole table, last chunk: a TRUNCATE at the job's start, below every row re-read or streamed since
//! ```
//!
//! Invariants:
//! - A chunk row is published at the high watermark's position only when
//!   the stream carried no change of its key inside the window: a change
//!   there is at least as new as the row, and stands. A truncate of the
//!   table in the window drops the whole chunk.
//! - A transaction that committed before the low watermark but was still
//!   running in the chunk's snapshot (PostgreSQL writes a commit record
//!   before it makes the transaction visible) would leave the chunk older
//!   than the stream: the stream remembers the xids that changed the table,
//!   and such a chunk is read again.
//! - The cursor (the last key published) is saved only after the chunk's
//!   events are acknowledged: a crash reads a chunk again (same rows, a
//!   later position), never skips one.
//! - A job of a whole table ends with a TRUNCATE positioned just below the
//!   job's start: every row that still exists was re-read or streamed
//!   above it, so only rows deleted while nothing streamed them (a lost
//!   slot's gap) fall below it. Nothing is withdrawn before the rows come
//!   back: the showcase never shows a table emptier than the journal.
//! - Requests are transactional logical messages through the slot: a
//!   request is recorded (in the load state) before its commit is
//!   confirmed, and one read again after a restart is not run twice.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::NaiveDate;
use tokio::sync::{mpsc, oneshot, Mutex};

use super::gate::Gate;
use super::load_state::LoadStateStore;
use super::mapping::{Mapping, TableMapping};
use super::publisher::Publisher;
use super::snapshot::{self, CopyRow, State};
use super::CaptureError;
use crate::connections::PgEndpoint;
use crate::error::{Classify, ErrorKind};
use crate::observability as obs;
use crate::pg::{self, PgError};
use crate::privacy::Depersonalizer;

/// One re-snapshot: a table (or the rows of it `filter` selects) read again.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Job {
    /// `<start as hex>-<table>`.
    pub id: String,
    pub table: String,
    /// An SQL condition on the table's columns; None: the whole table.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub filter: Option<String>,
    /// The journal position the job starts at: the request's commit, or the
    /// WAL position before a lost slot's successor was made.
    pub start: u64,
    /// The key (its columns' text) of the last row published; None: none yet.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cursor: Option<Vec<String>>,
    /// Rows published so far.
    #[serde(default)]
    pub rows: u64,
    /// Why: "requested", "slot lost".
    pub reason: String,
}

impl Job {
    pub fn new(table: &str, filter: Option<String>, start: u64, reason: &str) -> Job {
        Job {
            id: format!("{start:X}-{table}"),
            table: table.to_string(),
            filter,
            start,
            cursor: None,
            rows: 0,
            reason: reason.to_string(),
        }
    }

    /// A whole table ends with the withdrawal of rows not read again.
    fn sweeps(&self) -> bool {
        self.filter.is_none()
    }
}

/// What `vitrina resnapshot` (or an operator's SQL) writes to the journal:
/// the content of a message with prefix [`request_prefix`].
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Request {
    pub table: String,
    #[serde(default, rename = "where", skip_serializing_if = "Option::is_none")]
    pub filter: Option<String>,
}

/// The prefix of re-snapshot requests to the capture of `slot`.
pub fn request_prefix(slot: &str) -> String {
    format!("vitrina.resnapshot.{slot}")
}

/// The prefix of the watermarks of the capture of `slot`.
pub fn watermark_prefix(slot: &str) -> String {
    format!("vitrina.watermark.{slot}")
}

/// How many finished jobs the load state remembers.
const DONE_KEPT: usize = 64;

/// Transactions the stream remembers having seen commit (a race needs one
/// of them still running in a chunk's snapshot): about 6 MB; at 1,000
/// commits/s, four minutes.
const RECENT_XIDS: usize = 250_000;

/// The load state, shared by the stream (requests) and the reader
/// (progress); saved whole, under the lock, in the order of changes.
pub(super) struct Shared {
    pub state: Mutex<State>,
    pub store: Arc<LoadStateStore>,
}

impl Shared {
    /// Applies `change` to the state and saves it; returns what it returned.
    async fn save<T>(&self, change: impl FnOnce(&mut State) -> T) -> Result<T, CaptureError> {
        let mut state = self.state.lock().await;
        let out = change(&mut state);
        self.store.save(&state).await?;
        metrics::gauge!(obs::CAPTURE_RESNAPSHOT_JOBS).set(state.resnapshots.len() as f64);
        Ok(out)
    }
}

/// One chunk read between its watermarks, on its way to the stream.
pub(super) struct Chunk {
    id: String,
    job: Job,
    /// Its rows as COPY text lines, fields in the order of the table's
    /// [`TableMapping::columns`] (parsed as the initial load's are).
    text: String,
    /// Transactions running in the chunk's snapshot (low 32 bits).
    xip: Vec<u32>,
    /// Fewer rows than a chunk: the table's end.
    last: bool,
    reply: oneshot::Sender<Outcome>,
}

/// The stream's answer to a chunk.
enum Outcome {
    /// Published: fires when every event of it is acknowledged.
    Published {
        acked: oneshot::Receiver<()>,
        rows: u64,
    },
    /// Older than the stream (see the module's header): read it again.
    Again,
}

/// The stream's side: requests, windows, and chunks to publish.
pub(super) struct Resnapshots {
    request_prefix: String,
    watermark_prefix: String,
    jobs: mpsc::UnboundedSender<Job>,
    chunks: mpsc::UnboundedReceiver<Chunk>,
    /// Chunks received before their high watermark was read, oldest first.
    pending: VecDeque<Chunk>,
    /// The open window by chunk id: one reader reads one chunk at a time, so
    /// a low watermark closes any window still open (its reader failed or
    /// stopped before the high watermark).
    windows: HashMap<String, Window>,
    /// Tables under re-snapshot: their changes' keys are noted in windows.
    watching: HashSet<String>,
    /// Transactions seen committing, always (a chunk's race may involve
    /// one that committed before its job began).
    committed: Committed,
    /// Requests in the transaction being received.
    requested: Vec<Request>,
    shared: Arc<Shared>,
}

/// What the stream carried of a table between a chunk's watermarks.
#[derive(Default)]
pub(super) struct Window {
    table: String,
    keys: HashSet<String>,
    truncated: bool,
    /// [`Committed::count`] when the low watermark was read.
    opened: u32,
}

/// The latest transactions seen committing, numbered in commit order
/// (wrapping: the numbers compared are at most [`RECENT_XIDS`] apart).
#[derive(Default)]
struct Committed {
    order: VecDeque<u32>,
    at: HashMap<u32, u32>,
    count: u32,
}

impl Committed {
    fn note(&mut self, xid: u32) {
        self.count = self.count.wrapping_add(1);
        if self.at.insert(xid, self.count).is_none() {
            self.order.push_back(xid);
        }
        if self.order.len() > RECENT_XIDS {
            if let Some(old) = self.order.pop_front() {
                self.at.remove(&old);
            }
        }
    }

    /// Whether `xid` was seen committing at or before the `n`-th commit.
    fn before(&self, xid: u32, n: u32) -> bool {
        self.at
            .get(&xid)
            .is_some_and(|at| n.wrapping_sub(*at) < 1 << 31)
    }
}

/// What a logical message meant to the re-snapshots.
pub(super) enum Seen {
    /// Not a re-snapshot's message.
    Other,
    /// A request or a low watermark, noted.
    Noted,
    /// A high watermark whose chunk is to be published now.
    Chunk(Box<(Chunk, Window)>),
}

impl Resnapshots {
    /// The stream's side and the reader's channels; `jobs` are those the
    /// state holds (the reader takes them up from the state itself).
    pub(super) fn new(slot: &str, shared: Arc<Shared>, jobs: &[Job]) -> (Resnapshots, Channels) {
        let (job_tx, job_rx) = mpsc::unbounded_channel();
        // Unbounded: a chunk whose high watermark failed to commit stays
        // until the next one's is read; the reader sends one at a time.
        let (chunk_tx, chunk_rx) = mpsc::unbounded_channel();
        let watching = jobs.iter().map(|j| j.table.clone()).collect();
        (
            Resnapshots {
                request_prefix: request_prefix(slot),
                watermark_prefix: watermark_prefix(slot),
                jobs: job_tx,
                chunks: chunk_rx,
                pending: VecDeque::new(),
                windows: HashMap::new(),
                watching,
                committed: Committed::default(),
                requested: Vec::new(),
                shared,
            },
            Channels {
                jobs: job_rx,
                chunks: chunk_tx,
            },
        )
    }

    /// A logical message of the stream.
    pub(super) fn message(&mut self, prefix: &str, content: &[u8]) -> Seen {
        if prefix == self.request_prefix {
            match serde_json::from_slice::<Request>(content) {
                Ok(r) => self.requested.push(r),
                Err(e) => {
                    metrics::counter!(obs::CAPTURE_ERRORS, "kind" => "resnapshot_request")
                        .increment(1);
                    tracing::error!(error = %e, "a re-snapshot request is not JSON of the form {{\"table\": \"schema.table\", \"where\": \"…\"}}; it is ignored\nhint: send it again with `vitrina resnapshot`");
                }
            }
            return Seen::Noted;
        }
        if prefix != self.watermark_prefix {
            return Seen::Other;
        }
        let text = String::from_utf8_lossy(content);
        let mut words = text.split(' ');
        match (words.next(), words.next(), words.next()) {
            (Some("lw"), Some(id), Some(table)) => {
                self.windows.clear();
                self.windows.insert(
                    id.to_string(),
                    Window {
                        table: table.to_string(),
                        opened: self.committed.count,
                        ..Default::default()
                    },
                );
                Seen::Noted
            }
            (Some("hw"), Some(id), _) => {
                // A window of a reader gone (before a restart) closes unread.
                let Some(window) = self.windows.remove(id) else {
                    return Seen::Noted;
                };
                while let Ok(c) = self.chunks.try_recv() {
                    self.pending.push_back(c);
                }
                // Chunks sent before this one are dead: their high
                // watermarks never committed.
                match self.pending.iter().position(|c| c.id == id) {
                    Some(i) => {
                        self.pending.drain(..i);
                        let c = self.pending.pop_front().expect("found above");
                        Seen::Chunk(Box::new((c, window)))
                    }
                    None => Seen::Noted,
                }
            }
            _ => Seen::Noted,
        }
    }

    /// Whether changes of `table` are to be noted.
    pub(super) fn watches(&self, table: &str) -> bool {
        self.watching.contains(table)
    }

    /// A change of `table`'s row `key`.
    pub(super) fn changed(&mut self, table: &str, key: Option<&str>) {
        for w in self.windows.values_mut().filter(|w| w.table == table) {
            if let Some(k) = key {
                w.keys.insert(k.to_string());
            }
        }
    }

    /// A TRUNCATE of `table`.
    pub(super) fn truncated(&mut self, table: &str) {
        for w in self.windows.values_mut().filter(|w| w.table == table) {
            w.truncated = true;
        }
    }

    /// The commit of the transaction received (`xid`): noted; its requests
    /// become jobs, recorded before the commit can be confirmed.
    pub(super) async fn commit(
        &mut self,
        xid: u32,
        commit_lsn: u64,
        mapping: &Mapping,
    ) -> Result<(), CaptureError> {
        self.committed.note(xid);
        if self.requested.is_empty() {
            return Ok(());
        }
        let mut new = Vec::new();
        for r in self.requested.drain(..) {
            let Some(t) = mapping.table(&r.table) else {
                metrics::counter!(obs::CAPTURE_ERRORS, "kind" => "resnapshot_request").increment(1);
                tracing::error!(table = %r.table, "a re-snapshot request names a table the mapping does not map; it is ignored\nhint: name a mapped table as schema.table");
                continue;
            };
            if let Some(Err(e)) = r.filter.as_deref().map(|f| check_filter(t, f)) {
                metrics::counter!(obs::CAPTURE_ERRORS, "kind" => "resnapshot_request").increment(1);
                tracing::error!(table = %t.table, "a re-snapshot request is refused: {e}");
                continue;
            }
            new.push(Job::new(&t.table, r.filter, commit_lsn, "requested"));
        }
        let added = self
            .shared
            .save(|s| {
                new.retain(|j| {
                    !s.resnapshots.iter().any(|o| o.id == j.id)
                        && !s.resnapshots_done.contains(&j.id)
                });
                let room = MAX_JOBS.saturating_sub(s.resnapshots.len());
                if new.len() > room {
                    metrics::counter!(obs::CAPTURE_ERRORS, "kind" => "resnapshot_request")
                        .increment((new.len() - room) as u64);
                    tracing::error!(running = s.resnapshots.len(), refused = new.len() - room, "re-snapshot requests refused: {MAX_JOBS} are not finished\nhint: request it again once those finish (vitrina status)");
                    new.truncate(room);
                }
                s.resnapshots.extend(new.iter().cloned());
                new
            })
            .await?;
        for j in added {
            tracing::info!(table = %j.table, slice = j.filter.is_some(), id = %j.id, "re-snapshot requested");
            self.watching.insert(j.table.clone());
            // The reader ends only with the stream.
            let _ = self.jobs.send(j);
        }
        Ok(())
    }

    /// A job's last chunk was published: its table is no longer watched
    /// (unless another job reads it).
    fn finished(&mut self, job: &Job, jobs_left: impl Fn(&str) -> bool) {
        if !jobs_left(&job.table) {
            self.watching.remove(&job.table);
        }
    }
}

/// The reader's ends of the channels to the stream.
pub(super) struct Channels {
    jobs: mpsc::UnboundedReceiver<Job>,
    chunks: mpsc::UnboundedSender<Chunk>,
}

/// Where a chunk's high watermark stands in the stream.
pub(super) struct At {
    pub commit_lsn: u64,
    pub lsn: u64,
    pub commit_time_micros: i64,
    pub xid: u32,
}

/// What publishing a chunk needs from the stream.
pub(super) struct Publish<'a> {
    pub resnap: &'a mut Resnapshots,
    pub mapping: &'a Mapping,
    pub dp: &'a Depersonalizer,
    pub gate: &'a mut Gate,
    pub publisher: &'a mut Publisher,
    pub slot: &'a str,
}

impl Publish<'_> {
    /// Publishes `chunk` at its high watermark `at`: the rows the window did
    /// not see change, then (a whole table's last chunk) the withdrawal of
    /// rows not read again; answers the reader.
    pub(super) async fn chunk(
        self,
        chunk: Chunk,
        window: Window,
        at: At,
    ) -> Result<(), CaptureError> {
        let Chunk {
            job,
            text,
            xip,
            last,
            reply,
            ..
        } = chunk;
        let committed = &self.resnap.committed;
        let raced = xip.iter().any(|x| committed.before(*x, window.opened));
        if raced {
            tracing::info!(table = %job.table, id = %job.id, "re-snapshot chunk read again: a transaction the stream carried is not yet visible in its snapshot");
            metrics::counter!(obs::CAPTURE_RESNAPSHOT_CHUNKS, "table" => job.table.clone(), "outcome" => "read_again").increment(1);
            let _ = reply.send(Outcome::Again);
            return Ok(());
        }
        let Some(tm) = self.mapping.table(&job.table) else {
            let _ = reply.send(Outcome::Again);
            return Ok(());
        };
        let columns = tm.columns();
        let (mut published, mut dropped) = (0u64, 0u64);
        let read_at = snapshot::ReadAt {
            id_lsn: at.commit_lsn,
            commit_lsn: at.commit_lsn,
            lsn: at.lsn,
            commit_time_micros: at.commit_time_micros,
            txid: at.xid as i64,
        };
        for line in text.lines() {
            if window.truncated {
                dropped += 1;
                continue;
            }
            match tm.map_row(&CopyRow::parse(columns, line), self.dp) {
                // The stream carried a change of this key in the window.
                Ok(m) if window.keys.contains(&m.key) => dropped += 1,
                Ok(mut m) => {
                    let applied = self.gate.fields.apply(tm.entity, &mut m.after);
                    let (e, pk) = read_at.event(tm, m);
                    snapshot::publish_read(&e, &pk, &applied, self.gate, self.publisher).await?;
                    published += 1;
                }
                Err(u) => {
                    let dead = read_at.dead_letter(tm, u.0, self.slot);
                    self.publisher.dead_letter(dead).await?
                }
            }
        }
        if last && job.sweeps() {
            withdraw_older(tm, &job, at.commit_time_micros, self.publisher).await?;
        }
        metrics::counter!(obs::CAPTURE_RESNAPSHOT_ROWS, "table" => job.table.clone())
            .increment(published);
        metrics::counter!(obs::CAPTURE_RESNAPSHOT_OVERTAKEN, "table" => job.table.clone())
            .increment(dropped);
        metrics::counter!(obs::CAPTURE_RESNAPSHOT_CHUNKS, "table" => job.table.clone(), "outcome" => "published").increment(1);
        if last {
            let shared = self.resnap.shared.clone();
            let state = shared.state.lock().await;
            let others = |t: &str| {
                state
                    .resnapshots
                    .iter()
                    .any(|j| j.table == t && j.id != job.id)
            };
            self.resnap.finished(&job, others);
        }
        let acked = self.publisher.mark().await?;
        let _ = reply.send(Outcome::Published {
            acked,
            rows: published,
        });
        Ok(())
    }
}

/// A TRUNCATE of `t` just below `job`'s start, on every partition: rows
/// neither read again nor changed since the start (deleted while nothing
/// streamed them) are withdrawn; everything above it stands.
async fn withdraw_older(
    t: &TableMapping,
    job: &Job,
    time: i64,
    publisher: &mut Publisher,
) -> Result<(), CaptureError> {
    tracing::info!(table = %t.table, id = %job.id, "re-snapshot read the whole table: rows not read again are withdrawn");
    let id = format!("W{:016X}-{}", job.start, t.table);
    super::initial_load::withdraw_below(t, job.start, id, time, publisher).await
}

/// The low 32 bits of each xid running in a `pg_current_snapshot()` text
/// (`xmin:xmax:xip,…`): pgoutput names transactions by them.
pub fn running_xids(snapshot: &str) -> Vec<u32> {
    snapshot
        .split(':')
        .nth(2)
        .unwrap_or("")
        .split(',')
        .filter_map(|x| x.trim().parse::<u64>().ok())
        .map(|x| x as u32)
        .collect()
}

/// The reader: chunks of each job in turn, on its own connection.
pub(super) struct Reader {
    pub journal: PgEndpoint,
    pub tables: Vec<TableMapping>,
    pub history_years: u32,
    pub chunk_rows: u32,
    pub rows_per_second: u32,
    pub slot: String,
    pub shared: Arc<Shared>,
}

/// Why a job stopped.
enum Stop {
    /// The stream loop is gone (capture stopping or restarting).
    Stream,
    Failed(CaptureError),
}

impl From<CaptureError> for Stop {
    fn from(e: CaptureError) -> Stop {
        Stop::Failed(e)
    }
}

impl From<PgError> for Stop {
    fn from(e: PgError) -> Stop {
        Stop::Failed(e.into())
    }
}

impl Reader {
    /// Runs the state's jobs, then those requested, until the stream ends.
    pub(super) async fn run(self, mut ch: Channels) {
        let mut queue: VecDeque<Job> = self.shared.state.lock().await.resnapshots.clone().into();
        metrics::gauge!(obs::CAPTURE_RESNAPSHOT_JOBS).set(queue.len() as f64);
        let nonce = format!("{:x}", chrono::Utc::now().timestamp_micros());
        // The ends of jobs whose last chunks are landing: dropped (aborted)
        // with the reader, so that none saves this run's state after the
        // next run began.
        let mut finishing = tokio::task::JoinSet::new();
        loop {
            let job = match queue.pop_front() {
                Some(j) => j,
                None => match ch.jobs.recv().await {
                    Some(j) => j,
                    None => return,
                },
            };
            let mut backoff = Duration::from_secs(1);
            loop {
                // The latest progress of the job, as saved.
                let current = {
                    let s = self.shared.state.lock().await;
                    s.resnapshots.iter().find(|j| j.id == job.id).cloned()
                };
                let Some(current) = current else { break };
                // Reap the ends of jobs finished.
                while finishing.try_join_next().is_some() {}
                match self.job(&current, &nonce, &ch.chunks, &mut finishing).await {
                    Ok(()) => break,
                    Err(Stop::Stream) => return,
                    Err(Stop::Failed(e)) if e.kind() == ErrorKind::Transient => {
                        metrics::counter!(obs::CAPTURE_ERRORS, "kind" => "resnapshot").increment(1);
                        tracing::warn!(table = %job.table, error = %e, retry_in_s = backoff.as_secs(), "re-snapshot interrupted; it goes on from its last chunk");
                        tokio::time::sleep(backoff).await;
                        backoff = (backoff * 2).min(Duration::from_secs(30));
                    }
                    Err(Stop::Failed(e)) => {
                        metrics::counter!(obs::CAPTURE_ERRORS, "kind" => "resnapshot").increment(1);
                        tracing::error!(table = %job.table, id = %job.id, error = %e, "re-snapshot failed and is dropped; capture streams on\nhint: fix the cause and request it again (`vitrina resnapshot`)");
                        let id = job.id.clone();
                        if let Err(e) = self
                            .shared
                            .save(|s| s.resnapshots.retain(|j| j.id != id))
                            .await
                        {
                            tracing::warn!(error = %e, "recording the dropped re-snapshot failed; it runs again at the next start");
                        }
                        break;
                    }
                }
            }
        }
    }

    /// Reads `job` from its cursor to its end.
    async fn job(
        &self,
        job: &Job,
        nonce: &str,
        chunks: &mpsc::UnboundedSender<Chunk>,
        finishing: &mut tokio::task::JoinSet<()>,
    ) -> Result<(), Stop> {
        let t = self
            .tables
            .iter()
            .find(|t| t.table == job.table)
            .ok_or_else(|| {
                Stop::Failed(CaptureError::Request(format!(
                    "re-snapshot {} names table {}, which the mapping no longer maps",
                    job.id, job.table
                )))
            })?;
        let mut client = pg::connect(&self.journal.config()).await?;
        let sql = chunk_sql(
            &client,
            t,
            job,
            snapshot::window_start(chrono::Local::now().date_naive(), self.history_years),
            self.chunk_rows,
        )
        .await?;
        let mut cursor = job.cursor.clone();
        let (started, mut read, mut n) = (Instant::now(), 0u64, 0u64);
        let mut spent = Spent::default();
        let mut again = Duration::ZERO;
        let mut landing: VecDeque<Landing> = VecDeque::new();
        tracing::info!(table = %job.table, id = %job.id, from = ?cursor.as_ref().map(|c| c.len()), "re-snapshot reading");
        loop {
            let id = format!("{nonce}.{}.{n}", job.start);
            n += 1;
            let (answer, last, next, rows) = self
                .chunk(&mut client, &sql, job, &id, cursor.as_deref(), chunks)
                .await?;
            read += rows;
            let waiting = Instant::now();
            let answer = answer.await.map_err(|_| Stop::Stream)?;
            spent.stream += waiting.elapsed();
            let (acked, published) = match answer {
                Outcome::Again => {
                    // A transaction the stream saw commit is not visible
                    // yet (a synchronous standby's wait, say): give it time.
                    again = (again * 2).clamp(AGAIN_FIRST, AGAIN_MOST);
                    tokio::time::sleep(again).await;
                    continue;
                }
                Outcome::Published { acked, rows } => (acked, rows),
            };
            again = Duration::ZERO;
            // The next chunk is read while Kafka acknowledges this one;
            // progress is saved for the chunks acknowledged, in order.
            if next.is_some() {
                cursor = next;
            }
            landing.push_back(Landing {
                acked,
                cursor: cursor.clone(),
                rows: published,
            });
            if last {
                // The next job starts while this one's last chunks land.
                finishing.spawn(finish(
                    self.shared.clone(),
                    job.clone(),
                    landing,
                    started,
                    spent,
                ));
                return Ok(());
            }
            let waiting = Instant::now();
            let (settled, rows) = settle(&mut landing, false).await?;
            spent.acks += waiting.elapsed();
            if let Some(c) = settled {
                let (waiting, jid) = (Instant::now(), job.id.clone());
                self.shared
                    .save(|s| {
                        if let Some(j) = s.resnapshots.iter_mut().find(|j| j.id == jid) {
                            j.cursor = c;
                            j.rows += rows;
                        }
                    })
                    .await?;
                spent.saving += waiting.elapsed();
            }
            if self.rows_per_second > 0 {
                let due = Duration::from_secs_f64(read as f64 / self.rows_per_second as f64);
                if let Some(wait) = due.checked_sub(started.elapsed()) {
                    tokio::time::sleep(wait).await;
                }
            }
        }
    }
}

/// A job's end: once its last chunks are acknowledged, it is recorded
/// done. Stopped before (capture stopping, Kafka failing), the job stays
/// recorded and runs again from its cursor at the next start.
async fn finish(
    shared: Arc<Shared>,
    job: Job,
    mut landing: VecDeque<Landing>,
    started: Instant,
    mut spent: Spent,
) {
    let waiting = Instant::now();
    if settle(&mut landing, true).await.is_err() {
        return;
    }
    spent.acks += waiting.elapsed();
    let jid = job.id.clone();
    let saved = shared
        .save(|s| {
            s.resnapshots.retain(|j| j.id != jid);
            s.resnapshots_done.push(jid.clone());
            let over = s.resnapshots_done.len().saturating_sub(DONE_KEPT);
            s.resnapshots_done.drain(..over);
        })
        .await;
    match saved {
        Ok(()) => tracing::info!(
            table = %job.table,
            id = %job.id,
            seconds = started.elapsed().as_secs_f64(),
            waiting_for_the_stream_s = spent.stream.as_secs_f64(),
            waiting_for_kafka_s = spent.acks.as_secs_f64(),
            saving_progress_s = spent.saving.as_secs_f64(),
            "re-snapshot finished"
        ),
        Err(e) => {
            metrics::counter!(obs::CAPTURE_ERRORS, "kind" => "resnapshot").increment(1);
            tracing::warn!(table = %job.table, error = %e, "recording a finished re-snapshot failed; it runs again at the next start");
        }
    }
}

impl Reader {
    /// Reads one chunk of `job` after `cursor` between its watermarks and
    /// hands it to the stream: the stream's answer to come, whether it was
    /// the table's last, the cursor after it, and the rows read.
    async fn chunk(
        &self,
        client: &mut tokio_postgres::Client,
        sql: &ChunkSql,
        job: &Job,
        id: &str,
        cursor: Option<&[String]>,
        chunks: &mpsc::UnboundedSender<Chunk>,
    ) -> Result<(oneshot::Receiver<Outcome>, bool, Option<Vec<String>>, u64), Stop> {
        let prefix = watermark_prefix(&self.slot);
        let lw = format!("lw {id} {}", job.table);
        client
            .execute(
                "SELECT pg_logical_emit_message(true, $1, $2)",
                &[&prefix, &lw],
            )
            .await
            .map_err(PgError::query("writing a re-snapshot's low watermark"))?;
        // Its snapshot is taken by its first statement and serves all of
        // them: the running xids read are those the chunk does not see.
        let txn = client
            .build_transaction()
            .isolation_level(tokio_postgres::IsolationLevel::RepeatableRead)
            .start()
            .await
            .map_err(PgError::query("starting a re-snapshot chunk"))?;
        let snap: String = txn
            .query_one("SELECT pg_current_snapshot()::text", &[])
            .await
            .map_err(PgError::query("reading a chunk's snapshot"))?
            .get(0);
        let copy = txn
            .copy_out(&sql.statement(cursor))
            .await
            .map_err(PgError::query(format!("reading a chunk of {}", job.table)))?;
        futures::pin_mut!(copy);
        let mut bytes = Vec::new();
        while let Some(b) = futures::StreamExt::next(&mut copy).await {
            bytes.extend_from_slice(
                &b.map_err(PgError::query(format!("reading a chunk of {}", job.table)))?,
            );
        }
        let text = String::from_utf8_lossy(&bytes).into_owned();
        let read = text.lines().count() as u64;
        let last = read < self.chunk_rows as u64;
        let next: Option<Vec<String>> = text.lines().last().map(|l| {
            let fields = snapshot::parse_copy_line(l);
            sql.key_at
                .iter()
                .map(|i| {
                    fields
                        .get(*i)
                        .cloned()
                        .flatten()
                        .unwrap_or_default()
                        .into_owned()
                })
                .collect()
        });
        let (reply, answer) = oneshot::channel();
        chunks
            .send(Chunk {
                id: id.to_string(),
                job: job.clone(),
                text,
                xip: running_xids(&snap),
                last,
                reply,
            })
            .map_err(|_| Stop::Stream)?;
        let hw = format!("hw {id}");
        txn.execute(
            "SELECT pg_logical_emit_message(true, $1, $2)",
            &[&prefix, &hw],
        )
        .await
        .map_err(PgError::query("writing a re-snapshot's high watermark"))?;
        txn.commit()
            .await
            .map_err(PgError::query("committing a re-snapshot chunk"))?;
        Ok((answer, last, next, read))
    }
}

/// The wait before a chunk is read again, first and at most.
const AGAIN_FIRST: Duration = Duration::from_millis(100);
const AGAIN_MOST: Duration = Duration::from_secs(5);

/// Chunks published and not yet acknowledged, at most, while the reader
/// reads on (each holds up to a chunk of records in the producer).
const UNACKNOWLEDGED_CHUNKS: usize = 8;

/// A chunk published, waiting for Kafka: what to save once it landed.
struct Landing {
    acked: oneshot::Receiver<()>,
    /// The job's cursor after it.
    cursor: Option<Vec<String>>,
    rows: u64,
}

/// Takes the acknowledged chunks off the front of `landing`, waiting for
/// all of them at the job's `end`, else only for those beyond
/// [`UNACKNOWLEDGED_CHUNKS`]; returns the cursor after the last one taken
/// (None: none taken) and their rows.
async fn settle(
    landing: &mut VecDeque<Landing>,
    end: bool,
) -> Result<(Option<Option<Vec<String>>>, u64), Stop> {
    let mut wait = if end {
        landing.len()
    } else {
        landing.len().saturating_sub(UNACKNOWLEDGED_CHUNKS)
    };
    let (mut settled, mut rows) = (None, 0);
    while let Some(front) = landing.front_mut() {
        if wait > 0 {
            (&mut front.acked).await.map_err(|_| Stop::Stream)?;
            wait -= 1;
        } else {
            match front.acked.try_recv() {
                Ok(()) => {}
                Err(oneshot::error::TryRecvError::Empty) => break,
                Err(oneshot::error::TryRecvError::Closed) => return Err(Stop::Stream),
            }
        }
        let l = landing.pop_front().expect("a front");
        settled = Some(l.cursor);
        rows += l.rows;
    }
    Ok((settled, rows))
}

/// Where a job's time went, beside reading: the stream reaching each high
/// watermark, Kafka acknowledging each chunk, progress saved.
#[derive(Default)]
struct Spent {
    stream: Duration,
    acks: Duration,
    saving: Duration,
}

/// A chunk's statement, from the table's start or after a cursor.
struct ChunkSql {
    /// `SELECT … FROM … AS r`, the conditions, the key columns (qualified:
    /// ORDER BY would otherwise take a SELECT output of the same name).
    select: String,
    conditions: Vec<String>,
    keys: String,
    /// Per key column, its type (the cursor's text is cast to it).
    types: Vec<String>,
    limit: u32,
    /// Where the key columns are among those read.
    key_at: Vec<usize>,
}

impl ChunkSql {
    /// `COPY (…) TO STDOUT` of the chunk after `cursor` (its key values).
    fn statement(&self, cursor: Option<&[String]>) -> String {
        let mut all = self.conditions.clone();
        if let Some(c) = cursor {
            let values: Vec<String> = c
                .iter()
                .zip(&self.types)
                .map(|(v, ty)| format!("{}::{ty}", pg::literal(v)))
                .collect();
            all.push(format!("({}) > ({})", self.keys, values.join(", ")));
        }
        let filter = if all.is_empty() {
            String::new()
        } else {
            format!(" WHERE {}", all.join(" AND "))
        };
        format!(
            "COPY ({}{filter} ORDER BY {} LIMIT {}) TO STDOUT",
            self.select, self.keys, self.limit
        )
    }
}

async fn chunk_sql(
    client: &tokio_postgres::Client,
    t: &TableMapping,
    job: &Job,
    window: NaiveDate,
    chunk_rows: u32,
) -> Result<ChunkSql, PgError> {
    let (schema, name) = t.table.split_once('.').expect("schema.table");
    let relation = format!("{}.{}", pg::ident(schema), pg::ident(name));
    let types: HashMap<String, String> = client
        .query(
            "SELECT attname::text, format_type(atttypid, atttypmod) FROM pg_attribute
             WHERE attrelid = $1::text::regclass AND attnum > 0 AND NOT attisdropped",
            &[&relation],
        )
        .await
        .map_err(PgError::query(format!(
            "reading the key types of {}",
            t.table
        )))?
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    let columns = t.columns();
    let select = columns
        .iter()
        .map(|c| pg::ident(c))
        .collect::<Vec<_>>()
        .join(", ");
    let mut conditions = Vec::new();
    if let Some(h) = &t.history {
        conditions.push(format!("{} >= DATE '{window}'", pg::ident(h)));
    }
    if let Some(f) = &job.filter {
        conditions.push(format!("({f})"));
    }
    Ok(ChunkSql {
        select: format!("SELECT {select} FROM {relation} AS r"),
        conditions,
        keys: t
            .key
            .iter()
            .map(|k| format!("r.{}", pg::ident(k)))
            .collect::<Vec<_>>()
            .join(", "),
        types: t
            .key
            .iter()
            .map(|k| types.get(k).cloned().unwrap_or_else(|| "text".into()))
            .collect(),
        limit: chunk_rows,
        key_at: t
            .key
            .iter()
            .map(|k| {
                columns
                    .iter()
                    .position(|c| c == k)
                    .expect("key columns are read")
            })
            .collect(),
    })
}

/// Re-snapshots not finished, at most: a request beyond is refused (any
/// role of the journal can write a message; a flood must not grow the
/// load state without bound).
pub const MAX_JOBS: usize = 32;

/// Checks a re-snapshot's condition on table `t`: a boolean expression of
/// the table's plain mapped columns (key, partition, history, and columns
/// published as they are; not the raw identifiers capture hashes), numbers,
/// string literals, comparisons, `AND`/`OR`/`NOT`, `IN (…)`, `BETWEEN`,
/// `IS [NOT] NULL`, `DATE '…'` and parentheses. Nothing else passes: no
/// function, subquery, cast, comment or semicolon. The condition is put
/// into capture's own query, and any role of the journal can send a
/// request (`pg_logical_emit_message` is executable by PUBLIC), so this is
/// the boundary against SQL injection.
pub fn check_filter(t: &TableMapping, filter: &str) -> Result<(), String> {
    use super::mapping::Source as S;
    const WORDS: [&str; 12] = [
        "AND", "OR", "NOT", "IN", "BETWEEN", "IS", "NULL", "TRUE", "FALSE", "DATE", "LIKE", "ILIKE",
    ];
    let mut columns: Vec<&str> = t.key.iter().map(String::as_str).collect();
    columns.extend(t.partition_by.as_deref());
    columns.extend(t.history.as_deref());
    columns.extend(t.sources.iter().filter_map(|s| match s {
        S::Column(c) => Some(c.as_str()),
        S::Hash(..) => None,
    }));
    columns.sort_unstable();
    columns.dedup();
    let refuse = |what: String| {
        Err(format!(
            "the condition `{filter}` {what}\nhint: a condition compares {}'s columns {} with numbers, 'strings' and DATE '…', joined by AND, OR, NOT, IN (…), BETWEEN, IS [NOT] NULL and parentheses",
            t.table,
            columns.join(", ")
        ))
    };
    let chars: Vec<char> = filter.chars().collect();
    let (mut i, mut depth, mut tokens) = (0, 0i32, 0);
    while i < chars.len() {
        let c = chars[i];
        if c.is_whitespace() {
            i += 1;
            continue;
        }
        tokens += 1;
        if c.is_ascii_alphabetic() || c == '_' {
            let start = i;
            while i < chars.len() && (chars[i].is_ascii_alphanumeric() || chars[i] == '_') {
                i += 1;
            }
            let word: String = chars[start..i].iter().collect();
            if !columns.contains(&word.as_str())
                && !WORDS.contains(&word.to_ascii_uppercase().as_str())
            {
                return refuse(format!("names `{word}`, which is not one of the columns it may use, nor AND/OR/NOT/IN/BETWEEN/IS/NULL/TRUE/FALSE/DATE/LIKE"));
            }
        } else if c == '"' {
            let end = chars[i + 1..].iter().position(|c| *c == '"');
            let Some(end) = end else {
                return refuse("leaves a quoted name open".into());
            };
            let word: String = chars[i + 1..i + 1 + end].iter().collect();
            if !columns.contains(&word.as_str()) {
                return refuse(format!(
                    "names \"{word}\", which is not one of the columns it may use"
                ));
            }
            i += end + 2;
        } else if c == '\'' {
            i += 1;
            loop {
                match (chars.get(i), chars.get(i + 1)) {
                    (Some('\''), Some('\'')) => i += 2,
                    (Some('\''), _) => break,
                    (Some(_), _) => i += 1,
                    (None, _) => return refuse("leaves a string open".into()),
                }
            }
            i += 1;
        } else if c.is_ascii_digit() {
            while i < chars.len() && (chars[i].is_ascii_digit() || chars[i] == '.') {
                i += 1;
            }
        } else if c == '(' || c == ')' {
            depth += if c == '(' { 1 } else { -1 };
            if depth < 0 {
                return refuse("closes a parenthesis it did not open".into());
            }
            i += 1;
        } else if c == ',' || c == '=' || c == '-' {
            if c == '-' && chars.get(i + 1) == Some(&'-') {
                return refuse("holds a comment".into());
            }
            i += 1;
        } else if c == '<' || c == '>' || c == '!' {
            i += 1;
            if matches!(chars.get(i), Some('=') | Some('>')) {
                i += 1;
            }
        } else {
            return refuse(format!("holds `{c}`, which a condition may not"));
        }
    }
    if depth != 0 {
        return refuse("leaves a parenthesis open".into());
    }
    if tokens == 0 {
        return refuse("is empty".into());
    }
    Ok(())
}

/// The mapped table a request names, its condition checked
/// ([`check_filter`]); nothing is read or written.
pub fn check_request<'m>(
    mapping: &'m Mapping,
    table: &str,
    filter: Option<&str>,
) -> Result<&'m TableMapping, CaptureError> {
    let t = mapping.table(table).ok_or_else(|| {
        CaptureError::Request(format!(
            "table {table} is not mapped\nhint: name one of the mapped tables: {}",
            mapping
                .tables
                .iter()
                .map(|t| t.table.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        ))
    })?;
    if let Some(f) = filter {
        check_filter(t, f).map_err(CaptureError::Request)?;
    }
    Ok(t)
}

/// `vitrina resnapshot`: checks the request ([`check_request`]) and the
/// condition against the journal, then writes the request through the
/// slot; returns its position.
pub async fn request(
    journal: &PgEndpoint,
    mapping: &Mapping,
    slot: &str,
    table: &str,
    filter: Option<&str>,
) -> Result<String, CaptureError> {
    let t = check_request(mapping, table, filter)?;
    let client = pg::connect(&journal.config()).await?;
    if let Some(f) = filter {
        let (schema, name) = t.table.split_once('.').expect("schema.table");
        client
            .execute(
                &format!(
                    "EXPLAIN SELECT 1 FROM {}.{} WHERE ({f})",
                    pg::ident(schema),
                    pg::ident(name)
                ),
                &[],
            )
            .await
            .map_err(PgError::query(format!(
                "checking the condition `{f}` on {table}"
            )))?;
    }
    let content = serde_json::to_string(&Request {
        table: t.table.clone(),
        filter: filter.map(str::to_string),
    })
    .expect("a request serializes");
    let row = client
        .query_one(
            "SELECT pg_logical_emit_message(true, $1, $2)::text",
            &[&request_prefix(slot), &content],
        )
        .await
        .map_err(PgError::query("writing the re-snapshot request"))?;
    Ok(row.get(0))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn running_xids_are_the_snapshots_third_field_in_32_bits() {
        assert_eq!(running_xids("100:105:"), Vec::<u32>::new());
        assert_eq!(running_xids("100:105:101,103"), vec![101, 103]);
        let wrapped = (1u64 << 32) + 7;
        assert_eq!(running_xids(&format!("1:2:{wrapped}")), vec![7]);
    }

    #[test]
    fn a_request_is_the_json_an_operator_writes() {
        let r: Request =
            serde_json::from_str(r#"{"table": "journal.grades", "where": "school_id = 3"}"#)
                .unwrap();
        assert_eq!(r.table, "journal.grades");
        assert_eq!(r.filter.as_deref(), Some("school_id = 3"));
        let whole: Request = serde_json::from_str(r#"{"table": "journal.grades"}"#).unwrap();
        assert_eq!(whole.filter, None);
    }

    #[test]
    fn a_condition_is_an_expression_of_plain_mapped_columns_and_nothing_else() {
        let m = Mapping::reference();
        let grades = m.table("journal.grades").unwrap();
        for ok in [
            "student_id = 3",
            "created_at >= DATE '2025-09-01' AND (student_id IN (1, 2, 3) OR id BETWEEN 10 AND 20)",
            "\"id\" <> 5 AND NOT student_id IS NULL",
            "id >= 100",
        ] {
            assert_eq!(check_filter(grades, ok), Ok(()), "{ok}");
        }
        for bad in [
            "true) UNION SELECT surname FROM journal.students --",
            "id = 1; DROP TABLE journal.grades",
            "id = 1 -- trailing",
            "pg_sleep(10) IS NULL",
            "id IN (SELECT id FROM journal.students)",
            "id = 1)",
            "(id = 1",
            "id::text = '1'",
            "id = 'open",
            "",
        ] {
            assert!(check_filter(grades, bad).is_err(), "{bad}");
        }
        let students = m.table("journal.students").unwrap();
        let raw = check_filter(students, "snils = '123'").unwrap_err();
        assert!(raw.contains("names `snils`"), "{raw}");
    }

    #[test]
    fn committed_xids_are_numbered_and_bounded() {
        let mut c = Committed::default();
        c.note(7);
        let opened = c.count;
        c.note(8);
        assert!(c.before(7, opened) && !c.before(8, opened) && !c.before(9, opened));
        for x in 0..(RECENT_XIDS as u32 + 10) {
            c.note(x + 100);
        }
        assert_eq!(c.order.len(), RECENT_XIDS);
        assert!(!c.before(7, c.count) && c.before(RECENT_XIDS as u32 + 109, c.count));
        // Numbers wrap: still ordered across the wrap.
        let mut w = Committed {
            count: u32::MAX - 1,
            ..Default::default()
        };
        w.note(1);
        let opened = w.count;
        w.note(2);
        w.note(3);
        assert!(w.before(1, opened) && !w.before(3, opened));
    }
}

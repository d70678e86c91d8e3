//! The embedded queue of `ferry serve`: one SQLite file, one writer thread, group commit.
//!
//! Every call is sent to a dedicated writer thread that owns the [`Connection`]. The thread
//! blocks for the first request, takes everything else already waiting (up to [`MAX_BATCH`]),
//! runs all of it in ONE transaction and commits once. Batches grow with concurrency on their
//! own; nothing sleeps waiting for more work.
//!
//! The commit writes the WAL without waiting for the disk (`synchronous=NORMAL`); the batch's
//! callers go to a [`Syncer`] thread, which fsyncs the WAL once for every batch handed over
//! since its last pass and only then answers them, in commit order. So an `Ok` from
//! [`JobQueue::enqueue`] still means the jobs are on disk, and the writer runs the next batch
//! while the disk works instead of sitting in fsync. A failed fsync makes the queue unavailable
//! until a restart: after one, the kernel may have dropped pages it never wrote.
//!
//! A request may be refused (a stale receipt) without touching the database, and the rest of
//! its batch commits. A storage error (disk full, file unwritable) rolls back the whole batch
//! and every caller in it gets [`QueueError::Unavailable`]. No savepoint per request: they cost
//! a copy of every page a request touches, and a storage error is the whole file's, not one
//! request's.
//!
//! Dedup needs no index: the writer keeps the keys of every job a new job could duplicate
//! (ready, or enqueued within the dedup window) in memory ([`LiveKeys`]), and reads a row only
//! when a key's hash is already there. An index on random keys cost one B-tree page written per
//! job; without it a batch writes little more than its own rows. Another process writing the
//! file (`ferry --config` operations) is noticed by `PRAGMA data_version` and the keys are
//! reloaded.
//!
//! Commits never wait for a checkpoint: a [`Checkpointer`] thread with a connection of its
//! own copies committed WAL frames into the database file shortly after each commit (PASSIVE:
//! it never blocks the writer). SQLite's own checkpoint inside a commit remains only as a
//! backstop once the WAL reaches [`WAL_BACKSTOP_PAGES`], and by then little is left to copy.
//!
//! A job row is `ready` (waiting, or in flight when `available_at` is in the future and it holds
//! a receipt), `done` (acked, kept without its payload for the dedup window, then pruned) or
//! `dead`. Times are wall-clock unix milliseconds.

use std::cell::{Cell, RefCell};
use std::collections::hash_map::RandomState;
use std::fmt;
use std::hash::BuildHasher;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::smooth::{ChunkedQueue, ShardedMap};
use crate::store::{self, StoreKind};
use rusqlite::{Connection, OptionalExtension, params};
use tokio::sync::{mpsc, oneshot};
use uuid::Uuid;

use super::{DeadLetter, Delivery, Enqueued, JobQueue, NewJob, QueueError, QueueFuture};

/// Requests answered by one commit at most.
const MAX_BATCH: usize = 512;
/// Requests waiting for the writer before callers wait to send (backpressure).
const CHANNEL_CAPACITY: usize = 4 * MAX_BATCH;
/// Acked jobs whose dedup window has passed are deleted at most this often.
const PRUNE_EVERY_MS: i64 = 1_000;
/// How long the sync thread waits for the batch the writer is running before it fsyncs: one
/// fsync then covers both (on a VM an fsync costs tens of µs of CPU), and the writer needs far
/// less than this for a batch.
const COALESCE_WAIT: Duration = Duration::from_micros(500);
/// The checkpointer runs at most this often, so a busy queue copies many commits per pass.
const CHECKPOINT_EVERY: Duration = Duration::from_millis(100);
/// `wal_autocheckpoint` of the writer: SQLite checkpoints inside a commit only past this.
const WAL_BACKSTOP_PAGES: i64 = 8192;
/// The WAL file is cut back to this size once a checkpoint has emptied it.
const WAL_SIZE_LIMIT_BYTES: i64 = 64 * 1024 * 1024;
/// `last_error` is cut to this many bytes.
const MAX_ERROR_BYTES: usize = 8 * 1024;

/// `PRAGMA application_id`: "FRYQ". Tells a queue file from any other SQLite file.
const APPLICATION_ID: i64 = 0x4652_5951;
/// `PRAGMA user_version` of the schema below.
const SCHEMA_VERSION: i64 = 3;
/// The jobs table and its indexes. `id` is a UUIDv7 (74 random bits) and has no index: only a
/// dead letter is ever looked up by it, through `jobs_dead`. An index would cost a B-tree page
/// written per commit. A macro, so that the schema and the v2 → v3 migration share the text.
macro_rules! jobs_schema {
    () => {
        "
CREATE TABLE jobs (
    seq           INTEGER PRIMARY KEY,
    id            TEXT    NOT NULL,
    dedup_key     TEXT    NOT NULL,
    payload       TEXT    NOT NULL,
    state         TEXT    NOT NULL CHECK (state IN ('ready', 'done', 'dead')),
    enqueued_at   INTEGER NOT NULL,
    available_at  INTEGER NOT NULL,
    receive_count INTEGER NOT NULL DEFAULT 0,
    receipt       TEXT,
    last_error    TEXT,
    failed_at     INTEGER
);
CREATE INDEX jobs_ready ON jobs (available_at) WHERE state = 'ready';
CREATE INDEX jobs_done ON jobs (enqueued_at) WHERE state = 'done';
CREATE INDEX jobs_dead ON jobs (failed_at) WHERE state = 'dead';
CREATE UNIQUE INDEX jobs_receipt ON jobs (receipt) WHERE receipt IS NOT NULL;
"
    };
}

const SCHEMA: &str = concat!(
    jobs_schema!(),
    "
CREATE TABLE probe (
    id         INTEGER PRIMARY KEY CHECK (id = 1),
    at_unix_ms INTEGER NOT NULL
);
"
);

/// Version 1 indexed `dedup_key` (the writer now keeps live keys in memory); version 2 had a
/// unique index on `id`, which only a table rebuild drops.
const MIGRATIONS: &[(i64, &str)] = &[
    (1, "DROP INDEX IF EXISTS jobs_dedup;"),
    (
        2,
        concat!(
            "ALTER TABLE jobs RENAME TO jobs_v2;
             DROP INDEX jobs_ready;
             DROP INDEX jobs_done;
             DROP INDEX jobs_dead;
             DROP INDEX jobs_receipt;",
            jobs_schema!(),
            "INSERT INTO jobs SELECT seq, id, dedup_key, payload, state, enqueued_at, available_at,
                                    receive_count, receipt, last_error, failed_at FROM jobs_v2;
             DROP TABLE jobs_v2;"
        ),
    ),
];

/// Settings of a [`SqliteQueue`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SqliteQueueOptions {
    /// A nack of a delivery with this receive count dead-letters the job; so does a delivery
    /// whose visibility expires at this count (a worker that keeps crashing on it).
    pub max_receives: u32,
    /// How long after enqueueing a job its dedup key still refers to it once it is done.
    pub dedup_window: Duration,
}

impl Default for SqliteQueueOptions {
    fn default() -> Self {
        Self { max_receives: 5, dedup_window: Duration::from_secs(5 * 60) }
    }
}

/// Counters of the writer thread, for tests, benchmarks and metrics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct QueueStats {
    /// Calls executed by the writer.
    pub requests: u64,
    /// Transactions committed; each is at most one fsync, shared by all requests of its batch.
    pub commits: u64,
    /// Distinct key hashes the writer keeps for dedup (jobs ready or within the window).
    pub live_keys: u64,
    /// WAL frames the checkpointer thread has copied into the database file.
    pub checkpointed_frames: u64,
    /// fsyncs of the WAL; each makes every commit before it durable, so usually fewer than
    /// `commits` under load.
    pub syncs: u64,
    /// Commits known to be on disk. Callers of a commit are answered only once it is.
    pub durable_commits: u64,
}

/// The embedded, durable [`JobQueue`]. Open it once and share it (`Arc<dyn JobQueue>`);
/// dropping it lets the writer finish the requests already sent, then closes the file.
pub struct SqliteQueue {
    path: PathBuf,
    sender: Option<mpsc::Sender<Box<dyn Op>>>,
    writer: Option<JoinHandle<()>>,
    counters: Arc<Counters>,
    /// Shared with the writer, so that tests can move time forward.
    #[cfg(test)]
    clock: Clock,
}

impl fmt::Debug for SqliteQueue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SqliteQueue").field("path", &self.path).finish_non_exhaustive()
    }
}

impl SqliteQueue {
    /// Opens (creating if needed) the queue file at `path` and starts its writer thread.
    /// Fails with [`QueueError::Unavailable`] when the file cannot be opened for writing, does
    /// not hold a Ferry queue, or has a schema newer than this build knows.
    pub fn open(path: &Path, options: SqliteQueueOptions) -> Result<Self, QueueError> {
        Self::open_syncing(path, options, |wal| Box::new(move || wal.sync_data()))
    }

    /// [`SqliteQueue::open`] with the fsync of the WAL made by `sync` (tests make it fail).
    fn open_syncing(
        path: &Path,
        options: SqliteQueueOptions,
        sync: impl FnOnce(std::fs::File) -> SyncWal,
    ) -> Result<Self, QueueError> {
        if options.max_receives == 0 {
            return Err(QueueError::Invalid("max_receives must be at least 1".to_owned()));
        }
        let conn = open_connection(path)?;
        // The syncer fsyncs the WAL before anyone is answered; SQLite still syncs around
        // checkpoints, so a checkpoint never copies frames the disk does not have.
        let pragmas = conn
            .pragma_update(None, "wal_autocheckpoint", WAL_BACKSTOP_PAGES)
            .and_then(|()| conn.pragma_update(None, "journal_size_limit", WAL_SIZE_LIMIT_BYTES))
            .and_then(|()| conn.pragma_update(None, "synchronous", "NORMAL"));
        pragmas.map_err(|e| {
            QueueError::Unavailable(format!("job queue database {}: setting WAL pragmas failed: {e}", path.display()))
        })?;
        let counters = Arc::new(Counters::default());
        let syncer = Syncer::start(path, sync, Arc::clone(&counters))?;
        let checkpointer = Checkpointer::start(path, Arc::clone(&counters))?;
        let clock = Clock::default();
        let (sender, receiver) = mpsc::channel(CHANNEL_CAPACITY);
        let writer = Writer {
            syncer,
            conn,
            receiver,
            options,
            path: path.to_owned(),
            clock: clock.clone(),
            counters: Arc::clone(&counters),
            next_prune_at: Cell::new(i64::MIN),
            keys: RefCell::new(LiveKeys::default()),
            keys_stale: Cell::new(true),
            checkpointer,
        };
        let writer = std::thread::Builder::new()
            .name("ferry-queue-writer".to_owned())
            .spawn(move || writer.run())
            .map_err(|e| {
                QueueError::Unavailable(format!("cannot start the writer thread of job queue {}: {e}", path.display()))
            })?;
        tracing::debug!(path = %path.display(), "job queue opened");
        Ok(Self {
            path: path.to_owned(),
            sender: Some(sender),
            writer: Some(writer),
            counters,
            #[cfg(test)]
            clock,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn stats(&self) -> QueueStats {
        QueueStats {
            requests: self.counters.requests.load(Ordering::Relaxed),
            commits: self.counters.commits.load(Ordering::Relaxed),
            live_keys: self.counters.live_keys.load(Ordering::Relaxed),
            checkpointed_frames: self.counters.checkpointed_frames.load(Ordering::Relaxed),
            syncs: self.counters.syncs.load(Ordering::Relaxed),
            durable_commits: self.counters.durable_commits.load(Ordering::Relaxed),
        }
    }

    /// Runs `work` on the writer thread inside the next batch's transaction and answers once
    /// that transaction committed and is on disk. `work` may refuse ([`Failure::Queue`]) only
    /// before it changes anything; a storage error ([`Failure::Sql`]) fails the whole batch.
    fn call<T, F>(&self, what: &'static str, work: F) -> QueueFuture<'_, T>
    where
        T: Send + 'static,
        F: FnOnce(&Connection, &Batch<'_>) -> Result<T, Failure> + Send + 'static,
    {
        let (reply, answer) = oneshot::channel();
        let op: Box<dyn Op> = Box::new(Call { what, work: Some(work), result: None, reply: Some(reply) });
        Box::pin(async move {
            let sender = self.sender.as_ref().ok_or_else(|| self.stopped())?;
            sender.send(op).await.map_err(|_| self.stopped())?;
            let Reply { answer, op } = answer.await.map_err(|_| self.stopped())?;
            // Freed here, on the thread that allocated it (see `Reply`).
            drop(op);
            answer
        })
    }

    fn stopped(&self) -> QueueError {
        QueueError::Unavailable(format!(
            "the writer thread of job queue {} has stopped (see the error logged when it did); restart ferry",
            self.path.display()
        ))
    }
}

impl Drop for SqliteQueue {
    fn drop(&mut self) {
        // Closing the channel ends the writer once it has answered everything already sent.
        drop(self.sender.take());
        if let Some(writer) = self.writer.take() {
            // A panic was logged by the writer itself.
            let _ = writer.join();
        }
    }
}

impl JobQueue for SqliteQueue {
    fn enqueue(&self, jobs: Vec<NewJob>) -> QueueFuture<'_, Vec<Enqueued>> {
        if let Some(index) = jobs.iter().position(|job| job.dedup_key.is_empty()) {
            return Box::pin(std::future::ready(Err(QueueError::Invalid(format!(
                "job {index} of the batch has an empty dedup_key; every job needs one"
            )))));
        }
        if jobs.is_empty() {
            return Box::pin(std::future::ready(Ok(Vec::new())));
        }
        // Ids and answers are allocated here and the jobs come back to be freed here: glibc's
        // malloc makes a thread freeing another thread's memory wait for that thread's arena.
        let now_ms = millis(SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default());
        let answers: Vec<Enqueued> =
            jobs.iter().map(|_| Enqueued { id: job_id(now_ms), duplicate: Some(false) }).collect();
        let call = self.call("enqueue", move |conn, batch| enqueue(conn, batch, jobs, answers));
        Box::pin(async move {
            let (answers, jobs) = call.await?;
            drop(jobs);
            Ok(answers)
        })
    }

    fn receive(&self, max: usize, visibility: Duration) -> QueueFuture<'_, Vec<Delivery>> {
        if max == 0 {
            return Box::pin(std::future::ready(Ok(Vec::new())));
        }
        self.call("receive", move |conn, batch| receive(conn, batch, max, visibility))
    }

    fn ack(&self, receipt: &str) -> QueueFuture<'_, ()> {
        let receipt = receipt.to_owned();
        self.call("ack", move |conn, batch| ack(conn, batch, receipt))
    }

    fn nack(&self, receipt: &str, error: &str, retry_after: Duration) -> QueueFuture<'_, ()> {
        let receipt = receipt.to_owned();
        let error = truncate(error, MAX_ERROR_BYTES);
        self.call("nack", move |conn, batch| nack(conn, batch, receipt, error, Some(retry_after)))
    }

    fn dead_letter(&self, receipt: &str, error: &str) -> QueueFuture<'_, ()> {
        let receipt = receipt.to_owned();
        let error = truncate(error, MAX_ERROR_BYTES);
        self.call("dead-letter", move |conn, batch| nack(conn, batch, receipt, error, None))
    }

    fn extend(&self, receipt: &str, visibility: Duration) -> QueueFuture<'_, ()> {
        let receipt = receipt.to_owned();
        self.call("extend visibility", move |conn, batch| extend(conn, batch, receipt, visibility))
    }

    fn dead_letters(&self) -> QueueFuture<'_, Vec<DeadLetter>> {
        self.call("list dead letters", |conn, _| dead_letters(conn))
    }

    fn depth(&self) -> QueueFuture<'_, Option<u64>> {
        self.call("count jobs", |conn, _| {
            let ready: i64 = conn
                .prepare_cached("SELECT count(*) FROM jobs WHERE state = 'ready'")?
                .query_row([], |row| row.get(0))?;
            Ok(Some(ready.max(0) as u64))
        })
    }

    fn redrive(&self, id: &str) -> QueueFuture<'_, bool> {
        let id = id.to_owned();
        self.call("redrive", move |conn, batch| {
            let moved: Option<(i64, String)> = conn
                .prepare_cached(
                    "UPDATE jobs SET state = 'ready', receive_count = 0, available_at = ?2,
                            receipt = NULL, failed_at = NULL
                     WHERE seq = (SELECT seq FROM jobs INDEXED BY jobs_dead WHERE state = 'dead' AND id = ?1)
                     RETURNING seq, dedup_key",
                )?
                .query_row(params![id, batch.now_ms], |row| Ok((row.get(0)?, row.get(1)?)))
                .optional()?;
            // Ready again: its key catches duplicates again, whatever its age.
            if let Some((seq, dedup_key)) = &moved {
                batch.keys.borrow_mut().add(dedup_key, *seq, batch.now_ms);
            }
            Ok(moved.is_some())
        })
    }

    /// Under load a probe write waits behind every batch queued before it (`/healthz` took a
    /// second during a flood). A commit made durable within [`RECENT_DURABLE_MS`] proves what
    /// the probe would — writer running, file writable, fsync working — so that answers; a quiet
    /// queue gets the probe. A failure shows within that time: failed commits and fsyncs never
    /// refresh it.
    fn ready(&self) -> QueueFuture<'_, ()> {
        let last = self.counters.last_durable_unix_ms.load(Ordering::Relaxed);
        let age = unix_ms_now().saturating_sub(last);
        let writer_running = self.sender.as_ref().is_some_and(|s| !s.is_closed());
        if last > 0 && (0..RECENT_DURABLE_MS).contains(&age) && writer_running {
            return Box::pin(std::future::ready(Ok(())));
        }
        self.check()
    }

    /// Round trip through the writer with a real write, so it fails when enqueue would: writer
    /// stopped, file unwritable, disk full.
    fn check(&self) -> QueueFuture<'_, ()> {
        self.call("check", |conn, batch| {
            conn.prepare_cached(
                "INSERT INTO probe (id, at_unix_ms) VALUES (1, ?1)
                 ON CONFLICT (id) DO UPDATE SET at_unix_ms = excluded.at_unix_ms",
            )?
            .execute([batch.now_ms])?;
            Ok(())
        })
    }
}

/// Inserts `jobs` under the ids already in `answers`, or marks an answer a duplicate. Hands
/// both back, so that the caller's thread frees them.
fn enqueue(
    conn: &Connection,
    batch: &Batch<'_>,
    jobs: Vec<NewJob>,
    mut answers: Vec<Enqueued>,
) -> Result<(Vec<Enqueued>, Vec<NewJob>), Failure> {
    let mut insert = conn.prepare_cached(
        "INSERT INTO jobs (id, dedup_key, payload, state, enqueued_at, available_at)
         VALUES (?1, ?2, ?3, 'ready', ?4, ?4)",
    )?;
    let mut keys = batch.keys.borrow_mut();
    for (job, answer) in jobs.iter().zip(&mut answers) {
        // Earlier requests of the same batch are in `keys` too: a duplicate within one batch
        // meets the job its first copy added.
        // `i64::MAX`: no finished job is recent enough, only a ready or in-flight one matches.
        let window_start = if job.while_pending_only { i64::MAX } else { batch.window_start() };
        if let Some(id) = keys.find(conn, &job.dedup_key, window_start)? {
            *answer = Enqueued { id, duplicate: Some(true) };
            continue;
        }
        insert.execute(params![answer.id, job.dedup_key, job.payload.get(), batch.now_ms])?;
        keys.add(&job.dedup_key, conn.last_insert_rowid(), batch.now_ms);
    }
    Ok((answers, jobs))
}

fn receive(conn: &Connection, batch: &Batch<'_>, max: usize, visibility: Duration) -> Result<Vec<Delivery>, Failure> {
    struct Candidate {
        seq: i64,
        id: String,
        dedup_key: String,
        payload: String,
        receive_count: u32,
        last_error: Option<String>,
    }
    let mut pick = conn.prepare_cached(
        "SELECT seq, id, payload, receive_count, last_error, dedup_key FROM jobs
         WHERE state = 'ready' AND available_at <= ?1
         ORDER BY available_at, seq LIMIT ?2",
    )?;
    let mut deliver = conn.prepare_cached(
        "UPDATE jobs SET receipt = ?2, receive_count = receive_count + 1, available_at = ?3
         WHERE seq = ?1",
    )?;
    let mut bury = conn.prepare_cached(
        "UPDATE jobs SET state = 'dead', receipt = NULL, last_error = ?2, failed_at = ?3
         WHERE seq = ?1",
    )?;
    let invisible_until = batch.now_ms.saturating_add(millis(visibility));
    let max_receives = batch.options.max_receives;
    let mut deliveries = Vec::with_capacity(max.min(64));
    while deliveries.len() < max {
        let want = i64::try_from(max - deliveries.len()).unwrap_or(i64::MAX);
        let candidates = pick
            .query_map(params![batch.now_ms, want], |row| {
                Ok(Candidate {
                    seq: row.get(0)?,
                    id: row.get(1)?,
                    payload: row.get(2)?,
                    receive_count: row.get(3)?,
                    last_error: row.get(4)?,
                    dedup_key: row.get(5)?,
                })
            })?
            .collect::<Result<Vec<_>, _>>()?;
        let mut buried = false;
        for job in candidates {
            if job.receive_count >= max_receives {
                // Delivered max_receives times and never settled: the worker keeps dying on it.
                let mut error = format!(
                    "delivered {} times without an ack or nack (each time the visibility \
                     timeout expired: the worker crashed or took too long)",
                    job.receive_count
                );
                if let Some(earlier) = job.last_error {
                    error.push_str("; earlier error: ");
                    error.push_str(&earlier);
                }
                bury.execute(params![job.seq, truncate(&error, MAX_ERROR_BYTES), batch.now_ms])?;
                batch.keys.borrow_mut().settled(&job.dedup_key, job.seq, batch.now_ms);
                buried = true;
                continue;
            }
            let payload = match serde_json::from_str(&job.payload) {
                Ok(payload) => payload,
                Err(e) => {
                    // Only a file edited by hand gets here; never block the queue on it.
                    let error = format!("the stored payload is not valid JSON: {e}");
                    bury.execute(params![job.seq, error, batch.now_ms])?;
                    batch.keys.borrow_mut().settled(&job.dedup_key, job.seq, batch.now_ms);
                    buried = true;
                    continue;
                }
            };
            let receipt = Uuid::new_v4().to_string();
            deliver.execute(params![job.seq, receipt, invisible_until])?;
            deliveries.push(Delivery {
                id: job.id,
                receipt,
                payload,
                receive_count: job.receive_count.saturating_add(1),
            });
        }
        if !buried {
            break;
        }
    }
    Ok(deliveries)
}

fn ack(conn: &Connection, batch: &Batch<'_>, receipt: String) -> Result<(), Failure> {
    // The payload is no longer needed: the row stays only to catch duplicates.
    let settled: Option<(i64, String)> = conn
        .prepare_cached(
            "UPDATE jobs SET state = 'done', payload = 'null'
             WHERE receipt = ?1 AND state = 'ready'
             RETURNING seq, dedup_key",
        )?
        .query_row([&receipt], |row| Ok((row.get(0)?, row.get(1)?)))
        .optional()?;
    if let Some((seq, dedup_key)) = settled {
        batch.keys.borrow_mut().settled(&dedup_key, seq, batch.now_ms);
        return Ok(());
    }
    let already_done =
        conn.prepare_cached("SELECT 1 FROM jobs WHERE receipt = ?1 AND state = 'done'")?.exists([&receipt])?;
    if already_done { Ok(()) } else { Err(QueueError::StaleReceipt(receipt).into()) }
}

fn nack(
    conn: &Connection,
    batch: &Batch<'_>,
    receipt: String,
    error: String,
    // None: dead-letter now.
    retry_after: Option<Duration>,
) -> Result<(), Failure> {
    let delivered: Option<(i64, u32, String)> = conn
        .prepare_cached("SELECT seq, receive_count, dedup_key FROM jobs WHERE receipt = ?1 AND state = 'ready'")?
        .query_row([&receipt], |row| Ok((row.get(0)?, row.get(1)?, row.get(2)?)))
        .optional()?;
    let Some((seq, receive_count, dedup_key)) = delivered else {
        return Err(QueueError::StaleReceipt(receipt).into());
    };
    let Some(retry_after) = retry_after.filter(|_| receive_count < batch.options.max_receives) else {
        conn.prepare_cached(
            "UPDATE jobs SET state = 'dead', receipt = NULL, last_error = ?2, failed_at = ?3
             WHERE seq = ?1",
        )?
        .execute(params![seq, error, batch.now_ms])?;
        batch.keys.borrow_mut().settled(&dedup_key, seq, batch.now_ms);
        return Ok(());
    };
    conn.prepare_cached("UPDATE jobs SET receipt = NULL, last_error = ?2, available_at = ?3 WHERE seq = ?1")?
        .execute(params![seq, error, batch.now_ms.saturating_add(millis(retry_after))])?;
    Ok(())
}

fn extend(conn: &Connection, batch: &Batch<'_>, receipt: String, visibility: Duration) -> Result<(), Failure> {
    let extended = conn
        .prepare_cached("UPDATE jobs SET available_at = ?2 WHERE receipt = ?1 AND state = 'ready'")?
        .execute(params![receipt, batch.now_ms.saturating_add(millis(visibility))])?;
    if extended == 1 { Ok(()) } else { Err(QueueError::StaleReceipt(receipt).into()) }
}

fn dead_letters(conn: &Connection) -> Result<Vec<DeadLetter>, Failure> {
    let mut select = conn.prepare_cached(
        "SELECT id, payload, receive_count, coalesce(last_error, ''), failed_at FROM jobs
         WHERE state = 'dead' ORDER BY failed_at, seq",
    )?;
    let rows = select
        .query_map([], |row| {
            Ok((row.get::<_, String>(0)?, row.get::<_, String>(1)?, row.get(2)?, row.get(3)?, row.get(4)?))
        })?
        .collect::<Result<Vec<_>, _>>()?;
    Ok(rows
        .into_iter()
        .map(|(id, payload, receive_count, last_error, failed_at_unix_ms)| {
            // Kept as a string if it is not JSON, so that it can still be looked at.
            let payload = serde_json::from_str(&payload).unwrap_or(serde_json::Value::String(payload));
            DeadLetter { id, payload, receive_count, last_error, failed_at_unix_ms }
        })
        .collect())
}

/// This kind of file, for [`store::open`].
const STORE: StoreKind = StoreKind {
    name: "job queue",
    application_id: APPLICATION_ID,
    schema_version: SCHEMA_VERSION,
    schema: SCHEMA,
    migrations: MIGRATIONS,
};

fn open_connection(path: &Path) -> Result<Connection, QueueError> {
    store::open(path, &STORE).map_err(QueueError::Unavailable)
}

fn hint(error: &rusqlite::Error) -> String {
    store::hint(&STORE, error)
}

/// A UUIDv7: ordered by time, so new ids append to the id index instead of landing on random
/// pages, and fewer pages are written per commit.
fn job_id(now_ms: i64) -> String {
    let random = Uuid::new_v4();
    let mut bytes = [0; 10];
    bytes.copy_from_slice(&random.as_bytes()[..10]);
    uuid::Builder::from_unix_timestamp_millis(u64::try_from(now_ms).unwrap_or(0), &bytes).into_uuid().to_string()
}

fn millis(duration: Duration) -> i64 {
    i64::try_from(duration.as_millis()).unwrap_or(i64::MAX)
}

fn truncate(text: &str, max_bytes: usize) -> String {
    if text.len() <= max_bytes {
        return text.to_owned();
    }
    let mut end = max_bytes;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &text[..end])
}

#[derive(Default)]
struct Counters {
    requests: AtomicU64,
    commits: AtomicU64,
    live_keys: AtomicU64,
    checkpointed_frames: AtomicU64,
    syncs: AtomicU64,
    durable_commits: AtomicU64,
    /// The writer is running a batch: the sync thread waits a moment for it (one fsync for both).
    writer_busy: std::sync::atomic::AtomicBool,
    /// When a commit last became durable (unix ms; 0: never): a readiness probe answers from it
    /// while the queue is busy, instead of queueing behind every batch.
    last_durable_unix_ms: std::sync::atomic::AtomicI64,
}

/// fsyncs the WAL file.
type SyncWal = Box<dyn FnMut() -> std::io::Result<()> + Send>;

/// A committed batch whose callers wait for the disk.
struct Settled {
    ops: Vec<Box<dyn Op>>,
    /// Commits by the writer up to and including this batch's.
    commits: u64,
}

/// The thread that makes commits durable and answers their callers: one fsync of the WAL for
/// every batch handed over since the last one, then the answers, in commit order (a batch that
/// only read may have read an earlier batch's rows, so it is answered after them too).
struct Syncer {
    sender: Option<std::sync::mpsc::Sender<Settled>>,
    /// Emptied batch vectors coming back, so the writer reuses its own allocations instead of
    /// the sync thread freeing them (see [`Reply`]).
    emptied: std::sync::mpsc::Receiver<Vec<Box<dyn Op>>>,
    thread: Option<JoinHandle<()>>,
    /// Set by the first failed fsync; from then on every request fails with it.
    failed: Arc<std::sync::OnceLock<QueueError>>,
}

impl Syncer {
    /// Opens the WAL file, which SQLite created when the writer's connection first read the
    /// database. It is never replaced while that connection is open.
    fn start(
        path: &Path,
        sync: impl FnOnce(std::fs::File) -> SyncWal,
        counters: Arc<Counters>,
    ) -> Result<Self, QueueError> {
        let mut wal_path = path.as_os_str().to_owned();
        wal_path.push("-wal");
        let wal_path = PathBuf::from(wal_path);
        let wal = std::fs::File::open(&wal_path).map_err(|e| {
            QueueError::Unavailable(format!("cannot open the WAL {} of the job queue: {e}", wal_path.display()))
        })?;
        let mut sync_wal = sync(wal);
        let (sender, settled) = std::sync::mpsc::channel::<Settled>();
        let (give_back, emptied) = std::sync::mpsc::channel();
        let failed = Arc::new(std::sync::OnceLock::new());
        let failure = Arc::clone(&failed);
        let thread = std::thread::Builder::new()
            .name("ferry-queue-sync".to_owned())
            .spawn(move || {
                let mut durable = 0;
                while let Ok(first) = settled.recv() {
                    let mut pending = vec![first];
                    pending.extend(settled.try_iter());
                    if counters.writer_busy.load(Ordering::Acquire)
                        && let Ok(next) = settled.recv_timeout(COALESCE_WAIT)
                    {
                        pending.push(next);
                        pending.extend(settled.try_iter());
                    }
                    let newest = pending.iter().map(|batch| batch.commits).max().unwrap_or(0);
                    if newest > durable && failure.get().is_none() {
                        match sync_wal() {
                            Ok(()) => {
                                durable = newest;
                                counters.syncs.fetch_add(1, Ordering::Relaxed);
                                counters.durable_commits.store(durable, Ordering::Relaxed);
                                counters.last_durable_unix_ms.store(unix_ms_now(), Ordering::Relaxed);
                            }
                            Err(e) => {
                                let error = QueueError::Unavailable(format!(
                                    "fsync of {} failed: {e}; the job queue stops accepting work until ferry                                      is restarted (jobs answered before this are on disk)",
                                    wal_path.display()
                                ));
                                tracing::error!(error = %error, "job queue WAL fsync failed");
                                let _ = failure.set(error);
                            }
                        }
                    }
                    for batch in pending {
                        let outcome = match failure.get() {
                            Some(error) if batch.commits > durable => Err(error),
                            _ => Ok(()),
                        };
                        let mut ops = batch.ops;
                        for op in ops.drain(..) {
                            op.finish(outcome);
                        }
                        let _ = give_back.send(ops);
                    }
                }
            })
            .map_err(|e| QueueError::Unavailable(format!("cannot start the sync thread of the job queue: {e}")))?;
        Ok(Self { sender: Some(sender), emptied, thread: Some(thread), failed })
    }

    /// An empty vector for the writer's next batch.
    fn fresh_batch(&self) -> Vec<Box<dyn Op>> {
        self.emptied.try_recv().unwrap_or_else(|_| Vec::with_capacity(MAX_BATCH))
    }

    /// The first fsync failure, if there was one.
    fn failure(&self) -> Option<&QueueError> {
        self.failed.get()
    }

    fn hand_over(&self, batch: Settled) {
        let Some(sender) = &self.sender else {
            return;
        };
        if let Err(std::sync::mpsc::SendError(batch)) = sender.send(batch) {
            // Only when the sync thread panicked: fail the callers rather than leave them waiting.
            let error = QueueError::Unavailable("the sync thread of the job queue has stopped".to_owned());
            for op in batch.ops {
                op.finish(Err(&error));
            }
        }
    }
}

impl Drop for Syncer {
    fn drop(&mut self) {
        // The thread answers what it was handed, then ends.
        drop(self.sender.take());
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// The thread that checkpoints the WAL, on a connection of its own, off the commit path.
struct Checkpointer {
    /// A commit happened. Bounded to one: a pending wake-up already covers later commits.
    wake: std::sync::mpsc::SyncSender<()>,
    stop: Arc<std::sync::atomic::AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Checkpointer {
    fn start(path: &Path, counters: Arc<Counters>) -> Result<Self, QueueError> {
        let conn = Connection::open(path).map_err(|e| {
            QueueError::Unavailable(format!(
                "cannot open job queue database {} for checkpoints: {e}{}",
                path.display(),
                hint(&e)
            ))
        })?;
        let (wake, woken) = std::sync::mpsc::sync_channel::<()>(1);
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let stopped = Arc::clone(&stop);
        let path = path.to_owned();
        let thread = std::thread::Builder::new()
            .name("ferry-queue-checkpoint".to_owned())
            .spawn(move || {
                while woken.recv().is_ok() && !stopped.load(Ordering::Relaxed) {
                    let pass = conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |row| {
                        Ok((row.get::<_, i64>(1)?, row.get::<_, i64>(2)?))
                    });
                    match pass {
                        Ok((_, copied)) => {
                            counters.checkpointed_frames.fetch_add(copied.max(0).unsigned_abs(), Ordering::Relaxed);
                        }
                        // The backstop checkpoint inside commits still bounds the WAL.
                        Err(e) => tracing::warn!(path = %path.display(), error = %e, "job queue checkpoint failed"),
                    }
                    // Unparked early only to stop.
                    std::thread::park_timeout(CHECKPOINT_EVERY);
                }
            })
            .map_err(|e| {
                QueueError::Unavailable(format!("cannot start the checkpoint thread of the job queue: {e}"))
            })?;
        Ok(Self { wake, stop, thread: Some(thread) })
    }

    fn committed(&self) {
        // Full: a pass is already due and will include this commit.
        let _ = self.wake.try_send(());
    }
}

impl Drop for Checkpointer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        // Replacing the sender disconnects a thread waiting for a commit.
        self.wake = std::sync::mpsc::sync_channel(1).0;
        if let Some(thread) = self.thread.take() {
            thread.thread().unpark();
            let _ = thread.join();
        }
    }
}

/// Wall-clock unix milliseconds, plus an offset that only tests move.
#[derive(Clone, Default)]
struct Clock {
    offset_ms: Arc<AtomicI64>,
}

/// How recent a durable commit answers a readiness probe without a probe write of its own.
const RECENT_DURABLE_MS: i64 = 1_000;

fn unix_ms_now() -> i64 {
    millis(SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default())
}

impl Clock {
    fn now_ms(&self) -> i64 {
        let since_epoch = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default();
        millis(since_epoch).saturating_add(self.offset_ms.load(Ordering::Relaxed))
    }
}

/// What every request of one batch shares.
struct Batch<'a> {
    /// Read once per batch: all requests of a batch happen at the same instant.
    now_ms: i64,
    options: &'a SqliteQueueOptions,
    keys: &'a RefCell<LiveKeys>,
}

impl Batch<'_> {
    /// Jobs enqueued after this instant catch duplicates whatever their state.
    fn window_start(&self) -> i64 {
        self.now_ms.saturating_sub(millis(self.options.dedup_window))
    }
}

/// The rows (by `seq`) of one key hash: nearly always one.
enum Seqs {
    One(i64),
    Many(Vec<i64>),
}

/// The dedup keys a new job may collide with, by hash: a superset of the jobs that are ready or
/// were enqueued within the dedup window. A hash hit is confirmed on the row itself (same key,
/// still ready or recent), so a stale entry costs one read and never a wrong answer; a missing
/// one would let a duplicate in, so every way a row becomes live adds it here.
#[derive(Default)]
struct LiveKeys {
    hasher: RandomState,
    /// Sharded, like `review` is chunked: with hundreds of thousands of jobs pending, one
    /// doubling of a plain map would hold up every commit for tens of milliseconds.
    by_hash: ShardedMap<Seqs>,
    /// `(since, hash, seq)` in time order: once `since` is a dedup window old the row is checked
    /// and its entry dropped unless it is still ready. Pushed when a row is added or settled.
    review: ChunkedQueue<(i64, u64, i64)>,
    /// `PRAGMA data_version` when the keys were last known complete: another connection's
    /// commit changes it.
    data_version: i64,
}

impl LiveKeys {
    /// Every live key in the file (a full scan: at open, and after another process wrote).
    fn load(conn: &Connection, window_start: i64, now_ms: i64) -> rusqlite::Result<Self> {
        let mut keys = LiveKeys::default();
        let mut select =
            conn.prepare("SELECT seq, dedup_key FROM jobs WHERE state = 'ready' OR enqueued_at > ?1 ORDER BY seq")?;
        let mut rows = select.query([window_start])?;
        while let Some(row) = rows.next()? {
            let key: String = row.get(1)?;
            keys.add(&key, row.get(0)?, now_ms);
        }
        keys.data_version = data_version(conn)?;
        Ok(keys)
    }

    fn add(&mut self, dedup_key: &str, seq: i64, now_ms: i64) {
        let hash = self.hasher.hash_one(dedup_key);
        self.by_hash.upsert(hash, |seqs| match seqs {
            None => Seqs::One(seq),
            Some(Seqs::One(other)) if other == seq => Seqs::One(seq),
            Some(Seqs::One(other)) => Seqs::Many(vec![other, seq]),
            Some(Seqs::Many(mut seqs)) => {
                if !seqs.contains(&seq) {
                    seqs.push(seq);
                }
                Seqs::Many(seqs)
            }
        });
        self.review.push_back((now_ms, hash, seq));
    }

    /// The row left `ready` (acked, dead-lettered): its entry is reviewed a window from now.
    fn settled(&mut self, dedup_key: &str, seq: i64, now_ms: i64) {
        let hash = self.hasher.hash_one(dedup_key);
        self.review.push_back((now_ms, hash, seq));
    }

    /// The newest live job with this key.
    fn find(&mut self, conn: &Connection, dedup_key: &str, window_start: i64) -> rusqlite::Result<Option<String>> {
        let hash = self.hasher.hash_one(dedup_key);
        let seqs: Vec<i64> = match self.by_hash.get(hash) {
            None => return Ok(None),
            Some(Seqs::One(seq)) => vec![*seq],
            Some(Seqs::Many(seqs)) => seqs.iter().rev().copied().collect(),
        };
        let mut row = conn.prepare_cached(
            "SELECT id FROM jobs WHERE seq = ?1 AND dedup_key = ?2 AND (state = 'ready' OR enqueued_at > ?3)",
        )?;
        for seq in seqs {
            if let Some(id) = row.query_row(params![seq, dedup_key, window_start], |r| r.get(0)).optional()? {
                return Ok(Some(id));
            }
        }
        Ok(None)
    }

    /// Drops the entries of rows that have been out of the window and not ready for a window.
    fn review(&mut self, conn: &Connection, window_start: i64) -> rusqlite::Result<()> {
        let mut row = conn.prepare_cached("SELECT state = 'ready' OR enqueued_at > ?2 FROM jobs WHERE seq = ?1")?;
        while let Some((since, hash, seq)) = self.review.front() {
            if since > window_start {
                break;
            }
            self.review.pop_front();
            let live: bool = row.query_row(params![seq, window_start], |r| r.get(0)).optional()?.unwrap_or(false);
            if !live {
                self.remove(hash, seq);
            }
        }
        Ok(())
    }

    fn remove(&mut self, hash: u64, seq: i64) {
        self.by_hash.modify(hash, |seqs| match seqs {
            Seqs::One(only) if only == seq => None,
            Seqs::One(other) => Some(Seqs::One(other)),
            Seqs::Many(mut seqs) => {
                seqs.retain(|s| *s != seq);
                match seqs[..] {
                    [] => None,
                    [only] => Some(Seqs::One(only)),
                    _ => Some(Seqs::Many(seqs)),
                }
            }
        });
    }
}

fn data_version(conn: &Connection) -> rusqlite::Result<i64> {
    conn.prepare_cached("PRAGMA data_version")?.query_row([], |row| row.get(0))
}

/// An error inside a request: the caller's own, or SQLite's (reported as unavailable).
enum Failure {
    Queue(QueueError),
    Sql(rusqlite::Error),
}

impl From<QueueError> for Failure {
    fn from(error: QueueError) -> Self {
        Self::Queue(error)
    }
}

impl From<rusqlite::Error> for Failure {
    fn from(error: rusqlite::Error) -> Self {
        Self::Sql(error)
    }
}

/// A request waiting in the writer's channel, its result type erased.
trait Op: Send {
    /// Runs inside the batch transaction and keeps its result for [`Op::finish`]. `Err`: a
    /// storage error; the whole transaction must be rolled back.
    fn run(&mut self, conn: &Connection, batch: &Batch<'_>, path: &Path) -> Result<(), QueueError>;
    /// Answers the caller once the batch is settled: `commit` is the transaction's outcome.
    fn finish(self: Box<Self>, commit: Result<(), &QueueError>);
}

struct Call<T, F> {
    what: &'static str,
    work: Option<F>,
    result: Option<Result<T, QueueError>>,
    /// Taken by [`Op::finish`].
    reply: Option<oneshot::Sender<Reply<T>>>,
}

/// The answer to a [`Call`], with the call itself: the caller's thread allocated it, so the
/// caller's thread frees it (glibc malloc serializes threads that free each other's memory).
struct Reply<T> {
    answer: Result<T, QueueError>,
    op: Box<dyn std::any::Any + Send>,
}

impl<T, F> Op for Call<T, F>
where
    T: Send + 'static,
    F: FnOnce(&Connection, &Batch<'_>) -> Result<T, Failure> + Send + 'static,
{
    fn run(&mut self, conn: &Connection, batch: &Batch<'_>, path: &Path) -> Result<(), QueueError> {
        let Some(work) = self.work.take() else {
            return Ok(());
        };
        let changes = conn.total_changes();
        match work(conn, batch) {
            Ok(value) => self.result = Some(Ok(value)),
            // A refusal must leave the database as it found it, or the batch cannot commit.
            Err(Failure::Queue(refusal)) if conn.total_changes() == changes => {
                self.result = Some(Err(refusal));
            }
            Err(Failure::Queue(refusal)) => {
                return Err(QueueError::Unavailable(format!(
                    "internal error: {} was refused ({refusal}) after changing job queue \
                     database {}; its batch was rolled back",
                    self.what,
                    path.display()
                )));
            }
            Err(Failure::Sql(e)) => {
                return Err(QueueError::Unavailable(format!(
                    "{} failed in job queue database {}: {e}{}",
                    self.what,
                    path.display(),
                    hint(&e)
                )));
            }
        }
        Ok(())
    }

    fn finish(mut self: Box<Self>, commit: Result<(), &QueueError>) {
        let Some(reply) = self.reply.take() else {
            return;
        };
        let answer = match (self.result.take(), commit) {
            // A refusal stands whatever happened to the batch.
            (Some(Err(refusal)), _) => Err(refusal),
            (Some(Ok(value)), Ok(())) => Ok(value),
            (_, Err(error)) => Err(error.clone()),
            (None, Ok(())) => {
                Err(QueueError::Unavailable(format!("{} was not executed by the job queue writer", self.what)))
            }
        };
        // The caller may have gone away (client disconnected): its work is committed anyway.
        let _ = reply.send(Reply { answer, op: self });
    }
}

/// Logs the end of the writer thread; as an error when it panicked, since every request from then
/// on fails with [`QueueError::Unavailable`].
struct StopLog(PathBuf);

impl Drop for StopLog {
    fn drop(&mut self) {
        if std::thread::panicking() {
            tracing::error!(path = %self.0.display(), "job queue writer thread panicked; the queue is unavailable");
        } else {
            tracing::debug!(path = %self.0.display(), "job queue writer stopped");
        }
    }
}

/// The thread that owns the connection.
struct Writer {
    /// First, so it is dropped first: the last answers go out before the connection closes.
    syncer: Syncer,
    conn: Connection,
    receiver: mpsc::Receiver<Box<dyn Op>>,
    options: SqliteQueueOptions,
    path: PathBuf,
    clock: Clock,
    counters: Arc<Counters>,
    next_prune_at: Cell<i64>,
    keys: RefCell<LiveKeys>,
    /// Set when the keys may not match the file (a rolled-back batch): reloaded before the next.
    keys_stale: Cell<bool>,
    checkpointer: Checkpointer,
}

impl Writer {
    fn run(mut self) {
        let _stop = StopLog(self.path.clone());
        let mut ops = Vec::with_capacity(MAX_BATCH);
        // Blocks for the first request, then takes whatever else is already waiting.
        while self.receiver.blocking_recv_many(&mut ops, MAX_BATCH) > 0 {
            self.counters.writer_busy.store(true, Ordering::Release);
            self.execute(&mut ops);
            // Cleared by `execute` before it hands a batch over; here for the other ways out.
            self.counters.writer_busy.store(false, Ordering::Release);
        }
    }

    fn execute(&mut self, ops: &mut Vec<Box<dyn Op>>) {
        self.counters.requests.fetch_add(ops.len() as u64, Ordering::Relaxed);
        if let Some(error) = self.syncer.failure() {
            for op in ops.drain(..) {
                op.finish(Err(error));
            }
            return;
        }
        let batch = Batch { now_ms: self.clock.now_ms(), options: &self.options, keys: &self.keys };
        let outcome = self.transaction(ops, &batch);
        self.counters.live_keys.store(self.keys.borrow().by_hash.len() as u64, Ordering::Relaxed);
        if let Err(error) = &outcome {
            // Rolled back: nothing of it is in the file, nothing to wait for.
            for op in ops.drain(..) {
                op.finish(Err(error));
            }
            return;
        }
        let ops = std::mem::replace(ops, self.syncer.fresh_batch());
        let commits = self.counters.commits.load(Ordering::Relaxed);
        // Before the hand-over: otherwise the sync thread would wait for a batch that is not
        // coming.
        self.counters.writer_busy.store(false, Ordering::Release);
        self.syncer.hand_over(Settled { ops, commits });
    }

    /// One transaction, one commit, for the whole batch.
    fn transaction(&self, ops: &mut [Box<dyn Op>], batch: &Batch<'_>) -> Result<(), QueueError> {
        let conn = &self.conn;
        let begin = conn.prepare_cached("BEGIN IMMEDIATE").and_then(|mut begin| begin.execute([]));
        begin.map_err(|e| self.storage_error("beginning a transaction", e))?;
        let committed = self
            .refresh_keys(batch)
            .and_then(|()| {
                self.prune(batch);
                ops.iter_mut().try_for_each(|op| op.run(conn, batch, &self.path))
            })
            .and_then(|()| {
                let commit = conn.prepare_cached("COMMIT").and_then(|mut commit| commit.execute([]));
                commit.map(drop).map_err(|e| self.storage_error("committing", e))
            });
        match committed {
            Ok(()) => {
                self.counters.commits.fetch_add(1, Ordering::Relaxed);
                self.checkpointer.committed();
                Ok(())
            }
            Err(error) => {
                if !conn.is_autocommit() {
                    let _ = conn.execute_batch("ROLLBACK");
                }
                // The batch's changes to the keys were rolled back in the file only.
                self.keys_stale.set(true);
                Err(error)
            }
        }
    }

    /// Reloads the live keys when they may not match the file: at start, after a rolled-back
    /// batch, and when another connection committed since this one's last commit. Runs under
    /// the write lock, so nobody else can commit until this batch has.
    fn refresh_keys(&self, batch: &Batch<'_>) -> Result<(), QueueError> {
        let version = data_version(&self.conn).map_err(|e| self.storage_error("reading data_version", e))?;
        if !self.keys_stale.get() && version == self.keys.borrow().data_version {
            return Ok(());
        }
        let keys = LiveKeys::load(&self.conn, batch.window_start(), batch.now_ms)
            .map_err(|e| self.storage_error("loading the dedup keys", e))?;
        tracing::debug!(path = %self.path.display(), keys = keys.by_hash.len(), "job queue dedup keys loaded");
        *self.keys.borrow_mut() = keys;
        self.keys_stale.set(false);
        Ok(())
    }

    /// Deletes acked jobs whose dedup window has passed. Part of the batch's transaction, so it
    /// costs no fsync of its own.
    fn prune(&self, batch: &Batch<'_>) {
        if batch.now_ms < self.next_prune_at.get() {
            return;
        }
        self.next_prune_at.set(batch.now_ms.saturating_add(PRUNE_EVERY_MS));
        let cutoff = batch.now_ms.saturating_sub(millis(self.options.dedup_window));
        let pruned = self
            .conn
            .prepare_cached("DELETE FROM jobs WHERE state = 'done' AND enqueued_at <= ?1")
            .and_then(|mut delete| delete.execute([cutoff]));
        if let Err(e) = pruned {
            // Harmless: the rows only take space; the next prune retries.
            tracing::warn!(path = %self.path.display(), error = %e, "pruning done jobs failed");
        }
        if let Err(e) = self.keys.borrow_mut().review(&self.conn, cutoff) {
            // Harmless too: a stale entry costs a read, never a wrong answer.
            tracing::warn!(path = %self.path.display(), error = %e, "reviewing dedup keys failed");
        }
    }

    fn storage_error(&self, doing: &str, e: rusqlite::Error) -> QueueError {
        QueueError::Unavailable(format!("job queue database {}: {doing} failed: {e}{}", self.path.display(), hint(&e)))
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use futures_util::future::join_all;
    use serde_json::json;

    use super::*;

    const VISIBILITY: Duration = Duration::from_secs(30);

    fn open(dir: &tempfile::TempDir) -> SqliteQueue {
        open_with(dir, SqliteQueueOptions::default())
    }

    fn open_with(dir: &tempfile::TempDir, options: SqliteQueueOptions) -> SqliteQueue {
        SqliteQueue::open(&dir.path().join("queue.db"), options).expect("queue opens")
    }

    fn job(dedup_key: &str) -> NewJob {
        NewJob::new(dedup_key.to_owned(), &json!({ "key": dedup_key }))
    }

    /// Moves the queue's clock forward instead of sleeping through timeouts and windows.
    fn advance(queue: &SqliteQueue, by: Duration) {
        queue.clock.offset_ms.fetch_add(millis(by), Ordering::Relaxed);
    }

    async fn enqueue_one(queue: &SqliteQueue, dedup_key: &str) -> Enqueued {
        let mut enqueued = queue.enqueue(vec![job(dedup_key)]).await.expect("enqueue");
        assert_eq!(enqueued.len(), 1);
        enqueued.remove(0)
    }

    async fn receive_one(queue: &SqliteQueue) -> Delivery {
        let mut deliveries = queue.receive(10, VISIBILITY).await.expect("receive");
        assert_eq!(deliveries.len(), 1, "expected exactly one delivery");
        deliveries.remove(0)
    }

    #[tokio::test]
    async fn enqueued_jobs_survive_reopening() {
        let dir = tempfile::tempdir().unwrap();
        let ids: Vec<String> = {
            let queue = open(&dir);
            let enqueued = queue.enqueue(vec![job("a"), job("b"), job("c")]).await.unwrap();
            assert!(enqueued.iter().all(|e| e.duplicate == Some(false)));
            enqueued.into_iter().map(|e| e.id).collect()
        };

        let queue = open(&dir);
        let deliveries = queue.receive(10, VISIBILITY).await.unwrap();

        let received: Vec<&str> = deliveries.iter().map(|d| d.id.as_str()).collect();
        assert_eq!(received, ids, "all jobs, in enqueue order");
        assert_eq!(deliveries[1].payload, json!({ "key": "b" }));
        assert!(deliveries.iter().all(|d| d.receive_count == 1));
    }

    #[tokio::test]
    async fn depth_counts_waiting_and_in_flight_jobs_not_done_or_dead_ones() {
        let dir = tempfile::tempdir().unwrap();
        let queue = open(&dir);
        queue.enqueue(vec![job("a"), job("b"), job("c")]).await.unwrap();
        assert_eq!(queue.depth().await.unwrap(), Some(3));
        let delivered = queue.receive(2, VISIBILITY).await.unwrap();
        assert_eq!(delivered.len(), 2);
        assert_eq!(queue.depth().await.unwrap(), Some(3), "in flight still counts");
        queue.ack(&delivered[0].receipt).await.unwrap();
        queue.dead_letter(&delivered[1].receipt, "broken").await.unwrap();
        assert_eq!(queue.depth().await.unwrap(), Some(1), "done and dead jobs do not count");
    }

    #[tokio::test]
    async fn duplicate_keys_yield_one_job() {
        let dir = tempfile::tempdir().unwrap();
        let queue = Arc::new(open(&dir));

        let batch = queue.enqueue(vec![job("a"), job("b"), job("a")]).await.unwrap();
        assert!(batch[0].duplicate == Some(false) && batch[1].duplicate == Some(false));
        assert_eq!(batch[2], Enqueued { id: batch[0].id.clone(), duplicate: Some(true) });
        let again = enqueue_one(&queue, "b").await;
        assert_eq!(again.id, batch[1].id);
        assert!(again.duplicate == Some(true));

        let concurrent = join_all((0..50).map(|_| {
            let queue = Arc::clone(&queue);
            tokio::spawn(async move { enqueue_one(&queue, "c").await })
        }))
        .await;
        let concurrent: Vec<Enqueued> = concurrent.into_iter().map(Result::unwrap).collect();
        let ids: HashSet<&str> = concurrent.iter().map(|e| e.id.as_str()).collect();
        assert_eq!(ids.len(), 1, "all 50 callers get the same job id");
        assert_eq!(concurrent.iter().filter(|e| e.duplicate == Some(false)).count(), 1);

        let deliveries = queue.receive(100, VISIBILITY).await.unwrap();
        let keys: Vec<&serde_json::Value> = deliveries.iter().map(|d| &d.payload["key"]).collect();
        assert_eq!(keys, [&json!("a"), &json!("b"), &json!("c")]);
    }

    #[tokio::test]
    async fn dedup_window_expires() {
        let dir = tempfile::tempdir().unwrap();
        let queue = open(&dir);
        let first = enqueue_one(&queue, "k").await;
        let delivery = receive_one(&queue).await;
        queue.ack(&delivery.receipt).await.unwrap();

        let within = enqueue_one(&queue, "k").await;
        assert_eq!(within.id, first.id, "done, but still within the window");
        assert!(within.duplicate == Some(true));

        advance(&queue, SqliteQueueOptions::default().dedup_window);
        let after = enqueue_one(&queue, "k").await;
        assert!(after.duplicate == Some(false));
        assert_ne!(after.id, first.id);
        assert_eq!(receive_one(&queue).await.id, after.id);
    }

    #[tokio::test]
    async fn pending_job_keeps_its_key_past_the_dedup_window() {
        let dir = tempfile::tempdir().unwrap();
        let queue = open(&dir);
        let first = enqueue_one(&queue, "k").await;

        advance(&queue, Duration::from_secs(3600));
        let ready = enqueue_one(&queue, "k").await;
        assert_eq!((ready.id.as_str(), ready.duplicate), (first.id.as_str(), Some(true)));

        receive_one(&queue).await;
        let in_flight = enqueue_one(&queue, "k").await;
        assert_eq!((in_flight.id.as_str(), in_flight.duplicate), (first.id.as_str(), Some(true)));
    }

    #[tokio::test]
    async fn a_while_pending_key_merges_only_with_a_ready_or_in_flight_job() {
        let dir = tempfile::tempdir().unwrap();
        let queue = open(&dir);
        let pending = || queue.enqueue(vec![job("t").while_pending()]);
        let first = pending().await.unwrap().remove(0);
        let ready = pending().await.unwrap().remove(0);
        assert_eq!((ready.id.as_str(), ready.duplicate), (first.id.as_str(), Some(true)));
        let delivery = receive_one(&queue).await;
        let in_flight = pending().await.unwrap().remove(0);
        assert_eq!((in_flight.id.as_str(), in_flight.duplicate), (first.id.as_str(), Some(true)));

        // Done a moment ago, well within the dedup window: the same key is a new job.
        queue.ack(&delivery.receipt).await.unwrap();
        let after = pending().await.unwrap().remove(0);
        assert_eq!(after.duplicate, Some(false), "a finished job swallowed a new one");
        assert_ne!(after.id, first.id);
        assert_eq!(receive_one(&queue).await.id, after.id);
    }

    #[tokio::test]
    async fn done_jobs_are_pruned_after_the_dedup_window() {
        let dir = tempfile::tempdir().unwrap();
        let queue = open(&dir);
        enqueue_one(&queue, "k").await;
        queue.ack(&receive_one(&queue).await.receipt).await.unwrap();

        advance(&queue, Duration::from_secs(301));
        queue.check().await.unwrap(); // any batch prunes, at most once a second

        let rows: i64 = queue
            .call("count", |conn, _| Ok(conn.query_row("SELECT count(*) FROM jobs", [], |row| row.get(0))?))
            .await
            .unwrap();
        assert_eq!(rows, 0);
    }

    #[tokio::test]
    async fn received_job_is_invisible_until_visibility_expires_then_redelivered() {
        let dir = tempfile::tempdir().unwrap();
        let queue = open(&dir);
        let enqueued = enqueue_one(&queue, "k").await;

        let first = receive_one(&queue).await;
        assert_eq!((first.id.as_str(), first.receive_count), (enqueued.id.as_str(), 1));
        assert!(queue.receive(10, VISIBILITY).await.unwrap().is_empty());
        advance(&queue, VISIBILITY - Duration::from_secs(1));
        assert!(queue.receive(10, VISIBILITY).await.unwrap().is_empty());

        advance(&queue, Duration::from_secs(1));
        let second = receive_one(&queue).await;
        assert_eq!(second.id, enqueued.id);
        assert_eq!(second.receive_count, 2);
        assert_ne!(second.receipt, first.receipt);
    }

    #[tokio::test]
    async fn receive_takes_at_most_max_oldest_first() {
        let dir = tempfile::tempdir().unwrap();
        let queue = open(&dir);
        let keys = ["j0", "j1", "j2", "j3", "j4"];
        let enqueued = queue.enqueue(keys.iter().map(|key| job(key)).collect()).await.unwrap();

        let first = queue.receive(2, VISIBILITY).await.unwrap();
        let rest = queue.receive(10, VISIBILITY).await.unwrap();

        let ids = |deliveries: &[Delivery]| -> Vec<String> { deliveries.iter().map(|d| d.id.clone()).collect() };
        let expected: Vec<String> = enqueued.into_iter().map(|e| e.id).collect();
        assert_eq!(ids(&first), expected[..2]);
        assert_eq!(ids(&rest), expected[2..]);
        assert!(queue.receive(0, VISIBILITY).await.unwrap().is_empty());
    }

    #[tokio::test]
    async fn extended_delivery_stays_invisible_past_its_first_timeout() {
        let dir = tempfile::tempdir().unwrap();
        let queue = SqliteQueue::open(&dir.path().join("q.db"), SqliteQueueOptions::default()).unwrap();
        queue.enqueue(vec![NewJob::new("k".into(), &1)]).await.unwrap();
        let delivery = queue.receive(1, Duration::from_secs(10)).await.unwrap().remove(0);
        advance(&queue, Duration::from_secs(8));
        queue.extend(&delivery.receipt, Duration::from_secs(10)).await.unwrap();
        advance(&queue, Duration::from_secs(8));
        assert!(queue.receive(1, Duration::from_secs(10)).await.unwrap().is_empty(), "still leased");
        advance(&queue, Duration::from_secs(3));
        let again = queue.receive(1, Duration::from_secs(10)).await.unwrap();
        assert_eq!(again.len(), 1, "redelivered once the extended lease ran out");
        let stale = queue.extend(&delivery.receipt, Duration::from_secs(10)).await.unwrap_err();
        assert_eq!(stale, QueueError::StaleReceipt(delivery.receipt));
    }

    #[tokio::test]
    async fn ack_with_stale_receipt_does_not_delete_redelivered_job() {
        let dir = tempfile::tempdir().unwrap();
        let queue = open(&dir);
        enqueue_one(&queue, "k").await;
        let stale = receive_one(&queue).await;
        advance(&queue, VISIBILITY);
        let current = receive_one(&queue).await;

        let error = queue.ack(&stale.receipt).await.unwrap_err();
        assert_eq!(error, QueueError::StaleReceipt(stale.receipt.clone()));
        let error = queue.nack(&stale.receipt, "late", Duration::ZERO).await.unwrap_err();
        assert!(matches!(error, QueueError::StaleReceipt(_)));

        advance(&queue, VISIBILITY);
        let third = receive_one(&queue).await;
        assert_eq!((third.id.as_str(), third.receive_count), (current.id.as_str(), 3));
        queue.ack(&third.receipt).await.unwrap();
        queue.ack(&third.receipt).await.expect("a repeated ack is a no-op");
        advance(&queue, VISIBILITY);
        assert!(queue.receive(10, VISIBILITY).await.unwrap().is_empty());
    }

    #[tokio::test]
    async fn ack_after_visibility_expired_but_before_redelivery_succeeds() {
        let dir = tempfile::tempdir().unwrap();
        let queue = open(&dir);
        enqueue_one(&queue, "k").await;
        let slow = receive_one(&queue).await;
        advance(&queue, VISIBILITY * 2);

        queue.ack(&slow.receipt).await.unwrap();

        assert!(queue.receive(10, VISIBILITY).await.unwrap().is_empty());
    }

    #[tokio::test]
    async fn nack_retries_then_dead_letters_after_max_receives() {
        let dir = tempfile::tempdir().unwrap();
        let queue = open_with(&dir, SqliteQueueOptions { max_receives: 3, ..SqliteQueueOptions::default() });
        let enqueued = enqueue_one(&queue, "k").await;
        let retry_after = Duration::from_secs(10);

        for attempt in 1..=3 {
            let delivery = receive_one(&queue).await;
            assert_eq!(delivery.receive_count, attempt);
            queue.nack(&delivery.receipt, &format!("boom {attempt}"), retry_after).await.unwrap();
            assert!(queue.receive(10, VISIBILITY).await.unwrap().is_empty(), "not visible before retry_after");
            advance(&queue, retry_after);
        }

        assert!(queue.receive(10, VISIBILITY).await.unwrap().is_empty());
        let dead = queue.dead_letters().await.unwrap();
        assert_eq!(dead.len(), 1);
        assert_eq!(dead[0].id, enqueued.id);
        assert_eq!(dead[0].receive_count, 3);
        assert_eq!(dead[0].last_error, "boom 3");
        assert_eq!(dead[0].payload, json!({ "key": "k" }));
        assert!(dead[0].failed_at_unix_ms > 0);
    }

    #[tokio::test]
    async fn redrive_returns_dead_letter_to_ready() {
        let dir = tempfile::tempdir().unwrap();
        let queue: Arc<dyn JobQueue> =
            Arc::new(open_with(&dir, SqliteQueueOptions { max_receives: 1, ..SqliteQueueOptions::default() }));
        queue.enqueue(vec![job("k")]).await.unwrap();
        let delivery = queue.receive(1, VISIBILITY).await.unwrap().remove(0);
        queue.nack(&delivery.receipt, "registry said 500", Duration::ZERO).await.unwrap();
        let dead = queue.dead_letters().await.unwrap().remove(0);

        assert!(queue.redrive(&dead.id).await.unwrap());
        assert!(!queue.redrive(&dead.id).await.unwrap(), "no longer a dead letter");
        assert!(!queue.redrive("no-such-job").await.unwrap());

        assert!(queue.dead_letters().await.unwrap().is_empty());
        let again = queue.receive(10, VISIBILITY).await.unwrap();
        assert_eq!(again.len(), 1);
        assert_eq!((again[0].id.as_str(), again[0].receive_count), (dead.id.as_str(), 1));
    }

    #[tokio::test]
    async fn redriven_job_catches_duplicates_again_past_the_window() {
        let dir = tempfile::tempdir().unwrap();
        let queue = open_with(&dir, SqliteQueueOptions { max_receives: 1, ..SqliteQueueOptions::default() });
        let first = enqueue_one(&queue, "k").await;
        let delivery = receive_one(&queue).await;
        queue.nack(&delivery.receipt, "registry said 500", Duration::ZERO).await.unwrap();
        advance(&queue, SqliteQueueOptions::default().dedup_window + Duration::from_secs(1));

        // Dead and out of the window: the key is free, and a second job takes it.
        let second = enqueue_one(&queue, "k").await;
        assert!(second.duplicate == Some(false));
        // The first comes back: now two ready jobs share the key, and each keeps catching it.
        assert!(queue.redrive(&first.id).await.unwrap());
        let third = enqueue_one(&queue, "k").await;
        assert!(third.duplicate == Some(true));
        assert!([&first.id, &second.id].contains(&&third.id), "{third:?}");
        let deliveries = queue.receive(10, VISIBILITY).await.unwrap();
        for delivery in &deliveries {
            queue.ack(&delivery.receipt).await.unwrap();
        }
        let fourth = enqueue_one(&queue, "k").await;
        assert!(fourth.duplicate == Some(true), "acked within the window still catches: {fourth:?}");
    }

    #[tokio::test]
    async fn keys_of_settled_jobs_are_dropped_a_window_later() {
        let dir = tempfile::tempdir().unwrap();
        let queue = open(&dir);
        let window = SqliteQueueOptions::default().dedup_window;
        for key in ["a", "b", "c"] {
            enqueue_one(&queue, key).await;
        }
        let deliveries = queue.receive(2, VISIBILITY).await.unwrap();
        for delivery in &deliveries {
            queue.ack(&delivery.receipt).await.unwrap();
        }
        assert_eq!(queue.stats().live_keys, 3);

        advance(&queue, window * 3);
        queue.check().await.unwrap(); // a batch: prunes and reviews the keys

        // The acked two are gone; the one still ready keeps its key however old it is.
        assert_eq!(queue.stats().live_keys, 1);
        assert!(enqueue_one(&queue, "c").await.duplicate == Some(true));
        assert!(enqueue_one(&queue, "a").await.duplicate == Some(false));
    }

    #[tokio::test]
    async fn jobs_another_process_enqueued_are_duplicates_here() {
        let dir = tempfile::tempdir().unwrap();
        let server = open(&dir);
        let other = open(&dir); // e.g. `ferry promote --config` while `ferry serve` runs
        let mine = enqueue_one(&server, "mine").await;

        let theirs = enqueue_one(&other, "theirs").await;
        let again = enqueue_one(&server, "theirs").await;
        assert_eq!(again, Enqueued { id: theirs.id, duplicate: Some(true) });
        assert_eq!(enqueue_one(&other, "mine").await, Enqueued { id: mine.id, duplicate: Some(true) });
    }

    /// The jobs table of schema versions 1 and 2, with its unique index on `id`.
    const SCHEMA_V2: &str = "
        CREATE TABLE jobs (
            seq           INTEGER PRIMARY KEY,
            id            TEXT    NOT NULL UNIQUE,
            dedup_key     TEXT    NOT NULL,
            payload       TEXT    NOT NULL,
            state         TEXT    NOT NULL CHECK (state IN ('ready', 'done', 'dead')),
            enqueued_at   INTEGER NOT NULL,
            available_at  INTEGER NOT NULL,
            receive_count INTEGER NOT NULL DEFAULT 0,
            receipt       TEXT,
            last_error    TEXT,
            failed_at     INTEGER
        );
        CREATE INDEX jobs_ready ON jobs (available_at) WHERE state = 'ready';
        CREATE INDEX jobs_done ON jobs (enqueued_at) WHERE state = 'done';
        CREATE INDEX jobs_dead ON jobs (failed_at) WHERE state = 'dead';
        CREATE UNIQUE INDEX jobs_receipt ON jobs (receipt) WHERE receipt IS NOT NULL;
        CREATE TABLE probe (
            id         INTEGER PRIMARY KEY CHECK (id = 1),
            at_unix_ms INTEGER NOT NULL
        );";

    /// Indexes on `jobs` and the schema version of an open queue.
    async fn indexes_and_version(queue: &SqliteQueue) -> (Vec<String>, i64) {
        queue
            .call("inspect", |conn, _| {
                let version = conn.pragma_query_value(None, "user_version", |row| row.get(0))?;
                let mut select = conn.prepare(
                    "SELECT name FROM sqlite_schema WHERE type = 'index' AND tbl_name = 'jobs' ORDER BY name",
                )?;
                let names = select.query_map([], |row| row.get(0))?.collect::<Result<Vec<String>, _>>()?;
                Ok((names, version))
            })
            .await
            .unwrap()
    }

    const INDEXES_NOW: [&str; 4] = ["jobs_dead", "jobs_done", "jobs_ready", "jobs_receipt"];

    #[tokio::test]
    async fn version_2_file_is_upgraded_and_keeps_its_jobs() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("queue.db");
        {
            let conn = Connection::open(&path).unwrap();
            conn.execute_batch(&format!(
                "PRAGMA journal_mode = WAL;
                 {SCHEMA_V2}
                 INSERT INTO jobs (id, dedup_key, payload, state, enqueued_at, available_at)
                 VALUES ('ready-job', 'k', '{{\"n\": 1}}', 'ready', 1, 1);
                 INSERT INTO jobs (id, dedup_key, payload, state, enqueued_at, available_at, receive_count,
                                   last_error, failed_at)
                 VALUES ('dead-job', 'd', '{{\"n\": 2}}', 'dead', 1, 1, 5, 'registry said 500', 2);
                 PRAGMA application_id = {APPLICATION_ID};
                 PRAGMA user_version = 2;"
            ))
            .unwrap();
        }

        let queue = SqliteQueue::open(&path, SqliteQueueOptions::default()).unwrap();

        assert_eq!(indexes_and_version(&queue).await, (INDEXES_NOW.map(String::from).to_vec(), SCHEMA_VERSION));
        assert_eq!(enqueue_one(&queue, "k").await, Enqueued { id: "ready-job".into(), duplicate: Some(true) });
        let dead = queue.dead_letters().await.unwrap();
        assert_eq!((dead.len(), dead[0].id.as_str(), dead[0].receive_count), (1, "dead-job", 5));
        assert!(queue.redrive("dead-job").await.unwrap());
        let ids: HashSet<String> = queue.receive(10, VISIBILITY).await.unwrap().into_iter().map(|d| d.id).collect();
        assert_eq!(ids, HashSet::from(["ready-job".to_owned(), "dead-job".to_owned()]));
    }

    #[tokio::test]
    async fn version_1_file_is_upgraded_and_keeps_its_jobs() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("queue.db");
        {
            let conn = Connection::open(&path).unwrap();
            conn.execute_batch(&format!(
                "PRAGMA journal_mode = WAL;
                 {SCHEMA_V2}
                 CREATE INDEX jobs_dedup ON jobs (dedup_key);
                 INSERT INTO jobs (id, dedup_key, payload, state, enqueued_at, available_at)
                 VALUES ('old-job', 'k', '{{}}', 'ready', 1, 1);
                 PRAGMA application_id = {APPLICATION_ID};
                 PRAGMA user_version = 1;"
            ))
            .unwrap();
        }

        let queue = SqliteQueue::open(&path, SqliteQueueOptions::default()).unwrap();

        assert_eq!(enqueue_one(&queue, "k").await, Enqueued { id: "old-job".into(), duplicate: Some(true) });
        assert_eq!(indexes_and_version(&queue).await, (INDEXES_NOW.map(String::from).to_vec(), SCHEMA_VERSION));
    }

    #[tokio::test]
    async fn commits_are_checkpointed_off_the_commit_path() {
        let dir = tempfile::tempdir().unwrap();
        let queue = open(&dir);
        let autocheckpoint: i64 = queue
            .call("pragma", |conn, _| Ok(conn.pragma_query_value(None, "wal_autocheckpoint", |row| row.get(0))?))
            .await
            .unwrap();
        assert_eq!(autocheckpoint, WAL_BACKSTOP_PAGES);

        queue.enqueue((0..50).map(|n| job(&format!("k{n}"))).collect()).await.unwrap();

        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while queue.stats().checkpointed_frames == 0 {
            assert!(std::time::Instant::now() < deadline, "no checkpoint within 10 s: {:?}", queue.stats());
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    #[tokio::test]
    async fn job_whose_worker_keeps_crashing_is_dead_lettered() {
        let dir = tempfile::tempdir().unwrap();
        let queue = open_with(&dir, SqliteQueueOptions { max_receives: 2, ..SqliteQueueOptions::default() });
        let stuck = enqueue_one(&queue, "stuck").await;
        assert_eq!(receive_one(&queue).await.id, stuck.id);
        advance(&queue, VISIBILITY);
        assert_eq!(receive_one(&queue).await.receive_count, 2);
        advance(&queue, VISIBILITY);
        let healthy = enqueue_one(&queue, "healthy").await;

        // The stuck job is buried, and the receive still fills up with the next job.
        let delivered = queue.receive(1, VISIBILITY).await.unwrap();
        assert_eq!(delivered.len(), 1);
        assert_eq!(delivered[0].id, healthy.id);
        let dead = queue.dead_letters().await.unwrap();
        assert_eq!(dead.len(), 1);
        assert_eq!(dead[0].id, stuck.id);
        assert!(dead[0].last_error.contains("without an ack or nack"), "{}", dead[0].last_error);
    }

    #[tokio::test]
    async fn concurrent_enqueues_are_group_committed() {
        let dir = tempfile::tempdir().unwrap();
        let queue = Arc::new(open(&dir));
        let before = queue.stats();

        let enqueued = join_all((0..200).map(|n| {
            let queue = Arc::clone(&queue);
            tokio::spawn(async move { enqueue_one(&queue, &format!("job-{n}")).await })
        }))
        .await;

        let ids: HashSet<String> = enqueued.into_iter().map(|e| e.unwrap().id).collect();
        assert_eq!(ids.len(), 200);
        let stats = queue.stats();
        let commits = stats.commits - before.commits;
        assert_eq!(stats.requests - before.requests, 200);
        assert!(commits <= 20, "200 enqueues took {commits} commits");
        assert_eq!(queue.receive(500, VISIBILITY).await.unwrap().len(), 200);
    }

    #[tokio::test]
    async fn failed_request_does_not_undo_the_rest_of_its_batch() {
        let dir = tempfile::tempdir().unwrap();
        let queue = Arc::new(open(&dir));

        let calls = (0..40).map(|n| {
            let queue = Arc::clone(&queue);
            tokio::spawn(async move {
                if n % 2 == 0 {
                    enqueue_one(&queue, &format!("job-{n}")).await;
                    true
                } else {
                    queue.ack("no-such-receipt").await.is_err()
                }
            })
        });

        assert!(join_all(calls).await.into_iter().all(|ok| ok.unwrap()));
        assert_eq!(queue.receive(100, VISIBILITY).await.unwrap().len(), 20);
    }

    #[tokio::test]
    async fn empty_dedup_key_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let queue = open(&dir);

        let error = queue.enqueue(vec![job("a"), job("")]).await.unwrap_err();

        assert!(matches!(error, QueueError::Invalid(ref m) if m.contains("job 1")), "{error}");
        assert!(queue.receive(10, VISIBILITY).await.unwrap().is_empty());
    }

    #[tokio::test]
    async fn unwritable_database_reports_unavailable() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("no-such-dir").join("queue.db");
        let error = SqliteQueue::open(&missing, SqliteQueueOptions::default()).unwrap_err();
        let QueueError::Unavailable(message) = &error else {
            panic!("expected Unavailable, got {error:?}");
        };
        assert!(message.contains(&missing.display().to_string()), "{message}");
        assert!(message.contains("check that the directory exists"), "{message}");

        // The file becomes unwritable while the queue runs.
        let queue = open(&dir);
        queue.call("make read-only", |conn, _| Ok(conn.pragma_update(None, "query_only", true)?)).await.unwrap();

        let error = queue.enqueue(vec![job("k")]).await.unwrap_err();
        assert!(matches!(error, QueueError::Unavailable(ref m) if m.contains("readonly")), "{error}");
        assert!(matches!(queue.check().await, Err(QueueError::Unavailable(_))));
    }

    #[tokio::test]
    async fn readiness_answers_from_a_recent_durable_commit_and_probes_a_quiet_queue() {
        let dir = tempfile::tempdir().unwrap();
        let queue = open(&dir);
        let before = queue.stats().commits;
        queue.ready().await.unwrap();
        assert_eq!(queue.stats().commits, before + 1, "a queue with no commit yet is probed with a write");

        enqueue_one(&queue, "k").await;
        let busy = queue.stats().commits;
        for _ in 0..100 {
            queue.ready().await.unwrap();
        }
        assert_eq!(queue.stats().commits, busy, "a commit made durable just now answers without a probe");

        let crashed =
            queue.call("crash", |_, _| -> Result<(), Failure> { panic!("simulated bug in the queue writer") }).await;
        assert!(crashed.is_err());
        // The writer's channel closes as its thread unwinds, a moment after the crashed call was
        // answered; at the latest, its last commit stops being recent.
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while queue.ready().await.is_ok() {
            assert!(std::time::Instant::now() < deadline, "a stopped writer still reads as ready");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    #[tokio::test]
    async fn stopped_writer_reports_unavailable() {
        let dir = tempfile::tempdir().unwrap();
        let queue = open(&dir);
        queue.check().await.unwrap();

        let crashed =
            queue.call("crash", |_, _| -> Result<(), Failure> { panic!("simulated bug in the queue writer") }).await;

        assert!(matches!(crashed, Err(QueueError::Unavailable(_))));
        let error = queue.enqueue(vec![job("k")]).await.unwrap_err();
        assert!(matches!(error, QueueError::Unavailable(ref m) if m.contains("has stopped")), "{error}");
        assert!(queue.check().await.is_err());
    }

    #[tokio::test]
    async fn foreign_database_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ledger.db");
        Connection::open(&path).unwrap().execute_batch("CREATE TABLE entries (id INTEGER PRIMARY KEY);").unwrap();

        let error = SqliteQueue::open(&path, SqliteQueueOptions::default()).unwrap_err();

        assert!(error.to_string().contains("is not a Ferry job queue database"), "{error}");
    }

    #[tokio::test]
    async fn newer_schema_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        drop(open(&dir));
        let path = dir.path().join("queue.db");
        Connection::open(&path).unwrap().pragma_update(None, "user_version", SCHEMA_VERSION + 1).unwrap();

        let error = SqliteQueue::open(&path, SqliteQueueOptions::default()).unwrap_err();

        assert!(error.to_string().contains("newer than this ferry"), "{error}");
    }

    #[tokio::test]
    async fn database_is_durable_by_configuration() {
        let dir = tempfile::tempdir().unwrap();
        let queue = open(&dir);

        let (journal_mode, synchronous): (String, i64) = queue
            .call("pragmas", |conn, _| {
                let journal = conn.pragma_query_value(None, "journal_mode", |row| row.get(0))?;
                let sync = conn.pragma_query_value(None, "synchronous", |row| row.get(0))?;
                Ok((journal, sync))
            })
            .await
            .unwrap();

        assert_eq!(journal_mode, "wal");
        // The writer's commits do not fsync; the syncer does, before anyone is answered.
        assert_eq!(synchronous, 1, "synchronous=NORMAL");
        for n in 0..20 {
            enqueue_one(&queue, &format!("job-{n}")).await;
            let stats = queue.stats();
            assert_eq!(stats.durable_commits, stats.commits, "answered before its commit was fsynced: {stats:?}");
        }
        assert!(queue.stats().syncs >= 20, "{:?}", queue.stats());
    }

    #[tokio::test]
    async fn failed_fsync_fails_its_callers_and_every_later_request() {
        let dir = tempfile::tempdir().unwrap();
        let fail = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let failing = Arc::clone(&fail);
        let queue = SqliteQueue::open_syncing(&dir.path().join("queue.db"), SqliteQueueOptions::default(), |wal| {
            Box::new(move || {
                if failing.load(Ordering::Relaxed) {
                    return Err(std::io::Error::other("injected EIO"));
                }
                wal.sync_data()
            })
        })
        .unwrap();
        let kept = enqueue_one(&queue, "kept").await;

        fail.store(true, Ordering::Relaxed);
        let error = queue.enqueue(vec![job("lost")]).await.unwrap_err();
        assert!(matches!(error, QueueError::Unavailable(_)), "{error:?}");
        assert!(error.to_string().contains("fsync") && error.to_string().contains("injected EIO"), "{error}");

        // The disk may have dropped what it did not write: nothing is answered Ok from now on.
        fail.store(false, Ordering::Relaxed);
        assert!(queue.enqueue(vec![job("later")]).await.is_err());
        assert!(queue.receive(10, VISIBILITY).await.is_err());
        assert!(queue.check().await.is_err());
        drop(queue);

        // A restart reads what is on disk: the job answered before the failure is there. The
        // one answered Unavailable may be too (its frames reached the file): its sender retries
        // and meets it as a duplicate.
        let queue = open(&dir);
        let ids: Vec<String> = queue.receive(10, VISIBILITY).await.unwrap().into_iter().map(|d| d.id).collect();
        assert!(ids.contains(&kept.id), "{ids:?}");
        assert!(enqueue_one(&queue, "lost").await.duplicate == Some(true) || ids.len() == 1);
    }

    #[tokio::test]
    async fn receive_uses_the_ready_index() {
        let dir = tempfile::tempdir().unwrap();
        let queue = open(&dir);

        let plan: Vec<String> = queue
            .call("plan", |conn, _| {
                let mut explain = conn.prepare(
                    "EXPLAIN QUERY PLAN SELECT seq, id, payload, receive_count, last_error
                     FROM jobs WHERE state = 'ready' AND available_at <= ?1
                     ORDER BY available_at, seq LIMIT ?2",
                )?;
                let rows =
                    explain.query_map(params![0, 1], |row| row.get::<_, String>(3))?.collect::<Result<Vec<_>, _>>()?;
                Ok(rows)
            })
            .await
            .unwrap();

        assert_eq!(plan.len(), 1, "no temp b-tree for ORDER BY: {plan:?}");
        assert!(plan[0].contains("jobs_ready"), "{plan:?}");
    }
}

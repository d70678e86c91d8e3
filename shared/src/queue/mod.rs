//! The durable job queue between intake and the worker.
//!
//! Intake enqueues a promotion job and answers 202 only once [`JobQueue::enqueue`] returned `Ok`:
//! the job is then committed and fsync'd. The worker receives jobs, and acks or nacks each
//! delivery. One trait, two implementations chosen by config: [`SqliteQueue`] embedded in
//! `ferry serve`, SQS on AWS. Both give the same guarantees:
//!
//! - **Nothing doubled**: a job whose dedup key matches a job that is still ready or in flight,
//!   or that was enqueued within the dedup window, is not added again (like SQS FIFO).
//! - **Nothing lost**: a delivery that is neither acked nor nacked becomes visible again when its
//!   visibility timeout expires; a job that keeps failing moves to the dead letters with its last
//!   error, and can be redriven.

#[cfg(feature = "sqlite")]
pub mod sqlite;
#[cfg(feature = "aws")]
pub mod sqs;

#[cfg(feature = "sqlite")]
pub use sqlite::{QueueStats, SqliteQueue, SqliteQueueOptions};
#[cfg(feature = "aws")]
pub use sqs::{ReceivedMessage, SqsQueue};

use std::time::Duration;

/// A job to enqueue.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct NewJob {
    /// Jobs with the same key within the dedup window (or while one is still pending) are one job.
    pub dedup_key: String,
    /// Serialized once, by whoever builds the job: the queue stores these bytes as they are.
    pub payload: Box<serde_json::value::RawValue>,
    /// The key merges only with a job that is still ready or in flight, not with one done
    /// within the dedup window: for requests whose sender gives no way to tell a redelivery from
    /// a new event (a tag pushed again), the window would swallow the new event.
    #[serde(default)]
    pub while_pending_only: bool,
    /// Jobs of one group are handed out one at a time, in order (SQS FIFO `MessageGroupId`):
    /// Ferry uses `pipeline/stage`. The SQLite queue does not order by group.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group: Option<String>,
}

impl NewJob {
    pub fn new(dedup_key: String, payload: &impl serde::Serialize) -> Self {
        let payload = serde_json::value::to_raw_value(payload).expect("a job payload serializes to JSON");
        Self { dedup_key, payload, while_pending_only: false, group: None }
    }

    /// This job merges only with a pending job of the same key (see `while_pending_only`).
    pub fn while_pending(mut self) -> Self {
        self.while_pending_only = true;
        self
    }

    /// The same job, ordered with the other jobs of `pipeline`'s `stage`.
    pub fn in_stage(mut self, pipeline: &str, stage: &str) -> Self {
        self.group = Some(format!("{pipeline}/{stage}"));
        self
    }
}

/// The outcome of enqueueing one [`NewJob`].
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Enqueued {
    pub id: String,
    /// `Some(true)`: the job was not added; `id` is the existing job with the same dedup key.
    /// `None`: the queue cannot tell. SQS FIFO drops a duplicate silently and answers as if it
    /// were new, so the job is in the queue once, but whether this call added it is unknown.
    pub duplicate: Option<bool>,
}

/// One delivery of a job to a worker. Settle it with [`JobQueue::ack`] or [`JobQueue::nack`].
#[derive(Debug, Clone)]
pub struct Delivery {
    pub id: String,
    /// Names this delivery; it goes stale once the job is delivered again.
    pub receipt: String,
    pub payload: serde_json::Value,
    /// 1 on the first delivery.
    pub receive_count: u32,
}

/// A job that failed too often, kept with its last error until it is redriven.
#[derive(Debug, Clone, serde::Serialize)]
pub struct DeadLetter {
    pub id: String,
    pub payload: serde_json::Value,
    pub receive_count: u32,
    pub last_error: String,
    pub failed_at_unix_ms: i64,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum QueueError {
    /// The queue cannot take or hand out jobs right now (storage unwritable, writer stopped,
    /// cloud API unreachable). Intake answers 503 so that the sender retries.
    #[error("job queue unavailable: {0}")]
    Unavailable(String),
    /// The receipt names no current delivery: the job's visibility timeout expired and it was
    /// delivered again (that newer delivery is untouched), or it was nacked or dead-lettered.
    #[error(
        "receipt {0} is stale: the delivery it names was redelivered, nacked or dead-lettered; \
         the job now belongs to its newest delivery"
    )]
    StaleReceipt(String),
    /// The request itself is wrong, e.g. an empty dedup key; retrying it will not help.
    #[error("invalid queue request: {0}")]
    Invalid(String),
}

pub type QueueFuture<'a, T> = futures_util::future::BoxFuture<'a, Result<T, QueueError>>;

/// Object-safe so `Arc<dyn JobQueue>` can hold SQLite locally and SQS on AWS.
pub trait JobQueue: Send + Sync + 'static {
    /// Durable when Ok: returns only after the jobs are committed and fsync'd. Same order as input.
    /// A job whose dedup_key matches a job that is ready/in flight, or was enqueued within the
    /// dedup window (default 5 minutes, like SQS FIFO), is not added: that job's id is returned
    /// with duplicate=Some(true) (None where the backend cannot tell). Duplicate keys within one batch also collapse to one job.
    fn enqueue(&self, jobs: Vec<NewJob>) -> QueueFuture<'_, Vec<Enqueued>>;
    /// Up to `max` ready jobs, made invisible for `visibility`; receive_count incremented.
    fn receive(&self, max: usize, visibility: Duration) -> QueueFuture<'_, Vec<Delivery>>;
    /// Done: remove (or mark done) the job. A stale receipt (visibility expired and redelivered)
    /// is an error or no-op, never deletes the newer delivery.
    fn ack(&self, receipt: &str) -> QueueFuture<'_, ()>;
    /// Failed: record `error`, make visible again after `retry_after`; when
    /// receive_count >= max_receives, move to dead letters instead.
    fn nack(&self, receipt: &str, error: &str, retry_after: Duration) -> QueueFuture<'_, ()>;
    /// Failed for good (a permanent error, which retrying cannot fix): move the job to the dead
    /// letters now with `error`, whatever its receive count. It can be redriven like any other.
    fn dead_letter(&self, receipt: &str, error: &str) -> QueueFuture<'_, ()>;
    /// Still working: keep the delivery invisible for `visibility` from now (SQS's
    /// ChangeMessageVisibility). A stale receipt is [`QueueError::StaleReceipt`].
    fn extend(&self, receipt: &str, visibility: Duration) -> QueueFuture<'_, ()>;
    fn dead_letters(&self) -> QueueFuture<'_, Vec<DeadLetter>>;
    /// Moves a dead letter back to ready with receive_count reset; returns whether it existed.
    fn redrive(&self, id: &str) -> QueueFuture<'_, bool>;
    /// Proves the queue would take a job now (a round trip; the SQLite queue writes a probe row).
    fn check(&self) -> QueueFuture<'_, ()>;
    /// Readiness for `/healthz`: [`JobQueue::check`], or an answer from recent evidence where
    /// a backend has it (the SQLite queue, from a commit made durable a moment ago, so the probe
    /// does not wait behind a flood's batches).
    fn ready(&self) -> QueueFuture<'_, ()> {
        self.check()
    }
    /// Jobs not done yet (waiting or in flight), for `/metrics`; `None` where the backend does
    /// not count them.
    fn depth(&self) -> QueueFuture<'_, Option<u64>> {
        Box::pin(async { Ok(None) })
    }
}

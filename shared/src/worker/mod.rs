//! The promotion worker: `process(job)` turns a queued request into an image running in the
//! next environment. `ferry serve` runs it in-process; the SQS Lambda will run the same code.
//!
//! For a promotion: resolve the digest at the *source* (never trusting the payload alone; a
//! tag that moved since the event is recorded), look the promotion up in the ledger (its id is
//! derived from pipeline, stage and digest, so duplicates and redeliveries meet there), evaluate
//! the stage's gate (parking the promotion visibly when it must wait), copy digest-exact with the
//! copy engine and tag the target, notify the stage, record the result, and queue the next stage.
//! Every step is idempotent, so a job redelivered after a crash re-runs safely and finishes.
//!
//! `run` (the receive loop and gate timers), `promote` (resolve, copy, tag, notify, next stage),
//! `gates`, `operator` (rollback, manual promotion) and `registries` (how Ferry reaches each
//! registry) hold the parts; this file holds the job's life: handle, process, settle.

mod gates;
mod notifiers;
mod operator;
mod promote;
mod registries;
mod run;

pub use gates::counted_approvers;
pub use registries::{RegistryCredential, RegistrySettings};

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tracing::Instrument;

use crate::config::Config;
use crate::error::WorkError;
use crate::job::QueuedJob;
use crate::ledger::{JobRecord, JobState, Ledger, PromotionState};
use crate::queue::{Delivery, JobQueue};
use crate::settle::{RetrySettings, Settlement, settlement};

pub fn now_ms() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default().as_millis() as i64
}
/// What became of a job.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Finished (promoted, or nothing to do); the job is acknowledged.
    Done(String),
    /// Waiting on a gate; the promotion is parked in the ledger and the job acknowledged.
    Parked(String),
    /// Failed; [`crate::settle::settlement`] decides by the error's class whether the job comes
    /// back after a backoff or goes to the dead letters. `promotion` names the ledger record when
    /// the digest was resolved far enough to have one.
    Failed { error: WorkError, promotion: Option<String> },
}
/// What became of one delivery, for a shell that reports to its event source (the SQS Lambda
/// reports a message that stays queued as a batch item failure).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Handled {
    pub settlement: Settlement,
    /// The queue took the settlement (ack, nack or dead-letter).
    pub settled: bool,
}
impl Handled {
    /// The job must stay in the queue and come back: a retry, or a settlement the queue did not
    /// take (its lease ran out meanwhile).
    pub fn stays_queued(&self) -> bool {
        matches!(self.settlement, Settlement::Retry { .. }) || !self.settled
    }
}
/// What became of a copy and its notification.
enum Delivered {
    /// Copied, and the runtime took it (or there is no runtime to tell).
    Deployed,
    /// Copied, but the runtime reported the deployment failed (its code and message).
    DeployFailed(String),
}
/// Where a gate left a promotion.
enum GateResult {
    Pass,
    /// Parked in this state, for this reason; the gate may open by itself at `wake_at_ms`
    /// (a soak's end, an approval's expiry), when the worker looks again.
    Wait(PromotionState, String, Option<i64>),
    Reject(String),
}
pub struct Worker {
    config: Arc<Config>,
    queue: Arc<dyn JobQueue>,
    ledger: Arc<dyn Ledger>,
    registries: RegistrySettings,
    notifiers: notifiers::Notifiers,
    notices: Arc<crate::notices::Notices>,
    /// When to look at a parked promotion again (unix ms, promotion id), earliest first; the
    /// loop in [`Worker::run`] wakes them on time, the sweep catches what a restart forgot.
    timers: std::sync::Mutex<BinaryHeap<Reverse<(i64, String)>>>,
    timer_added: tokio::sync::Notify,
    /// One turn per (pipeline, stage); see [`Worker::stage_turn`].
    stage_turns: std::sync::Mutex<HashMap<(String, String), StageTurn>>,
}

/// Held while a promotion or rollback of one stage runs (see [`Worker::stage_turn`]).
type StageTurn = Arc<tokio::sync::Mutex<()>>;
impl Worker {
    /// A worker for `config`; fails when the configuration names something it cannot set up
    /// (an unreadable CA file, an unset secret, a kubeconfig that does not load).
    pub fn new(config: Arc<Config>, queue: Arc<dyn JobQueue>, ledger: Arc<dyn Ledger>) -> Result<Self, WorkError> {
        // One Entra ID token cache for the Azure notifiers and the `acr = true` registries.
        let mut arm = None;
        let registries = RegistrySettings::from_config(&config, &mut arm)?;
        let notifiers = notifiers::from_config(&config, &mut arm)?;
        let notices = Arc::new(crate::notices::Notices::from_config(&config)?);
        Ok(Worker {
            config,
            queue,
            ledger,
            registries,
            notifiers,
            notices,
            timers: std::sync::Mutex::new(BinaryHeap::new()),
            timer_added: tokio::sync::Notify::new(),
            stage_turns: std::sync::Mutex::new(HashMap::new()),
        })
    }
    pub fn config(&self) -> &Config {
        &self.config
    }
    pub fn ledger(&self) -> &Arc<dyn Ledger> {
        &self.ledger
    }
    pub fn queue(&self) -> &Arc<dyn JobQueue> {
        &self.queue
    }

    /// Tells the approval channels (`[[notices]]`) what happened to `record` at its gate, in the
    /// background: neither the promotion nor the operator's answer waits for a chat service.
    pub fn announce(&self, record: &crate::ledger::PromotionRecord, decision: crate::notices::Decision) {
        if self.notices.is_empty() {
            return;
        }
        let (notices, record) = (self.notices.clone(), record.clone());
        tokio::spawn(async move { notices.announce(&record, &decision).await });
    }
    /// Processes one delivery and settles it with the queue.
    pub async fn handle(&self, delivery: Delivery) -> Handled {
        let job: QueuedJob = match serde_json::from_value(delivery.payload.clone()) {
            Ok(job) => job,
            Err(e) => {
                let error = WorkError::permanent(format!("unreadable job payload: {e}"));
                let span = tracing::error_span!("job", job.id = %delivery.id);
                return self.settle(delivery, Outcome::Failed { error, promotion: None }).instrument(span).await;
            }
        };
        let (pipeline, stage) = job.pipeline_and_stage();
        let span = tracing::info_span!(
            "job",
            job.id = %delivery.id,
            pipeline,
            stage,
            attempt = delivery.receive_count,
            promotion = tracing::field::Empty
        );
        // Renew the lease while working, so a long copy is not delivered to a second worker;
        // if this process dies, renewals stop and the job comes back after one timeout.
        let lease = Duration::from_secs(self.config.worker.visibility_secs.max(1));
        let heartbeat = {
            let queue = self.queue.clone();
            let receipt = delivery.receipt.clone();
            tokio::spawn(async move {
                let mut tick = tokio::time::interval(lease / 3);
                tick.tick().await;
                loop {
                    tick.tick().await;
                    if let Err(e) = queue.extend(&receipt, lease).await {
                        tracing::warn!(error = %e, "could not renew the job's lease");
                        break;
                    }
                }
            })
        };
        let outcome = self.process(&job, &delivery.id, delivery.receive_count).instrument(span.clone()).await;
        heartbeat.abort();
        self.settle(delivery, outcome).instrument(span).await
    }
    /// Applies [`settlement`] to a finished delivery: ack, nack with backoff, or dead-letter.
    async fn settle(&self, delivery: Delivery, outcome: Outcome) -> Handled {
        let settings = RetrySettings::from_config(&self.config.worker);
        let decided = settlement(&outcome, delivery.receive_count, settings);
        let settled = match &outcome {
            Outcome::Done(what) => {
                tracing::info!("{what}");
                self.queue.ack(&delivery.receipt).await
            }
            Outcome::Parked(why) => {
                tracing::info!("parked: {why}");
                self.queue.ack(&delivery.receipt).await
            }
            Outcome::Failed { error, promotion } => match decided {
                Settlement::Retry { after } => {
                    tracing::warn!(%error, class = %error.class, ?after, "attempt failed; will retry");
                    self.queue.nack(&delivery.receipt, &error.message, after).await
                }
                _ => {
                    let reason = dead_letter_reason(error, delivery.receive_count);
                    tracing::error!(%error, class = %error.class, "{reason}: job moved to the dead-letter store");
                    if let Some(id) = promotion {
                        self.mark_dead_lettered(id, &error.message).await;
                    }
                    self.queue.dead_letter(&delivery.receipt, &format!("{reason}: {error}")).await
                }
            },
        };
        if let Err(e) = &settled {
            // Typically the lease ran out (the process stalled): the queue redelivers the job,
            // or dead-letters it if it has been delivered too often.
            tracing::warn!(error = %e, "could not settle the job");
        }
        Handled { settlement: decided, settled: settled.is_ok() }
    }
    /// The one core every shell calls: `job_id` is the queue's id of the job (an SQS message id
    /// on AWS), `attempt` its receive count.
    pub async fn process(&self, job: &QueuedJob, job_id: &str, attempt: u32) -> Outcome {
        match job {
            QueuedJob::Promote(job) => {
                self.record_job(JobRecord {
                    id: job_id.to_string(),
                    state: JobState::Running,
                    promotion: job.promotion.clone(),
                    detail: None,
                    error: None,
                    updated_at_ms: now_ms(),
                })
                .await;
                let mut promotion = None;
                let turn = self.stage_turn(&job.pipeline, &job.stage).await;
                let started = std::time::Instant::now();
                let result = self.promote(job, job_id, attempt, &mut promotion).await;
                drop(turn);
                let outcome = result.unwrap_or_else(|error| Outcome::Failed { error, promotion: promotion.clone() });
                let record = self.job_record(job_id, attempt, &outcome, promotion).await;
                let result = serde_json::to_value(record.state).ok();
                let result = result.as_ref().and_then(|v| v.as_str()).unwrap_or("unknown");
                crate::metrics::promotion_job(&job.pipeline, &job.stage, result, started.elapsed());
                self.record_job(record).await;
                outcome
            }
            QueuedJob::Deployment(job) => {
                self.deployment_reported(job).await.unwrap_or_else(|error| Outcome::Failed { error, promotion: None })
            }
        }
    }
    /// Waits until no other promotion or rollback of `pipeline`'s `stage` runs in this process.
    /// Each one moves the stage's tag, reads it back and records the stage's current digest:
    /// two at once read each other's tag (a digest mismatch, retried until dead-lettered) and
    /// could leave the ledger naming one digest while the tag names another, and two jobs of
    /// one promotion could both copy it. The Lambda worker gets the same from its SQS FIFO
    /// group (`pipeline/stage`); a lease is renewed while its job waits here.
    async fn stage_turn(&self, pipeline: &str, stage: &str) -> tokio::sync::OwnedMutexGuard<()> {
        let turn = {
            let mut turns = self.stage_turns.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            turns.entry((pipeline.to_string(), stage.to_string())).or_default().clone()
        };
        turn.lock_owned().await
    }

    /// What `outcome` means to the person who asked for the job (see [`JobState`]).
    async fn job_record(&self, job_id: &str, attempt: u32, outcome: &Outcome, promotion: Option<String>) -> JobRecord {
        let mut record = JobRecord {
            id: job_id.to_string(),
            state: JobState::Running,
            promotion,
            detail: None,
            error: None,
            updated_at_ms: now_ms(),
        };
        match outcome {
            Outcome::Done(what) => {
                let promoted = match &record.promotion {
                    Some(id) => self.ledger.promotion(id).await.ok().flatten(),
                    None => None,
                };
                record.detail = Some(what.clone());
                record.state = match promoted.as_ref().map(|p| p.state) {
                    Some(PromotionState::Succeeded) => JobState::Promoted,
                    Some(PromotionState::DeployFailed) => {
                        record.error = promoted.and_then(|p| p.error);
                        JobState::Failed
                    }
                    _ => JobState::Refused,
                };
            }
            Outcome::Parked(why) => {
                record.state = JobState::Parked;
                record.detail = Some(why.clone());
            }
            Outcome::Failed { error, .. } => {
                let settings = RetrySettings::from_config(&self.config.worker);
                record.state = match settlement(outcome, attempt, settings) {
                    Settlement::Retry { .. } => {
                        record.error = Some(format!("attempt {attempt} failed, will retry: {error}"));
                        JobState::Running
                    }
                    _ if error.class == crate::error::ErrorClass::NotFound => {
                        record.error = Some(error.to_string());
                        JobState::Refused
                    }
                    _ => {
                        record.error = Some(format!("{}: {error}", dead_letter_reason(error, attempt)));
                        JobState::Failed
                    }
                };
            }
        }
        record
    }
    /// Best effort: the job's outcome is for the person waiting on it; the work itself is done.
    async fn record_job(&self, record: JobRecord) {
        if let Err(e) = self.ledger.put_job(record).await {
            tracing::warn!(error = %e, "could not record the job's outcome for `ferry promote --wait`");
        }
    }
    async fn mark_dead_lettered(&self, id: &str, error: &str) {
        if let Ok(Some(mut record)) = self.ledger.promotion(id).await {
            if record.state.is_final() {
                return;
            }
            record.state = PromotionState::DeadLettered;
            record.error = Some(error.to_string());
            record.updated_at_ms = now_ms();
            let _ = self.ledger.put_promotion(record).await;
        }
    }
    /// Marks promotions whose job the queue dead-lettered on its own (a worker that kept
    /// dying on it, or SQS's redrive policy), so the ledger never says `running` forever.
    async fn reconcile_dead_letters(&self) -> Result<(), WorkError> {
        for letter in self.queue.dead_letters().await? {
            let Ok(QueuedJob::Promote(job)) = serde_json::from_value::<QueuedJob>(letter.payload.clone()) else {
                continue;
            };
            let history = self.ledger.history(&job.pipeline, Some(&job.stage), 50).await?;
            for record in history {
                let stuck = !record.state.is_final() && record.state != PromotionState::DeadLettered;
                if stuck && record.job_id.as_deref() == Some(letter.id.as_str()) {
                    self.mark_dead_lettered(&record.id, &letter.last_error).await;
                }
            }
        }
        Ok(())
    }
}

/// Why a failed job goes to the dead letters, for the operator reading `ferry dlq list`.
fn dead_letter_reason(error: &WorkError, receive_count: u32) -> String {
    if error.is_transient() || error.class == crate::error::ErrorClass::Conflict {
        format!("gave up after {receive_count} attempts")
    } else {
        format!("{} error, not retried", error.class)
    }
}

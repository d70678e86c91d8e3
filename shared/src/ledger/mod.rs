//! The ledger: every promotion — pipeline, stage, source and target, digest, build, who or what
//! triggered it, gate decisions, timings, result — and each environment's current and previous
//! digest. One trait, an embedded SQLite implementation for `ferry serve` (DynamoDB on AWS).

#[cfg(feature = "aws")]
pub mod dynamodb;
#[cfg(feature = "sqlite")]
pub mod sqlite;

#[cfg(feature = "aws")]
pub use dynamodb::DynamoLedger;
#[cfg(feature = "sqlite")]
pub use sqlite::SqliteLedger;

use serde::{Deserialize, Serialize};

/// Where a promotion is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PromotionState {
    /// Known, not yet worked on (or being retried).
    Pending,
    /// Parked until enough approvals arrive (`ferry approve ID`).
    AwaitingApproval,
    /// Parked until the previous stage reports deployed, or its soak time passes.
    AwaitingGate,
    /// Copying / tagging / notifying.
    Running,
    Succeeded,
    /// Failed this attempt; the job will be retried.
    Failed,
    /// Gave up: the job is in the dead-letter store with its last error.
    DeadLettered,
    /// An approver said no.
    Rejected,
    /// Copied, but the stage's runtime (App Service, Kubernetes) reported the deployment failed;
    /// the error holds its code and message. Not retried: `ferry promote` tries again.
    DeployFailed,
}

impl PromotionState {
    /// Parked: visible, waiting on a person or a condition.
    pub fn is_parked(self) -> bool {
        matches!(self, PromotionState::AwaitingApproval | PromotionState::AwaitingGate)
    }

    /// Nothing more will happen to it.
    pub fn is_final(self) -> bool {
        matches!(self, PromotionState::Succeeded | PromotionState::Rejected | PromotionState::DeployFailed)
    }
}

/// One decision a gate made about a promotion.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GateDecision {
    /// `auto`, `approval`, `after`, `soak`, `tags`.
    pub gate: String,
    /// `pass`, `wait`, `reject`.
    pub decision: String,
    pub detail: String,
    pub at_ms: i64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Approval {
    pub by: String,
    pub at_ms: i64,
}

#[cfg(test)]
impl PromotionRecord {
    /// A record for unit tests: a fixed digest, nothing else set; tests change what they need.
    pub(crate) fn sample(pipeline: &str, stage: &str, state: PromotionState) -> Self {
        PromotionRecord {
            id: format!("p-{pipeline}-{stage}"),
            pipeline: pipeline.into(),
            stage: stage.into(),
            source: "build.example/shop/api".into(),
            target: "deploy.example/shop/api".into(),
            digest: format!("sha256:{}", "0".repeat(64)),
            tag: None,
            tag_moved_to: None,
            build_id: None,
            build_number: None,
            trigger: "test".into(),
            triggered_by: None,
            state,
            gates: Vec::new(),
            approvals: Vec::new(),
            error: None,
            attempts: 0,
            created_at_ms: 0,
            updated_at_ms: 0,
            finished_at_ms: None,
            job_id: None,
        }
    }
}

/// One promotion of one digest into one stage of one pipeline.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PromotionRecord {
    /// Stable for (pipeline, stage, digest): see [`promotion_id`].
    pub id: String,
    pub pipeline: String,
    pub stage: String,
    /// `host/repo` copied from, and `host/repo` copied to.
    pub source: String,
    pub target: String,
    pub digest: String,
    /// The tag the trigger named, if any.
    pub tag: Option<String>,
    /// When the tag pointed at another digest by the time Ferry resolved it.
    pub tag_moved_to: Option<String>,
    pub build_id: Option<String>,
    pub build_number: Option<String>,
    /// What started it: `webhook:distribution`, `manual`, `rollback`, `previous-stage:dev` …
    pub trigger: String,
    /// The person who started it, when a person did (they cannot approve it themselves).
    pub triggered_by: Option<String>,
    pub state: PromotionState,
    pub gates: Vec<GateDecision>,
    pub approvals: Vec<Approval>,
    pub error: Option<String>,
    pub attempts: u32,
    pub created_at_ms: i64,
    pub updated_at_ms: i64,
    pub finished_at_ms: Option<i64>,
    /// The queue job that last worked on it (to find it again when that job is dead-lettered).
    #[serde(default)]
    pub job_id: Option<String>,
}

/// The deterministic id of the promotion of `digest` into `stage` of `pipeline`, so duplicate
/// jobs and redeliveries land on the same record: `p-` and 16 hex characters.
pub fn promotion_id(pipeline: &str, stage: &str, digest: &str) -> String {
    use sha2::{Digest as _, Sha256};
    let hash = Sha256::digest(format!("{pipeline}\n{stage}\n{digest}").as_bytes());
    format!("p-{}", &hex::encode(hash)[..16])
}

/// What runs in one stage now.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EnvironmentEntry {
    pub digest: String,
    pub tag: Option<String>,
    pub build_number: Option<String>,
    /// The promotion (or rollback) that put it there.
    pub promotion_id: String,
    pub since_ms: i64,
}

/// A stage's current entry and the one before it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EnvironmentState {
    pub pipeline: String,
    pub stage: String,
    pub current: EnvironmentEntry,
    pub previous: Option<EnvironmentEntry>,
}

/// A deployment outcome reported for a stage (Azure DevOps release, or a notifier's success).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeploymentRecord {
    pub pipeline: String,
    pub stage: String,
    /// `succeeded`, `failed`, …
    pub status: String,
    /// The digest deployed, when the reporter knows it.
    pub digest: Option<String>,
    /// `azure-devops`, `notifier`.
    pub reporter: String,
    pub detail: Option<String>,
    pub at_ms: i64,
}

/// Where a queue job stands, as `ferry promote --wait` and `GET /api/jobs/{id}` report it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum JobState {
    /// Enqueued (or redriven), not yet picked up; also what an id the ledger never saw reports.
    Queued,
    /// A worker has it (or it failed an attempt and will be retried: see `error`).
    Running,
    /// The digest is in the target.
    Promoted,
    /// Waiting on the stage's gate: `detail` says why.
    Parked,
    /// Will not be promoted: rejected earlier, a tag filter, a source that does not exist.
    Refused,
    /// Gave up: the job is in the dead letters with `error`.
    Failed,
}

impl JobState {
    /// Nothing more happens to the job (parked is final for the job: a wake is a new job).
    pub fn is_settled(self) -> bool {
        !matches!(self, JobState::Queued | JobState::Running)
    }
}

/// What became of one queue job: the link from the id an API or webhook answered with to the
/// promotion it worked on.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobRecord {
    pub id: String,
    pub state: JobState,
    /// The promotion record the job worked on, once known (a tag is resolved first).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub promotion: Option<String>,
    /// Why it is parked or refused, or what it did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    pub updated_at_ms: i64,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LedgerError {
    #[error("ledger unavailable: {0}")]
    Unavailable(String),
    #[error("no promotion {0}")]
    UnknownPromotion(String),
}

pub type LedgerFuture<'a, T> = futures_util::future::BoxFuture<'a, Result<T, LedgerError>>;

/// Object-safe so `Arc<dyn Ledger>` holds SQLite locally and DynamoDB on AWS.
pub trait Ledger: Send + Sync + 'static {
    /// Inserts or replaces the record with this id (durable when Ok).
    fn put_promotion(&self, record: PromotionRecord) -> LedgerFuture<'_, ()>;
    fn promotion(&self, id: &str) -> LedgerFuture<'_, Option<PromotionRecord>>;
    /// Adds `by`'s approval (once per person) and returns all approvals of the promotion.
    fn approve(&self, id: &str, by: &str, at_ms: i64) -> LedgerFuture<'_, Vec<Approval>>;
    /// Promotions of a pipeline (one stage, or all), newest first.
    fn history(&self, pipeline: &str, stage: Option<&str>, limit: usize) -> LedgerFuture<'_, Vec<PromotionRecord>>;
    /// Parked promotions (awaiting approval or a gate), of one pipeline or all, oldest first.
    fn parked(&self, pipeline: Option<&str>) -> LedgerFuture<'_, Vec<PromotionRecord>>;
    /// Makes `entry` the stage's current one; the former current becomes previous. Setting the
    /// digest that is already current (a redelivered job) changes nothing.
    fn set_current(&self, pipeline: &str, stage: &str, entry: EnvironmentEntry) -> LedgerFuture<'_, ()>;
    fn environment(&self, pipeline: &str, stage: &str) -> LedgerFuture<'_, Option<EnvironmentState>>;
    /// The stage's entries, newest first (rollback picks from these).
    fn environment_history(&self, pipeline: &str, stage: &str, limit: usize)
    -> LedgerFuture<'_, Vec<EnvironmentEntry>>;
    fn record_deployment(&self, record: DeploymentRecord) -> LedgerFuture<'_, ()>;
    /// The newest deployment reports of a stage, newest first.
    fn deployments(&self, pipeline: &str, stage: &str, limit: usize) -> LedgerFuture<'_, Vec<DeploymentRecord>>;
    /// Inserts or replaces what became of queue job `record.id`.
    fn put_job(&self, record: JobRecord) -> LedgerFuture<'_, ()>;
    fn job(&self, id: &str) -> LedgerFuture<'_, Option<JobRecord>>;
}

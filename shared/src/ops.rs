//! Operations on promotions, shared by the HTTP API (`/api/*`) and the CLI's local mode:
//! status, manual promotion, approve/reject, rollback, history, dead letters.

use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::config::Gate;
use crate::error::{ErrorClass, WorkError};
use crate::ledger::{EnvironmentEntry, GateDecision, JobRecord, JobState, PromotionRecord, PromotionState};
use crate::notices::Decision;
use crate::queue::DeadLetter;
use crate::registry::{Digest, Tag};
use crate::worker::{Worker, now_ms};

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StageStatus {
    pub name: String,
    pub target: String,
    pub gate: String,
    pub current: Option<EnvironmentEntry>,
    pub previous: Option<EnvironmentEntry>,
    /// Promotions into this stage parked on its gate.
    pub pending: Vec<Pending>,
    /// The stage's newest promotion, when its runtime reported the deployment failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deploy_failed: Option<PromotionRecord>,
    /// The promotion that put `current` there: who started it, who approved it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub current_promotion: Option<PromotionRecord>,
    /// The newest deployment report for the stage (Azure DevOps release, a notifier's success).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deployment: Option<crate::ledger::DeploymentRecord>,
    /// Who the stage tells about a new digest: `webhook`, `app-service`, `kubernetes`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub notify: Option<String>,
}

/// A parked promotion and what it waits for, computed when asked (the texts in its gate
/// decisions are as they were when it parked).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Pending {
    #[serde(flatten)]
    pub record: PromotionRecord,
    /// E.g. "soaking in dev: 12 s to go", "waiting for approval (1 of 2): ferry approve p-…".
    pub waiting: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PipelineStatus {
    pub name: String,
    pub source: String,
    pub stages: Vec<StageStatus>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Approved {
    pub promotion: PromotionRecord,
    pub approvals: usize,
    pub required: u32,
    /// Enough approvals: the promotion was queued to continue.
    pub released: bool,
    /// The queue job that continues it, when released (`GET /api/jobs/{id}` follows it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub job: Option<String>,
    /// This person had approved before: nothing changed.
    #[serde(default)]
    pub already_counted: bool,
}

/// One approval of a promotion: who, when, and through which channel the request came in.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ApprovalSeen {
    pub by: String,
    pub at_ms: i64,
    /// E.g. "oidc (Alice)", "operator-token (…, unverified)"; `None` for older approvals.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub via: Option<String>,
}

/// Everything known about a promotion or a job (`ferry show ID`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Shown {
    /// `None` for a job that ended before it became a promotion (e.g. a tag that does not exist).
    pub promotion: Option<PromotionRecord>,
    /// The promotion's approvals with their channel.
    pub approvals: Vec<ApprovalSeen>,
    /// The job asked about, or the promotion's latest job.
    pub job: Option<JobRecord>,
}

/// Why an operation was refused; maps to an HTTP status.
#[derive(Debug, thiserror::Error)]
pub enum OpsError {
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Conflict(String),
    #[error("{0}")]
    Forbidden(String),
    /// The request itself is malformed (400).
    #[error("{0}")]
    Invalid(String),
    /// A registry, store or target is unavailable right now; try again (503).
    #[error("{0}")]
    Unavailable(String),
    /// A registry or target refused for good, e.g. credentials (502).
    #[error("{0}")]
    Upstream(String),
}

impl From<WorkError> for OpsError {
    fn from(error: WorkError) -> Self {
        match error.class {
            ErrorClass::Transient => OpsError::Unavailable(error.message),
            ErrorClass::Permanent => OpsError::Upstream(error.message),
            ErrorClass::NotFound => OpsError::NotFound(error.message),
            ErrorClass::Conflict => OpsError::Conflict(error.message),
        }
    }
}

impl OpsError {
    /// A stable name for scripts (`--json` errors): `not_found`, `conflict`, `forbidden`,
    /// `invalid`, `unavailable`, `upstream`.
    pub fn class(&self) -> &'static str {
        match self {
            OpsError::NotFound(_) => "not_found",
            OpsError::Conflict(_) => "conflict",
            OpsError::Forbidden(_) => "forbidden",
            OpsError::Invalid(_) => "invalid",
            OpsError::Unavailable(_) => "unavailable",
            OpsError::Upstream(_) => "upstream",
        }
    }

    /// The HTTP status the API answers this error with.
    pub fn status(&self) -> u16 {
        match self {
            OpsError::NotFound(_) => 404,
            OpsError::Conflict(_) => 409,
            OpsError::Forbidden(_) => 403,
            OpsError::Invalid(_) => 400,
            OpsError::Unavailable(_) => 503,
            OpsError::Upstream(_) => 502,
        }
    }
}

/// The audit trail: one log line per operator action (target `ferry::audit`, level info), with
/// who acted, what they did, on which pipeline, stage and promotion, and how it ended.
struct Audit<'a> {
    action: &'static str,
    who: &'a str,
    pipeline: &'a str,
    stage: &'a str,
    promotion: &'a str,
    /// How the request reached Ferry (e.g. "oidc (Alice)", "operator-token (… unverified)").
    via: &'a str,
}

impl Audit<'_> {
    /// `detail` says more about the action (a job id, the digests of a rollback); `result` is
    /// "ok: …" or the error's class and message.
    fn log(&self, detail: &str, result: &str) {
        tracing::info!(
            target: "ferry::audit",
            action = self.action,
            who = self.who,
            pipeline = self.pipeline,
            stage = self.stage,
            promotion = self.promotion,
            channel = channel_of(self.via),
            verified = !self.via.starts_with(crate::identity::Channel::OperatorToken.as_str()),
            via = self.via,
            detail,
            result,
            "audit: {} by {}",
            self.action,
            self.who
        );
    }
}

/// The channel word a `via` starts with (`oidc`, `user-token`, `operator-token`, …).
fn channel_of(via: &str) -> &str {
    via.split(' ').next().unwrap_or(via)
}

/// An operation's result as the audit line says it.
fn audit_result<T>(result: &Result<T, OpsError>, ok: impl FnOnce(&T) -> String) -> String {
    match result {
        Ok(value) => format!("ok: {}", ok(value)),
        Err(e) => format!("{}: {e}", e.class()),
    }
}

/// A promotion state as the API spells it (`succeeded`, `rejected`, …).
fn state_name(state: PromotionState) -> String {
    serde_json::to_value(state).ok().and_then(|v| v.as_str().map(str::to_string)).unwrap_or_default()
}

/// The canonical form of an acting person's name (see [`crate::person`]).
fn person(name: &str) -> Result<String, OpsError> {
    crate::person::canonical(name).map_err(|e| OpsError::Invalid(format!("who is acting: {e}")))
}

pub struct Operations {
    worker: Arc<Worker>,
}

impl Operations {
    pub fn new(worker: Arc<Worker>) -> Self {
        Operations { worker }
    }

    pub fn config(&self) -> &crate::config::Config {
        self.worker.config()
    }

    /// A store's failure, answered by its class (an unavailable ledger is a 503).
    fn failed(e: impl Into<WorkError>) -> OpsError {
        OpsError::from(e.into())
    }

    pub async fn status(&self, pipeline: Option<&str>) -> Result<Vec<PipelineStatus>, OpsError> {
        let config = self.worker.config();
        if let Some(name) = pipeline {
            if config.pipeline(name).is_none() {
                return Err(OpsError::NotFound(format!("no pipeline `{name}`")));
            }
        }
        let ledger = self.worker.ledger();
        let mut out = Vec::new();
        for p in config.pipelines.iter().filter(|p| pipeline.is_none_or(|n| p.name.get_ref() == n)) {
            let parked = ledger.parked(Some(p.name.get_ref())).await.map_err(Self::failed)?;
            let mut stages = Vec::new();
            for (index, stage) in p.stages.iter().enumerate() {
                let mut pending = Vec::new();
                for record in parked.iter().filter(|r| &r.stage == stage.name.get_ref()) {
                    let waiting = self.waiting(p, index, record).await?;
                    pending.push(Pending { record: record.clone(), waiting });
                }
                let env = ledger.environment(p.name.get_ref(), stage.name.get_ref()).await.map_err(Self::failed)?;
                let newest =
                    ledger.history(p.name.get_ref(), Some(stage.name.get_ref()), 1).await.map_err(Self::failed)?;
                let deploy_failed = newest.into_iter().find(|r| r.state == PromotionState::DeployFailed);
                let current_promotion = match &env {
                    Some(env) => ledger.promotion(&env.current.promotion_id).await.map_err(Self::failed)?,
                    None => None,
                };
                let deployment = ledger
                    .deployments(p.name.get_ref(), stage.name.get_ref(), 1)
                    .await
                    .map_err(Self::failed)?
                    .into_iter()
                    .next();
                stages.push(StageStatus {
                    name: stage.name.get_ref().clone(),
                    target: stage.target.get_ref().clone(),
                    gate: format!("{:?}", stage.gate).to_lowercase(),
                    current: env.as_ref().map(|e| e.current.clone()),
                    previous: env.and_then(|e| e.previous),
                    pending,
                    deploy_failed,
                    current_promotion,
                    deployment,
                    notify: stage.notify.as_ref().map(|n| n.kind().to_string()),
                });
            }
            out.push(PipelineStatus { name: p.name.get_ref().clone(), source: p.source.get_ref().clone(), stages });
        }
        Ok(out)
    }

    /// What parked `record` (in stage `index` of `pipeline`) waits for, as of now.
    async fn waiting(
        &self,
        pipeline: &crate::config::Pipeline,
        index: usize,
        record: &PromotionRecord,
    ) -> Result<String, OpsError> {
        let stage = &pipeline.stages[index];
        let previous = index.checked_sub(1).map(|i| pipeline.stages[i].name.get_ref().as_str());
        let now = now_ms();
        let text = match (stage.gate, previous) {
            (Gate::Approval, _) => {
                let have = crate::worker::counted_approvers(stage, record).len();
                let mut text =
                    format!("waiting for approval ({have} of {}): ferry approve {}", stage.approvers, record.id);
                if let Some(expiry) = stage.approval_expiry() {
                    let left_s = (record.created_at_ms + expiry.as_millis() as i64 - now).max(0) / 1000;
                    text.push_str(&format!(" (expires in {left_s} s)"));
                }
                text
            }
            (Gate::Soak | Gate::After, Some(previous)) => {
                let env = self
                    .worker
                    .ledger()
                    .environment(pipeline.name.get_ref(), previous)
                    .await
                    .map_err(Self::failed)?
                    .filter(|e| e.current.digest == record.digest);
                match env {
                    None => format!("{previous} is not running {} (yet)", record.digest),
                    Some(_) if stage.gate == Gate::After => format!("waiting for {previous} to report deployed"),
                    Some(env) => {
                        let left_ms = env.current.since_ms + stage.soak().as_millis() as i64 - now;
                        if left_ms > 0 {
                            format!("soaking in {previous}: {} s to go", (left_ms + 999) / 1000)
                        } else {
                            format!("soaked in {previous}: promoting shortly")
                        }
                    }
                }
            }
            _ => record.gates.last().map(|g| g.detail.clone()).unwrap_or_default(),
        };
        Ok(text)
    }

    pub async fn promote(
        &self,
        pipeline: &str,
        reference: &str,
        stage: &str,
        by: Option<&str>,
        via: &str,
    ) -> Result<String, OpsError> {
        let result = self.promote_unaudited(pipeline, reference, stage, by).await;
        // The promotion id is known once the worker resolved the reference: the job leads to it.
        let audit = Audit { action: "promote", who: by.unwrap_or("-"), pipeline, stage, promotion: "-", via };
        audit.log(&format!("reference {reference}"), &audit_result(&result, |job| format!("queued job {job}")));
        result
    }

    async fn promote_unaudited(
        &self,
        pipeline: &str,
        reference: &str,
        stage: &str,
        by: Option<&str>,
    ) -> Result<String, OpsError> {
        let by = by.map(person).transpose()?;
        let by = by.as_deref();
        if reference.parse::<Digest>().is_err() && reference.parse::<Tag>().is_err() {
            return Err(OpsError::Invalid(format!("`{reference}` is neither a digest (sha256:…) nor a tag")));
        }
        Ok(self.worker.promote_manually(pipeline, reference, stage, by).await?)
    }

    /// `by` approves promotion `id`; `via` says how the request reached Ferry (recorded with the
    /// approval, e.g. [`crate::person::VIA_OPERATOR_TOKEN`]).
    pub async fn approve(&self, id: &str, by: &str, via: &str) -> Result<Approved, OpsError> {
        let mut seen = None;
        let result = self.approve_unaudited(id, by, via, &mut seen).await;
        let (pipeline, stage) = seen.as_ref().map_or(("-", "-"), |r| (r.pipeline.as_str(), r.stage.as_str()));
        let audit = Audit { action: "approve", who: by, pipeline, stage, promotion: id, via };
        let result_text = audit_result(&result, |a| {
            let counted = if a.already_counted { "already counted, " } else { "" };
            let released = match &a.job {
                Some(job) if a.released => format!(": released, job {job}"),
                _ => String::new(),
            };
            format!("{counted}{} of {} approvals{released}", a.approvals, a.required)
        });
        audit.log(&format!("via {via}"), &result_text);
        result
    }

    async fn approve_unaudited(
        &self,
        id: &str,
        by: &str,
        via: &str,
        seen: &mut Option<PromotionRecord>,
    ) -> Result<Approved, OpsError> {
        let by = person(by)?;
        let ledger = self.worker.ledger();
        let record = ledger
            .promotion(id)
            .await
            .map_err(Self::failed)?
            .ok_or_else(|| OpsError::NotFound(format!("no promotion {id}")))?;
        *seen = Some(record.clone());
        if record.state != PromotionState::AwaitingApproval {
            return Err(OpsError::Conflict(format!("{id} is not awaiting approval (it is {:?})", record.state)));
        }
        if record.triggered_by.as_deref().is_some_and(|t| crate::person::same(t, &by)) {
            return Err(OpsError::Forbidden(format!("{by} triggered {id} and cannot approve it; ask someone else")));
        }
        let stage = self
            .worker
            .config()
            .pipeline(&record.pipeline)
            .and_then(|p| p.stage(&record.stage))
            .map(|(_, s)| s)
            .filter(|s| s.gate == Gate::Approval)
            .ok_or_else(|| {
                OpsError::Conflict(format!("stage {} of {} no longer needs approval", record.stage, record.pipeline))
            })?;
        if !stage.may_approve(&by) {
            return Err(OpsError::Forbidden(format!(
                "{by} may not approve promotions into {} of {} (approvers_allowed names who may)",
                record.stage, record.pipeline
            )));
        }
        let required = stage.approvers;
        let now = now_ms();
        let approvals = ledger.approve(id, &by, now).await.map_err(Self::failed)?;
        // The ledger keeps one approval per person: an earlier one (also one that raced this
        // request) means this one changes nothing.
        let already_counted = approvals.iter().any(|a| crate::person::same(&a.by, &by) && a.at_ms != now);
        let mut promotion = ledger.promotion(id).await.map_err(Self::failed)?.unwrap_or(record);
        let counted = crate::worker::counted_approvers(stage, &promotion).len();
        if already_counted {
            return Ok(Approved {
                promotion,
                approvals: counted,
                required,
                released: false,
                job: None,
                already_counted,
            });
        }
        // Who approved is only as trustworthy as the channel that said so: record it.
        promotion.gates.push(GateDecision {
            gate: "approval".into(),
            decision: "approve".into(),
            detail: format!("{by} approved ({counted} of {required}){APPROVED_THROUGH}{via}"),
            at_ms: now,
        });
        promotion.updated_at_ms = now;
        ledger.put_promotion(promotion.clone()).await.map_err(Self::failed)?;
        let released = counted as u32 >= required;
        let mut job = None;
        if released {
            job = Some(self.worker.wake(&promotion, "approved").await.map_err(Self::failed)?);
            promotion.state = PromotionState::Pending;
        }
        Ok(Approved { promotion, approvals: counted, required, released, job, already_counted: false })
    }

    pub async fn reject(
        &self,
        id: &str,
        by: &str,
        reason: Option<&str>,
        via: &str,
    ) -> Result<PromotionRecord, OpsError> {
        let mut seen = None;
        let result = self.reject_unaudited(id, by, reason, &mut seen).await;
        let (pipeline, stage) = seen.as_ref().map_or(("-", "-"), |r| (r.pipeline.as_str(), r.stage.as_str()));
        let audit = Audit { action: "reject", who: by, pipeline, stage, promotion: id, via };
        audit.log(&format!("reason {}", reason.unwrap_or("-")), &audit_result(&result, |r| state_name(r.state)));
        result
    }

    async fn reject_unaudited(
        &self,
        id: &str,
        by: &str,
        reason: Option<&str>,
        seen: &mut Option<PromotionRecord>,
    ) -> Result<PromotionRecord, OpsError> {
        let by = &person(by)?;
        let ledger = self.worker.ledger();
        let mut record = ledger
            .promotion(id)
            .await
            .map_err(Self::failed)?
            .ok_or_else(|| OpsError::NotFound(format!("no promotion {id}")))?;
        *seen = Some(record.clone());
        if !record.state.is_parked() {
            return Err(OpsError::Conflict(format!("{id} is not waiting on a gate (it is {:?})", record.state)));
        }
        let now = now_ms();
        record.state = PromotionState::Rejected;
        record.error = Some(format!("rejected by {by}{}", reason.map(|r| format!(": {r}")).unwrap_or_default()));
        record.gates.push(GateDecision {
            gate: "approval".into(),
            decision: "reject".into(),
            detail: record.error.clone().unwrap_or_default(),
            at_ms: now,
        });
        record.finished_at_ms = Some(now);
        record.updated_at_ms = now;
        ledger.put_promotion(record.clone()).await.map_err(Self::failed)?;
        let decision = Decision::Rejected { by: by.clone(), reason: reason.map(str::to_string) };
        self.worker.announce(&record, decision);
        Ok(record)
    }

    pub async fn rollback(
        &self,
        pipeline: &str,
        stage: &str,
        to: Option<&str>,
        by: Option<&str>,
        via: &str,
    ) -> Result<PromotionRecord, OpsError> {
        let started = now_ms();
        let from = match self.worker.ledger().environment(pipeline, stage).await {
            Ok(Some(env)) => env.current.digest,
            _ => "-".to_string(),
        };
        let result = self.rollback_unaudited(pipeline, stage, to, by).await;
        // A failed rollback is recorded too: its record names the digest it went back to.
        let record =
            match &result {
                Ok(record) => Some(record.clone()),
                Err(_) => self.worker.ledger().history(pipeline, Some(stage), 1).await.ok().and_then(|newest| {
                    newest.into_iter().find(|r| r.trigger == "rollback" && r.created_at_ms >= started)
                }),
            };
        let back_to = record.as_ref().map(|r| r.digest.as_str()).or(to).unwrap_or("the previous good digest");
        let promotion = record.as_ref().map_or("-", |r| r.id.as_str());
        let audit = Audit { action: "rollback", who: by.unwrap_or("-"), pipeline, stage, promotion, via };
        audit.log(&format!("rollback from {from} to {back_to}"), &audit_result(&result, |r| state_name(r.state)));
        result
    }

    async fn rollback_unaudited(
        &self,
        pipeline: &str,
        stage: &str,
        to: Option<&str>,
        by: Option<&str>,
    ) -> Result<PromotionRecord, OpsError> {
        let by = by.map(person).transpose()?;
        let by = by.as_deref();
        let to = to.map(|d| d.parse::<Digest>().map_err(|e| OpsError::Invalid(e.to_string()))).transpose()?;
        Ok(self.worker.rollback(pipeline, stage, to.as_ref(), by).await?)
    }

    pub async fn history(
        &self,
        pipeline: &str,
        stage: Option<&str>,
        limit: usize,
    ) -> Result<Vec<PromotionRecord>, OpsError> {
        let Some(configured) = self.worker.config().pipeline(pipeline) else {
            return Err(OpsError::NotFound(format!("no pipeline `{pipeline}`")));
        };
        if let Some(stage) = stage.filter(|s| configured.stage(s).is_none()) {
            return Err(OpsError::NotFound(format!("pipeline `{pipeline}` has no stage `{stage}`")));
        }
        self.worker.ledger().history(pipeline, stage, limit).await.map_err(Self::failed)
    }

    pub async fn promotion(&self, id: &str) -> Result<PromotionRecord, OpsError> {
        self.worker
            .ledger()
            .promotion(id)
            .await
            .map_err(Self::failed)?
            .ok_or_else(|| OpsError::NotFound(format!("no promotion {id}")))
    }

    /// A promotion (`p-…`, a rollback `r-…`) or a job, with everything known about it: a job id
    /// leads to the promotion it worked on, a promotion to its latest job.
    pub async fn show(&self, id: &str) -> Result<Shown, OpsError> {
        let ledger = self.worker.ledger();
        let (promotion, job) = match ledger.promotion(id).await.map_err(Self::failed)? {
            Some(promotion) => {
                let job = match &promotion.job_id {
                    Some(job) => ledger.job(job).await.map_err(Self::failed)?,
                    None => None,
                };
                (Some(promotion), job)
            }
            None => {
                if id.is_empty() || id.len() > 200 || id.chars().any(char::is_control) {
                    return Err(OpsError::Invalid(format!("`{id}` is neither a promotion nor a job id")));
                }
                let Some(job) = ledger.job(id).await.map_err(Self::failed)? else {
                    if id.starts_with("p-") || id.starts_with("r-") {
                        return Err(OpsError::NotFound(format!("no promotion {id}")));
                    }
                    return Err(OpsError::NotFound(format!(
                        "no promotion or job `{id}` yet: a job is known once a worker has picked it up"
                    )));
                };
                let promotion = match &job.promotion {
                    Some(p) => ledger.promotion(p).await.map_err(Self::failed)?,
                    None => None,
                };
                (promotion, Some(job))
            }
        };
        let approvals = promotion.as_ref().map(approvals_seen).unwrap_or_default();
        Ok(Shown { promotion, approvals, job })
    }

    /// Jobs not done yet, where the queue counts them (`/metrics`).
    pub async fn queue_depth(&self) -> Option<u64> {
        self.worker.queue().depth().await.ok().flatten()
    }

    /// Parked promotions by pipeline, stage and gate, for `/metrics`: one read of the ledger.
    pub async fn promotions_waiting(&self) -> Result<crate::metrics::Waiting, OpsError> {
        let parked = self.worker.ledger().parked(None).await.map_err(Self::failed)?;
        Ok(crate::metrics::Waiting::count(self.worker.config(), &parked))
    }

    pub async fn dead_letters(&self) -> Result<Vec<DeadLetter>, OpsError> {
        self.worker.queue().dead_letters().await.map_err(Self::failed)
    }

    /// `by` puts dead-lettered job `id` back in the queue.
    pub async fn redrive(&self, id: &str, by: Option<&str>, via: &str) -> Result<(), OpsError> {
        let mut seen = None;
        let result = self.redrive_unaudited(id, &mut seen).await;
        // What the job was about, as far as the ledger knows (a job that failed before it
        // resolved its image has no promotion).
        let (pipeline, stage) = seen.as_ref().map_or(("-", "-"), |r| (r.pipeline.as_str(), r.stage.as_str()));
        let promotion = seen.as_ref().map_or("-", |r| r.id.as_str());
        let audit = Audit { action: "redrive", who: by.unwrap_or("-"), pipeline, stage, promotion, via };
        audit.log(&format!("job {id}"), &audit_result(&result, |()| "back in the queue".to_string()));
        result
    }

    async fn redrive_unaudited(&self, id: &str, seen: &mut Option<PromotionRecord>) -> Result<(), OpsError> {
        let previous = self.worker.ledger().job(id).await.map_err(Self::failed)?;
        if let Some(promotion) = previous.as_ref().and_then(|p| p.promotion.as_deref()) {
            *seen = self.worker.ledger().promotion(promotion).await.ok().flatten();
        }
        if !self.worker.queue().redrive(id).await.map_err(Self::failed)? {
            return Err(OpsError::NotFound(format!("no dead letter {id}")));
        }
        // The job runs again under the same id: its earlier failure is no longer its outcome.
        let queued = JobRecord {
            id: id.to_string(),
            state: JobState::Queued,
            promotion: previous.and_then(|p| p.promotion),
            detail: Some("redriven from the dead letters".into()),
            error: None,
            updated_at_ms: now_ms(),
        };
        self.worker.ledger().put_job(queued).await.map_err(Self::failed)?;
        Ok(())
    }

    /// What became of queue job `id`. The queue cannot be asked about one job (SQS cannot), so a
    /// job the worker has not picked up yet, or an id that was never issued, is `queued`.
    pub async fn job(&self, id: &str) -> Result<JobRecord, OpsError> {
        if id.is_empty() || id.len() > 200 || id.chars().any(char::is_control) {
            return Err(OpsError::Invalid(format!("`{id}` is not a job id")));
        }
        let known = self.worker.ledger().job(id).await.map_err(Self::failed)?;
        Ok(known.unwrap_or_else(|| JobRecord {
            id: id.to_string(),
            state: JobState::Queued,
            promotion: None,
            detail: None,
            error: None,
            updated_at_ms: now_ms(),
        }))
    }
}

/// How an approval's gate decision names its channel: "bob approved (1 of 2) through …".
const APPROVED_THROUGH: &str = " through ";

/// A promotion's approvals, each with the channel its gate decision (written at the same
/// instant by [`Operations::approve`]) names.
fn approvals_seen(record: &PromotionRecord) -> Vec<ApprovalSeen> {
    record
        .approvals
        .iter()
        .map(|approval| {
            let via = record
                .gates
                .iter()
                .filter(|g| g.decision == "approve" && g.at_ms == approval.at_ms)
                .filter(|g| g.detail.starts_with(&format!("{} approved", approval.by)))
                .find_map(|g| g.detail.split_once(APPROVED_THROUGH).map(|(_, via)| via.to_string()));
            ApprovalSeen { by: approval.by.clone(), at_ms: approval.at_ms, via }
        })
        .collect()
}

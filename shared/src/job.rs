//! What the queue carries between intake, operators and the worker.

use serde::{Deserialize, Serialize};

use crate::intake::PromotionRequest;
use crate::intake::azure_devops::DeploymentCompleted;
use crate::queue::NewJob;

/// Promote an image into one stage of a pipeline.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PromotionJob {
    pub pipeline: String,
    pub stage: String,
    /// `host/repo` the image is promoted from.
    pub source: String,
    pub request: PromotionRequest,
    /// What started it when not a webhook: `manual`, `previous-stage:dev`, `approved` …
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trigger: Option<String>,
    /// The person who started it (`ferry promote`), who may not approve it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub triggered_by: Option<String>,
}

impl PromotionJob {
    pub fn new(pipeline: &str, stage: &str, source: &str, request: PromotionRequest) -> Self {
        PromotionJob {
            pipeline: pipeline.into(),
            stage: stage.into(),
            source: source.into(),
            request,
            trigger: None,
            triggered_by: None,
        }
    }

    /// The queue entry, deduplicated by [`dedup_key`].
    pub fn to_new_job(&self) -> NewJob {
        self.to_new_job_keyed(dedup_key(self))
    }

    /// The queue entry under an explicit dedup key (e.g. a continuation after approval, which
    /// must not collapse into the job that parked it).
    pub fn to_new_job_keyed(&self, dedup_key: String) -> NewJob {
        NewJob::new(dedup_key, &QueuedJobRef::Promote(self)).in_stage(&self.pipeline, &self.stage)
    }
}

/// A stage's deployment outcome reported by a release system, for the worker to record (later
/// stages may gate on it).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeploymentJob {
    pub pipeline: String,
    pub stage: String,
    pub report: DeploymentCompleted,
}

/// Everything the queue carries, tagged by `kind`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum QueuedJob {
    Promote(PromotionJob),
    Deployment(DeploymentJob),
}

/// [`QueuedJob`] by reference: enqueueing a job serializes it without copying it first.
#[derive(Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
enum QueuedJobRef<'a> {
    Promote(&'a PromotionJob),
}

impl QueuedJob {
    pub fn pipeline_and_stage(&self) -> (&str, &str) {
        match self {
            QueuedJob::Promote(j) => (&j.pipeline, &j.stage),
            QueuedJob::Deployment(j) => (&j.pipeline, &j.stage),
        }
    }
}

/// Same digest (or, without one, same tag and delivery) for the same stage → one job.
pub fn dedup_key(job: &PromotionJob) -> String {
    let what = match (&job.request.digest, &job.request.tag) {
        (Some(digest), _) => digest.to_string(),
        (None, Some(tag)) => format!("tag:{tag}#{}", job.request.delivery_id.as_deref().unwrap_or("")),
        (None, None) => "none".into(),
    };
    format!("{}/{}/{}/{what}", job.pipeline, job.stage, job.source)
}

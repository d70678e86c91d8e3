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
    /// The ledger record this job continues (a promotion woken from its gate). Without it the
    /// worker derives the record from pipeline, stage, digest and tag.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub promotion: Option<String>,
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
            promotion: None,
        }
    }

    /// The queue entry, deduplicated by [`dedup_key`]. A tag-only request the sender gave no
    /// push identity for merges only with a job that has not been worked on yet: once that one
    /// is resolved, the same tag again is a new push.
    pub fn to_new_job(&self) -> NewJob {
        let job = self.to_new_job_keyed(dedup_key(self));
        if self.request.digest.is_none() && self.request.delivery_id.is_none() { job.while_pending() } else { job }
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
    /// The build number of this pipeline's build the release deployed, when the event names
    /// it: the report then concerns only the digest that build produced in this stage.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub build_number: Option<String>,
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

/// What makes two deliveries one push, for one stage:
/// - with a digest: the same digest *and* tag (a new tag on a known digest is new information);
/// - tag only, with the sender's push identity (delivery id, Docker Hub callback URL, Harbor
///   timestamp …): the same tag and identity;
/// - tag only without identity: the same tag, and only while that job is still pending (see
///   [`PromotionJob::to_new_job`]).
pub fn dedup_key(job: &PromotionJob) -> String {
    let tag = job.request.tag.as_deref().unwrap_or("");
    let what = match (&job.request.digest, &job.request.delivery_id) {
        (Some(digest), _) => format!("{digest}:{tag}"),
        (None, Some(delivery)) => format!("tag:{tag}#{delivery}"),
        (None, None) => format!("tag:{tag}#pending"),
    };
    format!("{}/{}/{}/{what}", job.pipeline, job.stage, job.source)
}

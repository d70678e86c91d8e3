use std::sync::Arc;

use super::registries::registry_ref;
use super::{Delivered, GateResult, Outcome, Worker, now_ms};
use crate::config::{CopyMethod, Pipeline, RepoName, Stage};
use crate::deploy::{Deployment, NoopNotifier, NotifyError};
use crate::error::WorkError;
use crate::failpoint::{self, Point};
use crate::intake::{Build, PromotionRequest, Sender};
use crate::job::PromotionJob;
use crate::ledger::{DeploymentRecord, EnvironmentEntry, PromotionRecord, PromotionState, promotion_id};
use crate::registry::client::pull_scope;
use crate::registry::reference::ImageRef;
use crate::registry::{CopyError, CopyOptions, Digest, Location, Progress, Tag, copy};

impl Worker {
    pub(super) async fn promote(
        &self,
        job: &PromotionJob,
        job_id: &str,
        attempt: u32,
        promotion: &mut Option<String>,
    ) -> Result<Outcome, WorkError> {
        let pipeline = self
            .config
            .pipeline(&job.pipeline)
            .ok_or_else(|| WorkError::permanent(format!("pipeline `{}` is not configured (any more)", job.pipeline)))?;
        let (index, stage) = pipeline
            .stage(&job.stage)
            .ok_or_else(|| WorkError::permanent(format!("pipeline `{}` has no stage `{}`", job.pipeline, job.stage)))?;
        // The source is what the configuration says, never what a payload says.
        let source = pipeline.stage_source(index);
        if job.source != source.to_string() {
            return Err(WorkError::permanent(format!(
                "job names source {} but stage `{}` promotes from {source}",
                job.source, job.stage
            )));
        }
        let target = stage.target_repo();

        let (digest, tag_moved_to) = self.resolve(&source, &job.request).await?;
        let mut id = job.promotion.clone().unwrap_or_else(|| promotion_of(job, &digest));
        working_on(promotion, &id);
        let now = now_ms();
        let mut existing = self.ledger.promotion(&id).await?;
        if let Some(record) = existing.as_ref().filter(|r| r.state.is_final() && job.promotion.is_none()) {
            if record.state == PromotionState::Succeeded {
                let current = self.ledger.environment(&job.pipeline, &job.stage).await?;
                if current.is_some_and(|env| env.current.digest == record.digest) {
                    // Redelivered, or a duplicate: make sure the next stage was queued, nothing else.
                    self.queue_next_stage(pipeline, index, record).await?;
                    return Ok(Outcome::Done(format!("{id}: {digest} is already in {}", job.stage)));
                }
            }
            if record.state == PromotionState::Rejected {
                return Ok(Outcome::Done(format!("{id}: rejected earlier, not promoting")));
            }
            if record.state == PromotionState::DeployFailed && job.trigger.as_deref() != Some("manual") {
                return Ok(Outcome::Done(format!(
                    "{id}: its deployment failed earlier; try again with `ferry promote`"
                )));
            }
            // It ran here once and was rolled back from. Only a person brings it back; an old
            // webhook redelivered must not undo a rollback.
            if job.trigger.as_deref() != Some("manual") {
                return Ok(Outcome::Done(format!(
                    "{id}: {digest} was rolled back from in {}; bring it back with `ferry promote` or `ferry rollback --to`",
                    job.stage
                )));
            }
            // A person asking again starts a new promotion: its own record, the stage's gate
            // again, and the old record left as history. Its id derives from the job's, so a
            // redelivery of this job lands on the same new record.
            id = promotion_id(&job.pipeline, &job.stage, &format!("{id}@{job_id}"));
            working_on(promotion, &id);
            existing = self.ledger.promotion(&id).await?;
        }
        let mut record = match existing {
            Some(record) if record.state == PromotionState::Rejected => {
                return Ok(Outcome::Done(format!("{id}: rejected, not promoting")));
            }
            Some(record) if record.state == PromotionState::Succeeded => {
                self.queue_next_stage(pipeline, index, &record).await?;
                return Ok(Outcome::Done(format!("{id}: already promoted {digest} to {}", job.stage)));
            }
            Some(record) => record,
            None => PromotionRecord {
                id: id.clone(),
                pipeline: job.pipeline.clone(),
                stage: job.stage.clone(),
                source: source.to_string(),
                target: target.to_string(),
                digest: digest.to_string(),
                tag: job.request.tag.clone(),
                tag_moved_to: tag_moved_to.as_ref().map(Digest::to_string),
                build_id: job.request.build.as_ref().and_then(|b| b.id.clone()),
                build_number: job.request.build.as_ref().and_then(|b| b.number.clone()),
                trigger: job.trigger.clone().unwrap_or_else(|| format!("webhook:{}", job.request.sender.as_str())),
                triggered_by: job.triggered_by.clone(),
                state: PromotionState::Pending,
                gates: Vec::new(),
                approvals: Vec::new(),
                error: None,
                attempts: 0,
                created_at_ms: now,
                updated_at_ms: now,
                finished_at_ms: None,
                // From its creation, so the id `ferry promote` printed leads here.
                job_id: Some(job_id.to_string()),
            },
        };
        if let Some(moved) = &tag_moved_to {
            tracing::warn!(tag = ?job.request.tag, event_digest = %digest, now_points_to = %moved, "the tag moved since the event; promoting the event's digest");
        }

        match self.evaluate_gate(pipeline, index, stage, &mut record).await? {
            GateResult::Pass => {}
            GateResult::Wait(state, why, wake_at_ms) => {
                if let Some(at_ms) = wake_at_ms {
                    self.wake_at(at_ms, &id);
                }
                record.state = state;
                record.updated_at_ms = now_ms();
                self.ledger.put_promotion(record).await?;
                return Ok(Outcome::Parked(format!("{id}: {why}")));
            }
            GateResult::Reject(why) => {
                record.state = PromotionState::Rejected;
                record.error = Some(why.clone());
                record.finished_at_ms = Some(now_ms());
                record.updated_at_ms = now_ms();
                self.ledger.put_promotion(record).await?;
                return Ok(Outcome::Done(format!("{id}: {why}")));
            }
        }

        record.state = PromotionState::Running;
        record.attempts = attempt;
        record.job_id = Some(job_id.to_string());
        record.updated_at_ms = now_ms();
        self.ledger.put_promotion(record.clone()).await?;

        match self.deliver(pipeline, stage, &source, &target, &digest, &record, false).await {
            Ok(Delivered::Deployed) => {}
            Ok(Delivered::DeployFailed(why)) => return self.deploy_failed(stage, record, why).await,
            Err(error) => {
                record.state = PromotionState::Failed;
                record.error = Some(error.message.clone());
                record.updated_at_ms = now_ms();
                let _ = self.ledger.put_promotion(record).await;
                return Err(error);
            }
        }

        record.state = PromotionState::Succeeded;
        record.error = None;
        record.finished_at_ms = Some(now_ms());
        record.updated_at_ms = now_ms();
        self.ledger.put_promotion(record.clone()).await?;
        self.queue_next_stage(pipeline, index, &record).await?;
        Ok(Outcome::Done(format!("{id}: promoted {digest} to {target} ({})", job.stage)))
    }

    /// The stage's runtime said the deployment failed: the promotion is `deploy_failed` (final,
    /// not retried) and, with `rollback_on_failure`, the stage goes back to the digest it ran.
    pub(super) async fn deploy_failed(
        &self,
        stage: &Stage,
        mut record: PromotionRecord,
        why: String,
    ) -> Result<Outcome, WorkError> {
        tracing::error!(promotion = %record.id, "deploy_failed: {why}");
        record.state = PromotionState::DeployFailed;
        record.error = Some(why.clone());
        record.finished_at_ms = Some(now_ms());
        record.updated_at_ms = now_ms();
        self.ledger.put_promotion(record.clone()).await?;
        if !stage.rollback_on_failure {
            return Ok(Outcome::Done(format!("{}: deploy_failed: {why}", record.id)));
        }
        // The failed digest was never recorded as running, so the current entry is the last good one.
        let Some(good) = self.ledger.environment(&record.pipeline, &record.stage).await?.map(|e| e.current) else {
            return Ok(Outcome::Done(format!(
                "{}: deploy_failed: {why}; nothing ran here before to roll back to",
                record.id
            )));
        };
        let digest: Digest = good
            .digest
            .parse()
            .map_err(|e| WorkError::permanent(format!("the ledger holds an invalid digest: {e}")))?;
        match self.rollback_in_turn(&record.pipeline, &record.stage, Some(&digest), Some("rollback_on_failure")).await {
            Ok(rollback) => Ok(Outcome::Done(format!(
                "{}: deploy_failed: {why}; rolled back to {digest} ({})",
                record.id, rollback.id
            ))),
            Err(e) => Ok(Outcome::Done(format!("{}: deploy_failed: {why}; the rollback failed too: {e}", record.id))),
        }
    }

    /// Copies `digest` from `source` to `target` with the stage's tags, verifies, notifies the
    /// stage and records what it now runs.
    #[allow(clippy::too_many_arguments)]
    pub(super) async fn deliver(
        &self,
        pipeline: &Pipeline,
        stage: &Stage,
        source: &RepoName,
        target: &RepoName,
        digest: &Digest,
        record: &PromotionRecord,
        rollback: bool,
    ) -> Result<Delivered, WorkError> {
        let tags = target_tags(stage, record);
        let started = std::time::Instant::now();
        let copied = self.copy_image(stage, source, target, digest, &tags).await;
        let (pipeline_name, stage_name) = (pipeline.name.get_ref(), stage.name.get_ref());
        crate::metrics::copy(pipeline_name, stage_name, started.elapsed(), copied.as_ref().ok().copied());
        copied?;
        failpoint::hit(Point::AfterTagBeforeLedger).await;

        let deployment = Deployment {
            pipeline: pipeline.name.get_ref().clone(),
            stage: stage.name.get_ref().clone(),
            image: format!("{target}@{digest}"),
            digest: digest.to_string(),
            tag: record.tag.clone(),
            build_number: record.build_number.clone(),
            promotion_id: record.id.clone(),
            rollback,
        };
        let notifier = self
            .notifiers
            .get(&(deployment.pipeline.clone(), deployment.stage.clone()))
            .cloned()
            .unwrap_or_else(|| Arc::new(NoopNotifier));
        let notified = match notifier.notify(&deployment).await {
            Ok(notified) => notified,
            Err(e @ NotifyError::Transient { .. }) => {
                return Err(WorkError::transient(format!("deploy notification failed: {e}")));
            }
            Err(e @ NotifyError::Permanent { .. }) => {
                self.ledger
                    .record_deployment(DeploymentRecord {
                        pipeline: deployment.pipeline.clone(),
                        stage: deployment.stage.clone(),
                        status: "failed".into(),
                        digest: Some(digest.to_string()),
                        reporter: "notifier".into(),
                        detail: Some(e.to_string()),
                        at_ms: now_ms(),
                    })
                    .await?;
                return Ok(Delivered::DeployFailed(e.to_string()));
            }
        };
        if notified.confirmed {
            self.ledger
                .record_deployment(DeploymentRecord {
                    pipeline: deployment.pipeline.clone(),
                    stage: deployment.stage.clone(),
                    status: "succeeded".into(),
                    digest: Some(digest.to_string()),
                    reporter: "notifier".into(),
                    detail: Some(notified.detail.clone()),
                    at_ms: now_ms(),
                })
                .await?;
        }
        self.ledger
            .set_current(
                &deployment.pipeline,
                &deployment.stage,
                EnvironmentEntry {
                    digest: digest.to_string(),
                    tag: record.tag.clone(),
                    build_number: record.build_number.clone(),
                    promotion_id: record.id.clone(),
                    since_ms: now_ms(),
                },
            )
            .await?;
        Ok(Delivered::Deployed)
    }

    /// The registry part of [`Worker::deliver`]: `digest` from `source` to `target` with `tags`,
    /// by the stage's copy method, read back. Returns the bytes Ferry sent (0 for an ACR import).
    async fn copy_image(
        &self,
        stage: &Stage,
        source: &RepoName,
        target: &RepoName,
        digest: &Digest,
        tags: &[Tag],
    ) -> Result<u64, WorkError> {
        if stage.copy == CopyMethod::AcrImport {
            self.registries.acr_import(source, target, digest, tags).await?;
            // Read back as after any copy: the stage's tag (or the digest) must be the digest.
            let client = self.registries.client(&target.registry).await?;
            let reference = tags.first().map(|t| t.to_string()).unwrap_or_else(|| digest.to_string());
            let found =
                client.head_manifest(&target.repository, &reference, &vec![pull_scope(&target.repository)]).await?;
            if found.as_ref() != Some(digest) {
                let found = found.map_or_else(|| "nothing".to_string(), |d| d.to_string());
                return Err(WorkError::permanent(format!(
                    "acr-import into {target}: {target}:{reference} is {found}, not {digest}"
                )));
            }
            tracing::info!(digest = %digest, "imported into {target} by ACR");
            // The registry copied, Ferry moved nothing.
            Ok(0)
        } else {
            let (first, rest) = match tags.split_first() {
                Some((first, rest)) => (Some(first.clone()), rest.to_vec()),
                None => (None, Vec::new()),
            };
            let from = Location::Registry(registry_ref(source, ImageRef { tag: None, digest: Some(digest.clone()) }));
            let to = Location::Registry(registry_ref(target, ImageRef { tag: first, digest: None }));
            let options = CopyOptions { extra_tags: rest, ..CopyOptions::default() };
            let access = self.registries.access(source, target).await?;
            let report = copy(&from, &to, &access, &options, Arc::new(Progress::default()))
                .await
                .map_err(|e| WorkError::from(e).context(format_args!("copy {from} → {to}")))?;
            if report.digest != digest.as_str() {
                return Err(WorkError::transient(format!("copy produced {} instead of {digest}", report.digest)));
            }
            tracing::info!(
                digest = %digest, bytes = report.bytes_transferred, manifest_bytes = report.manifest_bytes, copied = report.blobs_copied,
                mounted = report.blobs_mounted, skipped = report.blobs_skipped, "copied to {target}"
            );
            Ok(report.bytes_moved())
        }
    }

    /// The digest to promote: the event's, checked to exist at the source, or the tag's as the
    /// source resolves it now. Also returns where the tag points now when it moved.
    pub(super) async fn resolve(
        &self,
        source: &RepoName,
        request: &PromotionRequest,
    ) -> Result<(Digest, Option<Digest>), WorkError> {
        let client = self.registries.client(&source.registry).await?;
        let scope = vec![pull_scope(&source.repository)];
        let by_tag = match (&request.tag, &request.digest) {
            // Only the tag names the image: hash the manifest the tag serves rather than trust
            // a `Docker-Content-Digest` header, which a broken registry or proxy can get wrong
            // (`get_manifest` refuses bytes that do not match the header it is sent with).
            (Some(tag), None) => match client.get_manifest(&source.repository, tag).await {
                Ok(manifest) => Some(manifest.digest),
                Err(CopyError::NotFound { .. }) => None,
                Err(e) => return Err(e.into()),
            },
            // The event names the digest (checked below); the tag's header only says whether it moved.
            (Some(tag), Some(_)) => client.head_manifest(&source.repository, tag, &scope).await?,
            (None, _) => None,
        };
        match (&request.digest, by_tag) {
            (Some(digest), tag_now) => {
                let exists = client.head_manifest(&source.repository, digest.as_str(), &scope).await?.is_some();
                if !exists {
                    return Err(WorkError::not_found(format!("{digest} is not in {source}")));
                }
                let moved = tag_now.filter(|now| now != digest);
                Ok((digest.clone(), moved))
            }
            (None, Some(digest)) => Ok((digest, None)),
            (None, None) => Err(WorkError::not_found(match &request.tag {
                Some(tag) => format!("{source}:{tag} does not exist"),
                None => format!("the request names neither a tag nor a digest of {source}"),
            })),
        }
    }

    /// Queues the promotion of a just-promoted digest into the next stage, if there is one.
    pub(super) async fn queue_next_stage(
        &self,
        pipeline: &Pipeline,
        index: usize,
        record: &PromotionRecord,
    ) -> Result<(), WorkError> {
        if index + 1 >= pipeline.stages.len() {
            return Ok(());
        }
        failpoint::hit(Point::BeforeNextStageEnqueue).await;
        let job = self.job_for(pipeline, index + 1, record, format!("previous-stage:{}", record.stage), None);
        self.queue.enqueue(vec![job.to_new_job()]).await?;
        Ok(())
    }

    /// A promotion job carrying `record`'s digest, tag and build into stage `index`.
    pub(super) fn job_for(
        &self,
        pipeline: &Pipeline,
        index: usize,
        record: &PromotionRecord,
        trigger: String,
        by: Option<String>,
    ) -> PromotionJob {
        let build = (record.build_id.is_some() || record.build_number.is_some())
            .then(|| Build { id: record.build_id.clone(), number: record.build_number.clone() });
        let source = pipeline.stage_source(index);
        let mut job = PromotionJob::new(
            pipeline.name.get_ref(),
            pipeline.stages[index].name.get_ref(),
            &source.to_string(),
            PromotionRequest {
                sender: Sender::Operator,
                registry: Some(source.registry.clone()),
                repository: source.repository.clone(),
                tag: record.tag.clone(),
                digest: record.digest.parse().ok(),
                build,
                delivery_id: None,
            },
        );
        job.trigger = Some(trigger);
        job.triggered_by = by.or_else(|| record.triggered_by.clone());
        job
    }
}

/// The ledger record a job is about when it names none: one per pipeline, stage, digest and tag,
/// so duplicate jobs and redeliveries meet there, and a new tag on a known digest is a promotion
/// of its own (the tag is applied and recorded at every stage the digest reaches).
/// Notes the promotion this job is about, for its outcome and on every later log line of the job
/// (the `promotion` field of its span).
fn working_on(promotion: &mut Option<String>, id: &str) {
    *promotion = Some(id.to_string());
    tracing::Span::current().record("promotion", id);
}

pub(super) fn promotion_of(job: &PromotionJob, digest: &Digest) -> String {
    match &job.request.tag {
        Some(tag) => promotion_id(&job.pipeline, &job.stage, &format!("{digest}:{tag}")),
        None => promotion_id(&job.pipeline, &job.stage, digest.as_str()),
    }
}

/// The stage's target tags for this promotion, templates with unknown values left out.
pub(super) fn target_tags(stage: &Stage, record: &PromotionRecord) -> Vec<Tag> {
    let mut tags: Vec<Tag> = Vec::new();
    for template in &stage.target_tags {
        let mut value = template.replace("{stage}", stage.name.get_ref());
        for (key, field) in
            [("{tag}", &record.tag), ("{build.number}", &record.build_number), ("{build.id}", &record.build_id)]
        {
            if value.contains(key) {
                match field {
                    Some(v) => value = value.replace(key, v),
                    None => {
                        value.clear();
                        break;
                    }
                }
            }
        }
        if let Ok(tag) = value.parse::<Tag>() {
            if !tags.contains(&tag) {
                tags.push(tag);
            }
        }
    }
    tags
}

/// `1.2.3` or `v1.2.3`, without pre-release or build suffix.
pub(super) fn is_release_semver(tag: &str) -> bool {
    let version = tag.strip_prefix('v').unwrap_or(tag);
    let parts: Vec<&str> = version.split('.').collect();
    parts.len() == 3 && parts.iter().all(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use crate::ledger::PromotionState;

    fn stage(text: &str) -> Stage {
        let config = Config::parse(
            &format!("[registries.\"r.io\"]\n[[pipelines]]\nname = \"p\"\nsource = \"r.io/a\"\n[[pipelines.stages]]\nname = \"dev\"\ntarget = \"r.io/b\"\n{text}"),
            "t.toml",
        )
        .unwrap();
        config.pipelines.into_iter().next().unwrap().stages.into_iter().next().unwrap()
    }

    fn record(tag: Option<&str>, build: Option<&str>) -> PromotionRecord {
        PromotionRecord {
            tag: tag.map(str::to_string),
            build_number: build.map(str::to_string),
            ..PromotionRecord::sample("p", "dev", PromotionState::Pending)
        }
    }

    fn names(tags: Vec<Tag>) -> Vec<String> {
        tags.into_iter().map(|t| t.to_string()).collect()
    }

    #[test]
    fn default_target_tags_are_the_tag_the_stage_and_the_build() {
        let dev = stage("");
        assert_eq!(
            names(target_tags(&dev, &record(Some("1.4.2"), Some("20250304.3")))),
            ["1.4.2", "dev", "build-20250304.3"]
        );
        assert_eq!(names(target_tags(&dev, &record(None, None))), ["dev"], "unknown values drop their template");
    }

    #[test]
    fn invalid_or_repeated_target_tags_are_left_out() {
        let custom = stage("target_tags = [\"{stage}\", \"{stage}\", \"release/{tag}\", \"{tag}-{build.number}\"]");
        assert_eq!(names(target_tags(&custom, &record(Some("v1"), Some("7")))), ["dev", "v1-7"]);
    }

    #[test]
    fn semver_tags_are_recognized() {
        assert!(is_release_semver("1.2.3"));
        assert!(is_release_semver("v10.0.1"));
        assert!(!is_release_semver("1.2"));
        assert!(!is_release_semver("1.2.3-rc1"));
        assert!(!is_release_semver("latest"));
    }
}

use super::{Delivered, Worker, now_ms};
use crate::config::{Pipeline, Stage};
use crate::error::WorkError;
use crate::intake::{PromotionRequest, Sender};
use crate::job::PromotionJob;
use crate::ledger::{EnvironmentEntry, GateDecision, PromotionRecord, PromotionState, promotion_id};
use crate::registry::{Digest, Tag};

impl Worker {
    /// Re-points `stage` to an earlier digest already in its target repository, tags it, and
    /// notifies. Returns the record of the rollback.
    pub async fn rollback(
        &self,
        pipeline_name: &str,
        stage_name: &str,
        to: Option<&Digest>,
        by: Option<&str>,
    ) -> Result<PromotionRecord, WorkError> {
        let _turn = self.stage_turn(pipeline_name, stage_name).await;
        self.rollback_in_turn(pipeline_name, stage_name, to, by).await
    }

    /// [`Worker::rollback`] for a caller that holds the stage's turn already (a promotion whose
    /// deployment failed rolls back within its own turn).
    pub(super) async fn rollback_in_turn(
        &self,
        pipeline_name: &str,
        stage_name: &str,
        to: Option<&Digest>,
        by: Option<&str>,
    ) -> Result<PromotionRecord, WorkError> {
        let (pipeline, _, stage) = self.stage_of(pipeline_name, stage_name)?;
        let history = self.ledger.environment_history(pipeline_name, stage_name, 100).await?;
        let current = history
            .first()
            .ok_or_else(|| WorkError::conflict(format!("{pipeline_name}/{stage_name} has never been promoted to")))?;
        let entry =
            match to {
                Some(digest) => history.iter().find(|e| e.digest == digest.as_str()).cloned().ok_or_else(|| {
                    WorkError::not_found(format!("{digest} never ran in {pipeline_name}/{stage_name}"))
                })?,
                None => previous_good(&history).cloned().ok_or_else(|| {
                    WorkError::conflict(format!("{pipeline_name}/{stage_name} has no earlier digest to roll back to"))
                })?,
            };
        let digest: Digest = entry
            .digest
            .parse()
            .map_err(|e| WorkError::permanent(format!("the ledger holds an invalid digest: {e}")))?;
        let target = stage.target_repo();
        let now = now_ms();
        let mut record = PromotionRecord {
            id: format!("r-{}", &promotion_id(pipeline_name, stage_name, &format!("{digest}@{now}"))[2..]),
            pipeline: pipeline_name.into(),
            stage: stage_name.into(),
            source: target.to_string(),
            target: target.to_string(),
            digest: digest.to_string(),
            tag: entry.tag.clone(),
            tag_moved_to: None,
            build_id: None,
            build_number: entry.build_number.clone(),
            trigger: "rollback".into(),
            triggered_by: by.map(str::to_string),
            state: PromotionState::Running,
            gates: vec![GateDecision {
                gate: "rollback".into(),
                decision: "pass".into(),
                detail: format!("from {} back to {digest}", current.digest),
                at_ms: now,
            }],
            approvals: Vec::new(),
            error: None,
            attempts: 1,
            created_at_ms: now,
            updated_at_ms: now,
            finished_at_ms: None,
            job_id: None,
        };
        self.ledger.put_promotion(record.clone()).await?;
        let delivered = self.deliver(pipeline, stage, &target, &target, &digest, &record, true).await;
        record.updated_at_ms = now_ms();
        record.finished_at_ms = Some(now_ms());
        match &delivered {
            Ok(Delivered::Deployed) => record.state = PromotionState::Succeeded,
            Ok(Delivered::DeployFailed(why)) => {
                record.state = PromotionState::DeployFailed;
                record.error = Some(why.clone());
            }
            Err(e) => {
                record.state = PromotionState::Failed;
                record.error = Some(e.message.clone());
            }
        }
        self.ledger.put_promotion(record.clone()).await?;
        match delivered {
            Err(e) => Err(e.context(format_args!("rollback of {pipeline_name}/{stage_name} to {digest} failed"))),
            Ok(Delivered::DeployFailed(why)) => Err(WorkError::permanent(format!(
                "rollback of {pipeline_name}/{stage_name} to {digest}: deploy_failed: {why}"
            ))),
            Ok(Delivered::Deployed) => Ok(record),
        }
    }

    /// A configured pipeline and stage (with its index), or a not-found error naming what is missing.
    pub(super) fn stage_of(
        &self,
        pipeline_name: &str,
        stage_name: &str,
    ) -> Result<(&Pipeline, usize, &Stage), WorkError> {
        let pipeline = self
            .config
            .pipeline(pipeline_name)
            .ok_or_else(|| WorkError::not_found(format!("no pipeline `{pipeline_name}`")))?;
        let (index, stage) = pipeline
            .stage(stage_name)
            .ok_or_else(|| WorkError::not_found(format!("pipeline `{pipeline_name}` has no stage `{stage_name}`")))?;
        Ok((pipeline, index, stage))
    }

    /// Queues a manual promotion of `reference` (tag or digest, as found in the stage's source)
    /// into `stage`.
    pub async fn promote_manually(
        &self,
        pipeline_name: &str,
        reference: &str,
        stage_name: &str,
        by: Option<&str>,
    ) -> Result<String, WorkError> {
        let (pipeline, index, _) = self.stage_of(pipeline_name, stage_name)?;
        let source = pipeline.stage_source(index);
        let (tag, digest) = match reference.parse::<Digest>() {
            Ok(d) => (None, Some(d)),
            Err(_) => {
                reference
                    .parse::<Tag>()
                    .map_err(|e| WorkError::permanent(format!("`{reference}` is neither a digest nor a tag: {e}")))?;
                (Some(reference.to_string()), None)
            }
        };
        let mut job = PromotionJob::new(
            pipeline_name,
            stage_name,
            &source.to_string(),
            PromotionRequest {
                sender: Sender::Operator,
                registry: Some(source.registry.clone()),
                repository: source.repository.clone(),
                tag,
                digest,
                build: None,
                delivery_id: Some(format!("manual-{}", now_ms())),
            },
        );
        job.trigger = Some("manual".into());
        job.triggered_by = by.map(str::to_string);
        // Each manual request is its own job: a person asking again means it.
        let key = format!("manual/{pipeline_name}/{stage_name}/{reference}/{}", now_ms());
        let enqueued = self.queue.enqueue(vec![job.to_new_job_keyed(key)]).await?;
        Ok(enqueued[0].id.clone())
    }
}

/// The entry a rollback without `--to` returns to: the newest one that is neither the current
/// digest nor a digest that was itself rolled back from (so two rollbacks in a row go further
/// back instead of flipping between two releases). `history` is newest first.
pub(super) fn previous_good(history: &[EnvironmentEntry]) -> Option<&EnvironmentEntry> {
    let current = &history.first()?.digest;
    let rolled_back_from: Vec<&str> = history
        .windows(2)
        .filter(|pair| pair[0].promotion_id.starts_with("r-"))
        .map(|pair| pair[1].digest.as_str())
        .collect();
    history.iter().find(|e| &e.digest != current && !rolled_back_from.contains(&e.digest.as_str()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(digest: &str, promotion: &str) -> EnvironmentEntry {
        EnvironmentEntry {
            digest: digest.into(),
            tag: None,
            build_number: None,
            promotion_id: promotion.into(),
            since_ms: 0,
        }
    }

    #[test]
    fn rollback_returns_to_the_newest_other_digest() {
        let history = [entry("b", "p-2"), entry("a", "p-1")];
        assert_eq!(previous_good(&history).unwrap().digest, "a");
        assert!(previous_good(&[entry("a", "p-1")]).is_none());
    }

    #[test]
    fn a_second_rollback_goes_further_back_instead_of_flipping() {
        // c was bad: rolled back to b. Rolling back again must not return to c.
        let history = [entry("b", "r-9"), entry("c", "p-3"), entry("b", "p-2"), entry("a", "p-1")];
        assert_eq!(previous_good(&history).unwrap().digest, "a");
    }
}

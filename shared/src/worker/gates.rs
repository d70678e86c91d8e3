use super::promote::is_release_semver;
use super::{GateResult, Outcome, Worker, now_ms};
use crate::config::{Gate, Pipeline, Stage, tag_matches};
use crate::error::WorkError;
use crate::job::DeploymentJob;
use crate::ledger::{DeploymentRecord, GateDecision, PromotionRecord, PromotionState};
use crate::notices::Decision;

impl Worker {
    pub(super) async fn evaluate_gate(
        &self,
        pipeline: &Pipeline,
        index: usize,
        stage: &Stage,
        record: &mut PromotionRecord,
    ) -> Result<GateResult, WorkError> {
        let now = now_ms();
        if !stage.tags.is_empty() || stage.semver {
            let tag = record.tag.clone().unwrap_or_default();
            let pattern_ok = stage.tags.is_empty() || stage.tags.iter().any(|p| tag_matches(p, &tag));
            let semver_ok = !stage.semver || is_release_semver(&tag);
            if !(pattern_ok && semver_ok) {
                let why = format!(
                    "tag `{tag}` is not allowed into {} (tags {:?}, semver {})",
                    stage.name.get_ref(),
                    stage.tags,
                    stage.semver
                );
                decide(record, "tags", "reject", why.clone());
                return Ok(GateResult::Reject(why));
            }
            decide(record, "tags", "pass", format!("tag `{tag}` allowed"));
        }
        let previous = index.checked_sub(1).map(|i| pipeline.stages[i].name.get_ref().clone());
        match stage.gate {
            Gate::Auto => {
                decide(record, "auto", "pass", "automatic".into());
                Ok(GateResult::Pass)
            }
            Gate::Approval => {
                let valid = counted_approvers(stage, record);
                let have = valid.len() as u32;
                if have >= stage.approvers {
                    let detail = format!("approved by {}", valid.join(", "));
                    released(record, "approval");
                    if decide(record, "approval", "pass", detail) {
                        self.announce(record, Decision::Approved { by: valid });
                    }
                    return Ok(GateResult::Pass);
                }
                if let Some(expiry) = stage.approval_expiry() {
                    if now - record.created_at_ms > expiry.as_millis() as i64 {
                        let after = format!("{} h", expiry.as_secs() / 3600);
                        let why = format!("not approved within {after}");
                        if decide(record, "approval", "reject", why.clone()) {
                            self.announce(record, Decision::Expired { after });
                        }
                        return Ok(GateResult::Reject(why));
                    }
                }
                // Approvers hear of a promotion once, when it starts waiting, not at each approval.
                let first_wait = !record.gates.iter().any(|d| d.gate == "approval" && d.decision == "wait");
                let why = format!("waiting for approval ({have} of {}): ferry approve {}", stage.approvers, record.id);
                decide(record, "approval", "wait", why.clone());
                if first_wait {
                    self.announce(record, Decision::Waiting { need: stage.approvers });
                }
                let expires_at = stage.approval_expiry().map(|e| record.created_at_ms + e.as_millis() as i64 + 1);
                Ok(GateResult::Wait(PromotionState::AwaitingApproval, why, expires_at))
            }
            Gate::After | Gate::Soak => {
                let previous = previous.expect("validated: after/soak need a previous stage");
                let env = self.ledger.environment(&pipeline.name.get_ref().clone(), &previous).await?;
                let Some(env) = env.filter(|e| e.current.digest == record.digest) else {
                    let why = format!("{} is not running {} (yet)", previous, record.digest);
                    let gate = if stage.gate == Gate::After { "after" } else { "soak" };
                    decide(record, gate, "wait", why.clone());
                    return Ok(GateResult::Wait(PromotionState::AwaitingGate, why, None));
                };
                if stage.gate == Gate::After {
                    let reports = self.ledger.deployments(pipeline.name.get_ref(), &previous, 20).await?;
                    let deployed = reports.iter().any(|r| {
                        r.status.eq_ignore_ascii_case("succeeded")
                            && r.at_ms >= env.current.since_ms - 1_000
                            && r.digest.as_deref().is_none_or(|d| d == record.digest)
                    });
                    if deployed {
                        released(record, "after");
                        decide(record, "after", "pass", format!("{previous} reported deployed"));
                        return Ok(GateResult::Pass);
                    }
                    let why = format!("waiting for {previous} to report deployed");
                    decide(record, "after", "wait", why.clone());
                    return Ok(GateResult::Wait(PromotionState::AwaitingGate, why, None));
                }
                let soaked_ms = now - env.current.since_ms;
                let needed_ms = stage.soak().as_millis() as i64;
                if soaked_ms >= needed_ms {
                    released(record, "soak");
                    decide(record, "soak", "pass", format!("ran {} s in {previous}", soaked_ms / 1000));
                    return Ok(GateResult::Pass);
                }
                let why = format!("soaking in {previous}: {} s to go", (needed_ms - soaked_ms + 999) / 1000);
                decide(record, "soak", "wait", why.clone());
                Ok(GateResult::Wait(PromotionState::AwaitingGate, why, Some(env.current.since_ms + needed_ms)))
            }
        }
    }

    /// Re-queues a parked promotion so its gate is evaluated again.
    pub async fn wake(&self, record: &PromotionRecord, why: &str) -> Result<String, WorkError> {
        let gone = || WorkError::permanent(format!("{}/{} is no longer configured", record.pipeline, record.stage));
        let pipeline = self.config.pipeline(&record.pipeline).ok_or_else(gone)?;
        let (index, _) = pipeline.stage(&record.stage).ok_or_else(gone)?;
        let mut job = self.job_for(pipeline, index, record, why.to_string(), None);
        job.trigger = Some(record.trigger.clone());
        job.promotion = Some(record.id.clone());
        // Never collapse into the job that parked it.
        let key = format!("wake/{}/{}/{}", record.id, record.approvals.len(), now_ms());
        let enqueued = self.queue.enqueue(vec![job.to_new_job_keyed(key)]).await?;
        Ok(enqueued[0].id.clone())
    }

    pub(super) async fn deployment_reported(&self, job: &DeploymentJob) -> Result<Outcome, WorkError> {
        let current = self.ledger.environment(&job.pipeline, &job.stage).await?;
        // A report naming a build concerns the digest that build produced in this stage; one
        // that cannot be tied to a digest here opens nothing, so it is not recorded.
        let digest = match &job.build_number {
            None => None,
            Some(build) => {
                let history = self.ledger.history(&job.pipeline, Some(&job.stage), 200).await?;
                let produced = history.into_iter().find(|r| {
                    r.build_number.as_deref() == Some(build.as_str()) && r.state == PromotionState::Succeeded
                });
                let Some(produced) = produced else {
                    let why = format!(
                        "{} {}: deployment report about build {} ignored: no promotion of that build in this stage",
                        job.pipeline,
                        job.stage,
                        crate::escape::escape_control(build)
                    );
                    tracing::warn!("{why}");
                    return Ok(Outcome::Done(why));
                };
                Some(produced.digest)
            }
        };
        self.ledger
            .record_deployment(DeploymentRecord {
                pipeline: job.pipeline.clone(),
                stage: job.stage.clone(),
                status: job.report.status.clone(),
                digest: digest.clone(),
                reporter: "azure-devops".into(),
                detail: job.report.release.clone(),
                at_ms: now_ms(),
            })
            .await?;
        if job.report.status.eq_ignore_ascii_case("succeeded") {
            // A later stage waiting for this one to be deployed may go now.
            for record in self.ledger.parked(Some(&job.pipeline)).await? {
                let waits_on_this = record.state == PromotionState::AwaitingGate
                    && current.as_ref().is_some_and(|c| c.current.digest == record.digest)
                    && digest.as_ref().is_none_or(|d| *d == record.digest);
                if waits_on_this {
                    self.wake(&record, "gate-passed").await?;
                }
            }
        }
        Ok(Outcome::Done(format!("{} {} reported {}", job.pipeline, job.stage, job.report.status)))
    }

    /// Wakes parked promotions whose gate may have opened with time (soak) or expired (approval).
    pub async fn sweep(&self) -> Result<(), WorkError> {
        self.reconcile_dead_letters().await?;
        let now = now_ms();
        for record in self.ledger.parked(None).await? {
            let Some(pipeline) = self.config.pipeline(&record.pipeline) else { continue };
            let Some((_, stage)) = pipeline.stage(&record.stage) else { continue };
            let due = match stage.gate {
                Gate::Soak => true,
                Gate::Approval => {
                    stage.approval_expiry().is_some_and(|e| now - record.created_at_ms > e.as_millis() as i64)
                }
                _ => false,
            };
            if due {
                self.wake(&record, "sweep").await?;
            }
        }
        Ok(())
    }
}

/// The people whose approvals count for `record` in `stage`: distinct persons (names compared in
/// canonical form), allowed by the stage, and never the person who triggered the promotion.
pub fn counted_approvers(stage: &Stage, record: &PromotionRecord) -> Vec<String> {
    let trigger = record.triggered_by.as_deref().and_then(|t| crate::person::canonical(t).ok());
    let mut people: Vec<String> = Vec::new();
    for approval in &record.approvals {
        let Ok(person) = crate::person::canonical(&approval.by) else { continue };
        if Some(&person) != trigger.as_ref() && stage.may_approve(&person) && !people.contains(&person) {
            people.push(person);
        }
    }
    people
}

/// `record`, parked at `gate`, passes it now: observes how long it waited there.
fn released(record: &PromotionRecord, gate: &str) {
    if let Some(at_ms) = parked_since(record, gate) {
        let waited = std::time::Duration::from_millis(now_ms().saturating_sub(at_ms).max(0) as u64);
        crate::metrics::gate_wait(&record.pipeline, &record.stage, gate, waited);
    }
}

/// When `record` parked at `gate`: the first `wait` of its latest run of decisions there (the
/// `tags` decisions each evaluation repeats, and the `approve` entries approvals add, do not end
/// the run). `None` when that run has no wait: it never parked (a first evaluation that passes)
/// or already passed (a retry after a failed copy), so there is no wait to observe.
fn parked_since(record: &PromotionRecord, gate: &str) -> Option<i64> {
    let mut parked_at = None;
    for decision in record.gates.iter().rev().filter(|d| d.gate != "tags") {
        match decision.decision.as_str() {
            _ if decision.gate != gate => break,
            "wait" => parked_at = Some(decision.at_ms),
            "pass" | "reject" => break,
            _ => {}
        }
    }
    parked_at
}

/// Records a gate decision, unless it repeats the last one (a re-evaluated parked promotion);
/// says whether it was new.
pub(super) fn decide(record: &mut PromotionRecord, gate: &str, decision: &str, detail: String) -> bool {
    let repeated = record.gates.last().is_some_and(|d| d.gate == gate && d.decision == decision && d.detail == detail);
    if !repeated {
        record.gates.push(GateDecision { gate: gate.into(), decision: decision.into(), detail, at_ms: now_ms() });
    }
    !repeated
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(decisions: &[(&str, &str, i64)]) -> PromotionRecord {
        let gates = decisions
            .iter()
            .map(|(gate, decision, at_ms)| GateDecision {
                gate: gate.to_string(),
                decision: decision.to_string(),
                detail: String::new(),
                at_ms: *at_ms,
            })
            .collect();
        PromotionRecord { gates, ..PromotionRecord::sample("shop", "prod", PromotionState::AwaitingApproval) }
    }

    #[test]
    fn parked_since_is_the_first_wait_of_the_latest_run_at_that_gate() {
        let waited =
            record(&[("tags", "pass", 1), ("approval", "wait", 10), ("tags", "pass", 20), ("approval", "wait", 30)]);
        assert_eq!(parked_since(&waited, "approval"), Some(10));
        assert_eq!(parked_since(&waited, "soak"), None, "parked at another gate");
        assert_eq!(parked_since(&record(&[("tags", "pass", 1)]), "approval"), None, "never parked");
        let passed = record(&[("approval", "wait", 10), ("approval", "pass", 40), ("tags", "pass", 50)]);
        assert_eq!(parked_since(&passed, "approval"), None, "a retry after the pass is not a second release");
        let soak = record(&[("soak", "wait", 5), ("soak", "wait", 9)]);
        assert_eq!(parked_since(&soak, "soak"), Some(5));
        // Approvals recorded while it waits (`ferry approve` adds them) do not end the wait.
        let approved = record(&[
            ("approval", "wait", 10),
            ("approval", "approve", 20),
            ("approval", "wait", 25),
            ("approval", "approve", 30),
            ("tags", "pass", 31),
        ]);
        assert_eq!(parked_since(&approved, "approval"), Some(10));
        let earlier = record(&[("approval", "wait", 10), ("approval", "pass", 20), ("approval", "wait", 30)]);
        assert_eq!(parked_since(&earlier, "approval"), Some(30), "only the latest run counts");
    }
}

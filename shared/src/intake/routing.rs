//! What intake knows of the configuration, built once at start: each sender's secret and scope,
//! each pipeline's source, tag filter and Azure DevOps bindings, and the replay guard. Turns a
//! parsed event into queue jobs, or says why it starts nothing.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;

use crate::config::{Config, RepoName, render_build_tag, tag_matches};
use crate::escape::escape_control;
use crate::intake::azure_devops::{BuildCompleted, DeploymentCompleted};
#[cfg(doc)]
use crate::intake::replay::SqliteReplayGuard;
use crate::intake::replay::{MemoryReplayGuard, ReplayGuard};
use crate::intake::{Build, PromotionRequest, Sender};
use crate::job::{DeploymentJob, PromotionJob, QueuedJob};
use crate::queue::{JobQueue, NewJob};
use crate::registry::auth::Secret;

/// What the router needs, built once at start.
pub struct Intake {
    pub(crate) senders: HashMap<Sender, SenderAuth>,
    pipelines: Vec<PipelineMatch>,
    pub(crate) queue: Arc<dyn JobQueue>,
    pub(crate) max_clock_skew: Duration,
    pub(crate) body_limit: usize,
    /// Signatures already accepted, until they fall out of the clock-skew window.
    pub(crate) replay: Arc<dyn ReplayGuard>,
}

pub(crate) struct SenderAuth {
    pub(crate) secret: Secret,
    pub(crate) header: String,
    /// Basic auth (Azure DevOps): the expected `Authorization` value.
    pub(crate) basic: Option<String>,
    pub(crate) scope: SenderScope,
}

/// What a sender may start: `[sources.NAME] registries` / `pipelines` (`None`: no limit).
#[derive(Default)]
pub(crate) struct SenderScope {
    name: String,
    registries: Option<Vec<String>>,
    pipelines: Option<Vec<String>>,
}

impl SenderScope {
    /// Why this sender may not start `pipeline`, if it may not.
    fn refuses(&self, pipeline: &PipelineMatch) -> Option<String> {
        if let Some(registries) = &self.registries {
            if !registries.contains(&pipeline.source.registry) {
                return Some(format!(
                    "source `{}` may not start pipelines of registry {} (sources.{}.registries)",
                    self.name, pipeline.source.registry, self.name
                ));
            }
        }
        if let Some(pipelines) = &self.pipelines {
            if !pipelines.contains(&pipeline.name) {
                return Some(format!(
                    "source `{}` may not start pipeline `{}` (sources.{}.pipelines)",
                    self.name, pipeline.name, self.name
                ));
            }
        }
        None
    }
}

struct PipelineMatch {
    name: String,
    source: RepoName,
    /// `source` as text, as every job of this pipeline carries it.
    source_text: String,
    tags: Vec<String>,
    first_stage: String,
    /// Azure DevOps build definition (name or id) and tag template.
    build: Option<(String, String)>,
    /// Azure DevOps release definition (name or id) and project whose reports concern this
    /// pipeline; without one, release reports are ignored for it.
    release: Option<ReleaseBinding>,
    /// (stage, Azure DevOps environment name) pairs.
    environments: Vec<(String, String)>,
}

impl Intake {
    /// Resolves every configured sender's secret; a missing one is an error naming it.
    pub fn new(config: &Config, queue: Arc<dyn JobQueue>) -> Result<Self, String> {
        let mut senders = HashMap::new();
        for name in config.sources.keys() {
            let sender = crate::config::sender_named(name).expect("validated sender name");
            if let Some((secret, header)) = config.source_secret(sender)? {
                let username = config.sources[name].get_ref().username.clone();
                let basic = username.map(|user| {
                    format!(
                        "Basic {}",
                        base64::engine::general_purpose::STANDARD.encode(format!("{user}:{}", secret.expose()))
                    )
                });
                let source = config.sources[name].get_ref();
                let scope = SenderScope {
                    name: name.clone(),
                    registries: source.registries.clone(),
                    pipelines: source.pipelines.clone(),
                };
                senders.insert(
                    sender,
                    SenderAuth { secret, header: header.unwrap_or_else(|| "authorization".into()), basic, scope },
                );
            }
        }
        let pipelines = config
            .pipelines
            .iter()
            .map(|p| {
                let source = RepoName::parse(p.source.get_ref()).expect("validated source");
                PipelineMatch {
                    name: p.name.get_ref().clone(),
                    source_text: source.to_string(),
                    source,
                    tags: p.tags.clone(),
                    first_stage: p.stages[0].name.get_ref().clone(),
                    build: p.azure_devops.as_ref().and_then(|a| {
                        a.build_definition.as_ref().map(|definition| (definition.clone(), a.tag.get_ref().clone()))
                    }),
                    release: p.azure_devops.as_ref().and_then(|a| {
                        a.release_definition.as_ref().map(|definition| ReleaseBinding {
                            definition: definition.clone(),
                            project: a.project.clone(),
                        })
                    }),
                    environments: p
                        .stages
                        .iter()
                        .map(|st| {
                            let env = st.azure_devops_environment.clone().unwrap_or_else(|| st.name.get_ref().clone());
                            (st.name.get_ref().clone(), env)
                        })
                        .collect(),
                }
            })
            .collect();
        let window = Self::replay_window(config);
        Ok(Intake {
            senders,
            pipelines,
            queue,
            max_clock_skew: Duration::from_secs(config.server.max_clock_skew_secs),
            body_limit: config.server.body_limit,
            replay: Arc::new(MemoryReplayGuard::new(window)),
        })
    }

    /// Keeps accepted signatures in `guard` (e.g. a [`SqliteReplayGuard`] in `data_dir`, so
    /// that a restart does not forget them) instead of in this process's memory only.
    pub fn with_replay_guard(mut self, guard: Arc<dyn ReplayGuard>) -> Self {
        self.replay = guard;
        self
    }

    /// How long a signed sender's signature is remembered: twice the clock-skew window, after
    /// which its timestamp is refused anyway.
    pub fn replay_window(config: &Config) -> Duration {
        Duration::from_secs(config.server.max_clock_skew_secs.saturating_mul(2))
    }

    /// The jobs a request starts: one per matching pipeline this sender may start, at its first
    /// stage. When none matches, why (built only then: this is the hot path).
    pub(crate) fn jobs_for(
        &self,
        scope: &SenderScope,
        request: PromotionRequest,
    ) -> Result<Vec<(NewJob, QueuedJob)>, String> {
        let mut matching: Vec<&PipelineMatch> = self
            .pipelines
            .iter()
            .filter(|pipeline| {
                pipeline.takes_repository(&request)
                    && pipeline.takes_tag(request.tag.as_deref())
                    && scope.refuses(pipeline).is_none()
            })
            .collect();
        // The last match takes the request itself; only further ones need a copy.
        let Some(last) = matching.pop() else {
            return Err(self.unmatched_reason(scope, &request));
        };
        let mut jobs: Vec<_> = matching.into_iter().map(|pipeline| promotion(pipeline, request.clone())).collect();
        jobs.push(promotion(last, request));
        Ok(jobs)
    }

    /// Why no pipeline takes `request`: no pipeline of that repository, or which filter (tag,
    /// sender scope) refused it in each pipeline that has it.
    fn unmatched_reason(&self, scope: &SenderScope, request: &PromotionRequest) -> String {
        let repository = format!("{}/{}", request.registry.as_deref().unwrap_or("?"), request.repository);
        let refusals: Vec<String> = self
            .pipelines
            .iter()
            .filter(|pipeline| pipeline.takes_repository(request))
            .map(|pipeline| {
                if let Some(why) = scope.refuses(pipeline) {
                    return why;
                }
                match request.tag.as_deref() {
                    None => format!(
                        "pipeline `{}` promotes only tags matching {:?} and the push names no tag (pushed by digest)",
                        pipeline.name, pipeline.tags
                    ),
                    Some(tag) => {
                        format!("pipeline `{}` does not take tag `{tag}` (tags = {:?})", pipeline.name, pipeline.tags)
                    }
                }
            })
            .collect();
        if !refusals.is_empty() {
            return format!("{repository} was refused: {}", refusals.join("; "));
        }
        let mut reason = format!("no pipeline matches {repository}");
        let hub = request.registry.as_deref() == Some(crate::registry::reference::DOCKER_HUB);
        if request.sender == Sender::Generic && hub {
            reason.push_str(
                "; a generic `repository` must include the registry host (e.g. `registry.example.com/shop/api`): \
                 without one it names Docker Hub",
            );
        }
        reason
    }

    /// A finished build promotes the image its pipeline's tag template names.
    pub(crate) fn jobs_for_build(
        &self,
        scope: &SenderScope,
        build: &BuildCompleted,
    ) -> Result<Vec<(NewJob, QueuedJob)>, String> {
        let mut jobs = Vec::new();
        for pipeline in &self.pipelines {
            let Some((definition, template)) = &pipeline.build else { continue };
            if scope.refuses(pipeline).is_some() {
                continue;
            }
            let matches = build.definition_name.as_deref() == Some(definition.as_str())
                || build.definition_id.as_deref() == Some(definition.as_str());
            if !matches {
                continue;
            }
            let tag = render_build_tag(template, &build.build_id, build.build_number.as_deref());
            if tag.parse::<crate::registry::Tag>().is_err() {
                return Err(format!("build {} renders the tag `{tag}`, which is not a valid tag", build.build_id));
            }
            let request = PromotionRequest {
                sender: Sender::AzureDevops,
                registry: Some(pipeline.source.registry.clone()),
                repository: pipeline.source.repository.clone(),
                tag: Some(tag),
                digest: None,
                build: Some(Build { id: Some(build.build_id.clone()), number: build.build_number.clone() }),
                delivery_id: build.delivery_id.clone(),
            };
            jobs.push(promotion(pipeline, request));
        }
        Ok(jobs)
    }

    /// A deployment report concerns the stages bound to its environment in the pipelines bound
    /// to its release definition (and project), and, when it names builds, only the digest of
    /// this pipeline's build. The reason comes back when it concerns no pipeline.
    pub(crate) fn jobs_for_deployment(
        &self,
        scope: &SenderScope,
        report: &DeploymentCompleted,
    ) -> Result<Vec<(NewJob, QueuedJob)>, String> {
        let mut jobs = Vec::new();
        let mut refused = Vec::new();
        for pipeline in &self.pipelines {
            let stages: Vec<&String> = pipeline
                .environments
                .iter()
                .filter(|(_, environment)| environment.eq_ignore_ascii_case(&report.environment))
                .map(|(stage, _)| stage)
                .collect();
            if stages.is_empty() {
                continue;
            }
            let bound = match &pipeline.release {
                _ if let Some(why) = scope.refuses(pipeline) => Err(why),
                None => Err(format!("pipeline `{}` has no azure_devops.release_definition", pipeline.name)),
                Some(binding) => binding.accepts(report).map_err(|why| format!("pipeline `{}` {why}", pipeline.name)),
            };
            let build_number = bound.and_then(|()| pipeline.deployed_build(report));
            let build_number = match build_number {
                Ok(build_number) => build_number,
                Err(why) => {
                    refused.push(why);
                    continue;
                }
            };
            for stage in stages {
                let job = QueuedJob::Deployment(DeploymentJob {
                    pipeline: pipeline.name.clone(),
                    stage: stage.clone(),
                    report: report.clone(),
                    build_number: build_number.clone(),
                });
                let event = report
                    .delivery_id
                    .clone()
                    .unwrap_or_else(|| format!("{}:{}", report.release.as_deref().unwrap_or(""), report.status));
                let dedup_key = format!("deployment/{}/{stage}/{event}", pipeline.name);
                jobs.push((NewJob::new(dedup_key, &job).in_stage(&pipeline.name, stage), job));
            }
        }
        if !jobs.is_empty() {
            return Ok(jobs);
        }
        let environment = escape_control(&report.environment);
        if refused.is_empty() {
            return Err(format!("no stage is bound to environment `{environment}`"));
        }
        if report.release_definition_name.is_none() && report.release_definition_id.is_none() {
            return Err(format!(
                "a deployment to `{environment}` that names no release definition cannot be tied to a pipeline"
            ));
        }
        Err(format!(
            "a deployment to `{environment}` of release definition `{}` (project `{}`) concerns no pipeline: {}",
            escape_control(
                report.release_definition_name.as_deref().or(report.release_definition_id.as_deref()).unwrap_or("?")
            ),
            escape_control(report.project.as_deref().unwrap_or("?")),
            refused.join("; ")
        ))
    }
}

/// The release definition and project a pipeline takes deployment reports from.
struct ReleaseBinding {
    /// Name or id.
    definition: String,
    /// Exact project name, when the pipeline names one.
    project: Option<String>,
}

impl ReleaseBinding {
    fn accepts(&self, report: &DeploymentCompleted) -> Result<(), String> {
        let definition = Some(self.definition.as_str());
        if report.release_definition_name.as_deref() != definition
            && report.release_definition_id.as_deref() != definition
        {
            return Err(format!("takes reports of release definition `{}` only", self.definition));
        }
        if let Some(project) = &self.project {
            if report.project.as_deref() != Some(project.as_str()) {
                return Err(format!("takes reports of project `{project}` only"));
            }
        }
        Ok(())
    }
}

impl PipelineMatch {
    fn takes_repository(&self, request: &PromotionRequest) -> bool {
        request.registry.as_deref().is_none_or(|r| r == self.source.registry)
            && request.repository == self.source.repository
    }

    fn takes_tag(&self, tag: Option<&str>) -> bool {
        self.tags.is_empty() || tag.is_some_and(|t| self.tags.iter().any(|p| tag_matches(p, t)))
    }

    /// The build number of this pipeline's build among those the release deployed: `None` when
    /// the release names no build; an error when it names builds none of which is this
    /// pipeline's (or several, and the pipeline has no build_definition to choose by).
    fn deployed_build(&self, report: &DeploymentCompleted) -> Result<Option<String>, String> {
        if report.builds.is_empty() {
            return Ok(None);
        }
        let chosen = match &self.build {
            Some((definition, _)) => report.builds.iter().find(|b| {
                b.definition_name.as_deref() == Some(definition.as_str())
                    || b.definition_id.as_deref() == Some(definition.as_str())
            }),
            None if report.builds.len() == 1 => report.builds.first(),
            None => {
                return Err(format!(
                    "pipeline `{}`: the release deployed several builds; set azure_devops.build_definition to say which is this pipeline's",
                    self.name
                ));
            }
        };
        chosen
            .map(|b| Some(b.build_number.clone()))
            .ok_or_else(|| format!("pipeline `{}`: the release deployed no build of its build definition", self.name))
    }
}

fn promotion(pipeline: &PipelineMatch, request: PromotionRequest) -> (NewJob, QueuedJob) {
    let job = PromotionJob::new(&pipeline.name, &pipeline.first_stage, &pipeline.source_text, request);
    (job.to_new_job(), QueuedJob::Promote(job))
}

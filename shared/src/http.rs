//! The one axum `Router` that serves every intake route, under `ferry serve` and under
//! `lambda_http` alike.
//!
//! Each request: body limit (413) → authenticate the sender on the raw bytes (401, nothing
//! queued) → content type (415) → parse (400, saying what is wrong) → match pipelines (200 with
//! a reason when none match) → enqueue with dedup keys → 202 with the job ids only once the queue
//! has durably accepted them (503 when it cannot, so the sender retries).

use std::collections::HashMap;
use std::collections::hash_map::RandomState;
use std::hash::BuildHasher;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use axum::Router;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde_json::json;

use base64::Engine as _;

use crate::config::{Config, RepoName, render_build_tag, tag_matches};
use crate::intake::azure_devops::{BuildCompleted, DeploymentCompleted};
use crate::intake::replay::SeenSignatures;
use crate::intake::{self, Build, Parsed, PromotionRequest, Sender, verify};
pub use crate::job::{DeploymentJob, PromotionJob, QueuedJob, dedup_key};
use crate::queue::{JobQueue, NewJob, QueueError};
use crate::registry::auth::Secret;
use crate::smooth::{self, ChunkedQueue};

/// Header names of Ferry's generic sender format.
pub const TIMESTAMP_HEADER: &str = "x-ferry-timestamp";
pub const SIGNATURE_HEADER: &str = "x-ferry-signature";

/// What the router needs, built once at start.
pub struct Intake {
    senders: HashMap<Sender, SenderAuth>,
    pipelines: Vec<PipelineMatch>,
    queue: Arc<dyn JobQueue>,
    max_clock_skew: Duration,
    body_limit: usize,
    /// Generic-sender signatures already accepted, until they fall out of the clock-skew window.
    seen_signatures: ReplayGuard,
    /// The same, shared with every other instance (DynamoDB on AWS); `None` for one process.
    shared_signatures: Option<Arc<dyn SeenSignatures>>,
}

/// Generic-sender signatures already accepted, forgotten once their timestamps would be refused
/// anyway (twice the clock-skew window): O(1) per request. Split into shards by hash, each with
/// its own lock and its own growth: under a burst one big map would double in a single step and
/// hold every generic request up behind that lock.
struct ReplayGuard {
    hasher: RandomState,
    shards: Vec<Mutex<ReplayShard>>,
}

#[derive(Default)]
struct ReplayShard {
    /// Signature hash → when it was accepted (the newest time, if forgotten and accepted again).
    seen: HashMap<u64, Instant>,
    order: ChunkedQueue<(Instant, u64)>,
}

impl Default for ReplayGuard {
    fn default() -> Self {
        let shards = (0..smooth::SHARDS).map(|_| Mutex::default()).collect();
        Self { hasher: RandomState::new(), shards }
    }
}

impl ReplayGuard {
    /// Records `signature`; `false` when it was already seen (a replay).
    fn remember(&self, signature: &str, now: Instant, window: Duration) -> bool {
        let hash = self.hasher.hash_one(signature);
        let mut shard = self.shard(hash);
        while let Some((at, old)) = shard.order.front() {
            if now.duration_since(at) < window {
                break;
            }
            shard.order.pop_front();
            if shard.seen.get(&old) == Some(&at) {
                shard.seen.remove(&old);
            }
        }
        if shard.seen.contains_key(&hash) {
            return false;
        }
        shard.seen.insert(hash, now);
        shard.order.push_back((now, hash));
        true
    }

    /// Forgets a signature whose request was not queued, so the sender may retry it.
    fn forget(&self, signature: &str) {
        let hash = self.hasher.hash_one(signature);
        self.shard(hash).seen.remove(&hash);
    }

    fn shard(&self, hash: u64) -> std::sync::MutexGuard<'_, ReplayShard> {
        self.shards[smooth::shard_of(hash)].lock().expect("not poisoned")
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.shards.iter().map(|shard| shard.lock().expect("not poisoned").seen.len()).sum()
    }
}

struct SenderAuth {
    secret: Secret,
    header: String,
    /// Basic auth (Azure DevOps): the expected `Authorization` value.
    basic: Option<String>,
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
                senders.insert(
                    sender,
                    SenderAuth { secret, header: header.unwrap_or_else(|| "authorization".into()), basic },
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
                    build: p.azure_devops.as_ref().map(|a| (a.build_definition.clone(), a.tag.get_ref().clone())),
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
        Ok(Intake {
            senders,
            pipelines,
            queue,
            max_clock_skew: Duration::from_secs(config.server.max_clock_skew_secs),
            body_limit: config.server.body_limit,
            seen_signatures: ReplayGuard::default(),
            shared_signatures: None,
        })
    }

    /// Also refuses generic-sender replays that another instance accepted (Lambda: each
    /// instance has its own memory).
    pub fn with_shared_replay_guard(mut self, signatures: Option<Arc<dyn SeenSignatures>>) -> Self {
        self.shared_signatures = signatures;
        self
    }

    /// The jobs a request starts: one per matching pipeline, at its first stage. A request no
    /// pipeline matches comes back, for the reply to name it.
    fn jobs_for(&self, request: PromotionRequest) -> Result<Vec<(NewJob, QueuedJob)>, Box<PromotionRequest>> {
        let mut matching: Vec<&PipelineMatch> = self
            .pipelines
            .iter()
            .filter(|pipeline| {
                let registry_matches = request.registry.as_deref().is_none_or(|r| r == pipeline.source.registry);
                let tag_ok = pipeline.tags.is_empty()
                    || request.tag.as_deref().is_some_and(|t| pipeline.tags.iter().any(|p| tag_matches(p, t)));
                registry_matches && request.repository == pipeline.source.repository && tag_ok
            })
            .collect();
        // The last match takes the request itself; only further ones need a copy.
        let Some(last) = matching.pop() else {
            return Err(Box::new(request));
        };
        let mut jobs: Vec<_> = matching.into_iter().map(|pipeline| promotion(pipeline, request.clone())).collect();
        jobs.push(promotion(last, request));
        Ok(jobs)
    }

    /// A finished build promotes the image its pipeline's tag template names.
    fn jobs_for_build(&self, build: &BuildCompleted) -> Result<Vec<(NewJob, QueuedJob)>, String> {
        let mut jobs = Vec::new();
        for pipeline in &self.pipelines {
            let Some((definition, template)) = &pipeline.build else { continue };
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

    /// A deployment report concerns every stage bound to its environment.
    fn jobs_for_deployment(&self, report: &DeploymentCompleted) -> Vec<(NewJob, QueuedJob)> {
        let mut jobs = Vec::new();
        for pipeline in &self.pipelines {
            for (stage, environment) in &pipeline.environments {
                if !environment.eq_ignore_ascii_case(&report.environment) {
                    continue;
                }
                let job = QueuedJob::Deployment(DeploymentJob {
                    pipeline: pipeline.name.clone(),
                    stage: stage.clone(),
                    report: report.clone(),
                });
                let event = report
                    .delivery_id
                    .clone()
                    .unwrap_or_else(|| format!("{}:{}", report.release.as_deref().unwrap_or(""), report.status));
                let dedup_key = format!("deployment/{}/{stage}/{event}", pipeline.name);
                jobs.push((NewJob::new(dedup_key, &job).in_stage(&pipeline.name, stage), job));
            }
        }
        jobs
    }
}

fn promotion(pipeline: &PipelineMatch, request: PromotionRequest) -> (NewJob, QueuedJob) {
    let job = PromotionJob::new(&pipeline.name, &pipeline.first_stage, &pipeline.source_text, request);
    (job.to_new_job(), QueuedJob::Promote(job))
}

/// The router: every intake route plus `GET /healthz`.
pub fn router(intake: Arc<Intake>) -> Router {
    let limit = intake.body_limit;
    Router::new()
        .route("/healthz", get(healthz))
        .route("/hooks/azure-devops", post(|s, h, b| hook(s, Sender::AzureDevops, None, h, b)))
        .route("/hooks/acr", post(|s, h, b| hook(s, Sender::Acr, None, h, b)))
        .route("/hooks/github", post(|s, h, b| hook(s, Sender::Github, None, h, b)))
        .route("/hooks/distribution", post(|s, h, b| hook(s, Sender::Distribution, None, h, b)))
        .route("/hooks/harbor", post(|s, h, b| hook(s, Sender::Harbor, None, h, b)))
        .route("/hooks/generic", post(|s, h, b| hook(s, Sender::Generic, None, h, b)))
        .route(
            "/hooks/dockerhub/{token}",
            post(|s, Path(token): Path<String>, h, b| hook(s, Sender::Dockerhub, Some(token), h, b)),
        )
        .route(
            "/hooks/quay/{token}",
            post(|s, Path(token): Path<String>, h, b| hook(s, Sender::Quay, Some(token), h, b)),
        )
        .layer(DefaultBodyLimit::max(limit))
        .with_state(intake)
}

async fn healthz(State(intake): State<Arc<Intake>>) -> Response {
    match intake.queue.check().await {
        Ok(()) => (StatusCode::OK, axum::Json(json!({"status": "ok"}))).into_response(),
        Err(e) => reply(StatusCode::SERVICE_UNAVAILABLE, json!({"status": "unavailable", "error": e.to_string()})),
    }
}

/// The 202 body, written straight from the jobs (no intermediate `Value`: this is the hot path).
#[derive(serde::Serialize)]
struct Queued<'a> {
    status: &'static str,
    jobs: Vec<QueuedReply<'a>>,
}

#[derive(serde::Serialize)]
struct QueuedReply<'a> {
    id: &'a str,
    pipeline: &'a str,
    stage: &'a str,
    /// `null` when the queue cannot tell (SQS).
    duplicate: Option<bool>,
}

fn reply(status: StatusCode, body: serde_json::Value) -> Response {
    (status, axum::Json(body)).into_response()
}

fn error(status: StatusCode, message: impl Into<String>) -> Response {
    reply(status, json!({ "error": message.into() }))
}

fn header<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

async fn hook(
    State(intake): State<Arc<Intake>>,
    sender: Sender,
    url_token: Option<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let Some(auth) = intake.senders.get(&sender) else {
        tracing::warn!(sender = sender.as_str(), "webhook for a sender that is not configured");
        return error(
            StatusCode::UNAUTHORIZED,
            format!("sender `{}` is not configured on this Ferry", sender.as_str()),
        );
    };
    if let Err(why) = authenticate(&intake, sender, auth, url_token.as_deref(), &headers, &body) {
        tracing::warn!(sender = sender.as_str(), reason = why, "webhook refused");
        return error(StatusCode::UNAUTHORIZED, why);
    }
    if sender == Sender::Generic
        && let Some(shared) = &intake.shared_signatures
        && let Err(refusal) = first_use_everywhere(&intake, shared.as_ref(), &headers).await
    {
        return refusal;
    }
    let content_type = header(&headers, header::CONTENT_TYPE.as_str()).unwrap_or("");
    let media = content_type.split(';').next().unwrap_or("").trim().to_ascii_lowercase();
    let json_like = media == "application/json" || (media.starts_with("application/") && media.ends_with("+json"));
    if !json_like {
        return error(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            format!("expected a JSON body (Content-Type application/json), got `{content_type}`"),
        );
    }
    let delivery = header(&headers, "x-github-delivery");
    let parsed = match intake::parse(sender, &body, delivery) {
        Ok(parsed) => parsed,
        Err(e) => return error(StatusCode::BAD_REQUEST, e.to_string()),
    };
    let (matched, unmatched_reason): (Vec<(NewJob, QueuedJob)>, String) = match parsed {
        Parsed::Ignored(reason) => return reply(StatusCode::OK, json!({ "status": "ignored", "reason": reason })),
        Parsed::Requests(requests) => {
            let mut jobs = Vec::new();
            let mut unmatched = Vec::new();
            for request in requests {
                match intake.jobs_for(request) {
                    Ok(started) => jobs.extend(started),
                    Err(request) => {
                        unmatched.push(format!(
                            "{}/{}",
                            request.registry.as_deref().unwrap_or("?"),
                            request.repository
                        ));
                    }
                }
            }
            let reason =
                if jobs.is_empty() { format!("no pipeline matches {}", unmatched.join(", ")) } else { String::new() };
            (jobs, reason)
        }
        Parsed::Build(build) => match intake.jobs_for_build(&build) {
            Ok(jobs) => {
                let definition = build.definition_name.or(build.definition_id).unwrap_or_else(|| "?".into());
                (jobs, format!("no pipeline is bound to build definition `{definition}`"))
            }
            Err(why) => return error(StatusCode::BAD_REQUEST, why),
        },
        Parsed::Deployment(report) => {
            let reason = format!("no stage is bound to environment `{}`", report.environment);
            (intake.jobs_for_deployment(&report), reason)
        }
    };
    if matched.is_empty() {
        return reply(StatusCode::OK, json!({ "status": "ignored", "reason": unmatched_reason }));
    }
    let (new_jobs, jobs): (Vec<NewJob>, Vec<QueuedJob>) = matched.into_iter().unzip();
    match intake.queue.enqueue(new_jobs).await {
        Ok(enqueued) => {
            let listed: Vec<QueuedReply<'_>> = enqueued
                .iter()
                .zip(&jobs)
                .map(|(e, job)| {
                    let (pipeline, stage) = job.pipeline_and_stage();
                    let kind = match job {
                        QueuedJob::Promote(_) => "promotion",
                        QueuedJob::Deployment(_) => "deployment report",
                    };
                    tracing::info!(job.id = %e.id, pipeline, stage, duplicate = ?e.duplicate, sender = sender.as_str(), "{kind} queued");
                    QueuedReply { id: &e.id, pipeline, stage, duplicate: e.duplicate }
                })
                .collect();
            (StatusCode::ACCEPTED, axum::Json(Queued { status: "queued", jobs: listed })).into_response()
        }
        Err(QueueError::Invalid(why)) => error(StatusCode::BAD_REQUEST, why),
        Err(e) => {
            // Nothing was queued: the sender may retry this very request.
            if let Some(signature) = header(&headers, SIGNATURE_HEADER) {
                intake.seen_signatures.forget(signature.trim());
                if sender == Sender::Generic
                    && let Some(shared) = &intake.shared_signatures
                    && let Err(e) = shared.forget(signature.trim()).await
                {
                    // Its entry expires with the clock-skew window; until then a retry is refused.
                    tracing::warn!(error = %e, "could not forget the signature of an unqueued request");
                }
            }
            tracing::error!(error = %e, "queue refused a promotion; the sender will retry");
            error(StatusCode::SERVICE_UNAVAILABLE, format!("{e}; retry later"))
        }
    }
}

fn authenticate(
    intake: &Intake,
    sender: Sender,
    auth: &SenderAuth,
    url_token: Option<&str>,
    headers: &HeaderMap,
    body: &[u8],
) -> Result<(), &'static str> {
    let secret = auth.secret.expose().as_bytes();
    match sender {
        Sender::Dockerhub | Sender::Quay => {
            let token = url_token.unwrap_or_default();
            verify::secrets_equal(token.as_bytes(), secret).then_some(()).ok_or("invalid URL token")
        }
        Sender::Github => {
            let signature = header(headers, "x-hub-signature-256").ok_or("missing X-Hub-Signature-256")?;
            verify::github_signature_valid(secret, body, signature).then_some(()).ok_or("invalid X-Hub-Signature-256")
        }
        Sender::Generic => {
            let timestamp = header(headers, TIMESTAMP_HEADER).ok_or("missing X-Ferry-Timestamp")?;
            let signature = header(headers, SIGNATURE_HEADER).ok_or("missing X-Ferry-Signature")?;
            if !verify::generic_signature_valid(secret, timestamp, body, signature) {
                return Err("invalid X-Ferry-Signature");
            }
            let sent: u64 = timestamp.trim().parse().map_err(|_| "X-Ferry-Timestamp must be Unix seconds")?;
            let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default().as_secs();
            if sent.abs_diff(now) > intake.max_clock_skew.as_secs() {
                return Err("X-Ferry-Timestamp is outside the allowed clock skew");
            }
            remember_signature(intake, signature)
                .then_some(())
                .ok_or("replayed request: this signature was already accepted")
        }
        Sender::AzureDevops if auth.basic.is_some() => {
            let expected = auth.basic.as_deref().unwrap_or_default();
            let given = header(headers, "authorization").ok_or("missing basic auth")?;
            verify::secrets_equal(given.as_bytes(), expected.as_bytes()).then_some(()).ok_or("invalid basic auth")
        }
        Sender::Operator => Err("not a webhook sender"),
        Sender::Acr | Sender::AzureDevops | Sender::Distribution | Sender::Harbor => {
            let value = header(headers, &auth.header).ok_or("missing secret header")?;
            let value = value.strip_prefix("Bearer ").unwrap_or(value);
            verify::secrets_equal(value.as_bytes(), secret).then_some(()).ok_or("invalid secret header")
        }
    }
}

/// Records an authenticated generic request's signature in the shared guard: a 401 when any
/// instance accepted it before, a 503 when the guard cannot be asked (then this instance forgets
/// it too, so the sender's retry is not refused as a replay).
async fn first_use_everywhere(
    intake: &Intake,
    shared: &dyn SeenSignatures,
    headers: &HeaderMap,
) -> Result<(), Response> {
    let signature = header(headers, SIGNATURE_HEADER).unwrap_or_default().trim();
    let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default().as_secs();
    let expires_at = (now + intake.max_clock_skew.as_secs() * 2) as i64;
    match shared.first_use(signature, expires_at).await {
        Ok(true) => Ok(()),
        Ok(false) => {
            let why = "replayed request: this signature was already accepted";
            tracing::warn!(sender = Sender::Generic.as_str(), reason = why, "webhook refused");
            Err(error(StatusCode::UNAUTHORIZED, why))
        }
        Err(e) => {
            intake.seen_signatures.forget(signature);
            tracing::error!(error = %e, "cannot check the webhook for a replay; the sender will retry");
            Err(error(StatusCode::SERVICE_UNAVAILABLE, format!("{e}; retry later")))
        }
    }
}

/// Records a generic signature as used; `false` when it already was (a replay). Entries older
/// than twice the skew window are forgotten: their timestamps would be refused anyway.
fn remember_signature(intake: &Intake, signature: &str) -> bool {
    let window = intake.max_clock_skew * 2;
    intake.seen_signatures.remember(signature.trim(), Instant::now(), window)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replay_guard_refuses_repeats_and_forgets_old_signatures() {
        let guard = ReplayGuard::default();
        let start = Instant::now();
        let window = Duration::from_secs(600);
        assert!(guard.remember("a", start, window));
        assert!(!guard.remember("a", start + Duration::from_secs(1), window), "a replay");
        assert!(guard.remember("b", start + Duration::from_secs(2), window));
        // Past the window "a" is forgotten (its timestamp would be refused by the skew check).
        assert!(guard.remember("c", start + Duration::from_secs(601), window));
        assert!(guard.remember("a", start + Duration::from_secs(602), window), "a was forgotten");
        guard.forget("c");
        assert!(guard.remember("c", start + Duration::from_secs(603), window), "forgotten after a 503");
    }

    #[test]
    fn replay_guard_memory_is_bounded_by_the_window() {
        let guard = ReplayGuard::default();
        let start = Instant::now();
        let window = Duration::from_secs(600);
        for n in 0..5000 {
            assert!(guard.remember(&format!("old-{n}"), start, window));
        }
        // A window later every shard has seen new requests and dropped what expired.
        let later = start + window + Duration::from_secs(1);
        for n in 0..5000 {
            assert!(guard.remember(&format!("new-{n}"), later, window));
        }
        assert_eq!(guard.len(), 5000);
        assert!(!guard.remember("new-1", later, window));
    }
}

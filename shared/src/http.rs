//! The one axum `Router` that serves every intake route, under `ferry serve` and under
//! `lambda_http` alike.
//!
//! Each request: body limit (413) → authenticate the sender on the raw bytes (401, nothing
//! queued) → content type (415) → parse (400, saying what is wrong) → match pipelines (200 with
//! a reason when none match) → enqueue with dedup keys → 202 with the job ids only once the queue
//! has durably accepted them (503 when it cannot, so the sender retries).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use axum::Router;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde_json::json;

use crate::config::{Config, RepoName, tag_matches};
use crate::intake::{self, Parsed, PromotionRequest, Sender, verify};
use crate::queue::{JobQueue, NewJob, QueueError};
use crate::registry::auth::Secret;

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
    seen_signatures: Mutex<HashMap<String, Instant>>,
}

struct SenderAuth {
    secret: Secret,
    header: String,
}

struct PipelineMatch {
    name: String,
    source: RepoName,
    tags: Vec<String>,
    first_stage: String,
}

/// A job as queued for the worker.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct PromotionJob {
    pub pipeline: String,
    pub stage: String,
    /// `host/repo` the image is promoted from.
    pub source: String,
    pub request: PromotionRequest,
}

impl Intake {
    /// Resolves every configured sender's secret; a missing one is an error naming it.
    pub fn new(config: &Config, queue: Arc<dyn JobQueue>) -> Result<Self, String> {
        let mut senders = HashMap::new();
        for name in config.sources.keys() {
            let sender = crate::config::sender_named(name).expect("validated sender name");
            if let Some((secret, header)) = config.source_secret(sender)? {
                senders.insert(
                    sender,
                    SenderAuth {
                        secret,
                        header: header.unwrap_or_else(|| "authorization".into()),
                    },
                );
            }
        }
        let pipelines = config
            .pipelines
            .iter()
            .map(|p| PipelineMatch {
                name: p.name.get_ref().clone(),
                source: RepoName::parse(p.source.get_ref()).expect("validated source"),
                tags: p.tags.clone(),
                first_stage: p.stages[0].name.get_ref().clone(),
            })
            .collect();
        Ok(Intake {
            senders,
            pipelines,
            queue,
            max_clock_skew: Duration::from_secs(config.server.max_clock_skew_secs),
            body_limit: config.server.body_limit,
            seen_signatures: Mutex::new(HashMap::new()),
        })
    }

    /// The jobs a request starts: one per matching pipeline, at its first stage.
    fn jobs_for(&self, request: &PromotionRequest) -> Vec<(NewJob, PromotionJob)> {
        let mut jobs = Vec::new();
        for pipeline in &self.pipelines {
            let registry_matches = request
                .registry
                .as_deref()
                .is_none_or(|r| r == pipeline.source.registry);
            let tag_ok = pipeline.tags.is_empty()
                || request
                    .tag
                    .as_deref()
                    .is_some_and(|t| pipeline.tags.iter().any(|p| tag_matches(p, t)));
            if !registry_matches || request.repository != pipeline.source.repository || !tag_ok {
                continue;
            }
            let job = PromotionJob {
                pipeline: pipeline.name.clone(),
                stage: pipeline.first_stage.clone(),
                source: pipeline.source.to_string(),
                request: request.clone(),
            };
            jobs.push((
                NewJob {
                    dedup_key: dedup_key(&job),
                    payload: serde_json::to_value(&job).expect("job serializes"),
                },
                job,
            ));
        }
        jobs
    }
}

/// Same digest (or, without one, same tag and delivery) for the same stage → one job.
pub fn dedup_key(job: &PromotionJob) -> String {
    let what = match (&job.request.digest, &job.request.tag) {
        (Some(digest), _) => digest.to_string(),
        (None, Some(tag)) => format!(
            "tag:{tag}#{}",
            job.request.delivery_id.as_deref().unwrap_or("")
        ),
        (None, None) => "none".into(),
    };
    format!("{}/{}/{}/{what}", job.pipeline, job.stage, job.source)
}

/// The router: every intake route plus `GET /healthz`.
pub fn router(intake: Arc<Intake>) -> Router {
    let limit = intake.body_limit;
    Router::new()
        .route("/healthz", get(healthz))
        .route(
            "/hooks/acr",
            post(|s, h, b| hook(s, Sender::Acr, None, h, b)),
        )
        .route(
            "/hooks/github",
            post(|s, h, b| hook(s, Sender::Github, None, h, b)),
        )
        .route(
            "/hooks/distribution",
            post(|s, h, b| hook(s, Sender::Distribution, None, h, b)),
        )
        .route(
            "/hooks/harbor",
            post(|s, h, b| hook(s, Sender::Harbor, None, h, b)),
        )
        .route(
            "/hooks/generic",
            post(|s, h, b| hook(s, Sender::Generic, None, h, b)),
        )
        .route(
            "/hooks/dockerhub/{token}",
            post(|s, Path(token): Path<String>, h, b| {
                hook(s, Sender::Dockerhub, Some(token), h, b)
            }),
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
        Err(e) => reply(
            StatusCode::SERVICE_UNAVAILABLE,
            json!({"status": "unavailable", "error": e.to_string()}),
        ),
    }
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
        tracing::warn!(
            sender = sender.as_str(),
            "webhook for a sender that is not configured"
        );
        return error(
            StatusCode::UNAUTHORIZED,
            format!(
                "sender `{}` is not configured on this Ferry",
                sender.as_str()
            ),
        );
    };
    if let Err(why) = authenticate(&intake, sender, auth, url_token.as_deref(), &headers, &body) {
        tracing::warn!(sender = sender.as_str(), reason = why, "webhook refused");
        return error(StatusCode::UNAUTHORIZED, why);
    }
    let content_type = header(&headers, header::CONTENT_TYPE.as_str()).unwrap_or("");
    let media = content_type
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    let json_like = media == "application/json"
        || (media.starts_with("application/") && media.ends_with("+json"));
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
    let requests = match parsed {
        Parsed::Ignored(reason) => {
            return reply(
                StatusCode::OK,
                json!({ "status": "ignored", "reason": reason }),
            );
        }
        Parsed::Requests(requests) => requests,
    };
    let (new_jobs, jobs): (Vec<NewJob>, Vec<PromotionJob>) =
        requests.iter().flat_map(|r| intake.jobs_for(r)).unzip();
    if new_jobs.is_empty() {
        let names: Vec<String> = requests
            .iter()
            .map(|r| format!("{}/{}", r.registry.as_deref().unwrap_or("?"), r.repository))
            .collect();
        return reply(
            StatusCode::OK,
            json!({ "status": "ignored", "reason": format!("no pipeline matches {}", names.join(", ")) }),
        );
    }
    match intake.queue.enqueue(new_jobs).await {
        Ok(enqueued) => {
            let listed: Vec<serde_json::Value> = enqueued
                .iter()
                .zip(&jobs)
                .map(|(e, job)| {
                    tracing::info!(job.id = %e.id, pipeline = %job.pipeline, stage = %job.stage, duplicate = e.duplicate, sender = sender.as_str(), "promotion queued");
                    json!({ "id": e.id, "pipeline": job.pipeline, "stage": job.stage, "duplicate": e.duplicate })
                })
                .collect();
            reply(
                StatusCode::ACCEPTED,
                json!({ "status": "queued", "jobs": listed }),
            )
        }
        Err(QueueError::Invalid(why)) => error(StatusCode::BAD_REQUEST, why),
        Err(e) => {
            // Nothing was queued: the sender may retry this very request.
            if let Some(signature) = header(&headers, SIGNATURE_HEADER) {
                intake
                    .seen_signatures
                    .lock()
                    .expect("not poisoned")
                    .remove(signature.trim());
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
            verify::secrets_equal(token.as_bytes(), secret)
                .then_some(())
                .ok_or("invalid URL token")
        }
        Sender::Github => {
            let signature =
                header(headers, "x-hub-signature-256").ok_or("missing X-Hub-Signature-256")?;
            verify::github_signature_valid(secret, body, signature)
                .then_some(())
                .ok_or("invalid X-Hub-Signature-256")
        }
        Sender::Generic => {
            let timestamp = header(headers, TIMESTAMP_HEADER).ok_or("missing X-Ferry-Timestamp")?;
            let signature = header(headers, SIGNATURE_HEADER).ok_or("missing X-Ferry-Signature")?;
            if !verify::generic_signature_valid(secret, timestamp, body, signature) {
                return Err("invalid X-Ferry-Signature");
            }
            let sent: u64 = timestamp
                .trim()
                .parse()
                .map_err(|_| "X-Ferry-Timestamp must be Unix seconds")?;
            let now = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .unwrap_or_default()
                .as_secs();
            if sent.abs_diff(now) > intake.max_clock_skew.as_secs() {
                return Err("X-Ferry-Timestamp is outside the allowed clock skew");
            }
            remember_signature(intake, signature)
                .then_some(())
                .ok_or("replayed request: this signature was already accepted")
        }
        Sender::Acr | Sender::Distribution | Sender::Harbor => {
            let value = header(headers, &auth.header).ok_or("missing secret header")?;
            let value = value.strip_prefix("Bearer ").unwrap_or(value);
            verify::secrets_equal(value.as_bytes(), secret)
                .then_some(())
                .ok_or("invalid secret header")
        }
    }
}

/// Records a generic signature as used; `false` when it already was (a replay). Entries older
/// than twice the skew window are forgotten: their timestamps would be refused anyway.
fn remember_signature(intake: &Intake, signature: &str) -> bool {
    let mut seen = intake.seen_signatures.lock().expect("not poisoned");
    let now = Instant::now();
    let window = intake.max_clock_skew * 2;
    if seen.len() > 10_000 {
        seen.retain(|_, at| now.duration_since(*at) < window);
    }
    seen.insert(signature.trim().to_string(), now).is_none()
}

//! The one axum `Router` that serves every intake route, under `ferry serve` and under
//! `lambda_http` alike.
//!
//! Each request: body limit (413) → authenticate the sender on the raw bytes (401, nothing
//! queued) → content type (415) → parse (400, saying what is wrong) → match pipelines (200 with
//! a reason when none match) → enqueue with dedup keys → 202 with the job ids only once the queue
//! has durably accepted them (503 when it cannot, so the sender retries).

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use axum::Router;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde_json::json;

pub use crate::intake::routing::Intake;
use crate::intake::routing::SenderAuth;
use crate::intake::{self, Parsed, Sender, verify};
pub use crate::job::{DeploymentJob, PromotionJob, QueuedJob, dedup_key};
use crate::queue::{NewJob, QueueError};

/// Header names of Ferry's generic sender format.
pub const TIMESTAMP_HEADER: &str = "x-ferry-timestamp";
pub const SIGNATURE_HEADER: &str = "x-ferry-signature";

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
    match intake.queue.ready().await {
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
    let response = answer_hook(intake, sender, url_token, headers, body).await;
    crate::metrics::webhook(sender.as_str(), response.status().as_u16());
    response
}

async fn answer_hook(
    intake: Arc<Intake>,
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
    let replay_key = match authenticate(&intake, sender, auth, url_token.as_deref(), &headers, &body) {
        Ok(replay_key) => replay_key,
        Err(why) => {
            tracing::warn!(sender = sender.as_str(), reason = why, "webhook refused");
            return error(StatusCode::UNAUTHORIZED, why);
        }
    };
    if let Some(mac) = &replay_key {
        let now_ms = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default().as_millis() as i64;
        match intake.replay.remember(mac, now_ms).await {
            Ok(true) => {}
            Ok(false) => {
                let why = "replayed request: this signature was already accepted";
                tracing::warn!(sender = sender.as_str(), reason = why, "webhook refused");
                return error(StatusCode::UNAUTHORIZED, why);
            }
            Err(e) => {
                tracing::error!(error = %e, "cannot check for a replay; the sender will retry");
                return error(StatusCode::SERVICE_UNAVAILABLE, format!("{e}; retry later"));
            }
        }
    }
    let content_type = header(&headers, header::CONTENT_TYPE.as_str()).unwrap_or("");
    let media = content_type.split(';').next().unwrap_or("").trim().to_ascii_lowercase();
    let json_like = media == "application/json" || (media.starts_with("application/") && media.ends_with("+json"));
    if !json_like {
        let why = format!("expected a JSON body (Content-Type application/json), got `{content_type}`");
        tracing::warn!(sender = sender.as_str(), reason = %why, "webhook refused");
        return error(StatusCode::UNSUPPORTED_MEDIA_TYPE, why);
    }
    let delivery = header(&headers, "x-github-delivery");
    let parsed = match intake::parse(sender, &body, delivery) {
        Ok(parsed) => parsed,
        Err(e) => {
            // An authenticated sender whose payload Ferry cannot read: the operator needs to know.
            tracing::warn!(sender = sender.as_str(), reason = %e, "webhook refused");
            return error(StatusCode::BAD_REQUEST, e.to_string());
        }
    };
    let (matched, unmatched_reason): (Vec<(NewJob, QueuedJob)>, String) = match parsed {
        Parsed::Ignored(reason) => {
            tracing::info!(sender = sender.as_str(), reason = %reason, "webhook ignored");
            return reply(StatusCode::OK, json!({ "status": "ignored", "reason": reason }));
        }
        Parsed::Requests(requests) => {
            let mut jobs = Vec::new();
            let mut unmatched = Vec::new();
            for request in requests {
                match intake.jobs_for(&auth.scope, request) {
                    Ok(started) => jobs.extend(started),
                    Err(reason) => unmatched.push(reason),
                }
            }
            (jobs, unmatched.join("; "))
        }
        Parsed::Build(build) => match intake.jobs_for_build(&auth.scope, &build) {
            Ok(jobs) => {
                let definition = build.definition_name.or(build.definition_id).unwrap_or_else(|| "?".into());
                (jobs, format!("no pipeline is bound to build definition `{definition}`"))
            }
            Err(why) => {
                tracing::warn!(sender = sender.as_str(), reason = %why, "webhook refused");
                return error(StatusCode::BAD_REQUEST, why);
            }
        },
        Parsed::Deployment(report) => match intake.jobs_for_deployment(&auth.scope, &report) {
            Ok(jobs) => (jobs, String::new()),
            Err(reason) => (Vec::new(), reason),
        },
    };
    if matched.is_empty() {
        // "Why did my push not promote?" — answered in the log as well as to the sender.
        tracing::info!(sender = sender.as_str(), reason = %unmatched_reason, "webhook ignored");
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
            if let Some(mac) = &replay_key {
                intake.replay.forget(mac).await;
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
) -> Result<Option<Vec<u8>>, &'static str> {
    let secret = auth.secret.expose().as_bytes();
    let checked = |valid: bool, why: &'static str| if valid { Ok(None) } else { Err(why) };
    match sender {
        Sender::Dockerhub | Sender::Quay => {
            let token = url_token.unwrap_or_default();
            checked(verify::secrets_equal(token.as_bytes(), secret), "invalid URL token")
        }
        Sender::Github => {
            let signature = header(headers, "x-hub-signature-256").ok_or("missing X-Hub-Signature-256")?;
            checked(verify::github_signature_valid(secret, body, signature), "invalid X-Hub-Signature-256")
        }
        Sender::Generic => {
            let timestamp = header(headers, TIMESTAMP_HEADER).ok_or("missing X-Ferry-Timestamp")?;
            let signature = header(headers, SIGNATURE_HEADER).ok_or("missing X-Ferry-Signature")?;
            let mac =
                verify::generic_signature_mac(secret, timestamp, body, signature).ok_or("invalid X-Ferry-Signature")?;
            let sent: u64 = timestamp.trim().parse().map_err(|_| "X-Ferry-Timestamp must be Unix seconds")?;
            let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default().as_secs();
            if sent.abs_diff(now) > intake.max_clock_skew.as_secs() {
                return Err("X-Ferry-Timestamp is outside the allowed clock skew");
            }
            // The decoded MAC, not the header text: every spelling of one signature is one.
            Ok(Some(mac))
        }
        Sender::AzureDevops if auth.basic.is_some() => {
            let expected = auth.basic.as_deref().unwrap_or_default();
            let given = header(headers, "authorization").ok_or("missing basic auth")?;
            checked(verify::secrets_equal(given.as_bytes(), expected.as_bytes()), "invalid basic auth")
        }
        Sender::Operator => Err("not a webhook sender"),
        Sender::Acr | Sender::AzureDevops | Sender::Distribution | Sender::Harbor => {
            let value = header(headers, &auth.header).ok_or("missing secret header")?;
            let value = value.strip_prefix("Bearer ").unwrap_or(value);
            checked(verify::secrets_equal(value.as_bytes(), secret), "invalid secret header")
        }
    }
}

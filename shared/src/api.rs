//! The operations API on the same router as the webhooks: `/api/*`. Each request is
//! authenticated (`Authorization: Bearer <token>`: an OIDC JWT, a static user token, or the
//! shared operator token — see [`crate::identity`]) and authorized per action, pipeline and
//! stage. With an identity the acting person is the authenticated subject and `X-Ferry-User` is
//! ignored; with the operator token (break-glass) it is `X-Ferry-User`, recorded as unverified.

use std::sync::Arc;

use axum::Router;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde::Deserialize;
use serde_json::json;

use crate::identity::{AuthError, Authenticator, Caller, Channel, Role, Scope};
use crate::intake::verify::secrets_equal;
use crate::ops::{Operations, OpsError};
use crate::registry::auth::Secret;

pub const USER_HEADER: &str = "x-ferry-user";

/// The operator token `server.operator_token_env` (or `_arn`) names, if the operations API is
/// on: at least 16 characters.
pub fn operator_token(config: &crate::config::Config) -> Result<Option<Secret>, String> {
    let server = &config.server;
    let Some(token) = config
        .secret("server.operator_token", server.operator_token_env.as_ref(), server.operator_token_arn.as_ref())
        .map_err(|e| e.to_string())?
    else {
        return Ok(None);
    };
    if token.expose().len() < 16 {
        let source = server.operator_token_env.as_ref().or(server.operator_token_arn.as_ref()).expect("set");
        return Err(format!("{source}: the operator token must be at least 16 characters"));
    }
    Ok(Some(token))
}

struct ApiState {
    ops: Arc<Operations>,
    token: Option<Secret>,
    identity: Option<Authenticator>,
}

/// The operations API guarded by the operator token only.
pub fn router(ops: Arc<Operations>, token: Secret) -> Router {
    router_with_identity(ops, Some(token), None)
}

/// The operations API with `[identity]` (and the operator token as break-glass, when set).
pub fn router_with_identity(ops: Arc<Operations>, token: Option<Secret>, identity: Option<Authenticator>) -> Router {
    Router::new()
        .route("/api/status", get(status))
        .route("/api/promote", post(promote))
        .route("/api/promotions/{id}", get(promotion))
        .route("/api/promotions/{id}/approve", post(approve))
        .route("/api/promotions/{id}/reject", post(reject))
        .route("/api/rollback", post(rollback))
        .route("/api/history/{pipeline}", get(history))
        .route("/api/dlq", get(dlq))
        .route("/api/dlq/{id}/redrive", post(redrive))
        .route("/api/jobs/{id}", get(job))
        .route("/api/show/{id}", get(show))
        .route("/metrics", get(metrics))
        .with_state(Arc::new(ApiState { ops, token, identity }))
}

/// Why a listener serves no operations API.
#[derive(Debug, Clone, Copy)]
pub enum ApiOff {
    /// No operator token is configured: the API is off.
    NoOperatorToken,
    /// `server.api_listen` serves it on another listener.
    OtherListener,
}

/// What `/api/*` answers where the operations API is not served: 404, with a message saying
/// why and what to do, so that `ferry --server` can tell this from a URL that is not Ferry.
pub fn off(why: ApiOff) -> Router {
    let message = match why {
        ApiOff::NoOperatorToken => {
            "the operations API of this ferry serve is off: set server.operator_token_env (or \
             operator_token_arn) or configure [identity] users or OIDC issuers, and restart it"
        }
        ApiOff::OtherListener => {
            "this listener serves webhooks only: the operations API is on the address of server.api_listen"
        }
    };
    let answer = move || async move {
        (StatusCode::NOT_FOUND, axum::Json(json!({ "error": message, "class": API_OFF }))).into_response()
    };
    Router::new().route("/api", axum::routing::any(answer)).route("/api/{*rest}", axum::routing::any(answer))
}

/// The `class` of the answer of [`off`].
pub const API_OFF: &str = "api_off";

/// An error answer: `{"error": message, "class": …}` (the class as in [`OpsError::class`], or
/// `unauthorized`).
fn refused(status: StatusCode, message: String) -> Response {
    let class = match status {
        StatusCode::UNAUTHORIZED => "unauthorized",
        StatusCode::NOT_FOUND => "not_found",
        StatusCode::CONFLICT => "conflict",
        StatusCode::FORBIDDEN => "forbidden",
        StatusCode::SERVICE_UNAVAILABLE => "unavailable",
        StatusCode::BAD_GATEWAY => "upstream",
        _ => "invalid",
    };
    (status, axum::Json(json!({ "error": message, "class": class }))).into_response()
}

impl IntoResponse for OpsError {
    fn into_response(self) -> Response {
        let status = StatusCode::from_u16(self.status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        refused(status, self.to_string())
    }
}

/// A refused request: status and message.
struct Refusal(StatusCode, String);

impl IntoResponse for Refusal {
    fn into_response(self) -> Response {
        refused(self.0, self.1)
    }
}

/// Who is calling: the operator token (compared in constant time; the acting name is then
/// `X-Ferry-User`, unverified), else an identity from `[identity]`.
async fn caller(state: &ApiState, headers: &HeaderMap) -> Result<Caller, Refusal> {
    let given = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or_default()
        .trim();
    if let Some(token) = &state.token {
        if secrets_equal(given.as_bytes(), token.expose().as_bytes()) {
            // UTF-8 names arrive as raw header bytes; the operations canonicalize and validate them.
            let claimed = headers
                .get(USER_HEADER)
                .and_then(|v| std::str::from_utf8(v.as_bytes()).ok())
                .map(|u| u.trim().to_string())
                .filter(|u| !u.is_empty());
            return Ok(Caller {
                subject: claimed.clone(),
                display: claimed,
                groups: Vec::new(),
                channel: Channel::OperatorToken,
            });
        }
    }
    let Some(identity) = &state.identity else {
        return Err(Refusal(
            StatusCode::UNAUTHORIZED,
            "missing or wrong operator token (Authorization: Bearer …)".into(),
        ));
    };
    // X-Ferry-User is ignored: the subject is the authenticated one.
    identity.authenticate(given).await.map_err(|e| match e {
        AuthError::IssuerUnavailable(_) => Refusal(StatusCode::SERVICE_UNAVAILABLE, e.to_string()),
        _ => Refusal(StatusCode::UNAUTHORIZED, e.to_string()),
    })
}

/// The caller, if they hold `role` in `scope`; else 403 naming the missing role.
async fn authorized(state: &ApiState, headers: &HeaderMap, role: Role, scope: Scope<'_>) -> Result<Caller, Refusal> {
    let caller = caller(state, headers).await?;
    let grants = state.identity.as_ref().map(Authenticator::grants).unwrap_or_default();
    if caller.role(grants, scope).is_some_and(|have| have >= role) {
        return Ok(caller);
    }
    let who = caller.subject.as_deref().unwrap_or("-");
    Err(Refusal(
        StatusCode::FORBIDDEN,
        format!("{who} lacks the {role} role {scope}: ask an admin for an [[identity.grants]] entry"),
    ))
}

/// The acting person's name as the ledger records it.
fn person(caller: &Caller) -> Result<String, Refusal> {
    caller
        .subject
        .clone()
        .ok_or_else(|| Refusal(StatusCode::BAD_REQUEST, "say who you are with the X-Ferry-User header".into()))
}

/// Pipeline and stage of promotion `id`, to authorize an action on it (its 404 when unknown).
async fn promotion_scope(state: &ApiState, id: &str) -> Result<(String, String), Response> {
    match state.ops.promotion(id).await {
        Ok(record) => Ok((record.pipeline, record.stage)),
        Err(e) => Err(e.into_response()),
    }
}

fn ok<T: serde::Serialize>(value: T) -> Response {
    (StatusCode::OK, axum::Json(value)).into_response()
}

#[derive(Deserialize)]
struct StatusQuery {
    pipeline: Option<String>,
}

async fn status(State(state): State<Arc<ApiState>>, headers: HeaderMap, Query(q): Query<StatusQuery>) -> Response {
    let scope = q.pipeline.as_deref().map_or(Scope::Anywhere, Scope::Pipeline);
    if let Err(r) = authorized(&state, &headers, Role::Viewer, scope).await {
        return r.into_response();
    }
    match state.ops.status(q.pipeline.as_deref()).await {
        Ok(s) => ok(s),
        Err(e) => e.into_response(),
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PromoteBody {
    pipeline: String,
    reference: String,
    to: String,
}

async fn promote(State(state): State<Arc<ApiState>>, headers: HeaderMap, body: axum::body::Bytes) -> Response {
    let body: PromoteBody = match serde_json::from_slice(&body) {
        Ok(b) => b,
        Err(e) => return refused(StatusCode::BAD_REQUEST, format!("expected {{pipeline, reference, to}}: {e}")),
    };
    let scope = Scope::Stage(&body.pipeline, &body.to);
    let (caller, user) = match authorized(&state, &headers, Role::Operator, scope).await.and_then(with_person) {
        Ok(c) => c,
        Err(r) => return r.into_response(),
    };
    match state.ops.promote(&body.pipeline, &body.reference, &body.to, Some(&user), &caller.via()).await {
        Ok(job) => (StatusCode::ACCEPTED, axum::Json(json!({ "status": "queued", "job": job }))).into_response(),
        Err(e) => e.into_response(),
    }
}

fn with_person(caller: Caller) -> Result<(Caller, String), Refusal> {
    let user = person(&caller)?;
    Ok((caller, user))
}

async fn promotion(State(state): State<Arc<ApiState>>, headers: HeaderMap, Path(id): Path<String>) -> Response {
    if let Err(r) = caller(&state, &headers).await {
        return r.into_response();
    }
    let record = match state.ops.promotion(&id).await {
        Ok(p) => p,
        Err(e) => return e.into_response(),
    };
    if let Err(r) = authorized(&state, &headers, Role::Viewer, Scope::Stage(&record.pipeline, &record.stage)).await {
        return r.into_response();
    }
    ok(record)
}

async fn approve(State(state): State<Arc<ApiState>>, headers: HeaderMap, Path(id): Path<String>) -> Response {
    if let Err(r) = caller(&state, &headers).await {
        return r.into_response();
    }
    let (pipeline, stage) = match promotion_scope(&state, &id).await {
        Ok(s) => s,
        Err(r) => return r,
    };
    let scope = Scope::Stage(&pipeline, &stage);
    let (caller, user) = match authorized(&state, &headers, Role::Approver, scope).await.and_then(with_person) {
        Ok(c) => c,
        Err(r) => return r.into_response(),
    };
    match state.ops.approve(&id, &user, &caller.via()).await {
        Ok(a) => ok(a),
        Err(e) => e.into_response(),
    }
}

#[derive(Deserialize, Default)]
struct RejectBody {
    reason: Option<String>,
}

async fn reject(
    State(state): State<Arc<ApiState>>,
    headers: HeaderMap,
    Path(id): Path<String>,
    body: axum::body::Bytes,
) -> Response {
    if let Err(r) = caller(&state, &headers).await {
        return r.into_response();
    }
    let body: RejectBody = if body.is_empty() {
        RejectBody::default()
    } else {
        match serde_json::from_slice(&body) {
            Ok(b) => b,
            Err(e) => return refused(StatusCode::BAD_REQUEST, format!("expected {{reason?}}: {e}")),
        }
    };
    let (pipeline, stage) = match promotion_scope(&state, &id).await {
        Ok(s) => s,
        Err(r) => return r,
    };
    let scope = Scope::Stage(&pipeline, &stage);
    let (caller, user) = match authorized(&state, &headers, Role::Approver, scope).await.and_then(with_person) {
        Ok(c) => c,
        Err(r) => return r.into_response(),
    };
    match state.ops.reject(&id, &user, body.reason.as_deref(), &caller.via()).await {
        Ok(r) => ok(r),
        Err(e) => e.into_response(),
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RollbackBody {
    pipeline: String,
    stage: String,
    to: Option<String>,
}

async fn rollback(State(state): State<Arc<ApiState>>, headers: HeaderMap, body: axum::body::Bytes) -> Response {
    let body: RollbackBody = match serde_json::from_slice(&body) {
        Ok(b) => b,
        Err(e) => return refused(StatusCode::BAD_REQUEST, format!("expected {{pipeline, stage, to?}}: {e}")),
    };
    let scope = Scope::Stage(&body.pipeline, &body.stage);
    let (caller, user) = match authorized(&state, &headers, Role::Operator, scope).await.and_then(with_person) {
        Ok(c) => c,
        Err(r) => return r.into_response(),
    };
    match state.ops.rollback(&body.pipeline, &body.stage, body.to.as_deref(), Some(&user), &caller.via()).await {
        Ok(r) => ok(r),
        Err(e) => e.into_response(),
    }
}

#[derive(Deserialize)]
struct HistoryQuery {
    stage: Option<String>,
    limit: Option<usize>,
}

async fn history(
    State(state): State<Arc<ApiState>>,
    headers: HeaderMap,
    Path(pipeline): Path<String>,
    Query(q): Query<HistoryQuery>,
) -> Response {
    let scope = match &q.stage {
        Some(stage) => Scope::Stage(&pipeline, stage),
        None => Scope::Pipeline(&pipeline),
    };
    if let Err(r) = authorized(&state, &headers, Role::Viewer, scope).await {
        return r.into_response();
    }
    match state.ops.history(&pipeline, q.stage.as_deref(), q.limit.unwrap_or(50).min(1000)).await {
        Ok(h) => ok(h),
        Err(e) => e.into_response(),
    }
}

async fn dlq(State(state): State<Arc<ApiState>>, headers: HeaderMap) -> Response {
    if let Err(r) = authorized(&state, &headers, Role::Viewer, Scope::Anywhere).await {
        return r.into_response();
    }
    match state.ops.dead_letters().await {
        Ok(d) => ok(d),
        Err(e) => e.into_response(),
    }
}

async fn redrive(State(state): State<Arc<ApiState>>, headers: HeaderMap, Path(id): Path<String>) -> Response {
    if let Err(r) = caller(&state, &headers).await {
        return r.into_response();
    }
    // The job's promotion says which pipeline it is about; a job without one needs an operator
    // of every pipeline.
    let promotion = state.ops.job(&id).await.ok().and_then(|j| j.promotion);
    let scoped = match promotion {
        Some(p) => state.ops.promotion(&p).await.ok().map(|r| (r.pipeline, r.stage)),
        None => None,
    };
    let scope = scoped.as_ref().map_or(Scope::Everywhere, |(p, s)| Scope::Stage(p, s));
    let caller = match authorized(&state, &headers, Role::Operator, scope).await {
        Ok(c) => c,
        Err(r) => return r.into_response(),
    };
    match state.ops.redrive(&id, caller.subject.as_deref(), &caller.via()).await {
        Ok(()) => ok(json!({ "status": "redriven", "id": id })),
        Err(e) => e.into_response(),
    }
}

async fn job(State(state): State<Arc<ApiState>>, headers: HeaderMap, Path(id): Path<String>) -> Response {
    if let Err(r) = authorized(&state, &headers, Role::Viewer, Scope::Anywhere).await {
        return r.into_response();
    }
    match state.ops.job(&id).await {
        Ok(job) => ok(job),
        Err(e) => e.into_response(),
    }
}

async fn show(State(state): State<Arc<ApiState>>, headers: HeaderMap, Path(id): Path<String>) -> Response {
    if let Err(r) = authorized(&state, &headers, Role::Viewer, Scope::Anywhere).await {
        return r.into_response();
    }
    match state.ops.show(&id).await {
        Ok(shown) => ok(shown),
        Err(e) => e.into_response(),
    }
}

/// `GET /metrics` (Prometheus text format), for callers with the viewer role anywhere.
async fn metrics(State(state): State<Arc<ApiState>>, headers: HeaderMap) -> Response {
    if let Err(r) = authorized(&state, &headers, Role::Viewer, Scope::Anywhere).await {
        return r.into_response();
    }
    scrape(&state.ops).await
}

async fn scrape(ops: &Operations) -> Response {
    // An unavailable store leaves its gauges out rather than failing the whole scrape.
    let gauges = crate::metrics::Gauges {
        queue_depth: ops.queue_depth().await,
        dead_letters: ops.dead_letters().await.ok().map(|d| d.len()),
        waiting: ops.promotions_waiting().await.ok(),
    };
    let text = crate::metrics::render(&gauges);
    ([(axum::http::header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")], text).into_response()
}

/// `GET /metrics` without authentication, for `server.metrics_listen` (a private address).
pub fn metrics_router(ops: Arc<Operations>) -> Router {
    Router::new()
        .route("/metrics", get(|State(ops): State<Arc<Operations>>| async move { scrape(&ops).await }))
        .with_state(ops)
}

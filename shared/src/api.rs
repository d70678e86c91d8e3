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

use crate::console::session::{CSRF_HEADER, MIN_SESSION_KEY_CHARS, SESSION_COOKIE, Sessions};
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
    identity: Option<Arc<Authenticator>>,
    /// Console sessions, accepted in place of a bearer token (state changes then need the
    /// session's CSRF token).
    sessions: Option<Arc<Sessions>>,
}

/// Why the operations API and console could not be set up.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct SetupError(String);

/// The operations API and the web console as every shell serves them (`ferry serve`, the API
/// function on AWS), or `None` when neither an operator token nor `[identity]` is configured.
pub fn operations_app(config: &crate::config::Config, ops: Arc<Operations>) -> Result<Option<Router>, SetupError> {
    let token = operator_token(config).map_err(SetupError)?;
    let identity = match config.identity.is_on() {
        true => Some(Arc::new(Authenticator::new(config.identity.clone()).map_err(SetupError)?)),
        false => None,
    };
    if token.is_none() && identity.is_none() {
        return Ok(None);
    }
    let key = config
        .secret(
            "identity.session_key",
            config.identity.session_key_env.as_ref(),
            config.identity.session_key_arn.as_ref(),
        )
        .map_err(|e| SetupError(e.to_string()))?;
    if key.as_ref().is_some_and(|k| k.expose().chars().count() < MIN_SESSION_KEY_CHARS) {
        return Err(SetupError(format!(
            "identity.session_key: the session key must be at least {MIN_SESSION_KEY_CHARS} characters"
        )));
    }
    let sessions = Arc::new(Sessions::new(key.as_ref().map(|k| k.expose().as_bytes()), config.identity.session_ttl_s));
    let console = crate::console::Console {
        sessions: sessions.clone(),
        identity: identity.clone(),
        public_url: config.server.public_url.clone(),
        form_limit: crate::console::login::FORM_LIMIT.min(config.server.body_limit),
    };
    let api = api_router(ApiState { ops, token, identity, sessions: Some(sessions) })
        .layer(axum::extract::DefaultBodyLimit::max(config.server.body_limit));
    Ok(Some(api.merge(crate::console::router(Arc::new(console)))))
}

fn api_router(state: ApiState) -> Router {
    let state = Arc::new(state);
    Router::new()
        .route("/api/me", get(me))
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
        .layer(axum::middleware::from_fn_with_state(state.clone(), csrf_guard))
        .with_state(state)
}

/// A state-changing request that rides on a console session must carry the session's CSRF
/// token in `X-Ferry-CSRF`: another site can make a browser send the cookie, not the token.
/// Bearer-token callers (the CLI, automation) send no cookie and are not affected.
async fn csrf_guard(
    State(state): State<Arc<ApiState>>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let safe = matches!(*request.method(), axum::http::Method::GET | axum::http::Method::HEAD);
    let headers = request.headers();
    if !safe && headers.get(axum::http::header::AUTHORIZATION).is_none() {
        if let Some(Ok(session)) = state.sessions.as_ref().map(|s| s.session(headers)) {
            let presented = headers.get(CSRF_HEADER).and_then(|v| v.to_str().ok()).unwrap_or_default();
            if !session.csrf_matches(presented) {
                return refused(
                    StatusCode::FORBIDDEN,
                    "missing or wrong CSRF token (X-Ferry-CSRF): reload the console page and try again".into(),
                );
            }
        }
    }
    next.run(request).await
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
    // The console's address says the same to a person with a browser.
    let page = move || async move { (StatusCode::NOT_FOUND, format!("Ferry's web console is not here: {message}\n")) };
    Router::new()
        .route("/", get(page))
        .route("/api", axum::routing::any(answer))
        .route("/api/{*rest}", axum::routing::any(answer))
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
    // No bearer token: a console session, when the request has one.
    if given.is_empty() {
        if let Some(sessions) = &state.sessions {
            if crate::console::session::cookie(headers, SESSION_COOKIE).is_some() {
                return sessions
                    .session(headers)
                    .map(|s| s.caller())
                    .map_err(|e| Refusal(StatusCode::UNAUTHORIZED, e.to_string()));
            }
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
    let grants = grants(state);
    if caller.role(grants, scope).is_some_and(|have| have >= role) {
        return Ok(caller);
    }
    Err(lacks(&caller, role, scope))
}

/// 403: `caller` lacks `role` in `scope`.
fn lacks(caller: &Caller, role: Role, scope: Scope<'_>) -> Refusal {
    let who = caller.subject.as_deref().unwrap_or("-");
    Refusal(
        StatusCode::FORBIDDEN,
        format!("{who} lacks the {role} role {scope}: ask an admin for an [[identity.grants]] entry"),
    )
}

/// The acting person's name as the ledger records it.
fn person(caller: &Caller) -> Result<String, Refusal> {
    caller
        .subject
        .clone()
        .ok_or_else(|| Refusal(StatusCode::BAD_REQUEST, "the operator token names nobody: say who you are with the X-Ferry-User header (ferry --user NAME or FERRY_USER)".into()))
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
    let caller = match authorized(&state, &headers, Role::Viewer, Scope::Anywhere).await {
        Ok(c) => c,
        Err(r) => return r.into_response(),
    };
    match state.ops.status(q.pipeline.as_deref()).await {
        // A viewer of the pipeline or of one of its stages sees it; a read that names no
        // pipeline shows those the caller may see.
        Ok(mut s) => {
            s.retain(|p| sees_pipeline(&state, &caller, &p.name, p.stages.iter().map(|s| s.name.as_str())));
            if let (Some(pipeline), true) = (&q.pipeline, s.is_empty()) {
                return lacks(&caller, Role::Viewer, Scope::Pipeline(pipeline)).into_response();
            }
            ok(s)
        }
        Err(e) => e.into_response(),
    }
}

fn grants(state: &ApiState) -> &[crate::identity::Grant] {
    state.identity.as_deref().map(Authenticator::grants).unwrap_or_default()
}

/// Whether `caller` is a viewer of the pipeline or of one of its stages.
fn sees_pipeline<'a>(
    state: &ApiState,
    caller: &Caller,
    pipeline: &str,
    mut stages: impl Iterator<Item = &'a str>,
) -> bool {
    let grants = grants(state);
    caller.role(grants, Scope::Pipeline(pipeline)).is_some()
        || stages.any(|stage| caller.role(grants, Scope::Stage(pipeline, stage)).is_some())
}

/// `GET /api/me`: who the caller is and their role on each pipeline and stage (the console
/// shows only the actions a person may take; the API checks them again on every request).
async fn me(State(state): State<Arc<ApiState>>, headers: HeaderMap) -> Response {
    let caller = match caller(&state, &headers).await {
        Ok(c) => c,
        Err(r) => return r.into_response(),
    };
    let session = state
        .sessions
        .as_ref()
        .and_then(|s| s.session(&headers).ok())
        .filter(|_| headers.get(axum::http::header::AUTHORIZATION).is_none());
    let grants = grants(&state);
    let mut pipelines = serde_json::Map::new();
    for pipeline in &state.ops.config().pipelines {
        let name = pipeline.name.get_ref();
        let stages: serde_json::Map<_, _> = pipeline
            .stages
            .iter()
            .map(|s| {
                let stage = s.name.get_ref();
                (stage.clone(), json!(caller.role(grants, Scope::Stage(name, stage))))
            })
            .collect();
        if stages.values().all(serde_json::Value::is_null) {
            continue;
        }
        pipelines.insert(name.clone(), json!({ "role": caller.role(grants, Scope::Pipeline(name)), "stages": stages }));
    }
    ok(json!({
        "subject": caller.subject,
        "display": caller.display,
        "via": caller.channel.as_str(),
        "verified": caller.verified(),
        "session_expires_at": session.map(|s| s.exp),
        "everywhere": caller.role(grants, Scope::Everywhere),
        "pipelines": pipelines,
    }))
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
    let caller = match authorized(&state, &headers, Role::Viewer, Scope::Anywhere).await {
        Ok(c) => c,
        Err(r) => return r.into_response(),
    };
    let allowed = match (&q.stage, state.ops.config().pipeline(&pipeline)) {
        (Some(stage), _) => caller.role(grants(&state), Scope::Stage(&pipeline, stage)).is_some(),
        (None, Some(p)) => {
            sees_pipeline(&state, &caller, &pipeline, p.stages.iter().map(|s| s.name.get_ref().as_str()))
        }
        // An unknown pipeline: its 404 says so.
        (None, None) => true,
    };
    if !allowed {
        let scope = q.stage.as_deref().map_or(Scope::Pipeline(&pipeline), |s| Scope::Stage(&pipeline, s));
        return lacks(&caller, Role::Viewer, scope).into_response();
    }
    match state.ops.history(&pipeline, q.stage.as_deref(), q.limit.unwrap_or(50).min(1000)).await {
        // A viewer of some stages sees the promotions into those.
        Ok(mut h) => {
            let grants = grants(&state);
            h.retain(|r| caller.role(grants, Scope::Stage(&r.pipeline, &r.stage)).is_some());
            ok(h)
        }
        Err(e) => e.into_response(),
    }
}

async fn dlq(State(state): State<Arc<ApiState>>, headers: HeaderMap) -> Response {
    let caller = match authorized(&state, &headers, Role::Viewer, Scope::Anywhere).await {
        Ok(c) => c,
        Err(r) => return r.into_response(),
    };
    match state.ops.dead_letters().await {
        // Each letter is shown to viewers of its pipeline and stage; one naming none, to viewers
        // of every pipeline.
        Ok(mut letters) => {
            let grants = grants(&state);
            letters.retain(|letter| {
                let field = |name: &str| letter.payload.get(name).and_then(serde_json::Value::as_str);
                let scope = match (field("pipeline"), field("stage")) {
                    (Some(p), Some(s)) => Scope::Stage(p, s),
                    (Some(p), None) => Scope::Pipeline(p),
                    _ => Scope::Everywhere,
                };
                caller.role(grants, scope).is_some()
            });
            ok(letters)
        }
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
    let caller = match authorized(&state, &headers, Role::Viewer, Scope::Anywhere).await {
        Ok(c) => c,
        Err(r) => return r.into_response(),
    };
    let job = match state.ops.job(&id).await {
        Ok(job) => job,
        Err(e) => return e.into_response(),
    };
    let promotion = match &job.promotion {
        Some(p) => state.ops.promotion(p).await.ok(),
        None => None,
    };
    match sees_promotion(&state, &caller, promotion.as_ref()) {
        Ok(()) => ok(job),
        Err(r) => r.into_response(),
    }
}

async fn show(State(state): State<Arc<ApiState>>, headers: HeaderMap, Path(id): Path<String>) -> Response {
    let caller = match authorized(&state, &headers, Role::Viewer, Scope::Anywhere).await {
        Ok(c) => c,
        Err(r) => return r.into_response(),
    };
    match state.ops.show(&id).await {
        Ok(shown) => match sees_promotion(&state, &caller, shown.promotion.as_ref()) {
            Ok(()) => ok(shown),
            Err(r) => r.into_response(),
        },
        Err(e) => e.into_response(),
    }
}

/// A read of one promotion (or of a job that became one) needs the viewer role on its stage.
fn sees_promotion(
    state: &ApiState,
    caller: &Caller,
    promotion: Option<&crate::ledger::PromotionRecord>,
) -> Result<(), Refusal> {
    match promotion {
        Some(r) if caller.role(grants(state), Scope::Stage(&r.pipeline, &r.stage)).is_none() => {
            Err(lacks(caller, Role::Viewer, Scope::Stage(&r.pipeline, &r.stage)))
        }
        _ => Ok(()),
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

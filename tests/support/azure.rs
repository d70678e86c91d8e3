//! FAKE Azure endpoints for the deploy tests (Azure cannot run here): an Entra ID token
//! endpoint (client credentials with a secret or a federated assertion, App Service managed
//! identity, IMDS) and ARM for App Service (site config, slot config, `slotsswap` as a
//! long-running operation via `Location` or `Azure-AsyncOperation`), implementing the request and
//! response shapes of WIRE_FORMATS §7. ARM accepts only tokens this Entra fake issued.
//!
//! Each fake runs on its own thread and runtime on 127.0.0.1, port 0, so sync and async tests
//! can use it alike; it stops when dropped.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

/// A router served on its own thread until dropped.
pub struct Background {
    pub port: u16,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
}

impl Background {
    pub fn serve(app: axum::Router) -> Self {
        let std_listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
        std_listener.set_nonblocking(true).unwrap();
        let port = std_listener.local_addr().unwrap().port();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
            runtime.block_on(async move {
                let listener = tokio::net::TcpListener::from_std(std_listener).unwrap();
                let _ = axum::serve(listener, app)
                    .with_graceful_shutdown(async move {
                        let _ = stopped.await;
                    })
                    .await;
            });
            runtime.shutdown_background();
        });
        Background { port, stop: Some(stop) }
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }
}

impl Drop for Background {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

pub const TENANT: &str = "72f988bf-86f1-41af-91ab-2d7cd011db47";
pub const CLIENT_ID: &str = "00001111-aaaa-2222-bbbb-3333cccc4444";
pub const CLIENT_SECRET: &str = "fake-entra-client-secret";
pub const FEDERATED_TOKEN: &str = "eyJfake.federated.token";
pub const IDENTITY_HEADER: &str = "fake-identity-header";

/// The fake Entra ID.
#[derive(Default)]
pub struct EntraState {
    /// Token requests answered (successful or not).
    pub requests: AtomicUsize,
    /// Lifetime of issued tokens in seconds.
    pub expires_in: AtomicU64,
    /// Every token issued, by value, with its scope/resource.
    pub issued: Mutex<HashMap<String, String>>,
    /// Pause before answering, so concurrent callers overlap.
    pub delay_ms: AtomicU64,
}

pub struct FakeEntra {
    pub state: Arc<EntraState>,
    server: Background,
}

impl FakeEntra {
    pub fn start() -> Self {
        let state = Arc::new(EntraState { expires_in: AtomicU64::new(3599), ..Default::default() });
        let app = axum::Router::new().fallback(entra).with_state(state.clone());
        FakeEntra { state, server: Background::serve(app) }
    }

    pub fn url(&self) -> String {
        self.server.url()
    }

    pub fn requests(&self) -> usize {
        self.state.requests.load(Ordering::SeqCst)
    }
}

fn entra_error(status: StatusCode, code: &str, description: &str) -> Response {
    (status, axum::Json(json!({ "error": code, "error_description": description, "error_codes": [7000215] })))
        .into_response()
}

async fn entra(State(state): State<Arc<EntraState>>, request: Request) -> Response {
    state.requests.fetch_add(1, Ordering::SeqCst);
    let delay = state.delay_ms.load(Ordering::SeqCst);
    if delay > 0 {
        tokio::time::sleep(Duration::from_millis(delay)).await;
    }
    let (parts, body) = request.into_parts();
    let body = axum::body::to_bytes(body, 1 << 20).await.unwrap_or_default();
    let path = parts.uri.path().to_string();
    let query: HashMap<String, String> =
        url::form_urlencoded::parse(parts.uri.query().unwrap_or("").as_bytes()).into_owned().collect();
    let issue = |scope: &str, managed: bool| {
        let n = state.issued.lock().unwrap().len();
        let token = format!("fake-token-{n}-{}", scope.len());
        state.issued.lock().unwrap().insert(token.clone(), scope.to_string());
        let expires_in = state.expires_in.load(Ordering::SeqCst);
        if managed {
            let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs();
            axum::Json(json!({ "access_token": token, "expires_on": (now + expires_in).to_string(), "resource": scope, "token_type": "Bearer" }))
                .into_response()
        } else {
            axum::Json(json!({ "token_type": "Bearer", "expires_in": expires_in, "access_token": token }))
                .into_response()
        }
    };
    // Client credentials (secret or federated assertion), as login.microsoftonline.com.
    if parts.method == Method::POST && path == format!("/{TENANT}/oauth2/v2.0/token") {
        let form: HashMap<String, String> = url::form_urlencoded::parse(&body).into_owned().collect();
        let field = |k: &str| form.get(k).map(String::as_str).unwrap_or("");
        if field("grant_type") != "client_credentials" {
            return entra_error(StatusCode::BAD_REQUEST, "unsupported_grant_type", "AADSTS70003: grant_type");
        }
        if field("client_id") != CLIENT_ID {
            return entra_error(
                StatusCode::BAD_REQUEST,
                "unauthorized_client",
                "AADSTS700016: Application not found in the directory.",
            );
        }
        let by_secret = field("client_secret") == CLIENT_SECRET;
        let by_assertion = field("client_assertion_type") == "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
            && field("client_assertion") == FEDERATED_TOKEN;
        if !by_secret && !by_assertion {
            return entra_error(
                StatusCode::UNAUTHORIZED,
                "invalid_client",
                "AADSTS7000215: Invalid client secret provided.",
            );
        }
        if !field("scope").ends_with("/.default") {
            return entra_error(
                StatusCode::BAD_REQUEST,
                "invalid_scope",
                "AADSTS1002012: The provided value for scope is not valid.",
            );
        }
        return issue(field("scope"), false);
    }
    // App Service managed identity (IDENTITY_ENDPOINT).
    if parts.method == Method::GET && path == "/msi/token" {
        let header = parts.headers.get("x-identity-header").and_then(|v| v.to_str().ok());
        if header != Some(IDENTITY_HEADER) || query.get("api-version").map(String::as_str) != Some("2019-08-01") {
            return (
                StatusCode::BAD_REQUEST,
                axum::Json(
                    json!({ "error": { "code": "InvalidHeader", "message": "X-IDENTITY-HEADER is missing or wrong" } }),
                ),
            )
                .into_response();
        }
        return issue(query.get("resource").map(String::as_str).unwrap_or(""), true);
    }
    // IMDS.
    if parts.method == Method::GET && path == "/metadata/identity/oauth2/token" {
        if parts.headers.get("metadata").and_then(|v| v.to_str().ok()) != Some("true") {
            return entra_error(StatusCode::BAD_REQUEST, "invalid_request", "Required metadata header not specified");
        }
        return issue(query.get("resource").map(String::as_str).unwrap_or(""), true);
    }
    entra_error(StatusCode::NOT_FOUND, "not_found", &format!("no such endpoint {path}"))
}

/// How the fake ARM runs a slot swap.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SwapMode {
    /// 202 + `Location`, answering 202 to `polls` GETs before 200.
    Location { polls: usize },
    /// 202 + `Azure-AsyncOperation`, `InProgress` for `polls` GETs, then `Succeeded`.
    AsyncOperation { polls: usize },
    /// 202 + `Azure-AsyncOperation` ending in `Failed` with an error.
    AsyncOperationFails,
}

/// The fake ARM's world: web apps by name, each with a production config and slots.
pub struct ArmState {
    /// (app, slot or "production") → linuxFxVersion.
    pub configs: Mutex<HashMap<(String, String), String>>,
    /// (app, slot) → site containers of a sidecar-enabled app (`linuxFxVersion = SITECONTAINERS`).
    pub containers: Mutex<HashMap<(String, String), Vec<Value>>>,
    /// AKS cluster name → the user kubeconfig (YAML) `listClusterUserCredential` returns.
    pub aks_kubeconfigs: Mutex<HashMap<String, String>>,
    /// Requests as `METHOD path?query`.
    pub log: Mutex<Vec<String>>,
    /// Issued tokens of the Entra fake (the only ones accepted).
    pub tokens: Arc<EntraState>,
    pub swap_mode: Mutex<SwapMode>,
    /// The next this many requests are answered 429 (`Retry-After: 1`).
    pub throttle: AtomicUsize,
    /// The next this many requests are answered 500.
    pub fail: AtomicUsize,
    /// Apps the caller may not change (403 AuthorizationFailed).
    pub forbidden: Mutex<HashSet<String>>,
    operations: Mutex<HashMap<String, usize>>,
    base: Mutex<String>,
    /// ACR resource id → the plain-http registry (`127.0.0.1:PORT`) holding its images.
    pub acr_registries: Mutex<HashMap<String, String>>,
    /// The `importImage` request bodies received.
    pub imports: Mutex<Vec<Value>>,
    /// When set, import operations end `Failed` with this (code, message).
    pub import_fails: Mutex<Option<(String, String)>>,
    /// Import operation id → `None` while copying, then `Ok(())` or the failure.
    import_ops: Arc<Mutex<HashMap<String, ImportState>>>,
}

/// `None` while the import copies, then its outcome (an Azure error code and message).
type ImportState = Option<Result<(), (String, String)>>;

pub struct FakeArm {
    pub state: Arc<ArmState>,
    server: Background,
}

pub const SUBSCRIPTION: &str = "11111111-2222-3333-4444-555555555555";
pub const RESOURCE_GROUP: &str = "rg-shop";

impl FakeArm {
    pub fn start(entra: &FakeEntra) -> Self {
        let state = Arc::new(ArmState {
            configs: Mutex::new(HashMap::new()),
            containers: Mutex::new(HashMap::new()),
            aks_kubeconfigs: Mutex::new(HashMap::new()),
            log: Mutex::new(Vec::new()),
            tokens: entra.state.clone(),
            swap_mode: Mutex::new(SwapMode::Location { polls: 2 }),
            throttle: AtomicUsize::new(0),
            fail: AtomicUsize::new(0),
            forbidden: Mutex::new(HashSet::new()),
            operations: Mutex::new(HashMap::new()),
            base: Mutex::new(String::new()),
            acr_registries: Mutex::new(HashMap::new()),
            imports: Mutex::new(Vec::new()),
            import_fails: Mutex::new(None),
            import_ops: Arc::new(Mutex::new(HashMap::new())),
        });
        let app = axum::Router::new().fallback(arm).with_state(state.clone());
        let server = Background::serve(app);
        *state.base.lock().unwrap() = server.url();
        FakeArm { state, server }
    }

    pub fn url(&self) -> String {
        self.server.url()
    }

    /// A web app `app` running `image` in production, with `slots` running the same.
    pub fn add_app(&self, app: &str, image: &str, slots: &[&str]) {
        let mut configs = self.state.configs.lock().unwrap();
        configs.insert((app.into(), "production".into()), format!("DOCKER|{image}"));
        for slot in slots {
            configs.insert((app.into(), slot.to_string()), format!("DOCKER|{image}"));
        }
    }

    /// A sidecar-enabled app: a main container running `image` and a sidecar.
    pub fn add_sidecar_app(&self, app: &str, image: &str) {
        self.state.configs.lock().unwrap().insert((app.into(), "production".into()), "SITECONTAINERS".into());
        let container = |name: &str, image: &str, main: bool| {
            json!({ "id": format!("/subscriptions/{SUBSCRIPTION}/resourceGroups/{RESOURCE_GROUP}/providers/Microsoft.Web/sites/{app}/sitecontainers/{name}"),
                    "name": format!("{app}/{name}"), "type": "Microsoft.Web/sites/sitecontainers",
                    "properties": { "image": image, "isMain": main, "targetPort": "8080", "authType": "SystemIdentity" } })
        };
        self.state.containers.lock().unwrap().insert(
            (app.into(), "production".into()),
            vec![container("otel", "mcr.microsoft.com/otel/collector:0.1", false), container("main", image, true)],
        );
    }

    /// The image of site container `name`.
    pub fn site_container_image(&self, app: &str, name: &str) -> Option<String> {
        let containers = self.state.containers.lock().unwrap();
        containers
            .get(&(app.to_string(), "production".to_string()))?
            .iter()
            .find(|c| c["name"] == format!("{app}/{name}"))?["properties"]["image"]
            .as_str()
            .map(str::to_string)
    }

    pub fn linux_fx_version(&self, app: &str, slot: &str) -> Option<String> {
        self.state.configs.lock().unwrap().get(&(app.to_string(), slot.to_string())).cloned()
    }

    pub fn log(&self) -> Vec<String> {
        self.state.log.lock().unwrap().clone()
    }

    /// An ACR resource `name` in the fake subscription whose images live in the plain-http
    /// registry `host`; returns its resource id.
    pub fn add_registry(&self, name: &str, host: &str) -> String {
        let id = format!(
            "/subscriptions/{SUBSCRIPTION}/resourceGroups/{RESOURCE_GROUP}/providers/Microsoft.ContainerRegistry/registries/{name}"
        );
        self.state.acr_registries.lock().unwrap().insert(id.clone(), host.to_string());
        id
    }
}

/// ARM `importImage` (WIRE_FORMATS §9): checks the body, answers 202 with an
/// `Azure-AsyncOperation` to poll, and really copies `sourceImage` into each target tag with
/// skopeo on a thread, the operation staying `InProgress` until the copy ends.
fn import_image(state: &ArmState, target_id: &str, query: Option<&str>, body: &Bytes) -> Response {
    if query.is_none_or(|q| !q.contains("api-version=2023-07-01")) {
        return arm_error(StatusCode::BAD_REQUEST, "InvalidApiVersionParameter", "api-version=2023-07-01 expected");
    }
    let registries = state.acr_registries.lock().unwrap().clone();
    let Some(target) = registries.get(target_id).cloned() else {
        return arm_error(
            StatusCode::NOT_FOUND,
            "ResourceNotFound",
            &format!("The Resource '{target_id}' was not found."),
        );
    };
    let request: Value = serde_json::from_slice(body).unwrap_or(Value::Null);
    state.imports.lock().unwrap().push(request.clone());
    let source = &request["source"];
    let image = source["sourceImage"].as_str().unwrap_or_default().to_string();
    let Some(source_host) = source["resourceId"].as_str().and_then(|id| registries.get(id)).cloned() else {
        return arm_error(StatusCode::BAD_REQUEST, "InvalidParameters", "source.resourceId is not a known registry");
    };
    let mode_ok = matches!(request["mode"].as_str(), Some("Force" | "NoForce"));
    if !image.contains("@sha256:") || !mode_ok {
        return arm_error(StatusCode::BAD_REQUEST, "InvalidParameters", &format!("bad import request: {request}"));
    }
    let targets: Vec<String> = match request["targetTags"].as_array() {
        Some(tags) => tags.iter().filter_map(|t| t.as_str().map(str::to_string)).collect(),
        None => request["untaggedTargetRepositories"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|r| r.as_str())
            .map(|repo| format!("{repo}@{}", image.split_once('@').unwrap().1))
            .collect(),
    };
    let id = format!("import-{}", state.imports.lock().unwrap().len());
    let ops = state.import_ops.clone();
    ops.lock().unwrap().insert(id.clone(), None);
    let fails = state.import_fails.lock().unwrap().clone();
    let op_id = id.clone();
    std::thread::spawn(move || {
        let mut outcome = Ok(());
        for target_ref in &targets {
            let copied = std::process::Command::new(super::tools::skopeo())
                .args(["copy", "--all", "--preserve-digests", "--src-tls-verify=false", "--dest-tls-verify=false"])
                .arg(format!("docker://{source_host}/{image}"))
                .arg(format!("docker://{target}/{target_ref}"))
                .output()
                .expect("run skopeo");
            if !copied.status.success() {
                outcome = Err(("ImportFailed".into(), String::from_utf8_lossy(&copied.stderr).into_owned()));
            }
        }
        if let Some(failure) = fails {
            outcome = Err(failure);
        }
        ops.lock().unwrap().insert(op_id, Some(outcome));
    });
    let mut response = StatusCode::ACCEPTED.into_response();
    let poll = format!("{}/fake-imports/{id}", state.base.lock().unwrap());
    response.headers_mut().insert("azure-asyncoperation", poll.parse().unwrap());
    response.headers_mut().insert("retry-after", "0".parse().unwrap());
    response
}

fn arm_error(status: StatusCode, code: &str, message: &str) -> Response {
    (status, axum::Json(json!({ "error": { "code": code, "message": message } }))).into_response()
}

async fn arm(
    State(state): State<Arc<ArmState>>,
    method: Method,
    headers: HeaderMap,
    uri: axum::http::Uri,
    body: Bytes,
) -> Response {
    let path = uri.path().to_string();
    state.log.lock().unwrap().push(format!("{method} {}", uri));
    let token = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or("");
    match state.tokens.issued.lock().unwrap().get(token) {
        Some(scope) if scope.starts_with(&*state.base.lock().unwrap()) => {}
        _ => {
            return arm_error(
                StatusCode::UNAUTHORIZED,
                "InvalidAuthenticationToken",
                "The access token is invalid or not for this audience.",
            );
        }
    }
    if state.throttle.load(Ordering::SeqCst) > 0 {
        state.throttle.fetch_sub(1, Ordering::SeqCst);
        let mut response =
            arm_error(StatusCode::TOO_MANY_REQUESTS, "TooManyRequests", "Too many requests; retry later.");
        response.headers_mut().insert("retry-after", "1".parse().unwrap());
        return response;
    }
    if state.fail.load(Ordering::SeqCst) > 0 {
        state.fail.fetch_sub(1, Ordering::SeqCst);
        return arm_error(StatusCode::INTERNAL_SERVER_ERROR, "InternalServerError", "Something went wrong.");
    }
    // Long-running operation polls.
    if let Some(id) = path.strip_prefix("/fake-operations/") {
        let mut ops = state.operations.lock().unwrap();
        let Some(left) = ops.get_mut(id) else {
            return arm_error(StatusCode::NOT_FOUND, "NotFound", "no such operation");
        };
        let mode = *state.swap_mode.lock().unwrap();
        if *left > 0 {
            *left -= 1;
            return match mode {
                SwapMode::Location { .. } => {
                    let mut r = StatusCode::ACCEPTED.into_response();
                    r.headers_mut().insert("retry-after", "0".parse().unwrap());
                    r
                }
                _ => axum::Json(json!({ "status": "InProgress" })).into_response(),
            };
        }
        return match mode {
            SwapMode::Location { .. } => StatusCode::OK.into_response(),
            SwapMode::AsyncOperation { .. } => axum::Json(json!({ "status": "Succeeded" })).into_response(),
            SwapMode::AsyncOperationFails => axum::Json(json!({ "status": "Failed", "error": {
                "code": "SwapFailed", "message": "Cannot swap slots because the staging slot failed to warm up." } }))
            .into_response(),
        };
    }
    if let Some(id) = path.strip_prefix("/fake-imports/") {
        return match state.import_ops.lock().unwrap().get(id) {
            None => arm_error(StatusCode::NOT_FOUND, "NotFound", "no such operation"),
            Some(None) => axum::Json(json!({ "status": "InProgress" })).into_response(),
            Some(Some(Ok(()))) => axum::Json(json!({ "status": "Succeeded" })).into_response(),
            Some(Some(Err((code, message)))) => {
                axum::Json(json!({ "status": "Failed", "error": { "code": code, "message": message } })).into_response()
            }
        };
    }
    if let Some(target) = path.strip_suffix("/importImage")
        && method == Method::POST
    {
        return import_image(&state, target, uri.query(), &body);
    }
    let aks = format!(
        "/subscriptions/{SUBSCRIPTION}/resourceGroups/{RESOURCE_GROUP}/providers/Microsoft.ContainerService/managedClusters/"
    );
    if let Some(cluster) = path.strip_prefix(&aks).and_then(|rest| rest.strip_suffix("/listClusterUserCredential")) {
        if method != Method::POST || uri.query().is_none_or(|q| !q.contains("api-version=2024-09-01")) {
            return arm_error(StatusCode::BAD_REQUEST, "InvalidRequest", "POST with api-version=2024-09-01 expected");
        }
        let Some(kubeconfig) = state.aks_kubeconfigs.lock().unwrap().get(cluster).cloned() else {
            return arm_error(
                StatusCode::NOT_FOUND,
                "ResourceNotFound",
                &format!(
                    "The Resource 'Microsoft.ContainerService/managedClusters/{cluster}' under resource group '{RESOURCE_GROUP}' was not found."
                ),
            );
        };
        return axum::Json(
            json!({ "kubeconfigs": [ { "name": "clusterUser", "value": super::base64(kubeconfig.as_bytes()) } ] }),
        )
        .into_response();
    }
    if uri.query().is_none_or(|q| !q.contains("api-version=2024-11-01")) {
        return arm_error(
            StatusCode::BAD_REQUEST,
            "MissingApiVersionParameter",
            "The api-version query parameter (?api-version=) is required for all requests.",
        );
    }
    let prefix =
        format!("/subscriptions/{SUBSCRIPTION}/resourceGroups/{RESOURCE_GROUP}/providers/Microsoft.Web/sites/");
    let Some(rest) = path.strip_prefix(&prefix) else {
        return arm_error(
            StatusCode::NOT_FOUND,
            "ResourceGroupNotFound",
            &format!("Resource group for '{path}' could not be found."),
        );
    };
    let parts: Vec<&str> = rest.split('/').collect();
    let (app, slot, action) = match parts.as_slice() {
        [app, "config", "web"] => (*app, "production", "config"),
        [app, "slots", slot, "config", "web"] => (*app, *slot, "config"),
        [app, "slots", slot, "slotsswap"] => (*app, *slot, "swap"),
        [app, "sitecontainers"] => (*app, "production", "containers"),
        [app, "sitecontainers", _] => (*app, "production", "container"),
        _ => return arm_error(StatusCode::NOT_FOUND, "NotFound", &format!("no route {path}")),
    };
    let key = (app.to_string(), slot.to_string());
    if !state.configs.lock().unwrap().contains_key(&key) {
        return arm_error(
            StatusCode::NOT_FOUND,
            "ResourceNotFound",
            &format!("The Resource 'Microsoft.Web/sites/{app}' under resource group '{RESOURCE_GROUP}' was not found."),
        );
    }
    if method != Method::GET && state.forbidden.lock().unwrap().contains(app) {
        return arm_error(
            StatusCode::FORBIDDEN,
            "AuthorizationFailed",
            &format!(
                "The client does not have authorization to perform action 'Microsoft.Web/sites/config/write' over scope '{path}'."
            ),
        );
    }
    let site_config = |fx: &str| {
        let id = if slot == "production" {
            format!("{prefix}{app}/config/web")
        } else {
            format!("{prefix}{app}/slots/{slot}/config/web")
        };
        axum::Json(json!({ "id": id, "name": "web", "type": "Microsoft.Web/sites/config", "properties": { "linuxFxVersion": fx, "alwaysOn": true } }))
            .into_response()
    };
    match (method, action) {
        (Method::GET, "config") => site_config(&state.configs.lock().unwrap()[&key].clone()),
        (Method::PATCH, "config") => {
            let body: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
            let Some(fx) = body["properties"]["linuxFxVersion"].as_str() else {
                return arm_error(StatusCode::BAD_REQUEST, "BadRequest", "properties.linuxFxVersion expected");
            };
            state.configs.lock().unwrap().insert(key, fx.to_string());
            site_config(fx)
        }
        (Method::GET, "containers") => {
            let containers = state.containers.lock().unwrap().get(&key).cloned().unwrap_or_default();
            axum::Json(json!({ "value": containers })).into_response()
        }
        (Method::PUT, "container") => {
            let name = parts[2];
            let body: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
            if !body["properties"]["image"].is_string() || !body["properties"]["isMain"].is_boolean() {
                return arm_error(
                    StatusCode::BAD_REQUEST,
                    "BadRequest",
                    "properties.image and properties.isMain are required",
                );
            }
            let mut all = state.containers.lock().unwrap();
            let list = all.entry(key.clone()).or_default();
            let full = format!("{app}/{name}");
            list.retain(|c| c["name"] != full.as_str());
            let resource = json!({ "id": path.clone(), "name": full, "type": "Microsoft.Web/sites/sitecontainers", "properties": body["properties"] });
            list.push(resource.clone());
            axum::Json(resource).into_response()
        }
        (Method::POST, "swap") => {
            let body: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
            if body["targetSlot"] != "production" || !body["preserveVnet"].is_boolean() {
                return arm_error(
                    StatusCode::BAD_REQUEST,
                    "BadRequest",
                    "CsmSlotEntity needs targetSlot and preserveVnet",
                );
            }
            // The swap happens at once; the operation reports it done after some polls.
            {
                let mut configs = state.configs.lock().unwrap();
                let slot_fx = configs[&key].clone();
                let prod_key = (app.to_string(), "production".to_string());
                let prod_fx = configs[&prod_key].clone();
                configs.insert(prod_key, slot_fx);
                configs.insert(key, prod_fx);
            }
            let id = format!("op-{}", state.log.lock().unwrap().len());
            let mode = *state.swap_mode.lock().unwrap();
            let polls = match mode {
                SwapMode::Location { polls } | SwapMode::AsyncOperation { polls } => polls,
                SwapMode::AsyncOperationFails => 1,
            };
            state.operations.lock().unwrap().insert(id.clone(), polls);
            let url = format!("{}/fake-operations/{id}", state.base.lock().unwrap());
            let mut response = StatusCode::ACCEPTED.into_response();
            let header = if mode == (SwapMode::Location { polls }) { "location" } else { "azure-asyncoperation" };
            response.headers_mut().insert(header, url.parse().unwrap());
            response.headers_mut().insert("retry-after", "0".parse().unwrap());
            response
        }
        _ => arm_error(StatusCode::METHOD_NOT_ALLOWED, "MethodNotAllowed", "not supported by the fake"),
    }
}

/// A FAKE Azure Container Registry front (WIRE_FORMATS §10.7, Azure/acr `docs/AAD-OAuth.md`):
/// `/oauth2/exchange` turns an access token the fake Entra ID issued into an ACR refresh token
/// (a JWT with `exp`), `/oauth2/token` turns a live refresh token into an access token, and
/// every `/v2/` request must carry such an access token (else `401` with ACR's `Bearer`
/// challenge) before it is forwarded to a REAL registry.
pub struct FakeAcr {
    pub state: Arc<AcrState>,
    server: Background,
}

pub struct AcrState {
    entra: Arc<EntraState>,
    upstream: String,
    client: reqwest::Client,
    /// `127.0.0.1:PORT`, the ACR "service" name; set once the server is bound.
    pub service: Mutex<String>,
    /// `/oauth2/exchange` and `/oauth2/token` requests answered (successful or not).
    pub exchanges: AtomicUsize,
    pub token_requests: AtomicUsize,
    /// Lifetime of issued refresh tokens, seconds.
    pub refresh_lifetime: AtomicU64,
    /// Refresh tokens issued, with their `exp` (unix seconds).
    refresh_tokens: Mutex<HashMap<String, u64>>,
    access_tokens: Mutex<HashSet<String>>,
    /// When set, `/oauth2/exchange` answers this status with ACR's error body.
    pub exchange_fails: Mutex<Option<u16>>,
    /// `/v2/` requests refused for a missing or unknown bearer token.
    pub challenges: AtomicUsize,
}

fn unix_now() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs()
}

fn acr_error(status: StatusCode, code: &str, message: &str) -> Response {
    (status, axum::Json(json!({ "errors": [{ "code": code, "message": message, "detail": null }] }))).into_response()
}

impl FakeAcr {
    /// In front of the plain-http registry at `upstream` (`127.0.0.1:PORT`), trusting `entra`.
    pub fn start(entra: &FakeEntra, upstream: &str) -> Self {
        let state = Arc::new(AcrState {
            entra: entra.state.clone(),
            upstream: format!("http://{upstream}"),
            client: reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).build().unwrap(),
            service: Mutex::new(String::new()),
            exchanges: AtomicUsize::new(0),
            token_requests: AtomicUsize::new(0),
            refresh_lifetime: AtomicU64::new(3 * 3600),
            refresh_tokens: Mutex::new(HashMap::new()),
            access_tokens: Mutex::new(HashSet::new()),
            exchange_fails: Mutex::new(None),
            challenges: AtomicUsize::new(0),
        });
        let app = axum::Router::new().fallback(acr).with_state(state.clone());
        let server = Background::serve(app);
        *state.service.lock().unwrap() = format!("127.0.0.1:{}", server.port);
        FakeAcr { state, server }
    }

    /// `127.0.0.1:PORT`: the registry host Ferry is configured with.
    pub fn host(&self) -> String {
        format!("127.0.0.1:{}", self.server.port)
    }

    pub fn exchanges(&self) -> usize {
        self.state.exchanges.load(Ordering::SeqCst)
    }

    pub fn token_requests(&self) -> usize {
        self.state.token_requests.load(Ordering::SeqCst)
    }
}

async fn acr(State(state): State<Arc<AcrState>>, request: Request) -> Response {
    use base64::Engine as _;
    let (parts, body) = request.into_parts();
    let path = parts.uri.path().to_string();
    let service = state.service.lock().unwrap().clone();
    let form = |body: &Bytes| -> HashMap<String, String> { url::form_urlencoded::parse(body).into_owned().collect() };
    if parts.method == Method::POST && path == "/oauth2/exchange" {
        state.exchanges.fetch_add(1, Ordering::SeqCst);
        if let Some(status) = *state.exchange_fails.lock().unwrap() {
            return acr_error(
                StatusCode::from_u16(status).unwrap(),
                "UNAUTHORIZED",
                "authentication required, visit https://aka.ms/acr/authorization for more information.",
            );
        }
        let body = axum::body::to_bytes(body, 1 << 20).await.unwrap_or_default();
        let form = form(&body);
        let field = |k: &str| form.get(k).map(String::as_str).unwrap_or("");
        if field("grant_type") != "access_token" || field("service") != service || field("tenant") != TENANT {
            return acr_error(StatusCode::BAD_REQUEST, "BAD_REQUEST", &format!("bad exchange request: {form:?}"));
        }
        let scope = state.entra.issued.lock().unwrap().get(field("access_token")).cloned();
        if !scope.is_some_and(|s| s.ends_with("/.default")) {
            return acr_error(StatusCode::UNAUTHORIZED, "UNAUTHORIZED", "the access token was not issued by Entra ID");
        }
        let exp = unix_now() + state.refresh_lifetime.load(Ordering::SeqCst);
        let n = state.refresh_tokens.lock().unwrap().len();
        let b64 = |s: String| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(s);
        let token = format!(
            "{}.{}.fake-signature",
            b64(r#"{"alg":"RS256","typ":"JWT"}"#.into()),
            b64(json!({ "exp": exp, "aud": service, "jti": n, "grant_type": "refresh_token" }).to_string())
        );
        state.refresh_tokens.lock().unwrap().insert(token.clone(), exp);
        return axum::Json(json!({ "refresh_token": token })).into_response();
    }
    if parts.method == Method::POST && path == "/oauth2/token" {
        state.token_requests.fetch_add(1, Ordering::SeqCst);
        let body = axum::body::to_bytes(body, 1 << 20).await.unwrap_or_default();
        let form = form(&body);
        let field = |k: &str| form.get(k).map(String::as_str).unwrap_or("");
        if field("grant_type") != "refresh_token" || field("service") != service || field("scope").is_empty() {
            return acr_error(StatusCode::BAD_REQUEST, "BAD_REQUEST", &format!("bad token request: {form:?}"));
        }
        let exp = state.refresh_tokens.lock().unwrap().get(field("refresh_token")).copied();
        match exp {
            Some(exp) if exp > unix_now() => {}
            Some(_) => return acr_error(StatusCode::UNAUTHORIZED, "UNAUTHORIZED", "the refresh token has expired"),
            None => return acr_error(StatusCode::UNAUTHORIZED, "UNAUTHORIZED", "unknown refresh token"),
        }
        let token = format!("fake-acr-access-{}", state.access_tokens.lock().unwrap().len());
        state.access_tokens.lock().unwrap().insert(token.clone());
        return axum::Json(json!({ "access_token": token })).into_response();
    }
    if !path.starts_with("/v2") {
        return acr_error(StatusCode::NOT_FOUND, "NOT_FOUND", &format!("no such endpoint {path}"));
    }
    let bearer = parts
        .headers
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::to_string);
    if !bearer.is_some_and(|t| state.access_tokens.lock().unwrap().contains(&t)) {
        state.challenges.fetch_add(1, Ordering::SeqCst);
        let challenge = format!(r#"Bearer realm="http://{service}/oauth2/token",service="{service}""#);
        let mut response = acr_error(StatusCode::UNAUTHORIZED, "UNAUTHORIZED", "authentication required");
        response.headers_mut().insert(axum::http::header::WWW_AUTHENTICATE, challenge.parse().unwrap());
        return response;
    }
    // Forward to the real registry, `Host` kept so its upload `Location`s point back here.
    let body = axum::body::to_bytes(body, usize::MAX).await.unwrap_or_default();
    let mut headers = parts.headers.clone();
    for name in [
        axum::http::header::CONTENT_LENGTH,
        axum::http::header::CONNECTION,
        axum::http::header::TRANSFER_ENCODING,
        axum::http::header::AUTHORIZATION,
    ] {
        headers.remove(name);
    }
    let path_and_query = parts.uri.path_and_query().map_or(path.clone(), |p| p.as_str().to_string());
    let upstream = match state
        .client
        .request(parts.method.clone(), format!("{}{path_and_query}", state.upstream))
        .headers(headers)
        .body(body)
        .send()
        .await
    {
        Ok(upstream) => upstream,
        Err(e) => return (StatusCode::BAD_GATEWAY, format!("upstream: {e}")).into_response(),
    };
    let mut response = Response::builder().status(upstream.status());
    for (name, value) in upstream.headers() {
        // A HEAD answer has no body, so its Content-Length (the manifest's size) is kept as is.
        let length = name == axum::http::header::CONTENT_LENGTH && parts.method != Method::HEAD;
        if !length && name != axum::http::header::TRANSFER_ENCODING {
            response = response.header(name, value);
        }
    }
    let bytes = upstream.bytes().await.unwrap_or_default();
    response.body(axum::body::Body::from(bytes)).unwrap()
}

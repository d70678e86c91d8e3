//! Router tests, no socket (`tower::ServiceExt::oneshot`), over the real embedded SQLite queue.

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use axum::body::Body;
use axum::http::{Request, StatusCode};
use ferry_core::config::Config;
use ferry_core::http::{Intake, SIGNATURE_HEADER, TIMESTAMP_HEADER, router};
use ferry_core::intake::verify::generic_signature;
use ferry_core::queue::{JobQueue, SqliteQueue, SqliteQueueOptions};
use tower::ServiceExt;

const CONFIG: &str = r#"
[server]
body_limit = 4096

[registries."127.0.0.1:5001"]
plain_http = true
[registries."127.0.0.1:5002"]
plain_http = true
[registries."contosodev.azurecr.io"]
[registries."registry.dev.example.com"]
[registries."docker.io"]
[registries."ghcr.io"]
[registries."harbor.dev.example.com"]
[registries."quay.io"]

[sources.generic]
secret_env = "ROUTER_TEST_GENERIC"
[sources.acr]
secret_env = "ROUTER_TEST_ACR"
[sources.distribution]
secret_env = "ROUTER_TEST_DIST"
header = "X-Ferry-Secret"
[sources.github]
secret_env = "ROUTER_TEST_GITHUB"
[sources.dockerhub]
secret_env = "ROUTER_TEST_HUB"
[sources.harbor]
secret_env = "ROUTER_TEST_HARBOR"
[sources.quay]
secret_env = "ROUTER_TEST_QUAY"
[sources.azure-devops]
secret_env = "ROUTER_TEST_ADO"
username = "ferry"

[[pipelines]]
name = "local"
source = "127.0.0.1:5001/shop/api"
  [[pipelines.stages]]
  name = "dev"
  target = "127.0.0.1:5002/shop/api"

[[pipelines]]
name = "acr"
source = "contosodev.azurecr.io/shop/api"
tags = ["1.*"]
  [[pipelines.stages]]
  name = "dev"
  target = "127.0.0.1:5002/shop/api"

[[pipelines]]
name = "dist"
source = "registry.dev.example.com/shop/api"
  [[pipelines.stages]]
  name = "dev"
  target = "127.0.0.1:5002/shop/api"

[[pipelines]]
name = "ghcr"
source = "ghcr.io/contoso/api"
  [[pipelines.stages]]
  name = "dev"
  target = "127.0.0.1:5002/contoso/api"

[[pipelines]]
name = "hub"
source = "docker.io/contoso/api"
  [[pipelines.stages]]
  name = "dev"
  target = "127.0.0.1:5002/contoso/api"

[[pipelines]]
name = "harbor"
source = "harbor.dev.example.com/shop/api"
  [[pipelines.stages]]
  name = "dev"
  target = "127.0.0.1:5002/shop/api"

[[pipelines]]
name = "ado"
source = "127.0.0.1:5001/shop/web"
  [pipelines.azure_devops]
  build_definition = "shop-api-ci"
  tag = "build-{build.id}"
  release_definition = "shop-api-cd"
  project = "Shop"
  [[pipelines.stages]]
  name = "staging"
  target = "127.0.0.1:5002/shop/web"

[[pipelines]]
name = "quay"
source = "quay.io/contoso/api"
  [[pipelines.stages]]
  name = "dev"
  target = "127.0.0.1:5002/contoso/api"
"#;

struct App {
    router: axum::Router,
    queue: Arc<SqliteQueue>,
    _dir: tempfile::TempDir,
}

async fn app() -> App {
    app_with(CONFIG).await
}

async fn app_with(config: &str) -> App {
    let dir = tempfile::tempdir().unwrap();
    let mut text = config.to_string();
    // Secrets through files (the workspace forbids the unsafe env::set_var).
    for (name, var, value) in [
        ("generic", "ROUTER_TEST_GENERIC", "generic-secret"),
        ("acr", "ROUTER_TEST_ACR", "acr-secret"),
        ("distribution", "ROUTER_TEST_DIST", "dist-secret"),
        ("github", "ROUTER_TEST_GITHUB", "It's a Secret to Everybody"),
        ("dockerhub", "ROUTER_TEST_HUB", "hub-token-0123456789"),
        ("harbor", "ROUTER_TEST_HARBOR", "harbor-secret"),
        ("quay", "ROUTER_TEST_QUAY", "quay-token-0123456789"),
        ("azure-devops", "ROUTER_TEST_ADO", "ado-password"),
    ] {
        let path = dir.path().join(format!("{name}.secret"));
        std::fs::write(&path, value).unwrap();
        text = text
            .replace(&format!("secret_env = \"{var}\""), &format!("secret_file = {:?}", path.display().to_string()));
    }
    let config = Config::parse(&text, "test.toml").unwrap();
    let queue = Arc::new(SqliteQueue::open(&dir.path().join("queue.db"), SqliteQueueOptions::default()).unwrap());
    let intake = Intake::new(&config, queue.clone() as Arc<dyn JobQueue>).unwrap();
    App { router: router(Arc::new(intake)), queue, _dir: dir }
}

fn fixture(name: &str) -> Vec<u8> {
    std::fs::read(std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src/intake/fixtures").join(name)).unwrap()
}

async fn send(app: &App, request: Request<Body>) -> (StatusCode, serde_json::Value) {
    let response = app.router.clone().oneshot(request).await.unwrap();
    let status = response.status();
    let bytes = axum::body::to_bytes(response.into_body(), 1 << 20).await.unwrap();
    (status, serde_json::from_slice(&bytes).unwrap_or(serde_json::Value::Null))
}

fn post(uri: &str) -> axum::http::request::Builder {
    Request::post(uri).header("content-type", "application/json")
}

fn now() -> String {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs().to_string()
}

fn generic(body: &[u8], secret: &str, timestamp: &str) -> Request<Body> {
    Request::post("/hooks/generic")
        .header("content-type", "application/json")
        .header(TIMESTAMP_HEADER, timestamp)
        .header(SIGNATURE_HEADER, generic_signature(secret.as_bytes(), timestamp, body))
        .body(Body::from(body.to_vec()))
        .unwrap()
}

async fn queued(app: &App) -> usize {
    app.queue.receive(100, std::time::Duration::from_secs(60)).await.unwrap().len()
}

const GENERIC: &[u8] = br#"{"repository":"127.0.0.1:5001/shop/api","tag":"v1","digest":"sha256:05b3abf2579a5eb66403cd78be557fd860633a1fe2103c7642030defe32c657f","build":1234}"#;

#[tokio::test]
async fn signed_generic_request_is_queued_and_answered_202_with_job_ids() {
    let app = app().await;
    let (status, body) = send(&app, generic(GENERIC, "generic-secret", &now())).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    assert_eq!(body["jobs"][0]["pipeline"], "local");
    assert_eq!(body["jobs"][0]["stage"], "dev");
    assert!(body["jobs"][0]["id"].as_str().is_some_and(|id| !id.is_empty()));
    assert_eq!(queued(&app).await, 1);
}

#[tokio::test]
async fn bad_signature_missing_headers_and_stale_timestamps_get_401_and_queue_nothing() {
    let app = app().await;
    assert_eq!(send(&app, generic(GENERIC, "wrong-secret", &now())).await.0, StatusCode::UNAUTHORIZED);
    let old = (SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs() - 600).to_string();
    let (status, body) = send(&app, generic(GENERIC, "generic-secret", &old)).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert!(body["error"].as_str().unwrap().contains("clock skew"), "{body}");
    let unsigned = post("/hooks/generic").body(Body::from(GENERIC.to_vec())).unwrap();
    assert_eq!(send(&app, unsigned).await.0, StatusCode::UNAUTHORIZED);
    assert_eq!(queued(&app).await, 0);
}

#[tokio::test]
async fn replayed_generic_request_is_refused() {
    let app = app().await;
    let ts = now();
    assert_eq!(send(&app, generic(GENERIC, "generic-secret", &ts)).await.0, StatusCode::ACCEPTED);
    let (status, body) = send(&app, generic(GENERIC, "generic-secret", &ts)).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert!(body["error"].as_str().unwrap().contains("replayed"), "{body}");
}

#[tokio::test]
async fn malformed_json_is_400_saying_what_is_wrong() {
    let app = app().await;
    let (status, body) = send(&app, generic(b"{\"repository\": 12", "generic-secret", &now())).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(body["error"].as_str().unwrap().contains("not valid JSON"), "{body}");
    let (status, body) =
        send(&app, generic(br#"{"repository":"127.0.0.1:5001/shop/api"}"#, "generic-secret", &now())).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(body["error"].as_str().unwrap().contains("tag"), "{body}");
}

#[tokio::test]
async fn wrong_content_type_is_415() {
    let app = app().await;
    let ts = now();
    let request = Request::post("/hooks/generic")
        .header("content-type", "text/plain")
        .header(TIMESTAMP_HEADER, &ts)
        .header(SIGNATURE_HEADER, generic_signature(b"generic-secret", &ts, GENERIC))
        .body(Body::from(GENERIC.to_vec()))
        .unwrap();
    assert_eq!(send(&app, request).await.0, StatusCode::UNSUPPORTED_MEDIA_TYPE);
}

#[tokio::test]
async fn oversized_body_is_413_and_queues_nothing() {
    let app = app().await;
    let big = vec![b' '; 8192];
    assert_eq!(send(&app, generic(&big, "generic-secret", &now())).await.0, StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(queued(&app).await, 0);
}

#[tokio::test]
async fn duplicate_deliveries_yield_one_job() {
    let app = app().await;
    let mut ids = std::collections::HashSet::new();
    for _ in 0..5 {
        let request = Request::post("/hooks/acr")
            .header("content-type", "application/json")
            .header("authorization", "Bearer acr-secret")
            .body(Body::from(fixture("acr-push.json")))
            .unwrap();
        let (status, body) = send(&app, request).await;
        assert_eq!(status, StatusCode::ACCEPTED, "{body}");
        ids.insert(body["jobs"][0]["id"].as_str().unwrap().to_string());
    }
    assert_eq!(ids.len(), 1, "every delivery names the same job");
    assert_eq!(queued(&app).await, 1);
}

#[tokio::test]
async fn acr_needs_its_secret_header_and_ignores_pings() {
    let app = app().await;
    let request = |auth: Option<&str>, body: Vec<u8>| {
        let mut r = Request::post("/hooks/acr").header("content-type", "application/json");
        if let Some(auth) = auth {
            r = r.header("authorization", auth);
        }
        r.body(Body::from(body)).unwrap()
    };
    assert_eq!(send(&app, request(None, fixture("acr-push.json"))).await.0, StatusCode::UNAUTHORIZED);
    assert_eq!(send(&app, request(Some("Bearer nope"), fixture("acr-push.json"))).await.0, StatusCode::UNAUTHORIZED);
    let (status, body) = send(&app, request(Some("acr-secret"), fixture("acr-ping.json"))).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["status"], "ignored");
    assert_eq!(queued(&app).await, 0);
}

#[tokio::test]
async fn every_sender_route_queues_its_fixture() {
    let app = app().await;
    let github_body = fixture("github-package.json");
    let github_sig = {
        use hmac::{Hmac, Mac};
        let mut mac = Hmac::<sha2::Sha256>::new_from_slice(b"It's a Secret to Everybody").unwrap();
        mac.update(&github_body);
        format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
    };
    let cases: Vec<(Request<Body>, &str)> = vec![
        (
            Request::post("/hooks/distribution")
                .header("content-type", "application/vnd.docker.distribution.events.v1+json")
                .header("x-ferry-secret", "dist-secret")
                .body(Body::from(fixture("distribution-push.json")))
                .unwrap(),
            "dist",
        ),
        (
            Request::post("/hooks/github")
                .header("content-type", "application/json")
                .header("x-hub-signature-256", github_sig)
                .header("x-github-delivery", "72d3162e-cc78-11e3-81ab-4c9367dc0958")
                .body(Body::from(github_body.clone()))
                .unwrap(),
            "ghcr",
        ),
        (
            Request::post("/hooks/dockerhub/hub-token-0123456789")
                .header("content-type", "application/json")
                .body(Body::from(fixture("dockerhub-push.json")))
                .unwrap(),
            "hub",
        ),
        (
            Request::post("/hooks/harbor")
                .header("content-type", "application/cloudevents+json")
                .header("authorization", "Bearer harbor-secret")
                .body(Body::from(fixture("harbor-push-cloudevents.json")))
                .unwrap(),
            "harbor",
        ),
        (
            Request::post("/hooks/quay/quay-token-0123456789")
                .header("content-type", "application/json")
                .body(Body::from(fixture("quay-push.json")))
                .unwrap(),
            "quay",
        ),
    ];
    for (request, pipeline) in cases {
        let (status, body) = send(&app, request).await;
        assert_eq!(status, StatusCode::ACCEPTED, "{pipeline}: {body}");
        assert_eq!(body["jobs"][0]["pipeline"], pipeline, "{body}");
    }
}

#[tokio::test]
async fn wrong_url_tokens_and_github_signatures_are_401() {
    let app = app().await;
    let hub = Request::post("/hooks/dockerhub/guess")
        .header("content-type", "application/json")
        .body(Body::from(fixture("dockerhub-push.json")))
        .unwrap();
    assert_eq!(send(&app, hub).await.0, StatusCode::UNAUTHORIZED);
    let github = Request::post("/hooks/github")
        .header("content-type", "application/json")
        .header("x-hub-signature-256", "sha256=00")
        .body(Body::from(fixture("github-package.json")))
        .unwrap();
    assert_eq!(send(&app, github).await.0, StatusCode::UNAUTHORIZED);
    assert_eq!(queued(&app).await, 0);
}

#[tokio::test]
async fn a_request_two_pipelines_match_starts_a_job_in_each() {
    let mirror = r#"
[[pipelines]]
name = "local-qa"
source = "127.0.0.1:5001/shop/api"
  [[pipelines.stages]]
  name = "qa"
  target = "127.0.0.1:5002/shop/api-qa"
"#;
    let app = app_with(&format!("{CONFIG}{mirror}")).await;
    let (status, body) = send(&app, generic(GENERIC, "generic-secret", &now())).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    let started: Vec<(&str, &str)> = body["jobs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|job| (job["pipeline"].as_str().unwrap(), job["stage"].as_str().unwrap()))
        .collect();
    assert_eq!(started, [("local", "dev"), ("local-qa", "qa")]);

    let deliveries = app.queue.receive(10, std::time::Duration::from_secs(60)).await.unwrap();
    assert_eq!(deliveries.len(), 2);
    for delivery in deliveries {
        // Each job carries the whole request.
        let request = &delivery.payload["request"];
        assert_eq!(request["tag"], "v1", "{}", delivery.payload);
        assert_eq!(request["digest"], "sha256:05b3abf2579a5eb66403cd78be557fd860633a1fe2103c7642030defe32c657f");
    }
}

#[tokio::test]
async fn unmatched_repository_or_tag_is_200_with_a_reason() {
    let app = app().await;
    let other = br#"{"repository":"127.0.0.1:5001/other","tag":"v1"}"#;
    let (status, body) = send(&app, generic(other, "generic-secret", &now())).await;
    assert_eq!(status, StatusCode::OK);
    assert!(body["reason"].as_str().unwrap().contains("no pipeline matches 127.0.0.1:5001/other"), "{body}");
    // The ACR pipeline only takes 1.* tags.
    let wrong_tag = String::from_utf8(fixture("acr-push.json")).unwrap().replace("\"1.8.3\"", "\"2.0.0\"");
    let request = Request::post("/hooks/acr")
        .header("content-type", "application/json")
        .header("authorization", "acr-secret")
        .body(Body::from(wrong_tag))
        .unwrap();
    assert_eq!(send(&app, request).await.0, StatusCode::OK);
    assert_eq!(queued(&app).await, 0);
}

#[tokio::test]
async fn healthz_reports_the_queue() {
    let app = app().await;
    let (status, body) = send(&app, Request::get("/healthz").body(Body::empty()).unwrap()).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["status"], "ok");
}

fn azure_devops(body: Vec<u8>, authorization: Option<&str>) -> Request<Body> {
    let mut request = Request::post("/hooks/azure-devops").header("content-type", "application/json; charset=utf-8");
    if let Some(value) = authorization {
        request = request.header("authorization", value);
    }
    request.body(Body::from(body)).unwrap()
}

/// `Basic base64("ferry:ado-password")`.
const ADO_BASIC: &str = "Basic ZmVycnk6YWRvLXBhc3N3b3Jk";

#[tokio::test]
async fn azure_devops_build_promotes_the_image_its_build_tagged() {
    let app = app().await;
    let (status, body) = send(&app, azure_devops(fixture("azure-devops-build.json"), Some(ADO_BASIC))).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    assert_eq!(body["jobs"][0]["pipeline"], "ado");
    let jobs = app.queue.receive(10, std::time::Duration::from_secs(60)).await.unwrap();
    let payload = &jobs[0].payload;
    assert_eq!(payload["kind"], "promote");
    assert_eq!(payload["request"]["tag"], "build-4711", "the tag template links build and image");
    assert_eq!(payload["request"]["build"]["number"], "20250304.3");
    assert_eq!(payload["request"]["repository"], "shop/web");
}

/// The classic deployment fixture, its environment naming the release definition as the
/// REST API's `ReleaseEnvironment` does.
fn classic_deployment_of(definition: &str) -> Vec<u8> {
    String::from_utf8(fixture("azure-devops-deployment.json"))
        .unwrap()
        .replace(
            "\"rank\": 2,",
            &format!("\"rank\": 2, \"releaseDefinition\": {{ \"id\": 7, \"name\": \"{definition}\" }},"),
        )
        .into_bytes()
}

#[tokio::test]
async fn azure_devops_deployment_is_queued_as_a_report_for_its_stage() {
    let app = app().await;
    let (status, body) = send(&app, azure_devops(classic_deployment_of("shop-api-cd"), Some(ADO_BASIC))).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    assert_eq!(body["jobs"][0]["stage"], "staging");
    let jobs = app.queue.receive(10, std::time::Duration::from_secs(60)).await.unwrap();
    assert_eq!(jobs[0].payload["kind"], "deployment");
    assert_eq!(jobs[0].payload["report"]["status"], "succeeded");

    // The current shape (`resource.deployment`) is accepted the same way.
    let current =
        String::from_utf8(fixture("azure-devops-deployment-current.json")).unwrap().replace("\"Dev\"", "\"Staging\"");
    let (status, body) = send(&app, azure_devops(current.into_bytes(), Some(ADO_BASIC))).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    assert_eq!(body["jobs"][0]["stage"], "staging");
}

#[tokio::test]
async fn a_release_report_concerns_only_the_pipeline_bound_to_its_definition_and_project() {
    // Two pipelines with a `dev` stage; only `bound` is bound to release definition 7.
    let extra = r#"
[[pipelines]]
name = "bound"
source = "127.0.0.1:5001/team-a/api"
  [pipelines.azure_devops]
  release_definition = "7"
  project = "Shop"
  [[pipelines.stages]]
  name = "dev"
  target = "127.0.0.1:5002/team-a/api"

[[pipelines]]
name = "unbound"
source = "127.0.0.1:5001/team-b/api"
  [[pipelines.stages]]
  name = "dev"
  target = "127.0.0.1:5002/team-b/api"
"#;
    let app = app_with(&format!("{CONFIG}{extra}")).await;
    let current = || String::from_utf8(fixture("azure-devops-deployment-current.json")).unwrap();
    let (status, body) = send(&app, azure_devops(current().into_bytes(), Some(ADO_BASIC))).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    let started: Vec<(&str, &str)> = body["jobs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|j| (j["pipeline"].as_str().unwrap(), j["stage"].as_str().unwrap()))
        .collect();
    assert_eq!(started, [("bound", "dev")], "only the bound pipeline hears of it");
    let jobs = app.queue.receive(10, std::time::Duration::from_secs(60)).await.unwrap();
    assert_eq!(jobs.len(), 1);
    assert_eq!(jobs[0].payload["pipeline"], "bound");

    // Another project, or a definition nobody is bound to: ignored, saying why.
    let (status, body) =
        send(&app, azure_devops(current().replace("\"Shop\"", "\"Other\"").into_bytes(), Some(ADO_BASIC))).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let reason = body["reason"].as_str().unwrap();
    assert!(reason.contains("pipeline `bound` takes reports of project `Shop` only"), "{reason}");
    assert!(reason.contains("pipeline `unbound` has no azure_devops.release_definition"), "{reason}");
    let (status, body) = send(&app, azure_devops(fixture("azure-devops-deployment.json"), Some(ADO_BASIC))).await;
    assert_eq!(status, StatusCode::OK, "a report naming no release definition cannot be tied: {body}");
    assert!(body["reason"].as_str().unwrap().contains("names no release definition"), "{body}");
    assert_eq!(queued(&app).await, 0);
}

#[tokio::test]
async fn a_release_report_naming_builds_carries_the_build_of_the_pipelines_build_definition() {
    let app = app().await;
    let report =
        String::from_utf8(fixture("azure-devops-deployment-artifacts.json")).unwrap().replace("\"Dev\"", "\"Staging\"");
    let (status, body) = send(&app, azure_devops(report.clone().into_bytes(), Some(ADO_BASIC))).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    let jobs = app.queue.receive(10, std::time::Duration::from_secs(60)).await.unwrap();
    assert_eq!(jobs[0].payload["pipeline"], "ado");
    assert_eq!(jobs[0].payload["build_number"], "20250304.3", "{}", jobs[0].payload);
    // The release deployed a build of another definition only: not this pipeline's image.
    let foreign =
        report.replace("\"shop-api-ci\"", "\"billing-ci\"").replace("\"42\"", "\"43\"").replace("c3f9a2d4", "c3f9a2d5");
    let (status, body) = send(&app, azure_devops(foreign.into_bytes(), Some(ADO_BASIC))).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert!(body["reason"].as_str().unwrap().contains("deployed no build of its build definition"), "{body}");
}

#[tokio::test]
async fn azure_devops_needs_basic_auth() {
    let app = app().await;
    assert_eq!(send(&app, azure_devops(fixture("azure-devops-build.json"), None)).await.0, StatusCode::UNAUTHORIZED);
    let wrong = "Basic ZmVycnk6bm9wZQ==";
    assert_eq!(
        send(&app, azure_devops(fixture("azure-devops-build.json"), Some(wrong))).await.0,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(queued(&app).await, 0);
}

#[tokio::test]
async fn unconfigured_sender_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let config = Config::parse("[registries.\"r.io\"]\n", "empty.toml").unwrap();
    let queue = Arc::new(SqliteQueue::open(&dir.path().join("q.db"), SqliteQueueOptions::default()).unwrap());
    let app = App { router: router(Arc::new(Intake::new(&config, queue.clone()).unwrap())), queue, _dir: dir };
    let (status, body) = send(&app, generic(GENERIC, "generic-secret", &now())).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert!(body["error"].as_str().unwrap().contains("not configured"), "{body}");
}

/// A request to `route` carrying `body`, authenticated as that sender expects (or not at all).
fn authenticated(route: &str, body: &[u8], content_type: &str, authenticate: bool) -> Request<Body> {
    let mut request = Request::post(route).header("content-type", content_type);
    if authenticate {
        request = match route {
            "/hooks/acr" => request.header("authorization", "Bearer acr-secret"),
            "/hooks/distribution" => request.header("x-ferry-secret", "dist-secret"),
            "/hooks/harbor" => request.header("authorization", "harbor-secret"),
            "/hooks/azure-devops" => request.header("authorization", ADO_BASIC),
            "/hooks/github" => {
                use hmac::{Hmac, Mac};
                let mut mac = Hmac::<sha2::Sha256>::new_from_slice(b"It's a Secret to Everybody").unwrap();
                mac.update(body);
                request.header("x-hub-signature-256", format!("sha256={}", hex::encode(mac.finalize().into_bytes())))
            }
            "/hooks/generic" => {
                let ts = now();
                request
                    .header(TIMESTAMP_HEADER, &ts)
                    .header(SIGNATURE_HEADER, generic_signature(b"generic-secret", &ts, body))
            }
            _ => request,
        };
    }
    request.body(Body::from(body.to_vec())).unwrap()
}

/// Every route, with the URL token where the sender uses one.
const ROUTES: &[(&str, &str)] = &[
    ("/hooks/acr", "acr-push.json"),
    ("/hooks/azure-devops", "azure-devops-build.json"),
    ("/hooks/distribution", "distribution-push.json"),
    ("/hooks/dockerhub/hub-token-0123456789", "dockerhub-push.json"),
    ("/hooks/github", "github-package.json"),
    ("/hooks/harbor", "harbor-push.json"),
    ("/hooks/quay/quay-token-0123456789", "quay-push.json"),
    ("/hooks/generic", "generic.json"),
];

#[tokio::test]
async fn every_route_refuses_missing_secrets_malformed_json_wrong_types_and_oversize_bodies() {
    let app = app().await;
    for (route, fixture_name) in ROUTES {
        let body = fixture(fixture_name);
        let url_token = route.starts_with("/hooks/dockerhub") || route.starts_with("/hooks/quay");
        if !url_token {
            let (status, reply) = send(&app, authenticated(route, &body, "application/json", false)).await;
            assert_eq!(status, StatusCode::UNAUTHORIZED, "{route} without its secret: {reply}");
        }
        let (status, reply) = send(&app, authenticated(route, b"{\"truncated\": [", "application/json", true)).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{route} with malformed JSON: {reply}");
        assert!(reply["error"].as_str().is_some_and(|e| !e.is_empty()), "{route}: the 400 says what is wrong");
        let (status, _) = send(&app, authenticated(route, &body, "text/plain", true)).await;
        assert_eq!(status, StatusCode::UNSUPPORTED_MEDIA_TYPE, "{route} with text/plain");
        let big = vec![b' '; 8192];
        let (status, _) = send(&app, authenticated(route, &big, "application/json", true)).await;
        assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE, "{route} oversize");
    }
    assert_eq!(queued(&app).await, 0, "nothing refused was queued");
}

#[tokio::test]
async fn every_route_queues_each_delivery_once_however_often_it_is_sent() {
    let app = app().await;
    for (route, fixture_name) in ROUTES {
        let body = fixture(fixture_name);
        let mut ids = std::collections::HashSet::new();
        for attempt in 0..3u64 {
            let request = if *route == "/hooks/generic" {
                // A resend of the very same signed request is a replay; a sender's retry signs
                // again with a new timestamp.
                let ts = (SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs() - attempt).to_string();
                generic(&body, "generic-secret", &ts)
            } else {
                authenticated(route, &body, "application/json", true)
            };
            let (status, reply) = send(&app, request).await;
            assert_eq!(status, StatusCode::ACCEPTED, "{route}: {reply}");
            for job in reply["jobs"].as_array().unwrap() {
                ids.insert(job["id"].as_str().unwrap().to_string());
            }
        }
        let expected = if fixture_name.starts_with("quay") { 2 } else { 1 };
        assert_eq!(ids.len(), expected, "{route}: redeliveries name the same jobs");
    }
}

#[tokio::test]
async fn a_registry_host_that_is_not_configured_is_never_queued() {
    let app = app().await;
    // Same repository path as a configured pipeline, on a host nobody configured.
    for host in ["evil.example.com", "169.254.169.254", "127.0.0.1:5999"] {
        let body = format!(r#"{{"repository":"{host}/shop/api","tag":"v1"}}"#);
        let (status, reply) = send(&app, generic(body.as_bytes(), "generic-secret", &now())).await;
        assert_eq!(status, StatusCode::OK, "{host}: {reply}");
        assert_eq!(reply["status"], "ignored");
    }
    let acr =
        String::from_utf8(fixture("acr-push.json")).unwrap().replace("contosodev.azurecr.io", "attacker.azurecr.io");
    let request = Request::post("/hooks/acr")
        .header("content-type", "application/json")
        .header("authorization", "acr-secret")
        .body(Body::from(acr))
        .unwrap();
    assert_eq!(send(&app, request).await.0, StatusCode::OK);
    assert_eq!(queued(&app).await, 0);
}

/// Receives every queued job and acks it, as the worker does once a promotion is done.
async fn promote_everything(app: &App) -> usize {
    let deliveries = app.queue.receive(100, std::time::Duration::from_secs(60)).await.unwrap();
    for delivery in &deliveries {
        app.queue.ack(&delivery.receipt).await.unwrap();
    }
    deliveries.len()
}

fn job_of(body: &serde_json::Value) -> (String, bool) {
    let job = &body["jobs"][0];
    (job["id"].as_str().unwrap().to_string(), job["duplicate"].as_bool().unwrap())
}

#[tokio::test]
async fn a_tag_pushed_again_after_its_promotion_is_a_new_job() {
    let app = app().await;
    // Docker Hub: the callback URL names the push; a redelivery carries the same one.
    let hub = |callback: &str| {
        let body = String::from_utf8(fixture("dockerhub-push.json"))
            .unwrap()
            .replace("3c0ffee1d2e4a5b6c7d8e9f0a1b2c3d4", callback);
        Request::post("/hooks/dockerhub/hub-token-0123456789")
            .header("content-type", "application/json")
            .body(Body::from(body))
            .unwrap()
    };
    let (first, duplicate) = job_of(&send(&app, hub("push-one")).await.1);
    assert!(!duplicate);
    assert_eq!(promote_everything(&app).await, 1);
    let (again, duplicate) = job_of(&send(&app, hub("push-one")).await.1);
    assert_eq!((again.as_str(), duplicate), (first.as_str(), true), "a redelivery of the same push");
    let (second, duplicate) = job_of(&send(&app, hub("push-two")).await.1);
    assert!(!duplicate && second != first, "the tag pushed again was swallowed");
    assert_eq!(promote_everything(&app).await, 1);

    // Quay names no push at all: the same tag merges only while its job is not worked on yet.
    let quay = || {
        let body = br#"{"repository":"contoso/api","docker_url":"quay.io/contoso/api","updated_tags":["latest"]}"#;
        Request::post("/hooks/quay/quay-token-0123456789")
            .header("content-type", "application/json")
            .body(Body::from(body.to_vec()))
            .unwrap()
    };
    let (first, _) = job_of(&send(&app, quay()).await.1);
    let (pending, duplicate) = job_of(&send(&app, quay()).await.1);
    assert_eq!((pending.as_str(), duplicate), (first.as_str(), true), "not resolved yet: one job");
    assert_eq!(promote_everything(&app).await, 1);
    let (second, duplicate) = job_of(&send(&app, quay()).await.1);
    assert!(!duplicate && second != first, "Quay's second push of `latest` was swallowed");

    // A generic tag-only push: its `id` names the push when given, else the same rule as Quay.
    let tag_only = |id: &str| format!(r#"{{"repository":"127.0.0.1:5001/shop/api","tag":"latest"{id}}}"#);
    let earlier = (now().parse::<u64>().unwrap() - 2).to_string();
    let (first, _) = job_of(&send(&app, generic(tag_only("").as_bytes(), "generic-secret", &earlier)).await.1);
    promote_everything(&app).await;
    let (second, duplicate) = job_of(&send(&app, generic(tag_only("").as_bytes(), "generic-secret", &now())).await.1);
    assert!(!duplicate && second != first, "the generic re-push was swallowed");
    promote_everything(&app).await;
    let with_id = tag_only(r#","id":"ci-run-7""#);
    let (first, _) = job_of(&send(&app, generic(with_id.as_bytes(), "generic-secret", &now())).await.1);
    promote_everything(&app).await;
    let ts = (now().parse::<u64>().unwrap() - 1).to_string();
    let (again, duplicate) = job_of(&send(&app, generic(with_id.as_bytes(), "generic-secret", &ts)).await.1);
    assert_eq!((again.as_str(), duplicate), (first.as_str(), true), "a resend of run 7 is run 7");
}

#[tokio::test]
async fn a_new_tag_on_a_known_digest_is_a_new_job_and_only_the_same_digest_and_tag_is_a_duplicate() {
    let app = app().await;
    let push = |tag: &str, ts: u64| {
        let body = format!(
            r#"{{"repository":"127.0.0.1:5001/shop/api","tag":"{tag}","digest":"sha256:05b3abf2579a5eb66403cd78be557fd860633a1fe2103c7642030defe32c657f"}}"#
        );
        generic(body.as_bytes(), "generic-secret", &ts.to_string())
    };
    let t: u64 = now().parse().unwrap();
    let (first, _) = job_of(&send(&app, push("1.4.2", t)).await.1);
    assert_eq!(promote_everything(&app).await, 1);
    let (stable, duplicate) = job_of(&send(&app, push("stable", t)).await.1);
    assert!(!duplicate && stable != first, "`stable` on the promoted digest was swallowed");
    let (again, duplicate) = job_of(&send(&app, push("1.4.2", t - 1)).await.1);
    assert_eq!((again.as_str(), duplicate), (first.as_str(), true), "same digest and tag: one push");
    assert_eq!(promote_everything(&app).await, 1);
}

fn acr(body: String) -> Request<Body> {
    Request::post("/hooks/acr")
        .header("content-type", "application/json")
        .header("authorization", "Bearer acr-secret")
        .body(Body::from(body))
        .unwrap()
}

#[tokio::test]
async fn an_ignored_push_says_which_filter_refused_it() {
    let app = app().await;
    let acr_push = || String::from_utf8(fixture("acr-push.json")).unwrap();
    let (status, body) = send(&app, acr(acr_push().replace("\"1.8.3\"", "\"2.0.0\""))).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let reason = body["reason"].as_str().unwrap();
    assert!(reason.contains("pipeline `acr` does not take tag `2.0.0`") && reason.contains("1.*"), "{reason}");
    assert!(!reason.contains("no pipeline matches"), "{reason}");

    // Pushed by digest: no tag for the filter to take.
    let by_digest = acr_push().replace(",\n    \"tag\": \"1.8.3\"", "");
    assert!(!by_digest.contains("1.8.3"), "the fixture's tag line changed: {by_digest}");
    let (status, body) = send(&app, acr(by_digest)).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert!(body["reason"].as_str().unwrap().contains("names no tag (pushed by digest)"), "{body}");

    // A generic repository without a host names Docker Hub, which the reason points out.
    let (status, body) =
        send(&app, generic(br#"{"repository":"shop/api","tag":"v1"}"#, "generic-secret", &now())).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let reason = body["reason"].as_str().unwrap();
    assert!(reason.contains("docker.io/shop/api") && reason.contains("must include the registry host"), "{reason}");
    assert_eq!(queued(&app).await, 0);
}

#[tokio::test]
async fn a_sender_starts_only_the_registries_and_pipelines_its_source_names() {
    let scoped = CONFIG
        .replace(
            "[sources.acr]\nsecret_env = \"ROUTER_TEST_ACR\"",
            "[sources.acr]\nsecret_env = \"ROUTER_TEST_ACR\"\nregistries = [\"127.0.0.1:5001\"]",
        )
        .replace(
            "[sources.generic]\nsecret_env = \"ROUTER_TEST_GENERIC\"",
            "[sources.generic]\nsecret_env = \"ROUTER_TEST_GENERIC\"\npipelines = [\"dist\"]",
        );
    assert_ne!(scoped, CONFIG);
    let app = app_with(&scoped).await;
    // The ACR secret names a registry outside its list: refused, nothing queued.
    let (status, body) = send(&app, acr(String::from_utf8(fixture("acr-push.json")).unwrap())).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let reason = body["reason"].as_str().unwrap();
    assert!(reason.contains("source `acr` may not start pipelines of registry contosodev.azurecr.io"), "{reason}");
    assert_eq!(queued(&app).await, 0);
    // Within its list it works as before.
    let local = String::from_utf8(fixture("acr-push.json"))
        .unwrap()
        .replace("contosodev.azurecr.io", "127.0.0.1:5001")
        .replace("\"1.8.3\"", "\"v1\"");
    let (status, body) = send(&app, acr(local)).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    assert_eq!(body["jobs"][0]["pipeline"], "local");
    // The generic secret may start `dist` only.
    let (status, body) = send(&app, generic(GENERIC, "generic-secret", &now())).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert!(body["reason"].as_str().unwrap().contains("may not start pipeline `local`"), "{body}");
    let dist = br#"{"repository":"registry.dev.example.com/shop/api","tag":"v1"}"#;
    let (status, body) = send(&app, generic(dist, "generic-secret", &now())).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    assert_eq!(body["jobs"][0]["pipeline"], "dist");
}

#[tokio::test]
async fn a_replay_is_refused_however_its_signature_is_spelled_and_across_a_restart() {
    use ferry_core::intake::replay::SqliteReplayGuard;
    let dir = tempfile::tempdir().unwrap();
    let replay_path = dir.path().join("replay.db");
    let guarded = |app: &App| {
        let secret = dir.path().join("generic.secret").display().to_string();
        let text = format!(
            "[registries.\"127.0.0.1:5001\"]\n[registries.\"127.0.0.1:5002\"]\n[sources.generic]\nsecret_file = {secret:?}\n\
             [[pipelines]]\nname = \"local\"\nsource = \"127.0.0.1:5001/shop/api\"\n\
             [[pipelines.stages]]\nname = \"dev\"\ntarget = \"127.0.0.1:5002/shop/api\"\n"
        );
        let config = Config::parse(&text, "t.toml").unwrap();
        let now_ms = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_millis() as i64;
        let guard = SqliteReplayGuard::open(&replay_path, Intake::replay_window(&config), now_ms).unwrap();
        let intake =
            Intake::new(&config, app.queue.clone() as Arc<dyn JobQueue>).unwrap().with_replay_guard(Arc::new(guard));
        router(Arc::new(intake))
    };
    std::fs::write(dir.path().join("generic.secret"), "generic-secret").unwrap();
    let app = app().await;
    let ts = now();
    let signature = generic_signature(b"generic-secret", &ts, GENERIC);
    let hex = signature.trim_start_matches("sha256=").to_string();
    let request = |signature: &str| {
        Request::post("/hooks/generic")
            .header("content-type", "application/json")
            .header(TIMESTAMP_HEADER, &ts)
            .header(SIGNATURE_HEADER, signature)
            .body(Body::from(GENERIC.to_vec()))
            .unwrap()
    };
    let first = guarded(&app);
    let status = |router: &axum::Router, signature: String| {
        let router = router.clone();
        let request = request(&signature);
        async move { router.oneshot(request).await.unwrap().status() }
    };
    assert_eq!(status(&first, signature.clone()).await, StatusCode::ACCEPTED);
    for spelling in [hex.to_uppercase(), hex.clone(), format!("SHA256={hex}"), format!("sha256={}", hex.to_uppercase())]
    {
        assert_eq!(status(&first, spelling.clone()).await, StatusCode::UNAUTHORIZED, "{spelling} passed as new");
    }
    drop(first);
    // A new process with the same data_dir: the guard read back from replay.db.
    let second = guarded(&app);
    assert_eq!(status(&second, hex.to_uppercase()).await, StatusCode::UNAUTHORIZED, "a replay after a restart");
    assert_eq!(status(&second, signature).await, StatusCode::UNAUTHORIZED, "a replay after a restart");
}

#[tokio::test]
async fn an_azure_devops_status_that_is_not_a_known_value_is_400_and_queues_nothing() {
    let app = app().await;
    let forged = String::from_utf8(fixture("azure-devops-deployment-current.json"))
        .unwrap()
        .replace("\"Dev\"", "\"Staging\"")
        .replace("\"status\": \"succeeded\"", "\"status\": \"succeeded\\n2026-01-01 INFO approved \\u001b[2J\"");
    let (status, body) = send(&app, azure_devops(forged.into_bytes(), Some(ADO_BASIC))).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    let error = body["error"].as_str().unwrap();
    assert!(error.contains("is not one Azure DevOps sends; expected one of succeeded,"), "{error}");
    assert!(!error.chars().any(char::is_control), "the message quotes the value escaped: {error:?}");
    assert_eq!(queued(&app).await, 0);
}

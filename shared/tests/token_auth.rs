//! The bearer-token challenge flow against a fake registry + token service (the real
//! `docker-registry` needs a JWT-signing token server to do this; its basic-auth mode is covered
//! by the CLI tests). The fake follows distribution's token spec: 401 with a `Bearer`
//! challenge, `GET realm?service&scope` with basic auth, or the OAuth2 `POST` refresh grant.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::extract::{Query, RawQuery, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use ferry_core::registry::CopyError;
use ferry_core::registry::auth::{Credential, Secret};
use ferry_core::registry::client::{ClientOptions, RegistryClient, UploadStart, http_client, pull_scope, push_scope};
use ferry_core::registry::reference::Digest;

#[derive(Default)]
struct Fake {
    port: Mutex<u16>,
    token_requests: AtomicUsize,
    /// Scopes granted per issued token.
    tokens: Mutex<HashMap<String, Vec<String>>>,
}

fn challenge(fake: &Fake, scope: &str) -> Response {
    let port = *fake.port.lock().unwrap();
    (
        StatusCode::UNAUTHORIZED,
        [(
            header::WWW_AUTHENTICATE,
            format!(r#"Bearer realm="http://127.0.0.1:{port}/token",service="fake-registry",scope="{scope}""#),
        )],
        r#"{"errors":[{"code":"UNAUTHORIZED","message":"authentication required"}]}"#,
    )
        .into_response()
}

/// The scopes the bearer token on this request grants, if any.
fn granted(fake: &Fake, headers: &HeaderMap) -> Vec<String> {
    let token = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or_default();
    fake.tokens.lock().unwrap().get(token).cloned().unwrap_or_default()
}

fn issue(fake: &Fake, scopes: Vec<String>) -> Response {
    let n = fake.token_requests.fetch_add(1, Ordering::SeqCst);
    let token = format!("token-{n}");
    fake.tokens.lock().unwrap().insert(token.clone(), scopes);
    axum::Json(serde_json::json!({ "token": token, "expires_in": 300 })).into_response()
}

async fn token_get(State(fake): State<Arc<Fake>>, headers: HeaderMap, RawQuery(query): RawQuery) -> Response {
    // "ferry:s3cret"
    if headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok()) != Some("Basic ZmVycnk6czNjcmV0") {
        return (StatusCode::UNAUTHORIZED, r#"{"errors":[{"code":"UNAUTHORIZED","message":"bad credentials"}]}"#)
            .into_response();
    }
    let scopes = url::form_urlencoded::parse(query.unwrap_or_default().as_bytes())
        .filter(|(k, _)| k == "scope")
        .map(|(_, v)| v.to_string())
        .collect();
    // Many transfers start at once; a slow token service makes duplicate fetches visible.
    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    issue(&fake, scopes)
}

async fn token_post(State(fake): State<Arc<Fake>>, body: String) -> Response {
    let form: Vec<(String, String)> = url::form_urlencoded::parse(body.as_bytes()).into_owned().collect();
    let field = |k: &str| form.iter().find(|(key, _)| key == k).map(|(_, v)| v.clone());
    if field("grant_type").as_deref() != Some("refresh_token")
        || field("refresh_token").as_deref() != Some("acr-refresh")
    {
        return StatusCode::UNAUTHORIZED.into_response();
    }
    issue(&fake, form.iter().filter(|(k, _)| k == "scope").map(|(_, v)| v.clone()).collect())
}

async fn head_blob(State(fake): State<Arc<Fake>>, headers: HeaderMap) -> Response {
    let scope = "repository:prod/api:pull";
    if !granted(&fake, &headers).iter().any(|s| s == scope || s == "repository:prod/api:pull,push") {
        return challenge(&fake, scope);
    }
    StatusCode::NOT_FOUND.into_response()
}

async fn start_upload(
    State(fake): State<Arc<Fake>>,
    headers: HeaderMap,
    Query(query): Query<HashMap<String, String>>,
) -> Response {
    let scopes = granted(&fake, &headers);
    if !scopes.iter().any(|s| s == "repository:prod/api:pull,push") {
        return challenge(&fake, "repository:prod/api:pull,push");
    }
    if query.get("from").map(String::as_str) == Some("dev/api") && scopes.iter().any(|s| s == "repository:dev/api:pull")
    {
        return (StatusCode::CREATED, [(header::LOCATION, "/v2/prod/api/blobs/sha256:x")]).into_response();
    }
    (StatusCode::ACCEPTED, [(header::LOCATION, "/v2/prod/api/blobs/uploads/session-1")]).into_response()
}

async fn fake_registry() -> (Arc<Fake>, String) {
    let fake = Arc::new(Fake::default());
    let app = Router::new()
        .route("/token", get(token_get).post(token_post))
        .route("/v2/prod/api/blobs/{digest}", axum::routing::head(head_blob))
        .route("/v2/prod/api/blobs/uploads/", post(start_upload))
        .with_state(fake.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    *fake.port.lock().unwrap() = port;
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (fake, format!("127.0.0.1:{port}"))
}

fn client(host: &str, credential: Credential) -> Arc<RegistryClient> {
    let options = ClientOptions { plain_http: vec![host.to_string()], ..ClientOptions::default() };
    RegistryClient::new(http_client(&options).unwrap(), host, &options, Some(credential)).unwrap()
}

fn basic(password: &str) -> Credential {
    Credential::Basic { username: "ferry".into(), password: Secret::new(password) }
}

#[tokio::test]
async fn concurrent_requests_share_one_token_fetch() {
    let (fake, host) = fake_registry().await;
    let client = client(&host, basic("s3cret"));
    let digest = Digest::sha256_of(b"layer");
    // The first request learns the challenge (and gets a pull token) ...
    let pull = vec![pull_scope("prod/api")];
    assert_eq!(client.head_blob("prod/api", &digest, &pull).await.unwrap(), None);
    assert_eq!(fake.token_requests.load(Ordering::SeqCst), 1);
    // ... then eight transfers start at once with a scope no token covers yet: one fetch.
    let push = vec![push_scope("prod/api")];
    let all = futures_util::future::join_all((0..8).map(|_| client.head_blob("prod/api", &digest, &push))).await;
    assert!(all.iter().all(|r| matches!(r, Ok(None))));
    assert_eq!(fake.token_requests.load(Ordering::SeqCst), 2, "concurrent requests share one token fetch");
    // And later requests reuse the cached tokens.
    client.head_blob("prod/api", &digest, &pull).await.unwrap();
    assert_eq!(fake.token_requests.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn mount_asks_for_pull_on_the_source_repository() {
    let (_fake, host) = fake_registry().await;
    let client = client(&host, basic("s3cret"));
    let digest = Digest::sha256_of(b"layer");
    let mounted = client.start_upload("prod/api", Some((&digest, "dev/api"))).await.unwrap();
    assert!(matches!(mounted, UploadStart::Mounted), "a token without dev/api pull would have been refused");
    let session = client.start_upload("prod/api", None).await.unwrap();
    let UploadStart::Session(url) = session else { panic!("expected an upload session") };
    assert_eq!(url.as_str(), format!("http://{host}/v2/prod/api/blobs/uploads/session-1"));
}

#[tokio::test]
async fn refresh_tokens_use_the_oauth2_grant() {
    let (fake, host) = fake_registry().await;
    let client = client(&host, Credential::IdentityToken(Secret::new("acr-refresh")));
    let scope = vec![push_scope("prod/api")];
    assert_eq!(client.head_blob("prod/api", &Digest::sha256_of(b"x"), &scope).await.unwrap(), None);
    assert_eq!(fake.token_requests.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn a_wrong_password_names_the_registry_and_scope() {
    let (_fake, host) = fake_registry().await;
    let client = client(&host, basic("wrong"));
    let scope = vec![push_scope("prod/api")];
    let err = client.head_blob("prod/api", &Digest::sha256_of(b"x"), &scope).await.unwrap_err();
    assert!(matches!(err, CopyError::Auth { .. }), "{err:?}");
    let text = err.to_string();
    assert!(text.contains(&host) && text.contains("repository:prod/api:pull,push"), "{text}");
    assert!(!text.contains("wrong"), "the password never appears in errors: {text}");
}

//! Tests in a real headless Chromium (chromedriver, `support::browser`): the harness itself and
//! the fake OIDC provider's authorization-code + PKCE sign-in, end to end with a tiny relying
//! party that verifies the ID token against the provider's JWKS.

mod support;

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use axum::extract::{Query, State};
use axum::http::{StatusCode, header};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::get;
use jsonwebtoken::jwk::JwkSet;
use jsonwebtoken::{DecodingKey, Validation};
use serde_json::{Value, json};
use support::azure::Background;
use support::browser::Browser;
use support::oidc::{FakeOidcProvider, pkce_challenge};

const CLIENT_ID: &str = "ferry-console-test";
const WAIT: Duration = Duration::from_secs(30);

/// What the relying party needs between `/login` and `/callback`.
struct RpState {
    issuer: String,
    /// Its own base URL, known once it listens.
    base: OnceLock<String>,
    /// state → (PKCE verifier, nonce) of logins under way.
    pending: Mutex<HashMap<String, (String, String)>>,
}

/// A relying party as a web console is one: `/login` sends the browser to the provider with a
/// PKCE challenge, `/callback` exchanges the code with the verifier and checks the ID token.
struct RelyingParty {
    server: Background,
}

impl RelyingParty {
    fn start(provider: &FakeOidcProvider) -> Self {
        let state =
            Arc::new(RpState { issuer: provider.issuer(), base: OnceLock::new(), pending: Mutex::new(HashMap::new()) });
        let app =
            axum::Router::new().route("/login", get(login)).route("/callback", get(callback)).with_state(state.clone());
        let server = Background::serve(app);
        state.base.set(server.url()).expect("set once");
        RelyingParty { server }
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.server.url())
    }
}

/// A 64-character random string of URL-safe characters (a PKCE verifier, state or nonce).
fn random_token() -> String {
    format!("{}{}", uuid::Uuid::new_v4().simple(), uuid::Uuid::new_v4().simple())
}

async fn discovery(issuer: &str) -> Value {
    let url = format!("{issuer}/.well-known/openid-configuration");
    reqwest::get(&url).await.expect("discovery answers").json().await.expect("discovery JSON")
}

fn failure(status: StatusCode, message: String) -> Response {
    (status, Html(format!("<!doctype html><p id=error>{message}</p>"))).into_response()
}

async fn login(State(rp): State<Arc<RpState>>) -> Response {
    let config = discovery(&rp.issuer).await;
    let (verifier, state, nonce) = (random_token(), random_token(), random_token());
    rp.pending.lock().unwrap().insert(state.clone(), (verifier.clone(), nonce.clone()));
    let mut authorize = url::Url::parse(config["authorization_endpoint"].as_str().expect("authorization_endpoint"))
        .expect("authorization_endpoint URL");
    authorize
        .query_pairs_mut()
        .append_pair("response_type", "code")
        .append_pair("client_id", CLIENT_ID)
        .append_pair("redirect_uri", &format!("{}/callback", rp.base.get().unwrap()))
        .append_pair("scope", "openid profile")
        .append_pair("state", &state)
        .append_pair("nonce", &nonce)
        .append_pair("code_challenge", &pkce_challenge(&verifier))
        .append_pair("code_challenge_method", "S256");
    (StatusCode::FOUND, [(header::LOCATION, authorize.to_string())]).into_response()
}

async fn callback(State(rp): State<Arc<RpState>>, Query(query): Query<HashMap<String, String>>) -> Response {
    let Some((verifier, nonce)) = query.get("state").and_then(|s| rp.pending.lock().unwrap().remove(s)) else {
        return failure(StatusCode::BAD_REQUEST, "unknown state".into());
    };
    let Some(code) = query.get("code") else {
        return failure(StatusCode::BAD_REQUEST, "no code".into());
    };
    let config = discovery(&rp.issuer).await;
    let form = [
        ("grant_type", "authorization_code"),
        ("code", code),
        ("redirect_uri", &format!("{}/callback", rp.base.get().unwrap())),
        ("client_id", CLIENT_ID),
        ("code_verifier", &verifier),
    ];
    let answer = reqwest::Client::new()
        .post(config["token_endpoint"].as_str().expect("token_endpoint"))
        .form(&form)
        .send()
        .await
        .expect("token endpoint answers");
    let status = answer.status();
    let tokens: Value = answer.json().await.expect("token JSON");
    if !status.is_success() {
        return failure(StatusCode::BAD_GATEWAY, format!("token endpoint: {status} {tokens}"));
    }
    let jwks: JwkSet = reqwest::get(config["jwks_uri"].as_str().expect("jwks_uri"))
        .await
        .expect("JWKS answers")
        .json()
        .await
        .expect("JWKS JSON");
    let claims = match verify_id_token(tokens["id_token"].as_str().unwrap_or(""), &jwks, &rp.issuer) {
        Ok(claims) => claims,
        Err(message) => return failure(StatusCode::UNAUTHORIZED, message),
    };
    if claims["nonce"] != nonce {
        return failure(StatusCode::UNAUTHORIZED, format!("nonce {} is not the one sent", claims["nonce"]));
    }
    let name = claims["name"].as_str().unwrap_or("?").to_string();
    let cookie = format!("rp_session={}; HttpOnly; SameSite=Lax; Path=/", random_token());
    (
        [(header::SET_COOKIE, cookie)],
        Html(format!("<!doctype html><title>Signed in</title><p id=who>signed in as {name}</p>")),
    )
        .into_response()
}

/// The ID token's claims once its signature (by a key of the JWKS), issuer, audience and
/// lifetime check out.
fn verify_id_token(token: &str, jwks: &JwkSet, issuer: &str) -> Result<Value, String> {
    let header = jsonwebtoken::decode_header(token).map_err(|e| format!("ID token header: {e}"))?;
    let kid = header.kid.ok_or("ID token names no kid")?;
    let jwk = jwks.find(&kid).ok_or(format!("kid {kid} not in the JWKS"))?;
    let key = DecodingKey::from_jwk(jwk).map_err(|e| format!("JWK {kid}: {e}"))?;
    let mut validation = Validation::new(header.alg);
    validation.set_audience(&[CLIENT_ID]);
    validation.set_issuer(&[issuer]);
    validation.set_required_spec_claims(&["exp", "nbf", "iss", "aud", "sub"]);
    jsonwebtoken::decode::<Value>(token, &key, &validation)
        .map(|data| data.claims)
        .map_err(|e| format!("ID token: {e}"))
}

#[test]
fn oidc_sign_in_in_headless_chromium() {
    let provider = FakeOidcProvider::start();
    provider.add_user("bob", "Bob Builder", &["approvers"]);
    let rp = RelyingParty::start(&provider);

    let browser = Browser::start();
    let first_page = Instant::now();
    browser.goto(&rp.url("/login"));
    browser.wait_for("#username", WAIT);
    eprintln!(
        "browser timing: chromedriver + Chromium session {:?}, then the first page (login → sign-in form) {:?}",
        browser.started_in(),
        first_page.elapsed()
    );
    assert!(
        browser.current_url().starts_with(&provider.authorization_endpoint()),
        "the relying party sent the browser to the provider's authorization endpoint, not {}",
        browser.current_url()
    );
    assert_eq!(browser.text_of("#client"), CLIENT_ID);

    browser.fill("#username", "bob");
    browser.click("#sign-in");
    let landed = browser.wait_for_url("/callback?code=", WAIT);
    assert!(landed.starts_with(&rp.url("/callback?code=")), "{landed}");
    let who = browser.wait_for_text("#who", "signed in as", WAIT);
    assert_eq!(who, "signed in as Bob Builder");
    assert_eq!((provider.codes_issued(), provider.tokens_issued(), provider.token_refusals()), (1, 1, 0));

    // The session cookie's flags, as the browser stored them.
    let session = browser.cookie("rp_session").expect("the relying party's session cookie");
    assert!(session.http_only, "{session:?}");
    assert!(!session.secure, "{session:?}");
    assert_eq!(session.same_site.as_deref(), Some("Lax"), "{session:?}");
    assert_eq!(session.path.as_deref(), Some("/"), "{session:?}");
    // HttpOnly: the page's script cannot see it.
    assert_eq!(browser.script("return document.cookie", vec![]), json!(""));

    // Setting a value keeps the flags; deleting them all signs the browser out.
    browser.set_cookie("rp_session", "tampered");
    let tampered = browser.cookie("rp_session").expect("the replaced cookie");
    assert_eq!(
        (tampered.value.as_str(), tampered.http_only, tampered.same_site.as_deref()),
        ("tampered", true, Some("Lax"))
    );
    browser.delete_all_cookies();
    assert!(browser.cookies().is_empty(), "{:?}", browser.cookies());

    let screenshot = browser.screenshot("oidc-signed-in");
    let png = std::fs::read(&screenshot).expect("read the screenshot");
    assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n", "{} is a PNG", screenshot.display());
    assert_eq!(&png[12..16], b"IHDR");
    let width = u32::from_be_bytes(png[16..20].try_into().unwrap());
    let height = u32::from_be_bytes(png[20..24].try_into().unwrap());
    assert!(width >= 1000 && height >= 500, "the 1400×1000 window's viewport, not {width}×{height}");
    eprintln!("screenshot {} ({width}×{height}, {} bytes)", screenshot.display(), png.len());

    // Someone the provider was never told about signs in under their username.
    browser.goto(&rp.url("/login"));
    browser.fill("#username", "carol");
    browser.click("#sign-in");
    assert_eq!(browser.wait_for_text("#who", "signed in as", WAIT), "signed in as carol");
    assert_eq!((provider.codes_issued(), provider.tokens_issued()), (2, 2));
}

/// The authorization request's parameters for `verifier`, with `redirect_uri`.
fn authorize_params(redirect_uri: &str, verifier: &str) -> Vec<(&'static str, String)> {
    vec![
        ("response_type", "code".into()),
        ("client_id", CLIENT_ID.into()),
        ("redirect_uri", redirect_uri.into()),
        ("scope", "openid profile".into()),
        ("state", "state-1".into()),
        ("nonce", "nonce-1".into()),
        ("code_challenge", pkce_challenge(verifier)),
        ("code_challenge_method", "S256".into()),
    ]
}

/// Signs `username` in (the form's POST) and returns the code the redirect carries.
async fn sign_in(
    http: &reqwest::Client,
    provider: &FakeOidcProvider,
    redirect_uri: &str,
    verifier: &str,
    username: &str,
) -> String {
    let mut form = authorize_params(redirect_uri, verifier);
    form.push(("username", username.into()));
    let answer = http.post(provider.authorization_endpoint()).form(&form).send().await.expect("authorize answers");
    assert_eq!(answer.status(), 302);
    let location = answer.headers()[header::LOCATION].to_str().unwrap().to_string();
    let location = url::Url::parse(&location).expect("redirect URL");
    assert!(location.as_str().starts_with(redirect_uri), "{location}");
    let query: HashMap<_, _> = location.query_pairs().into_owned().collect();
    assert_eq!(query["state"], "state-1");
    query["code"].clone()
}

async fn exchange(
    http: &reqwest::Client,
    provider: &FakeOidcProvider,
    code: &str,
    redirect_uri: &str,
    verifier: &str,
) -> (u16, Value) {
    let form = [
        ("grant_type", "authorization_code"),
        ("code", code),
        ("redirect_uri", redirect_uri),
        ("client_id", CLIENT_ID),
        ("code_verifier", verifier),
    ];
    let answer = http.post(provider.token_endpoint()).form(&form).send().await.expect("token answers");
    (answer.status().as_u16(), answer.json().await.expect("token JSON"))
}

#[tokio::test]
async fn fake_provider_refuses_bad_requests_reused_codes_and_wrong_verifiers() {
    let provider = FakeOidcProvider::start();
    provider.add_user("alice", "Alice Approver", &["approvers", "admins"]);
    provider.set_token_lifetime(Duration::from_secs(120));
    let http = reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).build().unwrap();
    let redirect_uri = "http://127.0.0.1:9/callback";
    let verifier = random_token();

    let config = discovery(&provider.issuer()).await;
    assert_eq!(config["authorization_endpoint"], provider.authorization_endpoint());
    assert_eq!(config["token_endpoint"], provider.token_endpoint());
    assert_eq!(config["response_types_supported"], json!(["code"]));
    assert_eq!(config["code_challenge_methods_supported"], json!(["S256"]));

    // The sign-in page, and refusals of requests without PKCE S256.
    let page = http
        .get(provider.authorization_endpoint())
        .query(&authorize_params(redirect_uri, &verifier))
        .send()
        .await
        .unwrap();
    assert_eq!(page.status(), 200);
    let html = page.text().await.unwrap();
    for needle in ["<form method=post>", "id=username", "id=sign-in", "name=code_challenge value="] {
        assert!(html.contains(needle), "sign-in page lacks {needle}: {html}");
    }
    let mut plain = authorize_params(redirect_uri, &verifier);
    plain[7].1 = "plain".into();
    let mut no_challenge = authorize_params(redirect_uri, &verifier);
    no_challenge.remove(6);
    for (params, why) in [(plain, "code_challenge_method"), (no_challenge, "code_challenge is missing")] {
        let refused = http.get(provider.authorization_endpoint()).query(&params).send().await.unwrap();
        assert_eq!(refused.status(), 400);
        let page = refused.text().await.unwrap();
        assert!(page.contains(why), "{page}");
    }

    // A good exchange: a real signed ID token with the registered identity and lifetime.
    let code = sign_in(&http, &provider, redirect_uri, &verifier, "alice").await;
    let (status, tokens) = exchange(&http, &provider, &code, redirect_uri, &verifier).await;
    assert_eq!(status, 200, "{tokens}");
    assert_eq!((tokens["token_type"].as_str(), tokens["expires_in"].as_i64()), (Some("Bearer"), Some(120)));
    let jwks: JwkSet = reqwest::get(config["jwks_uri"].as_str().unwrap()).await.unwrap().json().await.unwrap();
    let claims =
        verify_id_token(tokens["id_token"].as_str().unwrap(), &jwks, &provider.issuer()).expect("a valid ID token");
    assert_eq!(
        (&claims["sub"], &claims["name"], &claims["groups"], &claims["nonce"], &claims["aud"]),
        (
            &json!("alice"),
            &json!("Alice Approver"),
            &json!(["approvers", "admins"]),
            &json!("nonce-1"),
            &json!(CLIENT_ID)
        )
    );
    assert_eq!(claims["exp"].as_i64().unwrap() - claims["iat"].as_i64().unwrap(), 120);
    verify_id_token(tokens["access_token"].as_str().unwrap(), &jwks, &provider.issuer())
        .expect("a signed access token");

    // The same code again.
    let (status, refused) = exchange(&http, &provider, &code, redirect_uri, &verifier).await;
    assert_eq!((status, &refused["error"]), (400, &json!("invalid_grant")), "{refused}");
    // A fresh code with another verifier; it is spent by the failed attempt.
    let code = sign_in(&http, &provider, redirect_uri, &verifier, "alice").await;
    let (status, refused) = exchange(&http, &provider, &code, redirect_uri, &random_token()).await;
    assert_eq!((status, &refused["error"]), (400, &json!("invalid_grant")), "{refused}");
    let (status, refused) = exchange(&http, &provider, &code, redirect_uri, &verifier).await;
    assert_eq!((status, &refused["error"]), (400, &json!("invalid_grant")), "{refused}");
    // A fresh code redeemed for another redirect_uri.
    let code = sign_in(&http, &provider, redirect_uri, &verifier, "alice").await;
    let (status, refused) = exchange(&http, &provider, &code, "http://127.0.0.1:9/elsewhere", &verifier).await;
    assert_eq!((status, &refused["error"]), (400, &json!("invalid_grant")), "{refused}");

    assert_eq!((provider.codes_issued(), provider.tokens_issued(), provider.token_refusals()), (3, 1, 4));

    // A confidential client must send its secret.
    provider.set_client_secret(CLIENT_ID, "s3cret");
    let code = sign_in(&http, &provider, redirect_uri, &verifier, "alice").await;
    let (status, refused) = exchange(&http, &provider, &code, redirect_uri, &verifier).await;
    assert_eq!((status, &refused["error"]), (401, &json!("invalid_client")), "{refused}");
}

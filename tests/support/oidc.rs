//! A fake OIDC provider for the identity tests: an axum server on 127.0.0.1:0 serving a
//! discovery document and a JWKS, minting REAL signed JWTs (ES256 with a P-256 key generated
//! here, or RS256 with an RSA key `openssl` generates).
//! Its key can be rotated (the JWKS then serves only the new key) and it counts JWKS fetches.
//!
//! It also signs people in the way a browser meets an OIDC provider: authorization code with
//! PKCE (S256 only). `GET /authorize` shows a sign-in page (`#username`, `#sign-in`) that
//! accepts any username, `POST /authorize` redirects back with a one-time code, and `POST /token`
//! exchanges it for an ID token (a real JWT signed with the current key; `aud` = the client id,
//! `sub` = the username, `name` and `groups` as registered with
//! [`FakeOidcProvider::add_user`]). Codes, tokens and refused token requests are counted.

use std::collections::HashMap;
use std::sync::atomic::{AtomicI64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use aws_lc_rs::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, KeyPair as _};
use axum::Json;
use axum::extract::{RawQuery, State};
use axum::http::{StatusCode, header};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{get, post};
use base64::Engine as _;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{Value, json};
use sha2::{Digest as _, Sha256};

use super::azure::Background;

/// A signing key and the JWK that publishes it.
pub struct SigningKey {
    pub kid: String,
    alg: Algorithm,
    encoding: EncodingKey,
    jwk: Value,
}

impl SigningKey {
    pub fn generate(kid: &str) -> Self {
        let pair = EcdsaKeyPair::generate(&ECDSA_P256_SHA256_FIXED_SIGNING).expect("generate a P-256 key");
        let pkcs8 = pair.to_pkcs8v1().expect("PKCS#8 of the key");
        // The public key is the uncompressed point: 0x04, x (32 bytes), y (32 bytes).
        let point = pair.public_key().as_ref().to_vec();
        assert_eq!((point.len(), point[0]), (65, 4), "uncompressed P-256 point");
        let b64 = |bytes: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes);
        let jwk = json!({
            "kty": "EC", "crv": "P-256", "alg": "ES256", "use": "sig", "kid": kid,
            "x": b64(&point[1..33]), "y": b64(&point[33..65]),
        });
        SigningKey { kid: kid.into(), alg: Algorithm::ES256, encoding: EncodingKey::from_ec_der(pkcs8.as_ref()), jwk }
    }

    /// An RS256 key: a 2048-bit RSA key from `openssl genpkey`, as PKCS#1 DER, and its modulus.
    pub fn generate_rsa(kid: &str) -> Self {
        let dir = tempfile::tempdir().expect("temp dir for the RSA key");
        let pem = dir.path().join("key.pem");
        let der = dir.path().join("key.der");
        let openssl = |args: &[&std::ffi::OsStr]| {
            let out = std::process::Command::new("openssl").args(args).output().expect("run openssl");
            assert!(out.status.success(), "openssl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
            String::from_utf8(out.stdout).unwrap()
        };
        let os = |s: &'static str| std::ffi::OsStr::new(s);
        openssl(&[
            os("genpkey"),
            os("-algorithm"),
            os("RSA"),
            os("-pkeyopt"),
            os("rsa_keygen_bits:2048"),
            os("-out"),
            pem.as_os_str(),
        ]);
        openssl(&[
            os("rsa"),
            os("-in"),
            pem.as_os_str(),
            os("-traditional"),
            os("-outform"),
            os("DER"),
            os("-out"),
            der.as_os_str(),
        ]);
        let modulus = openssl(&[os("rsa"), os("-in"), pem.as_os_str(), os("-noout"), os("-modulus")]);
        let modulus = hex::decode(modulus.trim().trim_start_matches("Modulus=")).expect("hex modulus");
        let b64 = |bytes: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes);
        // openssl genpkey's public exponent is 65537.
        let jwk = json!({ "kty": "RSA", "alg": "RS256", "use": "sig", "kid": kid, "n": b64(&modulus), "e": "AQAB" });
        let encoding = EncodingKey::from_rsa_der(&std::fs::read(&der).expect("read the DER key"));
        SigningKey { kid: kid.into(), alg: Algorithm::RS256, encoding, jwk }
    }

    /// A JWT over `claims`, signed with this key, naming `kid` in its header.
    pub fn sign(&self, claims: &Value) -> String {
        let mut header = Header::new(self.alg);
        header.kid = Some(self.kid.clone());
        jsonwebtoken::encode(&header, claims, &self.encoding).expect("sign a JWT")
    }
}

/// What the provider's routes share with the test.
struct Published {
    issuer: String,
    keys: Mutex<Vec<Value>>,
    jwks_fetches: AtomicUsize,
    /// The key new tokens are signed with.
    key: Mutex<Arc<SigningKey>>,
    /// username → (display name, groups).
    users: Mutex<HashMap<String, (String, Vec<String>)>>,
    /// client_id → the secret its token requests must carry.
    client_secrets: Mutex<HashMap<String, String>>,
    /// Outstanding authorization codes; a token request removes its code whatever its outcome.
    codes: Mutex<HashMap<String, Grant>>,
    token_lifetime_s: AtomicI64,
    /// Claims merged into the next ID token only (a hostile or broken provider).
    next_id_token_override: Mutex<Option<Value>>,
    codes_issued: AtomicUsize,
    tokens_issued: AtomicUsize,
    token_refusals: AtomicUsize,
}

impl Published {
    fn new(issuer: String, key: Arc<SigningKey>) -> Self {
        Published {
            issuer,
            keys: Mutex::new(vec![key.jwk.clone()]),
            jwks_fetches: AtomicUsize::new(0),
            key: Mutex::new(key),
            users: Mutex::new(HashMap::new()),
            client_secrets: Mutex::new(HashMap::new()),
            codes: Mutex::new(HashMap::new()),
            token_lifetime_s: AtomicI64::new(3600),
            next_id_token_override: Mutex::new(None),
            codes_issued: AtomicUsize::new(0),
            tokens_issued: AtomicUsize::new(0),
            token_refusals: AtomicUsize::new(0),
        }
    }
}

/// What an authorization code was issued for.
#[derive(Clone)]
struct Grant {
    client_id: String,
    redirect_uri: String,
    code_challenge: String,
    nonce: String,
    scope: String,
    username: String,
}

pub struct FakeOidcProvider {
    server: Background,
    published: Arc<Published>,
}

pub const AUDIENCE: &str = "ferry-api";

impl FakeOidcProvider {
    pub fn start() -> Self {
        // The issuer URL must be known before the router serves it: bind first, then build.
        let placeholder = Arc::new(Published::new(String::new(), Arc::new(SigningKey::generate("placeholder"))));
        let slot = Arc::new(Mutex::new(placeholder));
        let app = axum::Router::new()
            .route("/.well-known/openid-configuration", get(discovery))
            .route("/jwks", get(jwks))
            .route("/authorize", get(authorize_page).post(authorize_sign_in))
            .route("/token", post(token))
            .with_state(slot.clone());
        let server = Background::serve(app);
        let published = Arc::new(Published::new(server.url(), Arc::new(SigningKey::generate("key-1"))));
        *slot.lock().unwrap() = published.clone();
        FakeOidcProvider { server, published }
    }

    pub fn issuer(&self) -> String {
        self.server.url()
    }

    /// `{issuer}/authorize`, as the discovery document lists it.
    pub fn authorization_endpoint(&self) -> String {
        format!("{}/authorize", self.issuer())
    }

    /// `{issuer}/token`, as the discovery document lists it.
    pub fn token_endpoint(&self) -> String {
        format!("{}/token", self.issuer())
    }

    /// A new key replaces the old one in the JWKS; tokens are signed with it from now on.
    pub fn rotate(&self, kid: &str) -> Arc<SigningKey> {
        self.rotate_to(SigningKey::generate(kid))
    }

    /// Like [`FakeOidcProvider::rotate`], to `key`.
    pub fn rotate_to(&self, key: SigningKey) -> Arc<SigningKey> {
        let key = Arc::new(key);
        *self.published.keys.lock().unwrap() = vec![key.jwk.clone()];
        *self.published.key.lock().unwrap() = key.clone();
        key
    }

    pub fn jwks_fetches(&self) -> usize {
        self.published.jwks_fetches.load(Ordering::SeqCst)
    }

    /// Who `username` is when they sign in: the `name` and `groups` claims of their tokens.
    /// Usernames never added sign in too, with `name` = the username and no groups.
    pub fn add_user(&self, username: &str, display_name: &str, groups: &[&str]) {
        let groups = groups.iter().map(|g| g.to_string()).collect();
        self.published.users.lock().unwrap().insert(username.into(), (display_name.into(), groups));
    }

    /// From now on token requests for `client_id` must carry `client_secret` (else 401
    /// `invalid_client`); without this any client may exchange codes (a public client).
    pub fn set_client_secret(&self, client_id: &str, client_secret: &str) {
        self.published.client_secrets.lock().unwrap().insert(client_id.into(), client_secret.into());
    }

    /// Lifetime (`exp` − `iat`, and `expires_in`) of tokens issued from now on; 3600 s at start.
    pub fn set_token_lifetime(&self, lifetime: std::time::Duration) {
        self.published.token_lifetime_s.store(lifetime.as_secs() as i64, Ordering::SeqCst);
    }

    /// The next ID token the token endpoint issues carries these claims in place of its own
    /// (`exp` in the past, another `aud`, a wrong `nonce` …), signed with the current key as
    /// usual; later tokens are normal again.
    pub fn override_next_id_token(&self, claims: Value) {
        *self.published.next_id_token_override.lock().unwrap() = Some(claims);
    }

    /// Authorization codes handed out by sign-ins.
    pub fn codes_issued(&self) -> usize {
        self.published.codes_issued.load(Ordering::SeqCst)
    }

    /// Successful token requests.
    pub fn tokens_issued(&self) -> usize {
        self.published.tokens_issued.load(Ordering::SeqCst)
    }

    /// Token requests answered with an error.
    pub fn token_refusals(&self) -> usize {
        self.published.token_refusals.load(Ordering::SeqCst)
    }

    /// Valid claims for `sub` (issuer, audience, an hour of validity); tests change them.
    pub fn claims(&self, sub: &str, name: &str, groups: &[&str]) -> Value {
        let now = now_s();
        json!({
            "iss": self.issuer(), "aud": AUDIENCE, "sub": sub, "name": name, "groups": groups,
            "iat": now, "nbf": now - 5, "exp": now + 3600,
        })
    }

    /// `claims` signed with the current key.
    pub fn sign(&self, claims: &Value) -> String {
        self.published.key.lock().unwrap().sign(claims)
    }

    /// A valid token for `sub`.
    pub fn token(&self, sub: &str, name: &str, groups: &[&str]) -> String {
        self.sign(&self.claims(sub, name, groups))
    }
}

/// `BASE64URL(SHA256(verifier))`, the S256 code challenge of RFC 7636 (for relying parties in
/// the tests).
pub fn pkce_challenge(verifier: &str) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(Sha256::digest(verifier.as_bytes()))
}

pub fn now_s() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs() as i64
}

type Slot = Arc<Mutex<Arc<Published>>>;

async fn discovery(State(slot): State<Slot>) -> Json<Value> {
    let published = slot.lock().unwrap().clone();
    Json(json!({
        "issuer": published.issuer,
        "jwks_uri": format!("{}/jwks", published.issuer),
        "authorization_endpoint": format!("{}/authorize", published.issuer),
        "token_endpoint": format!("{}/token", published.issuer),
        "response_types_supported": ["code"],
        "grant_types_supported": ["authorization_code"],
        "code_challenge_methods_supported": ["S256"],
        "subject_types_supported": ["public"],
        "scopes_supported": ["openid", "profile"],
        "token_endpoint_auth_methods_supported": ["none", "client_secret_post"],
        "id_token_signing_alg_values_supported": ["ES256", "RS256"],
    }))
}

async fn jwks(State(slot): State<Slot>) -> Json<Value> {
    let published = slot.lock().unwrap().clone();
    published.jwks_fetches.fetch_add(1, Ordering::SeqCst);
    let keys = published.keys.lock().unwrap().clone();
    Json(json!({ "keys": keys }))
}

/// The query or form parameters of a request, the last value of each name winning.
fn parameters(encoded: &[u8]) -> HashMap<String, String> {
    url::form_urlencoded::parse(encoded).into_owned().collect()
}

/// The parameters `GET /authorize` needs, in the order the sign-in form carries them.
const AUTHORIZE_PARAMETERS: [&str; 8] = [
    "response_type",
    "client_id",
    "redirect_uri",
    "scope",
    "state",
    "nonce",
    "code_challenge",
    "code_challenge_method",
];

/// Checks an authorization request; what is wrong with it, for the 400 page.
fn check_authorize(params: &HashMap<String, String>) -> Result<(), String> {
    for name in AUTHORIZE_PARAMETERS {
        if params.get(name).is_none_or(|v| v.is_empty()) {
            return Err(format!("the parameter {name} is missing"));
        }
    }
    if params["response_type"] != "code" {
        return Err(format!("response_type {:?} is not supported: only \"code\"", params["response_type"]));
    }
    if params["code_challenge_method"] != "S256" {
        return Err(format!(
            "code_challenge_method {:?} is not supported: only \"S256\"",
            params["code_challenge_method"]
        ));
    }
    if !params["scope"].split(' ').any(|s| s == "openid") {
        return Err(format!("scope {:?} lacks \"openid\"", params["scope"]));
    }
    match url::Url::parse(&params["redirect_uri"]) {
        Ok(uri) if matches!(uri.scheme(), "http" | "https") => Ok(()),
        _ => Err(format!("redirect_uri {:?} is not an http(s) URL", params["redirect_uri"])),
    }
}

fn escape_html(text: &str) -> String {
    text.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;").replace('\'', "&#39;")
}

fn error_page(message: &str) -> Response {
    let body = format!(
        "<!doctype html><title>Sign-in refused</title><h1>Sign-in refused</h1><p id=error>{}</p>",
        escape_html(message)
    );
    (StatusCode::BAD_REQUEST, Html(body)).into_response()
}

/// `GET /authorize`: the sign-in page, carrying the request's parameters in hidden fields.
async fn authorize_page(RawQuery(query): RawQuery) -> Response {
    let params = parameters(query.unwrap_or_default().as_bytes());
    if let Err(message) = check_authorize(&params) {
        return error_page(&message);
    }
    let hidden: String = AUTHORIZE_PARAMETERS
        .iter()
        .map(|name| format!("<input type=hidden name={name} value=\"{}\">", escape_html(&params[*name])))
        .collect();
    Html(format!(
        "<!doctype html><title>Sign in to the fake OIDC provider</title>\
         <h1>Sign in</h1><p>Client <code id=client>{client}</code></p>\
         <form method=post>{hidden}<label for=username>Username</label> \
         <input id=username name=username autocomplete=off> <button id=sign-in type=submit>Sign in</button></form>",
        client = escape_html(&params["client_id"]),
    ))
    .into_response()
}

/// `POST /authorize`: the signed-in user's one-time code, sent back to the relying party.
async fn authorize_sign_in(State(slot): State<Slot>, body: axum::body::Bytes) -> Response {
    let published = slot.lock().unwrap().clone();
    let params = parameters(&body);
    if let Err(message) = check_authorize(&params) {
        return error_page(&message);
    }
    let username = params.get("username").map(|u| u.trim().to_string()).unwrap_or_default();
    if username.is_empty() {
        return error_page("enter a username");
    }
    let code = uuid::Uuid::new_v4().simple().to_string();
    let grant = Grant {
        client_id: params["client_id"].clone(),
        redirect_uri: params["redirect_uri"].clone(),
        code_challenge: params["code_challenge"].clone(),
        nonce: params["nonce"].clone(),
        scope: params["scope"].clone(),
        username,
    };
    published.codes.lock().unwrap().insert(code.clone(), grant);
    published.codes_issued.fetch_add(1, Ordering::SeqCst);
    let mut back = url::Url::parse(&params["redirect_uri"]).expect("checked above");
    back.query_pairs_mut().append_pair("code", &code).append_pair("state", &params["state"]);
    (StatusCode::FOUND, [(header::LOCATION, back.to_string())]).into_response()
}

/// A refused token request, counted.
fn token_error(published: &Published, status: StatusCode, error: &str, description: &str) -> Response {
    published.token_refusals.fetch_add(1, Ordering::SeqCst);
    (status, Json(json!({ "error": error, "error_description": description }))).into_response()
}

/// `POST /token`: an authorization code and its PKCE verifier for an ID token.
async fn token(State(slot): State<Slot>, headers: axum::http::HeaderMap, body: axum::body::Bytes) -> Response {
    let published = slot.lock().unwrap().clone();
    let form_type = headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or("");
    if !form_type.starts_with("application/x-www-form-urlencoded") {
        let description = format!("the body must be application/x-www-form-urlencoded, not {form_type:?}");
        return token_error(&published, StatusCode::BAD_REQUEST, "invalid_request", &description);
    }
    let params = parameters(&body);
    if params.get("grant_type").map(String::as_str) != Some("authorization_code") {
        let description = "only grant_type=authorization_code";
        return token_error(&published, StatusCode::BAD_REQUEST, "unsupported_grant_type", description);
    }
    for name in ["code", "redirect_uri", "client_id", "code_verifier"] {
        if params.get(name).is_none_or(|v| v.is_empty()) {
            let description = format!("the parameter {name} is missing");
            return token_error(&published, StatusCode::BAD_REQUEST, "invalid_request", &description);
        }
    }
    let secret = published.client_secrets.lock().unwrap().get(&params["client_id"]).cloned();
    if secret.is_some_and(|secret| params.get("client_secret") != Some(&secret)) {
        return token_error(&published, StatusCode::UNAUTHORIZED, "invalid_client", "wrong or missing client_secret");
    }
    // Removed whatever happens next: a code is good for one attempt.
    let Some(grant) = published.codes.lock().unwrap().remove(&params["code"]) else {
        return token_error(&published, StatusCode::BAD_REQUEST, "invalid_grant", "unknown or already used code");
    };
    if grant.client_id != params["client_id"] || grant.redirect_uri != params["redirect_uri"] {
        let description = "the code was issued to another client_id or redirect_uri";
        return token_error(&published, StatusCode::BAD_REQUEST, "invalid_grant", description);
    }
    let verifier = &params["code_verifier"];
    let well_formed = (43..=128).contains(&verifier.len())
        && verifier.bytes().all(|b| b.is_ascii_alphanumeric() || b"-._~".contains(&b));
    if !well_formed || pkce_challenge(verifier) != grant.code_challenge {
        let description = "code_verifier does not match the code_challenge";
        return token_error(&published, StatusCode::BAD_REQUEST, "invalid_grant", description);
    }

    let (name, groups) = published
        .users
        .lock()
        .unwrap()
        .get(&grant.username)
        .cloned()
        .unwrap_or_else(|| (grant.username.clone(), Vec::new()));
    let now = now_s();
    let lifetime = published.token_lifetime_s.load(Ordering::SeqCst);
    let claims = json!({
        "iss": published.issuer, "aud": grant.client_id, "sub": grant.username, "name": name,
        "groups": groups, "nonce": grant.nonce, "iat": now, "nbf": now - 5, "exp": now + lifetime,
    });
    let mut id_claims = claims.clone();
    if let Some(Value::Object(changed)) = published.next_id_token_override.lock().unwrap().take() {
        id_claims.as_object_mut().expect("claims object").extend(changed);
    }
    let key = published.key.lock().unwrap().clone();
    let id_token = key.sign(&id_claims);
    // The access token carries the same identity (no nonce), for relying parties that pass it on.
    let mut access_claims = claims.clone();
    access_claims.as_object_mut().expect("claims object").remove("nonce");
    let access_token = key.sign(&access_claims);
    published.tokens_issued.fetch_add(1, Ordering::SeqCst);
    (
        [(header::CACHE_CONTROL, "no-store")],
        Json(json!({
            "access_token": access_token, "token_type": "Bearer", "expires_in": lifetime,
            "id_token": id_token, "scope": grant.scope,
        })),
    )
        .into_response()
}

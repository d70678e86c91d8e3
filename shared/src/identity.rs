//! Who is calling the operations API, and what they may do (`[identity]`).
//!
//! A request carries `Authorization: Bearer …` with one of: an OIDC JWT from a configured issuer
//! (`[[identity.oidc]]`), a static per-user token whose SHA-256 is in `[[identity.users]]`, or the
//! shared operator token (break-glass for automation: the acting name is then whatever
//! `X-Ferry-User` claims, recorded as unverified). Roles come from `[[identity.grants]]`, per
//! pipeline and stage.

use std::time::{Duration, Instant};

use jsonwebtoken::jwk::JwkSet;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::Deserialize;
use serde_json::Value;
use sha2::{Digest as _, Sha256};
use tokio::sync::Mutex;

use crate::intake::verify::secrets_equal;

/// Clock skew tolerated on `exp` and `nbf`, in seconds.
pub const LEEWAY_S: u64 = 30;

/// `[identity]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IdentityConfig {
    #[serde(default)]
    pub oidc: Vec<OidcIssuer>,
    #[serde(default)]
    pub users: Vec<StaticUser>,
    #[serde(default)]
    pub grants: Vec<Grant>,
    /// How long a console sign-in lasts, in seconds.
    #[serde(default = "default_session_ttl_s")]
    pub session_ttl_s: u64,
    /// Environment variable holding the key console session cookies are sealed with (at least
    /// 32 characters). Without it (and `session_key_arn`) `ferry serve` picks a random key at
    /// start: sessions then end when it restarts. Set it wherever several instances serve the
    /// console (the API function on AWS).
    pub session_key_env: Option<String>,
    /// Or the Secrets Manager secret / SSM SecureString parameter (ARN) holding it.
    pub session_key_arn: Option<String>,
}

fn default_session_ttl_s() -> u64 {
    8 * 3600
}

impl Default for IdentityConfig {
    fn default() -> Self {
        IdentityConfig {
            oidc: Vec::new(),
            users: Vec::new(),
            grants: Vec::new(),
            session_ttl_s: default_session_ttl_s(),
            session_key_env: None,
            session_key_arn: None,
        }
    }
}

impl IdentityConfig {
    /// Whether any identity is configured (else only the operator token opens the API).
    pub fn is_on(&self) -> bool {
        !self.oidc.is_empty() || !self.users.is_empty()
    }

    /// Problems `ferry serve` refuses to start with.
    pub fn check(&self) -> Result<(), String> {
        for (i, issuer) in self.oidc.iter().enumerate() {
            let url = crate::deploy::azure::endpoint_url(&format!("identity.oidc[{i}].issuer"), &issuer.issuer)
                .map_err(|e| e.to_string())?;
            if url.host_str().is_none() {
                return Err(format!("identity.oidc[{i}].issuer: `{}` has no host", issuer.issuer));
            }
            if issuer.audience.is_empty() {
                return Err(format!("identity.oidc[{i}].audience: empty; set the client id tokens are issued for"));
            }
        }
        let mut names = std::collections::HashSet::new();
        for (i, user) in self.users.iter().enumerate() {
            crate::person::canonical(&user.name).map_err(|e| format!("identity.users[{i}].name: {e}"))?;
            if !names.insert(user.name.clone()) {
                return Err(format!("identity.users[{i}].name: `{}` is listed twice", user.name));
            }
            parse_token_hash(&user.token_hash).map_err(|e| format!("identity.users[{i}].token_hash: {e}"))?;
        }
        for (i, grant) in self.grants.iter().enumerate() {
            if grant.subject.is_some() == grant.group.is_some() {
                return Err(format!("identity.grants[{i}]: set exactly one of `subject` and `group`"));
            }
            if grant.stage.is_some() && grant.pipeline.is_none() {
                return Err(format!("identity.grants[{i}]: `stage` needs `pipeline`"));
            }
        }
        Ok(())
    }
}

/// `[[identity.oidc]]`: an issuer whose bearer JWTs are accepted.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OidcIssuer {
    /// E.g. `https://login.microsoftonline.com/{tenant}/v2.0`; `http://` only for loopback.
    pub issuer: String,
    /// The `aud` tokens must carry (the client id of Ferry's app registration).
    pub audience: String,
    #[serde(default = "default_subject_claim")]
    pub subject_claim: String,
    /// Default: `name`, then `preferred_username`.
    pub name_claim: Option<String>,
    #[serde(default = "default_groups_claim")]
    pub groups_claim: String,
    /// PEM CA to trust for the discovery document and JWKS.
    pub ca_cert: Option<std::path::PathBuf>,
    /// Least time between two JWKS fetches caused by an unknown `kid`, in seconds.
    #[serde(default = "default_jwks_refetch_s")]
    pub jwks_refetch_s: u64,
    /// The client id of Ferry's app registration for console sign-in (authorization code +
    /// PKCE). Without it this issuer's tokens are accepted on the API but the console offers no
    /// sign-in with it (e.g. GitHub Actions' issuer, which signs workflows in, not people).
    pub client_id: Option<String>,
    /// Environment variable holding the client secret, for providers that require one of a web
    /// app (Entra ID "Web" platform); PKCE alone otherwise.
    pub client_secret_env: Option<String>,
    /// What the sign-in button says: "Sign in with {label}". Default: the issuer's host.
    pub label: Option<String>,
    #[serde(default = "default_scopes")]
    pub scopes: Vec<String>,
}

fn default_scopes() -> Vec<String> {
    vec!["openid".into(), "profile".into()]
}

fn default_subject_claim() -> String {
    "sub".into()
}
fn default_groups_claim() -> String {
    "groups".into()
}
fn default_jwks_refetch_s() -> u64 {
    60
}

/// `[[identity.users]]`: a person with a static token, stored as its hash.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StaticUser {
    pub name: String,
    /// `sha256:<hex>`, as `ferry token hash` prints it.
    pub token_hash: String,
    #[serde(default)]
    pub groups: Vec<String>,
}

/// `[[identity.grants]]`: `role` for a subject or group, on every pipeline or one (and on every
/// stage of it or one).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Grant {
    pub subject: Option<String>,
    pub group: Option<String>,
    pub role: Role,
    pub pipeline: Option<String>,
    pub stage: Option<String>,
}

/// Each role includes the ones before it: an approver may read, an operator may approve, an
/// admin may do everything.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Viewer,
    Approver,
    Operator,
    Admin,
}

impl std::fmt::Display for Role {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Role::Viewer => "viewer",
            Role::Approver => "approver",
            Role::Operator => "operator",
            Role::Admin => "admin",
        })
    }
}

/// How a request proved who is calling.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Channel {
    Oidc,
    UserToken,
    /// The shared operator token: the name is as claimed, unverified.
    OperatorToken,
}

impl Channel {
    pub fn as_str(self) -> &'static str {
        match self {
            Channel::Oidc => "oidc",
            Channel::UserToken => "user-token",
            Channel::OperatorToken => "operator-token",
        }
    }
}

/// The caller of one request.
#[derive(Debug, Clone)]
pub struct Caller {
    /// What the ledger records as the acting person: `sub@issuer-host` for OIDC, the user's name
    /// for a static token, the claimed `X-Ferry-User` (if any) for the operator token.
    pub subject: Option<String>,
    /// A name for people to read (the name claim); the subject when there is none.
    pub display: Option<String>,
    pub groups: Vec<String>,
    pub channel: Channel,
}

impl Caller {
    /// Whether the subject was proven (not merely claimed).
    pub fn verified(&self) -> bool {
        self.channel != Channel::OperatorToken
    }

    /// How the request reached Ferry, recorded beside an approval and in the audit log.
    pub fn via(&self) -> String {
        match self.channel {
            Channel::OperatorToken => crate::person::VIA_OPERATOR_TOKEN.into(),
            channel => match &self.display {
                Some(name) if Some(name) != self.subject.as_ref() => format!("{} ({name})", channel.as_str()),
                _ => channel.as_str().into(),
            },
        }
    }

    /// The highest role granted in `scope`. The operator token is admin.
    pub fn role(&self, grants: &[Grant], scope: Scope<'_>) -> Option<Role> {
        if self.channel == Channel::OperatorToken {
            return Some(Role::Admin);
        }
        let subject = self.subject.as_deref()?;
        grants
            .iter()
            .filter(|g| {
                g.subject.as_deref() == Some(subject)
                    || g.group.as_ref().is_some_and(|group| self.groups.contains(group))
            })
            .filter(|g| match scope {
                Scope::Anywhere => true,
                Scope::Everywhere => g.pipeline.is_none(),
                Scope::Pipeline(p) => g.pipeline.as_deref().is_none_or(|gp| gp == p) && g.stage.is_none(),
                Scope::Stage(p, s) => {
                    g.pipeline.as_deref().is_none_or(|gp| gp == p) && g.stage.as_deref().is_none_or(|gs| gs == s)
                }
            })
            .map(|g| g.role)
            .max()
    }
}

/// Where a role is needed.
#[derive(Debug, Clone, Copy)]
pub enum Scope<'a> {
    /// On some pipeline (a read that names none).
    Anywhere,
    /// On every pipeline (a grant without `pipeline`): e.g. a dead letter no pipeline is known for.
    Everywhere,
    /// On the whole pipeline.
    Pipeline(&'a str),
    Stage(&'a str, &'a str),
}

impl std::fmt::Display for Scope<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Scope::Anywhere => f.write_str("on any pipeline"),
            Scope::Everywhere => f.write_str("on every pipeline (a grant without `pipeline`)"),
            Scope::Pipeline(p) => write!(f, "on pipeline {p}"),
            Scope::Stage(p, s) => write!(f, "on stage {s} of pipeline {p}"),
        }
    }
}

/// Why a bearer token was refused (401).
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error("missing bearer token (Authorization: Bearer …)")]
    Missing,
    #[error("unknown token: neither the operator token, a JWT, nor a token in [[identity.users]]")]
    UnknownToken,
    #[error("JWT refused: {0}")]
    Jwt(String),
    /// The issuer's discovery document or JWKS could not be fetched (503: try again).
    #[error("JWT not checked: {0}")]
    IssuerUnavailable(String),
}

/// Checks bearer tokens against `[identity]`; keeps each issuer's keys.
pub struct Authenticator {
    config: IdentityConfig,
    issuers: Vec<IssuerKeys>,
    users: Vec<(StaticUser, [u8; 32])>,
}

struct IssuerKeys {
    config: OidcIssuer,
    host: String,
    http: reqwest::Client,
    client_secret: Option<crate::registry::auth::Secret>,
    cache: Mutex<KeyCache>,
}

/// What an issuer's discovery document says about where things are.
#[derive(Debug, Clone, Deserialize)]
pub struct Discovery {
    pub issuer: String,
    pub jwks_uri: String,
    pub authorization_endpoint: Option<String>,
    pub token_endpoint: Option<String>,
}

/// An issuer the console offers sign-in with.
#[derive(Debug, Clone)]
pub struct LoginIssuer {
    pub index: usize,
    pub label: String,
    pub client_id: String,
    pub scopes: Vec<String>,
}

#[derive(Default)]
struct KeyCache {
    discovered: Option<Discovery>,
    keys: Option<JwkSet>,
    fetched_at: Option<Instant>,
}

impl Authenticator {
    pub fn new(config: IdentityConfig) -> Result<Self, String> {
        config.check()?;
        let mut issuers = Vec::new();
        for (i, issuer) in config.oidc.iter().enumerate() {
            let ca = match &issuer.ca_cert {
                Some(path) => Some(
                    std::fs::read(path)
                        .map_err(|e| format!("identity.oidc[{i}].ca_cert: cannot read {}: {e}", path.display()))?,
                ),
                None => None,
            };
            let http =
                crate::deploy::azure::azure_http(ca.as_deref()).map_err(|e| format!("identity.oidc[{i}]: {e}"))?;
            let host = url::Url::parse(&issuer.issuer).ok().and_then(|u| u.host_str().map(str::to_string));
            let client_secret = match &issuer.client_secret_env {
                Some(var) => Some(crate::registry::auth::Secret::new(std::env::var(var).map_err(|_| {
                    format!("identity.oidc[{i}].client_secret_env: environment variable {var} is not set")
                })?)),
                None => None,
            };
            issuers.push(IssuerKeys {
                config: issuer.clone(),
                host: host.unwrap_or_default(),
                http,
                client_secret,
                cache: Mutex::new(KeyCache::default()),
            });
        }
        let users = config
            .users
            .iter()
            .map(|u| Ok((u.clone(), parse_token_hash(&u.token_hash)?)))
            .collect::<Result<Vec<_>, TokenHashError>>()
            .map_err(|e| e.to_string())?;
        Ok(Authenticator { config, issuers, users })
    }

    pub fn grants(&self) -> &[Grant] {
        &self.config.grants
    }

    /// Who presents `token` (not the operator token, which the API checks first).
    pub async fn authenticate(&self, token: &str) -> Result<Caller, AuthError> {
        if token.is_empty() {
            return Err(AuthError::Missing);
        }
        if token.split('.').count() == 3 {
            return self.jwt(token).await;
        }
        let presented = token_digest(token);
        // Every user is compared, in constant time, so timing says nothing about which matched.
        let mut found = None;
        for (user, hash) in &self.users {
            if secrets_equal(&presented, hash) {
                found = Some(user);
            }
        }
        let user = found.ok_or(AuthError::UnknownToken)?;
        Ok(Caller {
            subject: Some(user.name.clone()),
            display: Some(user.name.clone()),
            groups: user.groups.clone(),
            channel: Channel::UserToken,
        })
    }

    async fn jwt(&self, token: &str) -> Result<Caller, AuthError> {
        let unverified = unverified_claims(token)?;
        let iss = unverified.get("iss").and_then(Value::as_str).unwrap_or_default();
        let issuer = self
            .issuers
            .iter()
            .find(|i| i.config.issuer == iss)
            .ok_or_else(|| AuthError::Jwt(format!("issuer `{iss}` is not one of [[identity.oidc]]")))?;
        issuer.verify(token, &issuer.config.audience).await.map(|(caller, _)| caller)
    }

    /// The issuers people can sign in to the console with (those with a `client_id`).
    pub fn login_issuers(&self) -> Vec<LoginIssuer> {
        self.issuers
            .iter()
            .enumerate()
            .filter_map(|(index, i)| {
                Some(LoginIssuer {
                    index,
                    label: i.config.label.clone().unwrap_or_else(|| i.host.clone()),
                    client_id: i.config.client_id.clone()?,
                    scopes: i.config.scopes.clone(),
                })
            })
            .collect()
    }

    /// Issuer `index`'s discovery document (fetched once).
    pub async fn discovery(&self, index: usize) -> Result<Discovery, AuthError> {
        let issuer = self.issuers.get(index).ok_or(AuthError::UnknownToken)?;
        let mut cache = issuer.cache.lock().await;
        issuer.discover(&mut cache).await
    }

    /// Redeems an authorization code at issuer `index`'s token endpoint (with the PKCE verifier,
    /// and the client secret when configured) and checks the ID token it answers: signature,
    /// `iss`, `aud` = the client id, `exp`/`nbf`, and `nonce`.
    pub async fn redeem_code(
        &self,
        index: usize,
        code: &str,
        verifier: &str,
        redirect_uri: &str,
        nonce: &str,
    ) -> Result<Caller, AuthError> {
        let issuer = self.issuers.get(index).ok_or(AuthError::UnknownToken)?;
        let client_id = issuer.config.client_id.clone().ok_or(AuthError::UnknownToken)?;
        let endpoint =
            self.discovery(index).await?.token_endpoint.ok_or_else(|| {
                AuthError::IssuerUnavailable(format!("{} lists no token_endpoint", issuer.config.issuer))
            })?;
        let mut form = vec![
            ("grant_type", "authorization_code"),
            ("code", code),
            ("redirect_uri", redirect_uri),
            ("client_id", client_id.as_str()),
            ("code_verifier", verifier),
        ];
        if let Some(secret) = &issuer.client_secret {
            form.push(("client_secret", secret.expose()));
        }
        let body = url::form_urlencoded::Serializer::new(String::new()).extend_pairs(form).finish();
        let response = issuer
            .http
            .post(&endpoint)
            .header("content-type", "application/x-www-form-urlencoded")
            .header("accept", "application/json")
            .body(body)
            .timeout(Duration::from_secs(10))
            .send()
            .await
            .map_err(|e| AuthError::IssuerUnavailable(format!("POST {endpoint}: {e}")))?;
        let status = response.status();
        let answer: Value = response.json().await.unwrap_or(Value::Null);
        if !status.is_success() {
            let error = answer.get("error").and_then(Value::as_str).unwrap_or("no error code");
            let description = answer.get("error_description").and_then(Value::as_str).unwrap_or_default();
            return Err(AuthError::Jwt(format!(
                "the identity provider refused the sign-in code (HTTP {status}): {error} {description}"
            )));
        }
        let id_token = answer
            .get("id_token")
            .and_then(Value::as_str)
            .ok_or_else(|| AuthError::Jwt("the token endpoint answered no id_token (is `openid` in scopes?)".into()))?;
        let (caller, claims) = issuer.verify(id_token, &client_id).await?;
        let presented = claims.get("nonce").and_then(Value::as_str).unwrap_or_default();
        if !secrets_equal(presented.as_bytes(), nonce.as_bytes()) {
            return Err(AuthError::Jwt("the ID token's nonce is not this sign-in's".into()));
        }
        Ok(caller)
    }
}

impl IssuerKeys {
    /// Checks `token` against this issuer's keys, `iss`, `aud` = `audience`, `exp` and `nbf`.
    async fn verify(&self, token: &str, audience: &str) -> Result<(Caller, serde_json::Map<String, Value>), AuthError> {
        let alg = header_alg(token)?;
        let header = jsonwebtoken::decode_header(token).map_err(|e| AuthError::Jwt(format!("bad header: {e}")))?;
        let jwk = self.key(header.kid.as_deref()).await?;
        let key = DecodingKey::from_jwk(&jwk).map_err(|e| AuthError::Jwt(format!("issuer key unusable: {e}")))?;
        let mut validation = Validation::new(alg);
        validation.leeway = LEEWAY_S;
        validation.validate_nbf = true;
        validation.set_issuer(&[&self.config.issuer]);
        validation.set_audience(&[audience]);
        validation.set_required_spec_claims(&["exp", "iss", "aud"]);
        let data = jsonwebtoken::decode::<serde_json::Map<String, Value>>(token, &key, &validation)
            .map_err(|e| AuthError::Jwt(jwt_reason(&e, &self.config, audience)))?;
        let claims = data.claims;
        let config = &self.config;
        let sub = claims.get(&config.subject_claim).and_then(Value::as_str).ok_or_else(|| {
            AuthError::Jwt(format!("no `{}` claim (identity.oidc.subject_claim)", config.subject_claim))
        })?;
        let display = match &config.name_claim {
            Some(claim) => claims.get(claim).and_then(Value::as_str),
            None => claims.get("name").or_else(|| claims.get("preferred_username")).and_then(Value::as_str),
        };
        let groups = match claims.get(&config.groups_claim) {
            Some(Value::Array(items)) => items.iter().filter_map(Value::as_str).map(str::to_string).collect(),
            Some(Value::String(one)) => vec![one.clone()],
            _ => Vec::new(),
        };
        let caller = Caller {
            subject: Some(format!("{sub}@{}", self.host)),
            display: display.map(str::to_string),
            groups,
            channel: Channel::Oidc,
        };
        Ok((caller, claims))
    }

    /// The key `kid` names (or the only key when the token names none): from the cache, else
    /// from the JWKS fetched again — at most once per `jwks_refetch_s` (a rotated key appears
    /// there; unknown kids must not make Ferry hammer the issuer).
    async fn key(&self, kid: Option<&str>) -> Result<jsonwebtoken::jwk::Jwk, AuthError> {
        let mut cache = self.cache.lock().await;
        let find = |set: &JwkSet| match kid {
            Some(kid) => set.find(kid).cloned(),
            None if set.keys.len() == 1 => Some(set.keys[0].clone()),
            None => None,
        };
        if let Some(jwk) = cache.keys.as_ref().and_then(find) {
            return Ok(jwk);
        }
        let may_fetch =
            cache.fetched_at.is_none_or(|at| at.elapsed() >= Duration::from_secs(self.config.jwks_refetch_s));
        if may_fetch {
            let keys = self.fetch(&mut cache).await?;
            cache.keys = Some(keys);
            cache.fetched_at = Some(Instant::now());
            if let Some(jwk) = cache.keys.as_ref().and_then(find) {
                return Ok(jwk);
            }
        }
        Err(AuthError::Jwt(match kid {
            Some(kid) => format!(
                "unknown key id `{kid}`: not in the JWKS of {} (fetched again at most every {} s)",
                self.config.issuer, self.config.jwks_refetch_s
            ),
            None => "the token names no key id (kid) and the issuer has several keys".into(),
        }))
    }

    async fn fetch(&self, cache: &mut KeyCache) -> Result<JwkSet, AuthError> {
        let uri = self.discover(cache).await?.jwks_uri;
        let set: Value = self.get_json(&uri).await.map_err(|e| self.unavailable("JWKS", &e))?;
        serde_json::from_value(set).map_err(|e| self.unavailable("JWKS", &e))
    }

    fn unavailable(&self, what: &str, e: &dyn std::fmt::Display) -> AuthError {
        AuthError::IssuerUnavailable(format!("{what} of {}: {e}", self.config.issuer))
    }

    /// The discovery document, fetched once and kept: its `issuer` must be the configured one and
    /// every endpoint https (http only on loopback).
    async fn discover(&self, cache: &mut KeyCache) -> Result<Discovery, AuthError> {
        if let Some(found) = &cache.discovered {
            return Ok(found.clone());
        }
        let url = format!("{}/.well-known/openid-configuration", self.config.issuer.trim_end_matches('/'));
        let doc: Value = self.get_json(&url).await.map_err(|e| self.unavailable("discovery document", &e))?;
        let doc: Discovery = serde_json::from_value(doc).map_err(|e| self.unavailable("discovery document", &e))?;
        if doc.issuer != self.config.issuer {
            return Err(self.unavailable("discovery document", &"its `issuer` is not the configured issuer"));
        }
        let endpoints = [
            ("jwks_uri", Some(&doc.jwks_uri)),
            ("authorization_endpoint", doc.authorization_endpoint.as_ref()),
            ("token_endpoint", doc.token_endpoint.as_ref()),
        ];
        for (name, url) in endpoints {
            if let Some(url) = url {
                crate::deploy::azure::endpoint_url(name, url)
                    .map_err(|e| self.unavailable("discovery document", &e))?;
            }
        }
        cache.discovered = Some(doc.clone());
        Ok(doc)
    }

    async fn get_json(&self, url: &str) -> Result<Value, String> {
        let response =
            self.http.get(url).timeout(Duration::from_secs(10)).send().await.map_err(|e| format!("GET {url}: {e}"))?;
        if !response.status().is_success() {
            return Err(format!("GET {url}: HTTP {}", response.status()));
        }
        response.json().await.map_err(|e| format!("GET {url}: not JSON: {e}"))
    }
}

/// The token's `alg`, refused unless asymmetric: `none` carries no signature and HS* would make
/// a public key (the JWKS) a shared secret.
fn header_alg(token: &str) -> Result<Algorithm, AuthError> {
    let header = segment_json(token, 0, "header")?;
    let alg = header.get("alg").and_then(Value::as_str).unwrap_or_default();
    match alg {
        "RS256" => Ok(Algorithm::RS256),
        "RS384" => Ok(Algorithm::RS384),
        "RS512" => Ok(Algorithm::RS512),
        "PS256" => Ok(Algorithm::PS256),
        "PS384" => Ok(Algorithm::PS384),
        "PS512" => Ok(Algorithm::PS512),
        "ES256" => Ok(Algorithm::ES256),
        "ES384" => Ok(Algorithm::ES384),
        "EdDSA" => Ok(Algorithm::EdDSA),
        other => Err(AuthError::Jwt(format!(
            "algorithm `{other}` is not accepted (RS*, PS*, ES256, ES384 and EdDSA are; never none or HS*)"
        ))),
    }
}

/// The claims before the signature is checked: only to pick the issuer whose keys check it.
fn unverified_claims(token: &str) -> Result<serde_json::Map<String, Value>, AuthError> {
    match segment_json(token, 1, "claims")? {
        Value::Object(map) => Ok(map),
        _ => Err(AuthError::Jwt("the claims are not a JSON object".into())),
    }
}

fn segment_json(token: &str, index: usize, what: &str) -> Result<Value, AuthError> {
    use base64::Engine as _;
    let segment = token.split('.').nth(index).unwrap_or_default();
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(segment.trim_end_matches('='))
        .map_err(|e| AuthError::Jwt(format!("the {what} are not base64url: {e}")))?;
    serde_json::from_slice(&bytes).map_err(|e| AuthError::Jwt(format!("the {what} are not JSON: {e}")))
}

fn jwt_reason(e: &jsonwebtoken::errors::Error, issuer: &OidcIssuer, audience: &str) -> String {
    use jsonwebtoken::errors::ErrorKind;
    match e.kind() {
        ErrorKind::ExpiredSignature => format!("expired (exp is past, {LEEWAY_S} s leeway)"),
        ErrorKind::ImmatureSignature => format!("not yet valid (nbf is in the future, {LEEWAY_S} s leeway)"),
        ErrorKind::InvalidAudience => format!("wrong audience: expected `{audience}`"),
        ErrorKind::InvalidIssuer => format!("wrong issuer: expected `{}`", issuer.issuer),
        ErrorKind::InvalidSignature => "bad signature".into(),
        ErrorKind::MissingRequiredClaim(claim) => format!("missing claim `{claim}`"),
        ErrorKind::InvalidAlgorithm => "the algorithm does not match the issuer's key".into(),
        _ => format!("invalid token: {e}"),
    }
}

/// Why a `token_hash` is not usable.
#[derive(Debug, thiserror::Error)]
pub enum TokenHashError {
    #[error("expected `sha256:` and 64 hex digits, as `ferry token hash` prints")]
    Format,
    #[error("a static token needs at least {MIN_TOKEN_CHARS} characters; let `ferry token hash --generate` make one")]
    TooShort,
}

/// The shortest static token `ferry token hash` accepts.
pub const MIN_TOKEN_CHARS: usize = 32;

fn parse_token_hash(text: &str) -> Result<[u8; 32], TokenHashError> {
    let hex_digits = text.strip_prefix("sha256:").ok_or(TokenHashError::Format)?;
    let bytes = hex::decode(hex_digits).map_err(|_| TokenHashError::Format)?;
    bytes.try_into().map_err(|_| TokenHashError::Format)
}

// A plain (unsalted, fast) SHA-256 is enough here: static tokens are at least 32 characters and
// `--generate` makes them from 32 random bytes, so guessing a token from its hash means searching
// 2^256 values; a slow or salted hash protects low-entropy passwords, which these are not.
fn token_digest(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

/// The `token_hash` for `token` (`ferry token hash`).
pub fn token_hash(token: &str) -> Result<String, TokenHashError> {
    if token.chars().count() < MIN_TOKEN_CHARS {
        return Err(TokenHashError::TooShort);
    }
    Ok(format!("sha256:{}", hex::encode(token_digest(token))))
}

/// A new static token: `ferry_` and 32 random bytes in hex.
pub fn generate_token() -> String {
    let mut bytes = [0u8; 32];
    aws_lc_rs::rand::fill(&mut bytes).expect("the system random number generator works");
    format!("ferry_{}", hex::encode(bytes))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn grant(subject: &str, role: Role, pipeline: Option<&str>, stage: Option<&str>) -> Grant {
        Grant {
            subject: Some(subject.into()),
            group: None,
            role,
            pipeline: pipeline.map(Into::into),
            stage: stage.map(Into::into),
        }
    }

    #[test]
    fn roles_apply_to_their_pipeline_and_stage_and_include_lower_roles() {
        let caller = Caller {
            subject: Some("alice".into()),
            display: None,
            groups: vec!["release".into()],
            channel: Channel::UserToken,
        };
        let grants = vec![
            grant("alice", Role::Viewer, None, None),
            grant("alice", Role::Approver, Some("shop"), Some("prod")),
            Grant {
                subject: None,
                group: Some("release".into()),
                role: Role::Operator,
                pipeline: Some("web".into()),
                stage: None,
            },
        ];
        assert_eq!(caller.role(&grants, Scope::Stage("shop", "prod")), Some(Role::Approver));
        assert_eq!(caller.role(&grants, Scope::Stage("shop", "dev")), Some(Role::Viewer));
        assert_eq!(
            caller.role(&grants, Scope::Pipeline("shop")),
            Some(Role::Viewer),
            "a stage grant is not the pipeline"
        );
        assert_eq!(caller.role(&grants, Scope::Stage("web", "dev")), Some(Role::Operator));
        assert_eq!(caller.role(&grants, Scope::Anywhere), Some(Role::Operator));
        assert_eq!(caller.role(&grants, Scope::Everywhere), Some(Role::Viewer));
        assert!(Role::Operator >= Role::Approver && Role::Approver >= Role::Viewer);
        let stranger = Caller { subject: Some("mallory".into()), groups: vec![], ..caller.clone() };
        assert_eq!(stranger.role(&grants, Scope::Stage("shop", "prod")), None);
    }

    #[test]
    fn token_hashes_round_trip_and_short_tokens_are_refused() {
        let token = generate_token();
        let hash = token_hash(&token).unwrap();
        assert_eq!(parse_token_hash(&hash).unwrap(), token_digest(&token));
        assert!(matches!(token_hash("short"), Err(TokenHashError::TooShort)));
        assert!(matches!(parse_token_hash("md5:abc"), Err(TokenHashError::Format)));
        assert_ne!(generate_token(), token, "tokens are random");
    }

    #[test]
    fn none_and_hmac_algorithms_are_refused_before_any_key_lookup() {
        use base64::Engine as _;
        let b64 = |v: &str| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v);
        for alg in ["none", "HS256", "HS512"] {
            let token = format!("{}.{}.", b64(&format!(r#"{{"alg":"{alg}"}}"#)), b64(r#"{"iss":"x"}"#));
            let err = header_alg(&token).unwrap_err().to_string();
            assert!(err.contains(&format!("`{alg}` is not accepted")), "{err}");
        }
    }
}

//! A registry API client built for copying: token auth with per-scope caching shared across
//! concurrent transfers, retries with backoff, and blob uploads streamed in one PUT.
//!
//! Ferry speaks the distribution API over its own `reqwest` client instead of `oci-client`,
//! because a copy needs things that crate does not offer: a trust store per registry, tokens
//! covering two repositories (cross-repository mount), streamed uploads that do not turn every
//! read into a PATCH, and response headers (`OCI-Subject`, `Retry-After`).
//!
//! A registry is trusted with its own credentials and nothing more: they go only to its origin
//! (scheme, host, port) and to a token service known for it; `Location`, `Link` and redirects
//! are followed only where that holds (README: "A registry is trusted with its own credentials").

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use reqwest::header::{ACCEPT, AUTHORIZATION, CONTENT_LENGTH, CONTENT_TYPE, HeaderMap, HeaderValue, LOCATION};
use reqwest::{RequestBuilder, Response, StatusCode};
use serde::Deserialize;
use tokio::sync::Mutex;
use url::Url;

use super::auth::{Challenge, Credential, check_token_realm};
use super::error::{CopyError, RefusedRedirect, RemoteError};
use super::manifest::{ACCEPT_MANIFESTS, Descriptor, ImageIndex, MAX_MANIFEST_BYTES, Manifest};
use super::reference::Digest;

/// How often and how patiently to retry transient failures.
#[derive(Clone, Copy, Debug)]
pub struct RetryPolicy {
    pub retries: u32,
    pub base_delay: Duration,
    pub max_delay: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy { retries: 4, base_delay: Duration::from_millis(200), max_delay: Duration::from_secs(10) }
    }
}

impl RetryPolicy {
    /// The wait before retry number `attempt` (1-based): the server's `Retry-After` when it sent
    /// one (capped at a minute), else exponential backoff with jitter.
    pub fn delay(&self, attempt: u32, retry_after: Option<Duration>) -> Duration {
        if let Some(wait) = retry_after {
            return wait.min(Duration::from_secs(60));
        }
        let exp = self.base_delay.saturating_mul(1 << attempt.saturating_sub(1).min(16));
        let capped = exp.min(self.max_delay);
        // Up to 25% jitter so concurrent transfers do not retry in lockstep; a v4 UUID is a
        // ready random source (uuid's fast-rng), no extra crate needed.
        let random = uuid::Uuid::new_v4().as_u64_pair().0;
        capped + capped.mul_f64((random % 1000) as f64 / 4000.0)
    }

    /// Runs `op` until it succeeds, fails permanently, or the retries are spent.
    pub async fn run<T, F, Fut>(&self, what: &str, mut op: F) -> Result<T, CopyError>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Result<T, CopyError>>,
    {
        let mut attempt = 0;
        loop {
            match op().await {
                Err(err) if err.is_retryable() && attempt < self.retries => {
                    attempt += 1;
                    let wait = self.delay(attempt, err.retry_after());
                    tracing::warn!(%err, attempt, ?wait, "{what}: retrying");
                    tokio::time::sleep(wait).await;
                }
                result => return result,
            }
        }
    }
}

/// How long a registry may take, so that one slow (or hostile) registry cannot hold a worker
/// slot for ever. A read timeout alone does not do it: every trickled byte restarts it.
#[derive(Clone, Copy, Debug)]
pub struct Deadlines {
    /// Total time for one manifest, token, referrers page or other small request, body included.
    pub request: Duration,
    /// A blob transfer fails when fewer than `blob_min_bytes` move in any `blob_window`.
    pub blob_min_bytes: u64,
    pub blob_window: Duration,
}

impl Default for Deadlines {
    fn default() -> Self {
        // Generous for a 4 MiB manifest on a poor link, yet a trickle fails within minutes.
        // 64 KiB a minute (about 1 KiB/s) is far below any working link.
        Deadlines { request: Duration::from_secs(60), blob_min_bytes: 64 << 10, blob_window: Duration::from_secs(60) }
    }
}

/// Settings shared by every registry a command talks to.
#[derive(Clone, Debug)]
pub struct ClientOptions {
    pub plain_http: Vec<String>,
    /// PEM CAs trusted for every registry (`ferry copy --ca-cert`: the user's explicit choice).
    pub ca_certs_pem: Vec<Vec<u8>>,
    /// PEM CAs trusted for one registry only, by API host (`[registries."host"] ca_cert`).
    pub registry_ca_certs: BTreeMap<String, Vec<u8>>,
    /// Token services on another host that belong to a registry, by API host
    /// (`[registries."host"] token_realm`).
    pub token_realms: BTreeMap<String, Url>,
    pub retry: RetryPolicy,
    pub deadlines: Deadlines,
    /// Deadlines for one registry, by API host, instead of `deadlines`.
    pub registry_deadlines: BTreeMap<String, Deadlines>,
    pub user_agent: String,
}

impl Default for ClientOptions {
    fn default() -> Self {
        ClientOptions {
            plain_http: Vec::new(),
            ca_certs_pem: Vec::new(),
            registry_ca_certs: BTreeMap::new(),
            token_realms: BTreeMap::new(),
            retry: RetryPolicy::default(),
            deadlines: Deadlines::default(),
            registry_deadlines: BTreeMap::new(),
            user_agent: concat!("ferry/", env!("CARGO_PKG_VERSION")).to_string(),
        }
    }
}

/// Redirects followed in a row before giving up.
const MAX_REDIRECTS: usize = 5;

/// Redirects (blob downloads sent to object storage) go only to https, or stay on the same
/// plain-http origin (loopback test registries). reqwest drops `Authorization` whenever the
/// origin changes, and the client sends no `Referer`, so credentials and the registry URL stay
/// behind.
fn redirect_policy() -> reqwest::redirect::Policy {
    reqwest::redirect::Policy::custom(|attempt| {
        let next = attempt.url();
        let to = next.origin().ascii_serialization();
        if attempt.previous().len() > MAX_REDIRECTS {
            return attempt.error(RefusedRedirect { to, reason: "too many redirects in a row" });
        }
        let first = attempt.previous().first();
        let same_plain_origin = first.is_some_and(|f| f.scheme() == "http" && f.origin() == next.origin());
        if next.scheme() == "https" || same_plain_origin {
            attempt.follow()
        } else {
            attempt.error(RefusedRedirect { to, reason: "Ferry follows redirects only to https" })
        }
    })
}

fn build_client(options: &ClientOptions, own_ca: Option<(&str, &[u8])>) -> Result<reqwest::Client, CopyError> {
    let mut certs = Vec::new();
    for pem in &options.ca_certs_pem {
        let bundle = reqwest::Certificate::from_pem_bundle(pem)
            .map_err(|e| CopyError::Invalid(format!("CA certificate is not valid PEM: {e}")))?;
        certs.extend(bundle);
    }
    if let Some((host, pem)) = own_ca {
        let bundle = reqwest::Certificate::from_pem_bundle(pem).map_err(|e| {
            CopyError::Invalid(format!("registries.\"{host}\".ca_cert: CA certificate is not valid PEM: {e}"))
        })?;
        certs.extend(bundle);
    }
    reqwest::Client::builder()
        .user_agent(&options.user_agent)
        .connect_timeout(Duration::from_secs(15))
        // A stalled transfer is a failure to retry, not a hang; a healthy one never idles this long.
        .read_timeout(Duration::from_secs(120))
        .tcp_nodelay(true)
        .pool_max_idle_per_host(32)
        .redirect(redirect_policy())
        .referer(false)
        .tls_certs_merge(certs)
        .build()
        .map_err(|e| CopyError::Invalid(format!("cannot build the HTTP client: {e}")))
}

/// Builds the HTTP client shared by every registry without a CA of its own (connection pools,
/// system TLS roots plus `ca_certs_pem`).
pub fn http_client(options: &ClientOptions) -> Result<reqwest::Client, CopyError> {
    build_client(options, None)
}

/// The HTTP clients of a command or worker: one per registry that names its own CA, so that
/// CA is trusted for that registry only, and one shared by every other registry.
#[derive(Clone, Debug)]
pub struct HttpClients {
    shared: reqwest::Client,
    own: HashMap<String, reqwest::Client>,
}

impl HttpClients {
    pub fn new(options: &ClientOptions) -> Result<Self, CopyError> {
        let mut own = HashMap::new();
        for (host, pem) in &options.registry_ca_certs {
            own.insert(host.clone(), build_client(options, Some((host, pem)))?);
        }
        Ok(HttpClients { shared: http_client(options)?, own })
    }

    /// The client for the registry at `api_host`.
    pub fn for_registry(&self, api_host: &str) -> reqwest::Client {
        self.own.get(api_host).unwrap_or(&self.shared).clone()
    }
}

/// Access to a registry for one set of scopes, e.g. `repository:shop/api:pull`.
pub type Scope = Vec<String>;

pub fn pull_scope(repository: &str) -> String {
    format!("repository:{repository}:pull")
}

pub fn push_scope(repository: &str) -> String {
    format!("repository:{repository}:pull,push")
}

/// Caps on one referrers listing. Real images have a handful of referrers (signatures, SBOMs,
/// attestations) on one page; the caps stop a hostile or broken registry that pages for ever
/// from growing memory and time without bound, far above anything legitimate.
pub const MAX_REFERRER_PAGES: usize = 64;
pub const MAX_REFERRERS: usize = 10_000;

#[derive(Debug)]
enum AuthScheme {
    /// Not challenged yet: try anonymously, learn from the 401.
    Unknown,
    Basic,
    Bearer {
        realm: String,
        service: Option<String>,
    },
}

struct CachedToken {
    value: String,
    expires: Instant,
}

#[derive(Debug, Deserialize)]
struct TokenResponse {
    token: Option<String>,
    access_token: Option<String>,
    expires_in: Option<u64>,
}

/// What starting an upload produced.
pub enum UploadStart {
    /// The blob was mounted from another repository: nothing to send.
    Mounted,
    /// An upload session to PUT the bytes to.
    Session(Url),
}

/// The result of pushing a manifest.
pub struct PushedManifest {
    pub digest: Option<Digest>,
    /// Whether the registry answered `OCI-Subject`, i.e. maintains referrers itself.
    pub registry_tracks_subject: bool,
}

/// One registry, reached at `base` (`https://host` or `http://host`).
pub struct RegistryClient {
    http: reqwest::Client,
    host: String,
    base: Url,
    credential: Option<Credential>,
    /// A token service on another host configured for this registry (`token_realm`).
    token_realm: Option<Url>,
    retry: RetryPolicy,
    deadlines: Deadlines,
    scheme: Mutex<AuthScheme>,
    /// Tokens by scope set; the mutex also makes concurrent transfers share one token fetch.
    tokens: Mutex<HashMap<String, CachedToken>>,
}

impl RegistryClient {
    pub fn new(
        http: reqwest::Client,
        host: &str,
        options: &ClientOptions,
        credential: Option<Credential>,
    ) -> Result<Arc<Self>, CopyError> {
        let plain = options.plain_http.iter().any(|h| h == host);
        let base = Url::parse(&format!("{}://{host}/", if plain { "http" } else { "https" }))
            .map_err(|e| CopyError::Invalid(format!("invalid registry host `{host}`: {e}")))?;
        Ok(Arc::new(RegistryClient {
            http,
            host: host.to_string(),
            base,
            credential,
            token_realm: options.token_realms.get(host).cloned(),
            retry: options.retry,
            deadlines: options.registry_deadlines.get(host).copied().unwrap_or(options.deadlines),
            scheme: Mutex::new(AuthScheme::Unknown),
            tokens: Mutex::new(HashMap::new()),
        }))
    }

    pub fn host(&self) -> &str {
        &self.host
    }

    pub fn retry(&self) -> &RetryPolicy {
        &self.retry
    }

    pub fn deadlines(&self) -> &Deadlines {
        &self.deadlines
    }

    fn url(&self, path: &str) -> Url {
        self.base.join(path).expect("registry API paths are valid URL paths")
    }

    /// Resolves a URL the registry handed out (`Location`, `Link`) against `against`, and
    /// accepts it only on the registry's own origin: anything else would receive the
    /// registry's credentials (and, for an upload, the blob).
    fn own_url(&self, against: &Url, link: &str, what: &str, header: &str) -> Result<Url, CopyError> {
        let url = against
            .join(link)
            .map_err(|e| CopyError::Invalid(format!("{}: {what}: unusable {header} `{link}`: {e}", self.host)))?;
        self.check_origin(&url, what, header)?;
        Ok(url)
    }

    fn check_origin(&self, url: &Url, what: &str, header: &str) -> Result<(), CopyError> {
        if url.origin() == self.base.origin() {
            return Ok(());
        }
        Err(CopyError::Refused {
            registry: self.host.clone(),
            detail: format!(
                "{what}: refused to follow the registry's {header} to {}: Ferry sends requests (and credentials) \
                 only to the registry's own origin {}",
                url.origin().ascii_serialization(),
                self.base.origin().ascii_serialization()
            ),
        })
    }

    /// A reqwest failure of a request that ran under `deadline`.
    fn request_error(&self, what: &str, deadline: Option<Duration>, err: &reqwest::Error) -> CopyError {
        match deadline {
            Some(limit) if err.is_timeout() => {
                CopyError::Deadline { registry: self.host.clone(), what: what.to_string(), limit }
            }
            _ => CopyError::transport(&self.host, err),
        }
    }

    /// The `Authorization` value for `scope`, fetching a token when the registry wants one.
    async fn authorization(&self, scope: &Scope) -> Result<Option<String>, CopyError> {
        let (realm, service) = match &*self.scheme.lock().await {
            AuthScheme::Unknown => return Ok(None),
            AuthScheme::Basic => {
                return Ok(self.credential.as_ref().and_then(Credential::basic_header));
            }
            AuthScheme::Bearer { realm, service } => (realm.clone(), service.clone()),
        };
        let key = scope.join(" ");
        let mut tokens = self.tokens.lock().await;
        if let Some(token) = tokens.get(&key).filter(|t| t.expires > Instant::now()) {
            return Ok(Some(format!("Bearer {}", token.value)));
        }
        let token = self.fetch_token(&realm, service.as_deref(), scope).await?;
        let header = format!("Bearer {}", token.value);
        tokens.insert(key, token);
        Ok(Some(header))
    }

    async fn fetch_token(&self, realm: &str, service: Option<&str>, scope: &Scope) -> Result<CachedToken, CopyError> {
        let auth_error =
            |detail: String| CopyError::Auth { registry: self.host.clone(), scope: scope.join(" "), detail };
        let realm_url = Url::parse(realm).map_err(|e| auth_error(format!("invalid token realm `{realm}`: {e}")))?;
        // Checked when the challenge was learnt; checked again right before credentials go out.
        check_token_realm(&self.base, &self.host, &realm_url, self.token_realm.as_ref())
            .map_err(|refusal| CopyError::Refused { registry: self.host.clone(), detail: refusal.to_string() })?;
        let deadline = self.deadlines.request;
        let mut params: Vec<(&str, &str)> = Vec::new();
        if let Some(service) = service {
            params.push(("service", service));
        }
        for s in scope {
            params.push(("scope", s));
        }
        let request = match &self.credential {
            Some(Credential::IdentityToken(token)) => {
                params.extend([("grant_type", "refresh_token"), ("client_id", "ferry")]);
                params.push(("refresh_token", token.expose()));
                self.http.post(realm_url).form(&params).timeout(deadline)
            }
            credential => {
                let mut request = self.http.get(realm_url).query(&params).timeout(deadline);
                if let Some(basic) = credential.as_ref().and_then(Credential::basic_header) {
                    request = request.header(AUTHORIZATION, basic);
                }
                request
            }
        };
        let response = self
            .retry
            .run("token request", || async {
                let response = request
                    .try_clone()
                    .expect("token requests have no streaming body")
                    .send()
                    .await
                    .map_err(|e| self.request_error("token request", Some(deadline), &e))?;
                if response.status().is_server_error() || response.status() == StatusCode::TOO_MANY_REQUESTS {
                    return Err(self.status_error("token request", response).await);
                }
                Ok(response)
            })
            .await?;
        let status = response.status();
        if !status.is_success() {
            let body = read_limited(response, 64 << 10).await.unwrap_or_default();
            let remote = RemoteError::parse_envelope(&body);
            let detail = remote.first().map(|e| format!("{} ({})", e.code, e.message));
            return Err(auth_error(format!(
                "the token service answered HTTP {status}{}",
                detail.map(|d| format!(": {d}")).unwrap_or_default()
            )));
        }
        let body = read_limited(response, 1 << 20)
            .await
            .map_err(|e| self.request_error("token request", Some(deadline), &e))?;
        let body: TokenResponse =
            serde_json::from_slice(&body).map_err(|e| auth_error(format!("unreadable token response: {e}")))?;
        let value = body
            .token
            .or(body.access_token)
            .filter(|t| !t.is_empty())
            .ok_or_else(|| auth_error("the token response has no token".into()))?;
        // Renew a little early so a token does not expire between check and use.
        let lifetime = Duration::from_secs(body.expires_in.unwrap_or(60).max(10)) - Duration::from_secs(5);
        Ok(CachedToken { value, expires: Instant::now() + lifetime })
    }

    /// Learns the auth scheme from a 401 challenge and forgets a token that was refused.
    async fn on_unauthorized(&self, headers: &HeaderMap, scope: &Scope) -> Result<(), CopyError> {
        let challenge = headers
            .get_all(reqwest::header::WWW_AUTHENTICATE)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .filter_map(Challenge::parse)
            .next();
        let auth_error = |detail: &str| CopyError::Auth {
            registry: self.host.clone(),
            scope: scope.join(" "),
            detail: detail.to_string(),
        };
        match challenge {
            Some(Challenge::Basic) => {
                if self.credential.as_ref().and_then(Credential::basic_header).is_none() {
                    return Err(auth_error("the registry wants a username and password and none was given"));
                }
                *self.scheme.lock().await = AuthScheme::Basic;
            }
            Some(Challenge::Bearer { realm, service, .. }) => {
                let realm_url =
                    Url::parse(&realm).map_err(|e| auth_error(&format!("invalid token realm `{realm}`: {e}")))?;
                // Refused before anything is sent there: the realm gets the credentials.
                check_token_realm(&self.base, &self.host, &realm_url, self.token_realm.as_ref()).map_err(
                    |refusal| CopyError::Refused { registry: self.host.clone(), detail: refusal.to_string() },
                )?;
                *self.scheme.lock().await = AuthScheme::Bearer { realm, service };
                self.tokens.lock().await.remove(&scope.join(" "));
            }
            None => {
                return Err(auth_error("HTTP 401 without a usable WWW-Authenticate challenge"));
            }
        }
        Ok(())
    }

    /// Sends a request without a streaming body under the total request deadline (body
    /// included): authenticates (answering at most two challenges), and retries transport
    /// errors, 5xx and 429 with backoff.
    pub async fn send(
        &self,
        scope: &Scope,
        what: &str,
        build: impl Fn(&reqwest::Client) -> RequestBuilder,
    ) -> Result<Response, CopyError> {
        self.send_within(scope, what, Some(self.deadlines.request), build).await
    }

    /// [`Self::send`] with a chosen total deadline (`None` for blob downloads, which are
    /// held to a minimum throughput instead).
    async fn send_within(
        &self,
        scope: &Scope,
        what: &str,
        deadline: Option<Duration>,
        build: impl Fn(&reqwest::Client) -> RequestBuilder,
    ) -> Result<Response, CopyError> {
        self.retry
            .run(what, || async {
                let mut challenges = 0;
                loop {
                    let mut request = build(&self.http).build().map_err(|e| CopyError::transport(&self.host, &e))?;
                    // Every request carrying this registry's credentials goes to its origin.
                    self.check_origin(request.url(), what, "URL")?;
                    if deadline.is_some() {
                        *request.timeout_mut() = deadline;
                    }
                    if let Some(auth) = self.authorization(scope).await? {
                        request.headers_mut().insert(AUTHORIZATION, sensitive_header(&auth)?);
                    }
                    let response =
                        self.http.execute(request).await.map_err(|e| self.request_error(what, deadline, &e))?;
                    let status = response.status();
                    if status == StatusCode::UNAUTHORIZED {
                        challenges += 1;
                        if challenges > 2 {
                            return Err(CopyError::Auth {
                                registry: self.host.clone(),
                                scope: scope.join(" "),
                                detail: "the registry refused the credentials (HTTP 401)".into(),
                            });
                        }
                        self.on_unauthorized(response.headers(), scope).await?;
                        continue;
                    }
                    if status.is_server_error() || status == StatusCode::TOO_MANY_REQUESTS {
                        return Err(self.status_error(what, response).await);
                    }
                    return Ok(response);
                }
            })
            .await
    }

    /// Turns an unsuccessful response into an error carrying the registry's envelope.
    pub async fn status_error(&self, what: &str, response: Response) -> CopyError {
        let status = response.status().as_u16();
        let retry_after = response
            .headers()
            .get(reqwest::header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok())
            .map(Duration::from_secs);
        let body = read_limited(response, 64 << 10).await.unwrap_or_default();
        let remote = RemoteError::parse_envelope(&body);
        if status == 401 || status == 403 {
            return CopyError::Auth {
                registry: self.host.clone(),
                scope: what.to_string(),
                detail: format!(
                    "HTTP {status}{}",
                    remote.first().map(|e| format!(": {} ({})", e.code, e.message)).unwrap_or_default()
                ),
            };
        }
        CopyError::Status { registry: self.host.clone(), what: what.to_string(), status, remote, retry_after }
    }

    async fn not_found(&self, repository: &str, reference: &str, response: Response) -> CopyError {
        let body = read_limited(response, 64 << 10).await.unwrap_or_default();
        CopyError::NotFound {
            registry: self.host.clone(),
            repository: repository.to_string(),
            reference: reference.to_string(),
            remote: RemoteError::parse_envelope(&body),
        }
    }

    /// Fetches a manifest and checks its bytes against the digest asked for, or against the
    /// registry's `Docker-Content-Digest` when fetched by tag.
    pub async fn get_manifest(&self, repository: &str, reference: &str) -> Result<Manifest, CopyError> {
        let scope = vec![pull_scope(repository)];
        let url = self.url(&format!("v2/{repository}/manifests/{reference}"));
        let what = format!("GET manifest {repository}:{reference}");
        let deadline = self.deadlines.request;
        let response = self.send(&scope, &what, |http| http.get(url.clone()).header(ACCEPT, ACCEPT_MANIFESTS)).await?;
        match response.status() {
            s if s.is_success() => {}
            StatusCode::NOT_FOUND => {
                return Err(self.not_found(repository, reference, response).await);
            }
            _ => return Err(self.status_error(&what, response).await),
        }
        let content_type = header_str(response.headers(), CONTENT_TYPE.as_str());
        let claimed = header_str(response.headers(), "docker-content-digest");
        let bytes = read_limited(response, MAX_MANIFEST_BYTES)
            .await
            .map_err(|e| self.request_error(&what, Some(deadline), &e))?;
        if bytes.len() >= MAX_MANIFEST_BYTES {
            return Err(CopyError::Invalid(format!(
                "{}/{repository}:{reference}: manifest larger than {MAX_MANIFEST_BYTES} bytes",
                self.host
            )));
        }
        let actual = Digest::sha256_of(&bytes);
        let expected = match reference.parse::<Digest>() {
            Ok(d) => Some(d),
            Err(_) => claimed.as_deref().and_then(|c| c.parse::<Digest>().ok()),
        };
        if let Some(expected) = expected {
            if !expected.matches(&bytes) {
                return Err(CopyError::DigestMismatch {
                    what: format!("manifest {}/{repository}:{reference}", self.host),
                    expected,
                    actual,
                });
            }
        }
        let digest = match reference.parse::<Digest>() {
            Ok(d) => d,
            Err(_) => actual,
        };
        Manifest::parse(bytes, content_type.as_deref(), digest.clone()).map_err(|source| CopyError::Manifest {
            location: format!("{}/{repository}", self.host),
            digest: digest.to_string(),
            source,
        })
    }

    /// The digest a manifest reference resolves to, or `None` when it does not exist.
    pub async fn head_manifest(
        &self,
        repository: &str,
        reference: &str,
        scope: &Scope,
    ) -> Result<Option<Digest>, CopyError> {
        let url = self.url(&format!("v2/{repository}/manifests/{reference}"));
        let what = format!("HEAD manifest {repository}:{reference}");
        let response = self.send(scope, &what, |http| http.head(url.clone()).header(ACCEPT, ACCEPT_MANIFESTS)).await?;
        match response.status() {
            StatusCode::NOT_FOUND => Ok(None),
            s if s.is_success() => {
                let digest =
                    header_str(response.headers(), "docker-content-digest").and_then(|d| d.parse::<Digest>().ok());
                match digest {
                    Some(d) => Ok(Some(d)),
                    // Without the header, read the bytes and hash them.
                    None => Ok(Some(self.get_manifest(repository, reference).await?.digest)),
                }
            }
            _ => Err(self.status_error(&what, response).await),
        }
    }

    /// Pushes manifest bytes unchanged under `reference` (a tag or the manifest's digest).
    pub async fn put_manifest(
        &self,
        repository: &str,
        reference: &str,
        manifest: &Manifest,
    ) -> Result<PushedManifest, CopyError> {
        let scope = vec![push_scope(repository)];
        let url = self.url(&format!("v2/{repository}/manifests/{reference}"));
        let what = format!("PUT manifest {repository}:{reference}");
        let response = self
            .send(&scope, &what, |http| {
                http.put(url.clone()).header(CONTENT_TYPE, manifest.media_type.as_str()).body(manifest.bytes.clone())
            })
            .await?;
        if !response.status().is_success() {
            return Err(self.status_error(&what, response).await);
        }
        Ok(PushedManifest {
            digest: header_str(response.headers(), "docker-content-digest").and_then(|d| d.parse().ok()),
            registry_tracks_subject: response.headers().contains_key("oci-subject"),
        })
    }

    /// The size of a blob when the repository has it.
    pub async fn head_blob(&self, repository: &str, digest: &Digest, scope: &Scope) -> Result<Option<u64>, CopyError> {
        let url = self.url(&format!("v2/{repository}/blobs/{digest}"));
        let what = format!("HEAD blob {repository}@{digest}");
        let response = self.send(scope, &what, |http| http.head(url.clone())).await?;
        match response.status() {
            StatusCode::NOT_FOUND => Ok(None),
            s if s.is_success() => Ok(Some(
                header_str(response.headers(), CONTENT_LENGTH.as_str())
                    .and_then(|v| v.parse().ok())
                    .unwrap_or_default(),
            )),
            _ => Err(self.status_error(&what, response).await),
        }
    }

    /// Opens a blob for streaming (redirects to https storage are followed, without
    /// credentials). No total deadline: the copy holds blobs to a minimum throughput.
    pub async fn get_blob(&self, repository: &str, digest: &Digest) -> Result<Response, CopyError> {
        let scope = vec![pull_scope(repository)];
        let url = self.url(&format!("v2/{repository}/blobs/{digest}"));
        let what = format!("GET blob {repository}@{digest}");
        let response = self.send_within(&scope, &what, None, |http| http.get(url.clone())).await?;
        match response.status() {
            s if s.is_success() => Ok(response),
            StatusCode::NOT_FOUND => Err(self.not_found(repository, digest.as_str(), response).await),
            _ => Err(self.status_error(&what, response).await),
        }
    }

    /// Opens an upload session, or mounts the blob from `mount_from` in the same registry.
    pub async fn start_upload(
        &self,
        repository: &str,
        mount: Option<(&Digest, &str)>,
    ) -> Result<UploadStart, CopyError> {
        let mut scope = vec![push_scope(repository)];
        let mut url = self.url(&format!("v2/{repository}/blobs/uploads/"));
        if let Some((digest, from)) = mount {
            // The token must cover pulling from the source repository too, or the mount is refused.
            scope.push(pull_scope(from));
            url.query_pairs_mut().append_pair("mount", digest.as_str()).append_pair("from", from);
        }
        let what = format!("POST blob upload {repository}");
        let response = self.send(&scope, &what, |http| http.post(url.clone()).header(CONTENT_LENGTH, "0")).await?;
        let status = response.status();
        if status == StatusCode::CREATED && mount.is_some() {
            return Ok(UploadStart::Mounted);
        }
        if status != StatusCode::ACCEPTED {
            return Err(self.status_error(&what, response).await);
        }
        Ok(UploadStart::Session(self.location(&response, &what)?))
    }

    /// Completes an upload session with the whole blob in one streamed PUT. The registry hashes
    /// what it receives and refuses the commit if it does not match `digest`.
    pub async fn finish_upload(
        &self,
        repository: &str,
        session: Url,
        digest: &Digest,
        size: u64,
        body: reqwest::Body,
    ) -> Result<(), CopyError> {
        let scope = vec![push_scope(repository)];
        let what = format!("PUT blob {repository}@{digest}");
        let mut url = session;
        self.check_origin(&url, &what, "upload Location")?;
        url.query_pairs_mut().append_pair("digest", digest.as_str());
        let mut request =
            self.http.put(url).header(CONTENT_TYPE, "application/octet-stream").header(CONTENT_LENGTH, size).body(body);
        if let Some(auth) = self.authorization(&scope).await? {
            request = request.header(AUTHORIZATION, sensitive_header(&auth)?);
        }
        let response = request.send().await.map_err(|e| CopyError::transport(&self.host, &e))?;
        if response.status() == StatusCode::UNAUTHORIZED {
            // The token expired during a long upload: forget it so the retry fetches a new one.
            self.tokens.lock().await.remove(&scope.join(" "));
            return Err(CopyError::Status {
                registry: self.host.clone(),
                what,
                status: 503,
                remote: vec![],
                retry_after: Some(Duration::ZERO),
            });
        }
        if response.status() != StatusCode::CREATED && !response.status().is_success() {
            return Err(self.status_error(&what, response).await);
        }
        Ok(())
    }

    /// The referrers of `digest`, or `None` when the registry has no referrers API.
    pub async fn referrers(&self, repository: &str, digest: &Digest) -> Result<Option<Vec<Descriptor>>, CopyError> {
        let scope = vec![pull_scope(repository)];
        let mut next = Some(self.url(&format!("v2/{repository}/referrers/{digest}")));
        let mut all = Vec::new();
        let mut pages = HashSet::new();
        let what = format!("GET referrers {repository}@{digest}");
        let refused = |detail: String| CopyError::Refused { registry: self.host.clone(), detail };
        while let Some(url) = next.take() {
            if pages.len() >= MAX_REFERRER_PAGES {
                return Err(refused(format!(
                    "{what}: gave up after {MAX_REFERRER_PAGES} pages of referrers (Ferry's limit); the registry keeps sending `Link: rel=\"next\"`"
                )));
            }
            if !pages.insert(url.clone()) {
                return Err(refused(format!(
                    "{what}: the registry sent a referrers page it had already sent (`Link: rel=\"next\"` loops); stopped"
                )));
            }
            let response = self
                .send(&scope, &what, |http| http.get(url.clone()).header(ACCEPT, super::manifest::OCI_INDEX))
                .await?;
            match response.status() {
                // distribution 2.x and other registries without the API.
                StatusCode::NOT_FOUND | StatusCode::METHOD_NOT_ALLOWED | StatusCode::BAD_REQUEST => return Ok(None),
                s if s.is_success() => {}
                _ => return Err(self.status_error(&what, response).await),
            }
            next = match next_link(response.headers()) {
                Some(link) => Some(self.own_url(&url, &link, &what, "referrers `Link: rel=\"next\"`")?),
                None => None,
            };
            let body = read_limited(response, MAX_MANIFEST_BYTES)
                .await
                .map_err(|e| self.request_error(&what, Some(self.deadlines.request), &e))?;
            let index: ImageIndex = serde_json::from_slice(&body).map_err(|e| {
                CopyError::Invalid(format!("{}: unreadable referrers list for {repository}@{digest}: {e}", self.host))
            })?;
            all.extend(index.manifests);
            if all.len() > MAX_REFERRERS {
                return Err(refused(format!(
                    "{what}: more than {MAX_REFERRERS} referrers (Ferry's limit); not copying an unbounded list"
                )));
            }
        }
        Ok(Some(all))
    }

    fn location(&self, response: &Response, what: &str) -> Result<Url, CopyError> {
        let location = header_str(response.headers(), LOCATION.as_str()).ok_or_else(|| {
            CopyError::Invalid(format!("{}: {what}: the registry sent no Location header", self.host))
        })?;
        // Relative locations resolve against the registry itself; others must stay on it.
        self.own_url(&self.base, &location, what, "upload Location")
    }
}

/// An `Authorization` value, marked sensitive so it never shows in debug output.
fn sensitive_header(value: &str) -> Result<HeaderValue, CopyError> {
    let mut header = HeaderValue::from_str(value)
        .map_err(|_| CopyError::Invalid("the token service issued a token that is not a valid header value".into()))?;
    header.set_sensitive(true);
    Ok(header)
}

fn header_str(headers: &HeaderMap, name: &str) -> Option<String> {
    headers.get(name).and_then(|v| v.to_str().ok()).map(str::to_string)
}

/// `Link: <url>; rel="next"`.
fn next_link(headers: &HeaderMap) -> Option<String> {
    let link = headers.get(reqwest::header::LINK)?.to_str().ok()?;
    link.split(',').find(|part| part.contains("rel=\"next\"")).and_then(|part| {
        let start = part.find('<')? + 1;
        let end = part.find('>')?;
        Some(part[start..end].to_string())
    })
}

/// Reads at most `limit` bytes of a body (so a hostile registry cannot make Ferry buffer much).
async fn read_limited(mut response: Response, limit: usize) -> Result<Bytes, reqwest::Error> {
    let mut buffer = Vec::new();
    while let Some(chunk) = response.chunk().await? {
        let room = limit.saturating_sub(buffer.len());
        buffer.extend_from_slice(&chunk[..chunk.len().min(room)]);
        if buffer.len() >= limit {
            break;
        }
    }
    Ok(buffer.into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_caps_and_honours_retry_after() {
        let policy =
            RetryPolicy { retries: 5, base_delay: Duration::from_millis(100), max_delay: Duration::from_secs(1) };
        assert!(policy.delay(1, None) >= Duration::from_millis(100));
        assert!(policy.delay(1, None) <= Duration::from_millis(125));
        assert!(policy.delay(3, None) >= Duration::from_millis(400));
        assert!(policy.delay(10, None) <= Duration::from_millis(1250));
        assert_eq!(policy.delay(1, Some(Duration::from_secs(3))), Duration::from_secs(3));
        assert_eq!(policy.delay(1, Some(Duration::from_secs(3600))), Duration::from_secs(60));
    }

    #[test]
    fn backoff_jitter_spreads_concurrent_retries() {
        let policy =
            RetryPolicy { retries: 5, base_delay: Duration::from_millis(1000), max_delay: Duration::from_secs(10) };
        let delays: Vec<Duration> = (0..200).map(|_| policy.delay(1, None)).collect();
        let (min, max) = (delays.iter().min().unwrap(), delays.iter().max().unwrap());
        assert!(*min >= Duration::from_millis(1000) && *max <= Duration::from_millis(1250), "{min:?}..{max:?}");
        // Jitter of up to 25%: 200 transfers retrying together spread over most of that range.
        assert!(*max - *min >= Duration::from_millis(150), "retries bunch up: {min:?}..{max:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn retries_stop_at_a_permanent_error() {
        let policy = RetryPolicy::default();
        let mut calls = 0;
        let result: Result<(), _> = policy
            .run("test", || {
                calls += 1;
                let status = if calls < 3 { 503 } else { 404 };
                async move {
                    Err(CopyError::Status {
                        registry: "r".into(),
                        what: "x".into(),
                        status,
                        remote: vec![],
                        retry_after: None,
                    })
                }
            })
            .await;
        assert!(result.is_err());
        assert_eq!(calls, 3);
    }

    #[test]
    fn next_link_is_found() {
        let mut headers = HeaderMap::new();
        headers.insert(reqwest::header::LINK, r#"</v2/a/referrers/sha256:x?n=1&last=y>; rel="next""#.parse().unwrap());
        assert_eq!(next_link(&headers).as_deref(), Some("/v2/a/referrers/sha256:x?n=1&last=y"));
    }
}

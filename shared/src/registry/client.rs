//! A registry API client built for copying: token auth with per-scope caching shared across
//! concurrent transfers, retries with backoff, and blob uploads streamed in one PUT.
//!
//! Ferry speaks the distribution API over its own `reqwest` client instead of `oci-client`,
//! because a copy needs things that crate does not offer: one HTTP client with custom CAs shared by
//! every registry, tokens covering two repositories (cross-repository mount), streamed uploads
//! that do not turn every read into a PATCH, and response headers (`OCI-Subject`, `Retry-After`).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use reqwest::header::{ACCEPT, AUTHORIZATION, CONTENT_LENGTH, CONTENT_TYPE, HeaderMap, LOCATION};
use reqwest::{RequestBuilder, Response, StatusCode};
use serde::Deserialize;
use tokio::sync::Mutex;
use url::Url;

use super::auth::{Challenge, Credential};
use super::error::{CopyError, RemoteError};
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
        // Up to 25% jitter so concurrent transfers do not retry in lockstep.
        let nanos = Instant::now().elapsed().subsec_nanos() as u64 ^ (attempt as u64 * 0x9E37_79B9);
        capped + capped.mul_f64((nanos % 1000) as f64 / 4000.0)
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

/// Settings shared by every registry a command talks to.
#[derive(Clone, Debug)]
pub struct ClientOptions {
    pub plain_http: Vec<String>,
    pub ca_certs_pem: Vec<Vec<u8>>,
    pub retry: RetryPolicy,
    pub user_agent: String,
}

impl Default for ClientOptions {
    fn default() -> Self {
        ClientOptions {
            plain_http: Vec::new(),
            ca_certs_pem: Vec::new(),
            retry: RetryPolicy::default(),
            user_agent: concat!("ferry/", env!("CARGO_PKG_VERSION")).to_string(),
        }
    }
}

/// Builds the one HTTP client every registry shares (connection pools, TLS roots).
pub fn http_client(options: &ClientOptions) -> Result<reqwest::Client, CopyError> {
    let mut certs = Vec::new();
    for pem in &options.ca_certs_pem {
        let bundle = reqwest::Certificate::from_pem_bundle(pem)
            .map_err(|e| CopyError::Invalid(format!("CA certificate is not valid PEM: {e}")))?;
        certs.extend(bundle);
    }
    reqwest::Client::builder()
        .user_agent(&options.user_agent)
        .connect_timeout(Duration::from_secs(15))
        // A stalled transfer is a failure to retry, not a hang; a healthy one never idles this long.
        .read_timeout(Duration::from_secs(120))
        .tcp_nodelay(true)
        .pool_max_idle_per_host(32)
        .redirect(reqwest::redirect::Policy::limited(5))
        .tls_certs_merge(certs)
        .build()
        .map_err(|e| CopyError::Invalid(format!("cannot build the HTTP client: {e}")))
}

/// Access to a registry for one set of scopes, e.g. `repository:shop/api:pull`.
pub type Scope = Vec<String>;

pub fn pull_scope(repository: &str) -> String {
    format!("repository:{repository}:pull")
}

pub fn push_scope(repository: &str) -> String {
    format!("repository:{repository}:pull,push")
}

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
    retry: RetryPolicy,
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
            retry: options.retry,
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

    fn url(&self, path: &str) -> Url {
        self.base.join(path).expect("registry API paths are valid URL paths")
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
                self.http.post(realm_url).form(&params)
            }
            credential => {
                let mut request = self.http.get(realm_url).query(&params);
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
                    .map_err(|e| CopyError::transport(&self.host, &e))?;
                if response.status().is_server_error() || response.status() == StatusCode::TOO_MANY_REQUESTS {
                    return Err(self.status_error("token request", response).await);
                }
                Ok(response)
            })
            .await?;
        let status = response.status();
        if !status.is_success() {
            let body = response.bytes().await.unwrap_or_default();
            let remote = RemoteError::parse_envelope(&body);
            let detail = remote.first().map(|e| format!("{} ({})", e.code, e.message));
            return Err(auth_error(format!(
                "the token service answered HTTP {status}{}",
                detail.map(|d| format!(": {d}")).unwrap_or_default()
            )));
        }
        let body: TokenResponse =
            response.json().await.map_err(|e| auth_error(format!("unreadable token response: {e}")))?;
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
                *self.scheme.lock().await = AuthScheme::Bearer { realm, service };
                self.tokens.lock().await.remove(&scope.join(" "));
            }
            None => {
                return Err(auth_error("HTTP 401 without a usable WWW-Authenticate challenge"));
            }
        }
        Ok(())
    }

    /// Sends a request without a streaming body: authenticates (answering at most two
    /// challenges), and retries transport errors, 5xx and 429 with backoff.
    pub async fn send(
        &self,
        scope: &Scope,
        what: &str,
        build: impl Fn(&reqwest::Client) -> RequestBuilder,
    ) -> Result<Response, CopyError> {
        self.retry
            .run(what, || async {
                let mut challenges = 0;
                loop {
                    let mut request = build(&self.http);
                    if let Some(auth) = self.authorization(scope).await? {
                        request = request.header(AUTHORIZATION, auth);
                    }
                    let response = request.send().await.map_err(|e| CopyError::transport(&self.host, &e))?;
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
        let bytes =
            read_limited(response, MAX_MANIFEST_BYTES).await.map_err(|e| CopyError::transport(&self.host, &e))?;
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

    /// Opens a blob for streaming (redirects to storage are followed).
    pub async fn get_blob(&self, repository: &str, digest: &Digest) -> Result<Response, CopyError> {
        let scope = vec![pull_scope(repository)];
        let url = self.url(&format!("v2/{repository}/blobs/{digest}"));
        let what = format!("GET blob {repository}@{digest}");
        let response = self.send(&scope, &what, |http| http.get(url.clone())).await?;
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
        let mut url = session;
        url.query_pairs_mut().append_pair("digest", digest.as_str());
        let mut request =
            self.http.put(url).header(CONTENT_TYPE, "application/octet-stream").header(CONTENT_LENGTH, size).body(body);
        if let Some(auth) = self.authorization(&scope).await? {
            request = request.header(AUTHORIZATION, auth);
        }
        let what = format!("PUT blob {repository}@{digest}");
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
        let what = format!("GET referrers {repository}@{digest}");
        while let Some(url) = next.take() {
            let response = self
                .send(&scope, &what, |http| http.get(url.clone()).header(ACCEPT, super::manifest::OCI_INDEX))
                .await?;
            match response.status() {
                // distribution 2.x and other registries without the API.
                StatusCode::NOT_FOUND | StatusCode::METHOD_NOT_ALLOWED | StatusCode::BAD_REQUEST => return Ok(None),
                s if s.is_success() => {}
                _ => return Err(self.status_error(&what, response).await),
            }
            next = next_link(response.headers()).and_then(|link| url.join(&link).ok());
            let body =
                read_limited(response, MAX_MANIFEST_BYTES).await.map_err(|e| CopyError::transport(&self.host, &e))?;
            let index: ImageIndex = serde_json::from_slice(&body).map_err(|e| {
                CopyError::Invalid(format!("{}: unreadable referrers list for {repository}@{digest}: {e}", self.host))
            })?;
            all.extend(index.manifests);
        }
        Ok(Some(all))
    }

    fn location(&self, response: &Response, what: &str) -> Result<Url, CopyError> {
        let location = header_str(response.headers(), LOCATION.as_str()).ok_or_else(|| {
            CopyError::Invalid(format!("{}: {what}: the registry sent no Location header", self.host))
        })?;
        // Relative locations resolve against the registry itself.
        self.base
            .join(&location)
            .map_err(|e| CopyError::Invalid(format!("{}: {what}: unusable Location `{location}`: {e}", self.host)))
    }
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

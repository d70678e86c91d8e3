//! Entra ID credentials and the ARM client the Azure notifiers share, over plain reqwest.
//!
//! The credential is chosen the way the Azure SDKs' default chain does, from the `[azure]` table
//! and the standard environment variables: a client secret when `client_secret_env` is set, else
//! workload identity (`AZURE_FEDERATED_TOKEN_FILE`), else App Service / Functions managed identity
//! (`IDENTITY_ENDPOINT` + `IDENTITY_HEADER`), else the VM/AKS node IMDS endpoint. Tokens are
//! cached per scope until five minutes (at most half their lifetime) before they expire, and one
//! caller per scope refreshes while the others wait for its token.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use reqwest::{Method, StatusCode};
use serde::Deserialize;
use url::Url;

use crate::registry::auth::Secret;

/// The public cloud's defaults (`[azure] authority_host` / `resource_manager` override them).
pub const DEFAULT_AUTHORITY_HOST: &str = "https://login.microsoftonline.com";
pub const DEFAULT_RESOURCE_MANAGER: &str = "https://management.azure.com";
/// Where a VM or AKS node asks for managed-identity tokens (link-local, plain HTTP by design).
const IMDS_ENDPOINT: &str = "http://169.254.169.254/metadata/identity/oauth2/token";
/// Refresh this long before a token expires (the Azure SDKs' margin).
const REFRESH_MARGIN: Duration = Duration::from_secs(300);

/// What went wrong talking to Entra ID or ARM. `Api` keeps Azure's own error code and message.
#[derive(Debug, Clone, thiserror::Error)]
pub enum AzureError {
    /// Azure answered with an error status.
    #[error("{what}: HTTP {status}: {code}: {message}{hint}")]
    Api { what: String, status: u16, code: String, message: String, hint: String },
    /// No answer at all (connection refused, timeout, TLS).
    #[error("{what}: cannot reach Azure: {detail}")]
    Unreachable { what: String, detail: String },
    /// Ferry's Azure settings are incomplete or invalid.
    #[error("[azure]: {0}")]
    Config(String),
    /// A long-running operation or a read-back did not end as it should.
    #[error("{what}: {code}: {message}")]
    Operation { what: String, code: String, message: String },
}

impl AzureError {
    /// Throttling, server errors and unreachable endpoints may go away by themselves.
    pub fn is_retryable(&self) -> bool {
        match self {
            AzureError::Api { status, .. } => *status == 429 || *status >= 500 || *status == 408,
            AzureError::Unreachable { .. } => true,
            AzureError::Config(_) | AzureError::Operation { .. } => false,
        }
    }

    /// Azure's error code, when Azure gave one.
    pub fn code(&self) -> Option<&str> {
        match self {
            AzureError::Api { code, .. } | AzureError::Operation { code, .. } => Some(code),
            _ => None,
        }
    }
}

/// The `[azure]` settings after the environment was consulted.
#[derive(Debug, Clone)]
pub struct AzureSettings {
    pub tenant_id: Option<String>,
    pub client_id: Option<String>,
    /// The client secret itself (read from `client_secret_env` at start).
    pub client_secret: Option<Secret>,
    pub authority_host: Url,
    pub resource_manager: Url,
    /// PEM CA to trust for Entra ID, ARM and managed-identity endpoints.
    pub ca_cert_pem: Option<Vec<u8>>,
}

/// Checks an Azure endpoint: `https://`, or `http://` only on a loopback host (fakes in tests).
pub fn endpoint_url(key: &str, value: &str) -> Result<Url, AzureError> {
    let url = Url::parse(value).map_err(|e| AzureError::Config(format!("{key}: `{value}` is not a URL: {e}")))?;
    match url.scheme() {
        "https" => Ok(url),
        "http" if is_loopback(&url) => Ok(url),
        "http" => Err(AzureError::Config(format!(
            "{key}: `{value}` must use https:// (plain http only for 127.0.0.0/8, ::1 or localhost)"
        ))),
        other => Err(AzureError::Config(format!("{key}: `{value}`: scheme {other} is not https"))),
    }
}

pub(crate) fn is_loopback(url: &Url) -> bool {
    match url.host() {
        Some(url::Host::Domain(d)) => d.eq_ignore_ascii_case("localhost"),
        Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
        Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
        None => false,
    }
}

/// How Ferry proves its identity to Entra ID.
#[derive(Debug, Clone)]
pub enum CredentialSource {
    ClientSecret {
        tenant_id: String,
        client_id: String,
        secret: Secret,
    },
    /// AKS workload identity: the projected service-account token is the client assertion.
    WorkloadIdentity {
        tenant_id: String,
        client_id: String,
        token_file: std::path::PathBuf,
    },
    /// App Service / Functions / Container Apps managed identity.
    AppServiceIdentity {
        endpoint: Url,
        header: Secret,
        client_id: Option<String>,
    },
    /// VM / AKS node managed identity through IMDS.
    Imds {
        endpoint: Url,
        client_id: Option<String>,
    },
}

impl CredentialSource {
    /// Picks the credential as the Azure SDKs' default chain does; `env` reads an environment
    /// variable (a parameter so tests need not change the process environment).
    pub fn choose(settings: &AzureSettings, env: impl Fn(&str) -> Option<String>) -> Result<Self, AzureError> {
        let tenant = settings.tenant_id.clone().or_else(|| env("AZURE_TENANT_ID"));
        let client = settings.client_id.clone().or_else(|| env("AZURE_CLIENT_ID"));
        if let Some(secret) = &settings.client_secret {
            let (Some(tenant_id), Some(client_id)) = (tenant, client) else {
                return Err(AzureError::Config(
                    "client_secret_env needs tenant_id and client_id (or AZURE_TENANT_ID / AZURE_CLIENT_ID)".into(),
                ));
            };
            return Ok(CredentialSource::ClientSecret { tenant_id, client_id, secret: secret.clone() });
        }
        if let Some(file) = env("AZURE_FEDERATED_TOKEN_FILE") {
            let (Some(tenant_id), Some(client_id)) = (tenant, client) else {
                return Err(AzureError::Config(
                    "AZURE_FEDERATED_TOKEN_FILE is set (workload identity) but the tenant or client id is missing: set AZURE_TENANT_ID and AZURE_CLIENT_ID (the workload identity webhook injects them) or [azure] tenant_id / client_id".into(),
                ));
            };
            return Ok(CredentialSource::WorkloadIdentity { tenant_id, client_id, token_file: file.into() });
        }
        if let (Some(endpoint), Some(header)) = (env("IDENTITY_ENDPOINT"), env("IDENTITY_HEADER")) {
            let endpoint = endpoint_url("IDENTITY_ENDPOINT", &endpoint)?;
            return Ok(CredentialSource::AppServiceIdentity {
                endpoint,
                header: Secret::new(header),
                client_id: client,
            });
        }
        // The SDKs let AZURE_POD_IDENTITY_AUTHORITY_HOST move IMDS (pod identity); so does Ferry.
        let endpoint = match env("AZURE_POD_IDENTITY_AUTHORITY_HOST") {
            Some(host) => {
                let base = endpoint_url("AZURE_POD_IDENTITY_AUTHORITY_HOST", &host)?;
                base.join("/metadata/identity/oauth2/token").map_err(|e| AzureError::Config(e.to_string()))?
            }
            None => Url::parse(IMDS_ENDPOINT).expect("valid IMDS URL"),
        };
        Ok(CredentialSource::Imds { endpoint, client_id: client })
    }

    pub fn kind(&self) -> &'static str {
        match self {
            CredentialSource::ClientSecret { .. } => "client secret",
            CredentialSource::WorkloadIdentity { .. } => "workload identity",
            CredentialSource::AppServiceIdentity { .. } => "managed identity (IDENTITY_ENDPOINT)",
            CredentialSource::Imds { .. } => "managed identity (IMDS)",
        }
    }
}

#[derive(Clone)]
struct CachedToken {
    token: Secret,
    refresh_at: Instant,
}

/// Entra ID tokens for any scope, cached.
pub struct EntraCredential {
    source: CredentialSource,
    authority_host: Url,
    http: reqwest::Client,
    cache: Mutex<HashMap<String, Arc<tokio::sync::Mutex<Option<CachedToken>>>>>,
}

impl std::fmt::Debug for EntraCredential {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EntraCredential").field("source", &self.source.kind()).finish_non_exhaustive()
    }
}

impl EntraCredential {
    pub fn new(source: CredentialSource, authority_host: Url, http: reqwest::Client) -> Self {
        EntraCredential { source, authority_host, http, cache: Mutex::new(HashMap::new()) }
    }

    pub fn source(&self) -> &CredentialSource {
        &self.source
    }

    /// A bearer token for `scope` (`https://management.azure.com/.default`), from the cache
    /// while it is fresh. Concurrent callers for one scope share a single token request.
    pub async fn token(&self, scope: &str) -> Result<Secret, AzureError> {
        let slot = {
            let mut cache = self.cache.lock().expect("token cache lock");
            cache.entry(scope.to_string()).or_default().clone()
        };
        let mut cached = slot.lock().await;
        if let Some(token) = cached.as_ref().filter(|t| Instant::now() < t.refresh_at) {
            return Ok(token.token.clone());
        }
        let fresh = self.request(scope).await?;
        let token = fresh.token.clone();
        *cached = Some(fresh);
        Ok(token)
    }

    async fn request(&self, scope: &str) -> Result<CachedToken, AzureError> {
        let what = format!("Entra ID token for {scope} ({})", self.source.kind());
        let request = match &self.source {
            CredentialSource::ClientSecret { tenant_id, client_id, secret } => {
                let url = self.token_url(tenant_id)?;
                self.http.post(url).form(&[
                    ("grant_type", "client_credentials"),
                    ("client_id", client_id.as_str()),
                    ("client_secret", secret.expose()),
                    ("scope", scope),
                ])
            }
            CredentialSource::WorkloadIdentity { tenant_id, client_id, token_file } => {
                // Re-read on every refresh: the kubelet rotates the projected token.
                let assertion = tokio::fs::read_to_string(token_file).await.map_err(|e| {
                    AzureError::Config(format!(
                        "cannot read AZURE_FEDERATED_TOKEN_FILE {}: {e}; is the pod's service account annotated for workload identity?",
                        token_file.display()
                    ))
                })?;
                let url = self.token_url(tenant_id)?;
                self.http.post(url).form(&[
                    ("grant_type", "client_credentials"),
                    ("client_id", client_id.as_str()),
                    ("client_assertion_type", "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"),
                    ("client_assertion", assertion.trim()),
                    ("scope", scope),
                ])
            }
            CredentialSource::AppServiceIdentity { endpoint, header, client_id } => {
                let mut query = vec![("api-version", "2019-08-01"), ("resource", resource_of(scope))];
                if let Some(id) = client_id {
                    query.push(("client_id", id));
                }
                self.http.get(endpoint.clone()).query(&query).header("X-IDENTITY-HEADER", header.expose())
            }
            CredentialSource::Imds { endpoint, client_id } => {
                let mut query = vec![("api-version", "2018-02-01"), ("resource", resource_of(scope))];
                if let Some(id) = client_id {
                    query.push(("client_id", id));
                }
                self.http.get(endpoint.clone()).query(&query).header("Metadata", "true")
            }
        };
        let response = request
            .timeout(Duration::from_secs(30))
            .send()
            .await
            .map_err(|e| AzureError::Unreachable { what: what.clone(), detail: error_chain(&e) })?;
        let status = response.status();
        let body = response
            .bytes()
            .await
            .map_err(|e| AzureError::Unreachable { what: what.clone(), detail: error_chain(&e) })?;
        if !status.is_success() {
            let (code, message) = azure_error_body(&body);
            let hint = match status.as_u16() {
                400 | 401 => "; check the tenant id, client id and secret (or the federated credential) in [azure]",
                _ => "",
            };
            return Err(AzureError::Api { what, status: status.as_u16(), code, message, hint: hint.into() });
        }
        let parsed: TokenResponse = serde_json::from_slice(&body).map_err(|e| AzureError::Operation {
            what: what.clone(),
            code: "InvalidTokenResponse".into(),
            message: format!("unreadable token response: {e}"),
        })?;
        let lifetime = parsed.lifetime();
        // Half the lifetime at most, so that short-lived tokens are still reused a while.
        let margin = REFRESH_MARGIN.min(lifetime / 2);
        Ok(CachedToken { token: Secret::new(parsed.access_token), refresh_at: Instant::now() + lifetime - margin })
    }

    fn token_url(&self, tenant_id: &str) -> Result<Url, AzureError> {
        if tenant_id.is_empty() || !tenant_id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.') {
            return Err(AzureError::Config(format!("tenant_id `{tenant_id}` is not a tenant id or domain")));
        }
        self.authority_host
            .join(&format!("{tenant_id}/oauth2/v2.0/token"))
            .map_err(|e| AzureError::Config(format!("authority_host: {e}")))
    }
}

/// Managed-identity endpoints take a resource, not a scope.
fn resource_of(scope: &str) -> &str {
    scope.strip_suffix("/.default").unwrap_or(scope)
}

#[derive(Deserialize)]
struct TokenResponse {
    access_token: String,
    /// Entra ID: seconds (a number; managed identity sends strings).
    expires_in: Option<serde_json::Value>,
    /// Managed identity: Unix seconds as a string.
    expires_on: Option<serde_json::Value>,
}

impl TokenResponse {
    fn lifetime(&self) -> Duration {
        let number = |v: &serde_json::Value| match v {
            serde_json::Value::Number(n) => n.as_u64(),
            serde_json::Value::String(s) => s.trim().parse().ok(),
            _ => None,
        };
        if let Some(seconds) = self.expires_in.as_ref().and_then(number) {
            return Duration::from_secs(seconds);
        }
        if let Some(at) = self.expires_on.as_ref().and_then(number) {
            let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default().as_secs();
            return Duration::from_secs(at.saturating_sub(now));
        }
        // Unknown: use it once.
        Duration::ZERO
    }
}

/// Azure's error code and message from any of its error shapes: ARM's
/// `{"error":{"code","message"}}`, Entra's `{"error","error_description"}`, or a bare
/// `{"code","message"}` (some long-running operations).
pub fn azure_error_body(body: &[u8]) -> (String, String) {
    let value: serde_json::Value = serde_json::from_slice(body).unwrap_or(serde_json::Value::Null);
    let text = |v: &serde_json::Value| v.as_str().map(str::to_string);
    let nested = value.get("error").filter(|e| e.is_object());
    let (code, message) = match nested {
        Some(error) => (error.get("code").and_then(text), error.get("message").and_then(text)),
        None => match value.get("error").and_then(text) {
            Some(code) => (Some(code), value.get("error_description").and_then(text)),
            None => (value.get("code").and_then(text), value.get("message").and_then(text)),
        },
    };
    let fallback = || {
        let snippet: String = String::from_utf8_lossy(body).chars().take(200).collect();
        crate::escape::escape_control(&snippet).to_string()
    };
    (code.unwrap_or_else(|| "Unknown".into()), message.unwrap_or_else(fallback))
}

/// The error and its sources, for messages (reqwest's Display hides the cause).
pub fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

/// Builds the one HTTP client the Azure notifiers share (with `[azure] ca_cert` when set).
pub fn azure_http(ca_cert_pem: Option<&[u8]>) -> Result<reqwest::Client, AzureError> {
    let mut builder = reqwest::Client::builder().connect_timeout(Duration::from_secs(10));
    if let Some(pem) = ca_cert_pem {
        let cert = reqwest::Certificate::from_pem(pem)
            .map_err(|e| AzureError::Config(format!("ca_cert: not a PEM certificate: {e}")))?;
        builder = builder.add_root_certificate(cert);
    }
    builder.build().map_err(|e| AzureError::Config(format!("cannot build the HTTP client: {e}")))
}

/// ARM requests with an Entra token, retries for throttling and server errors, and Azure's
/// error code and message in failures.
pub struct ArmClient {
    credential: Arc<EntraCredential>,
    resource_manager: Url,
    http: reqwest::Client,
    /// Attempts for 429 / 5xx / unreachable.
    pub attempts: u32,
    /// The first retry's pause when Azure sends no `Retry-After`; doubles each time.
    pub backoff: Duration,
    /// The longest `Retry-After` honoured; a longer one is cut to it.
    pub max_retry_after: Duration,
}

/// An ARM answer that was not an error.
pub struct ArmResponse {
    pub status: StatusCode,
    pub headers: reqwest::header::HeaderMap,
    pub body: serde_json::Value,
}

impl ArmClient {
    pub fn new(credential: Arc<EntraCredential>, resource_manager: Url, http: reqwest::Client) -> Self {
        ArmClient {
            credential,
            resource_manager,
            http,
            attempts: 5,
            backoff: Duration::from_millis(500),
            max_retry_after: Duration::from_secs(60),
        }
    }

    /// `{resource_manager}/.default`: the scope of ARM tokens.
    pub fn scope(&self) -> String {
        format!("{}/.default", self.resource_manager.as_str().trim_end_matches('/'))
    }

    /// The Entra ID credential behind this client (AKS API servers take its tokens too).
    pub fn credential(&self) -> &Arc<EntraCredential> {
        &self.credential
    }

    pub fn resource_manager(&self) -> &Url {
        &self.resource_manager
    }

    /// `method` on `path` (an ARM resource path, or an absolute polling URL on the same host)
    /// with `api-version`. `resource` names what is being changed, for messages.
    pub async fn send(
        &self,
        method: Method,
        path_or_url: &str,
        api_version: Option<&str>,
        body: Option<&serde_json::Value>,
        resource: &str,
    ) -> Result<ArmResponse, AzureError> {
        let mut url = if path_or_url.starts_with("https://") || path_or_url.starts_with("http://") {
            let url = Url::parse(path_or_url).map_err(|e| AzureError::Operation {
                what: resource.into(),
                code: "InvalidPollingUrl".into(),
                message: format!("`{path_or_url}`: {e}"),
            })?;
            // A polling URL elsewhere would receive our ARM token.
            if url.origin() != self.resource_manager.origin() {
                return Err(AzureError::Operation {
                    what: resource.into(),
                    code: "ForeignPollingUrl".into(),
                    message: format!("ARM asked to poll {url}, which is not {}", self.resource_manager),
                });
            }
            url
        } else {
            self.resource_manager.join(path_or_url).map_err(|e| AzureError::Config(format!("resource_manager: {e}")))?
        };
        if let Some(version) = api_version {
            url.query_pairs_mut().append_pair("api-version", version);
        }
        let what = format!("{method} {resource}");
        let mut attempt = 0;
        loop {
            attempt += 1;
            let (error, retry_after) = match self.once(method.clone(), url.clone(), body, &what).await {
                Ok(response) => return Ok(response),
                Err((error, _)) if !error.is_retryable() || attempt >= self.attempts => return Err(error),
                Err(failed) => failed,
            };
            let pause = retry_after.unwrap_or(self.backoff * 2u32.pow(attempt - 1)).min(self.max_retry_after);
            tracing::warn!(%error, attempt, "ARM request failed; retrying in {pause:?}");
            tokio::time::sleep(pause).await;
        }
    }

    async fn once(
        &self,
        method: Method,
        url: Url,
        body: Option<&serde_json::Value>,
        what: &str,
    ) -> Result<ArmResponse, (AzureError, Option<Duration>)> {
        let token = self.credential.token(&self.scope()).await.map_err(|e| (e, None))?;
        let mut request = self.http.request(method, url).bearer_auth(token.expose()).timeout(Duration::from_secs(60));
        if let Some(body) = body {
            request = request.json(body);
        }
        let response = request
            .send()
            .await
            .map_err(|e| (AzureError::Unreachable { what: what.into(), detail: error_chain(&e) }, None))?;
        let status = response.status();
        let headers = response.headers().clone();
        let bytes = response
            .bytes()
            .await
            .map_err(|e| (AzureError::Unreachable { what: what.into(), detail: error_chain(&e) }, None))?;
        if status.is_success() {
            let body = if bytes.is_empty() {
                serde_json::Value::Null
            } else {
                serde_json::from_slice(&bytes).unwrap_or(serde_json::Value::Null)
            };
            return Ok(ArmResponse { status, headers, body });
        }
        let (code, message) = azure_error_body(&bytes);
        let hint = match status.as_u16() {
            401 => "; the token was refused: check [azure] tenant_id and the identity".to_string(),
            403 => "; grant the identity the role this needs (see docs/DEPLOY-AZURE.md)".to_string(),
            404 => "; check the subscription, resource group and name".to_string(),
            _ => String::new(),
        };
        Err((
            AzureError::Api { what: what.into(), status: status.as_u16(), code, message, hint },
            retry_after(&headers),
        ))
    }

    /// Follows a long-running operation to its end: `Azure-AsyncOperation` until its status is
    /// final, else `Location` until it stops answering 202; `timeout` overall, polling every
    /// `poll_interval` unless ARM sends `Retry-After`.
    pub async fn wait_for_operation(
        &self,
        started: ArmResponse,
        resource: &str,
        timeout: Duration,
        poll_interval: Duration,
    ) -> Result<(), AzureError> {
        if started.status != StatusCode::ACCEPTED {
            return Ok(());
        }
        let header = |name: &str| started.headers.get(name).and_then(|v| v.to_str().ok()).map(str::to_string);
        let deadline = Instant::now() + timeout;
        let mut pause = retry_after(&started.headers).unwrap_or(poll_interval);
        let timed_out = || AzureError::Operation {
            what: resource.into(),
            code: "OperationTimedOut".into(),
            message: format!("still running after {:?}", timeout),
        };
        if let Some(operation) = header("azure-asyncoperation") {
            loop {
                tokio::time::sleep(pause.min(Duration::from_secs(60))).await;
                let polled = self.send(Method::GET, &operation, None, None, resource).await?;
                match polled.body["status"].as_str().unwrap_or_default() {
                    s if s.eq_ignore_ascii_case("succeeded") => return Ok(()),
                    s if s.eq_ignore_ascii_case("failed") || s.eq_ignore_ascii_case("canceled") => {
                        let error = &polled.body["error"];
                        return Err(AzureError::Operation {
                            what: resource.into(),
                            code: error["code"].as_str().unwrap_or(s).to_string(),
                            message: error["message"].as_str().unwrap_or("the operation did not succeed").to_string(),
                        });
                    }
                    _ => {}
                }
                if Instant::now() >= deadline {
                    return Err(timed_out());
                }
                pause = retry_after(&polled.headers).unwrap_or(poll_interval);
            }
        }
        let Some(location) = header("location") else {
            return Err(AzureError::Operation {
                what: resource.into(),
                code: "NoOperationUrl".into(),
                message: "ARM answered 202 without Location or Azure-AsyncOperation to follow".into(),
            });
        };
        loop {
            tokio::time::sleep(pause.min(Duration::from_secs(60))).await;
            let polled = self.send(Method::GET, &location, None, None, resource).await?;
            if polled.status != StatusCode::ACCEPTED {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(timed_out());
            }
            pause = retry_after(&polled.headers).unwrap_or(poll_interval);
        }
    }
}

/// The ARM client for `config`'s `[azure]` table and the process environment, with its
/// credential chosen once.
pub fn arm_client(config: &crate::config::Config) -> Result<ArmClient, AzureError> {
    let empty = crate::config::Azure::default();
    let azure = config.azure.as_ref().unwrap_or(&empty);
    let env = |name: &str| std::env::var(name).ok().filter(|v| !v.is_empty());
    let authority = match &azure.authority_host {
        Some(host) => host.get_ref().clone(),
        None => env("AZURE_AUTHORITY_HOST").unwrap_or_else(|| DEFAULT_AUTHORITY_HOST.into()),
    };
    let resource_manager =
        azure.resource_manager.as_ref().map(|r| r.get_ref().clone()).unwrap_or_else(|| DEFAULT_RESOURCE_MANAGER.into());
    let client_secret = config
        .secret("azure.client_secret", azure.client_secret_env.as_ref(), azure.client_secret_arn.as_ref())
        .map_err(|e| AzureError::Config(e.to_string()))?
        .filter(|s| !s.expose().is_empty());
    if client_secret.is_none() && azure.client_secret_env.is_some() {
        return Err(AzureError::Config("azure.client_secret_env: the environment variable is empty".into()));
    }
    let ca_cert_pem = match &azure.ca_cert {
        Some(path) => Some(
            std::fs::read(path)
                .map_err(|e| AzureError::Config(format!("ca_cert: cannot read {}: {e}", path.display())))?,
        ),
        None => None,
    };
    // A trailing slash makes `join` keep a path prefix (sovereign clouds, fakes).
    let with_slash = |u: String| if u.ends_with('/') { u } else { format!("{u}/") };
    let settings = AzureSettings {
        tenant_id: azure.tenant_id.clone(),
        client_id: azure.client_id.clone(),
        client_secret,
        authority_host: endpoint_url("authority_host", &with_slash(authority))?,
        resource_manager: endpoint_url("resource_manager", &resource_manager)?,
        ca_cert_pem,
    };
    let source = CredentialSource::choose(&settings, env)?;
    let http = azure_http(settings.ca_cert_pem.as_deref())?;
    let credential = Arc::new(EntraCredential::new(source, settings.authority_host.clone(), http.clone()));
    Ok(ArmClient::new(credential, settings.resource_manager, http))
}

/// `Retry-After` in seconds (ARM sends seconds; an HTTP date is treated as absent).
pub fn retry_after(headers: &reqwest::header::HeaderMap) -> Option<Duration> {
    headers
        .get(reqwest::header::RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok())
        .map(Duration::from_secs)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings() -> AzureSettings {
        AzureSettings {
            tenant_id: None,
            client_id: None,
            client_secret: None,
            authority_host: Url::parse(DEFAULT_AUTHORITY_HOST).unwrap(),
            resource_manager: Url::parse(DEFAULT_RESOURCE_MANAGER).unwrap(),
            ca_cert_pem: None,
        }
    }

    #[test]
    fn plain_http_only_for_loopback_hosts() {
        for ok in [
            "https://login.microsoftonline.us",
            "http://127.0.0.1:8080",
            "http://127.8.0.1",
            "http://[::1]:9",
            "http://localhost:1",
        ] {
            assert!(endpoint_url("authority_host", ok).is_ok(), "{ok}");
        }
        for bad in
            ["http://login.microsoftonline.com", "http://10.0.0.1", "http://localhost.evil.com", "ftp://127.0.0.1"]
        {
            let err = endpoint_url("authority_host", bad).unwrap_err().to_string();
            assert!(err.contains("authority_host"), "{bad}: {err}");
        }
    }

    #[test]
    fn the_credential_is_chosen_like_the_sdks_default_chain() {
        let env = |vars: &'static [(&'static str, &'static str)]| {
            move |name: &str| vars.iter().find(|(k, _)| *k == name).map(|(_, v)| v.to_string())
        };
        let mut with_secret = settings();
        with_secret.client_secret = Some(Secret::new("s"));
        with_secret.tenant_id = Some("t".into());
        let chosen = CredentialSource::choose(&with_secret, env(&[("AZURE_CLIENT_ID", "c")])).unwrap();
        assert!(matches!(chosen, CredentialSource::ClientSecret { ref client_id, .. } if client_id == "c"));
        let err = CredentialSource::choose(&with_secret, env(&[])).unwrap_err().to_string();
        assert!(err.contains("client_id"), "{err}");

        let workload = env(&[("AZURE_FEDERATED_TOKEN_FILE", "/t"), ("AZURE_TENANT_ID", "t"), ("AZURE_CLIENT_ID", "c")]);
        assert!(matches!(
            CredentialSource::choose(&settings(), workload).unwrap(),
            CredentialSource::WorkloadIdentity { .. }
        ));

        let app_service = env(&[("IDENTITY_ENDPOINT", "http://127.0.0.1:41741/msi/token"), ("IDENTITY_HEADER", "h")]);
        assert!(matches!(
            CredentialSource::choose(&settings(), app_service).unwrap(),
            CredentialSource::AppServiceIdentity { .. }
        ));

        match CredentialSource::choose(&settings(), env(&[])).unwrap() {
            CredentialSource::Imds { endpoint, .. } => assert_eq!(endpoint.as_str(), IMDS_ENDPOINT),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn azure_error_shapes_give_code_and_message() {
        let arm =
            br#"{"error":{"code":"ResourceNotFound","message":"The Resource 'Microsoft.Web/sites/x' was not found."}}"#;
        assert_eq!(azure_error_body(arm).0, "ResourceNotFound");
        let entra =
            br#"{"error":"invalid_client","error_description":"AADSTS7000215: Invalid client secret provided."}"#;
        assert_eq!(
            azure_error_body(entra),
            ("invalid_client".into(), "AADSTS7000215: Invalid client secret provided.".into())
        );
        assert_eq!(azure_error_body(b"<html>\x1b").0, "Unknown");
    }

    #[test]
    fn token_lifetimes_from_either_field() {
        let r: TokenResponse = serde_json::from_str(r#"{"access_token":"a","expires_in":3599}"#).unwrap();
        assert_eq!(r.lifetime(), Duration::from_secs(3599));
        let r: TokenResponse = serde_json::from_str(r#"{"access_token":"a","expires_in":"60"}"#).unwrap();
        assert_eq!(r.lifetime(), Duration::from_secs(60));
        let soon = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs() + 1000;
        let r: TokenResponse =
            serde_json::from_str(&format!(r#"{{"access_token":"a","expires_on":"{soon}"}}"#)).unwrap();
        assert!(r.lifetime() > Duration::from_secs(900));
    }
}

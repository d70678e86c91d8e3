//! Kubernetes (AKS or any cluster): strategic-merge-patch one container of a Deployment to the
//! digest, then wait the way `kubectl rollout status` does. Plain reqwest over the kubeconfig's
//! TLS settings (CA, client certificate) with its bearer token, or the in-cluster service
//! account; no kube crate.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use base64::Engine as _;
use futures_util::future::BoxFuture;
use reqwest::{Method, StatusCode};
use serde::Deserialize;
use serde_json::{Value, json};

use std::sync::Arc;

use super::azure::{ArmClient, EntraCredential, error_chain};
use super::{Deployment, Notified, Notifier, NotifyError};
use crate::registry::auth::Secret;

const SERVICE_ACCOUNT_DIR: &str = "/var/run/secrets/kubernetes.io/serviceaccount";
/// The Entra ID application of AKS-managed AAD API servers: what `kubelogin` gets tokens for.
pub const AKS_SERVER_SCOPE: &str = "6dae42f8-4368-4678-94ff-3960e28e3630/.default";
/// The Microsoft.ContainerService api-version of `listClusterUserCredential` (WIRE_FORMATS §8.3).
pub const AKS_API_VERSION: &str = "2024-09-01";

/// What went wrong reaching the API server or rolling out, with Kubernetes' own reason.
#[derive(Debug, Clone, thiserror::Error)]
pub enum KubeError {
    #[error("kubeconfig {path}: {detail}")]
    Config { path: String, detail: String },
    #[error("{what}: HTTP {status}: {reason}: {message}{hint}")]
    Api { what: String, status: u16, reason: String, message: String, hint: String },
    #[error("{what}: cannot reach the API server: {detail}")]
    Unreachable { what: String, detail: String },
    /// The rollout failed (`ProgressDeadlineExceeded`) or did not finish in time.
    #[error("{what}: {reason}: {message}")]
    Rollout { what: String, reason: String, message: String },
}

impl KubeError {
    pub fn is_retryable(&self) -> bool {
        match self {
            KubeError::Api { status, .. } => *status == 409 || *status == 429 || *status >= 500,
            KubeError::Unreachable { .. } => true,
            KubeError::Config { .. } | KubeError::Rollout { .. } => false,
        }
    }
}

#[derive(Debug, Default, Deserialize)]
struct Kubeconfig {
    #[serde(rename = "current-context", default)]
    current_context: Option<String>,
    #[serde(default)]
    clusters: Vec<Named<ClusterEntry>>,
    #[serde(default)]
    users: Vec<Named<UserEntry>>,
    #[serde(default)]
    contexts: Vec<Named<ContextEntry>>,
}

#[derive(Debug, Deserialize)]
struct Named<T> {
    name: String,
    #[serde(alias = "cluster", alias = "user", alias = "context")]
    value: Option<T>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "kebab-case")]
struct ClusterEntry {
    server: String,
    certificate_authority_data: Option<String>,
    certificate_authority: Option<PathBuf>,
    #[serde(default)]
    insecure_skip_tls_verify: bool,
    tls_server_name: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "kebab-case")]
struct UserEntry {
    token: Option<String>,
    #[serde(rename = "tokenFile")]
    token_file: Option<PathBuf>,
    client_certificate_data: Option<String>,
    client_key_data: Option<String>,
    client_certificate: Option<PathBuf>,
    client_key: Option<PathBuf>,
    exec: Option<Value>,
    auth_provider: Option<Value>,
}

#[derive(Debug, Default, Deserialize)]
struct ContextEntry {
    cluster: String,
    #[serde(default)]
    user: String,
}

/// How requests authenticate.
#[derive(Debug, Clone)]
enum Bearer {
    None,
    Token(Secret),
    /// Re-read per request: projected service-account tokens rotate.
    File(PathBuf),
    /// An Entra ID token for the AKS server application (Entra-integrated AKS clusters).
    Entra(Arc<EntraCredential>),
}

/// An API server to talk to: where, how, and as whom.
#[derive(Debug)]
pub struct ApiServer {
    server: url::Url,
    http: reqwest::Client,
    bearer: Bearer,
}

impl ApiServer {
    /// From a kubeconfig file (YAML or JSON), its `context` or `current-context`.
    pub fn from_kubeconfig(path: &Path, context: Option<&str>) -> Result<Self, KubeError> {
        let shown = path.display().to_string();
        let text = std::fs::read_to_string(path)
            .map_err(|e| KubeError::Config { path: shown.clone(), detail: format!("cannot read: {e}") })?;
        Self::from_kubeconfig_text(&text, path.parent().unwrap_or(Path::new(".")), &shown, context, None)
    }

    /// From kubeconfig text; relative files resolve against `base`, `shown` names it in errors.
    /// With `entra`, a user that runs a plugin (kubelogin, on Entra-integrated AKS) is served
    /// an Entra ID token for the AKS server application instead.
    pub fn from_kubeconfig_text(
        text: &str,
        base: &Path,
        shown: &str,
        context: Option<&str>,
        entra: Option<Arc<EntraCredential>>,
    ) -> Result<Self, KubeError> {
        let fail = |detail: String| KubeError::Config { path: shown.to_string(), detail };
        let config: Kubeconfig = serde_yaml_ng::from_str(text).map_err(|e| fail(format!("not a kubeconfig: {e}")))?;
        let relative = |p: &PathBuf| if p.is_absolute() { p.clone() } else { base.join(p) };
        let name = context
            .map(str::to_string)
            .or(config.current_context.clone())
            .ok_or_else(|| fail("no `context` given and no current-context set".into()))?;
        let ctx = config
            .contexts
            .iter()
            .find(|c| c.name == name)
            .and_then(|c| c.value.as_ref())
            .ok_or_else(|| fail(format!("no context named `{name}`")))?;
        let cluster =
            config.clusters.iter().find(|c| c.name == ctx.cluster).and_then(|c| c.value.as_ref()).ok_or_else(|| {
                fail(format!("context `{name}` names cluster `{}`, which is not defined", ctx.cluster))
            })?;
        let empty = UserEntry::default();
        let user = config.users.iter().find(|u| u.name == ctx.user).and_then(|u| u.value.as_ref()).unwrap_or(&empty);
        let plugin = user.exec.is_some() || user.auth_provider.is_some();
        if plugin && entra.is_none() {
            return Err(fail(format!(
                "user `{}` runs an exec/auth-provider plugin, which Ferry does not run; give it a token (AKS: `kubelogin convert-kubeconfig -l azurecli` is not enough either — use a service-account token) or run Ferry in the cluster",
                ctx.user
            )));
        }
        let b64 = |field: &str, data: &str| {
            base64::engine::general_purpose::STANDARD
                .decode(data.trim())
                .map_err(|e| fail(format!("{field}: not base64: {e}")))
        };
        let read = |field: &str, p: &PathBuf| {
            std::fs::read(relative(p)).map_err(|e| fail(format!("{field}: cannot read {}: {e}", relative(p).display())))
        };
        let ca = match (&cluster.certificate_authority_data, &cluster.certificate_authority) {
            (Some(data), _) => Some(b64("certificate-authority-data", data)?),
            (None, Some(p)) => Some(read("certificate-authority", p)?),
            (None, None) => None,
        };
        let cert = match (&user.client_certificate_data, &user.client_certificate) {
            (Some(data), _) => Some(b64("client-certificate-data", data)?),
            (None, Some(p)) => Some(read("client-certificate", p)?),
            (None, None) => None,
        };
        let key = match (&user.client_key_data, &user.client_key) {
            (Some(data), _) => Some(b64("client-key-data", data)?),
            (None, Some(p)) => Some(read("client-key", p)?),
            (None, None) => None,
        };
        let identity = match (cert, key) {
            (Some(mut cert), Some(key)) => {
                cert.push(b'\n');
                cert.extend_from_slice(&key);
                Some(cert)
            }
            (None, None) => None,
            _ => {
                return Err(fail(format!(
                    "user `{}`: a client certificate needs its key, and a key its certificate",
                    ctx.user
                )));
            }
        };
        let bearer = match (&user.token, &user.token_file, entra) {
            (Some(token), _, _) => Bearer::Token(Secret::new(token.trim())),
            (None, Some(p), _) => Bearer::File(relative(p)),
            (None, None, Some(entra)) if plugin => Bearer::Entra(entra),
            _ => Bearer::None,
        };
        let server = url::Url::parse(&cluster.server).map_err(|e| fail(format!("server `{}`: {e}", cluster.server)))?;
        if server.scheme() != "https" && !matches!(bearer, Bearer::None) {
            return Err(fail(format!("server {server}: a bearer token is sent only over https (as kubectl does)")));
        }
        let http = http_client(
            ca.as_deref(),
            identity.as_deref(),
            cluster.insecure_skip_tls_verify,
            cluster.tls_server_name.as_deref(),
        )
        .map_err(fail)?;
        Ok(ApiServer { server, http, bearer })
    }

    /// The pod's service account (`KUBERNETES_SERVICE_HOST`/`PORT`, token and CA under
    /// `/var/run/secrets/kubernetes.io/serviceaccount`).
    pub fn in_cluster() -> Result<Self, KubeError> {
        let fail = |detail: String| KubeError::Config { path: "(in-cluster)".into(), detail };
        let host = std::env::var("KUBERNETES_SERVICE_HOST").map_err(|_| {
            fail("no `kubeconfig` given and not running in a cluster (KUBERNETES_SERVICE_HOST is unset)".into())
        })?;
        let port = std::env::var("KUBERNETES_SERVICE_PORT").unwrap_or_else(|_| "443".into());
        let host = if host.contains(':') { format!("[{host}]") } else { host };
        let server = url::Url::parse(&format!("https://{host}:{port}")).map_err(|e| fail(e.to_string()))?;
        let dir = Path::new(SERVICE_ACCOUNT_DIR);
        let ca = std::fs::read(dir.join("ca.crt"))
            .map_err(|e| fail(format!("cannot read {SERVICE_ACCOUNT_DIR}/ca.crt: {e}")))?;
        let http = http_client(Some(&ca), None, false, None).map_err(fail)?;
        Ok(ApiServer { server, http, bearer: Bearer::File(dir.join("token")) })
    }

    async fn request(
        &self,
        method: Method,
        path: &str,
        body: Option<(&str, &Value)>,
        what: &str,
    ) -> Result<Value, KubeError> {
        let url =
            self.server.join(path).map_err(|e| KubeError::Unreachable { what: what.into(), detail: e.to_string() })?;
        let mut request =
            self.http.request(method, url).header("accept", "application/json").timeout(Duration::from_secs(30));
        match &self.bearer {
            Bearer::None => {}
            Bearer::Token(token) => request = request.bearer_auth(token.expose()),
            Bearer::File(path) => {
                let token = tokio::fs::read_to_string(path).await.map_err(|e| KubeError::Config {
                    path: path.display().to_string(),
                    detail: format!("cannot read the token file: {e}"),
                })?;
                request = request.bearer_auth(token.trim());
            }
            Bearer::Entra(credential) => {
                let token = credential
                    .token(AKS_SERVER_SCOPE)
                    .await
                    .map_err(|e| KubeError::Config { path: "(AKS Entra ID)".into(), detail: e.to_string() })?;
                request = request.bearer_auth(token.expose());
            }
        }
        if let Some((content_type, body)) = body {
            request = request.header("content-type", content_type).body(serde_json::to_vec(body).expect("json"));
        }
        let response =
            request.send().await.map_err(|e| KubeError::Unreachable { what: what.into(), detail: error_chain(&e) })?;
        let status = response.status();
        let bytes = response
            .bytes()
            .await
            .map_err(|e| KubeError::Unreachable { what: what.into(), detail: error_chain(&e) })?;
        let value: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        if status.is_success() {
            return Ok(value);
        }
        // Kubernetes errors are `Status` objects: reason (NotFound, Forbidden, Conflict) and message.
        let reason = value["reason"]
            .as_str()
            .map(str::to_string)
            .unwrap_or_else(|| status.canonical_reason().unwrap_or("Error").replace(' ', ""));
        let message = value["message"].as_str().map(str::to_string).unwrap_or_else(|| {
            crate::escape::escape_control(&String::from_utf8_lossy(&bytes).chars().take(200).collect::<String>())
                .to_string()
        });
        let hint = match status {
            StatusCode::UNAUTHORIZED => "; the API server refused the credentials in the kubeconfig".to_string(),
            StatusCode::FORBIDDEN => {
                "; grant `get` and `patch` on deployments (apps) in this namespace (see docs/DEPLOY-AZURE.md)"
                    .to_string()
            }
            StatusCode::NOT_FOUND => "; check notify.namespace and notify.deployment".to_string(),
            _ => String::new(),
        };
        Err(KubeError::Api { what: what.into(), status: status.as_u16(), reason, message, hint })
    }
}

fn http_client(
    ca: Option<&[u8]>,
    identity: Option<&[u8]>,
    insecure: bool,
    tls_server_name: Option<&str>,
) -> Result<reqwest::Client, String> {
    let mut builder = reqwest::Client::builder().connect_timeout(Duration::from_secs(10));
    if let Some(pem) = ca {
        // A kubeconfig CA may be a bundle of several certificates.
        let certs = reqwest::Certificate::from_pem_bundle(pem).map_err(|e| format!("certificate authority: {e}"))?;
        if certs.is_empty() {
            return Err("certificate authority: no PEM certificate in it".into());
        }
        for cert in certs {
            builder = builder.add_root_certificate(cert);
        }
    }
    if let Some(pem) = identity {
        builder =
            builder.identity(reqwest::Identity::from_pem(pem).map_err(|e| format!("client certificate/key: {e}"))?);
    }
    if insecure {
        builder = builder.danger_accept_invalid_certs(true);
    }
    if tls_server_name.is_some() {
        return Err("tls-server-name is not supported; use a server URL whose host the certificate names".into());
    }
    builder.build().map_err(|e| format!("cannot build the HTTP client: {e}"))
}

/// Where a rollout stands, as `kubectl rollout status` reads it.
#[derive(Debug, PartialEq, Eq)]
pub enum Rollout {
    Done(String),
    Waiting(String),
    Failed { reason: String, message: String },
}

/// `kubectl rollout status`'s reading of a Deployment (kubectl's
/// `polymorphichelpers/rollout_status.go`), for the spec generation `generation` or later.
pub fn rollout_status(deployment: &Value, generation: i64) -> Rollout {
    let name = deployment["metadata"]["name"].as_str().unwrap_or("deployment");
    let status = &deployment["status"];
    let int = |v: &Value| v.as_i64().unwrap_or(0);
    let observed = int(&status["observedGeneration"]);
    let current_generation = int(&deployment["metadata"]["generation"]).max(generation);
    if observed < current_generation {
        return Rollout::Waiting(format!("waiting for deployment {name} spec update to be observed"));
    }
    if let Some(conditions) = status["conditions"].as_array() {
        let failed =
            conditions.iter().find(|c| c["type"] == "Progressing" && c["reason"] == "ProgressDeadlineExceeded");
        if let Some(c) = failed {
            return Rollout::Failed {
                reason: "ProgressDeadlineExceeded".into(),
                message: c["message"].as_str().unwrap_or("deployment exceeded its progress deadline").to_string(),
            };
        }
    }
    let desired = deployment["spec"]["replicas"].as_i64().unwrap_or(1);
    let updated = int(&status["updatedReplicas"]);
    let replicas = int(&status["replicas"]);
    let available = int(&status["availableReplicas"]);
    if updated < desired {
        return Rollout::Waiting(format!("{updated} of {desired} new replicas updated"));
    }
    if replicas > updated {
        return Rollout::Waiting(format!("{} old replicas pending termination", replicas - updated));
    }
    if available < updated {
        return Rollout::Waiting(format!("{available} of {updated} updated replicas available"));
    }
    Rollout::Done(format!("deployment {name} successfully rolled out"))
}

/// An AKS cluster whose user kubeconfig Ferry fetches from ARM (`listClusterUserCredential`).
pub struct AksCluster {
    pub arm: Arc<ArmClient>,
    pub subscription: String,
    pub resource_group: String,
    pub cluster: String,
    pub context: Option<String>,
}

impl AksCluster {
    async fn api_server(&self) -> Result<ApiServer, KubeError> {
        let path = format!(
            "/subscriptions/{}/resourceGroups/{}/providers/Microsoft.ContainerService/managedClusters/{}/listClusterUserCredential",
            self.subscription, self.resource_group, self.cluster
        );
        let resource = format!("AKS cluster {} user credentials", self.cluster);
        let fail = |detail: String| KubeError::Config { path: resource.clone(), detail };
        let answer = self
            .arm
            .send(Method::POST, &path, Some(AKS_API_VERSION), None, &resource)
            .await
            .map_err(|e| fail(e.to_string()))?;
        let value = answer.body["kubeconfigs"][0]["value"]
            .as_str()
            .ok_or_else(|| fail("ARM answered without kubeconfigs[0].value".into()))?;
        let text = base64::engine::general_purpose::STANDARD
            .decode(value)
            .map_err(|e| fail(format!("kubeconfig not base64: {e}")))?;
        let text = String::from_utf8(text).map_err(|_| fail("kubeconfig is not UTF-8".into()))?;
        ApiServer::from_kubeconfig_text(
            &text,
            Path::new("."),
            &resource,
            self.context.as_deref(),
            Some(self.arm.credential().clone()),
        )
    }
}

pub struct KubernetesNotifier {
    api: tokio::sync::OnceCell<ApiServer>,
    aks: Option<AksCluster>,
    namespace: String,
    deployment: String,
    container: String,
    timeout: Duration,
    /// Pause between status reads.
    pub poll_interval: Duration,
    /// Attempts for 409 / 429 / 5xx / unreachable on the patch.
    pub attempts: u32,
}

impl KubernetesNotifier {
    pub fn new(
        api: ApiServer,
        namespace: &str,
        deployment: &str,
        container: &str,
        timeout: Duration,
    ) -> Result<Self, NotifyError> {
        for (key, value) in [("namespace", namespace), ("deployment", deployment), ("container", container)] {
            let dns = !value.is_empty()
                && value.len() <= 253
                && value.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.');
            if !dns {
                return Err(NotifyError::Permanent {
                    target: format!("Kubernetes deployment {namespace}/{deployment}"),
                    detail: format!("notify.{key} `{value}` is not a Kubernetes name"),
                });
            }
        }
        Ok(KubernetesNotifier {
            api: tokio::sync::OnceCell::new_with(Some(api)),
            aks: None,
            namespace: namespace.into(),
            deployment: deployment.into(),
            container: container.into(),
            timeout,
            poll_interval: Duration::from_secs(1),
            attempts: 5,
        })
    }

    /// For an AKS cluster: its kubeconfig is fetched from ARM on first use (and kept).
    pub fn for_aks(
        aks: AksCluster,
        namespace: &str,
        deployment: &str,
        container: &str,
        timeout: Duration,
    ) -> Result<Self, NotifyError> {
        let placeholder = ApiServer {
            server: url::Url::parse("https://aks.invalid").expect("url"),
            http: reqwest::Client::new(),
            bearer: Bearer::None,
        };
        let mut notifier = Self::new(placeholder, namespace, deployment, container, timeout)?;
        notifier.api = tokio::sync::OnceCell::new();
        notifier.aks = Some(aks);
        Ok(notifier)
    }

    async fn api(&self) -> Result<&ApiServer, KubeError> {
        self.api
            .get_or_try_init(|| async {
                match &self.aks {
                    Some(aks) => aks.api_server().await,
                    None => Err(KubeError::Config { path: "(none)".into(), detail: "no API server configured".into() }),
                }
            })
            .await
    }

    fn path(&self) -> String {
        format!("/apis/apps/v1/namespaces/{}/deployments/{}", self.namespace, self.deployment)
    }

    fn what(&self) -> String {
        format!("deployment {}/{}", self.namespace, self.deployment)
    }

    async fn patch(&self, image: &str) -> Result<Value, KubeError> {
        let body = json!({ "spec": { "template": { "spec": { "containers": [ { "name": self.container, "image": image } ] } } } });
        let what = format!("patch {} container {}", self.what(), self.container);
        let mut attempt = 0;
        loop {
            attempt += 1;
            match self
                .api()
                .await?
                .request(Method::PATCH, &self.path(), Some(("application/strategic-merge-patch+json", &body)), &what)
                .await
            {
                Err(e) if e.is_retryable() && attempt < self.attempts => {
                    let pause = Duration::from_millis(250 * 2u64.pow(attempt - 1));
                    tracing::warn!(error = %e, attempt, "patching the deployment failed; retrying in {pause:?}");
                    tokio::time::sleep(pause).await;
                }
                other => return other,
            }
        }
    }

    async fn deploy(&self, image: &str) -> Result<String, KubeError> {
        let patched = self.patch(image).await?;
        let containers = patched["spec"]["template"]["spec"]["containers"].as_array().cloned().unwrap_or_default();
        if !containers.iter().any(|c| c["name"] == self.container.as_str()) {
            return Err(KubeError::Rollout {
                what: self.what(),
                reason: "ContainerNotFound".into(),
                message: format!(
                    "the deployment has no container `{}` (it has {}); check notify.container",
                    self.container,
                    containers.iter().filter_map(|c| c["name"].as_str()).collect::<Vec<_>>().join(", ")
                ),
            });
        }
        let generation = patched["metadata"]["generation"].as_i64().unwrap_or(0);
        let deadline = Instant::now() + self.timeout;
        let what = format!("read {}", self.what());
        loop {
            let current = match self.api().await?.request(Method::GET, &self.path(), None, &what).await {
                Ok(v) => v,
                Err(e) if e.is_retryable() && Instant::now() < deadline => {
                    tracing::warn!(error = %e, "reading the rollout failed; trying again");
                    tokio::time::sleep(self.poll_interval).await;
                    continue;
                }
                Err(e) => return Err(e),
            };
            let last = match rollout_status(&current, generation) {
                Rollout::Done(detail) => return Ok(format!("{detail} with {image}")),
                Rollout::Failed { reason, message } => {
                    return Err(KubeError::Rollout { what: self.what(), reason, message });
                }
                Rollout::Waiting(why) => why,
            };
            if Instant::now() >= deadline {
                return Err(KubeError::Rollout {
                    what: self.what(),
                    reason: "RolloutTimeout".into(),
                    message: format!(
                        "not rolled out after {:?} ({last}); raise notify.timeout_secs or check the pods",
                        self.timeout
                    ),
                });
            }
            tokio::time::sleep(self.poll_interval).await;
        }
    }
}

impl Notifier for KubernetesNotifier {
    fn notify<'a>(&'a self, deployment: &'a Deployment) -> BoxFuture<'a, Result<Notified, NotifyError>> {
        Box::pin(async move {
            let target = format!("Kubernetes {}", self.what());
            match self.deploy(&deployment.image).await {
                Ok(detail) => Ok(Notified { confirmed: true, detail }),
                Err(e) if e.is_retryable() => Err(NotifyError::Transient { target, detail: e.to_string() }),
                Err(e) => Err(NotifyError::Permanent { target, detail: e.to_string() }),
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn deployment(generation: i64, status: Value) -> Value {
        json!({ "metadata": { "name": "api", "generation": generation }, "spec": { "replicas": 3 }, "status": status })
    }

    #[test]
    fn rollout_status_reads_a_deployment_like_kubectl() {
        let unobserved = deployment(
            5,
            json!({ "observedGeneration": 4, "replicas": 3, "updatedReplicas": 3, "availableReplicas": 3 }),
        );
        assert!(matches!(rollout_status(&unobserved, 5), Rollout::Waiting(w) if w.contains("observed")));
        let rolling = deployment(
            5,
            json!({ "observedGeneration": 5, "replicas": 4, "updatedReplicas": 2, "availableReplicas": 3 }),
        );
        assert!(matches!(rollout_status(&rolling, 5), Rollout::Waiting(w) if w.contains("2 of 3")));
        let terminating = deployment(
            5,
            json!({ "observedGeneration": 5, "replicas": 4, "updatedReplicas": 3, "availableReplicas": 3 }),
        );
        assert!(matches!(rollout_status(&terminating, 5), Rollout::Waiting(w) if w.contains("old replicas")));
        let unavailable = deployment(
            5,
            json!({ "observedGeneration": 5, "replicas": 3, "updatedReplicas": 3, "availableReplicas": 1 }),
        );
        assert!(matches!(rollout_status(&unavailable, 5), Rollout::Waiting(w) if w.contains("available")));
        let done = deployment(
            5,
            json!({ "observedGeneration": 5, "replicas": 3, "updatedReplicas": 3, "availableReplicas": 3 }),
        );
        assert!(matches!(rollout_status(&done, 5), Rollout::Done(_)));
        let stuck = deployment(
            5,
            json!({ "observedGeneration": 5, "replicas": 4, "updatedReplicas": 1, "conditions": [
            { "type": "Progressing", "status": "False", "reason": "ProgressDeadlineExceeded", "message": "ReplicaSet \"api-7d\" has timed out progressing." } ] }),
        );
        assert_eq!(
            rollout_status(&stuck, 5),
            Rollout::Failed {
                reason: "ProgressDeadlineExceeded".into(),
                message: "ReplicaSet \"api-7d\" has timed out progressing.".into()
            }
        );
    }

    #[test]
    fn kubeconfig_contexts_pick_cluster_and_user() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config");
        std::fs::write(
            &path,
            "apiVersion: v1\nkind: Config\ncurrent-context: dev\nclusters:\n- name: c\n  cluster:\n    server: https://127.0.0.1:6443\n    insecure-skip-tls-verify: true\nusers:\n- name: u\n  user:\n    token: abc\ncontexts:\n- name: dev\n  context:\n    cluster: c\n    user: u\n- name: broken\n  context:\n    cluster: nope\n    user: u\n",
        )
        .unwrap();
        let api = ApiServer::from_kubeconfig(&path, None).unwrap();
        assert_eq!(api.server.as_str(), "https://127.0.0.1:6443/");
        assert!(matches!(api.bearer, Bearer::Token(ref t) if t.expose() == "abc"));
        let err = ApiServer::from_kubeconfig(&path, Some("broken")).unwrap_err().to_string();
        assert!(err.contains("cluster `nope`"), "{err}");
        let err = ApiServer::from_kubeconfig(&path, Some("prod")).unwrap_err().to_string();
        assert!(err.contains("no context named `prod`"), "{err}");
        std::fs::write(&path, std::fs::read_to_string(&path).unwrap().replace("https://", "http://")).unwrap();
        let err = ApiServer::from_kubeconfig(&path, None).unwrap_err().to_string();
        assert!(err.contains("only over https"), "{err}");
    }
}

//! Ferry's configuration: one TOML file, with secrets named by environment variable, file or
//! AWS ARN (`*_arn`, read once at start-up by [`Config::read_secrets`]), never written in it.
//! Read once at start; errors name the key and the line.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use toml::Spanned;

use crate::intake::Sender;
use crate::registry::RegistryRef;
use crate::registry::auth::Secret;
use crate::secrets::{SecretArn, SecretError, SecretValues};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    #[serde(default)]
    pub server: Server,
    /// The registries Ferry may contact, by host (`127.0.0.1:5001`, `ghcr.io`). No other host is
    /// ever contacted, whatever a webhook says.
    #[serde(default)]
    pub registries: BTreeMap<String, Registry>,
    /// Webhook senders, by route name (`acr`, `dockerhub`, `github`, `distribution`, `harbor`,
    /// `quay`, `generic`). A sender without an entry is refused with 401.
    #[serde(default)]
    pub sources: BTreeMap<String, Spanned<SourceConfig>>,
    #[serde(default)]
    pub pipelines: Vec<Pipeline>,
    #[serde(default)]
    pub worker: Worker,
    /// Where jobs wait between intake and the worker.
    #[serde(default)]
    pub queue: QueueBackend,
    /// Where promotions, approvals and environments are recorded.
    #[serde(default)]
    pub ledger: LedgerBackend,
    /// Entra ID credentials and endpoints for the Azure notifiers (App Service).
    pub azure: Option<Azure>,
    /// `[[notices]]`: Teams and Slack channels told when a promotion waits for approval and
    /// when it is decided.
    #[serde(default)]
    pub notices: Vec<crate::notices::NoticeChannel>,
    /// Who may call the operations API and what they may do (OIDC, static user tokens, grants).
    #[serde(default)]
    pub identity: crate::identity::IdentityConfig,
    /// The values of the `*_arn` secrets, filled by [`Config::read_secrets`].
    #[serde(skip)]
    pub secret_values: SecretValues,
}

/// `[queue]`: `kind = "sqlite"` (default: `queue.db` in `server.data_dir`) or `kind = "sqs"`
/// with `url`, a FIFO queue whose redrive policy names its dead-letter queue.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase", deny_unknown_fields)]
pub enum QueueBackend {
    // `{}`, not a unit variant: only then are stray keys (`url` with sqlite) refused.
    Sqlite {},
    Sqs { url: String },
}

impl Default for QueueBackend {
    fn default() -> Self {
        QueueBackend::Sqlite {}
    }
}

/// `[ledger]`: `kind = "sqlite"` (default: `ledger.db` in `server.data_dir`) or
/// `kind = "dynamodb"` with `table` (hash key `pk`, range key `sk`, both strings).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase", deny_unknown_fields)]
pub enum LedgerBackend {
    Sqlite {},
    Dynamodb { table: String },
}

impl Default for LedgerBackend {
    fn default() -> Self {
        LedgerBackend::Sqlite {}
    }
}

/// The `[azure]` table. Without `client_secret_env`, Ferry uses workload identity
/// (`AZURE_FEDERATED_TOKEN_FILE`) or managed identity (`IDENTITY_ENDPOINT` + `IDENTITY_HEADER`,
/// else IMDS); `AZURE_TENANT_ID`, `AZURE_CLIENT_ID` and `AZURE_AUTHORITY_HOST` fill what is
/// not set here, as in the Azure SDKs.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Azure {
    pub tenant_id: Option<String>,
    pub client_id: Option<String>,
    /// Environment variable holding the client secret.
    pub client_secret_env: Option<String>,
    /// Or the Secrets Manager secret / SSM SecureString parameter (ARN) holding it.
    pub client_secret_arn: Option<String>,
    /// Entra ID's host (sovereign clouds; a fake in tests). `http://` only for loopback hosts.
    pub authority_host: Option<Spanned<String>>,
    /// ARM's endpoint; ARM tokens are requested for `{resource_manager}/.default`.
    pub resource_manager: Option<Spanned<String>>,
    /// PEM CA to trust for Entra ID and ARM (a private proxy).
    pub ca_cert: Option<PathBuf>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Server {
    #[serde(default = "default_listen")]
    pub listen: SocketAddr,
    /// Largest request body accepted (webhooks, /api/*, console forms up to 64 KiB); larger ones get 413.
    #[serde(default = "default_body_limit")]
    pub body_limit: usize,
    /// Where the embedded queue keeps its SQLite file.
    #[serde(default = "default_data_dir")]
    pub data_dir: PathBuf,
    /// How far a generic sender's timestamp may be from Ferry's clock, in seconds.
    #[serde(default = "default_clock_skew")]
    pub max_clock_skew_secs: u64,
    /// Environment variable holding the operator token for `/api/*` (status, approve, rollback …).
    /// Without it the operations API is off.
    pub operator_token_env: Option<String>,
    /// Or the Secrets Manager secret / SSM SecureString parameter (ARN) holding it.
    pub operator_token_arn: Option<String>,
    /// Serve `/api/*` on this address only (e.g. a private interface), so that webhooks can face
    /// the internet while operations do not. Without it, `/api/*` shares `listen`.
    pub api_listen: Option<SocketAddr>,
    /// Serve `GET /metrics` without authentication on this address only (a private interface
    /// for the scraper). Without it, `/metrics` is on the operations API for viewers.
    pub metrics_listen: Option<SocketAddr>,
    /// Connections served at once per listener; one more is answered 503 and closed.
    #[serde(default = "default_max_connections")]
    pub max_connections: usize,
    /// Seconds a client has to send a request's headers — also how long a kept-alive connection
    /// may sit idle waiting for its next request.
    #[serde(default = "default_header_timeout")]
    pub header_timeout_secs: u64,
    /// Seconds a client has to send a request's whole body.
    #[serde(default = "default_body_timeout")]
    pub body_timeout_secs: u64,
    /// Where people reach this Ferry (`https://ferry.example.com`): approval notices link to
    /// `{public_url}/promotions/{id}`.
    pub public_url: Option<String>,
}

fn default_max_connections() -> usize {
    1024
}

fn default_header_timeout() -> u64 {
    10
}

fn default_body_timeout() -> u64 {
    30
}

impl Default for Server {
    fn default() -> Self {
        Server {
            listen: default_listen(),
            body_limit: default_body_limit(),
            data_dir: default_data_dir(),
            max_clock_skew_secs: default_clock_skew(),
            operator_token_env: None,
            operator_token_arn: None,
            api_listen: None,
            metrics_listen: None,
            max_connections: default_max_connections(),
            header_timeout_secs: default_header_timeout(),
            body_timeout_secs: default_body_timeout(),
            public_url: None,
        }
    }
}

fn default_listen() -> SocketAddr {
    "127.0.0.1:8080".parse().expect("valid address")
}
fn default_body_limit() -> usize {
    1 << 20
}
fn default_data_dir() -> PathBuf {
    PathBuf::from(".ferry")
}
fn default_clock_skew() -> u64 {
    300
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Registry {
    /// Speak plain HTTP to this registry (never the default).
    #[serde(default)]
    pub plain_http: bool,
    /// PEM CA certificate to trust for this registry's TLS (for this registry only).
    pub ca_cert: Option<PathBuf>,
    /// Environment variables holding the username and password (or token).
    pub username_env: Option<String>,
    pub password_env: Option<String>,
    /// Or Secrets Manager secrets / SSM SecureString parameters (ARNs) holding them.
    pub username_arn: Option<String>,
    pub password_arn: Option<String>,
    /// An Amazon ECR registry: credentials from the AWS credential chain (ECR
    /// `GetAuthorizationToken`, user `AWS`), refreshed before the token expires.
    #[serde(default)]
    pub ecr: bool,
    /// An Azure Container Registry reached with the `[azure]` Entra ID credential: its token is
    /// exchanged for an ACR refresh token (`/oauth2/exchange`), no password is stored.
    #[serde(default)]
    pub acr: bool,
    /// The registry's ARM resource id
    /// (`/subscriptions/…/resourceGroups/…/providers/Microsoft.ContainerRegistry/registries/<name>`),
    /// needed on both sides of a `copy = "acr-import"` stage.
    pub arm_id: Option<String>,
    /// The registry's token service when it lives on another host (an https URL, compared with
    /// the challenge's realm without its query). Ferry refuses any other foreign realm, since
    /// the realm receives the registry's credentials. Docker Hub's `auth.docker.io` is built in.
    #[serde(default, deserialize_with = "https_url")]
    pub token_realm: Option<url::Url>,
    /// Total time for one manifest, token or referrers request, body included (default 60).
    pub request_deadline_secs: Option<u64>,
    /// A blob transfer fails when fewer than `blob_min_kib` KiB move in `blob_window_secs`
    /// seconds (defaults 64 and 60).
    pub blob_min_kib: Option<u64>,
    pub blob_window_secs: Option<u64>,
}

fn https_url<'de, D: serde::Deserializer<'de>>(deserializer: D) -> Result<Option<url::Url>, D::Error> {
    use serde::de::Error as _;
    let Some(text) = Option::<String>::deserialize(deserializer)? else {
        return Ok(None);
    };
    let url = url::Url::parse(&text).map_err(|e| D::Error::custom(format!("`{text}` is not a URL: {e}")))?;
    if url.scheme() != "https" {
        return Err(D::Error::custom(format!(
            "`{text}` is not https: the token service receives the registry's credentials, so it must be https"
        )));
    }
    Ok(Some(url))
}

/// Where a secret comes from: an environment variable, a file (e.g. a mounted secret), or an
/// AWS Secrets Manager secret / SSM SecureString parameter (ARN).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SourceConfig {
    pub secret_env: Option<String>,
    pub secret_arn: Option<String>,
    pub secret_file: Option<PathBuf>,
    /// For header-secret senders: the header that carries it (default `Authorization`). The
    /// value may be the secret itself or `Bearer <secret>`.
    pub header: Option<String>,
    /// Azure DevOps basic auth: the username; the secret is the password.
    pub username: Option<String>,
    /// The registries (hosts, as in `[registries]`) whose pipelines this sender may start;
    /// default: every configured registry.
    pub registries: Option<Vec<String>>,
    /// The pipelines (by name) this sender may start or report on; default: every pipeline.
    pub pipelines: Option<Vec<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Pipeline {
    pub name: Spanned<String>,
    /// The repository promotions start from: `host[:port]/repo`.
    pub source: Spanned<String>,
    /// Tag patterns that promote (`*` matches any run of characters); default: every tag.
    #[serde(default)]
    pub tags: Vec<String>,
    /// Azure DevOps: the build definition whose `build.complete` promotes into this pipeline,
    /// and the release definition whose deployment reports concern its stages.
    pub azure_devops: Option<AzureDevopsBuild>,
    pub stages: Vec<Stage>,
}

/// The pipeline's Azure DevOps bindings: which build definition pushes this pipeline's source
/// repository (and the tag it pushes), and which release definition deploys its stages.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AzureDevopsBuild {
    /// Build definition name or id: its `build.complete` events promote into this pipeline.
    pub build_definition: Option<String>,
    /// Release definition name or id: only its deployment-completed events report on this
    /// pipeline's stages (a pipeline without one takes no release reports).
    pub release_definition: Option<String>,
    /// Azure DevOps project name: when set, only events from this project (exact name) count.
    pub project: Option<String>,
    /// Tag template; `{build.id}` and `{build.number}` are replaced.
    #[serde(default = "default_build_tag")]
    pub tag: Spanned<String>,
}

fn default_build_tag() -> Spanned<String> {
    Spanned::new(0..0, "{build.number}".to_string())
}

/// Renders a build tag template.
pub fn render_build_tag(template: &str, build_id: &str, build_number: Option<&str>) -> String {
    template.replace("{build.id}", build_id).replace("{build.number}", build_number.unwrap_or(build_id))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Stage {
    pub name: Spanned<String>,
    /// The repository this stage's images are copied to: `host[:port]/repo`.
    pub target: Spanned<String>,
    /// What must hold before an image enters this stage.
    #[serde(default)]
    pub gate: Gate,
    /// How the image gets into `target`: Ferry's own copy (default), or `acr-import`: ARM
    /// `importImage` on the target registry (both sides `acr = true` with an `arm_id`).
    #[serde(default)]
    pub copy: CopyMethod,
    /// `approval`: how many different people must approve (never the one who triggered it).
    #[serde(default = "default_approvers")]
    pub approvers: u32,
    /// `approval`: only these people may approve (names compared as [`crate::person::canonical`]
    /// does); empty: anyone but the person who triggered the promotion.
    #[serde(default)]
    pub approvers_allowed: Vec<Spanned<String>>,
    /// `approval`: a promotion not approved within this many hours is rejected.
    pub approval_expires_hours: Option<u64>,
    /// `soak`: how long the image must have run in the previous stage (minutes, plus seconds).
    #[serde(default)]
    pub soak_minutes: u64,
    #[serde(default)]
    pub soak_secs: u64,
    /// Only tags matching one of these patterns enter this stage (`*` wildcard).
    #[serde(default)]
    pub tags: Vec<String>,
    /// Only semantic-version tags (`1.2.3`, `v1.2.3`; no pre-release) enter this stage.
    #[serde(default)]
    pub semver: bool,
    /// Tags set on the target; `{stage}`, `{tag}`, `{build.number}`, `{build.id}` are replaced,
    /// and a template whose value is unknown (no build, no tag) is skipped.
    #[serde(default = "default_target_tags")]
    pub target_tags: Vec<String>,
    /// Told about every image this stage now runs.
    pub notify: Option<Notify>,
    /// When the stage's notifier reports the deployment failed, re-point the stage to its
    /// previous good digest and notify again.
    #[serde(default)]
    pub rollback_on_failure: bool,
    /// The Azure DevOps release environment whose deployment events report on this stage
    /// (default: the stage name, compared case-insensitively).
    pub azure_devops_environment: Option<String>,
}

/// How a stage's image is copied into its target.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum CopyMethod {
    /// Ferry's digest-exact copy engine.
    #[default]
    Ferry,
    /// Azure Container Registry's server-side import (ARM `importImage`).
    AcrImport,
}

/// The longest soak a stage may ask for.
const MAX_SOAK: std::time::Duration = std::time::Duration::from_secs(366 * 24 * 3600);

fn default_approvers() -> u32 {
    1
}

fn default_target_tags() -> Vec<String> {
    vec!["{tag}".into(), "{stage}".into(), "build-{build.number}".into()]
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Gate {
    /// Promote as soon as the previous stage has it.
    #[default]
    Auto,
    /// Wait for `approvers` people to run `ferry approve`.
    Approval,
    /// Wait until the previous stage reports deployed (Azure DevOps release, or its notifier).
    After,
    /// Wait until the image has run `soak_minutes` in the previous stage.
    Soak,
}

/// A stage's deploy notification.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, tag = "kind", rename_all = "lowercase")]
pub enum Notify {
    /// POST a signed JSON event (same HMAC scheme as `/hooks/generic`).
    Webhook { url: String, secret_env: Option<String>, secret_arn: Option<String> },
    /// Point an Azure App Service web app (or a slot, optionally swapped into production) at the
    /// digest: `linuxFxVersion = "DOCKER|<registry>/<repo>@sha256:…"`.
    #[serde(rename = "app-service")]
    AppService {
        subscription: String,
        resource_group: String,
        app: String,
        slot: Option<String>,
        #[serde(default)]
        swap: bool,
    },
    /// Set a Kubernetes Deployment's container image to the digest and wait for the rollout.
    Kubernetes {
        /// Default: `aks` when given, else the in-cluster service account.
        kubeconfig: Option<PathBuf>,
        /// An AKS cluster whose user kubeconfig Ferry fetches with `listClusterUserCredential`
        /// (with the `[azure]` credential, which also serves Entra-integrated API servers).
        aks: Option<AksCluster>,
        /// Default: the kubeconfig's `current-context`.
        context: Option<String>,
        namespace: String,
        deployment: String,
        container: String,
        /// How long the rollout may take (default 300).
        timeout_secs: Option<u64>,
    },
}

impl Notify {
    /// The `kind` this notifier is configured with.
    pub fn kind(&self) -> &'static str {
        match self {
            Notify::Webhook { .. } => "webhook",
            Notify::AppService { .. } => "app-service",
            Notify::Kubernetes { .. } => "kubernetes",
        }
    }
}

/// `aks = { subscription, resource_group, cluster }` of a Kubernetes notifier.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AksCluster {
    pub subscription: String,
    pub resource_group: String,
    pub cluster: String,
}

/// The promotion worker inside `ferry serve`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Worker {
    /// Run the worker inside `ferry serve` (false: take webhooks only, another process works).
    #[serde(default = "default_true")]
    pub enabled: bool,
    /// Jobs worked on at once.
    #[serde(default = "default_worker_concurrency")]
    pub concurrency: usize,
    /// A job not finished (nor its lease renewed) within this time is delivered again.
    #[serde(default = "default_visibility")]
    pub visibility_secs: u64,
    /// Attempts before a job goes to the dead-letter store.
    #[serde(default = "default_max_attempts")]
    pub max_attempts: u32,
    /// First retry delay; doubles each attempt, capped at 5 minutes.
    #[serde(default = "default_retry_base_ms")]
    pub retry_base_ms: u64,
    /// How often parked promotions (soak, expiry) are looked at again.
    #[serde(default = "default_sweep_secs")]
    pub sweep_secs: u64,
}

impl Default for Worker {
    fn default() -> Self {
        Worker {
            enabled: true,
            concurrency: default_worker_concurrency(),
            visibility_secs: default_visibility(),
            max_attempts: default_max_attempts(),
            retry_base_ms: default_retry_base_ms(),
            sweep_secs: default_sweep_secs(),
        }
    }
}

fn default_true() -> bool {
    true
}

fn default_worker_concurrency() -> usize {
    2
}
fn default_visibility() -> u64 {
    60
}
fn default_max_attempts() -> u32 {
    5
}
fn default_retry_base_ms() -> u64 {
    2_000
}
fn default_sweep_secs() -> u64 {
    30
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// Not a `source`: the message says it once (`{err:#}` would repeat a source).
    #[error("{path}: {error}")]
    Read { path: String, error: std::io::Error },
    #[error("{path}:{line}:{column}: {message}")]
    At { path: String, line: usize, column: usize, message: String },
    #[error("{path}: {message}")]
    File { path: String, message: String },
}

/// A pipeline's source or a stage's target, parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RepoName {
    pub registry: String,
    pub repository: String,
}

impl RepoName {
    pub fn parse(value: &str) -> Result<Self, String> {
        let r: RegistryRef = value.parse().map_err(|e| format!("{e}"))?;
        if r.image.tag.is_some() || r.image.digest.is_some() {
            return Err(format!("`{value}` must name a repository without tag or digest"));
        }
        Ok(RepoName { registry: r.registry, repository: r.repository })
    }
}

impl std::fmt::Display for RepoName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.registry, self.repository)
    }
}

impl Config {
    /// Reads and validates a configuration file (secrets are not resolved here).
    /// Reads and checks the file at `path`. Relative paths in it (`data_dir`, `ca_cert`,
    /// `secret_file`, `kubeconfig`) are taken relative to the file's folder, not to wherever the
    /// command runs: `ferry status --config /etc/ferry/ferry.toml` finds the same data as
    /// `ferry serve` did.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path)
            .map_err(|error| ConfigError::Read { path: path.display().to_string(), error })?;
        let mut config = Self::parse(&text, &path.display().to_string())?;
        let folder = match path.parent() {
            Some(folder) if !folder.as_os_str().is_empty() => folder.to_path_buf(),
            _ => PathBuf::from("."),
        };
        config.resolve_paths(&folder);
        Ok(config)
    }

    /// Makes every relative path of the configuration relative to `folder` (the configuration
    /// file's; [`Config::load`] does this).
    pub fn resolve_paths(&mut self, folder: &Path) {
        let resolve = |path: &mut PathBuf| {
            if path.is_relative() {
                *path = folder.join(&*path);
            }
        };
        resolve(&mut self.server.data_dir);
        for registry in self.registries.values_mut() {
            if let Some(ca_cert) = &mut registry.ca_cert {
                resolve(ca_cert);
            }
        }
        for source in self.sources.values_mut() {
            if let Some(file) = &mut source.get_mut().secret_file {
                resolve(file);
            }
        }
        if let Some(azure) = &mut self.azure {
            if let Some(ca_cert) = &mut azure.ca_cert {
                resolve(ca_cert);
            }
        }
        for pipeline in &mut self.pipelines {
            for stage in &mut pipeline.stages {
                if let Some(Notify::Kubernetes { kubeconfig: Some(kubeconfig), .. }) = &mut stage.notify {
                    resolve(kubeconfig);
                }
            }
        }
    }

    /// The configuration of a process without a command line (a Lambda function): the TOML text
    /// in `FERRY_CONFIG`, or the file `FERRY_CONFIG_FILE` names.
    pub fn from_environment() -> Result<Self, ConfigError> {
        if let Ok(text) = std::env::var("FERRY_CONFIG") {
            return Self::parse(&text, "FERRY_CONFIG");
        }
        match std::env::var("FERRY_CONFIG_FILE") {
            Ok(path) => Self::load(Path::new(&path)),
            Err(_) => Err(ConfigError::File {
                path: "FERRY_CONFIG".into(),
                message: "set FERRY_CONFIG to the configuration (TOML) or FERRY_CONFIG_FILE to its path".into(),
            }),
        }
    }

    pub fn parse(text: &str, path: &str) -> Result<Self, ConfigError> {
        let config: Config = toml::from_str(text).map_err(|e| match e.span() {
            Some(span) => at(text, path, span, e.message().to_string()),
            None => ConfigError::File { path: path.to_string(), message: e.message().to_string() },
        })?;
        match config.reference_errors(text, path).into_iter().next() {
            Some(first) => Err(first),
            None => Ok(config),
        }
    }

    /// Every problem of a deserialized configuration that `ferry serve` refuses: unknown senders,
    /// references to registries and pipelines that are not configured, duplicate names, stage
    /// settings that contradict each other. [`Config::parse`] stops at the first;
    /// `ferry config check` reports them all.
    pub fn reference_errors(&self, text: &str, path: &str) -> Vec<ConfigError> {
        self.reference_problems()
            .into_iter()
            .map(|(span, message)| match span {
                Some(span) => at(text, path, span, message),
                None => ConfigError::File { path: path.to_string(), message },
            })
            .collect()
    }

    /// [`Config::reference_errors`] as (where, what); `None`: about no one place of the file.
    pub(crate) fn reference_problems(&self) -> Vec<(Option<std::ops::Range<usize>>, String)> {
        let config = self;
        let at = |span: std::ops::Range<usize>, message: String| (Some(span), message);
        let mut errors = Vec::new();
        for (name, source) in &config.sources {
            if sender_named(name).is_none() {
                errors.push(at(
                    source.span(),
                    format!(
                        "sources.{name}: unknown sender; known: acr, azure-devops, dockerhub, github, distribution, harbor, quay, generic"
                    ),
                ));
                continue;
            }
            let s = source.get_ref();
            if [s.secret_env.is_some(), s.secret_arn.is_some(), s.secret_file.is_some()].iter().filter(|&&b| b).count()
                != 1
            {
                errors.push(at(
                    source.span(),
                    format!("sources.{name}: set exactly one of `secret_env`, `secret_arn` or `secret_file`"),
                ));
            }
        }
        for (name, source) in &config.sources {
            let s = source.get_ref();
            for registry in s.registries.iter().flatten() {
                if !config.registries.contains_key(registry) {
                    errors.push(at(
                        source.span(),
                        format!("sources.{name}.registries: `{registry}` is not a configured registry"),
                    ));
                }
            }
            for pipeline in s.pipelines.iter().flatten() {
                if config.pipeline(pipeline).is_none() {
                    errors.push(at(
                        source.span(),
                        format!("sources.{name}.pipelines: no pipeline is named `{pipeline}`"),
                    ));
                }
            }
        }
        let file = |message| (None, message);
        errors.extend(config.check_backends().err().map(file));
        errors.extend(config.check_secrets().into_iter().map(file));
        errors.extend(config.identity.check().err().map(file));
        if let Some(azure) = &config.azure {
            for (key, value) in
                [("authority_host", &azure.authority_host), ("resource_manager", &azure.resource_manager)]
            {
                if let Some(value) = value {
                    if let Err(e) = crate::deploy::azure::endpoint_url(&format!("azure.{key}"), value.get_ref()) {
                        errors.push(at(value.span(), e.to_string()));
                    }
                }
            }
        }
        let mut names = std::collections::HashSet::new();
        for (i, pipeline) in config.pipelines.iter().enumerate() {
            let key = format!("pipelines[{i}]");
            if !names.insert(pipeline.name.get_ref().clone()) {
                errors.push(at(
                    pipeline.name.span(),
                    format!("{key}.name: `{}` is used by two pipelines", pipeline.name.get_ref()),
                ));
            }
            match RepoName::parse(pipeline.source.get_ref()) {
                Err(e) => errors.push(at(pipeline.source.span(), format!("{key}.source: {e}"))),
                Ok(source) => {
                    if let Err(m) = config.check_registry(&source, &key, "source") {
                        errors.push(at(pipeline.source.span(), m));
                    }
                }
            }
            if let Some(ado) = &pipeline.azure_devops {
                if ado.build_definition.is_none() && ado.release_definition.is_none() {
                    errors.push(at(
                        pipeline.name.span(),
                        format!("{key}.azure_devops: set `build_definition`, `release_definition`, or both"),
                    ));
                }
                let sample = render_build_tag(ado.tag.get_ref(), "4711", Some("20250304.3"));
                if sample.parse::<crate::registry::Tag>().is_err() {
                    errors.push(at(
                        ado.tag.span(),
                        format!("{key}.azure_devops.tag: `{}` does not make a valid tag", ado.tag.get_ref()),
                    ));
                }
            }
            if pipeline.stages.is_empty() {
                errors.push(at(pipeline.name.span(), format!("{key}: a pipeline needs at least one stage")));
            }
            let mut stage_names = std::collections::HashSet::new();
            for (j, stage) in pipeline.stages.iter().enumerate() {
                let stage_key = format!("{key}.stages[{j}]");
                if !stage_names.insert(stage.name.get_ref().clone()) {
                    errors.push(at(
                        stage.name.span(),
                        format!("{stage_key}.name: `{}` appears twice", stage.name.get_ref()),
                    ));
                }
                match RepoName::parse(stage.target.get_ref()) {
                    Err(e) => errors.push(at(stage.target.span(), format!("{stage_key}.target: {e}"))),
                    Ok(target) => {
                        if let Err(m) = config.check_registry(&target, &stage_key, "target") {
                            errors.push(at(stage.target.span(), m));
                        }
                        if stage.copy == CopyMethod::AcrImport {
                            let source = if j == 0 { &pipeline.source } else { &pipeline.stages[j - 1].target };
                            // An unparsable source is reported where it is written.
                            let source = RepoName::parse(source.get_ref()).ok();
                            for (side, repo) in [("source", source.as_ref()), ("target", Some(&target))] {
                                let Some(repo) = repo else { continue };
                                let registry = config.registries.get(&repo.registry);
                                let ready = registry.is_some_and(|r| {
                                    r.acr && r.arm_id.as_ref().is_some_and(|id| id.starts_with("/subscriptions/"))
                                });
                                if !ready {
                                    errors.push(at(
                                        stage.name.span(),
                                        format!(
                                            "{stage_key}.copy: `acr-import` needs its {side} registry `{}` to be an ACR: set `acr = true` and `arm_id = \"/subscriptions/…/resourceGroups/…/providers/Microsoft.ContainerRegistry/registries/<name>\"` under [registries.\"{}\"]",
                                            repo.registry, repo.registry
                                        ),
                                    ));
                                }
                            }
                        }
                    }
                }
                if j == 0 && matches!(stage.gate, Gate::After | Gate::Soak) {
                    errors.push(at(
                        stage.name.span(),
                        format!("{stage_key}.gate: `after` and `soak` need a previous stage"),
                    ));
                }
                if stage.gate == Gate::Approval && stage.approvers == 0 {
                    errors.push(at(stage.name.span(), format!("{stage_key}.approvers: at least 1")));
                }
                if !stage.approvers_allowed.is_empty() {
                    let key = format!("{stage_key}.approvers_allowed");
                    let first = stage.approvers_allowed[0].span();
                    if stage.gate != Gate::Approval {
                        errors.push(at(first, format!("{key}: only an `approval` gate has approvers")));
                    } else {
                        let mut people = std::collections::BTreeSet::new();
                        let mut valid = true;
                        for name in &stage.approvers_allowed {
                            match crate::person::canonical(name.get_ref()) {
                                Ok(person) => {
                                    people.insert(person);
                                }
                                Err(e) => {
                                    valid = false;
                                    errors.push(at(name.span(), format!("{key}: `{}`: {e}", name.get_ref())));
                                }
                            }
                        }
                        if valid && (people.len() as u32) < stage.approvers {
                            errors.push(at(
                                first,
                                format!(
                                    "{key}: {} distinct people can never give the {} approvals the stage needs",
                                    people.len(),
                                    stage.approvers
                                ),
                            ));
                        }
                    }
                }
                if stage.approval_expiry().is_some_and(|e| e > MAX_SOAK) {
                    errors.push(at(stage.name.span(), format!("{stage_key}.approval_expires_hours: more than a year")));
                }
                if stage.soak() > MAX_SOAK {
                    errors.push(at(
                        stage.name.span(),
                        format!("{stage_key}: a soak longer than a year is surely a typo"),
                    ));
                }
                match &stage.notify {
                    Some(Notify::AppService { slot: None, swap: true, .. }) => {
                        errors.push(at(
                            stage.name.span(),
                            format!("{stage_key}.notify: `swap = true` needs the `slot` to swap into production"),
                        ));
                    }
                    Some(Notify::Kubernetes { kubeconfig: Some(_), aks: Some(_), .. }) => {
                        errors.push(at(
                            stage.name.span(),
                            format!("{stage_key}.notify: set `kubeconfig` or `aks`, not both"),
                        ));
                    }
                    Some(Notify::Kubernetes { timeout_secs: Some(0), .. }) => {
                        errors.push(at(stage.name.span(), format!("{stage_key}.notify.timeout_secs: at least 1")));
                    }
                    None | Some(Notify::Webhook { .. }) if stage.rollback_on_failure => {
                        errors.push(at(
                            stage.name.span(),
                            format!(
                                "{stage_key}.rollback_on_failure: needs an `app-service` or `kubernetes` notifier that reports whether the deployment worked"
                            ),
                        ));
                    }
                    _ => {}
                }
                if stage.target_tags.iter().any(|pattern| pattern.trim().is_empty()) {
                    errors.push(at(stage.name.span(), format!("{stage_key}.target_tags: empty template")));
                }
            }
        }
        errors
    }

    fn check_backends(&self) -> Result<(), String> {
        if let QueueBackend::Sqs { url } = &self.queue {
            let parsed = url::Url::parse(url).map_err(|e| format!("queue.url: `{url}` is not a URL ({e})"))?;
            if !parsed.path().ends_with(".fifo") {
                return Err(format!(
                    "queue.url: `{url}` is not a FIFO queue (its name must end in .fifo); Ferry needs FIFO for deduplication"
                ));
            }
        }
        if let LedgerBackend::Dynamodb { table } = &self.ledger
            && table.trim().is_empty()
        {
            return Err("ledger.table: name the DynamoDB table".into());
        }
        Ok(())
    }

    /// Every secret key the configuration has, by key without its `_env`/`_arn` suffix, with
    /// the environment variable and the ARN it names.
    pub(crate) fn secret_keys(&self) -> Vec<(String, Option<&String>, Option<&String>)> {
        let mut keys = vec![(
            "server.operator_token".to_string(),
            self.server.operator_token_env.as_ref(),
            self.server.operator_token_arn.as_ref(),
        )];
        for (name, source) in &self.sources {
            let s = source.get_ref();
            keys.push((format!("sources.{name}.secret"), s.secret_env.as_ref(), s.secret_arn.as_ref()));
        }
        for (host, r) in &self.registries {
            keys.push((format!("registries.\"{host}\".username"), r.username_env.as_ref(), r.username_arn.as_ref()));
            keys.push((format!("registries.\"{host}\".password"), r.password_env.as_ref(), r.password_arn.as_ref()));
        }
        for pipeline in &self.pipelines {
            for stage in &pipeline.stages {
                if let Some(Notify::Webhook { secret_env, secret_arn, .. }) = &stage.notify {
                    keys.push((
                        format!("pipelines.{}.stages.{}.notify.secret", pipeline.name.get_ref(), stage.name.get_ref()),
                        secret_env.as_ref(),
                        secret_arn.as_ref(),
                    ));
                }
            }
        }
        for (index, channel) in self.notices.iter().enumerate() {
            keys.push((format!("notices.{index}.url"), channel.url_env.as_ref(), channel.url_arn.as_ref()));
        }
        keys.push((
            "identity.session_key".into(),
            self.identity.session_key_env.as_ref(),
            self.identity.session_key_arn.as_ref(),
        ));
        for (index, issuer) in self.identity.oidc.iter().enumerate() {
            keys.push((format!("identity.oidc[{index}].client_secret"), issuer.client_secret_env.as_ref(), None));
        }
        if let Some(azure) = &self.azure {
            keys.push((
                "azure.client_secret".into(),
                azure.client_secret_env.as_ref(),
                azure.client_secret_arn.as_ref(),
            ));
        }
        keys
    }

    /// The `*_arn` secrets to read at start-up: (key, ARN).
    pub fn secret_arns(&self) -> Vec<(String, String)> {
        self.secret_keys().into_iter().filter_map(|(key, _, arn)| Some((format!("{key}_arn"), arn?.clone()))).collect()
    }

    fn check_secrets(&self) -> Vec<String> {
        let mut errors = Vec::new();
        for (key, env, arn) in self.secret_keys() {
            if env.is_some() && arn.is_some() {
                errors.push(format!("{key}: set `{key}_env` or `{key}_arn`, not both"));
            }
            if let Some(arn) = arn {
                if let Err(e) = SecretArn::parse(arn) {
                    errors.push(format!("{key}_arn: {e}"));
                } else if !cfg!(feature = "aws") {
                    errors.push(SecretError::NoAwsFeature { key: format!("{key}_arn"), arn: arn.clone() }.to_string());
                }
            }
        }
        for (index, channel) in self.notices.iter().enumerate() {
            if channel.url_env.is_none() && channel.url_arn.is_none() {
                errors.push(format!("notices.{index}: set `url_env` or `url_arn` (the channel's webhook URL)"));
            }
            for pipeline in &channel.pipelines {
                if self.pipeline(pipeline).is_none() {
                    errors.push(format!("notices.{index}.pipelines: no pipeline is named `{pipeline}`"));
                }
            }
        }
        for (host, r) in &self.registries {
            let user = r.username_env.is_some() || r.username_arn.is_some();
            let pass = r.password_env.is_some() || r.password_arn.is_some();
            if user != pass {
                errors.push(format!(
                    "registries.\"{host}\": set both a username (`username_env` or `username_arn`) and a password (`password_env` or `password_arn`), or neither"
                ));
            }
            if r.ecr && user {
                errors.push(format!(
                    "registries.\"{host}\": `ecr = true` takes its credentials from the AWS credential chain; remove the username and password keys"
                ));
            }
            if r.acr && user {
                errors.push(format!(
                    "registries.\"{host}\": `acr = true` takes its credentials from Entra ID ([azure]); remove the username and password keys"
                ));
            }
            if r.acr && r.ecr {
                errors.push(format!("registries.\"{host}\": set `acr` or `ecr`, not both"));
            }
            if r.acr && self.azure.is_none() {
                errors.push(format!(
                    "registries.\"{host}\".acr: needs an [azure] table (tenant_id, client_id, and client_secret_env or a workload / managed identity): Ferry exchanges its Entra ID token for the registry's tokens"
                ));
            }
            if r.ecr && !cfg!(feature = "aws") {
                errors.push(format!(
                    "registries.\"{host}\".ecr: this build of Ferry has no `aws` feature; build ferry-core with features = [\"aws\"]"
                ));
            }
        }
        errors
    }

    /// Reads the `*_arn` secrets (Secrets Manager, SSM) once, with the standard AWS
    /// configuration (region, credential chain, `AWS_ENDPOINT_URL`), into memory. Does nothing
    /// when the configuration names no ARN.
    pub async fn read_secrets(&mut self) -> Result<(), SecretError> {
        if self.secret_arns().is_empty() {
            return Ok(());
        }
        #[cfg(feature = "aws")]
        {
            let sdk = aws_config::defaults(aws_config::BehaviorVersion::latest()).load().await;
            self.read_secrets_with(&sdk).await
        }
        #[cfg(not(feature = "aws"))]
        {
            let (key, arn) = self.secret_arns().remove(0);
            Err(SecretError::NoAwsFeature { key, arn })
        }
    }

    /// [`Config::read_secrets`] with a given AWS configuration.
    #[cfg(feature = "aws")]
    pub async fn read_secrets_with(&mut self, sdk: &aws_config::SdkConfig) -> Result<(), SecretError> {
        for (key, arn) in self.secret_arns() {
            if self.secret_values.get(&arn).is_none() {
                let value = crate::secrets::read(sdk, &key, &arn).await?;
                self.secret_values.insert(arn, value);
            }
        }
        Ok(())
    }

    /// One secret of the configuration (`key` without `_env`/`_arn`): from its environment
    /// variable, or as read from its ARN at start-up.
    pub fn secret(&self, key: &str, env: Option<&String>, arn: Option<&String>) -> Result<Option<Secret>, SecretError> {
        crate::secrets::resolve(&self.secret_values, key, env, arn)
    }

    fn check_registry(&self, name: &RepoName, key: &str, field: &str) -> Result<(), String> {
        if self.registries.contains_key(&name.registry) {
            Ok(())
        } else {
            Err(format!(
                "{key}.{field}: registry `{}` is not configured; add a [registries.\"{}\"] table (Ferry contacts only configured registries)",
                name.registry, name.registry
            ))
        }
    }

    /// The configured secret of a sender, read from its environment variable or file.
    pub fn source_secret(&self, sender: Sender) -> Result<Option<(Secret, Option<String>)>, String> {
        let Some(source) = self.sources.get(sender.as_str()) else {
            return Ok(None);
        };
        let source = source.get_ref();
        let value = if source.secret_env.is_some() || source.secret_arn.is_some() {
            self.secret(
                &format!("sources.{}.secret", sender.as_str()),
                source.secret_env.as_ref(),
                source.secret_arn.as_ref(),
            )
            .map_err(|e| e.to_string())?
            .expect("validated: secret_env or secret_arn is set")
            .expose()
            .to_string()
        } else if let Some(file) = &source.secret_file {
            std::fs::read_to_string(file)
                .map_err(|e| format!("sources.{}: cannot read secret_file {}: {e}", sender.as_str(), file.display()))?
                .trim()
                .to_string()
        } else {
            unreachable!("validated: one of secret_env, secret_arn or secret_file")
        };
        if value.is_empty() {
            return Err(format!("sources.{}: the secret is empty", sender.as_str()));
        }
        Ok(Some((Secret::new(value), source.header.clone())))
    }
}

impl Config {
    pub fn pipeline(&self, name: &str) -> Option<&Pipeline> {
        self.pipelines.iter().find(|p| p.name.get_ref() == name)
    }
}

impl Pipeline {
    /// The stage's position and config.
    pub fn stage(&self, name: &str) -> Option<(usize, &Stage)> {
        self.stages.iter().enumerate().find(|(_, s)| s.name.get_ref() == name)
    }

    /// Where a stage's images come from: the pipeline source for the first stage, else the
    /// previous stage's target.
    pub fn stage_source(&self, index: usize) -> RepoName {
        let source = if index == 0 { &self.source } else { &self.stages[index - 1].target };
        RepoName::parse(source.get_ref()).expect("validated at load")
    }
}

impl Stage {
    /// How long a promotion may wait for approval, if the stage limits it.
    /// Whether `person` may approve promotions into this stage (the trigger aside).
    pub fn may_approve(&self, person: &str) -> bool {
        self.approvers_allowed.is_empty()
            || self.approvers_allowed.iter().any(|allowed| crate::person::same(allowed.get_ref(), person))
    }

    pub fn approval_expiry(&self) -> Option<std::time::Duration> {
        self.approval_expires_hours.map(|h| std::time::Duration::from_secs(h.saturating_mul(3600)))
    }

    pub fn soak(&self) -> std::time::Duration {
        std::time::Duration::from_secs(self.soak_minutes.saturating_mul(60).saturating_add(self.soak_secs))
    }

    pub fn target_repo(&self) -> RepoName {
        RepoName::parse(self.target.get_ref()).expect("validated at load")
    }
}

pub fn sender_named(name: &str) -> Option<Sender> {
    Some(match name {
        "acr" => Sender::Acr,
        "azure-devops" => Sender::AzureDevops,
        "dockerhub" => Sender::Dockerhub,
        "github" => Sender::Github,
        "distribution" => Sender::Distribution,
        "harbor" => Sender::Harbor,
        "quay" => Sender::Quay,
        "generic" => Sender::Generic,
        _ => return None,
    })
}

/// An error at `span` of `text` (the file `path`), by line and column.
fn at(text: &str, path: &str, span: std::ops::Range<usize>, message: String) -> ConfigError {
    let (line, column) = line_column(text, span.start);
    ConfigError::At { path: path.to_string(), line, column, message }
}

fn line_column(text: &str, offset: usize) -> (usize, usize) {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let column = before.len() - before.rfind('\n').map(|i| i + 1).unwrap_or(0) + 1;
    (line, column)
}

/// `*` matches any run of characters; everything else literally.
pub fn tag_matches(pattern: &str, tag: &str) -> bool {
    let parts: Vec<&str> = pattern.split('*').collect();
    if parts.len() == 1 {
        return pattern == tag;
    }
    let (first, last) = (parts[0], parts[parts.len() - 1]);
    if !tag.starts_with(first) || !tag[first.len()..].ends_with(last) || tag.len() < first.len() + last.len() {
        return false;
    }
    let mut rest = &tag[first.len()..tag.len() - last.len()];
    for middle in &parts[1..parts.len() - 1] {
        match rest.find(middle) {
            Some(i) => rest = &rest[i + middle.len()..],
            None => return false,
        }
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
[server]
listen = "127.0.0.1:8080"

[registries."127.0.0.1:5001"]
plain_http = true
[registries."127.0.0.1:5002"]
plain_http = true

[sources.generic]
secret_env = "FERRY_GENERIC_SECRET"

[[pipelines]]
name = "shop-api"
source = "127.0.0.1:5001/shop/api"
tags = ["v*"]
  [[pipelines.stages]]
  name = "dev"
  target = "127.0.0.1:5002/shop/api"
"#;

    #[test]
    fn stores_default_to_sqlite() {
        let config = Config::parse(GOOD, "ferry.toml").unwrap();
        assert_eq!((config.queue, config.ledger), (QueueBackend::Sqlite {}, LedgerBackend::Sqlite {}));
    }

    #[test]
    fn sqs_queue_and_dynamodb_ledger_are_read() {
        let text = format!(
            "{GOOD}\n[queue]\nkind = \"sqs\"\nurl = \"https://sqs.eu-west-1.amazonaws.com/123456789012/ferry-jobs.fifo\"\n\
             [ledger]\nkind = \"dynamodb\"\ntable = \"ferry-ledger\"\n"
        );
        let config = Config::parse(&text, "ferry.toml").unwrap();
        assert_eq!(
            config.queue,
            QueueBackend::Sqs { url: "https://sqs.eu-west-1.amazonaws.com/123456789012/ferry-jobs.fifo".into() }
        );
        assert_eq!(config.ledger, LedgerBackend::Dynamodb { table: "ferry-ledger".into() });
    }

    #[test]
    fn store_settings_are_checked() {
        let cases = [
            ("[queue]\nkind = \"sqs\"\nurl = \"http://127.0.0.1:5000/1/jobs\"", "not a FIFO queue"),
            ("[queue]\nkind = \"sqs\"", "missing field `url`"),
            ("[queue]\nkind = \"kafka\"", "unknown variant `kafka`"),
            ("[ledger]\nkind = \"dynamodb\"\ntable = \" \"", "ledger.table"),
            ("[ledger]\nkind = \"sqlite\"\ntable = \"t\"", "unknown field `table`"),
            ("[queue]\nkind = \"sqlite\"\nurl = \"https://q.example/1/j.fifo\"", "unknown field `url`"),
        ];
        for (section, expected) in cases {
            let error = Config::parse(&format!("{GOOD}\n{section}\n"), "ferry.toml").unwrap_err().to_string();
            assert!(error.contains(expected), "{section}: {error}");
        }
    }

    #[test]
    fn a_good_file_loads() {
        let config = Config::parse(GOOD, "ferry.toml").unwrap();
        assert_eq!(config.pipelines[0].stages[0].gate, Gate::Auto);
        assert_eq!(config.server.body_limit, 1 << 20);
    }

    #[test]
    fn errors_name_the_key_and_line() {
        let bad = GOOD.replace("target = \"127.0.0.1:5002/shop/api\"", "target = \"10.0.0.9:5000/shop/api\"");
        let err = Config::parse(&bad, "ferry.toml").unwrap_err().to_string();
        assert!(err.starts_with("ferry.toml:19:"), "{err}");
        assert!(err.contains("pipelines[0].stages[0].target") && err.contains("10.0.0.9:5000"), "{err}");

        let typo = GOOD.replace("plain_http = true\n[registries", "plain_htp = true\n[registries");
        let err = Config::parse(&typo, "ferry.toml").unwrap_err().to_string();
        assert!(err.contains("ferry.toml:6:") && err.contains("plain_htp"), "{err}");

        let sender = GOOD.replace("[sources.generic]", "[sources.gitlab]");
        let err = Config::parse(&sender, "f").unwrap_err().to_string();
        assert!(err.contains("sources.gitlab: unknown sender"), "{err}");
    }

    #[test]
    fn every_secret_key_takes_an_arn_instead_of_an_env_var_but_not_both() {
        const SM: &str = "arn:aws:secretsmanager:eu-west-1:123456789012:secret:ferry/x-AbCdEf";
        const SSM: &str = "arn:aws:ssm:eu-west-1:123456789012:parameter/ferry/y";
        let text = GOOD
            .replace("secret_env = \"FERRY_GENERIC_SECRET\"", &format!("secret_arn = \"{SM}\""))
            .replace("listen = \"127.0.0.1:8080\"", &format!("operator_token_arn = \"{SSM}\""))
            .replacen("plain_http = true\n", &format!("plain_http = true\nusername_arn = \"{SM}\"\npassword_arn = \"{SSM}\"\n"), 1)
            .replace(
                "target = \"127.0.0.1:5002/shop/api\"",
                &format!("target = \"127.0.0.1:5002/shop/api\"\n  notify = {{ kind = \"webhook\", url = \"https://d.example/h\", secret_arn = \"{SM}\" }}"),
            )
            + &format!("[azure]\ntenant_id = \"t\"\nclient_id = \"c\"\nclient_secret_arn = \"{SSM}\"\n");
        let config = Config::parse(&text, "f").unwrap();
        let keys: Vec<String> = config.secret_arns().into_iter().map(|(key, _)| key).collect();
        assert_eq!(
            keys,
            [
                "server.operator_token_arn",
                "sources.generic.secret_arn",
                "registries.\"127.0.0.1:5001\".username_arn",
                "registries.\"127.0.0.1:5001\".password_arn",
                "pipelines.shop-api.stages.dev.notify.secret_arn",
                "azure.client_secret_arn",
            ]
        );

        let both = GOOD.replace(
            "secret_env = \"FERRY_GENERIC_SECRET\"",
            &format!("secret_env = \"FERRY_GENERIC_SECRET\"\nsecret_arn = \"{SM}\""),
        );
        let err = Config::parse(&both, "f").unwrap_err().to_string();
        assert!(err.contains("sources.generic: set exactly one of `secret_env`, `secret_arn`"), "{err}");
        let both = GOOD.replace(
            "listen = \"127.0.0.1:8080\"",
            &format!("operator_token_env = \"T\"\noperator_token_arn = \"{SSM}\""),
        );
        let err = Config::parse(&both, "f").unwrap_err().to_string();
        assert!(err.contains("`server.operator_token_env` or `server.operator_token_arn`, not both"), "{err}");
        let wrong = GOOD.replace("listen = \"127.0.0.1:8080\"", "operator_token_arn = \"ferry/operator-token\"");
        let err = Config::parse(&wrong, "f").unwrap_err().to_string();
        assert!(err.contains("server.operator_token_arn: `ferry/operator-token` is not a Secrets Manager"), "{err}");
        let half = GOOD.replacen("plain_http = true\n", &format!("plain_http = true\npassword_arn = \"{SM}\"\n"), 1);
        let err = Config::parse(&half, "f").unwrap_err().to_string();
        assert!(err.contains("set both a username"), "{err}");
    }

    #[test]
    fn an_ecr_registry_takes_no_username_or_password() {
        let ecr = GOOD.replacen("plain_http = true\n", "plain_http = true\necr = true\n", 1);
        assert!(Config::parse(&ecr, "f").unwrap().registries["127.0.0.1:5001"].ecr);
        let with_password =
            GOOD.replacen("plain_http = true\n", "ecr = true\nusername_env = \"U\"\npassword_env = \"P\"\n", 1);
        let err = Config::parse(&with_password, "f").unwrap_err().to_string();
        assert!(err.contains("`ecr = true` takes its credentials from the AWS credential chain"), "{err}");
    }

    #[test]
    fn an_acr_registry_needs_azure_and_takes_no_username_or_password() {
        let azure = "\n[azure]\ntenant_id = \"t\"\nclient_id = \"c\"\n";
        let acr = GOOD.replacen("plain_http = true\n", "plain_http = true\nacr = true\n", 1);
        assert!(Config::parse(&format!("{acr}{azure}"), "f").unwrap().registries["127.0.0.1:5001"].acr);
        let err = Config::parse(&acr, "f").unwrap_err().to_string();
        assert!(err.contains(".acr: needs an [azure] table"), "{err}");
        let with_password =
            GOOD.replacen("plain_http = true\n", "acr = true\nusername_env = \"U\"\npassword_env = \"P\"\n", 1);
        let err = Config::parse(&format!("{with_password}{azure}"), "f").unwrap_err().to_string();
        assert!(err.contains("`acr = true` takes its credentials from Entra ID"), "{err}");
    }

    #[test]
    fn acr_import_needs_acr_registries_with_arm_ids_on_both_sides() {
        let id = |name: &str| {
            format!("/subscriptions/s/resourceGroups/rg/providers/Microsoft.ContainerRegistry/registries/{name}")
        };
        let make = |source: &str, target: &str| {
            GOOD.replacen("plain_http = true\n", &format!("plain_http = true\n{source}"), 1)
                .replacen(
                    "[registries.\"127.0.0.1:5002\"]\nplain_http = true\n",
                    &format!("[registries.\"127.0.0.1:5002\"]\nplain_http = true\n{target}"),
                    1,
                )
                .replace(
                    "  target = \"127.0.0.1:5002/shop/api\"\n",
                    "  target = \"127.0.0.1:5002/shop/api\"\n  copy = \"acr-import\"\n",
                )
                + "\n[azure]\ntenant_id = \"t\"\nclient_id = \"c\"\n"
        };
        let acr = |name: &str| format!("acr = true\narm_id = \"{}\"\n", id(name));
        let config = Config::parse(&make(&acr("dev"), &acr("prod")), "f").unwrap();
        assert_eq!(config.pipelines[0].stages[0].copy, CopyMethod::AcrImport);
        let err = Config::parse(&make("", &acr("prod")), "f").unwrap_err().to_string();
        assert!(
            err.contains("`acr-import` needs its source registry `127.0.0.1:5001`") && err.contains("arm_id"),
            "{err}"
        );
        let err = Config::parse(&make(&acr("dev"), "acr = true\n"), "f").unwrap_err().to_string();
        assert!(err.contains("`acr-import` needs its target registry `127.0.0.1:5002`"), "{err}");
        assert_eq!(Config::parse(GOOD, "f").unwrap().pipelines[0].stages[0].copy, CopyMethod::Ferry);
    }

    #[test]
    fn token_realm_must_be_an_https_url() {
        let with = |value: &str| {
            GOOD.replacen("plain_http = true\n", &format!("plain_http = true\ntoken_realm = {value}\n"), 1)
        };
        let config = Config::parse(&with(r#""https://auth.example.com/token""#), "f").unwrap();
        let realm = config.registries["127.0.0.1:5001"].token_realm.as_ref().map(url::Url::as_str);
        assert_eq!(realm, Some("https://auth.example.com/token"));
        let err = Config::parse(&with(r#""http://auth.example.com/token""#), "f").unwrap_err().to_string();
        assert!(err.contains("f:7:") && err.contains("not https"), "{err}");
        let err = Config::parse(&with(r#""auth.example.com""#), "f").unwrap_err().to_string();
        assert!(err.contains("not a URL"), "{err}");
    }

    #[test]
    fn pipelines_need_stages_and_unique_names() {
        let no_stages = "[registries.\"r.io\"]\n[[pipelines]]\nname = \"p\"\nsource = \"r.io/a\"\nstages = []\n";
        assert!(Config::parse(no_stages, "f").unwrap_err().to_string().contains("at least one stage"));
        let tagged = GOOD.replace("source = \"127.0.0.1:5001/shop/api\"", "source = \"127.0.0.1:5001/shop/api:v1\"");
        assert!(Config::parse(&tagged, "f").unwrap_err().to_string().contains("without tag"));
    }

    #[test]
    fn gates_that_need_a_previous_stage_are_refused_on_the_first() {
        for gate in ["after", "soak"] {
            let text = GOOD.replace(
                "target = \"127.0.0.1:5002/shop/api\"",
                &format!("target = \"127.0.0.1:5002/shop/api\"\n  gate = \"{gate}\""),
            );
            let err = Config::parse(&text, "f").unwrap_err().to_string();
            assert!(err.contains("need a previous stage"), "{gate}: {err}");
        }
        let zero = GOOD.replace(
            "target = \"127.0.0.1:5002/shop/api\"",
            "target = \"127.0.0.1:5002/shop/api\"\n  gate = \"approval\"\n  approvers = 0",
        );
        assert!(Config::parse(&zero, "f").unwrap_err().to_string().contains("at least 1"));
        let long = GOOD.replace(
            "target = \"127.0.0.1:5002/shop/api\"",
            "target = \"127.0.0.1:5002/shop/api\"\n  soak_minutes = 307445734561825861",
        );
        assert!(Config::parse(&long, "f").unwrap_err().to_string().contains("longer than a year"));
    }

    #[test]
    fn source_scopes_name_configured_registries_and_pipelines() {
        let scoped = GOOD.replace(
            "secret_env = \"FERRY_GENERIC_SECRET\"",
            "secret_env = \"FERRY_GENERIC_SECRET\"\nregistries = [\"127.0.0.1:5001\"]\npipelines = [\"shop-api\"]",
        );
        let config = Config::parse(&scoped, "f").unwrap();
        assert_eq!(config.sources["generic"].get_ref().pipelines.as_deref(), Some(&["shop-api".to_string()][..]));
        let typo = scoped.replace("[\"shop-api\"]", "[\"shop-apj\"]");
        assert!(Config::parse(&typo, "f").unwrap_err().to_string().contains("no pipeline is named `shop-apj`"));
        let unknown = scoped.replace("[\"127.0.0.1:5001\"]", "[\"evil.example.com\"]");
        assert!(Config::parse(&unknown, "f").unwrap_err().to_string().contains("not a configured registry"));
    }

    #[test]
    fn an_azure_devops_table_binds_a_build_or_a_release_definition() {
        let with = |table: &str| {
            GOOD.replace("tags = [\"v*\"]", &format!("tags = [\"v*\"]\n  [pipelines.azure_devops]\n{table}"))
        };
        let release = Config::parse(&with("  release_definition = \"7\"\n  project = \"Shop\"\n"), "f").unwrap();
        let ado = release.pipelines[0].azure_devops.as_ref().unwrap();
        assert_eq!((ado.release_definition.as_deref(), ado.project.as_deref()), (Some("7"), Some("Shop")));
        assert!(ado.build_definition.is_none());
        let empty = Config::parse(&with("  project = \"Shop\"\n"), "f").unwrap_err().to_string();
        assert!(empty.contains("set `build_definition`, `release_definition`, or both"), "{empty}");
    }

    #[test]
    fn azure_notifiers_and_endpoints_are_checked() {
        let with = |stage: &str, extra: &str| {
            GOOD.replace(
                "target = \"127.0.0.1:5002/shop/api\"",
                &format!("target = \"127.0.0.1:5002/shop/api\"\n{stage}"),
            ) + extra
        };
        let app = "  notify = { kind = \"app-service\", subscription = \"s\", resource_group = \"rg\", app = \"shop\", slot = \"staging\", swap = true }\n  rollback_on_failure = true";
        let azure = "\n[azure]\ntenant_id = \"t\"\nclient_id = \"c\"\nclient_secret_env = \"AZ_SECRET\"\nauthority_host = \"http://127.0.0.1:9\"\n";
        let config = Config::parse(&with(app, azure), "f").unwrap();
        let stage = &config.pipelines[0].stages[0];
        assert!(stage.rollback_on_failure);
        assert!(matches!(&stage.notify, Some(Notify::AppService { slot: Some(s), swap: true, .. }) if s == "staging"));

        let remote_http = azure.replace("http://127.0.0.1:9", "http://login.example.com");
        let err = Config::parse(&with(app, &remote_http), "f").unwrap_err().to_string();
        assert!(err.contains("azure.authority_host") && err.contains("https://"), "{err}");

        let no_slot = app.replace(", slot = \"staging\"", "");
        assert!(Config::parse(&with(&no_slot, ""), "f").unwrap_err().to_string().contains("needs the `slot`"));

        let kube = "  notify = { kind = \"kubernetes\", namespace = \"shop\", deployment = \"api\", container = \"api\", timeout_secs = 60 }";
        assert!(Config::parse(&with(kube, ""), "f").is_ok());
        let both = kube.replace(
            "namespace",
            "kubeconfig = \"k\", aks = { subscription = \"s\", resource_group = \"rg\", cluster = \"c\" }, namespace",
        );
        assert!(
            Config::parse(&with(&both, ""), "f").unwrap_err().to_string().contains("`kubeconfig` or `aks`, not both")
        );
        let err = Config::parse(&with("  rollback_on_failure = true", ""), "f").unwrap_err().to_string();
        assert!(err.contains("rollback_on_failure: needs"), "{err}");
        let typo = kube.replace("namespace", "namespce");
        assert!(Config::parse(&with(&typo, ""), "f").is_err());
    }

    #[test]
    fn tag_patterns() {
        assert!(tag_matches("*", "anything"));
        assert!(tag_matches("v*", "v1.2"));
        assert!(!tag_matches("v*", "1.2"));
        assert!(tag_matches("release-*-rc*", "release-1.2-rc3"));
        assert!(!tag_matches("a*a", "a"));
        assert!(tag_matches("exact", "exact"));
    }
}

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use crate::config::{Config, RepoName};
use crate::deploy::azure::ArmClient;
use crate::error::WorkError;
use crate::registry::auth::Credential;
use crate::registry::client::{ClientOptions, Deadlines, HttpClients, RegistryClient};
use crate::registry::reference::ImageRef;
use crate::registry::{Access, RegistryRef};

/// How Ferry proves who it is to one registry: a credential fixed at start-up, or one that is
/// fetched and renewed while Ferry runs (ECR's 12-hour tokens).
#[derive(Clone)]
pub enum RegistryCredential {
    Fixed(Credential),
    #[cfg(feature = "aws")]
    Ecr(Arc<crate::registry::ecr::EcrCredentials>),
    /// An ACR refresh token exchanged for the `[azure]` Entra ID token (about 3 hours).
    Acr(Arc<crate::registry::acr::AcrCredentials>),
}

impl RegistryCredential {
    /// The credential to use for the next job.
    pub async fn current(&self) -> Result<Credential, WorkError> {
        match self {
            RegistryCredential::Fixed(credential) => Ok(credential.clone()),
            #[cfg(feature = "aws")]
            RegistryCredential::Ecr(ecr) => ecr.credential().await.map_err(|e| WorkError::new(e.class, e.to_string())),
            RegistryCredential::Acr(acr) => acr.credential().await.map_err(|e| WorkError::new(e.class, e.to_string())),
        }
    }
}

/// How Ferry reaches the configured registries (and no others).
pub struct RegistrySettings {
    client: ClientOptions,
    credentials: HashMap<String, RegistryCredential>,
    /// One trust store per registry that names a `ca_cert`, one shared by the others.
    http: HttpClients,
    /// The ARM client of the `acr = true` registries (for `copy = "acr-import"`).
    arm: Option<Arc<ArmClient>>,
    /// Registry → its ARM resource id (`arm_id`).
    arm_ids: HashMap<String, String>,
}

impl RegistrySettings {
    /// The registries of `config`; `acr = true` registries take their Entra ID tokens from
    /// `arm`'s credential (one token cache with the Azure notifiers), made here when needed.
    pub fn from_config(config: &Config, arm: &mut Option<Arc<ArmClient>>) -> Result<Self, WorkError> {
        let mut acr_hosts = Vec::new();
        let arm_ids =
            config.registries.iter().filter_map(|(host, r)| r.arm_id.clone().map(|id| (host.clone(), id))).collect();
        let mut client = ClientOptions::default();
        let mut credentials = HashMap::new();
        for (host, registry) in &config.registries {
            if registry.plain_http {
                client.plain_http.push(api_host(host).to_string());
            }
            if let Some(path) = &registry.ca_cert {
                // Trusted for this registry alone: a private CA must not vouch for other hosts.
                client.registry_ca_certs.insert(
                    api_host(host).to_string(),
                    std::fs::read(path).map_err(|e| {
                        WorkError::permanent(format!(
                            "registries.\"{host}\".ca_cert: cannot read {}: {e}",
                            path.display()
                        ))
                    })?,
                );
            }
            if let Some(realm) = &registry.token_realm {
                client.token_realms.insert(api_host(host).to_string(), realm.clone());
            }
            let defaults = Deadlines::default();
            let deadlines = Deadlines {
                request: registry.request_deadline_secs.map(Duration::from_secs).unwrap_or(defaults.request),
                blob_min_bytes: registry.blob_min_kib.map(|kib| kib << 10).unwrap_or(defaults.blob_min_bytes),
                blob_window: registry.blob_window_secs.map(Duration::from_secs).unwrap_or(defaults.blob_window),
            };
            if deadlines.request.is_zero() || deadlines.blob_window.is_zero() {
                return Err(WorkError::permanent(format!(
                    "registries.\"{host}\": request_deadline_secs and blob_window_secs must be at least 1"
                )));
            }
            client.registry_deadlines.insert(api_host(host).to_string(), deadlines);
            let key = |name: &str| format!("registries.\"{host}\".{name}");
            let username = config
                .secret(&key("username"), registry.username_env.as_ref(), registry.username_arn.as_ref())
                .map_err(|e| WorkError::permanent(e.to_string()))?;
            let password = config
                .secret(&key("password"), registry.password_env.as_ref(), registry.password_arn.as_ref())
                .map_err(|e| WorkError::permanent(e.to_string()))?;
            match (username, password) {
                (Some(username), Some(password)) => {
                    let username = username.expose().to_string();
                    credentials
                        .insert(host.clone(), RegistryCredential::Fixed(Credential::Basic { username, password }));
                }
                (None, None) => {}
                _ => {
                    return Err(WorkError::permanent(format!(
                        "registries.\"{host}\": set both a username and a password, or neither"
                    )));
                }
            }
            if registry.acr {
                acr_hosts.push((host.clone(), registry.plain_http));
            }
            if registry.ecr {
                #[cfg(feature = "aws")]
                credentials.insert(
                    host.clone(),
                    RegistryCredential::Ecr(Arc::new(crate::registry::ecr::EcrCredentials::new(host))),
                );
                #[cfg(not(feature = "aws"))]
                return Err(WorkError::permanent(format!(
                    "registries.\"{host}\".ecr: this build of Ferry has no `aws` feature"
                )));
            }
        }
        let http = HttpClients::new(&client).map_err(|e| WorkError::permanent(e.to_string()))?;
        let acr_hosts_empty = acr_hosts.is_empty();
        for (host, plain_http) in acr_hosts {
            let arm = super::notifiers::shared_arm(arm, config)?;
            let tenant = config
                .azure
                .as_ref()
                .and_then(|azure| azure.tenant_id.clone())
                .or_else(|| std::env::var("AZURE_TENANT_ID").ok().filter(|t| !t.is_empty()));
            let acr = crate::registry::acr::AcrCredentials::new(
                &host,
                plain_http,
                tenant,
                arm.credential().clone(),
                arm.scope(),
                http.for_registry(api_host(&host)),
            )
            .map_err(|e| WorkError::permanent(e.to_string()))?;
            credentials.insert(host, RegistryCredential::Acr(Arc::new(acr)));
        }
        let arm = if acr_hosts_empty { None } else { arm.clone() };
        Ok(RegistrySettings { client, credentials, http, arm, arm_ids })
    }

    /// The credential for `registry` now (renewed when it is about to expire).
    pub async fn credential(&self, registry: &str) -> Result<Option<Credential>, WorkError> {
        match self.credentials.get(registry) {
            Some(credential) => credential.current().await.map(Some),
            None => Ok(None),
        }
    }

    pub(super) async fn access(&self, source: &RepoName, target: &RepoName) -> Result<Access, WorkError> {
        Ok(Access {
            client: self.client.clone(),
            source_credential: self.credential(&source.registry).await?,
            target_credential: self.credential(&target.registry).await?,
            docker_config: Default::default(),
        })
    }

    /// `copy = "acr-import"`: ARM `importImage` of `source@digest` into `target` with `tags`.
    pub(super) async fn acr_import(
        &self,
        source: &RepoName,
        target: &RepoName,
        digest: &crate::registry::Digest,
        tags: &[crate::registry::Tag],
    ) -> Result<(), WorkError> {
        let arm_id = |repo: &RepoName| {
            self.arm_ids.get(&repo.registry).ok_or_else(|| {
                WorkError::permanent(format!(
                    "registries.\"{}\".arm_id is needed for copy = \"acr-import\"",
                    repo.registry
                ))
            })
        };
        let (source_id, target_id) = (arm_id(source)?, arm_id(target)?);
        let arm = self
            .arm
            .as_ref()
            .ok_or_else(|| WorkError::permanent("copy = \"acr-import\" needs acr = true registries and [azure]"))?;
        let tags: Vec<String> = tags.iter().map(|tag| format!("{}:{tag}", target.repository)).collect();
        let image = format!("{}@{digest}", source.repository);
        crate::registry::acr::import_image(
            arm,
            source_id,
            target_id,
            &image,
            &target.repository,
            &tags,
            Duration::from_secs(1800),
        )
        .await
        .map_err(|e| {
            let message = format!("acr-import {source}@{digest} → {target}: {e}");
            if e.is_retryable() { WorkError::transient(message) } else { WorkError::permanent(message) }
        })
    }

    pub(super) async fn client(&self, registry: &str) -> Result<Arc<RegistryClient>, WorkError> {
        Ok(RegistryClient::new(
            self.http.for_registry(api_host(registry)),
            api_host(registry),
            &self.client,
            self.credential(registry).await?,
        )?)
    }
}

pub(super) fn api_host(registry: &str) -> &str {
    if registry == crate::registry::reference::DOCKER_HUB { "registry-1.docker.io" } else { registry }
}

pub(super) fn registry_ref(repo: &RepoName, image: ImageRef) -> RegistryRef {
    RegistryRef { registry: repo.registry.clone(), repository: repo.repository.clone(), image }
}

//! Azure Container Registry with Entra ID (`acr = true` on a registry): no stored password.
//!
//! Ferry takes an Entra token for the ARM scope from the `[azure]` credential (the cached
//! provider the ARM client uses), exchanges it at `https://<host>/oauth2/exchange` for an ACR
//! refresh token, and hands that to the registry client as an identity token: the client then
//! asks `/oauth2/token` (`grant_type=refresh_token`) for access tokens when the registry's
//! challenge names that realm. The refresh token (about 3 hours) is cached until shortly
//! before the `exp` in its JWT and exchanged again then.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use serde::Deserialize;
use tokio::sync::Mutex;
use url::Url;

use super::auth::{Credential, Secret};
use crate::deploy::azure::{AzureError, EntraCredential, azure_error_body, endpoint_url, error_chain};
use crate::error::ErrorClass;

/// A refresh token is exchanged again this long before its `exp`, so that no copy starts with
/// one about to lapse mid-transfer.
pub const REFRESH_BEFORE_EXPIRY: Duration = Duration::from_secs(15 * 60);
/// When the refresh token carries no readable `exp`: well inside ACR's 3-hour lifetime.
const UNKNOWN_LIFETIME: Duration = Duration::from_secs(60 * 60);

#[derive(Debug, thiserror::Error)]
#[error("registries.\"{host}\".acr: {message}{hint}")]
pub struct AcrError {
    pub host: String,
    pub class: ErrorClass,
    pub message: String,
    pub hint: String,
}

/// The ACR refresh token of one registry, exchanged on first use and renewed before expiry.
pub struct AcrCredentials {
    host: String,
    exchange_url: Url,
    tenant: Option<String>,
    entra: Arc<EntraCredential>,
    /// The Entra scope whose token is exchanged (`{resource_manager}/.default`).
    scope: String,
    http: reqwest::Client,
    current: Mutex<Option<(Secret, SystemTime)>>,
}

impl AcrCredentials {
    /// For the registry `host` (reached over https, or plain http on a loopback host when
    /// `plain_http`), with Entra tokens for `scope` from `entra`.
    pub fn new(
        host: &str,
        plain_http: bool,
        tenant: Option<String>,
        entra: Arc<EntraCredential>,
        scope: String,
        http: reqwest::Client,
    ) -> Result<Self, AzureError> {
        let scheme = if plain_http { "http" } else { "https" };
        let key = format!("registries.\"{host}\".acr");
        let exchange_url = endpoint_url(&key, &format!("{scheme}://{host}/oauth2/exchange"))?;
        Ok(AcrCredentials {
            host: host.to_string(),
            exchange_url,
            tenant,
            entra,
            scope,
            http,
            current: Mutex::new(None),
        })
    }

    /// The identity token (ACR refresh token) to use now. Concurrent callers share one
    /// exchange.
    pub async fn credential(&self) -> Result<Credential, AcrError> {
        let mut current = self.current.lock().await;
        if let Some((token, expires)) = &*current
            && still_good(*expires, SystemTime::now())
        {
            return Ok(Credential::IdentityToken(token.clone()));
        }
        let (token, expires) = self.exchange().await?;
        *current = Some((token.clone(), expires));
        Ok(Credential::IdentityToken(token))
    }

    async fn exchange(&self) -> Result<(Secret, SystemTime), AcrError> {
        let error = |class, message: String, hint: &str| AcrError {
            host: self.host.clone(),
            class,
            message,
            hint: hint.to_string(),
        };
        let entra = self.entra.token(&self.scope).await.map_err(|e| {
            let class = if e.is_retryable() { ErrorClass::Transient } else { ErrorClass::Permanent };
            error(class, format!("no Entra ID token to exchange: {e}"), "")
        })?;
        let mut form = vec![("grant_type", "access_token"), ("service", self.host.as_str())];
        if let Some(tenant) = &self.tenant {
            form.push(("tenant", tenant));
        }
        form.push(("access_token", entra.expose()));
        let what = format!("POST {}", self.exchange_url);
        let response = self
            .http
            .post(self.exchange_url.clone())
            .form(&form)
            .timeout(Duration::from_secs(60))
            .send()
            .await
            .map_err(|e| {
                error(ErrorClass::Transient, format!("{what}: cannot reach the registry: {}", error_chain(&e)), "")
            })?;
        let status = response.status();
        let body = response.bytes().await.map_err(|e| {
            error(ErrorClass::Transient, format!("{what}: reading the answer: {}", error_chain(&e)), "")
        })?;
        if !status.is_success() {
            let (code, message) = acr_error_body(&body);
            let message = format!("{what}: HTTP {}: {code}: {message}", status.as_u16());
            return Err(match status.as_u16() {
                401 | 403 => error(
                    ErrorClass::Permanent,
                    message,
                    "; the registry refused Ferry's Entra ID identity: grant it AcrPull on source registries and AcrPush on targets (docs/DEPLOY-AZURE.md), and check [azure] tenant_id",
                ),
                400 | 404 => error(
                    ErrorClass::Permanent,
                    message,
                    "; is this an Azure Container Registry with Entra ID authentication enabled?",
                ),
                _ => error(ErrorClass::Transient, message, ""),
            });
        }
        #[derive(Deserialize)]
        struct Exchanged {
            refresh_token: String,
        }
        let exchanged: Exchanged = serde_json::from_slice(&body)
            .map_err(|e| error(ErrorClass::Transient, format!("{what}: the answer has no refresh_token: {e}"), ""))?;
        let expires = jwt_expiry(&exchanged.refresh_token).unwrap_or_else(|| SystemTime::now() + UNKNOWN_LIFETIME);
        tracing::debug!(registry = %self.host, "new ACR refresh token");
        Ok((Secret::new(exchanged.refresh_token), expires))
    }
}

/// The ARM API version of `importImage`.
pub const IMPORT_API_VERSION: &str = "2023-07-01";

/// Server-side copy (`copy = "acr-import"`): ARM `importImage` on the target registry, from the
/// source registry's resource id, `source_image` being `repo@sha256:…` so the import is
/// digest-exact; followed to its end as a long-running operation. `mode` is `Force`: a
/// promotion moves the stage's tags, which `NoForce` would refuse when they already exist.
/// Without tags the repository gets the manifest untagged.
pub async fn import_image(
    arm: &crate::deploy::azure::ArmClient,
    source_arm_id: &str,
    target_arm_id: &str,
    source_image: &str,
    target_repository: &str,
    target_tags: &[String],
    timeout: Duration,
) -> Result<(), AzureError> {
    let mut body = serde_json::json!({
        "source": { "resourceId": source_arm_id, "sourceImage": source_image },
        "mode": "Force",
    });
    if target_tags.is_empty() {
        body["untaggedTargetRepositories"] = serde_json::json!([target_repository]);
    } else {
        body["targetTags"] = serde_json::json!(target_tags);
    }
    let path = format!("{}/importImage", target_arm_id.trim_end_matches('/'));
    let resource = format!("importImage of {source_image} into {target_arm_id}");
    let started = arm.send(reqwest::Method::POST, &path, Some(IMPORT_API_VERSION), Some(&body), &resource).await?;
    arm.wait_for_operation(started, &resource, timeout, Duration::from_secs(2)).await
}

/// ACR's error code and message: the registry's `{"errors":[{"code","message"}]}`, or any of
/// the Azure shapes.
fn acr_error_body(body: &[u8]) -> (String, String) {
    let value: serde_json::Value = serde_json::from_slice(body).unwrap_or(serde_json::Value::Null);
    let first = value.get("errors").and_then(|e| e.get(0));
    let field = |name: &str| first.and_then(|e| e.get(name)).and_then(|v| v.as_str()).map(str::to_string);
    match (field("code"), field("message")) {
        (Some(code), Some(message)) => (code, message),
        _ => azure_error_body(body),
    }
}

/// The `exp` claim of a JWT (not verified: ACR checks its own tokens; Ferry only needs to know
/// when to ask for a new one).
pub fn jwt_expiry(token: &str) -> Option<SystemTime> {
    let payload = token.split('.').nth(1)?;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(payload.trim_end_matches('=')).ok()?;
    let claims: serde_json::Value = serde_json::from_slice(&bytes).ok()?;
    let exp = claims.get("exp")?.as_u64()?;
    Some(UNIX_EPOCH + Duration::from_secs(exp))
}

/// Whether a refresh token expiring at `expires` may still be used at `now`.
fn still_good(expires: SystemTime, now: SystemTime) -> bool {
    now + REFRESH_BEFORE_EXPIRY < expires
}

#[cfg(test)]
mod tests {
    use super::*;

    fn jwt(claims: &str) -> String {
        let b64 = |s: &str| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(s);
        format!("{}.{}.sig", b64(r#"{"alg":"RS256","typ":"JWT"}"#), b64(claims))
    }

    #[test]
    fn the_expiry_comes_from_the_jwt_exp_claim() {
        assert_eq!(
            jwt_expiry(&jwt(r#"{"exp":1700000000,"aud":"x"}"#)),
            Some(UNIX_EPOCH + Duration::from_secs(1_700_000_000))
        );
        assert_eq!(jwt_expiry(&jwt(r#"{"aud":"x"}"#)), None);
        assert_eq!(jwt_expiry("not-a-jwt"), None);
        assert_eq!(jwt_expiry("a.!!!.c"), None);
    }

    #[test]
    fn a_refresh_token_is_replaced_before_it_expires_not_after() {
        let now = SystemTime::now();
        assert!(still_good(now + Duration::from_secs(3 * 3600), now), "a fresh 3-hour token is kept");
        assert!(!still_good(now + Duration::from_secs(5 * 60), now), "5 minutes left: exchange again");
        assert!(!still_good(now - Duration::from_secs(1), now), "expired");
    }
}

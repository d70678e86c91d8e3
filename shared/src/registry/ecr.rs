//! Amazon ECR credentials (`ecr = true` on a registry): a token from ECR's
//! `GetAuthorizationToken` with the AWS credential chain, used as basic auth (`AWS` and the
//! token's password), cached and fetched again before it expires (ECR tokens last 12 hours).

use std::time::{Duration, SystemTime};

use aws_sdk_ecr::error::ProvideErrorMetadata;
use base64::Engine as _;
use tokio::sync::{Mutex, OnceCell};

use super::auth::{Credential, Secret};
use crate::error::ErrorClass;

/// A token is replaced this long before its `expiresAt`, so that no copy starts with a token
/// about to lapse mid-transfer.
pub const REFRESH_BEFORE_EXPIRY: Duration = Duration::from_secs(30 * 60);

#[derive(Debug, thiserror::Error)]
#[error("registries.\"{host}\".ecr: {message}; {hint}")]
pub struct EcrError {
    pub host: String,
    pub class: ErrorClass,
    pub message: String,
    pub hint: String,
}

/// The region of an ECR host name (`<account>.dkr.ecr.<region>.amazonaws.com`, also
/// `.com.cn`), if it is one. (The token itself serves every registry the caller may use.)
pub fn ecr_region(host: &str) -> Option<&str> {
    let mut labels = host.split('.');
    let account = labels.next()?;
    let (dkr, ecr, region) = (labels.next()?, labels.next()?, labels.next()?);
    let rest: Vec<&str> = labels.collect();
    let amazon = matches!(rest[..], ["amazonaws", "com"] | ["amazonaws", "com", "cn"]);
    (dkr == "dkr"
        && ecr == "ecr"
        && amazon
        && account.len() == 12
        && account.bytes().all(|b| b.is_ascii_digit())
        && !region.is_empty())
    .then_some(region)
}

/// The credential of one ECR registry, fetched on first use and renewed before expiry.
pub struct EcrCredentials {
    host: String,
    /// `None` (a host that is not an ECR name, e.g. a local alias): the configured region.
    region: Option<String>,
    sdk: OnceCell<aws_config::SdkConfig>,
    current: Mutex<Option<(Credential, SystemTime)>>,
}

impl EcrCredentials {
    /// For `host`, with the standard AWS configuration loaded on first use.
    pub fn new(host: &str) -> Self {
        EcrCredentials {
            host: host.to_string(),
            region: ecr_region(host).map(str::to_string),
            sdk: OnceCell::new(),
            current: Mutex::new(None),
        }
    }

    /// For `host`, with a given AWS configuration.
    pub fn with_sdk(host: &str, sdk: aws_config::SdkConfig) -> Self {
        let credentials = EcrCredentials::new(host);
        let _ = credentials.sdk.set(sdk);
        credentials
    }

    /// The basic-auth credential to use now: the cached one while it is more than
    /// [`REFRESH_BEFORE_EXPIRY`] from expiring, else a new token.
    pub async fn credential(&self) -> Result<Credential, EcrError> {
        let mut current = self.current.lock().await;
        if let Some((credential, expires)) = &*current
            && still_good(*expires, SystemTime::now())
        {
            return Ok(credential.clone());
        }
        let (credential, expires) = self.fetch().await?;
        *current = Some((credential.clone(), expires));
        Ok(credential)
    }

    async fn fetch(&self) -> Result<(Credential, SystemTime), EcrError> {
        let error = |class, message: String, hint: &str| EcrError {
            host: self.host.clone(),
            class,
            message,
            hint: hint.into(),
        };
        let sdk = self.sdk.get_or_init(|| aws_config::defaults(aws_config::BehaviorVersion::latest()).load()).await;
        let mut conf = aws_sdk_ecr::config::Builder::from(sdk);
        if let Some(region) = &self.region {
            conf = conf.region(aws_sdk_ecr::config::Region::new(region.clone()));
        }
        let out = aws_sdk_ecr::Client::from_conf(conf.build()).get_authorization_token().send().await.map_err(|e| {
            let text = crate::secrets::describe(&e);
            // A 403 whose body the SDK could not read is still a refusal.
            let refused = text.starts_with("HTTP 403")
                || matches!(
                    e.code(),
                    Some("AccessDenied" | "AccessDeniedException" | "UnrecognizedClientException" | "InvalidSignatureException")
                );
            if refused {
                error(
                    ErrorClass::Permanent,
                    format!("GetAuthorizationToken refused: {text}"),
                    "grant the role ecr:GetAuthorizationToken (and pull/push on the repositories), and check the credential chain",
                )
            } else {
                error(
                    ErrorClass::Transient,
                    format!("GetAuthorizationToken failed: {text}"),
                    "check the AWS region, credentials and the network path to ECR",
                )
            }
        })?;
        let data = out.authorization_data().first().ok_or_else(|| {
            error(ErrorClass::Transient, "GetAuthorizationToken returned no authorization data".into(), "try again")
        })?;
        let token = data.authorization_token().unwrap_or_default();
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(token)
            .ok()
            .and_then(|bytes| String::from_utf8(bytes).ok())
            .ok_or_else(|| {
                error(ErrorClass::Transient, "the authorization token is not base64 text".into(), "try again")
            })?;
        let (username, password) = decoded.split_once(':').ok_or_else(|| {
            error(ErrorClass::Transient, "the authorization token is not `user:password`".into(), "try again")
        })?;
        // Without an expiry, keep it for an hour: well inside ECR's 12-hour lifetime.
        let expires = data
            .expires_at()
            .and_then(|at| SystemTime::try_from(*at).ok())
            .unwrap_or_else(|| SystemTime::now() + Duration::from_secs(3600));
        tracing::debug!(registry = %self.host, "new ECR authorization token");
        Ok((Credential::Basic { username: username.to_string(), password: Secret::new(password) }, expires))
    }
}

/// Whether a token expiring at `expires` may still be used at `now`.
fn still_good(expires: SystemTime, now: SystemTime) -> bool {
    now + REFRESH_BEFORE_EXPIRY < expires
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_token_is_replaced_before_it_expires_not_after() {
        let now = SystemTime::now();
        assert!(still_good(now + Duration::from_secs(11 * 3600), now), "a fresh 12-hour token is kept");
        assert!(!still_good(now + Duration::from_secs(10 * 60), now), "10 minutes left: fetch a new one");
        assert!(!still_good(now - Duration::from_secs(1), now), "expired");
    }

    #[test]
    fn ecr_host_names_give_their_region() {
        assert_eq!(ecr_region("123456789012.dkr.ecr.eu-west-1.amazonaws.com"), Some("eu-west-1"));
        assert_eq!(ecr_region("123456789012.dkr.ecr.cn-north-1.amazonaws.com.cn"), Some("cn-north-1"));
        for other in
            ["ghcr.io", "127.0.0.1:5000", "12345.dkr.ecr.eu-west-1.amazonaws.com", "123456789012.dkr.ecr.x.evil.com"]
        {
            assert_eq!(ecr_region(other), None, "{other}");
        }
    }
}

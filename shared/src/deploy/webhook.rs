//! A signed JSON POST per deployment, with the same HMAC scheme as `/hooks/generic`
//! (`X-Ferry-Timestamp`, `X-Ferry-Signature: sha256=HMAC(secret, "{timestamp}.{body}")`), so the
//! receiver can verify it came from Ferry.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use futures_util::future::BoxFuture;

use super::{Deployment, Notified, Notifier, NotifyError};
use crate::http::{SIGNATURE_HEADER, TIMESTAMP_HEADER};
use crate::intake::verify::generic_signature;
use crate::registry::auth::Secret;

pub struct WebhookNotifier {
    url: String,
    secret: Option<Secret>,
    http: reqwest::Client,
}

impl WebhookNotifier {
    pub fn new(url: &str, secret: Option<Secret>) -> Result<Self, NotifyError> {
        let parsed = url::Url::parse(url)
            .map_err(|e| NotifyError::Permanent { target: url.into(), detail: format!("invalid webhook URL: {e}") })?;
        if !matches!(parsed.scheme(), "http" | "https") {
            return Err(NotifyError::Permanent { target: url.into(), detail: "webhook URL must be http(s)".into() });
        }
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .build()
            .map_err(|e| NotifyError::Permanent { target: url.into(), detail: e.to_string() })?;
        Ok(WebhookNotifier { url: url.to_string(), secret, http })
    }
}

impl Notifier for WebhookNotifier {
    fn notify<'a>(&'a self, deployment: &'a Deployment) -> BoxFuture<'a, Result<Notified, NotifyError>> {
        Box::pin(async move {
            let body = serde_json::to_vec(&serde_json::json!({ "event": "ferry.deployed", "deployment": deployment }))
                .expect("deployment serializes");
            let mut request = self.http.post(&self.url).header("content-type", "application/json");
            if let Some(secret) = &self.secret {
                let timestamp = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default().as_secs().to_string();
                let signature = generic_signature(secret.expose().as_bytes(), &timestamp, &body);
                request = request.header(TIMESTAMP_HEADER, timestamp).header(SIGNATURE_HEADER, signature);
            }
            let target = self.url.clone();
            let response = request.body(body).send().await.map_err(|e| NotifyError::Transient {
                target: target.clone(),
                detail: format!("cannot deliver: {e}"),
            })?;
            let status = response.status();
            if status.is_success() {
                Ok(Notified { confirmed: true, detail: format!("webhook answered {status}") })
            } else if status.is_server_error() || status.as_u16() == 429 || status.as_u16() == 408 {
                Err(NotifyError::Transient { target, detail: format!("webhook answered {status}") })
            } else {
                Err(NotifyError::Permanent { target, detail: format!("webhook answered {status}") })
            }
        })
    }
}

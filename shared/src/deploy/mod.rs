//! Telling a stage's runtime about the image it now runs: the notifier seam, with the no-op,
//! the signed webhook, Azure App Service (over ARM with Entra ID credentials) and Kubernetes
//! Deployments (AKS or any cluster).

pub mod app_service;
pub mod azure;
pub mod kubernetes;
pub mod webhook;

pub use app_service::AppServiceNotifier;
pub use kubernetes::KubernetesNotifier;
pub use webhook::WebhookNotifier;

use futures_util::future::BoxFuture;
use serde::Serialize;

/// What a stage now runs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Deployment {
    pub pipeline: String,
    pub stage: String,
    /// `host/repo@sha256:…`: what the runtime should pull.
    pub image: String,
    pub digest: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tag: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub build_number: Option<String>,
    pub promotion_id: String,
    /// A rollback re-points the stage to an earlier digest.
    pub rollback: bool,
}

/// How a notification went.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Notified {
    /// The runtime confirmed the deployment (counts for a next stage's `after` gate).
    pub confirmed: bool,
    pub detail: String,
}

#[derive(Debug, thiserror::Error)]
pub enum NotifyError {
    /// Worth retrying: the receiver was down, slow, or answered 5xx/429.
    #[error("{target}: {detail}")]
    Transient { target: String, detail: String },
    /// Retrying the same request will not help (4xx, bad configuration).
    #[error("{target}: {detail}")]
    Permanent { target: String, detail: String },
}

pub trait Notifier: Send + Sync + 'static {
    fn notify<'a>(&'a self, deployment: &'a Deployment) -> BoxFuture<'a, Result<Notified, NotifyError>>;
}

/// For stages without a runtime to tell.
pub struct NoopNotifier;

impl Notifier for NoopNotifier {
    fn notify<'a>(&'a self, _deployment: &'a Deployment) -> BoxFuture<'a, Result<Notified, NotifyError>> {
        Box::pin(async { Ok(Notified { confirmed: false, detail: "no notifier configured".into() }) })
    }
}

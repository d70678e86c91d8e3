//! Errors of the promotion core, each with a class that decides what happens next: the queue
//! retries a transient failure with backoff and dead-letters the rest at once; the operations API
//! answers with the status of the class; the CLI exits non-zero and says why.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::ledger::LedgerError;
use crate::queue::QueueError;
use crate::registry::CopyError;

/// What kind of failure, as far as whoever handles it needs to know.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorClass {
    /// May succeed later as it is: a registry or store unavailable, throttled, a dropped
    /// connection. Retried with backoff.
    Transient,
    /// Will fail again until someone changes something: refused credentials, an invalid
    /// manifest, a configuration error. Dead-lettered at once with the reason.
    Permanent,
    /// What was asked for does not exist: an image, a tag, a pipeline, a promotion.
    NotFound,
    /// The request clashes with the current state (someone else changed it first).
    Conflict,
}

impl ErrorClass {
    /// The operations API's answer for this class.
    pub fn http_status(self) -> u16 {
        match self {
            ErrorClass::Transient => 503,
            ErrorClass::Permanent => 502,
            ErrorClass::NotFound => 404,
            ErrorClass::Conflict => 409,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            ErrorClass::Transient => "transient",
            ErrorClass::Permanent => "permanent",
            ErrorClass::NotFound => "not found",
            ErrorClass::Conflict => "conflict",
        }
    }
}

impl fmt::Display for ErrorClass {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A failure of the promotion core: a message that names what failed and where, and its class.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct WorkError {
    pub class: ErrorClass,
    pub message: String,
}

impl WorkError {
    pub fn new(class: ErrorClass, message: impl Into<String>) -> Self {
        WorkError { class, message: message.into() }
    }

    pub fn transient(message: impl Into<String>) -> Self {
        Self::new(ErrorClass::Transient, message)
    }

    pub fn permanent(message: impl Into<String>) -> Self {
        Self::new(ErrorClass::Permanent, message)
    }

    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(ErrorClass::NotFound, message)
    }

    pub fn conflict(message: impl Into<String>) -> Self {
        Self::new(ErrorClass::Conflict, message)
    }

    /// The same failure, with what was being done in front of it.
    pub fn context(self, what: impl fmt::Display) -> Self {
        WorkError { class: self.class, message: format!("{what}: {}", self.message) }
    }

    pub fn is_transient(&self) -> bool {
        self.class == ErrorClass::Transient
    }
}

impl From<CopyError> for WorkError {
    /// Classified by what a retry could change. Hints name the configuration keys of
    /// `ferry serve`, not the flags of `ferry copy`.
    fn from(error: CopyError) -> Self {
        let class = match &error {
            _ if error.is_retryable() => ErrorClass::Transient,
            CopyError::NotFound { .. } => ErrorClass::NotFound,
            CopyError::Status { status: 404, .. } => ErrorClass::NotFound,
            // A blob that arrived damaged, or a digest read back wrong, may be a broken transfer:
            // a few retries, then the dead letters. A wrong image never stays at a target.
            CopyError::DigestMismatch { .. } | CopyError::CorruptBlob { .. } => ErrorClass::Transient,
            // A slow registry may be quick again later; the copy engine does not retry these.
            CopyError::Deadline { .. } | CopyError::Stalled { .. } => ErrorClass::Transient,
            _ => ErrorClass::Permanent,
        };
        let message = match &error {
            CopyError::Auth { registry, scope, detail } => format!(
                "{registry}: authentication failed for scope `{scope}`: {detail}; set username_env and password_env \
                 (or username_arn and password_arn; `ecr = true` for ECR) under [registries.\"{registry}\"] to \
                 credentials with pull (source) or push (target) rights"
            ),
            CopyError::Transport { registry, detail, hint } if !hint.is_empty() => {
                let fix = if hint.contains("ca_cert") || hint.contains("--ca-cert") {
                    format!(
                        "the registry's TLS certificate is not trusted; if {registry} uses a private CA, set \
                         `ca_cert = \"FILE\"` under [registries.\"{registry}\"]"
                    )
                } else {
                    format!("if {registry} speaks plain HTTP, set plain_http = true under [registries.\"{registry}\"]")
                };
                format!("cannot reach {registry}: {detail} ({fix})")
            }
            _ => error.to_string(),
        };
        WorkError { class, message }
    }
}

impl From<LedgerError> for WorkError {
    fn from(error: LedgerError) -> Self {
        let class = match &error {
            LedgerError::Unavailable(_) => ErrorClass::Transient,
            LedgerError::UnknownPromotion(_) => ErrorClass::NotFound,
        };
        WorkError { class, message: error.to_string() }
    }
}

impl From<QueueError> for WorkError {
    fn from(error: QueueError) -> Self {
        let class = match &error {
            QueueError::Unavailable(_) => ErrorClass::Transient,
            QueueError::StaleReceipt(_) => ErrorClass::Conflict,
            QueueError::Invalid(_) => ErrorClass::Permanent,
        };
        WorkError { class, message: error.to_string() }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(status: u16) -> CopyError {
        CopyError::Status { registry: "r.io".into(), what: "GET".into(), status, remote: vec![], retry_after: None }
    }

    #[test]
    fn registry_failures_are_classed_by_what_a_retry_could_change() {
        assert_eq!(WorkError::from(status(503)).class, ErrorClass::Transient);
        assert_eq!(WorkError::from(status(429)).class, ErrorClass::Transient);
        assert_eq!(WorkError::from(status(403)).class, ErrorClass::Permanent);
        assert_eq!(WorkError::from(status(404)).class, ErrorClass::NotFound);
        let missing = CopyError::NotFound {
            registry: "r.io".into(),
            repository: "shop/api".into(),
            reference: "9.9.9".into(),
            remote: vec![],
        };
        assert_eq!(WorkError::from(missing).class, ErrorClass::NotFound);
    }

    #[test]
    fn hints_name_serve_configuration_not_copy_flags() {
        let auth = WorkError::from(CopyError::Auth {
            registry: "r.io".into(),
            scope: "repository:shop/api:pull".into(),
            detail: "HTTP 401".into(),
        });
        assert_eq!(auth.class, ErrorClass::Permanent);
        assert!(auth.message.contains("[registries.\"r.io\"]"), "{}", auth.message);
        assert!(!auth.message.contains("--"), "serve has no flags to give credentials: {}", auth.message);
        let tls = WorkError::from(CopyError::Transport {
            registry: "r.io".into(),
            detail: "invalid peer certificate: UnknownIssuer".into(),
            hint: " (for a registry with a private CA pass --ca-cert FILE)".into(),
        });
        assert_eq!(tls.class, ErrorClass::Permanent);
        assert!(tls.message.contains("ca_cert") && !tls.message.contains("--ca-cert"), "{}", tls.message);
    }
}

//! One error type for the copy engine. Each variant names what failed and where, and carries
//! the registry's own error envelope when there is one.

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use super::manifest::ManifestError;
use super::reference::Digest;

/// One entry of the OCI error envelope `{"errors":[{"code","message","detail"}]}`.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
pub struct RemoteError {
    pub code: String,
    #[serde(default)]
    pub message: String,
    #[serde(default)]
    pub detail: Option<serde_json::Value>,
}

#[derive(Deserialize)]
struct Envelope {
    #[serde(default)]
    errors: Vec<RemoteError>,
}

impl RemoteError {
    /// Reads an OCI error envelope; anything else yields no entries.
    pub fn parse_envelope(body: &[u8]) -> Vec<RemoteError> {
        serde_json::from_slice::<Envelope>(body).map(|e| e.errors).unwrap_or_default()
    }
}

struct Remote<'a>(&'a [RemoteError]);

impl fmt::Display for Remote<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            f.write_str(if i == 0 { ": " } else { "; " })?;
            write!(f, "{}", e.code)?;
            if !e.message.is_empty() {
                write!(f, " ({})", e.message)?;
            }
        }
        Ok(())
    }
}

#[derive(Debug, thiserror::Error)]
pub enum CopyError {
    #[error("{registry}: {what} failed with HTTP {status}{remote}", remote = Remote(remote))]
    Status { registry: String, what: String, status: u16, remote: Vec<RemoteError>, retry_after: Option<Duration> },

    #[error("{registry}/{repository}: `{reference}` not found{remote}; check the repository and tag exist", remote = Remote(remote))]
    NotFound { registry: String, repository: String, reference: String, remote: Vec<RemoteError> },

    #[error(
        "{registry}: authentication failed for scope `{scope}`: {detail}; give credentials with --src-creds/--dest-creds, FERRY_SRC_CREDS/FERRY_DEST_CREDS or a docker config.json (--authfile)"
    )]
    Auth { registry: String, scope: String, detail: String },

    #[error("cannot reach {registry}: {detail}{hint}")]
    Transport { registry: String, detail: String, hint: String },

    /// The registry tried to steer Ferry (and its credentials) somewhere it may not go: a token
    /// realm, upload `Location`, referrers `Link` or redirect outside the registry's origin.
    #[error("{registry}: {detail}")]
    Refused { registry: String, detail: String },

    /// A request with a total deadline (manifests, tokens, referrers) did not finish in time,
    /// e.g. a body trickled byte by byte.
    #[error(
        "{registry}: {what} did not finish within {limit:?}; the registry answers too slowly (or trickles its answer)"
    )]
    Deadline { registry: String, what: String, limit: Duration },

    /// A blob transfer moved too few bytes in a window.
    #[error(
        "{registry}: {what} stalled: fewer than {min_bytes} bytes moved in {window:?}; the registry is too slow (or trickles the blob)"
    )]
    Stalled { registry: String, what: String, min_bytes: u64, window: Duration },

    #[error("digest mismatch for {what}: expected {expected}, got {actual}")]
    DigestMismatch { what: String, expected: Digest, actual: Digest },

    #[error("digest mismatch: blob {digest} served by {source_name} does not hash to its digest ({detail})")]
    CorruptBlob { source_name: String, digest: Digest, detail: String },

    #[error("{location}: invalid manifest {digest}: {source}")]
    Manifest { location: String, digest: String, source: ManifestError },

    #[error("{}: {source}", path.display())]
    Io { path: PathBuf, source: std::io::Error },

    #[error("{0}")]
    Invalid(String),
}

impl CopyError {
    /// Whether trying the same operation again may succeed: server errors, throttling and
    /// broken connections are; a missing image or a refused credential is not.
    pub fn is_retryable(&self) -> bool {
        match self {
            CopyError::Status { status, .. } => *status >= 500 || *status == 429 || *status == 408,
            CopyError::Transport { hint, .. } => hint.is_empty(),
            _ => false,
        }
    }

    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            CopyError::Status { retry_after, .. } => *retry_after,
            _ => None,
        }
    }

    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        CopyError::Io { path: path.into(), source }
    }

    /// Describes a reqwest failure with its whole cause chain (reqwest's own message alone says
    /// only "error sending request"), plus a hint when the cause is a TLS or protocol mismatch.
    pub fn transport(registry: &str, err: &reqwest::Error) -> Self {
        let mut detail = err.without_url_ref().to_string();
        let mut source = std::error::Error::source(err);
        while let Some(cause) = source {
            if let Some(refused) = cause.downcast_ref::<RefusedRedirect>() {
                return CopyError::Refused { registry: registry.to_string(), detail: refused.to_string() };
            }
            detail.push_str(": ");
            detail.push_str(&cause.to_string());
            source = cause.source();
        }
        let lower = detail.to_lowercase();
        let hint = if lower.contains("certificate") || lower.contains("unknownissuer") {
            format!(
                " (the registry's TLS certificate is not trusted; if {registry} uses a private CA, trust it for this \
                 registry: `ca_cert = \"FILE\"` under [registries.\"{registry}\"] in the Ferry config, or \
                 `ferry copy --ca-cert FILE`)"
            )
        } else if lower.contains("corrupt message")
            || lower.contains("invalidcontenttype")
            || lower.contains("wrong version number")
        {
            " (TLS handshake failed: if this registry speaks plain HTTP, pass --plain-http HOST)".to_string()
        } else {
            String::new()
        };
        CopyError::Transport { registry: registry.to_string(), detail, hint }
    }
}

/// Why Ferry's redirect policy stopped a redirect; carried inside the reqwest error so that
/// [`CopyError::transport`] turns it into [`CopyError::Refused`] (not retried).
#[derive(Debug)]
pub struct RefusedRedirect {
    /// Scheme, host and port of where the redirect pointed (no path: it may carry a signature).
    pub to: String,
    pub reason: &'static str,
}

impl fmt::Display for RefusedRedirect {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "refused a redirect to {}: {}", self.to, self.reason)
    }
}

impl std::error::Error for RefusedRedirect {}

trait WithoutUrlRef {
    fn without_url_ref(&self) -> String;
}

impl WithoutUrlRef for reqwest::Error {
    /// reqwest's message with the URL, which may carry upload-session secrets, left out.
    fn without_url_ref(&self) -> String {
        let mut text = self.to_string();
        if let Some(url) = self.url() {
            text = text.replace(&format!(" for url ({url})"), "");
        }
        text
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_names_registry_code_and_message() {
        let remote = RemoteError::parse_envelope(
            br#"{"errors":[{"code":"MANIFEST_UNKNOWN","message":"manifest unknown","detail":{"Tag":"nope"}}]}"#,
        );
        let err = CopyError::NotFound {
            registry: "127.0.0.1:5000".into(),
            repository: "shop/api".into(),
            reference: "nope".into(),
            remote,
        };
        let text = err.to_string();
        assert!(text.contains("127.0.0.1:5000/shop/api"), "{text}");
        assert!(text.contains("MANIFEST_UNKNOWN (manifest unknown)"), "{text}");
        assert!(!err.is_retryable());
    }

    #[test]
    fn only_transient_statuses_are_retryable() {
        let status = |status| CopyError::Status {
            registry: "r".into(),
            what: "GET".into(),
            status,
            remote: vec![],
            retry_after: None,
        };
        assert!(status(503).is_retryable());
        assert!(status(429).is_retryable());
        assert!(!status(400).is_retryable());
        assert!(!status(403).is_retryable());
    }

    #[test]
    fn garbage_envelopes_yield_no_entries() {
        assert!(RemoteError::parse_envelope(b"<html>").is_empty());
        assert!(RemoteError::parse_envelope(b"{}").is_empty());
    }
}

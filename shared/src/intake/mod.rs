//! Webhook intake: authenticate a sender on the raw bytes, parse its payload into
//! [`PromotionRequest`]s, and match them against configured pipelines.

pub mod acr;
pub mod azure_devops;
pub mod distribution;
pub mod dockerhub;
pub mod generic;
pub mod github;
pub mod harbor;
pub mod quay;
pub mod replay;
pub mod verify;

use serde::{Deserialize, Serialize};

use crate::registry::Digest;

/// Which kind of sender a request came from; also the route segment (`/hooks/{sender}`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Sender {
    Acr,
    AzureDevops,
    Dockerhub,
    Github,
    Distribution,
    Harbor,
    Quay,
    Generic,
    /// Not a webhook: an operator (`ferry promote`, approvals) or Ferry itself (next stage).
    Operator,
}

impl Sender {
    pub fn as_str(self) -> &'static str {
        match self {
            Sender::Acr => "acr",
            Sender::AzureDevops => "azure-devops",
            Sender::Dockerhub => "dockerhub",
            Sender::Github => "github",
            Sender::Distribution => "distribution",
            Sender::Harbor => "harbor",
            Sender::Quay => "quay",
            Sender::Generic => "generic",
            Sender::Operator => "operator",
        }
    }
}

/// The build that produced an image, when the sender knows it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Build {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub number: Option<String>,
}

/// One image event, normalized across senders. The digest is a hint only: the worker resolves it
/// again at the source registry before promoting.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PromotionRequest {
    pub sender: Sender,
    /// Registry host as the sender names it (`docker.io`, `ghcr.io`, `127.0.0.1:5001`), when known.
    pub registry: Option<String>,
    pub repository: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tag: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub digest: Option<Digest>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub build: Option<Build>,
    /// The sender's own id for this delivery or event, for dedup and tracing.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delivery_id: Option<String>,
}

/// What a payload amounts to.
#[derive(Debug, PartialEq, Eq)]
pub enum Parsed {
    Requests(Vec<PromotionRequest>),
    /// A well-formed event that promotes nothing (a ping, a delete, a pull …), with the reason.
    Ignored(String),
    /// A CI build finished: which image it produced comes from the pipeline configuration.
    Build(azure_devops::BuildCompleted),
    /// A release stage reports a deployment outcome.
    Deployment(azure_devops::DeploymentCompleted),
}

/// Why a payload was refused: always a 400 with this message.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PayloadError {
    #[error("body is not valid JSON for a {sender} webhook: {detail}")]
    Json { sender: &'static str, detail: String },
    #[error("{sender} webhook: {detail}")]
    Invalid { sender: &'static str, detail: String },
}

impl PayloadError {
    pub fn json(sender: Sender, err: serde_json::Error) -> Self {
        PayloadError::Json { sender: sender.as_str(), detail: err.to_string() }
    }
    pub fn invalid(sender: Sender, detail: impl Into<String>) -> Self {
        PayloadError::Invalid { sender: sender.as_str(), detail: detail.into() }
    }
}

/// Parses a sender's payload (already authenticated).
pub fn parse(sender: Sender, body: &[u8], delivery_id: Option<&str>) -> Result<Parsed, PayloadError> {
    match sender {
        Sender::Acr => acr::parse(body),
        Sender::AzureDevops => azure_devops::parse(body),
        Sender::Dockerhub => dockerhub::parse(body),
        Sender::Github => github::parse(body, delivery_id),
        Sender::Distribution => distribution::parse(body),
        Sender::Harbor => harbor::parse(body),
        Sender::Quay => quay::parse(body),
        Sender::Generic => generic::parse(body),
        Sender::Operator => Ok(Parsed::Ignored("operators do not send webhooks".into())),
    }
}

/// An optional string field that treats `""` as absent (senders use both for "no tag").
pub(crate) fn non_empty(value: Option<String>) -> Option<String> {
    value.map(|v| v.trim().to_string()).filter(|v| !v.is_empty())
}

/// A digest field: absent or empty is fine, present but malformed is an error.
pub(crate) fn digest_field(sender: Sender, value: Option<String>) -> Result<Option<Digest>, PayloadError> {
    non_empty(value).map(|d| d.parse::<Digest>().map_err(|e| PayloadError::invalid(sender, e.to_string()))).transpose()
}

/// A repository path as registries accept it; rejects anything that could escape a URL path.
pub(crate) fn repository_field(sender: Sender, value: Option<String>) -> Result<String, PayloadError> {
    let repository = non_empty(value).ok_or_else(|| PayloadError::invalid(sender, "missing repository"))?;
    let invalid = || PayloadError::invalid(sender, format!("`{repository}` is not a valid repository name"));
    let probe: crate::registry::RegistryRef =
        format!("registry.invalid/{repository}").parse().map_err(|_| invalid())?;
    // The probe also parses with a `:tag` or `@digest` on the end; a repository has neither.
    if probe.image.tag.is_some() || probe.image.digest.is_some() {
        return Err(invalid());
    }
    Ok(repository)
}

pub(crate) fn tag_field(sender: Sender, value: Option<String>) -> Result<Option<String>, PayloadError> {
    non_empty(value)
        .map(|t| {
            t.parse::<crate::registry::Tag>()
                .map(|_| t.clone())
                .map_err(|_| PayloadError::invalid(sender, format!("`{t}` is not a valid tag")))
        })
        .transpose()
}

#[cfg(test)]
mod tests {
    use super::*;

    const FIXTURES: &[(Sender, &str)] = &[
        (Sender::Acr, "acr-push.json"),
        (Sender::AzureDevops, "azure-devops-build.json"),
        (Sender::AzureDevops, "azure-devops-deployment.json"),
        (Sender::Dockerhub, "dockerhub-push.json"),
        (Sender::Github, "github-package.json"),
        (Sender::Distribution, "distribution-push.json"),
        (Sender::Harbor, "harbor-push.json"),
        (Sender::Harbor, "harbor-push-cloudevents.json"),
        (Sender::Quay, "quay-push.json"),
    ];

    /// Adds an unknown field to every object, as senders do when their formats grow.
    fn with_unknown_fields(value: &mut serde_json::Value) {
        match value {
            serde_json::Value::Object(map) => {
                map.values_mut().for_each(with_unknown_fields);
                map.insert("x_ferry_unknown".into(), serde_json::json!({ "added": [1, null, "later"] }));
            }
            serde_json::Value::Array(items) => items.iter_mut().for_each(with_unknown_fields),
            _ => {}
        }
    }

    #[test]
    fn every_fixture_parses_the_same_with_unknown_fields_added_everywhere() {
        for (sender, name) in FIXTURES {
            let original = fixtures::load(name);
            let expected = parse(*sender, &original, Some("delivery")).unwrap_or_else(|e| panic!("{name}: {e}"));
            assert!(!matches!(expected, Parsed::Ignored(_)), "{name} should promote or report something");
            let mut grown: serde_json::Value = serde_json::from_slice(&original).unwrap();
            with_unknown_fields(&mut grown);
            let grown = serde_json::to_vec(&grown).unwrap();
            assert_eq!(parse(*sender, &grown, Some("delivery")).unwrap(), expected, "{name}");
        }
    }

    #[test]
    fn every_fixture_round_trips_through_serde() {
        for (sender, name) in FIXTURES {
            let original = fixtures::load(name);
            let value: serde_json::Value = serde_json::from_slice(&original).unwrap();
            let reserialized = serde_json::to_vec_pretty(&value).unwrap();
            assert_eq!(
                parse(*sender, &original, None).unwrap(),
                parse(*sender, &reserialized, None).unwrap(),
                "{name}"
            );
        }
    }

    #[test]
    fn promotion_requests_round_trip_as_queued() {
        let Parsed::Requests(requests) = parse(Sender::Acr, &fixtures::load("acr-push.json"), None).unwrap() else {
            panic!()
        };
        let json = serde_json::to_string(&requests[0]).unwrap();
        assert_eq!(serde_json::from_str::<PromotionRequest>(&json).unwrap(), requests[0]);
    }

    #[test]
    fn a_bare_json_null_or_scalar_is_refused_by_every_sender() {
        for (sender, _) in FIXTURES {
            for body in [&b"null"[..], b"42", b"\"text\"", b"[]"] {
                assert!(parse(*sender, body, None).is_err(), "{sender:?} accepted {}", String::from_utf8_lossy(body));
            }
        }
    }
}

#[cfg(test)]
pub(crate) mod fixtures {
    /// Loads a fixture beside the parser: `shared/src/intake/fixtures/NAME`.
    pub fn load(name: &str) -> Vec<u8> {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src/intake/fixtures").join(name);
        std::fs::read(&path).unwrap_or_else(|e| panic!("fixture {}: {e}", path.display()))
    }
}

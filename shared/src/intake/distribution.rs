//! CNCF distribution (`registry:2`) notifications: only tagged manifest pushes promote.

use serde::Deserialize;

use super::{Parsed, PayloadError, PromotionRequest, Sender, digest_field, non_empty, repository_field, tag_field};
use crate::registry::manifest;

#[derive(Deserialize)]
struct Envelope {
    events: Option<Vec<Event>>,
}

#[derive(Deserialize)]
struct Event {
    id: Option<String>,
    action: Option<String>,
    target: Option<Target>,
    request: Option<Request>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Target {
    media_type: Option<String>,
    repository: Option<String>,
    tag: Option<String>,
    digest: Option<String>,
}

#[derive(Deserialize)]
struct Request {
    host: Option<String>,
}

fn is_manifest(media_type: &str) -> bool {
    matches!(
        media_type,
        manifest::OCI_MANIFEST | manifest::OCI_INDEX | manifest::DOCKER_MANIFEST | manifest::DOCKER_LIST
    )
}

pub fn parse(body: &[u8]) -> Result<Parsed, PayloadError> {
    let envelope: Envelope = serde_json::from_slice(body).map_err(|e| PayloadError::json(Sender::Distribution, e))?;
    let events = envelope.events.ok_or_else(|| PayloadError::invalid(Sender::Distribution, "missing `events`"))?;
    let mut requests = Vec::new();
    for event in events {
        let Some(target) = event.target else { continue };
        let media_type = non_empty(target.media_type).unwrap_or_default();
        // Pulls, blob events and tagless (child) manifest pushes promote nothing.
        if non_empty(event.action).as_deref() != Some("push") || !is_manifest(&media_type) {
            continue;
        }
        let Some(tag) = tag_field(Sender::Distribution, target.tag)? else {
            continue;
        };
        requests.push(PromotionRequest {
            sender: Sender::Distribution,
            registry: event.request.and_then(|r| non_empty(r.host)),
            repository: repository_field(Sender::Distribution, target.repository)?,
            tag: Some(tag),
            digest: digest_field(Sender::Distribution, target.digest)?,
            build: None,
            delivery_id: non_empty(event.id),
        });
    }
    if requests.is_empty() {
        return Ok(Parsed::Ignored("no tagged manifest push among the events".into()));
    }
    Ok(Parsed::Requests(requests))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::intake::fixtures::load;

    #[test]
    fn tagged_manifest_push_promotes() {
        let Parsed::Requests(r) = parse(&load("distribution-push.json")).unwrap() else { panic!() };
        assert_eq!(r.len(), 1);
        assert_eq!(r[0].repository, "shop/api");
        assert_eq!(r[0].registry.as_deref(), Some("registry.dev.example.com"));
        assert_eq!(r[0].tag.as_deref(), Some("1.8.3"));
    }

    #[test]
    fn pulls_blobs_and_tagless_manifests_are_ignored() {
        let body = br#"{"events":[
            {"action":"pull","target":{"mediaType":"application/vnd.oci.image.manifest.v1+json","repository":"a","tag":"v1"}},
            {"action":"push","target":{"mediaType":"application/octet-stream","repository":"a","digest":"sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"}},
            {"action":"push","target":{"mediaType":"application/vnd.oci.image.manifest.v1+json","repository":"a","tag":""}},
            {"action":"push"}
        ]}"#;
        assert!(matches!(parse(body).unwrap(), Parsed::Ignored(_)));
        assert!(parse(br#"{"events":null}"#).is_err());
        assert!(parse(br#"{"events":"x"}"#).is_err());
    }
}

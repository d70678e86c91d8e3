//! Harbor `PUSH_ARTIFACT` webhooks, in the default and the CloudEvents format.

use serde::Deserialize;

use super::{Parsed, PayloadError, PromotionRequest, Sender, digest_field, non_empty, repository_field, tag_field};

#[derive(Deserialize)]
struct Event {
    // Default format.
    #[serde(rename = "type")]
    kind: Option<String>,
    event_data: Option<Data>,
    occur_at: Option<serde_json::Value>,
    // CloudEvents format.
    specversion: Option<String>,
    id: Option<String>,
    data: Option<Data>,
}

#[derive(Deserialize)]
struct Data {
    resources: Option<Vec<Resource>>,
    repository: Option<Repository>,
}

#[derive(Deserialize)]
struct Resource {
    digest: Option<String>,
    tag: Option<String>,
    resource_url: Option<String>,
}

#[derive(Deserialize)]
struct Repository {
    repo_full_name: Option<String>,
}

pub fn parse(body: &[u8]) -> Result<Parsed, PayloadError> {
    let event: Event = serde_json::from_slice(body).map_err(|e| PayloadError::json(Sender::Harbor, e))?;
    let kind = non_empty(event.kind).unwrap_or_default();
    let cloud = event.specversion.is_some();
    let pushed = if cloud { kind == "harbor.artifact.pushed" } else { kind == "PUSH_ARTIFACT" };
    if !pushed {
        return Ok(Parsed::Ignored(format!("Harbor event `{kind}` does not promote anything")));
    }
    let data = if cloud { event.data } else { event.event_data };
    let data = data.ok_or_else(|| PayloadError::invalid(Sender::Harbor, "push event without data"))?;
    let repository = repository_field(Sender::Harbor, data.repository.and_then(|r| r.repo_full_name))?;
    let delivery = non_empty(event.id).or_else(|| event.occur_at.map(|v| v.to_string()));
    let mut requests = Vec::new();
    for resource in data.resources.unwrap_or_default() {
        // Harbor puts the digest in `tag` when an artifact was pushed by digest.
        let tag = non_empty(resource.tag).filter(|t| !t.starts_with("sha256:"));
        // `resource_url` is `host/project/repo:tag` or `host/project/repo@digest`.
        let registry = non_empty(resource.resource_url)
            .and_then(|url| url.split_once('/').map(|(host, _)| host.to_string()))
            .filter(|host| host.contains('.') || host.contains(':') || host == "localhost");
        requests.push(PromotionRequest {
            sender: Sender::Harbor,
            registry,
            repository: repository.clone(),
            tag: tag_field(Sender::Harbor, tag)?,
            digest: digest_field(Sender::Harbor, resource.digest)?,
            build: None,
            delivery_id: delivery.clone(),
        });
    }
    if requests.is_empty() {
        return Ok(Parsed::Ignored("Harbor push without resources".into()));
    }
    Ok(Parsed::Requests(requests))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::intake::fixtures::load;

    #[test]
    fn default_and_cloudevents_formats_agree() {
        let Parsed::Requests(a) = parse(&load("harbor-push.json")).unwrap() else { panic!() };
        let Parsed::Requests(b) = parse(&load("harbor-push-cloudevents.json")).unwrap() else { panic!() };
        for r in [&a[0], &b[0]] {
            assert_eq!(r.repository, "shop/api");
            assert_eq!(r.registry.as_deref(), Some("harbor.dev.example.com"));
            assert_eq!(r.tag.as_deref(), Some("1.8.3"));
            assert!(r.digest.is_some());
        }
        assert_eq!(b[0].delivery_id.as_deref(), Some("69212242-3bd6-4887-8bd9-42ad5ea0e758"));
    }

    #[test]
    fn other_events_are_ignored() {
        assert!(matches!(parse(br#"{"type":"PULL_ARTIFACT","event_data":{}}"#).unwrap(), Parsed::Ignored(_)));
        assert!(matches!(
            parse(br#"{"specversion":"1.0","type":"harbor.scan.completed"}"#).unwrap(),
            Parsed::Ignored(_)
        ));
        assert!(parse(br#"{"type":"PUSH_ARTIFACT"}"#).is_err());
    }
}

//! Quay `repo_push` notifications: tags only; the worker resolves each to a digest.

use serde::Deserialize;

use super::{Parsed, PayloadError, PromotionRequest, Sender, non_empty, repository_field, tag_field};

#[derive(Deserialize)]
struct Event {
    repository: Option<String>,
    docker_url: Option<String>,
    updated_tags: Option<serde_json::Value>,
}

pub fn parse(body: &[u8]) -> Result<Parsed, PayloadError> {
    let event: Event = serde_json::from_slice(body).map_err(|e| PayloadError::json(Sender::Quay, e))?;
    // `docker_url` is `host/namespace/name`; the host is the registry to pull from.
    let registry = non_empty(event.docker_url)
        .and_then(|url| url.split_once('/').map(|(host, _)| host.to_string()))
        .or_else(|| Some("quay.io".into()));
    let repository = repository_field(Sender::Quay, event.repository)?;
    // Current Quay sends a list of tags; an older form mapped tag → image id.
    let tags: Vec<String> = match event.updated_tags {
        Some(serde_json::Value::Array(items)) => {
            items.into_iter().filter_map(|v| v.as_str().map(str::to_string)).collect()
        }
        Some(serde_json::Value::Object(map)) => map.keys().cloned().collect(),
        None | Some(serde_json::Value::Null) => Vec::new(),
        Some(_) => {
            return Err(PayloadError::invalid(Sender::Quay, "`updated_tags` must be a list of tags"));
        }
    };
    let mut requests = Vec::new();
    for tag in tags {
        let Some(tag) = tag_field(Sender::Quay, Some(tag))? else {
            continue;
        };
        requests.push(PromotionRequest {
            sender: Sender::Quay,
            registry: registry.clone(),
            repository: repository.clone(),
            tag: Some(tag),
            digest: None,
            build: None,
            delivery_id: None,
        });
    }
    if requests.is_empty() {
        return Ok(Parsed::Ignored("Quay push without updated tags".into()));
    }
    Ok(Parsed::Requests(requests))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::intake::fixtures::load;

    #[test]
    fn every_updated_tag_is_a_request() {
        let Parsed::Requests(r) = parse(&load("quay-push.json")).unwrap() else { panic!() };
        assert_eq!(r.len(), 2);
        assert_eq!(r[0].registry.as_deref(), Some("quay.io"));
        assert_eq!(r[0].repository, "contoso/api");
        assert_eq!(r[1].tag.as_deref(), Some("latest"));
    }

    #[test]
    fn legacy_tag_map_and_empty_lists() {
        let Parsed::Requests(r) = parse(br#"{"repository":"a/b","updated_tags":{"v1":"abc"}}"#).unwrap() else {
            panic!()
        };
        assert_eq!(r[0].tag.as_deref(), Some("v1"));
        assert!(matches!(parse(br#"{"repository":"a/b","updated_tags":[""]}"#).unwrap(), Parsed::Ignored(_)));
        assert!(parse(br#"{"repository":"a/b","updated_tags":7}"#).is_err());
    }
}

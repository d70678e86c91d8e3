//! Docker Hub webhooks: a tag was pushed. No digest in the payload — the worker resolves it.

use serde::Deserialize;

use super::{Parsed, PayloadError, PromotionRequest, Sender, non_empty, repository_field, tag_field};

#[derive(Deserialize)]
struct Event {
    callback_url: Option<String>,
    push_data: Option<PushData>,
    repository: Option<Repository>,
}

#[derive(Deserialize)]
struct PushData {
    tag: Option<String>,
    pushed_at: Option<serde_json::Value>,
}

#[derive(Deserialize)]
struct Repository {
    repo_name: Option<String>,
    namespace: Option<String>,
    name: Option<String>,
}

pub fn parse(body: &[u8]) -> Result<Parsed, PayloadError> {
    let event: Event = serde_json::from_slice(body).map_err(|e| PayloadError::json(Sender::Dockerhub, e))?;
    let push = event.push_data.ok_or_else(|| PayloadError::invalid(Sender::Dockerhub, "missing `push_data`"))?;
    let repo = event.repository.ok_or_else(|| PayloadError::invalid(Sender::Dockerhub, "missing `repository`"))?;
    let name = non_empty(repo.repo_name).or_else(|| match (non_empty(repo.namespace), non_empty(repo.name)) {
        (Some(ns), Some(n)) => Some(format!("{ns}/{n}")),
        _ => None,
    });
    let Some(tag) = tag_field(Sender::Dockerhub, push.tag)? else {
        return Ok(Parsed::Ignored("Docker Hub push without a tag".into()));
    };
    // Docker Hub has no delivery id. Its callback URL is made for one push (and a redelivery
    // carries the same one); the push time stands in when there is none.
    let pushed_at = push.pushed_at.map(|v| v.to_string()).filter(|v| v != "null");
    let push_identity = non_empty(event.callback_url).or(pushed_at);
    Ok(Parsed::Requests(vec![PromotionRequest {
        sender: Sender::Dockerhub,
        registry: Some(crate::registry::reference::DOCKER_HUB.into()),
        repository: repository_field(Sender::Dockerhub, name)?,
        tag: Some(tag),
        digest: None,
        build: None,
        delivery_id: push_identity,
    }]))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::intake::fixtures::load;

    #[test]
    fn push_yields_tag_without_digest() {
        let Parsed::Requests(r) = parse(&load("dockerhub-push.json")).unwrap() else { panic!() };
        assert_eq!(r[0].repository, "contoso/api");
        assert_eq!(r[0].registry.as_deref(), Some("docker.io"));
        assert_eq!(r[0].tag.as_deref(), Some("1.8.3"));
        assert_eq!(r[0].digest, None);
        assert_eq!(
            r[0].delivery_id.as_deref(),
            Some("https://registry.hub.docker.com/u/contoso/api/hook/3c0ffee1d2e4a5b6c7d8e9f0a1b2c3d4/")
        );
        let no_callback = br#"{"push_data":{"tag":"v1","pushed_at":1741083330},"repository":{"repo_name":"a/b"}}"#;
        let Parsed::Requests(r) = parse(no_callback).unwrap() else { panic!() };
        assert_eq!(r[0].delivery_id.as_deref(), Some("1741083330"), "the push time tells pushes apart");
    }

    #[test]
    fn namespace_and_name_stand_in_for_repo_name() {
        let body = br#"{"push_data":{"tag":"v1"},"repository":{"namespace":"acme","name":"web","repo_name":""}}"#;
        let Parsed::Requests(r) = parse(body).unwrap() else { panic!() };
        assert_eq!(r[0].repository, "acme/web");
    }

    #[test]
    fn empty_tag_is_ignored_and_garbage_refused() {
        assert!(matches!(
            parse(br#"{"push_data":{"tag":""},"repository":{"repo_name":"a/b"}}"#).unwrap(),
            Parsed::Ignored(_)
        ));
        assert!(parse(br#"{"repository":{"repo_name":"a/b"}}"#).is_err());
        assert!(parse(b"").is_err());
    }
}

//! Azure Container Registry webhooks: `push` promotes; `delete`, `chart_*`, `quarantine` and
//! `ping` are acknowledged and ignored.

use serde::Deserialize;

use super::{Parsed, PayloadError, PromotionRequest, Sender, digest_field, non_empty, repository_field, tag_field};

#[derive(Deserialize)]
struct Event {
    id: Option<String>,
    action: Option<String>,
    target: Option<Target>,
    request: Option<Request>,
}

#[derive(Deserialize)]
struct Target {
    repository: Option<String>,
    tag: Option<String>,
    digest: Option<String>,
}

#[derive(Deserialize)]
struct Request {
    host: Option<String>,
}

pub fn parse(body: &[u8]) -> Result<Parsed, PayloadError> {
    let event: Event = serde_json::from_slice(body).map_err(|e| PayloadError::json(Sender::Acr, e))?;
    let action = non_empty(event.action).ok_or_else(|| PayloadError::invalid(Sender::Acr, "missing `action`"))?;
    if action != "push" {
        return Ok(Parsed::Ignored(format!("ACR action `{action}` does not promote anything")));
    }
    let target = event.target.ok_or_else(|| PayloadError::invalid(Sender::Acr, "push without `target`"))?;
    let request = PromotionRequest {
        sender: Sender::Acr,
        registry: event.request.and_then(|r| non_empty(r.host)),
        repository: repository_field(Sender::Acr, target.repository)?,
        tag: tag_field(Sender::Acr, target.tag)?,
        digest: digest_field(Sender::Acr, target.digest)?,
        build: None,
        delivery_id: non_empty(event.id),
    };
    if request.tag.is_none() && request.digest.is_none() {
        return Err(PayloadError::invalid(Sender::Acr, "push without tag or digest"));
    }
    Ok(Parsed::Requests(vec![request]))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::intake::fixtures::load;

    #[test]
    fn push_yields_repository_tag_digest_and_host() {
        let Parsed::Requests(requests) = parse(&load("acr-push.json")).unwrap() else { panic!() };
        let r = &requests[0];
        assert_eq!(r.registry.as_deref(), Some("contosodev.azurecr.io"));
        assert_eq!(r.repository, "shop/api");
        assert_eq!(r.tag.as_deref(), Some("1.8.3"));
        assert_eq!(
            r.digest.as_ref().unwrap().hex(),
            "05b3abf2579a5eb66403cd78be557fd860633a1fe2103c7642030defe32c657f"
        );
        assert_eq!(r.delivery_id.as_deref(), Some("5d9e074a-bcee-47fc-9ce9-99a4679da7ae"));
    }

    #[test]
    fn other_actions_are_ignored_with_a_reason() {
        for fixture in ["acr-delete.json", "acr-ping.json"] {
            assert!(matches!(parse(&load(fixture)).unwrap(), Parsed::Ignored(_)), "{fixture}");
        }
        assert!(matches!(parse(br#"{"action":"chart_push","target":{}}"#).unwrap(), Parsed::Ignored(_)));
    }

    #[test]
    fn malformed_pushes_are_refused() {
        assert!(parse(b"[1,2]").is_err());
        assert!(parse(br#"{"action":"push"}"#).is_err());
        assert!(parse(br#"{"action":"push","target":{"repository":"a","tag":""}}"#).is_err());
        assert!(parse(br#"{"action":"push","target":{"repository":"../etc","tag":"x"}}"#).is_err());
        assert!(parse(br#"{"action":"push","target":{"repository":"a","digest":"sha256:nope"}}"#).is_err());
    }

    #[test]
    fn unknown_fields_and_nulls_are_tolerated() {
        let body = br#"{"id":null,"action":"push","extra":{"x":1},"target":{"repository":"a/b","tag":"v1","digest":null,"new":true},"request":null}"#;
        let Parsed::Requests(r) = parse(body).unwrap() else { panic!() };
        assert_eq!(r[0].tag.as_deref(), Some("v1"));
        assert!(r[0].digest.is_none() && r[0].registry.is_none());
    }
}

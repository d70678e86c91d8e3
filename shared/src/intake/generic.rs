//! Ferry's own sender format for any CI: `{repository, tag?, digest?, build?}`, signed with
//! HMAC-SHA256 over `"{timestamp}.{body}"` (see `verify::generic_signature`).

use serde::Deserialize;

use super::{Build, Parsed, PayloadError, PromotionRequest, Sender, digest_field, non_empty, tag_field};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Event {
    repository: Option<String>,
    tag: Option<String>,
    digest: Option<String>,
    build: Option<BuildField>,
    id: Option<String>,
}

/// `build` is a build number string, or `{id, number}`.
#[derive(Deserialize)]
#[serde(untagged)]
enum BuildField {
    Text(String),
    Number(u64),
    Full { id: Option<serde_json::Value>, number: Option<serde_json::Value> },
}

fn scalar(value: Option<serde_json::Value>) -> Option<String> {
    match value? {
        serde_json::Value::String(s) => non_empty(Some(s)),
        serde_json::Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

pub fn parse(body: &[u8]) -> Result<Parsed, PayloadError> {
    let event: Event = serde_json::from_slice(body).map_err(|e| PayloadError::json(Sender::Generic, e))?;
    // `repository` is a full name: `host[:port]/path`.
    let full =
        non_empty(event.repository).ok_or_else(|| PayloadError::invalid(Sender::Generic, "missing `repository`"))?;
    let reference: crate::registry::RegistryRef =
        full.parse().map_err(|e| PayloadError::invalid(Sender::Generic, format!("`repository`: {e}")))?;
    if reference.image.tag.is_some() || reference.image.digest.is_some() {
        return Err(PayloadError::invalid(
            Sender::Generic,
            "`repository` names a repository only; put the tag in `tag` and the digest in `digest`",
        ));
    }
    let tag = tag_field(Sender::Generic, event.tag)?;
    let digest = digest_field(Sender::Generic, event.digest)?;
    if tag.is_none() && digest.is_none() {
        return Err(PayloadError::invalid(Sender::Generic, "give a `tag`, a `digest`, or both"));
    }
    let build = event.build.map(|b| match b {
        BuildField::Text(number) => Build { id: None, number: non_empty(Some(number)) },
        BuildField::Number(n) => Build { id: None, number: Some(n.to_string()) },
        BuildField::Full { id, number } => Build { id: scalar(id), number: scalar(number) },
    });
    Ok(Parsed::Requests(vec![PromotionRequest {
        sender: Sender::Generic,
        registry: Some(reference.registry),
        repository: reference.repository,
        tag,
        digest,
        build: build.filter(|b| b.id.is_some() || b.number.is_some()),
        delivery_id: non_empty(event.id),
    }]))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::intake::fixtures::load;

    #[test]
    fn full_request_parses() {
        let Parsed::Requests(r) = parse(&load("generic.json")).unwrap() else { panic!() };
        assert_eq!(r[0].registry.as_deref(), Some("127.0.0.1:5001"));
        assert_eq!(r[0].repository, "shop/api");
        assert_eq!(r[0].build, Some(Build { id: Some("4711".into()), number: Some("20250304.3".into()) }));
    }

    #[test]
    fn build_may_be_a_plain_number() {
        let Parsed::Requests(r) = parse(br#"{"repository":"127.0.0.1:5001/a","tag":"v1","build":1234}"#).unwrap()
        else {
            panic!()
        };
        assert_eq!(r[0].build.as_ref().unwrap().number.as_deref(), Some("1234"));
    }

    #[test]
    fn hostile_or_incomplete_requests_are_refused() {
        for body in [
            &br#"{"repository":"127.0.0.1:5001/a"}"#[..],
            br#"{"repository":"127.0.0.1:5001/a:v1","tag":"v1"}"#,
            br#"{"repository":"127.0.0.1:5001/../x","tag":"v1"}"#,
            br#"{"repository":"127.0.0.1:5001/a","tag":"v1; rm -rf /"}"#,
            br#"{"repository":"127.0.0.1:5001/a","tag":"v1","surprise":true}"#,
            br#"{"repository":null,"tag":"v1"}"#,
            b"{",
        ] {
            assert!(parse(body).is_err(), "{}", String::from_utf8_lossy(body));
        }
    }
}

//! GitHub `package` / `registry_package` events for container images on GHCR.

use serde::Deserialize;

use super::{Parsed, PayloadError, PromotionRequest, Sender, digest_field, non_empty, repository_field, tag_field};

#[derive(Deserialize)]
struct Event {
    action: Option<String>,
    package: Option<Package>,
    registry_package: Option<Package>,
}

#[derive(Deserialize)]
struct Package {
    name: Option<String>,
    namespace: Option<String>,
    package_type: Option<String>,
    owner: Option<Owner>,
    package_version: Option<Version>,
}

#[derive(Deserialize)]
struct Owner {
    login: Option<String>,
}

#[derive(Deserialize)]
struct Version {
    name: Option<String>,
    container_metadata: Option<ContainerMetadata>,
}

#[derive(Deserialize)]
struct ContainerMetadata {
    tag: Option<TagInfo>,
}

#[derive(Deserialize)]
struct TagInfo {
    name: Option<String>,
    digest: Option<String>,
}

pub fn parse(body: &[u8], delivery_id: Option<&str>) -> Result<Parsed, PayloadError> {
    let event: Event = serde_json::from_slice(body).map_err(|e| PayloadError::json(Sender::Github, e))?;
    let Some(package) = event.package.or(event.registry_package) else {
        return Ok(Parsed::Ignored("not a package event".into()));
    };
    let action = non_empty(event.action).unwrap_or_default();
    if action != "published" && action != "updated" {
        return Ok(Parsed::Ignored(format!("package action `{action}` does not promote anything")));
    }
    let kind = non_empty(package.package_type).unwrap_or_default();
    if !kind.eq_ignore_ascii_case("container") && !kind.eq_ignore_ascii_case("docker") {
        return Ok(Parsed::Ignored(format!("package type `{kind}` is not a container image")));
    }
    let namespace = non_empty(package.namespace).or_else(|| package.owner.and_then(|o| non_empty(o.login)));
    let name = non_empty(package.name);
    let (Some(namespace), Some(name)) = (namespace, name) else {
        return Err(PayloadError::invalid(Sender::Github, "package without namespace or name"));
    };
    let version =
        package.package_version.ok_or_else(|| PayloadError::invalid(Sender::Github, "missing `package_version`"))?;
    let tag_info = version.container_metadata.and_then(|m| m.tag);
    let (tag, tag_digest) = match tag_info {
        Some(t) => (t.name, t.digest),
        None => (None, None),
    };
    let digest = digest_field(
        Sender::Github,
        non_empty(tag_digest).or_else(|| non_empty(version.name).filter(|n| n.starts_with("sha256:"))),
    )?;
    let tag = tag_field(Sender::Github, tag)?;
    if tag.is_none() && digest.is_none() {
        return Ok(Parsed::Ignored("package version has neither tag nor digest".into()));
    }
    // GHCR lowercases names; so must Ferry, to match the repository it will pull from.
    let repository = repository_field(Sender::Github, Some(format!("{namespace}/{name}").to_lowercase()))?;
    Ok(Parsed::Requests(vec![PromotionRequest {
        sender: Sender::Github,
        registry: Some("ghcr.io".into()),
        repository,
        tag,
        digest,
        build: None,
        delivery_id: delivery_id.map(str::to_string),
    }]))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::intake::fixtures::load;

    #[test]
    fn published_container_yields_ghcr_image() {
        let Parsed::Requests(r) = parse(&load("github-package.json"), Some("d-1")).unwrap() else { panic!() };
        assert_eq!(r[0].registry.as_deref(), Some("ghcr.io"));
        assert_eq!(r[0].repository, "contoso/api");
        assert_eq!(r[0].tag.as_deref(), Some("1.8.3"));
        assert!(r[0].digest.is_some());
        assert_eq!(r[0].delivery_id.as_deref(), Some("d-1"));
    }

    #[test]
    fn registry_package_spelling_is_accepted() {
        let body = String::from_utf8(load("github-package.json")).unwrap().replacen(
            "\"package\":",
            "\"registry_package\":",
            1,
        );
        assert!(matches!(parse(body.as_bytes(), None).unwrap(), Parsed::Requests(_)));
    }

    #[test]
    fn npm_packages_and_untagged_versions_are_ignored() {
        let npm = br#"{"action":"published","package":{"name":"x","namespace":"o","package_type":"npm","package_version":{}}}"#;
        assert!(matches!(parse(npm, None).unwrap(), Parsed::Ignored(_)));
        let untagged = br#"{"action":"published","package":{"name":"x","namespace":"o","package_type":"CONTAINER","package_version":{"name":"","container_metadata":{"tag":{"name":"","digest":""}}}}}"#;
        assert!(matches!(parse(untagged, None).unwrap(), Parsed::Ignored(_)));
        assert!(matches!(parse(br#"{"zen":"ping"}"#, None).unwrap(), Parsed::Ignored(_)));
    }
}

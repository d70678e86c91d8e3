//! What each fuzz target checks, beside "never panics": the properties a parser's `Ok` promises.
//! The targets in `fuzz_targets/` are one line each; the checks live here so they read in one
//! place and `shared/tests/parser_robustness.rs` can mirror them.

use ferry_core::config::Config;
use ferry_core::intake::{self, Parsed, Sender};
use ferry_core::registry::auth::Challenge;
use ferry_core::registry::manifest::{self, Manifest};
use ferry_core::registry::{Digest, Location, RegistryRef, Tag};

/// A webhook body from `sender`: whatever it yields, a promotion names a bare repository (no
/// `:tag`, no `@digest`) and, if it names a tag, a valid one.
pub fn intake(sender: Sender, data: &[u8]) {
    let Ok(parsed) = intake::parse(sender, data, Some("fuzz-delivery")) else { return };
    match parsed {
        Parsed::Requests(requests) => {
            assert!(!requests.is_empty(), "Requests(vec![]) instead of Ignored");
            for request in &requests {
                assert_eq!(request.sender, sender, "{request:?}");
                assert!(!request.repository.is_empty(), "empty repository: {request:?}");
                if let Some(tag) = &request.tag {
                    assert!(tag.parse::<Tag>().is_ok(), "invalid tag: {request:?}");
                }
                assert!(is_bare_repository(&request.repository), "not a bare repository: {request:?}");
            }
        }
        Parsed::Build(build) => assert!(!build.build_id.is_empty(), "{build:?}"),
        Parsed::Deployment(deployment) => {
            assert!(!deployment.environment.is_empty(), "{deployment:?}");
            // Only documented statuses get through, spelled as documented.
            let known = intake::azure_devops::DEPLOYMENT_STATUSES;
            assert!(known.contains(&deployment.status.as_str()), "{deployment:?}");
        }
        Parsed::Ignored(_) => {}
    }
}

/// Whether `repository` is a repository path and nothing else: no registry, no tag, no digest.
fn is_bare_repository(repository: &str) -> bool {
    match format!("registry.invalid/{repository}").parse::<RegistryRef>() {
        Ok(r) => r.repository == repository && r.image.tag.is_none() && r.image.digest.is_none(),
        Err(_) => false,
    }
}

/// A configuration file. Only text reaches `Config::parse` (`Config::load` reads a `String`);
/// an error must render (which walks the text to its line and column), and a file that loads must
/// answer what the worker asks of it without a panic.
pub fn config(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let config = match Config::parse(text, "fuzz.toml") {
        Ok(config) => config,
        Err(e) => {
            let _ = e.to_string();
            return;
        }
    };
    for pipeline in &config.pipelines {
        assert!(config.pipeline(pipeline.name.get_ref()).is_some());
        for (i, stage) in pipeline.stages.iter().enumerate() {
            let _ = (pipeline.stage_source(i), stage.target_repo(), stage.soak());
        }
    }
}

/// An image location as typed on the command line; what parses prints back as itself.
pub fn location(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let Ok(location) = text.parse::<Location>() else { return };
    let printed = location.to_string();
    assert_eq!(printed.parse::<Location>().as_ref(), Ok(&location), "`{text}` printed as `{printed}`");
}

/// A `WWW-Authenticate` header value.
pub fn challenge(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let _ = Challenge::parse(text);
}

/// A manifest as a registry serves it. Input: the body alone when it starts with `{`, else a
/// `Content-Type` line, `\n`, then the body. What parses has a media type Ferry copies.
pub fn manifest(data: &[u8]) {
    let (content_type, body) = match data.first() {
        Some(b'{') | None => (None, data),
        Some(_) => match data.iter().position(|&b| b == b'\n') {
            Some(i) => (std::str::from_utf8(&data[..i]).ok(), &data[i + 1..]),
            None => (None, data),
        },
    };
    let digest = Digest::sha256_of(body);
    let Ok(m) = Manifest::parse(bytes::Bytes::copy_from_slice(body), content_type, digest.clone()) else { return };
    assert!(
        matches!(
            m.media_type.as_str(),
            manifest::OCI_INDEX
                | manifest::OCI_MANIFEST
                | manifest::DOCKER_LIST
                | manifest::DOCKER_MANIFEST
                | manifest::OCI_ARTIFACT
        ),
        "media type `{}`",
        m.media_type
    );
    assert_eq!(m.digest, digest);
    assert_eq!(m.descriptor().size, body.len() as u64);
}

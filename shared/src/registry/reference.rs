//! Image references, parsed once at the edge so the rest of Ferry only ever holds valid ones.

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

/// Docker Hub's canonical name in references, and the host its API actually lives on.
pub const DOCKER_HUB: &str = "docker.io";
pub const DOCKER_HUB_API: &str = "registry-1.docker.io";

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ReferenceError {
    #[error("invalid digest `{0}`: expected `sha256:` followed by 64 lowercase hex characters")]
    Digest(String),
    #[error("invalid image reference `{input}`: {reason}")]
    Reference { input: String, reason: &'static str },
}

/// A content digest such as `sha256:0123…`. Only sha256 and sha512 with the right length exist.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Digest(String);

impl Digest {
    /// The sha256 digest of `bytes`.
    pub fn sha256_of(bytes: &[u8]) -> Self {
        Digest(format!("sha256:{}", hex::encode(Sha256::digest(bytes))))
    }

    pub fn from_sha256_hex(hex: &str) -> Result<Self, ReferenceError> {
        format!("sha256:{hex}").parse()
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    pub fn algorithm(&self) -> &str {
        self.0.split_once(':').map(|(a, _)| a).unwrap_or_default()
    }

    pub fn hex(&self) -> &str {
        self.0.split_once(':').map(|(_, h)| h).unwrap_or_default()
    }

    /// Whether `bytes` hash to this digest.
    pub fn matches(&self, bytes: &[u8]) -> bool {
        match self.algorithm() {
            "sha256" => hex::encode(Sha256::digest(bytes)) == self.hex(),
            "sha512" => hex::encode(sha2::Sha512::digest(bytes)) == self.hex(),
            _ => false,
        }
    }

    /// The OCI 1.1 referrers tag-schema fallback tag: `sha256-<hex>`.
    pub fn referrers_tag(&self) -> Tag {
        Tag(format!("{}-{}", self.algorithm(), self.hex()))
    }
}

impl FromStr for Digest {
    type Err = ReferenceError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || ReferenceError::Digest(s.to_string());
        let (alg, hex) = s.split_once(':').ok_or_else(bad)?;
        let len = match alg {
            "sha256" => 64,
            "sha512" => 128,
            _ => return Err(bad()),
        };
        if hex.len() != len || !hex.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
            return Err(bad());
        }
        Ok(Digest(s.to_string()))
    }
}

impl TryFrom<String> for Digest {
    type Error = ReferenceError;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        s.parse()
    }
}

impl From<Digest> for String {
    fn from(d: Digest) -> String {
        d.0
    }
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Digest({})", self.0)
    }
}

/// A tag: `[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}`.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Tag(String);

impl Tag {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl FromStr for Tag {
    type Err = ReferenceError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let valid = !s.is_empty()
            && s.len() <= 128
            && s.bytes()
                .enumerate()
                .all(|(i, b)| b.is_ascii_alphanumeric() || b == b'_' || (i > 0 && (b == b'.' || b == b'-')));
        if valid {
            Ok(Tag(s.to_string()))
        } else {
            Err(ReferenceError::Reference {
                input: s.to_string(),
                reason: "a tag is 1-128 of [A-Za-z0-9_.-] and cannot start with `.` or `-`",
            })
        }
    }
}

impl fmt::Display for Tag {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// What a manifest is addressed by: a tag, a digest, or both (the digest wins, the tag is kept
/// so a copy can tag the target).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ImageRef {
    pub tag: Option<Tag>,
    pub digest: Option<Digest>,
}

impl ImageRef {
    /// The string a registry API takes in `/manifests/<reference>`: the digest when there is
    /// one, else the tag, else `latest` as docker does.
    pub fn api_reference(&self) -> String {
        match (&self.digest, &self.tag) {
            (Some(d), _) => d.to_string(),
            (None, Some(t)) => t.to_string(),
            (None, None) => "latest".to_string(),
        }
    }
}

/// `host[:port]/repo[:tag][@digest]`: an image in a registry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RegistryRef {
    /// The registry as written (`docker.io` for Docker Hub).
    pub registry: String,
    pub repository: String,
    pub image: ImageRef,
}

impl RegistryRef {
    /// The host the registry API is served from.
    pub fn api_host(&self) -> &str {
        if self.registry == DOCKER_HUB { DOCKER_HUB_API } else { &self.registry }
    }

    /// The repository, without tag or digest: `host/repo`.
    pub fn repository_name(&self) -> String {
        format!("{}/{}", self.registry, self.repository)
    }
}

impl fmt::Display for RegistryRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.registry, self.repository)?;
        if let Some(t) = &self.image.tag {
            write!(f, ":{t}")?;
        }
        if let Some(d) = &self.image.digest {
            write!(f, "@{d}")?;
        }
        Ok(())
    }
}

fn is_valid_repository(repo: &str) -> bool {
    // distribution's grammar: path components of [a-z0-9]+ joined by `.`, `_`, `__` or `-`+.
    !repo.is_empty()
        && repo.len() <= 255
        && repo.split('/').all(|component| {
            let bytes = component.as_bytes();
            !bytes.is_empty()
                && bytes.first().is_some_and(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
                && bytes.last().is_some_and(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
                && bytes.iter().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-".contains(b))
                && !component.contains("..")
                && !component.contains("___")
        })
}

impl FromStr for RegistryRef {
    type Err = ReferenceError;
    fn from_str(input: &str) -> Result<Self, Self::Err> {
        let err = |reason| ReferenceError::Reference { input: input.to_string(), reason };
        let (rest, digest) = match input.split_once('@') {
            Some((rest, d)) => (rest, Some(d.parse::<Digest>()?)),
            None => (input, None),
        };
        // A tag follows the last `:` after the last `/` (a `:` before it is a port).
        let last_slash = rest.rfind('/').unwrap_or(0);
        let (name, tag) = match rest[last_slash..].rfind(':') {
            Some(i) => (&rest[..last_slash + i], Some(rest[last_slash + i + 1..].parse::<Tag>()?)),
            None => (rest, None),
        };
        let (registry, repository) = match name.split_once('/') {
            Some((first, path)) if first.contains('.') || first.contains(':') || first == "localhost" => {
                (first.to_string(), path.to_string())
            }
            Some(_) => (DOCKER_HUB.to_string(), name.to_string()),
            None => (DOCKER_HUB.to_string(), format!("library/{name}")),
        };
        if registry.is_empty() || registry.contains(char::is_whitespace) {
            return Err(err("the registry host is empty or has spaces"));
        }
        if !is_valid_repository(&repository) {
            return Err(err(
                "the repository must be lowercase path components of [a-z0-9] joined by `.`, `_`, `-` or `/`",
            ));
        }
        Ok(RegistryRef { registry, repository, image: ImageRef { tag, digest } })
    }
}

/// Where an image comes from or goes to: a registry, an OCI image layout directory, or a
/// `docker save` tarball (source only).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Location {
    Registry(RegistryRef),
    OciLayout { dir: PathBuf, tag: Option<Tag> },
    DockerArchive { file: PathBuf },
}

impl FromStr for Location {
    type Err = ReferenceError;
    fn from_str(input: &str) -> Result<Self, Self::Err> {
        if let Some(rest) = input.strip_prefix("oci:") {
            // `oci:DIR:tag`: the tag follows the last `:` when no `/` comes after it.
            let (dir, tag) = match rest.rfind(':') {
                Some(i) if !rest[i + 1..].contains('/') && i > 0 => (&rest[..i], Some(rest[i + 1..].parse::<Tag>()?)),
                _ => (rest, None),
            };
            if dir.is_empty() {
                return Err(ReferenceError::Reference {
                    input: input.to_string(),
                    reason: "`oci:` needs a directory, as in `oci:./layout:v1`",
                });
            }
            return Ok(Location::OciLayout { dir: dir.into(), tag });
        }
        if let Some(file) = input.strip_prefix("docker-archive:") {
            if file.is_empty() {
                return Err(ReferenceError::Reference {
                    input: input.to_string(),
                    reason: "`docker-archive:` needs a file, as in `docker-archive:image.tar`",
                });
            }
            return Ok(Location::DockerArchive { file: file.into() });
        }
        let input = input.strip_prefix("docker://").unwrap_or(input);
        Ok(Location::Registry(input.parse()?))
    }
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Location::Registry(r) => {
                // A host named `oci:…` or `docker-archive:…` would read back as another transport.
                let text = r.to_string();
                if text.starts_with("oci:") || text.starts_with("docker-archive:") {
                    write!(f, "docker://{text}")
                } else {
                    f.write_str(&text)
                }
            }
            Location::OciLayout { dir, tag: Some(t) } => write!(f, "oci:{}:{t}", dir.display()),
            Location::OciLayout { dir, tag: None } => write!(f, "oci:{}", dir.display()),
            Location::DockerArchive { file } => write!(f, "docker-archive:{}", file.display()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HEX: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

    #[test]
    fn registry_with_port_and_tag_parses() {
        let r: RegistryRef = "127.0.0.1:5000/shop/api:v1".parse().unwrap();
        assert_eq!(r.registry, "127.0.0.1:5000");
        assert_eq!(r.repository, "shop/api");
        assert_eq!(r.image.tag.unwrap().as_str(), "v1");
        assert!(r.image.digest.is_none());
    }

    #[test]
    fn port_is_not_mistaken_for_a_tag() {
        let r: RegistryRef = "localhost:5000/api".parse().unwrap();
        assert_eq!(r.registry, "localhost:5000");
        assert!(r.image.tag.is_none(), "no tag written, none invented");
        assert_eq!(r.image.api_reference(), "latest");
    }

    #[test]
    fn tag_and_digest_are_both_kept() {
        let r: RegistryRef = format!("ghcr.io/o/p:v2@sha256:{HEX}").parse().unwrap();
        assert_eq!(r.image.tag.unwrap().as_str(), "v2");
        assert_eq!(r.image.digest.unwrap().hex(), HEX);
        assert_eq!(
            format!("ghcr.io/o/p:v2@sha256:{HEX}"),
            format!("ghcr.io/o/p:v2@sha256:{HEX}").parse::<RegistryRef>().unwrap().to_string()
        );
    }

    #[test]
    fn docker_hub_short_names_expand() {
        let r: RegistryRef = "alpine".parse().unwrap();
        assert_eq!(r.registry, "docker.io");
        assert_eq!(r.repository, "library/alpine");
        assert_eq!(r.api_host(), "registry-1.docker.io");
        let r: RegistryRef = "bitnami/redis:7".parse().unwrap();
        assert_eq!(r.repository, "bitnami/redis");
    }

    #[test]
    fn hostile_references_are_rejected() {
        for bad in [
            "",
            "HOST/Upper",
            "127.0.0.1:5000/",
            "127.0.0.1:5000/a/../b",
            "127.0.0.1:5000/a:-bad",
            "127.0.0.1:5000/a@sha256:short",
            "127.0.0.1:5000/a@md5:0123",
            "127.0.0.1:5000/a b",
        ] {
            assert!(bad.parse::<RegistryRef>().is_err(), "{bad} should not parse");
        }
    }

    #[test]
    fn digest_checks_algorithm_and_length() {
        assert!(format!("sha256:{HEX}").parse::<Digest>().is_ok());
        assert!(format!("sha256:{}", HEX.to_uppercase()).parse::<Digest>().is_err());
        assert!("sha256:".parse::<Digest>().is_err());
        let d = Digest::sha256_of(b"ferry");
        assert!(d.matches(b"ferry"));
        assert!(!d.matches(b"ferry!"));
        assert_eq!(d.referrers_tag().as_str(), format!("sha256-{}", d.hex()));
    }

    #[test]
    fn locations_parse_every_transport() {
        assert_eq!(
            "oci:/tmp/lay:v1".parse::<Location>().unwrap(),
            Location::OciLayout { dir: "/tmp/lay".into(), tag: Some("v1".parse().unwrap()) }
        );
        assert_eq!("oci:./lay".parse::<Location>().unwrap(), Location::OciLayout { dir: "./lay".into(), tag: None });
        assert_eq!(
            "docker-archive:img.tar".parse::<Location>().unwrap(),
            Location::DockerArchive { file: "img.tar".into() }
        );
        assert!(matches!("docker://127.0.0.1:5000/a:b".parse::<Location>().unwrap(), Location::Registry(_)));
        assert!("oci:".parse::<Location>().is_err());
    }
}

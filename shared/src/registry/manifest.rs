//! Just enough of the OCI and Docker manifest formats to walk an image: the bytes themselves are
//! never re-serialised, so digests survive the copy.

use serde::{Deserialize, Serialize};

use super::reference::Digest;

pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
pub const DOCKER_CONFIG: &str = "application/vnd.docker.container.image.v1+json";
pub const DOCKER_LAYER: &str = "application/vnd.docker.image.rootfs.diff.tar";
pub const DOCKER_LAYER_GZIP: &str = "application/vnd.docker.image.rootfs.diff.tar.gzip";
/// OCI 1.1 draft artifact manifests, still found in the wild.
pub const OCI_ARTIFACT: &str = "application/vnd.oci.artifact.manifest.v1+json";

/// Every manifest kind Ferry copies, for `Accept`.
pub const ACCEPT_MANIFESTS: &str = "application/vnd.oci.image.index.v1+json, \
application/vnd.oci.image.manifest.v1+json, \
application/vnd.docker.distribution.manifest.list.v2+json, \
application/vnd.docker.distribution.manifest.v2+json, \
application/vnd.oci.artifact.manifest.v1+json";

/// The largest manifest Ferry will read: registries must accept 4 MiB, few go beyond.
pub const MAX_MANIFEST_BYTES: usize = 8 << 20;

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Platform {
    pub os: String,
    pub architecture: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub variant: Option<String>,
}

impl Platform {
    /// Whether `os/arch[/variant]` as typed by a user names this platform.
    pub fn matches(&self, wanted: &str) -> bool {
        let mut parts = wanted.split('/');
        let (os, arch, variant) = (parts.next(), parts.next(), parts.next());
        os == Some(self.os.as_str())
            && arch == Some(self.architecture.as_str())
            && (variant.is_none() || variant == self.variant.as_deref())
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Descriptor {
    pub media_type: String,
    pub digest: Digest,
    pub size: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub platform: Option<Platform>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub artifact_type: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub annotations: Option<serde_json::Map<String, serde_json::Value>>,
}

/// The fields of any manifest kind that point at other content. Unknown fields are ignored
/// (and preserved, because the original bytes are what gets copied).
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct ManifestFields {
    schema_version: Option<u32>,
    media_type: Option<String>,
    config: Option<Descriptor>,
    #[serde(default)]
    layers: Vec<Descriptor>,
    /// Draft OCI artifact manifests list `blobs` instead of `layers`.
    #[serde(default)]
    blobs: Vec<Descriptor>,
    #[serde(default)]
    manifests: Vec<Descriptor>,
    subject: Option<Descriptor>,
}

#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    #[error("manifest is not valid JSON: {0}")]
    Json(#[from] serde_json::Error),
    #[error("Docker schema 1 manifests are not supported (convert the image to schema 2 or OCI)")]
    SchemaOne,
    #[error("unknown manifest media type `{0}`")]
    UnknownMediaType(String),
}

/// A manifest's raw bytes plus what Ferry needs to walk it.
#[derive(Clone, Debug)]
pub struct Manifest {
    pub bytes: bytes::Bytes,
    pub media_type: String,
    pub digest: Digest,
    /// Child manifests (index / manifest list).
    pub manifests: Vec<Descriptor>,
    /// Config and layers (image manifest) or blobs (artifact manifest).
    pub blobs: Vec<Descriptor>,
    pub subject: Option<Descriptor>,
}

impl Manifest {
    /// Parses `bytes`. The media type comes from the body, else from the `Content-Type` the
    /// registry sent, else from the shape of the body.
    pub fn parse(bytes: bytes::Bytes, content_type: Option<&str>, digest: Digest) -> Result<Self, ManifestError> {
        let fields: ManifestFields = serde_json::from_slice(&bytes)?;
        if fields.schema_version == Some(1) {
            return Err(ManifestError::SchemaOne);
        }
        let media_type = fields
            .media_type
            .clone()
            .or_else(|| content_type.map(|c| c.split(';').next().unwrap_or(c).trim().to_string()))
            .filter(|m| !m.is_empty() && m != "application/json" && m != "text/plain")
            .unwrap_or_else(|| {
                if fields.manifests.is_empty() && fields.config.is_some() {
                    OCI_MANIFEST.to_string()
                } else {
                    OCI_INDEX.to_string()
                }
            });
        if !matches!(media_type.as_str(), OCI_INDEX | OCI_MANIFEST | DOCKER_LIST | DOCKER_MANIFEST | OCI_ARTIFACT) {
            return Err(ManifestError::UnknownMediaType(media_type));
        }
        let mut blobs: Vec<Descriptor> = fields.config.into_iter().collect();
        blobs.extend(fields.layers);
        blobs.extend(fields.blobs);
        Ok(Manifest { bytes, media_type, digest, manifests: fields.manifests, blobs, subject: fields.subject })
    }

    pub fn is_index(&self) -> bool {
        matches!(self.media_type.as_str(), OCI_INDEX | DOCKER_LIST)
    }

    /// A descriptor pointing at this manifest.
    pub fn descriptor(&self) -> Descriptor {
        Descriptor {
            media_type: self.media_type.clone(),
            digest: self.digest.clone(),
            size: self.bytes.len() as u64,
            platform: None,
            artifact_type: None,
            annotations: None,
        }
    }
}

/// An OCI image index, as written for the referrers tag-schema fallback and `index.json`.
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ImageIndex {
    pub schema_version: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub media_type: Option<String>,
    #[serde(default)]
    pub manifests: Vec<Descriptor>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub annotations: Option<serde_json::Map<String, serde_json::Value>>,
}

impl ImageIndex {
    pub fn new(manifests: Vec<Descriptor>) -> Self {
        ImageIndex { schema_version: 2, media_type: Some(OCI_INDEX.into()), manifests, annotations: None }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(json: &str, content_type: Option<&str>) -> Result<Manifest, ManifestError> {
        let bytes = bytes::Bytes::copy_from_slice(json.as_bytes());
        let digest = Digest::sha256_of(&bytes);
        Manifest::parse(bytes, content_type, digest)
    }

    const D: &str = "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

    #[test]
    fn image_manifest_lists_config_then_layers() {
        let m = parse(
            &format!(
                r#"{{"schemaVersion":2,"mediaType":"{OCI_MANIFEST}",
                "config":{{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"{D}","size":2}},
                "layers":[{{"mediaType":"x","digest":"{D}","size":9,"extra":true}}],"future":null}}"#
            ),
            None,
        )
        .unwrap();
        assert_eq!(m.media_type, OCI_MANIFEST);
        assert_eq!(m.blobs.len(), 2);
        assert!(!m.is_index());
    }

    #[test]
    fn media_type_falls_back_to_content_type_then_shape() {
        let body =
            format!(r#"{{"schemaVersion":2,"manifests":[{{"mediaType":"{OCI_MANIFEST}","digest":"{D}","size":1}}]}}"#);
        assert_eq!(parse(&body, Some(DOCKER_LIST)).unwrap().media_type, DOCKER_LIST);
        assert_eq!(parse(&body, Some("application/json")).unwrap().media_type, OCI_INDEX);
    }

    #[test]
    fn schema_one_and_garbage_are_refused() {
        assert!(matches!(parse(r#"{"schemaVersion":1}"#, None), Err(ManifestError::SchemaOne)));
        assert!(matches!(parse("not json", None), Err(ManifestError::Json(_))));
        assert!(matches!(
            parse(r#"{"schemaVersion":2,"mediaType":"text/html"}"#, None),
            Err(ManifestError::UnknownMediaType(_))
        ));
    }

    #[test]
    fn platform_filter_matches_os_arch_and_variant() {
        let p = Platform { os: "linux".into(), architecture: "arm".into(), variant: Some("v7".into()) };
        assert!(p.matches("linux/arm"));
        assert!(p.matches("linux/arm/v7"));
        assert!(!p.matches("linux/arm/v6"));
        assert!(!p.matches("linux/amd64"));
    }
}

//! OCI image layout directories (`oci:DIR[:tag]`): the "build artifact" form of an image.

use std::path::{Path, PathBuf};

use bytes::Bytes;
use futures_util::StreamExt;
use sha2::{Digest as _, Sha256};
use tokio::io::AsyncWriteExt;

use super::BlobStream;
use super::error::CopyError;
use super::manifest::{Descriptor, ImageIndex, Manifest};
use super::reference::{Digest, Tag};

const REF_NAME: &str = "org.opencontainers.image.ref.name";
const LAYOUT_FILE: &str = "oci-layout";
const LAYOUT_VERSION: &str = r#"{"imageLayoutVersion":"1.0.0"}"#;

pub struct OciLayout {
    dir: PathBuf,
}

impl OciLayout {
    /// Opens an existing layout for reading.
    pub fn open(dir: &Path) -> Result<Self, CopyError> {
        if !dir.join(LAYOUT_FILE).is_file() {
            return Err(CopyError::Invalid(format!(
                "{}: not an OCI image layout (no `oci-layout` file)",
                dir.display()
            )));
        }
        Ok(OciLayout { dir: dir.to_path_buf() })
    }

    /// Opens a layout for writing, creating it when the directory is new or empty.
    pub async fn create(dir: &Path) -> Result<Self, CopyError> {
        tokio::fs::create_dir_all(dir.join("blobs")).await.map_err(|e| CopyError::io(dir, e))?;
        let marker = dir.join(LAYOUT_FILE);
        if !marker.exists() {
            tokio::fs::write(&marker, LAYOUT_VERSION).await.map_err(|e| CopyError::io(&marker, e))?;
        }
        let index = dir.join("index.json");
        if !index.exists() {
            let empty = serde_json::to_vec(&ImageIndex::new(vec![])).expect("index serializes");
            tokio::fs::write(&index, empty).await.map_err(|e| CopyError::io(&index, e))?;
        }
        Ok(OciLayout { dir: dir.to_path_buf() })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn blob_path(&self, digest: &Digest) -> PathBuf {
        self.dir.join("blobs").join(digest.algorithm()).join(digest.hex())
    }

    pub async fn read_index(&self) -> Result<ImageIndex, CopyError> {
        let path = self.dir.join("index.json");
        let bytes = tokio::fs::read(&path).await.map_err(|e| CopyError::io(&path, e))?;
        serde_json::from_slice(&bytes)
            .map_err(|e| CopyError::Invalid(format!("{}: invalid index.json: {e}", path.display())))
    }

    /// The manifest a tag names (its `org.opencontainers.image.ref.name`), or the only one.
    pub async fn resolve(&self, tag: Option<&Tag>) -> Result<Descriptor, CopyError> {
        let index = self.read_index().await?;
        let tagged = |d: &&Descriptor| {
            d.annotations.as_ref().and_then(|a| a.get(REF_NAME)).and_then(|v| v.as_str()).map(str::to_string)
        };
        match tag {
            Some(tag) => {
                index.manifests.iter().find(|d| tagged(d).as_deref() == Some(tag.as_str())).cloned().ok_or_else(|| {
                    let known: Vec<String> = index.manifests.iter().filter_map(|d| tagged(&d)).collect();
                    CopyError::Invalid(format!(
                        "{}: no image tagged `{tag}` (tags here: {})",
                        self.dir.display(),
                        if known.is_empty() { "none".into() } else { known.join(", ") }
                    ))
                })
            }
            None => match index.manifests.as_slice() {
                [only] => Ok(only.clone()),
                [] => Err(CopyError::Invalid(format!("{}: the layout holds no image", self.dir.display()))),
                _ => Err(CopyError::Invalid(format!(
                    "{}: the layout holds {} images; name one as oci:DIR:TAG",
                    self.dir.display(),
                    index.manifests.len()
                ))),
            },
        }
    }

    pub async fn read_manifest(&self, digest: &Digest, media_type: Option<&str>) -> Result<Manifest, CopyError> {
        let path = self.blob_path(digest);
        let bytes = Bytes::from(tokio::fs::read(&path).await.map_err(|e| CopyError::io(&path, e))?);
        if !digest.matches(&bytes) {
            return Err(CopyError::DigestMismatch {
                what: format!("manifest {}", path.display()),
                expected: digest.clone(),
                actual: Digest::sha256_of(&bytes),
            });
        }
        Manifest::parse(bytes, media_type, digest.clone()).map_err(|source| CopyError::Manifest {
            location: self.dir.display().to_string(),
            digest: digest.to_string(),
            source,
        })
    }

    /// Streams a blob from disk. The reader's digest is checked by whoever receives the bytes
    /// (a registry on commit, or [`OciLayout::write_blob`]).
    pub async fn open_blob(&self, digest: &Digest) -> Result<(BlobStream, u64), CopyError> {
        let path = self.blob_path(digest);
        let file = tokio::fs::File::open(&path).await.map_err(|e| CopyError::io(&path, e))?;
        let size = file.metadata().await.map_err(|e| CopyError::io(&path, e))?.len();
        let stream = tokio_util::io::ReaderStream::with_capacity(file, 256 << 10);
        Ok((stream.boxed(), size))
    }

    pub async fn has_blob(&self, digest: &Digest) -> bool {
        tokio::fs::metadata(self.blob_path(digest)).await.is_ok()
    }

    /// Writes a blob through a temporary file, hashing as it goes; only a blob whose bytes match
    /// its digest is renamed into place, so a layout never holds a corrupt blob.
    pub async fn write_blob(
        &self,
        digest: &Digest,
        mut stream: BlobStream,
        source_name: &str,
    ) -> Result<u64, CopyError> {
        let path = self.blob_path(digest);
        let parent = path.parent().expect("blob paths have a parent");
        tokio::fs::create_dir_all(parent).await.map_err(|e| CopyError::io(parent, e))?;
        let partial = parent.join(format!(".{}.partial-{}", digest.hex(), std::process::id()));
        let mut file = tokio::fs::File::create(&partial).await.map_err(|e| CopyError::io(&partial, e))?;
        let mut hasher = Sha256::new();
        let mut written = 0u64;
        let result: Result<(), CopyError> = async {
            while let Some(chunk) = stream.next().await {
                let chunk = chunk.map_err(|e| CopyError::Transport {
                    registry: source_name.to_string(),
                    detail: format!("reading blob {digest}: {e}"),
                    hint: String::new(),
                })?;
                hasher.update(&chunk);
                written += chunk.len() as u64;
                file.write_all(&chunk).await.map_err(|e| CopyError::io(&partial, e))?;
            }
            file.flush().await.map_err(|e| CopyError::io(&partial, e))?;
            file.sync_all().await.map_err(|e| CopyError::io(&partial, e))?;
            Ok(())
        }
        .await;
        let actual = Digest::from_sha256_hex(&hex::encode(hasher.finalize())).expect("sha256 hex is valid");
        if result.is_ok() && digest.algorithm() == "sha256" && actual != *digest {
            let _ = tokio::fs::remove_file(&partial).await;
            return Err(CopyError::CorruptBlob {
                source_name: source_name.to_string(),
                digest: digest.clone(),
                detail: format!("the bytes hash to {actual}; nothing was written to {}", self.dir.display()),
            });
        }
        if let Err(err) = result {
            let _ = tokio::fs::remove_file(&partial).await;
            return Err(err);
        }
        tokio::fs::rename(&partial, &path).await.map_err(|e| CopyError::io(&path, e))?;
        Ok(written)
    }

    pub async fn write_manifest(&self, manifest: &Manifest) -> Result<(), CopyError> {
        let stream = futures_util::stream::iter([Ok(manifest.bytes.clone())]).boxed();
        self.write_blob(&manifest.digest, stream, "Ferry").await.map(|_| ())
    }

    /// Records `descriptor` in `index.json`, under `tag` when given (replacing what the tag
    /// named before), written atomically.
    pub async fn add_to_index(&self, mut descriptor: Descriptor, tag: Option<&Tag>) -> Result<(), CopyError> {
        let mut index = self.read_index().await?;
        let ref_name = |d: &Descriptor| d.annotations.as_ref().and_then(|a| a.get(REF_NAME)).cloned();
        match tag {
            Some(tag) => {
                index.manifests.retain(|d| {
                    ref_name(d).and_then(|v| v.as_str().map(str::to_string)).as_deref() != Some(tag.as_str())
                });
                descriptor
                    .annotations
                    .get_or_insert_with(Default::default)
                    .insert(REF_NAME.into(), tag.as_str().into());
            }
            None => {
                if index.manifests.iter().any(|d| d.digest == descriptor.digest) {
                    return Ok(());
                }
            }
        }
        index.manifests.push(descriptor);
        let path = self.dir.join("index.json");
        let partial = self.dir.join(".index.json.partial");
        let bytes = serde_json::to_vec(&index).expect("index serializes");
        tokio::fs::write(&partial, bytes).await.map_err(|e| CopyError::io(&partial, e))?;
        tokio::fs::rename(&partial, &path).await.map_err(|e| CopyError::io(&path, e))
    }

    /// Manifests in `index.json` whose `subject` is `digest`.
    pub async fn referrers(&self, digest: &Digest) -> Result<Vec<Descriptor>, CopyError> {
        let mut found = Vec::new();
        for descriptor in self.read_index().await?.manifests {
            if descriptor.digest == *digest {
                continue;
            }
            let manifest = self.read_manifest(&descriptor.digest, Some(&descriptor.media_type)).await?;
            if manifest.subject.as_ref().is_some_and(|s| s.digest == *digest) {
                found.push(descriptor);
            }
        }
        Ok(found)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_blob_with_wrong_bytes_never_lands() {
        let dir = tempfile::tempdir().unwrap();
        let layout = OciLayout::create(dir.path()).await.unwrap();
        let digest = Digest::sha256_of(b"right");
        let wrong = futures_util::stream::iter([Ok(Bytes::from_static(b"wrong"))]).boxed();
        assert!(matches!(layout.write_blob(&digest, wrong, "test").await, Err(CopyError::CorruptBlob { .. })));
        assert!(!layout.has_blob(&digest).await);
        let right = futures_util::stream::iter([Ok(Bytes::from_static(b"right"))]).boxed();
        assert_eq!(layout.write_blob(&digest, right, "test").await.unwrap(), 5);
        assert!(layout.has_blob(&digest).await);
    }

    #[tokio::test]
    async fn tags_resolve_and_retagging_replaces() {
        let dir = tempfile::tempdir().unwrap();
        let layout = OciLayout::create(dir.path()).await.unwrap();
        let tag: Tag = "v1".parse().unwrap();
        let descriptor = |bytes: &[u8]| Descriptor {
            media_type: super::super::manifest::OCI_MANIFEST.into(),
            digest: Digest::sha256_of(bytes),
            size: bytes.len() as u64,
            platform: None,
            artifact_type: None,
            annotations: None,
        };
        layout.add_to_index(descriptor(b"a"), Some(&tag)).await.unwrap();
        layout.add_to_index(descriptor(b"b"), Some(&tag)).await.unwrap();
        let reopened = OciLayout::open(dir.path()).unwrap();
        assert_eq!(reopened.resolve(Some(&tag)).await.unwrap().digest, Digest::sha256_of(b"b"));
        assert_eq!(reopened.read_index().await.unwrap().manifests.len(), 1);
        let err = reopened.resolve(Some(&"nope".parse().unwrap())).await.unwrap_err().to_string();
        assert!(err.contains("tags here: v1"), "{err}");
    }

    #[test]
    fn a_plain_directory_is_not_a_layout() {
        let dir = tempfile::tempdir().unwrap();
        assert!(OciLayout::open(dir.path()).is_err());
    }
}

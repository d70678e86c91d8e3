//! `docker save` tarballs (`docker-archive:FILE.tar`) as a copy source.
//!
//! Two shapes exist: the legacy one (`manifest.json` naming `<hex>.json` and `<id>/layer.tar`),
//! for which Ferry writes a Docker v2 schema 2 manifest over the files as they are, and Docker
//! 25+'s, which embeds an OCI layout whose manifest is copied unchanged. Blobs are read straight
//! out of the tarball at their offsets: nothing is unpacked to disk or held in memory.

use std::collections::HashMap;
use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use bytes::Bytes;
use futures_util::StreamExt;
use serde::Deserialize;
use sha2::{Digest as _, Sha256};
use tokio::io::AsyncReadExt;
use tokio::io::AsyncSeekExt;

use super::BlobStream;
use super::error::CopyError;
use super::manifest::{self, Descriptor, ImageIndex, Manifest};
use super::reference::Digest;

#[derive(Clone, Copy, Debug)]
struct Span {
    offset: u64,
    size: u64,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct SaveEntry {
    config: String,
    #[serde(default)]
    layers: Vec<String>,
}

pub struct DockerArchive {
    file: PathBuf,
    manifest: Manifest,
    blobs: HashMap<Digest, Span>,
}

impl DockerArchive {
    /// Indexes the tarball and builds (or reads) the image's manifest.
    pub async fn open(file: &Path) -> Result<Self, CopyError> {
        let file = file.to_path_buf();
        tokio::task::spawn_blocking(move || Self::open_blocking(file))
            .await
            .map_err(|e| CopyError::Invalid(format!("docker-archive reader failed: {e}")))?
    }

    fn open_blocking(path: PathBuf) -> Result<Self, CopyError> {
        let io = |e| CopyError::io(&path, e);
        let invalid = |why: String| CopyError::Invalid(format!("{}: not a docker-archive: {why}", path.display()));
        let mut entries: HashMap<String, Span> = HashMap::new();
        let mut links: HashMap<String, String> = HashMap::new();
        let mut archive = tar::Archive::new(File::open(&path).map_err(io)?);
        for entry in archive.entries().map_err(io)? {
            let entry = entry.map_err(io)?;
            let name = normalize(&entry.path().map_err(io)?.to_string_lossy());
            let kind = entry.header().entry_type();
            if kind.is_symlink() || kind.is_hard_link() {
                if let Some(target) = entry.link_name().map_err(io)? {
                    let target = target.to_string_lossy().to_string();
                    let resolved = if kind.is_symlink() {
                        let dir =
                            Path::new(&name).parent().map(|p| p.to_string_lossy().to_string()).unwrap_or_default();
                        normalize(&format!("{dir}/{target}"))
                    } else {
                        normalize(&target)
                    };
                    links.insert(name, resolved);
                }
            } else if kind.is_file() {
                entries.insert(name, Span { offset: entry.raw_file_position(), size: entry.size() });
            }
        }
        let lookup = |name: &str| -> Option<Span> {
            let mut name = normalize(name);
            for _ in 0..8 {
                if let Some(span) = entries.get(&name) {
                    return Some(*span);
                }
                name = links.get(&name)?.clone();
            }
            None
        };
        let mut file = File::open(&path).map_err(io)?;
        let mut read_small = |span: Span, what: &str| -> Result<Bytes, CopyError> {
            if span.size > manifest::MAX_MANIFEST_BYTES as u64 {
                return Err(invalid(format!("{what} is larger than {} bytes", manifest::MAX_MANIFEST_BYTES)));
            }
            let mut buf = vec![0; span.size as usize];
            file.seek(SeekFrom::Start(span.offset)).map_err(io)?;
            file.read_exact(&mut buf).map_err(io)?;
            Ok(buf.into())
        };

        // Docker 25+: an OCI layout inside the tarball; its manifest is the image's own.
        if let (Some(index_span), Some(_)) = (lookup("index.json"), lookup("oci-layout")) {
            let index: ImageIndex = serde_json::from_slice(&read_small(index_span, "index.json")?)
                .map_err(|e| invalid(format!("index.json: {e}")))?;
            let root = index.manifests.first().ok_or_else(|| invalid("index.json lists no image".into()))?;
            let span =
                lookup(&blob_name(&root.digest)).ok_or_else(|| invalid(format!("missing blob {}", root.digest)))?;
            let bytes = read_small(span, "the manifest")?;
            if !root.digest.matches(&bytes) {
                return Err(CopyError::DigestMismatch {
                    what: format!("manifest in {}", path.display()),
                    expected: root.digest.clone(),
                    actual: Digest::sha256_of(&bytes),
                });
            }
            let manifest = Manifest::parse(bytes, Some(&root.media_type), root.digest.clone()).map_err(|source| {
                CopyError::Manifest { location: path.display().to_string(), digest: root.digest.to_string(), source }
            })?;
            let blobs = entries
                .iter()
                .filter_map(|(name, span)| {
                    let hex = name.strip_prefix("blobs/sha256/")?;
                    Some((Digest::from_sha256_hex(hex).ok()?, *span))
                })
                .collect();
            return Ok(DockerArchive { file: path, manifest, blobs });
        }

        // Legacy: describe the files as they are in a Docker v2 schema 2 manifest.
        let span = lookup("manifest.json").ok_or_else(|| invalid("no manifest.json".into()))?;
        let saved: Vec<SaveEntry> = serde_json::from_slice(&read_small(span, "manifest.json")?)
            .map_err(|e| invalid(format!("manifest.json: {e}")))?;
        let image = saved.first().ok_or_else(|| invalid("manifest.json lists no image".into()))?;
        let mut blobs = HashMap::new();
        let mut describe = |name: &str, media_type: &str| -> Result<Descriptor, CopyError> {
            let span = lookup(name).ok_or_else(|| invalid(format!("`{name}` is listed but not in the tarball")))?;
            let (digest, gzip) = hash_span(&mut file, span).map_err(io)?;
            blobs.insert(digest.clone(), span);
            let media_type = match media_type {
                manifest::DOCKER_LAYER if gzip => manifest::DOCKER_LAYER_GZIP,
                other => other,
            };
            Ok(Descriptor {
                media_type: media_type.into(),
                digest,
                size: span.size,
                platform: None,
                artifact_type: None,
                annotations: None,
            })
        };
        let config = describe(&image.config, manifest::DOCKER_CONFIG)?;
        let layers =
            image.layers.iter().map(|layer| describe(layer, manifest::DOCKER_LAYER)).collect::<Result<Vec<_>, _>>()?;
        let bytes = Bytes::from(
            serde_json::to_vec_pretty(&serde_json::json!({
                "schemaVersion": 2,
                "mediaType": manifest::DOCKER_MANIFEST,
                "config": config,
                "layers": layers,
            }))
            .expect("manifest serializes"),
        );
        let digest = Digest::sha256_of(&bytes);
        let manifest = Manifest::parse(bytes, None, digest.clone()).map_err(|source| CopyError::Manifest {
            location: path.display().to_string(),
            digest: digest.to_string(),
            source,
        })?;
        Ok(DockerArchive { file: path, manifest, blobs })
    }

    pub fn file(&self) -> &Path {
        &self.file
    }

    pub fn manifest(&self) -> &Manifest {
        &self.manifest
    }

    /// Child manifests of an embedded OCI index live in the tarball as blobs.
    pub async fn read_manifest(&self, descriptor: &Descriptor) -> Result<Manifest, CopyError> {
        let (mut stream, _) = self.open_blob(&descriptor.digest).await?;
        let mut bytes = Vec::new();
        while let Some(chunk) = stream.next().await {
            bytes.extend_from_slice(&chunk.map_err(|e| CopyError::io(&self.file, e))?);
        }
        if !descriptor.digest.matches(&bytes) {
            return Err(CopyError::DigestMismatch {
                what: format!("manifest in {}", self.file.display()),
                expected: descriptor.digest.clone(),
                actual: Digest::sha256_of(&bytes),
            });
        }
        Manifest::parse(bytes.into(), Some(&descriptor.media_type), descriptor.digest.clone()).map_err(|source| {
            CopyError::Manifest {
                location: self.file.display().to_string(),
                digest: descriptor.digest.to_string(),
                source,
            }
        })
    }

    pub async fn open_blob(&self, digest: &Digest) -> Result<(BlobStream, u64), CopyError> {
        let span = *self.blobs.get(digest).ok_or_else(|| {
            CopyError::Invalid(format!("{}: blob {digest} is not in the tarball", self.file.display()))
        })?;
        let mut file = tokio::fs::File::open(&self.file).await.map_err(|e| CopyError::io(&self.file, e))?;
        file.seek(SeekFrom::Start(span.offset)).await.map_err(|e| CopyError::io(&self.file, e))?;
        let stream = tokio_util::io::ReaderStream::with_capacity(file.take(span.size), 256 << 10);
        Ok((stream.boxed(), span.size))
    }
}

fn blob_name(digest: &Digest) -> String {
    format!("blobs/{}/{}", digest.algorithm(), digest.hex())
}

/// `./a//b/../c` → `a/c`, so tar names and link targets compare equal.
fn normalize(name: &str) -> String {
    let mut parts: Vec<&str> = Vec::new();
    for part in name.split('/') {
        match part {
            "" | "." => {}
            ".." => {
                parts.pop();
            }
            p => parts.push(p),
        }
    }
    parts.join("/")
}

/// The sha256 of a span of the tarball, and whether it starts like gzip.
fn hash_span(file: &mut File, span: Span) -> std::io::Result<(Digest, bool)> {
    file.seek(SeekFrom::Start(span.offset))?;
    let mut reader = file.take(span.size);
    let mut hasher = Sha256::new();
    let mut buf = vec![0; 1 << 20];
    let mut gzip = None;
    loop {
        let n = reader.read(&mut buf)?;
        if n == 0 {
            break;
        }
        gzip.get_or_insert(buf[..n].starts_with(&[0x1f, 0x8b]));
        hasher.update(&buf[..n]);
    }
    let digest = Digest::from_sha256_hex(&hex::encode(hasher.finalize())).expect("sha256 hex is valid");
    Ok((digest, gzip.unwrap_or(false)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn add(builder: &mut tar::Builder<File>, name: &str, data: &[u8]) {
        let mut header = tar::Header::new_gnu();
        header.set_size(data.len() as u64);
        header.set_mode(0o644);
        header.set_cksum();
        builder.append_data(&mut header, name, data).unwrap();
    }

    #[tokio::test]
    async fn legacy_archive_becomes_a_schema2_manifest_over_the_same_bytes() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("image.tar");
        let config = br#"{"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":[]}}"#;
        let layer = vec![7u8; 300_000];
        let config_name = format!("{}.json", hex::encode(Sha256::digest(config)));
        {
            let mut builder = tar::Builder::new(File::create(&path).unwrap());
            add(&mut builder, &config_name, config);
            add(&mut builder, "abc/layer.tar", &layer);
            // Newer `docker save` points legacy paths at shared files with symlinks.
            let mut link = tar::Header::new_gnu();
            link.set_entry_type(tar::EntryType::Symlink);
            link.set_size(0);
            link.set_cksum();
            builder.append_link(&mut link, "def/layer.tar", "../abc/layer.tar").unwrap();
            let manifest = format!(
                r#"[{{"Config":"{config_name}","RepoTags":["app:1"],"Layers":["abc/layer.tar","def/layer.tar"]}}]"#
            );
            add(&mut builder, "manifest.json", manifest.as_bytes());
            builder.finish().unwrap();
        }
        let archive = DockerArchive::open(&path).await.unwrap();
        let m = archive.manifest();
        assert_eq!(m.media_type, manifest::DOCKER_MANIFEST);
        assert_eq!(m.blobs.len(), 3);
        assert_eq!(m.blobs[0].digest, Digest::sha256_of(config));
        assert_eq!(m.blobs[1].digest, Digest::sha256_of(&layer));
        assert_eq!(m.blobs[1].media_type, manifest::DOCKER_LAYER);
        assert!(m.digest.matches(&m.bytes));
        let (mut stream, size) = archive.open_blob(&Digest::sha256_of(&layer)).await.unwrap();
        assert_eq!(size, layer.len() as u64);
        let mut read = Vec::new();
        while let Some(chunk) = stream.next().await {
            read.extend_from_slice(&chunk.unwrap());
        }
        assert_eq!(read, layer);
    }

    #[tokio::test]
    async fn garbage_is_not_an_archive() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("bad.tar");
        std::fs::write(&path, b"definitely not a tarball").unwrap();
        assert!(DockerArchive::open(&path).await.is_err());
        assert!(DockerArchive::open(&dir.path().join("missing.tar")).await.is_err());
    }
}

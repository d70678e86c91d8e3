//! The copy engine: an image, every platform of it and its referrers, from a source to a
//! target, digest-exact.
//!
//! Order of work: resolve the root manifest, walk it (children before parents), move every
//! distinct blob with bounded concurrency (skip what the target has, mount within a registry,
//! otherwise stream in one PUT), push manifests bottom-up as the original bytes, then read the
//! target's digest back and compare. Ferry does not hash registry-to-registry blob bytes itself:
//! the target registry verifies every blob's digest when the upload is committed, and refuses a
//! mismatch, so a second hash would only spend CPU.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use futures_util::{StreamExt, TryStreamExt};
use serde::Serialize;

use super::BlobStream;
use super::archive::DockerArchive;
use super::auth::{Credential, DockerConfig};
use super::client::{ClientOptions, HttpClients, RegistryClient, UploadStart, push_scope};
use super::error::CopyError;
use super::layout::OciLayout;
use super::manifest::{Descriptor, ImageIndex, Manifest, OCI_INDEX};
use super::reference::{Digest, Location, RegistryRef, Tag};
use super::throughput::{StalledSide, TransferMeter};
use crate::failpoint::{self, Point};

/// How a copy behaves.
#[derive(Clone, Debug)]
pub struct CopyOptions {
    /// Blobs in flight at once.
    pub jobs: usize,
    /// Copy signatures, SBOMs and attestations that refer to the image.
    pub referrers: bool,
    /// Copy only this platform (`os/arch[/variant]`) of an index.
    pub platform: Option<String>,
    /// More tags to set on the target, besides the target reference's own.
    pub extra_tags: Vec<Tag>,
}

impl Default for CopyOptions {
    fn default() -> Self {
        CopyOptions { jobs: 4, referrers: true, platform: None, extra_tags: Vec::new() }
    }
}

/// Who Ferry is to the registries of one copy.
#[derive(Debug, Default)]
pub struct Access {
    pub client: ClientOptions,
    pub source_credential: Option<Credential>,
    pub target_credential: Option<Credential>,
    pub docker_config: DockerConfig,
}

/// Live counters for a progress display.
#[derive(Debug, Default)]
pub struct Progress {
    pub blobs_total: AtomicU64,
    pub blobs_done: AtomicU64,
    pub bytes_total: AtomicU64,
    pub bytes_moved: AtomicU64,
}

/// What a copy did, as printed by `ferry copy --json`.
#[derive(Debug, Default, Clone, Serialize)]
pub struct CopyReport {
    pub source: String,
    pub target: String,
    pub digest: String,
    pub media_type: String,
    /// Blob bytes streamed to the target (blobs it already had or mounted count 0).
    pub bytes_transferred: u64,
    /// Manifest bytes pushed to the target: every manifest PUT, one per tag set on the root.
    pub manifest_bytes: u64,
    pub blobs_copied: u64,
    pub blobs_mounted: u64,
    pub blobs_skipped: u64,
    pub manifests_copied: u64,
    pub referrers_copied: u64,
    pub seconds: f64,
    /// Set when `--platform` narrowed an index to one of its manifests.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub platform: Option<String>,
}

enum Source {
    Registry { client: Arc<RegistryClient>, repository: String },
    Layout(OciLayout),
    Archive(Box<DockerArchive>),
}

enum Target {
    Registry { client: Arc<RegistryClient>, repository: String },
    Layout(OciLayout),
}

enum BlobOutcome {
    Skipped,
    Mounted,
    Copied(u64),
}

#[derive(Default)]
struct Counters {
    bytes: AtomicU64,
    manifest_bytes: AtomicU64,
    copied: AtomicU64,
    mounted: AtomicU64,
    skipped: AtomicU64,
}

/// Copies `source` to `target` and verifies the target's digest equals the source's.
pub async fn copy(
    source: &Location,
    target: &Location,
    access: &Access,
    options: &CopyOptions,
    progress: Arc<Progress>,
) -> Result<CopyReport, CopyError> {
    let started = Instant::now();
    let http = HttpClients::new(&access.client)?;
    let source_client = |r: &RegistryRef| {
        let credential =
            access.source_credential.clone().or_else(|| access.docker_config.credential_for(&r.registry).cloned());
        RegistryClient::new(http.for_registry(r.api_host()), r.api_host(), &access.client, credential)
    };
    let target_credential = |r: &RegistryRef| {
        access.target_credential.clone().or_else(|| access.docker_config.credential_for(&r.registry).cloned())
    };

    let (src, src_tag, mut root) = match source {
        Location::Registry(r) => {
            let client = source_client(r)?;
            let reference = r.image.api_reference();
            let root = client.get_manifest(&r.repository, &reference).await?;
            // `repo` alone means `repo:latest`, and that tag travels to the target.
            let tag =
                r.image.tag.clone().or_else(|| r.image.digest.is_none().then(|| "latest".parse().expect("valid tag")));
            (Source::Registry { client, repository: r.repository.clone() }, tag, root)
        }
        Location::OciLayout { dir, tag } => {
            let layout = OciLayout::open(dir)?;
            let descriptor = layout.resolve(tag.as_ref()).await?;
            let root = layout.read_manifest(&descriptor.digest, Some(&descriptor.media_type)).await?;
            (Source::Layout(layout), tag.clone(), root)
        }
        Location::DockerArchive { file } => {
            let archive = DockerArchive::open(file).await?;
            let root = archive.manifest().clone();
            (Source::Archive(Box::new(archive)), None, root)
        }
    };

    let (dst, dst_tag, wanted_digest) = match target {
        Location::Registry(r) => {
            let source_host = match &src {
                Source::Registry { client, .. } => Some(client.clone()),
                _ => None,
            };
            let credential = target_credential(r);
            // Same registry and same identity: share one client, so tokens and connections are reused.
            let client = match source_host {
                Some(c)
                    if c.host() == r.api_host()
                        && (access.target_credential.is_none()
                            || access.source_credential == access.target_credential) =>
                {
                    c
                }
                _ => RegistryClient::new(http.for_registry(r.api_host()), r.api_host(), &access.client, credential)?,
            };
            // A target written without a tag takes the source's tag.
            let tag = r.image.tag.clone().or_else(|| src_tag.clone());
            (Target::Registry { client, repository: r.repository.clone() }, tag, r.image.digest.clone())
        }
        Location::OciLayout { dir, tag } => {
            (Target::Layout(OciLayout::create(dir).await?), tag.clone().or_else(|| src_tag.clone()), None)
        }
        Location::DockerArchive { .. } => {
            return Err(CopyError::Invalid(
                "docker-archive: is a source only; copy to a registry or to oci:DIR".into(),
            ));
        }
    };

    let mut platform = None;
    if let Some(wanted) = &options.platform {
        if root.is_index() {
            let child = root
                .manifests
                .iter()
                .find(|d| d.platform.as_ref().is_some_and(|p| p.matches(wanted)))
                .cloned()
                .ok_or_else(|| {
                    CopyError::Invalid(format!("{source}: the index has no manifest for platform {wanted}"))
                })?;
            root = fetch_manifest(&src, &child).await?;
            platform = Some(wanted.clone());
            tracing::warn!(platform = %wanted, digest = %root.digest, "--platform: copying one platform's manifest, not the whole index");
        }
    }
    if let Some(wanted) = &wanted_digest {
        if *wanted != root.digest {
            return Err(CopyError::DigestMismatch {
                what: format!("target reference {target}"),
                expected: wanted.clone(),
                actual: root.digest.clone(),
            });
        }
    }

    let engine = Engine { src, dst, options: options.clone(), progress, counters: Counters::default() };
    let mut copied = HashSet::new();
    let manifests = engine.copy_tree(&root, &mut copied).await?;
    failpoint::hit(Point::AfterCopyBeforeTag).await;
    engine.push_root(&root, dst_tag.as_ref()).await?;
    for tag in &options.extra_tags {
        if Some(tag) != dst_tag.as_ref() {
            engine.push_root(&root, Some(tag)).await?;
        }
    }

    let mut referrers_copied = 0;
    if options.referrers {
        let subjects: Vec<Digest> = manifests.iter().map(|m| m.digest.clone()).collect();
        referrers_copied = engine.copy_referrers(subjects, &mut copied).await?;
    }

    Ok(CopyReport {
        source: source.to_string(),
        target: target.to_string(),
        digest: root.digest.to_string(),
        media_type: root.media_type.clone(),
        bytes_transferred: engine.counters.bytes.load(Ordering::Relaxed),
        manifest_bytes: engine.counters.manifest_bytes.load(Ordering::Relaxed),
        blobs_copied: engine.counters.copied.load(Ordering::Relaxed),
        blobs_mounted: engine.counters.mounted.load(Ordering::Relaxed),
        blobs_skipped: engine.counters.skipped.load(Ordering::Relaxed),
        manifests_copied: copied.len() as u64,
        referrers_copied,
        seconds: started.elapsed().as_secs_f64(),
        platform,
    })
}

impl CopyReport {
    /// Everything this copy sent to the target: blob bytes streamed plus manifest bytes pushed.
    pub fn bytes_moved(&self) -> u64 {
        self.bytes_transferred + self.manifest_bytes
    }
}

impl Source {
    /// Names the source in errors: `host/repo`, the layout directory, or the tarball.
    fn describe(&self) -> String {
        match self {
            Source::Registry { client, repository } => format!("{}/{repository}", client.host()),
            Source::Layout(layout) => layout.dir().display().to_string(),
            Source::Archive(archive) => archive.file().display().to_string(),
        }
    }
}

async fn fetch_manifest(src: &Source, descriptor: &Descriptor) -> Result<Manifest, CopyError> {
    match src {
        Source::Registry { client, repository } => client.get_manifest(repository, descriptor.digest.as_str()).await,
        Source::Layout(layout) => layout.read_manifest(&descriptor.digest, Some(&descriptor.media_type)).await,
        Source::Archive(archive) => archive.read_manifest(descriptor).await,
    }
}

struct Engine {
    src: Source,
    dst: Target,
    options: CopyOptions,
    progress: Arc<Progress>,
    counters: Counters,
}

impl Engine {
    /// Copies a manifest's whole tree except the root manifest itself; returns every manifest
    /// in it (root last). `copied` holds manifest digests already pushed.
    async fn copy_tree(&self, root: &Manifest, copied: &mut HashSet<Digest>) -> Result<Vec<Manifest>, CopyError> {
        // Walk: children before parents; blobs de-duplicated across platforms.
        let mut order = Vec::new();
        let mut blobs: HashMap<Digest, Descriptor> = HashMap::new();
        let mut pending = vec![(root.clone(), false)];
        while let Some((manifest, expanded)) = pending.pop() {
            if expanded || manifest.manifests.is_empty() {
                for blob in &manifest.blobs {
                    blobs.entry(blob.digest.clone()).or_insert_with(|| blob.clone());
                }
                order.push(manifest);
                continue;
            }
            let children = manifest.manifests.clone();
            pending.push((manifest, true));
            for child in children.iter().rev() {
                if order.iter().any(|m: &Manifest| m.digest == child.digest) {
                    continue;
                }
                pending.push((fetch_manifest(&self.src, child).await?, false));
            }
        }

        let mut blobs: Vec<Descriptor> = blobs.into_values().collect();
        // Largest first keeps every transfer slot busy until the end.
        blobs.sort_by_key(|b| std::cmp::Reverse(b.size));
        self.progress.blobs_total.fetch_add(blobs.len() as u64, Ordering::Relaxed);
        self.progress.bytes_total.fetch_add(blobs.iter().map(|b| b.size).sum(), Ordering::Relaxed);
        // Boxed as `Send` futures: the closure's borrowed futures otherwise defeat rustc's Send
        // inference when a copy runs inside a spawned task (the worker).
        let transfers: Vec<futures_util::future::BoxFuture<'_, Result<BlobOutcome, CopyError>>> = blobs
            .iter()
            .map(|blob| {
                Box::pin(async move {
                    let outcome = self.copy_blob(blob).await?;
                    if matches!(outcome, BlobOutcome::Copied(_)) {
                        failpoint::hit(Point::AfterBlobCopied).await;
                    }
                    Ok(outcome)
                }) as _
            })
            .collect();
        futures_util::stream::iter(transfers)
            .buffer_unordered(self.options.jobs.max(1))
            .try_for_each(|outcome| {
                let counter = match outcome {
                    BlobOutcome::Skipped => &self.counters.skipped,
                    BlobOutcome::Mounted => &self.counters.mounted,
                    BlobOutcome::Copied(bytes) => {
                        self.counters.bytes.fetch_add(bytes, Ordering::Relaxed);
                        &self.counters.copied
                    }
                };
                counter.fetch_add(1, Ordering::Relaxed);
                self.progress.blobs_done.fetch_add(1, Ordering::Relaxed);
                futures_util::future::ready(Ok(()))
            })
            .await?;

        // Children by digest, bottom-up; the root is pushed by the caller (it may carry a tag).
        for manifest in &order {
            if manifest.digest != root.digest && copied.insert(manifest.digest.clone()) {
                self.push_manifest(manifest, None).await?;
            }
        }
        copied.insert(root.digest.clone());
        Ok(order)
    }

    async fn push_root(&self, root: &Manifest, tag: Option<&Tag>) -> Result<(), CopyError> {
        self.push_manifest(root, tag).await?;
        self.verify(root, tag).await
    }

    async fn push_manifest(&self, manifest: &Manifest, tag: Option<&Tag>) -> Result<bool, CopyError> {
        match &self.dst {
            Target::Registry { client, repository } => {
                let reference = tag.map(Tag::to_string).unwrap_or_else(|| manifest.digest.to_string());
                let pushed = client
                    .retry()
                    .run("push manifest", || client.put_manifest(repository, &reference, manifest))
                    .await?;
                self.counters.manifest_bytes.fetch_add(manifest.bytes.len() as u64, Ordering::Relaxed);
                if let Some(digest) = pushed.digest {
                    if digest != manifest.digest {
                        return Err(CopyError::DigestMismatch {
                            what: format!("manifest pushed to {}/{repository}:{reference}", client.host()),
                            expected: manifest.digest.clone(),
                            actual: digest,
                        });
                    }
                }
                Ok(pushed.registry_tracks_subject)
            }
            Target::Layout(layout) => {
                layout.write_manifest(manifest).await?;
                self.counters.manifest_bytes.fetch_add(manifest.bytes.len() as u64, Ordering::Relaxed);
                if tag.is_some() || manifest.subject.is_some() {
                    layout.add_to_index(manifest.descriptor(), tag).await?;
                }
                Ok(true)
            }
        }
    }

    /// Reads the target's digest for what was just pushed and compares it with the source's.
    async fn verify(&self, root: &Manifest, tag: Option<&Tag>) -> Result<(), CopyError> {
        let (actual, what) = match &self.dst {
            Target::Registry { client, repository } => {
                let reference = tag.map(Tag::to_string).unwrap_or_else(|| root.digest.to_string());
                let actual = client.head_manifest(repository, &reference, &vec![push_scope(repository)]).await?;
                (actual, format!("{}/{repository}:{reference}", client.host()))
            }
            Target::Layout(layout) => {
                let descriptor = match tag {
                    Some(tag) => Some(layout.resolve(Some(tag)).await?.digest),
                    None => layout.has_blob(&root.digest).await.then(|| root.digest.clone()),
                };
                let actual = match descriptor {
                    Some(digest) => Some(layout.read_manifest(&digest, Some(&root.media_type)).await?.digest),
                    None => None,
                };
                (actual, layout.dir().display().to_string())
            }
        };
        match actual {
            Some(actual) if actual == root.digest => Ok(()),
            Some(actual) => Err(CopyError::DigestMismatch {
                what: format!("target {what} after push"),
                expected: root.digest.clone(),
                actual,
            }),
            None => Err(CopyError::Invalid(format!("target {what}: the manifest just pushed cannot be found"))),
        }
    }

    async fn copy_blob(&self, blob: &Descriptor) -> Result<BlobOutcome, CopyError> {
        match &self.dst {
            Target::Registry { client, repository } => {
                let scope = vec![push_scope(repository)];
                if client.head_blob(repository, &blob.digest, &scope).await?.is_some() {
                    return Ok(BlobOutcome::Skipped);
                }
                let mut session = None;
                if let Source::Registry { client: source, repository: from } = &self.src {
                    if source.host() == client.host() && from != repository {
                        match client.start_upload(repository, Some((&blob.digest, from))).await? {
                            UploadStart::Mounted => return Ok(BlobOutcome::Mounted),
                            UploadStart::Session(url) => session = Some(url),
                        }
                    }
                }
                let session = std::sync::Mutex::new(session);
                client
                    .retry()
                    .run("blob transfer", || async {
                        let reused = session.lock().expect("not poisoned").take();
                        let url = match reused {
                            Some(url) => url,
                            None => match client.start_upload(repository, None).await? {
                                UploadStart::Session(url) => url,
                                UploadStart::Mounted => unreachable!("no mount was asked for"),
                            },
                        };
                        // The body streams from the source: when the upload fails, find out
                        // which side broke, so the error names the right registry.
                        let source_failure = Arc::new(std::sync::Mutex::new(None::<String>));
                        let meter = Arc::new(TransferMeter::default());
                        let transfer = async {
                            let (stream, size) = self.open_blob(blob).await?;
                            let failure_slot = source_failure.clone();
                            let stream = stream
                                .inspect_err(move |e| *failure_slot.lock().expect("not poisoned") = Some(e.to_string()))
                                .boxed();
                            let body = reqwest::Body::wrap_stream(meter.meter(self.counted(stream)));
                            client.finish_upload(repository, url, &blob.digest, size, body).await.map(|()| size)
                        };
                        let deadlines = client.deadlines();
                        let result = match meter.guard(transfer, deadlines.blob_min_bytes, deadlines.blob_window).await
                        {
                            Ok(result) => result,
                            Err(side) => return Err(self.stalled(blob, side, client.host())),
                        };
                        let source_failure = source_failure.lock().expect("not poisoned").take();
                        match result {
                            Ok(size) => Ok(BlobOutcome::Copied(size)),
                            Err(err) => Err(self.blame(blob, err, source_failure)),
                        }
                    })
                    .await
            }
            Target::Layout(layout) => {
                if layout.has_blob(&blob.digest).await {
                    return Ok(BlobOutcome::Skipped);
                }
                let (retry, deadlines) = match &self.src {
                    Source::Registry { client, .. } => (*client.retry(), *client.deadlines()),
                    _ => Default::default(),
                };
                retry
                    .run("blob transfer", || async {
                        let meter = Arc::new(TransferMeter::default());
                        let transfer = async {
                            let (stream, _) = self.open_blob(blob).await?;
                            let stream = meter.meter(self.counted(stream));
                            layout.write_blob(&blob.digest, stream, &self.src.describe()).await
                        };
                        match meter.guard(transfer, deadlines.blob_min_bytes, deadlines.blob_window).await {
                            Ok(written) => Ok(BlobOutcome::Copied(written?)),
                            Err(side) => Err(self.stalled(blob, side, &layout.dir().display().to_string())),
                        }
                    })
                    .await
            }
        }
    }

    /// A blob transfer that fell below the minimum throughput, blamed on the side it waited on.
    fn stalled(&self, blob: &Descriptor, side: StalledSide, target: &str) -> CopyError {
        let deadlines = match (&self.src, &self.dst) {
            (Source::Registry { client, .. }, _) | (_, Target::Registry { client, .. }) => *client.deadlines(),
            _ => Default::default(),
        };
        let (registry, what) = match side {
            StalledSide::Source => (self.src.describe(), format!("reading blob {}", blob.digest)),
            StalledSide::Target => (target.to_string(), format!("uploading blob {}", blob.digest)),
        };
        CopyError::Stalled { registry, what, min_bytes: deadlines.blob_min_bytes, window: deadlines.blob_window }
    }

    /// Attributes a failed upload: a broken source stream is the source's (retryable) error, a
    /// blob the target refused as `DIGEST_INVALID` was corrupt at the source.
    fn blame(&self, blob: &Descriptor, err: CopyError, source_failure: Option<String>) -> CopyError {
        if let Some(detail) = source_failure {
            return CopyError::Transport {
                registry: self.src.describe(),
                detail: format!("reading blob {}: {detail}", blob.digest),
                hint: String::new(),
            };
        }
        match err {
            CopyError::Status { status: 400, remote, .. } if remote.iter().any(|r| r.code == "DIGEST_INVALID") => {
                CopyError::CorruptBlob {
                    source_name: self.src.describe(),
                    digest: blob.digest.clone(),
                    detail: "the target registry refused the bytes with DIGEST_INVALID".into(),
                }
            }
            other => other,
        }
    }

    async fn open_blob(&self, blob: &Descriptor) -> Result<(BlobStream, u64), CopyError> {
        match &self.src {
            Source::Registry { client, repository } => {
                let response = client.get_blob(repository, &blob.digest).await?;
                if let Some(length) = response.content_length() {
                    if length != blob.size {
                        return Err(CopyError::Invalid(format!(
                            "{}/{repository}: blob {} is {length} bytes, its manifest says {}",
                            client.host(),
                            blob.digest,
                            blob.size
                        )));
                    }
                }
                let stream = response.bytes_stream().map_err(std::io::Error::other).boxed();
                Ok((stream, blob.size))
            }
            Source::Layout(layout) => layout.open_blob(&blob.digest).await,
            Source::Archive(archive) => archive.open_blob(&blob.digest).await,
        }
    }

    /// Counts bytes into the progress display as they pass.
    fn counted(&self, stream: BlobStream) -> BlobStream {
        let progress = self.progress.clone();
        stream
            .inspect_ok(move |chunk| {
                progress.bytes_moved.fetch_add(chunk.len() as u64, Ordering::Relaxed);
            })
            .boxed()
    }

    /// Copies every artifact that refers to one of `subjects` (and, in turn, what refers to
    /// those), and keeps the target's referrers discoverable.
    async fn copy_referrers(&self, mut subjects: Vec<Digest>, copied: &mut HashSet<Digest>) -> Result<u64, CopyError> {
        let mut count = 0;
        let mut depth = 0;
        while !subjects.is_empty() && depth < 4 {
            depth += 1;
            let mut next = Vec::new();
            for subject in subjects {
                let referrers = self.list_referrers(&subject).await?;
                if referrers.is_empty() {
                    continue;
                }
                let mut fallback_needed = false;
                for descriptor in &referrers {
                    if copied.contains(&descriptor.digest) {
                        continue;
                    }
                    let manifest = fetch_manifest(&self.src, descriptor).await?;
                    let tree = self.copy_tree(&manifest, copied).await?;
                    let tracked = self.push_manifest(&manifest, None).await?;
                    fallback_needed |= !tracked;
                    count += 1;
                    next.extend(tree.into_iter().map(|m| m.digest));
                }
                if fallback_needed {
                    self.update_fallback_tag(&subject, &referrers).await?;
                }
            }
            subjects = next;
        }
        Ok(count)
    }

    async fn list_referrers(&self, subject: &Digest) -> Result<Vec<Descriptor>, CopyError> {
        match &self.src {
            Source::Registry { client, repository } => {
                if let Some(list) = client.referrers(repository, subject).await? {
                    return Ok(list);
                }
                match client.get_manifest(repository, subject.referrers_tag().as_str()).await {
                    Ok(index) => Ok(index.manifests),
                    Err(CopyError::NotFound { .. }) => Ok(Vec::new()),
                    Err(e) => Err(e),
                }
            }
            Source::Layout(layout) => layout.referrers(subject).await,
            Source::Archive(_) => Ok(Vec::new()),
        }
    }

    /// For registries without the referrers API: merge `referrers` into the target's
    /// `sha256-<hex>` tag index.
    async fn update_fallback_tag(&self, subject: &Digest, referrers: &[Descriptor]) -> Result<(), CopyError> {
        let Target::Registry { client, repository } = &self.dst else {
            return Ok(());
        };
        let tag = subject.referrers_tag();
        let mut entries = match client.get_manifest(repository, tag.as_str()).await {
            Ok(existing) => existing.manifests,
            Err(CopyError::NotFound { .. }) => Vec::new(),
            Err(e) => return Err(e),
        };
        let before = entries.len();
        for referrer in referrers {
            if !entries.iter().any(|e| e.digest == referrer.digest) {
                entries.push(referrer.clone());
            }
        }
        if entries.len() == before && before > 0 {
            return Ok(());
        }
        let bytes = bytes::Bytes::from(serde_json::to_vec(&ImageIndex::new(entries)).expect("index serializes"));
        let digest = Digest::sha256_of(&bytes);
        let index = Manifest::parse(bytes, Some(OCI_INDEX), digest).expect("Ferry's own index parses");
        client.put_manifest(repository, tag.as_str(), &index).await?;
        Ok(())
    }
}

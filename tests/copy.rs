//! `ferry copy` against real registries (CNCF distribution), OCI layouts,
//! docker archives and a misbehaving registry proxy.
//!
//! Every successful copy is checked the same way: the manifest read back from
//! the target has the source's digest, both as the registry reports it
//! (`Docker-Content-Digest`) and as the sha256 of the bytes served, and the
//! bytes are identical.

mod support;

use std::fs;
use std::path::Path;
use std::time::Duration;

use serde_json::json;
use support::*;

const MIB: usize = 1024 * 1024;
const SBOM: &str = "application/vnd.example.sbom+json";

/// Push a fresh single-platform OCI image with `layer_sizes` to `repo_and_tag`.
fn push_image(registry: &Registry, repo_and_tag: &str, layer_sizes: &[usize]) -> (Image, Manifest) {
    let mut layout = OciLayout::new();
    let image = layout.add_image("src", layer_sizes);
    let pushed = registry.skopeo_push(&layout.reference("src"), repo_and_tag, &[]);
    assert_eq!(pushed.digest, image.digest(), "skopeo changed the manifest while pushing it");
    (image, pushed)
}

/// The target serves exactly `digest` / `bytes` at `repo` `reference`.
fn assert_manifest_at(target: &RegistryClient, repo: &str, reference: &str, digest: &str, bytes: &[u8]) -> Manifest {
    let copied =
        target.manifest(repo, reference).unwrap_or_else(|| panic!("{repo}:{reference} is missing at the target"));
    assert_eq!(copied.digest, digest, "Docker-Content-Digest of {repo}:{reference} at the target");
    assert_eq!(
        copied.computed_digest(),
        digest,
        "sha256 of the manifest bytes the target serves for {repo}:{reference}"
    );
    assert!(copied.bytes == bytes, "manifest bytes of {repo}:{reference} differ from the source");
    copied
}

/// The target serves the very manifest `source` at `repo` `reference`.
fn assert_digest_exact(source: &Manifest, target: &RegistryClient, repo: &str, reference: &str) -> Manifest {
    assert_eq!(source.computed_digest(), source.digest, "source registry digest");
    let copied = assert_manifest_at(target, repo, reference, &source.digest, &source.bytes);
    assert_eq!(copied.content_type, source.content_type, "media type of {repo}:{reference} at the target");
    copied
}

fn assert_blobs_present(target: &RegistryClient, repo: &str, blobs: &[Descriptor]) {
    for blob in blobs {
        assert!(
            target.blob_exists(repo, &blob.digest),
            "blob {} ({} bytes) is missing from {repo} at the target",
            blob.digest,
            blob.size
        );
    }
}

fn assert_nothing_pushed(target: &Registry, repo: &str, reference: &str) {
    assert!(
        target.client().manifest(repo, reference).is_none(),
        "{repo}:{reference} exists at the target after a failed copy"
    );
}

/// A cold copy moved every blob once, and about their bytes.
fn assert_cold_copy_counts(report: &CopyReport, blobs: &[Descriptor]) {
    let blob_bytes: u64 = blobs.iter().map(|b| b.size).sum();
    assert_eq!(report.blobs_copied, blobs.len() as u64, "blobs_copied: {}", report.raw);
    assert_eq!(report.blobs_mounted, 0, "blobs_mounted: {}", report.raw);
    assert_eq!(report.blobs_skipped, 0, "blobs_skipped: {}", report.raw);
    assert!(
        report.bytes_transferred >= blob_bytes && report.bytes_transferred <= blob_bytes + MIB as u64,
        "bytes_transferred {} for {blob_bytes} bytes of blobs: {}",
        report.bytes_transferred,
        report.raw
    );
}

fn lowercase(text: &str) -> String {
    text.to_lowercase()
}

#[test]
fn single_platform_oci_image_copies_digest_exact() {
    let src = Registry::plain();
    let dst = Registry::plain();
    let (image, source) = push_image(&src, "team/app:1.0", &[300 * 1024, 20 * 1024]);

    let report = ferry_copy()
        .arg("--json")
        .args(src.transport_args())
        .args(dst.transport_args())
        .arg(src.reference("team/app:1.0"))
        .arg(dst.reference("prod/app:1.0"))
        .run()
        .report();

    assert_eq!(report.digest, image.digest());
    assert_eq!(report.media_type, media_type::OCI_MANIFEST);
    assert_digest_exact(&source, dst.client(), "prod/app", "1.0");
    assert_blobs_present(dst.client(), "prod/app", &image.blobs());
    assert_cold_copy_counts(&report, &image.blobs());
    assert_eq!(report.referrers_copied, 0);
}

#[test]
fn multi_platform_index_copies_every_platform() {
    let src = Registry::plain();
    let dst = Registry::plain();
    let mut layout = OciLayout::new();
    let index = layout.add_index("src", &[120 * 1024, 10 * 1024]);
    let source = src.skopeo_push(&layout.reference("src"), "team/app:multi", &["--all"]);
    assert_eq!(source.digest, index.digest());

    let report = ferry_copy()
        .arg("--json")
        .args(src.transport_args())
        .args(dst.transport_args())
        .arg(src.reference("team/app:multi"))
        .arg(dst.reference("prod/app:multi"))
        .run()
        .report();

    assert_eq!(report.digest, index.digest());
    assert_eq!(report.media_type, media_type::OCI_INDEX);
    let copied = assert_digest_exact(&source, dst.client(), "prod/app", "multi");
    assert_eq!(copied.children().len(), 2);
    for child in &index.children {
        assert_manifest_at(dst.client(), "prod/app", child.digest(), child.digest(), &child.bytes);
        assert_blobs_present(dst.client(), "prod/app", &child.blobs());
    }
    assert_cold_copy_counts(&report, &index.blobs());
}

#[test]
fn docker_schema2_manifest_keeps_its_media_type() {
    let src = Registry::plain();
    let dst = Registry::plain();
    let mut layout = OciLayout::new();
    layout.add_image("src", &[64 * 1024]);
    let source = src.skopeo_push(&layout.reference("src"), "team/app:v2s2", &["--format", "v2s2"]);
    assert_eq!(source.content_type, media_type::DOCKER_MANIFEST);

    let report = ferry_copy()
        .arg("--json")
        .args(src.transport_args())
        .args(dst.transport_args())
        .arg(src.reference("team/app:v2s2"))
        .arg(dst.reference("prod/app:v2s2"))
        .run()
        .report();

    assert_eq!(report.digest, source.digest);
    assert_eq!(report.media_type, media_type::DOCKER_MANIFEST);
    let copied = assert_digest_exact(&source, dst.client(), "prod/app", "v2s2");
    assert_eq!(copied.content_type, media_type::DOCKER_MANIFEST);
    assert_eq!(copied.json()["mediaType"], media_type::DOCKER_MANIFEST);
    assert_blobs_present(dst.client(), "prod/app", &copied.blobs());
}

#[test]
fn referrer_artifact_travels_with_the_image() {
    let src = Registry::plain();
    let dst = Registry::plain();
    let (image, source) = push_image(&src, "team/app:1.0", &[40 * 1024]);
    let referrer = src.client().push_referrer("team/app", &source, SBOM);

    let report = ferry_copy()
        .arg("--json")
        .args(src.transport_args())
        .args(dst.transport_args())
        .arg(src.reference("team/app:1.0"))
        .arg(dst.reference("prod/app:1.0"))
        .run()
        .report();

    assert_eq!(report.digest, image.digest());
    assert_digest_exact(&source, dst.client(), "prod/app", "1.0");
    assert_eq!(report.referrers_copied, 1, "referrers_copied: {}", report.raw);
    let copied = assert_digest_exact(&referrer.manifest, dst.client(), "prod/app", &referrer.manifest.digest);
    assert_eq!(copied.json()["subject"]["digest"], image.digest());
    assert_blobs_present(dst.client(), "prod/app", &referrer.blobs);

    let fallback = dst
        .client()
        .manifest("prod/app", &referrer.fallback_tag)
        .unwrap_or_else(|| panic!("referrers fallback tag {} missing at the target", referrer.fallback_tag));
    let listed: Vec<String> = fallback.children().into_iter().map(|d| d.digest).collect();
    assert!(
        listed.contains(&referrer.manifest.digest),
        "fallback index at the target does not list the referrer: {listed:?}"
    );
}

#[test]
fn no_referrers_flag_leaves_referrers_behind() {
    let src = Registry::plain();
    let dst = Registry::plain();
    let (image, source) = push_image(&src, "team/app:1.0", &[40 * 1024]);
    let referrer = src.client().push_referrer("team/app", &source, SBOM);

    let report = ferry_copy()
        .arg("--json")
        .arg("--no-referrers")
        .args(src.transport_args())
        .args(dst.transport_args())
        .arg(src.reference("team/app:1.0"))
        .arg(dst.reference("prod/app:1.0"))
        .run()
        .report();

    assert_eq!(report.digest, image.digest());
    assert_digest_exact(&source, dst.client(), "prod/app", "1.0");
    assert_eq!(report.referrers_copied, 0, "referrers_copied: {}", report.raw);
    assert!(
        dst.client().manifest("prod/app", &referrer.manifest.digest).is_none(),
        "--no-referrers still copied the referrer manifest"
    );
    assert!(
        dst.client().manifest("prod/app", &referrer.fallback_tag).is_none(),
        "--no-referrers still created the referrers fallback tag"
    );
    assert_eq!(dst.client().tags("prod/app"), vec!["1.0".to_string()]);
}

#[test]
fn image_over_200_mib_streams_in_small_memory() {
    let src = Registry::plain();
    let dst = Registry::plain();
    let (image, source) = push_image(&src, "team/big:1.0", &[70 * MIB, 70 * MIB, 70 * MIB]);
    assert!(image.blob_bytes() > 200 * MIB as u64);

    let run = ferry_copy()
        .arg("--json")
        .args(src.transport_args())
        .args(dst.transport_args())
        .arg(src.reference("team/big:1.0"))
        .arg(dst.reference("prod/big:1.0"))
        .measure_memory()
        .timeout(Duration::from_secs(300))
        .run();
    let report = run.report();

    assert_eq!(report.digest, image.digest());
    assert_digest_exact(&source, dst.client(), "prod/big", "1.0");
    assert_blobs_present(dst.client(), "prod/big", &image.blobs());
    assert_cold_copy_counts(&report, &image.blobs());
    let peak_kib = run.max_rss_kib.expect("peak RSS measured");
    assert!(
        peak_kib < 64 * 1024,
        "ferry peaked at {} MiB resident copying {} MiB; blobs must be streamed",
        peak_kib / 1024,
        image.blob_bytes() / MIB as u64
    );
}

#[test]
fn same_registry_copy_mounts_blobs_across_repositories() {
    let registry = Registry::plain();
    let (image, source) = push_image(&registry, "team/app:1.0", &[200 * 1024, 30 * 1024]);

    let report = ferry_copy()
        .arg("--json")
        .args(registry.transport_args())
        .arg(registry.reference("team/app:1.0"))
        .arg(registry.reference("prod/app:1.0"))
        .run()
        .report();

    assert_eq!(report.digest, image.digest());
    assert_digest_exact(&source, registry.client(), "prod/app", "1.0");
    assert_blobs_present(registry.client(), "prod/app", &image.blobs());
    assert!(report.blobs_mounted > 0, "no blob mounted: {}", report.raw);
    assert_eq!(
        report.blobs_mounted,
        image.blobs().len() as u64,
        "every blob can be mounted within one registry: {}",
        report.raw
    );
    assert_eq!(report.blobs_copied, 0, "blobs_copied: {}", report.raw);
    assert_eq!(report.bytes_transferred, 0, "a mount moves no blob bytes: {}", report.raw);
}

#[test]
fn warm_copy_skips_every_blob() {
    let src = Registry::plain();
    let dst = Registry::plain();
    let (image, source) = push_image(&src, "team/app:1.0", &[150 * 1024, 10 * 1024]);
    let copy = || {
        ferry_copy()
            .arg("--json")
            .args(src.transport_args())
            .args(dst.transport_args())
            .arg(src.reference("team/app:1.0"))
            .arg(dst.reference("prod/app:1.0"))
            .run()
            .report()
    };

    let cold = copy();
    assert_cold_copy_counts(&cold, &image.blobs());
    let warm = copy();

    assert_eq!(warm.digest, image.digest());
    assert_digest_exact(&source, dst.client(), "prod/app", "1.0");
    assert_eq!(warm.blobs_skipped, image.blobs().len() as u64, "blobs_skipped: {}", warm.raw);
    assert_eq!(warm.blobs_copied, 0, "blobs_copied: {}", warm.raw);
    assert_eq!(warm.blobs_mounted, 0, "blobs_mounted: {}", warm.raw);
    assert_eq!(warm.bytes_transferred, 0, "bytes_transferred: {}", warm.raw);
}

#[test]
fn oci_layout_source_copies_to_a_registry() {
    let dst = Registry::plain();
    let mut layout = OciLayout::new();
    let image = layout.add_image("1.0", &[100 * 1024, 5 * 1024]);

    let report = ferry_copy()
        .arg("--json")
        .args(dst.transport_args())
        .arg(layout.reference("1.0"))
        .arg(dst.reference("prod/app:1.0"))
        .run()
        .report();

    assert_eq!(report.digest, image.digest());
    assert_eq!(report.media_type, media_type::OCI_MANIFEST);
    let copied = assert_manifest_at(dst.client(), "prod/app", "1.0", image.digest(), &image.bytes);
    assert_eq!(copied.content_type, media_type::OCI_MANIFEST);
    assert_blobs_present(dst.client(), "prod/app", &image.blobs());
    assert_cold_copy_counts(&report, &image.blobs());
}

#[test]
fn oci_layout_index_source_copies_every_platform() {
    let dst = Registry::plain();
    let mut layout = OciLayout::new();
    let index = layout.add_index("multi", &[50 * 1024]);

    let report = ferry_copy()
        .arg("--json")
        .args(dst.transport_args())
        .arg(layout.reference("multi"))
        .arg(dst.reference("prod/app:multi"))
        .run()
        .report();

    assert_eq!(report.digest, index.digest());
    assert_manifest_at(dst.client(), "prod/app", "multi", index.digest(), &index.bytes);
    for child in &index.children {
        assert_manifest_at(dst.client(), "prod/app", child.digest(), child.digest(), &child.bytes);
        assert_blobs_present(dst.client(), "prod/app", &child.blobs());
    }
}

#[test]
fn registry_image_copies_into_an_oci_layout_that_skopeo_reads() {
    let src = Registry::plain();
    let (image, source) = push_image(&src, "team/app:1.0", &[80 * 1024, 4 * 1024]);
    let out = tempfile::tempdir().expect("temp dir");
    let layout_dir = out.path().join("exported");

    let report = ferry_copy()
        .arg("--json")
        .args(src.transport_args())
        .arg(src.reference("team/app:1.0"))
        .arg(format!("oci:{}:1.0", layout_dir.display()))
        .run()
        .report();

    assert_eq!(report.digest, image.digest());
    assert!(layout_dir.join("oci-layout").is_file(), "no oci-layout file written");
    let tagged = layout::read_index_json(&layout_dir, "1.0")
        .expect("index.json names the tag with org.opencontainers.image.ref.name");
    assert_eq!(tagged.digest, source.digest);
    assert_eq!(tagged.size, source.bytes.len() as u64);
    let blob = |digest: &str| {
        let path = layout_dir.join("blobs/sha256").join(digest.trim_start_matches("sha256:"));
        fs::read(&path).unwrap_or_else(|e| panic!("{} unreadable: {e}", path.display()))
    };
    assert_eq!(blob(&source.digest), source.bytes);
    for descriptor in image.blobs() {
        let bytes = blob(&descriptor.digest);
        assert_eq!(bytes.len() as u64, descriptor.size);
        assert_eq!(sha256_digest(&bytes), descriptor.digest);
    }

    // A peer tool reads the layout back to the same digest.
    let check = Registry::plain();
    let reread = check.skopeo_push(&format!("oci:{}:1.0", layout_dir.display()), "check/app:1.0", &[]);
    assert_eq!(reread.digest, source.digest);
}

#[test]
fn docker_archive_source_pushes_the_archive_config() {
    let dst = Registry::plain();
    let mut layout = OciLayout::new();
    layout.add_image("src", &[90 * 1024, 3 * 1024]);
    let work = tempfile::tempdir().expect("temp dir");
    let archive = work.path().join("app.tar");
    let status = std::process::Command::new(support::tools::skopeo())
        .args(["--insecure-policy", "copy", "--quiet"])
        .arg(layout.reference("src"))
        .arg(format!("docker-archive:{}:team/app:1.0", archive.display()))
        .status()
        .expect("run skopeo");
    assert!(status.success(), "skopeo could not write the docker archive");
    let archive_config = docker_archive_config_digest(&archive);

    let report = ferry_copy()
        .arg("--json")
        .args(dst.transport_args())
        .arg(format!("docker-archive:{}", archive.display()))
        .arg(dst.reference("prod/app:1.0"))
        .run()
        .report();

    let copied = dst.client().manifest("prod/app", "1.0").expect("prod/app:1.0 at the target");
    assert_eq!(copied.digest, report.digest, "digest ferry reported vs target");
    assert_eq!(copied.computed_digest(), report.digest, "sha256 of target manifest");
    assert_eq!(
        copied.json()["config"]["digest"],
        archive_config.as_str(),
        "the target image's config is the archive's config"
    );
    assert_eq!(report.media_type, copied.content_type);
    let blobs = copied.blobs();
    assert_eq!(blobs.len(), 3, "config + 2 layers");
    assert_blobs_present(dst.client(), "prod/app", &blobs);
}

#[test]
fn htpasswd_registries_take_src_and_dest_creds() {
    let src = Registry::with_htpasswd("builder", "build-secret");
    let dst = Registry::with_htpasswd("releaser", "release-secret");
    let (image, source) = push_image(&src, "team/app:1.0", &[50 * 1024]);

    let report = ferry_copy()
        .arg("--json")
        .args(src.transport_args())
        .args(dst.transport_args())
        .args(["--src-creds", "builder:build-secret"])
        .args(["--dest-creds", "releaser:release-secret"])
        .arg(src.reference("team/app:1.0"))
        .arg(dst.reference("prod/app:1.0"))
        .run()
        .report();

    assert_eq!(report.digest, image.digest());
    assert_digest_exact(&source, dst.client(), "prod/app", "1.0");
    assert_blobs_present(dst.client(), "prod/app", &image.blobs());
}

#[test]
fn credentials_come_from_environment_variables() {
    let src = Registry::with_htpasswd("builder", "build-secret");
    let dst = Registry::with_htpasswd("releaser", "release-secret");
    let (image, source) = push_image(&src, "team/app:1.0", &[50 * 1024]);

    let report = ferry_copy()
        .arg("--json")
        .args(src.transport_args())
        .args(dst.transport_args())
        .env("FERRY_SRC_CREDS", "builder:build-secret")
        .env("FERRY_DEST_CREDS", "releaser:release-secret")
        .arg(src.reference("team/app:1.0"))
        .arg(dst.reference("prod/app:1.0"))
        .run()
        .report();

    assert_eq!(report.digest, image.digest());
    assert_digest_exact(&source, dst.client(), "prod/app", "1.0");
}

fn write_docker_config(dir: &Path, registries: &[&Registry]) -> std::path::PathBuf {
    let mut auths = serde_json::Map::new();
    for registry in registries {
        let creds = registry.credentials().expect("registry with credentials");
        auths.insert(registry.host().to_string(), json!({"auth": base64(creds.pair().as_bytes())}));
    }
    fs::create_dir_all(dir).expect("docker config dir");
    let path = dir.join("config.json");
    fs::write(&path, serde_json::to_vec_pretty(&json!({"auths": auths})).unwrap()).expect("write docker config.json");
    path
}

#[test]
fn authfile_supplies_credentials_for_both_registries() {
    let src = Registry::with_htpasswd("builder", "build-secret");
    let dst = Registry::with_htpasswd("releaser", "release-secret");
    let (image, source) = push_image(&src, "team/app:1.0", &[50 * 1024]);
    let work = tempfile::tempdir().expect("temp dir");
    let authfile = write_docker_config(&work.path().join("explicit"), &[&src, &dst]);

    let report = ferry_copy()
        .arg("--json")
        .args(src.transport_args())
        .args(dst.transport_args())
        .arg("--authfile")
        .arg(&authfile)
        .arg(src.reference("team/app:1.0"))
        .arg(dst.reference("prod/app:1.0"))
        .run()
        .report();
    assert_eq!(report.digest, image.digest());
    assert_digest_exact(&source, dst.client(), "prod/app", "1.0");

    // Without --authfile, $DOCKER_CONFIG/config.json is the default.
    let docker_config = work.path().join("docker-config");
    write_docker_config(&docker_config, &[&src, &dst]);
    let report = ferry_copy()
        .arg("--json")
        .args(src.transport_args())
        .args(dst.transport_args())
        .env("DOCKER_CONFIG", &docker_config)
        .arg(src.reference("team/app:1.0"))
        .arg(dst.reference("qa/app:1.0"))
        .run()
        .report();
    assert_eq!(report.digest, image.digest());
    assert_digest_exact(&source, dst.client(), "qa/app", "1.0");
}

#[test]
fn wrong_password_fails_naming_the_registry_and_authentication() {
    let src = Registry::plain();
    let dst = Registry::with_htpasswd("releaser", "release-secret");
    push_image(&src, "team/app:1.0", &[20 * 1024]);

    let run = ferry_copy()
        .args(src.transport_args())
        .args(dst.transport_args())
        .args(["--dest-creds", "releaser:not-the-password"])
        .arg(src.reference("team/app:1.0"))
        .arg(dst.reference("prod/app:1.0"))
        .timeout(Duration::from_secs(90))
        .run();

    let error = run.failure();
    assert!(error.contains(dst.host()), "error does not name the registry {}:\n{error}", dst.host());
    assert!(lowercase(error).contains("auth"), "error does not say authentication failed:\n{error}");
    assert!(!error.contains("not-the-password"), "error leaks the password:\n{error}");
    assert!(run.elapsed < Duration::from_secs(30), "a rejected password took {:?} to report", run.elapsed);
    assert_nothing_pushed(&dst, "prod/app", "1.0");
}

#[test]
fn tls_registry_is_trusted_with_ca_cert() {
    let src = Registry::plain();
    let dst = Registry::with_tls();
    let (image, source) = push_image(&src, "team/app:1.0", &[60 * 1024]);

    let report = ferry_copy()
        .arg("--json")
        .args(src.transport_args())
        .args(["--ca-cert".as_ref(), dst.ca_cert().as_os_str()])
        .arg(src.reference("team/app:1.0"))
        .arg(dst.reference("prod/app:1.0"))
        .run()
        .report();

    assert_eq!(report.digest, image.digest());
    assert_digest_exact(&source, dst.client(), "prod/app", "1.0");
    assert_blobs_present(dst.client(), "prod/app", &image.blobs());
}

#[test]
fn tls_registry_without_ca_cert_is_refused() {
    let src = Registry::plain();
    let dst = Registry::with_tls();
    push_image(&src, "team/app:1.0", &[20 * 1024]);

    let run = ferry_copy()
        .args(src.transport_args())
        .arg(src.reference("team/app:1.0"))
        .arg(dst.reference("prod/app:1.0"))
        .timeout(Duration::from_secs(90))
        .run();

    let error = run.failure();
    assert!(error.contains(dst.host()), "error does not name the registry {}:\n{error}", dst.host());
    let lower = lowercase(error);
    assert!(
        ["certificate", "tls", "ssl", "x509", "issuer"].iter().any(|w| lower.contains(w)),
        "error does not say the certificate was not trusted:\n{error}"
    );
    assert_nothing_pushed(&dst, "prod/app", "1.0");
}

#[test]
fn plain_http_is_not_used_unless_asked() {
    let src = Registry::plain();
    let dst = Registry::plain();
    push_image(&src, "team/app:1.0", &[20 * 1024]);

    let run = ferry_copy()
        .args(["--plain-http", src.host()])
        .arg(src.reference("team/app:1.0"))
        .arg(dst.reference("prod/app:1.0"))
        .timeout(Duration::from_secs(90))
        .run();

    let error = run.failure();
    assert!(error.contains(dst.host()), "error does not name the registry {}:\n{error}", dst.host());
    assert_nothing_pushed(&dst, "prod/app", "1.0");
}

#[test]
fn unknown_tag_fails_naming_repository_and_tag() {
    let src = Registry::plain();
    let dst = Registry::plain();
    push_image(&src, "team/app:1.0", &[20 * 1024]);

    let run = ferry_copy()
        .args(src.transport_args())
        .args(dst.transport_args())
        .arg(src.reference("team/app:no-such-tag"))
        .arg(dst.reference("prod/app:1.0"))
        .timeout(Duration::from_secs(90))
        .run();

    let error = run.failure();
    assert!(error.contains("team/app"), "error does not name the repository:\n{error}");
    assert!(error.contains("no-such-tag"), "error does not name the tag:\n{error}");
    assert!(
        error.contains("MANIFEST_UNKNOWN") || lowercase(error).contains("not found"),
        "error does not say the manifest is unknown:\n{error}"
    );
    assert!(run.elapsed < Duration::from_secs(30), "an unknown tag took {:?} to report", run.elapsed);
    assert_nothing_pushed(&dst, "prod/app", "1.0");
}

/// With `--json`, a failed copy is one JSON document on stdout too, as for every command.
#[test]
fn with_json_a_failed_copy_is_a_json_error_on_stdout() {
    let src = Registry::plain();
    let dst = Registry::plain();
    let run = ferry_copy()
        .arg("--json")
        .args(src.transport_args())
        .args(dst.transport_args())
        .arg(src.reference("team/app:no-such-tag"))
        .arg(dst.reference("prod/app:1.0"))
        .timeout(Duration::from_secs(90))
        .run();
    assert_eq!(run.status.code(), Some(1), "{}", run.stderr);
    let answer: serde_json::Value = serde_json::from_str(run.stdout.trim())
        .unwrap_or_else(|e| panic!("stdout is not one JSON document ({e}): {}", run.stdout));
    let message = answer["error"]["message"].as_str().unwrap_or_default();
    assert!(message.contains("team/app") && message.contains("no-such-tag"), "{answer}");
    assert_eq!(answer["error"]["class"], "failed", "{answer}");
}

#[test]
fn destination_without_tag_reuses_the_source_tag() {
    let src = Registry::plain();
    let dst = Registry::plain();
    let (image, source) = push_image(&src, "team/app:1.0", &[20 * 1024]);

    let report = ferry_copy()
        .arg("--json")
        .args(src.transport_args())
        .args(dst.transport_args())
        .arg(src.reference("team/app:1.0"))
        .arg(dst.reference("prod/app"))
        .run()
        .report();

    assert_eq!(report.digest, image.digest());
    assert_digest_exact(&source, dst.client(), "prod/app", "1.0");
    assert_eq!(dst.client().tags("prod/app"), vec!["1.0".to_string()]);
}

#[test]
fn digest_only_source_is_pushed_by_digest_only() {
    let src = Registry::plain();
    let dst = Registry::plain();
    let (image, source) = push_image(&src, "team/app:1.0", &[20 * 1024]);

    let report = ferry_copy()
        .arg("--json")
        .args(src.transport_args())
        .args(dst.transport_args())
        .arg(src.reference(&format!("team/app@{}", image.digest())))
        .arg(dst.reference("prod/app"))
        .run()
        .report();

    assert_eq!(report.digest, image.digest());
    assert_digest_exact(&source, dst.client(), "prod/app", image.digest());
    assert_eq!(dst.client().tags("prod/app"), Vec::<String>::new(), "a digest-only copy must not invent a tag");
}

#[test]
fn flaky_source_is_retried_until_the_copy_is_digest_exact() {
    let src = Registry::plain();
    let dst = Registry::plain();
    let (image, source) = push_image(&src, "team/app:1.0", &[400 * 1024, 150 * 1024]);
    let proxy = FaultyProxy::start(&src, Fault::TransientFailures);

    let report = ferry_copy()
        .arg("--json")
        .args(["--plain-http", proxy.host()])
        .args(dst.transport_args())
        .arg(proxy.reference("team/app:1.0"))
        .arg(dst.reference("prod/app:1.0"))
        .timeout(Duration::from_secs(120))
        .run()
        .report();

    assert_eq!(report.digest, image.digest());
    assert_digest_exact(&source, dst.client(), "prod/app", "1.0");
    assert_blobs_present(dst.client(), "prod/app", &image.blobs());
    assert_eq!(proxy.manifest_503s(), 1, "the 503 was never served");
    let gap = proxy.manifest_retry_gap().expect("the manifest was requested again after the 503");
    assert!(gap >= Duration::from_millis(900), "retried the manifest {gap:?} after a 503 with `Retry-After: 1`");
    assert_eq!(proxy.blob_cuts(), image.blobs().len(), "every blob's first download should have been cut once");
}

/// Copies `team/app:1.0` (one layer of `layer_size` bytes) from a registry behind a proxy that
/// injects `fault`, to `prod/app:1.0` in a healthy registry, with one retry.
fn copy_through_faulty_source(fault: Fault, layer_size: usize) -> (Registry, Registry, FaultyProxy, FerryRun) {
    let src = Registry::plain();
    let dst = Registry::plain();
    push_image(&src, "team/app:1.0", &[layer_size]);
    let proxy = FaultyProxy::start(&src, fault);
    let run = ferry_copy()
        .args(["--retries", "1"])
        .args(["--plain-http", proxy.host()])
        .args(dst.transport_args())
        .arg(proxy.reference("team/app:1.0"))
        .arg(dst.reference("prod/app:1.0"))
        .timeout(Duration::from_secs(120))
        .run();
    (src, dst, proxy, run)
}

#[test]
fn source_that_always_cuts_blobs_fails_in_bounded_time() {
    let (_src, dst, proxy, run) = copy_through_faulty_source(Fault::BlobsAlwaysCut, 400 * 1024);

    let error = run.failure();
    assert!(run.elapsed < Duration::from_secs(60), "giving up on a broken source took {:?}", run.elapsed);
    assert!(
        error.contains(proxy.host()) || error.contains("team/app"),
        "error does not name the source that broke ({} / team/app):\n{error}",
        proxy.host()
    );
    assert!(proxy.blob_cuts() >= 1, "the proxy never cut a blob");
    assert_nothing_pushed(&dst, "prod/app", "1.0");
}

#[test]
fn platform_flag_copies_only_that_platform_manifest() {
    let src = Registry::plain();
    let dst = Registry::plain();
    let mut layout = OciLayout::new();
    let index = layout.add_index("src", &[30 * 1024]);
    src.skopeo_push(&layout.reference("src"), "team/app:multi", &["--all"]);
    let arm64 = &index.children[1];

    let report = ferry_copy()
        .arg("--json")
        .args(["--platform", "linux/arm64"])
        .args(src.transport_args())
        .args(dst.transport_args())
        .arg(src.reference("team/app:multi"))
        .arg(dst.reference("prod/app:arm64"))
        .run()
        .report();

    assert_eq!(report.digest, arm64.digest());
    assert_eq!(report.media_type, media_type::OCI_MANIFEST);
    assert_manifest_at(dst.client(), "prod/app", "arm64", arm64.digest(), &arm64.bytes);
    assert_blobs_present(dst.client(), "prod/app", &arm64.blobs());
    let amd64 = &index.children[0];
    assert!(
        dst.client().manifest("prod/app", amd64.digest()).is_none(),
        "--platform linux/arm64 also copied the amd64 manifest"
    );
    assert!(
        dst.client().manifest("prod/app", index.digest()).is_none(),
        "--platform linux/arm64 also copied the index"
    );
}

#[test]
fn blob_that_does_not_match_its_digest_fails_the_copy() {
    let (_src, dst, proxy, run) = copy_through_faulty_source(Fault::CorruptBlobs, 100 * 1024);

    let error = run.failure();
    assert!(lowercase(error).contains("digest"), "error does not say the blob failed digest verification:\n{error}");
    assert!(
        error.contains(proxy.host()) || error.contains("team/app"),
        "error does not name the source that served the bad blob ({} / team/app):\n{error}",
        proxy.host()
    );
    assert!(run.elapsed < Duration::from_secs(60), "rejecting a corrupt blob took {:?}", run.elapsed);
    assert!(proxy.blobs_corrupted() >= 1, "the proxy never corrupted a blob");
    assert_nothing_pushed(&dst, "prod/app", "1.0");
}

#[test]
fn corrupt_blob_is_never_written_into_an_oci_layout() {
    let src = Registry::plain();
    let (image, _) = push_image(&src, "team/app:1.0", &[100 * 1024]);
    let proxy = FaultyProxy::start(&src, Fault::CorruptBlobs);
    let out = tempfile::tempdir().expect("temp dir");
    let layout_dir = out.path().join("exported");

    let run = ferry_copy()
        .args(["--retries", "1"])
        .args(["--plain-http", proxy.host()])
        .arg(proxy.reference("team/app:1.0"))
        .arg(format!("oci:{}:1.0", layout_dir.display()))
        .timeout(Duration::from_secs(120))
        .run();

    // No registry checks the bytes on this path: ferry itself must.
    let error = run.failure();
    assert!(lowercase(error).contains("digest"), "error does not say the blob failed digest verification:\n{error}");
    assert!(proxy.blobs_corrupted() >= 1, "the proxy never corrupted a blob");
    assert!(
        layout::read_index_json(&layout_dir, "1.0").is_none(),
        "the layout tags an image whose blobs failed verification"
    );
    for blob in image.blobs() {
        let path = layout_dir.join("blobs/sha256").join(blob.digest.trim_start_matches("sha256:"));
        if let Ok(bytes) = fs::read(&path) {
            assert_eq!(sha256_digest(&bytes), blob.digest, "{} holds bytes that do not match its name", path.display());
        }
    }
}

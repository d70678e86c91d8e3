mod support;
use support::*;

#[test]
fn harness_starts_every_registry_variant_and_pushes() {
    let mut layout = OciLayout::new();
    let t = std::time::Instant::now();
    let image = layout.add_image("v1", &[100_000, 3_000]);
    let index = layout.add_index("multi", &[50_000]);
    eprintln!("layout {:?}", t.elapsed());
    for reg in [
        Registry::plain(),
        Registry::with_htpasswd("alice", "s3cret"),
        Registry::with_tls(),
    ] {
        let t = std::time::Instant::now();
        let m = reg.skopeo_push(&layout.reference("v1"), "app/one:v1", &[]);
        assert_eq!(m.digest, image.manifest.digest);
        assert_eq!(m.computed_digest(), image.manifest.digest);
        assert_eq!(m.bytes, image.bytes);
        let i = reg.skopeo_push(&layout.reference("multi"), "app/multi:v1", &["--all"]);
        assert_eq!(i.digest, index.manifest.digest);
        for c in &index.children {
            assert!(
                reg.client()
                    .manifest("app/multi", &c.manifest.digest)
                    .is_some()
            );
        }
        let d = reg.skopeo_push(
            &layout.reference("v1"),
            "app/docker:v1",
            &["--format", "v2s2"],
        );
        eprintln!(
            "docker {} {}",
            d.content_type,
            String::from_utf8_lossy(&d.bytes)
        );
        for b in image.blobs() {
            assert!(reg.client().blob_exists("app/one", &b.digest));
        }
        let r = reg
            .client()
            .push_referrer("app/one", &m, "application/vnd.example.sbom+json");
        let fb = reg.client().manifest("app/one", &r.fallback_tag).unwrap();
        eprintln!("fallback {}", String::from_utf8_lossy(&fb.bytes));
        eprintln!("tags {:?}", reg.client().tags("app/one"));
        eprintln!("{} ok in {:?}", reg.host(), t.elapsed());
    }
    let archive = tempfile::tempdir().unwrap();
    let tar = archive.path().join("img.tar");
    let st = std::process::Command::new("skopeo")
        .args([
            "--insecure-policy",
            "copy",
            "--quiet",
            &layout.reference("v1"),
            &format!("docker-archive:{}:app/one:v1", tar.display()),
        ])
        .status()
        .unwrap();
    assert!(st.success());
    eprintln!(
        "archive config {} vs {}",
        docker_archive_config_digest(&tar),
        image.config.digest
    );
}

#[test]
fn harness_proxy_cuts_and_503s() {
    let reg = Registry::plain();
    let mut layout = OciLayout::new();
    let image = layout.add_image("v1", &[300_000]);
    reg.skopeo_push(&layout.reference("v1"), "app/one:v1", &[]);
    let proxy = FaultyProxy::start(&reg, Fault::TransientFailures);
    let c = RegistryClient::new(proxy.host(), "http", None, None);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let http = reqwest::Client::new();
    let url = format!("http://{}/v2/app/one/manifests/v1", proxy.host());
    let r = rt.block_on(http.get(&url).send()).unwrap();
    eprintln!(
        "first manifest: {} {:?}",
        r.status(),
        r.headers().get("retry-after")
    );
    assert!(c.manifest("app/one", "v1").is_some());
    let url = format!(
        "http://{}/v2/app/one/blobs/{}",
        proxy.host(),
        image.layers[0].digest
    );
    let r = rt.block_on(async {
        let r = http.get(&url).send().await.unwrap();
        eprintln!("len {:?}", r.content_length());
        r.bytes().await
    });
    eprintln!("first blob get: {:?}", r.as_ref().map(|b| b.len()));
    assert!(r.is_err());
    let r = rt.block_on(async { http.get(&url).send().await.unwrap().bytes().await });
    assert_eq!(r.unwrap().len() as u64, image.layers[0].size);
    assert_eq!(proxy.blob_cuts(), 1);
    let t = std::time::Instant::now();
    let mut big = OciLayout::new();
    big.add_image("big", &[70 << 20]);
    eprintln!("70 MiB layer in {:?}", t.elapsed());
}

#[test]
fn harness_speed() {
    use sha2::{Digest, Sha256};
    let buf = vec![7u8; 70 << 20];
    let t = std::time::Instant::now();
    let d = Sha256::digest(&buf);
    eprintln!("sha256 70MiB {:?} {}", t.elapsed(), d[0]);
    let t = std::time::Instant::now();
    let mut f = std::fs::File::open("/dev/urandom").unwrap();
    let mut b = vec![0u8; 70 << 20];
    std::io::Read::read_exact(&mut f, &mut b).unwrap();
    eprintln!("urandom 70MiB {:?}", t.elapsed());
}

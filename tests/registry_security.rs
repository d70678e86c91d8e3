//! Registry security through `ferry serve` (issue 11): one trust store per registry (a
//! `ca_cert` named on one registry is never trusted for another; real TLS registries with
//! throw-away CAs), and one slow registry cannot starve the others of worker slots (a hostile
//! registry in the test that trickles its manifests).

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use serde_json::Value;
use support::registry::free_port;
use support::{FerryServer, OciLayout, Registry};

const PIPELINE: &str = "shop-api";
const REPO: &str = "shop/api";
const OPERATOR_TOKEN: &str = "registry-trust-operator-token";

fn wait_until<T>(what: &str, server: &FerryServer, probe: impl FnMut() -> Option<T>) -> T {
    server.wait_until(what, Duration::from_secs(90), probe)
}

/// The promotion of `digest` into `stage` once it has finished, one way or the other.
fn finished_promotion(server: &FerryServer, stage: &str, digest: &str) -> Value {
    wait_until(&format!("the promotion of {digest} into {stage} finished"), server, || {
        let history = server.cli("history").args([PIPELINE, stage, "--json"]).run().json();
        let finished = |r: &&Value| ["succeeded", "failed", "dead_lettered"].iter().any(|s| r["state"] == *s);
        history.as_array()?.iter().filter(|r| r["digest"] == digest).find(finished).cloned()
    })
}

#[test]
fn a_ca_cert_named_on_one_registry_is_not_trusted_for_another() {
    let build = Registry::plain();
    let dev = Registry::with_tls();
    let prod = Registry::with_tls();
    // One PEM bundle holding both throw-away CAs, named on dev only: prod's CA must not
    // be trusted for prod through dev's entry.
    let dir = tempfile::tempdir().unwrap();
    let bundle = dir.path().join("dev-ca-bundle.pem");
    let mut pem = std::fs::read(dev.ca_cert()).unwrap();
    pem.extend(std::fs::read(prod.ca_cert()).unwrap());
    std::fs::write(&bundle, pem).unwrap();
    let config = format!(
        r#"
[registries."{build}"]
plain_http = true
[registries."{dev}"]
ca_cert = {bundle:?}
[registries."{prod}"]

[worker]
max_attempts = 1

[[pipelines]]
name = "{PIPELINE}"
source = "{build}/{REPO}"
  [[pipelines.stages]]
  name = "dev"
  target = "{dev}/{REPO}"
  [[pipelines.stages]]
  name = "prod"
  target = "{prod}/{REPO}"
"#,
        build = build.host(),
        dev = dev.host(),
        prod = prod.host(),
        bundle = bundle.display().to_string(),
    );
    let server = FerryServer::start_with_operator_token(free_port(), &config, &[], OPERATOR_TOKEN);
    let mut layout = OciLayout::new();
    let image = layout.add_image("1.0", &[100_000]);
    build.skopeo_push(&layout.reference("1.0"), &format!("{REPO}:1.0"), &[]);
    let digest = image.digest().to_string();

    // The CA named on dev works for dev ...
    server.cli("promote").args([PIPELINE, "1.0", "--to", "dev", "--user", "alice"]).run().success();
    let record = finished_promotion(&server, "dev", &digest);
    assert_eq!(record["state"], "succeeded", "{record:#}");
    assert_eq!(dev.client().manifest(REPO, "1.0").map(|m| m.digest), Some(digest.clone()));

    // ... and is not trusted for prod, although it would verify prod's certificate.
    server.cli("promote").args([PIPELINE, "1.0", "--to", "prod", "--user", "alice"]).run().success();
    let record = finished_promotion(&server, "prod", &digest);
    assert_ne!(record["state"], "succeeded", "prod was trusted through dev's ca_cert: {record:#}");
    let error = record["error"].as_str().unwrap_or_default();
    assert!(error.contains(prod.host()), "the error names the registry: {error}");
    assert!(error.to_lowercase().contains("certificate"), "the error says the certificate is not trusted: {error}");
    assert!(error.contains(&format!(r#"ca_cert = "FILE"` under [registries."{}"]"#, prod.host())), "{error}");
    assert!(prod.client().manifest(REPO, "1.0").is_none(), "prod has the image");
}

/// A registry that answers every request with a 200 whose body comes one byte every 100 ms
/// (for hours): a read timeout restarts on each byte. Counts the requests it got.
fn trickling_registry(runtime: &tokio::runtime::Runtime) -> (String, Arc<AtomicUsize>) {
    let requests = Arc::new(AtomicUsize::new(0));
    let counter = requests.clone();
    let app = axum::Router::new().fallback(move || {
        counter.fetch_add(1, Ordering::SeqCst);
        async {
            let stream = futures_util::stream::unfold((), |()| async {
                tokio::time::sleep(Duration::from_millis(100)).await;
                Some((Ok::<_, std::io::Error>(bytes::Bytes::from_static(b" ")), ()))
            });
            ([("content-type", "application/vnd.oci.image.manifest.v1+json")], axum::body::Body::from_stream(stream))
        }
    });
    let listener = runtime.block_on(tokio::net::TcpListener::bind("127.0.0.1:0")).unwrap();
    let host = format!("127.0.0.1:{}", listener.local_addr().unwrap().port());
    runtime.spawn(async move { axum::serve(listener, app).await.unwrap() });
    (host, requests)
}

#[test]
fn a_trickling_registry_holds_worker_slots_only_until_its_deadline() {
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap();
    let (slow, slow_requests) = trickling_registry(&runtime);
    let build = Registry::plain();
    let dev = Registry::plain();
    let mut config = format!(
        r#"
[registries."{slow}"]
plain_http = true
request_deadline_secs = 3
[registries."{build}"]
plain_http = true
[registries."{dev}"]
plain_http = true

[worker]
concurrency = 2
max_attempts = 1
"#,
        build = build.host(),
        dev = dev.host(),
    );
    for (name, source) in [
        ("slow-a", format!("{slow}/slow/a")),
        ("slow-b", format!("{slow}/slow/b")),
        (PIPELINE, format!("{}/{REPO}", build.host())),
    ] {
        config.push_str(&format!(
            "[[pipelines]]\nname = \"{name}\"\nsource = \"{source}\"\n  [[pipelines.stages]]\n  name = \"dev\"\n  target = \"{}/{name}\"\n",
            dev.host()
        ));
    }
    let server = FerryServer::start_with_operator_token(free_port(), &config, &[], OPERATOR_TOKEN);
    let mut layout = OciLayout::new();
    let image = layout.add_image("1.0", &[100_000]);
    build.skopeo_push(&layout.reference("1.0"), &format!("{REPO}:1.0"), &[]);

    // Both worker slots go to copies from the trickling registry ...
    let some_digest = image.digest().to_string();
    for pipeline in ["slow-a", "slow-b"] {
        server.cli("promote").args([pipeline, &some_digest, "--to", "dev", "--user", "alice"]).run().success();
    }
    wait_until("both worker slots read from the trickling registry", &server, || {
        (slow_requests.load(Ordering::SeqCst) >= 2).then_some(())
    });
    // ... and another pipeline still gets its turn once their deadline passes.
    server.cli("promote").args([PIPELINE, "1.0", "--to", "dev", "--user", "alice"]).run().success();
    wait_until("shop-api reached dev past the trickling registry", &server, || {
        dev.client().manifest(PIPELINE, "1.0").filter(|m| m.digest == image.digest()).map(|_| ())
    });
    let letters = wait_until("both slow jobs gave up", &server, || {
        let letters = server.cli("dlq").args(["list", "--json"]).run().json();
        (letters.as_array()?.len() >= 2).then_some(letters)
    });
    for letter in letters.as_array().unwrap() {
        let error = letter["last_error"].as_str().unwrap_or_default();
        assert!(error.contains("did not finish within 3s") && error.contains(&slow), "{letter:#}");
    }
}

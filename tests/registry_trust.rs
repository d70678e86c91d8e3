//! One trust store per registry: a `ca_cert` named on one registry in the config is trusted
//! for that registry only, never for another one Ferry talks to (issue 11, item 7). Real TLS
//! registries (CNCF distribution) with throw-away CAs, driven through `ferry serve`.

mod support;

use std::time::{Duration, Instant};

use serde_json::Value;
use support::registry::free_port;
use support::{FerryServer, OciLayout, Registry};

const PIPELINE: &str = "shop-api";
const REPO: &str = "shop/api";
const OPERATOR_TOKEN: &str = "registry-trust-operator-token";

fn wait_until<T>(what: &str, server: &FerryServer, mut probe: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        if let Some(value) = probe() {
            return value;
        }
        assert!(Instant::now() < deadline, "{what}: not so after 90 s\nferry log:\n{}", server.log());
        std::thread::sleep(Duration::from_millis(100));
    }
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

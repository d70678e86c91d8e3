//! Azure Container Registry with Entra ID (`acr = true`): Ferry exchanges the `[azure]` Entra
//! token for an ACR refresh token and gets access tokens with it, against a FAKE ACR token
//! service (tests/support/azure.rs, shapes of WIRE_FORMATS §10.7) in front of a REAL registry,
//! and the FAKE Entra ID. Promotions run through `ferry serve`.

mod support;

use std::sync::atomic::Ordering;
use std::time::Duration;

use serde_json::Value;
use support::azure::{CLIENT_ID, CLIENT_SECRET, FakeAcr, FakeArm, FakeEntra, TENANT};
use support::prometheus::{sample_value, scrape};
use support::registry::free_port;
use support::{FerryServer, Registry};

const REPO: &str = "shop/api";
const DISTRIBUTION_SECRET: &str = "acr-distribution-secret";
const OPERATOR_TOKEN: &str = "acr-operator-token";

/// Ferry promoting from `build` (plain, notifying) to the fake ACR `acr`, with no password for
/// it anywhere in the config.
fn start_ferry(port: u16, build: &Registry, acr: &FakeAcr, entra: &FakeEntra) -> FerryServer {
    let config = format!(
        r#"
[registries."{build}"]
plain_http = true

[registries."{acr}"]
plain_http = true
acr = true

[sources.distribution]
secret_env = "E2E_DISTRIBUTION_SECRET"
header = "X-Ferry-Secret"

[azure]
tenant_id = "{TENANT}"
client_id = "{CLIENT_ID}"
client_secret_env = "E2E_AZURE_SECRET"
authority_host = "{entra}"
resource_manager = "http://127.0.0.1:9/"

[[pipelines]]
name = "shop-api"
source = "{build}/{REPO}"
  [[pipelines.stages]]
  name = "prod"
  target = "{acr}/{REPO}"
"#,
        build = build.host(),
        acr = acr.host(),
        entra = entra.url(),
    );
    assert!(!config.contains("password") && !config.contains("username"));
    FerryServer::start_with_operator_token(
        port,
        &config,
        &[("E2E_DISTRIBUTION_SECRET", DISTRIBUTION_SECRET), ("E2E_AZURE_SECRET", CLIENT_SECRET)],
        OPERATOR_TOKEN,
    )
}

fn setup() -> (FakeEntra, Registry, FakeAcr, Registry, u16) {
    let entra = FakeEntra::start();
    let behind = Registry::plain();
    let acr = FakeAcr::start(&entra, behind.host());
    let port = free_port();
    let build = Registry::plain_notifying(
        &format!("http://127.0.0.1:{port}/hooks/distribution"),
        "X-Ferry-Secret",
        DISTRIBUTION_SECRET,
    );
    (entra, behind, acr, build, port)
}

/// Pushes an image with three layers, so one promotion asks for several blobs.
fn push(registry: &Registry, tag: &str) -> String {
    registry.push_image(REPO, tag, &[120_000, 80_000, 40_000])
}

fn wait_until<T>(what: &str, server: &FerryServer, probe: impl FnMut() -> Option<T>) -> T {
    server.wait_until(what, Duration::from_secs(90), probe)
}

fn history(server: &FerryServer) -> Vec<Value> {
    server.cli("history").args(["shop-api", "prod", "--json"]).run().json().as_array().cloned().unwrap_or_default()
}

#[test]
fn promotions_into_acr_exchange_the_entra_token_once_and_land_digest_exact() {
    let (entra, behind, acr, build, port) = setup();
    let server = start_ferry(port, &build, &acr, &entra);
    for tag in ["1.0", "1.1", "1.2"] {
        let digest = push(&build, tag);
        wait_until(&format!("the ACR holds {tag}"), &server, || {
            behind.client().manifest(REPO, tag).filter(|m| m.digest == digest).map(|_| ())
        });
        wait_until(&format!("{tag} succeeded"), &server, || {
            history(&server).into_iter().find(|r| r["digest"] == digest.as_str() && r["state"] == "succeeded")
        });
    }
    assert!(acr.state.challenges.load(Ordering::SeqCst) >= 1, "the registry asked for a token");
    assert!(acr.token_requests() >= 1, "access tokens came from /oauth2/token");
    assert_eq!(acr.exchanges(), 1, "one exchange for three promotions of three blobs each");
    assert_eq!(entra.requests(), 1, "one Entra ID token for the whole run");
}

#[test]
fn a_refresh_token_near_its_expiry_is_exchanged_again() {
    let (entra, behind, acr, build, port) = setup();
    // Ten minutes: inside Ferry's renewal margin, so the next job must not reuse it.
    acr.state.refresh_lifetime.store(600, Ordering::SeqCst);
    let server = start_ferry(port, &build, &acr, &entra);
    for tag in ["1.0", "1.1"] {
        let digest = push(&build, tag);
        wait_until(&format!("the ACR holds {tag}"), &server, || {
            behind.client().manifest(REPO, tag).filter(|m| m.digest == digest).map(|_| ())
        });
        wait_until(&format!("{tag} succeeded"), &server, || {
            history(&server).into_iter().find(|r| r["digest"] == digest.as_str() && r["state"] == "succeeded")
        });
    }
    assert!(acr.exchanges() >= 2, "the short-lived refresh token was renewed: {} exchanges", acr.exchanges());
    assert_eq!(entra.requests(), 1, "the Entra ID token itself is still cached");
}

#[test]
fn a_refused_exchange_fails_the_promotion_at_once_with_acrs_error_and_a_role_hint() {
    let (entra, behind, acr, build, port) = setup();
    *acr.state.exchange_fails.lock().unwrap() = Some(401);
    let server = start_ferry(port, &build, &acr, &entra);
    let digest = push(&build, "1.0");
    let letter = wait_until("the job is dead-lettered", &server, || {
        server.cli("dlq").args(["list", "--json"]).run().json().as_array()?.first().cloned()
    });
    assert_eq!(letter["receive_count"], 1, "a refused exchange is permanent, not retried: {letter:#}");
    let error = letter["last_error"].as_str().unwrap_or_default();
    assert!(
        error.contains("UNAUTHORIZED") && error.contains("oauth2/exchange") && error.contains("AcrPull"),
        "{letter:#}"
    );
    assert!(!history(&server).iter().any(|r| r["digest"] == digest.as_str() && r["state"] == "succeeded"));
    assert_eq!(acr.exchanges(), 1, "a 401 is permanent, not retried");
    assert!(behind.client().manifest(REPO, "1.0").is_none());
}

/// `dev` (Ferry's copy into one ACR) then `prod` (`copy = "acr-import"` from dev's ACR into
/// another), both ACRs behind the fake token service, importImage on the FAKE ARM.
fn start_import_pipeline(
    port: u16,
    build: &Registry,
    (dev, dev_id): (&FakeAcr, &str),
    (prod, prod_id): (&FakeAcr, &str),
    entra: &FakeEntra,
    arm: &FakeArm,
) -> FerryServer {
    let config = format!(
        r#"
[registries."{build}"]
plain_http = true

[registries."{dev}"]
plain_http = true
acr = true
arm_id = "{dev_id}"

[registries."{prod}"]
plain_http = true
acr = true
arm_id = "{prod_id}"

[sources.distribution]
secret_env = "E2E_DISTRIBUTION_SECRET"
header = "X-Ferry-Secret"

[azure]
tenant_id = "{TENANT}"
client_id = "{CLIENT_ID}"
client_secret_env = "E2E_AZURE_SECRET"
authority_host = "{entra}"
resource_manager = "{arm_url}"

[[pipelines]]
name = "shop-api"
source = "{build}/{REPO}"
  [[pipelines.stages]]
  name = "dev"
  target = "{dev}/{REPO}"
  [[pipelines.stages]]
  name = "prod"
  target = "{prod}/{REPO}"
  copy = "acr-import"
"#,
        build = build.host(),
        dev = dev.host(),
        prod = prod.host(),
        entra = entra.url(),
        arm_url = arm.url(),
    );
    FerryServer::start_with_operator_token(
        port,
        &config,
        &[("E2E_DISTRIBUTION_SECRET", DISTRIBUTION_SECRET), ("E2E_AZURE_SECRET", CLIENT_SECRET)],
        OPERATOR_TOKEN,
    )
}

struct ImportWorld {
    entra: FakeEntra,
    arm: FakeArm,
    build: Registry,
    dev: FakeAcr,
    prod_behind: Registry,
    server: FerryServer,
    _dev_behind: Registry,
    _prod: FakeAcr,
}

fn import_world(fail: Option<(&str, &str)>) -> ImportWorld {
    let (entra, dev_behind, dev, build, port) = setup();
    let prod_behind = Registry::plain();
    let prod = FakeAcr::start(&entra, prod_behind.host());
    let arm = FakeArm::start(&entra);
    let dev_id = arm.add_registry("contosodev", dev_behind.host());
    let prod_id = arm.add_registry("contosoprod", prod_behind.host());
    *arm.state.import_fails.lock().unwrap() = fail.map(|(c, m)| (c.to_string(), m.to_string()));
    let server = start_import_pipeline(port, &build, (&dev, &dev_id), (&prod, &prod_id), &entra, &arm);
    ImportWorld { entra, arm, build, dev, prod_behind, server, _dev_behind: dev_behind, _prod: prod }
}

fn stage_history(server: &FerryServer, stage: &str) -> Vec<Value> {
    server.cli("history").args(["shop-api", stage, "--json"]).run().json().as_array().cloned().unwrap_or_default()
}

#[test]
fn acr_import_copies_server_side_by_digest_and_reads_the_target_back() {
    let w = import_world(None);
    let digest = push(&w.build, "1.0");
    wait_until("prod succeeded", &w.server, || {
        stage_history(&w.server, "prod")
            .into_iter()
            .find(|r| r["digest"] == digest.as_str() && r["state"] == "succeeded")
    });
    assert_eq!(w.prod_behind.client().manifest(REPO, "1.0").map(|m| m.digest), Some(digest.clone()));
    let imports = w.arm.state.imports.lock().unwrap().clone();
    assert_eq!(imports.len(), 1, "{imports:#?}");
    let body = &imports[0];
    assert_eq!(
        body["source"]["resourceId"],
        w.arm.state.acr_registries.lock().unwrap().keys().find(|k| k.ends_with("/contosodev")).unwrap().as_str()
    );
    assert_eq!(body["source"]["sourceImage"], format!("{REPO}@{digest}"));
    assert_eq!(body["mode"], "Force");
    let tags: Vec<&str> = body["targetTags"].as_array().unwrap().iter().filter_map(Value::as_str).collect();
    assert!(tags.contains(&format!("{REPO}:1.0").as_str()), "{body:#}");
    assert!(w.arm.log().iter().any(|l| l.contains("/importImage?api-version=2023-07-01")), "{:#?}", w.arm.log());
    assert_eq!(w.dev.exchanges(), 1, "dev's refresh token served the copy and the read-back");
    assert_eq!(w.entra.requests(), 1, "one Entra ID token for ARM and both registries");

    // The import is measured as prod's copy, but ACR moved the bytes, not Ferry.
    let (text, samples) = scrape(w.server.port(), Some(OPERATOR_TOKEN));
    let (dev, prod) = ([("pipeline", "shop-api"), ("stage", "dev")], [("pipeline", "shop-api"), ("stage", "prod")]);
    assert_eq!(sample_value(&samples, "ferry_copied_bytes_total", &prod), Some(0.0), "{text}");
    assert!(sample_value(&samples, "ferry_copy_duration_seconds_count", &prod) >= Some(1.0), "{text}");
    assert!(sample_value(&samples, "ferry_copied_bytes_total", &dev) > Some(0.0), "dev was copied by Ferry: {text}");
}

#[test]
fn a_failed_import_fails_the_promotion_with_azures_code_and_message() {
    let w = import_world(Some(("InvalidImageName", "The source image shop/api was not found in contosodev.")));
    let digest = push(&w.build, "1.0");
    let letter = wait_until("prod is dead-lettered", &w.server, || {
        w.server.cli("dlq").args(["list", "--json"]).run().json().as_array()?.first().cloned()
    });
    let error = letter["last_error"].as_str().unwrap_or_default();
    assert!(
        error.contains("InvalidImageName")
            && error.contains("was not found in contosodev")
            && error.contains("acr-import"),
        "{letter:#}"
    );
    assert!(
        !stage_history(&w.server, "prod").iter().any(|r| r["digest"] == digest.as_str() && r["state"] == "succeeded")
    );
}

#[test]
fn a_failing_exchange_service_is_transient_and_the_job_is_retried() {
    let (entra, behind, acr, build, port) = setup();
    *acr.state.exchange_fails.lock().unwrap() = Some(503);
    let server = start_ferry(port, &build, &acr, &entra);
    let digest = push(&build, "1.0");
    wait_until("the exchange was tried", &server, || (acr.exchanges() >= 1).then_some(()));
    *acr.state.exchange_fails.lock().unwrap() = None;
    wait_until("1.0 succeeded after a retry", &server, || {
        history(&server).into_iter().find(|r| r["digest"] == digest.as_str() && r["state"] == "succeeded")
    });
    assert_eq!(behind.client().manifest(REPO, "1.0").map(|m| m.digest), Some(digest));
    assert!(acr.exchanges() >= 2, "exchanged again after the 503");
    let letters = server.cli("dlq").args(["list", "--json"]).run().json();
    assert_eq!(letters, serde_json::json!([]), "a 503 from the exchange is not permanent");
}

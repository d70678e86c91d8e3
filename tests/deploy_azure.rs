//! Deploying to Azure App Service: Entra ID credentials against a FAKE Entra token endpoint and
//! the App Service notifier against a FAKE ARM (both in tests/support/azure.rs, shapes of
//! WIRE_FORMATS §7), and a promotion through real registries and `ferry serve` whose stage
//! notifies App Service.

mod support;

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use ferry_core::deploy::azure::{ArmClient, CredentialSource, EntraCredential, azure_http};
use ferry_core::deploy::{AppServiceNotifier, Deployment, Notifier, NotifyError};
use ferry_core::registry::auth::Secret;
use serde_json::Value;
use support::azure::{
    CLIENT_ID, CLIENT_SECRET, FEDERATED_TOKEN, FakeArm, FakeEntra, IDENTITY_HEADER, RESOURCE_GROUP, SUBSCRIPTION,
    SwapMode, TENANT,
};
use support::registry::free_port;
use support::{FerryServer, Registry};

const OLD: &str = "127.0.0.1:5999/shop/api@sha256:1111111111111111111111111111111111111111111111111111111111111111";
const NEW: &str = "127.0.0.1:5999/shop/api@sha256:2222222222222222222222222222222222222222222222222222222222222222";

fn url(text: &str) -> url::Url {
    url::Url::parse(text).unwrap()
}

fn secret_credential(entra: &FakeEntra, secret: &str) -> EntraCredential {
    let source = CredentialSource::ClientSecret {
        tenant_id: TENANT.into(),
        client_id: CLIENT_ID.into(),
        secret: Secret::new(secret),
    };
    EntraCredential::new(source, url(&format!("{}/", entra.url())), azure_http(None).unwrap())
}

fn arm_client(entra: &FakeEntra, arm: &FakeArm) -> Arc<ArmClient> {
    let credential = Arc::new(secret_credential(entra, CLIENT_SECRET));
    let mut client = ArmClient::new(credential, url(&arm.url()), azure_http(None).unwrap());
    client.backoff = Duration::from_millis(50);
    Arc::new(client)
}

fn notifier(arm: Arc<ArmClient>, app: &str, slot: Option<&str>, swap: bool) -> AppServiceNotifier {
    let mut notifier = AppServiceNotifier::new(arm, SUBSCRIPTION, RESOURCE_GROUP, app, slot, swap).unwrap();
    notifier.poll_interval = Duration::from_millis(50);
    notifier.timeout = Duration::from_secs(60);
    notifier
}

fn deployment(image: &str) -> Deployment {
    Deployment {
        pipeline: "shop-api".into(),
        stage: "prod".into(),
        image: image.into(),
        digest: image.rsplit('@').next().unwrap().into(),
        tag: None,
        build_number: None,
        promotion_id: "p-1".into(),
        rollback: false,
    }
}

#[tokio::test]
async fn one_token_request_serves_many_concurrent_callers() {
    let entra = FakeEntra::start();
    entra.state.delay_ms.store(300, Ordering::SeqCst);
    let credential = Arc::new(secret_credential(&entra, CLIENT_SECRET));
    let callers: Vec<_> = (0..16)
        .map(|_| {
            let credential = credential.clone();
            tokio::spawn(async move { credential.token("https://management.azure.com/.default").await.unwrap() })
        })
        .collect();
    let mut tokens = Vec::new();
    for caller in callers {
        tokens.push(caller.await.unwrap().expose().to_string());
    }
    assert_eq!(entra.requests(), 1, "16 concurrent callers, one token request");
    assert!(tokens.iter().all(|t| t == &tokens[0]), "all callers got the one token: {tokens:?}");
    // Later callers use the cache; another scope gets its own token.
    credential.token("https://management.azure.com/.default").await.unwrap();
    assert_eq!(entra.requests(), 1);
    let registry = credential.token("https://containerregistry.azure.net/.default").await.unwrap();
    assert_eq!(entra.requests(), 2);
    assert_ne!(registry.expose(), tokens[0]);
}

#[tokio::test]
async fn a_token_is_refreshed_when_it_nears_expiry() {
    let entra = FakeEntra::start();
    entra.state.expires_in.store(1, Ordering::SeqCst);
    let credential = secret_credential(&entra, CLIENT_SECRET);
    let scope = "https://management.azure.com/.default";
    let first = credential.token(scope).await.unwrap();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let second = credential.token(scope).await.unwrap();
    assert_eq!(entra.requests(), 2, "an expired token is not used again");
    assert_ne!(first.expose(), second.expose());
    entra.state.expires_in.store(3600, Ordering::SeqCst);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let third = credential.token(scope).await.unwrap();
    let fourth = credential.token(scope).await.unwrap();
    assert_eq!(entra.requests(), 3, "a fresh hour-long token is cached");
    assert_eq!(third.expose(), fourth.expose());
}

#[tokio::test]
async fn entra_errors_carry_azures_error_code() {
    let entra = FakeEntra::start();
    let credential = secret_credential(&entra, "wrong-secret");
    let error = credential.token("https://management.azure.com/.default").await.unwrap_err();
    let text = error.to_string();
    assert_eq!(error.code(), Some("invalid_client"), "{text}");
    assert!(text.contains("AADSTS7000215") && text.contains("HTTP 401") && text.contains("client secret"), "{text}");
    assert!(!error.is_retryable(), "a refused secret is not retried");
    assert!(!text.contains("wrong-secret"), "the secret is never in a message: {text}");
}

#[tokio::test]
async fn workload_and_managed_identities_get_tokens() {
    let entra = FakeEntra::start();
    let dir = tempfile::tempdir().unwrap();
    let token_file = dir.path().join("azure-identity-token");
    std::fs::write(&token_file, format!("{FEDERATED_TOKEN}\n")).unwrap();
    let env = |vars: Vec<(&'static str, String)>| {
        move |name: &str| vars.iter().find(|(k, _)| *k == name).map(|(_, v)| v.clone())
    };
    let settings = ferry_core::deploy::azure::AzureSettings {
        tenant_id: None,
        client_id: None,
        client_secret: None,
        authority_host: url(&format!("{}/", entra.url())),
        resource_manager: url("https://management.azure.com"),
        ca_cert_pem: None,
    };
    let scope = "https://management.azure.com/.default";
    let http = azure_http(None).unwrap();

    let workload = CredentialSource::choose(
        &settings,
        env(vec![
            ("AZURE_FEDERATED_TOKEN_FILE", token_file.display().to_string()),
            ("AZURE_TENANT_ID", TENANT.into()),
            ("AZURE_CLIENT_ID", CLIENT_ID.into()),
        ]),
    )
    .unwrap();
    assert!(matches!(workload, CredentialSource::WorkloadIdentity { .. }));
    let token =
        EntraCredential::new(workload, settings.authority_host.clone(), http.clone()).token(scope).await.unwrap();
    assert_eq!(entra.state.issued.lock().unwrap()[token.expose()], scope);

    let app_service = CredentialSource::choose(
        &settings,
        env(vec![
            ("IDENTITY_ENDPOINT", format!("{}/msi/token", entra.url())),
            ("IDENTITY_HEADER", IDENTITY_HEADER.into()),
        ]),
    )
    .unwrap();
    let token =
        EntraCredential::new(app_service, settings.authority_host.clone(), http.clone()).token(scope).await.unwrap();
    assert_eq!(
        entra.state.issued.lock().unwrap()[token.expose()],
        "https://management.azure.com",
        "resource, not scope"
    );

    let wrong_header = CredentialSource::choose(
        &settings,
        env(vec![("IDENTITY_ENDPOINT", format!("{}/msi/token", entra.url())), ("IDENTITY_HEADER", "nope".into())]),
    )
    .unwrap();
    let error = EntraCredential::new(wrong_header, settings.authority_host.clone(), http.clone())
        .token(scope)
        .await
        .unwrap_err();
    assert_eq!(error.code(), Some("InvalidHeader"), "{error}");

    let imds =
        CredentialSource::choose(&settings, env(vec![("AZURE_POD_IDENTITY_AUTHORITY_HOST", entra.url())])).unwrap();
    assert!(matches!(imds, CredentialSource::Imds { .. }));
    let token = EntraCredential::new(imds, settings.authority_host.clone(), http).token(scope).await.unwrap();
    assert!(entra.state.issued.lock().unwrap().contains_key(token.expose()));
}

#[tokio::test]
async fn app_service_gets_the_digest_reference_and_reads_it_back() {
    let (entra, arm) = {
        let e = FakeEntra::start();
        let a = FakeArm::start(&e);
        (e, a)
    };
    arm.add_app("shop", OLD, &[]);
    let notified = notifier(arm_client(&entra, &arm), "shop", None, false).notify(&deployment(NEW)).await.unwrap();
    assert!(notified.confirmed, "{notified:?}");
    assert_eq!(arm.linux_fx_version("shop", "production").unwrap(), format!("DOCKER|{NEW}"));
    let log = arm.log();
    let patch = format!(
        "PATCH /subscriptions/{SUBSCRIPTION}/resourceGroups/{RESOURCE_GROUP}/providers/Microsoft.Web/sites/shop/config/web?api-version=2024-11-01"
    );
    assert!(log.contains(&patch), "{log:#?}");
    assert!(
        log.last().unwrap().starts_with("GET ") && log.last().unwrap().contains("/config/web"),
        "read back last: {log:#?}"
    );
    assert_eq!(entra.requests(), 1, "one ARM token for all calls");
}

#[tokio::test]
async fn a_sidecar_app_gets_the_digest_in_its_main_site_container() {
    let (entra, arm) = {
        let e = FakeEntra::start();
        let a = FakeArm::start(&e);
        (e, a)
    };
    arm.add_sidecar_app("shop", OLD);
    let notified = notifier(arm_client(&entra, &arm), "shop", None, false).notify(&deployment(NEW)).await.unwrap();
    assert!(notified.confirmed, "{notified:?}");
    assert_eq!(arm.site_container_image("shop", "main").as_deref(), Some(NEW));
    assert_eq!(
        arm.site_container_image("shop", "otel").as_deref(),
        Some("mcr.microsoft.com/otel/collector:0.1"),
        "the sidecar is untouched"
    );
    assert_eq!(
        arm.linux_fx_version("shop", "production").as_deref(),
        Some("SITECONTAINERS"),
        "no linuxFxVersion PATCH"
    );
    assert!(
        arm.log().iter().any(|l| l.starts_with("PUT ") && l.contains("/sitecontainers/main?api-version=2024-11-01")),
        "{:#?}",
        arm.log()
    );
}

#[tokio::test]
async fn a_slot_is_set_then_swapped_into_production_by_either_operation_header() {
    for mode in [SwapMode::Location { polls: 2 }, SwapMode::AsyncOperation { polls: 2 }] {
        let (entra, arm) = {
            let e = FakeEntra::start();
            let a = FakeArm::start(&e);
            (e, a)
        };
        arm.add_app("shop", OLD, &["staging"]);
        *arm.state.swap_mode.lock().unwrap() = mode;
        let notified =
            notifier(arm_client(&entra, &arm), "shop", Some("staging"), true).notify(&deployment(NEW)).await.unwrap();
        assert!(notified.confirmed && notified.detail.contains("swapped"), "{mode:?}: {notified:?}");
        assert_eq!(arm.linux_fx_version("shop", "production").unwrap(), format!("DOCKER|{NEW}"), "{mode:?}");
        assert_eq!(arm.linux_fx_version("shop", "staging").unwrap(), format!("DOCKER|{OLD}"), "{mode:?}: swapped");
        let polls = arm.log().iter().filter(|l| l.starts_with("GET /fake-operations/")).count();
        assert_eq!(polls, 3, "{mode:?}: polled until done: {:#?}", arm.log());
    }
    // A slot without swap changes the slot only.
    let (entra, arm) = {
        let e = FakeEntra::start();
        let a = FakeArm::start(&e);
        (e, a)
    };
    arm.add_app("shop", OLD, &["staging"]);
    notifier(arm_client(&entra, &arm), "shop", Some("staging"), false).notify(&deployment(NEW)).await.unwrap();
    assert_eq!(arm.linux_fx_version("shop", "staging").unwrap(), format!("DOCKER|{NEW}"));
    assert_eq!(arm.linux_fx_version("shop", "production").unwrap(), format!("DOCKER|{OLD}"));
}

#[tokio::test]
async fn a_failed_swap_reports_azures_code_and_message() {
    let (entra, arm) = {
        let e = FakeEntra::start();
        let a = FakeArm::start(&e);
        (e, a)
    };
    arm.add_app("shop", OLD, &["staging"]);
    *arm.state.swap_mode.lock().unwrap() = SwapMode::AsyncOperationFails;
    let error =
        notifier(arm_client(&entra, &arm), "shop", Some("staging"), true).notify(&deployment(NEW)).await.unwrap_err();
    let NotifyError::Permanent { target, detail } = &error else { panic!("a failed swap is final: {error:?}") };
    assert!(target.contains("shop slot staging"), "{target}");
    assert!(detail.contains("SwapFailed") && detail.contains("failed to warm up"), "{detail}");
}

#[tokio::test]
async fn throttling_and_server_errors_are_retried() {
    let (entra, arm) = {
        let e = FakeEntra::start();
        let a = FakeArm::start(&e);
        (e, a)
    };
    arm.add_app("shop", OLD, &[]);
    arm.state.throttle.store(1, Ordering::SeqCst);
    arm.state.fail.store(2, Ordering::SeqCst);
    let notified = notifier(arm_client(&entra, &arm), "shop", None, false).notify(&deployment(NEW)).await.unwrap();
    assert!(notified.confirmed);
    assert_eq!(arm.linux_fx_version("shop", "production").unwrap(), format!("DOCKER|{NEW}"));
    assert_eq!(arm.state.throttle.load(Ordering::SeqCst) + arm.state.fail.load(Ordering::SeqCst), 0);

    // Past the attempts, a 5xx is a transient failure (the job is retried later).
    arm.state.fail.store(100, Ordering::SeqCst);
    let error = notifier(arm_client(&entra, &arm), "shop", None, false).notify(&deployment(OLD)).await.unwrap_err();
    assert!(
        matches!(&error, NotifyError::Transient { detail, .. } if detail.contains("InternalServerError")),
        "{error:?}"
    );
}

#[tokio::test]
async fn forbidden_and_missing_apps_fail_at_once_naming_the_resource() {
    let (entra, arm) = {
        let e = FakeEntra::start();
        let a = FakeArm::start(&e);
        (e, a)
    };
    arm.add_app("shop", OLD, &[]);
    arm.state.forbidden.lock().unwrap().insert("shop".into());
    let error = notifier(arm_client(&entra, &arm), "shop", None, false).notify(&deployment(NEW)).await.unwrap_err();
    let NotifyError::Permanent { detail, .. } = &error else { panic!("403 is final: {error:?}") };
    assert!(
        detail.contains("AuthorizationFailed") && detail.contains("web app shop") && detail.contains("HTTP 403"),
        "{detail}"
    );
    assert_eq!(arm.log().iter().filter(|l| l.starts_with("PATCH")).count(), 1, "not retried: {:#?}", arm.log());

    let error = notifier(arm_client(&entra, &arm), "shopp", None, false).notify(&deployment(NEW)).await.unwrap_err();
    let NotifyError::Permanent { detail, .. } = &error else { panic!("404 is final: {error:?}") };
    assert!(detail.contains("ResourceNotFound") && detail.contains("web app shopp"), "{detail}");
}

const REPO: &str = "shop/api";
const DISTRIBUTION_SECRET: &str = "deploy-azure-distribution-secret";
const OPERATOR_TOKEN: &str = "deploy-azure-operator-token";

/// `ferry serve` on `port` promoting from `build` through `stages` (TOML of the stages), with
/// `[azure]` pointing at the fakes.
fn start_ferry(
    port: u16,
    build: &Registry,
    targets: &[&Registry],
    stages: &str,
    entra: &FakeEntra,
    arm: &FakeArm,
) -> FerryServer {
    let mut config = String::new();
    for registry in std::iter::once(build).chain(targets.iter().copied()) {
        config.push_str(&format!("[registries.\"{}\"]\nplain_http = true\n", registry.host()));
    }
    config.push_str(&format!(
        r#"
[sources.distribution]
secret_env = "E2E_DISTRIBUTION_SECRET"
header = "X-Ferry-Secret"

[azure]
tenant_id = "{TENANT}"
client_id = "{CLIENT_ID}"
client_secret_env = "E2E_AZURE_SECRET"
authority_host = "{}"
resource_manager = "{}"

[[pipelines]]
name = "shop-api"
source = "{}/{REPO}"
{stages}
"#,
        entra.url(),
        arm.url(),
        build.host(),
    ));
    FerryServer::start_with_operator_token(
        port,
        &config,
        &[("E2E_DISTRIBUTION_SECRET", DISTRIBUTION_SECRET), ("E2E_AZURE_SECRET", CLIENT_SECRET)],
        OPERATOR_TOKEN,
    )
}

fn push(registry: &Registry, tag: &str) -> String {
    registry.push_image(REPO, tag, &[150_000])
}

fn wait_until<T>(what: &str, server: &FerryServer, probe: impl FnMut() -> Option<T>) -> T {
    server.wait_until(what, Duration::from_secs(90), probe)
}

fn history(server: &FerryServer, stage: &str) -> Vec<Value> {
    server.cli("history").args(["shop-api", stage, "--json"]).run().json().as_array().cloned().unwrap_or_default()
}

#[test]
fn a_promotion_tells_app_service_the_exact_digest_and_opens_the_next_gate() {
    let entra = FakeEntra::start();
    let arm = FakeArm::start(&entra);
    arm.add_app("shop-dev", OLD, &["staging"]);
    let port = free_port();
    let build = Registry::plain_notifying(
        &format!("http://127.0.0.1:{port}/hooks/distribution"),
        "X-Ferry-Secret",
        DISTRIBUTION_SECRET,
    );
    let (dev, prod) = (Registry::plain(), Registry::plain());
    let stages = format!(
        r#"  [[pipelines.stages]]
  name = "dev"
  target = "{}/{REPO}"
  notify = {{ kind = "app-service", subscription = "{SUBSCRIPTION}", resource_group = "{RESOURCE_GROUP}", app = "shop-dev", slot = "staging", swap = true }}
  [[pipelines.stages]]
  name = "prod"
  target = "{}/{REPO}"
  gate = "after"
"#,
        dev.host(),
        prod.host()
    );
    let server = start_ferry(port, &build, &[&dev, &prod], &stages, &entra, &arm);
    for tag in ["1.0", "1.1"] {
        let digest = push(&build, tag);
        // dev's App Service confirms, so prod's `after` gate opens.
        wait_until(&format!("prod has {tag}"), &server, || {
            prod.client().manifest(REPO, tag).filter(|m| m.digest == digest).map(|_| ())
        });
        assert_eq!(
            arm.linux_fx_version("shop-dev", "production").unwrap(),
            format!("DOCKER|{}/{REPO}@{digest}", dev.host()),
            "production runs the exact digest reference after the swap; ARM saw: {:#?}",
            arm.log()
        );
        assert_eq!(dev.client().manifest(REPO, tag).unwrap().digest, digest, "dev holds the digest App Service pulls");
    }
    assert_eq!(entra.requests(), 1, "one token for the whole run");
}

#[test]
fn a_refused_deployment_is_deploy_failed_with_azures_code_and_the_next_stage_stays_shut() {
    let entra = FakeEntra::start();
    let arm = FakeArm::start(&entra);
    arm.add_app("shop-dev", OLD, &[]);
    arm.state.forbidden.lock().unwrap().insert("shop-dev".into());
    let port = free_port();
    let build = Registry::plain_notifying(
        &format!("http://127.0.0.1:{port}/hooks/distribution"),
        "X-Ferry-Secret",
        DISTRIBUTION_SECRET,
    );
    let (dev, prod) = (Registry::plain(), Registry::plain());
    let stages = format!(
        r#"  [[pipelines.stages]]
  name = "dev"
  target = "{}/{REPO}"
  notify = {{ kind = "app-service", subscription = "{SUBSCRIPTION}", resource_group = "{RESOURCE_GROUP}", app = "shop-dev" }}
  [[pipelines.stages]]
  name = "prod"
  target = "{}/{REPO}"
  gate = "after"
"#,
        dev.host(),
        prod.host()
    );
    let server = start_ferry(port, &build, &[&dev, &prod], &stages, &entra, &arm);
    let digest = push(&build, "1.0");
    let failed = wait_until("dev is deploy_failed", &server, || {
        history(&server, "dev").into_iter().find(|r| r["digest"] == digest.as_str() && r["state"] == "deploy_failed")
    });
    let error = failed["error"].as_str().unwrap_or_default();
    assert!(error.contains("AuthorizationFailed") && error.contains("web app shop-dev"), "{failed:#}");
    let status = server.cli("status").arg("shop-api").run();
    let text = status.success();
    assert!(text.contains("deploy_failed") && text.contains("AuthorizationFailed"), "ferry status shows it:\n{text}");
    std::thread::sleep(Duration::from_secs(2));
    assert!(prod.client().manifest(REPO, "1.0").is_none(), "prod's after gate opened on a failed deployment");
    assert_eq!(
        arm.log().iter().filter(|l| l.starts_with("PATCH")).count(),
        1,
        "a 403 is not retried: {:#?}",
        arm.log()
    );
}

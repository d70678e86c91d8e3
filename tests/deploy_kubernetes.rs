//! Deploying to Kubernetes / AKS: the notifier against a FAKE API server over TLS
//! (tests/support/kubernetes.rs) — proven to speak the real API by `kubectl` — and a promotion
//! through real registries and `ferry serve` whose failed rollout rolls back on its own.

mod support;

use std::process::Command;
use std::time::{Duration, Instant};

use ferry_core::deploy::kubernetes::ApiServer;
use ferry_core::deploy::{Deployment, KubernetesNotifier, Notifier, NotifyError};
use serde_json::Value;
use support::kubernetes::{FakeKubernetes, TOKEN};
use support::registry::free_port;
use support::{FerryServer, OciLayout, Registry};

const OLD: &str = "127.0.0.1:5999/shop/api@sha256:1111111111111111111111111111111111111111111111111111111111111111";
const NEW: &str = "127.0.0.1:5999/shop/api@sha256:2222222222222222222222222222222222222222222222222222222222222222";

fn kubectl(kubeconfig: &std::path::Path, home: &std::path::Path, args: &[&str]) -> std::process::Output {
    Command::new(support::tools::kubectl())
        .arg("--kubeconfig")
        .arg(kubeconfig)
        .arg("--cache-dir")
        .arg(home.join("cache"))
        .args(args)
        .env("HOME", home)
        .output()
        .expect("run kubectl")
}

#[test]
fn kubectl_accepts_the_fake_api_server() {
    let kube = FakeKubernetes::start();
    kube.add_deployment("shop", "api", OLD, 3);
    kube.add_deployment("shop", "stuck", OLD, 2);
    kube.state.never_available.lock().unwrap().insert(NEW.into());
    let dir = tempfile::tempdir().unwrap();
    let kubeconfig = dir.path().join("config");
    kube.write_kubeconfig(&kubeconfig, TOKEN);

    let got = kubectl(&kubeconfig, dir.path(), &["get", "deployment", "api", "-n", "shop", "-o", "json"]);
    assert!(
        got.status.success(),
        "kubectl get failed:\n{}\nrequests: {:#?}",
        String::from_utf8_lossy(&got.stderr),
        kube.log()
    );
    let deployment: Value = serde_json::from_slice(&got.stdout).unwrap();
    assert_eq!(deployment["spec"]["template"]["spec"]["containers"][0]["image"], OLD);

    let rollout =
        kubectl(&kubeconfig, dir.path(), &["rollout", "status", "deployment/api", "-n", "shop", "--timeout=60s"]);
    let out = String::from_utf8_lossy(&rollout.stdout);
    assert!(
        rollout.status.success() && out.contains("successfully rolled out"),
        "kubectl rollout status: {out}\n{}\nrequests: {:#?}",
        String::from_utf8_lossy(&rollout.stderr),
        kube.log()
    );

    // kubectl's own patch goes through, and kubectl sees the progress deadline like Ferry does.
    let set =
        kubectl(&kubeconfig, dir.path(), &["set", "image", "deployment/stuck", &format!("api={NEW}"), "-n", "shop"]);
    assert!(set.status.success(), "kubectl set image: {}", String::from_utf8_lossy(&set.stderr));
    assert_eq!(kube.image("shop", "stuck", "api"), NEW);
    let stuck =
        kubectl(&kubeconfig, dir.path(), &["rollout", "status", "deployment/stuck", "-n", "shop", "--timeout=60s"]);
    let err = String::from_utf8_lossy(&stuck.stderr);
    assert!(
        !stuck.status.success() && err.contains("exceeded its progress deadline"),
        "kubectl rollout status on a stuck deployment: {err}"
    );

    // kubectl refuses the fake with a wrong token, as a real API server would answer.
    kube.write_kubeconfig(&kubeconfig, "wrong-token");
    let refused = kubectl(&kubeconfig, dir.path(), &["get", "deployment", "api", "-n", "shop", "-o", "json"]);
    assert!(!refused.status.success(), "a wrong token was accepted");
}

fn notifier(
    kube: &FakeKubernetes,
    dir: &std::path::Path,
    token: &str,
    deployment: &str,
    timeout: Duration,
) -> KubernetesNotifier {
    let kubeconfig = dir.join(format!("config-{token}"));
    kube.write_kubeconfig(&kubeconfig, token);
    let api = ApiServer::from_kubeconfig(&kubeconfig, None).unwrap();
    let mut notifier = KubernetesNotifier::new(api, "shop", deployment, "api", timeout).unwrap();
    notifier.poll_interval = Duration::from_millis(50);
    notifier
}

fn deployment(image: &str) -> Deployment {
    Deployment {
        pipeline: "shop-api".into(),
        stage: "aks".into(),
        image: image.into(),
        digest: image.rsplit('@').next().unwrap().into(),
        tag: None,
        build_number: None,
        promotion_id: "p-1".into(),
        rollback: false,
    }
}

#[tokio::test]
async fn the_notifier_patches_one_container_and_waits_for_the_rollout() {
    let kube = FakeKubernetes::start();
    kube.add_deployment("shop", "api", OLD, 3);
    let dir = tempfile::tempdir().unwrap();
    let sidecar = kube.image("shop", "api", "sidecar");
    let notified =
        notifier(&kube, dir.path(), TOKEN, "api", Duration::from_secs(120)).notify(&deployment(NEW)).await.unwrap();
    assert!(notified.confirmed && notified.detail.contains("successfully rolled out"), "{notified:?}");
    assert_eq!(kube.image("shop", "api", "api"), NEW);
    assert_eq!(kube.image("shop", "api", "sidecar"), sidecar, "the other container is untouched");
    let status = &kube.deployment("shop", "api")["status"];
    assert_eq!(status["availableReplicas"], 3, "confirmed only once every replica is available: {status:#}");
    assert_eq!(status["observedGeneration"], 2);
    let reads =
        kube.log().iter().filter(|l| l.starts_with("GET /apis/apps/v1/namespaces/shop/deployments/api")).count();
    assert!(reads >= 4, "it waited through the rollout's steps: {:#?}", kube.log());
}

#[tokio::test]
async fn progress_deadline_exceeded_fails_at_once_without_waiting_out_the_timeout() {
    let kube = FakeKubernetes::start();
    kube.add_deployment("shop", "api", OLD, 3);
    kube.state.never_available.lock().unwrap().insert(NEW.into());
    let dir = tempfile::tempdir().unwrap();
    let started = Instant::now();
    let error = notifier(&kube, dir.path(), TOKEN, "api", Duration::from_secs(3600))
        .notify(&deployment(NEW))
        .await
        .unwrap_err();
    let NotifyError::Permanent { detail, .. } = &error else { panic!("a failed rollout is final: {error:?}") };
    assert!(detail.contains("ProgressDeadlineExceeded") && detail.contains("timed out progressing"), "{detail}");
    assert!(started.elapsed() < Duration::from_secs(600), "it waited out the timeout");
}

#[tokio::test]
async fn a_rollout_that_never_becomes_available_times_out() {
    let kube = FakeKubernetes::start();
    kube.add_deployment("shop", "api", OLD, 3);
    kube.state.stalled.lock().unwrap().insert(NEW.into());
    let dir = tempfile::tempdir().unwrap();
    let error =
        notifier(&kube, dir.path(), TOKEN, "api", Duration::from_secs(2)).notify(&deployment(NEW)).await.unwrap_err();
    let NotifyError::Permanent { detail, .. } = &error else { panic!("{error:?}") };
    assert!(detail.contains("RolloutTimeout") && detail.contains("timeout_secs"), "{detail}");
}

#[tokio::test]
async fn conflicts_are_retried_and_refusals_fail_at_once_naming_the_deployment() {
    let kube = FakeKubernetes::start();
    kube.add_deployment("shop", "api", OLD, 1);
    kube.state.conflicts.store(2, std::sync::atomic::Ordering::SeqCst);
    let dir = tempfile::tempdir().unwrap();
    notifier(&kube, dir.path(), TOKEN, "api", Duration::from_secs(120)).notify(&deployment(NEW)).await.unwrap();
    assert_eq!(kube.log().iter().filter(|l| l.starts_with("PATCH")).count(), 3, "two 409s, then the patch");
    assert_eq!(kube.image("shop", "api", "api"), NEW);

    let before = kube.log().len();
    let error = notifier(&kube, dir.path(), "wrong-token", "api", Duration::from_secs(120))
        .notify(&deployment(OLD))
        .await
        .unwrap_err();
    let NotifyError::Permanent { detail, .. } = &error else { panic!("401 is final: {error:?}") };
    assert!(detail.contains("HTTP 401") && detail.contains("deployment shop/api"), "{detail}");
    assert_eq!(kube.log().len() - before, 1, "not retried");

    let error =
        notifier(&kube, dir.path(), TOKEN, "web", Duration::from_secs(120)).notify(&deployment(OLD)).await.unwrap_err();
    let NotifyError::Permanent { detail, .. } = &error else { panic!("404 is final: {error:?}") };
    assert!(detail.contains("NotFound") && detail.contains("deployments.apps \"web\" not found"), "{detail}");
}

#[tokio::test]
async fn an_aks_kubeconfig_comes_from_arm_and_the_api_server_gets_an_entra_token() {
    use support::azure::{CLIENT_ID, CLIENT_SECRET, FakeArm, FakeEntra, RESOURCE_GROUP, SUBSCRIPTION, TENANT};
    let entra = FakeEntra::start();
    let arm = FakeArm::start(&entra);
    let kube = FakeKubernetes::start();
    *kube.state.entra.lock().unwrap() = Some(entra.state.clone());
    kube.add_deployment("shop", "api", OLD, 2);
    arm.state.aks_kubeconfigs.lock().unwrap().insert("aks-shop".into(), kube.aad_kubeconfig());

    let source = ferry_core::deploy::azure::CredentialSource::ClientSecret {
        tenant_id: TENANT.into(),
        client_id: CLIENT_ID.into(),
        secret: ferry_core::registry::auth::Secret::new(CLIENT_SECRET),
    };
    let http = ferry_core::deploy::azure::azure_http(None).unwrap();
    let authority = url::Url::parse(&format!("{}/", entra.url())).unwrap();
    let credential =
        std::sync::Arc::new(ferry_core::deploy::azure::EntraCredential::new(source, authority, http.clone()));
    let arm_client = ferry_core::deploy::azure::ArmClient::new(credential, url::Url::parse(&arm.url()).unwrap(), http);
    let cluster = ferry_core::deploy::kubernetes::AksCluster {
        arm: std::sync::Arc::new(arm_client),
        subscription: SUBSCRIPTION.into(),
        resource_group: RESOURCE_GROUP.into(),
        cluster: "aks-shop".into(),
        context: None,
    };
    let mut notifier = KubernetesNotifier::for_aks(cluster, "shop", "api", "api", Duration::from_secs(120)).unwrap();
    notifier.poll_interval = Duration::from_millis(50);
    let notified = notifier.notify(&deployment(NEW)).await.unwrap();
    assert!(notified.confirmed, "{notified:?}");
    assert_eq!(kube.image("shop", "api", "api"), NEW);
    let fetch = format!(
        "POST /subscriptions/{SUBSCRIPTION}/resourceGroups/{RESOURCE_GROUP}/providers/Microsoft.ContainerService/managedClusters/aks-shop/listClusterUserCredential?api-version=2024-09-01"
    );
    assert_eq!(arm.log(), vec![fetch], "the kubeconfig is fetched once");
    let scopes: Vec<String> = entra.state.issued.lock().unwrap().values().cloned().collect();
    assert!(scopes.iter().any(|s| s == support::kubernetes::AKS_SERVER_SCOPE), "{scopes:?}");

    // A second deployment reuses the fetched kubeconfig and the cached tokens.
    notifier.notify(&deployment(OLD)).await.unwrap();
    assert_eq!(arm.log().len(), 1);
    assert_eq!(entra.requests(), 2, "one ARM token, one AKS token");
}

#[tokio::test]
async fn a_kubeconfig_client_certificate_authenticates() {
    let kube = FakeKubernetes::start_with_client_certs();
    kube.add_deployment("shop", "api", OLD, 1);
    let (cert, key) = kube.client_cert();
    let dir = tempfile::tempdir().unwrap();
    let ca = support::base64(&std::fs::read(kube.ca_cert()).unwrap());
    let kubeconfig = |user: &str| {
        format!(
            "apiVersion: v1\nkind: Config\ncurrent-context: c\nclusters:\n- name: k\n  cluster:\n    server: https://127.0.0.1:{}\n    certificate-authority-data: {ca}\ncontexts:\n- name: c\n  context: {{cluster: k, user: u}}\nusers:\n- name: u\n  user:\n{user}",
            kube.port
        )
    };
    // Files relative to the kubeconfig, as kubectl resolves them.
    std::fs::copy(&cert, dir.path().join("ferry.crt")).unwrap();
    std::fs::copy(&key, dir.path().join("ferry.key")).unwrap();
    let with_files = dir.path().join("files");
    std::fs::write(&with_files, kubeconfig("    client-certificate: ferry.crt\n    client-key: ferry.key\n")).unwrap();
    let with_data = dir.path().join("data");
    let data = format!(
        "    client-certificate-data: {}\n    client-key-data: {}\n",
        support::base64(&std::fs::read(&cert).unwrap()),
        support::base64(&std::fs::read(&key).unwrap())
    );
    std::fs::write(&with_data, kubeconfig(&data)).unwrap();
    for (path, image) in [(&with_files, NEW), (&with_data, OLD)] {
        let api = ApiServer::from_kubeconfig(path, None).unwrap();
        let mut notifier = KubernetesNotifier::new(api, "shop", "api", "api", Duration::from_secs(60)).unwrap();
        notifier.poll_interval = Duration::from_millis(50);
        notifier.notify(&deployment(image)).await.unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        assert_eq!(kube.image("shop", "api", "api"), image);
    }
    // Without the certificate the TLS handshake is refused.
    let without = dir.path().join("without");
    std::fs::write(&without, kubeconfig("    username: nobody\n")).unwrap();
    let api = ApiServer::from_kubeconfig(&without, None).unwrap();
    let mut notifier = KubernetesNotifier::new(api, "shop", "api", "api", Duration::from_secs(60)).unwrap();
    notifier.attempts = 1;
    assert!(notifier.notify(&deployment(NEW)).await.is_err(), "the fake accepted a client without a certificate");
}

const REPO: &str = "shop/api";
const DISTRIBUTION_SECRET: &str = "deploy-kube-distribution-secret";
const OPERATOR_TOKEN: &str = "deploy-kube-operator-token";

fn wait_until<T>(what: &str, server: &FerryServer, probe: impl FnMut() -> Option<T>) -> T {
    server.wait_until(what, Duration::from_secs(120), probe)
}

fn history(server: &FerryServer, stage: &str) -> Vec<Value> {
    server.cli("history").args(["shop-api", stage, "--json"]).run().json().as_array().cloned().unwrap_or_default()
}

#[test]
fn a_failed_rollout_is_deploy_failed_and_rolls_back_on_its_own() {
    let kube = FakeKubernetes::start();
    let port = free_port();
    let build = Registry::plain_notifying(
        &format!("http://127.0.0.1:{port}/hooks/distribution"),
        "X-Ferry-Secret",
        DISTRIBUTION_SECRET,
    );
    let (dev, prod) = (Registry::plain(), Registry::plain());
    let dir = tempfile::tempdir().unwrap();
    let kubeconfig = dir.path().join("kubeconfig");
    kube.write_kubeconfig(&kubeconfig, TOKEN);
    kube.add_deployment("shop", "api", "127.0.0.1:1/shop/api:before-ferry", 2);
    let mut config = support::registry::plain_registries([build.host(), dev.host(), prod.host()]);
    config.push_str(&format!(
        r#"
[sources.distribution]
secret_env = "E2E_DISTRIBUTION_SECRET"
header = "X-Ferry-Secret"

[[pipelines]]
name = "shop-api"
source = "{}/{REPO}"
  [[pipelines.stages]]
  name = "dev"
  target = "{}/{REPO}"
  notify = {{ kind = "kubernetes", kubeconfig = {:?}, namespace = "shop", deployment = "api", container = "api", timeout_secs = 120 }}
  rollback_on_failure = true
  [[pipelines.stages]]
  name = "prod"
  target = "{}/{REPO}"
  gate = "after"
"#,
        build.host(),
        dev.host(),
        kubeconfig.display().to_string(),
        prod.host(),
    ));
    let server = FerryServer::start_with_operator_token(
        port,
        &config,
        &[("E2E_DISTRIBUTION_SECRET", DISTRIBUTION_SECRET)],
        OPERATOR_TOKEN,
    );
    let mut layout = OciLayout::new();
    let good = layout.add_image("1.0", &[120_000]).digest().to_string();
    let bad = layout.add_image("1.1", &[130_000]).digest().to_string();
    let image = |digest: &str| format!("{}/{REPO}@{digest}", dev.host());
    kube.state.never_available.lock().unwrap().insert(image(&bad));

    build.skopeo_push(&layout.reference("1.0"), &format!("{REPO}:1.0"), &[]);
    // The rollout of 1.0 completes: the deployment runs the digest and prod's `after` gate opens.
    wait_until("prod has 1.0", &server, || {
        prod.client().manifest(REPO, "1.0").filter(|m| m.digest == good).map(|_| ())
    });
    assert_eq!(kube.image("shop", "api", "api"), image(&good));

    build.skopeo_push(&layout.reference("1.1"), &format!("{REPO}:1.1"), &[]);
    let failed = wait_until("1.1 is deploy_failed in dev", &server, || {
        history(&server, "dev").into_iter().find(|r| r["digest"] == bad.as_str() && r["state"] == "deploy_failed")
    });
    let error = failed["error"].as_str().unwrap_or_default();
    assert!(error.contains("ProgressDeadlineExceeded") && error.contains("deployment shop/api"), "{failed:#}");
    let rollback = wait_until("dev rolled back to 1.0", &server, || {
        history(&server, "dev").into_iter().find(|r| r["trigger"] == "rollback" && r["state"] == "succeeded")
    });
    assert_eq!(rollback["digest"], good.as_str(), "{rollback:#}");
    assert_eq!(kube.image("shop", "api", "api"), image(&good), "the deployment runs the good digest again");
    let status = server.cli("status").args(["shop-api", "--json"]).run().json();
    let dev_status = status[0]["stages"].as_array().unwrap().iter().find(|s| s["name"] == "dev").unwrap().clone();
    assert_eq!(dev_status["current"]["digest"], good.as_str(), "{dev_status:#}");
    assert!(prod.client().manifest(REPO, "1.1").is_none(), "a failed rollout opened prod's after gate");
}

#[test]
fn kubernetes_then_app_service_stages_deploy_digest_by_digest() {
    use support::azure::{CLIENT_ID, CLIENT_SECRET, FakeArm, FakeEntra, RESOURCE_GROUP, SUBSCRIPTION, TENANT};
    let entra = FakeEntra::start();
    let arm = FakeArm::start(&entra);
    arm.add_app("shop-prod", OLD, &["staging"]);
    let kube = FakeKubernetes::start();
    kube.add_deployment("shop", "api", OLD, 3);
    let dir = tempfile::tempdir().unwrap();
    let kubeconfig = dir.path().join("kubeconfig");
    kube.write_kubeconfig(&kubeconfig, TOKEN);
    let port = free_port();
    let build = Registry::plain_notifying(
        &format!("http://127.0.0.1:{port}/hooks/distribution"),
        "X-Ferry-Secret",
        DISTRIBUTION_SECRET,
    );
    let (dev, prod) = (Registry::plain(), Registry::plain());
    let mut config = support::registry::plain_registries([build.host(), dev.host(), prod.host()]);
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
  [[pipelines.stages]]
  name = "dev"
  target = "{}/{REPO}"
  notify = {{ kind = "kubernetes", kubeconfig = {:?}, namespace = "shop", deployment = "api", container = "api" }}
  [[pipelines.stages]]
  name = "prod"
  target = "{}/{REPO}"
  gate = "after"
  notify = {{ kind = "app-service", subscription = "{SUBSCRIPTION}", resource_group = "{RESOURCE_GROUP}", app = "shop-prod", slot = "staging", swap = true }}
"#,
        entra.url(),
        arm.url(),
        build.host(),
        dev.host(),
        kubeconfig.display().to_string(),
        prod.host(),
    ));
    let server = FerryServer::start_with_operator_token(
        port,
        &config,
        &[("E2E_DISTRIBUTION_SECRET", DISTRIBUTION_SECRET), ("E2E_AZURE_SECRET", CLIENT_SECRET)],
        OPERATOR_TOKEN,
    );
    let mut layout = OciLayout::new();
    for (tag, size) in [("1.0", 110_000), ("1.1", 120_000), ("1.2", 90_000)] {
        let digest = layout.add_image(tag, &[size]).digest().to_string();
        build.skopeo_push(&layout.reference(tag), &format!("{REPO}:{tag}"), &[]);
        let fx = format!("DOCKER|{}/{REPO}@{digest}", prod.host());
        wait_until(&format!("App Service production runs {tag}"), &server, || {
            (arm.linux_fx_version("shop-prod", "production").as_deref() == Some(fx.as_str())).then_some(())
        });
        assert_eq!(
            kube.image("shop", "api", "api"),
            format!("{}/{REPO}@{digest}", dev.host()),
            "dev's deployment runs {tag}"
        );
        assert_eq!(
            prod.client().manifest(REPO, tag).unwrap().computed_digest(),
            digest,
            "prod holds the bytes of {tag}"
        );
        let prod_history = history(&server, "prod");
        let record = prod_history.iter().find(|r| r["digest"] == digest.as_str()).expect("a prod record");
        assert_eq!(record["state"], "succeeded", "{record:#}");
    }
}

//! A FAKE Kubernetes API server (no kube-apiserver can run here) over TLS with a throw-away CA:
//! discovery (`/api`, `/apis`, `/apis/apps/v1`, `/version`), Deployments get / list / watch and
//! strategic-merge PATCH of containers by name, `Status` errors, bearer-token authentication.
//! Deployments progress one step per read (or per watch tick) the way the deployment controller
//! moves them: observedGeneration, updated, then available replicas; an image marked as never
//! available ends in `Progressing=False, ProgressDeadlineExceeded`, a stalled one never ends.
//! `kubectl` is pointed at it by the tests to prove it speaks the real API.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};
use tempfile::TempDir;
use tokio_rustls::rustls;

use super::registry::make_test_pki;

pub const TOKEN: &str = "fake-kubernetes-service-account-token";
/// The AKS server application's scope (as in kubelogin).
pub const AKS_SERVER_SCOPE: &str = "6dae42f8-4368-4678-94ff-3960e28e3630/.default";

#[derive(Default)]
pub struct KubeState {
    /// (namespace, name) → Deployment.
    pub deployments: Mutex<HashMap<(String, String), Value>>,
    /// Images whose rollout ends in ProgressDeadlineExceeded.
    pub never_available: Mutex<HashSet<String>>,
    /// Images whose rollout never finishes nor fails.
    pub stalled: Mutex<HashSet<String>>,
    /// The next this many PATCHes get 409 Conflict.
    pub conflicts: AtomicUsize,
    /// Requests as `METHOD path?query`.
    pub log: Mutex<Vec<String>>,
    /// When set, tokens this fake Entra ID issued for the AKS server application are accepted
    /// too (an Entra-integrated AKS API server).
    pub entra: Mutex<Option<Arc<super::azure::EntraState>>>,
    /// TLS already verified the client's certificate.
    client_certs: bool,
    resource_version: AtomicUsize,
}

pub struct FakeKubernetes {
    pub state: Arc<KubeState>,
    pub port: u16,
    dir: TempDir,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
}

impl FakeKubernetes {
    pub fn start() -> Self {
        Self::launch(false)
    }

    /// Requires a client certificate signed by its CA (then no bearer token is needed), as an
    /// API server with x509 client authentication; [`FakeKubernetes::client_cert`] makes one.
    pub fn start_with_client_certs() -> Self {
        Self::launch(true)
    }

    fn launch(client_certs: bool) -> Self {
        let dir = tempfile::Builder::new().prefix("fake-kube-").tempdir().unwrap();
        let pki = make_test_pki(dir.path());
        use rustls_pki_types::pem::PemObject;
        let certs: Vec<_> =
            rustls_pki_types::CertificateDer::pem_file_iter(&pki.server_cert).unwrap().map(|c| c.unwrap()).collect();
        let key = rustls_pki_types::PrivateKeyDer::from_pem_file(&pki.server_key).unwrap();
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .unwrap();
        let builder = if client_certs {
            let mut roots = rustls::RootCertStore::empty();
            for ca in rustls_pki_types::CertificateDer::pem_file_iter(&pki.ca_cert).unwrap() {
                roots.add(ca.unwrap()).unwrap();
            }
            let verifier =
                rustls::server::WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider).build().unwrap();
            builder.with_client_cert_verifier(verifier)
        } else {
            builder.with_no_client_auth()
        };
        let mut config = builder.with_single_cert(certs, key).unwrap();
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));

        let state = Arc::new(KubeState { client_certs, ..KubeState::default() });
        let app = axum::Router::new().fallback(api).with_state(state.clone());
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let port = listener.local_addr().unwrap().port();
        let (stop, mut stopped) = tokio::sync::oneshot::channel::<()>();
        std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
            runtime.block_on(async move {
                let listener = tokio::net::TcpListener::from_std(listener).unwrap();
                loop {
                    let (stream, _) = tokio::select! {
                        accepted = listener.accept() => match accepted { Ok(a) => a, Err(_) => continue },
                        _ = &mut stopped => break,
                    };
                    let acceptor = acceptor.clone();
                    let app = app.clone();
                    tokio::spawn(async move {
                        let Ok(tls) = acceptor.accept(stream).await else { return };
                        let service = hyper_util::service::TowerToHyperService::new(app);
                        let _ = hyper::server::conn::http1::Builder::new()
                            .serve_connection(hyper_util::rt::TokioIo::new(tls), service)
                            .await;
                    });
                }
            });
            runtime.shutdown_background();
        });
        FakeKubernetes { state, port, dir, stop: Some(stop) }
    }

    /// A client certificate and key (PEM files) signed by this server's CA.
    pub fn client_cert(&self) -> (PathBuf, PathBuf) {
        let openssl = super::tools::openssl();
        let d = self.dir.path();
        let (key, csr, cert, ext) =
            (d.join("client.key"), d.join("client.csr"), d.join("client.pem"), d.join("client.ext"));
        std::fs::write(
            &ext,
            "basicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature\nextendedKeyUsage=clientAuth\n",
        )
        .unwrap();
        let run = |args: Vec<String>| {
            let out = std::process::Command::new(&openssl).args(&args).output().unwrap();
            assert!(out.status.success(), "openssl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
        };
        let p = |p: &Path| p.display().to_string();
        run([
            "req",
            "-new",
            "-nodes",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-keyout",
            &p(&key),
            "-out",
            &p(&csr),
            "-subj",
            "/CN=ferry/O=deployers",
        ]
        .map(String::from)
        .to_vec());
        run([
            "x509",
            "-req",
            "-days",
            "2",
            "-set_serial",
            "7",
            "-in",
            &p(&csr),
            "-CA",
            &p(&d.join("ca.pem")),
            "-CAkey",
            &p(&d.join("ca.key")),
            "-out",
            &p(&cert),
            "-extfile",
            &p(&ext),
        ]
        .map(String::from)
        .to_vec());
        (cert, key)
    }

    pub fn ca_cert(&self) -> PathBuf {
        self.dir.path().join("ca.pem")
    }

    /// A kubeconfig (YAML, as kubectl writes them) for this server with `token`, at `path`.
    pub fn write_kubeconfig(&self, path: &Path, token: &str) {
        let ca = super::base64(&std::fs::read(self.ca_cert()).unwrap());
        std::fs::write(
            path,
            format!(
                "apiVersion: v1\nkind: Config\ncurrent-context: fake\nclusters:\n- name: fake-aks\n  cluster:\n    server: https://127.0.0.1:{}\n    certificate-authority-data: {ca}\ncontexts:\n- name: fake\n  context:\n    cluster: fake-aks\n    user: ferry\n    namespace: shop\nusers:\n- name: ferry\n  user:\n    token: {token}\n",
                self.port
            ),
        )
        .unwrap();
    }

    /// The user kubeconfig of an Entra-integrated AKS cluster, as `listClusterUserCredential`
    /// returns it: the user runs kubelogin (an exec plugin) instead of holding a token.
    pub fn aad_kubeconfig(&self) -> String {
        let ca = super::base64(&std::fs::read(self.ca_cert()).unwrap());
        format!(
            "apiVersion: v1\nkind: Config\ncurrent-context: aks-shop\nclusters:\n- name: aks-shop\n  cluster:\n    server: https://127.0.0.1:{}\n    certificate-authority-data: {ca}\ncontexts:\n- name: aks-shop\n  context:\n    cluster: aks-shop\n    user: clusterUser_rg-shop_aks-shop\nusers:\n- name: clusterUser_rg-shop_aks-shop\n  user:\n    exec:\n      apiVersion: client.authentication.k8s.io/v1beta1\n      command: kubelogin\n      args: [get-token, --environment, AzurePublicCloud, --server-id, 6dae42f8-4368-4678-94ff-3960e28e3630, --login, devicecode]\n      interactiveMode: IfAvailable\n",
            self.port
        )
    }

    /// A Deployment `namespace/name` with `replicas`, containers `api` (running `image`) and
    /// `sidecar`, fully rolled out.
    pub fn add_deployment(&self, namespace: &str, name: &str, image: &str, replicas: i64) {
        let rv = self.state.resource_version.fetch_add(1, Ordering::SeqCst) + 1;
        let deployment = json!({
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": {
                "name": name, "namespace": namespace, "generation": 1, "resourceVersion": rv.to_string(),
                "uid": "5f2a1c1e-0000-4000-8000-000000000001", "creationTimestamp": "2026-01-01T00:00:00Z",
                "labels": { "app": name }
            },
            "spec": {
                "replicas": replicas,
                "progressDeadlineSeconds": 600,
                "selector": { "matchLabels": { "app": name } },
                "strategy": { "type": "RollingUpdate", "rollingUpdate": { "maxSurge": "25%", "maxUnavailable": "25%" } },
                "template": {
                    "metadata": { "labels": { "app": name } },
                    "spec": { "containers": [
                        { "name": "api", "image": image },
                        { "name": "sidecar", "image": "127.0.0.1:1/envoy@sha256:0000000000000000000000000000000000000000000000000000000000000000" }
                    ] }
                }
            },
            "status": complete_status(1, replicas),
        });
        self.state.deployments.lock().unwrap().insert((namespace.into(), name.into()), deployment);
    }

    pub fn deployment(&self, namespace: &str, name: &str) -> Value {
        self.state.deployments.lock().unwrap()[&(namespace.to_string(), name.to_string())].clone()
    }

    /// The image of container `container`.
    pub fn image(&self, namespace: &str, name: &str, container: &str) -> String {
        let deployment = self.deployment(namespace, name);
        deployment["spec"]["template"]["spec"]["containers"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["name"] == container)
            .and_then(|c| c["image"].as_str())
            .unwrap_or_default()
            .to_string()
    }

    pub fn log(&self) -> Vec<String> {
        self.state.log.lock().unwrap().clone()
    }
}

impl Drop for FakeKubernetes {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

fn complete_status(generation: i64, replicas: i64) -> Value {
    json!({
        "observedGeneration": generation, "replicas": replicas, "updatedReplicas": replicas,
        "readyReplicas": replicas, "availableReplicas": replicas,
        "conditions": [
            { "type": "Available", "status": "True", "reason": "MinimumReplicasAvailable", "message": "Deployment has minimum availability." },
            { "type": "Progressing", "status": "True", "reason": "NewReplicaSetAvailable", "message": "ReplicaSet has successfully progressed." }
        ]
    })
}

/// One step of the deployment controller.
fn advance(state: &KubeState, deployment: &mut Value) {
    let generation = deployment["metadata"]["generation"].as_i64().unwrap_or(1);
    let replicas = deployment["spec"]["replicas"].as_i64().unwrap_or(1);
    let image =
        deployment["spec"]["template"]["spec"]["containers"][0]["image"].as_str().unwrap_or_default().to_string();
    let name = deployment["metadata"]["name"].as_str().unwrap_or_default().to_string();
    let status = &mut deployment["status"];
    let int = |v: &Value| v.as_i64().unwrap_or(0);
    if int(&status["observedGeneration"]) < generation {
        *status = json!({
            "observedGeneration": generation, "replicas": replicas + 1, "updatedReplicas": 1,
            "readyReplicas": replicas, "availableReplicas": replicas,
            "conditions": [ { "type": "Progressing", "status": "True", "reason": "ReplicaSetUpdated", "message": "ReplicaSet is progressing." } ]
        });
        return;
    }
    if state.stalled.lock().unwrap().contains(&image) {
        return;
    }
    if state.never_available.lock().unwrap().contains(&image) {
        status["conditions"] = json!([
            { "type": "Available", "status": "True", "reason": "MinimumReplicasAvailable", "message": "Deployment has minimum availability." },
            { "type": "Progressing", "status": "False", "reason": "ProgressDeadlineExceeded",
              "message": format!("ReplicaSet \"{}-7d9c6b5f4d\" has timed out progressing.", name) }
        ]);
        return;
    }
    if int(&status["updatedReplicas"]) < replicas {
        status["updatedReplicas"] = json!(replicas);
        status["availableReplicas"] = json!(replicas - 1);
        return;
    }
    if int(&status["replicas"]) > replicas {
        status["replicas"] = json!(replicas);
        return;
    }
    *status = complete_status(generation, replicas);
}

fn kube_status(code: StatusCode, reason: &str, message: &str) -> Response {
    (
        code,
        axum::Json(json!({ "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
            "message": message, "reason": reason, "code": code.as_u16() })),
    )
        .into_response()
}

async fn api(
    State(state): State<Arc<KubeState>>,
    method: Method,
    headers: HeaderMap,
    uri: Uri,
    body: Bytes,
) -> Response {
    state.log.lock().unwrap().push(format!("{method} {uri}"));
    let path = uri.path().to_string();
    let query: HashMap<String, String> =
        url::form_urlencoded::parse(uri.query().unwrap_or("").as_bytes()).into_owned().collect();
    let bearer = headers.get("authorization").and_then(|v| v.to_str().ok()).and_then(|v| v.strip_prefix("Bearer "));
    let entra_token =
        bearer.is_some_and(|token| {
            state.entra.lock().unwrap().as_ref().is_some_and(|entra| {
                entra.issued.lock().unwrap().get(token).is_some_and(|scope| scope == AKS_SERVER_SCOPE)
            })
        });
    if bearer != Some(TOKEN) && !entra_token && !state.client_certs {
        return kube_status(StatusCode::UNAUTHORIZED, "Unauthorized", "Unauthorized");
    }
    match (method.clone(), path.as_str()) {
        (Method::GET, "/version") => {
            return axum::Json(
                json!({ "major": "1", "minor": "31", "gitVersion": "v1.31.0", "platform": "linux/amd64" }),
            )
            .into_response();
        }
        (Method::GET, "/api") => {
            return axum::Json(json!({ "kind": "APIVersions", "versions": ["v1"],
                "serverAddressByClientCIDRs": [ { "clientCIDR": "0.0.0.0/0", "serverAddress": "127.0.0.1" } ] }))
            .into_response();
        }
        (Method::GET, "/apis") => {
            return axum::Json(json!({ "kind": "APIGroupList", "apiVersion": "v1", "groups": [ {
                "name": "apps", "versions": [ { "groupVersion": "apps/v1", "version": "v1" } ],
                "preferredVersion": { "groupVersion": "apps/v1", "version": "v1" } } ] }))
            .into_response();
        }
        (Method::GET, "/api/v1") => {
            return axum::Json(json!({ "kind": "APIResourceList", "groupVersion": "v1", "resources": [] }))
                .into_response();
        }
        (Method::GET, "/apis/apps/v1") => {
            return axum::Json(json!({ "kind": "APIResourceList", "apiVersion": "v1", "groupVersion": "apps/v1", "resources": [
                { "name": "deployments", "singularName": "deployment", "namespaced": true, "kind": "Deployment",
                  "verbs": ["create", "delete", "get", "list", "patch", "update", "watch"], "shortNames": ["deploy"], "categories": ["all"] },
                { "name": "deployments/status", "singularName": "", "namespaced": true, "kind": "Deployment", "verbs": ["get", "patch", "update"] }
            ] }))
            .into_response();
        }
        _ => {}
    }
    let Some(rest) = path.strip_prefix("/apis/apps/v1/namespaces/") else {
        return kube_status(
            StatusCode::NOT_FOUND,
            "NotFound",
            &format!("the server could not find the requested resource ({path})"),
        );
    };
    let parts: Vec<&str> = rest.split('/').collect();
    match parts.as_slice() {
        [namespace, "deployments"] if method == Method::GET => {
            let wanted = query.get("fieldSelector").and_then(|f| f.strip_prefix("metadata.name=")).map(str::to_string);
            let namespace = namespace.to_string();
            if query.get("watch").is_some_and(|w| w == "true" || w == "1") {
                return watch(state, namespace, wanted);
            }
            let items: Vec<Value> = state
                .deployments
                .lock()
                .unwrap()
                .iter()
                .filter(|((ns, name), _)| *ns == namespace && wanted.as_ref().is_none_or(|w| w == name))
                .map(|(_, d)| d.clone())
                .collect();
            let rv = state.resource_version.load(Ordering::SeqCst).to_string();
            axum::Json(json!({ "kind": "DeploymentList", "apiVersion": "apps/v1", "metadata": { "resourceVersion": rv }, "items": items }))
                .into_response()
        }
        [namespace, "deployments", name] => {
            let key = (namespace.to_string(), name.to_string());
            let mut deployments = state.deployments.lock().unwrap();
            let Some(deployment) = deployments.get_mut(&key) else {
                return kube_status(
                    StatusCode::NOT_FOUND,
                    "NotFound",
                    &format!("deployments.apps \"{name}\" not found"),
                );
            };
            match method {
                Method::GET => {
                    advance(&state, deployment);
                    axum::Json(deployment.clone()).into_response()
                }
                Method::PATCH => {
                    let content_type = headers.get("content-type").and_then(|v| v.to_str().ok()).unwrap_or("");
                    if content_type != "application/strategic-merge-patch+json" {
                        return kube_status(
                            StatusCode::UNSUPPORTED_MEDIA_TYPE,
                            "UnsupportedMediaType",
                            &format!(
                                "the body of the request was in an unknown format - accepted media types include: application/json-patch+json, application/merge-patch+json, application/apply-patch+yaml, application/strategic-merge-patch+json (got {content_type})"
                            ),
                        );
                    }
                    if state.conflicts.load(Ordering::SeqCst) > 0 {
                        state.conflicts.fetch_sub(1, Ordering::SeqCst);
                        return kube_status(
                            StatusCode::CONFLICT,
                            "Conflict",
                            &format!(
                                "Operation cannot be fulfilled on deployments.apps \"{name}\": the object has been modified; please apply your changes to the latest version and try again"
                            ),
                        );
                    }
                    let patch: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
                    let before = deployment["spec"].clone();
                    for change in patch["spec"]["template"]["spec"]["containers"].as_array().into_iter().flatten() {
                        let containers = deployment["spec"]["template"]["spec"]["containers"].as_array_mut().unwrap();
                        match containers.iter_mut().find(|c| c["name"] == change["name"]) {
                            Some(existing) => {
                                for (k, v) in change.as_object().unwrap() {
                                    existing[k] = v.clone();
                                }
                            }
                            None => containers.push(change.clone()),
                        }
                    }
                    if deployment["spec"] != before {
                        let generation = deployment["metadata"]["generation"].as_i64().unwrap_or(1) + 1;
                        deployment["metadata"]["generation"] = json!(generation);
                        let rv = state.resource_version.fetch_add(1, Ordering::SeqCst) + 1;
                        deployment["metadata"]["resourceVersion"] = json!(rv.to_string());
                    }
                    axum::Json(deployment.clone()).into_response()
                }
                _ => kube_status(StatusCode::METHOD_NOT_ALLOWED, "MethodNotAllowed", "not supported by the fake"),
            }
        }
        _ => kube_status(StatusCode::NOT_FOUND, "NotFound", "the server could not find the requested resource"),
    }
}

/// A watch: the deployment as it progresses, one MODIFIED event per tick, for a while.
fn watch(state: Arc<KubeState>, namespace: String, name: Option<String>) -> Response {
    let stream = futures_util::stream::unfold(0u32, move |tick| {
        let state = state.clone();
        let namespace = namespace.clone();
        let name = name.clone();
        async move {
            if tick >= 150 {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
            let mut lines = String::new();
            let mut deployments = state.deployments.lock().unwrap();
            for ((ns, n), deployment) in deployments.iter_mut() {
                if *ns == namespace && name.as_ref().is_none_or(|w| w == n) {
                    advance(&state, deployment);
                    lines.push_str(
                        &serde_json::to_string(&json!({ "type": "MODIFIED", "object": deployment })).unwrap(),
                    );
                    lines.push('\n');
                }
            }
            Some((Ok::<_, std::convert::Infallible>(Bytes::from(lines)), tick + 1))
        }
    });
    Response::builder().header("content-type", "application/json").body(Body::from_stream(stream)).unwrap()
}

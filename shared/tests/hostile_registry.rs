//! A hostile registry (axum on 127.0.0.1) that tries to steer Ferry, with the registry's
//! credentials, somewhere else: a foreign or downgraded token realm, an upload `Location` or
//! referrers `Link` on another host, redirects; that pages its referrers for ever; that
//! trickles its answers. A second listener stands for "elsewhere" and records every connection
//! and request, so each test can prove that nothing (no credentials, no bytes) reached it.

use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::{RawQuery, Request};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use ferry_core::registry::auth::{Credential, Secret};
use ferry_core::registry::client::{
    ClientOptions, Deadlines, HttpClients, MAX_REFERRER_PAGES, MAX_REFERRERS, RegistryClient, RetryPolicy,
};
use ferry_core::registry::reference::Digest;
use ferry_core::registry::{Access, CopyError, CopyOptions, Location, Progress, copy};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_rustls::TlsAcceptor;
use tokio_rustls::rustls;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};
use url::Url;

/// `ferry:s3cret`, the registry's credentials, as Ferry sends them.
const BASIC: &str = "Basic ZmVycnk6czNjcmV0";

/// Generous bound for anything that must end: a hang fails the test instead of the CI job.
const ENDS_WITHIN: Duration = Duration::from_secs(60);

/// Everything that reached one listener.
#[derive(Default)]
struct Seen {
    connections: AtomicUsize,
    /// `METHOD /path?query` and the request's headers.
    requests: Mutex<Vec<(String, HeaderMap)>>,
}

impl Seen {
    fn connections(&self) -> usize {
        self.connections.load(Ordering::SeqCst)
    }

    fn requests(&self) -> Vec<(String, HeaderMap)> {
        self.requests.lock().unwrap().clone()
    }
}

trait Io: AsyncRead + AsyncWrite + Unpin + Send + 'static {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send + 'static> Io for T {}

/// Counts every TCP connection (so "never contacted" covers a TLS handshake too).
struct CountingListener {
    tcp: tokio::net::TcpListener,
    tls: Option<TlsAcceptor>,
    seen: Arc<Seen>,
}

impl axum::serve::Listener for CountingListener {
    type Io = Box<dyn Io>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        loop {
            let Ok((stream, addr)) = self.tcp.accept().await else { continue };
            self.seen.connections.fetch_add(1, Ordering::SeqCst);
            match &self.tls {
                None => return (Box::new(stream), addr),
                Some(acceptor) => {
                    if let Ok(tls) = acceptor.accept(stream).await {
                        return (Box::new(tls), addr);
                    }
                }
            }
        }
    }

    fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.tcp.local_addr()
    }
}

struct Server {
    port: u16,
    seen: Arc<Seen>,
    https: bool,
}

impl Server {
    fn host(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    fn url(&self, path: &str) -> String {
        format!("{}://127.0.0.1:{}{path}", if self.https { "https" } else { "http" }, self.port)
    }
}

async fn serve(app: Router, tls: Option<&Pki>) -> Server {
    let seen = Arc::new(Seen::default());
    let recorder = seen.clone();
    let app = app.layer(axum::middleware::from_fn(move |request: Request, next: axum::middleware::Next| {
        let recorder = recorder.clone();
        async move {
            let line = format!("{} {}", request.method(), request.uri());
            recorder.requests.lock().unwrap().push((line, request.headers().clone()));
            next.run(request).await
        }
    }));
    let tcp = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = tcp.local_addr().unwrap().port();
    let listener = CountingListener { tcp, tls: tls.map(Pki::acceptor), seen: seen.clone() };
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    Server { port, seen, https: tls.is_some() }
}

/// "Elsewhere": answers whatever it is asked as if it were a token service, upload endpoint or
/// object store, so that a client that does go there would carry on.
async fn elsewhere(tls: Option<&Pki>) -> Server {
    let app = Router::new().fallback(|request: Request| async move {
        match request.uri().path() {
            "/token" => axum::Json(serde_json::json!({ "token": "granted", "expires_in": 300 })).into_response(),
            "/blob" => "bytes from elsewhere".into_response(),
            _ => (StatusCode::CREATED, [(header::LOCATION, "/done")]).into_response(),
        }
    });
    serve(app, tls).await
}

/// A throw-away CA and a certificate for 127.0.0.1 it signed, made with the `openssl` CLI.
struct Pki {
    _dir: tempfile::TempDir,
    ca_pem: Vec<u8>,
    cert_pem: Vec<u8>,
    key_pem: Vec<u8>,
}

impl Pki {
    fn new() -> Pki {
        let dir = tempfile::tempdir().unwrap();
        let d = |name: &str| dir.path().join(name).display().to_string();
        std::fs::write(
            d("server.ext"),
            "basicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature,keyEncipherment\n\
             extendedKeyUsage=serverAuth\nsubjectAltName=IP:127.0.0.1,DNS:localhost\n",
        )
        .unwrap();
        let ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1"];
        openssl(
            dir.path(),
            &[
                &["req", "-x509", "-nodes", "-days", "2"][..],
                &ec,
                &[
                    "-keyout",
                    &d("ca.key"),
                    "-out",
                    &d("ca.pem"),
                    "-subj",
                    "/CN=Ferry Hostile Test CA",
                    "-addext",
                    "basicConstraints=critical,CA:TRUE",
                    "-addext",
                    "keyUsage=critical,keyCertSign,cRLSign",
                ],
            ],
        );
        openssl(
            dir.path(),
            &[
                &["req", "-new", "-nodes"][..],
                &ec,
                &["-keyout", &d("server.key"), "-out", &d("server.csr"), "-subj", "/CN=localhost"],
            ],
        );
        openssl(
            dir.path(),
            &[&[
                "x509",
                "-req",
                "-days",
                "2",
                "-set_serial",
                "2",
                "-in",
                &d("server.csr"),
                "-CA",
                &d("ca.pem"),
                "-CAkey",
                &d("ca.key"),
                "-out",
                &d("server.pem"),
                "-extfile",
                &d("server.ext"),
            ][..]],
        );
        let read = |name: &str| std::fs::read(dir.path().join(name)).unwrap();
        Pki { ca_pem: read("ca.pem"), cert_pem: read("server.pem"), key_pem: read("server.key"), _dir: dir }
    }

    fn acceptor(&self) -> TlsAcceptor {
        let certs = CertificateDer::pem_slice_iter(&self.cert_pem).collect::<Result<Vec<_>, _>>().unwrap();
        let key = PrivateKeyDer::from_pem_slice(&self.key_pem).unwrap();
        let config =
            rustls::ServerConfig::builder_with_provider(Arc::new(rustls::crypto::aws_lc_rs::default_provider()))
                .with_safe_default_protocol_versions()
                .unwrap()
                .with_no_client_auth()
                .with_single_cert(certs, key)
                .unwrap();
        TlsAcceptor::from(Arc::new(config))
    }
}

fn openssl(dir: &Path, args: &[&[&str]]) {
    let args: Vec<&str> = args.concat();
    let out = Command::new("openssl").args(&args).current_dir(dir).output().unwrap_or_else(|e| {
        panic!("cannot run openssl ({e}); install it (apt-get install openssl) to run the TLS tests")
    });
    assert!(out.status.success(), "openssl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
}

/// Options for a plain-http registry at `host`, without retries (each test wants one attempt).
fn options_for(host: &str) -> ClientOptions {
    ClientOptions {
        plain_http: vec![host.to_string()],
        retry: RetryPolicy { retries: 0, ..RetryPolicy::default() },
        ..ClientOptions::default()
    }
}

fn client(host: &str, options: &ClientOptions) -> Arc<RegistryClient> {
    let http = HttpClients::new(options).unwrap();
    let credential = Credential::Basic { username: "ferry".into(), password: Secret::new("s3cret") };
    RegistryClient::new(http.for_registry(host), host, options, Some(credential)).unwrap()
}

async fn bounded<T>(what: &str, work: impl Future<Output = T>) -> T {
    tokio::time::timeout(ENDS_WITHIN, work)
        .await
        .unwrap_or_else(|_| panic!("{what} did not end within {ENDS_WITHIN:?}"))
}

fn bearer_challenge(realm: &str) -> Response {
    (
        StatusCode::UNAUTHORIZED,
        [(
            header::WWW_AUTHENTICATE,
            format!(r#"Bearer realm="{realm}",service="hostile",scope="repository:shop/api:pull""#),
        )],
    )
        .into_response()
}

fn basic_challenge() -> Response {
    (StatusCode::UNAUTHORIZED, [(header::WWW_AUTHENTICATE, r#"Basic realm="hostile""#)]).into_response()
}

fn has(headers: &HeaderMap, value: &str) -> bool {
    headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok()) == Some(value)
}

/// A small, valid OCI image: its manifest bytes and its config and layer blobs.
struct Image {
    manifest: Vec<u8>,
    config: Vec<u8>,
    layer_digest: Digest,
    layer_size: usize,
}

const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";

fn image(layer_size: usize) -> Image {
    let config = br#"{"architecture":"amd64","os":"linux"}"#.to_vec();
    let layer_digest = Digest::sha256_of(&vec![7u8; layer_size]);
    let manifest = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": { "mediaType": "application/vnd.oci.image.config.v1+json",
                    "digest": Digest::sha256_of(&config).to_string(), "size": config.len() },
        "layers": [{ "mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
                     "digest": layer_digest.to_string(), "size": layer_size }],
    }))
    .unwrap();
    Image { manifest, config, layer_digest, layer_size }
}

fn manifest_response(manifest: &[u8]) -> Response {
    (
        [
            (header::CONTENT_TYPE, OCI_MANIFEST.to_string()),
            (header::HeaderName::from_static("docker-content-digest"), Digest::sha256_of(manifest).to_string()),
        ],
        manifest.to_vec(),
    )
        .into_response()
}

/// A 200 whose body comes one byte every `every`, `total` bytes long: a read timeout restarts
/// on each byte and never fires.
fn trickle(total: usize, every: Duration, content_type: &str) -> Response {
    let stream = futures_util::stream::unfold(0usize, move |sent| async move {
        if sent == total {
            return None;
        }
        tokio::time::sleep(every).await;
        Some((Ok::<_, std::io::Error>(bytes::Bytes::from_static(b" ")), sent + 1))
    });
    (
        [(header::CONTENT_TYPE, content_type.to_string())],
        [(header::CONTENT_LENGTH, total.to_string())],
        Body::from_stream(stream),
    )
        .into_response()
}

// --- item 1: credentials stay with their registry --------------------------------------------

#[tokio::test]
async fn a_foreign_token_realm_is_refused_and_never_contacted() {
    let pki = Pki::new();
    for foreign in [elsewhere(None).await, elsewhere(Some(&pki)).await] {
        let realm = foreign.url("/token");
        let app = Router::new().route(
            "/v2/shop/api/manifests/{reference}",
            get({
                let realm = realm.clone();
                move || async move { bearer_challenge(&realm) }
            }),
        );
        let registry = serve(app, None).await;
        let host = registry.host();
        let mut options = options_for(&host);
        options.ca_certs_pem.push(pki.ca_pem.clone());
        let err = bounded("a manifest", client(&host, &options).get_manifest("shop/api", "1.0")).await.unwrap_err();

        assert!(matches!(err, CopyError::Refused { .. }), "{err:?}");
        let text = err.to_string();
        assert!(text.contains(&realm), "names the realm: {text}");
        assert!(text.contains(&format!(r#"[registries."{host}"]"#)) && text.contains("token_realm"), "{text}");
        assert!(!text.contains("s3cret"), "{text}");
        assert_eq!(foreign.seen.connections(), 0, "the foreign realm {realm} was contacted");
    }
}

#[tokio::test]
async fn an_http_realm_behind_an_https_registry_is_refused() {
    let pki = Pki::new();
    let foreign = elsewhere(None).await;
    let realm = foreign.url("/token");
    let app = Router::new().route(
        "/v2/shop/api/manifests/{reference}",
        get({
            let realm = realm.clone();
            move || async move { bearer_challenge(&realm) }
        }),
    );
    let registry = serve(app, Some(&pki)).await;
    let host = registry.host();
    let mut options = options_for("none");
    options.registry_ca_certs.insert(host.clone(), pki.ca_pem.clone());
    let err = bounded("a manifest", client(&host, &options).get_manifest("shop/api", "1.0")).await.unwrap_err();

    assert!(registry.seen.requests().len() == 1, "the https registry itself was reached");
    let text = err.to_string();
    assert!(matches!(err, CopyError::Refused { .. }) && text.contains("plain http") && text.contains(&realm), "{text}");
    assert_eq!(foreign.seen.connections(), 0, "credentials were downgraded to cleartext at {realm}");
}

#[tokio::test]
async fn a_configured_token_realm_gets_the_credentials_and_its_token_is_used() {
    let pki = Pki::new();
    let token_service = elsewhere(Some(&pki)).await;
    let realm = token_service.url("/token");
    let image = image(16);
    let manifest = image.manifest.clone();
    let app = Router::new().route(
        "/v2/shop/api/manifests/{reference}",
        get({
            let realm = realm.clone();
            move |headers: HeaderMap| async move {
                if has(&headers, "Bearer granted") { manifest_response(&manifest) } else { bearer_challenge(&realm) }
            }
        }),
    );
    let registry = serve(app, None).await;
    let host = registry.host();
    let mut options = options_for(&host);
    // The token service's CA is trusted for this registry only, like its token_realm.
    options.registry_ca_certs.insert(host.clone(), pki.ca_pem.clone());
    options.token_realms.insert(host.clone(), Url::parse(&realm).unwrap());

    let got = bounded("a manifest", client(&host, &options).get_manifest("shop/api", "1.0")).await.unwrap();

    assert_eq!(got.digest, Digest::sha256_of(&image.manifest));
    let requests = token_service.seen.requests();
    assert_eq!(requests.len(), 1, "{requests:?}");
    assert!(requests[0].0.starts_with("GET /token?") && has(&requests[0].1, BASIC), "{requests:?}");
}

#[tokio::test]
async fn a_foreign_upload_location_gets_neither_bytes_nor_credentials() {
    let foreign = elsewhere(None).await;
    let location = foreign.url("/upload/session-1?_state=abc");
    let app = Router::new().route(
        "/v2/prod/api/blobs/uploads/",
        post(move |headers: HeaderMap| async move {
            if !has(&headers, BASIC) {
                return basic_challenge();
            }
            (StatusCode::ACCEPTED, [(header::LOCATION, location)]).into_response()
        }),
    );
    let registry = serve(app, None).await;
    let host = registry.host();
    let client = client(&host, &options_for(&host));

    let err = bounded("an upload", client.start_upload("prod/api", None)).await.err().expect("refused");
    let text = err.to_string();
    assert!(matches!(err, CopyError::Refused { .. }) && text.contains("upload Location"), "{text}");
    assert!(text.contains(&foreign.host()) && !text.contains("_state=abc"), "{text}");
    // The PUT itself refuses a foreign session too (defence in depth).
    let blob = b"the blob".to_vec();
    let session = Url::parse(&foreign.url("/upload/session-1")).unwrap();
    let err = client
        .finish_upload("prod/api", session, &Digest::sha256_of(&blob), blob.len() as u64, blob.into())
        .await
        .unwrap_err();
    assert!(matches!(err, CopyError::Refused { .. }), "{err:?}");
    assert_eq!(foreign.seen.connections(), 0, "the upload went elsewhere: {:?}", foreign.seen.requests());
}

fn referrers_page(descriptors: usize) -> Vec<u8> {
    let manifests: Vec<_> = (0..descriptors)
        .map(|i| {
            serde_json::json!({ "mediaType": OCI_MANIFEST, "size": 1,
                "digest": Digest::sha256_of(&i.to_le_bytes()).to_string() })
        })
        .collect();
    serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json", "manifests": manifests
    }))
    .unwrap()
}

/// A registry whose referrers pages all link to `next(page)`; every page holds `descriptors`.
async fn paging_registry(descriptors: usize, next: impl Fn(u64) -> String + Clone + Send + Sync + 'static) -> Server {
    let page = referrers_page(descriptors);
    let app = Router::new().route(
        "/v2/a/referrers/{digest}",
        get(move |headers: HeaderMap, RawQuery(query): RawQuery| {
            let (next, page) = (next.clone(), page.clone());
            async move {
                if !has(&headers, BASIC) {
                    return basic_challenge();
                }
                let n = query.and_then(|q| q.strip_prefix("page=").and_then(|n| n.parse().ok())).unwrap_or(0u64);
                (
                    [(header::CONTENT_TYPE, "application/vnd.oci.image.index.v1+json".to_string())],
                    [(header::LINK, format!(r#"<{}>; rel="next""#, next(n)))],
                    page,
                )
                    .into_response()
            }
        }),
    );
    serve(app, None).await
}

#[tokio::test]
async fn a_foreign_referrers_next_link_is_not_followed() {
    let foreign = elsewhere(None).await;
    let link = foreign.url("/v2/a/referrers/x?page=1");
    let registry = paging_registry(1, move |_| link.clone()).await;
    let host = registry.host();
    let subject = Digest::sha256_of(b"subject");

    let err = bounded("referrers", client(&host, &options_for(&host)).referrers("a", &subject)).await.unwrap_err();

    let text = err.to_string();
    assert!(matches!(err, CopyError::Refused { .. }) && text.contains("Link"), "{text}");
    assert_eq!(foreign.seen.connections(), 0, "the referrers page went elsewhere");
}

#[tokio::test]
async fn redirects_go_only_to_https_and_without_credentials_or_referer() {
    let pki = Pki::new();
    let plain = elsewhere(None).await;
    let storage = elsewhere(Some(&pki)).await;
    let digest = Digest::sha256_of(b"bytes from elsewhere");
    let plain_target = plain.url("/blob");
    let https_target = storage.url("/blob?X-Signature=abc");
    let app = Router::new().route(
        "/v2/{repository}/blobs/{digest}",
        get(move |headers: HeaderMap, axum::extract::Path((repository, _)): axum::extract::Path<(String, String)>| {
            let target = if repository == "plain" { plain_target.clone() } else { https_target.clone() };
            async move {
                if !has(&headers, BASIC) {
                    return basic_challenge();
                }
                (StatusCode::TEMPORARY_REDIRECT, [(header::LOCATION, target)]).into_response()
            }
        }),
    );
    let registry = serve(app, None).await;
    let host = registry.host();
    let mut options = options_for(&host);
    options.ca_certs_pem.push(pki.ca_pem.clone());
    let client = client(&host, &options);

    // To plain http on another origin: refused, never contacted.
    let err = bounded("a blob", client.get_blob("plain", &digest)).await.expect_err("refused");
    let text = err.to_string();
    assert!(matches!(err, CopyError::Refused { .. }) && text.contains("redirect") && text.contains("https"), "{text}");
    assert_eq!(plain.seen.connections(), 0, "followed a redirect to plain http");

    // To https storage: followed, but the registry's credentials and URL stay behind.
    let response = bounded("a blob", client.get_blob("signed", &digest)).await.unwrap();
    assert_eq!(response.bytes().await.unwrap().as_ref(), b"bytes from elsewhere");
    let requests = storage.seen.requests();
    assert_eq!(requests.len(), 1, "{requests:?}");
    let headers = &requests[0].1;
    assert!(headers.get(header::AUTHORIZATION).is_none(), "credentials went to the storage: {headers:?}");
    assert!(headers.get(header::REFERER).is_none(), "a Referer went to the storage: {headers:?}");
}

// --- item 5: unbounded paging ----------------------------------------------------------------

#[tokio::test]
async fn endless_referrers_pages_stop_at_the_cap() {
    let registry = paging_registry(1, |n| format!("/v2/a/referrers/x?page={}", n + 1)).await;
    let host = registry.host();
    let subject = Digest::sha256_of(b"subject");

    let err = bounded("referrers", client(&host, &options_for(&host)).referrers("a", &subject)).await.unwrap_err();

    let text = err.to_string();
    assert!(
        matches!(err, CopyError::Refused { .. }) && text.contains(&format!("{MAX_REFERRER_PAGES} pages")),
        "{text}"
    );
    let pages = registry.seen.requests().iter().filter(|(line, h)| line.starts_with("GET") && has(h, BASIC)).count();
    assert_eq!(pages, MAX_REFERRER_PAGES);
}

#[tokio::test]
async fn a_referrers_page_linking_to_itself_is_refused_at_once() {
    let registry = paging_registry(1, |n| format!("/v2/a/referrers/x?page={n}")).await;
    let host = registry.host();
    let subject = Digest::sha256_of(b"subject");
    let client = client(&host, &options_for(&host));
    // The first page has no query; its next link is `?page=0`, which then links to itself.
    let err = bounded("referrers", client.referrers("a", &subject)).await.unwrap_err();
    assert!(err.to_string().contains("already sent"), "{err}");
    let pages = registry.seen.requests().iter().filter(|(_, h)| has(h, BASIC)).count();
    assert_eq!(pages, 2);
}

#[tokio::test]
async fn referrers_pages_full_of_descriptors_stop_at_the_cap() {
    let per_page = 2_000;
    let registry = paging_registry(per_page, |n| format!("/v2/a/referrers/x?page={}", n + 1)).await;
    let host = registry.host();
    let subject = Digest::sha256_of(b"subject");

    let err = bounded("referrers", client(&host, &options_for(&host)).referrers("a", &subject)).await.unwrap_err();

    assert!(err.to_string().contains(&format!("more than {MAX_REFERRERS} referrers")), "{err}");
    let pages = registry.seen.requests().iter().filter(|(_, h)| has(h, BASIC)).count();
    assert_eq!(pages, MAX_REFERRERS / per_page + 1);
}

// --- item 6: deadlines ------------------------------------------------------------------------

fn short_deadlines(host: &str) -> ClientOptions {
    let mut options = options_for(host);
    options.deadlines =
        Deadlines { request: Duration::from_secs(2), blob_min_bytes: 64 << 10, blob_window: Duration::from_secs(2) };
    options
}

#[tokio::test]
async fn a_trickled_manifest_fails_at_the_request_deadline() {
    let app = Router::new().route(
        "/v2/shop/api/manifests/{reference}",
        get(|| async { trickle(100_000, Duration::from_millis(100), OCI_MANIFEST) }),
    );
    let registry = serve(app, None).await;
    let host = registry.host();

    let err = bounded("a trickled manifest", client(&host, &short_deadlines(&host)).get_manifest("shop/api", "1.0"))
        .await
        .unwrap_err();

    assert!(matches!(err, CopyError::Deadline { .. }), "{err:?}");
    assert!(err.to_string().contains("GET manifest shop/api:1.0") && err.to_string().contains(&host), "{err}");
}

#[tokio::test]
async fn a_trickled_token_fails_at_the_request_deadline() {
    let app = Router::new()
        .route("/token", get(|| async { trickle(100_000, Duration::from_millis(100), "application/json") }))
        .route(
            "/v2/shop/api/manifests/{reference}",
            get(|request: Request| async move {
                let host =
                    request.headers().get(header::HOST).and_then(|h| h.to_str().ok()).unwrap_or_default().to_string();
                bearer_challenge(&format!("http://{host}/token"))
            }),
        );
    let registry = serve(app, None).await;
    let host = registry.host();

    let err = bounded("a trickled token", client(&host, &short_deadlines(&host)).get_manifest("shop/api", "1.0"))
        .await
        .unwrap_err();

    assert!(matches!(&err, CopyError::Deadline { what, .. } if what == "token request"), "{err:?}");
}

#[tokio::test]
async fn a_trickled_blob_fails_below_the_minimum_throughput() {
    let image = image(1 << 20);
    let (manifest, config, layer) = (image.manifest.clone(), image.config.clone(), image.layer_digest.clone());
    let app = Router::new()
        .route("/v2/shop/api/manifests/{reference}", get(move || async move { manifest_response(&manifest) }))
        .route(
            "/v2/shop/api/blobs/{digest}",
            get(move |axum::extract::Path(digest): axum::extract::Path<String>| {
                let (config, layer) = (config.clone(), layer.clone());
                async move {
                    if digest == layer.as_str() {
                        trickle(image.layer_size, Duration::from_millis(50), "application/octet-stream")
                    } else {
                        config.into_response()
                    }
                }
            }),
        );
    let registry = serve(app, None).await;
    let host = registry.host();
    let dir = tempfile::tempdir().unwrap();
    let source: Location = format!("{host}/shop/api:1.0").parse().unwrap();
    let target: Location = format!("oci:{}:1.0", dir.path().join("layout").display()).parse().unwrap();
    let access = Access { client: short_deadlines(&host), ..Access::default() };
    let options = CopyOptions { referrers: false, ..CopyOptions::default() };

    let err = bounded("a trickled blob", copy(&source, &target, &access, &options, Arc::new(Progress::default())))
        .await
        .unwrap_err();

    assert!(matches!(err, CopyError::Stalled { .. }), "{err:?}");
    let text = err.to_string();
    assert!(text.contains(&format!("{host}/shop/api")) && text.contains(image.layer_digest.as_str()), "{text}");
}

#[tokio::test]
async fn a_target_that_stops_reading_an_upload_fails_below_the_minimum_throughput() {
    // Larger than what loopback socket buffers hold, so a target that stops reading stops the flow.
    let image = image(64 << 20);
    let (manifest, config, layer) = (image.manifest.clone(), image.config.clone(), image.layer_digest.clone());
    let source = serve(
        Router::new()
            .route("/v2/shop/api/manifests/{reference}", get(move || async move { manifest_response(&manifest) }))
            .route(
                "/v2/shop/api/blobs/{digest}",
                get(move |axum::extract::Path(digest): axum::extract::Path<String>| {
                    let (config, layer) = (config.clone(), layer.clone());
                    async move {
                        if digest != layer.as_str() {
                            return config.into_response();
                        }
                        let chunks = futures_util::stream::iter(
                            (0..64).map(|_| Ok::<_, std::io::Error>(bytes::Bytes::from(vec![7u8; 1 << 20]))),
                        );
                        ([(header::CONTENT_LENGTH, (64 << 20).to_string())], Body::from_stream(chunks)).into_response()
                    }
                }),
            ),
        None,
    )
    .await;
    let target = serve(
        Router::new()
            .route("/v2/prod/api/blobs/{digest}", axum::routing::head(|| async { StatusCode::NOT_FOUND }))
            .route(
                "/v2/prod/api/blobs/uploads/",
                post(|| async { (StatusCode::ACCEPTED, [(header::LOCATION, "/v2/prod/api/blobs/uploads/s1")]) }),
            )
            .route(
                "/v2/prod/api/blobs/uploads/s1",
                axum::routing::put(|body: Body| async move {
                    let mut stream = body.into_data_stream();
                    let mut received = 0;
                    while let Some(Ok(chunk)) = futures_util::StreamExt::next(&mut stream).await {
                        received += chunk.len();
                        if received > 1 << 20 {
                            // Takes a little, then never reads again (and never answers).
                            std::future::pending::<()>().await;
                        }
                    }
                    StatusCode::CREATED
                }),
            ),
        None,
    )
    .await;
    let mut options = short_deadlines(&source.host());
    options.plain_http.push(target.host());
    let access = Access { client: options, ..Access::default() };
    let from: Location = format!("{}/shop/api:1.0", source.host()).parse().unwrap();
    let to: Location = format!("{}/prod/api:1.0", target.host()).parse().unwrap();
    let copy_options = CopyOptions { referrers: false, ..CopyOptions::default() };

    let err = bounded("a stalled upload", copy(&from, &to, &access, &copy_options, Arc::new(Progress::default())))
        .await
        .unwrap_err();

    let text = err.to_string();
    assert!(matches!(&err, CopyError::Stalled { registry, .. } if *registry == target.host()), "{err:?}");
    assert!(text.contains("uploading blob") && text.contains(image.layer_digest.as_str()), "{text}");
}

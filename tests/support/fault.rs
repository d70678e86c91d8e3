//! A misbehaving registry: an axum reverse proxy in front of a real
//! (plain-HTTP) registry that injects failures on the way back.

use std::collections::HashSet;
use std::io;
use std::net::TcpListener;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, Method, StatusCode, header};
use axum::response::Response;
use bytes::Bytes;
use futures_util::{Stream, StreamExt};

use super::registry::Registry;

/// How many bytes of a blob get through before a cut.
pub const CUT_AFTER: usize = 64 * 1024;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fault {
    /// The first GET of every blob is cut after [`CUT_AFTER`] bytes (half the
    /// blob when smaller), and the first manifest request is answered
    /// `503 Service Unavailable` with `Retry-After: 1`. Later attempts pass.
    TransientFailures,
    /// Every GET of every blob is cut after [`CUT_AFTER`] bytes.
    BlobsAlwaysCut,
    /// Every blob is served complete but with its first byte flipped, so its
    /// content no longer matches its digest.
    CorruptBlobs,
    /// Every request is answered `500 Internal Server Error` with an OCI error
    /// body: a registry that is down for good (until [`FaultyProxy::set_fault`]).
    ServerErrors,
    /// Every blob GET is held this long before it is forwarded: a slow registry, so that a
    /// copy takes at least this long.
    SlowBlobs(Duration),
    /// The first `n` manifest and blob requests are answered 500, 502 and 503 in turn (an
    /// OCI error body); later ones pass.
    Statuses(usize),
    /// The first `n` manifest and blob requests are answered `429 Too Many Requests` with
    /// `Retry-After: 1`; later ones pass.
    TooManyRequests(usize),
    /// The first GET of every blob sends [`CUT_AFTER`] bytes (half the blob when smaller), then
    /// nothing more, without closing: a stalled transfer. Later attempts pass.
    StallBlobsOnce,
    /// The first GET of every manifest ends after half its bytes (Content-Length unmet).
    TruncatedManifestsOnce,
    /// Every manifest response (GET, HEAD, PUT) names a wrong `Docker-Content-Digest`: the one
    /// set with [`FaultyProxy::set_lie`], else all zeros. The bytes are the registry's own.
    WrongDigest,
    /// The proxy plays the registry's token service (`/token` on its own origin, announced by
    /// a `401` bearer challenge on `/v2/`): the first `n` token requests fail with 503.
    TokenFailsThenPasses(usize),
    /// Like [`Fault::TokenFailsThenPasses`], every token request fails.
    TokenAlwaysFails,
    /// Nothing injected: every request passes through unchanged.
    PassThrough,
}

/// The bearer token the proxy's token service hands out.
const PROXY_TOKEN: &str = "fault-proxy-token";

/// The proxy, serving on its own thread and runtime until dropped.
pub struct FaultyProxy {
    host: String,
    stats: Arc<Stats>,
    proxy: Arc<Proxy>,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

#[derive(Default)]
struct Stats {
    blob_cuts: AtomicUsize,
    blobs_corrupted: AtomicUsize,
    manifest_503s: AtomicUsize,
    server_errors: AtomicUsize,
    /// When the 503 was served, then how long until the next manifest request.
    manifest_503_at: Mutex<Option<Instant>>,
    manifest_retry_gap: Mutex<Option<Duration>>,
    /// Every fault injected, of any kind.
    injected: AtomicUsize,
    /// Requests counted by [`Fault::Statuses`] and [`Fault::TooManyRequests`].
    failed_requests: AtomicUsize,
    token_requests: AtomicUsize,
}

struct Proxy {
    fault: Mutex<Fault>,
    upstream: String,
    client: reqwest::Client,
    blobs_seen: Mutex<HashSet<String>>,
    manifest_fault_spent: AtomicBool,
    manifests_seen: Mutex<HashSet<String>>,
    lie: Mutex<Option<String>>,
    host: String,
    stats: Arc<Stats>,
}

impl FaultyProxy {
    /// Proxy `upstream` (which must speak plain HTTP) with `fault`.
    pub fn start(upstream: &Registry, fault: Fault) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind proxy to 127.0.0.1:0");
        listener.set_nonblocking(true).expect("non-blocking proxy listener");
        let host = listener.local_addr().expect("proxy address").to_string();
        let stats = Arc::new(Stats::default());
        let proxy = Arc::new(Proxy {
            fault: Mutex::new(fault),
            upstream: format!("http://{}", upstream.host()),
            client: reqwest::Client::builder()
                .redirect(reqwest::redirect::Policy::none())
                .build()
                .expect("proxy upstream client"),
            blobs_seen: Mutex::new(HashSet::new()),
            manifest_fault_spent: AtomicBool::new(false),
            manifests_seen: Mutex::new(HashSet::new()),
            lie: Mutex::new(None),
            host: host.clone(),
            stats: stats.clone(),
        });
        let proxy_handle = proxy.clone();
        let app = Router::new().fallback(forward).with_state(proxy);
        let (shutdown, stop) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .expect("proxy runtime");
            rt.block_on(async move {
                let listener = tokio::net::TcpListener::from_std(listener).expect("tokio proxy listener");
                let serve = async move { axum::serve(listener, app).await };
                tokio::select! {
                    result = serve => result.expect("proxy server"),
                    _ = stop => {}
                }
            });
            rt.shutdown_timeout(Duration::from_secs(1));
        });
        Self { host, stats, proxy: proxy_handle, shutdown: Some(shutdown), thread: Some(thread) }
    }

    /// Switches the fault for every request from now on (e.g. a failing registry is fixed:
    /// [`Fault::PassThrough`]).
    pub fn set_fault(&self, fault: Fault) {
        *self.proxy.fault.lock().expect("fault lock") = fault;
    }

    /// The digest [`Fault::WrongDigest`] claims.
    pub fn set_lie(&self, digest: &str) {
        *self.proxy.lie.lock().expect("lie lock") = Some(digest.to_string());
    }

    /// Faults of every kind injected so far.
    pub fn injected(&self) -> usize {
        self.stats.injected.load(Ordering::SeqCst)
    }

    /// Requests answered with an injected 500 so far.
    pub fn server_errors(&self) -> usize {
        self.stats.server_errors.load(Ordering::SeqCst)
    }

    /// `127.0.0.1:PORT`.
    pub fn host(&self) -> &str {
        &self.host
    }

    /// `127.0.0.1:PORT/<repo_and_ref>`.
    pub fn reference(&self, repo_and_ref: &str) -> String {
        format!("{}/{repo_and_ref}", self.host)
    }

    /// Blob responses cut so far.
    pub fn blob_cuts(&self) -> usize {
        self.stats.blob_cuts.load(Ordering::SeqCst)
    }

    /// Blob responses served with a flipped byte so far.
    pub fn blobs_corrupted(&self) -> usize {
        self.stats.blobs_corrupted.load(Ordering::SeqCst)
    }

    /// Manifest requests answered 503 so far.
    pub fn manifest_503s(&self) -> usize {
        self.stats.manifest_503s.load(Ordering::SeqCst)
    }

    /// Time between the injected 503 and the next manifest request.
    pub fn manifest_retry_gap(&self) -> Option<Duration> {
        *self.stats.manifest_retry_gap.lock().expect("stats lock")
    }
}

impl Drop for FaultyProxy {
    fn drop(&mut self) {
        if let Some(shutdown) = self.shutdown.take() {
            let _ = shutdown.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn is_blob_path(path: &str) -> bool {
    path.starts_with("/v2/") && path.contains("/blobs/sha256:") && !path.contains("/blobs/uploads")
}

async fn forward(State(proxy): State<Arc<Proxy>>, request: Request) -> Response {
    let (parts, body) = request.into_parts();
    let path = parts.uri.path().to_string();
    let fault = *proxy.fault.lock().expect("fault lock");

    if fault == Fault::ServerErrors {
        return internal_server_error(&proxy.stats);
    }
    let token_failures = match fault {
        Fault::TokenFailsThenPasses(n) => Some(n),
        Fault::TokenAlwaysFails => Some(usize::MAX),
        _ => None,
    };
    if let Some(failures) = token_failures {
        if path == "/token" {
            if proxy.stats.token_requests.fetch_add(1, Ordering::SeqCst) < failures {
                proxy.stats.injected.fetch_add(1, Ordering::SeqCst);
                return oci_error(StatusCode::SERVICE_UNAVAILABLE, "UNAVAILABLE", "token service unavailable", None);
            }
            let token = serde_json::json!({ "token": PROXY_TOKEN, "access_token": PROXY_TOKEN, "expires_in": 300 });
            return Response::builder()
                .header(header::CONTENT_TYPE, "application/json")
                .body(Body::from(token.to_string()))
                .expect("token response");
        }
        let bearer = parts.headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok());
        if path.starts_with("/v2") && bearer != Some(&format!("Bearer {PROXY_TOKEN}")) {
            let mut response = oci_error(StatusCode::UNAUTHORIZED, "UNAUTHORIZED", "authentication required", None);
            let challenge = format!("Bearer realm=\"http://{}/token\",service=\"fault-proxy\"", proxy.host);
            response.headers_mut().insert(header::WWW_AUTHENTICATE, challenge.parse().expect("challenge header"));
            return response;
        }
    }
    let registry_request = path.contains("/manifests/") || is_blob_path(&path);
    if let Fault::Statuses(n) | Fault::TooManyRequests(n) = fault
        && registry_request
        && proxy.stats.failed_requests.load(Ordering::SeqCst) < n
    {
        let count = proxy.stats.failed_requests.fetch_add(1, Ordering::SeqCst);
        if count < n {
            proxy.stats.injected.fetch_add(1, Ordering::SeqCst);
            return match fault {
                Fault::TooManyRequests(_) => {
                    oci_error(StatusCode::TOO_MANY_REQUESTS, "TOOMANYREQUESTS", "slow down", Some("1"))
                }
                _ => {
                    let status =
                        [StatusCode::INTERNAL_SERVER_ERROR, StatusCode::BAD_GATEWAY, StatusCode::SERVICE_UNAVAILABLE]
                            [count % 3];
                    oci_error(status, "UNKNOWN", "injected failure", None)
                }
            };
        }
    }
    if let Fault::SlowBlobs(delay) = fault
        && parts.method == Method::GET
        && is_blob_path(&path)
    {
        tokio::time::sleep(delay).await;
    }
    if fault == Fault::TransientFailures && path.contains("/manifests/") {
        if proxy.manifest_fault_spent.swap(true, Ordering::SeqCst) {
            let served_503 = *proxy.stats.manifest_503_at.lock().expect("stats lock");
            let mut gap = proxy.stats.manifest_retry_gap.lock().expect("stats lock");
            if let (None, Some(at)) = (*gap, served_503) {
                *gap = Some(at.elapsed());
            }
        } else {
            return service_unavailable(&proxy.stats);
        }
    }

    let body = match axum::body::to_bytes(body, usize::MAX).await {
        Ok(body) => body,
        Err(e) => return bad_gateway(format!("reading request body: {e}")),
    };
    let mut headers = parts.headers.clone();
    // The upstream registry has no auth of its own: the proxy's token stays with the proxy.
    if token_failures.is_some() {
        headers.remove(header::AUTHORIZATION);
    }
    // `Host` is kept, as a reverse proxy does: the registry builds absolute upload `Location`s
    // from it, and Ferry follows a `Location` only on the origin it talks to (the proxy).
    for name in [header::CONTENT_LENGTH, header::CONNECTION, header::TRANSFER_ENCODING] {
        headers.remove(name);
    }
    let path_and_query = parts.uri.path_and_query().map_or_else(|| path.clone(), |p| p.as_str().to_string());
    let upstream = proxy
        .client
        .request(parts.method.clone(), format!("{}{path_and_query}", proxy.upstream))
        .headers(headers)
        .body(body)
        .send()
        .await;
    let upstream = match upstream {
        Ok(response) => response,
        Err(e) => return bad_gateway(format!("upstream registry: {e}")),
    };

    let status = upstream.status();
    let blob_get = parts.method == Method::GET && status == StatusCode::OK && is_blob_path(&path);
    let cut = blob_get
        && match fault {
            Fault::TransientFailures => proxy.blobs_seen.lock().expect("blobs_seen lock").insert(path.clone()),
            Fault::BlobsAlwaysCut => true,
            _ => false,
        };
    let corrupt = blob_get && fault == Fault::CorruptBlobs;
    let stall = blob_get
        && fault == Fault::StallBlobsOnce
        && proxy.blobs_seen.lock().expect("blobs_seen lock").insert(path.clone());
    let truncate = parts.method == Method::GET
        && status == StatusCode::OK
        && path.contains("/manifests/")
        && fault == Fault::TruncatedManifestsOnce
        && proxy.manifests_seen.lock().expect("manifests_seen lock").insert(path.clone());

    let mut response = Response::builder().status(status);
    let headers = response.headers_mut().expect("builder headers");
    copy_response_headers(upstream.headers(), headers);
    if fault == Fault::WrongDigest && path.contains("/manifests/") && headers.contains_key("docker-content-digest") {
        let lie = proxy.lie.lock().expect("lie lock").clone();
        let lie = lie.unwrap_or_else(|| format!("sha256:{}", "0".repeat(64)));
        headers.insert("docker-content-digest", lie.parse().expect("digest header"));
        proxy.stats.injected.fetch_add(1, Ordering::SeqCst);
    }
    let length = upstream.content_length().unwrap_or(0) as usize;
    let body = if stall {
        proxy.stats.injected.fetch_add(1, Ordering::SeqCst);
        Body::from_stream(stall_after(upstream.bytes_stream(), CUT_AFTER.min(length / 2)))
    } else if truncate {
        proxy.stats.injected.fetch_add(1, Ordering::SeqCst);
        Body::from_stream(cut_after(upstream.bytes_stream(), length / 2))
    } else if cut {
        proxy.stats.injected.fetch_add(1, Ordering::SeqCst);
        proxy.stats.blob_cuts.fetch_add(1, Ordering::SeqCst);
        let limit = CUT_AFTER.min(length / 2);
        Body::from_stream(cut_after(upstream.bytes_stream(), limit))
    } else if corrupt {
        proxy.stats.blobs_corrupted.fetch_add(1, Ordering::SeqCst);
        Body::from_stream(flip_first_byte(upstream.bytes_stream()))
    } else {
        Body::from_stream(upstream.bytes_stream())
    };
    response.body(body).expect("proxied response")
}

fn copy_response_headers(from: &HeaderMap, to: &mut HeaderMap) {
    for (name, value) in from {
        if name != header::TRANSFER_ENCODING && name != header::CONNECTION {
            to.append(name.clone(), value.clone());
        }
    }
}

fn service_unavailable(stats: &Stats) -> Response {
    stats.manifest_503s.fetch_add(1, Ordering::SeqCst);
    *stats.manifest_503_at.lock().expect("stats lock") = Some(Instant::now());
    Response::builder()
        .status(StatusCode::SERVICE_UNAVAILABLE)
        .header(header::RETRY_AFTER, "1")
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from(
            r#"{"errors":[{"code":"UNAVAILABLE","message":"service unavailable (injected by the test proxy)"}]}"#,
        ))
        .expect("503 response")
}

fn internal_server_error(stats: &Stats) -> Response {
    stats.server_errors.fetch_add(1, Ordering::SeqCst);
    Response::builder()
        .status(StatusCode::INTERNAL_SERVER_ERROR)
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from(
            r#"{"errors":[{"code":"UNKNOWN","message":"internal server error (injected by the test proxy)"}]}"#,
        ))
        .expect("500 response")
}

fn oci_error(status: StatusCode, code: &str, message: &str, retry_after: Option<&str>) -> Response {
    let mut response = Response::builder().status(status).header(header::CONTENT_TYPE, "application/json");
    if let Some(seconds) = retry_after {
        response = response.header(header::RETRY_AFTER, seconds);
    }
    let body = serde_json::json!({ "errors": [{ "code": code, "message": format!("{message} (injected by the test proxy)") }] });
    response.body(Body::from(body.to_string())).expect("error response")
}

/// Pass `limit` bytes of `upstream`, then nothing, never ending: a stalled transfer.
fn stall_after(
    upstream: impl Stream<Item = reqwest::Result<Bytes>> + Send + 'static,
    limit: usize,
) -> impl Stream<Item = io::Result<Bytes>> + Send + 'static {
    cut_after(upstream, limit)
        .take_while(|chunk| futures_util::future::ready(chunk.is_ok()))
        .chain(futures_util::stream::pending())
}

fn bad_gateway(message: String) -> Response {
    Response::builder().status(StatusCode::BAD_GATEWAY).body(Body::from(message)).expect("502 response")
}

/// Pass `limit` bytes of `upstream`, then fail the body stream, which makes
/// the server abort the connection mid-response (Content-Length unmet).
fn cut_after(
    upstream: impl Stream<Item = reqwest::Result<Bytes>> + Send + 'static,
    limit: usize,
) -> impl Stream<Item = io::Result<Bytes>> + Send + 'static {
    futures_util::stream::unfold((Box::pin(upstream), 0usize, false), move |(mut upstream, sent, done)| async move {
        if done {
            return None;
        }
        if sent >= limit {
            let cut = io::Error::new(io::ErrorKind::ConnectionReset, "blob response cut by the test proxy");
            return Some((Err(cut), (upstream, sent, true)));
        }
        match upstream.next().await {
            Some(Ok(chunk)) => {
                let take = (limit - sent).min(chunk.len());
                Some((Ok(chunk.slice(..take)), (upstream, sent + take, false)))
            }
            Some(Err(e)) => Some((Err(io::Error::other(e)), (upstream, sent, true))),
            None => None,
        }
    })
}

/// Pass `upstream` through with its first byte inverted (same length).
fn flip_first_byte(
    upstream: impl Stream<Item = reqwest::Result<Bytes>> + Send + 'static,
) -> impl Stream<Item = reqwest::Result<Bytes>> + Send + 'static {
    let mut flipped = false;
    upstream.map(move |chunk| {
        chunk.map(|chunk| {
            if flipped || chunk.is_empty() {
                return chunk;
            }
            flipped = true;
            let mut bytes = chunk.to_vec();
            bytes[0] ^= 0xff;
            Bytes::from(bytes)
        })
    })
}

//! A real CNCF distribution registry (`docker-registry serve cfg.yml`) as a
//! child process, and a small HTTP client to read from and write to it.

use std::fs;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use reqwest::{Method, StatusCode, header};
use serde_json::{Value, json};
use tempfile::TempDir;

use super::layout::Descriptor;
use super::{sha256_digest, tools};

pub mod media_type {
    pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
    pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
    pub const OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
    pub const OCI_LAYER_GZIP: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
    pub const OCI_EMPTY: &str = "application/vnd.oci.empty.v1+json";
    pub const OCI_ARTIFACT_MANIFEST: &str = "application/vnd.oci.artifact.manifest.v1+json";
    pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
    pub const DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
}

/// Every manifest type a test may read back.
const MANIFEST_ACCEPT: &str = "application/vnd.oci.image.manifest.v1+json, \
     application/vnd.oci.image.index.v1+json, \
     application/vnd.docker.distribution.manifest.v2+json, \
     application/vnd.docker.distribution.manifest.list.v2+json, \
     application/vnd.oci.artifact.manifest.v1+json";

#[derive(Clone, Debug)]
pub struct Credentials {
    pub user: String,
    pub password: String,
}

impl Credentials {
    pub fn new(user: &str, password: &str) -> Self {
        Self { user: user.into(), password: password.into() }
    }

    /// `USER:PASS`, as `--src-creds` / `--dest-creds` / skopeo take it.
    pub fn pair(&self) -> String {
        format!("{}:{}", self.user, self.password)
    }
}

enum Security {
    Plain,
    Htpasswd(Credentials),
    Tls,
}

/// One running `docker-registry`, killed on drop.
pub struct Registry {
    child: Child,
    host: String,
    credentials: Option<Credentials>,
    ca_cert: Option<PathBuf>,
    client: RegistryClient,
    dir: TempDir,
}

impl Registry {
    /// Anonymous registry speaking plain HTTP.
    pub fn plain() -> Self {
        Self::start(Security::Plain)
    }

    /// Plain-HTTP registry requiring HTTP basic auth from an htpasswd file.
    pub fn with_htpasswd(user: &str, password: &str) -> Self {
        Self::start(Security::Htpasswd(Credentials::new(user, password)))
    }

    /// Anonymous plain-HTTP registry whose `notifications:` endpoint POSTs every event to
    /// `url` with `header: value` — a real webhook sender.
    pub fn plain_notifying(url: &str, header: &str, value: &str) -> Self {
        let block = format!(
            "notifications:\n  endpoints:\n    - name: ferry\n      url: {url}\n      headers:\n        {header}: [\"{value}\"]\n      timeout: 2s\n      threshold: 3\n      backoff: 200ms\n"
        );
        Self::start_with(Security::Plain, block)
    }

    /// Anonymous registry speaking HTTPS with a certificate from a fresh,
    /// self-signed test CA (see [`Registry::ca_cert`]).
    pub fn with_tls() -> Self {
        Self::start(Security::Tls)
    }

    /// `127.0.0.1:PORT`.
    pub fn host(&self) -> &str {
        &self.host
    }

    /// `127.0.0.1:PORT/<repo_and_ref>`, the form `ferry copy` takes.
    pub fn reference(&self, repo_and_ref: &str) -> String {
        format!("{}/{repo_and_ref}", self.host)
    }

    pub fn credentials(&self) -> Option<&Credentials> {
        self.credentials.as_ref()
    }

    /// PEM file of the CA that signed this registry's certificate.
    pub fn ca_cert(&self) -> &Path {
        self.ca_cert.as_deref().expect("only a TLS registry has a CA certificate")
    }

    /// The `ferry` flags a test passes to reach this registry at all:
    /// `--plain-http HOST` for plain registries, `--ca-cert PEM` for TLS.
    pub fn transport_args(&self) -> Vec<String> {
        match &self.ca_cert {
            Some(ca) => vec!["--ca-cert".into(), ca.display().to_string()],
            None => vec!["--plain-http".into(), self.host.clone()],
        }
    }

    pub fn client(&self) -> &RegistryClient {
        &self.client
    }

    /// Bytes the registry holds on disk: finished blobs and manifests, and uploads still in
    /// progress (it writes an upload's data as it arrives). Lets a test see a copy under way.
    pub fn bytes_stored(&self) -> u64 {
        fn walk(dir: &Path) -> u64 {
            let Ok(entries) = fs::read_dir(dir) else { return 0 };
            entries
                .flatten()
                .map(|entry| match entry.file_type() {
                    Ok(t) if t.is_dir() => walk(&entry.path()),
                    Ok(t) if t.is_file() => entry.metadata().map(|m| m.len()).unwrap_or(0),
                    _ => 0,
                })
                .sum()
        }
        walk(&self.dir.path().join("storage"))
    }

    /// The registry's own log, for failure messages.
    pub fn log(&self) -> String {
        fs::read_to_string(self.dir.path().join("registry.log")).unwrap_or_default()
    }

    /// Push `source` (a skopeo reference such as `oci:/dir:tag`) to
    /// `repo:tag` here with `skopeo copy`, and read the manifest back.
    /// `extra` goes to `skopeo copy` (`--all`, `--format v2s2`, ...).
    pub fn skopeo_push(&self, source: &str, repo_and_tag: &str, extra: &[&str]) -> Manifest {
        let mut cmd = Command::new(tools::skopeo());
        cmd.args(["--insecure-policy", "copy", "--quiet", "--dest-tls-verify=false"]);
        if let Some(creds) = &self.credentials {
            cmd.args(["--dest-creds", &creds.pair()]);
        }
        cmd.args(extra).arg(source).arg(format!("docker://{}/{repo_and_tag}", self.host));
        run_tool(cmd);
        let (repo, tag) = repo_and_tag.rsplit_once(':').expect("skopeo_push wants repo:tag");
        self.client
            .manifest(repo, tag)
            .unwrap_or_else(|| panic!("{repo_and_tag} missing right after skopeo pushed it to {}", self.host))
    }

    fn start(security: Security) -> Self {
        Self::start_with(security, String::new())
    }

    fn start_with(security: Security, notifications_block: String) -> Self {
        let binary = tools::docker_registry();
        let dir = tempfile::Builder::new().prefix("ferry-registry-").tempdir().expect("temp dir for registry");
        let storage = dir.path().join("storage");
        fs::create_dir_all(&storage).expect("registry storage dir");

        let (tls_block, ca_cert) = match &security {
            Security::Tls => {
                let pki = make_test_pki(dir.path());
                let block = format!(
                    "  tls:\n    certificate: {}\n    key: {}\n",
                    pki.server_cert.display(),
                    pki.server_key.display()
                );
                (block, Some(pki.ca_cert))
            }
            _ => (String::new(), None),
        };
        let (auth_block, credentials) = match &security {
            Security::Htpasswd(creds) => {
                let htpasswd = dir.path().join("htpasswd");
                // Low cost keeps startup fast; the registry accepts any cost >= 4.
                let hash = bcrypt::hash_with_result(&creds.password, 5)
                    .expect("bcrypt hash")
                    .format_for_version(bcrypt::Version::TwoY);
                fs::write(&htpasswd, format!("{}:{hash}\n", creds.user)).expect("write htpasswd");
                let block = format!("auth:\n  htpasswd:\n    realm: ferry-test\n    path: {}\n", htpasswd.display());
                (block, Some(creds.clone()))
            }
            _ => (String::new(), None),
        };

        let mut last_log = String::new();
        for _attempt in 0..5 {
            let port = free_port();
            let host = format!("127.0.0.1:{port}");
            let config = format!(
                "version: 0.1\n\
                 log:\n  level: info\n  accesslog:\n    disabled: false\n\
                 storage:\n  filesystem:\n    rootdirectory: {storage}\n  delete:\n    enabled: true\n\
                 \x20 maintenance:\n    uploadpurging:\n      enabled: false\n\
                 http:\n  addr: {host}\n  secret: ferry-integration-test-secret\n{tls_block}\
                 health:\n  storagedriver:\n    enabled: false\n\
                 {auth_block}{notifications_block}",
                storage = storage.display(),
            );
            let config_path = dir.path().join("config.yml");
            fs::write(&config_path, config).expect("write registry config");
            let log = fs::File::create(dir.path().join("registry.log")).expect("registry log");
            let child = Command::new(&binary)
                .arg("serve")
                .arg(&config_path)
                .stdin(Stdio::null())
                .stdout(log.try_clone().expect("clone log handle"))
                .stderr(log)
                .spawn()
                .unwrap_or_else(|e| panic!("cannot start {}: {e}", binary.display()));
            let client = RegistryClient::new(
                &host,
                if ca_cert.is_some() { "https" } else { "http" },
                credentials.clone(),
                ca_cert.as_deref(),
            );
            let log_path = dir.path().join("registry.log");
            let mut child = child;
            match wait_until_ready(&mut child, &client, &log_path) {
                Ok(()) => {
                    return Registry { child, host, credentials, ca_cert, client, dir };
                }
                Err(log) => {
                    // Most likely the port was taken between probing and binding: retry.
                    last_log = log;
                    let _ = child.kill();
                    let _ = child.wait();
                }
            }
        }
        panic!("docker-registry did not start after 5 attempts; last log:\n{last_log}");
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Wait until `GET /v2/` answers (any status: 401 means up, with auth).
fn wait_until_ready(child: &mut Child, client: &RegistryClient, log: &Path) -> Result<(), String> {
    let deadline = Instant::now() + Duration::from_secs(20);
    let log = || fs::read_to_string(log).unwrap_or_default();
    loop {
        if let Ok(Some(status)) = child.try_wait() {
            return Err(format!("registry exited with {status}:\n{}", log()));
        }
        if client.ping().is_ok() {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(format!("registry not answering /v2/ after 20 s:\n{}", log()));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A port that was free a moment ago (bind port 0, read it, release it).
impl Registry {
    /// Pushes a fresh image with layers of `layer_sizes` bytes as `repository:tag` (skopeo, from
    /// an OCI layout); the digest the registry holds, checked against what was built.
    pub fn push_image(&self, repository: &str, tag: &str, layer_sizes: &[usize]) -> String {
        let mut layout = super::OciLayout::new();
        let image = layout.add_image(tag, layer_sizes);
        let pushed = self.skopeo_push(&layout.reference(tag), &format!("{repository}:{tag}"), &[]);
        assert_eq!(pushed.computed_digest(), image.digest(), "the registry holds what was pushed");
        pushed.computed_digest()
    }
}

/// `[registries."HOST"]` with `plain_http = true` for each host: how a test configuration
/// starts.
pub fn plain_registries(hosts: impl IntoIterator<Item = impl AsRef<str>>) -> String {
    hosts.into_iter().map(|host| format!("[registries.\"{}\"]\nplain_http = true\n", host.as_ref())).collect()
}

/// A free port for a server that must know its port before it starts (docker-registry's config,
/// or `ferry serve` when a registry must be told where to notify it first).
///
/// Taken below the kernel's ephemeral range, from a random start: ports handed out for `:0`
/// binds and for outgoing connections come from that range, so none of them can take this port
/// between this check and the server's own bind (which made `ferry serve` exit now and then on
/// a busy machine). Falls back to an OS-chosen port when the range leaves no room below it.
pub fn free_port() -> u16 {
    use std::hash::{BuildHasher, RandomState};
    use std::sync::OnceLock;
    use std::sync::atomic::{AtomicU32, Ordering};
    const LOWEST: u32 = 10_000;
    // One random start per test process, then a counter: ports within a process never repeat.
    static START: OnceLock<u32> = OnceLock::new();
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let ephemeral_low = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|range| range.split_whitespace().next()?.parse::<u32>().ok())
        .unwrap_or(32_768);
    if ephemeral_low > LOWEST + 1_000 {
        let span = ephemeral_low - LOWEST;
        let start = *START.get_or_init(|| RandomState::new().hash_one(std::process::id()) as u32);
        for _ in 0..span {
            let step = NEXT.fetch_add(1, Ordering::Relaxed);
            let port = (LOWEST + start.wrapping_add(step) % span) as u16;
            if TcpListener::bind(("127.0.0.1", port)).is_ok() {
                return port;
            }
        }
    }
    TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).expect("bind 127.0.0.1:0").port()
}

pub struct TestPki {
    pub ca_cert: PathBuf,
    pub server_cert: PathBuf,
    pub server_key: PathBuf,
}

/// A throwaway CA and a server certificate for 127.0.0.1 / localhost, made
/// with the `openssl` CLI.
pub fn make_test_pki(dir: &Path) -> TestPki {
    let openssl = tools::openssl();
    let ca_key = dir.join("ca.key");
    let ca_cert = dir.join("ca.pem");
    let server_key = dir.join("server.key");
    let server_csr = dir.join("server.csr");
    let server_cert = dir.join("server.pem");
    let ext = dir.join("server.ext");
    fs::write(
        &ext,
        "basicConstraints=critical,CA:FALSE\n\
         keyUsage=critical,digitalSignature,keyEncipherment\n\
         extendedKeyUsage=serverAuth\n\
         subjectAltName=IP:127.0.0.1,DNS:localhost\n",
    )
    .expect("write openssl extensions");
    let p = |p: &Path| p.display().to_string();
    let ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1"];

    let mut cmd = Command::new(&openssl);
    cmd.args(["req", "-x509", "-nodes", "-days", "2"])
        .args(ec)
        .args(["-keyout", &p(&ca_key), "-out", &p(&ca_cert)])
        .args(["-subj", "/CN=Ferry Test CA"])
        .args(["-addext", "basicConstraints=critical,CA:TRUE"])
        .args(["-addext", "keyUsage=critical,keyCertSign,cRLSign"]);
    run_tool(cmd);

    let mut cmd = Command::new(&openssl);
    cmd.args(["req", "-new", "-nodes"])
        .args(ec)
        .args(["-keyout", &p(&server_key), "-out", &p(&server_csr)])
        .args(["-subj", "/CN=localhost"]);
    run_tool(cmd);

    let mut cmd = Command::new(&openssl);
    cmd.args(["x509", "-req", "-days", "2", "-set_serial", "2"])
        .args(["-in", &p(&server_csr), "-CA", &p(&ca_cert), "-CAkey", &p(&ca_key)])
        .args(["-out", &p(&server_cert), "-extfile", &p(&ext)]);
    run_tool(cmd);

    TestPki { ca_cert, server_cert, server_key }
}

/// Run a helper tool to completion; panic with its output if it fails.
fn run_tool(mut cmd: Command) -> String {
    let shown = format!("{cmd:?}");
    let out = cmd.stdin(Stdio::null()).output().unwrap_or_else(|e| panic!("cannot run {shown}: {e}"));
    assert!(
        out.status.success(),
        "{shown} failed with {}:\nstdout:\n{}\nstderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A manifest as a registry served it.
#[derive(Clone, Debug)]
pub struct Manifest {
    pub bytes: Vec<u8>,
    /// The `Docker-Content-Digest` response header.
    pub digest: String,
    /// The `Content-Type` response header.
    pub content_type: String,
}

impl Manifest {
    /// `sha256:` of the exact bytes served.
    pub fn computed_digest(&self) -> String {
        sha256_digest(&self.bytes)
    }

    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.bytes).expect("manifest is JSON")
    }

    pub fn descriptor(&self) -> Descriptor {
        Descriptor { media_type: self.content_type.clone(), digest: self.digest.clone(), size: self.bytes.len() as u64 }
    }

    /// Config and layer descriptors of an image manifest.
    pub fn blobs(&self) -> Vec<Descriptor> {
        let json = self.json();
        let config = std::iter::once(&json["config"]);
        let layers = json["layers"].as_array().into_iter().flatten();
        config.chain(layers).filter(|d| d.is_object()).map(Descriptor::from_json).collect()
    }

    /// `manifests[]` descriptors of an index.
    pub fn children(&self) -> Vec<Descriptor> {
        self.json()["manifests"].as_array().into_iter().flatten().map(Descriptor::from_json).collect()
    }
}

/// A referrer artifact pushed next to an image (see [`RegistryClient::push_referrer`]).
#[derive(Clone, Debug)]
pub struct Referrer {
    pub manifest: Manifest,
    pub blobs: Vec<Descriptor>,
    /// `sha256-<hex of subject>`: the OCI 1.1 referrers tag-schema fallback tag.
    pub fallback_tag: String,
}

/// Blocking HTTP client for one registry (its own small tokio runtime).
pub struct RegistryClient {
    rt: tokio::runtime::Runtime,
    http: reqwest::Client,
    base: String,
    credentials: Option<Credentials>,
}

impl RegistryClient {
    pub fn new(host: &str, scheme: &str, credentials: Option<Credentials>, ca_cert: Option<&Path>) -> Self {
        let mut builder =
            reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).timeout(Duration::from_secs(120));
        if let Some(ca) = ca_cert {
            let pem = fs::read(ca).expect("read test CA");
            let cert = reqwest::Certificate::from_pem(&pem).expect("parse test CA");
            builder = builder.tls_certs_only([cert]);
        }
        Self {
            rt: tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("tokio runtime for registry client"),
            http: builder.build().expect("reqwest client"),
            base: format!("{scheme}://{host}"),
            credentials,
        }
    }

    fn request(&self, method: Method, path: &str) -> reqwest::RequestBuilder {
        let url = if path.starts_with("http://") || path.starts_with("https://") {
            path.to_string()
        } else {
            format!("{}{path}", self.base)
        };
        let req = self.http.request(method, url);
        match &self.credentials {
            Some(c) => req.basic_auth(&c.user, Some(&c.password)),
            None => req,
        }
    }

    fn send(&self, req: reqwest::RequestBuilder) -> (StatusCode, header::HeaderMap, Vec<u8>) {
        self.rt.block_on(async {
            let resp = req.send().await.expect("registry request");
            let status = resp.status();
            let headers = resp.headers().clone();
            let body = resp.bytes().await.expect("registry response body").to_vec();
            (status, headers, body)
        })
    }

    /// `GET /v2/`: Ok with whatever status once the server answers HTTP.
    pub fn ping(&self) -> Result<StatusCode, reqwest::Error> {
        let req = self.request(Method::GET, "/v2/").timeout(Duration::from_secs(2));
        self.rt.block_on(async { req.send().await.map(|r| r.status()) })
    }

    /// Like [`RegistryClient::manifest`], for polling while something else writes the
    /// repository: `None` also on a 5xx (distribution's filesystem driver answers 500 when it reads
    /// a tag link that is being written).
    pub fn manifest_when_ready(&self, repo: &str, reference: &str) -> Option<Manifest> {
        let req = self
            .request(Method::GET, &format!("/v2/{repo}/manifests/{reference}"))
            .header(header::ACCEPT, MANIFEST_ACCEPT);
        let (status, headers, bytes) = self.send(req);
        if status.is_server_error() || status == StatusCode::NOT_FOUND {
            return None;
        }
        assert!(status.is_success(), "GET {}/v2/{repo}/manifests/{reference}: {status}", self.base);
        let text = |name: &str| headers.get(name).and_then(|v| v.to_str().ok()).unwrap_or_default().to_string();
        Some(Manifest { digest: text("docker-content-digest"), content_type: text("content-type"), bytes })
    }

    /// `GET /v2/<repo>/manifests/<reference>`; `None` on 404. A 5xx is asked again a few
    /// times first: distribution's filesystem driver answers 500 for a moment while a tag link
    /// of the repository is being written, which Ferry may be doing while a test looks.
    pub fn manifest(&self, repo: &str, reference: &str) -> Option<Manifest> {
        let get = || {
            let req = self
                .request(Method::GET, &format!("/v2/{repo}/manifests/{reference}"))
                .header(header::ACCEPT, MANIFEST_ACCEPT);
            self.send(req)
        };
        let (mut status, mut headers, mut bytes) = get();
        for _ in 0..5 {
            if !status.is_server_error() {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(200));
            (status, headers, bytes) = get();
        }
        if status == StatusCode::NOT_FOUND {
            return None;
        }
        assert!(
            status.is_success(),
            "GET {}/v2/{repo}/manifests/{reference}: {status}: {}",
            self.base,
            String::from_utf8_lossy(&bytes)
        );
        let text = |name: &str| headers.get(name).and_then(|v| v.to_str().ok()).unwrap_or_default().to_string();
        Some(Manifest { digest: text("docker-content-digest"), content_type: text("content-type"), bytes })
    }

    /// `HEAD /v2/<repo>/blobs/<digest>` answered 200.
    pub fn blob_exists(&self, repo: &str, digest: &str) -> bool {
        let (status, _, _) = self.send(self.request(Method::HEAD, &format!("/v2/{repo}/blobs/{digest}")));
        status.is_success()
    }

    pub fn blob(&self, repo: &str, digest: &str) -> Vec<u8> {
        let (status, _, body) = self.send(self.request(Method::GET, &format!("/v2/{repo}/blobs/{digest}")));
        assert!(status.is_success(), "GET blob {repo}@{digest}: {status}");
        body
    }

    /// Tags of `repo`; empty when the registry knows none.
    pub fn tags(&self, repo: &str) -> Vec<String> {
        let (status, _, body) = self.send(self.request(Method::GET, &format!("/v2/{repo}/tags/list")));
        if status == StatusCode::NOT_FOUND {
            return Vec::new();
        }
        assert!(status.is_success(), "GET tags of {repo}: {status}");
        let json: Value = serde_json::from_slice(&body).expect("tags list JSON");
        json["tags"].as_array().into_iter().flatten().filter_map(|t| t.as_str().map(String::from)).collect()
    }

    /// Monolithic upload: `POST .../blobs/uploads/` then `PUT <location>?digest=`.
    pub fn push_blob(&self, repo: &str, media_type: &str, bytes: &[u8]) -> Descriptor {
        let digest = sha256_digest(bytes);
        let (status, headers, body) = self.send(self.request(Method::POST, &format!("/v2/{repo}/blobs/uploads/")));
        assert_eq!(status, StatusCode::ACCEPTED, "start upload to {repo}: {}", String::from_utf8_lossy(&body));
        let location =
            headers.get(header::LOCATION).and_then(|v| v.to_str().ok()).expect("upload Location header").to_string();
        let separator = if location.contains('?') { '&' } else { '?' };
        let put = self
            .request(Method::PUT, &format!("{location}{separator}digest={digest}"))
            .header(header::CONTENT_TYPE, "application/octet-stream")
            .body(bytes.to_vec());
        let (status, _, body) = self.send(put);
        assert_eq!(
            status,
            StatusCode::CREATED,
            "finish upload of {digest} to {repo}: {}",
            String::from_utf8_lossy(&body)
        );
        Descriptor { media_type: media_type.into(), digest, size: bytes.len() as u64 }
    }

    /// `PUT /v2/<repo>/manifests/<reference>` with the exact `bytes`.
    pub fn push_manifest(&self, repo: &str, reference: &str, media_type: &str, bytes: &[u8]) -> String {
        let req = self
            .request(Method::PUT, &format!("/v2/{repo}/manifests/{reference}"))
            .header(header::CONTENT_TYPE, media_type)
            .body(bytes.to_vec());
        let (status, headers, body) = self.send(req);
        assert_eq!(status, StatusCode::CREATED, "push manifest {repo}:{reference}: {}", String::from_utf8_lossy(&body));
        let digest = sha256_digest(bytes);
        if let Some(served) = headers.get("docker-content-digest") {
            assert_eq!(served.to_str().unwrap_or_default(), digest, "registry digest of pushed manifest");
        }
        digest
    }

    /// Attach a referrer artifact (an OCI image manifest with `artifactType`
    /// and a `subject`) to `subject` in `repo`, and publish it the way a
    /// registry without the referrers API exposes it: the
    /// `sha256-<hex>` tag holding an OCI index that lists the referrer.
    pub fn push_referrer(&self, repo: &str, subject: &Manifest, artifact_type: &str) -> Referrer {
        let config = self.push_blob(repo, media_type::OCI_EMPTY, b"{}");
        let payload = json!({
            "spdxVersion": "SPDX-2.3",
            "name": format!("sbom for {}", subject.digest),
            "nonce": hex::encode(random_bytes(8)),
        });
        let payload =
            self.push_blob(repo, "application/spdx+json", &serde_json::to_vec(&payload).expect("payload JSON"));
        let manifest = json!({
            "schemaVersion": 2,
            "mediaType": media_type::OCI_MANIFEST,
            "artifactType": artifact_type,
            "config": config.to_json(),
            "layers": [payload.to_json()],
            "subject": {
                "mediaType": subject.content_type,
                "digest": subject.digest,
                "size": subject.bytes.len(),
            },
            "annotations": {"org.opencontainers.image.created": "2026-01-01T00:00:00Z"},
        });
        let bytes = serde_json::to_vec(&manifest).expect("referrer JSON");
        let digest = self.push_manifest(repo, &sha256_digest(&bytes), media_type::OCI_MANIFEST, &bytes);

        let fallback_tag = subject.digest.replacen(':', "-", 1);
        let index = json!({
            "schemaVersion": 2,
            "mediaType": media_type::OCI_INDEX,
            "manifests": [{
                "mediaType": media_type::OCI_MANIFEST,
                "digest": digest,
                "size": bytes.len(),
                "artifactType": artifact_type,
                "annotations": {"org.opencontainers.image.created": "2026-01-01T00:00:00Z"},
            }],
        });
        let index = serde_json::to_vec(&index).expect("fallback index JSON");
        self.push_manifest(repo, &fallback_tag, media_type::OCI_INDEX, &index);

        Referrer {
            manifest: self.manifest(repo, &digest).expect("referrer readable after push"),
            blobs: vec![config, payload],
            fallback_tag,
        }
    }
}

pub fn random_bytes(n: usize) -> Vec<u8> {
    use std::io::Read;
    let mut buf = vec![0; n];
    fs::File::open("/dev/urandom").and_then(|mut f| f.read_exact(&mut buf)).expect("read /dev/urandom");
    buf
}

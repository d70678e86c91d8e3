//! Hostile input against a real `ferry serve` (issue 12, item 11): path traversal and control
//! characters in repository and tag names from every sender and the operations API, webhooks
//! naming registries outside the allowlist, CR/LF in header values, and secrets that must never
//! show in logs (`-vv`) or answers. Each hostile request is refused with a 400 naming the field,
//! or ignored with a reason; none becomes a job, so none reaches a registry or a file, and a
//! listener standing for an unlisted registry accepts no connection. One valid push at the end
//! proves the pipeline was live all along.

mod support;

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use ferry_core::intake::verify::generic_signature;
use serde_json::{Value, json};
use sha2::{Digest as _, Sha256};
use support::registry::free_port;
use support::{FerryServer, OciLayout, Registry};

const REPO: &str = "shop/api";
const OPERATOR_TOKEN: &str = "hostile-operator-token-5b1e0c";
const REGISTRY_USER: &str = "ferry-puller";
const REGISTRY_PASSWORD: &str = "hostile-registry-password-77f3";
/// Every sender with its secret (environment variable, value).
const SECRETS: &[(&str, &str, &str)] = &[
    ("generic", "HI_GENERIC_SECRET", "hostile-generic-secret-a1"),
    ("distribution", "HI_DISTRIBUTION_SECRET", "hostile-distribution-secret-b2"),
    ("acr", "HI_ACR_SECRET", "hostile-acr-secret-c3"),
    ("harbor", "HI_HARBOR_SECRET", "hostile-harbor-secret-d4"),
    ("github", "HI_GITHUB_SECRET", "hostile-github-secret-e5"),
    ("quay", "HI_QUAY_SECRET", "hostile-quay-secret-f6"),
    ("dockerhub", "HI_DOCKERHUB_SECRET", "hostile-dockerhub-secret-g7"),
    ("azure-devops", "HI_AZURE_DEVOPS_SECRET", "hostile-azure-devops-secret-h8"),
];
/// `-vv`, as `ferry serve -vv` sets it (FERRY_LOG takes the same filter).
const VERY_VERBOSE: &str = "debug,hyper=info,h2=info,rustls=info";

fn secret(sender: &str) -> &'static str {
    SECRETS.iter().find(|(s, _, _)| *s == sender).map(|(_, _, v)| *v).unwrap()
}

/// A TCP listener standing for a registry Ferry must never contact: counts what it accepts.
struct CountingListener {
    host: String,
    accepted: Arc<AtomicUsize>,
}

impl CountingListener {
    fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let host = listener.local_addr().unwrap().to_string();
        let accepted = Arc::new(AtomicUsize::new(0));
        let counter = accepted.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                counter.fetch_add(1, Ordering::SeqCst);
                drop(stream);
            }
        });
        CountingListener { host, accepted }
    }
}

fn config(build: &str, dev: &str) -> String {
    let mut config = format!(
        r#"
[worker]
retry_base_ms = 100
[registries."{build}"]
plain_http = true
username_env = "HI_REGISTRY_USER"
password_env = "HI_REGISTRY_PASSWORD"
[registries."{dev}"]
plain_http = true
"#
    );
    for (sender, env, _) in SECRETS {
        config.push_str(&format!("[sources.{sender}]\nsecret_env = \"{env}\"\n"));
        match *sender {
            "distribution" | "acr" => config.push_str("header = \"X-Ferry-Secret\"\n"),
            "azure-devops" => config.push_str("username = \"ferry\"\n"),
            _ => {}
        }
    }
    config.push_str(&format!(
        "[[pipelines]]\nname = \"shop-api\"\nsource = \"{build}/{REPO}\"\n  [[pipelines.stages]]\n  name = \"dev\"\n  target = \"{dev}/{REPO}\"\n"
    ));
    config
}

fn fixture(name: &str) -> Value {
    let path = format!("{}/shared/src/intake/fixtures/{name}", env!("CARGO_MANIFEST_DIR"));
    serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap()
}

fn set(body: &mut Value, pointer: &str, value: Value) {
    let shown = body.to_string();
    *body.pointer_mut(pointer).unwrap_or_else(|| panic!("{pointer} in {shown}")) = value;
}

/// The push webhook of `sender` naming `host`/`repository`:`tag`, in the sender's own format.
fn push_body(sender: &str, host: &str, repository: &str, tag: &str) -> Value {
    match sender {
        "generic" => json!({ "repository": format!("{host}/{repository}"), "tag": tag }),
        "acr" => {
            let mut body = fixture("acr-push.json");
            set(&mut body, "/target/repository", json!(repository));
            set(&mut body, "/target/tag", json!(tag));
            set(&mut body, "/request/host", json!(host));
            body
        }
        "distribution" => {
            let mut body = fixture("distribution-push.json");
            set(&mut body, "/events/0/target/repository", json!(repository));
            set(&mut body, "/events/0/target/tag", json!(tag));
            set(&mut body, "/events/0/request/host", json!(host));
            set(&mut body, "/events/0/target/url", json!(format!("http://{host}/v2/{repository}/manifests/{tag}")));
            body
        }
        "harbor" => {
            let mut body = fixture("harbor-push.json");
            set(&mut body, "/event_data/repository/repo_full_name", json!(repository));
            set(&mut body, "/event_data/resources/0/tag", json!(tag));
            set(&mut body, "/event_data/resources/0/resource_url", json!(format!("{host}/{repository}:{tag}")));
            body
        }
        "quay" => {
            let mut body = fixture("quay-push.json");
            set(&mut body, "/repository", json!(repository));
            set(&mut body, "/docker_url", json!(format!("{host}/{repository}")));
            set(&mut body, "/updated_tags", json!([tag]));
            body
        }
        "dockerhub" => {
            let mut body = fixture("dockerhub-push.json");
            set(&mut body, "/repository/repo_name", json!(repository));
            set(&mut body, "/push_data/tag", json!(tag));
            body
        }
        "github" => {
            let mut body = fixture("github-package.json");
            set(&mut body, "/package/name", json!(repository));
            set(&mut body, "/package/package_version/container_metadata/tag/name", json!(tag));
            body
        }
        "azure-devops" => {
            // Azure DevOps names no repository; what it names is a build definition.
            let mut body = fixture("azure-devops-build.json");
            set(&mut body, "/resource/definition/name", json!(format!("{repository}:{tag}")));
            body
        }
        _ => unreachable!("{sender}"),
    }
}

/// What came back from one request.
struct Answer {
    status: u16,
    headers: String,
    body: String,
}

/// Everything Ferry answered, to search for secrets at the end.
#[derive(Default)]
struct Transcript(Vec<String>);

impl Transcript {
    fn record(&mut self, answer: &Answer) {
        self.0.push(format!("{} {}\n{}", answer.status, answer.headers, answer.body));
    }
}

fn hook(client: &Client, server: &FerryServer, sender: &str, body: &Value) -> Answer {
    let bytes = serde_json::to_vec(body).unwrap();
    let secret = secret(sender);
    let path = match sender {
        "quay" | "dockerhub" => format!("/hooks/{sender}/{secret}"),
        _ => format!("/hooks/{sender}"),
    };
    let mut request = client.post(server.url(&path)).header("Content-Type", "application/json");
    request = match sender {
        "generic" => {
            let timestamp = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs().to_string();
            request
                .header("X-Ferry-Timestamp", &timestamp)
                .header("X-Ferry-Signature", generic_signature(secret.as_bytes(), &timestamp, &bytes))
        }
        "github" => {
            let signature = format!("sha256={}", hex::encode(hmac_sha256(secret.as_bytes(), &bytes)));
            request.header("X-Hub-Signature-256", signature).header("X-GitHub-Event", "package")
        }
        "distribution" | "acr" => request.header("X-Ferry-Secret", secret),
        "harbor" => request.header("Authorization", secret),
        "azure-devops" => request.basic_auth("ferry", Some(secret)),
        _ => request,
    };
    client.send(request.body(bytes))
}

/// HMAC-SHA256 (RFC 2104) as GitHub signs, written out: the test crate has no `hmac`.
fn hmac_sha256(key: &[u8], message: &[u8]) -> Vec<u8> {
    assert!(key.len() <= 64, "keys longer than a block are hashed first; not needed here");
    let mut block = [0u8; 64];
    block[..key.len()].copy_from_slice(key);
    let pad = |byte: u8| block.iter().map(|k| k ^ byte).collect::<Vec<u8>>();
    let inner = Sha256::new().chain_update(pad(0x36)).chain_update(message).finalize();
    Sha256::new().chain_update(pad(0x5c)).chain_update(inner).finalize().to_vec()
}

/// A blocking HTTP client for the test's requests (the workspace's reqwest is async only).
struct Client {
    runtime: tokio::runtime::Runtime,
    http: reqwest::Client,
}

impl Client {
    fn new() -> Self {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        let http = reqwest::Client::builder().timeout(Duration::from_secs(30)).build().unwrap();
        Client { runtime, http }
    }

    fn post(&self, url: String) -> reqwest::RequestBuilder {
        self.http.post(url)
    }

    fn get(&self, url: String) -> reqwest::RequestBuilder {
        self.http.get(url)
    }

    fn send(&self, request: reqwest::RequestBuilder) -> Answer {
        self.runtime.block_on(async {
            let response = request.send().await.expect("ferry answers");
            let status = response.status().as_u16();
            let headers = format!("{:?}", response.headers());
            let body = response.text().await.unwrap_or_default();
            Answer { status, headers, body }
        })
    }
}

/// A request written byte for byte on a socket (what `reqwest` refuses to send); the raw answer.
fn raw_request(port: u16, request: &[u8]) -> String {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).unwrap();
    stream.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    stream.write_all(request).unwrap();
    let mut response = Vec::new();
    let _ = stream.read_to_end(&mut response);
    String::from_utf8_lossy(&response).into_owned()
}

/// Jobs in the queue file, by state.
fn queue_states(server: &FerryServer) -> BTreeMap<String, i64> {
    let conn = rusqlite::Connection::open_with_flags(server.queue_path(), rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
        .expect("open the queue read-only");
    conn.busy_timeout(Duration::from_secs(5)).unwrap();
    let mut statement = conn.prepare("SELECT state, count(*) FROM jobs GROUP BY state").unwrap();
    statement.query_map([], |row| Ok((row.get(0)?, row.get(1)?))).unwrap().collect::<Result<_, _>>().unwrap()
}

fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap().flatten() {
        let path = entry.path();
        if path.is_dir() {
            files.extend(files_under(&path));
        } else {
            files.push(path);
        }
    }
    files
}

/// Repository names a sender must not get past intake.
fn hostile_repositories(canary: &str) -> Vec<String> {
    vec![
        "../../../../etc/passwd".into(),
        format!("../../../../../../..{canary}"),
        "shop/../../api".into(),
        "shop/api/..".into(),
        "%2e%2e/%2e%2e/shop/api".into(),
        "shop/%2e%2e/api".into(),
        "/etc/passwd".into(),
        format!("/{REPO}"),
        "shop\\..\\api".into(),
        "shop/api\nFORGED log line".into(),
        "shop/api\r\nX-Injected: 1".into(),
        "shop/\0api".into(),
        "shop/\u{1b}[31mapi".into(),
        "shop/api%0d%0aX-Injected:%201".into(),
        "shop/api\u{202e}ipa".into(),
    ]
}

fn hostile_tags(canary: &str) -> Vec<String> {
    vec![
        "../1.0".into(),
        "..".into(),
        "%2e%2e".into(),
        "1.0/../../../etc".into(),
        format!("../../../../../..{canary}"),
        "/etc/passwd".into(),
        "1.0\nFORGED log line".into(),
        "1.0\r\nX-Injected: 1".into(),
        "1.0\0".into(),
        "1.0\u{1b}[2J".into(),
        "1.0%0d%0a".into(),
    ]
}

#[test]
fn hostile_names_headers_and_foreign_registries_are_refused_and_no_secret_leaks() {
    let build = Registry::with_htpasswd(REGISTRY_USER, REGISTRY_PASSWORD);
    let dev = Registry::plain();
    let foreign = CountingListener::start();
    let canary = format!("/tmp/ferry-hostile-canary-{}", std::process::id());
    let mut envs: Vec<(&str, &str)> = SECRETS.iter().map(|(_, env, value)| (*env, *value)).collect();
    envs.extend([("HI_REGISTRY_USER", REGISTRY_USER), ("HI_REGISTRY_PASSWORD", REGISTRY_PASSWORD)]);
    envs.push(("FERRY_LOG", VERY_VERBOSE));
    let server =
        FerryServer::start_with_operator_token(free_port(), &config(build.host(), dev.host()), &envs, OPERATOR_TOKEN);
    let client = Client::new();
    let mut transcript = Transcript::default();
    let mut wrong = Vec::new();

    // 1. Path traversal and control characters in names, from every sender: 400 naming the
    // field, or ignored with a reason.
    let senders: Vec<&str> = SECRETS.iter().map(|(s, _, _)| *s).collect();
    let mut cases = 0;
    for sender in &senders {
        let mut names: Vec<(String, String)> =
            hostile_repositories(&canary).into_iter().map(|repo| (repo, "1.0".to_string())).collect();
        names.extend(hostile_tags(&canary).into_iter().map(|tag| (REPO.to_string(), tag)));
        for (repository, tag) in names {
            let answer = hook(&client, &server, sender, &push_body(sender, build.host(), &repository, &tag));
            transcript.record(&answer);
            cases += 1;
            let reply: Value = serde_json::from_str(&answer.body).unwrap_or(Value::Null);
            let refused = answer.status == 400 && reply["error"].as_str().is_some_and(|e| !e.is_empty());
            let ignored = answer.status == 200
                && reply["status"] == "ignored"
                && reply["reason"].as_str().is_some_and(|r| !r.is_empty());
            if !(refused || ignored) {
                wrong.push(format!("{sender} {repository:?}:{tag:?} → {} {}", answer.status, answer.body));
            }
        }
    }

    // 2. The same from an operator: `ferry promote` with a hostile reference, and a hostile name.
    let operator_hostile = hostile_tags(&canary).into_iter().chain(["../../../etc/passwd@sha256:00".to_string()]);
    for reference in operator_hostile {
        let answer = client.send(
            client
                .post(server.url("/api/promote"))
                .bearer_auth(OPERATOR_TOKEN)
                .header("X-Ferry-User", "alice")
                .json(&json!({ "pipeline": "shop-api", "reference": reference, "to": "dev" })),
        );
        transcript.record(&answer);
        cases += 1;
        if answer.status != 400 {
            wrong.push(format!("promote {reference:?} → {} {}", answer.status, answer.body));
        }
    }
    // Control characters cannot be sent in a header value at all (see 4.); these are visible to
    // HTTP but not to a person.
    for user in ["al\u{202e}ice", "bo\u{200b}b"] {
        let value = reqwest::header::HeaderValue::from_bytes(user.as_bytes()).unwrap();
        let answer = client.send(
            client
                .post(server.url("/api/promote"))
                .bearer_auth(OPERATOR_TOKEN)
                .header("X-Ferry-User", value)
                .json(&json!({ "pipeline": "shop-api", "reference": "1.0", "to": "dev" })),
        );
        transcript.record(&answer);
        cases += 1;
        if answer.status != 400 {
            wrong.push(format!("X-Ferry-User {user:?} → {} {}", answer.status, answer.body));
        }
    }

    // 3. Registries outside the allowlist, named by every sender that names a host: ignored,
    // and the listener standing for that registry is never contacted.
    for sender in ["generic", "acr", "distribution", "harbor", "quay"] {
        let answer = hook(&client, &server, sender, &push_body(sender, &foreign.host, REPO, "1.0"));
        transcript.record(&answer);
        cases += 1;
        let reply: Value = serde_json::from_str(&answer.body).unwrap_or(Value::Null);
        if !(answer.status == 200 && reply["status"] == "ignored") {
            wrong.push(format!("{sender} naming {} → {} {}", foreign.host, answer.status, answer.body));
        }
    }

    // 4. CR, LF and NUL in header values, and CR/LF encoded into the path: refused by the HTTP
    // layer or answered without the injected header.
    let port = server.port();
    let injections: Vec<Vec<u8>> = vec![
        b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Ferry-User: alice\rX-Injected: 1\r\nConnection: close\r\n\r\n".to_vec(),
        b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Ferry-User: alice\0X-Injected: 1\r\nConnection: close\r\n\r\n".to_vec(),
        format!(
            "POST /api/promote HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {OPERATOR_TOKEN}\r\nX-Ferry-User: alice\x1b[31m\r\nContent-Type: application/json\r\nContent-Length: 2\r\nConnection: close\r\n\r\n{{}}"
        )
        .into_bytes(),
        format!(
            "POST /api/promote HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {OPERATOR_TOKEN}\r\nX-Ferry-User: alice\r\n X-Injected: 1\r\nContent-Type: application/json\r\nContent-Length: 2\r\nConnection: close\r\n\r\n{{}}"
        )
        .into_bytes(),
        b"POST /hooks/generic HTTP/1.1\r\nHost: x\r\nContent-Type: text/plain\x1b[31m\r\nContent-Length: 2\r\nConnection: close\r\n\r\n{}".to_vec(),
        format!(
            "GET /api/promotions/x%0d%0aX-Injected:%201 HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {OPERATOR_TOKEN}\r\nConnection: close\r\n\r\n"
        )
        .into_bytes(),
        format!(
            "POST /hooks/quay/{}%0d%0aX-Injected:%201 HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 2\r\nConnection: close\r\n\r\n{{}}",
            secret("quay")
        )
        .into_bytes(),
    ];
    for request in &injections {
        let response = raw_request(port, request);
        transcript.0.push(response.clone());
        cases += 1;
        let head = response.split("\r\n\r\n").next().unwrap_or_default().to_ascii_lowercase();
        let status: u16 = response.split_whitespace().nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
        if head.contains("x-injected") || !(400..500).contains(&status) {
            wrong.push(format!("{:?} → {response:?}", String::from_utf8_lossy(request)));
        }
    }

    // 5. Wrong secrets from every sender: 401, and the answer does not give the secret away.
    for sender in &senders {
        let url = match *sender {
            "quay" | "dockerhub" => server.url(&format!("/hooks/{sender}/not-the-secret")),
            _ => server.url(&format!("/hooks/{sender}")),
        };
        let answer = client.send(
            client
                .post(url)
                .header("Content-Type", "application/json")
                .header("X-Ferry-Secret", "not-the-secret")
                .header("Authorization", "not-the-secret")
                .header("X-Hub-Signature-256", format!("sha256={}", "0".repeat(64)))
                .header("X-Ferry-Timestamp", "1")
                .header("X-Ferry-Signature", "00")
                .body(serde_json::to_vec(&push_body(sender, build.host(), REPO, "1.0")).unwrap()),
        );
        transcript.record(&answer);
        cases += 1;
        if answer.status != 401 {
            wrong.push(format!("{sender} with a wrong secret → {} {}", answer.status, answer.body));
        }
    }
    assert!(wrong.is_empty(), "{} of {cases} hostile requests were not refused:\n{}", wrong.len(), wrong.join("\n"));

    // Nothing became a job: nothing can reach a registry.
    let states = queue_states(&server);
    assert!(states.is_empty(), "hostile requests were queued: {states:?}\n{}", server.log());

    // One valid push proves the pipeline was live: it reaches dev through the authenticated
    // build registry (so the registry password was in use while the log was written).
    let mut layout = OciLayout::new();
    layout.add_image("1.0", &[50_000]);
    let digest = build.skopeo_push(&layout.reference("1.0"), &format!("{REPO}:1.0"), &[]).computed_digest();
    let answer = hook(&client, &server, "generic", &push_body("generic", build.host(), REPO, "1.0"));
    transcript.record(&answer);
    assert_eq!(answer.status, 202, "{}", answer.body);
    let deadline = Instant::now() + Duration::from_secs(60);
    while dev.client().manifest_when_ready(REPO, "1.0").is_none_or(|m| m.digest != digest) {
        assert!(Instant::now() < deadline, "the valid push never reached dev:\n{}", server.log());
        std::thread::sleep(Duration::from_millis(100));
    }
    let history = answer_of(&client, &server, "/api/history/shop-api");
    transcript.record(&history);
    let status = answer_of(&client, &server, "/api/status");
    transcript.record(&status);
    // The job is acknowledged a moment after the tag lands.
    let deadline = Instant::now() + Duration::from_secs(30);
    let states = loop {
        let states = queue_states(&server);
        if !states.contains_key("ready") || Instant::now() > deadline {
            break states;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(states.get("ready"), None, "the valid push's job never finished: {states:?}");
    assert_eq!(states.get("dead"), None, "{states:?}");

    assert_eq!(foreign.accepted.load(Ordering::SeqCst), 0, "Ferry connected to a registry outside the allowlist");
    // The build registry saw the pull of shop/api and nothing else.
    let requests: Vec<String> = build
        .log()
        .lines()
        .filter_map(|line| line.split('"').nth(1).map(str::to_string))
        .filter(|request| request.contains(" /v2/"))
        .collect();
    assert!(!requests.is_empty(), "no request in the build registry's access log:\n{}", build.log());
    for request in &requests {
        let path = request.split_whitespace().nth(1).unwrap_or_default();
        assert!(
            path == "/v2/" || path.starts_with(&format!("/v2/{REPO}/")),
            "the build registry was asked for {request:?}"
        );
    }
    assert!(!Path::new(&canary).exists(), "{canary} was created");
    let allowed = ["ferry.toml", "ferry.log", "queue.db", "ledger.db", "replay.db"];
    for file in files_under(server.dir()) {
        let name = file.file_name().unwrap().to_string_lossy().into_owned();
        let base = name.trim_end_matches("-wal").trim_end_matches("-shm").trim_end_matches("-journal");
        assert!(allowed.contains(&base), "unexpected file {}", file.display());
    }

    // No raw control character made it into the log, and no forged line.
    let log = server.log();
    let debug_lines = log.lines().filter(|l| l.contains(" DEBUG ")).count();
    assert!(debug_lines > 0, "ferry serve did not log at -vv (debug) level:\n{log}");
    for (i, line) in log.lines().enumerate() {
        assert!(!line.starts_with("FORGED") && !line.starts_with("X-Injected"), "forged log line {i}: {line:?}");
        assert!(!line.contains(['\u{1b}', '\r', '\0', '\u{202e}']), "raw control character in log line {i}: {line:?}");
    }
    // No secret in the log (`-vv`) or in any answer: each value, and the registry's basic auth.
    let basic = support::base64(format!("{REGISTRY_USER}:{REGISTRY_PASSWORD}").as_bytes());
    let ado_basic = support::base64(format!("ferry:{}", secret("azure-devops")).as_bytes());
    let mut secrets: Vec<&str> = SECRETS.iter().map(|(_, _, v)| *v).collect();
    secrets.extend([OPERATOR_TOKEN, REGISTRY_PASSWORD, basic.as_str(), ado_basic.as_str()]);
    let answers = transcript.0.join("\n");
    for secret in secrets {
        // The URL-token senders' own secret is in the path the test sent, not in what came back.
        assert!(!log.contains(secret), "the log holds the secret {secret:?}");
        assert!(!answers.contains(secret), "an answer holds the secret {secret:?}");
    }
    eprintln!(
        "hostile input: {cases} hostile requests refused or ignored; 0 queued, 0 connections off the allowlist; \
         {} log lines ({debug_lines} at debug) and {} answers hold none of {} secrets",
        log.lines().count(),
        transcript.0.len(),
        SECRETS.len() + 4
    );
}

fn answer_of(client: &Client, server: &FerryServer, path: &str) -> Answer {
    client.send(client.get(server.url(path)).bearer_auth(OPERATOR_TOKEN))
}

/// Every comparison of a secret goes through `verify::secrets_equal` (`subtle`'s constant-time
/// `ct_eq`) or an HMAC's `verify_slice`; no `==` on a secret's bytes in Ferry's code.
#[test]
fn secrets_are_compared_in_constant_time() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let verify = std::fs::read_to_string(root.join("shared/src/intake/verify.rs")).unwrap();
    assert!(verify.contains("given.ct_eq(expected)"), "secrets_equal is no longer subtle's ct_eq");
    assert!(verify.contains("mac.verify_slice(&signature)"), "HMACs are no longer checked with verify_slice");
    let mut offending = Vec::new();
    let mut sites = 0;
    for dir in ["shared/src", "src", "functions"] {
        for file in files_under(&root.join(dir)).into_iter().filter(|f| f.extension().is_some_and(|e| e == "rs")) {
            let text = std::fs::read_to_string(&file).unwrap();
            // Unit tests at the end of a file may compare secrets however they like.
            let code = text.split("#[cfg(test)]").next().unwrap_or_default();
            for (i, line) in code.lines().enumerate() {
                if !line.contains(".expose()") {
                    continue;
                }
                sites += 1;
                if ["==", "!=", ".eq(", ".cmp(", "starts_with", "ends_with", "strip_prefix"]
                    .iter()
                    .any(|op| line.contains(op))
                {
                    offending.push(format!("{}:{}: {}", file.display(), i + 1, line.trim()));
                }
            }
        }
    }
    assert!(sites > 0, "no `.expose()` found: the scan looks in the wrong place");
    assert!(offending.is_empty(), "secrets compared with ordinary equality:\n{}", offending.join("\n"));
    // And the comparison itself: equal only when equal, whatever the prefix.
    use ferry_core::intake::verify::secrets_equal;
    assert!(secrets_equal(b"hostile-secret", b"hostile-secret"));
    assert!(!secrets_equal(b"hostile-secreT", b"hostile-secret"));
    assert!(!secrets_equal(b"hostile", b"hostile-secret"));
    assert!(!secrets_equal(b"", b"hostile-secret"));
}

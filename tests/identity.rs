//! Identities behind operator actions (`[identity]`): OIDC bearer JWTs from a fake provider
//! (real ES256 signatures, discovery and JWKS over HTTP), static user tokens stored as hashes,
//! roles per pipeline and stage, approvals counted by authenticated subject, and the shared
//! operator token as a recorded break-glass. Driven with `ferry serve` and the CLI (`--token`).

mod support;

use std::time::{Duration, Instant};

use serde_json::{Value, json};
use support::oidc::{FakeOidcProvider, SigningKey, now_s};
use support::prometheus::parse_prometheus;
use support::registry::free_port;
use support::{FerryCommand, FerryServer, Registry, ferry};

const PIPELINE: &str = "shop-api";
const REPO: &str = "shop/api";
const OPERATOR_TOKEN: &str = "identity-test-operator-token";
/// The static user `sam` (an approver by group); its hash is made by `ferry token hash`.
const SAM_TOKEN: &str = "sam-static-token-0123456789abcdef0123456789";

struct Setup {
    oidc: FakeOidcProvider,
    server: FerryServer,
    source: Registry,
    _dev: Registry,
    _prod: Registry,
}

/// The subject the ledger records for an OIDC `sub` of the fake provider.
fn subject(sub: &str) -> String {
    format!("{sub}@127.0.0.1")
}

/// Ferry with shop-api (dev: auto, prod: approval by two), the fake provider as issuer, `sam`
/// with a static token, and grants: alice operates everything, the `approvers` group approves
/// prod, victor only views.
fn start() -> Setup {
    let oidc = FakeOidcProvider::start();
    let (source, dev, prod) = (Registry::plain(), Registry::plain(), Registry::plain());
    let hashed = ferry("token").arg("hash").stdin(SAM_TOKEN).run();
    let sam_hash = hashed.success().trim().to_string();
    assert!(sam_hash.starts_with("sha256:") && sam_hash.len() == 7 + 64, "{sam_hash}");
    let mut config = support::registry::plain_registries([source.host(), dev.host(), prod.host()]);
    config.push_str(&format!(
        r#"
[[identity.oidc]]
issuer = "{issuer}"
audience = "{audience}"
jwks_refetch_s = 1

[[identity.users]]
name = "sam"
token_hash = "{sam_hash}"
groups = ["approvers"]

[[identity.grants]]
subject = "{alice}"
role = "operator"

[[identity.grants]]
group = "approvers"
role = "approver"
pipeline = "{PIPELINE}"
stage = "prod"

[[identity.grants]]
subject = "{victor}"
role = "viewer"

[[pipelines]]
name = "{PIPELINE}"
source = "{source}/{REPO}"
  [[pipelines.stages]]
  name = "dev"
  target = "{dev}/{REPO}"
  gate = "auto"
  [[pipelines.stages]]
  name = "prod"
  target = "{prod}/{REPO}"
  gate = "approval"
  approvers = 2
"#,
        issuer = oidc.issuer(),
        audience = support::oidc::AUDIENCE,
        alice = subject("alice-sub"),
        victor = subject("victor-sub"),
        source = source.host(),
        dev = dev.host(),
        prod = prod.host(),
    ));
    let server = FerryServer::start_with_operator_token(free_port(), &config, &[], OPERATOR_TOKEN);
    Setup { oidc, server, source, _dev: dev, _prod: prod }
}

/// `ferry SUBCOMMAND --server … --token TOKEN`.
fn cli(server: &FerryServer, subcommand: &str, token: &str) -> FerryCommand {
    ferry(subcommand).args(["--server", &server.url("")]).args(["--token", token]).timeout(Duration::from_secs(30))
}

fn push(registry: &Registry, tag: &str) -> String {
    registry.push_image(REPO, tag, &[50_000])
}

/// The JSON error of a refused `--json` command.
fn refused(run: support::FerryRun) -> Value {
    assert!(!run.status.success(), "{} succeeded:\n{}", run.command_line, run.stdout);
    serde_json::from_str::<Value>(&run.stdout).unwrap_or_else(|_| panic!("not JSON: {}\n{}", run.stdout, run.stderr))
        ["error"]
        .clone()
}

/// Every way a JWT can be wrong is refused with 401 and says why; a rotated key is found by
/// fetching the JWKS again on its unknown `kid`.
#[test]
fn oidc_tokens_are_checked_and_refused_with_a_reason() {
    let setup = start();
    let (oidc, server) = (&setup.oidc, &setup.server);
    let status = |token: &str| cli(server, "status", token).arg("--json").run();

    let ok = status(&oidc.token("victor-sub", "Victor", &[]));
    assert_eq!(ok.json()[0]["name"], PIPELINE, "a valid token reads: {}", ok.stderr);

    let now = now_s();
    let with = |change: &dyn Fn(&mut Value)| {
        let mut claims = oidc.claims("victor-sub", "Victor", &[]);
        change(&mut claims);
        oidc.sign(&claims)
    };
    let stranger = SigningKey::generate("key-1");
    let cases: Vec<(&str, String, &str)> = vec![
        ("wrong audience", with(&|c| c["aud"] = json!("someone-else")), "wrong audience: expected `ferry-api`"),
        ("expired", with(&|c| c["exp"] = json!(now - 300)), "expired"),
        ("not yet valid", with(&|c| c["nbf"] = json!(now + 300)), "not yet valid"),
        ("unknown issuer", with(&|c| c["iss"] = json!("https://evil.example")), "is not one of [[identity.oidc]]"),
        ("bad signature", stranger.sign(&oidc.claims("victor-sub", "Victor", &[])), "bad signature"),
        ("alg none", unsigned(&oidc.claims("victor-sub", "Victor", &[])), "algorithm `none` is not accepted"),
        (
            "unknown kid",
            SigningKey::generate("key-from-elsewhere").sign(&oidc.claims("victor-sub", "Victor", &[])),
            "unknown key id `key-from-elsewhere`",
        ),
    ];
    for (what, token, reason) in cases {
        let error = refused(status(&token));
        let message = error["message"].as_str().unwrap_or_default();
        assert_eq!(error["class"], "unauthorized", "{what}: {error:#}");
        assert!(message.contains("(401)") && message.contains(reason), "{what}: {message}");
    }
    // A token with the right issuer inside but tampered claims fails its signature too.
    let good = oidc.token("victor-sub", "Victor", &[]);
    let mut parts: Vec<String> = good.split('.').map(str::to_string).collect();
    parts[1] = b64(&serde_json::to_vec(&oidc.claims("alice-sub", "Alice", &[])).unwrap());
    let error = refused(status(&parts.join(".")));
    assert!(error["message"].as_str().unwrap().contains("bad signature"), "{error:#}");

    // Key rotation: the provider signs with a new kid; Ferry fetches the JWKS again (no more
    // often than jwks_refetch_s = 1 s) and accepts it.
    let fetches = oidc.jwks_fetches();
    oidc.rotate("key-2");
    std::thread::sleep(Duration::from_millis(1_100));
    let rotated = status(&oidc.token("victor-sub", "Victor", &[]));
    assert_eq!(rotated.json()[0]["name"], PIPELINE, "after rotation: {}", rotated.stderr);
    assert!(oidc.jwks_fetches() > fetches, "the JWKS was fetched again for the new kid");
    // RS256 as well: the provider moves to an RSA key.
    oidc.rotate_to(SigningKey::generate_rsa("rsa-1"));
    std::thread::sleep(Duration::from_millis(1_100));
    let rsa = status(&oidc.token("victor-sub", "Victor", &[]));
    assert_eq!(rsa.json()[0]["name"], PIPELINE, "an RS256 token: {}", rsa.stderr);
    // Unknown kids in a burst do not make Ferry fetch the JWKS for each of them.
    let (before, started) = (oidc.jwks_fetches(), Instant::now());
    for i in 0..5 {
        let token = SigningKey::generate(&format!("junk-{i}")).sign(&oidc.claims("victor-sub", "Victor", &[]));
        refused(status(&token));
    }
    // At most one fetch per jwks_refetch_s (1 s) of the burst, plus one at its start.
    let fetched = oidc.jwks_fetches() - before;
    let allowed = 1 + started.elapsed().as_secs() as usize;
    assert!(fetched <= allowed, "{fetched} JWKS fetches for 5 unknown kids in {:?}", started.elapsed());
}

fn b64(bytes: &[u8]) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

/// An `alg: none` token: header, claims, empty signature.
fn unsigned(claims: &Value) -> String {
    format!("{}.{}.", b64(br#"{"alg":"none","typ":"JWT"}"#), b64(&serde_json::to_vec(claims).unwrap()))
}

/// Approvals by authenticated subject: alice (operator) promotes, a viewer is refused with 403,
/// alice cannot approve her own promotion whatever name she sends, bob approving twice counts
/// once, sam's static token (hashed by `ferry token hash`) is the second approver; the ledger
/// records subjects and channels. The operator token still works and is recorded as unverified.
#[test]
fn approvals_count_authenticated_subjects_and_roles_are_enforced() {
    let setup = start();
    let (oidc, server, source) = (&setup.oidc, &setup.server, &setup.source);
    push(source, "1.0");
    let alice = oidc.token("alice-sub", "Alice", &[]);
    let bob = oidc.token("bob-sub", "Bob", &["approvers"]);
    let victor = oidc.token("victor-sub", "Victor", &[]);

    // Alice promotes into dev, then prod (parked for approval); X-Ferry-User is ignored.
    let dev =
        cli(server, "promote", &alice).args([PIPELINE, "1.0", "--to", "dev", "--wait", "--json", "--user", "mallory"]);
    let dev = dev.run().json();
    assert_eq!(dev["outcome"]["state"], "promoted", "{dev:#}");
    let parked = cli(server, "promote", &alice)
        .args([PIPELINE, "1.0", "--to", "prod", "--wait", "--json", "--user", "alice"])
        .run()
        .json();
    assert_eq!(parked["outcome"]["state"], "parked", "{parked:#}");
    let id = parked["outcome"]["promotion"].as_str().unwrap().to_string();
    let shown = cli(server, "show", &victor).args([&id, "--json"]).run().json();
    assert_eq!(shown["promotion"]["triggered_by"], subject("alice-sub"), "the subject, not --user: {shown:#}");

    // Victor may read but not approve, promote or roll back: 403 naming the role.
    let error = refused(cli(server, "approve", &victor).args([&id, "--json", "--user", "victor"]).run());
    assert_eq!(error["class"], "forbidden", "{error:#}");
    let message = error["message"].as_str().unwrap();
    assert!(message.contains("lacks the approver role on stage prod of pipeline shop-api"), "{message}");
    let error = refused(
        cli(server, "promote", &victor).args([PIPELINE, "1.0", "--to", "dev", "--json", "--user", "victor"]).run(),
    );
    assert!(error["message"].as_str().unwrap().contains("lacks the operator role"), "{error:#}");
    // Bob approves prod but may not promote into dev.
    let error =
        refused(cli(server, "promote", &bob).args([PIPELINE, "1.0", "--to", "dev", "--json", "--user", "bob"]).run());
    assert!(error["message"].as_str().unwrap().contains("lacks the operator role on stage dev"), "{error:#}");

    // Alice may not approve her own promotion, under another display name and claimed user.
    let alice_renamed = oidc.token("alice-sub", "Totally Not Alice", &["approvers"]);
    let error = refused(cli(server, "approve", &alice_renamed).args([&id, "--json", "--user", "bob"]).run());
    assert_eq!(error["class"], "forbidden", "{error:#}");
    assert!(error["message"].as_str().unwrap().contains("triggered"), "{error:#}");

    // Bob approves as himself; again (a fresh token, another --user): counted once.
    let first = cli(server, "approve", &bob).args([&id, "--json", "--user", "carol"]).run().json();
    assert_eq!((first["approvals"].as_u64(), first["released"].as_bool()), (Some(1), Some(false)), "{first:#}");
    let bob_again = oidc.token("bob-sub", "Robert", &["approvers"]);
    let again = cli(server, "approve", &bob_again).args([&id, "--json", "--user", "dave"]).run().json();
    assert_eq!((again["approvals"].as_u64(), again["already_counted"].as_bool()), (Some(1), Some(true)), "{again:#}");

    // Sam (static token) is the second approver: released.
    let second = cli(server, "approve", SAM_TOKEN).args([&id, "--wait", "--json", "--user", "sam"]).run().json();
    assert_eq!((second["released"].as_bool(), &second["outcome"]["state"]), (Some(true), &json!("promoted")));
    let shown = cli(server, "show", SAM_TOKEN).args([&id, "--json"]).run().json();
    let approvals: Vec<(&str, &str)> = shown["approvals"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| (a["by"].as_str().unwrap(), a["via"].as_str().unwrap()))
        .collect();
    assert_eq!(approvals, vec![(subject("bob-sub").as_str(), "oidc (Bob)"), ("sam", "user-token")], "{shown:#}");

    // A made-up static token is refused.
    let error = refused(cli(server, "status", "ferry_not-a-token-of-anyone-here-0000000000").arg("--json").run());
    assert!(error["message"].as_str().unwrap().contains("unknown token"), "{error:#}");

    // Break-glass: the operator token still works; the claimed name is recorded as unverified.
    push(source, "2.0");
    let dev = server.cli("promote").args([PIPELINE, "2.0", "--to", "dev", "--wait", "--json", "--user", "ops-bot"]);
    assert_eq!(dev.run().json()["outcome"]["state"], "promoted");
    let parked = server.cli("promote").args([PIPELINE, "2.0", "--to", "prod", "--wait", "--json", "--user", "ops-bot"]);
    let id = parked.run().json()["outcome"]["promotion"].as_str().unwrap().to_string();
    let self_approval = refused(server.cli("approve").args([&id, "--json", "--user", "OPS-BOT"]).run());
    assert_eq!(self_approval["class"], "forbidden", "names compare as before: {self_approval:#}");
    let approved = server.cli("approve").args([&id, "--json", "--user", "oscar"]).run().json();
    assert_eq!(approved["approvals"].as_u64(), Some(1), "{approved:#}");
    let shown = server.cli("show").args([&id, "--json"]).run().json();
    assert_eq!(shown["approvals"][0]["by"], "oscar", "{shown:#}");
    assert_eq!(shown["approvals"][0]["via"], "operator-token (X-Ferry-User as claimed, unverified)");
    let deadline = Instant::now() + Duration::from_secs(10);
    let audit = loop {
        let log = server.log();
        if let Some(line) = log.lines().find(|l| l.contains("action=\"approve\"") && l.contains("who=\"oscar\"")) {
            break line.to_string();
        }
        assert!(Instant::now() < deadline, "no audit line for oscar's approval:\n{log}");
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(audit.contains("channel=\"operator-token\"") && audit.contains("verified=false"), "{audit}");
    let bob_audit =
        server.log().lines().find(|l| l.contains("action=\"approve\"") && l.contains("bob-sub")).map(String::from);
    let bob_audit = bob_audit.expect("an audit line for bob's approval");
    assert!(bob_audit.contains("channel=\"oidc\"") && bob_audit.contains("verified=true"), "{bob_audit}");

    // /metrics: for viewers only; a webhook from an unconfigured sender is counted by answer.
    assert_eq!(post(server.port(), "/hooks/generic"), 401);
    assert_eq!(get(server.port(), "/metrics", None).0, 401, "no token, no metrics");
    let (status, text) = get(server.port(), "/metrics", Some(&victor));
    assert_eq!(status, 200, "{text}");
    let samples = parse_prometheus(&text);
    let value = |name: &str, labels: &[(&str, &str)]| -> f64 {
        samples
            .iter()
            .find(|s| s.0 == name && labels.iter().all(|(k, v)| s.1.iter().any(|(sk, sv)| sk == k && sv == v)))
            .unwrap_or_else(|| panic!("no {name} {labels:?} in:\n{text}"))
            .2
    };
    assert!(
        value("ferry_promotion_jobs_total", &[("pipeline", PIPELINE), ("stage", "dev"), ("result", "promoted")]) >= 2.0
    );
    assert!(value("ferry_promotion_jobs_total", &[("stage", "prod"), ("result", "parked")]) >= 2.0);
    let count = value("ferry_promotion_job_duration_seconds_count", &[("pipeline", PIPELINE), ("stage", "dev")]);
    assert_eq!(value("ferry_promotion_job_duration_seconds_bucket", &[("stage", "dev"), ("le", "+Inf")]), count);
    assert_eq!(value("ferry_webhooks_total", &[("sender", "generic"), ("answer", "401")]), 1.0);
    assert_eq!(value("ferry_dead_letters", &[]), 0.0);
    // Every job ran: once the last one is acknowledged, none waits in the queue.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (_, text) = get(server.port(), "/metrics", Some(&victor));
        let depth = parse_prometheus(&text).into_iter().find(|s| s.0 == "ferry_queue_depth").map(|s| s.2);
        if depth == Some(0.0) {
            break;
        }
        assert!(Instant::now() < deadline, "queue depth {depth:?} after 30 s:\n{text}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// A raw HTTP/1.1 request to the server; its status and body.
fn request(port: u16, head: &str) -> (u16, String) {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).expect("connect to ferry serve");
    stream.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    write!(stream, "{head}Host: 127.0.0.1\r\nConnection: close\r\n\r\n").unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    let status = response.split_whitespace().nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
    let body = response.split_once("\r\n\r\n").map(|(_, b)| b.to_string()).unwrap_or_default();
    (status, body)
}

fn get(port: u16, path: &str, token: Option<&str>) -> (u16, String) {
    let auth = token.map(|t| format!("Authorization: Bearer {t}\r\n")).unwrap_or_default();
    request(port, &format!("GET {path} HTTP/1.1\r\n{auth}"))
}

fn post(port: u16, path: &str) -> u16 {
    request(port, &format!("POST {path} HTTP/1.1\r\nContent-Type: application/json\r\nContent-Length: 0\r\n")).0
}

/// `ferry token hash --generate` makes a token whose printed hash the server accepts.
#[test]
fn generated_static_token_is_accepted_by_its_hash() {
    let generated = ferry("token").args(["hash", "--generate"]).run();
    let out = generated.success();
    let token = out.lines().find_map(|l| l.strip_prefix("token: ")).expect("token line").to_string();
    let hash = out.lines().find_map(|l| l.strip_prefix("token_hash: ")).expect("hash line").to_string();
    let again = ferry("token").arg("hash").stdin(&format!("{token}\n")).run();
    assert_eq!(again.success().trim(), hash, "reading the token from stdin gives the same hash");
    let short = ferry("token").arg("hash").stdin("short").run();
    assert!(short.failure().contains("at least 32 characters"), "{}", short.stderr);

    let config = format!(
        "[worker]\nenabled = false\n[registries.\"build.example:5000\"]\n[registries.\"dev.example:5000\"]\n\
         [[pipelines]]\nname = \"shop-api\"\nsource = \"build.example:5000/shop/api\"\n\
         [[pipelines.stages]]\nname = \"dev\"\ntarget = \"dev.example:5000/shop/api\"\n\
         [[identity.users]]\nname = \"robot\"\ntoken_hash = \"{hash}\"\n\
         [[identity.grants]]\nsubject = \"robot\"\nrole = \"viewer\"\n"
    );
    let metrics_port = free_port();
    let metrics_listen = format!("metrics_listen = \"127.0.0.1:{metrics_port}\"");
    let server = FerryServer::start_with_server_keys(free_port(), &metrics_listen, &config, &[], None);
    let status = cli(&server, "status", &token).arg("--json").run();
    assert!(status.json().as_array().is_some(), "{}", status.stderr);
    let error = refused(cli(&server, "status", &format!("{token}x")).arg("--json").run());
    assert_eq!(error["class"], "unauthorized", "{error:#}");
    // Without an operator token there is no break-glass: a viewer cannot redrive.
    let error = refused(cli(&server, "dlq", &token).args(["redrive", "some-job", "--json", "--user", "robot"]).run());
    assert_eq!(error["class"], "forbidden", "{error:#}");

    // server.metrics_listen serves /metrics without a token, and nothing else.
    let (status, text) = get(metrics_port, "/metrics", None);
    assert_eq!(status, 200, "{text}");
    let samples = parse_prometheus(&text);
    assert!(samples.iter().any(|s| s.0 == "ferry_dead_letters" && s.2 == 0.0), "{text}");
    assert_eq!(get(metrics_port, "/api/status", Some(&token)).0, 404, "the metrics listener serves no API");
}

//! Hostile input against the web console and its sign-in, on a real `ferry serve` with real
//! registries and the fake OIDC provider of the test crate: oversized, malformed and hostile
//! sign-in forms, OIDC callbacks that are not this sign-in's (no or tampered state cookie, wrong
//! state, provider errors with markup, replayed codes, expired ID tokens, another audience, a
//! wrong nonce), forged session cookies, markup from webhooks, registries and people shown in a
//! real headless Chromium, and `next` values that try to leave the site. Every refusal is a
//! clear 4xx, starts no session, and echoes nothing unescaped.

mod support;

use std::io::Write as _;
use std::process::Command;

use serde_json::{Value, json};
use support::browser::Browser;
use support::console::{ConsoleWorld, GENERIC_SECRET, PIPELINE, REPO, VERA_TOKEN, WAIT};
use support::registry::free_port;
use support::{FerryServer, ferry};

/// Markup that would set `window.__xss` if it ever became HTML.
const IMG_XSS: &str = "<img src=x onerror=\"window.__xss=1\">";
const SCRIPT_XSS: &str = "<script>window.__xss=2</script>";
/// What the hostile registry answers every manifest request with (an OCI error envelope).
const REGISTRY_XSS: &str = "<svg onload=\"window.__xss=3\"></svg><b>unknown</b>";
/// The pipeline whose source is the hostile registry.
const HOSTILE_PIPELINE: &str = "from-hostile";

/// The console world (tests/support/console.rs) with a hostile registry and eve, whose display
/// name is markup.
struct Setup {
    world: ConsoleWorld,
    _hostile_registry: support::azure::Background,
}

impl std::ops::Deref for Setup {
    type Target = ConsoleWorld;
    fn deref(&self) -> &ConsoleWorld {
        &self.world
    }
}

/// A registry that answers `/v2/` and then refuses everything (400) with markup in its OCI error
/// envelope (code and message), which Ferry passes on in its error text.
fn hostile_registry() -> support::azure::Background {
    use axum::response::IntoResponse as _;
    let app = axum::Router::new().fallback(|uri: axum::http::Uri| async move {
        if uri.path() == "/v2/" {
            return (axum::http::StatusCode::OK, axum::Json(json!({}))).into_response();
        }
        let envelope = json!({ "errors": [{ "code": "<i>DENIED</i>", "message": REGISTRY_XSS }] });
        (axum::http::StatusCode::BAD_REQUEST, axum::Json(envelope)).into_response()
    });
    support::azure::Background::serve(app)
}

/// The console world plus a pipeline whose source is the hostile registry, and eve (a viewer
/// whose display name is markup).
fn start() -> Setup {
    let hostile = hostile_registry();
    let hostile_host = hostile.url().trim_start_matches("http://").to_string();
    let extra = format!(
        r#"
[[identity.grants]]
subject = "eve@127.0.0.1"
role = "viewer"

[[pipelines]]
name = "{HOSTILE_PIPELINE}"
source = "{hostile_host}/{REPO}"
  [[pipelines.stages]]
  name = "dev"
  target = "{hostile_host}/copy"
"#
    );
    let world = ConsoleWorld::start_with(3600, &[&hostile_host], &extra);
    world.oidc.add_user("eve", IMG_XSS, &["approvers"]);
    Setup { world, _hostile_registry: hostile }
}

/// An HTTP answer as curl saw it (redirects not followed).
#[derive(Debug)]
struct Reply {
    status: u16,
    headers: Vec<(String, String)>,
    body: String,
}

impl Reply {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }

    /// The value a `Set-Cookie` of this answer gives cookie `name`.
    fn set_cookie(&self, name: &str) -> Option<String> {
        self.headers
            .iter()
            .filter(|(n, _)| n.eq_ignore_ascii_case("set-cookie"))
            .filter_map(|(_, v)| v.split(';').next()?.trim().split_once('='))
            .find(|(n, _)| *n == name)
            .map(|(_, v)| v.to_string())
    }

    /// Whether this answer gives the browser a session (a non-empty `ferry_session`).
    fn starts_session(&self) -> bool {
        self.set_cookie("ferry_session").is_some_and(|v| !v.is_empty())
    }

    /// The text of the sign-in page's error.
    fn login_error(&self) -> String {
        let start = self.body.find("id=\"login-error\"").unwrap_or_else(|| panic!("no #login-error in {self:#?}"));
        let rest = &self.body[start..];
        let text = &rest[rest.find('>').unwrap() + 1..];
        text[..text.find("</p>").unwrap()].to_string()
    }
}

/// `method url` with optional `Cookie` header and body (sent as a form, byte for byte).
fn http(method: &str, url: &str, cookie: Option<&str>, body: Option<&[u8]>) -> Reply {
    let dir = tempfile::tempdir().unwrap();
    let mut command = Command::new("curl");
    // No `Expect: 100-continue`: large bodies go straight out, as a hostile client sends them.
    command.args(["-sS", "-i", "-X", method, "-H", "Expect:", "--max-time", "60", url]);
    if let Some(cookie) = cookie {
        command.args(["-H", &format!("Cookie: {cookie}")]);
    }
    if let Some(body) = body {
        let path = dir.path().join("body");
        std::fs::File::create(&path).unwrap().write_all(body).unwrap();
        command.args(["-H", "Content-Type: application/x-www-form-urlencoded"]);
        command.arg("--data-binary").arg(format!("@{}", path.display()));
    }
    let out = command.output().expect("run curl");
    let raw = String::from_utf8_lossy(&out.stdout).to_string();
    let (head, body) = raw
        .split_once("\r\n\r\n")
        .unwrap_or_else(|| panic!("no HTTP answer to {method} {url}: {raw} {}", String::from_utf8_lossy(&out.stderr)));
    let mut lines = head.lines();
    let status = lines.next().and_then(|l| l.split_whitespace().nth(1)).and_then(|s| s.parse().ok()).unwrap_or(0);
    let headers = lines.filter_map(|l| l.split_once(':')).map(|(n, v)| (n.trim().into(), v.trim().into())).collect();
    Reply { status, headers, body: body.to_string() }
}

fn form(pairs: &[(&str, &str)]) -> Vec<u8> {
    url::form_urlencoded::Serializer::new(String::new()).extend_pairs(pairs).finish().into_bytes()
}

/// Asserts that `reply` is a refusal that starts no session and echoes no markup.
fn assert_refused(what: &str, reply: &Reply, status: u16, message: &str) {
    assert_eq!(reply.status, status, "{what}: {reply:#?}");
    assert!(!reply.starts_session(), "{what}: no session: {reply:#?}");
    let error = reply.login_error();
    assert!(error.contains(message), "{what}: the page says {error:?}, expected {message:?}");
    assert_no_markup(what, &reply.body);
}

/// The body holds no markup from the tests' payloads: only the page's own tags.
fn assert_no_markup(what: &str, body: &str) {
    for needle in ["<script", "<img", "onerror=\"", "<svg"] {
        assert!(!body.to_ascii_lowercase().contains(needle), "{what}: {needle} echoed: {body}");
    }
}

impl Setup {
    /// The sign-in form's double-submit token, with its cookie.
    fn login_form(&self) -> (String, String) {
        let page = http("GET", &self.server.url("/login"), None, None);
        assert_eq!(page.status, 200, "{page:#?}");
        let token = page.set_cookie("ferry_login").expect("the sign-in form's cookie");
        (format!("ferry_login={token}"), token)
    }

    /// Posts the token form (with a valid form token) carrying `fields`.
    fn post_token_form(&self, fields: &[(&str, &str)]) -> Reply {
        let (cookie, csrf) = self.login_form();
        let mut all = vec![("csrf", csrf.as_str())];
        all.extend_from_slice(fields);
        http("POST", &self.server.url("/login/token"), Some(&cookie), Some(&form(&all)))
    }

    /// Vera's session cookie (`ferry_session=…`), signed in with her token.
    fn vera_session(&self) -> String {
        let reply = self.post_token_form(&[("token", VERA_TOKEN), ("next", "/")]);
        assert_eq!(reply.status, 303, "{reply:#?}");
        format!("ferry_session={}", reply.set_cookie("ferry_session").expect("a session"))
    }

    /// Starts an OIDC sign-in returning to `next`: the `ferry_oidc` cookie and the provider URL.
    fn begin_oidc(&self, next: &str) -> (String, String) {
        let query: String = url::form_urlencoded::Serializer::new(String::new()).append_pair("next", next).finish();
        let reply = http("GET", &self.server.url(&format!("/login/oidc/0?{query}")), None, None);
        assert_eq!(reply.status, 303, "{reply:#?}");
        let cookie = reply.set_cookie("ferry_oidc").expect("the sign-in's state cookie");
        (format!("ferry_oidc={cookie}"), reply.header("location").expect("to the provider").to_string())
    }

    /// Signs `username` in at the provider's page: the callback URL it sends the browser to.
    fn authorize(&self, authorize_url: &str, username: &str) -> String {
        let url = url::Url::parse(authorize_url).unwrap();
        let mut fields: Vec<(String, String)> = url.query_pairs().into_owned().collect();
        fields.push(("username".into(), username.into()));
        let body = url::form_urlencoded::Serializer::new(String::new()).extend_pairs(fields).finish();
        let reply = http("POST", &self.oidc.authorization_endpoint(), None, Some(body.as_bytes()));
        assert_eq!(reply.status, 302, "{reply:#?}");
        reply.header("location").unwrap().to_string()
    }

    /// `username`'s session cookie (`ferry_session=…`) through the OIDC sign-in, and the CSRF
    /// token of the console page it opens.
    fn oidc_session(&self, username: &str) -> (String, String) {
        let (cookie, authorize) = self.begin_oidc("/");
        let reply = http("GET", &self.authorize(&authorize, username), Some(&cookie), None);
        assert_eq!(reply.status, 303, "{reply:#?}");
        let session = format!("ferry_session={}", reply.set_cookie("ferry_session").expect("a session"));
        let page = http("GET", &self.server.url("/"), Some(&session), None);
        assert_eq!(page.status, 200, "{page:#?}");
        let csrf = page.body.split("name=\"ferry-csrf\" content=\"").nth(1).and_then(|v| v.split('"').next());
        (session, csrf.expect("the page's CSRF token").to_string())
    }

    /// The approvals recorded for promotion `id`.
    fn approvals(&self, id: &str) -> usize {
        let shown = self.server.cli("show").args([id, "--json"]).run().json();
        shown["approvals"].as_array().map(Vec::len).unwrap_or_else(|| panic!("approvals of {id}: {shown:#}"))
    }

    /// The callback URL with `state` replaced.
    fn with_state(callback: &str, state: &str) -> String {
        let mut url = url::Url::parse(callback).unwrap();
        let pairs: Vec<(String, String)> = url
            .query_pairs()
            .into_owned()
            .map(|(k, v)| if k == "state" { (k, state.into()) } else { (k, v) })
            .collect();
        url.query_pairs_mut().clear().extend_pairs(pairs);
        url.to_string()
    }

    /// `GET /api/me` with `cookie`.
    fn me(&self, cookie: &str) -> Reply {
        http("GET", &self.server.url("/api/me"), Some(cookie), None)
    }

    /// Waits until the newest promotion into `stage` succeeded with `digest`.
    fn wait_for_stage(&self, stage: &str, digest: &str) {
        self.server.wait_until(&format!("{stage} to run {digest}"), WAIT, || {
            let history = self.server.cli("history").args([PIPELINE, stage, "--json"]).run().json();
            (history[0]["digest"] == digest && history[0]["state"] == "succeeded").then_some(())
        });
    }

    /// Alice promotes `tag` to prod, where it waits for approval: the promotion's id.
    fn park_in_prod(&self, tag: &str) -> String {
        let alice = self.oidc.token("alice", "Alice Admin", &[]);
        let parked = ferry("promote")
            .args(["--server", &self.server.url(""), "--token", &alice])
            .args([PIPELINE, tag, "--to", "prod", "--wait", "--json", "--user", "alice"])
            .timeout(WAIT)
            .run()
            .json();
        assert_eq!(parked["outcome"]["state"], "parked", "{parked:#}");
        parked["outcome"]["promotion"].as_str().unwrap().to_string()
    }
}

/// Percent-encodes every byte (for query strings with control characters and the like).
fn urlencode(text: &str) -> String {
    text.bytes().map(|b| format!("%{b:02X}")).collect()
}

/// The sign-in form refuses oversized, malformed, incomplete and hostile posts with a clear
/// 4xx page, never starts a session for them, and echoes no markup; Ferry keeps serving.
#[test]
fn the_token_form_refuses_hostile_posts_with_a_clear_page() {
    let setup = start();
    let server = &setup.server;

    // Bigger than server.body_limit (1 MiB): 413, not a crash.
    let (cookie, csrf) = setup.login_form();
    let mut huge = format!("csrf={csrf}&token=").into_bytes();
    huge.resize(huge.len() + (3 << 20), b'a');
    let reply = http("POST", &server.url("/login/token"), Some(&cookie), Some(&huge));
    assert_refused("a 3 MiB form", &reply, 413, "too large");
    let reply = http("POST", &server.url("/logout"), Some(&cookie), Some(&huge));
    assert_eq!(reply.status, 413, "sign-out too: {reply:#?}");
    assert!(reply.body.contains("too large") && !reply.starts_session(), "{reply:#?}");
    // A 100 kB token: no token is that long.
    let long = "a".repeat(100_000);
    assert_refused("a 100 kB token", &setup.post_token_form(&[("token", &long)]), 413, "too large");

    // Not UTF-8, and broken percent-encoding: an unknown token, not a crash.
    let (cookie, csrf) = setup.login_form();
    let mut bytes = format!("csrf={csrf}&token=").into_bytes();
    bytes.extend_from_slice(b"\xff\xfe%ff%fe\x00&next=%ff%c3");
    let reply = http("POST", &server.url("/login/token"), Some(&cookie), Some(&bytes));
    assert_refused("a non-UTF-8 token", &reply, 401, "Unknown token");
    let (cookie, csrf) = setup.login_form();
    let body = format!("csrf={csrf}&token=%zz%&&==&%%%&next=%");
    let reply = http("POST", &server.url("/login/token"), Some(&cookie), Some(body.as_bytes()));
    assert_refused("broken percent-encoding", &reply, 401, "Unknown token");

    // Missing fields.
    let reply = http("POST", &server.url("/login/token"), None, Some(b""));
    assert_refused("an empty body", &reply, 403, "another site");
    let (cookie, _) = setup.login_form();
    let reply =
        http("POST", &server.url("/login/token"), Some(&cookie), Some(format!("token={VERA_TOKEN}").as_bytes()));
    assert_refused("no form token", &reply, 403, "another site");
    assert_refused("no token", &setup.post_token_form(&[]), 400, "Paste your personal token");
    assert_refused("a blank token", &setup.post_token_form(&[("token", " \t\r\n ")]), 400, "Paste your personal token");

    // Markup and control characters in `token` and `next`.
    for (token, next) in [
        (format!("{SCRIPT_XSS}{IMG_XSS}"), format!("/{SCRIPT_XSS}")),
        ("eyJhbGciOiJub25lIn0.<script>alert(1)</script>.x".to_string(), format!("\u{7}/\r\n{IMG_XSS}")),
        (format!("\u{1b}[31m\r\n{SCRIPT_XSS}"), "/\"><script>alert(1)</script>".to_string()),
    ] {
        let reply = setup.post_token_form(&[("token", &token), ("next", &next)]);
        assert!(matches!(reply.status, 400 | 401), "{token:?}: {reply:#?}");
        assert_refused(&format!("token {token:?}"), &reply, reply.status, "");
        assert!(!reply.login_error().is_empty(), "{token:?}: a message");
    }
    // A valid token with markup in `next` signs in and stays on this site.
    let reply = setup.post_token_form(&[("token", VERA_TOKEN), ("next", "/\"><script>x</script>")]);
    assert_eq!(reply.status, 303, "{reply:#?}");
    let location = reply.header("location").unwrap();
    assert!(location.starts_with('/') && !location.starts_with("//"), "{location}");
    assert!(!location.contains('<') && !location.contains('"'), "the redirect carries no raw markup: {location}");

    let health = http("GET", &server.url("/healthz"), None, None);
    assert_eq!(health.status, 200, "Ferry still serves: {health:#?}");
}

/// OIDC callbacks that do not belong to a sign-in started here are refused: no or a tampered
/// state cookie, a session sealed for another purpose, a wrong `state`, the provider's error
/// (its description shown escaped), a replayed code, and ID tokens that are expired, for
/// another client or with another sign-in's nonce.
#[test]
fn oidc_callbacks_that_are_not_this_sign_ins_are_refused() {
    let setup = start();
    let (oidc_cookie, authorize) = setup.begin_oidc("/dead-letters");
    let callback = setup.authorize(&authorize, "alice");
    assert_eq!(setup.oidc.codes_issued(), 1);

    let not_started = "was not started here";
    let tampered = {
        let (name, value) = oidc_cookie.split_once('=').unwrap();
        let mut bytes = value.as_bytes().to_vec();
        bytes[5] = if bytes[5] == b'A' { b'B' } else { b'A' };
        format!("{name}={}", String::from_utf8(bytes).unwrap())
    };
    let session_as_oidc = format!("ferry_oidc={}", setup.vera_session().trim_start_matches("ferry_session="));
    for (what, cookie) in [
        ("no cookie", None),
        ("a tampered cookie", Some(tampered.as_str())),
        ("a truncated cookie", Some(&oidc_cookie[..oidc_cookie.len() - 3])),
        ("a session cookie as the state cookie", Some(session_as_oidc.as_str())),
        ("garbage", Some("ferry_oidc=%%%...%00")),
    ] {
        assert_refused(what, &http("GET", &callback, cookie, None), 400, not_started);
    }
    let reply = http("GET", &Setup::with_state(&callback, "someone-elses-state"), Some(&oidc_cookie), None);
    assert_refused("a wrong state", &reply, 400, "does not belong to this sign-in");
    assert_eq!(setup.oidc.tokens_issued() + setup.oidc.token_refusals(), 0, "no code was redeemed so far");

    // The provider's error, with markup in its description: shown, escaped.
    let error = format!(
        "{}/login/callback?error=access_denied&error_description={}&state=x",
        setup.server.url(""),
        urlencode(&format!("{SCRIPT_XSS} {IMG_XSS}"))
    );
    let reply = http("GET", &error, Some(&oidc_cookie), None);
    assert_refused("the provider's error", &reply, 401, "The identity provider said: access_denied");
    assert!(reply.login_error().contains("&lt;script&gt;window.__xss=2&lt;/script&gt;"), "{}", reply.login_error());

    // The real answer signs in once; the same callback again is refused by the provider.
    let reply = http("GET", &callback, Some(&oidc_cookie), None);
    assert_eq!(reply.status, 303, "{reply:#?}");
    assert_eq!(reply.header("location"), Some("/dead-letters"));
    assert!(reply.starts_session());
    let session = format!("ferry_session={}", reply.set_cookie("ferry_session").unwrap());
    assert_eq!(setup.me(&session).status, 200);
    let replay = http("GET", &callback, Some(&oidc_cookie), None);
    assert_refused("a replayed callback", &replay, 401, "already used code");
    assert_eq!((setup.oidc.tokens_issued(), setup.oidc.token_refusals()), (1, 1), "the code was good once");

    // ID tokens the provider should not have issued (30 s leeway on `exp`: an hour ago).
    let now = support::oidc::now_s();
    for (what, claims, message) in [
        ("an expired ID token", json!({ "iat": now - 7200, "nbf": now - 7200, "exp": now - 3600 }), "expired"),
        ("an ID token for another client", json!({ "aud": "someone-else" }), "aud"),
        ("another sign-in's nonce", json!({ "nonce": "another-sign-ins-nonce" }), "nonce"),
        ("no nonce", json!({ "nonce": null }), "nonce"),
        ("another issuer", json!({ "iss": "https://evil.example" }), "iss"),
        ("an ID token not yet valid", json!({ "nbf": now + 3600 }), "not yet valid"),
    ] {
        let (cookie, authorize) = setup.begin_oidc("/");
        let callback = setup.authorize(&authorize, "alice");
        setup.oidc.override_next_id_token(claims);
        let reply = http("GET", &callback, Some(&cookie), None);
        assert_refused(what, &reply, 401, "Sign-in refused");
        assert!(reply.login_error().contains(message), "{what}: {}", reply.login_error());
    }

    // An identity provider sending hundreds of groups: the session would not fit in a cookie.
    let groups: Vec<String> = (0..400).map(|i| format!("team-{i:04}-<b>")).collect();
    setup.oidc.add_user("mallory", "Mallory", &groups.iter().map(String::as_str).collect::<Vec<_>>());
    let (cookie, authorize) = setup.begin_oidc("/");
    let reply = http("GET", &setup.authorize(&authorize, "mallory"), Some(&cookie), None);
    assert_refused("400 groups", &reply, 400, "would not fit in a cookie");
    assert!(!reply.body.contains("<b>"), "group names are not echoed as markup");
    assert!(!setup.server.log().contains("panicked"), "{}", setup.server.log());
}

/// Forged session cookies are refused with 401 by the API and sent to the sign-in page by the
/// console's pages; never a 500, and an approval with one (and the genuine CSRF token) counts
/// nothing.
#[test]
fn forged_session_cookies_are_refused_never_a_server_error() {
    let setup = start();
    let digest = setup.source.push_image(REPO, "1.0", &[10_000]);
    setup.server.cli("promote").args([PIPELINE, "1.0", "--to", "dev", "--wait", "--user", "ops"]).run().success();
    setup.wait_for_stage("dev", &digest);
    let waiting = setup.park_in_prod("1.0");
    // Eve approves prod: her genuine session, and forgeries of it.
    let (valid, csrf) = setup.oidc_session("eve");
    assert_eq!(setup.me(&valid).status, 200, "the genuine cookie works");
    let value = valid.trim_start_matches("ferry_session=").to_string();
    let (body, tag) = value.split_once('.').unwrap();
    let flip = |text: &str, at: usize| {
        let mut bytes = text.as_bytes().to_vec();
        bytes[at] ^= 0x01;
        String::from_utf8_lossy(&bytes).to_string()
    };
    let (oidc_cookie, _) = setup.begin_oidc("/");
    let oidc_value = oidc_cookie.trim_start_matches("ferry_oidc=").to_string();
    let forged: Vec<(&str, String)> = vec![
        ("truncated", format!("ferry_session={}", &value[..value.len() - 4])),
        ("without its tag", format!("ferry_session={body}")),
        ("with an empty tag", format!("ferry_session={body}.")),
        ("a bit flipped in the body", format!("ferry_session={}.{tag}", flip(body, 10))),
        ("a bit flipped in the tag", format!("ferry_session={body}.{}", flip(tag, 3))),
        ("base64 garbage", "ferry_session=!!!***.@@@###".into()),
        (
            "unsigned JSON",
            format!(
                "ferry_session={}.AAAA",
                support::base64(br#"{"sub":"admin","via":"oidc","exp":9999999999,"csrf":"x"}"#)
            ),
        ),
        ("8 kB", format!("ferry_session={}.{}", "A".repeat(8192), tag)),
        ("sealed for the OIDC sign-in", format!("ferry_session={oidc_value}")),
        ("empty", "ferry_session=".into()),
        ("a forged one before the genuine one", format!("ferry_session=e30.AAAA; {valid}")),
        ("the genuine one before a forged one", format!("{valid}; ferry_session=e30.AAAA")),
    ];
    for (what, cookie) in &forged {
        let me = setup.me(cookie);
        assert_eq!(me.status, 401, "{what}: {me:#?}");
        let error: Value = serde_json::from_str(&me.body).unwrap_or_else(|_| panic!("{what}: JSON: {me:#?}"));
        let message = error["error"].as_str().unwrap_or_default();
        assert!(message.contains("sign in again") || message.contains("not signed in"), "{what}: {message}");
        let approve = http_with_csrf(&setup.server.url(&format!("/api/promotions/{waiting}/approve")), cookie, &csrf);
        assert_eq!(approve.status, 401, "{what}: {approve:#?}");
        let page = http("GET", &setup.server.url("/dead-letters"), Some(cookie), None);
        assert_eq!(page.status, 303, "{what}: {page:#?}");
        assert_eq!(page.header("location"), Some("/login?next=%2Fdead-letters"), "{what}");
    }
    assert_eq!(setup.approvals(&waiting), 0, "no forged cookie approved anything");
    // The genuine cookie with the same request approves: the refusals above were the cookies'.
    let approve = http_with_csrf(&setup.server.url(&format!("/api/promotions/{waiting}/approve")), &valid, &csrf);
    assert_eq!(approve.status, 200, "{approve:#?}");
    assert_eq!(setup.approvals(&waiting), 1);
    assert!(!setup.server.log().contains("panicked"), "{}", setup.server.log());
}

/// `POST url` as the console's script sends it: the cookie and the `X-Ferry-CSRF` header.
fn http_with_csrf(url: &str, cookie: &str, csrf: &str) -> Reply {
    let out = Command::new("curl")
        .args(["-sS", "-i", "-X", "POST", url, "-H", &format!("Cookie: {cookie}")])
        .args(["-H", &format!("X-Ferry-CSRF: {csrf}"), "-H", "Content-Type: application/json", "--data-binary", "{}"])
        .output()
        .expect("run curl");
    let raw = String::from_utf8_lossy(&out.stdout).to_string();
    let (head, body) = raw.split_once("\r\n\r\n").unwrap_or_else(|| panic!("no HTTP answer from {url}: {raw}"));
    let status = head.split_whitespace().nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
    Reply { status, headers: Vec::new(), body: body.to_string() }
}

/// Markup in text the console shows — a build number from a webhook, a reject reason (the
/// promotion's error), a display name from the identity provider — appears literally as text in
/// a real Chromium, and nothing is injected or run.
#[test]
fn markup_from_webhooks_and_people_is_shown_as_text() {
    let setup = start();
    let build = format!("{IMG_XSS}{SCRIPT_XSS}");
    let digest = setup.source.push_image(REPO, "1.0", &[20_000]);
    let (status, answer) = setup.server.post_generic(
        GENERIC_SECRET,
        &json!({ "repository": format!("{}/{REPO}", setup.source.host()), "tag": "1.0", "build": build }),
    );
    assert_eq!(status, 202, "{answer:#}");
    setup.wait_for_stage("dev", &digest);
    let approved = setup.park_in_prod("1.0");

    let browser = Browser::start();
    let no_injection = |page: &str| {
        let found = browser.script(
            "return [document.querySelectorAll('img, svg, iframe, object').length, \
             document.querySelectorAll('script').length, typeof window.__xss]",
            vec![],
        );
        assert_eq!(found, json!([0, 1, "undefined"]), "{page}: nothing injected, only app.js runs");
    };
    browser.goto(&setup.server.url("/"));
    browser.wait_for("#sign-in-0", WAIT).click();
    browser.wait_for("#username", WAIT).fill("eve");
    browser.click("#sign-in");
    let who = browser.wait_for_text("#who", "eve@127.0.0.1", WAIT);
    assert_eq!(who, format!("{IMG_XSS} (eve@127.0.0.1)"), "the display name as text");

    // The build number, in the environments grid.
    browser.wait_for_text(".stage[data-stage=dev] dl", &build, WAIT);
    no_injection("environments");

    // Eve approves 1.0 in the console: her display name is in the approval, as text.
    let approve = format!(".stage[data-stage=prod] .pending[data-promotion='{approved}'] button.approve");
    browser.wait_for(&approve, WAIT).click();
    browser.wait_for_text("#flash", &format!("Approved {approved}"), WAIT);
    no_injection("environments after the approval");

    // 2.0 goes to dev and waits for prod, where the operator rejects it with markup as reason.
    let second = setup.source.push_image(REPO, "2.0", &[20_001]);
    let alice = setup.oidc.token("alice", "Alice Admin", &[]);
    let promoted = ferry("promote")
        .args(["--server", &setup.server.url(""), "--token", &alice])
        .args([PIPELINE, "2.0", "--to", "dev", "--wait", "--json", "--user", "alice"])
        .timeout(WAIT)
        .run()
        .json();
    assert_eq!(promoted["outcome"]["state"], "promoted", "{promoted:#}");
    setup.wait_for_stage("dev", &second);
    let rejected = setup.park_in_prod("2.0");
    let reason = format!("{SCRIPT_XSS} & {IMG_XSS}");
    setup.server.cli("reject").args([&rejected, "--reason", &reason, "--user", "ops"]).run().success();

    browser.goto(&setup.server.url(&format!("/promotions/{approved}")));
    let facts = browser.wait_for_text("#promotion", "via oidc", WAIT);
    assert!(facts.contains(&format!("eve@127.0.0.1 via oidc ({IMG_XSS})")), "{facts}");
    no_injection("the approved promotion");

    // The reject reason, in the history's error column and on the promotion's page; the
    // build number in dev's row.
    browser.goto(&setup.server.url(&format!("/pipelines/{PIPELINE}")));
    let row = browser.wait_for(&format!("table.history tr[data-promotion='{rejected}']"), WAIT).text();
    assert!(row.contains(&reason), "the reason as text: {row}");
    let rows: Vec<String> = browser.find_all("table.history tbody tr").iter().map(|r| r.text()).collect();
    assert!(rows.iter().any(|r| r.contains(&build)), "the build number as text: {rows:#?}");
    no_injection("history");
    browser.goto(&setup.server.url(&format!("/promotions/{rejected}")));
    let facts = browser.wait_for_text("#promotion", "rejected by", WAIT);
    assert!(facts.contains(&reason), "{facts}");
    no_injection("the rejected promotion");

    // The registry's error, in the dead letters.
    let failed =
        setup.server.cli("promote").args([HOSTILE_PIPELINE, "1.0", "--to", "dev", "--wait", "--user", "ops"]).run();
    assert!(!failed.status.success(), "{}", failed.stdout);
    browser.goto(&setup.server.url("/dead-letters"));
    let error = browser.wait_for_text("table.dead-letters .error-text", "DENIED", WAIT);
    assert!(error.contains(&format!("<i>DENIED</i> ({REGISTRY_XSS})")), "the registry's words as text: {error}");
    no_injection("dead letters");
    browser.screenshot("hostile-text");

    // The provider's error description on the sign-in page, in the browser too.
    browser.delete_all_cookies();
    browser.goto(&setup.server.url("/login/oidc/0"));
    browser.wait_for("#username", WAIT);
    let error = format!(
        "/login/callback?error=access_denied&error_description={}",
        urlencode(&format!("{SCRIPT_XSS}{IMG_XSS}"))
    );
    browser.goto(&setup.server.url(&error));
    let shown = browser.wait_for_text("#login-error", "access_denied", WAIT);
    assert!(shown.contains(&format!("{SCRIPT_XSS}{IMG_XSS}")), "{shown}");
    let found = browser.script("return [document.querySelectorAll('img, script').length, typeof window.__xss]", vec![]);
    assert_eq!(found, json!([0, "undefined"]), "the sign-in page runs nothing");
}

/// `next` values that point elsewhere never produce a `Location` off this site, through the
/// sign-in page, the token form and the OIDC sign-in.
#[test]
fn hostile_return_paths_stay_on_this_site() {
    let setup = start();
    let base = url::Url::parse(&setup.server.url("/")).unwrap();
    let stays = |what: &str, location: Option<&str>| {
        let location = location.unwrap_or_else(|| panic!("{what}: a Location"));
        let to = base.join(location).unwrap_or_else(|e| panic!("{what}: {location:?}: {e}"));
        assert_eq!((to.host_str(), to.port()), (base.host_str(), base.port()), "{what}: {location:?} leaves");
        assert!(location.starts_with('/') && !location.starts_with("//"), "{what}: {location:?}");
    };
    for next in [
        "//evil.example/",
        "/\\evil.example",
        "\\/evil.example",
        "https://evil.example/",
        "http:evil.example",
        "javascript:alert(1)",
        "%2F%2Fevil.example",
        "/%2F/evil.example",
        "/\t/evil.example",
        "\t//evil.example",
        "/\n/evil.example",
        " //evil.example",
        "/\r\nLocation: https://evil.example/",
        "/.//evil.example",
        "/\u{3000}/evil.example",
        "/é",
    ] {
        let what = format!("next {next:?}");
        // The sign-in page keeps only a local path in its form and links.
        let page = http("GET", &setup.server.url(&format!("/login?next={}", urlencode(next))), None, None);
        assert_eq!(page.status, 200, "{what}: {page:#?}");
        let kept = page.body.split("name=\"next\" value=\"").nth(1).and_then(|v| v.split('"').next());
        stays(&format!("sign-in page, {what}"), kept);
        // The token form.
        let reply = setup.post_token_form(&[("token", VERA_TOKEN), ("next", next)]);
        assert_eq!(reply.status, 303, "{what}: {reply:#?}");
        stays(&format!("token sign-in, {what}"), reply.header("location"));
        // OIDC: the return path rides in the sealed state cookie.
        let (cookie, authorize) = setup.begin_oidc(next);
        let callback = setup.authorize(&authorize, "alice");
        let reply = http("GET", &callback, Some(&cookie), None);
        assert_eq!(reply.status, 303, "{what}: {reply:#?}");
        assert!(reply.starts_session(), "{what}");
        stays(&format!("OIDC sign-in, {what}"), reply.header("location"));
    }

    // A 10 kB return path would make the sign-in's state cookie more than a browser keeps
    // (4 kB): the sign-in would then fail as "not started here". It is dropped instead.
    let long = format!("/promotions/{}", "p".repeat(10_000));
    let page = http("GET", &setup.server.url(&format!("/login?next={long}")), None, None);
    assert!(page.body.contains(r#"name="next" value="/""#), "{}", &page.body[..page.body.len().min(2000)]);
    let (cookie, authorize) = setup.begin_oidc(&long);
    assert!(cookie.len() < 4000, "the state cookie fits a browser: {} bytes", cookie.len());
    let reply = http("GET", &setup.authorize(&authorize, "alice"), Some(&cookie), None);
    assert_eq!((reply.status, reply.header("location")), (303, Some("/")), "{reply:#?}");
}

/// `server.body_limit` bounds the operations API and the sign-in forms too: with 16 KiB, a
/// 100 kB promote request and a 20 kB sign-in form (under the forms' own 64 KiB) are 413, and
/// nothing is queued.
#[test]
fn the_api_and_the_forms_obey_server_body_limit() {
    let sam_hash = ferry("token").arg("hash").stdin(SMALL_LIMIT_TOKEN).run().success().trim().to_string();
    let config = format!(
        "[registries.\"127.0.0.1:5001\"]\nplain_http = true\n\n[[identity.users]]\nname = \"sam\"\n\
         token_hash = \"{sam_hash}\"\n[[identity.grants]]\nsubject = \"sam\"\nrole = \"operator\"\n\n\
         [[pipelines]]\nname = \"shop-api\"\nsource = \"127.0.0.1:5001/shop/api\"\n  [[pipelines.stages]]\n  \
         name = \"dev\"\n  target = \"127.0.0.1:5001/shop/dev\"\n"
    );
    let server = FerryServer::start_with_server_keys(free_port(), "body_limit = 16384", &config, &[], None);
    let big =
        format!(r#"{{"pipeline": "shop-api", "reference": "1.0", "to": "dev", "pad": "{}"}}"#, "x".repeat(100_000));
    let out = Command::new("curl")
        .args(["-sS", "-o", "/dev/null", "-w", "%{http_code}", "-H", "Expect:", "-X", "POST"])
        .args(["-H", &format!("Authorization: Bearer {SMALL_LIMIT_TOKEN}"), "-H", "Content-Type: application/json"])
        .args(["--data-binary", &big, &server.url("/api/promote")])
        .output()
        .expect("run curl");
    assert_eq!(String::from_utf8_lossy(&out.stdout), "413", "{}", String::from_utf8_lossy(&out.stderr));
    let reply = http("POST", &server.url("/login/token"), None, Some(&form(&[("token", &"t".repeat(20_000))])));
    assert_eq!(reply.status, 413, "{reply:#?}");
    assert!(reply.login_error().contains("over 16 KiB"), "{reply:#?}");
    assert!(!reply.starts_session());
    let history = ferry("history")
        .args(["shop-api", "--json", "--server", &server.url(""), "--token", SMALL_LIMIT_TOKEN])
        .run()
        .json();
    assert_eq!(history, json!([]), "nothing was promoted");
}

const SMALL_LIMIT_TOKEN: &str = "console-hostile-small-limit-token-0123456789";

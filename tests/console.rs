//! The web console in a real headless Chromium (`support::browser`), against `ferry serve` with
//! real registries and the fake OIDC provider of the test crate (discovery, JWKS, authorize and
//! token endpoints, real signed JWTs): sign-in through authorization code + PKCE or a pasted
//! personal token, a waiting promotion approved by a second person, the self-approval refusal,
//! a viewer without buttons whom the API refuses too, CSRF refusals and session expiry.
//! Screenshots of the main pages go to `target/artifacts/console/` (README links copies).

mod support;

use std::process::Command;
use std::time::Duration;

use serde_json::Value;
use support::browser::Browser;
use support::console::{ConsoleWorld, GENERIC_SECRET, OPERATOR_TOKEN, PIPELINE, REPO, VERA_TOKEN, WAIT};

/// `curl` against the console as a browser would (a cookie, optional headers, a body): status
/// and body.
fn curl(method: &str, url: &str, cookie: Option<&str>, headers: &[(&str, &str)], body: Option<&str>) -> (u16, String) {
    let mut command = Command::new("curl");
    command.args(["-sS", "-o", "-", "-w", "\n%{http_code}", "-X", method, url]);
    if let Some(cookie) = cookie {
        command.args(["-H", &format!("Cookie: {cookie}")]);
    }
    for (name, value) in headers {
        command.args(["-H", &format!("{name}: {value}")]);
    }
    if let Some(body) = body {
        command.args(["--data-binary", body]);
    }
    let out = command.output().expect("run curl");
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let (body, status) = text.rsplit_once('\n').unwrap_or(("", "0"));
    (status.trim().parse().unwrap_or(0), body.to_string())
}

fn session_cookie(browser: &Browser) -> String {
    let cookie = browser.cookie("ferry_session").expect("a session cookie after sign-in");
    format!("ferry_session={}", cookie.value)
}

/// The CSRF token the console page carries for its session.
fn page_csrf(browser: &Browser) -> String {
    browser.find("meta[name=ferry-csrf]").attr("content").expect("the page's CSRF token")
}

fn approve_button(id: &str) -> String {
    format!(".stage[data-stage=prod] .pending[data-promotion='{id}'] button.approve")
}

/// The whole approval in the browser: alice signs in through OIDC (code + PKCE), sees the
/// waiting promotion, is refused approving her own; bob signs in, approves it, and prod changes
/// on the page without a reload. The ledger records bob's authenticated subject.
#[test]
fn a_second_person_approves_in_the_console_and_prod_changes() {
    let setup = ConsoleWorld::start(3600);
    let (digest, id) = setup.promote_to_waiting("1.0");
    let browser = Browser::start();

    // Not signed in: any console page sends to the sign-in page, and back after it.
    browser.goto(&setup.server.url(&format!("/promotions/{id}")));
    browser.wait_for("#sign-in-0", WAIT);
    assert!(browser.current_url().contains("/login?next=%2Fpromotions%2F"), "{}", browser.current_url());
    browser.screenshot("login");
    setup.sign_in_oidc(&browser, "/", "alice");
    assert_eq!(setup.oidc.tokens_issued(), 1, "one code redeemed");
    let cookie = browser.cookie("ferry_session").unwrap();
    assert!(cookie.http_only, "{cookie:?}");
    assert!(!cookie.secure, "plain HTTP on 127.0.0.1 is the one place without Secure: {cookie:?}");
    assert_eq!(cookie.same_site.as_deref(), Some("Lax"), "{cookie:?}");
    assert_eq!(browser.script("return document.cookie", vec![]), Value::from(""), "no cookie is readable by script");

    // The grid: dev runs the digest, prod waits with the gate's words and buttons.
    let dev_digest = ".stage[data-stage=dev] .current-digest";
    browser.wait_for(dev_digest, WAIT);
    assert_eq!(browser.find(dev_digest).attr("data-digest").as_deref(), Some(digest.as_str()));
    assert_eq!(browser.text_of(dev_digest), digest.trim_start_matches("sha256:")[..12]);
    let deployed = browser.wait_for_text(".stage[data-stage=dev] .deploy-ok", "succeeded (notifier", WAIT);
    assert!(deployed.contains("ago"), "{deployed}");
    // Prod tells nobody: its deploy state says so once it runs something (checked below).
    let pending = format!(".stage[data-stage=prod] .pending[data-promotion='{id}']");
    let waiting = browser.wait_for_text(&format!("{pending} .waiting"), "waiting for approval (0 of 1)", WAIT);
    assert!(waiting.contains(&id), "{waiting}");
    assert!(browser.text_of(&pending).contains("promoted by alice@127.0.0.1"));
    browser.screenshot("environments-waiting");

    // Alice started it: the API refuses her approval by subject, and the page says so.
    browser.click(&approve_button(&id));
    let refusal = browser.wait_for_text("#flash.error", "refused", WAIT);
    assert!(refusal.contains("triggered") && refusal.contains("cannot approve it"), "{refusal}");
    browser.screenshot("self-approval-refused");

    // Alice signs out; bob signs in (the provider asks again) and approves.
    browser.click("#sign-out");
    browser.wait_for_text("#notice", "signed out", WAIT);
    assert!(browser.cookie("ferry_session").is_none_or(|c| c.value.is_empty()), "the session cookie is cleared");
    setup.sign_in_oidc(&browser, &format!("/promotions/{id}"), "bob");
    assert!(browser.current_url().ends_with(&format!("/promotions/{id}")), "back where he started");
    browser.wait_for_text("#waiting", "waiting for approval", WAIT);
    browser.screenshot("promotion-waiting");
    browser.goto(&setup.server.url("/"));
    browser.wait_for(&approve_button(&id), WAIT).click();
    browser.wait_for_text("#flash", &format!("Approved {id}"), WAIT);

    // Prod changes on the page by itself (live refresh), and in the registry.
    let prod_digest = ".stage[data-stage=prod] .current-digest";
    setup.server.wait_until("prod to show the digest on the page", WAIT, || {
        browser.try_find(prod_digest).and_then(|e| e.attr("data-digest")).filter(|d| d == &digest)
    });
    browser.wait_for_text(".stage[data-stage=prod] dl", "no notifier", WAIT);
    let by = browser.text_of(".stage[data-stage=prod] .by");
    assert!(by.contains("promoted by alice@127.0.0.1") && by.contains("approved by bob@127.0.0.1"), "{by}");
    let served = setup.prod.client().manifest(REPO, "1.0").expect("prod serves the tag");
    assert_eq!(served.computed_digest(), digest, "prod runs the approved digest");
    browser.screenshot("environments");

    // The ledger records the authenticated subject and the channel.
    let shown = setup.server.cli("show").args([&id, "--json"]).run().json();
    let approval = &shown["approvals"][0];
    assert_eq!(approval["by"], "bob@127.0.0.1", "{shown:#}");
    assert_eq!(approval["via"], "oidc (Bob Builder)", "{shown:#}");
    assert!(setup.server.log().contains("console sign-in"), "sign-ins are in the audit log");

    // History and the promotion's page.
    browser.goto(&setup.server.url(&format!("/pipelines/{PIPELINE}")));
    browser.wait_for(&format!("table.history tr[data-promotion='{id}']"), WAIT);
    browser.screenshot("history");
    browser.goto(&setup.server.url(&format!("/promotions/{id}")));
    browser.wait_for_text("#view h1", "succeeded", WAIT);
    assert!(browser.text_of("#promotion").contains("bob@127.0.0.1 via oidc (Bob Builder)"));
    browser.screenshot("promotion");
}

/// A rollback asks for confirmation naming the digest it goes back to; a rejection carries its
/// reason (shown as text); a dead letter is shown with its error and redriven from the page.
#[test]
fn rollback_confirms_its_target_rejections_carry_a_reason_and_dead_letters_are_redriven() {
    let setup = ConsoleWorld::start(3600);
    let first = setup.source.push_image(REPO, "1.0", &[30_000]);
    let second = setup.source.push_image(REPO, "2.0", &[30_001]);
    let operator =
        |args: &[&str]| setup.server.cli("promote").args(args).args(["--wait", "--json", "--user", "ops"]).run().json();
    // 1.0 arrives from CI with its build number; 2.0 is promoted by hand.
    let repository = format!("{}/{REPO}", setup.source.host());
    let (status, answer) = setup
        .server
        .post_generic(GENERIC_SECRET, &serde_json::json!({ "repository": repository, "tag": "1.0", "build": "4711" }));
    assert_eq!(status, 202, "{answer:#}");
    setup.server.wait_until("1.0 in dev", WAIT, || {
        let status = setup.server.cli("status").arg("--json").run().json();
        (status[0]["stages"][0]["current"]["digest"] == first.as_str()).then_some(())
    });
    assert_eq!(operator(&[PIPELINE, "2.0", "--to", "dev"])["outcome"]["state"], "promoted");
    // The operator token names nobody: without --user the server asks who is acting.
    let anonymous = setup.server.cli("promote").args([PIPELINE, "2.0", "--to", "dev", "--json"]).run();
    assert!(!anonymous.status.success(), "{}", anonymous.stdout);
    let answer: Value = serde_json::from_str(&anonymous.stdout).unwrap_or_default();
    let error = answer["error"]["message"].as_str().unwrap_or_default().to_string();
    assert!(error.contains("the operator token names nobody") && error.contains("--user"), "{error}");
    // A tag the source does not have ends in the dead letters.
    let missing =
        setup.server.cli("promote").args([PIPELINE, "9.9", "--to", "dev", "--wait", "--json", "--user", "ops"]).run();
    assert!(!missing.status.success(), "{}", missing.stdout);

    let browser = Browser::start();
    setup.sign_in_oidc(&browser, "/", "alice");
    let dev_digest = ".stage[data-stage=dev] .current-digest";
    browser.wait_for(dev_digest, WAIT);
    assert_eq!(browser.find(dev_digest).attr("data-digest").as_deref(), Some(second.as_str()));

    // Cancel first: nothing happens.
    browser.click(".stage[data-stage=dev] button.rollback");
    let text = browser.wait_for_text("#confirm-text", &first, WAIT);
    assert!(text.contains("1.0"), "the confirmation names the digest and tag it goes back to: {text}");
    assert!(browser.text_of("#confirm-ok").contains(&first.trim_start_matches("sha256:")[..12]));
    browser.screenshot("rollback-confirmation");
    browser.click("#confirm-cancel");
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(browser.find(dev_digest).attr("data-digest").as_deref(), Some(second.as_str()), "cancelled");
    browser.click(".stage[data-stage=dev] button.rollback");
    browser.wait_for_text("#confirm-text", &first, WAIT);
    browser.click("#confirm-ok");
    browser.wait_for_text("#flash", "Rolled dev back", WAIT);
    setup.server.wait_until("dev to show the rolled-back digest", WAIT, || {
        browser.try_find(dev_digest).and_then(|e| e.attr("data-digest")).filter(|d| d == &first)
    });
    // The stage runs 1.0 again, with the build it came from.
    setup.server.wait_until("the build number of 1.0 on the page", WAIT, || {
        browser.try_find(".stage[data-stage=dev] dl").map(|e| e.text()).filter(|t| t.contains("4711"))
    });
    let history = setup.server.cli("history").args([PIPELINE, "dev", "--json"]).run().json();
    assert_eq!(history[0]["trigger"], "rollback", "{history:#}");
    assert_eq!(history[0]["triggered_by"], "alice@127.0.0.1", "{history:#}");

    // Reject the 2.0 waiting for prod, with a reason (shown as text, never as markup).
    let status = setup.server.cli("status").arg("--json").run().json();
    let waiting = status[0]["stages"][1]["pending"].as_array().unwrap().clone();
    let second_id = waiting.iter().find(|p| p["digest"] == second.as_str()).expect("2.0 waits for prod")["id"]
        .as_str()
        .unwrap()
        .to_string();
    browser.goto(&setup.server.url("/"));
    browser.wait_for(&format!(".pending[data-promotion='{second_id}'] button.reject"), WAIT).click();
    browser.wait_for_text("#confirm-text", "will not be promoted to prod", WAIT);
    browser.fill("#confirm-reason", "<b>not</b> before the audit");
    browser.click("#confirm-ok");
    browser.wait_for_text("#flash", &format!("Rejected {second_id}"), WAIT);
    browser.goto(&setup.server.url(&format!("/promotions/{second_id}")));
    let facts = browser.wait_for_text("#promotion", "rejected by alice@127.0.0.1: <b>not</b> before the audit", WAIT);
    assert!(facts.contains("<b>"), "the reason is text: {facts}");
    assert!(browser.find_all("#promotion b").is_empty(), "no markup from a reason");

    // The dead letter: its error, and Redrive (it fails again, but is queued again first).
    browser.goto(&setup.server.url("/dead-letters"));
    let row = browser.wait_for("table.dead-letters tbody tr", WAIT);
    let row_text = row.text();
    assert!(row_text.contains("9.9") && row_text.contains(PIPELINE), "{row_text}");
    assert_eq!(browser.text_of("#dlq-count"), "1");
    browser.screenshot("dead-letters");
    browser.click("table.dead-letters button.redrive");
    browser.wait_for_text("#flash", "Redriven", WAIT);
    setup.server.wait_until("the redrive's audit line naming alice", WAIT, || {
        setup
            .server
            .log()
            .lines()
            .any(|l| l.contains(r#"action="redrive""#) && l.contains(r#"who="alice@127.0.0.1""#))
            .then_some(())
    });
}

/// Vera (a viewer, signed in with a pasted personal token) sees the waiting promotion and no
/// buttons; the API refuses her approval even with a valid session and CSRF token.
#[test]
fn a_viewer_sees_no_buttons_and_the_api_refuses_her() {
    let setup = ConsoleWorld::start(3600);
    let (_, id) = setup.promote_to_waiting("1.0");
    let browser = Browser::start();
    browser.goto(&setup.server.url("/"));
    browser.wait_for("#token", WAIT).fill("not-a-token-anyone-has-0123456789abcdef");
    browser.click("#token-sign-in");
    browser.wait_for_text("#login-error", "Unknown token", WAIT);
    browser.fill("#token", VERA_TOKEN);
    browser.click("#token-sign-in");
    browser.wait_for_text("#who", "vera", WAIT);
    let pending = format!(".stage[data-stage=prod] .pending[data-promotion='{id}']");
    browser.wait_for_text(&format!("{pending} .waiting"), "waiting for approval", WAIT);
    for button in ["button.approve", "button.reject", "button.rollback", "button.redrive"] {
        assert!(browser.find_all(button).is_empty(), "a viewer sees no {button}");
    }
    browser.screenshot("viewer");

    let (status, body) = curl(
        "POST",
        &setup.server.url(&format!("/api/promotions/{id}/approve")),
        Some(&session_cookie(&browser)),
        &[("X-Ferry-CSRF", &page_csrf(&browser))],
        None,
    );
    assert_eq!(status, 403, "{body}");
    assert!(body.contains("vera lacks the approver role on stage prod"), "{body}");

    // The operator token does not open the console: it names nobody.
    browser.delete_all_cookies();
    browser.goto(&setup.server.url("/login"));
    browser.wait_for("#token", WAIT).fill(OPERATOR_TOKEN);
    browser.click("#token-sign-in");
    browser.wait_for_text("#login-error", "operator token", WAIT);
}

/// State changes ride on the session only with its CSRF token: a forged approval from another
/// site (cookie, no token or a wrong one) and a sign-in form without its token are refused;
/// bearer-token callers are untouched. Hostile return paths are not followed.
#[test]
fn state_changes_without_the_csrf_token_are_refused() {
    let setup = ConsoleWorld::start(3600);
    let (_, id) = setup.promote_to_waiting("1.0");
    let browser = Browser::start();
    setup.sign_in_oidc(&browser, "/", "bob");
    let cookie = session_cookie(&browser);
    let csrf = page_csrf(&browser);
    let approve = setup.server.url(&format!("/api/promotions/{id}/approve"));
    for (name, headers) in [
        ("no token", vec![]),
        ("a wrong token", vec![("X-Ferry-CSRF", "0123456789abcdef0123456789abcdef0123456789abcdef")]),
        ("an empty token", vec![("X-Ferry-CSRF", "")]),
        ("another cookie's token", vec![("X-Ferry-CSRF", &csrf[..csrf.len() - 1])]),
    ] {
        let (status, body) = curl("POST", &approve, Some(&cookie), &headers, None);
        assert_eq!(status, 403, "{name}: {body}");
        assert!(body.contains("CSRF"), "{name}: {body}");
    }
    let shown = setup.server.cli("show").args([&id, "--json"]).run().json();
    assert_eq!(shown["approvals"].as_array().map(Vec::len), Some(0), "nothing approved: {shown:#}");

    // Sign-out from another site: refused; the session still works.
    let (status, _) = curl("POST", &setup.server.url("/logout"), Some(&cookie), &[], Some("csrf=forged"));
    assert_eq!(status, 403);
    // A forged sign-in form (no matching ferry_login cookie).
    let (status, body) =
        curl("POST", &setup.server.url("/login/token"), None, &[], Some(&format!("token={VERA_TOKEN}&csrf=abc")));
    assert_eq!(status, 403, "{body}");
    assert!(body.contains("another site"), "{body}");
    // Hostile return paths stay on this site.
    for next in ["//evil.example/", "https://evil.example/", "/\\evil.example"] {
        let (status, body) =
            curl("GET", &setup.server.url(&format!("/login?next={}", urlencode(next))), None, &[], None);
        assert_eq!(status, 200, "{body}");
        assert!(body.contains(r#"name="next" value="/""#) && !body.contains("evil"), "{next}: {body}");
    }
    // With the token, the same request goes through: bob approves.
    let (status, body) = curl("POST", &approve, Some(&cookie), &[("X-Ferry-CSRF", &csrf)], None);
    assert_eq!(status, 200, "{body}");
    let answer: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(answer["released"], true, "{answer:#}");
}

/// Reads that name no pipeline, or a whole pipeline, show only what the caller may see: bob
/// (approver of shop-api's prod only) sees shop-api without billing, prod's history without
/// dev's, and is refused a dev promotion, a dev job and billing's status; vera (viewer
/// everywhere) sees all of it.
#[test]
fn reads_show_only_the_pipelines_and_stages_a_person_may_see() {
    let setup = ConsoleWorld::start(3600);
    let (_, prod_id) = setup.promote_to_waiting("1.0");
    let bob = setup.oidc.token("bob", "Bob Builder", &["approvers"]);
    let get = |token: &str, path: &str| {
        let (status, body) =
            curl("GET", &setup.server.url(path), None, &[("Authorization", &format!("Bearer {token}"))], None);
        (status, serde_json::from_str::<Value>(&body).unwrap_or(Value::Null))
    };
    let names = |v: &Value| -> Vec<String> {
        v.as_array().unwrap().iter().map(|p| p["name"].as_str().unwrap().to_string()).collect()
    };

    let (status, pipelines) = get(&bob, "/api/status");
    assert_eq!((status, names(&pipelines)), (200, vec![PIPELINE.to_string()]), "{pipelines:#}");
    let (status, pipelines) = get(VERA_TOKEN, "/api/status");
    assert_eq!((status, names(&pipelines)), (200, vec![PIPELINE.to_string(), "billing".into()]));
    let (status, refused) = get(&bob, "/api/status?pipeline=billing");
    assert_eq!(status, 403, "{refused:#}");
    assert!(refused["error"].as_str().unwrap().contains("lacks the viewer role on pipeline billing"), "{refused:#}");

    let (status, history) = get(&bob, &format!("/api/history/{PIPELINE}"));
    assert_eq!(status, 200, "{history:#}");
    let stages: Vec<&str> = history.as_array().unwrap().iter().map(|r| r["stage"].as_str().unwrap()).collect();
    assert_eq!(stages, vec!["prod"], "bob sees prod's promotions only: {history:#}");
    let (_, all) = get(VERA_TOKEN, &format!("/api/history/{PIPELINE}"));
    assert_eq!(all.as_array().unwrap().len(), 2, "vera sees dev's and prod's: {all:#}");
    let dev_id = all.as_array().unwrap().iter().find(|r| r["stage"] == "dev").unwrap()["id"].as_str().unwrap();
    let (status, refused) = get(&bob, &format!("/api/show/{dev_id}"));
    assert_eq!(status, 403, "{refused:#}");
    assert!(refused["error"].as_str().unwrap().contains("lacks the viewer role on stage dev"), "{refused:#}");
    assert_eq!(get(&bob, &format!("/api/show/{prod_id}")).0, 200);
    assert_eq!(get(&bob, &format!("/api/history/{PIPELINE}?stage=dev")).0, 403);
    assert_eq!(get(&bob, "/api/history/billing").0, 403);
    // /api/me lists only the pipelines bob has a role on, with his role per stage.
    let (_, me) = get(&bob, "/api/me");
    assert_eq!(me["pipelines"][PIPELINE]["stages"]["prod"], "approver", "{me:#}");
    assert_eq!(me["pipelines"][PIPELINE]["stages"]["dev"], Value::Null, "{me:#}");
    assert!(me["pipelines"].get("billing").is_none(), "{me:#}");
}

fn urlencode(text: &str) -> String {
    text.bytes().map(|b| format!("%{b:02X}")).collect()
}

/// A session ends at `identity.session_ttl_s` (10 s here: room for a sign-in on a busy machine):
/// the open page notices at its next refresh and sends to the sign-in page saying so; the old
/// cookie is refused by the API.
#[test]
fn an_expired_session_sends_to_sign_in_and_is_refused() {
    let setup = ConsoleWorld::start(10);
    let browser = Browser::start();
    setup.sign_in_oidc(&browser, "/", "bob");
    let cookie = session_cookie(&browser);
    browser.wait_for(".stage[data-stage=prod]", WAIT);
    let notice = browser.wait_for_text("#notice", "expired", WAIT);
    assert!(notice.contains("Sign in again"), "{notice}");
    assert!(browser.current_url().contains("expired=1"), "{}", browser.current_url());
    browser.screenshot("session-expired");
    let (status, body) = curl("GET", &setup.server.url("/api/status"), Some(&cookie), &[], None);
    assert_eq!(status, 401, "{body}");
    assert!(body.contains("expired"), "{body}");
    // Forged cookies are refused as not Ferry's.
    let (status, body) = curl("GET", &setup.server.url("/api/status"), Some("ferry_session=e30.AAAA"), &[], None);
    assert_eq!(status, 401);
    assert!(body.contains("not one this Ferry issued"), "{body}");
}

//! One Ferry serving the web console, for the browser and hostile-input tests: shop-api
//! (dev: auto, told through a webhook notifier; prod: one approval) and billing (dev), real
//! registries, generic webhooks from the source registry, the fake OIDC provider as a
//! confidential client's issuer, and `vera` with a personal token. Alice operates everything,
//! the `approvers` group approves shop-api's prod, vera only views.

use std::time::Duration;

use super::azure::Background;
use super::browser::Browser;
use super::oidc::FakeOidcProvider;
use super::registry::free_port;
use super::{FerryServer, Registry, ferry};

pub const PIPELINE: &str = "shop-api";
pub const REPO: &str = "shop/api";
pub const OPERATOR_TOKEN: &str = "console-test-operator-token";
pub const CLIENT_ID: &str = "ferry-console";
pub const CLIENT_SECRET: &str = "console-test-oidc-client-secret";
pub const GENERIC_SECRET: &str = "console-test-generic-secret";
/// `vera`, a viewer who signs in with a pasted personal token.
pub const VERA_TOKEN: &str = "vera-static-token-0123456789abcdef0123456789";
pub const WAIT: Duration = Duration::from_secs(30);

pub struct ConsoleWorld {
    pub oidc: FakeOidcProvider,
    pub server: FerryServer,
    pub source: Registry,
    pub dev: Registry,
    pub prod: Registry,
    /// Dev's deploy notifications land here (answered 200: a confirmed deployment).
    _deploy_hook: Background,
}

impl ConsoleWorld {
    /// The world with sessions of `session_ttl_s`.
    pub fn start(session_ttl_s: u64) -> Self {
        Self::start_with(session_ttl_s, &[], "")
    }

    /// The world plus `registries` (hosts, plain HTTP) and `config` appended to the file (more
    /// pipelines, grants).
    pub fn start_with(session_ttl_s: u64, registries: &[&str], config_extra: &str) -> Self {
        let oidc = FakeOidcProvider::start();
        oidc.add_user("alice", "Alice Admin", &[]);
        oidc.add_user("bob", "Bob Builder", &["approvers"]);
        // A confidential client, as Entra ID's "Web" platform makes it: every sign-in proves
        // Ferry sends the secret (the provider refuses code redemptions without it).
        oidc.set_client_secret(CLIENT_ID, CLIENT_SECRET);
        let (source, dev, prod) = (Registry::plain(), Registry::plain(), Registry::plain());
        let deploy_hook = Background::serve(axum::Router::new().fallback(|| async { "deployed" }));
        let vera_hash = ferry("token").arg("hash").stdin(VERA_TOKEN).run().success().trim().to_string();
        let mut config = super::registry::plain_registries(
            [source.host(), dev.host(), prod.host()].into_iter().chain(registries.iter().copied()),
        );
        config.push_str(&format!(
            r#"
[sources.generic]
secret_env = "FERRY_GENERIC_SECRET"
registries = ["{source}"]

[identity]
session_ttl_s = {session_ttl_s}

[[identity.oidc]]
issuer = "{issuer}"
audience = "{audience}"
client_id = "{CLIENT_ID}"
client_secret_env = "FERRY_OIDC_CLIENT_SECRET"
label = "Fake IdP"

[[identity.users]]
name = "vera"
token_hash = "{vera_hash}"

[[identity.grants]]
subject = "alice@127.0.0.1"
role = "operator"

[[identity.grants]]
group = "approvers"
role = "approver"
pipeline = "{PIPELINE}"
stage = "prod"

[[identity.grants]]
subject = "vera"
role = "viewer"

[[pipelines]]
name = "{PIPELINE}"
source = "{source}/{REPO}"
  [[pipelines.stages]]
  name = "dev"
  target = "{dev}/{REPO}"
  gate = "auto"
  notify = {{ kind = "webhook", url = "{deploy_hook}/deploy" }}
  [[pipelines.stages]]
  name = "prod"
  target = "{prod}/{REPO}"
  gate = "approval"

[[pipelines]]
name = "billing"
source = "{source}/billing/api"
  [[pipelines.stages]]
  name = "dev"
  target = "{dev}/billing/api"
  gate = "auto"

{config_extra}
"#,
            issuer = oidc.issuer(),
            audience = super::oidc::AUDIENCE,
            source = source.host(),
            dev = dev.host(),
            prod = prod.host(),
            deploy_hook = deploy_hook.url(),
        ));
        let envs = [("FERRY_GENERIC_SECRET", GENERIC_SECRET), ("FERRY_OIDC_CLIENT_SECRET", CLIENT_SECRET)];
        let server = FerryServer::start_with_operator_token(free_port(), &config, &envs, OPERATOR_TOKEN);
        ConsoleWorld { oidc, server, source, dev, prod, _deploy_hook: deploy_hook }
    }

    /// Alice (by her OIDC token, from the CLI) promotes `tag` into dev and then prod, where it
    /// waits for approval; the digest and the waiting promotion's id.
    pub fn promote_to_waiting(&self, tag: &str) -> (String, String) {
        let digest = self.source.push_image(REPO, tag, &[40_000]);
        let alice = self.oidc.token("alice", "Alice Admin", &[]);
        let cli = |stage: &str| {
            ferry("promote")
                .args(["--server", &self.server.url(""), "--token", &alice])
                .args([PIPELINE, tag, "--to", stage, "--wait", "--json"])
                .timeout(WAIT)
                .run()
                .json()
        };
        assert_eq!(cli("dev")["outcome"]["state"], "promoted");
        let parked = cli("prod");
        assert_eq!(parked["outcome"]["state"], "parked", "{parked:#}");
        (digest, parked["outcome"]["promotion"].as_str().unwrap().to_string())
    }

    /// Signs `username` in through the fake provider's sign-in page, starting from `path`.
    pub fn sign_in_oidc(&self, browser: &Browser, path: &str, username: &str) {
        browser.goto(&self.server.url(path));
        browser.wait_for("#sign-in-0", WAIT).click();
        browser.wait_for("#username", WAIT).fill(username);
        browser.click("#sign-in");
        browser.wait_for("#who", WAIT);
        browser.wait_for_text("#who", username, WAIT);
    }
}

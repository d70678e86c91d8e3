//! docs/SENDERS.md's CI example, run as a CI job would run it: its curl + openssl script against
//! a real `ferry serve` configured with the guide's own configuration block.

mod support;

use std::path::Path;
use std::process::Command;

use support::FerryServer;
use support::registry::free_port;
use support::tools;

const SECRET: &str = "ci-secret-0123456789abcdef";

/// The guide, and its code block of `lang` that follows `after` (a marker line).
fn block_after(doc: &str, after: &str, lang: &str) -> String {
    let start = doc.find(after).unwrap_or_else(|| panic!("no `{after}` in docs/SENDERS.md"));
    let fence = format!("```{lang}\n");
    let open =
        start + doc[start..].find(&fence).unwrap_or_else(|| panic!("no ```{lang} after `{after}`")) + fence.len();
    let close = open + doc[open..].find("\n```").expect("unclosed block");
    doc[open..close].to_string()
}

fn run_script(script: &str, server: &FerryServer, secret: &str) -> (bool, String, String) {
    let openssl = tools::openssl();
    let curl = tools::require("curl", "apt-get install -y curl");
    let path = format!("{}:{}:/usr/bin:/bin", openssl.parent().unwrap().display(), curl.parent().unwrap().display());
    let run = Command::new("bash")
        .args(["-euo", "pipefail", "-c", script])
        .env_clear()
        .env("PATH", path)
        .env("FERRY_URL", server.url(""))
        .env("FERRY_GENERIC_SECRET", secret)
        .output()
        .unwrap();
    (
        run.status.success(),
        String::from_utf8_lossy(&run.stdout).into_owned(),
        String::from_utf8_lossy(&run.stderr).into_owned(),
    )
}

#[test]
fn the_ci_example_queues_a_promotion_on_a_real_ferry_serve() {
    let guide = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/SENDERS.md")).unwrap();
    let script = block_after(&guide, "<!-- tested: generic-webhook -->", "sh");
    let config = block_after(&guide, "<!-- tested: generic-webhook -->", "toml");
    // The worker stays off: this is about the sender's side; nothing contacts the registries.
    let config = format!("[worker]\nenabled = false\n\n{config}");
    let server = FerryServer::start(
        free_port(),
        &config,
        &[("FERRY_GENERIC_SECRET", SECRET), ("FERRY_BUILD_USER", "ci"), ("FERRY_BUILD_PASSWORD", "pw")],
    );

    let (ok, stdout, stderr) = run_script(&script, &server, SECRET);
    assert!(ok, "the guide's script failed: {stderr}\n{stdout}\n{}", server.log());
    let answer: serde_json::Value = serde_json::from_str(&stdout).unwrap_or_else(|e| panic!("{e}: {stdout}"));
    let job = &answer["jobs"][0];
    assert_eq!((job["pipeline"].as_str(), job["stage"].as_str()), (Some("shop-api"), Some("dev")), "{answer}");
    assert_eq!(job["duplicate"], false, "{answer}");

    // A wrong secret: curl --fail-with-body fails the job, and Ferry says why.
    let (ok, stdout, _) = run_script(&script, &server, "not-the-secret");
    assert!(!ok && stdout.contains("invalid X-Ferry-Signature"), "{stdout}");

    // A repository without its registry host names Docker Hub, and the answer says so.
    let hostless = script.replace("build.example.com/shop/api", "shop/api");
    assert_ne!(hostless, script);
    let (ok, stdout, stderr) = run_script(&hostless, &server, SECRET);
    assert!(ok, "{stderr}");
    let answer: serde_json::Value = serde_json::from_str(&stdout).unwrap_or_else(|e| panic!("{e}: {stdout}"));
    let reason = answer["reason"].as_str().unwrap_or_default();
    assert_eq!(answer["status"], "ignored", "{answer}");
    assert!(reason.contains("docker.io/shop/api") && reason.contains("must include the registry host"), "{reason}");
}

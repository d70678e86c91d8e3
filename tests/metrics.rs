//! `/metrics` after real promotions through `ferry serve` between real registries: the copy
//! duration histogram, the bytes Ferry moved (counted against what the registries hold), the
//! promotions waiting at a gate and how long they waited, all read by a strict parser of the
//! text format.

mod support;

use std::time::{Duration, Instant};

use serde_json::{Value, json};
use support::prometheus::{sample_value, scrape};
use support::registry::free_port;
use support::{FerryServer, Registry};

const PIPELINE: &str = "shop-metrics";
const REPO: &str = "shop/api";
const OPERATOR_TOKEN: &str = "metrics-test-operator-token";

/// Bytes of the image manifest `digest` in `registry`'s `REPO` and of its config and layers.
fn image_sizes(registry: &Registry, digest: &str) -> (u64, u64) {
    let manifest = registry.client().manifest(REPO, digest).expect("the promoted manifest is in the target");
    assert!(manifest.children().is_empty(), "a single image, not an index: {}", manifest.json());
    let blobs: u64 = manifest.blobs().iter().map(|b| b.size).sum();
    assert!(manifest.blobs().len() == 3, "config and two layers: {}", manifest.json());
    (manifest.bytes.len() as u64, blobs)
}

/// dev (auto) and prod (approval by one) both in the target registry's `REPO`, each tagging
/// `{tag}` and `{stage}`: dev copies the image from the build registry, prod then finds every
/// blob already there and pushes only the manifest, under its two tags.
#[test]
fn copies_bytes_and_gate_waits_are_measured() {
    let (build, target) = (Registry::plain(), Registry::plain());
    let mut config = support::registry::plain_registries([build.host(), target.host()]);
    config.push_str(&format!(
        r#"
[[pipelines]]
name = "{PIPELINE}"
source = "{build}/{REPO}"
  [[pipelines.stages]]
  name = "dev"
  target = "{target}/{REPO}"
  gate = "auto"
  target_tags = ["{{tag}}", "{{stage}}"]
  [[pipelines.stages]]
  name = "prod"
  target = "{target}/{REPO}"
  gate = "approval"
  target_tags = ["{{tag}}", "{{stage}}"]
"#,
        build = build.host(),
        target = target.host(),
    ));
    let metrics_port = free_port();
    let metrics_listen = format!("metrics_listen = \"127.0.0.1:{metrics_port}\"");
    let server = FerryServer::start_with_server_keys(free_port(), &metrics_listen, &config, &[], Some(OPERATOR_TOKEN));
    let dev = [("pipeline", PIPELINE), ("stage", "dev")];
    let prod = [("pipeline", PIPELINE), ("stage", "prod")];
    let prod_approval = [("pipeline", PIPELINE), ("stage", "prod"), ("gate", "approval")];

    // Before anything ran: the gated stage's gauge is there at 0, no copy was measured.
    let (text, samples) = scrape(metrics_port, None);
    assert_eq!(sample_value(&samples, "ferry_promotions_waiting", &prod_approval), Some(0.0), "{text}");
    assert_eq!(sample_value(&samples, "ferry_copied_bytes_total", &dev), None, "{text}");

    let digest = build.push_image(REPO, "1.0", &[300_000, 40_000]);
    let started = Instant::now();
    let promoted =
        server.cli("promote").args([PIPELINE, "1.0", "--to", "dev", "--wait", "--json", "--user", "alice"]).run();
    assert_eq!(promoted.json()["outcome"]["state"], "promoted", "{}", promoted.stderr);
    let (manifest_bytes, blob_bytes) = image_sizes(&target, &digest);

    // dev moved every blob once and the manifest under each of its two tags.
    let (text, samples) = scrape(metrics_port, None);
    let dev_bytes = sample_value(&samples, "ferry_copied_bytes_total", &dev);
    assert_eq!(dev_bytes, Some((blob_bytes + 2 * manifest_bytes) as f64), "{text}");
    let copies = sample_value(&samples, "ferry_copy_duration_seconds_count", &dev).unwrap_or(0.0);
    assert!(copies >= 1.0, "{text}");
    let copy_seconds = sample_value(&samples, "ferry_copy_duration_seconds_sum", &dev).expect("a copy duration sum");
    assert!(copy_seconds > 0.0 && copy_seconds <= started.elapsed().as_secs_f64(), "{text}");

    // dev queued prod, which parks for an approval: one waiting, no gate wait observed yet.
    let (text, samples) = server.wait_until("prod waits for approval", Duration::from_secs(60), || {
        let (text, samples) = scrape(metrics_port, None);
        (sample_value(&samples, "ferry_promotions_waiting", &prod_approval) == Some(1.0)).then_some((text, samples))
    });
    assert_eq!(sample_value(&samples, "ferry_gate_wait_seconds_count", &prod_approval), None, "{text}");
    assert_eq!(sample_value(&samples, "ferry_copied_bytes_total", &prod), None, "prod copied nothing yet: {text}");
    let status = server.cli("status").args([PIPELINE, "--json"]).run().json();
    let id = pending_id(&status, "prod");

    let approved = server.cli("approve").args([&id, "--wait", "--json", "--user", "bob"]).run().json();
    assert_eq!((approved["released"].as_bool(), &approved["outcome"]["state"]), (Some(true), &json!("promoted")));

    // prod found the blobs in place: only the manifest moved, under its two tags; dev unchanged.
    let (text, samples) = scrape(metrics_port, None);
    assert_eq!(sample_value(&samples, "ferry_copied_bytes_total", &prod), Some((2 * manifest_bytes) as f64), "{text}");
    assert_eq!(sample_value(&samples, "ferry_copied_bytes_total", &dev), dev_bytes, "{text}");
    assert!(sample_value(&samples, "ferry_copy_duration_seconds_count", &prod) >= Some(1.0), "{text}");
    assert_eq!(sample_value(&samples, "ferry_promotions_waiting", &prod_approval), Some(0.0), "{text}");
    assert_eq!(sample_value(&samples, "ferry_gate_wait_seconds_count", &prod_approval), Some(1.0), "{text}");
    let waited = sample_value(&samples, "ferry_gate_wait_seconds_sum", &prod_approval).expect("a gate wait sum");
    // It parked after `started` and was let through before now.
    let bound = started.elapsed().as_secs_f64();
    assert!(waited > 0.0 && waited <= bound, "waited {waited} s, the test ran {bound} s: {text}");
}

/// The id of the promotion parked in `stage` of the `ferry status --json` answer.
fn pending_id(status: &Value, stage: &str) -> String {
    let stages = status[0]["stages"].as_array().expect("stages in the status");
    let stage = stages.iter().find(|s| s["name"] == stage).unwrap_or_else(|| panic!("{stage} in {status:#}"));
    stage["pending"][0]["id"].as_str().unwrap_or_else(|| panic!("a pending promotion in {stage:#}")).to_string()
}

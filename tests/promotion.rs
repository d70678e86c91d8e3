//! Promotion end to end: real registries (a build registry whose `notifications:` reach
//! `ferry serve`, one registry per stage), the worker inside `ferry serve`, and the operator CLI
//! talking to its operations API. Every test reads the target registry back and checks that
//! the image there has the digest that was pushed to the build registry.

mod support;

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::{Value, json};
use support::prometheus::{sample_value, scrape};
use support::registry::free_port;
use support::{Fault, FaultyProxy, FerryServer, Registry};

const PIPELINE: &str = "shop-api";
const REPO: &str = "shop/api";
const OPERATOR_TOKEN: &str = "promotion-e2e-operator-token";
const DISTRIBUTION_SECRET: &str = "promotion-e2e-distribution-secret";
const GENERIC_SECRET: &str = "promotion-e2e-generic-secret";
const MIB: usize = 1024 * 1024;

/// A build registry that notifies the Ferry that will listen on `ferry_port`.
fn notifying_build_registry(ferry_port: u16) -> Registry {
    Registry::plain_notifying(
        &format!("http://127.0.0.1:{ferry_port}/hooks/distribution"),
        "X-Ferry-Secret",
        DISTRIBUTION_SECRET,
    )
}

/// `ferry serve` on `port` with one pipeline, `shop-api`, from `source` (a registry host)
/// through `stages` (name, target registry host, gate); `worker` is extra TOML (`[worker] …`).
fn start_ferry(port: u16, source: &str, stages: &[(&str, &str, &str)], worker: &str) -> FerryServer {
    let mut hosts = vec![source];
    for (_, target, _) in stages {
        if !hosts.contains(target) {
            hosts.push(target);
        }
    }
    let mut config = support::registry::plain_registries(hosts);
    config.push_str(&format!(
        r#"
[sources.distribution]
secret_env = "E2E_DISTRIBUTION_SECRET"
header = "X-Ferry-Secret"

[sources.generic]
secret_env = "E2E_GENERIC_SECRET"

{worker}

[[pipelines]]
name = "{PIPELINE}"
source = "{source}/{REPO}"
"#
    ));
    for (name, target, gate) in stages {
        config.push_str(&format!(
            "  [[pipelines.stages]]\n  name = \"{name}\"\n  target = \"{target}/{REPO}\"\n  gate = \"{gate}\"\n"
        ));
    }
    FerryServer::start_with_operator_token(
        port,
        &config,
        &[("E2E_DISTRIBUTION_SECRET", DISTRIBUTION_SECRET), ("E2E_GENERIC_SECRET", GENERIC_SECRET)],
        OPERATOR_TOKEN,
    )
}

/// [`start_ferry`] with one stage, dev, whose target is a proxy in front of a real registry that
/// answers 500 to everything until the test calls `set_fault`; two attempts per job, 100 ms
/// apart. Returns (dev, its proxy, the server).
fn start_ferry_with_failing_dev(port: u16, source: &Registry) -> (Registry, FaultyProxy, FerryServer) {
    let dev = Registry::plain();
    let broken = FaultyProxy::start(&dev, Fault::ServerErrors);
    let server = start_ferry(
        port,
        source.host(),
        &[("dev", broken.host(), "auto")],
        "[worker]\nmax_attempts = 2\nretry_base_ms = 100\n",
    );
    (dev, broken, server)
}

/// Pushes a fresh image with `layer_sizes` to `registry` as `shop/api:TAG`; its digest.
fn push(registry: &Registry, tag: &str, layer_sizes: &[usize]) -> String {
    registry.push_image(REPO, tag, layer_sizes)
}

/// Polls `probe` until it gives a value; fails with the ferry log after `timeout`.
fn wait_until<T>(what: &str, timeout: Duration, server: &FerryServer, probe: impl FnMut() -> Option<T>) -> T {
    server.wait_until(what, timeout, probe)
}

/// Waits until `shop/api:TAG` in `registry` is the image `digest`, and the ledger has recorded
/// the promotion that put it there (the tag is written before the record: a test that acts on
/// the ledger right after seeing the tag would race the worker).
fn wait_for_tag(server: &FerryServer, registry: &Registry, tag: &str, digest: &str, timeout: Duration) {
    wait_for_tag_via(server, registry, registry.host(), tag, digest, timeout);
}

/// [`wait_for_tag`] for a stage whose configured target is `target_host` (a proxy) in front of
/// `registry`.
fn wait_for_tag_via(
    server: &FerryServer,
    registry: &Registry,
    target_host: &str,
    tag: &str,
    digest: &str,
    timeout: Duration,
) {
    wait_until(&format!("{}/{REPO}:{tag} is {digest}", registry.host()), timeout, server, || {
        registry.client().manifest_when_ready(REPO, tag).filter(|m| m.digest == digest).map(|_| ())
    });
    let target = format!("{target_host}/{REPO}");
    wait_until(&format!("the ledger records {digest} promoted to {target}"), timeout, server, || {
        let recorded = |r: &Value| r["digest"] == digest && r["target"] == target.as_str() && r["state"] == "succeeded";
        history(server, None).iter().any(recorded).then_some(())
    });
}

/// The manifest `shop/api:TAG` in `registry` has exactly the digest `digest`, both as the
/// registry names it and as computed over the bytes it serves, and all its blobs are there.
fn assert_digest_exact(registry: &Registry, tag: &str, digest: &str) {
    let manifest = registry
        .client()
        .manifest(REPO, tag)
        .unwrap_or_else(|| panic!("{}/{REPO}:{tag} does not exist", registry.host()));
    assert_eq!(manifest.digest, digest, "{}/{REPO}:{tag}: Docker-Content-Digest", registry.host());
    assert_eq!(manifest.computed_digest(), digest, "{}/{REPO}:{tag}: digest of the bytes served", registry.host());
    for blob in manifest.blobs() {
        assert!(registry.client().blob_exists(REPO, &blob.digest), "{}: blob {} missing", registry.host(), blob.digest);
    }
}

fn sorted_tags(registry: &Registry) -> Vec<String> {
    let mut tags = registry.client().tags(REPO);
    tags.sort();
    tags
}

/// `ferry status --json` for the pipeline.
fn pipeline_status(server: &FerryServer) -> Value {
    let status = server.cli("status").arg(PIPELINE).arg("--json").run().json();
    assert_eq!(status[0]["name"], PIPELINE, "{status:#}");
    status[0].clone()
}

fn stage<'a>(pipeline_status: &'a Value, name: &str) -> &'a Value {
    pipeline_status["stages"]
        .as_array()
        .and_then(|stages| stages.iter().find(|s| s["name"] == name))
        .unwrap_or_else(|| panic!("no stage {name} in {pipeline_status:#}"))
}

/// `ferry history shop-api [STAGE] --json`, newest first.
fn history(server: &FerryServer, stage: Option<&str>) -> Vec<Value> {
    let mut command = server.cli("history").arg(PIPELINE);
    if let Some(stage) = stage {
        command = command.arg(stage);
    }
    let history = command.arg("--json").run().json();
    history.as_array().cloned().unwrap_or_else(|| panic!("history is not a list: {history:#}"))
}

/// The one promotion of `digest` into `stage` in the history.
fn promotion(server: &FerryServer, stage: &str, digest: &str) -> Value {
    let records: Vec<Value> = history(server, Some(stage))
        .into_iter()
        .filter(|r| r["digest"] == digest && r["trigger"] != "rollback")
        .collect();
    assert_eq!(records.len(), 1, "one promotion of {digest} into {stage}: {records:#?}");
    records[0].clone()
}

/// Waits until a promotion of `digest` is parked on `stage`'s gate; returns its record.
fn wait_for_pending(server: &FerryServer, stage_name: &str, digest: &str) -> Value {
    wait_until(&format!("a promotion of {digest} waits at {stage_name}"), Duration::from_secs(60), server, || {
        let status = pipeline_status(server);
        stage(&status, stage_name)["pending"].as_array()?.iter().find(|p| p["digest"] == digest).cloned()
    })
}

fn id_of(record: &Value) -> String {
    record["id"].as_str().unwrap_or_else(|| panic!("record without id: {record:#}")).to_string()
}

#[test]
fn push_lands_in_dev_then_prod_with_the_same_digest_and_tags() {
    let port = free_port();
    let build = notifying_build_registry(port);
    let (dev, prod) = (Registry::plain(), Registry::plain());
    let server = start_ferry(port, build.host(), &[("dev", dev.host(), "auto"), ("prod", prod.host(), "auto")], "");

    let digest = push(&build, "1.0", &[300_000, 200_000]);
    wait_for_tag(&server, &prod, "prod", &digest, Duration::from_secs(60));

    for (registry, stage_name) in [(&dev, "dev"), (&prod, "prod")] {
        assert_eq!(sorted_tags(registry), ["1.0", stage_name], "{} tags", registry.host());
        assert_digest_exact(registry, "1.0", &digest);
        assert_digest_exact(registry, stage_name, &digest);
    }

    let status = pipeline_status(&server);
    for stage_name in ["dev", "prod"] {
        let stage = stage(&status, stage_name);
        assert_eq!(stage["current"]["digest"], digest, "{stage:#}");
        assert_eq!(stage["current"]["tag"], "1.0", "{stage:#}");
        assert!(stage["previous"].is_null(), "nothing ran before: {stage:#}");
        assert_eq!(stage["pending"], json!([]), "{stage:#}");
    }
    let text = server.cli("status").run();
    let short = &digest[..19];
    assert!(text.success().contains("shop-api") && text.stdout.matches(short).count() == 2, "{}", text.stdout);

    let records = history(&server, None);
    assert_eq!(records.len(), 2, "one promotion per stage: {records:#?}");
    let dev_record = promotion(&server, "dev", &digest);
    let prod_record = promotion(&server, "prod", &digest);
    for record in [&dev_record, &prod_record] {
        assert_eq!(record["state"], "succeeded", "{record:#}");
        assert_eq!(record["tag"], "1.0", "{record:#}");
        assert!(record["finished_at_ms"].is_i64(), "{record:#}");
    }
    assert_eq!(dev_record["trigger"], "webhook:distribution");
    assert_eq!(dev_record["source"], format!("{}/{REPO}", build.host()));
    assert_eq!(dev_record["target"], format!("{}/{REPO}", dev.host()));
    assert_eq!(prod_record["trigger"], "previous-stage:dev");
    assert_eq!(prod_record["source"], format!("{}/{REPO}", dev.host()), "prod is promoted from dev");
    assert_eq!(prod_record["target"], format!("{}/{REPO}", prod.host()));
    let text = server.cli("history").arg(PIPELINE).run();
    assert_eq!(text.success().matches("succeeded").count(), 2, "{}", text.stdout);
}

#[test]
fn approval_gate_holds_prod_until_approved() {
    let port = free_port();
    let build = notifying_build_registry(port);
    let (dev, prod) = (Registry::plain(), Registry::plain());
    let server = start_ferry(port, build.host(), &[("dev", dev.host(), "auto"), ("prod", prod.host(), "approval")], "");

    let digest = push(&build, "1.0", &[300_000]);
    wait_for_tag(&server, &dev, "dev", &digest, Duration::from_secs(60));
    let parked = wait_for_pending(&server, "prod", &digest);
    let id = id_of(&parked);
    assert_eq!(parked["state"], "awaiting_approval", "{parked:#}");
    let text = server.cli("status").run();
    assert!(
        text.success().contains(&format!("waiting: {id}")),
        "status names the promotion to approve:\n{}",
        text.stdout
    );
    assert!(text.stdout.contains(&format!("ferry approve {id}")), "and says how:\n{}", text.stdout);
    std::thread::sleep(Duration::from_millis(500));
    assert!(prod.client().manifest(REPO, "1.0").is_none(), "prod got the image before anyone approved it");
    assert!(sorted_tags(&prod).is_empty(), "prod got tags before anyone approved: {:?}", sorted_tags(&prod));

    let approved = server.cli("approve").arg(&id).args(["--user", "bob"]).run();
    assert!(approved.success().contains("promotion continues"), "{}", approved.stdout);
    wait_for_tag(&server, &prod, "prod", &digest, Duration::from_secs(60));
    assert_digest_exact(&prod, "1.0", &digest);
    assert_digest_exact(&prod, "prod", &digest);
    let record = promotion(&server, "prod", &digest);
    assert_eq!(record["state"], "succeeded", "{record:#}");
    assert_eq!(record["approvals"][0]["by"], "bob", "{record:#}");
    let gates = record["gates"].as_array().unwrap();
    assert!(
        gates.iter().any(|g| g["gate"] == "approval" && g["decision"] == "pass" && g["detail"] == "approved by bob"),
        "{record:#}"
    );
    let status = pipeline_status(&server);
    assert_eq!(stage(&status, "prod")["current"]["digest"], digest, "{status:#}");
    assert_eq!(stage(&status, "prod")["pending"], json!([]), "{status:#}");

    // A hotfix that went straight into dev, promoted to prod by alice: alice may not approve
    // her own promotion; bob may.
    let hotfix = push(&dev, "1.0.1", &[200_000]);
    let queued = server.cli("promote").args([PIPELINE, "1.0.1", "--to", "prod", "--user", "alice"]).run();
    assert!(queued.success().contains("queued job"), "{}", queued.stdout);
    let parked = wait_for_pending(&server, "prod", &hotfix);
    assert_eq!(parked["triggered_by"], "alice", "{parked:#}");
    let hotfix_id = id_of(&parked);
    let refused = server.cli("approve").arg(&hotfix_id).args(["--user", "alice"]).run();
    let error = refused.failure();
    assert!(error.contains("403") && error.contains("alice triggered") && error.contains("cannot approve"), "{error}");
    assert!(prod.client().manifest(REPO, "1.0.1").is_none(), "a refused approval let the hotfix through");
    assert_eq!(wait_for_pending(&server, "prod", &hotfix)["approvals"], json!([]), "no approval was recorded");

    server.cli("approve").arg(&hotfix_id).args(["--user", "bob"]).run().success();
    wait_for_tag(&server, &prod, "prod", &hotfix, Duration::from_secs(60));
    assert_digest_exact(&prod, "1.0.1", &hotfix);
    assert_digest_exact(&prod, "1.0", &digest);
}

#[test]
fn rejection_stops_the_promotion() {
    let port = free_port();
    let build = notifying_build_registry(port);
    let (dev, prod) = (Registry::plain(), Registry::plain());
    let server = start_ferry(port, build.host(), &[("dev", dev.host(), "auto"), ("prod", prod.host(), "approval")], "");

    let digest = push(&build, "1.0", &[300_000]);
    wait_for_tag(&server, &dev, "dev", &digest, Duration::from_secs(60));
    let id = id_of(&wait_for_pending(&server, "prod", &digest));

    let rejected = server.cli("reject").arg(&id).args(["--user", "carol", "--reason", "failed the smoke test"]).run();
    assert!(rejected.success().contains(&format!("rejected {id}")), "{}", rejected.stdout);

    let record = promotion(&server, "prod", &digest);
    assert_eq!(record["state"], "rejected", "{record:#}");
    assert_eq!(record["error"], "rejected by carol: failed the smoke test", "{record:#}");
    let text = server.cli("history").arg(PIPELINE).arg("prod").run();
    assert!(text.success().contains("rejected"), "{}", text.stdout);
    let status = pipeline_status(&server);
    assert_eq!(stage(&status, "prod")["pending"], json!([]), "{status:#}");
    assert!(stage(&status, "prod")["current"].is_null(), "{status:#}");

    let late = server.cli("approve").arg(&id).args(["--user", "bob"]).run();
    let error = late.failure();
    assert!(error.contains("409") && error.contains("not awaiting approval"), "{error}");

    // Asking again does not bring a rejected digest into prod.
    server.cli("promote").args([PIPELINE, "1.0", "--to", "prod", "--user", "dave"]).run().success();
    server.wait_for_log("rejected earlier, not promoting", Duration::from_secs(30));
    assert!(prod.client().manifest(REPO, "1.0").is_none(), "prod got a rejected image");
    assert!(sorted_tags(&prod).is_empty(), "prod got tags of a rejected image: {:?}", sorted_tags(&prod));
    assert_eq!(promotion(&server, "prod", &digest)["state"], "rejected");
}

#[test]
fn rollback_restores_the_previous_digest() {
    let port = free_port();
    let build = notifying_build_registry(port);
    let dev = Registry::plain();
    let server = start_ferry(port, build.host(), &[("dev", dev.host(), "auto")], "");

    let first = push(&build, "1.0", &[300_000]);
    wait_for_tag(&server, &dev, "dev", &first, Duration::from_secs(60));
    let second = push(&build, "1.1", &[300_000]);
    wait_for_tag(&server, &dev, "dev", &second, Duration::from_secs(60));
    let status = pipeline_status(&server);
    assert_eq!(stage(&status, "dev")["current"]["digest"], second, "{status:#}");
    assert_eq!(stage(&status, "dev")["previous"]["digest"], first, "{status:#}");

    let rolled = server.cli("rollback").args([PIPELINE, "dev", "--user", "oscar"]).run();
    assert!(rolled.success().contains(&format!("rolled back {PIPELINE}/dev to {first}")), "{}", rolled.stdout);
    assert_digest_exact(&dev, "dev", &first);
    assert_digest_exact(&dev, "1.0", &first);
    assert_digest_exact(&dev, "1.1", &second);
    let status = pipeline_status(&server);
    let dev_status = stage(&status, "dev");
    assert_eq!(dev_status["current"]["digest"], first, "{status:#}");
    assert_eq!(dev_status["current"]["tag"], "1.0", "{status:#}");
    assert_eq!(dev_status["previous"]["digest"], second, "{status:#}");
    let newest = &history(&server, Some("dev"))[0];
    assert_eq!(newest["trigger"], "rollback", "{newest:#}");
    assert_eq!(newest["state"], "succeeded", "{newest:#}");
    assert_eq!(newest["digest"], first, "{newest:#}");
    assert_eq!(newest["triggered_by"], "oscar", "{newest:#}");

    let rolled = server.cli("rollback").args([PIPELINE, "dev", "--to", &second, "--user", "oscar"]).run();
    assert!(rolled.success().contains(&format!("to {second}")), "{}", rolled.stdout);
    assert_digest_exact(&dev, "dev", &second);
    let status = pipeline_status(&server);
    assert_eq!(stage(&status, "dev")["current"]["digest"], second, "{status:#}");
    assert_eq!(stage(&status, "dev")["previous"]["digest"], first, "{status:#}");

    let never = format!("sha256:{}", "0".repeat(64));
    let refused = server.cli("rollback").args([PIPELINE, "dev", "--to", &never, "--user", "oscar"]).run();
    let error = refused.failure();
    assert!(error.contains(&never) && error.contains("never ran in shop-api/dev"), "{error}");
    assert_digest_exact(&dev, "dev", &second);
}

#[test]
fn worker_killed_mid_copy_finishes_after_restart() {
    let port = free_port();
    let build = notifying_build_registry(port);
    let dev = Registry::plain();
    let mut server = start_ferry(port, build.host(), &[("dev", dev.host(), "auto")], "[worker]\nvisibility_secs = 3\n");

    // The push's notification starts the promotion as soon as the manifest is in.
    let digest = push(&build, "1.0", &[64 * MIB, 64 * MIB, 64 * MIB]);
    let threshold = 24 * MIB as u64;
    let stored = wait_until("the copy into dev is under way", Duration::from_secs(60), &server, || {
        assert!(
            dev.client().manifest(REPO, "1.0").is_none(),
            "the copy finished before the test could interrupt it; ferry log:\n{}",
            server.log()
        );
        Some(dev.bytes_stored()).filter(|&bytes| bytes >= threshold)
    });
    server.kill();
    let killed_at = Instant::now();
    assert!(dev.client().manifest(REPO, "1.0").is_none(), "killed mid-copy, yet dev has the manifest");
    eprintln!("killed ferry serve with {} MiB of 192 MiB in dev", stored / MIB as u64);

    server.restart();
    wait_for_tag(&server, &dev, "dev", &digest, Duration::from_secs(90));
    eprintln!("dev has the image {:?} after the kill", killed_at.elapsed());
    assert_digest_exact(&dev, "1.0", &digest);
    assert_digest_exact(&dev, "dev", &digest);

    // The tag appears before the worker logs its result (and log lines are buffered briefly).
    wait_until("the restarted server logs the promotion", Duration::from_secs(30), &server, || {
        server.log().split("restarted by the test").nth(1)?.contains(": promoted sha256:").then_some(())
    });
    let log = server.log();
    let after_restart = log.split("restarted by the test").nth(1).unwrap_or_default();
    assert!(
        after_restart.contains(": promoted sha256:") && !after_restart.contains("attempt=1}"),
        "the restarted server finished the job, delivered again:\n{log}"
    );
    let record = promotion(&server, "dev", &digest);
    assert_eq!(record["state"], "succeeded", "{record:#}");
    assert!(record["attempts"].as_u64() >= Some(2), "{record:#}");
}

#[test]
fn fifty_duplicate_webhooks_yield_one_promotion() {
    let port = free_port();
    let build = Registry::plain();
    let dev = Registry::plain();
    let server = start_ferry(port, build.host(), &[("dev", dev.host(), "auto")], "");
    let digest = push(&build, "1.0", &[300_000]);

    let body = serde_json::to_vec(&json!({
        "repository": format!("{}/{REPO}", build.host()),
        "tag": "1.0",
        "digest": digest,
    }))
    .unwrap();
    let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs();
    let url = server.url("/hooks/generic");
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let answers: Vec<(u16, Value)> = runtime.block_on(async {
        let client = reqwest::Client::new();
        let requests = (0..50u64).map(|i| {
            // Each its own timestamp, so each its own signature: no replay refusals.
            let timestamp = (now - i).to_string();
            let signature = ferry_core::intake::verify::generic_signature(GENERIC_SECRET.as_bytes(), &timestamp, &body);
            let request = client
                .post(&url)
                .header("Content-Type", "application/json")
                .header("X-Ferry-Timestamp", timestamp)
                .header("X-Ferry-Signature", signature)
                .body(body.clone());
            async move {
                let response = request.send().await.expect("ferry answers");
                let status = response.status().as_u16();
                (status, response.json::<Value>().await.unwrap_or(Value::Null))
            }
        });
        futures_util::future::join_all(requests).await
    });

    for (status, answer) in &answers {
        assert_eq!(*status, 202, "{answer:#}");
        assert_eq!(answer["jobs"].as_array().map(Vec::len), Some(1), "{answer:#}");
    }
    let ids: std::collections::BTreeSet<&str> =
        answers.iter().map(|(_, a)| a["jobs"][0]["id"].as_str().expect("job id")).collect();
    assert_eq!(ids.len(), 1, "every answer names the same job: {ids:?}");
    let first = answers.iter().filter(|(_, a)| a["jobs"][0]["duplicate"] == false).count();
    assert_eq!(first, 1, "one answer queued the job, the others are duplicates of it");

    wait_for_tag(&server, &dev, "dev", &digest, Duration::from_secs(60));
    assert_digest_exact(&dev, "1.0", &digest);
    std::thread::sleep(Duration::from_secs(1));
    let records = history(&server, Some("dev"));
    assert_eq!(records.len(), 1, "one promotion: {records:#?}");
    assert_eq!(records[0]["state"], "succeeded");
    assert_eq!(records[0]["digest"], digest);
    assert_eq!(records[0]["trigger"], "webhook:generic");
    let log = server.log();
    assert_eq!(log.matches(": promoted sha256:").count(), 1, "the worker copied once:\n{log}");
}

#[test]
fn permanently_failing_target_dead_letters_then_redrives() {
    let port = free_port();
    let build = notifying_build_registry(port);
    let (dev, broken, server) = start_ferry_with_failing_dev(port, &build);

    let digest = push(&build, "1.0", &[300_000]);
    let letter = wait_until("the job is dead-lettered", Duration::from_secs(90), &server, || {
        server.cli("dlq").args(["list", "--json"]).run().json().as_array()?.first().cloned()
    });
    assert_eq!(letter["payload"]["pipeline"], PIPELINE, "{letter:#}");
    assert_eq!(letter["payload"]["stage"], "dev", "{letter:#}");
    assert_eq!(letter["receive_count"], 2, "max_attempts = 2: {letter:#}");
    let last_error = letter["last_error"].as_str().unwrap_or_default();
    assert!(last_error.contains(broken.host()) && last_error.contains("500"), "names the target: {letter:#}");
    assert!(broken.server_errors() > 0);
    let id = id_of(&letter);
    let text = server.cli("dlq").arg("list").run();
    assert!(text.success().contains(&id) && text.stdout.contains("after 2 attempts"), "{}", text.stdout);
    let record = promotion(&server, "dev", &digest);
    assert_eq!(record["state"], "dead_lettered", "{record:#}");
    assert!(record["error"].as_str().unwrap_or_default().contains(broken.host()), "{record:#}");
    assert!(sorted_tags(&dev).is_empty(), "nothing reached dev: {:?}", sorted_tags(&dev));

    broken.set_fault(Fault::PassThrough);
    let redriven = server.cli("dlq").args(["redrive", &id]).run();
    assert!(redriven.success().contains("back in the queue"), "{}", redriven.stdout);
    wait_for_tag_via(&server, &dev, broken.host(), "dev", &digest, Duration::from_secs(60));
    assert_digest_exact(&dev, "1.0", &digest);
    assert_eq!(server.cli("dlq").args(["list", "--json"]).run().json(), json!([]));
    let record = promotion(&server, "dev", &digest);
    assert_eq!(record["state"], "succeeded", "{record:#}");
    assert!(record["error"].is_null(), "{record:#}");
}

#[test]
fn a_copy_longer_than_the_visibility_timeout_runs_once_and_is_not_dead_lettered() {
    let port = free_port();
    let build = Registry::plain();
    let slow = FaultyProxy::start(&build, Fault::SlowBlobs(Duration::from_millis(7_000)));
    let dev = Registry::plain();
    // A 2 s lease renewed every 2/3 s: a renewal may come more than a second late on a busy
    // machine without the job being delivered again (a 1 s lease left only ~0.7 s of slack).
    let server = start_ferry(
        port,
        slow.host(),
        &[("dev", dev.host(), "auto")],
        "[worker]\nvisibility_secs = 2\nmax_attempts = 3\n",
    );
    let digest = push(&build, "1.0", &[300_000]);

    // Every blob takes 7 s to arrive: the copy outlives three visibility timeouts, and the
    // worker must keep its lease on the job meanwhile.
    server.cli("promote").args([PIPELINE, "1.0", "--to", "dev", "--user", "alice"]).run().success();
    wait_for_tag(&server, &dev, "dev", &digest, Duration::from_secs(60));
    assert_digest_exact(&dev, "1.0", &digest);
    std::thread::sleep(Duration::from_secs(2));

    let log = server.log();
    assert_eq!(log.matches(": promoted sha256:").count(), 1, "the image was copied once:\n{log}");
    assert!(!log.contains("attempt=2"), "the job was delivered again while its first delivery was copying:\n{log}");
    let letters = server.cli("dlq").args(["list", "--json"]).run().json();
    assert_eq!(letters, json!([]), "a promotion that succeeded left a dead letter");
    assert_eq!(promotion(&server, "dev", &digest)["state"], "succeeded");
}

#[test]
fn a_manual_promotion_by_tag_that_keeps_failing_shows_as_dead_lettered() {
    let port = free_port();
    let build = Registry::plain();
    let (_dev, _broken, server) = start_ferry_with_failing_dev(port, &build);
    let digest = push(&build, "1.0", &[300_000]);

    server.cli("promote").args([PIPELINE, "1.0", "--to", "dev", "--user", "alice"]).run().success();
    wait_until("the job is dead-lettered", Duration::from_secs(90), &server, || {
        server.cli("dlq").args(["list", "--json"]).run().json().as_array()?.first().cloned()
    });
    let record = promotion(&server, "dev", &digest);
    assert_eq!(record["state"], "dead_lettered", "the ledger says what became of it: {record:#}");
}

#[test]
fn a_job_the_worker_keeps_dying_on_is_dead_lettered_visibly_and_redrives() {
    let port = free_port();
    let build = notifying_build_registry(port);
    let dev = Registry::plain();
    let mut server = start_ferry(
        port,
        build.host(),
        &[("dev", dev.host(), "auto")],
        // The worker's sweep reconciles the ledger with dead letters the queue made by itself.
        "[worker]\nvisibility_secs = 2\nmax_attempts = 2\nsweep_secs = 1\n",
    );
    let digest = push(&build, "1.0", &[64 * MIB, 64 * MIB, 64 * MIB]);

    // The worker dies in the middle of the copy on both deliveries the job is allowed.
    for _ in 0..2 {
        let before = dev.bytes_stored();
        wait_until("the copy into dev is under way", Duration::from_secs(60), &server, || {
            Some(dev.bytes_stored()).filter(|&bytes| bytes >= before + 24 * MIB as u64)
        });
        server.kill();
        server.restart();
    }
    let letter = wait_until("the job is dead-lettered", Duration::from_secs(30), &server, || {
        server.cli("dlq").args(["list", "--json"]).run().json().as_array()?.first().cloned()
    });
    assert!(letter["last_error"].as_str().unwrap_or_default().contains("delivered 2 times"), "{letter:#}");
    assert!(dev.client().manifest(REPO, "1.0").is_none(), "dev has the image, yet the job died");
    let state_when_dead = wait_until("the ledger says dead_lettered", Duration::from_secs(15), &server, || {
        let state = promotion(&server, "dev", &digest)["state"].clone();
        (state == "dead_lettered").then_some(state)
    });

    server.cli("dlq").args(["redrive", &id_of(&letter)]).run().success();
    wait_for_tag(&server, &dev, "dev", &digest, Duration::from_secs(60));
    assert_digest_exact(&dev, "1.0", &digest);
    // The tag lands a moment before the worker records the promotion as succeeded.
    wait_until("the ledger says succeeded", Duration::from_secs(30), &server, || {
        (promotion(&server, "dev", &digest)["state"] == "succeeded").then_some(())
    });
    assert_eq!(
        state_when_dead, "dead_lettered",
        "while its job sat in the dead-letter store, the ledger said the promotion was {state_when_dead}"
    );
}

#[test]
fn promoting_a_digest_again_after_a_rollback_brings_it_back() {
    let port = free_port();
    let build = notifying_build_registry(port);
    let dev = Registry::plain();
    let server = start_ferry(port, build.host(), &[("dev", dev.host(), "auto")], "");
    let first = push(&build, "1.0", &[300_000]);
    wait_for_tag(&server, &dev, "dev", &first, Duration::from_secs(60));
    let second = push(&build, "1.1", &[300_000]);
    wait_for_tag(&server, &dev, "dev", &second, Duration::from_secs(60));
    server.cli("rollback").args([PIPELINE, "dev", "--user", "oscar"]).run().success();
    assert_digest_exact(&dev, "dev", &first);

    // 1.1 was fine after all: promote it again.
    server.cli("promote").args([PIPELINE, "1.1", "--to", "dev", "--user", "alice"]).run().success();
    wait_for_tag(&server, &dev, "dev", &second, Duration::from_secs(30));
    let status = pipeline_status(&server);
    assert_eq!(stage(&status, "dev")["current"]["digest"], second, "{status:#}");
}

/// `ferry serve` with one pipeline whose `[[pipelines.stages]]` tables are given as TOML, plus
/// an Azure DevOps source (basic auth `ferry:ADO_PASSWORD`).
fn start_ferry_with_stages(port: u16, source: &str, hosts: &[&str], stages_toml: &str, extra: &str) -> FerryServer {
    let mut config = support::registry::plain_registries(std::iter::once(&source).chain(hosts));
    config.push_str(&format!(
        r#"
[sources.distribution]
secret_env = "E2E_DISTRIBUTION_SECRET"
header = "X-Ferry-Secret"

[sources.azure-devops]
secret_env = "E2E_ADO_PASSWORD"
username = "ferry"

{extra}

[[pipelines]]
name = "{PIPELINE}"
source = "{source}/{REPO}"
{stages_toml}
"#
    ));
    FerryServer::start_with_operator_token(
        port,
        &config,
        &[
            ("E2E_DISTRIBUTION_SECRET", DISTRIBUTION_SECRET),
            ("E2E_ADO_PASSWORD", ADO_PASSWORD),
            ("E2E_NOTIFY_SECRET", NOTIFY_SECRET),
        ],
        OPERATOR_TOKEN,
    )
}

const ADO_PASSWORD: &str = "promotion-e2e-ado-password";
const NOTIFY_SECRET: &str = "promotion-e2e-notify-secret";

/// The release definition the test pipeline's stages are deployed by.
const RELEASE_DEFINITION: &str = "shop-api-cd";
/// Binds the test pipeline to [`RELEASE_DEFINITION`] (TOML, before its stages).
const RELEASE_BINDING: &str = "[pipelines.azure_devops]\nrelease_definition = \"shop-api-cd\"\nproject = \"Shop\"\n";

/// Posts an Azure DevOps release `deployment-completed` event for `environment` of
/// [`RELEASE_DEFINITION`] in project Shop.
fn report_deployment(server: &FerryServer, environment: &str, status: &str) -> u16 {
    report_release_deployment(server, RELEASE_DEFINITION, environment, status, json!([])).0
}

/// Posts a deployment-completed event in the current shape (`resource.deployment`) for
/// `environment` of `definition` in project Shop, naming `artifacts`; status and reply.
fn report_release_deployment(
    server: &FerryServer,
    definition: &str,
    environment: &str,
    status: &str,
    artifacts: Value,
) -> (u16, Value) {
    let body = json!({
        "id": format!("evt-{environment}-{status}-{}", SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_nanos()),
        "eventType": "ms.azure-devops-release.deployment-completed-event",
        "publisherId": "rm",
        "resource": { "deployment": {
            "status": status,
            "environment": { "name": environment },
            "release": {
                "id": 12, "name": "Release-12",
                "releaseDefinition": { "id": 7, "name": definition },
                "project": { "name": "Shop" },
                "artifacts": artifacts
            }
        } }
    });
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    runtime.block_on(async {
        let response = reqwest::Client::new()
            .post(server.url("/hooks/azure-devops"))
            .basic_auth("ferry", Some(ADO_PASSWORD))
            .json(&body)
            .send()
            .await
            .unwrap();
        let status = response.status().as_u16();
        (status, response.json().await.unwrap_or(Value::Null))
    })
}

#[test]
fn a_release_report_opens_only_the_gate_of_the_pipeline_bound_to_it_and_only_for_its_build() {
    let port = free_port();
    let build = notifying_build_registry(port);
    let (dev, prod) = (Registry::plain(), Registry::plain());
    // Two teams promote the same source; both have a `dev` stage; only shop-api is bound to
    // the release definition `shop-api-cd`.
    let other_team = format!(
        "[[pipelines]]\nname = \"team-b\"\nsource = \"{}/{REPO}\"\n[[pipelines.stages]]\nname = \"dev\"\ntarget = \"{}/team-b/api\"\n[[pipelines.stages]]\nname = \"prod\"\ntarget = \"{}/team-b/api\"\ngate = \"after\"\n",
        build.host(),
        dev.host(),
        prod.host()
    );
    let stages = format!(
        "{RELEASE_BINDING}[[pipelines.stages]]\nname = \"dev\"\ntarget = \"{}/{REPO}\"\n[[pipelines.stages]]\nname = \"prod\"\ntarget = \"{}/{REPO}\"\ngate = \"after\"\n",
        dev.host(),
        prod.host()
    );
    let server = start_ferry_with_stages(port, build.host(), &[dev.host(), prod.host()], &stages, &other_team);
    let digest = push(&build, "1.0", &[100_000]);
    wait_for_tag(&server, &dev, "dev", &digest, Duration::from_secs(60));
    wait_until("team-b's dev has 1.0", Duration::from_secs(60), &server, || {
        dev.client().manifest("team-b/api", "1.0").map(|_| ())
    });
    wait_for_pending(&server, "prod", &digest);

    // A release of another definition concerns neither pipeline.
    let (code, reply) = report_release_deployment(&server, "someone-elses-cd", "Dev", "succeeded", json!([]));
    assert_eq!(code, 200, "{reply}");
    let reason = reply["reason"].as_str().unwrap_or_default();
    assert!(reason.contains("team-b") && reason.contains("no azure_devops.release_definition"), "{reply}");

    // A report about a build that never reached dev cannot be tied to 1.0: prod stays shut.
    let other_build = json!([{ "type": "Build", "definitionReference": {
        "definition": { "id": "42", "name": "shop-api-ci" }, "version": { "id": "9", "name": "20250101.9" } } }]);
    let (code, reply) = report_release_deployment(&server, RELEASE_DEFINITION, "Dev", "succeeded", other_build);
    assert_eq!(code, 202, "{reply}");
    assert_eq!(reply["jobs"].as_array().map(Vec::len), Some(1), "only shop-api's dev: {reply}");
    std::thread::sleep(Duration::from_secs(3));
    assert!(prod.client().manifest(REPO, "1.0").is_none(), "a report about another build opened the gate");

    // The bound release, naming no build: shop-api's prod opens, team-b's stays shut.
    let (code, reply) = report_release_deployment(&server, RELEASE_DEFINITION, "Dev", "succeeded", json!([]));
    assert_eq!(code, 202, "{reply}");
    wait_for_tag(&server, &prod, "prod", &digest, Duration::from_secs(60));
    std::thread::sleep(Duration::from_secs(3));
    assert!(prod.client().manifest("team-b/api", "1.0").is_none(), "shop-api's release opened team-b's gate");
}

#[test]
fn after_gate_waits_until_the_previous_stage_reports_deployed() {
    let port = free_port();
    let build = notifying_build_registry(port);
    let (dev, prod) = (Registry::plain(), Registry::plain());
    let stages = format!(
        "{RELEASE_BINDING}[[pipelines.stages]]\nname = \"dev\"\ntarget = \"{}/{REPO}\"\n[[pipelines.stages]]\nname = \"prod\"\ntarget = \"{}/{REPO}\"\ngate = \"after\"\n",
        dev.host(),
        prod.host()
    );
    let server = start_ferry_with_stages(port, build.host(), &[dev.host(), prod.host()], &stages, "");
    let digest = push(&build, "1.0", &[200_000]);
    wait_for_tag(&server, &dev, "dev", &digest, Duration::from_secs(60));
    let pending = wait_for_pending(&server, "prod", &digest);
    assert_eq!(pending["state"], "awaiting_gate", "{pending:#}");
    assert!(prod.client().manifest(REPO, "1.0").is_none(), "prod must wait for dev to be deployed");

    // A failed deployment of dev does not open the gate; a successful one does.
    assert_eq!(report_deployment(&server, "dev", "failed"), 202);
    std::thread::sleep(Duration::from_secs(2));
    assert!(prod.client().manifest(REPO, "1.0").is_none(), "a failed dev deployment opened the gate");
    assert_eq!(report_deployment(&server, "dev", "succeeded"), 202);
    wait_for_tag(&server, &prod, "prod", &digest, Duration::from_secs(60));
    assert_digest_exact(&prod, "1.0", &digest);
    let record = promotion(&server, "prod", &digest);
    let gates: Vec<&str> =
        record["gates"].as_array().unwrap().iter().map(|g| g["decision"].as_str().unwrap()).collect();
    assert_eq!(gates.first(), Some(&"wait"));
    assert_eq!(gates.last(), Some(&"pass"), "{record:#}");
}

/// A push through dev into prod behind a 3 s soak gate, with the worker sweeping every
/// `sweep_secs`: how long after dev prod got it (ms), and what it ran on.
struct Soaked {
    waited_ms: i64,
    server: FerryServer,
    prod: Registry,
    digest: String,
    _registries: (Registry, Registry),
}

fn soak_into_prod(sweep_secs: u64) -> Soaked {
    let port = free_port();
    let build = notifying_build_registry(port);
    let (dev, prod) = (Registry::plain(), Registry::plain());
    let stages = format!(
        "[[pipelines.stages]]\nname = \"dev\"\ntarget = \"{}/{REPO}\"\n[[pipelines.stages]]\nname = \"prod\"\ntarget = \"{}/{REPO}\"\ngate = \"soak\"\nsoak_secs = 3\n",
        dev.host(),
        prod.host()
    );
    let worker = format!("[worker]\nsweep_secs = {sweep_secs}\n");
    let server = start_ferry_with_stages(port, build.host(), &[dev.host(), prod.host()], &stages, &worker);
    let digest = push(&build, "1.0", &[200_000]);
    wait_for_tag(&server, &dev, "dev", &digest, Duration::from_secs(60));
    wait_for_tag(&server, &prod, "prod", &digest, Duration::from_secs(60));
    let status = pipeline_status(&server);
    let dev_since = stage(&status, "dev")["current"]["since_ms"].as_i64().unwrap();
    let prod_since = stage(&status, "prod")["current"]["since_ms"].as_i64().unwrap();
    Soaked { waited_ms: prod_since - dev_since, server, prod, digest, _registries: (build, dev) }
}

#[test]
fn soak_gate_waits_its_time_in_the_previous_stage() {
    let soaked = soak_into_prod(1);
    let waited = soaked.waited_ms;
    assert!(waited >= 3_000, "prod came {waited} ms after dev, before the 3 s soak");
    assert_digest_exact(&soaked.prod, "1.0", &soaked.digest);

    // The wait is measured once, from parking (after dev had the digest) to the gate opening
    // (before prod had it).
    let (text, samples) = scrape(soaked.server.port(), Some(OPERATOR_TOKEN));
    let prod_soak = [("pipeline", PIPELINE), ("stage", "prod"), ("gate", "soak")];
    assert_eq!(sample_value(&samples, "ferry_gate_wait_seconds_count", &prod_soak), Some(1.0), "{text}");
    let measured = sample_value(&samples, "ferry_gate_wait_seconds_sum", &prod_soak).unwrap_or_default();
    assert!(measured > 0.0 && measured <= waited as f64 / 1000.0 + 0.01, "{measured} s of {waited} ms: {text}");
    assert_eq!(sample_value(&samples, "ferry_promotions_waiting", &prod_soak), Some(0.0), "{text}");
}

/// A deploy-webhook receiver: checks Ferry's signature and keeps what arrived.
/// Also a chat channel: `POST /channel/{status}` keeps the body and answers `status`.
struct Receiver {
    port: u16,
    received: std::sync::Arc<std::sync::Mutex<Vec<(bool, Value)>>>,
    /// (status answered, body) of each channel message.
    messages: std::sync::Arc<std::sync::Mutex<Vec<(u16, Value)>>>,
    _runtime: tokio::runtime::Runtime,
}

impl Receiver {
    fn start() -> Self {
        use axum::body::Bytes;
        use axum::http::HeaderMap;
        let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap();
        let received: std::sync::Arc<std::sync::Mutex<Vec<(bool, Value)>>> = Default::default();
        let store = received.clone();
        let listener = runtime.block_on(tokio::net::TcpListener::bind("127.0.0.1:0")).unwrap();
        let port = listener.local_addr().unwrap().port();
        let messages: std::sync::Arc<std::sync::Mutex<Vec<(u16, Value)>>> = Default::default();
        let kept = messages.clone();
        let channel = axum::routing::post(move |axum::extract::Path(status): axum::extract::Path<u16>, body: Bytes| {
            let kept = kept.clone();
            async move {
                kept.lock().unwrap().push((status, serde_json::from_slice(&body).unwrap_or(Value::Null)));
                (axum::http::StatusCode::from_u16(status).unwrap(), "ok")
            }
        });
        let app = axum::Router::new().route("/channel/{status}", channel).route(
            "/deployed",
            axum::routing::post(move |headers: HeaderMap, body: Bytes| {
                let store = store.clone();
                async move {
                    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok()).unwrap_or("").to_string();
                    let expected = ferry_core::intake::verify::generic_signature(
                        NOTIFY_SECRET.as_bytes(),
                        &header("x-ferry-timestamp"),
                        &body,
                    );
                    let signed = header("x-ferry-signature") == expected;
                    store.lock().unwrap().push((signed, serde_json::from_slice(&body).unwrap_or(Value::Null)));
                    axum::http::StatusCode::NO_CONTENT
                }
            }),
        );
        runtime.spawn(async move { axum::serve(listener, app).await.unwrap() });
        Receiver { port, received, messages, _runtime: runtime }
    }
}

impl Receiver {
    /// The texts of the messages the channel answering `status` got (Slack `text`, or the first
    /// line of a Teams card), in order.
    fn titles(&self, status: u16) -> Vec<String> {
        let messages = self.messages.lock().unwrap();
        let title = |m: &Value| {
            m["text"].as_str().or(m["attachments"][0]["content"]["body"][0]["text"].as_str()).unwrap_or("?").to_string()
        };
        messages.iter().filter(|(s, _)| *s == status).map(|(_, m)| title(m)).collect()
    }

    fn last(&self, status: u16) -> Value {
        let messages = self.messages.lock().unwrap();
        messages.iter().rev().find(|(s, _)| *s == status).map(|(_, m)| m.clone()).unwrap_or(Value::Null)
    }
}

/// `[[notices]]`: Slack and Teams hear once when a promotion starts waiting for approval, and
/// when it is approved or rejected; a channel that keeps failing holds nothing up and its URL
/// (a secret) is never logged.
#[test]
fn approval_notices_reach_slack_and_teams_and_a_failing_channel_holds_nothing_up() {
    let channels = Receiver::start();
    let port = free_port();
    let build = notifying_build_registry(port);
    let (dev, prod) = (Registry::plain(), Registry::plain());
    let mut config = support::registry::plain_registries([build.host(), dev.host(), prod.host()]);
    config.push_str(&format!(
        r#"
[sources.distribution]
secret_env = "E2E_DISTRIBUTION_SECRET"
header = "X-Ferry-Secret"

[[notices]]
kind = "slack"
url_env = "E2E_SLACK_URL"

[[notices]]
kind = "teams"
url_env = "E2E_TEAMS_URL"
pipelines = ["{PIPELINE}"]

[[notices]]
kind = "slack"
url_env = "E2E_BROKEN_URL"

[[pipelines]]
name = "{PIPELINE}"
source = "{}/{REPO}"
  [[pipelines.stages]]
  name = "dev"
  target = "{}/{REPO}"
  [[pipelines.stages]]
  name = "prod"
  target = "{}/{REPO}"
  gate = "approval"
  approvers = 2
"#,
        build.host(),
        dev.host(),
        prod.host()
    ));
    let url = |status: u16| format!("http://127.0.0.1:{}/channel/{status}", channels.port);
    let (slack, teams, broken) = (url(200), url(202), url(500));
    let server = FerryServer::start_with_server_keys(
        port,
        "public_url = \"https://ferry.example/\"",
        &config,
        &[
            ("E2E_DISTRIBUTION_SECRET", DISTRIBUTION_SECRET),
            ("E2E_SLACK_URL", &slack),
            ("E2E_TEAMS_URL", &teams),
            ("E2E_BROKEN_URL", &broken),
        ],
        Some(OPERATOR_TOKEN),
    );

    let digest = push(&build, "1.0", &[100_000]);
    let id = id_of(&wait_for_pending(&server, "prod", &digest));
    let waiting = format!("{PIPELINE} → prod: waiting for 2 approvals");
    wait_until("both channels hear that prod waits", Duration::from_secs(30), &server, || {
        (channels.titles(200) == [waiting.clone()] && channels.titles(202) == [waiting.clone()]).then_some(())
    });
    let details = channels.last(200)["blocks"][1]["text"]["text"].as_str().unwrap_or_default().to_string();
    assert!(details.contains(&format!("{}/{REPO}:1.0@{digest}", dev.host())), "names the image: {details}");
    assert!(details.contains(&format!("ferry approve {id}")), "says how to approve: {details}");
    assert!(details.contains(&format!("<https://ferry.example/promotions/{id}|Open in Ferry>")), "{details}");
    let card = &channels.last(202)["attachments"][0];
    assert_eq!(card["contentType"], "application/vnd.microsoft.card.adaptive", "{card:#}");
    assert_eq!(card["content"]["actions"][0]["url"], format!("https://ferry.example/promotions/{id}"));

    // One approval of two: no new notice. The second: approved, and prod gets the image even
    // though one channel answers 500 to everything.
    server.cli("approve").arg(&id).args(["--user", "bob"]).run().success();
    server.cli("approve").arg(&id).args(["--user", "carol"]).run().success();
    wait_for_tag(&server, &prod, "prod", &digest, Duration::from_secs(60));
    let approved = format!("{PIPELINE} → prod: approved");
    wait_until("both channels hear it was approved", Duration::from_secs(30), &server, || {
        (channels.titles(200) == [waiting.clone(), approved.clone()] && channels.titles(202).len() == 2).then_some(())
    });
    let details = channels.last(200)["blocks"][1]["text"]["text"].as_str().unwrap_or_default().to_string();
    assert!(details.contains("Approved by: bob, carol"), "{details}");

    let second = push(&build, "2.0", &[100_000]);
    let second_id = id_of(&wait_for_pending(&server, "prod", &second));
    server.cli("reject").arg(&second_id).args(["--user", "dave", "--reason", "<!channel> not today"]).run().success();
    let rejected = format!("{PIPELINE} → prod: rejected");
    wait_until("both channels hear it was rejected", Duration::from_secs(30), &server, || {
        (channels.titles(200).last() == Some(&rejected) && channels.titles(202).last() == Some(&rejected)).then_some(())
    });
    let details = channels.last(200)["blocks"][1]["text"]["text"].as_str().unwrap_or_default().to_string();
    assert!(details.contains("Rejected by: dave") && details.contains("&lt;!channel&gt; not today"), "{details}");
    assert_eq!(channels.titles(200).len(), 4, "waiting, approved, waiting, rejected: {:?}", channels.titles(200));

    // The failing channel was tried a few times per notice, then left alone.
    server.wait_for_log("approval notice not delivered", Duration::from_secs(30));
    let attempts = channels.titles(500).len();
    assert!((4..=12).contains(&attempts), "3 attempts per notice for 4 notices, got {attempts}");
    let log = server.log();
    assert!(!log.contains("/channel/"), "a channel URL (a secret) was logged:\n{log}");
}

/// `FERRY_LOG_FORMAT=json`: every log line is one JSON object, and every line a promotion's job
/// writes once its digest is resolved carries the promotion id.
#[test]
fn json_log_lines_carry_the_promotion_id() {
    let port = free_port();
    let build = notifying_build_registry(port);
    let dev = Registry::plain();
    let config = format!(
        "[registries.\"{0}\"]\nplain_http = true\n[registries.\"{1}\"]\nplain_http = true\n\
         [sources.distribution]\nsecret_env = \"E2E_DISTRIBUTION_SECRET\"\nheader = \"X-Ferry-Secret\"\n\
         [[pipelines]]\nname = \"{PIPELINE}\"\nsource = \"{0}/{REPO}\"\n[[pipelines.stages]]\nname = \"dev\"\ntarget = \"{1}/{REPO}\"\n",
        build.host(),
        dev.host()
    );
    let envs = [("E2E_DISTRIBUTION_SECRET", DISTRIBUTION_SECRET), ("FERRY_LOG_FORMAT", "json")];
    let server = FerryServer::start_with_operator_token(port, &config, &envs, OPERATOR_TOKEN);
    let digest = push(&build, "1.0", &[100_000]);
    wait_for_tag(&server, &dev, "dev", &digest, Duration::from_secs(60));
    let id = id_of(&promotion(&server, "dev", &digest));
    server.wait_for_log(": promoted sha256:", Duration::from_secs(30));

    let log = server.log();
    // `ferry: listening on …` is printed to stdout, not logged.
    let lines: Vec<Value> = log
        .lines()
        .filter(|l| !l.starts_with("ferry: "))
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not a JSON line ({e}): {l}\n{log}")))
        .collect();
    let promoted: Vec<&Value> = lines
        .iter()
        .filter(|l| l["fields"]["message"].as_str().is_some_and(|m| m.contains(": promoted sha256:")))
        .collect();
    assert_eq!(promoted.len(), 1, "{log}");
    assert_eq!(promoted[0]["span"]["promotion"], id.as_str(), "the promotion id is on the job's line: {log}");
    assert_eq!(promoted[0]["span"]["pipeline"], PIPELINE, "{log}");
}

#[test]
fn webhook_notifier_sends_a_signed_deployment_that_opens_the_after_gate() {
    let receiver = Receiver::start();
    let port = free_port();
    let build = notifying_build_registry(port);
    let (dev, prod) = (Registry::plain(), Registry::plain());
    let stages = format!(
        "[[pipelines.stages]]\nname = \"dev\"\ntarget = \"{}/{REPO}\"\nnotify = {{ kind = \"webhook\", url = \"http://127.0.0.1:{}/deployed\", secret_env = \"E2E_NOTIFY_SECRET\" }}\n[[pipelines.stages]]\nname = \"prod\"\ntarget = \"{}/{REPO}\"\ngate = \"after\"\n",
        dev.host(),
        receiver.port,
        prod.host()
    );
    let server = start_ferry_with_stages(port, build.host(), &[dev.host(), prod.host()], &stages, "");
    let digest = push(&build, "1.0", &[200_000]);
    // dev's notifier confirms the deployment, so prod's `after` gate opens without a release event.
    wait_for_tag(&server, &prod, "prod", &digest, Duration::from_secs(60));
    let received = receiver.received.lock().unwrap().clone();
    assert_eq!(received.len(), 1, "one deployment notification: {received:#?}");
    let (signed, event) = &received[0];
    assert!(signed, "the notification carries a valid X-Ferry-Signature");
    assert_eq!(event["event"], "ferry.deployed");
    assert_eq!(event["deployment"]["stage"], "dev");
    assert_eq!(event["deployment"]["image"], format!("{}/{REPO}@{digest}", dev.host()));
    assert_eq!(event["deployment"]["rollback"], false);
}

#[test]
fn a_promotion_after_a_rollback_passes_the_gate_again_with_its_own_record() {
    let port = free_port();
    let build = notifying_build_registry(port);
    let (dev, prod) = (Registry::plain(), Registry::plain());
    let server = start_ferry(port, build.host(), &[("dev", dev.host(), "auto"), ("prod", prod.host(), "approval")], "");
    let promote_to_prod = |tag: &str| {
        let digest = push(&build, tag, &[200_000]);
        let id = id_of(&wait_for_pending(&server, "prod", &digest));
        server.cli("approve").arg(&id).args(["--user", "bob"]).run().success();
        wait_for_tag(&server, &prod, tag, &digest, Duration::from_secs(60));
        (digest, id)
    };
    let (first, _) = promote_to_prod("1.0");
    let (second, second_id) = promote_to_prod("1.1");
    server.cli("rollback").args([PIPELINE, "prod", "--user", "oscar"]).run().success();
    assert_digest_exact(&prod, "prod", &first);

    // Bringing 1.1 back is a new promotion: it waits for approval like any other.
    server.cli("promote").args([PIPELINE, "1.1", "--to", "prod", "--user", "alice"]).run().success();
    let parked = wait_for_pending(&server, "prod", &second);
    assert_eq!(parked["state"], "awaiting_approval", "{parked:#}");
    assert_eq!(parked["approvals"], json!([]), "the old promotion's approvals were carried over: {parked:#}");
    assert_ne!(id_of(&parked), second_id, "the re-promotion reused the old record");
    std::thread::sleep(Duration::from_millis(500));
    assert_digest_exact(&prod, "prod", &first);

    // History is append-only: the first promotion of 1.1 is unchanged.
    let old = history(&server, Some("prod")).into_iter().find(|r| r["id"] == second_id.as_str()).unwrap();
    assert_eq!(old["state"], "succeeded", "{old:#}");
    assert_eq!(old["trigger"], "previous-stage:dev", "{old:#}");
    assert_eq!(old["approvals"][0]["by"], "bob", "{old:#}");

    server.cli("approve").arg(id_of(&parked)).args(["--user", "bob"]).run().success();
    wait_until("prod runs 1.1 again", Duration::from_secs(60), &server, || {
        (stage(&pipeline_status(&server), "prod")["current"]["digest"] == second.as_str()).then_some(())
    });
    assert_digest_exact(&prod, "prod", &second);
}

#[test]
fn a_new_tag_on_a_promoted_digest_is_applied_at_every_stage_it_reached() {
    let port = free_port();
    let build = notifying_build_registry(port);
    let (dev, test) = (Registry::plain(), Registry::plain());
    let server = start_ferry(port, build.host(), &[("dev", dev.host(), "auto"), ("test", test.host(), "auto")], "");
    let digest = push(&build, "1.4.2", &[200_000]);
    wait_for_tag(&server, &test, "1.4.2", &digest, Duration::from_secs(60));

    // The same image pushed again as `stable`: new information, not a duplicate.
    let manifest = build.client().manifest(REPO, "1.4.2").unwrap();
    build.client().push_manifest(REPO, "stable", &manifest.content_type, &manifest.bytes);
    wait_for_tag(&server, &dev, "stable", &digest, Duration::from_secs(60));
    wait_for_tag(&server, &test, "stable", &digest, Duration::from_secs(60));
    let tagged: Vec<Value> =
        history(&server, Some("test")).into_iter().filter(|r| r["digest"] == digest.as_str()).collect();
    let tags: Vec<&str> = tagged.iter().filter_map(|r| r["tag"].as_str()).collect();
    assert!(tags.contains(&"stable") && tags.contains(&"1.4.2"), "each tag is recorded: {tagged:#?}");
}

#[test]
fn approvals_count_people_not_spellings_and_only_allowed_approvers() {
    let port = free_port();
    let build = notifying_build_registry(port);
    let (dev, prod) = (Registry::plain(), Registry::plain());
    let stages = format!(
        "[[pipelines.stages]]\nname = \"dev\"\ntarget = \"{}/{REPO}\"\n[[pipelines.stages]]\nname = \"prod\"\ntarget = \"{}/{REPO}\"\ngate = \"approval\"\napprovers = 2\napprovers_allowed = [\"Bob\", \"carol\", \"alice\"]\n",
        dev.host(),
        prod.host()
    );
    let server = start_ferry_with_stages(port, build.host(), &[dev.host(), prod.host()], &stages, "");
    let hotfix = push(&dev, "1.0.1", &[100_000]);
    server.cli("promote").args([PIPELINE, "1.0.1", "--to", "prod", "--user", "alice"]).run().success();
    let id = id_of(&wait_for_pending(&server, "prod", &hotfix));

    for alias in ["Alice", "ALICE", "ａｌｉｃｅ"] {
        let refused = server.cli("approve").arg(&id).args(["--user", alias]).run();
        let error = refused.failure();
        assert!(error.contains("403") && error.contains("cannot approve"), "{alias}: {error}");
    }
    let refused = server.cli("approve").arg(&id).args(["--user", "dave"]).run();
    let error = refused.failure();
    assert!(error.contains("403") && error.contains("approvers_allowed"), "{error}");
    let refused = server.cli("approve").arg(&id).args(["--user", "bo\u{200B}b"]).run();
    let error = refused.failure();
    assert!(error.contains("400") && error.contains("invisible"), "{error}");

    let first = server.cli("approve").arg(&id).args(["--user", "bob"]).run();
    assert!(first.success().contains("(1 of 2)"), "{}", first.stdout);
    let again = server.cli("approve").arg(&id).args(["--user", "BOB"]).run();
    assert!(again.success().contains("(1 of 2): still waiting"), "BOB is bob: {}", again.stdout);
    assert!(again.stdout.contains("already counted: BOB approved"), "says so: {}", again.stdout);
    let json = server.cli("approve").args([&id, "--json", "--user", "bob"]).run().json();
    assert_eq!((&json["already_counted"], &json["approvals"]), (&json!(true), &json!(1)), "{json:#}");
    std::thread::sleep(Duration::from_millis(500));
    assert!(prod.client().manifest(REPO, "1.0.1").is_none(), "one person's two spellings released the promotion");

    server.cli("approve").arg(&id).args(["--user", "Carol"]).run().success();
    wait_for_tag(&server, &prod, "1.0.1", &hotfix, Duration::from_secs(60));
    let record = promotion(&server, "prod", &hotfix);
    let details: Vec<&str> = record["gates"].as_array().unwrap().iter().filter_map(|g| g["detail"].as_str()).collect();
    assert!(
        details.iter().any(|d| d.contains("bob approved")
            && d.contains("through operator-token (X-Ferry-User as claimed, unverified)")),
        "the ledger says how each approval came in: {details:#?}"
    );
    assert!(details.contains(&"approved by bob, carol"), "{details:#?}");
}

/// `ferry dlq list --json`.
fn dead_letters(server: &FerryServer) -> Vec<Value> {
    let list = server.cli("dlq").arg("list").arg("--json").run().json();
    list.as_array().cloned().unwrap_or_else(|| panic!("dlq list is not a list: {list:#}"))
}

#[test]
fn a_missing_source_is_dead_lettered_at_once_with_the_reason() {
    let port = free_port();
    let build = notifying_build_registry(port);
    let dev = Registry::plain();
    // Retries would be quick here: a missing image still must not be retried at all.
    let server = start_ferry(
        port,
        build.host(),
        &[("dev", dev.host(), "auto")],
        "[worker]\nretry_base_ms = 50\nmax_attempts = 5\n",
    );
    server.cli("promote").args([PIPELINE, "9.9.9", "--to", "dev", "--user", "alice"]).run().success();
    let letter = wait_until("the promotion of 9.9.9 is dead-lettered", Duration::from_secs(60), &server, || {
        dead_letters(&server).into_iter().next()
    });
    assert_eq!(letter["receive_count"], 1, "a missing source was retried: {letter:#}");
    let error = letter["last_error"].as_str().unwrap();
    assert!(error.contains("not found error, not retried") && error.contains("9.9.9"), "{error}");
}

#[test]
fn an_operator_action_during_a_registry_outage_answers_503() {
    let port = free_port();
    let build = notifying_build_registry(port);
    let dev = Registry::plain();
    let server = start_ferry(port, build.host(), &[("dev", dev.host(), "auto")], "");
    let first = push(&build, "1.0", &[100_000]);
    wait_for_tag(&server, &dev, "dev", &first, Duration::from_secs(60));
    let second = push(&build, "1.1", &[100_000]);
    wait_for_tag(&server, &dev, "dev", &second, Duration::from_secs(60));
    drop(dev);
    let refused = server.cli("rollback").args([PIPELINE, "dev", "--user", "oscar"]).run();
    let error = refused.failure();
    assert!(error.contains("503") && error.contains("cannot reach"), "{error}");
    assert!(!error.contains("--plain-http") && !error.contains("--src-creds"), "serve advises CLI flags: {error}");
}

/// `ferry promote --wait` (and `approve --wait`) reports what became of the job, with exit codes
/// that tell refused (3) from done (0), through the HTTP API and on the stores directly.
#[test]
fn promote_waits_and_reports_the_outcome() {
    let port = free_port();
    let (source, dev, prod) = (Registry::plain(), Registry::plain(), Registry::plain());
    let server =
        start_ferry(port, source.host(), &[("dev", dev.host(), "auto"), ("prod", prod.host(), "approval")], "");
    let digest = push(&source, "1.0", &[200_000]);

    // A good tag: promoted, with the target and the digest.
    let promoted = server.cli("promote").args([PIPELINE, "1.0", "--to", "dev", "--wait", "--user", "alice"]).run();
    let out = promoted.success();
    assert!(out.contains("promoted") && out.contains(&format!("{}/{REPO}@{digest}", dev.host())), "{out}");
    assert_digest_exact(&dev, "1.0", &digest);

    // A tag that does not exist: refused at once, exit 3, the reason printed.
    let missing = server.cli("promote").args([PIPELINE, "9.9.9", "--to", "dev", "--wait", "--user", "alice"]).run();
    let error = missing.failure();
    assert_eq!(missing.status.code(), Some(3), "{error}");
    assert!(error.contains("refused") && error.contains("shop/api:9.9.9 does not exist"), "{error}");

    // The same through the stores (`--config`), not the API.
    let local = support::cli::ferry("promote")
        .args(["--config".as_ref(), server.config_path().as_os_str()])
        .args([PIPELINE, "9.9.8", "--to", "dev", "--wait", "--user", "alice"])
        .env("E2E_DISTRIBUTION_SECRET", DISTRIBUTION_SECRET)
        .env("E2E_GENERIC_SECRET", GENERIC_SECRET)
        .timeout(Duration::from_secs(60))
        .run();
    let error = local.failure();
    assert_eq!(local.status.code(), Some(3), "{error}");
    assert!(error.contains("refused") && error.contains("9.9.8"), "{error}");

    // --no-wait keeps the old behaviour: the job id, exit 0, whatever becomes of it.
    let queued = server.cli("promote").args([PIPELINE, "9.9.7", "--to", "dev", "--no-wait", "--user", "alice"]).run();
    assert!(queued.success().starts_with("queued job "), "{}", queued.stdout);
    let job = queued.stdout["queued job ".len()..].split(':').next().unwrap().to_string();
    // GET /api/jobs/{id} leads from that id to the outcome.
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let client = reqwest::Client::new();
    let answer = wait_until("the job's outcome", Duration::from_secs(60), &server, || {
        let request = client.get(server.url(&format!("/api/jobs/{job}"))).bearer_auth(OPERATOR_TOKEN).send();
        let value: Value = runtime.block_on(async { request.await.ok()?.json().await.ok() })?;
        (value["state"] != "queued" && value["state"] != "running").then_some(value)
    });
    assert_eq!(answer["state"], "refused", "{answer:#}");
    assert!(answer["error"].as_str().unwrap().contains("9.9.7"), "{answer:#}");

    // An approval stage: parked, with the reason; approving as someone else promotes it.
    let parked = server.cli("promote").args([PIPELINE, "1.0", "--to", "prod", "--wait", "--user", "alice"]).run();
    let out = parked.success();
    assert!(out.contains("parked") && out.contains("waiting for approval (0 of 1)"), "{out}");
    let id = id_of(&wait_for_pending(&server, "prod", &digest));
    let approved = server.cli("approve").args([&id, "--wait", "--user", "bob"]).run();
    let out = approved.success();
    assert!(out.contains("promotion continues") && out.contains(&format!("promoted ({id})")), "{out}");
    assert_digest_exact(&prod, "1.0", &digest);

    // Rejected earlier: asking again is refused, not silently accepted.
    let second = push(&source, "2.0", &[100_000]);
    server.cli("promote").args([PIPELINE, "2.0", "--to", "dev", "--wait", "--user", "alice"]).run().success();
    let pending = id_of(&wait_for_pending(&server, "prod", &second));
    server.cli("reject").args([&pending, "--user", "bob"]).run().success();
    let again = server.cli("promote").args([PIPELINE, "2.0", "--to", "prod", "--wait", "--user", "alice"]).run();
    let error = again.failure();
    assert_eq!(again.status.code(), Some(3), "{error}");
    assert!(error.contains("refused") && error.contains("rejected"), "{error}");
}

/// A soak gate opens when its time is up, not at the next sweep: with `sweep_secs = 30`, a 3 s
/// soak lands in prod well before the sweep would have looked again.
#[test]
fn a_soak_gate_opens_on_time_not_at_the_next_sweep() {
    let Soaked { waited_ms: waited, server, .. } = soak_into_prod(30);
    assert!(waited >= 3_000, "prod came {waited} ms after dev, before the 3 s soak");
    assert!(waited < 15_000, "prod came {waited} ms after dev: the soak waited for the sweep\n{}", server.log());
}

/// What a parked promotion waits for is computed when `ferry status` asks, not frozen when it
/// parked: an approval counts up, a soak counts down.
#[test]
fn waiting_texts_are_computed_when_shown() {
    let port = free_port();
    let source = Registry::plain();
    let (dev, prod, later) = (Registry::plain(), Registry::plain(), Registry::plain());
    let stages = format!(
        "[[pipelines.stages]]\nname = \"dev\"\ntarget = \"{}/{REPO}\"\n\
         [[pipelines.stages]]\nname = \"prod\"\ntarget = \"{}/{REPO}\"\ngate = \"approval\"\napprovers = 2\n\
         [[pipelines.stages]]\nname = \"archive\"\ntarget = \"{}/{REPO}\"\ngate = \"soak\"\nsoak_secs = 600\n",
        dev.host(),
        prod.host(),
        later.host()
    );
    let server = start_ferry_with_stages(port, source.host(), &[dev.host(), prod.host(), later.host()], &stages, "");
    let digest = push(&source, "1.0", &[100_000]);
    server.cli("promote").args([PIPELINE, "1.0", "--to", "dev", "--wait", "--user", "alice"]).run().success();

    let id = id_of(&wait_for_pending(&server, "prod", &digest));
    let text = server.cli("status").run();
    assert!(text.success().contains("waiting for approval (0 of 2)"), "{}", text.stdout);
    server.cli("approve").args([&id, "--user", "bob"]).run().success();
    let text = server.cli("status").run();
    assert!(text.success().contains("waiting for approval (1 of 2)"), "{}", text.stdout);
    server.cli("approve").args([&id, "--user", "carol", "--wait"]).run().success();

    let seconds_to_go = || {
        let status = pipeline_status(&server);
        let pending = &stage(&status, "archive")["pending"][0];
        let waiting = pending["waiting"].as_str().unwrap_or_else(|| panic!("{status:#}")).to_string();
        let to_go = waiting.strip_prefix("soaking in prod: ").and_then(|w| w.strip_suffix(" s to go"));
        to_go.unwrap_or_else(|| panic!("{waiting}")).parse::<u64>().unwrap()
    };
    wait_for_pending(&server, "archive", &digest);
    let first = seconds_to_go();
    std::thread::sleep(Duration::from_millis(2_100));
    let then = seconds_to_go();
    assert!(then < first && first <= 600, "the soak did not count down: {first} s, then {then} s");
}

/// A job that fails for good: `promote --wait` says failed (exit 1) with the error and how to
/// redrive; `dlq redrive --wait` then reports it promoted. A job no worker takes: exit 4.
#[test]
fn a_failed_job_is_reported_and_a_redrive_waits_for_its_outcome() {
    let port = free_port();
    let source = Registry::plain();
    let (dev, broken, server) = start_ferry_with_failing_dev(port, &source);
    let digest = push(&source, "1.0", &[100_000]);

    let failed = server.cli("promote").args([PIPELINE, "1.0", "--to", "dev", "--wait", "--user", "alice"]).run();
    let error = failed.failure();
    assert_eq!(failed.status.code(), Some(1), "{error}");
    assert!(error.contains("failed") && error.contains(broken.host()) && error.contains("dlq redrive"), "{error}");
    let job = failed.stdout.strip_prefix("queued job ").and_then(|s| s.split(':').next()).unwrap().to_string();
    assert!(error.contains(&job), "names the job to redrive: {error}");

    broken.set_fault(Fault::PassThrough);
    let redriven = server.cli("dlq").args(["redrive", &job, "--wait"]).run();
    let out = redriven.success();
    assert!(out.contains("back in the queue") && out.contains("promoted") && out.contains(&digest), "{out}");
    assert_digest_exact(&dev, "1.0", &digest);

    // No worker: the wait ends at the timeout with exit 4, saying the job goes on.
    let idle_port = free_port();
    let idle = start_ferry(idle_port, source.host(), &[("dev", dev.host(), "auto")], "[worker]\nenabled = false\n");
    let waited =
        idle.cli("promote").args([PIPELINE, "1.0", "--to", "dev", "--wait", "--timeout", "1", "--user", "a"]).run();
    let error = waited.failure();
    assert_eq!(waited.status.code(), Some(4), "{error}");
    assert!(error.contains("still queued after 1 s") && error.contains("goes on"), "{error}");
}

/// Every key of a JSON answer that holds a time ends in `_ms` (Unix milliseconds).
fn assert_times_are_ms(value: &Value, path: &str) {
    match value {
        Value::Object(map) => {
            for (key, value) in map {
                let time_like = key.ends_with("_at") || key.contains("_at_") || key == "since" || key.ends_with("time");
                assert!(!time_like || key.ends_with("_ms"), "{path}.{key} is a time not named *_ms");
                if key.ends_with("_ms") {
                    assert!(value.is_i64() || value.is_null(), "{path}.{key} is not integer milliseconds: {value}");
                }
                assert_times_are_ms(value, &format!("{path}.{key}"));
            }
        }
        Value::Array(items) => items.iter().for_each(|v| assert_times_are_ms(v, path)),
        _ => {}
    }
}

/// `ferry show` leads from a job id (from `promote` or a webhook's answer) to its promotion,
/// with gate decisions, approvals (who, when, channel), attempts and the job's outcome; over the
/// API and on the stores. Every command prints JSON with `--json`, times as `*_ms`.
#[test]
fn show_follows_a_job_to_its_promotion_and_every_command_speaks_json() {
    let port = free_port();
    let (source, dev, prod) = (Registry::plain(), Registry::plain(), Registry::plain());
    let server =
        start_ferry(port, source.host(), &[("dev", dev.host(), "auto"), ("prod", prod.host(), "approval")], "");
    let digest = push(&source, "1.0", &[100_000]);

    // A job id from `ferry promote --json` leads to the promotion.
    let promoted = server.cli("promote").args([PIPELINE, "1.0", "--to", "dev", "--wait", "--json", "--user", "alice"]);
    let answer = promoted.run().json();
    assert_eq!(answer["outcome"]["state"], "promoted", "{answer:#}");
    assert_times_are_ms(&answer, "promote");
    let job = answer["job"].as_str().unwrap().to_string();
    let shown = server.cli("show").arg(&job).run();
    let text = shown.success();
    let dev_id = answer["outcome"]["promotion"].as_str().unwrap();
    assert!(text.contains(&format!("promotion {dev_id}  {PIPELINE} → dev")), "{text}");
    assert!(text.contains("state      succeeded") && text.contains(&digest), "{text}");
    assert!(text.contains(&format!("job {job}: promoted")) && text.contains("trigger    manual by alice"), "{text}");

    // An approval stage: parked, approved by bob; show names who, when and through what.
    let parked = server.cli("promote").args([PIPELINE, "1.0", "--to", "prod", "--wait", "--json", "--user", "alice"]);
    let answer = parked.run().json();
    assert_eq!(answer["outcome"]["state"], "parked", "{answer:#}");
    let id = answer["outcome"]["promotion"].as_str().unwrap().to_string();
    let approved = server.cli("approve").args([&id, "--wait", "--json", "--user", "bob"]).run().json();
    assert_eq!((approved["released"].as_bool(), &approved["outcome"]["state"]), (Some(true), &json!("promoted")));
    assert_times_are_ms(&approved, "approve");
    let shown = server.cli("show").args([&id, "--json"]).run().json();
    assert_times_are_ms(&shown, "show");
    assert_eq!(shown["promotion"]["state"], "succeeded", "{shown:#}");
    assert_eq!(shown["approvals"][0]["by"], "bob", "{shown:#}");
    assert_eq!(shown["approvals"][0]["via"], "operator-token (X-Ferry-User as claimed, unverified)", "{shown:#}");
    assert!(shown["approvals"][0]["at_ms"].is_i64(), "{shown:#}");
    assert_eq!(shown["job"]["state"], "promoted", "{shown:#}");
    let gates: Vec<&str> =
        shown["promotion"]["gates"].as_array().unwrap().iter().map(|g| g["gate"].as_str().unwrap()).collect();
    assert!(gates.contains(&"approval"), "{shown:#}");
    let text = server.cli("show").arg(&id).run();
    let text = text.success();
    assert!(
        text.contains("approvals (1):")
            && text.contains("bob  through operator-token (X-Ferry-User as claimed, unverified)"),
        "{text}"
    );
    assert!(text.contains("gate decisions (") && text.contains("attempts   "), "{text}");
    // On the stores directly, the same.
    let local = support::cli::ferry("show")
        .args(["--config".as_ref(), server.config_path().as_os_str(), id.as_ref(), "--json".as_ref()])
        .env("E2E_DISTRIBUTION_SECRET", DISTRIBUTION_SECRET)
        .env("E2E_GENERIC_SECRET", GENERIC_SECRET)
        .run()
        .json();
    assert_eq!(local["approvals"], shown["approvals"], "{local:#}");

    // A job id from a webhook's answer leads to its promotion too.
    let second = push(&source, "2.0", &[100_000]);
    let (_, answer) = server
        .post_generic(GENERIC_SECRET, &json!({ "repository": format!("{}/{REPO}", source.host()), "tag": "2.0" }));
    let hook_job = answer["jobs"][0]["id"].as_str().unwrap_or_else(|| panic!("{answer:#}")).to_string();
    let shown = wait_until("the webhook's job reached its promotion", Duration::from_secs(60), &server, || {
        let run = server.cli("show").args([&hook_job, "--json"]).run();
        run.status.success().then(|| run.json()).filter(|s| s["promotion"]["digest"] == second)
    });
    assert_eq!(shown["job"]["id"], hook_job, "{shown:#}");
    assert_eq!(shown["promotion"]["stage"], "dev", "{shown:#}");

    // Reject, rollback and redrive speak JSON too; a rollback id (`r-…`) shows like a promotion.
    let pending = id_of(&wait_for_pending(&server, "prod", &second));
    let rejected = server.cli("reject").args([&pending, "--json", "--user", "carol"]).run().json();
    assert_eq!(rejected["state"], "rejected", "{rejected:#}");
    let rolled = server.cli("rollback").args([PIPELINE, "dev", "--json", "--user", "oscar"]).run().json();
    assert_eq!((&rolled["digest"], &rolled["trigger"]), (&json!(digest), &json!("rollback")), "{rolled:#}");
    assert_times_are_ms(&rolled, "rollback");
    let text = server.cli("show").arg(id_of(&rolled)).run();
    assert!(text.success().contains("trigger    rollback by oscar"), "{}", text.stdout);
    // A waited-for job that is refused: exit 3, the error as JSON with the job's state.
    let refused = server.cli("promote").args([PIPELINE, "9.9.9", "--to", "dev", "--wait", "--json", "--user", "alice"]);
    let refused = refused.run();
    assert_eq!(refused.status.code(), Some(3), "{}", refused.stdout);
    let error: Value = serde_json::from_str(refused.stdout.trim()).unwrap();
    assert_eq!((&error["error"]["class"], &error["error"]["job"]["state"]), (&json!("refused"), &json!("refused")));
    assert!(error["error"]["message"].as_str().unwrap().contains("9.9.9"), "{error:#}");
    let missing = server.cli("dlq").args(["redrive", "no-such-job", "--json"]).run();
    assert_eq!(missing.status.code(), Some(1));
    let error: Value = serde_json::from_str(missing.stdout.trim()).unwrap();
    assert_eq!(error["error"]["class"], "not_found", "{error:#}");
    let status = server.cli("status").arg("--json").run().json();
    assert_times_are_ms(&status, "status");
    assert_times_are_ms(&server.cli("history").args([PIPELINE, "--json"]).run().json(), "history");
    let config = support::cli::ferry("config")
        .args(["check".as_ref(), server.config_path().as_os_str(), "--json".as_ref()])
        .env("E2E_DISTRIBUTION_SECRET", DISTRIBUTION_SECRET)
        .env("E2E_GENERIC_SECRET", GENERIC_SECRET)
        .env("FERRY_TEST_OPERATOR_TOKEN", OPERATOR_TOKEN)
        .run()
        .json();
    assert_eq!((&config["ok"], &config["pipelines"]), (&json!(true), &json!(1)), "{config:#}");
}

/// Every operator action is one audit line in `ferry serve`'s log: who, what, pipeline, stage,
/// promotion and result; a rollback names both digests. `history` shows approvers under a header.
#[test]
fn operator_actions_leave_an_audit_trail_in_the_log() {
    let port = free_port();
    let (source, dev, prod) = (Registry::plain(), Registry::plain(), Registry::plain());
    let server =
        start_ferry(port, source.host(), &[("dev", dev.host(), "auto"), ("prod", prod.host(), "approval")], "");
    let first = push(&source, "1.0", &[100_000]);
    server.cli("promote").args([PIPELINE, "1.0", "--to", "dev", "--wait", "--user", "alice"]).run().success();
    let id = id_of(&wait_for_pending(&server, "prod", &first));
    server.cli("approve").args([&id, "--wait", "--user", "bob"]).run().success();
    let second = push(&source, "1.1", &[100_000]);
    server.cli("promote").args([PIPELINE, "1.1", "--to", "dev", "--wait", "--user", "alice"]).run().success();
    let pending = id_of(&wait_for_pending(&server, "prod", &second));
    server.cli("reject").args([&pending, "--reason", "smoke test failed", "--user", "carol"]).run().success();
    let rolled = server.cli("rollback").args([PIPELINE, "dev", "--json", "--user", "oscar"]).run().json();
    let refused = server.cli("approve").args([&pending, "--user", "mallory"]).run();
    assert_eq!(refused.status.code(), Some(1));
    server.cli("dlq").args(["redrive", "no-such-job", "--user", "oscar"]).run().failure();

    // The log is written in batches: the last action's line comes within moments.
    server.wait_for_log("action=\"redrive\"", Duration::from_secs(10));
    let log = server.log();
    let audit = |action: &str, who: &str, about: &str| -> String {
        let lines: Vec<&str> = log
            .lines()
            .filter(|l| l.contains(&format!("action=\"{action}\"")) && l.contains(&format!("who=\"{who}\"")))
            .filter(|l| l.contains(about))
            .collect();
        assert_eq!(lines.len(), 1, "one audit line for {action} by {who} ({about}):\n{log}");
        lines[0].to_string()
    };
    let line = audit("promote", "alice", "reference 1.0\"");
    assert!(line.contains("reference 1.0") && line.contains("result=\"ok: queued job "), "{line}");
    assert!(line.contains(&format!("pipeline=\"{PIPELINE}\"")) && line.contains("stage=\"dev\""), "{line}");
    let line = audit("approve", "bob", "");
    assert!(line.contains(&format!("promotion=\"{id}\"")) && line.contains("stage=\"prod\""), "{line}");
    assert!(line.contains("result=\"ok: 1 of 1 approvals: released") && line.contains("via operator-token"), "{line}");
    assert!(
        line.contains("channel=\"operator-token\"") && line.contains("verified=false"),
        "break-glass is recorded as such: {line}"
    );
    let line = audit("reject", "carol", "");
    assert!(line.contains(&format!("promotion=\"{pending}\"")) && line.contains("smoke test failed"), "{line}");
    assert!(line.contains("result=\"ok: rejected\""), "{line}");
    let line = audit("rollback", "oscar", "");
    assert!(line.contains(&format!("rollback from {second} to {first}")), "{line}");
    assert!(
        line.contains(&format!("promotion=\"{}\"", id_of(&rolled))) && line.contains("result=\"ok: succeeded\""),
        "{line}"
    );
    let line = audit("approve", "mallory", "");
    assert!(line.contains("result=\"conflict: ") && line.contains(&format!("promotion=\"{pending}\"")), "{line}");
    let line = audit("redrive", "oscar", "");
    assert!(line.contains("result=\"not_found: no dead letter no-such-job\""), "{line}");

    let history = server.cli("history").args([PIPELINE, "prod"]).run();
    let text = history.success();
    let header = text.lines().next().unwrap();
    assert!(header.starts_with("WHEN") && header.contains("STAGE") && header.contains("APPROVERS"), "{text}");
    let approved = text.lines().find(|l| l.contains("succeeded")).unwrap_or_else(|| panic!("{text}"));
    assert!(approved.contains("approved by bob"), "{text}");
}

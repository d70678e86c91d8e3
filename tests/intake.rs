//! Intake end to end: a real `docker-registry` whose `notifications:` endpoint points at a
//! running `ferry serve`; a skopeo push becomes exactly one durably queued promotion job.

mod support;

use std::time::{Duration, Instant};

use ferry_core::queue::{JobQueue, SqliteQueue, SqliteQueueOptions};
use support::registry::free_port;
use support::{FerryServer, OciLayout, Registry, ferry};

const SECRET: &str = "e2e-distribution-secret";

fn config(build: &Registry, target: &Registry) -> String {
    format!(
        r#"
# Intake only: the queue is inspected, so no worker takes the job away.
[worker]
enabled = false

[registries."{build}"]
plain_http = true
[registries."{target}"]
plain_http = true

[sources.distribution]
secret_env = "E2E_DISTRIBUTION_SECRET"
header = "X-Ferry-Secret"

[[pipelines]]
name = "shop-api"
source = "{build}/shop/api"
  [[pipelines.stages]]
  name = "dev"
  target = "{target}/shop/api"
"#,
        build = build.host(),
        target = target.host()
    )
}

/// Jobs in the queue file (read after the server is stopped).
fn queued_jobs(server: &FerryServer) -> Vec<serde_json::Value> {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    runtime.block_on(async {
        let queue = SqliteQueue::open(&server.queue_path(), SqliteQueueOptions::default()).unwrap();
        queue.receive(100, Duration::from_secs(60)).await.unwrap().into_iter().map(|d| d.payload).collect()
    })
}

#[test]
fn registry_push_notification_queues_exactly_one_promotion() {
    let port = free_port();
    let build =
        Registry::plain_notifying(&format!("http://127.0.0.1:{port}/hooks/distribution"), "X-Ferry-Secret", SECRET);
    let target = Registry::plain();
    let mut server = FerryServer::start(port, &config(&build, &target), &[("E2E_DISTRIBUTION_SECRET", SECRET)]);

    let mut layout = OciLayout::new();
    let image = layout.add_image("1.0", &[300_000, 200_000]);
    let pushed = build.skopeo_push(&layout.reference("1.0"), "shop/api:1.0", &[]);

    // The registry sends events for blobs and the manifest; wait for the promotion, then a
    // little longer so a stray second one would be seen.
    let deadline = Instant::now() + Duration::from_secs(20);
    while !server.log().contains("promotion queued") {
        assert!(
            Instant::now() < deadline,
            "no promotion queued; ferry log:\n{}\nregistry log:\n{}",
            server.log(),
            build.log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    std::thread::sleep(Duration::from_secs(1));
    server.kill();

    let jobs = queued_jobs(&server);
    assert_eq!(jobs.len(), 1, "exactly one job: {jobs:#?}");
    let job = &jobs[0];
    assert_eq!(job["kind"], "promote");
    assert_eq!(job["pipeline"], "shop-api");
    assert_eq!(job["stage"], "dev");
    assert_eq!(job["request"]["sender"], "distribution");
    assert_eq!(job["request"]["registry"], build.host());
    assert_eq!(job["request"]["tag"], "1.0");
    assert_eq!(job["request"]["digest"], pushed.computed_digest(), "the pushed manifest's digest");
    let _ = image;
}

#[test]
fn a_wrong_secret_from_the_registry_queues_nothing() {
    let port = free_port();
    let build = Registry::plain_notifying(
        &format!("http://127.0.0.1:{port}/hooks/distribution"),
        "X-Ferry-Secret",
        "not-the-secret",
    );
    let target = Registry::plain();
    let mut server = FerryServer::start(port, &config(&build, &target), &[("E2E_DISTRIBUTION_SECRET", SECRET)]);
    let mut layout = OciLayout::new();
    layout.add_image("1.0", &[100_000]);
    build.skopeo_push(&layout.reference("1.0"), "shop/api:1.0", &[]);
    let deadline = Instant::now() + Duration::from_secs(20);
    while !server.log().contains("webhook refused") {
        assert!(Instant::now() < deadline, "the refused delivery was never logged:\n{}", server.log());
        std::thread::sleep(Duration::from_millis(100));
    }
    server.kill();
    assert!(queued_jobs(&server).is_empty());
    assert!(!server.log().contains("not-the-secret"), "secrets are never logged");
}

#[test]
fn serve_refuses_to_start_without_its_secrets() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ferry.toml");
    std::fs::write(&path, "[registries.\"r.io\"]\n[sources.generic]\nsecret_env = \"FERRY_TEST_UNSET_SECRET\"\n")
        .unwrap();
    let run = ferry("serve").arg("--config").arg(&path).arg("--listen").arg("127.0.0.1:0").run();
    let error = run.failure();
    assert!(error.contains("FERRY_TEST_UNSET_SECRET"), "{error}");
}

#[test]
fn config_check_accepts_the_quickstart_and_locates_errors() {
    let quickstart = concat!(env!("CARGO_MANIFEST_DIR"), "/examples/quickstart/ferry.toml");
    let run = ferry("config").arg("check").arg(quickstart).run();
    assert!(run.status.success(), "{}", run.stderr);
    assert!(run.stdout.contains("ok (3 registries, 2 sources, 1 pipelines)"), "{}", run.stdout);

    let dir = tempfile::tempdir().unwrap();
    let broken = dir.path().join("broken.toml");
    let text =
        std::fs::read_to_string(quickstart).unwrap().replace("127.0.0.1:5003/shop/api", "127.0.0.1:6000/shop/api");
    let line = text.lines().position(|l| l.contains("127.0.0.1:6000")).unwrap() + 1;
    std::fs::write(&broken, text).unwrap();
    let run = ferry("config").arg("check").arg(&broken).run();
    run.failure();
    // The finding's own line (the summary `error:` line after it only counts).
    let error = &run.stderr;
    assert!(error.contains(&format!("broken.toml:{line}:")), "names file and line {line}: {error}");
    assert!(error.contains("pipelines[0].stages[1].target"), "names the key: {error}");
    assert!(error.contains("127.0.0.1:6000"), "{error}");
}

/// Rows in the replay guard's file (WAL: readable while `ferry serve` writes it).
fn stored_signatures(server: &FerryServer) -> i64 {
    let path = server.dir().join("data").join("replay.db");
    let Ok(conn) = rusqlite::Connection::open_with_flags(&path, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY) else {
        return 0;
    };
    conn.query_row("SELECT count(*) FROM accepted_signatures", [], |row| row.get(0)).unwrap_or(0)
}

#[test]
fn a_replayed_generic_signature_is_refused_in_any_spelling_and_after_a_restart() {
    let port = free_port();
    let (build, target) = (Registry::plain(), Registry::plain());
    let secret = "e2e-generic-secret";
    let config = format!("{}\n[sources.generic]\nsecret_env = \"E2E_GENERIC_SECRET\"\n", config(&build, &target));
    let mut server =
        FerryServer::start(port, &config, &[("E2E_DISTRIBUTION_SECRET", SECRET), ("E2E_GENERIC_SECRET", secret)]);
    let body = format!(r#"{{"repository":"{}/shop/api","tag":"1.0"}}"#, build.host());
    let timestamp = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs().to_string();
    let signature = ferry_core::intake::verify::generic_signature(secret.as_bytes(), &timestamp, body.as_bytes());
    let url = server.url("/hooks/generic");
    let send = |signature: &str| {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        runtime.block_on(async {
            let response = reqwest::Client::new()
                .post(&url)
                .header("content-type", "application/json")
                .header("x-ferry-timestamp", &timestamp)
                .header("x-ferry-signature", signature)
                .body(body.clone())
                .send()
                .await
                .unwrap();
            (response.status().as_u16(), response.text().await.unwrap())
        })
    };
    assert_eq!(send(&signature).0, 202);
    let hex = signature.trim_start_matches("sha256=").to_string();
    for spelling in [hex.to_uppercase(), hex.clone(), format!("SHA256={hex}"), format!("sha256={}", hex.to_uppercase())]
    {
        let (status, reply) = send(&spelling);
        assert_eq!(status, 401, "{spelling} passed as new: {reply}");
        assert!(reply.contains("replayed"), "{reply}");
    }

    // Kill -9 once the signature is stored; the restarted server still refuses it.
    let deadline = Instant::now() + Duration::from_secs(20);
    while stored_signatures(&server) == 0 {
        assert!(Instant::now() < deadline, "the accepted signature never reached replay.db:\n{}", server.log());
        std::thread::sleep(Duration::from_millis(50));
    }
    server.restart();
    let (status, reply) = send(&signature.to_uppercase().replace("SHA256=", "sha256="));
    assert_eq!(status, 401, "a replay after a restart passed: {reply}");
    let (status, reply) = send(&signature);
    assert_eq!(status, 401, "a replay after a restart passed: {reply}");
    server.kill();
}

/// An authenticated sender's push that Ferry cannot read, or that no pipeline takes, is logged
/// with the reason it was answered — "why did my push not promote?" has an answer in the log.
#[test]
fn refused_and_ignored_pushes_are_logged_with_their_reason() {
    let port = free_port();
    let (build, target) = (Registry::plain(), Registry::plain());
    let mut server = FerryServer::start(port, &config(&build, &target), &[("E2E_DISTRIBUTION_SECRET", SECRET)]);
    let post = |body: &str| {
        let out = std::process::Command::new("curl")
            .args(["-s", "-o", "/dev/null", "-w", "%{http_code}", "-H", "Content-Type: application/json"])
            .args(["-H", &format!("X-Ferry-Secret: {SECRET}"), "--data-binary", body])
            .arg(server.url("/hooks/distribution"))
            .output()
            .expect("curl");
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    assert_eq!(post("{\"events\": [ {"), "400");
    let elsewhere = format!(
        r#"{{"events":[{{"action":"push","target":{{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"sha256:{}","repository":"other/app","tag":"1.0"}},"request":{{"host":"{}"}}}}]}}"#,
        "a".repeat(64),
        build.host()
    );
    assert_eq!(post(&elsewhere), "200");
    server.wait_for_log("webhook ignored", Duration::from_secs(10));
    server.kill();
    let log = server.log();
    let refused = log.lines().find(|l| l.contains("webhook refused")).unwrap_or_else(|| panic!("{log}"));
    assert!(refused.contains("sender=\"distribution\"") || refused.contains("sender=distribution"), "{refused}");
    let ignored = log.lines().find(|l| l.contains("webhook ignored")).unwrap_or_default();
    assert!(ignored.contains("other/app"), "the reason names what matched nothing: {ignored}");
    assert!(queued_jobs(&server).is_empty());
}

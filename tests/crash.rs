//! `ferry serve` killed (SIGKILL, as a crash) while a push travels build → dev → prod, then
//! restarted: every stage ends with the pushed digest, byte-exact, and exactly one promotion per
//! stage in the ledger. Issue 12's crash matrix:
//! - at each NAMED point of a promotion (`ferry_core::failpoint`, armed by `FERRY_FAILPOINTS` in
//!   debug builds, and a deploy notification the test's receiver holds), one run per point;
//! - at seeded random moments: a few seeds in the test suite, `CRASH_RUNS=N` runs more.

mod support;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ferry_core::failpoint::{self, Point};
use serde_json::{Value, json};
use support::registry::free_port;
use support::{FerryServer, OciLayout, Registry};

const REPO: &str = "shop/api";
const SECRET: &str = "crash-distribution-secret";
const TOKEN: &str = "crash-operator-token-0123";
const GENERIC_SECRET: &str = "crash-generic-secret";
const NOTIFY_SECRET: &str = "crash-notify-secret";

/// A small deterministic generator (xorshift), so a failing seed can be run again.
struct Seeded(u64);

impl Seeded {
    fn below(&mut self, bound: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % bound
    }
}

fn run(seed: u64) {
    let mut random = Seeded(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1);
    let port = free_port();
    let build =
        Registry::plain_notifying(&format!("http://127.0.0.1:{port}/hooks/distribution"), "X-Ferry-Secret", SECRET);
    let (dev, prod) = (Registry::plain(), Registry::plain());
    let config = format!(
        "[worker]\nvisibility_secs = 2\nretry_base_ms = 100\n\
         [registries.\"{b}\"]\nplain_http = true\n[registries.\"{d}\"]\nplain_http = true\n[registries.\"{p}\"]\nplain_http = true\n\
         [sources.distribution]\nsecret_env = \"CRASH_SECRET\"\nheader = \"X-Ferry-Secret\"\n\
         [[pipelines]]\nname = \"shop-api\"\nsource = \"{b}/{REPO}\"\n\
         [[pipelines.stages]]\nname = \"dev\"\ntarget = \"{d}/{REPO}\"\n\
         [[pipelines.stages]]\nname = \"prod\"\ntarget = \"{p}/{REPO}\"\n",
        b = build.host(),
        d = dev.host(),
        p = prod.host()
    );
    let mut server = FerryServer::start_with_operator_token(port, &config, &[("CRASH_SECRET", SECRET)], TOKEN);

    let mut layout = OciLayout::new();
    let image = layout.add_image("1.0", &[6 * 1024 * 1024, 6 * 1024 * 1024, 1024 * 1024]);
    let digest = build.skopeo_push(&layout.reference("1.0"), &format!("{REPO}:1.0"), &[]).computed_digest();
    assert_eq!(digest, image.digest());

    // Two crashes at random moments of the promotion (webhook intake, copies, tags, ledger,
    // next-stage enqueue — wherever they fall), each followed by a restart.
    let mut kills = Vec::new();
    for _ in 0..2 {
        let after = Duration::from_millis(random.below(1500));
        std::thread::sleep(after);
        server.kill();
        kills.push(after);
        server.restart();
    }

    let deadline = Instant::now() + Duration::from_secs(120);
    for (name, registry) in [("dev", &dev), ("prod", &prod)] {
        loop {
            if registry.client().manifest_when_ready(REPO, name).is_some_and(|m| m.digest == digest) {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "seed {seed} (kills after {kills:?}): {name} never got {digest}\n{}",
                server.log()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
        let manifest = registry.client().manifest(REPO, "1.0").expect("the pushed tag");
        assert_eq!(manifest.digest, digest, "seed {seed}: {name}:1.0");
        assert_eq!(manifest.computed_digest(), digest, "seed {seed}: {name}:1.0 bytes");
    }

    // Exactly one promotion per stage, both succeeded (a redelivered job may still be settling:
    // wait for the records to settle before counting).
    let history = |stage: &str| -> Vec<Value> {
        let run = server.cli("history").args(["shop-api", stage, "--json"]).run();
        run.json().as_array().cloned().unwrap_or_default()
    };
    for stage in ["dev", "prod"] {
        let records = loop {
            let records = history(stage);
            if records.iter().all(|r| r["state"] == "succeeded") || Instant::now() > deadline {
                break records;
            }
            std::thread::sleep(Duration::from_millis(200));
        };
        let of_digest: Vec<&Value> = records.iter().filter(|r| r["digest"] == digest.as_str()).collect();
        assert_eq!(of_digest.len(), 1, "seed {seed} (kills after {kills:?}): promotions into {stage}: {records:#?}");
        assert_eq!(of_digest[0]["state"], "succeeded", "seed {seed}: {records:#?}");
    }
}

#[test]
fn crashes_at_random_moments_of_a_promotion_lose_and_double_nothing() {
    let runs: u64 = std::env::var("CRASH_RUNS").ok().and_then(|n| n.parse().ok()).unwrap_or(3);
    for seed in 1..=runs {
        run(seed);
    }
}

/// Where the matrix kills `ferry serve`.
#[derive(Clone, Copy, Debug)]
enum KillPoint {
    /// A failpoint of `ferry_core::failpoint`, armed with `pause`: the test kills on its log line.
    At(Point),
    /// While dev's deploy notification is in flight: the receiver holds the first one unanswered.
    DuringNotify,
}

/// A webhook notifier's receiver that records every deployment it is told about; with `hold_first`
/// it never answers the first one (the notify is in flight when `ferry serve` is killed).
struct NotifyReceiver {
    port: u16,
    calls: Arc<Mutex<Vec<Value>>>,
    _runtime: tokio::runtime::Runtime,
}

impl NotifyReceiver {
    fn start(hold_first: bool) -> Self {
        let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap();
        let calls: Arc<Mutex<Vec<Value>>> = Arc::default();
        let seen = Arc::new(AtomicUsize::new(0));
        let store = calls.clone();
        let listener = runtime.block_on(tokio::net::TcpListener::bind("127.0.0.1:0")).expect("bind notify receiver");
        let port = listener.local_addr().expect("receiver address").port();
        let app = axum::Router::new().route(
            "/deployed",
            axum::routing::post(move |body: bytes::Bytes| {
                let (store, seen) = (store.clone(), seen.clone());
                async move {
                    store.lock().unwrap().push(serde_json::from_slice(&body).unwrap_or(Value::Null));
                    if hold_first && seen.fetch_add(1, Ordering::SeqCst) == 0 {
                        std::future::pending::<()>().await;
                    }
                    axum::http::StatusCode::NO_CONTENT
                }
            }),
        );
        runtime.spawn(async move { axum::serve(listener, app).await.unwrap() });
        NotifyReceiver { port, calls, _runtime: runtime }
    }

    fn calls(&self) -> Vec<Value> {
        self.calls.lock().unwrap().clone()
    }
}

/// Polls `probe` until it gives a value; fails naming `what` it waited for, with the ferry log.
fn wait_for<T>(what: &str, timeout: Duration, server: &FerryServer, mut probe: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(value) = probe() {
            return value;
        }
        assert!(Instant::now() < deadline, "waited {timeout:?} for {what}, in vain; ferry log:\n{}", server.log());
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Posts a signed generic webhook for `repository:tag@digest`; the answer's status and body.
fn post_webhook(server: &FerryServer, repository: &str, tag: &str, digest: &str) -> (u16, Value) {
    server.post_generic(GENERIC_SECRET, &json!({ "repository": repository, "tag": tag, "digest": digest }))
}

fn history(server: &FerryServer, stage: &str) -> Vec<Value> {
    let run = server.cli("history").args(["shop-api", stage, "--json"]).run();
    run.json().as_array().cloned().unwrap_or_default()
}

/// The promotions of `digest` into `stage` once none of them is still settling.
fn settled_promotions(server: &FerryServer, stage: &str, digest: &str, done: &[&str]) -> Vec<Value> {
    wait_for(
        &format!("the promotions of {digest} into {stage} to settle ({done:?})"),
        Duration::from_secs(60),
        server,
        || {
            let records: Vec<Value> = history(server, stage).into_iter().filter(|r| r["digest"] == digest).collect();
            (!records.is_empty() && records.iter().all(|r| done.iter().any(|d| r["state"] == *d))).then_some(records)
        },
    )
}

/// The image `REPO:tag` in `registry` is `digest`, by the registry's header and by its bytes,
/// and every blob is there.
fn assert_exact(registry: &Registry, tag: &str, digest: &str, context: &str) {
    let manifest = registry
        .client()
        .manifest(REPO, tag)
        .unwrap_or_else(|| panic!("{context}: {}/{REPO}:{tag} does not exist", registry.host()));
    assert_eq!(manifest.digest, digest, "{context}: {}/{REPO}:{tag}", registry.host());
    assert_eq!(manifest.computed_digest(), digest, "{context}: {}/{REPO}:{tag} bytes", registry.host());
    for blob in manifest.blobs() {
        assert!(registry.client().blob_exists(REPO, &blob.digest), "{context}: blob {} missing", blob.digest);
    }
    let by_digest = registry.client().manifest(REPO, digest).expect("readable by digest");
    assert_eq!(by_digest.computed_digest(), digest, "{context}: {}/{REPO}@{digest}", registry.host());
}

/// One run of the matrix: build → dev (deploy webhook) → prod (approval), `ferry serve` killed
/// at `point` of the dev promotion and restarted.
fn killed_at(point: KillPoint) {
    let context = format!("killed at {point:?}");
    let receiver = NotifyReceiver::start(matches!(point, KillPoint::DuringNotify));
    let port = free_port();
    let (build, dev, prod) = (Registry::plain(), Registry::plain(), Registry::plain());
    let config = format!(
        "[worker]\nvisibility_secs = 2\nretry_base_ms = 100\n\
         [registries.\"{b}\"]\nplain_http = true\n[registries.\"{d}\"]\nplain_http = true\n[registries.\"{p}\"]\nplain_http = true\n\
         [sources.generic]\nsecret_env = \"CRASH_GENERIC_SECRET\"\n\
         [[pipelines]]\nname = \"shop-api\"\nsource = \"{b}/{REPO}\"\n\
         [[pipelines.stages]]\nname = \"dev\"\ntarget = \"{d}/{REPO}\"\n\
         notify = {{ kind = \"webhook\", url = \"http://127.0.0.1:{r}/deployed\", secret_env = \"CRASH_NOTIFY_SECRET\" }}\n\
         [[pipelines.stages]]\nname = \"prod\"\ntarget = \"{p}/{REPO}\"\ngate = \"approval\"\n",
        b = build.host(),
        d = dev.host(),
        p = prod.host(),
        r = receiver.port,
    );
    let mut envs = vec![("CRASH_GENERIC_SECRET", GENERIC_SECRET), ("CRASH_NOTIFY_SECRET", NOTIFY_SECRET)];
    let armed = match point {
        KillPoint::At(point) => Some(format!("{}=pause", point.name())),
        KillPoint::DuringNotify => None,
    };
    if let Some(armed) = &armed {
        envs.push((failpoint::ENV, armed));
    }
    let mut server = FerryServer::start_with_operator_token(port, &config, &envs, TOKEN);

    // Several blobs, so that a kill after the first one leaves the copy half done.
    let mut layout = OciLayout::new();
    let image = layout.add_image("1.0", &[2 * 1024 * 1024, 1024 * 1024, 512 * 1024, 256 * 1024]);
    let digest = build.skopeo_push(&layout.reference("1.0"), &format!("{REPO}:1.0"), &[]).computed_digest();
    assert_eq!(digest, image.digest());
    let (status, answer) = post_webhook(&server, &format!("{}/{REPO}", build.host()), "1.0", &digest);
    assert_eq!(status, 202, "{context}: the webhook is accepted: {answer:#}");
    assert_eq!(answer["jobs"][0]["duplicate"], false, "{context}: {answer:#}");

    // Wait until `ferry serve` is exactly at the point, check it is what the point says, kill it.
    match point {
        KillPoint::At(point) => {
            server.wait_for_log(&format!("ferry failpoint {} reached", point.name()), Duration::from_secs(90))
        }
        KillPoint::DuringNotify => {
            wait_for("dev's deploy notification to arrive (and be held)", Duration::from_secs(90), &server, || {
                (!receiver.calls().is_empty()).then_some(())
            })
        }
    }
    let dev_tag = dev.client().manifest(REPO, "1.0");
    match point {
        KillPoint::At(Point::BeforeReceive | Point::AfterBlobCopied | Point::AfterCopyBeforeTag) => {
            assert!(dev_tag.is_none(), "{context}: dev is tagged before the tag is pushed")
        }
        KillPoint::At(Point::AfterTagBeforeLedger | Point::BeforeNextStageEnqueue) | KillPoint::DuringNotify => {
            assert!(dev_tag.is_some_and(|m| m.digest == digest), "{context}: dev is not tagged yet")
        }
    }
    if let KillPoint::At(Point::AfterTagBeforeLedger) = point {
        let records = history(&server, "dev");
        assert!(records.iter().all(|r| r["state"] != "succeeded"), "{context}: recorded already: {records:#?}");
    }
    server.kill();
    server.set_env(failpoint::ENV, None);
    server.restart();

    // dev: the pushed digest under its tags, exactly one succeeded promotion, notified of it.
    wait_for(&format!("{}/{REPO}:dev to be {digest}", dev.host()), Duration::from_secs(90), &server, || {
        dev.client().manifest_when_ready(REPO, "dev").filter(|m| m.digest == digest)
    });
    assert_exact(&dev, "1.0", &digest, &context);
    assert_exact(&dev, "dev", &digest, &context);
    let records = settled_promotions(&server, "dev", &digest, &["succeeded"]);
    assert_eq!(records.len(), 1, "{context}: one promotion into dev: {records:#?}");
    let notified = receiver.calls();
    assert!(
        !notified.is_empty()
            && notified.iter().all(|n| n["deployment"]["digest"] == digest && n["deployment"]["stage"] == "dev"),
        "{context}: dev's notifier is told about {digest} only: {notified:#?}"
    );

    // prod: parked on its approval gate, nothing copied, however the crash fell.
    let parked = wait_for("prod's promotion to wait for approval", Duration::from_secs(60), &server, || {
        history(&server, "prod").into_iter().find(|r| r["digest"] == digest && r["state"] == "awaiting_approval")
    });
    std::thread::sleep(Duration::from_secs(1));
    assert!(prod.client().manifest(REPO, "1.0").is_none(), "{context}: prod got the image before its approval");
    assert!(prod.client().tags(REPO).is_empty(), "{context}: prod got tags before its approval");
    let records = history(&server, "prod");
    assert_eq!(records.len(), 1, "{context}: one promotion into prod: {records:#?}");

    // Approved: prod gets exactly that image, once.
    let id = parked["id"].as_str().expect("promotion id").to_string();
    server.cli("approve").arg(&id).args(["--user", "bob"]).run().success();
    wait_for(&format!("{}/{REPO}:prod to be {digest}", prod.host()), Duration::from_secs(90), &server, || {
        prod.client().manifest_when_ready(REPO, "prod").filter(|m| m.digest == digest)
    });
    assert_exact(&prod, "1.0", &digest, &context);
    let records = settled_promotions(&server, "prod", &digest, &["succeeded"]);
    assert_eq!(records.len(), 1, "{context}: one promotion into prod: {records:#?}");
    let records = history(&server, "dev");
    assert_eq!(records.len(), 1, "{context}: still one promotion into dev: {records:#?}");
}

#[test]
fn a_crash_at_each_named_point_of_a_promotion_loses_and_doubles_nothing() {
    let mut points: Vec<KillPoint> = Point::ALL.into_iter().map(KillPoint::At).collect();
    points.insert(4, KillPoint::DuringNotify);
    for point in points {
        let started = Instant::now();
        killed_at(point);
        eprintln!("crash matrix: killed at {point:?}: ok in {:.1} s", started.elapsed().as_secs_f64());
    }
}

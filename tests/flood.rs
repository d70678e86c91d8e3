//! A flood of webhooks at full speed, valid and hostile mixed, against `ferry serve` with real
//! registries behind it (issue 12, item 10): distinct pushes, redeliveries, tag-only re-pushes, a
//! new tag on a known digest, pushes of tags that do not exist, forged signatures, replays,
//! deeply nested and oversized bodies. Then the queue drains, and:
//!
//! - every valid push is promoted exactly once: one succeeded ledger record per (digest, tag),
//!   one copy per record in the log, and the target registry serves each tag at its digest;
//! - every invalid request was refused with its status;
//! - `/healthz` answered every probe, each within a bound, from the first request until the
//!   queue was empty (the slowest probe is printed);
//! - peak RSS (`VmHWM`) of `ferry serve` stays under [`RSS_BOUND_MIB`];
//! - nothing is left in the queue but the dead letters caused on purpose (the missing tags).
//!
//! Size: `FLOOD_REQUESTS` (default [`CI_REQUESTS`], for the test suite on a busy 2-core box);
//! the full run is `FLOOD_REQUESTS=10000 cargo test --test flood -- --nocapture`.
//! `FLOOD_HEALTHZ_MS` sets the bound per `/healthz` probe (default 2000 ms: busy CI; the issue's
//! figure, 100 ms, is what the full run is measured against in docs/RELIABILITY.md).

mod support;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use ferry_core::intake::verify::generic_signature;
use ferry_core::ledger::{Ledger, PromotionState, SqliteLedger};
use serde_json::{Value, json};
use support::registry::free_port;
use support::{FerryServer, Registry, media_type, sha256_digest};

const SECRET: &str = "flood-generic-secret";
const OPERATOR_TOKEN: &str = "flood-operator-token-0123456789";
const PIPELINE: &str = "shop-api";
const REPO: &str = "shop/api";
/// Requests in the test suite's run: about 200 promotions, within a minute on a busy 2-core box.
const CI_REQUESTS: usize = 400;
/// `ferry serve`'s peak resident memory must stay below this, whatever the flood's size.
const RSS_BOUND_MIB: u64 = 256;
const CLIENTS: usize = 32;

fn requested() -> usize {
    std::env::var("FLOOD_REQUESTS").ok().and_then(|v| v.parse().ok()).unwrap_or(CI_REQUESTS)
}

fn healthz_bound() -> Duration {
    Duration::from_millis(std::env::var("FLOOD_HEALTHZ_MS").ok().and_then(|v| v.parse().ok()).unwrap_or(2000))
}

fn config(build: &str, dev: &str) -> String {
    format!(
        r#"
[worker]
concurrency = 4
retry_base_ms = 200
[registries."{build}"]
plain_http = true
[registries."{dev}"]
plain_http = true
[sources.generic]
secret_env = "FLOOD_GENERIC_SECRET"
[[pipelines]]
name = "{PIPELINE}"
source = "{build}/{REPO}"
  [[pipelines.stages]]
  name = "dev"
  target = "{dev}/{REPO}"
"#
    )
}

/// What a request is, and so what answer it must get.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
enum Kind {
    /// A push naming tag and digest: 202, a new job.
    Push,
    /// The same push delivered again (other bytes, other signature): 202, the same job.
    Redelivery,
    /// The push's tag again, without a digest, with the sender's delivery id: 202, a new job,
    /// which resolves to the digest already promoted: no second promotion.
    TagOnlyRepush,
    /// The push's digest under a new tag: 202, a new job, and a second promotion (the tag).
    NewTag,
    /// A tag the build registry does not have: 202, then dead-lettered as not found.
    MissingTag,
    BadSignature,
    DeeplyNested,
    Oversized,
    /// A request sent again byte for byte, signature included: refused.
    Replay,
}

impl Kind {
    fn expect(self) -> u16 {
        match self {
            Kind::Push | Kind::Redelivery | Kind::TagOnlyRepush | Kind::NewTag | Kind::MissingTag => 202,
            Kind::BadSignature | Kind::Replay => 401,
            Kind::DeeplyNested => 400,
            Kind::Oversized => 413,
        }
    }

    /// A sender retries a request whose connection dropped (a kept-alive connection the server
    /// closed after an oversized body, say), signing it anew.
    fn resent_on_drop(self) -> bool {
        matches!(
            self,
            Kind::Push | Kind::Redelivery | Kind::TagOnlyRepush | Kind::NewTag | Kind::MissingTag | Kind::DeeplyNested
        )
    }

    /// A forger retries too, with the same forged signature, and a replayer with the same
    /// replayed request (a connection dropped under load must not count as its answer).
    fn resent_as_is(self) -> bool {
        matches!(self, Kind::BadSignature | Kind::Replay)
    }
}

struct Shot {
    body: Vec<u8>,
    headers: Vec<(&'static str, String)>,
    kind: Kind,
    /// The promotion this request asks for, if valid: (digest, tag); the digest is `None` for
    /// a missing tag.
    wants: Option<(Option<String>, String)>,
    /// For a replay: the request it repeats.
    replay_of: Option<usize>,
}

fn signed_headers(body: &[u8]) -> Vec<(&'static str, String)> {
    let timestamp = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs().to_string();
    let signature = generic_signature(SECRET.as_bytes(), &timestamp, body);
    vec![("X-Ferry-Timestamp", timestamp), ("X-Ferry-Signature", signature)]
}

fn shot(body: Value, kind: Kind, wants: Option<(Option<String>, String)>) -> Shot {
    let body = serde_json::to_vec(&body).unwrap();
    Shot { headers: signed_headers(&body), body, kind, wants, replay_of: None }
}

/// One image pushed to the build registry.
struct Pushed {
    digest: String,
    tags: Vec<String>,
}

/// Pushes `count` distinct small images (each its own config blob, one shared layer) to
/// `registry` as `shop/api:1.0.I`, image I % 7 == 0 also as `stable-I`; `jobs` at a time.
async fn push_images(registry: &str, count: usize, jobs: usize) -> Vec<Pushed> {
    let client = reqwest::Client::new();
    let base = format!("http://{registry}/v2/{REPO}");
    let layer = support::registry::random_bytes(4096);
    let layer_digest = upload(&client, &base, &layer).await;
    let next = Arc::new(AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for _ in 0..jobs {
        let (client, base, next, layer_digest) = (client.clone(), base.clone(), next.clone(), layer_digest.clone());
        tasks.push(tokio::spawn(async move {
            let mut pushed = Vec::new();
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= count {
                    return pushed;
                }
                let config = serde_json::to_vec(&json!({
                    "architecture": "amd64",
                    "os": "linux",
                    "config": { "Labels": { "flood.image": i.to_string() } },
                    "rootfs": { "type": "layers", "diff_ids": [layer_digest] },
                }))
                .unwrap();
                let config_digest = upload(&client, &base, &config).await;
                let manifest = serde_json::to_vec(&json!({
                    "schemaVersion": 2,
                    "mediaType": media_type::OCI_MANIFEST,
                    "config": { "mediaType": media_type::OCI_CONFIG, "digest": config_digest, "size": config.len() },
                    "layers": [{ "mediaType": media_type::OCI_LAYER_GZIP, "digest": layer_digest, "size": 4096 }],
                }))
                .unwrap();
                let mut tags = vec![format!("1.0.{i}")];
                if i % 7 == 0 {
                    tags.push(format!("stable-{i}"));
                }
                for tag in &tags {
                    let response = client
                        .put(format!("{base}/manifests/{tag}"))
                        .header("Content-Type", media_type::OCI_MANIFEST)
                        .body(manifest.clone())
                        .send()
                        .await
                        .expect("build registry answers");
                    assert_eq!(
                        response.status().as_u16(),
                        201,
                        "push {REPO}:{tag}: {}",
                        response.text().await.unwrap()
                    );
                }
                pushed.push((i, Pushed { digest: sha256_digest(&manifest), tags }));
            }
        }));
    }
    let mut all = Vec::new();
    for task in tasks {
        all.extend(task.await.unwrap());
    }
    all.sort_by_key(|(i, _)| *i);
    all.into_iter().map(|(_, p)| p).collect()
}

/// A monolithic blob upload; the blob's digest.
async fn upload(client: &reqwest::Client, base: &str, bytes: &[u8]) -> String {
    let digest = sha256_digest(bytes);
    let started = client.post(format!("{base}/blobs/uploads/")).send().await.expect("build registry answers");
    assert_eq!(started.status().as_u16(), 202, "start an upload");
    let location = started.headers()["location"].to_str().unwrap().to_string();
    let location =
        if location.starts_with('/') { format!("{}{location}", &base[..base.find("/v2/").unwrap()]) } else { location };
    let separator = if location.contains('?') { '&' } else { '?' };
    let done = client
        .put(format!("{location}{separator}digest={digest}"))
        .header("Content-Type", "application/octet-stream")
        .body(bytes.to_vec())
        .send()
        .await
        .expect("build registry answers");
    assert_eq!(done.status().as_u16(), 201, "finish the upload of {digest}");
    digest
}

/// The flood's requests, in sending order, for `images`; stops once `requested` are planned.
fn plan(build: &str, images: &[Pushed], requested: usize) -> (Vec<Shot>, usize) {
    let repository = format!("{build}/{REPO}");
    let mut shots = Vec::new();
    let mut replays = Vec::new();
    for (i, image) in images.iter().enumerate() {
        if shots.len() + replays.len() >= requested {
            break;
        }
        let tag = &image.tags[0];
        let wants = Some((Some(image.digest.clone()), tag.clone()));
        let body = json!({ "repository": repository, "tag": tag, "digest": image.digest });
        shots.push(shot(body.clone(), Kind::Push, wants.clone()));
        if i % 3 == 0 {
            // Another delivery of the same push: other bytes (whitespace), other signature.
            let mut again = shot(body.clone(), Kind::Redelivery, wants.clone());
            again.body.push(b' ');
            again.headers = signed_headers(&again.body);
            shots.push(again);
        }
        if i % 4 == 0 {
            shots.push(shot(
                json!({ "repository": repository, "tag": tag, "id": format!("repush-{i}") }),
                Kind::TagOnlyRepush,
                Some((Some(image.digest.clone()), tag.clone())),
            ));
            // The very same request again, once the first wave is over.
            let last = shots.last().unwrap();
            replays.push(Shot {
                body: last.body.clone(),
                headers: last.headers.clone(),
                kind: Kind::Replay,
                wants: None,
                replay_of: Some(shots.len() - 1),
            });
        }
        if let Some(stable) = image.tags.get(1) {
            shots.push(shot(
                json!({ "repository": repository, "tag": stable, "digest": image.digest }),
                Kind::NewTag,
                Some((Some(image.digest.clone()), stable.clone())),
            ));
        }
        if i % 5 == 0 {
            let mut forged =
                shot(json!({ "repository": repository, "tag": format!("forged-{i}") }), Kind::BadSignature, None);
            forged.headers[1].1 = format!("sha256={}", "0".repeat(64));
            shots.push(forged);
        }
        if i % 20 == 0 {
            let mut nested = shot(json!(null), Kind::DeeplyNested, None);
            nested.body = vec![b'['; 200_000 + i];
            nested.headers = signed_headers(&nested.body);
            shots.push(nested);
            let mut oversized = shot(json!(null), Kind::Oversized, None);
            oversized.body = vec![b' '; 2 * 1024 * 1024];
            oversized.headers = signed_headers(&oversized.body);
            shots.push(oversized);
        }
        if i % 50 == 0 {
            let missing = format!("missing-{i}");
            shots.push(shot(
                json!({ "repository": repository, "tag": missing }),
                Kind::MissingTag,
                Some((None, missing)),
            ));
        }
    }
    let first_wave = shots.len();
    shots.extend(replays);
    (shots, first_wave)
}

/// One answer: which request, its status, its reply body, and whether the client signed it
/// anew after a dropped connection.
struct Answer {
    shot: usize,
    status: u16,
    reply: Value,
    resigned: bool,
}

async fn send_all(
    client: &reqwest::Client,
    url: &str,
    shots: &Arc<Vec<Shot>>,
    wave: std::ops::Range<usize>,
) -> Vec<Answer> {
    let next = Arc::new(AtomicUsize::new(wave.start));
    let mut workers = Vec::new();
    for _ in 0..CLIENTS {
        let (client, shots, next, url, end) = (client.clone(), shots.clone(), next.clone(), url.to_string(), wave.end);
        workers.push(tokio::spawn(async move {
            let mut answers = Vec::new();
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= end {
                    return answers;
                }
                let shot = &shots[i];
                let mut headers = shot.headers.clone();
                let mut answer = Answer { shot: i, status: 0, reply: Value::Null, resigned: false };
                for _attempt in 0..3 {
                    let mut request =
                        client.post(&url).header("Content-Type", "application/json").body(shot.body.clone());
                    for (name, value) in &headers {
                        request = request.header(*name, value);
                    }
                    match request.send().await {
                        Ok(response) => {
                            answer.status = response.status().as_u16();
                            answer.reply = response.json().await.unwrap_or(Value::Null);
                            break;
                        }
                        Err(_) if shot.kind.resent_on_drop() => {
                            headers = signed_headers(&shot.body);
                            answer.resigned = true;
                        }
                        Err(_) if shot.kind.resent_as_is() => {}
                        Err(_) => break,
                    }
                }
                answers.push(answer);
            }
        }));
    }
    let mut answers = Vec::new();
    for worker in workers {
        answers.extend(worker.await.unwrap());
    }
    answers
}

/// `/healthz` probes, each timed, until `done`.
struct Probes {
    count: usize,
    failures: Vec<String>,
    slowest: Duration,
    over_bound: usize,
    /// Over the issue's figure, 100 ms (counted, asserted only through `FLOOD_HEALTHZ_MS`).
    over_100ms: usize,
    durations: Vec<Duration>,
}

async fn probe_health(client: reqwest::Client, url: String, done: Arc<AtomicBool>, bound: Duration) -> Probes {
    let mut probes = Probes {
        count: 0,
        failures: Vec::new(),
        slowest: Duration::ZERO,
        over_bound: 0,
        over_100ms: 0,
        durations: Vec::new(),
    };
    while !done.load(Ordering::Relaxed) {
        let started = Instant::now();
        let outcome = client.get(&url).timeout(Duration::from_secs(10)).send().await;
        let took = started.elapsed();
        probes.count += 1;
        match outcome {
            Ok(r) if r.status() == 200 => {
                probes.slowest = probes.slowest.max(took);
                probes.durations.push(took);
                if took > bound {
                    probes.over_bound += 1;
                }
                if took > Duration::from_millis(100) {
                    probes.over_100ms += 1;
                }
            }
            Ok(r) => probes.failures.push(format!("{} after {took:?}", r.status())),
            Err(e) => probes.failures.push(format!("{e} after {took:?}")),
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    probes
}

fn vm_hwm_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with("VmHWM:")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

/// Jobs in the queue file by state (`ready` includes jobs being worked on).
fn queue_states(server: &FerryServer) -> BTreeMap<String, i64> {
    let conn = rusqlite::Connection::open_with_flags(server.queue_path(), rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
        .expect("open the queue read-only");
    conn.busy_timeout(Duration::from_secs(5)).unwrap();
    let mut statement = conn.prepare("SELECT state, count(*) FROM jobs GROUP BY state").unwrap();
    statement.query_map([], |row| Ok((row.get(0)?, row.get(1)?))).unwrap().collect::<Result<_, _>>().unwrap()
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

#[test]
fn a_flood_of_webhooks_with_registries_behind_promotes_each_valid_push_exactly_once() {
    let started = Instant::now();
    let requested = requested();
    let (build, dev) = (Registry::plain(), Registry::plain());
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();

    // About 2.15 requests per image; a few spare.
    let images = runtime.block_on(push_images(build.host(), requested * 10 / 21 + 8, 16));
    let pushed_in = started.elapsed();
    let (shots, first_wave) = plan(build.host(), &images, requested);
    let total = shots.len();
    let shots = Arc::new(shots);

    let port = free_port();
    let mut server = FerryServer::start_with_operator_token(
        port,
        &config(build.host(), dev.host()),
        &[("FLOOD_GENERIC_SECRET", SECRET)],
        OPERATOR_TOKEN,
    );
    let done = Arc::new(AtomicBool::new(false));
    let bound = healthz_bound();
    let url = server.url("/hooks/generic");
    let flood_started = Instant::now();
    let (answers, probes, flood_took, drain_took) = runtime.block_on(async {
        let client = reqwest::Client::builder().pool_max_idle_per_host(64).build().unwrap();
        // Its own client: a probe must not wait for a connection the flood holds.
        let probe = tokio::spawn(probe_health(reqwest::Client::new(), server.url("/healthz"), done.clone(), bound));
        let mut answers = send_all(&client, &url, &shots, 0..first_wave).await;
        answers.extend(send_all(&client, &url, &shots, first_wave..total).await);
        let flood_took = flood_started.elapsed();
        // Drained: no job ready or in flight. Generous: the queue may hold thousands of jobs, and
        // one stage promotes one at a time (a few per second in a debug build on a busy box).
        let deadline = Instant::now() + Duration::from_secs(120) + Duration::from_secs(1) * total as u32;
        loop {
            let states = queue_states(&server);
            if states.get("ready").copied().unwrap_or(0) == 0 {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "the queue did not drain: {states:?}\nferry log tail:\n{}",
                tail(&server.log())
            );
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        let drain_took = flood_started.elapsed();
        done.store(true, Ordering::Relaxed);
        (answers, probe.await.unwrap(), flood_took, drain_took)
    });
    assert_eq!(answers.len(), total);

    // Every request got the answer its kind calls for.
    let resigned: HashSet<usize> = answers.iter().filter(|a| a.resigned).map(|a| a.shot).collect();
    let mut wrong: HashMap<(Kind, u16, u16), usize> = HashMap::new();
    for answer in &answers {
        let shot = &shots[answer.shot];
        // The client signed the original anew after a dropped connection: what is "replayed"
        // here may never have reached Ferry.
        if shot.replay_of.is_some_and(|original| resigned.contains(&original)) {
            continue;
        }
        // An oversized body may be cut off before its answer is read.
        let cut_off = shot.kind == Kind::Oversized && answer.status == 0;
        if answer.status != shot.kind.expect() && !cut_off {
            *wrong.entry((shot.kind, shot.kind.expect(), answer.status)).or_default() += 1;
        }
    }
    assert!(
        wrong.is_empty(),
        "requests answered unexpectedly (kind, expected, got): count {wrong:#?}\n{}",
        tail(&server.log())
    );

    // Deliveries of one push name one job, and at most one of them says it queued it.
    let mut jobs_of: HashMap<(Option<String>, String, Kind), Vec<&Answer>> = HashMap::new();
    for answer in answers.iter().filter(|a| a.status == 202) {
        let shot = &shots[answer.shot];
        // A replay of a request that never reached Ferry (re-signed after a dropped connection).
        let Some((digest, tag)) = shot.wants.clone() else { continue };
        let kind = if shot.kind == Kind::Redelivery { Kind::Push } else { shot.kind };
        jobs_of.entry((digest, tag, kind)).or_default().push(answer);
    }
    for (push, answers) in &jobs_of {
        let ids: HashSet<&str> = answers.iter().map(|a| a.reply["jobs"][0]["id"].as_str().unwrap_or("?")).collect();
        let queued = answers.iter().filter(|a| a.reply["jobs"][0]["duplicate"] == false).count();
        assert!(
            ids.len() == 1 && queued <= 1,
            "{push:?}: answers {:#?}",
            answers.iter().map(|a| &a.reply).collect::<Vec<_>>()
        );
    }

    let mut durations = probes.durations.clone();
    durations.sort();
    let healthz = format!(
        "/healthz: {} probes, p50 {:?}, p99 {:?}, p99.9 {:?}, slowest {:?}, {} over 100 ms, {} over {bound:?}",
        probes.count,
        percentile(&durations, 0.5),
        percentile(&durations, 0.99),
        percentile(&durations, 0.999),
        probes.slowest,
        probes.over_100ms,
        probes.over_bound
    );
    let rss_mib = vm_hwm_kib(server.pid()) / 1024;
    let log = server.log();
    assert!(probes.failures.is_empty(), "/healthz failed during the flood: {:?}", probes.failures);
    assert_eq!(probes.over_bound, 0, "{healthz}");
    assert!(rss_mib < RSS_BOUND_MIB, "ferry serve peaked at {rss_mib} MiB (bound {RSS_BOUND_MIB} MiB)");
    assert!(!log.contains(SECRET) && !log.contains(OPERATOR_TOKEN), "a secret appears in the log");

    // The dead letters are exactly the missing tags, each refused as not found, never retried.
    let dlq: Vec<Value> = runtime.block_on(async {
        let response = reqwest::Client::new().get(server.url("/api/dlq")).bearer_auth(OPERATOR_TOKEN).send().await;
        let list: Value = response.expect("GET /api/dlq").json().await.expect("dlq list JSON");
        list.as_array().cloned().unwrap_or_else(|| panic!("dlq list: {list:#}"))
    });
    let missing: HashSet<String> =
        shots.iter().filter(|s| s.kind == Kind::MissingTag).map(|s| s.wants.as_ref().unwrap().1.clone()).collect();
    let dead_tags: Vec<String> =
        dlq.iter().map(|d| d["payload"]["request"]["tag"].as_str().unwrap_or("?").to_string()).collect();
    assert_eq!(dead_tags.iter().cloned().collect::<HashSet<_>>(), missing, "dead letters: {dlq:#?}");
    assert_eq!(dead_tags.len(), missing.len(), "a missing tag was dead-lettered twice: {dlq:#?}");
    for letter in &dlq {
        let error = letter["last_error"].as_str().unwrap_or_default();
        assert!(letter["receive_count"] == 1 && error.contains("does not exist"), "{letter:#}");
    }

    // The promotions that must exist: each valid push's (digest, tag).
    let mut wanted: HashSet<(String, String)> = HashSet::new();
    for shot in shots.iter() {
        if let Some((Some(digest), tag)) = &shot.wants {
            wanted.insert((digest.clone(), tag.clone()));
        }
    }
    server.kill();
    let states = queue_states(&server);
    assert_eq!(states.get("ready"), None, "jobs left in the queue: {states:?}");
    assert_eq!(states.get("dead").copied().unwrap_or(0), missing.len() as i64, "{states:?}");

    // The ledger, read back: one succeeded record per wanted promotion, nothing else.
    let ledger = SqliteLedger::open(&server.dir().join("data").join("ledger.db")).expect("open the ledger");
    let records = runtime.block_on(ledger.history(PIPELINE, None, usize::MAX)).expect("read the ledger");
    let mut seen: HashMap<(String, String), usize> = HashMap::new();
    for record in &records {
        assert_eq!(record.state, PromotionState::Succeeded, "{record:#?}");
        *seen.entry((record.digest.clone(), record.tag.clone().unwrap_or_default())).or_default() += 1;
    }
    let doubled: Vec<_> = seen.iter().filter(|(_, n)| **n > 1).collect();
    assert!(doubled.is_empty(), "promotions recorded more than once: {doubled:?}");
    let recorded: HashSet<(String, String)> = seen.into_keys().collect();
    let lost: Vec<_> = wanted.difference(&recorded).collect();
    let unasked: Vec<_> = recorded.difference(&wanted).collect();
    assert!(lost.is_empty() && unasked.is_empty(), "lost: {lost:?}\nnot asked for: {unasked:?}");
    // One copy per promotion: the worker logs each promotion it carries out once.
    let mut copies: HashMap<&str, usize> = HashMap::new();
    for line in log.lines().filter(|l| l.contains(": promoted sha256:")) {
        let digest = line.split(": promoted ").nth(1).and_then(|rest| rest.split_whitespace().next()).unwrap();
        *copies.entry(digest).or_default() += 1;
    }
    let mut per_digest: HashMap<&str, usize> = HashMap::new();
    for (digest, _) in &wanted {
        *per_digest.entry(digest.as_str()).or_default() += 1;
    }
    let copied_again: Vec<_> = copies.iter().filter(|(d, n)| per_digest.get(*d).copied().unwrap_or(0) < **n).collect();
    assert!(copied_again.is_empty(), "promoted more often than asked (digest, times): {copied_again:?}");

    // The target registry serves every promoted tag at its digest.
    let mut wrong_digests = Vec::new();
    for (digest, tag) in &wanted {
        match dev.client().manifest(REPO, tag) {
            Some(manifest) if manifest.digest == *digest && manifest.computed_digest() == *digest => {}
            other => wrong_digests.push((tag.clone(), digest.clone(), other.map(|m| m.digest))),
        }
    }
    assert!(wrong_digests.is_empty(), "wrong or missing at the target (tag, wanted, found): {wrong_digests:?}");

    let refused = answers.iter().filter(|a| a.status >= 400 || a.status == 0).count();
    eprintln!(
        "flood: {total} requests ({refused} refused) from {CLIENTS} clients in {flood_took:?}, queue drained after \
         {drain_took:?}; {} promotions checked (ledger + target registry): 0 lost, 0 duplicated, 0 wrong digests; \
         {} dead letters on purpose; {healthz}; peak RSS {rss_mib} MiB (bound {RSS_BOUND_MIB} MiB); \
         {} images pushed in {pushed_in:?}; whole test {:?}",
        wanted.len(),
        missing.len(),
        images.len(),
        started.elapsed()
    );
}

fn tail(log: &str) -> String {
    let lines: Vec<&str> = log.lines().collect();
    lines[lines.len().saturating_sub(60)..].join("\n")
}

//! A flood of webhooks at full speed, valid and hostile mixed, against `ferry serve`: every valid
//! push is queued exactly once, every invalid request is refused with its status, `/healthz`
//! keeps answering throughout, and memory stays bounded. (Issue 12's flood, shortened for the
//! test suite: intake only, no registries.)

mod support;

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use ferry_core::intake::verify::generic_signature;
use ferry_core::queue::{JobQueue, SqliteQueue, SqliteQueueOptions};
use support::FerryServer;
use support::registry::free_port;

const SECRET: &str = "flood-generic-secret";
const PUSHES: usize = 600;

fn config() -> String {
    r#"
[worker]
enabled = false
[registries."build.example:5000"]
[registries."dev.example:5000"]
[sources.generic]
secret_env = "FLOOD_GENERIC_SECRET"
[[pipelines]]
name = "shop-api"
source = "build.example:5000/shop/api"
  [[pipelines.stages]]
  name = "dev"
  target = "dev.example:5000/shop/api"
"#
    .to_string()
}

/// One request of the flood and the status it must get.
struct Shot {
    body: Vec<u8>,
    headers: Vec<(&'static str, String)>,
    expect: u16,
    kind: &'static str,
    /// For a replay: the request it repeats.
    replay_of: Option<usize>,
}

fn signed(body: Vec<u8>, expect: u16, kind: &'static str) -> Shot {
    let timestamp = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs().to_string();
    let signature = generic_signature(SECRET.as_bytes(), &timestamp, &body);
    Shot {
        headers: vec![("X-Ferry-Timestamp", timestamp), ("X-Ferry-Signature", signature)],
        body,
        expect,
        kind,
        replay_of: None,
    }
}

fn push(i: usize) -> (Vec<u8>, String) {
    let digest = format!("sha256:{i:064x}");
    let body =
        serde_json::json!({ "repository": "build.example:5000/shop/api", "tag": format!("1.0.{i}"), "digest": digest });
    (serde_json::to_vec(&body).unwrap(), digest)
}

fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with("VmHWM:")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

#[test]
fn a_flood_of_valid_and_hostile_webhooks_queues_each_push_once_and_refuses_the_rest() {
    let port = free_port();
    let mut server = FerryServer::start(port, &config(), &[("FLOOD_GENERIC_SECRET", SECRET)]);
    let mut shots = Vec::new();
    let mut replays = Vec::new();
    let mut pushed = HashSet::new();
    for i in 0..PUSHES {
        let (body, digest) = push(i);
        pushed.insert(digest);
        shots.push(signed(body.clone(), 202, "push"));
        if i % 3 == 0 {
            // The sender delivers again (another signature: the bytes differ in whitespace, as
            // two deliveries signed in the same second must): one job, answered 202.
            let mut again = body.clone();
            again.push(b' ');
            shots.push(signed(again, 202, "redelivery"));
        }
        if i % 4 == 0 {
            // The very same request replayed: refused.
            let last = shots.last().unwrap();
            let replay = Shot {
                body: last.body.clone(),
                headers: last.headers.clone(),
                expect: 401,
                kind: "replay",
                replay_of: Some(shots.len() - 1),
            };
            replays.push(replay);
        }
        if i % 5 == 0 {
            let mut forged = signed(push(PUSHES + i).0, 401, "bad signature");
            forged.headers[1].1 = format!("sha256={}", "0".repeat(64));
            shots.push(forged);
        }
        if i % 20 == 0 {
            shots.push(signed(vec![b'['; 200_000 + i], 400, "deeply nested"));
            shots.push(signed(vec![b' '; 2 * 1024 * 1024], 413, "oversized"));
        }
    }
    // Replays come after what they replay: a second wave.
    let first_wave = shots.len();
    shots.extend(replays);
    let total = shots.len();
    let shots = Arc::new(shots);

    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let done = Arc::new(AtomicBool::new(false));
    let url = server.url("/hooks/generic");
    let health_url = server.url("/healthz");
    let (answers, health) = runtime.block_on(async {
        let client = reqwest::Client::builder().pool_max_idle_per_host(64).build().unwrap();
        let probe = {
            let (client, done, health_url) = (client.clone(), done.clone(), health_url.clone());
            tokio::spawn(async move {
                let mut slowest = Duration::ZERO;
                let mut failures = 0;
                while !done.load(Ordering::Relaxed) {
                    let started = Instant::now();
                    match client.get(&health_url).timeout(Duration::from_secs(5)).send().await {
                        Ok(r) if r.status() == 200 => slowest = slowest.max(started.elapsed()),
                        _ => failures += 1,
                    }
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                (slowest, failures)
            })
        };
        let mut answers = Vec::new();
        for wave in [0..first_wave, first_wave..total] {
            let next = Arc::new(std::sync::atomic::AtomicUsize::new(wave.start));
            let mut workers = Vec::new();
            for _ in 0..32 {
                let (client, shots, next, url, end) =
                    (client.clone(), shots.clone(), next.clone(), url.clone(), wave.end);
                workers.push(tokio::spawn(async move {
                    let mut answers = Vec::new();
                    loop {
                        let i = next.fetch_add(1, Ordering::Relaxed);
                        if i >= end {
                            break;
                        }
                        let shot = &shots[i];
                        let mut headers = shot.headers.clone();
                        let mut status = 0;
                        let mut resigned = false;
                        // A sender retries a request whose connection dropped (a kept-alive
                        // connection the server closed after an oversized body, say), signing
                        // it anew; an oversized body is not retried.
                        for _attempt in 0..3 {
                            let mut request =
                                client.post(&url).header("Content-Type", "application/json").body(shot.body.clone());
                            for (name, value) in &headers {
                                request = request.header(*name, value);
                            }
                            match request.send().await {
                                Ok(response) => {
                                    status = response.status().as_u16();
                                    break;
                                }
                                Err(_) if shot.kind == "oversized" => break,
                                Err(_) if matches!(shot.kind, "push" | "redelivery" | "deeply nested") => {
                                    headers = signed(shot.body.clone(), shot.expect, shot.kind).headers;
                                    resigned = true;
                                }
                                Err(_) => {}
                            }
                        }
                        answers.push((i, status, resigned));
                    }
                    answers
                }));
            }
            for worker in workers {
                answers.extend(worker.await.unwrap());
            }
        }
        done.store(true, Ordering::Relaxed);
        (answers, probe.await.unwrap())
    });
    assert_eq!(answers.len(), total);

    let resigned: HashSet<usize> = answers.iter().filter(|(_, _, resigned)| *resigned).map(|(i, _, _)| *i).collect();
    let mut wrong: HashMap<(&str, u16, u16), usize> = HashMap::new();
    for (i, status, _) in &answers {
        let shot = &shots[*i];
        // The sender signed that request anew after a dropped connection: what is "replayed"
        // here may never have reached Ferry.
        if shot.replay_of.is_some_and(|original| resigned.contains(&original)) {
            continue;
        }
        // An oversized body may be cut off before its answer is read.
        let cut_off = shot.kind == "oversized" && *status == 0;
        if *status != shot.expect && !cut_off {
            *wrong.entry((shot.kind, shot.expect, *status)).or_default() += 1;
        }
    }
    assert!(
        wrong.is_empty(),
        "requests answered unexpectedly (kind, expected, got): count {wrong:#?}\n{}",
        server.log()
    );
    let (slowest_health, health_failures) = health;
    assert_eq!(health_failures, 0, "/healthz failed during the flood");
    assert!(slowest_health < Duration::from_secs(2), "/healthz took {slowest_health:?} during the flood");
    let rss = rss_kib(server.pid());
    assert!(rss < 256 * 1024, "ferry serve peaked at {rss} KiB during the flood");
    eprintln!("flood: {total} requests, /healthz slowest {slowest_health:?}, peak RSS {} MiB", rss / 1024);

    assert!(!server.log().contains(SECRET), "the sender's secret appears in the log");

    // Exactly one job per distinct push, none for anything refused.
    server.kill();
    let queued: Vec<String> = runtime.block_on(async {
        let queue = SqliteQueue::open(&server.queue_path(), SqliteQueueOptions::default()).unwrap();
        let mut digests = Vec::new();
        loop {
            let batch = queue.receive(500, Duration::from_secs(600)).await.unwrap();
            if batch.is_empty() {
                break;
            }
            digests.extend(batch.iter().map(|d| d.payload["request"]["digest"].as_str().unwrap().to_string()));
        }
        digests
    });
    let distinct: HashSet<String> = queued.iter().cloned().collect();
    assert_eq!(queued.len(), distinct.len(), "a push was queued twice");
    assert_eq!(distinct, pushed, "queued pushes differ from the valid ones");
}

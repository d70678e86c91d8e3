//! Ferry on AWS Lambda, end to end and locally: the real function binaries (`ferry-webhook`,
//! `ferry-worker`, `ferry-api`) driven through a local Lambda Runtime API (a fake, see
//! `support/lambda.rs`) with real event JSON, over real SQS and DynamoDB APIs (`moto_server`) and
//! real registries (`docker-registry`).

#[path = "../shared/tests/conformance/moto.rs"]
mod moto;
mod support;

use std::path::PathBuf;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use aws_sdk_sqs::types::MessageSystemAttributeName;
use serde_json::{Value, json};
use support::lambda::{LambdaRuntime, function_binary};
use support::registry::free_port;
use support::{OciLayout, Registry, ferry};

const SECRET: &str = "lambda-e2e-generic-secret";
const OPERATOR_TOKEN: &str = "lambda-e2e-operator-token";
const REPO: &str = "shop/api";

struct Aws {
    runtime: tokio::runtime::Runtime,
    moto: moto::Moto,
    queue_url: String,
    table: String,
}

impl Aws {
    fn start(redrive_after: u32) -> Self {
        let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
        let moto = moto::Moto::start();
        let (queue_url, table) =
            runtime.block_on(async { (moto.fifo_queue_with_dlq(redrive_after).await, moto.ledger_table().await) });
        Aws { runtime, moto, queue_url, table }
    }

    /// The next message of `queue_url` as an SQS event record, as Lambda's event source sends it.
    fn next_record(&self, queue_url: &str) -> Value {
        self.next_records(queue_url, 1).remove(0)
    }

    /// The next `n` messages, received in one call as Lambda's poller does (a FIFO queue hands
    /// out no later message of a group while an earlier one is in flight).
    fn next_records(&self, queue_url: &str, n: i32) -> Vec<Value> {
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        loop {
            let messages = self.runtime.block_on(async {
                self.moto
                    .sqs()
                    .receive_message()
                    .queue_url(queue_url)
                    .max_number_of_messages(n)
                    .visibility_timeout(120)
                    .message_system_attribute_names(MessageSystemAttributeName::All)
                    .message_attribute_names("All")
                    .send()
                    .await
                    .unwrap()
                    .messages
                    .unwrap_or_default()
            });
            if messages.len() == n as usize {
                return messages.iter().map(record_of).collect();
            }
            assert!(messages.is_empty(), "received {} of {n} messages at once", messages.len());
            assert!(std::time::Instant::now() < deadline, "no message in {queue_url} after 30 s");
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    fn send(&self, body: &str, group: &str) {
        self.runtime.block_on(async {
            self.moto
                .sqs()
                .send_message()
                .queue_url(&self.queue_url)
                .message_body(body)
                .message_group_id(group)
                .message_deduplication_id(format!(
                    "{:x}",
                    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_nanos()
                ))
                .send()
                .await
                .unwrap();
        });
    }
}

/// An SQS message as the record of an SQS event.
fn record_of(message: &aws_sdk_sqs::types::Message) -> Value {
    let attributes: serde_json::Map<String, Value> = message
        .attributes()
        .into_iter()
        .flatten()
        .map(|(k, v)| (k.as_str().to_string(), Value::String(v.clone())))
        .collect();
    let message_attributes: serde_json::Map<String, Value> = message
        .message_attributes()
        .into_iter()
        .flatten()
        .map(|(k, v)| (k.clone(), json!({ "stringValue": v.string_value(), "dataType": v.data_type() })))
        .collect();
    json!({
        "messageId": message.message_id(),
        "receiptHandle": message.receipt_handle(),
        "body": message.body(),
        "attributes": attributes,
        "messageAttributes": message_attributes,
        "md5OfBody": message.md5_of_body(),
        "eventSource": "aws:sqs",
        "eventSourceARN": "arn:aws:sqs:us-east-1:123456789012:ferry-jobs.fifo",
        "awsRegion": "us-east-1"
    })
}

/// The configuration every function reads from `FERRY_CONFIG`.
fn config(aws: &Aws, build: &str, dev: &str) -> String {
    format!(
        r#"
[server]
operator_token_env = "FERRY_OPERATOR_TOKEN"

[worker]
max_attempts = 2
retry_base_ms = 100

[queue]
kind = "sqs"
url = "{queue}"

[ledger]
kind = "dynamodb"
table = "{table}"

[registries."{build}"]
plain_http = true
[registries."{dev}"]
plain_http = true

[sources.generic]
secret_env = "FERRY_GENERIC_SECRET"

[[pipelines]]
name = "shop-api"
source = "{build}/{REPO}"
  [[pipelines.stages]]
  name = "dev"
  target = "{dev}/{REPO}"
"#,
        queue = aws.queue_url,
        table = aws.table,
    )
}

fn function_env(aws: &Aws, config: &str) -> Vec<(&'static str, String)> {
    let mut env = aws.moto.aws_env();
    env.push(("FERRY_CONFIG", config.to_string()));
    env.push(("FERRY_GENERIC_SECRET", SECRET.into()));
    env.push(("FERRY_OPERATOR_TOKEN", OPERATOR_TOKEN.into()));
    env
}

/// A Lambda Function URL event (payload format 2.0) for `POST path` with `body` and `headers`.
fn function_url_event(method: &str, path: &str, headers: Value, body: &str) -> Value {
    json!({
        "version": "2.0",
        "routeKey": "$default",
        "rawPath": path,
        "rawQueryString": "",
        "headers": headers,
        "requestContext": {
            "accountId": "anonymous",
            "apiId": "ferrytest",
            "domainName": "ferrytest.lambda-url.us-east-1.on.aws",
            "domainPrefix": "ferrytest",
            "http": { "method": method, "path": path, "protocol": "HTTP/1.1", "sourceIp": "127.0.0.1", "userAgent": "test" },
            "requestId": "request-1",
            "routeKey": "$default",
            "stage": "$default",
            "time": "30/Nov/2026:12:00:00 +0000",
            "timeEpoch": 1_796_040_000_000u64
        },
        "body": body,
        "isBase64Encoded": false
    })
}

fn signed_webhook(repository: &str, tag: &str, digest: &str) -> Value {
    let body = json!({ "repository": repository, "tag": tag, "digest": digest }).to_string();
    let timestamp = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs().to_string();
    let signature = ferry_core::intake::verify::generic_signature(SECRET.as_bytes(), &timestamp, body.as_bytes());
    function_url_event(
        "POST",
        "/hooks/generic",
        json!({ "content-type": "application/json", "x-ferry-timestamp": timestamp, "x-ferry-signature": signature }),
        &body,
    )
}

/// Runs `ferry ARGS --config FILE` against the same SQS queue and DynamoDB table.
fn ferry_json(aws: &Aws, config: &str, args: &[&str]) -> Value {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ferry.toml");
    std::fs::write(&path, config).unwrap();
    let mut command = ferry(args[0]).args(&args[1..]).arg("--json").arg("--config").arg(&path);
    for (key, value) in function_env(aws, config) {
        if key != "FERRY_CONFIG" {
            command = command.env(key, value);
        }
    }
    command.run().json()
}

#[test]
fn a_signed_webhook_through_the_functions_is_promoted_digest_exact_and_recorded_in_dynamodb() {
    let aws = Aws::start(5);
    let (build, dev) = (Registry::plain(), Registry::plain());
    let config = config(&aws, build.host(), dev.host());
    let mut layout = OciLayout::new();
    let image = layout.add_image("1.0", &[200_000, 100_000]);
    let pushed = build.skopeo_push(&layout.reference("1.0"), &format!("{REPO}:1.0"), &[]);
    let digest = pushed.computed_digest();
    assert_eq!(digest, image.digest());

    // ferry-webhook: a Function URL event carrying a signed webhook → 202, a message in SQS.
    let mut webhook = LambdaRuntime::start();
    webhook.run_function(&function_binary("ferry-webhook"), "ferry-webhook", &function_env(&aws, &config));
    let init = webhook.init_time(Duration::from_secs(30));
    eprintln!("ferry-webhook init: {init:?}");
    let answer =
        webhook.invoke(&signed_webhook(&format!("{}/{REPO}", build.host()), "1.0", &digest), Duration::from_secs(30));
    let answer = answer.response();
    assert_eq!(answer["statusCode"], 202, "{answer:#}\n{}", webhook.log());
    let body: Value = serde_json::from_str(answer["body"].as_str().unwrap()).unwrap();
    assert_eq!(body["jobs"][0]["stage"], "dev", "{body:#}");

    // ferry-worker: that message as an SQS batch event → copied digest-exact, no failures.
    let record = aws.next_record(&aws.queue_url);
    assert_eq!(record["messageId"], body["jobs"][0]["id"], "the queued job is the message: {record:#}");
    let mut worker = LambdaRuntime::start();
    worker.run_function(&function_binary("ferry-worker"), "ferry-worker", &function_env(&aws, &config));
    let answer = worker.invoke(&json!({ "Records": [record] }), Duration::from_secs(120)).response();
    assert_eq!(answer["batchItemFailures"], json!([]), "{answer:#}\n{}", worker.log());
    let copied = dev.client().manifest(REPO, "dev").unwrap_or_else(|| panic!("dev has no image\n{}", worker.log()));
    assert_eq!(copied.digest, digest);
    assert_eq!(copied.computed_digest(), digest);
    assert_eq!(dev.client().manifest(REPO, "1.0").map(|m| m.digest), Some(digest.clone()));

    // The ledger row is in DynamoDB: the operator CLI reads it from the same table.
    let history = ferry_json(&aws, &config, &["history", "shop-api"]);
    assert_eq!(history[0]["digest"], digest.as_str(), "{history:#}");
    assert_eq!(history[0]["state"], "succeeded", "{history:#}");

    // ferry-api: the operations API over a Function URL event, and the scheduled sweep.
    let mut api = LambdaRuntime::start();
    api.run_function(&function_binary("ferry-api"), "ferry-api", &function_env(&aws, &config));
    let status = api
        .invoke(
            &function_url_event(
                "GET",
                "/api/status",
                json!({ "authorization": format!("Bearer {OPERATOR_TOKEN}") }),
                "",
            ),
            Duration::from_secs(30),
        )
        .response();
    assert_eq!(status["statusCode"], 200, "{status:#}\n{}", api.log());
    let pipelines: Value = serde_json::from_str(status["body"].as_str().unwrap()).unwrap();
    assert_eq!(pipelines[0]["stages"][0]["current"]["digest"], digest.as_str(), "{pipelines:#}");
    let unauthorized =
        api.invoke(&function_url_event("GET", "/api/status", json!({}), ""), Duration::from_secs(30)).response();
    assert_eq!(unauthorized["statusCode"], 401, "{unauthorized:#}");
    let sweep = json!({
        "version": "0", "id": "sweep-1", "detail-type": "Scheduled Event", "source": "aws.events",
        "account": "123456789012", "time": "2026-11-30T12:00:00Z", "region": "us-east-1",
        "resources": ["arn:aws:events:us-east-1:123456789012:rule/ferry-sweep"], "detail": {}
    });
    assert_eq!(api.invoke(&sweep, Duration::from_secs(30)).response(), json!({ "swept": true }), "{}", api.log());
}

#[test]
fn failing_messages_are_reported_as_batch_item_failures_then_dead_lettered_with_their_reason() {
    let aws = Aws::start(5);
    // The build registry is configured but down: every attempt fails transiently.
    let down = format!("127.0.0.1:{}", free_port());
    let dev = Registry::plain();
    let config = config(&aws, &down, dev.host());
    let mut worker = LambdaRuntime::start();
    worker.run_function(&function_binary("ferry-worker"), "ferry-worker", &function_env(&aws, &config));

    let digest = format!("sha256:{}", "ab".repeat(32));
    let job = json!({
        "kind": "promote", "pipeline": "shop-api", "stage": "dev", "source": format!("{down}/{REPO}"),
        "request": { "sender": "generic", "registry": down, "repository": REPO, "tag": "1.0", "digest": digest }
    });
    aws.send(&job.to_string(), "shop-api/dev");
    // First delivery: a transient failure stays queued → reported to Lambda.
    let record = aws.next_record(&aws.queue_url);
    let id = record["messageId"].clone();
    let answer = worker.invoke(&json!({ "Records": [record] }), Duration::from_secs(120)).response();
    assert_eq!(answer["batchItemFailures"], json!([{ "itemIdentifier": id }]), "{answer:#}\n{}", worker.log());
    // Second delivery is the last attempt (max_attempts = 2): the job goes to the DLQ with its
    // reason, and Lambda is told nothing failed (so it does not retry a dead letter).
    let record = aws.next_record(&aws.queue_url);
    assert_eq!(record["attributes"]["ApproximateReceiveCount"], "2", "{record:#}");
    let answer = worker.invoke(&json!({ "Records": [record] }), Duration::from_secs(120)).response();
    assert_eq!(answer["batchItemFailures"], json!([]), "{answer:#}\n{}", worker.log());

    // A poisoned message (not a job at all) is dead-lettered at once, not retried.
    aws.send("this is not a Ferry job", "poison");
    let record = aws.next_record(&aws.queue_url);
    let answer = worker.invoke(&json!({ "Records": [record] }), Duration::from_secs(60)).response();
    assert_eq!(answer["batchItemFailures"], json!([]), "{answer:#}\n{}", worker.log());

    let dead = ferry_json(&aws, &config, &["dlq", "list"]);
    let errors: Vec<&str> = dead.as_array().unwrap().iter().filter_map(|d| d["last_error"].as_str()).collect();
    assert_eq!(errors.len(), 2, "{dead:#}");
    assert!(errors.iter().any(|e| e.contains("gave up after 2 attempts") && e.contains(&down)), "{errors:#?}");
    assert!(errors.iter().any(|e| e.contains("unreadable job payload") && e.contains("not retried")), "{errors:#?}");
}

#[test]
fn the_worker_starts_nothing_near_its_deadline_and_holds_back_the_rest_of_a_failing_group() {
    let aws = Aws::start(5);
    let down = format!("127.0.0.1:{}", free_port());
    let dev = Registry::plain();
    // Every receive counts as an attempt in SQS, also a record handed back unprocessed.
    let config = config(&aws, &down, dev.host()).replace("max_attempts = 2", "max_attempts = 5");
    let mut worker = LambdaRuntime::start();
    worker.run_function(&function_binary("ferry-worker"), "ferry-worker", &function_env(&aws, &config));
    let job = |tag: &str| {
        json!({
            "kind": "promote", "pipeline": "shop-api", "stage": "dev", "source": format!("{down}/{REPO}"),
            "request": { "sender": "generic", "registry": down, "repository": REPO, "tag": tag,
                         "digest": format!("sha256:{}", "cd".repeat(32)) }
        })
        .to_string()
    };
    aws.send(&job("1.0"), "shop-api/dev");
    aws.send(&job("1.1"), "shop-api/dev");
    let records = aws.next_records(&aws.queue_url, 2);
    let ids = json!([{ "itemIdentifier": records[0]["messageId"] }, { "itemIdentifier": records[1]["messageId"] }]);

    // 10 s before the deadline nothing starts: both records go back untouched, at once.
    let started = std::time::Instant::now();
    let answer = worker
        .invoke_with_deadline(&json!({ "Records": records }), Duration::from_secs(10), Duration::from_secs(30))
        .response();
    assert_eq!(answer["batchItemFailures"], ids, "{answer:#}\n{}", worker.log());
    assert!(started.elapsed() < Duration::from_secs(5), "the worker worked near its deadline: {:?}", started.elapsed());
    assert!(!worker.log().contains("cannot reach"), "a record was processed:\n{}", worker.log());

    // With time: the first fails (its registry is down) and holds back the second of its group.
    let records = aws.next_records(&aws.queue_url, 2);
    let ids = json!([{ "itemIdentifier": records[0]["messageId"] }, { "itemIdentifier": records[1]["messageId"] }]);
    let answer = worker.invoke(&json!({ "Records": records }), Duration::from_secs(120)).response();
    assert_eq!(answer["batchItemFailures"], ids, "{answer:#}\n{}", worker.log());
    assert_eq!(worker.log().matches("attempt failed; will retry").count(), 1, "{}", worker.log());
}

/// The API function serves the web console too: the sign-in page, a personal-token sign-in, the
/// console page and its assets. A session made by one instance is accepted by another (both read
/// the same `identity.session_key`), as on Lambda, where every request may meet a new instance.
#[test]
fn the_api_function_serves_the_console_and_its_sessions_hold_across_instances() {
    const SESSION_KEY: &str = "lambda-e2e-session-key-0123456789abcdef";
    const TOKEN: &str = "lambda-e2e-personal-token-0123456789abcdef";
    let aws = Aws::start(5);
    let hash = ferry("token").arg("hash").stdin(TOKEN).run().success().trim().to_string();
    let config = config(&aws, "127.0.0.1:9", "127.0.0.1:10").replace(
        "[worker]",
        &format!(
            "[identity]\nsession_key_env = \"FERRY_SESSION_KEY\"\n[[identity.users]]\nname = \"sam\"\n\
             token_hash = \"{hash}\"\n[[identity.grants]]\nsubject = \"sam\"\nrole = \"approver\"\n\n[worker]"
        ),
    );
    let mut env = function_env(&aws, &config);
    env.push(("FERRY_SESSION_KEY", SESSION_KEY.into()));
    let start = || {
        let mut api = LambdaRuntime::start();
        api.run_function(&function_binary("ferry-api"), "ferry-api", &env);
        api
    };
    let (first, second) = (start(), start());
    let call = |api: &LambdaRuntime, method: &str, path: &str, cookie: Option<&str>, body: &str| {
        let mut event =
            function_url_event(method, path, json!({ "content-type": "application/x-www-form-urlencoded" }), body);
        event["cookies"] = json!(cookie.into_iter().collect::<Vec<_>>());
        api.invoke(&event, Duration::from_secs(30)).response()
    };
    let set_cookie = |answer: &Value, name: &str| -> String {
        answer["cookies"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
            .find(|c| c.starts_with(&format!("{name}=")) && !c.starts_with(&format!("{name}=;")))
            .unwrap_or_else(|| panic!("no {name} cookie set: {answer:#}"))
            .split(';')
            .next()
            .unwrap()
            .to_string()
    };

    let page = call(&first, "GET", "/", None, "");
    assert_eq!(page["statusCode"], 303, "not signed in: to the sign-in page: {page:#}");
    let login = call(&first, "GET", "/login", None, "");
    assert_eq!(login["statusCode"], 200, "{login:#}\n{}", first.log());
    assert!(login["body"].as_str().unwrap().contains("token-form"), "{login:#}");
    let form_cookie = set_cookie(&login, "ferry_login");
    let form_token = form_cookie.trim_start_matches("ferry_login=");
    let signed_in =
        call(&first, "POST", "/login/token", Some(&form_cookie), &format!("token={TOKEN}&csrf={form_token}&next=%2F"));
    assert_eq!(signed_in["statusCode"], 303, "{signed_in:#}\n{}", first.log());
    let session = set_cookie(&signed_in, "ferry_session");

    // The other instance accepts the session, serves the page with its CSRF token, and the assets.
    let me = call(&second, "GET", "/api/me", Some(&session), "");
    assert_eq!(me["statusCode"], 200, "{me:#}\n{}", second.log());
    let me: Value = serde_json::from_str(me["body"].as_str().unwrap()).unwrap();
    assert_eq!((me["subject"].as_str(), me["via"].as_str()), (Some("sam"), Some("user-token")), "{me:#}");
    let page = call(&second, "GET", "/", Some(&session), "");
    assert_eq!(page["statusCode"], 200, "{page:#}");
    assert!(page["body"].as_str().unwrap().contains("name=\"ferry-csrf\""), "{page:#}");
    let script = call(&second, "GET", "/console/app.js", None, "");
    assert_eq!(script["statusCode"], 200);
    assert!(script["headers"]["content-type"].as_str().unwrap().starts_with("text/javascript"), "{script:#}");
    // A state change on the session needs its CSRF token, on Lambda as in ferry serve.
    let forged = call(&second, "POST", "/api/dlq/nothing/redrive", Some(&session), "");
    assert_eq!(forged["statusCode"], 403, "{forged:#}");
    assert!(forged["body"].as_str().unwrap().contains("CSRF"), "{forged:#}");
}

/// The Lambda figures for BENCHMARKS.md (`bench/lambda.sh`, not part of the test suite): each
/// release `bootstrap`'s zip size and init time (process start to its first `next` request, the
/// median of 7 starts), and one promotion of a 1 GiB, 8-layer image through the worker bootstrap
/// between two local registries: its duration, the function's peak RSS, and the GB-seconds it
/// would be billed at 256 MiB. Reads the binaries from `FERRY_LAMBDA_DIR` (`target/lambda`).
#[test]
#[ignore = "a benchmark: run it with bench/lambda.sh"]
fn lambda_figures() {
    let dir = PathBuf::from(std::env::var("FERRY_LAMBDA_DIR").expect("FERRY_LAMBDA_DIR=target/lambda"));
    let aws = Aws::start(5);
    let (build, dev) = (Registry::plain(), Registry::plain());
    let config = config(&aws, build.host(), dev.host());
    let env = function_env(&aws, &config);
    for name in ["ferry-webhook", "ferry-worker", "ferry-api"] {
        let zip = dir.join(name).join("bootstrap.zip");
        let zip_bytes = std::fs::metadata(&zip).unwrap_or_else(|e| panic!("{}: {e}", zip.display())).len();
        let mut inits: Vec<Duration> = (0..7)
            .map(|_| {
                let mut runtime = LambdaRuntime::start();
                runtime.run_function(&dir.join(name).join("bootstrap"), name, &env);
                runtime.init_time(Duration::from_secs(30))
            })
            .collect();
        inits.sort();
        println!(
            "FIGURE {name}: zip {:.2} MiB, init median {:.1} ms (min {:.1}, max {:.1})",
            zip_bytes as f64 / (1024.0 * 1024.0),
            inits[3].as_secs_f64() * 1000.0,
            inits[0].as_secs_f64() * 1000.0,
            inits[6].as_secs_f64() * 1000.0
        );
    }

    let mut layout = OciLayout::new();
    let image = layout.add_image("big", &[128 * 1024 * 1024; 8]);
    let digest = build.skopeo_push(&layout.reference("big"), &format!("{REPO}:big"), &[]).computed_digest();
    assert_eq!(digest, image.digest());
    let job = json!({
        "kind": "promote", "pipeline": "shop-api", "stage": "dev", "source": format!("{}/{REPO}", build.host()),
        "request": { "sender": "generic", "registry": build.host(), "repository": REPO, "tag": "big", "digest": digest }
    });
    aws.send(&job.to_string(), "shop-api/dev");
    let record = aws.next_record(&aws.queue_url);
    let mut worker = LambdaRuntime::start();
    worker.run_function(&dir.join("ferry-worker").join("bootstrap"), "ferry-worker", &env);
    worker.init_time(Duration::from_secs(30));
    let started = std::time::Instant::now();
    let answer = worker.invoke(&json!({ "Records": [record] }), Duration::from_secs(600)).response();
    let took = started.elapsed();
    assert_eq!(answer["batchItemFailures"], json!([]), "{answer:#}\n{}", worker.log());
    assert_eq!(dev.client().manifest(REPO, "big").map(|m| m.digest), Some(digest));
    let peak_kib = worker.peak_rss_kib();
    println!(
        "FIGURE promotion of 1 GiB (8 x 128 MiB): {:.2} s, peak RSS {:.1} MiB, {:.3} GB-s at 256 MiB ({:.3} at 128 MiB)",
        took.as_secs_f64(),
        peak_kib as f64 / 1024.0,
        took.as_secs_f64() * 0.25,
        took.as_secs_f64() * 0.125
    );
}

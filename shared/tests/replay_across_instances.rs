//! The generic sender's replay guard across instances: two intakes (two Lambda instances, each
//! with its own memory) sharing the DynamoDB table on `moto_server`. A signed request accepted
//! by one is refused by the other.

#[path = "conformance/moto.rs"]
mod moto;

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use axum::body::Body;
use axum::http::{Request, StatusCode};
use ferry_core::config::Config;
use ferry_core::http::{Intake, SIGNATURE_HEADER, TIMESTAMP_HEADER, router};
use ferry_core::intake::replay::{SeenSignatures, SharedReplayGuard};
use ferry_core::intake::verify::generic_signature;
use ferry_core::ledger::DynamoLedger;
use ferry_core::queue::{JobQueue, SqsQueue};
use tower::ServiceExt;

const SECRET: &str = "generic-secret";

fn now() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs() as i64
}

/// One instance: its own intake (and its own in-memory guard) over the shared queue and table.
async fn instance(moto: &moto::Moto, queue_url: &str, table: &str, secret_file: &std::path::Path) -> axum::Router {
    let config = Config::parse(
        &format!(
            r#"
[registries."127.0.0.1:5001"]
[registries."127.0.0.1:5002"]
[sources.generic]
secret_file = {secret_file:?}
[[pipelines]]
name = "local"
source = "127.0.0.1:5001/shop/api"
  [[pipelines.stages]]
  name = "dev"
  target = "127.0.0.1:5002/shop/api"
"#
        ),
        "test.toml",
    )
    .unwrap();
    let queue: Arc<dyn JobQueue> = Arc::new(SqsQueue::open(moto.sqs(), queue_url, 3).await.unwrap());
    let ledger = Arc::new(DynamoLedger::open(moto.dynamodb(), table).await.unwrap());
    let guard = SharedReplayGuard::new(ledger as Arc<dyn SeenSignatures>, Intake::replay_window(&config));
    let intake = Intake::new(&config, queue).unwrap().with_replay_guard(Arc::new(guard));
    router(Arc::new(intake))
}

fn signed(body: &str, timestamp: &str) -> Request<Body> {
    Request::post("/hooks/generic")
        .header("content-type", "application/json")
        .header(TIMESTAMP_HEADER, timestamp)
        .header(SIGNATURE_HEADER, generic_signature(SECRET.as_bytes(), timestamp, body.as_bytes()))
        .body(Body::from(body.to_string()))
        .unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_request_accepted_by_one_instance_is_a_replay_at_another() {
    let moto = moto::Moto::start();
    let (queue_url, table) = (moto.fifo_queue_with_dlq(10).await, moto.ledger_table().await);
    let dir = tempfile::tempdir().unwrap();
    let secret_file = dir.path().join("generic.secret");
    std::fs::write(&secret_file, SECRET).unwrap();
    let first = instance(&moto, &queue_url, &table, &secret_file).await;
    let second = instance(&moto, &queue_url, &table, &secret_file).await;

    let body = r#"{"repository":"127.0.0.1:5001/shop/api","tag":"1.0"}"#;
    let timestamp = now().to_string();
    let accepted = first.oneshot(signed(body, &timestamp)).await.unwrap();
    assert_eq!(accepted.status(), StatusCode::ACCEPTED);
    let replayed = second.clone().oneshot(signed(body, &timestamp)).await.unwrap();
    assert_eq!(replayed.status(), StatusCode::UNAUTHORIZED);
    let answer = axum::body::to_bytes(replayed.into_body(), 1 << 16).await.unwrap();
    assert!(String::from_utf8_lossy(&answer).contains("replayed request"));
    // A new signature (a later timestamp) is a new request.
    let later = (now() + 1).to_string();
    assert_eq!(second.oneshot(signed(body, &later)).await.unwrap().status(), StatusCode::ACCEPTED);
}

#[tokio::test(flavor = "multi_thread")]
async fn racing_instances_accept_a_signature_once_until_it_expires() {
    let moto = moto::Moto::start();
    let table = moto.ledger_table().await;
    let a = Arc::new(DynamoLedger::open(moto.dynamodb(), &table).await.unwrap());
    let b = Arc::new(DynamoLedger::open(moto.dynamodb(), &table).await.unwrap());
    let racing: Vec<_> = (0..8)
        .map(|i| {
            let guard = if i % 2 == 0 { a.clone() } else { b.clone() };
            tokio::spawn(async move { guard.first_use("sha256=abc", now() + 600).await.unwrap() })
        })
        .collect();
    let mut firsts = 0;
    for task in racing {
        firsts += usize::from(task.await.unwrap());
    }
    assert_eq!(firsts, 1, "exactly one instance accepts the signature");
    // Forgotten (its request was not queued): the sender's retry is accepted.
    b.forget("sha256=abc").await.unwrap();
    assert!(a.first_use("sha256=abc", now() + 600).await.unwrap());
    // Expired but not yet deleted by TTL (DynamoDB deletes lazily): accepted again.
    assert!(a.first_use("sha256=old", now() - 1).await.unwrap());
    assert!(b.first_use("sha256=old", now() + 600).await.unwrap());
    assert!(!a.first_use("sha256=old", now() + 600).await.unwrap());
}

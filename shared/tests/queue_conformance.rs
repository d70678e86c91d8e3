//! One suite, every [`JobQueue`]: each test below runs against the embedded SQLite queue and
//! against [`SqsQueue`] on a FIFO queue in `moto_server`. The tests state the AWS contract;
//! where moto differs from AWS it is said beside the assertion.

#[path = "conformance/moto.rs"]
mod moto;

use std::any::Any;
use std::sync::Arc;
use std::time::{Duration, Instant};

use ferry_core::queue::{Delivery, JobQueue, NewJob, QueueError, SqliteQueue, SqliteQueueOptions, SqsQueue};
use serde_json::json;

/// A nack at this receive count dead-letters the job.
const MAX_RECEIVES: u32 = 3;
/// The redrive policy's `maxReceiveCount`: above `MAX_RECEIVES`, so Ferry dead-letters first
/// (with the error); the policy catches only workers that never settle.
const SAFETY_NET: u32 = 10;
/// Long enough never to expire during a test step.
const HOLD: Duration = Duration::from_secs(60);
/// Generous bound for anything that must happen "after a second or so" on a busy machine.
const PATIENCE: Duration = Duration::from_secs(30);

struct Backend {
    queue: Arc<dyn JobQueue>,
    /// A job acked within the dedup window still catches its duplicates. AWS SQS FIFO does
    /// (the 5-minute window counts from the send, whatever happened to the message since);
    /// moto only compares with messages still in the queue, so on moto this is not asserted.
    dedups_after_ack: bool,
    _keep: Box<dyn Any>,
}

fn sqlite() -> Backend {
    let dir = tempfile::tempdir().unwrap();
    let options = SqliteQueueOptions { max_receives: MAX_RECEIVES, ..SqliteQueueOptions::default() };
    let queue = SqliteQueue::open(&dir.path().join("queue.db"), options).unwrap();
    Backend { queue: Arc::new(queue), dedups_after_ack: true, _keep: Box::new(dir) }
}

async fn sqs() -> Backend {
    let moto = moto::Moto::start();
    let url = moto.fifo_queue_with_dlq(SAFETY_NET).await;
    let queue = SqsQueue::open(moto.sqs(), &url, MAX_RECEIVES).await.unwrap();
    Backend { queue: Arc::new(queue), dedups_after_ack: false, _keep: Box::new(moto) }
}

macro_rules! conformance {
    ($($test:ident),* $(,)?) => {
        mod sqlite {
            $(#[tokio::test(flavor = "multi_thread")]
            async fn $test() {
                super::$test(super::sqlite()).await
            })*
        }
        mod sqs {
            $(#[tokio::test(flavor = "multi_thread")]
            async fn $test() {
                super::$test(super::sqs().await).await
            })*
        }
    };
}

conformance!(
    jobs_arrive_with_their_payload_and_id,
    duplicate_keys_yield_one_job,
    unsettled_delivery_is_redelivered_after_its_visibility,
    extend_keeps_a_delivery_invisible,
    nack_makes_the_job_visible_after_retry_after,
    stale_receipt_does_not_settle_the_newer_delivery,
    job_failing_every_attempt_is_dead_lettered_with_its_error,
    redriven_job_is_delivered_again,
    empty_dedup_key_is_refused,
);

fn job(key: &str, group: &str, n: u32) -> NewJob {
    NewJob::new(key.to_string(), &json!({ "kind": "test", "n": n, "key": key })).in_stage("conformance", group)
}

/// Receives until a delivery arrives or `PATIENCE` runs out.
async fn next(queue: &dyn JobQueue, visibility: Duration) -> Delivery {
    let deadline = Instant::now() + PATIENCE;
    loop {
        if let Some(delivery) = queue.receive(1, visibility).await.unwrap().pop() {
            return delivery;
        }
        assert!(Instant::now() < deadline, "no delivery within {PATIENCE:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn nothing_ready(queue: &dyn JobQueue) -> bool {
    queue.receive(10, HOLD).await.unwrap().is_empty()
}

async fn jobs_arrive_with_their_payload_and_id(backend: Backend) {
    let queue = backend.queue.as_ref();
    let enqueued = queue.enqueue(vec![job("a", "dev", 1), job("b", "prod", 2)]).await.unwrap();
    assert_eq!(enqueued.len(), 2);
    assert_ne!(enqueued[0].id, enqueued[1].id);
    assert!(enqueued.iter().all(|e| e.duplicate != Some(true)), "{enqueued:?}");
    let mut deliveries = vec![next(queue, HOLD).await, next(queue, HOLD).await];
    deliveries.sort_by_key(|d| d.payload["n"].as_u64());
    for (delivery, (enqueued, n)) in deliveries.iter().zip(enqueued.iter().zip([1, 2])) {
        assert_eq!(delivery.id, enqueued.id);
        assert_eq!(delivery.payload, json!({ "kind": "test", "n": n, "key": delivery.payload["key"] }));
        assert_eq!(delivery.receive_count, 1);
    }
    for delivery in &deliveries {
        queue.ack(&delivery.receipt).await.unwrap();
    }
    assert!(nothing_ready(queue).await);
    queue.check().await.unwrap();
}

async fn duplicate_keys_yield_one_job(backend: Backend) {
    let queue = backend.queue.as_ref();
    let batch = queue.enqueue(vec![job("same", "dev", 1), job("same", "dev", 2)]).await.unwrap();
    // Within one batch both backends know: the second is the first job.
    assert_eq!(batch[1].duplicate, Some(true), "{batch:?}");
    assert_eq!(batch[1].id, batch[0].id);
    let again = queue.enqueue(vec![job("same", "dev", 3)]).await.unwrap().remove(0);
    // SQLite knows it is a duplicate; SQS cannot tell and says so (None), never "new".
    assert_ne!(again.duplicate, Some(false), "{again:?}");
    if again.duplicate == Some(true) {
        assert_eq!(again.id, batch[0].id);
    }
    let delivery = next(queue, HOLD).await;
    assert_eq!(delivery.payload["n"], 1, "the first job is the one kept");
    assert!(nothing_ready(queue).await, "a duplicate was delivered");
    queue.ack(&delivery.receipt).await.unwrap();
    if backend.dedups_after_ack {
        // Done, but within the dedup window (5 minutes, as SQS FIFO): still not added again.
        let after = queue.enqueue(vec![job("same", "dev", 4)]).await.unwrap().remove(0);
        assert_ne!(after.duplicate, Some(false), "{after:?}");
        assert!(nothing_ready(queue).await, "a duplicate was delivered after the first was acked");
    }
}

async fn unsettled_delivery_is_redelivered_after_its_visibility(backend: Backend) {
    let queue = backend.queue.as_ref();
    let id = queue.enqueue(vec![job("lease", "dev", 1)]).await.unwrap().remove(0).id;
    let first = next(queue, Duration::from_secs(1)).await;
    // The worker "dies": no ack, no nack. The job comes back once the visibility ends.
    let second = next(queue, HOLD).await;
    assert_eq!((second.id.as_str(), second.receive_count), (id.as_str(), 2));
    assert_ne!(second.receipt, first.receipt);
    queue.ack(&second.receipt).await.unwrap();
    assert!(nothing_ready(queue).await);
}

async fn extend_keeps_a_delivery_invisible(backend: Backend) {
    let queue = backend.queue.as_ref();
    queue.enqueue(vec![job("extend", "dev", 1)]).await.unwrap();
    let delivery = next(queue, Duration::from_secs(1)).await;
    queue.extend(&delivery.receipt, HOLD).await.unwrap();
    // Without the extension it would be visible again after 1 s; wait well past that.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(nothing_ready(queue).await, "the extended delivery was handed out again");
    queue.ack(&delivery.receipt).await.unwrap();
}

async fn nack_makes_the_job_visible_after_retry_after(backend: Backend) {
    let queue = backend.queue.as_ref();
    queue.enqueue(vec![job("backoff", "dev", 1)]).await.unwrap();
    let delivery = next(queue, HOLD).await;
    queue.nack(&delivery.receipt, "registry down", Duration::from_secs(3)).await.unwrap();
    assert!(nothing_ready(queue).await, "visible before retry_after");
    let again = next(queue, HOLD).await;
    assert_eq!((again.id.as_str(), again.receive_count), (delivery.id.as_str(), 2));
    queue.ack(&again.receipt).await.unwrap();
    assert!(queue.dead_letters().await.unwrap().is_empty());
}

async fn stale_receipt_does_not_settle_the_newer_delivery(backend: Backend) {
    let queue = backend.queue.as_ref();
    queue.enqueue(vec![job("stale", "dev", 1)]).await.unwrap();
    let old = next(queue, Duration::from_secs(1)).await;
    let new = next(queue, HOLD).await;
    assert_eq!(new.receive_count, 2);
    // The old receipt names a delivery that is gone: refused (or a no-op), never an ack of the
    // new one. (moto deletes a message by any receipt it ever had; AWS does not: SqsQueue itself
    // refuses receipts whose lease ran out, so the contract holds on both.)
    let ack = queue.ack(&old.receipt).await;
    assert!(matches!(ack, Ok(()) | Err(QueueError::StaleReceipt(_))), "{ack:?}");
    let extend = queue.extend(&old.receipt, HOLD).await;
    assert!(matches!(extend, Err(QueueError::StaleReceipt(_))), "{extend:?}");
    // The new delivery still owns the job: nack it and it comes back.
    queue.nack(&new.receipt, "try once more", Duration::ZERO).await.unwrap();
    let third = next(queue, HOLD).await;
    assert_eq!((third.id.as_str(), third.receive_count), (old.id.as_str(), 3));
    queue.ack(&third.receipt).await.unwrap();
}

async fn job_failing_every_attempt_is_dead_lettered_with_its_error(backend: Backend) {
    let queue = backend.queue.as_ref();
    let id = queue.enqueue(vec![job("poison", "dev", 7)]).await.unwrap().remove(0).id;
    for attempt in 1..=MAX_RECEIVES {
        let delivery = next(queue, HOLD).await;
        assert_eq!((delivery.id.as_str(), delivery.receive_count), (id.as_str(), attempt));
        queue.nack(&delivery.receipt, &format!("manifest unknown (attempt {attempt})"), Duration::ZERO).await.unwrap();
    }
    assert!(nothing_ready(queue).await, "a dead-lettered job was delivered");
    // Listing twice: listing loses nothing.
    for _ in 0..2 {
        let letters = queue.dead_letters().await.unwrap();
        assert_eq!(letters.len(), 1, "{letters:?}");
        let letter = &letters[0];
        assert_eq!(letter.id, id);
        assert_eq!(letter.last_error, format!("manifest unknown (attempt {MAX_RECEIVES})"));
        assert_eq!(letter.receive_count, MAX_RECEIVES);
        assert_eq!(letter.payload["n"], 7);
        assert!(letter.failed_at_unix_ms > 0);
    }
}

async fn redriven_job_is_delivered_again(backend: Backend) {
    let queue = backend.queue.as_ref();
    queue.enqueue(vec![job("other", "prod", 1)]).await.unwrap();
    let id = queue.enqueue(vec![job("revived", "dev", 2)]).await.unwrap().remove(0).id;
    // Fail "revived" to the end; leave "other" alone (acked).
    let mut failures = 0;
    while failures < MAX_RECEIVES {
        let delivery = next(queue, HOLD).await;
        if delivery.id == id {
            queue.nack(&delivery.receipt, "boom", Duration::ZERO).await.unwrap();
            failures += 1;
        } else {
            queue.ack(&delivery.receipt).await.unwrap();
        }
    }
    assert_eq!(queue.dead_letters().await.unwrap().len(), 1);
    assert!(!queue.redrive("no-such-job").await.unwrap());
    assert!(queue.redrive(&id).await.unwrap());
    assert!(queue.dead_letters().await.unwrap().is_empty());
    let delivery = next(queue, HOLD).await;
    assert_eq!((delivery.id.as_str(), delivery.receive_count), (id.as_str(), 1), "same job, counted afresh");
    assert_eq!(delivery.payload["n"], 2);
    queue.ack(&delivery.receipt).await.unwrap();
    assert!(!queue.redrive(&id).await.unwrap(), "redriven twice");
}

async fn empty_dedup_key_is_refused(backend: Backend) {
    let queue = backend.queue.as_ref();
    let result = queue.enqueue(vec![job("fine", "dev", 1), job("", "dev", 2)]).await;
    assert!(matches!(result, Err(QueueError::Invalid(_))), "{result:?}");
    assert!(nothing_ready(queue).await, "part of a refused batch was queued");
}

/// What only the SQS queue has: a redrive policy, groups, and an AWS account to be wrong about.
mod sqs_only {
    use super::*;
    use aws_sdk_sqs::types::QueueAttributeName;

    #[tokio::test(flavor = "multi_thread")]
    async fn a_queue_without_redrive_policy_is_refused_with_what_to_set() {
        let moto = moto::Moto::start();
        let url = moto
            .sqs()
            .create_queue()
            .queue_name(format!("bare-{}.fifo", uuid::Uuid::new_v4().simple()))
            .attributes(QueueAttributeName::FifoQueue, "true")
            .send()
            .await
            .unwrap()
            .queue_url
            .unwrap();
        let error = SqsQueue::open(moto.sqs(), &url, MAX_RECEIVES).await.err().expect("refused");
        assert!(matches!(error, QueueError::Unavailable(ref m) if m.contains("no redrive policy")), "{error}");
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn a_missing_queue_is_unavailable_not_invalid() {
        let moto = moto::Moto::start();
        let url = format!("{}/000000000000/nowhere.fifo", moto.endpoint);
        let error = SqsQueue::open(moto.sqs(), &url, MAX_RECEIVES).await.err().expect("refused");
        assert!(matches!(error, QueueError::Unavailable(ref m) if m.contains("nowhere.fifo")), "{error}");
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn the_dead_letter_queue_is_the_one_the_redrive_policy_names() {
        let moto = moto::Moto::start();
        let url = moto.fifo_queue_with_dlq(SAFETY_NET).await;
        let queue = SqsQueue::open(moto.sqs(), &url, MAX_RECEIVES).await.unwrap();
        let expected = url.replace(".fifo", "-dlq.fifo");
        assert_eq!(queue.dead_letter_url(), expected);
    }

    /// A worker that dies on every delivery never nacks: the redrive policy moves the job after
    /// `maxReceiveCount` receives. It is listed with an error saying so, and can be redriven.
    #[tokio::test(flavor = "multi_thread")]
    async fn jobs_moved_by_the_redrive_policy_are_listed_and_redriven() {
        let moto = moto::Moto::start();
        let url = moto.fifo_queue_with_dlq(1).await;
        let queue = SqsQueue::open(moto.sqs(), &url, MAX_RECEIVES).await.unwrap();
        let id = queue.enqueue(vec![job("crash", "dev", 5)]).await.unwrap().remove(0).id;
        let first = next(&queue, Duration::from_secs(1)).await;
        assert_eq!(first.id, id);
        // Visible again after 1 s; the next receive exceeds maxReceiveCount = 1: SQS moves it.
        let deadline = Instant::now() + PATIENCE;
        let letters = loop {
            assert!(queue.receive(1, HOLD).await.unwrap().is_empty(), "delivered past maxReceiveCount");
            let letters = queue.dead_letters().await.unwrap();
            if !letters.is_empty() {
                break letters;
            }
            assert!(Instant::now() < deadline, "the redrive policy never moved the job");
            tokio::time::sleep(Duration::from_millis(300)).await;
        };
        assert_eq!(letters.len(), 1);
        assert_eq!(letters[0].id, id);
        assert!(letters[0].last_error.contains("redrive policy"), "{}", letters[0].last_error);
        assert_eq!(letters[0].payload["n"], 5);
        assert!(queue.redrive(&id).await.unwrap());
        let again = next(&queue, HOLD).await;
        assert_eq!((again.id.as_str(), again.payload["n"].as_u64()), (id.as_str(), Some(5)));
        queue.ack(&again.receipt).await.unwrap();
    }

    /// Jobs of one pipeline stage are handed out one at a time, in order: SQS FIFO holds the rest
    /// of a group while one of its messages is in flight. Other stages are not held up.
    #[tokio::test(flavor = "multi_thread")]
    async fn one_stage_works_on_one_job_at_a_time() {
        let moto = moto::Moto::start();
        let url = moto.fifo_queue_with_dlq(SAFETY_NET).await;
        let queue = SqsQueue::open(moto.sqs(), &url, MAX_RECEIVES).await.unwrap();
        queue.enqueue(vec![job("p1", "prod", 1), job("p2", "prod", 2), job("d1", "dev", 3)]).await.unwrap();
        let first = queue.receive(10, HOLD).await.unwrap();
        let stages: Vec<u64> = first.iter().filter_map(|d| d.payload["n"].as_u64()).collect();
        // moto hands out a whole group's messages together; AWS returns them together too (in
        // order), but then holds the group until they are settled. Either way, in order:
        let prod: Vec<u64> = stages.iter().copied().filter(|n| *n != 3).collect();
        assert!(prod == [1] || prod == [1, 2], "prod jobs out of order: {stages:?}");
        assert!(stages.contains(&3), "another stage was held up: {stages:?}");
        for delivery in first {
            queue.ack(&delivery.receipt).await.unwrap();
        }
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn a_lambda_record_can_be_settled_like_a_delivery() {
        let moto = moto::Moto::start();
        let url = moto.fifo_queue_with_dlq(SAFETY_NET).await;
        let queue = SqsQueue::open(moto.sqs(), &url, 1).await.unwrap();
        queue.enqueue(vec![job("lambda", "dev", 9)]).await.unwrap();
        // The event source mapping received it, not this process.
        let message = moto
            .sqs()
            .receive_message()
            .queue_url(&url)
            .visibility_timeout(60)
            .message_system_attribute_names(aws_sdk_sqs::types::MessageSystemAttributeName::All)
            .send()
            .await
            .unwrap()
            .messages
            .unwrap()
            .remove(0);
        let group =
            message.attributes().and_then(|a| a.get(&aws_sdk_sqs::types::MessageSystemAttributeName::MessageGroupId));
        assert_eq!(group.map(String::as_str), Some("conformance/dev"), "MessageGroupId is pipeline/stage");
        let delivery = queue.adopt(
            ferry_core::queue::ReceivedMessage {
                message_id: message.message_id().unwrap(),
                receipt_handle: message.receipt_handle().unwrap(),
                body: message.body().unwrap(),
                receive_count: 1,
                group: Some("conformance/dev"),
                job_id: None,
            },
            HOLD,
        );
        assert_eq!(delivery.payload["n"], 9);
        // max_receives = 1: this nack dead-letters it, with the error.
        queue.nack(&delivery.receipt, "copy failed: 500 from target", Duration::ZERO).await.unwrap();
        let letters = queue.dead_letters().await.unwrap();
        assert_eq!(letters.len(), 1);
        assert_eq!(
            (letters[0].id.as_str(), letters[0].last_error.as_str()),
            (delivery.id.as_str(), "copy failed: 500 from target")
        );
    }
}

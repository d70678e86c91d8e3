//! What the Lambda functions (`functions/`) share: starting up from the environment, turning an
//! SQS batch into worker deliveries, and telling scheduled events from HTTP requests. The
//! functions' `main`s stay a few lines; everything they do is here, next to the code `ferry serve`
//! runs, and tested without a Lambda service.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use aws_lambda_events::event::sqs::{SqsBatchResponse, SqsEvent, SqsMessage};
use serde::Deserialize;

use crate::backend::{self, Stores};
use crate::config::Config;
use crate::http::Intake;
use crate::queue::sqs::{JOB_ID_ATTRIBUTE, ReceivedMessage};
use crate::queue::{JobQueue, SqsQueue};
use crate::worker::Worker;

/// A function's start-up failure, as the Lambda runtime reports it (init error).
pub type Error = Box<dyn std::error::Error + Send + Sync>;

/// Log lines for CloudWatch: plain text without colours, `RUST_LOG` honoured (default `info`).
pub fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    // CloudWatch stamps each line; `FERRY_LOG_FORMAT=json` gives one JSON object per line with
    // the job's fields (promotion id included), for Logs Insights.
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_ansi(false).without_time().with_target(false);
    if std::env::var("FERRY_LOG_FORMAT").is_ok_and(|f| f.eq_ignore_ascii_case("json")) {
        builder.json().with_current_span(true).with_span_list(false).init();
    } else {
        builder.init();
    }
}

/// The configuration (`FERRY_CONFIG` or `FERRY_CONFIG_FILE`) with its `*_arn` secrets read,
/// and its stores, opened once per cold start.
pub async fn start() -> Result<(Arc<Config>, Stores), Error> {
    let mut config = Config::from_environment()?;
    config.read_secrets().await?;
    let config = Arc::new(config);
    let stores = backend::open(&config).await?;
    Ok((config, stores))
}

/// The intake of a webhook function: the configured senders, queueing into `stores`, with the
/// replay guard every instance shares.
pub fn intake(config: &Config, stores: &Stores) -> Result<Intake, Error> {
    let replay = backend::replay_guard(config, stores)?;
    Ok(Intake::new(config, stores.queue.clone())?.with_replay_guard(replay))
}

pub fn sqs_queue(stores: &Stores) -> Result<Arc<SqsQueue>, Error> {
    stores.sqs.clone().ok_or_else(|| "the worker function needs [queue] kind = \"sqs\"".into())
}

/// No message of a batch starts this close to the function's deadline: it is handed back to
/// SQS untouched instead of being cut off mid-copy.
pub const STOP_BEFORE_DEADLINE: Duration = Duration::from_secs(30);

/// Runs the worker over one SQS batch, in order, and reports which messages stay queued.
///
/// Each record is adopted by `queue` (so the worker settles it like a delivery it received) and
/// settled by the worker with the one policy of [`crate::settle`]: done and dead-lettered
/// messages are deleted; a retry is made visible again after its backoff and reported as a batch
/// item failure so that Lambda does not delete it. A message that stays queued holds back the
/// later messages of its FIFO group (reported too, unprocessed), and no message starts within
/// [`STOP_BEFORE_DEADLINE`] of `deadline_ms`.
pub async fn sqs_batch(worker: &Worker, queue: &SqsQueue, event: SqsEvent, deadline_ms: u64) -> SqsBatchResponse {
    let lease = Duration::from_secs(worker.config().worker.visibility_secs.max(1));
    let mut response = SqsBatchResponse::default();
    let mut held_groups: Vec<String> = Vec::new();
    for message in event.records {
        let Some(id) = message.message_id.clone() else {
            tracing::error!("an SQS record without a messageId: cannot report it, skipped");
            continue;
        };
        let group = message.attributes.get("MessageGroupId").cloned();
        let held = group.as_ref().is_some_and(|g| held_groups.contains(g));
        if held || near_deadline(deadline_ms) {
            // Handed back untouched and visible again at once, not after the queue's visibility
            // timeout; FIFO still delivers a held message only after the failed one before it.
            if let Ok(received) = received(&message) {
                let receipt = queue.adopt(received, lease).receipt;
                if let Err(e) = queue.extend(&receipt, Duration::ZERO).await {
                    tracing::warn!(message.id = %id, error = %e, "could not hand a message back early");
                }
            }
            response.add_failure(id);
            continue;
        }
        let handled = match received(&message) {
            Ok(received) => worker.handle(queue.adopt(received, lease)).await,
            Err(why) => {
                // Without a receipt handle Ferry cannot settle it; SQS redelivers it and its
                // redrive policy dead-letters it in the end.
                tracing::error!(message.id = %id, "{why}");
                response.add_failure(id);
                continue;
            }
        };
        if handled.stays_queued() {
            response.add_failure(id);
            held_groups.extend(group);
        }
    }
    response
}

fn near_deadline(deadline_ms: u64) -> bool {
    let now_ms = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default().as_millis() as u64;
    deadline_ms.saturating_sub(now_ms) < STOP_BEFORE_DEADLINE.as_millis() as u64
}

/// One SQS event record, as [`SqsQueue::adopt`] takes it.
pub fn received(message: &SqsMessage) -> Result<ReceivedMessage<'_>, String> {
    let message_id = message.message_id.as_deref().ok_or("SQS record without messageId")?;
    let receipt_handle =
        message.receipt_handle.as_deref().ok_or_else(|| format!("SQS record {message_id} without receiptHandle"))?;
    let receive_count =
        message.attributes.get("ApproximateReceiveCount").and_then(|count| count.parse().ok()).unwrap_or(1);
    Ok(ReceivedMessage {
        message_id,
        receipt_handle,
        body: message.body.as_deref().unwrap_or_default(),
        receive_count,
        group: message.attributes.get("MessageGroupId").map(String::as_str),
        job_id: message.message_attributes.get(JOB_ID_ATTRIBUTE).and_then(|a| a.string_value.as_deref()),
    })
}

/// An EventBridge `Scheduled Event` (the sweep's timer), told apart from an HTTP request by
/// its `source` and `detail-type`.
#[derive(Debug, Deserialize)]
pub struct ScheduledEvent {
    pub source: String,
    #[serde(rename = "detail-type")]
    pub detail_type: String,
}

impl ScheduledEvent {
    /// `Some` for an EventBridge schedule's event, `None` for anything else.
    pub fn from_event(event: &serde_json::Value) -> Option<Self> {
        let scheduled: ScheduledEvent = serde_json::from_value(event.clone()).ok()?;
        (scheduled.source == "aws.events" && scheduled.detail_type == "Scheduled Event").then_some(scheduled)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(id: &str, body: &str, group: &str, count: &str) -> SqsMessage {
        serde_json::from_value(serde_json::json!({
            "messageId": id,
            "receiptHandle": format!("receipt-{id}"),
            "body": body,
            "attributes": { "ApproximateReceiveCount": count, "MessageGroupId": group },
            "messageAttributes": {},
            "eventSource": "aws:sqs",
        }))
        .unwrap()
    }

    #[test]
    fn an_sqs_record_is_read_as_sqs_sent_it() {
        let message = record("m-1", r#"{"kind":"promote"}"#, "shop-api/dev", "3");
        let received = received(&message).unwrap();
        assert_eq!((received.message_id, received.receipt_handle), ("m-1", "receipt-m-1"));
        assert_eq!(received.receive_count, 3);
        assert_eq!(received.group, Some("shop-api/dev"));
        assert_eq!(received.body, r#"{"kind":"promote"}"#);
        let mut without_receipt = record("m-2", "{}", "g", "1");
        without_receipt.receipt_handle = None;
        assert!(super::received(&without_receipt).is_err());
    }

    #[test]
    fn scheduled_events_are_told_from_http_requests() {
        let scheduled = serde_json::json!({
            "version": "0", "id": "53dc4d37", "detail-type": "Scheduled Event", "source": "aws.events",
            "account": "123456789012", "time": "2026-11-30T12:00:00Z", "region": "us-east-1",
            "resources": ["arn:aws:events:us-east-1:123456789012:rule/ferry-sweep"], "detail": {}
        });
        assert!(ScheduledEvent::from_event(&scheduled).is_some());
        let http = serde_json::json!({"version": "2.0", "rawPath": "/api/status", "requestContext": {}});
        assert!(ScheduledEvent::from_event(&http).is_none());
    }

    #[test]
    fn nothing_starts_near_the_deadline() {
        let now_ms = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_millis() as u64;
        assert!(near_deadline(now_ms + 10_000));
        assert!(!near_deadline(now_ms + 120_000));
    }
}

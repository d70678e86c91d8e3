//! [`JobQueue`] on an SQS FIFO queue.
//!
//! - `MessageGroupId` is the job's group (`pipeline/stage`), so one stage's jobs are handed out
//!   one at a time, in order; `MessageDeduplicationId` is the SHA-256 of the dedup key (SQS
//!   allows 128 characters of a limited set; a dedup key is free text).
//! - A job's id is the `MessageId` of its first send. It travels in the message attribute
//!   `ferry-job-id` when Ferry re-sends the message (dead-lettering, redrive), so it stays stable.
//! - `nack` at the last allowed receive moves the message to the dead-letter queue itself, with
//!   the error in message attributes; the queue's redrive policy (`maxReceiveCount`) stays the
//!   safety net for workers that die without settling. The dead-letter queue is the one the
//!   queue's `RedrivePolicy` names: there is no setting for it.
//! - SQS cannot say whether a send was a duplicate: [`Enqueued::duplicate`] is `None`.
//! - Receipts: this process remembers the lease of each delivery it handed out, and refuses to
//!   ack a receipt whose lease ran out ([`QueueError::StaleReceipt`]): the job may already be
//!   someone else's delivery, and SQS (moto even more so) may delete by an old receipt handle.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use aws_sdk_sqs::Client;
use aws_sdk_sqs::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};
use aws_sdk_sqs::types::{Message, MessageAttributeValue, MessageSystemAttributeName, QueueAttributeName};
use sha2::{Digest as _, Sha256};

use super::{DeadLetter, Delivery, Enqueued, JobQueue, NewJob, QueueError, QueueFuture};

/// The message attribute carrying the job id on messages Ferry re-sent (dead-lettered or
/// redriven), whose SQS message id is new.
pub const JOB_ID_ATTRIBUTE: &str = "ferry-job-id";
const JOB_ID: &str = JOB_ID_ATTRIBUTE;
const GROUP: &str = "ferry-group";
const ERROR: &str = "ferry-error";
const RECEIVE_COUNT: &str = "ferry-receive-count";
const FAILED_AT: &str = "ferry-failed-at-ms";
/// The group of jobs that name none.
const DEFAULT_GROUP: &str = "ferry";
/// SQS's longest visibility timeout.
const MAX_VISIBILITY: Duration = Duration::from_secs(12 * 60 * 60);
/// How long listing the dead letters hides each one (they are made visible again right after).
const LISTING_VISIBILITY: Duration = Duration::from_secs(30);
/// An error kept with a dead letter is cut to this many bytes (a message is at most 256 KiB).
const MAX_ERROR_BYTES: usize = 4096;
/// An idle worker's receive waits this long for a job (SQS long polling): fewer billed empty
/// receives than polling, and a job that arrives meanwhile is handed out at once.
const RECEIVE_WAIT: Duration = Duration::from_secs(1);
/// Listing the dead-letter queue stops after this many messages.
const MAX_LISTED: usize = 1000;

/// An SQS FIFO queue and the dead-letter queue its redrive policy names.
pub struct SqsQueue {
    client: Client,
    url: String,
    dlq_url: String,
    max_receives: u32,
    /// Deliveries this process handed out and has not settled, by receipt.
    leases: Mutex<HashMap<String, Lease>>,
}

/// An SQS message as an event source hands it over (see [`SqsQueue::adopt`]).
#[derive(Debug, Clone, Copy)]
pub struct ReceivedMessage<'a> {
    pub message_id: &'a str,
    pub receipt_handle: &'a str,
    pub body: &'a str,
    /// The `ApproximateReceiveCount` attribute.
    pub receive_count: u32,
    /// The `MessageGroupId` attribute.
    pub group: Option<&'a str>,
    /// The `ferry-job-id` message attribute, present on messages Ferry re-sent.
    pub job_id: Option<&'a str>,
}

/// What `nack` needs to dead-letter a delivery, and when its lease ends.
#[derive(Debug, Clone)]
struct Lease {
    id: String,
    body: String,
    group: String,
    receive_count: u32,
    until: Instant,
}

impl SqsQueue {
    /// Opens the FIFO queue at `url` and finds its dead-letter queue through its redrive policy.
    /// A nack of a delivery with `max_receives` receives dead-letters the job.
    pub async fn open(client: Client, url: &str, max_receives: u32) -> Result<Self, QueueError> {
        if !url.ends_with(".fifo") {
            return Err(QueueError::Invalid(format!("{url} is not a FIFO queue (its name must end in .fifo)")));
        }
        let attributes = client
            .get_queue_attributes()
            .queue_url(url)
            .attribute_names(QueueAttributeName::RedrivePolicy)
            .send()
            .await
            .map_err(|e| classify(&format!("reading the redrive policy of {url}"), e, None))?;
        let policy =
            attributes.attributes().and_then(|a| a.get(&QueueAttributeName::RedrivePolicy)).ok_or_else(|| {
                QueueError::Unavailable(format!(
                    "queue {url} has no redrive policy; Ferry finds its dead-letter queue there: set RedrivePolicy \
                 (deadLetterTargetArn, maxReceiveCount) on the queue, as template.yaml and infra/ do"
                ))
            })?;
        let (dlq_arn, max_receive_count) = parse_redrive_policy(policy)
            .map_err(|why| QueueError::Unavailable(format!("queue {url}: redrive policy {policy}: {why}")))?;
        if max_receive_count < max_receives {
            tracing::warn!(
                queue = url,
                max_receive_count,
                max_receives,
                "the redrive policy dead-letters jobs before Ferry gives up on them; their errors will be missing"
            );
        }
        let (account, name) = arn_account_and_name(&dlq_arn).ok_or_else(|| {
            QueueError::Unavailable(format!("queue {url}: cannot read dead-letter queue ARN {dlq_arn}"))
        })?;
        let dlq_url = client
            .get_queue_url()
            .queue_name(name)
            .queue_owner_aws_account_id(account)
            .send()
            .await
            .map_err(|e| classify(&format!("finding dead-letter queue {dlq_arn} of {url}"), e, None))?
            .queue_url
            .ok_or_else(|| QueueError::Unavailable(format!("no URL for dead-letter queue {dlq_arn}")))?;
        Ok(SqsQueue { client, url: url.to_string(), dlq_url, max_receives, leases: Mutex::default() })
    }

    pub fn url(&self) -> &str {
        &self.url
    }

    /// The dead-letter queue's URL, as found through the redrive policy.
    pub fn dead_letter_url(&self) -> &str {
        &self.dlq_url
    }

    /// Takes on a message this process did not receive itself (a Lambda SQS event record), so
    /// that `ack`, `nack` and `extend` work on it as on a delivery from [`JobQueue::receive`].
    pub fn adopt(&self, message: ReceivedMessage<'_>, visibility: Duration) -> Delivery {
        let id = message.job_id.unwrap_or(message.message_id).to_string();
        let lease = Lease {
            id: id.clone(),
            body: message.body.to_string(),
            group: message.group.unwrap_or(DEFAULT_GROUP).to_string(),
            receive_count: message.receive_count,
            until: Instant::now() + visibility,
        };
        self.remember(message.receipt_handle, lease);
        Delivery {
            id,
            receipt: message.receipt_handle.to_string(),
            payload: payload_of(message.body),
            receive_count: message.receive_count,
        }
    }

    fn remember(&self, receipt: &str, lease: Lease) {
        let mut leases = self.leases.lock().expect("lease map");
        // Receipts never settled (a stalled worker) would pile up: forget those past any lease.
        let now = Instant::now();
        leases.retain(|_, l| l.until + MAX_VISIBILITY > now);
        leases.insert(receipt.to_string(), lease);
    }

    fn lease(&self, receipt: &str) -> Option<Lease> {
        self.leases.lock().expect("lease map").get(receipt).cloned()
    }

    fn forget(&self, receipt: &str) {
        self.leases.lock().expect("lease map").remove(receipt);
    }

    fn set_lease_end(&self, receipt: &str, until: Instant) {
        if let Some(lease) = self.leases.lock().expect("lease map").get_mut(receipt) {
            lease.until = until;
        }
    }

    /// A receipt this process knows to have lost its lease is stale.
    fn check_current(&self, receipt: &str) -> Result<Option<Lease>, QueueError> {
        match self.lease(receipt) {
            // Kept (until pruned), so every later use of this receipt is refused too.
            Some(lease) if lease.until <= Instant::now() => Err(QueueError::StaleReceipt(receipt.to_string())),
            lease => Ok(lease),
        }
    }

    async fn enqueue_jobs(&self, jobs: Vec<NewJob>) -> Result<Vec<Enqueued>, QueueError> {
        // Checked before anything is sent, so a refused batch leaves nothing behind.
        if let Some(index) = jobs.iter().position(|job| job.dedup_key.is_empty()) {
            return Err(QueueError::Invalid(format!(
                "job {index} of the batch has an empty dedup_key; every job needs one"
            )));
        }
        let mut answers: Vec<Enqueued> = Vec::with_capacity(jobs.len());
        let mut sent: HashMap<String, String> = HashMap::new();
        for job in jobs {
            if let Some(id) = sent.get(&job.dedup_key) {
                answers.push(Enqueued { id: id.clone(), duplicate: Some(true) });
                continue;
            }
            let group = group_id(job.group.as_deref().unwrap_or(DEFAULT_GROUP));
            // SQS dedups for 5 minutes whatever became of the first message: a key that may only
            // merge with a pending job (a tag pushed again) gets an id of its own. Its duplicates
            // are then separate jobs, which the worker resolves to the promotion already made.
            let dedup_source = match job.while_pending_only {
                true => format!("{}\n{}", job.dedup_key, uuid::Uuid::new_v4()),
                false => job.dedup_key.clone(),
            };
            let dedup = fifo_id("MessageDeduplicationId", &sha256_hex(&dedup_source))?;
            let output = self
                .client
                .send_message()
                .queue_url(&self.url)
                .message_body(job.payload.get())
                .message_group_id(fifo_id("MessageGroupId", &group)?)
                .message_deduplication_id(dedup)
                .send()
                .await
                .map_err(|e| classify(&format!("sending a job to {}", self.url), e, None))?;
            let id = output
                .message_id
                .ok_or_else(|| QueueError::Unavailable(format!("{} answered a send without a MessageId", self.url)))?;
            sent.insert(job.dedup_key, id.clone());
            answers.push(Enqueued { id, duplicate: None });
        }
        Ok(answers)
    }

    async fn receive_jobs(&self, max: usize, visibility: Duration) -> Result<Vec<Delivery>, QueueError> {
        if max == 0 {
            return Ok(Vec::new());
        }
        let messages = self.receive_from(&self.url, max.min(10), visibility, RECEIVE_WAIT).await?;
        let until = Instant::now() + visibility;
        let mut deliveries = Vec::with_capacity(messages.len());
        for message in messages {
            let (Some(message_id), Some(receipt)) = (message.message_id(), message.receipt_handle()) else {
                continue;
            };
            let body = message.body().unwrap_or_default();
            let receive_count = system_attribute(&message, MessageSystemAttributeName::ApproximateReceiveCount)
                .and_then(|c| c.parse().ok())
                .unwrap_or(1);
            let id = string_attribute(&message, JOB_ID).unwrap_or(message_id).to_string();
            let group = system_attribute(&message, MessageSystemAttributeName::MessageGroupId)
                .unwrap_or(DEFAULT_GROUP)
                .to_string();
            self.remember(receipt, Lease { id: id.clone(), body: body.to_string(), group, receive_count, until });
            deliveries.push(Delivery { id, receipt: receipt.to_string(), payload: payload_of(body), receive_count });
        }
        Ok(deliveries)
    }

    async fn receive_from(
        &self,
        url: &str,
        max: usize,
        visibility: Duration,
        wait: Duration,
    ) -> Result<Vec<Message>, QueueError> {
        let output = self
            .client
            .receive_message()
            .queue_url(url)
            .max_number_of_messages(max as i32)
            .visibility_timeout(seconds(visibility))
            .wait_time_seconds(seconds(wait))
            .message_system_attribute_names(MessageSystemAttributeName::All)
            .message_attribute_names("All")
            .send()
            .await
            .map_err(|e| classify(&format!("receiving from {url}"), e, None))?;
        Ok(output.messages.unwrap_or_default())
    }

    async fn change_visibility(&self, url: &str, receipt: &str, visibility: Duration) -> Result<(), QueueError> {
        self.client
            .change_message_visibility()
            .queue_url(url)
            .receipt_handle(receipt)
            .visibility_timeout(seconds(visibility))
            .send()
            .await
            .map_err(|e| classify(&format!("changing the visibility of a message of {url}"), e, Some(receipt)))?;
        Ok(())
    }

    async fn delete(&self, url: &str, receipt: &str) -> Result<(), QueueError> {
        self.client
            .delete_message()
            .queue_url(url)
            .receipt_handle(receipt)
            .send()
            .await
            .map_err(|e| classify(&format!("deleting a message of {url}"), e, Some(receipt)))?;
        Ok(())
    }

    async fn ack_job(&self, receipt: &str) -> Result<(), QueueError> {
        self.check_current(receipt)?;
        self.delete(&self.url, receipt).await?;
        self.forget(receipt);
        Ok(())
    }

    async fn extend_job(&self, receipt: &str, visibility: Duration) -> Result<(), QueueError> {
        self.check_current(receipt)?;
        self.change_visibility(&self.url, receipt, visibility).await?;
        self.set_lease_end(receipt, Instant::now() + visibility);
        Ok(())
    }

    async fn nack_job(&self, receipt: &str, error: &str, retry_after: Duration) -> Result<(), QueueError> {
        let lease = self.check_current(receipt)?;
        match lease {
            Some(lease) if lease.receive_count >= self.max_receives => self.dead_letter(receipt, &lease, error).await,
            _ => {
                // Back off: the job becomes visible again after `retry_after`. SQS keeps no error
                // with a message; the last one is kept when the job is dead-lettered.
                self.change_visibility(&self.url, receipt, retry_after).await?;
                self.forget(receipt);
                Ok(())
            }
        }
    }

    /// Moves a delivery to the dead-letter queue with its error: first makes sure the receipt
    /// is still current (so a redelivered job is not copied), then sends, then deletes.
    async fn dead_letter(&self, receipt: &str, lease: &Lease, error: &str) -> Result<(), QueueError> {
        self.change_visibility(&self.url, receipt, LISTING_VISIBILITY).await?;
        let error = truncate(error, MAX_ERROR_BYTES);
        // Each dead letter in a group of its own: listing them is not held up by FIFO ordering.
        // The dedup id names this delivery, so a retried nack does not store it twice.
        self.client
            .send_message()
            .queue_url(&self.dlq_url)
            .message_body(&lease.body)
            .message_group_id(group_id(&format!("dead/{}", lease.id)))
            .message_deduplication_id(sha256_hex(&format!("dead/{}/{receipt}", lease.id)))
            .message_attributes(JOB_ID, string_value(&lease.id)?)
            .message_attributes(GROUP, string_value(&lease.group)?)
            .message_attributes(ERROR, string_value(if error.is_empty() { "(no error given)" } else { error })?)
            .message_attributes(RECEIVE_COUNT, number_value(lease.receive_count.into())?)
            .message_attributes(FAILED_AT, number_value(now_ms())?)
            .send()
            .await
            .map_err(|e| {
                classify(&format!("moving job {} to dead-letter queue {}", lease.id, self.dlq_url), e, None)
            })?;
        self.delete(&self.url, receipt).await?;
        self.forget(receipt);
        Ok(())
    }

    /// Every dead letter, each hidden briefly while listing and made visible again after.
    async fn scan_dead_letters(&self) -> Result<Vec<Message>, QueueError> {
        let mut messages = Vec::new();
        loop {
            let batch = self.receive_from(&self.dlq_url, 10, LISTING_VISIBILITY, Duration::ZERO).await?;
            if batch.is_empty() || messages.len() >= MAX_LISTED {
                break;
            }
            messages.extend(batch);
        }
        Ok(messages)
    }

    async fn release(&self, messages: &[Message]) {
        for message in messages {
            if let Some(receipt) = message.receipt_handle()
                && let Err(e) = self.change_visibility(&self.dlq_url, receipt, Duration::ZERO).await
            {
                // It becomes visible by itself once the listing visibility ends.
                tracing::warn!(error = %e, "could not make a dead letter visible again after listing");
            }
        }
    }

    async fn list_dead_letters(&self) -> Result<Vec<DeadLetter>, QueueError> {
        let messages = self.scan_dead_letters().await?;
        self.release(&messages).await;
        Ok(messages.iter().map(dead_letter_of).collect())
    }

    async fn redrive_job(&self, id: &str) -> Result<bool, QueueError> {
        let messages = self.scan_dead_letters().await?;
        let (found, others): (Vec<Message>, Vec<Message>) =
            messages.into_iter().partition(|m| job_id_of(m) == Some(id));
        self.release(&others).await;
        let Some(message) = found.into_iter().next() else {
            return Ok(false);
        };
        let group = string_attribute(&message, GROUP)
            .or_else(|| system_attribute(&message, MessageSystemAttributeName::MessageGroupId))
            .unwrap_or(DEFAULT_GROUP);
        // A fresh dedup id: the job's own would be dropped within SQS's 5-minute window.
        let dedup = sha256_hex(&format!("redrive/{id}/{}", uuid::Uuid::new_v4()));
        let result = self
            .client
            .send_message()
            .queue_url(&self.url)
            .message_body(message.body().unwrap_or_default())
            .message_group_id(group_id(group))
            .message_deduplication_id(dedup)
            .message_attributes(JOB_ID, string_value(id)?)
            .send()
            .await
            .map_err(|e| classify(&format!("redriving job {id} to {}", self.url), e, None));
        let receipt = message.receipt_handle().unwrap_or_default();
        if let Err(e) = result {
            self.release(std::slice::from_ref(&message)).await;
            return Err(e);
        }
        self.delete(&self.dlq_url, receipt).await?;
        Ok(true)
    }

    async fn check_queue(&self) -> Result<(), QueueError> {
        self.client
            .get_queue_attributes()
            .queue_url(&self.url)
            .attribute_names(QueueAttributeName::QueueArn)
            .send()
            .await
            .map_err(|e| classify(&format!("reading {}", self.url), e, None))?;
        Ok(())
    }
}

impl JobQueue for SqsQueue {
    fn enqueue(&self, jobs: Vec<NewJob>) -> QueueFuture<'_, Vec<Enqueued>> {
        Box::pin(self.enqueue_jobs(jobs))
    }

    fn receive(&self, max: usize, visibility: Duration) -> QueueFuture<'_, Vec<Delivery>> {
        Box::pin(self.receive_jobs(max, visibility))
    }

    fn ack(&self, receipt: &str) -> QueueFuture<'_, ()> {
        let receipt = receipt.to_string();
        Box::pin(async move { self.ack_job(&receipt).await })
    }

    fn nack(&self, receipt: &str, error: &str, retry_after: Duration) -> QueueFuture<'_, ()> {
        let (receipt, error) = (receipt.to_string(), error.to_string());
        Box::pin(async move { self.nack_job(&receipt, &error, retry_after).await })
    }

    fn dead_letter(&self, receipt: &str, error: &str) -> QueueFuture<'_, ()> {
        let (receipt, error) = (receipt.to_string(), error.to_string());
        Box::pin(async move {
            match self.check_current(&receipt)? {
                Some(lease) => self.dead_letter(&receipt, &lease, &error).await,
                // Neither received nor adopted here: its body is unknown, so it cannot be copied to
                // the dead-letter queue. Hand it back at once; the redrive policy ends its retries.
                None => {
                    self.change_visibility(&self.url, &receipt, Duration::ZERO).await?;
                    Err(QueueError::Invalid(format!(
                        "cannot dead-letter a delivery this process did not receive (receipt {receipt}); \
                         it was made visible again for the queue's redrive policy"
                    )))
                }
            }
        })
    }

    fn extend(&self, receipt: &str, visibility: Duration) -> QueueFuture<'_, ()> {
        let receipt = receipt.to_string();
        Box::pin(async move { self.extend_job(&receipt, visibility).await })
    }

    fn dead_letters(&self) -> QueueFuture<'_, Vec<DeadLetter>> {
        Box::pin(self.list_dead_letters())
    }

    fn redrive(&self, id: &str) -> QueueFuture<'_, bool> {
        let id = id.to_string();
        Box::pin(async move { self.redrive_job(&id).await })
    }

    fn check(&self) -> QueueFuture<'_, ()> {
        Box::pin(self.check_queue())
    }
}

/// Translates an SDK error once, into the queue's classes: throttling, 5xx and the network are
/// `Unavailable` (retry later), a receipt that names no current delivery is `StaleReceipt`, a
/// request SQS refuses as malformed is `Invalid`.
fn classify<E, R>(doing: &str, error: SdkError<E, R>, receipt: Option<&str>) -> QueueError
where
    E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
    R: std::fmt::Debug,
{
    let message = match (&error, error.code()) {
        (SdkError::ServiceError(_), Some(code)) => {
            format!("{doing}: {code}: {}", error.message().unwrap_or("(no message)"))
        }
        _ => format!("{doing}: {}", DisplayErrorContext(&error)),
    };
    let code = error.code().unwrap_or_default().to_string();
    let detail = error.message().unwrap_or_default().to_ascii_lowercase();
    match &error {
        SdkError::ConstructionFailure(_) => QueueError::Invalid(message),
        SdkError::ServiceError(_) => {
            let stale = code.contains("ReceiptHandleIsInvalid")
                || code.contains("MessageNotInflight")
                || (code.contains("InvalidParameterValue") && detail.contains("receipt"));
            match receipt {
                Some(receipt) if stale => QueueError::StaleReceipt(receipt.to_string()),
                _ if is_request_error(&code) => QueueError::Invalid(message),
                // Throttling, 5xx, a missing queue or missing permissions: nothing is wrong with
                // the request itself; intake answers 503 and the sender retries.
                _ => QueueError::Unavailable(message),
            }
        }
        _ => QueueError::Unavailable(message),
    }
}

/// Codes SQS gives a malformed request (the same request will fail again).
fn is_request_error(code: &str) -> bool {
    [
        "InvalidParameterValue",
        "InvalidMessageContents",
        "MissingParameter",
        "InvalidAttributeName",
        "InvalidAttributeValue",
        "TooManyEntriesInBatchRequest",
        "BatchEntryIdsNotDistinct",
        "BatchRequestTooLong",
        "InvalidBatchEntryId",
        "EmptyBatchRequest",
        "ValidationError",
        "UnsupportedOperation",
    ]
    .iter()
    .any(|c| code.contains(c))
}

/// A FIFO `MessageGroupId` / `MessageDeduplicationId`: 1 to 128 characters, each alphanumeric
/// or ASCII punctuation. AWS refuses others; moto does not, so Ferry checks.
fn fifo_id(what: &str, value: &str) -> Result<String, QueueError> {
    let allowed = |c: char| c.is_ascii_alphanumeric() || c.is_ascii_punctuation();
    if value.is_empty() || value.len() > 128 || !value.chars().all(allowed) {
        return Err(QueueError::Invalid(format!(
            "{what} `{value}` is not 1 to 128 alphanumeric or punctuation characters"
        )));
    }
    Ok(value.to_string())
}

/// The group as it is when SQS accepts it, else its hash (stable, so ordering still holds).
fn group_id(group: &str) -> String {
    match fifo_id("MessageGroupId", group) {
        Ok(group) => group,
        Err(_) => format!("g-{}", sha256_hex(group)),
    }
}

fn sha256_hex(text: &str) -> String {
    hex::encode(Sha256::digest(text.as_bytes()))
}

fn seconds(duration: Duration) -> i32 {
    // SQS counts whole seconds: round up, so a lease is never shorter than asked.
    duration.min(MAX_VISIBILITY).as_millis().div_ceil(1000) as i32
}

fn payload_of(body: &str) -> serde_json::Value {
    // A body that is not JSON is handed over as a string: the worker dead-letters it with a
    // readable error instead of the queue losing it.
    serde_json::from_str(body).unwrap_or_else(|_| serde_json::Value::String(body.to_string()))
}

fn string_value(value: &str) -> Result<MessageAttributeValue, QueueError> {
    MessageAttributeValue::builder()
        .data_type("String")
        .string_value(value)
        .build()
        .map_err(|e| QueueError::Invalid(format!("message attribute: {e}")))
}

fn number_value(value: i64) -> Result<MessageAttributeValue, QueueError> {
    MessageAttributeValue::builder()
        .data_type("Number")
        .string_value(value.to_string())
        .build()
        .map_err(|e| QueueError::Invalid(format!("message attribute: {e}")))
}

fn string_attribute<'m>(message: &'m Message, name: &str) -> Option<&'m str> {
    message.message_attributes().and_then(|a| a.get(name)).and_then(|v| v.string_value())
}

fn system_attribute(message: &Message, name: MessageSystemAttributeName) -> Option<&str> {
    message.attributes().and_then(|a| a.get(&name)).map(String::as_str)
}

fn job_id_of(message: &Message) -> Option<&str> {
    string_attribute(message, JOB_ID).or(message.message_id())
}

fn dead_letter_of(message: &Message) -> DeadLetter {
    let receive_count = string_attribute(message, RECEIVE_COUNT)
        .or_else(|| system_attribute(message, MessageSystemAttributeName::ApproximateReceiveCount))
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let last_error = match string_attribute(message, ERROR) {
        Some(error) => error.to_string(),
        // Moved by the redrive policy: no worker settled it (it crashed or timed out).
        None => "moved by the queue's redrive policy: no worker settled it in time (crashed or timed out)".into(),
    };
    let failed_at_unix_ms = string_attribute(message, FAILED_AT)
        .or_else(|| system_attribute(message, MessageSystemAttributeName::SentTimestamp))
        .and_then(|t| t.parse().ok())
        .unwrap_or(0);
    DeadLetter {
        id: job_id_of(message).unwrap_or_default().to_string(),
        payload: payload_of(message.body().unwrap_or_default()),
        receive_count,
        last_error,
        failed_at_unix_ms,
    }
}

/// `(deadLetterTargetArn, maxReceiveCount)` of a `RedrivePolicy` attribute.
fn parse_redrive_policy(policy: &str) -> Result<(String, u32), String> {
    #[derive(serde::Deserialize)]
    #[serde(rename_all = "camelCase")]
    struct Policy {
        dead_letter_target_arn: String,
        max_receive_count: serde_json::Value,
    }
    let policy: Policy = serde_json::from_str(policy).map_err(|e| e.to_string())?;
    // SQS writes the count as a number or as a string, depending on who set it.
    let count = match &policy.max_receive_count {
        serde_json::Value::Number(n) => n.as_u64(),
        serde_json::Value::String(s) => s.parse().ok(),
        _ => None,
    }
    .ok_or("maxReceiveCount is not a number")?;
    Ok((policy.dead_letter_target_arn, count.min(u32::MAX.into()) as u32))
}

/// `arn:aws:sqs:REGION:ACCOUNT:NAME` → `(ACCOUNT, NAME)`.
fn arn_account_and_name(arn: &str) -> Option<(&str, &str)> {
    let mut parts = arn.splitn(6, ':');
    let (Some("arn"), Some(_partition), Some("sqs"), Some(_region), Some(account), Some(name)) =
        (parts.next(), parts.next(), parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return None;
    };
    Some((account, name))
}

fn truncate(text: &str, max: usize) -> &str {
    if text.len() <= max {
        return text;
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

fn now_ms() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dedup_ids_are_hashes_sqs_accepts() {
        let key = "shop/prod/registry.example.com:5000/shop api/sha256:".to_string() + &"ab".repeat(100);
        let id = fifo_id("MessageDeduplicationId", &sha256_hex(&key)).unwrap();
        assert_eq!(id.len(), 64);
        assert_ne!(sha256_hex("a"), sha256_hex("b"));
    }

    #[test]
    fn fifo_ids_refuse_what_aws_refuses() {
        assert!(fifo_id("MessageGroupId", "shop-api/prod").is_ok());
        assert!(fifo_id("MessageGroupId", &"x".repeat(128)).is_ok());
        for bad in ["", "has space", "ümlaut", &"x".repeat(129)] {
            assert!(matches!(fifo_id("MessageGroupId", bad), Err(QueueError::Invalid(_))), "{bad:?}");
        }
    }

    #[test]
    fn groups_sqs_would_refuse_are_hashed_stably() {
        assert_eq!(group_id("shop/prod"), "shop/prod");
        let odd = group_id("shop api/prod");
        assert!(odd.starts_with("g-") && odd.len() <= 128);
        assert_eq!(odd, group_id("shop api/prod"));
        assert!(fifo_id("MessageGroupId", &group_id(&"ü".repeat(200))).is_ok());
    }

    #[test]
    fn visibility_is_rounded_up_to_seconds_and_capped() {
        assert_eq!(seconds(Duration::ZERO), 0);
        assert_eq!(seconds(Duration::from_millis(1)), 1);
        assert_eq!(seconds(Duration::from_millis(1500)), 2);
        assert_eq!(seconds(Duration::from_secs(100_000)), 43_200);
    }

    #[test]
    fn redrive_policies_are_read_with_either_count_type() {
        let arn = "arn:aws:sqs:eu-west-1:123456789012:ferry-dlq.fifo";
        let number = format!(r#"{{"deadLetterTargetArn":"{arn}","maxReceiveCount":10}}"#);
        let string = format!(r#"{{"deadLetterTargetArn":"{arn}","maxReceiveCount":"7"}}"#);
        assert_eq!(parse_redrive_policy(&number).unwrap(), (arn.to_string(), 10));
        assert_eq!(parse_redrive_policy(&string).unwrap(), (arn.to_string(), 7));
        assert!(parse_redrive_policy(r#"{"maxReceiveCount":1}"#).is_err());
        assert_eq!(arn_account_and_name(arn), Some(("123456789012", "ferry-dlq.fifo")));
        assert_eq!(arn_account_and_name("not-an-arn"), None);
    }

    fn service_error(
        code: &str,
        message: &str,
    ) -> SdkError<aws_sdk_sqs::operation::change_message_visibility::ChangeMessageVisibilityError, ()> {
        let meta = aws_sdk_sqs::error::ErrorMetadata::builder().code(code).message(message).build();
        SdkError::service_error(
            aws_sdk_sqs::operation::change_message_visibility::ChangeMessageVisibilityError::generic(meta),
            (),
        )
    }

    #[test]
    fn sdk_errors_are_classified_once() {
        let stale = [
            ("ReceiptHandleIsInvalid", "The input receipt handle is invalid."),
            ("AWS.SimpleQueueService.MessageNotInflight", "Message does not exist or is not available"),
            (
                "InvalidParameterValue",
                "Value r1 for parameter ReceiptHandle is invalid. Reason: The receipt handle has expired.",
            ),
        ];
        for (code, message) in stale {
            let error = classify("extending", service_error(code, message), Some("r1"));
            assert_eq!(error, QueueError::StaleReceipt("r1".into()), "{code}");
        }
        let unavailable = [
            "ThrottlingException",
            "RequestThrottled",
            "AWS.SimpleQueueService.NonExistentQueue",
            "InternalError",
            "AccessDenied",
        ];
        for code in unavailable {
            let error = classify("sending", service_error(code, "no"), None);
            assert!(matches!(error, QueueError::Unavailable(ref m) if m.contains(code)), "{code}: {error}");
        }
        let invalid = classify("sending", service_error("InvalidParameterValue", "MessageGroupId too long"), None);
        assert!(matches!(invalid, QueueError::Invalid(_)), "{invalid}");
        // The same code about something else than the receipt is not a stale receipt.
        let other =
            classify("extending", service_error("InvalidParameterValue", "VisibilityTimeout too large"), Some("r1"));
        assert!(matches!(other, QueueError::Invalid(_)), "{other}");
        let timeout: SdkError<aws_sdk_sqs::operation::change_message_visibility::ChangeMessageVisibilityError, ()> =
            SdkError::timeout_error("read timed out");
        assert!(matches!(classify("receiving", timeout, None), QueueError::Unavailable(_)));
        let construction: SdkError<
            aws_sdk_sqs::operation::change_message_visibility::ChangeMessageVisibilityError,
            (),
        > = SdkError::construction_failure("missing queue url");
        assert!(matches!(classify("receiving", construction, None), QueueError::Invalid(_)));
    }

    #[test]
    fn long_errors_are_cut_on_a_character_boundary() {
        assert_eq!(truncate("abc", 10), "abc");
        assert_eq!(truncate("ééé", 3), "é");
    }
}

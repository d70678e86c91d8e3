//! The one place that turns `[queue]` and `[ledger]` into open stores: `ferry serve`, the
//! operator commands with `--config` and the Lambda functions all call [`open`].
//!
//! SQLite needs the `sqlite` feature, SQS and DynamoDB the `aws` feature; a configuration naming
//! a backend this build lacks is refused with the feature to enable. AWS clients take the
//! standard AWS configuration (region, credential chain, `AWS_ENDPOINT_URL` for a local endpoint).

use std::sync::Arc;

use crate::config::{Config, LedgerBackend, QueueBackend};
use crate::intake::replay::{ReplayGuard, SeenSignatures, SharedReplayGuard};
use crate::ledger::Ledger;
use crate::queue::JobQueue;

/// A configuration's queue and ledger, opened.
pub struct Stores {
    pub queue: Arc<dyn JobQueue>,
    pub ledger: Arc<dyn Ledger>,
    /// Generic-sender signatures shared by every instance (the DynamoDB table); `None` with a
    /// SQLite ledger, where one process's own guard suffices. Hand it to
    /// [`replay_guard`].
    pub seen_signatures: Option<Arc<dyn SeenSignatures>>,
    /// The same queue as `queue` when it is SQS: the Lambda worker hands it the records of an
    /// SQS event ([`crate::queue::SqsQueue::adopt`]) to settle them like deliveries.
    #[cfg(feature = "aws")]
    pub sqs: Option<Arc<crate::queue::SqsQueue>>,
}

#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    /// The configuration names a backend that this build was compiled without.
    #[error("{key}: kind = \"{kind}\" needs a ferry built with the `{feature}` feature")]
    NotBuilt { key: &'static str, kind: &'static str, feature: &'static str },
    /// The store exists in the configuration but cannot be opened; the message says why.
    #[error("{key}: {message}")]
    Open { key: &'static str, message: String },
}

/// Opens the queue and the ledger that `config` names. AWS settings are loaded once and
/// shared by both clients.
pub async fn open(config: &Config) -> Result<Stores, BackendError> {
    #[cfg(feature = "aws")]
    let aws = aws::Settings::default();
    #[cfg(feature = "aws")]
    let mut sqs = None;
    let queue: Arc<dyn JobQueue> = match &config.queue {
        QueueBackend::Sqlite {} => sqlite_queue(config)?,
        #[cfg(feature = "aws")]
        QueueBackend::Sqs { url } => {
            let queue = aws.queue(url, config.worker.max_attempts.max(1)).await?;
            sqs = Some(queue.clone());
            queue
        }
        #[cfg(not(feature = "aws"))]
        QueueBackend::Sqs { .. } => return Err(BackendError::NotBuilt { key: "queue", kind: "sqs", feature: "aws" }),
    };
    let (ledger, seen_signatures): (Arc<dyn Ledger>, Option<Arc<dyn SeenSignatures>>) = match &config.ledger {
        LedgerBackend::Sqlite {} => (sqlite_ledger(config)?, None),
        #[cfg(feature = "aws")]
        LedgerBackend::Dynamodb { table } => {
            let ledger = aws.ledger(table).await?;
            (ledger.clone(), Some(ledger))
        }
        #[cfg(not(feature = "aws"))]
        LedgerBackend::Dynamodb { .. } => {
            return Err(BackendError::NotBuilt { key: "ledger", kind: "dynamodb", feature: "aws" });
        }
    };
    Ok(Stores {
        queue,
        ledger,
        seen_signatures,
        #[cfg(feature = "aws")]
        sqs,
    })
}

/// The replay guard of signed webhooks for `stores`: shared by every instance in the DynamoDB
/// table when the ledger is there (Lambda instances), else kept by this process in
/// `data_dir/replay.db` across restarts. Only the intake opens it: operator commands never create
/// the file.
pub fn replay_guard(config: &Config, stores: &Stores) -> Result<Arc<dyn ReplayGuard>, BackendError> {
    let window = crate::http::Intake::replay_window(config);
    if let Some(seen) = &stores.seen_signatures {
        return Ok(Arc::new(SharedReplayGuard::new(seen.clone(), window)));
    }
    sqlite_replay_guard(config, window)
}

#[cfg(feature = "sqlite")]
fn sqlite_replay_guard(config: &Config, window: std::time::Duration) -> Result<Arc<dyn ReplayGuard>, BackendError> {
    let path = data_dir(config, "server.data_dir")?.join("replay.db");
    let guard = crate::intake::replay::SqliteReplayGuard::open(&path, window, crate::worker::now_ms())
        .map_err(|e| BackendError::Open { key: "server.data_dir", message: e.to_string() })?;
    Ok(Arc::new(guard))
}

#[cfg(not(feature = "sqlite"))]
fn sqlite_replay_guard(_: &Config, window: std::time::Duration) -> Result<Arc<dyn ReplayGuard>, BackendError> {
    // Without a file or a shared table, this process remembers signatures itself.
    Ok(Arc::new(crate::intake::replay::MemoryReplayGuard::new(window)))
}

#[cfg(feature = "sqlite")]
fn data_dir(config: &Config, key: &'static str) -> Result<std::path::PathBuf, BackendError> {
    let dir = &config.server.data_dir;
    crate::store::create_private_dir(dir).map_err(|e| BackendError::Open {
        key,
        message: format!("cannot create server.data_dir {}: {e}", dir.display()),
    })?;
    Ok(dir.clone())
}

#[cfg(feature = "sqlite")]
fn sqlite_queue(config: &Config) -> Result<Arc<dyn JobQueue>, BackendError> {
    use crate::queue::{SqliteQueue, SqliteQueueOptions};
    let path = data_dir(config, "queue")?.join("queue.db");
    let options =
        SqliteQueueOptions { max_receives: config.worker.max_attempts.max(1), ..SqliteQueueOptions::default() };
    let queue =
        SqliteQueue::open(&path, options).map_err(|e| BackendError::Open { key: "queue", message: e.to_string() })?;
    Ok(Arc::new(queue))
}

#[cfg(not(feature = "sqlite"))]
fn sqlite_queue(_: &Config) -> Result<Arc<dyn JobQueue>, BackendError> {
    Err(BackendError::NotBuilt { key: "queue", kind: "sqlite", feature: "sqlite" })
}

#[cfg(feature = "sqlite")]
fn sqlite_ledger(config: &Config) -> Result<Arc<dyn Ledger>, BackendError> {
    let path = data_dir(config, "ledger")?.join("ledger.db");
    let ledger = crate::ledger::SqliteLedger::open(&path)
        .map_err(|e| BackendError::Open { key: "ledger", message: e.to_string() })?;
    Ok(Arc::new(ledger))
}

#[cfg(not(feature = "sqlite"))]
fn sqlite_ledger(_: &Config) -> Result<Arc<dyn Ledger>, BackendError> {
    Err(BackendError::NotBuilt { key: "ledger", kind: "sqlite", feature: "sqlite" })
}

#[cfg(feature = "aws")]
mod aws {
    use std::sync::Arc;

    use tokio::sync::OnceCell;

    use super::BackendError;
    use crate::ledger::DynamoLedger;
    use crate::queue::SqsQueue;

    /// The standard AWS configuration, loaded on first use.
    #[derive(Default)]
    pub(super) struct Settings(OnceCell<aws_config::SdkConfig>);

    impl Settings {
        async fn load(&self, key: &'static str) -> Result<&aws_config::SdkConfig, BackendError> {
            let sdk = self.0.get_or_init(|| aws_config::defaults(aws_config::BehaviorVersion::latest()).load()).await;
            if sdk.region().is_none() {
                return Err(BackendError::Open {
                    key,
                    message: "no AWS region configured: set AWS_REGION (or a region in ~/.aws/config)".into(),
                });
            }
            Ok(sdk)
        }

        pub(super) async fn queue(&self, url: &str, max_receives: u32) -> Result<Arc<SqsQueue>, BackendError> {
            let client = aws_sdk_sqs::Client::new(self.load("queue").await?);
            let queue = SqsQueue::open(client, url, max_receives)
                .await
                .map_err(|e| BackendError::Open { key: "queue", message: e.to_string() })?;
            Ok(Arc::new(queue))
        }

        pub(super) async fn ledger(&self, table: &str) -> Result<Arc<DynamoLedger>, BackendError> {
            let client = aws_sdk_dynamodb::Client::new(self.load("ledger").await?);
            let ledger = DynamoLedger::open(client, table)
                .await
                .map_err(|e| BackendError::Open { key: "ledger", message: e.to_string() })?;
            Ok(Arc::new(ledger))
        }
    }
}

//! Generic-sender signatures already accepted, shared by every instance that takes webhooks.
//!
//! Each process keeps its own guard in memory (`http::ReplayGuard`); that is enough for one
//! `ferry serve`, but a replay sent to another Lambda instance would pass it. With a DynamoDB
//! ledger the signature is also put, conditionally, into the ledger's table with a TTL: the
//! first instance to put it wins, every other sees a replay.

/// Signatures seen by any instance, until they expire.
pub trait SeenSignatures: Send + Sync + 'static {
    /// Records `signature` as used until `expires_at_unix_secs`; `Ok(false)` when it already
    /// was (by any instance) and has not expired: a replay.
    fn first_use(&self, signature: &str, expires_at_unix_secs: i64) -> ReplayFuture<'_, bool>;
    /// Forgets `signature`: its request was not queued, so the sender may send it again.
    fn forget(&self, signature: &str) -> ReplayFuture<'_, ()>;
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReplayError {
    /// The shared store cannot be asked; intake answers 503 and the sender retries.
    #[error("replay guard unavailable: {0}")]
    Unavailable(String),
}

pub type ReplayFuture<'a, T> = futures_util::future::BoxFuture<'a, Result<T, ReplayError>>;

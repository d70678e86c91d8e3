//! The replay guard of signed senders: a signature already accepted is refused until its
//! timestamp would be refused anyway (twice the clock-skew window).
//!
//! Keyed on the decoded MAC, never on the header text: `sha256=AB…`, `ab…` and `AB…` are one
//! signature. One trait, so that a shared store (DynamoDB, for several Lambda instances) can
//! stand beside the two here: [`MemoryReplayGuard`] (one process, forgotten on restart) and
//! [`SqliteReplayGuard`] (the same, kept in `data_dir/replay.db` across restarts).

use std::collections::HashMap;
use std::collections::hash_map::RandomState;
use std::hash::BuildHasher;
use std::sync::Mutex;
use std::time::Duration;

use futures_util::future::BoxFuture;

use crate::smooth::{self, ChunkedQueue};

#[cfg(feature = "sqlite")]
mod sqlite;
#[cfg(feature = "sqlite")]
pub use sqlite::SqliteReplayGuard;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReplayError {
    /// The guard cannot tell whether the signature was used: the request is answered 503 and
    /// the sender retries.
    #[error("replay guard unavailable: {0}")]
    Unavailable(String),
}

/// Remembers accepted signatures for a window.
pub trait ReplayGuard: Send + Sync + 'static {
    /// Records `mac` as accepted at `now_ms` (Unix milliseconds); `Ok(false)` when it already
    /// was within the window (a replay).
    fn remember(&self, mac: &[u8], now_ms: i64) -> BoxFuture<'_, Result<bool, ReplayError>>;
    /// Forgets `mac` (its request was not queued, so the sender may send it again).
    fn forget(&self, mac: &[u8]) -> BoxFuture<'_, ()>;
}

/// Accepted signatures in memory, forgotten after the window: O(1) per request. Split into
/// shards by hash, each with its own lock and its own growth: under a burst one big map would
/// double in a single step and hold every signed request up behind that lock.
pub struct MemoryReplayGuard {
    window_ms: i64,
    hasher: RandomState,
    shards: Vec<Mutex<ReplayShard>>,
}

#[derive(Default)]
struct ReplayShard {
    /// MAC hash → when it was accepted (the newest time, if forgotten and accepted again).
    seen: HashMap<u64, i64>,
    order: ChunkedQueue<(i64, u64)>,
}

impl MemoryReplayGuard {
    pub fn new(window: Duration) -> Self {
        let shards = (0..smooth::SHARDS).map(|_| Mutex::default()).collect();
        Self { window_ms: window.as_millis() as i64, hasher: RandomState::new(), shards }
    }

    /// Records `mac`; `false` when it was already seen within the window.
    pub fn remember_now(&self, mac: &[u8], now_ms: i64) -> bool {
        let hash = self.hasher.hash_one(mac);
        let mut shard = self.shard(hash);
        while let Some((at, old)) = shard.order.front() {
            if now_ms - at < self.window_ms {
                break;
            }
            shard.order.pop_front();
            if shard.seen.get(&old) == Some(&at) {
                shard.seen.remove(&old);
            }
        }
        if shard.seen.contains_key(&hash) {
            return false;
        }
        shard.seen.insert(hash, now_ms);
        shard.order.push_back((now_ms, hash));
        true
    }

    pub fn forget_now(&self, mac: &[u8]) {
        let hash = self.hasher.hash_one(mac);
        self.shard(hash).seen.remove(&hash);
    }

    fn shard(&self, hash: u64) -> std::sync::MutexGuard<'_, ReplayShard> {
        self.shards[smooth::shard_of(hash)].lock().expect("not poisoned")
    }

    pub fn len(&self) -> usize {
        self.shards.iter().map(|shard| shard.lock().expect("not poisoned").seen.len()).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl ReplayGuard for MemoryReplayGuard {
    fn remember(&self, mac: &[u8], now_ms: i64) -> BoxFuture<'_, Result<bool, ReplayError>> {
        let fresh = self.remember_now(mac, now_ms);
        Box::pin(std::future::ready(Ok(fresh)))
    }

    fn forget(&self, mac: &[u8]) -> BoxFuture<'_, ()> {
        self.forget_now(mac);
        Box::pin(std::future::ready(()))
    }
}

/// Answers of a store shared by every instance that takes webhooks.
pub type ReplayFuture<'a, T> = BoxFuture<'a, Result<T, ReplayError>>;

/// Signatures seen by any instance, until they expire: a store every instance shares (the
/// DynamoDB table on AWS), so that a replay sent to another Lambda instance is refused too.
pub trait SeenSignatures: Send + Sync + 'static {
    /// Records `signature` as used until `expires_at_unix_secs`; `Ok(false)` when it already
    /// was (by any instance) and has not expired: a replay.
    fn first_use(&self, signature: &str, expires_at_unix_secs: i64) -> ReplayFuture<'_, bool>;
    /// Forgets `signature`: its request was not queued, so the sender may send it again.
    fn forget(&self, signature: &str) -> ReplayFuture<'_, ()>;
}

/// A [`ReplayGuard`] over [`SeenSignatures`]: each MAC is put into the shared store (hex) with
/// an expiry one window ahead; the first instance to put it wins.
pub struct SharedReplayGuard {
    seen: std::sync::Arc<dyn SeenSignatures>,
    window: Duration,
}

impl SharedReplayGuard {
    pub fn new(seen: std::sync::Arc<dyn SeenSignatures>, window: Duration) -> Self {
        SharedReplayGuard { seen, window }
    }
}

impl ReplayGuard for SharedReplayGuard {
    fn remember(&self, mac: &[u8], now_ms: i64) -> BoxFuture<'_, Result<bool, ReplayError>> {
        let key = hex::encode(mac);
        let expires_at = now_ms / 1000 + self.window.as_secs() as i64;
        Box::pin(async move { self.seen.first_use(&key, expires_at).await })
    }

    fn forget(&self, mac: &[u8]) -> BoxFuture<'_, ()> {
        let key = hex::encode(mac);
        Box::pin(async move {
            if let Err(e) = self.seen.forget(&key).await {
                // Its entry expires with the window; until then a retry is refused as a replay.
                tracing::warn!(error = %e, "could not forget the signature of an unqueued request");
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const WINDOW: Duration = Duration::from_secs(600);

    #[test]
    fn memory_guard_refuses_repeats_and_forgets_old_signatures() {
        let guard = MemoryReplayGuard::new(WINDOW);
        let start = 1_700_000_000_000;
        assert!(guard.remember_now(b"a", start));
        assert!(!guard.remember_now(b"a", start + 1_000), "a replay");
        assert!(guard.remember_now(b"b", start + 2_000));
        // Past the window "a" is forgotten (its timestamp would be refused by the skew check).
        assert!(guard.remember_now(b"c", start + 601_000));
        assert!(guard.remember_now(b"a", start + 602_000), "a was forgotten");
        guard.forget_now(b"c");
        assert!(guard.remember_now(b"c", start + 603_000), "forgotten after a 503");
    }

    #[test]
    fn memory_guard_memory_is_bounded_by_the_window() {
        let guard = MemoryReplayGuard::new(WINDOW);
        let start = 1_700_000_000_000;
        for n in 0..5000 {
            assert!(guard.remember_now(format!("old-{n}").as_bytes(), start));
        }
        // A window later every shard has seen new requests and dropped what expired.
        let later = start + 601_000;
        for n in 0..5000 {
            assert!(guard.remember_now(format!("new-{n}").as_bytes(), later));
        }
        assert_eq!(guard.len(), 5000);
        assert!(!guard.remember_now(b"new-1", later));
    }
}

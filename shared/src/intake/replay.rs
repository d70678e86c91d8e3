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
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::mpsc;
use std::time::Duration;

use futures_util::future::BoxFuture;
use rusqlite::{Connection, params};

use crate::smooth::{self, ChunkedQueue};

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

/// [`MemoryReplayGuard`] kept in a SQLite file across restarts. Requests are answered from
/// memory; a writer thread stores each change behind them (WAL, batched), and the file is read
/// back at start. Only a signature accepted in the last few milliseconds before a crash can be
/// forgotten, and its replay then meets the queue's dedup key of the job it already made.
pub struct SqliteReplayGuard {
    memory: MemoryReplayGuard,
    path: PathBuf,
    /// `Sender` is `Sync`: requests send without a lock of their own.
    writes: mpsc::Sender<Write>,
    writer: Mutex<Option<std::thread::JoinHandle<()>>>,
}

enum Write {
    Remember(Vec<u8>, i64),
    Forget(Vec<u8>),
    /// Store what came before, then stop.
    Stop,
}

impl SqliteReplayGuard {
    /// Opens (or creates) `path`, drops what is older than the window and loads the rest.
    pub fn open(path: &Path, window: Duration, now_ms: i64) -> Result<Self, ReplayError> {
        let failed = |what: &str, e: rusqlite::Error| {
            ReplayError::Unavailable(format!("{what} the replay guard {}: {e}", path.display()))
        };
        crate::store::make_private(path)
            .map_err(|e| ReplayError::Unavailable(format!("creating the replay guard {}: {e}", path.display())))?;
        let conn = Connection::open(path).map_err(|e| failed("opening", e))?;
        conn.execute_batch(
            "PRAGMA journal_mode = WAL; PRAGMA synchronous = NORMAL;
             CREATE TABLE IF NOT EXISTS accepted_signatures (mac BLOB PRIMARY KEY, at_ms INTEGER NOT NULL);",
        )
        .map_err(|e| failed("creating", e))?;
        let window_ms = window.as_millis() as i64;
        conn.execute("DELETE FROM accepted_signatures WHERE at_ms <= ?1", [now_ms - window_ms])
            .map_err(|e| failed("pruning", e))?;
        let memory = MemoryReplayGuard::new(window);
        {
            let mut rows = conn
                .prepare("SELECT mac, at_ms FROM accepted_signatures ORDER BY at_ms")
                .map_err(|e| failed("reading", e))?;
            let rows = rows
                .query_map([], |row| Ok((row.get::<_, Vec<u8>>(0)?, row.get::<_, i64>(1)?)))
                .map_err(|e| failed("reading", e))?;
            for row in rows {
                let (mac, at_ms) = row.map_err(|e| failed("reading", e))?;
                memory.remember_now(&mac, at_ms);
            }
        }
        let (sender, receiver) = mpsc::channel();
        let writer_path = path.to_path_buf();
        let writer = std::thread::Builder::new()
            .name("ferry-replay-guard".into())
            .spawn(move || write_behind(conn, receiver, window_ms, &writer_path))
            .map_err(|e| ReplayError::Unavailable(format!("starting the replay guard writer: {e}")))?;
        Ok(Self { memory, path: path.to_path_buf(), writes: sender, writer: Mutex::new(Some(writer)) })
    }

    fn send(&self, write: Write) -> Result<(), ReplayError> {
        self.writes
            .send(write)
            .map_err(|_| ReplayError::Unavailable(format!("the writer of {} has stopped", self.path.display())))
    }

    /// Stores everything remembered so far and stops the writer (also done on drop).
    pub fn close(&self) {
        if let Some(writer) = self.writer.lock().expect("not poisoned").take() {
            let _ = self.writes.send(Write::Stop);
            let _ = writer.join();
        }
    }
}

impl Drop for SqliteReplayGuard {
    fn drop(&mut self) {
        self.close();
    }
}

impl ReplayGuard for SqliteReplayGuard {
    fn remember(&self, mac: &[u8], now_ms: i64) -> BoxFuture<'_, Result<bool, ReplayError>> {
        let result = if self.memory.remember_now(mac, now_ms) {
            self.send(Write::Remember(mac.to_vec(), now_ms)).map(|()| true)
        } else {
            Ok(false)
        };
        Box::pin(std::future::ready(result))
    }

    fn forget(&self, mac: &[u8]) -> BoxFuture<'_, ()> {
        self.memory.forget_now(mac);
        if let Err(e) = self.send(Write::Forget(mac.to_vec())) {
            tracing::warn!(error = %e, "replay guard: a forgotten signature stays stored");
        }
        Box::pin(std::future::ready(()))
    }
}

/// Stores the guard's changes in batches until the channel closes; prunes expired rows as it goes.
fn write_behind(mut conn: Connection, receiver: mpsc::Receiver<Write>, window_ms: i64, path: &Path) {
    let mut stopping = false;
    while !stopping && let Ok(first) = receiver.recv() {
        let mut batch = vec![first];
        batch.extend(receiver.try_iter());
        stopping = batch.iter().any(|write| matches!(write, Write::Stop));
        let stored = (|| -> rusqlite::Result<()> {
            let tx = conn.transaction()?;
            let mut newest = 0;
            for write in &batch {
                match write {
                    Write::Remember(mac, at_ms) => {
                        tx.execute(
                            "INSERT OR REPLACE INTO accepted_signatures (mac, at_ms) VALUES (?1, ?2)",
                            params![mac, at_ms],
                        )?;
                        newest = newest.max(*at_ms);
                    }
                    Write::Forget(mac) => {
                        tx.execute("DELETE FROM accepted_signatures WHERE mac = ?1", [mac])?;
                    }
                    Write::Stop => {}
                }
            }
            if newest > 0 {
                tx.execute("DELETE FROM accepted_signatures WHERE at_ms <= ?1", [newest - window_ms])?;
            }
            tx.commit()
        })();
        if let Err(e) = stored {
            tracing::error!(path = %path.display(), error = %e, "replay guard: storing accepted signatures failed");
        }
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

    #[tokio::test]
    async fn sqlite_guard_keeps_accepted_signatures_across_a_restart_for_its_window() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("replay.db");
        let start = 1_700_000_000_000;
        {
            let guard = SqliteReplayGuard::open(&path, WINDOW, start).unwrap();
            assert!(guard.remember(b"mac-1", start).await.unwrap());
            assert!(guard.remember(b"mac-2", start + 1_000).await.unwrap());
            assert!(guard.remember(b"mac-3", start + 2_000).await.unwrap());
            guard.forget(b"mac-3").await;
        }
        // Restarted within the window: the replay is refused, the forgotten one is new.
        let guard = SqliteReplayGuard::open(&path, WINDOW, start + 60_000).unwrap();
        assert!(!guard.remember(b"mac-1", start + 60_000).await.unwrap(), "replay after a restart");
        assert!(guard.remember(b"mac-3", start + 60_000).await.unwrap());
        drop(guard);
        // Restarted after the window: nothing old is kept.
        let guard = SqliteReplayGuard::open(&path, WINDOW, start + 700_000).unwrap();
        assert!(guard.memory.is_empty(), "expired signatures were loaded");
        assert!(guard.remember(b"mac-1", start + 700_000).await.unwrap());
    }
}

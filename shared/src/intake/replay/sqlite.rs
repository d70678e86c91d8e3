//! [`SqliteReplayGuard`]: the replay guard of one `ferry serve`, kept in `data_dir/replay.db`.

use std::path::{Path, PathBuf};
use std::sync::{Mutex, mpsc};
use std::time::Duration;

use futures_util::future::BoxFuture;
use rusqlite::{Connection, params};

use super::{MemoryReplayGuard, ReplayError, ReplayGuard};

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

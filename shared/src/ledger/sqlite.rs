//! The embedded ledger of `ferry serve`: one SQLite file (WAL, `synchronous=FULL`).
//!
//! The ledger is not on the intake path, so every call simply runs on tokio's blocking pool
//! with the one [`Connection`] behind a mutex. Other processes (the `ferry` CLI while
//! `ferry serve` runs) may open the same file: every read-modify-write runs in a
//! `BEGIN IMMEDIATE` transaction, and a locked file is waited for up to [`BUSY_TIMEOUT`].
//!
//! Promotions are stored as JSON next to the columns queries need. Approvals live in their own
//! table only — a record's `approvals` are moved there when it is stored and read back from
//! there — so an `approve` is never lost to a record written from a copy read before it, and
//! approvals are never removed. Environment entries and deployment reports are append-only
//! rows; a stage's current entry is its newest row.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};

use crate::store::{self, StoreKind};
use rusqlite::{Connection, OptionalExtension, Row, TransactionBehavior, params};

use super::{
    Approval, DeploymentRecord, EnvironmentEntry, EnvironmentState, JobRecord, Ledger, LedgerError, LedgerFuture,
    PromotionRecord, PromotionState,
};

/// The states [`Ledger::parked`] lists (those for which [`PromotionState::is_parked`] holds).
const PARKED: [PromotionState; 2] = [PromotionState::AwaitingApproval, PromotionState::AwaitingGate];

/// `PRAGMA application_id`: "FRYL". Tells a ledger file from any other SQLite file.
const APPLICATION_ID: i64 = 0x4652_594C;
/// `PRAGMA user_version` of the schema below.
const SCHEMA_VERSION: i64 = 1;
const SCHEMA: &str = "
CREATE TABLE promotions (
    seq           INTEGER PRIMARY KEY,
    id            TEXT    NOT NULL UNIQUE,
    pipeline      TEXT    NOT NULL,
    stage         TEXT    NOT NULL,
    digest        TEXT    NOT NULL,
    state         TEXT    NOT NULL,
    created_at_ms INTEGER NOT NULL,
    updated_at_ms INTEGER NOT NULL,
    -- The whole PromotionRecord as JSON, its approvals left out (they are in `approvals`).
    record        TEXT    NOT NULL
);
CREATE INDEX promotions_pipeline ON promotions (pipeline, created_at_ms, updated_at_ms);
CREATE INDEX promotions_stage ON promotions (pipeline, stage, created_at_ms, updated_at_ms);
CREATE INDEX promotions_state ON promotions (state, created_at_ms, updated_at_ms);
CREATE TABLE approvals (
    seq          INTEGER PRIMARY KEY,
    promotion_id TEXT    NOT NULL,
    approved_by  TEXT    NOT NULL,
    at_ms        INTEGER NOT NULL,
    UNIQUE (promotion_id, approved_by)
);
CREATE TABLE environment_entries (
    seq          INTEGER PRIMARY KEY AUTOINCREMENT,
    pipeline     TEXT    NOT NULL,
    stage        TEXT    NOT NULL,
    digest       TEXT    NOT NULL,
    tag          TEXT,
    build_number TEXT,
    promotion_id TEXT    NOT NULL,
    since_ms     INTEGER NOT NULL
);
CREATE INDEX environment_entries_stage ON environment_entries (pipeline, stage, seq);
CREATE TABLE deployments (
    seq      INTEGER PRIMARY KEY AUTOINCREMENT,
    pipeline TEXT    NOT NULL,
    stage    TEXT    NOT NULL,
    status   TEXT    NOT NULL,
    digest   TEXT,
    reporter TEXT    NOT NULL,
    detail   TEXT,
    at_ms    INTEGER NOT NULL
);
CREATE INDEX deployments_stage ON deployments (pipeline, stage, at_ms, seq);
";
/// Added after schema 1 without changing its version: ledgers of schema 1 get it when opened.
const JOBS_TABLE: &str = "
CREATE TABLE IF NOT EXISTS jobs (
    id            TEXT    PRIMARY KEY,
    updated_at_ms INTEGER NOT NULL,
    -- The whole JobRecord as JSON.
    record        TEXT    NOT NULL
);
";

/// The embedded, durable [`Ledger`]. Open it once and share it (`Arc<dyn Ledger>`); the file
/// may also be opened by other handles and processes at the same time.
pub struct SqliteLedger {
    inner: Arc<Inner>,
}

struct Inner {
    path: PathBuf,
    conn: Mutex<Connection>,
}

impl fmt::Debug for SqliteLedger {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SqliteLedger").field("path", &self.inner.path).finish_non_exhaustive()
    }
}

/// Why one call failed, before it is told to the caller as a [`LedgerError`].
enum Failure {
    Sql(rusqlite::Error),
    Json(serde_json::Error),
    Ledger(LedgerError),
}

impl From<rusqlite::Error> for Failure {
    fn from(error: rusqlite::Error) -> Self {
        Failure::Sql(error)
    }
}

impl From<serde_json::Error> for Failure {
    fn from(error: serde_json::Error) -> Self {
        Failure::Json(error)
    }
}

impl From<LedgerError> for Failure {
    fn from(error: LedgerError) -> Self {
        Failure::Ledger(error)
    }
}

impl SqliteLedger {
    /// Opens (creating if needed) the ledger file at `path`; its directory must exist. Fails
    /// with [`LedgerError::Unavailable`] when the file cannot be opened for writing, holds
    /// something other than a Ferry ledger, or has a schema newer than this build knows.
    pub fn open(path: &Path) -> Result<Self, LedgerError> {
        let conn = open_connection(path)?;
        conn.execute_batch(JOBS_TABLE).map_err(|e| {
            LedgerError::Unavailable(format!("adding the jobs table to ledger database {}: {e}", path.display()))
        })?;
        tracing::debug!(path = %path.display(), "ledger opened");
        Ok(Self { inner: Arc::new(Inner { path: path.to_owned(), conn: Mutex::new(conn) }) })
    }

    pub fn path(&self) -> &Path {
        &self.inner.path
    }

    /// Runs `work` with the connection on the blocking pool. `what` names the call in errors.
    fn run<T, F>(&self, what: String, work: F) -> LedgerFuture<'_, T>
    where
        T: Send + 'static,
        F: FnOnce(&mut Connection) -> Result<T, Failure> + Send + 'static,
    {
        let inner = Arc::clone(&self.inner);
        Box::pin(async move {
            let task = {
                let inner = Arc::clone(&inner);
                tokio::task::spawn_blocking(move || {
                    // A panic inside a call rolled its transaction back while unwinding, so the
                    // connection behind a poisoned lock is still sound.
                    let mut conn = inner.conn.lock().unwrap_or_else(PoisonError::into_inner);
                    work(&mut conn)
                })
            };
            let path = inner.path.display();
            match task.await {
                Ok(Ok(value)) => Ok(value),
                Ok(Err(Failure::Ledger(error))) => Err(error),
                Ok(Err(Failure::Sql(e))) => {
                    Err(LedgerError::Unavailable(format!("{what} in ledger database {path} failed: {e}{}", hint(&e))))
                }
                Ok(Err(Failure::Json(e))) => Err(LedgerError::Unavailable(format!(
                    "{what} in ledger database {path} failed: a stored promotion is not valid JSON \
                     for this ferry: {e}"
                ))),
                Err(e) => {
                    Err(LedgerError::Unavailable(format!("{what} in ledger database {path} did not finish: {e}")))
                }
            }
        })
    }
}

impl Ledger for SqliteLedger {
    fn put_promotion(&self, mut record: PromotionRecord) -> LedgerFuture<'_, ()> {
        self.run(format!("storing promotion {}", record.id), move |conn| {
            let approvals = std::mem::take(&mut record.approvals);
            let json = serde_json::to_string(&record)?;
            let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
            tx.prepare_cached(
                "INSERT INTO promotions
                     (id, pipeline, stage, digest, state, created_at_ms, updated_at_ms, record)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)
                 ON CONFLICT (id) DO UPDATE SET
                     pipeline = excluded.pipeline, stage = excluded.stage, digest = excluded.digest,
                     state = excluded.state, created_at_ms = excluded.created_at_ms,
                     updated_at_ms = excluded.updated_at_ms, record = excluded.record",
            )?
            .execute(params![
                record.id,
                record.pipeline,
                record.stage,
                record.digest,
                state_column(record.state),
                record.created_at_ms,
                record.updated_at_ms,
                json
            ])?;
            for approval in &approvals {
                insert_approval(&tx, &record.id, &approval.by, approval.at_ms)?;
            }
            tx.commit()?;
            Ok(())
        })
    }

    fn promotion(&self, id: &str) -> LedgerFuture<'_, Option<PromotionRecord>> {
        let id = id.to_owned();
        self.run(format!("reading promotion {id}"), move |conn| {
            let tx = conn.transaction()?;
            let json: Option<String> = tx
                .prepare_cached("SELECT record FROM promotions WHERE id = ?1")?
                .query_row([&id], |row| row.get(0))
                .optional()?;
            let record = json.map(|json| with_approvals(&tx, &json)).transpose()?;
            Ok(record)
        })
    }

    fn approve(&self, id: &str, by: &str, at_ms: i64) -> LedgerFuture<'_, Vec<Approval>> {
        let (id, by) = (id.to_owned(), by.to_owned());
        self.run(format!("approving promotion {id}"), move |conn| {
            let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
            let known = tx
                .prepare_cached("SELECT 1 FROM promotions WHERE id = ?1")?
                .query_row([&id], |_| Ok(()))
                .optional()?
                .is_some();
            if !known {
                return Err(LedgerError::UnknownPromotion(id).into());
            }
            insert_approval(&tx, &id, &by, at_ms)?;
            let approvals = approvals_of(&tx, &id)?;
            tx.commit()?;
            Ok(approvals)
        })
    }

    fn history(&self, pipeline: &str, stage: Option<&str>, limit: usize) -> LedgerFuture<'_, Vec<PromotionRecord>> {
        let (pipeline, stage) = (pipeline.to_owned(), stage.map(str::to_owned));
        let what = match &stage {
            Some(stage) => format!("reading the history of stage {stage} of pipeline {pipeline}"),
            None => format!("reading the history of pipeline {pipeline}"),
        };
        self.run(what, move |conn| {
            let tx = conn.transaction()?;
            let order = "ORDER BY created_at_ms DESC, updated_at_ms DESC, seq DESC LIMIT ?";
            let jsons = match &stage {
                Some(stage) => {
                    let sql = format!("SELECT record FROM promotions WHERE pipeline = ? AND stage = ? {order}");
                    let mut statement = tx.prepare_cached(&sql)?;
                    statement
                        .query_map(params![pipeline, stage, sql_limit(limit)], |row| row.get(0))?
                        .collect::<Result<Vec<String>, _>>()?
                }
                None => {
                    let sql = format!("SELECT record FROM promotions WHERE pipeline = ? {order}");
                    let mut statement = tx.prepare_cached(&sql)?;
                    statement
                        .query_map(params![pipeline, sql_limit(limit)], |row| row.get(0))?
                        .collect::<Result<Vec<String>, _>>()?
                }
            };
            jsons.iter().map(|json| with_approvals(&tx, json)).collect()
        })
    }

    fn parked(&self, pipeline: Option<&str>) -> LedgerFuture<'_, Vec<PromotionRecord>> {
        let pipeline = pipeline.map(str::to_owned);
        let what = match &pipeline {
            Some(pipeline) => format!("listing the parked promotions of pipeline {pipeline}"),
            None => "listing the parked promotions".to_owned(),
        };
        self.run(what, move |conn| {
            let tx = conn.transaction()?;
            let jsons = {
                let mut statement = tx.prepare_cached(
                    "SELECT record FROM promotions
                     WHERE state IN (?1, ?2) AND (?3 IS NULL OR pipeline = ?3)
                     ORDER BY created_at_ms, updated_at_ms, seq",
                )?;
                statement
                    .query_map(params![state_column(PARKED[0]), state_column(PARKED[1]), pipeline], |row| row.get(0))?
                    .collect::<Result<Vec<String>, _>>()?
            };
            jsons.iter().map(|json| with_approvals(&tx, json)).collect()
        })
    }

    fn set_current(&self, pipeline: &str, stage: &str, entry: EnvironmentEntry) -> LedgerFuture<'_, ()> {
        let (pipeline, stage) = (pipeline.to_owned(), stage.to_owned());
        self.run(format!("setting the current digest of stage {stage} of pipeline {pipeline}"), move |conn| {
            let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
            let current: Option<String> = tx
                .prepare_cached(
                    "SELECT digest FROM environment_entries WHERE pipeline = ?1 AND stage = ?2
                     ORDER BY seq DESC LIMIT 1",
                )?
                .query_row([&pipeline, &stage], |row| row.get(0))
                .optional()?;
            if current.as_deref() == Some(entry.digest.as_str()) {
                return Ok(());
            }
            tx.prepare_cached(
                "INSERT INTO environment_entries
                     (pipeline, stage, digest, tag, build_number, promotion_id, since_ms)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
            )?
            .execute(params![
                pipeline,
                stage,
                entry.digest,
                entry.tag,
                entry.build_number,
                entry.promotion_id,
                entry.since_ms
            ])?;
            tx.commit()?;
            Ok(())
        })
    }

    fn environment(&self, pipeline: &str, stage: &str) -> LedgerFuture<'_, Option<EnvironmentState>> {
        let (pipeline, stage) = (pipeline.to_owned(), stage.to_owned());
        self.run(format!("reading stage {stage} of pipeline {pipeline}"), move |conn| {
            let mut entries = environment_entries(conn, &pipeline, &stage, 2)?.into_iter();
            Ok(entries.next().map(|current| EnvironmentState { pipeline, stage, current, previous: entries.next() }))
        })
    }

    fn environment_history(
        &self,
        pipeline: &str,
        stage: &str,
        limit: usize,
    ) -> LedgerFuture<'_, Vec<EnvironmentEntry>> {
        let (pipeline, stage) = (pipeline.to_owned(), stage.to_owned());
        self.run(format!("reading the entries of stage {stage} of pipeline {pipeline}"), move |conn| {
            Ok(environment_entries(conn, &pipeline, &stage, limit)?)
        })
    }

    fn record_deployment(&self, record: DeploymentRecord) -> LedgerFuture<'_, ()> {
        self.run(
            format!("recording a deployment of stage {} of pipeline {}", record.stage, record.pipeline),
            move |conn| {
                conn.prepare_cached(
                    "INSERT INTO deployments (pipeline, stage, status, digest, reporter, detail, at_ms)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
                )?
                .execute(params![
                    record.pipeline,
                    record.stage,
                    record.status,
                    record.digest,
                    record.reporter,
                    record.detail,
                    record.at_ms
                ])?;
                Ok(())
            },
        )
    }

    fn put_job(&self, record: JobRecord) -> LedgerFuture<'_, ()> {
        self.run(format!("storing job {}", record.id), move |conn| {
            let json = serde_json::to_string(&record)?;
            conn.prepare_cached(
                "INSERT INTO jobs (id, updated_at_ms, record) VALUES (?1, ?2, ?3)
                 ON CONFLICT (id) DO UPDATE SET updated_at_ms = excluded.updated_at_ms, record = excluded.record",
            )?
            .execute(params![record.id, record.updated_at_ms, json])?;
            Ok(())
        })
    }

    fn job(&self, id: &str) -> LedgerFuture<'_, Option<JobRecord>> {
        let id = id.to_owned();
        self.run(format!("reading job {id}"), move |conn| {
            let json: Option<String> = conn
                .prepare_cached("SELECT record FROM jobs WHERE id = ?1")?
                .query_row([&id], |row| row.get(0))
                .optional()?;
            Ok(json.map(|json| serde_json::from_str(&json)).transpose()?)
        })
    }

    fn deployments(&self, pipeline: &str, stage: &str, limit: usize) -> LedgerFuture<'_, Vec<DeploymentRecord>> {
        let (pipeline, stage) = (pipeline.to_owned(), stage.to_owned());
        self.run(format!("reading the deployments of stage {stage} of pipeline {pipeline}"), move |conn| {
            let mut statement = conn.prepare_cached(
                "SELECT status, digest, reporter, detail, at_ms FROM deployments
                 WHERE pipeline = ?1 AND stage = ?2
                 ORDER BY at_ms DESC, seq DESC LIMIT ?3",
            )?;
            let records = statement
                .query_map(params![pipeline, stage, sql_limit(limit)], |row| {
                    Ok(DeploymentRecord {
                        pipeline: pipeline.clone(),
                        stage: stage.clone(),
                        status: row.get(0)?,
                        digest: row.get(1)?,
                        reporter: row.get(2)?,
                        detail: row.get(3)?,
                        at_ms: row.get(4)?,
                    })
                })?
                .collect::<Result<_, _>>()?;
            Ok(records)
        })
    }
}

/// The `state` column: the same name the record's JSON uses (`awaiting_approval`, …).
fn state_column(state: PromotionState) -> String {
    match serde_json::to_value(state) {
        Ok(serde_json::Value::String(name)) => name,
        _ => format!("{state:?}"),
    }
}

fn sql_limit(limit: usize) -> i64 {
    i64::try_from(limit).unwrap_or(i64::MAX)
}

/// Adds `by`'s approval unless they already approved (their first approval's time stays).
fn insert_approval(conn: &Connection, id: &str, by: &str, at_ms: i64) -> rusqlite::Result<()> {
    conn.prepare_cached(
        "INSERT INTO approvals (promotion_id, approved_by, at_ms) VALUES (?1, ?2, ?3)
         ON CONFLICT (promotion_id, approved_by) DO NOTHING",
    )?
    .execute(params![id, by, at_ms])?;
    Ok(())
}

/// A promotion's approvals, oldest first.
fn approvals_of(conn: &Connection, id: &str) -> rusqlite::Result<Vec<Approval>> {
    conn.prepare_cached("SELECT approved_by, at_ms FROM approvals WHERE promotion_id = ?1 ORDER BY at_ms, seq")?
        .query_map([id], |row| Ok(Approval { by: row.get(0)?, at_ms: row.get(1)? }))?
        .collect()
}

/// A stored record, with its approvals from the approvals table.
fn with_approvals(conn: &Connection, json: &str) -> Result<PromotionRecord, Failure> {
    let mut record: PromotionRecord = serde_json::from_str(json)?;
    record.approvals = approvals_of(conn, &record.id)?;
    Ok(record)
}

/// A stage's entries, newest first.
fn environment_entries(
    conn: &Connection,
    pipeline: &str,
    stage: &str,
    limit: usize,
) -> rusqlite::Result<Vec<EnvironmentEntry>> {
    conn.prepare_cached(
        "SELECT digest, tag, build_number, promotion_id, since_ms FROM environment_entries
         WHERE pipeline = ?1 AND stage = ?2 ORDER BY seq DESC LIMIT ?3",
    )?
    .query_map(params![pipeline, stage, sql_limit(limit)], environment_entry)?
    .collect()
}

fn environment_entry(row: &Row<'_>) -> rusqlite::Result<EnvironmentEntry> {
    Ok(EnvironmentEntry {
        digest: row.get(0)?,
        tag: row.get(1)?,
        build_number: row.get(2)?,
        promotion_id: row.get(3)?,
        since_ms: row.get(4)?,
    })
}

/// This kind of file, for [`store::open`].
const STORE: StoreKind = StoreKind {
    name: "ledger",
    application_id: APPLICATION_ID,
    schema_version: SCHEMA_VERSION,
    schema: SCHEMA,
    migrations: &[],
};

fn open_connection(path: &Path) -> Result<Connection, LedgerError> {
    store::open(path, &STORE).map_err(LedgerError::Unavailable)
}

fn hint(error: &rusqlite::Error) -> String {
    store::hint(&STORE, error)
}

#[cfg(test)]
mod tests {
    use super::super::{GateDecision, promotion_id};
    use super::*;

    const PIPELINE: &str = "web";

    fn open(dir: &tempfile::TempDir) -> SqliteLedger {
        SqliteLedger::open(&dir.path().join("ledger.db")).expect("ledger opens")
    }

    fn record(stage: &str, digest: &str, state: PromotionState, created_at_ms: i64) -> PromotionRecord {
        PromotionRecord {
            id: promotion_id(PIPELINE, stage, digest),
            pipeline: PIPELINE.to_owned(),
            stage: stage.to_owned(),
            source: "registry.dev.example/web".to_owned(),
            target: format!("registry.{stage}.example/web"),
            digest: digest.to_owned(),
            tag: Some("1.4.2".to_owned()),
            tag_moved_to: None,
            build_id: Some("8812".to_owned()),
            build_number: Some("2024.06.1".to_owned()),
            trigger: "webhook:distribution".to_owned(),
            triggered_by: None,
            state,
            gates: vec![GateDecision {
                gate: "auto".to_owned(),
                decision: "pass".to_owned(),
                detail: String::new(),
                at_ms: created_at_ms,
            }],
            approvals: Vec::new(),
            error: None,
            attempts: 1,
            created_at_ms,
            updated_at_ms: created_at_ms,
            finished_at_ms: None,
            job_id: None,
        }
    }

    fn entry(digest: &str, since_ms: i64) -> EnvironmentEntry {
        EnvironmentEntry {
            digest: digest.to_owned(),
            tag: None,
            build_number: None,
            promotion_id: promotion_id(PIPELINE, "prod", digest),
            since_ms,
        }
    }

    fn deployment(status: &str, digest: &str, at_ms: i64) -> DeploymentRecord {
        DeploymentRecord {
            pipeline: PIPELINE.to_owned(),
            stage: "prod".to_owned(),
            status: status.to_owned(),
            digest: Some(digest.to_owned()),
            reporter: "azure-devops".to_owned(),
            detail: None,
            at_ms,
        }
    }

    fn digests(entries: &[EnvironmentEntry]) -> Vec<&str> {
        entries.iter().map(|entry| entry.digest.as_str()).collect()
    }

    fn ids(records: &[PromotionRecord]) -> Vec<&str> {
        records.iter().map(|record| record.id.as_str()).collect()
    }

    fn approvers(approvals: &[Approval]) -> Vec<&str> {
        approvals.iter().map(|approval| approval.by.as_str()).collect()
    }

    #[test]
    fn promotion_id_is_stable() {
        let id = promotion_id("web", "prod", "sha256:abc");
        assert_eq!(id, "p-49414f70a0e6f1f3");
        assert_eq!(id, promotion_id("web", "prod", "sha256:abc"));
        assert_ne!(id, promotion_id("web", "staging", "sha256:abc"));
        assert_ne!(id, promotion_id("web", "prod", "sha256:abd"));
    }

    #[tokio::test]
    async fn records_survive_reopening() {
        let dir = tempfile::tempdir().unwrap();
        let mut stored = record("prod", "sha256:aa", PromotionState::AwaitingApproval, 1_000);
        stored.triggered_by = Some("carol".to_owned());
        {
            let ledger = open(&dir);
            ledger.put_promotion(stored.clone()).await.unwrap();
            ledger.approve(&stored.id, "alice", 1_500).await.unwrap();
            ledger.set_current(PIPELINE, "prod", entry("sha256:aa", 2_000)).await.unwrap();
            ledger.record_deployment(deployment("succeeded", "sha256:aa", 3_000)).await.unwrap();
        }
        let ledger = open(&dir);
        stored.approvals = vec![Approval { by: "alice".to_owned(), at_ms: 1_500 }];
        assert_eq!(ledger.promotion(&stored.id).await.unwrap(), Some(stored));
        let state = ledger.environment(PIPELINE, "prod").await.unwrap().expect("stage has a current digest");
        assert_eq!(state.current, entry("sha256:aa", 2_000));
        assert_eq!(
            ledger.deployments(PIPELINE, "prod", 10).await.unwrap(),
            vec![deployment("succeeded", "sha256:aa", 3_000)]
        );
    }

    #[tokio::test]
    async fn upsert_replaces_the_record() {
        let dir = tempfile::tempdir().unwrap();
        let ledger = open(&dir);
        let first = record("prod", "sha256:aa", PromotionState::Pending, 1_000);
        ledger.put_promotion(first.clone()).await.unwrap();
        let mut second = first.clone();
        second.state = PromotionState::Succeeded;
        second.attempts = 2;
        second.updated_at_ms = 5_000;
        second.finished_at_ms = Some(5_000);
        ledger.put_promotion(second.clone()).await.unwrap();

        assert_eq!(ledger.promotion(&first.id).await.unwrap(), Some(second.clone()));
        assert_eq!(ledger.history(PIPELINE, None, 10).await.unwrap(), vec![second]);
        assert_eq!(ledger.promotion("p-0000000000000000").await.unwrap(), None);
    }

    #[tokio::test]
    async fn approvals_are_counted_once_per_person() {
        let dir = tempfile::tempdir().unwrap();
        let ledger = open(&dir);
        let waiting = record("prod", "sha256:aa", PromotionState::AwaitingApproval, 1_000);
        ledger.put_promotion(waiting.clone()).await.unwrap();

        assert_eq!(approvers(&ledger.approve(&waiting.id, "alice", 2_000).await.unwrap()), ["alice"]);
        let again = ledger.approve(&waiting.id, "alice", 2_500).await.unwrap();
        assert_eq!(again, vec![Approval { by: "alice".to_owned(), at_ms: 2_000 }]);
        assert_eq!(approvers(&ledger.approve(&waiting.id, "bob", 3_000).await.unwrap()), ["alice", "bob"]);

        // A record written from a copy read before the approvals does not lose them; approvals
        // it carries itself are added, once per person.
        let mut stale = waiting.clone();
        stale.updated_at_ms = 4_000;
        stale.approvals = vec![Approval { by: "bob".to_owned(), at_ms: 9_000 }];
        ledger.put_promotion(stale).await.unwrap();
        let stored = ledger.promotion(&waiting.id).await.unwrap().expect("promotion is stored");
        assert_eq!(
            stored.approvals,
            [Approval { by: "alice".to_owned(), at_ms: 2_000 }, Approval { by: "bob".to_owned(), at_ms: 3_000 }]
        );
        assert_eq!(stored.updated_at_ms, 4_000);
        let parked = ledger.parked(None).await.unwrap();
        assert_eq!(approvers(&parked[0].approvals), ["alice", "bob"]);
    }

    #[tokio::test]
    async fn unknown_promotion_cannot_be_approved() {
        let dir = tempfile::tempdir().unwrap();
        let ledger = open(&dir);
        let error = ledger.approve("p-0123456789abcdef", "alice", 1_000).await.unwrap_err();
        assert_eq!(error, LedgerError::UnknownPromotion("p-0123456789abcdef".to_owned()));
    }

    #[tokio::test]
    async fn history_is_newest_first_and_filtered_by_stage() {
        let dir = tempfile::tempdir().unwrap();
        let ledger = open(&dir);
        let old_prod = record("prod", "sha256:aa", PromotionState::Succeeded, 1_000);
        let staging = record("staging", "sha256:bb", PromotionState::Succeeded, 2_000);
        let mut new_prod = record("prod", "sha256:cc", PromotionState::Running, 3_000);
        // Same creation time as `newer_prod`, but updated earlier: listed after it.
        new_prod.updated_at_ms = 3_100;
        let mut newer_prod = record("prod", "sha256:dd", PromotionState::Pending, 3_000);
        newer_prod.updated_at_ms = 3_200;
        let mut other_pipeline = record("prod", "sha256:ee", PromotionState::Succeeded, 4_000);
        other_pipeline.pipeline = "api".to_owned();
        other_pipeline.id = promotion_id("api", "prod", "sha256:ee");
        for record in [&new_prod, &old_prod, &other_pipeline, &staging, &newer_prod] {
            ledger.put_promotion(record.clone()).await.unwrap();
        }

        let all = ledger.history(PIPELINE, None, 10).await.unwrap();
        assert_eq!(ids(&all), [&newer_prod.id, &new_prod.id, &staging.id, &old_prod.id]);
        let prod = ledger.history(PIPELINE, Some("prod"), 10).await.unwrap();
        assert_eq!(ids(&prod), [&newer_prod.id, &new_prod.id, &old_prod.id]);
        let limited = ledger.history(PIPELINE, Some("prod"), 2).await.unwrap();
        assert_eq!(ids(&limited), [&newer_prod.id, &new_prod.id]);
        assert!(ledger.history(PIPELINE, Some("dev"), 10).await.unwrap().is_empty());
        assert!(ledger.history(PIPELINE, None, 0).await.unwrap().is_empty());
    }

    #[tokio::test]
    async fn parked_lists_only_waiting_promotions() {
        let dir = tempfile::tempdir().unwrap();
        let ledger = open(&dir);
        let gate = record("prod", "sha256:aa", PromotionState::AwaitingGate, 2_000);
        let approval = record("prod", "sha256:bb", PromotionState::AwaitingApproval, 1_000);
        let mut other_pipeline = record("prod", "sha256:cc", PromotionState::AwaitingApproval, 3_000);
        other_pipeline.pipeline = "api".to_owned();
        other_pipeline.id = promotion_id("api", "prod", "sha256:cc");
        ledger.put_promotion(gate.clone()).await.unwrap();
        ledger.put_promotion(approval.clone()).await.unwrap();
        ledger.put_promotion(other_pipeline.clone()).await.unwrap();
        for (digest, state) in [
            ("sha256:d1", PromotionState::Pending),
            ("sha256:d2", PromotionState::Running),
            ("sha256:d3", PromotionState::Succeeded),
            ("sha256:d4", PromotionState::Failed),
            ("sha256:d5", PromotionState::DeadLettered),
            ("sha256:d6", PromotionState::Rejected),
        ] {
            ledger.put_promotion(record("prod", digest, state, 500)).await.unwrap();
        }

        let parked = ledger.parked(None).await.unwrap();
        assert_eq!(ids(&parked), [&approval.id, &gate.id, &other_pipeline.id]);
        let parked = ledger.parked(Some(PIPELINE)).await.unwrap();
        assert_eq!(ids(&parked), [&approval.id, &gate.id]);

        // Leaving the parked state takes it off the list.
        let mut approved = approval.clone();
        approved.state = PromotionState::Running;
        ledger.put_promotion(approved).await.unwrap();
        assert_eq!(ids(&ledger.parked(Some(PIPELINE)).await.unwrap()), [&gate.id]);
    }

    #[tokio::test]
    async fn set_current_keeps_the_previous_entry() {
        let dir = tempfile::tempdir().unwrap();
        let ledger = open(&dir);
        assert_eq!(ledger.environment(PIPELINE, "prod").await.unwrap(), None);

        ledger.set_current(PIPELINE, "prod", entry("sha256:aa", 1_000)).await.unwrap();
        let state = ledger.environment(PIPELINE, "prod").await.unwrap().expect("stage has a current digest");
        assert_eq!(state.current, entry("sha256:aa", 1_000));
        assert_eq!(state.previous, None);

        ledger.set_current(PIPELINE, "prod", entry("sha256:bb", 2_000)).await.unwrap();
        // A rollback to an earlier digest: the previous one is still the entry just before.
        ledger.set_current(PIPELINE, "prod", entry("sha256:aa", 3_000)).await.unwrap();
        let state = ledger.environment(PIPELINE, "prod").await.unwrap().expect("stage has a current digest");
        assert_eq!(
            state,
            EnvironmentState {
                pipeline: PIPELINE.to_owned(),
                stage: "prod".to_owned(),
                current: entry("sha256:aa", 3_000),
                previous: Some(entry("sha256:bb", 2_000)),
            }
        );
        assert_eq!(ledger.environment(PIPELINE, "staging").await.unwrap(), None);
    }

    #[tokio::test]
    async fn setting_the_current_digest_again_changes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let ledger = open(&dir);
        ledger.set_current(PIPELINE, "prod", entry("sha256:aa", 1_000)).await.unwrap();
        ledger.set_current(PIPELINE, "prod", entry("sha256:bb", 2_000)).await.unwrap();
        let before = ledger.environment(PIPELINE, "prod").await.unwrap();

        ledger.set_current(PIPELINE, "prod", entry("sha256:bb", 9_000)).await.unwrap();
        assert_eq!(ledger.environment(PIPELINE, "prod").await.unwrap(), before);
        let history = ledger.environment_history(PIPELINE, "prod", 10).await.unwrap();
        assert_eq!(history, [entry("sha256:bb", 2_000), entry("sha256:aa", 1_000)]);
    }

    #[tokio::test]
    async fn rollback_history_lists_entries_newest_first() {
        let dir = tempfile::tempdir().unwrap();
        let ledger = open(&dir);
        for (digest, since_ms) in
            [("sha256:aa", 1_000), ("sha256:bb", 2_000), ("sha256:cc", 3_000), ("sha256:aa", 4_000)]
        {
            ledger.set_current(PIPELINE, "prod", entry(digest, since_ms)).await.unwrap();
        }
        ledger.set_current(PIPELINE, "staging", entry("sha256:ff", 5_000)).await.unwrap();

        let history = ledger.environment_history(PIPELINE, "prod", 10).await.unwrap();
        assert_eq!(digests(&history), ["sha256:aa", "sha256:cc", "sha256:bb", "sha256:aa"]);
        assert_eq!(history[0].since_ms, 4_000);
        let limited = ledger.environment_history(PIPELINE, "prod", 2).await.unwrap();
        assert_eq!(digests(&limited), ["sha256:aa", "sha256:cc"]);
        assert!(ledger.environment_history(PIPELINE, "dev", 10).await.unwrap().is_empty());
    }

    #[tokio::test]
    async fn deployments_are_newest_first() {
        let dir = tempfile::tempdir().unwrap();
        let ledger = open(&dir);
        ledger.record_deployment(deployment("succeeded", "sha256:aa", 1_000)).await.unwrap();
        ledger.record_deployment(deployment("failed", "sha256:bb", 3_000)).await.unwrap();
        // Reported late, but it happened before the failed one.
        ledger.record_deployment(deployment("succeeded", "sha256:bb", 2_000)).await.unwrap();
        let mut staging = deployment("succeeded", "sha256:cc", 4_000);
        staging.stage = "staging".to_owned();
        ledger.record_deployment(staging).await.unwrap();

        assert_eq!(
            ledger.deployments(PIPELINE, "prod", 10).await.unwrap(),
            [
                deployment("failed", "sha256:bb", 3_000),
                deployment("succeeded", "sha256:bb", 2_000),
                deployment("succeeded", "sha256:aa", 1_000),
            ]
        );
        assert_eq!(ledger.deployments(PIPELINE, "prod", 1).await.unwrap(), [deployment("failed", "sha256:bb", 3_000)]);
        assert!(ledger.deployments(PIPELINE, "dev", 10).await.unwrap().is_empty());
    }

    #[tokio::test]
    async fn two_handles_on_one_file_see_each_others_writes() {
        let dir = tempfile::tempdir().unwrap();
        let serve = open(&dir);
        let cli = open(&dir);
        let waiting = record("prod", "sha256:aa", PromotionState::AwaitingApproval, 1_000);
        serve.put_promotion(waiting.clone()).await.unwrap();

        assert_eq!(ids(&cli.parked(None).await.unwrap()), [&waiting.id]);
        cli.approve(&waiting.id, "alice", 2_000).await.unwrap();
        let seen = serve.promotion(&waiting.id).await.unwrap().expect("promotion is stored");
        assert_eq!(approvers(&seen.approvals), ["alice"]);

        serve.set_current(PIPELINE, "prod", entry("sha256:aa", 3_000)).await.unwrap();
        cli.set_current(PIPELINE, "prod", entry("sha256:bb", 4_000)).await.unwrap();
        let state = serve.environment(PIPELINE, "prod").await.unwrap().expect("stage has a current digest");
        assert_eq!(
            (state.current.digest.as_str(), state.previous.map(|p| p.digest)),
            ("sha256:bb", Some("sha256:aa".to_owned()))
        );

        // Both handles writing at once: every write lands.
        let writes = (0..20).map(|i| {
            let ledger = if i % 2 == 0 { &serve } else { &cli };
            ledger.record_deployment(deployment("succeeded", "sha256:bb", i))
        });
        for result in futures_util::future::join_all(writes).await {
            result.unwrap();
        }
        assert_eq!(cli.deployments(PIPELINE, "prod", 100).await.unwrap().len(), 20);
    }

    #[tokio::test]
    async fn a_file_of_something_else_is_not_opened_as_a_ledger() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("other.db");
        Connection::open(&path).unwrap().execute_batch("CREATE TABLE jobs (id INTEGER PRIMARY KEY)").unwrap();
        let error = SqliteLedger::open(&path).unwrap_err();
        let LedgerError::Unavailable(message) = error else { panic!("expected Unavailable, got {error:?}") };
        assert!(message.contains(&path.display().to_string()), "{message}");
        assert!(message.contains("not a Ferry ledger"), "{message}");
    }

    #[tokio::test]
    async fn a_missing_directory_is_reported_with_the_file_name() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("missing").join("ledger.db");
        let error = SqliteLedger::open(&path).unwrap_err();
        let LedgerError::Unavailable(message) = error else { panic!("expected Unavailable, got {error:?}") };
        assert!(message.contains(&path.display().to_string()), "{message}");
    }

    #[test]
    fn parked_states_are_the_ones_that_are_parked() {
        let all = [
            PromotionState::Pending,
            PromotionState::AwaitingApproval,
            PromotionState::AwaitingGate,
            PromotionState::Running,
            PromotionState::Succeeded,
            PromotionState::Failed,
            PromotionState::DeadLettered,
            PromotionState::Rejected,
            PromotionState::DeployFailed,
        ];
        let parked: Vec<_> = all.into_iter().filter(|state| state.is_parked()).collect();
        assert_eq!(parked, PARKED);
    }

    #[test]
    fn state_column_uses_the_json_names() {
        assert_eq!(state_column(PromotionState::AwaitingApproval), "awaiting_approval");
        assert_eq!(state_column(PromotionState::DeadLettered), "dead_lettered");
        assert_eq!(state_column(PromotionState::DeployFailed), "deploy_failed", "the word operators and the issue use");
    }
}

//! The SQLite files Ferry keeps (job queue, ledger): WAL with `synchronous=FULL` so a commit
//! is on disk when it returns (the job queue's writer moves that fsync to a thread of its own,
//! see `queue::sqlite`), a marker (`application_id`) saying what the file is, and a
//! schema version checked on open.

use std::path::Path;
use std::time::Duration;

use rusqlite::{Connection, ErrorCode};

/// What one kind of file holds.
pub struct StoreKind {
    /// In messages: "job queue", "ledger".
    pub name: &'static str,
    /// `PRAGMA application_id`, telling this kind of file from any other SQLite file.
    pub application_id: i64,
    /// `PRAGMA user_version` of `schema`.
    pub schema_version: i64,
    pub schema: &'static str,
    /// `(from_version, sql)`: brings a file at `from_version` to `from_version + 1`, for every
    /// version an older build may have left behind.
    pub migrations: &'static [(i64, &'static str)],
}

const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// Opens `path`, sets the durability pragmas and creates or checks the schema. Errors are
/// messages naming the file and what to do.
pub fn open(path: &Path, kind: &StoreKind) -> Result<Connection, String> {
    let fail = |doing: &str, e: rusqlite::Error| {
        format!("cannot open {} database {}: {doing} failed: {e}{}", kind.name, path.display(), hint(kind, &e))
    };
    match make_private(path) {
        // A missing directory: SQLite's own error below says so, with the hint.
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            return Err(format!("cannot open {} database {}: {e}", kind.name, path.display()));
        }
        _ => {}
    }
    let conn = Connection::open(path).map_err(|e| fail("open", e))?;
    conn.busy_timeout(BUSY_TIMEOUT).map_err(|e| fail("setting busy_timeout", e))?;
    let journal_mode: String = conn
        .pragma_update_and_check(None, "journal_mode", "WAL", |row| row.get(0))
        .map_err(|e| fail("switching to WAL", e))?;
    if !journal_mode.eq_ignore_ascii_case("wal") {
        return Err(format!(
            "cannot open {} database {}: its filesystem does not support WAL mode \
             (journal_mode stayed {journal_mode}); put the file on a local disk",
            kind.name,
            path.display()
        ));
    }
    conn.pragma_update(None, "synchronous", "FULL").map_err(|e| fail("setting synchronous=FULL", e))?;
    migrate(&conn, path, kind)?;
    // SQLite fsyncs the WAL on commit, but not the directory entry of a new database file.
    let dir = match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        _ => Path::new("."),
    };
    std::fs::File::open(dir).and_then(|dir| dir.sync_all()).map_err(|e| {
        format!("cannot sync directory {} of {} database {}: {e}", dir.display(), kind.name, path.display())
    })?;
    conn.set_prepared_statement_cache_capacity(32);
    Ok(conn)
}

/// Creates `path` readable and writable by its owner only (0600), or takes group and other
/// permissions away from an existing one: the queue and ledger hold who promoted what, and the
/// WAL and shared-memory files SQLite creates beside it copy its permissions.
pub fn make_private(path: &Path) -> std::io::Result<()> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
        let file = std::fs::OpenOptions::new().create(true).append(true).mode(0o600).open(path)?;
        let mode = file.metadata()?.permissions().mode();
        if mode & 0o077 != 0 {
            file.set_permissions(std::fs::Permissions::from_mode(mode & 0o700))?;
        }
    }
    #[cfg(not(unix))]
    let _ = path;
    Ok(())
}

/// Creates `dir` (and its parents) for Ferry's data, accessible by its owner only (0700) when
/// Ferry creates it; an existing directory keeps the permissions its owner gave it.
pub fn create_private_dir(dir: &Path) -> std::io::Result<()> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::DirBuilderExt;
        std::fs::DirBuilder::new().recursive(true).mode(0o700).create(dir)
    }
    #[cfg(not(unix))]
    std::fs::create_dir_all(dir)
}

/// Creates the schema in a new file, or checks that an existing file holds this kind at a
/// version this build understands. Runs under a write lock, so two processes opening a new file
/// cannot both create it.
fn migrate(conn: &Connection, path: &Path, kind: &StoreKind) -> Result<(), String> {
    let fail = |doing: &str, e: rusqlite::Error| {
        format!("cannot open {} database {}: {doing} failed: {e}{}", kind.name, path.display(), hint(kind, &e))
    };
    let not_ours = |detail: String| {
        format!(
            "{} is not a Ferry {} database ({detail}); the {} needs a file of its own",
            path.display(),
            kind.name,
            kind.name
        )
    };
    conn.execute_batch("BEGIN IMMEDIATE").map_err(|e| fail("locking for the schema check", e))?;
    let checked = (|| {
        let application_id: i64 = conn
            .pragma_query_value(None, "application_id", |row| row.get(0))
            .map_err(|e| fail("reading application_id", e))?;
        let version: i64 = conn
            .pragma_query_value(None, "user_version", |row| row.get(0))
            .map_err(|e| fail("reading user_version", e))?;
        match (application_id, version) {
            (0, 0) => {
                let objects: i64 = conn
                    .query_row("SELECT count(*) FROM sqlite_schema", [], |row| row.get(0))
                    .map_err(|e| fail("reading the schema", e))?;
                if objects > 0 {
                    return Err(not_ours(format!("it already holds {objects} tables/indexes")));
                }
                conn.execute_batch(&format!(
                    "{}
                     PRAGMA application_id = {};
                     PRAGMA user_version = {};",
                    kind.schema, kind.application_id, kind.schema_version
                ))
                .map_err(|e| fail("creating the schema", e))
            }
            (id, version) if id == kind.application_id && version == kind.schema_version => Ok(()),
            (id, version) if id == kind.application_id && version > 0 && version < kind.schema_version => {
                upgrade(conn, path, kind, version)
            }
            (id, version) if id == kind.application_id && version > kind.schema_version => Err(format!(
                "{} database {} has schema version {version}, newer than this ferry understands ({}); run a newer ferry",
                kind.name,
                path.display(),
                kind.schema_version
            )),
            (id, version) if id == kind.application_id => {
                Err(format!("{} database {} has unknown schema version {version}", kind.name, path.display()))
            }
            (application_id, version) => {
                Err(not_ours(format!("application_id {application_id:#x}, user_version {version}")))
            }
        }
    })();
    let end = if checked.is_ok() { "COMMIT" } else { "ROLLBACK" };
    conn.execute_batch(end).map_err(|e| fail("committing the schema", e))?;
    checked
}

/// Applies `kind.migrations` from `version` up to the current schema, inside the caller's
/// transaction: a failed step leaves the file as it was.
fn upgrade(conn: &Connection, path: &Path, kind: &StoreKind, mut version: i64) -> Result<(), String> {
    while version < kind.schema_version {
        let Some((_, sql)) = kind.migrations.iter().find(|(from, _)| *from == version) else {
            return Err(format!(
                "{} database {} has schema version {version}, which this ferry cannot upgrade; move it aside",
                kind.name,
                path.display()
            ));
        };
        conn.execute_batch(sql).map_err(|e| {
            format!(
                "cannot upgrade {} database {} from schema version {version}: {e}{}",
                kind.name,
                path.display(),
                hint(kind, &e)
            )
        })?;
        version += 1;
        conn.pragma_update(None, "user_version", version)
            .map_err(|e| format!("cannot upgrade {} database {}: {e}", kind.name, path.display()))?;
        tracing::info!(path = %path.display(), version, "{} database upgraded", kind.name);
    }
    Ok(())
}

/// What a user can do about an SQLite error, to append to its message.
pub fn hint(kind: &StoreKind, error: &rusqlite::Error) -> String {
    match error.sqlite_error_code() {
        Some(ErrorCode::CannotOpen | ErrorCode::ReadOnly | ErrorCode::PermissionDenied) => {
            "; check that the directory exists and that it and the file are writable by the user running ferry".into()
        }
        Some(ErrorCode::DiskFull) => "; the disk is full: free some space".into(),
        Some(ErrorCode::SystemIoFailure) => "; the disk reported an I/O error".into(),
        Some(ErrorCode::DatabaseBusy | ErrorCode::DatabaseLocked) => {
            format!("; another process kept the {} file locked for longer than {BUSY_TIMEOUT:?}", kind.name)
        }
        Some(ErrorCode::DatabaseCorrupt | ErrorCode::NotADatabase) => {
            format!("; the file is damaged or not a {} database: move it aside", kind.name)
        }
        _ => String::new(),
    }
}

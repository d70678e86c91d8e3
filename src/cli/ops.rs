//! Operator commands: `ferry status | promote | approve | reject | rollback | history | dlq`.
//! They talk to a running `ferry serve` over HTTP (`--server`), or open the stores that the
//! configuration names directly (`--config`: SQLite files, or SQS and DynamoDB).

use std::borrow::Cow;
use std::io::IsTerminal;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{Context, bail};
use clap::{Args, Subcommand};
use ferry_core::config::Config;
use ferry_core::escape::escape_control;
use ferry_core::ops::Operations;
use ferry_core::worker::Worker;
use serde_json::{Value, json};

/// Where the operations run.
#[derive(Debug, Args, Clone)]
pub struct Connection {
    /// A running `ferry serve`, e.g. http://127.0.0.1:8080.
    #[arg(long, env = "FERRY_SERVER", global = true, value_name = "URL")]
    server: Option<String>,

    /// The server's operator token.
    #[arg(long, env = "FERRY_OPERATOR_TOKEN", hide_env_values = true, global = true, value_name = "TOKEN")]
    token: Option<String>,

    /// Without --server: work on this configuration's stores directly (SQLite files, or SQS and DynamoDB).
    #[arg(long, short, env = "FERRY_CONFIG", global = true, value_name = "FILE")]
    config: Option<PathBuf>,

    /// Who you are, recorded with approvals, promotions and rollbacks [default: $USER].
    #[arg(long, env = "FERRY_USER", global = true, value_name = "NAME")]
    user: Option<String>,
}

#[derive(Debug, Args)]
pub struct StatusArgs {
    /// Only this pipeline.
    pipeline: Option<String>,
    /// Print JSON.
    #[arg(long)]
    json: bool,
}

/// Whether a command that starts work waits for its outcome.
#[derive(Debug, Args, Clone)]
pub struct WaitArgs {
    /// Wait for the outcome and report it (the default when stdout is a terminal).
    #[arg(long, conflicts_with = "no_wait")]
    wait: bool,
    /// Print the queued job's id and return at once.
    #[arg(long)]
    no_wait: bool,
    /// How long to wait; then exit 4 (the job goes on).
    #[arg(long, value_name = "SECS", default_value_t = 300)]
    timeout: u64,
}

impl WaitArgs {
    fn waits(&self) -> bool {
        self.wait || (!self.no_wait && std::io::stdout().is_terminal())
    }
}

/// Exit codes of a waited-for job (see README "Exit codes").
pub const EXIT_FAILED: u8 = 1;
pub const EXIT_REFUSED: u8 = 3;
pub const EXIT_STILL_RUNNING: u8 = 4;

/// A waited-for job that was not promoted or parked: its outcome, and the exit code that says
/// which it was.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct Exit {
    pub code: u8,
    pub message: String,
}

#[derive(Debug, Args)]
pub struct PromoteArgs {
    /// The pipeline (its `name` in the configuration).
    pipeline: String,
    /// A tag or digest, as found in the stage's source (the previous stage's target).
    reference: String,
    /// The stage to promote into.
    #[arg(long)]
    to: String,
    #[command(flatten)]
    wait: WaitArgs,
}

#[derive(Debug, Args)]
pub struct ApproveArgs {
    /// The promotion id (from `ferry status`).
    id: String,
    #[command(flatten)]
    wait: WaitArgs,
}

#[derive(Debug, Args)]
pub struct RejectArgs {
    /// The promotion id (from `ferry status`).
    id: String,
    /// Why, recorded with the rejection and shown by `ferry history`.
    #[arg(long)]
    reason: Option<String>,
}

#[derive(Debug, Args)]
pub struct RollbackArgs {
    /// The pipeline (its `name` in the configuration).
    pipeline: String,
    /// The stage to roll back.
    stage: String,
    /// Roll back to this digest (it must have run in the stage) instead of the previous one.
    #[arg(long, value_name = "DIGEST")]
    to: Option<String>,
}

#[derive(Debug, Args)]
pub struct HistoryArgs {
    /// The pipeline (its `name` in the configuration).
    pipeline: String,
    /// Only promotions into this stage.
    stage: Option<String>,
    /// At most this many promotions, newest first.
    #[arg(long, default_value_t = 20)]
    limit: usize,
    /// Print JSON.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Subcommand)]
pub enum DlqCommand {
    /// Jobs that failed too often, with their last error.
    List {
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Put a dead-lettered job back in the queue.
    Redrive {
        /// The dead-lettered job's id (from `ferry dlq list`).
        id: String,
        #[command(flatten)]
        wait: WaitArgs,
    },
}

enum Backend {
    Http { client: reqwest::Client, base: String, token: String, user: Option<String> },
    Local { ops: Operations, user: Option<String> },
}

impl Backend {
    async fn connect(c: &Connection) -> anyhow::Result<Self> {
        let user = c.user.clone().or_else(|| std::env::var("USER").ok()).filter(|u| !u.is_empty());
        if let Some(server) = &c.server {
            let token =
                c.token.clone().context("--server needs the operator token: --token or FERRY_OPERATOR_TOKEN")?;
            return Ok(Backend::Http {
                client: reqwest::Client::new(),
                base: server.trim_end_matches('/').to_string(),
                token,
                user,
            });
        }
        let Some(path) = &c.config else {
            bail!("say where Ferry runs: --server URL (a running ferry serve) or --config FILE (its stores)");
        };
        let mut config = Config::load(path)?;
        // Operator commands work on what `ferry serve` keeps; they never create an empty store.
        if matches!(config.queue, ferry_core::config::QueueBackend::Sqlite {}) {
            let data_dir = &config.server.data_dir;
            anyhow::ensure!(
                data_dir.join("queue.db").exists() && data_dir.join("ledger.db").exists(),
                "no Ferry data in {} (data_dir of {}): start `ferry serve --config {}` first, or check the \
                 configuration file",
                data_dir.display(),
                path.display(),
                path.display()
            );
        }
        config.read_secrets().await?;
        let config = Arc::new(config);
        let stores = super::serve::open_stores(&config).await?;
        let worker = Worker::new(config, stores.queue, stores.ledger).map_err(anyhow::Error::msg)?;
        Ok(Backend::Local { ops: Operations::new(Arc::new(worker)), user })
    }

    fn user(&self) -> anyhow::Result<String> {
        let user = match self {
            Backend::Http { user, .. } | Backend::Local { user, .. } => user.clone(),
        };
        user.context("say who you are: --user NAME or FERRY_USER")
    }

    async fn http(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> anyhow::Result<Value> {
        let Backend::Http { client, base, token, user } = self else { unreachable!("HTTP backend only") };
        let mut request = client.request(method, format!("{base}{path}")).bearer_auth(token);
        if let Some(user) = user {
            // Names are UTF-8: sent as raw header bytes (obs-text), which the API decodes as UTF-8.
            let value = reqwest::header::HeaderValue::from_bytes(user.as_bytes())
                .with_context(|| format!("--user {user:?} cannot be sent in an HTTP header"))?;
            request = request.header(ferry_core::api::USER_HEADER, value);
        }
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().await.with_context(|| format!("cannot reach {base}"))?;
        let status = response.status();
        let value: Value = response.json().await.unwrap_or(Value::Null);
        if !status.is_success() {
            let message = escape_control(value.get("error").and_then(Value::as_str).unwrap_or("no error message"));
            bail!("{base}: {status}: {message}");
        }
        Ok(value)
    }
}

fn to_value<T: serde::Serialize>(result: Result<T, ferry_core::ops::OpsError>) -> anyhow::Result<Value> {
    Ok(serde_json::to_value(result.map_err(|e| anyhow::anyhow!("{e}"))?)?)
}

pub async fn status(c: &Connection, args: StatusArgs) -> anyhow::Result<()> {
    let backend = Backend::connect(c).await?;
    let value = match &backend {
        Backend::Http { .. } => {
            let query = args.pipeline.as_deref().map(|p| format!("?pipeline={p}")).unwrap_or_default();
            backend.http(reqwest::Method::GET, &format!("/api/status{query}"), None).await?
        }
        Backend::Local { ops, .. } => to_value(ops.status(args.pipeline.as_deref()).await)?,
    };
    if args.json {
        println!("{}", serde_json::to_string_pretty(&value)?);
        return Ok(());
    }
    for pipeline in value.as_array().into_iter().flatten() {
        println!("{}  (from {})", s(&pipeline["name"]), s(&pipeline["source"]));
        for stage in pipeline["stages"].as_array().into_iter().flatten() {
            let current = &stage["current"];
            let running = if current.is_null() {
                "—".to_string()
            } else {
                let mut line = short_digest(&s(&current["digest"]));
                if let Some(tag) = opt(&current["tag"]) {
                    line.push_str(&format!("  {tag}"));
                }
                if let Some(build) = opt(&current["build_number"]) {
                    line.push_str(&format!("  build {build}"));
                }
                line.push_str(&format!("  since {}", format_ms(current["since_ms"].as_i64().unwrap_or(0))));
                line
            };
            println!("  {:<10} {:<9} {running}", s(&stage["name"]), s(&stage["gate"]));
            for pending in stage["pending"].as_array().into_iter().flatten() {
                // `waiting` is computed by the server as of now; older servers send only the gates.
                let why = opt(&pending["waiting"])
                    .or_else(|| pending["gates"].as_array().and_then(|g| g.last()).map(|g| s(&g["detail"])))
                    .unwrap_or_default();
                println!("    waiting: {} {}  {why}", s(&pending["id"]), short_digest(&s(&pending["digest"])));
            }
            let failed = &stage["deploy_failed"];
            if !failed.is_null() {
                println!(
                    "    deploy_failed: {} {}  {}",
                    s(&failed["id"]),
                    short_digest(&s(&failed["digest"])),
                    s(&failed["error"])
                );
            }
        }
    }
    Ok(())
}

pub async fn promote(c: &Connection, args: PromoteArgs) -> anyhow::Result<()> {
    let backend = Backend::connect(c).await?;
    let user = backend.user()?;
    let job = match &backend {
        Backend::Http { .. } => {
            let body = json!({ "pipeline": args.pipeline, "reference": args.reference, "to": args.to });
            s(&backend.http(reqwest::Method::POST, "/api/promote", Some(body)).await?["job"]).into_owned()
        }
        Backend::Local { ops, .. } => ops
            .promote(&args.pipeline, &args.reference, &args.to, Some(&user))
            .await
            .map_err(|e| anyhow::anyhow!("{e}"))?,
    };
    println!("queued job {job}: {} {} → {}", args.pipeline, args.reference, args.to);
    if args.wait.waits() {
        wait_for(&backend, &job, &args.wait).await?;
    }
    Ok(())
}

/// What became of job `id`: `{state, promotion?, detail?, error?}`.
async fn job_state(backend: &Backend, id: &str) -> anyhow::Result<Value> {
    match backend {
        Backend::Http { .. } => backend.http(reqwest::Method::GET, &format!("/api/jobs/{id}"), None).await,
        Backend::Local { ops, .. } => to_value(ops.job(id).await),
    }
}

/// Polls job `id` until it settles or the timeout passes, prints the outcome, and fails with the
/// outcome's exit code when it was refused, failed or is still running.
async fn wait_for(backend: &Backend, id: &str, wait: &WaitArgs) -> anyhow::Result<()> {
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(wait.timeout);
    let last = loop {
        let job = job_state(backend, id).await?;
        let settled = !matches!(job["state"].as_str(), Some("queued" | "running") | None);
        if settled || tokio::time::Instant::now() >= deadline {
            break job;
        }
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    };
    let promotion = opt(&last["promotion"]).map(|p| format!(" ({p})")).unwrap_or_default();
    let detail = opt(&last["detail"]).or_else(|| opt(&last["error"])).unwrap_or_default();
    let error = opt(&last["error"]).unwrap_or_default();
    let state = s(&last["state"]);
    let (code, message) = match state.as_ref() {
        "promoted" => {
            let record = promotion_record(backend, &last).await;
            let target = record.as_ref().map(|r| format!("{}@{}", s(&r["target"]), s(&r["digest"])));
            println!("promoted{promotion}: {}", target.unwrap_or_else(|| detail.to_string()));
            return Ok(());
        }
        "parked" => {
            println!("parked{promotion}: {detail}");
            return Ok(());
        }
        "refused" => (EXIT_REFUSED, format!("refused{promotion}: {detail}")),
        "failed" => (
            EXIT_FAILED,
            format!(
                "failed{promotion}: {error} (dead-lettered: see `ferry dlq list`; `ferry dlq redrive {id}` retries)"
            ),
        ),
        _ => {
            let note = if error.is_empty() { String::new() } else { format!("; last attempt: {error}") };
            (
                EXIT_STILL_RUNNING,
                format!(
                    "still {state} after {} s: job {id} goes on without you (GET /api/jobs/{id} follows it){note}",
                    wait.timeout
                ),
            )
        }
    };
    Err(Exit { code, message }.into())
}

/// The promotion record a job names, for the digest and target of a promoted job.
async fn promotion_record(backend: &Backend, job: &Value) -> Option<Value> {
    let id = job["promotion"].as_str()?;
    match backend {
        Backend::Http { .. } => backend.http(reqwest::Method::GET, &format!("/api/promotions/{id}"), None).await.ok(),
        Backend::Local { ops, .. } => to_value(ops.promotion(id).await).ok(),
    }
}

pub async fn approve(c: &Connection, args: ApproveArgs) -> anyhow::Result<()> {
    let backend = Backend::connect(c).await?;
    let user = backend.user()?;
    let value = match &backend {
        Backend::Http { .. } => {
            backend.http(reqwest::Method::POST, &format!("/api/promotions/{}/approve", args.id), None).await?
        }
        Backend::Local { ops, .. } => {
            to_value(ops.approve(&args.id, &user, ferry_core::person::VIA_LOCAL_DATABASE).await)?
        }
    };
    let (have, need) = (value["approvals"].as_u64().unwrap_or(0), value["required"].as_u64().unwrap_or(0));
    if value["released"].as_bool() == Some(true) {
        println!("approved {} ({have} of {need}): promotion continues", args.id);
        if let (Some(job), true) = (value["job"].as_str(), args.wait.waits()) {
            wait_for(&backend, job, &args.wait).await?;
        }
    } else {
        println!("approved {} ({have} of {need}): still waiting", args.id);
    }
    Ok(())
}

pub async fn reject(c: &Connection, args: RejectArgs) -> anyhow::Result<()> {
    let backend = Backend::connect(c).await?;
    let user = backend.user()?;
    match &backend {
        Backend::Http { .. } => {
            let body = json!({ "reason": args.reason });
            backend.http(reqwest::Method::POST, &format!("/api/promotions/{}/reject", args.id), Some(body)).await?;
        }
        Backend::Local { ops, .. } => {
            to_value(ops.reject(&args.id, &user, args.reason.as_deref()).await)?;
        }
    }
    println!("rejected {}", args.id);
    Ok(())
}

pub async fn rollback(c: &Connection, args: RollbackArgs) -> anyhow::Result<()> {
    let backend = Backend::connect(c).await?;
    let user = backend.user()?;
    let value = match &backend {
        Backend::Http { .. } => {
            let body = json!({ "pipeline": args.pipeline, "stage": args.stage, "to": args.to });
            backend.http(reqwest::Method::POST, "/api/rollback", Some(body)).await?
        }
        Backend::Local { ops, .. } => {
            to_value(ops.rollback(&args.pipeline, &args.stage, args.to.as_deref(), Some(&user)).await)?
        }
    };
    println!("rolled back {}/{} to {} ({})", args.pipeline, args.stage, s(&value["digest"]), s(&value["id"]));
    Ok(())
}

pub async fn history(c: &Connection, args: HistoryArgs) -> anyhow::Result<()> {
    let backend = Backend::connect(c).await?;
    let value = match &backend {
        Backend::Http { .. } => {
            let mut path = format!("/api/history/{}?limit={}", args.pipeline, args.limit);
            if let Some(stage) = &args.stage {
                path.push_str(&format!("&stage={stage}"));
            }
            backend.http(reqwest::Method::GET, &path, None).await?
        }
        Backend::Local { ops, .. } => to_value(ops.history(&args.pipeline, args.stage.as_deref(), args.limit).await)?,
    };
    if args.json {
        println!("{}", serde_json::to_string_pretty(&value)?);
        return Ok(());
    }
    for record in value.as_array().into_iter().flatten() {
        println!("{}", history_line(record));
    }
    Ok(())
}

/// One promotion record as `ferry history` prints it, every text field escaped.
fn history_line(record: &Value) -> String {
    let who = opt(&record["triggered_by"]).map(|b| format!(" by {b}")).unwrap_or_default();
    let error = opt(&record["error"]).map(|e| format!("  ({e})")).unwrap_or_default();
    format!(
        "{}  {:<8} {:<18} {}  {}  {}{who}{error}",
        format_ms(record["created_at_ms"].as_i64().unwrap_or(0)),
        s(&record["stage"]),
        s(&record["state"]),
        short_digest(&s(&record["digest"])),
        opt(&record["tag"]).unwrap_or(Cow::Borrowed("-")),
        s(&record["trigger"]),
    )
}

pub async fn dlq(c: &Connection, command: DlqCommand) -> anyhow::Result<()> {
    let backend = Backend::connect(c).await?;
    match command {
        DlqCommand::List { json } => {
            let value = match &backend {
                Backend::Http { .. } => backend.http(reqwest::Method::GET, "/api/dlq", None).await?,
                Backend::Local { ops, .. } => to_value(ops.dead_letters().await)?,
            };
            if json {
                println!("{}", serde_json::to_string_pretty(&value)?);
                return Ok(());
            }
            let letters = value.as_array().cloned().unwrap_or_default();
            if letters.is_empty() {
                println!("no dead letters");
            }
            for letter in letters {
                let payload = &letter["payload"];
                println!(
                    "{}  {} {}  after {} attempts: {}",
                    s(&letter["id"]),
                    s(&payload["pipeline"]),
                    s(&payload["stage"]),
                    letter["receive_count"],
                    s(&letter["last_error"])
                );
            }
        }
        DlqCommand::Redrive { id, wait } => {
            match &backend {
                Backend::Http { .. } => {
                    backend.http(reqwest::Method::POST, &format!("/api/dlq/{id}/redrive"), None).await?;
                }
                Backend::Local { ops, .. } => ops.redrive(&id).await.map_err(|e| anyhow::anyhow!("{e}"))?,
            }
            println!("redriven {id}: back in the queue");
            if wait.waits() {
                wait_for(&backend, &id, &wait).await?;
            }
        }
    }
    Ok(())
}

/// A text field of an answer, as it may be shown on a terminal: the server's answers carry
/// webhook payloads and operator input, so control characters are escaped.
fn s(value: &Value) -> Cow<'_, str> {
    escape_control(value.as_str().unwrap_or(""))
}

/// Like [`s`], `None` when the field is absent or not text.
fn opt(value: &Value) -> Option<Cow<'_, str>> {
    value.as_str().map(escape_control)
}

fn short_digest(digest: &str) -> String {
    match digest.strip_prefix("sha256:") {
        Some(hex) if hex.len() > 12 => format!("sha256:{}…", &hex[..12]),
        _ => digest.to_string(),
    }
}

/// Unix milliseconds as `YYYY-MM-DD HH:MM:SSZ` (UTC).
fn format_ms(ms: i64) -> String {
    let secs = ms.div_euclid(1000);
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!("{year:04}-{month:02}-{day:02} {:02}:{:02}:{:02}Z", rem / 3600, rem % 3600 / 60, rem % 60)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_print_in_utc() {
        assert_eq!(format_ms(0), "1970-01-01 00:00:00Z");
        assert_eq!(format_ms(1_795_309_991_557), "2026-11-22 01:13:11Z");
        assert_eq!(format_ms(951_782_400_000), "2000-02-29 00:00:00Z");
    }

    #[test]
    fn digests_are_shortened_for_tables() {
        assert_eq!(short_digest("sha256:0123456789abcdef0123"), "sha256:0123456789ab…");
        assert_eq!(short_digest("x"), "x");
    }

    #[test]
    fn history_lines_escape_what_could_drive_the_terminal() {
        let record = json!({
            "created_at_ms": 0, "stage": "prod", "state": "rejected", "trigger": "webhook",
            "digest": "sha256:05b3abf2579a5eb66403cd78be557fd860633a1fe2103c7642030defe32c657f",
            "triggered_by": "mallory\u{1b}]0;owned\u{7}",
            "error": "rejected by alice: bad\u{1b}[2J\u{1b}[H\rfake line\nsecond",
        });
        let line = history_line(&record);
        assert!(!line.chars().any(char::is_control), "{line:?}");
        assert!(line.contains("bad\\u{1b}[2J\\u{1b}[H\\rfake line\\nsecond"), "{line}");
        assert!(line.contains("by mallory\\u{1b}]0;owned\\u{7}"), "{line}");
        // Plain text is shown as it is.
        assert!(line.contains("prod") && line.contains("sha256:05b3abf2579a…"), "{line}");
    }
}

//! Operator commands: `ferry status | promote | approve | reject | rollback | history | dlq`.
//! They talk to a running `ferry serve` over HTTP (`--server`), or open the stores that the
//! configuration names directly (`--config`: SQLite files, or SQS and DynamoDB).

use std::borrow::Cow;
use std::io::IsTerminal;
use std::path::PathBuf;
use std::sync::Arc;

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
    #[arg(long, env = "FERRY_SERVER", global = true, value_name = "URL", value_parser = server_url)]
    server: Option<String>,

    /// Your token for the server: a personal token ([[identity.users]]), a JWT from an [[identity.oidc]]
    /// issuer, or the shared operator token (break-glass).
    #[arg(long, env = "FERRY_OPERATOR_TOKEN", hide_env_values = true, global = true, value_name = "TOKEN")]
    token: Option<String>,

    /// Without --server: work on this configuration's stores directly (SQLite files, or SQS and DynamoDB).
    #[arg(long, short, env = "FERRY_CONFIG", global = true, value_name = "FILE")]
    config: Option<PathBuf>,

    /// Who you are, recorded with approvals, promotions and rollbacks [default: $USER]. Needed
    /// with the shared operator token or --config; with a personal or OIDC token the server knows
    /// who you are and ignores it.
    #[arg(long, env = "FERRY_USER", global = true, value_name = "NAME")]
    user: Option<String>,
}

/// `--server`: an http(s) URL. A bare `host:port` is the usual slip; say how to write it.
fn server_url(text: &str) -> Result<String, String> {
    if !text.contains("://") {
        return Err(format!("`{text}` has no scheme: write http://{text} (or https://{text})"));
    }
    let url = reqwest::Url::parse(text).map_err(|e| format!("`{text}` is not a URL ({e})"))?;
    if !matches!(url.scheme(), "http" | "https") || url.host_str().is_none() {
        return Err(format!("`{text}` is not an http:// or https:// URL of a host"));
    }
    Ok(text.trim_end_matches('/').to_string())
}

/// A digest argument: `sha256:` and 64 lowercase hex digits (or `sha512:` and 128).
fn digest_arg(text: &str) -> Result<String, String> {
    text.parse::<ferry_core::registry::Digest>()
        .map(|_| text.to_string())
        .map_err(|_| "not a digest: write sha256: and 64 lowercase hex digits".to_string())
}

/// A tag or a digest. Anything with a `:` (tags cannot have one) must be a digest.
fn reference_arg(text: &str) -> Result<String, String> {
    if text.contains(':') {
        return digest_arg(text);
    }
    text.parse::<ferry_core::registry::Tag>()
        .map(|_| text.to_string())
        .map_err(|e| format!("neither a tag nor a digest (sha256:…): {e}"))
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

/// Exit codes (see README "Exit codes").
pub const EXIT_FAILED: u8 = 1;
pub const EXIT_USAGE: u8 = 2;
pub const EXIT_REFUSED: u8 = 3;
pub const EXIT_STILL_RUNNING: u8 = 4;

/// What a command reports when it fails: the message, a stable class for `--json`, the exit
/// code, and what else a script may want (the job it waited for, a check's findings).
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct Failure {
    pub class: &'static str,
    pub message: String,
    pub code: u8,
    /// A field added to the `--json` error object: `("job", …)`, `("findings", …)`.
    pub extra: Option<(&'static str, Value)>,
}

impl Failure {
    pub fn new(class: &'static str, code: u8, message: impl Into<String>) -> Self {
        Failure { class, message: message.into(), code, extra: None }
    }

    pub fn with(mut self, key: &'static str, value: Value) -> Self {
        self.extra = Some((key, value));
        self
    }

    fn usage(message: impl Into<String>) -> Self {
        Self::new("usage", EXIT_USAGE, message)
    }
}

/// How a class reads in a sentence.
fn class_words(class: &str) -> String {
    class.replace('_', " ")
}

/// An operation refused on the stores directly (`--config`): as the API would say it.
fn ops_failure(e: ferry_core::ops::OpsError) -> Failure {
    Failure::new(e.class(), EXIT_FAILED, format!("{e} ({})", class_words(e.class())))
}

#[derive(Debug, Args)]
pub struct PromoteArgs {
    /// The pipeline (its `name` in the configuration).
    pipeline: String,
    /// A tag or digest, as found in the stage's source (the previous stage's target).
    #[arg(value_parser = reference_arg)]
    reference: String,
    /// The stage to promote into.
    #[arg(long)]
    to: String,
    #[command(flatten)]
    wait: WaitArgs,
    /// Print JSON: {job, outcome} (outcome as GET /api/jobs/{id}).
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Args)]
pub struct ApproveArgs {
    /// The promotion id (from `ferry status`).
    id: String,
    #[command(flatten)]
    wait: WaitArgs,
    /// Print JSON: the approval, and the outcome when it released the promotion.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Args)]
pub struct RejectArgs {
    /// The promotion id (from `ferry status`).
    id: String,
    /// Why, recorded with the rejection and shown by `ferry history`.
    #[arg(long)]
    reason: Option<String>,
    /// Print JSON: the rejected promotion's record.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Args)]
pub struct RollbackArgs {
    /// The pipeline (its `name` in the configuration).
    pipeline: String,
    /// The stage to roll back.
    stage: String,
    /// Roll back to this digest (it must have run in the stage) instead of the previous one.
    #[arg(long, value_name = "DIGEST", value_parser = digest_arg)]
    to: Option<String>,
    /// Print JSON: the rollback's record.
    #[arg(long)]
    json: bool,
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

#[derive(Debug, Args)]
pub struct ShowArgs {
    /// A promotion id (`p-…`, a rollback's `r-…`) or a job id (as `ferry promote` or a
    /// webhook's answer gave it).
    id: String,
    /// Print JSON: {promotion, approvals, job}.
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
        /// Print JSON: {job, status, outcome}.
        #[arg(long)]
        json: bool,
    },
}

impl DlqCommand {
    pub fn json(&self) -> bool {
        match self {
            DlqCommand::List { json } | DlqCommand::Redrive { json, .. } => *json,
        }
    }
}

/// Whether a command's result is printed as JSON (its errors too).
pub trait Json {
    fn json(&self) -> bool;
}

macro_rules! json_flag {
    ($($t:ty),*) => { $(impl Json for $t { fn json(&self) -> bool { self.json } })* };
}
json_flag!(StatusArgs, PromoteArgs, ApproveArgs, RejectArgs, RollbackArgs, HistoryArgs, ShowArgs);

/// Prints a result as pretty JSON on stdout.
fn print_json(value: &impl serde::Serialize) -> anyhow::Result<()> {
    println!("{}", serde_json::to_string_pretty(value)?);
    Ok(())
}

enum Backend {
    Http { client: reqwest::Client, base: String, token: String, user: Option<String> },
    Local { ops: Operations, user: Option<String> },
}

impl Backend {
    async fn connect(c: &Connection) -> anyhow::Result<Self> {
        let user = c.user.clone().or_else(|| std::env::var("USER").ok()).filter(|u| !u.is_empty());
        if let Some(server) = &c.server {
            let token = c
                .token
                .clone()
                .ok_or_else(|| Failure::usage("--server needs the operator token: --token or FERRY_OPERATOR_TOKEN"))?;
            // No overall timeout: a rollback waits for its deployment. Connecting is quick or fails.
            let client = reqwest::Client::builder().connect_timeout(std::time::Duration::from_secs(10)).build()?;
            return Ok(Backend::Http { client, base: server.clone(), token, user });
        }
        let Some(path) = &c.config else {
            return Err(Failure::usage(
                "say where Ferry runs: --server URL (a running ferry serve) or --config FILE (its stores)",
            )
            .into());
        };
        let mut config = Config::load(path).map_err(|e| Failure::new("config", EXIT_FAILED, format!("{e:#}")))?;
        // Operator commands work on what `ferry serve` keeps; they never create an empty store.
        if matches!(config.queue, ferry_core::config::QueueBackend::Sqlite {}) {
            let data_dir = &config.server.data_dir;
            if !(data_dir.join("queue.db").exists() && data_dir.join("ledger.db").exists()) {
                let message = format!(
                    "no Ferry data in {} (data_dir of {}): start `ferry serve --config {}` first, or check the \
                     configuration file",
                    data_dir.display(),
                    path.display(),
                    path.display()
                );
                return Err(Failure::new("config", EXIT_FAILED, message).into());
            }
        }
        config.read_secrets().await?;
        let config = Arc::new(config);
        let stores = super::serve::open_stores(&config).await?;
        let worker = Worker::new(config, stores.queue, stores.ledger)?;
        Ok(Backend::Local { ops: Operations::new(Arc::new(worker)), user })
    }

    fn user(&self) -> anyhow::Result<String> {
        let user = match self {
            Backend::Http { user, .. } | Backend::Local { user, .. } => user.clone(),
        };
        Ok(user.ok_or_else(|| Failure::usage("say who you are: --user NAME or FERRY_USER"))?)
    }

    async fn http(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> anyhow::Result<Value> {
        let Backend::Http { client, base, token, user } = self else { unreachable!("HTTP backend only") };
        let mut request = client.request(method.clone(), format!("{base}{path}")).bearer_auth(token);
        if let Some(user) = user {
            // Names are UTF-8: sent as raw header bytes (obs-text), which the API decodes as UTF-8.
            let value = reqwest::header::HeaderValue::from_bytes(user.as_bytes())
                .map_err(|_| Failure::usage(format!("--user {user:?} cannot be sent in an HTTP header")))?;
            request = request.header(ferry_core::api::USER_HEADER, value);
        }
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().await.map_err(|e| unreachable_server(base, &e))?;
        let status = response.status();
        let content_type = response
            .headers()
            .get(reqwest::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("no content type")
            .to_string();
        let bytes = response.bytes().await.map_err(|e| unreachable_server(base, &e))?;
        let value: Option<Value> = serde_json::from_slice(&bytes).ok();
        let error = value.as_ref().and_then(|v| v["error"].as_str()).map(escape_control);
        let class = value.as_ref().and_then(|v| v["class"].as_str());
        let not_ferry = || {
            Failure::new(
                "not_ferry",
                EXIT_FAILED,
                format!(
                    "{base} does not look like ferry serve ({method} {path} answered {status} with {}): check \
                     --server, e.g. http://127.0.0.1:8080",
                    escape_control(&content_type)
                ),
            )
        };
        match (status.as_u16(), error) {
            (200..=299, _) => value.ok_or_else(|| not_ferry().into()),
            (401, Some(message)) => Err(Failure::new(
                "unauthorized",
                EXIT_FAILED,
                format!(
                    "{base} refused the operator token (401): {message}: pass the token that ferry serve reads from \
                     server.operator_token_env, or your OIDC or personal token ([identity]), with --token or \
                     FERRY_OPERATOR_TOKEN"
                ),
            )
            .into()),
            (_, Some(message)) if class == Some(ferry_core::api::API_OFF) => {
                Err(Failure::new("api_off", EXIT_FAILED, format!("{base}: {message}")).into())
            }
            (code, Some(message)) => {
                let class = http_class(code);
                Err(Failure::new(
                    class,
                    EXIT_FAILED,
                    format!("{message} ({}: {status} from {base})", class_words(class)),
                )
                .into())
            }
            // No answer of Ferry's: a Ferry older than its `api_off` answer, or something else.
            (_, None) if self.is_ferry().await => Err(Failure::new(
                "api_off",
                EXIT_FAILED,
                format!(
                    "{base} is a ferry serve without its operations API ({method} {path} answered {status}): set \
                     server.operator_token_env in its configuration and restart it, or use the address of its \
                     server.api_listen"
                ),
            )
            .into()),
            (_, None) => Err(not_ferry().into()),
        }
    }

    /// Whether the server answers `GET /healthz` as ferry serve does (`{"status": …}`).
    async fn is_ferry(&self) -> bool {
        let Backend::Http { client, base, .. } = self else { return false };
        let Ok(response) = client.get(format!("{base}/healthz")).send().await else { return false };
        let Ok(value) = response.json::<Value>().await else { return false };
        matches!(value["status"].as_str(), Some("ok" | "unavailable"))
    }
}

/// The class of an API error answer without one.
fn http_class(status: u16) -> &'static str {
    match status {
        400 => "invalid",
        401 => "unauthorized",
        403 => "forbidden",
        404 => "not_found",
        409 => "conflict",
        502 => "upstream",
        503 => "unavailable",
        _ => "failed",
    }
}

/// The server could not be reached: one sentence that says what to check.
fn unreachable_server(base: &str, e: &reqwest::Error) -> Failure {
    let message = if e.is_timeout() {
        format!("{base} did not answer in time: is `ferry serve` running at {base}?")
    } else if e.is_connect() {
        format!("cannot connect to {base}: is `ferry serve` running at {base}?")
    } else {
        format!("the connection to {base} failed before Ferry answered: is `ferry serve` running at {base}?")
    };
    Failure::new("unreachable", EXIT_FAILED, message)
}

fn to_value<T: serde::Serialize>(result: Result<T, ferry_core::ops::OpsError>) -> anyhow::Result<Value> {
    Ok(serde_json::to_value(result.map_err(ops_failure)?)?)
}

pub async fn status(c: &Connection, args: StatusArgs) -> anyhow::Result<()> {
    let backend = Backend::connect(c).await?;
    let value = match &backend {
        Backend::Http { .. } => {
            let query = args.pipeline.as_deref().map(|p| format!("?pipeline={}", query_value(p))).unwrap_or_default();
            backend.http(reqwest::Method::GET, &format!("/api/status{query}"), None).await?
        }
        Backend::Local { ops, .. } => to_value(ops.status(args.pipeline.as_deref()).await)?,
    };
    if args.json {
        return print_json(&value);
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

/// A value for a URL query or path segment: percent-encoded.
fn query_value(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for byte in text.bytes() {
        if byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'_' | b'.' | b'~') {
            out.push(char::from(byte));
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

pub async fn promote(c: &Connection, args: PromoteArgs) -> anyhow::Result<()> {
    let backend = Backend::connect(c).await?;
    let job = match &backend {
        Backend::Http { .. } => {
            let body = json!({ "pipeline": args.pipeline, "reference": args.reference, "to": args.to });
            s(&backend.http(reqwest::Method::POST, "/api/promote", Some(body)).await?["job"]).into_owned()
        }
        Backend::Local { ops, .. } => ops
            .promote(
                &args.pipeline,
                &args.reference,
                &args.to,
                Some(&backend.user()?),
                ferry_core::person::VIA_LOCAL_DATABASE,
            )
            .await
            .map_err(ops_failure)?,
    };
    if !args.json {
        println!("queued job {job}: {} {} → {}", args.pipeline, args.reference, args.to);
    }
    if args.wait.waits() {
        let outcome = wait_for(&backend, &job, &args.wait, args.json).await?;
        if args.json {
            print_json(&json!({ "job": job, "outcome": outcome }))?;
        }
    } else if args.json {
        let outcome = job_state(&backend, &job).await?;
        print_json(&json!({ "job": job, "outcome": outcome }))?;
    }
    Ok(())
}

/// What became of job `id`: `{state, promotion?, detail?, error?}`.
async fn job_state(backend: &Backend, id: &str) -> anyhow::Result<Value> {
    match backend {
        Backend::Http { .. } => {
            backend.http(reqwest::Method::GET, &format!("/api/jobs/{}", query_value(id)), None).await
        }
        Backend::Local { ops, .. } => to_value(ops.job(id).await),
    }
}

/// Polls job `id` until it settles or the timeout passes, prints the outcome (unless `json`),
/// and returns the job's last state; fails with the outcome's exit code when it was refused,
/// failed or is still running.
async fn wait_for(backend: &Backend, id: &str, wait: &WaitArgs, json: bool) -> anyhow::Result<Value> {
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
    let (class, code, message) = match state.as_ref() {
        "promoted" => {
            if !json {
                let record = promotion_record(backend, &last).await;
                let target = record.as_ref().map(|r| format!("{}@{}", s(&r["target"]), s(&r["digest"])));
                println!("promoted{promotion}: {}", target.unwrap_or_else(|| detail.to_string()));
            }
            return Ok(last);
        }
        "parked" => {
            if !json {
                println!("parked{promotion}: {detail}");
            }
            return Ok(last);
        }
        "refused" => ("refused", EXIT_REFUSED, format!("refused{promotion}: {detail}")),
        "failed" => (
            "failed",
            EXIT_FAILED,
            format!(
                "failed{promotion}: {error} (dead-lettered: see `ferry dlq list`; `ferry dlq redrive {id}` retries)"
            ),
        ),
        _ => {
            let note = if error.is_empty() { String::new() } else { format!("; last attempt: {error}") };
            // A job no worker has picked up yet is known to the queue only.
            let follow = if state == "running" { format!("`ferry show {id}`") } else { format!("GET /api/jobs/{id}") };
            (
                "still_running",
                EXIT_STILL_RUNNING,
                format!(
                    "still {state} after {} s: job {id} goes on without you ({follow} follows it){note}",
                    wait.timeout
                ),
            )
        }
    };
    Err(Failure::new(class, code, message).with("job", last).into())
}

/// The promotion record a job names, for the digest and target of a promoted job.
async fn promotion_record(backend: &Backend, job: &Value) -> Option<Value> {
    let id = job["promotion"].as_str()?;
    match backend {
        Backend::Http { .. } => {
            backend.http(reqwest::Method::GET, &format!("/api/promotions/{}", query_value(id)), None).await.ok()
        }
        Backend::Local { ops, .. } => to_value(ops.promotion(id).await).ok(),
    }
}

pub async fn approve(c: &Connection, args: ApproveArgs) -> anyhow::Result<()> {
    let backend = Backend::connect(c).await?;
    let mut value = match &backend {
        Backend::Http { .. } => {
            let path = format!("/api/promotions/{}/approve", query_value(&args.id));
            backend.http(reqwest::Method::POST, &path, None).await?
        }
        Backend::Local { ops, .. } => {
            to_value(ops.approve(&args.id, &backend.user()?, ferry_core::person::VIA_LOCAL_DATABASE).await)?
        }
    };
    let (have, need) = (value["approvals"].as_u64().unwrap_or(0), value["required"].as_u64().unwrap_or(0));
    let released = value["released"].as_bool() == Some(true);
    if !args.json {
        if value["already_counted"].as_bool() == Some(true) {
            let then = if have >= need { "released already" } else { "still waiting" };
            println!(
                "already counted: {} approved {} before; nothing changed ({have} of {need}): {then}",
                backend.user().map_or_else(|_| "you".into(), |u| escape_control(&u).into_owned()),
                args.id
            );
        } else if released {
            println!("approved {} ({have} of {need}): promotion continues", args.id);
        } else {
            println!("approved {} ({have} of {need}): still waiting", args.id);
        }
    }
    if let (Some(job), true, true) = (value["job"].as_str().map(str::to_string), released, args.wait.waits()) {
        value["outcome"] = wait_for(&backend, &job, &args.wait, args.json).await?;
    }
    if args.json {
        print_json(&value)?;
    }
    Ok(())
}

pub async fn reject(c: &Connection, args: RejectArgs) -> anyhow::Result<()> {
    let backend = Backend::connect(c).await?;
    let record = match &backend {
        Backend::Http { .. } => {
            let body = json!({ "reason": args.reason });
            let path = format!("/api/promotions/{}/reject", query_value(&args.id));
            backend.http(reqwest::Method::POST, &path, Some(body)).await?
        }
        Backend::Local { ops, .. } => to_value(
            ops.reject(&args.id, &backend.user()?, args.reason.as_deref(), ferry_core::person::VIA_LOCAL_DATABASE)
                .await,
        )?,
    };
    if args.json {
        return print_json(&record);
    }
    println!("rejected {}", args.id);
    Ok(())
}

pub async fn rollback(c: &Connection, args: RollbackArgs) -> anyhow::Result<()> {
    let backend = Backend::connect(c).await?;
    let value = match &backend {
        Backend::Http { .. } => {
            let body = json!({ "pipeline": args.pipeline, "stage": args.stage, "to": args.to });
            backend.http(reqwest::Method::POST, "/api/rollback", Some(body)).await?
        }
        Backend::Local { ops, .. } => to_value(
            ops.rollback(
                &args.pipeline,
                &args.stage,
                args.to.as_deref(),
                Some(&backend.user()?),
                ferry_core::person::VIA_LOCAL_DATABASE,
            )
            .await,
        )?,
    };
    if args.json {
        return print_json(&value);
    }
    println!("rolled back {}/{} to {} ({})", args.pipeline, args.stage, s(&value["digest"]), s(&value["id"]));
    Ok(())
}

pub async fn history(c: &Connection, args: HistoryArgs) -> anyhow::Result<()> {
    let backend = Backend::connect(c).await?;
    let value = match &backend {
        Backend::Http { .. } => {
            let mut path = format!("/api/history/{}?limit={}", query_value(&args.pipeline), args.limit);
            if let Some(stage) = &args.stage {
                path.push_str(&format!("&stage={}", query_value(stage)));
            }
            backend.http(reqwest::Method::GET, &path, None).await?
        }
        Backend::Local { ops, .. } => to_value(ops.history(&args.pipeline, args.stage.as_deref(), args.limit).await)?,
    };
    if args.json {
        return print_json(&value);
    }
    let records = value.as_array().cloned().unwrap_or_default();
    if records.is_empty() {
        println!("no promotions yet");
        return Ok(());
    }
    println!("{}", history_header());
    for record in &records {
        println!("{}", history_line(record));
    }
    Ok(())
}

/// The header row of `ferry history`, aligned with [`history_line`].
fn history_header() -> String {
    format!(
        "{:<20}  {:<8} {:<18} {:<20}  {:<10} {}",
        "WHEN", "STAGE", "STATE", "DIGEST", "TAG", "TRIGGER, BY, APPROVERS"
    )
}

/// One promotion record as `ferry history` prints it, every text field escaped.
fn history_line(record: &Value) -> String {
    let who = opt(&record["triggered_by"]).map(|b| format!(" by {b}")).unwrap_or_default();
    let approvers: Vec<_> = record["approvals"].as_array().into_iter().flatten().map(|a| s(&a["by"])).collect();
    let approved = if approvers.is_empty() { String::new() } else { format!("  approved by {}", approvers.join(", ")) };
    let error = opt(&record["error"]).map(|e| format!("  ({e})")).unwrap_or_default();
    format!(
        "{:<20}  {:<8} {:<18} {:<20}  {:<10} {}{who}{approved}{error}",
        format_ms(record["created_at_ms"].as_i64().unwrap_or(0)),
        s(&record["stage"]),
        s(&record["state"]),
        short_digest(&s(&record["digest"])),
        opt(&record["tag"]).unwrap_or(Cow::Borrowed("-")),
        s(&record["trigger"]),
    )
}

pub async fn show(c: &Connection, args: ShowArgs) -> anyhow::Result<()> {
    let backend = Backend::connect(c).await?;
    let value = match &backend {
        Backend::Http { .. } => {
            backend.http(reqwest::Method::GET, &format!("/api/show/{}", query_value(&args.id)), None).await?
        }
        Backend::Local { ops, .. } => to_value(ops.show(&args.id).await)?,
    };
    if args.json {
        return print_json(&value);
    }
    print!("{}", shown_text(&value));
    Ok(())
}

/// `ferry show` as text: the promotion, its gate decisions, approvals, and its job.
fn shown_text(value: &Value) -> String {
    let mut out = String::new();
    let mut line = |text: String| {
        out.push_str(&text);
        out.push('\n');
    };
    let p = &value["promotion"];
    if !p.is_null() {
        line(format!("promotion {}  {} → {}", s(&p["id"]), s(&p["pipeline"]), s(&p["stage"])));
        line(format!("  state      {}", s(&p["state"])));
        line(format!("  digest     {}", s(&p["digest"])));
        let mut tag = opt(&p["tag"]).map(|t| t.into_owned()).unwrap_or_else(|| "-".into());
        if let Some(build) = opt(&p["build_number"]) {
            tag.push_str(&format!("  (build {build})"));
        }
        line(format!("  tag        {tag}"));
        line(format!("  from       {}", s(&p["source"])));
        line(format!("  to         {}", s(&p["target"])));
        let by = opt(&p["triggered_by"]).map(|b| format!(" by {b}")).unwrap_or_default();
        line(format!("  trigger    {}{by}", s(&p["trigger"])));
        let finished =
            p["finished_at_ms"].as_i64().map(|ms| format!(", finished {}", format_ms(ms))).unwrap_or_default();
        line(format!(
            "  created    {}, updated {}{finished}",
            format_ms(p["created_at_ms"].as_i64().unwrap_or(0)),
            format_ms(p["updated_at_ms"].as_i64().unwrap_or(0))
        ));
        line(format!("  attempts   {}", p["attempts"].as_u64().unwrap_or(0)));
        if let Some(error) = opt(&p["error"]) {
            line(format!("  error      {error}"));
        }
        let gates = p["gates"].as_array().cloned().unwrap_or_default();
        line(format!("gate decisions ({}):", gates.len()));
        for g in &gates {
            line(format!(
                "  {}  {:<9} {:<8} {}",
                format_ms(g["at_ms"].as_i64().unwrap_or(0)),
                s(&g["gate"]),
                s(&g["decision"]),
                s(&g["detail"])
            ));
        }
        let approvals = value["approvals"].as_array().cloned().unwrap_or_default();
        line(format!("approvals ({}):", approvals.len()));
        for a in &approvals {
            let via = opt(&a["via"]).map(|v| format!("  through {v}")).unwrap_or_default();
            line(format!("  {}  {}{via}", format_ms(a["at_ms"].as_i64().unwrap_or(0)), s(&a["by"])));
        }
    }
    let job = &value["job"];
    if job.is_null() {
        line("job: none recorded".into());
    } else {
        let promotion = if p.is_null() { "  (no promotion)".to_string() } else { String::new() };
        line(format!("job {}: {}{promotion}", s(&job["id"]), s(&job["state"])));
        if let Some(detail) = opt(&job["detail"]) {
            line(format!("  detail     {detail}"));
        }
        if let Some(error) = opt(&job["error"]) {
            line(format!("  error      {error}"));
        }
        line(format!("  updated    {}", format_ms(job["updated_at_ms"].as_i64().unwrap_or(0))));
    }
    out
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
                return print_json(&value);
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
        DlqCommand::Redrive { id, wait, json } => {
            match &backend {
                Backend::Http { .. } => {
                    let path = format!("/api/dlq/{}/redrive", query_value(&id));
                    backend.http(reqwest::Method::POST, &path, None).await?;
                }
                Backend::Local { ops, user } => ops
                    .redrive(&id, user.as_deref(), ferry_core::person::VIA_LOCAL_DATABASE)
                    .await
                    .map_err(ops_failure)?,
            }
            if !json {
                println!("redriven {id}: back in the queue");
            }
            if wait.waits() {
                let outcome = wait_for(&backend, &id, &wait, json).await?;
                if json {
                    print_json(&json!({ "job": id, "status": "redriven", "outcome": outcome }))?;
                }
            } else if json {
                let outcome = job_state(&backend, &id).await?;
                print_json(&json!({ "job": id, "status": "redriven", "outcome": outcome }))?;
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
    fn the_history_header_lines_up_with_its_rows_and_rows_name_approvers() {
        let record = json!({
            "created_at_ms": 1_795_309_991_557_i64, "stage": "prod", "state": "succeeded", "trigger": "manual",
            "digest": "sha256:05b3abf2579a5eb66403cd78be557fd860633a1fe2103c7642030defe32c657f", "tag": "1.4.2",
            "triggered_by": "alice", "approvals": [{"by": "bob", "at_ms": 1}, {"by": "carol", "at_ms": 2}],
        });
        let (header, line) = (history_header(), history_line(&record));
        // Where a column starts, in characters (the digest is shortened with `…`).
        let at = |text: &str, needle: &str| text[..text.find(&format!(" {needle}")).unwrap()].chars().count();
        for (title, value) in [("STAGE", "prod"), ("STATE", "succeeded"), ("DIGEST", "sha256:"), ("TAG", "1.4.2")] {
            assert_eq!(at(&header, title), at(&line, value), "{title}:\n{header}\n{line}");
        }
        assert!(line.ends_with("manual by alice  approved by bob, carol"), "{line}");
    }

    #[test]
    fn show_prints_gates_approvals_with_their_channel_and_the_job() {
        let shown = json!({
            "promotion": {
                "id": "p-1", "pipeline": "shop-api", "stage": "prod", "state": "succeeded", "digest": "sha256:ab",
                "tag": "1.0", "source": "dev/shop", "target": "prod/shop", "trigger": "manual", "triggered_by": "alice",
                "created_at_ms": 0, "updated_at_ms": 0, "attempts": 2, "error": null,
                "gates": [{"gate": "approval", "decision": "wait", "detail": "waiting", "at_ms": 0}],
                "approvals": [{"by": "bob", "at_ms": 0}],
            },
            "approvals": [{"by": "bob", "at_ms": 0, "via": "the shared operator token"}],
            "job": {"id": "j-1", "state": "promoted", "detail": "done", "updated_at_ms": 0},
        });
        let text = shown_text(&shown);
        for expected in [
            "promotion p-1  shop-api → prod",
            "  attempts   2",
            "gate decisions (1):\n  1970-01-01 00:00:00Z  approval  wait     waiting",
            "approvals (1):\n  1970-01-01 00:00:00Z  bob  through the shared operator token",
            "job j-1: promoted\n  detail     done",
        ] {
            assert!(text.contains(expected), "{expected:?} in\n{text}");
        }
        let job_only = shown_text(&json!({"promotion": null, "approvals": [], "job": {"id": "j-2", "state": "refused",
            "error": "shop/api:9.9.9 does not exist", "updated_at_ms": 0}}));
        assert!(job_only.starts_with("job j-2: refused  (no promotion)\n  error      shop/api:9.9.9"), "{job_only}");
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

//! `ferry serve`: the webhook intake, the operations API, the embedded durable queue and the
//! promotion worker in one process.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::Args;
use ferry_core::backend::Stores;
use ferry_core::config::Config;
use ferry_core::http::{Intake, router};
use ferry_core::ops::Operations;
use ferry_core::registry::auth::Secret;
use ferry_core::worker::Worker;

/// Run Ferry: webhooks, operations API, durable queue and promotion worker
///
/// Serves every webhook route (/hooks/acr, /hooks/azure-devops, /hooks/dockerhub/{token},
/// /hooks/github, /hooks/distribution, /hooks/harbor, /hooks/quay/{token}, /hooks/generic),
/// GET /healthz and, with `server.operator_token_env`, the operations API (/api/*); and runs the
/// promotion worker. A webhook is answered 202 only once its jobs are committed to the embedded
/// queue; queue and ledger are SQLite files in `server.data_dir` unless `[queue]`/`[ledger]`
/// name SQS and DynamoDB.
#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Configuration file (TOML); see examples/quickstart/ferry.toml.
    #[arg(long, short, value_name = "FILE", env = "FERRY_CONFIG")]
    config: PathBuf,

    /// Listen here instead of `server.listen`.
    #[arg(long, value_name = "ADDR:PORT")]
    listen: Option<std::net::SocketAddr>,

    /// Take webhooks only; leave the queued jobs to another process's worker (as
    /// `[worker] enabled = false`).
    #[arg(long)]
    no_worker: bool,
}

/// The queue and ledger that the configuration names (`[queue]`, `[ledger]`), opened.
pub async fn open_stores(config: &Config) -> anyhow::Result<Stores> {
    Ok(ferry_core::backend::open(config).await?)
}

pub async fn run(args: ServeArgs) -> anyhow::Result<()> {
    let config = Arc::new(Config::load(&args.config)?);
    let stores = open_stores(&config).await?;
    let intake = Intake::new(&config, stores.queue.clone())
        .map_err(anyhow::Error::msg)?
        .with_shared_replay_guard(stores.seen_signatures.clone());
    let worker =
        Arc::new(Worker::new(config.clone(), stores.queue.clone(), stores.ledger.clone()).map_err(anyhow::Error::msg)?);
    let mut app = router(Arc::new(intake));
    if let Some(var) = &config.server.operator_token_env {
        let token = std::env::var(var)
            .with_context(|| format!("server.operator_token_env: environment variable {var} is not set"))?;
        anyhow::ensure!(token.len() >= 16, "{var}: the operator token must be at least 16 characters");
        app = app.merge(ferry_core::api::router(Arc::new(Operations::new(worker.clone())), Secret::new(token)));
    }

    let listen = args.listen.unwrap_or(config.server.listen);
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .with_context(|| format!("cannot listen on {listen} (in use? choose another with --listen)"))?;
    let local = listener.local_addr()?;
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let run_worker = config.worker.enabled && !args.no_worker;
    let worker_task = run_worker.then(|| tokio::spawn(worker.clone().run(stopped)));
    tracing::info!(%local, data_dir = %config.server.data_dir.display(), worker = run_worker, "ferry serving");
    eprintln!("ferry: listening on http://{local} (data in {})", config.server.data_dir.display());
    axum::serve(listener, app).with_graceful_shutdown(shutdown()).await.context("server failed")?;
    let _ = stop.send(true);
    if let Some(task) = worker_task {
        // Jobs still running after this are redelivered on the next start.
        let _ = tokio::time::timeout(Duration::from_secs(30), task).await;
    }
    eprintln!("ferry: stopped");
    Ok(())
}

async fn shutdown() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).expect("SIGTERM handler");
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}

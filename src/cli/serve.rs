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
use ferry_core::server::{self, Limits};
use ferry_core::worker::Worker;

/// Run Ferry: webhooks, operations API, durable queue and promotion worker
///
/// Serves every webhook route (/hooks/acr, /hooks/azure-devops, /hooks/dockerhub/{token},
/// /hooks/github, /hooks/distribution, /hooks/harbor, /hooks/quay/{token}, /hooks/generic),
/// GET /healthz and, with `server.operator_token_env` or `[identity]`, the operations API (/api/*)
/// and the web console (/); and runs the promotion worker. A webhook is answered 202 only once its jobs are committed to the embedded
/// queue; queue and ledger are SQLite files in `server.data_dir` unless `[queue]`/`[ledger]`
/// name SQS and DynamoDB.
#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Configuration file (TOML); see examples/quickstart/ferry.toml and docs/CONFIGURATION.md.
    /// Required, from this option or FERRY_CONFIG (not marked required so that usage lines do not
    /// ask for what the environment gives).
    #[arg(long, short, value_name = "FILE", env = "FERRY_CONFIG")]
    config: Option<PathBuf>,

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
    let path = args.config.context("say which configuration to serve: --config FILE or FERRY_CONFIG=FILE")?;
    let mut config = Config::load(&path)?;
    // `*_arn` secrets are read once, here, and kept in memory only.
    config.read_secrets().await?;
    let config = Arc::new(config);
    let stores = open_stores(&config).await?;
    let replay = ferry_core::backend::replay_guard(&config, &stores)?;
    let intake = Intake::new(&config, stores.queue.clone()).map_err(anyhow::Error::msg)?.with_replay_guard(replay);
    let worker = Arc::new(Worker::new(config.clone(), stores.queue.clone(), stores.ledger.clone())?);
    let intake_app = router(Arc::new(intake));
    // The API and console are on with an operator token (break-glass) or an identity configuration.
    let api_app = ferry_core::api::operations_app(&config, Arc::new(Operations::new(worker.clone())))?;
    // With `api_listen`, operations get a listener of their own and the webhook one has none.
    // Where `/api/*` is not served, it says why (rather than an empty 404 that looks like a
    // wrong URL to `ferry --server`).
    use ferry_core::api::{ApiOff, off};
    let (app, api_app) = match (api_app, config.server.api_listen) {
        (Some(api), Some(_)) => (intake_app.merge(off(ApiOff::OtherListener)), Some(api)),
        (Some(api), None) => (intake_app.merge(api), None),
        (None, _) => (intake_app.merge(off(ApiOff::NoOperatorToken)), None),
    };

    let listen = args.listen.unwrap_or(config.server.listen);
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .with_context(|| format!("cannot listen on {listen} (in use? choose another with --listen)"))?;
    let local = listener.local_addr()?;
    let api_listener = match (&api_app, config.server.api_listen) {
        (Some(_), Some(addr)) => Some(
            tokio::net::TcpListener::bind(addr)
                .await
                .with_context(|| format!("cannot listen on server.api_listen = {addr} (in use?)"))?,
        ),
        _ => None,
    };
    let metrics_listener = match config.server.metrics_listen {
        Some(addr) => Some(
            tokio::net::TcpListener::bind(addr)
                .await
                .with_context(|| format!("cannot listen on server.metrics_listen = {addr} (in use?)"))?,
        ),
        None => None,
    };
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let run_worker = config.worker.enabled && !args.no_worker;
    let worker_task = run_worker.then(|| tokio::spawn(worker.clone().run(stopped.clone())));
    tracing::info!(%local, data_dir = %config.server.data_dir.display(), worker = run_worker, "ferry serving");
    eprintln!("ferry: listening on http://{local} (data in {})", config.server.data_dir.display());
    let limits = Limits::from_config(&config.server);
    let until_stopped = |mut stopped: tokio::sync::watch::Receiver<bool>| async move {
        let _ = stopped.wait_for(|stop| *stop).await;
    };
    let api_task = match (api_listener, api_app) {
        (Some(listener), Some(api)) => {
            eprintln!("ferry: operations API on http://{}", listener.local_addr()?);
            Some(tokio::spawn(server::serve(listener, api, limits, until_stopped(stopped.clone()))))
        }
        _ => None,
    };
    let metrics_task = match metrics_listener {
        Some(listener) => {
            eprintln!("ferry: metrics on http://{}/metrics", listener.local_addr()?);
            let metrics = ferry_core::api::metrics_router(Arc::new(Operations::new(worker.clone())));
            Some(tokio::spawn(server::serve(listener, metrics, limits, until_stopped(stopped.clone()))))
        }
        None => None,
    };
    let signals = tokio::spawn(async move {
        shutdown().await;
        let _ = stop.send(true);
    });
    server::serve(listener, app, limits, until_stopped(stopped)).await;
    signals.abort();
    if let Some(task) = api_task {
        let _ = task.await;
    }
    if let Some(task) = metrics_task {
        let _ = task.await;
    }
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

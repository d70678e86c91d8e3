//! `ferry serve`: the webhook intake and the embedded durable queue in one process.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use clap::Args;
use ferry_core::config::Config;
use ferry_core::http::{Intake, router};
use ferry_core::queue::{JobQueue, SqliteQueue, SqliteQueueOptions};

/// Serve every webhook route (/hooks/acr, /hooks/dockerhub/{token}, /hooks/github,
/// /hooks/distribution, /hooks/harbor, /hooks/quay/{token}, /hooks/generic) and GET /healthz.
/// A webhook is answered 202 only once its promotion jobs are committed to the embedded queue
/// (SQLite, in `server.data_dir`).
#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Configuration file (TOML); see examples/quickstart/ferry.toml.
    #[arg(long, short, value_name = "FILE", env = "FERRY_CONFIG")]
    config: PathBuf,

    /// Listen here instead of `server.listen`.
    #[arg(long, value_name = "ADDR:PORT")]
    listen: Option<std::net::SocketAddr>,
}

pub async fn run(args: ServeArgs) -> anyhow::Result<()> {
    let config = Config::load(&args.config)?;
    std::fs::create_dir_all(&config.server.data_dir)
        .with_context(|| format!("creating data_dir {}", config.server.data_dir.display()))?;
    let queue_path = config.server.data_dir.join("queue.db");
    let queue: Arc<dyn JobQueue> = Arc::new(
        SqliteQueue::open(&queue_path, SqliteQueueOptions::default())
            .with_context(|| format!("opening the queue at {}", queue_path.display()))?,
    );
    let intake = Intake::new(&config, queue).map_err(anyhow::Error::msg)?;
    let listen = args.listen.unwrap_or(config.server.listen);
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .with_context(|| format!("cannot listen on {listen} (in use? choose another with --listen)"))?;
    let local = listener.local_addr()?;
    tracing::info!(%local, queue = %queue_path.display(), "ferry serving");
    eprintln!("ferry: listening on http://{local} (queue: {})", queue_path.display());
    axum::serve(listener, router(Arc::new(intake)))
        .with_graceful_shutdown(shutdown())
        .await
        .context("server failed")?;
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

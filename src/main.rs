//! `ferry`: promote container images between environments by digest.

mod cli;

use std::process::ExitCode;

use clap::Parser;

#[tokio::main]
async fn main() -> ExitCode {
    let args = cli::Cli::parse();
    let log_writer = cli::init_tracing(args.verbose, matches!(args.command, cli::Command::Serve(_)));
    let result = cli::run(args).await;
    // Every log line out before the final error, in order.
    drop(log_writer);
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::FAILURE
        }
    }
}

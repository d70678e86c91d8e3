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
            // A waited-for job that was refused, failed or is still running has its own code.
            let code = err.downcast_ref::<cli::ops::Exit>().map_or(ExitCode::FAILURE, |e| ExitCode::from(e.code));
            // Errors quote payloads and server answers: escape what could drive the terminal,
            // keeping the lines of a message that has several.
            let message = format!("{err:#}");
            let lines: Vec<_> = message.split('\n').map(ferry_core::escape::escape_control).collect();
            eprintln!("error: {}", lines.join("\n"));
            code
        }
    }
}

//! `ferry`: promote container images between environments by digest.

mod cli;

use std::process::ExitCode;

use clap::Parser;
use serde_json::json;

#[tokio::main]
async fn main() -> ExitCode {
    let args = match cli::Cli::try_parse() {
        Ok(args) => args,
        Err(err) => return usage_error(err),
    };
    let json = args.command.json();
    let log_writer = cli::init_tracing(args.verbose, matches!(args.command, cli::Command::Serve(_)));
    let result = cli::run(args).await;
    // Every log line out before the final error, in order.
    drop(log_writer);
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            // A classified failure has its own exit code (a waited-for job that was refused,
            // failed or is still running; a usage error) and class.
            let failure = err.downcast_ref::<cli::ops::Failure>();
            let code = failure.map_or(cli::ops::EXIT_FAILED, |f| f.code);
            if json {
                // With --json, stdout carries one JSON document: the result, or this.
                let mut error = json!({
                    "class": failure.map_or("failed", |f| f.class),
                    "message": format!("{err:#}"),
                });
                if let Some((key, value)) = failure.and_then(|f| f.extra.clone()) {
                    error[key] = value;
                }
                println!("{}", json!({ "error": error }));
                return ExitCode::from(code);
            }
            // Errors quote payloads and server answers: escape what could drive the terminal,
            // keeping the lines of a message that has several.
            let message = format!("{err:#}");
            let lines: Vec<_> = message.split('\n').map(ferry_core::escape::escape_control).collect();
            eprintln!("error: {}", lines.join("\n"));
            ExitCode::from(code)
        }
    }
}

/// A command line clap refused: clap's own message and exit code 2; as a JSON error on stdout
/// when the command line asks for `--json`.
fn usage_error(err: clap::Error) -> ExitCode {
    use clap::error::ErrorKind;
    let shown = matches!(
        err.kind(),
        ErrorKind::DisplayHelp | ErrorKind::DisplayVersion | ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand
    );
    if shown || !std::env::args_os().any(|a| a == "--json") {
        err.exit();
    }
    let text = err.render().to_string();
    let message = text.lines().next().unwrap_or_default().trim_start_matches("error: ").to_string();
    println!("{}", json!({ "error": { "class": "usage", "message": message } }));
    ExitCode::from(cli::ops::EXIT_USAGE)
}

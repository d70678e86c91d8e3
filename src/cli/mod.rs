//! Command-line interface: parsing, and one module per command.

mod config;
mod copy;
mod serve;

use clap::{Parser, Subcommand};

/// Ferry promotes container images from environment to environment (build → dev → test →
/// prod) by digest: the image that runs in production is, byte for byte, the one that was built.
#[derive(Debug, Parser)]
#[command(name = "ferry", version, about, long_about = None, propagate_version = true)]
pub struct Cli {
    /// More log output on stderr (-v info, -vv debug); FERRY_LOG=<filter> overrides.
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    pub verbose: u8,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    Copy(copy::CopyArgs),
    Serve(serve::ServeArgs),
    /// Work with configuration files.
    Config(config::ConfigArgs),
}

pub async fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Copy(args) => copy::run(args).await,
        Command::Serve(args) => serve::run(args).await,
        Command::Config(args) => config::run(args),
    }
}

/// Logs go to stderr: warnings only for one-shot commands, info for the server.
pub fn init_tracing(verbose: u8, server: bool) {
    let default = match verbose {
        0 if server => "info",
        0 => "warn",
        1 => "info,ferry=info,ferry_core=info",
        _ => "debug,hyper=info,h2=info,rustls=info",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_env("FERRY_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_target(false)
        .init();
}

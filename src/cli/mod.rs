//! Command-line interface: parsing, and one module per command.

mod config;
mod copy;
mod log;
pub mod ops;
pub(crate) mod serve;
mod token;

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
    /// Each environment's digest, tag, build and since when; promotions waiting on gates.
    Status {
        #[command(flatten)]
        connection: ops::Connection,
        #[command(flatten)]
        args: ops::StatusArgs,
    },
    /// Queue a promotion of a tag or digest into a stage (its gate still applies).
    Promote {
        #[command(flatten)]
        connection: ops::Connection,
        #[command(flatten)]
        args: ops::PromoteArgs,
    },
    /// Approve a promotion waiting on an approval gate (not one you triggered yourself).
    Approve {
        #[command(flatten)]
        connection: ops::Connection,
        #[command(flatten)]
        args: ops::ApproveArgs,
    },
    /// Reject a promotion waiting on a gate.
    Reject {
        #[command(flatten)]
        connection: ops::Connection,
        #[command(flatten)]
        args: ops::RejectArgs,
    },
    /// Re-point a stage to its previous good digest (or --to DIGEST) and notify it.
    Rollback {
        #[command(flatten)]
        connection: ops::Connection,
        #[command(flatten)]
        args: ops::RollbackArgs,
    },
    /// Promotions of a pipeline, newest first.
    History {
        #[command(flatten)]
        connection: ops::Connection,
        #[command(flatten)]
        args: ops::HistoryArgs,
    },
    /// Everything about a promotion (p-…, r-…) or a job id: gate decisions, approvals (who,
    /// when, through which channel), attempts, errors, and the job's outcome.
    Show {
        #[command(flatten)]
        connection: ops::Connection,
        #[command(flatten)]
        args: ops::ShowArgs,
    },
    /// The dead-letter store: jobs that failed too often.
    Dlq {
        #[command(flatten)]
        connection: ops::Connection,
        #[command(subcommand)]
        command: ops::DlqCommand,
    },
    /// Static user tokens for [[identity.users]].
    Token(token::TokenArgs),
}

pub async fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Copy(args) => copy::run(args).await,
        Command::Serve(args) => serve::run(args).await,
        Command::Config(args) => config::run(args).await,
        Command::Status { connection, args } => ops::status(&connection, args).await,
        Command::Promote { connection, args } => ops::promote(&connection, args).await,
        Command::Approve { connection, args } => ops::approve(&connection, args).await,
        Command::Reject { connection, args } => ops::reject(&connection, args).await,
        Command::Rollback { connection, args } => ops::rollback(&connection, args).await,
        Command::History { connection, args } => ops::history(&connection, args).await,
        Command::Show { connection, args } => ops::show(&connection, args).await,
        Command::Dlq { connection, command } => ops::dlq(&connection, command).await,
        Command::Token(args) => token::run(args),
    }
}

impl Command {
    /// Whether the command was asked for JSON (`--json`): then its errors are JSON too.
    pub fn json(&self) -> bool {
        use ops::Json;
        match self {
            Command::Copy(_) | Command::Serve(_) | Command::Token(_) => false,
            Command::Config(args) => args.json(),
            Command::Status { args, .. } => args.json(),
            Command::Promote { args, .. } => args.json(),
            Command::Approve { args, .. } => args.json(),
            Command::Reject { args, .. } => args.json(),
            Command::Rollback { args, .. } => args.json(),
            Command::History { args, .. } => args.json(),
            Command::Show { args, .. } => args.json(),
            Command::Dlq { command, .. } => command.json(),
        }
    }
}

/// Logs go to stderr: warnings only for one-shot commands, info for the server. The server
/// logs a line per webhook, so its lines are buffered and written by a background thread
/// ([`log`]); the returned guard writes out the rest when dropped.
pub fn init_tracing(verbose: u8, server: bool) -> Option<log::FlushGuard<std::io::Stderr>> {
    let default = match verbose {
        0 if server => "info",
        0 => "warn",
        1 => "info,ferry=info,ferry_core=info",
        _ => "debug,hyper=info,h2=info,rustls=info",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_env("FERRY_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(ansi)
        .with_target(false)
        .fmt_fields(log::escaped_fields());
    if !server {
        builder.with_writer(std::io::stderr).init();
        return None;
    }
    let (writer, guard) = log::batched(std::io::stderr(), log::FLUSH_EVERY);
    builder.with_writer(writer).init();
    Some(guard)
}

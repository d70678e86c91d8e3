//! Command-line interface: parsing, and one module per command.

mod completion;
mod config;
mod copy;
mod log;
pub mod ops;
pub(crate) mod serve;
mod token;

use clap::{Parser, Subcommand};

/// `ferry --version`: the package version, the git commit and the build date (build.rs).
const VERSION: &str = concat!(
    env!("CARGO_PKG_VERSION"),
    " (commit ",
    env!("FERRY_GIT_COMMIT"),
    ", built ",
    env!("FERRY_BUILD_DATE"),
    ")"
);

/// Ferry promotes container images from environment to environment (build → dev → test →
/// prod) by digest: the image that runs in production is, byte for byte, the one that was built.
#[derive(Debug, Parser)]
#[command(name = "ferry", version = VERSION, about, long_about = None, propagate_version = true)]
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
    #[command(mut_arg("user", |a| a.hide(true)))]
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
    #[command(mut_arg("user", |a| a.hide(true)))]
    History {
        #[command(flatten)]
        connection: ops::Connection,
        #[command(flatten)]
        args: ops::HistoryArgs,
    },
    /// Everything about a promotion (p-…, r-…) or a job id: gate decisions, approvals (who,
    /// when, through which channel), attempts, errors, and the job's outcome.
    #[command(mut_arg("user", |a| a.hide(true)))]
    Show {
        #[command(flatten)]
        connection: ops::Connection,
        #[command(flatten)]
        args: ops::ShowArgs,
    },
    /// The dead-letter store: jobs that failed too often.
    #[command(mut_arg("user", |a| a.hide(true)))]
    Dlq {
        #[command(flatten)]
        connection: ops::Connection,
        #[command(subcommand)]
        command: ops::DlqCommand,
    },
    Completion(completion::CompletionArgs),
    Man(completion::ManArgs),
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
        Command::Completion(args) => completion::completion(args),
        Command::Man(args) => completion::man(args),
        Command::Token(args) => token::run(args),
    }
}

impl Command {
    /// Whether the command was asked for JSON (`--json`): then its errors are JSON too.
    pub fn json(&self) -> bool {
        use ops::Json;
        match self {
            Command::Copy(args) => args.json(),
            Command::Serve(_) | Command::Completion(_) | Command::Man(_) | Command::Token(_) => false,
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

/// Logs go to stderr: warnings only for one-shot commands, info for the server; as JSON lines
/// with `FERRY_LOG_FORMAT=json`. The server logs a line per webhook, so its lines are buffered
/// and written by a background thread ([`log`]); the returned guard writes out the rest when
/// dropped.
pub fn init_tracing(verbose: u8, server: bool) -> Option<log::FlushGuard<std::io::Stderr>> {
    let default = match verbose {
        0 if server => "info",
        0 => "warn",
        1 => "info,ferry=info,ferry_core=info",
        _ => "debug,hyper=info,h2=info,rustls=info",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_env("FERRY_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    if log::json_requested() {
        // One JSON object per line, the job's fields (promotion id included) on each.
        let builder =
            tracing_subscriber::fmt().with_env_filter(filter).json().with_current_span(true).with_span_list(false);
        if !server {
            builder.with_writer(std::io::stderr).init();
            return None;
        }
        let (writer, guard) = log::batched(std::io::stderr(), log::FLUSH_EVERY);
        builder.with_writer(writer).init();
        return Some(guard);
    }
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

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    use super::Cli;

    /// Every subcommand, with its path (`ferry dlq redrive`).
    fn commands(command: &clap::Command, path: String, out: &mut Vec<(String, clap::Command)>) {
        for sub in command.get_subcommands() {
            let sub_path = format!("{path} {}", sub.get_name());
            commands(sub, sub_path.clone(), out);
            out.push((sub_path, sub.clone()));
        }
    }

    #[test]
    fn every_command_argument_and_option_is_described() {
        let mut root = Cli::command();
        root.build();
        let mut all = vec![("ferry".to_string(), root.clone())];
        commands(&root, "ferry".into(), &mut all);
        let mut undescribed = Vec::new();
        for (path, command) in &all {
            if command.get_about().is_none() && command.get_name() != "help" {
                undescribed.push(format!("{path}: no description"));
            }
            for arg in command.get_arguments().filter(|a| !a.is_hide_set()) {
                if arg.get_help().is_none() && arg.get_long_help().is_none() {
                    undescribed.push(format!("{path} {}", arg.get_id()));
                }
            }
        }
        assert!(undescribed.is_empty(), "without a description: {undescribed:#?}");
    }

    #[test]
    fn user_is_offered_only_by_commands_that_record_who_acted() {
        let mut root = Cli::command();
        root.build();
        let mut all = Vec::new();
        commands(&root, "ferry".into(), &mut all);
        let with_user: Vec<&str> = all
            .iter()
            .filter(|(_, c)| c.get_arguments().any(|a| a.get_id() == "user" && !a.is_hide_set()))
            .map(|(path, _)| path.as_str())
            .collect();
        assert_eq!(with_user, ["ferry promote", "ferry approve", "ferry reject", "ferry rollback"]);
    }
}

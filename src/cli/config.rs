//! `ferry config check FILE`.

use std::path::PathBuf;

use clap::{Args, Subcommand};
use ferry_core::config::Config;

#[derive(Debug, Args)]
pub struct ConfigArgs {
    #[command(subcommand)]
    command: ConfigCommand,
}

#[derive(Debug, Subcommand)]
enum ConfigCommand {
    /// Validate a configuration file: syntax, known keys, pipelines that reference configured
    /// registries. Errors name the file, line, column and key. Exit 0 when valid.
    Check {
        /// The configuration file (TOML).
        file: PathBuf,
    },
}

pub async fn run(args: ConfigArgs) -> anyhow::Result<()> {
    match args.command {
        ConfigCommand::Check { file } => {
            let mut config = Config::load(&file)?;
            let mut missing = Vec::new();
            // The `*_arn` secrets are read as `ferry serve` would, to show that they can be.
            let arns_read = match config.read_secrets().await {
                Ok(()) => true,
                Err(why) => {
                    missing.push(why.to_string());
                    false
                }
            };
            for (name, source) in &config.sources {
                if source.get_ref().secret_arn.is_some() && !arns_read {
                    continue;
                }
                let sender = ferry_core::config::sender_named(name).expect("validated");
                if let Err(why) = config.source_secret(sender) {
                    missing.push(why);
                }
            }
            println!(
                "{}: ok ({} registries, {} sources, {} pipelines)",
                file.display(),
                config.registries.len(),
                config.sources.len(),
                config.pipelines.len()
            );
            for why in missing {
                eprintln!("warning: {why} (ferry serve will refuse to start without it)");
            }
            Ok(())
        }
    }
}

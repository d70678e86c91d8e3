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

pub fn run(args: ConfigArgs) -> anyhow::Result<()> {
    match args.command {
        ConfigCommand::Check { file } => {
            let config = Config::load(&file)?;
            let mut missing = Vec::new();
            for name in config.sources.keys() {
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

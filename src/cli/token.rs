//! `ferry token hash`: the `token_hash` of a static user token for `[[identity.users]]`.

use std::io::Read as _;

use anyhow::Context as _;
use clap::{Args, Subcommand};

#[derive(Debug, Args)]
pub struct TokenArgs {
    #[command(subcommand)]
    command: TokenCommand,
}

#[derive(Debug, Subcommand)]
enum TokenCommand {
    /// Print the `token_hash` of a token read from stdin (at least 32 characters; surrounding
    /// whitespace is dropped), or with --generate make a new random token and print it, then its
    /// hash. Only the hash goes in the configuration; the token goes to its user.
    Hash {
        /// Make a new token (32 random bytes) instead of reading one from stdin.
        #[arg(long)]
        generate: bool,
    },
}

pub fn run(args: TokenArgs) -> anyhow::Result<()> {
    match args.command {
        TokenCommand::Hash { generate } => {
            let token = if generate {
                let token = ferry_core::identity::generate_token();
                println!("token: {token}");
                token
            } else {
                let mut input = String::new();
                std::io::stdin().read_to_string(&mut input).context("cannot read the token from stdin")?;
                input.trim().to_string()
            };
            let hash = ferry_core::identity::token_hash(&token).context("ferry token hash")?;
            if generate {
                println!("token_hash: {hash}");
            } else {
                println!("{hash}");
            }
            Ok(())
        }
    }
}

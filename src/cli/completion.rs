//! `ferry completion SHELL` and `ferry man`: generated from the same clap definitions that
//! parse the command line, so they cannot fall behind it.

use std::io::Write;
use std::path::PathBuf;

use anyhow::Context;

use clap::{Args, CommandFactory};
use clap_complete::Shell;

use super::Cli;

/// Print a shell completion script
///
/// bash:  ferry completion bash > ~/.local/share/bash-completion/completions/ferry
/// zsh:   ferry completion zsh > "${fpath[1]}/_ferry"
/// fish:  ferry completion fish > ~/.config/fish/completions/ferry.fish
#[derive(Debug, Args)]
pub struct CompletionArgs {
    /// The shell to complete for.
    #[arg(value_enum, value_name = "SHELL")]
    shell: Shell,
}

/// Print Ferry's manual page (roff) on stdout, or write one page per command
///
/// e.g. `ferry man > ferry.1 && man ./ferry.1`, or
/// `ferry man --dir /usr/local/share/man/man1` for ferry.1, ferry-promote.1, ferry-dlq-redrive.1, …
#[derive(Debug, Args)]
pub struct ManArgs {
    /// Write ferry.1 and a page for every subcommand (ferry-COMMAND.1) into this folder instead.
    #[arg(long, value_name = "DIR")]
    dir: Option<PathBuf>,
}

pub fn completion(args: CompletionArgs) -> anyhow::Result<()> {
    let mut command = Cli::command();
    let mut out = std::io::stdout().lock();
    clap_complete::generate(args.shell, &mut command, "ferry", &mut out);
    out.flush()?;
    Ok(())
}

pub fn man(args: ManArgs) -> anyhow::Result<()> {
    if let Some(dir) = args.dir {
        clap_mangen::generate_to(Cli::command(), &dir)
            .with_context(|| format!("cannot write the manual pages into {}", dir.display()))?;
        println!("wrote the manual pages into {}", dir.display());
        return Ok(());
    }
    let mut out = std::io::stdout().lock();
    clap_mangen::Man::new(Cli::command()).render(&mut out)?;
    out.flush()?;
    Ok(())
}

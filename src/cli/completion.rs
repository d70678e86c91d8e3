//! `ferry completion SHELL` and `ferry man`: generated from the same clap definitions that
//! parse the command line, so they cannot fall behind it.

use std::io::Write;

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

/// Print Ferry's manual page (roff) on stdout
///
/// e.g. `ferry man > ferry.1 && man ./ferry.1`, or install it as
/// /usr/local/share/man/man1/ferry.1.
#[derive(Debug, Args)]
pub struct ManArgs {}

pub fn completion(args: CompletionArgs) -> anyhow::Result<()> {
    let mut command = Cli::command();
    let mut out = std::io::stdout().lock();
    clap_complete::generate(args.shell, &mut command, "ferry", &mut out);
    out.flush()?;
    Ok(())
}

pub fn man(_: ManArgs) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    clap_mangen::Man::new(Cli::command()).render(&mut out)?;
    out.flush()?;
    Ok(())
}

//! `ferry config check FILE`.

use std::path::{Path, PathBuf};

use clap::{Args, Subcommand};
use ferry_core::config_check::{Finding, Severity};

use super::ops::{EXIT_FAILED, Failure};

#[derive(Debug, Args)]
pub struct ConfigArgs {
    #[command(subcommand)]
    command: ConfigCommand,
}

#[derive(Debug, Subcommand)]
enum ConfigCommand {
    /// Validate a configuration file: syntax, known keys, pipelines that reference configured
    /// registries, then everything `ferry serve` would refuse (unset `*_env` variables, a short
    /// operator token, a soak without duration, a target equal to its source) and keys it would
    /// ignore (warnings), all at once in file order. Exit 0 when there is no error.
    Check {
        /// The configuration file (TOML).
        file: PathBuf,
        /// Treat warnings as errors.
        #[arg(long)]
        strict: bool,
        /// Print JSON: {file, ok, errors, warnings, findings: [{line, column, severity, message}], …}.
        #[arg(long)]
        json: bool,
    },
}

impl ConfigArgs {
    pub fn json(&self) -> bool {
        match &self.command {
            ConfigCommand::Check { json, .. } => *json,
        }
    }
}

pub async fn run(args: ConfigArgs) -> anyhow::Result<()> {
    match args.command {
        ConfigCommand::Check { file, strict, json } => {
            let unusable = |e: &dyn std::fmt::Display| Failure::new("config", EXIT_FAILED, format!("{e:#}"));
            let text = std::fs::read_to_string(&file).map_err(|e| unusable(&format!("{}: {e}", file.display())))?;
            let checked = ferry_core::config_check::check_file(&text, |var| std::env::var(var).ok());
            let mut findings = checked.findings;
            let mut summary = None;
            // `*_arn` secrets are read as `ferry serve` would, to show that they can be, and
            // `secret_file`s too; where they cannot be read here is a warning, like an unset
            // variable. Only for a file serve would load: the others have errors to fix first.
            if let Some(mut config) = checked.config {
                if !config.secret_arns().is_empty() {
                    if let Err(why) = config.read_secrets().await {
                        findings.push(unreadable(why.to_string()));
                    }
                }
                // `secret_file` relative to the configuration file, as `ferry serve` reads it.
                let folder = file.parent().filter(|f| !f.as_os_str().is_empty()).unwrap_or(Path::new("."));
                config.resolve_paths(folder);
                for (name, source) in &config.sources {
                    if source.get_ref().secret_file.is_some() {
                        let sender = ferry_core::config::sender_named(name).expect("validated");
                        if let Err(why) = config.source_secret(sender) {
                            findings.push(unreadable(why));
                        }
                    }
                }
                summary = Some((config.registries.len(), config.sources.len(), config.pipelines.len()));
            }
            if strict {
                for finding in &mut findings {
                    finding.severity = Severity::Error;
                }
            }
            let errors = findings.iter().filter(|f| f.severity == Severity::Error).count();
            let warnings = findings.len() - errors;
            if json {
                let listed: Vec<_> = findings
                    .iter()
                    .map(|f| {
                        serde_json::json!({
                            "line": f.line, "column": f.column, "severity": f.severity.to_string(), "message": f.message
                        })
                    })
                    .collect();
                if errors > 0 {
                    let message = format!(
                        "{}: {errors} error(s), {warnings} warning(s): ferry serve would refuse this configuration",
                        file.display()
                    );
                    return Err(Failure::new("config", EXIT_FAILED, message).with("findings", listed.into()).into());
                }
                let (registries, sources, pipelines) = summary.expect("a file without errors loads");
                let report = serde_json::json!({
                    "file": file.display().to_string(), "ok": true, "errors": 0, "warnings": warnings,
                    "registries": registries, "sources": sources, "pipelines": pipelines, "findings": listed,
                });
                println!("{}", serde_json::to_string_pretty(&report)?);
                return Ok(());
            }
            for f in &findings {
                match f.line {
                    0 => eprintln!("{}: {}: {}", file.display(), f.severity, f.message),
                    line => eprintln!("{}:{line}:{}: {}: {}", file.display(), f.column, f.severity, f.message),
                }
            }
            if errors > 0 {
                anyhow::bail!(
                    "{}: {errors} error(s), {warnings} warning(s): ferry serve would refuse this configuration",
                    file.display()
                );
            }
            let (registries, sources, pipelines) = summary.expect("a file without errors loads");
            println!(
                "{}: ok ({registries} registries, {sources} sources, {pipelines} pipelines){}",
                file.display(),
                if warnings > 0 { format!(", {warnings} warning(s)") } else { String::new() }
            );
            Ok(())
        }
    }
}

/// A secret that cannot be read where the check runs (no line: it is about the secret's store).
fn unreadable(why: String) -> Finding {
    Finding {
        line: 0,
        column: 0,
        severity: Severity::Warning,
        message: format!("{why} (ferry serve will refuse to start without it)"),
    }
}

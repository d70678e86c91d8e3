//! Help that teaches: every command's `--help` describes each argument and option, shell
//! completions and the man page come out of the same definitions, `--version` names the build.

use std::process::{Command, Output};

const FERRY: &str = env!("CARGO_BIN_EXE_ferry");

fn ferry(args: &[&str]) -> Output {
    Command::new(FERRY)
        .args(args)
        .env_remove("FERRY_CONFIG")
        .env_remove("FERRY_SERVER")
        .env_remove("FERRY_OPERATOR_TOKEN")
        .env_remove("FERRY_USER")
        .output()
        .unwrap()
}

fn stdout_of(args: &[&str]) -> String {
    let run = ferry(args);
    assert!(run.status.success(), "ferry {args:?}: {}", String::from_utf8_lossy(&run.stderr));
    String::from_utf8(run.stdout).unwrap()
}

/// The subcommands a help text lists under `Commands:` (without `help`).
fn subcommands(help: &str) -> Vec<String> {
    help.lines()
        .skip_while(|l| l.trim() != "Commands:")
        .skip(1)
        .take_while(|l| l.starts_with("  "))
        .filter(|l| !l.starts_with("   "))
        .filter_map(|l| l.split_whitespace().next())
        .filter(|name| *name != "help")
        .map(str::to_string)
        .collect()
}

/// The arguments and options of a `--help` text that have no description: each entry of the
/// `Arguments:` and `Options:` sections is followed by its text, on the same line or indented
/// on the next.
fn undescribed(help: &str) -> Vec<String> {
    let lines: Vec<&str> = help.lines().collect();
    let mut missing = Vec::new();
    let mut in_section = false;
    for (i, line) in lines.iter().enumerate() {
        if ["Arguments:", "Options:"].contains(&line.trim()) && !line.starts_with(' ') {
            in_section = true;
            continue;
        }
        if !line.starts_with(' ') && !line.is_empty() {
            in_section = false;
        }
        let entry = line.strip_prefix("  ").filter(|l| l.starts_with('-') || l.starts_with('<') || l.starts_with('['));
        let Some(entry) = entry.filter(|_| in_section) else { continue };
        let same_line = entry.split("  ").skip(1).any(|text| !text.trim().is_empty());
        let next_line = lines.get(i + 1).is_some_and(|next| next.starts_with("          ") && !next.trim().is_empty());
        if !same_line && !next_line {
            missing.push(entry.trim().to_string());
        }
    }
    missing
}

#[test]
fn every_subcommand_s_help_describes_each_argument_and_option() {
    let mut pending = vec![vec![]];
    let mut seen = 0;
    while let Some(path) = pending.pop() {
        let mut args: Vec<&str> = path.iter().map(String::as_str).collect();
        args.push("--help");
        let help = stdout_of(&args);
        let missing = undescribed(&help);
        assert!(missing.is_empty(), "ferry {}: without a description: {missing:?}\n{help}", path.join(" "));
        for sub in subcommands(&help) {
            let mut child = path.clone();
            child.push(sub);
            pending.push(child);
        }
        seen += 1;
    }
    // copy, serve, config (+ check), status, promote, approve, reject, rollback, history,
    // dlq (+ list, redrive), completion, man, and ferry itself.
    assert!(seen >= 16, "only {seen} commands found");
}

#[test]
fn user_appears_only_where_it_is_recorded() {
    for command in ["promote", "approve", "reject", "rollback"] {
        assert!(stdout_of(&[command, "--help"]).contains("--user <NAME>"), "ferry {command} --help");
    }
    for command in [&["status"][..], &["history"], &["dlq", "list"], &["copy"], &["serve"]] {
        let mut args = command.to_vec();
        args.push("--help");
        assert!(!stdout_of(&args).contains("--user"), "ferry {command:?} --help offers --user");
    }
}

#[test]
fn options_from_the_environment_are_not_shown_as_required() {
    let help = stdout_of(&["serve", "--help"]);
    let usage = help.lines().find(|l| l.starts_with("Usage:")).unwrap();
    assert_eq!(usage, "Usage: ferry serve [OPTIONS]", "{help}");
    assert!(help.contains("[env: FERRY_CONFIG="), "{help}");
    // Neither given: one sentence that says how.
    let run = ferry(&["serve"]);
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(!run.status.success(), "{stderr}");
    assert!(stderr.contains("--config FILE or FERRY_CONFIG"), "{stderr}");
}

#[test]
fn completion_scripts_for_bash_zsh_and_fish() {
    let bash = stdout_of(&["completion", "bash"]);
    assert!(bash.contains("complete -F _ferry") && bash.contains("rollback"), "{bash}");
    let zsh = stdout_of(&["completion", "zsh"]);
    assert!(zsh.starts_with("#compdef ferry") && zsh.contains("--strict"), "{zsh}");
    let fish = stdout_of(&["completion", "fish"]);
    assert!(fish.contains("complete -c ferry") && fish.contains("redrive"), "{fish}");
    let run = ferry(&["completion", "cmd.exe"]);
    assert!(!run.status.success() && String::from_utf8_lossy(&run.stderr).contains("possible values"));
}

#[test]
fn the_man_page_renders() {
    let page = stdout_of(&["man"]);
    assert!(page.starts_with(".ie") || page.starts_with(".TH"), "{}", &page[..page.len().min(200)]);
    assert!(page.contains(".TH ferry 1"), "{}", &page[..page.len().min(400)]);
    for section in [".SH NAME", ".SH SYNOPSIS", ".SH SUBCOMMANDS", ".SH VERSION"] {
        assert!(page.contains(section), "no {section}");
    }
    assert!(page.contains("ferry\\-promote") && page.contains("ferry\\-completion"), "subcommands missing");

    // One page per command, with its own options.
    let dir = tempfile::tempdir().unwrap();
    stdout_of(&["man", "--dir", dir.path().to_str().unwrap()]);
    for name in ["ferry.1", "ferry-promote.1", "ferry-config-check.1", "ferry-dlq-redrive.1"] {
        let page = std::fs::read_to_string(dir.path().join(name)).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert!(page.contains(".TH ferry"), "{name}: {page}");
    }
    let promote = std::fs::read_to_string(dir.path().join("ferry-promote.1")).unwrap();
    assert!(promote.contains("\\-\\-to") && promote.contains("The stage to promote into"), "{promote}");
}

#[test]
fn version_names_the_commit_and_build_date() {
    let version = stdout_of(&["--version"]);
    // ferry 0.1.0 (commit 589a3fe0c1d2, built 2026-11-30)
    let rest = version
        .trim()
        .strip_prefix(concat!("ferry ", env!("CARGO_PKG_VERSION"), " (commit "))
        .unwrap_or_else(|| panic!("{version}"));
    let (commit, built) = rest.split_once(", built ").unwrap_or_else(|| panic!("{version}"));
    assert!(commit.len() >= 7 && commit.chars().all(|c| c.is_ascii_hexdigit()), "{version}");
    let date = built.strip_suffix(')').unwrap_or_else(|| panic!("{version}"));
    assert!(date.len() == 10 && date.as_bytes()[4] == b'-' && date.as_bytes()[7] == b'-', "{version}");
    // The build's commit is the checkout's.
    let head =
        Command::new("git").args(["rev-parse", "HEAD"]).current_dir(env!("CARGO_MANIFEST_DIR")).output().unwrap();
    assert!(String::from_utf8_lossy(&head.stdout).starts_with(commit), "{version}");
}

//! `ferry config check`: what `ferry serve` would refuse, and what it would silently ignore,
//! found in a configuration that parses — every finding at once, in file order.

use crate::config::{Config, Gate};

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Severity {
    Warning,
    Error,
}

impl std::fmt::Display for Severity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Severity::Warning => "warning",
            Severity::Error => "error",
        })
    }
}

/// One problem, where the file shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finding {
    pub line: usize,
    pub column: usize,
    pub severity: Severity,
    pub message: String,
}

/// The shortest operator token `ferry serve` accepts (see [`crate::api::operator_token`]).
const MIN_OPERATOR_TOKEN: usize = 16;

/// Checks `config`, parsed from `text`; `env` reads an environment variable (the process's,
/// or a test's). Findings come sorted by position in `text`.
pub fn check(config: &Config, text: &str, env: impl Fn(&str) -> Option<String>) -> Vec<Finding> {
    let mut found: Vec<(usize, Severity, String)> = Vec::new();
    // Where `needle` first appears after `from`, for findings about values without a span.
    let position = |needle: &str, from: usize| text.get(from..).and_then(|t| t.find(needle)).map_or(from, |i| from + i);

    for (key, var, _) in config.secret_keys() {
        let Some(var) = var else { continue };
        let at = position(&format!("\"{var}\""), 0);
        match env(var) {
            // A warning: the file may be checked where its secrets are not (`--strict` for CI).
            None => found.push((
                at,
                Severity::Warning,
                format!(
                    "{key}_env: environment variable `{var}` is not set (ferry serve will refuse to start without it)"
                ),
            )),
            Some(value) if value.is_empty() => {
                found.push((at, Severity::Error, format!("{key}_env: environment variable `{var}` is empty")));
            }
            Some(value) if key == "server.operator_token" && value.chars().count() < MIN_OPERATOR_TOKEN => {
                found.push((
                    at,
                    Severity::Error,
                    format!(
                        "{key}_env: the operator token in `{var}` has {} characters; at least {MIN_OPERATOR_TOKEN}",
                        value.chars().count()
                    ),
                ))
            }
            Some(_) => {}
        }
    }

    // Keys present in the file, which the typed configuration cannot tell from defaults.
    let table: toml::Table = text.parse().unwrap_or_default();
    let pipelines = table.get("pipelines").and_then(toml::Value::as_array);
    for (i, pipeline) in config.pipelines.iter().enumerate() {
        let written = pipelines.and_then(|p| p.get(i)).and_then(|p| p.get("stages")).and_then(toml::Value::as_array);
        for (j, stage) in pipeline.stages.iter().enumerate() {
            let key = format!("pipelines[{i}].stages[{j}] `{}`", stage.name.get_ref());
            let at = stage.name.span().start;
            let has = |name: &str| written.and_then(|s| s.get(j)).and_then(|s| s.get(name)).is_some();
            if stage.gate == Gate::Soak && stage.soak().is_zero() {
                found.push((
                    at,
                    Severity::Error,
                    format!("{key}: `gate = \"soak\"` without a duration: set `soak_minutes` or `soak_secs`"),
                ));
            }
            if stage.gate != Gate::Soak {
                for soak_key in ["soak_minutes", "soak_secs"].into_iter().filter(|k| has(k)) {
                    found.push((
                        at,
                        Severity::Warning,
                        format!("{key}: `{soak_key}` is ignored: only a `soak` gate soaks"),
                    ));
                }
            }
            if stage.gate != Gate::Approval {
                for approval_key in ["approvers", "approval_expires_hours"].into_iter().filter(|k| has(k)) {
                    found.push((
                        at,
                        Severity::Warning,
                        format!("{key}: `{approval_key}` is ignored: only an `approval` gate has approvers"),
                    ));
                }
            }
            let source = pipeline.stage_source(j);
            if stage.target_repo() == source {
                found.push((
                    stage.target.span().start,
                    Severity::Error,
                    format!("{key}.target: `{source}` is also its source: the stage would copy an image onto itself"),
                ));
            }
        }
    }

    found.sort_by_key(|(at, _, _)| *at);
    found
        .into_iter()
        .map(|(at, severity, message)| {
            let (line, column) = line_column(text, at);
            Finding { line, column, severity, message }
        })
        .collect()
}

fn line_column(text: &str, offset: usize) -> (usize, usize) {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    (line, column)
}

#[cfg(test)]
mod tests {
    use super::*;

    const FILE: &str = r#"[server]
operator_token_env = "T_TOKEN"

[registries."a.example"]
[registries."b.example"]
username_env = "B_USER"
password_env = "B_PASS"

[[pipelines]]
name = "shop"
source = "a.example/shop"
  [[pipelines.stages]]
  name = "dev"
  target = "a.example/shop"
  approvers = 2
  [[pipelines.stages]]
  name = "prod"
  target = "b.example/shop"
  gate = "soak"
"#;

    fn findings(env: &[(&str, &str)]) -> Vec<String> {
        let config = Config::parse(FILE, "ferry.toml").unwrap();
        check(&config, FILE, |var| env.iter().find(|(k, _)| *k == var).map(|(_, v)| v.to_string()))
            .into_iter()
            .map(|f| format!("{}:{} {}: {}", f.line, f.column, f.severity, f.message))
            .collect()
    }

    #[test]
    fn every_problem_is_reported_in_file_order() {
        let found = findings(&[("T_TOKEN", "short"), ("B_USER", "u")]);
        assert_eq!(found.len(), 5, "{found:#?}");
        assert!(found[0].starts_with("2:22 error: server.operator_token_env") && found[0].contains("5 characters"));
        assert!(
            found[1].starts_with("7:16 warning: registries.\"b.example\".password_env") && found[1].contains("B_PASS")
        );
        assert!(found[2].starts_with("13:10 warning:") && found[2].contains("`approvers` is ignored"), "{found:#?}");
        assert!(found[3].starts_with("14:12 error:") && found[3].contains("also its source"), "{found:#?}");
        assert!(found[4].starts_with("17:10 error:") && found[4].contains("without a duration"), "{found:#?}");
    }

    #[test]
    fn a_good_environment_leaves_only_the_file_s_own_problems() {
        let found = findings(&[("T_TOKEN", "0123456789abcdef"), ("B_USER", "u"), ("B_PASS", "p")]);
        assert_eq!(found.len(), 3, "{found:#?}");
        assert!(found.iter().all(|f| !f.contains("_env")), "{found:#?}");
    }
}

//! `ferry config check`: what `ferry serve` would refuse, and what it would silently ignore,
//! found in a configuration that parses — every finding at once, in file order.

use crate::config::{Config, Gate, Pipeline, RepoName};

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
    let mut found = findings_at(config, text, env);
    found.sort_by_key(|(at, _, _)| *at);
    found
        .into_iter()
        .map(|(at, severity, message)| {
            let (line, column) = line_column(text, at);
            Finding { line, column, severity, message }
        })
        .collect()
}

/// [`check`]'s findings by byte offset in `text`, unsorted.
fn findings_at(config: &Config, text: &str, env: impl Fn(&str) -> Option<String>) -> Vec<(usize, Severity, String)> {
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
            Some(value)
                if key == "identity.session_key"
                    && value.chars().count() < crate::console::session::MIN_SESSION_KEY_CHARS =>
            {
                found.push((
                    at,
                    Severity::Error,
                    format!(
                        "{key}_env: the session key in `{var}` has {} characters; at least {}",
                        value.chars().count(),
                        crate::console::session::MIN_SESSION_KEY_CHARS
                    ),
                ))
            }
            Some(_) => {}
        }
    }
    // On AWS every request may meet another instance: without one key they reject each other's
    // console sessions.
    let shared_key = config.identity.session_key_env.is_some() || config.identity.session_key_arn.is_some();
    if config.identity.is_on() && !shared_key && matches!(config.queue, crate::config::QueueBackend::Sqs { .. }) {
        found.push((
            position("[identity", 0),
            Severity::Warning,
            "identity: no session_key_env or session_key_arn: each API function instance would seal console \
             sessions with its own random key and refuse the others'"
                .into(),
        ));
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

    found
}

/// A configuration file as `ferry config check` sees it: what `ferry serve` would load (when
/// it would), and every finding at once.
pub struct Checked {
    /// The file as `ferry serve` would load it; `None` when it would refuse it for a syntax or
    /// key error.
    pub config: Option<Config>,
    /// Every finding, in file order.
    pub findings: Vec<Finding>,
}

/// Checks the configuration `text` (of the file `path`) as a whole: syntax errors, then each
/// table on its own (unknown keys, wrong types), so that one broken table does not hide the
/// problems of the others; then the references between tables, the secrets (`env` reads an
/// environment variable), gates and unreachable stages of what did parse.
pub fn check_file<'t>(text: &'t str, env: impl Fn(&str) -> Option<String>) -> Checked {
    use serde::Deserialize as _;
    use toml::Spanned;
    use toml::de::{DeString, DeTable, DeValue};

    let mut found: Vec<(usize, Severity, String)> = Vec::new();
    // A wrong value's message ("invalid type: …") names no key: the key written before it does.
    let error = |span: Option<std::ops::Range<usize>>, message: &str| {
        let at = span.map_or(0, |s| s.start);
        let message = message.trim_end();
        let message = match key_before(text, at) {
            Some(key) if !message.contains(&format!("`{key}`")) => format!("`{key}`: {message}"),
            // A table's own problem (a missing key) is shown at its header: name the table.
            None => match header_at(text, at) {
                Some(header) => format!("{header}: {message}"),
                None => message.to_string(),
            },
            _ => message.to_string(),
        };
        (at, Severity::Error, message)
    };
    let (root, syntax) = DeTable::parse_recoverable(text);
    for e in &syntax {
        found.push(error(e.span(), e.message()));
    }
    let root_span = root.span();
    let root = root.into_inner();
    fn table<'i>(entries: Vec<(Spanned<DeString<'i>>, Spanned<DeValue<'i>>)>) -> DeTable<'i> {
        let mut map = DeTable::new();
        for (key, value) in entries {
            map.insert(key, value);
        }
        map
    }
    let deserialize =
        |map: DeTable<'_>| Config::deserialize(toml::de::Deserializer::from(Spanned::new(root_span.clone(), map)));
    fn synthetic(text: &'static str) -> Spanned<DeValue<'static>> {
        Spanned::new(0..0, DeValue::String(text.into()))
    }
    fn key(name: &'static str) -> Spanned<DeString<'static>> {
        Spanned::new(0..0, std::borrow::Cow::Borrowed(name))
    }

    // Each table alone; what parses goes into `merged`, which the later checks look at.
    let mut merged: Vec<(Spanned<DeString<'_>>, Spanned<DeValue<'_>>)> = Vec::new();
    let mut dropped_pipelines = Vec::new();
    let mut any_error = !syntax.is_empty();
    for (name, value) in root.iter() {
        match (name.get_ref().as_ref(), value.get_ref()) {
            ("registries" | "sources", DeValue::Table(entries)) => {
                let mut kept = Vec::new();
                for (entry, settings) in entries.iter() {
                    let piece = table(vec![(
                        name.clone(),
                        Spanned::new(value.span(), DeValue::Table(table(vec![(entry.clone(), settings.clone())]))),
                    )]);
                    match deserialize(piece) {
                        Ok(_) => kept.push((entry.clone(), settings.clone())),
                        Err(e) => {
                            any_error = true;
                            found.push(error(e.span(), e.message()));
                            // A registry stays configured, so that pipelines on it are not
                            // also reported as naming an unknown registry.
                            if name.get_ref() == "registries" {
                                kept.push((
                                    entry.clone(),
                                    Spanned::new(settings.span(), DeValue::Table(DeTable::new())),
                                ));
                            }
                        }
                    }
                }
                merged.push((name.clone(), Spanned::new(value.span(), DeValue::Table(table(kept)))));
            }
            ("pipelines", DeValue::Array(pipelines)) => {
                let mut kept = toml::de::DeArray::new();
                for pipeline in pipelines.iter() {
                    let DeValue::Table(fields) = pipeline.get_ref() else {
                        kept.push(pipeline.clone());
                        continue;
                    };
                    let mut ok = true;
                    // The pipeline's own keys, without its stages …
                    let mut own = fields.clone();
                    let stages = own.remove("stages");
                    if stages.is_some() {
                        own.insert(key("stages"), Spanned::new(0..0, DeValue::Array(toml::de::DeArray::new())));
                    }
                    let piece = |p: DeTable<'t>| -> DeTable<'t> {
                        let mut array = toml::de::DeArray::new();
                        array.push(Spanned::new(pipeline.span(), DeValue::Table(p)));
                        table(vec![(name.clone(), Spanned::new(value.span(), DeValue::Array(array)))])
                    };
                    if let Err(e) = deserialize(piece(own)) {
                        ok = false;
                        found.push(error(e.span(), e.message()));
                    }
                    // … and each stage in a pipeline of its own.
                    if let Some(DeValue::Array(stages)) = stages.as_ref().map(Spanned::get_ref) {
                        for stage in stages.iter() {
                            let mut alone = toml::de::DeArray::new();
                            alone.push(stage.clone());
                            let holder = table(vec![
                                (key("name"), synthetic("stage-check")),
                                (key("source"), synthetic("stage-check.invalid/stage-check")),
                                (key("stages"), Spanned::new(0..0, DeValue::Array(alone))),
                            ]);
                            if let Err(e) = deserialize(piece(holder)) {
                                ok = false;
                                found.push(error(e.span(), e.message()));
                            }
                        }
                    }
                    if ok {
                        kept.push(pipeline.clone());
                    } else {
                        any_error = true;
                        if let Some(name) = fields.get("name").and_then(|n| n.get_ref().as_str()) {
                            dropped_pipelines.push(name.to_string());
                        }
                    }
                }
                merged.push((name.clone(), Spanned::new(value.span(), DeValue::Array(kept))));
            }
            _ => {
                let piece = table(vec![(name.clone(), value.clone())]);
                match deserialize(piece) {
                    Ok(_) => merged.push((name.clone(), value.clone())),
                    Err(e) => {
                        any_error = true;
                        found.push(error(e.span(), e.message()));
                    }
                }
            }
        }
    }

    let config = match deserialize(table(merged)) {
        Ok(config) => Some(config),
        Err(e) => {
            found.push(error(e.span(), e.message()));
            None
        }
    };
    if let Some(config) = &config {
        for (span, message) in config.reference_problems() {
            // A scope naming a pipeline that did not parse is not a second problem.
            if dropped_pipelines.iter().any(|p| message.ends_with(&format!("no pipeline is named `{p}`"))) {
                continue;
            }
            any_error = true;
            let at = span.map_or_else(|| locate(text, &message), |s| s.start);
            found.push((at, Severity::Error, message));
        }
        found.extend(findings_at(config, text, env));
        found.extend(unreachable(config));
    }
    found.sort_by_key(|(at, _, _)| *at);
    Checked {
        config: if any_error { None } else { config },
        findings: found
            .into_iter()
            .map(|(at, severity, message)| {
                let (line, column) = line_column(text, at);
                Finding { line, column, severity, message }
            })
            .collect(),
    }
}

/// The key of `key = value` when `offset` is in the value, on the same line.
fn key_before(text: &str, offset: usize) -> Option<&str> {
    let line_start = text.get(..offset)?.rfind('\n').map_or(0, |i| i + 1);
    let (key, _) = text.get(line_start..offset)?.split_once('=')?;
    let key = key.trim().trim_matches('"');
    (!key.is_empty() && !key.contains(['[', '{', ','])).then_some(key)
}

/// The table header (`[[pipelines.stages]]`) that starts at `offset`, if one does.
fn header_at(text: &str, offset: usize) -> Option<&str> {
    let rest = text.get(offset..)?;
    let line = rest.lines().next()?.trim();
    let end = line.rfind(']')? + 1;
    line.starts_with('[').then(|| &line[..end])
}

/// Where a message about no one span (`queue.url: …`, `registries."h": …`) is best shown: its
/// key's last part as written in the file, else its table's header, else the top.
fn locate(text: &str, message: &str) -> usize {
    let key = message.split(": ").next().unwrap_or_default();
    let mut parts: Vec<&str> = key.split('.').collect();
    if let Some(last) = parts.last_mut() {
        *last = last.trim_matches('"');
    }
    let last = parts.last().copied().unwrap_or_default();
    let first = parts.first().copied().unwrap_or_default();
    text.find(&format!("\n{last} ="))
        .map(|i| i + 1)
        .or_else(|| text.find(&format!("{last} =")))
        .or_else(|| text.find(&format!("[{first}")))
        .unwrap_or(0)
}

/// Stages no promotion can enter through their pipeline, and pipelines no sender can start.
///
/// A stage is unreachable when (1) no tag at all passes its tag filter (`tags`, `semver`)
/// together with the filters of its pipeline and of the stages before it — every promotion
/// is refused there or earlier — or (2) it, or a stage before it, has an `after` gate that can
/// never open: the previous stage has no notifier to confirm deployments and no Azure DevOps
/// release may report on it. Each cause is reported once, at the first stage it makes
/// unreachable (errors). A pipeline that no configured sender may start can still be promoted
/// with `ferry promote`: a warning.
fn unreachable(config: &Config) -> Vec<(usize, Severity, String)> {
    let mut found = Vec::new();
    for (i, pipeline) in config.pipelines.iter().enumerate() {
        let name = pipeline.name.get_ref();
        if let Some(why) = no_sender_starts(config, pipeline) {
            found.push((
                pipeline.name.span().start,
                Severity::Warning,
                format!("pipelines[{i}] `{name}`: no sender can start it ({why}); only `ferry promote` can"),
            ));
        }
        let mut filters: Vec<TagFilter> = Vec::new();
        if !pipeline.tags.is_empty() {
            filters.push(TagFilter::Globs(pipeline.tags.clone()));
        }
        let mut tags_reported = false;
        let mut gate_reported = false;
        for (j, stage) in pipeline.stages.iter().enumerate() {
            let key = format!("pipelines[{i}].stages[{j}] `{}`", stage.name.get_ref());
            let later = pipeline.stages.len() - j - 1;
            let and_later = match later {
                0 => String::new(),
                1 => " (and so is the stage after it)".into(),
                n => format!(" (and so are the {n} stages after it)"),
            };
            if !stage.tags.is_empty() {
                filters.push(TagFilter::Globs(stage.tags.clone()));
            }
            if stage.semver {
                filters.push(TagFilter::Semver);
            }
            if !tags_reported && !filters.is_empty() && !admits_some_tag(&filters) {
                tags_reported = true;
                let before = match j {
                    0 => "the pipeline's `tags`".to_string(),
                    _ => format!("the filters up to `{}`", pipeline.stages[j - 1].name.get_ref()),
                };
                found.push((
                    stage.name.span().start,
                    Severity::Error,
                    format!(
                        "{key}: unreachable: no tag passes its tag filter (tags {:?}, semver {}) and {before}: every promotion is refused here{and_later}",
                        stage.tags, stage.semver
                    ),
                ));
            }
            if !gate_reported && stage.gate == Gate::After && j > 0 {
                let previous = &pipeline.stages[j - 1];
                if previous.notify.is_none() && !release_reports(config, pipeline) {
                    gate_reported = true;
                    found.push((
                        stage.name.span().start,
                        Severity::Error,
                        format!(
                            "{key}: unreachable: its `after` gate can never open: `{}` has no `notify` to confirm deployments and no Azure DevOps release may report on it (set `notify` on `{}`, or `[pipelines.azure_devops] release_definition` and `[sources.azure-devops]`){and_later}",
                            previous.name.get_ref(),
                            previous.name.get_ref()
                        ),
                    ));
                }
            }
        }
    }
    found
}

/// Why no configured sender may start `pipeline`, or `None` when one may.
fn no_sender_starts(config: &Config, pipeline: &Pipeline) -> Option<String> {
    if config.sources.is_empty() {
        return Some("no [sources.*] is configured".into());
    }
    let Ok(source) = RepoName::parse(pipeline.source.get_ref()) else { return None };
    let mut refusals = Vec::new();
    for (sender, settings) in &config.sources {
        let s = settings.get_ref();
        // Senders that report one registry only.
        let only = match sender.as_str() {
            "dockerhub" => Some(crate::registry::reference::DOCKER_HUB),
            "github" => Some("ghcr.io"),
            _ => None,
        };
        let why = if only.is_some_and(|host| host != source.registry) {
            format!("`{sender}` reports {} only", only.unwrap_or_default())
        } else if s.registries.as_ref().is_some_and(|r| !r.contains(&source.registry)) {
            format!("`{sender}` is limited to registries {:?}", s.registries.as_deref().unwrap_or_default())
        } else if s.pipelines.as_ref().is_some_and(|p| !p.contains(pipeline.name.get_ref())) {
            format!("`{sender}` is limited to pipelines {:?}", s.pipelines.as_deref().unwrap_or_default())
        } else if sender == "azure-devops"
            && pipeline.azure_devops.as_ref().is_none_or(|ado| ado.build_definition.is_none())
        {
            "`azure-devops` starts only pipelines with a `build_definition`".to_string()
        } else {
            return None;
        };
        refusals.push(why);
    }
    Some(refusals.join("; "))
}

/// Whether Azure DevOps deployment reports can reach `pipeline`'s stages.
fn release_reports(config: &Config, pipeline: &Pipeline) -> bool {
    let bound = pipeline.azure_devops.as_ref().is_some_and(|ado| ado.release_definition.is_some());
    let sender = config.sources.get("azure-devops").is_some_and(|s| {
        let s = s.get_ref();
        let registry = RepoName::parse(pipeline.source.get_ref()).map(|r| r.registry).unwrap_or_default();
        s.registries.as_ref().is_none_or(|r| r.contains(&registry))
            && s.pipelines.as_ref().is_none_or(|p| p.contains(pipeline.name.get_ref()))
    });
    bound && sender
}

/// One tag filter on the way to a stage: any of these `*` patterns, or a release semver.
#[derive(Debug, Clone)]
enum TagFilter {
    Globs(Vec<String>),
    Semver,
}

/// The states one filter can be in after some input: (pattern, position) for globs, the
/// semver automaton's state for `Semver`.
type FilterState = std::collections::BTreeSet<(usize, usize)>;

impl TagFilter {
    fn start(&self) -> FilterState {
        match self {
            TagFilter::Globs(patterns) => {
                let mut states = FilterState::new();
                for (p, pattern) in patterns.iter().enumerate() {
                    Self::close(pattern, p, 0, &mut states);
                }
                states
            }
            TagFilter::Semver => [(0, 0)].into(),
        }
    }

    /// Adds (p, at) and, past each `*` (which may match nothing), the positions after it.
    fn close(pattern: &str, p: usize, mut at: usize, states: &mut FilterState) {
        let chars: Vec<char> = pattern.chars().collect();
        loop {
            states.insert((p, at));
            if chars.get(at) == Some(&'*') {
                at += 1;
            } else {
                break;
            }
        }
    }

    fn step(&self, states: &FilterState, c: char) -> FilterState {
        let mut next = FilterState::new();
        for &(p, at) in states {
            match self {
                TagFilter::Globs(patterns) => {
                    let chars: Vec<char> = patterns[p].chars().collect();
                    match chars.get(at) {
                        // `*` takes this character and stays.
                        Some('*') => Self::close(&patterns[p], p, at, &mut next),
                        Some(&literal) if literal == c => Self::close(&patterns[p], p, at + 1, &mut next),
                        _ => {}
                    }
                }
                TagFilter::Semver => {
                    // v? digits . digits . digits
                    let digit = c.is_ascii_digit();
                    let to = match (at, c) {
                        (0, 'v') => Some(1),
                        (0 | 1, _) if digit => Some(2),
                        (2, _) | (4, _) | (6, _) if digit => Some(at),
                        (2, '.') => Some(3),
                        (3, _) if digit => Some(4),
                        (4, '.') => Some(5),
                        (5, _) if digit => Some(6),
                        _ => None,
                    };
                    next.extend(to.map(|to| (0, to)));
                }
            }
        }
        next
    }

    fn accepts(&self, states: &FilterState) -> bool {
        states.iter().any(|&(p, at)| match self {
            TagFilter::Globs(patterns) => at == patterns[p].chars().count(),
            TagFilter::Semver => at == 6,
        })
    }
}

/// Whether some non-empty tag passes every filter: a search over the filters' joint states,
/// reading one character of each kind that matters (those the patterns name, a digit, and one
/// that none names). Gives up — "some tag passes" — past a bound rather than run long.
fn admits_some_tag(filters: &[TagFilter]) -> bool {
    let mut alphabet: std::collections::BTreeSet<char> = ['v', '.', '0'].into();
    for filter in filters {
        if let TagFilter::Globs(patterns) = filter {
            alphabet.extend(patterns.iter().flat_map(|p| p.chars()).filter(|&c| c != '*'));
        }
    }
    if let Some(other) = ('a'..='z').chain('A'..='Z').find(|c| !alphabet.contains(c)) {
        alphabet.insert(other);
    }
    let start: Vec<FilterState> = filters.iter().map(TagFilter::start).collect();
    let mut seen = std::collections::HashSet::from([start.clone()]);
    let mut queue = std::collections::VecDeque::from([start]);
    while let Some(states) = queue.pop_front() {
        for &c in &alphabet {
            let next: Vec<FilterState> = filters.iter().zip(&states).map(|(f, s)| f.step(s, c)).collect();
            if next.iter().any(FilterState::is_empty) {
                continue;
            }
            if filters.iter().zip(&next).all(|(f, s)| f.accepts(s)) {
                return true;
            }
            if seen.len() > 20_000 {
                return true;
            }
            if seen.insert(next.clone()) {
                queue.push_back(next);
            }
        }
    }
    false
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

    fn check_text(text: &str) -> Vec<String> {
        check_file(text, |_| Some("0123456789abcdef".into()))
            .findings
            .into_iter()
            .map(|f| format!("{}:{} {}: {}", f.line, f.column, f.severity, f.message))
            .collect()
    }

    #[test]
    fn key_and_reference_errors_of_every_table_are_reported_at_once_in_file_order() {
        let text = r#"[server]
listen = "127.0.0.1:8080"
bogus = 1

[registries."a.example"]
plain_htp = true
[registries."b.example"]

[sources.generic]
secret_env = "S"
pipelines = ["nope"]

[[pipelines]]
name = "shop"
source = "a.example/shop"
  [[pipelines.stages]]
  name = "dev"
  target = "c.example/shop"
  [[pipelines.stages]]
  name = "prod"
  target = "b.example/shop"
  approvers = "two"

[worker]
concurrency = -1
"#;
        let found = check_text(text);
        let expected = [
            ("3:1 error:", "unknown field `bogus`"),
            ("6:1 error:", "unknown field `plain_htp`"),
            ("9:1 error:", "sources.generic.pipelines: no pipeline is named `nope`"),
            ("22:15 error:", "`approvers`: invalid type: string \"two\""),
            ("25:15 error:", "`concurrency`: invalid value: integer `-1`"),
        ];
        assert_eq!(found.len(), expected.len(), "{found:#?}");
        for (finding, (at, what)) in found.iter().zip(expected) {
            assert!(finding.starts_with(at) && finding.contains(what), "expected {at} {what}: {found:#?}");
        }
        // The pipeline with a broken stage is left out of the reference checks (its registry
        // `c.example` is not reported: the stage is fixed first), the scope naming it is not.
        let scoped = text.replace("[\"nope\"]", "[\"shop\"]");
        assert!(!check_text(&scoped).iter().any(|f| f.contains("no pipeline is named")));
        let stage_fixed = text.replace("  approvers = \"two\"\n", "");
        let found = check_text(&stage_fixed);
        assert!(
            found.iter().any(|f| f.starts_with("18:12 error:") && f.contains("registry `c.example` is not configured")),
            "{found:#?}"
        );
        assert!(check_file(&stage_fixed, |_| None).config.is_none());
    }

    #[test]
    fn a_missing_key_names_its_table() {
        let text = "[registries.\"a.example\"]\n[[pipelines]]\nname = \"p\"\nsource = \"a.example/p\"\n  [[pipelines.stages]]\n  target = \"a.example/q\"\n";
        let found = check_text(text);
        assert_eq!(found.len(), 1, "{found:#?}");
        assert_eq!(found[0], "5:3 error: [[pipelines.stages]]: missing field `name`");
    }

    #[test]
    fn syntax_errors_are_all_reported_with_the_rest() {
        let text = "[server\nlisten = 1\n[[pipelines]]\nname = \"p\"\nsource = \n";
        let found = check_text(text);
        assert!(found.len() >= 2, "{found:#?}");
        assert!(found[0].starts_with("1:") && found[0].contains("error"), "{found:#?}");
        assert!(found.iter().any(|f| f.starts_with("5:")), "{found:#?}");
    }

    #[test]
    fn a_good_file_loads_with_no_findings() {
        let text = "[registries.\"a.example\"]\n[registries.\"b.example\"]\n[sources.generic]\nsecret_env = \"S\"\n\
                    [[pipelines]]\nname = \"p\"\nsource = \"a.example/p\"\n[[pipelines.stages]]\nname = \"dev\"\ntarget = \"b.example/p\"\n";
        let checked = check_file(text, |_| Some("x".into()));
        assert!(checked.findings.is_empty(), "{:#?}", checked.findings);
        assert_eq!(checked.config.unwrap().pipelines.len(), 1);
    }

    fn pipeline_with(pipeline_keys: &str, stages: &str, sources: &str) -> String {
        format!(
            "[registries.\"a.example\"]\n[registries.\"b.example\"]\n[registries.\"c.example\"]\n[registries.\"d.example\"]\n{sources}\n\
             [[pipelines]]\nname = \"shop\"\nsource = \"a.example/shop\"\n{pipeline_keys}\n{stages}"
        )
    }

    const GENERIC: &str = "[sources.generic]\nsecret_env = \"S\"\n";

    fn stage(name: &str, host: &str, keys: &str) -> String {
        format!("[[pipelines.stages]]\nname = \"{name}\"\ntarget = \"{host}/shop\"\n{keys}\n")
    }

    #[test]
    fn a_stage_whose_tag_filter_refuses_every_tag_that_reaches_it_is_unreachable() {
        let stages = [
            stage("dev", "b.example", ""),
            stage("staging", "c.example", "semver = true"),
            stage("prod", "d.example", "tags = [\"release-*\"]"),
        ]
        .concat();
        let found = check_text(&pipeline_with("", &stages, GENERIC));
        assert_eq!(found.len(), 1, "{found:#?}");
        assert!(found[0].contains(" error: pipelines[0].stages[2] `prod`: unreachable: no tag passes"), "{found:#?}");

        // Filters that overlap leave the stage reachable: `v1.*` tags are semver too.
        let overlapping = stages.replace("release-*", "v1.*");
        assert!(check_text(&pipeline_with("", &overlapping, GENERIC)).is_empty());
        // The pipeline's own filter counts, and an unreachable first stage takes the rest along.
        let found = check_text(&pipeline_with("tags = [\"nightly-*\"]", &stages, GENERIC));
        assert_eq!(found.len(), 1, "{found:#?}");
        assert!(
            found[0].contains("stages[1] `staging`: unreachable") && found[0].contains("the stage after it"),
            "{found:#?}"
        );
    }

    #[test]
    fn an_after_gate_with_nobody_to_report_makes_its_stage_unreachable() {
        let stages = [stage("dev", "b.example", ""), stage("prod", "c.example", "gate = \"after\"")].concat();
        let found = check_text(&pipeline_with("", &stages, GENERIC));
        assert_eq!(found.len(), 1, "{found:#?}");
        assert!(
            found[0].contains("`prod`: unreachable: its `after` gate can never open: `dev` has no `notify`"),
            "{found:#?}"
        );

        let notified = stages.replace(
            "target = \"b.example/shop\"\n",
            "target = \"b.example/shop\"\nnotify = { kind = \"webhook\", url = \"https://d.example/h\" }\n",
        );
        assert!(check_text(&pipeline_with("", &notified, GENERIC)).is_empty());
        let ado = "[sources.azure-devops]\nsecret_env = \"A\"\nusername = \"ferry\"\n";
        let release = "[pipelines.azure_devops]\nrelease_definition = \"cd\"\n";
        assert!(check_text(&pipeline_with(release, &stages, &format!("{GENERIC}{ado}"))).is_empty());
        // A release definition without the sender that delivers its reports opens nothing.
        assert_eq!(check_text(&pipeline_with(release, &stages, GENERIC)).len(), 1);
    }

    #[test]
    fn a_pipeline_no_sender_may_start_is_a_warning() {
        let stages = stage("dev", "b.example", "");
        let found = check_text(&pipeline_with("", &stages, ""));
        assert_eq!(found.len(), 1, "{found:#?}");
        assert!(
            found[0].contains("warning: pipelines[0] `shop`: no sender can start it (no [sources.*] is configured)"),
            "{found:#?}"
        );
        let hub = "[sources.dockerhub]\nsecret_env = \"H\"\n[sources.harbor]\nsecret_env = \"S\"\nregistries = [\"b.example\"]\n";
        let found = check_text(&pipeline_with("", &stages, hub));
        assert!(
            found[0].contains("`dockerhub` reports docker.io only; `harbor` is limited to registries [\"b.example\"]"),
            "{found:#?}"
        );
        assert!(check_text(&pipeline_with("", &stages, GENERIC)).is_empty());
    }

    #[test]
    fn console_session_keys_are_checked_and_aws_needs_a_shared_one() {
        let stages = stage("dev", "b.example", "");
        let identity = "[[identity.users]]\nname = \"sam\"\ntoken_hash = \"sha256:9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08\"\n";
        let sqs =
            "[queue]\nkind = \"sqs\"\nurl = \"https://sqs.eu-west-1.amazonaws.com/123456789012/ferry-jobs.fifo\"\n";
        let text = pipeline_with("", &stages, &format!("{GENERIC}{sqs}{identity}"));
        let found = check_text(&text);
        assert!(
            found.iter().any(|f| f.contains("warning: identity: no session_key_env or session_key_arn")),
            "{found:#?}"
        );
        let keyed = text.replace("[[identity.users]]", "[identity]\nsession_key_env = \"K\"\n[[identity.users]]");
        // check_text's environment answers 16 characters: too short for a session key.
        let found = check_text(&keyed);
        assert!(
            found.iter().any(|f| f.contains("error: identity.session_key_env") && f.contains("at least 32")),
            "{found:#?}"
        );
        assert!(!found.iter().any(|f| f.contains("no session_key_env")), "{found:#?}");
        // Without SQS (ferry serve), no key is fine: sessions end at a restart.
        assert!(check_text(&pipeline_with("", &stages, &format!("{GENERIC}{identity}"))).is_empty());
    }

    #[test]
    fn tag_languages_intersect_as_patterns_say() {
        let globs = |p: &[&str]| TagFilter::Globs(p.iter().map(|s| s.to_string()).collect());
        assert!(admits_some_tag(&[globs(&["v*"]), TagFilter::Semver]));
        assert!(admits_some_tag(&[globs(&["*-rc*"]), globs(&["1.*"])]));
        assert!(!admits_some_tag(&[globs(&["*-rc*"]), TagFilter::Semver]));
        assert!(!admits_some_tag(&[globs(&["a*"]), globs(&["b*"])]));
        assert!(admits_some_tag(&[globs(&["a*", "b*"]), globs(&["*b"])]));
        assert!(!admits_some_tag(&[globs(&["latest"]), globs(&["stable"])]));
        assert!(admits_some_tag(&[globs(&["*"]), globs(&["stable"])]));
        assert!(!admits_some_tag(&[globs(&["v*"]), globs(&["1*"]), TagFilter::Semver]));
        assert!(admits_some_tag(&[globs(&["1*"]), TagFilter::Semver]));
    }
}
